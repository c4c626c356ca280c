"""Fused training loops: every epoch, batch and update of a run in one compiled call.

One function serves the three modes, which differ only in the batch size:
full-batch gradient descent (batch_size >= n, no shuffle: the inputs are copied into
the workspace once), mini-batch SGD, and per-sample SGD (batch_size 1, which has a path
of its own in sgd.py).  Nothing is
allocated inside the epoch loop: ``allocate_workspace`` makes every buffer once.
"""
import numpy as np
from numba import njit

from .config import JIT
from .dense import backward, forward
from .losses import batch_loss, output_delta
from .rng import permutation_into
from .sgd import sgd_epoch


@njit(**JIT)
def activation_offsets(sizes, cap):
    """Offsets of each layer's block (sizes[l] rows of up to cap samples) in a flat buffer."""
    n = sizes.shape[0]
    a_off = np.zeros(n + 1, dtype=np.int64)
    for l in range(n):
        a_off[l + 1] = a_off[l] + sizes[l] * cap
    return a_off


@njit(**JIT)
def allocate_workspace(sizes, n_params, cap, n_samples, dtype_like, keep_z):
    """Every buffer a training run needs, for batches of up to ``cap`` samples.

    Returns (a_off, acts, deltas, grad, z_out, y_batch, bits, scale, perm); z_out (the
    output pre-activations, for bce) is empty unless keep_z; scale is bits' float64 view.
    """
    a_off = activation_offsets(sizes, cap)
    total = a_off[-1]
    k = sizes[-1]
    acts = np.zeros(total, dtype=dtype_like.dtype)
    deltas = np.zeros(total, dtype=dtype_like.dtype)
    grad = np.zeros(n_params, dtype=dtype_like.dtype)
    z_out = np.zeros(k * cap if keep_z else 0, dtype=dtype_like.dtype)
    y_batch = np.zeros(k * cap, dtype=dtype_like.dtype)
    bits = np.zeros(sizes.max() * cap, dtype=np.int64)
    scale = bits.view(np.float64)
    perm = np.arange(n_samples)
    return a_off, acts, deltas, grad, z_out, y_batch, bits, scale, perm


@njit(**JIT)
def all_finite(x):
    for i in range(x.shape[0]):
        v = x[i]
        if not (v - v == 0):  # False for nan and +-inf
            return False
    return True


@njit(**JIT)
def _load_batch(xt, yt, start, nb, perm, shuffle, acts, a0, y_batch):
    n0 = xt.shape[0]
    k = yt.shape[0]
    for i in range(n0):
        row = a0 + i * nb
        if shuffle:
            for s in range(nb):
                acts[row + s] = xt[i, perm[start + s]]
        else:
            for s in range(nb):
                acts[row + s] = xt[i, start + s]
    for i in range(k):
        if shuffle:
            for s in range(nb):
                y_batch[i * nb + s] = yt[i, perm[start + s]]
        else:
            for s in range(nb):
                y_batch[i * nb + s] = yt[i, start + s]


@njit(**JIT)
def _epoch(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt, lr, batch_size,
           shuffle, full, recording, a_off, acts, deltas, grad, z_out, y_batch, bits, scale,
           perm, blas_min_work):
    """One epoch of updates; returns the mean batch loss when ``recording`` (else 0).

    Kept apart from the epoch loop so the loop's bookkeeping (shuffling, recording, the
    divergence guard) does not stop LLVM from inlining the passes: inlined into a busier
    function they ran at half speed.
    """
    n = xt.shape[1]
    n_layers = sizes.shape[0] - 1
    k = sizes[-1]
    out_off = a_off[n_layers]
    out_act = acts_codes[n_layers - 1]
    n_params = params.shape[0]
    epoch_loss = 0.0
    n_batches = 0
    for start in range(0, n, batch_size):
        nb = min(batch_size, n - start)
        if not full:
            _load_batch(xt, yt, start, nb, perm, shuffle, acts, 0, y_batch)
        forward(params, sizes, w_off, b_off, acts_codes, acts, a_off, nb, bits, scale,
                z_out, blas_min_work)
        if recording:
            epoch_loss += batch_loss(acts, out_off, y_batch, z_out, loss_code, k * nb)
        output_delta(acts, out_off, y_batch, deltas, loss_code, out_act, k * nb)
        backward(params, sizes, w_off, b_off, acts_codes, acts, a_off, deltas, grad, nb,
                 blas_min_work)
        for p in range(n_params):
            params[p] -= lr * grad[p]
        n_batches += 1
    return epoch_loss / n_batches


@njit(**JIT)
def train_epochs(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt,
                 epochs, lr, batch_size, shuffle, rng_state,
                 epoch0, record_every, history, backup,
                 a_off, acts, deltas, grad, z_out, y_batch, bits, scale, perm, blas_min_work):
    """Train ``params`` in place for ``epochs`` epochs.

    xt: (n_in, n) inputs, yt: (n_out, n) targets -- FEATURE-major (transposed once by the
    caller).  Epochs are numbered from ``epoch0`` (so a run cut into chunks is the same
    run); epoch g is recorded in history[g // record_every] when g % record_every == 0:
    the mean of its batch losses (for full batch: the loss before its update).

    Divergence guard: at each recorded epoch, and at the end, the loss and the parameters
    are checked; while finite they are copied to ``backup`` (len(params); len 0 turns the
    guard off).  On a non-finite value params are restored from ``backup``, which holds the
    state after the last good check, and the loop stops.

    Returns (epochs_done, bad_epoch): bad_epoch is the epoch whose check failed, or -1.
    epochs_done counts the epochs whose updates the parameters now contain.
    """
    n = xt.shape[1]
    guard = backup.shape[0] == params.shape[0]
    full = batch_size >= n and not shuffle
    if full:
        _load_batch(xt, yt, 0, n, perm, False, acts, 0, y_batch)
    per_sample = batch_size == 1
    if per_sample:  # sample-major copies and per-unit buffers for sgd_epoch
        x_rows = np.ascontiguousarray(xt.T)
        y_rows = np.ascontiguousarray(yt.T)
        h = np.zeros(sizes.sum(), dtype=acts.dtype)
        d = np.zeros(sizes.sum(), dtype=acts.dtype)
    else:
        x_rows = xt[:0]
        y_rows = yt[:0]
        h = acts[:0]
        d = acts[:0]
    good_epochs = 0
    for e in range(epochs):
        g = epoch0 + e
        recording = g % record_every == 0
        if shuffle:
            permutation_into(perm, rng_state)
        if per_sample:
            epoch_loss = sgd_epoch(params, sizes, w_off, b_off, acts_codes, loss_code, x_rows,
                                   y_rows, lr, perm, h, d, recording)
        else:
            epoch_loss = _epoch(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt, lr,
                                batch_size, shuffle, full, recording, a_off, acts, deltas,
                                grad, z_out, y_batch, bits, scale, perm, blas_min_work)
        if recording:
            history[g // record_every] = epoch_loss
            if guard:
                if (epoch_loss - epoch_loss == 0) and all_finite(params):
                    backup[:] = params
                    good_epochs = e + 1
                else:
                    params[:] = backup
                    return good_epochs, g
    if guard and not all_finite(params):
        params[:] = backup
        return good_epochs, epoch0 + epochs - 1
    return epochs, -1


@njit(**JIT)
def predict_into(params, sizes, w_off, b_off, acts_codes, xt, out, a_off, acts, bits, scale,
                 blas_min_work):
    """out (n_out, n) <- network outputs for xt (n_in, n), in batches of the workspace cap."""
    n = xt.shape[1]
    n0 = sizes[0]
    k = sizes[-1]
    n_layers = sizes.shape[0] - 1
    cap = (a_off[1] - a_off[0]) // n0
    out_off = a_off[n_layers]
    for start in range(0, n, cap):
        nb = min(cap, n - start)
        for i in range(n0):
            for s in range(nb):
                acts[i * nb + s] = xt[i, start + s]
        forward(params, sizes, w_off, b_off, acts_codes, acts, a_off, nb, bits, scale,
                acts[:0], blas_min_work)
        for i in range(k):
            for s in range(nb):
                out[i, start + s] = acts[out_off + i * nb + s]


@njit(**JIT)
def loss_and_gradient(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt, grad,
                      a_off, acts, deltas, z_out, y_batch, bits, scale, perm, blas_min_work):
    """Loss of the whole set (xt, yt) and its gradient into ``grad``; returns the loss."""
    n = xt.shape[1]
    n_layers = sizes.shape[0] - 1
    k = sizes[-1]
    out_off = a_off[n_layers]
    _load_batch(xt, yt, 0, n, perm, False, acts, 0, y_batch)
    forward(params, sizes, w_off, b_off, acts_codes, acts, a_off, n, bits, scale, z_out,
            blas_min_work)
    loss = batch_loss(acts, out_off, y_batch, z_out, loss_code, k * n)
    output_delta(acts, out_off, y_batch, deltas, loss_code, acts_codes[n_layers - 1], k * n)
    backward(params, sizes, w_off, b_off, acts_codes, acts, a_off, deltas, grad, n,
             blas_min_work)
    return loss
