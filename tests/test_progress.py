"""The progress bar: elapsed time, ETA and rate without tqdm, drawn once when done, and
restart_clock() keeping compile time out of the rate (plain bar and tqdm), on a fake
clock."""

import io
import re
import sys

import pytest

from fastbp import _progress
from fastbp._progress import _PlainBar, make_bar


class FakeClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def plain(total=1000):
    clock, stream = FakeClock(), io.StringIO()
    return _PlainBar(total, "fit", clock=clock, stream=stream), clock, stream


def test_plain_bar_shows_elapsed_eta_rate_and_loss():
    bar, clock, stream = plain()
    clock.t += 2.0
    bar.update(250, 0.5)
    line = stream.getvalue().split("\r")[-1]
    # 250 epochs in 2 s: 125 epochs/s, 750 left: 6 s
    assert line == "fit [######..................] 250/1000 [00:02<00:06, 125 epochs/s] loss=0.5"


def test_plain_bar_times_hours():
    bar, clock, stream = plain(total=10_000_000)
    clock.t += 3725.0
    bar.update(1_000_000)
    assert "[1:02:05<9:18:45, 268 epochs/s]" in stream.getvalue()


def test_restart_clock_keeps_compile_time_out_of_the_rate():
    bar, clock, stream = plain()
    clock.t += 30.0  # compiling the kernel
    bar.restart_clock()
    clock.t += 1.0
    bar.update(500)
    assert "500/1000 [00:01<00:01, 500 epochs/s]" in stream.getvalue()
    # without the restart the same run reads 30x slower
    other, clock2, stream2 = plain()
    clock2.t += 31.0
    other.update(500)
    assert "[00:31<00:31, 16 epochs/s]" in stream2.getvalue()


def test_restart_clock_after_epochs_leaves_them_out_of_the_rate():
    bar, clock, stream = plain()
    bar.update(100)  # drawn at once: no time has passed, so no rate yet
    assert "100/1000 [00:00<?, ? epochs/s]" in stream.getvalue()
    clock.t += 10.0
    bar.restart_clock()
    clock.t += 2.0
    bar.update(400)
    # 400 epochs in the 2 s since the restart
    assert "500/1000 [00:02<00:02, 200 epochs/s]" in stream.getvalue()


def test_plain_bar_is_drawn_once_when_done():
    bar, clock, stream = plain()
    clock.t += 1.0
    bar.update(1000, 0.25)
    bar.close()
    out = stream.getvalue()
    assert out.count("1000/1000") == 1 and out.endswith("\n")
    # a final state not drawn yet (within 0.1 s of the last draw) is drawn by close
    bar, clock, stream = plain()
    clock.t += 1.0
    bar.update(10)
    clock.t += 0.01
    bar.update(10, 0.125)
    assert "20/1000" not in stream.getvalue()
    bar.close()
    out = stream.getvalue()
    assert out.count("20/1000") == 1 and out.endswith("loss=0.125\n")


def test_make_bar_without_tqdm_is_the_plain_bar(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails
    bar = make_bar(10)
    assert isinstance(bar, _PlainBar)
    bar.close()


def test_tqdm_bar_restart_clock_keeps_compile_time_out(monkeypatch, capsys):
    tqdm_std = pytest.importorskip("tqdm.std")
    clock = FakeClock()
    monkeypatch.setattr(tqdm_std, "time", clock)
    bar = _progress._TqdmBar(1000, "fit")
    assert bar._bar._time is clock
    clock.t += 30.0  # compiling
    bar.restart_clock()
    clock.t += 1.0
    bar.update(500, 0.5)
    meter = bar._bar.format_dict
    assert meter["n"] == 500 and meter["elapsed"] == pytest.approx(1.0)
    assert meter["rate"] == pytest.approx(500.0)
    bar.close()
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert re.search(r"500/1000 \[00:01<00:01, 500\.\d+epoch/s, loss=0\.5\]", final), final
