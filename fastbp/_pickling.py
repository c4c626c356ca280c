"""What pickle and copy see of a model: its state, snapshotted under its fit lock.

A model's state is its ``__dict__`` less a class-level tuple ``_TRANSIENT`` of
per-process things: the lock that guards ``fit`` (a fresh one is made on load, so the
guard works on every copy, independently of the original) and cached buffers, which
are rebuilt on demand.  Nothing else is special-cased, so attributes added to a model
later travel without changes here.  A pickle holds numpy arrays, strings, numbers and
fastbp classes by name: no compiled code, no cache paths.
"""
import contextlib
import copy
import functools
import threading

import numpy as np


class FitLock:
    """The guard of a model's ``fit``, which knows which thread is fitting.

    ``fitting()`` holds the model for one fit: a second fit while one runs (from any
    thread) is refused.  ``still()`` holds it while a pickle or copy reads the state: it
    is refused when another thread is fitting, since that thread's kernel may be writing
    the parameters at that moment (the kernels release the GIL); from the fitting
    thread itself -- a callback of the fit, which runs between chunks of epochs -- the
    state is consistent and the copy proceeds.  A fit that starts while a copy is being
    read waits for that copy (a moment), rather than being refused as if another fit ran.
    """

    __slots__ = ("_mutex", "owner")

    def __init__(self):
        self._mutex = threading.Lock()  # held while a fit starts, or a copy is read
        self.owner = None  # the thread whose fit holds the model, or None

    @contextlib.contextmanager
    def fitting(self, name):
        with self._mutex:
            if self.owner == threading.get_ident():
                raise RuntimeError(f"this {name} is already being trained: fit was called "
                                   f"from inside its own fit (from a callback?); a callback "
                                   f"may train a copy (copy.deepcopy), or return False to "
                                   f"stop this fit")
            if self.owner is not None:
                raise RuntimeError(f"this {name} is already being trained (fit is running "
                                   f"in another thread); train a copy instead")
            self.owner = threading.get_ident()
        try:
            yield
        finally:
            self.owner = None

    def locked(self):
        """Whether a fit holds the model."""
        return self.owner is not None

    @contextlib.contextmanager
    def still(self, name):
        with self._mutex:
            if self.owner not in (None, threading.get_ident()):
                raise RuntimeError(BUSY.format(name=name))
            yield

    def __reduce__(self):
        # a lock never travels: objects holding one drop it from their state (below)
        raise TypeError("a fastbp FitLock cannot be pickled or copied; the model that "
                        "holds it makes a fresh one when it is loaded")


BUSY = ("the {name} is being trained in another thread; pickle or copy it after fit "
        "returns (or from a callback of that fit, which runs between chunks of epochs)")


def snapshot(obj):
    """``obj.__dict__`` without ``obj._TRANSIENT``, its arrays copied while no fit can
    write them (under ``obj``'s fit lock).

    RuntimeError when another thread is training ``obj``.
    """
    lock = obj.__dict__.get("_fit_lock")
    if lock is None:
        return _state(obj)
    with lock.still(type(obj).__name__):
        return _state(obj)


def _state(obj):
    # copies, not references: pickle serializes the state after __getstate__ returns,
    # by which time another thread may have started a fit; a copy also turns an
    # Ensemble member's row view into an array of its own
    return {k: (v.copy() if isinstance(v, np.ndarray) else v)
            for k, v in obj.__dict__.items() if k not in obj._TRANSIENT}


def restore(obj, state):
    """Inverse of ``snapshot``: the state, and a fresh fit lock.  A model owns its
    arrays and trains them in place, so read-only ones (from a read-only memory map:
    joblib.load(..., mmap_mode="r")) are copied; writeable ones are taken as they are."""
    obj.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) and not v.flags.writeable
                             else v) for k, v in state.items()})
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
        with self._fit_lock.fitting(type(self).__name__):
            return fit(self, *args, **kwargs)
    return guarded
