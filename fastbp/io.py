"""Model files: one .npz with the parameters and the architecture, no pickle."""
import os
import zipfile

import numpy as np

from .errors import ModelFileError

FORMAT = "fastbp-mlp"
FORMAT_VERSION = 1


def save_model(model, path):
    path = os.fspath(path)
    with open(path, "wb") as fh:
        np.savez(fh,
                 format=np.array(FORMAT), format_version=np.array(FORMAT_VERSION),
                 sizes=np.array(model.sizes, dtype=np.int64),
                 activations=np.array(model.activations),
                 loss=np.array(model.loss_name), bias=np.array(model.bias),
                 dtype=np.array(model.dtype.name), params=model.params,
                 rng_state=model._rng_state)


def load(path):
    """Read a model written by ``MLP.save``.  Never executes code from the file."""
    from .model import MLP
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ModelFileError(f"{path}: not a readable fastbp model file ({exc})") from None
    if data.get("format") is None or str(data["format"]) != FORMAT:
        raise ModelFileError(f"{path}: not a fastbp model file (no '{FORMAT}' marker)")
    version = int(data.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{path}: written by a newer fastbp (format version {version}; "
                             f"this one reads up to {FORMAT_VERSION}); upgrade fastbp")
    try:
        sizes = [int(s) for s in data["sizes"]]
        bias = bool(data["bias"])
        model = MLP.__new__(MLP)
        model._configure(tuple(sizes), [str(a) for a in data["activations"]],
                         str(data["loss"]), bias, str(data["dtype"]))
        params = np.asarray(data["params"], dtype=model.dtype)
        if params.shape != (model._layout.n_params,):
            raise ModelFileError(f"{path}: parameters have shape {params.shape}, the "
                                 f"architecture needs ({model._layout.n_params},)")
        if not np.isfinite(params).all():
            raise ModelFileError(f"{path}: parameters contain NaN or infinity")
        model._params = params.copy()
        model.seed = None
        model._rng_state = np.asarray(data.get("rng_state", np.zeros(2)), np.int64).copy()
    except KeyError as exc:
        raise ModelFileError(f"{path}: missing field {exc}") from None
    return model
