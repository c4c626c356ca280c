"""What pickle and copy see of a model: its state, snapshotted under its fit lock.

A model's state is its ``__dict__`` less a class-level tuple ``_TRANSIENT`` of
per-process things: the lock that guards ``fit`` (a fresh one is made on load, so the
guard works on every copy, independently of the original) and cached buffers, which
are rebuilt on demand.  Nothing else is special-cased, so attributes added to a model
later travel without changes here.  A pickle holds numpy arrays, strings, numbers and
fastbp classes by name: no compiled code, no cache paths.
"""
import copy
import functools
import threading

import numpy as np


class FitLock:
    """A ``threading.Lock`` that knows which thread holds it.

    ``fit`` takes it without blocking (a second fit of the same model is refused); a
    pickle or copy taken from the thread that holds it -- a callback of that fit, which
    runs between chunks of epochs -- sees a consistent state and may proceed, while
    one taken from any other thread cannot know whether a kernel is writing the
    parameters at that moment (the kernels release the GIL).
    """

    __slots__ = ("_lock", "owner")

    def __init__(self):
        self._lock = threading.Lock()
        self.owner = None

    def acquire(self, blocking=True, timeout=-1):
        got = self._lock.acquire(blocking, timeout)
        if got:
            self.owner = threading.get_ident()
        return got

    def release(self):
        self.owner = None
        self._lock.release()

    def locked(self):
        return self._lock.locked()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def __reduce__(self):
        # a lock never travels: objects holding one drop it from their state (below)
        raise TypeError("a fastbp FitLock cannot be pickled or copied; the model that "
                        "holds it makes a fresh one when it is loaded")


BUSY = ("the {name} is being trained in another thread; pickle or copy it after fit "
        "returns (or from a callback of that fit, which runs between chunks of epochs)")


def snapshot(obj):
    """``obj.__dict__`` without ``obj._TRANSIENT``, its arrays copied while ``obj``'s
    fit lock is held, so that no training step can write them halfway through.

    RuntimeError when another thread is training ``obj``.
    """
    lock = obj.__dict__.get("_fit_lock")
    if lock is None or getattr(lock, "owner", None) == threading.get_ident():
        return _state(obj)  # no lock, or asked between this thread's own chunks
    if not lock.acquire(blocking=False):
        raise RuntimeError(BUSY.format(name=type(obj).__name__))
    try:
        return _state(obj)
    finally:
        lock.release()


def _state(obj):
    # copies, not references: pickle serializes the state after __getstate__ returns,
    # by which time another thread may have started a fit; a copy also turns an
    # Ensemble member's row view into an array of its own
    return {k: (v.copy() if isinstance(v, np.ndarray) else v)
            for k, v in obj.__dict__.items() if k not in obj._TRANSIENT}


def restore(obj, state):
    """Inverse of ``snapshot``: the state, and a fresh fit lock."""
    obj.__dict__.update(state)
    obj._fit_lock = FitLock()


def independent_copy(obj):
    """What ``copy.copy`` returns for a model: a deep copy.  A shallow copy would share
    the parameter arrays but not the fit lock, so two fits could write the same
    parameters at once; a model that shares another's parameters on purpose is an
    Ensemble member (``ensemble[m]``)."""
    return copy.deepcopy(obj)


def exclusive(fit):
    """Wrap a ``fit`` method so it runs holding ``self._fit_lock``: a second fit of the
    same object while one runs (from another thread) is refused with RuntimeError, and
    a pickle taken meanwhile from another thread is refused by ``snapshot``."""
    @functools.wraps(fit)
    def guarded(self, *args, **kwargs):
        if not self._fit_lock.acquire(blocking=False):
            raise RuntimeError(f"this {type(self).__name__} is already being trained (fit "
                               f"is running in another thread); train a copy instead")
        try:
            return fit(self, *args, **kwargs)
        finally:
            self._fit_lock.release()
    return guarded
