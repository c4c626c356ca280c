"""Whole training runs against tests/reference.py, plus the model object's contract
(shuffling streams, record_every, dtypes, views, save/load, initialisation)."""

import numpy as np
import pytest
from numba import njit

import fastbp
import fastbp.kernels as K
import reference as R
from fastbp import _dispatch as D
from fastbp._fit import SingleFit
from fastbp.kernels import batch as B
from fastbp.kernels import loops as L
from fastbp.kernels import options as O
from fastbp.kernels import rules as Rules

RTOL = 1e-9


def assert_params_close(actual, desired, rtol=RTOL, what="params"):
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * 1e-2 * np.max(np.abs(desired)), err_msg=what)


def model_from(weights, biases, acts, loss, dtype="float64"):
    return fastbp.MLP.from_weights(weights, biases, activation=acts, loss=loss, dtype=dtype)


# Small problems shared by the trajectory tests: (sizes, activations, loss, bias, lr).
FULL_BATCH_CASES = {
    "sigmoid-sse-xorlike": ([2, 4, 4, 1], "sigmoid", "sse", True, 0.1),
    "tanh-mse": ([3, 5, 2], ["tanh", "identity"], "mse", True, 0.05),
    "relu-half_mse-nobias": ([3, 6, 4, 2], ["relu", "relu", "identity"], "half_mse", False, 0.05),
    "tanh-bce": ([4, 5, 1], ["tanh", "sigmoid"], "bce", True, 0.5),
}
SGD_CASES = {
    "sigmoid-sse": ([2, 4, 1], "sigmoid", "sse", True, 0.05),
    "tanh-mse-nobias": ([3, 5, 2], ["tanh", "identity"], "mse", False, 0.01),
    "relu-bce": ([3, 4, 1], ["relu", "sigmoid"], "bce", True, 0.1),
    # rows of 20 and 37 back-propagated: rules.row_dot's lanes and remainders
    "wide-rows": ([3, 20, 37, 2], ["tanh", "sigmoid", "identity"], "mse", True, 0.01),
    # odd numbers of rows back-propagated: 17 of 21 (lanes and a remainder), 21 of 2
    "odd-rows": ([3, 17, 21, 2], ["sigmoid", "tanh", "identity"], "mse", True, 0.01),
}


def _problem(make_problem, sizes, loss, bias, n, seed):
    X, y, weights, biases = make_problem(sizes, n=n, loss=loss, bias=bias, seed=seed)
    return X, y, weights, biases


# ---------------------------------------------------------------- trajectories


@pytest.mark.parametrize("case", list(FULL_BATCH_CASES))
def test_full_batch_matches_reference(case, make_problem):
    sizes, acts, loss, bias, lr = FULL_BATCH_CASES[case]
    X, y, weights, biases = _problem(make_problem, sizes, loss, bias, n=20, seed=1)
    epochs = 2000
    m = model_from(weights, biases, acts, loss)
    hist = m.fit(X, y, epochs=epochs, lr=lr)
    rw, rb, rhist = R.train_full_batch(X, y, weights, biases, acts, loss, epochs, lr)

    assert hist.loss.shape == (epochs,)
    assert hist.loss.dtype == np.float64
    assert hist.epochs == epochs
    np.testing.assert_allclose(hist.loss, rhist, rtol=RTOL)
    assert_params_close(m.params, R.flatten(rw, rb))
    assert rhist[-1] < rhist[0]  # the case is not degenerate: it trains
    # History is the loss BEFORE each update: the first record is the initial loss.
    assert hist.loss[0] == pytest.approx(R.loss(X, y, weights, biases, acts, loss), rel=1e-12)


@pytest.mark.parametrize("case", list(SGD_CASES))
def test_per_sample_sgd_matches_reference(case, make_problem):
    sizes, acts, loss, bias, lr = SGD_CASES[case]
    X, y, weights, biases = _problem(make_problem, sizes, loss, bias, n=30, seed=2)
    epochs = 300
    m = model_from(weights, biases, acts, loss)
    hist = m.fit(X, y, epochs=epochs, lr=lr, batch_size=1, shuffle=False)
    rw, rb, rhist = R.train_sgd(X, y, weights, biases, acts, loss, epochs, lr)
    np.testing.assert_allclose(hist.loss, rhist, rtol=RTOL)
    assert_params_close(m.params, R.flatten(rw, rb))
    assert rhist[-1] < rhist[0]


@pytest.mark.parametrize("case", list(SGD_CASES))
def test_minibatch_matches_reference(case, make_problem):
    """batch 7 on 30 samples: four batches of 7 and a last one of 2, in order."""
    sizes, acts, loss, bias, lr = SGD_CASES[case]
    X, y, weights, biases = _problem(make_problem, sizes, loss, bias, n=30, seed=3)
    epochs = 300
    m = model_from(weights, biases, acts, loss)
    hist = m.fit(X, y, epochs=epochs, lr=lr * 3, batch_size=7, shuffle=False)
    rw, rb, rhist = R.train_minibatch(X, y, weights, biases, acts, loss, epochs, lr * 3, 7)
    np.testing.assert_allclose(hist.loss, rhist, rtol=RTOL)
    assert_params_close(m.params, R.flatten(rw, rb))
    assert rhist[-1] < rhist[0]


def test_wide_full_batch_matches_reference(make_problem):
    """Layers wide enough for the kernels' BLAS path, trained full batch."""
    sizes, acts = [8, 40, 3], ["tanh", "identity"]
    X, y, weights, biases = make_problem(sizes, n=250, loss="mse", seed=20)
    m = model_from(weights, biases, acts, "mse")
    hist = m.fit(X, y, epochs=300, lr=0.05)
    rw, rb, rhist = R.train_full_batch(X, y, weights, biases, acts, "mse", 300, 0.05)
    np.testing.assert_allclose(hist.loss, rhist, rtol=RTOL)
    assert_params_close(m.params, R.flatten(rw, rb))


def test_batch_size_n_is_full_batch(make_problem):
    sizes, acts, loss, bias, lr = FULL_BATCH_CASES["tanh-mse"]
    X, y, weights, biases = _problem(make_problem, sizes, loss, bias, n=20, seed=4)
    a = model_from(weights, biases, acts, loss)
    b = model_from(weights, biases, acts, loss)
    ha = a.fit(X, y, epochs=200, lr=lr)
    hb = b.fit(X, y, epochs=200, lr=lr, batch_size=20)
    np.testing.assert_allclose(hb.loss, ha.loss, rtol=1e-12)
    np.testing.assert_allclose(b.params, a.params, rtol=1e-12, atol=1e-14)


def test_sse_minibatch_loss_is_not_averaged(make_problem):
    """sse of a batch is 1/2*sum over the batch: history scales with the batch size."""
    X, y, weights, biases = make_problem([2, 3, 1], n=12, loss="sse", seed=5)
    m = model_from(weights, biases, "tanh", "sse")
    hist = m.fit(X, y, epochs=1, lr=1e-12, batch_size=4)  # params (almost) frozen
    per_sample = 0.5 * (R.predict(X, weights, biases, "tanh") - y) ** 2
    expected = per_sample.reshape(3, 4).sum(axis=1).mean()
    assert hist.loss[0] == pytest.approx(expected, rel=1e-9)


def test_fits_continue_training(make_problem):
    sizes, acts, loss, bias, lr = FULL_BATCH_CASES["sigmoid-sse-xorlike"]
    X, y, weights, biases = _problem(make_problem, sizes, loss, bias, n=20, seed=6)
    one = model_from(weights, biases, acts, loss)
    two = model_from(weights, biases, acts, loss)
    h = one.fit(X, y, epochs=100, lr=lr)
    h1 = two.fit(X, y, epochs=40, lr=lr)
    h2 = two.fit(X, y, epochs=60, lr=lr)
    np.testing.assert_array_equal(two.params, one.params)
    np.testing.assert_array_equal(np.concatenate([h1.loss, h2.loss]), h.loss)


# ------------------------------------------------------------------- shuffling


@pytest.mark.parametrize("batch_size", [1, 4])
def test_same_seed_is_bit_identical(batch_size, make_problem):
    X, y, weights, biases = make_problem([3, 5, 2], n=30, seed=7)
    a = model_from(weights, biases, "tanh", "mse")
    b = model_from(weights, biases, "tanh", "mse")
    ha = a.fit(X, y, epochs=50, lr=0.02, batch_size=batch_size, shuffle=True, seed=42)
    hb = b.fit(X, y, epochs=50, lr=0.02, batch_size=batch_size, shuffle=True, seed=42)
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(ha.loss, hb.loss)
    c = model_from(weights, biases, "tanh", "mse")
    c.fit(X, y, epochs=50, lr=0.02, batch_size=batch_size, shuffle=True, seed=43)
    assert not np.array_equal(c.params, a.params), "a different seed gave the same trajectory"


@pytest.mark.parametrize("batch_size", [1, 7])
def test_chunked_fit_is_bit_identical(batch_size, make_problem):
    X, y, weights, biases = make_problem([3, 5, 2], n=30, seed=8)
    whole = model_from(weights, biases, "tanh", "mse")
    parts = model_from(weights, biases, "tanh", "mse")
    h = whole.fit(X, y, epochs=40, lr=0.02, batch_size=batch_size, shuffle=True, seed=5)
    h1 = parts.fit(X, y, epochs=20, lr=0.02, batch_size=batch_size, shuffle=True, seed=5)
    h2 = parts.fit(X, y, epochs=20, lr=0.02, batch_size=batch_size, shuffle=True, seed=None)
    np.testing.assert_array_equal(parts.params, whole.params)
    np.testing.assert_array_equal(np.concatenate([h1.loss, h2.loss]), h.loss)


def test_seed_in_a_later_fit_restarts_the_stream(make_problem):
    X, y, weights, biases = make_problem([3, 5, 2], n=30, seed=9)
    a = model_from(weights, biases, "tanh", "mse")
    a.fit(X, y, epochs=10, lr=0.02, batch_size=3, shuffle=True, seed=5)
    w_half = [w.copy() for w in a.weights]
    b_half = [b.copy() for b in a.biases]
    a.fit(X, y, epochs=10, lr=0.02, batch_size=3, shuffle=True, seed=5)
    fresh = model_from(w_half, b_half, "tanh", "mse")
    fresh.fit(X, y, epochs=10, lr=0.02, batch_size=3, shuffle=True, seed=5)
    np.testing.assert_array_equal(a.params, fresh.params)


@pytest.mark.parametrize("batch_size", [1, 7])
def test_shuffle_changes_the_trajectory(batch_size, make_problem):
    X, y, weights, biases = make_problem([3, 5, 2], n=30, seed=10)
    ordered = model_from(weights, biases, "tanh", "mse")
    shuffled = model_from(weights, biases, "tanh", "mse")
    ordered.fit(X, y, epochs=20, lr=0.02, batch_size=batch_size, shuffle=False)
    shuffled.fit(X, y, epochs=20, lr=0.02, batch_size=batch_size, shuffle=True, seed=1)
    diff = np.max(np.abs(ordered.params - shuffled.params))
    assert diff > 1e-6, f"shuffle=True gave the unshuffled trajectory (max diff {diff:g})"


def test_shuffle_visits_every_sample_once_per_epoch(make_problem):
    """With a tiny lr one SGD epoch moves the params by -lr * (sum of per-sample
    gradients) + O(lr^2) whatever the order, but not if samples repeat or go missing."""
    X, y, weights, biases = make_problem([3, 4, 2], n=30, seed=11)
    lr = 1e-6
    start = R.flatten(weights, biases)
    for seed in (1, 2, 3):
        m = model_from(weights, biases, "tanh", "mse")
        m.fit(X, y, epochs=1, lr=lr, batch_size=1, shuffle=True, seed=seed)
        step = m.params - start
        dW, db = R.gradient(X, y, weights, biases, "tanh", "mse")  # mean over 30 samples
        expected = -lr * 30 * R.flatten(dW, db)  # each per-sample loss is divided by 1, not 30
        np.testing.assert_allclose(step, expected, rtol=0, atol=1e-3 * np.max(np.abs(expected)))


def _last_visited_per_epoch(n, epochs, batch_size=1, seed=3):
    """For w <- w - 1.0 * (w - y_i) (1-1 identity net, sse, x = 1, lr 1) a per-sample
    step sets w = y_i exactly, so with y_i = i the weight after an epoch is the index
    of the epoch's last sample. One fit per epoch: the stream continues across fits."""
    m = fastbp.MLP.from_weights([np.zeros((1, 1))], None, activation="identity", loss="sse")
    X = np.ones((n, 1))
    y = np.arange(n, dtype=np.float64).reshape(n, 1)
    lasts = []
    for e in range(epochs):
        m.fit(X, y, epochs=1, lr=1.0, batch_size=batch_size, shuffle=True, seed=seed if e == 0 else None)
        w = float(m.params[0])
        assert w == int(w) and 0 <= w < n
        lasts.append(int(w))
    return np.array(lasts)


def test_each_epoch_draws_a_new_permutation():
    lasts = _last_visited_per_epoch(n=5, epochs=250)
    counts = np.bincount(lasts, minlength=5)
    # uniform: 50 expected per index; a fixed or non-advancing order puts all 250 on one
    assert counts.min() >= 20 and counts.max() <= 85, counts


def test_unshuffled_epochs_end_on_the_last_sample():
    m = fastbp.MLP.from_weights([np.zeros((1, 1))], None, activation="identity", loss="sse")
    m.fit(np.ones((5, 1)), np.arange(5.0), epochs=3, lr=1.0, batch_size=1, shuffle=False)
    assert m.params[0] == 4.0


# ------------------------------------------------------------- record_every


def _check_record_every(make_problem, batch_size, epochs, k):
    X, y, weights, biases = make_problem([2, 3, 1], n=12, seed=12)
    every = model_from(weights, biases, "sigmoid", "mse")
    sparse = model_from(weights, biases, "sigmoid", "mse")
    h1 = every.fit(X, y, epochs=epochs, lr=0.5, batch_size=batch_size)
    hk = sparse.fit(X, y, epochs=epochs, lr=0.5, batch_size=batch_size, record_every=k)
    np.testing.assert_array_equal(sparse.params, every.params)
    assert hk.record_every == k
    assert hk.epochs == epochs
    # "one value per record_every epochs"; History documents record r as epoch
    # r * record_every of the fit (so record 0 is the first epoch).
    if epochs % k == 0:
        assert hk.loss.shape == (epochs // k,)
    else:  # a last, partial block: the documented convention records its first epoch
        assert hk.loss.shape in {(epochs // k,), (-(-epochs // k),)}
    np.testing.assert_array_equal(hk.loss, h1.loss[::k][: hk.loss.shape[0]])


@pytest.mark.parametrize("epochs,k", [(21, 3), (20, 3), (10, 10), (7, 1)])
def test_record_every_full_batch(make_problem, epochs, k):
    _check_record_every(make_problem, None, epochs, k)


@pytest.mark.parametrize("epochs,k", [(21, 3), (20, 3)])
def test_record_every_sgd(make_problem, epochs, k):
    _check_record_every(make_problem, 1, epochs, k)


def test_history_fields(make_problem):
    X, y, weights, biases = make_problem([2, 3, 1], n=12, seed=13)
    m = model_from(weights, biases, "sigmoid", "mse")
    h = m.fit(X, y, epochs=5, lr=0.1)
    assert h.epochs == 5
    assert h.record_every == 1
    assert isinstance(h.seconds, float) and h.seconds >= 0.0
    assert h.loss.ndim == 1 and h.loss.dtype == np.float64


# ------------------------------------------------------------------- float32


@pytest.mark.parametrize("batch_size", [None, 1, 5])
def test_float32_model(batch_size, make_problem):
    X, y, weights, biases = make_problem([3, 5, 1], n=20, seed=14)
    m = fastbp.MLP([3, 5, 1], activation=["tanh", "identity"], loss="mse", init="normal", dtype="float32", seed=0)
    assert m.params.dtype == np.float32
    assert m.dtype == np.dtype(np.float32)
    assert all(w.dtype == np.float32 for w in m.weights)
    start = m.params.copy()
    h = m.fit(X, y, epochs=100, lr=0.02, batch_size=batch_size)
    assert m.params.dtype == np.float32
    assert h.loss.dtype == np.float64
    assert np.all(np.isfinite(h.loss))
    assert h.loss[-1] < 0.9 * h.loss[0]
    pred = m.predict(X)
    assert pred.dtype == np.float32 and pred.shape == (20, 1)
    # Same trajectory as float64 from the same start, to float32 accuracy.
    w64, b64 = R.unflatten(start.astype(np.float64), [3, 5, 1], True)
    m64 = fastbp.MLP.from_weights(w64, b64, activation=["tanh", "identity"], loss="mse")
    h64 = m64.fit(X, y, epochs=100, lr=0.02, batch_size=batch_size)
    np.testing.assert_allclose(h.loss, h64.loss, rtol=1e-3)


# ------------------------------------------------------ construction & views


def test_from_weights_shapes_and_layout(make_problem):
    _, _, weights, biases = make_problem([3, 5, 4, 2], seed=15)
    m = fastbp.MLP.from_weights(weights, biases, activation="tanh", loss="sse")
    assert m.sizes == (3, 5, 4, 2)
    assert m.n_layers == 3
    assert m.bias is True
    assert m.activations == ("tanh", "tanh", "tanh")
    assert m.loss_name == "sse"
    assert m.dtype == np.dtype(np.float64)
    assert m.params.ndim == 1 and m.params.size == 3 * 5 + 5 + 5 * 4 + 4 + 4 * 2 + 2
    assert [w.shape for w in m.weights] == [(3, 5), (5, 4), (4, 2)]
    assert [b.shape for b in m.biases] == [(5,), (4,), (2,)]
    for a, b in zip(m.weights + m.biases, weights + biases):
        np.testing.assert_array_equal(a, b)
    # DESIGN.md layout: W_0 (row-major), b_0, W_1, b_1, ...
    np.testing.assert_array_equal(m.params, R.flatten(weights, biases))

    nob = fastbp.MLP.from_weights(weights, None, activation="sigmoid", loss="mse")
    assert nob.bias is False and nob.biases is None
    assert nob.params.size == 3 * 5 + 5 * 4 + 4 * 2
    np.testing.assert_array_equal(nob.params, R.flatten(weights, None))

    row = fastbp.MLP.from_weights(weights, [b.reshape(1, -1) for b in biases], activation="tanh", loss="sse")
    np.testing.assert_array_equal(row.params, m.params)
    assert [b.shape for b in row.biases] == [(5,), (4,), (2,)]


def test_from_weights_copies_the_callers_arrays(make_problem):
    X, y, weights, biases = make_problem([3, 4, 1], n=10, seed=16)
    w_copy = [w.copy() for w in weights]
    b_copy = [b.copy() for b in biases]
    m = fastbp.MLP.from_weights(weights, biases, activation="tanh", loss="mse")
    m.fit(X, y, epochs=10, lr=0.1)
    for a, b in zip(weights + biases, w_copy + b_copy):
        np.testing.assert_array_equal(a, b)


def test_weights_and_biases_are_views(make_problem):
    X, _, weights, biases = make_problem([3, 4, 2], n=5, seed=17)
    m = fastbp.MLP.from_weights(weights, biases, activation="tanh", loss="mse")
    before = m.predict(X)
    m.weights[0][0, 0] = 123.0
    assert m.params[0] == 123.0
    m.weights[1][3, 1] = -7.0
    assert m.params[3 * 4 + 4 + 3 * 2 + 1] == -7.0
    m.biases[0][2] = 5.0
    assert m.params[3 * 4 + 2] == 5.0
    m.biases[1][1] = 0.25
    assert m.params[-1] == 0.25
    assert not np.array_equal(m.predict(X), before)
    m.params[1] = 9.0
    assert m.weights[0][0, 1] == 9.0
    for v in m.weights + m.biases:
        assert np.shares_memory(v, m.params)


def test_views_follow_training(make_problem):
    X, y, weights, biases = make_problem([3, 4, 2], n=10, seed=18)
    m = fastbp.MLP.from_weights(weights, biases, activation="tanh", loss="mse")
    m.fit(X, y, epochs=20, lr=0.1)
    w, b = R.unflatten(m.params.copy(), [3, 4, 2], True)
    for a, r in zip(m.weights + m.biases, w + b):
        np.testing.assert_array_equal(a, r)
    assert not np.array_equal(m.weights[0], weights[0])


# ------------------------------------------------------------------ save/load


@pytest.mark.parametrize("bias,dtype", [(True, "float64"), (False, "float64"), (True, "float32")])
def test_save_load_round_trip(bias, dtype, tmp_path, make_problem):
    X, y, _, _ = make_problem([3, 4, 5, 2], n=10, seed=19)
    acts = ["relu", "tanh", "sigmoid"]
    m = fastbp.MLP([3, 4, 5, 2], activation=acts, loss="bce", init="normal", bias=bias, dtype=dtype, seed=4)
    y01 = 1.0 / (1.0 + np.exp(-y))
    m.fit(X, y01, epochs=5, lr=0.1)
    path = tmp_path / "m.npz"
    m.save(path)
    with np.load(path, allow_pickle=False) as z:  # one .npz, no pickle
        for key in z.files:
            z[key]
    m2 = fastbp.load(path)
    assert m2.sizes == m.sizes
    assert m2.activations == m.activations
    assert m2.loss_name == "bce"
    assert m2.bias is bias
    assert m2.dtype == np.dtype(dtype)
    assert m2.params.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(m2.params, m.params)
    np.testing.assert_array_equal(m2.predict(X), m.predict(X))
    # and it keeps training the same way
    m.fit(X, y01, epochs=5, lr=0.1)
    m2.fit(X, y01, epochs=5, lr=0.1)
    np.testing.assert_array_equal(m2.params, m.params)


def test_save_load_accepts_str_path(tmp_path):
    m = fastbp.MLP([2, 3, 1], seed=0)
    m.save(str(tmp_path / "s.npz"))
    np.testing.assert_array_equal(fastbp.load(str(tmp_path / "s.npz")).params, m.params)


# ---------------------------------------------------------------------- init


def test_default_attributes():
    m = fastbp.MLP([2, 4, 4, 1], seed=0)
    assert m.sizes == (2, 4, 4, 1)
    assert m.activations == ("sigmoid", "sigmoid", "sigmoid")
    assert m.loss_name == "mse"
    assert m.bias is True
    assert m.n_layers == 3
    assert m.dtype == np.dtype(np.float64)
    assert m.params.flags.c_contiguous


def _drawn_block_by_block(sizes, bias, init, seed):
    """The tutorials' way: one numpy Generator call per weight block, then per bias block
    (xavier's and he's biases are zeros, not drawn)."""
    rng = np.random.default_rng(seed)
    blocks = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        shape = (n_in, n_out)
        if init == "uniform":
            blocks.append(rng.uniform(size=shape).ravel())
            blocks += [rng.uniform(size=n_out)] if bias else []
        elif init == "normal":
            blocks.append(rng.normal(scale=n_in ** -0.5, size=shape).ravel())
            blocks += [rng.normal(scale=n_in ** -0.5, size=n_out)] if bias else []
        elif init == "xavier":
            limit = np.sqrt(6.0 / (n_in + n_out))
            blocks.append(rng.uniform(-limit, limit, size=shape).ravel())
            blocks += [np.zeros(n_out)] if bias else []
        else:  # he
            blocks.append(rng.normal(scale=np.sqrt(2.0 / n_in), size=shape).ravel())
            blocks += [np.zeros(n_out)] if bias else []
    return np.concatenate(blocks)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("init", ["uniform", "normal", "xavier", "he"])
def test_init_draws_from_default_rng_block_by_block(init, bias, dtype):
    """Each init's numbers are those of a numpy Generator call per block, in float64 and
    rounded to the model's dtype -- fastbp draws them all in one call (and without the
    biases' draws a bias-free model has none of) -- for an MLP and an Ensemble's rows."""
    sizes = [3, 5, 4, 2]
    m = fastbp.MLP(sizes, init=init, seed=7, bias=bias, dtype=dtype)
    expected = _drawn_block_by_block(sizes, bias, init, 7).astype(dtype)
    assert m.params.dtype == np.dtype(dtype) and m.params.ctypes.data % 64 == 0
    np.testing.assert_array_equal(m.params, expected)
    if init == "uniform":
        assert np.all((m.params >= 0.0) & (m.params < 1.0))
    ens = fastbp.Ensemble(sizes, 3, init=init, seeds=[5, 7, 9], bias=bias, dtype=dtype)
    np.testing.assert_array_equal(ens.params[1], expected)
    np.testing.assert_array_equal(ens.params[2], _drawn_block_by_block(sizes, bias, init, 9)
                                  .astype(dtype))


@pytest.mark.parametrize("c", [0.1, -0.25, 0])
def test_init_constant(c):
    m = fastbp.MLP([3, 4, 2], init=c, seed=0)
    assert np.all(m.params == c)
    nob = fastbp.MLP([3, 4, 2], init=c, bias=False)
    assert nob.params.size == 3 * 4 + 4 * 2 and np.all(nob.params == c)


def test_init_normal_std():
    m = fastbp.MLP([400, 300, 1], init="normal", seed=1)
    W0, b0 = m.weights[0], m.biases[0]
    assert abs(W0.mean()) < 0.005
    assert W0.std() == pytest.approx(400 ** -0.5, rel=0.03)
    assert b0.std() == pytest.approx(400 ** -0.5, rel=0.25)  # biases too (300 draws)
    assert m.weights[1].std() == pytest.approx(300 ** -0.5, rel=0.25)


def test_init_xavier():
    m = fastbp.MLP([200, 100, 50], init="xavier", seed=2)
    for W, (n_in, n_out) in zip(m.weights, [(200, 100), (100, 50)]):
        lim = np.sqrt(6.0 / (n_in + n_out))
        assert np.all(np.abs(W) <= lim)
        assert np.max(np.abs(W)) > 0.95 * lim
        assert W.std() == pytest.approx(lim / np.sqrt(3.0), rel=0.05)
    for b in m.biases:
        assert np.all(b == 0.0)


def test_init_he():
    m = fastbp.MLP([400, 300, 10], init="he", seed=3)
    assert m.weights[0].std() == pytest.approx(np.sqrt(2.0 / 400), rel=0.03)
    assert abs(m.weights[0].mean()) < 0.01
    assert m.weights[1].std() == pytest.approx(np.sqrt(2.0 / 300), rel=0.1)
    for b in m.biases:
        assert np.all(b == 0.0)


@pytest.mark.parametrize("init", ["uniform", "normal", "xavier", "he"])
def test_same_seed_same_init(init):
    a = fastbp.MLP([4, 6, 3], init=init, seed=11)
    b = fastbp.MLP([4, 6, 3], init=init, seed=11)
    c = fastbp.MLP([4, 6, 3], init=init, seed=12)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)


def test_init_float32():
    m = fastbp.MLP([4, 6, 3], init="normal", seed=11, dtype="float32")
    assert m.params.dtype == np.float32
    assert np.all(np.isfinite(m.params)) and np.any(m.params != 0)


def test_activation_string_or_list():
    a = fastbp.MLP([2, 3, 1], activation="tanh", seed=0)
    assert a.activations == ("tanh", "tanh")
    b = fastbp.MLP([2, 3, 1], activation=["relu", "identity"], seed=0)
    assert b.activations == ("relu", "identity")


@njit
def _gather(src, start, nb, perm, shuffle, dst, d0):
    B.gather(src, start, nb, perm, shuffle, dst, d0)


@njit
def _scatter(src, s0, nb, dst, start):
    B.scatter(src, s0, nb, dst, start)


@njit
def _batch_loss(acts, oo, y, z, w, code, k, nb):
    return B.batch_loss(acts, oo, y, z, w, code, k, nb)


def _chain_loss(out, y, z, w, code, k, nb, chains=16, chain_type=None):
    """The documented order of a batch loss, in Python: output by output (a running
    float64 total from 0), each output's terms -- rules.loss_term rounded to the
    model's dtype (out's), times the sample weight in that dtype -- in sixteen chains
    of that dtype (chain s % 16), added as sum k = (c[k] + c[k + 4]) + (c[k + 8] +
    c[k + 12]), then (s0 + s1) + (s2 + s3).  ``chains=4``: the order before that, chain
    s % 4 added as (c0 + c1) + (c2 + c3); ``chain_type=np.float64``: float64 chains,
    the float32 order before this one."""
    dtype = out.dtype.type
    chain_type = chain_type or dtype
    total = np.float64(0.0)
    for j in range(k):
        c = [chain_type(0.0)] * chains
        for s in range(nb):
            t = dtype(Rules.loss_term(out[j * nb + s], y[j * nb + s],
                                      np.float64(z[j * nb + s]), code))
            t = chain_type(w[s] * t if w.size else t)
            c[s % chains] = chain_type(c[s % chains] + t)
        if chains == 16:
            c = [(c[i] + c[i + 4]) + (c[i + 8] + c[i + 12]) for i in range(4)]
        total = np.float64(total + np.float64((c[0] + c[1]) + (c[2] + c[3])))
    return Rules.loss_of_sum(total, code, k, nb)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batch_loss_sums_each_output_in_sixteen_chains(dtype):
    """batch.batch_loss (which the generated kernels and the lanes follow: their tests
    check the same bits) adds each output's loss terms in sixteen interleaved chains of
    the model's dtype, the order _chain_loss spells out: bit for bit, for every loss
    that sums terms, with and without sample weights, for batches of many sizes mod 16.
    (A single running sum, four chains, and for float32 float64 chains -- orders used
    before -- differ in the last bits: the check could fail.)"""
    rng = np.random.default_rng(5)
    codes = (Rules.MSE, Rules.HALF_MSE, Rules.SSE, Rules.BCE, Rules.POISSON)
    differs = four_differs = wide_differs = 0
    for code in codes:
        for k in (1, 3):
            for nb in (1, 2, 3, 4, 5, 7, 16, 17, 31, 64, 101):
                out = rng.random(k * nb).astype(dtype) + dtype(0.1)
                y = rng.random(k * nb).astype(dtype)
                z = rng.normal(size=k * nb).astype(dtype)
                for w in (np.zeros(0, dtype), rng.random(nb).astype(dtype)):
                    got = _batch_loss(out, 0, y, z, w, code, k, nb)
                    want = _chain_loss(out, y, z, w, code, k, nb)
                    assert got == want, (dtype, code, k, nb, w.size, got, want)
                    four_differs += got != _chain_loss(out, y, z, w, code, k, nb, chains=4)
                    wide_differs += got != _chain_loss(out, y, z, w, code, k, nb,
                                                       chain_type=np.float64)
                    terms = [dtype(Rules.loss_term(out[i], y[i], np.float64(z[i]), code))
                             * (w[i % nb] if w.size else dtype(1.0)) for i in range(k * nb)]
                    one_chain = dtype(0.0)
                    for t in terms:
                        one_chain = dtype(one_chain + t)
                    differs += Rules.loss_of_sum(np.float64(one_chain), code, k, nb) != got
    assert differs > 0 and four_differs > 0  # the orders are told apart by these cases
    assert (wide_differs > 0) == (dtype == np.float32)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("k, nb", [(5, 19), (70, 67), (16, 32), (3, 5), (17, 16)])
def test_gather_and_scatter_rows_of_sample_major_data(shuffle, k, nb, dtype):
    """The kernels take data one sample per row, (n, k) C-contiguous (what fit passes),
    and batch.gather lays a batch out feature-major: the batch that plain numpy indexing
    gives, transposed; batch.scatter is its reverse.  The gather moves blocks of a
    vector's width of samples (8 float64 or 16 float32 with AVX-512, 4 or 8 with AVX2)
    by up to as many features through registers: the shapes have whole blocks, features
    past a block, samples past the last block, and fewer samples than one block."""
    rng = np.random.default_rng(11)
    n = nb + 22
    rows = rng.normal(size=(n, k)).astype(dtype)
    perm = rng.permutation(n)
    start, d0 = 7, 3
    dst = np.full(d0 + k * nb + 2, np.nan, dtype)
    _gather(rows, start, nb, perm, shuffle, dst, d0)
    picked = perm[start:start + nb] if shuffle else np.arange(start, start + nb)
    np.testing.assert_array_equal(dst[d0:d0 + k * nb].reshape(k, nb), rows[picked].T)
    assert np.isnan(dst[:d0]).all() and np.isnan(dst[d0 + k * nb:]).all()
    out = np.full((n, k), np.nan, dtype)
    _scatter(dst, d0, nb, out, start)
    np.testing.assert_array_equal(out[start:start + nb], rows[picked])
    assert np.isnan(out[:start]).all() and np.isnan(out[start + nb:]).all()


def test_fit_reads_c_contiguous_data_in_place_and_never_writes_it(make_problem):
    """A C-contiguous float64 X is not copied (fit, predict and the kernels read it where
    it is) and comes back unchanged, with the results of a private copy."""
    X, y, _, _ = make_problem((3, 5, 2), n=30, seed=4)
    X0, y0 = X.copy(), y.copy()
    m = fastbp.MLP([3, 5, 2], activation="sigmoid", seed=1)
    assert np.shares_memory(m._inputs(X), X)
    ref = fastbp.MLP([3, 5, 2], activation="sigmoid", seed=1)
    for batch_size in (1, 4, None):
        h = m.fit(X, y, epochs=3, lr=0.1, batch_size=batch_size, shuffle=batch_size == 4)
        h_ref = ref.fit(X0.copy(), y0.copy(), epochs=3, lr=0.1, batch_size=batch_size,
                        shuffle=batch_size == 4)
        np.testing.assert_array_equal(h.loss, h_ref.loss)
    np.testing.assert_array_equal(m.params, ref.params)
    np.testing.assert_array_equal(m.predict(X), ref.predict(X0.copy()))
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


@njit
def _forward(params, net, acts, a_off, nb):
    B.forward(params, net, acts, a_off, nb, acts[:0], False)


@njit
def _backward(params, net, acts, a_off, deltas, out, nb, lr, descend):
    B.backward(params, net, acts, a_off, deltas, out, nb, lr, descend, True)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("product_min_work", [K.PRODUCT_MIN_WORK, -1])
def test_fused_sgd_step_equals_backward_then_update(bias, product_min_work):
    """batch.backward with ``descend`` (the plain rule applied inside the backward pass,
    no gradient stored) must give exactly backward + rules.plain_step: with the default
    threshold the 5x10 layer runs on the loops and the wider ones on the tiles (alpha =
    -lr, beta = 1); with -1 every layer runs on the loops."""
    sizes = [5, 10, 70, 3]
    nb = 64
    model = fastbp.MLP(sizes, activation=["tanh", "sigmoid", "identity"], bias=bias, seed=3)
    uses = [R.python_of(B.uses_products)(a, b, nb, product_min_work) for a, b in
            zip(sizes[:-1], sizes[1:])]
    assert uses == ([False, True, True] if product_min_work >= 0 else [False] * 3)
    net = D.make_net(model._layout, model._act_codes, model._loss_code, model.dtype, "tiles")
    net = net._replace(product_min_work=product_min_work, blas=0)  # the tiles, not BLAS
    rng = np.random.default_rng(0)
    work = O.make_work(model._layout.sizes_arr, model.params.size, nb, nb, model.dtype, False)
    a_off, acts, deltas = work.a_off, work.acts, work.deltas
    acts[:sizes[0] * nb] = rng.standard_normal(sizes[0] * nb)
    _forward(model.params, net, acts, a_off, nb)
    out = a_off[len(sizes) - 1]
    delta_out = rng.standard_normal(sizes[-1] * nb)
    lr = 0.037

    grad = np.zeros_like(model.params)
    d1 = deltas.copy()
    d1[out:out + delta_out.size] = delta_out
    _backward(model.params, net, acts, a_off, d1, grad, nb, 0.0, False)
    want = np.array([Rules.plain_step(p, g, lr) for p, g in zip(model.params, grad)])
    np.testing.assert_array_equal(want, model.params - lr * grad)

    got = model.params.copy()
    d2 = deltas.copy()
    d2[out:out + delta_out.size] = delta_out
    _backward(got, net, acts, a_off, d2, got, nb, lr, True)
    assert np.array_equal(got, want)
    assert np.array_equal(d1, d2)  # the back-propagated deltas read the weights before the step


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch_size", [None, 16])
def test_fused_and_plain_entries_train_alike(batch_size, dtype, make_problem):
    """loops.trainer's "fused" entry (the step inside the backward pass) and its "plain"
    one (a separate step after backward) give the same bits, records included."""
    sizes = [5, 10, 70, 3]
    X, y, weights, biases = make_problem(sizes, n=48, seed=2)
    model = fastbp.MLP.from_weights(weights, biases, activation=["tanh", "sigmoid",
                                                                 "identity"], dtype=dtype)
    n, batch = X.shape[0], batch_size or X.shape[0]
    mode = "full" if batch_size is None else "mini"
    net = D.make_net(model._layout, model._act_codes, model._loss_code, model.dtype, "tiles")
    data = O.Data(model._inputs(X), model._targets(y, n), np.zeros(0))
    results = []
    for kind in ("fused", "plain"):
        params = model.params.copy()
        work = O.make_work(model._layout.sizes_arr, params.size, batch, n, model.dtype,
                           False, gradient=kind != "fused", passes=D.batch_passes(model.dtype))
        history = np.full(6, np.nan)
        options = O.plain(net, data, O.Loop(batch, False, 1), O.plain_rule(0.05, 6),
                          O.NO_STOP, O.new_state(0, model.dtype, np.zeros(2, np.int64)), work)
        done = L.trainer(mode, kind, False)(params, *options[:2], None, *options[2:], None,
                                            history, None, params[:0], 0, 6)
        assert done == (6, -1, False)
        results.append((params, history))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert not np.array_equal(results[0][0], model.params)  # it trained


def test_wide_minibatch_fits_match_reference_in_both_dtypes(make_problem):
    """A plain-SGD mini-batch fit of a net whose layers run on the tiles (the fused step,
    no gradient buffer) follows the reference in both dtypes."""
    sizes, acts = [5, 40, 3], ["sigmoid", "identity"]
    X, y, weights, biases = make_problem(sizes, n=96, loss="mse", seed=8)
    rw, rb, rhist = R.train_minibatch(X, y, weights, biases, acts, "mse", 5, 0.05, 32)
    for dtype, tol in (("float64", 1e-12), ("float32", 2e-4)):
        m = fastbp.MLP.from_weights(weights, biases, activation=acts, loss="mse", dtype=dtype)
        hist = m.fit(X.astype(dtype), y.astype(dtype), epochs=5, lr=0.05, batch_size=32)
        np.testing.assert_allclose(hist.loss, rhist, rtol=tol)
        np.testing.assert_allclose(m.params, R.flatten(rw, rb), rtol=tol, atol=tol)


def test_the_loading_call_runs_once_per_kernel_and_argument_kinds(make_problem, monkeypatch):
    """fit first calls the kernel for no epochs (SingleFit.prepare: compiling or loading
    it, so that history.seconds measures training only); a later fit of the same kind
    skips that call (the dispatcher's registry: is_loaded), and a fit of another kind
    (validation data, float32) makes it."""
    monkeypatch.setattr(D, "_loaded", set())
    X, y, W, b = make_problem([3, 5, 2], n=12)
    calls = []
    original = SingleFit._call

    def spy(self, epochs, *rest):
        calls.append(epochs)
        return original(self, epochs, *rest)

    monkeypatch.setattr(SingleFit, "_call", spy)
    m = fastbp.MLP.from_weights(W, b)
    for _ in range(2):
        m.fit(X, y, epochs=2, lr=0.1)
    assert calls == [0, 2, 2]
    del calls[:]
    m2 = fastbp.MLP.from_weights(W, b, dtype="float32")
    for _ in range(2):
        m2.fit(X, y, epochs=2, lr=0.1, validation_data=(X[:3], y[:3]), batch_size=5)
    assert calls == [0, 2, 2]
    m3 = fastbp.MLP.from_weights(W, b)
    m3.fit(X, y, epochs=4, lr=0.1)
    assert calls[3:] == [4]
    assert np.array_equal(m3.params, m.params)  # two fits of 2 epochs, one of 4: the same
