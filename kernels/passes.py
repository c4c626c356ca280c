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
backward passes come in several units: with and without the branch that hands a wide
layer to a fit's thread pool (batch.POOLED), so that a fit on one thread compiles no code
of the pool; and in three forms (batch.LAYERS): every layer's products by its size,
through the matrix products only, or through the loops only, so that a fit whose layers
all take one way compiles only that way; and for a Net's own activation and loss codes
(batch.HIDDEN_ACT, OUTPUT_ACT, LOSS), so that a fit compiles the code of its own
activations and loss only.  ``Build`` names what a unit is compiled for.

A Work carries the addresses as integers, not the cfunc objects: Numba would type and
unbox such objects in Python at every kernel call, which costs more than a small fit.
Under ``NUMBA_DISABLE_JIT=1`` the Work carries batch.py's Python functions instead, and
``call`` calls them.
"""
import functools
import threading
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import cfunc, config as numba_config, njit, typeof, types

from . import batch, rows, rules
from .batch import ALL_LOOPS, ALL_PRODUCTS, ANY, BY_SIZE
from .rows import LEAF
from .config import JIT, compiled_only, with_constants
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
# the passes that can hand a layer to the fit's thread pool (batch.POOLED), and that
# compute the layers' products (batch.LAYERS): compiled in a unit per form
LAYER_PASSES = (FORWARD, BACKWARD)
FORMS = (BY_SIZE, ALL_PRODUCTS, ALL_LOOPS)
_FORM_NAMES = {BY_SIZE: "", ALL_PRODUCTS: "_products", ALL_LOOPS: "_loops"}


class Build(NamedTuple):
    """What a unit is compiled for: the layers' form (batch.LAYERS) and the activation
    and loss codes (rules.py) it reads as constants -- batch.HIDDEN_ACT, OUTPUT_ACT and
    LOSS; ANY reads the Net's at run time.  Build() serves every call."""
    form: int = BY_SIZE
    hidden: int = ANY
    output: int = ANY
    loss: int = ANY


# which of a Build's codes each pass reads (the others are ANY in its unit's key)
_READS = {FORWARD: ("hidden", "output"), BACKWARD: ("hidden",),
          OUTPUT_DELTAS: ("output", "loss"), BATCH_LOSS: ("loss",)}


@functools.lru_cache(maxsize=None)  # every call of for_dtype asks for eight
def unit_key(dtype, which, pooled, build=Build()):
    """(dtype, pass, pooled, Build): which unit a pass of a fit ``pooled`` or not runs
    for calls of ``build`` -- only what the pass reads of it: the passes without layers
    have one unit per loss and output, the backward one per hidden activation."""
    if build.form not in FORMS:
        raise ValueError(f"form must be one of batch's BY_SIZE, ALL_PRODUCTS, ALL_LOOPS, "
                         f"got {build.form!r}")
    codes = {field: getattr(build, field) for field in _READS[which]}
    if which not in LAYER_PASSES:
        return np.dtype(dtype), which, False, Build(**codes)
    return np.dtype(dtype), which, bool(pooled), Build(build.form, **codes)


def _unit_name(which, pooled, build):
    codes = "".join(f"_{field[0]}{code}" for field, code in zip(Build._fields[1:], build[1:])
                    if code != ANY)
    return (f"{Passes._fields[which]}{'_pooled' if pooled else ''}"
            f"{_FORM_NAMES[build.form]}{codes}_unit")


def _unit_function(which, pooled, build):
    """batch.py's function of pass ``which`` under a name of its own
    (``forward_unit``, ``forward_pooled_unit`` with the pool's branch,
    ``forward_products_h1_o1_unit`` ...): Numba names its cache files after the
    function, and batch.py's compiled function (the tests call it) keeps its own.  It
    reads batch.POOLED as ``pooled``, batch.HIDDEN_ACT, OUTPUT_ACT and LOSS as
    ``build``'s codes and, with the functions it inlines that read it
    (batch.LAYER_FUNCTIONS), batch.LAYERS as its form: Numba drops the branches those
    constants rule out before it types them."""
    names = dict(vars(batch), POOLED=bool(pooled), LAYERS=build.form, HIDDEN_ACT=build.hidden,
                 OUTPUT_ACT=build.output, LOSS=build.loss)
    for helper in batch.LAYER_FUNCTIONS:
        names[helper] = _inlined(getattr(batch, helper), names, helper)
    if build.loss != ANY:  # the loss's loop alone (rules.LOSS)
        names["loss_sum"] = _inlined(rules.loss_sum, dict(vars(rules), LOSS=build.loss),
                                     "loss_sum")
    # the activation's loops for a constant code: the others' left out before Numba
    # inlines what they call (rows.py: ACTIVATION)
    for role, code in (("hidden", build.hidden), ("output", build.output)):
        if code != ANY:
            constant = dict(vars(rows), ACTIVATION=code)
            activation = dict(names, ACTIVATION=code,
                              activate_rows=_inlined(rows.activate_rows, constant,
                                                     f"activate_rows_{role}"))
            names[f"_activate_{role}"] = _inlined(batch._activate, activation,
                                                  f"_activate_{role}")
            if role == "hidden":  # the derivative of the hidden layers (backward)
                names["derivative_rows"] = _inlined(rows.derivative_rows, constant,
                                                    "derivative_rows_hidden")
    return with_constants(getattr(batch, Passes._fields[which]).py_func, names,
                          _unit_name(which, pooled, build))


def _inlined(function, names, name):
    """A copy of the compiled ``function`` reading its globals from ``names``, inlined
    where it is called and never compiled alone (so not cached)."""
    return compiled_only(njit(**dict(LEAF, cache=False))(
        with_constants(function.py_func, names, name)))


_compiled = {}  # unit_key -> its cfunc, kept alive: its code must outlive its use
_lock = threading.Lock()


def for_dtype(dtype, needed=ALL, pooled=False, build=Build()):
    """What a Work carries for a model of ``dtype`` (Work.passes): the passes' addresses,
    an int64 array indexed by FORWARD ... BATCH_LOSS, the ``needed`` ones compiled (or
    loaded from Numba's cache) on first use -- a pass not yet compiled is 0, and its
    kernel must not call it (predict calls only the forward pass).  ``pooled``: for a
    fit whose Net has a thread pool (without, the forward and backward passes would run
    its layers on the calling thread alone).  ``build``: what the calls need (Build):
    a narrow form only for calls whose every layer and batch takes that way, with a Net
    of config.PRODUCT_MIN_WORK (those forms do not read net.product_min_work); codes
    only those of the calls' Net.  Under NUMBA_DISABLE_JIT, batch.py's Python
    functions."""
    if numba_config.DISABLE_JIT:
        return Passes(batch.forward, batch.backward, batch.output_deltas, batch.batch_loss)
    keys = _unit_keys.get((dtype, pooled, build))
    if keys is None:
        keys = _unit_keys[dtype, pooled, build] = [unit_key(dtype, which, pooled, build)
                                                   for which in ALL]
    with _lock:
        for which in needed:
            key = keys[which]
            if key not in _compiled:
                _compiled[key] = cfunc(_signatures(key[0])[which], **JIT)(
                    _unit_function(which, key[2], key[3]))
        return np.array([_compiled[k].address if k in _compiled else 0 for k in keys],
                        np.int64)


# (dtype, pooled, build) -> the unit_key of each pass, in ALL's order: every fit asks
_unit_keys = {}


def is_loaded(dtype, needed=ALL, pooled=False, build=Build()):
    """Whether ``for_dtype(dtype, needed, pooled, build)`` would return at once."""
    return numba_config.DISABLE_JIT or all(
        unit_key(dtype, which, pooled, build) in _compiled for which in needed)
