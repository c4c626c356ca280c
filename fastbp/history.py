"""What a training run reports, and the bounded store its loss records go to."""
from dataclasses import dataclass, field

import numpy as np

# A run keeps at most this many loss records: a fit of 10**10 epochs must not need
# 80 GB for its history (see Records).
RECORDS_CAP = 1 << 20
# ... and the models of an ensemble share this many, each keeping at least
# MIN_MODEL_RECORDS: a thousand models run for a million epochs must not need 8 GB for
# their histories either (64 MB of float64 in all, up to 16,384 models)
ENSEMBLE_RECORDS = 1 << 23
MIN_MODEL_RECORDS = 512


def records_cap(rows=None):
    """The records each of ``rows`` models keeps (None: one model, RECORDS_CAP)."""
    if rows is None:
        return RECORDS_CAP
    return min(RECORDS_CAP, max(MIN_MODEL_RECORDS, ENSEMBLE_RECORDS // max(rows, 1)))


def stride_for(n_records, cap):
    """The stride a run of ``n_records`` records ends with when it keeps at most ``cap``
    (Records: the smallest power of two that leaves ceil(n_records / stride) <= cap,
    however the records came)."""
    stride = 1
    while -(-n_records // stride) > cap:
        stride *= 2
    return stride


@dataclass
class History:
    """Loss history of one ``fit``.

    loss:         (n_records,) float64 (an Ensemble's: (n_models, n_records)); record r
                  is epoch ``epochs_recorded[r]`` of this fit (full batch: the loss
                  before that epoch's update; SGD and mini-batch: the mean of the batch
                  losses seen during that epoch; L-BFGS: the loss after iteration
                  epochs_recorded[r] + 1, so the last record is the final loss up to
                  RECORDS_CAP iterations, which ``stride`` then thins).
    epochs:       epochs actually run (less than asked if training was interrupted or
                  diverged); for L-BFGS, its iterations.
    record_every: epochs between records asked for.
    seconds:      wall time of the training loop (compilation not included).
    stopped:      None, or why training ended early ("interrupted", "callback", "diverged",
                  "early_stopping"; L-BFGS also "converged", "max_fun", "line_search").
    val_loss:     with validation data, (n_records,) validation loss after each recorded
                  epoch (NaN where not evaluated); else None.
    best_epoch:   with validation data, the epoch of the best validation loss; else None.
    compile_seconds: time spent compiling (or loading from Numba's cache) the kernels
                  this fit ran on, before training; 0 when they were already loaded.
    kernel:       the training kernel that ran (fastbp/_dispatch.py names it).
    stride:       records kept: every ``stride``-th record of every ``record_every``
                  epochs (1 until a run reaches RECORDS_CAP records, see Records).
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
    compile_seconds: float = 0.0
    kernel: str | None = None
    stride: int = 1

    @property
    def epochs_recorded(self):
        """The epoch number (within this fit) of each record."""
        return np.arange(self.loss.shape[-1]) * (self.record_every * self.stride)

    def __len__(self):
        return self.loss.shape[-1]


class Records:
    """The loss records of a run (one row per model), in memory bounded by records_cap.

    Record r is the loss of epoch r * record_every.  Every record is kept until a run
    reaches ``cap`` of them; then every other one is dropped (the stride doubles) and
    from then on only every stride-th record is kept, so a run of any length keeps
    between cap / 2 and cap evenly spaced records, always starting at epoch 0.  The
    arrays grow as records come (a short fit allocates little), or at once to the
    ``expected`` count a run gives.
    """

    def __init__(self, rows=None, validating=False, cap=None, expected=0):
        self.rows = rows            # None: one model (1-D arrays)
        self.cap = int(records_cap(rows) if cap is None else cap)
        # the records the run will add, where it knows (at most cap are kept): the first
        # growth makes room for them all, not a series of doublings, each a NaN fill and
        # a copy of what came before (256 models over 10,000 epochs: 20 MB once, against
        # fills and copies of some 100 MB)
        self.expected = min(int(expected), self.cap)
        self.stride = 1
        self.count = 0              # records kept
        self.next_r = 0             # the run's next record number
        shape = (0,) if rows is None else (rows, 0)
        self.loss = np.empty(shape)
        self.val = np.empty(shape) if validating else None

    def _grow(self, need):
        size = self.loss.shape[-1]
        if need <= size:
            return
        new = min(self.cap, max(need, 2 * size, 16, self.expected))
        for name in ("loss", "val"):
            old = getattr(self, name)
            if old is None:
                continue
            grown = np.empty(old.shape[:-1] + (new,))
            grown.fill(np.nan)  # (np.full: twice the time, every fit)
            grown[..., :self.count] = old[..., :self.count]
            setattr(self, name, grown)

    def extend(self, r_start, loss, val=None):
        """Add the records r_start, r_start + 1, ... (``loss`` (..., k), ``val`` alike);
        r_start must be the next record of the run."""
        k = loss.shape[-1]
        self._check_next(r_start)
        if self.stride == 1 and self.count + k <= self.cap:  # every record kept
            self._grow(self.count + k)
            self.loss[..., self.count:self.count + k] = loss
            if self.val is not None and val is not None:
                self.val[..., self.count:self.count + k] = val
            self.count += k
            self.next_r = r_start + k
            return
        r = np.arange(r_start, r_start + k)
        while True:
            keep = np.flatnonzero(r % self.stride == 0)
            if self.count + keep.size <= self.cap:
                break
            self._thin()
        self._grow(self.count + keep.size)
        self.loss[..., self.count:self.count + keep.size] = loss[..., keep]
        if self.val is not None and val is not None:
            self.val[..., self.count:self.count + keep.size] = val[..., keep]
        self.count += keep.size
        self.next_r = r_start + k

    def _check_next(self, r_start):
        if r_start != self.next_r:
            raise ValueError(f"record {r_start} comes after record {self.next_r - 1}")

    def reserve(self, r_start, k):
        """Room for the records r_start .. r_start + k - 1 to be written in place:
        (loss, val) views of the next k kept records (val None without validation), or
        None where not all of them would be kept (a stride past 1, or the cap reached):
        then extend() them.  The kernel writes a long chunk's records straight here, not
        into a buffer of its own that extend() copies (for a fit of 100,000 epochs that
        copy and its buffer took a millisecond).  ``commit`` says how many it wrote."""
        self._check_next(r_start)
        if self.stride != 1 or self.count + k > self.cap:
            return None
        self._grow(self.count + k)
        room = slice(self.count, self.count + k)
        return self.loss[..., room], None if self.val is None else self.val[..., room]

    def commit(self, k):
        """The first k records of the last reserve() were written (the others keep NaN,
        as every slot past the kept records does)."""
        self.count += k
        self.next_r += k

    def _thin(self):
        """Drop every other kept record (those of odd multiples of the stride)."""
        kept = (self.count + 1) // 2
        for arr in (self.loss, self.val):
            if arr is not None:
                arr[..., :kept] = arr[..., 0:self.count:2]
                arr[..., kept:] = np.nan
        self.count = kept
        self.stride *= 2

    def restore(self, loss, val, stride, next_r):
        """Start from kept records read back from a checkpoint (``val`` may be None)."""
        self._grow(loss.shape[-1])
        self.stride = stride
        self.count = loss.shape[-1]
        self.next_r = next_r
        self.loss[..., :self.count] = loss
        if self.val is not None and val is not None:
            self.val[..., :self.count] = val

    def truncate(self, n_records):
        """Forget the run's records from record ``n_records`` on (a rewind)."""
        n_records = min(n_records, self.next_r)
        self.count = self.kept_of(n_records)
        for arr in (self.loss, self.val):
            if arr is not None:
                arr[..., self.count:] = np.nan
        self.next_r = n_records

    def kept_of(self, n_records):
        """How many kept records the run's first ``n_records`` records are."""
        return -(-n_records // self.stride)

    def record_number(self, i):
        """The run's record number of kept record i."""
        return i * self.stride

    def last(self):
        """The latest kept loss (per row), or None."""
        return None if self.count == 0 else self.loss[..., self.count - 1]

    def view(self):
        """(loss, val) of the kept records: copies."""
        loss = self.loss[..., :self.count].copy()
        val = None if self.val is None else self.val[..., :self.count].copy()
        return loss, val
