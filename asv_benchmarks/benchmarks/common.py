"""Workloads shared by the asv benchmarks and ``compare.py``.

A :class:`Workload` fixes everything a training run needs -- architecture,
activations, loss, learning rate, epochs, batching, data and the *initial
parameters* -- so that every engine (fastbp, NumPy, PyTorch, JAX, C, ...)
starts from the same weights and does the same arithmetic, in float64 (or in
float32: :meth:`Workload.in_dtype`).

The math (identical in every engine, see ``docs/API-NOTES.md``):

* forward: ``a[0] = X``, ``a[l+1] = act_l(a[l] @ W[l] + b[l])``;
* loss of a batch of ``B`` samples with ``K`` outputs: ``mse`` = sum((out-y)^2)/(B*K),
  ``half_mse`` = mse/2, ``sse`` = sum((out-y)^2)/2;
* update: ``params -= lr * grad(loss of the batch)``; ``batch_size=None`` is one
  full-batch step per epoch, ``1`` per-sample SGD, ``k`` mini-batches, in data
  order (no shuffling);
* history: full batch = the loss before each epoch's update, SGD = the mean of
  the batch losses of the epoch.

Profiles (environment variable ``FASTBP_BENCH_PROFILE``): ``regular`` (default,
the workloads' full sizes) and ``fast`` (fewer epochs / samples / models, for CI
and ``asv run --quick``).  Keep one profile per results history.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

PROFILE = os.environ.get("FASTBP_BENCH_PROFILE", "regular").strip().lower() or "regular"
if PROFILE not in ("fast", "regular"):
    raise ValueError(
        f"FASTBP_BENCH_PROFILE must be 'fast' or 'regular', got {PROFILE!r}"
    )

# asv_benchmarks/benchmarks/common.py -> repo root is two levels up
REPO_ROOT = Path(__file__).resolve().parents[2]
W4_WIDTHS = (16, 64, 256, 1024)


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def xor_easy():
    """The 21 points of tutorial 000 (``generate_XOR_easy``): X (21, 2), y (21, 1)."""
    inputs, labels = [], []
    for i in range(11):
        inputs.append([0.1 * i, 0.1 * i])
        labels.append(0)
        if 0.1 * i == 0.5:
            continue
        inputs.append([0.1 * i, 1 - 0.1 * i])
        labels.append(1)
    return (np.array(inputs, dtype=np.float64),
            np.array(labels, dtype=np.float64).reshape(21, 1))


def admissions_csv_path():
    """Where admissions.csv is, or None: $FASTBP_ADMISSIONS_CSV, then ../shared/data/."""
    env = os.environ.get("FASTBP_ADMISSIONS_CSV")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "admissions.csv")
    for p in candidates:
        if p.is_file():
            return p
    return None


def _admissions_raw():
    """(admit, gre, gpa, rank) as float arrays and a note on where they came from,
    or (None, None) when admissions.csv is not found."""
    path = admissions_csv_path()
    if path is not None:
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f)]
        cols = {k: np.array([float(r[k]) for r in rows]) for k in ("admit", "gre", "gpa", "rank")}
        return cols, str(path)
    return None, None


def _fastbp_admissions():
    """fastbp.datasets.admissions(), if it exists and gives the full 360 training rows
    (its default is the tutorial's 40-row excerpt, which would make W2 10x smaller)."""
    try:
        import fastbp.datasets as ds
        out = ds.admissions()
        X, y, Xt, yt = (np.asarray(a, dtype=np.float64) for a in tuple(out)[:4])
    except Exception:
        return None
    if X.ndim != 2 or X.shape != (360, 6):
        return None
    y, yt = y.reshape(len(y), 1), yt.reshape(len(yt), 1)
    return tuple(np.ascontiguousarray(a) for a in (X, y, Xt, yt))


def _synthetic_admissions():
    # synthetic stand-in with the same columns and 400 rows
    rng = np.random.RandomState(400)
    rank = rng.randint(1, 5, size=400).astype(float)
    gre = np.clip(np.round(rng.normal(588, 116, 400) / 20) * 20, 220, 800)
    gpa = np.clip(np.round(rng.normal(3.39, 0.38, 400), 2), 2.26, 4.0)
    logit = -3.5 + 0.002 * gre + 0.8 * gpa - 0.6 * rank
    admit = (rng.random_sample(400) < 1 / (1 + np.exp(-logit))).astype(float)
    return {"admit": admit, "gre": gre, "gpa": gpa, "rank": rank}


def admissions(with_source=False):
    """Tutorial 004's ``data_prep.py``, without pandas.

    One-hot ``rank`` (rank_1..rank_4), standardize ``gre``/``gpa`` (ddof=1), then
    ``np.random.seed(21); np.random.choice(index, int(0.9 n), replace=False)``
    picks the training rows, in that order.  Feature columns:
    gre, gpa, rank_1, rank_2, rank_3, rank_4.

    Where the file is: $FASTBP_ADMISSIONS_CSV, else ../shared/data/admissions.csv
    beside the repository; else ``fastbp.datasets.admissions()`` when it gives the
    360 training rows; else synthetic data with the same columns and 400 rows.

    Returns X_train (360, 6), y_train (360, 1), X_test (40, 6), y_test (40, 1).
    """
    cols, source = _admissions_raw()
    if cols is None:
        out = _fastbp_admissions()
        if out is not None:
            return (out, "fastbp.datasets.admissions()") if with_source else out
        cols, source = _synthetic_admissions(), "synthetic (400 rows, same columns)"
    n = len(cols["admit"])
    feats = []
    for field in ("gre", "gpa"):
        v = cols[field]
        feats.append((v - v.mean()) / v.std(ddof=1))
    levels = sorted(set(cols["rank"].tolist()))
    for lev in levels:
        feats.append((cols["rank"] == lev).astype(float))
    X = np.column_stack(feats)
    y = cols["admit"].reshape(-1, 1).astype(float)
    np.random.seed(21)
    sample = np.random.choice(np.arange(n), size=int(n * 0.9), replace=False)
    test = np.setdiff1d(np.arange(n), sample)  # data.drop(sample): original order
    out = (np.ascontiguousarray(X[sample]), np.ascontiguousarray(y[sample]),
           np.ascontiguousarray(X[test]), np.ascontiguousarray(y[test]))
    return (out, source) if with_source else out


def regression():
    """Tutorial 001: make_regression(100, n_features=1, noise=10, random_state=3)."""
    try:
        from sklearn.datasets import make_regression
    except ImportError:  # same shape and scale without scikit-learn
        rng = np.random.RandomState(3)
        X = rng.standard_normal((100, 1))
        Y = 30.0 * X[:, 0] + rng.normal(0, 10, 100)
    else:
        X, Y = make_regression(100, n_features=1, n_targets=1, noise=10, random_state=3)
    return np.ascontiguousarray(X, dtype=np.float64), Y.reshape(100, 1).astype(np.float64)


def w4_data(n_samples=4096, n_in=32, n_out=10, seed=4):
    """Synthetic width-scaling data: X ~ N(0,1) (n, 32), y = sigmoid(X R) in (0,1) (n, 10)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_in))
    R = rng.standard_normal((n_in, n_out)) / math.sqrt(n_in)
    y = 1.0 / (1.0 + np.exp(-(X @ R)))
    return X, y


# ---------------------------------------------------------------------------
# initial parameters
# ---------------------------------------------------------------------------
def init_uniform(sizes, bias, rng):
    """U[0,1) weights and biases (tutorials 000/001), drawn layer by layer: W then b."""
    Ws, bs = [], []
    for a, b in zip(sizes[:-1], sizes[1:]):
        Ws.append(rng.random((a, b)))
        if bias:
            bs.append(rng.random(b))
    return Ws, (bs if bias else None)


def init_normal(sizes, bias, rng):
    """N(0, n_in**-0.5) weights (tutorial 004's scale) and zero biases."""
    Ws, bs = [], []
    for a, b in zip(sizes[:-1], sizes[1:]):
        Ws.append(rng.normal(scale=a ** -0.5, size=(a, b)))
        if bias:
            bs.append(np.zeros(b))
    return Ws, (bs if bias else None)


def flat_params(weights, biases):
    """fastbp's flat layout: W0 (row-major), b0, W1, b1, ... as one 1-D array (of the
    parameters' dtype)."""
    parts = []
    for l, W in enumerate(weights):
        parts.append(np.asarray(W).ravel())
        if biases is not None:
            parts.append(np.asarray(biases[l]).ravel())
    return np.concatenate(parts)


# ---------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Workload:
    name: str
    description: str
    sizes: tuple
    activations: tuple          # one name per weight layer; last = output activation
    loss: str                   # "sse" | "mse" | "half_mse"
    lr: float
    epochs: int
    batch_size: int | None      # None: full batch, 1: per-sample SGD, k: mini-batch
    X: np.ndarray
    y: np.ndarray
    weights: list               # initial weights (n_in, n_out); for many models (M, n_in, n_out)
    biases: list | None
    n_models: int | None = None  # W5: several independent models sharing X, y
    record_every: int = 1
    scale: float = 1.0          # full-size time / this run's time (extrapolation factor)
    unit: str = "epochs"        # what `scale` scaled: epochs or samples
    dtype: str = "float64"      # of X, y and the initial parameters: what every engine trains in

    @property
    def bias(self):
        return self.biases is not None

    @property
    def n_samples(self):
        return self.X.shape[0]

    def loss_grad_scale(self, batch):
        """d loss / d out = scale * (out - y) for a batch of ``batch`` samples."""
        K = self.sizes[-1]
        return {"sse": 1.0, "mse": 2.0 / (batch * K), "half_mse": 1.0 / (batch * K)}[self.loss]

    def model(self, m):
        """Initial (weights, biases) of model m of a many-model workload."""
        Ws = [W[m] for W in self.weights]
        bs = None if self.biases is None else [b[m] for b in self.biases]
        return Ws, bs

    def in_dtype(self, dtype):
        """A copy whose data and initial parameters are ``dtype`` ("float64" or "float32"):
        every engine converts nothing and trains in that dtype."""
        if dtype == self.dtype:
            return self

        def cast(a):
            return np.ascontiguousarray(a, dtype=dtype)
        return dataclasses.replace(
            self, dtype=dtype, X=cast(self.X), y=cast(self.y),
            weights=[cast(W) for W in self.weights],
            biases=None if self.biases is None else [cast(b) for b in self.biases])

    def scaled(self, factor):
        """A copy that does 1/factor of the work (epochs, or samples for 1-epoch runs)."""
        if factor <= 1:
            return self
        if self.epochs > 1:
            e = max(1, int(round(self.epochs / factor)))
            return dataclasses.replace(self, epochs=e, scale=self.epochs / e, unit="epochs")
        bs = self.batch_size or self.n_samples
        n = max(bs, int(round(self.n_samples / factor)) // bs * bs)
        return dataclasses.replace(self, X=self.X[:n].copy(), y=self.y[:n].copy(),
                                   scale=self.n_samples / n, unit="samples")

    def with_samples(self, n):
        """A copy whose data is the workload's samples repeated (or cut) to ``n`` rows: the
        same network and training on more or fewer samples per epoch."""
        def resized(a):
            return np.ascontiguousarray(np.resize(a, (n,) + a.shape[1:]))
        return dataclasses.replace(self, X=resized(self.X), y=resized(self.y))

    def tiny(self):
        """A copy with the same shapes and code paths but almost no work (JIT warm-up):
        1 epoch, or 2 batches of a 1-epoch run."""
        if self.epochs > 1:
            return dataclasses.replace(self, epochs=1)
        bs = self.batch_size or self.n_samples
        n = min(self.n_samples, 2 * bs)
        return dataclasses.replace(self, X=self.X[:n].copy(), y=self.y[:n].copy())


def _fast(regular, fast):
    return fast if PROFILE == "fast" else regular


def w1(epochs=None):
    X, y = xor_easy()
    sizes = (2, 4, 4, 1)
    Ws, bs = init_uniform(sizes, True, np.random.default_rng(0))
    return Workload("W1", "xor 2-4-4-1 sigmoid+bias, 21 pts, full batch, sse, lr 0.1",
                    sizes, ("sigmoid",) * 3, "sse", 0.1,
                    epochs or _fast(100_000, 10_000), None, X, y, Ws, bs)


def _w2(name, batch_size, epochs):
    X, y, _, _ = admissions()
    n_features = X.shape[1]
    # tutorial 004: np.random.seed(21) then normal(scale=1/sqrt(n_features))
    np.random.seed(21)
    W0 = np.random.normal(scale=1 / n_features ** .5, size=(n_features, 2))
    W1_ = np.random.normal(scale=1 / n_features ** .5, size=2).reshape(2, 1)
    desc = ("admissions 6-2-1 sigmoid no bias, 360 rows, half_mse, lr 0.007, "
            + ("full batch" if batch_size is None else "per-sample SGD"))
    return Workload(name, desc, (n_features, 2, 1), ("sigmoid", "sigmoid"), "half_mse",
                    0.007, epochs or 1_000, batch_size, X, y, [W0, W1_], None)


def w2a(epochs=None):
    return _w2("W2a", None, epochs)


def w2b(epochs=None):
    return _w2("W2b", 1, epochs)


def w3(epochs=None):
    X, y = regression()
    sizes = (1, 10, 1)
    Ws, bs = init_uniform(sizes, True, np.random.default_rng(1))
    return Workload("W3", "regression 1-10-1 relu/identity, 100 pts, full batch, mse, lr 0.01",
                    sizes, ("relu", "identity"), "mse", 0.01,
                    epochs or _fast(100_000, 10_000), None, X, y, Ws, bs)


def w4(H, batch_size, n_samples=None):
    X, y = w4_data(n_samples or 4096)
    sizes = (32, H, H, 10)
    Ws, bs = init_normal(sizes, True, np.random.default_rng(H))
    tag = "a" if batch_size == 1 else "b"
    return Workload(f"W4{tag} H={H}",
                    f"32-{H}-{H}-10 sigmoid, mse, {X.shape[0]} samples, 1 epoch, batch {batch_size}",
                    sizes, ("sigmoid",) * 3, "mse", 0.1, 1, batch_size, X, y, Ws, bs)


def w5(n_models=None, epochs=None):
    X, y = xor_easy()
    sizes = (2, 4, 4, 1)
    M = n_models or _fast(256, 32)
    rng = np.random.default_rng(5)
    Ws = [rng.random((M, a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [rng.random((M, b)) for b in sizes[1:]]
    return Workload("W5", f"{M} x W1 nets, full batch, sse, lr 0.1",
                    sizes, ("sigmoid",) * 3, "sse", 0.1,
                    epochs or _fast(10_000, 2_000), None, X, y, Ws, bs, n_models=M)


WORKLOADS = {
    "W1": w1, "W2a": w2a, "W2b": w2b, "W3": w3,
    **{f"W4a_{H}": (lambda H=H: w4(H, 1)) for H in W4_WIDTHS},
    **{f"W4b_{H}": (lambda H=H: w4(H, 64)) for H in W4_WIDTHS},
    "W5": w5,
}


# ---------------------------------------------------------------------------
# a plain NumPy evaluator, used to check that every engine did the same math
# ---------------------------------------------------------------------------
_ACT = {
    "identity": lambda z: z,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
}


def forward(weights, biases, activations, X):
    a = X
    for l, W in enumerate(weights):
        z = a @ W
        if biases is not None:
            z = z + biases[l]
        a = _ACT[activations[l]](z)
    return a


def loss_value(wl, weights, biases, X=None, y=None):
    X = wl.X if X is None else X
    y = wl.y if y is None else y
    out = forward(weights, biases, wl.activations, X)
    s = float(np.sum((out - y) ** 2))
    n = out.size
    return {"sse": 0.5 * s, "mse": s / n, "half_mse": 0.5 * s / n}[wl.loss]


# ---------------------------------------------------------------------------
# fastbp access
# ---------------------------------------------------------------------------
def import_fastbp():
    """fastbp with a usable MLP, or raise NotImplementedError (asv: skip)."""
    try:
        import fastbp
        fastbp.MLP
    except Exception as exc:  # not installed / not written yet
        raise NotImplementedError(f"fastbp.MLP unavailable: {exc!r}")
    return fastbp


def fastbp_model(wl, weights=None, biases=None):
    fastbp = import_fastbp()
    weights = wl.weights if weights is None else weights
    biases = wl.biases if biases is None else biases
    return fastbp.MLP.from_weights([np.array(W) for W in weights],
                                   None if biases is None else [np.array(b) for b in biases],
                                   activation=list(wl.activations), loss=wl.loss,
                                   dtype=wl.dtype)


def fastbp_fit(model, wl, **kw):
    return model.fit(wl.X, wl.y, epochs=wl.epochs, lr=wl.lr, batch_size=wl.batch_size,
                     shuffle=False, record_every=wl.record_every, **kw)


class steady_state_kernels:
    """Within this block every fit runs on the fastest kernel the dispatcher has for it
    (fastbp/_dispatch.py, POLICY "fastest": generated kernels and the register tiles),
    however short.  A warm-up on a workload's tiny copy then compiles (or loads from
    disk) the kernel that the full-size runs use once they are under way; without it
    the first timed run would compile it."""

    def __enter__(self):
        from fastbp import _dispatch
        self._dispatch, self._saved = _dispatch, _dispatch.POLICY
        _dispatch.POLICY = "fastest"

    def __exit__(self, *exc):
        self._dispatch.POLICY = self._saved


def fastbp_warm_up(wl, **kw):
    """Compile or load every kernel the workload's timed fits use: one fit of its tiny
    copy under steady_state_kernels."""
    tiny = wl.tiny()
    with steady_state_kernels():
        fastbp_fit(fastbp_model(tiny), tiny, **kw)


# ---------------------------------------------------------------------------
# asv helpers
# ---------------------------------------------------------------------------
class Benchmark:
    """Base for every fastbp benchmark (scikit-learn's asv_benchmarks style).

    Workloads take milliseconds to seconds, so one call per sample (``number = 1``);
    ``setup`` builds the data and warms the Numba kernels up, so ``time_*`` never
    includes compilation.  ``setup`` raises NotImplementedError (asv: skipped) when
    fastbp or an optional peer is missing."""
    timeout = 600
    processes = 1
    number = 1
    repeat = (1, 7, 20.0)      # min repeats, max repeats, max seconds
    warmup_time = 0.0          # setup() does the warm-up
    min_run_count = 1


def import_peers():
    """The peers module (asv_benchmarks/peers.py), importable from the benchmarks package."""
    here = str(Path(__file__).resolve().parents[1])
    if here not in sys.path:
        sys.path.insert(0, here)
    import peers
    return peers


def best_time(fn, repeat=3):
    """Fastest of ``repeat`` calls, seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def speedup_vs(engine, wl, key, fastbp_run, factor, repeat=3):
    """Full-size time of ``engine`` (run on 1/factor of the work, extrapolated) over
    fastbp's best time on the full workload ``wl`` -- both measured here, now."""
    peers = import_peers()
    small = wl.scaled(factor)
    try:
        run = peers.build(engine, small, key)
    except (peers.Unavailable, peers.NotApplicable) as exc:
        raise NotImplementedError(str(exc))
    (getattr(run, "warmup", None) or run)()
    t_peer = best_time(run, 1 if engine == "numpy" else repeat) * small.scale
    return t_peer / best_time(fastbp_run, repeat)
