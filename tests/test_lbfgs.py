"""MLP.fit(optimizer="lbfgs"): SciPy's L-BFGS-B over the compiled loss and gradient.

Against scikit-learn's lbfgs from the same initial weights: equal to 1e-10 for the first
iterations.  Beyond ~20 iterations the two part by rounding (their losses and gradients
agree to ~1e-16 at every point, tests/test_sklearn.py: test_lbfgs_loss_grad_equals_
sklearns; L-BFGS amplifies such differences by ~10x every two iterations on XOR),
so the comparisons stop at 10.
"""
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("scipy")

import fastbp  # noqa: E402
from fastbp import _lbfgs  # noqa: E402

ITERATIONS = 10  # see the module notes
TOL = 1e-10


def _xor():
    X, y = fastbp.datasets.xor_easy()
    return X, y.ravel()


def _admissions():
    a = fastbp.datasets.admissions()  # the 40-row excerpt shipped with fastbp
    return a.X_train, a.y_train.ravel()


DATA = {"xor": _xor, "admissions": _admissions}
SK_ACT = {"sigmoid": "logistic", "tanh": "tanh", "relu": "relu"}


def _glorot(seed, sizes, activation):
    """scikit-learn's initial weights (_init_coef): Glorot uniform from RandomState(seed),
    each layer's weights then its biases."""
    rs = np.random.RandomState(seed)
    factor = 2.0 if activation == "sigmoid" else 6.0
    ws, bs = [], []
    for a, b in zip(sizes[:-1], sizes[1:]):
        bound = np.sqrt(factor / (a + b))
        ws.append(rs.uniform(-bound, bound, (a, b)))
        bs.append(rs.uniform(-bound, bound, b))
    return ws, bs


def _pair(data, task, activation, alpha=1e-3, seed=1, hidden=(6,), max_iter=ITERATIONS):
    """(scikit-learn estimator fitted by lbfgs, fastbp model from the same weights, X, y,
    History of its lbfgs fit with the same objective)."""
    from sklearn import neural_network as skn
    X, y = DATA[data]()
    sizes = [X.shape[1], *hidden, 1]
    ws, bs = _glorot(seed, sizes, activation)
    cls = skn.MLPClassifier if task == "classifier" else skn.MLPRegressor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter reached
        sk = cls(solver="lbfgs", hidden_layer_sizes=hidden, activation=SK_ACT[activation],
                 alpha=alpha, max_iter=max_iter, tol=0.0, random_state=seed).fit(X, y)
    out, loss = ("sigmoid", "bce") if task == "classifier" else ("identity", "half_mse")
    m = fastbp.MLP.from_weights(ws, bs, activation=[activation] * len(hidden) + [out],
                                loss=loss)
    # scikit-learn's L2 term alpha / (2 n) sum ||W||^2 is fastbp's l2 / 2 sum ||W||^2
    hist = m.fit(X, y, optimizer="lbfgs", epochs=max_iter, tol=0.0, l2=alpha / len(y))
    return sk, m, X, y, hist


def _max_diff(sk, m):
    return max(np.abs(a - b).max() for a, b in zip(sk.coefs_ + sk.intercepts_,
                                                   m.weights + m.biases))


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("task", ["classifier", "regressor"])
@pytest.mark.parametrize("data", ["xor", "admissions"])
def test_lbfgs_equals_sklearn_from_the_same_weights(data, task, activation):
    pytest.importorskip("sklearn")
    sk, m, _, _, hist = _pair(data, task, activation)
    assert hist.epochs == sk.n_iter_ == ITERATIONS
    assert _max_diff(sk, m) <= TOL
    assert hist.loss[-1] == pytest.approx(sk.loss_, rel=TOL)


def test_sample_weight_and_l2_are_sklearns():
    """scikit-learn: sum(w loss) / sum(w) + alpha / (2 sum(w)) ||W||^2.  fastbp's weighted
    loss is sum(w loss) / n: weights rescaled to mean 1 give the first term."""
    pytest.importorskip("sklearn")
    from sklearn import neural_network as skn
    X, y = _admissions()
    w = np.random.default_rng(3).uniform(0.2, 3.0, len(y))
    alpha, seed = 0.05, 2
    ws, bs = _glorot(seed, [X.shape[1], 5, 1], "tanh")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = skn.MLPClassifier(solver="lbfgs", hidden_layer_sizes=(5,), activation="tanh",
                               alpha=alpha, max_iter=ITERATIONS, tol=0.0,
                               random_state=seed).fit(X, y, sample_weight=w)
    m = fastbp.MLP.from_weights(ws, bs, activation=["tanh", "sigmoid"], loss="bce")
    hist = m.fit(X, y, optimizer="lbfgs", epochs=ITERATIONS, tol=0.0, l2=alpha / w.sum(),
                 sample_weight=w / w.mean())
    assert hist.epochs == sk.n_iter_
    assert _max_diff(sk, m) <= TOL
    assert hist.loss[-1] == pytest.approx(sk.loss_, rel=TOL)


def _model(seed=0, **kw):
    return fastbp.MLP([2, 5, 1], activation=["tanh", "sigmoid"], loss="bce",
                      init="xavier", seed=seed, **kw)


def test_history_has_the_loss_after_each_iteration():
    X, y = _xor()
    m = _model()
    l2 = 1e-3
    hist = m.fit(X, y, optimizer="lbfgs", epochs=25, tol=0.0, l2=l2)
    assert hist.epochs == len(hist.loss) == 25 and hist.stopped is None
    assert hist.extra["optimizer"] == "lbfgs" and hist.extra["nfev"] >= 25
    penalty = 0.5 * l2 * sum(float((w ** 2).sum()) for w in m.weights)
    assert hist.loss[-1] == pytest.approx(m.loss(X, y) + penalty, rel=1e-12)
    # each accepted step satisfies the line search's sufficient decrease
    assert np.all(np.diff(hist.loss) < 0)
    assert np.array_equal(hist.epochs_recorded, np.arange(25))


def test_why_it_stopped():
    X, y = _xor()
    hist = _model().fit(X, y, optimizer="lbfgs", epochs=5, tol=0.0)
    assert (hist.stopped, hist.epochs, hist.extra["status"]) == (None, 5, 1)
    hist = _model().fit(X, y, optimizer="lbfgs", epochs=1000, tol=1e-2)
    assert hist.stopped == "converged" and hist.epochs < 1000
    assert "CONVERGENCE" in hist.extra["message"]
    hist = _model().fit(X, y, optimizer="lbfgs", epochs=1000, tol=0.0, max_fun=4)
    assert hist.stopped == "max_fun" and hist.extra["nfev"] > 4 and hist.epochs < 1000


def test_a_second_fit_continues_and_forgets_sgd_state():
    X, y = _xor()
    m = _model()
    m.fit(X, y, epochs=5, lr=0.1, momentum=0.9)
    assert np.abs(m.optimizer_state["velocity"]).max() > 0
    first = m.fit(X, y, optimizer="lbfgs", epochs=3, tol=0.0)
    assert m.optimizer_state["optimizer"] is None  # momentum meant other parameters
    second = m.fit(X, y, optimizer="lbfgs", epochs=3, tol=0.0)
    assert second.loss[0] < first.loss[-1]


def test_float32_model_stays_float32():
    X, y = _xor()
    m64, m32 = _model(), _model(dtype="float32")
    h64 = m64.fit(X, y, optimizer="lbfgs", epochs=8, tol=0.0)
    h32 = m32.fit(X, y, optimizer="lbfgs", epochs=8, tol=0.0)
    assert m32.params.dtype == np.float32 and h32.epochs == 8
    np.testing.assert_allclose(h32.loss, h64.loss, rtol=1e-4)


@pytest.mark.parametrize("name, value", [
    ("lr", 0.1), ("batch_size", 4), ("shuffle", True), ("seed", 3), ("record_every", 2),
    ("momentum", 0.9), ("nesterov", True), ("beta1", 0.8), ("schedule", "step"),
    ("power_t", 0.25), ("validation_fraction", 0.25), ("patience", 2),
    ("restore_best", True), ("callbacks", print), ("callbacks", [print]),
    ("checkpoint", "run.npz"),
    ("chunk_seconds", 1.0), ("epoch_loss", "sample_mean"), ("on_divergence", "explode"),
])
def test_options_that_do_not_apply_are_refused(name, value, tmp_path):
    X, y = _xor()
    m = _model()
    p0 = m.params.copy()
    match = "on_divergence" if name == "on_divergence" else \
        rf"{name}=.*does not apply to optimizer='lbfgs'"
    with pytest.raises(ValueError, match=match):
        m.fit(X, y, optimizer="lbfgs", epochs=3, **{name: value})
    np.testing.assert_array_equal(m.params, p0)


def test_defaults_given_explicitly_are_accepted():
    X, y = _xor()
    hist = _model().fit(X, y, optimizer="lbfgs", epochs=3, lr=0.01, batch_size=None,
                        shuffle=False, momentum=0.0, schedule="constant", record_every=1)
    assert hist.epochs == 3


@pytest.mark.parametrize("none", [[], ()])
def test_an_empty_list_of_callbacks_is_no_callback(none):
    # as MLP.fit reads it for sgd and adam
    X, y = _xor()
    m, ref = _model(), _model()
    hist = m.fit(X, y, optimizer="lbfgs", epochs=3, callbacks=none)
    ref.fit(X, y, optimizer="lbfgs", epochs=3)
    assert hist.epochs == 3
    np.testing.assert_array_equal(m.params, ref.params)


@pytest.mark.parametrize("kw, match", [
    (dict(optimizer="sgd", tol=1e-3), "tol and max_fun apply to optimizer='lbfgs' only"),
    (dict(optimizer="adam", max_fun=10), "tol and max_fun apply to optimizer='lbfgs'"),
    (dict(optimizer="lbfgs", tol=-1.0), r"tol must be a finite number >= 0, got -1.0"),
    (dict(optimizer="lbfgs", max_fun=0), "max_fun must be >= 1"),
    (dict(optimizer="lbfgs", l2=-0.5), "l2 must be >= 0"),
    (dict(optimizer="newton"), "optimizer must be 'sgd', 'adam' or 'lbfgs', got 'newton'"),
])
def test_bad_values_are_named(kw, match):
    X, y = _xor()
    with pytest.raises(ValueError, match=match):
        _model().fit(X, y, epochs=3, **kw)


@pytest.mark.parametrize("tol", ["1", [0.1], 1j])
def test_a_tol_that_is_not_a_number_is_a_type_error(tol):
    X, y = _xor()
    with pytest.raises(TypeError, match="tol must be a finite number >= 0"):
        _model().fit(X, y, optimizer="lbfgs", epochs=3, tol=tol)


def test_loss_not_finite_at_the_start_blames_huge_data():
    X, y = _xor()
    m = fastbp.MLP([2, 5, 1], activation="identity", loss="mse", init="xavier", seed=0)
    p0 = m.params.copy()
    with pytest.raises(fastbp.DivergenceError, match=r"cannot start.*data \(max \|X\| = "
                                                     r"1e\+300.*too large for float64") as e:
        m.fit(X * 1e300, y, optimizer="lbfgs", epochs=5)
    assert e.value.history.epochs == 0 and e.value.history.stopped == "diverged"
    np.testing.assert_array_equal(m.params, p0)
    with pytest.warns(RuntimeWarning, match="cannot start"):
        hist = m.fit(X * 1e300, y, optimizer="lbfgs", epochs=5, on_divergence="warn")
    assert hist.stopped == "diverged" and hist.epochs == 0


def test_loss_not_finite_at_the_start_with_moderate_data_blames_the_parameters():
    X, y = _xor()
    m = fastbp.MLP([2, 5, 1], activation="identity", loss="mse", init=1e200)
    with pytest.raises(fastbp.DivergenceError, match="likely cause: the starting "
                                                     "parameters") as e:
        m.fit(X, y, optimizer="lbfgs", epochs=5)
    assert "too large for float64" not in str(e.value)


def test_ctrl_c_keeps_the_last_iterate(monkeypatch):
    X, y = _xor()
    reference = _model()
    real = _lbfgs.Objective.__call__
    calls = []

    def interrupted(self, x):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(_lbfgs.Objective, "__call__", interrupted)
    m = _model()
    with pytest.warns(RuntimeWarning, match="interrupted"):
        hist = m.fit(X, y, optimizer="lbfgs", epochs=50, tol=0.0)
    monkeypatch.setattr(_lbfgs.Objective, "__call__", real)
    assert hist.stopped == "interrupted" and 0 < hist.epochs < 50
    ref = reference.fit(X, y, optimizer="lbfgs", epochs=hist.epochs, tol=0.0)
    np.testing.assert_array_equal(m.params, reference.params)
    np.testing.assert_array_equal(hist.loss, ref.loss)


@pytest.mark.parametrize("interrupted", ["Objective", "scipy_minimize"],
                         ids=["compiling", "importing scipy"])
def test_ctrl_c_before_the_first_iteration_returns_no_iteration(monkeypatch, interrupted):
    """Ctrl-C while a first fit imports scipy.optimize or builds the objective (compiling
    its kernels): seconds in which it ended the fit with a bare KeyboardInterrupt.  It is
    an interruption like any other: no iteration, the parameters as given, the warning."""
    X, y = _xor()

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_lbfgs, interrupted, ctrl_c)
    m = _model()
    before = m.params.copy()
    with pytest.warns(RuntimeWarning, match="interrupted.*after 0 of 50"):
        hist = m.fit(X, y, optimizer="lbfgs", epochs=50)
    assert hist.stopped == "interrupted" and hist.epochs == 0 and len(hist.loss) == 0
    np.testing.assert_array_equal(m.params, before)


@pytest.mark.skipif(_lbfgs._scipy_version() < (1, 15),
                    reason="the direct loop needs SciPy >= 1.15")
@pytest.mark.parametrize("max_iter, max_fun, tol", [
    (60, 15000, 0.0), (300, 15000, 1e-4), (300, 6, 0.0), (2000, 15000, 1e-9)])
def test_direct_loop_is_scipy_minimize_bit_for_bit(max_iter, max_fun, tol):
    X, y = _admissions()
    m = fastbp.MLP([6, 7, 1], activation=["relu", "sigmoid"], loss="bce", init="xavier",
                   seed=4)
    xt, yt = m._inputs(X), m._targets(y, len(y))
    sw = m.params[:0]
    runs = []
    for via in (False, True):
        seen = []
        res = _lbfgs.minimize(_lbfgs.Objective(m, xt, yt, sw, l2=1e-3), m.params, max_iter,
                              max_fun, tol, lambda x, f: seen.append((x.copy(), f)),
                              via_scipy_minimize=via)
        runs.append((res, seen))
    (a, seen_a), (b, seen_b) = runs
    assert np.array_equal(a.x, b.x) and a.fun == b.fun
    assert (a.nit, a.nfev, a.status, a.message) == (b.nit, b.nfev, b.status, b.message)
    assert len(seen_a) == len(seen_b) == a.nit
    assert all(np.array_equal(u[0], v[0]) and u[1] == v[1] for u, v in zip(seen_a, seen_b))


def test_missing_scipy_says_how_to_get_it():
    code = ("import sys; sys.modules['scipy'] = None\n"
            "import numpy as np, fastbp\n"
            "m = fastbp.MLP([2, 3, 1])\n"
            "try:\n"
            "    m.fit(np.zeros((4, 2)), np.zeros(4), optimizer='lbfgs')\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert 'pip install "fastbp[lbfgs]"' in out


@pytest.mark.parametrize("sparse", [False, True])
def test_evaluations_after_the_first_reuse_the_data_with_the_same_bits(sparse):
    # the Objective leaves the inputs and targets in its work after its first call
    # (loops.loss_and_gradient's ``gathered``): every later evaluation must equal one
    # that copies them in afresh, at any point
    scipy_sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(7)
    X = rng.normal(size=(120, 6)) * (rng.random((120, 6)) < 0.4)
    y = np.eye(3)[rng.integers(0, 3, size=120)]
    m = fastbp.MLP([6, 20, 3], activation=["relu", "softmax"], loss="cross_entropy", seed=1)
    xt = m._inputs(scipy_sparse.csr_matrix(X) if sparse else X)
    yt = m._targets(y, 120)
    objective = _lbfgs.Objective(m, xt, yt, np.zeros(0), l2=0.01)
    for _ in range(4):
        p = m.params + rng.normal(scale=0.1, size=m.params.shape)
        f, g = objective(p)
        fresh = fastbp.MLP([6, 20, 3], activation=["relu", "softmax"], loss="cross_entropy")
        fresh.params = p
        want, grad = fresh._kernel_loss_and_grad(xt, yt, np.zeros(0))
        w = p * objective.mask
        assert f == want + 0.5 * 0.01 * float(np.dot(w, w))
        np.testing.assert_array_equal(g, grad + 0.01 * w)


def test_the_entry_is_compiled_before_the_iterations_and_timed_apart(monkeypatch):
    """A first L-BFGS fit compiled its loss-and-gradient entry at the first evaluation,
    inside the iterations' time (History.seconds), with compile_seconds 0 and no kernel
    named; the Objective now compiles it for the very arguments the evaluations pass."""
    from fastbp import _dispatch as D
    from fastbp.kernels import loops as L
    monkeypatch.setattr(D, "POLICY", "general")  # the general entry, not a generated one
    X, y = _xor()
    m = _model()
    x = m._inputs(X)
    objective = _lbfgs.Objective(m, x, m._targets(y, x.shape[0]), np.zeros(0, m.dtype))
    objective.compile()
    compiled = set(L.loss_and_gradient.overloads)
    objective(m.params.astype(np.float64))
    assert set(L.loss_and_gradient.overloads) == compiled  # nothing compiled in the call
    h = m.fit(X, y, optimizer="lbfgs", epochs=5)
    assert h.kernel == "L-BFGS loss and gradient (float64)"
    assert h.compile_seconds > 0


# narrow networks evaluate on the loss and gradient generated for their architecture
# (kernels/generate.py: evaluator); it must give the general entry's numbers
GENERATED_CASES = {
    "xor_bce": dict(sizes=[2, 4, 4, 1], activation="sigmoid", loss="bce", data="xor"),
    "admissions_relu_weighted": dict(sizes=[6, 8, 1], activation=["relu", "sigmoid"],
                                     loss="bce", data="admissions", weighted=True),
    "regression_float32": dict(sizes=[6, 5, 3, 1], activation=["tanh", "relu", "identity"],
                               loss="half_mse", data="admissions", dtype="float32"),
    "sse_no_bias": dict(sizes=[2, 3, 3, 1], activation="sigmoid", loss="sse", data="xor",
                        bias=False),
}


@pytest.mark.parametrize("case", sorted(GENERATED_CASES))
def test_generated_evaluations_are_the_general_entrys_numbers(case, monkeypatch, tmp_path):
    import hashlib

    from fastbp import _dispatch as D
    spec = dict(GENERATED_CASES[case])
    X, y = DATA[spec.pop("data")]()
    weighted = spec.pop("weighted", False)
    sw = np.random.default_rng(3).uniform(0.2, 2.0, size=len(y)) if weighted else None
    # markers in a folder of this test's: the generated kernel is not announced as
    # compiled to the other tests' dispatcher
    monkeypatch.setattr(D, "_loaded", set())
    monkeypatch.setattr(D, "_on_disk", set())
    monkeypatch.setattr(D, "_absent", {})
    monkeypatch.setattr(D, "_marker", lambda key: str(
        tmp_path / hashlib.sha256(repr(key).encode()).hexdigest()))
    results = {}
    for policy in ("general", "fastest"):
        monkeypatch.setattr(D, "POLICY", policy)
        m = fastbp.MLP(spec["sizes"], activation=spec["activation"], loss=spec["loss"],
                       bias=spec.get("bias", True), dtype=spec.get("dtype", "float64"),
                       seed=5)
        h = m.fit(X, y, optimizer="lbfgs", epochs=25, tol=0.0, l2=1e-3, sample_weight=sw)
        results[policy] = (m.params.copy(), np.asarray(h.loss), h.kernel)
    general, generated = results["general"], results["fastest"]
    assert "generated for" not in general[2]
    assert generated[2].endswith(f", generated for {'-'.join(map(str, spec['sizes']))})")
    assert len(general[1]) >= 10  # iterations (SciPy may converge before 25)
    np.testing.assert_array_equal(generated[0], general[0])
    np.testing.assert_array_equal(generated[1], general[1])


def test_records_are_bounded_as_a_fits_are():
    """An L-BFGS run keeps at most the History's cap of records, thinned to every
    stride-th iteration as history.Records thins an epoch loop's (memory bounded
    whatever max_iter); the last loss is kept apart."""
    run = _lbfgs.Run(cap=8)
    for i in range(100):
        run.record(float(i))
    hist = run.history()
    assert run.iterations == hist.epochs == 100 and run.last_loss == 99.0
    assert hist.stride == 16 and 4 <= len(hist) <= 8
    np.testing.assert_array_equal(hist.loss, np.arange(0, 100, 16, dtype=float))
    np.testing.assert_array_equal(hist.epochs_recorded, np.arange(0, 100, 16))
    short = _lbfgs.Run(cap=8)
    for i in range(8):
        short.record(float(i))
    assert short.history().stride == 1 and len(short.history()) == 8


def test_scipys_blas_runs_on_one_thread_while_a_fit_runs_on_threads(monkeypatch):
    """L-BFGS-B does its vector arithmetic through SciPy's OpenBLAS, whose threads, once
    woken, spin on the CPUs the fit's own threads use: while a fit runs on threads,
    SciPy's OpenBLAS runs on one (and it is put back after); a fit on one thread leaves
    it alone."""
    from fastbp import _dispatch, _threads
    from fastbp.kernels import pool
    threads = _lbfgs._scipy_openblas()
    if threads is None or threads[0]() < 2 or _threads.available() < 2 or not pool.AVAILABLE:
        pytest.skip("SciPy's bundled OpenBLAS runs on one thread here (or is not there)")
    # the threads' units are compiled for this short fit too (else their compile time
    # would have to pay first: a fresh cache runs it on one thread)
    monkeypatch.setattr(_dispatch, "POLICY", "fastest")
    before = threads[0]()
    seen = []
    real_call = _lbfgs.Objective.__call__

    def spy(self, x):
        seen.append((self.threads, threads[0]()))
        return real_call(self, x)

    monkeypatch.setattr(_lbfgs.Objective, "__call__", spy)
    rng = np.random.default_rng(0)
    # products of 4096 x 64 x 64 multiply-adds: shared (fastbp/_dispatch.py)
    X, Y = rng.standard_normal((4096, 32)), rng.random((4096, 10))
    for n_jobs in (2, 1):
        seen.clear()
        m = fastbp.MLP([32, 64, 64, 10], seed=0)
        m.fit(X, Y, optimizer="lbfgs", epochs=3, tol=0.0, n_jobs=n_jobs)
        assert seen and {t for t, _ in seen} == {n_jobs}, seen
        assert {b for _, b in seen} == ({1} if n_jobs > 1 else {before}), seen
        assert threads[0]() == before
