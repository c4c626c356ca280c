"""fit's training options -> the named structures the kernels read (kernels/options.py).

The one place where fit's keyword arguments are checked and encoded; MLP.fit, Ensemble
and the scikit-learn wrappers all go through it.
"""
import math
import numbers

from . import _validation as V
from .kernels import options as O
from .kernels import rules as R

OPTIMIZERS = {"sgd": R.SGD, "adam": R.ADAM}
SCHEDULES = {"constant": R.CONSTANT, "invscaling": R.INVSCALING, "step": R.STEP,
             "cosine": R.COSINE}


def _real(value, name, low=None, high=None, low_open=False, high_open=False):
    # type() first: the numbers.Real check goes through the ABC machinery, and fit makes
    # nine of these checks (math.isfinite likewise: np.isfinite on a scalar is far slower)
    if type(value) is not float and (isinstance(value, bool)
                                     or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return v


def build(lr, epochs, optimizer="sgd", momentum=0.0, nesterov=False, beta1=0.9,
          beta2=0.999, eps=1e-8, l2=0.0, schedule="constant", power_t=0.5, step_size=1,
          step_factor=0.5, lr_min=0.0, patience=0, min_delta=0.0, restore_best=False,
          epoch_loss="batch_mean"):
    """Checked (options.Rule, options.Stop) for one fit."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of "
                         f"{', '.join(map(repr, OPTIMIZERS))}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of "
                         f"{', '.join(map(repr, SCHEDULES))}")
    lr = V.check_lr(lr)
    momentum = _real(momentum, "momentum", 0.0, 1.0, high_open=True)
    nesterov = V.check_flag(nesterov, "nesterov")
    if nesterov and momentum == 0.0:
        raise ValueError("nesterov=True needs momentum > 0")
    if optimizer == "adam" and momentum != 0.0:
        raise ValueError("momentum applies to optimizer='sgd'; Adam uses beta1 and beta2")
    beta1 = _real(beta1, "beta1", 0.0, 1.0, high_open=True)
    beta2 = _real(beta2, "beta2", 0.0, 1.0, high_open=True)
    eps = _real(eps, "eps", 0.0, low_open=True)
    l2 = _real(l2, "l2", 0.0)
    power = _real(power_t, "power_t", 0.0)
    step_factor = _real(step_factor, "step_factor", 0.0, 1.0, low_open=True)
    lr_min = _real(lr_min, "lr_min", 0.0)
    if schedule == "cosine" and lr_min > lr:
        raise ValueError(f"lr_min ({lr_min}) must not exceed lr ({lr})")
    min_delta = _real(min_delta, "min_delta", 0.0)
    step_size = V.check_positive_int(step_size, "step_size")
    patience = V.check_positive_int(patience, "patience", minimum=0)
    if epoch_loss not in ("batch_mean", "sample_mean"):
        raise ValueError(f"epoch_loss must be 'batch_mean' or 'sample_mean', got {epoch_loss!r}")
    rule = O.Rule(OPTIMIZERS[optimizer], lr, momentum, nesterov, beta1, beta2, eps, l2,
                  SCHEDULES[schedule], power, step_size, step_factor, lr_min, int(epochs),
                  epoch_loss == "sample_mean", l2)
    return rule, O.Stop(patience, min_delta, V.check_flag(restore_best, "restore_best"))
