#!/usr/bin/env python
"""fastbp.sklearn next to scikit-learn's MLPs, solver by solver, one thread each.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \\
        taskset -c 0 python asv_benchmarks/sklearn_solvers.py [--repeat 5]

lbfgs: the tutorial-sized sets -- the XOR data (21 x 2, 2-4-4-1 logistic), admissions
(all 400 rows, 6 features; (8,) and scikit-learn's default (100,) relu) and load_digits
(1797 x 64, (64,) relu) -- with tol=0 and max_iter=200, so that both run 200 iterations
(the table shows each side's iterations and evaluations of the loss: after ~20
iterations the two trajectories part by rounding, see tests/test_lbfgs.py, so the
counts can differ slightly; the per-evaluation ratio is the like-for-like one).
sgd and adam: scikit-learn's defaults (hidden_layer_sizes=(100,), batch_size
min(200, n), shuffle) on load_digits and a 20,000 x 50 make_classification set, the
time of one epoch (n_iter_no_change = max_iter, so every epoch runs).
calls: one ``partial_fit`` (adam, scikit-learn's defaults) and one ``predict`` of a batch
of 10 or 200 load_digits rows, a stream of batches: the time of a call, where input
checks and label encoding weigh as much as the training.

fastbp's fits run on its fastest kernels (the register tiles for the wide layers'
products), as in every benchmark here: in a new cache, the first fits of a wide layer
run on the slower recurrence until the tiles are worth compiling (README: "Kernels
generated for your architecture"), and the table would time that start instead.

Times are CPU seconds of this process (time.process_time), the median of ``--repeat``
fits after a warm-up fit, fastbp's and scikit-learn's fits taken in turns: on a machine
whose cores other work shares, wall time measures the neighbours as much as the code,
and even CPU time moves with them (caches, clock), so both sides see the same.
"""
import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn import neural_network as skn
from sklearn.datasets import load_digits, make_classification
from sklearn.exceptions import ConvergenceWarning

import fastbp
from fastbp import sklearn as fsk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmarks.common import steady_state_kernels  # noqa: E402

ADMISSIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "admissions.csv"


def _count_evaluations():
    """Make both libraries' L-BFGS runs record their number of loss evaluations (one
    dictionary write per fit)."""
    import scipy.optimize
    from fastbp import _lbfgs
    last = {}

    def counting(real):
        def run(*args, **kwargs):
            res = real(*args, **kwargs)
            last["nfev"] = res.nfev
            return res
        return run

    scipy.optimize.minimize = counting(scipy.optimize.minimize)  # scikit-learn's call
    _lbfgs.minimize = counting(_lbfgs.minimize)
    return last


def lbfgs_workloads(path):
    a = fastbp.datasets.admissions(path)
    Xa = np.vstack([a.X_train, a.X_test])
    ya = np.concatenate([a.y_train.ravel(), a.y_test.ravel()])
    Xx, yx = fastbp.datasets.xor_easy()
    Xd, yd = load_digits(return_X_y=True)
    common = dict(solver="lbfgs", max_iter=200, tol=0.0, random_state=0)
    return [
        ("XOR 21 x 2, (4, 4) logistic", Xx, yx.ravel(),
         dict(common, hidden_layer_sizes=(4, 4), activation="logistic")),
        ("admissions 400 x 6, (8,) relu", Xa, ya, dict(common, hidden_layer_sizes=(8,))),
        ("admissions 400 x 6, (100,) relu", Xa, ya, dict(common)),
        ("load_digits 1797 x 64, (64,) relu", Xd / 16.0, yd,
         dict(common, hidden_layer_sizes=(64,))),
    ]


def epoch_workloads():
    Xd, yd = load_digits(return_X_y=True)
    Xc, yc = make_classification(n_samples=20_000, n_features=50, n_informative=20,
                                 random_state=0)
    out = []
    for solver in ("sgd", "adam"):
        out.append((f"{solver}: load_digits 1797 x 64", Xd / 16.0, yd,
                    dict(solver=solver, max_iter=20, n_iter_no_change=20, random_state=0)))
        out.append((f"{solver}: make_classification 20000 x 50", Xc, yc,
                    dict(solver=solver, max_iter=5, n_iter_no_change=5, random_state=0)))
    return out


def call_times(cls, X, y, batch, calls):
    """Median seconds of a partial_fit and of a predict call on ``batch`` rows, over
    ``calls`` calls streaming through X."""
    classes = np.unique(y)
    est = cls(random_state=0).partial_fit(X[:batch], y[:batch], classes=classes)
    fit_t, predict_t = [], []
    for i in range(calls):
        s = (i * batch) % (X.shape[0] - batch)
        t0 = time.process_time()
        est.partial_fit(X[s:s + batch], y[s:s + batch])
        t1 = time.process_time()
        est.predict(X[s:s + batch])
        fit_t.append(t1 - t0)
        predict_t.append(time.process_time() - t1)
    return statistics.median(fit_t), statistics.median(predict_t)


def timed_pair(params, X, y, repeat, last=None):
    """Median CPU seconds of fastbp's and scikit-learn's fits, taken in turns so that
    both see the same conditions; the last fitted estimators; their evaluations."""
    with steady_state_kernels():
        return _timed_pair(params, X, y, repeat, last)


def _timed_pair(params, X, y, repeat, last):
    classes = (fsk.MLPClassifier, skn.MLPClassifier)
    for cls in classes:
        cls(**params).fit(X, y)  # warm-up: compilation / Numba's cache, BLAS start-up
    times = ([], [])
    fitted = [None, None]
    evaluations = [None, None]
    for _ in range(repeat):
        for i, cls in enumerate(classes):
            est = cls(**params)
            t0 = time.process_time()
            est.fit(X, y)
            times[i].append(time.process_time() - t0)
            fitted[i] = est
            if last is not None:
                evaluations[i] = last.get("nfev")
    return [statistics.median(t) for t in times], fitted, evaluations


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", default=str(ADMISSIONS))
    ap.add_argument("--only", choices=("lbfgs", "epochs", "calls"), default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    print(f"load average before: {os.getloadavg()}; CPUs allowed: "
          f"{sorted(os.sched_getaffinity(0))}")
    if args.only in (None, "lbfgs"):
        last = _count_evaluations()
        print("\n| lbfgs, 200 iterations, tol=0 | scikit-learn (s) | fastbp (s) | speed-up "
              "| iterations sk / fb | evaluations sk / fb | per evaluation |")
        print("|---|---:|---:|---:|---|---|---:|")
        for name, X, y, params in lbfgs_workloads(args.data):
            (t_fb, t_sk), (fb, sk), (e_fb, e_sk) = timed_pair(params, X, y, args.repeat,
                                                              last)
            print(f"| {name} | {t_sk:.4f} | {t_fb:.4f} | {t_sk / t_fb:.1f}x "
                  f"| {sk.n_iter_} / {fb.n_iter_} | {e_sk} / {e_fb} "
                  f"| {(t_sk / e_sk) / (t_fb / e_fb):.1f}x |", flush=True)
    if args.only in (None, "epochs"):
        print("\n| per epoch, scikit-learn's defaults | scikit-learn (ms) | fastbp (ms) "
              "| speed-up |")
        print("|---|---:|---:|---:|")
        for name, X, y, params in epoch_workloads():
            (t_fb, t_sk), (fb, sk), _ = timed_pair(params, X, y, args.repeat)
            assert fb.n_iter_ == sk.n_iter_ == params["max_iter"], (fb.n_iter_, sk.n_iter_)
            e_fb, e_sk = 1e3 * t_fb / fb.n_iter_, 1e3 * t_sk / sk.n_iter_
            print(f"| {name} | {e_sk:.2f} | {e_fb:.2f} | {e_sk / e_fb:.1f}x |", flush=True)
    if args.only in (None, "calls"):
        print("\n| one call, load_digits, adam | scikit-learn (us) | fastbp (us) "
              "| speed-up |")
        print("|---|---:|---:|---:|")
        Xd, yd = load_digits(return_X_y=True)
        Xd = Xd / 16.0
        calls = 40 * args.repeat
        for batch in (10, 200):
            with steady_state_kernels():
                call_times(fsk.MLPClassifier, Xd, yd, batch, 20)  # warm-up
                fb = call_times(fsk.MLPClassifier, Xd, yd, batch, calls)
            sk = call_times(skn.MLPClassifier, Xd, yd, batch, calls)
            for what, t_fb, t_sk in (("partial_fit", fb[0], sk[0]),
                                     ("predict", fb[1], sk[1])):
                print(f"| {what}, {batch} rows | {1e6 * t_sk:.0f} | {1e6 * t_fb:.0f} "
                      f"| {t_sk / t_fb:.2f}x |", flush=True)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
