"""Rows of rules: the element-wise steps of a batch, on units' rows of nb samples.

A layer's block in a batch's buffers holds one row of nb values per unit (batch.py).
These apply the rules (rules.py) to a range of those rows -- or of their columns --
and are called over the whole block by batch.py and the lanes, and over one thread's
piece of it by pool.py, which gives the same numbers: every element is computed alone.
"""

from numba import njit, uint64

from .config import INNER, refuse_python_calls
from .rules import (ANY, EXP, RELU, SIGMOID, TANH, exp_output, plain_step, relu, relu_back,
                    sigmoid, sigmoid_back, sum4, tanh, tanh_back)

LEAF = dict(INNER, inline="always")  # small helpers inlined into the passes that call them

# The activation a copy of activate_rows / derivative_rows is compiled for (the batch
# passes' units, kernels/passes.py): the loop of that code alone, its ``code`` argument
# unread.  ANY (rules.ANY): the loop of the code the argument names.  A constant leaves
# the other loops out before Numba inlines what they call.
ACTIVATION = ANY


@njit(**LEAF)
def activate_rows(z, code):
    """z[s] <- f(z[s]) for activation ``code`` (rules.activate) over a block of rows:
    one loop per activation, so each loop is branch-free and vectorizes."""
    if ACTIVATION == SIGMOID or ACTIVATION == ANY and code == SIGMOID:
        for s in range(z.shape[0]):
            z[s] = sigmoid(z[s])
    elif ACTIVATION == RELU or ACTIVATION == ANY and code == RELU:
        for s in range(z.shape[0]):
            z[s] = relu(z[s])
    elif ACTIVATION == TANH or ACTIVATION == ANY and code == TANH:
        for s in range(z.shape[0]):
            z[s] = tanh(z[s])
    elif ACTIVATION == EXP or ACTIVATION == ANY and code == EXP:
        for s in range(z.shape[0]):
            z[s] = exp_output(z[s])


@njit(**LEAF)
def derivative_rows(delta, a, code):
    """delta[s] <- delta[s] * f'(z[s]) (rules.times_derivative) over a block of rows."""
    if ACTIVATION == SIGMOID or ACTIVATION == ANY and code == SIGMOID:
        for s in range(delta.shape[0]):
            delta[s] = sigmoid_back(delta[s], a[s])
    elif ACTIVATION == RELU or ACTIVATION == ANY and code == RELU:
        for s in range(delta.shape[0]):
            delta[s] = relu_back(delta[s], a[s])
    elif ACTIVATION == TANH or ACTIVATION == ANY and code == TANH:
        for s in range(delta.shape[0]):
            delta[s] = tanh_back(delta[s], a[s])


@njit(**LEAF)
def add_bias(z, params, bo, j0, j1, s0, s1, nb):
    """z[j, s] += params[bo + j] for rows j0 <= j < j1 and columns s0 <= s < s1 of z
    (rows of nb)."""
    u_nb = uint64(nb)
    for j in range(j0, j1):
        bj = params[bo + j]
        zj = uint64(j) * u_nb
        for s in range(uint64(s0), uint64(s1)):
            z[zj + s] += bj


@njit(**LEAF)
def bias_gradient(out, bo, delta, j0, j1, nb, lr, descend):
    """The bias gradient of units j0 <= j < j1, the sum over the batch of delta's row j
    (rules.sum4): written to out[bo + j] or, with ``descend``, applied there as the
    plain step."""
    u_nb = uint64(nb)
    for j in range(j0, j1):
        g = sum4(delta, uint64(j) * u_nb, u_nb)
        if descend:
            out[bo + j] = plain_step(out[bo + j], g, lr)
        else:
            out[bo + j] = g


refuse_python_calls(globals())  # the INNER functions: TypeError from Python, not a crash
