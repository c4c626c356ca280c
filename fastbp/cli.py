"""The ``fastbp`` command (also ``python -m fastbp``).

Subcommands::

    fastbp demo xor|linear|regression|admissions|all [--data PATH] [--epochs N] [--lr X]
                [--seed S] [--plot DIR] [--no-progress]
    fastbp train DATA.csv --target COL [--task auto|classify|regress] [--layers 8,8]
                [--activation relu] [--output-activation sigmoid] [--loss bce]
                [--epochs N] [--lr X] [--batch-size B] [--standardize]
                [--test-fraction F] [--seed S] [--save model.npz] [--no-progress]
    fastbp predict model.npz DATA.csv [--out preds.csv]
    fastbp export model.npz model.onnx

``train`` classifies or regresses the target column (``--task``, default ``auto``):

- 0/1 targets: one sigmoid output, loss bce (two classes, 0 and 1);
- text labels, or integer labels with 2 to 20 distinct values (other than just 0/1):
  one softmax output per class, loss cross_entropy;
- anything else: regression, identity output, loss mse.

``--task classify`` takes integer or text labels with any number of classes;
``--task regress`` fits numbers, integer or not. Classification reports the accuracy
on the held-out rows, regression R^2.

``train --save model.npz`` writes the model with ``MLP.save`` and, beside it,
``model.npz.json``: the feature columns, the target column, the standardization (mean
and std per feature), the task and, for classification, the class labels in output
order (``"classes"``: integers or strings, as in the data). ``predict`` reads that file
when it is there and then takes the named columns from DATA.csv (in any order, other
columns ignored) and standardizes them the same way. Without it (a model saved from
Python), ``predict`` uses the first ``sizes[0]`` columns of DATA.csv, as they are.

``predict`` writes a CSV with a header row. A regression model: one column named after
the target (``TARGET``; ``TARGET_0``, ``TARGET_1``, ... for several outputs;
``prediction`` without the metadata file). A classifier: ``TARGET``, the predicted class
label, then ``TARGET_prob_LABEL`` for each class in the metadata's order, its predicted
probability.  Text labels are written exactly as in the training data; a label column
whose cells are all numbers holds one class per value, written as an integer (``007``,
``7`` and ``7.0`` are the class ``7``; ``0.0`` / ``1.0`` targets are ``0`` / ``1``).

No command writes over one of its inputs: an output path (``--save`` and its ``.json``,
``--out``, the ``--plot`` figures) that is the same file as an input (compared as files,
links included) is refused, and the output's folder is checked before any training.
Files are written whole or not at all (temporary file, then rename): an output path
that is a pipe or a device is refused, and a link there is replaced, not written
through.

Errors in the input (a missing file, an unknown column, a cell that is not a number,
a bad option) print one line ``fastbp: error: ...`` on stderr and give exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import _demos, datasets
from .datasets import DataError
from ._validation import MAX_COUNT
from .io import atomic_write, check_writable

PROG = "fastbp"


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and no SystemExit."""

    def error(self, message):
        raise CLIError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- parsing


def _int_at_least(least, expected, most=None):
    """An argparse type: an integer >= ``least`` (and <= ``most``); ``expected`` words
    the error."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, "an integer >= 0")
# fit's bound (MAX_COUNT), checked with the other options: before any line is printed
_epochs = _int_at_least(1, f"a positive integer up to 2**53 ({MAX_COUNT})", most=MAX_COUNT)


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _path(text):
    """An output path: not empty (an unset shell variable in --save "$MODEL" would
    otherwise silently mean no --save at all)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return text


def _layers(text):
    text = text.strip()
    if text == "none":
        return []
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected hidden layer sizes like 8,8 (or none), got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(
            f"layer sizes must be >= 1, got {text!r} ('none' for no hidden layer)")
    return sizes


_ACTIVATIONS = ("identity", "sigmoid", "relu", "tanh")
_OUTPUT_ACTIVATIONS = _ACTIVATIONS + ("softmax", "exp")
_LOSSES = ("mse", "half_mse", "sse", "bce", "cross_entropy", "poisson")
# --task auto takes integer targets with at most this many distinct values for class
# labels; more look like a count or a measurement (use --task classify for those)
MAX_AUTO_CLASSES = 20


def build_parser():
    parser = _Parser(
        prog=PROG,
        description="Train small dense neural networks by backpropagation, fast.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo", help="run a tutorial: xor, linear, regression, admissions or all",
        description="Run a tutorial's network with its settings and print what it prints, "
                    "then the wall time and epochs per second. Two defaults are fastbp's: "
                    "the regression demo runs 100,000 epochs (its tutorial 50), and xor "
                    "and linear train at lr 0.1 (their tutorial states no rate).")
    demo.add_argument("name", choices=list(_demos.DEMOS) + ["all"], metavar="NAME",
                      help="xor | linear | regression | admissions | all")
    demo.add_argument("--data", metavar="PATH",
                      help="admissions CSV (columns admit, gre, gpa, rank); "
                           "default: the tutorial's 400-row UCLA file, shipped with fastbp")
    demo.add_argument("--epochs", type=_epochs,
                      help="epochs (default: the tutorial's, except regression: 100,000, "
                           "where its tutorial takes 50)")
    demo.add_argument("--lr", type=_positive_float,
                      help="learning rate (default: the tutorial's, except xor and linear: "
                           "0.1, fastbp's choice, as their tutorial states no rate)")
    demo.add_argument("--seed", type=_seed, help="seed of the initial weights (and of the linear data)")
    demo.add_argument("--plot", metavar="DIR", type=_path,
                      help="write the figures there as PNG (needs matplotlib)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser(
        "train", help="train on a numeric CSV file",
        description="Train an MLP on a CSV file (header row required; features are "
                    "numbers, the target numbers or class labels) and report the final "
                    "loss and, on a held-out split, the accuracy (classification) or "
                    "R^2 (regression). Classification: 0/1 targets train one sigmoid "
                    "output with bce; text labels, or 2 to 20 distinct integers, one "
                    "softmax output per class with cross_entropy.")
    train.add_argument("data", metavar="DATA.csv")
    train.add_argument("--target", required=True, metavar="COL", help="the column to predict")
    train.add_argument("--task", choices=("auto", "classify", "regress"), default="auto",
                       help="auto (default): classify 0/1, text or 2-20 distinct integer "
                            "labels, else regress; classify: integer or text labels, any "
                            "number of classes; regress: numbers")
    train.add_argument("--layers", type=_layers, default=[8, 8], metavar="N,N",
                       help="hidden layer sizes, each >= 1 (default 8,8; none: no hidden layer)")
    train.add_argument("--activation", choices=_ACTIVATIONS, default="relu",
                       help="hidden activation (default relu)")
    train.add_argument("--output-activation", choices=_OUTPUT_ACTIVATIONS, default=None,
                       help="default: sigmoid for 0/1 targets, softmax for more classes, "
                            "exp with --loss poisson, else identity")
    train.add_argument("--loss", choices=_LOSSES, default=None,
                       help="default: bce with a sigmoid output and targets in [0, 1], "
                            "cross_entropy with softmax, else mse")
    train.add_argument("--epochs", type=_epochs, default=1000, help="default 1000")
    train.add_argument("--lr", type=_positive_float, default=0.01, help="default 0.01")
    train.add_argument("--batch-size", type=_positive_int, default=None, metavar="B",
                       help="mini-batch size, shuffled each epoch (default: full batch)")
    train.add_argument("--standardize", action="store_true",
                       help="scale each feature to mean 0, std 1 (statistics of the training rows)")
    train.add_argument("--test-fraction", type=_fraction, default=0.2, metavar="F",
                       help="fraction of rows held out for the report (default 0.2; 0: none)")
    train.add_argument("--seed", type=_seed, default=0, help="seed of the split, init and shuffling (default 0)")
    train.add_argument("--save", metavar="MODEL.npz", type=_path,
                       help="save the trained model (and MODEL.npz.json: columns, "
                            "standardization, task, class labels)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)

    predict = sub.add_parser(
        "predict", help="predict with a saved model",
        description="Predict each row of DATA.csv with a model saved by 'fastbp train --save' "
                    "(or MLP.save) and write the predictions as CSV. Columns: regression, "
                    "TARGET (the predicted value); classification, TARGET (the predicted "
                    "class label: text as in the training data, numbers as integers) then "
                    "TARGET_prob_LABEL (the probability of each class). TARGET is the trained target "
                    "column's name ('prediction' for a model without its .json file).")
    predict.add_argument("model", metavar="MODEL.npz")
    predict.add_argument("data", metavar="DATA.csv")
    predict.add_argument("--out", metavar="PREDS.csv", type=_path,
                         help="write here instead of to stdout (never over an input file)")
    predict.set_defaults(func=_cmd_predict)

    export = sub.add_parser(
        "export", help="convert a saved model to ONNX",
        description="Write a model saved by 'fastbp train --save' (or MLP.save) as an ONNX "
                    "graph (needs onnx: pip install \"fastbp[onnx]\"). The graph takes the "
                    "model's inputs as they are: apply the --standardize statistics of "
                    "MODEL.npz.json before it, if training used them.")
    export.add_argument("model", metavar="MODEL.npz")
    export.add_argument("out", metavar="MODEL.onnx", type=_path)
    export.set_defaults(func=_cmd_export)
    return parser


# --------------------------------------------------------------------------- outputs


def _same_file(a, b):
    """Whether paths ``a`` and ``b`` name one file (links and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one of them does not exist: they cannot be one file
        return False


def _check_output(path, inputs, what):
    """Refuse an output ``path`` that would replace one of ``inputs`` or cannot be
    written; called before any work, so a long run is never lost at the end."""
    for source in inputs:
        if source is not None and _same_file(path, source):
            same = "" if os.path.abspath(path) == os.path.abspath(source) else f" ({source})"
            raise CLIError(f"{what} {path} is an input file{same}; refusing to overwrite "
                           f"it, choose another path")
    try:
        check_writable(path)
    except OSError as exc:
        raise CLIError(f"{what}: {exc}") from None


def _write_text(path, text):
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


# --------------------------------------------------------------------------- demo


def _plot_names(names):
    figures = {"xor": ("xor_loss.png", "xor_decision_boundary.png"),
               "linear": ("linear_loss.png", "linear_decision_boundary.png"),
               "regression": ("regression_loss.png", "regression_fit.png"),
               "admissions": ("admissions_loss.png",)}
    return [f for name in names for f in figures[name]]


def _cmd_demo(args):
    names = list(_demos.DEMOS) if args.name == "all" else [args.name]
    if args.data is not None and "admissions" not in names:
        raise CLIError("--data is for the admissions demo")
    if args.data is not None and not Path(args.data).exists():
        raise CLIError(f"{args.data}: no such file")
    if args.data is not None and Path(args.data).is_dir():
        raise CLIError(f"{args.data}: is a directory, not a CSV file")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CLIError('--plot needs matplotlib: pip install "fastbp[plot]"') from None
        folder = Path(args.plot)
        if folder.exists() and not folder.is_dir():
            raise CLIError(f"--plot {args.plot}: not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CLIError(f"--plot {args.plot}: cannot create the folder "
                           f"({exc.strerror or exc})") from None
        for figure in _plot_names(names):
            _check_output(folder / figure, [args.data], "--plot figure")
    for i, name in enumerate(names):
        d = _demos.DEFAULTS[name]
        settings = _demos.DemoSettings(
            epochs=args.epochs if args.epochs is not None else d.epochs,
            lr=args.lr if args.lr is not None else d.lr,
            seed=args.seed if args.seed is not None else d.seed,
        )
        if i:
            print()
        with warnings.catch_warnings():
            # the demo's report says how far an interrupted run got
            warnings.filterwarnings("ignore", message="training interrupted",
                                    category=RuntimeWarning)
            _, hist = _demos.run(name, settings, progress=not args.no_progress,
                                 plot=args.plot, data=args.data,
                                 out=lambda line: print(line, flush=True))
        if getattr(hist, "stopped", None) == "interrupted":
            raise KeyboardInterrupt  # Ctrl-C: the demos after this one do not run
    return 0


# --------------------------------------------------------------------------- train


def _meta_path(model_path):
    return Path(str(model_path) + ".json")


def _split(n, fraction, seed):
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * fraction))
    if fraction > 0:
        n_test = min(max(n_test, 1), n - 1)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _as_numbers(texts):
    """The cells as float64, or None with the first one that is not a finite number."""
    values = np.empty(len(texts))
    for i, cell in enumerate(texts):
        try:
            v = float(cell)
        except ValueError:
            return None, i
        if not np.isfinite(v):
            return None, i
        values[i] = v
    return values, None


def _target(texts, task, path, name):
    """What the target column holds, from its cells and ``--task``.

    Returns ``(kind, y, classes)``: kind "regress" (y: (n, 1) float64, classes None),
    "binary" (0/1 targets, y: (n, 1) float64, classes [0, 1]) or "classes" (y: (n,)
    int64 indices into ``classes``, the sorted distinct labels: ints, or strings when
    any label is not a number).
    """
    values, bad = _as_numbers(texts)
    if values is None and task == "auto" and any(_as_numbers([t])[0] is not None for t in texts):
        # text among numbers is more likely a typo than class labels: the reader's own
        # message names the first bad cell's row and line
        try:
            datasets._read_numeric_csv(path, [name])
        except DataError as exc:
            raise DataError(f"{exc} (--task classify takes the column as text labels)") from None
    if task == "regress":
        if values is None:
            raise CLIError(f"{path}: row {bad + 1}, column {name!r}: {texts[bad]!r} is not a "
                           f"number; --task regress needs numbers (class labels: --task classify)")
        return "regress", values.reshape(-1, 1), None
    if values is not None:
        integer = bool(np.all(values == np.round(values)))
        distinct = np.unique(values)
        if task == "auto":
            if np.all((values == 0) | (values == 1)):
                return "binary", values.reshape(-1, 1), [0, 1]
            if not (integer and 2 <= distinct.size <= MAX_AUTO_CLASSES):
                return "regress", values.reshape(-1, 1), None
        elif not integer:
            i = int(np.flatnonzero(values != np.round(values))[0])
            raise CLIError(f"{path}: row {i + 1}, column {name!r}: {texts[i]!r} is not a class "
                           f"label; --task classify needs integer or text labels")
        elif np.all((values == 0) | (values == 1)) and distinct.size == 2:
            return "binary", values.reshape(-1, 1), [0, 1]
        classes = [int(v) for v in distinct]
        index = np.searchsorted(distinct, values).astype(np.int64)
    else:
        classes = sorted(set(texts))
        lookup = {label: k for k, label in enumerate(classes)}
        index = np.array([lookup[t] for t in texts], dtype=np.int64)
    if len(classes) < 2:
        raise CLIError(f"{path}: column {name!r} holds one class ({classes[0]!r}); "
                       f"classification needs at least 2")
    return "classes", index, classes


def _labels_text(classes, limit=10):
    shown = ", ".join(str(c) for c in classes[:limit])
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > limit else "")


def _cmd_train(args):
    import fastbp

    if args.save:
        _check_output(args.save, [args.data], "--save")
        _check_output(_meta_path(args.save), [args.data], "--save")
    names, X, texts = datasets._read_csv(args.data, text_column=args.target)
    features = names
    if not features:
        raise CLIError(f"{args.data}: no feature columns besides the target {args.target!r}")
    n = X.shape[0]
    if args.test_fraction > 0 and n < 2:
        raise CLIError(f"{args.data}: {n} row(s); a held-out split needs at least 2 (or --test-fraction 0)")
    task = args.task
    if task == "auto" and (args.loss == "poisson" or args.output_activation == "exp"):
        task = "regress"  # counts: few distinct integers, but numbers to fit, not classes
    kind, y, classes = _target(texts, task, args.data, args.target)

    if kind == "classes":
        for option, value, wanted in (("--output-activation", args.output_activation, "softmax"),
                                      ("--loss", args.loss, "cross_entropy")):
            if value is not None and value != wanted:
                raise CLIError(f"{option} {value}: {len(classes)} classes train a softmax output "
                               f"with cross_entropy (--task regress fits the labels as numbers)")
        out_act, loss = "softmax", "cross_entropy"
        n_out = len(classes)
        targets = np.eye(n_out)[y]  # one-hot rows
    else:
        default_act = "sigmoid" if kind == "binary" else "identity"
        out_act = args.output_activation or ("exp" if args.loss == "poisson" else default_act)
        in_unit = bool(np.all((y >= 0) & (y <= 1)))
        loss = args.loss or ("bce" if out_act == "sigmoid" and in_unit else "mse")
        n_out = 1
        targets = y
        if kind == "binary" and out_act != "sigmoid":
            if args.task == "classify":
                raise CLIError(f"--output-activation {out_act}: 0/1 classification trains a "
                               f"sigmoid output")
            kind, classes = "regress", None  # the user asked for a numeric fit of 0/1
    classification = kind != "regress"

    train_idx, test_idx = _split(n, args.test_fraction, args.seed)
    if args.batch_size is not None and args.batch_size > len(train_idx):
        raise CLIError(f"--batch-size {args.batch_size} is larger than the {len(train_idx)} "
                       f"training rows (leave --batch-size out for full-batch training)")
    Xtr, ytr = X[train_idx], targets[train_idx]
    if args.standardize:
        with np.errstate(over="ignore", invalid="ignore"):
            mean = Xtr.mean(axis=0)
            std = Xtr.std(axis=0)
        overflow = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std)))
        if overflow.size:
            raise CLIError(f"--standardize: {args.data}: column {features[overflow[0]]!r} is "
                           f"too large to standardize in float64 (its mean or standard "
                           f"deviation overflows); scale it down")
        std[std == 0] = 1.0  # a constant column stays constant (0) instead of dividing by 0
    else:
        mean = np.zeros(X.shape[1])
        std = np.ones(X.shape[1])
    Xs = (X - mean) / std

    sizes = [X.shape[1], *args.layers, n_out]
    acts = [args.activation] * len(args.layers) + [out_act]
    init = "he" if args.activation == "relu" and args.layers else "xavier"
    model = fastbp.MLP(sizes, activation=acts, loss=loss, init=init, seed=args.seed)
    if kind == "binary":
        what = "0/1 classification"
    elif kind == "classes":
        what = f"classification, {len(classes)} classes: {_labels_text(classes)}"
    else:
        what = "regression"
    print(f"Data: {args.data}, {n} rows, {len(features)} features, target {args.target!r}"
          f" ({what})")
    print(f"Model: {'-'.join(map(str, sizes))}, {args.activation} hidden, {out_act} output, "
          f"loss {loss}, init {init}, seed {args.seed}")
    fit_kwargs = dict(epochs=args.epochs, lr=args.lr)
    if args.batch_size is not None:
        fit_kwargs.update(batch_size=args.batch_size, shuffle=True, seed=args.seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # Ctrl-C ends the command (status 130) and nothing is saved: the library's warning
        # about the partly trained model it returns would describe a model thrown away
        warnings.filterwarnings("ignore", message="training interrupted", category=RuntimeWarning)
        hist = _demos._fit(model, Xs[train_idx], ytr, not args.no_progress, **fit_kwargs)
    if getattr(hist, "stopped", None) == "interrupted":
        raise KeyboardInterrupt(f"after {_demos._epochs_run(hist, args.epochs):,} of "
                                f"{args.epochs:,} epochs; nothing saved")
    wall = time.perf_counter() - t0
    secs = _demos._seconds(hist, wall)
    ran = _demos._epochs_run(hist, args.epochs)
    batch = "full batch" if args.batch_size is None else f"batch size {args.batch_size}"
    print(f"Training: {len(train_idx)} rows, {_demos.epochs_text(ran)}, lr {args.lr:g}, {batch}: "
          f"{secs:.3f} s ({ran / secs if secs > 0 else float('inf'):,.0f} epochs/s)")
    print(f"Final training loss ({loss}): {model.loss(Xs[train_idx], ytr):.6g}")

    eval_idx, which = (test_idx, "Test") if len(test_idx) else (train_idx, "Training")
    pred = np.asarray(model.predict(Xs[eval_idx]), dtype=np.float64).reshape(len(eval_idx), -1)
    if kind == "classes":
        correct = int(np.sum(np.argmax(pred, axis=1) == y[eval_idx]))
        print(f"{which} accuracy: {correct / len(eval_idx):.3f} ({correct}/{len(eval_idx)} rows)")
    elif kind == "binary":
        truth = y[eval_idx]
        correct = int(np.sum((pred > 0.5) == (truth > 0.5)))
        print(f"{which} accuracy: {correct / len(eval_idx):.3f} ({correct}/{len(eval_idx)} rows)")
    else:
        truth = y[eval_idx]
        ss_tot = float(np.sum((truth - truth.mean()) ** 2))
        ss_res = float(np.sum((truth - pred) ** 2))
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
        print(f"{which} R^2: {r2:.4f} ({len(eval_idx)} rows, RMSE {np.sqrt(ss_res / len(eval_idx)):.6g})")

    if args.save:
        path = Path(args.save)
        model.save(path)
        meta = {
            "fastbp_cli": 1,
            "features": features,
            "target": args.target,
            "mean": mean.tolist(),
            "std": std.tolist(),
            "task": "classify" if classification else "regress",
            "classification": classification,
        }
        if classification:
            meta["classes"] = classes
        _write_text(_meta_path(path), json.dumps(meta, indent=1) + "\n")
        print(f"Saved: {path} (and {_meta_path(path).name})")
    return 0


# --------------------------------------------------------------------------- predict


def _load_meta(model_path, n_out, out_act):
    """The metadata ``train --save`` wrote beside the model (None without the file),
    checked: a hand-edited or damaged file is refused, naming it, rather than read into
    wrong predictions."""
    mp = _meta_path(model_path)
    if not mp.is_file():
        return None
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        features = meta["features"]
        if not (isinstance(features, list) and all(isinstance(c, str) for c in features)):
            raise ValueError("'features' must be a list of column names")
        if len(set(features)) != len(features):
            raise ValueError("'features' names a column twice")
        mean = np.asarray(meta["mean"], dtype=np.float64)
        std = np.asarray(meta["std"], dtype=np.float64)
        if mean.shape != (len(features),) or std.shape != (len(features),):
            raise ValueError("feature/mean/std lengths differ")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("'mean' and 'std' must be finite numbers, 'std' > 0")
        classification = meta.get("classification", False)
        if not isinstance(classification, bool):
            raise ValueError("'classification' must be true or false")
        if classification and out_act not in ("sigmoid", "softmax"):
            raise ValueError(f"'classification' is true, but the model's output layer is "
                             f"{out_act!r}, not sigmoid or softmax")
        classes = meta.get("classes")
        if classification and classes is None:
            classes = [0, 1]  # written before class lists were stored: 0/1 targets
        if classes is not None:
            if not (isinstance(classes, list) and all(
                    isinstance(c, (int, str)) and not isinstance(c, bool) for c in classes)):
                raise ValueError("'classes' must be a list of integers or strings")
            if len(classes) != max(n_out, 2) or (n_out == 1 and classes != [0, 1]):
                raise ValueError(f"{len(classes)} classes for a model of {n_out} outputs")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CLIError(f"{mp}: not a valid fastbp train metadata file ({exc})") from None
    return {"features": features, "mean": mean, "std": std,
            "target": str(meta.get("target", "prediction")),
            "classes": classes if classification else None}


def _looks_like_data(names):
    """Whether a header's cells are all numbers, other than the 0, 1, 2, ... that pandas
    writes for unnamed columns: likely a first sample in a file with no header."""
    try:
        [float(name) for name in names]
    except ValueError:
        return False
    return list(names) != [str(i) for i in range(len(names))]


def _cmd_predict(args):
    import fastbp

    model_path = Path(args.model)
    if model_path.is_dir():
        raise CLIError(f"{args.model}: is a directory, not a model file")
    if not model_path.is_file():
        raise CLIError(f"{args.model}: no such model file")
    if not Path(args.data).exists():
        raise CLIError(f"{args.data}: no such file")
    if args.out:
        _check_output(args.out, [args.model, _meta_path(args.model), args.data], "--out")
    model = fastbp.load(args.model)
    n_in, n_out = int(model.sizes[0]), int(model.sizes[-1])
    meta = _load_meta(args.model, n_out, model.activations[-1])
    if meta is not None:
        if len(meta["features"]) != n_in:
            raise CLIError(f"{_meta_path(args.model)}: lists {len(meta['features'])} features, "
                           f"the model takes {n_in}")
        _, X = datasets._read_numeric_csv(args.data, meta["features"])
        X = (X - meta["mean"]) / meta["std"]
    else:
        names, X = datasets._read_numeric_csv(args.data)
        if _looks_like_data(names):
            print(f"{PROG}: note: {args.data}: its first line ({','.join(names)}) holds only "
                  f"numbers but is read as the header, not predicted: if it is a sample, "
                  f"add a header line", file=sys.stderr)
        if X.shape[1] < n_in:
            raise CLIError(f"{args.data}: {X.shape[1]} columns, the model takes {n_in} inputs")
        X = np.ascontiguousarray(X[:, :n_in])
    pred = np.asarray(model.predict(X), dtype=np.float64).reshape(X.shape[0], -1)
    base = meta["target"] if meta is not None else "prediction"
    classes = meta["classes"] if meta is not None else None
    if classes is not None:
        # a sigmoid output is the probability of class 1
        proba = np.column_stack([1.0 - pred[:, 0], pred[:, 0]]) if n_out == 1 else pred
        header = [base] + [f"{base}_prob_{c}" for c in classes]
        rows = ([str(classes[int(np.argmax(p))])] + [repr(float(v)) for v in p] for p in proba)
    else:
        header = [base] if n_out == 1 else [f"{base}_{j}" for j in range(n_out)]
        rows = ([repr(float(v)) for v in p] for p in pred)

    def write(fh):
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)

    if args.out:
        text = io.StringIO()
        write(text)
        _write_text(args.out, text.getvalue())
        print(f"Wrote {pred.shape[0]} predictions to {args.out}")
    elif sys.stdout is None:  # started with stdout closed (>&-)
        raise CLIError("stdout is closed: give --out PREDS.csv to write the predictions")
    else:
        write(sys.stdout)
    return 0


# --------------------------------------------------------------------------- export


def _cmd_export(args):
    import fastbp

    src, out = Path(args.model), Path(args.out)
    if not src.is_file():
        raise CLIError(f"{args.model}: no such model file")
    if out.suffix.lower() != ".onnx":
        raise CLIError(f"{args.out}: the output name must end in .onnx (ONNX is the one "
                       f"export format)")
    if out.exists() and out.samefile(src):
        raise CLIError(f"{args.out}: is the input model file; give another output name")
    if out.is_dir():
        raise CLIError(f"{args.out}: is a folder; give a file name ending in .onnx")
    folder = out.resolve().parent
    if not folder.is_dir():
        raise CLIError(f"{args.out}: the folder {folder} does not exist")
    model = fastbp.load(src)
    model.to_onnx(out)
    print(f"Wrote {out} (ONNX opset {fastbp.export.ONNX_OPSET}, "
          f"{'-'.join(map(str, model.sizes))}, {model.dtype.name}; input X, output Y)")
    return 0


# --------------------------------------------------------------------------- main


def _one_line(exc):
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv=None):
    """Run the ``fastbp`` command with ``argv`` (default ``sys.argv[1:]``).

    Returns the exit status: 0 on success, 2 on a usage or input error (after one line
    ``fastbp: error: ...`` on stderr), 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version:
            from importlib.metadata import PackageNotFoundError, version

            try:
                print(f"{PROG} {version('fastbp')}")
            except PackageNotFoundError:
                print(f"{PROG} (not installed)")
            return 0
        if args.command is None:
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except KeyboardInterrupt as exc:
        detail = f" {exc}" if str(exc) else ""
        print(f"{PROG}: interrupted{detail}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``fastbp predict ... | head``): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except (CLIError, DataError, OSError, ValueError, TypeError, FloatingPointError,
            ImportError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # --layers 1000000,1000000: numpy says how much it wanted
        print(f"{PROG}: error: not enough memory: {_one_line(exc)}", file=sys.stderr)
        return 2
