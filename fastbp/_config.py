"""Training options -> the two arrays the kernels read (kernels/optim.py: hyper, iconf).

The one place where fit's keyword arguments are checked and encoded; MLP.fit, Ensemble
and the scikit-learn wrappers all go through it.
"""
import math
import numbers

import numpy as np

from . import _validation as V
from .kernels import optim as O

OPTIMIZERS = {"sgd": O.SGD, "adam": O.ADAM}
SCHEDULES = {"constant": O.CONSTANT, "invscaling": O.INVSCALING, "step": O.STEP,
             "cosine": O.COSINE}


def _real(value, name, low=None, high=None, low_open=False, high_open=False):
    # type() first: the numbers.Real check goes through the ABC machinery, and fit makes
    # nine of these checks (math.isfinite likewise: np.isfinite on a scalar is 25x slower)
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
    """Checked (hyper, iconf) arrays for one fit."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of "
                         f"{', '.join(map(repr, OPTIMIZERS))}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of "
                         f"{', '.join(map(repr, SCHEDULES))}")
    hyper = np.zeros(O.N_HYPER)
    iconf = np.zeros(O.N_ICONF, dtype=np.int64)
    hyper[O.H_LR] = V.check_lr(lr)
    hyper[O.H_MOMENTUM] = _real(momentum, "momentum", 0.0, 1.0, high_open=True)
    if nesterov and hyper[O.H_MOMENTUM] == 0.0:
        raise ValueError("nesterov=True needs momentum > 0")
    if optimizer == "adam" and hyper[O.H_MOMENTUM] != 0.0:
        raise ValueError("momentum applies to optimizer='sgd'; Adam uses beta1 and beta2")
    hyper[O.H_BETA1] = _real(beta1, "beta1", 0.0, 1.0, high_open=True)
    hyper[O.H_BETA2] = _real(beta2, "beta2", 0.0, 1.0, high_open=True)
    hyper[O.H_EPS] = _real(eps, "eps", 0.0, low_open=True)
    hyper[O.H_L2] = _real(l2, "l2", 0.0)
    hyper[O.H_POWER] = _real(power_t, "power_t", 0.0)
    hyper[O.H_STEP_FACTOR] = _real(step_factor, "step_factor", 0.0, 1.0, low_open=True)
    hyper[O.H_LR_MIN] = _real(lr_min, "lr_min", 0.0)
    if schedule == "cosine" and hyper[O.H_LR_MIN] > hyper[O.H_LR]:
        raise ValueError(f"lr_min ({lr_min}) must not exceed lr ({lr})")
    hyper[O.H_MIN_DELTA] = _real(min_delta, "min_delta", 0.0)
    iconf[O.I_OPTIMIZER] = OPTIMIZERS[optimizer]
    iconf[O.I_NESTEROV] = bool(nesterov)
    iconf[O.I_SCHEDULE] = SCHEDULES[schedule]
    iconf[O.I_STEP_SIZE] = V.check_positive_int(step_size, "step_size")
    iconf[O.I_TOTAL_EPOCHS] = epochs
    iconf[O.I_PATIENCE] = V.check_positive_int(patience, "patience", minimum=0)
    iconf[O.I_RESTORE_BEST] = bool(restore_best)
    if epoch_loss not in ("batch_mean", "sample_mean"):
        raise ValueError(f"epoch_loss must be 'batch_mean' or 'sample_mean', got {epoch_loss!r}")
    iconf[O.I_SAMPLE_MEAN] = epoch_loss == "sample_mean"
    return hyper, iconf


def decay_mask(layout, dtype):
    """1 on weights, 0 on biases: what L2 decays."""
    mask = np.zeros(layout.n_params, dtype=dtype)
    for off, (a, b) in zip(layout.w_off, layout.shapes):
        mask[off:off + a * b] = 1
    return mask
