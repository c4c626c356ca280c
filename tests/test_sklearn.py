"""fastbp.sklearn: scikit-learn's estimator checks, trajectory parity with scikit-learn's
own MLP, and the meta-estimators (Pipeline, GridSearchCV, cross_val_score, pickling)."""
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
@parametrize_with_checks([MLPRegressor(max_iter=100), MLPClassifier(max_iter=100)],
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
    ref, got = _fit_both(kind, activation="relu", **dict(PLAIN_SGD, alpha=0.5))
    assert _max_weight_diff(ref, got) <= TOL
    if kind != "multi-output":  # see the module notes: the penalty in loss_ differs there
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
    _assert_same_run(ref, got, loss_curve=kind != "multi-output")


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
    (dict(solver="lbfgs"), "lbfgs.*not available"),
    (dict(solver="newton"), "solver must be 'sgd' or 'adam'"),
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


def test_poisson_and_sparse_are_refused():
    X, y = _targets("regression")
    with pytest.raises(ValueError, match="poisson"):
        MLPRegressor(loss="poisson").fit(X, np.abs(y))
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="dense"):
        MLPRegressor().fit(sparse.csr_matrix(X), y)


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


def test_import_error_names_the_extra():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "try:\n    import fastbp.sklearn\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert 'pip install "fastbp[sklearn]"' in out
