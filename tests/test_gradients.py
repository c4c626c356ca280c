"""MLP.gradient / predict / loss against central differences and tests/reference.py."""

import zlib

import numpy as np
import pytest

import fastbp
import reference as R

ACTS = R.ACTIVATIONS
H = 1e-6  # central-difference step

# Every activation x loss; bce only with a sigmoid output (the hidden layers then
# take each activation in turn).
CASES = [(act, loss) for act in ACTS for loss in ("mse", "half_mse", "sse")] + [(act, "bce") for act in ACTS]


def _case_params():
    out = []
    for act, loss in CASES:
        for depth in (1, 2, 3, 4):
            if loss == "bce" and depth == 1 and act != "sigmoid":
                continue  # one layer: the only activation is the sigmoid output
            for bias in (True, False):
                out.append(pytest.param(act, loss, depth, bias, id=f"{act}-{loss}-L{depth}-{'b' if bias else 'nob'}"))
    return out


def _activations(act, loss, depth):
    acts = [act] * depth
    if loss == "bce":
        acts[-1] = "sigmoid"
    return acts


def _draw_case(act, loss, depth, bias, n=7):
    """A random net (widths 1..6) and data, redrawn until it is a fair test.

    Fair: no relu pre-activation within 1e-3 of its kink (the finite difference
    would straddle it) and a gradient that is not identically zero (dead relus).
    """
    acts = _activations(act, loss, depth)
    base = zlib.crc32(f"{act}|{loss}|{depth}|{bias}".encode())
    for attempt in range(200):
        rng = np.random.default_rng(base + attempt)
        sizes = [int(s) for s in rng.integers(1, 7, size=depth + 1)]
        X = rng.normal(0.0, 1.0, size=(n, sizes[0]))
        y = rng.uniform(0.05, 0.95, size=(n, sizes[-1])) if loss == "bce" else rng.normal(size=(n, sizes[-1]))
        weights = [rng.normal(0.0, 1.2 / np.sqrt(a), size=(a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
        biases = [rng.normal(0.0, 0.5, size=b) for b in sizes[1:]] if bias else None
        zs = R.preactivations(X, weights, biases, acts)
        if any(a == "relu" and np.min(np.abs(z)) < 1e-3 for a, z in zip(acts, zs)):
            continue
        dW, db = R.gradient(X, y, weights, biases, acts, loss)
        if np.max(np.abs(R.flatten(dW, db))) < 1e-3:
            continue
        return sizes, acts, X, y, weights, biases
    raise AssertionError("could not draw a kink-free case")  # pragma: no cover


def assert_close_scaled(actual, desired, scale, rtol=1e-12, atol_factor=1e-13, what=""):
    """|actual - desired| <= rtol*|desired| + atol_factor*scale, elementwise.

    ``scale`` bounds the size of the terms summed into each element, so the
    absolute part only forgives rounding where sums cancel.
    """
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, f"{what}: shape {actual.shape} != {desired.shape}"
    err = np.abs(actual - desired)
    tol = rtol * np.abs(desired) + atol_factor * np.asarray(scale)
    bad = err > tol
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {bad.size} elements differ; worst |err|={err.max():.3e}, "
        f"actual={actual[bad][:4]}, desired={desired[bad][:4]}"
    )


def _flat_grad(grad):
    dW, db = grad
    return R.flatten(dW, db)


# ------------------------------------------------------- reference is sound


@pytest.mark.parametrize("act,loss,depth,bias", _case_params())
def test_reference_gradient_matches_finite_differences(act, loss, depth, bias):
    sizes, acts, X, y, weights, biases = _draw_case(act, loss, depth, bias)
    g = _flat_grad(R.gradient(X, y, weights, biases, acts, loss))

    def f(theta):
        w, b = R.unflatten(theta, sizes, bias)
        return R.loss(X, y, w, b, acts, loss)

    ng = R.numerical_gradient(f, R.flatten(weights, biases), h=H)
    np.testing.assert_allclose(g, ng, rtol=1e-6, atol=1e-7 * np.max(np.abs(ng)))


def test_reference_losses_by_hand():
    out = np.array([[0.2, 0.9], [0.6, 0.3], [0.5, 0.5]])
    y = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 1.0]])
    sq = (0.2**2 + 0.1**2) + (0.4**2 + 0.3**2) + (0.0 + 0.5**2)  # = 0.55
    assert R.loss_value(out, y, "mse") == pytest.approx(sq / 6, rel=1e-15)
    assert R.loss_value(out, y, "half_mse") == pytest.approx(sq / 12, rel=1e-15)
    assert R.loss_value(out, y, "sse") == pytest.approx(sq / 2, rel=1e-15)
    bce = -(np.log(0.8) + np.log(0.9) + np.log(0.6) + np.log(0.7) + 0.5 * np.log(0.5) * 2 + np.log(0.5)) / 6
    assert R.loss_value(out, y, "bce") == pytest.approx(bce, rel=1e-14)
    z = np.log(out / (1 - out))  # logits of out
    assert R.bce_from_logits(z, y) == pytest.approx(bce, rel=1e-13)


# ----------------------------------------------------- fastbp vs the checks


@pytest.mark.parametrize("act,loss,depth,bias", _case_params())
def test_gradient_matches_finite_differences(act, loss, depth, bias):
    sizes, acts, X, y, weights, biases = _draw_case(act, loss, depth, bias)
    m = fastbp.MLP.from_weights(weights, biases, activation=acts, loss=loss)
    g = _flat_grad(m.gradient(X, y))
    theta0 = m.params.copy()

    def f(theta):
        m.params[:] = theta  # params is the live parameter vector
        return m.loss(X, y)

    ng = R.numerical_gradient(f, theta0, h=H)
    m.params[:] = theta0
    assert g.shape == theta0.shape
    np.testing.assert_allclose(g, ng, rtol=1e-6, atol=1e-7 * np.max(np.abs(ng)),
                               err_msg=f"sizes={sizes} acts={acts} loss={loss} bias={bias}")


@pytest.mark.parametrize("act,loss,depth,bias", _case_params())
def test_gradient_predict_loss_match_reference(act, loss, depth, bias):
    sizes, acts, X, y, weights, biases = _draw_case(act, loss, depth, bias)
    m = fastbp.MLP.from_weights(weights, biases, activation=acts, loss=loss)
    before = m.params.copy()

    dW, db = m.gradient(X, y)
    rW, rb = R.gradient(X, y, weights, biases, acts, loss)
    mW, mb = R.gradient_magnitude(X, y, weights, biases, acts, loss)
    assert len(dW) == depth
    for l in range(depth):
        assert dW[l].shape == (sizes[l], sizes[l + 1])
        assert_close_scaled(dW[l], rW[l], mW[l], what=f"dW[{l}]")
    if bias:
        assert db is not None and len(db) == depth
        for l in range(depth):
            assert np.shape(db[l]) == (sizes[l + 1],)
            assert_close_scaled(db[l], rb[l], mb[l], what=f"db[{l}]")
    else:
        assert db is None

    pred = m.predict(X)
    assert pred.shape == (X.shape[0], sizes[-1])
    assert pred.dtype == np.float64
    assert_close_scaled(pred, R.predict(X, weights, biases, acts),
                        R.forward_magnitude(X, weights, biases), what="predict")

    assert m.loss(X, y) == pytest.approx(R.loss(X, y, weights, biases, acts, loss), rel=1e-12, abs=1e-300)
    np.testing.assert_array_equal(m.params, before)  # gradient/predict/loss do not train


MIXED = [
    (["tanh", "relu", "sigmoid", "identity"], "mse"),
    (["relu", "identity", "tanh", "sigmoid"], "bce"),
    (["sigmoid", "tanh", "identity"], "sse"),
    (["identity", "relu"], "half_mse"),
]


@pytest.mark.parametrize("acts,loss", MIXED, ids=["-".join(a) + "-" + l for a, l in MIXED])
def test_mixed_activations(acts, loss, make_problem):
    sizes = [3, 5, 4, 6, 2][: len(acts) + 1]
    X, y, weights, biases = make_problem(sizes, n=11, loss=loss, seed=7)
    zs = R.preactivations(X, weights, biases, acts)
    assert all(np.min(np.abs(z)) > 1e-4 for a, z in zip(acts, zs) if a == "relu")
    m = fastbp.MLP.from_weights(weights, biases, activation=acts, loss=loss)
    assert tuple(m.activations) == tuple(acts)
    dW, db = m.gradient(X, y)
    rW, rb = R.gradient(X, y, weights, biases, acts, loss)
    mW, mb = R.gradient_magnitude(X, y, weights, biases, acts, loss)
    for l in range(len(acts)):
        assert_close_scaled(dW[l], rW[l], mW[l], what=f"dW[{l}]")
        assert_close_scaled(db[l], rb[l], mb[l], what=f"db[{l}]")
    assert_close_scaled(m.predict(X), R.predict(X, weights, biases, acts),
                        R.forward_magnitude(X, weights, biases), what="predict")


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_wide_layers_match_reference(loss, make_problem):
    """Wide layers may take a BLAS path in the kernels: same results to rounding."""
    sizes = [30, 64, 48, 3]
    acts = ["tanh", "sigmoid", "sigmoid"] if loss == "bce" else ["tanh", "sigmoid", "identity"]
    X, y, weights, biases = make_problem(sizes, n=50, loss=loss, seed=3)
    m = fastbp.MLP.from_weights(weights, biases, activation=acts, loss=loss)
    dW, db = m.gradient(X, y)
    rW, rb = R.gradient(X, y, weights, biases, acts, loss)
    mW, mb = R.gradient_magnitude(X, y, weights, biases, acts, loss)
    for l in range(3):
        assert_close_scaled(dW[l], rW[l], mW[l], what=f"dW[{l}]")
        assert_close_scaled(db[l], rb[l], mb[l], what=f"db[{l}]")
    assert_close_scaled(m.predict(X), R.predict(X, weights, biases, acts),
                        R.forward_magnitude(X, weights, biases), what="predict")
    assert m.loss(X, y) == pytest.approx(R.loss(X, y, weights, biases, acts, loss), rel=1e-12)


def test_one_output_accepts_1d_targets(make_problem):
    X, y, weights, biases = make_problem([3, 4, 1], n=8, seed=5)
    m = fastbp.MLP.from_weights(weights, biases, activation="tanh", loss="mse")
    dW2, db2 = m.gradient(X, y)
    dW1, db1 = m.gradient(X, y.ravel())
    for a, b in zip(dW1 + db1, dW2 + db2):
        np.testing.assert_array_equal(a, b)
    assert m.loss(X, y.ravel()) == m.loss(X, y)


def test_bce_is_stable_for_saturated_outputs():
    """bce 'computed stably': finite and right where p rounds to 0 or 1 in float64."""
    W = [np.array([[40.0]])]
    b = [np.array([0.0])]
    X = np.array([[1.0], [-1.0]])
    y = np.array([[0.0], [1.0]])  # both maximally wrong: loss = softplus(40)
    m = fastbp.MLP.from_weights(W, b, activation="sigmoid", loss="bce")
    val = m.loss(X, y)
    assert np.isfinite(val)
    assert val == pytest.approx(R.loss(X, y, W, b, "sigmoid", "bce"), rel=1e-12)
    assert val == pytest.approx(40.0, rel=1e-12)
    dW, db = m.gradient(X, y)
    assert np.all(np.isfinite(dW[0])) and np.all(np.isfinite(db[0]))


def test_float32_gradient_close_to_float64(make_problem):
    X, y, weights, biases = make_problem([4, 5, 3], n=10, seed=11)
    w32 = [w.astype(np.float32) for w in weights]
    b32 = [b.astype(np.float32) for b in biases]
    m = fastbp.MLP.from_weights(w32, b32, activation="tanh", loss="mse", dtype="float32")
    assert m.params.dtype == np.float32
    dW, db = m.gradient(X.astype(np.float32), y.astype(np.float32))
    rW, rb = R.gradient(X.astype(np.float32), y.astype(np.float32),
                        [w.astype(np.float64) for w in w32], [b.astype(np.float64) for b in b32], "tanh", "mse")
    for a, r in zip(dW + db, rW + rb):
        np.testing.assert_allclose(np.asarray(a, dtype=np.float64), r, rtol=1e-4, atol=1e-5 * np.max(np.abs(r)))


def test_predict_many_samples(make_problem):
    """More samples than one kernel batch of predict."""
    X, _, weights, biases = make_problem([4, 6, 2], n=5000, seed=21)
    m = fastbp.MLP.from_weights(weights, biases, activation=["relu", "sigmoid"], loss="mse")
    assert_close_scaled(m.predict(X), R.predict(X, weights, biases, ["relu", "sigmoid"]),
                        R.forward_magnitude(X, weights, biases), what="predict")


def test_relu_derivative_at_zero_is_zero():
    """docs/API-NOTES.md: a relu unit with z exactly 0 passes no gradient (the subgradient
    0, as PyTorch and scikit-learn), in gradient and in every training mode."""
    W = [np.array([[1.0, -1.0]]), np.array([[2.0], [3.0]])]
    b = [np.zeros(2), np.zeros(1)]
    X, y = np.zeros((3, 1)), np.ones((3, 1))  # every hidden z is exactly 0
    m = fastbp.MLP.from_weights(W, b, activation=["relu", "identity"], loss="sse")
    dW, db = m.gradient(X, y)
    assert not dW[0].any() and not db[0].any() and not dW[1].any()
    assert db[1][0] == -3.0
    for batch_size in (None, 1, 2):
        m = fastbp.MLP.from_weights(W, b, activation=["relu", "identity"], loss="sse")
        m.fit(X, y, epochs=1, lr=0.1, batch_size=batch_size)
        np.testing.assert_array_equal(m.weights[0], W[0])
        np.testing.assert_array_equal(m.biases[0], b[0])
