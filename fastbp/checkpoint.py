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

import numpy as np

from . import _threads as T
from . import _validation as V
from ._run import Run
from ._sparse import Rows
from .history import Records
from .io import (CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, FORMAT, atomic_savez,
                 model_arrays, model_from_archive, open_archive)
from .kernels import options as O

# Format 1 stored the training options as two arrays read by index (the kernels' old
# ``hyper`` / ``iconf``): their layout, to read such files.
_V1_HYPER = ("lr", "momentum", "beta1", "beta2", "eps", "l2", "power", "step_factor",
             "lr_min", "min_delta")
_V1_ICONF = ("optimizer", "nesterov", "schedule", "step_size", "total_epochs", "patience",
             "restore_best", "sample_mean")


def data_fingerprint(x, y):
    """A digest of the training data as the kernels see them (model dtype, sample-major
    rows), so that ``resume`` can tell whether it was given the data the run started
    with.  Hashed one sample per column, the layout format 1 checkpoints hashed."""
    h = hashlib.blake2b(digest_size=16)
    arrays = (x, y)
    if isinstance(x, Rows):  # sparse rows: their CSR arrays
        h.update(b"csr")
        arrays = x.fingerprint_arrays() + (y,)
    for a in arrays:
        a = np.ascontiguousarray(a.T)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def checkpoint_arrays(model, run):
    """Every field of a checkpoint, by name (format 2)."""
    kind, value = run.every
    loss, val = run.records.view()
    arrays = dict(
        format=np.array(CHECKPOINT_FORMAT),
        format_version=np.array(CHECKPOINT_FORMAT_VERSION),
        **model_arrays(model),
        run_epoch=np.array(run.done, dtype=np.int64),
        run_epochs=np.array(run.epochs, dtype=np.int64),
        lr=np.array(run.lr, dtype=np.float64),
        batch_size=np.array(-1 if run.batch_size is None else run.batch_size, dtype=np.int64),
        shuffle=np.array(run.shuffle),
        record_every=np.array(run.record_every, dtype=np.int64),
        history=loss,
        history_stride=np.array(run.records.stride, dtype=np.int64),
        seconds=np.array(run.seconds, dtype=np.float64),
        every_kind=np.array(kind),
        every_value=np.array(value, dtype=np.float64),
        data_n=np.array(run.data_n, dtype=np.int64),
        data_key=np.array(run.data_key or ""),
        **({} if run.train_rows is None else {"train_rows": run.train_rows}),
        sample_weight=run.sw,
        es_best_loss=run.best_loss.copy(), es_bad_checks=run.bad_checks.copy(),
        es_best_epoch=run.best_epoch.copy(), best_params=run.best_params,
        opt_state=model._opt_state, opt_step=model._opt_step,
        opt_kind=np.array(model._opt_kind or ""),
    )
    arrays.update({f"rule_{k}": np.array(v) for k, v in run.rule._asdict().items()})
    arrays.update({f"stop_{k}": np.array(v) for k, v in run.stop._asdict().items()})
    if run.val is not None:
        arrays.update(val_y=run.val.y, val_w=run.val.w, val_history=val)
        if isinstance(run.val.x, O.SparseRows):
            arrays.update(val_x_indptr=run.val.x.indptr, val_x_indices=run.val.x.indices,
                          val_x_values=run.val.x.values)
        else:
            arrays.update(val_x=run.val.x)
    return arrays


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
        if not 1 <= epochs <= V.MAX_COUNT or not 0 <= done <= epochs or record_every < 1:
            raise ar.error(f"inconsistent run state: epoch {done} of {epochs}, "
                           f"record_every {record_every}")
        if not lr > 0 or (batch_size != -1 and batch_size < 1) or data_n < 1:
            raise ar.error(f"inconsistent run settings: lr {lr}, batch_size {batch_size}, "
                           f"{data_n} samples")
        if kind not in ("epochs", "seconds") or not value > 0 or (
                kind == "epochs" and value != int(value)):  # fit takes whole epochs
            raise ar.error(f"inconsistent checkpoint_every: {kind} {value}")
        files = set(ar._npz.files)
        if ar.version >= 2:
            rule, stop, sw, val = _read_options(ar, model)
        elif "hyper" in files:  # format 1 with the training controls
            rule, stop, sw, val = _read_options_v1(ar, model)
        else:  # the first format 1 files: plain SGD at a constant lr, no validation
            from ._config import build
            rule, stop = build(lr, epochs)
            sw, val = np.zeros(0, model.dtype), None
        run = Run(epochs, lr, None if batch_size == -1 else batch_size, shuffle,
                  record_every, rule, stop, sw, val)
        run.done = done
        stride = ar.integer("history_stride") if "history_stride" in files else 1
        if stride < 1 or stride & (stride - 1):
            raise ar.error(f"inconsistent history stride {stride}")
        kept = -(-run.n_records // stride)
        hist = ar.vector("history", "f", length=kept)
        if not np.isfinite(hist).all():
            raise ar.error("the loss history contains NaN or infinity")
        val_hist = None
        if val is not None and "val_history" in files:
            val_hist = ar.array("val_history").astype(np.float64)[:kept]
            val_hist = np.concatenate([val_hist, np.full(kept - val_hist.shape[0], np.nan)])
        run.records = _records(run, hist, val_hist, stride)
        run.seconds = max(seconds, 0.0)
        run.every = (kind, int(value) if kind == "epochs" else value)
        run.data_n = data_n
        run.data_key = data_key
        if "train_rows" in files:
            rows = ar.array("train_rows")
            if (rows.ndim != 1 or rows.dtype.kind not in "iu" or rows.size == 0
                    or rows.size > data_n or (np.diff(rows) <= 0).any() or rows[0] < 0
                    or rows[-1] >= data_n):
                raise ar.error(f"train_rows must be increasing row numbers below {data_n}")
            run.train_rows = rows.astype(np.int64)
        n_train = data_n if run.train_rows is None else run.train_rows.size
        if sw.ndim != 1 or sw.shape[0] not in (0, n_train) or (sw.shape[0] and (
                not np.isfinite(sw).all() or (sw < 0).any() or not (sw > 0).any())):
            raise ar.error(f"inconsistent sample weights: shape {sw.shape} for {n_train} "
                           f"training samples")
        if batch_size > n_train:
            raise ar.error(f"inconsistent batch_size {batch_size} for {n_train} training "
                           f"samples")
        _read_state(ar, model, run, files)
    return model, run


def _records(run, loss, val, stride):
    records = Records(validating=run.val is not None)
    records.restore(loss, val, stride, run.n_records)
    return records


def _read_options(ar, model):
    """Format 2: the options by name."""
    rule = _options(ar, O.Rule, "rule_")
    stop = _options(ar, O.Stop, "stop_")
    dt = model.dtype
    sw = ar.array("sample_weight").astype(dt)
    val = None
    n_in, n_out = model.sizes[0], model.sizes[-1]
    if "val_x" in ar._npz.files:
        xv = np.ascontiguousarray(ar.array("val_x").astype(dt))
        yv = np.ascontiguousarray(ar.array("val_y").astype(dt))
        if xv.ndim != 2 or yv.ndim != 2 or xv.shape[1] != n_in or \
                yv.shape != (xv.shape[0], n_out):
            raise ar.error("the validation set has inconsistent shapes")
        _check_finite(ar, (xv, yv), "the validation set")
        val = O.Data(xv, yv, _val_weights(ar, ar.array("val_w"), xv.shape[0], dt))
    elif "val_x_indptr" in ar._npz.files:  # sparse validation rows
        indptr = ar.array("val_x_indptr").astype(np.int64)
        indices = ar.array("val_x_indices").astype(np.int64)
        values = np.ascontiguousarray(ar.array("val_x_values").astype(dt))
        yv = np.ascontiguousarray(ar.array("val_y").astype(dt))
        if indptr.ndim != 1 or indptr.shape[0] < 2 or indptr[0] != 0 or \
                np.any(np.diff(indptr) < 0) or indptr[-1] != indices.shape[0] or \
                values.shape != indices.shape or (indices.size and (
                    indices.min() < 0 or indices.max() >= n_in)) or \
                yv.shape != (indptr.shape[0] - 1, n_out):
            raise ar.error("the sparse validation set is inconsistent")
        _check_finite(ar, (values, yv), "the validation set")
        xv = Rows(indptr, indices, values, n_in).for_kernels(model.sizes[1])
        val = O.Data(xv, yv, _val_weights(ar, ar.array("val_w"), yv.shape[0], dt))
    return _checked(ar, rule), _checked_stop(ar, stop), sw, val


def _read_options_v1(ar, model):
    """Format 1: hyper / iconf arrays read by index, the validation set feature-major."""
    hyper = ar.array("hyper").astype(np.float64)
    iconf = ar.array("iconf").astype(np.int64)
    if iconf.shape == (len(_V1_ICONF) - 1,):  # written before sample_mean existed
        iconf = np.append(iconf, 0)
    if hyper.shape != (len(_V1_HYPER),) or iconf.shape != (len(_V1_ICONF),):
        raise ar.error("training settings (hyper, iconf) have the wrong shape")
    h = dict(zip(_V1_HYPER, hyper.tolist()))
    i = dict(zip(_V1_ICONF, iconf.tolist()))
    rule = O.Rule(int(i["optimizer"]), h["lr"], h["momentum"], bool(i["nesterov"]),
                  h["beta1"], h["beta2"], h["eps"], h["l2"], int(i["schedule"]), h["power"],
                  int(i["step_size"]), h["step_factor"], h["lr_min"], int(i["total_epochs"]),
                  bool(i["sample_mean"]), h["l2"])
    stop = O.Stop(int(i["patience"]), h["min_delta"], bool(i["restore_best"]))
    dt = model.dtype
    xv = ar.array("xv").astype(dt)
    yv = ar.array("yv").astype(dt)
    n_in, n_out = model.sizes[0], model.sizes[-1]
    if xv.ndim != 2 or yv.ndim != 2 or xv.shape[0] != n_in or yv.shape != (n_out, xv.shape[1]):
        raise ar.error("the validation set has inconsistent shapes")
    val = None
    if xv.shape[1]:
        val = O.Data(np.ascontiguousarray(xv.T), np.ascontiguousarray(yv.T),
                     _val_weights(ar, ar.array("swv"), xv.shape[1], dt))
    return (_checked(ar, rule), _checked_stop(ar, stop), ar.array("sample_weight").astype(dt),
            val)


_KINDS = {int: "iu", float: "iuf", bool: "b"}


def _options(ar, cls, prefix):
    """The kernels' options ``cls`` (Rule or Stop) from the fields ``prefix + name``, each
    one value of its field's type (a string, or a float where an int goes, would fail in
    the checks or compile the kernels anew for that type)."""
    values = {}
    files = ar._npz.files
    for name, kind in cls.__annotations__.items():
        if cls is O.Rule and name == "l2_loss" and prefix + name not in files:
            values[name] = values["l2"]  # written before the field existed: l2's value
            continue
        a = ar.array(prefix + name)
        if a.size != 1 or a.dtype.kind not in _KINDS[kind] or (
                kind is float and not np.isfinite(a).all()):
            raise ar.error(f"invalid training options: {prefix}{name} should be one "
                           f"{'finite number' if kind is float else kind.__name__}, got "
                           f"{a!r}")
        values[name] = kind(a.item())
    return cls(**values)


def _check_finite(ar, arrays, what):
    """ModelFileError naming the file unless every value of ``arrays`` is finite (as fit
    requires of the data it is given)."""
    if not all(np.isfinite(a).all() for a in arrays):
        raise ar.error(f"NaN or infinity in {what}")


def _val_weights(ar, w, n, dt):
    """The validation set's sample weights: (n,) or empty (none), as fit stores them; the
    kernels read one per validation sample and do not check the length."""
    if w.ndim != 1 or w.shape[0] not in (0, n) or w.dtype.kind not in "biuf" or (
            w.shape[0] and (not np.isfinite(w).all() or (w < 0).any())):
        raise ar.error(f"inconsistent validation sample weights: {w.dtype} {w.shape} for "
                       f"{n} validation samples")
    return np.ascontiguousarray(w.astype(dt))


def _checked(ar, rule):
    """The Rule read from ``ar``, or an error naming the file when one of its values is not
    one fit could have given (a damaged or hand-edited checkpoint must not train)."""
    from ._config import OPTIMIZERS, SCHEDULES
    if not (rule.lr > 0 and rule.step_size >= 1 and rule.eps > 0
            and rule.optimizer in OPTIMIZERS.values() and rule.schedule in SCHEDULES.values()
            and 0 <= rule.momentum < 1 and 0 <= rule.beta1 < 1 and 0 <= rule.beta2 < 1
            and rule.l2 >= 0 and rule.l2_loss >= 0 and rule.power >= 0
            and 0 < rule.step_factor <= 1 and rule.lr_min >= 0 and rule.total_epochs >= 1):
        raise ar.error(f"inconsistent training options: {rule}")
    return rule


def _checked_stop(ar, stop):
    """The Stop read from ``ar``, or an error naming the file (see ``_checked``)."""
    if not (stop.patience >= 0 and stop.min_delta >= 0):
        raise ar.error(f"inconsistent early stopping options: {stop}")
    return stop


def _one(ar, name, dtype):
    """The one-value array ``name`` of ``ar`` as ``dtype``, or an error naming the file."""
    a = ar.array(name)
    if a.size != 1:
        raise ar.error(f"{name} must hold one value, not {a.size}")
    return a.astype(dtype).reshape(1)


def _read_state(ar, model, run, files):
    """The early-stopping record and the optimizer state."""
    dt = model.dtype
    n_p = model._layout.n_params
    if "es_best_loss" in files:
        run.best_loss[:] = _one(ar, "es_best_loss", np.float64)
        run.bad_checks[:] = _one(ar, "es_bad_checks", np.int64)
        run.best_epoch[:] = _one(ar, "es_best_epoch", np.int64)
    elif "es_state" in files:  # format 1: [best loss, checks, best epoch] as floats
        es = ar.array("es_state").astype(np.float64)
        run.best_loss[0], run.bad_checks[0], run.best_epoch[0] = es[0], int(es[1]), int(es[2])
    if run.bad_checks[0] < 0 or not -1 <= run.best_epoch[0] <= run.done \
            or np.isnan(run.best_loss[0]):
        raise ar.error(f"inconsistent early-stopping record: best loss {run.best_loss[0]} "
                       f"at epoch {run.best_epoch[0]}, {run.bad_checks[0]} checks without "
                       f"improvement")
    best = ar.array("best_params").astype(dt) if "best_params" in files else np.zeros(0, dt)
    _check_finite(ar, (best,), "the best parameters")
    if not run.stop.restore_best:
        run.best_params = model._params[:0].copy()
    elif best.shape[0] == n_p:
        run.best_params = best.copy()
    else:
        run.best_params = model._params.copy()
    if "opt_state" in files:
        opt_state = ar.array("opt_state").astype(dt)
        if opt_state.shape != (2, n_p):
            raise ar.error("the optimizer state has the wrong shape")
        kind = ar.text("opt_kind") or None
        step = _one(ar, "opt_step", np.int64).copy()
        # a resumed run would train on these: NaN here made NaN weights, reported as a
        # divergence of the run
        if kind not in (None, "sgd", "adam"):
            raise ar.error(f"unknown optimizer {kind!r} in the optimizer state")
        if not np.isfinite(opt_state).all() or step[0] < 0 or (
                kind == "adam" and (opt_state[1] < 0).any()):
            raise ar.error("the optimizer state contains NaN, infinity, a negative step "
                           "count or a negative second moment")
        model._opt_state = np.ascontiguousarray(opt_state)
        model._opt_step = step
        model._opt_kind = kind


class Saver:
    """Decides when a run writes its checkpoint, and writes it.

    With checkpoint_every in epochs, chunks are cut (``cap``) so that one ends exactly at
    every multiple of that many epochs of the run; with a duration, a checkpoint is
    written after the first chunk that ends that long after the last one.  A failed
    write (disk full, ...) warns and training goes on: the next one may succeed.
    """

    def __init__(self, model, run, x, y):
        self.model = model
        self.run = run
        self.kind, self.value = run.every
        if run.data_key is None:
            x, y = run.given or (x, y)
            run.data_n = x.shape[0]
            run.data_key = data_fingerprint(x, y)
        run.given = None
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


def resume(path, X, y, progress=False, on_divergence="raise", n_jobs=None):
    """Continue the training run saved in the checkpoint ``path``; (model, history).

    X, y must be the data the run was started with (same values, same order: checked
    against a fingerprint stored in the checkpoint).  The run goes on to the number of
    epochs its ``fit`` was asked for, with the same lr, batch_size, shuffle and
    record_every, writing checkpoints to ``path`` as before (same checkpoint_every).
    The result is bit-identical to the run done in one piece.  ``n_jobs``: the threads
    its wide layers may share, as in ``fit`` (not saved: the bits are the same at any
    number of threads).

    Returns ``(model, history)``: a new MLP, and the History of the WHOLE run (records
    from its epoch 0, ``history.epochs`` = epochs of the run done in total,
    ``history.seconds`` = training time of all its pieces).  A checkpoint of a finished
    run returns at once (all its epochs run, or ended by early stopping: then
    ``history.stopped == "early_stopping"``).  Ctrl-C and divergence behave as in ``fit``; a DivergenceError
    carries the model (at its last finite parameters) as ``.model``.
    ``history.extra["resumed_at"]`` is the epoch the checkpoint had reached.

    Raises FileNotFoundError for a missing file, ModelFileError (a ValueError) for a
    damaged one or one that is not a checkpoint, ValueError when X, y differ from the
    run's data.
    """
    on_divergence = V.check_on_divergence(on_divergence)
    threads = T.resolve(n_jobs)
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"resume's path must be the checkpoint file's path (str or "
                        f"os.PathLike), got {path!r}")
    path = os.fspath(path)
    from ._driver import sigint_deferred
    model, run = read_checkpoint(path)
    x = model._inputs(X)
    n = x.shape[0]
    y = model._targets(y, n)
    if n != run.data_n:
        raise ValueError(f"X has {n} samples but the run in {path} was trained on "
                         f"{run.data_n}; resume needs the same X and y")
    if data_fingerprint(x, y) != run.data_key:
        raise ValueError(f"X and y are not the data the run in {path} was started with "
                         f"(their fingerprint differs); resume needs the same X and y, in "
                         f"the same order and the same form (a sparse X and its dense "
                         f"array differ here).  To train the saved model on other data, use "
                         f"fastbp.load({path!r}).fit(...)")
    if run.train_rows is not None:  # the rows validation_fraction did not hold out
        rows = run.train_rows
        x = x[rows] if isinstance(x, Rows) else V.kernel_ready(x[rows])
        y = V.kernel_ready(y[rows])
    run.checkpoint = path
    run.threads = threads
    run.resumed_at = run.done
    with sigint_deferred() as interrupted:
        hist = model._train(x, y, run, progress, on_divergence, interrupted)
    return model, hist
