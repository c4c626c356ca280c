"""Whether a chunk of training can diverge at all: a bound proved before it runs.

The divergence guard (kernels/loops.py: after_record) copies the parameters so that it can put
back the last finite ones.  For a wide network that copy is most of what a fit adds to
memory (W4b at H=1024: 8.7 MB, 0.78 of data + parameters + one batch of activations).
When ``ChunkBound.cannot_diverge`` proves that no value computed in the next chunk -- a
pre-activation, activation, delta, parameter or loss -- can leave the finite range, the
chunk runs with the guard off and no copy: the guard could not have fired, so the
results are the same bits.  When the proof fails (large weights, a large learning rate,
a run on its way to diverge) the chunk runs guarded, as before.

The proof covers the plain update rule (SGD, no momentum, no L2) and every activation and
loss but a softmax outside cross_entropy.  Per layer l (weights W of (n_in, n_out),
biases b) keep three bounds: R >= max_j sum_i |W_ij|, C >= max_i sum_j |W_ij|,
B >= max |b|.  Given them, with |x| <= X and |y| <= Y over the training data, sample
weights <= S, k outputs and batches of at most nb samples:

    forward    Z_l = R_l A_{l-1} + B_l,  A_0 = X;  A_l = 1 (sigmoid, tanh, softmax) or Z_l
    output     D_L = (A_L + Y) scale f'_L S   (scale as in kernels/rules.py: delta_scale;
               sigmoid+bce, softmax+cross_entropy: (1 + Y) scale S)
    backward   D_l = C_{l+1} D_{l+1} f'_l     (f' <= 1/4 for sigmoid, <= 1 otherwise)
    one step   |dW_ij| <= lr nb D_l A_{l-1},  |db_j| <= lr nb D_l
so a step raises R by at most n_in |dW|, C by n_out |dW|, B by |db|; lr is the schedule's
largest (the first: every schedule decays).  Every bound grows with R, C and B, so the
sequence R_{s+1} = R_s + n_in dW(R_s, C_s, B_s) (and the same for C, B), started from
the parameters' norms, bounds the norms of every state of the chunk (induction over the
steps).  The chunk is safe when, along it, every bound stays below LIMIT, the dtype's
largest value / 10^6: the norms, Z, nb D (a last, smaller batch), the gradient nb D A
before lr scales it and the step after, one loss term before its sample weight scales
it and the loss summed over an epoch (rounding makes computed values exceed these
real-number bounds by a factor (1 + eps)^k, k the length of a sum, far less than that
margin).  The bounds are loose -- worst-case signs, every weight
moving the most it can -- but they need only stay below 10^302: over W4b's epoch at
H=1024 (64 steps of sigmoid layers) the first layer's C goes from 150 to 2.1e5.  Layers
without a saturating activation (relu, identity) compound: their bounds grow by a power
of themselves each step, so long chunks of such networks stay guarded.
"""
import math

import numpy as np

from . import _validation as V
from .kernels import options as O
from .kernels import rules as K
from .kernels.bounds import layer_norms
from ._sparse import max_abs as max_abs_inputs

# Attempted only where the copy it saves is this large: for a small network the copy is
# cheaper than the proof (~0.1 ms of Python), and memory is not an issue.
MIN_BYTES = 1 << 20
# the bound is followed step by step: beyond this many steps a chunk stays guarded
MAX_STEPS = 100_000
_MARGIN = 1e6

_SATURATING = (K.SIGMOID, K.TANH, K.SOFTMAX)
_LIMITS = {np.dtype(t): float(np.finfo(t).max) / _MARGIN for t in (np.float64, np.float32)}
_DERIVATIVE = {K.SIGMOID: 0.25, K.TANH: 1.0, K.RELU: 1.0, K.IDENTITY: 1.0}


class ChunkBound:
    """The fixed part of the proof for one fit: network, data and options."""

    def __init__(self, layout, act_codes, loss_code, dtype, x, y, sw, batch):
        self.layout = layout
        self.acts = [int(a) for a in act_codes]
        self.loss = int(loss_code)
        self.limit = _LIMITS[np.dtype(dtype)]
        self._inputs, self._x = x, None
        self.y = _max_abs(y)
        self.s = _max_abs(sw) if sw.shape[0] else 1.0
        n = x.shape[0]
        self.n = n
        self.nb = min(batch, n)
        self.steps_per_epoch = -(-n // self.nb)
        self.norms = np.empty((layout.n_layers, 4))

    @property
    def x(self):
        """max |x| over the inputs: a pass over them, made when first needed."""
        if self._x is None:
            self._x = max_abs_inputs(self._inputs)
        return self._x

    @classmethod
    def for_fit(cls, model, run, x, y, batch):
        """A ChunkBound where the proof applies and is worth its cost, else None; x, y
        the training data, sample-major."""
        lay = model._layout
        if lay.n_params * model.dtype.itemsize < MIN_BYTES or not O.is_plain(run.rule):
            return None
        if not covered(model):
            return None
        return cls(lay, model._act_codes, model._loss_code, model.dtype, x, y, run.sw, batch)

    def cannot_diverge(self, params, lr, epochs):
        """True when training ``epochs`` epochs from ``params`` provably keeps every value
        finite (the plain rule at learning rate at most lr)."""
        steps = epochs * self.steps_per_epoch
        return steps <= MAX_STEPS and self.walk(params, abs(float(lr)), steps)

    def walk(self, params, lr, steps, record=None):
        """Follow the bounds along ``steps`` steps from ``params``: True if they stay in
        range.  ``record`` (a list) receives, for each state (before each step, and after
        the last), per layer [R, C, B] and the bounds (max |z|, max |dW|, max |db|) of the
        step from it, and the loss bound (for the tests)."""
        sizes, w_off, b_off = self.layout.sizes_arr, self.layout.w_off, self.layout.b_off
        layer_norms(params, sizes, w_off, b_off, self.norms)
        if not np.all(np.isfinite(self.norms)):
            return False
        norms = [[float(r), float(c), float(b)] for r, c, b, _ in self.norms]
        for _ in range(steps + 1):
            step = self._step_bounds(norms, lr)
            if step is None:
                return False
            moves, z, loss = step
            if record is not None:
                record.append(([list(n) for n in norms], z, moves, loss))
            for (dw, db), (n_in, n_out), layer in zip(moves, self.layout.shapes, norms):
                layer[0] += n_in * dw
                layer[1] += n_out * dw
                layer[2] += db
        return True

    def _step_bounds(self, norms, lr):
        """(per layer (max |dW|, max |db|), per layer max |z|, loss bound) of one step from
        a state with norms under ``norms``; None if a parameter, a value of the forward or
        backward pass, a gradient or the loss could reach LIMIT.  Every test is written
        ``value < limit``, which a NaN fails."""
        limit = self.limit
        if not all(v < limit for layer in norms for v in layer):
            return None
        a = [self.x]  # a[l]: bound of layer l's input
        z = []
        for (r, _, b), code in zip(norms, self.acts):
            z.append(r * a[-1] + b)
            a.append(1.0 if code in _SATURATING else z[-1])
        k = self.layout.sizes[-1]
        term, loss = loss_bound(self.loss, self.y, self.s, self.n, self.nb, z[-1], a[-1], k)
        if not (all(v < limit for v in z) and term < limit and loss < limit):
            return None
        d = self._output_delta(a[-1], k)
        deltas = [d]
        for layer in range(len(norms) - 1, 0, -1):
            d = norms[layer][1] * d * _DERIVATIVE[self.acts[layer - 1]]
            deltas.append(d)
        deltas.reverse()
        moves = []
        for d, a_in in zip(deltas, a):
            # the kernels form the gradient (a sum over the batch) before scaling it by lr
            grad = self.nb * d * a_in
            dw, db = lr * grad, lr * self.nb * d
            # a last batch of fewer samples has deltas up to nb times larger (the loss
            # divides by its size), its step no larger
            if not (d * self.nb < limit and grad < limit and dw < limit):
                return None
            moves.append((dw, db))
        return moves, z, loss

    def _output_delta(self, a_out, k):
        """Bound of dLoss/dz at the output (kernels/rules.py: output_delta)."""
        last = self.acts[-1]
        scale = K.delta_scale(self.loss, last, k, self.nb)
        if _combined(self.loss, last):
            return (1.0 + self.y) * scale * self.s
        return (a_out + self.y) * scale * _DERIVATIVE[last] * self.s


def loss_bound(loss, y, s, n, nb, z_out, a_out, k):
    """(bound of one sample's loss term for one output, before its sample weight -- the
    kernels compute it in the model dtype --, bound of an epoch's loss: every term,
    times nb, as an sse batch loss is a sum and epoch_loss="sample_mean" weighs batch
    losses by their size), for targets |y| <= y, sample weights <= s, n samples in
    batches of nb, output pre-activations |z| <= z_out and activations |a| <= a_out."""
    if loss == K.BCE:  # max(z, 0) - z y + log1p(exp(-|z|))
        term = z_out * (1.0 + y) + 1.0
    elif loss == K.CROSS_ENTROPY:  # y (logsumexp(z) - z), per output
        term = y * (2.0 * z_out + math.log(k) + 1.0)
    else:
        term = (a_out + y) * (a_out + y)  # inf, not OverflowError, past range
    return term, term * k * n * max(s, 1.0) * nb


def covered(model, one_state=False):
    """Whether the bound covers the model's activations and loss: along a chunk, or at
    ``one_state`` (state_in_range), which also takes an exp output.  Remembered per
    activations and loss: every fit asks (SingleFit._ends_finite)."""
    key = (model.activations, model._loss_code, one_state)
    found = _covered.get(key)
    if found is None:
        found = _covered[key] = _covers(model._act_codes.tolist(), model._loss_code,
                                        one_state)
    return found


_covered = {}  # covered's answers


def _covers(acts, loss, one_state):
    last = acts[-1]
    hidden_ok = all(a in _DERIVATIVE for a in acts[:-1])
    if last == K.EXP:  # along a chunk, the exp of a bound, and so on: soon useless
        return one_state and hidden_ok
    return hidden_ok and (_combined(loss, last) or last in _DERIVATIVE)


def _combined(loss, last):
    """Whether the output delta is p - y (sigmoid + bce, softmax + cross_entropy), no f'.
    The rule's Python function: its compiled form, called from Python, would first load
    (~0.03-0.3 s), and every fit asks (SingleFit._ends_finite)."""
    return getattr(K.is_combined, "py_func", K.is_combined)(loss, last)


def _max_abs(a):
    """max |a| without a temporary the size of ``a``."""
    return float(max(np.max(a), -np.min(a))) if a.size else 0.0


# data_bounds and state_in_range run under np.errstate(**NO_WARNINGS), their caller's
# (one for both: it costs as much as a small one's work): a sum of squares past the
# dtype's range is inf (or NaN), which no proof passes
NO_WARNINGS = dict(over="ignore", invalid="ignore")


def final_loss_bounded(model, x, y, sw, batch, squares=None):
    """True when the loss on (x, y) (sample weights sw, or empty) at the model's current
    parameters is provably finite (state_in_range, with the data's norms); False where
    the bound cannot tell -- a state too large, or activations and loss it does not
    cover --: the caller then evaluates the loss.  ``squares``: see data_bounds."""
    if not covered(model, one_state=True):
        return False
    with np.errstate(**NO_WARNINGS):
        return state_in_range(model._layout, model._act_codes, model._loss_code,
                              model.dtype, model._params, *data_bounds(x, y, sw, squares),
                              min(batch, y.shape[0]))


def data_bounds(x, y, sw, squares=None):
    """(X, Y, S): bounds of |x|, |y| and the sample weights (1 without them) for
    state_in_range.  X and Y are Euclidean norms, at least the largest value: one BLAS
    pass each (sparse inputs: their largest value), about half the time of max |a| (np.max
    and np.min); a sum of squares past the dtype's range is inf, which no proof passes.
    ``squares``: (sum of squares of x, of y), either None, as fit's checks of the same
    arrays computed them (Run.data_squares): no second pass over those (a W4b-size
    fit's data, 4096 x 42 values: 20-30 us).  Under np.errstate(**NO_WARNINGS)."""
    x_squares, y_squares = (None, None) if squares is None else squares
    if not isinstance(x, np.ndarray):
        x_bound = max_abs_inputs(x)
    elif x_squares is not None:
        x_bound = math.sqrt(x_squares)
    else:
        flat = x.reshape(-1)
        x_bound = math.sqrt(V.sum_of_squares(flat))
    if y_squares is None:
        flat = y.reshape(-1)
        y_squares = V.sum_of_squares(flat)
    return (x_bound, math.sqrt(y_squares), (_max_abs(sw) if sw.shape[0] else 1.0),
            y.shape[0])


def state_in_range(layout, act_codes, loss_code, dtype, params, x_bound, y_bound, s, n, nb):
    """Whether the forward pass and the loss at ``params`` stay below LIMIT on data with
    the bounds of data_bounds (n samples, batches of nb): the check of the loss after a
    run's last epoch, which no record holds.  Every layer counts, from the inputs on: a
    saturating activation bounds its outputs by 1, but only of a finite pre-activation
    (an overflowing sum is inf - inf = NaN, and tanh(NaN) is NaN).  Each layer's R
    (module docstring) comes from one sum of squares P of all the parameters:
    sum_i |W_ij| <= sqrt(n_in) |W_:j| <= sqrt(n_in P) (Cauchy-Schwarz), and |b| <=
    sqrt(P) -- looser than the layers' own norms, far below LIMIT for any ordinary
    state, and one BLAS pass.  Under np.errstate(**NO_WARNINGS): a huge state is out of
    range."""
    limit = _LIMITS[np.dtype(dtype)]
    acts = act_codes.tolist()
    p = math.sqrt(V.sum_of_squares(params))
    a, z = x_bound, 0.0
    for (n_in, _), code in zip(layout.shapes, acts):
        z = math.sqrt(n_in) * p * a + (p if layout.bias else 0.0)
        if not z < limit:
            return False
        a = 1.0 if code in _SATURATING else z
    if acts[-1] == K.EXP:  # (e^z + y)^2 bounds the Poisson term e^z - y z too
        if not z < math.log(limit):
            return False
        a = math.exp(z)
    term, loss = loss_bound(int(loss_code), y_bound, s, n, nb, z, a, layout.sizes[-1])
    return term < limit and loss < limit
