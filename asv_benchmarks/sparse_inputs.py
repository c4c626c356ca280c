#!/usr/bin/env python
"""Training on a sparse matrix too large to make dense, next to scikit-learn.

    NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c 0 \\
        python asv_benchmarks/sparse_inputs.py [--rows 100000] [--epochs 2]

The data: a 100,000 x 20,000 CSR matrix at 0.1% density (20 stored values a row, 2 M
in all, 24 MB; dense it would be 16 GB), binary targets from a random linear rule.  The
network: scikit-learn's MLPClassifier shape on it, 20000-100-1 (relu, logistic output),
batches of 200, shuffled.  For each library and solver (sgd, adam) one fresh process:
a warm-up epoch (fastbp: the compile), then ``--epochs`` epochs timed; the table gives
seconds per epoch and the process's peak resident memory (ru_maxrss, which includes
the data and Python itself).  scikit-learn is run for ``--sklearn-rows`` rows (it is
slow here) and its time scaled to the same rows.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

D_FEATURES = 20_000
PER_ROW = 20
HIDDEN = 100
BATCH = 200


def make_data(rows, seed=0):
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    cols = np.sort(rng.integers(0, D_FEATURES, size=(rows, PER_ROW)), axis=1)
    X = sp.csr_matrix((rng.normal(size=rows * PER_ROW), cols.ravel(),
                       np.arange(0, rows * PER_ROW + 1, PER_ROW)), shape=(rows, D_FEATURES))
    y = (X @ rng.normal(size=D_FEATURES) > 0).astype(int)
    return X, y


def one_run(library, solver, rows, epochs):
    """In this process: the seconds of ``epochs`` epochs after a warm-up one."""
    import warnings
    X, y = make_data(rows)
    lr = 0.01 if solver == "sgd" else 0.001
    if library == "fastbp":
        import fastbp
        m = fastbp.MLP([D_FEATURES, HIDDEN, 1], activation=["relu", "sigmoid"], loss="bce",
                       seed=0)
        kw = dict(lr=lr, batch_size=BATCH, shuffle=True, optimizer=solver, n_jobs=1)
        m.fit(X, y, epochs=1, **kw)
        start = time.perf_counter()
        m.fit(X, y, epochs=epochs, **kw)
    else:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        est = MLPClassifier((HIDDEN,), solver=solver, learning_rate_init=lr, momentum=0.0,
                            batch_size=BATCH, max_iter=1, random_state=0, tol=0.0,
                            n_iter_no_change=10 ** 6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y)
            start = time.perf_counter()
            for _ in range(epochs):
                est.partial_fit(X, y)
    seconds = (time.perf_counter() - start) / epochs
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(seconds_per_epoch=seconds, peak_mb=peak_mb)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--sklearn-rows", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--run", nargs=3, metavar=("LIBRARY", "SOLVER", "ROWS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        library, solver, rows = args.run
        print(json.dumps(one_run(library, solver, int(rows), args.epochs)))
        return
    dense_gb = args.rows * D_FEATURES * 8 / 1e9
    print(f"{args.rows:,} x {D_FEATURES:,} CSR, {PER_ROW} values a row "
          f"({args.rows * PER_ROW * 12 / 1e6:.0f} MB; dense: {dense_gb:.0f} GB); "
          f"{D_FEATURES}-{HIDDEN}-1, batches of {BATCH}")
    print("| library | solver | rows run | s / epoch (100,000 rows) | peak RSS |")
    print("|---|---|---:|---:|---:|")
    for solver in ("sgd", "adam"):
        for library, rows in (("fastbp", args.rows), ("scikit-learn", args.sklearn_rows)):
            out = subprocess.run([sys.executable, __file__, "--run", library, solver,
                                  str(rows), "--epochs", str(args.epochs)],
                                 capture_output=True, text=True, env=dict(os.environ))
            if out.returncode != 0:
                print(f"| {library} | {solver} | failed: {out.stderr.strip()[-200:]} |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            scaled = r["seconds_per_epoch"] * args.rows / rows
            print(f"| {library} | {solver} | {rows:,} | {scaled:.2f} s | "
                  f"{r['peak_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
