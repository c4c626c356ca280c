"""``Ensemble.fit(..., device="cuda")``: the same training on an NVIDIA GPU (numba-cuda).

One GPU thread trains one model (kernels/cuda.py).  Validation, the loss history, the
divergence bookkeeping and the shuffling streams are exactly those of the CPU
``Ensemble.fit``; results agree with it to rounding (about 1e-13 relative in float64;
float32 computes in float32 on the GPU).  numba-cuda is an optional dependency:
``pip install "fastbp[cuda]"``.
"""
import importlib.util
import time

import numpy as np

from . import _validation as V
from . import kernels as K
from ._chunks import next_chunk, sigint_deferred, warn_interrupted
from .ensemble import account_chunk, report_divergence
from ._progress import make_bar
from .history import History

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


def fit_cuda(ensemble, X, y, epochs=1, lr=0.01, batch_size=None, shuffle=False, seed=None,
             record_every=1, progress=False, on_divergence="warn"):
    """``Ensemble.fit`` on the GPU: same arguments (but n_jobs), same checks, same History
    (``extra`` also has ``device="cuda"``), same bookkeeping of diverged models."""
    from . import ensemble as E
    from .kernels import cuda as KC

    ens = ensemble
    p = ens._proto
    # the size limit first: a clear error even on a machine without a GPU
    KC.check_supported(p.sizes, p.bias)
    xt, yt = ens._data(X, y)
    n = xt.shape[2]
    n_models = ens.n_models
    epochs = V.check_positive_int(epochs, "epochs")
    lrs = np.array(E._per_model(lr, n_models, "lr", V.check_lr), dtype=np.float64)
    batches = np.array(E._per_model(batch_size, n_models, "batch_size",
                                    lambda b: V.check_batch_size(b, n)), dtype=np.int64)
    check_shuffle = getattr(E, "_check_shuffle", bool)
    shuffles = np.array(E._per_model(shuffle, n_models, "shuffle", check_shuffle), dtype=bool)
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
                ens._rng_states[m] = K.seed_state(s)

    sizes, _, _, codes = ens._net()
    per_model = xt.shape[0] > 1
    kernel = KC.get_kernel(sizes, p.bias, codes, p._loss_code, p.dtype, per_model)

    # device arrays, model index fastest (coalesced)
    d_x = cuda.to_device(np.ascontiguousarray(xt.transpose(2, 1, 0)))
    d_y = cuda.to_device(np.ascontiguousarray(yt.transpose(2, 1, 0)))
    d_p = cuda.to_device(np.ascontiguousarray(ens.params.T))
    d_rng = cuda.to_device(np.ascontiguousarray(ens._rng_states.T))
    d_lr = cuda.to_device(lrs)
    d_bs = cuda.to_device(batches)
    d_sh = cuda.to_device(shuffles.astype(np.int64))
    d_res = cuda.to_device(np.zeros((2, n_models), dtype=np.int64))
    # models per launch: bounded by the shuffle scratch (int32 permutations)
    per_launch = n_models
    if shuffles.any():
        per_launch = max(1, min(n_models, _SCRATCH_BYTES // (4 * n)))
    d_perm = cuda.device_array((n, per_launch) if shuffles.any() else (1, 1), dtype=np.int32)
    # records per launch: bounded by the history block
    max_rec = max(1, _SCRATCH_BYTES // (8 * per_launch))
    n_rec = -(-epochs // record_every)
    d_hist = cuda.device_array(per_launch * min(max_rec, n_rec), dtype=np.float64)
    sm = _sm_count(cuda)

    history = np.full((n_models, n_rec), np.nan)
    done_per_model = np.zeros(n_models, dtype=np.int64)
    bad_epoch = np.full(n_models, -1, dtype=np.int64)
    active = np.ones(n_models, dtype=np.int64)

    def run(epoch0, chunk):
        """Epochs [epoch0, epoch0 + chunk) of every active model; returns results (M, 2)."""
        d_active = cuda.to_device(active)
        r_lo = -(-epoch0 // record_every)
        r_hi = -(-(epoch0 + chunk) // record_every)
        rec = r_hi - r_lo
        blocks = []
        for m0 in range(0, n_models, per_launch):
            cnt = min(per_launch, n_models - m0)
            # with no record in the launch, a (1, 1) dummy the kernel never writes
            h = d_hist[:cnt * rec].reshape((cnt, rec)) if rec else d_hist[:1].reshape((1, 1))
            KC.launch(kernel, cnt, (d_p, h, d_rng, d_lr, d_bs, d_sh, d_active, d_res, d_x,
                                    d_y, d_perm, n, chunk, epoch0, record_every, r_lo, rec,
                                    m0, cnt), sm_count=sm)
            if rec:
                blocks.append((m0, cnt, h.copy_to_host()))
        for m0, cnt, block in blocks:
            history[m0:m0 + cnt, r_lo:r_hi] = block
        return d_res.copy_to_host().T

    bar = make_bar(epochs, "ensemble (cuda)") if progress else None
    done, stopped = 0, None
    t_start = time.perf_counter()
    try:
        with sigint_deferred() as interrupted:
            run(0, 0)  # compiles the kernel on first use, outside the timed launches
            cuda.synchronize()
            t_start = time.perf_counter()  # History.seconds: training, not compiling
            work = 3.0 * n * p._layout.n_params * n_models
            chunk = max(1, min(epochs, int(_FIRST_LAUNCH_WORK // max(work, 1.0))))
            chunk = min(chunk, max_rec * record_every)
            while done < epochs and active.any():
                t0 = time.perf_counter()
                results = run(done, chunk)
                seconds = time.perf_counter() - t0
                done = account_chunk(results, active, done_per_model, bad_epoch, history,
                                     bar, done, chunk, record_every)
                if interrupted[0]:
                    stopped = "interrupted"
                    break
                chunk = next_chunk(chunk, seconds, epochs - done, target=CHUNK_SECONDS)
                chunk = min(chunk, max_rec * record_every)
        # the device holds the state after the last launch (all epochs, or up to Ctrl-C)
        ens.params[...] = d_p.copy_to_host().T
        ens._rng_states[...] = d_rng.copy_to_host().T
    finally:
        if bar is not None:
            bar.close()
    ens.diverged = bad_epoch >= 0
    # as MLP.fit: a diverged model's history ends with the epochs its parameters hold
    for m in np.flatnonzero(ens.diverged):
        history[m, -(-done_per_model[m] // record_every):] = np.nan
    n_kept = -(-min(done, epochs) // record_every) if stopped else n_rec
    hist = History(loss=history[:, :n_kept].copy(), epochs=int(done_per_model.max()),
                   record_every=record_every, seconds=time.perf_counter() - t_start,
                   stopped=stopped, extra={"epochs_per_model": done_per_model,
                                           "diverged_epoch": bad_epoch, "device": "cuda"})
    ens.history = hist
    if stopped == "interrupted":
        warn_interrupted(done, epochs, stacklevel=3)
    report_divergence(ens.diverged, on_divergence, hist, stacklevel=4)
    return hist
