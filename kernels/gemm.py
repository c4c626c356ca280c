"""Matrix products of the wide layers, as separately compiled units called by address.

A layer's three products (forward, back-propagated delta, weight gradient) go through
one gemm with the row-major CBLAS contract: c <- alpha * op(a) @ op(b) + beta * c.
Three implementations share that C signature (``SIGNATURE``):

- ``recurrence``: plain loops, vectorized across the columns of c.  Cheap to compile.
- ``tiles`` (tiles.py): register tiles in LLVM vector code, several times faster on wide layers,
  but a few seconds to compile, once per dtype and machine; ``tiles_packed``, the same
  with the copy of op(a) that layers of 512 float64 or 1,024 float32 units or more take
  (``tiles_kind``), about 60% more to compile.
- numpy's bundled OpenBLAS, for the largest products when BLAS runs on several threads.

The first three give the same bits: every element is the fused multiply-add chain over
p = 0, 1, ..., k-1 from 0, then alpha * sum (+ beta * c when beta != 0), whatever the
blocking.  So which one a fit uses is a matter of speed only, and the dispatcher
(fastbp/_dispatch.py) picks the recurrence when compiling the tiles would cost more
than they save.

The training kernels call ``call(address, ...)``: an indirect call through an address
they receive as an argument.  The unit's code is therefore not compiled again into each
kernel that uses it (Numba would otherwise link and re-optimize it into every caller),
and a kernel cached on disk holds no address: the caller passes the current one.
Under ``NUMBA_DISABLE_JIT=1`` the "address" is the Python function itself.
"""
import ctypes
import threading
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, config as numba_config, njit, types, uint64

from .config import JIT
from . import tiles
from .intrinsics import address, compiled_as, fma  # noqa: F401  (address: for call's callers)

ROW_MAJOR = 101
NO_TRANS = 111
TRANS = 112


def _signature(dtype):
    ptr = types.CPointer(dtype)
    i32, i64 = types.int32, types.int64
    return types.void(i32, i32, i32, i64, i64, i64, dtype, ptr, i64, ptr, i64, dtype, ptr,
                      i64)


SIGNATURE = {np.dtype(np.float64): _signature(types.float64),
             np.dtype(np.float32): _signature(types.float32)}


# ------------------------------------------------------------------------- the call
def call(unit, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """c <- alpha * op(a) @ op(b) + beta * c through the gemm ``unit`` (an address from
    ``unit_address``); a, b, c pointers (``address``) to the matrices' first elements,
    trans_a / trans_b booleans.  In Python, ``unit`` is a Python gemm taking views."""
    unit(ROW_MAJOR, TRANS if trans_a else NO_TRANS, TRANS if trans_b else NO_TRANS, m, n, k,
         alpha, a, lda, b, ldb, beta, c, ldc)


def call_pooled(unit, pool, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                ldc):
    """``call`` of the pooled unit (pool.py) ``unit``, sharing the product with the
    threads of the pool whose state is at address ``pool`` (compiled code only)."""
    raise NotImplementedError("compiled code only: threads need the compiled kernels")


def _call_typer(unit, pool, a, b, c):
    pointers = (a, b, c)
    return (isinstance(unit, types.Integer) and (pool is None or isinstance(pool, types.Integer))
            and all(isinstance(t, types.CPointer) for t in pointers)
            and len({t.dtype for t in pointers}) == 1
            and c.dtype in (types.float64, types.float32))


@compiled_as(call)
def _call(typingctx, unit, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    if not _call_typer(unit, None, a, b, c):
        return None
    sig = types.void(unit, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    return sig, _call_codegen(c.dtype, pooled=False)


@compiled_as(call_pooled)
def _call_pooled(typingctx, unit, pool, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb,
                 beta, c, ldc):
    if not _call_typer(unit, pool, a, b, c):
        return None
    sig = types.void(unit, pool, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                     ldc)
    return sig, _call_codegen(c.dtype, pooled=True)


def _call_codegen(dtype, pooled):
    """The indirect call of a unit: args (unit, [pool,] trans_a, trans_b, m, n, k, alpha,
    a, lda, b, ldb, beta, c, ldc), the pooled unit's pool address passed last."""

    def codegen(context, builder, signature, all_args):
        lt = context.get_value_type
        i32, i64, fp = lt(types.int32), lt(types.int64), lt(dtype)
        extra = []
        args, arg_types = list(all_args), list(signature.args)
        if pooled:
            extra = [context.cast(builder, args[1], arg_types[1], types.int64)]
            del args[1], arg_types[1]
        signature = types.void(*arg_types)
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, fp,
                                               fp.as_pointer(), i64, fp.as_pointer(), i64,
                                               fp, fp.as_pointer(), i64] + [i64] * len(extra))
        fn = builder.inttoptr(context.cast(builder, args[0], signature.args[0], types.int64),
                              fnty.as_pointer())

        def cast(i, to):
            return context.cast(builder, args[i], signature.args[i], to)

        def trans(i):
            flag = context.cast(builder, args[i], signature.args[i], types.boolean)
            return builder.select(flag, ir.Constant(i32, TRANS), ir.Constant(i32, NO_TRANS))

        builder.call(fn, [ir.Constant(i32, ROW_MAJOR), trans(1), trans(2),
                          cast(3, types.int64), cast(4, types.int64), cast(5, types.int64),
                          cast(6, dtype), args[7], cast(8, types.int64), args[9],
                          cast(10, types.int64), cast(11, dtype), args[12],
                          cast(13, types.int64)] + extra)
        return context.get_dummy_value()

    return codegen


# ------------------------------------------------------------------ the recurrence
def recurrence(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """The gemm contract in loops, each element of c the fused multiply-add chain over
    p = 0..k-1 from 0 in c's dtype, then alpha * sum (+ beta * c[i, j] when beta != 0),
    alpha and beta rounded to c's dtype: the tiles' numbers.  a, b, c: 1-D arrays (or,
    compiled, pointers) of one float dtype starting at the matrices' first elements.

    The loop over j is innermost and reads a row of op(b), so it vectorizes; each
    element's chain is unchanged by that order.  A transposed b is first copied into
    rows (n * k values: a fraction of the m * n * k multiply-adds).  Its accumulators
    are c's row itself, or, when beta != 0 (c's old values are needed at the end), one
    scratch row.  Indices are unsigned, as in batch.py: with signed ones Numba's
    negative-index wraparound kept the loops from vectorizing (10-25x slower)."""
    alpha = cast_like(c, alpha)
    beta = cast_like(c, beta)
    um, un, uk = uint64(m), uint64(n), uint64(k)
    ulda, uldc = uint64(lda), uint64(ldc)
    rows, uldr = b, uint64(ldb)
    if trans_b == TRANS:  # op(b)'s rows, contiguous: p-th row at rows[p * n]
        rows, uldr = np.empty(k * n, dtype=c.dtype), un
        for j in range(un):
            col = j * uint64(ldb)
            for p in range(uk):
                rows[p * un + j] = b[col + p]
    acc = c if beta == 0 else np.empty(n, dtype=c.dtype)
    for i in range(um):
        row_acc = i * uldc if beta == 0 else uint64(0)
        for j in range(un):
            acc[row_acc + j] = 0
        for p in range(uk):
            x = a[p * ulda + i] if trans_a == TRANS else a[i * ulda + p]
            row = p * uldr
            for j in range(un):
                acc[row_acc + j] = fma(x, rows[row + j], acc[row_acc + j])
        out = i * uldc
        if beta == 0:
            for j in range(un):
                c[out + j] = alpha * acc[row_acc + j]
        else:
            for j in range(un):
                c[out + j] = alpha * acc[row_acc + j] + beta * c[out + j]


# the recurrence inlined into its unit (one compiled function); module-level, so the unit
# refers to globals only and Numba caches it (a closure over a function would not be)
_recurrence_inline = njit(**dict(JIT, inline="always"))(recurrence)


def _recurrence_unit(dtype):
    """The recurrence compiled alone, with the units' C signature: one function (its
    code is the whole unit, compiled in well under a second)."""

    @cfunc(SIGNATURE[dtype], **JIT)
    def recurrence_unit(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                        ldc):
        ra, ca = (k, m) if trans_a == TRANS else (m, k)
        rb, cb = (n, k) if trans_b == TRANS else (k, n)
        a_len = 0 if ra == 0 or ca == 0 else (ra - 1) * lda + ca
        b_len = 0 if rb == 0 or cb == 0 else (rb - 1) * ldb + cb
        c_len = 0 if m == 0 or n == 0 else (m - 1) * ldc + n
        _recurrence_inline(order, trans_a, trans_b, m, n, k, alpha, carray(a, a_len), lda,
                           carray(b, b_len), ldb, beta, carray(c, c_len), ldc)
    return recurrence_unit


def _tiles_unit(dtype):
    """The tiles without the copy of op(a) for layers of 512 float64 or 1,024 float32
    units or more (tiles.gemm_at_unpacked): the unit of networks without such a layer,
    compiled in about 60% of tiles_packed's time (the same numbers)."""
    @cfunc(SIGNATURE[dtype], **JIT)
    def tiles_unit(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        tiles.gemm_at_unpacked(trans_a == TRANS, trans_b == TRANS, m, n, k, alpha, a, lda,
                               b, ldb, beta, c, ldc)
    return tiles_unit


def _tiles_packed_unit(dtype):
    """The tiles with every path of tiles.gemm_at: any network's unit."""
    @cfunc(SIGNATURE[dtype], **JIT)
    def tiles_packed_unit(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                          ldc):
        tiles.gemm_at(trans_a == TRANS, trans_b == TRANS, m, n, k, alpha, a, lda, b, ldb,
                      beta, c, ldc)
    return tiles_packed_unit


def _python_recurrence(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                       ldc):
    """The recurrence on the views ``address`` makes in Python (NUMBA_DISABLE_JIT)."""
    recurrence(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


_MAKERS = {"recurrence": _recurrence_unit, "tiles": _tiles_unit,
           "tiles_packed": _tiles_packed_unit}
UNITS = tuple(_MAKERS)
TILES = ("tiles", "tiles_packed")  # the units of register tiles
_units = {}  # (kind, dtype) -> compiled cfunc, kept alive: its code must outlive its use
_lock = threading.Lock()


# tiles.packs_a in Python (a plain function already under NUMBA_DISABLE_JIT)
_packs_a = getattr(tiles.packs_a, "py_func", tiles.packs_a)


def tiles_kind(sizes, dtype):
    """The tiles unit a network of these layer sizes needs: "tiles_packed" when some
    layer's forward product copies op(a) first (tiles.packs_a: a layer of 512 float64
    or 1,024 float32 units or more after one of more than tiles.ROWS), else "tiles"."""
    itemsize = np.dtype(dtype).itemsize
    packs = any(_packs_a(True, n_out, n_in, itemsize)
                for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    return "tiles_packed" if packs else "tiles"


def unit_address(kind, dtype):
    """The address of the gemm unit ``kind`` (one of UNITS) for ``dtype``, compiled (or
    loaded from Numba's cache) on first use.  Under NUMBA_DISABLE_JIT, the Python
    recurrence itself (tiles and recurrence give the same numbers)."""
    if kind not in UNITS:
        raise ValueError(f"unknown gemm unit {kind!r}; expected one of {UNITS}")
    dtype = np.dtype(dtype)
    if numba_config.DISABLE_JIT:
        return _python_recurrence
    key = (kind, dtype)
    with _lock:
        if key not in _units:
            _units[key] = _MAKERS[kind](dtype)
        return _units[key].address


def is_loaded(kind, dtype):
    """Whether ``unit_address(kind, dtype)`` would return at once (no compilation or
    cache load)."""
    return numba_config.DISABLE_JIT or (kind, np.dtype(dtype)) in _units


# ---------------------------------------------------------------------------- BLAS
def _address_of(fn):
    """The address of a ctypes function (not ``address``, the kernels' pointer to an
    array element)."""
    return ctypes.cast(fn, ctypes.c_void_p).value


def _numpy_openblas():
    """(dgemm address, sgemm address, get_num_threads function, path) of numpy's bundled
    ILP64 OpenBLAS, or None.  ILP64 only (the ``64_`` suffix): its integers are 64-bit,
    as SIGNATURE's."""
    pkg = Path(np.__file__).resolve().parent
    found = []
    for folder in (pkg.parent / "numpy.libs", pkg / ".dylibs", pkg / ".libs"):
        if folder.is_dir():
            found += sorted(folder.glob("*openblas*"))
    for path in found:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        for prefix in ("scipy_cblas_", "cblas_"):
            names = (prefix + "dgemm64_", prefix + "sgemm64_",
                     prefix.replace("cblas", "openblas") + "get_num_threads64_")
            try:
                dgemm, sgemm, threads = (getattr(lib, name) for name in names)
            except AttributeError:
                continue
            threads.restype = ctypes.c_int
            threads.argtypes = []
            return _address_of(dgemm), _address_of(sgemm), threads, path
    return None


_blas = None
_blas_looked = False


def blas():
    """numpy's OpenBLAS as (address per dtype, get_num_threads), or None where numpy
    bundles none (conda, distribution packages) or under NUMBA_DISABLE_JIT."""
    global _blas, _blas_looked
    if not _blas_looked:
        found = None if numba_config.DISABLE_JIT else _numpy_openblas()
        if found is not None:
            _blas = ({np.dtype(np.float64): found[0], np.dtype(np.float32): found[1]},
                     found[2])
        _blas_looked = True
    return _blas


def blas_threads():
    """How many threads numpy's OpenBLAS would run a product on now (0: no BLAS)."""
    found = blas()
    return 0 if found is None else int(found[1]())


# ---------------------------------------------------------------- dtype of operands
def cast_like(arr, x):
    """x converted to arr's dtype."""
    return arr.dtype.type(x)


@compiled_as(cast_like)
def _cast_like(typingctx, arr, x):
    if not (isinstance(arr, types.Array) and isinstance(x, (types.Float, types.Integer))):
        return None

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[1], signature.args[1], arr.dtype)

    return arr.dtype(arr, x), codegen

