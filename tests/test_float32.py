"""float32 as a first-class dtype: a float32 model computes in float32 (the kernels'
own bit-level checks are in test_generate.py, test_simd.py and test_activations.py);
here its results against the float64 reference, the tutorials' networks trained in
float32, and reproducibility.

The tolerance of a float32 forward pass or gradient against the float64 reference
from the same float32 weights and data: 8 float32 ULP (8 * 2**-23 ~ 9.5e-7) of the
value's rounding scale (reference.forward_magnitude / gradient_magnitude: the sum of
the absolute values of the terms, which is what rounding errors scale with where
terms cancel).  The cases below stay within 0.8 ULP of it.
"""
import numpy as np
import pytest
from numba import njit

import fastbp
from fastbp import datasets
from fastbp._demos import tutorial_admissions_model
from fastbp.kernels import rules as Rules
from fastbp.kernels.loops import stateful_update

import reference as R

TOLERANCE_ULPS = 8
EPS32 = float(np.finfo(np.float32).eps)


def _as32(arrays):
    return None if arrays is None else [a.astype(np.float32) for a in arrays]


def _assert_within(got, want, scale, what):
    err = np.abs(np.asarray(got, dtype=np.float64) - want)
    bound = TOLERANCE_ULPS * EPS32 * np.maximum(scale, np.abs(want))
    worst = np.max(err / bound)
    assert worst <= 1.0, f"{what}: {worst:.2f} x the float32 tolerance"


CASES = [
    ([3, 7, 5, 2], "sigmoid", "mse", True),
    ([4, 9, 1], ["relu", "identity"], "sse", True),
    ([5, 6, 6, 3], ["tanh", "tanh", "sigmoid"], "bce", True),
    ([6, 2, 1], "sigmoid", "half_mse", False),
    ([2, 17, 1], ["relu", "sigmoid"], "bce", True),
]


@pytest.mark.parametrize("sizes,activation,loss,bias", CASES)
def test_float32_forward_and_gradient_agree_with_float64_to_float32_rounding(
        sizes, activation, loss, bias, make_problem):
    X, y, weights, biases = make_problem(sizes, n=23, loss=loss, bias=bias, seed=len(sizes))
    w32, b32 = _as32(weights), _as32(biases)
    X32, y32 = X.astype(np.float32), y.astype(np.float32)
    m = fastbp.MLP.from_weights(w32, b32, activation=activation, loss=loss, dtype="float32")
    # the reference in float64, from exactly the float32 model's numbers
    w64 = [w.astype(np.float64) for w in w32]
    b64 = None if b32 is None else [b.astype(np.float64) for b in b32]
    X64, y64 = X32.astype(np.float64), y32.astype(np.float64)

    pred = m.predict(X32)
    assert pred.dtype == np.float32
    _assert_within(pred.reshape(-1, sizes[-1]), R.predict(X64, w64, b64, activation),
                   R.forward_magnitude(X64, w64, b64), "predict")

    dW, db = m.gradient(X32, y32)
    assert all(g.dtype == np.float32 for g in dW)
    rW, rb = R.gradient(X64, y64, w64, b64, activation, loss)
    mW, mb = R.gradient_magnitude(X64, y64, w64, b64, activation, loss)
    for l, (g, r, s) in enumerate(zip(dW, rW, mW)):
        _assert_within(g, r, s, f"weight gradient {l}")
    for l, (g, r, s) in enumerate(zip(db or [], rb or [], mb or [])):
        _assert_within(g, r, s, f"bias gradient {l}")


def _magnitudes_ext(X, y, weights, biases, activation):
    """reference.forward_magnitude / gradient_magnitude for a softmax or exp output:
    the output scale is out * (1 + 2 |z|-scale) (a softmax or exp value moves by its own
    size times the rounding of its logits), the output delta's |out| + |y| over n."""
    zmag = R.forward_magnitude(X, weights, biases)
    outs, _ = R.forward_ext(X, weights, biases, activation)
    out = outs[-1]
    n = X.shape[0]
    out_scale = out * (1.0 + 2.0 * zmag)
    delta = (np.abs(out) + np.abs(y)) / n
    mW, mb = [None] * len(weights), [None] * len(weights)
    for l in range(len(weights) - 1, -1, -1):
        mW[l] = np.abs(outs[l]).T @ delta
        mb[l] = delta.sum(axis=0)
        if l > 0:
            delta = delta @ np.abs(weights[l]).T
    return out_scale, mW, mb


# Beyond CASES: the register tiles' products in every layer (batch of 96 > the product
# threshold), and the outputs whose rule is not elementwise or not a sigmoid: softmax
# with cross-entropy, exp with the Poisson loss.
WIDE_AND_EXT_CASES = [
    ([20, 80, 80, 5], "sigmoid", "mse"),
    ([6, 12, 4], ["tanh", "softmax"], "cross_entropy"),
    ([5, 9, 3], ["relu", "exp"], "poisson"),
]


@pytest.mark.parametrize("sizes,activation,loss", WIDE_AND_EXT_CASES)
def test_float32_products_softmax_and_exp_agree_with_float64_to_float32_rounding(
        sizes, activation, loss):
    rng = np.random.default_rng(len(sizes) + sizes[1])
    n, k = 96, sizes[-1]
    X = rng.normal(size=(n, sizes[0])).astype(np.float32)
    if loss == "cross_entropy":
        y = np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
    elif loss == "poisson":
        y = rng.poisson(2.0, size=(n, k)).astype(np.float32)
    else:
        y = rng.normal(size=(n, k)).astype(np.float32)
    w32 = [(rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)
           for a, b in zip(sizes[:-1], sizes[1:])]
    b32 = [rng.normal(scale=0.1, size=b).astype(np.float32) for b in sizes[1:]]
    m = fastbp.MLP.from_weights(w32, b32, activation=activation, loss=loss, dtype="float32")
    w64, b64 = [w.astype(np.float64) for w in w32], [b.astype(np.float64) for b in b32]
    X64, y64 = X.astype(np.float64), y.astype(np.float64)
    if loss == "mse":
        out_scale = R.forward_magnitude(X64, w64, b64)
        mW, mb = R.gradient_magnitude(X64, y64, w64, b64, activation, loss)
    else:
        out_scale, mW, mb = _magnitudes_ext(X64, y64, w64, b64, activation)

    pred = m.predict(X)
    assert pred.dtype == np.float32
    _assert_within(pred.reshape(n, k), R.forward_ext(X64, w64, b64, activation)[0][-1],
                   out_scale, "predict")
    dW, db = m.gradient(X, y)
    assert all(g.dtype == np.float32 for g in dW + db)
    rW, rb = R.weighted_gradient(X64, y64, w64, b64, activation, loss)
    for l in range(len(w32)):
        _assert_within(dW[l], rW[l], mW[l], f"weight gradient {l}")
        _assert_within(db[l], rb[l], mb[l], f"bias gradient {l}")


def test_xor_tutorial_net_in_float32_classifies_every_point():
    """Seed 000's 2-4-4-1 sigmoid net, sse, lr 0.1, 100,000 epochs (fastbp demo xor)."""
    X, y = datasets.xor_easy()
    m = fastbp.MLP([2, 4, 4, 1], activation="sigmoid", loss="sse", init="uniform", seed=0,
                   dtype="float32")
    hist = m.fit(X, y, epochs=100_000, lr=0.1)
    assert "float32" in hist.kernel
    assert np.all((m.predict(X).ravel() > 0.5) == (y.ravel() > 0.5))
    assert hist.loss[-1] < 1e-3 * hist.loss[0]


def test_admissions_tutorial_net_in_float32_reaches_the_tutorials_accuracy():
    """Seed 004's 6-2-1 net from the tutorial's initial weights, lr 0.007, 1,000 epochs:
    test accuracy 0.775 in float64 and in float32, the weights within float32 rounding
    of float64's."""
    adm = datasets.admissions()
    m64 = tutorial_admissions_model(adm.X_train.shape[1], seed=21)
    m32 = fastbp.MLP.from_weights(m64.weights, None, activation="sigmoid", loss="half_mse",
                                  dtype="float32")
    accuracy = []
    for m in (m64, m32):
        m.fit(adm.X_train, adm.y_train, epochs=1000, lr=0.007)
        pred = m.predict(adm.X_test).ravel() > 0.5
        accuracy.append(np.mean(pred == (adm.y_test > 0.5)))
    assert accuracy == [0.775, 0.775]
    assert m32.params.dtype == np.float32
    np.testing.assert_allclose(m32.params, m64.params, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_size", [None, 1, 8])
def test_float32_fit_is_bit_reproducible_run_to_run(batch_size, make_problem):
    X, y, _, _ = make_problem([3, 6, 2], n=40, seed=5)
    runs = []
    for _ in range(2):
        m = fastbp.MLP([3, 6, 2], activation="tanh", loss="mse", seed=3, dtype="float32")
        h = m.fit(X, y, epochs=25, lr=0.05, batch_size=batch_size, shuffle=True)
        runs.append((m.params.copy(), h.loss.copy()))
    assert runs[0][0].dtype == np.float32
    assert runs[0][0].tobytes() == runs[1][0].tobytes()
    assert runs[0][1].tobytes() == runs[1][1].tobytes()


def test_float32_ensemble_is_bit_identical_across_thread_counts(make_problem):
    X, y, _, _ = make_problem([3, 8, 2], n=20, seed=7)
    runs = []
    for jobs in (1, 2, None):
        ens = fastbp.Ensemble([3, 8, 2], 5, activation="sigmoid", loss="half_mse", seed=1,
                              dtype="float32")
        h = ens.fit(X, y, epochs=20, lr=0.3, batch_size=4, shuffle=True, n_jobs=jobs)
        assert h.kernel == "mini-batch plain SGD (float32)"  # what each model ran
        runs.append((ens.params.copy(), h.loss.copy()))
    assert runs[0][0].dtype == np.float32
    for params, loss in runs[1:]:
        assert params.tobytes() == runs[0][0].tobytes()
        assert loss.tobytes() == runs[0][1].tobytes()


def test_float64_data_into_a_float32_model_is_converted_once_not_modified(make_problem):
    """float64 data train a float32 model exactly as the same data given in float32 (the
    conversion happens once, before the loop), and the caller's arrays are left as
    they were."""
    X, y, _, _ = make_problem([3, 5, 1], n=30, seed=9)
    X0, y0 = X.copy(), y.copy()
    params = []
    for Xi, yi in ((X, y), (X.astype(np.float32), y.astype(np.float32))):
        m = fastbp.MLP([3, 5, 1], activation="sigmoid", loss="mse", seed=2, dtype="float32")
        m.fit(Xi, yi, epochs=15, lr=0.2, batch_size=7)
        params.append(m.params.copy())
    assert params[0].tobytes() == params[1].tobytes()
    assert X.dtype == np.float64 and np.array_equal(X, X0) and np.array_equal(y, y0)


@pytest.mark.parametrize("n", [13, 9])
def test_float32_lanes_across_models_equal_each_model_alone(n, monkeypatch):
    """The lanes (SIMD across models, kernels/lanes.py) sum in rules.dot4's float32 order:
    eight chains folded to four, the tail, (l0 + l1) + (l2 + l3).  n = 13 has one
    vector of chains and a tail; 9 a tail of one."""
    rng = np.random.default_rng(n)
    X = rng.uniform(size=(n, 2))
    y = (X[:, :1] > X[:, 1:]).astype(float)
    ens = fastbp.Ensemble([2, 4, 4, 1], 17, "sigmoid", loss="mse", init="xavier", seed=5,
                          dtype="float32")
    lrs = np.linspace(0.05, 0.5, 17)
    hist = ens.fit(X, y, epochs=40, lr=lrs, record_every=2, n_jobs=1)
    assert "lanes" in hist.kernel
    for m in range(17):
        one = fastbp.MLP([2, 4, 4, 1], "sigmoid", loss="mse", init="xavier",
                         seed=ens.seeds[m], dtype="float32")
        h = one.fit(X, y, epochs=40, lr=lrs[m], record_every=2)
        assert one.params.tobytes() == ens.params[m].tobytes()
        assert h.loss.tobytes() == hist.loss[m].tobytes()


@pytest.mark.parametrize("which", ["weights", "biases"])
def test_from_weights_refuses_values_too_large_for_float32(which):
    """As the params setter and init do: 1e39 has no float32 value (it was stored as inf,
    with only numpy's overflow warning, and fit then blamed "params, weights or biases")."""
    w = [np.full((2, 3), 0.5), np.full((3, 1), 0.5)]
    b = [np.zeros(3), np.zeros(1)]
    (w if which == "weights" else b)[1][0] = 1e39
    with pytest.raises(ValueError, match=rf"{which}\[1\] has values too large for float32"):
        fastbp.MLP.from_weights(w, b, dtype="float32")
    m = fastbp.MLP.from_weights(w, b, dtype="float64")  # fine in float64
    assert np.isfinite(m.params).all()


# fit settings float32 cannot hold as meant: what they round to, and fit's keywords
_ROUNDED_SETTINGS = [
    ("0", dict(lr=1e-50)), ("infinity", dict(lr=1e39)),
    ("0", dict(l2=1e-50)), ("infinity", dict(l2=1e39)),
    ("0", dict(optimizer="adam", eps=1e-50)), ("infinity", dict(optimizer="adam", eps=1e39)),
    ("1", dict(optimizer="adam", beta1=1 - 1e-9)), ("1", dict(optimizer="adam", beta2=1 - 2e-8)),
    ("1", dict(momentum=1 - 1e-9)), ("1", dict(momentum=1 - 2e-8, nesterov=True)),
]


@pytest.mark.parametrize("rounds_to, settings", _ROUNDED_SETTINGS)
def test_fit_refuses_settings_that_float32_rounds_away(rounds_to, settings):
    """A float32 model steps with its settings rounded to float32: a learning rate or L2
    factor that becomes 0 would train silently on nothing (or not decay), eps 0 divides
    by zero (a DivergenceError blaming lr), a momentum or beta of 1 never decays.  They
    are refused, naming the setting and the dtype, before anything changes; in float64
    the same settings train, and so does the nearest value float32 holds."""
    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 1))
    kw = dict(dict(lr=1e-3), **settings)
    name = [k for k in settings if k not in ("optimizer", "nesterov")][0]
    m = fastbp.MLP([3, 4, 1], activation=["tanh", "identity"], dtype="float32", seed=0)
    before = m.params.copy()
    said = "rounds to 0" if rounds_to == "0" else "rounds to 1" if rounds_to == "1" else \
        r"is too large for float32, the model's dtype \(it rounds to infinity\)"
    with pytest.raises(ValueError, match=rf"^{name}=\S+ {said}"):
        m.fit(X, y, epochs=2, **kw)
    np.testing.assert_array_equal(m.params, before)
    if rounds_to == "infinity":
        return  # (in float64 as large a step diverges too)
    m64 = fastbp.MLP([3, 4, 1], activation=["tanh", "identity"], seed=0)
    m64.fit(X, y, epochs=2, **kw)
    assert np.isfinite(m64.params).all() and not np.array_equal(m64.params, before)
    nearest = 2.0 ** -149 if rounds_to == "0" else 1 - 2.0 ** -24
    m.fit(X, y, epochs=2, **dict(kw, **{name: nearest}))  # accepted


def test_ensemble_refuses_a_learning_rate_that_float32_rounds_to_0():
    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 1))
    ens = fastbp.Ensemble([3, 4, 1], 2, dtype="float32", seed=0)
    before = ens.params.copy()
    with pytest.raises(ValueError, match="lr=1e-50 rounds to 0 in float32"):
        ens.fit(X, y, epochs=2, lr=[0.1, 1e-50])
    np.testing.assert_array_equal(ens.params, before)
    fastbp.Ensemble([3, 4, 1], 2, seed=0).fit(X, y, epochs=2, lr=[0.1, 1e-50])  # float64


@pytest.mark.parametrize("x", [1e10, 1.6e9])
@pytest.mark.parametrize("batch_size", [None, 2, 1])
def test_adams_second_moment_overflowing_float32_is_a_divergence(batch_size, x):
    """Squared gradients past float32's 3.4e38 made Adam's v infinite while the weights
    stayed finite: every later step was m / sqrt(inf) = 0, a silently frozen model.  The
    guard treats it as a divergence: DivergenceError, and the model keeps the last state
    whose v was finite.  float64 holds such squares and keeps learning.  x = 1.6e9:
    the gradients (2.6e19 to 1e20) square past 3.4e38, but (1 - beta2) g^2, v itself,
    stays finite in float32; the corrected v c2 (~g^2) does not, and would freeze the
    weight just the same (rules.adam_step stores it as v)."""
    X, y = np.full((4, 1), x), np.zeros(4)

    def model(dtype):
        return fastbp.MLP.from_weights([np.array([[10.0]])], [np.array([0.0])],
                                       activation="identity", loss="sse", dtype=dtype)

    m = model("float32")
    with pytest.raises(fastbp.DivergenceError, match="Adam's second moment") as info:
        m.fit(X, y, epochs=5, lr=0.1, optimizer="adam", batch_size=batch_size)
    assert info.value.epoch == 0
    assert np.isfinite(m.params).all() and np.isfinite(m.optimizer_state["v"]).all()
    assert m.weights[0][0, 0] == np.float32(10.0)  # the state before the bad epoch
    wide = model("float64")
    h = wide.fit(X, y, epochs=5, lr=0.1, optimizer="adam", batch_size=batch_size)
    assert h.stopped is None and np.all(np.diff(h.loss) < 0)


@njit(error_model="numpy")
def _stateful_step(params, moments, i, g, lr, rule, c1, c2, decay):
    Rules.stateful_step(params, moments, i, g, lr, rule, c1, c2, decay)


@njit(error_model="numpy")
def _stateful_update(params, grad, lr, net, rule, state, l2_scale):
    stateful_update(params, grad, lr, net, rule, state, l2_scale)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
@pytest.mark.parametrize("bias", [True, False])
def test_stateful_update_with_l2_is_each_parameters_step(dtype, optimizer, bias):
    """loops.stateful_update with L2 folds each weight's decay into its gradient, then
    steps every parameter in one loop (a loop LLVM vectorizes): the same bits as
    rules.stateful_step parameter by parameter, the decay (times l2_scale) on the weights
    only -- not on the biases, whose steps would differ (the check can fail)."""
    from fastbp._layout import Layout
    from fastbp.kernels import options as O
    t = np.dtype(dtype).type
    layout = Layout((3, 5, 4, 2), bias)
    sizes, w_off, b_off, pos = layout.sizes_arr, layout.w_off, layout.b_off, layout.n_params
    net = O.Net(sizes, w_off, b_off, np.zeros(3, np.int64), 0, -1, 0, 0, 0, 0)
    l2, l2_scale = 0.05, 1.5
    rule = O.as_compiled(O.Rule(Rules.ADAM if optimizer == "adam" else Rules.SGD, 0.01, 0.9,
                                False, 0.9, 0.999, 1e-8, l2, Rules.CONSTANT, 0.5, 1, 0.5,
                                0.0, 1, False, 0.0))
    rng = np.random.default_rng(3)
    params = rng.normal(size=pos).astype(dtype)
    grad = rng.normal(size=pos).astype(dtype)
    moments = (np.abs(rng.normal(size=(2, pos))) * 0.1).astype(dtype)
    state = O.State(np.zeros(2, np.int64), moments.copy(), np.array([4]), np.zeros(1),
                    np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(0, dtype))
    got = params.copy()
    _stateful_update(got, grad.copy(), t(0.01), net, rule, state, l2_scale)
    want, want_moments = params.copy(), moments.copy()
    c1, c2 = Rules.adam_scales.py_func(0.9, 0.999, 5) if optimizer == "adam" else (1.0, 1.0)
    weight = np.zeros(pos, bool)
    for l in range(len(sizes) - 1):
        weight[w_off[l]:w_off[l] + sizes[l] * sizes[l + 1]] = True
    for i in range(pos):
        _stateful_step(want, want_moments, i, grad[i], t(0.01), rule, c1, c2,
                       l2 * l2_scale if weight[i] else 0.0)
    assert state.step[0] == 5
    assert got.tobytes() == want.tobytes()
    assert state.moments.tobytes() == want_moments.tobytes()
    if bias:  # the biases' steps without decay: a decayed one would differ
        decayed, m, i = params.copy(), moments.copy(), b_off[0]
        _stateful_step(decayed, m, i, grad[i], t(0.01), rule, c1, c2, l2 * l2_scale)
        assert decayed[i] != got[i]


def _reference_step(p, g, m, v, lr, rule, c1, c2, decay, wide):
    """The stateful step spelled out in numpy scalars: in float32 with the rule's factors
    rounded to float32 (1 - beta in float64 first), or (``wide``) in float64 from the
    float32 values, rounded once at the end, as before."""
    t = np.float64 if wide else np.float32
    f = lambda value: t(value)  # noqa: E731
    p, g, m, v = t(p), t(g), t(m), t(v)
    if decay:
        g = g + f(decay) * p
    if rule.optimizer == Rules.ADAM:
        m = f(rule.beta1) * m + f(1.0 - rule.beta1) * g
        v = f(rule.beta2) * v + f(1.0 - rule.beta2) * g * g
        p = p - f(lr) * (m * f(c1)) / (t(np.sqrt(v * f(c2))) + f(rule.eps))
    else:
        m = f(rule.momentum) * m - f(lr) * g
        p = p + (f(rule.momentum) * m - f(lr) * g if rule.nesterov else m)
    return tuple(np.float32(value) for value in (p, m, v))


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "nesterov"])
def test_float32_stateful_steps_compute_in_float32(optimizer):
    """A float32 model's momentum, Nesterov and Adam steps (and their L2 decay) compute in
    float32, the rule's factors rounded to float32 -- nothing widened to float64 inside
    the loop: the compiled step equals the float32 order spelled out, bit for bit, and in
    some of these cases differs from the step computed in float64 and rounded once (the
    order before: the check could fail)."""
    from fastbp.kernels import options as O
    rule = O.as_compiled(O.Rule(Rules.ADAM if optimizer == "adam" else Rules.SGD, 0.01, 0.9,
                                optimizer == "nesterov", 0.9, 0.999, 1e-8, 0.0,
                                Rules.CONSTANT, 0.5, 1, 0.5, 0.0, 1, False, 0.0))
    rng = np.random.default_rng(8)
    differ = 0
    for _ in range(200):
        params = rng.normal(size=3).astype(np.float32)
        moments = np.abs(rng.normal(size=(2, 3))).astype(np.float32) * np.float32(0.1)
        g = np.float32(rng.normal())
        lr = np.float32(10.0 ** rng.uniform(-3, -1))
        c1, c2 = Rules.adam_scales.py_func(0.9, 0.999, int(rng.integers(1, 50)))
        decay = float(rng.choice([0.0, 1e-2]))
        before = (params[1], g, moments[0, 1], moments[1, 1])
        _stateful_step(params, moments, 1, g, lr, rule, c1, c2, decay)
        got = (params[1], moments[0, 1], moments[1, 1])
        want = _reference_step(*before, lr, rule, c1, c2, decay, wide=False)
        assert [v.tobytes() for v in got] == [v.tobytes() for v in want[:3]], (got, want)
        wide = _reference_step(*before, lr, rule, c1, c2, decay, wide=True)
        differ += got[0] != wide[0] or got[1] != wide[1]
    assert differ > 0
