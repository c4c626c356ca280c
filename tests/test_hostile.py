"""Hostile input: every call either succeeds with finite results or raises a documented
exception (ValueError / TypeError for bad input, DivergenceError for a run that blew up,
FloatingPointError for outputs that overflow) -- never a crash inside a kernel, never a
model with NaN parameters, never a caller's array written to."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import fastbp
from fastbp.kernels import generate as GEN
from fastbp.kernels import loops as L

BAD = (ValueError, TypeError)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(12, 3)), rng.normal(size=(12, 2))


def _model(dtype="float64", **kw):
    kw = dict(dict(activation=["tanh", "identity"], init="normal", seed=0), **kw)
    return fastbp.MLP([3, 4, 2], dtype=dtype, **kw)


def _all_entry_points(m, X, y):
    """predict / loss / gradient / fit results on (X, y), in that order."""
    out = [m.predict(X), m.loss(X, y)]
    gw, gb = m.gradient(X, y)
    out += [np.concatenate([g.ravel() for g in gw + gb])]
    h = m.fit(X, y, epochs=4, lr=0.05, batch_size=5, shuffle=True, seed=1)
    out += [h.loss, m.params.copy()]
    h = m.fit(X, y, epochs=2, lr=0.05, batch_size=1, shuffle=True, seed=2)  # per-sample path
    return out + [h.loss, m.params.copy()]


def _assert_same(a, b):
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


# ------------------------------------------------------------ refused outright


@pytest.mark.parametrize("bad, exc, match", [
    (lambda X: X.astype(object), TypeError, "dtype object"),
    (lambda X: np.array([[1.0, None, 2.0]] * 12, dtype=object), TypeError, "dtype object"),
    (lambda X: X.astype(str), TypeError, "dtype <U"),
    (lambda X: X.astype("S8"), TypeError, "dtype"),
    (lambda X: "1 2 3", TypeError, "string"),
    (lambda X: b"\x00\x01\x02", TypeError, "string"),
    (lambda X: X.astype(complex), TypeError, "complex"),
    (lambda X: X.astype(np.complex64), TypeError, "complex"),
    (lambda X: X.astype("datetime64[s]"), TypeError, "dtype"),
    (lambda X: None, TypeError, "dtype object"),
    (lambda X: {"a": 1}, TypeError, "dtype object"),
    (lambda X: [[1.0, 2.0, 3.0], [1.0, 2.0]], ValueError, "could not be read"),
    (lambda X: X[None], ValueError, "2-D"),
    (lambda X: X[:, :, None], ValueError, "2-D"),
    (lambda X: 3.0, ValueError, "2-D"),
    (lambda X: X[:0], ValueError, "empty"),
    (lambda X: X[:, :2], ValueError, "features"),
    (lambda X: np.where(X > 1, np.nan, X), ValueError, "NaN or infinity"),
    (lambda X: np.where(X > 1, -np.inf, X), ValueError, "NaN or infinity"),
    (lambda X: np.where(X > 1, 1e300, X), ValueError, "too large for float32"),
    (lambda X: np.where(X > 1, 1e39, X).astype(np.longdouble), ValueError, "too large"),
])
@pytest.mark.parametrize("entry", ["fit", "predict", "loss", "gradient"])
def test_bad_X_is_refused(data, bad, exc, match, entry):
    X, y = data
    m = _model("float32")
    p0 = m.params.copy()
    Xb = bad(X)
    call = {"fit": lambda: m.fit(Xb, y, epochs=2), "predict": lambda: m.predict(Xb),
            "loss": lambda: m.loss(Xb, y), "gradient": lambda: m.gradient(Xb, y)}[entry]
    with pytest.raises(exc, match=match):
        call()
    np.testing.assert_array_equal(m.params, p0)


@pytest.mark.parametrize("bad, exc, match", [
    (lambda y: y.astype(object), TypeError, "dtype object"),
    (lambda y: y.astype(complex), TypeError, "complex"),
    (lambda y: y.astype(str), TypeError, "dtype"),
    (lambda y: y[:, :, None], ValueError, "1-D or 2-D"),
    (lambda y: y[:5], ValueError, "numbers of samples"),
    (lambda y: y[:, 0], ValueError, "1-D but the model has 2 outputs"),
    (lambda y: np.where(y > 1, np.inf, y), ValueError, "NaN or infinity"),
    (lambda y: np.where(y > 1, 1e39, y), ValueError, "too large for float32"),
])
@pytest.mark.parametrize("entry", ["fit", "loss", "gradient"])
def test_bad_y_is_refused(data, bad, exc, match, entry):
    X, y = data
    m = _model("float32")
    p0 = m.params.copy()
    yb = bad(y)
    call = {"fit": lambda: m.fit(X, yb, epochs=2), "loss": lambda: m.loss(X, yb),
            "gradient": lambda: m.gradient(X, yb)}[entry]
    with pytest.raises(exc, match=match):
        call()
    np.testing.assert_array_equal(m.params, p0)


@pytest.mark.parametrize("sizes, exc", [
    ([3, 0, 2], ValueError), ([3, -4, 2], ValueError), ([0, 2], ValueError), ([3], ValueError),
    ([], ValueError), ([3, 2.0], TypeError), ([3, "4", 2], TypeError), ([True, 2], TypeError),
    (5, TypeError), ("32", TypeError), ([3, None], TypeError),
])
def test_bad_sizes(sizes, exc):
    with pytest.raises(exc, match="sizes"):
        fastbp.MLP(sizes)


@pytest.mark.parametrize("bias", ["False", "no", None, 2, 0.0])
def test_bias_must_be_a_bool(bias):
    """bias="False" is a non-empty string: taken as truthy it would build biases."""
    for make in (lambda: fastbp.MLP([2, 3, 1], bias=bias),
                 lambda: fastbp.Ensemble([2, 3, 1], 2, bias=bias)):
        with pytest.raises(TypeError, match="bias must be True or False"):
            make()
    assert fastbp.MLP([2, 3, 1], bias=np.False_).bias is False
    assert fastbp.MLP([2, 3, 1], bias=0).bias is False


@pytest.mark.parametrize("kw, exc, match", [
    (dict(epochs=0), ValueError, "epochs"), (dict(epochs=-3), ValueError, "epochs"),
    (dict(epochs=2.0), TypeError, "epochs"), (dict(epochs="10"), TypeError, "epochs"),
    (dict(lr=0), ValueError, "lr"), (dict(lr=-0.1), ValueError, "lr"),
    (dict(lr=np.nan), ValueError, "lr"), (dict(lr=np.inf), ValueError, "lr"),
    (dict(lr="0.1"), TypeError, "lr"), (dict(lr=1j), TypeError, "lr"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=13), ValueError, "batch_size"),
    (dict(batch_size=2.5), TypeError, "batch_size"),
    (dict(batch_size=True), TypeError, "batch_size"),
    (dict(record_every=0), ValueError, "record_every"), (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"), (dict(on_divergence="ignore"), ValueError, "on_divergence"),
])
def test_bad_arguments(data, kw, exc, match):
    X, y = data
    m = _model()
    p0, r0 = m.params.copy(), m._rng_state.copy()
    with pytest.raises(exc, match=match):
        m.fit(X, y, **kw)
    np.testing.assert_array_equal(m.params, p0)
    np.testing.assert_array_equal(m._rng_state, r0)


# --------------------------------------------------------------- converted, once


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["int8", "uint8", "int64", "uint64", "float16", "float32",
                                  "float64", ">f8", "<f4", "longdouble"])
def test_real_dtypes_are_converted(kind, dtype):
    """Any real dtype works and gives exactly what the data converted to the model dtype
    gives (float32 data for a float64 model, float64 data for a float32 model, ...)."""
    rng = np.random.default_rng(3)
    X = rng.integers(0, 5, size=(12, 3)).astype(kind)
    y = rng.integers(0, 3, size=(12, 2)).astype(kind)
    got = _all_entry_points(_model(dtype), X, y)
    want = _all_entry_points(_model(dtype), X.astype(dtype), y.astype(dtype))
    _assert_same(got, want)
    assert got[0].dtype == np.dtype(dtype)


def test_float32_data_for_a_float64_model_is_converted_exactly():
    rng = np.random.default_rng(4)
    X32, y32 = rng.normal(size=(12, 3)).astype(np.float32), rng.normal(size=(12, 2)).astype(
        np.float32)
    _assert_same(_all_entry_points(_model("float64"), X32, y32),
                 _all_entry_points(_model("float64"), X32.astype(np.float64),
                                   y32.astype(np.float64)))


def test_booleans_are_zero_and_one():
    rng = np.random.default_rng(5)
    X = rng.random((12, 3)) > 0.5
    y = rng.random((12, 2)) > 0.5
    _assert_same(_all_entry_points(_model(), X, y),
                 _all_entry_points(_model(), X.astype(float), y.astype(float)))


def test_lists_are_arrays(data):
    X, y = data
    _assert_same(_all_entry_points(_model(), X.tolist(), y.tolist()),
                 _all_entry_points(_model(), X, y))


@pytest.mark.parametrize("layout", ["fortran", "strided", "reversed", "readonly",
                                    "readonly-fortran", "unaligned", "broadcast"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_memory_layouts(layout, dtype):
    """Fortran-ordered, strided, read-only, unaligned and broadcast arrays give the
    results of a plain C array, are never written to, and compile nothing new."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(12, 3)).astype(dtype)
    y = rng.normal(size=(12, 2)).astype(dtype)
    if layout == "fortran":
        Xh, yh = np.asfortranarray(X), np.asfortranarray(y)
    elif layout == "strided":
        big_x, big_y = np.repeat(X, 2, axis=0), np.repeat(y, 2, axis=0)
        Xh, yh = big_x[::2], big_y[::2]
    elif layout == "reversed":  # negative strides, same values
        Xh = np.flip(np.flip(X, 1).copy(), 1)
        yh = np.flip(np.flip(y, 0).copy(), 0)
    elif layout.startswith("readonly"):
        Xh = np.asfortranarray(X) if layout.endswith("fortran") else X.copy()
        yh = np.asfortranarray(y) if layout.endswith("fortran") else y.copy()
        Xh.flags.writeable = False
        yh.flags.writeable = False
    elif layout == "unaligned":
        def unaligned(a):
            buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
            u = buf[1:].view(a.dtype).reshape(a.shape)
            u[...] = a
            return u
        Xh, yh = unaligned(X), unaligned(y)
        assert not Xh.flags.aligned
    elif layout == "broadcast":
        X = np.broadcast_to(X[:1], X.shape).copy()
        Xh, yh = np.broadcast_to(X[:1], X.shape), y
    want = _all_entry_points(_model(dtype), X.copy(), y.copy())
    n_sigs = _compiled_signatures()
    X0, y0 = np.array(Xh), np.array(yh)
    got = _all_entry_points(_model(dtype), Xh, yh)
    _assert_same(got, want)
    np.testing.assert_array_equal(Xh, X0)
    np.testing.assert_array_equal(yh, y0)
    assert _compiled_signatures() == n_sigs


def _compiled_signatures():
    """Signatures compiled so far of every entry a fit, predict, loss or gradient can run:
    the general training entries, the generated ones (and their L-BFGS evaluations), the
    generated predicts, predict and loss_and_gradient."""
    entries = {("train",) + key: fn for key, fn in L._trainers.items()}
    for key, module in GEN._loaded.items():  # the generated modules' entries
        for name in ("train", "loss_and_gradient", "predict"):  # (L-BFGS's: full batch)
            if hasattr(module, name):
                entries[key + (name,)] = getattr(module, name)
    entries["predict"], entries["loss_and_gradient"] = L.predict, L.loss_and_gradient
    return {key: len(fn.signatures) for key, fn in entries.items()}


def test_huge_but_representable_data(data):
    """1e300 fits in float64 but overflows inside the network: fit says the data are too
    large (not 'lower the learning rate'); predict refuses to return infinities."""
    X, y = data
    m = _model("float64", activation="identity")
    Xh = X * 1e300
    with pytest.raises(fastbp.DivergenceError, match=r"starting parameters.*too large"):
        m.fit(Xh, y, epochs=3, lr=0.01)
    assert np.isfinite(m.params).all()
    with pytest.raises(FloatingPointError, match="predict.*overflowed float64"):
        fastbp.MLP([3, 4, 2], activation="identity", init=1.0).predict(np.full((4, 3), 1e308))
    with pytest.raises(FloatingPointError, match="loss"):
        m.loss(Xh, y)


@pytest.mark.parametrize("dtype,huge", [("float64", 1e308), ("float32", 3e37)])
def test_ensemble_predict_refuses_outputs_that_overflow(dtype, huge):
    """As MLP.predict: FloatingPointError naming the first model whose outputs overflowed
    (per-model inputs: only model 1's are huge), not infinities."""
    ens = fastbp.Ensemble([3, 4, 2], n_models=3, activation="identity", init=1.0,
                          dtype=dtype)
    X = np.ones((3, 4, 3), dtype=dtype)
    assert np.isfinite(ens.predict(X)).all()
    X[1] = huge
    with pytest.raises(FloatingPointError, match=f"model 1 is not finite.*{dtype}"):
        ens.predict(X)
    X[2] = huge
    with pytest.raises(FloatingPointError, match=r"model 1 \(and 1 more\)"):
        ens.predict(X)


@pytest.mark.parametrize("dtype,huge", [("float64", 1e308), ("float32", 3e37)])
def test_ensemble_loss_of_a_model_that_overflows_is_inf(dtype, huge):
    """Ensemble.loss gives inf for the model whose loss overflows (per-model inputs:
    only model 1's are huge) and the others' own losses; that model alone raises
    FloatingPointError, as MLP.loss does, and best() ranks it last."""
    ens = fastbp.Ensemble([3, 4, 2], n_models=3, activation="identity", init=1.0,
                          dtype=dtype)
    X = np.ones((3, 4, 3), dtype=dtype)
    Y = np.zeros((3, 4, 2), dtype=dtype)
    X[1] = huge
    losses = ens.loss(X, Y)
    assert losses.dtype == np.float64 and losses[1] == np.inf
    for m in (0, 2):
        assert losses[m] == ens[m].loss(X[m], Y[m])
    with pytest.raises(FloatingPointError, match="loss"):
        ens[1].loss(X[1], Y[1])
    assert list(ens.best(3, X, Y))[-1] == 1


def test_loss_is_finite_where_only_its_gradient_overflows():
    """MLP.loss returns a finite loss (as Ensemble.loss does, entry for entry) even where
    the gradient overflows; gradient() refuses that one."""
    ens = fastbp.Ensemble([1, 1, 1, 1], 1, activation=["identity", "identity", "relu"],
                          loss="mse", bias=False, init=0.0)
    ens.params[0] = [1e-307, 1e160, 1e147]  # the output is 10; dloss/dW1 ~ 2e309
    X, y = np.array([[10.0]]), np.array([0.0])
    loss = ens[0].loss(X, y)
    assert loss == pytest.approx(100.0, rel=1e-15) and loss == ens.loss(X, y)[0]
    with pytest.raises(FloatingPointError, match="the gradient is not finite"):
        ens[0].gradient(X, y)


def test_float32_overflow_in_predict():
    m = fastbp.MLP([2, 2, 1], activation="identity", init=10.0, dtype="float32")
    with pytest.raises(FloatingPointError, match="float32"):
        m.predict(np.full((3, 2), 3e37))
    assert np.isfinite(m.predict(np.full((3, 2), 1e30))).all()


def test_nan_written_into_the_parameters_is_refused_by_fit(data):
    X, y = data
    m = _model()
    m.weights[0][1, 2] = np.nan
    with pytest.raises(ValueError, match="parameters contain NaN"):
        m.fit(X, y, epochs=2)
    m.weights[0][1, 2] = 0.5
    m.fit(X, y, epochs=2)
    assert np.isfinite(m.params).all()


def test_params_setter_refuses_non_finite():
    m = _model()
    p = m.params.copy()
    p[0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        m.params = p
    assert np.isfinite(m.params).all()


# ------------------------------------------------------------ property-based

# few architectures (Numba compiles per dtype, not per shape), both dtypes
CONFIGS = [
    dict(sizes=[2, 3, 1], activation="sigmoid", loss="sse", dtype="float64"),
    dict(sizes=[2, 4, 2], activation=["tanh", "identity"], loss="mse", dtype="float32"),
    dict(sizes=[2, 3, 1], activation=["relu", "sigmoid"], loss="bce", dtype="float64"),
    dict(sizes=[2, 3, 3, 2], activation=["relu", "relu", "identity"], loss="half_mse",
         dtype="float32"),
]
SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 1e5, -1e5, 1e30, -1e30, 3e38, 1e300, -1e300,
           np.nan, np.inf, -np.inf]
# weighted towards the dtypes that train; the others must be converted or refused
DTYPES = ["float64"] * 4 + ["float32"] * 2 + ["float16", "int8", "int64", "uint8", "bool",
                                               "complex128", "object"]


@st.composite
def arrays(draw, shape, valid=False):
    dtype = draw(st.sampled_from(DTYPES[:6] if valid else DTYPES))
    size = int(np.prod(shape))
    if dtype in ("int8", "int64", "uint8"):
        info = np.iinfo(dtype)
        vals = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=size,
                             max_size=size))
        return np.array(vals, dtype=dtype).reshape(shape)
    if dtype == "bool":
        return np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)),
                        dtype=bool).reshape(shape)
    regime = draw(st.sampled_from(["clean", "clean", "clean", "special", "scaled"]))
    element = st.floats(-4, 4, allow_nan=False)
    if regime == "special":
        element = st.one_of(st.sampled_from(SPECIAL), element)
    vals = draw(st.lists(element, min_size=size, max_size=size))
    a = np.array(vals, dtype=np.float64).reshape(shape)
    if regime == "scaled":
        a *= draw(st.sampled_from([1e-30, 1e10, 1e30, 1e37, 1e100, 1e300]))
    if dtype == "object":
        return a.astype(object)
    with np.errstate(all="ignore"):
        return a.astype(dtype)


@st.composite
def problems(draw, valid=False):
    """(config, X, y); valid=True: shapes and dtypes that train (values may still be
    huge)."""
    cfg = draw(st.sampled_from(CONFIGS))
    n = draw(st.integers(1, 9))
    n_in, n_out = cfg["sizes"][0], cfg["sizes"][-1]
    if valid:
        x_shape, y_shape = (n, n_in), (n, n_out)
    else:
        x_shape = draw(st.sampled_from([(n, n_in)] * 12 + [(n, n_in + 1), (n,),
                                                           (n, n_in, 1), (0, n_in)]))
        y_shape = draw(st.sampled_from([(n, n_out)] * 12 + [(n + 1, n_out), (n,),
                                                            (n, n_out, 1)]))
    X = draw(arrays(x_shape, valid))
    y = draw(arrays(y_shape, valid))
    if cfg["loss"] == "bce" and y.dtype.kind in "fiub" and draw(st.booleans()):
        with np.errstate(invalid="ignore"):  # targets in [0, 1] (or NaN), as bce needs
            y = np.abs(np.asarray(y, dtype=np.float64)) % 1.0
    return cfg, X, y


ARGS = st.fixed_dictionaries(dict(
    epochs=st.integers(1, 25),
    lr=st.sampled_from([1e-3, 0.1, 1.0, 10.0, 1e3, 1e6, 1e30]),
    batch_size=st.sampled_from([None, None, 1, 2, 3, 5, 9]),
    shuffle=st.booleans(),
    record_every=st.sampled_from([1, 1, 2, 7]),
    seed=st.sampled_from([None, 0, 7]),
    on_divergence=st.sampled_from(["raise", "warn"]),
))

PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(st.one_of(problems(), problems(valid=True)), ARGS)
def test_fit_never_leaves_nan(problem, args):
    cfg, X, y = problem
    m = fastbp.MLP(init="normal", seed=1, **cfg)
    p0 = m.params.copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            h = m.fit(X, y, **args)
        except BAD as exc:
            event(f"refused: {type(exc).__name__}")
            assert str(exc)
            np.testing.assert_array_equal(m.params, p0)  # refused: model untouched
            return
        except fastbp.DivergenceError as exc:
            event("diverged (raised)")
            assert args["on_divergence"] == "raise"
            assert "diverged at epoch" in str(exc)
            h = exc.history
            assert h.epochs < args["epochs"] and exc.epoch >= h.epochs
        else:
            event(f"trained, stopped={h.stopped}")
            if h.stopped == "diverged":
                assert args["on_divergence"] == "warn"
                assert any("diverged" in str(w.message) for w in caught)
            else:
                assert h.epochs == args["epochs"]
    assert np.isfinite(m.params).all()
    assert m.params.dtype == np.dtype(cfg["dtype"])
    assert np.isfinite(h.loss).all()
    assert len(h.loss) == math.ceil(h.epochs / args["record_every"])


@PROPERTY
@given(problems())
def test_evaluation_is_finite_or_refused(problem):
    cfg, X, y = problem
    m = fastbp.MLP(init="normal", seed=2, **cfg)
    p0 = m.params.copy()
    for call in (lambda: m.predict(X), lambda: m.loss(X, y), lambda: m.gradient(X, y)):
        try:
            out = call()
        except BAD + (FloatingPointError,) as exc:
            event(f"refused: {type(exc).__name__}")
            assert str(exc)
            continue
        event("finite result")
        if isinstance(out, tuple):
            out = np.concatenate([g.ravel() for g in out[0] + (out[1] or [])])
        assert np.isfinite(out).all()
    np.testing.assert_array_equal(m.params, p0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(-3, 6), st.floats(-2, 6), st.none(), st.text(max_size=2),
                          st.booleans()), max_size=5),
       st.sampled_from(["sigmoid", "relu", "swish", ["tanh"], None, 3]),
       st.sampled_from(["mse", "bce", "sse", "l1", None]),
       st.sampled_from(["uniform", "he", 0.5, np.nan, "zeros", -1e300, None]),
       st.sampled_from(["float64", "float32", "int32", "float16", None, np.float32]))
def test_constructor_builds_or_refuses(sizes, activation, loss, init, dtype):
    try:
        m = fastbp.MLP(sizes, activation=activation, loss=loss, init=init, dtype=dtype, seed=0)
    except BAD as exc:
        assert str(exc)
        return
    assert np.isfinite(m.params).all()
    assume(all(s <= 6 for s in m.sizes))
    out = m.predict(np.zeros((2, m.sizes[0])))
    assert out.shape == (2, m.sizes[-1]) and np.isfinite(out).all()


def test_cross_entropy_of_saturated_logits_near_the_float64_limit_is_zero():
    """Logits of opposite signs near 1e308: the softmax is exactly one-hot, the loss 0.
    A class of target 0 used to add 0 * (lse - z) = 0 * inf: a NaN loss, reported as an
    overflow."""
    m = fastbp.MLP.from_weights([np.array([[1e308, -1e308, 0.0]])], [np.zeros(3)],
                                activation=["softmax"], loss="cross_entropy")
    X, Y = np.array([[1.0], [1.0]]), np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert m.loss(X, Y) == 0.0
    h = m.fit(X, Y, epochs=2, lr=1e-300, batch_size=1)
    np.testing.assert_array_equal(h.loss, [0.0, 0.0])


def _compiled_only_functions(namespace):
    """The dispatchers in ``namespace`` compiled without a Python entry point."""
    from numba.core.registry import CPUDispatcher
    return {name: value for name, value in namespace.items()
            if isinstance(value, CPUDispatcher) and value.targetoptions.get("no_cpython_wrapper")}


def test_kernels_without_a_python_entry_refuse_python_calls():
    """The kernels' INNER functions have no CPython wrapper: Numba would call a null
    address and crash the interpreter (numba/numba#2541).  Every one of them -- in each
    kernels module, in a generated module, the batch passes' inlined copies -- raises
    TypeError instead.  Its class is checked before the call, which would crash
    otherwise."""
    import importlib
    import pkgutil

    import fastbp.kernels as K
    from fastbp.kernels import passes, rows
    from fastbp.kernels.config import CompiledOnly
    namespaces = {m.name: vars(importlib.import_module(f"fastbp.kernels.{m.name}"))
                  for m in pkgutil.iter_modules(K.__path__)}
    for kind in GEN.KINDS:
        module = GEN._module(kind, (2, 3, 1), (1, 1), True, 0, False, "plain", "float64")
        namespaces[f"generated {kind}"] = vars(module)
    namespaces["passes._inlined"] = {
        "activate_rows": passes._inlined(rows.activate_rows, dict(vars(rows)), "copy")}
    found = 0
    for where, namespace in namespaces.items():
        for name, function in _compiled_only_functions(namespace).items():
            assert type(function) is CompiledOnly, (where, name)
            with pytest.raises(TypeError, match="runs only inside fastbp's compiled kernels"):
                function(np.zeros(3), 1.0)
            found += 1
    assert found >= 60
    assert {"epoch_pass", "sample_epoch"} <= (
        set(_compiled_only_functions(namespaces["generated full"]))
        | set(_compiled_only_functions(namespaces["generated sample_loops"])))
