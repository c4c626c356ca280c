"""fastbp.plot: each figure is a real PNG of the asked size with something drawn in it."""

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402

import fastbp  # noqa: E402
from fastbp import datasets, plot  # noqa: E402
from fastbp.history import History  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class XorRule:
    """A stand-in classifier: predict(X) -> (n, 1), 1 off the main diagonal."""

    def predict(self, X):
        X = np.asarray(X, dtype=np.float64)
        return (np.abs(X[:, :1] - X[:, 1:2]) > 0.3).astype(np.float64) * 0.9 + 0.05


class Cubic:
    def predict(self, X):
        return np.asarray(X, dtype=np.float64) ** 3


def _check_png(path, width, height):
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.shape[:2] == (height, width)
    colours = np.unique(img.reshape(-1, img.shape[-1]), axis=0)
    assert len(colours) > 1
    return img


def test_loss_curve_from_history(tmp_path):
    h = History(loss=np.exp(-np.linspace(0, 8, 500)), epochs=5000, record_every=10)
    out = tmp_path / "loss.png"
    fig = plot.loss_curve(h, path=out, figsize=(4, 3), dpi=50)
    _check_png(out, 200, 150)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"  # spans decades
    x = ax.lines[0].get_xdata()
    assert x[0] == 0 and x[-1] == 4990  # epochs, not record numbers


def test_loss_curve_from_array_linear_scale(tmp_path):
    fig = plot.loss_curve([3.0, 2.5, 2.2, 2.1], path=tmp_path / "sub" / "l.png", dpi=40,
                          figsize=(5, 4), title=None, label="train")
    _check_png(tmp_path / "sub" / "l.png", 200, 160)
    assert fig.axes[0].get_yscale() == "linear"


@pytest.mark.parametrize("high, scale", [(9.9, "linear"), (10.0, "log"), (11.7, "log")])
def test_loss_curve_log_axis_from_one_decade(high, scale):
    # 11.7: the regression tutorial's curve (914 down to 78), flat on a linear axis
    loss = np.geomspace(high, 1.0, 200)
    assert plot.loss_curve(loss).axes[0].get_yscale() == scale
    assert plot.loss_curve(loss, logy=False).axes[0].get_yscale() == "linear"
    assert plot.loss_curve(loss[:1] * 0 + 2.0, logy=True).axes[0].get_yscale() == "log"


def test_loss_curve_without_path_writes_nothing(tmp_path):
    fig = plot.loss_curve(np.ones(3))
    assert fig.get_size_inches().tolist() == [6.4, 4.8]
    assert list(tmp_path.iterdir()) == []


def test_loss_curve_empty():
    with pytest.raises(ValueError, match="no recorded loss"):
        plot.loss_curve([])


def test_decision_boundary(tmp_path):
    X, y = datasets.xor_easy()
    out = tmp_path / "db.png"
    fig = plot.decision_boundary(XorRule(), X, y, path=out, figsize=(6, 4), dpi=60, resolution=50)
    img = _check_png(out, 360, 240)
    # Both class colours of the background map are there: clearly red and clearly blue.
    rgb = img[..., :3]
    assert np.any((rgb[..., 0] > rgb[..., 2] + 0.2)) and np.any((rgb[..., 2] > rgb[..., 0] + 0.2))
    assert "accuracy" in fig.axes[0].get_title()


def test_decision_boundary_on_given_axes(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3), dpi=50)
    ax1, ax2 = fig.subplots(1, 2)
    X, y = datasets.linear(30, seed=1)
    got = plot.decision_boundary(XorRule(), X, y.ravel(), ax=ax2, path=tmp_path / "two.png", resolution=20)
    assert got is fig
    _check_png(tmp_path / "two.png", 400, 150)


def test_decision_boundary_with_a_trained_mlp(tmp_path):
    X, y = datasets.xor_easy()
    m = fastbp.MLP([2, 4, 4, 1], activation="sigmoid", loss="sse", init="uniform", seed=0)
    m.fit(X, y, epochs=200, lr=0.1)
    plot.decision_boundary(m, X, y, path=tmp_path / "m.png", dpi=30, resolution=30)
    _check_png(tmp_path / "m.png", 192, 144)


def test_decision_boundary_checks_shapes():
    with pytest.raises(ValueError, match="2 columns"):
        plot.decision_boundary(XorRule(), np.zeros((4, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="3 values for 4 rows"):
        plot.decision_boundary(XorRule(), np.zeros((4, 2)), np.zeros(3))


def test_fit_1d(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 1))
    y = X[:, 0] ** 3 + rng.normal(scale=0.1, size=40)
    out = tmp_path / "fit.png"
    fig = plot.fit_1d(Cubic(), X, y, path=out, figsize=(4, 4), dpi=50)
    _check_png(out, 200, 200)
    line = fig.axes[0].lines[0]
    xs, ys = line.get_xdata(), line.get_ydata()
    np.testing.assert_allclose(ys, xs ** 3)
    assert xs.min() < X.min() and xs.max() > X.max()


def test_fit_1d_with_a_trained_mlp(tmp_path):
    X = np.linspace(-1, 1, 30)
    y = 2 * X + 0.5
    m = fastbp.MLP([1, 5, 1], activation=["tanh", "identity"], loss="mse", init="xavier", seed=0)
    m.fit(X.reshape(-1, 1), y, epochs=100, lr=0.05)
    plot.fit_1d(m, X, y, path=tmp_path / "f.png", dpi=25)
    _check_png(tmp_path / "f.png", 160, 120)


def test_fit_1d_checks_shapes():
    with pytest.raises(ValueError, match="1 column"):
        plot.fit_1d(Cubic(), np.zeros((5, 2)), np.zeros(5))
