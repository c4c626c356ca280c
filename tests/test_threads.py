"""One model on several threads (kernels/pool.py, fastbp/_threads.py): the same bits as
on one thread, for the shared products and for whole fits at 1, 2 and 3 threads."""
import threading

import numba
import numpy as np
import pytest

import fastbp
from fastbp import _dispatch as D
from fastbp import _threads as T
from fastbp.kernels import gemm as G
from fastbp.kernels import passes as PS
from fastbp.kernels import pool as P
from numba import njit

import reference as R
from reference import python_of

pytestmark = pytest.mark.skipif(not P.AVAILABLE, reason="threads need the compiled kernels")


@njit(nogil=True, cache=True)
def _product(unit, pool, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    if pool == 0:
        G.call(unit, trans_a, trans_b, m, n, k, alpha, G.address(a, 0), lda,
               G.address(b, 0), ldb, beta, G.address(c, 0), ldc)
    else:
        G.call_pooled(unit, pool, trans_a, trans_b, m, n, k, alpha, G.address(a, 0), lda,
                      G.address(b, 0), ldb, beta, G.address(c, 0), ldc)


SHAPES = [  # (m, n, k, trans_a, trans_b): the products of a batch, and odd edges
    (256, 64, 256, True, False),    # forward, cut along the rows
    (256, 256, 64, False, True),    # weight gradient, along the rows
    (6, 512, 64, False, True),      # weight gradient, along the columns (one row tile)
    (256, 64, 160, False, False),   # back-propagated delta
    (37, 700, 41, False, False),    # more column panels than row tiles
    (1001, 9, 67, True, True),      # a masked last vector in every row
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_pooled_products_equal_one_thread(dtype, shape, beta):
    m, n, k, ta, tb = shape
    rng = np.random.default_rng(m * n + k)
    a = rng.standard_normal(m * k).astype(dtype)
    b = rng.standard_normal(n * k).astype(dtype)
    c0 = rng.standard_normal(m * n).astype(dtype)
    lda, ldb = (m if ta else k), (k if tb else n)
    tiles = G.unit_address("tiles", dtype)
    expected = c0.copy()
    _product(tiles, 0, ta, tb, m, n, k, 0.37, a, lda, b, ldb, beta, expected, n)
    # the product in plain numpy: the tiles are what the other tests pin to the bit
    ref = 0.37 * ((a.reshape(k, m).T if ta else a.reshape(m, k)).astype(np.float64)
                  @ (b.reshape(n, k).T if tb else b.reshape(k, n)).astype(np.float64))
    ref += beta * c0.reshape(m, n)
    tol = 1e-10 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(expected.reshape(m, n), ref, rtol=tol, atol=tol)
    pooled = P.unit_address(dtype)
    state = P.new_state(tiles, dtype)
    for threads in (1, 2, 3):
        c = c0.copy()
        started = P.start(state, threads)
        try:
            _product(pooled, state.ctypes.data, ta, tb, m, n, k, 0.37, a, lda, b, ldb, beta,
                     c, n)
            _product(pooled, state.ctypes.data, ta, tb, m, n, k, 0.37, a, lda, b, ldb, beta,
                     c0.copy(), n)  # a second job through the same workers
        finally:
            P.stop(state, started)
        assert np.array_equal(c, expected), threads
        assert state[P.DONE] == 2 * (threads - 1)  # each worker did its piece of both


def test_pieces_cover_the_product_once():
    """Every row tile or column panel of c belongs to exactly one piece."""
    for m, n, parts in [(256, 64, 2), (37, 700, 3), (1001, 9, 5), (6, 33, 4), (5, 5, 3)]:
        step = 32
        covered = np.zeros((m, n), dtype=int)
        for t in range(parts):
            by_rows, first, end = python_of(P._piece)(t, parts, m, n, step)
            if by_rows:
                covered[first:end, :] += 1
            else:
                covered[:, first:end] += 1
        assert (covered == 1).all(), (m, n, parts)


@pytest.fixture
def three_threads(monkeypatch):
    """n_jobs up to 3 honoured on a machine of fewer cores (NUMBA_NUM_THREADS caps it),
    and the threads used however short the fit (the "auto" policy would wait until the
    fits have saved the pool's compile time)."""
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 3)
    monkeypatch.setattr(D, "POLICY", "fastest")


def _wide_data(dtype=np.float64, n=300):
    rng = np.random.default_rng(5)
    return (rng.standard_normal((n, 12)).astype(dtype),
            rng.random((n, 3)).astype(dtype))


FITS = {
    "sgd": dict(epochs=3, lr=0.05, batch_size=64, shuffle=True, seed=2),
    "adam_validation": dict(epochs=3, lr=0.001, batch_size=50, optimizer="adam", l2=1e-3,
                            validation_fraction=0.2, seed=3),
    "full_batch": dict(epochs=4, lr=0.1),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("fit", sorted(FITS))
def test_fit_is_the_same_bits_at_1_2_and_3_threads(three_threads, dtype, fit):
    X, Y = _wide_data(dtype)
    results = []
    for n_jobs in (1, 2, 3):
        m = fastbp.MLP([12, 240, 240, 3], activation=["relu", "sigmoid", "sigmoid"],
                       loss="mse", seed=7, dtype=dtype)
        h = m.fit(X, Y, n_jobs=n_jobs, chunk_seconds=0.001, **FITS[fit])
        results.append((m.params.copy(), np.asarray(h.loss)))
        if n_jobs > 1:
            assert f"on {n_jobs} threads" in h.kernel
        else:
            assert "threads" not in h.kernel
    for params, loss in results[1:]:
        assert np.array_equal(params, results[0][0])
        assert np.array_equal(loss, results[0][1])


def test_weight_steps_cut_along_rows_share_every_bias(three_threads):
    """A weight step cut along its rows gives each piece a share of the biases, also a
    piece with no rows: layer 0 of this net (6 rows, one tile) leaves two of three
    pieces without rows, whose biases must still be stepped, once."""
    rng = np.random.default_rng(11)
    X, Y = rng.standard_normal((2500, 6)), rng.random((2500, 2))
    results = []
    for n_jobs in (1, 2, 3):
        m = fastbp.MLP([6, 30, 30, 2], seed=3)
        h = m.fit(X, Y, epochs=3, lr=0.5, n_jobs=n_jobs)
        assert ("threads" in h.kernel) == (n_jobs > 1), h.kernel
        results.append(m.params.copy())
    start = fastbp.MLP([6, 30, 30, 2], seed=3)
    assert not np.array_equal(results[0][start._layout.b_off[0]:][:30],
                              start.params[start._layout.b_off[0]:][:30])
    for params in results[1:]:
        assert np.array_equal(params, results[0])


def test_fits_on_threads_take_the_passes_that_share(three_threads, monkeypatch):
    """A fit on threads runs the forward and backward units with the pool's branch; a fit
    on one thread those without it (kernels/passes.py), the same bits either way."""
    asked = []
    real = D.batch_passes

    def recording(dtype, needed=PS.ALL, pooled=False, build=PS.Build()):
        asked.append(pooled)
        return real(dtype, needed, pooled, build)

    monkeypatch.setattr(D, "batch_passes", recording)
    X, Y = _wide_data()
    out = []
    for n_jobs in (1, 2):
        asked.clear()
        m = fastbp.MLP([12, 192, 192, 3], seed=1)
        h = m.fit(X, Y, epochs=2, batch_size=64, n_jobs=n_jobs)
        assert asked == [n_jobs > 1] and ("threads" in h.kernel) == (n_jobs > 1)
        out.append(m.params.copy())
    assert np.array_equal(out[0], out[1])


def test_small_networks_stay_on_one_thread(three_threads):
    rng = np.random.default_rng(0)
    X, Y = rng.random((64, 2)), rng.random((64, 1))
    h = fastbp.MLP([2, 16, 16, 1], seed=0).fit(X, Y, epochs=2, batch_size=16, n_jobs=3)
    assert "threads" not in h.kernel
    assert D.product_threads([2, 16, 16, 1], np.float64, 16, 10 ** 9, 3) == 1
    assert D.product_threads([32, 64, 64, 10], np.float64, 64, 10 ** 9, 3) == 1
    # a fit shares only with a layer's product of pool.SHARE_MIN_LAYER_WORK or more: 160 x
    # 160 x 64 is 1.6 million multiply-adds, 192 x 192 x 64 2.4 million (float64 shares,
    # float32 not), 224 x 224 x 64 3.2 million
    assert D.product_threads([12, 160, 160, 3], np.float64, 64, 10 ** 9, 3) == 1
    assert D.product_threads([12, 192, 192, 3], np.float64, 64, 10 ** 9, 3) == 3
    assert D.product_threads([12, 192, 192, 3], np.float32, 64, 10 ** 9, 3) == 1
    assert D.product_threads([12, 224, 224, 3], np.float32, 64, 10 ** 9, 3) == 3
    assert D.product_threads([64, 100, 10], np.float64, 200, 10 ** 9, 3) == 1


def test_lbfgs_is_the_same_bits_on_threads(three_threads):
    pytest.importorskip("scipy")
    X, Y = _wide_data()
    out = []
    for n_jobs in (1, 3):
        m = fastbp.MLP([12, 192, 192, 3], seed=4)
        m.fit(X, Y, epochs=5, optimizer="lbfgs", n_jobs=n_jobs)
        out.append(m.params.copy())
    assert np.array_equal(out[0], out[1])


def test_concurrent_threaded_fits(three_threads):
    """Two models fitting at once from two Python threads, each sharing its products."""
    X, Y = _wide_data()
    alone = fastbp.MLP([12, 192, 192, 3], seed=9)
    alone.fit(X, Y, epochs=2, batch_size=64, n_jobs=1)
    models = [fastbp.MLP([12, 192, 192, 3], seed=9) for _ in range(2)]
    errors = []

    def fit(m):
        try:
            m.fit(X, Y, epochs=2, batch_size=64, n_jobs=2, chunk_seconds=0.001)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=fit, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    for m in models:
        assert np.array_equal(m.params, alone.params)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                        ("2", TypeError), (True, TypeError),
                                        (-1.0, TypeError), (np.float64(-1.0), TypeError),
                                        (np.array(-1), TypeError)])
def test_bad_n_jobs(bad, error):
    X, Y = _wide_data(n=20)
    with pytest.raises(error, match="n_jobs"):
        fastbp.MLP([12, 4, 3]).fit(X, Y, n_jobs=bad)


def test_default_threads_follow_affinity_and_numba(monkeypatch):
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    assert T.resolve(None) == 1 and T.resolve(-1) == 1 and T.resolve(4) == 1
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 64)
    monkeypatch.setattr(T.os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    assert T.resolve(None) == 2
    assert T.resolve(5) == 5


def test_every_core_is_counted_only_for_networks_that_can_share(three_threads, monkeypatch):
    """n_jobs None or -1: a fit whose products are too small to share never asks how many
    cores the process may use (a system call a small fit paid every time); a wide one
    asks, and runs on them."""
    calls = []

    def affinity(pid):
        calls.append(pid)
        return {0, 1, 2}

    monkeypatch.setattr(T.os, "sched_getaffinity", affinity, raising=False)
    assert T.resolve(None, lazily=True) == T.resolve(-1, lazily=True) == T.EVERY
    assert not calls
    X, Y = _wide_data()
    for n_jobs in (None, -1):
        h = fastbp.MLP([12, 4, 3], seed=0).fit(X, Y, epochs=1, batch_size=64, n_jobs=n_jobs)
        assert "threads" not in h.kernel and not calls
        h = fastbp.MLP([12, 240, 240, 3], seed=0).fit(X, Y, epochs=1, batch_size=64,
                                                     n_jobs=n_jobs)
        assert "on 3 threads" in h.kernel and calls
        calls.clear()


def test_narrow_per_sample_fits_stay_on_one_thread(three_threads):
    """Per-sample SGD shares only layers of sample_share.SAMPLE_SPLIT_MIN_WEIGHTS weights
    or more: below, the jobs cost about what they save."""
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((8, 12)), rng.random((8, 3))
    h = fastbp.MLP([12, 160, 160, 3], seed=3).fit(X, Y, epochs=1, batch_size=1, n_jobs=3)
    assert "threads" not in h.kernel
    assert D.sample_threads([32, 256, 256, 10], np.float64, 10 ** 9, 3) == 1
    assert D.sample_threads([32, 1024, 1024, 10], np.float64, 10 ** 9, 3) == 3
    assert D.sample_threads([32, 1024, 1024, 10], np.float64, 10 ** 9, 1) == 1


# per-sample fits whose wide layers are shared (sample_share.py): 500 and 600 units are
# not multiples of the lanes (16), and 3 threads get unequal numbers of lanes' columns
PER_SAMPLE = {
    "sigmoid_relu": dict(sizes=[6, 600, 500, 3], activation=["relu", "sigmoid", "sigmoid"],
                         loss="mse", bias=True, fit=dict(epochs=2, shuffle=True, seed=1)),
    # the shared layer is the output layer, whose z the loss keeps (bce); no biases
    "wide_output_bce": dict(sizes=[5, 520, 600], activation=["tanh", "sigmoid"], loss="bce",
                            bias=False, fit=dict(epochs=2, record_every=2)),
    "weighted": dict(sizes=[6, 520, 520, 2], activation="tanh", loss="half_mse", bias=True,
                     fit=dict(epochs=3, shuffle=True, seed=4, weights=True)),
    # validation: the general per-sample entry (the others run generated kernels), and
    # the validation loss's batch passes beside the shared layers
    "validated": dict(sizes=[6, 600, 500, 3], activation="sigmoid", loss="mse", bias=True,
                      fit=dict(epochs=2, validation_fraction=0.25)),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(PER_SAMPLE))
def test_per_sample_fit_is_the_same_bits_at_1_2_and_3_threads(three_threads, dtype, case):
    spec = PER_SAMPLE[case]
    sizes = spec["sizes"]
    rng = np.random.default_rng(11)
    n = 24
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    Y = rng.random((n, sizes[-1])).astype(dtype)
    fit = dict(spec["fit"])
    if fit.pop("weights", False):
        fit["sample_weight"] = rng.uniform(0.5, 1.5, n)
    results = []
    for n_jobs in (1, 2, 3):
        m = fastbp.MLP(sizes, activation=spec["activation"], loss=spec["loss"],
                       bias=spec["bias"], init="xavier", seed=6, dtype=dtype)
        start = m.params.copy()
        h = m.fit(X, Y, lr=0.05, batch_size=1, n_jobs=n_jobs, chunk_seconds=0.001, **fit)
        assert not np.array_equal(m.params, start)
        results.append((m.params.copy(), np.asarray(h.loss), h.val_loss))
        if n_jobs > 1:
            assert f"per-sample plain SGD, validating ({np.dtype(dtype).name}, on " \
                f"{n_jobs} threads)" == h.kernel if case == "validated" else \
                h.kernel.startswith(f"per-sample plain SGD ({np.dtype(dtype).name}, on "
                                    f"{n_jobs} threads), generated for ")
    for params, loss, val_loss in results[1:]:
        assert np.array_equal(params, results[0][0])
        assert np.array_equal(loss, results[0][1])
        assert (val_loss is None) == (case != "validated")
        assert val_loss is None or np.array_equal(val_loss, results[0][2])
    if dtype == np.float64 and not fit.get("shuffle") and "sample_weight" not in fit \
            and "validation_fraction" not in fit:
        # and those bits are per-sample SGD's (tests/reference.py, in plain numpy)
        m = fastbp.MLP(sizes, activation=spec["activation"], loss=spec["loss"],
                       bias=spec["bias"], init="xavier", seed=6)
        acts = list(m.activations)
        rw, rb, rloss = R.train_sgd(X, Y, m.weights, m.biases, acts, spec["loss"],
                                    fit["epochs"], 0.05)
        np.testing.assert_allclose(results[0][0], R.flatten(rw, rb), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n_jobs, failing", [(2, 1), (3, 2)])
def test_a_worker_that_cannot_start_leaves_no_thread_and_no_pinning(three_threads,
                                                                     monkeypatch, n_jobs,
                                                                     failing):
    """A worker thread that cannot be started (RuntimeError "can't start new thread" at
    the process's thread limit): the fit raises, and the workers started before it are
    stopped (they would spin for ever) and the calling thread gets its CPUs back."""
    import os
    X, Y = _wide_data()
    fastbp.MLP([12, 240, 240, 3], seed=0).fit(X, Y, epochs=1, batch_size=64, n_jobs=n_jobs)
    real_start = threading.Thread.start
    started = []

    def start(self):
        if self.name.startswith("fastbp-product"):
            started.append(self.name)
            if len(started) == failing:
                raise RuntimeError("can't start new thread")
        return real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    with pytest.raises(RuntimeError, match="can't start new thread"):
        fastbp.MLP([12, 240, 240, 3], seed=0).fit(X, Y, epochs=1, batch_size=64,
                                                  n_jobs=n_jobs)
    assert len(started) == failing
    for t in threading.enumerate():
        if t.name.startswith("fastbp-product"):
            t.join(timeout=10)
            assert not t.is_alive()
    if before is not None:
        assert os.sched_getaffinity(0) == before


@pytest.mark.parametrize("where", ["start", "join"])
def test_ctrl_c_in_the_threads_start_or_stop_gives_the_cpus_back(three_threads, monkeypatch,
                                                                 where):
    """L-BFGS takes Ctrl-C wherever it comes (SciPy's loop, not fit's chunks): one that
    lands while the workers start or while the calling thread waits for them to stop
    ends the fit ("interrupted") and leaves no worker and no pinning behind."""
    pytest.importorskip("scipy")
    import os
    import warnings
    X, Y = _wide_data()
    fastbp.MLP([12, 192, 192, 3], seed=4).fit(X, Y, epochs=2, optimizer="lbfgs", n_jobs=2)
    real = getattr(threading.Thread, where)
    calls = []

    def interrupted(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if self.name.startswith("fastbp-product") and not calls:
            calls.append(self.name)
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(threading.Thread, where, interrupted)
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        h = fastbp.MLP([12, 192, 192, 3], seed=4).fit(X, Y, epochs=50, optimizer="lbfgs",
                                                      n_jobs=2)
    assert calls and h.stopped == "interrupted"
    if before is not None:
        assert os.sched_getaffinity(0) == before
    for t in threading.enumerate():
        if t.name.startswith("fastbp-product"):
            t.join(timeout=10)
            assert not t.is_alive()


def test_resume_takes_n_jobs_and_gives_the_same_bits(three_threads, tmp_path):
    """n_jobs is not in a checkpoint (the bits are the same at any number of threads):
    resume takes it as fit does, and a run resumed on threads equals the run in one
    piece on one."""
    X, Y = _wide_data()
    kw = dict(epochs=4, lr=0.05, batch_size=64, shuffle=True, seed=2)

    def model():
        return fastbp.MLP([12, 240, 240, 3], seed=7)

    whole = model()
    whole.fit(X, Y, n_jobs=1, **kw)
    path = tmp_path / "run.npz"
    model().fit(X, Y, n_jobs=1, checkpoint=path, checkpoint_every=1,
                chunk_seconds=0.001, callbacks=lambda e, h, m: e < 2, **kw)
    m, h = fastbp.resume(path, X, Y, n_jobs=2)
    assert h.epochs == 4 and h.extra["resumed_at"] < 4 and "on 2 threads" in h.kernel
    assert np.array_equal(m.params, whole.params)
    with pytest.raises(TypeError, match="n_jobs"):
        fastbp.resume(path, X, Y, n_jobs=1.5)


def test_ctrl_c_at_any_line_of_the_threads_stop_leaves_no_worker_spinning(three_threads):
    """A KeyboardInterrupt may land between any two lines of pool.stop (L-BFGS takes
    Ctrl-C as it comes).  Wherever it lands, the workers end and the calling thread gets
    its CPUs back.  Before, one between its first two lines left a worker spinning for
    ever on a core and the caller pinned to one CPU."""
    import inspect
    import os
    import sys
    body = inspect.getsourcelines(P.stop)[1]
    lines = sorted({line for _, _, line in P.stop.__code__.co_lines()
                    if line is not None and line > body})
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    for target in lines:
        shared = D.share_products("tiles", np.float64, 2)
        hit = []

        def tracer(frame, event, arg):
            if frame.f_code is not P.stop.__code__:
                return None

            def local(frame, event, arg):
                if event == "line" and frame.f_lineno == target and not hit:
                    hit.append(target)
                    raise KeyboardInterrupt
                return local
            return local

        try:
            with shared.running():
                sys.settrace(tracer)
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        for t in threading.enumerate():
            if t.name.startswith("fastbp-product"):
                t.join(timeout=10)
                assert not t.is_alive(), f"a worker spins after Ctrl-C at line {target}"
        if before is not None:
            assert os.sched_getaffinity(0) == before, f"pinned after Ctrl-C at line {target}"
    assert len(lines) >= 4
