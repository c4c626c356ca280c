#!/usr/bin/env python
"""fastbp on the GPU (``Ensemble.fit(device="cuda")``) against its peers, one run.

Run from the repository root on a machine with an NVIDIA GPU:

    python asv_benchmarks/gpu_compare.py            # about 3 minutes on an H100
    python asv_benchmarks/gpu_compare.py --quick    # fewer epochs, about 2 minutes

fastbp need not be installed: the repository root goes first on sys.path and the
kernels/ folder is mapped to ``fastbp.kernels`` (what setuptools does at install).

Parts -- each in its own try/except, so one failure is reported and the rest goes on:

1. environment: GPU, driver, package versions;
2. correctness on the GPU: every case of tests/test_cuda.py (full batch, per-sample SGD
   with shuffling, mini-batch with per-model batch sizes and shuffle flags, per-model
   data, bce, softmax + cross-entropy, no bias, a diverging model, float32) with 67
   models, and 1,024 XOR nets x 100 epochs (full batch) and x 20 epochs (SGD, shuffled),
   against the CPU Ensemble: float64 to 1e-12 relative, float32 to 1e-5;
3. speed, in model-epochs per second, training 1,024 and 65,536 XOR nets (2-4-4-1
   sigmoid, the 21 points of tutorial 000, full batch, sse, lr 0.1) in float64 and
   float32: fastbp cuda; fastbp's CPU Ensemble (all cores); JAX jit(vmap(lax.scan)) on
   the GPU; batched PyTorch on the GPU (hand-written gradients: eager, and the same
   epochs replayed from a CUDA graph).  Every engine starts from the same parameters
   and is timed warm (compiled; compile time reported apart for fastbp), median of up
   to 3 runs.  Slower engines run fewer epochs: every epoch is the same work, so the
   rate is epochs x models / seconds whatever the count ("epochs timed" says how many
   ran).  Each engine's final parameters are compared with fastbp cuda run for the same
   epochs from the same start ("max rel. diff"), so the table compares the same math.

With $OUT set, gpu_compare.md (the tables), gpu_compare.json and gpu_compare.log (all
output) are also written there.
"""
import argparse
import importlib.abc
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import types
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = os.environ.get("OUT")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX: share the GPU
T_START = time.perf_counter()

# ---------------------------------------------------------------- output: tee to a log
_LOG = io.StringIO()


class _Tee:
    def __init__(self, stream):
        self.stream = stream

    def write(self, s):
        self.stream.write(s)
        _LOG.write(s)
        return len(s)

    def flush(self):
        self.stream.flush()


sys.stdout = _Tee(sys.stdout)


def say(*args):
    print(f"[{time.perf_counter() - T_START:6.1f}s]", *args, flush=True)


def save_outputs(report):
    if not OUT:
        return
    out = Path(OUT)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_compare.md").write_text(report.get("markdown", ""))
    (out / "gpu_compare.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_compare.log").write_text(_LOG.getvalue())


# ---------------------------------------------------------------- fastbp from the repo
class _KernelsFinder(importlib.abc.MetaPathFinder):
    """Maps ``fastbp.kernels`` to the repository's kernels/ folder (no install needed)."""

    def find_spec(self, name, path, target=None):
        if name != "fastbp.kernels":
            return None
        return importlib.util.spec_from_file_location(
            name, REPO / "kernels" / "__init__.py",
            submodule_search_locations=[str(REPO / "kernels")])


def import_fastbp():
    sys.path.insert(0, str(REPO))
    sys.meta_path.insert(0, _KernelsFinder())
    import fastbp
    import fastbp.kernels
    where = Path(fastbp.__file__).resolve().parent.parent
    kwhere = Path(fastbp.kernels.__file__).resolve().parent
    say(f"fastbp from {where}, fastbp.kernels from {kwhere}")
    if where != REPO or kwhere != REPO / "kernels":
        say("WARNING: fastbp is not this repository's copy")
    return fastbp


def import_test_cuda():
    """tests/test_cuda.py (its cases and checks); a stub pytest when pytest is missing."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        stub = types.ModuleType("pytest")

        def fixture(*args, **kw):
            return args[0] if args and callable(args[0]) else (lambda f: f)

        def fail(msg=""):
            raise AssertionError(msg)

        def skip(msg=""):
            raise RuntimeError(f"skip: {msg}")

        stub.fixture = fixture
        stub.fail = fail
        stub.skip = skip
        stub.mark = types.SimpleNamespace(parametrize=lambda *a, **k: (lambda f: f))
        stub.raises = None
        sys.modules["pytest"] = stub
    sys.path.insert(0, str(REPO / "tests"))
    import test_cuda
    return test_cuda


def route_cuda_to_cpu_twin():
    """--dry-run-cpu: device="cuda" runs the generated kernel's njit twin (as the tests'
    ``twin`` fixture does), so every line of this script can be tried without a GPU."""
    import numpy as np
    import fastbp._cuda as FC
    from fastbp.kernels import cuda as KC

    class Dev(np.ndarray):
        def copy_to_host(self):
            return np.array(self)

    fake = types.SimpleNamespace(to_device=lambda a: np.array(a).view(Dev),
                                 device_array=lambda shape, dtype: np.empty(shape, dtype).view(Dev),
                                 synchronize=lambda: None)
    real_get = KC.get_kernel
    FC.require_cuda = lambda: fake
    KC.get_kernel = lambda *a, **k: real_get(*a, target="cpu")
    KC.launch = lambda kernel, n, args, **k: kernel(
        *[np.asarray(x) if isinstance(x, np.ndarray) else x for x in args])


DRY_RUN = False

# ---------------------------------------------------------------- parts
REPORT = {"errors": {}, "checks": {}, "speed": [], "skipped": []}


def part(name, budget_s=None):
    """Decorator-free runner: part(name)(fn, *args) runs fn, logging any failure."""
    def run(fn, *args, **kw):
        if budget_s is not None and time.perf_counter() - T_START > budget_s:
            say(f"SKIPPED {name}: over the time budget ({budget_s:.0f} s)")
            REPORT["skipped"].append(name)
            return None
        try:
            return fn(*args, **kw)
        except Exception as exc:
            say(f"FAILED {name}: {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stdout)
            REPORT["errors"][name] = f"{type(exc).__name__}: {exc}"
            return None
    return run


def environment():
    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_count": os.cpu_count()}
    for mod in ("numpy", "numba", "numba_cuda", "jax", "torch"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as exc:
            info[mod] = f"unavailable ({type(exc).__name__}: {exc})"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                              "clocks.max.sm", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["nvidia-smi"] = smi.stdout.strip() or smi.stderr.strip()
    except Exception as exc:
        info["nvidia-smi"] = f"unavailable: {exc}"
    REPORT["environment"] = info
    for k, v in info.items():
        say(f"  {k}: {v}")
    from numba import cuda
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    info["gpu"] = name
    info["compute_capability"] = dev.compute_capability
    info["multiprocessors"] = dev.MULTIPROCESSOR_COUNT
    for k in ("gpu", "compute_capability", "multiprocessors"):
        say(f"  {k}: {info[k]}")
    return info


# ---------------------------------------------------------------- correctness
def check_cases(tc):
    for name in tc.CASES:
        def one(name=name):
            t0 = time.perf_counter()
            r = tc.compare(name, n_models=67)
            ok, why = True, ""
            try:
                tc.check(name, r)
            except AssertionError as exc:
                ok, why = False, str(exc)[:300]
            r.update(ok=ok, seconds=round(time.perf_counter() - t0, 2))
            REPORT["checks"][name] = r
            say(f"  check {name:24s} {'ok  ' if ok else 'FAIL'} params rel "
                f"{r['params_rel']:.1e}, history rel {r['hist_rel']:.1e} "
                f"({r['seconds']:.1f} s){'  ' + why if why else ''}")
        part(f"check {name}", budget_s=120)(one)


def xor_data(np):
    inputs, labels = [], []
    for i in range(11):
        inputs.append([0.1 * i, 0.1 * i])
        labels.append(0)
        if 0.1 * i == 0.5:
            continue
        inputs.append([0.1 * i, 1 - 0.1 * i])
        labels.append(1)
    return np.array(inputs), np.array(labels, dtype=float).reshape(21, 1)


def check_xor_long(fastbp, np, label, epochs, **fit_kw):
    X, y = xor_data(np)
    runs = []
    for device in ("cpu", "cuda"):
        ens = fastbp.Ensemble([2, 4, 4, 1], 1024, activation="sigmoid", loss="sse", seed=1)
        hist = ens.fit(X, y, epochs=epochs, lr=0.1, device=device, **fit_kw)
        runs.append((ens, hist))
    (a, ha), (b, hb) = runs
    prel = float(np.max(np.abs(a.params - b.params) / np.maximum(np.abs(a.params), 1e-3)))
    hrel = float(np.max(np.abs(ha.loss - hb.loss) / np.abs(ha.loss)))
    rng_ok = bool(np.array_equal(a._rng_states, b._rng_states))
    ok = prel <= 1e-12 and hrel <= 1e-12 and rng_ok
    REPORT["checks"][label] = dict(params_rel=prel, hist_rel=hrel, rng_equal=rng_ok, ok=ok)
    say(f"  check {label:24s} {'ok  ' if ok else 'FAIL'} params rel {prel:.1e}, "
        f"history rel {hrel:.1e}, generator states equal: {rng_ok}")


# ---------------------------------------------------------------- speed
def timed(fn, repeat=3, max_seconds=6.0):
    """Median wall time of up to ``repeat`` calls (fewer when a call is slow)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if sum(times) > max_seconds:
            break
    return statistics.median(times)


def unflatten(P, sizes):
    """(M, n_params) fastbp rows -> per-layer W (M, a, b) and b (M, b) arrays."""
    Ws, bs, pos = [], [], 0
    for a, b in zip(sizes[:-1], sizes[1:]):
        Ws.append(P[:, pos:pos + a * b].reshape(-1, a, b).copy())
        pos += a * b
        bs.append(P[:, pos:pos + b].copy())
        pos += b
    return Ws, bs


def flatten(Ws, bs, np):
    parts = []
    for W, b in zip(Ws, bs):
        parts += [W.reshape(W.shape[0], -1), b.reshape(b.shape[0], -1)]
    return np.concatenate(parts, axis=1)


class Speed:
    """The XOR speed comparison for one (models, dtype)."""
    SIZES = (2, 4, 4, 1)
    LR = 0.1

    def __init__(self, fastbp, np, n_models, dtype, epochs):
        self.fastbp, self.np = fastbp, np
        self.M, self.dtype, self.epochs = n_models, dtype, epochs
        self.X, self.y = xor_data(np)
        self.ens = fastbp.Ensemble(list(self.SIZES), n_models, activation="sigmoid",
                                   loss="sse", dtype=dtype, seed=0)
        self.p0 = self.ens.params.copy()
        self.reference = {}  # epochs -> fastbp cuda params after that many epochs

    def _fit(self, epochs, device):
        self.ens.params[...] = self.p0
        self.ens.fit(self.X, self.y, epochs=epochs, lr=self.LR, record_every=epochs,
                     device=device)
        return self.ens.params.copy()

    def cuda_params(self, epochs):
        if epochs not in self.reference:
            self.reference[epochs] = self._fit(epochs, "cuda")
        return self.reference[epochs]

    def record(self, engine, epochs, seconds, params=None, note="", compile_s=None):
        np = self.np
        rate = self.M * epochs / seconds
        diff = None
        if params is not None:
            ref = self.cuda_params(epochs)
            diff = float(np.max(np.abs(params - ref) / np.maximum(np.abs(ref), 1e-3)))
        row = dict(engine=engine, dtype=self.dtype, models=self.M, epochs=epochs,
                   seconds=seconds, rate=rate, max_rel_diff=diff, note=note,
                   compile_s=compile_s)
        REPORT["speed"].append(row)
        say(f"  {engine:28s} {self.dtype:7s} {self.M:6d} models x {epochs:6d} epochs: "
            f"{seconds:8.4f} s = {rate:.3g} model-epochs/s"
            + (f", max rel. diff vs fastbp cuda {diff:.1e}" if diff is not None else ""))
        return row

    # -- engines
    def fastbp_cuda(self):
        t0 = time.perf_counter()
        self._fit(2, "cuda")  # compiles the kernel
        compile_s = time.perf_counter() - t0
        E = self.epochs["cuda"]
        sec = timed(lambda: self._fit(E, "cuda"))
        self.reference[E] = self.ens.params.copy()
        self.record("fastbp cuda", E, sec, note="Ensemble.fit(device='cuda')",
                    compile_s=round(compile_s, 2))
        try:  # registers and local memory of the compiled kernel (ptxas's numbers)
            from fastbp.kernels import cuda as KC
            kern = [k for key, k in KC._CACHE.items()
                    if key[0] == self.SIZES and key[4] == self.dtype and key[6] == "cuda"][0]
            regs, lmem = kern.get_regs_per_thread(), kern.get_local_mem_per_thread()
            res = dict(regs=list(regs.values()) if isinstance(regs, dict) else regs,
                       local_bytes=list(lmem.values()) if isinstance(lmem, dict) else lmem)
            REPORT.setdefault("kernel_resources", {})[self.dtype] = res
            say(f"  kernel resources ({self.dtype}): {res}")
        except Exception as exc:
            say(f"  (kernel resources unavailable: {exc!r})")

    def block_sweep(self):
        """Threads per block for this many models (diagnostic: is 128 the right default?)."""
        from fastbp.kernels import cuda as KC
        default = KC.THREADS_PER_BLOCK
        E = self.epochs["cuda"]
        out = {}
        try:
            for tpb in (32, 64, 128, 256):
                KC.THREADS_PER_BLOCK = tpb
                out[tpb] = self.M * E / timed(lambda: self._fit(E, "cuda"), repeat=2)
        finally:
            KC.THREADS_PER_BLOCK = default
        REPORT.setdefault("threads_per_block_sweep", {})[f"{self.M} {self.dtype}"] = out
        say(f"  threads per block -> model-epochs/s: "
            + ", ".join(f"{k}: {v:.3g}" for k, v in out.items()))

    def fastbp_cpu(self):
        self._fit(1, "cpu")  # compiles (or loads) the CPU kernels
        E = self.epochs["cpu"]
        sec = timed(lambda: self._fit(E, "cpu"), repeat=2)
        self.record(f"fastbp CPU ({os.cpu_count()} threads)", E, sec,
                    params=self.ens.params.copy(), note="Ensemble.fit(n_jobs=all)")

    def jax_vmap(self):
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from jax import lax
        np = self.np
        dt = jnp.float64 if self.dtype == "float64" else jnp.float32
        Ws, bs = unflatten(self.p0, self.SIZES)
        params0 = [(jnp.asarray(W, dtype=dt), jnp.asarray(b, dtype=dt)) for W, b in zip(Ws, bs)]
        X = jnp.asarray(self.X, dtype=dt)
        y = jnp.asarray(self.y, dtype=dt)
        lr = self.LR

        def loss_fn(params):
            a = X
            for W, b in params:
                a = jax.nn.sigmoid(a @ W + b)
            return 0.5 * jnp.sum((a - y) ** 2)

        grad = jax.grad(loss_fn)
        E = self.epochs["jax"]

        def train(params):
            def epoch(p, _):
                g = grad(p)
                return jax.tree_util.tree_map(lambda q, gq: q - lr * gq, p, g), None
            return lax.scan(epoch, params, None, length=E)[0]

        f = jax.jit(jax.vmap(train))

        def run():
            return jax.block_until_ready(f(params0))

        run()  # compile
        sec = timed(run)
        out = run()
        P = flatten([np.asarray(W) for W, _ in out], [np.asarray(b) for _, b in out], np)
        self.record("JAX jit(vmap(lax.scan))", E, sec, params=P, note="jax.grad, GPU")

    def _torch_setup(self):
        import torch
        dev = torch.device("cpu" if DRY_RUN else "cuda")
        tdt = torch.float64 if self.dtype == "float64" else torch.float32
        Ws, bs = unflatten(self.p0, self.SIZES)
        W = [torch.tensor(w, dtype=tdt, device=dev) for w in Ws]
        B = [torch.tensor(b[:, None, :], dtype=tdt, device=dev) for b in bs]
        W0 = [w.clone() for w in W]
        B0 = [b.clone() for b in B]
        X = torch.tensor(self.X, dtype=tdt, device=dev)
        y = torch.tensor(self.y, dtype=tdt, device=dev)
        lr = self.LR

        def epoch():
            # forward, all models at once: (21, n_in) @ (M, n_in, n_out) -> (M, 21, n_out)
            a1 = torch.sigmoid(X @ W[0] + B[0])
            a2 = torch.sigmoid(a1 @ W[1] + B[1])
            a3 = torch.sigmoid(a2 @ W[2] + B[2])
            d3 = (a3 - y) * a3 * (1 - a3)                     # sse: dE/dz3
            d2 = (d3 @ W[2].transpose(1, 2)) * a2 * (1 - a2)
            d1 = (d2 @ W[1].transpose(1, 2)) * a1 * (1 - a1)
            grads = [(X.T @ d1, d1.sum(1, keepdim=True)),
                     (a1.transpose(1, 2) @ d2, d2.sum(1, keepdim=True)),
                     (a2.transpose(1, 2) @ d3, d3.sum(1, keepdim=True))]
            for l, (gw, gb) in enumerate(grads):
                W[l].sub_(lr * gw)
                B[l].sub_(lr * gb)

        def reset():
            for w, w0 in zip(W, W0):
                w.copy_(w0)
            for b, b0 in zip(B, B0):
                b.copy_(b0)

        def params():
            return flatten([w.cpu().numpy() for w in W], [b[:, 0, :].cpu().numpy() for b in B],
                           self.np)
        return torch, epoch, reset, params

    def torch_eager(self):
        torch, epoch, reset, params = self._torch_setup()
        E = self.epochs["torch"]

        def run():
            reset()
            with torch.no_grad():
                for _ in range(E):
                    epoch()
            if not DRY_RUN:
                torch.cuda.synchronize()

        run()
        sec = timed(run)
        self.record("PyTorch batched (eager)", E, sec, params=params(),
                    note="bmm over models, manual gradients")

    def torch_graph(self):
        torch, epoch, reset, params = self._torch_setup()
        E = self.epochs["torch_graph"]
        per_graph = 50
        E = max(per_graph, E // per_graph * per_graph)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(s):
            for _ in range(3):
                epoch()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            for _ in range(per_graph):
                epoch()

        def run():
            reset()
            for _ in range(E // per_graph):
                graph.replay()
            torch.cuda.synchronize()

        run()
        sec = timed(run)
        self.record("PyTorch batched (CUDA graph)", E, sec, params=params(),
                    note=f"{per_graph} epochs per graph replay")


def markdown(info):
    rows = REPORT["speed"]
    gpu = info.get("gpu", "?") if info else "?"
    versions = ", ".join(f"{k} {info.get(k)}" for k in ("numpy", "numba", "numba_cuda", "jax",
                                                          "torch"))
    lines = ["## fastbp GPU vs peers: XOR 2-4-4-1, 21 samples, full batch, sse, lr 0.1", "",
             f"GPU: **{gpu}** ({info.get('nvidia-smi', '?')}); CPU threads: "
             f"{os.cpu_count()}; {versions}", ""]
    for M in sorted({r["models"] for r in rows}):
        for dt in ("float64", "float32"):
            sel = [r for r in rows if r["models"] == M and r["dtype"] == dt]
            if not sel:
                continue
            cuda = next((r["rate"] for r in sel if r["engine"] == "fastbp cuda"), None)
            lines += [f"### {M:,} models, {dt}", "",
                      "| engine | epochs timed | seconds | model-epochs/s | fastbp cuda speed-up "
                      "| max rel. diff vs fastbp cuda |",
                      "|---|---:|---:|---:|---:|---:|"]
            for r in sel:
                ratio = f"{cuda / r['rate']:.1f}x" if cuda else "n/a"
                diff = "-" if r["max_rel_diff"] is None else f"{r['max_rel_diff']:.1e}"
                lines.append(f"| {r['engine']} | {r['epochs']:,} | {r['seconds']:.4f} | "
                             f"{r['rate']:.3g} | {ratio} | {diff} |")
            lines.append("")
    comp = [f"{r['dtype']} {r['models']}: {r['compile_s']} s" for r in rows
            if r.get("compile_s") is not None]
    if comp:
        lines += ["fastbp cuda first call (kernel compile + a 2-epoch run): " + "; ".join(comp),
                  ""]
    checks = REPORT["checks"]
    if checks:
        lines += ["### correctness on the GPU (vs the CPU Ensemble)", "",
                  "| case | ok | params max rel. diff | history max rel. diff |",
                  "|---|---|---:|---:|"]
        for name, r in checks.items():
            lines.append(f"| {name} | {'yes' if r.get('ok') else '**NO**'} | "
                         f"{r.get('params_rel', float('nan')):.1e} | "
                         f"{r.get('hist_rel', float('nan')):.1e} |")
        lines.append("")
    if REPORT.get("kernel_resources"):
        lines += ["fastbp cuda XOR kernel, per thread: " + "; ".join(
            f"{dt}: {r}" for dt, r in REPORT["kernel_resources"].items()), ""]
    if REPORT.get("threads_per_block_sweep"):
        for k, v in REPORT["threads_per_block_sweep"].items():
            lines += [f"threads per block ({k}) -> model-epochs/s: "
                      + ", ".join(f"{t}: {r:.3g}" for t, r in v.items()), ""]
    if REPORT["errors"]:
        lines += ["### failures", ""] + [f"- {k}: {v}" for k, v in REPORT["errors"].items()] + [""]
    if REPORT["skipped"]:
        lines += ["skipped (time budget): " + ", ".join(REPORT["skipped"]), ""]
    lines.append(f"total script time {time.perf_counter() - T_START:.0f} s")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs (about 2 minutes)")
    ap.add_argument("--no-checks", action="store_true", help="skip the correctness part")
    ap.add_argument("--budget", type=float, default=220.0,
                    help="seconds after which remaining parts are skipped (default 220)")
    ap.add_argument("--dry-run-cpu", action="store_true",
                    help="test this script without a GPU: 'cuda' runs the kernel's CPU twin, "
                         "JAX and PyTorch run on the CPU, tiny sizes (meaningless timings)")
    args = ap.parse_args()
    global DRY_RUN
    DRY_RUN = args.dry_run_cpu
    warnings.simplefilter("ignore", category=DeprecationWarning)
    q = 4 if args.quick else 1
    say("gpu_compare: fastbp Ensemble.fit(device='cuda') vs peers")
    np = __import__("numpy")
    fastbp = part("import fastbp")(import_fastbp)
    part("environment")(environment)
    info = REPORT.get("environment", {})
    if fastbp is None:
        save_outputs(REPORT)
        return 1
    from fastbp._cuda import cuda_available
    if DRY_RUN:
        route_cuda_to_cpu_twin()
    elif not cuda_available():
        say("no usable GPU through numba-cuda: nothing to measure")
        REPORT["errors"]["cuda"] = "cuda_available() is False"
    budget = args.budget

    if not args.no_checks:
        say("correctness: the cases of tests/test_cuda.py on the GPU, 67 models each")
        tc = part("import tests/test_cuda.py")(import_test_cuda)
        if tc is not None:
            check_cases(tc)
        part("check xor 1024 x 100 full batch", budget_s=130)(
            check_xor_long, fastbp, np, "xor_1024x100_full_batch", 100)
        part("check xor 1024 x 20 sgd", budget_s=130)(
            check_xor_long, fastbp, np, "xor_1024x20_sgd_shuffle", 20, batch_size=1,
            shuffle=True)

    # epochs per engine, by number of models (every epoch is the same work)
    if DRY_RUN:
        plans = {256: dict(cuda=40, cpu=20, jax=30, torch=20, torch_graph=50),
                 64: dict(cuda=60, cpu=30, jax=30, torch=20, torch_graph=50)}
    else:
        plans = {}
    plans = plans or {
        1024: dict(cuda=20_000 // q, cpu=1_000 // q, jax=2_000 // q, torch=500 // q,
                   torch_graph=2_000 // q),
        65536: dict(cuda=4_000 // q, cpu=40 // q, jax=500 // q, torch=200 // q,
                    torch_graph=500 // q),
    }
    sizes = (256, 64) if DRY_RUN else (65536, 1024)
    speeds = {}
    for dtype in ("float64", "float32"):
        for M in sizes:
            say(f"speed: {M} models, {dtype}")
            sp = part(f"setup {M} {dtype}")(Speed, fastbp, np, M, dtype, plans[M])
            if sp is None:
                continue
            speeds[M, dtype] = sp
            late = budget * (0.85 if dtype == "float64" else 0.95)
            part(f"fastbp cuda {M} {dtype}", budget_s=late)(sp.fastbp_cuda)
            part(f"jax {M} {dtype}", budget_s=late)(sp.jax_vmap)
            part(f"torch eager {M} {dtype}", budget_s=late)(sp.torch_eager)
            if not DRY_RUN:
                part(f"torch graph {M} {dtype}", budget_s=late)(sp.torch_graph)
            if dtype == "float64":
                part(f"fastbp cpu {M} {dtype}", budget_s=late)(sp.fastbp_cpu)
                if M == sizes[0] and not DRY_RUN:
                    part(f"block sweep {M} {dtype}", budget_s=late)(sp.block_sweep)
    # the CPU's float32 kernels need a compile of their own: last, if time is left
    for M in sizes[::-1]:
        if (M, "float32") in speeds:
            part(f"fastbp cpu {M} float32", budget_s=budget)(speeds[M, "float32"].fastbp_cpu)
    REPORT["markdown"] = markdown(info)
    print()
    print(REPORT["markdown"])
    save_outputs(REPORT)
    failed_checks = [k for k, r in REPORT["checks"].items() if not r.get("ok")]
    return 1 if failed_checks else 0


if __name__ == "__main__":
    sys.exit(main())
