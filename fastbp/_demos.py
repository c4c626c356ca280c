"""The tutorials as demos: ``fastbp demo xor|linear|regression|admissions|all``.

Each demo builds the tutorial's network with the tutorial's settings, trains it with
fastbp and prints what the tutorial prints, then the wall time and the training
speed. Nothing here does numerics beyond formatting the model's own results.

Every loss a demo prints is the loss its header names, read from the fit's ``History``
(``hist.loss[r]``: the loss before epoch ``r``'s update, i.e. after ``r`` epochs) or
from ``model.loss`` after training, so it agrees with the loss plot. Where the tutorial
printed another measure, that figure follows in brackets, labelled as the tutorial's.

- seed 000 (``xor``, ``linear``): 2-4-4-1 sigmoid net, U[0, 1) init, the textbook loss
  E = 1/2 sum (out - y)^2 (``loss="sse"``), full-batch gradient descent, lr 0.1,
  100,000 epochs. Prints the initial weights and biases, ``epoch %d loss (sse): ...``
  on the tutorial's schedule with the tutorial's ``np.mean(np.square(y - out))``
  (= 2 E / (N K)) beside it, the final weights and biases in the tutorial's format, and
  the last recorded loss.
- seed 004 (``admissions``): 6-2-1 sigmoid net without biases, N(0, 1/sqrt(6)) init,
  loss 1/2 mean (out - y)^2 (``half_mse``: the tutorial's update divides the summed
  gradient by the number of records), full batch, lr 0.007, 1,000 epochs. Prints
  ``Train loss (half_mse)`` after every epochs/10 epochs (the tutorial's schedule,
  with the mean squared error over the training rows = 2 x half_mse beside it: what
  the tutorial means to print, though its code takes that figure from the last training
  row alone, the loop's ``x``) and ``Prediction accuracy:`` on the test split.
- seed 001 (``regression``): 1-10-1 net, relu then identity, U[0, 1) init (the
  tutorial's ``np.random.rand``), MSE, full batch, lr 0.01. The tutorial prints the
  loss at each of its 50 steps; run for 100,000 epochs that is a summary of the curve
  (first, last, minimum). The default seed is 3: at lr 0.01 this net sits at the edge
  of stability, and from many other U[0, 1) draws the loss settles into an
  oscillation around 160-190 after reaching ~100 (``--lr 0.005`` converges to the
  noise floor, ~80, from every seed we tried).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import datasets

DEMOS = ("xor", "linear", "regression", "admissions")


@dataclass
class DemoSettings:
    """Defaults of one demo, overridable from the command line: the tutorial's, except
    the regression demo's 100,000 epochs (its tutorial takes 50) and the xor and linear
    demos' lr 0.1 (their tutorial states no rate)."""

    epochs: int
    lr: float
    seed: int


DEFAULTS = {
    "xor": DemoSettings(epochs=100_000, lr=0.1, seed=0),
    "linear": DemoSettings(epochs=100_000, lr=0.1, seed=0),
    "regression": DemoSettings(epochs=100_000, lr=0.01, seed=3),
    "admissions": DemoSettings(epochs=1_000, lr=0.007, seed=21),
}


def _fit(model, X, y, progress, **kwargs):
    """``model.fit`` with ``progress`` passed only where the installed fit takes it."""
    if progress:
        try:
            accepts = "progress" in inspect.signature(model.fit).parameters
        except (TypeError, ValueError):  # pragma: no cover - exotic callables
            accepts = False
        if accepts:
            kwargs["progress"] = True
    return model.fit(X, y, **kwargs)


def _seconds(hist, fallback):
    s = getattr(hist, "seconds", None)
    return float(s) if s else fallback


def _epochs_run(hist, asked):
    e = getattr(hist, "epochs", None)
    return int(e) if e is not None else asked


def _record_step(hist):
    """Epochs between the History's kept records: record_every, times the stride a run
    past RECORDS_CAP records thins them to (record r is epoch r * step)."""
    every = int(getattr(hist, "record_every", 1) or 1)
    return every * int(getattr(hist, "stride", 1) or 1)


def _check_started(hist):
    """Ctrl-C before a fit's first epoch leaves no record to report: stop there."""
    if getattr(hist, "stopped", None) == "interrupted" and len(hist.loss) == 0:
        raise KeyboardInterrupt("before the first epoch")


def epochs_text(n):
    """'1 epoch', '2 epochs', '100,000 epochs'."""
    return f"{n:,} epoch{'' if n == 1 else 's'}"


def _report_speed(out, hist, epochs, fit_wall, wall):
    train_s = _seconds(hist, fit_wall)
    ran = _epochs_run(hist, epochs)
    rate = ran / train_s if train_s > 0 else float("inf")
    out(f"Training: {epochs_text(ran)} in {train_s:.3f} s ({rate:,.0f} epochs/s)")
    out(f"Wall time: {wall:.3f} s (data, model, compilation or cache load, training, printing)")
    if getattr(hist, "stopped", None):
        out(f"Note: training stopped early ({hist.stopped}) after {ran:,} of {epochs:,} epochs")


def _g(value):
    """A loss as printed: six significant digits, whatever its size."""
    return f"{value:.6g}"


def _print_params(out, when, model):
    n = len(model.weights)
    for layer in range(n):
        if layer == n - 1:
            wname, bname = "output weights", "output biases"
        else:
            wname, bname = f"hidden weights {layer + 1:02d}", f"hidden biases {layer + 1:02d}"
        # The tutorial prints a (n_in, n_out) matrix with print(*W): one row after another.
        out(" ".join([f"{when} {wname}:"] + [str(row) for row in np.asarray(model.weights[layer])]))
        if model.biases is not None:
            out(f"{when} {bname}: {np.asarray(model.biases[layer])}")


class _Snapshot:
    """The initial parameters, copied (model.weights are live views)."""

    def __init__(self, model):
        self.weights = [np.array(w, copy=True) for w in model.weights]
        self.biases = None if model.biases is None else [np.array(b, copy=True) for b in model.biases]


def _plot_dir(plot):
    if plot is None:
        return None
    d = Path(plot)
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_seed000(name, settings, progress, plot, out):
    """XOR or linear: seed 000's 2-4-4-1 sigmoid network."""
    import fastbp

    t0 = time.perf_counter()
    if name == "xor":
        X, y = datasets.xor_easy()
        title = "XOR (generate_XOR_easy, 21 points)"
    else:
        X, y = datasets.linear(100, seed=settings.seed)
        title = f"Linear (100 points in the unit square, data seed {settings.seed})"
    out(f"== fastbp demo {name}: seed 000, {title}")
    out(f"== 2-4-4-1 sigmoid, loss sse, full-batch gradient descent, lr {settings.lr:g}, "
        f"{settings.epochs:,} epochs, init uniform seed {settings.seed}")
    model = fastbp.MLP([2, 4, 4, 1], activation="sigmoid", loss="sse", init="uniform",
                       seed=settings.seed)
    _print_params(out, "Initial", _Snapshot(model))
    f0 = time.perf_counter()
    hist = _fit(model, X, y, progress, epochs=settings.epochs, lr=settings.lr)
    fit_wall = time.perf_counter() - f0
    _check_started(hist)

    n, k = y.shape
    # The tutorial prints at i % 5000 == 0 and i > 5000 (100,000 epochs: 10000 ...
    # 95000) its np.mean(np.square(y - out)) = 2 E / (N K), computed before epoch i's
    # update: record i of the History, in sse, shown first.
    loss = np.asarray(hist.loss, dtype=np.float64)
    every = _record_step(hist)
    interval = max(1, settings.epochs // 20)
    for r, value in enumerate(loss):
        i = r * every
        if i % interval == 0 and i > interval:
            out("epoch %d loss (sse): %s  [tutorial's mse: %f]"
                % (i, _g(value), 2.0 * value / (n * k)))
    _print_params(out, "Final", model)
    pred = np.asarray(model.predict(X)).reshape(n, k)
    acc = np.mean((pred > 0.5) == (y > 0.5))
    out(f"Accuracy: {acc:.3f} ({int(round(acc * n))}/{n} points)")
    last = (len(loss) - 1) * every
    out(f"Last recorded loss (sse), epoch {last:,}: {_g(loss[-1])}  "
        f"[tutorial's mse: {2.0 * loss[-1] / (n * k):f}]")
    d = _plot_dir(plot)
    if d is not None:
        from . import plot as fplot

        fplot.loss_curve(hist, path=d / f"{name}_loss.png", title=f"{name}: training loss (sse)")
        fplot.decision_boundary(model, X, y, path=d / f"{name}_decision_boundary.png",
                                title=f"{name}: decision boundary")
        out(f"Plots: {d / f'{name}_loss.png'}, {d / f'{name}_decision_boundary.png'}")
    _report_speed(out, hist, settings.epochs, fit_wall, time.perf_counter() - t0)
    return model, hist


def run_regression(settings, progress, plot, out):
    """Seed 001's 1-10-1 relu network on make_regression data."""
    import fastbp

    t0 = time.perf_counter()
    X, Y = datasets.regression()
    out(f"== fastbp demo regression: seed 001, make_regression(100, n_features=1, noise=10, random_state=3)")
    out(f"== 1-10-1 relu/identity, loss mse, full-batch gradient descent, lr {settings.lr:g}, "
        f"{settings.epochs:,} epochs, init uniform seed {settings.seed}")
    model = fastbp.MLP([1, 10, 1], activation=["relu", "identity"], loss="mse", init="uniform",
                       seed=settings.seed)
    f0 = time.perf_counter()
    hist = _fit(model, X, Y, progress, epochs=settings.epochs, lr=settings.lr)
    fit_wall = time.perf_counter() - f0
    _check_started(hist)
    loss = np.asarray(hist.loss, dtype=np.float64)
    every = _record_step(hist)
    final = float(model.loss(X, Y))
    best = int(np.nanargmin(loss)) if np.isfinite(loss).any() else 0
    out(f"Loss (MSE): first {loss[0]:.6f}, last {loss[-1]:.6f} (epoch {(len(loss) - 1) * every}), "
        f"min {loss[best]:.6f} (epoch {best * every}), after training {final:.6f}")
    r2 = 1.0 - np.sum((np.asarray(model.predict(X)).reshape(Y.shape) - Y) ** 2) / np.sum((Y - Y.mean()) ** 2)
    out(f"R^2 on the training data: {r2:.4f}")
    d = _plot_dir(plot)
    if d is not None:
        from . import plot as fplot

        fplot.loss_curve(hist, path=d / "regression_loss.png", title="regression: training loss (mse)")
        fplot.fit_1d(model, X, Y, path=d / "regression_fit.png", title="regression: 1-10-1 relu fit")
        out(f"Plots: {d / 'regression_loss.png'}, {d / 'regression_fit.png'}")
    _report_speed(out, hist, settings.epochs, fit_wall, time.perf_counter() - t0)
    return model, hist


def tutorial_admissions_model(n_features, seed, n_hidden=2):
    """Seed 004's network with the tutorial's own initial weights: after
    ``np.random.seed(seed)`` it draws the input-hidden weights, then the hidden-output
    ones, from normal(scale=1/sqrt(n_features)) -- numpy's legacy generator, reproduced
    here with RandomState so the global one is left alone."""
    import fastbp

    rs = np.random.RandomState(seed)
    scale = 1 / n_features ** 0.5
    w_ih = rs.normal(scale=scale, size=(n_features, n_hidden))
    w_ho = rs.normal(scale=scale, size=n_hidden)
    return fastbp.MLP.from_weights([w_ih, w_ho.reshape(n_hidden, 1)], None,
                                   activation="sigmoid", loss="half_mse")


def run_admissions(settings, progress, plot, out, data=None):
    """Seed 004's 6-2-1 network on the admissions data."""
    import fastbp

    t0 = time.perf_counter()
    adm = datasets.admissions(data)
    src = "the tutorial's UCLA admissions data" if data is None else str(data)
    out(f"== fastbp demo admissions: seed 004, {src} "
        f"({len(adm.y_train)} training rows, {len(adm.y_test)} test rows)")
    out(f"== 6-2-1 sigmoid without biases, loss half_mse, full-batch gradient descent, "
        f"lr {settings.lr:g}, {settings.epochs:,} epochs, the tutorial's initial weights "
        f"(np.random.seed({settings.seed}); normal(scale=1/sqrt(n_features)))")
    out("== [train mse]: the mean squared error over the training rows, the loss the "
        "tutorial prints (its code computes it from the last training row only)")
    model = tutorial_admissions_model(adm.X_train.shape[1], settings.seed)
    f0 = time.perf_counter()
    hist = _fit(model, adm.X_train, adm.y_train, progress, epochs=settings.epochs, lr=settings.lr)
    fit_wall = time.perf_counter() - f0
    _check_started(hist)
    # The tutorial prints its training MSE (= 2 x half_mse) after epoch e's update at
    # e % (epochs / 10) == 0 (e from 0); record e + 1 is the loss before epoch e + 1's
    # update, i.e. after e + 1 epochs.
    losses = np.asarray(hist.loss, dtype=np.float64)
    every = _record_step(hist)
    final = float(model.loss(adm.X_train, adm.y_train))
    interval = max(1, settings.epochs // 10)
    last = None
    for e in range(0, _epochs_run(hist, settings.epochs), interval):
        r, rem = divmod(e + 1, every)
        if rem:
            continue
        loss = float(losses[r]) if r < len(losses) else final
        line = (f"Train loss (half_mse) after {e + 1:,} epoch{'s' if e else ''}: {_g(loss)}"
                f"  [train mse: {2.0 * loss}]")
        if last is not None and last < loss:
            line += "   WARNING - Loss Increasing"
        out(line)
        last = loss
    out(f"Last recorded loss (half_mse), epoch {(len(losses) - 1) * every:,}: "
        f"{_g(losses[-1])}  [train mse: {2.0 * losses[-1]}]")
    pred = np.asarray(model.predict(adm.X_test)).reshape(-1) > 0.5
    accuracy = np.mean(pred == (adm.y_test > 0.5))
    out("Prediction accuracy: {:.3f}".format(accuracy))
    d = _plot_dir(plot)
    if d is not None:
        from . import plot as fplot

        fplot.loss_curve(hist, path=d / "admissions_loss.png", title="admissions: training loss (half_mse)")
        out(f"Plot: {d / 'admissions_loss.png'}")
    _report_speed(out, hist, settings.epochs, fit_wall, time.perf_counter() - t0)
    return model, hist


def run(name, settings, progress=False, plot=None, data=None, out=print):
    """Run one demo by name; ``out`` receives each printed line."""
    if name in ("xor", "linear"):
        return run_seed000(name, settings, progress, plot, out)
    if name == "regression":
        return run_regression(settings, progress, plot, out)
    if name == "admissions":
        return run_admissions(settings, progress, plot, out, data=data)
    raise ValueError(f"unknown demo {name!r}; expected one of {', '.join(DEMOS)}, all")
