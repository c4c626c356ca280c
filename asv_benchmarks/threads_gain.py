#!/usr/bin/env python
"""Whether threads pay on this machine: one model's fit on one thread and on every core
(``n_jobs=1`` and ``n_jobs=-1``), alternating in one process, median of ``--rounds``
fits each (asv's ThreadsGain workloads), and the round trip of a cache line between two
CPUs, which every shared product pays several times a batch.

    python asv_benchmarks/threads_gain.py                  # W4b H=256 and 1024, W4a H=1024
    python asv_benchmarks/threads_gain.py --workloads W4b_256 --rounds 15 --cpus 0,1

The round trip is a C ping-pong of one atomic flag between two threads pinned to the two
``--cpus`` (needs a C compiler, ``cc``; left out without one).  Bare metal puts it at
tens of nanoseconds between cores that share a cache; a virtual machine's CPUs can be
much further apart (the 2-core development VM read 83-497 ns within an hour), and
per-sample SGD, whose threads hand each row's partial sums on for every sample, feels it
most (README: *Every core for one model*).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmarks import common  # noqa: E402
from benchmarks.bench_threads import _runner  # noqa: E402

PING_PONG = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static _Atomic long flag __attribute__((aligned(64)));
static long trips;
static void pin(int cpu) {
    cpu_set_t set; CPU_ZERO(&set); CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}
static void *other(void *cpu) {
    pin((int)(long)cpu);
    for (long i = 0; i < trips; i++) {
        while (atomic_load(&flag) != 2 * i + 1) {}
        atomic_store(&flag, 2 * i + 2);
    }
    return 0;
}
int main(int argc, char **argv) {
    int a = atoi(argv[1]), b = atoi(argv[2]);
    trips = atol(argv[3]);
    pthread_t t; struct timespec t0, t1;
    pin(a);
    pthread_create(&t, 0, other, (void *)(long)b);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < trips; i++) {
        atomic_store(&flag, 2 * i + 1);
        while (atomic_load(&flag) != 2 * i + 2) {}
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(t, 0);
    printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / trips);
    return 0;
}
"""


def round_trip_ns(cpu_a, cpu_b, trips=200_000, repeat=3):
    """The best of ``repeat`` mean round trips (ns) between the two CPUs, or None without a
    C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "ping_pong.c"), os.path.join(d, "ping_pong")
        with open(src, "w") as f:
            f.write(PING_PONG)
        subprocess.run([cc, "-O2", "-pthread", src, "-o", exe], check=True)
        return min(float(subprocess.run([exe, str(cpu_a), str(cpu_b), str(trips)],
                                        check=True, capture_output=True,
                                        text=True).stdout) for _ in range(repeat))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="W4b_256,W4b_1024,W4a_1024")
    ap.add_argument("--rounds", type=int, default=9, help="fits of each thread count (median)")
    ap.add_argument("--cpus", default=None,
                    help="two CPUs for the round trip (default: the first two this process "
                         "may run on)")
    args = ap.parse_args(argv)
    allowed = sorted(os.sched_getaffinity(0))
    cpus = ([int(c) for c in args.cpus.split(",")] if args.cpus else allowed[:2])
    if len(cpus) == 2:
        ns = round_trip_ns(*cpus)
        print(f"cache-line round trip between CPUs {cpus[0]} and {cpus[1]}: "
              + ("no C compiler" if ns is None else f"{ns:.0f} ns"))
    print(f"| workload | n_jobs=1 (s) | every core, {len(allowed)} CPUs (s) | gain |")
    print("|---|---|---|---|")
    common.import_fastbp()
    for key in args.workloads.split(","):
        runs = {n: _runner(key, n) for n in (1, -1)}
        times = {n: [] for n in runs}
        for _ in range(args.rounds):
            for n, run in runs.items():  # alternating: the machine's drift hits both
                t0 = time.perf_counter()
                run()
                times[n].append(time.perf_counter() - t0)
        one, every = (statistics.median(times[n]) for n in (1, -1))
        print(f"| {key} | {one:.4g} | {every:.4g} | {one / every:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
