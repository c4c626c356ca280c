"""A batch of samples through the network: forward, loss, backward and update, on rows.

Layout: the activations of a batch of ``nb`` samples are kept FEATURE-major, one
contiguous row of nb values per unit: layer l's block in the flat buffer ``acts`` starts
at ``a_off[l]`` (options.make_work) and holds sizes[l] rows of nb values.  The
innermost loops therefore run over samples: they vectorize (SIMD) while every dot
product is still summed over the inputs in their natural order, so no sum is
reassociated (PERF-NOTES.md).  With nb == 1 the forward loops run over units instead.

Wide layers go through matrix products (gemm.py, chosen per layer and batch by
``uses_products``), narrow ones through loops.  The forward and back-propagated
products compute the same chains either way; the weight gradient of the loops is
rules.dot4's interleaved chains, that of the products one chain (gemm.py) -- which is why the
choice depends on sizes only, never on what happens to be compiled.

Index arithmetic in the sample loops is unsigned (uint64): for a signed index of unknown
sign Numba adds a negative-index wraparound to every access, which kept LLVM from
vectorizing (a 4x4 layer over 100 samples: 900 ns signed, 200 ns unsigned).  All operands
of such an index must be uint64: mixing uint64 and int64 makes Numba compute in float64.

"""
import numpy as np
from numba import njit, uint64

from . import gemm
from .config import INNER, PRODUCT_MIN_WEIGHTS, refuse_python_calls
from .intrinsics import address, fma, like
from .pool import LAYER_DELTA, LAYER_FORWARD, LAYER_WEIGHTS, SPLIT_MIN_WORK, call_layer
from .rows import ANY, LEAF, activate_rows, add_bias, bias_gradient, derivative_rows
from .rules import (CROSS_ENTROPY, SOFTMAX, cross_entropy_column, delta_scale, dot4,
                    is_combined, loss_of_sum, loss_sum, loss_uses_z, output_delta, plain_step,
                    softmax_column)
from .tiles import lanes_of, transpose_block

@njit(**LEAF)
def uses_products(n_in, n_out, nb, product_min_work):
    """Whether a layer's products go through gemm rather than the loops: at least
    PRODUCT_MIN_WEIGHTS weights and one product, n_in * n_out * nb, of at least
    product_min_work multiply-adds (config.PRODUCT_MIN_WORK; -1: never)."""
    return (product_min_work >= 0 and nb > 1 and n_in * n_out >= PRODUCT_MIN_WEIGHTS
            and n_in * n_out * nb >= product_min_work)


# How a layer's products are computed, a constant when Numba compiles the functions that
# read it (LAYER_FUNCTIONS): BY_SIZE asks uses_products of every layer and batch (the
# products and the loops both compiled); ALL_PRODUCTS and ALL_LOOPS are the forms for
# calls whose every layer and batch takes that one way (fastbp/_dispatch.py:
# layer_form), in which Numba drops the other before it types anything -- passes.py
# compiles their units, and a forward or backward unit without the loops compiles in
# about two thirds of the time.  Every form takes the way uses_products would with the
# Net's threshold of config.PRODUCT_MIN_WORK (the narrow forms do not read
# net.product_min_work; BY_SIZE does, for the tests' Nets of other thresholds): the
# same numbers.
BY_SIZE, ALL_PRODUCTS, ALL_LOOPS = range(3)
LAYERS = BY_SIZE
LAYER_FUNCTIONS = ("affine", "_weight_grad", "_back_delta")


@njit(**LEAF)
def _matmul(net, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """c <- alpha * op(a) @ op(b) + beta * c (gemm.call's contract): on BLAS when the
    product is large enough for its threads to share (net.blas_min_work), else on the
    fit's gemm unit (the pooled unit, with the pool's address, on several threads)."""
    if net.blas != 0 and m * n * k >= net.blas_min_work:
        gemm.call(net.blas, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    elif net.pool != 0:
        gemm.call_pooled(net.gemm, net.pool, trans_a, trans_b, m, n, k, alpha, a, lda, b,
                         ldb, beta, c, ldc)
    else:
        gemm.call(net.gemm, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


# ---------------------------------------------------------------------------- forward
@njit(**LEAF)
def affine(params, net, wo, bo, n_in, n_out, a_in, z, nb):
    """z (n_out rows of nb) <- a_in (n_in rows of nb) @ W + b: each z the fused
    multiply-add chain over the inputs in order from the first product, then + b."""
    if LAYERS == ALL_PRODUCTS or (LAYERS == BY_SIZE and uses_products(
            n_in, n_out, nb, net.product_min_work)):
        # z (n_out, nb) = W^T (W is n_in rows of n_out) @ a_in (n_in, nb)
        _matmul(net, True, False, n_out, nb, n_in, 1.0, address(params, wo), n_out,
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
        add_bias(z, params, bo, 0, n_out, 0, nb, nb)


# Whether forward and backward hand a wide layer to the fit's thread pool: a constant
# when Numba compiles them, which passes.py sets False for the units of fits that run on
# one thread, so their code has no branch to the pool (a first fit compiles less).
POOLED = True

# The activation and loss codes (rules.py) a unit is compiled for (passes.py: Build):
# ANY (rows.py) reads them from the Net at run time, so the code of every activation and
# loss is compiled; a code makes the passes read that constant instead, and Numba drops
# the others' code before it types anything.  HIDDEN_ACT: every hidden layer's
# activation (forward, backward); OUTPUT_ACT: the output layer's (forward,
# output_deltas); LOSS: the loss (output_deltas, batch_loss).  The dispatcher compiles a
# unit for a Net's own codes; one for other codes would compute other functions.
HIDDEN_ACT = ANY
OUTPUT_ACT = ANY
LOSS = ANY
# The activation a copy of _activate is compiled for (as rows.py's ACTIVATION).  A unit
# for constant codes calls copies for its hidden and output codes (passes.py); here
# both names are _activate itself.
ACTIVATION = ANY


@njit(**LEAF)
def _shared(net, n_in, n_out, nb):
    """Whether a layer's products and element-wise steps go to the fit's thread pool
    (pool.call_layer): a pool, products, at least pool.SPLIT_MIN_WORK multiply-adds, and
    none of them large enough for BLAS."""
    work = n_in * n_out * nb
    return (net.pool != 0 and uses_products(n_in, n_out, nb, net.product_min_work)
            and work >= SPLIT_MIN_WORK and not (net.blas != 0 and work >= net.blas_min_work))


@njit(**INNER)
def forward(params, net, acts, a_off, nb, z_out, z0_ready):
    """Forward pass of a batch whose inputs are already in acts' layer-0 block -- or,
    with ``z0_ready``, whose first layer's z is already in its block (sparse inputs,
    sparse.py).  z_out receives the output layer's pre-activation (bce, cross_entropy,
    poisson need it) when it is long enough; pass an empty array to skip the copy."""
    sizes = net.sizes
    n_layers = sizes.shape[0] - 1
    for l in range(n_layers):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        zo = a_off[l + 1]
        z = acts[zo:zo + n_out * nb]
        a_in = acts[a_off[l]:a_off[l] + n_in * nb]
        code = net.acts[l]
        keep_z = l == n_layers - 1 and z_out.shape[0] >= n_out * nb
        first_ready = z0_ready and l == 0
        if POOLED and _shared(net, n_in, n_out, nb) and not keep_z and code != SOFTMAX \
                and not first_ready:
            bo = net.b_off[l]
            call_layer(net.pool, LAYER_FORWARD, True, False, n_out, nb, n_in, 1.0,
                       address(params, net.w_off[l]), n_out, address(a_in, 0), nb, 0.0,
                       address(z, 0), nb, code, address(params, max(bo, 0)),
                       address(z, 0), nb, 0.0, bo >= 0, False)
            continue
        if not first_ready:
            affine(params, net, net.w_off[l], net.b_off[l], n_in, n_out, a_in, z, nb)
        if keep_z:
            for s in range(n_out * nb):
                z_out[s] = z[s]
        if HIDDEN_ACT == ANY or OUTPUT_ACT == ANY:
            _activate(z, code, n_out, nb)
        elif HIDDEN_ACT == OUTPUT_ACT or l == n_layers - 1:  # one copy when they share it
            _activate_output(z, code, n_out, nb)
        else:
            _activate_hidden(z, code, n_out, nb)


@njit(**LEAF)
def _activate(z, code, n_out, nb):
    """A layer's activation ``code`` over its block z (n_out rows of nb): softmax over
    each sample's column, any other unit by unit.  Copied for a constant code (rows.py:
    ACTIVATION; the units' _activate_hidden and _activate_output, passes.py), only that
    code's loop."""
    if ACTIVATION == SOFTMAX or ACTIVATION == ANY and code == SOFTMAX:
        u_nb = uint64(nb)
        for s in range(u_nb):
            softmax_column(z, s, u_nb, n_out)
    else:
        activate_rows(z, code)


_activate_hidden = _activate_output = _activate


# ------------------------------------------------------------------------ loss, delta
@njit(**INNER)
def batch_loss(acts, oo, y, z, w, code, k, nb):
    """Loss of one batch (float64): outputs at acts[oo:] and targets y, k rows of nb;
    z the output pre-activations (bce, cross_entropy, poisson); w the sample weights or
    empty.  Each output's row is summed in the model's dtype (rules.loss_sum), the rows'
    sums added in float64."""
    total = np.float64(0.0)  # not 0.0: in Python a float32 row sum would make it float32
    uo = uint64(oo)  # unsigned offsets keep the loops vectorizable (module docstring)
    u_nb = uint64(nb)
    weighted = w.shape[0] > 0
    # (the constant compared first, as in rows.py: a unit for another loss drops this
    # branch before Numba inlines cross_entropy_column; its loss_sum is rules.loss_sum's
    # copy for its loss, passes.py)
    if LOSS == CROSS_ENTROPY or LOSS == ANY and code == CROSS_ENTROPY:
        for s in range(u_nb):
            ls = cross_entropy_column(z, y, s, u_nb, k)
            total += w[s] * ls if weighted else ls
        return loss_of_sum(total, CROSS_ENTROPY, k, nb)
    code = code if LOSS == ANY else LOSS
    # output by output, each row's terms in rules.loss_sum's chains
    zs = z if loss_uses_z(code) else y  # (not read)
    for j in range(uint64(k)):
        row = j * u_nb
        total += loss_sum(acts[uo + row:], y[row:], zs[row:], w, nb, code)
    return loss_of_sum(total, code, k, nb)


@njit(**INNER)
def output_deltas(acts, oo, y, deltas, w, loss, act, k, nb):
    """deltas[oo:] (k rows of nb) <- dLoss/dz of the output layer, times the sample
    weights."""
    loss = loss if LOSS == ANY else LOSS
    act = act if OUTPUT_ACT == ANY else OUTPUT_ACT
    uo = uint64(oo)
    u_nb = uint64(nb)
    scale = like(delta_scale(loss, act, k, nb), acts)  # in the model's dtype
    combined = is_combined(loss, act)
    for s in range(uint64(k * nb)):
        deltas[uo + s] = output_delta(acts[uo + s], y[s], scale, act, combined)
    if w.shape[0] > 0:
        for j in range(uint64(k)):
            row = uo + j * u_nb
            for s in range(u_nb):
                deltas[row + s] *= w[s]


# --------------------------------------------------------------------------- backward
@njit(**LEAF)
def _weight_grad(net, a_in, delta, out, go, n_in, n_out, nb, lr, descend):
    """The layer's weight gradient g = a_in @ delta^T (n_in, n_out): written to out[go:]
    or, with ``descend``, applied there as the plain step out - lr * g (the products
    round -lr * g, the same value negated, then add: the same numbers).
    a_in: n_in rows of nb, delta: n_out rows of nb."""
    if LAYERS == ALL_PRODUCTS or (LAYERS == BY_SIZE and uses_products(
            n_in, n_out, nb, net.product_min_work)):
        alpha, beta = (-lr, 1.0) if descend else (1.0, 0.0)
        _matmul(net, False, True, n_in, n_out, nb, alpha, address(a_in, 0), nb,
                address(delta, 0), nb, beta, address(out, go), n_out)
        return
    block = out[go:go + n_in * n_out]
    u_nb = uint64(nb)
    u_out = uint64(n_out)
    for i in range(uint64(n_in)):
        row = i * u_out
        for j in range(u_out):
            g = dot4(a_in, i * u_nb, delta, j * u_nb, u_nb)
            if descend:
                block[row + j] = plain_step(block[row + j], g, lr)
            else:
                block[row + j] = g


@njit(**LEAF)
def _back_delta(params, net, wo, n_in, n_out, delta, delta_in, nb):
    """delta_in (n_in rows of nb) <- W (n_in, n_out) @ delta (n_out rows of nb)."""
    if LAYERS == ALL_PRODUCTS or (LAYERS == BY_SIZE and uses_products(
            n_in, n_out, nb, net.product_min_work)):
        _matmul(net, False, False, n_in, nb, n_out, 1.0, address(params, wo), n_out,
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


@njit(**INNER)
def backward(params, net, acts, a_off, deltas, out, nb, lr, descend, input_layer):
    """Gradient of the batch loss into ``out`` (params' layout); with ``descend`` (the
    plain rule) each layer's gradient is instead applied to ``out`` = params as the
    plain step, once the layer's back-propagated delta (which reads the weights before
    the step) is computed: no gradient stored, half the memory traffic on wide layers.

    On entry deltas' output block holds dLoss/dz of the output layer (output_deltas);
    deltas has acts' layout and is overwritten.  Without ``input_layer`` the pass stops
    before layer 0's gradient (sparse inputs: sparse.py computes it)."""
    sizes = net.sizes
    n_layers = sizes.shape[0] - 1
    last = 0 if input_layer else 1
    for l in range(n_layers - 1, last - 1, -1):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        ai = a_off[l]
        do = a_off[l + 1]
        a_in = acts[ai:ai + n_in * nb]
        delta = deltas[do:do + n_out * nb]
        delta_in = deltas[ai:ai + n_in * nb]
        wo = net.w_off[l]
        bo = net.b_off[l]
        if POOLED and _shared(net, n_in, n_out, nb):
            # with the pool: the delta below (and its derivative), then the weights (and
            # biases), each job's element-wise steps on the units of its product's piece
            if l > 0:
                call_layer(net.pool, LAYER_DELTA, False, False, n_in, nb, n_out, 1.0,
                           address(params, wo), n_out, address(delta, 0), nb, 0.0,
                           address(delta_in, 0), nb, net.acts[l - 1], address(delta_in, 0),
                           address(a_in, 0), nb, np.float64(lr), False, False)
            alpha, beta = (-lr, 1.0) if descend else (1.0, 0.0)
            call_layer(net.pool, LAYER_WEIGHTS, False, True, n_in, n_out, nb,
                       np.float64(alpha), address(a_in, 0), nb, address(delta, 0), nb,
                       np.float64(beta), address(out, wo), n_out, 0, address(out, max(bo, 0)),
                       address(delta, 0), nb, np.float64(lr), bo >= 0, descend)
            continue
        if l > 0:
            _back_delta(params, net, wo, n_in, n_out, delta, delta_in, nb)
        _weight_grad(net, a_in, delta, out, wo, n_in, n_out, nb, lr, descend)
        if bo >= 0:
            bias_gradient(out, bo, delta, 0, n_out, nb, lr, descend)
        if l > 0:  # (a unit for a constant HIDDEN_ACT has a copy for that code)
            derivative_rows(delta_in, a_in, net.acts[l - 1])


# ----------------------------------------------------------------------- data loading
@njit(**INNER)
def gather(src, start, nb, perm, shuffle, dst, d0):
    """dst[d0 + i * nb + s] <- src[j, i] for the batch's samples j (perm[start + s] when
    shuffling, else start + s), s < nb, every column i of the sample-major src: blocks
    of a vector's width of samples by up to as many columns go through vector registers
    (tiles.transpose_block), the last nb % width samples one by one.  A copy: the same
    bits however it goes."""
    cols = src.shape[1]
    width = lanes_of(dst)
    full = nb - nb % width
    for b in range(0, full, width):
        for i in range(0, cols, width):
            count = min(width, cols - i)
            at = d0 + i * nb + b
            if shuffle:
                transpose_block(src, cols, i, perm, start + b, width, count, dst, at, nb)
            else:
                transpose_block(src, cols, i, None, start + b, width, count, dst, at, nb)
    for s in range(full, nb):
        j = perm[start + s] if shuffle else start + s
        for i in range(cols):
            dst[d0 + i * nb + s] = src[j, i]


@njit(**INNER)
def scatter(src, s0, nb, dst, start):
    """dst[start + s, i] <- src[s0 + i * nb + s]: the reverse of gather (no shuffle)."""
    for s in range(nb):
        for i in range(dst.shape[1]):
            dst[start + s, i] = src[s0 + i * nb + s]


@njit(**INNER)
def load_weights(sw, start, nb, perm, shuffle, w_batch):
    """The batch's sample weights (w_batch[:nb]), or an empty array without weights."""
    if sw.shape[0] == 0:
        return w_batch[:0]
    u_start = uint64(start)
    for s in range(uint64(nb)):
        w_batch[s] = sw[uint64(perm[u_start + s])] if shuffle else sw[u_start + s]
    return w_batch[:nb]


refuse_python_calls(globals())  # the INNER functions: TypeError from Python, not a crash
