"""Long runs in bounded memory: a fit's loss records never outgrow history.RECORDS_CAP
(an ensemble's models share ENSEMBLE_RECORDS; every record up to the cap, then evenly thinned), a fit of any epoch count starts at once,
and Ctrl-C at any moment of fit -- setup and compilation included -- returns the
History so far."""
import os
import signal
import tracemalloc
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import history as H


def _problem(n=16, seed=0):
    r = np.random.default_rng(seed)
    return r.normal(size=(n, 3)), r.normal(size=(n, 2))


def _model(seed=1):
    return fastbp.MLP([3, 5, 2], activation=["tanh", "identity"], init="normal", seed=seed)


@pytest.mark.parametrize("cap", [4, 7, 64])
def test_records_keep_every_stride_th_record_within_the_cap(cap):
    rec = H.Records(cap=cap)
    values = np.arange(1000, dtype=float)
    r = 0
    for k in (1, 3, 10, 2, 17, 100, 5, 300, 562):  # uneven chunks
        rec.extend(r, values[r:r + k])
        r += k
    assert r == 1000 and rec.next_r == 1000
    loss, _ = rec.view()
    assert rec.count == loss.shape[0] <= cap
    assert rec.count > cap // 2 or rec.stride == 1
    # record i is the run's record i * stride: evenly spaced from the first
    np.testing.assert_array_equal(loss, values[::rec.stride][:rec.count])
    assert rec.count == -(-1000 // rec.stride)


@pytest.mark.parametrize("cap", [4, 7, 64])
def test_records_written_in_place_equal_extended_ones(cap):
    """reserve() lends the next slots while every record is kept; the writer commits
    how many it wrote, the others stay NaN; past the cap (or with a stride) it lends
    none and extend() thins as before."""
    values = np.arange(1000, dtype=float)
    ref, rec = H.Records(cap=cap, validating=True), H.Records(cap=cap, validating=True)
    r, lent = 0, 0
    for k, written in ((1, 1), (3, 2), (10, 10), (2, 0), (17, 17), (100, 99), (5, 5)):
        ref.extend(r, values[r:r + written], -values[r:r + written])
        room = rec.reserve(r, k)
        if room is None:
            rec.extend(r, values[r:r + written], -values[r:r + written])
        else:
            lent += 1
            loss, val = room
            assert loss.shape == val.shape == (k,)
            assert np.isnan(loss).all() and np.isnan(val).all()
            left = max(written - 1, 0)  # the last record's val not written
            loss[:written], val[:left] = values[r:r + written], -values[r:r + left]
            rec.commit(written)
        r += written
        assert (rec.count, rec.next_r, rec.stride) == (ref.count, ref.next_r, ref.stride)
    assert lent >= 2  # the first chunks fit under every cap
    (loss, val), (ref_loss, ref_val) = rec.view(), ref.view()
    np.testing.assert_array_equal(loss, ref_loss)
    # a record the writer left out (a diverged epoch's validation loss) stays NaN
    assert np.isnan(val).sum() <= lent and np.array_equal(np.isnan(val), val != ref_val)
    assert np.isnan(rec.loss[rec.count:]).all()
    with pytest.raises(ValueError, match="comes after"):
        rec.reserve(r + 1, 1)


@pytest.mark.parametrize("cap", [3, 8, 50])
def test_stride_for_is_the_stride_records_end_with(cap):
    r = np.random.default_rng(cap)
    for n in [0, 1, cap, cap + 1, 2 * cap, 1000]:
        rec = H.Records(cap=cap)
        done = 0
        while done < n:  # random chunks
            k = int(min(n - done, r.integers(1, 40)))
            rec.extend(done, np.zeros(k))
            done += k
        assert rec.stride == H.stride_for(n, cap), n


def test_records_cap_bounds_an_ensembles_records_in_all():
    assert H.records_cap() == H.records_cap(1) == H.RECORDS_CAP
    for rows in [2, 8, 9, 100, 1000, 16384]:
        cap = H.records_cap(rows)
        assert cap <= H.RECORDS_CAP and rows * cap <= H.ENSEMBLE_RECORDS
    assert H.records_cap(10 ** 6) == H.MIN_MODEL_RECORDS
    assert H.Records(rows=1000).cap == H.records_cap(1000) < H.Records().cap


def test_expected_records_are_allocated_once_and_kept_as_extend_keeps_them():
    """Records(expected=k) makes room for k records (at most cap) at its first growth,
    so that the chunks of a run add theirs without reallocating; what it keeps is what
    a Records without the hint keeps, the slots not yet written NaN."""
    rows, total = 3, 100
    values = np.arange(rows * total, dtype=float).reshape(rows, total)
    hinted, plain = H.Records(rows=rows, expected=total), H.Records(rows=rows)
    first = None
    for r0 in range(0, total, 7):
        for rec in (hinted, plain):
            rec.extend(r0, values[:, r0:r0 + 7])
        first = hinted.loss if first is None else first
        assert hinted.loss is first  # no reallocation
        assert np.isnan(hinted.loss[:, hinted.count:]).all()
    assert hinted.loss.shape == (rows, total)
    for a, b in zip(hinted.view(), plain.view()):
        np.testing.assert_array_equal(a, b)
    capped = H.Records(cap=8, expected=10 ** 9)
    capped.extend(0, np.zeros(3))
    assert capped.loss.shape == (8,)


def test_an_ensembles_records_are_allocated_for_its_whole_run(monkeypatch):
    """An Ensemble's run tells its Records how many records it will keep: one
    allocation however many chunks it runs in (here 43 of 7 epochs)."""
    from fastbp import _driver
    monkeypatch.setattr(_driver, "first_chunk", lambda *args: 7)
    monkeypatch.setattr(_driver, "next_chunk", lambda *args, **kw: 7)
    sizes = []
    original = H.Records._grow

    def growing(self, need):
        before = self.loss.shape[-1]
        original(self, need)
        if self.loss.shape[-1] != before:
            sizes.append(self.loss.shape[-1])

    monkeypatch.setattr(H.Records, "_grow", growing)
    X, y = _problem()
    ens = fastbp.Ensemble([3, 5, 2], 4, activation=["tanh", "identity"], seed=0)
    hist = ens.fit(X, y, epochs=300, record_every=2)
    assert sizes == [150]
    assert hist.loss.shape == (4, 150) and np.isfinite(hist.loss).all()


def test_an_ensembles_models_share_the_records_bound(monkeypatch):
    """A thousand models run for a million epochs kept 2**20 records each (8 GB): the
    models of an ensemble share ENSEMBLE_RECORDS, each keeping its evenly thinned
    records of the full-resolution history."""
    r = np.random.default_rng(0)
    X, y = r.normal(size=(20, 3)), r.normal(size=(20, 1))

    def fit():
        e = fastbp.Ensemble([3, 4, 1], n_models=8, activation=["tanh", "identity"],
                            init="normal", seed=0)
        return e.fit(X, y, epochs=300, lr=0.05)

    full = fit()
    assert full.loss.shape == (8, 300) and full.stride == 1
    monkeypatch.setattr(H, "ENSEMBLE_RECORDS", 8 * 40)
    monkeypatch.setattr(H, "MIN_MODEL_RECORDS", 4)
    thin = fit()
    assert thin.stride == H.stride_for(300, 40) == 8
    assert thin.loss.shape == (8, 38)
    np.testing.assert_array_equal(thin.loss, full.loss[:, ::8])


def test_a_long_fit_keeps_thinned_records_of_its_full_resolution_history(monkeypatch):
    X, y = _problem()
    full = _model().fit(X, y, epochs=300, lr=0.05)
    monkeypatch.setattr(H, "RECORDS_CAP", 32)
    thin = _model().fit(X, y, epochs=300, lr=0.05)
    assert len(thin.loss) <= 32 and thin.stride > 1
    np.testing.assert_array_equal(thin.epochs_recorded, np.arange(len(thin.loss)) * thin.stride)
    np.testing.assert_array_equal(thin.loss, full.loss[::thin.stride])


def test_thinned_history_survives_a_checkpoint_and_resume(tmp_path, monkeypatch):
    X, y = _problem()
    monkeypatch.setattr(H, "RECORDS_CAP", 16)
    ref = _model().fit(X, y, epochs=200, lr=0.05, record_every=2)
    path = tmp_path / "run.npz"
    _model().fit(X, y, epochs=200, lr=0.05, record_every=2, checkpoint=path,
                 checkpoint_every=70, callbacks=lambda e, h, m: e < 70)
    m, h = fastbp.resume(path, X, y)
    assert h.stride == ref.stride and h.epochs == 200
    np.testing.assert_array_equal(h.loss, ref.loss)


def test_ten_billion_epochs_start_at_once_in_bounded_memory():
    """A fit asked for 10**10 epochs allocates no per-epoch history up front: stopped by
    a callback after its first chunk, it used about what a 100-epoch fit uses."""
    X, y = _problem()
    small = _model()
    small.fit(X, y, epochs=3, lr=0.01)  # compile outside the measurement

    def peak(epochs):
        m = _model()
        tracemalloc.start()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = m.fit(X, y, epochs=epochs, lr=0.01, callbacks=lambda e, h, mm: False)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top, h

    base, h100 = peak(100)
    big, h = peak(10 ** 10)
    assert h.stopped == "callback" and 0 < h.epochs < 10 ** 10
    assert big - base < 100 * 2 ** 20, f"{(big - base) / 2 ** 20:.1f} MB more than 100 epochs"


def _interrupt_during(monkeypatch, target, name):
    """Make ``target.name`` send this process SIGINT when called (then go on)."""
    original = getattr(target, name)

    def interrupting(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, interrupting)


@pytest.mark.parametrize("moment", ["validation", "compilation"])
def test_ctrl_c_during_setup_returns_the_history_so_far(monkeypatch, moment):
    X, y = _problem()
    if moment == "validation":
        from fastbp import _validation
        _interrupt_during(monkeypatch, _validation, "check_sample_weight")
    else:
        from fastbp import _fit
        _interrupt_during(monkeypatch, _fit.SingleFit, "prepare")
    m = _model()
    before = m.params.copy()
    with pytest.warns(RuntimeWarning, match="interrupted"):
        h = m.fit(X, y, epochs=10 ** 9, lr=0.01)
    assert h.stopped == "interrupted" and h.epochs == 0 and len(h.loss) == 0
    np.testing.assert_array_equal(m.params, before)


@pytest.mark.parametrize("moment", ["finish", "history"])
def test_ctrl_c_after_the_last_chunk_is_said_not_swallowed(monkeypatch, moment):
    from fastbp import _fit
    X, y = _problem()
    expected = _model().fit(X, y, epochs=50, lr=0.01)
    _interrupt_during(monkeypatch, _fit.SingleFit, moment)
    m = _model()
    with pytest.warns(RuntimeWarning, match="interrupted.*after 50 of 50 epochs"):
        h = m.fit(X, y, epochs=50, lr=0.01)
    # the run was complete: its result stands, and the History says Ctrl-C came
    assert h.stopped == "interrupted" and h.epochs == 50
    np.testing.assert_array_equal(h.loss, expected.loss)


@pytest.mark.parametrize("cap", [32, 64, 200])
def test_a_thinned_ensemble_history_keeps_a_diverged_models_records_at_its_epochs(cap):
    # an ensemble retrains a diverged model alone (MLP.fit), whose shorter run thins its
    # records less: they must land at the ensemble's recorded epochs
    r = np.random.default_rng(0)
    X, y = r.normal(size=(20, 3)), r.normal(size=(20, 1))
    lrs = np.array([0.3, 0.6, 0.9, 1.2, 1.5])

    def fit():
        e = fastbp.Ensemble([3, 8, 1], n_models=len(lrs), activation=["tanh", "identity"],
                            loss="mse", init="normal", seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return e, e.fit(X, y, epochs=300, lr=lrs)

    full_e, full = fit()
    assert full_e.diverged.any() and not full_e.diverged.all()
    old_cap = H.RECORDS_CAP
    H.RECORDS_CAP = cap
    try:
        e, thin = fit()
    finally:
        H.RECORDS_CAP = old_cap
    assert thin.stride > 1 and thin.loss.shape[1] <= cap
    np.testing.assert_array_equal(e.diverged, full_e.diverged)
    np.testing.assert_array_equal(thin.loss, full.loss[:, thin.epochs_recorded])


def test_a_thinned_sweep_names_the_epoch_of_its_best_record(monkeypatch):
    from fastbp.sweep import sweep
    X, y = _problem()
    monkeypatch.setattr(H, "RECORDS_CAP", 16)
    res = sweep({"lr": [0.05, 0.5, 1.0]}, X, y, [3, 5, 2], epochs=200,
                activation=["tanh", "identity"], init="normal", seed=1)
    assert res.history.stride > 1
    # lr 1.0 oscillates: its best is a record in the middle of the run
    assert 0 < res.rows[2]["best_epoch"] < 200
    for row, h in zip(res, res.history.loss):
        r = int(np.nanargmin(h))
        if row["best_loss"] == h[r]:
            assert row["best_epoch"] == res.history.epochs_recorded[r]
        else:  # the trained model itself was better than every record
            assert row["best_epoch"] == 200


def test_a_thinned_history_is_plotted_at_its_recorded_epochs(monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    from fastbp.plot import loss_curve
    X, y = _problem()
    monkeypatch.setattr(H, "RECORDS_CAP", 16)
    h = _model().fit(X, y, epochs=200, lr=0.05)
    fig = loss_curve(h)
    line = fig.axes[0].lines[0]
    np.testing.assert_array_equal(line.get_xdata(), h.epochs_recorded)
    assert line.get_xdata()[-1] > len(h.loss)  # thinned: not one point per epoch
