"""What a divergence message blames: the learning rate when the data are moderate, the
data only when they are huge for the dtype, the starting parameters when the loss is not
finite there although the data are moderate.  The epoch is that of the run."""
import numpy as np
import pytest
from numba import njit

import fastbp
from fastbp.kernels import loops
from fastbp.model import divergence_cause

X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]) * 7.9
Y = np.array([0.0, 1.0, 1.0, 0.0])


def _net(**kw):
    return fastbp.MLP([2, 8, 1], activation=["relu", "identity"], seed=0, **kw)


def _message(m, X, y, **kw):
    with pytest.raises(fastbp.DivergenceError) as info:
        m.fit(X, y, **kw)
    return info.value, str(info.value)


def test_moderate_data_and_a_large_learning_rate_blame_the_learning_rate():
    e, msg = _message(_net(), X, Y, epochs=300, lr=1e3)
    assert e.epoch > 0  # not at the start: the parameters grew
    assert f"diverged at epoch {e.epoch} (counted from 0) of this run's 300" in msg
    assert "likely cause: too large a learning rate: try a smaller learning rate than " \
           "lr=1000" in msg
    assert "data" not in msg.split("likely cause")[1]


def test_epoch_counts_within_the_whole_fit_not_a_chunk():
    # chunk_seconds tiny: many chunks; the epoch is still the fit's
    e, msg = _message(_net(), X, Y, epochs=300, lr=30.0, chunk_seconds=1e-6)
    assert e.epoch > 1 and f"at epoch {e.epoch} (counted from 0) of this run's 300" in msg


def test_huge_data_are_blamed():
    _, msg = _message(_net(), X * 1e160, Y, epochs=5, lr=0.01)
    assert "likely cause: the loss is not finite even at the starting parameters: the " \
           "data (max |X| = 7.9e+160" in msg
    assert "too large for float64" in msg and "learning rate" not in msg


def test_huge_starting_parameters_with_moderate_data_are_blamed():
    m = fastbp.MLP([2, 8, 1], activation="identity", init=1e120)
    _, msg = _message(m, X, Y, epochs=5, lr=0.01)
    assert "likely cause: the starting parameters: the loss is not finite there although " \
           "the data are moderate (max |X| = 7.9" in msg
    assert "too large for float64" not in msg


@pytest.mark.parametrize("dtype, huge", [("float64", 1.4e150), ("float32", 1.9e15)])
def test_what_counts_as_huge(dtype, huge):
    assert "scale them down" in divergence_cause(np.dtype(dtype), huge, 1.0, True, "lr")
    assert divergence_cause(np.dtype(dtype), huge / 2, 1.0, True, "lr") == \
        "lr, or scale the data down (max |X| = %.3g, max |y| = 1)" % (huge / 2)
    assert divergence_cause(np.dtype(dtype), 100.0, 1.0, True, "lr") == "lr"


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "lbfgs"])
def test_huge_sample_weights_are_blamed_not_the_parameters(optimizer):
    # the loss at the start is finite without the weights, not with them: the weights
    # are the cause, not the (moderate) starting parameters
    m = fastbp.MLP([2, 3, 1], activation=["tanh", "identity"], init="normal", seed=0)
    _, msg = _message(m, X, Y * 1e5, epochs=3, optimizer=optimizer,
                      sample_weight=np.full(4, 1e300))
    cause = msg.split("likely cause: ")[1]
    assert cause.startswith("the sample weights (max 1e+300): the loss at the starting "
                            "parameters is finite without them but overflows float64")
    assert "starting parameters:" not in cause and "learning rate" not in cause
    # moderate weights on the same start leave the blame with the parameters
    m = fastbp.MLP([2, 8, 1], activation="identity", init=1e120)
    _, msg = _message(m, X, Y, epochs=3, optimizer=optimizer,
                      sample_weight=np.full(4, 2.0))
    assert "likely cause: the starting parameters" in msg


@pytest.mark.parametrize("batch_size", [None, 1])
def test_adam_gradient_too_large_at_the_start_is_blamed_not_the_learning_rate(batch_size):
    # a finite loss (1e241) whose gradient (1e181) squares past float64: Adam's v is
    # infinite at the first step for any lr, so "a smaller learning rate" cannot help
    m = fastbp.MLP([2, 3, 1], activation="identity", init=1e60)
    e, msg = _message(m, X, Y, epochs=3, lr=1e-30, optimizer="adam", batch_size=batch_size)
    assert e.epoch == 0
    cause = msg.split("likely cause: ")[1]
    assert cause.startswith("the gradient at the starting parameters (max |g| = ")
    assert "Adam's second moment, overflows float64" in cause and "learning rate than" not in cause
    # plain SGD from there: the step, lr * g, is what a smaller lr shrinks
    _, msg = _message(fastbp.MLP([2, 3, 1], activation="identity", init=1e60), X, Y,
                      epochs=3, lr=1.0)
    assert "the gradient at the starting parameters" not in msg


@njit
def _all_finite(x):
    return loops.all_finite(x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_guards_finiteness_check_finds_every_nan_and_infinity(dtype):
    """loops.all_finite (the divergence guard's check of the parameters) sums the
    elements first and looks at them one by one only when the sum is not finite: a
    NaN or an infinity at any position -- a whole vector's, the masked last step's --
    is found, and finite values whose sum overflows are still finite."""
    for n in (1, 7, 8, 9, 16, 31, 33):
        x = np.linspace(-1.0, 1.0, n).astype(dtype)
        assert _all_finite(x)
        for bad in (np.nan, np.inf, -np.inf):
            for i in range(n):
                y = x.copy()
                y[i] = bad
                assert not _all_finite(y), (n, bad, i)
        big = np.full(n, np.finfo(dtype).max, dtype)
        assert _all_finite(big)  # the sum overflows (n > 1); every value is finite
        big[-1] = np.inf
        assert not _all_finite(big)
    assert _all_finite(np.zeros(0, dtype))


@pytest.mark.parametrize("batch_size", [None, 10])
def test_a_divergence_in_the_last_epoch_is_found(batch_size):
    """No record holds the loss after a run's last epoch (a full-batch record is the loss
    before its epoch's update): a run whose last update makes the loss overflow, its
    parameters still finite, is checked at its end and ends as the same run one epoch
    longer does -- the same epoch, parameters, history and message (but its own epoch
    count).  Before, it returned, and loss() raised."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 2)) * 5
    y = x.sum(axis=1) * 10

    def net():
        return fastbp.MLP([2, 6, 1], activation=["relu", "identity"], init="normal", seed=0)

    kw = dict(lr=5.0 if batch_size is None else 1.0, batch_size=batch_size)
    m = net()
    for epochs in range(1, 40):  # the first run whose loss after its last epoch overflows
        try:
            net().fit(x, y, epochs=epochs, **kw)
        except fastbp.DivergenceError:
            break
    longer, _ = _message(net(), x, y, epochs=epochs + 1, **kw)
    e, msg = _message(m, x, y, epochs=epochs, **kw)
    assert batch_size is not None or longer.epoch == epochs  # full batch: the case itself
    if longer.epoch == epochs:  # the divergence shows in the epoch after the run's last
        assert e.epoch == epochs
        assert f"diverged at epoch {epochs} (counted from 0) of this run's {epochs} (the " \
               f"loss after its last epoch, which this epoch would have recorded)" in msg
    else:  # inside the run: found by the records, as before
        assert e.epoch == longer.epoch < epochs
    assert e.history.epochs == longer.history.epochs
    np.testing.assert_array_equal(e.history.loss, longer.history.loss)
    np.testing.assert_array_equal(m.params, e.model.params)
    assert np.isfinite(m.loss(x, y))


def _overflowing_run():
    """(data x, y, a fresh net, the learning rate, E): a full-batch relu regression
    whose loss after E epochs overflows, its parameters still finite (fit(E) raises at
    its end, at epoch E)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 2)) * 5
    y = x.sum(axis=1) * 10

    def net():
        return fastbp.MLP([2, 6, 1], activation=["relu", "identity"], init="normal", seed=0)

    for epochs in range(1, 40):
        try:
            net().fit(x, y, epochs=epochs, lr=5.0)
        except fastbp.DivergenceError as e:
            assert e.epoch == epochs  # the end-of-run check's case
            return x, y, net, 5.0, epochs
    raise AssertionError("no run overflowed")


@pytest.mark.parametrize("stop", ["callback", "ctrl-c"])
def test_a_run_stopped_between_chunks_has_its_last_state_checked(stop):
    """A run stopped before its end -- a callback's False, Ctrl-C -- leaves the model in
    a state no record holds, as a run's end does: its loss is checked too, and an
    overflowing one is the divergence the run would have found one epoch later.  Before,
    fit returned (or warned of the interrupt) and loss() raised."""
    import os
    import signal
    x, y, net, lr, E = _overflowing_run()
    reference, _ = _message(net(), x, y, epochs=E, lr=lr)

    def stop_at_E(epoch, hist, model):
        if stop == "callback":
            return epoch < E
        if epoch == E:
            os.kill(os.getpid(), signal.SIGINT)
        return None

    m = net()  # chunks of one epoch: the callback sees every epoch
    e, msg = _message(m, x, y, epochs=E + 5, lr=lr, chunk_seconds=1e-9, callbacks=[stop_at_E])
    assert e.epoch == reference.epoch == E
    assert f"diverged at epoch {E} (counted from 0) of this run's {E + 5}:" in msg
    assert e.history.epochs == reference.history.epochs == E - 1
    np.testing.assert_array_equal(e.history.loss, reference.history.loss)
    np.testing.assert_array_equal(m.params, reference.model.params)
    assert np.isfinite(m.loss(x, y))


def test_a_run_ended_by_early_stopping_has_its_last_state_checked():
    """Early stopping (without restore_best) ends the run in the state after its last
    epoch, which no training record holds: checked as a run's end is.  Here validation
    targets that get worse stop the run at the very epoch whose update overflows the
    training loss."""
    x, y, net, _, _ = _overflowing_run()
    m = net()
    e, _ = _message(m, x, y, epochs=60, lr=1.0, validation_data=(x, -y), patience=3)
    assert e.epoch < 60  # stopped early, not at the run's end
    reference, _ = _message(net(), x, y, epochs=e.epoch, lr=1.0)
    assert reference.epoch == e.epoch
    assert e.history.epochs == reference.history.epochs == e.epoch - 1
    np.testing.assert_array_equal(e.history.loss, reference.history.loss)
    assert e.history.val_loss.shape == e.history.loss.shape
    np.testing.assert_array_equal(m.params, reference.model.params)
    assert np.isfinite(m.loss(x, y))
    # with restore_best too: the best record may be the very state the run stops in
    restored = net()
    e_best, _ = _message(restored, x, y, epochs=60, lr=1.0, validation_data=(x, -y),
                         patience=3, restore_best=True)
    assert e_best.epoch == e.epoch
    np.testing.assert_array_equal(restored.params, reference.model.params)


def test_an_early_stop_found_diverged_resumes_as_the_run_in_one_piece(tmp_path):
    """The rewind after an early stop found diverged puts back the early-stopping record
    of the state it goes back to: a checkpoint that said "patience ran out" would have
    ended its resume at once, normally.  Resumed, the run ends as in one piece."""
    x, y, net, _, _ = _overflowing_run()
    kw = dict(epochs=60, lr=1.0, validation_data=(x, -y), patience=3)
    whole, _ = _message(net(), x, y, **kw)
    path = str(tmp_path / "run.npz")
    with pytest.raises(fastbp.DivergenceError):
        net().fit(x, y, checkpoint=path, checkpoint_every=2, **kw)
    with pytest.raises(fastbp.DivergenceError) as resumed:
        fastbp.resume(path, x, y)
    assert resumed.value.epoch == whole.epoch
    assert resumed.value.history.epochs == whole.history.epochs
    np.testing.assert_array_equal(resumed.value.model.params, whole.model.params)


def test_saturating_outputs_of_an_overflowing_pass_are_not_taken_as_bounded():
    """tanh and sigmoid bound their outputs only of a finite pre-activation: identity
    hidden layers whose sums overflow give inf - inf = NaN, and tanh(NaN) is NaN.  The
    end-of-run check must not pass such a state (it did: the bound skipped the layers
    before a saturating output)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3))
    y = np.tanh(x.sum(axis=1)) * 0.9
    for out in ("tanh", "sigmoid"):
        m = fastbp.MLP([3, 8, 8, 8, 1], activation=["identity"] * 3 + [out], seed=0)
        with pytest.raises(fastbp.DivergenceError):
            m.fit(x, y, epochs=1, lr=1e150)
        assert np.isfinite(m.loss(x, y))


def test_the_final_loss_bound_proves_ordinary_states_and_refuses_huge_ones():
    """final_loss_bounded: the check after a run's last epoch evaluates the loss only
    where the bound cannot prove it finite: ordinary states pass, a state of 1e303 does
    not, whatever the output (every layer's pre-activation must stay in range)."""
    from fastbp._divergence import final_loss_bounded
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
    sw = np.zeros(0)
    for acts, loss, huge_bounded in ((["sigmoid", "sigmoid"], "mse", True),
                                     (["relu", "identity"], "mse", False),
                                     (["tanh", "softmax"], "cross_entropy", False),
                                     (["relu", "sigmoid"], "bce", False)):
        t = y if loss == "mse" else (y > 0) * 1.0
        if loss == "cross_entropy":
            t = np.eye(2)[(y[:, 0] > 0) * 1]
        m = fastbp.MLP([3, 5, 2], activation=acts, loss=loss, init="normal", seed=0)
        assert final_loss_bounded(m, x, t, sw, 40)
        m.params[:] = 1e303  # finite, past the bound's margin (1e6 below the largest)
        assert not final_loss_bounded(m, x, t, sw, 40), acts
        if huge_bounded:  # saturated: finite here, but the bound cannot know
            assert np.isfinite(m.loss(x, t))
        elif loss == "mse":
            with pytest.raises(FloatingPointError):
                m.loss(x, t)
    # the data enter through their norms: targets large enough for the loss bound to
    # near float32's range are left to the evaluation (which finds this loss finite)
    m32 = fastbp.MLP([3, 5, 2], activation="sigmoid", loss="mse", dtype="float32", seed=0)
    x32 = x.astype(np.float32)
    for scale, proved in ((1e12, True), (1e15, False)):
        t32 = (np.abs(y) * scale).astype(np.float32)
        assert final_loss_bounded(m32, x32, t32, sw.astype(np.float32), 40) == proved
        assert np.isfinite(m32.loss(x32, t32))
    m64 = fastbp.MLP([3, 5, 2], activation="sigmoid", loss="mse", seed=0)
    assert final_loss_bounded(m64, x, y, np.ones(40), 40)  # sample weights of 1
    assert not final_loss_bounded(m64, x, y, np.full(40, 1e300), 40)
    poisson = fastbp.MLP([3, 5, 2], activation=["relu", "exp"], loss="poisson",
                         init="normal", seed=0)
    assert final_loss_bounded(poisson, x, np.abs(y), sw, 40)
    poisson.params[:] = 100.0  # exp of a bound past the largest float: evaluated
    assert not final_loss_bounded(poisson, x, np.abs(y), sw, 40)
    with pytest.raises(FloatingPointError):
        poisson.loss(x, np.abs(y))


def test_ensemble_members_diverging_in_their_last_epoch_equal_mlp_fit():
    """Ensemble.fit checks each model's loss after the last epoch as MLP.fit does, and
    trains a model that fails again alone by MLP.fit: every member ends as MLP.fit ends
    it, diverged or not."""
    import warnings
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 2)) * 5
    y = (x.sum(axis=1) * 10).reshape(-1, 1)
    lrs = [5.0, 1e-4, 5.0]
    kw = dict(activation=["relu", "identity"], init="normal", seed=0)
    ens = fastbp.Ensemble([2, 6, 1], 3, **kw)
    start = ens.params.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hist = ens.fit(x, y, epochs=4, lr=np.array(lrs))
        assert list(ens.diverged) == [True, False, True]
        assert list(hist.extra["diverged_epoch"]) == [4, -1, 4]
        for m, lr in enumerate(lrs):
            alone = fastbp.MLP([2, 6, 1], **kw)
            alone.params[:] = start[m]
            h = alone.fit(x, y, epochs=4, lr=lr, on_divergence="warn")
            assert (h.stopped == "diverged") == ens.diverged[m]
            np.testing.assert_array_equal(alone.params, ens.params[m])
            assert hist.extra["epochs_per_model"][m] == h.epochs
            np.testing.assert_array_equal(hist.loss[m][:len(h.loss)], h.loss)


def test_an_interrupted_ensemble_checks_its_models_last_states(monkeypatch):
    """Ctrl-C ends an ensemble fit after a chunk: each model's state then is checked as
    MLP.fit stopped there checks it (SingleFit.ends_early), and a model whose loss
    overflows there ends as MLP.fit of that many epochs ends it.  Here the chunk is made
    to end at the epoch whose update overflows two of three models' losses."""
    import os
    import signal
    import warnings
    from fastbp import _driver, _many
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 2)) * 5
    y = (x.sum(axis=1) * 10).reshape(-1, 1)
    lrs = [5.0, 1e-4, 5.0]
    kw = dict(activation=["relu", "identity"], init="normal", seed=0)
    _, _, _, _, E = _overflowing_run()  # the same net and data at lr 5: E epochs overflow
    original = _many.ManyFit.run_chunk

    def run_then_interrupt(self, chunk):
        result = original(self, chunk)
        os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(_driver, "first_chunk", lambda *args: E)
    monkeypatch.setattr(_many.ManyFit, "run_chunk", run_then_interrupt)
    ens = fastbp.Ensemble([2, 6, 1], 3, **kw)
    start = ens.params.copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = ens.fit(x, y, epochs=E + 10, lr=np.array(lrs))
    assert hist.stopped == "interrupted"
    assert any("interrupted" in str(w.message) for w in caught)
    assert list(ens.diverged) == [True, False, True]
    assert list(hist.extra["diverged_epoch"]) == [E, -1, E]
    for m, lr in enumerate(lrs):
        alone = fastbp.MLP([2, 6, 1], **kw)
        alone.params[:] = start[m]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            h = alone.fit(x, y, epochs=E, lr=lr, on_divergence="warn")
        assert (h.stopped == "diverged") == ens.diverged[m]
        np.testing.assert_array_equal(alone.params, ens.params[m])
        assert hist.extra["epochs_per_model"][m] == h.epochs
        np.testing.assert_array_equal(hist.loss[m][:len(h.loss)], h.loss)
        assert np.isfinite(ens[m].loss(x, y))


def test_a_callback_that_makes_the_loss_overflow_and_stops_is_named():
    """A callback may write the parameters.  One that writes finite values whose loss
    overflows and stops the fit leaves a state no record holds: after a chunk the bound
    proved safe (a network of 1 MB or more) only the callback can have done it, and fit
    says so (ValueError, as for NaN it writes); after a guarded chunk the state counts
    as a divergence and the run is rewound to its last finite one."""
    import warnings
    rng = np.random.default_rng(0)
    for sizes in ([16, 8, 1], [256, 512, 1]):
        x = rng.normal(size=(64, sizes[0]))
        y = rng.normal(size=64) * 0.1
        m = fastbp.MLP(sizes, activation=["sigmoid", "identity"], seed=0)

        def scale_and_stop(epoch, hist, model):
            if epoch >= 3:
                model.params[:] *= 1e200
                return False
            return None

        kw = dict(epochs=10, lr=1e-3, chunk_seconds=1e-9, callbacks=[scale_and_stop])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if sizes[0] == 256:
                with pytest.raises(ValueError, match="a callback left parameters whose loss"):
                    m.fit(x, y, **kw)
            else:
                with pytest.raises(fastbp.DivergenceError):
                    m.fit(x, y, **kw)
                assert np.isfinite(m.loss(x, y))


def test_the_end_check_takes_the_datas_norms_from_fits_own_checks(monkeypatch):
    """fit checks large inputs and targets for NaN and infinity with one sum of squares
    each (_validation.all_finite); the check of the state the run ends in takes the
    data's norms from those sums instead of another pass over the data -- only where the
    run trains on exactly the arrays checked, and the same bound either way."""
    from fastbp import _divergence
    seen = []
    original = _divergence.data_bounds

    def spy(x, y, sw, squares=None):
        seen.append(squares)
        return original(x, y, sw, squares)

    monkeypatch.setattr(_divergence, "data_bounds", spy)
    rng = np.random.default_rng(0)
    # over _validation.SMALL_FINITE_CHECK values each (16,384): checked by a sum
    x, y = rng.normal(size=(9000, 8)), rng.normal(size=(9000, 2))
    for dtype in ("float64", "float32"):
        m = fastbp.MLP([8, 4, 2], activation=["tanh", "identity"], seed=0, dtype=dtype)
        seen.clear()
        m.fit(x, y, epochs=1, lr=0.01, batch_size=300)  # float64 data, converted once
        (x_squares, y_squares), = seen
        xt, yt = x.astype(dtype), y.astype(dtype)
        # fit's own sums, and the data's sums of squares to the dtype's rounding
        from fastbp._validation import sum_of_squares
        assert x_squares == sum_of_squares(xt.ravel())
        assert y_squares == sum_of_squares(yt.ravel())
        rel = 1e-12 if dtype == "float64" else 1e-5
        assert x_squares == pytest.approx(float(np.sum(x.astype(dtype).astype(float) ** 2)),
                                          rel=rel)
        assert y_squares == pytest.approx(float(np.sum(y.astype(dtype).astype(float) ** 2)),
                                          rel=rel)
        sw = np.zeros(0, dtype=dtype)
        np.testing.assert_allclose(original(xt, yt, sw, seen[0]), original(xt, yt, sw),
                                   rtol=1e-12)
        seen.clear()  # the rows a validation_fraction leaves: their own norms
        m.fit(x, y, epochs=1, lr=0.01, batch_size=300, validation_fraction=0.2)
        assert seen == [None]
        seen.clear()  # small arrays are checked element by element: no sums to take
        m.fit(x[:10], y[:10], epochs=1, lr=0.01)
        assert seen == [(None, None)]


def test_the_rewind_puts_back_the_best_parameters_with_the_early_stopping_record(
        tmp_path, monkeypatch):
    """restore_best keeps the parameters of the best validation record.  A rewind after
    divergence goes back to a state before a better record was found -- here the last
    record before the divergence, whose validation loss (of the state after its update,
    the one whose training loss overflows) is 0 -- and must put back the best parameters
    of that state with its early-stopping record.  It put back the record only: the
    checkpoint said best_epoch 0 but held the diverging state as the best parameters,
    which a resumed run's restore_best would have put back.  Chunks of one epoch, so that
    the rewind starts from a snapshot with a best record of its own."""
    from fastbp import _driver
    x, y, net, lr, _ = _overflowing_run()
    m = net()
    states = [m.params.copy()]  # the run's states, to rounding: the plain update by hand
    for _ in range(4):
        W, b = m.gradient(x, y)
        m.params[:] -= lr * np.concatenate([np.concatenate([w.ravel(), c]) for w, c in zip(W, b)])
        states.append(m.params.copy())
    xv = x[:5] * 1e-3
    yv = m.predict(xv)  # the outputs of the state after 4 epochs: its validation loss ~0
    monkeypatch.setattr(_driver, "first_chunk", lambda *args: 1)
    path = str(tmp_path / "run.npz")
    kw = dict(lr=lr, validation_data=(xv, yv), patience=1000, restore_best=True)
    with pytest.warns(RuntimeWarning, match="training diverged at epoch 4"):
        h = net().fit(x, y, epochs=60, on_divergence="warn", checkpoint=path,
                      checkpoint_every=10**6, chunk_seconds=1e-9, **kw)
    assert h.stopped == "diverged" and h.epochs == 3
    saved = np.load(path)
    best_epoch = int(saved["es_best_epoch"][0])
    reference = net()  # the run up to that record, its best parameters restored
    reference.fit(x, y, epochs=best_epoch + 1, **kw)
    np.testing.assert_array_equal(saved["best_params"], reference.params)
    assert not np.allclose(saved["best_params"], states[4])


def test_the_end_check_takes_the_datas_norms_afresh_when_callbacks_run():
    """A callback could change the training arrays in place (fit trains on the caller's
    own array when its dtype and layout fit; the docs say not to): the norms fit's checks
    computed would then be stale, too small, and the bound would prove finite a state
    whose loss overflows.  With callbacks the check takes the norms afresh."""
    rng = np.random.default_rng(0)
    n = 20000  # over 16,384 targets: fit's check of y takes one sum of squares
    X, y = rng.normal(size=(n, 2)), rng.normal(size=n)

    def rescale(epoch, hist, model):
        if epoch == 1:
            y[...] *= 1e160  # in place: the targets the run ends on

    m = fastbp.MLP([2, 3, 1], activation=["relu", "identity"], seed=0, init="normal")
    with pytest.raises(fastbp.DivergenceError, match="max \\|y\\| = 3.98e\\+160"):
        m.fit(X, y, epochs=3, lr=1e-300, record_every=100, chunk_seconds=1e-9,
              callbacks=[rescale])


def test_a_resume_whose_checkpoint_loss_overflows_says_it_cannot_go_back(tmp_path,
                                                                         monkeypatch):
    """A checkpoint can hold a state whose loss is not finite (a callback that raised
    after the update that overflowed it leaves the run, and its file, in that state).
    Its resume diverges at once and cannot go back before the checkpoint: the message
    said the model kept 'the last parameters of the run with a finite loss', whose loss
    then raised.  Now it says no state since the checkpoint has one, and what to do."""
    from fastbp import _driver
    x, y, net, lr, E = _overflowing_run()
    monkeypatch.setattr(_driver, "first_chunk", lambda *args: E)
    path = str(tmp_path / "run.npz")

    def stop_hard(epoch, hist, model):
        if epoch == E:
            raise RuntimeError("the user's own stop")

    with pytest.raises(RuntimeError, match="the user's own stop"):
        net().fit(x, y, epochs=E + 10, lr=lr, checkpoint=path, callbacks=[stop_hard],
                  chunk_seconds=1e-9)
    with pytest.raises(fastbp.DivergenceError) as info:
        fastbp.resume(path, x, y)
    msg = str(info.value)
    assert f"No state since the checkpoint this run resumed from (after {E} epochs" in msg
    assert "resume from an earlier checkpoint, or train again" in msg
    assert "last parameters of the run with a finite loss" not in msg
    with pytest.raises(FloatingPointError):  # what the message now says
        info.value.model.loss(x, y)
    # the start of a fresh run whose loss is not finite: said alike
    _, start_msg = _message(fastbp.MLP([2, 8, 1], activation="identity", init=1e120), X, Y,
                            epochs=5, lr=0.01)
    assert "No state of the run has a finite loss, its start included" in start_msg
