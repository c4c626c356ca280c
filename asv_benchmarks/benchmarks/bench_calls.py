"""What one call costs beyond its compiled loop: a fit of one epoch, a predict and a
model's construction, on the XOR net's 4 points, where the call's Python is nearly all
of the time (asv_benchmarks/call_overhead.py prints the same as medians).

``time_fit_one_epoch`` runs full-batch on the kernel generated for the architecture;
``time_fit_one_epoch_minibatch`` in batches of 3 on the general mini-batch entry, which
calls the batch passes (kernels/passes.py) and so asks for them at every fit.
"""
import numpy as np

from . import common
from .common import Benchmark

XOR4 = (np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
        np.array([0.0, 1.0, 1.0, 0.0]))


class CallOverhead(Benchmark):
    # calls of tens of microseconds, each timed alone (asv re-runs setup between the
    # calls of a sample anyway): more samples than the workloads take
    repeat = (10, 50, 10.0)

    def setup(self):
        fastbp = common.import_fastbp()
        self.X, self.y = XOR4
        self.model = fastbp.MLP([2, 4, 4, 1], activation="sigmoid", seed=0)
        self.weights = [np.array(w) for w in self.model.weights]
        self.biases = [np.array(b) for b in self.model.biases]
        self.from_weights = fastbp.MLP.from_weights
        with common.steady_state_kernels():  # compiles (or loads) what the timed calls run
            self.model.fit(self.X, self.y, epochs=1, lr=0.1)
            self.model.fit(self.X, self.y, epochs=1, lr=0.1, batch_size=3)
        self.model.predict(self.X)

    def time_fit_one_epoch(self):
        self.model.fit(self.X, self.y, epochs=1, lr=0.1)

    def time_fit_one_epoch_minibatch(self):
        self.model.fit(self.X, self.y, epochs=1, lr=0.1, batch_size=3)

    def time_predict(self):
        self.model.predict(self.X)

    def time_from_weights(self):
        self.from_weights(self.weights, self.biases, activation="sigmoid")
