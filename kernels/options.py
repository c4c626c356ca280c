"""The named structures the training kernels take (Numba types namedtuples field by
field: a kernel reads ``rule.lr``, never ``hyper[0]``).

Read-only, per fit:
    Net   the architecture: sizes, weight and bias offsets in the flat parameter
          vector, activation codes, loss code, and the matrix products' settings.
    Data  one data set, one sample per row: x (n, n_in) or SparseRows, y (n, n_out),
          w (n,) sample weights or empty; all C-contiguous in the model dtype.
    SparseRows  a CSR matrix of samples, read by the first layer directly (sparse.py),
          with that layer's scratch.
    Loop  batch size, shuffling, records.
    Rule  the update rule and its learning-rate schedule (rules.py).
    Stop  early stopping on validation data.
Updated in place by the kernels, carried from one chunk of epochs to the next:
    State the shuffling stream, the optimizer's moments and step count, and the early
          stopping record.
    Work  the buffers of a fit (allocated once by ``make_work``).
"""
import ctypes
import functools
from typing import NamedTuple

import numpy as np

from . import rules as R


class Net(NamedTuple):
    sizes: np.ndarray    # int64 (L + 1,): units per layer, inputs first
    w_off: np.ndarray    # int64 (L,): layer l's (sizes[l], sizes[l+1]) weights, row-major
    b_off: np.ndarray    # int64 (L,): its sizes[l+1] biases, -1 without biases
    acts: np.ndarray     # int64 (L,): activation codes (rules.py)
    loss: int            # loss code (rules.py)
    product_min_work: int  # layers at least this big use gemm (batch.uses_products); -1 never
    gemm: int            # address of the gemm unit (gemm.py); 0 where no layer uses it
    blas: int            # address of BLAS's gemm for the largest products; 0: none
    blas_min_work: int   # products of at least this many multiply-adds go to BLAS
    pool: int            # address of a thread pool's state (pool.py; gemm is then the
                         # pooled unit); 0: one thread


class Data(NamedTuple):
    x: np.ndarray  # (n, n_in), or a SparseRows
    y: np.ndarray  # (n, n_out)
    w: np.ndarray  # (n,) sample weights, or (0,): none


class SparseRows(NamedTuple):
    indptr: np.ndarray   # int64 (n + 1,): row r's entries are [indptr[r], indptr[r + 1])
    indices: np.ndarray  # int64 (nnz,): their columns, increasing within a row
    values: np.ndarray   # (nnz,) in the model dtype
    shape: tuple         # (n, n_in), as an array's
    # the first layer's scratch: one sample's sums or deltas (sizes[1],); for the plain
    # step, the gradient rows a batch touches (n_in * sizes[1],), which batch last
    # touched each row and which rows it touched (n_in,), and the batch count (1,);
    # empty where only the forward pass runs
    column: np.ndarray
    grad: np.ndarray
    row_mark: np.ndarray
    touched: np.ndarray
    stamp: np.ndarray


def sparse_rows(indptr, indices, values, n_in, n_out, descend):
    """SparseRows around CSR arrays (int64, int64, the model dtype; kept, not copied),
    with scratch for a first layer of n_out units: for the plain step inside the
    backward pass (``descend``), else only for the forward pass and the gradient."""
    dtype = values.dtype
    n_rows = indptr.shape[0] - 1
    rows = n_in if descend else 0
    return SparseRows(indptr, indices, values, (n_rows, n_in), np.zeros(n_out, dtype),
                      np.zeros(n_in * n_out if descend else 0, dtype),
                      np.zeros(rows, np.int64), np.zeros(rows, np.int64),
                      np.zeros(1, np.int64))


class Loop(NamedTuple):
    batch_size: int      # samples per update (>= n: full batch)
    shuffle: bool        # reorder the samples every epoch (the State's stream)
    record_every: int    # epochs between loss records


class Rule(NamedTuple):
    optimizer: int        # rules.SGD or rules.ADAM
    lr: float
    momentum: float
    nesterov: bool
    beta1: float
    beta2: float
    eps: float
    l2: float             # weight decay on weights, not biases
    schedule: int         # rules.CONSTANT, INVSCALING, STEP or COSINE
    power: float          # invscaling: lr / (1 + epoch) ** power
    step_size: int        # step: lr * step_factor ** (epoch // step_size)
    step_factor: float
    lr_min: float         # cosine: from lr down to lr_min over total_epochs
    total_epochs: int
    sample_mean: bool     # epoch loss: batch losses weighted by size; L2 / batch size
    l2_loss: float        # the L2 coefficient of the recorded loss: l2, except where a
    #                       caller's convention weighs the term otherwise (the
    #                       scikit-learn wrapper's multi-output regression)


class Stop(NamedTuple):
    patience: int         # records without improvement before stopping; 0: never stop
    min_delta: float      # improvement needed to reset the count
    restore_best: bool    # keep the best record's parameters in State.best_params


class State(NamedTuple):
    rng: np.ndarray          # int64 (2,): the shuffling stream (rng.py)
    moments: np.ndarray      # (2, n_params): velocity / Adam's m, Adam's v
    step: np.ndarray         # int64 (1,): updates so far (Adam's t)
    best_loss: np.ndarray    # float64 (1,): best validation loss so far
    bad_checks: np.ndarray   # int64 (1,): records since it improved
    best_epoch: np.ndarray   # int64 (1,): its epoch (-1: none)
    best_params: np.ndarray  # (n_params,) when Stop.restore_best, else (0,)


class Work(NamedTuple):
    a_off: np.ndarray    # int64 (L + 2,): layer l's block of acts / deltas starts at a_off[l]
    acts: np.ndarray     # activations, feature-major: layer l's sizes[l] rows of cap samples
    deltas: np.ndarray   # the same layout, dLoss/dz
    grad: np.ndarray     # (n_params,), or (0,) where the step is fused into backward
    z_out: np.ndarray    # output pre-activations (bce, cross_entropy), or (0,)
    y_batch: np.ndarray  # the batch's targets, feature-major
    w_batch: np.ndarray  # the batch's sample weights
    perm: np.ndarray     # int64 (n,): the epoch's sample order
    h: np.ndarray        # per-sample activations, sum(sizes)
    d: np.ndarray        # per-sample deltas, sum(sizes)
    passes: object = None  # int64 (4,): the batch passes' addresses (passes.for_dtype),
                           # for the kernels that call them; None elsewhere
    pool: int = 0          # per-sample fits: the address of the pool sharing the wide
                           # layers (sample_share.py); 0: one thread


def as_compiled(value):
    """``value`` with its Python floats and ints -- in namedtuples, at any depth -- as the
    NumPy float64 and int64 that Numba compiles them as.  For the kernels' Python
    meaning (NUMBA_DISABLE_JIT): NumPy 2 treats a Python scalar as "weak", so there
    ``0.9 * v`` of a float32 v is a float32, where compiled it is a float64, and a
    momentum or Adam step would round differently."""
    if isinstance(value, bool) or isinstance(value, np.generic):
        return value
    if isinstance(value, float):
        return np.float64(value)
    if isinstance(value, int):
        return np.int64(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(as_compiled(v) for v in value))
    return value


def plain(*options):
    """Named tuples of options (Net, Data, Loop, Rule, Stop, State, Work) as the plain
    tuples of their fields that the training and predict entries take (loops.
    named_options names them again): Numba's dispatcher types a plain tuple in C, a
    named one through Python."""
    return tuple(tuple(o) for o in options)


def plain_rule(lr, epochs=1):
    """Plain SGD at a constant learning rate."""
    return Rule(R.SGD, float(lr), 0.0, False, 0.9, 0.999, 1e-8, 0.0, R.CONSTANT, 0.5, 1, 0.5,
                0.0, int(epochs), False, 0.0)


NO_STOP = Stop(0, 0.0, False)


def is_plain(rule):
    """Whether the rule is plain SGD: no optimizer state, no L2."""
    return rule.optimizer == R.SGD and rule.momentum == 0.0 and rule.l2 == 0.0


def new_state(n_params, dtype, rng, restore_best=False):
    """A fresh State around the generator state ``rng`` (kept, not copied)."""
    return State(rng, np.zeros((2, n_params), dtype=dtype), np.zeros(1, dtype=np.int64),
                 np.full(1, np.inf), np.zeros(1, dtype=np.int64), np.full(1, -1, np.int64),
                 np.zeros(n_params if restore_best else 0, dtype=dtype))


# The work buffers start on a 64-byte boundary, an AVX-512 vector and a cache line: the
# batch rows are padded to whole vectors (generate.PAD_BYTES: 64 or 32 bytes), and a
# vector load or store that straddles two cache lines costs two.  (NumPy aligns to 16
# bytes: its arrays start on a 64-byte boundary one time in four, and never past
# malloc's mmap threshold.)
ALIGN_BYTES = 64


def aligned_zeros(lengths, dtype):
    """Zero arrays of ``dtype`` (a np.dtype) of these lengths (a tuple), each starting on
    an ALIGN_BYTES boundary: views of one allocation, so that its address is looked up
    once (a microsecond, ten times the cost of a small np.zeros; a fit makes several
    buffers)."""
    starts, total = _aligned_starts(lengths, dtype.itemsize)
    raw = np.zeros(total, dtype)
    at = (-_address(raw) % ALIGN_BYTES) // dtype.itemsize
    return [raw[at + a:at + a + n] for a, n in zip(starts, lengths)]


def aligned_empty(n, dtype):
    """An uninitialized 1-D array of ``n`` elements of ``dtype`` starting on an
    ALIGN_BYTES boundary (a model's parameters, written by the caller: see
    aligned_copy)."""
    dtype = np.dtype(dtype)
    step = ALIGN_BYTES // dtype.itemsize
    raw = np.empty(n + step, dtype)
    at = (-_address(raw) % ALIGN_BYTES) // dtype.itemsize
    return raw[at:at + n]


def _address(fresh):
    """The address of the data of ``fresh``, a new (so writable, contiguous) array:
    through ctypes' from_buffer, a third of the cost of ``fresh.ctypes.data``."""
    return ctypes.addressof(ctypes.c_char.from_buffer(fresh))


def aligned_copy(a):
    """A copy of the 1-D array ``a`` starting on an ALIGN_BYTES boundary: a model's
    parameters.  A per-sample epoch of a 32-256-256-10 net runs its weight rows as
    vector loads from the parameters; 16 bytes past a cache line, numpy's alignment three
    times in four, each of them straddles two lines (float32 48 ms instead of 40,
    float64 84 instead of 70)."""
    out = aligned_empty(a.shape[0], a.dtype)
    out[...] = a
    return out


@functools.lru_cache(maxsize=256)
def _aligned_starts(lengths, itemsize):
    """aligned_zeros' offsets of each array in elements, and the allocation's length."""
    step = ALIGN_BYTES // itemsize
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + (n + step - 1) // step * step)
    return tuple(starts[:-1]), starts[-1] + step


@functools.lru_cache(maxsize=256)
def _work_layout(sizes, cap, n_params, keep_z, per_sample, gradient, sparse):
    """make_work's block offsets (a_off) and buffer lengths, from its arguments (sizes a
    tuple): remembered, as every fit and prediction asks."""
    blocks = (0,) + sizes[1:] if sparse else sizes
    offsets = [0]
    for units in blocks:
        offsets.append(offsets[-1] + units * cap)
    k = sizes[-1]
    rows = 0 if per_sample else sum(blocks) * cap
    units = sum(sizes) if per_sample else 0
    lengths = (rows, rows, n_params if gradient else 0,
               k * cap if keep_z and not per_sample else 0, 0 if per_sample else k * cap,
               cap, units, units)
    return tuple(offsets), lengths


def make_work(sizes, n_params, cap, n_samples, dtype, keep_z, per_sample=False,
              gradient=True, sparse=False, passes=None):
    """The buffers of a fit (or an evaluation) in batches of up to ``cap`` samples.

    ``gradient``: whether a gradient buffer is needed (the fused plain step needs none);
    ``keep_z``: the output pre-activations (bce, cross_entropy, poisson); ``per_sample``:
    the per-sample path's unit vectors instead of the batch rows; ``sparse``: the inputs
    are SparseRows, which the first layer reads where they are (the layer-0 block of
    the batch rows is empty: dense, it would be the size of cap rows of the data);
    ``passes``: the batch passes (passes.for_dtype) for kernels that call them."""
    offsets, lengths = _work_layout(tuple(np.asarray(sizes).tolist()), int(cap),
                                    int(n_params), bool(keep_z), bool(per_sample),
                                    bool(gradient), bool(sparse))
    acts, deltas, grad, z_out, y_batch, w_batch, h, d = aligned_zeros(lengths, np.dtype(dtype))
    return Work(np.array(offsets, dtype=np.int64), acts, deltas, grad, z_out, y_batch, w_batch,
                np.arange(n_samples, dtype=np.int64), h, d, passes)
