"""Forward and backward passes of a dense network over the flat parameter vector.

Data layout: the activations of a batch of ``nb`` samples are kept FEATURE-major, one
contiguous row of nb values per unit: layer l's block in the flat buffer ``acts`` starts
at ``a_off[l]`` and holds sizes[l] rows of nb values.  The innermost loops therefore run
over samples: they vectorize (SIMD) while every dot product is still summed over the
inputs in their natural order, so no sum is reassociated (PERF-NOTES.md).  The same
layout with nb == 1 is the one-sample path, whose loops run over units instead.

Parameters: layer l's weights are a row-major (sizes[l], sizes[l+1]) block at
``w_off[l]``, its biases a block of sizes[l+1] at ``b_off[l]`` (-1 without biases);
``x @ W + b`` is the forward rule, as in the tutorials.

Wide layers go through BLAS (np.dot on contiguous 2-D views), narrow ones through loops,
chosen per layer by the amount of work (config.BLAS_MIN_WORK); ``blas_min_work < 0``
disables BLAS.
"""
import numpy as np
from numba import njit

from .activations import activate_inplace, mul_derivative_inplace
from .config import JIT


@njit(**JIT)
def _use_blas(n_in, n_out, nb, blas_min_work):
    return blas_min_work >= 0 and nb > 1 and n_in * n_out * nb >= blas_min_work


@njit(**JIT)
def _affine(params, wo, bo, n_in, n_out, a_in, z, nb, blas_min_work):
    """z (n_out rows of nb) <- a_in (n_in rows of nb) @ W + b, feature-major."""
    w = params[wo:wo + n_in * n_out]
    if _use_blas(n_in, n_out, nb, blas_min_work):
        np.dot(w.reshape((n_in, n_out)).T, a_in.reshape((n_in, nb)), z.reshape((n_out, nb)))
    elif nb == 1:
        for j in range(n_out):
            z[j] = w[j] * a_in[0]
        for i in range(1, n_in):
            ai = a_in[i]
            row = i * n_out
            for j in range(n_out):
                z[j] += w[row + j] * ai
    else:
        for j in range(n_out):
            w0 = w[j]
            zj = j * nb
            for s in range(nb):
                z[zj + s] = w0 * a_in[s]
        for i in range(1, n_in):
            ai = i * nb
            row = i * n_out
            for j in range(n_out):
                wij = w[row + j]
                zj = j * nb
                for s in range(nb):
                    z[zj + s] += wij * a_in[ai + s]
    if bo >= 0:
        for j in range(n_out):
            bj = params[bo + j]
            zj = j * nb
            for s in range(nb):
                z[zj + s] += bj


@njit(**JIT)
def forward(params, sizes, w_off, b_off, acts, buf, a_off, z_out, nb, bits, blas_min_work):
    """Forward pass of a batch whose inputs are already in buf's layer-0 block.

    buf:   flat activations buffer; layer l's block at a_off[l], sizes[l] rows of nb.
    z_out: (sizes[-1] * nb,) receives the output layer's pre-activation (for stable bce).
    bits:  int64 scratch, len >= max(sizes) * nb.
    """
    n_layers = sizes.shape[0] - 1
    for l in range(n_layers):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        a_in = buf[a_off[l]:a_off[l] + n_in * nb]
        z = buf[a_off[l + 1]:a_off[l + 1] + n_out * nb]
        _affine(params, w_off[l], b_off[l], n_in, n_out, a_in, z, nb, blas_min_work)
        if l == n_layers - 1:
            z_out[:n_out * nb] = z
        activate_inplace(z, acts[l], bits)


@njit(**JIT)
def _weight_grad(a_in, delta, g, n_in, n_out, nb, blas_min_work):
    """g (n_in, n_out) <- a_in (n_in rows of nb) @ delta^T, each entry summed over samples
    in order.  The sample loop is outermost so the n_in * n_out running sums are
    independent chains the CPU overlaps, instead of one latency-bound chain per entry."""
    if _use_blas(n_in, n_out, nb, blas_min_work):
        np.dot(a_in.reshape((n_in, nb)), delta.reshape((n_out, nb)).T, g.reshape((n_in, n_out)))
        return
    for i in range(n_in):
        ai = a_in[i * nb]
        row = i * n_out
        for j in range(n_out):
            g[row + j] = ai * delta[j * nb]
    for s in range(1, nb):
        for i in range(n_in):
            ai = a_in[i * nb + s]
            row = i * n_out
            for j in range(n_out):
                g[row + j] += ai * delta[j * nb + s]


@njit(**JIT)
def _back_delta(params, wo, n_in, n_out, delta, delta_in, nb, blas_min_work):
    """delta_in (n_in rows of nb) <- W (n_in, n_out) @ delta (n_out rows of nb)."""
    w = params[wo:wo + n_in * n_out]
    if _use_blas(n_in, n_out, nb, blas_min_work):
        np.dot(w.reshape((n_in, n_out)), delta.reshape((n_out, nb)), delta_in.reshape((n_in, nb)))
        return
    for i in range(n_in):
        row = i * n_out
        di = i * nb
        w0 = w[row]
        for s in range(nb):
            delta_in[di + s] = w0 * delta[s]
        for j in range(1, n_out):
            wij = w[row + j]
            dj = j * nb
            for s in range(nb):
                delta_in[di + s] += wij * delta[dj + s]


@njit(**JIT)
def backward(params, sizes, w_off, b_off, acts, buf, a_off, dbuf, grad, nb, blas_min_work):
    """Gradient of the batch loss into ``grad`` (same layout as params).

    On entry dbuf's output block (at a_off[-1]) holds dLoss/dz of the output layer
    (see losses.output_delta); dbuf has buf's layout and is overwritten.
    """
    n_layers = sizes.shape[0] - 1
    for l in range(n_layers - 1, -1, -1):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        a_in = buf[a_off[l]:a_off[l] + n_in * nb]
        delta = dbuf[a_off[l + 1]:a_off[l + 1] + n_out * nb]
        wo = w_off[l]
        _weight_grad(a_in, delta, grad[wo:wo + n_in * n_out], n_in, n_out, nb, blas_min_work)
        bo = b_off[l]
        if bo >= 0:
            for j in range(n_out):
                acc = delta[j * nb]
                for s in range(1, nb):
                    acc += delta[j * nb + s]
                grad[bo + j] = acc
        if l > 0:
            delta_in = dbuf[a_off[l]:a_off[l] + n_in * nb]
            _back_delta(params, wo, n_in, n_out, delta, delta_in, nb, blas_min_work)
            mul_derivative_inplace(delta_in, a_in, acts[l - 1])
