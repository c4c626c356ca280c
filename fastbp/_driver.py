"""The chunk driver: how every training run (MLP, Ensemble, CUDA, the scikit-learn
wrappers) goes from its first epoch to its last.

The kernels run many epochs per call; Python comes back between chunks sized to take
about ``chunk_seconds`` each, to draw the progress bar, write checkpoints, call
callbacks and notice Ctrl-C.  Chunking never changes results: epochs are numbered
within the run and the shuffling stream's state lives in an array the kernel updates.

A run is a *job* (an object with the methods ``drive`` calls, below); the driver owns
the loop: compile first (announced when slow, timed apart from training), then chunks
until the job is done, stops or is interrupted.  What a chunk means -- one model with
its divergence guard, many models, a GPU launch -- is the job's business.

Job methods:
    pending()            names of kernels the job still has to compile (announced)
    prepare()            compile or load them
    work_per_epoch()     multiply-adds of one epoch (sizes the first chunk)
    remaining()          epochs still to run
    cap(epochs)          the next chunk's length, cut where the job needs a boundary
                         (a checkpoint epoch, a point where scikit-learn could stop)
    run_chunk(epochs)    run them; (epochs run, reason to stop or None)
    ends_early(reason)   optional: the run stops after a chunk, before its end, for
                         ``reason`` (one of _EARLY_ENDS);
                         returns the reason to report ("diverged" if the job finds
                         the state it stops in diverged)
    after_chunk()        checkpoints; a reason to stop or None
    callbacks()          the user's callbacks (after Ctrl-C is checked); "callback" to stop
    last_loss()          for the progress bar
    clock(seconds, compile_seconds)   optional: this drive's training and compile
                         seconds so far, given after each chunk (before its checkpoint
                         and callbacks, which report them)
"""
import _signal
import gc
import sys
import threading
import time
import warnings

from ._progress import make_bar

CHUNK_SECONDS = 0.2
# the stops after a chunk that leave the run before its last epoch (job.ends_early):
# "scikit-learn" is the scikit-learn wrappers' own (fastbp/sklearn.py)
_EARLY_ENDS = ("interrupted", "callback", "early_stopping", "scikit-learn")
_FIRST_CHUNK_WORK = 2e6  # multiply-adds in the first, timing chunk (~1-10 ms)
# the longest chunk, in epochs: bounds the records buffer a chunk fills
MAX_CHUNK_EPOCHS = 1 << 20


def first_chunk(epochs, work_per_epoch, target=CHUNK_SECONDS):
    """Epochs for the first chunk, from the work of an epoch (multiply-adds), aiming well
    under ``target`` seconds: the chunks after it are sized from its measured speed."""
    budget = _FIRST_CHUNK_WORK * min(1.0, target / CHUNK_SECONDS)
    return max(1, min(epochs, MAX_CHUNK_EPOCHS, int(budget // max(work_per_epoch, 1))))


def next_chunk(done, seconds, remaining, target=CHUNK_SECONDS):
    """Epochs for the next chunk from the speed of the last one."""
    if done <= 0:
        return max(1, min(remaining, 1))
    per_epoch = max(seconds, 1e-7) / done
    return max(1, min(remaining, MAX_CHUNK_EPOCHS, int(target / per_epoch)))


class sigint_deferred:
    """Turn Ctrl-C into a flag checked between chunks (main thread only).

    ``with sigint_deferred() as flag``: a one-element list whose item becomes True when
    SIGINT arrives.  Off the main thread Python cannot install handlers; Ctrl-C then
    behaves as usual.  Every fit enters one, so it is a class on the C module _signal
    (signal.signal converts each handler to and from an enum: 6 of the 8 us a tiny fit
    spent here).
    """

    def __enter__(self):
        flag = self.flag = [False]
        self.installed = False
        if threading.current_thread() is not threading.main_thread():
            return flag

        def handler(signum, frame):
            flag[0] = True

        try:
            self.previous = _signal.signal(_signal.SIGINT, handler)
        except ValueError:  # e.g. embedded interpreters
            return flag
        self.installed = True
        return flag

    def __exit__(self, *exc):
        if self.installed:
            _signal.signal(_signal.SIGINT, self.previous)
        return False


def warn_interrupted(done, total, checkpoint=None, stacklevel=2, best_epoch=None):
    """The warning of a run stopped by Ctrl-C; ``stacklevel`` as if the caller warned.
    ``best_epoch``: restore_best put back the parameters of that (0-based) epoch's
    validation record, those after best_epoch + 1 epochs."""
    if best_epoch is None:
        holds = f"the parameters after epoch {done}"
    else:
        holds = (f"the parameters of its best validation record (restore_best): those "
                 f"after {best_epoch + 1} epochs (best_epoch {best_epoch})")
    msg = (f"training interrupted (Ctrl-C) after {done} of {total} epochs; "
           f"the model holds {holds}")
    if checkpoint is not None:
        msg += f"; fastbp.resume({checkpoint!r}, X, y) continues the run"
    warnings.warn(msg, RuntimeWarning, stacklevel=stacklevel + 1)


def collect_compile_garbage():
    """A full garbage collection after a compile: Numba leaves tens of thousands of
    objects (LLVM modules among them, freed with their finalizers), and the collection
    Python would otherwise run on them during the first chunk took 0.1-0.3 s of a small
    fit's training time.  Part of the compile's cost, timed with it."""
    gc.collect()


def announce(names):
    """One line on stderr before a compilation the user will notice."""
    what = " and ".join(names)
    sys.stderr.write(f"fastbp: compiling {what} for this machine (a few seconds, once: "
                     f"cached on disk for later runs)\n")
    sys.stderr.flush()


class Outcome:
    """What drive reports: why the run stopped (None: it finished), the seconds spent
    training and compiling."""

    def __init__(self):
        self.stopped = None
        self.seconds = 0.0
        self.compile_seconds = 0.0


def drive(job, interrupted, progress=False, desc="fit", chunk_seconds=CHUNK_SECONDS):
    """Run ``job`` (see the module docstring) until it is done, stops or Ctrl-C sets
    ``interrupted[0]`` (from sigint_deferred, entered by the caller before any setup).
    Returns an Outcome."""
    out = Outcome()
    if interrupted[0]:
        out.stopped = "interrupted"
        return out
    pending = job.pending()
    if pending:
        announce(pending)
    t0 = time.perf_counter()
    job.prepare()
    if pending:
        collect_compile_garbage()
    out.compile_seconds = time.perf_counter() - t0
    if interrupted[0]:
        out.stopped = "interrupted"
        return out
    bar = make_bar(job.remaining(), desc) if progress else None
    chunk = first_chunk(job.remaining(), job.work_per_epoch(), chunk_seconds)
    t_start = time.perf_counter()
    try:
        while job.remaining() > 0:
            chunk = job.cap(min(chunk, job.remaining()))
            t0 = time.perf_counter()
            ran, stopped = job.run_chunk(chunk)
            now = time.perf_counter()
            seconds = now - t0
            out.seconds = now - t_start
            if hasattr(job, "clock"):
                job.clock(out.seconds, out.compile_seconds)
            if bar is not None and ran:
                bar.update(ran, job.last_loss())
            if stopped:
                out.stopped = stopped
                break
            reason = job.after_chunk()  # checkpoints
            # after the last epoch, Ctrl-C or a callback's False stop nothing: the run
            # is complete, and its History should say so (stopped None)
            finished = job.remaining() == 0
            if interrupted[0] and not finished:
                out.stopped = "interrupted"
                break
            if not reason:
                reason = job.callbacks()
                if finished:
                    reason = None
                elif not reason and interrupted[0]:  # Ctrl-C during the callbacks
                    reason = "interrupted"
            if reason:
                out.stopped = reason
                break
            chunk = next_chunk(ran, seconds, job.remaining(), chunk_seconds)
        if out.stopped in _EARLY_ENDS and hasattr(job, "ends_early"):
            out.stopped = job.ends_early(out.stopped)
    finally:
        out.seconds = time.perf_counter() - t_start
        if bar is not None:
            bar.close()
    return out
