"""The per-epoch cost of the training controls next to plain SGD.

W1 (XOR, full batch) and W2a/W2b (admissions, full batch / per-sample) with plain SGD,
momentum SGD, Adam, and Adam + L2 + a cosine schedule; all inside the compiled loop.
Per-sample SGD with anything but the plain rule leaves the fused per-sample path for the
general one, which the W2b rows show.
"""
from . import common
from .common import Benchmark

OPTIONS = {
    "sgd": {},
    "momentum": {"momentum": 0.9, "nesterov": True},
    "adam": {"optimizer": "adam"},
    "adam+l2+cosine": {"optimizer": "adam", "l2": 1e-4, "schedule": "cosine"},
}


class Optimizers(Benchmark):
    param_names = ["workload", "optimizer"]
    params = [["W1", "W2a", "W2b"], list(OPTIONS)]

    def setup(self, key, opt):
        common.import_fastbp()
        self.wl = common.WORKLOADS[key]()
        common.fastbp_warm_up(self.wl, on_divergence="warn", **OPTIONS[opt])  # compile

    def time_fit(self, key, opt):
        common.fastbp_fit(common.fastbp_model(self.wl), self.wl, on_divergence="warn", **OPTIONS[opt])

    def track_us_per_epoch(self, key, opt):
        """Microseconds per epoch (best of 3), for reading next to plain SGD's."""
        seconds = common.best_time(
            lambda: common.fastbp_fit(common.fastbp_model(self.wl), self.wl,
                                      on_divergence="warn", **OPTIONS[opt]))
        return seconds / self.wl.epochs * 1e6

    track_us_per_epoch.unit = "us"
