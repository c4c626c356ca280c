"""Random training configurations, each trained by fastbp and by the plain-numpy
reference (reference.py: train_controlled), and the two results compared.

``case(seed)`` draws one configuration: 1-3 layers, narrow or wide (products and tiles),
activations, loss (sigmoid + bce, softmax + cross_entropy, exp + poisson included),
biases, 1-1000 samples, full batch, mini-batches or per-sample SGD, plain SGD, momentum,
Nesterov or Adam, L2, a learning-rate schedule, sample weights, init, dtype and threads.
``check(c)`` trains it both ways from the same initial parameters and says how the
parameters compare (``Outcome``):

- "match": within the dtype's tolerance (float64 1e-8 relative to the largest
  parameter, float32 2e-3), the recorded losses too;
- "activation-ulp" (float64): fastbp's own tanh and sigmoid differ from numpy's by an
  ULP or two, and an optimizer can amplify that -- Adam turns a gradient of 1e-300
  against an exact 0 into a full step --; with fastbp's activations in the reference the
  results match to 1e-11, so the rest of the arithmetic is the reference's;
- "chaotic": the reference itself moves at least a hundredth as much when its inputs
  and initial parameters move at the dtype's rounding (a 1e-15 or 1e-7 relative
  perturbation): rounding decides the trajectory (saturated tanh units trained with
  momentum, say), and no comparison can tell more;
- "float32-rounding" (float32): none of the above, but the same case in float64
  matches: the difference is float32's rounding where the reference's float64 has
  digits to spare -- a sigmoid's derivative a (1 - a) near a = 1 keeps three digits
  of 1 - a in float32, enough to flip a tiny gradient's sign, which Adam's first steps
  turn into a whole step (PyTorch computes the derivative the same way);
- "diverged": fastbp stopped the run as diverged, and the reference left the dtype's
  range too (its parameters, a recorded loss, or the loss after the last epoch, which
  fit checks), or its Adam's second moment overflowed (which fastbp counts as a
  divergence: the steps stop);
- "mismatch": none of these -- a bug, or a new kind of difference to understand.

tests/test_random_configs.py runs a fixed set of float64 seeds.  As a tool, more of them:

    python tests/random_configs.py 0 400            # seeds 0-399
    python tests/random_configs.py 0 150 fastest    # on the generated kernels and tiles
"""
import sys
import warnings
from dataclasses import dataclass, replace

import numpy as np

import reference as R

OPTIMIZERS = {"sgd": {}, "momentum": dict(momentum=0.9),
              "nesterov": dict(momentum=0.8, nesterov=True), "adam": dict(optimizer="adam")}


@dataclass
class Case:
    seed: int
    sizes: list
    acts: list
    loss: str
    bias: bool
    batch: object  # None (full batch) or an int
    epochs: int
    lr: float
    options: dict  # fit's optimizer, l2 and schedule keywords
    sample_weight: object
    dtype: str
    n_jobs: int
    init: str
    X: np.ndarray
    y: np.ndarray

    def __str__(self):
        return (f"seed {self.seed}: sizes={self.sizes} acts={self.acts} loss={self.loss} "
                f"bias={self.bias} n={self.X.shape[0]} batch={self.batch} "
                f"epochs={self.epochs} lr={self.lr} {self.options} "
                f"weighted={self.sample_weight is not None} {self.dtype} "
                f"n_jobs={self.n_jobs} init={self.init}")


def case(seed, dtypes=("float64", "float64", "float32")):
    """The configuration of ``seed`` (dtype drawn from ``dtypes``)."""
    rng = np.random.default_rng(seed)
    n_layers = int(rng.integers(1, 4))
    wide = rng.random() < 0.3
    sizes = [int(rng.integers(1, 40 if wide else 6))]
    sizes += [int(rng.integers(1, 80 if wide else 12)) for _ in range(n_layers)]
    loss = str(rng.choice(["mse", "half_mse", "sse", "bce", "cross_entropy", "poisson"]))
    acts = [str(rng.choice(["identity", "sigmoid", "relu", "tanh"])) for _ in range(n_layers)]
    acts[-1] = {"bce": "sigmoid", "cross_entropy": "softmax", "poisson": "exp"}.get(loss,
                                                                                   acts[-1])
    if loss == "cross_entropy":
        sizes[-1] = max(sizes[-1], 2)
    bias = bool(rng.random() < 0.75)
    n = int(rng.choice([1, 3, 17, 64, 100, 257, 1000]))
    mode = str(rng.choice(["full", "mini", "sample"]))
    batch = None if mode == "full" else 1 if mode == "sample" else min(
        int(rng.integers(2, max(3, n + 1))), n)
    epochs = int(rng.integers(1, 5))
    lr = float(rng.choice([0.003, 0.01, 0.05]))
    options = dict(OPTIMIZERS[str(rng.choice(list(OPTIMIZERS)))])
    if rng.random() < 0.3:
        options["l2"] = float(rng.choice([1e-4, 1e-2]))
    options["schedule"] = str(rng.choice(["constant", "constant", "invscaling", "step",
                                          "cosine"]))
    sample_weight = rng.uniform(0, 2, size=n) if rng.random() < 0.25 else None
    dtype = str(rng.choice(list(dtypes)))
    n_jobs = int(rng.choice([1, 2]))
    X = rng.normal(size=(n, sizes[0])) * float(rng.choice([0.3, 1.0, 3.0]))
    k = sizes[-1]
    if loss == "cross_entropy":
        y = rng.integers(0, k, size=n)
    elif loss == "poisson":
        y = rng.poisson(1.0, size=(n, k)).astype(float)
    else:
        y = rng.uniform(0.05, 0.95, size=(n, k))
    init = str(rng.choice(["uniform", "normal", "xavier", "he"]))
    return Case(seed, sizes, acts, loss, bias, batch, epochs, lr, options, sample_weight,
                dtype, n_jobs, init, X, y)


@dataclass
class Outcome:
    verdict: str  # see the module docstring
    error: float  # largest parameter difference / largest reference parameter
    loss_error: float  # the same for the recorded losses
    kernel: str


def check(c):
    """Train ``c`` with fastbp and with the reference; the Outcome."""
    import fastbp
    model = fastbp.MLP(c.sizes, activation=c.acts, loss=c.loss, bias=c.bias, init=c.init,
                       seed=c.seed, dtype=c.dtype)
    weights = [np.array(W, dtype=np.float64) for W in model.weights]
    biases = None if model.biases is None else [np.array(b, np.float64) for b in model.biases]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hist = model.fit(c.X, c.y, epochs=c.epochs, lr=c.lr, batch_size=c.batch,
                         sample_weight=c.sample_weight, n_jobs=c.n_jobs,
                         on_divergence="warn", **c.options)
    got = R.flatten([np.asarray(W, np.float64) for W in model.weights],
                    None if model.biases is None else
                    [np.asarray(b, np.float64) for b in model.biases])

    def train(X, activate=None, params=(weights, biases)):
        original = R.activate
        if activate is not None:
            R.activate = activate
        try:
            with np.errstate(all="ignore"):
                W, b, losses, state = R.train_controlled(
                    X, c.y, *params, c.acts, c.loss, c.epochs, c.lr,
                    batch_size=c.batch, sample_weight=c.sample_weight, **c.options)
        finally:
            R.activate = original
        with np.errstate(all="ignore"):  # the loss after the last epoch (fit checks it)
            final = R.weighted_loss(c.X, c.y, W, b, c.acts, c.loss, c.sample_weight)
        return R.flatten(W, b), np.append(losses, final), state

    want, losses, state = train(c.X)
    losses, final = losses[:-1], losses[-1:]
    # the reference's run in the model dtype's range (with a margin for the rounding of
    # its intermediate values), the loss after its last epoch included
    limit = float(np.finfo(c.dtype).max) * 1e-6
    in_range = all(np.all(np.abs(a) < limit) for a in (want, losses, final))
    if hist.stopped == "diverged":
        # fastbp stops where the reference overflows, and where Adam's v does (its steps
        # then stop: m / sqrt(inf) = 0), which the reference trains on through
        v_overflows = c.options.get("optimizer") == "adam" and np.isinf(state["s"]).any()
        return Outcome("diverged" if not in_range or v_overflows else "mismatch",
                       np.nan, np.nan, hist.kernel)
    if not (np.all(np.isfinite(want)) and np.all(np.isfinite(losses))):
        return Outcome("mismatch", np.nan, np.nan, hist.kernel)
    scale = np.abs(want).max() + 1e-300
    error = float(np.abs(got - want).max() / scale)
    loss_error = float(np.abs(np.asarray(hist.loss, np.float64) - losses).max()
                       / (np.abs(losses).max() + 1e-300))
    tolerance = 1e-8 if c.dtype == "float64" else 2e-3
    if error <= tolerance and loss_error <= 10 * tolerance:
        return Outcome("match", error, loss_error, hist.kernel)
    if c.dtype == "float64" and ({"tanh", "sigmoid"} & set(c.acts)):
        own = train(c.X, _fastbp_activations())[0]
        if np.abs(got - own).max() / scale < 1e-11:
            return Outcome("activation-ulp", error, loss_error, hist.kernel)
    eps = 1e-15 if c.dtype == "float64" else 1e-7
    noise = np.random.default_rng(1)
    moved = train(_moved(c.X, eps, noise),
                  params=_moved((weights, biases), eps, noise))[0]
    if np.abs(moved - want).max() / scale * 100 >= error:
        return Outcome("chaotic", error, loss_error, hist.kernel)
    if c.dtype == "float32" and check(replace(c, dtype="float64")).verdict in (
            "match", "activation-ulp"):
        return Outcome("float32-rounding", error, loss_error, hist.kernel)
    return Outcome("mismatch", error, loss_error, hist.kernel)


def _moved(a, eps, noise):
    """``a`` (an array, or nested lists of them, or None) times 1 + eps N(0, 1)."""
    if a is None:
        return None
    if isinstance(a, (list, tuple)):
        return type(a)(_moved(v, eps, noise) for v in a)
    return a * (1 + eps * noise.standard_normal(a.shape))


def _fastbp_activations():
    """reference.activate with fastbp's float64 tanh and sigmoid (kernels/rules.py)."""
    from fastbp.kernels import rules as K
    tanh = np.vectorize(lambda v: K.tanh64(float(v)), otypes=[np.float64])
    sigmoid = np.vectorize(lambda v: K.sigmoid64(float(v)), otypes=[np.float64])
    original = R.activate

    def activate(name, z):
        z = np.asarray(z, np.float64)
        return tanh(z) if name == "tanh" else sigmoid(z) if name == "sigmoid" else \
            original(name, z)

    return activate


def main(argv):
    first, count = int(argv[0]), int(argv[1])
    if len(argv) > 2:
        from fastbp import _dispatch
        _dispatch.POLICY = argv[2]
    counts = {}
    for seed in range(first, first + count):
        c = case(seed)
        try:
            out = check(c)
        except Exception as exc:  # a refusal or a crash: reported, the run goes on
            out = Outcome(f"error: {exc!r}"[:200], np.nan, np.nan, "")
        counts[out.verdict.split(":")[0]] = counts.get(out.verdict.split(":")[0], 0) + 1
        if out.verdict not in ("match", "diverged"):
            print(f"{out.verdict}: {c}: error {out.error:.3g}, losses {out.loss_error:.3g}, "
                  f"{out.kernel}", flush=True)
    print(f"seeds {first}-{first + count - 1}: {counts}")


if __name__ == "__main__":
    main(sys.argv[1:])
