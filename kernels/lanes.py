"""Full-batch training of many models at once with SIMD across models ("lanes").

Models are taken in blocks of LANES and held lane-minor: a block's parameters as
(n_params, LANES), its activations as (units, samples, LANES), so the innermost loop of
every operation runs over the models of the block and vectorizes, even where a single
model's rows are short (the XOR net has 21 samples and layers of 4 units).  Each lane
performs exactly the operations of the single-model full-batch entry (loops.py,
batch.py) with the same rules, in the same order -- the same products, the same
interleaved sums (rules.dot4), the same activations -- so every model is bit-identical to training it
alone; tests/test_ensemble.py checks it.

Scope (``eligible``): shared data, full batch without shuffling, the plain rule (the
Ensemble's), losses mse / half_mse / sse, elementwise activations, layers small enough
that the single-model entry uses loops rather than matrix products.  The divergence
guard is kept by falling back: a block in which any model meets a non-finite loss or
parameter at a check returns False, its parameters untouched, and the caller trains
its models again from the chunk's start with the single-model entry, which then stops
each where MLP.fit would.
"""
import numpy as np
from numba import njit

from .batch import uses_products
from .config import INNER, JIT, refuse_python_calls
from .intrinsics import LOSS_CHAINS, fma, like, sum_width
from .loops import all_finite
from .rows import activate_rows, derivative_rows
from .rules import (HALF_MSE, MSE, SOFTMAX, SSE, delta_scale, loss_of_sum, output_delta,
                    plain_step, squared_error)

LANES = 8


def eligible(sizes, acts, loss, n, full_batch, shared_data, product_min_work):
    """Whether the lanes may train this fit's full blocks of models."""
    if not (full_batch and shared_data and loss in (MSE, HALF_MSE, SSE)):
        return False
    return not any(a == SOFTMAX for a in acts) and not any(
        getattr(uses_products, "py_func", uses_products)(a, b, n, product_min_work)
        for a, b in zip(sizes[:-1], sizes[1:]))


@njit(**INNER)
def _mul_rows(z, w, a):
    """z[s, q] = w[q] * a[s, q] over a row of nb samples x LANES."""
    for s in range(z.shape[0] // LANES):
        for q in range(LANES):
            z[s * LANES + q] = w[q] * a[s * LANES + q]


@njit(**INNER)
def _fma_rows(z, w, a):
    for s in range(z.shape[0] // LANES):
        for q in range(LANES):
            z[s * LANES + q] = fma(w[q], a[s * LANES + q], z[s * LANES + q])


@njit(**INNER)
def _add_rows(z, w):
    for s in range(z.shape[0] // LANES):
        for q in range(LANES):
            z[s * LANES + q] += w[q]


@njit(**INNER)
def _dot4_lanes(x, y, nb, out, part):
    """out[q] = rules.dot4 of lane q's rows x, y (nb samples): the same chains, s % w
    for w = sum_width (part: w rows), folded to four sums, combined as
    (l0 + l1) + (l2 + l3)."""
    w = sum_width(x)
    for r in range(w):
        for q in range(LANES):
            part[r, q] = 0.0
    for s0 in range(0, nb, w):
        for r in range(min(w, nb - s0)):
            b = (s0 + r) * LANES
            for q in range(LANES):
                part[r, q] = fma(x[b + q], y[b + q], part[r, q])
    _fold(part, w)
    for q in range(LANES):
        out[q] = (part[0, q] + part[1, q]) + (part[2, q] + part[3, q])


@njit(**INNER)
def _sum4_lanes(x, nb, out, part):
    """rules.sum4 per lane."""
    w = sum_width(x)
    for r in range(w):
        for q in range(LANES):
            part[r, q] = 0.0
    for s0 in range(0, nb, w):
        for r in range(min(w, nb - s0)):
            b = (s0 + r) * LANES
            for q in range(LANES):
                part[r, q] += x[b + q]
    _fold(part, w)
    for q in range(LANES):
        out[q] = (part[0, q] + part[1, q]) + (part[2, q] + part[3, q])


@njit(**INNER)
def _loss_sum_lanes(a, y, nb, chains, loss):
    """loss[q] += rules.loss_sum of lane q's row (chains: (LOSS_CHAINS, LANES), of the
    model's dtype): the same chains, s % LOSS_CHAINS, and the same combination
    (rules._combined_chains).
    The lanes have no sample weights, and their losses (``eligible``) all add
    rules.squared_error."""
    for r in range(LOSS_CHAINS):
        for q in range(LANES):
            chains[r, q] = 0.0
    for s0 in range(0, nb, LOSS_CHAINS):
        for r in range(min(LOSS_CHAINS, nb - s0)):
            b = (s0 + r) * LANES
            for q in range(LANES):
                chains[r, q] += squared_error(a[b + q], y[b + q])
    for q in range(LANES):
        s0 = (chains[0, q] + chains[4, q]) + (chains[8, q] + chains[12, q])
        s1 = (chains[1, q] + chains[5, q]) + (chains[9, q] + chains[13, q])
        s2 = (chains[2, q] + chains[6, q]) + (chains[10, q] + chains[14, q])
        s3 = (chains[3, q] + chains[7, q]) + (chains[11, q] + chains[15, q])
        loss[q] += (s0 + s1) + (s2 + s3)


@njit(**INNER)
def _fold(part, w):
    """intrinsics.lanes4's fold of eight chains to four sums: sum k = chain k + chain
    k + 4 (float32; float64 has four chains)."""
    if w == 8:
        for r in range(4):
            for q in range(LANES):
                part[r, q] = part[r, q] + part[r + 4, q]


@njit(**INNER)
def _epoch_lanes(P, G, net, A, D, a_off, Y, nb, lr, part, out, loss, chains,
                 recording):
    """One full-batch epoch of a block; loss[q] <- lane q's loss (before the update)."""
    sizes = net.sizes
    n_layers = sizes.shape[0] - 1
    row = nb * LANES
    for l in range(n_layers):  # forward, as batch.affine (nb > 1) and activate_rows
        n_in = sizes[l]
        n_out = sizes[l + 1]
        ai = a_off[l]
        zo = a_off[l + 1]
        wo = net.w_off[l]
        for j in range(n_out):
            z = A[zo + j * row:zo + (j + 1) * row]
            _mul_rows(z, P[wo + j], A[ai:ai + row])
            for i in range(1, n_in):
                _fma_rows(z, P[wo + i * n_out + j], A[ai + i * row:ai + (i + 1) * row])
        if net.b_off[l] >= 0:
            for j in range(n_out):
                _add_rows(A[zo + j * row:zo + (j + 1) * row], P[net.b_off[l] + j])
        activate_rows(A[zo:zo + n_out * row], net.acts[l])
    k = sizes[-1]
    oo = a_off[n_layers]
    count = k * nb
    if recording:  # batch.batch_loss: output by output, rules.loss_sum per lane
        for q in range(LANES):
            loss[q] = 0.0
        for j in range(k):
            _loss_sum_lanes(A[oo + j * row:oo + (j + 1) * row], Y[j * row:(j + 1) * row],
                            nb, chains, loss)
        for q in range(LANES):
            loss[q] = loss_of_sum(loss[q], net.loss, k, nb)
    out_act = net.acts[n_layers - 1]
    scale = like(delta_scale(net.loss, out_act, k, nb), A)
    for t in range(count * LANES):  # batch.output_deltas
        D[oo + t] = output_delta(A[oo + t], Y[t], scale, out_act, False)
    for l in range(n_layers - 1, -1, -1):  # batch.backward
        n_in = sizes[l]
        n_out = sizes[l + 1]
        ai = a_off[l]
        do = a_off[l + 1]
        wo = net.w_off[l]
        for i in range(n_in):
            for j in range(n_out):
                _dot4_lanes(A[ai + i * row:ai + (i + 1) * row],
                            D[do + j * row:do + (j + 1) * row], nb, out, part)
                for q in range(LANES):
                    G[wo + i * n_out + j, q] = out[q]
        if net.b_off[l] >= 0:
            for j in range(n_out):
                _sum4_lanes(D[do + j * row:do + (j + 1) * row], nb, out, part)
                for q in range(LANES):
                    G[net.b_off[l] + j, q] = out[q]
        if l > 0:
            for i in range(n_in):
                d_in = D[ai + i * row:ai + (i + 1) * row]
                _mul_rows(d_in, P[wo + i * n_out], D[do:do + row])
                for j in range(1, n_out):
                    _fma_rows(d_in, P[wo + i * n_out + j], D[do + j * row:do + (j + 1) * row])
            derivative_rows(D[ai:ai + n_in * row], A[ai:ai + n_in * row], net.acts[l - 1])
    for p in range(P.shape[0]):  # the plain rule
        for q in range(LANES):
            P[p, q] = plain_step(P[p, q], G[p, q], lr[q])


@njit(**JIT)
def train_block(params, m0, net, x, y, epochs, lrs, epoch0, record_every, history):
    """Train models m0 .. m0+LANES-1 of ``params`` (n_models, n_params) in lanes on the
    shared data x (n, n_in), y (n, n_out), plain SGD at rates lrs[m]; records into
    history[m, r] (this chunk's records, as loops.py numbers them).  Returns False if a
    guard check failed: then the block's parameters are left as they were."""
    n_params = params.shape[1]
    nb = x.shape[0]
    sizes = net.sizes
    n_units = sizes.shape[0]
    a_off = np.zeros(n_units + 1, dtype=np.int64)
    for l in range(n_units):
        a_off[l + 1] = a_off[l] + sizes[l] * nb * LANES
    A = np.zeros(a_off[-1], dtype=params.dtype)
    D = np.zeros(a_off[-1], dtype=params.dtype)
    P = np.empty((n_params, LANES), dtype=params.dtype)
    G = np.empty((n_params, LANES), dtype=params.dtype)
    Y = np.empty(y.shape[1] * nb * LANES, dtype=params.dtype)
    part = np.empty((8, LANES), dtype=params.dtype)  # rules.dot4's chains (sum_width)
    loss = np.zeros(LANES)
    chains = np.empty((LOSS_CHAINS, LANES), dtype=params.dtype)  # rules.loss_sum's
    out = np.empty(LANES, dtype=params.dtype)
    lr = np.empty(LANES, dtype=params.dtype)  # the single-model entry's like(lr, params)
    r0 = (epoch0 + record_every - 1) // record_every
    for q in range(LANES):
        lr[q] = lrs[m0 + q]
        for p in range(n_params):
            P[p, q] = params[m0 + q, p]
    for i in range(x.shape[1]):
        for s in range(nb):
            for q in range(LANES):
                A[(i * nb + s) * LANES + q] = x[s, i]
    for t in range(y.shape[1]):
        for s in range(nb):
            for q in range(LANES):
                Y[(t * nb + s) * LANES + q] = y[s, t]
    for e in range(epochs):
        g = epoch0 + e
        recording = g % record_every == 0
        _epoch_lanes(P, G, net, A, D, a_off, Y, nb, lr, part, out, loss, chains,
                     recording)
        if recording:
            # the single-model guard: a non-finite loss or parameter at a check
            if not (all_finite(loss) and all_finite(P.reshape(-1))):
                return False
            for q in range(LANES):
                history[m0 + q, g // record_every - r0] = loss[q]
    if not all_finite(P.reshape(-1)):
        return False
    for q in range(LANES):
        for p in range(n_params):
            params[m0 + q, p] = P[p, q]
    return True


refuse_python_calls(globals())  # the INNER functions: TypeError from Python, not a crash
