"""Hyper-parameter sweeps: every point of a grid is one model of a single Ensemble run.

Only the settings that keep the architecture can be swept (GRID_KEYS); the architecture
(sizes, activation, loss, bias, dtype) and the length of the run (epochs, record_every)
are one value per sweep.  With a dask.distributed ``client`` the grid is cut into parts,
each part an Ensemble trained on a worker; every model is trained exactly as it would be
alone, so the result is identical to the local sweep's.
"""
import itertools
import time
import uuid
from collections.abc import Mapping

import numpy as np

from . import _validation as V
from .ensemble import Ensemble, _check_shuffle
from .history import History, records_cap, stride_for

GRID_KEYS = ("lr", "seed", "init", "batch_size", "shuffle")
_FIXED = ("sizes", "activation", "loss", "bias", "dtype", "epochs", "record_every")


def expand_grid(param_grid):
    """The grid's points, a list of dicts: ``param_grid`` is a dict of lists of values
    (every combination, the first key varying slowest) or a list of such dicts (their
    points one after another), as scikit-learn's ParameterGrid.  A value that is not a
    list, tuple, range or 1-D array is one value."""
    if isinstance(param_grid, Mapping):
        grids = [param_grid]
    elif isinstance(param_grid, (list, tuple)) and all(isinstance(g, Mapping)
                                                        for g in param_grid):
        grids = list(param_grid)
    else:
        raise TypeError(f"param_grid must be a dict of lists (e.g. {{'lr': [0.1, 0.5]}}) or "
                        f"a list of such dicts, got {type(param_grid).__name__}")
    points = []
    for grid in grids:
        keys, values = [], []
        for key, vals in grid.items():
            if key not in GRID_KEYS:
                why = (" (it changes the architecture or the run length: pass it as an "
                       "argument of sweep, one value per sweep)" if key in _FIXED else "")
                raise ValueError(f"param_grid: {key!r} cannot be swept{why}; the keys "
                                 f"that can are {', '.join(GRID_KEYS)}")
            if isinstance(vals, (list, tuple, range)) or (isinstance(vals, np.ndarray)
                                                          and vals.ndim == 1):
                vals = list(vals.tolist() if isinstance(vals, np.ndarray) else vals)
            elif isinstance(vals, np.ndarray) and vals.ndim > 1:
                raise ValueError(f"param_grid[{key!r}] must be a list of values, got an "
                                 f"array of shape {vals.shape}")
            else:
                vals = [vals]
            if not vals:
                raise ValueError(f"param_grid[{key!r}] is empty; give at least one value")
            keys.append(key)
            values.append(vals)
        points.extend(dict(zip(keys, combo)) for combo in itertools.product(*values))
    if not points:
        raise ValueError("param_grid is an empty list: no settings to train")
    return points


def _fresh_seed():
    return int(np.random.SeedSequence().generate_state(1, np.uint32)[0])


def _settings(points, defaults, n_samples):
    """Every point completed with the defaults and checked: one dict per model, holding
    all of GRID_KEYS with plain Python values (seeds drawn now where None)."""
    out = []
    for point in points:
        s = {**defaults, **point}
        lr = V.check_lr(s["lr"])
        seed = _fresh_seed() if s["seed"] is None else V.check_seed(s["seed"])
        init = V.check_init(s["init"])
        b = s["batch_size"]
        V.check_batch_size(b, n_samples)
        out.append({"lr": lr, "seed": seed, "init": init,
                    "batch_size": None if b is None else int(b),
                    "shuffle": _check_shuffle(s["shuffle"])})
    return out


def _columns(settings):
    return {key: [s[key] for s in settings] for key in GRID_KEYS}


def _train(arch, settings, X, y, fit_kw, n_jobs):
    """One Ensemble of these settings, trained: (ensemble, history)."""
    c = _columns(settings)
    ens = Ensemble(n_models=len(settings), init=c["init"], seeds=c["seed"], **arch)
    hist = ens.fit(X, y, lr=c["lr"], batch_size=c["batch_size"], shuffle=c["shuffle"],
                   n_jobs=n_jobs, on_divergence="ignore", **fit_kw)
    return ens, hist


def _run_part(arch, settings, X, y, fit_kw, n_jobs):
    """A part of a distributed sweep, run on a worker: plain arrays back."""
    ens, hist = _train(arch, settings, X, y, fit_kw, n_jobs)
    return {"params": ens.params, "rng_states": ens._rng_states, "loss": hist.loss,
            "epochs_per_model": hist.extra["epochs_per_model"],
            "diverged_epoch": hist.extra["diverged_epoch"], "seconds": hist.seconds,
            "stride": hist.stride, "kernel": hist.kernel}


class SweepResult:
    """What ``fastbp.sweep`` returns.

    rows:      list of dicts, one per grid point (= model ``i`` of ``ensemble``), with:

               - "model": the index ``i``;
               - "lr", "seed", "init", "batch_size", "shuffle": the point's settings;
               - "final_loss": the trained model's loss on the training data
                 (``MLP.loss(X, y)``), i.e. the loss after its last epoch;
               - "best_loss", "best_epoch": the lowest training loss seen, and after
                 how many epochs it was seen. The candidates are the history's records
                 (record ``r`` is epoch ``e = history.epochs_recorded[r]``, which is
                 ``r * record_every`` unless a long run thinned them; full batch: the loss of
                 the parameters after ``e`` epochs, as ``MLP.loss``; SGD and mini-batch:
                 the mean of the batch losses seen during epoch ``e``) and the final
                 loss, at ``best_epoch`` = the number of epochs run. So ``best_loss <=
                 final_loss`` on every row that did not diverge, and ``best_epoch ==
                 epochs`` means the trained model itself is the best. A diverged model's
                 final parameters come from a rewind, not from a known epoch: its best is
                 taken over the finite records only (NaN and -1 when there are none);
               - "diverged": whether the model's training diverged.
    ensemble:  the trained Ensemble (``ensemble[i]`` is grid point i's model).
    history:   History with ``loss`` (n_points, n_records); ``extra["epochs_per_model"]``
               the epochs each model ran.
    """

    def __init__(self, settings, ensemble, history, X, y):
        self.settings = settings
        self.ensemble = ensemble
        self.history = history
        final = ensemble.loss(X, y)
        loss = history.loss
        ran = history.extra.get("epochs_per_model")
        self.rows = []
        for m, s in enumerate(settings):
            h = loss[m]
            finite = np.isfinite(h)
            if finite.any():
                r = int(np.argmin(np.where(finite, h, np.inf)))
                best, best_epoch = float(h[r]), int(history.epochs_recorded[r])
            else:
                best, best_epoch = float("nan"), -1
            diverged = bool(ensemble.diverged[m])
            last = float(final[m])
            # The records end before the last epoch's update (full batch: record r is the
            # state after epochs_recorded[r] epochs), so the trained model's own loss is
            # one more candidate; without it the last epoch's progress would be missing
            # and best_loss could exceed final_loss.
            if not diverged and np.isfinite(last) and not last >= best:
                best = last
                best_epoch = int(ran[m]) if ran is not None else int(history.epochs)
            self.rows.append({"model": m, **s, "final_loss": last,
                              "best_loss": best, "best_epoch": best_epoch,
                              "diverged": diverged})

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __repr__(self):
        return (f"SweepResult({len(self.rows)} settings, "
                f"{int(sum(r['diverged'] for r in self.rows))} diverged)")

    def best(self, k=1, by="final_loss"):
        """The k best rows, best first, by ``by`` ("final_loss" or "best_loss"); diverged
        models and non-finite losses come last."""
        k = V.check_positive_int(k, "k")
        if by not in ("final_loss", "best_loss"):
            raise ValueError(f"by must be 'final_loss' or 'best_loss', got {by!r}")
        scores = np.array([r[by] if np.isfinite(r[by]) and not r["diverged"] else np.inf
                           for r in self.rows])
        return [self.rows[i] for i in np.argsort(scores, kind="stable")[:k]]

    def to_pandas(self):
        """The rows as a pandas DataFrame (one row per grid point, index = model)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("SweepResult.to_pandas() needs pandas (pip install pandas); "
                              "without it the table is in result.rows (a list of dicts)") \
                from None
        return pd.DataFrame(self.rows).set_index("model")

    @property
    def dataframe(self):
        """``to_pandas()``."""
        return self.to_pandas()


def sweep(param_grid, X, y, sizes, activation="sigmoid", loss="mse", epochs=1, lr=0.01,
          batch_size=None, shuffle=False, seed=None, init="uniform", record_every=1,
          bias=True, dtype="float64", n_jobs=None, client=None, parts=None):
    """Train one model per point of ``param_grid``, all in one Ensemble; a SweepResult.

    param_grid: a dict mapping some of "lr", "seed", "init", "batch_size", "shuffle" to
    lists of values -- every combination is trained -- or a list of such dicts (see
    ``expand_grid``).  Settings a point does not give take the values of the arguments of
    the same name.  ``seed`` seeds a model's initial parameters and its shuffling stream,
    as ``MLP(seed=...)``; None (the default) draws one seed for the whole sweep, shown in
    the rows.  Each row is what ``MLP(sizes, activation, loss, init, bias, dtype,
    seed).fit(X, y, epochs, lr, batch_size, shuffle, record_every=record_every)`` gives:
    its settings, "final_loss" (the trained model's training loss), "best_loss" and
    "best_epoch" (the lowest training loss among the records and the final one, and
    when; ``best_loss <= final_loss``) and "diverged" -- see ``SweepResult``.

    X: (n, sizes[0]); y: (n, sizes[-1]) or 1-D; shared by every model.
    n_jobs: threads per ensemble (default: all cores; on a cluster, each worker's threads).
    client: a dask.distributed Client: the grid is cut into ``parts`` (default: one per
    worker), each trained as an Ensemble on a worker; the result is identical to the
    local one.
    """
    points = expand_grid(param_grid)
    arch = dict(sizes=sizes, activation=activation, loss=loss, bias=bias, dtype=dtype)
    if np.ndim(X) > 2:
        raise ValueError(f"sweep trains every model on the same data: X must be 2-D "
                         f"(n_samples, n_features), got shape {np.shape(X)}")
    if np.ndim(y) > 2:
        raise ValueError(f"sweep trains every model on the same data: y must be 1-D or 2-D "
                         f"(n_samples, n_outputs), got shape {np.shape(y)}")
    # validates the architecture and the data before anything is trained or sent
    probe = Ensemble(n_models=1, init=0.0, seed=0, **arch)
    xt, _ = probe._data(X, y)  # (1, n, n_in): sample-major
    X = V.as_float_array(X, "X", probe.dtype)
    y = V.as_float_array(y, "y", probe.dtype)
    fit_kw = dict(epochs=V.check_positive_int(epochs, "epochs"),
                  record_every=V.check_positive_int(record_every, "record_every"))
    if seed is None and not all("seed" in p and p["seed"] is not None for p in points):
        seed = _fresh_seed()
    defaults = dict(lr=lr, seed=seed, init=init, batch_size=batch_size, shuffle=shuffle)
    settings = _settings(points, defaults, xt.shape[1])
    threads = None if n_jobs is None else Ensemble._threads(n_jobs)
    if client is None:
        if parts is not None:
            raise ValueError("parts splits the grid over a dask cluster: it needs client")
        ens, hist = _train(arch, settings, X, y, fit_kw, threads)
    else:
        ens, hist = _distributed(client, parts, arch, settings, X, y, fit_kw, n_jobs)
    return SweepResult(settings, ens, hist, X, y)


def _distributed(client, parts, arch, settings, X, y, fit_kw, n_jobs):
    """Parts of the grid trained on the workers of a dask.distributed client, gathered
    into one Ensemble and History as the local sweep would have made them."""
    if not (hasattr(client, "submit") and hasattr(client, "gather")):
        raise TypeError(f"client must be a dask.distributed Client, got {client!r}")
    workers = sorted(client.nthreads().items())
    if not workers:
        raise ValueError("the dask client has no workers")
    n = len(settings)
    parts = len(workers) if parts is None else V.check_positive_int(parts, "parts")
    pieces = [p for p in np.array_split(np.arange(n), min(parts, n)) if p.size]
    t0 = time.perf_counter()
    # hash=False: fresh keys, so a sweep cannot reuse (and lose) the keys of an earlier
    # sweep's data that the scheduler is still releasing
    X_f, y_f = client.scatter([X, y], broadcast=True, hash=False)
    tag = uuid.uuid4().hex
    futures = []
    for i, idx in enumerate(pieces):
        address, nthreads = workers[i % len(workers)]
        futures.append(client.submit(
            _run_part, arch, [settings[m] for m in idx], X_f, y_f, fit_kw,
            n_jobs if n_jobs is not None else nthreads, key=f"fastbp-sweep-{tag}-{i}",
            workers=[address], allow_other_workers=True, pure=False))
    results = client.gather(futures)
    seconds = time.perf_counter() - t0
    c = _columns(settings)
    ens = Ensemble(n_models=n, init=c["init"], seeds=c["seed"], **arch)
    for idx, r in zip(pieces, results):
        ens.params[idx] = r["params"]
        ens._rng_states[idx] = r["rng_states"]
    cat = {key: np.concatenate([r[key] for r in results])
           for key in ("epochs_per_model", "diverged_epoch")}
    # a long run keeps every stride-th record (history.Records), a part the stride its
    # own number of models allows; the sweep keeps what one Ensemble of all the models
    # keeps: the records of the stride of n models (a part's stride, a power of two as
    # it is, divides it: fewer models keep more records each)
    re = fit_kw["record_every"]
    n_records = -(-int(cat["epochs_per_model"].max()) // re)
    stride = max([stride_for(n_records, records_cap(n))]
                 + [int(r["stride"]) for r in results])
    kept = -(-n_records // stride)
    loss = np.full((n, kept), np.nan)
    for idx, r in zip(pieces, results):
        part = r["loss"][:, ::stride // int(r["stride"])][:, :kept]
        loss[idx, :part.shape[1]] = part  # (a part whose models all diverged stopped early)
    cat["loss"] = loss
    kernels = list(dict.fromkeys(r["kernel"] for r in results if r["kernel"]))
    ens.diverged = cat["diverged_epoch"] >= 0
    hist = History(loss=cat["loss"], epochs=int(cat["epochs_per_model"].max()),
                   record_every=fit_kw["record_every"], seconds=seconds, stride=stride,
                   kernel="; ".join(kernels) or None,
                   extra={"epochs_per_model": cat["epochs_per_model"],
                          "diverged_epoch": cat["diverged_epoch"],
                          "parts": [int(p.size) for p in pieces]})
    ens.history = hist
    return ens, hist
