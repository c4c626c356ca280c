"""``Ensemble.fit(..., device="cuda")``: the same training on an NVIDIA GPU (numba-cuda).

One GPU thread trains one model (kernels/cuda.py).  Validation, the loss history, the
divergence bookkeeping and the shuffling streams are exactly those of the CPU
``Ensemble.fit``; results agree with it to rounding (about 1e-13 relative in float64;
float32 computes in float32 on the GPU).  numba-cuda is an optional dependency:
``pip install "fastbp[cuda]"``.
"""
import importlib.util

import numpy as np

from . import _validation as V
from ._driver import drive, sigint_deferred
from .history import Records
from .kernels.rng import seed_state

INSTALL_HINT = 'pip install "fastbp[cuda]"  (installs numba-cuda)'

# Seconds one launch should take (Python only comes back between launches: progress bar,
# Ctrl-C).  Launch and copy overheads are ~0.1 ms, so longer launches gain nothing.
CHUNK_SECONDS = 0.5
# Device scratch per launch: history block and shuffle permutations, bytes at most.
_SCRATCH_BYTES = 256 * 2 ** 20
# Multiply-adds in the first, timing launch (a few ms on a data-centre GPU); the next
# launches are sized from its speed.
_FIRST_LAUNCH_WORK = 2e10


def _import_cuda():
    """numba.cuda, or None when it cannot be imported."""
    try:
        from numba import cuda
    except ImportError:
        return None
    return cuda


def _has_numba_cuda():
    """Whether the numba-cuda package (the maintained CUDA target) is installed."""
    try:
        return importlib.util.find_spec("numba_cuda") is not None
    except (ImportError, ValueError):
        return False


def cuda_available():
    """True when ``device="cuda"`` can run: numba.cuda imports and sees a GPU (or the
    numba CUDA simulator is switched on with NUMBA_ENABLE_CUDASIM=1)."""
    cuda = _import_cuda()
    if cuda is None:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


def require_cuda():
    """numba.cuda, ready to use; otherwise ImportError (what to install) or RuntimeError
    (no GPU)."""
    if not cuda_available():
        if _import_cuda() is None or not _has_numba_cuda():
            raise ImportError(f'device="cuda" needs the numba-cuda package, which is not '
                              f'installed: {INSTALL_HINT}; and an NVIDIA GPU with its '
                              f'driver. Or use device="cpu".')
        raise RuntimeError('device="cuda": no CUDA GPU found (numba.cuda.is_available() is '
                           'False: no NVIDIA GPU or driver visible to this process). '
                           'Use device="cpu", or run on a machine with an NVIDIA GPU.')
    return _import_cuda()


def _sm_count(cuda):
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:
        return None


def same_rows(xt, yt):
    """Ensemble._data's inputs and targets with one first axis: a shared set beside
    per-model ones copied for every model (the kernel reads both with one per-model flag)."""
    if xt.shape[0] != yt.shape[0]:
        d = max(xt.shape[0], yt.shape[0])
        xt = np.ascontiguousarray(np.broadcast_to(xt, (d,) + xt.shape[1:]))
        yt = np.ascontiguousarray(np.broadcast_to(yt, (d,) + yt.shape[1:]))
    return xt, yt


def fit_cuda(ensemble, X, y, epochs=1, lr=0.01, batch_size=None, shuffle=False, seed=None,
             record_every=1, progress=False, on_divergence="warn"):
    """``Ensemble.fit`` on the GPU: same arguments (but n_jobs), same checks, same History
    (``extra`` also has ``device="cuda"``), same bookkeeping of diverged models.  The
    state each model ends in is checked on the host as on the CPU (Ensemble._finish): a
    model whose loss is not finite there -- no record holds that loss, so the kernel's
    guard cannot see it -- is trained again alone by MLP.fit, on the CPU."""
    from . import ensemble as E
    from .kernels import cuda as KC

    ens = ensemble
    p = ens._proto
    # the size limit first: a clear error even on a machine without a GPU
    KC.check_supported(p.sizes, p.bias, p._loss_code)
    xt, yt = same_rows(*ens._data(X, y))
    n = xt.shape[1]
    n_models = ens.n_models
    epochs = V.check_positive_int(epochs, "epochs")
    lrs = np.array(E._per_model(lr, n_models, "lr", V.check_lr), dtype=np.float64)
    batches = np.array(E._per_model(batch_size, n_models, "batch_size",
                                    lambda b: V.check_batch_size(b, n)), dtype=np.int64)
    shuffles = np.array(E._per_model(shuffle, n_models, "shuffle", E._check_shuffle),
                        dtype=bool)
    record_every = V.check_positive_int(record_every, "record_every")
    if on_divergence not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_divergence must be 'raise', 'warn' or 'ignore', "
                         f"got {on_divergence!r}")
    seeds = None if seed is None else E._per_model(seed, n_models, "seed", V.check_seed)
    bad_rows = np.flatnonzero(~np.isfinite(ens.params).all(axis=1))
    if bad_rows.size:
        raise ValueError(f"the parameters of models {bad_rows[:10].tolist()} contain NaN "
                         f"or infinity (written through params?); set finite values "
                         f"before training")
    cuda = require_cuda()
    if seeds is not None:
        for m, s in enumerate(seeds):
            if s is not None:
                ens._rng_states[m] = seed_state(s)
    start = (ens.params.copy(), ens._rng_states.copy())  # for Ensemble._rerun_alone
    job = CudaFit(cuda, KC, ens, xt, yt, epochs, lrs, batches, shuffles, record_every)
    try:
        with sigint_deferred() as interrupted:
            outcome = drive(job, interrupted, progress, desc="ensemble (cuda)",
                            chunk_seconds=CHUNK_SECONDS)
    finally:
        job.copy_back()  # the device holds the state after the last launch
    # as MLP.fit: a diverged model's history ends with the epochs its parameters hold
    return ens._finish(job, outcome, start, xt, yt, lrs, batches, shuffles, on_divergence,
                       device="cuda")


class CudaFit:
    """Ensemble.fit on the GPU as a job of the chunk driver (fastbp/_driver.py): a chunk
    is one launch per block of models (kernels/cuda.py)."""

    def __init__(self, cuda, KC, ens, xt, yt, epochs, lrs, batches, shuffles, record_every):
        p = ens._proto
        self.cuda, self.KC, self.ens = cuda, KC, ens
        self.epochs = epochs
        self.done = 0
        self.record_every = record_every
        n_models = ens.n_models
        self.n_models = n_models
        n = xt.shape[1]
        self.n = n
        self.work = 3.0 * n * p._layout.n_params * n_models
        self.active = np.ones(n_models, dtype=np.int64)
        self.done_per_model = np.zeros(n_models, dtype=np.int64)
        self.bad_epoch = np.full(n_models, -1, dtype=np.int64)
        self.records = Records(rows=n_models)
        self.kernel_name = "cuda, one thread per model"
        per_model = xt.shape[0] > 1
        self.kernel = KC.get_kernel(p.sizes, p.bias, p._act_codes, p._loss_code, p.dtype,
                                    per_model)
        # device arrays, model index fastest (coalesced)
        self.d_x = cuda.to_device(np.ascontiguousarray(xt.transpose(1, 2, 0)))
        self.d_y = cuda.to_device(np.ascontiguousarray(yt.transpose(1, 2, 0)))
        self.d_p = cuda.to_device(np.ascontiguousarray(ens.params.T))
        self.d_rng = cuda.to_device(np.ascontiguousarray(ens._rng_states.T))
        self.d_lr = cuda.to_device(lrs)
        self.d_bs = cuda.to_device(batches)
        self.d_sh = cuda.to_device(shuffles.astype(np.int64))
        self.d_res = cuda.to_device(np.zeros((2, n_models), dtype=np.int64))
        # models per launch: bounded by the shuffle scratch (int32 permutations)
        self.per_launch = n_models
        if shuffles.any():
            self.per_launch = max(1, min(n_models, _SCRATCH_BYTES // (4 * n)))
        self.d_perm = cuda.device_array((n, self.per_launch) if shuffles.any() else (1, 1),
                                        dtype=np.int32)
        # records per launch: bounded by the history block
        self.max_rec = max(1, _SCRATCH_BYTES // (8 * self.per_launch))
        self.d_hist = cuda.device_array(self.per_launch * min(self.max_rec,
                                                              -(-epochs // record_every)),
                                        dtype=np.float64)
        self.sm = _sm_count(cuda)

    def pending(self):
        return []  # numba-cuda compiles at the first launch: prepare times it

    def prepare(self):
        self._launch(0, 0)  # compiles the kernel on first use, outside the timed launches
        self.cuda.synchronize()

    def work_per_epoch(self):
        return self.work * 1e4 / _FIRST_LAUNCH_WORK  # first launch: ~_FIRST_LAUNCH_WORK

    def remaining(self):
        return self.epochs - self.done if self.active.any() else 0

    def cap(self, chunk):
        return min(chunk, self.max_rec * self.record_every)

    def run_chunk(self, chunk):
        start = self.done
        r0 = -(-start // self.record_every)
        history, results = self._launch(start, chunk)
        ran = self.active == 1
        self.done_per_model += np.where(ran, results[:, 0], 0)
        bad = ran & (results[:, 1] >= 0)
        self.bad_epoch[bad] = results[bad, 1]
        self.active[bad] = 0
        self.records.extend(r0, history)
        self.done += chunk
        return chunk, None

    def after_chunk(self):
        return None

    def callbacks(self):
        return None

    def last_loss(self):
        last = self.records.last()
        if last is None or not np.isfinite(last).any():
            return None
        return float(np.nanmean(last))

    def copy_back(self):
        self.ens.params[...] = self.d_p.copy_to_host().T
        self.ens._rng_states[...] = self.d_rng.copy_to_host().T

    def _launch(self, epoch0, chunk):
        """Epochs [epoch0, epoch0 + chunk) of every active model; (this chunk's records
        (n_models, k), results (n_models, 2))."""
        cuda, KC = self.cuda, self.KC
        d_active = cuda.to_device(self.active)
        re = self.record_every
        r_lo = -(-epoch0 // re)
        rec = -(-(epoch0 + chunk) // re) - r_lo
        history = np.full((self.n_models, rec), np.nan)
        blocks = []
        for m0 in range(0, self.n_models, self.per_launch):
            cnt = min(self.per_launch, self.n_models - m0)
            # with no record in the launch, a (1, 1) dummy the kernel never writes
            h = (self.d_hist[:cnt * rec].reshape((cnt, rec)) if rec
                 else self.d_hist[:1].reshape((1, 1)))
            KC.launch(self.kernel, cnt, (self.d_p, h, self.d_rng, self.d_lr, self.d_bs,
                                         self.d_sh, d_active, self.d_res, self.d_x, self.d_y,
                                         self.d_perm, self.n, chunk, epoch0, re, r_lo, rec,
                                         m0, cnt), sm_count=self.sm)
            if rec:
                blocks.append((m0, cnt, h.copy_to_host()))
        for m0, cnt, block in blocks:
            history[m0:m0 + cnt] = block
        return history, self.d_res.copy_to_host().T
