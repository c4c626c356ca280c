"""The batch passes (batch.py: forward, loss, output deltas, backward), compiled once per
dtype and called by address.

Numba compiles a called function into its caller again: it links the callee's code into
the caller's module, then optimizes and compiles it there to machine code.  Every
training entry (loops.py) held its own copy of the four passes, most of its code, and
that copy was much of a first fit's compile time (asv: FirstFit).  Here each pass is compiled once
per dtype as a C-callable function (``cfunc``) of the same arrays and Net, cached on
disk like the kernels, and the kernels call it through its address (``call``), which
their Work carries (``Work.passes``, from ``for_dtype``): an entry holds a call, not a
copy.  The code is batch.py's own, so the numbers are the same bits.  The forward and
backward passes come in two units, with and without the branch that hands a wide layer
to a fit's thread pool (batch.POOLED): a fit on one thread compiles no code of the pool.

A Work carries the addresses as integers, not the cfunc objects: Numba would type and
unbox such objects in Python at every kernel call, which costs more than a small fit.
Under ``NUMBA_DISABLE_JIT=1`` the Work carries batch.py's Python functions instead, and
``call`` calls them.
"""
import threading
import types as pytypes
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import cfunc, config as numba_config, typeof, types

from . import batch
from .config import JIT
from .intrinsics import compiled_as
from .options import Net


class Passes(NamedTuple):
    forward: object        # batch.forward
    backward: object       # batch.backward
    output_deltas: object  # batch.output_deltas
    batch_loss: object     # batch.batch_loss


FORWARD, BACKWARD, OUTPUT_DELTAS, BATCH_LOSS = range(4)
# what each kind of kernel calls: a fit's batches, an evaluation (validation loss), predict
ALL = (FORWARD, BACKWARD, OUTPUT_DELTAS, BATCH_LOSS)
EVALUATE = (FORWARD, BATCH_LOSS)
PREDICT = (FORWARD,)


def _signatures(dtype):
    """The passes' signatures for a model of ``dtype`` (a numpy dtype).  What they only
    read may be read-only (a model's parameters and sample weights can be: unpickled
    from a read-only memory map); a Net's arrays are always writable (make_net)."""
    fp = typeof(np.zeros(1, dtype)).dtype
    a, offsets = types.Array(fp, 1, "C"), types.Array(types.int64, 1, "C")
    read = types.Array(fp, 1, "C", readonly=True)
    i64, flag = types.int64, types.boolean
    index = np.zeros(1, np.int64)
    net = typeof(Net(index, index, index, index, 0, 0, 0, 0, 0, 0))
    return Passes(
        forward=types.void(read, net, a, offsets, i64, a, flag),
        backward=types.void(read, net, a, offsets, a, a, i64, fp, flag, flag),
        output_deltas=types.void(a, i64, a, a, read, i64, i64, i64, i64),
        batch_loss=types.float64(a, i64, a, a, read, i64, i64, i64))


# ------------------------------------------------------------------------- the call
def call(unit, which, args):
    """Call the pass ``which`` at ``unit`` (Work.passes[which]) with ``args``: compiled,
    an indirect call of the unit's address (_call); in Python (NUMBA_DISABLE_JIT, where
    Work.passes holds batch.py's functions), the function itself."""
    return unit(*args)


@compiled_as(call)
def _call(typingctx, unit, which, args):
    """Call the pass ``which`` (a constant: FORWARD ...) compiled for the dtype of the
    first of ``args`` at the address ``unit``, with ``args`` converted to its signature."""
    if not (isinstance(unit, types.Integer) and isinstance(which, types.IntegerLiteral)
            and isinstance(args, types.BaseTuple) and len(args.types) > 0
            and isinstance(args.types[0], types.Array)
            and args.types[0].dtype in (types.float64, types.float32)):
        return None
    declared = _signatures(np.dtype(str(args.types[0].dtype)))[which.literal_value]
    if len(declared.args) != len(args.types) or any(
            typingctx.can_convert(have, want) is None
            for have, want in zip(args.types, declared.args)):
        return None

    def codegen(context, builder, signature, llargs):
        # a cfunc takes every argument as Numba's value of its type (arrays and
        # namedtuples as their structs), as Numba's own first-class function calls pass them
        values = [context.cast(builder, builder.extract_value(llargs[2], i), have, want)
                  for i, (have, want) in enumerate(zip(args.types, declared.args))]
        void = declared.return_type == types.void
        returns = ir.VoidType() if void else context.get_value_type(declared.return_type)
        fnty = ir.FunctionType(returns, [context.get_value_type(t) for t in declared.args])
        address = context.cast(builder, llargs[0], signature.args[0], types.int64)
        result = builder.call(builder.inttoptr(address, fnty.as_pointer()), values)
        return context.get_dummy_value() if void else result

    return declared.return_type(unit, which, args), codegen



# ---------------------------------------------------------------------------- units
# the passes that can hand a layer to the fit's thread pool (batch.POOLED): compiled in
# two forms, with that branch for fits on several threads and without it for the rest
POOL_PASSES = (FORWARD, BACKWARD)


def unit_key(dtype, which, pooled):
    """(dtype, pass, pooled): which unit a pass of a fit ``pooled`` or not runs (the
    passes without a branch to the pool have one unit)."""
    return np.dtype(dtype), which, bool(pooled) and which in POOL_PASSES


def _unit_function(name, pooled):
    """batch.py's function ``name`` under a name of its own (``forward_unit``, or
    ``forward_pooled_unit`` with the pool's branch): Numba names its cache files after
    the function, and batch.py's compiled function (the tests call it) keeps its own.
    Without ``pooled`` it reads batch.POOLED as False, so Numba drops that branch."""
    fn = getattr(batch, name).py_func
    names = fn.__globals__ if pooled else dict(fn.__globals__, POOLED=False)
    unit_name = f"{name}_pooled_unit" if pooled else f"{name}_unit"
    unit = pytypes.FunctionType(fn.__code__, names, unit_name, fn.__defaults__,
                                fn.__closure__)
    unit.__qualname__ = unit.__name__
    unit.__doc__ = fn.__doc__
    return unit


_compiled = {}  # unit_key -> its cfunc, kept alive: its code must outlive its use
_lock = threading.Lock()


def for_dtype(dtype, needed=ALL, pooled=False):
    """What a Work carries for a model of ``dtype`` (Work.passes): the passes' addresses,
    an int64 array indexed by FORWARD ... BATCH_LOSS, the ``needed`` ones compiled (or
    loaded from Numba's cache) on first use -- a pass not yet compiled is 0, and its
    kernel must not call it (predict calls only the forward pass).  ``pooled``: for a
    fit whose Net has a thread pool (without, the forward and backward passes would run
    its layers on the calling thread alone).  Under NUMBA_DISABLE_JIT, batch.py's
    Python functions."""
    if numba_config.DISABLE_JIT:
        return Passes(batch.forward, batch.backward, batch.output_deltas, batch.batch_loss)
    with _lock:
        for which in needed:
            key = unit_key(dtype, which, pooled)
            if key not in _compiled:
                _compiled[key] = cfunc(_signatures(key[0])[which], **JIT)(
                    _unit_function(Passes._fields[which], key[2]))
        keys = [unit_key(dtype, which, pooled) for which in ALL]
        return np.array([_compiled[k].address if k in _compiled else 0 for k in keys],
                        np.int64)


def is_loaded(dtype, needed=ALL, pooled=False):
    """Whether ``for_dtype(dtype, needed, pooled)`` would return at once."""
    return numba_config.DISABLE_JIT or all(unit_key(dtype, which, pooled) in _compiled
                                           for which in needed)
