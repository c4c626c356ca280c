"""Fused training loops: every epoch, batch and update of a run in one compiled call.

One function serves the three modes, which differ only in the batch size:
full-batch gradient descent (batch_size >= n, no shuffle: the inputs are copied into
the workspace once), mini-batch SGD, and per-sample SGD (batch_size 1, which has a path
of its own in sgd.py).  Nothing is
allocated inside the epoch loop: ``allocate_workspace`` makes every buffer once.
"""
import numpy as np
from numba import njit, uint64

from .config import JIT
from .dense import backward, backward_sgd, forward
from .losses import CROSS_ENTROPY, batch_loss, output_delta
from .optim import (H_MIN_DELTA, I_PATIENCE, I_RESTORE_BEST, I_SAMPLE_MEAN, I_STEP_SIZE,
                    H_BETA1, H_BETA2,
                    H_EPS, H_LR, N_HYPER, N_ICONF, is_plain_sgd, l2_penalty, learning_rate,
                    update)
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
    output pre-activations, for bce and cross_entropy) is empty unless keep_z; scale is
    bits' float64 view.
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


def make_workspace(sizes, n_params, cap, n_samples, dtype_like, keep_z):
    """allocate_workspace from Python, without compiling it (1-2 s of a cold first fit):
    the same buffers, made by numpy."""
    sizes = np.asarray(sizes, dtype=np.int64)
    a_off = np.zeros(sizes.shape[0] + 1, dtype=np.int64)
    a_off[1:] = np.cumsum(sizes * cap)
    total = int(a_off[-1])
    k = int(sizes[-1])
    dt = dtype_like.dtype
    bits = np.zeros(int(sizes.max()) * cap, dtype=np.int64)
    return (a_off, np.zeros(total, dt), np.zeros(total, dt), np.zeros(n_params, dt),
            np.zeros(k * cap if keep_z else 0, dt), np.zeros(k * cap, dt), bits,
            bits.view(np.float64), np.arange(n_samples, dtype=np.int64))


@njit(**JIT)
def all_finite(x):
    for i in range(x.shape[0]):
        v = x[i]
        if not (v - v == 0):  # False for nan and +-inf
            return False
    return True


@njit(**JIT)
def _load_weights(sw, start, nb, perm, shuffle, w_batch):
    if sw.shape[0] == 0:
        return w_batch[:0]
    for s in range(nb):
        w_batch[s] = sw[perm[start + s]] if shuffle else sw[start + s]
    return w_batch[:nb]


# gather_columns goes sample by sample while the batch's block of dst is at most this large
# (an L1 data cache); beyond, dst's rows are far apart and it goes by blocks of 8 samples
# (rows 16, batch 4,096: 5.4 ms by blocks, 8.7 sample by sample; rows 64, batch 64: 7.5
# against 2.9)
GATHER_L1_BYTES = 32 * 1024


@njit(**JIT)
def gather_columns(src, start, nb, perm, shuffle, dst, d0):
    """dst[d0 + i * nb + s] <- src[i, sample s of the batch] for every row i of src:
    samples start .. start + nb - 1, through ``perm`` when shuffle.  The loop follows
    src's memory order: sample by sample when a sample's values are adjacent (the
    transposed view of sample-major data, what fit passes), row by row otherwise."""
    rows = src.shape[0]
    if src.strides[0] <= src.strides[1] and rows * nb * src.itemsize <= GATHER_L1_BYTES:
        # the batch's block of dst stays in L1: sample by sample, each sample's values
        # read in order; unsigned indices, so no negative-index wraparound and the
        # sample's offset computed once (W4b, 32 + 10 values of 64 samples: 2.2 -> 0.8 us
        # a batch, the general loop below spent ~8 instructions a value on indexing)
        x_rows = src.T
        u_rows, u_nb, u_d0, u_start = uint64(rows), uint64(nb), uint64(d0), uint64(start)
        for s in range(u_nb):
            j = uint64(perm[u_start + s]) if shuffle else u_start + s
            for i in range(u_rows):
                dst[u_d0 + i * u_nb + s] = x_rows[j, i]
    elif src.strides[0] <= src.strides[1]:
        # blocks of 8 samples: each row of dst gets 8 adjacent values (a cache line) at
        # a time.  Sample by sample, a batch of 4,096 wrote each sample's values 32 kB
        # apart: predict on 10,000 x 784 took 1.6x as long.
        for b in range(0, nb, 8):
            for i in range(rows):
                row = d0 + i * nb
                for s in range(b, min(b + 8, nb)):
                    dst[row + s] = src[i, perm[start + s] if shuffle else start + s]
    else:
        for i in range(rows):
            row = d0 + i * nb
            if shuffle:
                for s in range(nb):
                    dst[row + s] = src[i, perm[start + s]]
            else:
                for s in range(nb):
                    dst[row + s] = src[i, start + s]


@njit(**JIT)
def scatter_columns(src, s0, nb, dst, start):
    """dst[i, start + s] <- src[s0 + i * nb + s] for s < nb and every row i of dst: the
    reverse of gather_columns (no shuffling), in dst's memory order."""
    rows = dst.shape[0]
    if dst.strides[0] <= dst.strides[1]:
        for s in range(nb):
            for i in range(rows):
                dst[i, start + s] = src[s0 + i * nb + s]
    else:
        for i in range(rows):
            for s in range(nb):
                dst[i, start + s] = src[s0 + i * nb + s]


@njit(**JIT)
def _load_batch(xt, yt, start, nb, perm, shuffle, acts, a0, y_batch):
    gather_columns(xt, start, nb, perm, shuffle, acts, a0)
    gather_columns(yt, start, nb, perm, shuffle, y_batch, 0)


@njit(**JIT)
def _epoch(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt, sw, lr, batch_size,
           shuffle, full, recording, ws, w_batch, hyper, iconf, opt_state, opt_step,
           decay_mask, product_min_work):
    """One epoch of mini-batch (or full-batch) updates; returns the mean batch loss when
    ``recording`` (else 0).

    Kept apart from the epoch loop so the loop's bookkeeping (shuffling, recording, the
    divergence guard) does not stop LLVM from inlining the passes: inlined into a busier
    function they ran at half speed.
    """
    a_off, acts, deltas, grad, z_out, y_batch, bits, scale, perm = ws
    n = xt.shape[1]
    n_layers = sizes.shape[0] - 1
    k = sizes[-1]
    out_off = a_off[n_layers]
    out_act = acts_codes[n_layers - 1]
    sample_mean = iconf[I_SAMPLE_MEAN] != 0
    # the plain rule is applied inside the backward pass (dense.backward_sgd: the same
    # numbers, no gradient stored); float32 keeps the separate step, which computes
    # w - lr * g in float64
    fused_step = is_plain_sgd(hyper, iconf) and params.itemsize == 8
    if not fused_step and grad.shape[0] != params.shape[0]:
        raise ValueError("the workspace has no gradient buffer, which this update rule needs")
    epoch_loss = 0.0
    n_batches = 0
    for start in range(0, n, batch_size):
        nb = min(batch_size, n - start)
        if not full:
            _load_batch(xt, yt, start, nb, perm, shuffle, acts, 0, y_batch)
        wb = _load_weights(sw, start, nb, perm, shuffle, w_batch)
        # scikit-learn's convention (epoch_loss="sample_mean"): the L2 term of a batch is
        # divided by its own size, so a short last batch gets batch_size / nb times l2
        l2_scale = batch_size / nb if sample_mean else 1.0
        forward(params, sizes, w_off, b_off, acts_codes, acts, a_off, nb, bits, scale,
                z_out, product_min_work)
        if recording:
            bl = batch_loss(acts, out_off, y_batch, z_out, wb, loss_code, k, nb)
            bl += l2_scale * l2_penalty(params, hyper, decay_mask)
            epoch_loss += nb * bl if sample_mean else bl
        output_delta(acts, out_off, y_batch, deltas, wb, loss_code, out_act, k, nb)
        if fused_step:
            backward_sgd(params, sizes, w_off, b_off, acts_codes, acts, a_off, deltas, lr, nb,
                         product_min_work)
        else:
            backward(params, sizes, w_off, b_off, acts_codes, acts, a_off, deltas, grad, nb,
                     product_min_work)
            update(params, grad, lr, hyper, iconf, opt_state, opt_step, decay_mask, l2_scale)
        n_batches += 1
    return epoch_loss / n if sample_mean else epoch_loss / n_batches


@njit(**JIT)
def eval_loss(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt, sw, ws,
              product_min_work):
    """Loss of the model on a whole set held in one batch; ws from allocate_workspace with
    cap = n.  Loads the data every call (cheap next to the forward pass)."""
    a_off, acts, _, _, z_out, y_batch, bits, scale, perm = ws
    n = xt.shape[1]
    n_layers = sizes.shape[0] - 1
    _load_batch(xt, yt, 0, n, perm, False, acts, 0, y_batch)
    forward(params, sizes, w_off, b_off, acts_codes, acts, a_off, n, bits, scale, z_out,
            product_min_work)
    return batch_loss(acts, a_off[n_layers], y_batch, z_out, sw, loss_code, sizes[-1], n)


@njit(**JIT)
def train(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt, sw, xv, yv, swv,
          epochs, batch_size, shuffle, rng_state, epoch0, record_every,
          history, val_history, backup, best_params, es_state,
          hyper, iconf, opt_state, opt_step, decay_mask, ws, w_batch, wsv, product_min_work):
    """Train ``params`` in place for ``epochs`` epochs; the loop behind MLP.fit.

    Data, one sample per COLUMN: xt (n_in, n), yt (n_out, n) -- MLP.fit passes the
    transposed views of its sample-major rows (fastbp/_validation.py: kernel_columns),
    any layout works; sw (n,) sample weights or empty; xv, yv, swv: validation set
    (empty xv: none).
    Epochs are numbered from ``epoch0`` (a run cut into chunks is the same run); epoch g
    is recorded in history[g // record_every] when g % record_every == 0: the mean of its
    batch losses (full batch: the loss before its update), plus the L2 penalty; and,
    with validation data, the validation loss after the epoch in val_history.

    Early stopping (iconf[I_PATIENCE] > 0, needs validation data): es_state = [best
    validation loss, checks without improvement, best epoch], kept by the caller across
    chunks; with iconf[I_RESTORE_BEST] the best parameters are copied to best_params.

    Divergence guard: at each recorded epoch, and at the end, the loss and the parameters
    are checked; while finite they are copied to ``backup`` (len(params); len 0 turns the
    guard off), except after the call's last epoch.  On a non-finite value params are
    restored from ``backup``, which holds the state after the last good check (the
    caller fills it with the starting state), and the loop stops.  So a call with no
    recorded epoch before its last never writes ``backup`` (MLP._run relies on it).

    hyper, iconf, opt_state, opt_step, decay_mask: see optim.py.  ws: the workspace
    tuple of allocate_workspace for batches of batch_size; w_batch: (batch_size,) scratch
    for sample weights; wsv: a workspace with cap len(validation set).

    Returns (epochs_done, bad_epoch, early_stopped): bad_epoch is the epoch whose check
    failed, or -1; epochs_done counts the epochs whose updates the parameters contain.
    """
    a_off, acts, deltas, grad, z_out, y_batch, bits, scale, perm = ws
    n = xt.shape[1]
    guard = backup.shape[0] == params.shape[0]
    validating = xv.shape[1] > 0
    patience = iconf[I_PATIENCE]
    restore_best = iconf[I_RESTORE_BEST] != 0 and best_params.shape[0] == params.shape[0]
    full = batch_size >= n and not shuffle
    if full:
        _load_batch(xt, yt, 0, n, perm, False, acts, 0, y_batch)
    # per-sample SGD has a faster path of its own, for the plain update rule
    per_sample = batch_size == 1 and loss_code != CROSS_ENTROPY
    # sgd_epoch reads samples as rows: transposed views, not copies (a copy per call,
    # 1.3 MB for W4a, made glibc hand the freed pages back to the OS and fault them in
    # again at the next fit).  From MLP.fit xt is itself the transposed view of
    # sample-major rows, so these rows are contiguous: strided reads, one cache line per
    # input, cost W4a 7-9% of its kernel time at H=16.
    x_rows = xt.T
    y_rows = yt.T
    if per_sample and epochs > 0:
        h = np.zeros(sizes.sum(), dtype=acts.dtype)
        d = np.zeros(sizes.sum(), dtype=acts.dtype)
    else:
        h = acts[:0]
        d = acts[:0]
    good_epochs = 0
    for e in range(epochs):
        g = epoch0 + e
        recording = g % record_every == 0
        lr = learning_rate(hyper, iconf, g)
        if shuffle:
            permutation_into(perm, rng_state)
        if per_sample:
            epoch_loss = sgd_epoch(params, sizes, w_off, b_off, acts_codes, loss_code, x_rows,
                                   y_rows, sw, lr, perm, h, d, recording, hyper, iconf,
                                   opt_state, opt_step, decay_mask)
        else:
            epoch_loss = _epoch(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt, sw,
                                lr, batch_size, shuffle, full, recording, ws, w_batch, hyper,
                                iconf, opt_state, opt_step, decay_mask, product_min_work)
        if recording:
            r = g // record_every
            history[r] = epoch_loss
            finite = (epoch_loss - epoch_loss == 0) and all_finite(params)
            if guard:
                if finite:
                    if e + 1 < epochs:  # the last epoch's state needs no copy: it is final
                        backup[:] = params
                    good_epochs = e + 1
                else:
                    params[:] = backup
                    return good_epochs, g, False
            if validating and finite:
                vloss = eval_loss(params, sizes, w_off, b_off, acts_codes, loss_code, xv, yv,
                                  swv, wsv, product_min_work)
                val_history[r] = vloss
                if vloss < es_state[0] - hyper[H_MIN_DELTA]:
                    es_state[0] = vloss
                    es_state[1] = 0
                    es_state[2] = g
                    if restore_best:
                        best_params[:] = params
                else:
                    es_state[1] += 1
                    if patience > 0 and es_state[1] >= patience:
                        return e + 1, -1, True
    if guard and not all_finite(params):
        params[:] = backup
        return good_epochs, epoch0 + epochs - 1, False
    return epochs, -1, False


@njit(**JIT)
def default_config(lr):
    """hyper / iconf for plain SGD at a constant learning rate, no L2, no early stopping."""
    hyper = np.zeros(N_HYPER)
    iconf = np.zeros(N_ICONF, dtype=np.int64)
    hyper[H_LR] = lr
    hyper[H_BETA1] = 0.9
    hyper[H_BETA2] = 0.999
    hyper[H_EPS] = 1e-8
    iconf[I_STEP_SIZE] = 1
    return hyper, iconf


@njit(**JIT)
def train_epochs(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt,
                 epochs, lr, batch_size, shuffle, rng_state,
                 epoch0, record_every, history, backup,
                 a_off, acts, deltas, grad, z_out, y_batch, bits, scale, perm, product_min_work):
    """Plain SGD at a constant learning rate (see ``train``); returns (epochs_done,
    bad_epoch).  The entry point of the Ensemble kernel."""
    hyper, iconf = default_config(lr)
    empty = params[:0]
    ws = (a_off, acts, deltas, grad, z_out, y_batch, bits, scale, perm)
    done, bad, _ = train(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt, empty,
                         xt[:, :0], yt[:, :0], empty, epochs, batch_size, shuffle, rng_state,
                         epoch0, record_every, history, history[:0], backup, empty,
                         np.zeros(3), hyper, iconf, np.zeros((2, 0), dtype=params.dtype),
                         np.zeros(1, dtype=np.int64), empty, ws, empty, ws, product_min_work)
    return done, bad


@njit(**JIT)
def predict_into(params, sizes, w_off, b_off, acts_codes, xt, out, a_off, acts, bits, scale,
                 product_min_work):
    """out (n_out, n) <- network outputs for xt (n_in, n), in batches of the workspace cap.
    Either may be a transposed view of sample-major rows (what MLP.predict passes)."""
    n = xt.shape[1]
    n_layers = sizes.shape[0] - 1
    cap = (a_off[1] - a_off[0]) // sizes[0]
    out_off = a_off[n_layers]
    perm_none = np.zeros(0, dtype=np.int64)
    for start in range(0, n, cap):
        nb = min(cap, n - start)
        gather_columns(xt, start, nb, perm_none, False, acts, 0)
        forward(params, sizes, w_off, b_off, acts_codes, acts, a_off, nb, bits, scale,
                acts[:0], product_min_work)
        scatter_columns(acts, out_off, nb, out, start)


@njit(**JIT)
def weighted_loss_and_gradient(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt, sw,
                               grad, a_off, acts, deltas, z_out, y_batch, bits, scale, perm,
                               product_min_work):
    """Loss of the whole set (xt, yt) (sample weights sw, or empty) and its gradient into
    ``grad``; returns the loss."""
    n = xt.shape[1]
    n_layers = sizes.shape[0] - 1
    k = sizes[-1]
    out_off = a_off[n_layers]
    _load_batch(xt, yt, 0, n, perm, False, acts, 0, y_batch)
    forward(params, sizes, w_off, b_off, acts_codes, acts, a_off, n, bits, scale, z_out,
            product_min_work)
    loss = batch_loss(acts, out_off, y_batch, z_out, sw, loss_code, k, n)
    output_delta(acts, out_off, y_batch, deltas, sw, loss_code, acts_codes[n_layers - 1], k, n)
    backward(params, sizes, w_off, b_off, acts_codes, acts, a_off, deltas, grad, n,
             product_min_work)
    return loss


@njit(**JIT)
def loss_and_gradient(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt, grad,
                      a_off, acts, deltas, z_out, y_batch, bits, scale, perm, product_min_work):
    """weighted_loss_and_gradient without sample weights."""
    return weighted_loss_and_gradient(params, sizes, w_off, b_off, acts_codes, loss_code, xt,
                                      yt, params[:0], grad, a_off, acts, deltas, z_out,
                                      y_batch, bits, scale, perm, product_min_work)
