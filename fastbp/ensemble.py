"""Many small models trained at once, one row of a 2-D parameter array each."""
import os
import time
import warnings

import numba
import numpy as np

from . import _validation as V
from . import kernels as K
from ._chunks import first_chunk, next_chunk, sigint_deferred, warn_interrupted
from ._init import initial_params
from ._progress import make_bar
from .history import History
from .model import MLP


def model_seeds(seed, n_models):
    """Per-model integer seeds derived from one ensemble seed (None: fresh entropy)."""
    ss = np.random.SeedSequence(seed)
    return [int(s) for s in ss.generate_state(n_models, np.uint32)]


def _per_model(value, n_models, name, check):
    """A scalar broadcast to n_models, or a length-n_models sequence, each value checked."""
    if np.ndim(value) == 0:
        return [check(value)] * n_models
    values = list(np.asarray(value).tolist()) if isinstance(value, np.ndarray) else list(value)
    if len(values) != n_models:
        raise ValueError(f"{name} has {len(values)} values but the ensemble has "
                         f"{n_models} models; give one value or one per model")
    return [check(v) for v in values]


class Ensemble:
    """``n_models`` independent networks of the same architecture, trained in parallel.

    All parameters live in ``params`` (n_models, n_params), each row laid out exactly as
    ``MLP.params``; ``ensemble[m]`` is an MLP whose parameters are a view of row m.
    Model m starts as ``MLP(sizes, ..., seed=ensemble.seeds[m])`` would, and ``fit``
    trains it exactly as that model's own ``fit`` would: bit-identical parameters,
    whatever ``n_jobs``.

    Parameters are those of MLP, plus ``n_models``; ``init`` may also be a list of one
    init per model (used by ``fastbp.sweep``).
    """

    def __init__(self, sizes, n_models, activation="sigmoid", loss="mse", init="uniform",
                 bias=True, dtype="float64", seed=None):
        n_models = V.check_positive_int(n_models, "n_models")
        self._proto = MLP(sizes, activation, loss, 0.0, bias, dtype)
        self.seed = V.check_seed(seed)
        self.seeds = model_seeds(self.seed, n_models)
        inits = _per_model(init, n_models, "init", V.check_init) \
            if not isinstance(init, str) else [V.check_init(init)] * n_models
        lay = self._proto._layout
        self.params = np.empty((n_models, lay.n_params), dtype=self._proto.dtype)
        self._rng_states = np.empty((n_models, 2), dtype=np.int64)
        for m in range(n_models):
            self.params[m] = initial_params(lay, inits[m], self.seeds[m], self._proto.dtype)
            self._rng_states[m] = K.seed_state(self.seeds[m])
        self.diverged = np.zeros(n_models, dtype=bool)
        self.history = None

    # ---- structure --------------------------------------------------------------------
    @property
    def n_models(self):
        return self.params.shape[0]

    @property
    def sizes(self):
        return self._proto.sizes

    @property
    def activations(self):
        return self._proto.activations

    @property
    def loss_name(self):
        return self._proto.loss_name

    @property
    def dtype(self):
        return self._proto.dtype

    def __len__(self):
        return self.n_models

    def __getitem__(self, m):
        """Model m as an MLP sharing this ensemble's memory (training it trains row m)."""
        m = V.operator_index(m, "model index")
        if not -self.n_models <= m < self.n_models:
            raise IndexError(f"model index {m} out of range for {self.n_models} models")
        m %= self.n_models
        model = MLP.__new__(MLP)
        p = self._proto
        model._configure(p.sizes, list(p.activations), p.loss_name, p.bias, p.dtype)
        model.seed = self.seeds[m]
        model._params = self.params[m]
        model._rng_state = self._rng_states[m]
        return model

    def __repr__(self):
        return (f"Ensemble(n_models={self.n_models}, sizes={list(self.sizes)}, "
                f"activation={list(self.activations)}, loss={self.loss_name!r})")

    # ---- data -------------------------------------------------------------------------
    def _data(self, X, y=None):
        """Feature-major (D, n_in, n) inputs and (D, n_out, n) targets, D = 1 or n_models."""
        p = self._proto
        x = V.as_float_array(X, "X", p.dtype)
        if x.ndim == 3:
            if x.shape[0] != self.n_models:
                raise ValueError(f"3-D X must have one data set per model: first axis "
                                 f"{x.shape[0]}, expected n_models = {self.n_models}")
            xs = [p._inputs(x[m]) for m in range(x.shape[0])]
        elif x.ndim in (1, 2):
            xs = [p._inputs(x)]
        else:
            raise ValueError(f"X must be 2-D (n_samples, n_features), or 3-D (n_models, "
                             f"n_samples, n_features), got shape {x.shape}")
        xt = np.stack(xs)
        if y is None:
            return xt, None
        t = V.as_float_array(y, "y", p.dtype)
        n = xt.shape[2]
        if t.ndim == 3 or (t.ndim == 2 and x.ndim == 3 and p.sizes[-1] == 1
                           and t.shape[0] == self.n_models and t.shape[1] == n):
            if t.shape[0] != self.n_models:
                raise ValueError(f"3-D y must have one target set per model: first axis "
                                 f"{t.shape[0]}, expected n_models = {self.n_models}")
            ys = [p._targets(t[m], n) for m in range(self.n_models)]
        else:
            ys = [p._targets(t, n)]
        yt = np.stack(ys)
        if xt.shape[0] != yt.shape[0]:  # one shared, one per model: broadcast the shared one
            d = max(xt.shape[0], yt.shape[0])
            xt = np.ascontiguousarray(np.broadcast_to(xt, (d,) + xt.shape[1:]))
            yt = np.ascontiguousarray(np.broadcast_to(yt, (d,) + yt.shape[1:]))
        return xt, yt

    def _net(self):
        return self._proto._kernel_net()

    # ---- training -------------------------------------------------------------------------
    def fit(self, X, y, epochs=1, lr=0.01, batch_size=None, shuffle=False, seed=None,
            record_every=1, progress=False, n_jobs=None, on_divergence="warn"):
        """Train every model; returns a History whose ``loss`` is (n_models, n_records).

        X, y: shared by all models (2-D / 1-D), or one set per model (3-D, first axis
        n_models: bootstrap samples, cross-validation folds).  lr, batch_size and seed may
        be one value or one per model.  n_jobs: threads (default: all cores); results do
        not depend on it.  A model whose training diverges stops with its last finite
        parameters and is marked in ``self.diverged`` (on_divergence="raise" raises
        DivergenceError instead, after all models ran).
        """
        from .errors import DivergenceError
        p = self._proto
        xt, yt = self._data(X, y)
        n = xt.shape[2]
        epochs = V.check_positive_int(epochs, "epochs")
        lrs = np.array(_per_model(lr, self.n_models, "lr", V.check_lr), dtype=np.float64)
        batches = np.array(_per_model(batch_size, self.n_models, "batch_size",
                                      lambda b: V.check_batch_size(b, n)), dtype=np.int64)
        record_every = V.check_positive_int(record_every, "record_every")
        if on_divergence not in ("raise", "warn"):
            raise ValueError(f"on_divergence must be 'raise' or 'warn', got {on_divergence!r}")
        if seed is not None:
            seeds = _per_model(seed, self.n_models, "seed", V.check_seed)
            for m, s in enumerate(seeds):
                self._rng_states[m] = K.seed_state(s)
        threads = self._threads(n_jobs)
        n_rec = -(-epochs // record_every)
        history = np.full((self.n_models, n_rec), np.nan)
        done_per_model = np.zeros(self.n_models, dtype=np.int64)
        active = np.ones(self.n_models, dtype=np.int64)
        results = np.zeros((self.n_models, 2), dtype=np.int64)
        sizes, w_off, b_off, codes = self._net()
        bar = make_bar(epochs, "ensemble") if progress else None
        done, stopped = 0, None
        work = 3 * n * p._layout.n_params * self.n_models / threads
        chunk = first_chunk(epochs, work)
        previous_threads = numba.get_num_threads()
        numba.set_num_threads(threads)
        t_start = time.perf_counter()
        try:
            with sigint_deferred() as interrupted:
                while done < epochs and active.any():
                    t0 = time.perf_counter()
                    K.train_many(self.params, sizes, w_off, b_off, codes, p._loss_code, xt, yt,
                                 chunk, lrs, batches, bool(shuffle), self._rng_states, active,
                                 done, record_every, history, True, p.loss_name == "bce",
                                 results, K.BLAS_MIN_WORK)
                    seconds = time.perf_counter() - t0
                    bad = results[:, 1] >= 0
                    done_per_model += np.where(active == 1, results[:, 0], 0)
                    for m in np.flatnonzero(bad & (active == 1)):
                        history[m, results[m, 1] // record_every + 1:] = np.nan
                    self.diverged |= bad & (active == 1)
                    active[bad] = 0
                    done += chunk
                    if bar is not None:
                        bar.update(chunk, float(np.nanmean(history[:, (done - 1) // record_every])))
                    if interrupted[0]:
                        stopped = "interrupted"
                        break
                    chunk = next_chunk(chunk, seconds, epochs - done)
        finally:
            numba.set_num_threads(previous_threads)
            if bar is not None:
                bar.close()
        done = min(done, epochs)
        n_kept = -(-done // record_every)
        hist = History(loss=history[:, :n_kept].copy(), epochs=done, record_every=record_every,
                       seconds=time.perf_counter() - t_start, stopped=stopped,
                       extra={"epochs_per_model": done_per_model})
        self.history = hist
        if stopped == "interrupted":
            warn_interrupted(done, epochs)
        if self.diverged.any():
            idx = np.flatnonzero(self.diverged)
            msg = (f"{idx.size} of {self.n_models} models diverged (non-finite loss or "
                   f"parameters): models {idx[:10].tolist()}{' ...' if idx.size > 10 else ''}; "
                   f"they keep their last finite parameters. Try smaller learning rates.")
            if on_divergence == "raise":
                raise DivergenceError(msg, history=hist)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return hist

    @staticmethod
    def _threads(n_jobs):
        cores = numba.config.NUMBA_NUM_THREADS
        if n_jobs is None or n_jobs == -1:
            return cores
        n_jobs = V.check_positive_int(n_jobs, "n_jobs")
        return min(n_jobs, cores)

    # ---- evaluation ---------------------------------------------------------------------
    def predict(self, X, n_jobs=None):
        """Outputs of every model, shape (n_models, n_samples, n_out)."""
        xt, _ = self._data(X)
        n = xt.shape[2]
        out = np.empty((self.n_models, self.sizes[-1], n), dtype=self.dtype)
        previous = numba.get_num_threads()
        numba.set_num_threads(self._threads(n_jobs))
        try:
            K.predict_many(self.params, *self._net(), xt, out, min(n, 4096), K.BLAS_MIN_WORK)
        finally:
            numba.set_num_threads(previous)
        return np.ascontiguousarray(out.transpose(0, 2, 1))

    def predict_mean(self, X, n_jobs=None):
        """The ensemble's average output, shape (n_samples, n_out)."""
        return self.predict(X, n_jobs).mean(axis=0)

    def loss(self, X, y):
        """Each model's loss on (X, y) (shared or per-model 3-D data): (n_models,) array."""
        xt, yt = self._data(X, y)
        out = np.empty(self.n_models)
        for m in range(self.n_models):
            d = m if xt.shape[0] > 1 else 0
            out[m] = self[m].loss(xt[d].T, yt[d].T)
        return out

    def best(self, k=1, X=None, y=None):
        """Indices of the k best models, best first: by loss on (X, y) when given, else by
        the last recorded training loss.  Diverged models come last."""
        k = V.check_positive_int(k, "k")
        if X is not None:
            scores = self.loss(X, y)
        elif self.history is not None and self.history.loss.shape[1]:
            scores = np.array([row[~np.isnan(row)][-1] if (~np.isnan(row)).any() else np.inf
                               for row in self.history.loss])
        else:
            raise ValueError("best() needs data (X, y) or a fitted ensemble")
        scores = np.where(self.diverged | ~np.isfinite(scores), np.inf, scores)
        return np.argsort(scores, kind="stable")[:k]
