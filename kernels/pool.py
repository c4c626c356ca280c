"""Threads sharing one model's layers, bit for bit.

A fit on several threads runs its training kernel on the calling thread as usual, and
hands each large layer step to the pool: the step is cut into pieces, the calling
thread computes the first and worker threads (``worker``, one per extra thread, started
by fastbp/_threads.py for the length of a kernel call) the others.  The jobs:

- a product (the pooled gemm unit, ``unit_address``), cut into whole tiles (rows of c
  in tiles.ROWS, or columns in panels of tiles.VECS vectors), each computed by the fit's
  own single-thread unit;
- a batch layer's step (``share_layer``, batch.py): its product, then the element-wise
  steps (bias, activation, derivative, bias gradient) of the same units, while they are
  in the cache of the thread that computed them;
- a per-sample layer's step (sample_share.py): its units' forward step, or its columns'
  backward step.
Every element is the same chain whoever computes it (tiles.py, rows.py, sample_share.py):
the results are the same bits at any number of threads.

Each thread's piece of a job runs in the pool's piece unit (``batch_piece_address``, or
sample_share's), a C function reached by its address from the workers and from the
thread that posts the job: its code is compiled once, not again into every caller.

Why not Numba's ``parallel=True``: a product takes tens of microseconds, and between
two products the pool's threads go to sleep (libgomp spins only briefly when it thinks
the machine is busy, and the fallback "workqueue" pool always sleeps); waking them
cost more than the product saved (W4b at H = 256 ran no faster on two threads).  Here
the workers spin on a shared sequence number while the kernel runs, and a job's start
costs a few hundred nanoseconds.  They yield the CPU (sched_yield) every YIELD_EVERY
spins, so an oversubscribed machine still progresses, and each is pinned to a CPU other
than the calling thread's (``_worker_cpus``).

The shared state is one int64 array (``new_state``): the job's sequence number, the
count of pieces done and the stop flag each on its own cache line, then the job.
"""
import ctypes
import os
import threading

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, config as numba_config, njit, types
from numba.extending import intrinsic

from . import gemm, tiles
from .config import INNER, JIT, refuse_python_calls
from .intrinsics import address, like as like_value
from .rows import activate_rows, add_bias, bias_gradient, derivative_rows

# the state's slots: SEQ, DONE, STOP one cache line apart; the job after them: a
# product's (TA .. BETA), and a batch layer's element-wise steps' (CODE .. DESCEND)
SEQ, DONE, STOP = 0, 8, 16
PARTS, UNIT, YIELD, KIND, LAYER_FN = range(24, 29)
TA, TB, M, N, K, A, LDA, B, LDB, C, LDC, ALPHA, BETA = range(29, 42)
CODE, EXTRA, AUX, NB, LR, HAS_BIAS, DESCEND = range(42, 49)
# a per-sample layer's job (sample_share.py): the state's own address, the units that
# post a job and run a piece of it, the fit's buffers, then the job
SELF, SAMPLE_UNIT, PIECE_FN, BLOCKS, CARRY, PROGRESS = range(49, 55)
S_PARAMS, S_N_PARAMS, S_H, S_D, S_N_UNITS, S_AI, S_ZO, S_N_IN, S_N_OUT, S_WO, S_BO, \
    S_CODE, S_FLAGS, S_LR = range(55, 69)
JOB_PARTS = 69  # the pieces of a batch job: PARTS, or 1 for one this thread runs alone
STATE_LEN = 70
# the kinds of job: a product; a batch layer's forward (product, bias, activation),
# back-propagated delta (product, derivative), weight gradient or step (product, bias);
# a per-sample layer's weights into or out of the threads' blocks, its forward step, its
# backward step (sample_share.py)
PRODUCT, LAYER_FORWARD, LAYER_DELTA, LAYER_WEIGHTS = range(4)
SAMPLE_LOAD, SAMPLE_STORE, SAMPLE_FORWARD, SAMPLE_BACKWARD = range(4, 8)
YIELD_EVERY = 4096
# products of fewer multiply-adds run on the calling thread alone: below, the hand-off
# and the exchange of the layer's rows between the cores cost about what they save (W4b
# at H = 64 gained nothing on two threads; asv_benchmarks: bench_threads).  W4b's
# output layer at H = 256 (256 x 10 x 64 = 164k) still gains: its forward and
# backward steps took 29 us of a batch on one thread, 24 us shared.
SPLIT_MIN_WORK = 1 << 17
# ... and a fit runs on threads at all only when one of its layers' products reaches
# this many multiply-adds of its dtype: each shared job costs a hand-off and the
# layer's rows crossing between the cores, which half of a product of a million or so
# does not repay.  float32 needs more of them: its products take half the time, its
# rows half the bytes, the hand-off the same (docs/PERFORMANCE-HISTORY.md, "Every core
# for one model", has the measurements)
SHARE_MIN_LAYER_WORK = {"float64": 1 << 21, "float32": 3 << 20}


# ------------------------------------------------------------- atomics and pointers
# LLVM's atomic instructions on one int64 slot of a 1-D int64 array, sequentially
# consistent: the only order the workers and the kernel's thread share.  The pool runs
# compiled code only (never under NUMBA_DISABLE_JIT), so these have no Python meaning.
def _is_int64_array(t):
    return isinstance(t, types.Array) and t.ndim == 1 and t.dtype == types.int64


def _slot(context, builder, signature, args):
    """The pointer to arr[i] of an intrinsic's (arr, i, ...) arguments."""
    data = context.make_array(signature.args[0])(context, builder, args[0]).data
    return builder.gep(data, [context.cast(builder, args[1], signature.args[1], types.intp)])


def _value(context, builder, signature, args):
    """The intrinsic's third argument, as an int64."""
    return context.cast(builder, args[2], signature.args[2], types.int64)


@intrinsic
def _atomic_load(typingctx, arr, i):
    if not (_is_int64_array(arr) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return builder.load_atomic(_slot(context, builder, signature, args), "seq_cst", 8)

    return types.int64(arr, i), codegen


@intrinsic
def _atomic_store(typingctx, arr, i, value):
    if not (_is_int64_array(arr) and isinstance(i, types.Integer)
            and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        builder.store_atomic(_value(context, builder, signature, args),
                             _slot(context, builder, signature, args), "seq_cst", 8)
        return context.get_dummy_value()

    return types.void(arr, i, value), codegen


@intrinsic
def _atomic_add(typingctx, arr, i, value):
    """arr[i] += value; the old value."""
    if not (_is_int64_array(arr) and isinstance(i, types.Integer)
            and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return builder.atomic_rmw("add", _slot(context, builder, signature, args),
                                  _value(context, builder, signature, args), "seq_cst")

    return types.int64(arr, i, value), codegen


@intrinsic
def _as_int(typingctx, ptr):
    """The address a typed pointer holds, as an int64."""
    if not isinstance(ptr, types.CPointer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ptrtoint(args[0], ir.IntType(64))

    return types.int64(ptr), codegen


@intrinsic
def _as_pointer(typingctx, value, like):
    """The int64 ``value`` as a pointer to elements of like's dtype (an array or
    pointer)."""
    if not (isinstance(value, types.Integer)
            and isinstance(like, (types.Array, types.CPointer))):
        return None
    result = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(result))

    return result(value, like), codegen


@intrinsic
def _bits_of(typingctx, x):
    """The IEEE-754 bits of a float64 as an int64."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(x), codegen


@intrinsic
def _float_of(typingctx, bits):
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(bits), codegen


_INT64 = np.zeros(0, dtype=np.int64)  # the type of the state's carray


# --------------------------------------------------------------------- the pieces
@njit(**INNER)
def _piece(t, parts, m, n, step):
    """Piece t of ``parts`` of an (m, n) product: (along rows, first, end), rows in
    whole tiles of ROWS or columns in whole panels of ``step``; empty when first >= end.
    Along the rows unless columns give more pieces: the rows of c are seldom aligned to
    cache lines, so pieces of its columns write both halves of a line where each row is
    cut, and the cores pass those lines back and forth.  A batch layer's weight step
    (c: the weights) at H = 256, batch 64, gained 1.39x on two threads cut along its
    columns, 1.7x along its rows, although each piece then packs every panel of op(b)
    (tiles.gemm_at) instead of its own."""
    row_tiles = (m + tiles.ROWS - 1) // tiles.ROWS
    col_panels = (n + step - 1) // step
    by_rows = row_tiles >= col_panels
    blocks = row_tiles if by_rows else col_panels
    first = t * blocks // parts
    end = (t + 1) * blocks // parts
    if by_rows:
        return True, first * tiles.ROWS, min(m, end * tiles.ROWS)
    return False, first * step, min(n, end * step)


@njit(**INNER)
def _run_piece(unit, t, parts, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
               ldc):
    """Piece t of ``parts`` of the product (_piece); returns the piece."""
    by_rows, first, end = _piece(t, parts, m, n, tiles.VECS * tiles.lanes_of(c))
    if first >= end:
        return by_rows, first, end
    if by_rows:
        gemm.call(unit, trans_a, trans_b, end - first, n, k, alpha,
                  address(a, first if trans_a else first * lda), lda, b, ldb, beta,
                  address(c, first * ldc), ldc)
    else:
        gemm.call(unit, trans_a, trans_b, m, end - first, k, alpha, a, lda,
                  address(b, first * ldb if trans_b else first), ldb, beta,
                  address(c, first), ldc)
    return by_rows, first, end


# ----------------------------------------------------------------- batch layers
@njit(**INNER)
def _state_of(pool):
    """The state array at address ``pool``."""
    return carray(_as_pointer(pool, _INT64), STATE_LEN)


@njit(**INNER)
def _batch_piece(kind, unit, t, parts, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb,
                 beta, c, ldc, code, extra, aux, nb, lr, has_bias, descend):
    """Piece t of ``parts`` of a job (share_layer): its piece of the product, then for a
    batch layer's job the element-wise steps of the same units (or samples):

    PRODUCT        the product alone (the pooled gemm unit's job)
    LAYER_FORWARD  c = z (units' rows of nb): + the biases at ``extra``, activation code
    LAYER_DELTA    c = the delta of the layer below: times the derivative (code) at the
                   activations ``aux``
    LAYER_WEIGHTS  c = the weights (gradient): the bias gradient (or plain step, with
                   descend) of its columns' units into ``extra``, from the deltas ``aux``
    """
    by_rows, first, end = _run_piece(unit, t, parts, trans_a, trans_b, m, n, k, alpha, a,
                                     lda, b, ldb, beta, c, ldc)
    if kind == PRODUCT:
        return
    if first >= end and not (kind == LAYER_WEIGHTS and by_rows and has_bias):
        return  # (a weight step cut along its rows has a share of the biases: below)
    r0, r1, c0, c1 = (first, end, 0, n) if by_rows else (0, m, first, end)
    if kind == LAYER_WEIGHTS:
        if has_bias:
            if by_rows:  # every piece holds every unit: each takes a share of the biases
                c0, c1 = t * n // parts, (t + 1) * n // parts
            bias_gradient(carray(extra, n), 0, carray(aux, n * nb), c0, c1, nb, lr, descend)
        return
    block = carray(c, m * ldc)
    if kind == LAYER_FORWARD and has_bias:
        add_bias(block, carray(extra, m), 0, r0, r1, c0, c1, ldc)
    ain = carray(aux, m * ldc)
    for r in range(r0, r1):
        if by_rows and r > r0:
            break  # whole rows: one call over the contiguous block
        lo, hi = (r0 * ldc, r1 * ldc) if by_rows else (r * ldc + c0, r * ldc + c1)
        if kind == LAYER_FORWARD:
            activate_rows(block[lo:hi], code)
        else:
            derivative_rows(block[lo:hi], ain[lo:hi], code)


@njit(**INNER)
def share_layer(pool, kind, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                code, extra, aux, nb, lr, has_bias, descend):
    """A job (_batch_piece) over the whole product or layer, shared among the threads of
    the pool at address ``pool`` when it has several and the product is at least
    SPLIT_MIN_WORK multiply-adds (else all on this thread, the same numbers).  a, b, c,
    extra, aux: pointers (extra, aux unread for a PRODUCT)."""
    state = _state_of(pool)
    parts = _atomic_load(state, PARTS)
    alone = parts <= 1 or m * n * k < SPLIT_MIN_WORK
    state[JOB_PARTS] = 1 if alone else parts
    state[TA], state[TB] = trans_a, trans_b
    state[M], state[N], state[K] = m, n, k
    state[A], state[LDA] = _as_int(a), lda
    state[B], state[LDB] = _as_int(b), ldb
    state[C], state[LDC] = _as_int(c), ldc
    state[ALPHA], state[BETA] = _bits_of(np.float64(alpha)), _bits_of(np.float64(beta))
    state[CODE], state[EXTRA], state[AUX], state[NB] = code, _as_int(extra), _as_int(aux), nb
    state[LR], state[HAS_BIAS], state[DESCEND] = _bits_of(np.float64(lr)), has_bias, descend
    run_job(pool, state, kind, state[JOB_PARTS])


@njit(**INNER)
def run_job(pool, state, kind, parts):
    """Run the job of kind ``kind`` whose arguments are in ``state`` (the pool's at
    address ``pool``): piece 0 on this thread, through the pool's piece unit (its code
    is compiled there, not again into every caller), and with parts > 1 the others on
    the workers, whom it posts the job to and waits for."""
    state[KIND] = kind
    if parts <= 1:
        _call_c(state[PIECE_FN], (pool, 0))
        return
    seq = _atomic_load(state, SEQ) + 1
    _atomic_store(state, SEQ, seq)
    _call_c(state[PIECE_FN], (pool, 0))
    _wait(state, DONE, seq * (parts - 1), state[YIELD])


@intrinsic
def _call_c(typingctx, fn, args):
    """Call the C function ``void f(...)`` at address fn (an int) with the values of the
    tuple ``args``: integers and booleans as int64, floats and pointers as they are."""
    if not (isinstance(fn, types.Integer) and isinstance(args, types.BaseTuple)):
        return None
    if not all(isinstance(t, (types.Integer, types.Boolean, types.Float, types.CPointer))
               for t in args.types):
        return None

    def codegen(context, builder, signature, llargs):
        values, llvm_types = [], []
        for i, t in enumerate(args.types):
            v = builder.extract_value(llargs[1], i)
            if isinstance(t, (types.Integer, types.Boolean)):
                v = context.cast(builder, v, t, types.int64)
            values.append(v)
            llvm_types.append(v.type)
        fnty = ir.FunctionType(ir.VoidType(), llvm_types)
        address = context.cast(builder, llargs[0], signature.args[0], types.int64)
        builder.call(builder.inttoptr(address, fnty.as_pointer()), values)
        return context.get_dummy_value()

    return types.void(fn, args), codegen


@njit(**INNER)
def call_layer(pool, kind, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
               code, extra, aux, nb, lr, has_bias, descend):
    """share_layer through the layer unit of the pool at address ``pool`` (its address
    is in the pool's state): the training kernels call this, so share_layer's code is
    compiled once, with the pool, not again into every kernel (several seconds each)."""
    _call_c(_state_of(pool)[LAYER_FN],
            (pool, kind, trans_a, trans_b, m, n, k, tiles.like_of(c, alpha), a, lda, b, ldb,
             tiles.like_of(c, beta), c, ldc, code, extra, aux, nb, tiles.like_of(c, lr),
             has_bias, descend))


def _layer_unit(dtype):
    fp = gemm.SIGNATURE[dtype].args[6]
    ptr, i64 = types.CPointer(fp), types.int64
    signature = types.void(i64, i64, i64, i64, i64, i64, i64, fp, ptr, i64, ptr, i64, fp, ptr,
                           i64, i64, ptr, ptr, i64, fp, i64, i64)

    @cfunc(signature, **JIT)
    def layer_unit(pool, kind, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                   ldc, code, extra, aux, nb, lr, has_bias, descend):
        share_layer(pool, kind, trans_a != 0, trans_b != 0, m, n, k, alpha, a, lda, b, ldb,
                    beta, c, ldc, code, extra, aux, nb, lr, has_bias != 0, descend != 0)
    return layer_unit


@njit(**INNER)
def _wait(state, slot, value, yield_fn):
    """Spin until state[slot] (a count that only grows) reaches value, yielding the CPU
    every YIELD_EVERY spins."""
    spins = 0
    while _atomic_load(state, slot) < value:
        spins += 1
        if spins % YIELD_EVERY == 0:
            _call_c(yield_fn, ())


# --------------------------------------------------------------------- the workers
@njit(**JIT)
def worker(state, t):
    """Piece t of every job posted to ``state`` until its stop flag is set, by the
    pool's piece unit (state[PIECE_FN]: the batch layers' or the per-sample layers',
    compiled once there rather than again here).  Runs on its own thread, without the
    GIL."""
    seen = 0
    spins = 0
    while True:
        seq = _atomic_load(state, SEQ)
        if seq != seen:
            seen = seq
            spins = 0
            _call_c(state[PIECE_FN], (state[SELF], t))
            _atomic_add(state, DONE, 1)
        elif _atomic_load(state, STOP) != 0:
            return
        else:
            spins += 1
            if spins % YIELD_EVERY == 0:
                _call_c(state[YIELD], ())


def _batch_piece_unit(dtype):
    like = np.zeros(0, dtype=dtype)

    @cfunc(types.void(types.int64, types.int64), **JIT)
    def batch_piece(pool, t):
        """Piece t of the batch job posted to the pool at ``pool``."""
        state = _state_of(pool)
        _batch_piece(state[KIND], state[UNIT], t, state[JOB_PARTS], state[TA] != 0,
                     state[TB] != 0, state[M], state[N], state[K],
                     like_value(_float_of(state[ALPHA]), like),
                     _as_pointer(state[A], like), state[LDA],
                     _as_pointer(state[B], like), state[LDB],
                     like_value(_float_of(state[BETA]), like),
                     _as_pointer(state[C], like), state[LDC], state[CODE],
                     _as_pointer(state[EXTRA], like), _as_pointer(state[AUX], like),
                     state[NB], like_value(_float_of(state[LR]), like),
                     state[HAS_BIAS] != 0, state[DESCEND] != 0)
    return batch_piece


# ------------------------------------------------------------------ the pooled unit
def _pooled_unit(dtype):
    signature = types.void(*gemm.SIGNATURE[dtype].args, types.int64)

    @cfunc(signature, **JIT)
    def pooled_unit(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                    pool):
        share_layer(pool, PRODUCT, trans_a == gemm.TRANS, trans_b == gemm.TRANS, m, n, k,
                    alpha, a, lda, b, ldb, beta, c, ldc, 0, c, c, 0, alpha, False, False)

    return pooled_unit


_compiled = {}  # (kind, dtype) -> compiled cfunc, kept alive: its code must outlive its use
_lock = threading.Lock()


def _address(kind, make, dtype):
    dtype = np.dtype(dtype)
    with _lock:
        if (kind, dtype) not in _compiled:
            _compiled[kind, dtype] = make(dtype)
        return _compiled[kind, dtype].address


def unit_address(dtype):
    """The address of the pooled unit for ``dtype`` (compiled or loaded on first use)."""
    return _address("unit", _pooled_unit, dtype)


def layer_address(dtype):
    """The address of the layer unit (share_layer) for ``dtype``."""
    return _address("layer", _layer_unit, dtype)


def batch_piece_address(dtype):
    """The address of the unit that runs a piece of a batch job (the workers' share)."""
    return _address("piece", _batch_piece_unit, dtype)


def _yield_address():
    """The address of the C function that gives up the CPU (sched_yield, or Windows'
    SwitchToThread), or 0 where there is none."""
    for lib, name in ((None, "sched_yield"), ("kernel32", "SwitchToThread")):
        try:
            fn = getattr(ctypes.CDLL(lib) if lib is None else ctypes.WinDLL(lib), name)
        except (AttributeError, OSError):
            continue
        return ctypes.cast(fn, ctypes.c_void_p).value or 0
    return 0


YIELD_ADDRESS = _yield_address()
# threads need the compiled kernels and a way to yield the CPU while they wait
AVAILABLE = YIELD_ADDRESS != 0 and not numba_config.DISABLE_JIT


def new_state(unit, dtype, layers=True):
    """A pool's state, its products computed piece by piece by the gemm unit at address
    ``unit``, its layers' jobs by the layer unit of ``dtype`` (``layers``: else none, for
    a per-sample fit: sample_share.attach); no threads (PARTS 1) until ``start``."""
    state = np.zeros(STATE_LEN, dtype=np.int64)
    state[PARTS] = 1
    state[UNIT] = unit
    if layers:
        state[LAYER_FN], state[PIECE_FN] = layer_address(dtype), batch_piece_address(dtype)
    state[YIELD] = YIELD_ADDRESS
    state[SELF] = state.ctypes.data
    return state


def load_worker():
    """Compile ``worker`` (or load it from Numba's cache) now, rather than in the first
    worker thread, inside a timed kernel call."""
    state = np.zeros(STATE_LEN, dtype=np.int64)
    state[STOP] = 1
    worker(state, 1)  # returns at once: stopped, no job


try:
    _sched_getcpu = ctypes.CDLL(None, use_errno=True).sched_getcpu
except (AttributeError, OSError):  # not glibc / not Linux
    _sched_getcpu = None


def _placement(threads):
    """(the calling thread's CPU, the CPU of each of threads - 1 workers), all distinct
    CPUs this process may run on; None where there are not enough or the CPU is unknown.

    The threads are pinned there for the length of a kernel call.  Left to itself, Linux
    here often kept a worker and the calling thread on one CPU for whole calls while the
    other idled -- both are always runnable, since they spin -- and a fit took several
    times as long as on one thread."""
    if _sched_getcpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    here = _sched_getcpu()
    others = sorted(c for c in os.sched_getaffinity(0) if c != here)
    if here < 0 or len(others) < threads - 1:
        return None
    return here, others[:threads - 1]


def _affinity():
    """The calling thread's CPUs (None where they cannot be read)."""
    try:
        return os.sched_getaffinity(0)  # 0: this thread alone
    except (AttributeError, OSError):
        return None


def _pin(cpus):
    """Pin the calling thread to ``cpus``; its affinity before (None: unchanged)."""
    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cpus)  # 0: this thread alone
        return before
    except OSError:
        return None


def _work(state, t, cpu):
    """A worker thread: pinned to ``cpu`` (unless None), then ``worker`` until stopped."""
    if cpu is not None:
        _pin({cpu})
    worker(state, t)


class Started:
    """What ``start`` started, filled in as it goes, so that ``stop`` undoes whatever
    part of it ran (a KeyboardInterrupt -- L-BFGS takes Ctrl-C as it comes -- or a
    thread that could not start may cut it short): the workers and the calling thread's
    CPUs before it was pinned (None: not pinned)."""

    __slots__ = ("workers", "saved")

    def __init__(self):
        self.workers = []
        self.saved = None


def start(state, threads, started=None):
    """Start threads - 1 workers on ``state`` (Python threads running ``worker``); the
    pooled unit then shares its products among ``threads`` threads.  Returns what
    ``stop`` takes (``started``, a Started, when given: the caller's to stop even if
    this is interrupted).  Only between calls of the kernels that use the state, from
    the thread that calls them (pinned to its CPU until ``stop``)."""
    started = Started() if started is None else started
    state[SEQ] = state[DONE] = state[STOP] = 0
    state[PARTS] = threads
    try:
        placement = _placement(threads)
        cpus = [None] * (threads - 1) if placement is None else placement[1]
        if placement is not None:
            started.saved = _affinity()  # before pinning: stop puts back what was
            _pin({placement[0]})
        for t in range(1, threads):
            w = threading.Thread(target=_work, args=(state, t, cpus[t - 1]), daemon=True,
                                 name=f"fastbp-product-{t}")
            started.workers.append(w)
            w.start()
    except BaseException:  # e.g. "can't start new thread", Ctrl-C: stop those that did
        stop(state, started)  # start (they would spin for ever) and unpin the caller
        raise
    return started


def stop(state, started):
    """Stop the workers ``start`` started (after the kernel call that used them) and
    give the calling thread back its CPUs, also when a KeyboardInterrupt cuts the wait
    short (the workers end by themselves: their stop flag is set)."""
    state[PARTS] = 1
    state[STOP] = 1
    try:
        for w in started.workers:
            try:
                w.join()
            except RuntimeError:  # never started (start() was cut short): nothing to wait for
                pass
    finally:
        if started.saved is not None:
            _pin(started.saved)


refuse_python_calls(globals())  # the INNER functions: TypeError from Python, not a crash
