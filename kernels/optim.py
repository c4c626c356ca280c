"""Update rules and learning-rate schedules, one parameter at a time.

Optimizer state lives in ``state`` (2, n_params), in the parameters' own layout:
row 0 is the velocity (momentum SGD) or Adam's first moment, row 1 Adam's second moment.
``step[0]`` counts updates (Adam's t).  Both are kept by the caller between fits, so a
second fit continues where the first stopped.

The hyper-parameters travel in one float64 array ``hyper`` and one int64 array ``iconf``
(indices below), built in one place (fastbp/_config.py): the kernels' signatures stay
fixed as options are added, and Numba compiles one specialization for all of them.
"""
import math

from numba import njit

from .config import JIT

SGD = 0
ADAM = 1

CONSTANT = 0
INVSCALING = 1
STEP = 2
COSINE = 3

# hyper[...]
H_LR = 0
H_MOMENTUM = 1
H_BETA1 = 2
H_BETA2 = 3
H_EPS = 4
H_L2 = 5
H_POWER = 6        # invscaling: lr / (1 + epoch) ** power
H_STEP_FACTOR = 7  # step: lr * factor ** (epoch // step_size)
H_LR_MIN = 8       # cosine: from lr down to lr_min over the fit
H_MIN_DELTA = 9    # early stopping: improvement needed to reset patience
N_HYPER = 10

# iconf[...]
I_OPTIMIZER = 0
I_NESTEROV = 1
I_SCHEDULE = 2
I_STEP_SIZE = 3
I_TOTAL_EPOCHS = 4  # epochs of the whole fit (cosine schedule)
I_PATIENCE = 5      # 0: no early stopping
I_RESTORE_BEST = 6
I_SAMPLE_MEAN = 7   # epoch loss = batch losses weighted by batch size; l2 / batch size
N_ICONF = 8


@njit(**JIT)
def learning_rate(hyper, iconf, epoch):
    """The learning rate of epoch ``epoch`` (counted from the start of the fit)."""
    lr = hyper[H_LR]
    sched = iconf[I_SCHEDULE]
    if sched == INVSCALING:
        return lr / (1.0 + epoch) ** hyper[H_POWER]
    if sched == STEP:
        return lr * hyper[H_STEP_FACTOR] ** (epoch // iconf[I_STEP_SIZE])
    if sched == COSINE:
        total = max(iconf[I_TOTAL_EPOCHS], 1)
        lo = hyper[H_LR_MIN]
        return lo + 0.5 * (lr - lo) * (1.0 + math.cos(math.pi * epoch / total))
    return lr


@njit(**JIT)
def is_plain_sgd(hyper, iconf):
    return iconf[I_OPTIMIZER] == SGD and hyper[H_MOMENTUM] == 0.0 and hyper[H_L2] == 0.0


@njit(**JIT)
def adam_scales(hyper, t):
    """Adam's bias corrections 1 / (1 - beta^t) for step t (>= 1)."""
    return 1.0 / (1.0 - hyper[H_BETA1] ** t), 1.0 / (1.0 - hyper[H_BETA2] ** t)


@njit(**JIT)
def update(params, grad, lr, hyper, iconf, state, step, decay_mask, l2_scale):
    """One optimizer step over the whole parameter vector.

    plain SGD:    p -= lr * g
    L2:           g += l2 * l2_scale * p on weights (decay_mask 1), not biases
    momentum SGD: v = mu v - lr g;  p += v            (scikit-learn's form; with a constant
                  nesterov: p += mu v - lr g           lr it equals PyTorch's to rounding)
    Adam:         m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
                  p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)   (the paper's)
    """
    n = params.shape[0]
    if is_plain_sgd(hyper, iconf):
        for p in range(n):
            params[p] -= lr * grad[p]
        return
    l2 = hyper[H_L2] * l2_scale
    if l2 != 0.0:
        for p in range(n):
            grad[p] += l2 * decay_mask[p] * params[p]
    step[0] += 1
    if iconf[I_OPTIMIZER] == ADAM:
        b1 = hyper[H_BETA1]
        b2 = hyper[H_BETA2]
        eps = hyper[H_EPS]
        c1, c2 = adam_scales(hyper, step[0])
        for p in range(n):
            g = grad[p]
            m = b1 * state[0, p] + (1.0 - b1) * g
            v = b2 * state[1, p] + (1.0 - b2) * g * g
            state[0, p] = m
            state[1, p] = v
            params[p] -= lr * (m * c1) / (math.sqrt(v * c2) + eps)
        return
    mu = hyper[H_MOMENTUM]
    nesterov = iconf[I_NESTEROV] != 0
    for p in range(n):
        v = mu * state[0, p] - lr * grad[p]
        state[0, p] = v
        if nesterov:
            params[p] += mu * v - lr * grad[p]
        else:
            params[p] += v


@njit(**JIT)
def l2_penalty(params, hyper, decay_mask):
    """(l2 / 2) * sum of squared weights: what L2 adds to the recorded loss."""
    l2 = hyper[H_L2]
    if l2 == 0.0:
        return 0.0
    total = 0.0
    for p in range(params.shape[0]):
        total += decay_mask[p] * params[p] * params[p]
    return 0.5 * l2 * total
