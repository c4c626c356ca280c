"""Exceptions fastbp raises besides ValueError / TypeError for bad input."""


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or parameter.

    The model keeps the parameters of the last check that was finite.  ``epoch`` is the
    epoch (counted from 0 within the run: the ``fit`` call, continued by ``resume``)
    where the non-finite value was seen; ``history`` the records before it
    (``history.epochs``: the epochs whose updates the kept parameters contain);
    ``model`` the model, at those parameters (useful when the error comes from
    ``fastbp.resume``, which made the model).
    """

    def __init__(self, message, epoch=None, history=None, model=None):
        super().__init__(message)
        self.epoch = epoch
        self.history = history
        self.model = model


class ModelFileError(ValueError):
    """A model or checkpoint file is empty, truncated, corrupted, not fastbp's, written by
    a newer format version, or inconsistent.  The message names the file and the problem.
    (A missing file raises FileNotFoundError.)"""
