"""The MLP model object: validation, buffers and reporting around the fused kernels."""
import threading
import time
import warnings

import numpy as np

from . import _validation as V
from . import kernels as K
from ._chunks import first_chunk, next_chunk, sigint_deferred, warn_interrupted
from ._codes import ACTIVATIONS, LOSSES
from ._init import initial_params
from ._layout import Layout
from ._progress import make_bar
from .errors import DivergenceError
from .history import History

# predict / loss / gradient process at most this many samples per kernel batch
_EVAL_CAP = 4096


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
        return np.ascontiguousarray(x.T)

    def _targets(self, y, n):
        t = V.check_y(y, n, self.sizes[-1], self.dtype)
        V.check_targets_for_loss(t, self.loss_name)
        return np.ascontiguousarray(t.T)

    def _kernel_net(self):
        lay = self._layout
        return lay.sizes_arr, lay.w_off, lay.b_off, self._act_codes

    # ---- evaluation -----------------------------------------------------------------
    def predict(self, X):
        """Network outputs, shape (n_samples, sizes[-1]), in the model dtype."""
        xt = self._inputs(X)
        n = xt.shape[1]
        ws = K.allocate_workspace(self._layout.sizes_arr, self._layout.n_params,
                                  min(n, _EVAL_CAP), 0, self._params[:0], False)
        a_off, acts, _, _, _, _, bits, scale, _ = ws
        out = np.empty((self.sizes[-1], n), dtype=self.dtype)
        K.predict_into(self._params, *self._kernel_net(), xt, out, a_off, acts, bits, scale,
                       K.BLAS_MIN_WORK)
        return np.ascontiguousarray(out.T)

    def _loss_and_grad(self, X, y):
        xt = self._inputs(X)
        yt = self._targets(y, xt.shape[1])
        n = xt.shape[1]
        a_off, acts, deltas, grad, z_out, y_batch, bits, scale, perm = K.allocate_workspace(
            self._layout.sizes_arr, self._layout.n_params, n, n, self._params[:0], True)
        sizes, w_off, b_off, codes = self._kernel_net()
        loss = K.loss_and_gradient(self._params, sizes, w_off, b_off, codes, self._loss_code,
                                   xt, yt, grad, a_off, acts, deltas, z_out, y_batch, bits,
                                   scale, perm, K.BLAS_MIN_WORK)
        return float(loss), grad

    def loss(self, X, y):
        """The model's loss on (X, y), as a Python float."""
        return self._loss_and_grad(X, y)[0]

    def gradient(self, X, y):
        """Gradient of ``loss(X, y)``: (list of dW (n_in, n_out), list of db or None)."""
        _, grad = self._loss_and_grad(X, y)
        return self._layout.weight_views(grad), self._layout.bias_views(grad)

    # ---- training -------------------------------------------------------------------
    def fit(self, X, y, epochs=1, lr=0.01, batch_size=None, shuffle=False, seed=None,
            record_every=1, progress=False, on_divergence="raise"):
        """Train in place by backpropagation; returns a History.

        batch_size None is full-batch gradient descent (one update per epoch), 1 is
        per-sample SGD, k is mini-batch SGD (the last batch may be smaller).  shuffle
        reorders the samples every epoch from a counter-based stream: ``seed`` restarts
        it, None continues the model's stream (so fit(N) equals fit(N/2) twice).
        The loss is recorded every ``record_every`` epochs (see History).  The run goes
        in chunks of ~0.2 s: ``progress=True`` shows a bar between chunks and Ctrl-C
        stops at the end of the current chunk, returning what was trained so far.
        A non-finite loss or parameter stops training with the last finite parameters
        and raises DivergenceError (on_divergence="warn": warns and returns).
        """
        xt = self._inputs(X)
        n = xt.shape[1]
        yt = self._targets(y, n)
        epochs = V.check_positive_int(epochs, "epochs")
        lr = V.check_lr(lr)
        batch = V.check_batch_size(batch_size, n)
        record_every = V.check_positive_int(record_every, "record_every")
        seed = V.check_seed(seed)
        if on_divergence not in ("raise", "warn"):
            raise ValueError(f"on_divergence must be 'raise' or 'warn', got {on_divergence!r}")
        if not self._fit_lock.acquire(blocking=False):
            raise RuntimeError("this model is already being trained by another thread; "
                               "train a copy instead")
        try:
            if seed is not None:
                self._rng_state = K.seed_state(seed)
            return self._run(xt, yt, epochs, lr, batch, bool(shuffle), record_every,
                             progress, on_divergence)
        finally:
            self._fit_lock.release()

    def _run(self, xt, yt, epochs, lr, batch, shuffle, record_every, progress, on_divergence):
        n = xt.shape[1]
        lay = self._layout
        history = np.full(-(-epochs // record_every), np.nan)
        ws = K.allocate_workspace(lay.sizes_arr, lay.n_params, batch, n, self._params[:0],
                                  self.loss_name == "bce")
        backup = np.empty_like(self._params)
        sizes, w_off, b_off, codes = self._kernel_net()
        bar = make_bar(epochs) if progress else None
        done, stopped, bad = 0, None, -1
        chunk = first_chunk(epochs, 3 * n * lay.n_params)
        t_start = time.perf_counter()
        with sigint_deferred() as interrupted:
            while done < epochs:
                backup[...] = self._params
                t0 = time.perf_counter()
                ran, bad = K.train_epochs(
                    self._params, sizes, w_off, b_off, codes, self._loss_code, xt, yt,
                    chunk, lr, batch, shuffle, self._rng_state, done, record_every,
                    history, backup, *ws, K.BLAS_MIN_WORK)
                seconds = time.perf_counter() - t0
                done += ran
                if bar is not None:
                    last = history[(done - 1) // record_every] if done else None
                    bar.update(ran, last)
                if bad >= 0:
                    stopped = "diverged"
                    break
                if interrupted[0]:
                    stopped = "interrupted"
                    break
                chunk = next_chunk(ran, seconds, epochs - done)
        if bar is not None:
            bar.close()
        total = time.perf_counter() - t_start
        n_rec = -(-done // record_every) if bad < 0 else bad // record_every + 1
        hist = History(loss=history[:n_rec].copy(), epochs=done, record_every=record_every,
                       seconds=total, stopped=stopped)
        if stopped == "interrupted":
            warn_interrupted(done, epochs)
        elif stopped == "diverged":
            msg = (f"training diverged at epoch {bad} (a non-finite loss or parameter); the "
                   f"model keeps the last finite parameters, after epoch {done}. "
                   f"Try a smaller learning rate than lr={lr:g}.")
            if on_divergence == "raise":
                raise DivergenceError(msg, epoch=bad, history=hist)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return hist

    # ---- files ----------------------------------------------------------------------
    def save(self, path):
        """Write parameters and architecture to one .npz file (no pickle)."""
        from .io import save_model
        save_model(self, path)
