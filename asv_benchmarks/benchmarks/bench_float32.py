"""float32 beside float64: W1 (xor 2-4-4-1, full batch), W4b (32-H-H-10, mini-batches
of 64, one epoch) at every width and W5 (256 xor nets on all cores), each trained from
the same data and initial parameters in both dtypes (Workload.in_dtype casts them once,
before the timing).  ``time_fit`` per dtype; ``track_float32_over_float64`` the ratio of
the two times measured in one process, which machine noise does not shift (below 1:
float32 faster)."""
from . import common
from .common import Benchmark

KEYS = ["W1", *(f"W4b_{H}" for H in common.W4_WIDTHS), "W5"]


def _runner(key, dtype):
    """A zero-argument fit of workload ``key`` in ``dtype``, its kernels compiled."""
    wl = common.WORKLOADS[key]().in_dtype(dtype)
    if key == "W5":
        run = common.import_peers().fastbp_w5(wl)
        run.warmup()
        return run
    common.fastbp_warm_up(wl)

    def run():
        common.fastbp_fit(common.fastbp_model(wl), wl)
    return run


class Float32(Benchmark):
    param_names = ["workload", "dtype"]
    params = [KEYS, ["float64", "float32"]]

    def setup(self, key, dtype):
        common.import_fastbp()
        self.run = _runner(key, dtype)

    def time_fit(self, key, dtype):
        self.run()


class Float32Ratio(Benchmark):
    param_names = ["workload"]
    params = [KEYS]

    def setup(self, key):
        common.import_fastbp()
        self.runs = {dtype: _runner(key, dtype) for dtype in ("float64", "float32")}

    def track_float32_over_float64(self, key):
        """float32's best time over float64's, both measured here, now."""
        return (common.best_time(self.runs["float32"], 3)
                / common.best_time(self.runs["float64"], 3))

    track_float32_over_float64.unit = "ratio"
