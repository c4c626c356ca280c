"""W5 as compare.py runs it: 256 independent W1 (xor 2-4-4-1) networks x 10,000 epochs
on all cores -- fastbp.Ensemble, or, at commits before it existed, a Python
loop over MLP.fit (so the history covers both).  The ``fast`` profile: 32 models x
2,000 epochs.

Thread scaling, the MLP.fit loop, JAX vmap and fastbp.sweep are in ``ensemble.py``."""
from . import common
from .common import Benchmark


class ManyModels(Benchmark):
    def setup(self):
        common.import_fastbp()
        peers = common.import_peers()
        self.wl = common.w5()
        self.run = peers.fastbp_w5(self.wl)
        self.run.warmup()

    def time_fit(self):
        self.run()

    def track_speedup_vs_numpy_batched(self):
        """NumPy with the models stacked (np.matmul over (M, a, b) weights), run on
        1/20 of the epochs and extrapolated, over fastbp; same process."""
        return common.speedup_vs("numpy", self.wl, "W5", self.run, 20, repeat=2)

    track_speedup_vs_numpy_batched.unit = "x"
