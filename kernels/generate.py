"""Kernels generated for one small architecture: its training loops, and its predictions.

The general entries (loops.py) take the layer sizes as arrays: every layer is a loop
nest whose trip counts LLVM learns only at run time, and the activations go through
memory between one input and the next.  For small networks -- the tutorials' nets,
most uses of this library -- the time goes there, not into floating-point work.  So
for a network whose layers are all narrow, the training loop is written out as Python
source for its exact architecture and compiled once:

- "full" (full batch): the forward pass of all layers is one loop over the samples,
  every weight a named local, the units of a sample in registers, so LLVM vectorizes
  across samples; the backward pass likewise (in a few loops for wider networks); then
  the gradient, rules.dot4's sums a group at a time (rules.dot4_group).  The same
  module's ``loss_and_gradient`` is L-BFGS's evaluation (``evaluator``).
- "full_blocked" (full batch over many samples): the same pass a block of samples at a
  time, so that a block's rows stay in the L1 cache from its forward pass to its
  gradient sums, whose chains go on from block to block (BLOCK_BYTES).
- "sample" (per-sample SGD, the plain rule): every parameter a local (a register)
  across the samples of an epoch, each updated as sample.py updates it.
- "sample_loops" (per-sample SGD of networks too large for "sample", any rule):
  sample.py's epoch itself, inlined with the architecture as constant tuples, so that
  LLVM knows every trip count.
- "predict" (``predictor``): the outputs of a network's samples, a block at a time,
  with the full-batch kind's forward loops -- kernels.loops.predict's numbers.

The generated source calls the rules (rules.py) by name -- activations, derivatives,
loss terms, deltas, updates, sums -- and the training loop's bookkeeping
(loops.after_record; the full batch's plain rule loops.plain_steps and record_checked,
the guard's check riding along the update), so every value is computed with the same
operations in the same order as the general entries: the results are the same bits
(tests/test_generate.py).
Every generated module's ``train`` has the general entries' arguments and results.

The source goes to a file in fastbp's cache folder (``cache_dir``) and is imported
from there, so Numba's on-disk cache keeps the compiled code between processes like
any other kernel.
"""
import hashlib
import importlib.util
import os
import sys
import tempfile
import textwrap
import threading

from .config import (PRODUCT_MIN_WEIGHTS, VECTOR_BYTES, kernel_sources_digest,
                     refuse_python_calls)
from .intrinsics import LANES as ROW_LANES
from .rules import (ACTIVATION_FUNCTIONS, BCE, DERIVATIVE_FUNCTIONS, EXP, HALF_MSE, IDENTITY,
                    MSE, NARROW_ACTIVATION_FUNCTIONS, NARROW_UNITS, RELU, SIGMOID, SOFTMAX, SSE,
                    TANH)
from .sample_share import shared_weights

# Generated code grows with the number of parameters (one local per weight) and a
# sample's units must fit in registers: beyond these sizes the general entries run.
MAX_UNITS = 32
MAX_LAYER_PARAMS = 256
# per-sample kernels keep every parameter in a register across the samples
MAX_SAMPLE_PARAMS = 64
ACTIVATIONS = (IDENTITY, SIGMOID, RELU, TANH)
LOSSES = (MSE, HALF_MSE, SSE, BCE)
VERSION = 27  # part of the module name: bump when the generated code changes meaning
# FASTBP_GENERATE=0 turns generated kernels off (the tests compare both paths)
ENABLED = os.environ.get("FASTBP_GENERATE", "1") != "0"
# Rows are padded to a multiple of one vector of the machine (config.VECTOR_BYTES:
# AVX-512's 8 float64 or 16 float32, else AVX2's 4 or 8): the vectorized sample loops
# then never run a scalar remainder, which was most of the time for the 21 XOR samples.
# Not more: on an AVX2 machine W3's 100 float32 samples in rows of 112 (AVX-512's
# padding) ran 14 vector steps a loop where 104 take 13.
PAD_BYTES = VECTOR_BYTES
# A row of a whole number of ALIAS_BYTES (4 KB: the L1 data cache's size over its ways,
# on AMD's Zen and Intel's cores alike) puts the s-th value of every row in the same
# cache set, and the gradient's sums read 16 rows at a time (GRADIENT_GROUP pairs) from
# an 8-way cache: they evict each other.  Such rows get one cache line more, so that
# row r starts r lines further along the sets.  Fits of 512, 1024, 1536 or 4096
# float64 samples (1024 or 4096 float32), in-process alternating against the rows as
# they were, the Zen 4 of docs/PERFORMANCE-HISTORY.md: 0.71-0.91 of the time (W3's
# and W1's nets); rows of 2 KB, or of an odd number of lines, gained nothing.
ALIAS_BYTES = 4096
LINE_BYTES = 64
# A full-batch pass over many samples streams every row through the caches three times
# (forward, backward, gradient): from about 1,000 samples W3's 25 rows no longer fit in
# the L1 cache, and its epoch cost per sample grew with n (float64 3.8 ns at 128
# samples, 6.4 at 1,000 and 4,000, 8.4 at 16,000).  So from BLOCKED_MIN_BLOCKS blocks
# on (float32: BLOCKED_MIN_BLOCKS_32), the pass runs a block of samples at a time
# ("full_blocked"), a block being a
# whole number of BLOCK_STEP samples whose rows take about BLOCK_BYTES (at least
# BLOCK_MIN samples): the block's rows stay in the L1 cache from its forward pass to its
# gradient sums.  Below that, one piece: a block's loops cost their overlap checks once
# per block, which LLVM otherwise hoists out of the epoch loop (W3's float32 epoch of
# 100 samples in blocks: 2.3 -> 2.9 ns a sample).  float32's rows, half the bytes,
# stream well enough for longer: its blocks lost below about 5 (W1's and W3's nets at
# 1,000 samples, 1.07-1.16 of the time) and gained from about 7 (2,000 samples:
# 0.80-0.94); float64's gained from 3 (W3's at 400 samples: 0.93).  Measured on the Zen 4
# of docs/PERFORMANCE-HISTORY.md, whose L1 cache holds 32 KB.
BLOCK_BYTES = 24 * 1024
BLOCK_MIN = 128
BLOCK_STEP = 16
BLOCKED_MIN_BLOCKS = 3
BLOCKED_MIN_BLOCKS_32 = 6
KINDS = ("full", "full_blocked", "sample", "sample_loops")
FULL_KINDS = ("full", "full_blocked")
# The full-batch backward pass writes a row of deltas per unit.  LLVM vectorizes a loop
# over the samples only if it can check that the rows it writes do not overlap those it
# reads, and gives up beyond a few rows: one loop for every layer, a sample's deltas in
# registers, while the network has at most ONE_LOOP_DELTA_ROWS rows (the XOR net's 9
# vectorize), else loops of DELTA_ROWS_PER_LOOP rows, which read the rows above from
# memory (the 1-10-1 net's 11 rows stayed scalar in one loop and vectorize in loops of
# 2 or 3).  3: W3 on the Zen 3, once the rows' views were taken outside the epoch loop
# (pass_rows), in-process alternating fits, ns an epoch: float64 532-577 -> 514-551,
# float32 347-396 -> 328-369 (loops of 4: 519-558, 335-370).  Before that change loops
# of 2 were fastest in float32, and on the AVX-512 machine of the float32 section of
# docs/PERFORMANCE-HISTORY.md loops of 1, 3 or 4 ran slower than 2.
ONE_LOOP_DELTA_ROWS = 9
DELTA_ROWS_PER_LOOP = 3
# The forward pass likewise: a loop per layer and FORWARD_ROWS_PER_LOOP of its units,
# which reads the layer's inputs from their rows.  One loop through every layer, a
# sample in registers, was slower everywhere (in-process alternating fits, ns an epoch,
# float64 / float32): XOR 2-4-4-1 1363 / 406 -> 1083 / 391, W3's 1-10-1 499 / 330 ->
# 470 / 307, a 3-7-7-7-2 net 25474 / 20963 -> 15134 / 11671, a 1-30-1 net 7509 / 5997
# -> 4139 / 1918 (the larger nets' one loop wrote too many rows to vectorize, it seems;
# the 1-10-1 one waited on its output's chain of ten fused multiply-adds).  4 units a
# loop: level or a little slower.
FORWARD_ROWS_PER_LOOP = 6
# The gradient's sums run GRADIENT_GROUP at a time in one loop over the samples: 8
# chains of fused multiply-adds keep two FMA units busy (8 = 2 units x 4 cycles), and 8
# accumulators fit in registers even with AVX2's 16.
GRADIENT_GROUP = 8
DTYPES = ("float64", "float32")


def pass_row_count(sizes, loss):
    """How many rows of samples a full-batch kernel's epoch_pass reads and writes
    (_write_pass: pass_rows)."""
    return sizes[0] + 2 * sum(sizes[1:]) + sizes[-1] * (2 if loss == BCE else 1) + 1


def block_samples(rows, single):
    """The samples of a full-batch kernel's block (epoch_pass): a whole number of
    BLOCK_STEP samples whose ``rows`` rows (of 4 or 8 bytes, ``single``) take about
    BLOCK_BYTES, and at least BLOCK_MIN."""
    itemsize = 4 if single else 8
    fit = BLOCK_BYTES // (rows * itemsize) // BLOCK_STEP * BLOCK_STEP
    return max(BLOCK_MIN, fit)


def padded(n, dtype="float64"):
    """The row length of a generated full-batch kernel for n samples of ``dtype``: n
    rounded up to whole vectors, and a line more for a row of whole ALIAS_BYTES."""
    itemsize = 8 if str(dtype) == "float64" else 4
    pad = PAD_BYTES // itemsize
    length = (n + pad - 1) // pad * pad
    if length * itemsize % ALIAS_BYTES == 0:
        length += max(PAD_BYTES, LINE_BYTES) // itemsize
    return length


# ------------------------------------------------------------------------- eligibility
def uses_products(n_in, n_out, nb, product_min_work):
    """batch.uses_products, in Python."""
    return (product_min_work >= 0 and nb > 1 and n_in * n_out >= PRODUCT_MIN_WEIGHTS
            and n_in * n_out * nb >= product_min_work)


def kind_for(sizes, acts, loss, mode, rule, validating, dtype, n, product_min_work):
    """The generated kernel a fit could run on ("full", "full_blocked", "sample",
    "sample_loops"), or None: full-batch fits of narrow networks without validation (in
    blocks of samples from BLOCKED_MIN_BLOCKS(_32) blocks on), and per-sample fits without
    validation.  ``mode`` and ``rule`` as loops.py names them."""
    if not ENABLED or validating or str(dtype) not in DTYPES or loss not in LOSSES \
            or not all(a in ACTIVATIONS for a in acts):
        return None
    pairs = list(zip(sizes[:-1], sizes[1:]))
    if mode == "full":
        if any(uses_products(a, b, n, product_min_work) for a, b in pairs):
            return None
        if max(sizes) <= MAX_UNITS and all(a * b + b <= MAX_LAYER_PARAMS for a, b in pairs):
            single = str(dtype) == "float32"
            blocks = BLOCKED_MIN_BLOCKS_32 if single else BLOCKED_MIN_BLOCKS
            block = block_samples(pass_row_count(sizes, loss), single)
            return "full_blocked" if padded(n, dtype) >= blocks * block else "full"
        return None
    if mode == "sample":
        n_params = sum(a * b + b for a, b in pairs)
        # the generated rows sum left to right: sample.py's order (rules.row_dot) only
        # for rows shorter than its lanes
        if rule != "stateful" and n_params <= MAX_SAMPLE_PARAMS and \
                all(width < ROW_LANES for width in sizes[2:]):
            return "sample"
        return "sample_loops"
    return None


# ------------------------------------------------------------------------ the writer
class _Writer:
    def __init__(self):
        self.lines = [f"# fastbp.kernels sources {kernel_sources_digest()}"]
        self.depth = 0

    def __call__(self, text=""):
        self.lines.append("    " * self.depth + text if text else "")

    def block(self):
        writer = self

        class _Indent:
            def __enter__(self):
                writer.depth += 1

            def __exit__(self, *exc):
                writer.depth -= 1

        return _Indent()

    def text(self):
        return "\n".join(self.lines) + "\n"


def _offsets(sizes, bias):
    w_off, b_off, pos = [], [], 0
    for a, b in zip(sizes[:-1], sizes[1:]):
        w_off.append(pos)
        pos += a * b
        b_off.append(pos if bias else -1)
        pos += b if bias else 0
    return w_off, b_off


def _dot(pairs):
    """sum of a * b over pairs, in order, as the general kernels compute it: the first
    product, then one fused multiply-add per further pair."""
    (a, b), rest = pairs[0], pairs[1:]
    expr = f"{a} * {b}"
    for a, b in rest:
        expr = f"fma({a}, {b}, {expr})"
    return expr


class _Rounding:
    """Where the generated code rounds to the model's dtype.  The general kernels keep
    activations, deltas and parameters in arrays of the dtype, so each value is rounded
    to it when stored, while a rule may compute in float64 where a float64 operand
    enters (the outputs' loss sums, added in float64).  The generated code keeps the
    same values in locals;
    in float32 ``stored`` rounds each where the general kernels store it, and ``wide``
    widens a float32 value where the general kernels pass it on as float64 (a
    conditional with a float64 alternative: Numba unifies the two types), so both give
    the same bits.  In float64 both are the expression itself."""

    def __init__(self, dtype):
        self.single = str(dtype) == "float32"

    def header(self):
        return ["T = np.float32  # the model's dtype (_Rounding)"] if self.single else []

    def stored(self, expr):
        return f"T({expr})" if self.single else expr

    def wide(self, expr):
        return f"np.float64({expr})" if self.single else expr


def _activation(code, z, width):
    """f(z) for activation ``code``: its own rule (rules.ACTIVATION_FUNCTIONS)."""
    name = ACTIVATION_FUNCTIONS[code]
    return z if name is None else f"{name}({z})"


def _activation_narrow(code, z, width):
    """sample.py's activation for a layer of ``width`` units (rules.NARROW_UNITS)."""
    if width >= NARROW_UNITS:
        return _activation(code, z, width)
    name = NARROW_ACTIVATION_FUNCTIONS[code]
    return z if name is None else f"{name}({z})"


def _output_delta(code, combined, out, y):
    """rules.output_delta with the activation known: the output error, times f'."""
    error = f"output_error({out}, {y}, scale)"
    return error if combined else _times_derivative(code, error, out)


def _times_derivative(code, d, a):
    """d * f'(z) from a = f(z) for activation ``code``: its own rule."""
    name = DERIVATIVE_FUNCTIONS[code]
    return d if name is None else f"{name}({d}, {a})"


def _write_forward(out, sizes, acts, bias, activation, rounding, layers=None, units=None):
    """One sample through every layer (or those of ``layers``, their units ``units``):
    z{l}_{j} (pre-activation) and h{l+1}_{j} from the inputs h{l}_*; each z one
    expression evaluated left to right, the general order."""
    for l in range(len(sizes) - 1) if layers is None else layers:
        I, J = sizes[l], sizes[l + 1]
        for j in range(J) if units is None else units:
            expr = _dot([(f"w{l}_{i}_{j}", f"h{l}_{i}") for i in range(I)])
            if bias:
                expr += f" + b{l}_{j}"
            out(f"z{l}_{j} = {expr}")
            h = activation(acts[l], f"z{l}_{j}", J)
            out(f"h{l + 1}_{j} = " + (h if h == f"z{l}_{j}" else rounding.stored(h)))


_HEADER = """\
import math
import numpy as np
from numba import njit, uint64
from fastbp.kernels.config import INNER, JIT
from fastbp.kernels.intrinsics import (borrowed, dot4_group_range, fma, like,
                                       squared_error_sum, sum_width)
from fastbp.kernels.loops import (DIVERGED, STOPPED_EARLY, after_record, end_of_chunk,
                                  named_options, plain_steps, record_checked,
                                  stateful_update)
from fastbp.kernels.options import Data, Work
from fastbp.kernels.rng import permutation_into
from fastbp.kernels import rules
from fastbp.kernels.rules import dot4_group, l2_penalty, learning_rate
from fastbp.kernels.sample import epoch_function

# the rules this module calls at many places: called, not inlined (rules.called)
sigmoid = rules.called(rules.sigmoid)
sigmoid_libm = rules.called(rules.sigmoid_libm)
relu = rules.called(rules.relu)
tanh = rules.called(rules.tanh)
sigmoid_back = rules.called(rules.sigmoid_back)
relu_back = rules.called(rules.relu_back)
tanh_back = rules.called(rules.tanh_back)
delta_scale = rules.called(rules.delta_scale)
loss_of_sum = rules.called(rules.loss_of_sum)
loss_term = rules.called(rules.loss_term)
loss_sum = rules.called(rules.loss_sum)
output_error = rules.called(rules.output_error)
plain_step = rules.called(rules.plain_step)
"""

# The training loop of every generated kernel: the general entries' loop (loops.py) with
# the epoch written for one architecture; {setup} and {epoch} are the kind's.
_TRAIN = """\
@njit(**JIT)
def train(params, net, data, val, loop, rule, stop, state, work, val_work, history,
          val_history, backup, epoch0, epochs):
    \"\"\"kernels.loops' training entry for this architecture (its arguments, results
    and numbers).\"\"\"
    net, data, loop, rule, stop, state, work = named_options(net, data, loop, rule, stop,
                                                             state, work)
    params, net, data, val, state, work, val_work, history, val_history, backup = borrowed(
        (params, net, data, val, state, work, val_work, history, val_history, backup))
    n = data.x.shape[0]
    record_every = loop.record_every
    r0 = (epoch0 + record_every - 1) // record_every
    guard = backup.shape[0] == params.shape[0]
{setup}    good_epochs = 0
    for e in range(epochs):
        g = epoch0 + e
        recording = g % record_every == 0
        lr = like(learning_rate(rule, g), params)
{shuffle}{epoch}        if recording:
{record}            if status == DIVERGED:
                return good_epochs, g, False
    return end_of_chunk({moments}, params, rule, state, backup, guard, good_epochs, epoch0,
                        epochs)
"""


# A recorded epoch's bookkeeping (the {record} of _TRAIN)
_AFTER_RECORD = """\
            good_epochs, status = after_record(False, False, {moments}, params, net, val,
                                               rule, stop, state, val_work, history,
                                               val_history, backup,
                                               epoch_loss, e, g, epochs, r0,
                                               record_every, guard, False, good_epochs)
"""
# after plain_steps, which checked the parameters and saved the guard's state itself
_RECORD_CHECKED = """\
            good_epochs, status = record_checked(params, history, backup, epoch_loss,
                                                 finite, e, g, r0, record_every, guard,
                                                 good_epochs)
"""


def _begin_module(what, dtype):
    """A module's writer, begun: its docstring (the kind it generates, ``what``), the
    imports (_HEADER), the dtype's rounding and two blank lines; (writer, _Rounding)."""
    rounding = _Rounding(dtype)
    out = _Writer()
    out(f'"""Generated by fastbp.kernels.generate (version {VERSION}): {what}'
        f'{_dtype_note(dtype)}."""')
    out.lines += _HEADER.splitlines() + rounding.header()
    out()
    out()
    return out, rounding


# ------------------------------------------------------------------------- full batch
def source_full(sizes, acts, bias, loss, weighted, rule, dtype="float64", blocked=False):
    """The module of a full-batch kernel: ``epoch_pass`` (forward, loss, backward and
    gradient of the whole batch) and ``train``; ``rule`` "plain" or "stateful";
    ``blocked``: epoch_pass a block of samples at a time (kind "full_blocked")."""
    sizes, acts = tuple(map(int, sizes)), tuple(map(int, acts))
    out, rounding = _begin_module(
        f"full batch, sizes={sizes}, acts={acts}, bias={bias}, loss={loss}, "
        f"weighted={weighted}, rule={rule}", dtype)
    _write_pass(out, sizes, acts, bias, loss, weighted, rounding, blocked)
    out()
    out()
    setup = (_rows(blocked) + textwrap.indent(_LOAD_ROWS, "    ") + _PASS_ROWS
             + "    l2_scale = loop.batch_size / n if rule.sample_mean else 1.0\n")
    # the plain rule checks the new parameters as it steps, and saves the guard's state
    # in the epoch after a recorded one (loops.plain_steps, record_checked)
    update = ("        finite = plain_steps(params, work.grad, lr, backup, guard and e > 0\n"
              "                             and (g - 1) % record_every == 0)\n"
              if rule == "plain" else
              "        stateful_update(params, work.grad, lr, net, rule, state, l2_scale)\n")
    l2 = ("" if rule == "plain" else
          "            bl += l2_scale * l2_penalty(params, net, rule.l2_loss)\n")
    epoch = ("        bl = epoch_pass(params, rows, work.grad, sw, n, P, recording, chains)\n"
             "        epoch_loss = 0.0\n"
             "        if recording:  # as loops' batch epoch with one batch\n"
             + l2 +
             "            epoch_loss = (n * bl) / n if rule.sample_mean else bl\n"
             + update)
    record = (_RECORD_CHECKED if rule == "plain" else
              _AFTER_RECORD.format(moments=rule == "stateful"))
    out.lines += _TRAIN.format(setup=setup, shuffle="", epoch=epoch, record=record,
                               moments=rule == "stateful").splitlines()
    out()
    out()
    out.lines += _LOSS_AND_GRADIENT.format(rows=_rows(blocked)).splitlines()
    return out.text()


# A full-batch kernel's rows: P samples, n rounded up to padded(n) (the work's buffers
# hold P); sw the sample weights' row (empty without weights); the blocks' gradient
# chains (intrinsics.dot4_group_range; none without blocks) ...
def _rows(blocked):
    chains = ("np.empty(params.shape[0] * sum_width(params), params.dtype)" if blocked
              else "None")
    return ("    P = work.w_batch.shape[0]\n"
            "    sw = work.w_batch[:P if data.w.shape[0] > 0 else 0]\n"
            f"    chains = {chains}\n")
# ... the views of them that epoch_pass reads and writes, taken once, not every epoch:
# as epoch_pass's first lines (it is inlined in the epoch loop) LLVM kept their slicing
# and the loops' overlap checks on them in every epoch (W3: float64 784 -> 610 ns an
# epoch taken out, float32 468 -> 359) ...
_PASS_ROWS = """\
    rows = pass_rows(work.acts, work.deltas, work.y_batch, work.z_out, work.w_batch, P)
"""
# ... and the data copied into them (at the function body's indent level).  The padded
# samples are copies of sample 0, so they compute its values: finite wherever sample
# 0's are.  The keep row (w_batch) holds each sample's factor on its output deltas: its
# weight, or 1 without weights, and 0 for the padding, whose deltas are then zeros.
_LOAD_ROWS = """\
for i in range(data.x.shape[1]):
    for s in range(P):
        work.acts[i * P + s] = data.x[s if s < n else 0, i]
for j in range(data.y.shape[1]):
    for s in range(P):
        work.y_batch[j * P + s] = data.y[s if s < n else 0, j]
for s in range(P):
    work.w_batch[s] = 0.0 if s >= n else data.w[s] if data.w.shape[0] > 0 else 1.0
"""
# The full-batch module's evaluation for L-BFGS: kernels.loops.loss_and_gradient's
# arguments and numbers (the loss of the whole set, its gradient into grad), on
# epoch_pass.  Compiled only when called (evaluator).
_LOSS_AND_GRADIENT = ("""\
@njit(**JIT)
def loss_and_gradient(params, net, data, grad, work, gathered):
    \"\"\"kernels.loops.loss_and_gradient for this architecture (its arguments, results
    and numbers): net, data and work as plain tuples; ``gathered``: an earlier call
    left data in work's rows.\"\"\"
    data, work = Data(*data), Work(*work)
    n = data.x.shape[0]
{rows}\
    if not gathered:
""" + textwrap.indent(_LOAD_ROWS, "        ") + _PASS_ROWS + """\
    return epoch_pass(params, rows, grad, sw, n, P, True, chains)
""")


_SHUFFLE = """\
        if loop.shuffle:
            permutation_into(work.perm, state.rng)
"""


def _write_pass(out, sizes, acts, bias, loss, weighted, rounding, blocked):
    """epoch_pass: forward, backward, loss and gradient of one full batch.

    The forward pass is a few loops over the P samples per layer, each writing a few
    units' rows (FORWARD_ROWS_PER_LOOP); the backward pass is one loop through all
    layers, with a sample's deltas in registers, or a few loops of a few rows for
    networks with more units (ONE_LOOP_DELTA_ROWS).  LLVM vectorizes them across
    samples, and with P a multiple of the vector width no scalar remainder runs.
    The loss runs over the n real samples only.  With the backward pass in loops, the
    gradient's sums run on to n rounded up to their vector width (intrinsics.sum_width),
    where the padded samples' deltas are zeros (the keep row): each of their products
    adds a zero, which leaves a chain as it was (a chain starts at +0 and never holds
    -0).  So these are the sums over the n real samples, in the general kernels' order,
    bit for bit, without the masked last step that n % width samples need (a float32
    W3 epoch of 100 samples: 11 ns of 270).  The one-loop networks' sums stop at n:
    the keep row, read in their one loop, stopped LLVM vectorizing it (too many rows to
    check for overlap, it seems: the XOR net in float32, 312 -> 459 ns an epoch).
    """
    L = len(sizes) - 1
    K = sizes[-1]
    a_base = [sum(sizes[:l]) for l in range(L + 1)]
    rows = []  # pass_rows' views, in its tuple's order: (local, buffer, row)
    for l in range(L + 1):
        rows += [(f"a{l}_{i}", "acts", a_base[l] + i) for i in range(sizes[l])]
        if l > 0:
            rows += [(f"d{l}_{i}", "deltas", a_base[l] + i) for i in range(sizes[l])]
    rows += [(f"y{j}", "y", j) for j in range(K)]
    if loss == BCE:
        rows += [(f"zo{j}", "z_out", j) for j in range(K)]
    rows += [("keep", "keep", 0)]
    assert len(rows) == pass_row_count(sizes, loss)
    names = ", ".join(name for name, _, _ in rows) + ","
    # inlined into their callers at Numba's level: compiled once, inside train, instead
    # of once alone and again where LLVM links them into train (a first fit of the XOR
    # net compiles ~0.5 s sooner)
    out("@njit(**dict(INNER, inline=\"always\"))")
    out("def pass_rows(acts, deltas, y, z_out, keep, P):")
    with out.block():
        out('"""epoch_pass\'s rows: per layer, sizes[l] rows of P samples of acts and of')
        out('deltas (none of layer 0\'s deltas), then y\'s (and z_out\'s) rows, and the')
        out('keep row."""')
        for name, buf, row in rows:
            out(f"{name} = {buf}[{row} * P:{row + 1} * P]")
        out(f"return ({names})")
    out()
    out()
    out("@njit(**dict(INNER, inline=\"always\"))")
    out("def epoch_pass(params, rows, grad, sw, n, P, recording, chains):")
    with out.block():
        out('"""Gradient of the loss of samples [0, n) into grad; returns the loss when')
        out('recording (else 0).  rows: pass_rows\' views."""')
        out(f"{names} = rows")
        _write_parameters(out, sizes, bias)
        if blocked:
            _write_blocks(out, sizes, acts, bias, loss, weighted, rounding, rows)
        else:
            _write_whole(out, sizes, acts, bias, loss, weighted, rounding)
        out(f"return loss_of_sum(total, {loss}, {K}, n) if recording else 0.0")


def _write_parameters(out, sizes, bias):
    """Every weight and bias as a local: w{l}_{i}_{j} and b{l}_{j} from params."""
    w_off, b_off = _offsets(sizes, bias)
    for l in range(len(sizes) - 1):
        I, J = sizes[l], sizes[l + 1]
        for i in range(I):
            out("; ".join(f"w{l}_{i}_{j} = params[{w_off[l] + i * J + j}]" for j in range(J)))
        if bias:
            out("; ".join(f"b{l}_{j} = params[{b_off[l] + j}]" for j in range(J)))


def _write_whole(out, sizes, acts, bias, loss, weighted, rounding):
    """epoch_pass's body for the batch in one piece: each loop over all P samples."""
    L, K = len(sizes) - 1, sizes[-1]
    one_loop = sum(sizes[1:]) <= ONE_LOOP_DELTA_ROWS
    _write_forward_loops(out, sizes, acts, bias, loss, rounding, "range(P)")
    out("scale = " + rounding.stored(f"delta_scale({loss}, {acts[L - 1]}, {K}, n)"))
    _write_backward(out, sizes, acts, loss, weighted, rounding, one_loop, "range(P)")
    _write_loss(out, sizes, loss, weighted)
    width = 8 if rounding.single else 4  # intrinsics.sum_width
    out("un = uint64(n)" if one_loop else
        f"un = uint64((n + {width - 1}) // {width} * {width})  # at most P")
    for first, xs, ys in _gradient_groups(sizes, bias):
        out(f"dot4_group(grad, {first}, ({xs},), ({ys},), un)")


def _write_blocks(out, sizes, acts, bias, loss, weighted, rounding, rows):
    """epoch_pass's body a block of samples at a time (block_samples: the block's
    ``rows`` rows stay in the L1 cache from the forward pass to the gradient), each
    loop over the block's samples, the gradient's chains carried from block to block
    (intrinsics.dot4_group_range): _write_whole's numbers."""
    L, K = len(sizes) - 1, sizes[-1]
    one_loop = sum(sizes[1:]) <= ONE_LOOP_DELTA_ROWS
    width = 8 if rounding.single else 4  # intrinsics.sum_width
    out("un = n" if one_loop else f"un = (n + {width - 1}) // {width} * {width}")
    out("scale = " + rounding.stored(f"delta_scale({loss}, {acts[L - 1]}, {K}, n)"))
    block = block_samples(len(rows), rounding.single)
    out(f"for b0 in range(0, P, {block}):")
    with out.block():
        out(f"b1 = min(b0 + {block}, P)")
        # unsigned: a signed index not known to be >= 0 gets Numba's wraparound, and
        # the loops stay scalar (batch.py)
        out("s0, s1 = uint64(b0), uint64(b1)")
        _write_forward_loops(out, sizes, acts, bias, loss, rounding, "range(s0, s1)")
        _write_backward(out, sizes, acts, loss, weighted, rounding, one_loop,
                        "range(s0, s1)")
        out("stop = min(b1, un)  # the block's samples of the sums (none past un)")
        out("start = min(b0, stop)")
        for first, xs, ys in _gradient_groups(sizes, bias):
            out(f"dot4_group_range(grad, {first}, ({xs},), ({ys},), start, stop, chains, "
                f"b1 == P)")
    _write_loss(out, sizes, loss, weighted)


def _write_forward_loops(out, sizes, acts, bias, loss, rounding, samples):
    """The forward pass over ``samples`` (a range's text): per layer, loops of
    FORWARD_ROWS_PER_LOOP units."""
    L = len(sizes) - 1
    for l in range(L):
        for first in range(0, sizes[l + 1], FORWARD_ROWS_PER_LOOP):
            units = range(first, min(first + FORWARD_ROWS_PER_LOOP, sizes[l + 1]))
            out(f"for s in {samples}:")
            with out.block():
                for i in range(sizes[l]):
                    out(f"h{l}_{i} = a{l}_{i}[s]")
                _write_forward(out, sizes, acts, bias, _activation, rounding, [l], units)
                for j in units:
                    out(f"a{l + 1}_{j}[s] = h{l + 1}_{j}")
                if loss == BCE and l == L - 1:
                    for j in units:
                        out(f"zo{j}[s] = z{L - 1}_{j}")


def _write_backward(out, sizes, acts, loss, weighted, rounding, one_loop, samples):
    """The deltas over ``samples``: batch.output_deltas, then batch.backward's."""
    combined = loss == BCE and acts[-1] == SIGMOID
    if one_loop:
        _write_backward_one_loop(out, sizes, acts, rounding, combined,
                                 "sw[u]" if weighted else None, samples)
    else:
        _write_backward_loops(out, sizes, acts, rounding, combined, "keep[u]", samples)


def _write_loss(out, sizes, loss, weighted):
    """The loss when recording: batch.batch_loss's order, output by output, each row in
    rules.loss_sum's chains (sw is empty without sample weights).  The squared error's
    sum is loss_sum's own intrinsic, emitted here: loss_sum is called, not inlined, and
    the call (with its arrays' reference counts) cost more than W3's sum itself.  After
    the backward pass, not before: the deltas do not wait on the sum's chain of adds
    (whole fits, in-process, paired with the loss before them: W3 float64 0.97-1.01,
    float32 0.96; the XOR net 0.98, 0.96; the admissions net 0.98, 1.01)."""
    L, K = len(sizes) - 1, sizes[-1]
    out("total = np.float64(0.0)")
    out("if recording:")
    with out.block():
        for j in range(K):
            if loss == BCE:
                out(f"total += loss_sum(a{L}_{j}, y{j}, zo{j}, sw, n, {loss})")
            else:
                out(f"total += squared_error_sum(a{L}_{j}, y{j}, "
                    f"{'sw' if weighted else 'None'}, uint64(n))")


def _gradient_groups(sizes, bias):
    """The gradient's sums, batch.backward's (rules.dot4 / sum4), GRADIENT_GROUP at a
    time (rules.dot4_group): (first parameter, its x rows, its y rows) per group, each
    sum over the n real samples (and, after backward loops, padded ones, whose deltas
    are zeros)."""
    L = len(sizes) - 1
    w_off, b_off = _offsets(sizes, bias)
    sums = {}  # parameter index -> (x row, y row or None)
    for l in range(L):
        I, J = sizes[l], sizes[l + 1]
        for i in range(I):
            for j in range(J):
                sums[w_off[l] + i * J + j] = (f"a{l}_{i}", f"d{l + 1}_{j}")
        if bias:
            for j in range(J):
                sums[b_off[l] + j] = (f"d{l + 1}_{j}", "None")
    assert sorted(sums) == list(range(len(sums)))
    for first in range(0, len(sums), GRADIENT_GROUP):
        group = [sums[p] for p in range(first, min(first + GRADIENT_GROUP, len(sums)))]
        yield first, ", ".join(x for x, _ in group), ", ".join(y for _, y in group)


def _output_delta_text(acts, combined, rounding, j, value, factor):
    """Output j's delta of sample u, from its output ``value``, times ``factor`` (None:
    none): the sample's weight "sw[u]", or the keep row's "keep[u]" -- the weight (an
    exact 1 without weights), 0 for a padded sample."""
    g = rounding.stored(_output_delta(acts[-1], combined, value, f"y{j}[u]"))
    return g if factor is None else f"{g} * {factor}"


def _hidden_delta_text(sizes, acts, rounding, l, i, above, value):
    """Unit i of layer l's delta of sample u: the chain over the deltas ``above(j)`` of
    layer l + 1, times the derivative at its activation ``value``."""
    chain = _dot([(f"w{l}_{i}_{j}", above(j)) for j in range(sizes[l + 1])])
    g = _times_derivative(acts[l - 1], chain, value)
    return g if g == chain else rounding.stored(g)


def _write_backward_one_loop(out, sizes, acts, rounding, combined, factor, samples):
    """The deltas of every layer in one loop over the samples, a sample's in registers;
    the output deltas times ``factor`` (_output_delta_text)."""
    L = len(sizes) - 1
    out(f"for u in {samples}:")
    with out.block():
        for l in range(1, L + 1):
            for j in range(sizes[l]):
                out(f"v{l}_{j} = a{l}_{j}[u]")
        for j in range(sizes[L]):
            out(f"g{L}_{j} = " + _output_delta_text(acts, combined, rounding, j,
                                                    f"v{L}_{j}", factor))
        for l in range(L - 1, 0, -1):
            for i in range(sizes[l]):
                above = lambda j, l=l: f"g{l + 1}_{j}"  # noqa: E731  (registers)
                out(f"g{l}_{i} = " + _hidden_delta_text(sizes, acts, rounding, l, i, above,
                                                        f"v{l}_{i}"))
        for l in range(1, L + 1):
            for j in range(sizes[l]):
                out(f"d{l}_{j}[u] = g{l}_{j}")


def _write_backward_loops(out, sizes, acts, rounding, combined, factor, samples):
    """The deltas in loops of DELTA_ROWS_PER_LOOP rows each (the output layer's first,
    then each hidden layer's from the top), every loop reading the rows above from
    memory -- except those it has just computed itself, which it keeps in locals: the
    rows all lie in one buffer, so after the store of a row LLVM has to read back
    every row it cannot prove untouched, and a delta read back from the store it has
    just made waits for it (W3, whose first loop computed the output delta and then
    read it twice: in-process alternating fits, float64 548 -> 518 ns an epoch,
    float32 363 -> 341).  The output deltas times ``factor`` (_output_delta_text)."""
    L = len(sizes) - 1
    rows = [(L, j) for j in range(sizes[L])] + [(l, i) for l in range(L - 1, 0, -1)
                                                for i in range(sizes[l])]
    for first in range(0, len(rows), DELTA_ROWS_PER_LOOP):
        out(f"for u in {samples}:")
        with out.block():
            here = set()  # the rows this loop has computed, in locals g{l}_{i}
            for l, i in rows[first:first + DELTA_ROWS_PER_LOOP]:
                if l == L:
                    g = _output_delta_text(acts, combined, rounding, i,
                                           f"a{L}_{i}[u]", factor)
                else:
                    above = lambda j, l=l: (f"g{l + 1}_{j}" if (l + 1, j) in here  # noqa: E731
                                            else f"d{l + 1}_{j}[u]")
                    g = _hidden_delta_text(sizes, acts, rounding, l, i, above,
                                           f"a{l}_{i}[u]")
                out(f"g{l}_{i} = {g}")
                out(f"d{l}_{i}[u] = g{l}_{i}")
                here.add((l, i))



# ------------------------------------------------------------------------ predictions
# the output layers a generated predict applies after its forward loops, as the general
# forward pass does: softmax over each sample's outputs, poisson's exp on each output
PREDICT_OUTPUTS = (SOFTMAX, EXP)


def predicts(sizes, acts, dtype, nb, product_min_work):
    """Whether the predictions of a network (dense inputs) can run on a generated
    ``predict`` (source_predict): the activations of the generated kernels (and a
    softmax or exp output layer) and the narrow layers of their full-batch kind, in a
    dtype they take -- the loss plays no part --, and, as for that kind, no layer the
    general entry would take through the matrix products in its batches of nb samples
    (faster there than these loops: a 4-16-15-3 net's 100,000 float32 samples took twice
    as long)."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    return (ENABLED and str(dtype) in DTYPES and all(int(a) in ACTIVATIONS for a in acts[:-1])
            and int(acts[-1]) in ACTIVATIONS + PREDICT_OUTPUTS
            and max(sizes) <= MAX_UNITS and all(a * b + b <= MAX_LAYER_PARAMS for a, b in pairs)
            and not any(uses_products(a, b, nb, product_min_work) for a, b in pairs))


def source_predict(sizes, acts, bias, dtype="float64"):
    """The module of a generated ``predict(params, x, out)``: out (n, sizes[-1]) <- the
    network's outputs for x (n, sizes[0]), a block of samples at a time -- the inputs
    copied into rows, then the full-batch kernels' forward loops (_write_forward_loops,
    each z the general forward pass's chain, so the same numbers as kernels.loops.predict)
    vectorized across the block, a softmax or exp output layer applied to the output
    rows by the general pass's own rules, the outputs copied out.  A block's rows take about
    BLOCK_BYTES (block_samples), so they stay in the L1 cache between the layers.  The
    general entry compiles a predict entry and a forward pass unit for any network (about
    twice this one's compile) and makes its work buffers every call (most of a small
    prediction's time)."""
    sizes, acts = tuple(map(int, sizes)), tuple(map(int, acts))
    out, rounding = _begin_module(f"predict, sizes={sizes}, acts={acts}, bias={bias}", dtype)
    L = len(sizes) - 1
    block = block_samples(sum(sizes), rounding.single)
    out("@njit(**JIT)")
    out("def predict(params, x, out):")
    with out.block():
        out('"""kernels.loops.predict for this architecture: its numbers, from x (n, n_in)')
        out('into out (n, n_out), both C-contiguous in the model\'s dtype."""')
        # unsigned indices: the sample loops vectorize (batch.py's module docstring)
        out("n = uint64(x.shape[0])")
        out(f"rows = np.empty({sum(sizes) * block}, params.dtype)")
        row = 0
        for l in range(L + 1):
            for i in range(sizes[l]):
                out(f"a{l}_{i} = rows[{row * block}:{(row + 1) * block}]")
                row += 1
        _write_parameters(out, sizes, bias)
        out(f"for b0 in range(uint64(0), n, uint64({block})):")
        with out.block():
            out(f"nb = min(uint64({block}), n - b0)")
            out("for s in range(nb):")
            with out.block():
                for i in range(sizes[0]):
                    out(f"a0_{i}[s] = x[b0 + s, {i}]")
            last = acts[-1]
            forward = acts[:-1] + ((IDENTITY,) if last in PREDICT_OUTPUTS else (last,))
            _write_forward_loops(out, sizes, forward, bias, None, rounding, "range(nb)")
            out("for s in range(nb):")
            with out.block():
                if last == SOFTMAX:  # the output rows: sizes[-1] rows of block samples
                    first = (sum(sizes) - sizes[-1]) * block
                    out(f"rules.softmax_column(rows, uint64({first}) + s, uint64({block}), "
                        f"{sizes[-1]})")
                for j in range(sizes[-1]):
                    value = f"a{L}_{j}[s]"
                    if last == EXP:
                        value = f"rules.exp_output({value})"
                    out(f"out[b0 + s, {j}] = {value}")
    return out.text()


# ------------------------------------------------------------------------- per sample
def source_sample(sizes, acts, bias, loss, weighted, dtype="float64"):
    """The module of a per-sample kernel with the plain rule: sample.py's epoch written
    out for one architecture, the parameters held in locals (registers) across the
    samples of an epoch, each updated as sample.py updates it."""
    sizes, acts = tuple(map(int, sizes)), tuple(map(int, acts))
    L = len(sizes) - 1
    K = sizes[-1]
    w_off, b_off = _offsets(sizes, bias)
    names = []  # (local name, parameter index)
    for l in range(L):
        I, J = sizes[l], sizes[l + 1]
        names += [(f"w{l}_{i}_{j}", w_off[l] + i * J + j) for i in range(I) for j in range(J)]
        if bias:
            names += [(f"b{l}_{j}", b_off[l] + j) for j in range(J)]
    out, rounding = _begin_module(
        f"per-sample SGD, sizes={sizes}, acts={acts}, bias={bias}, loss={loss}, "
        f"weighted={weighted}", dtype)
    out("@njit(**INNER)")
    out("def sample_epoch(params, x, y, sw, lr, order, recording):")
    with out.block():
        out('"""sample.py\'s epoch with the plain rule; returns the mean sample loss when')
        out('recording (else 0)."""')
        for name, p in names:
            out(f"{name} = params[{p}]")
        out("scale = " + rounding.stored(f"delta_scale({loss}, {acts[L - 1]}, {K}, 1)"))
        out("total = 0.0")
        out("for t in range(order.shape[0]):")
        with out.block():
            out("s = order[t]")
            for i in range(sizes[0]):
                out(f"h0_{i} = x[s, {i}]")
            _write_forward(out, sizes, acts, bias, _activation_narrow, rounding)
            if weighted:
                out("ws = sw[s]")
            out("sample_loss = 0.0")
            combined = loss == BCE and acts[L - 1] == SIGMOID
            for j in range(K):
                out(f"t{j} = y[s, {j}]")
                out("if recording:")
                with out.block():
                    z = rounding.wide(f"z{L - 1}_{j}") if loss == BCE else "0.0"
                    out(f"sample_loss += loss_term(h{L}_{j}, t{j}, {z}, {loss})")
                g = rounding.stored(_output_delta(acts[L - 1], combined, f"h{L}_{j}",
                                                  f"t{j}"))
                if weighted:
                    g = f"{g} * ws"
                out(f"g{L}_{j} = {g}")
            out("if recording:")
            with out.block():
                if weighted:
                    out("sample_loss *= ws")
                out(f"total += loss_of_sum(sample_loss, {loss}, {K}, 1)")
            # backward: the deltas of layer l use its weight rows before their update
            for l in range(L - 1, -1, -1):
                I, J = sizes[l], sizes[l + 1]
                for i in range(I):
                    if l > 0:
                        # rules.row_dot of a row shorter than its lanes: left to right,
                        # each product rounded before its add
                        acc = " + ".join(f"w{l}_{i}_{j} * g{l + 1}_{j}" for j in range(J))
                        g = _times_derivative(acts[l - 1], f"({acc})", f"h{l}_{i}")
                        out(f"g{l}_{i} = " + (g if g == f"({acc})" else rounding.stored(g)))
                    for j in range(J):
                        step = f"plain_step(w{l}_{i}_{j}, h{l}_{i} * g{l + 1}_{j}, lr)"
                        out(f"w{l}_{i}_{j} = " + rounding.stored(step))
                if bias:
                    for j in range(J):
                        out(f"b{l}_{j} = " + rounding.stored(f"plain_step(b{l}_{j}, g{l + 1}_{j}, lr)"))
        for name, p in names:
            out(f"params[{p}] = {name}")
        out("return total / order.shape[0]")
    out()
    out()
    epoch = ("        epoch_loss = sample_epoch(params, data.x, data.y, data.w, lr, work.perm,\n"
             "                                  recording)\n")
    out.lines += _TRAIN.format(setup="", shuffle=_SHUFFLE, epoch=epoch,
                               record=_AFTER_RECORD.format(moments=False),
                               moments=False).splitlines()
    return out.text()


def source_sample_loops(sizes, acts, bias, loss, weighted, rule):
    """The module of a per-sample kernel for a network too large for source_sample:
    sample.py's epoch itself (sample.epoch_function: its code compiled with this
    architecture's sizes, offsets, activations and loss as constant tuples).  LLVM then
    knows every trip count; the code, and so every result, is the general kernel's."""
    sizes, acts = tuple(map(int, sizes)), tuple(map(int, acts))
    w_off, b_off = _offsets(sizes, bias)
    out = _Writer()
    out(f'"""Generated by fastbp.kernels.generate (version {VERSION}): per-sample SGD with '
        f'constant sizes, sizes={sizes}, acts={acts}, bias={bias}, loss={loss}, '
        f'weighted={weighted}, rule={rule}."""')
    out.lines += _HEADER.splitlines()
    out()
    out(f"SIZES = {sizes}")
    out(f"W_OFF = {tuple(w_off)}")
    out(f"B_OFF = {tuple(b_off)}")
    out(f"ACTS = {acts}")
    out(f"LOSS = {int(loss)}")
    out(f"PLAIN = {rule != 'stateful'}")
    # the wide layers' steps on the fit's threads (sample_share.py): compiled only into
    # the kernels of networks that have such a layer (at the fewest threads, two)
    out(f"SHARE = {rule != 'stateful' and bool(shared_weights(sizes, 2))}")
    out()
    out()
    out("# sample.py's epoch with these constants, under this module's name (Numba's cache")
    out("# files are named after it)")
    out("sample_epoch = njit(**INNER)(epoch_function(")
    out("    PLAIN, SHARE, (SIZES, W_OFF, B_OFF, ACTS, LOSS), __name__.replace('.', '_')))")
    out()
    out()
    epoch = ("        epoch_loss = sample_epoch(params, net, data.x, data.y, data.w, lr,\n"
             "                                  work.perm, work.h, work.d, recording, rule,\n"
             "                                  state, work.pool)\n")
    out.lines += _TRAIN.format(setup="", shuffle=_SHUFFLE, epoch=epoch,
                               record=_AFTER_RECORD.format(moments=rule == "stateful"),
                               moments=rule == "stateful").splitlines()
    return out.text()


# ------------------------------------------------------------------------------ cache
_cache_dirs = {}  # the environment's cache variables -> cache_dir's answer for them


def cache_dir():
    """Where generated modules (and fastbp's markers of compiled kernels) are written:
    $FASTBP_CACHE_DIR, else $NUMBA_CACHE_DIR/fastbp, else ~/.cache/fastbp (XDG), else a
    folder in the system's temporary directory.  Found once per setting of those
    variables: a small fit asks for it several times."""
    setting = tuple(os.environ.get(name) for name in (
        "FASTBP_CACHE_DIR", "NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "HOME"))
    found = _cache_dirs.get(setting)
    if found is None:
        found = _cache_dirs[setting] = _find_cache_dir()
    return found


def _find_cache_dir():
    candidates = []
    if os.environ.get("FASTBP_CACHE_DIR"):
        candidates.append(os.environ["FASTBP_CACHE_DIR"])
    if os.environ.get("NUMBA_CACHE_DIR"):
        candidates.append(os.path.join(os.environ["NUMBA_CACHE_DIR"], "fastbp"))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates.append(os.path.join(xdg, "fastbp"))
    user = os.getuid() if hasattr(os, "getuid") else "user"
    candidates.append(os.path.join(tempfile.gettempdir(), f"fastbp-{user}"))
    for path in candidates:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    return tempfile.mkdtemp(prefix="fastbp-cache-")


_loaded = {}
_lock = threading.Lock()


def key(kind, sizes, acts, bias, loss, weighted, rule, dtype="float64"):
    """What identifies a generated kernel (the dispatcher's registry uses it too)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if str(dtype) not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return ("generated", kind, tuple(int(s) for s in sizes), tuple(int(a) for a in acts),
            bool(bias), int(loss), bool(weighted), rule, str(dtype))


def predict_key(sizes, acts, bias, dtype="float64"):
    """What identifies a generated predict (its compile marker in the dispatcher)."""
    if str(dtype) not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return ("generated", "predict", tuple(int(s) for s in sizes), tuple(int(a) for a in acts),
            bool(bias), str(dtype))


def _dtype_note(dtype):
    return "" if str(dtype) == "float64" else f", dtype={dtype}"


def trainer(kind, sizes, acts, bias, loss, weighted, rule, dtype="float64"):
    """The generated ``train`` for this architecture and dtype (compiled on its first
    call, cached on disk).  kind: one of KINDS; rule: "plain" or "stateful"."""
    return _module(kind, sizes, acts, bias, loss, weighted, rule, dtype).train


def evaluator(sizes, acts, bias, loss, weighted, dtype="float64", kind="full"):
    """The generated full-batch ``loss_and_gradient`` for this architecture and dtype:
    kernels.loops.loss_and_gradient's arguments and numbers, with the work's rows padded
    to padded(n) samples (compiled on its first call, cached on disk).  It lives in the
    module of the full-batch plain-SGD kernel of ``kind`` (one of FULL_KINDS)."""
    return _module(kind, sizes, acts, bias, loss, weighted, "plain",
                   dtype).loss_and_gradient


def predictor(sizes, acts, bias, dtype="float64"):
    """The generated ``predict(params, x, out)`` for this architecture and dtype
    (source_predict; compiled on its first call, cached on disk)."""
    k = predict_key(sizes, acts, bias, dtype)
    return _module_of(k, lambda: source_predict(*k[2:])).predict


def _module(kind, sizes, acts, bias, loss, weighted, rule, dtype):
    k = key(kind, sizes, acts, bias, loss, weighted, rule, dtype)

    def source():
        args = k[2:7]
        if kind in FULL_KINDS:
            return source_full(*args, rule, dtype, blocked=kind == "full_blocked")
        if kind == "sample":
            return source_sample(*args, dtype)
        return source_sample_loops(*args, rule)

    return _module_of(k, source)


def _module_of(k, source):
    """The module of key ``k``, imported once from the text ``source()`` gives."""
    module = _loaded.get(k)
    if module is not None:
        return module
    with _lock:
        module = _loaded.get(k)
        if module is None:
            module = _loaded[k] = _import(source())
    return module


def _import(text):
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    name = f"fastbp_generated_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    folder = os.path.join(cache_dir(), "generated")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".py")
    try:
        with open(path, encoding="utf-8") as f:
            current = f.read()
    except OSError:
        current = None
    if current != text:  # absent, or not what we would write: (re)write it atomically
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    refuse_python_calls(vars(module))  # its INNER functions (epoch_pass, sample_epoch)
    return module
