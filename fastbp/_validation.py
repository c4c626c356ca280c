"""Input checking at the API boundary: every message names the argument, what was
expected and what was given.  Arrays are converted (never modified in place) to the
model dtype and made contiguous, once (copied only when they are not already)."""
import datetime
import math
import numbers
import os
import re

import numpy as np

from ._codes import ACTIVATIONS, DTYPES, INITS, LOSSES


def _names(table):
    return ", ".join(repr(k) for k in table)


def check_sizes(sizes):
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise TypeError(f"sizes must be a sequence of integers, got {sizes!r}")
    sizes = [operator_index(s, f"sizes[{i}]") for i, s in enumerate(sizes)]
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least 2 entries (inputs and outputs), got {sizes!r}")
    bad = [s for s in sizes if s < 1]
    if bad:
        raise ValueError(f"sizes must all be >= 1 (every layer needs a unit), got {sizes!r}")
    n_params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    if n_params >= MAX_PARAMS:  # (numpy would raise OverflowError for the array's size)
        raise ValueError(f"sizes {sizes!r} make {n_params:.3g} parameters, more than any "
                         f"memory can hold")
    return tuple(sizes)


# a model's parameters, at most: float64 ones past this many have no byte offsets
# that fit an int64 (numpy's sizes)
MAX_PARAMS = 2 ** 60


def operator_index(value, name):
    if type(value) is int:  # (the ABC check below is most of a fit's many such checks)
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def check_activations(activation, n_layers):
    if isinstance(activation, str):
        names = [activation] * n_layers
    else:
        try:
            names = list(activation)
        except TypeError:
            raise TypeError(f"activation must be a name or a list of names, got {activation!r}") from None
        if len(names) != n_layers:
            raise ValueError(
                f"activation: expected one name per layer ({n_layers}), got {len(names)}: {names!r}")
    for name in names:
        if not isinstance(name, str) or name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; expected one of {_names(ACTIVATIONS)}")
    return tuple(names)


def check_loss(loss, activations):
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {_names(LOSSES)}")
    if loss == "bce" and activations[-1] != "sigmoid":
        raise ValueError(
            f"loss 'bce' needs a sigmoid output activation, got {activations[-1]!r}")
    if "softmax" in activations[:-1]:
        raise ValueError("activation 'softmax' is only allowed in the output layer (the "
                         "last of the activations)")
    if "exp" in activations[:-1]:
        raise ValueError("activation 'exp' is only allowed in the output layer (the last "
                         "of the activations), with the loss 'poisson'")
    for paired_loss, output in (("cross_entropy", "softmax"), ("poisson", "exp")):
        if (loss == paired_loss) != (activations[-1] == output):
            raise ValueError(f"loss {paired_loss!r} and a {output!r} output go together; "
                             f"got loss {loss!r} with output activation {activations[-1]!r}")
    return loss


def check_output_units(sizes, activations):
    """A softmax output needs two units or more: with one, its output is always 1."""
    if activations[-1] == "softmax" and sizes[-1] < 2:
        raise ValueError(
            f"a softmax output layer needs at least 2 units (one per class), got "
            f"{sizes[-1]}: a softmax of one unit is always 1.  For two classes use two "
            f"softmax outputs, or one sigmoid output with loss='bce'")


def check_dtype(dtype):
    try:
        return _dtypes_checked[dtype]  # (np.dtype and its .name: 7 us a model)
    except (KeyError, TypeError):  # not seen, or not hashable
        pass
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be one of {DTYPES}, got {dtype!r}") from None
    if dt.name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dt.name!r}")
    dt = np.dtype(dt.name)  # native byte order (">f4" is float32: the kernels take no other)
    if len(_dtypes_checked) < 64:
        _dtypes_checked[dtype] = dt
    return dt


_dtypes_checked = {}  # a dtype argument accepted -> its np.dtype


def check_init(init):
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; expected one of "
                             f"{', '.join(map(repr, INITS))} or a number")
        return init
    if isinstance(init, numbers.Real) and not isinstance(init, bool) and np.isfinite(init):
        return float(init)
    raise ValueError(f"init must be one of {', '.join(map(repr, INITS))} or a finite number, "
                     f"got {init!r}")


def as_float_array(a, name, dtype, check_finite=True, squares=None):
    """``a`` as a float ndarray of ``dtype``; rejects what has no faithful float value.
    ``check_finite=False`` leaves out the check for NaN and infinity (and for values
    too large for ``dtype``): for a caller that checks the values where it copies them
    (MLP.from_weights), or has checked them already.  ``squares``: see all_finite."""
    if type(a) is np.ndarray:  # the common case: none of the wrappers below
        arr = a
    else:
        arr = _as_array(a, name)
    kind = arr.dtype.kind
    if kind == "c":
        raise TypeError(f"{name} has complex values (dtype {arr.dtype}); expected real numbers")
    if kind in "OUSVMm":
        raise TypeError(f"{name} has dtype {arr.dtype}; expected a numeric array "
                        f"(convert it with np.asarray(..., dtype=float))")
    # bools are taken as 0/1 and integers converted: both are exact in float64.
    if arr.dtype == dtype:
        out = arr  # errstate costs more than the check; fit converts several arrays
    else:
        with np.errstate(over="ignore"):
            out = arr.astype(dtype, copy=False)
    if check_finite and not all_finite(out, squares=squares):
        _raise_not_finite(arr, name, dtype)
    return out


def _raise_not_finite(arr, name, dtype):
    """The ValueError for an array ``arr`` whose values in ``dtype`` are not all finite."""
    if np.isfinite(arr).all():
        raise ValueError(f"{name} has values too large for {np.dtype(dtype).name} "
                         f"(max |value| {np.abs(arr).max():.3g})")
    raise ValueError(f"{name} contains NaN or infinity")


def _as_array(a, name):
    """np.asarray(a) for what is not an ndarray already, refusing what it would read
    wrongly: strings, scipy.sparse matrices, masked arrays with masked values; pandas'
    nullable columns become floats (NA as NaN)."""
    if isinstance(a, (str, bytes)):
        raise TypeError(f"{name} must be a numeric array, got a string")
    if type(a).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{name} is a scipy.sparse matrix; it must be a dense array here "
                        f"(only the inputs X of a single MLP -- fit, predict, loss, "
                        f"gradient, validation_data, resume, fastbp.sklearn -- may be "
                        f"sparse): convert it with {name}.toarray()")
    if type(a).__module__.startswith("numpy.ma") and np.ma.getmaskarray(a).any():
        # np.asarray would drop the mask and train on whatever the masked entries hold
        raise ValueError(f"{name} is a masked array with {int(np.ma.getmaskarray(a).sum())} "
                         f"masked values; fill them ({name}.filled(value)) or drop those "
                         f"samples first")
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be read as an array: {exc}") from None
    if arr.dtype.kind == "O" and type(a).__module__.startswith("pandas"):
        # pandas' nullable dtypes (Float64, Int64, boolean) come out as objects: take
        # their numbers, a missing value (NA) as NaN, which is refused below
        try:
            arr = a.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            pass  # text and the like: refused below by their dtype
    return arr


# all_finite looks at arrays of up to this many values one by one (np.isfinite)
SMALL_FINITE_CHECK = 1 << 14

# sum_of_squares' BLAS dots take at most this many values: OpenBLAS runs a dot of up to
# 10,000 on the calling thread, a longer one on its worker threads, which then spin for
# about 0.1 s waiting for more -- on the CPUs a fit's own threads are pinned to.
BLAS_SERIAL_DOT = 8192


def sum_of_squares(flat):
    """The sum of the squares of the C-contiguous 1-D float array ``flat`` (inf or NaN
    where one is: the callers' proof of finiteness; under the caller's np.errstate).

    One BLAS dot where numpy's BLAS runs on one thread; else dots of BLAS_SERIAL_DOT
    values, one per row of a stacked matmul (a single numpy call), so that OpenBLAS
    never wakes its worker threads.  After one threaded dot of a fit's data those spun
    through the fit that followed: on a 2-core machine a W4b H=256 epoch took 0.146 s
    on two threads against 0.079 s on one, and 0.072 s on two without the wake-up.  The
    rows cost a one-thread process about 10 us more on 131,072 float64 values, so it
    keeps the one dot.  The order of the additions differs from one dot's (as a
    threaded dot's does): a bound and a finiteness test, not a result."""
    n = flat.shape[0]
    if n <= BLAS_SERIAL_DOT or _blas_serial():
        return float(flat @ flat)
    k = n // BLAS_SERIAL_DOT
    rows = flat[:k * BLAS_SERIAL_DOT].reshape(k, 1, BLAS_SERIAL_DOT)
    tail = flat[k * BLAS_SERIAL_DOT:]
    return (float(np.matmul(rows, rows.transpose(0, 2, 1)).sum(dtype=np.float64))
            + float(tail @ tail))


_blas_threads = None  # kernels.gemm.blas_threads, imported at the first call


def _blas_serial():
    """Whether numpy's OpenBLAS runs on one thread now (False where numpy bundles none:
    another BLAS may thread its dots too)."""
    global _blas_threads
    if _blas_threads is None:
        # (the kernels import this module's package, so not at the top; and once: an
        # import statement costs each fit's data checks about 1 us a call)
        from .kernels.gemm import blas_threads as _blas_threads
    return _blas_threads() == 1


def all_finite(a, block=1 << 16, squares=None):
    """Whether every element of the float array ``a`` is finite.

    Up to SMALL_FINITE_CHECK values (a model's parameters, say), np.isfinite(a).all().
    Beyond, a finite sum of its squares proves it (sum_of_squares, BLAS dots on the
    calling thread): a NaN or an infinity anywhere makes the sum NaN or infinite (the
    squares are never negative, so infinities cannot cancel).  It runs at BLAS speed
    with no temporary: np.isfinite
    allocates a boolean per element and took longer (4096 x 32 inputs: 12 against 9 us
    in float32, 23 against 13 in float64).  Only when the squares overflow (values above
    about 1e19 in float32, 1e154 in float64) or a value is not finite are the elements
    looked at one by one, a block at a time (no temporary as large as ``a``).
    Not the kernels' loops.all_finite: fit would load one more compiled function in
    every process's first fit (the cold start).
    ``squares``: a list, which receives that sum of squares when it is computed and
    finite: fit's check of its data at the run's end (fastbp/_divergence.py:
    data_bounds) takes their norms from it instead of another pass over them."""
    if a.size <= SMALL_FINITE_CHECK or not a.flags.c_contiguous:
        # small: its boolean temporary is at most 16 KB, and it leaves out the errstate
        # and the BLAS call (970 float64 values: 1.6 against 3.5 us; 8.8 against 11.7
        # with cold caches, as after a kernel).  Non-contiguous: flattening would copy it
        return bool(np.isfinite(a).all())
    flat = a.reshape(-1)
    with np.errstate(over="ignore"):  # squares past the dtype's range: looked at below
        square_sum = sum_of_squares(flat)
    if math.isfinite(square_sum):
        if squares is not None:
            squares.append(float(square_sum))
        return True
    return all(np.isfinite(flat[i:i + block]).all() for i in range(0, flat.shape[0], block))


def kernel_ready(a):
    """``a`` C-contiguous, aligned and writeable (copied if it is not): the one array type
    the kernels are compiled for.  (Read-only or unaligned arrays would make Numba compile
    another specialization; the kernels never write their data arguments anyway.)"""
    flags = a.flags
    if flags.c_contiguous and flags.aligned and flags.writeable:
        return a  # (what np.require returns then, in a fifth of its time)
    return np.require(a, requirements=["C", "A", "W"])


def check_X(X, n_features, dtype, name="X", check_finite=True, squares=None):
    x = as_float_array(X, name, dtype, check_finite, squares)
    if x.ndim == 1 and n_features == 1:
        x = x.reshape(-1, 1)
    check_samples_shape(x.shape, n_features, name)
    return x


def check_samples_shape(shape, n_features, name="X"):
    """ValueError unless ``shape`` is (n_samples >= 1, n_features): inputs, dense or
    sparse."""
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, {n_features}), got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if shape[1] != n_features:
        raise ValueError(f"{name} has {shape[1]} features but the model expects "
                         f"sizes[0] = {n_features}")


def check_y(y, n_samples, n_outputs, dtype, name="y", check_finite=True, squares=None):
    t = as_float_array(y, name, dtype, check_finite, squares)
    if t.ndim == 1:
        if n_outputs != 1:
            raise ValueError(f"{name} is 1-D but the model has {n_outputs} outputs; "
                             f"expected shape ({n_samples}, {n_outputs})")
        t = t.reshape(-1, 1)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (n_samples, {n_outputs}), got shape {t.shape}")
    if t.shape[0] != n_samples:
        raise ValueError(f"X and {name} have different numbers of samples: "
                         f"{n_samples} and {t.shape[0]}")
    if t.shape[1] != n_outputs:
        raise ValueError(f"{name} has {t.shape[1]} columns but the model has "
                         f"sizes[-1] = {n_outputs} outputs")
    return t


# How far a row of cross_entropy targets may sum from 1 (soft labels computed in float32
# sum to 1 within about 1e-7): the output delta p - y is the gradient of -sum y log p
# only where the row sums to 1
ROW_SUM_TOLERANCE = 1e-6


def check_targets_for_loss(t, loss, name="y"):
    if loss in ("bce", "cross_entropy") and ((t < 0).any() or (t > 1).any()):
        raise ValueError(f"loss {loss!r} needs targets in [0, 1]; {name} has values in "
                         f"[{t.min():.6g}, {t.max():.6g}]")
    if loss == "cross_entropy" and t.ndim == 2 and t.size:
        off = np.abs(t.sum(axis=1, dtype=np.float64) - 1.0)
        worst = int(np.argmax(off))
        if off[worst] > ROW_SUM_TOLERANCE:
            raise ValueError(
                f"loss 'cross_entropy' needs each row of targets to be one-hot or class "
                f"probabilities summing to 1; row {worst} of {name} sums to "
                f"{float(t[worst].sum(dtype=np.float64)):.6g}.  For labels that are not "
                f"exclusive (multi-label) use sigmoid outputs with loss='bce'")
    if loss == "poisson" and (t < 0).any():
        raise ValueError(f"loss 'poisson' needs targets >= 0 (counts or rates); {name} has "
                         f"values down to {t.min():.6g}")


def class_labels_to_onehot(y, n_classes, name="y"):
    """Integer class labels (n,) in [0, n_classes) -> one-hot (n, n_classes) float64;
    None when y is not a 1-D array of integer values (then it is taken as targets)."""
    arr = np.asarray(y)
    if arr.ndim != 1 or n_classes < 2 or arr.dtype.kind not in "biuf" or arr.size == 0:
        return None
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        return None
    labels = arr.astype(np.int64)
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"{name} holds class labels in [{labels.min()}, {labels.max()}] but "
                         f"the model has {n_classes} outputs: labels must be in "
                         f"[0, {n_classes - 1}]")
    onehot = np.zeros((arr.size, n_classes))
    onehot[np.arange(arr.size), labels] = 1.0
    return onehot


def check_sample_weight(sample_weight, n_samples, dtype):
    """(n,) weights >= 0 in the model dtype, or an empty array for None."""
    if sample_weight is None:
        return np.zeros(0, dtype=dtype)
    w = as_float_array(sample_weight, "sample_weight", dtype)
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(f"sample_weight must have shape ({n_samples},), one weight per "
                         f"sample, got shape {w.shape}")
    if (w < 0).any():
        raise ValueError("sample_weight must be >= 0; it has negative values")
    if w.shape[0] and not (w > 0).any():
        if w.dtype != np.float64 and (np.asarray(sample_weight, dtype=np.float64) > 0).any():
            raise ValueError(f"sample_weight's values are too small for {w.dtype.name}: "
                             f"converted to the model dtype every weight is 0 (the "
                             f"smallest positive {w.dtype.name} is "
                             f"{float(np.finfo(w.dtype).smallest_subnormal):.3g})")
        raise ValueError("sample_weight must have at least one weight > 0; every weight "
                         "is 0, which leaves nothing to fit or to measure")
    return np.ascontiguousarray(w)


# The largest count an option takes (epochs, record_every, step_size, patience, ...):
# the kernels count in int64, and sums such as an epoch number plus record_every must
# not overflow.  2**53 epochs of the smallest network would still take years.
MAX_COUNT = 2 ** 53


def check_positive_int(value, name, minimum=1, maximum=MAX_COUNT):
    v = operator_index(value, name)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if v > maximum:
        raise ValueError(f"{name} must be <= {maximum} (2**{maximum.bit_length() - 1}), "
                         f"got {v}")
    return v


def check_flag(value, name):
    """A yes/no option as a bool: True or False (numpy's booleans, 0 and 1 too).  Anything
    else is refused, so that shuffle="no" cannot mean True."""
    if value is True or value is False:
        return value
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral)
                                               and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def check_real(value, name):
    """A number (Python's or numpy's, not a bool) as a float."""
    if type(value) is float:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def mapped_files(*arrays):
    """The files that memory-mapped arrays among ``arrays`` (or the arrays they are views
    of) read, as real paths: inputs a fit must never write over."""
    files = set()
    for a in arrays:
        while a is not None:
            name = getattr(a, "filename", None) if isinstance(a, np.memmap) else None
            if name:
                files.add(os.path.realpath(name))
            a = getattr(a, "base", None)
    return files


def check_output_not_input(path, name, *arrays):
    """ValueError when the file ``path`` a fit would write is one that an input array is
    memory-mapped from (np.load(..., mmap_mode="r")): writing it would destroy the data
    being read."""
    if path is not None and os.path.realpath(path) in mapped_files(*arrays):
        raise ValueError(f"{name} {path!r} is the file the training data are read from "
                         f"(a memory-mapped input); writing it would destroy them: give "
                         f"another path")


def check_lr(lr):
    if type(lr) is not float and (isinstance(lr, bool) or not isinstance(lr, numbers.Real)):
        raise TypeError(f"lr must be a number, got {lr!r}")
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    return lr


def check_batch_size(batch_size, n_samples):
    if batch_size is None:
        return n_samples
    b = check_positive_int(batch_size, "batch_size")
    if b > n_samples:
        raise ValueError(f"batch_size {b} is larger than the number of samples {n_samples}; "
                         f"use batch_size=None for full-batch training")
    return b


def check_seed(seed, name="seed"):
    if seed is None:
        return None
    s = operator_index(seed, name)
    if s < 0:
        raise ValueError(f"{name} must be >= 0, got {s}")
    return s


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|secs?|seconds?|m|mins?|minutes?|"
                       r"h|hrs?|hours?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_CHECKPOINT_EVERY = ("seconds", 60.0)


def check_checkpoint(checkpoint, checkpoint_every):
    """(path or None, every): every is ("epochs", int), ("seconds", float) or None.

    checkpoint_every: an int is a number of epochs; a duration is a string with a unit
    ("30s", "5 min", "2h") or a datetime.timedelta.  A bare float is refused, so that
    100 and 100.0 cannot mean different things.  None: every 60 seconds.
    """
    if checkpoint is None:
        if checkpoint_every is not None:
            raise ValueError("checkpoint_every was given without checkpoint; pass "
                             "checkpoint='run.npz' (the file to write)")
        return None, None
    if isinstance(checkpoint, bytes) or not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path (str or os.PathLike), got "
                        f"{checkpoint!r}")
    path = os.fspath(checkpoint)
    if isinstance(path, bytes) or not path:
        raise TypeError(f"checkpoint must be a non-empty str path, got {checkpoint!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"checkpoint {path!r} is a folder; give a file name such as "
                         f"{os.path.join(path, 'run.npz')!r}")
    if not os.path.isdir(folder):
        raise ValueError(f"checkpoint {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"checkpoint {path!r}: the folder {folder!r} is not writable")
    return path, check_checkpoint_every(checkpoint_every)


def check_checkpoint_target(path):
    """ValueError when a file is at the checkpoint ``path`` (from check_checkpoint; None
    for none) that is not an earlier checkpoint: a fit writes its checkpoint over an
    older one, never over another file -- a path mistyped as the data's or a saved
    model's would destroy them, chunk after chunk -- nor over a pipe or a device, which
    the rename of a finished file would replace.  (After check_output_not_input, whose
    message is the more precise for a memory-mapped input.)"""
    if path is None or not os.path.exists(path):
        return
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} is not a regular file (a pipe, device or "
                         f"socket); give the path of a file")
    from .io import is_checkpoint_file  # (io reads checkpoints: not at the top)
    if not is_checkpoint_file(path):
        raise ValueError(f"checkpoint {path!r} exists and is not a fastbp training "
                         f"checkpoint; a fit writes only over an earlier checkpoint: give "
                         f"another path, or remove the file first")


def check_checkpoint_every(every):
    if every is None:
        return DEFAULT_CHECKPOINT_EVERY
    if isinstance(every, (bool, np.bool_)):
        raise TypeError(f"checkpoint_every must be an int (epochs) or a duration such as "
                        f"'30s', got {every!r}")
    if isinstance(every, numbers.Integral):
        return "epochs", check_positive_int(every, "checkpoint_every")
    if isinstance(every, datetime.timedelta):
        seconds = every.total_seconds()
    elif isinstance(every, str):
        m = _DURATION.match(every)
        if not m:
            raise ValueError(f"checkpoint_every {every!r} is not a duration; write it as "
                             f"'30s', '5min' or '2h' (or give an int number of epochs)")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)[0].lower()]
    elif isinstance(every, numbers.Real):
        raise TypeError(f"checkpoint_every={every!r}: give an int for a number of epochs "
                        f"or a string with a unit for a duration, e.g. '{every:g}s'")
    else:
        raise TypeError(f"checkpoint_every must be an int (epochs) or a duration such as "
                        f"'30s', got {every!r}")
    if not (np.isfinite(seconds) and seconds > 0):
        raise ValueError(f"checkpoint_every must be a positive duration, got {every!r}")
    return "seconds", float(seconds)


def check_on_divergence(on_divergence):
    if on_divergence not in ("raise", "warn"):
        raise ValueError(f"on_divergence must be 'raise' or 'warn', got {on_divergence!r}")
    return on_divergence


def check_finite_output(out, what, dtype):
    """Raise FloatingPointError when a computed result overflowed (inputs or parameters
    too large for the model dtype)."""
    if not np.isfinite(out).all():
        raise FloatingPointError(
            f"{what} is not finite: the computation overflowed {np.dtype(dtype).name} "
            f"(inputs or parameters too large); scale the inputs down")
