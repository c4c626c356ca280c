#!/usr/bin/env python
"""What one call costs beyond its compiled loop (benchmarks/bench_calls.py's calls on the
XOR net's 4 points): the median microseconds of each call, ``--calls`` times in turns.

    NUMBA_NUM_THREADS=1 taskset -c 1 python call_overhead.py --calls 2000
"""
import argparse
import statistics
import time

from benchmarks.bench_calls import CallOverhead

CALLS = ("fit_one_epoch", "fit_one_epoch_minibatch", "predict", "from_weights")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000, help="timed calls of each (median)")
    args = ap.parse_args(argv)
    bench = CallOverhead()
    bench.setup()
    calls = {name: getattr(bench, "time_" + name) for name in CALLS}
    times = {name: [] for name in CALLS}
    for _ in range(args.calls):
        for name, call in calls.items():  # in turns: drift of the machine hits all alike
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    print("| call (XOR 2-4-4-1, 4 points) | median (us) |")
    print("|---|---:|")
    for name in CALLS:
        print(f"| {name} | {statistics.median(times[name]) * 1e6:.1f} |")


if __name__ == "__main__":
    main()
