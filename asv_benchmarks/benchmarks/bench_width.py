"""W4: one epoch of a 32-H-H-10 sigmoid net (mse) on 4,096 synthetic samples,
per-sample SGD (batch 1) and mini-batches of 64, H in {16, 64, 256, 1024}.
The ``fast`` profile uses 1,024 samples."""
import json
import os
import subprocess
import sys

from . import common
from .common import Benchmark

N_SAMPLES = 1024 if common.PROFILE == "fast" else 4096
NUMPY_FACTOR = {1: 16, 64: 4}   # the NumPy reference runs on 1/16 (1/4) of the samples


class Width(Benchmark):
    param_names = ["H", "batch_size"]
    params = [list(common.W4_WIDTHS), [1, 64]]

    def setup(self, H, batch_size):
        common.import_fastbp()
        self.wl = common.w4(H, batch_size, N_SAMPLES)
        common.fastbp_warm_up(self.wl)

    def _fit(self):
        m = common.fastbp_model(self.wl)
        common.fastbp_fit(m, self.wl)
        return m

    def time_epoch(self, H, batch_size):
        self._fit()

    def peakmem_epoch(self, H, batch_size):
        self._fit()

    def track_speedup_vs_numpy(self, H, batch_size):
        key = f"W4{'a' if batch_size == 1 else 'b'}_{H}"
        return common.speedup_vs("numpy", self.wl, key, self._fit, NUMPY_FACTOR[batch_size],
                                 repeat=2)

    track_speedup_vs_numpy.unit = "x"



class GemmUnits(Benchmark):
    """One W4b epoch (batch 64) with each matrix-product unit: the recurrence, which a fit
    runs until the tiles are worth compiling (every first fit on an empty cache), and
    the register tiles (kernels/gemm.py).  Same bits either way; this is the price of
    waiting for the tiles."""
    param_names = ["H", "unit"]
    params = [[64, 256], ["recurrence", "tiles"]]

    def setup(self, H, unit):
        common.import_fastbp()
        from fastbp import _dispatch
        self._dispatch, self._saved = _dispatch, _dispatch.POLICY
        # "general" never picks the tiles, "fastest" always does (fastbp/_dispatch.py)
        _dispatch.POLICY = "general" if unit == "recurrence" else "fastest"
        self.wl = common.w4(H, 64, N_SAMPLES)
        common.fastbp_fit(common.fastbp_model(self.wl.tiny()), self.wl.tiny())

    def teardown(self, H, unit):
        self._dispatch.POLICY = self._saved

    def time_epoch(self, H, unit):
        common.fastbp_fit(common.fastbp_model(self.wl), self.wl)

# Measured in a child process: (X, y and the parameters, plus the growth of resident
# memory from just before fit to its peak during fit) over what the job needs at least:
# X, y, the parameters and one batch of activations of every layer (float64).  RSS is
# page-granular, so small sizes read low; glibc's malloc_trim first returns the pages of
# freed memory (the warm-up's and the workload's copy of the weights), which fit would
# otherwise reuse without RSS growing.  The child turns transparent huge pages off for
# itself (prctl PR_SET_THP_DISABLE) before numpy loads: numpy asks for huge pages on
# arrays of 4 MB and more, a freed one leaves its heap range so marked, and a 1 MB
# buffer later placed across it counted 2 MB more whenever the kernel backed it with a
# huge page -- at H=1024 the ratio read 1.17 to 1.30 from run to run for the same
# allocations.  ``thp`` in the output says whether that worked (Linux only).
_MEM_CHILD = r"""
import ctypes
try:
    thp = ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0) == 0  # PR_SET_THP_DISABLE
except (OSError, AttributeError):
    thp = False
import gc, json, os, sys, numpy as np
sys.path.insert(0, {root!r})
from benchmarks import common
H, B, N = {H}, {B}, {N}

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)

common.fastbp_warm_up(common.w4(H, B, 2 * B))   # compile outside the measurement
wl = common.w4(H, B, N)
m = common.fastbp_model(wl)
wl.weights = wl.biases = None                    # drop the workload's copy of the start point
gc.collect()
try:  # hand the pages of freed memory back: else fit may reuse them unseen (RSS flat)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
except (OSError, AttributeError):  # not glibc
    pass
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:    # reset the peak (VmHWM) to now
    f.write("5")
common.fastbp_fit(m, wl)
peak = status("VmHWM:")
held = 8 * (wl.X.size + wl.y.size + m.params.size)
need = held + 8 * B * sum(wl.sizes)
print(json.dumps({{"used": held + max(0, peak - before), "need": need, "thp_off": thp}}))
"""


class WidthMemory(Benchmark):
    """Peak memory of one W4 epoch above the process baseline, over data + params +
    one batch of activations (target: at most 1.2 for batch 64, H=1024)."""
    param_names = ["H", "batch_size"]
    params = [[64, 1024], [1, 64]]
    repeat = 1

    def setup(self, H, batch_size):
        common.import_fastbp()
        if not os.path.exists("/proc/self/clear_refs"):
            raise NotImplementedError("needs Linux /proc/self/clear_refs")

    def track_peakmem_ratio(self, H, batch_size):
        code = _MEM_CHILD.format(root=str(common.REPO_ROOT / "asv_benchmarks"), H=H,
                                 B=batch_size, N=N_SAMPLES)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, timeout=500)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        return r["used"] / r["need"]

    track_peakmem_ratio.unit = "ratio"
