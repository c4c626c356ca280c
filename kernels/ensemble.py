"""Many independent models at once: ``prange`` over the rows of a 2-D parameter array.

Each model is trained by exactly the single-model loop (train.train_epochs) on its own
row, buffers and generator state, so its parameters are bit-identical to training it
alone with ``MLP.fit``, whatever the number of threads.  Models run whole (all epochs of
a chunk) on one thread: no synchronisation between them, nothing shared but read-only data.
"""
import numpy as np
from numba import njit, prange

from .config import JIT
from .train import allocate_workspace, predict_into, train_epochs

_PAR = dict(JIT, parallel=True)


@njit(**_PAR)
def train_many(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt,
               epochs, lrs, batch_sizes, shuffle, rng_states, active,
               epoch0, record_every, history, guard, keep_z, results, product_min_work):
    """Train every row m of ``params`` (n_models, n_params) with active[m] != 0.

    xt: (D, n_in, n), yt: (D, n_out, n) feature-major data; D is 1 (shared by all models)
    or n_models (model m uses xt[m]).  lrs, batch_sizes: (n_models,) per-model values.
    rng_states: (n_models, 2) shuffling streams.  history: (n_models, n_records).
    results[m] <- (epochs_done, bad_epoch) as returned by train_epochs.
    """
    n_models = params.shape[0]
    n_params = params.shape[1]
    for m in prange(n_models):
        if active[m] == 0:
            results[m, 0] = 0
            results[m, 1] = -1
            continue
        d = np.int64(m) if xt.shape[0] > 1 else np.int64(0)
        n = xt.shape[2]
        a_off, acts, deltas, grad, z_out, y_batch, bits, scale, perm = allocate_workspace(
            sizes, n_params, batch_sizes[m], n, params[m, :0], keep_z)
        backup = params[m].copy() if guard else params[m, :0].copy()
        done, bad = train_epochs(params[m], sizes, w_off, b_off, acts_codes, loss_code,
                                 xt[d], yt[d], epochs, lrs[m], batch_sizes[m], shuffle,
                                 rng_states[m], epoch0, record_every, history[m], backup,
                                 a_off, acts, deltas, grad, z_out, y_batch, bits, scale,
                                 perm, product_min_work)
        results[m, 0] = done
        results[m, 1] = bad


@njit(**_PAR)
def predict_many(params, sizes, w_off, b_off, acts_codes, xt, out, cap, product_min_work):
    """out (n_models, n_out, n) <- each model's outputs; xt (D, n_in, n) as in train_many."""
    n_models = params.shape[0]
    for m in prange(n_models):
        d = np.int64(m) if xt.shape[0] > 1 else np.int64(0)
        a_off, acts, _, _, _, _, bits, scale, _ = allocate_workspace(
            sizes, params.shape[1], cap, 0, params[m, :0], False)
        predict_into(params[m], sizes, w_off, b_off, acts_codes, xt[d], out[m], a_off, acts,
                     bits, scale, product_min_work)

