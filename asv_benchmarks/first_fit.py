#!/usr/bin/env python
"""The README's first-fit table: ``import fastbp`` + the first fit of each row in a fresh
process, with an empty cache and then with the cache it filled (what asv's
``FirstFit`` benchmark tracks).

    taskset -c 1 python first_fit.py              # every row, one CPU
    python first_fit.py --rows xor,b64 --repeat 3 # medians of 3
"""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmarks.bench_cold_start import FIRST_FITS, first_fit  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(FIRST_FITS))
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    print("| first fit | empty cache (s) | warm cache (s) |")
    print("|---|---|---|")
    for row in a.rows.split(","):
        empty, warm = [], []
        for _ in range(a.repeat):
            with tempfile.TemporaryDirectory() as d:
                empty.append(first_fit(row, d)["total"])
                warm.append(first_fit(row, d)["total"])
        print(f"| {row} | {statistics.median(empty):.2f} | {statistics.median(warm):.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
