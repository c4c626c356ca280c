"""One sample's layer, a range of its units at a time: the loops of per-sample SGD
(sample.py).

``forward_units`` computes units j0 .. j1 - 1 of a layer's output, ``backward_rows``
back-propagates through and updates rows i0 .. i1 - 1 of its weights.  Each unit's
chain (and each row's) is the same whatever the range.  sample.py calls them over whole
layers; sample_share.py calls forward_units on a thread's block of a layer's columns
(laid out as a layer of that many units: the same chains).
"""
from numba import njit, uint64

from .config import INNER
from .intrinsics import fma
from .rules import (NARROW_UNITS, SIGMOID, activate, activate_narrow, plain_step,
                    row_dot_step, times_derivative)

# Called, not inlined (inline="always"): Numba's inlining made the per-sample entry take
# seconds longer to compile (asv_benchmarks: bench_cold_start), and the calls run as fast
# (bench_width)


@njit(**INNER)
def forward_units(params, wo, bo, has_bias, h, d, ai, zo, n_in, n_out, j0, j1, code,
                  keep_z):
    """h[zo + j] <- activation(sum_i params[wo + i * n_out + j] * h[ai + i] + bias) for
    j0 <= j < j1 (all offsets uint64); keep_z: z also into d[zo + j] (the stable BCE
    loss of the output layer)."""
    a0 = h[ai]
    for j in range(j0, j1):
        h[zo + j] = params[wo + j] * a0
    i = uint64(1)
    # four rows per pass over z (the same chain per unit): a quarter of the loads and
    # stores of z and of the loop overhead (measurably faster on W4a, H=16)
    while i + uint64(4) <= n_in:
        a1 = h[ai + i]
        a2 = h[ai + i + uint64(1)]
        a3 = h[ai + i + uint64(2)]
        a4 = h[ai + i + uint64(3)]
        r1 = wo + i * n_out
        r2 = r1 + n_out
        r3 = r2 + n_out
        r4 = r3 + n_out
        for j in range(j0, j1):
            z = fma(params[r1 + j], a1, h[zo + j])
            z = fma(params[r2 + j], a2, z)
            z = fma(params[r3 + j], a3, z)
            h[zo + j] = fma(params[r4 + j], a4, z)
        i += uint64(4)
    for i in range(i, n_in):
        a = h[ai + i]
        row = wo + i * n_out
        for j in range(j0, j1):
            h[zo + j] = fma(params[row + j], a, h[zo + j])
    if has_bias:
        for j in range(j0, j1):
            h[zo + j] += params[bo + j]
    if keep_z:
        for j in range(j0, j1):
            d[zo + j] = h[zo + j]
    if code == SIGMOID and n_out >= NARROW_UNITS:  # a loop that vectorizes
        for j in range(j0, j1):
            h[zo + j] = activate(h[zo + j], SIGMOID)
    else:
        for j in range(j0, j1):
            h[zo + j] = activate_narrow(h[zo + j], code)


@njit(**INNER)
def backward_rows(params, wo, n_out, h, d, ai, zo, i0, i1, lr, propagate, prev_code):
    """Plain SGD on rows i0 <= i < i1 of a layer's weights (offsets uint64), each
    updated right after its use: with ``propagate``, d[ai + i] <- the row's
    back-propagated sum (of the weights before the update) times the derivative of the
    layer below (``prev_code``)."""
    for i in range(i0, i1):
        row = wo + i * n_out
        a = h[ai + i]
        if propagate:  # back-propagate and update in one pass over the row
            acc = row_dot_step(params, row, d, zo, n_out, a, lr)
            d[ai + i] = times_derivative(acc, a, prev_code)
        else:
            for j in range(n_out):
                params[row + j] = plain_step(params[row + j], a * d[zo + j], lr)
