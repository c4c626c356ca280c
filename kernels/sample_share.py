"""Per-sample SGD of wide layers on several threads, bit for bit.

A shared layer's weights are cut by columns (units): thread t owns columns c0 .. c1 - 1
(columns: whole groups of LANES, the last thread's also the remainder).  Its forward
step computes those units; its backward step updates those columns of every row and
carries each row's back-propagated sum on to the next thread: the sum is
rules.row_dot_step's, LANES partial sums over the columns in order, so thread t
continues the lanes where thread t - 1 left them (intrinsics.lanes_dot_step_carry,
through the ``carry`` buffer) and the last thread adds them up with the row's remainder.
Thread t starts a row once t - 1 has signalled it (every ROWS_PER_SIGNAL rows): the
threads run a few rows apart, each over its own columns.  Every unit's chain and every
row's sum are those of one thread: the same bits at any number of threads.

During an epoch each thread's columns live in a block of their own (``blocks``, laid
out like the parameters: thread t's block of layer l holds its columns as
sizes[l] rows of c1 - c0, at w_off[l] + sizes[l] * c0, its biases at b_off[l] + c0),
copied in at the start of the epoch (SAMPLE_LOAD) and back at its end (SAMPLE_STORE).
Left in the parameters' rows, two threads' columns of a row were neighbours in memory,
and the cache lines at their border -- and those the hardware prefetcher fetched past
it -- crossed between the cores with every sample: the 512 x 512 layer of a
per-sample epoch ran 1.6x slower on two threads than on one; from blocks, 1.9x faster.

The pool (pool.py) runs the jobs: ``share`` posts one, runs piece 0 on the calling
thread and waits for the workers' pieces.  Both are compiled as C functions of their
own (``unit_addresses``), only for fits that share, and reached by address from the
per-sample kernel (sample.py) and the workers.
"""
import numpy as np
from numba import carray, cfunc, njit, types, uint64

from . import pool as P
from .config import INNER, JIT, refuse_python_calls
from .intrinsics import LANES, address, like as like_value, lanes_dot_step_carry, tail_dot_step
from .rules import plain_step, times_derivative
from .sample_units import forward_units

# a layer is shared when each thread gets at least one group of LANES columns and the
# layer has at least this many weights (fewer: the jobs cost about what they save)
SAMPLE_SPLIT_MIN_WEIGHTS = 256 * 1024
# a backward step's thread tells the next one every this many rows that it may go on
ROWS_PER_SIGNAL = 16
# job flags
KEEP_Z, PROPAGATE = 1, 2


@njit(**INNER)
def layer_shares(parts, n_in, n_out):
    """Whether a layer of n_in x n_out weights is shared among ``parts`` threads."""
    return parts > 1 and n_out >= LANES * parts and n_in * n_out >= SAMPLE_SPLIT_MIN_WEIGHTS


def shared_weights(sizes, threads):
    """The weights of each layer of ``sizes`` that ``threads`` threads share in a
    per-sample fit (layer_shares, which the kernels ask at run time)."""
    shares = getattr(layer_shares, "py_func", layer_shares)
    return [int(a) * int(b) for a, b in zip(sizes[:-1], sizes[1:])
            if shares(threads, int(a), int(b))]


@njit(**INNER)
def columns(t, parts, n_out):
    """Thread t's columns (c0, c1) of a layer of n_out units shared by ``parts``."""
    groups = n_out // LANES
    c0 = LANES * (t * groups // parts)
    c1 = n_out if t == parts - 1 else LANES * ((t + 1) * groups // parts)
    return c0, c1


@njit(**INNER)
def shared_step(pool, kind, params, h, d, ai, zo, n_in, n_out, wo, bo, code, flags, lr):
    """A per-sample layer's job (``kind``), posted to the pool at address ``pool`` (the
    unit ``share`` at its address) when the pool shares this layer; whether it did (else
    the caller runs the step).  sample.py calls it with values, not constants, so that
    it is compiled once."""
    if pool == 0:
        return False
    state = P._state_of(pool)
    if not layer_shares(P._atomic_load(state, P.PARTS), n_in, n_out):
        return False
    P._call_c(state[P.SAMPLE_UNIT],
              (pool, kind, address(params, 0), params.shape[0], address(h, 0),
               address(d, 0), h.shape[0], ai, zo, n_in, n_out, wo, bo, code, flags, lr))
    return True


# --------------------------------------------------------------------------- pieces
@njit(**INNER)
def _copy_block(params, blocks, wo, bo, n_in, n_out, c0, c1, load):
    """Columns c0 .. c1 - 1 of a layer (weights at wo, biases at bo >= 0) between the
    parameters' rows and their block."""
    w = c1 - c0
    bw = wo + n_in * c0
    for i in range(n_in):
        for j in range(w):
            if load:
                blocks[bw + i * w + j] = params[wo + i * n_out + c0 + j]
            else:
                params[wo + i * n_out + c0 + j] = blocks[bw + i * w + j]
    if bo >= 0:
        for j in range(c0, c1):
            if load:
                blocks[bo + j] = params[bo + j]
            else:
                params[bo + j] = blocks[bo + j]


@njit(**INNER)
def _backward(blocks, h, d, carry, progress, tag, t, parts, ai, zo, n_in, n_out, wo, bo,
              c0, c1, prev_code, propagate, lr, yield_fn):
    """Thread t's columns of a layer's backward step (sample_units.backward_rows and the
    bias step of sample.py, on the block)."""
    w = c1 - c0
    last = t == parts - 1
    m = w - (n_out % LANES if last else 0)  # the lanes' columns; the last thread's rest
    bw = wo + n_in * c0
    zc = zo + c0
    for i in range(n_in):
        row = uint64(bw + i * w)
        a = h[ai + i]
        if not propagate:
            for j in range(w):
                blocks[row + j] = plain_step(blocks[row + j], a * d[zc + j], lr)
            continue
        if t > 0 and i % ROWS_PER_SIGNAL == 0:  # the previous thread's lanes of these rows
            P._wait(progress, (t - 1) * 8, tag + min(i + ROWS_PER_SIGNAL, n_in), yield_fn)
        acc = lanes_dot_step_carry(blocks, row, d, uint64(zc), uint64(m), a, lr, carry,
                                   uint64(i * LANES), t > 0, not last)
        if last:  # rules.row_dot_step's remainder
            acc = tail_dot_step(blocks, row + uint64(m), d, uint64(zc + m), uint64(w - m),
                                acc, a, lr)
            d[ai + i] = times_derivative(acc, a, prev_code)
        elif (i + 1) % ROWS_PER_SIGNAL == 0 or i + 1 == n_in:
            P._atomic_store(progress, t * 8, tag + i + 1)
    if bo >= 0:
        for j in range(c0, c1):
            blocks[bo + j] = plain_step(blocks[bo + j], d[zo + j], lr)


@njit(**INNER)
def piece(pool, t, like):
    """Thread t's piece of the job posted to the pool at ``pool``; like: an array of the
    model's dtype."""
    state = P._state_of(pool)
    parts = state[P.PARTS]
    kind = state[P.KIND]
    n_in, n_out, wo, bo = state[P.S_N_IN], state[P.S_N_OUT], state[P.S_WO], state[P.S_BO]
    c0, c1 = columns(t, parts, n_out)
    n_params = state[P.S_N_PARAMS]
    blocks = carray(P._as_pointer(state[P.BLOCKS], like), n_params)
    if kind == P.SAMPLE_LOAD or kind == P.SAMPLE_STORE:
        params = carray(P._as_pointer(state[P.S_PARAMS], like), n_params)
        _copy_block(params, blocks, wo, bo, n_in, n_out, c0, c1, kind == P.SAMPLE_LOAD)
        return
    n_units = state[P.S_N_UNITS]
    h = carray(P._as_pointer(state[P.S_H], like), n_units)
    d = carray(P._as_pointer(state[P.S_D], like), n_units)
    ai, zo, code, flags = state[P.S_AI], state[P.S_ZO], state[P.S_CODE], state[P.S_FLAGS]
    lr = like_value(P._float_of(state[P.S_LR]), like)
    if kind == P.SAMPLE_FORWARD:
        forward_units(blocks, uint64(wo + n_in * c0), uint64(max(bo, 0) + c0), bo >= 0, h,
                      d, uint64(ai), uint64(zo + c0), uint64(n_in), uint64(c1 - c0),
                      uint64(0), uint64(c1 - c0), code, (flags & KEEP_Z) != 0)
        return
    carry = carray(P._as_pointer(state[P.CARRY], like), n_in * LANES)
    progress = carray(P._as_pointer(state[P.PROGRESS], P._INT64), 8 * parts)
    tag = P._atomic_load(state, P.SEQ) << 32  # this job's signals: above any earlier's
    _backward(blocks, h, d, carry, progress, tag, t, parts, ai, zo, n_in, n_out, wo, bo, c0,
              c1, code, (flags & PROPAGATE) != 0, lr, state[P.YIELD])


@njit(**INNER)
def share(pool, kind, params, n_params, h, d, n_units, ai, zo, n_in, n_out, wo, bo, code,
          flags, lr):
    """Run a job on the pool's threads (params, h, d: pointers)."""
    state = P._state_of(pool)
    state[P.S_PARAMS], state[P.S_N_PARAMS] = P._as_int(params), n_params
    state[P.S_H], state[P.S_D], state[P.S_N_UNITS] = P._as_int(h), P._as_int(d), n_units
    state[P.S_AI], state[P.S_ZO], state[P.S_N_IN], state[P.S_N_OUT] = ai, zo, n_in, n_out
    state[P.S_WO], state[P.S_BO], state[P.S_CODE], state[P.S_FLAGS] = wo, bo, code, flags
    state[P.S_LR] = P._bits_of(np.float64(lr))
    P.run_job(pool, state, kind, state[P.PARTS])


# ------------------------------------------------------------------------ the units
def _units(dtype):
    fp = types.float64 if dtype == np.float64 else types.float32
    ptr, i64 = types.CPointer(fp), types.int64
    like = np.zeros(0, dtype=dtype)

    @cfunc(types.void(i64, i64, ptr, i64, ptr, ptr, i64, i64, i64, i64, i64, i64, i64, i64,
                      i64, fp), **JIT)
    def sample_unit(pool, kind, params, n_params, h, d, n_units, ai, zo, n_in, n_out, wo, bo,
                    code, flags, lr):
        share(pool, kind, params, n_params, h, d, n_units, ai, zo, n_in, n_out, wo, bo, code,
              flags, lr)

    @cfunc(types.void(i64, i64), **JIT)
    def sample_piece(pool, t):
        piece(pool, t, like)

    return sample_unit, sample_piece


_compiled = {}  # dtype -> (unit, piece), kept alive: their code must outlive its use


def unit_addresses(dtype):
    """(the unit that posts a job, the one that runs a piece) for ``dtype``, compiled
    or loaded from Numba's cache on first use."""
    dtype = np.dtype(dtype)
    with P._lock:
        if dtype not in _compiled:
            _compiled[dtype] = _units(dtype)
        unit, one_piece = _compiled[dtype]
    return unit.address, one_piece.address


def attach(state, blocks, carry, progress):
    """Give the pool ``state`` the per-sample units and a fit's buffers: ``blocks`` (the
    parameters' length), ``carry`` (LANES per row of the widest shared layer) and
    ``progress`` (8 int64 per thread), all of the model's dtype but progress."""
    state[P.SAMPLE_UNIT], state[P.PIECE_FN] = unit_addresses(blocks.dtype)
    state[P.BLOCKS], state[P.CARRY] = blocks.ctypes.data, carry.ctypes.data
    state[P.PROGRESS] = progress.ctypes.data


refuse_python_calls(globals())  # the INNER functions: TypeError from Python, not a crash
