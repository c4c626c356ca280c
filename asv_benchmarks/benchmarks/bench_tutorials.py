"""W1-W3: the tutorials' networks, trained by fastbp from the tutorials' initial weights.

W1 xor 2-4-4-1 (full batch, sse, every epoch's loss recorded), W2a admissions 6-2-1
(full batch, half_mse), W2b the same with per-sample SGD, W3 regression 1-10-1
(ReLU/identity, mse).  The ``fast`` profile runs 10x fewer epochs for W1/W3.
"""
from . import common
from .common import Benchmark

# the NumPy reference runs on 1/factor of the epochs, extrapolated linearly
NUMPY_FACTOR = {"W1": 50, "W2a": 20, "W2b": 20, "W3": 50}


class Tutorials(Benchmark):
    param_names = ["workload"]
    params = [["W1", "W2a", "W2b", "W3"]]

    def setup(self, key):
        common.import_fastbp()
        self.wl = common.WORKLOADS[key]()
        common.fastbp_warm_up(self.wl)  # compile / load the cache

    def _fit(self):
        m = common.fastbp_model(self.wl)
        common.fastbp_fit(m, self.wl)
        return m

    def time_fit(self, key):
        self._fit()

    def track_speedup_vs_numpy(self, key):
        """(tutorial-style NumPy time) / (fastbp time), same process, same workload."""
        return common.speedup_vs("numpy", self.wl, key, self._fit, NUMPY_FACTOR[key])

    track_speedup_vs_numpy.unit = "x"

    def track_final_loss(self, key):
        """Training result, so a speed change that changes the numbers shows up."""
        m = self._fit()
        return float(m.loss(self.wl.X, self.wl.y))

    track_final_loss.unit = "loss"
