"""fastbp.sweep: a grid of hyper-parameters trained as one Ensemble; every row equal to
an MLP trained alone with those settings; the same sweep split over a dask cluster gives
identical results."""

import sys
import warnings

import numpy as np
import pytest

import fastbp
from fastbp.sweep import GRID_KEYS, expand_grid  # the module, not the function

SIZES = [3, 6, 2]
ARCH = dict(sizes=SIZES, activation=["tanh", "identity"], loss="mse")
NUMBERS = ("final_loss", "best_loss", "best_epoch")


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(24, 3)), rng.normal(size=(24, 2))


def alone(row, X, y, epochs, record_every=1, **arch):
    """The row's settings trained by one MLP."""
    arch = {**ARCH, **arch}
    model = fastbp.MLP(arch["sizes"], activation=arch["activation"], loss=arch["loss"],
                       init=row["init"], seed=row["seed"])
    hist = model.fit(X, y, epochs=epochs, lr=row["lr"], batch_size=row["batch_size"],
                     shuffle=row["shuffle"], record_every=record_every, on_divergence="warn")
    return model, hist


def assert_rows_match_alone(res, X, y, epochs, record_every=1):
    for row in res.rows:
        m = row["model"]
        model, h = alone(row, X, y, epochs, record_every)
        np.testing.assert_array_equal(res.ensemble.params[m], model.params, err_msg=str(row))
        np.testing.assert_array_equal(res.history.loss[m, :len(h.loss)], h.loss)
        assert row["diverged"] == (h.stopped == "diverged")
        if not row["diverged"]:
            assert row["final_loss"] == model.loss(X, y)
            finite = np.where(np.isfinite(h.loss), h.loss, np.inf)
            if finite.min() <= row["final_loss"]:
                assert row["best_loss"] == finite.min()
                assert row["best_epoch"] == int(np.argmin(finite)) * record_every
            else:  # the trained model itself is the best seen
                assert row["best_loss"] == row["final_loss"]
                assert row["best_epoch"] == epochs


# -------------------------------------------------------------------- the grid


def test_expand_grid_dict_and_list_of_dicts():
    pts = expand_grid({"lr": [0.1, 0.2], "seed": [1, 2, 3]})
    assert pts == [{"lr": 0.1, "seed": 1}, {"lr": 0.1, "seed": 2}, {"lr": 0.1, "seed": 3},
                   {"lr": 0.2, "seed": 1}, {"lr": 0.2, "seed": 2}, {"lr": 0.2, "seed": 3}]
    pts = expand_grid([{"init": ["normal"], "lr": np.array([0.1, 0.2])},
                       {"init": "uniform", "batch_size": [None, 4]}])
    assert pts == [{"init": "normal", "lr": 0.1}, {"init": "normal", "lr": 0.2},
                   {"init": "uniform", "batch_size": None},
                   {"init": "uniform", "batch_size": 4}]
    assert expand_grid({}) == [{}]
    assert expand_grid({"shuffle": [False, True], "lr": 0.5}) == [
        {"shuffle": False, "lr": 0.5}, {"shuffle": True, "lr": 0.5}]


@pytest.mark.parametrize("grid, err, match", [
    ({"sizes": [[2, 3, 1]]}, ValueError, "'sizes' cannot be swept .* architecture"),
    ({"momentum": [0.9]}, ValueError, "'momentum' cannot be swept; the keys that can are "
                                      "lr, seed, init, batch_size, shuffle"),
    ({"lr": []}, ValueError, r"param_grid\['lr'\] is empty"),
    ([], ValueError, "empty list"),
    ("lr", TypeError, "param_grid must be a dict"),
    ({"lr": np.ones((2, 2))}, ValueError, "shape"),
])
def test_bad_grids(grid, err, match):
    with pytest.raises(err, match=match):
        expand_grid(grid)


# ------------------------------------------------------------------- local sweep


def test_rows_equal_individual_fits(data):
    X, y = data
    grid = {"lr": [0.01, 0.1, 0.4], "seed": [1, 2], "batch_size": [None, 5],
            "shuffle": [False, True]}
    res = fastbp.sweep(grid, X, y, epochs=30, record_every=4, n_jobs=2, **ARCH)
    assert isinstance(res, fastbp.SweepResult)
    assert len(res) == 24 and res.history.loss.shape == (24, 8)
    assert res.ensemble.n_models == 24
    # the first key varies slowest: point 5 = lr[0], seed[1], batch_size[0], shuffle[1]
    assert res.rows[5] == {**res.rows[5], "model": 5, "lr": 0.01, "seed": 2,
                           "init": "uniform", "batch_size": None, "shuffle": True}
    assert set(res.rows[0]) == {"model", "lr", "seed", "init", "batch_size", "shuffle",
                                "final_loss", "best_loss", "best_epoch", "diverged"}
    assert_rows_match_alone(res, X, y, epochs=30, record_every=4)
    finals = [r["final_loss"] for r in res.rows]
    assert len(set(finals)) >= 12  # the settings really differ (full batch: shuffling
    # only reorders a sum, which may round alike)


def test_defaults_inits_and_list_of_grids(data):
    X, y = data
    grid = [{"lr": [0.05, 0.2]}, {"init": ["normal", 0.1], "seed": [3]}]
    res = fastbp.sweep(grid, X, y, epochs=15, lr=0.02, seed=9, init="xavier",
                       batch_size=6, shuffle=True, **ARCH)
    settings = [(r["lr"], r["seed"], r["init"], r["batch_size"], r["shuffle"])
                for r in res.rows]
    assert settings == [(0.05, 9, "xavier", 6, True), (0.2, 9, "xavier", 6, True),
                        (0.02, 3, "normal", 6, True), (0.02, 3, 0.1, 6, True)]
    assert_rows_match_alone(res, X, y, epochs=15)


def test_seed_none_is_drawn_once_and_reported(data):
    X, y = data
    res = fastbp.sweep({"lr": [0.05, 0.1]}, X, y, epochs=5, **ARCH)
    seeds = {r["seed"] for r in res.rows}
    assert len(seeds) == 1 and isinstance(seeds.pop(), int)
    assert_rows_match_alone(res, X, y, epochs=5)  # reproducible from the rows


def test_diverged_rows_and_best(data):
    X, y = data
    X = 10 * X
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the sweep reports divergence in its rows
        res = fastbp.sweep({"lr": [0.0005, 1e4, 0.001]}, X, y, epochs=40, seed=0,
                           sizes=[3, 6, 2], activation="identity", loss="mse")
    assert [r["diverged"] for r in res.rows] == [False, True, False]
    assert np.isfinite(res.ensemble.params).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for row in res.rows:
            model, h = alone(row, X, y, 40, activation="identity")
            np.testing.assert_array_equal(res.ensemble.params[row["model"]], model.params)
    best = res.best(3)
    assert [r["model"] for r in best] == sorted([0, 2], key=lambda m: res.rows[m][
        "final_loss"]) + [1]
    assert res.best()[0]["final_loss"] == min(res.rows[0]["final_loss"],
                                              res.rows[2]["final_loss"])
    assert [r["model"] for r in res.best(3, by="best_loss")][-1] == 1
    with pytest.raises(ValueError, match="by must be"):
        res.best(by="lr")


def _random_grid(rng, n):
    """A random grid over every sweepable key, and random run settings."""
    grid = {"lr": list(np.round(10.0 ** rng.uniform(-3, 0.5, size=rng.integers(1, 4)), 4)),
            "seed": [int(v) for v in rng.integers(0, 1000, size=rng.integers(1, 3))],
            "init": list(rng.choice(["uniform", "normal", "xavier"], size=rng.integers(1, 3),
                                    replace=False))}
    if rng.random() < 0.5:
        grid["batch_size"] = [None, int(rng.integers(1, n + 1))]
        grid["shuffle"] = [False, True]
    run = dict(epochs=int(rng.integers(3, 40)), record_every=int(rng.integers(1, 6)))
    return grid, run


@pytest.mark.parametrize("case", range(6))
def test_best_loss_never_exceeds_final_loss_on_random_sweeps(case):
    rng = np.random.default_rng(100 + case)
    n = int(rng.integers(4, 20))
    X, y = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    grid, run = _random_grid(rng, n)
    res = fastbp.sweep(grid, X, y, **ARCH, **run)
    every, epochs = run["record_every"], run["epochs"]
    checked_alone = False
    for row in res.rows:
        if row["diverged"]:
            continue
        h = res.history.loss[row["model"]]
        assert row["best_loss"] <= row["final_loss"], row
        # best_epoch says where best_loss was seen: a record, or the end of training
        if row["best_epoch"] == epochs:
            assert row["best_loss"] == row["final_loss"]
        else:
            assert row["best_epoch"] % every == 0 and row["best_epoch"] < epochs
            assert row["best_loss"] == h[row["best_epoch"] // every]
        candidates = np.append(h[np.isfinite(h)], row["final_loss"])
        assert row["best_loss"] == candidates.min()
        if row["batch_size"] is None and not checked_alone:
            # full batch: best_loss is the loss of the parameters after best_epoch epochs
            model = fastbp.MLP(SIZES, activation=ARCH["activation"], loss=ARCH["loss"],
                               init=row["init"], seed=row["seed"])
            if row["best_epoch"]:
                model.fit(X, y, epochs=row["best_epoch"], lr=row["lr"])
            assert model.loss(X, y) == row["best_loss"]
            checked_alone = True


def test_readme_sweep_rows_agree():
    # the README's example, shortened: full batch, the loss still falling at the end, so
    # every row's best is its trained model (before, best_loss was the loss one epoch
    # earlier and exceeded final_loss on 23 of 24 rows)
    X, y = fastbp.datasets.xor_easy()
    res = fastbp.sweep({"lr": [0.01, 0.1, 1.0], "seed": range(4)}, X, y,
                       sizes=[2, 4, 4, 1], loss="sse", epochs=500)
    for row in res.rows:
        assert row["best_loss"] <= row["final_loss"]
        assert (row["best_epoch"] == 500) == (row["best_loss"] == row["final_loss"])
    assert sum(row["best_epoch"] == 500 for row in res.rows) >= 10


def test_to_pandas(data):
    pd = pytest.importorskip("pandas")
    X, y = data
    res = fastbp.sweep({"lr": [0.05, 0.1], "seed": [0, 1]}, X, y, epochs=5, **ARCH)
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 4
    assert list(df.columns) == ["lr", "seed", "init", "batch_size", "shuffle",
                                "final_loss", "best_loss", "best_epoch", "diverged"]
    np.testing.assert_array_equal(df["final_loss"].to_numpy(),
                                  [r["final_loss"] for r in res.rows])
    assert res.dataframe.equals(df)


def test_to_pandas_without_pandas(data, monkeypatch):
    X, y = data
    res = fastbp.sweep({"lr": [0.05]}, X, y, epochs=2, seed=0, **ARCH)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(ImportError, match="needs pandas .* result.rows"):
        res.to_pandas()
    assert res.rows[0]["lr"] == 0.05


def test_bad_sweep_arguments(data):
    X, y = data
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        fastbp.sweep({"lr": [0.1, -1]}, X, y, **ARCH)
    with pytest.raises(ValueError, match="batch_size 50 is larger"):
        fastbp.sweep({"batch_size": [50]}, X, y, **ARCH)
    with pytest.raises(ValueError, match="unknown init"):
        fastbp.sweep({"init": ["zeros"]}, X, y, **ARCH)
    with pytest.raises(ValueError, match="same data"):
        fastbp.sweep({"lr": [0.1]}, np.stack([X, X]), y, **ARCH)
    with pytest.raises(ValueError, match="X has 2 features"):
        fastbp.sweep({"lr": [0.1]}, X[:, :2], y, **ARCH)
    for shape in ((2, 24, 2), (1, 24, 2)):  # one target set per point is not a sweep's
        with pytest.raises(ValueError, match=r"same data: y must be 1-D or 2-D"):
            fastbp.sweep({"lr": [0.1, 0.2]}, X, np.zeros(shape), **ARCH)
    with pytest.raises(ValueError, match="parts .* needs client"):
        fastbp.sweep({"lr": [0.1]}, X, y, parts=2, **ARCH)
    with pytest.raises(TypeError, match="client must be a dask.distributed Client"):
        fastbp.sweep({"lr": [0.1]}, X, y, client=object(), **ARCH)


# -------------------------------------------------------------------------- dask


def test_dask_cluster_gives_identical_results(data):
    distributed = pytest.importorskip("distributed")
    X, y = data
    grid = {"lr": [0.01, 0.1, 0.5], "seed": [1, 2], "batch_size": [None, 4],
            "shuffle": [False, True]}
    kw = dict(epochs=12, record_every=2, **ARCH)
    local = fastbp.sweep(grid, X, y, **kw)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = fastbp.sweep(grid, X, y, client=client, **kw)
        remote5 = fastbp.sweep(grid, X, y, client=client, parts=5, **kw)
    assert remote.history.extra["parts"] == [12, 12]
    assert remote5.history.extra["parts"] == [5, 5, 5, 5, 4]
    for res in (remote, remote5):
        np.testing.assert_array_equal(res.ensemble.params, local.ensemble.params)
        np.testing.assert_array_equal(res.ensemble._rng_states, local.ensemble._rng_states)
        np.testing.assert_array_equal(res.history.loss, local.history.loss)
        for key in NUMBERS + ("diverged",):
            np.testing.assert_array_equal([r[key] for r in res.rows],
                                          [r[key] for r in local.rows], err_msg=key)
        assert [[r[k] for k in GRID_KEYS] for r in res.rows] == \
            [[r[k] for k in GRID_KEYS] for r in local.rows]


def test_dask_sweep_keeps_the_stride_of_thinned_records(data, monkeypatch):
    """A run long enough to thin its records (history.Records) keeps every stride-th:
    the distributed sweep's History said stride 1, so its epochs_recorded and the rows'
    best_epoch were those of the first records, not of the kept ones."""
    distributed = pytest.importorskip("distributed")
    from fastbp import history as H
    monkeypatch.setattr(H, "RECORDS_CAP", 16)  # in-process workers see it too
    X, y = data
    grid = {"lr": [0.02, 0.05, 0.1], "seed": [1, 2]}
    kw = dict(epochs=150, record_every=2, **ARCH)
    local = fastbp.sweep(grid, X, y, **kw)
    assert local.history.stride > 1
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = fastbp.sweep(grid, X, y, client=client, parts=3, **kw)
    assert remote.history.stride == local.history.stride
    assert remote.history.kernel == local.history.kernel
    np.testing.assert_array_equal(remote.history.epochs_recorded,
                                  local.history.epochs_recorded)
    np.testing.assert_array_equal(remote.history.loss, local.history.loss)
    assert remote.rows == local.rows


def test_dask_sweep_keeps_the_records_of_the_whole_sweep(data, monkeypatch):
    """The parts of a distributed sweep hold fewer models, so each keeps more records
    than one Ensemble of all the models (history.records_cap): the sweep keeps the
    whole's, as the local sweep does."""
    distributed = pytest.importorskip("distributed")
    from fastbp import history as H
    monkeypatch.setattr(H, "ENSEMBLE_RECORDS", 96)  # 6 models: 16 each; 2 models: 48
    monkeypatch.setattr(H, "MIN_MODEL_RECORDS", 4)
    X, y = data
    grid = {"lr": [0.02, 0.05, 0.1], "seed": [1, 2]}
    kw = dict(epochs=150, record_every=2, **ARCH)
    local = fastbp.sweep(grid, X, y, **kw)
    assert local.history.stride == H.stride_for(75, 16) == 8
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = fastbp.sweep(grid, X, y, client=client, parts=3, **kw)
    assert remote.history.stride == local.history.stride
    np.testing.assert_array_equal(remote.history.loss, local.history.loss)
    assert remote.rows == local.rows
