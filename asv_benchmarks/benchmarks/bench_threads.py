"""One model on several threads: W4b (32-H-H-10, mini-batches of 64, one epoch of 4,096
samples) at H = 256 and 1024, the scikit-learn wrapper's default batch of 200 at H = 256,
and per-sample SGD (W4a) at H = 1024, with n_jobs = 1, 2 and every core.  ``time_fit`` per thread count;
``track_gain`` one thread's best time over every core's, both measured in one process
(above 1: the threads help; on a one-core machine it reads about 1)."""
from . import common
from .common import Benchmark

KEYS = ["W4b_256", "W4b_1024", "W4b200_256", "W4a_1024"]


def _workload(key):
    if key.startswith("W4b200"):  # the scikit-learn wrapper's default batch_size
        return common.w4(int(key.split("_")[1]), 200)
    return common.WORKLOADS[key]()


def _runner(key, n_jobs):
    """A zero-argument fit of workload ``key`` on ``n_jobs`` threads, kernels compiled."""
    wl = _workload(key)
    common.fastbp_warm_up(wl, n_jobs=n_jobs)

    def run():
        common.fastbp_fit(common.fastbp_model(wl), wl, n_jobs=n_jobs)
    return run


class Threads(Benchmark):
    param_names = ["workload", "n_jobs"]
    params = [KEYS, [1, 2, -1]]

    def setup(self, key, n_jobs):
        common.import_fastbp()
        self.run = _runner(key, n_jobs)

    def time_fit(self, key, n_jobs):
        self.run()


class ThreadsGain(Benchmark):
    param_names = ["workload"]
    params = [KEYS]

    def setup(self, key):
        common.import_fastbp()
        self.runs = {n: _runner(key, n) for n in (1, -1)}

    def track_gain(self, key):
        """One thread's best time over every core's, both measured here, now."""
        return common.best_time(self.runs[1], 3) / common.best_time(self.runs[-1], 3)

    track_gain.unit = "x"
