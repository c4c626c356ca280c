"""Checkpoints and resume: a run cut anywhere -- between chunks, by Ctrl-C, by SIGKILL --
and resumed ends bit-identical to the run done in one piece."""

import datetime
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastbp
import fastbp.checkpoint as C


def _problem(n=30, sizes=(3, 5, 2), seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, sizes[0])), rng.normal(size=(n, sizes[-1]))


def _model(dtype="float64", sizes=(3, 5, 2)):
    return fastbp.MLP(list(sizes), activation=["tanh", "identity"], init="normal",
                      dtype=dtype, seed=1)


@pytest.fixture
def copies(monkeypatch, tmp_path):
    """Record every checkpoint written: a list of (epoch, copy of the file)."""
    written = []
    original = C.write_checkpoint

    def write(path, model, run):
        original(path, model, run)
        copy = tmp_path / f"copy-{len(written)}-{run.done}.npz"
        shutil.copyfile(path, copy)
        written.append((run.done, copy))

    monkeypatch.setattr(C, "write_checkpoint", write)
    return written


# ----------------------------------------------------------------------- the API


@pytest.mark.parametrize("every, expected", [
    (100, ("epochs", 100)), (1, ("epochs", 1)), (np.int64(7), ("epochs", 7)),
    ("30s", ("seconds", 30.0)), ("2.5 s", ("seconds", 2.5)), ("10min", ("seconds", 600.0)),
    ("1 minute", ("seconds", 60.0)), ("2h", ("seconds", 7200.0)), (".5s", ("seconds", 0.5)),
    (datetime.timedelta(seconds=90), ("seconds", 90.0)), (None, ("seconds", 60.0)),
])
def test_checkpoint_every_values(tmp_path, every, expected):
    from fastbp._validation import check_checkpoint
    path, got = check_checkpoint(tmp_path / "run.npz", every)
    assert path == os.fspath(tmp_path / "run.npz")
    assert got == expected


@pytest.mark.parametrize("every, exc, match", [
    (30.0, TypeError, "'30s'"), (0, ValueError, ">= 1"), (-5, ValueError, ">= 1"),
    (True, TypeError, "int"), ("30", ValueError, "duration"), ("soon", ValueError, "duration"),
    ("0s", ValueError, "positive"), (datetime.timedelta(0), ValueError, "positive"),
    ([30], TypeError, "int"),
])
def test_bad_checkpoint_every(tmp_path, every, exc, match):
    X, y = _problem()
    m = _model()
    p0 = m.params.copy()
    with pytest.raises(exc, match=match):
        m.fit(X, y, epochs=3, checkpoint=tmp_path / "run.npz", checkpoint_every=every)
    np.testing.assert_array_equal(m.params, p0)
    assert not (tmp_path / "run.npz").exists()


def test_bad_checkpoint_paths(tmp_path):
    X, y = _problem()
    m = _model()
    with pytest.raises(ValueError, match="without checkpoint"):
        m.fit(X, y, checkpoint_every=10)
    with pytest.raises(ValueError, match="does not exist"):
        m.fit(X, y, checkpoint=tmp_path / "no" / "such" / "run.npz")
    with pytest.raises(ValueError, match="is a folder"):
        m.fit(X, y, checkpoint=tmp_path)
    with pytest.raises(TypeError, match="checkpoint"):
        m.fit(X, y, checkpoint=3)


def test_a_checkpoint_goes_only_over_an_earlier_checkpoint(tmp_path):
    """fit writes its checkpoint, chunk after chunk, over the file at the path: an earlier
    checkpoint is replaced, any other file (the data, a saved model, a pipe) is refused
    before training and left as it was."""
    import stat

    X, y = _problem()
    data = tmp_path / "data.csv"
    np.savetxt(data, np.column_stack([X, y]), delimiter=",")
    saved = tmp_path / "model.npz"
    _model().save(saved)
    for path, match in ((data, "is not a fastbp training checkpoint"),
                        (saved, "is not a fastbp training checkpoint")):
        before = path.read_bytes()
        m = _model()
        start = m.params.copy()
        with pytest.raises(ValueError, match=rf"checkpoint .*{path.name}.* exists and {match}"):
            m.fit(X, y, epochs=3, checkpoint=path)
        assert path.read_bytes() == before
        np.testing.assert_array_equal(m.params, start)
    run = tmp_path / "run.npz"
    _model().fit(X, y, epochs=3, checkpoint=run)
    m = _model()
    m.fit(X, y, epochs=5, lr=0.05, checkpoint=run)  # over the earlier checkpoint
    m2, _ = fastbp.resume(run, X, y)
    np.testing.assert_array_equal(m2.params, m.params)
    if hasattr(os, "mkfifo"):
        pipe = tmp_path / "pipe"
        os.mkfifo(pipe)
        with pytest.raises(ValueError, match="is not a regular file"):
            _model().fit(X, y, epochs=3, checkpoint=pipe)
        assert stat.S_ISFIFO(os.stat(pipe).st_mode)


def test_checkpoint_contents(tmp_path):
    X, y = _problem()
    m = _model()
    h = m.fit(X, y, epochs=25, lr=0.05, batch_size=4, shuffle=True, seed=2, record_every=3,
              checkpoint=tmp_path / "run.npz", checkpoint_every=10)
    with np.load(tmp_path / "run.npz", allow_pickle=False) as z:
        assert str(z["format"]) == "fastbp-checkpoint"
        assert int(z["format_version"]) == 2
        assert int(z["run_epoch"]) == 25 and int(z["run_epochs"]) == 25
        assert float(z["lr"]) == 0.05 and int(z["batch_size"]) == 4
        assert bool(z["shuffle"]) and int(z["record_every"]) == 3
        # the training options are stored by name, not as arrays read by index
        assert float(z["rule_lr"]) == 0.05 and int(z["rule_optimizer"]) == 0
        assert float(z["rule_momentum"]) == 0.0 and not bool(z["rule_nesterov"])
        assert int(z["stop_patience"]) == 0 and not bool(z["stop_restore_best"])
        assert int(z["history_stride"]) == 1 and float(z["es_best_loss"][0]) == np.inf
        np.testing.assert_array_equal(z["history"], h.loss)
        np.testing.assert_array_equal(z["params"], m.params)
        np.testing.assert_array_equal(z["rng_state"], m._rng_state)
    # fastbp.load reads a checkpoint as the model it holds
    m2 = fastbp.load(tmp_path / "run.npz")
    np.testing.assert_array_equal(m2.params, m.params)
    assert m2.sizes == m.sizes and m2.activations == m.activations


def test_checkpoints_fall_on_multiples_of_the_epochs(tmp_path, copies):
    X, y = _problem()
    _model().fit(X, y, epochs=30, lr=0.01, checkpoint=tmp_path / "run.npz",
                 checkpoint_every=7)
    assert [e for e, _ in copies] == [7, 14, 21, 28, 30]


def test_duration_checkpoints(tmp_path, copies):
    X, y = _problem()
    _model().fit(X, y, epochs=30, lr=0.01, checkpoint=tmp_path / "run.npz",
                 checkpoint_every="1h")
    assert [e for e, _ in copies] == [30]  # only the last one, when the run ends


# -------------------------------------------------------- split runs, bit-identical


CASES = [
    dict(batch_size=None, shuffle=False, record_every=1, dtype="float64"),
    dict(batch_size=1, shuffle=True, record_every=1, dtype="float64"),
    dict(batch_size=4, shuffle=True, record_every=3, dtype="float64"),
    dict(batch_size=7, shuffle=False, record_every=4, dtype="float32"),
    dict(batch_size=None, shuffle=True, record_every=5, dtype="float32"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_resume_from_any_checkpoint_is_bit_identical(tmp_path, copies, case):
    X, y = _problem()
    case = dict(case)
    dtype = case.pop("dtype")
    epochs, every = 40, 9
    ref = _model(dtype)
    h_ref = ref.fit(X, y, epochs=epochs, lr=0.02, seed=4, **case)
    m = _model(dtype)
    h = m.fit(X, y, epochs=epochs, lr=0.02, seed=4, checkpoint=tmp_path / "run.npz",
              checkpoint_every=every, **case)
    np.testing.assert_array_equal(m.params, ref.params)
    np.testing.assert_array_equal(h.loss, h_ref.loss)
    assert [e for e, _ in copies] == [9, 18, 27, 36, 40]
    for epoch, path in list(copies):
        m2, h2 = fastbp.resume(path, X, y)
        assert m2.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(m2.params, ref.params)
        np.testing.assert_array_equal(m2._rng_state, ref._rng_state)
        np.testing.assert_array_equal(h2.loss, h_ref.loss)
        assert h2.epochs == epochs and h2.extra["resumed_at"] == epoch
        assert h2.record_every == h_ref.record_every and h2.stopped is None


def test_resume_continues_writing_checkpoints(tmp_path, copies):
    X, y = _problem()
    m = _model()
    m.fit(X, y, epochs=30, lr=0.02, checkpoint=tmp_path / "run.npz", checkpoint_every=10)
    first = copies[0][1]
    copies.clear()
    work = tmp_path / "work.npz"
    shutil.copyfile(first, work)
    m2, _ = fastbp.resume(work, X, y)
    assert [e for e, _ in copies] == [20, 30]
    np.testing.assert_array_equal(fastbp.load(work).params, m.params)
    # resuming a finished run returns at once, with the whole history
    copies.clear()
    m3, h3 = fastbp.resume(work, X, y)
    assert copies == [] and h3.epochs == 30 and len(h3.loss) == 30
    np.testing.assert_array_equal(m3.params, m.params)


def test_ctrl_c_writes_a_checkpoint_and_resume_finishes_the_run(tmp_path, monkeypatch):
    """Ctrl-C right after the first checkpoint: fit returns early with a warning; the
    checkpoint holds that state and resume completes the run bit-identically."""
    X, y = _problem()
    original = C.write_checkpoint
    calls = []

    def write_then_ctrl_c(path, model, run):
        original(path, model, run)
        calls.append(run.done)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(C, "write_checkpoint", write_then_ctrl_c)
    kw = dict(epochs=50, lr=0.02, batch_size=3, shuffle=True, seed=8, record_every=2)
    m = _model()
    with pytest.warns(RuntimeWarning, match=r"interrupted.*after 10 of 50 epochs.*resume"):
        h = m.fit(X, y, checkpoint=tmp_path / "run.npz", checkpoint_every=10, **kw)
    assert h.stopped == "interrupted" and h.epochs == 10 and calls == [10]
    monkeypatch.setattr(C, "write_checkpoint", original)
    m2, h2 = fastbp.resume(tmp_path / "run.npz", X, y)
    ref = _model()
    h_ref = ref.fit(X, y, **kw)
    np.testing.assert_array_equal(m2.params, ref.params)
    np.testing.assert_array_equal(h2.loss, h_ref.loss)


@pytest.mark.parametrize("path", [None, 3, b"run.npz"])
def test_resume_names_a_path_that_is_not_one(path):
    X, y = _problem()
    with pytest.raises(TypeError, match="resume's path must be the checkpoint file's path"):
        fastbp.resume(path, X, y)


def test_resume_needs_the_same_data(tmp_path):
    X, y = _problem()
    _model().fit(X, y, epochs=5, checkpoint=tmp_path / "run.npz", checkpoint_every=2)
    X2 = X.copy()
    X2[3, 1] += 1e-9
    with pytest.raises(ValueError, match="not the data the run.*was started with"):
        fastbp.resume(tmp_path / "run.npz", X2, y)
    with pytest.raises(ValueError, match="not the data"):
        fastbp.resume(tmp_path / "run.npz", X[::-1], y[::-1])
    with pytest.raises(ValueError, match="29 samples.*30"):
        fastbp.resume(tmp_path / "run.npz", X[:29], y[:29])
    with pytest.raises(ValueError, match="features"):
        fastbp.resume(tmp_path / "run.npz", X[:, :2], y)
    # the same values in another dtype or memory order are the same data
    fastbp.resume(tmp_path / "run.npz", np.asfortranarray(X), y.tolist())


@pytest.mark.parametrize("field, value, match", [
    ("run_epoch", 99, "inconsistent run state"),
    ("record_every", 0, "inconsistent run state"),
    ("run_epochs", 2 ** 62, "inconsistent run state"),  # past fit's 2**53: never ends
    ("history", np.zeros(2), "history"),
    ("lr", -1.0, "inconsistent run settings"),
    ("every_kind", "weeks", "checkpoint_every"),
    ("data_key", 5, "data_key"),
])
def test_inconsistent_checkpoint(tmp_path, field, value, match):
    X, y = _problem()
    _model().fit(X, y, epochs=5, checkpoint=tmp_path / "run.npz")
    with np.load(tmp_path / "run.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[field] = np.array(value)
    with open(tmp_path / "bad.npz", "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(fastbp.ModelFileError, match=f"bad.npz.*{match}"):
        fastbp.resume(tmp_path / "bad.npz", X, y)


def _with_nan(a):
    a = a.astype(np.float64).copy()
    a.flat[0] = np.nan
    return a


def _negative_second_moment(a):
    a = a.copy()
    a[1, 0] = -1.0
    return a


@pytest.mark.parametrize("field, edit, match", [
    ("opt_state", _with_nan, "optimizer state contains NaN"),
    ("opt_state", _negative_second_moment, "negative second moment"),
    ("opt_step", lambda a: np.array([-1]), "negative step count"),
    ("opt_kind", lambda a: np.array("rmsprop"), "unknown optimizer 'rmsprop'"),
    ("es_bad_checks", lambda a: np.array([-1]), "inconsistent early-stopping record"),
    ("es_best_epoch", lambda a: np.array([999]), "inconsistent early-stopping record"),
    ("best_params", _with_nan, "NaN or infinity in the best parameters"),
    ("val_x", _with_nan, "NaN or infinity in the validation set"),
    ("val_y", _with_nan, "NaN or infinity in the validation set"),
])
def test_hand_edited_training_state_is_refused(tmp_path, field, edit, match):
    """A checkpoint's optimizer state, early-stopping record and validation set are
    what a resumed run trains on: NaN there made NaN weights, reported as a divergence."""
    X, y = _problem()
    _model().fit(X, y, epochs=6, optimizer="adam", validation_fraction=0.2, patience=50,
                 restore_best=True, checkpoint=tmp_path / "run.npz", checkpoint_every=3)
    with np.load(tmp_path / "run.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    fastbp.resume(tmp_path / "run.npz", X, y)  # the file as written resumes
    arrays[field] = edit(arrays[field])
    with open(tmp_path / "bad.npz", "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(fastbp.ModelFileError, match=f"bad.npz.*{match}"):
        fastbp.resume(tmp_path / "bad.npz", X, y)


def test_future_checkpoint_version(tmp_path):
    X, y = _problem()
    _model().fit(X, y, epochs=5, checkpoint=tmp_path / "run.npz")
    with np.load(tmp_path / "run.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["format_version"] = np.array(3)
    with open(tmp_path / "run.npz", "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(fastbp.ModelFileError, match="newer fastbp.*fastbp-checkpoint"):
        fastbp.resume(tmp_path / "run.npz", X, y)


# ------------------------------------------------------------------ failures


def test_a_failed_write_keeps_the_last_checkpoint_and_training_goes_on(tmp_path, copies,
                                                                       monkeypatch):
    X, y = _problem()
    real_fsync = os.fsync
    n = [0]

    def flaky_fsync(fd):
        n[0] += 1
        if n[0] == 3:  # the second checkpoint's file (the first fsyncs file and folder)
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky_fsync)
    m = _model()
    with pytest.warns(RuntimeWarning, match=r"could not write the checkpoint.*epoch 20"):
        h = m.fit(X, y, epochs=40, lr=0.02, checkpoint=tmp_path / "run.npz",
                  checkpoint_every=10)
    assert h.epochs == 40
    assert [e for e, _ in copies] == [10, 30, 40]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("copy")) \
        == ["run.npz"]  # no temporary file left behind
    np.testing.assert_array_equal(fastbp.load(tmp_path / "run.npz").params, m.params)


def test_divergence_checkpoints_the_last_finite_state(tmp_path):
    X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = np.array([0.0, 1.0, 1.0, 0.0])
    m = fastbp.MLP([2, 8, 1], activation=["relu", "identity"], seed=0)
    with pytest.raises(fastbp.DivergenceError) as info:
        m.fit(X, y, epochs=100, lr=1e6, checkpoint=tmp_path / "run.npz",
              checkpoint_every=1000)
    assert "run.npz" in str(info.value)
    saved = fastbp.load(tmp_path / "run.npz")
    np.testing.assert_array_equal(saved.params, m.params)
    assert np.isfinite(saved.params).all()
    with pytest.raises(fastbp.DivergenceError) as again:
        fastbp.resume(tmp_path / "run.npz", X, y)
    assert again.value.model is not None and np.isfinite(again.value.model.params).all()
    assert again.value.epoch == info.value.epoch


# ------------------------------------------------------ SIGKILL, in a subprocess

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import fastbp
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 4)), rng.normal(size=(64, 3))
    m = fastbp.MLP([4, 16, 3], activation=["tanh", "identity"], init="normal", seed=3)
    m.fit(X, y, epochs={epochs}, lr=0.01, batch_size=8, shuffle=True, seed=5,
          record_every=100, checkpoint=sys.argv[1], checkpoint_every={every})
    print("finished", flush=True)
""")


def test_sigkill_between_checkpoints_then_resume(tmp_path):
    epochs, every = 80_000, 2_000
    path = tmp_path / "run.npz"
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(epochs=epochs, every=every),
                              os.fspath(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        seen = 0
        while time.monotonic() < deadline and child.poll() is None:
            if path.exists():
                # the parent reads while the child rewrites: atomic replacement means
                # every read sees a complete checkpoint
                _, run = C.read_checkpoint(path)
                seen = run.done
                if seen >= 2 * every:
                    time.sleep(0.013)  # land between two checkpoints
                    break
            time.sleep(0.005)
        child.kill()  # SIGKILL: no handler, no cleanup, no last checkpoint
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL, (child.returncode, out, err)
    assert "finished" not in out
    _, run = C.read_checkpoint(path)
    assert every * 2 <= run.done < epochs and run.done % every == 0
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["run.npz"]

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 4)), rng.normal(size=(64, 3))
    m, h = fastbp.resume(path, X, y)
    ref = fastbp.MLP([4, 16, 3], activation=["tanh", "identity"], init="normal", seed=3)
    h_ref = ref.fit(X, y, epochs=epochs, lr=0.01, batch_size=8, shuffle=True, seed=5,
                    record_every=100)
    np.testing.assert_array_equal(m.params, ref.params)
    np.testing.assert_array_equal(h.loss, h_ref.loss)
    assert h.epochs == epochs


@pytest.mark.parametrize("iconf_entries", [8, 7])
def test_format_1_checkpoints_still_resume(tmp_path, iconf_entries):
    """A checkpoint written before the options had names (format 1: hyper / iconf arrays
    read by index, the validation set one sample per column, es_state as floats) resumes
    to the same bits as the run done in one piece.  Those written before
    epoch_loss='sample_mean' existed have 7 iconf entries, not 8 (they were refused as
    having the wrong shape)."""
    X, y = _problem()
    Xv, yv = _problem(seed=5)
    kw = dict(epochs=30, lr=0.05, batch_size=4, shuffle=True, seed=2, momentum=0.9,
              validation_data=(Xv, yv), patience=50, restore_best=True)
    ref = _model()
    h_ref = ref.fit(X, y, **kw)
    path = tmp_path / "run.npz"
    _model().fit(X, y, checkpoint=path, checkpoint_every=10, **dict(kw, epochs=30))
    # the run's checkpoint at epoch 10, rewritten in format 1
    m = _model()
    m.fit(X, y, checkpoint=path, checkpoint_every=10, callbacks=lambda e, h, mm: e < 10,
          **kw)
    with np.load(path, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    assert int(a["run_epoch"]) == 10
    hyper = [a["rule_" + k] for k in ("lr", "momentum", "beta1", "beta2", "eps", "l2",
                                      "power", "step_factor", "lr_min")] + [a["stop_min_delta"]]
    iconf = [a["rule_" + k] for k in ("optimizer", "nesterov", "schedule", "step_size",
                                      "total_epochs")] + [a["stop_patience"],
                                                          a["stop_restore_best"],
                                                          a["rule_sample_mean"]]
    v1 = {k: v for k, v in a.items() if not k.startswith(("rule_", "stop_", "es_", "val_"))}
    v1.update(format_version=np.array(1), hyper=np.array(hyper, dtype=np.float64),
              iconf=np.array(iconf[:iconf_entries], dtype=np.int64), xv=a["val_x"].T,
              yv=a["val_y"].T,
              swv=a["val_w"], val_history=a["val_history"],
              es_state=np.array([a["es_best_loss"][0], a["es_bad_checks"][0],
                                 a["es_best_epoch"][0]], dtype=np.float64))
    del v1["history_stride"]
    with open(path, "wb") as fh:
        np.savez(fh, **v1)
    m2, h = fastbp.resume(path, X, y)
    np.testing.assert_array_equal(m2.params, ref.params)
    np.testing.assert_array_equal(h.loss, h_ref.loss)
    np.testing.assert_array_equal(h.val_loss, h_ref.val_loss)


def test_checkpoints_from_before_the_recorded_l2_field_still_resume(tmp_path):
    """Format-2 checkpoints written before options.Rule had l2_loss (the L2 coefficient
    of the recorded loss) resume with it equal to l2, to the bits of the run in one
    piece."""
    X, y = _problem()
    kw = dict(epochs=30, lr=0.05, batch_size=4, shuffle=True, seed=2, momentum=0.9,
              l2=0.01)
    ref = _model()
    h_ref = ref.fit(X, y, **kw)
    path = tmp_path / "run.npz"
    _model().fit(X, y, checkpoint=path, checkpoint_every=10,
                 callbacks=lambda e, h, mm: e < 10, **kw)
    with np.load(path, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    assert float(a.pop("rule_l2_loss")) == 0.01
    with open(path, "wb") as fh:
        np.savez(fh, **a)
    m2, h = fastbp.resume(path, X, y)
    np.testing.assert_array_equal(m2.params, ref.params)
    np.testing.assert_array_equal(h.loss, h_ref.loss)


def test_resume_after_validation_fraction_takes_the_data_fit_was_given(tmp_path):
    # fit held a fraction out for validation; resume takes the same X, y, holds the
    # same rows out again, and ends where the uninterrupted run ends
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 4))
    y = rng.normal(size=(200, 2))
    kw = dict(epochs=40, lr=0.05, batch_size=16, shuffle=True, seed=5,
              validation_fraction=0.2, patience=100, restore_best=False)
    whole = fastbp.MLP([4, 6, 2], seed=1)
    h_whole = whole.fit(X, y, **kw)
    path = str(tmp_path / "vf.npz")
    part = fastbp.MLP([4, 6, 2], seed=1)
    part.fit(X, y, checkpoint=path, checkpoint_every=5,
             callbacks=[lambda epoch, hist, model: epoch < 15], **kw)
    model, hist = fastbp.resume(path, X, y)
    np.testing.assert_array_equal(model.params, whole.params)
    np.testing.assert_array_equal(hist.loss, h_whole.loss)
    np.testing.assert_array_equal(hist.val_loss, h_whole.val_loss)
    with pytest.raises(ValueError, match="resume needs the same X and y"):
        fastbp.resume(path, X[:160], y[:160])  # the training rows alone are not the data


@pytest.mark.parametrize("field, value, match", [
    ("rule_optimizer", 77, "inconsistent training options"),
    ("rule_schedule", 99, "inconsistent training options"),
    ("rule_momentum", 1.5, "inconsistent training options"),
    ("sample_weight", np.ones(7), "inconsistent sample weights"),
    ("batch_size", 10_000, "inconsistent batch_size"),
    ("opt_step", np.array([1, 2]), "opt_step must hold one value"),
    ("es_best_loss", np.array([1.0, 2.0]), "es_best_loss must hold one value"),
    # options of another type: a TypeError in the checks, or kernels compiled anew
    ("rule_lr", "0.1", "invalid training options: rule_lr"),
    ("stop_patience", "a", "invalid training options: stop_patience"),
    ("rule_optimizer", 0.0, "invalid training options: rule_optimizer"),
    ("rule_nesterov", 5, "invalid training options: rule_nesterov"),
    ("rule_sample_mean", "x", "invalid training options: rule_sample_mean"),
    ("stop_min_delta", np.nan, "invalid training options: stop_min_delta"),
    ("stop_patience", -5, "inconsistent early stopping options"),
    ("rule_total_epochs", 0, "inconsistent training options"),
    # every 0.5 epochs was taken as every int(0.5) = 0: a ZeroDivisionError in resume
    ("every_value", 0.5, "inconsistent checkpoint_every"),
    ("every_value", 2.5, "inconsistent checkpoint_every"),
    # fields read without a check of their own fail in numpy: the error names the file
    ("sample_weight", np.array(["a"] * 40), "wrong kind or shape"),
    ("history", np.array(["x", "y"]), "history"),
    ("opt_state", np.array(["s"]), "wrong kind or shape"),
])
def test_a_checkpoint_with_values_fit_could_not_have_written_is_refused(tmp_path, field,
                                                                        value, match):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 1))
    path = tmp_path / "run.npz"
    fastbp.MLP([3, 4, 1], seed=0).fit(X, y, epochs=4, lr=0.1, batch_size=8,
                                      checkpoint=str(path), checkpoint_every=2,
                                      sample_weight=np.ones(40))
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays[field] = np.asarray(value)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match=match) as info:
        fastbp.resume(str(bad), X, y)
    assert "bad.npz" in str(info.value)


@pytest.mark.parametrize("val_w", [np.ones(3), np.ones(1), np.ones((10, 1)),
                                   np.array([1.0] * 9 + [np.nan]), -np.ones(10)],
                         ids=["short", "one", "2-D", "nan", "negative"])
def test_validation_weights_of_the_wrong_length_are_refused(tmp_path, val_w):
    """The kernels read one validation weight per validation sample, unchecked: a
    checkpoint with fewer made resume read past the array (validation losses of 1e178)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 1))
    Xv, yv = rng.normal(size=(10, 3)), rng.normal(size=(10, 1))
    path = tmp_path / "run.npz"
    fastbp.MLP([3, 4, 1], seed=0).fit(X, y, epochs=6, lr=0.1, batch_size=8,
                                      validation_data=(Xv, yv), checkpoint=str(path),
                                      checkpoint_every=3,
                                      callbacks=[lambda e, h, m: e < 3])
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    assert int(arrays["run_epoch"]) == 3 and arrays["val_x"].shape == (10, 3)
    arrays["val_w"] = val_w
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match="inconsistent validation sample weights") as info:
        fastbp.resume(str(bad), X, y)
    assert "bad.npz" in str(info.value)
    arrays["val_w"] = np.ones(10)  # one per validation sample: resumes
    np.savez(bad, **arrays)
    _, h = fastbp.resume(str(bad), X, y)
    assert h.epochs == 6 and np.isfinite(h.val_loss).all()


@pytest.mark.parametrize("restore_best", [False, True])
def test_resuming_a_run_that_stopped_early_trains_no_further(tmp_path, restore_best):
    """The last checkpoint of a run early stopping ended is of a finished run: resume
    returns at once (stopped "early_stopping", the same epochs, records and parameters)
    instead of training one more epoch past the stop."""
    X, y = _problem(n=40)
    Xv, yv = _problem(n=20, seed=9)
    path = tmp_path / "run.npz"
    m = _model()
    h = m.fit(X, y, epochs=5000, lr=0.05, validation_data=(Xv, yv), patience=20,
              restore_best=restore_best, checkpoint=path, checkpoint_every=10_000)
    assert h.stopped == "early_stopping" and h.epochs < 5000
    with np.load(path) as f:
        assert int(f["run_epoch"]) == h.epochs
    m2, h2 = fastbp.resume(path, X, y)
    assert h2.stopped == "early_stopping" and h2.epochs == h.epochs
    assert h2.best_epoch == h.best_epoch
    np.testing.assert_array_equal(h2.loss, h.loss)
    np.testing.assert_array_equal(h2.val_loss, h.val_loss)
    np.testing.assert_array_equal(m2.params, m.params)
    with np.load(path) as f:  # and the checkpoint is left as it was
        assert int(f["run_epoch"]) == h.epochs


def test_checkpoints_and_callbacks_see_the_training_seconds_so_far(tmp_path, copies):
    """History.seconds is the run's training time: a callback's History and every
    checkpoint hold the time so far (they held 0.0 until the fit returned), so the
    History of a run resumed from any checkpoint counts the time of all its pieces."""
    X, y = _problem()
    seen = []
    m = _model()
    h = m.fit(X, y, epochs=40, lr=0.02, checkpoint=tmp_path / "run.npz",
              checkpoint_every=10, chunk_seconds=1e-4,
              callbacks=[lambda e, hist, model: seen.append((hist.seconds,
                                                              hist.compile_seconds))])
    assert len(seen) >= 4
    assert all(s > 0 for s, _ in seen) and [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert all(c == h.compile_seconds for _, c in seen)
    assert seen[-1][0] <= h.seconds
    stored = []
    for epoch, path in list(copies):
        with np.load(path) as f:
            stored.append(float(f["seconds"]))
    assert [e for e, _ in copies] == [10, 20, 30, 40]
    assert all(s > 0 for s in stored) and stored == sorted(stored) and stored[-1] <= h.seconds
    m2, h2 = fastbp.resume(copies[1][1], X, y)
    assert h2.seconds > stored[1]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, ValueError])
def test_a_callback_that_raises_leaves_its_state_in_the_checkpoint(tmp_path, exc):
    """An exception from a callback (KeyboardInterrupt included) ends the fit with that
    exception; the model holds the state after the epochs the callback was shown, the
    checkpoint holds it too (none was written before: checkpoint_every is long), and
    resume finishes the run bit-identically."""
    X, y = _problem()
    kw = dict(epochs=60, lr=0.02, batch_size=4, shuffle=True, seed=3, optimizer="adam")
    seen = []

    def cb(epoch, hist, model):
        seen.append(epoch)
        if epoch >= 20:
            raise exc("stop here")

    path = tmp_path / "run.npz"
    m = _model()
    with pytest.raises(exc):
        m.fit(X, y, checkpoint=path, checkpoint_every="1h", chunk_seconds=1e-4,
              callbacks=[cb], **kw)
    stop = seen[-1]
    assert 20 <= stop < 60
    with np.load(path) as f:
        assert int(f["run_epoch"]) == stop
    ref = _model()
    ref.fit(X, y, **dict(kw, epochs=stop))
    np.testing.assert_array_equal(m.params, ref.params)
    m2, h2 = fastbp.resume(path, X, y)
    whole = _model()
    h_whole = whole.fit(X, y, **kw)
    np.testing.assert_array_equal(m2.params, whole.params)
    np.testing.assert_array_equal(h2.loss, h_whole.loss)
    assert h2.epochs == 60 and h2.extra["resumed_at"] == stop


def test_the_history_of_a_resumed_run_that_diverges_says_where_it_resumed(tmp_path):
    """Every History of a resumed run carries extra["resumed_at"]: the one resume
    returns, and also a DivergenceError's (it had none)."""
    X, y = _problem()
    path = tmp_path / "run.npz"
    m = fastbp.MLP([3, 5, 2], activation=["identity", "identity"], init="normal", seed=1)
    with pytest.raises(fastbp.DivergenceError):  # lr 0.76 diverges at epoch 11
        m.fit(X, y, epochs=20, lr=0.76, checkpoint=path, checkpoint_every=3)
    with np.load(path) as f:
        at = int(f["run_epoch"])
    assert 0 < at < 20
    with pytest.raises(fastbp.DivergenceError) as err:
        fastbp.resume(path, X, y)
    assert err.value.history.extra["resumed_at"] == at
    assert err.value.history.epochs >= at
