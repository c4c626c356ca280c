"""The ``fastbp`` command (also ``python -m fastbp``).

Subcommands::

    fastbp demo xor|linear|regression|admissions|all [--data PATH] [--epochs N] [--lr X]
                [--seed S] [--plot DIR] [--no-progress]
    fastbp train DATA.csv --target COL [--layers 8,8] [--activation relu]
                [--output-activation sigmoid] [--loss bce] [--epochs N] [--lr X]
                [--batch-size B] [--standardize] [--test-fraction F] [--seed S]
                [--save model.npz] [--no-progress]
    fastbp predict model.npz DATA.csv [--out preds.csv]

``train --save model.npz`` writes the model with ``MLP.save`` and, beside it,
``model.npz.json``: the feature columns, the target column, the standardization (mean
and std per feature) and the task. ``predict`` reads that file when it is there and
then takes the named columns from DATA.csv (in any order, other columns ignored) and
standardizes them the same way. Without it (a model saved from Python), ``predict``
uses the first ``sizes[0]`` columns of DATA.csv, as they are.

Errors in the input (a missing file, an unknown column, a cell that is not a number,
a bad option) print one line ``fastbp: error: ...`` on stderr and give exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import _demos, datasets
from .datasets import DataError

PROG = "fastbp"


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and no SystemExit."""

    def error(self, message):
        raise CLIError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- parsing


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


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


def _layers(text):
    text = text.strip()
    if text in ("", "none", "0"):
        return []
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected hidden layer sizes like 8,8, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be >= 1, got {text!r}")
    return sizes


_ACTIVATIONS = ("identity", "sigmoid", "relu", "tanh")
_LOSSES = ("mse", "half_mse", "sse", "bce")


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
                    "then the wall time and epochs per second.")
    demo.add_argument("name", choices=list(_demos.DEMOS) + ["all"], metavar="NAME",
                      help="xor | linear | regression | admissions | all")
    demo.add_argument("--data", metavar="PATH",
                      help="admissions CSV (columns admit, gre, gpa, rank); "
                           "default: the tutorial's 40-row excerpt")
    demo.add_argument("--epochs", type=_positive_int, help="epochs (default: the tutorial's)")
    demo.add_argument("--lr", type=_positive_float, help="learning rate (default: the tutorial's)")
    demo.add_argument("--seed", type=int, help="seed of the initial weights (and of the linear data)")
    demo.add_argument("--plot", metavar="DIR", help="write the figures there as PNG (needs matplotlib)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser(
        "train", help="train on a numeric CSV file",
        description="Train an MLP on a CSV file of numbers (header row required) and "
                    "report the final loss and the accuracy (0/1 targets with a sigmoid "
                    "output) or R^2 on a held-out split.")
    train.add_argument("data", metavar="DATA.csv")
    train.add_argument("--target", required=True, metavar="COL", help="the column to predict")
    train.add_argument("--layers", type=_layers, default=[8, 8], metavar="N,N",
                       help="hidden layer sizes (default 8,8)")
    train.add_argument("--activation", choices=_ACTIVATIONS, default="relu",
                       help="hidden activation (default relu)")
    train.add_argument("--output-activation", choices=_ACTIVATIONS, default=None,
                       help="default: sigmoid when the target is 0/1, else identity")
    train.add_argument("--loss", choices=_LOSSES, default=None,
                       help="default: bce with a sigmoid output and targets in [0, 1], else mse")
    train.add_argument("--epochs", type=_positive_int, default=1000, help="default 1000")
    train.add_argument("--lr", type=_positive_float, default=0.01, help="default 0.01")
    train.add_argument("--batch-size", type=_positive_int, default=None, metavar="B",
                       help="mini-batch size, shuffled each epoch (default: full batch)")
    train.add_argument("--standardize", action="store_true",
                       help="scale each feature to mean 0, std 1 (statistics of the training rows)")
    train.add_argument("--test-fraction", type=_fraction, default=0.2, metavar="F",
                       help="fraction of rows held out for the report (default 0.2; 0: none)")
    train.add_argument("--seed", type=int, default=0, help="seed of the split, init and shuffling (default 0)")
    train.add_argument("--save", metavar="MODEL.npz", help="save the trained model (and MODEL.npz.json)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)

    predict = sub.add_parser(
        "predict", help="predict with a saved model",
        description="Predict each row of DATA.csv with a model saved by 'fastbp train --save' "
                    "(or MLP.save) and write the predictions as CSV.")
    predict.add_argument("model", metavar="MODEL.npz")
    predict.add_argument("data", metavar="DATA.csv")
    predict.add_argument("--out", metavar="PREDS.csv", help="write here instead of to stdout")
    predict.set_defaults(func=_cmd_predict)

    export = sub.add_parser(
        "export", help="convert a saved model to ONNX",
        description="Write a model saved by 'fastbp train --save' (or MLP.save) as an ONNX "
                    "graph (needs onnx: pip install \"fastbp[onnx]\"). The graph takes the "
                    "model's inputs as they are: apply the --standardize statistics of "
                    "MODEL.npz.json before it, if training used them.")
    export.add_argument("model", metavar="MODEL.npz")
    export.add_argument("out", metavar="MODEL.onnx")
    export.set_defaults(func=_cmd_export)
    return parser


# --------------------------------------------------------------------------- demo


def _cmd_demo(args):
    names = list(_demos.DEMOS) if args.name == "all" else [args.name]
    if args.data is not None and "admissions" not in names:
        raise CLIError("--data is for the admissions demo")
    if args.data is not None and not Path(args.data).exists():
        raise CLIError(f"{args.data}: no such file")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CLIError('--plot needs matplotlib: pip install "fastbp[plot]"') from None
    for i, name in enumerate(names):
        d = _demos.DEFAULTS[name]
        settings = _demos.DemoSettings(
            epochs=args.epochs if args.epochs is not None else d.epochs,
            lr=args.lr if args.lr is not None else d.lr,
            seed=args.seed if args.seed is not None else d.seed,
        )
        if i:
            print()
        _demos.run(name, settings, progress=not args.no_progress, plot=args.plot,
                   data=args.data, out=lambda line: print(line, flush=True))
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


def _cmd_train(args):
    import fastbp

    names, table = datasets._read_numeric_csv(args.data)
    if args.target not in names:
        raise CLIError(f"{args.data}: no column {args.target!r} (columns: {', '.join(names)})")
    t = names.index(args.target)
    features = [c for c in names if c != args.target]
    if not features:
        raise CLIError(f"{args.data}: no feature columns besides the target {args.target!r}")
    X = np.ascontiguousarray(np.delete(table, t, axis=1))
    y = np.ascontiguousarray(table[:, t:t + 1])
    n = X.shape[0]
    if args.test_fraction > 0 and n < 2:
        raise CLIError(f"{args.data}: {n} row(s); a held-out split needs at least 2 (or --test-fraction 0)")

    binary = bool(np.all((y == 0) | (y == 1)))
    out_act = args.output_activation or ("sigmoid" if binary else "identity")
    in_unit = bool(np.all((y >= 0) & (y <= 1)))
    loss = args.loss or ("bce" if out_act == "sigmoid" and in_unit else "mse")
    classification = binary and out_act == "sigmoid"

    train_idx, test_idx = _split(n, args.test_fraction, args.seed)
    Xtr, ytr = X[train_idx], y[train_idx]
    if args.standardize:
        mean = Xtr.mean(axis=0)
        std = Xtr.std(axis=0)
        std[std == 0] = 1.0  # a constant column stays constant (0) instead of dividing by 0
    else:
        mean = np.zeros(X.shape[1])
        std = np.ones(X.shape[1])
    Xs = (X - mean) / std

    sizes = [X.shape[1], *args.layers, 1]
    acts = [args.activation] * len(args.layers) + [out_act]
    init = "he" if args.activation == "relu" and args.layers else "xavier"
    model = fastbp.MLP(sizes, activation=acts, loss=loss, init=init, seed=args.seed)
    print(f"Data: {args.data}, {n} rows, {len(features)} features, target {args.target!r}"
          f" ({'0/1 classification' if classification else 'regression'})")
    print(f"Model: {'-'.join(map(str, sizes))}, {args.activation} hidden, {out_act} output, "
          f"loss {loss}, init {init}, seed {args.seed}")
    fit_kwargs = dict(epochs=args.epochs, lr=args.lr)
    if args.batch_size is not None:
        fit_kwargs.update(batch_size=args.batch_size, shuffle=True, seed=args.seed)
    t0 = time.perf_counter()
    hist = _demos._fit(model, Xs[train_idx], ytr, not args.no_progress, **fit_kwargs)
    wall = time.perf_counter() - t0
    secs = _demos._seconds(hist, wall)
    ran = _demos._epochs_run(hist, args.epochs)
    batch = "full batch" if args.batch_size is None else f"batch size {args.batch_size}"
    print(f"Training: {len(train_idx)} rows, {ran:,} epochs, lr {args.lr:g}, {batch}: "
          f"{secs:.3f} s ({ran / secs if secs > 0 else float('inf'):,.0f} epochs/s)")
    print(f"Final training loss ({loss}): {model.loss(Xs[train_idx], ytr):.6g}")

    eval_idx, which = (test_idx, "Test") if len(test_idx) else (train_idx, "Training")
    pred = np.asarray(model.predict(Xs[eval_idx]), dtype=np.float64).reshape(-1, 1)
    truth = y[eval_idx]
    if classification:
        correct = int(np.sum((pred > 0.5) == (truth > 0.5)))
        print(f"{which} accuracy: {correct / len(eval_idx):.3f} ({correct}/{len(eval_idx)} rows)")
    else:
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
            "classification": classification,
        }
        _meta_path(path).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        print(f"Saved: {path} (and {_meta_path(path).name})")
    return 0


# --------------------------------------------------------------------------- predict


def _load_meta(model_path):
    mp = _meta_path(model_path)
    if not mp.is_file():
        return None
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
        features = [str(c) for c in meta["features"]]
        mean = np.asarray(meta["mean"], dtype=np.float64)
        std = np.asarray(meta["std"], dtype=np.float64)
        if mean.shape != (len(features),) or std.shape != (len(features),):
            raise ValueError("feature/mean/std lengths differ")
    except (ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"{mp}: not a valid fastbp train metadata file ({exc})") from None
    return {"features": features, "mean": mean, "std": std,
            "target": str(meta.get("target", "prediction")),
            "classification": bool(meta.get("classification", False))}


def _cmd_predict(args):
    import fastbp

    if not Path(args.model).is_file():
        raise CLIError(f"{args.model}: no such model file")
    if not Path(args.data).exists():
        raise CLIError(f"{args.data}: no such file")
    model = fastbp.load(args.model)
    n_in = int(model.sizes[0])
    meta = _load_meta(args.model)
    if meta is not None:
        if len(meta["features"]) != n_in:
            raise CLIError(f"{_meta_path(args.model)}: lists {len(meta['features'])} features, "
                           f"the model takes {n_in}")
        _, X = datasets._read_numeric_csv(args.data, meta["features"])
        X = (X - meta["mean"]) / meta["std"]
    else:
        names, X = datasets._read_numeric_csv(args.data)
        if X.shape[1] < n_in:
            raise CLIError(f"{args.data}: {X.shape[1]} columns, the model takes {n_in} inputs")
        X = np.ascontiguousarray(X[:, :n_in])
    pred = np.asarray(model.predict(X), dtype=np.float64).reshape(X.shape[0], -1)
    k = pred.shape[1]
    base = meta["target"] if meta is not None else "prediction"
    header = [base] if k == 1 else [f"{base}_{j}" for j in range(k)]
    classify = meta is not None and meta["classification"] and k == 1
    if classify:
        header.append(f"{base}_class")

    def write(fh):
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for row in pred:
            cells = [repr(float(v)) for v in row]
            if classify:
                cells.append(str(int(row[0] > 0.5)))
            w.writerow(cells)

    if args.out:
        with open(args.out, "w", newline="", encoding="utf-8") as fh:
            write(fh)
        print(f"Wrote {pred.shape[0]} predictions to {args.out}")
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
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
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
