"""Ensemble.fit(device="cuda"): the GPU kernel (kernels/cuda.py) against the CPU Ensemble.

CI has no GPU, so the kernel is checked three ways:
1. its CPU twin -- the same generated source compiled with njit -- in process, through
   the whole fit_cuda path (unrolled and looped variants, divergence);
2. the real CUDA kernel under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), in ONE
   subprocess, so the simulator never touches this process's numba state;
3. on a machine with a GPU (not the simulator), the real thing; skipped elsewhere.
Agreement with the CPU: 1e-12 relative in float64 (the GPU uses libdevice exp and fused
multiply-adds, the CPU its own exp and four-lane gradient sums), float32 to float32
precision; generator states, epoch counts and divergence bookkeeping exactly.
Plus the errors: unknown device, no numba-cuda, no GPU, a model too large.
"""
import json
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import fastbp
import fastbp._cuda as FC
from fastbp.kernels import cuda as KC

HERE = Path(__file__).resolve().parent


def _sample_xor():
    inputs, labels = [], []
    for i in range(11):
        inputs.append([0.1 * i, 0.1 * i])
        labels.append(0)
        if 0.1 * i == 0.5:
            continue
        inputs.append([0.1 * i, 1 - 0.1 * i])
        labels.append(1)
    return np.array(inputs), np.array(labels, dtype=float).reshape(21, 1)


def _data(kind):
    r = np.random.default_rng(7)
    if kind == "xor9":  # 9 of the 21 XOR points: tiny, for the simulator
        X, y = _sample_xor()
        return X[::2][:9], y[::2][:9]
    if kind == "reg":
        return r.normal(size=(9, 2)), r.normal(size=(9, 1))
    if kind == "two":  # two outputs in (0, 1), for bce
        X = r.normal(size=(9, 2))
        p = 1 / (1 + np.exp(-X[:, :1]))
        return X, np.hstack([p, 1 - p * 0.5])
    if kind == "per_model":  # one data set per model (3 models)
        return r.normal(size=(3, 9, 2)), r.normal(size=(3, 9, 1))
    if kind == "classes":  # one-hot targets, for softmax + cross_entropy
        X = r.normal(size=(9, 2))
        return X, np.eye(3)[r.integers(0, 3, size=9)]
    if kind == "wild":  # large targets: big learning rates diverge
        return r.normal(size=(9, 2)) * 3, r.normal(size=(9, 1)) * 100
    raise ValueError(kind)


# name -> (Ensemble kwargs, data, fit kwargs); 3 models, a few epochs: simulator-sized
CASES = {
    "full_batch": (dict(sizes=[2, 3, 1], activation="sigmoid", loss="sse"), "xor9",
                   dict(epochs=6, lr=0.5)),
    "sgd_shuffle": (dict(sizes=[2, 3, 1], activation="sigmoid", loss="sse"), "xor9",
                    dict(epochs=4, lr=[0.1, 0.3, 0.5], batch_size=1, shuffle=True, seed=11)),
    "minibatch_mixed": (dict(sizes=[2, 3, 2, 1], activation=["tanh", "relu", "sigmoid"],
                             loss="mse", init="normal"), "reg",
                        dict(epochs=5, lr=0.2, batch_size=[4, 2, 9],
                             shuffle=[True, False, True], record_every=2)),
    "per_model_data": (dict(sizes=[2, 3, 1], activation=["tanh", "identity"], loss="half_mse",
                            init="normal"), "per_model",
                       dict(epochs=5, lr=0.1, batch_size=4, shuffle=True)),
    "bce_two_outputs": (dict(sizes=[2, 3, 2], activation=["relu", "sigmoid"], loss="bce",
                             init="normal"), "two",
                        dict(epochs=5, lr=0.5, batch_size=5, shuffle=True)),
    "no_bias": (dict(sizes=[2, 3, 1], activation="tanh", loss="mse", bias=False,
                     init="normal"), "reg", dict(epochs=5, lr=0.1)),
    "diverging": (dict(sizes=[2, 3, 1], activation=["relu", "identity"], loss="mse",
                       init="normal"), "wild",
                  dict(epochs=12, lr=[0.001, 5.0, 0.5], batch_size=3, shuffle=True,
                       record_every=2, on_divergence="ignore")),
    # the loss of two models' last state overflows, their parameters still finite: no
    # record holds it, so the guard cannot see it; the check after the run does
    "overflowing_end": (dict(sizes=[2, 4, 1], activation=["relu", "identity"], loss="mse",
                             init="normal"), "wild",
                        dict(epochs=5, lr=0.05, on_divergence="ignore")),
    # the same run longer: the guard fires, and the state it puts back (the last checked
    # one, after its update) has a loss that overflows too
    "overflowing_guard": (dict(sizes=[2, 4, 1], activation=["relu", "identity"],
                               loss="mse", init="normal"), "wild",
                          dict(epochs=7, lr=0.05, on_divergence="ignore")),
    "float32": (dict(sizes=[2, 3, 1], activation="sigmoid", loss="mse", dtype="float32"),
                "reg", dict(epochs=6, lr=0.5, batch_size=4, shuffle=True)),
}
if "cross_entropy" in fastbp._codes.LOSSES:
    CASES["softmax_cross_entropy"] = (
        dict(sizes=[2, 3, 3], activation=["tanh", "softmax"], loss="cross_entropy",
             init="normal"), "classes", dict(epochs=5, lr=0.3, batch_size=4, shuffle=True))


def run_case(name, n_models=3):
    """Train the case's ensemble on the CPU and with device="cuda" (whatever "cuda" is
    wired to); returns both ensembles and histories."""
    ens_kw, data, fit_kw = CASES[name]
    X, y = _data(data)
    # per-model values and data sets are written for 3 models: cycle them to n_models
    fit_kw = {k: ([v[m % len(v)] for m in range(n_models)] if isinstance(v, list) else v)
              for k, v in fit_kw.items()}
    if X.ndim == 3:
        X, y = X[np.arange(n_models) % len(X)], y[np.arange(n_models) % len(y)]
    out = []
    for device in ("cpu", "cuda"):
        ens = fastbp.Ensemble(n_models=n_models, seed=5, **ens_kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            hist = ens.fit(X, y, device=device, **fit_kw)
        out.append((ens, hist))
    return out


def compare(name, n_models=3):
    """Differences between the CPU and the "cuda" run of a case, as plain numbers."""
    (a, ha), (b, hb) = run_case(name, n_models)
    scale = np.maximum(np.abs(a.params), 1e-3)
    finite = np.isfinite(ha.loss)
    return {
        "params_rel": float(np.max(np.abs(a.params - b.params) / scale)),
        "hist_rel": float(np.max(np.abs(ha.loss - hb.loss)[finite] / np.abs(ha.loss)[finite],
                                 initial=0.0)),
        "same_nan": bool(np.array_equal(np.isnan(ha.loss), np.isnan(hb.loss))),
        "same_shape": ha.loss.shape == hb.loss.shape,
        "rng_equal": bool(np.array_equal(a._rng_states, b._rng_states)),
        "epochs_equal": bool(np.array_equal(ha.extra["epochs_per_model"],
                                            hb.extra["epochs_per_model"])
                             and ha.epochs == hb.epochs),
        "diverged_equal": bool(np.array_equal(a.diverged, b.diverged)
                               and np.array_equal(ha.extra["diverged_epoch"],
                                                  hb.extra["diverged_epoch"])),
        "n_diverged": int(a.diverged.sum()),
        "dtype_ok": b.params.dtype == a.params.dtype,
        "device": hb.extra.get("device"),
    }


def check(name, r):
    tol = 1e-5 if "float32" in name else 1e-12
    assert r["device"] == "cuda"
    assert r["same_shape"] and r["same_nan"], r
    assert r["params_rel"] <= tol, r
    assert r["hist_rel"] <= tol, r
    assert r["rng_equal"] and r["epochs_equal"] and r["diverged_equal"] and r["dtype_ok"], r
    if name == "diverging":
        assert r["n_diverged"] >= 1, "the case must exercise the divergence guard"
    if name in ("overflowing_end", "overflowing_guard"):
        assert r["n_diverged"] >= 1, "the case must exercise the check of the last state"


# ------------------------------------------------------------------ 1. the CPU twin


@pytest.fixture
def twin(monkeypatch):
    """Route device="cuda" to the kernel's CPU twin: numpy arrays stand in for device
    arrays, njit for cuda.jit.  ``twin.unroll`` forces the unrolled / looped variant."""

    class Dev(np.ndarray):
        def copy_to_host(self):
            return np.array(self)

    fake = types.SimpleNamespace(
        to_device=lambda a: np.array(a).view(Dev),
        device_array=lambda shape, dtype: np.full(shape, -7, dtype).view(Dev),
        synchronize=lambda: None)
    state = types.SimpleNamespace(unroll=None)
    real_get = KC.get_kernel

    def get_kernel(*args, **kw):
        return real_get(*args, target="cpu", unroll=state.unroll)

    def launch(kernel, n_threads, args, threads_per_block=None, sm_count=None):
        kernel(*[np.asarray(a) if isinstance(a, np.ndarray) else a for a in args])

    monkeypatch.setattr(FC, "require_cuda", lambda: fake)
    monkeypatch.setattr(KC, "get_kernel", get_kernel)
    monkeypatch.setattr(KC, "launch", launch)
    return state


def test_twin_unrolled_all_modes(twin):
    twin.unroll = True
    check("minibatch_mixed", compare("minibatch_mixed"))


def test_twin_looped_with_divergence(twin):
    twin.unroll = False
    check("diverging", compare("diverging"))


def test_twin_checks_the_state_a_run_ends_in(twin):
    """A model whose loss overflows in the state its last epoch leaves (no record holds
    that loss, so the kernel's guard cannot see it) ends on the GPU as on the CPU: marked
    diverged at that epoch and trained again alone by MLP.fit.  Before, the GPU path
    returned it unmarked, its loss infinite."""
    twin.unroll = True
    check("overflowing_end", compare("overflowing_end"))
    (cpu, h_cpu), (gpu, h_gpu) = run_case("overflowing_end")
    X, y = _data("wild")
    assert list(h_gpu.extra["diverged_epoch"]) == list(h_cpu.extra["diverged_epoch"]) \
        == [5, -1, 5]
    assert np.isfinite(gpu.loss(X, y)).all()
    # the diverged models are MLP.fit's own results: the same bits on both paths
    np.testing.assert_array_equal(gpu.params[gpu.diverged], cpu.params[cpu.diverged])


def test_twin_checks_the_state_its_guard_puts_back(twin):
    """The kernel's guard puts back the state of its last good check; with a full batch
    that state's own loss can overflow (its record is the loss before its update).  As
    on the CPU, where MLP.fit's rewind goes further back, such a model is trained again
    alone by MLP.fit.  Before, the GPU path returned it with an infinite loss."""
    twin.unroll = True
    check("overflowing_guard", compare("overflowing_guard"))
    (cpu, h_cpu), (gpu, h_gpu) = run_case("overflowing_guard")
    X, y = _data("wild")
    assert gpu.diverged.all()
    assert list(h_gpu.extra["epochs_per_model"]) == list(h_cpu.extra["epochs_per_model"])
    np.testing.assert_array_equal(gpu.params, cpu.params)
    assert np.isfinite(gpu.loss(X, y)).all()


def test_twin_checks_the_state_an_interrupted_run_ends_in(twin, monkeypatch):
    """Ctrl-C after the launch whose last epoch overflows two models' losses: each model's
    state is checked as MLP.fit stopped there checks it, as on the CPU."""
    import signal
    from fastbp import _driver
    monkeypatch.setattr(_driver, "first_chunk", lambda *args: 5)
    original = FC.CudaFit.run_chunk

    def run_then_interrupt(self, chunk):
        result = original(self, chunk)
        os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(FC.CudaFit, "run_chunk", run_then_interrupt)
    ens_kw, data, fit_kw = CASES["overflowing_end"]
    X, y = _data(data)
    ens = fastbp.Ensemble(n_models=3, seed=5, **ens_kw)
    start = ens.params.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hist = ens.fit(X, y, device="cuda", **dict(fit_kw, epochs=9))
    assert hist.stopped == "interrupted"
    assert list(hist.extra["diverged_epoch"]) == [5, -1, 5]
    for m in (0, 2):
        alone = fastbp.MLP(**{k: v for k, v in ens_kw.items()})
        alone.params[:] = start[m]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            h = alone.fit(X, y, epochs=5, lr=fit_kw["lr"], on_divergence="warn")
        assert h.stopped == "diverged"
        np.testing.assert_array_equal(ens.params[m], alone.params)
        assert hist.extra["epochs_per_model"][m] == h.epochs
    assert np.isfinite(ens.loss(X, y)).all()


def test_twin_chunked_launches_same_run(twin, monkeypatch):
    """Several launches (epochs cut into chunks) give the run of one launch."""
    monkeypatch.setattr(FC, "_FIRST_LAUNCH_WORK", 1.0)   # first launch: 1 epoch
    monkeypatch.setattr(FC, "CHUNK_SECONDS", 1e-9)        # then 1 epoch per launch
    twin.unroll = True
    check("minibatch_mixed", compare("minibatch_mixed"))


def test_unrolled_and_looped_sources_differ_only_in_form():
    args = ((2, 4, 4, 1), True, (1, 1, 1), 2, "float64", False)
    unrolled = KC.kernel_source(*args, unroll=True)
    looped = KC.kernel_source(*args, unroll=False)
    assert "for i0_ in range" in looped and "for i0_ in range" not in unrolled
    assert "p_[36]" in unrolled and "cuda.local.array(37, DT)" in unrolled
    assert KC.unrolled((2, 4, 4, 1), True) and not KC.unrolled((2, 32, 1), True)


# ------------------------------------------------------------------ 2. the simulator


def _sim_main():
    """Run in the simulator subprocess: every case, results as JSON on stdout."""
    results = {}
    for name in CASES:
        try:
            results[name] = compare(name)
        except Exception as exc:  # reported by the test of that case
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print("RESULTS " + json.dumps(results))


@pytest.fixture(scope="module")
def simulator_results():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONWARNINGS="ignore")
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from numba import cuda\n"
            "import test_cuda; test_cuda._sim_main()" % str(HERE))
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the simulator run took over 300 s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    if not lines:
        if "No module named" in proc.stderr and "cuda" in proc.stderr:
            pytest.skip("numba's CUDA simulator is not importable here")
        pytest.fail(f"simulator run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.parametrize("name", list(CASES))
def test_simulator_matches_cpu(simulator_results, name):
    r = simulator_results[name]
    assert "error" not in r, r.get("error")
    check(name, r)


# ------------------------------------------------------------------ 3. a real GPU


@pytest.fixture(scope="module")
def real_gpu():
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        pytest.skip("the CUDA simulator is on: no real GPU test")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c",
                           "from fastbp._cuda import cuda_available; print(cuda_available())"],
                          env=env, capture_output=True, text=True, timeout=120)
    if proc.stdout.strip().splitlines()[-1:] != ["True"]:
        pytest.skip("no CUDA GPU (or no numba-cuda) on this machine")
    return True


@pytest.mark.parametrize("name", list(CASES))
def test_gpu_matches_cpu(real_gpu, name):
    check(name, compare(name, n_models=67))  # 67: more than one warp, a partial one


def test_gpu_xor_many_models_learn(real_gpu):
    X, y = _sample_xor()
    ens = fastbp.Ensemble([2, 4, 4, 1], 1024, activation="sigmoid", loss="sse", seed=0)
    hist = ens.fit(X, y, epochs=2000, lr=0.1, record_every=100, device="cuda")
    assert hist.loss.shape == (1024, 20)
    assert np.median(hist.loss[:, -1]) < np.median(hist.loss[:, 0])


# ------------------------------------------------------------------ errors


def test_unknown_device_is_rejected():
    X, y = _data("reg")
    ens = fastbp.Ensemble([2, 3, 1], 2, seed=0)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        ens.fit(X, y, device="gpu")


def test_missing_numba_cuda_says_what_to_install(monkeypatch):
    monkeypatch.setattr(FC, "_import_cuda", lambda: None)
    X, y = _data("reg")
    ens = fastbp.Ensemble([2, 3, 1], 2, seed=0)
    before = ens.params.copy()
    with pytest.raises(ImportError, match=r'pip install "fastbp\[cuda\]"'):
        ens.fit(X, y, device="cuda")
    np.testing.assert_array_equal(ens.params, before)


def test_no_gpu_is_a_clear_runtime_error(monkeypatch):
    no_gpu = types.SimpleNamespace(is_available=lambda: False)
    monkeypatch.setattr(FC, "_import_cuda", lambda: no_gpu)
    monkeypatch.setattr(FC, "_has_numba_cuda", lambda: True)
    X, y = _data("reg")
    ens = fastbp.Ensemble([2, 3, 1], 2, seed=0)
    with pytest.raises(RuntimeError, match="no CUDA GPU found"):
        ens.fit(X, y, device="cuda")


def test_this_machine_without_gpu_gets_one_of_the_clear_errors():
    """The real check, in a subprocess (no simulator, nothing patched)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = ("import numpy as np, fastbp\n"
            "from fastbp._cuda import cuda_available\n"
            "if cuda_available(): print('HAS_GPU'); raise SystemExit\n"
            "e = fastbp.Ensemble([2, 3, 1], 2, seed=0)\n"
            "try:\n"
            "    e.fit(np.zeros((4, 2)), np.zeros(4), device='cuda')\n"
            "except (ImportError, RuntimeError) as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    out = proc.stdout.strip()
    if out == "HAS_GPU":
        pytest.skip("this machine has a GPU")
    assert out.startswith(("ImportError", "RuntimeError")), proc.stdout + proc.stderr
    assert ('pip install "fastbp[cuda]"' in out) or ("no CUDA GPU found" in out), out


def test_too_large_model_names_the_limit():
    n_hidden = KC.MAX_PARAMS // 3
    ens = fastbp.Ensemble([2, n_hidden, 1], 2, seed=0)  # 4 * n_hidden + 1 > MAX_PARAMS
    X, y = _data("reg")
    with pytest.raises(ValueError, match=rf"up to {KC.MAX_PARAMS} parameters.*device='cpu'"):
        ens.fit(X, y, device="cuda")


def test_poisson_is_refused_on_the_gpu_by_name():
    ens = fastbp.Ensemble([2, 3, 1], 2, activation=["tanh", "exp"], loss="poisson", seed=0)
    X, y = _data("reg")
    with pytest.raises(ValueError, match=r"device='cuda' trains the losses .*'sse'.*cpu"):
        ens.fit(X, np.abs(y), device="cuda")


def test_importing_fastbp_does_not_import_cuda():
    code = ("import sys, fastbp, fastbp.kernels\n"
            "print(any(m == 'numba.cuda' or m.startswith('numba.cuda.') for m in sys.modules),"
            " 'fastbp.kernels.cuda' in sys.modules, 'fastbp._cuda' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.split() == ["False", "False", "False"], proc.stdout + proc.stderr
