"""Losses of a batch held feature-major: the output block of nb samples x K outputs
starts at ``oo`` in ``out``; targets ``y`` and pre-activations ``z`` start at 0.

``count`` is the number of elements the mean runs over (nb * K).  Definitions (DESIGN.md):
    mse      = sum (out - y)^2 / count
    half_mse = mse / 2                       (scikit-learn's squared error)
    sse      = 1/2 * sum (out - y)^2         (the tutorials' E; not divided by count)
    bce      = -sum [y log p + (1-y) log(1-p)] / count, p = sigmoid(z)
For bce the loss is computed from the pre-activation z (log-sum-exp form), exact where p
has saturated to 0 or 1; the delta with a sigmoid output is (p - y) / count.
"""
import math

from numba import njit, uint64

from .activations import SIGMOID, mul_derivative_inplace
from .config import JIT

MSE = 0
HALF_MSE = 1
SSE = 2
BCE = 3


@njit(**JIT)
def batch_loss(out, oo, y, z, code, count):
    """Loss of one batch (float64)."""
    total = 0.0
    uo = uint64(oo)  # unsigned offsets keep the loops vectorizable (see dense.py)
    if code == BCE:
        for s in range(count):
            zs = z[s]
            # -[y log p + (1-y) log(1-p)] = max(z, 0) - z y + log(1 + exp(-|z|))
            total += max(zs, 0.0) - zs * y[s] + math.log1p(math.exp(-abs(zs)))
        return total / count
    for s in range(uint64(count)):
        d = out[uo + s] - y[s]
        total += d * d
    if code == MSE:
        return total / count
    if code == HALF_MSE:
        return 0.5 * total / count
    return 0.5 * total  # SSE


@njit(**JIT)
def output_delta(out, oo, y, delta, loss_code, act_code, count):
    """delta[oo:oo+count] <- dLoss/dz for the output layer (z its pre-activation)."""
    uo = uint64(oo)
    if loss_code == BCE and act_code == SIGMOID:
        inv = 1.0 / count
        for s in range(uint64(count)):
            delta[uo + s] = (out[uo + s] - y[s]) * inv
        return
    if loss_code == MSE:
        scale = 2.0 / count
    elif loss_code == HALF_MSE:
        scale = 1.0 / count
    else:  # SSE
        scale = 1.0
    for s in range(uint64(count)):
        delta[uo + s] = (out[uo + s] - y[s]) * scale
    mul_derivative_inplace(delta[oo:oo + count], out[oo:oo + count], act_code)
