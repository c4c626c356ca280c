"""Many small models trained at once, one row of a 2-D parameter array each."""
import threading
import warnings

import numpy as np

from . import _config as C
from . import _dispatch as D
from . import _threads as T
from . import _pickling
from . import _validation as V
from ._divergence import NO_WARNINGS, covered, data_bounds, state_in_range
from ._driver import drive, sigint_deferred, warn_interrupted
from ._fit import EVAL_CAP
from ._init import initial_params
from ._many import ManyFit, row_of
from .errors import DivergenceError
from .history import History
from .kernels import loops as L
from .kernels import options as O
from .kernels import passes as PS
from .kernels.rng import seed_state
from .model import MLP


_NO_TARGETS = object()  # Ensemble._data without targets (predict)
# predict shares the models among threads (_threads.each) only when each model's
# outputs are at least this many multiply-adds: XOR nets (28 weights), 2 threads
# against 1, 1000 models on 21 samples 6.6x the time, on 2,000 samples (56,000
# multiply-adds) 1.37x; 100 models on 20,000 samples (560,000) 0.52x.
THREADED_PREDICT_WORK = 2 * 10 ** 5


def model_seeds(seed, n_models):
    """Per-model integer seeds derived from one ensemble seed (None: fresh entropy)."""
    ss = np.random.SeedSequence(seed)
    return [int(s) for s in ss.generate_state(n_models, np.uint32)]


def _per_model(value, n_models, name, check):
    """A scalar broadcast to n_models, or a length-n_models sequence, each value checked."""
    if isinstance(value, (str, bytes)) or np.ndim(value) == 0:
        return [check(value)] * n_models
    values = list(np.asarray(value).tolist()) if isinstance(value, np.ndarray) else list(value)
    if len(values) != n_models:
        raise ValueError(f"{name} has {len(values)} values but the ensemble has "
                         f"{n_models} models; give one value or one per model")
    return [check(v) for v in values]


def _required_seed(seed, name):
    if seed is None:
        raise ValueError(f"{name} must hold integers >= 0, got None")
    return V.check_seed(seed, name)


class Ensemble:
    """``n_models`` independent networks of the same architecture, trained in parallel.

    All parameters live in ``params`` (n_models, n_params), each row laid out exactly as
    ``MLP.params``; ``ensemble[m]`` is an MLP whose parameters are a view of row m.
    Model m starts as ``MLP(sizes, ..., init=ensemble.inits[m], seed=ensemble.seeds[m])``
    would, and ``fit`` trains it exactly as that model's own ``fit`` would: bit-identical
    parameters and history, whatever ``n_jobs``.

    Parameters are those of MLP, plus ``n_models``.  ``init`` may be one init or a list of
    one per model.  ``seed`` derives one seed per model (``ensemble.seeds``); ``seeds``
    gives them explicitly instead (a sequence of n_models integers; used by
    ``fastbp.sweep``).  Each model's seed draws its initial parameters and starts its
    shuffling stream, as MLP's seed does.
    """

    def __init__(self, sizes, n_models, activation="sigmoid", loss="mse", init="uniform",
                 bias=True, dtype="float64", seed=None, seeds=None):
        n_models = V.check_positive_int(n_models, "n_models")
        self._proto = MLP(sizes, activation, loss, 0.0, bias, dtype)
        if seeds is not None:
            if seed is not None:
                raise ValueError("give either seed (one seed for the whole ensemble) or "
                                 "seeds (one per model), not both")
            if isinstance(seeds, (str, bytes)) or np.ndim(seeds) != 1:
                raise ValueError(f"seeds must be a sequence of {n_models} integers "
                                 f"(one per model), got {seeds!r}")
            self.seeds = _per_model(seeds, n_models, "seeds",
                                    lambda s: _required_seed(s, "seeds"))
            self.seed = None
        else:
            self.seed = V.check_seed(seed)
            self.seeds = model_seeds(self.seed, n_models)
        self.inits = _per_model(init, n_models, "init", V.check_init)
        lay = self._proto._layout
        self._params = np.empty((n_models, lay.n_params), dtype=self._proto.dtype)
        self._rng_states = np.empty((n_models, 2), dtype=np.int64)
        for m in range(n_models):
            initial_params(lay, self.inits[m], self.seeds[m], self._proto.dtype,
                           out=self._params[m])
            self._rng_states[m] = seed_state(self.seeds[m])
        self.diverged = np.zeros(n_models, dtype=bool)
        self.history = None
        self._fit_lock = _pickling.FitLock()

    # ---- structure --------------------------------------------------------------------
    @property
    def params(self):
        """The parameters, (n_models, n_params): row m is model m's ``MLP.params`` (a view:
        writing to it changes the ensemble)."""
        return self._params

    @params.setter
    def params(self, value):
        # as MLP.params: the values are copied into the ensemble's own array, whose
        # shape, dtype and layout the kernels rely on (a row shorter than the network's
        # parameters would be read and written past its end)
        value = V.as_float_array(value, "params", self.dtype)
        if value.shape != self._params.shape:
            raise ValueError(f"params must have shape {self._params.shape} (n_models, "
                             f"n_params), got {value.shape}")
        self._params[...] = value

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
    def bias(self):
        return self._proto.bias

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
        # one guard for the shared memory: the member cannot be fitted, pickled or
        # copied while the ensemble fits (nor the ensemble while the member does)
        model._fit_lock = self._fit_lock
        return model

    # ---- copies and pickles (fastbp/_pickling.py, as MLP's) ----------------------------
    _TRANSIENT = ("_fit_lock",)

    def __getstate__(self):
        """All parameter rows, shuffling streams and the last history, copied while no
        fit writes them; RuntimeError if another thread is training this ensemble."""
        return _pickling.snapshot(self)

    def __setstate__(self, state):
        if "params" in state:  # pickled before params became a checked property
            state = dict(state)
            state["_params"] = state.pop("params")
        _pickling.restore(self, state)

    __copy__ = _pickling.independent_copy

    def __repr__(self):
        return (f"Ensemble(n_models={self.n_models}, sizes={list(self.sizes)}, "
                f"activation={list(self.activations)}, loss={self.loss_name!r})")

    # ---- data -------------------------------------------------------------------------
    def _data(self, X, y=_NO_TARGETS):
        """(Dx, n, n_in) inputs and (Dy, n, n_out) targets, C-contiguous in the model
        dtype, each D = 1 (shared) or n_models: shared inputs stay one copy when the
        targets are per model (model m reads x[row_of(x, m)], y[row_of(y, m)]).

        X: (n, n_in) shared, or (n_models, n, n_in) one set per model.  y: (n, n_out) or
        (n,) shared -- with cross_entropy also (n,) integer or boolean class labels --, or
        (n_models, n, n_out) -- or (n_models, n) for one output -- per model.
        """
        p = self._proto
        n_models, n_in, k = self.n_models, p.sizes[0], p.sizes[-1]
        x = V.as_float_array(X, "X", p.dtype)
        if x.ndim == 3:
            if x.shape[0] != n_models:
                raise ValueError(f"3-D X must have one data set per model: first axis "
                                 f"{x.shape[0]}, expected n_models = {n_models}")
            # (x's values were checked above: each set's shape here, not its values again)
            xs = [V.check_X(x[m], n_in, p.dtype, f"X[{m}]", check_finite=False)
                  for m in range(n_models)]
        elif x.ndim in (1, 2):
            xs = [V.check_X(x, n_in, p.dtype, check_finite=False)]
        else:
            raise ValueError(f"X must be 2-D (n_samples, {n_in}), or 3-D (n_models, "
                             f"n_samples, {n_in}) with one data set per model, got shape "
                             f"{x.shape}")
        xt = np.ascontiguousarray(np.stack(xs))
        if y is _NO_TARGETS:  # predict: inputs only (y=None is refused below, as MLP's)
            return xt, None
        n = xt.shape[1]
        if p.loss_name == "cross_entropy":  # shared class labels, as MLP.fit takes them
            onehot = V.class_labels_to_onehot(y, k)
            if onehot is not None:
                y = onehot
        t = V.as_float_array(y, "y", p.dtype)
        # (n_models, n) is per-model targets of a one-output net; it can only be confused
        # with a shared (n, 1) when n_models == n == 1, where both mean the same.
        per_model = t.ndim == 3 or (t.ndim == 2 and k == 1 and t.shape == (n_models, n)
                                    and t.shape != (n, 1))
        if per_model:
            if t.shape[0] != n_models:
                raise ValueError(f"3-D y must have one target set per model: first axis "
                                 f"{t.shape[0]}, expected n_models = {n_models}")
            ts = [V.check_y(t[m], n, k, p.dtype, f"y[{m}]", check_finite=False)
                  for m in range(n_models)]
            names = [f"y[{m}]" for m in range(n_models)]
        else:
            if t.ndim > 2:
                raise ValueError(f"y must be 1-D or 2-D (n_samples, {k}), or 3-D "
                                 f"(n_models, n_samples, {k}), got shape {t.shape}")
            if t.ndim == 2 and t.shape[0] == n_models != n:
                raise ValueError(f"y has shape {t.shape}: per-model targets must be "
                                 f"(n_models, n_samples, {k}) = ({n_models}, {n}, {k})"
                                 + (f" or ({n_models}, {n})" if k == 1 else "")
                                 + f"; shared targets ({n}, {k})")
            ts = [V.check_y(t, n, k, p.dtype, check_finite=False)]
            names = ["y"]
        for a, name in zip(ts, names):
            V.check_targets_for_loss(a, p.loss_name, name)
        yt = np.ascontiguousarray(np.stack(ts))
        return xt, yt

    # ---- training -------------------------------------------------------------------------
    @_pickling.exclusive
    def fit(self, X, y, epochs=1, lr=0.01, batch_size=None, shuffle=False, seed=None,
            record_every=1, progress=False, n_jobs=None, on_divergence="warn", device="cpu"):
        """Train every model; returns a History whose ``loss`` is (n_models, n_records).

        X, y: shared by all models (2-D / 1-D), or one set per model (3-D, first axis
        n_models: bootstrap samples, cross-validation folds).  lr, batch_size, shuffle and
        seed may be one value or one per model; the rest means what it means for
        ``MLP.fit``.  n_jobs: threads (default, or -1: all cores); results do not depend
        on it.  A model whose training diverges (a NaN or infinite loss or parameter) ends
        exactly as ``MLP.fit(..., on_divergence="warn")`` leaves it (finite parameters,
        history cut there) and is marked in ``self.diverged`` (which describes the last
        fit); the others train on.
        on_divergence: "warn" (default), "ignore", or "raise" (DivergenceError, raised
        after all models ran).

        History: ``loss`` (n_models, ceil(epochs / record_every)) -- the records of
        ``history.epochs`` epochs when the fit ends early (Ctrl-C, or every model
        diverged) --: row m is model m's own ``MLP.fit`` history, NaN-padded after a
        divergence; ``extra["epochs_per_model"]``
        the epochs each model's parameters contain; ``extra["diverged_epoch"]`` the epoch
        where each model's loss or parameters became non-finite (-1: never);
        ``epochs`` the most epochs any model ran.

        device: "cpu", or "cuda" to train on an NVIDIA GPU, one thread per model (needs
        ``pip install "fastbp[cuda]"``; same results to rounding; see fastbp/_cuda.py).
        """
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        progress = V.check_flag(progress, "progress")
        if device == "cuda":
            from ._cuda import fit_cuda
            return fit_cuda(self, X, y, epochs, lr, batch_size, shuffle, seed, record_every,
                            progress=progress, on_divergence=on_divergence)
        with sigint_deferred() as interrupted:  # Ctrl-C from here on: the History so far
            xt, yt = self._data(X, y)
            n = xt.shape[1]
            n_models = self.n_models
            epochs = V.check_positive_int(epochs, "epochs")
            lrs = np.array(_per_model(lr, n_models, "lr", lambda v: C.check_lr_in_dtype(
                V.check_lr(v), self.dtype)), dtype=np.float64)
            batches = np.array(_per_model(batch_size, n_models, "batch_size",
                                          lambda b: V.check_batch_size(b, n)), dtype=np.int64)
            shuffles = np.array(_per_model(shuffle, n_models, "shuffle", _check_shuffle),
                                dtype=bool)
            record_every = V.check_positive_int(record_every, "record_every")
            if on_divergence not in ("raise", "warn", "ignore"):
                raise ValueError(f"on_divergence must be 'raise', 'warn' or 'ignore', "
                                 f"got {on_divergence!r}")
            seeds = None if seed is None else _per_model(seed, n_models, "seed", V.check_seed)
            threads = self._threads(n_jobs)
            if not self.params.flags.writeable:
                raise ValueError("the ensemble's parameters are read-only (params.flags."
                                 "writeable is False); train a copy: copy.deepcopy(ensemble)")
            bad_rows = np.flatnonzero(~np.isfinite(self.params).all(axis=1))
            if bad_rows.size:
                raise ValueError(f"the parameters of models {bad_rows[:10].tolist()} contain NaN "
                                 f"or infinity (written through params?); set finite values "
                                 f"before training")
            if seeds is not None:
                for m, s in enumerate(seeds):
                    if s is not None:
                        self._rng_states[m] = seed_state(s)
            start = (self.params.copy(), self._rng_states.copy())  # for _rerun_alone
            job = ManyFit(self, xt, yt, epochs, lrs, batches, shuffles, record_every, threads)
            outcome = drive(job, interrupted, progress, desc="ensemble")
        return self._finish(job, outcome, start, xt, yt, lrs, batches, shuffles,
                            on_divergence, device="cpu")

    def _finish(self, job, outcome, start, xt, yt, lrs, batches, shuffles, on_divergence,
                device):
        """The History of a fit on either device, and its diverged models: on the CPU each
        is trained again alone by MLP.fit (see _rerun_alone); the GPU kernel replays a
        diverged model's good epochs itself, and its history ends with them.  On either
        device the state each model ends in is checked (_check_final_losses), and on the
        GPU the state its guard put back (whose own loss, with a full batch, may overflow:
        MLP.fit's rewind goes further back); a model whose loss is not finite there is
        trained again alone by MLP.fit, on the CPU."""
        stopped = outcome.stopped
        guard_found = job.bad_epoch >= 0
        self._check_final_losses(job, xt, yt, batches, stopped == "interrupted")
        self.diverged = job.bad_epoch >= 0
        rerun = self.diverged.copy()
        if device != "cpu":
            rerun &= ~guard_found
            rerun[self._not_finite(np.flatnonzero(guard_found), xt, yt, batches)] = True
        records = job.records
        history, _ = records.view()
        done_per_model = job.done_per_model
        # an interrupted fit's reruns stop where it stopped: MLP.fit stopped there checks
        # the state it ends in as a completed fit of that many epochs does
        rerun_epochs = job.done if stopped == "interrupted" else job.epochs
        for m in np.flatnonzero(self.diverged):
            if rerun[m]:
                # (after a GPU fit the CPU's rounding may diverge elsewhere, or not at all)
                done_per_model[m], job.bad_epoch[m] = self._rerun_alone(
                    m, start, xt, yt, history[m], rerun_epochs, lrs[m], batches[m],
                    shuffles[m], job.record_every, records.stride)
                self.diverged[m] = job.bad_epoch[m] >= 0
            else:
                bad = records.kept_of(-(-done_per_model[m] // job.record_every))
                history[m, bad:] = np.nan
        # the records of the epochs the models ran: a fit interrupted, or whose models all
        # diverged, ends early, and columns after it would be NaN for every model (the
        # distributed sweep cuts them too: the same History as the local one)
        ran = int(done_per_model.max())
        history = history[:, :records.kept_of(-(-ran // job.record_every))]
        extra = {"epochs_per_model": done_per_model, "diverged_epoch": job.bad_epoch}
        if device != "cpu":
            extra["device"] = device
        hist = History(loss=history, epochs=int(done_per_model.max()),
                       record_every=job.record_every, seconds=outcome.seconds,
                       stopped=stopped, extra=extra,
                       compile_seconds=outcome.compile_seconds,
                       kernel=getattr(job, "kernel_name", None), stride=job.records.stride)
        self.history = hist
        if stopped == "interrupted":
            warn_interrupted(job.done, job.epochs, stacklevel=4)
        report_divergence(self.diverged, on_divergence, hist, stacklevel=4)
        return hist

    def _check_final_losses(self, job, xt, yt, batches, interrupted=False):
        """What MLP.fit checks at the end of a run (fastbp/_fit.py: SingleFit._ends_finite,
        ends_early): each model that ran all its epochs -- or, ``interrupted``, all the
        fit ran -- with its guard quiet has the loss after its last epoch proved finite
        by the bound, or evaluated.  One whose is not finite is marked diverged at that
        epoch count, and so trained again alone by MLP.fit, which ends it as it ends
        that divergence."""
        last = job.done if interrupted else job.epochs
        ended = np.flatnonzero((job.bad_epoch < 0) & (job.done_per_model == last)
                               & (job.done_per_model > 0))
        job.bad_epoch[self._not_finite(ended, xt, yt, batches)] = last

    def _not_finite(self, models, xt, yt, batches):
        """Those of ``models`` whose loss on their data at their current parameters is not
        finite: proved finite by the bound of MLP.fit's end-of-run check (state_in_range)
        where it can, else evaluated."""
        proto = self._proto
        # (data row, targets row) -> the bounds of that data; None: the bound cannot tell
        data = {} if covered(proto, one_state=True) else None
        empty = np.zeros(0, dtype=proto.dtype)
        found = []
        for m in models:
            x, y, batch = xt[row_of(xt, m)], yt[row_of(yt, m)], int(batches[m])
            if data is not None:
                key = (row_of(xt, m), row_of(yt, m))
                with np.errstate(**NO_WARNINGS):
                    if key not in data:
                        data[key] = data_bounds(x, y, empty)
                    proved = state_in_range(proto._layout, proto._act_codes,
                                            proto._loss_code, proto.dtype, self.params[m],
                                            *data[key], min(batch, y.shape[0]))
                if proved:
                    continue
            if not self[m]._finite_loss(x, y, empty):
                found.append(m)
        return np.array(found, dtype=np.int64)

    def _rerun_alone(self, m, start, xt, yt, history_row, epochs, lr, batch, shuffle,
                     record_every, stride):
        """Model m diverged: train it again from its state at the start of the fit with
        ``MLP.fit`` itself, so that it ends exactly where MLP.fit leaves a diverged model
        (which parameters it keeps, its history, its shuffling stream) -- MLP.fit does
        more than the kernel's guard there.  The rerun stops at the same divergence, so
        it costs no more than the model's share of the fit.  Returns the epochs kept and
        the epoch of the divergence (-1: none; after a CPU fit, always the fit's: the
        same bits)."""
        self.params[m] = start[0][m]
        self._rng_states[m] = start[1][m]
        member = self[m]
        # this thread's ensemble fit holds the shared guard: the rerun gets its own
        member._fit_lock = _pickling.FitLock()
        bad = -1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:  # (a DivergenceError leaves the model as on_divergence="warn" does)
                h = member.fit(xt[row_of(xt, m)], yt[row_of(yt, m)], epochs=epochs,
                               lr=float(lr), batch_size=int(batch), shuffle=bool(shuffle),
                               record_every=record_every)
            except DivergenceError as e:
                h, bad = e.history, e.epoch
        # the rerun's records at this fit's recorded epochs: a long fit keeps every
        # stride-th record, and the rerun, no longer, thins no more (strides are powers
        # of two), so this fit keeps every (stride / h.stride)-th of the rerun's records
        kept = h.loss[::stride // h.stride][:history_row.shape[0]]
        history_row[:] = np.nan
        history_row[:kept.shape[0]] = kept
        return h.epochs, bad

    @staticmethod
    def _threads(n_jobs):
        return T.resolve(n_jobs)

    # ---- evaluation ---------------------------------------------------------------------
    def predict(self, X, n_jobs=None):
        """Outputs of every model, shape (n_models, n_samples, n_out), in the model dtype.

        X: (n, n_in) shared, or (n_models, n, n_in) one set per model.  Raises
        FloatingPointError, naming a model, if an output overflows the model dtype (as
        MLP.predict does)."""
        xt, _ = self._data(X)
        n = xt.shape[1]
        p = self._proto
        lay = p._layout
        out = np.empty((self.n_models, n, self.sizes[-1]), dtype=self.dtype)
        cap = min(n, EVAL_CAP)
        generated = D.predictor(p, cap, n * self.n_models)
        if generated is not None:  # the same numbers, for small networks (MLP.predict's)
            entry, key = generated

            def one(m):
                entry(self.params[m], xt[row_of(xt, m)], out[m])
        else:
            plain_net, = O.plain(p._net(cap))
            passes = p._eval_passes(PS.PREDICT, (cap, n % cap), False)
            local = threading.local()
            key = D.general_predict_key(self.dtype)

            def one(m):
                work = getattr(local, "work", None)
                if work is None:
                    work = local.work = O.plain(O.make_work(lay.sizes_arr, 0, cap, 0,
                                                            self.dtype, False, passes=passes))[0]
                L.predict(self.params[m], plain_net, xt[row_of(xt, m)], out[m], work)

        # a model's outputs are n * (its weights) multiply-adds
        T.each(one, range(self.n_models), self._threads(n_jobs),
               n * sum(a * b for a, b in lay.shapes), THREADED_PREDICT_WORK)
        D.mark_compiled(key)
        if not np.isfinite(out).all():  # refused, as MLP.predict refuses it
            bad = np.flatnonzero(~np.isfinite(out.reshape(self.n_models, -1)).all(axis=1))
            V.check_finite_output(out, f"predict's output of model {bad[0]}"
                                  + (f" (and {bad.shape[0] - 1} more)" if bad.shape[0] > 1
                                     else ""), self.dtype)
        return out

    def predict_mean(self, X, n_jobs=None):
        """The ensemble's average output, shape (n_samples, n_out)."""
        return self.predict(X, n_jobs).mean(axis=0)

    def loss(self, X, y):
        """Each model's loss on (X, y) (shared or per-model 3-D data): (n_models,) float64,
        entry m equal to ``ensemble[m].loss`` on model m's data -- or inf (NaN) where that
        loss overflows (is not a number), which ``ensemble[m].loss`` refuses with
        FloatingPointError: one model past its range does not hide the others' losses,
        and best() ranks it last."""
        xt, yt = self._data(X, y)
        out = np.empty(self.n_models)
        # one evaluator (buffers, Net) for every model: made per model it was most of
        # the call (1000 XOR nets: 21.7 ms)
        evaluate = self._proto._loss_evaluator(xt.shape[1])
        no_weights = np.zeros(0, dtype=self.dtype)
        for m in range(self.n_models):
            out[m], _ = evaluate(self.params[m], xt[row_of(xt, m)], yt[row_of(yt, m)],
                                 no_weights)
        return out

    def best(self, k=1, X=None, y=None):
        """Indices of the k best models, best first: by loss on (X, y) when given, else by
        the last recorded training loss.  Diverged models and non-finite losses come last."""
        k = V.check_positive_int(k, "k")
        if (X is None) != (y is None):
            raise ValueError("best() needs both X and y, or neither (then it ranks by the "
                             "last recorded training loss)")
        if X is not None:
            scores = self.loss(X, y)
        elif self.history is not None and self.history.loss.shape[1]:
            scores = np.array([row[~np.isnan(row)][-1] if (~np.isnan(row)).any() else np.inf
                               for row in self.history.loss])
        else:
            raise ValueError("best() needs data (X, y) or a fitted ensemble")
        scores = np.where(self.diverged | ~np.isfinite(scores), np.inf, scores)
        return np.argsort(scores, kind="stable")[:k]


def _check_shuffle(value):
    # MLP.fit's rule (V.check_flag): bools, and the integers 0 and 1 -- not 1.0
    try:
        return V.check_flag(value, "shuffle")
    except TypeError:
        raise TypeError(f"shuffle must be True or False (or one per model), "
                        f"got {value!r}") from None


def report_divergence(diverged, on_divergence, hist, stacklevel):
    """Warn about (or, on_divergence="raise", raise for) the models marked in ``diverged``
    after a fit on either device; "ignore" says nothing."""
    if not diverged.any() or on_divergence == "ignore":
        return
    idx = np.flatnonzero(diverged)
    msg = (f"{idx.size} of {diverged.size} models diverged (non-finite loss or parameters): "
           f"models {idx[:10].tolist()}{' ...' if idx.size > 10 else ''}; they keep their "
           f"last finite parameters. Try smaller learning rates.")
    if on_divergence == "raise":
        raise DivergenceError(msg, history=hist)
    warnings.warn(msg, RuntimeWarning, stacklevel=stacklevel)


