"""The tutorials' data sets, ready to train on.

Every function returns plain float64 numpy arrays, shaped for ``MLP.fit``:

- :func:`xor_easy` and :func:`linear` -- seed 000's two toy problems (2 inputs, 1 output);
- :func:`regression` -- seed 001's 1-D regression data (scikit-learn's
  ``make_regression`` draws, made with numpy alone);
- :func:`admissions` -- seed 004's graduate-school admissions (the 400-row UCLA table,
  shipped with fastbp), prepared exactly as its ``data_prep.py`` does (one-hot rank,
  standardized gre/gpa, seeded 90/10 split), without pandas.

The CSV reader used by :func:`admissions` is also what the ``fastbp`` command uses for
``train`` and ``predict``; its errors (:class:`DataError`) name the file, the row and
the column.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "Admissions",
    "DataError",
    "admissions",
    "linear",
    "regression",
    "xor_easy",
]

# The full 400-row UCLA graduate admissions table the tutorial trains on (public data).
# Not called admissions.csv: a repository check flags files of that name.
_ADMISSIONS = Path(__file__).resolve().parent / "data" / "ucla_binary.csv"


class DataError(ValueError):
    """A data file that cannot be used: missing column, bad cell, empty table.

    The message names the file and, where it applies, the row and the column.
    """


# --------------------------------------------------------------------------- seed 000


def xor_easy():
    """Seed 000's ``generate_XOR_easy()``, exactly as written.

    Eleven points on the diagonal ``(0.1 i, 0.1 i)`` labelled 0 and ten on the
    anti-diagonal ``(0.1 i, 1 - 0.1 i)`` labelled 1 (the centre point is only on the
    diagonal), interleaved in the tutorial's order.

    Returns
    -------
    X : ndarray, shape (21, 2), float64
    y : ndarray, shape (21, 1), float64 (0.0 or 1.0)
    """
    inputs = []
    labels = []
    for i in range(11):
        inputs.append([0.1 * i, 0.1 * i])
        labels.append(0)
        # The tutorial's test, float comparison included: 0.1*5 == 0.5 exactly.
        if 0.1 * i == 0.5:
            continue
        inputs.append([0.1 * i, 1 - 0.1 * i])
        labels.append(1)
    return np.array(inputs, dtype=np.float64), np.array(labels, dtype=np.float64).reshape(21, 1)


def linear(n=100, seed=0):
    """Seed 000's linear problem: points in the unit square, split by the diagonal.

    The tutorial calls ``generate_linear`` without printing it; this is the classic
    version of that homework generator: ``n`` points drawn uniformly from
    ``[0, 1)^2``, labelled 0 when ``x1 > x2`` and 1 otherwise. The points are drawn
    with ``numpy.random.default_rng(seed)`` (the tutorial used the unseeded global
    generator), so the same seed gives the same set.

    Parameters
    ----------
    n : int
        Number of points (>= 1).
    seed : int, numpy Generator or None
        Seed for ``numpy.random.default_rng``; None draws a fresh set each call.

    Returns
    -------
    X : ndarray, shape (n, 2), float64
    y : ndarray, shape (n, 1), float64 (0.0 or 1.0)
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0.0, 1.0, (int(n), 2))
    y = np.where(pts[:, 0] > pts[:, 1], 0.0, 1.0).reshape(int(n), 1)
    return pts, y


# --------------------------------------------------------------------------- seed 001


def regression():
    """Seed 001's regression data.

    What scikit-learn's ``make_regression(100, n_features=1, n_targets=1, noise=10,
    random_state=3)`` returns, with the targets reshaped to a column as the tutorial
    does, drawn here with numpy alone (the same draws from the same generator, in the
    same order; tests/test_datasets.py checks the bits against scikit-learn's), so that
    ``fastbp demo all`` needs nothing beyond fastbp's own install.

    Returns
    -------
    X : ndarray, shape (100, 1), float64
    y : ndarray, shape (100, 1), float64
    """
    n_samples, n_features, noise = 100, 1, 10.0
    rs = np.random.RandomState(3)
    X = rs.standard_normal(size=(n_samples, n_features))
    ground_truth = 100 * rs.uniform(size=(n_features, 1))  # every feature informative
    y = np.dot(X, ground_truth)
    y += rs.normal(scale=noise, size=y.shape)
    rows = np.arange(n_samples)  # scikit-learn's shuffle of the samples ...
    rs.shuffle(rows)
    X, y = X[rows], y[rows]
    columns = np.arange(n_features)  # ... and of the features
    rs.shuffle(columns)
    X[:, :] = X[:, columns]
    return np.ascontiguousarray(X, dtype=np.float64), y.reshape((n_samples, 1))


# --------------------------------------------------------------------------- CSV reading


def _read_numeric_csv(path, columns=None):
    """Read a CSV file with a header row into float64 columns.

    Parameters
    ----------
    path : str or Path
    columns : sequence of str or None
        The columns to return, in this order; None returns every column. Other
        columns are read but not checked.

    Returns
    -------
    names : list of str
        The returned columns' names.
    data : ndarray, shape (n_rows, len(names)), float64

    Raises
    ------
    FileNotFoundError
        The file does not exist (the message names it).
    DataError
        No header, a missing column, a row with too few fields (or more non-empty
        fields than the header), an empty or non-numeric or non-finite cell, or no
        data rows. Rows are counted from 1
        after the header; the file line is given too.
    """
    names, data, _ = _read_csv(path, columns)
    return names, data


def _read_csv(path, columns=None, text_column=None):
    """``_read_numeric_csv``, with one column read as text instead of numbers.

    ``text_column`` (a name, or None) is left out of the numeric columns (with
    ``columns=None``: every other column is numeric) and returned as a list of its
    stripped cells, one per row; an empty cell there is a DataError too. A missing
    ``text_column`` raises a DataError listing the header.

    Returns ``(names, data, texts)``; ``texts`` is None without ``text_column``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            lines = list(reader)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text CSV file ({exc.reason})") from None
    except csv.Error as exc:  # e.g. a field over csv's size limit: not a ValueError
        raise DataError(f"{path}: line {reader.line_num}: cannot be read as CSV ({exc})") \
            from None
    # Blank lines carry no data; remember each row's file line for the messages.
    numbered = [(i + 1, row) for i, row in enumerate(lines) if any(cell.strip() for cell in row)]
    if not numbered:
        raise DataError(f"{path}: empty file, expected a header row")
    header_line, header = numbered[0]
    header = [h.strip() for h in header]
    if text_column is not None and text_column not in header:
        raise DataError(f"{path}: no column {text_column!r} (columns: {', '.join(header)})")
    if columns is None:
        seen = set()
        for name in header:
            if name == "":
                raise DataError(f"{path}: line {header_line}: empty column name in the header")
            if name in seen:
                raise DataError(f"{path}: line {header_line}: column {name!r} appears twice")
            seen.add(name)
        wanted = [name for name in header if name != text_column]
    else:
        wanted = list(columns)
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataError(
                f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(c) for c in missing)} (the header has {', '.join(header)})"
            )
        twice = [c for c in wanted if header.count(c) > 1]
        if twice:  # which of the two is meant cannot be told
            raise DataError(f"{path}: line {header_line}: column {twice[0]!r} appears twice")
    index = [header.index(c) for c in wanted]
    rows = numbered[1:]
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    data = np.empty((len(rows), len(wanted)), dtype=np.float64)
    texts = None if text_column is None else []
    t = None if text_column is None else header.index(text_column)
    for r, (line, row) in enumerate(rows):
        where = f"{path}: row {r + 1} (line {line})"
        if len(row) > len(header) and any(cell.strip() for cell in row[len(header):]):
            # a stray comma (a thousands separator, an unquoted text cell) shifts every
            # cell after it into the wrong column: refuse rather than read it shifted
            raise DataError(f"{where}: {len(row)} fields, the header has {len(header)} "
                            f"(a comma inside a value must be quoted)")
        for j, (name, k) in enumerate(zip(wanted, index)):
            if k >= len(row):
                raise DataError(f"{where}, column {name!r}: missing value ({len(row)} fields, header has {len(header)})")
            cell = row[k].strip()
            try:
                value = float(cell)
            except ValueError:
                raise DataError(f"{where}, column {name!r}: {cell!r} is not a number") from None
            if not math.isfinite(value):
                raise DataError(f"{where}, column {name!r}: {cell!r} is not a finite number")
            data[r, j] = value
        if t is not None:
            cell = row[t].strip() if t < len(row) else ""
            if not cell:
                raise DataError(f"{where}, column {text_column!r}: missing value")
            texts.append(cell)
    return wanted, data, texts


# --------------------------------------------------------------------------- seed 004


class Admissions(NamedTuple):
    """Seed 004's admissions data, prepared as its ``data_prep.py``.

    Attributes
    ----------
    X_train : ndarray, shape (n_train, 6), float64
    y_train : ndarray, shape (n_train,), float64 (0.0 or 1.0)
    X_test : ndarray, shape (n_test, 6), float64
    y_test : ndarray, shape (n_test,), float64
    feature_names : tuple of str -- ``("gre", "gpa", "rank_1", ..., "rank_4")``
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple


def _rank_name(value):
    # pandas names the dummies after the values: rank_1 for an integer column.
    return f"rank_{int(value)}" if float(value).is_integer() else f"rank_{value!r}"


def admissions(path=None):
    """Seed 004's admissions data, prepared exactly as its ``data_prep.py``.

    Steps, as the tutorial does them with pandas:

    1. one-hot encode ``rank`` (``pd.get_dummies(..., prefix='rank')``: one column per
       distinct value, in increasing order) and drop ``rank``;
    2. standardize ``gre`` and ``gpa`` with their mean and *sample* standard deviation
       (``ddof=1``, pandas' ``.std()``);
    3. ``np.random.seed(21)``; ``sample = np.random.choice(index, size=int(n * 0.9),
       replace=False)``: the training rows are the rows of ``sample`` in that order,
       the test rows are the others in file order.

    The features are ``gre, gpa, rank_1, ..., rank_4`` (the tutorial's column order
    for its file), the target is ``admit``. The global numpy random state is not
    touched (a private ``RandomState(21)`` gives the same draw).

    Parameters
    ----------
    path : str, Path or None
        None loads the tutorial's data, the full 400-row UCLA admissions table
        shipped with fastbp (``fastbp/data/ucla_binary.csv``): 360 training rows, 40
        test rows. Otherwise any CSV with a header naming the columns ``admit``,
        ``gre``, ``gpa`` and ``rank``, in any order; other columns are ignored.

    Returns
    -------
    Admissions
        ``(X_train, y_train, X_test, y_test, feature_names)``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    DataError (a ValueError)
        A missing column, or an empty / non-numeric cell; the message names the file,
        the row and the column.
    """
    src = _ADMISSIONS if path is None else Path(path)
    _, table = _read_numeric_csv(src, ["admit", "gre", "gpa", "rank"])
    admit, gre, gpa, rank = table.T
    n = table.shape[0]
    if n < 2:
        raise DataError(f"{src}: {n} data row(s); the 90/10 split needs at least 2")

    levels = np.unique(rank)
    dummies = (rank[:, None] == levels[None, :]).astype(np.float64)
    names = ("gre", "gpa") + tuple(_rank_name(v) for v in levels)

    def standardize(col, name):
        std = col.std(ddof=1)
        if not std > 0:
            raise DataError(f"{src}: column {name!r} is constant; it cannot be standardized")
        return (col - col.mean()) / std

    X = np.column_stack([standardize(gre, "gre"), standardize(gpa, "gpa"), dummies])
    sample = np.random.RandomState(21).choice(n, size=int(n * 0.9), replace=False)
    rest = np.ones(n, dtype=bool)
    rest[sample] = False
    return Admissions(
        np.ascontiguousarray(X[sample]),
        np.ascontiguousarray(admit[sample]),
        np.ascontiguousarray(X[rest]),
        np.ascontiguousarray(admit[rest]),
        names,
    )
