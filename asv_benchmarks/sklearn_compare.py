#!/usr/bin/env python
"""fit time of fastbp.sklearn next to scikit-learn's MLP, same estimator settings.

    python asv_benchmarks/sklearn_compare.py [--repeat 3] [--data ../shared/data/admissions.csv]

Workloads:
  (a) admissions data (360 x 6, prepared by fastbp.datasets.admissions), 1000 epochs;
  (b) a 64-64 network on 4,096 synthetic samples (20 features), 50 epochs.
Both estimators get identical parameters; ``n_iter_no_change`` = max_iter so that both
run every epoch.  Each cell is the median of ``--repeat`` fits, after one warm-up fit
(compilation / Numba cache loading excluded).  The load average is printed with the
table: the numbers are only comparable within one run.  On a shared machine, BLAS
threads waiting on busy cores can slow either side by large factors; run with
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 for a steadier single-core comparison.
"""
import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn import neural_network as skn
from sklearn.exceptions import ConvergenceWarning

import fastbp
from fastbp import sklearn as fsk

ADMISSIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "admissions.csv"


def workloads(path):
    X, y, _, _, _ = fastbp.datasets.admissions(path)
    rng = np.random.default_rng(0)
    Xs = rng.normal(size=(4096, 20))
    ys = np.tanh(Xs @ rng.normal(size=20) / 4) + 0.1 * rng.normal(size=4096)
    common = dict(random_state=0, tol=1e-4)
    out = []
    for solver in ("adam", "sgd"):
        out.append((f"(a) admissions, classifier (100,) relu, {solver}, 1000 epochs",
                    "MLPClassifier", X, y,
                    dict(common, solver=solver, max_iter=1000, n_iter_no_change=1000)))
    for solver in ("adam", "sgd"):
        out.append((f"(b) 4096 x 20 synthetic, regressor (64, 64) relu, {solver}, 50 epochs",
                    "MLPRegressor", Xs, ys,
                    dict(common, hidden_layer_sizes=(64, 64), solver=solver, max_iter=50,
                         n_iter_no_change=50)))
    return out


def timed(cls, params, X, y, repeat):
    times = []
    for _ in range(repeat):
        est = cls(**params)
        t0 = time.perf_counter()
        est.fit(X, y)
        times.append(time.perf_counter() - t0)
    assert est.n_iter_ == params["max_iter"], (cls, est.n_iter_)
    return statistics.median(times), est


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", default=str(ADMISSIONS))
    args = ap.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    print(f"load average before: {os.getloadavg()}")
    try:
        from threadpoolctl import threadpool_info
        print("thread pools:", [(p["internal_api"], p["num_threads"]) for p in threadpool_info()])
    except ImportError:
        pass
    rows = []
    for name, cls_name, X, y, params in workloads(args.data):
        fb_cls, sk_cls = getattr(fsk, cls_name), getattr(skn, cls_name)
        fb_cls(**dict(params, max_iter=2, n_iter_no_change=2)).fit(X, y)  # warm-up
        t_fb, fb = timed(fb_cls, params, X, y, args.repeat)
        t_sk, sk = timed(sk_cls, params, X, y, args.repeat)
        rows.append((name, t_sk, t_fb, sk.loss_, fb.loss_))
        print(f"{name}: scikit-learn {t_sk:.3f} s, fastbp {t_fb:.3f} s, "
              f"x{t_sk / t_fb:.1f}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print()
    print("| workload | scikit-learn fit (s) | fastbp.sklearn fit (s) | speed-up "
          "| final loss_ sklearn / fastbp |")
    print("|---|---:|---:|---:|---|")
    for name, t_sk, t_fb, l_sk, l_fb in rows:
        print(f"| {name} | {t_sk:.3f} | {t_fb:.3f} | {t_sk / t_fb:.1f}x "
              f"| {l_sk:.4g} / {l_fb:.4g} |")


if __name__ == "__main__":
    main()
