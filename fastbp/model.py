"""The MLP model object: validation, buffers and reporting around the fused kernels."""
import math
import threading
import time
import warnings

import numpy as np

from . import _validation as V
from . import kernels as K
from .kernels import optim as O
from .kernels import specialize as S
from ._divergence import ChunkBound
from ._chunks import first_chunk, next_chunk, sigint_deferred, warn_interrupted
from . import _config as C
from ._codes import ACTIVATIONS, LOSSES
from ._init import initial_params
from ._layout import Layout
from ._progress import make_bar
from .checkpoint import Run, Saver
from .errors import DivergenceError
from .history import History

# predict / loss / gradient process at most this many samples per kernel batch
_EVAL_CAP = 4096
# (kernel, dtype, kinds of the data arrays) of the training calls made in this process:
# what Numba has compiled or loaded for (see MLP._run)
_KERNELS_RUN = set()


def _array_kind(a):
    """What Numba's type of an array depends on besides its dtype."""
    f = a.flags
    return a.ndim, f.c_contiguous, f.f_contiguous, f.writeable, f.aligned


class MLP:
    """A dense feed-forward network trained by backpropagation.

    Parameters
    ----------
    sizes : sequence of int
        Units per layer, inputs first: [2, 4, 4, 1] is the XOR tutorial's net.
    activation : str or sequence of str
        "identity", "sigmoid", "relu" or "tanh": one name for every layer, or one per
        weight layer (the last is the output activation).
    loss : str
        "mse" (mean of squared errors), "half_mse" (mse / 2, scikit-learn's), "sse"
        (1/2 * sum of squared errors, the tutorials' E) or "bce" (binary cross-entropy,
        mean over all outputs; needs a sigmoid output).
    init : str or float
        "uniform" U[0,1) (the tutorials), "normal" N(0, 1/sqrt(n_in)), "xavier", "he", or a
        number every parameter is set to.
    bias : bool
        Whether layers have biases.
    dtype : "float64" or "float32"
        Used end to end: parameters, buffers and the arithmetic's storage.
    seed : int or None
        Seeds the initial parameters and the shuffling stream.
    """

    def __init__(self, sizes, activation="sigmoid", loss="mse", init="uniform", bias=True,
                 dtype="float64", seed=None):
        sizes = V.check_sizes(sizes)
        self._configure(sizes, activation, loss, bias, dtype)
        init = V.check_init(init)
        self.seed = V.check_seed(seed)
        self._params = initial_params(self._layout, init, self.seed, self.dtype)
        self._rng_state = K.seed_state(self.seed)

    def _configure(self, sizes, activation, loss, bias, dtype):
        self._layout = Layout(sizes, bias)
        self.activations = V.check_activations(activation, len(sizes) - 1)
        self.loss_name = V.check_loss(loss, self.activations)
        self.dtype = V.check_dtype(dtype)
        self._act_codes = np.array([ACTIVATIONS[a] for a in self.activations], dtype=np.int64)
        self._loss_code = LOSSES[self.loss_name]
        self._fit_lock = threading.Lock()
        self.reset_optimizer()

    def reset_optimizer(self):
        """Forget the optimizer state (momentum velocity, Adam moments and step count),
        which otherwise carries over from one fit to the next."""
        n = self._layout.n_params
        self._opt_state = np.zeros((2, n), dtype=self.dtype)
        self._opt_step = np.zeros(1, dtype=np.int64)
        self._opt_kind = None

    @property
    def optimizer_state(self):
        """{"optimizer", "step", "velocity" or "m", "v"}: copies of the state a next fit
        continues from (velocity / moments in the layout of params)."""
        state = {"optimizer": self._opt_kind, "step": int(self._opt_step[0])}
        if self._opt_kind == "adam":
            state.update(m=self._opt_state[0].copy(), v=self._opt_state[1].copy())
        else:
            state.update(velocity=self._opt_state[0].copy())
        return state

    @classmethod
    def from_weights(cls, weights, biases=None, activation="sigmoid", loss="mse",
                     dtype="float64"):
        """A model with the given parameters (copied).

        weights: list of (n_in, n_out) arrays whose shapes chain; biases: list of (n_out,)
        or (1, n_out) arrays, or None for a network without biases.
        """
        if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
            raise TypeError("weights must be a list of 2-D (n_in, n_out) arrays")
        if len(weights) == 0:
            raise ValueError("weights is empty; expected one (n_in, n_out) array per layer")
        ws = []
        for l, w in enumerate(weights):
            w = V.as_float_array(w, f"weights[{l}]", np.float64)
            if w.ndim != 2:
                raise ValueError(f"weights[{l}] must be 2-D (n_in, n_out), got shape {w.shape}")
            if l and w.shape[0] != ws[-1].shape[1]:
                raise ValueError(f"weights do not chain: weights[{l - 1}] has shape "
                                 f"{ws[-1].shape} but weights[{l}] has shape {w.shape}")
            ws.append(w)
        sizes = V.check_sizes([ws[0].shape[0]] + [w.shape[1] for w in ws])
        bs = None
        if biases is not None:
            if len(biases) != len(ws):
                raise ValueError(f"biases: expected {len(ws)} arrays (one per layer), "
                                 f"got {len(biases)}")
            bs = []
            for l, b in enumerate(biases):
                b = V.as_float_array(b, f"biases[{l}]", np.float64)
                if b.size != sizes[l + 1] or (b.ndim == 2 and b.shape[0] != 1) or b.ndim > 2:
                    raise ValueError(f"biases[{l}] must have shape ({sizes[l + 1]},), "
                                     f"got {b.shape}")
                bs.append(b.reshape(-1))
        self = cls.__new__(cls)
        self._configure(sizes, activation, loss, bs is not None, dtype)
        self.seed = None
        params = np.empty(self._layout.n_params, dtype=self.dtype)
        for view, w in zip(self._layout.weight_views(params), ws):
            view[...] = w
        if bs is not None:
            for view, b in zip(self._layout.bias_views(params), bs):
                view[...] = b
        self._params = params
        self._rng_state = K.seed_state(None)
        return self

    # ---- parameters -----------------------------------------------------------------
    @property
    def sizes(self):
        return self._layout.sizes

    @property
    def bias(self):
        return self._layout.bias

    @property
    def n_layers(self):
        return self._layout.n_layers

    @property
    def params(self):
        """The flat parameter vector (a view: writing to it changes the model)."""
        return self._params

    @params.setter
    def params(self, value):
        value = V.as_float_array(value, "params", self.dtype)
        if value.shape != self._params.shape:
            raise ValueError(f"params must have shape {self._params.shape}, got {value.shape}")
        self._params[...] = value

    @property
    def weights(self):
        """List of (n_in, n_out) views into params."""
        return self._layout.weight_views(self._params)

    @property
    def biases(self):
        """List of (n_out,) views into params, or None for a model without biases."""
        return self._layout.bias_views(self._params)

    def __repr__(self):
        return (f"MLP(sizes={list(self.sizes)}, activation={list(self.activations)}, "
                f"loss={self.loss_name!r}, bias={self.bias}, dtype={self.dtype.name!r})")

    # ---- data -----------------------------------------------------------------------
    def _inputs(self, X):
        x = V.check_X(X, self.sizes[0], self.dtype)
        return V.kernel_columns(x)

    def _targets(self, y, n):
        if self.loss_name == "cross_entropy":
            onehot = V.class_labels_to_onehot(y, self.sizes[-1])
            if onehot is not None:
                y = onehot
        t = V.check_y(y, n, self.sizes[-1], self.dtype)
        V.check_targets_for_loss(t, self.loss_name)
        return V.kernel_columns(t)

    @property
    def _keep_z(self):
        """Whether the kernels must keep the output pre-activations (stable log losses)."""
        return self.loss_name in ("bce", "cross_entropy")

    def _kernel_net(self):
        lay = self._layout
        return lay.sizes_arr, lay.w_off, lay.b_off, self._act_codes

    # ---- evaluation -----------------------------------------------------------------
    def predict(self, X):
        """Network outputs, shape (n_samples, sizes[-1]), in the model dtype.

        X is converted as in ``fit`` (any real dtype to the model dtype, booleans as 0/1;
        never written to).  Raises FloatingPointError if an output overflows the model
        dtype (inputs or parameters too large) rather than returning infinities.
        """
        xt = self._inputs(X)
        n = xt.shape[1]
        ws = K.make_workspace(self._layout.sizes_arr, self._layout.n_params,
                                  min(n, _EVAL_CAP), 0, self._params[:0], False)
        a_off, acts, _, _, _, _, bits, scale, _ = ws
        out = np.empty((n, self.sizes[-1]), dtype=self.dtype)
        K.predict_into(self._params, *self._kernel_net(), xt, out.T, a_off, acts, bits, scale,
                       K.PRODUCT_MIN_WORK)
        V.check_finite_output(out, "predict's output", self.dtype)
        return out

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_out): the outputs of a softmax or sigmoid
        output layer (rows of a softmax sum to 1)."""
        if self.activations[-1] not in ("softmax", "sigmoid"):
            raise ValueError(f"predict_proba needs a softmax or sigmoid output layer, this "
                             f"model's is {self.activations[-1]!r}")
        return self.predict(X)

    def _loss_and_grad(self, X, y):
        xt = self._inputs(X)
        yt = self._targets(y, xt.shape[1])
        n = xt.shape[1]
        a_off, acts, deltas, grad, z_out, y_batch, bits, scale, perm = K.make_workspace(
            self._layout.sizes_arr, self._layout.n_params, n, n, self._params[:0], True)
        sizes, w_off, b_off, codes = self._kernel_net()
        loss = K.loss_and_gradient(self._params, sizes, w_off, b_off, codes, self._loss_code,
                                   xt, yt, grad, a_off, acts, deltas, z_out, y_batch, bits,
                                   scale, perm, K.PRODUCT_MIN_WORK)
        V.check_finite_output(np.array([loss]), "the loss", self.dtype)
        V.check_finite_output(grad, "the gradient", self.dtype)
        return float(loss), grad

    def loss(self, X, y):
        """The model's loss on (X, y), as a Python float (FloatingPointError if it
        overflows)."""
        return self._loss_and_grad(X, y)[0]

    def gradient(self, X, y):
        """Gradient of ``loss(X, y)``: (list of dW (n_in, n_out), list of db or None)."""
        _, grad = self._loss_and_grad(X, y)
        return self._layout.weight_views(grad), self._layout.bias_views(grad)

    # ---- training -------------------------------------------------------------------
    def fit(self, X, y, epochs=1, lr=0.01, batch_size=None, shuffle=False, seed=None,
            record_every=1, progress=False, on_divergence="raise", checkpoint=None,
            checkpoint_every=None, *, optimizer="sgd", momentum=0.0, nesterov=False,
            beta1=0.9, beta2=0.999, eps=1e-8, l2=0.0, schedule="constant", power_t=0.5,
            step_size=1, step_factor=0.5, lr_min=0.0, validation_data=None,
            validation_fraction=None, patience=0, min_delta=0.0, restore_best=False,
            sample_weight=None, callbacks=None, chunk_seconds=0.2, epoch_loss="batch_mean",
            tol=None, max_fun=None):
        """Train in place by backpropagation; returns a History.

        X: (n_samples, sizes[0]) array-like (1-D when sizes[0] == 1); y: (n_samples,
        sizes[-1]), or 1-D when sizes[-1] == 1.  Both are converted once to the model
        dtype (float32 data for a float64 model and the reverse are converted; integers
        too; booleans are taken as 0/1) and made C-contiguous (not copied when they
        already are): the caller's arrays are never written to (read-only,
        Fortran-ordered and strided arrays are fine; they are copied).  Arrays used in
        place are read throughout the fit: do not change them while it runs (from a
        callback, say); a divergence's replay and resume() expect the same data.
        Refused with ValueError / TypeError: NaN or infinity, values too large for the
        model dtype (e.g. 1e39 for float32), complex, string or object arrays, wrong
        shapes, arrays with more than 2 dimensions, empty data.

        batch_size None is full-batch gradient descent (one update per epoch), 1 is
        per-sample SGD, k is mini-batch SGD (the last batch may be smaller).  shuffle
        reorders the samples every epoch from a counter-based stream: ``seed`` restarts
        it, None continues the model's stream (so fit(N) equals fit(N/2) twice).
        The loss is recorded every ``record_every`` epochs (see History).  The run goes
        in chunks of ~0.2 s: ``progress=True`` shows a bar between chunks.

        Ctrl-C (SIGINT, when fit runs in the main thread) stops at the end of the
        current chunk: fit returns the History so far (``stopped="interrupted"``) with a
        RuntimeWarning saying how many epochs ran, and the model holds the parameters
        after exactly that many epochs.

        Divergence: the loss and the parameters are checked at every recorded epoch and
        at the end of each chunk.  On a NaN or infinity training stops; the model keeps
        the last parameters of the run that are finite and give a finite loss on (X, y)
        (exactly those after ``history.epochs`` epochs; the shuffling stream is put back
        there too) and the History ends there.  ``on_divergence="raise"`` (default)
        raises DivergenceError (a FloatingPointError naming the epoch and suggesting a
        smaller lr, with ``.history``), ``"warn"`` warns and returns the History
        (``stopped="diverged"``).

        Checkpoints: with ``checkpoint="run.npz"`` the whole state of the run is written
        to that file (atomically: temporary file, fsync, rename) every
        ``checkpoint_every`` and when the run ends (finished, interrupted or diverged).
        ``checkpoint_every`` is an int number of epochs (chunks are cut so that a
        checkpoint falls exactly on each multiple), or a duration string such as "30s",
        "10min", "2h" (or a datetime.timedelta); default "60s" of wall time.  A bare
        float is refused: write "30s".  ``fastbp.resume("run.npz", X, y)`` continues the
        run bit-identically.  fit always starts a new run and overwrites the file.

        Training controls (all inside the compiled loop; docs/API-NOTES.md has the exact
        update rules): ``optimizer`` "sgd" (``momentum``, ``nesterov``: scikit-learn's
        form) or "adam" (``beta1``, ``beta2``, ``eps``, as in the paper, with bias
        correction).  The optimizer state is kept on the model, so a next fit continues
        it (``reset_optimizer()`` clears it).  ``l2``: weight decay on weights, not
        biases: grad += l2 * W and the recorded loss gains (l2/2) sum(W^2); scikit-learn's
        ``alpha`` is l2 = alpha / batch_n.  ``schedule``: "constant", "invscaling"
        (lr / (1 + e)^power_t), "step" (lr * step_factor^(e // step_size)) or "cosine"
        (from lr to lr_min over the fit), e the epoch within this fit.
        ``validation_data=(Xv, yv)`` or ``validation_fraction`` (held out of X, chosen
        with ``seed``, else the model's seed) adds ``history.val_loss`` (evaluated at each
        record); ``patience=k`` stops after k records without an improvement of more than
        ``min_delta`` (``history.stopped == "early_stopping"``); ``restore_best=True``
        ends with the parameters of the best validation record.  ``sample_weight``
        (n,) >= 0 multiplies each sample's loss term and gradient (means still divide by
        the batch size).  ``callbacks``: functions f(epoch, history, model) called
        between chunks -- not every epoch; a chunk lasts about ``chunk_seconds`` -- and
        returning False to stop (``history.stopped == "callback"``).
        ``epoch_loss``: "batch_mean" (default) records the mean of an epoch's batch
        losses; "sample_mean" weights each batch's loss by its size and divides the L2
        term of each batch by the batch's size (scikit-learn's conventions; they differ
        only when the batch size does not divide the number of samples).

        ``optimizer="lbfgs"``: full-batch L-BFGS (SciPy's L-BFGS-B, ``pip install
        "fastbp[lbfgs]"``) on the loss plus ``l2``'s penalty (weighted by
        ``sample_weight``), each evaluation one compiled pass over the whole set.
        ``epochs`` is its maximum number of iterations; it also stops after ``max_fun``
        evaluations of the loss (default 15000; checked at the end of an iteration) or
        when it converges: every gradient component <= ``tol`` (default 1e-4) or a
        relative decrease of the loss below SciPy's ftol (scikit-learn's settings).  The
        History has one record per iteration, the loss after it (``epochs``: the
        iterations run); ``stopped`` is None (all ``epochs`` ran), "converged",
        "max_fun", "line_search" (SciPy could not find a better point), "interrupted" or
        "diverged" (the loss or gradient is not finite at the start; the parameters stay);
        ``extra`` holds SciPy's message, status and number of evaluations.  Keywords that
        mean nothing to it (lr, batch_size, shuffle, momentum, schedule, validation,
        callbacks, checkpoints, record_every, ...) must keep their defaults (ValueError).
        ``tol`` and ``max_fun`` apply only to it.

        Another fit of the same model while one runs (from another thread) is refused
        with RuntimeError.
        """
        if optimizer == "lbfgs":
            arguments = dict(locals())  # fit's arguments, before any other name is bound
            from ._lbfgs import fit as fit_lbfgs
            return fit_lbfgs(self, arguments)
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd', 'adam' or 'lbfgs', got {optimizer!r}")
        if tol is not None or max_fun is not None:
            raise ValueError(f"tol and max_fun apply to optimizer='lbfgs' only, got "
                             f"tol={tol!r}, max_fun={max_fun!r} with optimizer={optimizer!r}")
        xt = self._inputs(X)
        n = xt.shape[1]
        yt = self._targets(y, n)
        epochs = V.check_positive_int(epochs, "epochs")
        lr = V.check_lr(lr)
        record_every = V.check_positive_int(record_every, "record_every")
        seed = V.check_seed(seed)
        on_divergence = V.check_on_divergence(on_divergence)
        path, every = V.check_checkpoint(checkpoint, checkpoint_every)
        hyper, iconf = C.build(lr, epochs, optimizer, momentum, nesterov, beta1, beta2, eps,
                               l2, schedule, power_t, step_size, step_factor, lr_min,
                               patience, min_delta, restore_best, epoch_loss)
        sw = V.check_sample_weight(sample_weight, n, self.dtype)
        xt, yt, sw, xv, yv, swv = self._validation_split(
            xt, yt, sw, validation_data, validation_fraction, seed)
        n = xt.shape[1]
        V.check_batch_size(batch_size, n)
        if (patience or restore_best) and xv.shape[1] == 0:
            raise ValueError("patience and restore_best need validation data: pass "
                             "validation_data=(Xv, yv) or validation_fraction")
        callbacks = _check_callbacks(callbacks)
        if isinstance(chunk_seconds, bool) or not isinstance(chunk_seconds, (int, float)) \
                or not chunk_seconds > 0:
            raise ValueError(f"chunk_seconds must be a number > 0, got {chunk_seconds!r}")
        if self._opt_kind not in (None, optimizer):
            self.reset_optimizer()  # another optimizer's state means nothing to this one
        self._opt_kind = optimizer
        run = Run.start(epochs, lr, None if batch_size is None else int(batch_size),
                        shuffle, record_every, path, every)
        run.set_controls(hyper, iconf, sw, xv, yv, swv, self._params,
                         callbacks=callbacks, chunk_seconds=float(chunk_seconds))
        return self._train(xt, yt, run, progress, on_divergence, seed=seed)

    def _validation_split(self, xt, yt, sw, validation_data, validation_fraction, seed):
        """(xt, yt, sw) for training and (xv, yv, swv) for validation, as kernel_columns."""
        empty = np.zeros((xt.shape[0], 0), dtype=self.dtype)
        none = (empty, np.zeros((yt.shape[0], 0), dtype=self.dtype),
                np.zeros(0, dtype=self.dtype))
        if validation_data is not None and validation_fraction is not None:
            raise ValueError("give validation_data or validation_fraction, not both")
        if validation_data is not None:
            try:
                xv_raw, yv_raw = validation_data
            except (TypeError, ValueError):
                raise TypeError("validation_data must be a pair (X_val, y_val)") from None
            xv = self._inputs(xv_raw)
            yv = self._targets(yv_raw, xv.shape[1])
            return xt, yt, sw, xv, yv, none[2]
        if validation_fraction is None:
            return (xt, yt, sw) + none
        f = validation_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
            raise ValueError(f"validation_fraction must be a number in (0, 1), got {f!r}")
        n = xt.shape[1]
        n_val = int(round(f * n))
        if n_val < 1 or n_val >= n:
            raise ValueError(f"validation_fraction={f} of {n} samples leaves "
                             f"{n_val} for validation and {n - n_val} for training; both "
                             f"need at least one")
        key = seed if seed is not None else (self.seed if self.seed is not None else 0)
        order = np.random.default_rng(key).permutation(n)
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
        take = lambda a, idx: V.kernel_columns(a.T[idx])  # noqa: E731
        sw_t = sw[train].copy() if sw.shape[0] else sw
        sw_v = sw[val].copy() if sw.shape[0] else sw
        return take(xt, train), take(yt, train), sw_t, take(xt, val), take(yt, val), sw_v

    def _train(self, xt, yt, run, progress, on_divergence, seed=None):
        """``_run`` holding the model's training lock (one fit at a time per model)."""
        if not self._fit_lock.acquire(blocking=False):
            raise RuntimeError("this model is already being trained (fit is running in "
                               "another thread); train a copy instead")
        try:
            if not _all_finite(self._params):
                raise ValueError("the model's parameters contain NaN or infinity (written "
                                 "through params, weights or biases?); set finite values "
                                 "before training")
            if seed is not None:  # in place: an Ensemble's member shares this array
                self._rng_state[:] = K.seed_state(seed)
            return self._run(xt, yt, run, progress, on_divergence)
        finally:
            self._fit_lock.release()

    def _run(self, xt, yt, run, progress, on_divergence):
        """Train from epoch ``run.done`` to ``run.epochs`` in chunks; the run's History."""
        n = xt.shape[1]
        lay = self._layout
        batch = n if run.batch_size is None else run.batch_size
        history = run.history
        # the plain rule in float64 is applied inside the backward pass, which stores no
        # gradient (kernels/train.py: fused_step): no gradient buffer then
        fused = self._plain(run) and self.dtype == np.float64
        ws = K.make_workspace(lay.sizes_arr, 0 if fused else lay.n_params, batch, n,
                              self._params[:0], self._keep_z)
        ws = (ws, self._validation_workspace(run), np.zeros(batch, dtype=self.dtype))
        backup = None  # the guard's copy of the parameters, made by the first guarded chunk
        # a chunk this proves safe runs unguarded, without copying the parameters
        bound = ChunkBound.for_fit(self, run, xt, yt, batch)
        saver = Saver(self, run, xt, yt) if run.checkpoint is not None else None
        bar = make_bar(run.epochs - run.done) if progress else None
        stopped, bad = None, -1
        snapshots = []  # (epoch, params, rng state) at the starts of the last two chunks
        # full batch: the latest chunk start whose loss a record showed finite (the loss of
        # a full-batch epoch is that of its starting state), kept for the rewind when it
        # is older than both snapshots (chunks shorter than record_every)
        anchor = None
        full_batch = batch >= n and not run.shuffle
        safe = False  # whether the last chunk ran unguarded (ChunkBound proved it safe)
        chunk = first_chunk(run.epochs - run.done, 3 * n * lay.n_params, run.chunk_seconds)
        seconds0 = run.seconds
        # A call of no epochs first: it compiles the kernel, or loads it from Numba's
        # cache, so that history.seconds (and the chunk sizing) measure training only.
        # Skipped once the kernel has run on arguments of these types in this process
        # (a short fit's Python overhead is ~0.1 ms; the dispatch costs 6 us of it).
        if run.kernel is None:  # chosen once a run: its work counts once (worth_generating)
            run.kernel = self._train_kernel(n, batch, run)
        signature = (run.kernel, self.dtype) + tuple(
            _array_kind(a) for a in (xt, yt, run.sw, run.xv, run.yv, run.swv))
        if signature not in _KERNELS_RUN:
            self._kernel_train(xt, yt, run, 0, run.done, self._params, self._rng_state,
                               self._opt_state, self._opt_step, run.es_state, history,
                               run.val_history, self._params[:0], ws)
            _KERNELS_RUN.add(signature)
        t_start = time.perf_counter()
        with sigint_deferred() as interrupted:
            while run.done < run.epochs:
                if saver is not None:
                    chunk = saver.cap(chunk)
                proved_before = safe
                safe = bound is not None and bound.cannot_diverge(self._params, run.hyper, chunk)
                if safe:  # unguarded, nothing copied: no rewind ever needs this chunk's start
                    guard_buffer = self._params[:0]
                else:
                    if backup is None:
                        backup = np.empty_like(self._params)
                    anchor = self._guard_chunk(run, chunk, backup, snapshots, anchor)
                    guard_buffer = backup
                    if full_batch and proved_before:
                        anchor = snapshots[0]  # the end of a proved chunk: a finite loss
                t0 = time.perf_counter()
                ran, bad, early = self._kernel_train(
                    xt, yt, run, chunk, run.done, self._params, self._rng_state,
                    self._opt_state, self._opt_step, run.es_state, history, run.val_history,
                    guard_buffer, ws)
                seconds = time.perf_counter() - t0
                if not safe and full_batch and ran > 0 and run.done % run.record_every == 0:
                    anchor = snapshots[0]  # its epoch was recorded, with a finite loss
                run.done += ran
                if early:
                    stopped = "early_stopping"
                if bad >= 0:
                    stopped = "diverged"
                    older = anchor is not None and not any(anchor is s for s in snapshots)
                    kept = snapshots + [anchor] if older else snapshots
                    self._rewind(xt, yt, run, batch, ws, backup, kept)
                run.seconds = seconds0 + (time.perf_counter() - t_start)
                if bar is not None and ran:
                    bar.update(ran, history[(run.done - 1) // run.record_every]
                               if run.done else None)
                if stopped:
                    break
                if saver is not None and saver.due():
                    saver.write()
                if interrupted[0]:
                    stopped = "interrupted"
                    break
                if run.callbacks and self._callbacks_stop(run):
                    stopped = "callback"
                    break
                chunk = next_chunk(ran, seconds, run.epochs - run.done, run.chunk_seconds)
            history[run.n_records:] = np.nan  # records past a divergence, if any
            if saver is not None:  # still deferring Ctrl-C: the last write is not cut short
                saver.write()
        if bar is not None:
            bar.close()
        if run.restore_best and np.isfinite(run.es_state[0]) and stopped != "diverged":
            self._params[...] = run.best_params
        hist = self._history(run, stopped)
        if stopped == "interrupted":
            warn_interrupted(run.done, run.epochs, run.checkpoint, stacklevel=4)
        elif stopped == "diverged":
            self._diverged(xt, yt, run, bad, hist, on_divergence)
        return hist

    def _guard_chunk(self, run, chunk, backup, snapshots, anchor):
        """Before a guarded chunk: backup <- the parameters, and this chunk's start
        becomes the newest of the (at most two) ``snapshots`` (updated in place); returns
        the anchor, which follows a snapshot that moves out of backup."""
        del snapshots[1:]  # the oldest goes before anything is copied
        if snapshots and snapshots[0][1] is backup:  # about to be overwritten
            shared_one = snapshots[0]
            snapshots[0] = _with_params(shared_one, backup.copy())
            if anchor is shared_one:
                anchor = snapshots[0]
        backup[...] = self._params
        # the kernel writes backup only at a recorded epoch before the chunk's last
        # (train.train): without one, backup keeps this chunk's start for a replay and
        # the snapshot need not copy the parameters -- a guarded fit of one chunk then
        # holds one copy of them, not two
        shared = not _records_before_last(run.done, chunk, run.record_every)
        snapshots.insert(0, self._snapshot(run, backup if shared else None))
        return anchor

    def _rewind(self, xt, yt, run, batch, ws, backup, snapshots):
        """After divergence: leave the model at the latest state of the run whose loss on
        the training data is finite; sets run.done to its epoch.

        The kernel's guard restores the parameters of its last good check, which are
        finite but, in full-batch mode, may already overflow the loss (a full-batch
        epoch's loss is that of the parameters before its update).  The candidates are
        that state, the epoch before it, the starts of the last two chunks and, in
        full-batch mode, the latest chunk start whose loss a record showed finite
        (``snapshots``, newest first); earlier states are rebuilt by replaying the run
        from a chunk-start snapshot (bit-identical, the shuffling stream included).  If
        none has a finite loss, the guard's state stays.
        """
        sizes, w_off, b_off, codes = self._kernel_net()
        # the replays below use backup as their guard's buffer: a snapshot kept in it first
        # becomes a copy (it still holds its chunk's start: see _run)
        snapshots = [_with_params(s, s[1].copy()) if s[1] is backup else s for s in snapshots]
        guarded = self._params.copy()
        perm = ws[0][-1]
        found = None
        for epoch in sorted({run.done, run.done - 1} | {s[0] for s in snapshots},
                            reverse=True):
            base = next((s for s in snapshots if s[0] <= epoch), None)
            if base is None:
                continue
            start, params, rng, opt_state, opt_step, es_state = (
                base[0], *(a.copy() for a in base[1:]))
            if epoch == run.done:
                params = guarded.copy()
                if run.shuffle:  # the kernel drew permutations past the restored epoch
                    rng = _replay_shuffles(rng, epoch - start, perm)
            elif epoch > start:
                ran, bad, _ = self._kernel_train(
                    xt, yt, run, epoch - start, start, params, rng, opt_state, opt_step,
                    es_state, np.empty_like(run.history), np.empty_like(run.val_history),
                    backup, ws)
                if bad >= 0 or ran != epoch - start:
                    continue
            state = (epoch, params, rng, opt_state, opt_step)
            if found is None:
                found = state  # the guard's state: the fallback
            self._params[...] = params
            if self._finite_loss(xt, yt, run.sw):
                found = state
                break
        run.done, params, rng, opt_state, opt_step = found
        self._params[...] = params
        self._rng_state[:] = rng
        self._opt_state[...] = opt_state
        self._opt_step[...] = opt_step

    def _kernel_train(self, xt, yt, run, epochs, start, params, rng, opt_state, opt_step,
                      es_state, history, val_history, backup, ws):
        """One call of the fused loop (kernels/train.py: train) for ``epochs`` epochs from
        epoch ``start`` of ``run``; (epochs_done, bad_epoch, early_stopped)."""
        sizes, w_off, b_off, codes = self._kernel_net()
        train_ws, val_ws, w_batch = ws
        batch = xt.shape[1] if run.batch_size is None else run.batch_size
        return run.kernel(params, sizes, w_off, b_off, codes, self._loss_code, xt, yt, run.sw,
                           run.xv, run.yv, run.swv, epochs, batch, run.shuffle, rng, start,
                           run.record_every, history, val_history, backup, run.best_params,
                           es_state, run.hyper, run.iconf, opt_state, opt_step,
                           self._decay_mask(run), train_ws, w_batch, val_ws,
                           K.PRODUCT_MIN_WORK)

    def _train_kernel(self, n, batch, run):
        """The compiled training loop for this fit: one generated for the architecture
        when the network is small and the fit full-batch, or the fit per-sample, and long
        enough to pay for compiling it (kernels/specialize.py: the same results,
        faster), else the general kernels.train.train."""
        if not S.ENABLED:
            return K.train
        lay = self._layout
        validating = run.xv.shape[1] > 0
        weighted = run.sw.shape[0] > 0
        plain = self._plain(run)
        if batch == 1:
            mode = S.per_sample_mode(lay.sizes, self._act_codes, self._loss_code, plain,
                                     validating, self.dtype, lay.n_params)
            ok = mode is not None
        else:
            full = batch >= n and not run.shuffle
            products = any(S.uses_products(a, b, n, K.PRODUCT_MIN_WORK) for a, b in lay.shapes)
            ok = S.eligible(lay.sizes, self._act_codes, self._loss_code, full, validating,
                            self.dtype, products)
            mode = "plain" if plain else "full"
        arch = (lay.sizes, self._act_codes, lay.bias, self._loss_code, weighted, mode)
        if not ok or not S.worth_generating(run.epochs * n * lay.n_params, *arch):
            return K.train
        return S.trainer(*arch)

    def _decay_mask(self, run):
        """1 on weights, 0 on biases where L2 applies; empty without L2 (the kernels read
        it only when l2 > 0: a mask as large as the parameters costs memory)."""
        if run.hyper[O.H_L2] == 0.0:
            return self._params[:0]
        return C.decay_mask(self._layout, self.dtype)

    @staticmethod
    def _plain(run):
        """Whether the fit uses the plain update rule (no optimizer state, no L2)."""
        return (run.iconf[O.I_OPTIMIZER] == O.SGD and run.hyper[O.H_MOMENTUM] == 0.0
                and run.hyper[O.H_L2] == 0.0)

    def _snapshot(self, run, params=None):
        """What a replay after divergence starts from (see _rewind).  The plain rule
        never touches the optimizer state, so it is not copied then (it is as large as
        two parameter vectors).  ``params``: an array already holding the parameters,
        kept instead of a copy."""
        opt_state = self._opt_state if self._plain(run) else self._opt_state.copy()
        params = self._params.copy() if params is None else params
        return (run.done, params, self._rng_state.copy(), opt_state, self._opt_step.copy(),
                run.es_state.copy())

    def _validation_workspace(self, run):
        """The buffers of eval_loss (a forward pass over the validation set: no gradient).
        Without validation data the kernel never touches them: one small set per model."""
        nv = run.xv.shape[1]
        lay = self._layout
        if nv == 0:
            key = (self.dtype, self._keep_z)
            if getattr(self, "_idle_val_ws", (None,))[0] != key:
                self._idle_val_ws = (key, K.make_workspace(lay.sizes_arr, 0, 1, 1,
                                                           self._params[:0], self._keep_z))
            return self._idle_val_ws[1]
        return K.make_workspace(lay.sizes_arr, 0, nv, nv, self._params[:0], self._keep_z)

    def _history(self, run, stopped):
        n = run.n_records
        val = run.val_history[:n].copy() if run.xv.shape[1] else None
        best = int(run.es_state[2]) if run.xv.shape[1] and run.es_state[2] >= 0 else None
        return History(loss=run.history[:n].copy(), epochs=run.done,
                       record_every=run.record_every, seconds=run.seconds, stopped=stopped,
                       val_loss=val, best_epoch=best)

    def _callbacks_stop(self, run):
        """Call the run's callbacks with (epoch, history so far, model); True to stop."""
        hist = self._history(run, None)
        return any(cb(run.done, hist, self) is False for cb in run.callbacks)

    def _finite_loss(self, xt, yt, sw):
        """Whether the loss on (xt, yt) with sample weights sw (or none: empty) at the
        current parameters is finite -- the loss the history records, weighted as they
        are (with weights below 1 a record can be finite where the unweighted sum is
        not).  Evaluated in blocks of _EVAL_CAP samples, so memory stays small."""
        n = xt.shape[1]
        cap = min(n, _EVAL_CAP)
        ws = K.make_workspace(self._layout.sizes_arr, self._layout.n_params, cap, cap,
                                  self._params[:0], self._keep_z)
        with np.errstate(all="ignore"):
            for s in range(0, n, cap):
                xb, yb = xt[:, s:s + cap], yt[:, s:s + cap]  # views, the layout of xt
                loss = K.weighted_loss_and_gradient(
                    self._params, *self._kernel_net(), self._loss_code, xb, yb,
                    sw[s:s + cap], *_loss_workspace(ws), K.PRODUCT_MIN_WORK)
                if not np.isfinite(loss):
                    return False
        return True

    def _diverged(self, xt, yt, run, bad, hist, on_divergence):
        start_finite = run.done > 0 or self._finite_loss(xt, yt, run.sw)
        cause = divergence_cause(self.dtype, float(np.abs(xt).max()), float(np.abs(yt).max()),
                                 start_finite, f"too large a learning rate: try a smaller "
                                               f"learning rate than lr={run.lr:g}")
        msg = (f"training diverged at epoch {bad} (counted from 0) of this run's "
               f"{run.epochs}: a NaN or infinite loss or parameter. The model keeps the last "
               f"parameters of the run with a finite loss, those after {run.done} epochs, "
               f"and the history ends there; likely cause: {cause}")
        if run.checkpoint is not None:
            msg += f" (checkpoint {run.checkpoint!r} holds that state)"
        if on_divergence == "raise":
            raise DivergenceError(msg, epoch=bad, history=hist, model=self)
        warnings.warn(msg, RuntimeWarning, stacklevel=5)  # the caller of fit/resume

    # ---- files ----------------------------------------------------------------------
    def save(self, path):
        """Write parameters and architecture to one .npz file (no pickle)."""
        from .io import save_model
        save_model(self, path)


def divergence_cause(dtype, x_max, y_max, start_finite, lr_hint):
    """The likely cause of a divergence, for its message.  The data are blamed only when
    they are huge for the dtype: beyond sqrt(max) / 1e4 (1.3e150 in float64, 1.8e15 in
    float32) their squares and sums of products overflow.  Otherwise a loss that is
    not finite at the starting parameters blames those parameters, and anything else
    the learning rate (``lr_hint`` says what to try)."""
    huge = math.sqrt(np.finfo(dtype).max) * 1e-4
    data = f"max |X| = {x_max:.3g}, max |y| = {y_max:.3g}"
    name = np.dtype(dtype).name
    if max(x_max, y_max) > huge:
        where = ("" if start_finite else
                 "the loss is not finite even at the starting parameters: ")
        return (f"{where}the data ({data}) are too large for {name} (their products and "
                f"squares overflow); scale them down")
    if not start_finite:
        return (f"the starting parameters: the loss is not finite there although the data "
                f"are moderate ({data}); set smaller parameters (an earlier run with too "
                f"large a learning rate can leave them huge yet finite)")
    if max(x_max, y_max) > 1e4:
        return f"{lr_hint}, or scale the data down ({data})"
    return lr_hint


def _all_finite(a, block=1 << 16):
    """np.isfinite(a).all() for a 1-D array, a block at a time: no temporary as large as
    a (1 MB of booleans for W4b's parameters at H = 1024, counted in its peak memory).
    Not the kernel K.all_finite: fit would load one more compiled function in every
    process's first fit (the cold start)."""
    return all(np.isfinite(a[i:i + block]).all() for i in range(0, a.shape[0], block))


def _records_before_last(done, chunk, record_every):
    """Whether a kernel call of ``chunk`` epochs from epoch ``done`` records an epoch
    before its last (where the divergence guard copies the parameters to backup)."""
    first = -(-done // record_every) * record_every
    return first < done + chunk - 1


def _with_params(snapshot, params):
    return (snapshot[0], params) + tuple(snapshot[2:])


def _loss_workspace(ws):
    """allocate_workspace's buffers in loss_and_gradient's argument order."""
    a_off, acts, deltas, grad, z_out, y_batch, bits, scale, perm = ws
    return grad, a_off, acts, deltas, z_out, y_batch, bits, scale, perm


def _replay_shuffles(state, epochs, perm):
    """The generator state after ``epochs`` shuffled epochs from ``state`` (the kernel
    draws one permutation per epoch)."""
    state = state.copy()
    for _ in range(epochs):
        K.permutation_into(perm, state)
    return state


def _check_callbacks(callbacks):
    if callbacks is None:
        return []
    if callable(callbacks):
        callbacks = [callbacks]
    callbacks = list(callbacks)
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"callbacks must be callables f(epoch, history, model), got {cb!r}")
    return callbacks
