"""Activation functions and their derivatives, applied in place to contiguous rows.

Every derivative is written in terms of the activation OUTPUT (all four functions allow
it), so the forward pass keeps only outputs.  The sigmoid uses a vectorizable exp (see
``exp_into``): Numba calls scalar libm ``exp``, which blocks SIMD and was half the
training time of the tutorial nets (PERF-NOTES.md).
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types, uint64
from numba.core import cgutils
from numba.extending import intrinsic

from .config import JIT

IDENTITY = 0
SIGMOID = 1
RELU = 2
TANH = 3
SOFTMAX = 4  # output layer only, with the cross_entropy loss

# exp(x) = 2**k * exp(r), x = k ln2 + r, |r| <= ln2/2.  ln2 is split in a high part with
# trailing zero bits (k * LN2_HI is exact) and a low correction (Cody-Waite reduction).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
# Below this exp underflows to subnormals; clamping keeps 2**k a normal number.
_EXP_MIN_ARG = -708.0
_EXP_MAX_ARG = 709.0


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once (LLVM's llvm.fma: the FMA instruction, or a correctly
    rounded software fma where the CPU has none, so results do not depend on the CPU).
    Numba contracts nothing without fastmath, so this is the only way to get one.
    float32 when all three are float32, else float64."""
    if not all(isinstance(t, types.Float) for t in (a, b, c)):
        return None
    single = a == b == c == types.float32
    ty = types.float32 if single else types.float64

    def codegen(context, builder, signature, args):
        llty = ir.FloatType() if single else ir.DoubleType()
        name = "llvm.fma.f32" if single else "llvm.fma.f64"
        fn = cgutils.get_or_insert_function(builder.module,
                                            ir.FunctionType(llty, [llty] * 3), name)
        vals = [context.cast(builder, v, t, ty) for v, t in zip(args, signature.args)]
        return builder.call(fn, vals)

    return ty(a, b, c), codegen


@njit(**JIT)
def _exp_reduced(r):
    """exp(r) for |r| <= ln2/2: Taylor polynomial of degree 13 (truncation < 1e-17), Horner
    with fused multiply-adds (half the instructions and one rounding per step)."""
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
    p = fma(p, r, 1.0)
    return fma(p, r, 1.0)


@njit(**JIT)
def exp_into(x, out, bits):
    """out[s] = exp(x[s]) for 1-D float arrays, within 1 ULP of libm, SIMD-friendly.

    ``bits`` is int64 scratch of at least len(x).  The power of two 2**k is assembled
    from its exponent bits in ``bits`` and read back through a float64 view: the only way
    found to build it that LLVM vectorizes.  Arguments are clamped to [-708, 709]:
    results below ~3e-308 come out as 3e-308 instead of a subnormal.
    """
    n = x.shape[0]
    scale = bits[:n].view(np.float64)
    for s in range(n):
        xs = min(max(np.float64(x[s]), _EXP_MIN_ARG), _EXP_MAX_ARG)
        k = math.floor(xs * _INV_LN2 + 0.5)
        r = (xs - k * _LN2_HI) - k * _LN2_LO
        out[s] = _exp_reduced(r)
        bits[s] = (np.int64(k) + 1023) << 52
    for s in range(n):
        out[s] = out[s] * scale[s]


@njit(**JIT)
def sigmoid_inplace(z, bits, scale):
    """z <- 1 / (1 + exp(-z)) for a contiguous 1-D row, overflow-free, within 2 ULP.

    exp is only taken of -|z| <= 0; then sigmoid = 1 / (1 + e) for z >= 0 and
    e / (1 + e) for z < 0.  Two passes so both vectorize: the first stores exp's
    polynomial in z and 2**k in ``bits`` (int64 scratch, len >= len(z); ``scale`` is its
    float64 view), with the float's sign bit set when z >= 0 -- the second pass needs the
    sign of z after z itself has been overwritten.

    Rows come in as slices indexed from 0: with an offset of unknown sign Numba adds a
    negative-index check to every access and the loops stop vectorizing (3x slower).
    """
    n = z.shape[0]
    for s in range(n):
        zs = np.float64(z[s])
        xs = max(-abs(zs), _EXP_MIN_ARG)
        k = math.floor(xs * _INV_LN2 + 0.5)
        r = (xs - k * _LN2_HI) - k * _LN2_LO
        nonneg = np.int64(1) if zs >= 0 else np.int64(0)
        bits[s] = ((np.int64(k) + 1023) << 52) | (nonneg << 63)
        z[s] = _exp_reduced(r)
    for s in range(n):
        sc = scale[s]
        e = z[s] * abs(sc)
        z[s] = 1.0 / (1.0 + e) if sc < 0 else e / (1.0 + e)


@njit(**JIT)
def activate_inplace(z, code, bits, scale):
    """Apply activation ``code`` to the 1-D row z in place."""
    n = z.shape[0]
    if code == SIGMOID:
        sigmoid_inplace(z, bits, scale)
    elif code == RELU:
        for s in range(n):
            z[s] = z[s] if z[s] > 0 else 0.0
    elif code == TANH:
        for s in range(n):
            z[s] = math.tanh(z[s])
    # IDENTITY: nothing to do


@njit(**JIT)
def mul_derivative_inplace(delta, out, code):
    """delta[s] *= f'(z[s]), with f' written in terms of the output a = out[s]."""
    n = delta.shape[0]
    if code == SIGMOID:
        for s in range(n):
            delta[s] = delta[s] * (out[s] * (1.0 - out[s]))
    elif code == RELU:
        for s in range(n):
            delta[s] = delta[s] if out[s] > 0 else 0.0
    elif code == TANH:
        for s in range(n):
            delta[s] = delta[s] * (1.0 - out[s] * out[s])


@njit(**JIT)
def softmax_inplace(z, k, nb):
    """Softmax over the k rows of each of the nb columns of z (k rows of nb), in place.

    The column maximum is subtracted before exp, so no input overflows.
    """
    u_nb = uint64(nb)
    for s in range(u_nb):
        zmax = z[s]
        for j in range(uint64(1), uint64(k)):
            zmax = max(zmax, z[j * u_nb + s])
        total = 0.0
        for j in range(uint64(k)):
            e = math.exp(z[j * u_nb + s] - zmax)
            z[j * u_nb + s] = e
            total += e
        for j in range(uint64(k)):
            z[j * u_nb + s] = z[j * u_nb + s] / total
