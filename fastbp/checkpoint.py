"""Training checkpoints and ``resume``: a long run survives a crash, a kill or Ctrl-C.

``MLP.fit(..., checkpoint="run.npz", checkpoint_every=...)`` writes the whole state of
the run -- parameters, the shuffling generator's state, the epoch reached, the run's
settings, the loss history so far, the architecture and a fingerprint of the data --
to one .npz file (format ``"fastbp-checkpoint"``), atomically: a temporary file in the
same folder is fsynced and renamed over the old checkpoint, so a crash at any moment
leaves the previous checkpoint or the new one, never a damaged file.

``fastbp.resume("run.npz", X, y)`` continues that run to the number of epochs it was
asked for.  Because the kernels number epochs within the run and the generator's state
is two integers saved with the parameters, the resumed run ends with exactly the
parameters (bit for bit) and history of the run done in one piece.
"""
import hashlib
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np

from . import _validation as V
from .io import (CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, FORMAT, atomic_savez,
                 model_arrays, model_from_archive, open_archive)


@dataclass
class Run:
    """The state of one training run (one ``fit`` call, continued by ``resume``).

    history is the full-length record buffer, ceil(epochs / record_every) float64, of
    which the first ceil(done / record_every) entries are filled.
    """
    epochs: int
    lr: float
    batch_size: int | None  # None: full batch
    shuffle: bool
    record_every: int
    history: np.ndarray
    done: int = 0
    seconds: float = 0.0
    checkpoint: str | None = None
    every: tuple | None = None  # ("epochs", int) or ("seconds", float)
    data_n: int = 0
    data_key: str | None = None
    # training controls (see MLP.fit and kernels/optim.py); set_controls fills them
    hyper: np.ndarray | None = None
    iconf: np.ndarray | None = None
    sw: np.ndarray | None = None         # sample weights, (n,) or empty
    xv: np.ndarray | None = None         # validation set, one sample per column (empty: none)
    yv: np.ndarray | None = None
    swv: np.ndarray | None = None
    val_history: np.ndarray | None = None
    es_state: np.ndarray | None = None   # [best val loss, records without gain, best epoch]
    best_params: np.ndarray | None = None
    callbacks: list | None = None
    chunk_seconds: float = 0.2
    kernel: object = None  # the compiled training loop, chosen at the run's first call

    @classmethod
    def start(cls, epochs, lr, batch_size, shuffle, record_every, checkpoint=None,
              every=None):
        history = np.full(-(-epochs // record_every), np.nan)
        return cls(epochs, lr, batch_size, bool(shuffle), record_every, history,
                   checkpoint=checkpoint, every=every)

    def set_controls(self, hyper, iconf, sw, xv, yv, swv, params, callbacks=None,
                     chunk_seconds=0.2):
        self.hyper, self.iconf = hyper, iconf
        self.sw, self.xv, self.yv, self.swv = sw, xv, yv, swv
        self.val_history = np.full_like(self.history, np.nan)
        self.es_state = np.array([np.inf, 0.0, -1.0])
        self.best_params = params.copy() if self.restore_best else params[:0].copy()
        self.callbacks = callbacks or []
        self.chunk_seconds = chunk_seconds

    def default_controls(self, model, n_features, n_outputs):
        """Plain SGD at a constant lr, no validation (runs from format-1 checkpoints)."""
        from . import _config as C
        hyper, iconf = C.build(self.lr, self.epochs)
        dt = model.dtype
        self.set_controls(hyper, iconf, np.zeros(0, dt), np.zeros((n_features, 0), dt),
                          np.zeros((n_outputs, 0), dt), np.zeros(0, dt), model.params)

    @property
    def restore_best(self):
        from .kernels import optim as O
        return self.iconf is not None and bool(self.iconf[O.I_RESTORE_BEST])

    @property
    def n_records(self):
        """Records of the epochs done (epochs 0, k, 2k, ... below ``done``)."""
        return -(-self.done // self.record_every)


def data_fingerprint(xt, yt):
    """A digest of the training data as the kernels see them (model dtype; the bytes of
    their feature-major copy, whatever their layout), so that ``resume`` can tell whether
    it was given the data the run started with."""
    h = hashlib.blake2b(digest_size=16)
    for a in (xt, yt):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def checkpoint_arrays(model, run):
    kind, value = run.every
    return dict(
        format=np.array(CHECKPOINT_FORMAT),
        format_version=np.array(CHECKPOINT_FORMAT_VERSION),
        **model_arrays(model),
        run_epoch=np.array(run.done, dtype=np.int64),
        run_epochs=np.array(run.epochs, dtype=np.int64),
        lr=np.array(run.lr, dtype=np.float64),
        batch_size=np.array(-1 if run.batch_size is None else run.batch_size, dtype=np.int64),
        shuffle=np.array(run.shuffle),
        record_every=np.array(run.record_every, dtype=np.int64),
        history=run.history[:run.n_records].copy(),
        seconds=np.array(run.seconds, dtype=np.float64),
        every_kind=np.array(kind),
        every_value=np.array(value, dtype=np.float64),
        data_n=np.array(run.data_n, dtype=np.int64),
        data_key=np.array(run.data_key or ""),
        hyper=run.hyper, iconf=run.iconf, sample_weight=run.sw, xv=run.xv, yv=run.yv,
        swv=run.swv, val_history=run.val_history[:run.n_records].copy(),
        es_state=run.es_state, best_params=run.best_params,
        opt_state=model._opt_state, opt_step=model._opt_step,
        opt_kind=np.array(model._opt_kind or ""),
    )


def write_checkpoint(path, model, run):
    """Write the checkpoint of ``run`` (at ``run.done`` epochs) to ``path``, atomically."""
    atomic_savez(path, checkpoint_arrays(model, run))


def read_checkpoint(path):
    """(model, Run) from a checkpoint file; errors name the file and the problem."""
    with open_archive(path, "checkpoint") as ar:
        if ar.format == FORMAT:
            raise ar.error("is a fastbp model file (written by MLP.save), not a training "
                           "checkpoint; read it with fastbp.load")
        model = model_from_archive(ar)
        epochs = ar.integer("run_epochs")
        done = ar.integer("run_epoch")
        lr = ar.real("lr")
        batch_size = ar.integer("batch_size")
        shuffle = ar.boolean("shuffle")
        record_every = ar.integer("record_every")
        seconds = ar.real("seconds")
        kind = ar.text("every_kind")
        value = ar.real("every_value")
        data_n = ar.integer("data_n")
        data_key = ar.text("data_key")
        if epochs < 1 or not 0 <= done <= epochs or record_every < 1:
            raise ar.error(f"inconsistent run state: epoch {done} of {epochs}, "
                           f"record_every {record_every}")
        if not lr > 0 or (batch_size != -1 and batch_size < 1) or data_n < 1:
            raise ar.error(f"inconsistent run settings: lr {lr}, batch_size {batch_size}, "
                           f"{data_n} samples")
        if kind not in ("epochs", "seconds") or not value > 0:
            raise ar.error(f"inconsistent checkpoint_every: {kind} {value}")
        run = Run.start(epochs, lr, None if batch_size == -1 else batch_size, shuffle,
                        record_every)
        run.done = done
        hist = ar.vector("history", "f", length=run.n_records)
        if not np.isfinite(hist).all():
            raise ar.error("the loss history contains NaN or infinity")
        run.history[:run.n_records] = hist
        run.seconds = max(seconds, 0.0)
        run.every = (kind, int(value) if kind == "epochs" else value)
        run.data_n = data_n
        run.data_key = data_key
        n_in, n_out = model.sizes[0], model.sizes[-1]
        run.default_controls(model, n_in, n_out)
        if "hyper" in ar._npz.files:  # format 2: the training controls and optimizer state
            _read_controls(ar, model, run)
    return model, run


def _read_controls(ar, model, run):
    from .kernels import optim as O
    hyper = ar.array("hyper").astype(np.float64)
    iconf = ar.array("iconf").astype(np.int64)
    if hyper.shape != (O.N_HYPER,) or iconf.shape != (O.N_ICONF,):
        raise ar.error("training settings (hyper, iconf) have the wrong shape")
    dt = model.dtype
    n_in, n_out, n_p = model.sizes[0], model.sizes[-1], model._layout.n_params
    xv = ar.array("xv").astype(dt)
    yv = ar.array("yv").astype(dt)
    if xv.ndim != 2 or yv.ndim != 2 or xv.shape[0] != n_in or yv.shape != (n_out, xv.shape[1]):
        raise ar.error("the validation set has inconsistent shapes")
    run.set_controls(hyper, iconf, ar.array("sample_weight").astype(dt),
                     np.ascontiguousarray(xv), np.ascontiguousarray(yv),
                     ar.array("swv").astype(dt), model.params)
    val = ar.array("val_history").astype(np.float64)
    run.val_history[:val.shape[0]] = val[:run.val_history.shape[0]]
    run.es_state[:] = ar.array("es_state").astype(np.float64)
    best = ar.array("best_params").astype(dt)
    if best.shape[0] == n_p:
        run.best_params = best.copy()
    opt_state = ar.array("opt_state").astype(dt)
    if opt_state.shape != (2, n_p):
        raise ar.error("the optimizer state has the wrong shape")
    model._opt_state = np.ascontiguousarray(opt_state)
    model._opt_step = ar.array("opt_step").astype(np.int64).reshape(1).copy()
    model._opt_kind = ar.text("opt_kind") or None


class Saver:
    """Decides when a run writes its checkpoint, and writes it.

    With checkpoint_every in epochs, chunks are cut (``cap``) so that one ends exactly at
    every multiple of that many epochs of the run; with a duration, a checkpoint is
    written after the first chunk that ends that long after the last one.  A failed
    write (disk full, ...) warns and training goes on: the next one may succeed.
    """

    def __init__(self, model, run, xt, yt):
        self.model = model
        self.run = run
        self.kind, self.value = run.every
        if run.data_key is None:
            run.data_n = xt.shape[1]
            run.data_key = data_fingerprint(xt, yt)
        self.last_epoch = run.done
        self.last_time = time.monotonic()
        self.written = 0

    def cap(self, chunk):
        if self.kind == "epochs":
            return max(1, min(chunk, self.value - self.run.done % self.value))
        return chunk

    def due(self):
        if self.run.done == self.last_epoch:
            return False
        if self.kind == "epochs":
            return self.run.done % self.value == 0
        return time.monotonic() - self.last_time >= self.value

    def write(self):
        """Write the checkpoint unless this epoch's is already on disk; True if written."""
        if self.run.done == self.last_epoch:
            return False
        try:
            write_checkpoint(self.run.checkpoint, self.model, self.run)
        except OSError as exc:
            warnings.warn(f"could not write the checkpoint {self.run.checkpoint!r} at epoch "
                          f"{self.run.done} ({exc}); training goes on",
                          RuntimeWarning, stacklevel=5)
            return False
        self.last_epoch = self.run.done
        self.last_time = time.monotonic()
        self.written += 1
        return True


def resume(path, X, y, progress=False, on_divergence="raise"):
    """Continue the training run saved in the checkpoint ``path``; (model, history).

    X, y must be the data the run was started with (same values, same order: checked
    against a fingerprint stored in the checkpoint).  The run goes on to the number of
    epochs its ``fit`` was asked for, with the same lr, batch_size, shuffle and
    record_every, writing checkpoints to ``path`` as before (same checkpoint_every).
    The result is bit-identical to the run done in one piece.

    Returns ``(model, history)``: a new MLP, and the History of the WHOLE run (records
    from its epoch 0, ``history.epochs`` = epochs of the run done in total,
    ``history.seconds`` = training time of all its pieces).  A checkpoint of a finished
    run returns at once.  Ctrl-C and divergence behave as in ``fit``; a DivergenceError
    carries the model (at its last finite parameters) as ``.model``.
    ``history.extra["resumed_at"]`` is the epoch the checkpoint had reached.

    Raises FileNotFoundError for a missing file, ModelFileError (a ValueError) for a
    damaged one or one that is not a checkpoint, ValueError when X, y differ from the
    run's data.
    """
    on_divergence = V.check_on_divergence(on_divergence)
    path = os.fspath(path)
    model, run = read_checkpoint(path)
    xt = model._inputs(X)
    n = xt.shape[1]
    yt = model._targets(y, n)
    if n != run.data_n:
        raise ValueError(f"X has {n} samples but the run in {path} was trained on "
                         f"{run.data_n}; resume needs the same X and y")
    if data_fingerprint(xt, yt) != run.data_key:
        raise ValueError(f"X and y are not the data the run in {path} was started with "
                         f"(their fingerprint differs); resume needs the same X and y, in "
                         f"the same order.  To train the saved model on other data, use "
                         f"fastbp.load({path!r}).fit(...)")
    run.checkpoint = path
    start = run.done
    hist = model._train(xt, yt, run, progress, on_divergence)
    hist.extra["resumed_at"] = start
    return model, hist
