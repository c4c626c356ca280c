"""scikit-learn estimators on ``fastbp.MLP``: ``MLPRegressor`` and ``MLPClassifier``.

Drop-in replacements for ``sklearn.neural_network.MLPRegressor`` / ``MLPClassifier``:
same parameters, same fitted attributes, same training loop -- the initial weights are
drawn exactly as scikit-learn draws them (Glorot uniform from ``random_state``), the
updates are scikit-learn's, and so are the stopping rules (``tol`` / ``n_iter_no_change``
on the training loss, or on the validation score with ``early_stopping``) and the
learning-rate schedules.  With ``solver='sgd'``, ``shuffle=False`` and the same
``random_state`` the weights after N epochs equal scikit-learn's to rounding (tested to
1e-9).  The epochs themselves run in fastbp's compiled kernels, several per call.
``solver='lbfgs'`` is scikit-learn's too: SciPy's L-BFGS-B with scikit-learn's options
(``max_iter``, ``max_fun``, ``gtol=tol``), objective (L2 as ``alpha / (2 sum of sample
weights)``) and ConvergenceWarning, each evaluation of the loss and gradient one compiled
pass over the data (fastbp/_lbfgs.py); from the same weights the result equals
scikit-learn's to 1e-10 over the first ~10-20 iterations, after which rounding-level
differences in the loss (~1e-16) grow, as L-BFGS amplifies them.  scikit-learn's own
test_mlp.py passes with only its import changed (tests/test_sklearn_upstream.py).
Sparse X (CSR as it is; CSC and other formats converted to CSR) is never made dense:
the first layer reads its rows (fastbp/_sparse.py, kernels/sparse.py).  ``loss='poisson'`` is scikit-learn's: an exp output and the half Poisson
deviance (fastbp's "poisson" loss), for every solver.

What differs from scikit-learn (each is an error or a documented difference, never a
silently ignored setting):

- A bad hyper-parameter raises ``fastbp.sklearn.InvalidParameterError``, a ValueError
  and a TypeError as scikit-learn's InvalidParameterError is (not that class itself,
  which is private to scikit-learn), checked when ``fit`` starts.
- ``momentum=1`` is not available (fastbp needs momentum < 1).  With ``loss='poisson'``
  negative targets are refused (ValueError); scikit-learn's loss is NaN there.
  ``max_fun`` applies to lbfgs only (scikit-learn ignores it for sgd and adam too).
- A fit that diverges (NaN or infinite weights) stops there rather than iterating on
  NaN: without ``early_stopping`` it raises scikit-learn's ValueError, naming the epoch
  and the likely cause; with it the remaining epochs are booked as scikit-learn books
  them (NaN loss and validation score) and the best weights are restored, with a
  RuntimeWarning.
- The log-loss is computed from the logits, exactly; scikit-learn clips probabilities to
  [eps, 1 - eps] (not in its gradient).  The two differ where a true class gets a
  probability below 2.2e-16 -- for lbfgs, a line search probing such a point then takes
  another step.
- ``_optimizer`` (private in scikit-learn) is a read-only view giving
  ``learning_rate`` and ``learning_rate_init``; the state itself lives in the fastbp
  model.  ``_loss_grad_lbfgs`` (private too) computes scikit-learn's L-BFGS objective.
- ``shuffle=True`` draws its permutations from fastbp's stream (seeded from
  ``random_state``), not from numpy's: the run is reproducible but not scikit-learn's.
- sgd / adam: ``alpha`` becomes fastbp's ``l2 = alpha / batch_size``, and the fits run with
  ``epoch_loss="sample_mean"``: each batch's L2 term is divided by its own size and
  ``loss_curve_`` weights the batch losses by batch size, as scikit-learn does, also when
  the batch size does not divide the number of samples.
  Set ``n_iter_no_change`` higher, or a batch size dividing n, if that matters.
- Adam follows the paper (and PyTorch): eps is added to sqrt(v_hat); scikit-learn adds
  it to sqrt(v) before the bias correction.  That matters only for parameters whose
  gradients are about as small as eps (after 25 epochs of the tests: weights within
  2e-4 of scikit-learn's; bit-for-bit equal to rounding with the paper's form patched
  into scikit-learn).
- ``sample_weight``: weights are rescaled to mean 1 over the training set; each batch's
  gradient is then sum(w g) / batch_size, where scikit-learn divides by the batch's
  sum of weights.  Identical for full batches and lbfgs (scikit-learn's semantics
  exactly), equal in expectation for mini-batches.
- Multi-output regression and multi-label classification: fastbp's losses average over
  the outputs too while scikit-learn's gradient sums over them; the wrapper compensates
  exactly (learning rate x n_outputs for sgd, eps / n_outputs for adam, l2 / n_outputs,
  scaled loss and gradient for lbfgs).  ``loss_`` and ``loss_curve_`` are
  scikit-learn's: summed over labels for multi-label, and with alpha's L2 term whole
  for multi-output regression (the records weigh it apart from the update's l2:
  ``options.Rule.l2_loss``), so the ``tol`` / ``n_iter_no_change`` stopping rule stops
  at scikit-learn's epoch.
- ``verbose`` shows a progress bar (tqdm when installed) with the loss, and prints the
  reason training stopped.
- ``dtype``: None computes in X's precision like scikit-learn (float32 X -> float32,
  anything else float64); "float32" / "float64" force one.  A model keeps its dtype
  (``warm_start`` and ``partial_fit`` refuse to continue it with dtype set to the other):
  ``predict`` and ``predict_proba`` of a float32 model convert float64 X to float32 and
  return float32, where scikit-learn multiplies float64 X by its float32 weights and
  returns float64 (the values differ by float32 rounding, ~1e-7).  With
  ``solver="lbfgs"`` scikit-learn's ``coefs_`` come back float64 from SciPy's float64
  search even for float32 X; fastbp's stay in the model's dtype (SciPy's iterates are
  rounded to it for every evaluation).
- ``warm_start`` after an ``early_stopping`` fit: when no epoch of the new fit beats the
  best validation score so far, the weights are the best ones, as the rule says.
  scikit-learn's first fit leaves ``coefs_`` and its best-weights copy as the same
  arrays, so the second fit's training overwrites its "best" weights, and it returns
  the weights after the last epoch.
- ``warm_start`` / ``partial_fit`` continue the fitted network only: a changed
  ``hidden_layer_sizes`` or ``activation`` is a ValueError (scikit-learn keeps the old
  sizes silently, and trains the old weights under the new activation).
- ``sample_weight`` must be >= 0 (scikit-learn accepts negative weights); under
  ``early_stopping`` each part of the split needs some weight > 0.
- Ctrl-C stops a fit as every fastbp fit stops (RuntimeWarning "training interrupted"),
  where scikit-learn warns "Training interrupted by user." (a UserWarning).

Only this module imports scikit-learn (``pip install "fastbp[sklearn]"``).
"""
import copy
import functools
import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state, column_or_1d
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import type_of_target, unique_labels
    from sklearn.utils.optimize import _check_optimize_result
    from sklearn.utils.validation import check_is_fitted
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        "fastbp.sklearn needs scikit-learn, which is not installed; install it with "
        "pip install \"fastbp[sklearn]\" (or pip install scikit-learn)") from exc

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _sk_validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    _sk_validate_data = None

from . import _lbfgs
from . import _sparse
from . import _validation as V
from .model import MLP, divergence_cause

__all__ = ["MLPRegressor", "MLPClassifier", "InvalidParameterError"]

# scikit-learn's hidden activation names -> fastbp's
_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_SOLVERS = ("lbfgs", "sgd", "adam")
_STOCHASTIC_SOLVERS = ("sgd", "adam")
_LEARNING_RATES = ("constant", "invscaling", "adaptive")
# what scikit-learn's SGDOptimizer / AdamOptimizer take when made -- by fit, or by the
# first partial_fit -- and keep until the next fit, whatever set_params changes between
# partial_fit calls (_opt)
_OPTIMIZER_SETTINGS = ("solver", "learning_rate", "learning_rate_init", "power_t",
                       "momentum", "nesterovs_momentum", "beta_1", "beta_2", "epsilon")


# sparse X as scikit-learn's MLPs take it (CSR and CSC; other formats are converted to
# CSR by scikit-learn's checks); the first layer reads the rows directly (fastbp/_sparse.py)
_SPARSE = ["csr", "csc"]


def _validate_data(est, X, y="no_validation", reset=True, **kw):
    """scikit-learn's validate_data (a method before 1.6); y="no_validation" checks X
    only, y=None in a fit raises scikit-learn's "requires y" error."""
    if _sk_validate_data is not None:
        return _sk_validate_data(est, X, y, reset=reset, **kw)
    return est._validate_data(X, y, reset=reset, **kw)  # pragma: no cover


# ---- parameter checks (one place; messages name the parameter, the allowed values and
# ---- the value given) ---------------------------------------------------------------

# Labels the fast paths below take: a 1-D y of one integer, boolean or string dtype
# whose classes are of the same kind (integers that y's dtype can hold: scikit-learn
# casts the classes to y's dtype, and wraps those it cannot hold) -- type_of_target is
# "binary" or "multiclass" whatever their values.  Floats (maybe "continuous"), objects
# (maybe mixed) and the rest go through scikit-learn's functions.
def _plain_labels(y, binarizer):
    """Whether y and the fitted LabelBinarizer's classes are such plain labels, for which
    _labels_of, _binarized and _decoded equal scikit-learn's functions."""
    classes = binarizer.classes_
    if not (y.ndim == 1 and binarizer.y_type_ in ("binary", "multiclass")
            and not binarizer.sparse_input_ and len(classes) >= 2):
        return False
    kind, class_kind = y.dtype.kind, classes.dtype.kind
    if kind in "bU":
        return class_kind == kind
    if kind in "iu" and class_kind in "iu":
        info = np.iinfo(y.dtype)
        return info.min <= classes.min() and classes.max() <= info.max
    return False


def _labels_of(y, binarizer):
    """unique_labels(y): the sorted distinct labels.  For plain labels np.unique, which
    gives the same array (strings as wide as the longest, as unique_labels makes them):
    scikit-learn's checks of the label type, which cost most of a partial_fit call on a
    small batch (about 0.1 ms here), cannot fail for them."""
    if not _plain_labels(y, binarizer):
        return unique_labels(y)
    labels = np.unique(y)
    if labels.dtype.kind == "U":
        labels = labels.astype(f"U{max(1, int(np.char.str_len(labels).max()))}")
    return labels


def _binarized(binarizer, y):
    """binarizer.transform(y) as bool, y's labels all among its classes (checked before).
    For plain labels the comparison itself, the same matrix (a binary binarizer's one
    column marks classes_[1]): label_binarize's checks took about 0.6 ms of a
    partial_fit call on a batch of ten."""
    if _plain_labels(y, binarizer):
        classes = binarizer.classes_
        if binarizer.y_type_ == "binary":
            return (y == classes[1]).reshape(-1, 1)
        return y[:, None] == classes[None, :]
    return binarizer.transform(y).astype(bool)


def _decoded(binarizer, out):
    """binarizer.inverse_transform(out) of the network outputs (n,) or (n, k): the class
    of the largest output (multiclass), or classes_[out > 0.5] (binary), as scikit-learn
    computes them, without its array-API dispatch (about 50 us of a small predict)."""
    classes = binarizer.classes_
    if binarizer.sparse_input_ or len(classes) < 2:
        return binarizer.inverse_transform(out)
    if binarizer.y_type_ == "multiclass" and out.ndim == 2 and out.shape[1] == len(classes):
        return classes[np.clip(out.argmax(axis=1), 0, len(classes) - 1)]
    if binarizer.y_type_ == "binary" and out.ndim == 1:
        return classes[(out > 0.5).astype(np.intp)]
    return binarizer.inverse_transform(out)


_SEED_HIGH = int(np.iinfo(np.int32).max)  # the shuffling seed's range (_run)


@functools.lru_cache(maxsize=256)
def _first_draw(seed):
    """check_random_state(seed).randint(_SEED_HIGH): the first draw of a fresh
    RandomState (its errors too, for a seed it refuses)."""
    return int(check_random_state(seed).randint(_SEED_HIGH))


class _FirstDraw:
    """check_random_state(seed) of an int seed, for a fit that takes only the shuffling
    seed from it (_run): its first draw, remembered (_first_draw).  Any other draw makes
    the RandomState after all, past the draws already taken."""

    def __init__(self, seed):
        self.seed, self.first = seed, _first_draw(seed)
        self.taken = False
        self.state = None

    def randint(self, high, *args, **kwargs):
        if self.state is None and not self.taken and high == _SEED_HIGH and not (
                args or kwargs):
            self.taken = True
            return self.first
        return self._state().randint(high, *args, **kwargs)

    def __getattr__(self, name):  # any other use of a RandomState
        return getattr(self._state(), name)

    def _state(self):
        if self.state is None:
            self.state = check_random_state(self.seed)
            if self.taken:
                self.state.randint(_SEED_HIGH)
        return self.state


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)


class InvalidParameterError(ValueError, TypeError):
    """A hyper-parameter of the wrong type or value: both a ValueError and a TypeError,
    as scikit-learn's own InvalidParameterError is, so that code written for either
    estimator catches it the same way."""


def _need(ok, name, expected, value):
    if not ok:
        raise InvalidParameterError(f"{name} must be {expected}, got {value!r}")


def _hidden_sizes(value):
    if _is_int(value):
        sizes = [value]
    else:
        try:
            sizes = list(value)
        except TypeError:
            raise InvalidParameterError(f"hidden_layer_sizes must be an int or a sequence "
                                        f"of ints, got {value!r}") from None
    for s in sizes:
        _need(_is_int(s) and s >= 1, "hidden_layer_sizes",
              "an int >= 1 or a sequence of ints >= 1", value)
    return [int(s) for s in sizes]


class _BaseMLP(BaseEstimator):
    """What MLPRegressor and MLPClassifier share: checks, initialization, the epoch loop.

    Fitted state: ``_model`` (the fastbp.MLP; ``coefs_`` / ``intercepts_`` are views into
    its flat parameter vector), ``_lr`` (scikit-learn's current SGD learning rate) and
    scikit-learn's own attributes.
    """

    # ---- checks -----------------------------------------------------------------------
    def _check_params(self):
        """Every hyper-parameter checked; returns the hidden layer sizes as a list."""
        sizes = _hidden_sizes(self.hidden_layer_sizes)
        _need(self.activation in _ACTIVATIONS, "activation",
              f"one of {sorted(_ACTIVATIONS)}", self.activation)
        _need(self.solver in _SOLVERS, "solver", "'lbfgs', 'sgd' or 'adam'", self.solver)
        _need(_is_real(self.alpha) and self.alpha >= 0, "alpha", "a number >= 0", self.alpha)
        _need(self.batch_size == "auto" if isinstance(self.batch_size, str)
              else _is_int(self.batch_size) and self.batch_size >= 1,
              "batch_size", "'auto' or an int >= 1", self.batch_size)
        _need(self.learning_rate in _LEARNING_RATES, "learning_rate",
              f"one of {list(_LEARNING_RATES)}", self.learning_rate)
        _need(_is_real(self.learning_rate_init) and self.learning_rate_init > 0,
              "learning_rate_init", "a number > 0", self.learning_rate_init)
        _need(_is_real(self.power_t) and self.power_t >= 0, "power_t", "a number >= 0",
              self.power_t)
        _need(_is_int(self.max_iter) and self.max_iter >= 1, "max_iter", "an int >= 1",
              self.max_iter)
        _need(_is_real(self.tol) and self.tol >= 0, "tol", "a number >= 0", self.tol)
        _need(_is_real(self.momentum) and 0 <= self.momentum <= 1, "momentum",
              "a number in [0, 1]", self.momentum)
        if self.solver == "sgd" and self.momentum == 1:
            raise InvalidParameterError("momentum=1 is not supported by fastbp (the "
                                        "velocity would never decay); use momentum < 1")
        _need(_is_real(self.validation_fraction) and 0 <= self.validation_fraction < 1,
              "validation_fraction", "a number in [0, 1)", self.validation_fraction)
        for name in ("beta_1", "beta_2"):
            v = getattr(self, name)
            _need(_is_real(v) and 0 <= v < 1, name, "a number in [0, 1)", v)
        _need(_is_real(self.epsilon) and self.epsilon > 0, "epsilon", "a number > 0",
              self.epsilon)
        n = self.n_iter_no_change
        _need((_is_int(n) and n >= 1) or (isinstance(n, numbers.Real) and n == np.inf),
              "n_iter_no_change", "an int >= 1 or np.inf", n)
        _need(_is_int(self.max_fun) and self.max_fun >= 1, "max_fun", "an int >= 1",
              self.max_fun)
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
            v = getattr(self, name)
            _need(isinstance(v, (bool, np.bool_)), name, "True or False", v)
        _need(isinstance(self.verbose, (bool, np.bool_, numbers.Integral)), "verbose",
              "a bool or an int", self.verbose)
        _need(self.verbose >= 0, "verbose", "True, False or an int >= 0", self.verbose)
        self._dtype()
        return sizes

    def _dtype(self):
        """The dtype parameter as np.float64 / np.float32, or None (follow X)."""
        if self.dtype is None:
            return None
        try:
            name = np.dtype(self.dtype).name
        except TypeError:
            name = None
        if name not in ("float64", "float32"):
            raise InvalidParameterError(f"dtype must be None (X's precision), 'float64' or "
                                        f"'float32', got {self.dtype!r}")
        return np.dtype(name).type

    def _input_dtype(self, reset):
        """What validate_data converts X to: the fitted model's dtype when continuing."""
        if not reset and hasattr(self, "_model"):
            return self._model.dtype.type
        d = self._dtype()
        return (np.float64, np.float32) if d is None else d

    # ---- the network ------------------------------------------------------------------
    def _network(self, dtype=None):
        """The fastbp model, holding the current ``coefs_`` / ``intercepts_``.

        scikit-learn lets users assign them, as whole lists or item by item, in any
        order: arrays that are not the model's views are written into it (all checked
        first, then all written) and the attributes become views again.  An estimator
        whose fitted attributes were set by hand, with no model yet (scikit-learn's own
        test_fit builds one that way), gets a model made from them, in ``dtype`` (None:
        the dtype parameter, else the arrays' precision).
        """
        if "_model" not in self.__dict__:
            return self._model_from_attributes(dtype)
        m = self._model
        writes = []
        for attr, model_views in (("coefs_", "weights"), ("intercepts_", "biases")):
            arrays = getattr(self, attr)
            known = self._views[attr]
            if len(arrays) == len(known) and all(a is v for a, v in zip(arrays, known)):
                continue
            views = getattr(m, model_views)  # (new views: made only when needed)
            if len(arrays) != len(views):
                raise ValueError(f"{attr} has {len(arrays)} arrays, the network "
                                 f"{len(views)} layers")
            for l, (a, v) in enumerate(zip(arrays, views)):
                a = np.array(a, dtype=m.dtype)  # a copy: a may be a view of the model
                if a.shape != v.shape:
                    raise ValueError(f"{attr}[{l}] has shape {a.shape}, expected "
                                     f"{v.shape}")
                writes.append((v, a))
        for v, a in writes:
            v[...] = a
        if writes:
            self._point_views()
        return m

    def _model_from_attributes(self, dtype):
        coefs = [np.asarray(c) for c in self.coefs_]
        intercepts = [np.asarray(b) for b in self.intercepts_]
        if dtype is None:
            dtype = self._dtype()
        if dtype is None:
            single = all(a.dtype == np.float32 for a in coefs + intercepts)
            dtype = np.float32 if single else np.float64
        if not hasattr(self, "n_outputs_"):
            self.n_outputs_ = coefs[-1].shape[1] if coefs[-1].ndim == 2 else 1
        if not hasattr(self, "n_layers_"):
            self.n_layers_ = len(coefs) + 1
        if not hasattr(self, "out_activation_"):
            self.out_activation_ = self._output_activation()
        for name in ("n_iter_", "t_"):
            if not hasattr(self, name):
                setattr(self, name, 0)
        acts, loss = self._fastbp_output()
        hidden = [_ACTIVATIONS[self.activation]] * (len(coefs) - 1)
        self._model = MLP.from_weights(coefs, intercepts, activation=hidden + [acts],
                                       loss=loss, dtype=np.dtype(dtype).name)
        self._point_views()
        return self._model

    def _point_views(self):
        m = self._model
        self.coefs_ = m.weights
        self.intercepts_ = m.biases
        self._views = {"coefs_": list(self.coefs_), "intercepts_": list(self.intercepts_)}

    def _stochastic_state(self, reset):
        """scikit-learn's bookkeeping of the sgd / adam epoch loop: new on a first fit
        (``reset``), else kept, and made where missing (a warm start after lbfgs, or
        attributes set by hand)."""
        state = {"loss_curve_": [], "_no_improvement_count": 0}
        if self.early_stopping:
            state.update(validation_scores_=[], best_validation_score_=-np.inf,
                         best_loss_=None)
        else:
            state.update(best_loss_=np.inf, validation_scores_=None,
                         best_validation_score_=None)
        for name, value in state.items():
            if reset or not hasattr(self, name):
                setattr(self, name, value)
        if reset or not hasattr(self, "_best_params"):
            self._best_params = self._model.params.copy()
        # continuing with early stopping needs somewhere to keep scores (warm start)
        if self.early_stopping and self.validation_scores_ is None:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf

    def _initialize(self, n_outputs, layer_units, dtype, rs):
        """First fit: scikit-learn's initial weights (same draws from ``rs``) in a new
        fastbp model, and scikit-learn's bookkeeping attributes."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = n_outputs
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._output_activation()
        factor = 2.0 if self.activation == "logistic" else 6.0
        weights, biases = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            weights.append(rs.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype))
            biases.append(rs.uniform(-bound, bound, fan_out).astype(dtype))
        acts, loss = self._fastbp_output()
        hidden = [_ACTIVATIONS[self.activation]] * (self.n_layers_ - 2)
        self._model = MLP.from_weights(weights, biases, activation=hidden + [acts],
                                       loss=loss, dtype=np.dtype(dtype).name)
        self._point_views()
        if self.solver in _STOCHASTIC_SOLVERS:  # lbfgs fits have no loss_curve_ etc.
            self._stochastic_state(reset=True)

    def _check_architecture(self, sizes, n_features, n_outputs):
        """warm_start / partial_fit continue the fitted network: it must be the one the
        current parameters describe."""
        want = [n_features] + sizes + [n_outputs]
        have = list(self._model.sizes)
        if want != have:
            raise ValueError(f"warm_start / partial_fit continue the fitted network of "
                             f"layer sizes {have}, but the parameters and data now give "
                             f"{want}; fit with warm_start=False to start a new one")
        hidden = self._model.activations[:-1]
        if hidden and hidden[0] != _ACTIVATIONS[self.activation]:
            raise ValueError(f"warm_start / partial_fit continue the fitted network with "
                             f"{hidden[0]!r} hidden units but activation="
                             f"{self.activation!r}; fit with warm_start=False")
        wanted = self._dtype()  # None (X's precision): the fitted network keeps its own
        if wanted is not None and np.dtype(wanted) != self._model.dtype:
            raise ValueError(f"warm_start / partial_fit continue the fitted network in "
                             f"{self._model.dtype.name}, but dtype={self.dtype!r}; fit "
                             f"with warm_start=False to start a new one in "
                             f"{np.dtype(wanted).name}")

    # ---- fitting ----------------------------------------------------------------------
    def _opt(self, name):
        """The optimizer setting ``name`` (_OPTIMIZER_SETTINGS) as the optimizer made by
        the last fit or first partial_fit holds it: set_params between partial_fit calls
        changes it at the next fit, as in scikit-learn."""
        settings = getattr(self, "_optimizer_settings", None)
        return getattr(self, name) if settings is None else settings[name]

    def _fit(self, X, y, sample_weight=None, incremental=False):
        sizes = self._check_params()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        if X.dtype != np.float64:  # X is in the network's dtype (_input_dtype)
            # targets too large for float32: MLP.fit's message, before the cast to the
            # network's dtype (below) turns them into infinities
            V.as_float_array(Y, "y", X.dtype)
        n_samples, n_features = X.shape
        sw = None if sample_weight is None else _check_sample_weight(sample_weight, n_samples)
        # scikit-learn draws from a RandomState made afresh from random_state at each fit;
        # from an int that costs 90 us (MT19937's seeding), most of a partial_fit's own
        # time, for one draw: the shuffling seed, which _first_draw remembers
        later = not first_pass and not self.early_stopping and _is_int(self.random_state)
        rs = _FirstDraw(self.random_state) if later else check_random_state(self.random_state)
        if first_pass:
            self._initialize(Y.shape[1], [n_features] + sizes + [Y.shape[1]], X.dtype, rs)
        model = self._network(X.dtype)
        if not first_pass:
            self._check_architecture(sizes, n_features, Y.shape[1])
        if self.solver == "lbfgs":
            self._run_lbfgs(model, X, Y, sw)
            return self
        self._stochastic_state(reset=False)
        if not incremental or not hasattr(self, "_lr"):
            # scikit-learn makes a new optimizer here: fresh velocities / moments, and the
            # settings it keeps until the next fit
            model.reset_optimizer()
            self._optimizer_settings = {name: getattr(self, name)
                                        for name in _OPTIMIZER_SETTINGS}
            self._lr = self._lr_init = float(self.learning_rate_init)
        val = None
        if self.early_stopping:
            X, Y, sw, val = self._split_validation(X, Y, sw, rs)
        Y = Y.astype(model.dtype, copy=False)
        self._run(model, X, Y, sw, val, incremental, rs)
        return self

    # ---- L-BFGS -------------------------------------------------------------------------
    def _lbfgs_problem(self, model, X, Y, sw):
        """(xt, yt, sample weights, objective options) of scikit-learn's L-BFGS objective:
        the loss with sample weights w is sum(w * loss) / sum(w) (fastbp divides by n:
        the weights are rescaled to mean 1), L2 is alpha / (2 sum(w)) * sum ||W||^2, and
        over k outputs the loss is scaled as scikit-learn sums (see the module notes)
        while the gradient is always k times fastbp's, as scikit-learn's _backprop
        computes it (for squared error that is k times the gradient of its loss)."""
        n = X.shape[0]
        xt = model._inputs(X)
        yt = model._targets(np.asarray(Y, dtype=model.dtype), n)
        w_sum = float(n) if sw is None else float(np.sum(sw))
        w = None if sw is None else np.asarray(sw, dtype=np.float64) * (n / w_sum)
        sw_kernel = V.check_sample_weight(w, n, model.dtype)
        options = dict(l2=float(self.alpha) / w_sum, loss_scale=self._loss_scale(),
                       grad_scale=float(self._sum_outputs()))
        return xt, yt, sw_kernel, options

    def _run_lbfgs(self, model, X, Y, sw):
        """scikit-learn's _fit_lbfgs on fastbp's compiled loss and gradient."""
        xt, yt, sw_kernel, options = self._lbfgs_problem(model, X, Y, sw)
        iprint = 1 if (self.verbose is True or self.verbose >= 1) else -1
        run = _lbfgs.train(model, xt, yt, sw_kernel, max_iter=self.max_iter,
                           max_fun=self.max_fun, tol=float(self.tol),
                           progress=bool(self.verbose), iprint=iprint,
                           bar_desc=type(self).__name__, **options)
        if run.stopped == "diverged":
            raise ValueError("Solver produced non-finite parameter weights. The input data "
                             "may contain large values and need to be preprocessed. "
                             f"(fastbp: {run.divergence_message(model, xt, yt)})")
        if run.stopped == "interrupted":
            warnings.warn("Training interrupted by user.")
            self.n_iter_ = run.iterations
            self.loss_ = run.last_loss
            return
        self.n_iter_ = _check_optimize_result("lbfgs", run.result, self.max_iter)
        self.loss_ = float(run.result.fun)

    def _loss_grad_lbfgs(self, packed_coef_inter, X, y, sample_weight, *buffers):
        """scikit-learn's private L-BFGS objective, for code that calls it (scikit-learn's
        own test_gradient does): like scikit-learn's, it writes ``packed_coef_inter``
        (scikit-learn's packing: every coefs_ raveled, then every intercepts_) into the
        network and returns (loss, gradient) in that packing, here from the compiled
        kernels; ``y`` is the encoded target (n_samples, n_outputs); the buffers that
        scikit-learn passes are not needed."""
        model = self._network()
        order = _sklearn_order(model._layout)
        params = np.empty(model.params.shape, dtype=np.float64)
        params[order] = packed_coef_inter
        model.params = params
        if not _sparse.is_sparse(X):
            X = np.asarray(X, dtype=model.dtype)
        Y = np.asarray(y, dtype=model.dtype)
        Y = Y.reshape(-1, 1) if Y.ndim == 1 else Y
        sw = None if sample_weight is None else np.asarray(sample_weight)
        xt, yt, sw_kernel, options = self._lbfgs_problem(model, X, Y, sw)
        objective = _lbfgs.Objective(model, xt, yt, sw_kernel, evaluations=1, **options)
        loss, grad = objective(params)
        return loss, grad[order]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # CSR / CSC X, never made dense (fastbp/_sparse.py)
        return tags

    def _check_solver(self):
        """partial_fit exists for the stochastic solvers only (scikit-learn's rule)."""
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True

    @property
    def _optimizer(self):
        """Read-only: what scikit-learn's private ``_optimizer`` reports of the sgd / adam
        state (its own tests read ``_optimizer.learning_rate``).  Present once a fit with
        a stochastic solver has made an optimizer, as in scikit-learn."""
        if "_lr" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute "
                                 f"'_optimizer'")
        return _OptimizerView(self)

    def _split_validation(self, X, Y, sw, rs):
        """scikit-learn's split (same call, same random state, so the same rows)."""
        stratify = Y if (self._is_classifier and self.n_outputs_ == 1) else None
        arrays = (X, Y) if sw is None else (X, Y, sw)
        parts = train_test_split(*arrays, random_state=rs, test_size=self.validation_fraction,
                                 stratify=stratify)
        X_train, X_val, Y_train, Y_val = parts[:4]
        sw_train, sw_val = (None, None) if sw is None else parts[4:]
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase "
                             "'validation_fraction' or the size of your dataset.")
        # each part is weighed by its own weights: a part whose weights are all zero
        # has nothing to train on (a division by zero) or nothing to score
        for part, w in (("training", sw_train), ("validation", sw_val)):
            if w is not None and not w.sum() > 0:
                raise ValueError(
                    f"sample_weight is zero on every sample of the {part} part of the "
                    f"early_stopping split (validation_fraction="
                    f"{self.validation_fraction!r}): give some of its samples weight > 0, "
                    f"or change random_state or validation_fraction")
        return X_train, Y_train, sw_train, (X_val, Y_val, sw_val)

    def _fit_options(self, n_samples, sw):
        """(batch size, the fastbp fit keywords that stay fixed during one fit, k): k is
        the number of outputs scikit-learn's gradient sums over where fastbp's loss
        averages (see the module notes)."""
        if self.batch_size == "auto":
            batch = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                              "It is going to be clipped")
            batch = int(np.clip(self.batch_size, 1, n_samples))
        k = self._sum_outputs()  # scikit-learn's gradient sums over k outputs
        kw = {}
        w_scale = 1.0
        if sw is not None:
            w_scale = float(sw.mean())
            kw["sample_weight"] = sw / w_scale
        # alpha / (weight of a batch), divided by k as the whole gradient is
        l2 = float(self.alpha) / (batch * w_scale * k)
        if l2 != 0.0:
            kw["l2"] = l2
        if self._opt("solver") == "adam":
            kw.update(optimizer="adam", beta1=float(self._opt("beta_1")),
                      beta2=float(self._opt("beta_2")), eps=float(self._opt("epsilon")) / k)
        elif self._opt("momentum") != 0:
            kw.update(momentum=float(self._opt("momentum")),
                      nesterov=bool(self._opt("nesterovs_momentum")))
        return batch, kw, k

    def _run(self, model, X, Y, sw, val, incremental, rs):
        """scikit-learn's epoch loop (``_fit_stochastic``) on fastbp's chunk driver: one
        fastbp run of max_iter epochs (one for partial_fit), its chunks cut where
        scikit-learn could stop or change its learning rate (_EpochLoop)."""
        n = X.shape[0]
        batch, kw, k = self._fit_options(n, sw)
        total = 1 if incremental else self.max_iter
        seed = int(rs.randint(_SEED_HIGH)) if self.shuffle else None
        self.n_iter_ = 0
        loop = _EpochLoop(self, model, X, Y, val, n, k, total, incremental)
        try:
            with model.wrapped_fits(loop.wrap):
                model.fit(X, Y, epochs=total, lr=loop.lr(), batch_size=batch,
                          shuffle=bool(self.shuffle), seed=seed, epoch_loss="sample_mean",
                          progress=bool(self.verbose), **kw)
        finally:
            if self.early_stopping:  # scikit-learn ends on the best validation score
                model.params = self._best_params
        # after a divergence (early_stopping) the remaining epochs were booked up to
        # max_iter, as scikit-learn runs them: it warns there too
        if (not loop.stopped or loop.diverged) and not incremental \
                and self.n_iter_ == self.max_iter:
            warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                          "optimization hasn't converged yet." % self.max_iter,
                          ConvergenceWarning)

    def _diverged(self, model, X, Y, epoch, at_start, val, n, sgd, total, incremental):
        """After a NaN or infinity in ``epoch`` (of this fit, from 0).  scikit-learn keeps
        iterating on non-finite weights: without early stopping its fit then fails
        (ValueError), with it every later epoch scores NaN and the best weights seen are
        restored.  fastbp stopped at the divergence (the model holds the last finite
        parameters): it raises the same error, or books the remaining epochs as
        scikit-learn's NaN epochs.  Returns False (for _run's loop)."""
        start_finite = True
        if at_start:  # the model is back at this fit's starting parameters
            try:
                start_finite = bool(np.isfinite(model.loss(X, Y)))
            except FloatingPointError:
                start_finite = False
        cause = divergence_cause(
            model.dtype, float(abs(X).max()), float(np.abs(Y).max()), start_finite,
            f"too large a learning rate: try a smaller learning_rate_init than "
            f"{self.learning_rate_init:g}")
        where = ("in this partial_fit call's epoch" if incremental else
                 f"at epoch {epoch} (counted from 0) of this fit (max_iter={self.max_iter})")
        msg = f"fastbp: training diverged {where}; likely cause: {cause}"
        if not self.early_stopping:
            raise ValueError("Solver produced non-finite parameter weights. The input data "
                             f"may contain large values and need to be preprocessed. ({msg})")
        warnings.warn(f"{msg}. As scikit-learn does, the remaining epochs score NaN and "
                      f"the best weights are restored.", RuntimeWarning, stacklevel=5)
        while self.n_iter_ < total:
            if self._end_epoch(np.nan, n, val, sgd, score=np.nan):
                break
        return False

    def _end_epoch(self, loss, n, val, sgd, score=None):
        """scikit-learn's bookkeeping after one epoch; True when training stops.
        ``score``: the validation score when known (NaN after a divergence)."""
        self.n_iter_ += 1
        self.loss_ = loss
        self.t_ += n
        self.loss_curve_.append(loss)
        if self.verbose and self.verbose > 1:
            print("Iteration %d, loss = %.8f" % (self.n_iter_, loss))
        self._update_no_improvement_count(val, score)
        if sgd and self._opt("learning_rate") == "invscaling":
            self._lr = self._lr_init / (self.t_ + 1) ** self._opt("power_t")
        if self._no_improvement_count <= self.n_iter_no_change:
            return False
        what = ("Validation score" if self.early_stopping else "Training loss")
        msg = (f"{what} did not improve more than tol={self.tol:f} for "
               f"{self.n_iter_no_change} consecutive epochs.")
        if sgd and self._opt("learning_rate") == "adaptive":
            if self._lr > 1e-6:
                self._lr /= 5.0
                self._no_improvement_count = 0
                if self.verbose:
                    print(msg + " Setting learning rate to %f" % self._lr)
                return False
            msg += " Learning rate too small."
        if self.verbose:
            print(msg + " Stopping.")
        return True

    def _update_no_improvement_count(self, val, score=None):
        if val is not None:
            if score is None:
                score = self._validation_score(*val)
            self.validation_scores_.append(score)
            if self.verbose and self.verbose > 1:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = self._model.params.copy()
        else:
            best = np.inf if self.best_loss_ is None else self.best_loss_
            if self.loss_curve_[-1] > best - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < best:
                self.best_loss_ = self.loss_curve_[-1]

    def _validation_score(self, X_val, Y_val, sw_val):
        """scikit-learn's early-stopping score (``_score``: accuracy / R^2, NaN for
        non-finite outputs) from the network outputs and the encoded targets Y_val,
        without scikit-learn's input checks, which took most of an epoch's time on small
        data."""
        try:
            out = self._model.predict(X_val)
        except FloatingPointError:
            return np.nan
        if not np.isfinite(out).all():
            return np.nan
        return self._score_outputs(Y_val, out, sw_val)

    def fit(self, X, y, sample_weight=None):
        """Fit the model to X (n_samples, n_features) and y; returns self.

        sample_weight: (n_samples,) non-negative weights, or None (see the module notes).
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    # ---- prediction -------------------------------------------------------------------
    def _forward(self, X, check_input=True):
        """Network outputs (n_samples, n_outputs_) in the model's dtype."""
        if "_model" not in self.__dict__:  # (a model is made by fit, or from a fitted pickle)
            check_is_fitted(self)
        model = self._network()
        if check_input:
            if self._plain_inputs(X, model):
                return model._outputs(V.kernel_ready(X))
            X = _validate_data(self, X, reset=False, accept_sparse=_SPARSE,
                               dtype=model.dtype.type)
        return model.predict(X)

    def _plain_inputs(self, X, model):
        """Whether X is an input that scikit-learn's validate_data would return as it
        is, without a warning: an ndarray (not a subclass) of the model's dtype, 2-D, with
        samples and the n_features_in_ columns the model takes, finite, given to an
        estimator fitted without feature names.  Those are taken as they are; the rest
        go through validate_data, which converts them or raises scikit-learn's errors.
        (validate_data took about 70 of a 10-row predict's 115 us.)"""
        return (type(X) is np.ndarray and X.ndim == 2 and X.dtype == model.dtype
                and X.shape[0] > 0 and X.shape[1] == model.sizes[0]
                and X.shape[1] == self.__dict__.get("n_features_in_")
                and "feature_names_in_" not in self.__dict__ and V.all_finite(X))

    def _validated_pair(self, X, y, reset, **kw):
        """validate_data(X, y), or (X, y) as they are where it would return them so: a
        fit that continues (partial_fit, warm_start) on plain inputs (_plain_inputs) and
        plain targets (_plain_targets).  (validate_data was about 40% of a 10-row
        partial_fit.)"""
        if not reset and "_model" in self.__dict__ and self._plain_inputs(X, self._model) \
                and type(y) is np.ndarray and y.shape[:1] == X.shape[:1] \
                and self._plain_targets(y):
            return X, y
        return _validate_data(self, X, y, reset=reset, **kw)

    def _score_with_function(self, X, y, sample_weight, score_function):
        try:
            y_pred = self._predict(X, check_input=False)
        except FloatingPointError:  # fastbp refuses to return infinities
            return np.nan
        if np.issubdtype(np.asarray(y_pred).dtype, np.floating) and \
                not np.isfinite(y_pred).all():
            return np.nan
        return score_function(y, y_pred, sample_weight=sample_weight)

    # ---- pickling: the fastbp.MLP travels whole (its own __getstate__: parameters,
    # ---- optimizer state, shuffling stream); coefs_ / intercepts_ are views of its
    # ---- parameters, so they are left out and pointed at the loaded model again -------
    def __getstate__(self):
        if "_model" in self.__dict__:
            self._network()  # coefs_ / intercepts_ assigned since: into the parameters
        state = dict(super().__getstate__())
        for key in ("coefs_", "intercepts_", "_views"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        state = dict(state)
        net = state.pop("_fastbp_network", None)  # pickles of earlier fastbp wrappers
        super().__setstate__(state)
        if net is not None:
            sizes = net["sizes"]
            zeros = [np.zeros((a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
            model = MLP.from_weights(zeros, [np.zeros(b) for b in sizes[1:]],
                                     activation=net["activations"], loss=net["loss"],
                                     dtype=net["dtype"])
            model.params = np.array(net["params"])
            if "optimizer_state" in net:
                _set_optimizer_state(model, net["optimizer_state"])
            self._model = model
        if "_model" in self.__dict__:
            self._point_views()

    def __copy__(self):
        # a shallow copy would share the network (and its fit lock) with the original:
        # training one would change both
        return copy.deepcopy(self)

    def __sklearn_is_fitted__(self):
        return "_model" in self.__dict__ or hasattr(self, "coefs_")


class _OptimizerView:
    """What scikit-learn's SGDOptimizer / AdamOptimizer report as ``learning_rate`` and
    ``learning_rate_init``, read from the estimator's state (fastbp keeps the optimizer
    in its model).  Read-only: setting an attribute raises AttributeError."""

    __slots__ = ("_est",)

    def __init__(self, est):
        object.__setattr__(self, "_est", est)

    def __setattr__(self, name, value):
        raise AttributeError("_optimizer is a read-only view in fastbp: the optimizer "
                             "state lives in the fastbp model")

    @property
    def learning_rate_init(self):
        return self._est._lr_init

    @property
    def learning_rate(self):
        """sgd: the current rate (invscaling / adaptive change it after each epoch);
        adam: scikit-learn's bias-corrected step size after t updates."""
        est = self._est
        if est._opt("solver") != "adam":
            return est._lr
        t = int(est._model._opt_step[0])
        if t == 0:
            return est._lr_init
        return (est._lr_init * np.sqrt(1 - float(est._opt("beta_2")) ** t)
                / (1 - float(est._opt("beta_1")) ** t))


def _sklearn_order(layout):
    """Indices into fastbp's flat parameters of scikit-learn's packed vector: every
    weight block (row-major, as both store it), then every bias block."""
    weights = [np.arange(o, o + a * b) for o, (a, b) in zip(layout.w_off, layout.shapes)]
    biases = [np.arange(o, o + b) for o, (_, b) in zip(layout.b_off, layout.shapes)]
    return np.concatenate(weights + biases)


def _set_optimizer_state(model, state):
    """Put back what ``model.optimizer_state`` returned (a read-only property of copies;
    MLP has no public setter, so this writes the arrays it keeps)."""
    model._opt_kind = state["optimizer"]
    model._opt_step[0] = state["step"]
    if state["optimizer"] == "adam":
        model._opt_state[0] = state["m"]
        model._opt_state[1] = state["v"]
    else:
        model._opt_state[0] = state["velocity"]


def _check_sample_weight(sample_weight, n_samples):
    sw = np.asarray(sample_weight, dtype=np.float64)
    if sw.ndim == 0:
        sw = np.full(n_samples, float(sw))
    if sw.shape != (n_samples,):
        raise ValueError(f"sample_weight.shape == {sw.shape}, expected ({n_samples},)")
    if not np.isfinite(sw).all():
        raise ValueError("sample_weight contains NaN or infinity")
    if (sw < 0).any():
        raise ValueError("Negative values in data passed to sample_weight")
    if not sw.sum() > 0:
        raise ValueError("Sample weights must contain at least one non-zero number "
                         "(sample_weight sums to zero)")
    return sw


_PARAMS_DOC = """
    Parameters are scikit-learn's (see the module docstring for what differs), plus:

    dtype : None, "float64" or "float32"
        The network's precision; None follows X (float32 stays float32).
    verbose : bool or int
        A progress bar while fitting; > 1 also prints scikit-learn's per-epoch lines.
"""


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by fastbp; minimizes scikit-learn's
    squared error (half the mean of squares) with an identity output, or with
    ``loss='poisson'`` its half Poisson deviance with an exp output (log link; y >= 0).
    """

    _is_classifier = False

    # loss first, as scikit-learn's MLPRegressor takes it (a positional call means the
    # same there and here)
    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto",
                 learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000, dtype=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.loss = loss
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype

    def _check_params(self):
        _need(self.loss in ("squared_error", "poisson"), "loss",
              "'squared_error' or 'poisson'", self.loss)
        return super()._check_params()

    def _output_activation(self):
        return "exp" if self.loss == "poisson" else "identity"

    def _fastbp_output(self):
        if self.loss == "poisson":
            return "exp", "poisson"
        return "identity", "half_mse"

    def _sum_outputs(self):
        # scikit-learn's gradient sums over the outputs; half_mse averages over them,
        # poisson (as scikit-learn's poisson_loss) sums
        return 1 if self.loss == "poisson" else self.n_outputs_

    def _loss_scale(self):
        # half_mse is scikit-learn's squared_loss (mean over outputs too), poisson its
        # poisson_loss
        return 1.0

    @staticmethod
    def _plain_targets(y):
        """Whether validate_data(..., multi_output=True, y_numeric=True) returns the
        ndarray y as it is: 1-D, or 2-D with columns, of booleans, integers or finite
        floats."""
        return (y.ndim == 1 or (y.ndim == 2 and y.shape[1] > 0)) and (
            y.dtype.kind in "biu" or (y.dtype.kind == "f" and V.all_finite(y)))

    def _validate_input(self, X, y, incremental, reset):
        X, y = self._validated_pair(X, y, reset, accept_sparse=_SPARSE, multi_output=True,
                                    y_numeric=True, dtype=self._input_dtype(reset))
        if type(y).__module__.startswith("scipy.sparse"):
            # scikit-learn accepts it here and fails later with a LinAlgError
            raise TypeError("y is a scipy.sparse matrix; MLPRegressor's targets must be "
                            "a dense array: convert them with y.toarray()")
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        return X, np.asarray(Y, dtype=np.float64)

    @staticmethod
    def _score_outputs(Y, out, sw):
        """r2_score(Y, out, sample_weight=sw) (uniform average over outputs, finite
        scores forced as in scikit-learn), in scikit-learn's arithmetic."""
        w = 1.0 if sw is None else sw[:, None]
        num = (w * (Y - out) ** 2).sum(axis=0)
        den = (w * (Y - np.average(Y, axis=0, weights=sw)) ** 2).sum(axis=0)
        scores = np.ones(Y.shape[1])
        valid = (num != 0) & (den != 0)
        scores[valid] = 1 - num[valid] / den[valid]
        scores[(num != 0) & (den == 0)] = 0.0
        return float(np.average(scores))

    def predict(self, X):
        """Predicted values, (n_samples,) for one output, else (n_samples, n_outputs)."""
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y = self._forward(X, check_input)
        return y.ravel() if y.shape[1] == 1 else y

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, r2_score)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing the fitted network (or starting one)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by fastbp; minimizes the log-loss.

    Binary: one logistic output with binary cross-entropy; multi-class: softmax with
    cross-entropy; multi-label (a 0/1 indicator matrix y): one logistic output per label.
    """

    _is_classifier = True

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000, dtype=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype

    def _output_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _fastbp_output(self):
        if self.out_activation_ == "softmax":
            return "softmax", "cross_entropy"
        return "sigmoid", "bce"

    def _sum_outputs(self):
        # multi-label: scikit-learn sums the log-loss over labels, fastbp's bce averages
        return self.n_outputs_ if self.out_activation_ == "logistic" else 1

    def _loss_scale(self):
        return float(self._sum_outputs())

    @staticmethod
    def _plain_targets(y):
        """Whether validate_data(..., multi_output=True) returns the ndarray y as it is:
        1-D labels of one boolean, integer or string dtype (the labels _plain_labels
        encodes)."""
        return y.ndim == 1 and y.dtype.kind in "biuU"

    def _validate_input(self, X, y, incremental, reset):
        X, y = self._validated_pair(X, y, reset, accept_sparse=_SPARSE, multi_output=True,
                                    dtype=self._input_dtype(reset))
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = _labels_of(y, self._label_binarizer)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in "
                        f"the previous call to fit. Previously got {self.classes_}, `y` "
                        f"has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` "
                                 f"has {self.classes_}. 'y' has {classes}.")
        # bool, as scikit-learn's: the stratified split names the classes of these
        # labels in its errors ('True', not '1.0')
        Y = _binarized(self._label_binarizer, y)
        return X, Y

    def _score_outputs(self, Y, out, sw):
        """accuracy_score of the predicted labels (``predict``'s thresholds) against the
        binarized targets Y; multi-label: rows all right (subset accuracy)."""
        if len(self.classes_) == 1:
            return 1.0  # every prediction is the one class
        if self.out_activation_ == "softmax":
            right = out.argmax(axis=1) == Y.argmax(axis=1)
        else:
            right = ((out > 0.5) == (Y > 0.5)).all(axis=1)
        return float(np.average(right, weights=sw))

    def predict(self, X):
        """Predicted class labels (n_samples,), or (n_samples, n_labels) multi-label."""
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y = self._forward(X, check_input)
        if self.n_outputs_ == 1:
            y = y.ravel()
        return _decoded(self._label_binarizer, y)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, accuracy_score)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y).  ``classes`` (all the labels) is needed on the first
        call, as in scikit-learn (for a multi-label indicator matrix y too: its column
        indices)."""
        first = _partial_fit_first_call(self, classes)
        if first:
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), in the order of ``classes_``."""
        y = self._forward(X)
        if self.n_outputs_ == 1:
            p = y.ravel()
            return np.vstack([1 - p, p]).T
        return y

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        p = self.predict_proba(X)
        return np.log(p, out=p)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


MLPRegressor.__doc__ += _PARAMS_DOC
MLPClassifier.__doc__ += _PARAMS_DOC


def _partial_fit_first_call(clf, classes):
    """scikit-learn's rule: ``classes`` is required on the first call (it sets
    classes_), optional later and then equal to classes_.  True on the first call."""
    if getattr(clf, "classes_", None) is None and classes is None:
        raise ValueError("classes must be passed on the first call to partial_fit.")
    if classes is not None:
        classes = unique_labels(classes)
        if getattr(clf, "classes_", None) is not None:
            if not np.array_equal(clf.classes_, classes):
                raise ValueError(f"`classes={classes!r}` is not the same as on the last "
                                 f"call to partial_fit, was: {clf.classes_!r}")
            return False
        clf.classes_ = classes
        return True
    return False


class _EpochLoop:
    """scikit-learn's epoch bookkeeping around an MLP's job of the chunk driver
    (fastbp/_driver.py): the driver runs this job, which runs the MLP's.

    A chunk never runs past an epoch where scikit-learn could stop or change its
    learning rate: stopping needs n_iter_no_change + 1 - (current count) more epochs
    without improvement, so a chunk is at most that long and the stopping epoch is
    always a chunk's last.  Validation scores (early_stopping) and invscaling's
    per-epoch learning rate take one epoch per chunk.  After each chunk, scikit-learn's
    bookkeeping (_end_epoch) runs on its records, epoch by epoch."""

    def __init__(self, est, model, X, Y, val, n, k, total, incremental):
        self.est, self.model, self.X, self.Y = est, model, X, Y
        self.val, self.n, self.total, self.incremental = val, n, total, incremental
        self.sgd = est._opt("solver") == "sgd"
        self.lr_scale = k if self.sgd else 1.0
        self.loss_scale = est._loss_scale()
        # the L2 term the records carry, as a multiple of the l2 the updates use (l2 /
        # k, _fit_options): scikit-learn's loss_ has alpha's term whole, so k in all,
        # less the loss_scale the records are multiplied by (the multi-label k)
        self.l2_loss_scale = k / self.loss_scale
        self.per_epoch = est.early_stopping or (self.sgd and
                                                est._opt("learning_rate") == "invscaling")
        self.stopped = False
        self.diverged = False
        self.inner = None
        self.desc = type(est).__name__

    def lr(self):
        """The learning rate of the next chunk (adaptive and invscaling change it)."""
        est = self.est
        return (est._lr if self.sgd else est._lr_init) * self.lr_scale

    def wrap(self, job):
        self.inner = job
        return self

    # ---- the job protocol: the MLP's, but for these ----------------------------------
    def pending(self):
        return self.inner.pending()

    def prepare(self):
        self.inner.prepare()

    def work_per_epoch(self):
        return self.inner.work_per_epoch()

    def remaining(self):
        return 0 if self.stopped else self.inner.remaining()

    def last_loss(self):
        return getattr(self.est, "loss_", None)

    def after_chunk(self):
        return self.inner.after_chunk()

    def callbacks(self):
        return None

    def ends_early(self, reason):
        """The MLP job's check of the state the fit stops in (SingleFit.ends_early), after
        Ctrl-C or scikit-learn's own stop (n_iter_no_change): a divergence found there is
        handled as one found in a chunk (run_chunk)."""
        inner = self.inner
        if self.diverged or inner.ends_early(reason) != "diverged":
            return reason
        self.stopped = self.diverged = True
        self.est._diverged(self.model, self.X, self.Y, inner.bad, inner.run.done == 0,
                           self.val, self.n, self.sgd, self.total, self.incremental)
        return "scikit-learn"

    def finish(self):
        self.inner.finish()

    def cap(self, chunk):
        est = self.est
        if self.per_epoch:
            return 1
        if np.isfinite(est.n_iter_no_change):
            return min(chunk, max(1, int(est.n_iter_no_change) + 1
                                  - est._no_improvement_count))
        return chunk

    def run_chunk(self, chunk):
        inner, est = self.inner, self.est
        run = inner.run
        run.rule = run.rule._replace(lr=self.lr(),
                                     l2_loss=run.rule.l2 * self.l2_loss_scale)
        first = run.records.count
        ran, stopped = inner.run_chunk(chunk)
        for rec in run.records.loss[first:run.records.count]:
            if est._end_epoch(float(rec) * self.loss_scale, self.n, self.val, self.sgd):
                self.stopped = True
                return ran, "scikit-learn"
        if stopped == "diverged":
            self.stopped = self.diverged = True
            est._diverged(self.model, self.X, self.Y, inner.bad, run.done == 0, self.val,
                          self.n, self.sgd, self.total, self.incremental)
            return ran, "scikit-learn"
        return ran, stopped
