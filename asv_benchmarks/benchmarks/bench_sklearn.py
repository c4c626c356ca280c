"""The scikit-learn wrapper (fastbp.sklearn): what its user waits for.

A ``partial_fit`` and a ``predict`` of a small batch, as a stream of batches makes them
(input checks and label encoding weigh as much as the training there), an adam epoch
at scikit-learn's defaults on load_digits, and an lbfgs fit of the XOR net (the loss and
gradient generated for its architecture).  asv_benchmarks/sklearn_solvers.py times the
same next to scikit-learn's own MLPs.
"""
import warnings

import numpy as np

from . import common
from .common import Benchmark


def _wrapper_and_digits():
    common.import_fastbp()
    try:
        from sklearn.datasets import load_digits
        from fastbp.sklearn import MLPClassifier
    except ImportError as exc:  # scikit-learn not installed: asv skips
        raise NotImplementedError(f"scikit-learn unavailable: {exc!r}")
    X, y = load_digits(return_X_y=True)
    return MLPClassifier, X / 16.0, y


class SklearnWrapper(Benchmark):
    def setup(self):
        MLPClassifier, self.X, self.y = _wrapper_and_digits()
        warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter=1 and 200 reached
        Xx, yx = common.import_fastbp().datasets.xor_easy()
        self.xor = Xx, yx.ravel()
        self.epoch = lambda: MLPClassifier(max_iter=1, random_state=0).fit(self.X, self.y)
        self.lbfgs = lambda: MLPClassifier(
            solver="lbfgs", hidden_layer_sizes=(4, 4), activation="logistic", max_iter=200,
            tol=0.0, random_state=0).fit(*self.xor)
        with common.steady_state_kernels():  # compiles (or loads) what the timed calls run
            self.stream = MLPClassifier(random_state=0).partial_fit(
                self.X[:10], self.y[:10], classes=np.unique(self.y))
            self.stream.predict(self.X[:10])
            self.epoch()
            self.lbfgs()

    def time_partial_fit_10_rows(self):
        self.stream.partial_fit(self.X[10:20], self.y[10:20])

    def time_predict_10_rows(self):
        self.stream.predict(self.X[:10])

    def time_adam_epoch_digits(self):
        self.epoch()

    def time_lbfgs_xor_200_iterations(self):
        self.lbfgs()
