"""kernels/gemm.py: the gemm units the wide layers call by address (the recurrence, the
register tiles, numpy's OpenBLAS), their contract and their bits, the dispatcher's
choice between them, and training without scipy (Numba's np.dot needs it; fastbp does
not depend on it)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import config as numba_config, njit

import fastbp
import reference as R
from fastbp import _dispatch as D
from fastbp.kernels import gemm as G
from fastbp.kernels import tiles

TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]
TOL = {np.float64: 1e-12, np.float32: 1e-5}


@njit
def _call(unit, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """A unit called as the kernels call it: gemm.call through its address."""
    G.call(unit, trans_a, trans_b, m, n, k, alpha, G.address(a, 0), lda, G.address(b, 0),
           ldb, beta, G.address(c, 0), ldc)


def _units(dtype):
    """(name, address) of every gemm unit for dtype: those of gemm.UNITS and numpy's
    OpenBLAS where numpy bundles one."""
    units = [(kind, G.unit_address(kind, dtype)) for kind in G.UNITS]
    found = G.blas()
    if found is not None:
        units.append(("blas", found[0][np.dtype(dtype)]))
    return units


def _expected(op_a, op_b, c, n, alpha, beta):
    prod = alpha * (op_a @ op_b)
    return prod if beta == 0 else prod + beta * c[:, :n].astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_every_unit_computes_alpha_op_a_op_b_plus_beta_c(dtype, trans_a, trans_b, pad, beta):
    rng = np.random.default_rng(7)
    m, n, k = 37, 19, 65  # not multiples of any register block
    a, b, c0, op_a, op_b = R.gemm_operands(rng, dtype, m, n, k, trans_a, trans_b, pad)
    want = _expected(op_a, op_b, c0, n, -0.75, beta)
    for name, unit in _units(dtype):
        c = c0.copy()
        _call(unit, trans_a, trans_b, m, n, k, -0.75, a.ravel(), a.shape[1], b.ravel(),
              b.shape[1], beta, c.ravel(), c.shape[1])
        np.testing.assert_allclose(c[:, :n], want, rtol=TOL[dtype], atol=TOL[dtype] * k,
                                   err_msg=name)
        assert np.array_equal(c[:, n:], c0[:, n:]), name  # only the m x n block is written


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_unit_with_beta_zero_ignores_nan_in_c(dtype):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(6).astype(dtype), rng.standard_normal(6).astype(dtype)
    want = a.reshape(2, 3).astype(np.float64) @ b.reshape(3, 2)
    for name, unit in _units(dtype):
        c = np.full(4, np.nan, dtype=dtype)
        _call(unit, False, False, 2, 2, 3, 1.0, a, 3, b, 2, 0.0, c, 2)
        np.testing.assert_allclose(c.reshape(2, 2), want, rtol=TOL[dtype], err_msg=name)


def _edges(count, block):
    """Sizes around a block: below it, on it, just past it, past two."""
    return sorted({1, max(1, block - 1), block, block + 1, 2 * block + 3, count})


def _shapes(dtype):
    width = tiles.lanes(dtype)
    rows = _edges(tiles.ROWS + 2, tiles.ROWS)
    cols = _edges(width * tiles.VECS + width // 2, width) + [width * tiles.VECS + 1]
    return [(m, n, k) for m in rows for n in cols for k in (0, 1, 9)]


@pytest.mark.skipif(numba_config.DISABLE_JIT, reason="the tiles are LLVM vector code: as "
                    "Python, every unit is the recurrence")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
def test_the_recurrence_and_the_tiles_give_the_same_bits(dtype, trans_a, trans_b):
    """What lets the dispatcher pick either: the same numbers for every shape (full
    tiles, edge rows, masked edge columns), as functions and as units called by address."""
    rng = np.random.default_rng(12)
    rec, til = G.unit_address("recurrence", dtype), G.unit_address("tiles", dtype)
    for m, n, k in _shapes(dtype):
        for pad, alpha, beta in ((0, 1.0, 0.0), (3, -0.3, 1.0), (1, 0.7, 0.5)):
            a, b, c, _, _ = R.gemm_operands(rng, dtype, m, n, k, trans_a, trans_b, pad)
            if beta == 0:
                c[:, :n][::2] = np.nan  # beta == 0: c is only written
            args = (m, n, k, alpha, a.ravel(), a.shape[1], b.ravel(), b.shape[1], beta)
            ld = c.shape[1]
            want = c.copy()
            G.recurrence(G.ROW_MAJOR, G.TRANS if trans_a else G.NO_TRANS,
                         G.TRANS if trans_b else G.NO_TRANS, *args, want.ravel(), ld)
            got = c.copy()
            tiles.tile_gemm(trans_a, trans_b, *args, got.ravel(), ld)
            by_rec, by_til = c.copy(), c.copy()
            _call(rec, trans_a, trans_b, *args, by_rec.ravel(), ld)
            _call(til, trans_a, trans_b, *args, by_til.ravel(), ld)
            where = f"{dtype.__name__} {trans_a} {trans_b} m={m} n={n} k={k} beta={beta}"
            assert not np.isnan(want[:, :n]).any(), where
            for other in (got, by_rec, by_til):  # padding included: left untouched
                assert np.array_equal(other, want), where


@pytest.mark.skipif(numba_config.DISABLE_JIT, reason="the tiles are LLVM vector code: as "
                    "Python, every unit is the recurrence")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_tiles_with_and_without_the_copy_of_op_a_give_the_same_bits(dtype):
    """A layer of 512 float64 or 1,024 float32 units or more: its forward product (op(a)
    transposed, its rows that many values apart) copies op(a) first in the tiles_packed
    unit (tiles.packs_a); the tiles unit, which networks without such a layer take,
    runs it as it is.  The same numbers, the recurrence's."""
    rng = np.random.default_rng(13)
    itemsize = np.dtype(dtype).itemsize
    m = tiles.PACK_A_MIN_STRIDE // itemsize + 3
    units = [G.unit_address(kind, dtype) for kind in ("recurrence", "tiles", "tiles_packed")]
    for n, k in ((5, tiles.ROWS + 1), (70, 70), (3, 200)):
        assert tiles.packs_a.py_func(True, m, k, itemsize)
        for beta in (0.0, 0.5):
            a, b, c, _, _ = R.gemm_operands(rng, dtype, m, n, k, True, False, 1)
            args = (m, n, k, -0.3, a.ravel(), a.shape[1], b.ravel(), b.shape[1], beta)
            got = [c.copy() for _ in units]
            for unit, out in zip(units, got):
                _call(unit, True, False, *args, out.ravel(), c.shape[1])
            assert all(np.array_equal(out, got[0]) for out in got[1:]), (n, k, beta)


def test_unknown_units_and_policies_are_refused_by_name():
    with pytest.raises(ValueError, match="'mkl'.*recurrence"):
        G.unit_address("mkl", np.float64)
    env = dict(os.environ, FASTBP_KERNELS="mkl")
    out = subprocess.run([sys.executable, "-c", "import fastbp"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    assert "FASTBP_KERNELS='mkl'" in out.stderr and "auto, fastest or general" in out.stderr


def test_blas_threads_reports_the_providers_setting():
    if G.blas() is None:
        assert G.blas_threads() == 0
    else:
        assert G.blas_threads() >= 1


# A wide net trained in mini-batches: every product of its hidden layer goes through gemm.
_SIZES = [40, 96, 3]
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
from fastbp import _dispatch
_dispatch.POLICY = {policy!r}
rng = np.random.default_rng(0)
X, y = rng.random((192, 40)), rng.random((192, 3))
m = fastbp.MLP({sizes}, activation=["sigmoid", "identity"], seed=2)
h = m.fit(X, y, epochs=4, lr=0.05, batch_size=64)
print(json.dumps({{"gemm": _dispatch.choose_gemm(m._layout.sizes, m.dtype, 64, 4 * 192),
                  "kernel": h.kernel,
                  "scipy": "scipy" in sys.modules,
                  "loss": [float(v) for v in h.loss], "out": m.predict(X[:4]).tolist()}}))
"""


def _fit_in_child(block_scipy, policy="auto"):
    env = dict(os.environ)
    env.pop("FASTBP_KERNELS", None)
    out = subprocess.run([sys.executable, "-c", _FIT.format(block_scipy=block_scipy,
                                                            policy=policy, sizes=_SIZES)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fit_here(policy, monkeypatch):
    monkeypatch.setattr(D, "POLICY", policy)
    ns = {}
    exec(_FIT.format(block_scipy=False, policy=policy, sizes=_SIZES)
         .replace("print(json.dumps(", "result = (("), ns)
    return ns["result"]


def test_training_needs_no_scipy(monkeypatch):
    """The bug the BLAS binding fixed once: without scipy, kernels holding np.dot did not
    compile.  The gemm units never call it."""
    got = _fit_in_child(block_scipy=True)
    assert not got["scipy"]
    here = _fit_here("auto", monkeypatch)
    assert got["gemm"] in G.UNITS
    # whichever unit each process picked: the same numbers
    assert got["loss"] == here["loss"] and got["out"] == here["out"]


def test_both_units_train_the_same_network(monkeypatch):
    """The dispatcher's choice never changes results: "general" runs the recurrence,
    "fastest" the tiles."""
    general = _fit_here("general", monkeypatch)
    fastest = _fit_here("fastest", monkeypatch)
    assert (general["gemm"], fastest["gemm"]) == ("recurrence", "tiles")
    # History names the slower unit (what explains slower epochs until the tiles pay)
    assert general["kernel"] == "mini-batch plain SGD (float64, products on the recurrence)"
    assert fastest["kernel"] == "mini-batch plain SGD (float64)"
    assert general["loss"] == fastest["loss"] and general["out"] == fastest["out"]
    ref = fastbp.MLP(_SIZES, activation=["sigmoid", "identity"], seed=2)
    rng = np.random.default_rng(0)
    X, y = rng.random((192, 40)), rng.random((192, 3))
    assert not np.allclose(ref.predict(X[:4]), fastest["out"])  # and they trained
