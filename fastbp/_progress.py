"""Progress display for long fits: tqdm when installed, else one line on stderr.

Both bars have the same methods:

- ``update(n, loss=None)``: ``n`` more epochs done, and the latest loss to show;
- ``restart_clock()``: start timing now. A training driver calls it once the training
  kernel is compiled (or loaded from Numba's cache) and before the first ``update``,
  so that the elapsed time, the rate and the ETA count training only: a first fit may
  spend seconds compiling, which would otherwise show as a rate 1000x too low;
- ``close()``: draw the final state (once) and end the line.
"""
import sys
import time


def _clock_text(seconds):
    """``M:SS`` (or ``H:MM:SS``), as tqdm writes times."""
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class _PlainBar:
    """A dependency-free single-line bar, redrawn at most every 0.1 s.

    Shows the epochs done, the elapsed time and the estimated time left
    (``elapsed<left``), the rate in epochs/s and the latest loss. ``clock`` (seconds,
    monotonic) and ``stream`` are there for tests.
    """

    def __init__(self, total, desc, clock=time.perf_counter, stream=None):
        self.total = total
        self.desc = desc
        self.n = 0
        self.loss = None
        self._clock = clock
        self._stream = stream
        self.start = clock()
        self._n_start = 0  # epochs done when the clock (re)started: not in the rate
        self._last_draw = None
        self._drawn = None  # the (n, loss) last drawn: close() does not draw it twice

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stderr

    def restart_clock(self):
        """Start timing now (see the module docstring): elapsed time, rate and ETA count
        from here, and epochs counted before are left out of the rate."""
        self.start = self._clock()
        self._n_start = self.n

    def update(self, n, loss=None):
        self.n += n
        self.loss = loss if loss is not None else self.loss
        now = self._clock()
        if self._last_draw is None or now - self._last_draw >= 0.1 or self.n >= self.total:
            self._draw(now)

    def text(self, now=None):
        """The bar's line as it would be drawn at time ``now`` (default: the clock's)."""
        now = self._clock() if now is None else now
        elapsed = max(now - self.start, 0.0)
        done = self.n - self._n_start
        rate = done / elapsed if done > 0 and elapsed > 0 else None
        left = (self.total - self.n) / rate if rate else None
        frac = min(self.n / self.total, 1.0) if self.total else 1.0
        width = 24
        filled = int(frac * width)
        timing = f"{_clock_text(elapsed)}<{'?' if left is None else _clock_text(left)}"
        speed = "? epochs/s" if rate is None else f"{rate:,.0f} epochs/s"
        loss = "" if self.loss is None else f" loss={self.loss:.6g}"
        return (f"{self.desc} [{'#' * filled}{'.' * (width - filled)}] "
                f"{self.n}/{self.total} [{timing}, {speed}]{loss}")

    def _draw(self, now):
        self._last_draw = now
        self._drawn = (self.n, self.loss)
        self.stream.write("\r" + self.text(now))
        self.stream.flush()

    def close(self):
        if self._drawn != (self.n, self.loss):
            self._draw(self._clock())
        self.stream.write("\n")
        self.stream.flush()


class _TqdmBar:
    def __init__(self, total, desc):
        from tqdm.auto import tqdm
        self._bar = tqdm(total=total, desc=desc, unit="epoch", leave=True)

    def restart_clock(self):
        """Start timing now: tqdm's elapsed time and its (smoothed) rate restart, so
        compile time is not counted. Epochs counted before are kept on the bar."""
        n = self._bar.n
        self._bar.reset()  # n = 0; start time, last print and rate averages from now
        if n:
            self._bar.n = self._bar.last_print_n = n

    def update(self, n, loss=None):
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.6g}", refresh=False)
        self._bar.update(n)

    def close(self):
        self._bar.close()


def make_bar(total, desc="fit"):
    """A progress bar with .update(n_epochs, loss), .restart_clock() and .close()."""
    try:
        return _TqdmBar(total, desc)
    except ImportError:
        return _PlainBar(total, desc)
