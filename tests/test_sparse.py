"""Sparse inputs (scipy.sparse): the first layer reads CSR rows directly
(kernels/sparse.py, fastbp/_sparse.py).  Every result is checked against the same fit on
the dense matrix; the memory test checks that no dense matrix is ever made."""
import tracemalloc
import warnings

import numpy as np
import pytest

import fastbp
from fastbp._sparse import Rows

sp = pytest.importorskip("scipy.sparse")

SIZES = [30, 9, 2]
ACTS = ["tanh", "sigmoid"]
RTOL = {"float64": 1e-12, "float32": 2e-5}


def _data(n=40, d=SIZES[0], k=SIZES[-1], density=0.15, seed=0):
    """Dense X with mostly zeros (an empty row and an empty column among them), y in
    [0, 1]."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * (rng.random((n, d)) < density)
    X[5] = 0.0   # a sample with no stored value
    X[:, 3] = 0.0  # a feature no sample has
    y = rng.uniform(0.1, 0.9, size=(n, k))
    return X, y


def _fit(X, y, dtype="float64", **kw):
    m = fastbp.MLP(SIZES, activation=ACTS, loss="bce", dtype=dtype, seed=2)
    h = m.fit(X, y, epochs=4, lr=0.3, seed=5, **kw)
    return m, h


FITS = {
    "full batch": dict(batch_size=None),
    "mini-batch shuffled": dict(batch_size=7, shuffle=True),
    "per-sample": dict(batch_size=1),
    "adam + l2": dict(batch_size=8, optimizer="adam", l2=0.01),
    "momentum, weighted": dict(batch_size=6, momentum=0.8, weighted=True),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("fit", list(FITS))
def test_sparse_fit_equals_dense_fit(fit, dtype):
    X, y = _data()
    kw = dict(FITS[fit])
    if kw.pop("weighted", False):
        kw["sample_weight"] = np.random.default_rng(1).uniform(0.0, 2.0, len(y))
    dense, hd = _fit(X, y, dtype, **kw)
    sparse, hs = _fit(sp.csr_matrix(X), y, dtype, **kw)
    assert "sparse inputs" in hs.kernel and "sparse" not in hd.kernel
    # (atol: Adam's steps are about lr = 0.3 whatever the gradient, and a float32 step
    # rounds at that scale: a parameter near 0 differs by a few of its ULPs, 1.2e-7)
    np.testing.assert_allclose(sparse.params, dense.params, rtol=RTOL[dtype],
                               atol=RTOL[dtype] * 1e-2)
    np.testing.assert_allclose(hs.loss, hd.loss, rtol=RTOL[dtype])
    assert not np.array_equal(sparse.params, fastbp.MLP(SIZES, activation=ACTS, loss="bce",
                                                        dtype=dtype, seed=2).params)


def test_batched_sparse_fit_is_the_dense_fits_bits_with_products():
    """Where the dense first layer uses matrix products (one chain per gradient, in
    sample order), the sparse layer's chains are the same without their zero terms."""
    X, y = _data(n=64, d=40, density=0.2)
    sizes = [40, 64, 2]
    runs = []
    for data in (X, sp.csr_matrix(X)):
        m = fastbp.MLP(sizes, activation=["relu", "sigmoid"], loss="bce", seed=3)
        m.fit(data, y, epochs=3, lr=0.2, batch_size=32, shuffle=True, seed=1)
        runs.append(m.params)
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("fmt", ["csr_matrix", "csc_matrix", "coo_matrix", "csr_array",
                                 "csc_array", "lil_matrix"])
def test_every_scipy_format_is_taken(fmt):
    X, y = _data()
    dense, _ = _fit(X, y, batch_size=10)
    other, _ = _fit(getattr(sp, fmt)(X), y, batch_size=10)
    np.testing.assert_allclose(other.params, dense.params, rtol=1e-12, atol=1e-15)


def test_predict_loss_gradient_equal_dense():
    X, y = _data()
    m = fastbp.MLP(SIZES, activation=ACTS, loss="bce", seed=4)
    Xs = sp.csr_matrix(X)
    np.testing.assert_array_equal(m.predict(Xs), m.predict(X))
    assert m.loss(Xs, y) == m.loss(X, y)
    for gs, gd in zip(m.gradient(Xs, y)[0] + m.gradient(Xs, y)[1],
                      m.gradient(X, y)[0] + m.gradient(X, y)[1]):
        np.testing.assert_allclose(gs, gd, rtol=1e-13, atol=1e-16)


def test_unsorted_rows_and_duplicates_are_summed_and_the_input_is_left_alone():
    """A CSR matrix with unsorted column indices and a duplicated entry means the sum
    of the duplicates (scipy's meaning); fastbp sorts and sums a copy."""
    X, y = _data()
    csr = sp.csr_matrix(X)
    row = 7
    lo, hi = csr.indptr[row], csr.indptr[row + 1]
    assert hi - lo >= 2
    indices = csr.indices.copy()
    data = csr.data.copy()
    indices[lo:hi] = indices[lo:hi][::-1]
    data[lo:hi] = data[lo:hi][::-1]
    # split the row's first value into two entries for the same column
    col, val = indices[lo], data[lo]
    indices = np.insert(indices, lo, col)
    data = np.insert(data, lo, 0.25 * val)
    data[lo + 1] = 0.75 * val
    indptr = csr.indptr.copy()
    indptr[row + 1:] += 1
    messy = sp.csr_matrix((data, indices, indptr), shape=X.shape)
    assert not messy.has_canonical_format
    kept = (messy.data.copy(), messy.indices.copy(), messy.indptr.copy())
    m = fastbp.MLP(SIZES, activation=ACTS, loss="bce", seed=4)
    np.testing.assert_allclose(m.predict(messy), m.predict(X), rtol=1e-14, atol=1e-15)
    for a, b in zip(kept, (messy.data, messy.indices, messy.indptr)):
        np.testing.assert_array_equal(a, b)


def test_read_only_sparse_arrays_are_copied_once_not_compiled_for():
    """A CSR matrix whose arrays are read-only (a memory map, frozen arrays) is read
    through writable copies: the kernels are compiled for writable arrays, and a
    read-only one compiled them all again (seconds).  The fit is the writable one's."""
    from fastbp._sparse import sparse_rows
    X, y = _data()
    csr = sp.csr_matrix(X)
    frozen = sp.csr_matrix((csr.data.copy(), csr.indices.copy(), csr.indptr.copy()),
                           shape=X.shape)
    for a in (frozen.data, frozen.indices, frozen.indptr):
        a.flags.writeable = False
    rows = sparse_rows(frozen, X.shape[1], np.float64)
    assert all(a.flags.writeable and a.flags.c_contiguous
               for a in (rows.indptr, rows.indices, rows.values))
    m_frozen, h_frozen = _fit(frozen, y, batch_size=7)
    m_csr, h_csr = _fit(csr, y, batch_size=7)
    np.testing.assert_array_equal(m_frozen.params, m_csr.params)
    assert not frozen.data.flags.writeable  # the user's arrays are left as they were


def test_validation_sets_and_early_stopping_on_sparse_data():
    X, y = _data(n=60)
    kw = dict(batch_size=8, shuffle=True, patience=2, restore_best=True)
    dense = fastbp.MLP(SIZES, activation=ACTS, loss="bce", seed=6)
    hd = dense.fit(X, y, epochs=30, lr=0.5, validation_fraction=0.25, seed=2, **kw)
    sparse = fastbp.MLP(SIZES, activation=ACTS, loss="bce", seed=6)
    hs = sparse.fit(sp.csr_matrix(X), y, epochs=30, lr=0.5, validation_fraction=0.25,
                    seed=2, **kw)
    np.testing.assert_allclose(hs.val_loss, hd.val_loss, rtol=1e-12)
    assert hs.best_epoch == hd.best_epoch
    np.testing.assert_allclose(sparse.params, dense.params, rtol=1e-12, atol=1e-15)
    # validation data of the other kind
    m = fastbp.MLP(SIZES, activation=ACTS, loss="bce", seed=6)
    h2 = m.fit(X[:45], y[:45], epochs=5, lr=0.5, validation_data=(sp.csr_matrix(X[45:]),
                                                                   y[45:]))
    m3 = fastbp.MLP(SIZES, activation=ACTS, loss="bce", seed=6)
    h3 = m3.fit(sp.csc_matrix(X[:45]), y[:45], epochs=5, lr=0.5,
                validation_data=(X[45:], y[45:]))
    np.testing.assert_allclose(h2.val_loss, h3.val_loss, rtol=1e-12)


def test_checkpoint_and_resume_with_sparse_data(tmp_path):
    X, y = _data(n=50)
    Xs = sp.csr_matrix(X)
    path = tmp_path / "run.npz"
    kw = dict(lr=0.4, batch_size=8, shuffle=True, seed=3)
    whole = fastbp.MLP(SIZES, activation=ACTS, loss="bce", seed=7)
    whole.fit(Xs, y, epochs=6, validation_data=(Xs[:10], y[:10]), **kw)
    part = fastbp.MLP(SIZES, activation=ACTS, loss="bce", seed=7)
    part.fit(Xs, y, epochs=6, validation_data=(Xs[:10], y[:10]), checkpoint=str(path),
             checkpoint_every=3, callbacks=[lambda e, h, m: e < 3], chunk_seconds=1e-9, **kw)
    assert part.params.tobytes() != whole.params.tobytes()
    model, hist = fastbp.resume(str(path), Xs, y)
    assert hist.epochs == 6
    np.testing.assert_array_equal(model.params, whole.params)
    with pytest.raises(ValueError, match="fingerprint"):
        fastbp.resume(str(path), sp.csr_matrix(2.0 * X), y)
    with pytest.raises(ValueError, match="same form"):
        fastbp.resume(str(path), X, y)


def test_lbfgs_on_sparse_data_equals_dense():
    pytest.importorskip("scipy.optimize")
    X, y = _data()
    runs = []
    for data in (X, sp.csr_matrix(X)):
        m = fastbp.MLP(SIZES, activation=ACTS, loss="bce", seed=8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(data, y, epochs=15, optimizer="lbfgs", l2=1e-3)
        runs.append(m.params)
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-10, atol=1e-13)


def test_divergence_on_sparse_data_names_the_learning_rate():
    X, y = _data()
    m = fastbp.MLP(SIZES, activation=["relu", "identity"], loss="mse", seed=9)
    with pytest.raises(fastbp.DivergenceError, match="learning rate"):
        m.fit(sp.csr_matrix(X), 1e3 * y, epochs=200, lr=50.0, batch_size=4)


def _coo_with_row(r):
    """A COO matrix whose second entry's row was changed to r after it was built (scipy
    checks the coordinates only then)."""
    coo = sp.coo_matrix((np.ones(3), (np.array([0, 1, 2]), np.array([0, 1, 2]))),
                        shape=(40, 30))
    coo.row[1] = r
    return coo


@pytest.mark.parametrize("make, exc, message", [
    (lambda X: sp.csr_matrix(X[:, :-1]), ValueError, "has 29 features but the model "
                                                     "expects sizes\\[0\\] = 30"),
    (lambda X: sp.csr_matrix(X.astype(complex)), TypeError, "complex"),
    (lambda X: sp.csr_matrix((0, 30)), ValueError, "empty"),
    (lambda X: sp.csr_matrix(np.where(X != 0, np.nan, 0.0)), ValueError, "NaN"),
    (lambda X: sp.csr_matrix(np.where(X != 0, 1e300, 0.0)), ValueError,
     "too large for float32"),
    # scipy builds these from the arrays unchecked: the kernels would index out of W
    (lambda X: sp.csr_matrix((np.ones(3), np.array([0, 1, 30]), np.array([0, 1, 3] + [3] * 38)),
                             shape=(40, 30)), ValueError, r"column indices in \[0, 30\]"),
    (lambda X: sp.csr_matrix((np.ones(3), np.array([0, -2, 5]), np.array([0, 1, 3] + [3] * 38)),
                             shape=(40, 30)), ValueError, r"column indices in \[-2, 5\]"),
    # CSC, BSR and COO are checked before scipy's tocsr(), which indexes by these numbers
    # unchecked: silently wrong values, or a crash of the process
    (lambda X: sp.csc_matrix((np.ones(3), np.array([0, -5, 2]), np.array([0, 1, 3] + [3] * 28)),
                             shape=(40, 30)), ValueError, r"row indices in \[-5, 2\]"),
    (lambda X: sp.csc_matrix((np.ones(3), np.array([0, 1, 10**6]), np.array([0, 1, 3] + [3] * 28)),
                             shape=(40, 30)), ValueError, r"row indices in \[0, 1000000\]"),
    (lambda X: sp.csc_matrix((np.ones(3), np.array([0, 1, 2]), np.array([0, 1, 100] + [3] * 28)),
                             shape=(40, 30)), ValueError, "column pointers"),
    (lambda X: sp.bsr_matrix((np.ones((2, 2, 2)), np.array([0, 1]), np.array([0, 50] + [2] * 19)),
                             shape=(40, 30)), ValueError, "block-row pointers"),
    (lambda X: _coo_with_row(10**7), ValueError, r"row indices in \[0, 10000000\]"),
])
def test_bad_sparse_input_is_refused_by_name(make, exc, message):
    X, y = _data()
    m = fastbp.MLP(SIZES, activation=ACTS, loss="bce", seed=1, dtype="float32")
    with pytest.raises(exc, match=message):
        m.fit(make(X), y, epochs=1)


def test_an_ensemble_asks_for_dense_data():
    X, y = _data()
    ens = fastbp.Ensemble(SIZES, 3, activation=ACTS, loss="bce", seed=0)
    with pytest.raises(TypeError, match=r"scipy.sparse.*X.toarray\(\)"):
        ens.fit(sp.csr_matrix(X), y, epochs=1)


def test_rows_select_like_the_dense_array():
    X, _ = _data()
    rows = Rows(*(np.asarray(a, dtype=t) for a, t in (
        (sp.csr_matrix(X).indptr, np.int64), (sp.csr_matrix(X).indices, np.int64),
        (sp.csr_matrix(X).data, np.float64))), X.shape[1])
    mask = np.arange(len(X)) % 3 == 1
    for pick in (slice(3, 17), slice(None, None, 3), slice(20, 5), np.array([9, 0, 5, 9]),
                 np.array([-1, 2, -40]), mask, np.array([], dtype=np.int64)):
        np.testing.assert_array_equal(rows[pick].toarray(), X[pick])
    for bad in (np.array([40]), np.array([-41]), mask[:-1]):
        with pytest.raises(IndexError):
            rows[bad]
    assert rows.max_abs() == np.abs(X).max()


def test_a_large_sparse_set_trains_without_its_dense_matrix():
    """20,000 x 200,000 at 5 values a row: 32 GB dense, 1.2 MB of CSR.  The fit's
    Python-side allocations (tracemalloc: every NumPy array) stay far below even one
    dense row block of the data."""
    rng = np.random.default_rng(0)
    n, d, per_row = 20_000, 200_000, 5
    cols = np.sort(rng.choice(d, size=(n, per_row)), axis=1)
    cols[:, 1:] += np.cumsum(cols[:, 1:] == cols[:, :-1], axis=1)  # distinct in a row
    cols = np.minimum(cols, d - 1)
    X = sp.csr_matrix((rng.normal(size=n * per_row), cols.ravel(),
                       np.arange(0, n * per_row + 1, per_row)), shape=(n, d))
    y = (np.asarray(X[:, :d // 2].sum(axis=1)) > 0).astype(float)
    m = fastbp.MLP([d, 4, 1], activation=["relu", "sigmoid"], loss="bce", seed=0)
    tracemalloc.start()
    try:
        h = m.fit(X, y, epochs=1, lr=0.05, batch_size=100, shuffle=True, seed=1)
        m.predict(X[:1000])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # W (200,000 x 4 float64) is 6.4 MB; the fit's scratch another copy of it
    assert peak < 64e6, f"peak {peak / 1e6:.0f} MB"
    assert np.isfinite(h.loss).all() and np.isfinite(m.params).all()
