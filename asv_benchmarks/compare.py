#!/usr/bin/env python
"""fastbp against its peers, side by side, on workloads W1-W5.

    python compare.py                     # everything, full size (10-15 minutes on 2 cores)
    python compare.py --quick             # 10-100x less work, times extrapolated
    python compare.py --threads 1         # one thread per engine: steadier on a busy machine
    python compare.py --workloads W1,W2a,W4b --repeat 5
    python compare.py --engines fastbp,numpy,jax --json out.json
    python compare.py --dtype float32     # every engine in float32 (the C loop: double only)
    python compare.py --threads 2 --engines fastbp,fastbp.1,jax,torch --workloads W4
                                          # every engine on 2 threads, and fastbp on 1

Every engine trains the same network, in float64 (or --dtype), from the same initial parameters
(see benchmarks/common.py); peers are in peers.py.  Each cell is the median
wall time of ``--repeat`` runs (fewer when a run is slow), after a warm-up call
for JIT engines, so compile time is excluded (it is listed separately).
A cell that fails prints ``error: ...``; an engine that is missing or cannot
run here prints ``n/a`` and the reason; ``—`` means the engine has no such net.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchmarks import common  # noqa: E402
import peers  # noqa: E402

# full-size workloads (independent of FASTBP_BENCH_PROFILE)
FULL = {
    "W1": lambda: common.w1(epochs=100_000),
    "W2a": lambda: common.w2a(epochs=1_000),
    "W2b": lambda: common.w2b(epochs=1_000),
    "W2a_long": lambda: common.w2a(epochs=100_000),
    "W3": lambda: common.w3(epochs=100_000),
    **{f"W4a_{H}": (lambda H=H: common.w4(H, 1, 4096)) for H in common.W4_WIDTHS},
    **{f"W4b_{H}": (lambda H=H: common.w4(H, 64, 4096)) for H in common.W4_WIDTHS},
    "W5": lambda: common.w5(n_models=256, epochs=10_000),
}
DEFAULT_KEYS = [k for k in FULL if k != "W2a_long"]
# --quick: divide the work by this (epochs; samples for the one-epoch W4 runs)
QUICK_FACTOR = {"W1": 100, "W2a": 10, "W2b": 10, "W2a_long": 100, "W3": 100, "W4a": 8,
                "W4b": 8, "W5": 10}
LABEL = {"fastbp": "fastbp", "numpy": "NumPy (tutorial)", "c": "C (gcc -O3, scalar)",
         "jax": "JAX jit+scan", "torch": "PyTorch eager", "torch.compile": "torch.compile",
         "sklearn": "scikit-learn", "fastbp.1": "fastbp, 1 thread"}


def expand_keys(spec):
    keys = []
    for tok in [t.strip() for t in spec.split(",") if t.strip()]:
        if tok in FULL:
            keys.append(tok)
        elif tok == "W2":
            keys += ["W2a", "W2b"]
        elif tok in ("W4", "W4a", "W4b"):
            keys += [k for k in FULL if k.startswith(tok + "_") or (tok == "W4" and k.startswith("W4"))]
        else:
            raise SystemExit(f"unknown workload {tok!r}; choose from {', '.join(FULL)}, W2, W4, W4a, W4b")
    seen = []
    for k in keys:
        if k not in seen:
            seen.append(k)
    return seen


class Cell:
    def __init__(self):
        self.kind = "ok"     # ok | na | dash | error
        self.seconds = None  # median, full-size (extrapolated in --quick)
        self.times = []
        self.first = None    # first call incl. compile, when warmed up
        self.build = None
        self.final_loss = None
        self.note = ""
        self.extrapolated = 1.0

    def text(self):
        if self.kind == "na":
            return "n/a"
        if self.kind == "dash":
            return "—"
        if self.kind == "error":
            return "error: " + self.note[:80].replace("|", "/")
        s = fmt_s(self.seconds)
        if self.extrapolated > 1:
            s = "~" + s
        return s


def fmt_s(t):
    if t is None:
        return ""
    if t >= 100:
        return f"{t:.0f}"
    if t >= 10:
        return f"{t:.1f}"
    if t >= 1:
        return f"{t:.2f}"
    if t >= 0.01:
        return f"{t:.3f}"
    return f"{t:.2g}"


def final_loss(wl, result):
    Ws, bs = result
    if wl.n_models is None:
        return common.loss_value(wl, Ws, bs)
    losses = [common.loss_value(wl, [W[m] for W in Ws], None if bs is None else [b[m] for b in bs])
              for m in range(wl.n_models)]
    return float(np.mean(losses))


def run_cell(engine, key, wl, repeat, budget, verbose, log=False, max_run=None):
    if log:
        print(f"[{key}] {engine} ...", end=" ", file=sys.stderr, flush=True)
    cell = _run_cell(engine, key, wl, repeat, budget, verbose, max_run)
    if log:
        extra = f" ({cell.note})" if cell.note else ""
        print(cell.text() + extra, file=sys.stderr, flush=True)
    return cell


SLOW_ENGINES = ("numpy", "torch", "torch.compile", "sklearn")


def _run_cell(engine, key, wl, repeat, budget, verbose, max_run=None):
    """Build, warm up, time.  For a slow engine on a full-size workload (max_run set),
    first time it on the --quick size; if the full run would take longer than max_run
    seconds, report that measurement extrapolated (marked ~) instead of the full run."""
    cell = Cell()
    try:
        if max_run and engine in SLOW_ENGINES and wl.scale == 1:
            probe = wl.scaled(QUICK_FACTOR[peers.family(key)])
            if probe.scale > 1:
                c = _time_cell(engine, key, probe, repeat, budget)
                if c.seconds > max_run:
                    c.note = (c.note + "; " if c.note else "") + \
                        f"full run ~{fmt_s(c.seconds)} s > --max-run {max_run:g}: extrapolated"
                    return c
        return _time_cell(engine, key, wl, repeat, budget)
    except peers.Unavailable as exc:
        cell.kind, cell.note = "na", str(exc)
    except NotImplementedError as exc:  # fastbp (or a part of it) missing
        cell.kind, cell.note = "na", str(exc)
    except peers.NotApplicable as exc:
        cell.kind, cell.note = "dash", str(exc)
    except Exception as exc:
        cell.kind = "error"
        cell.note = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if verbose:
            traceback.print_exc()
    return cell


def _time_cell(engine, key, wl, repeat, budget):
    cell = Cell()
    cell.extrapolated = wl.scale
    t0 = time.perf_counter()
    run = peers.build(engine, wl, key)
    cell.build = time.perf_counter() - t0
    cell.note = getattr(run, "note", "")
    warm = getattr(run, "warmup", None)
    if warm is not None or engine in ("jax",):
        t0 = time.perf_counter()
        (warm or run)()
        cell.first = time.perf_counter() - t0
    for i in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = run()
        cell.times.append(time.perf_counter() - t0)
        if sum(cell.times) > budget:
            break
    cell.seconds = statistics.median(cell.times) * wl.scale
    try:
        cell.final_loss = final_loss(wl, result)
    except Exception as exc:  # a check failing is not a timing failure
        cell.note += f" (final loss: {exc!r})"
    return cell


def machine_line():
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vers = [f"Python {platform.python_version()}", f"numpy {np.__version__}"]
    from importlib import metadata
    for dist in ("numba", "fastbp", "torch", "jax", "scikit-learn"):
        try:
            vers.append(f"{dist} {metadata.version(dist)}")
        except Exception:
            pass
    return f"{cpu}, {os.cpu_count()} cores; " + ", ".join(vers)


def blas_line():
    """numpy's BLAS as loaded here (fastbp's largest products can go through it: kernels/gemm.py), and
    OPENBLAS_CORETYPE if the environment forces OpenBLAS's kernels: W4b's times depend on
    it (a sandbox that set Haswell made W4b H=1024 0.55 s instead of 0.48 s on Zen 5)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    libs = [f"{i.get('internal_api')} {i.get('version')}, {i.get('architecture')} kernels"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    core = os.environ.get("OPENBLAS_CORETYPE")
    forced = f" (OPENBLAS_CORETYPE={core} in the environment)" if core else ""
    return "; ".join(libs) + forced if libs else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default=",".join(DEFAULT_KEYS),
                    help="comma list: W1,W2a,W2b,W3,W4a_16..W4b_1024,W5 (or W2, W4, W4a, W4b); "
                         "W2a_long = W2a with 100,000 epochs")
    ap.add_argument("--engines", default=",".join(peers.ENGINES),
                    help=f"comma list from {','.join(peers.ENGINES + peers.EXTRA_ENGINES)} "
                         f"(fastbp.1: fastbp with n_jobs=1, for the gain of fastbp's threads "
                         f"under --threads N)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per cell (median)")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                    help="the dtype of the data, the parameters and every engine's arithmetic")
    ap.add_argument("--budget", type=float, default=None,
                    help="stop repeating a cell after this many seconds (default 20, 5 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="10-100x fewer epochs (8x fewer samples for W4); times extrapolated (~)")
    ap.add_argument("--max-run", type=float, default=60.0,
                    help="full-size mode: a slow engine (NumPy, PyTorch, scikit-learn) whose run "
                         "would take longer than this many seconds is timed on the --quick size "
                         "and extrapolated (~) (default 60; 0 = always run full size)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--machine", help="machine name for the header (default: from /proc/cpuinfo)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads per engine (sets OMP/OpenBLAS/MKL/Numba/XLA thread counts); "
                         "default: each library's own default (all cores)")
    ap.add_argument("--in-process", action="store_true",
                    help="run every engine in this process (default: one subprocess per engine, "
                         "so thread pools of different engines cannot interfere)")
    ap.add_argument("-v", "--verbose", action="store_true", help="tracebacks for errors")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        return worker(args)

    keys = expand_keys(args.workloads)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in engines:
        if e not in peers.ENGINES + peers.EXTRA_ENGINES:
            raise SystemExit(f"unknown engine {e!r}; choose from "
                             f"{', '.join(peers.ENGINES + peers.EXTRA_ENGINES)}")
    budget = args.budget if args.budget is not None else (5.0 if args.quick else 20.0)

    wls = {k: make_workload(k, args.quick, args.dtype) for k in keys}
    results = {k: {} for k in keys}
    load_before = load_average()
    if args.in_process:
        pin_to(pinned_cpus(args.threads))
    for engine in engines:
        if args.in_process:
            cells = {k: run_cell(engine, k, wls[k], args.repeat, budget, args.verbose, log=True,
                                 max_run=None if args.quick else args.max_run)
                     for k in keys}
        else:
            cells = run_worker(engine, keys, args, budget)
        for k in keys:
            results[k][engine] = cells[k]
    args.load = (load_before, load_average())

    print_report(args, keys, engines, wls, results)
    if args.json:
        out = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
               "machine": args.machine or machine_line(), "quick": args.quick,
               "dtype": args.dtype,
               "threads": args.threads, "load_average": args.load,
               "results": {k: {e: cell_to_dict(c) for e, c in row.items()}
                           for k, row in results.items()}}
        Path(args.json).write_text(json.dumps(out, indent=1))



def make_workload(key, quick, dtype="float64"):
    wl = FULL[key]().in_dtype(dtype)
    return wl.scaled(QUICK_FACTOR[peers.family(key)]) if quick else wl


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def thread_env(n):
    env = dict(os.environ)
    if n:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
            env[var] = str(n)
        flags = env.get("XLA_FLAGS", "")
        if n == 1:
            flags += " --xla_cpu_multi_thread_eigen=false"
        env["XLA_FLAGS"] = flags.strip()
    return env


def pinned_cpus(n):
    """The first n CPUs this process may run on, or None where affinity cannot be set.

    The thread-count variables are not enough: JAX 0.10's XLA ignores them and ran W4b on
    1.9 cores (CPU time / wall time) under ``--threads 1``.  An affinity mask binds every
    engine alike, whatever its thread pools do.
    """
    if not n or not hasattr(os, "sched_setaffinity"):
        return None
    return set(sorted(os.sched_getaffinity(0))[:n])


def pin_to(cpus):
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


CELL_FIELDS = ("kind", "seconds", "times", "first", "build", "final_loss", "note", "extrapolated")


def cell_to_dict(c):
    return {f: getattr(c, f) for f in CELL_FIELDS}


def cell_from_dict(d):
    c = Cell()
    for f in CELL_FIELDS:
        setattr(c, f, d.get(f))
    return c


def run_worker(engine, keys, args, budget):
    """Run one engine's cells in a fresh Python process; collect its JSON."""
    import subprocess
    import tempfile
    fd, out = tempfile.mkstemp(suffix=".json", prefix="fastbp_compare_")
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", engine, "--_out", out,
           "--workloads", ",".join(keys), "--repeat", str(args.repeat), "--budget", str(budget),
           "--max-run", str(args.max_run), "--dtype", args.dtype]
    if args.quick:
        cmd.append("--quick")
    if args.verbose:
        cmd.append("-v")
    cpus = pinned_cpus(args.threads)
    proc = subprocess.run(cmd, env=thread_env(args.threads), stdout=subprocess.DEVNULL,
                          stderr=None, preexec_fn=(lambda: pin_to(cpus)) if cpus else None)
    try:
        got = json.loads(Path(out).read_text() or "{}")
    except (OSError, ValueError):
        got = {}
    finally:
        try:
            os.unlink(out)
        except OSError:
            pass
    cells = {}
    for k in keys:
        if k in got:
            cells[k] = cell_from_dict(got[k])
        else:
            c = Cell()
            c.kind, c.note = "error", f"worker exited with code {proc.returncode} before this cell"
            cells[k] = c
    return cells


def worker(args):
    engine = args._worker
    keys = expand_keys(args.workloads)
    done = {}
    for k in keys:
        c = run_cell(engine, k, make_workload(k, args.quick, args.dtype), args.repeat, args.budget,
                     args.verbose, log=True, max_run=None if args.quick else args.max_run)
        done[k] = cell_to_dict(c)
        Path(args._out).write_text(json.dumps(done))  # after every cell: survives a crash
    return 0


def print_report(args, keys, engines, wls, results):
    peers_ = [e for e in engines if e not in ("fastbp",) + peers.EXTRA_ENGINES]
    cmd = "python compare.py " + " ".join(a for a in sys.argv[1:])
    print(f"\n### fastbp vs peers — seconds (median), {args.dtype}\n")
    print(f"Machine: {args.machine or machine_line()}  ")
    print(f"Command: `{cmd.strip()}`  ")
    if args.threads:
        pinned = pinned_cpus(args.threads)
        thr = f"{args.threads} per engine" + (
            f", each pinned to {len(pinned)} CPU{'s' * (len(pinned) > 1)}" if pinned else "")
    else:
        thr = "libraries' defaults (all cores)"
    iso = "all engines in one process" if args.in_process else "one process per engine"
    lb, la = args.load
    load = "" if lb is None else f"; 1-min load average {lb:.2f} before, {la:.2f} after"
    print(f"Threads: {thr}; {iso}{load}  ")
    blas = blas_line()
    if blas:
        print(f"BLAS: {blas}  ")
    if args.quick:
        print("**--quick**: each run did 1/10–1/100 of the epochs (1/8 of the samples for W4); "
              "`~` marks times extrapolated linearly to the full workload.  ")
    elif args.max_run:
        print(f"`~`: a slow engine's cell timed on 1/10–1/100 of the work and extrapolated "
              f"linearly, because the full run would take over {args.max_run:g} s.  ")
    print()
    head = ["workload"] + [LABEL.get(e, e) for e in engines]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key in keys:
        row = [key.replace("_", " H=")] + [results[key][e].text() for e in engines]
        print("| " + " | ".join(row) + " |")

    if "fastbp" in engines and peers_:
        print("\n### fastbp time / peer time (below 1 = fastbp faster)\n")
        head = ["workload"] + [LABEL.get(e, e) for e in peers_] + ["best peer", "fastbp / best"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for key in keys:
            fb = results[key]["fastbp"]
            row = [key.replace("_", " H=")]
            best = None
            for e in peers_:
                c = results[key][e]
                if fb.kind == "ok" and c.kind == "ok" and c.seconds:
                    row.append(f"{fb.seconds / c.seconds:.3g}")
                    if best is None or c.seconds < results[key][best].seconds:
                        best = e
                else:
                    row.append("")
            if best is not None:
                row += [LABEL.get(best, best), f"{fb.seconds / results[key][best].seconds:.3g}"]
            else:
                row += ["", ""]
            print("| " + " | ".join(row) + " |")

    if "fastbp" in engines and "fastbp.1" in engines:
        print("\n### fastbp's threads: time on 1 thread / time on the threads it was given\n")
        print("| workload | gain |")
        print("|---|---|")
        for key in keys:
            fb, one = results[key]["fastbp"], results[key]["fastbp.1"]
            gain = (f"{one.seconds / fb.seconds:.3g}" if fb.kind == "ok" and one.kind == "ok"
                    and fb.seconds else "")
            print(f"| {key.replace('_', ' H=')} | {gain} |")

    print("\n### final training loss (same math ⇒ same numbers; W5: mean over models)\n")
    head = ["workload"] + [LABEL.get(e, e) for e in engines]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key in keys:
        row = [key.replace("_", " H=")]
        for e in engines:
            c = results[key][e]
            txt = "" if c.final_loss is None else f"{c.final_loss:.10g}"
            if txt and not args.quick and (c.extrapolated or 1) > 1:
                txt += f" (1/{c.extrapolated:.3g} of the work)"
            row.append(txt)
        print("| " + " | ".join(row) + " |")

    firsts = [(k, e, c) for k in keys for e, c in results[k].items() if c.first is not None]
    if firsts:
        print("\n### first call (warm-up, includes JIT compilation), seconds\n")
        print("| workload | " + " | ".join(LABEL.get(e, e) for e in engines) + " |")
        print("|" + "---|" * (len(engines) + 1))
        for key in keys:
            row = [key.replace("_", " H=")]
            for e in engines:
                c = results[key][e]
                row.append("" if c.first is None else fmt_s(c.first))
            print("| " + " | ".join(row) + " |")

    notes = {}
    for key in keys:
        for e in engines:
            c = results[key][e]
            if c.note:
                notes.setdefault((e, c.kind, c.note), []).append(key)
    if notes:
        print("\n### notes\n")
        for (e, kind, note), ks in notes.items():
            tag = {"na": "n/a", "dash": "—", "error": "error", "ok": ""}[kind]
            ks_s = ", ".join(k.replace("_", " H=") for k in ks)
            print(f"- {LABEL.get(e, e)}{' (' + tag + ')' if tag else ''} [{ks_s}]: {note}")
    nrep = {k: {e: len(c.times) for e, c in results[k].items() if c.times} for k in keys}
    few = sorted({f"{LABEL.get(e, e)} {k.replace('_', ' H=')}" for k in keys for e, n in nrep[k].items() if n < args.repeat})
    if few:
        print(f"- fewer than {args.repeat} timed runs (slow cells): " + ", ".join(few))


if __name__ == "__main__":
    main()
