"""BLAS ``gemm`` for the largest products, reached through one symbol per dtype.

Most products of the wide layers run on fastbp's own register tiles (tiles.py); a
product goes to BLAS only when it is large and BLAS runs on several threads
(dense._matmul, config.BLAS_THREADED_MIN_WORK), so it is spread over them.

The kernels call ``gemm`` below, which compiles to a call of the C symbol
``fastbp_dgemm`` (``fastbp_sgemm`` for float32) with the ILP64 CBLAS signature, row-major
only, and ``threads``, a call of ``fastbp_blas_threads``.  The symbols are bound when
this module is imported, to the first provider found:

1. ``numpy``: the OpenBLAS that numpy's wheels bundle (``scipy_cblas_dgemm64_`` in
   ``numpy.libs``; ``cblas_dgemm64_`` in numpy 1.x wheels).  It is always there with a
   wheel install, and already loaded.  ``threads`` asks it for its current setting.
2. ``numba``: Numba's ``np.dot`` (scipy's BLAS), wrapped in a cfunc of the same
   signature, where numpy has no bundled OpenBLAS (conda, distribution packages).
3. ``loops``: plain loops in a cfunc, where neither is available.
With the last two ``threads`` says 1, so the kernels never call their gemm: it is there
for the tests, and as the reference (loops_gemm).

``FASTBP_BLAS=numpy|numba|loops`` in the environment picks a provider instead (for
tests, and to compare): importing fastbp fails with ImportError if that one is missing.

Why not ``np.dot`` inside the kernels: Numba types ``np.dot`` through
``scipy.linalg.cython_blas``, and scipy is not a dependency of fastbp.  Without scipy
every kernel holding an ``np.dot`` failed to compile ("scipy 0.16+ is required for linear
algebra"): ``pip install -e . && fastbp demo xor`` trained, then stopped with that error.

Symbols, not function pointers in globals: the kernels are cached on disk
(``cache=True``), and a pointer baked into cached code would be stale in the next
process.  The symbols are resolved by name when the cached code is loaded, after this
module has bound them.
"""
import ctypes
import os
from pathlib import Path

import numpy as np
from llvmlite import binding, ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .config import JIT
from .pointers import is_float_operand

ROW_MAJOR = 101
NO_TRANS = 111
TRANS = 112

_SYMBOL = {types.float64: "fastbp_dgemm", types.float32: "fastbp_sgemm"}
# int threads(void): how many threads the provider's gemm runs on (1 for all but numpy's
# OpenBLAS, whose count can change while the process runs: asked at every call)
_THREADS_SYMBOL = "fastbp_blas_threads"


def _signature(dtype):
    ptr = types.CPointer(dtype)
    i32, i64 = types.int32, types.int64
    return types.void(i32, i32, i32, i64, i64, i64, dtype, ptr, i64, ptr, i64, dtype, ptr,
                      i64)


# ---------------------------------------------------------------------------------------
# The call the kernels compile
# ---------------------------------------------------------------------------------------
@intrinsic
def _call_gemm(typingctx, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    arrays = (a, b, c)
    ints = (trans_a, trans_b, m, n, k, lda, ldb, ldc)
    if not (all(is_float_operand(t) for t in arrays) and len({t.dtype for t in arrays}) == 1
            and all(isinstance(t, types.Integer) for t in ints)
            and all(isinstance(t, types.Float) for t in (alpha, beta))):
        return None
    dtype = c.dtype
    sig = types.void(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        lt = context.get_value_type
        i32, i64, fp = lt(types.int32), lt(types.int64), lt(dtype)
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, fp,
                                               fp.as_pointer(), i64, fp.as_pointer(), i64,
                                               fp, fp.as_pointer(), i64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _SYMBOL[dtype])

        def cast(i, to):
            return context.cast(builder, args[i], signature.args[i], to)

        def data(i):
            if isinstance(signature.args[i], types.CPointer):
                return args[i]
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        builder.call(fn, [ir.Constant(i32, ROW_MAJOR), cast(0, types.int32),
                          cast(1, types.int32), cast(2, types.int64), cast(3, types.int64),
                          cast(4, types.int64), cast(5, dtype), data(6), cast(7, types.int64),
                          data(8), cast(9, types.int64), cast(10, dtype), data(11),
                          cast(12, types.int64)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _call_threads(typingctx):
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, []),
                                            _THREADS_SYMBOL)
        return builder.call(fn, [])

    return types.int32(), codegen


@njit(**JIT)
def threads():
    """The number of threads gemm runs on now (OpenBLAS: its current setting)."""
    return _call_threads()


@njit(**JIT)
def gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """c <- alpha * op(a) @ op(b) + beta * c, row-major, as CBLAS's gemm.

    op(a) is (m, k): a holds it with row stride lda, transposed when trans_a (a is then
    k rows of stride lda); likewise b for op(b) (k, n); c is m rows of stride ldc.  a, b,
    c: 1-D arrays of one float dtype whose data start at the matrices' first elements,
    or typed pointers to those elements (pointers.address).
    With beta == 0, c is only written (NaN in it does not propagate).
    """
    _call_gemm(TRANS if trans_a else NO_TRANS, TRANS if trans_b else NO_TRANS, m, n, k,
               alpha, a, lda, b, ldb, beta, c, ldc)


# ---------------------------------------------------------------------------------------
# Providers
# ---------------------------------------------------------------------------------------
def _numpy_openblas():
    """(dgemm address, sgemm address, get_num_threads address, description, path) of
    numpy's bundled ILP64 OpenBLAS, or None.  ILP64 only (the ``64_`` suffix): the symbols'
    integers are 64-bit."""
    pkg = Path(np.__file__).resolve().parent
    found = []
    for folder, pattern in ((pkg.parent / "numpy.libs", "*openblas*"),
                            (pkg / ".dylibs", "*openblas*"), (pkg / ".libs", "*openblas*")):
        if folder.is_dir():
            found += sorted(folder.glob(pattern))
    for path in found:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        for prefix in ("scipy_cblas_", "cblas_"):
            names = (prefix + "dgemm64_", prefix + "sgemm64_",
                     prefix.replace("cblas", "openblas") + "get_num_threads64_")
            try:
                found = [getattr(lib, name) for name in names]
            except AttributeError:
                continue
            address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
            return (*map(address, found),
                    f"numpy's OpenBLAS ({path.name}, {prefix}dgemm64_)", path)
    return None


@njit(**JIT)
def loops_gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """The CBLAS contract in plain loops (row-major), on raw arrays of a, b and c's data.

    The third provider, and the tests' reference for the other two: every sum over k in
    increasing order, then c = alpha * sum + beta * c (beta == 0: c = alpha * sum)."""
    for i in range(m):
        for j in range(n):
            acc = 0.0
            for p in range(k):
                x = a[p * lda + i] if trans_a == TRANS else a[i * lda + p]
                y = b[j * ldb + p] if trans_b == TRANS else b[p * ldb + j]
                acc += x * y
            if beta == 0.0:
                c[i * ldc + j] = alpha * acc
            else:
                c[i * ldc + j] = alpha * acc + beta * c[i * ldc + j]


@njit(**JIT)
def _extent(rows, cols, ld):
    """Elements spanned by ``rows`` rows of stride ld, the last ``cols`` long."""
    return 0 if rows == 0 or cols == 0 else (rows - 1) * ld + cols


@njit(**JIT)
def _loops_on_pointers(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                       ldc):
    """loops_gemm on the raw pointers a C caller passes (each wrapped over its extent)."""
    ra, ca = (k, m) if trans_a == TRANS else (m, k)
    rb, cb = (n, k) if trans_b == TRANS else (k, n)
    loops_gemm(order, trans_a, trans_b, m, n, k, alpha, carray(a, _extent(ra, ca, lda)), lda,
               carray(b, _extent(rb, cb, ldb)), ldb, beta, carray(c, _extent(m, n, ldc)), ldc)


def _loops_cfunc(dtype):
    @cfunc(_signature(dtype), **JIT)
    def provider(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        _loops_on_pointers(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                           ldc)
    return provider


@njit(**JIT)
def _product(trans_a, trans_b, m, n, k, a, b):
    """op(a) @ op(b) by np.dot (Numba's: scipy's BLAS) for contiguous rows."""
    if trans_a == TRANS:
        if trans_b == TRANS:
            return np.dot(a.reshape((k, m)).T, b.reshape((n, k)).T)
        return np.dot(a.reshape((k, m)).T, b.reshape((k, n)))
    if trans_b == TRANS:
        return np.dot(a.reshape((m, k)), b.reshape((n, k)).T)
    return np.dot(a.reshape((m, k)), b.reshape((k, n)))


def _numba_cfunc(dtype):
    @cfunc(_signature(dtype), **JIT)
    def provider(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        ra, ca = (k, m) if trans_a == TRANS else (m, k)
        rb, cb = (n, k) if trans_b == TRANS else (k, n)
        if lda != ca or ldb != cb or ldc != n or m == 0 or n == 0 or k == 0:
            _loops_on_pointers(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta,
                               c, ldc)
            return
        p = _product(trans_a, trans_b, m, n, k, carray(a, ra * ca), carray(b, rb * cb))
        out = carray(c, m * n)
        flat = p.ravel()
        for i in range(m * n):
            out[i] = alpha * flat[i] if beta == 0.0 else alpha * flat[i] + beta * out[i]
    return provider


def _one_thread_cfunc():
    @cfunc(types.int32(), **JIT)
    def one_thread():
        return 1
    return one_thread


def _has_scipy_blas():
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:
        return False
    return True


def _bind():
    """Bind fastbp_dgemm / fastbp_sgemm to the first provider; returns its name and a
    description.  The cfuncs are kept on the module: their code must outlive the call."""
    global _keep, LIBRARY
    _keep = {}
    wanted = os.environ.get("FASTBP_BLAS", "").strip().lower() or None
    if wanted not in (None, "numpy", "numba", "loops"):
        raise ImportError(f"FASTBP_BLAS={wanted!r}: expected numpy, numba or loops")
    found = _numpy_openblas() if wanted in (None, "numpy") else None
    if found is not None:
        binding.add_symbol(_SYMBOL[types.float64], found[0])
        binding.add_symbol(_SYMBOL[types.float32], found[1])
        binding.add_symbol(_THREADS_SYMBOL, found[2])
        LIBRARY = found[4]
        return "numpy", found[3]
    if wanted == "numpy":
        raise ImportError("FASTBP_BLAS=numpy, but numpy has no bundled ILP64 OpenBLAS here")
    scipy = wanted in (None, "numba") and _has_scipy_blas()
    if wanted == "numba" and not scipy:
        raise ImportError("FASTBP_BLAS=numba needs scipy (Numba's np.dot calls its BLAS)")
    if scipy:
        name, make, text = "numba", _numba_cfunc, "Numba's np.dot (scipy's BLAS)"
    else:
        name, make, text = "loops", _loops_cfunc, "none: plain loops (BLAS off)"
    _keep = {dt: make(dt) for dt in _SYMBOL}
    for dt, f in _keep.items():
        binding.add_symbol(_SYMBOL[dt], f.address)
    _keep["threads"] = _one_thread_cfunc()
    binding.add_symbol(_THREADS_SYMBOL, _keep["threads"].address)
    return name, text


_keep = {}
LIBRARY = None  # the path of numpy's OpenBLAS when it is the provider
PROVIDER, DESCRIPTION = _bind()
