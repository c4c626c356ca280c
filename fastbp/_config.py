"""fit's training options -> the named structures the kernels read (kernels/options.py).

The one place where fit's keyword arguments are checked and encoded; MLP.fit, Ensemble
and the scikit-learn wrappers all go through it.
"""
import math
import numbers

import numpy as np

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


def check_lr_in_dtype(lr, dtype, name="lr"):
    """``lr`` (checked by V.check_lr), as a model of ``dtype`` steps with it: the kernels
    round the learning rate to the model's dtype, so in float32 a rate below about
    1.4e-45 would be 0 (training that silently changes nothing) and one above 3.4e38
    infinite.  ValueError for those; else ``lr``."""
    _refuse_rounded(lr, dtype, name, zero="the parameters would never change",
                    inf="every step would overflow")
    return lr


def check_in_dtype(rule, dtype):
    """The factors of ``rule`` (from build) as a model of ``dtype`` uses them: a float32
    model's steps take the learning rate, eps, L2, momentum and Adam's betas rounded to
    float32 (kernels/rules.py: stateful_step; README: Numerics).  ValueError for a
    setting that rounding makes what it was not meant to be -- a learning rate, eps or L2
    factor of 0 or infinity, a momentum or beta of 1 (a velocity or moment that never
    decays) -- rather than a fit that silently does nothing or divides by zero."""
    check_lr_in_dtype(rule.lr, dtype)
    if rule.l2 > 0.0:
        _refuse_rounded(rule.l2, dtype, "l2", zero="the weights would never decay",
                        inf="every step would overflow")
    if rule.optimizer == R.ADAM:
        _refuse_rounded(rule.eps, dtype, "eps",
                        zero="Adam would divide by zero where a gradient is 0",
                        inf="the parameters would never change")
        for name in ("beta1", "beta2"):
            _refuse_one(getattr(rule, name), dtype, name, "moment")
    elif rule.momentum > 0.0:
        _refuse_one(rule.momentum, dtype, "momentum", "velocity")


# Where float32's round-to-nearest-even takes a positive float64 (comparisons, not a
# numpy cast: every float32 fit runs these checks)
FLOAT32_ZERO_AT = 2.0 ** -150            # at or below: 0 (half the least subnormal)
FLOAT32_INF_AT = 2.0 ** 128 - 2.0 ** 103  # at or above: infinity (half an ulp past the max)
FLOAT32_ONE_AT = 1.0 - 2.0 ** -25         # at or above, below 1: 1 (half an ulp under 1)


def _single(dtype):
    return np.dtype(dtype) == np.float32


def _refuse_rounded(value, dtype, name, zero, inf):
    if not _single(dtype):
        return  # float64: the value itself
    if value <= FLOAT32_ZERO_AT:
        raise ValueError(f"{name}={value!r} rounds to 0 in float32, the model's dtype: "
                         f"{zero}")
    if value >= FLOAT32_INF_AT:
        raise ValueError(f"{name}={value!r} is too large for float32, the model's dtype "
                         f"(it rounds to infinity): {inf}")


def _refuse_one(value, dtype, name, what):
    if _single(dtype) and FLOAT32_ONE_AT <= value < 1.0:
        raise ValueError(f"{name}={value!r} rounds to 1 in float32, the model's dtype: "
                         f"its {what} would never decay; use a value further from 1 "
                         f"(float32 holds 1 - 6e-8)")
