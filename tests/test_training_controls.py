"""Training controls: optimizers, L2, learning-rate schedules, softmax +
cross_entropy, validation and early stopping, sample weights, callbacks, bad arguments.

Trajectories are compared with tests/reference.py (plain numpy, float64) at 1e-9
relative over hundreds of updates, with PyTorch (when installed) and with
scikit-learn's MLPRegressor(solver="sgd") given identical initial weights.
The contract is docs/API-NOTES.md, "Training controls".
"""

import warnings

import numpy as np
import pytest

import fastbp
import reference as R

RTOL = 1e-9


# ------------------------------------------------------------------------ helpers


def assert_close(actual, desired, rtol=RTOL, what="values"):
    """Elementwise relative tolerance, with an absolute floor of rtol * max|desired|
    (elements near zero carry the rounding of their larger neighbours)."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, (what, actual.shape, desired.shape)
    np.testing.assert_allclose(actual, desired, rtol=rtol,
                               atol=rtol * np.max(np.abs(desired)), err_msg=what)


def assert_bit_identical(a, b, what="values"):
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert np.array_equal(a, b, equal_nan=True), (
        f"{what} differ: max |diff| = {np.nanmax(np.abs(a - b))}")


def rel_err(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def problem(sizes, n, loss="mse", bias=True, seed=0, scale=1.0):
    """(X, y, weights, biases) float64; y are class labels (n,) for cross_entropy."""
    r = np.random.default_rng(seed)
    X = r.normal(0.0, 1.0, size=(n, sizes[0]))
    k = sizes[-1]
    if loss == "cross_entropy":
        y = r.integers(0, k, size=n)
    elif loss == "bce":
        y = r.uniform(0.05, 0.95, size=(n, k))
    elif loss == "poisson":  # counts, zeros among them
        y = r.poisson(1.5, size=(n, k)).astype(np.float64)
    else:
        y = r.normal(0.0, 1.0, size=(n, k))
    weights = [r.normal(0.0, scale / np.sqrt(a), size=(a, b))
               for a, b in zip(sizes[:-1], sizes[1:])]
    biases = [r.normal(0.0, 0.5 * scale, size=b) for b in sizes[1:]] if bias else None
    return X, y, weights, biases


def model_from(weights, biases, acts, loss):
    return fastbp.MLP.from_weights(weights, biases, activation=acts, loss=loss, dtype="float64")


# The architectures shared by most tests (Numba compiles once per dtype, not per shape).
REG = ([3, 6, 2], ["tanh", "identity"], "mse")
SOFT = ([4, 6, 3], ["tanh", "softmax"], "cross_entropy")
POIS = ([3, 5, 2], ["tanh", "exp"], "poisson")

# batch modes: name -> (batch_size, n samples, epochs); ~300 updates each
MODES = {
    "full": (None, 24, 300),
    "minibatch": (8, 26, 80),      # 4 batches per epoch, the last one of 2 samples
    "per_sample": (1, 26, 12),
}

# optimizer configurations: name -> (fit keywords, lr)
OPTIMIZERS = {
    "sgd": ({}, 0.05),
    "sgd-l2": ({"l2": 0.05}, 0.05),
    "momentum": ({"momentum": 0.9}, 0.01),
    "momentum-l2": ({"momentum": 0.8, "l2": 0.02}, 0.01),
    "nesterov": ({"momentum": 0.9, "nesterov": True}, 0.01),
    "nesterov-l2": ({"momentum": 0.7, "nesterov": True, "l2": 0.03}, 0.02),
    "adam": ({"optimizer": "adam"}, 0.01),
    "adam-l2-betas": ({"optimizer": "adam", "beta1": 0.8, "beta2": 0.99, "eps": 1e-6,
                       "l2": 0.02}, 0.005),
}


def fit_and_reference(opt_kw, lr, mode, sizes=None, acts=None, loss=None, bias=True, seed=0,
                      fit_extra=None):
    sizes = REG[0] if sizes is None else sizes
    acts = REG[1] if acts is None else acts
    loss = REG[2] if loss is None else loss
    batch_size, n, epochs = MODES[mode]
    X, y, W, b = problem(sizes, n, loss, bias=bias, seed=seed)
    m = model_from(W, b, acts, loss)
    kw = dict(opt_kw)
    kw.update(fit_extra or {})
    hist = m.fit(X, y, epochs=epochs, lr=lr, batch_size=batch_size, **kw)
    rw, rb, rhist, _ = R.train_controlled(X, y, W, b, acts, loss, epochs, lr,
                                          batch_size=batch_size, **kw)
    return m, hist, R.flatten(rw, rb), rhist


# ------------------------------------------------------- optimizers vs reference


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizer_matches_reference(opt, mode):
    kw, lr = OPTIMIZERS[opt]
    m, hist, theta, rhist = fit_and_reference(kw, lr, mode)
    epochs = MODES[mode][2]
    assert hist.epochs == epochs
    assert hist.loss.shape == (epochs,)
    assert hist.stopped is None
    assert_close(hist.loss, rhist, what=f"{opt}/{mode} history")
    assert_close(m.params, theta, what=f"{opt}/{mode} params")
    assert rhist[-1] < 0.8 * rhist[0]  # not degenerate: it trains


@pytest.mark.parametrize("opt", ["sgd", "momentum-l2", "adam-l2-betas"])
def test_per_sample_optimizers_on_rows_wider_than_the_simd_lanes(opt):
    """Per-sample SGD back-propagates rows of 20 and 37 units in rules.row_dot's lanes
    (fused with the update for the plain rule, then the optimizer's step otherwise)."""
    kw, lr = OPTIMIZERS[opt]
    m, hist, theta, rhist = fit_and_reference(
        kw, lr, "per_sample", sizes=[3, 20, 37, 2], acts=["tanh", "sigmoid", "identity"])
    assert_close(hist.loss, rhist, what=f"{opt} wide per-sample history")
    assert_close(m.params, theta, what=f"{opt} wide per-sample params")
    assert rhist[-1] < 0.9 * rhist[0]


@pytest.mark.parametrize("mode", ["full", "minibatch"])
def test_l2_without_biases_matches_reference(mode):
    kw = {"momentum": 0.9, "nesterov": True, "l2": 0.05}
    m, hist, theta, rhist = fit_and_reference(kw, 0.01, mode, bias=False)
    assert_close(hist.loss, rhist, what="history")
    assert_close(m.params, theta, what="params")


def test_l2_decays_weights_not_biases():
    """Zero inputs and targets equal to the bias: the data gradient is zero, so only the
    L2 term moves anything, and it must move the weight, not the bias."""
    m = fastbp.MLP.from_weights([np.array([[2.0]])], [np.array([0.5])], activation="identity",
                                loss="mse")
    X = np.zeros((4, 1))
    y = np.full(4, 0.5)
    hist = m.fit(X, y, epochs=1, lr=0.1, l2=0.5)
    assert m.weights[0][0, 0] == pytest.approx(2.0 - 0.1 * 0.5 * 2.0, rel=1e-15)
    assert m.biases[0][0] == 0.5
    # recorded loss = data loss (0) + (l2/2) * sum(W**2)
    assert hist.loss[0] == pytest.approx(0.5 * 0.5 * 4.0, rel=1e-15)
    # the model's own loss() is the data loss only
    assert m.loss(X, y) == 0.0


# ------------------------------------------------------- schedules vs reference

SCHEDULES = {
    "constant": {"schedule": "constant"},
    "invscaling": {"schedule": "invscaling", "power_t": 0.3},
    "step": {"schedule": "step", "step_size": 7, "step_factor": 0.7},
    "cosine": {"schedule": "cosine", "lr_min": 0.002},
}


@pytest.mark.parametrize("mode", ["full", "minibatch", "per_sample"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_schedule_matches_reference(schedule, mode):
    m, hist, theta, rhist = fit_and_reference(SCHEDULES[schedule], 0.05, mode)
    assert_close(hist.loss, rhist, what=f"{schedule}/{mode} history")
    assert_close(m.params, theta, what=f"{schedule}/{mode} params")


@pytest.mark.parametrize("schedule,opt", [("cosine", "adam"), ("step", "nesterov-l2"),
                                          ("invscaling", "momentum")])
@pytest.mark.parametrize("mode", ["full", "minibatch"])
def test_schedule_with_optimizer_matches_reference(schedule, opt, mode):
    kw, lr = OPTIMIZERS[opt]
    kw = dict(kw, **SCHEDULES[schedule])
    m, hist, theta, rhist = fit_and_reference(kw, lr, mode)
    assert_close(hist.loss, rhist, what="history")
    assert_close(m.params, theta, what="params")


def test_schedules_differ_from_constant():
    """The schedule keywords are not ignored."""
    base = None
    for name, kw in SCHEDULES.items():
        X, y, W, b = problem(REG[0], 24, REG[2])
        m = model_from(W, b, REG[1], REG[2])
        m.fit(X, y, epochs=20, lr=0.05, **kw)
        if name == "constant":
            base = m.params.copy()
        else:
            assert not np.allclose(m.params, base, rtol=1e-6, atol=0), name


def test_cosine_lr_min_equal_lr_is_constant():
    X, y, W, b = problem(REG[0], 24, REG[2])
    m1 = model_from(W, b, REG[1], REG[2])
    m1.fit(X, y, epochs=30, lr=0.05, schedule="cosine", lr_min=0.05)
    m2 = model_from(W, b, REG[1], REG[2])
    m2.fit(X, y, epochs=30, lr=0.05)
    assert_close(m1.params, m2.params, rtol=1e-13)


def test_schedule_restarts_at_each_fit():
    """The schedule's epoch counts from 0 within each fit: two fits of N/2 at step schedule
    equal the reference run twice (with the optimizer state carried over)."""
    X, y, W, b = problem(REG[0], 24, REG[2])
    kw = {"schedule": "step", "step_size": 5, "step_factor": 0.5, "momentum": 0.5}
    m = model_from(W, b, REG[1], REG[2])
    m.fit(X, y, epochs=20, lr=0.05, **kw)
    m.fit(X, y, epochs=20, lr=0.05, **kw)
    rw, rb, _, st = R.train_controlled(X, y, W, b, REG[1], REG[2], 20, 0.05, **kw)
    rw, rb, _, _ = R.train_controlled(X, y, rw, rb, REG[1], REG[2], 20, 0.05, state=st, **kw)
    assert_close(m.params, R.flatten(rw, rb))


# ------------------------------------------------- optimizer state across fits

CONTINUE = {
    "momentum": {"momentum": 0.9},
    "nesterov-l2": {"momentum": 0.8, "nesterov": True, "l2": 0.01},
    "adam": {"optimizer": "adam"},
    "adam-l2": {"optimizer": "adam", "l2": 0.01, "beta1": 0.85},
}


@pytest.mark.parametrize("batch_size", [None, 5, 1])
@pytest.mark.parametrize("opt", list(CONTINUE))
def test_optimizer_state_continues_across_fits(opt, batch_size):
    kw = CONTINUE[opt]
    X, y, W, b = problem(REG[0], 20, REG[2], seed=3)
    N = 40
    m1 = model_from(W, b, REG[1], REG[2])
    h1 = m1.fit(X, y, epochs=N, lr=0.01, batch_size=batch_size, **kw)
    m2 = model_from(W, b, REG[1], REG[2])
    ha = m2.fit(X, y, epochs=N // 2, lr=0.01, batch_size=batch_size, **kw)
    hb = m2.fit(X, y, epochs=N // 2, lr=0.01, batch_size=batch_size, **kw)
    assert_bit_identical(m2.params, m1.params, "params of fit(N/2) + fit(N/2) vs fit(N)")
    assert_bit_identical(np.concatenate([ha.loss, hb.loss]), h1.loss, "histories")
    # and both equal the reference, whose state carries over the same way
    rw, rb, _, st = R.train_controlled(X, y, W, b, REG[1], REG[2], N // 2, 0.01,
                                       batch_size=batch_size, **kw)
    rw, rb, _, _ = R.train_controlled(X, y, rw, rb, REG[1], REG[2], N // 2, 0.01,
                                      batch_size=batch_size, state=st, **kw)
    assert_close(m2.params, R.flatten(rw, rb))


@pytest.mark.parametrize("opt", ["momentum", "adam"])
def test_reset_optimizer_clears_the_state(opt):
    kw = CONTINUE[opt]
    X, y, W, b = problem(REG[0], 20, REG[2], seed=4)
    m = model_from(W, b, REG[1], REG[2])
    m.fit(X, y, epochs=15, lr=0.01, **kw)
    assert hasattr(m, "optimizer_state")
    mid = [w.copy() for w in m.weights], [c.copy() for c in m.biases]
    cont = model_from(W, b, REG[1], REG[2])
    cont.fit(X, y, epochs=15, lr=0.01, **kw)
    cont.fit(X, y, epochs=15, lr=0.01, **kw)       # state carried over
    m.reset_optimizer()
    m.fit(X, y, epochs=15, lr=0.01, **kw)          # state restarted
    fresh = model_from(mid[0], mid[1], REG[1], REG[2])
    fresh.fit(X, y, epochs=15, lr=0.01, **kw)
    assert_bit_identical(m.params, fresh.params, "after reset_optimizer vs a fresh model")
    assert not np.array_equal(m.params, cont.params)  # the state did matter


def test_reset_optimizer_from_a_callback_keeps_the_state_named_after_its_optimizer():
    """reset_optimizer() in a callback of an Adam fit: the fit goes on from a zero state,
    and the Adam moments it builds stay Adam's.  They were left unnamed (optimizer None),
    so optimizer_state showed m as a "velocity" and a next momentum fit started from it
    instead of from zero."""
    X, y, W, b = problem(REG[0], 20, REG[2], seed=4)
    calls = []

    def reset_once(epoch, history, model):
        calls.append(epoch)
        if len(calls) == 1:
            model.reset_optimizer()

    m = model_from(W, b, REG[1], REG[2])
    m.fit(X, y, epochs=3000, lr=0.01, optimizer="adam", callbacks=[reset_once],
          chunk_seconds=1e-4)
    assert len(calls) >= 2
    state = m.optimizer_state
    assert state["optimizer"] == "adam" and state["step"] == 3000 - calls[0]
    assert np.abs(state["m"]).max() > 0
    mid = [w.copy() for w in m.weights], [c.copy() for c in m.biases]
    m.fit(X, y, epochs=15, lr=0.01, momentum=0.9)  # another optimizer: from zero
    fresh = model_from(mid[0], mid[1], REG[1], REG[2])
    fresh.fit(X, y, epochs=15, lr=0.01, momentum=0.9)
    assert_bit_identical(m.params, fresh.params, "momentum fit after the Adam fit")


# ---------------------------------------------------------------- vs PyTorch


def _torch_run(X, y, weights, biases, acts, epochs, lr, batch_size, make_opt):
    """Train a float64 torch copy of the net with MSELoss (= fastbp "mse"); returns the
    flat parameters in fastbp's layout and the per-epoch mean batch loss."""
    torch = pytest.importorskip("torch")
    tw = [torch.tensor(W, dtype=torch.float64, requires_grad=True) for W in weights]
    tb = [torch.tensor(c, dtype=torch.float64, requires_grad=True) for c in biases]
    opt = make_opt(torch, tw, tb)
    loss_fn = torch.nn.MSELoss()
    Xt = torch.tensor(X, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    n = X.shape[0]
    bs = n if batch_size is None else batch_size
    hist = []
    for _ in range(epochs):
        losses = []
        for start in range(0, n, bs):
            a = Xt[start:start + bs]
            for l, (W, c) in enumerate(zip(tw, tb)):
                a = a @ W + c
                if acts[l] == "tanh":
                    a = torch.tanh(a)
            loss = loss_fn(a, yt[start:start + bs])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        hist.append(np.mean(losses))
    flat = R.flatten([W.detach().numpy() for W in tw], [c.detach().numpy() for c in tb])
    return flat, np.array(hist)


TORCH_CASES = {
    # name: (fastbp keywords, torch optimizer factory(torch, weights, biases), lr)
    "adam": ({"optimizer": "adam"},
             lambda torch, w, b: torch.optim.Adam(w + b, lr=0.01), 0.01),
    "adam-betas-l2": ({"optimizer": "adam", "beta1": 0.8, "beta2": 0.99, "eps": 1e-7,
                       "l2": 0.03},
                      lambda torch, w, b: torch.optim.Adam(
                          [{"params": w, "weight_decay": 0.03}, {"params": b, "weight_decay": 0.0}],
                          lr=0.005, betas=(0.8, 0.99), eps=1e-7), 0.005),
    "momentum": ({"momentum": 0.9},
                 lambda torch, w, b: torch.optim.SGD(w + b, lr=0.01, momentum=0.9), 0.01),
    "nesterov": ({"momentum": 0.9, "nesterov": True},
                 lambda torch, w, b: torch.optim.SGD(w + b, lr=0.01, momentum=0.9,
                                                     nesterov=True), 0.01),
    "nesterov-l2": ({"momentum": 0.7, "nesterov": True, "l2": 0.05},
                    lambda torch, w, b: torch.optim.SGD(
                        [{"params": w, "weight_decay": 0.05}, {"params": b, "weight_decay": 0.0}],
                        lr=0.02, momentum=0.7, nesterov=True), 0.02),
}


@pytest.mark.parametrize("batch_size,epochs", [(None, 100), (8, 34)])
@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_matches_torch(case, batch_size, epochs):
    pytest.importorskip("torch")
    kw, make_opt, lr = TORCH_CASES[case]
    sizes, acts, loss = REG
    X, y, W, b = problem(sizes, 24, loss, seed=5)
    m = model_from(W, b, acts, loss)
    hist = m.fit(X, y, epochs=epochs, lr=lr, batch_size=batch_size, **kw)
    flat, thist = _torch_run(X, y, W, b, acts, epochs, lr, batch_size, make_opt)
    assert_close(m.params, flat, what=f"{case} params vs torch")
    if "l2" not in kw:  # torch's loss has no penalty term
        assert_close(hist.loss, thist, what=f"{case} history vs torch")
    assert thist[-1] < 0.8 * thist[0]


# ------------------------------------------------------------ vs scikit-learn

SKLEARN_CASES = {
    # name: (momentum, nesterovs_momentum, alpha, lr)
    "momentum": (0.9, False, 0.0, 0.01),
    "nesterov": (0.9, True, 0.0, 0.01),
    "nesterov-alpha": (0.9, True, 0.05, 0.01),
    "momentum-alpha": (0.5, False, 0.2, 0.02),
    "plain-alpha": (0.0, False, 0.1, 0.05),
}


def _sklearn_run(X, y, weights, biases, activation, momentum, nesterov, alpha, lr,
                 batch_size, epochs):
    nn = pytest.importorskip("sklearn.neural_network")
    est = nn.MLPRegressor(
        hidden_layer_sizes=tuple(w.shape[1] for w in weights[:-1]), activation=activation,
        solver="sgd", learning_rate="constant", learning_rate_init=lr, momentum=momentum,
        nesterovs_momentum=nesterov, alpha=alpha, batch_size=batch_size, shuffle=False,
        max_iter=1, tol=0.0, n_iter_no_change=10**9, early_stopping=False, warm_start=True,
        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning
        est.fit(X, y)  # creates coefs_ / intercepts_ (random init, overwritten below)
        # warm_start: the next fit keeps coefs_/intercepts_ (no _initialize), while
        # fit() (not partial_fit) builds a new SGDOptimizer: velocities start at zero.
        est.coefs_ = [np.array(w, dtype=np.float64) for w in weights]
        est.intercepts_ = [np.array(c, dtype=np.float64) for c in biases]
        n_before = len(est.loss_curve_)
        est.set_params(max_iter=epochs)
        est.fit(X, y)
    assert est.n_iter_ == epochs
    flat = R.flatten(est.coefs_, est.intercepts_)
    return flat, np.array(est.loss_curve_[n_before:])


@pytest.mark.parametrize("batch_size,epochs", [(24, 200), (8, 70)])
@pytest.mark.parametrize("case", list(SKLEARN_CASES))
def test_matches_sklearn_mlpregressor(case, batch_size, epochs):
    pytest.importorskip("sklearn")
    mu, nesterov, alpha, lr = SKLEARN_CASES[case]
    sizes = [3, 5, 1]
    X, y, W, b = problem(sizes, 24, "half_mse", seed=6)
    y = y.ravel()
    flat, curve = _sklearn_run(X, y, W, b, "tanh", mu, nesterov, alpha, lr, batch_size, epochs)
    m = model_from(W, b, ["tanh", "identity"], "half_mse")
    kw = {"momentum": mu, "nesterov": nesterov, "l2": alpha / batch_size}
    hist = m.fit(X, y, epochs=epochs, lr=lr, batch_size=None if batch_size == 24 else batch_size,
                 **kw)
    assert_close(m.params, flat, what=f"{case} params vs sklearn")
    # sklearn's loss_curve_ is the sample-weighted mean of the batch losses (+ its L2
    # term alpha/(2 n_batch) sum W^2); with equal batches that is fastbp's history.
    assert_close(hist.loss, curve, what=f"{case} history vs sklearn")
    assert curve[-1] < 0.8 * curve[0]


def test_matches_sklearn_logistic_hidden():
    pytest.importorskip("sklearn")
    sizes = [3, 5, 4, 1]
    X, y, W, b = problem(sizes, 24, "half_mse", seed=8)
    y = y.ravel()
    flat, curve = _sklearn_run(X, y, W, b, "logistic", 0.9, True, 0.01, 0.05, 6, 60)
    m = model_from(W, b, ["sigmoid", "sigmoid", "identity"], "half_mse")
    hist = m.fit(X, y, epochs=60, lr=0.05, batch_size=6, momentum=0.9, nesterov=True,
                 l2=0.01 / 6)
    assert_close(m.params, flat, what="params vs sklearn")
    assert_close(hist.loss, curve, what="history vs sklearn")


# ------------------------------------------------------- softmax + cross_entropy


def assert_gradient_checks(m, X, y, W, b, acts, loss):
    """m's gradient at (X, y) against central differences of its loss, and its gradient
    and loss against the reference's; returns the gradient (flat)."""
    gW, gb = m.gradient(X, y)
    analytic = R.flatten(gW, gb)
    theta0 = m.params.copy()

    def f(theta):
        m.params = theta
        return m.loss(X, y)

    numeric = R.numerical_gradient(f, theta0, h=1e-6)
    m.params = theta0
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
    rW, rb = R.weighted_gradient(X, y, W, b, acts, loss)
    assert_close(analytic, R.flatten(rW, rb), rtol=1e-12)
    assert rel_err(m.loss(X, y), R.weighted_loss(X, y, W, b, acts, loss)) < 1e-13
    return analytic


@pytest.mark.parametrize("bias", [True, False])
def test_softmax_cross_entropy_gradient_central_differences(bias):
    sizes, acts, loss = SOFT
    X, labels, W, b = problem(sizes, 11, loss, bias=bias, seed=9)
    m = model_from(W, b, acts, loss)
    # the reference's p - y backprop, and its log-sum-exp loss
    analytic = assert_gradient_checks(m, X, labels, W, b, acts, loss)
    # one-hot targets give the same loss and gradient
    onehot = R.one_hot(labels, sizes[-1])
    assert m.loss(X, onehot) == m.loss(X, labels)
    gW2, gb2 = m.gradient(X, onehot)
    assert_bit_identical(R.flatten(gW2, gb2), analytic, "gradient one-hot vs labels")


# ------------------------------------------------------- exp + poisson (log link)


@pytest.mark.parametrize("bias", [True, False])
def test_poisson_gradient_central_differences(bias):
    sizes, acts, loss = POIS
    X, y, W, b = problem(sizes, 13, loss, bias=bias, seed=21)
    assert (y == 0).any() and (y > 1).any()  # the y log y term's both branches
    m = model_from(W, b, acts, loss)
    assert_gradient_checks(m, X, y, W, b, acts, loss)
    # scikit-learn's own expression of the loss, at the model's outputs
    out = m.predict(X)
    ylogy = np.where(y > 0, y * np.log(np.where(y > 0, y / out, 1.0)), 0.0)
    assert rel_err(m.loss(X, y), float(np.mean((ylogy - y + out).sum(axis=1)))) < 1e-13


@pytest.mark.parametrize("mode", ["full", "minibatch", "per_sample"])
@pytest.mark.parametrize("opt", ["sgd", "nesterov-l2", "adam"])
def test_poisson_training_matches_reference(opt, mode):
    kw, lr = OPTIMIZERS[opt]
    sizes, acts, loss = POIS
    m, hist, theta, rhist = fit_and_reference(kw, lr, mode, sizes, acts, loss, seed=22)
    assert_close(hist.loss, rhist, what="history")
    assert_close(m.params, theta, what="params")
    assert rhist[-1] < rhist[0]  # it trains


def test_poisson_needs_counts_and_its_exp_output():
    sizes, acts, loss = POIS
    X, y, W, b = problem(sizes, 10, loss, seed=23)
    m = model_from(W, b, acts, loss)
    y_neg = y.copy()
    y_neg[4, 1] = -1.0
    with pytest.raises(ValueError, match="poisson.*targets >= 0"):
        m.fit(X, y_neg, epochs=1, lr=0.1)
    with pytest.raises(ValueError, match="'poisson' and a 'exp' output go together"):
        fastbp.MLP(sizes, activation=["tanh", "identity"], loss="poisson")
    with pytest.raises(ValueError, match="'poisson' and a 'exp' output go together"):
        fastbp.MLP(sizes, activation=["tanh", "exp"], loss="mse")
    with pytest.raises(ValueError, match="'exp' is only allowed in the output layer"):
        fastbp.MLP([3, 4, 4, 2], activation=["exp", "tanh", "exp"], loss="poisson")


def test_poisson_overflow_is_reported_not_nan():
    sizes, acts, loss = POIS
    X, y, W, b = problem(sizes, 10, loss, seed=24)
    b[-1][:] = 800.0  # exp(800) overflows float64
    m = model_from(W, b, acts, loss)
    with pytest.raises(FloatingPointError, match="overflow"):
        m.predict(X)
    before = m.params.copy()
    with pytest.raises(fastbp.DivergenceError, match="the starting parameters"):
        m.fit(X, y, epochs=3, lr=0.1)
    assert_bit_identical(m.params, before, "params after a refused fit")


@pytest.mark.parametrize("batch_size,epochs", [(None, 60), (4, 15), (1, 5)])
def test_integer_labels_equal_one_hot(batch_size, epochs):
    sizes, acts, loss = SOFT
    X, labels, W, b = problem(sizes, 18, loss, seed=10)
    m1 = model_from(W, b, acts, loss)
    h1 = m1.fit(X, labels, epochs=epochs, lr=0.1, batch_size=batch_size)
    m2 = model_from(W, b, acts, loss)
    h2 = m2.fit(X, R.one_hot(labels, sizes[-1]), epochs=epochs, lr=0.1, batch_size=batch_size)
    assert_bit_identical(m1.params, m2.params, "params")
    assert_bit_identical(h1.loss, h2.loss, "history")
    # int32 labels are labels too
    m3 = model_from(W, b, acts, loss)
    m3.fit(X, labels.astype(np.int32), epochs=epochs, lr=0.1, batch_size=batch_size)
    assert_bit_identical(m3.params, m1.params, "params with int32 labels")


@pytest.mark.parametrize("mode", ["full", "minibatch", "per_sample"])
@pytest.mark.parametrize("opt", ["sgd", "nesterov-l2", "adam"])
def test_softmax_training_matches_reference(opt, mode):
    kw, lr = OPTIMIZERS[opt]
    sizes, acts, loss = SOFT
    m, hist, theta, rhist = fit_and_reference(kw, lr * 4, mode, sizes, acts, loss, seed=11)
    assert_close(hist.loss, rhist, what="history")
    assert_close(m.params, theta, what="params")


def three_blobs(n_per=60, seed=0):
    r = np.random.default_rng(seed)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    X = np.concatenate([c + 0.8 * r.normal(size=(n_per, 2)) for c in centers])
    labels = np.repeat(np.arange(3), n_per)
    return X, labels


def test_three_class_blobs_trained_to_high_accuracy():
    X, labels = three_blobs()
    m = fastbp.MLP([2, 8, 3], activation=["tanh", "softmax"], loss="cross_entropy",
                   init="xavier", seed=0)
    hist = m.fit(X, labels, epochs=60, lr=0.02, batch_size=16, optimizer="adam",
                 shuffle=True, seed=1)
    assert hist.loss[-1] < 0.3 * hist.loss[0]
    proba = m.predict_proba(X)
    assert proba.shape == (X.shape[0], 3)
    assert np.all(proba >= 0) and np.all(proba <= 1)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    acc = np.mean(np.argmax(proba, axis=1) == labels)
    assert acc > 0.95, acc
    assert_bit_identical(m.predict(X), proba, "predict vs predict_proba")
    Xt, lt = three_blobs(seed=1)
    assert np.mean(np.argmax(m.predict_proba(Xt), axis=1) == lt) > 0.95


def test_predict_proba_sigmoid_output():
    X, y, W, b = problem([3, 4, 2], 7, "bce", seed=12)
    m = model_from(W, b, ["tanh", "sigmoid"], "bce")
    assert_bit_identical(m.predict_proba(X), m.predict(X), "predict_proba (sigmoid)")


def test_softmax_huge_logits_are_stable():
    sizes, acts, loss = SOFT
    X, labels, W, b = problem(sizes, 12, loss, seed=13)
    W = [W[0], 1e4 * W[1]]       # output logits ~ 1e4
    b = [b[0], 1e3 * b[1]]
    m = model_from(W, b, acts, loss)
    proba = m.predict_proba(X)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(proba, R.softmax(R.forward_ext(X, W, b, acts)[1]), rtol=0, atol=1e-6)
    value = m.loss(X, labels)
    expected = R.weighted_loss(X, labels, W, b, acts, loss)
    assert np.isfinite(value) and value > 100.0  # large (wrong confident classes), finite
    assert rel_err(value, expected) < 1e-10
    gW, gb = m.gradient(X, labels)
    assert np.isfinite(R.flatten(gW, gb)).all()
    hist = m.fit(X, labels, epochs=5, lr=1e-6)
    assert np.isfinite(hist.loss).all() and np.isfinite(m.params).all()
    assert hist.stopped is None


# ------------------------------------------------ validation and early stopping


def es_problem():
    """Training targets f(X); validation targets f(Xv)/2.  From small weights the net
    passes near f/2 on its way to f, so the validation loss falls, then rises (its
    minimum is near epoch 30 with adam, lr 0.01)."""
    r = np.random.default_rng(7)
    X = r.normal(size=(40, 3))
    Xv = r.normal(size=(30, 3))
    a = np.array([1.0, -2.0, 0.5])

    def f(Z):
        return 1.5 * np.tanh(Z @ a)[:, None]

    W = [r.normal(0, 0.1, (3, 6)), r.normal(0, 0.1, (6, 1))]
    b = [np.zeros(6), np.zeros(1)]
    return X, f(X), Xv, 0.5 * f(Xv), W, b


ES_ACTS = ["tanh", "identity"]


@pytest.mark.parametrize("record_every", [1, 3])
def test_early_stopping_stops_and_history_shows_why(record_every):
    X, y, Xv, yv, W, b = es_problem()
    k = 8
    epochs = 2000
    m = model_from(W, b, ES_ACTS, "mse")
    hist = m.fit(X, y, epochs=epochs, lr=0.01, optimizer="adam", validation_data=(Xv, yv),
                 patience=k, record_every=record_every)
    assert hist.stopped == "early_stopping"
    assert hist.epochs < epochs
    assert len(hist.loss) < epochs // record_every
    val = np.asarray(hist.val_loss)
    assert val.shape == hist.loss.shape
    assert np.isfinite(val).all()
    # the last k checks did not improve on the best before them ...
    best_before = np.min(val[:-k])
    assert np.all(val[-k:] >= best_before), val[-k - 2:]
    # ... and the check before them was the best one (min_delta = 0)
    assert val[-k - 1] == best_before == np.min(val)
    assert hist.best_epoch == (len(val) - k - 1) * record_every
    # it stopped at the k-th check after the best
    assert hist.epochs == hist.best_epoch + k * record_every + 1
    # without restore_best the model keeps the last parameters
    assert rel_err(m.loss(Xv, yv), val[-1]) < 1e-12
    # validation does not change training: same as a plain run of as many epochs
    plain = model_from(W, b, ES_ACTS, "mse")
    ph = plain.fit(X, y, epochs=hist.epochs, lr=0.01, optimizer="adam",
                   record_every=record_every)
    assert_bit_identical(plain.params, m.params, "params vs run without validation")
    assert_bit_identical(ph.loss, hist.loss, "history vs run without validation")
    # the validation loss recorded at epoch e is the loss after e's update
    rw, rb, _, _ = R.train_controlled(X, y, W, b, ES_ACTS, "mse", 1 + record_every, 0.01,
                                      optimizer="adam")
    rw1, rb1, _, _ = R.train_controlled(X, y, W, b, ES_ACTS, "mse", 1, 0.01, optimizer="adam")
    assert rel_err(val[0], R.weighted_loss(Xv, yv, rw1, rb1, ES_ACTS, "mse")) < 1e-10
    assert rel_err(val[1], R.weighted_loss(Xv, yv, rw, rb, ES_ACTS, "mse")) < 1e-10


@pytest.mark.parametrize("batch_size", [None, 10])
def test_restore_best_leaves_the_best_validation_parameters(batch_size):
    X, y, Xv, yv, W, b = es_problem()
    m = model_from(W, b, ES_ACTS, "mse")
    hist = m.fit(X, y, epochs=2000, lr=0.01, optimizer="adam", batch_size=batch_size,
                 validation_data=(Xv, yv), patience=10, restore_best=True)
    assert hist.stopped == "early_stopping"
    val = np.asarray(hist.val_loss)
    best = np.nanmin(val)
    assert rel_err(m.loss(Xv, yv), best) < 1e-12
    assert val[-1] > best  # the restore did something
    assert hist.val_loss[hist.best_epoch] == best
    # those are the parameters after best_epoch + 1 epochs of the same run
    again = model_from(W, b, ES_ACTS, "mse")
    again.fit(X, y, epochs=hist.best_epoch + 1, lr=0.01, optimizer="adam",
              batch_size=batch_size)
    assert_bit_identical(m.params, again.params, "restored params")


def test_restore_best_without_early_stop():
    """patience=0 (no early stopping) with restore_best: the whole run, then the best."""
    X, y, Xv, yv, W, b = es_problem()
    m = model_from(W, b, ES_ACTS, "mse")
    hist = m.fit(X, y, epochs=80, lr=0.01, optimizer="adam", validation_data=(Xv, yv),
                 restore_best=True)
    assert hist.epochs == 80 and hist.stopped is None
    assert len(hist.val_loss) == 80 and np.isfinite(hist.val_loss).all()
    assert rel_err(m.loss(Xv, yv), np.min(hist.val_loss)) < 1e-12
    assert 0 < hist.best_epoch < 79


def test_ctrl_c_with_restore_best_warns_what_the_model_holds():
    """Ctrl-C with restore_best: the model holds the best record's parameters (as at
    any end of the run), and the warning says so rather than claiming the parameters
    after the epochs run."""
    import os
    import signal
    X, y, Xv, yv, W, b = es_problem()

    def ctrl_c(epoch, hist, model):
        if epoch >= 60:
            os.kill(os.getpid(), signal.SIGINT)

    m = model_from(W, b, ES_ACTS, "mse")
    with pytest.warns(RuntimeWarning, match="interrupted") as caught:
        hist = m.fit(X, y, epochs=10**6, lr=0.01, optimizer="adam",
                     validation_data=(Xv, yv), restore_best=True, chunk_seconds=1e-4,
                     callbacks=[ctrl_c])
    assert hist.stopped == "interrupted" and 60 <= hist.epochs < 10**6
    assert hist.best_epoch + 1 < hist.epochs
    again = model_from(W, b, ES_ACTS, "mse")
    again.fit(X, y, epochs=hist.best_epoch + 1, lr=0.01, optimizer="adam")
    assert_bit_identical(m.params, again.params, "restored params")
    msg = str(caught[0].message)
    assert f"after {hist.epochs} of 1000000 epochs" in msg
    assert f"best validation record (restore_best): those after {hist.best_epoch + 1} " \
           f"epochs" in msg


def test_early_stopping_across_chunks_is_unchanged():
    """Tiny chunks (many kernel calls): the early-stopping state (best loss, checks
    without improvement, best epoch, best parameters) carries across chunk boundaries."""
    X, y, Xv, yv, W, b = es_problem()
    out = []
    for cs in (0.2, 1e-5):
        calls = []
        m = model_from(W, b, ES_ACTS, "mse")
        h = m.fit(X, y, epochs=2000, lr=0.01, optimizer="adam", batch_size=10,
                  validation_data=(Xv, yv), patience=8, restore_best=True, chunk_seconds=cs,
                  callbacks=[lambda e, hh, mm: calls.append(e)])
        out.append((h, m.params.copy(), len(calls)))
    (h1, p1, _), (h2, p2, n_calls) = out
    assert n_calls >= 5  # the second run really went in many chunks
    assert h1.stopped == h2.stopped == "early_stopping"
    assert h1.epochs == h2.epochs and h1.best_epoch == h2.best_epoch
    assert_bit_identical(h1.loss, h2.loss, "loss")
    assert_bit_identical(h1.val_loss, h2.val_loss, "val_loss")
    assert_bit_identical(p1, p2, "restored params")


def test_validation_labels_equal_one_hot():
    sizes, acts, loss = SOFT
    X, labels, W, b = problem(sizes, 30, loss, seed=35)
    Xv, lv = X[20:], labels[20:]
    hs = []
    for yv in (lv, R.one_hot(lv, sizes[-1])):
        m = model_from(W, b, acts, loss)
        hs.append(m.fit(X[:20], labels[:20], epochs=20, lr=0.1, validation_data=(Xv, yv)))
    assert np.isfinite(hs[0].val_loss).all()
    assert_bit_identical(hs[0].val_loss, hs[1].val_loss, "val_loss labels vs one-hot")


def test_min_delta_stops_no_later():
    X, y, Xv, yv, W, b = es_problem()
    runs = []
    for md in (0.0, 1e-3):
        m = model_from(W, b, ES_ACTS, "mse")
        runs.append(m.fit(X, y, epochs=2000, lr=0.01, optimizer="adam",
                          validation_data=(Xv, yv), patience=8, min_delta=md))
    assert runs[0].stopped == runs[1].stopped == "early_stopping"
    assert runs[1].epochs <= runs[0].epochs
    # with min_delta, each of the last `patience` checks was not min_delta better
    val = np.asarray(runs[1].val_loss)
    best = val[runs[1].best_epoch]
    assert np.all(val[-8:] >= best - 1e-3)


def test_validation_fraction_is_deterministic_given_seed():
    X, y, W, b = problem(REG[0], 40, REG[2], seed=14)
    hists, params = [], []
    for seed in (5, 5, 6):
        m = model_from(W, b, REG[1], REG[2])
        hists.append(m.fit(X, y, epochs=30, lr=0.05, validation_fraction=0.25, seed=seed))
        params.append(m.params.copy())
    for h in hists:
        assert np.isfinite(h.val_loss).all() and len(h.val_loss) == 30
    assert_bit_identical(hists[0].val_loss, hists[1].val_loss, "val_loss, same seed")
    assert_bit_identical(hists[0].loss, hists[1].loss, "loss, same seed")
    assert_bit_identical(params[0], params[1], "params, same seed")
    assert not np.array_equal(hists[0].val_loss, hists[2].val_loss)
    # it really held data out: training on everything gives another trajectory
    m = model_from(W, b, REG[1], REG[2])
    full = m.fit(X, y, epochs=30, lr=0.05)
    assert not np.array_equal(full.loss, hists[0].loss)
    # the first record is the loss of the training part only, not of all of X
    assert full.loss[0] != hists[0].loss[0]


def test_validation_fraction_early_stopping():
    X, y, Xv, yv, W, b = es_problem()
    Xa = np.concatenate([X, Xv])
    ya = np.concatenate([y, yv])
    m = model_from(W, b, ES_ACTS, "mse")
    hist = m.fit(Xa, ya, epochs=3000, lr=0.01, optimizer="adam", validation_fraction=0.3,
                 seed=0, patience=5)
    assert np.isfinite(hist.val_loss).all()
    assert hist.stopped in ("early_stopping", None)


# ------------------------------------------------------------------ sample weights


@pytest.mark.parametrize("batch_size", [None, 7, 1])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_all_ones_weights_equal_no_weights(loss, batch_size):
    sizes, acts = (REG[0], REG[1]) if loss == "mse" else (SOFT[0], SOFT[1])
    X, y, W, b = problem(sizes, 20, loss, seed=15)
    m1 = model_from(W, b, acts, loss)
    h1 = m1.fit(X, y, epochs=10, lr=0.05, batch_size=batch_size)
    m2 = model_from(W, b, acts, loss)
    h2 = m2.fit(X, y, epochs=10, lr=0.05, batch_size=batch_size, sample_weight=np.ones(20))
    assert_bit_identical(m1.params, m2.params, "params")
    assert_bit_identical(h1.loss, h2.loss, "history")


WEIGHT_LOSSES = {
    "mse": (REG[0], ["tanh", "identity"]),
    "half_mse": (REG[0], ["tanh", "identity"]),
    "sse": (REG[0], ["tanh", "identity"]),
    "bce": (REG[0], ["tanh", "sigmoid"]),
    "cross_entropy": (SOFT[0], SOFT[1]),
    "poisson": (POIS[0], POIS[1]),
}


@pytest.mark.parametrize("batch_size,epochs", [(None, 100), (7, 34), (1, 5)])
@pytest.mark.parametrize("loss", list(WEIGHT_LOSSES))
def test_sample_weights_match_reference(loss, batch_size, epochs):
    sizes, acts = WEIGHT_LOSSES[loss]
    X, y, W, b = problem(sizes, 20, loss, seed=16)
    w = np.random.default_rng(17).uniform(0.0, 3.0, size=20)
    w[[3, 11]] = 0.0
    lr = 0.005 if loss == "sse" else 0.05
    m = model_from(W, b, acts, loss)
    hist = m.fit(X, y, epochs=epochs, lr=lr, batch_size=batch_size, sample_weight=w)
    rw, rb, rhist, _ = R.train_controlled(X, y, W, b, acts, loss, epochs, lr,
                                          batch_size=batch_size, sample_weight=w)
    assert_close(hist.loss, rhist, what="history")
    assert_close(m.params, R.flatten(rw, rb), what="params")


@pytest.mark.parametrize("batch_size", [None, 7, 1])
def test_sample_weights_with_adam_match_reference(batch_size):
    sizes, acts = WEIGHT_LOSSES["bce"]
    X, y, W, b = problem(sizes, 20, "bce", seed=18)
    w = np.random.default_rng(19).uniform(0.0, 2.0, size=20)
    m = model_from(W, b, acts, "bce")
    hist = m.fit(X, y, epochs=15, lr=0.01, batch_size=batch_size, sample_weight=w,
                 optimizer="adam", l2=0.01)
    rw, rb, rhist, _ = R.train_controlled(X, y, W, b, acts, "bce", 15, 0.01,
                                          batch_size=batch_size, sample_weight=w,
                                          optimizer="adam", l2=0.01)
    assert_close(hist.loss, rhist, what="history")
    assert_close(m.params, R.flatten(rw, rb), what="params")


def test_integer_weights_equal_repeated_samples_sse():
    """sse is a sum: weight w_s is the sample counted w_s times (full batch)."""
    X, y, W, b = problem(REG[0], 15, "sse", seed=20)
    w = np.random.default_rng(21).integers(0, 4, size=15)
    w[0] = 0
    m1 = model_from(W, b, REG[1], "sse")
    h1 = m1.fit(X, y, epochs=50, lr=0.005, sample_weight=w)
    m2 = model_from(W, b, REG[1], "sse")
    h2 = m2.fit(np.repeat(X, w, axis=0), np.repeat(y, w, axis=0), epochs=50, lr=0.005)
    assert_close(m1.params, m2.params, rtol=1e-11, what="params")
    assert_close(h1.loss, h2.loss, rtol=1e-11, what="history")
    assert h1.loss[-1] < 0.8 * h1.loss[0]


@pytest.mark.parametrize("loss", ["mse", "half_mse", "bce"])
def test_integer_weights_mean_losses_divide_by_n(loss):
    """Means divide by N, not by sum(w): weighted = repeated * sum(w) / N, so training
    with lr equals training on the repeated data with lr * sum(w) / N (full batch)."""
    sizes, acts = WEIGHT_LOSSES[loss]
    X, y, W, b = problem(sizes, 15, loss, seed=22)
    w = np.random.default_rng(23).integers(0, 4, size=15)
    ratio = w.sum() / 15
    m1 = model_from(W, b, acts, loss)
    h1 = m1.fit(X, y, epochs=50, lr=0.1, sample_weight=w)
    m2 = model_from(W, b, acts, loss)
    h2 = m2.fit(np.repeat(X, w, axis=0), np.repeat(y, w, axis=0), epochs=50, lr=0.1 * ratio)
    assert_close(m1.params, m2.params, rtol=1e-11, what="params")
    assert_close(h1.loss, h2.loss * ratio, rtol=1e-11, what="history")


@pytest.mark.parametrize("loss", list(WEIGHT_LOSSES))
def test_zero_weight_sample_is_ignored(loss):
    """Full batch, sum of the weighted terms: a zero-weight sample (with an absurd target)
    changes nothing but the 1/N of the mean losses."""
    sizes, acts = WEIGHT_LOSSES[loss]
    X, y, W, b = problem(sizes, 16, loss, seed=24)
    w = np.ones(16)
    w[[2, 9, 10]] = 0.0
    keep = w > 0
    y_bad = y.copy()
    if loss == "cross_entropy":
        y_bad[~keep] = 0  # labels must stay valid
    elif loss == "bce":
        y_bad[~keep] = 1.0 - y_bad[~keep]
    else:
        y_bad[~keep] = 1e3
    scale = 1.0 if loss == "sse" else keep.sum() / 16
    m1 = model_from(W, b, acts, loss)
    h1 = m1.fit(X, y_bad, epochs=40, lr=0.01 / scale if loss != "sse" else 0.01,
                sample_weight=w)
    m2 = model_from(W, b, acts, loss)
    h2 = m2.fit(X[keep], y[keep], epochs=40, lr=0.01)
    assert_close(m1.params, m2.params, rtol=1e-11, what="params")
    assert_close(h1.loss, h2.loss * scale, rtol=1e-11, what="history")


@pytest.mark.parametrize("loss", list(WEIGHT_LOSSES))
def test_zero_weight_sample_is_ignored_per_sample_sgd(loss):
    """batch_size=1, plain SGD: a zero-weight sample's step is zero."""
    sizes, acts = WEIGHT_LOSSES[loss]
    X, y, W, b = problem(sizes, 16, loss, seed=25)
    w = np.ones(16)
    w[[0, 7, 15]] = 0.0
    keep = w > 0
    m1 = model_from(W, b, acts, loss)
    m1.fit(X, y, epochs=6, lr=0.02, batch_size=1, sample_weight=w)
    m2 = model_from(W, b, acts, loss)
    m2.fit(X[keep], y[keep], epochs=6, lr=0.02, batch_size=1)
    assert_close(m1.params, m2.params, rtol=1e-12, what="params")


def test_sample_weight_scales_per_sample_steps():
    """Per-sample SGD sees the weights (they are not normalised away)."""
    X, y, W, b = problem(REG[0], 10, "mse", seed=26)
    m1 = model_from(W, b, REG[1], "mse")
    m1.fit(X, y, epochs=1, lr=0.01, batch_size=1, sample_weight=np.full(10, 2.0))
    m2 = model_from(W, b, REG[1], "mse")
    m2.fit(X, y, epochs=1, lr=0.02, batch_size=1)
    assert_close(m1.params, m2.params, rtol=1e-13)


def test_sample_weight_with_validation_fraction_is_deterministic():
    X, y, W, b = problem(REG[0], 40, REG[2], seed=27)
    w = np.random.default_rng(28).uniform(0.5, 2.0, size=40)
    m1 = model_from(W, b, REG[1], REG[2])
    h1 = m1.fit(X, y, epochs=10, lr=0.05, sample_weight=w, validation_fraction=0.25, seed=3)
    m2 = model_from(W, b, REG[1], REG[2])
    h2 = m2.fit(X, y, epochs=10, lr=0.05, sample_weight=w, validation_fraction=0.25, seed=3)
    assert_bit_identical(m1.params, m2.params)
    assert np.isfinite(h1.val_loss).all() and np.isfinite(h2.loss).all()


# --------------------------------------------------------------------- callbacks


def test_callbacks_are_called_between_chunks():
    X, y, W, b = problem(REG[0], 24, REG[2], seed=29)
    calls = []
    m = model_from(W, b, REG[1], REG[2])

    def cb(epoch, history, model):
        assert model is m
        calls.append((epoch, len(history.loss), history.loss[-1] if len(history.loss) else None))

    hist = m.fit(X, y, epochs=3000, lr=0.01, callbacks=[cb], chunk_seconds=1e-4)
    assert hist.epochs == 3000 and hist.stopped is None
    assert len(calls) >= 3
    epochs_seen = [c[0] for c in calls]
    assert all(isinstance(e, (int, np.integer)) for e in epochs_seen)
    assert epochs_seen == sorted(epochs_seen) and len(set(epochs_seen)) == len(epochs_seen)
    assert 1 <= epochs_seen[0] and epochs_seen[-1] <= 3000
    for epoch, n_rec, last in calls:
        # history so far: the records of the epochs run (record_every = 1)
        assert n_rec == epoch
        assert last == hist.loss[epoch - 1]


def test_callback_returning_false_stops():
    X, y, W, b = problem(REG[0], 24, REG[2], seed=30)
    calls = []

    def stop_on_second(epoch, history, model):
        calls.append(epoch)
        return len(calls) < 2  # True, then False

    m = model_from(W, b, REG[1], REG[2])
    hist = m.fit(X, y, epochs=100000, lr=0.01, momentum=0.5, callbacks=[stop_on_second],
                 chunk_seconds=1e-4)
    assert hist.stopped == "callback"
    assert len(calls) == 2
    assert hist.epochs == calls[-1] < 100000
    assert len(hist.loss) == hist.epochs
    # the model holds the parameters after exactly hist.epochs epochs
    again = model_from(W, b, REG[1], REG[2])
    h2 = again.fit(X, y, epochs=hist.epochs, lr=0.01, momentum=0.5)
    assert_bit_identical(m.params, again.params, "params at the callback stop")
    assert_bit_identical(h2.loss, hist.loss, "history at the callback stop")


def test_callback_returning_false_after_the_last_epoch_stops_nothing():
    """A callback is called after every chunk, the last included; its False there stops
    nothing, so the History says the run finished (stopped None), not "callback"."""
    X, y, W, b = problem(REG[0], 24, REG[2], seed=30)
    calls = []

    def always_false(epoch, history, model):
        calls.append(epoch)
        return False

    m = model_from(W, b, REG[1], REG[2])
    hist = m.fit(X, y, epochs=5, lr=0.01, callbacks=[always_false])  # one chunk
    assert calls == [5]
    assert hist.stopped is None and hist.epochs == 5


def test_callback_returning_numpy_false_stops_and_other_values_are_refused():
    """A comparison of losses is a numpy bool: its False stops the fit as False does (it
    was ignored: the fit ran all its epochs).  Values that are neither a bool nor None
    (0, "no") are refused with TypeError rather than guessed at."""
    X, y, W, b = problem(REG[0], 24, REG[2], seed=30)

    def below(epoch, history, model):
        return history.loss[-1] > np.inf  # np.False_

    m = model_from(W, b, REG[1], REG[2])
    hist = m.fit(X, y, epochs=100000, lr=0.01, callbacks=[below], chunk_seconds=1e-4)
    assert hist.stopped == "callback" and hist.epochs < 100000
    for value in (0, "no", np.array([False])):
        m = model_from(W, b, REG[1], REG[2])
        with pytest.raises(TypeError, match="returned"):
            m.fit(X, y, epochs=100000, lr=0.01, callbacks=lambda e, h, mm: value,
                  chunk_seconds=1e-4)


def test_a_callback_that_writes_nan_or_infinity_into_the_parameters_is_named():
    """A callback that writes a non-finite parameter ends the fit with ValueError naming
    it.  Before, training went on: an infinite first-layer weight under tanh gives a
    finite loss, so with on_divergence="warn" the fit returned, without error, a model
    holding that infinity; a NaN was reported as a divergence blaming the lr."""
    X, y, W, b = problem([3, 8, 1], 24, "mse", seed=30)

    def inf_weight(epoch, history, model):
        model.weights[0][0, 0] = np.inf

    def nan_param(epoch, history, model):
        model.params[0] = np.nan
        return False  # the fit must not end quietly with it either

    for cb in (inf_weight, nan_param):
        m = model_from(W, b, ["tanh", "identity"], "mse")
        with pytest.raises(ValueError, match=f"{cb.__name__}.*NaN or infinity"):
            m.fit(X, y, epochs=100000, lr=0.01, callbacks=[cb], chunk_seconds=1e-4,
                  on_divergence="warn")


def test_a_callbacks_nan_does_not_replace_the_last_good_checkpoint(tmp_path):
    """The checkpoint written after the chunk (before the callback) stays: the fit's end
    must not overwrite it with the callback's NaN, which resume would refuse."""
    X, y, W, b = problem(REG[0], 24, REG[2], seed=30)
    path = tmp_path / "run.npz"

    seen = []

    def nan_param(epoch, history, model):
        seen.append(epoch)
        if epoch > 7 and epoch % 7:  # after a checkpoint, at an epoch that has none
            model.params[0] = np.nan

    m = model_from(W, b, REG[1], REG[2])
    with pytest.raises(ValueError, match="NaN or infinity"):
        m.fit(X, y, epochs=300, lr=0.01, callbacks=[nan_param], checkpoint=str(path),
              checkpoint_every=7, chunk_seconds=1e-4)
    with np.load(path) as z:
        assert np.isfinite(z["params"]).all()
        assert int(z["run_epoch"]) % 7 == 0 and int(z["run_epoch"]) < seen[-1]
    resumed, h = fastbp.resume(str(path), X, y)  # continues from that good state
    assert np.isfinite(resumed.params).all() and h.epochs == 300


def test_a_fit_from_a_callback_of_the_same_model_is_refused_saying_so():
    """A callback that fits its own model (fit or L-BFGS) gets RuntimeError saying the fit
    was called from inside its own fit; it said "fit is running in another thread"."""
    X, y, W, b = problem(REG[0], 24, REG[2], seed=30)
    seen = []

    def again(epoch, history, model):
        for kw in ({}, {"optimizer": "lbfgs"}):
            with pytest.raises(RuntimeError, match="from inside its own fit") as e:
                model.fit(X, y, epochs=2, **kw)
            assert "another thread" not in str(e.value)
        seen.append(epoch)

    m = model_from(W, b, REG[1], REG[2])
    m.fit(X, y, epochs=5, lr=0.01, callbacks=[again])
    assert seen == [5]


def test_callbacks_none_return_continues_and_every_callback_is_called():
    X, y, W, b = problem(REG[0], 24, REG[2], seed=31)
    seen_a, seen_b = [], []
    m = model_from(W, b, REG[1], REG[2])
    hist = m.fit(X, y, epochs=2000, lr=0.01,
                 callbacks=[lambda e, h, mm: seen_a.append(e), lambda e, h, mm: seen_b.append(e)],
                 chunk_seconds=1e-4)
    assert hist.epochs == 2000 and hist.stopped is None
    assert seen_a == seen_b and len(seen_a) >= 2


def test_small_chunk_seconds_makes_more_calls():
    X, y, W, b = problem(REG[0], 24, REG[2], seed=32)
    counts = {}
    for cs in (10.0, 1e-4):
        n = [0]

        def cb(epoch, history, model, n=n):
            n[0] += 1

        m = model_from(W, b, REG[1], REG[2])
        m.fit(X, y, epochs=4000, lr=0.01, callbacks=[cb], chunk_seconds=cs)
        counts[cs] = n[0]
    assert counts[1e-4] > counts[10.0]
    assert counts[1e-4] >= 5


def test_callbacks_do_not_change_results():
    X, y, W, b = problem(REG[0], 24, REG[2], seed=33)
    m1 = model_from(W, b, REG[1], REG[2])
    h1 = m1.fit(X, y, epochs=1500, lr=0.01, optimizer="adam", batch_size=5,
                callbacks=[lambda e, h, mm: True], chunk_seconds=1e-4)
    m2 = model_from(W, b, REG[1], REG[2])
    h2 = m2.fit(X, y, epochs=1500, lr=0.01, optimizer="adam", batch_size=5)
    assert_bit_identical(m1.params, m2.params)
    assert_bit_identical(h1.loss, h2.loss)


# ----------------------------------------------------------------- bad arguments


@pytest.fixture
def small():
    X, y, W, b = problem(REG[0], 10, REG[2], seed=34)
    return X, y, model_from(W, b, REG[1], REG[2])


BAD_FIT = [
    ({"optimizer": "rmsprop"}, ValueError, "optimizer"),
    ({"optimizer": "Adam!"}, ValueError, "optimizer"),
    ({"momentum": -0.1}, ValueError, "momentum"),
    ({"momentum": 1.0}, ValueError, "momentum"),
    ({"momentum": 1.5}, ValueError, "momentum"),
    ({"momentum": float("nan")}, ValueError, "momentum"),
    ({"momentum": "0.9"}, TypeError, "momentum"),
    ({"nesterov": True}, ValueError, "nesterov"),
    ({"nesterov": True, "momentum": 0.0}, ValueError, "nesterov"),
    ({"l2": -1e-3}, ValueError, "l2"),
    ({"optimizer": "adam", "beta1": 1.0}, ValueError, "beta1"),
    ({"optimizer": "adam", "beta2": -0.1}, ValueError, "beta2"),
    ({"optimizer": "adam", "eps": 0.0}, ValueError, "eps"),
    ({"schedule": "exponential"}, ValueError, "schedule"),
    ({"schedule": "step", "step_size": 0}, ValueError, "step_size"),
    ({"schedule": "step", "step_factor": 0.0}, ValueError, "step_factor"),
    ({"schedule": "cosine", "lr_min": 1.0}, ValueError, "lr_min"),
    ({"patience": 3}, ValueError, "patience"),
    ({"patience": -1, "validation_fraction": 0.2}, ValueError, "patience"),
    ({"validation_fraction": 0.0}, ValueError, "validation_fraction"),
    ({"validation_fraction": 1.0}, ValueError, "validation_fraction"),
    ({"validation_fraction": -0.2}, ValueError, "validation_fraction"),
    ({"validation_fraction": 1.5}, ValueError, "validation_fraction"),
    ({"sample_weight": np.ones(9)}, ValueError, "sample_weight"),
    ({"sample_weight": np.ones(11)}, ValueError, "sample_weight"),
    ({"sample_weight": np.ones((10, 2))}, ValueError, "sample_weight"),
    ({"sample_weight": np.r_[np.ones(9), -1.0]}, ValueError, "sample_weight"),
    ({"sample_weight": np.r_[np.ones(9), np.nan]}, ValueError, "sample_weight"),
    ({"sample_weight": np.r_[np.ones(9), np.inf]}, ValueError, "sample_weight"),
]


@pytest.mark.parametrize("kw,exc,name", BAD_FIT, ids=[f"{i}-{c[2]}" for i, c in enumerate(BAD_FIT)])
def test_bad_fit_arguments(small, kw, exc, name):
    X, y, m = small
    before = m.params.copy()
    with pytest.raises(exc, match=name):
        m.fit(X, y, epochs=2, lr=0.01, **kw)
    assert_bit_identical(m.params, before, "params after a refused fit")


def test_restore_best_without_validation_data_is_refused_or_harmless(small):
    X, y, m = small
    try:
        m.fit(X, y, epochs=2, lr=0.01, restore_best=True)
    except ValueError as e:
        assert "restore_best" in str(e) or "validation" in str(e)


BAD_NETS = [
    # (sizes, activation, loss, what the message must name)
    ([3, 4, 3], ["softmax", "softmax"], "cross_entropy", "softmax"),
    ([3, 4, 3], ["softmax", "identity"], "mse", "softmax"),
    ([3, 4, 4, 3], ["tanh", "softmax", "softmax"], "cross_entropy", "softmax"),
    ([3, 4, 3], ["tanh", "softmax"], "mse", "softmax|cross_entropy"),
    ([3, 4, 3], ["tanh", "softmax"], "bce", "softmax|cross_entropy|bce"),
    ([3, 4, 3], ["tanh", "sigmoid"], "cross_entropy", "softmax|cross_entropy"),
    ([3, 4, 3], ["tanh", "identity"], "cross_entropy", "softmax|cross_entropy"),
    ([3, 4, 3], "tanh", "cross_entropy", "softmax|cross_entropy"),
]


@pytest.mark.parametrize("sizes,acts,loss,name", BAD_NETS)
def test_bad_softmax_combinations(sizes, acts, loss, name):
    with pytest.raises(ValueError, match=name):
        fastbp.MLP(sizes, activation=acts, loss=loss, seed=0)
    W = [np.zeros((a, c)) for a, c in zip(sizes[:-1], sizes[1:])]
    with pytest.raises(ValueError, match=name):
        fastbp.MLP.from_weights(W, None, activation=acts, loss=loss)


@pytest.mark.parametrize("labels", [[0, 1, 3, 2], [0, -1, 1, 2], [0, 1, 2, 2.5]])
def test_labels_out_of_range(labels):
    sizes, acts, loss = SOFT
    m = fastbp.MLP(sizes, activation=acts, loss=loss, seed=0)
    X = np.random.default_rng(0).normal(size=(4, sizes[0]))
    with pytest.raises(ValueError, match=r"(?i)label|class|\by\b"):
        m.fit(X, np.array(labels), epochs=1)


def test_validation_data_labels_out_of_range():
    sizes, acts, loss = SOFT
    m = fastbp.MLP(sizes, activation=acts, loss=loss, seed=0)
    X = np.random.default_rng(0).normal(size=(6, sizes[0]))
    with pytest.raises(ValueError, match=r"(?i)label|class|validation"):
        m.fit(X, np.array([0, 1, 2, 0, 1, 2]), epochs=1,
              validation_data=(X[:3], np.array([0, 5, 1])), patience=2)


def test_bad_validation_data_is_named_as_such():
    """NaN, infinity or values too large for the model dtype in validation_data are
    refused naming X_val or y_val -- not X or y, the training arrays, which are fine."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(8, 3)), rng.random((8, 2))
    for dtype, bad, what in (("float64", np.nan, "contains NaN or infinity"),
                             ("float32", 1e39, "has values too large for float32")):
        m = fastbp.MLP([3, 4, 2], seed=0, dtype=dtype)
        for name, pair in (("X_val", (np.where(X > 1, bad, X), y)),
                           ("y_val", (X, np.where(y > 0.5, bad, y)))):
            with pytest.raises(ValueError, match=rf"^{name} {what}"):
                m.fit(X, y, epochs=1, validation_data=pair)
    m = fastbp.MLP([3, 4, 2], seed=0)
    with pytest.raises(ValueError, match=r"X_val has 2 features"):
        m.fit(X, y, epochs=1, validation_data=(X[:, :2], y))


def test_bad_callbacks(small):
    X, y, m = small
    with pytest.raises(TypeError, match="callbacks"):
        m.fit(X, y, epochs=2, callbacks=[3])


# ----------------------------------------------------------------- other dtypes, runs


def test_float32_adam_l2_and_softmax():
    X, y, W, b = problem(REG[0], 24, REG[2])
    m = fastbp.MLP.from_weights(W, b, activation=REG[1], loss=REG[2], dtype="float32")
    hist = m.fit(X, y, epochs=100, lr=0.01, optimizer="adam", l2=0.01, batch_size=8)
    rw, rb, rhist, _ = R.train_controlled(X, y, W, b, REG[1], REG[2], 100, 0.01,
                                          optimizer="adam", l2=0.01, batch_size=8)
    assert m.params.dtype == np.float32
    np.testing.assert_allclose(m.params, R.flatten(rw, rb), rtol=0, atol=1e-4)
    np.testing.assert_allclose(hist.loss, rhist, rtol=1e-4)
    Xb, labels = three_blobs()
    m = fastbp.MLP([2, 8, 3], activation=["tanh", "softmax"], loss="cross_entropy",
                   init="xavier", seed=0, dtype="float32")
    m.fit(Xb, labels, epochs=60, lr=0.02, batch_size=16, optimizer="adam", shuffle=True, seed=1)
    proba = m.predict_proba(Xb)
    assert proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    assert np.mean(np.argmax(proba, axis=1) == labels) > 0.95


def test_divergence_with_momentum_keeps_finite_parameters():
    X, y, Xv, yv, W, b = es_problem()
    m = model_from(W, b, ES_ACTS, "mse")
    with pytest.warns(RuntimeWarning, match="diverged"):
        hist = m.fit(100 * X, y, epochs=200, lr=10.0, momentum=0.9, on_divergence="warn",
                     validation_data=(Xv, yv))
    assert hist.stopped == "diverged"
    assert hist.epochs < 200
    assert np.isfinite(m.params).all()
    assert np.isfinite(m.optimizer_state["velocity"]).all()


@pytest.mark.parametrize("chunk_seconds", [10.0, 1e-5])
@pytest.mark.parametrize("kw", [dict(momentum=0.5, batch_size=4),
                                dict(momentum=0.9, nesterov=True, batch_size=5,
                                     shuffle=True, seed=2)])
def test_divergence_leaves_the_optimizer_state_of_the_epoch_it_keeps(kw, chunk_seconds):
    """After a divergence the model holds the parameters after hist.epochs epochs, and
    its optimizer state (velocity, step count) must be that epoch's too, so a next fit
    continues from a consistent state; the guard's epoch used to keep the parameters
    with the optimizer state of the chunk's start (a one-chunk fit: step 0, zero
    velocity)."""
    X, y = fastbp.datasets.xor_easy()

    def fresh():
        return fastbp.MLP([2, 8, 8, 1], activation=["relu", "relu", "identity"],
                          init="normal", seed=0)

    lr = 2.0
    m = fresh()
    with pytest.warns(RuntimeWarning, match="diverged"):
        hist = m.fit(X, y, epochs=10**5, lr=lr, on_divergence="warn",
                     chunk_seconds=chunk_seconds, **kw)
    assert hist.stopped == "diverged" and 0 < hist.epochs < 10**5
    ref = fresh()
    ref.fit(X, y, epochs=hist.epochs, lr=lr, **kw)
    assert_bit_identical(m.params, ref.params, "params kept")
    got, want = m.optimizer_state, ref.optimizer_state
    assert got["step"] == want["step"]
    assert_bit_identical(got["velocity"], want["velocity"], "velocity kept")
    assert_bit_identical(m._rng_state, ref._rng_state, "shuffling stream kept")


@pytest.mark.parametrize("kw", [{"optimizer": "adam", "l2": 0.01},
                                {"momentum": 0.9, "nesterov": True, "schedule": "cosine"}])
def test_checkpoint_resume_continues_optimizer_state(kw, tmp_path):
    """A run stopped by a callback and resumed from its checkpoint ends bit-identical to
    an uninterrupted one: optimizer state, schedule epoch and validation go along."""
    X, y, Xv, yv, W, b = es_problem()
    path = tmp_path / "run.npz"
    n = [0]

    def stop_third(epoch, history, model):
        n[0] += 1
        return n[0] < 3

    m = model_from(W, b, ES_ACTS, "mse")
    h = m.fit(X, y, epochs=3000, lr=0.01, batch_size=10, checkpoint=str(path),
              checkpoint_every=50, callbacks=[stop_third], chunk_seconds=1e-4,
              validation_data=(Xv, yv), **kw)
    assert h.stopped == "callback" and h.epochs < 3000
    resumed, rh = fastbp.resume(str(path), X, y)
    ref = model_from(W, b, ES_ACTS, "mse")
    h2 = ref.fit(X, y, epochs=3000, lr=0.01, batch_size=10, validation_data=(Xv, yv), **kw)
    assert_bit_identical(resumed.params, ref.params, "params after resume")
    assert_bit_identical(rh.loss, h2.loss, "history after resume")
    assert_bit_identical(rh.val_loss, h2.val_loss, "val_loss after resume")


def test_epoch_loss_sample_mean_weights_batches_by_size():
    # 30 samples in batches of 7 (7, 7, 7, 7, 2).  With a vanishing learning rate the
    # parameters do not move, so the size-weighted mean of the batch losses is the loss
    # of the whole set, while the plain mean over-weights the last, short batch.
    rng = np.random.default_rng(11)
    X = rng.normal(size=(30, 3))
    y = rng.normal(size=(30, 2))
    m = fastbp.MLP([3, 4, 2], ["tanh", "identity"], loss="mse", init="xavier", seed=2)
    full = m.loss(X, y)
    h_sample = m.fit(X, y, epochs=1, lr=1e-300, batch_size=7, epoch_loss="sample_mean")
    h_batch = m.fit(X, y, epochs=1, lr=1e-300, batch_size=7)
    assert h_sample.loss[0] == pytest.approx(full, rel=1e-13)
    assert abs(h_batch.loss[0] - full) > 1e-6 * full
    with pytest.raises(ValueError, match="epoch_loss"):
        m.fit(X, y, epochs=1, lr=0.1, epoch_loss="weighted")
