"""Running a fused training loop in chunks of epochs.

The kernels run many epochs per call; Python only comes back between chunks sized to
take ~0.2 s, to draw the progress bar, call callbacks and notice Ctrl-C.  Chunking never
changes results: epochs are numbered globally and the shuffling generator's state lives
in an array the kernel updates.
"""
import signal
import threading
import time
import warnings
from contextlib import contextmanager

CHUNK_SECONDS = 0.2
_FIRST_CHUNK_WORK = 2e6  # multiply-adds in the first, timing chunk (~1-10 ms)


def first_chunk(epochs, work_per_epoch, target=CHUNK_SECONDS):
    """Epochs for the first chunk, from the work of an epoch (multiply-adds), aiming well
    under ``target`` seconds: the chunks after it are sized from its measured speed."""
    budget = _FIRST_CHUNK_WORK * min(1.0, target / CHUNK_SECONDS)
    return max(1, min(epochs, int(budget // max(work_per_epoch, 1))))


def next_chunk(done, seconds, remaining, target=CHUNK_SECONDS):
    """Epochs for the next chunk from the speed of the last one."""
    if done <= 0:
        return max(1, min(remaining, 1))
    per_epoch = max(seconds, 1e-7) / done
    return max(1, min(remaining, int(target / per_epoch)))


@contextmanager
def sigint_deferred():
    """Turn Ctrl-C into a flag checked between chunks (main thread only).

    Yields a one-element list whose item becomes True when SIGINT arrives.  Off the main
    thread Python cannot install handlers; Ctrl-C then behaves as usual.
    """
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag[0] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # e.g. embedded interpreters
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def warn_interrupted(done, total, checkpoint=None, stacklevel=2):
    """The warning of a run stopped by Ctrl-C; ``stacklevel`` as if the caller warned."""
    msg = (f"training interrupted (Ctrl-C) after {done} of {total} epochs; "
           f"the model holds the parameters after epoch {done}")
    if checkpoint is not None:
        msg += f"; fastbp.resume({checkpoint!r}, X, y) continues the run"
    warnings.warn(msg, RuntimeWarning, stacklevel=stacklevel + 1)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
