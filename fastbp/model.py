"""The MLP model object: validation, buffers and reporting around the compiled kernels."""
import math
import numbers
import warnings
from contextlib import contextmanager

import numpy as np

from . import _pickling
from . import _sparse as S
from . import export
from . import _config as C
from . import _dispatch as D
from . import _threads as T
from . import _validation as V
from ._codes import ACTIVATIONS, LOSSES
from ._driver import drive, sigint_deferred, warn_interrupted
from ._fit import EVAL_CAP, SingleFit
from ._init import initial_params
from ._layout import Layout
from ._run import Run
from .errors import DivergenceError
from .kernels import loops as L
from .kernels import options as O
from .kernels import passes as PS
from .kernels.rng import seed_state
from .kernels.rules import ADAM


class MLP:
    """A dense feed-forward network trained by backpropagation.

    Parameters
    ----------
    sizes : sequence of int
        Units per layer, inputs first: [2, 4, 4, 1] is the XOR tutorial's net.
    activation : str or sequence of str
        "identity", "sigmoid", "relu" or "tanh": one name for every layer, or one per
        weight layer (the last is the output activation); the output layer may also be
        "softmax" (with loss "cross_entropy") or "exp" (with loss "poisson").
    loss : str
        "mse" (mean of squared errors), "half_mse" (mse / 2, scikit-learn's), "sse"
        (1/2 * sum of squared errors, the tutorials' E), "bce" (binary cross-entropy,
        mean over all outputs; needs a sigmoid output), "cross_entropy" (needs a softmax
        output; one-hot or integer class labels) or "poisson" (scikit-learn's half
        Poisson deviance; needs an exp output; targets >= 0).
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
        self._rng_state = seed_state(self.seed)

    def _configure(self, sizes, activation, loss, bias, dtype):
        self._layout = Layout.of(tuple(sizes), V.check_flag(bias, "bias"))
        self.activations = V.check_activations(activation, len(sizes) - 1)
        V.check_output_units(self._layout.sizes, self.activations)
        self.loss_name = V.check_loss(loss, self.activations)
        self.dtype = V.check_dtype(dtype)
        self._act_codes = np.array([ACTIVATIONS[a] for a in self.activations], dtype=np.int64)
        self._loss_code = LOSSES[self.loss_name]
        self._fit_lock = _pickling.FitLock()
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
        dt = V.check_dtype(dtype)
        # the arrays' types, dimensions and shapes here; their values where they are
        # copied into the parameters: one finiteness check of those (below) instead of
        # one per array
        ws = []
        for l, w in enumerate(weights):
            w = V.as_float_array(w, f"weights[{l}]", dt, check_finite=False)
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
                b = V.as_float_array(b, f"biases[{l}]", dt, check_finite=False)
                if b.size != sizes[l + 1] or (b.ndim == 2 and b.shape[0] != 1) or b.ndim > 2:
                    raise ValueError(f"biases[{l}] must have shape ({sizes[l + 1]},), "
                                     f"got {b.shape}")
                bs.append(b.reshape(-1))
        self = cls.__new__(cls)
        self._configure(sizes, activation, loss, bs is not None, dtype)
        self.seed = None
        # each layer's weights (row-major) then its biases (_layout.py), in one copy
        parts = []
        for l, w in enumerate(ws):
            parts.append(w.reshape(-1))
            if bs is not None:
                parts.append(bs[l])
        params = np.concatenate(parts, out=O.aligned_empty(self._layout.n_params, self.dtype))
        if not V.all_finite(params):
            # which array: NaN or infinity, or values the model dtype cannot hold (1e39
            # for float32), refused rather than trained on as infinities
            named = [(f"weights[{l}]", w) for l, w in enumerate(weights)]
            named += [(f"biases[{l}]", b) for l, b in enumerate(() if bs is None else biases)]
            for name, a in named:
                V.as_float_array(a, name, dt)
            raise ValueError("weights or biases contain NaN or infinity")  # (not reached)
        self._params = params
        self._rng_state = seed_state(None)
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
    def _inputs(self, X, squares=None, name="X"):
        """X as the kernels take it: (n, sizes[0]) C-contiguous in the model dtype, or
        for a scipy.sparse X its rows (fastbp/_sparse.py: Rows).  ``squares``: see
        _validation.all_finite; ``name``: the array's, in an error."""
        if S.is_sparse(X):
            return S.sparse_rows(X, self.sizes[0], self.dtype, name)
        return V.kernel_ready(V.check_X(X, self.sizes[0], self.dtype, name, squares=squares))

    def _kernel_inputs(self, x, descend=False):
        """x (from _inputs) as options.Data holds it (sparse rows with their scratch)."""
        return S.for_kernels(x, self.sizes[1], descend)

    def _targets(self, y, n, squares=None, name="y"):
        if self.loss_name == "cross_entropy":
            onehot = V.class_labels_to_onehot(y, self.sizes[-1], name)
            if onehot is not None:
                y = onehot
        t = V.check_y(y, n, self.sizes[-1], self.dtype, name, squares=squares)
        V.check_targets_for_loss(t, self.loss_name, name)
        return V.kernel_ready(t)

    @property
    def _keep_z(self):
        """Whether the kernels must keep the output pre-activations (stable log losses)."""
        return self.loss_name in ("bce", "cross_entropy", "poisson")

    def _net(self, n, sparse=False):
        """The kernels' Net for a pass over batches of up to n samples (of sparse
        rows)."""
        return D.make_net(self._layout, self._act_codes, self._loss_code, self.dtype,
                          D.eval_gemm(self, n, sparse=sparse))

    def _eval_passes(self, needed, nbs, sparse, pooled=False):
        """The ``needed`` batch passes for calls with batches of nb samples, nb in
        ``nbs`` (0: none), in the form that serves them (fastbp/_dispatch.py)."""
        return D.batch_passes(self.dtype, needed, pooled,
                              D.passes_build(self.dtype, needed, pooled, self._layout.sizes,
                                             nbs, self._act_codes, self._loss_code, sparse))

    # ---- evaluation -----------------------------------------------------------------
    def predict(self, X):
        """Network outputs, shape (n_samples, sizes[-1]), in the model dtype.

        X is converted as in ``fit`` (any real dtype to the model dtype, booleans as 0/1;
        never written to).  Raises FloatingPointError if an output overflows the model
        dtype (inputs or parameters too large) rather than returning infinities.
        """
        return self._outputs(self._inputs(X))

    def _outputs(self, x):
        """predict's outputs for x as _inputs gives it (checked: its shape, dtype and
        values)."""
        n = x.shape[0]
        cap = min(n, EVAL_CAP)
        sparse = isinstance(x, S.Rows)
        generated = D.predictor(self, cap, n, sparse)
        if generated is not None:  # the same numbers, for a small network (_dispatch.py)
            entry, key = generated
            out = np.empty((n, self.sizes[-1]), dtype=self.dtype)
            entry(self._params, x, out)
            D.mark_compiled(key)
            V.check_finite_output(out, "predict's output", self.dtype)
            return out
        lay = self._layout
        work = O.make_work(lay.sizes_arr, 0, cap, 0, self.dtype, False, sparse=sparse,
                           passes=self._eval_passes(PS.PREDICT, (cap, n % cap), sparse))
        out = np.empty((n, self.sizes[-1]), dtype=self.dtype)
        entry = L.predict_rows if sparse else L.predict
        net, work = O.plain(self._net(cap, sparse), work)
        entry(self._params, net, self._kernel_inputs(x), out, work)
        if not sparse:
            D.mark_compiled(D.general_predict_key(self.dtype))
        V.check_finite_output(out, "predict's output", self.dtype)
        return out

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_out): the outputs of a softmax or sigmoid
        output layer (rows of a softmax sum to 1)."""
        if self.activations[-1] not in ("softmax", "sigmoid"):
            raise ValueError(f"predict_proba needs a softmax or sigmoid output layer, this "
                             f"model's is {self.activations[-1]!r}")
        return self.predict(X)

    def _loss_and_grad(self, X, y, gradient=True):
        """(loss, gradient), each refused (FloatingPointError) where it overflows -- the
        gradient only when ``gradient``: a finite loss is the loss, whatever its
        gradient (as Ensemble.loss gives it)."""
        x = self._inputs(X)
        t = self._targets(y, x.shape[0])
        loss, grad = self._kernel_loss_and_grad(x, t, np.zeros(0, dtype=self.dtype))
        V.check_finite_output(np.array([loss]), "the loss", self.dtype)
        if gradient:
            V.check_finite_output(grad, "the gradient", self.dtype)
        return float(loss), grad

    def _kernel_loss_and_grad(self, x, t, sw):
        """The loss of (x, t) with sample weights sw (or empty) and its gradient, all in
        one batch (the kernels' sample-major arrays)."""
        evaluate = self._loss_evaluator(x.shape[0], isinstance(x, S.Rows))
        return evaluate(self._params, x, t, sw)

    def _loss_evaluator(self, n, sparse=False):
        """evaluate(params, x, t, sw) -> (loss, gradient) of _kernel_loss_and_grad for
        parameters of this model's layout and n samples (of sparse rows), its buffers
        made once: an Ensemble evaluates all of its models with one."""
        lay = self._layout
        work = O.make_work(lay.sizes_arr, 0, n, n, self.dtype, True, sparse=sparse,
                           passes=self._eval_passes(PS.ALL, (n,), sparse))
        net = self._net(n, sparse)
        if not sparse:  # (the dense entry takes the fields as plain tuples: kernels/loops.py)
            net, work = tuple(net), tuple(work)

        def evaluate(params, x, t, sw):
            grad = np.zeros(lay.n_params, dtype=self.dtype)
            data = O.Data(self._kernel_inputs(x), t, sw)
            if sparse:
                return L.loss_and_gradient_rows(params, net, data, grad, work, False), grad
            return L.loss_and_gradient(params, net, tuple(data), grad, work, False), grad

        return evaluate

    def loss(self, X, y):
        """The model's loss on (X, y), as a Python float (FloatingPointError if it
        overflows)."""
        return self._loss_and_grad(X, y, gradient=False)[0]

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
            tol=None, max_fun=None, n_jobs=None):
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
        after exactly that many epochs (with ``restore_best=True``, as at any end of the
        run, those of the best validation record, which the warning names).

        Divergence: the loss and the parameters (and Adam's second moment) are checked
        at every recorded epoch and at the end of each chunk.  On a NaN or infinity
        training stops; the model keeps the last checked parameters of the run that are
        finite and give a finite loss on (X, y) (exactly those after ``history.epochs``
        epochs, with their optimizer state; the shuffling stream is put back there too)
        and the History ends there -- where the run has such a state: a run whose start
        already has a loss that is not finite (huge data or parameters, or a resumed
        checkpoint saved after an update that overflowed the loss) keeps its last checked
        parameters, and the message says so.  Epochs between records are not checked, so with
        ``record_every > 1`` that can be a few epochs before the first bad one.  A run
        that ends -- completed, or stopped by Ctrl-C, a callback or early stopping
        without restore_best -- also has the loss after its last epoch checked (no
        record holds it: a full-batch record is the loss before its epoch's update):
        proved finite by a bound on the parameters and data where it can be, else
        evaluated once; a non-finite one is a divergence in that last epoch (reported as
        epoch ``epochs`` for a completed run), which takes the place of the stop.
        ``on_divergence="raise"`` (default) raises DivergenceError (a FloatingPointError
        naming the epoch and suggesting a smaller lr, with ``.history``), ``"warn"`` warns
        and returns the History (``stopped="diverged"``).

        Checkpoints: with ``checkpoint="run.npz"`` the whole state of the run is written
        to that file (atomically: temporary file, fsync, rename) every
        ``checkpoint_every`` and when the run ends (finished, interrupted or diverged).
        ``checkpoint_every`` is an int number of epochs (chunks are cut so that a
        checkpoint falls exactly on each multiple), or a duration string such as "30s",
        "10min", "2h" (or a datetime.timedelta); default "60s" of wall time.  A bare
        float is refused: write "30s".  ``fastbp.resume("run.npz", X, y)`` continues the
        run bit-identically.  fit always starts a new run and overwrites the file -- an
        earlier checkpoint only: any other file at that path is refused (ValueError).

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
        the batch size); converted to the model dtype like the data (in float32, weights
        under 1.4e-45 become 0).  ``callbacks``: functions f(epoch, history, model) called
        between chunks -- not every epoch; a chunk lasts about ``chunk_seconds`` -- and
        returning False to stop (``history.stopped == "callback"``).  A callback that
        raises (KeyboardInterrupt included) ends the fit with its exception: the model
        holds the parameters after the epochs its History counts (restore_best does not
        apply), and with ``checkpoint`` the file holds that state (resume continues it).
        A callback that writes NaN or infinity into the parameters ends it with ValueError.
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

        ``n_jobs``: the threads the wide layers of a fit may share (None or -1: every
        core this process may run on, at most NUMBA_NUM_THREADS).  A batched fit (full
        batch, mini-batch, L-BFGS) shares its products, and runs on threads only when one
        of its layers' products reaches 2**21 multiply-adds (3 * 2**20 in float32);
        per-sample SGD (batch_size=1, plain SGD) shares its layers of 256 x 1024 weights
        or more.  Small networks run on one core whatever n_jobs.  The results are the
        same bits at any number of threads.  n_jobs does not bound numpy's OpenBLAS:
        where it runs on four threads or more, products of 2**22 multiply-adds or more
        go to it on its own threads (set OPENBLAS_NUM_THREADS to bound them; fewer than
        four keeps them in fastbp, whose bits differ from OpenBLAS's).

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
        with sigint_deferred() as interrupted:
            progress = V.check_flag(progress, "progress")
            path, every = V.check_checkpoint(checkpoint, checkpoint_every)
            val_inputs = validation_data if isinstance(validation_data, (tuple, list)) else ()
            V.check_output_not_input(path, "checkpoint", X, y, sample_weight, *val_inputs)
            V.check_checkpoint_target(path)
            # the sums of squares the finiteness checks compute (large arrays): the
            # check of the state the run ends in takes the data's norms from them
            x_squares, y_squares = [], []
            x = self._inputs(X, x_squares)
            n = x.shape[0]
            y = self._targets(y, n, y_squares)
            epochs = V.check_positive_int(epochs, "epochs")
            lr = V.check_lr(lr)
            record_every = V.check_positive_int(record_every, "record_every")
            seed = V.check_seed(seed)
            on_divergence = V.check_on_divergence(on_divergence)
            rule, stop = C.build(lr, epochs, optimizer, momentum, nesterov, beta1, beta2, eps,
                                 l2, schedule, power_t, step_size, step_factor, lr_min,
                                 patience, min_delta, restore_best, epoch_loss)
            C.check_in_dtype(rule, self.dtype)
            sw = V.check_sample_weight(sample_weight, n, self.dtype)
            given = (x, y)
            x, y, sw, val, train_rows = self._validation_split(x, y, sw, validation_data,
                                                               validation_fraction, seed)
            n = x.shape[0]
            V.check_batch_size(batch_size, n)
            if (patience or restore_best) and val is None:
                raise ValueError("patience and restore_best need validation data: pass "
                                 "validation_data=(Xv, yv) or validation_fraction")
            threads = T.resolve(n_jobs, lazily=True)
            callbacks = _check_callbacks(callbacks)
            chunk_seconds = V.check_real(chunk_seconds, "chunk_seconds")
            if not 0 < chunk_seconds < math.inf:
                raise ValueError(f"chunk_seconds must be a finite number > 0, got "
                                 f"{chunk_seconds!r}")
            run = Run(epochs, lr, None if batch_size is None else int(batch_size),
                      V.check_flag(shuffle, "shuffle"), record_every, rule, stop, sw, val,
                      checkpoint=path, every=every, callbacks=callbacks,
                      chunk_seconds=chunk_seconds, threads=threads)
            run.best_params = (self._params.copy() if stop.restore_best
                               else self._params[:0].copy())
            # x and y are the arrays checked (not rows of them), and no callback could
            # have changed them by the run's end (they should not; a stale norm would
            # prove finite a state whose loss overflows)
            if train_rows is None and not callbacks:
                run.data_squares = (x_squares[0] if x_squares else None,
                                    y_squares[0] if y_squares else None)
            if train_rows is not None and path is not None:
                # resume takes the data fit was given and holds the same rows out again
                run.train_rows, run.given = train_rows, given
            return self._train(x, y, run, progress, on_divergence, interrupted, seed=seed,
                               optimizer=optimizer)

    def _validation_split(self, x, y, sw, validation_data, validation_fraction, seed):
        """(x, y, sw) for training, the validation set (options.Data, or None), all as
        the kernels take them, and the rows of x trained on when validation_fraction
        held some out (else None)."""
        if validation_data is not None and validation_fraction is not None:
            raise ValueError("give validation_data or validation_fraction, not both")
        if validation_data is not None:
            try:
                xv_raw, yv_raw = validation_data
            except (TypeError, ValueError):
                raise TypeError("validation_data must be a pair (X_val, y_val)") from None
            # the validation inputs take the training inputs' form (one compiled entry)
            xv = S.like(self._inputs(xv_raw, name="X_val"), x)
            yv = self._targets(yv_raw, xv.shape[0], name="y_val")
            return x, y, sw, O.Data(self._kernel_inputs(xv), yv,
                                    np.zeros(0, dtype=self.dtype)), None
        if validation_fraction is None:
            return x, y, sw, None, None
        f = validation_fraction
        if isinstance(f, (bool, np.bool_)) or not isinstance(f, numbers.Real) or not 0 < f < 1:
            raise ValueError(f"validation_fraction must be a number in (0, 1), got {f!r}")
        f = float(f)
        n = x.shape[0]
        n_val = int(round(f * n))
        if n_val < 1 or n_val >= n:
            raise ValueError(f"validation_fraction={f} of {n} samples leaves "
                             f"{n_val} for validation and {n - n_val} for training; both "
                             f"need at least one")
        key = seed if seed is not None else (self.seed if self.seed is not None else 0)
        order = np.random.default_rng(key).permutation(n)
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
        sw_t = sw[train].copy() if sw.shape[0] else sw
        sw_v = sw[val].copy() if sw.shape[0] else sw
        return (_rows_of(x, train), V.kernel_ready(y[train]), sw_t,
                O.Data(self._kernel_inputs(_rows_of(x, val)), V.kernel_ready(y[val]), sw_v),
                train)

    def _train(self, x, y, run, progress, on_divergence, interrupted, seed=None,
               optimizer=None):
        """Run ``run`` to its end holding the model's training lock (one fit at a time
        per model); the run's History."""
        with self._fit_lock.fitting("model"):
            if not self._params.flags.writeable:
                raise ValueError("the model's parameters are read-only (params."
                                 "flags.writeable is False); train a copy: "
                                 "copy.deepcopy(model)")
            if not V.all_finite(self._params):
                raise ValueError("the model's parameters contain NaN or infinity (written "
                                 "through params, weights or biases?); set finite values "
                                 "before training")
            if optimizer is not None:
                if self._opt_kind not in (None, optimizer):
                    self.reset_optimizer()  # another optimizer's state means nothing here
                self._opt_kind = optimizer
            if seed is not None:  # in place: an Ensemble's member shares this array
                self._rng_state[:] = seed_state(seed)
            job = single = SingleFit(self, x, y, run)
            if self._job_wrap is not None:  # a caller's own epoch loop around this one's
                job = self._job_wrap(job)
            try:
                outcome = drive(job, interrupted, progress,
                                desc=getattr(job, "desc", "fit"),
                                chunk_seconds=run.chunk_seconds)
            except BaseException:  # a callback's, say: its state goes to the checkpoint
                single.finish()
                raise
            single.clock(outcome.seconds, outcome.compile_seconds)
            stopped = outcome.stopped
            if stopped is None and run.stopped_early:  # resumed from its final checkpoint
                stopped = "early_stopping"
            job.finish()  # the last checkpoint, still deferring Ctrl-C
            job = getattr(job, "inner", job)
        restored = (run.stop.restore_best and np.isfinite(run.best_loss[0])
                    and stopped != "diverged")
        if restored:
            self._params[...] = run.best_params
        hist = job.history(stopped)
        if stopped is None and interrupted[0]:
            # Ctrl-C after the last chunk (the final checkpoint, this bookkeeping): the
            # run is complete, but the user asked to stop, so it is said as for any other
            stopped = hist.stopped = "interrupted"
        if stopped == "interrupted":
            warn_interrupted(run.done, run.epochs, run.checkpoint, stacklevel=4,
                             best_epoch=int(run.best_epoch[0]) if restored else None)
        elif stopped == "diverged":
            self._diverged(x, y, run, job.bad, hist, on_divergence, job.rewound_finite)
        return hist

    _job_wrap = None  # see wrapped_fits

    @contextmanager
    def wrapped_fits(self, wrap):
        """Within the block, each fit's job (fastbp/_fit.py: SingleFit) runs wrapped:
        ``wrap(job)`` returns the job the chunk driver runs, with the wrapped one as its
        ``inner``.  How the scikit-learn wrappers run scikit-learn's epoch loop on the
        driver (fastbp/sklearn.py)."""
        self._job_wrap = wrap
        try:
            yield
        finally:
            self._job_wrap = None

    def _finite_loss(self, x, y, sw):
        """Whether the loss on (x, y) with sample weights sw (or none: empty) at the
        current parameters is finite -- the loss the history records, weighted as they
        are (with weights below 1 a record can be finite where the unweighted sum is
        not).  Evaluated in blocks of EVAL_CAP samples, so memory stays small."""
        n = x.shape[0]
        with np.errstate(all="ignore"):
            for s in range(0, n, EVAL_CAP):
                loss, _ = self._kernel_loss_and_grad(x[s:s + EVAL_CAP], y[s:s + EVAL_CAP],
                                                     sw[s:s + EVAL_CAP])
                if not np.isfinite(loss):
                    return False
        return True

    def _weights_blamed(self, x, y, sw, start_finite):
        """max(sw) when the sample weights alone make the loss at the current (starting)
        parameters not finite -- it is finite without them --, else None."""
        if start_finite or not sw.shape[0] or not self._finite_loss(x, y, sw[:0]):
            return None
        return float(sw.max())

    def _adam_gradient_blamed(self, x, y, run):
        """For Adam from the run's start (the model holds the starting parameters), the
        largest gradient component, over batches of at most EVAL_CAP samples, when its
        square overflows the dtype -- Adam's second moment is then infinite at the first
        step whatever the learning rate --, else None."""
        if run.rule.optimizer != ADAM or run.done > 0:
            return None
        limit = math.sqrt(np.finfo(self.dtype).max)
        n, sw, g_max = x.shape[0], run.sw, 0.0
        with np.errstate(all="ignore"):
            for s in range(0, n, EVAL_CAP):
                _, grad = self._kernel_loss_and_grad(x[s:s + EVAL_CAP], y[s:s + EVAL_CAP],
                                                     sw[s:s + EVAL_CAP])
                g_max = max(g_max, float(np.abs(grad).max()))
        return g_max if not g_max < limit else None

    def _diverged(self, x, y, run, bad, hist, on_divergence, kept_finite=True):
        start_finite = run.done > 0 or self._finite_loss(x, y, run.sw)
        cause = divergence_cause(self.dtype, S.max_abs(x), float(np.abs(y).max()),
                                 start_finite, f"too large a learning rate: try a smaller "
                                               f"learning rate than lr={run.lr:g}",
                                 w_max=self._weights_blamed(x, y, run.sw, start_finite),
                                 g_max=self._adam_gradient_blamed(x, y, run))
        after = ("" if bad < run.epochs else
                 " (the loss after its last epoch, which this epoch would have recorded)")
        if kept_finite:
            kept = (f"The model keeps the last parameters of the run with a finite loss, "
                    f"those after {run.done} epochs, and the history ends there")
        elif run.resumed_at is None:  # the start's loss is not finite either
            kept = (f"No state of the run has a finite loss, its start included: the model "
                    f"keeps the parameters after {run.done} epochs, and the history ends "
                    f"there")
        else:  # a checkpoint saved after an update that overflowed the loss
            kept = (f"No state since the checkpoint this run resumed from (after "
                    f"{run.resumed_at} epochs, the earliest it can go back to) has a finite "
                    f"loss, the checkpoint's included: the model keeps the parameters after "
                    f"{run.done} epochs, and the history ends there; resume from an earlier "
                    f"checkpoint, or train again")
        msg = (f"training diverged at epoch {bad} (counted from 0) of this run's "
               f"{run.epochs}{after}: a NaN or infinite loss or parameter (or Adam's "
               f"second moment). {kept}; likely cause: {cause}")
        if run.checkpoint is not None:
            msg += f" (checkpoint {run.checkpoint!r} holds that state)"
        if on_divergence == "raise":
            raise DivergenceError(msg, epoch=bad, history=hist, model=self)
        warnings.warn(msg, RuntimeWarning, stacklevel=5)  # the caller of fit/resume

    # ---- copies and pickles ---------------------------------------------------------
    # Left out of pickles and copies (fastbp/_pickling.py): the lock that guards fit (a
    # fresh one is made on load) (no per-process caches to leave out).
    _TRANSIENT = ("_fit_lock", "_job_wrap")

    def __getstate__(self):
        """Everything the model is -- architecture, parameters, optimizer state and
        shuffling stream -- copied while no fit writes it, so a copy that goes on
        training ends bit-identical to the original going on training.  RuntimeError if
        another thread is training this model (a callback of the fit may copy it)."""
        return _pickling.snapshot(self)

    def __setstate__(self, state):
        _pickling.restore(self, state)
        self._params = O.aligned_copy(self._params)  # (O.aligned_copy: why)

    __copy__ = _pickling.independent_copy  # parameters are never shared by a copy

    # ---- files ----------------------------------------------------------------------
    def save(self, path):
        """Write parameters and architecture to one .npz file (no pickle)."""
        from .io import save_model
        save_model(self, path)

    # ---- other libraries (fastbp/export.py; each imported only when called) ----------
    def to_torch(self):
        """A ``torch.nn.Sequential`` of ``Linear`` and activation modules, in the model's
        dtype, whose forward pass equals ``predict`` (parameters copied)."""
        return export.to_torch(self)

    @classmethod
    def from_torch(cls, seq, loss=None):
        """The MLP of a ``torch.nn.Sequential`` of ``Linear`` layers each followed by at
        most one of Sigmoid, ReLU, Tanh, Softmax (output), ``fastbp.export.TorchExp``
        (output: what ``to_torch`` makes of an exp layer), Identity; anything else is
        refused naming the module.  ``loss`` None: "cross_entropy" after a Softmax,
        "poisson" after a TorchExp, else "mse"."""
        return export.from_torch(cls, seq, loss)

    def to_onnx(self, path):
        """Write the network as an ONNX graph (Gemm or MatMul, then the activation nodes)
        to ``path``; input "X" (N, sizes[0]), output "Y", both in the model's dtype."""
        return export.to_onnx(self, path)

    def to_sklearn(self, classes=None):
        """A fitted scikit-learn ``MLPRegressor`` / ``MLPClassifier`` predicting what this
        model predicts; ValueError saying what when scikit-learn cannot represent it."""
        return export.to_sklearn(self, classes)

    @classmethod
    def from_sklearn(cls, est):
        """The MLP of a fitted scikit-learn (or fastbp.sklearn) MLPRegressor /
        MLPClassifier."""
        return export.from_sklearn(cls, est)


def divergence_cause(dtype, x_max, y_max, start_finite, lr_hint, w_max=None, g_max=None):
    """The likely cause of a divergence, for its message.  The data are blamed only when
    they are huge for the dtype: beyond sqrt(max) / 1e4 (1.3e150 in float64, 1.8e15 in
    float32) their squares and sums of products overflow.  Otherwise a loss that is
    not finite at the starting parameters blames the sample weights when ``w_max`` (their
    largest) is given -- the loss there is finite without them --, else those
    parameters; a finite loss there with ``g_max`` given (Adam: the gradient there, whose
    square overflows) blames that gradient; anything else the learning rate (``lr_hint``
    says what to try)."""
    huge = math.sqrt(np.finfo(dtype).max) * 1e-4
    data = f"max |X| = {x_max:.3g}, max |y| = {y_max:.3g}"
    name = np.dtype(dtype).name
    if max(x_max, y_max) > huge:
        where = ("" if start_finite else
                 "the loss is not finite even at the starting parameters: ")
        return (f"{where}the data ({data}) are too large for {name} (their products and "
                f"squares overflow); scale them down")
    if not start_finite and w_max is not None:
        return (f"the sample weights (max {w_max:.3g}): the loss at the starting "
                f"parameters is finite without them but overflows {name} with them; "
                f"scale them down")
    if start_finite and g_max is not None:
        return (f"the gradient at the starting parameters (max |g| = {g_max:.3g}): its "
                f"square, Adam's second moment, overflows {name} at the first step whatever "
                f"the learning rate; set smaller parameters or scale the data down ({data})")
    if not start_finite:
        return (f"the starting parameters: the loss is not finite there although the data "
                f"are moderate ({data}); set smaller parameters (an earlier run with too "
                f"large a learning rate can leave them huge yet finite)")
    if max(x_max, y_max) > 1e4:
        return f"{lr_hint}, or scale the data down ({data})"
    return lr_hint


def _rows_of(x, rows):
    """The samples ``rows`` of the inputs x (dense or sparse), as the kernels take them."""
    return x[rows] if isinstance(x, S.Rows) else V.kernel_ready(x[rows])


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
