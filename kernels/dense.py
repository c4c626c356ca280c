"""Forward and backward passes of a dense network over the flat parameter vector.

Data layout: the activations of a batch of ``nb`` samples are kept FEATURE-major, one
contiguous row of nb values per unit: layer l's block in the flat buffer ``buf`` starts
at ``a_off[l]`` and holds sizes[l] rows of nb values.  The innermost loops therefore run
over samples: they vectorize (SIMD) while every dot product is still summed over the
inputs in their natural order, so no sum is reassociated (PERF-NOTES.md).  With nb == 1
(one sample) the loops run over units instead.

Parameters: layer l's weights are a row-major (sizes[l], sizes[l+1]) block at
``w_off[l]``, its biases a block of sizes[l+1] at ``b_off[l]`` (-1 without biases);
``x @ W + b`` is the forward rule, as in the tutorials.

Wide layers go through matrix products (_matmul: tiles.tile_gemm, fastbp's register-tiled
gemm, or BLAS for the largest products when BLAS has several threads), narrow ones
through loops, chosen per layer by the amount of work (config.PRODUCT_MIN_WORK);
``product_min_work < 0`` keeps every layer on the loops.

Index arithmetic in the sample loops is unsigned (uint64): for a signed index of unknown
sign Numba adds a negative-index wraparound to every access, which kept LLVM from
vectorizing (a 4x4 layer over 100 samples: 900 ns signed, 200 ns unsigned).  All operands
of such an index must be uint64: mixing uint64 and int64 makes Numba compute in float64.
"""
from numba import njit, uint64

from .activations import (SOFTMAX, activate_inplace, fma, mul_derivative_inplace,
                          softmax_inplace)
from . import blas
from .config import BLAS_MIN_THREADS, BLAS_THREADED_MIN_WORK, JIT, PRODUCT_MIN_WEIGHTS
from .simd import lanes4
from .pointers import address
from .tiles import gemm_at


@njit(**JIT)
def _matmul(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """c <- alpha * op(a) @ op(b) + beta * c (blas.gemm's contract, a, b, c pointers:
    pointers.address): on the register tiles, or on BLAS when the product is large and
    BLAS would spread it over several threads (config.BLAS_THREADED_MIN_WORK)."""
    # bool(): the call sites pass literal flags, and Numba would compile one copy of each
    # gemm per combination (three of tile_gemm, whose tiles take seconds to compile)
    trans_a, trans_b = bool(trans_a), bool(trans_b)
    if m * n * k >= BLAS_THREADED_MIN_WORK and blas.threads() >= BLAS_MIN_THREADS:
        blas.gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    else:
        gemm_at(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


@njit(**JIT)
def layer_uses_products(n_in, n_out, nb, product_min_work):
    """Whether the layer's products go through _matmul rather than the loops
    (config.PRODUCT_MIN_WORK).  The weight gradient gains most: the loops of the forward
    and back-propagation vectorize across samples, the gradient's sums over samples do
    not (dot4 keeps four scalar lanes).  The generated and lanes kernels, which repeat
    the loops' order exactly, do not apply to a network with such a layer."""
    return (product_min_work >= 0 and nb > 1 and n_in * n_out >= PRODUCT_MIN_WEIGHTS
            and n_in * n_out * nb >= product_min_work)


@njit(**JIT)
def _affine(params, wo, bo, n_in, n_out, a_in, z, nb, product_min_work):
    """z (n_out rows of nb) <- a_in (n_in rows of nb) @ W + b.

    Index arithmetic is unsigned (see the module docstring); a_in and z are separate
    slices so LLVM can tell the rows apart.
    """
    if layer_uses_products(n_in, n_out, nb, product_min_work):
        # z (n_out, nb) = W^T (W is n_in rows of n_out) @ a_in (n_in, nb)
        _matmul(True, False, n_out, nb, n_in, 1.0, address(params, wo), n_out,
                address(a_in, 0), nb, 0.0, address(z, 0), nb)
    elif nb == 1:
        a0 = a_in[0]
        for j in range(n_out):
            z[j] = params[wo + j] * a0
        for i in range(1, n_in):
            a = a_in[i]
            row = wo + i * n_out
            for j in range(n_out):
                z[j] = fma(params[row + j], a, z[j])
    else:
        u_nb = uint64(nb)
        for j in range(n_out):
            w0 = params[wo + j]
            zj = uint64(j) * u_nb
            for s in range(u_nb):
                z[zj + s] = w0 * a_in[s]
        for i in range(1, n_in):
            ar = uint64(i) * u_nb
            row = wo + i * n_out
            for j in range(n_out):
                wij = params[row + j]
                zj = uint64(j) * u_nb
                for s in range(u_nb):
                    z[zj + s] = fma(wij, a_in[ar + s], z[zj + s])
    if bo >= 0:
        u_nb = uint64(nb)
        for j in range(n_out):
            bj = params[bo + j]
            zj = uint64(j) * u_nb
            for s in range(u_nb):
                z[zj + s] += bj


@njit(**JIT)
def forward(params, sizes, w_off, b_off, acts, buf, a_off, nb, bits, scale, z_out,
            product_min_work):
    """Forward pass of a batch whose inputs are already in buf's layer-0 block.

    buf:   flat activations buffer; layer l's block at a_off[l], sizes[l] rows of nb.
    bits, scale: int64 scratch of len >= max(sizes) * nb and its float64 view.
    z_out: receives the output layer's pre-activation (needed for a stable bce) when its
           length is at least sizes[-1] * nb; pass an empty array to skip the copy.
    """
    n_layers = sizes.shape[0] - 1
    for l in range(n_layers):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        zo = a_off[l + 1]
        _affine(params, w_off[l], b_off[l], n_in, n_out, buf[a_off[l]:a_off[l] + n_in * nb],
                buf[zo:zo + n_out * nb], nb, product_min_work)
        if l == n_layers - 1 and z_out.shape[0] >= n_out * nb:
            for s in range(n_out * nb):
                z_out[s] = buf[zo + s]
        if acts[l] == SOFTMAX:
            softmax_inplace(buf[zo:zo + n_out * nb], n_out, nb)
        else:
            activate_inplace(buf[zo:zo + n_out * nb], acts[l], bits, scale)


@njit(**JIT)
def dot4(x, xo, y, yo, n):
    """sum_s x[xo+s] * y[yo+s] for s < n, in four interleaved partial sums.

    A single running sum is one dependency chain (4 cycles per add); four chains run in
    parallel.  The order is fixed -- lane s % 4 (fused multiply-adds in increasing s),
    the tail s >= n - n % 4 into lane 0, then (l0 + l1) + (l2 + l3) -- so results are
    reproducible run to run.  The lanes are one explicit <4 x double> vector
    (simd.lanes4): LLVM's SLP vectorizer left them as four scalar chains.  x, y: 1-D
    arrays; offsets and n are unsigned (uint64).
    """
    q = n - (n & uint64(3))
    a0, a1, a2, a3 = lanes4(x, xo, y, yo, q)
    for s in range(q, n):
        a0 = fma(x[xo + s], y[yo + s], a0)
    return (a0 + a1) + (a2 + a3)


@njit(**JIT)
def sum4(x, xo, n):
    """sum_s x[xo+s] for s < n, in the lane order of dot4."""
    q = n - (n & uint64(3))
    a0, a1, a2, a3 = lanes4(x, xo, None, uint64(0), q)
    for s in range(q, n):
        a0 += x[xo + s]
    return (a0 + a1) + (a2 + a3)


@njit(**JIT)
def _weight_grad(a_in, delta, out, go, n_in, n_out, nb, product_min_work, lr, descend):
    """The layer's weight gradient g = a_in @ delta^T (n_in, n_out): written to
    out[go:] or, with ``descend``, applied there as the plain SGD step out -= lr * g, each
    entry of g rounded before its step (optim.update's numbers; the products round
    -lr * g, the same value negated, then add).  One dot4 over the samples per entry.

    a_in: n_in rows of nb, delta: n_out rows of nb.
    """
    if layer_uses_products(n_in, n_out, nb, product_min_work):
        alpha, beta = (-lr, 1.0) if descend else (1.0, 0.0)
        _matmul(False, True, n_in, n_out, nb, alpha, address(a_in, 0), nb, address(delta, 0),
                nb, beta, address(out, go), n_out)
        return
    block = out[go:go + n_in * n_out]
    u_nb = uint64(nb)
    u_out = uint64(n_out)
    for i in range(uint64(n_in)):
        row = i * u_out
        for j in range(u_out):
            g = dot4(a_in, i * u_nb, delta, j * u_nb, u_nb)
            if descend:
                block[row + j] -= lr * g
            else:
                block[row + j] = g


@njit(**JIT)
def _back_delta(params, wo, n_in, n_out, delta, delta_in, nb, product_min_work):
    """delta_in (n_in rows of nb) <- W (n_in, n_out) @ delta (n_out rows of nb)."""
    if layer_uses_products(n_in, n_out, nb, product_min_work):
        _matmul(False, False, n_in, nb, n_out, 1.0, address(params, wo), n_out,
                address(delta, 0), nb, 0.0, address(delta_in, 0), nb)
        return
    u_nb = uint64(nb)
    for i in range(n_in):
        row = wo + i * n_out
        dr = uint64(i) * u_nb
        w0 = params[row]
        for s in range(u_nb):
            delta_in[dr + s] = w0 * delta[s]
        for j in range(1, n_out):
            wij = params[row + j]
            dj = uint64(j) * u_nb
            for s in range(u_nb):
                delta_in[dr + s] = fma(wij, delta[dj + s], delta_in[dr + s])


@njit(**JIT)
def _backward(params, sizes, w_off, b_off, acts, buf, a_off, dbuf, out, nb, product_min_work,
              lr, descend):
    """backward; with ``descend`` each layer's gradient is applied to ``out`` (params) as
    the plain SGD step instead of stored, once the layer's back-propagated delta (which
    reads the weights before the step) is computed."""
    n_layers = sizes.shape[0] - 1
    for l in range(n_layers - 1, -1, -1):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        ai = a_off[l]
        do = a_off[l + 1]
        a_in = buf[ai:ai + n_in * nb]
        delta = dbuf[do:do + n_out * nb]
        if l > 0:
            delta_in = dbuf[ai:ai + n_in * nb]
            _back_delta(params, w_off[l], n_in, n_out, delta, delta_in, nb, product_min_work)
        _weight_grad(a_in, delta, out, w_off[l], n_in, n_out, nb, product_min_work, lr,
                     descend)
        bo = b_off[l]
        if bo >= 0:
            u_nb = uint64(nb)
            for j in range(n_out):
                g = sum4(delta, uint64(j) * u_nb, u_nb)
                if descend:
                    out[bo + j] -= lr * g
                else:
                    out[bo + j] = g
        if l > 0:
            mul_derivative_inplace(dbuf[ai:ai + n_in * nb], a_in, acts[l - 1])


@njit(**JIT)
def backward(params, sizes, w_off, b_off, acts, buf, a_off, dbuf, grad, nb, product_min_work):
    """Gradient of the batch loss into ``grad`` (same layout as params).

    On entry dbuf's output block (at a_off[-1]) holds dLoss/dz of the output layer
    (see losses.output_delta); dbuf has buf's layout and is overwritten.
    """
    # bool(): a literal flag would make Numba compile _backward twice (see _matmul)
    _backward(params, sizes, w_off, b_off, acts, buf, a_off, dbuf, grad, nb,
              product_min_work, 0.0, bool(False))


@njit(**JIT)
def backward_sgd(params, sizes, w_off, b_off, acts, buf, a_off, dbuf, lr, nb,
                 product_min_work):
    """backward and the plain SGD step params -= lr * gradient in one pass, the gradient
    never stored: the same numbers as backward then optim.update's plain rule, with half
    the memory traffic on wide layers (the step is the weight product's alpha = -lr,
    beta = 1) and no gradient buffer."""
    _backward(params, sizes, w_off, b_off, acts, buf, a_off, dbuf, params, nb,
              product_min_work, lr, bool(True))
