"""Full-batch training of many models at once with SIMD across models ("lanes").

Models are taken in blocks of LANES and held lane-minor: a block's parameters as
(n_params, LANES), its activations as (units, samples, LANES), so the innermost loop of
every operation runs over the models of the block and vectorizes, even where a single
model's rows are short (the XOR net has 21 samples and layers of 4 units).  Each lane
performs exactly the operations of the single-model kernels (train.train_epochs ->
dense.py, losses.py), in the same order -- the same products, the same four-lane sums,
the same elementwise activations -- so every model is bit-identical to training it
alone; tests/test_ensemble.py checks it.

Scope: shared data, full batch without shuffling, plain SGD (the Ensemble's update
rule), losses mse / half_mse / sse, elementwise activations, layers small enough that the
single-model kernel uses loops rather than matrix products (``eligible``).  The divergence guard is
kept by falling back: a block in which any model meets a non-finite loss or parameter
at a check is re-run from the start of the chunk by the single-model kernel, which then
stops that model exactly where MLP.fit would.
"""
import numpy as np
from numba import njit, prange

from .activations import SOFTMAX, activate_inplace, fma, mul_derivative_inplace
from .config import JIT
from .dense import layer_uses_products
from .losses import HALF_MSE, MSE, SSE
from .train import all_finite, allocate_workspace, train_epochs

LANES = 8
_PAR = dict(JIT, parallel=True)


@njit(**JIT)
def eligible(sizes, acts_codes, loss_code, n, batch_sizes, shuffle, n_data, product_min_work):
    """Whether train_many may train this fit's full blocks of models in lanes."""
    if shuffle or n_data != 1 or not (loss_code == MSE or loss_code == HALF_MSE
                                      or loss_code == SSE):
        return False
    for m in range(batch_sizes.shape[0]):
        if batch_sizes[m] < n:
            return False
    for l in range(sizes.shape[0] - 1):
        if acts_codes[l] == SOFTMAX or layer_uses_products(sizes[l], sizes[l + 1], n, product_min_work):
            return False
    return True


@njit(**JIT)
def _mul_rows(z, w, a):
    """z[s, q] = w[q] * a[s, q] over a row of nb samples x LANES."""
    for s in range(z.shape[0] // LANES):
        for q in range(LANES):
            z[s * LANES + q] = w[q] * a[s * LANES + q]


@njit(**JIT)
def _fma_rows(z, w, a):
    for s in range(z.shape[0] // LANES):
        for q in range(LANES):
            z[s * LANES + q] = fma(w[q], a[s * LANES + q], z[s * LANES + q])


@njit(**JIT)
def _add_rows(z, w):
    for s in range(z.shape[0] // LANES):
        for q in range(LANES):
            z[s * LANES + q] += w[q]


@njit(**JIT)
def _dot4_lanes(x, y, nb, out, part):
    """out[q] = dense.dot4 of lane q's rows x, y (nb samples): the same four partial
    sums, lane s % 4, combined as (l0 + l1) + (l2 + l3)."""
    q4 = nb - (nb & 3)
    for r in range(4):
        for q in range(LANES):
            part[r, q] = 0.0
    for s in range(0, q4, 4):
        for r in range(4):
            b = (s + r) * LANES
            for q in range(LANES):
                part[r, q] = fma(x[b + q], y[b + q], part[r, q])
    for s in range(q4, nb):
        for q in range(LANES):
            part[0, q] = fma(x[s * LANES + q], y[s * LANES + q], part[0, q])
    for q in range(LANES):
        out[q] = (part[0, q] + part[1, q]) + (part[2, q] + part[3, q])


@njit(**JIT)
def _sum4_lanes(x, nb, out, part):
    """dense.sum4 per lane."""
    q4 = nb - (nb & 3)
    for r in range(4):
        for q in range(LANES):
            part[r, q] = 0.0
    for s in range(0, q4, 4):
        for r in range(4):
            b = (s + r) * LANES
            for q in range(LANES):
                part[r, q] += x[b + q]
    for s in range(q4, nb):
        for q in range(LANES):
            part[0, q] += x[s * LANES + q]
    for q in range(LANES):
        out[q] = (part[0, q] + part[1, q]) + (part[2, q] + part[3, q])


@njit(**JIT)
def _epoch_lanes(P, G, sizes, w_off, b_off, acts_codes, loss_code, A, D, a_off, Y, nb,
                 lr, bits, scale, part, out, loss, recording):
    """One full-batch epoch of a block; loss[q] <- lane q's loss (before the update)."""
    n_layers = sizes.shape[0] - 1
    row = nb * LANES
    for l in range(n_layers):  # forward, as dense._affine (nb > 1) + activate_inplace
        n_in = sizes[l]
        n_out = sizes[l + 1]
        ai = a_off[l]
        zo = a_off[l + 1]
        for j in range(n_out):
            z = A[zo + j * row:zo + (j + 1) * row]
            _mul_rows(z, P[w_off[l] + j], A[ai:ai + row])
            for i in range(1, n_in):
                _fma_rows(z, P[w_off[l] + i * n_out + j], A[ai + i * row:ai + (i + 1) * row])
        if b_off[l] >= 0:
            for j in range(n_out):
                _add_rows(A[zo + j * row:zo + (j + 1) * row], P[b_off[l] + j])
        activate_inplace(A[zo:zo + n_out * row], acts_codes[l], bits, scale)
    k = sizes[-1]
    oo = a_off[n_layers]
    count = k * nb
    if recording:  # losses.batch_loss: rows j, then samples, one running sum per lane
        for q in range(LANES):
            loss[q] = 0.0
        for t in range(count):
            for q in range(LANES):
                d = A[oo + t * LANES + q] - Y[t * LANES + q]
                loss[q] += d * d
        for q in range(LANES):
            if loss_code == SSE:
                loss[q] = 0.5 * loss[q]
            elif loss_code == HALF_MSE:
                loss[q] = 0.5 * loss[q] / count
            else:
                loss[q] = loss[q] / count
    if loss_code == MSE:  # losses.output_delta
        sc = 2.0 / count
    elif loss_code == HALF_MSE:
        sc = 1.0 / count
    else:
        sc = 1.0
    for t in range(count * LANES):
        D[oo + t] = (A[oo + t] - Y[t]) * sc
    mul_derivative_inplace(D[oo:oo + count * LANES], A[oo:oo + count * LANES],
                           acts_codes[n_layers - 1])
    for l in range(n_layers - 1, -1, -1):  # dense.backward
        n_in = sizes[l]
        n_out = sizes[l + 1]
        ai = a_off[l]
        do = a_off[l + 1]
        wo = w_off[l]
        for i in range(n_in):
            for j in range(n_out):
                _dot4_lanes(A[ai + i * row:ai + (i + 1) * row],
                            D[do + j * row:do + (j + 1) * row], nb, out, part)
                for q in range(LANES):
                    G[wo + i * n_out + j, q] = out[q]
        if b_off[l] >= 0:
            for j in range(n_out):
                _sum4_lanes(D[do + j * row:do + (j + 1) * row], nb, out, part)
                for q in range(LANES):
                    G[b_off[l] + j, q] = out[q]
        if l > 0:
            for i in range(n_in):
                d_in = D[ai + i * row:ai + (i + 1) * row]
                _mul_rows(d_in, P[wo + i * n_out], D[do:do + row])
                for j in range(1, n_out):
                    _fma_rows(d_in, P[wo + i * n_out + j], D[do + j * row:do + (j + 1) * row])
            mul_derivative_inplace(D[ai:ai + n_in * row], A[ai:ai + n_in * row],
                                   acts_codes[l - 1])
    for p in range(P.shape[0]):  # optim.update, plain SGD
        for q in range(LANES):
            P[p, q] -= lr[q] * G[p, q]


@njit(**JIT)
def _train_block(params, m0, sizes, w_off, b_off, acts_codes, loss_code, xt, yt, epochs,
                 lrs, epoch0, record_every, history):
    """Train models m0 .. m0+LANES-1 in lanes; False if a guard check failed (then
    params and history of the block are untouched past what the caller restores)."""
    n_params = params.shape[1]
    nb = xt.shape[1]
    n_units = sizes.shape[0]
    a_off = np.zeros(n_units + 1, dtype=np.int64)
    for l in range(n_units):
        a_off[l + 1] = a_off[l] + sizes[l] * nb * LANES
    A = np.zeros(a_off[-1])
    D = np.zeros(a_off[-1])
    P = np.empty((n_params, LANES))
    G = np.empty((n_params, LANES))
    Y = np.empty(yt.shape[0] * nb * LANES)
    part = np.empty((4, LANES))
    loss = np.zeros(LANES)
    out = np.empty(LANES)
    bits = np.zeros(sizes.max() * nb * LANES, dtype=np.int64)
    scale = bits.view(np.float64)
    lr = np.empty(LANES)
    for q in range(LANES):
        lr[q] = lrs[m0 + q]
        for p in range(n_params):
            P[p, q] = params[m0 + q, p]
    for i in range(xt.shape[0]):
        for s in range(nb):
            for q in range(LANES):
                A[(i * nb + s) * LANES + q] = xt[i, s]
    for t in range(yt.shape[0]):
        for s in range(nb):
            for q in range(LANES):
                Y[(t * nb + s) * LANES + q] = yt[t, s]
    for e in range(epochs):
        g = epoch0 + e
        recording = g % record_every == 0
        _epoch_lanes(P, G, sizes, w_off, b_off, acts_codes, loss_code, A, D, a_off, Y, nb,
                     lr, bits, scale, part, out, loss, recording)
        if recording:
            # train_epochs' guard: a non-finite loss or parameter at a check
            if not (all_finite(loss) and all_finite(P.reshape(-1))):
                return False
            for q in range(LANES):
                history[m0 + q, g // record_every] = loss[q]
    if not all_finite(P.reshape(-1)):
        return False
    for q in range(LANES):
        for p in range(n_params):
            params[m0 + q, p] = P[p, q]
    return True


@njit(**_PAR)
def train_blocks(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt, epochs, lrs,
                 batch_sizes, rng_states, active, epoch0, record_every, history, keep_z,
                 results, product_min_work):
    """train_many's lane path for the full blocks of active models (see the module
    docstring); models outside full blocks are left to the caller (``results[m, 0]``
    is -1 for them).  xt: (n_in, n), yt: (n_out, n) shared data."""
    n_models = params.shape[0]
    n_blocks = n_models // LANES
    for m in range(n_models):
        results[m, 0] = -1
        results[m, 1] = -1
    for b in prange(n_blocks):
        m0 = b * LANES
        full = True
        for q in range(LANES):
            if active[m0 + q] == 0:
                full = False
        if not full:
            continue
        if not _train_block(params, m0, sizes, w_off, b_off, acts_codes, loss_code, xt,
                            yt, epochs, lrs, epoch0, record_every, history):
            # a guard check failed somewhere in the block: the single-model kernel
            # re-runs each model from the chunk's start and stops it where MLP.fit would
            n = xt.shape[1]
            for q in range(LANES):
                m = m0 + q
                a_off, acts, deltas, grad, z_out, y_batch, bits, scale, perm = \
                    allocate_workspace(sizes, params.shape[1], n, n, params[m, :0], keep_z)
                backup = params[m].copy()
                done, bad = train_epochs(params[m], sizes, w_off, b_off, acts_codes,
                                         loss_code, xt, yt, epochs, lrs[m], batch_sizes[m],
                                         False, rng_states[m], epoch0, record_every,
                                         history[m], backup, a_off, acts, deltas, grad,
                                         z_out, y_batch, bits, scale, perm, product_min_work)
                results[m, 0] = done
                results[m, 1] = bad
            continue
        for q in range(LANES):
            results[m0 + q, 0] = epochs
            results[m0 + q, 1] = -1
