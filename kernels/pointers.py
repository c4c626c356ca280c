"""Typed pointers into arrays, for the calls of the per-batch path.

Numba reference-counts an array at every call of a function it does not inline: the
callee increments the count of each array argument it keeps in a variable and decrements
it on the way out, two atomic operations per array per call.  On a small network the
per-batch path makes hundreds of such calls (per layer: the product, its driver, the
tile rows), and the atomics took 11-13% of W4b's time at H = 16 (perf; gdb on the return
addresses of NRT_incref / NRT_decref).  A pointer is a plain value: passing it costs
nothing.  The caller must hold the array (keep it in a variable) while the pointer is
in use.
"""
import numpy as np
from numba import types
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

FLOATS = (types.float64, types.float32)


def is_float_array(t):
    return isinstance(t, types.Array) and t.ndim == 1 and t.dtype in FLOATS


def is_float_pointer(t):
    return isinstance(t, types.CPointer) and t.dtype in FLOATS


def is_float_operand(t):
    """A 1-D float array or a typed pointer to floats: what the products accept."""
    return is_float_array(t) or is_float_pointer(t)


@intrinsic
def address(typingctx, arr, offset):
    """A typed pointer (CPointer) to arr[offset]; arr a 1-D float array, offset an
    integer (not checked against arr's length)."""
    if not (is_float_array(arr) and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        return builder.gep(data, [index])

    return types.CPointer(arr.dtype)(arr, offset), codegen


def scratch(like, n):
    """A new 1-D array of n elements of the dtype ``like`` (an array or a pointer)
    points to (compiled code only)."""
    raise NotImplementedError("compiled code only")


@overload(scratch)
def _scratch(like, n):
    if not is_float_operand(like):
        return None
    dtype = as_dtype(like.dtype)
    return lambda like, n: np.empty(n, dtype)
