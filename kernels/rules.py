"""The math of backpropagation, each rule written once.

Every kernel -- full batch, mini-batch, per-sample, the lanes across models, the
kernels generated for one architecture, the CUDA kernel -- computes its activations,
derivatives, losses, output deltas, sums and updates by calling these functions (the
generated ones call them by name from their source).  They are scalar and
dtype-generic: a float32 model computes in float32 -- constants enter through
intrinsics.like, the sigmoid has a float32 exp (sigmoid32), the learning rate (once per
epoch) and the delta scale (once per batch) are rounded to float32 -- because Numba
types ``x * 1.0`` as float64, and a float64 step would halve the SIMD lanes and add
conversions.  A batch's loss sums each output's terms in the model's dtype, in sixteen
interleaved chains (loss_sum), and adds the outputs' sums in float64 (per-sample SGD,
whose batch is one sample, adds its terms in float64); the stateful steps
(momentum, Adam, L2) compute in the parameters' dtype, their float64 factors rounded
to it (stateful_step).

Conventions (DESIGN.md), for a batch of N samples and K outputs, sample weights w_s
(all 1 without weights):
    mse           = sum_s w_s sum_k (out - y)^2 / (N K)
    half_mse      = mse / 2                              (scikit-learn's squared error)
    sse           = 1/2 sum_s w_s sum_k (out - y)^2      (the tutorials' E; no mean)
    bce           = -sum_s w_s sum_k [y log p + (1-y) log(1-p)] / (N K),  p = sigmoid(z)
    cross_entropy = -sum_s w_s sum_k y log p / N,        p = softmax(z) over the K outputs
    poisson       = sum_s w_s sum_k [y log(y / p) - y + p] / N,  p = exp(z)
                                                   (scikit-learn's half Poisson deviance)
bce and cross_entropy are computed from the pre-activation z (log-sum-exp forms), exact
where p saturates, and poisson from z too (log p = z, also where p underflows); with a
sigmoid / softmax / exp output their delta is w_s (p - y) / (N K), w_s (p - y) / N and
w_s (p - y) / N ("combined").  Weights scale each sample's share and the mean still
divides by N, so per-sample SGD sees them too.

Derivatives are written in terms of the activation OUTPUT a = f(z) (all four functions
allow it), so the forward pass keeps only outputs.

Each rule is inlined into the kernel that calls it, and callable from Python too (the
tests, fastbp/_divergence.py).
"""
import math

import numpy as np
from numba import config, njit, types, uint64
from numba.extending import overload

from .config import INNER, JIT, refuse_python_calls
# Each rule is inlined at Numba's level into the function that calls it: compiled as a
# function of its own, every small rule added a noticeable part of a second to a first
# fit (a mini-batch fit compiled 47 functions instead of 27, and took half as long
# again).
RULE = dict(JIT, inline="always")
from .intrinsics import (LANES, _dot4_group, compiled_as, exp, float32_from_bits, float64_bits,
                         float64_from_bits, fma,
                         lanes4, lanes_dot, lanes_dot_step, like, LOSS_CHAINS, tail_dot,
                         tail_dot_step,
                         squared_error_sum)


IDENTITY = 0
SIGMOID = 1
RELU = 2
TANH = 3
SOFTMAX = 4  # output layer only, with the cross_entropy loss
EXP = 5      # output layer only, with the poisson loss (its log link)

MSE = 0
HALF_MSE = 1
SSE = 2
BCE = 3
CROSS_ENTROPY = 4
POISSON = 5

# The loss a copy of loss_sum is compiled for (the batch-loss units, kernels/passes.py,
# as rows.ACTIVATION for the activations): the loop of that loss alone, its ``code``
# argument unread.  ANY: the loop of the loss ``code`` names.  A constant leaves the
# other losses' loops out before Numba inlines what they call (a unit for the squared
# error then never copies the bce and poisson loops and their sixteen-chain tuples).
ANY = -1
LOSS = ANY

SGD = 0
ADAM = 1

CONSTANT = 0
INVSCALING = 1
STEP = 2
COSINE = 3

# ------------------------------------------------------------------------- activations
# exp(x) = 2**k * exp(r), x = k ln2 + r, |r| <= ln2/2.  ln2 is split in a high part with
# trailing zero bits (k * LN2_HI is exact) and a low correction (Cody-Waite reduction).
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
INV_LN2 = 1.44269504088896338700e00
# Below this exp underflows to subnormals; clamping keeps 2**k a normal number.  The
# float64 just above ln(2**-1022) = -708.39641853226410622...: a clamp any higher would
# return exp(clamp) for the z between it and that logarithm, where the sigmoid is still
# a normal number (tests/test_activations.py checks the sigmoid down to it).
EXP_MIN_ARG = -708.3964185322641
# 2**52 + 1023: k + this, for an integer -1023 <= k < 2**51, has the bits of 2**52 with
# k + 1023 in its low mantissa bits (sigmoid64)
EXP_BIAS_MAGIC = 4503599627371519.0


@njit(**RULE)
def exp_reduced(r):
    """exp(r) for |r| <= ln2/2: Taylor polynomial of degree 13 (truncation < 1e-17), Horner
    with fused multiply-adds (half the instructions and one rounding per step)."""
    return fma(_exp_series(r), r, 1.0)


@njit(**RULE)
def expm1_reduced(r):
    """exp(r) - 1 for |r| <= ln2/2, exp_reduced's polynomial without its constant term:
    r times 1 + r/2 + r^2/6 + ..., relatively accurate where exp(r) - 1 cancels."""
    return _exp_series(r) * r


@njit(**RULE)
def _exp_series(r):
    """(exp(r) - 1) / r to degree 12, the Horner steps exp_reduced and expm1_reduced
    share."""
    p = fma(1.0 / 6227020800.0, r, 1.0 / 479001600.0)
    p = fma(p, r, 1.0 / 39916800.0)
    p = fma(p, r, 1.0 / 3628800.0)
    p = fma(p, r, 1.0 / 362880.0)
    p = fma(p, r, 1.0 / 40320.0)
    p = fma(p, r, 1.0 / 5040.0)
    p = fma(p, r, 1.0 / 720.0)
    p = fma(p, r, 1.0 / 120.0)
    p = fma(p, r, 1.0 / 24.0)
    p = fma(p, r, 1.0 / 6.0)
    p = fma(p, r, 0.5)
    return fma(p, r, 1.0)


# float32: the same reduction with ln2 split for float32 (LN2_HI_32 has 12 trailing
# zero bits), Cephes' minimax polynomial for expf (within 1 ULP on |r| <= ln2/2), and a
# clamp that keeps 2**k a normal float32.
LN2_HI_32 = 0.693359375
LN2_LO_32 = -2.12194440e-4
# The float32 just above ln(2**-126) = -87.336544750553...: exp of it is the smallest
# normal float32 (1.1754997e-38 as exp_reduced32 computes it), so the sigmoid is within
# 2 ULP wherever its value is a normal float32.
EXP_MIN_ARG_32 = -87.33654022216797


@njit(**RULE)
def exp_reduced32(r):
    """exp(r) for |r| <= ln2/2 in float32: 1 + r + r^2 P(r), P of degree 5 (Cephes)."""
    return expm1_reduced32(r) + np.float32(1.0)


@njit(**RULE)
def expm1_reduced32(r):
    """exp(r) - 1 for |r| <= ln2/2 in float32: r + r^2 P(r) (exp_reduced32's)."""
    p = fma(np.float32(1.9875691500e-4), r, np.float32(1.3981999507e-3))
    p = fma(p, r, np.float32(8.3334519073e-3))
    p = fma(p, r, np.float32(4.1665795894e-2))
    p = fma(p, r, np.float32(1.6666665459e-1))
    p = fma(p, r, np.float32(5.0000001201e-1))
    return fma(p, r * r, r)


@njit(**RULE)
def sigmoid32(z):
    """sigmoid of a float32, computed in float32 (twice the lanes of float64): as
    sigmoid64, with exp_reduced32."""
    xs = max(-abs(z), np.float32(EXP_MIN_ARG_32))
    k = np.floor(xs * np.float32(INV_LN2) + np.float32(0.5))
    r = (xs - k * np.float32(LN2_HI_32)) - k * np.float32(LN2_LO_32)
    e = exp_reduced32(r) * float32_from_bits(np.int32((np.int32(k) + np.int32(127)) << 23))
    one = np.float32(1.0)
    return one / (one + e) if z >= 0 else e / (one + e)


def sigmoid(z):
    """1 / (1 + exp(-z)) in z's precision: sigmoid32 for a float32, else sigmoid64."""
    if isinstance(z, np.float32):
        return sigmoid32(z)
    return sigmoid64(z)


@overload(sigmoid)
def _sigmoid_typed(z):
    if z == types.float32:
        return lambda z: sigmoid32(z)
    return lambda z: sigmoid64(z)


@njit(**RULE)
def sigmoid64(z):
    """1 / (1 + exp(-z)), overflow-free, within 2 ULP, computed in float64.

    exp is taken only of -|z| <= 0 (clamped to EXP_MIN_ARG), by exp_reduced and a power
    of two built from its exponent bits: libm's exp is a call LLVM cannot vectorize,
    this is not (a loop of sigmoids over samples runs in SIMD), and it was half the
    training time of the tutorial nets with libm (PERF-NOTES.md)."""
    xs = max(-abs(np.float64(z)), EXP_MIN_ARG)
    k = np.floor(xs * INV_LN2 + 0.5)  # an integer, -1022 <= k <= 0, kept a float
    r = (xs - k * LN2_HI) - k * LN2_LO
    # 2**k from its exponent bits k + 1023, read off the float k + EXP_BIAS_MAGIC (exact:
    # an integer below 2**53, whose low bits are k + 1023) rather than converted: AVX2
    # has no vector conversion of float64 to int64, so the int64 k of math.floor (and
    # back) was eight scalar conversions per four sigmoids (a loop of float64 sigmoids
    # took 4.5 ns a value; 2.8 ns this way, the same bits)
    e = exp_reduced(r) * float64_from_bits(float64_bits(k + EXP_BIAS_MAGIC) << 52)
    return 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)


@njit(**RULE)
def sigmoid_libm(z):
    """1 / (1 + exp(-z)) with libm's exp, overflow-free.  Its latency is shorter than the
    13-step polynomial's, which wins when a sample's few units form one dependent chain
    (per-sample SGD of narrow layers: NARROW_UNITS)."""
    one = like(1.0, z)
    if z >= 0:
        return one / (one + exp(-z))
    e = exp(z)
    return e / (one + e)


# Per-sample layers narrower than this take sigmoid_libm, wider ones the vectorizable
# sigmoid: the faster choice on either side (W2b, the admissions 6-2-1 net, runs faster
# with libm; W4a at H = 64 with the polynomial).
NARROW_UNITS = 8


@njit(**RULE)
def relu(z):
    return z if z > 0 else like(0.0, z)


@njit(**RULE)
def activate(z, code):
    """f(z) for activation ``code`` (elementwise; softmax is softmax_column)."""
    if code == SIGMOID:
        return sigmoid(z)
    if code == RELU:
        return relu(z)
    if code == TANH:
        return tanh(z)
    if code == EXP:
        return exp_output(z)
    return z


@njit(**RULE)
def activate_narrow(z, code):
    """activate, with sigmoid_libm for the sigmoid (see NARROW_UNITS)."""
    if code == SIGMOID:
        return sigmoid_libm(z)
    return activate(z, code)


# d * f'(z) with f' written in terms of the output a = f(z), one function per activation
@njit(**RULE)
def sigmoid_back(d, a):
    return d * (a * (like(1.0, a) - a))


@njit(**RULE)
def relu_back(d, a):
    """d where a > 0, else 0: a selection, not a product (no -0.0, no inf * 0)."""
    return d if a > 0 else like(0.0, d)


@njit(**RULE)
def tanh_back(d, a):
    return d * (like(1.0, a) - a * a)


@njit(**RULE)
def times_derivative(d, a, code):
    """d * f'(z) for activation ``code``, from the output a = f(z)."""
    if code == SIGMOID:
        return sigmoid_back(d, a)
    if code == RELU:
        return relu_back(d, a)
    if code == TANH:
        return tanh_back(d, a)
    if code == EXP:
        return d * a  # exp' = exp
    return d


# Each activation's own functions, for code that knows the activation when it is written
# (the generated kernels): f(z), and d * f'(z) from the output a = f(z).  None: identity.
ACTIVATION_FUNCTIONS = {SIGMOID: "sigmoid", RELU: "relu", TANH: "tanh", IDENTITY: None}
NARROW_ACTIVATION_FUNCTIONS = {**ACTIVATION_FUNCTIONS, SIGMOID: "sigmoid_libm"}
DERIVATIVE_FUNCTIONS = {SIGMOID: "sigmoid_back", RELU: "relu_back", TANH: "tanh_back",
                        IDENTITY: None}


def tanh(z):
    """tanh(z) in z's precision: tanh32 for a float32, else tanh64."""
    if isinstance(z, np.float32):
        return tanh32(z)
    return tanh64(z)


@overload(tanh)
def _tanh_typed(z):
    if z == types.float32:
        return lambda z: tanh32(z)
    return lambda z: tanh64(z)


# Below these |z|, tanh(z) rounds to z itself (z^3 / 3 is under half an ULP of z), zeros'
# signs and subnormals included.
TANH_IDENTITY_BELOW = 2.0 ** -27
TANH_IDENTITY_BELOW_32 = 2.0 ** -12


@njit(**RULE)
def tanh64(z):
    """tanh(z) in float64 within 3 ULP, vectorizable as sigmoid64 is: libm's tanh is a call
    per value (a 3-10-1 tanh net's full-batch epoch took 124 ns a sample with it, the
    sigmoid's 17).  With E = exp(-2|z|) = 2**k (1 + m) (sigmoid64's reduction, m =
    expm1_reduced of the reduced argument), tanh(|z|) = (1 - E) / (1 + E), whose
    numerator is taken as (1 - 2**k) - 2**k m: exactly -m where k = 0 (|z| < ~0.17),
    where 1 - E would cancel, and 1/2 - m/2 where k = -1, above 0.29."""
    x = max(-2.0 * abs(np.float64(z)), EXP_MIN_ARG)  # NaN stays NaN (max keeps its first)
    k = np.floor(x * INV_LN2 + 0.5)
    r = (x - k * LN2_HI) - k * LN2_LO
    m = expm1_reduced(r)
    scale = float64_from_bits(float64_bits(k + EXP_BIAS_MAGIC) << 52)  # 2**k
    t = fma(-scale, m, 1.0 - scale) / fma(scale, m, 1.0 + scale)
    if abs(z) < TANH_IDENTITY_BELOW:
        return np.float64(z)
    return t if z > 0 else -t


@njit(**RULE)
def tanh32(z):
    """tanh of a float32, computed in float32: as tanh64, with expm1_reduced32."""
    x = max(np.float32(-2.0) * abs(z), np.float32(EXP_MIN_ARG_32))
    k = np.floor(x * np.float32(INV_LN2) + np.float32(0.5))
    r = (x - k * np.float32(LN2_HI_32)) - k * np.float32(LN2_LO_32)
    m = expm1_reduced32(r)
    scale = float32_from_bits(np.int32((np.int32(k) + np.int32(127)) << 23))
    one = np.float32(1.0)
    t = fma(-scale, m, one - scale) / fma(scale, m, one + scale)
    if abs(z) < np.float32(TANH_IDENTITY_BELOW_32):
        return z
    return t if z > 0 else -t


@njit(**RULE)
def exp_output(z):
    """The exp output layer (poisson's log link): libm's exp, in z's precision.  It is
    one layer of a few units, so the vectorizable polynomial of the sigmoid would not
    pay; exp(z) overflows to inf past ~709 (float32: ~88), which the guard reports."""
    return exp(z)


# ------------------------------------------------------------------------------ losses
@njit(**RULE)
def loss_term(out, y, z, code):
    """What one output of one sample adds to the loss sum before normalization (and
    before its sample weight): (out - y)^2, or for bce the cross-entropy of p = sigmoid(z)
    from z, -[y log p + (1-y) log(1-p)] = max(z, 0) - z y + log(1 + exp(-|z|)).
    A float64 in either dtype, for per-sample SGD, which adds a sample's terms in
    float64 (the square is the model's dtype's, widened; Numba's typing unifies the two
    branches so, and the Python meaning must not let a float32 make the running sum
    float32); loss_sum rounds each term to the model's dtype.  poisson:
    y log(y / p) - y + p with log p = z, the y log y part 0 where y = 0."""
    if code == BCE:
        return bce_term(z, y)
    if code == POISSON:
        return poisson_term(np.float64(out), np.float64(y), np.float64(z))
    return np.float64(squared_error(out, y))


@njit(**RULE)
def bce_term(z, y):
    """loss_term of bce, from z (float64): max(z, 0) - z y + log(1 + exp(-|z|))."""
    return max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))


@njit(**RULE)
def squared_error(out, y):
    """(out - y)^2 in the model's dtype: the term of mse, half_mse and sse."""
    d = out - y
    return d * d


# Called, not inlined (unlike the other rules): inlined, its logarithm made every kernel
# that may compute a loss -- the dense ones included -- slower to compile (a per-sample
# first fit by 0.4 s), for a loss few fits use.
@njit(**INNER)
def poisson_term(out, y, z):
    """poisson's loss_term, in float64: y log(y / p) - y + p with log p = z."""
    term = out - y
    if y > 0.0:
        term += y * (math.log(y) - z)
    return term


@njit(**RULE)
def loss_uses_z(code):
    """Whether loss_term reads the output pre-activation z (bce, poisson)."""
    return code == BCE or code == POISSON


@njit(**RULE)
def _weighted(e, w, s, weighted):
    return w[s] * e if weighted else e


@njit(**RULE)
def loss_sum(out, y, z, w, n, code):
    """The sum over the samples s < n of one output's row of its loss terms, times w[s]
    when w is not empty, in the model's dtype (out's): each term in that dtype
    (loss_term's float64 rounded to it; the squared error is computed in it), weighted
    in it (rules._weighted), added in LOSS_CHAINS (16) chains of it -- chain s % 16, in
    increasing s -- then combined (_combined_chains).  One running sum waits ~4 cycles
    per term, and so does one vector of chains: at 640 terms a batch (64 samples, 10
    outputs) or 100 an epoch (the 1-10-1 net) that wait was a sizeable part of a
    recorded epoch.  out, y, z: the row's arrays from its first sample (z read only for
    the losses that use it, loss_uses_z).  Not cross_entropy, whose terms are per
    sample (batch.batch_loss sums those in order).

    The squared error's chains are vectors (intrinsics.squared_error_sum).  The other
    losses' chains rotate through a tuple, the front one taking the term, and are
    turned back after the last (n % 16 turns from where they started).  Each kind of
    term has loops of its own, with loss_term's expression for that loss: a loop that
    chose among them per term was vectorized by LLVM computing all of them, exp and log
    included (twenty times slower in float32)."""
    weighted = w.shape[0] > 0
    un = uint64(n)
    zero = like(0.0, out)
    c = (zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero,
         zero, zero)
    if LOSS == BCE or LOSS == ANY and code == BCE:
        for s in range(un):
            e = _weighted(like(bce_term(np.float64(z[s]), y[s]), out), w, s, weighted)
            c = _rotated_in(c, e)
    elif LOSS == POISSON or LOSS == ANY and code == POISSON:
        for s in range(un):
            e = _weighted(like(poisson_term(np.float64(out[s]), np.float64(y[s]),
                                            np.float64(z[s])), out), w, s, weighted)
            c = _rotated_in(c, e)
    elif weighted:
        return squared_error_sum(out, y, w, un)
    else:
        return squared_error_sum(out, y, None, un)
    for _ in range(un % uint64(LOSS_CHAINS)):
        c = _rotated_back(c)
    return _combined_chains(c)


# (Numba has no tuple slices: c[1:] + (c[0] + e,) written out)
@njit(**RULE)
def _rotated_in(c, e):
    """The chains turned by one, the front chain, plus e, to the back."""
    return (c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12],
            c[13], c[14], c[15], c[0] + e)


@njit(**RULE)
def _rotated_back(c):
    """_rotated_in's turn undone."""
    return (c[15], c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10],
            c[11], c[12], c[13], c[14])


@njit(**RULE)
def _combined_chains(c):
    """loss_sum's sixteen chains added: sum k = (c[k] + c[k + 4]) + (c[k + 8] + c[k + 12])
    (the four vectors, pairwise), then (s0 + s1) + (s2 + s3): intrinsics.squared_error_sum's
    order."""
    s0 = (c[0] + c[4]) + (c[8] + c[12])
    s1 = (c[1] + c[5]) + (c[9] + c[13])
    s2 = (c[2] + c[6]) + (c[10] + c[14])
    s3 = (c[3] + c[7]) + (c[11] + c[15])
    return (s0 + s1) + (s2 + s3)


@njit(**RULE)
def loss_of_sum(total, code, k, nb):
    """The loss of a batch of nb samples and k outputs from the sum of its (weighted)
    loss terms (cross_entropy: of its per-sample terms)."""
    if code == SSE:
        return 0.5 * total
    if code == HALF_MSE:
        return 0.5 * total / (k * nb)
    if code == CROSS_ENTROPY or code == POISSON:
        return total / nb
    return total / (k * nb)  # MSE, BCE


@njit(**RULE)
def is_combined(loss, act):
    """Whether the output delta is p - y (scaled), without f': sigmoid + bce, softmax +
    cross_entropy, exp + poisson (each loss with its canonical link)."""
    return ((loss == BCE and act == SIGMOID) or (loss == CROSS_ENTROPY and act == SOFTMAX)
            or (loss == POISSON and act == EXP))


@njit(**RULE)
def delta_scale(loss, act, k, nb):
    """dLoss/dout = (out - y) * delta_scale for the output layer (times f' unless
    is_combined), for a batch of nb samples and k outputs."""
    if is_combined(loss, act):
        return 1.0 / (k * nb if loss == BCE else nb)
    if loss == MSE:
        return 2.0 / (k * nb)
    if loss == HALF_MSE:
        return 1.0 / (k * nb)
    return 1.0  # SSE


@njit(**RULE)
def output_error(out, y, scale):
    """dLoss/dout of one output of one sample: (out - y) * delta_scale."""
    return (out - y) * scale


@njit(**RULE)
def output_delta(out, y, scale, act, combined):
    """dLoss/dz of one output of one sample (before its sample weight multiplies it): the
    output error, times f'(z) unless is_combined."""
    d = output_error(out, y, scale)
    if combined:
        return d
    return times_derivative(d, out, act)


@njit(**RULE)
def softmax_column(z, base, stride, k):
    """Softmax over the k values z[base + j * stride], in place; the largest is
    subtracted before exp, so no input overflows."""
    zmax = z[base]
    for j in range(uint64(1), uint64(k)):
        zmax = max(zmax, z[base + j * stride])
    total = 0.0
    for j in range(uint64(k)):
        e = exp(z[base + j * stride] - zmax)
        z[base + j * stride] = e
        total += np.float64(e)  # a float64 sum, in Python too (NumPy 2 would keep float32)
    for j in range(uint64(k)):
        z[base + j * stride] = z[base + j * stride] / total


@njit(**RULE)
def cross_entropy_column(z, y, base, stride, k):
    """-sum_j y_j log softmax(z)_j of one sample, from z (log-sum-exp: exact where p
    saturates); z, y: k values at base + j * stride."""
    zmax = z[base]
    for j in range(uint64(1), uint64(k)):
        zmax = max(zmax, z[base + j * stride])
    acc = 0.0
    for j in range(uint64(k)):
        acc += np.float64(exp(z[base + j * stride] - zmax))
    lse = np.float64(zmax) + math.log(acc)  # float64, in Python too
    total = 0.0
    for j in range(uint64(k)):
        yj = y[base + j * stride]
        # a class of target 0 adds nothing, also where lse - z overflows (logits of
        # opposite signs near 1e308): 0 * inf would make the loss NaN
        if yj != 0:
            total += yj * (lse - z[base + j * stride])
    return total


# -------------------------------------------------------------------------------- sums
@njit(**RULE)
def dot4(x, xo, y, yo, n):
    """sum_s x[xo+s] * y[yo+s] for s < n (the gradient of a weight over a batch), in
    interleaved chains, one 256-bit vector of them (intrinsics.sum_width: 4 in float64,
    8 in float32): chain s % width (fused multiply-adds in increasing s) for every s,
    the float32 chains folded to four sums (k + k + 4), then (l0 + l1) + (l2 + l3).
    The chains run in parallel where one running sum waits 4 cycles per add; the last
    n % width samples join their chains in one masked vector step (before, they went
    into sum 0 one at a time: four scalar steps per sum for a float32 batch of 100).
    Offsets and n unsigned (uint64)."""
    a0, a1, a2, a3 = lanes4(x, xo, y, yo, n)
    return (a0 + a1) + (a2 + a3)


@njit(**RULE)
def sum4(x, xo, n):
    """sum_s x[xo+s] for s < n (the gradient of a bias), in dot4's lane order."""
    a0, a1, a2, a3 = lanes4(x, xo, None, uint64(0), n)
    return (a0 + a1) + (a2 + a3)


def dot4_group(out, o, xs, ys, n):
    """out[o + k] = dot4(xs[k], 0, ys[k], 0, n), or sum4(xs[k], 0, n) where ys[k] is None,
    for every k (xs, ys: tuples of K arrays): a full batch's gradient sums, the same
    numbers.  Compiled (intrinsics._dot4_group) the K sums run in one loop over the
    samples, their chains interleaved, where one dot4 alone waits on its own chain's
    latency.  n unsigned (uint64), o an index."""
    zero = uint64(0)
    for k in range(len(xs)):
        out[o + k] = (sum4(xs[k], zero, n) if ys[k] is None
                      else dot4(xs[k], zero, ys[k], zero, n))


compiled_as(dot4_group)(_dot4_group)


# ------------------------------------------------------------------------------ updates
@njit(**RULE)
def plain_step(p, g, lr):
    """The plain SGD step p - lr * g."""
    return p - lr * g


@njit(**RULE)
def momentum_step(p, g, v, lr, mu, nesterov):
    """Momentum SGD in scikit-learn's form: v <- mu v - lr g, then p + v, or with
    Nesterov p + mu v - lr g.  With a constant lr it equals PyTorch's to rounding.
    Returns (p, v)."""
    v = mu * v - lr * g
    if nesterov:
        return p + (mu * v - lr * g), v
    return p + v, v


@njit(**RULE)
def int_power(x, n):
    """x ** n for an integer n >= 0 as Python computes a float to an integer power: libm's
    pow of x and float(n).  PyTorch's and scikit-learn's optimizers compute their Adam bias
    corrections and step decays that way (Python's ``**``), so these are their bits.
    (Numba's own ``**`` with an integer exponent is binary powering, which rounds
    differently, and compiles as a function of its own.)"""
    return math.pow(x, float(n))


@njit(**RULE)
def adam_scales(beta1, beta2, t):
    """Adam's bias corrections 1 / (1 - beta1^t), 1 / (1 - beta2^t) for step t >= 1."""
    return 1.0 / (1.0 - int_power(beta1, t)), 1.0 / (1.0 - int_power(beta2, t))


@njit(**RULE)
def adam_step(p, g, m, v, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2):
    """Adam as in the paper, with the bias corrections c1, c2 of adam_scales:
    m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2; p <- p - lr (m c1) / (sqrt(v c2) + eps).
    Every argument of one dtype.  Returns (p, m, v).

    Where v c2, the corrected second moment (about g^2 at the first step), passes the
    dtype's range, the step would be m / sqrt(inf) = 0 from then on, a frozen weight
    with a finite v: v is returned as that infinity instead, which the divergence guard
    reports (loops.all_finite_state).  In float32 that is |g| past ~1.8e19, where the
    float32 v alone would hold gradients up to ~5.8e20."""
    m = beta1 * m + one_minus_beta1 * g
    v = beta2 * v + one_minus_beta2 * g * g
    corrected = v * c2
    p = p - lr * (m * c1) / (like(math.sqrt(corrected), p) + eps)
    return p, m, (v if corrected - corrected == 0 else corrected)


@njit(**RULE)
def with_l2(g, p, l2):
    """The gradient of a weight with L2 decay: g + l2 * p (biases are not decayed)."""
    return g + l2 * p


@njit(**RULE)
def learning_rate(rule, epoch):
    """The learning rate of epoch ``epoch`` (counted from the start of the fit) under the
    schedule of ``rule`` (options.Rule)."""
    lr = rule.lr
    if rule.schedule == INVSCALING:
        return lr / (1.0 + epoch) ** rule.power
    if rule.schedule == STEP:
        return lr * int_power(rule.step_factor, epoch // rule.step_size)
    if rule.schedule == COSINE:
        total = rule.total_epochs if rule.total_epochs > 1 else 1
        lo = rule.lr_min
        return lo + 0.5 * (lr - lo) * (1.0 + math.cos(math.pi * epoch / total))
    return lr


@njit(**RULE)
def stateful_step(params, moments, i, g, lr, rule, c1, c2, decay):
    """Parameter i's step under a rule with state (momentum, Nesterov, Adam; any rule
    with L2): ``decay`` is the L2 factor for a weight, None for a bias; c1, c2 Adam's
    corrections for this step (adam_scales); lr in the parameters' dtype.  moments
    (2, n_params): the velocity or Adam's m in row 0, Adam's v in row 1.  In the
    parameters' dtype: the rule's float64 factors (beta1, beta2, eps, momentum, the L2
    factor, c1, c2) each rounded to it, 1 - beta computed in float64 first, as PyTorch
    passes them to its float32 kernels (README: Numerics)."""
    p = params[i]
    g = like(g, p)  # (a float32 g stays float32: Numba would widen a bias's lr * g)
    if decay is not None:  # a weight (a bias's None: the branch is pruned)
        if decay != 0.0:
            g = with_l2(g, p, like(decay, p))
    if rule.optimizer == ADAM:
        p, m, v = adam_step(p, g, moments[0, i], moments[1, i], lr, like(rule.beta1, p),
                            like(1.0 - rule.beta1, p), like(rule.beta2, p),
                            like(1.0 - rule.beta2, p), like(rule.eps, p), like(c1, p),
                            like(c2, p))
        moments[0, i] = m
        moments[1, i] = v
        params[i] = p
    else:
        p, v = momentum_step(p, g, moments[0, i], lr, like(rule.momentum, p), rule.nesterov)
        moments[0, i] = v
        params[i] = p


@njit(**RULE)
def l2_penalty(params, net, l2):
    """(l2 / 2) * the sum of the squared weights (biases are not decayed): what L2 adds
    to a recorded loss.  Each square in the parameters' dtype, summed in float64."""
    if l2 == 0.0:
        return 0.0
    total = np.float64(0.0)  # not 0.0: in Python a float32 square would make it float32
    sizes = net.sizes
    for l in range(sizes.shape[0] - 1):
        wo = net.w_off[l]
        for p in range(wo, wo + sizes[l] * sizes[l + 1]):
            total += params[p] * params[p]
    return 0.5 * l2 * total


_LANE_MASK = ~(LANES - 1) & 0xFFFFFFFFFFFFFFFF  # n rounded down to a multiple of LANES


@njit(**RULE)
def row_dot(w, wo, v, vo, n):
    """sum_j w[wo + j] * v[vo + j] for j < n (n >= 1; the back-propagated sum of one
    row in per-sample SGD): the first LANES * (n // LANES) terms in intrinsics.lanes_dot's
    order, then the rest added in order, each product rounded before its add (a row
    shorter than LANES is the plain left-to-right sum).  wo, vo, n: uint64."""
    m = n & uint64(_LANE_MASK)
    # -0.0: a row shorter than the lanes starts at its first product exactly
    acc = lanes_dot(w, wo, v, vo, m) if m > 0 else like(-0.0, w)
    return tail_dot(w, wo + m, v, vo + m, n - m, acc)


@njit(**RULE)
def row_dot_step(w, wo, v, vo, n, a, lr):
    """row_dot(w, wo, v, vo, n) of the values before the update, and the plain step
    w[wo + j] <- w[wo + j] - lr * (a * v[vo + j]) of every j: one pass over the row."""
    m = n & uint64(_LANE_MASK)
    acc = lanes_dot_step(w, wo, v, vo, m, a, lr) if m > 0 else like(-0.0, w)
    return tail_dot_step(w, wo + m, v, vo + m, n - m, acc, a, lr)


_called = {}


def called(rule):
    """``rule`` compiled as a function of its own, called rather than inlined: for code
    that calls a rule at many places (the generated kernels, one call per unit), where
    Numba's inlining at every call would cost far more to compile (the XOR kernel
    several times as long).  The same definition, so the same numbers."""
    fn = _called.get(rule)
    if fn is None:
        if config.DISABLE_JIT:  # the rules are plain Python functions: nothing to compile
            return rule
        if hasattr(rule, "py_func"):
            fn = njit(**JIT)(rule.py_func)
        else:  # a rule chosen by its argument's type (an overload): a call of it
            fn = njit(**JIT)(_TYPED_RULE_CALLS[rule.__name__])
        fn = _called.setdefault(rule, fn)
    return fn


def _sigmoid_call(z):
    return sigmoid(z)


def _tanh_call(z):
    return tanh(z)


# Named functions, not lambdas: Numba's disk cache names a function by its qualified name
# and line, and two lambdas on one line shared a cache entry (tanh ran the sigmoid)
_TYPED_RULE_CALLS = {"sigmoid": _sigmoid_call, "tanh": _tanh_call}


refuse_python_calls(globals())  # the INNER functions: TypeError from Python, not a crash
