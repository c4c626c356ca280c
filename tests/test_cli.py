"""The fastbp command: main(argv) in-process, and one run through ``python -m fastbp``."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import numpy.testing as npt
import pytest

import fastbp
from fastbp import _demos, datasets
from fastbp.cli import main

ADMISSIONS = Path(datasets.__file__).resolve().parent / "data" / "ucla_binary.csv"
# the loss the header names (sse), then the tutorial's own figure, labelled
EPOCH_LINE = re.compile(r"^epoch (\d+) loss \(sse\): (\S+)  \[tutorial's mse: (\d+\.\d{6})\]$")


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_usage_error(rc, out, err, *fragments):
    assert rc == 2
    # the driver's notice before a kernel compiles (a cold cache: fastbp/_driver.py's
    # announce) is not part of the error
    lines = [line for line in err.strip().splitlines()
             if not line.startswith("fastbp: compiling ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("fastbp: error: ")
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def _row(*values):
    return ",".join(repr(float(v)) for v in values)


@pytest.fixture
def csv_files(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 3))
    label = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    target = 2.0 * X[:, 0] - X[:, 2] + 0.05 * rng.normal(size=120)
    cls = tmp_path / "cls.csv"
    cls.write_text("a,b,label,c\n" + "".join(f"{_row(r[0], r[1])},{t},{_row(r[2])}\n"
                                               for r, t in zip(X, label)))
    reg = tmp_path / "reg.csv"
    reg.write_text("x1,x2,x3,y\n" + "".join(f"{_row(*r, t)}\n" for r, t in zip(X, target)))
    return cls, reg, X, label, target


# ------------------------------------------------------------------ demo


def test_demo_xor_prints_the_tutorials_report(capsys):
    rc, out, err = run(capsys, "demo", "xor", "--epochs", "2000", "--no-progress")
    assert rc == 0, err
    lines = out.splitlines()
    for name in ("hidden weights 01", "hidden biases 01", "hidden weights 02",
                 "hidden biases 02", "output weights", "output biases"):
        assert any(l.startswith(f"Initial {name}: [") for l in lines), name
        assert any(l.startswith(f"Final {name}: [") for l in lines), name
    # print(*W) of a (2, 4) matrix: two bracketed rows; of a (4, 1) matrix: four.
    w01 = next(l for l in lines if l.startswith("Initial hidden weights 01:"))
    assert w01.count("[") == 2
    wout = next(l for l in lines if l.startswith("Initial output weights:"))
    assert wout.count("[") == 4
    # The tutorial's schedule scaled to 2000 epochs: every 100, i > 100.
    epochs = [int(m.group(1)) for m in map(EPOCH_LINE.match, lines) if m]
    assert epochs == list(range(200, 2000, 100))
    assert "epochs/s" in out and "Wall time" in out
    # Order: initial parameters, the loss lines, final parameters, timing.
    first_epoch = next(i for i, l in enumerate(lines) if EPOCH_LINE.match(l))
    assert lines.index(w01) < first_epoch < next(i for i, l in enumerate(lines) if l.startswith("Final"))


def test_demo_xor_prints_the_loss_its_header_names(capsys):
    rc, out, _ = run(capsys, "demo", "xor", "--epochs", "1000", "--seed", "4", "--no-progress")
    assert rc == 0
    assert ", loss sse, " in out.splitlines()[1]
    X, y = datasets.xor_easy()
    m = fastbp.MLP([2, 4, 4, 1], activation="sigmoid", loss="sse", init="uniform", seed=4)
    init = [w.copy() for w in m.weights]
    hist = m.fit(X, y, epochs=1000, lr=0.1)
    printed = {int(g.group(1)): g.groups()[1:] for g in map(EPOCH_LINE.match, out.splitlines()) if g}
    assert printed
    for epoch, (sse, mse) in printed.items():
        assert sse == f"{hist.loss[epoch]:.6g}"  # the History, in the header's loss
        assert mse == "%f" % (2.0 * hist.loss[epoch] / 21)  # the tutorial's figure
    # the last value, as the loss plot ends
    assert f"Last recorded loss (sse), epoch 999: {hist.loss[-1]:.6g}  [tutorial's mse: " in out
    first = next(l for l in out.splitlines() if l.startswith("Initial hidden weights 01:"))
    assert first == " ".join(["Initial hidden weights 01:"] + [str(r) for r in init[0]])
    final = next(l for l in out.splitlines() if l.startswith("Final output biases:"))
    assert final == f"Final output biases: {m.biases[-1]}"


def test_demos_print_each_record_at_its_epoch_in_a_thinned_history(capsys, monkeypatch):
    """A run past history.RECORDS_CAP records keeps every stride-th one: the demos label
    each value with its own epoch (hist.epochs_recorded), not its index."""
    from fastbp import history as H

    X, y = datasets.xor_easy()
    m = fastbp.MLP([2, 4, 4, 1], activation="sigmoid", loss="sse", init="uniform", seed=4)
    full = m.fit(X, y, epochs=1000, lr=0.1).loss  # every epoch's record
    adm = datasets.admissions()
    full_adm = _demos.tutorial_admissions_model(6, 21).fit(
        adm.X_train, adm.y_train, epochs=1000, lr=0.007).loss
    monkeypatch.setattr(H, "RECORDS_CAP", 64)  # 1000 epochs: every 16th record kept
    rc, out, _ = run(capsys, "demo", "xor", "--epochs", "1000", "--seed", "4", "--no-progress")
    assert rc == 0
    printed = {int(g.group(1)): g.group(2) for g in map(EPOCH_LINE.match, out.splitlines()) if g}
    assert printed == {e: f"{full[e]:.6g}" for e in (400, 800)}
    assert f"Last recorded loss (sse), epoch 992: {full[992]:.6g}  " in out
    rc, out, _ = run(capsys, "demo", "admissions", "--no-progress")
    assert rc == 0
    for line in out.splitlines():
        g = re.match(r"Train loss \(half_mse\) after ([\d,]+) epochs?: (\S+)", line)
        if g:
            assert g.group(2) == f"{full_adm[int(g.group(1).replace(',', ''))]:.6g}", line
    assert f"Last recorded loss (half_mse), epoch 992: {full_adm[992]:.6g}  " in out


def test_demo_linear(capsys):
    rc, out, _ = run(capsys, "demo", "linear", "--epochs", "400", "--lr", "0.5", "--no-progress")
    assert rc == 0
    assert "Linear (100 points" in out and "lr 0.5" in out
    assert "Final output biases:" in out


def test_demo_regression_summary(capsys):
    pytest.importorskip("sklearn")
    rc, out, _ = run(capsys, "demo", "regression", "--epochs", "300", "--no-progress")
    assert rc == 0
    assert "(100, 1)" not in out  # no stray prints
    assert ", loss mse, " in out.splitlines()[1]
    m = re.search(r"Loss \(MSE\): first ([\d.]+), last ([\d.]+) \(epoch 299\), min ([\d.]+) "
                  r"\(epoch (\d+)\), after training ([\d.]+)", out)
    assert m, out
    X, Y = datasets.regression()
    model = fastbp.MLP([1, 10, 1], activation=["relu", "identity"], loss="mse", init="uniform", seed=3)
    hist = model.fit(X, Y, epochs=300, lr=0.01)
    first, last, low, low_epoch, after = m.groups()
    assert first == f"{hist.loss[0]:.6f}" and last == f"{hist.loss[-1]:.6f}"
    assert low == f"{hist.loss.min():.6f}" and int(low_epoch) == int(np.argmin(hist.loss))
    assert after == f"{model.loss(X, Y):.6f}"
    assert "R^2" in out


def test_demo_admissions_out_of_the_box_is_the_tutorials_run(capsys):
    rc, out, _ = run(capsys, "demo", "admissions", "--no-progress")
    assert rc == 0
    assert "360 training rows, 40 test rows" in out
    losses = [l for l in out.splitlines() if l.startswith("Train loss (half_mse) after ")]
    assert len(losses) == 10  # every epochs / 10
    # the tutorial's figure, from the packaged data with no --data
    assert re.search(r"^Prediction accuracy: 0\.775$", out, re.M)


def test_demo_admissions_loss_lines_are_the_headers_half_mse(capsys):
    rc, out, _ = run(capsys, "demo", "admissions", "--epochs", "50", "--no-progress")
    assert rc == 0
    assert ", loss half_mse, " in out.splitlines()[1]
    a = datasets.admissions()
    # the tutorial's initial weights (np.random.seed(21), then normal draws), as the demo
    # makes them
    m = _demos.tutorial_admissions_model(6, 21)
    hist = m.fit(a.X_train, a.y_train, epochs=50, lr=0.007)
    line = re.compile(r"^Train loss \(half_mse\) after (\d+) epochs?: (\S+)  "
                      r"\[train mse: (\S+)\]$")
    printed = [g.groups() for g in map(line.match, out.splitlines()) if g]
    # after 1, 6, ..., 46 epochs (the tutorial: after epochs 0, 5, ..., 45 counted from 0)
    assert [int(p[0]) for p in printed] == list(range(1, 50, 5))
    for epochs, half_mse, mse in printed:
        assert half_mse == f"{hist.loss[int(epochs)]:.6g}"
        assert float(mse) == 2.0 * hist.loss[int(epochs)]
    assert (f"Last recorded loss (half_mse), epoch 49: {hist.loss[-1]:.6g}  "
            f"[train mse: {2.0 * hist.loss[-1]}]") in out


def test_demo_admissions_data_reads_any_file(capsys, tmp_path):
    head = tmp_path / "head.csv"
    head.write_text("\n".join(ADMISSIONS.read_text().splitlines()[:121]) + "\n")
    rc, out, _ = run(capsys, "demo", "admissions", "--data", str(head), "--epochs", "100",
                     "--no-progress")
    assert rc == 0
    assert f"{head} (108 training rows, 12 test rows)" in out
    acc = float(re.search(r"^Prediction accuracy: (\d\.\d{3})$", out, re.M).group(1))
    # the same run through the API, from the tutorial's initial weights
    a = datasets.admissions(head)
    rs = np.random.RandomState(21)
    w_ih = rs.normal(scale=6 ** -0.5, size=(6, 2))
    w_ho = rs.normal(scale=6 ** -0.5, size=2)
    m = fastbp.MLP.from_weights([w_ih, w_ho.reshape(2, 1)], None, "sigmoid", "half_mse")
    m.fit(a.X_train, a.y_train, epochs=100, lr=0.007)
    expected = np.mean((m.predict(a.X_test).ravel() > 0.5) == (a.y_test > 0.5))
    assert acc == pytest.approx(expected, abs=5e-4)


def test_demo_plots(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from fastbp import plot

    curves = {}
    real = plot.loss_curve

    def spy(history, *args, **kwargs):
        fig = real(history, *args, **kwargs)
        curves[kwargs["title"]] = (fig.axes[0], history)
        return fig

    monkeypatch.setattr(plot, "loss_curve", spy)
    d = tmp_path / "plots"
    rc, out, _ = run(capsys, "demo", "xor", "--epochs", "12000", "--plot", str(d), "--no-progress")
    assert rc == 0
    for name in ("xor_loss.png", "xor_decision_boundary.png"):
        assert (d / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(d / name) in out
    (ax, hist), = curves.values()
    assert "(sse)" in ax.get_title()
    assert ax.get_yscale() == "log"  # 4.3 down to ~0.03: more than a decade
    # the plot ends at the loss printed last
    assert ax.lines[0].get_ydata()[-1] == hist.loss[-1]
    assert f"Last recorded loss (sse), epoch 11,999: {hist.loss[-1]:.6g}" in out


def test_demo_regression_loss_plot_is_logarithmic(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    from fastbp import plot

    axes = []
    real = plot.loss_curve
    monkeypatch.setattr(plot, "loss_curve",
                        lambda *a, **k: axes.append(real(*a, **k).axes[0]) or axes[-1].figure)
    rc, out, _ = run(capsys, "demo", "regression", "--epochs", "3000", "--plot", str(tmp_path),
                     "--no-progress")
    assert rc == 0
    (ax,) = axes
    y = ax.lines[0].get_ydata()
    assert y.max() / y.min() > 10 and ax.get_yscale() == "log"
    assert "(mse)" in ax.get_title()


def test_demo_all(capsys):
    pytest.importorskip("sklearn")
    rc, out, _ = run(capsys, "demo", "all", "--epochs", "100", "--no-progress")
    assert rc == 0
    for name in ("xor", "linear", "regression", "admissions"):
        assert f"== fastbp demo {name}:" in out
    assert out.count("epochs/s") == 4


def _press_ctrl_c_in_fits(monkeypatch):
    """Every fit the CLI runs gets Ctrl-C (SIGINT) after its first chunk."""
    import signal

    real_fit = _demos._fit

    def fit_with_ctrl_c(model, X, y, progress, **kwargs):
        def ctrl_c(epoch, hist, model):
            os.kill(os.getpid(), signal.SIGINT)
        return real_fit(model, X, y, progress, callbacks=[ctrl_c], chunk_seconds=1e-4,
                        **kwargs)

    monkeypatch.setattr(_demos, "_fit", fit_with_ctrl_c)


def test_demo_ctrl_c_reports_that_demo_then_stops(capsys, monkeypatch):
    """Ctrl-C in 'demo all': the demo reports how far it got, the others do not run,
    status 130; Ctrl-C before the first epoch (nothing to report) ends cleanly too."""
    import signal

    real_fit = _demos._fit
    _press_ctrl_c_in_fits(monkeypatch)
    rc, out, err = run(capsys, "demo", "all", "--epochs", "1000000", "--no-progress")
    assert rc == 130
    assert "Note: training stopped early (interrupted)" in out
    assert "demo linear" not in out and "demo admissions" not in out
    assert err.strip().splitlines()[-1] == "fastbp: interrupted"

    from fastbp import _fit

    real_prepare = _fit.SingleFit.prepare

    def prepare_with_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(_demos, "_fit", real_fit)
    monkeypatch.setattr(_fit.SingleFit, "prepare", prepare_with_ctrl_c)
    for name in ("xor", "admissions"):
        rc, out, err = run(capsys, "demo", name, "--no-progress")
        assert rc == 130, err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == "fastbp: interrupted before the first epoch"


def test_demo_with_progress_bar(capsys):
    rc, out, _ = run(capsys, "demo", "admissions", "--epochs", "20")
    assert rc == 0 and "Prediction accuracy" in out


@pytest.mark.parametrize("argv, fragments", [
    (["demo", "nope"], ["invalid choice", "'nope'"]),
    (["demo", "xor", "--epochs", "0"], ["--epochs", "positive integer"]),
    (["demo", "xor", "--epochs", str(2 ** 60)], ["--epochs", "up to 2**53"]),
    (["demo", "xor", "--lr", "-1"], ["--lr", "positive number"]),
    (["demo", "xor", "--lr", "fast"], ["--lr", "'fast'"]),
    (["demo", "xor", "--data", "x.csv"], ["--data is for the admissions demo"]),
    # a negative seed used to reach numpy, whose message named no option
    (["demo", "linear", "--seed", "-1"], ["--seed", "'-1'", ">= 0"]),
    (["demo", "admissions", "--seed", "-1"], ["--seed", "'-1'", ">= 0"]),
    (["demo", "admissions", "--data", "does/not/exist.csv"], ["does/not/exist.csv", "no such file"]),
    (["demo"], ["NAME"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_demo_usage_errors(capsys, argv, fragments):
    assert_usage_error(*run(capsys, *argv), *fragments)


def test_divergence_is_one_line(capsys, csv_files):
    _, reg, *_ = csv_files
    rc, out, err = run(capsys, "train", str(reg), "--target", "y", "--lr", "1e6", "--epochs", "50",
                       "--no-progress")
    assert_usage_error(rc, out, err, "diverged")


def test_demo_admissions_bad_cell(capsys, tmp_path):
    p = tmp_path / "adm.csv"
    p.write_text("admit,gre,gpa,rank\n1,500,3.5,2\n0,six hundred,3.1,3\n1,700,3.9,1\n")
    assert_usage_error(*run(capsys, "demo", "admissions", "--data", str(p)),
                       "adm.csv", "row 2", "column 'gre'", "'six hundred'")


def test_help_and_version(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and "demo" in out and "train" in out and "predict" in out
    rc, out, _ = run(capsys, "train", "--help")
    assert rc == 0 and "--test-fraction" in out
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.startswith("fastbp ")
    rc, out, _ = run(capsys)
    assert rc == 2 and "COMMAND" in out


# ------------------------------------------------------------------ train / predict


def test_train_classification_save_and_predict(capsys, tmp_path, csv_files):
    cls, _, X, label, _ = csv_files
    model_path = tmp_path / "m.npz"
    rc, out, err = run(capsys, "train", str(cls), "--target", "label", "--layers", "6",
                       "--epochs", "400", "--lr", "0.5", "--standardize", "--seed", "1",
                       "--save", str(model_path), "--no-progress")
    assert rc == 0, err
    assert "0/1 classification" in out
    assert "3-6-1, relu hidden, sigmoid output, loss bce" in out
    acc = re.search(r"^Test accuracy: (\d\.\d{3}) \((\d+)/24 rows\)$", out, re.M)
    assert acc and float(acc.group(1)) >= 0.75
    assert re.search(r"^Final training loss \(bce\): ", out, re.M)
    meta = json.loads((tmp_path / "m.npz.json").read_text())
    assert meta["features"] == ["a", "b", "c"] and meta["target"] == "label"

    preds = tmp_path / "p.csv"
    rc, out, err = run(capsys, "predict", str(model_path), str(cls), "--out", str(preds))
    assert rc == 0, err
    assert "Wrote 120 predictions" in out
    rows = preds.read_text().splitlines()
    assert rows[0] == "label,label_prob_0,label_prob_1" and len(rows) == 121
    cls_col = np.array([int(r.split(",")[0]) for r in rows[1:]])
    p0 = np.array([float(r.split(",")[1]) for r in rows[1:]])
    got = np.array([float(r.split(",")[2]) for r in rows[1:]])
    m = fastbp.load(model_path)
    Xs = (X - np.array(meta["mean"])) / np.array(meta["std"])
    npt.assert_allclose(got, m.predict(Xs)[:, 0], rtol=1e-15)
    npt.assert_allclose(p0, 1.0 - got, rtol=1e-15)
    npt.assert_array_equal(cls_col, got > 0.5)
    assert meta["classes"] == [0, 1] and meta["task"] == "classify"

    # Columns are found by name: reordered, with the target missing, predictions agree.
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("c,b,a\n" + "".join(f"{_row(r[2], r[1], r[0])}\n" for r in X))
    rc, out, _ = run(capsys, "predict", str(model_path), str(shuffled))
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "label,label_prob_0,label_prob_1"
    npt.assert_allclose([float(l.split(",")[2]) for l in lines[1:]], got, rtol=1e-15)


def test_train_regression_reports_r2(capsys, csv_files):
    _, reg, *_ = csv_files
    rc, out, err = run(capsys, "train", str(reg), "--target", "y", "--layers", "8,8",
                       "--activation", "tanh", "--epochs", "200", "--lr", "0.02",
                       "--batch-size", "16", "--test-fraction", "0.25", "--no-progress")
    assert rc == 0, err
    assert "(regression)" in out and "identity output, loss mse" in out
    assert "batch size 16" in out
    r2 = re.search(r"^Test R\^2: (-?\d+\.\d{4}) \(30 rows", out, re.M)
    assert r2 and float(r2.group(1)) > 0.9


def test_train_poisson_counts(capsys, tmp_path):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(150, 2))
    counts = rng.poisson(np.exp(0.8 * X[:, 0] - 0.4 * X[:, 1] + 0.5))
    data = tmp_path / "counts.csv"
    data.write_text("x1,x2,n\n" + "".join(f"{_row(*r)},{c}\n" for r, c in zip(X, counts)))
    model_path = tmp_path / "counts.npz"
    rc, out, err = run(capsys, "train", str(data), "--target", "n",  # counts: regression
                       "--loss", "poisson", "--layers", "none", "--epochs", "400",
                       "--lr", "0.1", "--test-fraction", "0", "--no-progress",
                       "--save", str(model_path))
    assert rc == 0, err
    assert "exp output, loss poisson" in out
    m = fastbp.load(model_path)
    assert m.activations == ("exp",) and m.loss_name == "poisson"
    # one exp layer over standardized inputs is a Poisson GLM: the rates it learned
    # follow the ones the counts were drawn from
    meta = json.loads((tmp_path / "counts.npz.json").read_text())
    Xs = (X - np.array(meta["mean"])) / np.array(meta["std"])
    rate = np.exp(0.8 * X[:, 0] - 0.4 * X[:, 1] + 0.5)
    assert np.corrcoef(m.predict(Xs)[:, 0], rate)[0, 1] > 0.95
    rc, _, err = run(capsys, "train", str(data), "--target", "n", "--task", "regress",
                     "--loss", "poisson", "--output-activation", "identity", "--no-progress")
    assert rc != 0 and "'poisson' and a 'exp' output go together" in err


def test_train_without_test_split_reports_on_training_rows(capsys, csv_files):
    _, reg, *_ = csv_files
    rc, out, _ = run(capsys, "train", str(reg), "--target", "y", "--layers", "none",
                     "--epochs", "300", "--lr", "0.1", "--test-fraction", "0", "--no-progress")
    assert rc == 0
    assert "3-1," in out
    assert re.search(r"^Training R\^2: 0\.99\d\d \(120 rows", out, re.M)


def test_train_one_epoch_says_epoch(capsys, csv_files):
    _, reg, *_ = csv_files
    rc, out, _ = run(capsys, "train", str(reg), "--target", "y", "--epochs", "1",
                     "--no-progress")
    assert rc == 0
    assert re.search(r"^Training: \d+ rows, 1 epoch, lr ", out, re.M)


def test_predict_model_saved_from_python_uses_first_columns(capsys, tmp_path):
    m = fastbp.MLP([2, 3, 1], activation=["tanh", "identity"], loss="mse", init="xavier", seed=0)
    path = tmp_path / "py.npz"
    m.save(path)
    data = tmp_path / "d.csv"
    data.write_text("u,v,w\n1,2,99\n-0.5,0.25,99\n")
    rc, out, err = run(capsys, "predict", str(path), str(data))
    assert rc == 0 and "note" not in err
    lines = out.splitlines()
    assert lines[0] == "prediction"
    npt.assert_allclose([float(v) for v in lines[1:]],
                        m.predict(np.array([[1.0, 2.0], [-0.5, 0.25]]))[:, 0], rtol=1e-15)
    # a file with no header: its first sample is read as the header, and said so;
    # pandas' header of unnamed columns (0,1,...) is a header, not a sample
    headless = tmp_path / "h.csv"
    headless.write_text("1,2\n3,4\n5,6\n")
    rc, out, err = run(capsys, "predict", str(path), str(headless))
    assert rc == 0 and len(out.splitlines()) == 3
    assert "first line (1,2) holds only numbers" in err
    pandas_like = tmp_path / "p.csv"
    pandas_like.write_text("0,1\n3,4\n5,6\n")
    rc, out, err = run(capsys, "predict", str(path), str(pandas_like))
    assert rc == 0 and "note" not in err
    narrow = tmp_path / "n.csv"
    narrow.write_text("u\n1\n")
    assert_usage_error(*run(capsys, "predict", str(path), str(narrow)), "n.csv", "1 columns", "2 inputs")


@pytest.mark.parametrize("extra, fragments", [
    (["--target", "nope"], ["no column 'nope'", "columns: x1, x2, x3, y"]),
    (["--target", "y", "--layers", "8,x"], ["--layers", "8,x"]),
    (["--target", "y", "--layers", "8,0"], ["--layers", ">= 1"]),
    (["--target", "y", "--layers", "0"], ["--layers", ">= 1", "'0'"]),
    (["--target", "y", "--layers", ""], ["--layers", "''"]),
    (["--target", "y", "--task", "sort"], ["--task", "invalid choice"]),
    (["--target", "y", "--task", "classify"], ["'y'", "not a class label", "--task classify"]),
    (["--target", "y", "--test-fraction", "1.5"], ["--test-fraction", "[0, 1)"]),
    (["--target", "y", "--epochs", "-5"], ["--epochs"]),
    # past fit's 2**53, refused with the options, before the Data / Model lines print
    (["--target", "y", "--epochs", str(2 ** 53 + 1)], ["--epochs", "up to 2**53"]),
    (["--target", "y", "--batch-size", "0"], ["--batch-size"]),
    (["--target", "y", "--seed", "-1"], ["--seed", "'-1'", ">= 0"]),
    # 96 of the 120 rows train; the library's message named its Python keyword
    (["--target", "y", "--batch-size", "97"],
     ["--batch-size 97 is larger than the 96 training rows", "leave --batch-size out"]),
    (["--target", "y", "--activation", "softsign"], ["--activation", "invalid choice"]),
    (["--target", "y", "--loss", "bce"], ["bce"]),  # the model's own ValueError, one line
    ([], ["--target"]),
])
def test_train_usage_errors(capsys, csv_files, extra, fragments):
    _, reg, *_ = csv_files
    assert_usage_error(*run(capsys, "train", str(reg), *extra, "--no-progress"), *fragments)


def test_train_standardize_overflow_names_the_column(capsys, tmp_path):
    # the mean of 1e308s overflows: this used to end in numpy's overflow warnings and
    # "X contains NaN or infinity", about data that holds neither
    path = tmp_path / "big.csv"
    path.write_text("small,big,y\n" + "".join(f"{i},{s}1.7e308,{i % 2}\n"
                                              for i, s in zip(range(20), "+-" * 10)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning either
        rc, out, err = run(capsys, "train", str(path), "--target", "y", "--standardize",
                           "--no-progress")
    assert_usage_error(rc, out, err, "--standardize", "big.csv", "column 'big'", "overflows")


def test_train_data_errors(capsys, tmp_path):
    assert_usage_error(*run(capsys, "train", str(tmp_path / "missing.csv"), "--target", "y"),
                       "missing.csv", "no such file")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,y\n1,2\n3,x4\n")
    assert_usage_error(*run(capsys, "train", str(bad), "--target", "y"),
                       "bad.csv", "row 2", "line 3", "column 'y'", "'x4'")
    only = tmp_path / "only.csv"
    only.write_text("y\n1\n2\n")
    assert_usage_error(*run(capsys, "train", str(only), "--target", "y"), "no feature columns")


def test_predict_errors(capsys, tmp_path, csv_files):
    cls, reg, *_ = csv_files
    model_path = tmp_path / "m.npz"
    assert run(capsys, "train", str(cls), "--target", "label", "--epochs", "5",
               "--save", str(model_path), "--no-progress")[0] == 0
    assert_usage_error(*run(capsys, "predict", str(tmp_path / "none.npz"), str(cls)),
                       "none.npz", "no such model file")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert_usage_error(*run(capsys, "predict", str(folder), str(cls)),
                       "a_folder", "is a directory, not a model file")
    assert_usage_error(*run(capsys, "predict", str(model_path), str(tmp_path / "none.csv")),
                       "none.csv", "no such file")
    assert_usage_error(*run(capsys, "predict", str(model_path), str(reg)),
                       "reg.csv", "missing columns 'a', 'b', 'c'")
    assert_usage_error(*run(capsys, "predict", str(cls), str(cls)), "cls.csv")
    (tmp_path / "m.npz.json").write_text("{not json")
    assert_usage_error(*run(capsys, "predict", str(model_path), str(cls)), "m.npz.json")


# ------------------------------------------------------------------ classes


@pytest.fixture
def wine_csv(tmp_path):
    """scikit-learn's wine data as a CSV: 13 features, 3 cultivars named by text."""
    sk = pytest.importorskip("sklearn.datasets")
    d = sk.load_wine()
    names = [n.replace("/", "_") for n in d.feature_names]
    path = tmp_path / "wine.csv"
    path.write_text(",".join(names + ["cultivar"]) + "\n" + "".join(
        ",".join(repr(float(v)) for v in row) + f",{d.target_names[t]}\n"
        for row, t in zip(d.data, d.target)))
    return path, d


def test_train_wine_text_labels_classifies_and_predict_gives_them_back(capsys, tmp_path, wine_csv):
    path, d = wine_csv
    model_path = tmp_path / "wine.npz"
    rc, out, err = run(capsys, "train", str(path), "--target", "cultivar", "--layers", "16",
                       "--standardize", "--save", str(model_path), "--no-progress")
    assert rc == 0, err
    assert "classification, 3 classes: class_0, class_1, class_2" in out
    assert "13-16-3, relu hidden, softmax output, loss cross_entropy" in out
    acc = re.search(r"^Test accuracy: (\d\.\d{3}) \((\d+)/36 rows\)$", out, re.M)
    assert acc and float(acc.group(1)) >= 0.9, out
    meta = json.loads((tmp_path / "wine.npz.json").read_text())
    assert meta["classes"] == ["class_0", "class_1", "class_2"]
    assert meta["task"] == "classify"

    preds = tmp_path / "preds.csv"
    assert run(capsys, "predict", str(model_path), str(path), "--out", str(preds))[0] == 0
    rows = preds.read_text().splitlines()
    assert rows[0] == ("cultivar,cultivar_prob_class_0,cultivar_prob_class_1,"
                       "cultivar_prob_class_2")
    labels = [r.split(",")[0] for r in rows[1:]]
    proba = np.array([[float(v) for v in r.split(",")[1:]] for r in rows[1:]])
    assert set(labels) <= set(d.target_names)  # the same strings come back
    npt.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    npt.assert_array_equal(labels, d.target_names[np.argmax(proba, axis=1)])
    m = fastbp.load(model_path)
    Xs = (d.data - np.array(meta["mean"])) / np.array(meta["std"])
    npt.assert_allclose(proba, m.predict(Xs), rtol=1e-15)
    # nearly all of the training data is classified right
    assert np.mean(np.array(labels) == d.target_names[d.target]) >= 0.9


def test_train_integer_labels_classify_and_come_back_as_integers(capsys, tmp_path):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(90, 2))
    label = np.digitize(X[:, 0], [-0.5, 0.5]) * 10 + 7  # 7, 17, 27: not 0-based
    data = tmp_path / "three.csv"
    data.write_text("u,v,k\n" + "".join(f"{_row(*r)},{t}\n" for r, t in zip(X, label)))
    model_path = tmp_path / "m.npz"
    rc, out, err = run(capsys, "train", str(data), "--target", "k", "--layers", "8",
                       "--lr", "0.1", "--save", str(model_path), "--no-progress")
    assert rc == 0, err
    assert "classification, 3 classes: 7, 17, 27" in out and "Test accuracy" in out
    assert json.loads((tmp_path / "m.npz.json").read_text())["classes"] == [7, 17, 27]
    rc, out, _ = run(capsys, "predict", str(model_path), str(data))
    lines = out.splitlines()
    assert lines[0] == "k,k_prob_7,k_prob_17,k_prob_27"
    assert {l.split(",")[0] for l in lines[1:]} <= {"7", "17", "27"}
    # --task regress fits the same labels as numbers
    rc, out, _ = run(capsys, "train", str(data), "--target", "k", "--task", "regress",
                     "--epochs", "5", "--no-progress")
    assert rc == 0 and "(regression)" in out and "identity output, loss mse" in out


def test_train_auto_task_keeps_many_integers_as_regression(capsys, tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 2))
    counts = np.round(50 + 20 * X[:, 0]).astype(int)  # ~40 distinct integers
    data = tmp_path / "counts.csv"
    data.write_text("a,b,n\n" + "".join(f"{_row(*r)},{c}\n" for r, c in zip(X, counts)))
    rc, out, _ = run(capsys, "train", str(data), "--target", "n", "--epochs", "5", "--no-progress")
    assert rc == 0 and "(regression)" in out
    rc, out, _ = run(capsys, "train", str(data), "--target", "n", "--task", "classify",
                     "--epochs", "5", "--no-progress")
    assert rc == 0 and f"classification, {len(set(counts))} classes" in out


def test_train_class_errors(capsys, tmp_path):
    text = tmp_path / "text.csv"
    text.write_text("a,y\n1,cat\n2,dog\n3,cat\n4,dog\n")
    assert_usage_error(*run(capsys, "train", str(text), "--target", "y", "--task", "regress"),
                       "text.csv", "'cat'", "not a number", "--task regress")
    assert_usage_error(*run(capsys, "train", str(text), "--target", "y", "--loss", "mse"),
                       "--loss mse", "2 classes", "cross_entropy")
    one = tmp_path / "one.csv"
    one.write_text("a,y\n1,cat\n2,cat\n")
    assert_usage_error(*run(capsys, "train", str(one), "--target", "y"), "one class", "'cat'")


# ------------------------------------------------------------------ outputs never replace inputs


@pytest.fixture
def trained(capsys, tmp_path, csv_files):
    cls = csv_files[0]
    model_path = tmp_path / "m.npz"
    assert run(capsys, "train", str(cls), "--target", "label", "--epochs", "5",
               "--save", str(model_path), "--no-progress")[0] == 0
    return cls, model_path


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_train_refuses_to_save_over_its_data(capsys, tmp_path, csv_files):
    cls = csv_files[0]
    before = _snapshot(tmp_path)
    for target in (cls, tmp_path / "." / "cls.csv", Path(str(cls) + ".json")):
        if target.name.endswith(".json"):
            # the metadata beside the model would be the data file
            data = tmp_path / "m.npz.json"
            data.write_bytes(cls.read_bytes())
            before = _snapshot(tmp_path)
            argv = ["train", str(data), "--target", "label", "--save", str(tmp_path / "m.npz")]
        else:
            argv = ["train", str(cls), "--target", "label", "--save", str(target)]
        rc, out, err = run(capsys, *argv, "--no-progress")
        assert_usage_error(rc, out, err, "--save", "is an input file", "refusing to overwrite")
        assert "Training" not in out
        assert _snapshot(tmp_path) == before


def test_train_ctrl_c_ends_the_command_and_saves_nothing(capsys, tmp_path, csv_files,
                                                         monkeypatch):
    """Ctrl-C during training: status 130, no report, and --save's file (here an earlier
    model) left as it was -- not replaced by the partly trained model fit returns."""
    import warnings

    cls = csv_files[0]
    model_path = tmp_path / "m.npz"
    model_path.write_bytes(b"an earlier model")
    _press_ctrl_c_in_fits(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = run(capsys, "train", str(cls), "--target", "label", "--epochs",
                           "1000000", "--save", str(model_path), "--no-progress")
    assert rc == 130
    assert "accuracy" not in out and "Saved" not in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("fastbp: interrupted after ") and "nothing saved" in last, err
    assert not [w for w in caught if "interrupted" in str(w.message)]
    assert model_path.read_bytes() == b"an earlier model"
    assert not Path(str(model_path) + ".json").exists()


def test_predict_refuses_to_write_over_its_inputs(capsys, tmp_path, trained):
    cls, model_path = trained
    link = tmp_path / "link.csv"
    link.symlink_to(cls)
    hard = tmp_path / "hard.npz"
    os.link(model_path, hard)
    before = _snapshot(tmp_path)
    for out_path in (cls, model_path, Path(str(model_path) + ".json"), link, hard):
        rc, out, err = run(capsys, "predict", str(model_path), str(cls), "--out", str(out_path))
        assert_usage_error(rc, out, err, f"--out {out_path}", "is an input file")
        assert _snapshot(tmp_path) == before
    # the same file by another spelling of its path
    rc, out, err = run(capsys, "predict", str(model_path), str(cls), "--out",
                       str(tmp_path / ".." / tmp_path.name / "cls.csv"))
    assert_usage_error(rc, out, err, "is an input file")
    assert _snapshot(tmp_path) == before


def test_outputs_in_a_missing_folder_fail_before_any_work(capsys, tmp_path, trained, monkeypatch):
    cls, model_path = trained
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "train", "cls.csv", "--target", "label", "--save",
                       "nodir/model.npz", "--no-progress")
    assert_usage_error(rc, out, err, "folder 'nodir' does not exist (saving 'nodir/model.npz')")
    assert out == "" and ".tmp" not in err
    rc, out, err = run(capsys, "predict", "m.npz", "cls.csv", "--out", "nodir/p.csv")
    assert_usage_error(rc, out, err, "folder 'nodir' does not exist (saving 'nodir/p.csv')")
    # a path through the missing folder fails too, before training, as the OS would
    rc, out, err = run(capsys, "train", "cls.csv", "--target", "label", "--save",
                       "nodir/../m2.npz", "--no-progress")
    assert_usage_error(rc, out, err, "folder 'nodir/..' does not exist")
    assert out == "" and not (tmp_path / "m2.npz").exists()
    (tmp_path / "adir").mkdir()
    rc, out, err = run(capsys, "predict", "m.npz", "cls.csv", "--out", "adir")
    assert_usage_error(rc, out, err, "'adir' is a folder")
    assert not (tmp_path / "nodir").exists()


def test_demo_refuses_a_figure_over_its_data(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    data = tmp_path / "admissions_loss.png"
    data.write_bytes(ADMISSIONS.read_bytes())
    rc, out, err = run(capsys, "demo", "admissions", "--data", str(data), "--plot", str(tmp_path),
                       "--no-progress")
    assert_usage_error(rc, out, err, "--plot figure", "is an input file")
    assert data.read_bytes() == ADMISSIONS.read_bytes()
    (tmp_path / "f").write_text("x")
    assert_usage_error(*run(capsys, "demo", "xor", "--plot", str(tmp_path / "f")), "not a folder")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_outputs_that_are_pipes_are_refused_not_replaced(capsys, tmp_path, trained):
    """Every output is written whole by renaming a new file over its path: a named pipe
    (or a device, /dev/null, /dev/stdout) there would be replaced by a file, its reader
    getting nothing, so it is refused before any work and stays a pipe."""
    import stat

    cls, model_path = trained
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for argv in (["predict", str(model_path), str(cls), "--out", str(pipe)],
                 ["train", str(cls), "--target", "label", "--save", str(pipe),
                  "--no-progress"]):
        rc, out, err = run(capsys, *argv)
        assert_usage_error(rc, out, err, "is not a regular file")
        assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    with pytest.raises(FileExistsError, match="is not a regular file"):
        fastbp.load(str(model_path)).save(str(pipe))
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)


@pytest.mark.parametrize("argv", [
    ["demo", "xor", "--plot", ""], ["train", "{cls}", "--target", "label", "--save", ""],
    ["predict", "{model}", "{cls}", "--out", ""], ["export", "{model}", " "],
])
def test_an_empty_output_path_is_a_usage_error(capsys, tmp_path, trained, argv):
    """Not silently "no output" (an unset shell variable in --save "$MODEL")."""
    cls, model_path = trained
    before = _snapshot(tmp_path)
    argv = [a.format(cls=cls, model=model_path) for a in argv]
    rc, out, err = run(capsys, *argv)
    assert_usage_error(rc, out, err, "expected a path")
    assert out == "" and _snapshot(tmp_path) == before


def test_layers_too_large_for_memory_are_one_line(capsys, csv_files):
    cls = csv_files[0]
    assert_usage_error(*run(capsys, "train", str(cls), "--target", "label", "--layers",
                            "99999999999999999999"), "more than any memory can hold")
    assert_usage_error(*run(capsys, "train", str(cls), "--target", "label", "--layers",
                            "10000000,10000000", "--no-progress"), "not enough memory")


@pytest.mark.parametrize("edit, fragment", [
    (dict(std=[0.0, 1.0, 1.0]), "'std' > 0"),
    (dict(mean=[float("inf"), 0.0, 0.0]), "finite"),
    (dict(features="abc"), "'features' must be a list"),
    (dict(features=["a", "a", "c"]), "names a column twice"),
    (dict(classification=1), "'classification' must be true or false"),
    (dict(classification=True, classes=[0, 1]),  # on a regression model's identity output
     "output layer is 'identity', not sigmoid or softmax"),
])
def test_predict_refuses_edited_metadata_naming_the_file(capsys, tmp_path, csv_files, edit,
                                                         fragment):
    import json

    reg = csv_files[1]
    model_path = tmp_path / "r.npz"
    assert run(capsys, "train", str(reg), "--target", "y", "--epochs", "3", "--save",
               str(model_path), "--no-progress")[0] == 0
    meta_path = Path(str(model_path) + ".json")
    meta = json.loads(meta_path.read_text())
    if "features" in edit and not isinstance(edit["features"], str):
        edit = dict(features=[meta["features"][0]] * 2 + meta["features"][2:])
    meta.update(edit)
    meta_path.write_text(json.dumps(meta))
    rc, out, err = run(capsys, "predict", str(model_path), str(reg))
    assert_usage_error(rc, out, err, f"{meta_path}: not a valid fastbp train metadata file",
                       fragment)
    assert "Warning" not in err


def test_predict_to_a_closed_stdout_says_so(capsys, trained, monkeypatch):
    cls, model_path = trained
    monkeypatch.setattr(sys, "stdout", None)
    rc = main(["predict", str(model_path), str(cls)])
    err = capsys.readouterr().err
    assert rc == 2 and "stdout is closed: give --out" in err


def test_demo_plots_replace_a_link_not_the_file_it_points_to(capsys, tmp_path):
    """Figures are written as every output is: whole, renamed over the path, so a link
    there is replaced and the file it pointed to is left alone."""
    pytest.importorskip("matplotlib")
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    figures = tmp_path / "figs"
    figures.mkdir()
    (figures / "xor_loss.png").symlink_to(precious)
    rc, out, err = run(capsys, "demo", "xor", "--epochs", "10", "--no-progress", "--plot",
                       str(figures))
    assert rc == 0, err
    assert precious.read_text() == "keep me"
    png = figures / "xor_loss.png"
    assert not png.is_symlink() and png.read_bytes().startswith(b"\x89PNG")
    assert not [p for p in figures.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ as a program


def test_python_dash_m_fastbp_demo_xor():
    proc = subprocess.run([sys.executable, "-m", "fastbp", "demo", "xor", "--epochs", "2000"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2].startswith("Initial hidden weights 01: [")
    assert sum(bool(EPOCH_LINE.match(l)) for l in lines) == 18
    assert "(100, 1)" not in proc.stdout
    assert any(l.startswith("Final output biases: [") for l in lines)
    assert re.search(r"^Training: 2,000 epochs in [\d.]+ s \([\d,]+ epochs/s\)$", proc.stdout, re.M)
    assert "Traceback" not in proc.stderr


def test_numeric_labels_are_classes_by_value_text_labels_as_written(tmp_path, capsys):
    rng = np.random.default_rng(4)
    rows = ["a,b,target"]
    labels = ["007", "7", "7.0", "12"] * 10
    for label in labels:
        rows.append(f"{rng.normal():.4f},{rng.normal():.4f},{label}")
    data = tmp_path / "codes.csv"
    data.write_text("\n".join(rows) + "\n")
    model = tmp_path / "m.npz"
    rc, out, _ = run(capsys, "train", str(data), "--target", "target", "--task", "classify",
                     "--epochs", "5", "--save", str(model), "--no-progress")
    assert rc == 0 and "2 classes: 7, 12" in out
    rc, out, _ = run(capsys, "predict", str(model), str(data))
    assert rc == 0
    assert {line.split(",")[0] for line in out.splitlines()[1:]} <= {"7", "12"}
    text = tmp_path / "text.csv"
    names = ["007", "x7", "seven"]
    text.write_text("\n".join(["a,b,target"] + [f"{i % 3},{i % 5},{names[i % 3]}"
                                                  for i in range(30)]) + "\n")
    rc, out, _ = run(capsys, "train", str(text), "--target", "target", "--task", "classify",
                     "--epochs", "5", "--save", str(model), "--no-progress")
    assert rc == 0 and "3 classes: 007, seven, x7" in out
    rc, out, _ = run(capsys, "predict", str(model), str(text))
    assert {line.split(",")[0] for line in out.splitlines()[1:]} <= {"007", "seven", "x7"}
