"""fastbp.Ensemble: every model bit-identical to the same MLP trained alone, whatever the
number of threads; per-model hyper-parameters and data; evaluation; bad input;
divergence of some models while the others train on."""

import warnings

import numpy as np
import pytest

import fastbp

SIZES = [3, 5, 2]
ACTS = ["tanh", "identity"]
N_MODELS = 5


def problem(n=12, sizes=SIZES, seed=0, k_models=None):
    rng = np.random.default_rng(seed)
    shape = (n,) if k_models is None else (k_models, n)
    X = rng.normal(size=shape + (sizes[0],))
    y = rng.normal(size=shape + (sizes[-1],))
    return X, y


def alone(ens, m, X, y, **fit_kw):
    """Model m of ``ens`` trained alone: a fresh MLP with the same init and seed."""
    model = fastbp.MLP(ens.sizes, activation=list(ens.activations), loss=ens.loss_name,
                       init=ens.inits[m], bias=ens.bias, dtype=ens.dtype, seed=ens.seeds[m])
    hist = model.fit(X, y, **fit_kw)
    return model, hist


def assert_same_as_alone(ens, hist, X, y, lrs, **fit_kw):
    for m in range(ens.n_models):
        Xm = X[m] if np.ndim(X) == 3 else X
        ym = y[m] if np.ndim(y) == 3 else y
        model, h = alone(ens, m, Xm, ym, lr=lrs[m], **fit_kw)
        np.testing.assert_array_equal(ens.params[m], model.params, err_msg=f"model {m}")
        np.testing.assert_array_equal(hist.loss[m], h.loss, err_msg=f"history {m}")


# ------------------------------------------------------------------ bit-identity

MODES = {
    "full-batch": dict(batch_size=None, shuffle=False),
    "sgd": dict(batch_size=1, shuffle=True),
    "mini-batch": dict(batch_size=5, shuffle=True),
    "mini-batch-in-order": dict(batch_size=5, shuffle=False),
}


@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("mode", list(MODES))
def test_bit_identical_to_one_by_one(mode, n_jobs):
    X, y = problem()
    ens = fastbp.Ensemble(SIZES, N_MODELS, activation=ACTS, loss="mse", init="normal", seed=3)
    lrs = np.linspace(0.01, 0.08, N_MODELS)
    kw = dict(epochs=40, record_every=3, **MODES[mode])
    hist = ens.fit(X, y, lr=lrs, n_jobs=n_jobs, **kw)
    assert hist.loss.shape == (N_MODELS, 14)
    assert hist.epochs == 40
    assert not ens.diverged.any()
    assert_same_as_alone(ens, hist, X, y, lrs, **kw)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_thread_count_does_not_change_results(n_jobs):
    X, y = problem(n=20)
    runs = []
    for jobs in (1, n_jobs, None):
        ens = fastbp.Ensemble([3, 8, 8, 2], 7, activation="sigmoid", loss="half_mse", seed=1)
        h = ens.fit(X, y, epochs=30, lr=0.3, batch_size=4, shuffle=True, n_jobs=jobs)
        runs.append((ens.params.copy(), h.loss))
    for params, loss in runs[1:]:
        np.testing.assert_array_equal(params, runs[0][0])
        np.testing.assert_array_equal(loss, runs[0][1])


def test_threads_share_a_chunks_models_with_the_same_results(monkeypatch):
    """Models go to the threads only when a chunk gives each enough work
    (_many.THREADED_TASK_WORK); then each thread takes the next model until none is
    left (_threads.each), and the results are those of one thread."""
    import threading
    import time
    from fastbp import _many
    X, y = problem(n=20)
    runs = []
    original = _many.ManyFit._train_one
    threads = set()

    def spy(self, *args):
        threads.add(threading.get_ident())
        time.sleep(0.002)  # so that every worker thread gets models
        return original(self, *args)

    monkeypatch.setattr(_many.ManyFit, "_train_one", spy)
    for jobs, threshold in ((1, 0), (2, 0), (2, 10 ** 12)):
        monkeypatch.setattr(_many, "THREADED_TASK_WORK", threshold)
        threads.clear()
        ens = fastbp.Ensemble([3, 8, 8, 2], 9, activation="sigmoid", loss="half_mse", seed=1)
        h = ens.fit(X, y, epochs=30, lr=0.3, batch_size=4, shuffle=True, n_jobs=jobs)
        runs.append((ens.params.copy(), h.loss, len(threads)))
    assert runs[0][2] == 1 and runs[1][2] >= 2 and runs[2][2] == 1
    for params, loss, _ in runs[1:]:
        np.testing.assert_array_equal(params, runs[0][0])
        np.testing.assert_array_equal(loss, runs[0][1])


def test_each_shares_tasks_only_when_they_have_work_enough():
    """_threads.each: several threads, each taking the next task, when a task's work
    reaches the threshold; the calling thread alone otherwise; every task run once."""
    import threading
    import time
    from fastbp import _threads as T

    def run_all(threads, work, min_work):
        seen, idents = [], set()

        def run(task):
            idents.add(threading.get_ident())
            time.sleep(0.002)  # so that every worker thread gets tasks
            seen.append(task)

        T.each(run, list(range(12)), threads, work, min_work)
        assert sorted(seen) == list(range(12))
        return idents

    here = threading.get_ident()
    assert run_all(1, 10, 0) == {here}
    assert run_all(2, 10, 11) == {here}
    shared = run_all(2, 10, 10)
    assert len(shared) == 2 and here not in shared


def test_an_error_in_a_thread_reaches_the_caller():
    from fastbp import _threads as T

    def run(task):
        if task == 3:
            raise RuntimeError("task 3")

    with pytest.raises(RuntimeError, match="task 3"):
        T.each(run, list(range(8)), 2, 1, 0)


def test_fit_seed_per_model_restarts_streams():
    X, y = problem()
    ens = fastbp.Ensemble(SIZES, 3, activation=ACTS, seed=0)
    ens.fit(X, y, epochs=10, lr=0.05, batch_size=3, shuffle=True, seed=[4, 5, 6], n_jobs=2)
    for m, s in enumerate([4, 5, 6]):
        model, _ = alone(ens, m, X, y, epochs=10, lr=0.05, batch_size=3, shuffle=True, seed=s)
        np.testing.assert_array_equal(ens.params[m], model.params)


def test_two_fits_continue_like_one_long_fit():
    X, y = problem()
    ens = fastbp.Ensemble(SIZES, 3, activation=ACTS, seed=2)
    ens.fit(X, y, epochs=15, lr=0.05, batch_size=4, shuffle=True)
    ens.fit(X, y, epochs=15, lr=0.05, batch_size=4, shuffle=True)
    for m in range(3):
        model, _ = alone(ens, m, X, y, epochs=30, lr=0.05, batch_size=4, shuffle=True)
        np.testing.assert_array_equal(ens.params[m], model.params)


def test_float32_and_bce_are_bit_identical():
    X, _ = problem(n=16)
    y = (X[:, :1] > 0).astype(float)
    ens = fastbp.Ensemble([3, 4, 1], 4, activation=["relu", "sigmoid"], loss="bce",
                          init="he", dtype="float32", seed=9)
    hist = ens.fit(X, y, epochs=25, lr=0.2, batch_size=3, shuffle=True, n_jobs=2)
    assert ens.params.dtype == np.float32
    assert_same_as_alone(ens, hist, X, y, [0.2] * 4, epochs=25, batch_size=3, shuffle=True)


# --------------------------------------------------------- per-model settings and data


def test_lr_sweep_uses_each_models_lr():
    X, y = problem(n=16)
    lrs = [0.005, 0.02, 0.08, 0.3]
    # the same seed for every model: same initial parameters, only lr differs
    ens = fastbp.Ensemble(SIZES, 4, activation=ACTS, loss="mse", seeds=[7] * 4)
    np.testing.assert_array_equal(ens.params, np.repeat(ens.params[:1], 4, axis=0))
    hist = ens.fit(X, y, epochs=60, lr=lrs, n_jobs=2)
    assert_same_as_alone(ens, hist, X, y, lrs, epochs=60)
    final = hist.loss[:, -1]
    assert len(set(final.tolist())) == 4  # really different runs
    assert np.all(np.diff(final) < 0)      # larger steps got further in 60 epochs
    np.testing.assert_array_equal(hist.loss[:, 0], np.full(4, hist.loss[0, 0]))


def test_batch_size_and_shuffle_per_model():
    X, y = problem(n=12)
    batches = [None, 1, 4, 4, 12]
    shuffles = [False, True, True, False, True]
    ens = fastbp.Ensemble(SIZES, 5, activation=ACTS, seed=11)
    hist = ens.fit(X, y, epochs=12, lr=0.03, batch_size=batches, shuffle=shuffles, n_jobs=2)
    for m in range(5):
        model, h = alone(ens, m, X, y, epochs=12, lr=0.03, batch_size=batches[m],
                         shuffle=shuffles[m])
        np.testing.assert_array_equal(ens.params[m], model.params)
        np.testing.assert_array_equal(hist.loss[m], h.loss)
        np.testing.assert_array_equal(ens[m]._rng_state, model._rng_state)


@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_per_sample_models_without_shuffling_follow_the_samples_in_order(n_jobs, dtype):
    """A thread's buffers serve model after model: a per-sample model that does not
    shuffle runs through the samples in order even after one that shuffled on the same
    thread left its permutation in the buffers (each model as it trains alone)."""
    X, y = problem(n=12)
    batches = [1, 1, 1, 4, 4, 1]
    shuffles = [True, False, True, True, False, False]
    ens = fastbp.Ensemble(SIZES, 6, activation=ACTS, seed=17, dtype=dtype)
    hist = ens.fit(X, y, epochs=5, lr=0.05, batch_size=batches, shuffle=shuffles, seed=3,
                   n_jobs=n_jobs)
    for m in range(6):
        model, h = alone(ens, m, X, y, epochs=5, lr=0.05, batch_size=batches[m],
                         shuffle=shuffles[m], seed=3)
        np.testing.assert_array_equal(ens.params[m], model.params)
        np.testing.assert_array_equal(hist.loss[m], h.loss)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_run_in_many_chunks_is_each_model_alone(monkeypatch, n_jobs):
    """Each model's kernel options are made at its first chunk and kept (_many.py:
    _model_options): a run cut into chunks of 3 epochs trains every model, its records
    and its shuffling stream as one fit alone would."""
    from fastbp import _driver
    monkeypatch.setattr(_driver, "first_chunk", lambda *args: 3)
    monkeypatch.setattr(_driver, "next_chunk", lambda *args, **kw: 3)
    X, y = problem(n=12)
    batches = [None, 1, 4, 4, 12]
    shuffles = [False, True, True, False, True]
    lrs = [0.03, 0.02, 0.05, 0.04, 0.03]
    ens = fastbp.Ensemble(SIZES, 5, activation=ACTS, seed=13)
    hist = ens.fit(X, y, epochs=17, lr=lrs, batch_size=batches, shuffle=shuffles,
                   record_every=2, n_jobs=n_jobs)
    for m in range(5):
        model, h = alone(ens, m, X, y, epochs=17, lr=lrs[m], batch_size=batches[m],
                         shuffle=shuffles[m], record_every=2)
        np.testing.assert_array_equal(ens.params[m], model.params)
        np.testing.assert_array_equal(hist.loss[m], h.loss)
        np.testing.assert_array_equal(ens[m]._rng_state, model._rng_state)


def test_per_model_init_and_explicit_seeds():
    inits = ["uniform", "normal", "xavier", "he", 0.25]
    seeds = [10, 11, 12, 13, 14]
    ens = fastbp.Ensemble(SIZES, 5, activation=ACTS, init=inits, seeds=seeds)
    assert ens.seeds == seeds and ens.inits == inits and ens.seed is None
    for m in range(5):
        model = fastbp.MLP(SIZES, activation=ACTS, init=inits[m], seed=seeds[m])
        np.testing.assert_array_equal(ens.params[m], model.params)
        np.testing.assert_array_equal(ens._rng_states[m], model._rng_state)


def test_bootstrap_data_per_model():
    X, y = problem(n=15)
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 15, size=(4, 15))
    Xb, yb = X[idx], y[idx]                    # (4, 15, 3), (4, 15, 2)
    ens = fastbp.Ensemble(SIZES, 4, activation=ACTS, seed=5)
    hist = ens.fit(Xb, yb, epochs=20, lr=0.05, batch_size=5, shuffle=True, n_jobs=2)
    assert_same_as_alone(ens, hist, Xb, yb, [0.05] * 4, epochs=20, batch_size=5,
                         shuffle=True)


def test_per_model_inputs_with_shared_targets_and_the_reverse():
    X, y = problem(n=10, sizes=[3, 4, 1])
    Xs, ys = problem(n=10, sizes=[3, 4, 1], seed=1, k_models=3)
    for data in [(Xs, y), (X, ys), (X, ys[:, :, 0]), (Xs, ys[:, :, 0])]:
        ens = fastbp.Ensemble([3, 4, 1], 3, seed=6)
        hist = ens.fit(*data, epochs=8, lr=0.1)
        for m in range(3):
            Xm = data[0][m] if data[0].ndim == 3 else data[0]
            ym = data[1][m] if data[1].shape[0] == 3 else data[1]
            model, h = alone(ens, m, Xm, ym, epochs=8, lr=0.1)
            np.testing.assert_array_equal(ens.params[m], model.params)
            np.testing.assert_array_equal(hist.loss[m], h.loss)


# -------------------------------------------------------------------- evaluation


@pytest.fixture
def trained():
    X, y = problem(n=14)
    ens = fastbp.Ensemble(SIZES, 6, activation=ACTS, loss="mse", init="normal", seed=8)
    ens.fit(X, y, epochs=30, lr=np.linspace(0.002, 0.1, 6), n_jobs=2)
    return ens, X, y


def test_predict_predict_mean_and_loss(trained):
    ens, X, y = trained
    out = ens.predict(X)
    assert out.shape == (6, 14, 2) and out.dtype == np.float64
    for m in range(6):
        np.testing.assert_array_equal(out[m], ens[m].predict(X))
    np.testing.assert_array_equal(ens.predict(X, n_jobs=1), out)
    from fastbp import ensemble as E  # the models on two threads, however small
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(E, "THREADED_PREDICT_WORK", 0)
        np.testing.assert_array_equal(ens.predict(X, n_jobs=2), out)
    np.testing.assert_allclose(ens.predict_mean(X), out.mean(axis=0), rtol=0, atol=0)
    assert ens.predict_mean(X).shape == (14, 2)
    losses = ens.loss(X, y)
    assert losses.shape == (6,)
    np.testing.assert_array_equal(losses, [ens[m].loss(X, y) for m in range(6)])


def test_predict_and_loss_with_per_model_data(trained):
    ens, _, _ = trained
    Xs, ys = problem(n=9, seed=3, k_models=6)
    out = ens.predict(Xs)
    assert out.shape == (6, 9, 2)
    for m in range(6):
        np.testing.assert_array_equal(out[m], ens[m].predict(Xs[m]))
    np.testing.assert_array_equal(ens.loss(Xs, ys),
                                  [ens[m].loss(Xs[m], ys[m]) for m in range(6)])


def test_best_orders_by_loss(trained):
    ens, X, y = trained
    Xv, yv = problem(n=20, seed=9)
    by_val = ens.best(6, Xv, yv)
    np.testing.assert_array_equal(by_val, np.argsort(ens.loss(Xv, yv), kind="stable"))
    by_train = ens.best(3)
    np.testing.assert_array_equal(by_train,
                                  np.argsort(ens.history.loss[:, -1], kind="stable")[:3])
    assert ens.best()[0] == by_train[0]
    assert len(ens.best(100)) == 6
    with pytest.raises(ValueError, match="both X and y"):
        ens.best(2, Xv)
    with pytest.raises(ValueError, match="fitted"):
        fastbp.Ensemble(SIZES, 2).best()


def test_model_view_shares_memory():
    X, y = problem()
    ens = fastbp.Ensemble(SIZES, 3, activation=ACTS, seed=4)
    before = ens.params.copy()
    view = ens[1]
    assert isinstance(view, fastbp.MLP) and np.shares_memory(view.params, ens.params)
    view.fit(X, y, epochs=5, lr=0.1)
    assert not np.array_equal(ens.params[1], before[1])
    np.testing.assert_array_equal(ens.params[[0, 2]], before[[0, 2]])
    model, _ = alone(fastbp.Ensemble(SIZES, 3, activation=ACTS, seed=4), 1, X, y,
                     epochs=5, lr=0.1)
    np.testing.assert_array_equal(ens.params[1], model.params)
    ens[-1].weights[0][...] = 0.5
    assert np.all(ens.params[2, :15] == 0.5)
    assert len(ens) == 3
    with pytest.raises(IndexError):
        ens[3]


# --------------------------------------------------------------------- bad input


@pytest.fixture
def ens4():
    return fastbp.Ensemble([2, 3, 1], 4, seed=0)


def _xy(n=10):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 2)), rng.normal(size=n)


@pytest.mark.parametrize("kw, match", [
    (dict(lr=[0.1, 0.2]), "lr has 2 values but the ensemble has 4 models"),
    (dict(lr=np.full(5, 0.1)), "lr has 5 values"),
    (dict(lr=[0.1, 0.1, -1.0, 0.1]), "lr must be a finite number > 0"),
    (dict(batch_size=[1, 2, 3]), "batch_size has 3 values"),
    (dict(shuffle=[True, False]), "shuffle has 2 values"),
    (dict(seed=[1, 2]), "seed has 2 values"),
    (dict(n_jobs=0), "n_jobs must be >= 1"),
    (dict(on_divergence="stop"), "on_divergence"),
])
def test_bad_hyper_parameters(ens4, kw, match):
    X, y = _xy()
    with pytest.raises(ValueError, match=match):
        ens4.fit(X, y, **kw)


@pytest.mark.parametrize("shuffle", [1.0, [True, 0.0, False, True], np.float64(1.0), "yes"])
def test_shuffle_takes_what_mlp_fit_takes(ens4, shuffle):
    """MLP.fit refuses shuffle=1.0 (only bools, 0 and 1); so does the ensemble and
    sweep (they took any value equal to 0 or 1)."""
    X, y = _xy()
    with pytest.raises(TypeError, match="shuffle must be True or False"):
        ens4.fit(X, y, shuffle=shuffle)
    with pytest.raises(TypeError, match="shuffle must be True or False"):
        fastbp.MLP([2, 3, 1]).fit(X, y, shuffle=np.ravel(shuffle)[1 if np.ndim(shuffle) else 0])
    with pytest.raises(TypeError, match="shuffle must be True or False"):
        fastbp.sweep({"shuffle": [shuffle] if np.ndim(shuffle) == 0 else shuffle}, X, y,
                     sizes=[2, 3, 1])
    assert ens4.fit(X, y, shuffle=[True, 0, np.bool_(False), 1]).loss.shape == (4, 1)


def test_bad_data(ens4):
    X, y = _xy()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="3-D X must have one data set per model: first "
                                         "axis 3, expected n_models = 4"):
        ens4.fit(rng.normal(size=(3, 10, 2)), y)
    with pytest.raises(ValueError, match="3-D y must have one target set per model: "
                                         "first axis 5"):
        ens4.fit(X, rng.normal(size=(5, 10, 1)))
    with pytest.raises(ValueError, match=r"X and y\[0\] have different numbers of "
                                         r"samples: 10 and 9"):
        ens4.fit(rng.normal(size=(4, 10, 2)), rng.normal(size=(4, 9, 1)))
    with pytest.raises(ValueError, match=r"y\[0\] has 2 columns"):
        ens4.fit(X, rng.normal(size=(4, 10, 2)))
    with pytest.raises(ValueError, match=r"per-model targets must be \(n_models, n_samples"):
        ens4.fit(rng.normal(size=(4, 10, 2)), rng.normal(size=(4, 9)))
    with pytest.raises(ValueError, match=r"X\[0\] has 3 features"):
        ens4.fit(rng.normal(size=(4, 10, 3)), y)
    with pytest.raises(ValueError, match="X must be 2-D"):
        ens4.fit(rng.normal(size=(4, 1, 10, 2)), y)
    with pytest.raises(ValueError, match="different numbers of samples"):
        ens4.fit(X, y[:7])
    with pytest.raises(ValueError, match="NaN"):
        ens4.fit(np.full((4, 10, 2), np.nan), y)
    with pytest.raises(ValueError, match="3-D X must have one data set per model"):
        ens4.predict(rng.normal(size=(2, 10, 2)))
    for call in (ens4.fit, ens4.loss):  # as MLP (was an AttributeError from the job)
        with pytest.raises(TypeError, match="y has dtype object"):
            call(X, None)


@pytest.mark.parametrize("n_models", [0, -2])
def test_n_models_below_one(n_models):
    with pytest.raises(ValueError, match="n_models must be >= 1"):
        fastbp.Ensemble(SIZES, n_models)


def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match="n_models must be an integer"):
        fastbp.Ensemble(SIZES, 2.0)
    with pytest.raises(ValueError, match="init has 2 values but the ensemble has 3"):
        fastbp.Ensemble(SIZES, 3, init=["uniform", "he"])
    with pytest.raises(ValueError, match="seeds has 2 values"):
        fastbp.Ensemble(SIZES, 3, seeds=[1, 2])
    with pytest.raises(ValueError, match="either seed"):
        fastbp.Ensemble(SIZES, 2, seed=1, seeds=[1, 2])
    with pytest.raises(ValueError, match="seeds must hold integers"):
        fastbp.Ensemble(SIZES, 2, seeds=[1, None])
    with pytest.raises(ValueError, match="seeds must be a sequence"):
        fastbp.Ensemble(SIZES, 2, seeds=3)


def test_non_finite_parameters_are_refused(ens4):
    X, y = _xy()
    ens4.params[2, 0] = np.nan
    with pytest.raises(ValueError, match=r"models \[2\]"):
        ens4.fit(X, y)


def test_assigning_params_is_checked_and_copied(ens4):
    """ens.params = array checks the array as MLP.params does and copies it into the
    ensemble's own parameters: a wrongly shaped, typed or ordered array used to become
    the kernels' parameters (a short row was read and written past its end)."""
    X, y = _xy()
    n_params = ens4.params.shape[1]
    own = ens4.params
    for bad in (np.zeros((4, 5)), np.zeros((5, n_params)), np.zeros(n_params)):
        with pytest.raises(ValueError, match=rf"params must have shape \(4, {n_params}\)"):
            ens4.params = bad
    new = np.asfortranarray(np.random.default_rng(3).normal(size=(4, n_params)))
    ens4.params = new.astype(np.float32)  # converted to the ensemble's dtype
    assert ens4.params is own and ens4.params.dtype == np.float64
    ens4.params = new
    assert ens4.params is own and ens4.params.flags.c_contiguous
    np.testing.assert_array_equal(ens4.params, new)
    assert np.shares_memory(ens4[1].params, ens4.params)
    hist = ens4.fit(X, y, epochs=3, lr=0.1)
    assert hist.loss.shape == (4, 3) and np.isfinite(ens4.params).all()
    np.testing.assert_array_equal(ens4.predict(X)[0], ens4[0].predict(X))


def test_pickles_of_the_earlier_layout_load(ens4):
    """A pickle whose state names the parameters "params" (before the checked property)
    loads into the property's array."""
    state = ens4.__getstate__()
    state["params"] = state.pop("_params")
    twin = fastbp.Ensemble.__new__(fastbp.Ensemble)
    twin.__setstate__(state)
    np.testing.assert_array_equal(twin.params, ens4.params)
    assert "params" not in vars(twin)


# -------------------------------------------------------------------- divergence


def _diverging():
    rng = np.random.default_rng(2)
    X = 10 * rng.normal(size=(21, 2))
    y = rng.normal(size=21)
    ens = fastbp.Ensemble([2, 4, 4, 1], 3, activation="identity", loss="mse", seed=1)
    return ens, X, y, [0.0005, 1e3, 0.001]


@pytest.mark.parametrize("kw", [dict(), dict(batch_size=3, shuffle=True)])
def test_diverging_model_is_marked_others_train(kw):
    ens, X, y, lrs = _diverging()
    with pytest.warns(RuntimeWarning, match=r"1 of 3 models diverged .* models \[1\]"):
        hist = ens.fit(X, y, epochs=100, lr=lrs, n_jobs=2, **kw)
    np.testing.assert_array_equal(ens.diverged, [False, True, False])
    assert np.isfinite(ens.params).all()
    assert hist.loss.shape == (3, 100)
    for m in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # model 1 diverges alone too
            model, h = alone(ens, m, X, y, epochs=100, lr=lrs[m], on_divergence="warn", **kw)
        np.testing.assert_array_equal(ens.params[m], model.params)
        n = len(h.loss)
        np.testing.assert_array_equal(hist.loss[m, :n], h.loss)
        assert np.isnan(hist.loss[m, n:]).all()
        assert hist.extra["epochs_per_model"][m] == h.epochs
        np.testing.assert_array_equal(ens._rng_states[m], model._rng_state)
    assert hist.extra["epochs_per_model"][1] < 100 == hist.extra["epochs_per_model"][0]
    assert hist.extra["diverged_epoch"][1] >= 0
    assert np.all(hist.extra["diverged_epoch"][[0, 2]] == -1)
    assert np.isfinite(hist.loss[[0, 2]]).all()
    assert ens.best(3)[-1] == 1  # diverged models rank last


def test_history_of_a_fit_whose_models_all_diverge_ends_with_their_epochs():
    """Every model diverges: the fit ends early, and its History holds the records of
    the epochs the models ran, as an interrupted fit's does (len == ceil(epochs /
    record_every)).  It held those of the whole last chunk -- columns of epochs no model
    ran, NaN throughout --, so a local sweep's History differed from the distributed
    sweep's, which cuts them."""
    ens, X, y, _ = _diverging()
    hist = ens.fit(X, y, epochs=10**5, lr=[1e3, 1e4, 1e5], record_every=3,
                   on_divergence="ignore")
    assert ens.diverged.all() and hist.epochs < 10**5
    assert hist.epochs == hist.extra["epochs_per_model"].max()
    assert len(hist) == -(-hist.epochs // 3) and hist.epochs_recorded[-1] < hist.epochs
    for m in range(3):  # each row is what the model's own fit records
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _, h = alone(ens, m, X, y, epochs=10**5, lr=[1e3, 1e4, 1e5][m],
                         record_every=3, on_divergence="warn")
        np.testing.assert_array_equal(hist.loss[m, :len(h)], h.loss)
        assert np.isnan(hist.loss[m, len(h):]).all()


def test_on_divergence_raise_and_ignore():
    ens, X, y, lrs = _diverging()
    with pytest.raises(fastbp.DivergenceError, match="models \\[1\\]") as info:
        ens.fit(X, y, epochs=50, lr=lrs, on_divergence="raise")
    assert info.value.history.loss.shape == (3, 50)
    assert np.isfinite(info.value.history.loss[0]).all()  # the others trained to the end
    ens, X, y, lrs = _diverging()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ens.fit(X, y, epochs=50, lr=lrs, on_divergence="ignore")
    assert ens.diverged[1]
    # diverged describes the last fit: once model 1 is reset, a gentle fit clears it
    ens.params[1] = ens.params[0]
    ens.fit(X, y, epochs=5, lr=1e-4)
    assert not ens.diverged.any()


# ------------------------------------------------------------------ lanes (SIMD across models)

@pytest.mark.parametrize("acts,loss", [("sigmoid", "sse"), (["relu", "tanh", "identity"], "mse"),
                                       ("sigmoid", "half_mse")])
def test_lanes_path_bit_identical(acts, loss):
    # 19 models: two full blocks of fastbp.kernels.LANES (8) train in lanes, the last 3
    # through the single-model kernel; every one must equal its own MLP.fit.
    X = np.array([[0.1 * i, (0.37 * i) % 1.0] for i in range(21)])
    y = (X[:, :1] > X[:, 1:]).astype(float)
    ens = fastbp.Ensemble([2, 4, 4, 1], 19, acts, loss=loss, init="xavier", seed=5)
    lrs = np.linspace(0.05, 0.5, 19)
    hist = ens.fit(X, y, epochs=60, lr=lrs, record_every=3, n_jobs=2)
    for m in range(19):
        one = fastbp.MLP([2, 4, 4, 1], acts, loss=loss, init="xavier", seed=ens.seeds[m])
        h = one.fit(X, y, epochs=60, lr=lrs[m], record_every=3)
        np.testing.assert_array_equal(one.params, ens.params[m])
        np.testing.assert_array_equal(h.loss, hist.loss[m])


def test_lanes_block_with_a_diverging_model_falls_back_exactly():
    X = np.array([[0.1 * i, (0.37 * i) % 1.0] for i in range(21)])
    y = X.sum(axis=1, keepdims=True)
    ens = fastbp.Ensemble([2, 4, 4, 1], 8, "identity", loss="mse", init="he", seed=1)
    lrs = np.full(8, 0.05)
    lrs[3] = 50.0
    with pytest.warns(RuntimeWarning, match="diverged"):
        hist = ens.fit(X, y, epochs=200, lr=lrs)
    assert ens.diverged[3] and not ens.diverged.all()
    assert np.isfinite(ens.params).all()
    for m in range(8):
        one = fastbp.MLP([2, 4, 4, 1], "identity", loss="mse", init="he", seed=ens.seeds[m])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = one.fit(X, y, epochs=200, lr=lrs[m], on_divergence="warn")
        np.testing.assert_array_equal(one.params, ens.params[m])
        np.testing.assert_array_equal(h.loss, hist.loss[m][:len(h.loss)])
        # nothing of the failed block's run is left past the model's own records
        assert np.isnan(hist.loss[m][len(h.loss):]).all()


def test_class_labels_train_as_their_one_hot_targets():
    X, y = fastbp.datasets.xor_easy()
    labels = (y.ravel() > 0.5).astype(np.int64)
    kw = dict(activation=["sigmoid", "softmax"], loss="cross_entropy", seed=3)
    runs = []
    for targets in (labels, labels.astype(bool), np.eye(2)[labels]):
        ens = fastbp.Ensemble([2, 4, 2], 3, **kw)
        ens.fit(X, targets, epochs=20, lr=0.5)
        runs.append(ens.params.copy())
        np.testing.assert_array_equal(ens.loss(X, targets), ens.loss(X, np.eye(2)[labels]))
    np.testing.assert_array_equal(runs[0], runs[2])
    np.testing.assert_array_equal(runs[1], runs[2])
    m = fastbp.MLP([2, 4, 2], **kw)  # a single model takes boolean labels as well
    m.fit(X, labels.astype(bool), epochs=5, lr=0.5)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        fastbp.Ensemble([2, 4, 2], 2, **kw).fit(X, labels + 1, epochs=1)


def test_shared_inputs_with_per_model_targets_are_not_copied_per_model():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 3))
    Y = rng.normal(size=(4, 40, 2))
    ens = fastbp.Ensemble([3, 5, 2], 4, activation="tanh", loss="mse", seed=1)
    xt, yt = ens._data(X, Y)
    assert xt.shape == (1, 40, 3) and yt.shape == (4, 40, 2)  # one copy of X
    stacked = fastbp.Ensemble([3, 5, 2], 4, activation="tanh", loss="mse", seed=1)
    for batch in (None, 8):
        ens.fit(X, Y, epochs=5, lr=0.1, batch_size=batch)
        stacked.fit(np.stack([X] * 4), Y, epochs=5, lr=0.1, batch_size=batch)
        np.testing.assert_array_equal(ens.params, stacked.params)
        np.testing.assert_array_equal(ens.history.loss, stacked.history.loss)
    np.testing.assert_array_equal(ens.loss(X, Y), stacked.loss(np.stack([X] * 4), Y))
    for m in range(4):  # each model against its own targets, as a single MLP
        np.testing.assert_array_equal(ens.loss(X, Y)[m], ens[m].loss(X, Y[m]))
