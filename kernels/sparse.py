"""Sparse inputs: the first layer reads a batch's rows of a CSR matrix directly.

A sparse data set (options.SparseRows) never becomes dense: a batch's first-layer
pre-activations are summed over each sample's stored entries only, and its first
weight gradient touches only the weight rows of the features the batch holds.  The
rest of the network sees the same blocks as with dense inputs (batch.py), so every
later layer, loss and update is the dense path's.

The training loops (loops.py) call sparse_first_z where dense rows are gathered into
acts' layer-0 block, and sparse_first_gradient after the backward pass, in the entries
for sparse inputs only (a compile-time constant): a dense fit compiles none of this.

Order of operations: each z is the fused multiply-add chain over the sample's stored
features in index order (CSR rows sorted, no duplicates: fastbp/_sparse.py makes them
so), then + b, which is the dense chain without its zero terms; each weight gradient is
one chain over the batch's samples in order, as the products' (gemm.py).  Dense fits of
the same data agree to rounding (bit for bit where the dense layer uses products).
"""
from numba import njit, uint64

from .config import INNER, refuse_python_calls
from .intrinsics import fma
from .rows import add_bias, bias_gradient
from .rules import plain_step


@njit(**INNER)
def sparse_first_z(params, net, x, start, nb, perm, shuffle, acts, a_off):
    """Layer 0's pre-activations z = x W + b of the batch's samples (perm[start + s]
    when shuffling, else start + s) into acts' block a_off[1] (sizes[1] rows of nb)."""
    n_out = net.sizes[1]
    wo = net.w_off[0]
    z = acts[a_off[1]:a_off[1] + n_out * nb]
    acc = x.column  # one sample's n_out sums, contiguous (z's rows are nb apart)
    u_out = uint64(n_out)
    u_nb = uint64(nb)
    for s in range(nb):
        r = perm[start + s] if shuffle else start + s
        for j in range(u_out):
            acc[j] = 0.0
        for p in range(x.indptr[r], x.indptr[r + 1]):
            v = x.values[p]
            row = uint64(wo + x.indices[p] * n_out)
            for j in range(u_out):
                acc[j] = fma(params[row + j], v, acc[j])
        us = uint64(s)
        for j in range(u_out):
            z[j * u_nb + us] = acc[j]
    if net.b_off[0] >= 0:
        add_bias(z, params, net.b_off[0], 0, n_out, 0, nb, nb)


@njit(**INNER)
def sparse_first_gradient(net, x, start, nb, perm, shuffle, deltas, a_off, out, lr,
                          descend):
    """Layer 0's weight and bias gradients from the batch's rows and dLoss/dz of layer
    0's units (deltas' block a_off[1]).  With ``descend`` (the plain rule, out = params)
    the step is applied to the weight rows the batch touches -- the other rows' gradient
    is zero -- through the scratch x.grad; else the gradient is written to out's whole
    first block, zeros included (a stateful rule steps every weight)."""
    n_in = net.sizes[0]
    n_out = net.sizes[1]
    wo = net.w_off[0]
    delta = deltas[a_off[1]:a_off[1] + n_out * nb]
    u_out = uint64(n_out)
    u_nb = uint64(nb)
    if descend:
        g = x.grad
        x.stamp[0] += 1  # this batch's mark: a row is zeroed the first time it is met
        mark = x.stamp[0]
    else:
        g = out[wo:wo + n_in * n_out]
        for i in range(g.shape[0]):
            g[i] = 0.0
        mark = 0
    col = x.column
    touched = 0
    for s in range(nb):
        r = perm[start + s] if shuffle else start + s
        us = uint64(s)
        for j in range(u_out):
            col[j] = delta[j * u_nb + us]
        for p in range(x.indptr[r], x.indptr[r + 1]):
            i = x.indices[p]
            v = x.values[p]
            row = uint64(i * n_out)
            if descend and x.row_mark[i] != mark:
                x.row_mark[i] = mark
                x.touched[touched] = i
                touched += 1
                for j in range(u_out):
                    g[row + j] = 0.0
            for j in range(u_out):
                g[row + j] = fma(v, col[j], g[row + j])
    if descend:
        for t in range(touched):
            row = uint64(x.touched[t] * n_out)
            w_row = uint64(wo) + row
            for j in range(u_out):
                out[w_row + j] = plain_step(out[w_row + j], g[row + j], lr)
    if net.b_off[0] >= 0:
        bias_gradient(out, net.b_off[0], delta, 0, n_out, nb, lr, descend)


refuse_python_calls(globals())  # the INNER functions: TypeError from Python, not a crash
