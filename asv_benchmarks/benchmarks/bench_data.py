"""Moving data in and out of the kernels: ``predict`` and one epoch on wide inputs.

The benchmark workloads have at most 32 inputs, where the way a batch is gathered from X
hardly shows.  With 784 inputs (MNIST's shape, random data) it does: gathering a large
batch in the wrong order once made predict 1.6x slower, and no other benchmark noticed.
The ``fast`` profile uses 2,000 samples.
"""
import numpy as np

from . import common
from .common import Benchmark

N_SAMPLES = 2_000 if common.PROFILE == "fast" else 10_000
SIZES = [784, 128, 10]


def _data():
    rng = np.random.default_rng(0)
    return rng.random((N_SAMPLES, SIZES[0])), rng.random((N_SAMPLES, SIZES[-1]))


def _model():
    return common.import_fastbp().MLP(SIZES, activation="sigmoid", seed=0)


def _epoch(model, X, y, batch_size):
    model.fit(X, y, epochs=1, lr=0.01, batch_size=batch_size, shuffle=True, seed=1)


class WidePredict(Benchmark):
    def setup(self):
        self.X, _ = _data()
        self.model = _model()
        self.model.predict(self.X[:100])  # compile

    def time_predict(self):
        self.model.predict(self.X)


class WideEpoch(Benchmark):
    param_names = ["batch_size"]
    params = [[1, 64]]

    def setup(self, batch_size):
        self.X, self.y = _data()
        _epoch(_model(), self.X[:200], self.y[:200], batch_size)  # compile

    def time_epoch(self, batch_size):
        _epoch(_model(), self.X, self.y, batch_size)
