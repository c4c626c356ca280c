"""The state of one training run of one model: one ``fit`` call, continued by ``resume``."""
from dataclasses import dataclass, field

import numpy as np

from .history import Records
from .kernels import options as O


@dataclass
class Run:
    """Settings and progress of one run.

    ``done`` epochs of ``epochs`` have run; their loss records are in ``records``
    (bounded: history.Records).  ``rule`` and ``stop`` are the kernels' options
    (kernels/options.py); ``best_loss``, ``bad_checks``, ``best_epoch`` and
    ``best_params`` the early-stopping record, kept from chunk to chunk.
    """
    epochs: int
    lr: float
    batch_size: int | None  # None: full batch
    shuffle: bool
    record_every: int
    rule: O.Rule
    stop: O.Stop
    sw: np.ndarray                       # sample weights, (n,) or (0,)
    val: O.Data | None                   # validation set, or None
    records: Records = None
    done: int = 0
    seconds: float = 0.0
    compile_seconds: float = 0.0
    kernel_name: str | None = None
    checkpoint: str | None = None
    every: tuple | None = None  # ("epochs", int) or ("seconds", float)
    data_n: int = 0
    data_key: str | None = None
    # with validation_fraction: the rows of the data fit was given that the run trains
    # on (the others are its validation set), and until the first checkpoint that data,
    # whose fingerprint the checkpoint keeps (resume takes the same data and rows)
    train_rows: np.ndarray | None = None
    given: tuple | None = None
    callbacks: list = field(default_factory=list)
    chunk_seconds: float = 0.2
    # for the wide layers' products (fastbp/_threads.py; EVERY: every core, counted only
    # for a network wide enough to share them); not saved
    threads: int = 1
    resumed_at: int | None = None  # fastbp.resume: the epoch its checkpoint had reached
    # (np.array, not np.full: a third of the time, in every fit)
    best_loss: np.ndarray = field(default_factory=lambda: np.array([np.inf]))
    bad_checks: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    best_epoch: np.ndarray = field(default_factory=lambda: np.array([-1], dtype=np.int64))
    best_params: np.ndarray | None = None
    # the sums of squares of the run's inputs and targets computed by fit's checks
    # (None each where not: small or sparse arrays), for the check of the state the
    # run ends in (fastbp/_divergence.py: data_bounds); not saved
    data_squares: tuple | None = None

    def __post_init__(self):
        if self.records is None:
            self.records = Records(validating=self.val is not None)

    @property
    def validating(self):
        return self.val is not None

    @property
    def stopped_early(self):
        """Whether early stopping ended the run: the kernels stop at the record where
        ``bad_checks`` reaches ``patience``, so a run (read back from its checkpoint, say)
        in that state is finished and trains no further epoch."""
        return self.stop.patience > 0 and self.bad_checks[0] >= self.stop.patience

    @property
    def n_records(self):
        """Records of the epochs done (epochs 0, k, 2k, ... below ``done``)."""
        return -(-self.done // self.record_every)

    def state(self, model):
        """The kernels' State of this run of ``model``: the model's shuffling stream and
        optimizer state, this run's early-stopping record (views, not copies)."""
        return O.State(model._rng_state, model._opt_state, model._opt_step, self.best_loss,
                       self.bad_checks, self.best_epoch, self.best_params)

    def early_stopping_state(self):
        """[best validation loss, records without improvement, best epoch]: what a
        checkpoint stores."""
        return float(self.best_loss[0]), int(self.bad_checks[0]), int(self.best_epoch[0])
