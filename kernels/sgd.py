"""Per-sample SGD (batch_size 1): one update per sample, fused into the backward pass.

With one sample per step the batch machinery (sample loops of length 1, slices, a
gradient buffer) costs more than the arithmetic of a tutorial-sized net, so this path is
written for one sample: activations in one small flat vector indexed by unsigned offsets,
the sigmoid of VECTOR_SIGMOID_MIN_UNITS below (libm's exp for narrow layers, the batch
kernels' vectorizable scalar.sigmoid for wide ones), and each weight row updated
right after it has been used to propagate the delta -- which reads it once and gives
exactly the same numbers as computing the whole gradient first (the delta uses the row
before its update).

The back-propagated sum over a row is simd.row_dot (16 SIMD lanes); with the plain rule
it is simd.row_dot_sgd, which updates the row in the same pass.  Wide layers are bound
by the traffic over the weights (an 8 MB matrix at 1024 x 1024 sits in L3): two passes
per sample (forward; back-propagate + update) instead of three took W4a at H=1024 from
2.7 s to 0.8 s, and the 16 lanes replaced a chain of dependent adds.
"""
import math

import numpy as np
from numba import njit, uint64

from .activations import IDENTITY, RELU, SIGMOID, TANH, fma
from .config import JIT
from .losses import BCE, HALF_MSE, MSE
from .optim import (ADAM, H_BETA1, H_BETA2, H_EPS, H_L2, H_MOMENTUM, I_NESTEROV, I_OPTIMIZER,
                    adam_scales, is_plain_sgd, l2_penalty)
from .scalar import sigmoid
from .simd import row_dot, row_dot_sgd


# Layers of at least this many units take scalar.sigmoid, whose loop vectorizes (W4a,
# H=64: 12 -> 8.6 ms); narrower ones libm's exp, whose latency is shorter than the
# 13-step polynomial's when a sample's few units are one dependent chain (W2b, 6-2-1:
# 24 ms with the polynomial, 17 ms with libm).
VECTOR_SIGMOID_MIN_UNITS = 8


@njit(**JIT)
def sigmoid_libm(z):
    """1 / (1 + exp(-z)) with libm's exp, overflow-free."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@njit(**JIT)
def _activate(z, code):
    if code == SIGMOID:
        return sigmoid_libm(z)
    if code == RELU:
        return z if z > 0 else 0.0
    if code == TANH:
        return math.tanh(z)
    return z


@njit(**JIT)
def _derivative(a, code):
    if code == SIGMOID:
        return a * (1.0 - a)
    if code == RELU:
        return 1.0 if a > 0 else 0.0
    if code == TANH:
        return 1.0 - a * a
    return 1.0


@njit(inline="always", **JIT)  # Numba-level inlining: as a call per weight it cost 10x
def _step(params, p, g, lr, adam, hyper, iconf, state, c1, c2, decay_mask):
    """optim.update (not plain SGD) for the one parameter p with gradient g, with the
    same expressions."""
    l2 = hyper[H_L2]
    if l2 != 0.0:
        g += l2 * decay_mask[p] * params[p]
    if adam:
        b1 = hyper[H_BETA1]
        b2 = hyper[H_BETA2]
        m = b1 * state[0, p] + (1.0 - b1) * g
        v = b2 * state[1, p] + (1.0 - b2) * g * g
        state[0, p] = m
        state[1, p] = v
        params[p] -= lr * (m * c1) / (math.sqrt(v * c2) + hyper[H_EPS])
        return
    mu = hyper[H_MOMENTUM]
    v = mu * state[0, p] - lr * g
    state[0, p] = v
    if iconf[I_NESTEROV] != 0:
        params[p] += mu * v - lr * g
    else:
        params[p] += v


def _sgd_epoch(params, sizes, w_off, b_off, acts_codes, loss_code, x_rows, y_rows, sw, lr,
               order, h, d, recording, hyper, iconf, opt_state, opt_step, decay_mask):
    """One epoch of per-sample SGD over the samples in ``order``; returns the mean sample
    loss when ``recording`` (else 0).

    x_rows: (n, n_in), y_rows: (n, n_out) sample-major; sw: (n,) sample weights or empty.
    hyper, iconf, opt_state, opt_step, decay_mask: the optimizer, as in optim.update,
    applied one parameter at a time as each is reached.
    h, d: flat per-unit buffers of len(sum(sizes)) for the activations and deltas (layer l
    starts at sum(sizes[:l])).  Softmax outputs are not handled here (train() routes
    cross_entropy to the batch path).

    sizes, w_off, b_off, acts_codes: arrays, or tuples (sgd_epoch_inline in a kernel of
    specialize.py, where they are constants).
    """
    n_layers = len(sizes) - 1
    n0 = uint64(sizes[0])
    k = uint64(sizes[-1])
    out_off = uint64(0)
    for l in range(n_layers):
        out_off += uint64(sizes[l])
    out_code = acts_codes[n_layers - 1]
    total = 0.0
    weighted = sw.shape[0] > 0
    plain = is_plain_sgd(hyper, iconf)
    adam = iconf[I_OPTIMIZER] == ADAM
    c1 = 1.0
    c2 = 1.0
    n = order.shape[0]
    for t in range(n):
        s = order[t]
        ws = sw[s] if weighted else 1.0
        if not plain:
            opt_step[0] += 1
            if adam:
                c1, c2 = adam_scales(hyper, opt_step[0])
        for i in range(n0):
            h[i] = x_rows[s, i]
        # forward
        ai = uint64(0)
        for l in range(n_layers):
            n_in = uint64(sizes[l])
            n_out = uint64(sizes[l + 1])
            zo = ai + n_in
            wo = uint64(w_off[l])
            a0 = h[ai]
            for j in range(n_out):
                h[zo + j] = params[wo + j] * a0
            i = uint64(1)
            # four rows per pass over z (the same order per unit): a quarter of the loads
            # and stores of z and of the loop overhead, W4a at H=16 10% faster
            while i + uint64(4) <= n_in:
                a1 = h[ai + i]
                a2 = h[ai + i + uint64(1)]
                a3 = h[ai + i + uint64(2)]
                a4 = h[ai + i + uint64(3)]
                r1 = wo + i * n_out
                r2 = r1 + n_out
                r3 = r2 + n_out
                r4 = r3 + n_out
                for j in range(n_out):
                    z = fma(params[r1 + j], a1, h[zo + j])
                    z = fma(params[r2 + j], a2, z)
                    z = fma(params[r3 + j], a3, z)
                    h[zo + j] = fma(params[r4 + j], a4, z)
                i += uint64(4)
            for i in range(i, n_in):
                a = h[ai + i]
                row = wo + i * n_out
                for j in range(n_out):
                    h[zo + j] = fma(params[row + j], a, h[zo + j])
            if b_off[l] >= 0:
                bo = uint64(b_off[l])
                for j in range(n_out):
                    h[zo + j] += params[bo + j]
            code = acts_codes[l]
            if loss_code == BCE and l == n_layers - 1:
                # keep z for the stable loss: d holds it until the output delta is formed
                for j in range(n_out):
                    d[zo + j] = h[zo + j]
            if code == SIGMOID and n_out >= VECTOR_SIGMOID_MIN_UNITS:  # a loop that vectorizes
                for j in range(n_out):
                    h[zo + j] = sigmoid(h[zo + j])
            else:
                for j in range(n_out):
                    h[zo + j] = _activate(h[zo + j], code)
            ai = zo
        # loss and output delta
        if loss_code == MSE:
            scale = 2.0 / k
        elif loss_code == HALF_MSE:
            scale = 1.0 / k
        elif loss_code == BCE:
            scale = 1.0 / k
        else:
            scale = 1.0
        sample_loss = 0.0
        for j in range(k):
            diff = h[out_off + j] - y_rows[s, j]
            if recording:
                if loss_code == BCE:
                    zj = d[out_off + j]
                    sample_loss += max(zj, 0.0) - zj * y_rows[s, j] + math.log1p(math.exp(-abs(zj)))
                else:
                    sample_loss += diff * diff
            if loss_code == BCE:
                d[out_off + j] = diff * scale
            else:
                d[out_off + j] = diff * scale * _derivative(h[out_off + j], out_code)
            if weighted:
                d[out_off + j] *= ws
        if weighted:
            sample_loss *= ws
        if recording and not plain:  # before this sample's updates, as _epoch
            total += l2_penalty(params, hyper, decay_mask)
        if recording:  # the same expressions as losses.batch_loss with a batch of one
            if loss_code == MSE or loss_code == BCE:
                total += sample_loss / k
            elif loss_code == HALF_MSE:
                total += 0.5 * sample_loss / k
            else:
                total += 0.5 * sample_loss
        # backward, each weight row updated right after its use
        zo = out_off
        for l in range(n_layers - 1, -1, -1):
            n_in = uint64(sizes[l])
            n_out = uint64(sizes[l + 1])
            ai = zo - n_in
            wo = uint64(w_off[l])
            for i in range(n_in):
                row = wo + i * n_out
                a = h[ai + i]
                if plain and l > 0:  # back-propagate and update in one pass over the row
                    acc = row_dot_sgd(params, row, d, zo, n_out, a, lr)
                    d[ai + i] = acc * _derivative(a, acts_codes[l - 1])
                    continue
                if l > 0:
                    acc = row_dot(params, row, d, zo, n_out)
                    d[ai + i] = acc * _derivative(a, acts_codes[l - 1])
                for j in range(n_out):
                    if plain:  # kept inline: as a call per weight it cost 10x
                        params[row + j] -= lr * (a * d[zo + j])
                    else:
                        _step(params, row + j, a * d[zo + j], lr, adam, hyper, iconf,
                              opt_state, c1, c2, decay_mask)
            if b_off[l] >= 0:
                bo = uint64(b_off[l])
                for j in range(n_out):
                    if plain:
                        params[bo + j] -= lr * d[zo + j]
                    else:
                        _step(params, bo + j, d[zo + j], lr, adam, hyper, iconf, opt_state,
                              c1, c2, decay_mask)
            zo = ai
    return total / n


sgd_epoch = njit(**JIT)(_sgd_epoch)
# The same function inlined at Numba's IR level into its caller: a kernel generated by
# specialize.py passes the architecture as constant tuples, so LLVM learns every trip
# count and unrolls and vectorizes the unit loops without remainders or run-time checks
# (W4a, one epoch: H=64 22% and H=256 15% faster), with the same operations in the same
# order, so the same results bit for bit.
sgd_epoch_inline = njit(inline="always", **JIT)(_sgd_epoch)
