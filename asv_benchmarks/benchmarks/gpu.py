"""The GPU: ``Ensemble.fit(device="cuda")`` on 1,024 and 65,536 XOR networks
(2-4-4-1 sigmoid, the 21 points of tutorial 000, full batch, sse, lr 0.1), float64 and
float32, 2,000 epochs (``fast`` profile: 200).

- ``CudaEnsemble.time_fit``: the whole fit (transfers, launches, history), warm;
- ``CudaEnsemble.track_model_epochs_per_second``: models x epochs / seconds of one fit.

Skipped (NotImplementedError in setup) without numba-cuda or without a GPU, and under
numba's CUDA simulator.  The side-by-side comparison with JAX, PyTorch and the CPU
Ensemble is ``asv_benchmarks/gpu_compare.py``.
"""
import os
import time

from . import common
from .common import Benchmark


def _cuda_or_skip():
    fastbp = common.import_fastbp()
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        raise NotImplementedError("numba's CUDA simulator is on: no GPU timing")
    try:
        from fastbp._cuda import cuda_available
    except ImportError as exc:
        raise NotImplementedError(f"fastbp has no CUDA support: {exc!r}")
    if not cuda_available():
        raise NotImplementedError("no CUDA GPU (or numba-cuda not installed)")
    return fastbp


class CudaEnsemble(Benchmark):
    param_names = ["n_models", "dtype"]
    params = [[1024, 65536], ["float64", "float32"]]

    def setup(self, n_models, dtype):
        fastbp = _cuda_or_skip()
        self.X, self.y = common.xor_easy()
        self.ens = fastbp.Ensemble([2, 4, 4, 1], n_models, activation="sigmoid", loss="sse",
                                   dtype=dtype, seed=0)
        self.p0 = self.ens.params.copy()
        self.epochs = common._fast(2_000, 200)
        self._fit(2)  # compiles the kernel

    def _fit(self, epochs):
        self.ens.params[...] = self.p0
        self.ens.fit(self.X, self.y, epochs=epochs, lr=0.1, record_every=epochs,
                     device="cuda")

    def time_fit(self, n_models, dtype):
        self._fit(self.epochs)

    def track_model_epochs_per_second(self, n_models, dtype):
        t0 = time.perf_counter()
        self._fit(self.epochs)
        return n_models * self.epochs / (time.perf_counter() - t0)

    track_model_epochs_per_second.unit = "model-epochs/s"
