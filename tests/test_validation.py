"""Bad input raises ValueError/TypeError naming the problem; good input is never modified."""

import numpy as np
import pytest

import fastbp

BAD = (ValueError, TypeError)


@pytest.fixture
def model():
    return fastbp.MLP([3, 4, 2], activation="tanh", loss="mse", seed=0)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(10, 3)), rng.normal(size=(10, 2))


def _calls(m, X, y):
    """Every public entry point that takes (X, y)."""
    return {
        "fit": lambda: m.fit(X, y, epochs=1, lr=0.1),
        "loss": lambda: m.loss(X, y),
        "gradient": lambda: m.gradient(X, y),
    }


ENTRY = ["fit", "loss", "gradient"]


# ----------------------------------------------------------------- X and y


@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize(
    "shape, match",
    [((10,), r"(?i)\bX\b|dim|2-?d"), ((10, 3, 1), r"(?i)\bX\b|dim|2-?d"), ((10, 5), r"(?i)\bX\b|feature|column|sizes|3")],
    ids=["1d", "3d", "features"],
)
def test_bad_X_shape(entry, shape, match, model, data):
    _, y = data
    X = np.ones(shape)
    with pytest.raises(BAD, match=match):
        _calls(model, X, y)[entry]()


@pytest.mark.parametrize("shape", [(2, 5), (6,), (2, 3, 1)], ids=["features", "1d", "3d"])
def test_predict_bad_X(shape, model):
    with pytest.raises(BAD, match=r"(?i)\bX\b|dim|feature|column|shape"):
        model.predict(np.ones(shape))


@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize(
    "shape", [(10, 3), (10,), (10, 2, 1), (9, 2)], ids=["outputs", "1d-multi-output", "3d", "rows"]
)
def test_bad_y_shape(entry, shape, model, data):
    X, _ = data
    with pytest.raises(BAD, match=r"(?i)\by\b|sample|row|output|shape|dim"):
        _calls(model, X, np.ones(shape))[entry]()


@pytest.mark.parametrize("entry", ENTRY)
def test_sample_counts_differ(entry, model, data):
    X, y = data
    with pytest.raises(BAD, match=r"(?i)sample|rows|same number|length|\bn\b|9|10"):
        _calls(model, X[:9], y)[entry]()


@pytest.mark.parametrize("entry", ENTRY + ["predict"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_X(entry, bad, model, data):
    X, y = data
    X = X.copy()
    X[3, 1] = bad
    call = (lambda: model.predict(X)) if entry == "predict" else _calls(model, X, y)[entry]
    with pytest.raises(ValueError, match=r"(?i)\bX\b.*(nan|inf|finite)|(nan|inf|finite).*\bX\b"):
        call()


@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_y(entry, bad, model, data):
    X, y = data
    y = y.copy()
    y[0, 0] = bad
    with pytest.raises(ValueError, match=r"(?i)\by\b.*(nan|inf|finite)|(nan|inf|finite).*\by\b"):
        _calls(model, X, y)[entry]()


@pytest.mark.parametrize("entry", ENTRY + ["predict"])
def test_empty(entry, model):
    X, y = np.empty((0, 3)), np.empty((0, 2))
    call = (lambda: model.predict(X)) if entry == "predict" else _calls(model, X, y)[entry]
    with pytest.raises(ValueError, match=r"(?i)empty|sample|at least|zero|\b0\b"):
        call()


def test_non_numeric_X(model, data):
    _, y = data
    with pytest.raises(BAD, match=r"(?i)\bX\b|numeric|float|convert|dtype"):
        model.fit(np.array([["a", "b", "c"]] * 10), y, epochs=1)


# ------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    "sizes", [[3], [], [3, 0, 1], [3, -2, 1], [0, 2]], ids=["one", "empty", "zero", "negative", "zero-in"]
)
def test_bad_sizes(sizes):
    with pytest.raises(BAD, match=r"(?i)sizes"):
        fastbp.MLP(sizes)


@pytest.mark.parametrize("sizes", [[3, 10 ** 20, 1], [2 ** 31, 2 ** 30, 1]])
def test_sizes_past_any_memory_are_a_value_error(sizes):
    """Not numpy's OverflowError from the parameters' array; Ensemble and from_weights
    check sizes the same way."""
    with pytest.raises(ValueError, match="more than any memory can hold"):
        fastbp.MLP(sizes)
    with pytest.raises(ValueError, match="more than any memory can hold"):
        fastbp.Ensemble(sizes, 2)


def test_unknown_activation():
    with pytest.raises(ValueError, match=r"(?i)activation.*softsign|softsign.*activation"):
        fastbp.MLP([2, 3, 1], activation="softsign")
    with pytest.raises(ValueError, match=r"(?i)activation"):
        fastbp.MLP([2, 3, 1], activation=["relu", "swish"])


def test_activation_list_wrong_length():
    with pytest.raises(ValueError, match=r"(?i)activation"):
        fastbp.MLP([2, 3, 1], activation=["relu", "relu", "sigmoid"])
    with pytest.raises(ValueError, match=r"(?i)activation"):
        fastbp.MLP([2, 3, 4, 1], activation=["relu", "sigmoid"])


def test_unknown_loss():
    with pytest.raises(ValueError, match=r"(?i)loss.*hinge|hinge.*loss"):
        fastbp.MLP([2, 3, 1], loss="hinge")


@pytest.mark.parametrize("init", ["glorot_normal", "Uniform?", ""])
def test_bad_init(init):
    with pytest.raises(BAD, match=r"(?i)init"):
        fastbp.MLP([2, 3, 1], init=init)


def test_a_masked_array_with_masked_values_is_refused_not_unmasked():
    """np.asarray drops a mask: the masked entries' hidden values would be trained on."""
    X = np.random.default_rng(1).random((6, 2))
    y = X.sum(axis=1)
    m = fastbp.MLP([2, 3, 1], seed=0)
    with pytest.raises(ValueError, match=r"X is a masked array with 2 masked values"):
        m.fit(np.ma.masked_array(X, mask=[[1, 0]] * 2 + [[0, 0]] * 4), y, epochs=1, lr=0.1)
    with pytest.raises(ValueError, match=r"y is a masked array"):
        m.fit(X, np.ma.masked_array(y, mask=[0, 0, 1, 0, 0, 0]), epochs=1, lr=0.1)
    with pytest.raises(ValueError, match=r"X is a masked array"):
        m.predict(np.ma.masked_array(X, mask=X > 0.5))
    # nothing masked: the values are the data
    h = m.fit(np.ma.masked_array(X), y, epochs=2, lr=0.1)
    ref = fastbp.MLP([2, 3, 1], seed=0)
    assert np.array_equal(h.loss, ref.fit(X, y, epochs=2, lr=0.1).loss)


def test_unknown_dtype():
    with pytest.raises(BAD, match=r"(?i)dtype"):
        fastbp.MLP([2, 3, 1], dtype="int32")


@pytest.mark.parametrize("order", [">", "<"])
def test_a_dtype_of_either_byte_order_is_the_native_float(order):
    """dtype=">f4" names float32: the model is the native float32 the kernels take (it
    used to reach Numba as a big-endian array: "Unsupported array dtype"), and data of
    either byte order are converted once, as any other dtype."""
    X = np.random.default_rng(0).random((8, 2))
    y = X.sum(axis=1)
    for name, native in (("f4", np.float32), ("f8", np.float64)):
        m = fastbp.MLP([2, 3, 1], dtype=np.dtype(order + name), seed=0)
        assert m.dtype == np.dtype(native) and m.params.dtype.isnative
        ref = fastbp.MLP([2, 3, 1], dtype=native, seed=0)
        h = m.fit(X.astype(">f8"), y.astype(order + name), epochs=3, lr=0.1)
        h_ref = ref.fit(X.astype(native), y.astype(native), epochs=3, lr=0.1)
        assert np.array_equal(m.params, ref.params) and np.array_equal(h.loss, h_ref.loss)
        assert np.array_equal(m.predict(X.astype(">f8")), ref.predict(X))


def test_bce_needs_sigmoid_output(data):
    X, _ = data
    y01 = np.full((10, 2), 0.5)
    with pytest.raises(ValueError, match=r"(?i)bce|sigmoid"):
        m = fastbp.MLP([3, 4, 2], activation="relu", loss="bce", seed=0)
        m.fit(X, y01, epochs=1)
    with pytest.raises(ValueError, match=r"(?i)bce|sigmoid"):
        m = fastbp.MLP([3, 4, 2], activation=["sigmoid", "identity"], loss="bce", seed=0)
        m.loss(X, y01)
    with pytest.raises(ValueError, match=r"(?i)bce|sigmoid"):
        m = fastbp.MLP.from_weights([np.ones((3, 2))], None, activation="tanh", loss="bce")
        m.gradient(X, y01)


@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize("bad", [-0.1, 1.5], ids=["negative", "above-one"])
def test_bce_targets_in_unit_interval(entry, bad, data):
    X, _ = data
    y = np.full((10, 2), 0.5)
    y[4, 1] = bad
    m = fastbp.MLP([3, 4, 2], activation="sigmoid", loss="bce", seed=0)
    with pytest.raises(ValueError, match=r"(?i)\by\b|target|\[0, ?1\]|0 and 1|bce"):
        _calls(m, X, y)[entry]()


def test_bce_targets_at_the_bounds_are_fine(data):
    X, _ = data
    y = np.zeros((10, 2))
    y[::2] = 1.0
    m = fastbp.MLP([3, 4, 2], activation="sigmoid", loss="bce", seed=0)
    h = m.fit(X, y, epochs=3, lr=0.1)
    assert np.all(np.isfinite(h.loss))


# ---------------------------------------------------------------- fit args


@pytest.mark.parametrize("epochs", [0, -1])
def test_bad_epochs(epochs, model, data):
    X, y = data
    with pytest.raises(BAD, match=r"(?i)epochs"):
        model.fit(X, y, epochs=epochs, lr=0.1)


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_lr(lr, model, data):
    X, y = data
    with pytest.raises(BAD, match=r"(?i)\blr\b|learning"):
        model.fit(X, y, epochs=1, lr=lr)


@pytest.mark.parametrize("batch_size", [0, -3, 11])
def test_bad_batch_size(batch_size, model, data):
    X, y = data
    with pytest.raises(BAD, match=r"(?i)batch_size"):
        model.fit(X, y, epochs=1, lr=0.1, batch_size=batch_size)


@pytest.mark.parametrize("record_every", [0, -1])
def test_bad_record_every(record_every, model, data):
    X, y = data
    with pytest.raises(BAD, match=r"(?i)record_every"):
        model.fit(X, y, epochs=4, lr=0.1, record_every=record_every)


def test_rejected_fit_leaves_the_model_alone(model, data):
    X, y = data
    before = model.params.copy()
    with pytest.raises(BAD):
        model.fit(X, y, epochs=1, lr=-1.0)
    y_bad = y.copy()
    y_bad[-1, -1] = np.nan
    with pytest.raises(BAD):
        model.fit(X, y_bad, epochs=1, lr=0.1)
    np.testing.assert_array_equal(model.params, before)


# ----------------------------------------------------------- from_weights


def test_from_weights_must_chain():
    with pytest.raises(ValueError, match=r"(?i)weight|shape|chain|match"):
        fastbp.MLP.from_weights([np.ones((2, 3)), np.ones((4, 1))])


def test_from_weights_must_be_2d():
    with pytest.raises(BAD, match=r"(?i)weight|dim|2-?d|shape"):
        fastbp.MLP.from_weights([np.ones(3), np.ones((3, 1))])


def test_from_weights_empty_list():
    with pytest.raises(BAD, match=r"(?i)weight|empty|at least"):
        fastbp.MLP.from_weights([])


@pytest.mark.parametrize(
    "biases",
    [[np.ones(3)], [np.ones(2), np.ones(1)], [np.ones(3), np.ones(2)], [np.ones(3), np.ones(1), np.ones(1)]],
    ids=["too-few", "wrong-len", "wrong-len-out", "too-many"],
)
def test_from_weights_bad_biases(biases):
    with pytest.raises(ValueError, match=r"(?i)bias"):
        fastbp.MLP.from_weights([np.ones((2, 3)), np.ones((3, 1))], biases)


def test_from_weights_non_finite():
    w = np.ones((2, 3))
    w[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"(?i)weight|nan|finite"):
        fastbp.MLP.from_weights([w, np.ones((3, 1))])


# --------------------------------------------------- inputs are not modified


@pytest.mark.parametrize("batch_size,shuffle", [(None, False), (1, True), (3, True), (3, False)])
@pytest.mark.parametrize("kind", ["float64-C", "float64-F", "float32", "int"])
def test_caller_arrays_unchanged(kind, batch_size, shuffle):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(10, 3))
    y = rng.normal(size=(10, 2))
    if kind == "float64-F":
        X, y = np.asfortranarray(X), np.asfortranarray(y)
    elif kind == "float32":
        X, y = X.astype(np.float32), y.astype(np.float32)
    elif kind == "int":
        X, y = (X * 3).astype(np.int64), (y * 3).astype(np.int64)
    X0, y0 = X.copy(), y.copy()
    m = fastbp.MLP([3, 4, 2], activation="tanh", loss="mse", seed=0)
    m.fit(X, y, epochs=3, lr=0.01, batch_size=batch_size, shuffle=shuffle, seed=0)
    m.predict(X)
    m.loss(X, y)
    m.gradient(X, y)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    assert X.dtype == X0.dtype and y.dtype == y0.dtype


def test_int_arrays_are_converted():
    rng = np.random.default_rng(2)
    Xi = rng.integers(-3, 4, size=(12, 3))
    yi = rng.integers(0, 2, size=(12, 1))
    a = fastbp.MLP([3, 4, 1], activation="sigmoid", loss="bce", seed=0)
    b = fastbp.MLP([3, 4, 1], activation="sigmoid", loss="bce", seed=0)
    np.testing.assert_array_equal(a.predict(Xi), b.predict(Xi.astype(np.float64)))
    assert a.predict(Xi).dtype == np.float64
    assert a.loss(Xi, yi) == b.loss(Xi.astype(float), yi.astype(float))
    ha = a.fit(Xi, yi, epochs=5, lr=0.1)
    hb = b.fit(Xi.astype(float), yi.astype(float), epochs=5, lr=0.1)
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(ha.loss, hb.loss)
    # lists work too
    np.testing.assert_array_equal(a.predict(Xi.tolist()), a.predict(Xi))


def test_bool_targets_accepted_for_bce():
    X = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    y = np.array([True, True, False, False])
    m = fastbp.MLP([2, 3, 1], activation="sigmoid", loss="bce", seed=0)
    assert m.loss(X, y) == m.loss(X, y.astype(np.float64).reshape(-1, 1))


# ---- options at their limits, flags, degenerate models (a hostile-input review) --------
@pytest.mark.parametrize("kwargs, name", [
    (dict(epochs=2 ** 64), "epochs"),
    (dict(epochs=3, record_every=2 ** 63), "record_every"),
    (dict(epochs=3, schedule="step", step_size=2 ** 63), "step_size"),
    (dict(epochs=3, batch_size=2 ** 70), "batch_size"),
])
def test_counts_too_large_for_the_kernels_are_refused_by_name(model, data, kwargs, name):
    X, y = data
    before = model.params.copy()
    with pytest.raises(ValueError, match=rf"{name} must be <= 9007199254740992"):
        model.fit(X, y, lr=0.1, **kwargs)
    np.testing.assert_array_equal(model.params, before)
    with pytest.raises(ValueError, match="epochs must be <="):
        fastbp.Ensemble([3, 4, 2], 2).fit(X, y, epochs=2 ** 64)


def test_largest_count_is_accepted(model, data):
    X, y = data
    hist = model.fit(X, y, epochs=2, lr=0.1, record_every=2 ** 53)
    assert hist.epochs == 2 and len(hist.loss) == 1


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0, -1.0])
def test_chunk_seconds_must_be_finite_and_positive(model, data, value):
    with pytest.raises(ValueError, match="chunk_seconds must be a finite number > 0"):
        model.fit(*data, epochs=2, lr=0.1, chunk_seconds=value)


def test_numpy_numbers_are_numbers(data):
    X, y = data
    a = fastbp.MLP([3, 4, 2], seed=0)
    b = fastbp.MLP([3, 4, 2], seed=0)
    ha = a.fit(X, y, epochs=3, lr=0.1, validation_fraction=0.3, chunk_seconds=0.1,
               shuffle=True, batch_size=3, seed=1)
    hb = b.fit(X, y, epochs=3, lr=0.1, validation_fraction=np.float32(0.3),
               chunk_seconds=np.float64(0.1), shuffle=np.True_, batch_size=np.int64(3), seed=1)
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(ha.val_loss, hb.val_loss)


@pytest.mark.parametrize("name, value", [("shuffle", "no"), ("shuffle", 2), ("shuffle", None),
                                         ("restore_best", "no")])
def test_flags_are_true_or_false_not_anything_truthy(model, data, name, value):
    kwargs = {name: value, "validation_fraction": 0.3} if name == "restore_best" else {name: value}
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        model.fit(*data, epochs=2, lr=0.1, batch_size=3, **kwargs)
    with pytest.raises(TypeError, match="nesterov must be True or False"):
        model.fit(*data, epochs=2, lr=0.1, momentum=0.9, nesterov="False")


def test_all_zero_sample_weights_are_refused(model, data):
    X, y = data
    before = model.params.copy()
    with pytest.raises(ValueError, match="at least one weight > 0"):
        model.fit(X, y, epochs=5, lr=1.0, sample_weight=np.zeros(10))
    np.testing.assert_array_equal(model.params, before)
    w = np.zeros(10)
    w[3] = 1.0  # one weight is enough
    model.fit(X, y, epochs=2, lr=0.1, sample_weight=w)
    assert not np.array_equal(model.params, before)


def test_sample_weights_that_underflow_float32_are_named_so(data):
    """Weights are converted to the model dtype: below float32's smallest positive value
    they become 0.  Where that leaves every weight 0 the error says so, rather than
    calling positive weights zero."""
    X, y = data
    m = fastbp.MLP([X.shape[1], 4, y.shape[1]], seed=0, dtype="float32")
    with pytest.raises(ValueError, match=r"too small for float32: .* every weight is 0 "
                                         r"\(the smallest positive float32 is 1.4e-45\)"):
        m.fit(X, y, epochs=1, sample_weight=np.full(X.shape[0], 1e-50))
    with pytest.raises(ValueError, match="at least one weight > 0"):  # zeros: as before
        m.fit(X, y, epochs=1, sample_weight=np.zeros(X.shape[0]))
    # float64 holds them: the fit runs
    m64 = fastbp.MLP([X.shape[1], 4, y.shape[1]], seed=0)
    assert m64.fit(X, y, epochs=1, sample_weight=np.full(X.shape[0], 1e-50)).epochs == 1


def test_softmax_of_one_unit_is_refused():
    with pytest.raises(ValueError, match="softmax output layer needs at least 2 units"):
        fastbp.MLP([2, 4, 1], activation=["sigmoid", "softmax"], loss="cross_entropy")
    with pytest.raises(ValueError, match="softmax output layer needs at least 2 units"):
        fastbp.Ensemble([2, 4, 1], 3, activation=["sigmoid", "softmax"], loss="cross_entropy")
    fastbp.MLP([2, 4, 2], activation=["sigmoid", "softmax"], loss="cross_entropy")


def test_init_too_large_for_the_dtype_is_refused():
    with pytest.raises(ValueError, match="init=1e\\+300 gives parameters too large for float32"):
        fastbp.MLP([2, 4, 1], init=1e300, dtype="float32")
    with pytest.raises(ValueError, match="too large for float32"):
        fastbp.Ensemble([2, 4, 1], 2, init=1e300, dtype="float32")
    assert np.isfinite(fastbp.MLP([2, 4, 1], init=1e300).params).all()  # float64 holds it


def test_checkpoint_never_overwrites_a_memory_mapped_input(tmp_path, data):
    X, y = data
    for name, arr in (("X.npy", X), ("y.npy", y)):
        path = tmp_path / name
        np.save(path, arr)
        mapped = np.load(path, mmap_mode="r")
        inputs = (mapped, y) if name == "X.npy" else (X, mapped[2:][::1])  # views count too
        m = fastbp.MLP([3, 4, 2], seed=0)
        with pytest.raises(ValueError, match="checkpoint .* is the file the training data"):
            m.fit(inputs[0], inputs[1] if name == "X.npy" else mapped, epochs=2, lr=0.1,
                  checkpoint=str(path))
        np.testing.assert_array_equal(np.load(path), arr)
        with pytest.raises(ValueError, match="is the file the training data"):
            m.fit(X, y, epochs=2, lr=0.1, validation_data=(X, mapped) if name == "y.npy"
                  else (mapped, y), checkpoint=str(path))
        np.testing.assert_array_equal(np.load(path), arr)
    # another path is fine
    m.fit(np.load(tmp_path / "X.npy", mmap_mode="r"), y, epochs=2, lr=0.1,
          checkpoint=str(tmp_path / "run.npz"))
    assert (tmp_path / "run.npz").exists()


def test_cross_entropy_targets_must_be_distributions():
    # the output delta p - y is the gradient of -sum y log p only for rows summing to 1:
    # other rows are refused rather than trained on another objective than the loss
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 2))
    m = fastbp.MLP([2, 4, 3], activation=["tanh", "softmax"], loss="cross_entropy", seed=0)
    for bad in (rng.uniform(size=(6, 3)), np.array([[1.0, 1.0, 0.0]] * 6), np.zeros((6, 3))):
        for call in (lambda: m.fit(X, bad, epochs=1, lr=0.1), lambda: m.loss(X, bad),
                     lambda: m.gradient(X, bad)):
            with pytest.raises(ValueError, match="one-hot or class probabilities summing to 1"):
                call()
    soft = rng.dirichlet(np.ones(3), size=6)  # probabilities: the gradient is the loss's
    g = m.gradient(X, soft)[1][1]
    i = m._layout.b_off[1]
    h = 1e-6
    p = m.params
    p[i] += h
    up = m.loss(X, soft)
    p[i] -= 2 * h
    down = m.loss(X, soft)
    p[i] += h
    assert g[0] == pytest.approx((up - down) / (2 * h), rel=1e-6)
    fastbp.MLP([2, 4, 3], activation=["tanh", "softmax"], loss="cross_entropy").fit(
        X, soft.astype(np.float32), epochs=1, lr=0.1)  # float32 rounding is within bounds


def test_pandas_nullable_columns_are_numbers_and_missing_values_are_refused():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(2)
    X = rng.normal(size=(8, 3))
    y = rng.normal(size=(8, 2))
    frame = pd.DataFrame(X).astype("Float64")
    a = fastbp.MLP([3, 4, 2], seed=0)
    b = fastbp.MLP([3, 4, 2], seed=0)
    a.fit(frame, pd.DataFrame(y).astype("Float64"), epochs=2, lr=0.1)
    b.fit(X, y, epochs=2, lr=0.1)
    np.testing.assert_array_equal(a.params, b.params)
    ints = pd.DataFrame({"a": pd.array([1, 0, 1, 1, 0, 1, 0, 0], dtype="Int64"),
                         "b": pd.array([True, False] * 4, dtype="boolean"),
                         "c": X[:, 2]})
    np.testing.assert_array_equal(a.predict(ints), a.predict(ints.to_numpy(dtype=float)))
    frame.iloc[2, 1] = pd.NA
    with pytest.raises(ValueError, match="X contains NaN"):
        a.fit(frame, y, epochs=1, lr=0.1)
    with pytest.raises(TypeError, match="dtype object"):
        a.predict(pd.DataFrame({"a": ["x"] * 8, "b": 1.0, "c": 2.0}))


def test_progress_is_true_or_false(data):
    X, y = data
    for fit in (lambda p: fastbp.MLP([3, 4, 2]).fit(X, y, epochs=1, progress=p),
                lambda p: fastbp.MLP([3, 4, 2]).fit(X, y, epochs=1, optimizer="lbfgs",
                                                    progress=p),
                lambda p: fastbp.Ensemble([3, 4, 2], 2).fit(X, y, epochs=1, progress=p)):
        with pytest.raises(TypeError, match="progress must be True or False"):
            fit("no")


# ---- values: finiteness, checked once where the values are copied ---------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("where", ["weights", "biases"])
@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e39])
def test_from_weights_names_the_array_with_a_value_it_cannot_hold(dtype, where, layer, value):
    """from_weights checks the values once, in the parameters it copied them to; a bad
    one is still reported by the array it came from: NaN or infinity, or (float32) a
    value too large for the model dtype.  The caller's arrays are not modified."""
    rng = np.random.default_rng(layer)
    weights = [rng.normal(size=(3, 4)), rng.normal(size=(4, 2))]
    biases = [rng.normal(size=4), rng.normal(size=2)]
    target = (weights if where == "weights" else biases)[layer]
    target.flat[target.size // 2] = value
    before = [a.copy() for a in weights + biases]
    too_large = value == 1e39
    if too_large and dtype == "float64":
        m = fastbp.MLP.from_weights(weights, biases, activation="tanh", dtype=dtype)
        assert m.weights[0].dtype == np.float64 and np.isfinite(m.params).all()
        return
    message = "too large for float32" if too_large else "NaN or infinity"
    with pytest.raises(ValueError, match=rf"^{where}\[{layer}\] .*{message}"):
        fastbp.MLP.from_weights(weights, biases, activation="tanh", dtype=dtype)
    for a, b in zip(weights + biases, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_all_finite_finds_every_nan_and_infinity(dtype):
    """V.all_finite, the check of inputs and parameters: a NaN or infinity anywhere, in
    arrays small (looked at one by one) and past that, past its block size, contiguous
    or not; values whose squares overflow are finite (and say nothing: no
    RuntimeWarning)."""
    from fastbp._validation import SMALL_FINITE_CHECK, all_finite
    import warnings
    for n in (1, 15, 16, 17, 1000, SMALL_FINITE_CHECK, SMALL_FINITE_CHECK + 1,
              (1 << 16) + 3):
        x = np.linspace(-2, 2, n).astype(dtype)
        assert all_finite(x)
        for bad in (np.nan, np.inf, -np.inf):
            for i in sorted({0, n // 2, n - 1}):
                y = x.copy()
                y[i] = bad
                assert not all_finite(y), (n, bad, i)
                if n > 2:
                    assert not all_finite(y.reshape(1, n)[:, ::-1]), (n, bad, i)  # strided
    for shape in ((3, 5), (3, SMALL_FINITE_CHECK)):
        big = np.full(shape, np.finfo(dtype).max, dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert all_finite(big) and all_finite(big[:, ::2]) and all_finite(big[:0])
            big[2, 4] = np.inf
            assert not all_finite(big)


def test_unseeded_models_draw_distinct_streams():
    """Models made without a seed take 64 bits of OS entropy each (from a pool: one
    system call per 512 models): no two repeat, and a forked child does not repeat its
    parent's."""
    import os
    keys = [fastbp.MLP([2, 3, 1])._rng_state[0] for _ in range(1500)]
    assert len(set(keys)) == len(keys)
    if not hasattr(os, "fork"):
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next key, to the parent
        os.write(write, str(fastbp.MLP([2, 3, 1])._rng_state[0]).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = int(os.read(read, 64))
    os.close(read)
    assert child != fastbp.MLP([2, 3, 1])._rng_state[0]
    assert child not in keys


# ---- the sums of squares behind the finiteness checks and the end-of-run bound ----------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [1, 8191, 8192, 8193, 16384, 20000, 3 * 8192, 131075])
def test_sum_of_squares_is_the_sum_to_the_dtypes_rounding(dtype, n):
    from fastbp._validation import sum_of_squares
    a = np.random.default_rng(n).standard_normal(n).astype(dtype)
    exact = float(np.sum(a.astype(np.float64) ** 2))
    rel = 1e-12 if dtype == "float64" else 2e-6
    assert sum_of_squares(a) == pytest.approx(exact, rel=rel)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sum_of_squares_is_not_finite_where_a_value_is_not(dtype):
    """all_finite's proof: a NaN or an infinity anywhere (the rows or their tail) makes
    the sum NaN or infinite; so do squares past the dtype's range."""
    from fastbp._validation import sum_of_squares
    with np.errstate(over="ignore", invalid="ignore"):
        for where in (0, 8191, 8192, 20000 - 1):
            for bad in (np.nan, np.inf, -np.inf):
                a = np.ones(20000, dtype)
                a[where] = bad
                assert not np.isfinite(sum_of_squares(a)), (where, bad)
        big = np.full(20000, np.finfo(dtype).max / 4, dtype)
        assert sum_of_squares(big) == np.inf


def test_a_fits_checks_leave_no_blas_threads_spinning():
    """OpenBLAS runs a long dot on its worker threads, which then spin for about 0.1 s
    waiting for more work, on the CPUs a fit's own threads use; the sums of squares of
    fit's checks (_validation.sum_of_squares) keep every dot on the calling thread.
    Measured as the process's CPU time while it sleeps between checks of a large array
    (with one threaded dot per check, the spinning filled the sleeps)."""
    import resource
    import time
    from fastbp._validation import all_finite
    from fastbp.kernels.gemm import blas_threads
    if blas_threads() < 2:
        pytest.skip("numpy's OpenBLAS runs on one thread here: no worker threads to wake")
    a = np.random.default_rng(0).standard_normal(1 << 17)
    assert all_finite(a)
    time.sleep(0.3)  # whatever ran before has gone quiet
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(10):
        assert all_finite(a)
        time.sleep(0.03)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    assert cpu < 0.3 * wall, (cpu, wall)
