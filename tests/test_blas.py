"""kernels/blas.py: the gemm the wide layers call, each of its providers, and training
without scipy (Numba's np.dot needs it; fastbp does not depend on it)."""
import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import types

import reference as R
from fastbp.kernels import blas

TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def _expected(op_a, op_b, c, n, alpha, beta):
    prod = alpha * (op_a @ op_b)
    return prod if beta == 0 else prod + beta * c[:, :n].astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_gemm_computes_alpha_op_a_op_b_plus_beta_c(dtype, trans_a, trans_b, pad, beta):
    rng = np.random.default_rng(7)
    m, n, k = 37, 19, 65  # not multiples of any register block
    a, b, c, op_a, op_b = R.gemm_operands(rng, dtype, m, n, k, trans_a, trans_b, pad)
    want = _expected(op_a, op_b, c, n, -0.75, beta)
    padding = c[:, n:].copy()
    out = c.ravel()  # a view: gemm writes into c
    blas.gemm(trans_a, trans_b, m, n, k, -0.75, a.ravel(), a.shape[1], b.ravel(), b.shape[1],
              beta, out, c.shape[1])
    np.testing.assert_allclose(c[:, :n], want, rtol=TOL[dtype], atol=TOL[dtype] * k)
    assert np.array_equal(c[:, n:], padding)  # only the m x n block is written


def test_gemm_with_beta_zero_ignores_nan_in_c():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(6), rng.standard_normal(6)
    c = np.full(4, np.nan)
    blas.gemm(False, False, 2, 2, 3, 1.0, a, 3, b, 2, 0.0, c, 2)
    np.testing.assert_allclose(c.reshape(2, 2), a.reshape(2, 3) @ b.reshape(3, 2), rtol=1e-14)


def _call(provider, dtype, args):
    ct = ctypes.c_double if dtype == np.float64 else ctypes.c_float
    ptr = lambda x: x.ctypes.data_as(ctypes.POINTER(ct))  # noqa: E731
    order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc = args
    provider.ctypes(order, ta, tb, m, n, k, alpha, ptr(a), lda, ptr(b), ldb, beta, ptr(c), ldc)


@pytest.mark.parametrize("make", ["_loops_cfunc", "_numba_cfunc"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fallback_providers_follow_the_cblas_contract(make, dtype):
    """The providers used where numpy bundles no OpenBLAS, called as CBLAS is."""
    if make == "_numba_cfunc":
        pytest.importorskip("scipy.linalg.cython_blas")
    provider = getattr(blas, make)(types.float64 if dtype == np.float64 else types.float32)
    rng = np.random.default_rng(3)
    m, n, k = 9, 5, 7
    for trans_a, trans_b in TRANSPOSES:
        for pad in (0, 2):   # padded rows: the np.dot provider falls back to its loops
            for beta in (0.0, 2.0):
                a, b, c, op_a, op_b = R.gemm_operands(rng, dtype, m, n, k, trans_a, trans_b, pad)
                want = _expected(op_a, op_b, c, n, 0.5, beta)
                ta = blas.TRANS if trans_a else blas.NO_TRANS
                tb = blas.TRANS if trans_b else blas.NO_TRANS
                _call(provider, dtype, (blas.ROW_MAJOR, ta, tb, m, n, k, 0.5, a, a.shape[1], b,
                                        b.shape[1], beta, c, c.shape[1]))
                np.testing.assert_allclose(c[:, :n], want, rtol=TOL[dtype], atol=TOL[dtype],
                                           err_msg=f"{make} {trans_a} {trans_b} pad {pad}")


# A wide net trained in mini-batches: every product of its hidden layer goes through gemm.
_FIT = r"""
import json, sys
import numpy as np
if {block_scipy}:
    class NoScipy:
        def find_spec(self, name, path=None, target=None):
            if name == "scipy" or name.startswith("scipy."):
                raise ImportError("scipy blocked by the test")
    sys.meta_path.insert(0, NoScipy())
import fastbp
from fastbp.kernels import blas
rng = np.random.default_rng(0)
X, y = rng.random((192, 40)), rng.random((192, 3))
m = fastbp.MLP([40, 96, 3], activation=["sigmoid", "identity"], seed=2)
h = m.fit(X, y, epochs=4, lr=0.05, batch_size=64)
print(json.dumps({{"provider": blas.PROVIDER, "scipy": "scipy" in sys.modules,
                  "loss": [float(v) for v in h.loss], "out": m.predict(X[:4]).tolist()}}))
"""


def _fit_in_child(block_scipy, provider=None):
    env = dict(os.environ)
    env.pop("FASTBP_BLAS", None)
    if provider:
        env["FASTBP_BLAS"] = provider
    out = subprocess.run([sys.executable, "-c", _FIT.format(block_scipy=block_scipy)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wide_fit_here():
    ns = {}
    exec(_FIT.format(block_scipy=False).replace("print(json.dumps(", "result = (("), ns)
    return ns["result"]


def test_training_needs_no_scipy(wide_fit_here):
    """The bug this module fixed: without scipy, kernels holding np.dot did not compile."""
    got = _fit_in_child(block_scipy=True)
    assert not got["scipy"]
    assert got["provider"] == blas.PROVIDER
    # the same provider as this process: the same products, the same numbers
    np.testing.assert_allclose(got["loss"], wide_fit_here["loss"], rtol=1e-13)
    np.testing.assert_allclose(got["out"], wide_fit_here["out"], rtol=1e-13)


@pytest.mark.parametrize("provider,block_scipy", [("loops", True), ("numba", False)])
def test_every_provider_trains_the_same_network(wide_fit_here, provider, block_scipy):
    if provider == "numba":
        pytest.importorskip("scipy.linalg.cython_blas")
    got = _fit_in_child(block_scipy, provider)
    assert got["provider"] == provider
    np.testing.assert_allclose(got["loss"], wide_fit_here["loss"], rtol=1e-11)
    np.testing.assert_allclose(got["out"], wide_fit_here["out"], rtol=1e-11)


def test_unknown_provider_is_refused_by_name():
    env = dict(os.environ, FASTBP_BLAS="mkl")
    out = subprocess.run([sys.executable, "-c", "import fastbp"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    assert "FASTBP_BLAS='mkl'" in out.stderr and "numpy, numba or loops" in out.stderr
