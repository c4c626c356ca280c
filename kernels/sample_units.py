"""One sample's layer, a range of its units at a time: the loops of per-sample SGD
(sample.py).

``forward_units`` computes units j0 .. j1 - 1 of a layer's output, ``backward_rows``
back-propagates through and updates rows i0 .. i1 - 1 of its weights.  Each unit's
chain (and each row's) is the same whatever the range.  sample.py calls them over whole
layers; sample_share.py calls forward_units on a thread's block of a layer's columns
(laid out as a layer of that many units: the same chains).
"""
from numba import njit, uint64

from .config import INNER, refuse_python_calls
from .tiles import row_product
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
    # each unit's chain in a vector register over all of the layer's inputs
    # (tiles.row_product), stored once: the loop this replaces kept the chains in h,
    # four rows per pass over them, and its float32 took as long as its float64 (perf,
    # W4a H=256: 21.2 against 21.5 ms an epoch)
    row_product(h, ai, params, wo + j0, n_out, h, zo + j0, n_in, j1 - j0)
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
            d[ai + i] = row_dot_step(params, row, d, zo, n_out, a, lr)
        else:
            for j in range(n_out):
                params[row + j] = plain_step(params[row + j], a * d[zo + j], lr)
    if propagate:
        # the derivative in a loop of its own, which vectorizes.  With it in the rows'
        # loop and row_dot_step's vector tail, this function grew past what LLVM
        # inlines into a generated kernel and specializes to its constant sizes (LLVM's
        # remarks: cost 540-635 against 438): float32 fits then ran 8-19% slower, not
        # faster.  Both changes together, a per-sample epoch in-process, paired:
        # 32-16-16-10 float32 0.75-0.81x the time before, float64 0.95-0.96x;
        # 32-16-16-16 0.85x and 0.95x (docs/PERFORMANCE-HISTORY.md,
        # *Per-sample rows past their lanes*)
        for i in range(i0, i1):
            d[ai + i] = times_derivative(d[ai + i], h[ai + i], prev_code)


refuse_python_calls(globals())  # the INNER functions: TypeError from Python, not a crash
