"""kernels/tiles.py: fastbp's register-tiled gemm, and batch._matmul's choice between it
and BLAS (the Net's blas address, set by the dispatcher when BLAS runs on enough threads).

The tiles promise more than the gemm contract: every element is the fused multiply-add
chain over k in increasing order, so the result must equal, bit for bit, a scalar loop
doing that recurrence, for every shape (full tiles, edge rows, masked edge columns).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

import fastbp
import reference as R
from fastbp import _dispatch as D
from fastbp.kernels import tiles
from fastbp.kernels.batch import _matmul
from fastbp.kernels.config import BLAS_THREADED_MIN_WORK
from fastbp.kernels.gemm import address
from fastbp.kernels.intrinsics import fma

TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]


@njit(cache=True)
def scalar_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, zero):
    """The recurrence tiles.py documents, one element at a time (in c's dtype; zero is
    0 of that dtype)."""
    for i in range(m):
        for j in range(n):
            acc = zero
            for p in range(k):
                x = a[p * lda + i] if trans_a else a[i * lda + p]
                y = b[j * ldb + p] if trans_b else b[p * ldb + j]
                acc = fma(x, y, acc)
            out = alpha * acc
            c[i * ldc + j] = out if beta == 0 else out + beta * c[i * ldc + j]


def _edges(count, block):
    """Sizes around a block: below it, on it, just past it, past two."""
    return sorted({1, max(1, block - 1), block, block + 1, 2 * block + 3, count})


def _shapes(dtype):
    width = tiles.lanes(dtype)
    rows = _edges(tiles.ROWS + 2, tiles.ROWS)
    cols = _edges(width * tiles.VECS + width // 2, width) + [width * tiles.VECS + 1]
    # k past two vectors: trans_b's packing moves whole width x width blocks, then a tail
    return [(m, n, k) for m in rows for n in cols for k in (0, 1, 9, 2 * width + 3)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
def test_tiles_equal_the_scalar_recurrence_bit_for_bit(dtype, trans_a, trans_b):
    rng = np.random.default_rng(11)
    for m, n, k in _shapes(dtype):
        for pad, alpha, beta in ((0, 1.0, 0.0), (3, -0.3, 1.0), (1, 0.7, 0.5)):
            a, b, c, _, _ = R.gemm_operands(rng, dtype, m, n, k, trans_a, trans_b, pad)
            if beta == 0:
                c[:, :n][::2] = np.nan  # beta == 0: c is only written
            want = c.copy()
            scalar_gemm(trans_a, trans_b, m, n, k, dtype(alpha), a.ravel(), a.shape[1],
                        b.ravel(), b.shape[1], dtype(beta), want.ravel(), want.shape[1],
                        dtype(0))
            got = c.copy()
            tiles.tile_gemm(trans_a, trans_b, m, n, k, alpha, a.ravel(), a.shape[1],
                            b.ravel(), b.shape[1], beta, got.ravel(), got.shape[1])
            where = f"{dtype.__name__} {trans_a} {trans_b} m={m} n={n} k={k} beta={beta}"
            assert not np.isnan(got[:, :n]).any(), where
            assert np.array_equal(got, want), where  # padding included: left untouched


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("trans_b", [False, True])
def test_narrow_products_equal_the_scalar_recurrence_bit_for_bit(dtype, trans_b):
    """Products narrower than one wide tile (a weight gradient of a layer of few units)
    run in one-vector tiles only: every m to 20, so every cut of the rows into tiles."""
    rng = np.random.default_rng(12)
    width = tiles.lanes(dtype)
    for m in range(1, 21):
        for n in sorted({1, width - 1, width, width + 1, tiles.VECS * width - 1}):
            for k in (1, 9, 64):
                a, b, c, _, _ = R.gemm_operands(rng, dtype, m, n, k, False, trans_b, 1)
                want, got = c.copy(), c.copy()
                scalar_gemm(False, trans_b, m, n, k, dtype(0.5), a.ravel(), a.shape[1],
                            b.ravel(), b.shape[1], dtype(0), want.ravel(), want.shape[1],
                            dtype(0))
                tiles.tile_gemm(False, trans_b, m, n, k, 0.5, a.ravel(), a.shape[1],
                                b.ravel(), b.shape[1], 0.0, got.ravel(), got.shape[1])
                assert np.array_equal(got, want), f"{dtype.__name__} m={m} n={n} k={k}"


@pytest.mark.parametrize("trans_a", [False, True])
def test_tiles_over_a_large_op_b_keep_the_recurrence(trans_a):
    """op(b) beyond tiles.ROWS_OUTER_MAX_BYTES: the column panels run outermost."""
    rng = np.random.default_rng(4)
    m, n, k = 13, 70, 1100
    assert k * n * 8 > tiles.ROWS_OUTER_MAX_BYTES
    a, b, c, _, _ = R.gemm_operands(rng, np.float64, m, n, k, trans_a, False, 1)
    want, got = c.copy(), c.copy()
    scalar_gemm(trans_a, False, m, n, k, 0.5, a.ravel(), a.shape[1], b.ravel(), b.shape[1],
                1.0, want.ravel(), want.shape[1], 0.0)
    tiles.tile_gemm(trans_a, False, m, n, k, 0.5, a.ravel(), a.shape[1], b.ravel(),
                    b.shape[1], 1.0, got.ravel(), got.shape[1])
    assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_packed_columns_of_a_keep_the_recurrence(dtype):
    """trans_a with a's rows PACK_A_MIN_STRIDE bytes apart or more: the steps go
    PACK_A_STEPS at a time, op(a) for them copied into row blocks of ROWS rows (the last
    ones fewer) first, the sums going on from c chunk by chunk; from the stack, or from
    the heap past its panel (k = 600, m = 200).  With beta != 0 (c kept aside, added at
    the end) and with NaN in c under beta == 0 (not read into any sum).  The same bits
    as the recurrence, rows around every block edge and steps around every chunk edge."""
    rng = np.random.default_rng(8)
    itemsize = np.dtype(dtype).itemsize
    pad = tiles.PACK_A_MIN_STRIDE // itemsize
    R_, S_ = tiles.ROWS, tiles.PACK_A_STEPS
    wide = tiles.lanes(dtype) * tiles.VECS + 3
    shapes = [(m, n, k) for m in (1, R_ - 1, R_ + 1, 4 * R_, 4 * R_ + 1, 9 * R_ + R_ // 2 + 1)
              for n, k in ((5, R_ + 1), (wide, S_), (wide, S_ + 6), (7, 2 * S_ + 1))]
    shapes += [(4 * R_ + 3, 9, 600), (200, 9, 3 * S_ - 1)]
    for m, n, k in shapes:
        for alpha, beta in ((1.0, 0.0), (-0.3, 0.0), (-0.3, 0.5)):
            a, b, c, _, _ = R.gemm_operands(rng, dtype, m, n, k, True, False, pad)
            assert a.shape[1] * itemsize >= tiles.PACK_A_MIN_STRIDE and k > tiles.ROWS
            if beta == 0.0:
                c[::2] = np.nan
            want, got = c.copy(), c.copy()
            scalar_gemm(True, False, m, n, k, dtype(alpha), a.ravel(), a.shape[1],
                        b.ravel(), b.shape[1], dtype(beta), want.ravel(), want.shape[1],
                        dtype(0))
            tiles.tile_gemm(True, False, m, n, k, alpha, a.ravel(), a.shape[1], b.ravel(),
                            b.shape[1], beta, got.ravel(), got.shape[1])
            assert np.array_equal(got, want, equal_nan=True), (dtype.__name__, m, n, k,
                                                               alpha, beta)
            assert not np.isnan(got[:, :n]).any()


def test_tiles_agree_with_numpy_on_a_wide_product():
    """An independent reference for the recurrence itself (float64 rounding only)."""
    rng = np.random.default_rng(2)
    m, n, k = 203, 70, 517
    a, b = rng.standard_normal((k, m)), rng.standard_normal((n, k))
    c = np.empty((m, n))
    tiles.tile_gemm(True, True, m, n, k, 1.0, a.ravel(), m, b.ravel(), k, 0.0, c.ravel(), n)
    np.testing.assert_allclose(c, a.T @ b.T, rtol=1e-12, atol=1e-12 * np.sqrt(k))


_LARGE_PANEL = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
import fastbp, reference as R
from fastbp.kernels import tiles
rng = np.random.default_rng(2)
for dtype, rtol in ((np.float64, 1e-12), (np.float32, 1e-4)):
    m, n, k = 40, 70, 5000  # trans_b's panel: k x VECS vectors, far past the stack's
    assert k * tiles.VECS * tiles.lanes(dtype) * np.dtype(dtype).itemsize > 4 * 65536
    a, b = rng.standard_normal((k, m)).astype(dtype), rng.standard_normal((n, k)).astype(dtype)
    c = np.empty((m, n), dtype)
    tiles.tile_gemm(True, True, m, n, k, 1.0, a.ravel(), m, b.ravel(), k, 0.0, c.ravel(), n)
    want = a.astype(np.float64).T @ b.astype(np.float64).T
    np.testing.assert_allclose(c, want, rtol=rtol, atol=rtol * np.sqrt(k))
    # the public path: the gradient over 2,048 samples in one batch
    X, y = rng.standard_normal((2048, 32)), rng.random((2048, 10))
    model = fastbp.MLP([32, 24, 10], activation="tanh", init="normal", seed=0, dtype=dtype)
    got_w, got_b = model.gradient(X, y)
    want_w, want_b = R.gradient(X, y, [w.astype(np.float64) for w in model.weights],
                                [b.astype(np.float64) for b in model.biases], "tanh", "mse")
    for g, w in zip(got_w + got_b, want_w + want_b):
        scale = np.abs(w).max()
        np.testing.assert_allclose(g / scale, w / scale, rtol=0, atol=rtol)
print("ok")
"""


def test_a_large_transposed_panel_is_alive_while_the_tiles_read_it():
    """tile_gemm packs a transposed op(b) into a heap panel past PANEL_STACK_BYTES.  Numba
    freed it right after taking its address, before the loop that fills and reads it:
    loss, gradient and L-BFGS over ~1,700 samples or more crashed once the panel was
    large enough for malloc to map it, and unmapped it on free.  Here glibc maps every
    block past 64 KB, so that reading freed memory crashes at once."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", _LARGE_PANEL, os.path.dirname(__file__)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "ok"


def test_tile_shape_fits_the_vector_registers():
    """ROWS x VECS accumulators, VECS vectors of op(b) and one broadcast must fit in the
    registers (32 with AVX-512, else 16): a tile that spills is several times slower."""
    registers = 32 if tiles.VECTOR_BYTES == 64 else 16
    assert tiles.ROWS * tiles.VECS + tiles.VECS + 1 <= registers
    assert tiles.lanes(np.float64) * 8 == tiles.VECTOR_BYTES == tiles.lanes(np.float32) * 4


_ROUTE = r"""
import ctypes, json, sys, numpy as np
from numba import njit
import fastbp
from fastbp import _dispatch as D
from fastbp.kernels import gemm as G, tiles
from fastbp.kernels.batch import _matmul
from fastbp.kernels.gemm import address
found = G._numpy_openblas()
if found is not None:  # the variable is capped at the CPU count, the call is not
    lib = ctypes.CDLL(str(found[3]))
    setter = (getattr(lib, "scipy_openblas_set_num_threads64_", None)
              or lib.openblas_set_num_threads64_)
    setter(int(sys.argv[1]))
@njit
def matmul(net, m, n, k, a, b, c):
    _matmul(net, False, False, m, n, k, 1.0, address(a, 0), k, address(b, 0), n, 0.0,
            address(c, 0), n)
# the Net of a model whose wide layers use products, as fit makes it
model = fastbp.MLP([256, 256, 1])
net = D.make_net(model._layout, model._act_codes, model._loss_code, model.dtype, "tiles")
rng = np.random.default_rng(5)
out = {"threads": G.blas_threads(), "bundled": found is not None, "blas": net.blas != 0}
for m, n, k in ((256, 256, 256), (64, 64, 64)):
    a, b = rng.standard_normal(m * k), rng.standard_normal(k * n)
    got, t, g = (np.empty(m * n) for _ in range(3))
    matmul(net, m, n, k, a, b, got)
    tiles.tile_gemm(False, False, m, n, k, 1.0, a, k, b, n, 0.0, t, n)
    if found is not None:
        matmul(net._replace(blas=found[0], blas_min_work=0), m, n, k, a, b, g)
    out[f"{m}"] = {"big": m * n * k >= net.blas_min_work,
                   "tiles": bool(np.array_equal(got, t)), "blas": bool(np.array_equal(got, g)),
                   "close": bool(np.allclose(got, (a.reshape(m, k) @ b.reshape(k, n)).ravel()))}
print(json.dumps(out))
"""


@pytest.mark.parametrize("threads", [1, 4])
def test_matmul_uses_blas_only_for_large_products_on_several_threads(threads):
    env = dict(os.environ)
    env.pop("FASTBP_KERNELS", None)
    out = subprocess.run([sys.executable, "-c", _ROUTE, str(threads)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if not got["bundled"]:
        pytest.skip("numpy bundles no OpenBLAS here: the Net never gets BLAS")
    assert got["threads"] == threads
    assert got["blas"] == (threads >= 4)  # make_net: BLAS_MIN_THREADS
    big, small = got["256"], got["64"]
    assert big["big"] and not small["big"]
    assert small["tiles"] and small["close"]
    assert big["close"]
    if threads >= 4:
        assert big["blas"]
    else:
        assert big["tiles"]


@njit
def _matmul_arrays(net, m, n, k, a, b, c):
    _matmul(net, True, True, m, n, k, -0.5, address(a, 0), m, address(b, 0), k, 0.0,
            address(c, 0), n)


def test_matmul_in_process_matches_tiles_below_the_threaded_size():
    rng = np.random.default_rng(3)
    m, n, k = 40, 33, 64
    assert m * n * k < BLAS_THREADED_MIN_WORK
    model = fastbp.MLP([64, 64, 1])
    net = D.make_net(model._layout, model._act_codes, model._loss_code, model.dtype, "tiles")
    a, b = rng.standard_normal(k * m), rng.standard_normal(n * k)
    got, want = np.empty(m * n), np.empty(m * n)
    _matmul_arrays(net, m, n, k, a, b, got)
    tiles.tile_gemm(True, True, m, n, k, -0.5, a, m, b, k, 0.0, want, n)
    assert np.array_equal(got, want)


@njit
def _row_product_compiled(a, ao, b, bo, ldb, c, co, k, n):
    tiles.row_product(a, ao, b, bo, ldb, c, co, k, n)


@njit(cache=True)
def _row_product_scalar(a, ao, b, bo, ldb, c, co, k, n):
    """What sample_units.forward_units computed before row_product: the first products,
    then each unit's fused multiply-add chain over the rows in order."""
    a0 = a[ao]
    for j in range(n):
        c[co + j] = b[bo + j] * a0
    for p in range(1, k):
        for j in range(n):
            c[co + j] = fma(b[bo + p * ldb + j], a[ao + p], c[co + j])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_row_product_equals_the_units_chains_bit_for_bit(dtype):
    """tiles.row_product (per-sample SGD's forward step): every column count around its
    blocks of ROW_VECS vectors and its masked last vector, one input row or many, a and
    c in one array (as forward_units passes h), offsets anywhere: the same bits as the
    scalar chains (and the Python meaning), and nothing written outside c's n values."""
    width = tiles.lanes(dtype)
    block = tiles.ROW_VECS * width
    rng = np.random.default_rng(3)
    counts = sorted({1, width - 1, width, width + 1, block - 1, block, block + width + 3,
                     2 * block + 1})
    for n in counts:
        for k in (1, 2, 5, 33):
            ldb = n + 3
            b = rng.standard_normal(k * ldb + 7).astype(dtype)
            b[1] = -0.0
            for ao, co in ((2, k + 7), (n + 4, 0)):  # c after a, c before it
                h = rng.standard_normal(max(ao + k, co + n) + 20).astype(dtype)
                sentinel = h.copy()
                want, got, python = h.copy(), h.copy(), h.copy()
                _row_product_scalar(want, ao, b, 1, ldb, want, co, k, n)
                _row_product_compiled(got, ao, b, 1, ldb, got, co, k, n)
                tiles.row_product(python, ao, b, 1, ldb, python, co, k, n)
                assert got.view(np.uint8).tobytes() == want.view(np.uint8).tobytes(), (n, k)
                assert python.view(np.uint8).tobytes() == want.view(np.uint8).tobytes()
                outside = np.ones(h.shape[0], bool)
                outside[co:co + n] = False
                np.testing.assert_array_equal(got[outside], sentinel[outside])
