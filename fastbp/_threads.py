"""How many threads a fit may use, and the threads that share one model's products.

One model's batched fit shares its wide layers among threads (kernels/pool.py); an
Ensemble runs its models on Python threads.  Both take ``n_jobs``: None or -1 for
every core this process may run on (its CPU affinity, at most NUMBA_NUM_THREADS), else
that many threads.
"""
import os
from contextlib import contextmanager

import numba

from . import _validation as V
from .kernels import pool as P


def available():
    """The cores this process may run on, at most NUMBA_NUM_THREADS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, numba.config.NUMBA_NUM_THREADS))


def resolve(n_jobs):
    """The thread count ``n_jobs`` asks for (see the module docstring); ValueError for
    anything but None, -1 or an int >= 1."""
    if n_jobs is None or (not isinstance(n_jobs, bool) and n_jobs == -1):
        return available()
    n_jobs = V.check_positive_int(n_jobs, "n_jobs")
    return min(n_jobs, numba.config.NUMBA_NUM_THREADS)


class ProductThreads:
    """The threads of one fit's products: ``state`` for the kernels' Net (pool.py),
    ``running()`` around each kernel call starts and stops the workers."""

    def __init__(self, threads, unit, dtype):
        self.threads = threads
        self.dtype = dtype
        P.load_worker(dtype)
        self.state = P.new_state(unit, dtype)
        self.address = self.state.ctypes.data

    @contextmanager
    def running(self):
        started = P.start(self.state, self.threads, self.dtype)
        try:
            yield
        finally:
            P.stop(self.state, started)
