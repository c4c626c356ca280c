"""The same workloads in other engines: NumPy, PyTorch, torch.compile, JAX,
scikit-learn and a scalar C loop -- plus fastbp itself, for ``compare.py``.

Every builder ``<engine>_<workload>(wl)`` takes a :class:`benchmarks.common.Workload`
and returns a callable ``run()`` that trains the whole workload from the
workload's initial parameters and returns the final ``(weights, biases)`` as
NumPy arrays (leading axis = model for W5).  Building does the one-off work
(imports, tensor conversion, compiling C); JIT engines compile on the first
``run()`` (or on ``run.warmup()`` when the builder provides a cheaper one), so
callers warm up before timing.

A builder raises :class:`Unavailable` when its engine is not installed or
cannot run here, and :class:`NotApplicable` when the engine has no such network
(e.g. scikit-learn has no bias-free nets).  ``run.note`` (optional) says how the
engine's version differs ("similar net", thread count, ...).

All arithmetic is in the workload's dtype (float64, or float32 with compare.py --dtype
float32), the math of ``benchmarks/common.py``'s docstring.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks import common  # noqa: E402


class Unavailable(Exception):
    """The engine is missing or does not work on this machine."""


class NotApplicable(Exception):
    """The engine has no equivalent of this network."""


ENGINES = ("fastbp", "numpy", "c", "jax", "torch", "torch.compile", "sklearn")
# not in the default set: fastbp held to one thread (n_jobs=1), beside fastbp on the
# threads it is given (compare.py --threads N), for the gain of its threads
EXTRA_ENGINES = ("fastbp.1",)
FAMILIES = ("W1", "W2a", "W2b", "W3", "W4a", "W4b", "W5")


def family(key):
    """'W4a_1024' -> 'W4a'."""
    return key.split("_")[0]


def _copy_params(wl):
    Ws = [np.array(W, dtype=wl.dtype) for W in wl.weights]
    bs = None if wl.biases is None else [np.array(b, dtype=wl.dtype) for b in wl.biases]
    return Ws, bs


def _with_note(run, note):
    run.note = note
    return run


# =============================================================================
# fastbp
# =============================================================================
def _fastbp_single(wl, **kw):
    common.import_fastbp()
    common.fastbp_model(wl)  # fail early on an API mismatch

    def run():
        m = common.fastbp_model(wl)
        common.fastbp_fit(m, wl, **kw)
        return ([np.array(W) for W in m.weights],
                None if m.biases is None else [np.array(b) for b in m.biases])

    def warmup():  # compiles every kernel this workload's runs use (threads too); tiny run
        common.fastbp_warm_up(wl, **kw)

    run.warmup = warmup
    return run


def _fastbp_one_thread(wl):
    return _fastbp_single(wl, n_jobs=1)


def fastbp_with_options(wl, **fit_options):
    """fastbp's one-model run of ``wl``, fit with these options as well (dtype_ratio.py
    --optimizer: momentum=0.9, optimizer="adam")."""
    return _fastbp_single(wl, **fit_options)


fastbp_w1 = fastbp_w2a = fastbp_w2b = fastbp_w3 = fastbp_w4a = fastbp_w4b = _fastbp_single
fastbp_1_w1 = fastbp_1_w2a = fastbp_1_w2b = fastbp_1_w3 = fastbp_1_w4a = fastbp_1_w4b = \
    _fastbp_one_thread


def fastbp_ensemble(wl):
    """fastbp.Ensemble holding the workload's initial parameters, or None."""
    fastbp = common.import_fastbp()
    Ens = getattr(fastbp, "Ensemble", None)
    if Ens is None:
        return None
    ens = Ens(list(wl.sizes), wl.n_models, activation=list(wl.activations), loss=wl.loss,
              bias=wl.bias, dtype=wl.dtype, seed=0)
    flat = np.stack([common.flat_params(*wl.model(m)) for m in range(wl.n_models)])
    if np.shape(getattr(ens, "params", None)) != flat.shape:
        raise RuntimeError(f"Ensemble.params is not (n_models, n_params) = {flat.shape}")
    ens.params[...] = flat
    return ens


def _ensemble_fit(ens, wl, n_jobs=None):
    kw = dict(epochs=wl.epochs, lr=wl.lr, batch_size=wl.batch_size, shuffle=False,
              record_every=wl.record_every)
    if n_jobs is not None:
        kw["n_jobs"] = n_jobs
    return ens.fit(wl.X, wl.y, **kw)


def fastbp_w5(wl, n_jobs=None):
    """fastbp.Ensemble if it exists, else a Python loop over MLP.fit."""
    fastbp = common.import_fastbp()
    if getattr(fastbp, "Ensemble", None) is not None:
        fastbp_ensemble(wl)  # fail early

        def run():
            ens = fastbp_ensemble(wl)
            _ensemble_fit(ens, wl, n_jobs)
            P = np.asarray(ens.params)
            return _unflatten_many(wl, P)

        def warmup():
            small = wl.tiny()
            with common.steady_state_kernels():
                _ensemble_fit(fastbp_ensemble(small), small, n_jobs)

        run.warmup = warmup
        import numba
        threads = n_jobs or numba.config.NUMBA_NUM_THREADS
        return _with_note(run, f"fastbp.Ensemble, {threads} thread{'s' * (threads > 1)}")

    def run():
        out = []
        for m in range(wl.n_models):
            Ws, bs = wl.model(m)
            mdl = common.fastbp_model(wl, Ws, bs)
            common.fastbp_fit(mdl, wl)
            out.append(common.flat_params(mdl.weights, mdl.biases))
        return _unflatten_many(wl, np.stack(out))

    def warmup():
        small = wl.tiny()
        Ws, bs = small.model(0)
        with common.steady_state_kernels():
            common.fastbp_fit(common.fastbp_model(small, Ws, bs), small)

    run.warmup = warmup
    return _with_note(run, "Python loop over MLP.fit (no fastbp.Ensemble)")


def _unflatten_many(wl, P):
    """(M, n_params) fastbp layout -> ([W (M,a,b)], [b (M,b)] or None)."""
    Ws, bs, off = [], [], 0
    for a, b in zip(wl.sizes[:-1], wl.sizes[1:]):
        Ws.append(P[:, off:off + a * b].reshape(-1, a, b))
        off += a * b
        if wl.bias:
            bs.append(P[:, off:off + b])
            off += b
    return Ws, (bs if wl.bias else None)


# =============================================================================
# NumPy, the tutorials' style
# =============================================================================
def _np_act(name):
    if name == "sigmoid":
        return lambda z: 1.0 / (1.0 + np.exp(-z))
    if name == "relu":
        return lambda z: np.maximum(0, z)
    if name == "tanh":
        return np.tanh
    return lambda z: z


def _np_dact(name):
    """Derivative from the activation's output, as the tutorials write it."""
    if name == "sigmoid":
        return lambda a: a * (1.0 - a)
    if name == "relu":
        return lambda a: (a > 0).astype(a.dtype)
    if name == "tanh":
        return lambda a: 1.0 - a * a
    return None  # identity: multiply by 1


def _np_batch_step(Ws, bs, acts, dacts, X, y, scale, lr, loss):
    """One gradient step on a batch, tutorial 000/001 style (vectorized over samples).

    Works for one model (W: (a, b)) and for a stack of models (W: (M, a, b)).
    Returns the batch loss (per model) before the update."""
    outs = [X]
    for l, W in enumerate(Ws):
        z = outs[-1] @ W
        if bs is not None:
            z += bs[l][..., None, :]
        outs.append(acts[l](z))
    err = outs[-1] - y
    sq = np.sum(err * err, axis=(-2, -1))
    d = scale * err
    for l in range(len(Ws) - 1, -1, -1):
        if dacts[l] is not None:
            d = d * dacts[l](outs[l + 1])
        d_prev = d @ np.swapaxes(Ws[l], -1, -2) if l else None
        Ws[l] -= lr * (np.swapaxes(outs[l], -1, -2) @ d)
        if bs is not None:
            bs[l] -= lr * np.sum(d, axis=-2)
        d = d_prev
    B, K = y.shape
    return {"sse": 0.5 * sq, "mse": sq / (B * K), "half_mse": 0.5 * sq / (B * K)}[loss]


def _numpy_batched(wl):
    acts = [_np_act(a) for a in wl.activations]
    dacts = [_np_dact(a) for a in wl.activations]
    N = wl.n_samples
    B = wl.batch_size or N

    def run():
        Ws, bs = _copy_params(wl)
        hist = []
        for e in range(wl.epochs):
            tot = 0.0
            for s in range(0, N, B):
                tot = tot + _np_batch_step(Ws, bs, acts, dacts, wl.X[s:s + B], wl.y[s:s + B],
                                           wl.loss_grad_scale(min(B, N - s)), wl.lr, wl.loss)
            hist.append(tot / -(-N // B))
        return Ws, bs

    return run


def numpy_w1(wl):
    """Tutorial 000: whole-batch forward/backward with np.dot, every epoch."""
    return _numpy_batched(wl)


def numpy_w3(wl):
    """Tutorial 001: the same full-batch loop (ReLU hidden layer, identity output)."""
    return _numpy_batched(wl)


def numpy_w4b(wl):
    """Mini-batches of 64, each a vectorized step."""
    return _numpy_batched(wl)


def numpy_w5(wl):
    """All models at once: stacked (M, a, b) weights and np.matmul (batched)."""
    run = _numpy_batched(wl)
    return _with_note(run, "batched over models")


def _numpy_per_sample(wl, accumulate):
    """Tutorial 004's loop: one sample at a time; accumulate=True sums the
    per-sample gradients and updates once per epoch, else updates per sample."""
    acts = [_np_act(a) for a in wl.activations]
    dacts = [_np_dact(a) for a in wl.activations]
    L = len(wl.sizes) - 1
    N = wl.n_samples
    scale = wl.loss_grad_scale(N if accumulate else 1)
    lr = wl.lr
    bias = wl.bias

    def run():
        Ws, bs = _copy_params(wl)
        for e in range(wl.epochs):
            if accumulate:
                dWs = [np.zeros_like(W) for W in Ws]
                dbs = [np.zeros_like(b) for b in bs] if bias else None
            for x, t in zip(wl.X, wl.y):
                outs = [x]
                for l in range(L):
                    z = np.dot(outs[-1], Ws[l])
                    if bias:
                        z = z + bs[l]
                    outs.append(acts[l](z))
                d = scale * (outs[-1] - t)
                gW, gb = [None] * L, [None] * L
                for l in range(L - 1, -1, -1):
                    if dacts[l] is not None:
                        d = d * dacts[l](outs[l + 1])
                    gW[l] = outs[l][:, None] * d
                    gb[l] = d
                    if l:
                        d = np.dot(Ws[l], d)
                for l in range(L):
                    if accumulate:
                        dWs[l] += gW[l]
                        if bias:
                            dbs[l] += gb[l]
                    else:
                        Ws[l] -= lr * gW[l]
                        if bias:
                            bs[l] -= lr * gb[l]
            if accumulate:
                for l in range(L):
                    Ws[l] -= lr * dWs[l]
                    if bias:
                        bs[l] -= lr * dbs[l]
        return Ws, bs

    return run


def numpy_w2a(wl):
    return _numpy_per_sample(wl, accumulate=True)


def numpy_w2b(wl):
    return _numpy_per_sample(wl, accumulate=False)


def numpy_w4a(wl):
    return _numpy_per_sample(wl, accumulate=False)


# =============================================================================
# PyTorch (eager, autograd + torch.optim.SGD) and torch.compile
# =============================================================================
def _torch():
    try:
        import torch
    except Exception as exc:
        raise Unavailable(f"torch not importable: {exc!r}")
    return torch


def _torch_loss(torch, loss):
    F = torch.nn.functional
    if loss == "sse":
        return lambda out, y: 0.5 * ((out - y) ** 2).sum()
    if loss == "mse":
        return lambda out, y: F.mse_loss(out, y)
    return lambda out, y: 0.5 * F.mse_loss(out, y)


def _torch_act_module(torch, name):
    return {"sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU,
            "tanh": torch.nn.Tanh, "identity": torch.nn.Identity}[name]()


def _torch_model(torch, wl, Ws, bs):
    layers = []
    for l, W in enumerate(Ws):
        lin = torch.nn.Linear(W.shape[0], W.shape[1], bias=bs is not None,
                              dtype=getattr(torch, wl.dtype))
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            if bs is not None:
                lin.bias.copy_(torch.from_numpy(bs[l]))
        layers += [lin, _torch_act_module(torch, wl.activations[l])]
    return torch.nn.Sequential(*layers)


def _torch_params_out(wl, model):
    lins = [m for m in model if hasattr(m, "weight")]
    Ws = [l.weight.detach().numpy().T.copy() for l in lins]
    bs = [l.bias.detach().numpy().copy() for l in lins] if wl.bias else None
    return Ws, bs


def _torch_single(wl, compiled=False):
    torch = _torch()
    if compiled:
        _check_torch_compile(torch)
        torch._dynamo.reset()  # fresh caches per cell: no recompile limit across workloads
    X = torch.from_numpy(wl.X)
    y = torch.from_numpy(wl.y)
    B = wl.batch_size or wl.n_samples
    Xb, yb = torch.split(X, B), torch.split(y, B)
    lossf = _torch_loss(torch, wl.loss)
    Ws0, bs0 = _copy_params(wl)
    # one model / optimizer / compiled function for all runs (torch.compile guards
    # on their identity); each run resets the parameters in place
    model = _torch_model(torch, wl, Ws0, bs0)
    init = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=wl.lr)

    def fwd(xb, tb):
        return lossf(model(xb), tb)

    if compiled:
        fwd = torch.compile(fwd)

        @torch.compile(fullgraph=False)
        def step():  # the "compiled optimizer" recipe
            opt.step()
    else:
        step = opt.step

    def train(epochs, max_batches=None):
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), init):
                p.copy_(p0)
        hist = []
        for e in range(epochs):
            tot = 0.0
            for xb, tb in zip(Xb[:max_batches], yb[:max_batches]):
                opt.zero_grad()
                loss = fwd(xb, tb)
                loss.backward()
                step()
                tot += loss.item()
            hist.append(tot / len(Xb))
        return _torch_params_out(wl, model)

    def run():
        return train(wl.epochs)

    run.warmup = lambda: train(2, max_batches=3)  # every shape seen, compiled
    return run


_TORCH_COMPILE_STATUS = None


def _check_torch_compile(torch):
    """torch.compile needs a working C++ toolchain (inductor); find out once."""
    global _TORCH_COMPILE_STATUS
    if _TORCH_COMPILE_STATUS is None:
        try:
            f = torch.compile(lambda a: torch.sigmoid(a @ a).sum())
            a = torch.ones(3, 3, dtype=torch.float64, requires_grad=True)
            f(a).backward()
            _TORCH_COMPILE_STATUS = ""
        except Exception as exc:
            _TORCH_COMPILE_STATUS = f"torch.compile fails here: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if _TORCH_COMPILE_STATUS:
        raise Unavailable(_TORCH_COMPILE_STATUS)


def torch_w1(wl):
    return _torch_single(wl)


torch_w2a = torch_w2b = torch_w3 = torch_w4a = torch_w4b = torch_w1


def torch_compile_w1(wl):
    """torch.compile of the model's forward+loss (AOTAutograd compiles its backward
    too) and of optimizer.step; the epoch loop stays in Python."""
    return _with_note(_torch_single(wl, compiled=True), "compiled fwd+loss (+bwd) and opt.step")


torch_compile_w2a = torch_compile_w2b = torch_compile_w3 = torch_compile_w1
torch_compile_w4a = torch_compile_w4b = torch_compile_w1


def _torch_many(wl, compiled=False):
    """All models at once: (M, a, b) parameters, broadcast matmul, one SGD."""
    torch = _torch()
    if compiled:
        _check_torch_compile(torch)
        torch._dynamo.reset()
    X = torch.from_numpy(wl.X)
    y = torch.from_numpy(wl.y)
    acts = [{"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh,
             "identity": lambda z: z}[a] for a in wl.activations]
    Ws0, bs0 = _copy_params(wl)
    Ws = [torch.tensor(W, requires_grad=True) for W in Ws0]
    bs = [torch.tensor(b[:, None, :], requires_grad=True) for b in bs0] if bs0 else None
    init = [p.detach().clone() for p in Ws + (bs or [])]
    opt = torch.optim.SGD(Ws + (bs or []), lr=wl.lr)

    def fwd():
        a = X
        for l, W in enumerate(Ws):
            z = a @ W
            if bs is not None:
                z = z + bs[l]
            a = acts[l](z)
        per_model = ((a - y) ** 2).sum(dim=(1, 2))
        if wl.loss == "sse":
            per_model = 0.5 * per_model
        else:
            per_model = per_model / (y.numel() * (2 if wl.loss == "half_mse" else 1))
        return per_model.sum(), per_model.detach()

    if compiled:
        fwd = torch.compile(fwd)

        @torch.compile(fullgraph=False)
        def step():  # the "compiled optimizer" recipe
            opt.step()
    else:
        step = opt.step

    def train(epochs):
        with torch.no_grad():
            for p, p0 in zip(Ws + (bs or []), init):
                p.copy_(p0)
        hist = torch.empty((epochs, wl.n_models), dtype=torch.float64)
        for e in range(epochs):
            opt.zero_grad()
            total, per_model = fwd()
            total.backward()
            step()
            hist[e] = per_model
        return ([W.detach().numpy().copy() for W in Ws],
                [b.detach().numpy()[:, 0, :].copy() for b in bs] if bs else None)

    def run():
        return train(wl.epochs)

    run.warmup = lambda: train(2 if compiled else 1)
    return _with_note(run, "batched over models")


def torch_w5(wl):
    return _torch_many(wl)


def torch_compile_w5(wl):
    return _torch_many(wl, compiled=True)


# =============================================================================
# JAX: jit + lax.scan over epochs (and over samples / batches), vmap for W5
# =============================================================================
def _jax(wl):
    try:
        import jax
        # float64 needs x64 mode; without it JAX computes in float32, its default
        jax.config.update("jax_enable_x64", wl.dtype == "float64")
        import jax.numpy as jnp
        from jax import lax
    except Exception as exc:
        raise Unavailable(f"jax not importable: {exc!r}")
    return jax, jnp, lax


def _jax_trainer(wl, jax, jnp, lax):
    """train(params, X, y) -> (params, history); params = [(W, b or None), ...]."""
    acts = [{"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh,
             "identity": lambda z: z}[a] for a in wl.activations]
    lr, loss, K = wl.lr, wl.loss, wl.sizes[-1]

    def loss_fn(params, xb, yb):
        a = xb
        for l, (W, b) in enumerate(params):
            z = a @ W
            if b is not None:
                z = z + b
            a = acts[l](z)
        s = jnp.sum((a - yb) ** 2)
        n = yb.shape[0] * K
        return {"sse": 0.5 * s, "mse": s / n, "half_mse": 0.5 * s / n}[loss]

    value_and_grad = jax.value_and_grad(loss_fn)

    def step(params, xb, yb):
        l, g = value_and_grad(params, xb, yb)
        return jax.tree_util.tree_map(lambda p, gp: p - lr * gp, params, g), l

    E, N = wl.epochs, wl.n_samples
    B = wl.batch_size or N
    if N % B:
        raise NotApplicable(f"{N} samples not a multiple of batch {B}")

    if B == N:
        def train(params, X, y):
            return lax.scan(lambda p, _: step(p, X, y), params, None, length=E)
    else:
        def train(params, X, y):
            Xb = X.reshape(N // B, B, X.shape[1])
            yb = y.reshape(N // B, B, y.shape[1])

            def epoch(p, _):
                p, losses = lax.scan(lambda q, xy: step(q, xy[0], xy[1]), p, (Xb, yb))
                return p, jnp.mean(losses)
            return lax.scan(epoch, params, None, length=E)
    return train


def _jax_params(wl, jnp, Ws, bs):
    return [(jnp.asarray(W), None if bs is None else jnp.asarray(bs[l])) for l, W in enumerate(Ws)]


def _jax_out(params, bias):
    Ws = [np.asarray(W) for W, _ in params]
    bs = [np.asarray(b) for _, b in params] if bias else None
    return Ws, bs


def jax_w1(wl):
    jax, jnp, lax = _jax(wl)
    train = jax.jit(_jax_trainer(wl, jax, jnp, lax))
    p0 = _jax_params(wl, jnp, wl.weights, wl.biases)
    X, y = jnp.asarray(wl.X), jnp.asarray(wl.y)

    def run():
        params, hist = train(p0, X, y)
        jax.block_until_ready((params, hist))
        return _jax_out(params, wl.bias)

    return run


jax_w2a = jax_w2b = jax_w3 = jax_w4a = jax_w4b = jax_w1


def jax_w5(wl):
    jax, jnp, lax = _jax(wl)
    train = jax.jit(jax.vmap(_jax_trainer(wl, jax, jnp, lax), in_axes=(0, None, None)))
    p0 = _jax_params(wl, jnp, wl.weights, wl.biases)
    X, y = jnp.asarray(wl.X), jnp.asarray(wl.y)

    def run():
        params, hist = train(p0, X, y)
        jax.block_until_ready((params, hist))
        return _jax_out(params, wl.bias)

    return _with_note(run, "vmap over models")


# =============================================================================
# scikit-learn MLPRegressor (similar nets: identity output, always biases)
# =============================================================================
def _sklearn_single(wl):
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPRegressor
    except Exception as exc:
        raise Unavailable(f"scikit-learn not importable: {exc!r}")
    if not wl.bias:
        raise NotApplicable("MLPRegressor always has biases")
    hidden = set(wl.activations[:-1])
    if len(hidden) != 1:
        raise NotApplicable("MLPRegressor has one hidden activation")
    act = {"sigmoid": "logistic", "relu": "relu", "tanh": "tanh", "identity": "identity"}[hidden.pop()]
    N, K = wl.n_samples, wl.sizes[-1]
    B = wl.batch_size or N
    same = wl.activations[-1] == "identity"
    # MLPRegressor steps by lr * sum_k (out - y) / B: for the same net, rescale lr to take
    # exactly our step; for a similar net (identity instead of sigmoid output) keep lr --
    # the rescaled one (x21 for W1's sse) makes the identity-output net diverge
    lr = wl.lr * {"sse": B, "mse": 2.0 / K, "half_mse": 1.0 / K}[wl.loss] if same else wl.lr
    est = MLPRegressor(hidden_layer_sizes=tuple(wl.sizes[1:-1]), activation=act, solver="sgd",
                       alpha=0.0, batch_size=B, learning_rate="constant", learning_rate_init=lr,
                       max_iter=wl.epochs, shuffle=False, tol=0.0, n_iter_no_change=wl.epochs + 1,
                       momentum=0.0, nesterovs_momentum=False, early_stopping=False,
                       random_state=0, warm_start=True)
    y = wl.y.ravel() if K == 1 else wl.y
    with warnings.catch_warnings():  # initialize coefs_ once, then overwrite them per run
        warnings.simplefilter("ignore")
        est.set_params(max_iter=1)
        est.fit(wl.X[:B], y[:B])
        est.set_params(max_iter=wl.epochs)

    def run():
        Ws, bs = _copy_params(wl)
        est.coefs_, est.intercepts_ = Ws, bs
        est.loss_curve_ = []
        est.best_loss_ = np.inf
        est._no_improvement_count = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(wl.X, y)
        return est.coefs_, est.intercepts_

    return _with_note(run, "same net" if same else f"similar net (identity output, lr {wl.lr:g})")


def sklearn_w2a(wl):
    raise NotApplicable("MLPRegressor has no bias-free net and no sigmoid output")


sklearn_w2b = sklearn_w2a
sklearn_w1 = sklearn_w3 = sklearn_w4a = sklearn_w4b = _sklearn_single


def sklearn_w5(wl):
    raise NotApplicable("no multi-model training in scikit-learn")


# =============================================================================
# a hand-written scalar C loop (gcc -O3 -march=native), through ctypes
# =============================================================================
C_SOURCE = r"""
#include <math.h>
#include <string.h>
#include <stdlib.h>

/* activation codes: 0 identity, 1 sigmoid, 2 relu, 3 tanh; loss: 0 sse, 1 mse, 2 half_mse */
static inline double act(int c, double z) {
    switch (c) {
    case 1: return 1.0 / (1.0 + exp(-z));
    case 2: return z > 0.0 ? z : 0.0;
    case 3: return tanh(z);
    default: return z;
    }
}
static inline double dact(int c, double a) {   /* from the activation's output */
    switch (c) {
    case 1: return a * (1.0 - a);
    case 2: return a > 0.0 ? 1.0 : 0.0;
    case 3: return 1.0 - a * a;
    default: return 1.0;
    }
}

size_t work_size(int L, const int *sizes, long n_params) {
    size_t s = 0;
    for (int l = 0; l <= L; l++) s += sizes[l];
    return 2 * s + (size_t)n_params;
}

/* One model; X (N, sizes[0]), Y (N, sizes[L]) row-major; params in fastbp's flat
   layout; batch = N for full batch. hist[e] = mean of the batch losses of epoch e. */
void train(int L, const int *sizes, const int *acts, int loss, int has_bias,
           double *p, long n_params, const double *X, const double *Y, long N,
           long epochs, double lr, long batch, double *hist, double *work)
{
    long woff[64], boff[64], aoff[65];
    long off = 0, ao = 0;
    for (int l = 0; l < L; l++) {
        woff[l] = off; off += (long)sizes[l] * sizes[l + 1];
        boff[l] = off; if (has_bias) off += sizes[l + 1];
    }
    for (int l = 0; l <= L; l++) { aoff[l] = ao; ao += sizes[l]; }
    double *a = work, *d = work + ao, *g = work + 2 * ao;
    const int K = sizes[L], n0 = sizes[0];

    for (long e = 0; e < epochs; e++) {
        double ep = 0.0; long nb = 0;
        for (long s0 = 0; s0 < N; s0 += batch) {
            long B = (N - s0 < batch) ? N - s0 : batch;
            double scale = loss == 0 ? 1.0 : (loss == 1 ? 2.0 : 1.0) / (double)(B * K);
            double sq = 0.0;
            if (batch != 1) memset(g, 0, sizeof(double) * n_params);
            for (long s = s0; s < s0 + B; s++) {
                const double *x = X + s * n0, *yt = Y + s * K;
                memcpy(a, x, sizeof(double) * n0);
                for (int l = 0; l < L; l++) {          /* forward */
                    const int ni = sizes[l], no = sizes[l + 1];
                    const double *W = p + woff[l], *ain = a + aoff[l];
                    double *z = a + aoff[l + 1];
                    for (int j = 0; j < no; j++) z[j] = has_bias ? p[boff[l] + j] : 0.0;
                    for (int i = 0; i < ni; i++) {
                        const double ai = ain[i]; const double *Wi = W + (long)i * no;
                        for (int j = 0; j < no; j++) z[j] += ai * Wi[j];
                    }
                    for (int j = 0; j < no; j++) z[j] = act(acts[l], z[j]);
                }
                double *out = a + aoff[L], *dL = d + aoff[L];
                for (int k = 0; k < K; k++) {
                    double r = out[k] - yt[k]; sq += r * r;
                    dL[k] = scale * r * dact(acts[L - 1], out[k]);
                }
                if (batch == 1) {                       /* per-sample SGD: update in place */
                    for (int l = L - 1; l >= 0; l--) {
                        const int ni = sizes[l], no = sizes[l + 1];
                        double *W = p + woff[l];
                        const double *ain = a + aoff[l], *dl = d + aoff[l + 1];
                        double *dp = d + aoff[l];
                        for (int i = 0; i < ni; i++) {  /* one pass over W: delta, then update */
                            const double ai = ain[i]; double *Wi = W + (long)i * no;
                            if (l > 0) {                /* with the row before its update */
                                double t = 0.0;
                                for (int j = 0; j < no; j++) t += Wi[j] * dl[j];
                                dp[i] = t * dact(acts[l - 1], ai);
                            }
                            for (int j = 0; j < no; j++) Wi[j] -= lr * (ai * dl[j]);
                        }
                        if (has_bias) { double *b = p + boff[l]; for (int j = 0; j < no; j++) b[j] -= lr * dl[j]; }
                    }
                    continue;
                }
                for (int l = L - 1; l >= 0; l--) {     /* backward, accumulate */
                    const int ni = sizes[l], no = sizes[l + 1];
                    const double *W = p + woff[l], *ain = a + aoff[l], *dl = d + aoff[l + 1];
                    double *gW = g + woff[l];
                    for (int i = 0; i < ni; i++) {
                        const double ai = ain[i]; double *gi = gW + (long)i * no;
                        for (int j = 0; j < no; j++) gi[j] += ai * dl[j];
                    }
                    if (has_bias) { double *gb = g + boff[l]; for (int j = 0; j < no; j++) gb[j] += dl[j]; }
                    if (l > 0) {
                        double *dp = d + aoff[l];
                        for (int i = 0; i < ni; i++) {
                            const double *Wi = W + (long)i * no; double t = 0.0;
                            for (int j = 0; j < no; j++) t += Wi[j] * dl[j];
                            dp[i] = t * dact(acts[l - 1], ain[i]);
                        }
                    }
                }
            }
            if (batch != 1)
                for (long q = 0; q < n_params; q++) p[q] -= lr * g[q];
            ep += loss == 0 ? 0.5 * sq : (loss == 1 ? sq : 0.5 * sq) / (double)(B * K);
            nb++;
        }
        if (hist) hist[e] = ep / nb;
    }
}

/* Many independent models (rows of P, hist), OpenMP over models when built with -fopenmp. */
void train_many(long M, int L, const int *sizes, const int *acts, int loss, int has_bias,
                double *P, long n_params, const double *X, const double *Y, long N,
                long epochs, double lr, long batch, double *hist, int n_threads)
{
    size_t ws = work_size(L, sizes, n_params);
#ifdef _OPENMP
    #pragma omp parallel for schedule(static) num_threads(n_threads)
#endif
    for (long m = 0; m < M; m++) {
        double *work = (double *)malloc(sizeof(double) * ws);
        train(L, sizes, acts, loss, has_bias, P + m * n_params, n_params, X, Y, N,
              epochs, lr, batch, hist ? hist + m * epochs : NULL, work);
        free(work);
    }
}
"""

_C_LIB = None
_C_INFO = ""


def _c_lib():
    """Compile C_SOURCE once (cached by hash in the temp dir) and load it."""
    global _C_LIB, _C_INFO
    if _C_LIB is not None:
        return _C_LIB
    cc = os.environ.get("CC", "gcc")
    flags = ["-O3", "-march=native", "-fPIC", "-shared"]
    key = hashlib.sha1((C_SOURCE + cc + " ".join(flags)).encode()).hexdigest()[:16]
    d = Path(tempfile.gettempdir()) / "fastbp_bench_c"
    d.mkdir(exist_ok=True)
    so = d / f"peer_{key}.so"
    if not so.exists():
        src = d / f"peer_{key}.c"
        src.write_text(C_SOURCE)
        last = None
        for extra in (["-fopenmp"], []):
            tmp = d / f"peer_{key}.{os.getpid()}.so"
            try:
                r = subprocess.run([cc, *flags, *extra, str(src), "-o", str(tmp), "-lm"],
                                   capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.SubprocessError) as exc:
                raise Unavailable(f"no C compiler ({cc}): {exc!r}")
            if r.returncode == 0:
                os.replace(tmp, so)
                break
            last = r.stderr.strip().splitlines()[-1:] or ["?"]
        else:
            raise Unavailable(f"{cc} failed: {last[0]}")
    lib = ctypes.CDLL(str(so))
    dp = ctypes.POINTER(ctypes.c_double)
    ip = ctypes.POINTER(ctypes.c_int)
    lib.train.argtypes = [ctypes.c_int, ip, ip, ctypes.c_int, ctypes.c_int, dp, ctypes.c_long,
                          dp, dp, ctypes.c_long, ctypes.c_long, ctypes.c_double, ctypes.c_long,
                          dp, dp]
    lib.train.restype = None
    lib.train_many.argtypes = [ctypes.c_long] + lib.train.argtypes[:-2] + [dp, ctypes.c_int]
    lib.train_many.restype = None
    lib.work_size.argtypes = [ctypes.c_int, ip, ctypes.c_long]
    lib.work_size.restype = ctypes.c_size_t
    _C_LIB = lib
    _C_INFO = f"{cc} {' '.join(flags[:2])}"
    return lib


_ACT_CODE = {"identity": 0, "sigmoid": 1, "relu": 2, "tanh": 3}
_LOSS_CODE = {"sse": 0, "mse": 1, "half_mse": 2}


def _ptr(a, ctype=ctypes.c_double):
    return a.ctypes.data_as(ctypes.POINTER(ctype))


def _c_args(wl):
    if wl.dtype != "float64":
        raise NotApplicable("the C loop is written in double")
    sizes = np.array(wl.sizes, dtype=np.intc)
    acts = np.array([_ACT_CODE[a] for a in wl.activations], dtype=np.intc)
    X = np.ascontiguousarray(wl.X, dtype=np.float64)
    y = np.ascontiguousarray(wl.y, dtype=np.float64)
    return sizes, acts, X, y


def c_w1(wl):
    """One scalar loop per sample (no BLAS, no intrinsics), gradients accumulated
    per batch; the compiler may auto-vectorize the inner loops."""
    lib = _c_lib()
    sizes, acts, X, y = _c_args(wl)
    L = len(wl.sizes) - 1
    p0 = common.flat_params(wl.weights, wl.biases)
    n = p0.size
    work = np.empty(lib.work_size(L, _ptr(sizes, ctypes.c_int), n))
    hist = np.empty(wl.epochs)
    B = wl.batch_size or wl.n_samples

    def run():
        p = p0.copy()
        lib.train(L, _ptr(sizes, ctypes.c_int), _ptr(acts, ctypes.c_int), _LOSS_CODE[wl.loss],
                  int(wl.bias), _ptr(p), n, _ptr(X), _ptr(y), wl.n_samples, wl.epochs,
                  wl.lr, B, _ptr(hist), _ptr(work))
        Ws, bs = _unflatten_many(wl, p[None, :])
        return [W[0] for W in Ws], (None if bs is None else [b[0] for b in bs])

    return _with_note(run, "scalar C, 1 thread")


c_w2a = c_w2b = c_w3 = c_w4a = c_w4b = c_w1


def c_w5(wl, n_threads=None):
    lib = _c_lib()
    sizes, acts, X, y = _c_args(wl)
    L = len(wl.sizes) - 1
    P0 = np.stack([common.flat_params(*wl.model(m)) for m in range(wl.n_models)])
    n = P0.shape[1]
    hist = np.empty((wl.n_models, wl.epochs))
    T = n_threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
    B = wl.batch_size or wl.n_samples

    def run():
        P = P0.copy()
        lib.train_many(wl.n_models, L, _ptr(sizes, ctypes.c_int), _ptr(acts, ctypes.c_int),
                       _LOSS_CODE[wl.loss], int(wl.bias), _ptr(P), n, _ptr(X), _ptr(y),
                       wl.n_samples, wl.epochs, wl.lr, B, _ptr(hist), T)
        return _unflatten_many(wl, P)

    return _with_note(run, f"scalar C, OpenMP over models, {T} thread{'s' * (T > 1)}")


# =============================================================================
# registry
# =============================================================================
def builder(engine, key):
    """The builder function for engine and workload key ('W4a_64' -> '<engine>_w4a')."""
    name = engine.replace(".", "_") + "_" + family(key).lower()
    fn = globals().get(name)
    if fn is None:
        raise NotApplicable(f"no {engine} version of {key}")
    return fn


def build(engine, wl, key=None):
    return builder(engine, key or wl.name.replace(" H=", "_"))(wl)
