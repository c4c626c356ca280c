"""How many threads a fit may use, and the threads that share one model's products.

One model's batched fit shares its wide layers among threads (kernels/pool.py); an
Ensemble runs its models on Python threads.  Both take ``n_jobs``: None or -1 for
every core this process may run on (its CPU affinity, at most NUMBA_NUM_THREADS), else
that many threads.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
import numpy as np

from . import _validation as V
from .kernels import pool as P
from .kernels import sample_share as SS
from .kernels.intrinsics import LANES


def available():
    """The cores this process may run on, at most NUMBA_NUM_THREADS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, numba.config.NUMBA_NUM_THREADS))


# resolve(..., lazily=True)'s count for "every core": available() is asked later, and
# only where a network is wide enough to share (dispatch.plan_fit) -- its system call
# cost a small fit 5 us
EVERY = 0


def resolve(n_jobs, lazily=False):
    """The thread count ``n_jobs`` asks for (see the module docstring); ValueError for
    anything but None, -1 or an int >= 1.  ``lazily``: EVERY for None and -1."""
    if n_jobs is None:
        return EVERY if lazily else available()
    # an integer first: -1.0 or numpy's -1.0 is refused as 2.0 is, not taken for -1
    if V.operator_index(n_jobs, "n_jobs") == -1:
        return EVERY if lazily else available()
    n_jobs = V.check_positive_int(n_jobs, "n_jobs")
    return min(n_jobs, numba.config.NUMBA_NUM_THREADS)


def each(run, tasks, threads, task_work, min_work):
    """run(task) for every task of ``tasks`` (a sequence), the models of an Ensemble:
    on ``threads`` threads (the kernels release the GIL) when there are several and a
    task's work, ``task_work`` multiply-adds, is at least ``min_work``; else on this
    thread.  Each thread takes the next task until none is left.

    The Python around each model's kernel call runs under the GIL, and two threads
    contending for it were slower than one for short tasks -- a pool task per model,
    as this was before, slower still (its submit and wake-up, ~40 us a task): on this
    machine's 2 threads, 1000 XOR nets trained 100 epochs in 187-218 ms against 74-87
    on one, and predicted 21 samples in 20.6 ms against 3.1.  The callers' thresholds
    (``min_work``) are where two threads started to gain."""
    workers = min(threads, len(tasks))
    if workers <= 1 or task_work < min_work:
        for task in tasks:
            run(task)
        return
    pending = iter(tasks)
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                task = next(pending, None)
            if task is None:
                return
            run(task)

    with ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(work) for _ in range(workers)]:
            done.result()


class ProductThreads:
    """The threads of one fit's products, or of a per-sample fit's wide layers:
    ``state`` for the kernels (pool.py), ``running()`` around each kernel call starts
    and stops the workers."""

    def __init__(self, threads, unit, dtype, per_sample=None):
        """``per_sample``: (parameters, inputs of the widest layer) of a per-sample fit,
        whose wide layers the threads share (kernels/sample_share.py) instead of
        products: its buffers."""
        self.threads = threads
        self.dtype = dtype
        P.load_worker()
        self.state = P.new_state(unit, dtype, layers=per_sample is None)
        self.address = self.state.ctypes.data
        self.progress = None
        if per_sample is not None:
            n_params, n_in = per_sample
            self.blocks = np.zeros(n_params, dtype)
            self.carry = np.zeros(n_in * LANES, dtype)
            self.progress = np.zeros(8 * threads, np.int64)
            SS.attach(self.state, self.blocks, self.carry, self.progress)

    @contextmanager
    def running(self):
        if self.progress is not None:  # the signals count from each call's first job
            self.progress[:] = 0
        started = P.Started()  # filled by start as it goes: stopped however far it got
        try:
            P.start(self.state, self.threads, started)
            yield
        finally:
            try:
                P.stop(self.state, started)
            except KeyboardInterrupt:
                # Ctrl-C (which L-BFGS takes wherever it lands) inside stop, before its
                # stop flag or its finally: a worker would spin for ever and this thread
                # stay pinned to one CPU.  Stopping again is harmless.
                P.stop(self.state, started)
                raise
