"""The golden cases: fits whose exact results (every bit of the parameters, histories,
optimizer and generator states) were recorded from the kernels before they were
restructured around one definition of the math (``make_goldens.py`` wrote
``goldens.npz``).  ``tests/test_goldens.py`` reruns every case and compares bits: a
kernel change that alters any sum's order or any rounding shows up here.

Each case is small (a few epochs of a few samples) but together they reach every
training path: full batch, mini-batch and per-sample; the plain rule, momentum,
Nesterov, Adam, L2 and the schedules; every activation and loss; sample weights;
validation with early stopping; networks narrow enough for the generated kernels and
wide enough for the matrix products; ensembles (lanes across models); float64 and
float32; divergence and its rewind.
"""
import warnings

import numpy as np

import fastbp


def _data(n, n_in, n_out, kind="reg", seed=0):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, n_in))
    if kind == "prob":
        y = r.uniform(0.05, 0.95, size=(n, n_out))
    elif kind == "classes":
        y = r.integers(0, n_out, size=n)
    elif kind == "binary":
        y = (X[:, :n_out] > 0).astype(float)
    else:
        y = r.normal(size=(n, n_out))
    return X, y


def _xor():
    inputs, labels = [], []
    for i in range(11):
        inputs.append([0.1 * i, 0.1 * i])
        labels.append(0)
        if 0.1 * i == 0.5:
            continue
        inputs.append([0.1 * i, 1 - 0.1 * i])
        labels.append(1)
    return np.array(inputs), np.array(labels, dtype=float).reshape(21, 1)


def _mlp_cases():
    """name -> (MLP kwargs, (X, y), fit kwargs)."""
    xor = _xor()
    cases = {
        "xor_full_short": (dict(sizes=[2, 4, 4, 1], loss="sse", seed=0), xor,
                           dict(epochs=300, lr=0.5)),
        # enough work for the generated full-batch kernel (kernels/specialize.py)
        "xor_full_long": (dict(sizes=[2, 4, 4, 1], loss="sse", seed=0), xor,
                          dict(epochs=6000, lr=0.1, record_every=7)),
        "nobias_full": (dict(sizes=[2, 3, 3, 1], bias=False, loss="sse", seed=1), xor,
                        dict(epochs=200, lr=0.3)),
        "net222_full_momentum": (dict(sizes=[2, 2, 2], loss="mse", seed=2),
                                 _data(11, 2, 2, "prob"),
                                 dict(epochs=150, lr=0.2, momentum=0.9, nesterov=True)),
        "relu_reg_full_adam": (dict(sizes=[1, 10, 1], activation=["relu", "identity"],
                                    loss="mse", init="normal", seed=3),
                               _data(30, 1, 1), dict(epochs=200, lr=0.01, optimizer="adam",
                                                     schedule="cosine", lr_min=1e-4)),
        "tanh_full_l2_step": (dict(sizes=[3, 6, 2], activation=["tanh", "identity"],
                                   loss="half_mse", init="xavier", seed=4),
                              _data(17, 3, 2), dict(epochs=120, lr=0.05, l2=0.01,
                                                    schedule="step", step_size=30)),
        "bce_full_weighted": (dict(sizes=[4, 5, 2], loss="bce", init="normal", seed=5),
                              _data(13, 4, 2, "prob"),
                              dict(epochs=100, lr=0.5,
                                   sample_weight=np.linspace(0.2, 2.0, 13))),
        "softmax_full": (dict(sizes=[3, 7, 4], activation=["tanh", "softmax"],
                              loss="cross_entropy", init="he", seed=6),
                         _data(19, 3, 4, "classes"), dict(epochs=80, lr=0.3)),
        "minibatch_sigmoid": (dict(sizes=[3, 8, 2], loss="mse", init="normal", seed=7),
                              _data(23, 3, 2), dict(epochs=20, lr=0.3, batch_size=5,
                                                    shuffle=True, seed=11)),
        "minibatch_relu_adam_invscaling": (
            dict(sizes=[4, 9, 9, 3], activation=["relu", "relu", "identity"],
                 init="he", seed=8), _data(37, 4, 3),
            dict(epochs=15, lr=0.01, batch_size=8, shuffle=True, optimizer="adam",
                 schedule="invscaling", power_t=0.3, epoch_loss="sample_mean", l2=1e-3)),
        "minibatch_softmax_momentum": (
            dict(sizes=[5, 12, 3], activation=["sigmoid", "softmax"], loss="cross_entropy",
                 init="xavier", seed=9), _data(29, 5, 3, "classes"),
            dict(epochs=12, lr=0.2, batch_size=6, shuffle=True, momentum=0.8)),
        "minibatch_bce_weighted": (
            dict(sizes=[3, 6, 1], loss="bce", init="normal", seed=10),
            _data(21, 3, 1, "binary"),
            dict(epochs=10, lr=0.4, batch_size=4, shuffle=True,
                 sample_weight=np.linspace(0.5, 1.5, 21))),
        "per_sample_xor": (dict(sizes=[2, 4, 4, 1], loss="sse", seed=12), xor,
                           dict(epochs=60, lr=0.5, batch_size=1, shuffle=True, seed=3)),
        # enough work for the generated per-sample kernel
        "per_sample_xor_long": (dict(sizes=[2, 4, 4, 1], loss="sse", seed=12), xor,
                                dict(epochs=3000, lr=0.5, batch_size=1, shuffle=True,
                                     seed=3, record_every=10)),
        "per_sample_admissions_like": (dict(sizes=[6, 2, 1], loss="mse", seed=13),
                                       _data(40, 6, 1, "binary"),
                                       dict(epochs=30, lr=0.2, batch_size=1)),
        "per_sample_momentum_bce": (dict(sizes=[3, 5, 2], loss="bce", init="normal",
                                         seed=14), _data(15, 3, 2, "prob"),
                                    dict(epochs=25, lr=0.1, batch_size=1, shuffle=True,
                                         momentum=0.9, sample_weight=np.linspace(1, 2, 15))),
        "per_sample_adam_tanh": (dict(sizes=[3, 7, 2], activation=["tanh", "identity"],
                                      loss="half_mse", init="xavier", seed=15),
                                 _data(15, 3, 2), dict(epochs=20, lr=0.01, batch_size=1,
                                                       optimizer="adam", l2=1e-2)),
        # rows of 40 units: the 16-lane sums of the per-sample path (kernels/simd.py)
        "per_sample_wide": (dict(sizes=[16, 40, 40, 3], init="normal", seed=16),
                            _data(24, 16, 3), dict(epochs=4, lr=0.1, batch_size=1,
                                                   shuffle=True)),
        # layers wide enough for the matrix products (kernels/tiles.py)
        "products_plain": (dict(sizes=[16, 48, 48, 4], init="normal", seed=17),
                           _data(70, 16, 4), dict(epochs=4, lr=0.2, batch_size=32,
                                                  shuffle=True)),
        "products_adam_relu": (dict(sizes=[20, 40, 24, 5],
                                    activation=["relu", "relu", "softmax"],
                                    loss="cross_entropy", init="he", seed=18),
                               _data(90, 20, 5, "classes"),
                               dict(epochs=3, lr=0.01, batch_size=30, shuffle=True,
                                    optimizer="adam")),
        "products_full": (dict(sizes=[16, 48, 8], activation=["tanh", "identity"],
                               init="xavier", seed=19), _data(64, 16, 8),
                          dict(epochs=10, lr=0.05)),
        "validation_early_stop": (dict(sizes=[3, 8, 1], init="normal", seed=20),
                                  _data(50, 3, 1),
                                  dict(epochs=60, lr=0.5, batch_size=10, shuffle=True,
                                       validation_fraction=0.3, patience=3,
                                       restore_best=True, seed=5)),
        "validation_data_full": (dict(sizes=[2, 5, 1], init="normal", seed=21),
                                 _data(20, 2, 1),
                                 dict(epochs=40, lr=0.3, record_every=3,
                                      validation_data=_data(9, 2, 1, seed=9))),
        "diverging_rewind": (dict(sizes=[2, 6, 1], activation=["relu", "identity"],
                                  init="normal", seed=22), _data(16, 2, 1),
                             dict(epochs=400, lr=3.0, on_divergence="warn")),
    }
    out = {}
    for name, (mk, data, fk) in cases.items():
        out[name] = (mk, data, fk)
        if "products" in name or name in ("xor_full_short", "minibatch_sigmoid",
                                          "per_sample_xor", "softmax_full",
                                          "per_sample_momentum_bce"):
            out[name + "_f32"] = (dict(mk, dtype="float32"), data, fk)
    return out


MLP_CASES = _mlp_cases()


def run_mlp_case(name):
    """Train case ``name``; a dict of arrays (parameters, states, histories, outputs)."""
    mk, (X, y), fk = MLP_CASES[name]
    mk = dict(mk)
    m = fastbp.MLP(mk.pop("sizes"), **mk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hist = m.fit(X, y, **fk)
        second = m.fit(X, y, **dict(fk, epochs=max(1, fk["epochs"] // 3), seed=None))
    out = {"params": m.params.copy(), "loss": hist.loss, "loss2": second.loss,
           "epochs": np.array([hist.epochs, second.epochs]),
           "rng": m._rng_state.copy(), "opt_step": m._opt_step.copy(),
           "opt_state": m._opt_state.copy(), "predict": m.predict(X)}
    if hist.val_loss is not None:
        out["val_loss"] = hist.val_loss
    if m.loss_name != "cross_entropy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                dw, db = m.gradient(X, y)
                out["grad"] = np.concatenate([w.ravel() for w in dw] +
                                             ([b.ravel() for b in db] if db else []))
            except FloatingPointError:
                pass
    return out


ENSEMBLE_CASES = {
    # full batch, shared data, plain rule: the lanes across models (kernels/lanes.py)
    "ensemble_xor_lanes": (dict(sizes=[2, 4, 4, 1], n_models=16, loss="sse", seed=0),
                           _xor(), dict(epochs=150, lr=0.5)),
    "ensemble_minibatch": (dict(sizes=[3, 6, 2], n_models=5, init="normal", seed=1),
                           _data(20, 3, 2), dict(epochs=8, lr=[0.1, 0.2, 0.3, 0.4, 0.5],
                                                 batch_size=4, shuffle=True)),
    "ensemble_per_sample": (dict(sizes=[2, 4, 1], n_models=3, init="normal", seed=2),
                            _data(12, 2, 1), dict(epochs=10, lr=0.2, batch_size=1,
                                                  shuffle=True)),
}


def run_ensemble_case(name):
    mk, (X, y), fk = ENSEMBLE_CASES[name]
    mk = dict(mk)
    e = fastbp.Ensemble(mk.pop("sizes"), **mk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hist = e.fit(X, y, **fk)
    return {"params": e.params.copy(), "loss": np.asarray(hist.loss),
            "rng": e._rng_states.copy(), "predict": e.predict(X)}




SKLEARN_CASES = {
    # scikit-learn's defaults but small: adam, relu, softmax output
    "sklearn_classifier_adam": ("MLPClassifier", dict(hidden_layer_sizes=(12,), max_iter=6,
                                                      random_state=0, batch_size=16),
                                _data(60, 5, 3, "classes")),
    "sklearn_regressor_sgd": ("MLPRegressor", dict(hidden_layer_sizes=(9, 7), solver="sgd",
                                                   activation="tanh", momentum=0.9,
                                                   max_iter=5, random_state=1,
                                                   batch_size=10, alpha=1e-3),
                              _data(40, 4, 2)),
    "sklearn_classifier_early_stopping": ("MLPClassifier",
                                          dict(hidden_layer_sizes=(10,), max_iter=8,
                                               random_state=2, early_stopping=True,
                                               n_iter_no_change=2),
                                          _data(80, 4, 2, "binary")),
}


def run_sklearn_case(name):
    from fastbp import sklearn as FS
    cls, kw, (X, y) = SKLEARN_CASES[name]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim == 2:  # binary kind with 2 columns: a multilabel problem is not wanted here
        y = y[:, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = getattr(FS, cls)(**kw).fit(X, y)
    out = {"coef_" + str(i): c for i, c in enumerate(est.coefs_)}
    out.update({"intercept_" + str(i): b for i, b in enumerate(est.intercepts_)})
    out["loss_curve"] = np.array(est.loss_curve_)
    out["predict"] = np.asarray(est.predict(X), dtype=float)
    return out


def run_case(name):
    if name in MLP_CASES:
        return run_mlp_case(name)
    if name in ENSEMBLE_CASES:
        return run_ensemble_case(name)
    return run_sklearn_case(name)


ALL_CASES = list(MLP_CASES) + list(ENSEMBLE_CASES) + list(SKLEARN_CASES)
