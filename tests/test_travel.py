"""Models that travel: pickle, copy.copy and copy.deepcopy of MLP, Ensemble, History and
the scikit-learn wrappers (bit for bit, optimizer state and shuffling stream included),
the fit lock under copies and threads, and training in other processes (joblib's loky,
concurrent.futures, dask.distributed) equal bit for bit to training here.

Every fit here runs the general training loop on float64 C-ordered data (tiny nets,
mini-batches, a few epochs), so one compiled kernel serves all of them -- worker
processes included, which load it from Numba's disk cache.
"""
import concurrent.futures
import copy
import io
import multiprocessing
import pickle
import threading

import numpy as np
import pytest

import fastbp
from fastbp._pickling import FitLock

PROTOCOLS = list(range(pickle.HIGHEST_PROTOCOL + 1))
# adam and momentum: both leave optimizer state that the next fit continues from
OPTIMIZERS = {"adam": dict(optimizer="adam"), "momentum": dict(momentum=0.9)}


def _data(n=24, d=3, k=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, np.tanh(X @ rng.normal(size=(d, k)))


def _fit_kw(opt="adam", epochs=3):
    return dict(epochs=epochs, lr=0.05, batch_size=5, shuffle=True, **OPTIMIZERS[opt])


def _trained(opt="adam", seed=1):
    X, y = _data()
    m = fastbp.MLP([3, 5, 2], activation=["tanh", "identity"], loss="mse", init="xavier",
                   seed=seed)
    m.fit(X, y, **_fit_kw(opt))
    return m


def _assert_same_model(a, b):
    """Bit for bit: every array of the state, and the rest of it by value."""
    sa, sb = a.__getstate__(), b.__getstate__()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        va, vb = sa[key], sb[key]
        if isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype and va.shape == vb.shape, key
            assert va.tobytes() == vb.tobytes(), key
        elif key == "_layout":
            assert (va.sizes, va.bias) == (vb.sizes, vb.bias)
            np.testing.assert_array_equal(va.w_off, vb.w_off)
            np.testing.assert_array_equal(va.b_off, vb.b_off)
        else:
            assert va == vb, key


def _copies(obj):
    """(how, copy) for every way of copying: pickle at each protocol, copy, deepcopy."""
    out = [(f"pickle{p}", pickle.loads(pickle.dumps(obj, protocol=p))) for p in PROTOCOLS]
    return out + [("copy", copy.copy(obj)), ("deepcopy", copy.deepcopy(obj))]


# ---- MLP -------------------------------------------------------------------------------
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_a_copy_that_goes_on_fitting_ends_bit_identical_to_the_original(opt):
    X, y = _data()
    m = _trained(opt)
    assert m.optimizer_state["step"] > 0 and m.optimizer_state["optimizer"] == \
        ("adam" if opt == "adam" else "sgd")
    copies = _copies(m)
    for how, c in copies:
        _assert_same_model(c, m)
        assert not np.shares_memory(c.params, m.params), how
        np.testing.assert_array_equal(c.predict(X), m.predict(X))
    h = m.fit(X, y, **_fit_kw(opt))
    for how, c in copies:
        hc = c.fit(X, y, **_fit_kw(opt))
        _assert_same_model(c, m)
        assert hc.loss.tobytes() == h.loss.tobytes(), how


def test_pickles_keep_dtype_biases_seed_and_activations():
    m = fastbp.MLP([2, 3, 3], activation=["relu", "softmax"], loss="cross_entropy",
                   bias=False, dtype="float32", init="he", seed=7)
    for how, c in _copies(m):
        _assert_same_model(c, m)
        assert (c.dtype, c.bias, c.seed, c.activations, c.loss_name) == \
            (np.float32, False, 7, ("relu", "softmax"), "cross_entropy"), how
        assert c.biases is None and np.shares_memory(c.weights[0], c.params)


def test_pickles_leave_out_the_lock_and_per_process_caches():
    m = _trained()
    state = m.__getstate__()
    left_out = set(m.__dict__) - set(state)
    assert "_fit_lock" in left_out and left_out <= set(fastbp.MLP._TRANSIENT)
    data = pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL)
    looked_up = []

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            looked_up.append(module)
            return super().find_class(module, name)

    Recorder(io.BytesIO(data)).load()
    # what a load imports: fastbp's classes and numpy's (no compiled code, no Numba
    # dispatcher, nothing of this process)
    assert "fastbp.model" in looked_up
    assert all(mod.startswith(("fastbp.", "numpy")) or mod in ("copyreg", "builtins")
               for mod in looked_up), looked_up
    assert b"numba" not in data and b"__pycache__" not in data and b".nbi" not in data
    loaded = pickle.loads(data)
    assert isinstance(loaded._fit_lock, FitLock) and loaded._fit_lock is not m._fit_lock
    assert not loaded._fit_lock.locked()


def test_the_fit_guard_works_on_the_original_and_on_every_copy():
    X, y = _data()
    m = _trained()
    copies = [c for _, c in _copies(m)]
    seen = []

    def inside(model, other):
        def cb(epoch, hist, mdl):
            if seen and seen[-1][0] is model:
                return None
            # a second fit of the model being trained is refused...
            with pytest.raises(RuntimeError, match="already being trained"):
                model.fit(X, y, epochs=1)
            # ...while its copy (or original), with a lock of its own, trains freely
            other.fit(X, y, epochs=1, lr=0.01)
            seen.append((model, epoch))
            return None
        return cb

    for c in copies:
        c.fit(X, y, epochs=2, lr=0.01, callbacks=inside(c, m))
        m.fit(X, y, epochs=2, lr=0.01, callbacks=inside(m, c))
    assert len(seen) == 2 * len(copies)


def test_pickling_while_another_thread_trains_is_refused_without_tearing(tmp_path):
    saved = tmp_path / "m.npz"
    X, y = _data()
    m = _trained()
    reference = copy.deepcopy(m)
    paused, resume = threading.Event(), threading.Event()
    errors = []

    def hold(epoch, hist, model):  # the fit keeps its lock while this waits
        paused.set()
        if not resume.wait(60):
            errors.append("never resumed")

    worker = threading.Thread(target=lambda: m.fit(X, y, callbacks=hold, **_fit_kw()))
    worker.start()
    try:
        assert paused.wait(60)
        # MLP.save too: it read the parameters while the fit's kernel wrote them
        for attempt in (lambda: pickle.dumps(m), lambda: copy.deepcopy(m),
                        lambda: copy.copy(m), lambda: m.save(saved)):
            with pytest.raises(RuntimeError, match="being trained in another thread; "
                                                   "pickle or copy it after fit returns"):
                attempt()
    finally:
        resume.set()
        worker.join(60)
    assert not errors and not worker.is_alive() and not saved.exists()
    # after fit returns the pickle works, and holds the state the fit ended with
    reference.fit(X, y, **_fit_kw())
    _assert_same_model(pickle.loads(pickle.dumps(m)), reference)


def test_a_copy_taken_in_a_callback_is_the_state_after_that_epoch():
    X, y = _data()
    start = _trained()
    m = copy.deepcopy(start)
    snaps = []
    m.fit(X, y, callbacks=lambda e, h, mdl: snaps.append((e, pickle.dumps(mdl))),
          chunk_seconds=1e-9, **_fit_kw(epochs=6))
    assert len(snaps) >= 2  # tiny chunks: several calls, mid-fit ones among them
    for epoch, data in snaps:
        ref = copy.deepcopy(start)
        ref.fit(X, y, **_fit_kw(epochs=epoch))
        _assert_same_model(pickle.loads(data), ref)


# ---- Ensemble --------------------------------------------------------------------------
def test_an_ensemble_round_trips_and_its_members_stay_views_of_its_rows():
    X, y = _data()
    e = fastbp.Ensemble([3, 4, 2], n_models=3, activation="tanh", loss="mse", init="xavier",
                        seed=2)
    e.fit(X, y, epochs=2, lr=0.05, batch_size=6, shuffle=True)
    for how, c in _copies(e):
        for key in ("params", "_rng_states", "diverged"):
            assert getattr(c, key).tobytes() == getattr(e, key).tobytes(), (how, key)
        assert (c.seeds, c.inits, c.seed) == (e.seeds, e.inits, e.seed)
        assert c.history.loss.tobytes() == e.history.loss.tobytes()
        assert not np.shares_memory(c.params, e.params)
        member = c[1]
        member.params[0] = 42.0  # a member writes its ensemble's row, in the copy only
        assert c.params[1, 0] == 42.0 and e.params[1, 0] != 42.0
        assert isinstance(c._fit_lock, FitLock) and c._fit_lock is not e._fit_lock


def test_an_ensemble_copy_that_goes_on_fitting_equals_the_original():
    X, y = _data()
    e = fastbp.Ensemble([3, 4, 2], n_models=3, activation="tanh", loss="mse", init="xavier",
                        seed=2)
    kw = dict(epochs=2, lr=0.05, batch_size=6, shuffle=True)
    e.fit(X, y, **kw)
    c = pickle.loads(pickle.dumps(e))
    h, hc = e.fit(X, y, **kw), c.fit(X, y, **kw)
    assert c.params.tobytes() == e.params.tobytes()
    assert c._rng_states.tobytes() == e._rng_states.tobytes()
    assert hc.loss.tobytes() == h.loss.tobytes()


@pytest.mark.parametrize("kind", ["mlp", "ensemble"])
def test_a_model_loaded_from_a_read_only_memory_map_trains_and_leaves_the_file(tmp_path, kind):
    """joblib.load(..., mmap_mode="r") hands the model read-only arrays: it predicts,
    and it trains (on copies: the file is never written) exactly as the original."""
    joblib = pytest.importorskip("joblib")
    X, y = _data()
    kw = dict(epochs=2, lr=0.05, batch_size=6, shuffle=True)
    if kind == "mlp":
        m = _trained()
        kw.update(OPTIMIZERS["adam"])
    else:
        m = fastbp.Ensemble([3, 4, 2], n_models=3, activation="tanh", loss="mse",
                            init="xavier", seed=2)
        m.fit(X, y, **kw)
    path = tmp_path / "model.joblib"
    joblib.dump(m, path)
    on_disk = path.read_bytes()
    loaded = joblib.load(path, mmap_mode="r")
    assert loaded.params.flags.writeable
    np.testing.assert_array_equal(loaded.predict(X), m.predict(X))
    h, hl = m.fit(X, y, **kw), loaded.fit(X, y, **kw)
    assert loaded.params.tobytes() == m.params.tobytes()
    assert hl.loss.tobytes() == h.loss.tobytes()
    assert path.read_bytes() == on_disk


@pytest.mark.parametrize("kind", ["mlp", "ensemble"])
def test_training_read_only_parameters_is_refused_and_names_them(kind):
    X, y = _data()
    m = (fastbp.MLP([3, 4, 2], seed=0) if kind == "mlp"
         else fastbp.Ensemble([3, 4, 2], n_models=2, seed=0))
    before = m.params.copy()
    m.params.flags.writeable = False
    with pytest.raises(ValueError, match="parameters are read-only"):
        m.fit(X, y, epochs=1, lr=0.1)
    assert m.params.tobytes() == before.tobytes()
    copy.deepcopy(m).fit(X, y, epochs=1, lr=0.1)  # the remedy the message gives


def test_a_pickled_member_is_an_independent_mlp():
    X, y = _data()
    e = fastbp.Ensemble([3, 5, 2], n_models=3, activation=["tanh", "identity"], loss="mse",
                        init="xavier", seed=2)
    before = e.params.copy(), e._rng_states.copy()
    for how, c in _copies(e[1]):
        assert c.params.tobytes() == e.params[1].tobytes(), how
        assert c._rng_state.tobytes() == e._rng_states[1].tobytes()
        assert not np.shares_memory(c.params, e.params)
        assert not np.shares_memory(c._rng_state, e._rng_states)
        c.fit(X, y, **_fit_kw())
    # the copies trained, the ensemble did not
    assert e.params.tobytes() == before[0].tobytes()
    assert e._rng_states.tobytes() == before[1].tobytes()
    c = pickle.loads(pickle.dumps(e[1]))
    c.fit(X, y, **_fit_kw())
    e[1].fit(X, y, **_fit_kw())  # the member trains the ensemble's row, as the copy did
    assert c.params.tobytes() == e.params[1].tobytes()
    assert c._rng_state.tobytes() == e._rng_states[1].tobytes()
    for r in (0, 2):
        assert e.params[r].tobytes() == before[0][r].tobytes()


def test_an_ensemble_being_trained_in_another_thread_refuses_pickles_and_fits():
    X, y = _data()
    e = fastbp.Ensemble([3, 4, 2], n_models=2, activation="tanh", loss="mse", seed=0)
    held, done = threading.Event(), threading.Event()

    def hold():  # what Ensemble.fit does for its whole run
        with e._fit_lock.fitting("Ensemble"):
            held.set()
            done.wait(60)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(60)
        with pytest.raises(RuntimeError, match="Ensemble is being trained in another thread"):
            pickle.dumps(e)
        with pytest.raises(RuntimeError, match="Ensemble is already being trained"):
            e.fit(X, y, epochs=1)
        # a member shares the ensemble's parameters, so it shares its guard: no fit of
        # it and no copy of it (which could catch half an update) while the ensemble fits
        member = e[1]
        with pytest.raises(RuntimeError, match="being trained in another thread"):
            pickle.dumps(member)
        with pytest.raises(RuntimeError, match="already being trained"):
            member.fit(X, y, epochs=1)
    finally:
        done.set()
        t.join(60)
    assert pickle.loads(pickle.dumps(e)).params.tobytes() == e.params.tobytes()
    assert pickle.loads(pickle.dumps(e[1])).params.tobytes() == e.params[1].tobytes()


def test_a_fit_that_starts_while_a_copy_is_read_waits_for_it_instead_of_failing():
    X, y = _data()
    m = _trained()
    reference = copy.deepcopy(m)
    results = []
    with m._fit_lock.still("MLP"):  # a pickle in another thread, in the middle of its copy
        worker = threading.Thread(target=lambda: results.append(m.fit(X, y, **_fit_kw())))
        worker.start()
        worker.join(0.3)
        assert worker.is_alive() and not results  # waiting for the copy, not refused
    worker.join(60)
    assert len(results) == 1 and results[0].stopped is None
    reference.fit(X, y, **_fit_kw())
    _assert_same_model(m, reference)


# ---- History ---------------------------------------------------------------------------
def test_a_history_round_trips():
    X, y = _data()
    m = _trained()
    h = m.fit(X, y, validation_data=(X[:6], y[:6]), **_fit_kw())
    h.extra["note"] = np.arange(3)
    for how, c in _copies(h):
        assert c.loss.tobytes() == h.loss.tobytes() and c.val_loss.tobytes() == \
            h.val_loss.tobytes(), how
        assert (c.epochs, c.record_every, c.seconds, c.stopped, c.best_epoch) == \
            (h.epochs, h.record_every, h.seconds, h.stopped, h.best_epoch)
        np.testing.assert_array_equal(c.extra["note"], h.extra["note"])


# ---- scikit-learn wrappers -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["regressor", "classifier"])
def test_sklearn_wrappers_copy_and_go_on_fitting_identically(kind):
    pytest.importorskip("sklearn")
    from fastbp.sklearn import MLPClassifier, MLPRegressor
    X, y = _data(k=1)
    if kind == "regressor":
        est = MLPRegressor(hidden_layer_sizes=(5,), solver="adam", shuffle=True, max_iter=3,
                           random_state=0)
        y, out = y[:, 0], "predict"
    else:
        est = MLPClassifier((5,), solver="sgd", momentum=0.9, shuffle=True, max_iter=3,
                            random_state=0)
        y, out = (y[:, 0] > 0).astype(int), "predict_proba"
    with pytest.warns(Warning):  # ConvergenceWarning: 3 epochs
        est.fit(X, y)
    copies = _copies(est)
    for how, c in copies:
        _assert_same_model(c._model, est._model)
        assert c.get_params() == est.get_params() and c.loss_curve_ == est.loss_curve_
        assert np.shares_memory(c.coefs_[0], c._model.params)  # views of its own network
        assert not np.shares_memory(c._model.params, est._model.params), how
    est.partial_fit(X, y)
    for how, c in copies:
        c.partial_fit(X, y)
        _assert_same_model(c._model, est._model)
        assert getattr(c, out)(X).tobytes() == getattr(est, out)(X).tobytes(), how


def test_sklearn_wrapper_pickle_keeps_replaced_coefs():
    pytest.importorskip("sklearn")
    from fastbp.sklearn import MLPRegressor
    X, y = _data(k=1)
    with pytest.warns(Warning):
        est = MLPRegressor(hidden_layer_sizes=(5,), max_iter=2, random_state=0).fit(X, y[:, 0])
    est.coefs_ = [np.ones_like(c) for c in est.coefs_]  # scikit-learn allows assigning
    c = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(c.coefs_[0], 1.0)
    assert c.predict(X).tobytes() == est.predict(X).tobytes()


# ---- other processes -------------------------------------------------------------------
def fit_in_worker(model, X, y):
    """What a worker does: train the model it was sent and send it back."""
    model.fit(X, y, **_fit_kw())
    return model


def _jobs():
    X, y = _data()
    return [(_trained(seed=s), X, y) for s in (1, 2)]


def _check_same_as_here(jobs, results):
    assert len(results) == len(jobs)
    for (model, X, y), got in zip(jobs, results):
        here = fit_in_worker(copy.deepcopy(model), X, y)
        _assert_same_model(got, here)
        assert got.params.tobytes() != model.params.tobytes()  # it did train


def test_joblib_loky_workers_train_bit_identically():
    joblib = pytest.importorskip("joblib")
    jobs = _jobs()
    with joblib.parallel_config(backend="loky", n_jobs=2):
        results = joblib.Parallel()(joblib.delayed(fit_in_worker)(*job) for job in jobs)
    _check_same_as_here(jobs, results)


def test_process_pool_workers_train_bit_identically():
    jobs = _jobs()
    # spawn: fresh interpreters, as on another machine (no state inherited by fork)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        results = [f.result(timeout=300) for f in
                   [pool.submit(fit_in_worker, *job) for job in jobs]]
    _check_same_as_here(jobs, results)


def test_dask_workers_train_bit_identically():
    distributed = pytest.importorskip("distributed")
    jobs = _jobs()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        futures = [client.submit(fit_in_worker, *job, pure=False) for job in jobs]
        results = client.gather(futures)
    _check_same_as_here(jobs, results)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_parameters_start_on_a_cache_line_however_the_model_was_made(dtype, tmp_path):
    """The kernels read weight rows from the parameters with vector loads: a model's
    parameters start on a 64-byte boundary whether drawn, given, unpickled, copied or
    loaded from a file (numpy's own arrays do one time in four), and keep their values."""
    drawn = fastbp.MLP([3, 17, 2], seed=1, dtype=dtype)
    path = tmp_path / "m.npz"
    drawn.save(path)
    made = [drawn,
            fastbp.MLP.from_weights(drawn.weights, drawn.biases, dtype=dtype),
            pickle.loads(pickle.dumps(drawn)),
            copy.deepcopy(drawn),
            copy.copy(drawn),
            fastbp.load(path)]
    for model in made:
        assert model.params.ctypes.data % 64 == 0
        assert model.params.dtype == np.dtype(dtype)
        assert model.params.tobytes() == drawn.params.tobytes()
