"""Exceptions fastbp raises besides ValueError / TypeError for bad input."""


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or parameter.

    The model keeps the parameters of the last check that was finite; ``epoch`` is the
    epoch (counted within the ``fit`` call) where the non-finite value was seen and
    ``history`` the records up to it.
    """

    def __init__(self, message, epoch=None, history=None):
        super().__init__(message)
        self.epoch = epoch
        self.history = history


class ModelFileError(ValueError):
    """A model or checkpoint file is missing, truncated, corrupted or not fastbp's."""
