"""Losses of a batch held feature-major: K output rows of nb samples, the block starting
at ``oo`` in ``out``; targets ``y`` and pre-activations ``z`` (K rows of nb) start at 0.

Definitions (DESIGN.md), N = nb samples, K outputs, w_s sample weights (all 1 when ``w``
is empty):
    mse           = sum_s w_s sum_k (out - y)^2 / (N K)
    half_mse      = mse / 2                              (scikit-learn's squared error)
    sse           = 1/2 sum_s w_s sum_k (out - y)^2      (the tutorials' E; no mean)
    bce           = -sum_s w_s sum_k [y log p + (1-y) log(1-p)] / (N K),  p = sigmoid(z)
    cross_entropy = -sum_s w_s sum_k y log p / N,        p = softmax(z) over the K outputs
bce and cross_entropy are computed from z (log-sum-exp forms), exact where p saturates;
their deltas with a sigmoid / softmax output are w_s (p - y) / (N K) and w_s (p - y) / N.
Weights scale each sample's share and the mean still divides by N, so per-sample SGD
sees them too (a weighted average would cancel them there).
"""
import math

from numba import njit, uint64

from .activations import SIGMOID, SOFTMAX, mul_derivative_inplace
from .config import JIT

MSE = 0
HALF_MSE = 1
SSE = 2
BCE = 3
CROSS_ENTROPY = 4


@njit(**JIT)
def batch_loss(out, oo, y, z, w, code, k, nb):
    """Loss of one batch (float64)."""
    total = 0.0
    uo = uint64(oo)  # unsigned offsets keep the loops vectorizable (see dense.py)
    u_nb = uint64(nb)
    weighted = w.shape[0] > 0
    if code == CROSS_ENTROPY:
        for s in range(u_nb):
            zmax = z[s]
            for j in range(uint64(1), uint64(k)):
                zmax = max(zmax, z[j * u_nb + s])
            acc = 0.0
            for j in range(uint64(k)):
                acc += math.exp(z[j * u_nb + s] - zmax)
            lse = zmax + math.log(acc)
            ls = 0.0
            for j in range(uint64(k)):
                ls += y[j * u_nb + s] * (lse - z[j * u_nb + s])
            total += w[s] * ls if weighted else ls
        return total / nb
    for j in range(uint64(k)):
        row = j * u_nb
        for s in range(u_nb):
            if code == BCE:
                zs = z[row + s]
                # -[y log p + (1-y) log(1-p)] = max(z, 0) - z y + log(1 + exp(-|z|))
                e = max(zs, 0.0) - zs * y[row + s] + math.log1p(math.exp(-abs(zs)))
            else:
                d = out[uo + row + s] - y[row + s]
                e = d * d
            total += w[s] * e if weighted else e
    if code == SSE:
        return 0.5 * total
    if code == HALF_MSE:
        return 0.5 * total / (k * nb)
    return total / (k * nb)  # MSE, BCE


@njit(**JIT)
def output_delta(out, oo, y, delta, w, loss_code, act_code, k, nb):
    """delta[oo:] (K rows of nb) <- dLoss/dz for the output layer (z its pre-activation)."""
    uo = uint64(oo)
    u_nb = uint64(nb)
    count = k * nb
    combined = (loss_code == BCE and act_code == SIGMOID) or \
        (loss_code == CROSS_ENTROPY and act_code == SOFTMAX)
    if combined:
        scale = 1.0 / (nb if loss_code == CROSS_ENTROPY else count)
    elif loss_code == MSE:
        scale = 2.0 / count
    elif loss_code == HALF_MSE:
        scale = 1.0 / count
    else:  # SSE
        scale = 1.0
    for s in range(uint64(count)):
        delta[uo + s] = (out[uo + s] - y[s]) * scale
    if not combined:
        mul_derivative_inplace(delta[oo:oo + count], out[oo:oo + count], act_code)
    if w.shape[0] > 0:
        for j in range(uint64(k)):
            row = uo + j * u_nb
            for s in range(u_nb):
                delta[row + s] *= w[s]
