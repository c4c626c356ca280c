"""Progress display for long fits: tqdm when installed, else one line on stderr."""
import sys
import time


class _PlainBar:
    """A dependency-free single-line bar, redrawn at most every 0.1 s."""

    def __init__(self, total, desc):
        self.total = total
        self.desc = desc
        self.n = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self.loss = None

    def update(self, n, loss=None):
        self.n += n
        self.loss = loss if loss is not None else self.loss
        now = time.perf_counter()
        if now - self._last_draw >= 0.1 or self.n >= self.total:
            self._last_draw = now
            self._draw(now)

    def _draw(self, now):
        elapsed = max(now - self.start, 1e-9)
        frac = self.n / self.total if self.total else 1.0
        width = 24
        filled = int(frac * width)
        loss = "" if self.loss is None else f" loss={self.loss:.6g}"
        sys.stderr.write(f"\r{self.desc} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.n}/{self.total} {self.n / elapsed:,.0f} epochs/s{loss}")
        sys.stderr.flush()

    def close(self):
        self._draw(time.perf_counter())
        sys.stderr.write("\n")
        sys.stderr.flush()


class _TqdmBar:
    def __init__(self, total, desc):
        from tqdm.auto import tqdm
        self._bar = tqdm(total=total, desc=desc, unit="epoch", leave=True)

    def update(self, n, loss=None):
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.6g}", refresh=False)
        self._bar.update(n)

    def close(self):
        self._bar.close()


def make_bar(total, desc="fit"):
    """A progress bar with .update(n_epochs, loss) and .close()."""
    try:
        return _TqdmBar(total, desc)
    except ImportError:
        return _PlainBar(total, desc)
