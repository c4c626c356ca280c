"""Divergence, Ctrl-C and threads: a run always ends with a usable, consistent model.

- divergence: DivergenceError (or a warning) naming the epoch; the model keeps finite
  parameters that the run really had, and a history that ends there;
- Ctrl-C (SIGINT): fit returns at the next chunk boundary with a warning, in a
  subprocess as a user would see it;
- threads: two models train at once as they would one after the other; a second fit of
  the same model is refused.
"""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import fastbp
import fastbp.kernels as K
from fastbp import _dispatch as D
from fastbp import model as model_module
from fastbp.kernels import options as O

XOR_X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_Y = np.array([0.0, 1.0, 1.0, 0.0])


def _relu_net(dtype="float64", seed=0):
    """relu hidden layer, linear output: lr=1e6 makes it blow up within a few epochs."""
    return fastbp.MLP([2, 8, 1], activation=["relu", "identity"], dtype=dtype, seed=seed)


def _problem(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, size=(n, 2)), rng.normal(size=n)


# --------------------------------------------------------------------- divergence


def test_divergence_raises_naming_the_epoch_and_a_smaller_lr():
    m = _relu_net()
    with pytest.raises(fastbp.DivergenceError) as info:
        m.fit(XOR_X, XOR_Y, epochs=200, lr=1e6)
    e = info.value
    assert isinstance(e, FloatingPointError)
    assert f"diverged at epoch {e.epoch} " in str(e)
    assert "smaller learning rate than lr=1e+06" in str(e)
    assert 0 < e.history.epochs <= e.epoch < 200
    assert len(e.history.loss) == e.history.epochs  # record_every=1: one per epoch run
    assert np.isfinite(e.history.loss).all()
    assert e.history.stopped == "diverged"
    assert e.model is m
    assert np.isfinite(m.params).all()


MODES = [
    dict(batch_size=None, shuffle=False, record_every=1),
    dict(batch_size=None, shuffle=False, record_every=3),
    dict(batch_size=1, shuffle=True, record_every=1),
    dict(batch_size=5, shuffle=True, record_every=2),
    dict(batch_size=5, shuffle=False, record_every=1),
]


@pytest.mark.parametrize("chunk_seconds", [0.2, 1e-9], ids=["chunks", "one-epoch-chunks"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES, ids=lambda d: "-".join(map(str, d.values())))
def test_diverged_model_holds_a_state_the_run_had(mode, dtype, chunk_seconds):
    """After divergence the parameters (and the shuffling stream) are exactly those of
    the same run stopped after ``history.epochs`` epochs, and training can go on.
    Chunks of one epoch keep each chunk's start in the guard's buffer rather than in a
    copy (SingleFit), which the replays of the rewind must not lose; full batch with
    record_every 3 and one-epoch chunks needs the rewind's anchor (the loss overflows
    float32 two epochs before the next record, past both kept chunk starts)."""
    X, y = _problem()
    m = _relu_net(dtype)
    with pytest.raises(fastbp.DivergenceError) as info:
        m.fit(X, y, epochs=300, lr=1e4, seed=3, chunk_seconds=chunk_seconds, **mode)
    h = info.value.history
    ref = _relu_net(dtype)
    if h.epochs:
        h_ref = ref.fit(X, y, epochs=h.epochs, lr=1e4, seed=3, **mode)
        np.testing.assert_array_equal(h.loss, h_ref.loss)
    else:
        ref._rng_state = K.seed_state(3)
    np.testing.assert_array_equal(m.params, ref.params)
    np.testing.assert_array_equal(m._rng_state, ref._rng_state)
    assert len(h.loss) == math.ceil(h.epochs / mode["record_every"])
    assert np.isfinite(m.loss(X, y))  # the last state with a finite loss
    # training goes on exactly like the reference (which may diverge again: the
    # parameters can be huge)
    kw = dict(mode, epochs=7, lr=1e-4, on_divergence="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h1, h2 = m.fit(X, y, **kw), ref.fit(X, y, **kw)
    np.testing.assert_array_equal(h1.loss, h2.loss)
    assert h1.stopped == h2.stopped
    np.testing.assert_array_equal(m.params, ref.params)


def test_without_the_guard_the_same_run_ends_in_nan():
    """The kernel fit would run, with an empty backup (guard off), really does produce
    NaN here."""
    m = _relu_net()
    lay = m._layout
    x, y = m._inputs(XOR_X), m._targets(XOR_Y, 4)
    rule = O.plain_rule(1e6, 200)
    plan = D.plan_fit(m, 4, 4, False, rule, False, 200)
    net = D.make_net(lay, m._act_codes, m._loss_code, m.dtype, plan.gemm)
    work = O.make_work(lay.sizes_arr, lay.n_params, plan.cap, 4, m.dtype, m._keep_z,
                       per_sample=plan.mode == "sample", gradient=plan.gradient,
                       passes=D.batch_passes(m.dtype) if plan.passes else None)
    hist = np.full(200, np.nan)
    with np.errstate(all="ignore"):
        options = O.plain(net, O.Data(x, y, np.zeros(0)), O.Loop(4, False, 1), rule,
                          O.NO_STOP, O.new_state(lay.n_params, m.dtype, m._rng_state), work)
        result = plan.kernel(m.params, *options[:2], None, *options[2:], None, hist, None,
                             m.params[:0], 0, 200)
    assert result == (200, -1, False)
    assert not np.isfinite(m.params).all()


def test_on_divergence_warn_returns_the_truncated_history():
    m = _relu_net()
    with pytest.warns(RuntimeWarning, match=r"diverged at epoch \d+.*smaller learning rate"):
        h = m.fit(XOR_X, XOR_Y, epochs=200, lr=1e6, on_divergence="warn")
    assert h.stopped == "diverged" and 0 < h.epochs < 200
    assert len(h.loss) == h.epochs and np.isfinite(h.loss).all()
    assert np.isfinite(m.params).all()
    assert np.isfinite(m.loss(XOR_X, XOR_Y))
    assert np.isfinite(m.predict(XOR_X)).all()


def test_divergence_with_sparse_records():
    """With record_every > 1 the check runs at recorded epochs and chunk ends."""
    m = _relu_net()
    with pytest.raises(fastbp.DivergenceError) as info:
        m.fit(XOR_X, XOR_Y, epochs=500, lr=1e6, record_every=50)
    h = info.value.history
    assert np.isfinite(m.params).all() and np.isfinite(h.loss).all()
    assert len(h.loss) == math.ceil(h.epochs / 50)


@pytest.mark.parametrize("epochs, chunk_seconds, copies", [
    (1, 0.2, 1),     # one chunk: its snapshot is the guard's buffer itself
    (4, 1e-9, 2),    # one-epoch chunks: the guard's buffer and the last chunk's start
])
def test_the_divergence_guard_keeps_few_copies_of_the_parameters(epochs, chunk_seconds,
                                                                 copies, monkeypatch):
    """Peak numpy memory of a fit, counted by tracemalloc (numpy reports its arrays to
    it), in units of the parameter vector: the guard's buffer and the chunk-start
    snapshots share storage where the kernel cannot overwrite it (SingleFit).  Chunks
    run guarded here; those proved unable to diverge copy nothing
    (test_divergence_bound.py)."""
    import tracemalloc
    from fastbp import _divergence
    monkeypatch.setattr(_divergence.ChunkBound, "cannot_diverge", lambda self, *a: False)
    rng = np.random.default_rng(0)
    X, y = rng.random((64, 8)), rng.random((64, 2))
    m = fastbp.MLP([8, 600, 600, 2], seed=0)  # 2.9 MB of parameters, 0.3 of batch buffers
    m.fit(X, y, epochs=1, lr=0.01, batch_size=16)  # the kernel, loaded outside the count
    tracemalloc.start()
    try:
        m.fit(X, y, epochs=epochs, lr=0.01, batch_size=16, chunk_seconds=chunk_seconds)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    used = peak / m.params.nbytes
    assert copies <= used < copies + 0.3, used


def test_records_before_the_last_epoch_of_a_chunk():
    """Whether the guard may write its buffer during a kernel call (epochs done .. done +
    chunk - 1, recorded where epoch % record_every == 0, the last excepted)."""
    from fastbp._fit import _records_before_last
    for done in range(12):
        for chunk in range(1, 8):
            for every in range(1, 6):
                want = any(g % every == 0 for g in range(done, done + chunk - 1))
                assert _records_before_last(done, chunk, every) == want, (done, chunk, every)


def test_divergence_error_is_a_floating_point_error():
    assert issubclass(fastbp.DivergenceError, FloatingPointError)


# ---------------------------------------------------------------------- Ctrl-C

CHILD = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np
    import fastbp
    X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = np.array([0.0, 1.0, 1.0, 0.0])
    m = fastbp.MLP([2, 4, 4, 1], activation="sigmoid", loss="sse", seed=0)
    # load (or compile) the kernels the long fit uses: a fit this long runs on the kernel
    # generated for its architecture (kernels/generate.py)
    fastbp.MLP([2, 4, 4, 1], activation="sigmoid", loss="sse").fit(X, y, epochs=30_000)
    print("ready", flush=True)

    def started(epoch, history, model, said=[]):  # the first chunk is done: say so once
        if not said:
            said.append(print("training", flush=True))
        return True

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = m.fit(X, y, epochs=10**9, lr=0.1, record_every=1000, progress=False,
                  callbacks=[started])
    print(json.dumps(dict(
        epochs=h.epochs, n_records=len(h.loss), stopped=h.stopped,
        finite=bool(np.isfinite(m.params).all() and np.isfinite(h.loss).all()),
        predict=m.predict(X).ravel().tolist(), params=m.params.tolist(),
        warnings=[str(w.message) for w in caught])), flush=True)
""")


def test_ctrl_c_in_a_subprocess_returns_what_was_trained():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        # Ctrl-C once training runs: on a busy machine a fixed delay from "ready" could
        # end before the first chunk, with nothing trained to check
        assert child.stdout.readline().strip() == "training"
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    r = json.loads(out)
    assert r["stopped"] == "interrupted"
    assert 0 < r["epochs"] < 10**9
    assert r["n_records"] == math.ceil(r["epochs"] / 1000)
    assert r["finite"] and np.isfinite(r["predict"]).all()
    assert len(r["warnings"]) == 1
    assert f"interrupted (Ctrl-C) after {r['epochs']} of 1000000000 epochs" in r["warnings"][0]
    # consistent: exactly the parameters of a run of that many epochs
    ref = fastbp.MLP([2, 4, 4, 1], activation="sigmoid", loss="sse", seed=0)
    ref.fit(XOR_X, XOR_Y, epochs=r["epochs"], lr=0.1)
    np.testing.assert_array_equal(np.array(r["params"]), ref.params)


def test_ctrl_c_in_process_and_the_handler_is_restored():
    X, y = _problem()
    m = fastbp.MLP([2, 6, 1], activation=["tanh", "identity"], init="normal", seed=2)
    # the kernels compiled first (a compile can outlast the timer: bounds-checked, on
    # a fresh cache), so the interrupt lands in the training loop
    fastbp.MLP([2, 6, 1], activation=["tanh", "identity"]).fit(X, y, epochs=1, lr=1e-3,
                                                               batch_size=4, shuffle=True)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    before = signal.getsignal(signal.SIGINT)
    timer.start()
    try:
        with pytest.warns(RuntimeWarning, match="interrupted"):
            h = m.fit(X, y, epochs=10**8, lr=1e-3, batch_size=4, shuffle=True, seed=1,
                      record_every=100)
    finally:
        timer.cancel()
    assert signal.getsignal(signal.SIGINT) is before
    assert h.stopped == "interrupted" and 0 < h.epochs < 10**8
    ref = fastbp.MLP([2, 6, 1], activation=["tanh", "identity"], init="normal", seed=2)
    ref.fit(X, y, epochs=h.epochs, lr=1e-3, batch_size=4, shuffle=True, seed=1)
    np.testing.assert_array_equal(m.params, ref.params)
    np.testing.assert_array_equal(m._rng_state, ref._rng_state)


# --------------------------------------------------------------------- threads


def _train(seed, X, y, epochs=3000):
    m = fastbp.MLP([2, 6, 1], activation=["tanh", "identity"], init="normal", seed=seed)
    h = m.fit(X, y, epochs=epochs, lr=1e-2, batch_size=3, shuffle=True)
    return m.params.copy(), h.loss


def test_two_models_in_two_threads_match_sequential_training():
    X, y = _problem()
    sequential = [_train(s, X, y) for s in (1, 2)]
    results = [None, None]
    barrier = threading.Barrier(2)

    def work(i):
        barrier.wait()
        results[i] = _train(i + 1, X, y)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (p, h), (p_ref, h_ref) in zip(results, sequential):
        np.testing.assert_array_equal(p, p_ref)
        np.testing.assert_array_equal(h, h_ref)


def test_second_fit_of_the_same_model_is_refused(monkeypatch):
    X, y = _problem()
    m = fastbp.MLP([2, 6, 1], activation=["tanh", "identity"], init="normal", seed=1)
    started, release = threading.Event(), threading.Event()
    real_drive = model_module.drive

    def slow_drive(*args, **kw):  # runs holding the model's training lock
        started.set()
        release.wait(10)
        return real_drive(*args, **kw)

    monkeypatch.setattr(model_module, "drive", slow_drive)
    result = {}
    t = threading.Thread(target=lambda: result.update(h=m.fit(X, y, epochs=20, lr=0.01)))
    t.start()
    assert started.wait(10)
    p_during = m.params.copy()
    with pytest.raises(RuntimeError, match="already being trained"):
        m.fit(X, y, epochs=5, lr=0.01)
    np.testing.assert_array_equal(m.params, p_during)  # the refused call touched nothing
    release.set()
    t.join()
    ref = fastbp.MLP([2, 6, 1], activation=["tanh", "identity"], init="normal", seed=1)
    ref.fit(X, y, epochs=20, lr=0.01)
    np.testing.assert_array_equal(m.params, ref.params)
    m.fit(X, y, epochs=1, lr=0.01)  # the lock was released


def test_racing_fits_on_one_model_never_corrupt_it():
    """Two threads call fit on one model over and over: each call either runs whole or
    is refused, so the model equals one trained that many times in a row."""
    X, y = _problem()
    m = fastbp.MLP([2, 6, 1], activation=["tanh", "identity"], init="normal", seed=1)
    done, refused = [], []
    barrier = threading.Barrier(2)

    def work():
        barrier.wait()
        for _ in range(6):
            try:
                m.fit(X, y, epochs=400, lr=1e-3)
                done.append(1)
            except RuntimeError:
                refused.append(1)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) + len(refused) == 12 and done
    ref = fastbp.MLP([2, 6, 1], activation=["tanh", "identity"], init="normal", seed=1)
    for _ in done:
        ref.fit(X, y, epochs=400, lr=1e-3)
    np.testing.assert_array_equal(m.params, ref.params)


def test_lock_is_released_after_errors():
    m = _relu_net()
    with pytest.raises(fastbp.DivergenceError):
        m.fit(XOR_X, XOR_Y, epochs=100, lr=1e6)
    m.weights[0][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.fit(XOR_X, XOR_Y, epochs=1)
    m.weights[0][0, 0] = 0.1
    assert not m._fit_lock.locked()
    m.fit(XOR_X, XOR_Y, epochs=3, lr=1e-3)


def test_a_permutation_advances_the_stream_by_its_draws():
    """The rewind after divergence replays the shuffling stream by moving its counter
    (fastbp/_fit.py: _replay_shuffles): a permutation of n samples draws
    rng.draws_per_permutation(n) numbers, and nothing else in the state moves."""
    from numba import njit
    from fastbp.kernels.rng import draws_per_permutation, permutation_into

    @njit
    def shuffle(perm, state, times):
        for _ in range(times):
            permutation_into(perm, state)

    for n in (0, 1, 2, 7, 100):
        state = K.seed_state(5)
        start = state.copy()
        perm = np.empty(n, np.int64)
        shuffle(perm, state, 3)
        assert state[0] == start[0] and state[1] == start[1] + 3 * draws_per_permutation(n)
        assert sorted(perm) == list(range(n))


def test_ctrl_c_during_a_callback_stops_before_the_next_chunk():
    """Ctrl-C while a callback runs ends the fit right after the callbacks, not one
    chunk later."""
    X, y = _problem()
    seen = []

    def press_ctrl_c(epoch, hist, model):
        seen.append(epoch)
        if len(seen) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    m = fastbp.MLP([2, 6, 1], activation=["tanh", "identity"], init="normal", seed=2)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        h = m.fit(X, y, epochs=10**6, lr=1e-3, batch_size=4, shuffle=True, seed=1,
                  chunk_seconds=0.001, callbacks=[press_ctrl_c])
    assert h.stopped == "interrupted" and seen == [seen[0]]
    assert h.epochs == seen[0] < 10**6  # the epochs of the first chunk only
