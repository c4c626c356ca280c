"""GPU training of many small networks: one CUDA thread per model (numba-cuda).

Imported only by ``fastbp._cuda`` (``kernels/__init__.py`` does not import it), and
``numba.cuda`` itself only inside functions, so ``import fastbp.kernels`` never needs
CUDA.  Semantics are those of ``train.train_epochs`` run by ``ensemble.train_many``:
full batch, per-sample SGD and mini-batch SGD from one loop, the counter-based
splitmix64 shuffle (Fisher-Yates from the identity every epoch), the loss history
(full batch: the loss before the update; SGD: the mean of the epoch's batch losses) and
the divergence guard (stop at the first non-finite recorded loss or parameter and keep
the parameters of the last good check).

How a thread trains its model
-----------------------------
The kernel is GENERATED per architecture (sizes, bias, activations, loss, dtype, shared
or per-model data) and compiled once per process (``get_kernel`` caches it).  Every
parameter, gradient, activation and delta of the model is a named scalar of the
generated code (``p_17``, ``g_17``, ``a1_3``, ...) and every loop over units is written
out, so every index is a compile-time constant: the compiler keeps them all in
registers (what does not fit spills to local memory, which the hardware interleaves by
thread, so spills are coalesced too).  A generic kernel indexing ``cuda.local.array``
with loop variables would put them in local memory instead.

Samples are processed one at a time and their gradients accumulated in sample order,
which is exactly the order of the CPU's sums (feature-major batch loops sum every
gradient entry over the samples in order, every dot product over the inputs in order),
so there is no per-batch buffer and no limit on the batch size.  Differences from the
CPU, all at the level of rounding (float64 results agree to ~1e-13 relative on the
runs of the tests): ``math.exp`` (libdevice) instead of the CPU's vectorizable exp;
the GPU compiler contracts a*b+c into fused multiply-adds (NVVM's default; the CPU
rounds twice); with several outputs the batch loss is summed sample by sample instead of
output by output; and wide layers on the CPU go through BLAS.  float32 kernels compute
in float32 throughout (the CPU evaluates the sigmoid and the update in float64 and
rounds), so float32 results agree to float32 precision only.

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

Limits: MAX_PARAMS parameters per model (generated code grows with the parameter
count, and so do compile time and register spills); larger models raise ValueError
from ``check_supported`` -- train them with device="cpu".
"""
import math

import numpy as np

from . import activations as _A
from . import losses as _L
from .activations import IDENTITY, RELU, SIGMOID, TANH
from .losses import BCE, HALF_MSE, MSE, SSE

SOFTMAX = getattr(_A, "SOFTMAX", 4)
CROSS_ENTROPY = getattr(_L, "CROSS_ENTROPY", 4)

# Largest model (parameters per network) the generated kernel accepts.  At 37
# parameters (XOR 2-4-4-1) everything lives in registers; a few hundred still work with
# spills to local memory; the generated code (and its compile time) grows linearly.
MAX_PARAMS = 1024

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


def check_supported(sizes, bias):
    """ValueError when a model is too large for the one-thread-per-model kernel."""
    p = n_params_of(sizes, bias)
    if p > MAX_PARAMS:
        raise ValueError(
            f"device='cuda' trains models of up to {MAX_PARAMS} parameters (one GPU thread "
            f"per model, parameters in registers); sizes={list(sizes)} has {p}. "
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


def _activation(emit, code, z, a):
    """Lines that set ``a`` to activation ``code`` of the scalar expression ``z``."""
    if code == SIGMOID:
        # as activations.sigmoid_inplace: exp only of -|z| (clamped), one division
        emit(f"e_ = math.exp(max(-abs({z}), EXP_MIN))")
        emit(f"{a} = (ONE if {z} >= ZERO else e_) / (ONE + e_)")
    elif code == RELU:
        emit(f"{a} = {z} if {z} > ZERO else ZERO")
    elif code == TANH:
        emit(f"{a} = math.tanh({z})")
    else:
        emit(f"{a} = {z}")


def _mul_derivative(emit, code, d, a):
    """d *= f'(z), written with the activation output a (activations.mul_derivative_inplace)."""
    if code == SIGMOID:
        emit(f"{d} = {d} * ({a} * (ONE - {a}))")
    elif code == RELU:
        emit(f"{d} = {d} if {a} > ZERO else ZERO")
    elif code == TANH:
        emit(f"{d} = {d} * (ONE - {a} * {a})")


def _finite_check(emit, n_params):
    """pfin_ <- all parameters finite (x * 0 is nan for nan and +-inf, else +-0)."""
    emit("chk_ = ZERO")
    for k in range(n_params):
        emit(f"chk_ = chk_ + p_{k} * ZERO")
    emit("pfin_ = chk_ == ZERO")


def _body(sizes, bias, act_codes, loss_code, per_model):
    """Source of one thread's whole run (model ``m = m0 + tid``), at indent level 1."""
    L = len(sizes) - 1
    K = sizes[-1]
    w_off, b_off, P = _offsets(sizes, bias)
    dm = "m" if per_model else "0"
    out_act = act_codes[-1]
    combined = (loss_code == BCE and out_act == SIGMOID) or \
        (loss_code == CROSS_ENTROPY and out_act == SOFTMAX)
    keep_z = loss_code in (BCE, CROSS_ENTROPY)
    emit = _Emitter()
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
    emit("lr = DT(LR[m])")
    emit("bs = BS[m]")
    emit("shuffle = SH[m] != 0")
    emit("key = np.uint64(RNG[0, m])")
    emit("ctr0 = RNG[1, m]")
    emit("ctr = ctr0")
    for k in range(P):
        emit(f"p_{k} = P[{k}, m]")
    for k in range(P):
        emit(f"g_{k} = ZERO")
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
    if loss_code == CROSS_ENTROPY and combined:
        emit("dscale = DT(1.0 / nb)")
    elif loss_code == MSE:
        emit("dscale = DT(2.0 / cnt)")
    elif loss_code in (HALF_MSE, BCE):
        emit("dscale = DT(1.0 / cnt)")
    emit("btot = 0.0")
    emit("for t in range(pos, pos + nb):")
    emit.indent()
    emit("idx = PERM[t, tid] if shuffle else t")
    for i in range(sizes[0]):
        emit(f"a0_{i} = X[idx, {i}, {dm}]")
    # forward: z_j = w[0,j] a_0 + w[1,j] a_1 + ... + b_j, in that order (dense._affine)
    for l in range(L):
        n_in, n_out = sizes[l], sizes[l + 1]
        last = l == L - 1
        for j in range(n_out):
            expr = f"p_{w_off[l] + j} * a{l}_0"
            for i in range(1, n_in):
                expr = f"{expr} + p_{w_off[l] + i * n_out + j} * a{l}_{i}"
            if bias:
                expr = f"{expr} + p_{b_off[l] + j}"
            if act_codes[l] == SOFTMAX or (last and keep_z):
                emit(f"z{l + 1}_{j} = {expr}")
                if act_codes[l] != SOFTMAX:
                    _activation(emit, act_codes[l], f"z{l + 1}_{j}", f"a{l + 1}_{j}")
            else:
                emit(f"zt_ = {expr}")
                _activation(emit, act_codes[l], "zt_", f"a{l + 1}_{j}")
        if act_codes[l] == SOFTMAX:  # activations.softmax_inplace: shift by the max
            emit(f"zmax_ = z{l + 1}_0")
            for j in range(1, n_out):
                emit(f"zmax_ = max(zmax_, z{l + 1}_{j})")
            emit("stot_ = 0.0")
            for j in range(n_out):
                emit(f"a{l + 1}_{j} = math.exp(z{l + 1}_{j} - zmax_)")
                emit(f"stot_ += a{l + 1}_{j}")
            for j in range(n_out):
                emit(f"a{l + 1}_{j} = DT(a{l + 1}_{j} / stot_)")
    for j in range(K):
        emit(f"y_{j} = Y[idx, {j}, {dm}]")
    # batch loss (losses.batch_loss), only on recorded epochs
    emit("if rec:")
    emit.indent()
    if loss_code == CROSS_ENTROPY:
        emit(f"zmax_ = z{L}_0")
        for j in range(1, K):
            emit(f"zmax_ = max(zmax_, z{L}_{j})")
        emit("acc_ = 0.0")
        for j in range(K):
            emit(f"acc_ += math.exp(z{L}_{j} - zmax_)")
        emit("lse_ = zmax_ + math.log(acc_)")
        emit("ls_ = 0.0")
        for j in range(K):
            emit(f"ls_ += y_{j} * (lse_ - z{L}_{j})")
        emit("btot += ls_")
    for j in range(K):
        if loss_code == BCE:
            z = f"z{L}_{j}"
            emit(f"btot += max({z}, ZERO) - {z} * y_{j} + math.log1p(math.exp(-abs({z})))")
        elif loss_code != CROSS_ENTROPY:
            emit(f"dd_ = a{L}_{j} - y_{j}")
            emit("btot += dd_ * dd_")
    emit("pass")
    emit.dedent()
    # output delta (losses.output_delta)
    for j in range(K):
        if loss_code == SSE and not combined:
            emit(f"d{L}_{j} = a{L}_{j} - y_{j}")
        else:
            emit(f"d{L}_{j} = (a{L}_{j} - y_{j}) * dscale")
        if not combined:
            _mul_derivative(emit, out_act, f"d{L}_{j}", f"a{L}_{j}")
    # backward (dense.backward), gradients accumulated over the batch in sample order
    for l in range(L - 1, -1, -1):
        n_in, n_out = sizes[l], sizes[l + 1]
        for i in range(n_in):
            for j in range(n_out):
                k = w_off[l] + i * n_out + j
                emit(f"g_{k} = g_{k} + a{l}_{i} * d{l + 1}_{j}")
        if bias:
            for j in range(n_out):
                k = b_off[l] + j
                emit(f"g_{k} = g_{k} + d{l + 1}_{j}")
        if l > 0:
            for i in range(n_in):
                expr = f"p_{w_off[l] + i * n_out} * d{l + 1}_0"
                for j in range(1, n_out):
                    expr = f"{expr} + p_{w_off[l] + i * n_out + j} * d{l + 1}_{j}"
                emit(f"d{l}_{i} = {expr}")
                _mul_derivative(emit, act_codes[l - 1], f"d{l}_{i}", f"a{l}_{i}")
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
    for k in range(P):
        emit(f"p_{k} = p_{k} - lr * g_{k}")
        emit(f"g_{k} = ZERO")
    emit("nbat += 1")
    emit("pos += nb")
    emit.dedent()  # end of the batch loop
    # ---- records and the divergence guard (train.train_epochs)
    emit("last = e == limit - 1")
    emit("if (rec or last) and not replay:")
    emit.indent()
    _finite_check(emit, P)
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
    for k in range(P):
        emit(f"p_{k} = P[{k}, m]")
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
    for k in range(P):
        emit(f"P[{k}, m] = p_{k}")
    return emit.lines


def kernel_source(sizes, bias, act_codes, loss_code, dtype, per_model, target="cuda"):
    """Python source of the training kernel; target "cuda" or "cpu" (a serial twin with
    the same body, compiled with njit: used by the tests, and to read the code)."""
    sizes = tuple(int(s) for s in sizes)
    act_codes = tuple(int(a) for a in act_codes)
    body = _body(sizes, bool(bias), act_codes, int(loss_code), bool(per_model))
    args = ", ".join(KERNEL_ARGS)
    acts = ", ".join(_ACT_NAMES[a] for a in act_codes)
    head = [f"# generated: sizes={list(sizes)} bias={bool(bias)} activations=[{acts}] "
            f"loss={_LOSS_NAMES[int(loss_code)]} dtype={np.dtype(dtype).name} "
            f"per_model_data={bool(per_model)}"]
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


def _namespace(dtype):
    dt = np.dtype(dtype).type
    return {
        "math": math, "np": np, "DT": dt,
        "ZERO": dt(0.0), "ONE": dt(1.0), "EXP_MIN": dt(-708.0), "NAN": np.float64(np.nan),
        "GOLDEN": _GOLDEN, "MIX1": _MIX1, "MIX2": _MIX2,
        "S30": np.uint64(30), "S27": np.uint64(27), "S31": np.uint64(31),
    }


_CACHE = {}


def _spec(sizes, bias, act_codes, loss_code, dtype, per_model):
    return (tuple(int(s) for s in sizes), bool(bias), tuple(int(a) for a in act_codes),
            int(loss_code), np.dtype(dtype).name, bool(per_model))


def get_kernel(sizes, bias, act_codes, loss_code, dtype, per_model, target="cuda"):
    """The compiled (lazily, at the first launch) kernel for this architecture, cached."""
    spec = _spec(sizes, bias, act_codes, loss_code, dtype, per_model)
    key = spec + (target,)
    if key in _CACHE:
        return _CACHE[key]
    check_supported(spec[0], spec[1])
    src = kernel_source(*spec, target=target)
    ns = _namespace(spec[4])
    filename = f"<fastbp.kernels.cuda {target} {spec}>"
    if target == "cuda":
        from numba import cuda
        ns["cuda"] = cuda
        exec(compile(src, filename, "exec"), ns)
        kernel = cuda.jit(ns["train_kernel"])
    else:
        from numba import njit
        exec(compile(src, filename, "exec"), ns)
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
    kernel[blocks, tpb](*args)
