#!/usr/bin/env python
"""fastbp's float32 time over its float64 time on every compare.py workload, measured
side by side in one process: each workload's two fits alternate, ``--repeat`` times
each, after a warm-up that compiles both; the medians and their ratio (below 1:
float32 faster).  Data and initial parameters are the workload's, cast once before
timing (Workload.in_dtype), so both dtypes train the same network.

    NUMBA_NUM_THREADS=1 taskset -c 1 python dtype_ratio.py   # every workload, one CPU
    python dtype_ratio.py --workloads W1,W4b --repeat 5
    python dtype_ratio.py --workloads W3 --samples 100,200,1000   # W3's net on more data
    python dtype_ratio.py --workloads W1,W3,W4b_64 --optimizer adam   # stateful steps
    python dtype_ratio.py --workloads W4b_16 --kernel   # the kernel's share of a fit

``--optimizer momentum`` (momentum=0.9) or ``adam``: the single-model workloads
trained with that rule instead of plain SGD (W5's ensemble is left out).
``--samples``: each workload's data repeated to that many samples (Workload.with_samples),
to see how the ratio moves with the work per epoch.  ``--block K``: each timed run is
the median of K fits of one dtype in a row, after one more untimed, so that a fit
starts with the caches holding its own dtype's code and data, as among fits of one
dtype (the default, 1, alternates the dtypes fit by fit).
``--kernel``: two more columns, the seconds of those fits spent inside the training
kernel's calls (fastbp/_fit.py: SingleFit._call, the compiled loop and its dispatch)
and their float32 / float64 ratio; the rest of a fit is Python around the kernel --
the model built, the data checked, the fit planned -- the same work in both dtypes,
which is most of a short fit's difference from the kernels' ratio (single models
only: W5's ensemble has no such calls).
"""
import argparse
import statistics
import time

from compare import DEFAULT_KEYS, expand_keys, make_workload  # also puts benchmarks/ on the path
import peers  # noqa: E402

DTYPES = ("float64", "float32")
OPTIMIZERS = {"sgd": {}, "momentum": dict(momentum=0.9), "adam": dict(optimizer="adam")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=",".join(DEFAULT_KEYS))
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per dtype (median)")
    ap.add_argument("--quick", action="store_true", help="compare.py's --quick sizes")
    ap.add_argument("--samples", default=None,
                    help="comma list of sample counts: each workload's data repeated to each")
    ap.add_argument("--block", type=int, default=1,
                    help="fits of one dtype in a row per timed run (median; one untimed first)")
    ap.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="sgd",
                    help="the update rule of the single-model workloads (default plain SGD)")
    ap.add_argument("--kernel", action="store_true",
                    help="also the seconds inside the training kernel's calls, and their ratio")
    args = ap.parse_args(argv)
    if args.kernel:
        _time_kernel_calls()
    fit_options = OPTIMIZERS[args.optimizer]
    counts = [None] if args.samples is None else [int(v) for v in args.samples.split(",")]
    extra = (" float64 kernel (s) | float32 kernel (s) | kernel float32 / float64 |"
             if args.kernel else "")
    print("| workload | float64 (s) | float32 (s) | float32 / float64 |" + extra)
    print("|---|---|---|---|" + "---|" * 3 * args.kernel)
    keys = [key for key in expand_keys(args.workloads)
            if not (fit_options and key.startswith("W5"))]
    for key, n in ((key, n) for key in keys for n in counts):
        runs = {}
        for dtype in DTYPES:
            wl = make_workload(key, args.quick, dtype)
            wl = wl if n is None else wl.with_samples(n)
            run = (peers.fastbp_with_options(wl, **fit_options) if fit_options
                   else peers.build("fastbp", wl, key))
            (getattr(run, "warmup", None) or run)()
            runs[dtype] = (run, wl.scale)
        times = {dtype: [] for dtype in DTYPES}
        inside = {dtype: [] for dtype in DTYPES}
        for _ in range(args.repeat):
            for dtype in DTYPES:  # alternating: drift of the machine hits both alike
                run, scale = runs[dtype]
                seconds, kernel_seconds = _timed(run, args.block)
                times[dtype].append(seconds * scale)
                inside[dtype].append(kernel_seconds * scale)
        t64, t32 = (statistics.median(times[d]) for d in DTYPES)
        label = key.replace('_', ' H=') + ("" if n is None else f", {n} samples")
        row = f"| {label} | {t64:.3g} | {t32:.3g} | {t32 / t64:.2f} |"
        if args.kernel:
            k64, k32 = (statistics.median(inside[d]) for d in DTYPES)
            row += (f" {k64:.3g} | {k32:.3g} | {k32 / k64:.2f} |" if k64 > 0
                    else " — | — | — |")
        print(row, flush=True)


_kernel_seconds = [0.0]  # seconds inside SingleFit._call since the last reset (--kernel)


def _time_kernel_calls():
    """From now on, every SingleFit._call adds its seconds to _kernel_seconds."""
    from fastbp import _fit
    call = _fit.SingleFit._call

    def timed_call(self, *args):
        t0 = time.perf_counter()
        try:
            return call(self, *args)
        finally:
            _kernel_seconds[0] += time.perf_counter() - t0

    _fit.SingleFit._call = timed_call


def _timed(run, block):
    """(seconds, seconds inside the kernel's calls) of one call of ``run``; with block >
    1, the medians of ``block`` calls in a row after an untimed one."""
    if block > 1:
        run()
    seconds, inside = [], []
    for _ in range(max(block, 1)):
        _kernel_seconds[0] = 0.0
        t0 = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - t0)
        inside.append(_kernel_seconds[0])
    return statistics.median(seconds), statistics.median(inside)


if __name__ == "__main__":
    main()
