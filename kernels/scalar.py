"""Scalar building blocks for fused per-sample loops (the generated kernels of
specialize.py): a sigmoid that needs no scratch array, so it can sit inside a loop that
does everything else for the sample too.

``float64_from_bits`` reinterprets an int64 as a float64 (an LLVM bitcast): it builds
exp's 2**k from its exponent bits in a register, where activations.exp_into has to go
through an int64 array viewed as float64.  LLVM vectorizes both.
"""
import math

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .activations import _EXP_MIN_ARG, _INV_LN2, _LN2_HI, _LN2_LO, _exp_reduced
from .config import JIT


@intrinsic
def float64_from_bits(typingctx, bits):
    """The float64 whose IEEE-754 bit pattern is the int64 ``bits``."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@njit(**JIT)
def sigmoid(z):
    """1 / (1 + exp(-z)), overflow-free: the same operations, in the same order, as
    activations.sigmoid_inplace, so the two agree bit for bit."""
    xs = max(-abs(z), _EXP_MIN_ARG)
    k = math.floor(xs * _INV_LN2 + 0.5)
    r = (xs - k * _LN2_HI) - k * _LN2_LO
    e = _exp_reduced(r) * float64_from_bits((int(k) + 1023) << 52)
    return 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
