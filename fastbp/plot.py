"""The tutorials' figures: loss curve, decision boundary, 1-D fit.

matplotlib is an optional extra (``pip install "fastbp[plot]"``) and is imported only
when a function here is called. Each function draws on ``ax`` when one is given (else
on a new figure of ``figsize`` inches at ``dpi``), saves a PNG to ``path`` when one is
given, and returns the figure. A new figure's PNG is exactly
``figsize[0] * dpi`` by ``figsize[1] * dpi`` pixels.

Figures created here are not registered with pyplot (no window opens, nothing needs
closing), so they work the same under any backend, Agg included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import atomic_write

__all__ = ["decision_boundary", "fit_1d", "loss_curve"]


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError('fastbp.plot needs matplotlib: pip install "fastbp[plot]"') from exc
    return Figure


def _figure_and_axes(ax, figsize, dpi):
    Figure = _matplotlib()
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig, path):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # No bbox_inches="tight": the file keeps the figure's exact pixel size.  Written
        # as every fastbp file is (io.atomic_write): whole or not at all, and in place of
        # a link at the path rather than through it into the file it points to
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=fig.dpi))
    return fig


def _as_2d(a, name):
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D or 2-D array, got shape {a.shape}")
    return a


def loss_curve(history, ax=None, path=None, *, logy=None, title="Training loss",
               label=None, figsize=(6.4, 4.8), dpi=100):
    """Plot a loss history against the epoch.

    Parameters
    ----------
    history : History or array-like
        A ``History`` from ``MLP.fit`` (its ``.loss`` is plotted against
        ``.epochs_recorded``) or a 1-D array of losses, one per epoch.
    ax : matplotlib Axes, optional
        Draw here instead of on a new figure.
    path : str or Path, optional
        Save the figure there as PNG (parent folders are created).
    logy : bool or None
        Logarithmic loss axis; None chooses it when the positive losses span a
        decade or more (largest / smallest >= 10): on a linear axis such a curve is
        flat after its first drop.
    title, label : str or None
        Axes title; legend label for the curve.
    figsize : (float, float), dpi : int
        Size of a new figure in inches and its resolution.

    Returns
    -------
    matplotlib.figure.Figure
    """
    loss = getattr(history, "loss", history)
    loss = np.asarray(loss, dtype=np.float64).ravel()
    if loss.size == 0:
        raise ValueError("history has no recorded loss values")
    epochs = np.asarray(getattr(history, "epochs_recorded", ()))  # thinned in long runs
    if epochs.size != loss.size:  # a plain array of losses: one per epoch
        epochs = np.arange(loss.size)
    fig, ax = _figure_and_axes(ax, figsize, dpi)
    ax.plot(epochs, loss, color="tab:blue", label=label)
    if logy is None:
        pos = loss[np.isfinite(loss) & (loss > 0)]
        logy = pos.size > 1 and pos.max() / pos.min() >= 10.0
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    if label:
        ax.legend()
    ax.grid(True, alpha=0.3)
    return _finish(fig, path)


def decision_boundary(model, X, y, ax=None, path=None, *, resolution=200, threshold=0.5,
                      margin=0.1, title="Decision boundary", figsize=(6.4, 4.8), dpi=100):
    """Plot a two-input classifier's output over the plane, with the data on top.

    The background shows ``model.predict`` (first output) on a grid covering ``X``
    plus ``margin`` of its range; the line is the ``threshold`` contour. Points are
    coloured by their true label; points the model gets wrong are ringed in red.

    Parameters
    ----------
    model : object with ``predict(X) -> (n, k)``, e.g. an ``MLP`` with 2 inputs
    X : array-like, shape (n, 2)
    y : array-like, shape (n,) or (n, 1): 0/1 labels
    ax, path, figsize, dpi, title : as :func:`loss_curve`
    resolution : int
        Grid points along each axis.
    threshold : float
        Output value separating class 0 from class 1.
    margin : float
        Extra room around the data, as a fraction of its range.

    Returns
    -------
    matplotlib.figure.Figure
    """
    X = _as_2d(X, "X")
    if X.shape[1] != 2:
        raise ValueError(f"decision_boundary needs X with 2 columns, got shape {X.shape}")
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y has {y.shape[0]} values for {X.shape[0]} rows of X")
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = np.where(hi > lo, (hi - lo) * margin, 0.5)
    gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], int(resolution))
    gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], int(resolution))
    xx, yy = np.meshgrid(gx, gy)
    grid = np.column_stack([xx.ravel(), yy.ravel()])
    zz = np.asarray(model.predict(grid), dtype=np.float64).reshape(grid.shape[0], -1)[:, 0]
    zz = zz.reshape(xx.shape)

    fig, ax = _figure_and_axes(ax, figsize, dpi)
    cs = ax.contourf(xx, yy, zz, levels=20, cmap="RdBu_r", alpha=0.6)
    if np.nanmin(zz) < threshold < np.nanmax(zz):
        ax.contour(xx, yy, zz, levels=[threshold], colors="k", linewidths=1.5)
    fig.colorbar(cs, ax=ax, label="model output")
    label = y > threshold
    pred = np.asarray(model.predict(X), dtype=np.float64).reshape(X.shape[0], -1)[:, 0] > threshold
    ax.scatter(X[~label, 0], X[~label, 1], c="tab:blue", edgecolors="k", label="class 0", zorder=3)
    ax.scatter(X[label, 0], X[label, 1], c="tab:red", edgecolors="k", label="class 1", zorder=3)
    wrong = pred != label
    if wrong.any():
        ax.scatter(X[wrong, 0], X[wrong, 1], s=160, facecolors="none", edgecolors="red",
                   linewidths=2, label="misclassified", zorder=4)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    if title:
        ax.set_title(f"{title} (accuracy {np.mean(~wrong):.3f})")
    ax.legend(loc="best", fontsize="small")
    return _finish(fig, path)


def fit_1d(model, X, y, ax=None, path=None, *, resolution=400, title="Fit",
           figsize=(6.4, 4.8), dpi=100):
    """Plot a one-input model's curve over its training data (seed 001's figure).

    Parameters
    ----------
    model : object with ``predict(X) -> (n, k)``, e.g. an ``MLP`` with 1 input
    X : array-like, shape (n,) or (n, 1)
    y : array-like, shape (n,) or (n, 1)
    ax, path, figsize, dpi, title : as :func:`loss_curve`
    resolution : int
        Points on the model's curve.

    Returns
    -------
    matplotlib.figure.Figure
    """
    X = _as_2d(X, "X")
    if X.shape[1] != 1:
        raise ValueError(f"fit_1d needs X with 1 column, got shape {X.shape}")
    y = np.asarray(y, dtype=np.float64).reshape(X.shape[0], -1)[:, 0]
    lo, hi = X.min(), X.max()
    pad = (hi - lo) * 0.05 if hi > lo else 0.5
    grid = np.linspace(lo - pad, hi + pad, int(resolution)).reshape(-1, 1)
    curve = np.asarray(model.predict(grid), dtype=np.float64).reshape(grid.shape[0], -1)[:, 0]

    fig, ax = _figure_and_axes(ax, figsize, dpi)
    ax.scatter(X[:, 0], y, s=14, c="tab:blue", label="data", zorder=2)
    ax.plot(grid[:, 0], curve, c="tab:orange", lw=2, label="model", zorder=3)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if title:
        ax.set_title(title)
    ax.legend(loc="best")
    ax.grid(True, alpha=0.3)
    return _finish(fig, path)
