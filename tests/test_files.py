"""fastbp.load (and resume) on files that are missing, empty, truncated, corrupted,
foreign, from a newer format version or inconsistent: a clear error naming the file and
the problem, never a crash, never a half-read model, never code executed from the file."""

import io
import os
import re
import zipfile

import numpy as np
import pytest

import fastbp
from fastbp.io import model_arrays

MFE = fastbp.ModelFileError


@pytest.fixture
def model():
    m = fastbp.MLP([3, 4, 2], activation=["tanh", "identity"], init="normal", seed=3)
    rng = np.random.default_rng(0)
    m.fit(rng.normal(size=(8, 3)), rng.normal(size=(8, 2)), epochs=3, lr=0.05)
    return m


@pytest.fixture
def saved(tmp_path, model):
    path = tmp_path / "m.npz"
    model.save(path)
    return path


def _fields(model, **changes):
    """The arrays of a valid model file, with some replaced (None removes one)."""
    arrays = dict(format=np.array("fastbp-mlp"), format_version=np.array(1),
                  **model_arrays(model))
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    return arrays


def _write(path, arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _raises_naming(path, exc=MFE, match=None):
    """pytest.raises for ``exc`` whose message names ``path`` and matches ``match``."""
    pattern = re.escape(os.fspath(path)) + (f"(?s:.*){match}" if match else "")
    return pytest.raises(exc, match=pattern)


# ------------------------------------------------------------------ the good case


def test_round_trip_and_file_format(saved, model):
    with np.load(saved, allow_pickle=False) as z:
        assert str(z["format"]) == "fastbp-mlp"
        assert int(z["format_version"]) == 1
    m2 = fastbp.load(saved)
    np.testing.assert_array_equal(m2.params, model.params)
    np.testing.assert_array_equal(m2._rng_state, model._rng_state)


def test_model_file_error_is_a_value_error():
    assert issubclass(MFE, ValueError)


def test_save_is_atomic(tmp_path, model, monkeypatch):
    """A crash while writing leaves the previous file intact and no temporary file."""
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    m2 = fastbp.MLP([3, 4, 2], seed=9)

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="space"):
        m2.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_save_errors_name_the_users_path_not_a_temporary_file(tmp_path, model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        model.save("nodir/model.npz")
    assert str(err.value) == "folder 'nodir' does not exist (saving 'nodir/model.npz')"
    (tmp_path / "plain").write_text("a file, not a folder")
    with pytest.raises(NotADirectoryError, match="'plain' is not a folder"):
        model.save("plain/model.npz")
    (tmp_path / "sub").mkdir()
    with pytest.raises(IsADirectoryError, match="'sub' is a folder"):
        model.save("sub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "sub"]
    assert list((tmp_path / "sub").iterdir()) == []


def test_save_failure_while_writing_names_the_users_path(tmp_path, model, monkeypatch):
    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError) as err:
        model.save(tmp_path / "m.npz")
    assert str(tmp_path / "m.npz") in str(err.value) and "No space left" in str(err.value)
    assert ".tmp" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_save_uses_the_name_as_given(tmp_path, model):
    model.save(tmp_path / "model.bin")
    assert (tmp_path / "model.bin").is_file()
    np.testing.assert_array_equal(fastbp.load(tmp_path / "model.bin").params, model.params)


@pytest.mark.parametrize("name", ["m" * 240 + ".npz", "m" * 255, "\u00e9" * 127])
def test_save_takes_the_longest_names_the_folder_takes(tmp_path, model, name):
    # the temporary file was named after the file, ~25 bytes longer: names over ~230
    # bytes, which the folder takes, failed with "File name too long"
    path = tmp_path / name
    model.save(path)
    np.testing.assert_array_equal(fastbp.load(path).params, model.params)
    model.save(path)  # and over an existing file
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_paths_that_are_not_str_or_pathlike_are_a_type_error(tmp_path, model, saved):
    """save and load take what fit's checkpoint takes (str or os.PathLike): bytes gave
    an unrelated TypeError from str methods (save) or a misleading "no such file" (load)."""
    for path in (os.fsencode(str(tmp_path / "b.npz")), 7, None):
        with pytest.raises(TypeError, match="file path must be a str or os.PathLike"):
            model.save(path)
        with pytest.raises(TypeError, match="file path must be a str or os.PathLike"):
            fastbp.load(path)
    assert not (tmp_path / "b.npz").exists()
    assert fastbp.load(str(saved)).sizes == model.sizes


def test_saved_file_has_usual_permissions(tmp_path, model):
    if os.name == "nt":
        pytest.skip("POSIX permissions")
    umask = os.umask(0)
    os.umask(umask)
    model.save(tmp_path / "m.npz")
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o666 & ~umask


# -------------------------------------------------------------- not there / empty


def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz") as info:
        fastbp.load(path)
    assert info.value.filename == os.fspath(path)


def test_folder(tmp_path):
    with _raises_naming(tmp_path, match="folder"):
        fastbp.load(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with _raises_naming(path, match="empty"):
        fastbp.load(path)


# ---------------------------------------------------------------------- foreign


def test_text_file(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("sizes: [2, 4, 1]\n")
    with _raises_naming(path, match="not a fastbp model file"):
        fastbp.load(path)


def test_npy_file(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(5.0))
    with _raises_naming(path, match=r"\.npy"):
        fastbp.load(path)


def test_foreign_npz(tmp_path):
    path = _write(tmp_path / "other.npz", dict(a=np.arange(3), b=np.ones(2)))
    with _raises_naming(path, match="no 'format' marker.*'a', 'b'"):
        fastbp.load(path)


def test_zip_that_is_not_npz(tmp_path):
    path = tmp_path / "archive.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with _raises_naming(path, match="no 'format' marker"):
        fastbp.load(path)


def test_empty_zip(tmp_path):
    path = tmp_path / "empty.zip"
    with zipfile.ZipFile(path, "w"):
        pass
    with _raises_naming(path, match="no 'format' marker"):
        fastbp.load(path)


def test_other_format_marker(tmp_path, model):
    path = _write(tmp_path / "m.npz", _fields(model, format=np.array("keras-h5")))
    with _raises_naming(path, match="unknown format marker"):
        fastbp.load(path)


def test_marker_of_the_wrong_type(tmp_path, model):
    path = _write(tmp_path / "m.npz", _fields(model, format=np.arange(3)))
    with _raises_naming(path, match="format marker"):
        fastbp.load(path)


# -------------------------------------------------------------------- versions


def test_future_version(tmp_path, model):
    path = _write(tmp_path / "m.npz", _fields(model, format_version=np.array(7)))
    with _raises_naming(path, match="newer fastbp.*version 7.*upgrade"):
        fastbp.load(path)


@pytest.mark.parametrize("version", [None, np.array("one"), np.array([1, 2]), np.array(1.5)])
def test_missing_or_bad_version(tmp_path, model, version):
    arrays = _fields(model, format_version=version)
    path = _write(tmp_path / "m.npz", arrays)
    with _raises_naming(path, match="format_version"):
        fastbp.load(path)


def test_version_zero(tmp_path, model):
    path = _write(tmp_path / "m.npz", _fields(model, format_version=np.array(0)))
    with _raises_naming(path, match="version"):
        fastbp.load(path)


# -------------------------------------------------------------- damaged archives


def test_truncated_everywhere(saved):
    """Every prefix of a model file (a crash mid-copy) is refused."""
    data = saved.read_bytes()
    cut = saved.with_name("cut.npz")
    sizes = sorted(set(list(range(1, 64)) + list(range(64, len(data), 7))))
    for n in sizes:
        cut.write_bytes(data[:n])
        with _raises_naming(cut):
            fastbp.load(cut)


def test_corrupted_bytes(saved, model):
    """A flipped byte anywhere either is refused or (a byte no reader uses, e.g. a
    timestamp) gives back the very same model -- never a different one."""
    data = bytearray(saved.read_bytes())
    bad = saved.with_name("bad.npz")
    refused = 0
    for pos in range(0, len(data), 3):
        damaged = bytearray(data)
        damaged[pos] ^= 0x5A
        bad.write_bytes(bytes(damaged))
        try:
            m2 = fastbp.load(bad)
        except MFE as exc:
            assert os.fspath(bad) in str(exc)
            refused += 1
        else:
            np.testing.assert_array_equal(m2.params, model.params)
            assert m2.sizes == model.sizes and m2.activations == model.activations
            assert m2.loss_name == model.loss_name and m2.dtype == model.dtype
            np.testing.assert_array_equal(m2._rng_state, model._rng_state)
    assert refused > len(data) // 6


def test_corrupted_parameter_data_is_caught_by_the_crc(saved):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as z:
        info = z.getinfo("params.npy")
    # the last byte of the member's data (a parameter value, covered only by the CRC);
    # a local file header is 30 bytes + name + its own extra field
    local_extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30],
                                     "little")
    pos = info.header_offset + 30 + len(info.filename) + local_extra_len + info.compress_size - 1
    data[pos] ^= 0x01
    saved.write_bytes(bytes(data))
    with _raises_naming(saved, match="corrupted"):
        fastbp.load(saved)


def test_pickled_member_is_never_unpickled(tmp_path, model):
    """An object array in the archive would need pickle: refused, and nothing runs."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (os.fspath(marker), "w"))

    arrays = _fields(model)
    path = tmp_path / "evil.npz"
    buf = io.BytesIO()
    np.save(buf, np.array([Evil()], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "w") as z:
        for key, value in arrays.items():
            if key == "params":
                z.writestr("params.npy", buf.getvalue())
            else:
                b = io.BytesIO()
                np.save(b, value)
                z.writestr(f"{key}.npy", b.getvalue())
    with _raises_naming(path, match="params"):
        fastbp.load(path)
    assert not marker.exists()


# ------------------------------------------------------------ inconsistent fields


@pytest.mark.parametrize("changes, match", [
    (dict(params=np.zeros(5)), "shape"),
    (dict(params=np.full(26, np.nan)), "NaN"),
    (dict(params=np.zeros(26, dtype=np.float32)), "float32"),
    (dict(params=np.zeros((2, 13))), "params"),
    (dict(params=np.arange(26)), "params"),
    (dict(params=None), "missing field 'params'"),
    (dict(sizes=np.array([3, 0, 2])), "architecture"),
    (dict(sizes=np.array([3.0, 4.0, 2.0])), "sizes"),
    # sizes no model of these parameters has: refused before their size is allocated
    # (once a MemoryError for 64 TB of optimizer state, an OverflowError past int64)
    (dict(sizes=np.array([3, 10**12, 2])), "architecture.*needs"),
    (dict(sizes=np.array([3, 2**63, 2], dtype=np.uint64)), "architecture.*needs"),
    (dict(activations=np.array(["tanh", "swish"])), "architecture.*swish"),
    (dict(activations=np.array(["tanh"])), "architecture"),
    (dict(loss=np.array("hinge")), "architecture.*hinge"),
    (dict(loss=np.array(3)), "loss"),
    (dict(dtype=np.array("int8")), "architecture"),
    (dict(bias=np.array("yes")), "bias"),
    (dict(rng_state=np.zeros(3, dtype=np.int64)), "rng_state"),
    (dict(rng_state=None), "rng_state"),
])
def test_inconsistent_fields(tmp_path, model, changes, match):
    path = _write(tmp_path / "m.npz", _fields(model, **changes))
    with _raises_naming(path, match=match):
        fastbp.load(path)


def test_resume_refuses_a_model_file(saved):
    with _raises_naming(saved, match="not a training checkpoint.*fastbp.load"):
        fastbp.resume(saved, np.zeros((4, 3)), np.zeros((4, 2)))


def test_resume_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="run.npz"):
        fastbp.resume(tmp_path / "run.npz", np.zeros((4, 3)), np.zeros((4, 2)))


def test_resume_refuses_foreign_and_damaged_files(tmp_path):
    path = _write(tmp_path / "run.npz", dict(a=np.arange(3)))
    with _raises_naming(path, match="not a fastbp checkpoint file"):
        fastbp.resume(path, np.zeros((4, 3)), np.zeros((4, 2)))
    path.write_bytes(b"PK\x03\x04garbage")
    with _raises_naming(path, match="corrupted"):
        fastbp.resume(path, np.zeros((4, 3)), np.zeros((4, 2)))


@pytest.mark.skipif(os.name != "posix", reason="process ids are asked about on POSIX only")
def test_a_write_removes_the_temporary_files_of_dead_writers(tmp_path):
    # a process killed while it wrote a checkpoint leaves its temporary file; the next
    # write of that file removes those of processes that are gone, and only those
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {pid: f".run.npz.{pid}.0123abcd.tmp" for pid in (dead.pid, live.pid)}
        others = [".run.npz.x.tmp", ".other.npz.1.0123abcd.tmp", ".run.npz.1.zz.tmp"]
        for name in list(names.values()) + others:
            (tmp_path / name).write_bytes(b"partial")
        fastbp.MLP([2, 3, 1]).save(tmp_path / "run.npz")
        left = {p.name for p in tmp_path.iterdir()}
        assert names[dead.pid] not in left
        assert names[live.pid] in left and set(others) <= left
        assert "run.npz" in left
    finally:
        live.kill()
        live.wait()


def test_onnx_export_names_the_path_it_cannot_write(tmp_path):
    pytest.importorskip("onnx")
    m = fastbp.MLP([2, 3, 1], seed=0)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        m.to_onnx(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        m.to_onnx(tmp_path / "missing" / "m.onnx")
    with pytest.raises(ValueError, match="must name a file"):
        m.to_onnx("")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
