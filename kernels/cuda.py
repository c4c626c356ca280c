"""GPU training of many small networks: one CUDA thread per model (numba-cuda).

Imported only by ``fastbp._cuda`` (``kernels/__init__.py`` does not import it), and
``numba.cuda`` itself only inside functions, so ``import fastbp.kernels`` never needs
CUDA.  Semantics are those of the CPU Ensemble's single-model entries (loops.py):
full batch, per-sample SGD and mini-batch SGD from one loop, the counter-based
splitmix64 shuffle (Fisher-Yates from the identity every epoch), the loss history
(full batch: the loss before the update; SGD: the mean of the epoch's batch losses) and
the divergence guard (stop at the first non-finite recorded loss or parameter and keep
the parameters of the last good check).

How a thread trains its model
-----------------------------
The kernel is GENERATED per architecture (sizes, bias, activations, loss, dtype, shared
or per-model data) and compiled once per process (``get_kernel`` caches it).  The
model's parameters, gradient, activations and deltas are ``cuda.local.array``s of
compile-time sizes.  Small models (up to UNROLL_MAX_PARAMS parameters) get an UNROLLED
kernel: every loop over units is written out, so every index is a literal constant and
the compiler keeps all of them in registers (checked with ptxas for XOR 2-4-4-1: no
spill in the epoch loop).  Larger models get the same operations as emitted loops: their
registers would spill anyway, code size and compile time stay flat, and the arrays live
in local memory, which the hardware interleaves by thread (coalesced).

Samples are processed one at a time and their gradients accumulated over the batch, so
there is no per-batch buffer and no limit on the batch size; every dot product is summed
in the CPU's order (over the inputs, then the bias).  Differences from the CPU, all at
the level of rounding (float64 results agree to ~1e-13 relative in the tests): the CPU
sums each gradient entry and each output's batch loss over the samples in interleaved
chains (rules.dot4, rules.loss_sum), the GPU in one running sum; ``math.exp`` (libdevice) instead of the CPU's vectorizable
exp; the GPU compiler contracts a*b+c into fused multiply-adds (NVVM's default; the CPU
rounds twice); with several outputs the batch loss is summed sample by sample instead of
output by output; and wide layers on the CPU go through BLAS.  float32 kernels compute
in float32 throughout, as the CPU's do, but with their own expressions (libdevice's
expf, contracted multiply-adds), so float32 results agree to float32 precision only.

Divergence guard without a backup copy: the parameters in global memory are only
written at the end of a launch, so when a check fails the thread reloads them and its
generator counter and REPLAYS the good epochs (deterministic: same code, same stream),
ending with exactly the parameters the CPU's backup would hold.  Healthy models pay
nothing (a backup would cost registers on every model).

Device layouts (model index fastest: the 32 threads of a warp touch 32 consecutive
elements, one coalesced transaction):
    params   (n_params, n_models)     read once, written once per launch
    rng      (2, n_models) int64      [key, counter]
    lr (n_models,) float64, batch (n_models,) int64, active (n_models,) int64
    results  (2, n_models) int64      [epochs_done, bad_epoch] as train_epochs returns
    X        (n, n_in, D), Y (n, n_out, D); D = 1 (shared: every thread of a warp reads
             the same address, a broadcast) or n_models (per-model data, coalesced)
    history  (n_launch_models, n_records_of_this_launch) float64, one row per model
    perm     (n, n_launch_models) int32 scratch for the shuffle (only when shuffling)

Limits: at most MAX_PARAMS parameters per model; a larger model raises ValueError
(``check_supported``, before anything is sent to the GPU) naming the limit: train it with
device="cpu", where wide layers go through BLAS.  No one-block-per-model fallback: a
model that large has enough work of its own to keep CPU cores busy, and one model per
block would need a different (shared-memory, cooperative) kernel.  Samples per batch,
epochs and models are unlimited (batches are streamed sample by sample; models are
launched in chunks when the shuffle scratch would exceed 256 MiB).
"""
import math
import warnings

import numpy as np

from .rules import (BCE, CROSS_ENTROPY, EXP_MIN_ARG, HALF_MSE, IDENTITY, MSE, RELU, SIGMOID,
                    SOFTMAX, SSE, TANH)

# Largest model (parameters per network) the kernel accepts: one thread per model keeps
# ~2 x MAX_PARAMS values in local memory (16 KiB in float64, reserved for every resident
# thread of the GPU); beyond that, one thread per model is the wrong design.
MAX_PARAMS = 1024
# Models up to this many parameters get the unrolled kernel (every index a constant:
# registers; XOR 2-4-4-1 has 37).  Above it the registers spill anyway and the unrolled
# code's compile time grows (~4 s at 37 parameters, ~30 s at 337), so loops it is.
UNROLL_MAX_PARAMS = 64

THREADS_PER_BLOCK = 128

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

_ACT_NAMES = {IDENTITY: "identity", SIGMOID: "sigmoid", RELU: "relu", TANH: "tanh",
              SOFTMAX: "softmax"}
_LOSS_NAMES = {MSE: "mse", HALF_MSE: "half_mse", SSE: "sse", BCE: "bce",
               CROSS_ENTROPY: "cross_entropy"}

KERNEL_ARGS = ("P", "H", "RNG", "LR", "BS", "SH", "ACTIVE", "RES", "X", "Y", "PERM", "n",
               "epochs", "epoch0", "rec_every", "r_lo", "n_rec", "m0", "count")


def n_params_of(sizes, bias):
    return sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:]))


def check_supported(sizes, bias, loss_code):
    """ValueError when a model is too large for the one-thread-per-model kernel, or its
    loss is one the kernel does not generate."""
    if int(loss_code) not in _LOSS_NAMES:
        raise ValueError(f"device='cuda' trains the losses {sorted(_LOSS_NAMES.values())}; "
                         f"use device='cpu' for this model's loss")
    p = n_params_of(sizes, bias)
    if p > MAX_PARAMS:
        raise ValueError(
            f"device='cuda' trains models of up to {MAX_PARAMS} parameters (one GPU thread "
            f"per model, its parameters in registers or local memory); sizes={list(sizes)} "
            f"has {p}. "
            f"Use device='cpu' for this model.")
    return p


class _Emitter:
    def __init__(self):
        self.lines = []
        self.level = 0

    def __call__(self, text):
        self.lines.append("    " * self.level + text)

    def indent(self):
        self.level += 1

    def dedent(self):
        self.level -= 1


def _offsets(sizes, bias):
    w_off, b_off, pos = [], [], 0
    for a, b in zip(sizes[:-1], sizes[1:]):
        w_off.append(pos)
        pos += a * b
        if bias:
            b_off.append(pos)
            pos += b
        else:
            b_off.append(-1)
    return w_off, b_off, pos


# Scalar helpers, compiled for the target (device functions on the GPU, inlined by the
# compiler).  Calls instead of inline conditionals keep the generated kernel one long
# basic block per loop body: Numba's SSA passes grow with (variables x blocks), and a
# branch per unit made a 200-parameter kernel take minutes to compile.
_HELPERS = """
def sigmoid_(z):
    # as activations.sigmoid_inplace: exp only of -|z| (clamped), one division
    e = math.exp(max(-abs(z), EXP_MIN))
    return (ONE if z >= ZERO else e) / (ONE + e)


def relu_(z):
    return z if z > ZERO else ZERO


def drelu_(d, a):
    return d if a > ZERO else ZERO


def bce_term_(z, y):
    # -[y log p + (1-y) log(1-p)] = max(z, 0) - z y + log(1 + exp(-|z|)), p = sigmoid(z)
    return max(z, ZERO) - z * y + math.log1p(math.exp(-abs(z)))
"""
_HELPER_NAMES = ("sigmoid_", "relu_", "drelu_", "bce_term_")


def _act_expr(code, z):
    """Activation ``code`` of the scalar ``z``, as an expression."""
    if code == SIGMOID:
        return f"sigmoid_({z})"
    if code == RELU:
        return f"relu_({z})"
    if code == TANH:
        return f"math.tanh({z})"
    return z


def _times_derivative(code, d, a):
    """d * f'(z) written with the activation output a (activations.mul_derivative_inplace:
    the delta is formed first, then multiplied)."""
    if code == SIGMOID:
        return f"({d}) * ({a} * (ONE - {a}))"
    if code == RELU:
        return f"drelu_({d}, {a})"
    if code == TANH:
        return f"({d}) * (ONE - {a} * {a})"
    return d


class _Gen:
    """Emits the kernel body either UNROLLED (Python loops over units: every index a
    literal constant, so the compiler keeps the local arrays in registers) or LOOPED
    (emitted ``for`` loops: code size independent of the layer widths, arrays in local
    memory).  Both emit the same operations in the same order."""

    def __init__(self, unroll):
        self.unroll = unroll
        self.emit = _Emitter()
        self.depth = 0

    def loop(self, lo, hi, fn):
        """fn(index) for index in [lo, hi): constants when unrolled, else a loop variable."""
        if self.unroll:
            for v in range(lo, hi):
                fn(v)
            return
        if hi <= lo:
            return
        var = f"i{self.depth}_"
        self.depth += 1
        self.emit(f"for {var} in range({lo}, {hi}):")
        self.emit.indent()
        fn(var)
        self.emit.dedent()
        self.depth -= 1

    @staticmethod
    def ix(*terms):
        """Sum of products, e.g. ix(wo, (i, n_out), j): a constant when all are ints."""
        parts, const = [], 0
        for t in terms:
            if isinstance(t, tuple):
                a, b = t
                if isinstance(a, int) and isinstance(b, int):
                    const += a * b
                else:
                    parts.append(f"{a} * {b}")
            elif isinstance(t, int):
                const += t
            else:
                parts.append(str(t))
        if not parts:
            return str(const)
        if const:
            parts.append(str(const))
        return " + ".join(parts)

    def chain(self, target, first, lo, hi, term, finish=None):
        """target = (first + term(lo) + ... + term(hi-1)), summed left to right;
        finish(expr) wraps the total (an activation, a derivative)."""
        finish = finish or (lambda x: x)
        if self.unroll:
            expr = first
            for v in range(lo, hi):
                expr = f"{expr} + {term(v)}"
            self.emit(f"{target} = {finish(expr)}")
            return
        self.emit(f"acc_ = {first}")
        self.loop(lo, hi, lambda v: self.emit(f"acc_ = acc_ + {term(v)}"))
        self.emit(f"{target} = {finish('acc_')}")


def _body(sizes, bias, act_codes, loss_code, per_model, target, unroll):
    """Source of one thread's whole run (model ``m = m0 + tid``), at indent level 1.

    Parameters (p_), gradients (g_), activations (A<l>), deltas (D<l>) and output
    pre-activations (Z) are local arrays; scalars are assigned once per iteration where
    possible (Numba's SSA passes cost ~ reassigned variables x statements).
    """
    L = len(sizes) - 1
    K = sizes[-1]
    w_off, b_off, P = _offsets(sizes, bias)
    dm = "m" if per_model else "0"
    out_act = act_codes[-1]
    combined = (loss_code == BCE and out_act == SIGMOID) or \
        (loss_code == CROSS_ENTROPY and out_act == SOFTMAX)
    keep_z = loss_code in (BCE, CROSS_ENTROPY)
    G = _Gen(unroll)
    emit, loop, ix = G.emit, G.loop, G.ix
    emit.indent()
    emit("m = m0 + tid")
    emit("if ACTIVE[m] == 0:")
    emit.indent()
    emit("RES[0, m] = 0")
    emit("RES[1, m] = -1")
    emit("for r in range(n_rec):")
    emit("    H[tid, r] = NAN")
    emit("return")
    emit.dedent()
    arrays = [("p_", P), ("g_", P)] + [(f"A{l}", sizes[l]) for l in range(L + 1)] + \
        [(f"D{l}", sizes[l]) for l in range(1, L + 1)] + ([("Z", K)] if keep_z else [])
    for name, size in arrays:
        if target == "cuda":
            emit(f"{name} = cuda.local.array({size}, DT)")
        else:
            emit(f"{name} = np.empty({size}, DT)")
    emit("lr = DT(LR[m])")
    emit("bs = BS[m]")
    emit("shuffle = SH[m] != 0")
    emit("key = np.uint64(RNG[0, m])")
    emit("ctr0 = RNG[1, m]")
    emit("ctr = ctr0")
    loop(0, P, lambda k: emit(f"p_[{k}] = P[{k}, m]"))
    loop(0, P, lambda k: emit(f"g_[{k}] = ZERO"))
    emit("good = 0")
    emit("bad = -1")
    emit("replay = False")
    emit("limit = epochs")
    emit("e = 0")
    emit("while e < limit:")
    emit.indent()
    emit("g = epoch0 + e")
    emit("rec = (not replay) and (g % rec_every == 0)")
    # ---- the shuffle: rng.permutation_into, splitmix64 inlined
    emit("if shuffle:")
    emit.indent()
    emit("for i in range(n):")
    emit("    PERM[i, tid] = i")
    emit("for i in range(n - 1, 0, -1):")
    emit.indent()
    emit("x_ = key + np.uint64(ctr) * GOLDEN")
    emit("ctr += 1")
    emit("z_ = x_ + GOLDEN")
    emit("z_ = (z_ ^ (z_ >> S30)) * MIX1")
    emit("z_ = (z_ ^ (z_ >> S27)) * MIX2")
    emit("z_ = z_ ^ (z_ >> S31)")
    emit("j = np.int64(z_ % np.uint64(i + 1))")
    emit("t_ = PERM[i, tid]")
    emit("PERM[i, tid] = PERM[j, tid]")
    emit("PERM[j, tid] = t_")
    emit.dedent()
    emit.dedent()
    # ---- the batches of one epoch (train._epoch)
    emit("eloss = 0.0")
    emit("nbat = 0")
    emit("pos = 0")
    emit("while pos < n:")
    emit.indent()
    emit("nb = min(bs, n - pos)")
    emit(f"cnt = {K} * nb")
    # the scale of the output delta, as losses.output_delta picks it (None: 1.0)
    if combined:
        dscale = "DT(1.0 / nb)" if loss_code == CROSS_ENTROPY else "DT(1.0 / cnt)"
    elif loss_code == MSE:
        dscale = "DT(2.0 / cnt)"
    elif loss_code == HALF_MSE:
        dscale = "DT(1.0 / cnt)"
    else:  # SSE
        dscale = None
    if dscale is not None:
        emit(f"dscale = {dscale}")
    emit("btot = 0.0")
    emit("for t in range(pos, pos + nb):")
    emit.indent()
    emit("idx = PERM[t, tid] if shuffle else t")
    loop(0, sizes[0], lambda i: emit(f"A0[{i}] = X[idx, {i}, {dm}]"))
    # forward: z_j = w[0,j] a_0 + w[1,j] a_1 + ... + b_j, in that order (batch.affine)
    for l in range(L):
        n_in, n_out, wo, bo, code = sizes[l], sizes[l + 1], w_off[l], b_off[l], act_codes[l]
        src, dst = f"A{l}", f"A{l + 1}"

        def unit(j, l=l, n_in=n_in, n_out=n_out, wo=wo, bo=bo, code=code, src=src, dst=dst):
            def term(i):
                return f"p_[{ix(wo, (i, n_out), j)}] * {src}[{i}]"

            def finish(expr):
                return f"{expr} + p_[{ix(bo, j)}]" if bias else expr

            if code == SOFTMAX or (l == L - 1 and keep_z):
                zt = "Z" if l == L - 1 and keep_z else dst
                G.chain(f"{zt}[{j}]", f"p_[{ix(wo, j)}] * {src}[0]", 1, n_in, term, finish)
                if code != SOFTMAX:
                    emit(f"{dst}[{j}] = {_act_expr(code, f'{zt}[{j}]')}")
            else:
                G.chain(f"{dst}[{j}]", f"p_[{ix(wo, j)}] * {src}[0]", 1, n_in, term,
                        lambda x: _act_expr(code, finish(x)))

        loop(0, n_out, unit)
        if code == SOFTMAX:  # activations.softmax_inplace: shifted by the column max
            zsrc = "Z" if (l == L - 1 and keep_z) else dst
            emit(f"smax_ = {zsrc}[0]")
            loop(1, n_out, lambda j: emit(f"smax_ = max(smax_, {zsrc}[{j}])"))
            emit("stot_ = 0.0")
            loop(0, n_out, lambda j: (emit(f"{dst}[{j}] = math.exp({zsrc}[{j}] - smax_)"),
                                      emit(f"stot_ += {dst}[{j}]")))
            loop(0, n_out, lambda j: emit(f"{dst}[{j}] = DT({dst}[{j}] / stot_)"))
    out = f"A{L}"
    # batch loss (losses.batch_loss), only on recorded epochs
    emit("if rec:")
    emit.indent()
    if loss_code == CROSS_ENTROPY:
        emit("lmax_ = Z[0]")
        loop(1, K, lambda j: emit(f"lmax_ = max(lmax_, Z[{j}])"))
        emit("lacc_ = 0.0")
        loop(0, K, lambda j: emit(f"lacc_ += math.exp(Z[{j}] - lmax_)"))
        emit("lse_ = lmax_ + math.log(lacc_)")
        emit("ls_ = 0.0")
        loop(0, K, lambda j: emit(f"ls_ += Y[idx, {j}, {dm}] * (lse_ - Z[{j}])"))
        emit("btot += ls_")
    elif loss_code == BCE:
        loop(0, K, lambda j: emit(f"btot += bce_term_(Z[{j}], Y[idx, {j}, {dm}])"))
    else:
        def sq(j):
            emit(f"dd_ = {out}[{j}] - Y[idx, {j}, {dm}]")
            emit("btot += dd_ * dd_")
        loop(0, K, sq)
    emit.dedent()
    # output delta (losses.output_delta)

    def out_delta(j):
        d = f"{out}[{j}] - Y[idx, {j}, {dm}]"
        if dscale is not None:
            d = f"({d}) * dscale"
        if not combined:
            d = _times_derivative(out_act, d, f"{out}[{j}]")
        emit(f"D{L}[{j}] = {d}")
    loop(0, K, out_delta)
    # backward (batch.backward), gradients accumulated over the batch in sample order
    for l in range(L - 1, -1, -1):
        n_in, n_out, wo, bo = sizes[l], sizes[l + 1], w_off[l], b_off[l]

        def wgrad(i, l=l, n_out=n_out, wo=wo):
            def one(j):
                k = ix(wo, (i, n_out), j)
                emit(f"g_[{k}] = g_[{k}] + A{l}[{i}] * D{l + 1}[{j}]")
            loop(0, n_out, one)
        loop(0, n_in, wgrad)
        if bias:
            def bgrad(j, l=l, bo=bo):
                k = ix(bo, j)
                emit(f"g_[{k}] = g_[{k}] + D{l + 1}[{j}]")
            loop(0, n_out, bgrad)
        if l > 0:
            def back(i, l=l, n_out=n_out, wo=wo):
                G.chain(f"D{l}[{i}]", f"p_[{ix(wo, (i, n_out))}] * D{l + 1}[0]", 1, n_out,
                        lambda j: f"p_[{ix(wo, (i, n_out), j)}] * D{l + 1}[{j}]",
                        lambda x: _times_derivative(act_codes[l - 1], x, f"A{l}[{i}]"))
            loop(0, n_in, back)
    emit.dedent()  # end of the sample loop
    emit("if rec:")
    if loss_code == CROSS_ENTROPY:
        emit("    eloss += btot / nb")
    elif loss_code in (MSE, BCE):
        emit("    eloss += btot / cnt")
    elif loss_code == HALF_MSE:
        emit("    eloss += 0.5 * btot / cnt")
    else:
        emit("    eloss += 0.5 * btot")
    loop(0, P, lambda k: (emit(f"p_[{k}] = p_[{k}] - lr * g_[{k}]"), emit(f"g_[{k}] = ZERO")))
    emit("nbat += 1")
    emit("pos += nb")
    emit.dedent()  # end of the batch loop
    # ---- records and the divergence guard (train.train)
    emit("last = e == limit - 1")
    emit("if (rec or last) and not replay:")
    emit.indent()
    # all parameters finite: x * 0 is nan for nan and +-inf, else +-0
    emit("chk_ = ZERO")
    loop(0, P, lambda k: emit(f"chk_ = chk_ + p_[{k}] * ZERO"))
    emit("pfin_ = chk_ == ZERO")
    emit("if rec:")
    emit.indent()
    emit("eloss = eloss / nbat")
    emit("H[tid, g // rec_every - r_lo] = eloss")
    emit("if (eloss - eloss == 0.0) and pfin_:")
    emit("    good = e + 1")
    emit("else:")
    emit("    bad = g")
    emit.dedent()
    emit("if bad < 0 and last and not pfin_:")
    emit("    bad = g")
    emit.dedent()
    emit("if bad >= 0 and not replay:")
    emit.indent()
    emit("# replay the good epochs from the launch's start: the parameters the CPU's")
    emit("# backup holds, and the generator rewound to them (as Ensemble.fit rewinds it)")
    emit("replay = True")
    emit("ctr = ctr0")
    loop(0, P, lambda k: emit(f"p_[{k}] = P[{k}, m]"))
    emit("limit = good")
    emit("e = 0")
    emit.dedent()
    emit("else:")
    emit("    e += 1")
    emit.dedent()  # end of the epoch loop
    emit("if bad >= 0:")
    emit.indent()
    emit("RES[0, m] = good")
    emit("for r in range(bad // rec_every - r_lo + 1, n_rec):")
    emit("    H[tid, r] = NAN")
    emit.dedent()
    emit("else:")
    emit("    RES[0, m] = epochs")
    emit("RES[1, m] = bad")
    emit("RNG[1, m] = ctr")
    loop(0, P, lambda k: emit(f"P[{k}, m] = p_[{k}]"))
    return emit.lines


def unrolled(sizes, bias):
    """Whether a model gets the unrolled kernel (small enough for registers)."""
    return n_params_of(sizes, bias) <= UNROLL_MAX_PARAMS


def kernel_source(sizes, bias, act_codes, loss_code, dtype, per_model, target="cuda",
                  unroll=None):
    """Python source of the training kernel; target "cuda" or "cpu" (a serial twin with
    the same body, compiled with njit: used by the tests, and to read the code).
    unroll: None chooses by size (``unrolled``)."""
    sizes = tuple(int(s) for s in sizes)
    act_codes = tuple(int(a) for a in act_codes)
    if unroll is None:
        unroll = unrolled(sizes, bias)
    body = _body(sizes, bool(bias), act_codes, int(loss_code), bool(per_model), target,
                 bool(unroll))
    args = ", ".join(KERNEL_ARGS)
    acts = ", ".join(_ACT_NAMES[a] for a in act_codes)
    head = [f"# generated: sizes={list(sizes)} bias={bool(bias)} activations=[{acts}] "
            f"loss={_LOSS_NAMES[int(loss_code)]} dtype={np.dtype(dtype).name} "
            f"per_model_data={bool(per_model)} unrolled={bool(unroll)}"]
    if target == "cuda":
        head += [f"def train_kernel({args}):",
                 "    tid = cuda.grid(1)",
                 "    if tid >= count:",
                 "        return"]
        return "\n".join(head + body) + "\n"
    if target != "cpu":
        raise ValueError(f"target must be 'cuda' or 'cpu', got {target!r}")
    head += [f"def train_one(tid, {args}):"]
    tail = [f"def train_kernel({args}):",
            "    for tid in range(count):",
            f"        train_one(tid, {args})"]
    return "\n".join(head + body) + "\n\n\n" + "\n".join(tail) + "\n"


def build_namespace(dtype, target="cuda"):
    """Globals of a generated kernel: typed constants and the compiled scalar helpers."""
    dt = np.dtype(dtype).type
    ns = {
        "math": math, "np": np, "DT": dt,
        "ZERO": dt(0.0), "ONE": dt(1.0), "EXP_MIN": dt(EXP_MIN_ARG), "NAN": np.float64(np.nan),
        "GOLDEN": _GOLDEN, "MIX1": _MIX1, "MIX2": _MIX2,
        "S30": np.uint64(30), "S27": np.uint64(27), "S31": np.uint64(31),
    }
    exec(compile(_HELPERS, "<fastbp.kernels.cuda helpers>", "exec"), ns)
    if target == "cuda":
        from numba import cuda
        ns["cuda"] = cuda
        for name in _HELPER_NAMES:  # NVVM inlines them (checked: no call in the PTX)
            ns[name] = cuda.jit(device=True)(ns[name])
    else:
        from numba import njit
        for name in _HELPER_NAMES:
            ns[name] = njit(inline="always")(ns[name])
    return ns


_CACHE = {}


def _spec(sizes, bias, act_codes, loss_code, dtype, per_model):
    return (tuple(int(s) for s in sizes), bool(bias), tuple(int(a) for a in act_codes),
            int(loss_code), np.dtype(dtype).name, bool(per_model))


def get_kernel(sizes, bias, act_codes, loss_code, dtype, per_model, target="cuda",
               unroll=None):
    """The kernel for this architecture (compiled lazily, at its first launch), cached."""
    spec = _spec(sizes, bias, act_codes, loss_code, dtype, per_model)
    check_supported(spec[0], spec[1], spec[3])
    if unroll is None:
        unroll = unrolled(spec[0], spec[1])
    key = spec + (target, bool(unroll))
    if key in _CACHE:
        return _CACHE[key]
    ns = build_namespace(spec[4], target)
    src = kernel_source(*spec, target=target, unroll=unroll)
    exec(compile(src, f"<fastbp.kernels.cuda {target} {spec}>", "exec"), ns)
    if target == "cuda":
        # The unrolled float64 kernel wants more than 255 registers and spills anyway;
        # capping it at 128 doubles the resident threads and, measured on an H200 for
        # the XOR net (65,536 models), ran 7% faster (6.7e8 -> 7.2e8 model-epochs/s;
        # 168: no gain, 96: -16%), with bit-identical results.
        options = {"max_registers": 128} if unroll and spec[4] == "float64" else {}
        from numba import config
        if config.ENABLE_CUDASIM:
            options = {}  # the simulator's jit takes no register options
        kernel = ns["cuda"].jit(ns["train_kernel"], **options)
    else:
        from numba import njit
        ns["train_one"] = njit(ns["train_one"])
        kernel = njit(ns["train_kernel"])
    _CACHE[key] = kernel
    return kernel


def launch(kernel, n_threads, args, threads_per_block=None, sm_count=None):
    """Launch ``kernel`` on ``n_threads`` threads (one per model).

    Blocks of 128 threads when there are enough models to fill the GPU; with few models,
    warps of 32 spread over as many multiprocessors as possible.
    """
    tpb = threads_per_block
    if tpb is None:
        tpb = THREADS_PER_BLOCK
        if sm_count and -(-n_threads // tpb) < 2 * sm_count:
            tpb = 32
    blocks = max(1, -(-n_threads // tpb))
    with warnings.catch_warnings():
        # numba-cuda warns that small grids under-use the GPU: few models are few threads
        warnings.filterwarnings("ignore", message=".*under-utilization.*")
        kernel[blocks, tpb](*args)
