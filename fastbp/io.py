"""Model and checkpoint files: one .npz each, written atomically, read without pickle.

Both kinds carry a ``format`` marker and a ``format_version``:

- ``"fastbp-mlp"`` (``MLP.save``): the architecture, ``params`` and the shuffling
  generator's ``rng_state``.
- ``"fastbp-checkpoint"`` (``fit(..., checkpoint=...)``): the same model fields plus the
  state of the training run (see ``fastbp.checkpoint``).

``load`` reads either (a checkpoint gives the model as it was when it was written).
Every problem with a file -- missing, empty, truncated, corrupted, not fastbp's, written
by a newer version, inconsistent -- raises an error that names the file and the problem:
``FileNotFoundError`` for a missing file, ``ModelFileError`` (a ValueError) otherwise.
"""
import errno
import hashlib
import os
import struct
import zipfile
import zlib

import numpy as np

from .errors import ModelFileError
from .kernels.options import aligned_copy

FORMAT = "fastbp-mlp"
FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "fastbp-checkpoint"
CHECKPOINT_FORMAT_VERSION = 2
# the newest version of each format this fastbp reads
_READS = {FORMAT: FORMAT_VERSION, CHECKPOINT_FORMAT: CHECKPOINT_FORMAT_VERSION}

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # an archive, an empty archive
_NPY_MAGIC = b"\x93NUMPY"
# what reading a damaged archive member can raise (zipfile, zlib, numpy's header parser)
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, MemoryError,
                KeyError, TypeError, struct.error, NotImplementedError, RuntimeError,
                OverflowError)


# ---- writing ---------------------------------------------------------------------------
def file_path(path):
    """``path`` (str or os.PathLike) as a str; bytes and anything else are a TypeError,
    as for fit's checkpoint."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"the file path must be a str or os.PathLike, got {path!r}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"the file path must name a str path, got {path!r}")
    return path


def check_writable(path):
    """Raise, naming ``path``, when a file cannot be written there: its folder is missing,
    is not a folder or is not writable, or ``path`` is itself a folder.  Cheap enough to
    call before a long run, so that the run's result is not lost at the end."""
    path = file_path(path)
    # the folder as given, not normalized: "missing/../m.npz" needs "missing" too
    folder = os.path.dirname(path) or "."
    if not os.path.exists(folder):
        raise FileNotFoundError(f"folder {folder!r} does not exist (saving {path!r})")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder!r} is not a folder (saving {path!r})")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder; give a file name to save to")
    if os.path.exists(path) and not os.path.isfile(path):
        # a write renames a new file over the path: a pipe or a device (/dev/null,
        # /dev/stdout) would be replaced by a file, not written into
        raise FileExistsError(f"{path!r} is not a regular file (a pipe, device or "
                              f"socket); give the path of a file to save to")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"folder {folder!r} is not writable (saving {path!r})")


def atomic_savez(path, arrays):
    """Write ``arrays`` (name -> array) to the .npz file ``path``, all or nothing.

    The archive goes to a temporary file in the same folder, is flushed and fsynced, and
    replaces ``path`` with ``os.replace`` (atomic on POSIX and Windows): a crash at any
    moment leaves either the old file or the new one, never a partial file.  The name is
    used as given (no ".npz" is appended).  Errors name ``path``, never the temporary
    file: ``FileNotFoundError`` when its folder does not exist, ``IsADirectoryError``
    when ``path`` is a folder, ``PermissionError`` / ``OSError`` otherwise.
    """
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def atomic_write(path, write):
    """Call ``write(fh)`` on a binary file that replaces ``path`` once complete (see
    ``atomic_savez``: temporary file in the same folder, fsync, ``os.replace``)."""
    path = file_path(path)
    check_writable(path)
    folder = os.path.dirname(os.path.abspath(path))
    stem = _temporary_stem(os.path.basename(path))
    _remove_orphans(folder, stem)
    tmp = os.path.join(folder, f".{stem}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        # os.open (not mkstemp) so the file gets the usual umask-based permissions
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666)
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _naming(exc, path) from None
        raise
    _fsync_folder(folder)


def _temporary_stem(name):
    """What the temporary files of writes of ``name`` are named after: ``name`` itself,
    or, for a name so long that the temporary one (about 25 bytes longer) would pass
    the usual limit of 255 bytes, a digest of it."""
    if len(os.fsencode(name)) <= 200:
        return name
    return hashlib.blake2b(os.fsencode(name), digest_size=8).hexdigest()


def _remove_orphans(folder, name):
    """Remove the temporary files of earlier writes of ``name`` whose process is gone (a
    process killed while it wrote a checkpoint leaves one; a run restarted after every
    crash would pile them up).  Only where a process id can be asked about (POSIX);
    the temporary file of a live process, this one's included, is left alone."""
    if os.name != "posix":
        return
    prefix = f".{name}."
    try:
        entries = [e.name for e in os.scandir(folder) if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        pid, _, rest = entry[len(prefix):].partition(".")
        if not (pid.isdigit() and len(rest) == 12 and rest.endswith(".tmp")
                and all(c in "0123456789abcdef" for c in rest[:8])):
            continue
        if int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(folder, entry))
        except OSError:
            pass


def _alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process, or a question the system will not answer
    return True


def _naming(exc, path):
    """``exc`` (about the temporary file) as the same kind of error about ``path``."""
    reason = exc.strerror or str(exc)
    err = type(exc)(f"cannot write {path!r}: {reason}")
    err.errno = exc.errno
    return err


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def model_arrays(model):
    """The fields that describe a model: architecture, parameters, generator state."""
    return dict(sizes=np.array(model.sizes, dtype=np.int64),
                activations=np.array(model.activations),
                loss=np.array(model.loss_name), bias=np.array(model.bias),
                dtype=np.array(model.dtype.name), params=np.array(model.params),
                rng_state=np.array(model._rng_state, dtype=np.int64))


def save_model(model, path):
    # copied as pickle copies a model: refused while another thread's fit writes them
    # (its kernels release the GIL), so a file never mixes two epochs' parameters
    with model._fit_lock.still(type(model).__name__):
        arrays = model_arrays(model)
    atomic_savez(path, dict(format=np.array(FORMAT), format_version=np.array(FORMAT_VERSION),
                            **arrays))


# ---- reading ---------------------------------------------------------------------------
class Archive:
    """An opened fastbp .npz file whose members are read one at a time, each read turning
    every failure into a ModelFileError that names the file."""

    def __init__(self, path, npz, fmt, version):
        self.path = path
        self._npz = npz
        self.format = fmt
        self.version = version

    def error(self, problem):
        return ModelFileError(f"{self.path}: {problem}")

    def array(self, key):
        if key not in self._npz.files:
            raise self.error(f"missing field {key!r}; the file is incomplete or damaged")
        try:
            return self._npz[key]
        except _READ_ERRORS as exc:
            raise self.error(f"field {key!r} is corrupted ({type(exc).__name__}: {exc})") \
                from None

    def text(self, key):
        a = self.array(key)
        if a.dtype.kind != "U" or a.ndim != 0:
            raise self.error(f"field {key!r} should be a string, got {a.dtype} {a.shape}")
        return str(a)

    def integer(self, key):
        a = self.array(key)
        if a.dtype.kind not in "iu" or a.ndim != 0:
            raise self.error(f"field {key!r} should be an integer, got {a.dtype} {a.shape}")
        return int(a)

    def real(self, key):
        a = self.array(key)
        if a.dtype.kind not in "iuf" or a.ndim != 0 or not np.isfinite(a):
            raise self.error(f"field {key!r} should be a finite number, got {a!r}")
        return float(a)

    def boolean(self, key):
        a = self.array(key)
        if a.dtype.kind != "b" or a.ndim != 0:
            raise self.error(f"field {key!r} should be a boolean, got {a.dtype} {a.shape}")
        return bool(a)

    def vector(self, key, kinds, length=None):
        a = self.array(key)
        if a.dtype.kind not in kinds or a.ndim != 1 or (length is not None
                                                        and a.shape[0] != length):
            want = f"({length},)" if length is not None else "1-D"
            raise self.error(f"field {key!r} should be a {want} array, got {a.dtype} "
                             f"{a.shape}")
        return a

    def close(self):
        self._npz.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        # a hand-edited or damaged field the readers do not check one by one (a string
        # where numbers go, an array of the wrong shape) fails in numpy: name the file
        if isinstance(exc, (ValueError, TypeError, IndexError)) and \
                not isinstance(exc, ModelFileError):
            raise self.error(f"a field holds values of the wrong kind or shape "
                             f"({type(exc).__name__}: {exc})") from None


def open_archive(path, what="model"):
    """Open ``path`` as a fastbp file of a format this version reads; an Archive.

    ``what`` ("model" or "checkpoint") words the messages.
    """
    path = file_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"no such fastbp {what} file", path)
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a folder, not a fastbp {what} file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not head:
        raise ModelFileError(f"{path}: is empty (0 bytes), not a fastbp {what} file")
    if head.startswith(_NPY_MAGIC):
        raise ModelFileError(f"{path}: is a single-array .npy file, not a fastbp {what} "
                             f"file (.npz)")
    if not head.startswith(_ZIP_MAGIC):
        raise ModelFileError(f"{path}: not a fastbp {what} file: not an .npz (zip) archive "
                             f"(it starts with {head!r})")
    try:
        npz = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise ModelFileError(f"{path}: truncated or corrupted archive "
                             f"({type(exc).__name__}: {exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):  # cannot happen after the magic check
        raise ModelFileError(f"{path}: not an .npz archive")
    try:
        fmt, version = _identify(path, npz, what)
    except BaseException:
        npz.close()
        raise
    return Archive(path, npz, fmt, version)


def _identify(path, npz, what):
    if "format" not in npz.files:
        names = ", ".join(repr(n) for n in npz.files[:8]) or "nothing"
        raise ModelFileError(f"{path}: not a fastbp {what} file: no 'format' marker (the "
                             f"archive holds {names})")
    try:
        fmt = npz["format"]
    except _READ_ERRORS as exc:
        raise ModelFileError(f"{path}: the format marker is corrupted "
                             f"({type(exc).__name__}: {exc})") from None
    if fmt.dtype.kind != "U" or fmt.ndim != 0 or str(fmt) not in _READS:
        raise ModelFileError(f"{path}: not a fastbp {what} file: unknown format marker "
                             f"{fmt!r}")
    fmt = str(fmt)
    if "format_version" not in npz.files:
        raise ModelFileError(f"{path}: no format_version; the file is damaged")
    try:
        v = npz["format_version"]
    except _READ_ERRORS as exc:
        raise ModelFileError(f"{path}: the format_version is corrupted "
                             f"({type(exc).__name__}: {exc})") from None
    if v.dtype.kind not in "iu" or v.ndim != 0:
        raise ModelFileError(f"{path}: format_version should be an integer, got {v!r}")
    version = int(v)
    newest = _READS[fmt]
    if version > newest:
        raise ModelFileError(f"{path}: written by a newer fastbp ({fmt} format version "
                             f"{version}; this fastbp reads up to version {newest}); "
                             f"upgrade fastbp to read it")
    if version < 1:
        raise ModelFileError(f"{path}: invalid format version {version}")
    return fmt, version


def is_checkpoint_file(path):
    """Whether ``path`` holds a fastbp training checkpoint this version reads (only its
    markers are read): what a fit may write over (_validation.check_checkpoint_target)."""
    try:
        with open_archive(path, "checkpoint") as ar:
            return ar.format == CHECKPOINT_FORMAT
    except (ModelFileError, OSError):
        return False


def model_from_archive(ar):
    """The MLP described by an archive's model fields (checked for consistency)."""
    from .model import MLP
    sizes = ar.vector("sizes", "iu")
    activations = ar.vector("activations", "U")
    loss = ar.text("loss")
    bias = ar.boolean("bias")
    dtype = ar.text("dtype")
    sizes = [int(s) for s in sizes]
    # the parameter count the sizes imply, checked against the stored parameters before
    # anything of that size is allocated: a hand-edited size of 10**9 would otherwise ask
    # for the optimizer state's gigabytes (MemoryError), 2**63 overflow an int64
    n_params = sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:]))
    params = ar.vector("params", "f")
    if len(sizes) >= 2 and min(sizes) >= 1 and params.shape != (n_params,):
        raise ar.error(f"parameters have shape {params.shape}, the architecture "
                       f"{sizes} needs ({n_params},)")
    model = MLP.__new__(MLP)
    try:
        model._configure(tuple(sizes), [str(a) for a in activations], loss, bias, dtype)
    except (ValueError, TypeError) as exc:
        raise ar.error(f"invalid architecture: {exc}") from None
    if params.shape != (model._layout.n_params,):
        raise ar.error(f"parameters have shape {params.shape}, the architecture "
                       f"{list(model.sizes)} needs ({model._layout.n_params},)")
    if params.dtype != model.dtype:
        raise ar.error(f"parameters are {params.dtype} but the model dtype is "
                       f"{model.dtype.name}")
    if not np.isfinite(params).all():
        raise ar.error("parameters contain NaN or infinity")
    model._params = aligned_copy(np.ascontiguousarray(params))
    model.seed = None
    model._rng_state = ar.vector("rng_state", "i", length=2).astype(np.int64).copy()
    return model


def load(path):
    """The MLP stored in ``path`` by ``MLP.save`` (or a training checkpoint: the model as
    it was when the checkpoint was written).  Never executes code from the file.

    Raises FileNotFoundError for a missing file and ModelFileError (a ValueError) naming
    the file and the problem for anything else: empty, truncated, corrupted, not a
    fastbp file, or written by a newer format version.
    """
    with open_archive(path, "model") as ar:
        return model_from_archive(ar)
