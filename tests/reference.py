"""Plain-numpy reference MLP: slow, obvious, float64.

Every fastbp kernel is compared against these functions. They are written for
clarity, not speed, and follow the conventions of DESIGN.md / docs/API-NOTES.md:

- sample-major data: ``X`` is (n, sizes[0]), outputs are (n, sizes[-1]);
- the forward rule is ``a_next = f(a @ W + b)`` with ``W`` of shape (n_in, n_out)
  and ``b`` of shape (n_out,) (``biases=None`` means the model has no biases);
- activation derivatives are computed from the activation *outputs*;
- losses (N samples, K outputs):
    mse      = mean over N*K of (out - y)**2
    half_mse = mse / 2
    sse      = 1/2 * sum (out - y)**2
    bce      = -mean over N*K of [y log p + (1 - y) log(1 - p)]   (sigmoid output)
- for a mini-batch or a single sample the loss is the loss *of that batch*
  (so mse / half_mse / bce divide by the batch's size * K, sse does not).

Parameters are passed as ``(weights, biases)``: a list of 2-D arrays and a list
of 1-D arrays or None. Training functions work on copies and return new lists.
"""

import numpy as np

ACTIVATIONS = ("identity", "sigmoid", "relu", "tanh")
LOSSES = ("mse", "half_mse", "sse", "bce")


# ----------------------------------------------------------------- activations


def python_of(kernel):
    """The Python function of a compiled kernel (``py_func``), or the kernel itself under
    NUMBA_DISABLE_JIT, where it is that function."""
    return getattr(kernel, "py_func", kernel)


def activate(name, z):
    """f(z) for one of ACTIVATIONS; z is any float64 array."""
    if name == "identity":
        return z.copy()
    if name == "sigmoid":
        # Split by sign so exp never overflows; same value as 1/(1+exp(-z)).
        out = np.empty_like(z)
        pos = z >= 0
        out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
        ez = np.exp(z[~pos])
        out[~pos] = ez / (1.0 + ez)
        return out
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    raise ValueError(f"unknown activation {name!r}")


def derivative_from_output(name, a):
    """f'(z) expressed through a = f(z), as the kernels do."""
    if name == "identity":
        return np.ones_like(a)
    if name == "sigmoid":
        return a * (1.0 - a)
    if name == "relu":
        return (a > 0).astype(a.dtype)
    if name == "tanh":
        return 1.0 - a * a
    raise ValueError(f"unknown activation {name!r}")


def as_activation_list(activation, n_layers):
    if isinstance(activation, str):
        return [activation] * n_layers
    activation = list(activation)
    assert len(activation) == n_layers
    return activation


# ---------------------------------------------------------------------- model


def sizes_of(weights):
    return [weights[0].shape[0]] + [w.shape[1] for w in weights]


def copy_params(weights, biases):
    w = [np.array(x, dtype=np.float64, copy=True) for x in weights]
    b = None if biases is None else [np.array(x, dtype=np.float64, copy=True).reshape(-1) for x in biases]
    return w, b


def preactivations(X, weights, biases, activation):
    """List of z_l = a_{l-1} @ W_l + b_l, one per layer (used to avoid relu kinks)."""
    acts = as_activation_list(activation, len(weights))
    a = np.asarray(X, dtype=np.float64)
    zs = []
    for l, W in enumerate(weights):
        z = a @ W
        if biases is not None:
            z = z + biases[l]
        zs.append(z)
        a = activate(acts[l], z)
    return zs


def forward(X, weights, biases, activation):
    """All layer outputs: [X, a_1, ..., a_L]; the last one is the prediction."""
    acts = as_activation_list(activation, len(weights))
    outs = [np.asarray(X, dtype=np.float64)]
    for l, W in enumerate(weights):
        z = outs[-1] @ W
        if biases is not None:
            z = z + biases[l]
        outs.append(activate(acts[l], z))
    return outs


def predict(X, weights, biases, activation):
    return forward(X, weights, biases, activation)[-1]


def loss_value(out, y, loss):
    """Loss of predictions ``out`` against targets ``y`` (both (N, K))."""
    out = np.asarray(out, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(out.shape)
    diff = out - y
    if loss == "mse":
        return float(np.mean(diff * diff))
    if loss == "half_mse":
        return float(0.5 * np.mean(diff * diff))
    if loss == "sse":
        return float(0.5 * np.sum(diff * diff))
    if loss == "bce":
        return float(-np.mean(y * np.log(out) + (1.0 - y) * np.log1p(-out)))
    raise ValueError(f"unknown loss {loss!r}")


def softplus(z):
    """log(1 + exp(z)) without overflow or loss of precision for large |z|."""
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def bce_from_logits(z, y):
    """bce of p = sigmoid(z): log p = -softplus(-z), log(1-p) = -softplus(z)."""
    return float(np.mean(y * softplus(-z) + (1.0 - y) * softplus(z)))


def loss(X, y, weights, biases, activation, loss_name):
    acts = as_activation_list(activation, len(weights))
    if loss_name == "bce":
        if acts[-1] != "sigmoid":
            raise ValueError("bce needs a sigmoid output")
        z = preactivations(X, weights, biases, acts)[-1]
        return bce_from_logits(z, np.asarray(y, dtype=np.float64).reshape(z.shape))
    out = predict(X, weights, biases, acts)
    return loss_value(out, np.asarray(y, dtype=np.float64).reshape(out.shape), loss_name)


def output_delta(out, y, loss, out_activation):
    """dLoss/dz of the output layer (N, K)."""
    n_elems = out.size
    if loss == "bce":
        if out_activation != "sigmoid":
            raise ValueError("bce needs a sigmoid output")
        # d/dz of -[y log s(z) + (1-y) log(1-s(z))] is s(z) - y.
        return (out - y) / n_elems
    if loss == "mse":
        dout = 2.0 * (out - y) / n_elems
    elif loss == "half_mse":
        dout = (out - y) / n_elems
    elif loss == "sse":
        dout = out - y
    else:
        raise ValueError(f"unknown loss {loss!r}")
    return dout * derivative_from_output(out_activation, out)


def gradient(X, y, weights, biases, activation, loss):
    """Textbook backprop. Returns (list of dW, list of db or None)."""
    acts = as_activation_list(activation, len(weights))
    outs = forward(X, weights, biases, acts)
    y = np.asarray(y, dtype=np.float64).reshape(outs[-1].shape)
    delta = output_delta(outs[-1], y, loss, acts[-1])
    L = len(weights)
    dW = [None] * L
    db = None if biases is None else [None] * L
    for l in range(L - 1, -1, -1):
        dW[l] = outs[l].T @ delta
        if db is not None:
            db[l] = delta.sum(axis=0)
        if l > 0:
            delta = (delta @ weights[l].T) * derivative_from_output(acts[l - 1], outs[l])
    return dW, db


def gradient_magnitude(X, y, weights, biases, activation, loss):
    """An upper scale for the rounding error of ``gradient`` in any summation order.

    Same recursion as ``gradient`` with every term replaced by a bound on its
    absolute value (|f'| <= 1 for all four activations). Where sums cancel, the
    rounding error of an element is ~eps * (this) * (number of terms), so tests
    use it to scale the absolute tolerance.
    """
    acts = as_activation_list(activation, len(weights))
    outs = forward(X, weights, biases, acts)
    out = outs[-1]
    y = np.asarray(y, dtype=np.float64).reshape(out.shape)
    scale = {"mse": 2.0 / out.size, "half_mse": 1.0 / out.size, "bce": 1.0 / out.size, "sse": 1.0}[loss]
    delta = scale * (np.abs(out) + np.abs(y))
    L = len(weights)
    mW = [None] * L
    mb = None if biases is None else [None] * L
    for l in range(L - 1, -1, -1):
        mW[l] = np.abs(outs[l]).T @ delta
        if mb is not None:
            mb[l] = delta.sum(axis=0)
        if l > 0:
            delta = delta @ np.abs(weights[l]).T
    return mW, mb


def forward_magnitude(X, weights, biases):
    """|a| @ |W| + |b| layer by layer (with |a| <= max(|z|, 1)): scale of forward rounding."""
    m = np.abs(np.asarray(X, dtype=np.float64))
    for l, W in enumerate(weights):
        m = m @ np.abs(W)
        if biases is not None:
            m = m + np.abs(biases[l])
        m = np.maximum(m, 1.0)
    return m


def flatten(weights, biases):
    """Pack like fastbp's params: W_0, b_0, W_1, b_1, ... (row-major)."""
    parts = []
    for l, W in enumerate(weights):
        parts.append(np.asarray(W, dtype=np.float64).ravel())
        if biases is not None:
            parts.append(np.asarray(biases[l], dtype=np.float64).ravel())
    return np.concatenate(parts)


def unflatten(theta, sizes, bias):
    weights, biases = [], [] if bias else None
    pos = 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        weights.append(theta[pos:pos + n_in * n_out].reshape(n_in, n_out).copy())
        pos += n_in * n_out
        if bias:
            biases.append(theta[pos:pos + n_out].copy())
            pos += n_out
    assert pos == theta.size
    return weights, biases


def numerical_gradient(f, theta, h=1e-6):
    """Central differences of the scalar function f at the 1-D vector theta."""
    theta = np.array(theta, dtype=np.float64, copy=True)
    g = np.empty_like(theta)
    for i in range(theta.size):
        old = theta[i]
        theta[i] = old + h
        fp = f(theta)
        theta[i] = old - h
        fm = f(theta)
        theta[i] = old
        g[i] = (fp - fm) / (2.0 * h)
    return g


# -------------------------------------------------------------------- training


def _step(weights, biases, dW, db, lr):
    for l in range(len(weights)):
        weights[l] -= lr * dW[l]
        if biases is not None:
            biases[l] -= lr * db[l]


def train_full_batch(X, y, weights, biases, activation, loss_name, epochs, lr):
    """Gradient descent, one update per epoch.

    Returns (weights, biases, history); history[e] is the loss *before* epoch e's update.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(X.shape[0], -1)
    weights, biases = copy_params(weights, biases)
    hist = np.empty(epochs)
    for e in range(epochs):
        hist[e] = loss(X, y, weights, biases, activation, loss_name)
        dW, db = gradient(X, y, weights, biases, activation, loss_name)
        _step(weights, biases, dW, db, lr)
    return weights, biases, hist


def train_minibatch(X, y, weights, biases, activation, loss_name, epochs, lr, batch_size, orders=None):
    """Mini-batch SGD (batch_size=1: per-sample SGD).

    ``orders``: None (every epoch visits samples 0..n-1 in order), or a callable
    ``orders(epoch) -> permutation``, or a sequence of permutations, one per epoch.
    Batches are consecutive slices of the epoch's order; the last may be smaller.
    Each batch: forward, record its loss, backprop, update.
    history[e] = mean of the batch losses of epoch e.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(X.shape[0], -1)
    n = X.shape[0]
    weights, biases = copy_params(weights, biases)
    hist = np.empty(epochs)
    for e in range(epochs):
        if orders is None:
            order = np.arange(n)
        elif callable(orders):
            order = np.asarray(orders(e))
        else:
            order = np.asarray(orders[e])
        batch_losses = []
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            Xb, yb = X[idx], y[idx]
            batch_losses.append(loss(Xb, yb, weights, biases, activation, loss_name))
            dW, db = gradient(Xb, yb, weights, biases, activation, loss_name)
            _step(weights, biases, dW, db, lr)
        hist[e] = np.mean(batch_losses)
    return weights, biases, hist


def train_sgd(X, y, weights, biases, activation, loss_name, epochs, lr, orders=None):
    """Per-sample SGD: mini-batch with batch_size=1."""
    return train_minibatch(X, y, weights, biases, activation, loss_name, epochs, lr, 1, orders)


# ========================================================== training controls
# (the training controls: optimizers, L2, schedules, softmax / cross_entropy, sample weights)
#
# Everything below works on the flat parameter vector ``theta`` (the layout of
# ``flatten``) and follows docs/API-NOTES.md, "Training controls":
#   sgd, momentum 0:  p -= lr * g
#   momentum mu:      v = mu*v - lr*g; p += v
#   nesterov:         v = mu*v - lr*g; p += mu*v - lr*g
#   adam:             t += 1; m = b1 m + (1-b1) g; s = b2 s + (1-b2) g^2
#                     p -= lr * (m/(1-b1^t)) / (sqrt(s/(1-b2^t)) + eps)
#   l2:               g += l2 * W on weights (not biases); loss += (l2/2) sum W^2
#   schedules (e = epoch within the fit, 0-based):
#     constant lr; invscaling lr/(1+e)^power_t; step lr*step_factor^(e//step_size);
#     cosine lr_min + (lr-lr_min)/2 (1 + cos(pi e / epochs))
#   sample weights w_s multiply each sample's loss term and gradient; means still
#   divide by N (the batch's sample count).
#   cross_entropy = -sum_s w_s sum_k y log softmax(z) / N (softmax output only).
#   poisson = sum_s w_s sum_k [xlogy(y, y / p) - y + p] / N, p = exp(z) (exp output only;
#   scikit-learn's half Poisson deviance).

EXT_LOSSES = LOSSES + ("cross_entropy", "poisson")


def softmax(z):
    """Row-wise softmax, max-subtracted so nothing overflows."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    zmax = z.max(axis=1, keepdims=True)
    return z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))


def one_hot(labels, k):
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    out = np.zeros((labels.size, k))
    out[np.arange(labels.size), labels] = 1.0
    return out


def activate_ext(name, z):
    """activate() plus "softmax" (over each sample's outputs) and "exp"."""
    if name == "softmax":
        return softmax(z)
    if name == "exp":
        return np.exp(z)
    return activate(name, z)


def forward_ext(X, weights, biases, activation):
    """forward() that also accepts a softmax output. Returns (outs, z of the output layer)."""
    acts = as_activation_list(activation, len(weights))
    outs = [np.asarray(X, dtype=np.float64)]
    z = None
    for l, W in enumerate(weights):
        z = outs[-1] @ W
        if biases is not None:
            z = z + biases[l]
        outs.append(activate_ext(acts[l], z))
    return outs, z


def targets_2d(y, n, k, loss_name):
    """Targets as (n, k) float64; integer class labels (n,) become one-hot for cross_entropy."""
    y = np.asarray(y)
    if loss_name == "cross_entropy" and y.ndim == 1 and k > 1:
        return one_hot(y, k)
    return np.asarray(y, dtype=np.float64).reshape(n, k)


def _weights_or_ones(sample_weight, n):
    if sample_weight is None:
        return np.ones(n)
    return np.asarray(sample_weight, dtype=np.float64).reshape(n)


def weighted_loss(X, y, weights, biases, activation, loss_name, sample_weight=None):
    """The model's loss with sample weights (None: all ones), every loss incl. cross_entropy."""
    acts = as_activation_list(activation, len(weights))
    outs, z = forward_ext(X, weights, biases, acts)
    out = outs[-1]
    n, k = out.shape
    y = targets_2d(y, n, k, loss_name)
    w = _weights_or_ones(sample_weight, n)[:, None]
    if loss_name == "cross_entropy":
        if acts[-1] != "softmax":
            raise ValueError("cross_entropy needs a softmax output")
        return float(-np.sum(w * y * log_softmax(z)) / n)
    if loss_name == "poisson":
        if acts[-1] != "exp":
            raise ValueError("poisson needs an exp output")
        ylogy = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)), 0.0)
        return float(np.sum(w * (ylogy - y * z - y + out)) / n)
    if loss_name == "bce":
        if acts[-1] != "sigmoid":
            raise ValueError("bce needs a sigmoid output")
        return float(np.sum(w * (y * softplus(-z) + (1.0 - y) * softplus(z))) / (n * k))
    diff = out - y
    sq = np.sum(w * diff * diff)
    if loss_name == "mse":
        return float(sq / (n * k))
    if loss_name == "half_mse":
        return float(0.5 * sq / (n * k))
    if loss_name == "sse":
        return float(0.5 * sq)
    raise ValueError(f"unknown loss {loss_name!r}")


def weighted_gradient(X, y, weights, biases, activation, loss_name, sample_weight=None):
    """Gradient of weighted_loss: (list of dW, list of db or None)."""
    acts = as_activation_list(activation, len(weights))
    outs, _ = forward_ext(X, weights, biases, acts)
    out = outs[-1]
    n, k = out.shape
    y = targets_2d(y, n, k, loss_name)
    w = _weights_or_ones(sample_weight, n)[:, None]
    if loss_name == "cross_entropy":
        if acts[-1] != "softmax":
            raise ValueError("cross_entropy needs a softmax output")
        delta = w * (out - y) / n
    elif loss_name == "poisson":  # d/dz of exp(z) - y z
        delta = w * (out - y) / n
    elif loss_name == "bce":
        delta = w * (out - y) / (n * k)
    else:
        scale = {"mse": 2.0 / (n * k), "half_mse": 1.0 / (n * k), "sse": 1.0}[loss_name]
        delta = w * scale * (out - y) * derivative_from_output(acts[-1], out)
    L = len(weights)
    dW = [None] * L
    db = None if biases is None else [None] * L
    for l in range(L - 1, -1, -1):
        dW[l] = outs[l].T @ delta
        if db is not None:
            db[l] = delta.sum(axis=0)
        if l > 0:
            delta = (delta @ weights[l].T) * derivative_from_output(acts[l - 1], outs[l])
    return dW, db


def decay_mask(sizes, bias):
    """1 on weights, 0 on biases, in the flat layout: what L2 decays."""
    weights = [np.ones((a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
    biases = [np.zeros(b) for b in sizes[1:]] if bias else None
    return flatten(weights, biases)


def scheduled_lr(schedule, lr, epoch, epochs, power_t=0.5, step_size=1, step_factor=0.5,
                 lr_min=0.0):
    """The learning rate of epoch ``epoch`` (0-based, within a fit of ``epochs`` epochs)."""
    if schedule == "constant":
        return lr
    if schedule == "invscaling":
        return lr / (1.0 + epoch) ** power_t
    if schedule == "step":
        return lr * step_factor ** (epoch // step_size)
    if schedule == "cosine":
        return lr_min + 0.5 * (lr - lr_min) * (1.0 + np.cos(np.pi * epoch / epochs))
    raise ValueError(f"unknown schedule {schedule!r}")


def new_optimizer_state(n_params):
    return {"v": np.zeros(n_params), "m": np.zeros(n_params), "s": np.zeros(n_params), "t": 0}


def optimizer_step(theta, g, lr, state, optimizer="sgd", momentum=0.0, nesterov=False,
                   beta1=0.9, beta2=0.999, eps=1e-8):
    """One update of theta in place (g already includes the L2 term)."""
    if optimizer == "adam":
        state["t"] += 1
        t = state["t"]
        state["m"] = beta1 * state["m"] + (1.0 - beta1) * g
        state["s"] = beta2 * state["s"] + (1.0 - beta2) * g * g
        mhat = state["m"] / (1.0 - beta1 ** t)
        shat = state["s"] / (1.0 - beta2 ** t)
        theta -= lr * mhat / (np.sqrt(shat) + eps)
    elif optimizer == "sgd":
        if momentum == 0.0:
            theta -= lr * g
        else:
            state["v"] = momentum * state["v"] - lr * g
            if nesterov:
                theta += momentum * state["v"] - lr * g
            else:
                theta += state["v"]
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")


def train_controlled(X, y, weights, biases, activation, loss_name, epochs, lr,
                     batch_size=None, optimizer="sgd", momentum=0.0, nesterov=False,
                     beta1=0.9, beta2=0.999, eps=1e-8, l2=0.0, schedule="constant",
                     power_t=0.5, step_size=1, step_factor=0.5, lr_min=0.0,
                     sample_weight=None, state=None):
    """Training with every training control, unshuffled; batches are consecutive slices.

    batch_size None: full batch. Each batch: record (batch loss + L2 penalty) at the
    parameters before the update, gradient (+ l2 * W on weights), optimizer step.
    history[e] = mean over the epoch's batches of those records (full batch: the loss
    before the update). ``state`` (from new_optimizer_state, or None for a fresh one)
    is updated in place and returned, so a second call continues the first.
    Returns (weights, biases, history, state).
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    weights, biases = copy_params(weights, biases)
    sizes = sizes_of(weights)
    bias = biases is not None
    k = sizes[-1]
    y = targets_2d(y, n, k, loss_name)
    w_all = _weights_or_ones(sample_weight, n)
    theta = flatten(weights, biases)
    mask = decay_mask(sizes, bias)
    if state is None:
        state = new_optimizer_state(theta.size)
    bs = n if batch_size is None else min(int(batch_size), n)
    hist = np.empty(epochs)
    for e in range(epochs):
        lr_e = scheduled_lr(schedule, lr, e, epochs, power_t, step_size, step_factor, lr_min)
        records = []
        for start in range(0, n, bs):
            sl = slice(start, start + bs)
            Wl, bl = unflatten(theta, sizes, bias)
            penalty = 0.5 * l2 * float(np.sum(mask * theta * theta))
            records.append(weighted_loss(X[sl], y[sl], Wl, bl, activation, loss_name, w_all[sl])
                           + penalty)
            dW, db = weighted_gradient(X[sl], y[sl], Wl, bl, activation, loss_name, w_all[sl])
            g = flatten(dW, db)
            if l2 != 0.0:
                g = g + l2 * mask * theta
            optimizer_step(theta, g, lr_e, state, optimizer, momentum, nesterov, beta1,
                           beta2, eps)
        hist[e] = np.mean(records)
    weights, biases = unflatten(theta, sizes, bias)
    return weights, biases, hist, state


def gemm_operands(rng, dtype, m, n, k, trans_a, trans_b, pad):
    """Operands of a row-major gemm (tests of kernels/gemm.py and kernels/tiles.py): a, b,
    c with leading dimensions ``pad`` wider than their rows, plus op(a), op(b) in
    float64."""
    ra, ca = (k, m) if trans_a else (m, k)
    rb, cb = (n, k) if trans_b else (k, n)
    a = rng.standard_normal((ra, ca + pad)).astype(dtype)
    b = rng.standard_normal((rb, cb + pad)).astype(dtype)
    c = rng.standard_normal((m, n + pad)).astype(dtype)
    op_a = a[:, :ca].T if trans_a else a[:, :ca]
    op_b = b[:, :cb].T if trans_b else b[:, :cb]
    return a, b, c, op_a.astype(np.float64), op_b.astype(np.float64)
