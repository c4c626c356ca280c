"""fastbp.sklearn: scikit-learn's estimator checks, trajectory parity with scikit-learn's
own MLP (sgd, adam, lbfgs), the meta-estimators (Pipeline, GridSearchCV, cross_val_score,
pickling), and the details scikit-learn's users rely on (assigning coefs_ / intercepts_,
estimators built from their attributes, divergence, partial_fit's availability)."""
import copy
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn import neural_network as skn  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastbp  # noqa: E402
from fastbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

TOL = 1e-9  # parity with scikit-learn: max |difference| of any weight or bias

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# ---------------------------------------------------------------- estimator checks

# Checks that fail for a reason we accept, each with the reason.  Everything else passes.
EXPECTED_FAILED_CHECKS = {
    "MLPRegressor": {},
    "MLPClassifier": {},
}


def _expected_failed(estimator):
    return EXPECTED_FAILED_CHECKS[type(estimator).__name__]


# scikit-learn's own suite runs its MLPs with max_iter=100; so do we (default (100,) units)
@parametrize_with_checks([MLPRegressor(max_iter=100), MLPClassifier(max_iter=100),
                          MLPRegressor(solver="lbfgs", max_iter=100),
                          MLPClassifier(solver="lbfgs", max_iter=100)],
                         expected_failed_checks=_expected_failed)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ------------------------------------------------------------- trajectory parity

def _data(n=60, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    Y = X @ rng.normal(size=(d, k)) + 0.1 * rng.normal(size=(n, k))
    return X, Y


def _targets(kind):
    X, Y = _data()
    return X, {
        "regression": Y[:, 0],
        "multi-output": Y,
        "binary": (Y[:, 0] > 0).astype(int),
        "multi-class": np.digitize(Y[:, 0], [-1.0, 0.5]),  # 3 classes
        "multi-label": (Y > 0).astype(int),
    }[kind]


def _pair(kind):
    if kind in ("regression", "multi-output"):
        return skn.MLPRegressor, MLPRegressor
    return skn.MLPClassifier, MLPClassifier


PLAIN_SGD = dict(hidden_layer_sizes=(7, 5), solver="sgd", momentum=0.0, alpha=0.0,
                 shuffle=False, learning_rate="constant", learning_rate_init=0.05,
                 batch_size=20, max_iter=25, tol=0.0, n_iter_no_change=10**6,
                 random_state=3)


def _fit_both(kind, **params):
    X, y = _targets(kind)
    sk_cls, fb_cls = _pair(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = sk_cls(**params).fit(X, y)
        got = fb_cls(**params).fit(X, y)
    return ref, got


def _max_weight_diff(ref, got):
    assert [c.shape for c in ref.coefs_] == [c.shape for c in got.coefs_]
    return max(np.abs(a - b).max()
               for a, b in zip(ref.coefs_ + ref.intercepts_, got.coefs_ + got.intercepts_))


def _assert_same_run(ref, got, loss_curve=True):
    assert _max_weight_diff(ref, got) <= TOL
    assert got.n_iter_ == ref.n_iter_
    assert got.t_ == ref.t_
    assert got.out_activation_ == ref.out_activation_
    assert got.n_layers_ == ref.n_layers_ and got.n_outputs_ == ref.n_outputs_
    if loss_curve:
        np.testing.assert_allclose(got.loss_curve_, ref.loss_curve_, rtol=1e-9, atol=1e-12)
        assert got.loss_ == pytest.approx(ref.loss_, rel=1e-9)


@pytest.mark.parametrize("activation", ["logistic", "tanh", "relu"])
@pytest.mark.parametrize("kind", ["regression", "binary", "multi-class", "multi-label",
                                  "multi-output"])
def test_plain_sgd_trajectory_equals_sklearn(kind, activation):
    ref, got = _fit_both(kind, activation=activation, **PLAIN_SGD)
    _assert_same_run(ref, got)
    X, _ = _data()
    if kind in ("regression", "multi-output"):
        np.testing.assert_allclose(got.predict(X), ref.predict(X), atol=1e-9)
    else:
        np.testing.assert_allclose(got.predict_proba(X), ref.predict_proba(X), atol=1e-9)
        np.testing.assert_array_equal(got.predict(X), ref.predict(X))


@pytest.mark.parametrize("activation", ["logistic", "tanh", "relu"])
@pytest.mark.parametrize("kind", ["regression", "multi-class"])
@pytest.mark.parametrize("batch_size", [1, 20, 60])
def test_batch_sizes_equal_sklearn(kind, activation, batch_size):
    ref, got = _fit_both(kind, activation=activation, **dict(PLAIN_SGD, batch_size=batch_size,
                                                             max_iter=8))
    _assert_same_run(ref, got)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("kind", ["regression", "binary", "multi-label"])
def test_momentum_equals_sklearn(kind, nesterov):
    ref, got = _fit_both(kind, activation="tanh", **dict(
        PLAIN_SGD, momentum=0.9, nesterovs_momentum=nesterov, learning_rate_init=0.01))
    _assert_same_run(ref, got)


@pytest.mark.parametrize("kind", ["regression", "multi-class", "multi-output"])
def test_l2_equals_sklearn_when_batches_are_equal(kind):
    # batch_size divides n_samples: every batch has scikit-learn's alpha / 20
    # (multi-output: the records carry alpha's L2 term whole, as scikit-learn's loss_
    # does, while the updates use alpha / n_outputs: options.Rule.l2_loss)
    ref, got = _fit_both(kind, activation="relu", **dict(PLAIN_SGD, alpha=0.5))
    _assert_same_run(ref, got)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("batch_size", [1, 20])
def test_multi_output_l2_stops_at_sklearns_epoch(solver, batch_size, monkeypatch):
    """Multi-output regression with alpha > 0: the tol / n_iter_no_change rule reads
    loss_curve_, whose L2 term is scikit-learn's (it was divided by n_outputs, so the
    fit could stop at another epoch); the run stops where scikit-learn's does."""
    from sklearn.neural_network import _stochastic_optimizers
    monkeypatch.setattr(_stochastic_optimizers.AdamOptimizer, "_get_updates",
                        _paper_adam_updates)
    params = dict(PLAIN_SGD, solver=solver, alpha=0.3, tol=1e-3, n_iter_no_change=2,
                  max_iter=200, batch_size=batch_size, learning_rate_init=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref, got = _fit_both("multi-output", activation="tanh", **params)
    assert ref.n_iter_ < 200  # the stopping rule ended scikit-learn's fit
    _assert_same_run(ref, got)


def test_uneven_batches_weights_equal_sklearn():
    # 60 samples in batches of 25, 25, 10: the weights still follow scikit-learn exactly
    ref, got = _fit_both("regression", activation="tanh", **dict(PLAIN_SGD, batch_size=25))
    assert _max_weight_diff(ref, got) <= TOL


def test_uneven_batches_loss_curve_and_l2_equal_sklearn():
    ref, got = _fit_both("regression", activation="tanh",
                         **dict(PLAIN_SGD, batch_size=25, alpha=0.5))
    _assert_same_run(ref, got)


@pytest.mark.parametrize("kind", ["regression", "binary"])
def test_invscaling_equals_sklearn(kind):
    ref, got = _fit_both(kind, activation="tanh", **dict(
        PLAIN_SGD, learning_rate="invscaling", learning_rate_init=0.5, power_t=0.4))
    _assert_same_run(ref, got)


def test_adaptive_equals_sklearn():
    ref, got = _fit_both("regression", activation="tanh", **dict(
        PLAIN_SGD, learning_rate="adaptive", learning_rate_init=0.2, tol=1e-3,
        n_iter_no_change=2, max_iter=300))
    assert ref.n_iter_ < 300  # it did decrease the rate and then stop
    _assert_same_run(ref, got)


@pytest.mark.parametrize("kind", ["regression", "binary", "multi-class"])
def test_tol_stopping_equals_sklearn(kind):
    ref, got = _fit_both(kind, activation="tanh", **dict(
        PLAIN_SGD, tol=1e-3, n_iter_no_change=3, max_iter=500))
    assert ref.n_iter_ < 500
    _assert_same_run(ref, got)
    assert got.best_loss_ == pytest.approx(ref.best_loss_, rel=1e-9)


@pytest.mark.parametrize("kind", ["regression", "binary", "multi-class", "multi-label",
                                  "multi-output"])
def test_early_stopping_equals_sklearn(kind):
    # same split (train_test_split with the same random state), same validation scores,
    # same best weights restored; 48 training samples in batches of 16
    ref, got = _fit_both(kind, activation="relu", **dict(
        PLAIN_SGD, batch_size=16, early_stopping=True, validation_fraction=0.2, tol=1e-3,
        n_iter_no_change=3, max_iter=300))
    assert ref.n_iter_ < 300
    _assert_same_run(ref, got)
    np.testing.assert_allclose(got.validation_scores_, ref.validation_scores_, atol=1e-12)
    assert got.best_validation_score_ == pytest.approx(ref.best_validation_score_)
    assert got.best_loss_ is None


@pytest.mark.parametrize("kind", ["regression", "binary"])
def test_full_batch_sample_weight_equals_sklearn(kind):
    X, y = _targets(kind)
    w = np.random.default_rng(1).uniform(0.1, 3.0, size=len(y))
    sk_cls, fb_cls = _pair(kind)
    params = dict(PLAIN_SGD, activation="tanh", batch_size=60, alpha=0.1)
    ref = sk_cls(**params).fit(X, y, sample_weight=w)
    got = fb_cls(**params).fit(X, y, sample_weight=w)
    _assert_same_run(ref, got)


@pytest.mark.parametrize("kind", ["regression", "multi-class"])
def test_early_stopping_split_with_a_weightless_part_is_a_valueerror(kind):
    """One sample with weight > 0: one part of the early_stopping split has only zero
    weights, whichever part that sample falls in.  That was a ZeroDivisionError (the
    training part: its mean weight; the validation part: its score, after training)."""
    X, y = _targets(kind)
    parts = set()
    for i in range(len(y)):
        w = np.zeros(len(y))
        w[i] = 1.0
        est = _pair(kind)[1](**dict(PLAIN_SGD, early_stopping=True, max_iter=2))
        with pytest.raises(ValueError, match="sample_weight is zero on every sample of the "
                                             "(training|validation) part") as info:
            est.fit(X, y, sample_weight=w)
        parts.add(str(info.value).split(" part")[0].split()[-1])
    assert parts == {"training", "validation"}


def _paper_adam_updates(self, grads):
    """scikit-learn's AdamOptimizer._get_updates with eps added to sqrt(v_hat), as in the
    paper (and fastbp, and PyTorch); scikit-learn adds it to sqrt(v)."""
    self.t += 1
    self.ms = [self.beta_1 * m + (1 - self.beta_1) * g for m, g in zip(self.ms, grads)]
    self.vs = [self.beta_2 * v + (1 - self.beta_2) * g ** 2 for v, g in zip(self.vs, grads)]
    c1 = 1.0 / (1.0 - self.beta_1 ** self.t)
    c2 = 1.0 / (1.0 - self.beta_2 ** self.t)
    return [-self.learning_rate_init * (m * c1) / (np.sqrt(v * c2) + self.epsilon)
            for m, v in zip(self.ms, self.vs)]


ADAM = dict(PLAIN_SGD, solver="adam", learning_rate_init=0.01, alpha=1e-4)


@pytest.mark.parametrize("kind", ["regression", "binary", "multi-class", "multi-label",
                                  "multi-output"])
def test_adam_equals_sklearn_with_the_papers_eps(kind, monkeypatch):
    from sklearn.neural_network import _stochastic_optimizers
    monkeypatch.setattr(_stochastic_optimizers.AdamOptimizer, "_get_updates",
                        _paper_adam_updates)
    ref, got = _fit_both(kind, activation="tanh", **ADAM)
    _assert_same_run(ref, got)
    # the bias corrections are Python's pow on both sides: the weights part only by the
    # products' summation order (2-5e-16 on the development machine; 1-3e-15 when
    # fastbp's corrections were Numba's binary powering)
    assert _max_weight_diff(ref, got) <= 1e-14


@pytest.mark.parametrize("kind", ["regression", "multi-class"])
def test_adam_close_to_sklearn(kind):
    # unpatched: the eps placement matters only where sqrt(v_hat) is as small as eps
    ref, got = _fit_both(kind, activation="tanh", **ADAM)
    assert _max_weight_diff(ref, got) <= 1e-3
    np.testing.assert_allclose(got.loss_curve_, ref.loss_curve_, rtol=1e-3)


def test_warm_start_and_partial_fit_follow_sklearn():
    X, y = _targets("multi-class")
    params = dict(PLAIN_SGD, activation="tanh", momentum=0.5, nesterovs_momentum=False,
                  max_iter=5, warm_start=True)
    ref = skn.MLPClassifier(**params)
    got = MLPClassifier(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for est in (ref, got):
            est.fit(X, y)
            est.fit(X, y)  # warm start: new optimizer (velocity 0), same weights
            est.partial_fit(X, y)  # keeps the optimizer
            est.partial_fit(X[:40], y[:40])  # 2 batches of 20
    _assert_same_run(ref, got)
    assert got.n_iter_ == 1 and len(got.loss_curve_) == 12


def test_partial_fit_from_scratch_follows_sklearn():
    X, y = _targets("binary")
    params = dict(PLAIN_SGD, activation="relu")
    ref = skn.MLPClassifier(**params)
    got = MLPClassifier(**params)
    for est in (ref, got):
        for i in range(3):
            est.partial_fit(X, y, classes=[0, 1])
    _assert_same_run(ref, got)
    with pytest.raises(ValueError, match="classes must be passed"):
        MLPClassifier(**params).partial_fit(X, y)


@pytest.mark.parametrize("random_state", [7, np.int64(7)])
def test_each_partial_fit_shuffles_with_the_seed_of_a_fresh_random_state(
        monkeypatch, random_state):
    """scikit-learn makes its RandomState from random_state afresh at every fit: a later
    partial_fit (no initialization, no validation split) shuffles with that state's first
    draw, the first partial_fit with its draw after the initial weights'.  The wrapper
    remembers the first draw of an int seed (_first_draw) rather than seed MT19937 again:
    the same seeds."""
    seeds = []
    fit = fastbp.MLP.fit

    def spy(self, *args, **kw):
        seeds.append(kw["seed"])
        return fit(self, *args, **kw)

    monkeypatch.setattr(fastbp.MLP, "fit", spy)
    X, y = _targets("binary")
    est = MLPClassifier(**dict(PLAIN_SGD, shuffle=True, random_state=random_state))
    for _ in range(3):
        est.partial_fit(X, y, classes=[0, 1])
    high = np.iinfo(np.int32).max
    first = np.random.RandomState(7)  # the initial weights' draws, then the seed's
    units = (X.shape[1], 7, 5, 1)
    first.uniform(size=sum(a * b + b for a, b in zip(units[:-1], units[1:])))
    fresh = int(np.random.RandomState(7).randint(high))
    assert seeds == [int(first.randint(high)), fresh, fresh]
    with pytest.raises(ValueError):  # a seed RandomState refuses, refused as before
        est.set_params(random_state=-1).partial_fit(X, y)


def test_the_remembered_first_draw_is_a_random_state_for_any_other_use():
    """_FirstDraw gives the first shuffling seed without seeding MT19937; any draw after
    it, or any other draw first, comes from the RandomState itself, in order."""
    from fastbp.sklearn import _SEED_HIGH, _FirstDraw
    ref = np.random.RandomState(11)
    rs = _FirstDraw(11)
    assert [rs.randint(_SEED_HIGH), rs.randint(_SEED_HIGH)] == \
        [ref.randint(_SEED_HIGH), ref.randint(_SEED_HIGH)]
    assert np.array_equal(rs.uniform(size=3), ref.uniform(size=3))
    ref, rs = np.random.RandomState(11), _FirstDraw(11)
    assert np.array_equal(rs.uniform(size=3), ref.uniform(size=3))
    assert rs.randint(_SEED_HIGH) == ref.randint(_SEED_HIGH)
    assert rs.randint(5, size=4).tolist() == ref.randint(5, size=4).tolist()


def test_convergence_warning_like_sklearn():
    X, y = _targets("regression")
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPRegressor(**dict(PLAIN_SGD, max_iter=3)).fit(X, y)


# -------------------------------------------------------- meta-estimators, pickling

@pytest.fixture
def admissions():
    return fastbp.datasets.admissions()


def test_grid_search_on_admissions(admissions):
    X_train, y_train, X_test, y_test, _ = admissions
    grid = GridSearchCV(
        MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", max_iter=50, random_state=0,
                      n_iter_no_change=50),
        {"learning_rate_init": [0.01, 0.1], "alpha": [1e-4, 1e-2]}, cv=3, n_jobs=2)
    grid.fit(X_train, y_train)
    assert set(grid.best_params_) == {"learning_rate_init", "alpha"}
    assert len(grid.cv_results_["mean_test_score"]) == 4
    assert np.all(np.isfinite(grid.cv_results_["mean_test_score"]))
    best = grid.best_estimator_
    assert isinstance(best, MLPClassifier) and best.n_iter_ >= 1
    assert 0.5 <= grid.score(X_test, y_test) <= 1.0
    assert set(best.predict(X_test)) <= {0.0, 1.0}


def test_cross_val_score_in_parallel(admissions):
    X_train, y_train, _, _, _ = admissions
    scores = cross_val_score(MLPRegressor(hidden_layer_sizes=(8,), max_iter=30,
                                          random_state=0), X_train, y_train, cv=3, n_jobs=2)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))


def test_pipeline_with_standard_scaler():
    X, y = _targets("multi-class")
    X = 100.0 * X + 50.0
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,),
                                                         max_iter=200, random_state=0))
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.8
    assert pipe.predict_proba(X).shape == (60, 3)
    np.testing.assert_allclose(pipe.predict_proba(X).sum(axis=1), 1.0)


@pytest.mark.parametrize("kind", ["regression", "multi-class", "multi-label"])
def test_pickle_round_trip(kind):
    X, y = _targets(kind)
    _, cls = _pair(kind)
    est = cls(**dict(PLAIN_SGD, activation="tanh", momentum=0.9)).fit(X, y)
    copy = pickle.loads(pickle.dumps(est))
    out = "predict" if kind == "regression" else "predict_proba"
    np.testing.assert_array_equal(getattr(copy, out)(X), getattr(est, out)(X))
    assert copy.get_params() == est.get_params()
    for a, b in zip(copy.coefs_ + copy.intercepts_, est.coefs_ + est.intercepts_):
        np.testing.assert_array_equal(a, b)
    # training continues identically (optimizer state travels too)
    est.partial_fit(X, y)
    copy.partial_fit(X, y)
    np.testing.assert_array_equal(getattr(copy, out)(X), getattr(est, out)(X))


def test_coefs_are_the_network_parameters():
    X, y = _targets("regression")
    est = MLPRegressor(**PLAIN_SGD).fit(X, y)
    before = est.predict(X)
    est.coefs_[-1][...] *= 0.0
    est.intercepts_[-1][...] = 1.5
    np.testing.assert_array_equal(est.predict(X), 1.5)
    est.coefs_ = [np.ones_like(c) for c in est.coefs_]  # replaced, not written in place
    assert not np.allclose(est.predict(X), before)
    assert est.predict(X).std() > 0


# -------------------------------------------------------------------- API details

def test_float32_follows_X_like_sklearn():
    X, y = _targets("regression")
    est = MLPRegressor(**PLAIN_SGD).fit(X.astype(np.float32), y)
    assert est.coefs_[0].dtype == np.float32 and est.predict(X).dtype == np.float32
    est = MLPRegressor(**dict(PLAIN_SGD, dtype="float32")).fit(X, y)
    assert est.coefs_[0].dtype == np.float32
    est = MLPRegressor(**dict(PLAIN_SGD, dtype="float64")).fit(X.astype(np.float32), y)
    assert est.coefs_[0].dtype == np.float64


def test_fitted_attributes():
    X, y = _targets("multi-class")
    est = MLPClassifier(**dict(PLAIN_SGD, early_stopping=True)).fit(X, y)
    for name in ("coefs_", "intercepts_", "loss_", "loss_curve_", "n_iter_",
                 "n_features_in_", "classes_", "best_loss_", "validation_scores_",
                 "out_activation_", "n_layers_", "n_outputs_", "t_"):
        assert hasattr(est, name), name
    assert est.out_activation_ == "softmax" and est.n_features_in_ == 4
    np.testing.assert_array_equal(est.classes_, [0, 1, 2])
    assert len(est.validation_scores_) == est.n_iter_


def test_verbose_shows_progress(capsys):
    X, y = _targets("regression")
    MLPRegressor(**dict(PLAIN_SGD, verbose=True, tol=1.0, n_iter_no_change=2)).fit(X, y)
    captured = capsys.readouterr()
    assert "MLPRegressor" in captured.err  # the bar
    assert "Stopping" in captured.out  # scikit-learn's message


@pytest.mark.parametrize("params, match", [
    (dict(solver="newton"), "solver must be 'lbfgs', 'sgd' or 'adam'"),
    (dict(solver="sgd", momentum=1.0), "momentum=1"),
    (dict(activation="softplus"), "activation must be one of"),
    (dict(learning_rate="cyclic"), "learning_rate must be one of"),
    (dict(hidden_layer_sizes=(5, 0)), "hidden_layer_sizes"),
    (dict(batch_size=0), "batch_size"),
    (dict(alpha=-1.0), "alpha"),
    (dict(max_iter=0), "max_iter"),
    (dict(dtype="float16"), "dtype"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(n_iter_no_change=0), "n_iter_no_change"),
    (dict(verbose=-1), "verbose must be True, False or an int >= 0"),  # as scikit-learn
])
def test_unsupported_values_raise(params, match):
    X, y = _targets("regression")
    with pytest.raises((ValueError, TypeError), match=match):
        MLPRegressor(**params).fit(X, y)


@pytest.mark.parametrize("dtype, expected", [
    (None, np.float64), ("float32", np.float32), (np.float32, np.float32),
    (np.dtype("float64"), np.float64)])
def test_dtype_spellings(dtype, expected):
    X, y = _targets("regression")
    est = MLPRegressor(**dict(PLAIN_SGD, max_iter=2, dtype=dtype)).fit(X, y)
    assert est.coefs_[0].dtype == expected


def test_sklearn_only_parameters_are_accepted():
    X, y = _targets("regression")
    # max_fun is lbfgs-only (unused for sgd/adam, in scikit-learn too); np.inf disables
    # the convergence test as in scikit-learn
    est = MLPRegressor(**dict(PLAIN_SGD, max_iter=7, max_fun=10, n_iter_no_change=np.inf,
                              tol=10.0)).fit(X, y)
    assert est.n_iter_ == 7


def test_divergence_is_scikit_learns_error():
    X, y = _targets("regression")
    with pytest.raises(ValueError, match="non-finite parameter weights"):
        MLPRegressor(**dict(PLAIN_SGD, learning_rate_init=1e6)).fit(1e3 * X, 1e3 * y)


def _counts(k=1, seed=4):
    """X and Poisson counts drawn with a log link (zeros among them), k outputs."""
    X, _ = _data()
    rng = np.random.default_rng(seed)
    rate = np.exp(0.5 * X[:, :k] - 0.3 * X[:, k:2 * k] + 0.2)
    Y = rng.poisson(rate).astype(np.float64)
    return X, Y[:, 0] if k == 1 else Y


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("solver, extra", [
    ("sgd", dict(batch_size=20)),
    ("sgd", dict(batch_size="auto", alpha=0.1, weighted=True)),
    ("lbfgs", dict(alpha=1e-3)),
    ("lbfgs", dict(alpha=0.1, weighted=True)),
])
def test_poisson_equals_sklearn(solver, extra, k):
    """loss='poisson': scikit-learn's exp output and half Poisson deviance, summed over
    the outputs; sgd weights (shuffle=False) and lbfgs iterates equal scikit-learn's."""
    X, Y = _counts(k)
    extra = dict(extra)
    w = np.random.default_rng(5).uniform(0.2, 2.0, len(Y)) if extra.pop("weighted", 0) \
        else None
    if solver == "sgd":
        params = dict(PLAIN_SGD, learning_rate_init=0.01, **extra)
    else:
        params = dict(LBFGS, activation="tanh", **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = skn.MLPRegressor(loss="poisson", **params).fit(X, Y, sample_weight=w)
        got = MLPRegressor(loss="poisson", **params).fit(X, Y, sample_weight=w)
    assert got.out_activation_ == ref.out_activation_ == "exp"
    if solver == "sgd":
        _assert_same_run(ref, got)
    else:
        _assert_same_lbfgs(ref, got)
    np.testing.assert_allclose(got.predict(X), ref.predict(X), rtol=1e-9)
    assert got.score(X, Y) == pytest.approx(ref.score(X, Y), rel=1e-9)


def test_poisson_refuses_negative_targets():
    X, y = _counts()
    y[3] = -1.0
    with pytest.raises(ValueError, match="poisson.*targets >= 0"):
        MLPRegressor(loss="poisson", max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="loss"):
        MLPRegressor(loss="gamma").fit(X, y)


def test_partial_fit_refuses_early_stopping():
    X, y = _targets("regression")
    with pytest.raises(ValueError, match="early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, y)


def test_warm_start_refuses_another_architecture():
    X, y = _targets("regression")
    est = MLPRegressor(**dict(PLAIN_SGD, warm_start=True)).fit(X, y)
    est.set_params(hidden_layer_sizes=(3,))
    with pytest.raises(ValueError, match="warm_start=False"):
        est.fit(X, y)


@pytest.mark.parametrize("first, then", [("float32", "float64"), ("float64", "float32")])
def test_warm_start_and_partial_fit_refuse_another_dtype(first, then):
    """A fitted network keeps its dtype: continuing it with dtype set to the other one
    is refused, not trained in the old dtype; dtype=None (X's precision) continues it
    in its own, float64 X converted."""
    X, y = _targets("regression")
    est = MLPRegressor(**dict(PLAIN_SGD, warm_start=True, dtype=first)).fit(X, y)
    coefs = [c.copy() for c in est.coefs_]
    est.set_params(dtype=then)
    for call in (est.fit, est.partial_fit):
        with pytest.raises(ValueError, match=f"in {first}, but dtype='{then}'"):
            call(X, y)
    for before, after in zip(coefs, est.coefs_):
        np.testing.assert_array_equal(before, after)
    est.set_params(dtype=None).fit(X, y)
    assert est.coefs_[0].dtype == np.dtype(first) and est.predict(X).dtype == np.dtype(first)


@pytest.mark.parametrize("call", ["fit", "partial_fit"])
def test_targets_too_large_for_float32_are_named_so(call):
    """As MLP.fit says it: 'too large for float32', not the 'NaN or infinity' that the
    targets become once cast."""
    X, _ = _targets("regression")
    y = np.full(X.shape[0], 1e39)
    with pytest.raises(ValueError, match="y has values too large for float32"):
        getattr(MLPRegressor(**dict(PLAIN_SGD, dtype="float32")), call)(X, y)
    y[3] = np.inf  # scikit-learn's check of y names it first
    with pytest.raises(ValueError, match="infinity"):
        getattr(MLPRegressor(**dict(PLAIN_SGD, dtype="float32")), call)(X, y)


@pytest.mark.parametrize("name", ["MLPRegressor", "MLPClassifier"])
def test_signature_is_scikit_learns(name):
    """The same parameters in the same order and of the same kind (positional or
    keyword-only) as scikit-learn's estimator, with the same defaults, plus dtype: a
    positional call means the same in both (MLPRegressor takes loss first)."""
    import inspect

    import sklearn.neural_network as skl
    import fastbp.sklearn as ours

    def params(cls):
        return [(p.name, p.kind, p.default)
                for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self"]

    theirs, mine = params(getattr(skl, name)), params(getattr(ours, name))
    assert mine[-1][0] == "dtype" and mine[:-1] == theirs


@pytest.mark.parametrize("setting", [dict(shuffle=1), dict(hidden_layer_sizes="abc"),
                                     dict(alpha=-1.0), dict(dtype="int8"),
                                     dict(verbose="yes")])
def test_bad_settings_are_both_value_and_type_errors(setting):
    """As scikit-learn's InvalidParameterError: code that catches either kind (written
    for scikit-learn's estimator) catches fastbp's too."""
    from fastbp.sklearn import InvalidParameterError

    X, y = _targets("binary")
    for kind in (ValueError, TypeError, InvalidParameterError):
        with pytest.raises(kind):
            MLPClassifier(**setting).fit(X, y)


def test_import_error_names_the_extra():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "try:\n    import fastbp.sklearn\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert 'pip install "fastbp[sklearn]"' in out


# ------------------------------------------------------------------------------ lbfgs

LBFGS = dict(hidden_layer_sizes=(7, 5), solver="lbfgs", alpha=1e-3, max_iter=10, tol=0.0,
             random_state=3)
LBFGS_TOL = 1e-10  # over 10 iterations; further on the two part by rounding
KINDS = ["regression", "binary", "multi-class", "multi-label", "multi-output"]


def _assert_same_lbfgs(ref, got):
    assert _max_weight_diff(ref, got) <= LBFGS_TOL
    assert got.n_iter_ == ref.n_iter_
    assert got.loss_ == pytest.approx(ref.loss_, rel=LBFGS_TOL)


@pytest.mark.parametrize("kind, activation", [
    (kind, activation) for kind in KINDS for activation in ["identity", "logistic", "tanh",
                                                             "relu"]
    # here the 6th line search probes a point where a class probability is below 2.2e-16:
    # scikit-learn's clipped log-loss and fastbp's exact one differ there (next test)
    if (kind, activation) != ("multi-class", "relu")])
def test_lbfgs_equals_sklearn(kind, activation):
    ref, got = _fit_both(kind, activation=activation, **LBFGS)
    assert ref.n_iter_ == 10
    _assert_same_lbfgs(ref, got)


def test_lbfgs_log_loss_is_exact_where_sklearns_is_clipped():
    """scikit-learn clips probabilities to [eps, 1 - eps] in its log-loss (not in its
    gradient); fastbp computes the loss from the logits, exactly.  The two objectives
    differ only where a probability of a true class is below eps = 2.2e-16."""
    from scipy.special import log_softmax
    from sklearn.preprocessing import LabelBinarizer
    X, y = _targets("multi-class")
    params = dict(LBFGS, activation="relu", max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref, got = skn.MLPClassifier(**params).fit(X, y), MLPClassifier(**params).fit(X, y)
    Y = LabelBinarizer().fit_transform(y)
    theta = 30 * np.hstack([a.ravel() for a in ref.coefs_ + ref.intercepts_])
    f_ref, g_ref = ref._loss_grad_lbfgs(theta, X, Y, None,
                                        *_sk_buffers(X, [X.shape[1], 7, 5, Y.shape[1]]))
    f_got, g_got = got._loss_grad_lbfgs(theta, X, Y, None)
    np.testing.assert_allclose(g_got, g_ref, rtol=1e-10, atol=1e-14)
    a = X
    for W, b in zip(ref.coefs_[:-1], ref.intercepts_[:-1]):
        a = np.maximum(a @ W + b, 0)
    log_p = log_softmax(a @ ref.coefs_[-1] + ref.intercepts_[-1], axis=1)
    assert log_p[Y == 1].min() < np.log(np.finfo(float).eps)  # saturated: clipped there
    penalty = 0.5 * LBFGS["alpha"] * sum((W ** 2).sum() for W in ref.coefs_) / len(y)
    exact = -log_p[Y == 1].mean() + penalty
    clipped = -np.maximum(log_p[Y == 1], np.log(np.finfo(float).eps)).mean() + penalty
    assert f_got == pytest.approx(exact, rel=1e-12)
    assert f_ref == pytest.approx(clipped, rel=1e-12) and f_ref < f_got


@pytest.mark.parametrize("kind", ["regression", "binary", "multi-class", "multi-output"])
def test_lbfgs_sample_weight_equals_sklearn(kind):
    X, y = _targets(kind)
    w = np.random.default_rng(1).uniform(0.1, 3.0, size=len(y))
    sk_cls, fb_cls = _pair(kind)
    params = dict(LBFGS, activation="tanh", alpha=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = sk_cls(**params).fit(X, y, sample_weight=w)
        got = fb_cls(**params).fit(X, y, sample_weight=w)
    _assert_same_lbfgs(ref, got)


def _tutorial_sets():
    X, y = fastbp.datasets.xor_easy()
    sets = [("xor", X, y.ravel())]
    a = fastbp.datasets.admissions()  # the packaged 400-row table (conftest.ADMISSIONS_CSV)
    sets.append(("admissions", np.vstack([a.X_train, a.X_test]),
                 np.concatenate([a.y_train, a.y_test]).ravel()))
    return sets


@pytest.mark.parametrize("estimator", ["MLPClassifier", "MLPRegressor"])
@pytest.mark.parametrize("name, X, y", _tutorial_sets())
def test_lbfgs_on_the_tutorials_data_equals_sklearn(name, X, y, estimator):
    params = dict(LBFGS, hidden_layer_sizes=(8,), activation="logistic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = getattr(skn, estimator)(**params).fit(X, y)
        got = getattr(sys.modules["fastbp.sklearn"], estimator)(**params).fit(X, y)
    _assert_same_lbfgs(ref, got)


def _warnings_of(est, X, y):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X, y)
    return [(w.category, str(w.message)) for w in caught]


@pytest.mark.parametrize("params, warned", [
    (dict(max_iter=5), True),  # iterations: the message suggests raising max_iter
    (dict(max_iter=150, max_fun=8), True),  # evaluations
    (dict(max_iter=500, tol=1e-2), False),  # converged: no warning
], ids=["max_iter", "max_fun", "converged"])
def test_lbfgs_convergence_warning_is_sklearns(params, warned):
    X, y = _targets("multi-class")
    params = dict(LBFGS, activation="tanh", **params)
    want = _warnings_of(skn.MLPClassifier(**params), X, y)
    got = _warnings_of(MLPClassifier(**params), X, y)
    assert got == want
    assert bool(want) == warned


def _sk_buffers(X, units):
    """The activations, deltas and gradient buffers scikit-learn's _loss_grad_lbfgs takes."""
    return ([X] + [np.empty((len(X), u)) for u in units[1:]],
            [np.empty((len(X), u)) for u in units[1:]],
            [np.empty((a, b)) for a, b in zip(units[:-1], units[1:])],
            [np.empty(b) for b in units[1:]])


@pytest.mark.parametrize("kind", KINDS)
def test_lbfgs_loss_grad_equals_sklearns(kind):
    """scikit-learn's private objective, as scikit-learn's own test_gradient calls it."""
    from sklearn.preprocessing import LabelBinarizer
    X, y = _targets(kind)
    sk_cls, fb_cls = _pair(kind)
    params = dict(LBFGS, activation="tanh", max_iter=1, alpha=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref, got = sk_cls(**params).fit(X, y), fb_cls(**params).fit(X, y)
    Y = y.reshape(len(y), -1) if kind in ("regression", "multi-output") else \
        LabelBinarizer().fit_transform(y)
    rng = np.random.default_rng(5)
    for _ in range(3):
        theta = np.hstack([a.ravel() for a in ref.coefs_ + ref.intercepts_])
        theta = theta + rng.normal(0, 0.3, theta.shape)
        buffers = _sk_buffers(X, [X.shape[1], 7, 5, Y.shape[1]])
        f_ref, g_ref = ref._loss_grad_lbfgs(theta, X, Y, None, *buffers)
        f_got, g_got = got._loss_grad_lbfgs(theta, X, Y, None, *buffers)
        assert f_got == pytest.approx(f_ref, rel=1e-14)
        np.testing.assert_allclose(g_got, g_ref, rtol=1e-12, atol=1e-15)
        # like scikit-learn's, it leaves the network at theta
        np.testing.assert_array_equal(
            np.hstack([a.ravel() for a in got.coefs_ + got.intercepts_]), theta)


def test_lbfgs_warm_start_equals_sklearn():
    X, y = _targets("binary")
    params = dict(LBFGS, activation="relu", max_iter=4, warm_start=True)
    ref, got = skn.MLPClassifier(**params), MLPClassifier(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for est in (ref, got):
            est.fit(X, y)
            est.fit(X, y)
    _assert_same_lbfgs(ref, got)
    assert got.n_iter_ == 4


@pytest.mark.parametrize("kind", ["regression", "multi-class"])
def test_lbfgs_fitted_attributes_are_sklearns(kind):
    ref, got = _fit_both(kind, activation="tanh", **dict(LBFGS, early_stopping=True))
    public = lambda est: {a for a in vars(est) if a.endswith("_") and not a.startswith("_")}  # noqa: E731
    assert public(got) == public(ref)  # no loss_curve_, validation_scores_, best_loss_
    assert not hasattr(got, "_optimizer") and not hasattr(ref, "_optimizer")


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_partial_fit_is_absent_for_lbfgs(cls):
    assert not hasattr(cls(solver="lbfgs"), "partial_fit")
    assert hasattr(cls(solver="sgd"), "partial_fit") and hasattr(cls(), "partial_fit")
    est = cls(solver="sgd").set_params(solver="lbfgs")
    with pytest.raises(AttributeError, match="has no attribute 'partial_fit'") as info:
        est.partial_fit
    assert str(info.value.__cause__) == ("partial_fit is only available for stochastic "
                                         "optimizers. lbfgs is not stochastic.")


# ------------------------------------------------------------ coefs_ and intercepts_

def _assign(est, new_coefs, new_intercepts, order):
    if order == "coefs, then intercepts":
        est.coefs_ = [c.copy() for c in new_coefs]
        est.intercepts_ = [b.copy() for b in new_intercepts]
    elif order == "intercepts, then coefs":
        est.intercepts_ = [b.copy() for b in new_intercepts]
        est.coefs_ = [c.copy() for c in new_coefs]
    elif order == "items":
        for l in range(len(new_coefs)):
            est.coefs_[l] = new_coefs[l].copy()
            est.intercepts_[l] = new_intercepts[l].copy()
    elif order == "items, intercepts first, last layer first":
        for l in reversed(range(len(new_coefs))):
            est.intercepts_[l] = new_intercepts[l].copy()
        for l in reversed(range(len(new_coefs))):
            est.coefs_[l] = new_coefs[l].copy()
    elif order == "list of coefs, items of intercepts":
        est.intercepts_[1] = new_intercepts[1].copy()
        est.coefs_ = [c.copy() for c in new_coefs]
        est.intercepts_[0] = new_intercepts[0].copy()
        est.intercepts_[2] = new_intercepts[2].copy()


@pytest.mark.parametrize("order", [
    "coefs, then intercepts", "intercepts, then coefs", "items",
    "items, intercepts first, last layer first", "list of coefs, items of intercepts"])
def test_assigned_coefs_and_intercepts_are_used_in_any_order(order):
    X, y = _targets("multi-class")
    ref, got = _fit_both("multi-class", activation="tanh", **PLAIN_SGD)
    rng = np.random.default_rng(7)
    new_coefs = [rng.normal(size=c.shape) for c in ref.coefs_]
    new_intercepts = [rng.normal(size=b.shape) for b in ref.intercepts_]
    for est in (ref, got):
        _assign(est, new_coefs, new_intercepts, order)
    np.testing.assert_allclose(got.predict_proba(X), ref.predict_proba(X), rtol=1e-12,
                               atol=1e-15)
    for a, b in zip(got.coefs_ + got.intercepts_, new_coefs + new_intercepts):
        np.testing.assert_array_equal(a, b)
    # the assignment survives pickling, and training continues from it
    _assign(got, [c + 1 for c in new_coefs], [b - 1 for b in new_intercepts], order)
    copy = pickle.loads(pickle.dumps(got))
    np.testing.assert_array_equal(copy.predict_proba(X), got.predict_proba(X))
    _assign(ref, [c + 1 for c in new_coefs], [b - 1 for b in new_intercepts], order)
    for est in (ref, got):
        est.partial_fit(X, y)
    assert _max_weight_diff(ref, got) <= TOL


def test_assigned_arrays_of_the_wrong_shape_are_refused_and_nothing_is_written():
    X, y = _targets("regression")
    est = MLPRegressor(**PLAIN_SGD).fit(X, y)
    params = est._model.params.copy()
    intercepts = est.intercepts_
    est.intercepts_ = [np.zeros_like(b) for b in est.intercepts_]
    est.coefs_ = [np.zeros((2, 2))] + est.coefs_[1:]
    with pytest.raises(ValueError, match=r"coefs_\[0\] has shape \(2, 2\), expected \(4, 7\)"):
        est.predict(X)
    np.testing.assert_array_equal(est._model.params, params)  # intercepts_ not written
    est.coefs_, est.intercepts_ = est._views["coefs_"], intercepts
    assert np.isfinite(est.predict(X)).all()


def _hand_built(cls):
    """scikit-learn's test_fit: a fitted estimator made from its attributes."""
    mlp = cls(solver="sgd", learning_rate_init=0.1, alpha=0.1, activation="logistic",
              random_state=1, max_iter=1, hidden_layer_sizes=2, momentum=0)
    mlp.coefs_ = [np.array([[0.1, 0.2], [0.3, 0.1], [0.5, 0]]), np.array([[0.1], [0.2]])]
    mlp.intercepts_ = [np.array([0.1, 0.1]), np.array([1.0])]
    mlp.n_outputs_, mlp.n_features_in_, mlp.n_iter_, mlp.n_layers_ = 1, 3, 0, 3
    mlp.out_activation_ = "logistic"
    mlp.t_ = 0
    mlp.best_loss_ = np.inf
    mlp.loss_curve_ = []
    mlp._no_improvement_count = 0
    return mlp


def test_estimator_built_from_its_attributes_trains_like_sklearns():
    X = np.array([[0.6, 0.8, 0.7], [0.2, 0.1, 0.9]])
    y = np.array([0, 1])
    ref, got = _hand_built(skn.MLPClassifier), _hand_built(MLPClassifier)
    for est in (ref, got):
        est.partial_fit(X, y, classes=[0, 1])
        est.partial_fit(X, y)
    _assert_same_run(ref, got)
    np.testing.assert_allclose(got.predict_proba(X), ref.predict_proba(X), rtol=1e-12)
    assert got.coefs_[0].dtype == np.float64


def test_estimator_built_from_its_attributes_predicts():
    est = _hand_built(MLPRegressor)
    est.out_activation_ = "identity"
    X = np.array([[0.6, 0.8, 0.7]])
    h = 1 / (1 + np.exp(-(X @ est.coefs_[0] + est.intercepts_[0])))
    np.testing.assert_allclose(est.predict(X), h @ est.coefs_[1][:, 0] + 1.0, rtol=1e-14)


# ------------------------------------------------------------------------- divergence

def _diverging(**kw):
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    params = dict(hidden_layer_sizes=100, activation="identity", solver="sgd",
                  learning_rate_init=1, shuffle=True, max_iter=20, random_state=0)
    return MLPRegressor(**dict(params, **kw)), X, y


def test_divergence_with_early_stopping_ends_as_sklearn_does():
    est, X, y = _diverging(early_stopping=True, n_iter_no_change=10)
    with pytest.warns(RuntimeWarning, match=r"diverged at epoch (\d+) \(counted from 0\) of "
                                            r"this fit \(max_iter=20\); likely cause: too "
                                            r"large a learning rate: try a smaller "
                                            r"learning_rate_init than 1"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y)
    scores = est.validation_scores_
    assert est.n_iter_ == 20 and len(scores) == 20 and len(est.loss_curve_) == 20
    assert isinstance(scores[-1], float) and np.isnan(scores[-1])
    # scores are NaN once the outputs overflow, and stay so; the loss from the
    # divergence on
    first_nan = int(np.argmax(np.isnan(scores)))
    assert np.isfinite(scores[:first_nan]).all() and np.isnan(scores[first_nan:]).all()
    assert np.isnan(est.loss_curve_[-1])
    assert est.best_validation_score_ == max(scores[:first_nan])
    # the best weights are back
    assert all(np.isfinite(a).all() for a in est.coefs_ + est.intercepts_)
    np.testing.assert_array_equal(est._model.params, est._best_params)
    assert np.isfinite(est.predict(X)).all()


def test_divergence_with_early_stopping_warns_of_max_iter_as_sklearn_does():
    """scikit-learn iterates on NaN up to max_iter (NaN scores never count as "no
    improvement") and then warns that it did not converge; the booked epochs end there
    too, and so must the warnings (there was only the RuntimeWarning)."""
    categories = []
    for cls in (skn.MLPRegressor, MLPRegressor):
        est, X, y = _diverging(early_stopping=True, shuffle=False)
        if cls is skn.MLPRegressor:
            est = cls(**{k: v for k, v in est.get_params().items() if k != "dtype"})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est.fit(X, y)
        assert est.n_iter_ == 20
        categories.append([w.category for w in caught if w.category is ConvergenceWarning])
    assert categories[0] == categories[1] == [ConvergenceWarning]


def test_divergence_without_early_stopping_names_the_fits_epoch_and_the_learning_rate():
    est, X, y = _diverging()
    with pytest.raises(ValueError, match="non-finite parameter weights") as info:
        est.fit(X, y)
    msg = str(info.value)
    assert "diverged at epoch " in msg and "of this fit (max_iter=20)" in msg
    assert "smaller learning_rate_init than 1" in msg
    assert "too large for float64" not in msg and "scale" not in msg


def test_divergence_on_huge_data_blames_the_data():
    X, y = _targets("regression")
    with pytest.raises(ValueError, match=r"non-finite parameter weights.*data \(max \|X\| "
                                         r"= .*e\+200.*too large for float64"):
        MLPRegressor(**PLAIN_SGD).fit(X * 1e200, y)
    with pytest.raises(ValueError, match=r"non-finite parameter weights.*L-BFGS cannot "
                                         r"start.*too large for float64"):
        MLPRegressor(**LBFGS).fit(X * 1e200, y)


# ------------------------------------------------------------- scikit-learn's details

def test_stratified_split_error_names_the_labels_as_sklearn():
    X, y = [[1, 2], [2, 3], [3, 4], [4, 5]], [0, 0, 0, 1]
    errors = []
    for cls in (skn.MLPClassifier, MLPClassifier):
        with pytest.raises(ValueError) as info:
            cls(early_stopping=True).fit(X, y)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "['True']" in errors[1]


@pytest.mark.parametrize("solver, learning_rate", [
    ("sgd", "constant"), ("sgd", "invscaling"), ("sgd", "adaptive"), ("adam", "constant")])
def test_optimizer_view_reports_sklearns_learning_rate(solver, learning_rate):
    X, y = _targets("binary")
    params = dict(PLAIN_SGD, solver=solver, learning_rate=learning_rate, power_t=0.25,
                  warm_start=True, max_iter=7, tol=1e-2, n_iter_no_change=1)
    ref, got = skn.MLPClassifier(**params), MLPClassifier(**params)
    assert not hasattr(got, "_optimizer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for est in (ref, got):
            est.fit(X, y)
            est.fit(X, y)
            est.partial_fit(X, y)
    assert got._optimizer.learning_rate == pytest.approx(ref._optimizer.learning_rate,
                                                         rel=1e-12)
    assert got._optimizer.learning_rate_init == ref._optimizer.learning_rate_init
    if learning_rate != "constant":
        assert got._optimizer.learning_rate != got.learning_rate_init
    with pytest.raises(AttributeError, match="read-only"):
        got._optimizer.learning_rate = 1.0


# ------------------------------------------------------------------------- sparse X

@pytest.mark.parametrize("kind, params", [
    ("regression", PLAIN_SGD),
    ("multi-class", dict(PLAIN_SGD, solver="adam", alpha=1e-3)),
    ("binary", dict(LBFGS, activation="tanh")),
    ("multi-output", dict(PLAIN_SGD, early_stopping=True, validation_fraction=0.2)),
])
def test_sparse_X_trains_as_dense_X(kind, params):
    """CSR and CSC X: fit, partial_fit, predict, predict_proba and score read the sparse
    rows (never a dense copy) and give what the dense X gives."""
    sparse = pytest.importorskip("scipy.sparse")
    X, y = _targets(kind)
    X = X * (np.random.default_rng(2).random(X.shape) < 0.4)  # mostly zeros
    cls = _pair(kind)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dense = cls(**params).fit(X, y)
        for fmt in (sparse.csr_matrix, sparse.csc_array):
            got = cls(**params).fit(fmt(X), y)
            assert _max_weight_diff(dense, got) <= 1e-12
            np.testing.assert_allclose(got.predict(fmt(X)), dense.predict(X), rtol=1e-12)
            assert got.score(fmt(X), y) == pytest.approx(dense.score(X, y), rel=1e-12)
            if kind in ("binary", "multi-class"):
                np.testing.assert_allclose(got.predict_proba(fmt(X)),
                                           dense.predict_proba(X), rtol=1e-12, atol=1e-15)
            if params["solver"] != "lbfgs" and not params.get("early_stopping"):
                dense_more = copy.deepcopy(dense).partial_fit(X, y)
                got.partial_fit(fmt(X), y)
                assert _max_weight_diff(dense_more, got) <= 1e-12


def test_sparse_X_equals_sklearns_fit_on_it():
    """scikit-learn's own sgd run on the same CSR matrix: the weights agree as on dense
    data."""
    sparse = pytest.importorskip("scipy.sparse")
    X, y = _targets("regression")
    Xs = sparse.csr_matrix(X * (np.random.default_rng(3).random(X.shape) < 0.3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = skn.MLPRegressor(**PLAIN_SGD).fit(Xs, y)
        got = MLPRegressor(**PLAIN_SGD).fit(Xs, y)
    _assert_same_run(ref, got)


def test_sparse_y():
    """Sparse targets: the classifier takes a sparse multi-label indicator matrix as
    scikit-learn does (the same fit as the dense one); the regressor refuses sparse y
    with a TypeError that says what to do (scikit-learn fails later, in a LinAlgError)."""
    sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(4)
    X = rng.random((30, 3))
    labels = (rng.random((30, 2)) > 0.5).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dense = MLPClassifier(**PLAIN_SGD).fit(X, labels)
        got = MLPClassifier(**PLAIN_SGD).fit(X, sparse.csr_matrix(labels))
        assert _max_weight_diff(dense, got) == 0
        with pytest.raises(TypeError, match=r"y is a scipy.sparse matrix.*toarray"):
            MLPRegressor(**PLAIN_SGD).fit(X, sparse.csr_matrix(rng.random((30, 2))))


@pytest.mark.parametrize("first, change", [
    (dict(solver="adam", learning_rate_init=0.001), dict(learning_rate_init=0.5)),
    (dict(solver="adam"), dict(beta_1=0.5, beta_2=0.9, epsilon=1e-3)),
    (dict(solver="sgd", momentum=0.9), dict(momentum=0.1, nesterovs_momentum=False)),
    (dict(solver="sgd", learning_rate="invscaling"), dict(power_t=0.9, learning_rate="constant")),
    (dict(solver="sgd", learning_rate_init=0.05), dict(solver="adam", learning_rate_init=0.5)),
])
def test_partial_fit_keeps_the_optimizer_settings_until_the_next_fit(first, change,
                                                                     monkeypatch):
    # scikit-learn's optimizer takes its settings when made (fit, or the first
    # partial_fit); set_params between partial_fit calls changes them at the next fit
    from sklearn.neural_network import _stochastic_optimizers
    monkeypatch.setattr(_stochastic_optimizers.AdamOptimizer, "_get_updates",
                        _paper_adam_updates)
    X, y = _targets("multi-class")
    params = dict(PLAIN_SGD, **first)
    fitted = []
    for cls in (skn.MLPClassifier, MLPClassifier):
        est = cls(**params)
        est.partial_fit(X, y, classes=np.unique(y))
        est.set_params(**change)
        for _ in range(3):
            est.partial_fit(X, y)
        fitted.append(est)
    ref, got = fitted
    assert _max_weight_diff(ref, got) <= TOL
    if type(ref._optimizer).__name__ == "SGDOptimizer":  # (the patched Adam keeps its rate)
        assert got._optimizer.learning_rate == pytest.approx(ref._optimizer.learning_rate,
                                                             rel=1e-12)
    for est in fitted:  # a fit makes a new optimizer with the new settings
        est.fit(X, y)
    assert _max_weight_diff(*fitted) <= TOL


# ---- the label fast paths: scikit-learn's functions, the same arrays ----------------------
LABEL_SETS = {
    "int_multiclass": np.array([3, 1, 2, 3, 1, 7, 2]),
    "int_binary": np.array([5, 9, 9, 5, 5]),
    "bool": np.array([True, False, False, True]),
    "str_multiclass": np.array(["cat", "dog", "emu", "dog"]),
    "str_binary": np.array(["no", "yes", "yes"]),
    "uint": np.array([0, 2, 1, 2], dtype=np.uint8),
    "str_wide": np.array(["a", "bb", "a", "c"], dtype="<U10"),  # wider than its labels
    "float_labels": np.array([0.0, 1.0, 2.0, 1.0]),         # scikit-learn's own path
    "object_labels": np.array(["a", "b", "a"], dtype=object),  # likewise
}
# (y, the classes the binarizer was fit on): y's dtype cannot hold every class, or bool
# labels against integer classes -- scikit-learn casts the classes to y's dtype (and
# wraps them): its own functions then, for the same arrays
LABEL_MISMATCHES = {
    "uint8_negative_class": (np.array([0, 0, 1], dtype=np.uint8), [-256, 0, 1]),
    "int8_large_class": (np.array([1, 2, 1], dtype=np.int8), [1, 2, 300]),
    "bool_int_classes": (np.array([True, False, True]), [0, 1, 2]),
}


@pytest.mark.parametrize("name", sorted(LABEL_SETS))
def test_label_fast_paths_equal_sklearns_functions(name):
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils.multiclass import unique_labels
    from fastbp.sklearn import _binarized, _decoded, _labels_of
    y = LABEL_SETS[name]
    lb = LabelBinarizer().fit(y)
    for batch in (y, y[:2], y[::-1]):
        labels = _labels_of(batch, lb)
        expected = unique_labels(batch)
        assert labels.dtype == expected.dtype and np.array_equal(labels, expected)
        Y = _binarized(lb, batch)
        assert Y.dtype == bool and np.array_equal(Y, lb.transform(batch).astype(bool))
    rng = np.random.default_rng(0)
    k = len(lb.classes_)
    out = rng.random((6, 1 if k == 2 else k))
    out[0] = np.nan  # argmax and > 0.5 of NaN as numpy gives them, in both
    out[1] = 0.5     # a tie, and the binary threshold itself
    out = out.ravel() if k == 2 else out
    decoded, expected = _decoded(lb, out), lb.inverse_transform(out)
    assert decoded.dtype == expected.dtype and np.array_equal(decoded, expected)


@pytest.mark.parametrize("name", sorted(LABEL_MISMATCHES))
def test_labels_of_another_kind_than_the_classes_take_sklearns_functions(name):
    from sklearn.preprocessing import LabelBinarizer
    from fastbp.sklearn import _binarized, _plain_labels
    y, classes = LABEL_MISMATCHES[name]
    lb = LabelBinarizer().fit(classes)
    assert not _plain_labels(y, lb)
    np.testing.assert_array_equal(_binarized(lb, y), lb.transform(y).astype(bool))


def test_partial_fit_with_an_unknown_label_is_sklearns_error():
    X = np.random.default_rng(0).normal(size=(6, 3))
    for cls in (MLPClassifier, skn.MLPClassifier):
        est = cls(random_state=0).partial_fit(X, [0, 1, 2, 0, 1, 2], classes=[0, 1, 2])
        with pytest.raises(ValueError, match="`y` has classes not in `self.classes_`"):
            est.partial_fit(X, [0, 1, 3, 0, 1, 2])
        est = cls(random_state=0).partial_fit(X, ["a", "b"] * 3, classes=["a", "b"])
        with pytest.raises(ValueError, match="`y` has classes not in `self.classes_`"):
            est.partial_fit(X, ["a", "c"] * 3)


def test_a_stop_on_n_iter_no_change_checks_the_state_it_stops_in():
    """scikit-learn's own stop (n_iter_no_change) leaves the estimator in a state no
    record holds, as max_iter does: both check it, so the same state gives the same
    outcome -- scikit-learn's ValueError for non-finite weights -- however the fit
    stopped.  Before, the n_iter_no_change stop returned with predictions that raise."""
    from fastbp.sklearn import MLPRegressor
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 2)) * 5
    y = X.sum(axis=1) * 10

    def est(max_iter):
        return MLPRegressor(hidden_layer_sizes=(6,), activation="relu", solver="sgd",
                            batch_size=30, momentum=0.0, learning_rate_init=0.4729,
                            n_iter_no_change=3, tol=1e-4, max_iter=max_iter, shuffle=False,
                            random_state=0)

    for max_iter in (5, 200):  # 200: the loss stops improving at the same 5th epoch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError, match="non-finite parameter weights"):
                est(max_iter).fit(X, y)


# ------------------------------------------------------- predict's plain inputs
@pytest.fixture(scope="module")
def fitted_pair():
    X, Y = _data(n=40, d=4, k=2)
    reg = MLPRegressor(hidden_layer_sizes=(5,), max_iter=5, random_state=0).fit(X, Y)
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=5, random_state=0).fit(
        X, (Y[:, 0] > 0).astype(int))
    return X, reg, clf


@pytest.mark.parametrize("method", ["predict", "predict_proba", "predict_log_proba"])
def test_plain_ndarray_inputs_predict_what_validated_inputs_do(fitted_pair, method):
    """The same outputs as for the same values given as lists (which go through
    scikit-learn's validate_data), for C-ordered, Fortran-ordered and strided arrays."""
    X, reg, clf = fitted_pair
    for est in (reg, clf):
        if not hasattr(est, method):
            continue
        for given in (X, X[:1], np.asfortranarray(X), X[::2], X[:, ::-1][:, ::-1]):
            np.testing.assert_array_equal(getattr(est, method)(given),
                                          getattr(est, method)(given.tolist()))


@pytest.fixture
def validate_data_calls(monkeypatch):
    """A list that gets an entry at each call of scikit-learn's validate_data by the
    wrappers."""
    import fastbp.sklearn as FS
    calls = []
    original = FS._validate_data

    def counting(*args, **kw):
        calls.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(FS, "_validate_data", counting)
    return calls


def test_plain_ndarray_inputs_skip_validate_data(fitted_pair, validate_data_calls):
    """An ndarray scikit-learn's validate_data would return as it is does not go
    through it (most of a small predict's time); the rest still does."""
    X, reg, clf = fitted_pair
    calls = validate_data_calls
    reg.predict(X)
    clf.predict_proba(X[:3])
    assert calls == []
    reg.predict(X.astype(np.float32))  # another dtype: converted by validate_data
    reg.predict(X.tolist())
    assert len(calls) == 2


def test_inputs_predict_refuses_are_refused_with_sklearns_errors(fitted_pair):
    X, reg, clf = fitted_pair
    for est in (reg, clf):
        bad = X.copy()
        bad[1, 2] = np.nan
        with pytest.raises(ValueError, match="Input X contains NaN"):
            est.predict(bad)
        bad[1, 2] = np.inf
        with pytest.raises(ValueError, match="Input X contains infinity"):
            est.predict(bad)
        with pytest.raises(ValueError, match="X has 3 features, but .* is expecting 4"):
            est.predict(X[:, :3])
        with pytest.raises(ValueError, match="0 sample"):
            est.predict(X[:0])
        with pytest.raises(ValueError, match="Expected 2D array"):
            est.predict(X[0])


def test_feature_names_are_checked_for_plain_ndarray_inputs(fitted_pair):
    pd = pytest.importorskip("pandas")
    X, _, _ = fitted_pair
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    named = MLPRegressor(hidden_layer_sizes=(5,), max_iter=5, random_state=0).fit(
        frame, X[:, 0])
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        named.predict(X)
    X_est = MLPRegressor(hidden_layer_sizes=(5,), max_iter=5, random_state=0).fit(
        X, X[:, 0])
    with pytest.warns(UserWarning, match="has feature names, but"):
        X_est.predict(frame)


def test_partial_fit_on_plain_arrays_skips_validate_data_with_the_same_results(
        validate_data_calls):
    """A fit that continues (partial_fit) on plain arrays takes them as validate_data
    would return them, without it; the same values as lists take validate_data, and
    both runs end with the same bits."""
    X, Y = _data(n=40, d=4, k=2)
    labels = (Y[:, 0] > 0).astype(int)
    calls = validate_data_calls
    for make, targets in ((MLPRegressor, Y), (MLPRegressor, Y[:, 0]),
                          (MLPClassifier, labels), (MLPClassifier, labels.astype(bool)),
                          (MLPClassifier, np.array(["a", "b"])[labels])):
        plain = make(hidden_layer_sizes=(5,), random_state=0)
        listed = make(hidden_layer_sizes=(5,), random_state=0)
        extra = {} if make is MLPRegressor else {"classes": np.unique(targets)}
        plain.partial_fit(X[:10], targets[:10], **extra)
        listed.partial_fit(X[:10].tolist(), targets[:10].tolist(), **extra)
        calls.clear()
        for s in range(10, 40, 10):
            plain.partial_fit(X[s:s + 10], targets[s:s + 10])
        assert calls == []
        for s in range(10, 40, 10):
            listed.partial_fit(X[s:s + 10].tolist(), targets[s:s + 10].tolist())
        assert len(calls) == 3
        for a, b in zip(plain.coefs_ + plain.intercepts_, listed.coefs_ + listed.intercepts_):
            np.testing.assert_array_equal(a, b)


def test_partial_fit_refuses_bad_inputs_with_sklearns_errors():
    X, Y = _data(n=40, d=4, k=1)
    y = Y[:, 0]
    reg = MLPRegressor(hidden_layer_sizes=(5,), random_state=0).partial_fit(X, y)
    clf = MLPClassifier(hidden_layer_sizes=(5,), random_state=0).partial_fit(
        X, (y > 0).astype(int), classes=[0, 1])
    bad = X.copy()
    bad[0, 0] = np.nan
    for est, targets in ((reg, y), (clf, (y > 0).astype(int))):
        with pytest.raises(ValueError, match="Input X contains NaN"):
            est.partial_fit(bad, targets)
        with pytest.raises(ValueError, match="X has 3 features, but .* is expecting 4"):
            est.partial_fit(X[:, :3], targets)
        with pytest.raises(ValueError, match="inconsistent numbers of samples"):
            est.partial_fit(X, targets[:-1])
    with pytest.raises(ValueError, match="Input y contains NaN"):
        reg.partial_fit(X, np.where(y > 0, np.nan, y))
