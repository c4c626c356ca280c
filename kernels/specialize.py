"""Kernels generated for one architecture: full-batch training of small networks.

The general kernels (dense.py, train.py) take the layer sizes as arrays: every layer is a
loop nest whose trip counts LLVM only learns at run time, the activations go through
memory between one input and the next, and each pass over a layer of 4 units x 21
samples pays the overheads of a loop (setup, remainder, slicing) that costs more than its
arithmetic.  For small networks -- the tutorials' nets, most uses of this library -- the
time goes there, not into floating-point work.

So for a network whose layers are all narrow, the training loop is written out as Python
source for its exact architecture and compiled once (``trainer``):

- the forward pass of all layers is one loop over the samples, with every weight a named
  local, the units of a sample in registers and the sigmoid inlined (scalar.sigmoid), so
  LLVM vectorizes across samples;
- the backward pass likewise; then the gradient, one dense.dot4 (four lanes in one
  SIMD vector) per entry;
- one generated module per architecture, loss and mode ("full", "plain" for the plain
  update rule, "per_sample" for batch size 1, see ``trainer``).

Per-sample SGD of networks too large to unroll ("per_sample_loops") gets a lighter form:
sgd.sgd_epoch itself, called with the architecture as constant tuples
(``source_per_sample_loops``), so that LLVM knows the trip count of every loop.

Every value is computed with the same operations in the same order as the general
kernels (products summed over the inputs in their order, dense.dot4's four-lane sums,
the sigmoid of activations.sigmoid_inplace), so the generated kernel's results equal the
general kernel's bit for bit; tests/test_specialize.py checks it.  It covers full-batch
training without validation data, float64, elementwise activations and the losses mse,
half_mse, sse and bce (``eligible``); MLP.fit uses the general kernel otherwise.

The source goes to a file in a cache folder (``cache_dir``) and is imported from there,
so Numba's on-disk cache keeps the compiled code between processes like any other kernel.
"""
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading

from .activations import IDENTITY, RELU, SIGMOID, TANH
from .config import PRODUCT_MIN_WEIGHTS
from .losses import BCE, HALF_MSE, MSE, SSE
from .sgd import VECTOR_SIGMOID_MIN_UNITS
from .simd import LANES as ROW_LANES

# Generated code grows with the number of parameters (one local per weight) and a
# sample's units must fit in registers: beyond these sizes the general kernel is used.
MAX_UNITS = 32
MAX_LAYER_PARAMS = 256
ACTIVATIONS = (IDENTITY, SIGMOID, RELU, TANH)
LOSSES = (MSE, HALF_MSE, SSE, BCE)
VERSION = 7  # part of the file name: bump when the generated code changes meaning
# FASTBP_SPECIALIZE=0 turns generated kernels off (the tests compare both paths)
ENABLED = os.environ.get("FASTBP_SPECIALIZE", "1") != "0"
# Compiling a generated kernel takes seconds the first time (Numba's disk cache keeps
# it afterwards), so a fit uses one only when its work -- epochs x samples x parameters
# -- reaches this, together with the work of the earlier fits of the same architecture
# in this process (worth_generating), or when the kernel is already loaded.  At this
# size the general kernel takes about 10 ms (admissions, 1,000 epochs: 5e6).
MIN_WORK = 4_000_000


def uses_products(n_in, n_out, nb, product_min_work):
    """dense.layer_uses_products, in Python: whether the general kernel sends this
    layer's products to its matrix-product kernel instead of the loops."""
    return (product_min_work >= 0 and nb > 1 and n_in * n_out >= PRODUCT_MIN_WEIGHTS
            and n_in * n_out * nb >= product_min_work)


MODES = ("full", "plain", "per_sample", "per_sample_loops")


def loaded(sizes, acts, bias, loss_code, weighted, mode="full"):
    """Whether this architecture's generated kernel is already imported (and so costs
    no compilation)."""
    return _key(sizes, acts, bias, loss_code, weighted, mode) in _loaded


def worth_generating(work, sizes, acts, bias, loss_code, weighted, mode="full"):
    """Whether a fit of this much work should run on its architecture's generated kernel:
    when that is already loaded, or when this fit and the earlier ones of the same
    architecture that ran on the general kernel in this process reach MIN_WORK.  A loop
    of short fits (one epoch at a time, a hyper-parameter search) thus compiles the kernel
    once it has spent about as long as one long fit would, and runs the rest on it.  The
    results do not depend on the choice: both kernels compute the same sums in the same
    order (tests/test_specialize.py)."""
    key = _key(sizes, acts, bias, loss_code, weighted, mode)
    if key in _loaded:
        return True
    total = _work_seen.get(key, 0) + work
    if total >= MIN_WORK:
        return True
    _work_seen[key] = total
    return False


# per-sample kernels keep every parameter in a register across the samples
MAX_PER_SAMPLE_PARAMS = 64


def eligible_per_sample(sizes, acts, loss_code, plain_sgd, validating, dtype, n_params):
    """Whether a per-sample (batch size 1) fit can run on a generated kernel.

    The generated code sums each back-propagated row left to right, which is
    simd.row_dot's order only for rows shorter than simd.LANES (sgd.py's order for
    longer ones is the lanes' order, which the generated code does not write)."""
    return (plain_sgd and not validating and str(dtype) == "float64"
            and loss_code in LOSSES and all(a in ACTIVATIONS for a in acts)
            and n_params <= MAX_PER_SAMPLE_PARAMS
            and all(width < ROW_LANES for width in sizes[2:]))


def per_sample_mode(sizes, acts, loss_code, plain_sgd, validating, dtype, n_params):
    """The generated kernel a per-sample (batch size 1) fit can run on: "per_sample"
    (every parameter in a register, the plain rule, small nets), "per_sample_loops"
    (sgd.sgd_epoch with constant sizes, any rule), or None (the general kernel)."""
    if eligible_per_sample(sizes, acts, loss_code, plain_sgd, validating, dtype, n_params):
        return "per_sample"
    if (not validating and str(dtype) == "float64" and loss_code in LOSSES
            and all(a in ACTIVATIONS for a in acts)):
        return "per_sample_loops"
    return None


def eligible(sizes, acts, loss_code, full_batch, validating, dtype, product_layers):
    """Whether a full-batch fit can run on a generated kernel (see the module docstring)."""
    return (full_batch and not validating and str(dtype) == "float64" and not product_layers
            and loss_code in LOSSES and all(a in ACTIVATIONS for a in acts)
            and max(sizes) <= MAX_UNITS
            and all(a * b + b <= MAX_LAYER_PARAMS for a, b in zip(sizes[:-1], sizes[1:])))


_sources_digest = None


def kernel_sources_digest():
    """A digest of every kernels/*.py file, written into each generated module (and so
    into its file name).  Numba's cache checks only a function's own source file, and a
    generated kernel's compiled code holds the code of what it calls from these files
    (sgd.sgd_epoch is inlined whole): after an upgrade, or an edit, of any of them the
    generated modules get new names and compile afresh instead of running stale code."""
    global _sources_digest
    if _sources_digest is None:
        h = hashlib.sha256()
        folder = os.path.dirname(os.path.abspath(__file__))
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
        _sources_digest = h.hexdigest()[:20]
    return _sources_digest


def _stamped_writer():
    """A _Writer whose first line stamps the module with kernel_sources_digest."""
    out = _Writer()
    out(f"# fastbp.kernels sources {kernel_sources_digest()}")
    return out


class _Writer:
    def __init__(self):
        self.lines = []
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


def _offsets(sizes, bias):
    w_off, b_off, pos = [], [], 0
    for a, b in zip(sizes[:-1], sizes[1:]):
        w_off.append(pos)
        pos += a * b
        b_off.append(pos if bias else -1)
        pos += b if bias else 0
    return w_off, b_off


def _activation(code, z, width=None):
    """The expression of activation ``code`` of ``z`` (the same for any layer width)."""
    if code == SIGMOID:
        return f"sigmoid({z})"
    if code == RELU:
        return f"{z} if {z} > 0 else 0.0"
    if code == TANH:
        return f"math.tanh({z})"
    return z


def _dot(pairs):
    """sum of a * b over pairs, in order, as the general kernels compute it: the first
    product, then one fused multiply-add per further pair (activations.fma)."""
    (a, b), rest = pairs[0], pairs[1:]
    expr = f"{a} * {b}"
    for a, b in rest:
        expr = f"fma({a}, {b}, {expr})"
    return expr


def _write_forward(out, sizes, acts, bias, activation=_activation):
    """One sample through every layer: z{l}_{j} (pre-activation) and h{l+1}_{j} from the
    inputs h0_*; each z one expression evaluated left to right, the general kernels'
    order.  ``activation(code, z, width)``: the expression of the activation of a layer
    of ``width`` units."""
    for l in range(len(sizes) - 1):
        I, J = sizes[l], sizes[l + 1]
        for j in range(J):
            expr = _dot([(f"w{l}_{i}_{j}", f"h{l}_{i}") for i in range(I)])
            if bias:
                expr += f" + b{l}_{j}"
            out(f"z{l}_{j} = {expr}")
            out(f"h{l + 1}_{j} = " + activation(acts[l], f"z{l}_{j}", J))


def _derivative(code, d, a):
    """d * f'(z) written in terms of the output a, as activations.mul_derivative_inplace."""
    if code == SIGMOID:
        return f"{d} * ({a} * (1.0 - {a}))"
    if code == RELU:
        return f"{d} if {a} > 0 else 0.0"
    if code == TANH:
        return f"{d} * (1.0 - {a} * {a})"
    return d


# Rows are padded to a multiple of this many samples (one AVX-512 vector of float64):
# the vectorized sample loops then never run a scalar remainder, which was most of the
# time for the 21 XOR samples.
PAD = 8


def source(sizes, acts, bias, loss_code, weighted, plain=False):
    """The Python source of the generated module for one architecture; ``plain``: for
    the plain update rule only (p -= lr * g, no L2), which then needs neither optim.update
    nor l2_penalty -- a cold first fit compiles 0.7 s less."""
    sizes = tuple(int(s) for s in sizes)
    acts = tuple(int(a) for a in acts)
    out = _stamped_writer()
    out(f'"""Generated by fastbp.kernels.specialize (version {VERSION}) for sizes={sizes}, '
        f'acts={acts}, bias={bias}, loss={loss_code}, weighted={weighted}."""')
    out("import math")
    out("import numpy as np")
    out("from numba import njit, uint64")
    out("from fastbp.kernels.config import JIT")
    out("from fastbp.kernels.activations import fma")
    out("from fastbp.kernels.dense import dot4, sum4")
    out("from fastbp.kernels.scalar import sigmoid")
    out("from fastbp.kernels.train import all_finite")
    out("from fastbp.kernels.optim import I_SAMPLE_MEAN, l2_penalty, learning_rate, update")
    out()
    out(f"SIZES = {sizes}")
    out(f"PAD = {PAD}")
    out()
    out()
    _write_pass(out, sizes, acts, bias, loss_code, weighted)
    out()
    out()
    train = _TRAIN_TEMPLATE
    if plain:
        train = train.replace(_L2_LINE, "").replace(_UPDATE_LINE, _PLAIN_UPDATE)
    out.lines += train.splitlines()
    return "\n".join(out.lines) + "\n"


def _rows(out, name, buf, base, count):
    """Locals name0, name1, ...: rows base, base + 1, ... of P samples (the padded
    sample count) of buf."""
    for i in range(count):
        out(f"{name}{i} = {buf}[{base + i} * P:{base + i + 1} * P]")


def _write_pass(out, sizes, acts, bias, loss_code, weighted):
    """epoch_pass: forward, loss, backward and gradient of one full batch.

    Rows hold P samples, n rounded up to a multiple of PAD, the padding's inputs 0.
    The forward and backward passes are one loop each over the P samples, through all
    layers, with the units of a sample in registers; LLVM vectorizes them across
    samples, and with P a multiple of the vector width no scalar remainder runs.
    Padded samples compute harmless finite values that no sum includes: the loss and
    the gradients run over the n real samples only, in the general kernels' order.
    The gradient entries are dense.dot4 / dense.sum4 calls: their four lanes are one
    explicit SIMD vector (simd.lanes4).  Written out here as four scalar lanes, four
    entries per loop sharing their rows' loads, they stayed scalar: W3 took 88 ms
    instead of 70, W1 50 instead of 46.
    """
    L = len(sizes) - 1
    K = sizes[-1]
    w_off, b_off = _offsets(sizes, bias)
    a_base = [sum(sizes[:l]) for l in range(L + 1)]
    out("@njit(**JIT)")
    out("def epoch_pass(params, acts, deltas, grad, y, z_out, sw, n, P, recording):")
    with out.block():
        out('"""Gradient of the loss of samples [0, n) into grad; returns the loss when')
        out('recording (else 0).  acts, deltas: per layer, sizes[l] rows of P samples."""')
        for l in range(L):
            I, J = sizes[l], sizes[l + 1]
            for i in range(I):
                out("; ".join(f"w{l}_{i}_{j} = params[{w_off[l] + i * J + j}]"
                              for j in range(J)))
            if bias:
                out("; ".join(f"b{l}_{j} = params[{b_off[l] + j}]" for j in range(J)))
        for l in range(L + 1):
            _rows(out, f"a{l}_", "acts", a_base[l], sizes[l])
            if l > 0:
                _rows(out, f"d{l}_", "deltas", a_base[l], sizes[l])
        _rows(out, "y", "y", 0, K)
        if loss_code == BCE:
            _rows(out, "zo", "z_out", 0, K)
        # forward
        out("for s in range(P):")
        with out.block():
            for i in range(sizes[0]):
                out(f"h0_{i} = a0_{i}[s]")
            _write_forward(out, sizes, acts, bias)
            for l in range(1, L + 1):
                for j in range(sizes[l]):
                    out(f"a{l}_{j}[s] = h{l}_{j}")
            if loss_code == BCE:
                for j in range(K):
                    out(f"zo{j}[s] = z{L - 1}_{j}")
        # loss: losses.batch_loss, output by output, samples in order
        out("total = 0.0")
        out("if recording:")
        with out.block():
            for j in range(K):
                out(f"for r{j} in range(n):")
                with out.block():
                    if loss_code == BCE:
                        z = f"zo{j}[r{j}]"
                        e = f"max({z}, 0.0) - {z} * y{j}[r{j}] + math.log1p(math.exp(-abs({z})))"
                    else:
                        out(f"dv{j} = a{L}_{j}[r{j}] - y{j}[r{j}]")
                        e = f"dv{j} * dv{j}"
                    out(f"total += sw[r{j}] * ({e})" if weighted else f"total += {e}")
        # backward: losses.output_delta, then dense.backward's deltas
        combined = loss_code == BCE and acts[L - 1] == SIGMOID
        if loss_code in (BCE, HALF_MSE):
            out(f"scale = 1.0 / ({K} * n)")
        elif loss_code == MSE:
            out(f"scale = 2.0 / ({K} * n)")
        else:
            out("scale = 1.0")
        out("for u in range(P):")
        with out.block():
            for l in range(1, L + 1):
                for j in range(sizes[l]):
                    out(f"v{l}_{j} = a{l}_{j}[u]")
            for j in range(K):
                out(f"t{j} = y{j}[u]")
            if weighted:
                out("sw_u = sw[u]")
            for j in range(K):
                g = f"((v{L}_{j} - t{j}) * scale)"
                if not combined:
                    g = "(" + _derivative(acts[L - 1], g, f"v{L}_{j}") + ")"
                if weighted:
                    g = f"{g} * sw_u"
                out(f"g{L}_{j} = {g}")
            for l in range(L - 1, 0, -1):
                I, J = sizes[l], sizes[l + 1]
                for i in range(I):
                    g = "(" + _dot([(f"w{l}_{i}_{j}", f"g{l + 1}_{j}") for j in range(J)]) + ")"
                    out(f"g{l}_{i} = " + _derivative(acts[l - 1], g, f"v{l}_{i}"))
            for l in range(1, L + 1):
                for j in range(sizes[l]):
                    out(f"d{l}_{j}[u] = g{l}_{j}")
        # gradients over the n real samples: dense.dot4 / dense.sum4 themselves
        out("un = uint64(n)")
        out("U0 = uint64(0)")
        for l in range(L):
            _write_layer_grads(out, sizes, bias, w_off, b_off, l)
        out("loss = 0.0")
        out("if recording:")
        with out.block():
            if loss_code == SSE:
                out("loss = 0.5 * total")
            elif loss_code == HALF_MSE:
                out(f"loss = 0.5 * total / ({K} * n)")
            else:
                out(f"loss = total / ({K} * n)")
        out("return loss")


def _write_layer_grads(out, sizes, bias, w_off, b_off, l):
    """Layer l's weight and bias gradients, one dense.dot4 / dense.sum4 call each (their
    four lanes are one SIMD vector: simd.lanes4)."""
    I, J = sizes[l], sizes[l + 1]
    for i in range(I):
        for j in range(J):
            out(f"grad[{w_off[l] + i * J + j}] = dot4(a{l}_{i}, U0, d{l + 1}_{j}, U0, un)")
    if bias:
        for j in range(J):
            out(f"grad[{b_off[l] + j}] = sum4(d{l + 1}_{j}, U0, un)")


# The def line of every generated train: kernels.train.train's arguments, in its order.
_TRAIN_DEF = """\
@njit(**JIT)
def train(params, sizes, w_off, b_off, acts_codes, loss_code, xt, yt, sw, xv, yv, swv,
          epochs, batch_size, shuffle, rng_state, epoch0, record_every,
          history, val_history, backup, best_params, es_state,
          hyper, iconf, opt_state, opt_step, decay_mask, ws, w_batch, wsv, product_min_work):
"""

# The end of every generated train loop: train.train's recording and divergence guard.
_RECORD_AND_GUARD = """\
        if recording:
            r = g // record_every
            history[r] = epoch_loss
            finite = (epoch_loss - epoch_loss == 0) and all_finite(params)
            if guard:
                if finite:
                    if e + 1 < epochs:
                        copy_into(backup, params)
                    good_epochs = e + 1
                else:
                    copy_into(params, backup)
                    return good_epochs, g, False
    if guard and not all_finite(params):
        copy_into(params, backup)
        return good_epochs, epoch0 + epochs - 1, False
    return epochs, -1, False


@njit(**JIT)
def copy_into(dst, src):  # a loop: Numba's slice assignment takes seconds to compile
    for i in range(dst.shape[0]):
        dst[i] = src[i]
"""


_L2_LINE = "            bl += l2_scale * l2_penalty(params, hyper, decay_mask)\n"
_UPDATE_LINE = ("        update(params, grad, lr, hyper, iconf, opt_state, opt_step, decay_mask, "
                "l2_scale)\n")
_PLAIN_UPDATE = """\
        for p in range(params.shape[0]):  # optim.update's plain rule
            params[p] -= lr * grad[p]
"""

_TRAIN_TEMPLATE = _TRAIN_DEF + """\
    \"\"\"kernels.train.train for this architecture, full batch, no validation data: the
    same arguments, results and return value (ws is not used: this kernel keeps its own
    buffers, with rows padded to a multiple of PAD samples).\"\"\"
    n = xt.shape[1]
    P = (n + PAD - 1) // PAD * PAD
    units = 0
    for size in SIZES:
        units += size
    acts = np.zeros(units * P, dtype=params.dtype)
    deltas = np.zeros(units * P, dtype=params.dtype)
    grad = np.zeros(params.shape[0], dtype=params.dtype)
    y = np.zeros(SIZES[-1] * P, dtype=params.dtype)
    z_out = np.zeros(SIZES[-1] * P, dtype=params.dtype)
    sw_pad = np.zeros(P if sw.shape[0] > 0 else 0, dtype=params.dtype)
    for i in range(SIZES[0]):
        for s in range(n):
            acts[i * P + s] = xt[i, s]
    for j in range(SIZES[-1]):
        for s in range(n):
            y[j * P + s] = yt[j, s]
    for s in range(sw.shape[0]):
        sw_pad[s] = sw[s]
    guard = backup.shape[0] == params.shape[0]
    sample_mean = iconf[I_SAMPLE_MEAN] != 0
    l2_scale = batch_size / n if sample_mean else 1.0
    good_epochs = 0
    for e in range(epochs):
        g = epoch0 + e
        recording = g % record_every == 0
        lr = learning_rate(hyper, iconf, g)
        bl = epoch_pass(params, acts, deltas, grad, y, z_out, sw_pad, n, P, recording)
        epoch_loss = 0.0
        if recording:  # as train._epoch with one batch
            bl += l2_scale * l2_penalty(params, hyper, decay_mask)
            epoch_loss = (n * bl) / n if sample_mean else bl
        update(params, grad, lr, hyper, iconf, opt_state, opt_step, decay_mask, l2_scale)
""" + _RECORD_AND_GUARD


def _activation_per_sample(code, z, width):
    """sgd_epoch's activation for a layer of ``width`` units: libm's exp for the sigmoid
    of narrow layers (sgd.VECTOR_SIGMOID_MIN_UNITS)."""
    if code == SIGMOID and width < VECTOR_SIGMOID_MIN_UNITS:
        return f"sigmoid_libm({z})"
    return _activation(code, z)


def _derivative_factor(code, a):
    """sgd._derivative(a, code): the factor the per-sample kernel multiplies by."""
    if code == SIGMOID:
        return f"({a} * (1.0 - {a}))"
    if code == RELU:
        return f"(1.0 if {a} > 0 else 0.0)"
    if code == TANH:
        return f"(1.0 - {a} * {a})"
    return "1.0"


def source_per_sample(sizes, acts, bias, loss_code, weighted):
    """The generated module for per-sample SGD (batch size 1) with the plain update rule:
    sgd.sgd_epoch written out for one architecture, the parameters held in locals
    (registers) across the samples of an epoch, each updated as sgd_epoch updates it."""
    sizes = tuple(int(s) for s in sizes)
    acts = tuple(int(a) for a in acts)
    L = len(sizes) - 1
    K = sizes[-1]
    w_off, b_off = _offsets(sizes, bias)
    names = []  # (local name, parameter index)
    for l in range(L):
        I, J = sizes[l], sizes[l + 1]
        names += [(f"w{l}_{i}_{j}", w_off[l] + i * J + j) for i in range(I) for j in range(J)]
        if bias:
            names += [(f"b{l}_{j}", b_off[l] + j) for j in range(J)]
    out = _stamped_writer()
    out(f'"""Generated by fastbp.kernels.specialize (version {VERSION}), per-sample SGD, for '
        f'sizes={sizes}, acts={acts}, bias={bias}, loss={loss_code}, weighted={weighted}."""')
    out("import math")
    out("import numpy as np")
    out("from numba import njit")
    out("from fastbp.kernels.config import JIT")
    out("from fastbp.kernels.activations import fma")
    out("from fastbp.kernels.scalar import sigmoid")
    out("from fastbp.kernels.sgd import sigmoid_libm")
    out("from fastbp.kernels.train import all_finite")
    out("from fastbp.kernels.optim import learning_rate")
    out("from fastbp.kernels.rng import permutation_into")
    out()
    out()
    out("@njit(**JIT)")
    out("def sgd_epoch(params, x_rows, y_rows, sw, lr, order, recording):")
    with out.block():
        out('"""sgd.sgd_epoch with the plain rule: one epoch over the samples in order;')
        out('returns the mean sample loss when recording (else 0)."""')
        for name, p in names:
            out(f"{name} = params[{p}]")
        out("total = 0.0")
        out("for t in range(order.shape[0]):")
        with out.block():
            out("s = order[t]")
            for i in range(sizes[0]):
                out(f"h0_{i} = x_rows[s, {i}]")
            _write_forward(out, sizes, acts, bias, _activation_per_sample)
            scale = {MSE: f"2.0 / {K}", HALF_MSE: f"1.0 / {K}", BCE: f"1.0 / {K}"}.get(loss_code, "1.0")
            out(f"scale = {scale}")
            if weighted:
                out("ws = sw[s]")
            out("sample_loss = 0.0")
            for j in range(K):
                out(f"t{j} = y_rows[s, {j}]")
                out(f"diff{j} = h{L}_{j} - t{j}")
                out("if recording:")
                with out.block():
                    if loss_code == BCE:
                        z = f"z{L - 1}_{j}"
                        out(f"sample_loss += max({z}, 0.0) - {z} * t{j} + "
                            f"math.log1p(math.exp(-abs({z})))")
                    else:
                        out(f"sample_loss += diff{j} * diff{j}")
                if loss_code == BCE:
                    g = f"diff{j} * scale"
                else:
                    g = f"diff{j} * scale * {_derivative_factor(acts[L - 1], f'h{L}_{j}')}"
                if weighted:
                    g = f"({g}) * ws"
                out(f"g{L}_{j} = {g}")
            out("if recording:")
            with out.block():
                if weighted:
                    out("sample_loss *= ws")
                if loss_code in (MSE, BCE):
                    out(f"total += sample_loss / {K}")
                elif loss_code == HALF_MSE:
                    out(f"total += 0.5 * sample_loss / {K}")
                else:
                    out("total += 0.5 * sample_loss")
            # backward: the deltas of layer l use its weight rows before their update
            for l in range(L - 1, -1, -1):
                I, J = sizes[l], sizes[l + 1]
                for i in range(I):
                    if l > 0:
                        # sgd.py sums this one without fma (see there)
                        acc = " + ".join(f"w{l}_{i}_{j} * g{l + 1}_{j}" for j in range(J))
                        out(f"g{l}_{i} = ({acc}) * {_derivative_factor(acts[l - 1], f'h{l}_{i}')}")
                    for j in range(J):
                        out(f"w{l}_{i}_{j} -= lr * (h{l}_{i} * g{l + 1}_{j})")
                if bias:
                    for j in range(J):
                        out(f"b{l}_{j} -= lr * g{l + 1}_{j}")
        for name, p in names:
            out(f"params[{p}] = {name}")
        out("return total / order.shape[0]")
    out()
    out()
    out.lines += _PER_SAMPLE_TEMPLATE.splitlines()
    return "\n".join(out.lines) + "\n"


def _per_sample_train(doc, buffers, call):
    """The generated per-sample train: kernels.train.train's epoch loop for batch size 1,
    ``buffers`` (lines) before it and ``call`` (the epoch's sgd_epoch call) in it."""
    return _TRAIN_DEF + f"""\
    \"\"\"{doc}\"\"\"
    perm = ws[-1]
    x_rows = xt.T  # views, as kernels.train.train
    y_rows = yt.T
{buffers}    guard = backup.shape[0] == params.shape[0]
    good_epochs = 0
    for e in range(epochs):
        g = epoch0 + e
        recording = g % record_every == 0
        lr = learning_rate(hyper, iconf, g)
        if shuffle:
            permutation_into(perm, rng_state)
        epoch_loss = {call}
""" + _RECORD_AND_GUARD


_PER_SAMPLE_TEMPLATE = _per_sample_train(
    "kernels.train.train for this architecture, batch size 1, the plain update rule,\n"
    "    no validation data: the same arguments, results and return value.",
    "", "sgd_epoch(params, x_rows, y_rows, sw, lr, perm, recording)")


def source_per_sample_loops(sizes, acts, bias, loss_code, weighted):
    """The generated module for per-sample SGD (batch size 1) of a network too large for
    source_per_sample: sgd.sgd_epoch itself (sgd_epoch_inline), called with this
    architecture's sizes, offsets, activations and loss as constant tuples.  LLVM then
    knows every trip count; the code, and so every result, is the general kernel's.
    Any update rule (the rule is read at run time, as sgd_epoch reads it)."""
    sizes = tuple(int(s) for s in sizes)
    acts = tuple(int(a) for a in acts)
    w_off, b_off = _offsets(sizes, bias)
    out = _stamped_writer()
    out(f'"""Generated by fastbp.kernels.specialize (version {VERSION}), per-sample SGD '
        f'with constant sizes, for sizes={sizes}, acts={acts}, bias={bias}, '
        f'loss={loss_code}, weighted={weighted}."""')
    out("import numpy as np")
    out("from numba import njit")
    out("from fastbp.kernels.config import JIT")
    out("from fastbp.kernels.sgd import sgd_epoch_inline")
    out("from fastbp.kernels.train import all_finite")
    out("from fastbp.kernels.optim import learning_rate")
    out("from fastbp.kernels.rng import permutation_into")
    out()
    out(f"SIZES = {sizes}")
    out(f"W_OFF = {tuple(w_off)}")
    out(f"B_OFF = {tuple(b_off)}")
    out(f"ACTS = {acts}")
    out(f"LOSS = {int(loss_code)}")
    out(f"UNITS = {sum(sizes)}")
    out()
    out()
    out.lines += _PER_SAMPLE_LOOPS_TEMPLATE.splitlines()
    return "\n".join(out.lines) + "\n"


_PER_SAMPLE_LOOPS_TEMPLATE = """\
@njit(**JIT)
def sgd_epoch(params, x_rows, y_rows, sw, lr, order, h, d, recording, hyper, iconf,
              opt_state, opt_step, decay_mask):
    \"\"\"sgd.sgd_epoch for this architecture (a call of its own, as in kernels.train).\"\"\"
    return sgd_epoch_inline(params, SIZES, W_OFF, B_OFF, ACTS, LOSS, x_rows, y_rows, sw, lr,
                            order, h, d, recording, hyper, iconf, opt_state, opt_step,
                            decay_mask)


""" + _per_sample_train(
    "kernels.train.train for this architecture, batch size 1, no validation data: the\n"
    "    same arguments, results and return value.",
    "    h = np.zeros(UNITS, dtype=params.dtype)\n"
    "    d = np.zeros(UNITS, dtype=params.dtype)\n",
    "sgd_epoch(params, x_rows, y_rows, sw, lr, perm, h, d, recording, hyper,\n"
    "                               iconf, opt_state, opt_step, decay_mask)")


def cache_dir():
    """Where generated modules are written: $FASTBP_CACHE_DIR, else $NUMBA_CACHE_DIR/fastbp,
    else ~/.cache/fastbp (XDG), else a folder in the system's temporary directory."""
    candidates = []
    if os.environ.get("FASTBP_CACHE_DIR"):
        candidates.append(os.environ["FASTBP_CACHE_DIR"])
    if os.environ.get("NUMBA_CACHE_DIR"):
        candidates.append(os.path.join(os.environ["NUMBA_CACHE_DIR"], "fastbp"))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates.append(os.path.join(xdg, "fastbp"))
    candidates.append(os.path.join(tempfile.gettempdir(), f"fastbp-{os.getuid() if hasattr(os, 'getuid') else 'user'}"))
    for path in candidates:
        path = os.path.join(path, "generated")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    return tempfile.mkdtemp(prefix="fastbp-generated-")


_loaded = {}
_work_seen = {}  # architecture key -> work of its fits so far on the general kernel
_lock = threading.Lock()


def _key(sizes, acts, bias, loss_code, weighted, mode="full"):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return (tuple(int(s) for s in sizes), tuple(int(a) for a in acts), bool(bias),
            int(loss_code), bool(weighted), mode)


def trainer(sizes, acts, bias, loss_code, weighted, mode="full"):
    """The generated ``train`` for this architecture (compiled on first call, cached).
    mode: "full" (full batch, any optimizer), "plain" (full batch, the plain update
    rule), "per_sample" (batch size 1, the plain rule) or "per_sample_loops" (batch
    size 1, any optimizer)."""
    key = _key(sizes, acts, bias, loss_code, weighted, mode)
    fn = _loaded.get(key)
    if fn is not None:
        return fn
    with _lock:
        fn = _loaded.get(key)
        if fn is None:
            if mode == "per_sample":
                text = source_per_sample(*key[:5])
            elif mode == "per_sample_loops":
                text = source_per_sample_loops(*key[:5])
            else:
                text = source(*key[:5], plain=mode == "plain")
            fn = _loaded[key] = _import(text).train
    return fn


def _import(text):
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    name = f"fastbp_generated_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    folder = cache_dir()
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
    return module
