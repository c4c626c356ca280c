"""Norms of the weight blocks, for the bound that proves a chunk of training cannot
diverge (fastbp/_divergence.py)."""
import numpy as np
from numba import njit

from .config import JIT


@njit(**JIT)
def layer_norms(params, sizes, w_off, b_off, out):
    """out[l] = (max_j sum_i |W[i, j]|, max_i sum_j |W[i, j]|, max_j |b[j]|, sum of all
    |W[i, j]| and |b[j]|) for layer l's row-major (sizes[l], sizes[l+1]) weight block W and
    its biases b (none: 0).

    The first is the largest a unit's pre-activation can be per unit of input (the
    forward pass), the second the same for a delta sent back (the backward pass).  The
    last is non-finite exactly when a parameter is (or their sum overflows).
    """
    for layer in range(sizes.shape[0] - 1):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        col_sums = np.zeros(n_out, dtype=np.float64)
        w = params[w_off[layer]:w_off[layer] + n_in * n_out]
        max_row = 0.0
        for i in range(n_in):
            row = 0.0
            for j in range(n_out):
                v = abs(np.float64(w[i * n_out + j]))
                row += v
                col_sums[j] += v
            max_row = max(max_row, row)
        max_col = 0.0
        total = 0.0
        for j in range(n_out):
            max_col = max(max_col, col_sums[j])
            total += col_sums[j]
        max_b = 0.0
        if b_off[layer] >= 0:
            for j in range(n_out):
                v = abs(np.float64(params[b_off[layer] + j]))
                max_b = max(max_b, v)
                total += v
        out[layer, 0] = max_col
        out[layer, 1] = max_row
        out[layer, 2] = max_b
        out[layer, 3] = total
