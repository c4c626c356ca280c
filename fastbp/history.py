"""What a training run reports."""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class History:
    """Loss history of one ``fit``.

    loss:         (n_records,) float64; record r is epoch r * record_every of this fit
                  (full batch: the loss before that epoch's update; SGD and mini-batch:
                  the mean of the batch losses seen during that epoch; L-BFGS: the
                  loss after iteration r + 1, so the last record is the final loss).
    epochs:       epochs actually run (less than asked if training was interrupted or
                  diverged); for L-BFGS, its iterations.
    record_every: epochs between records.
    seconds:      wall time of the training loop.
    stopped:      None, or why training ended early ("interrupted", "callback", "diverged",
                  "early_stopping"; L-BFGS also "converged", "max_fun", "line_search").
    val_loss:     with validation data, (n_records,) validation loss after each recorded
                  epoch (NaN where not evaluated); else None.
    best_epoch:   with validation data, the epoch of the best validation loss; else None.
    extra:        more about the run; ``fastbp.resume`` sets extra["resumed_at"], the epoch
                  its checkpoint had reached (its History covers the whole run); L-BFGS
                  sets "optimizer", and SciPy's "nfev", "status" and "message".
    """
    loss: np.ndarray
    epochs: int
    record_every: int = 1
    seconds: float = 0.0
    stopped: str | None = None
    extra: dict = field(default_factory=dict)
    val_loss: np.ndarray | None = None
    best_epoch: int | None = None

    @property
    def epochs_recorded(self):
        """The epoch number (within this fit) of each record."""
        return np.arange(self.loss.shape[0]) * self.record_every

    def __len__(self):
        return self.loss.shape[0]
