"""fastbp.datasets: the tutorials' data, exactly as the tutorials make it."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.testing as npt
import pytest

from fastbp import datasets
from fastbp.datasets import DataError

PACKAGED = Path(datasets.__file__).resolve().parent / "data" / "ucla_binary.csv"
# sha256 of the public UCLA admissions table (400 rows) the tutorial reads
UCLA_SHA256 = "2f5dcda0e455631215709575cc2eede4e5fb4e94cda9c37dab54e26d79dcf8c2"
FEATURES = ("gre", "gpa", "rank_1", "rank_2", "rank_3", "rank_4")


# ------------------------------------------------------------------ seed 000


def _tutorial_generate_xor_easy():
    # Seed 000, verbatim.
    inputs = []
    labels = []
    for i in range(11):
        inputs.append([0.1 * i, 0.1 * i])
        labels.append(0)

        if 0.1 * i == 0.5:
            continue

        inputs.append([0.1 * i, 1 - 0.1 * i])
        labels.append(1)
    return np.array(inputs), np.array(labels).reshape(21, 1)


def test_xor_easy_is_the_tutorials_generator():
    X, y = datasets.xor_easy()
    X_ref, y_ref = _tutorial_generate_xor_easy()
    assert X.shape == (21, 2) and y.shape == (21, 1)
    assert X.dtype == np.float64 and y.dtype == np.float64
    npt.assert_array_equal(X, X_ref)
    npt.assert_array_equal(y, y_ref)
    assert y.sum() == 10  # the centre point (0.5, 0.5) appears once, labelled 0


def test_linear_labels_by_the_diagonal_and_is_seeded():
    X, y = datasets.linear(100, seed=7)
    assert X.shape == (100, 2) and y.shape == (100, 1)
    assert X.dtype == np.float64 and y.dtype == np.float64
    assert np.all((X >= 0) & (X < 1))
    npt.assert_array_equal(y[:, 0], np.where(X[:, 0] > X[:, 1], 0.0, 1.0))
    X2, y2 = datasets.linear(100, seed=7)
    npt.assert_array_equal(X, X2)
    npt.assert_array_equal(y, y2)
    X3, _ = datasets.linear(100, seed=8)
    assert not np.array_equal(X, X3)
    assert 0 < y.sum() < 100
    Xd, _ = datasets.linear()
    assert Xd.shape == (100, 2)
    npt.assert_array_equal(Xd, datasets.linear(seed=0)[0])


@pytest.mark.parametrize("n", [0, -3, 2.5, "10", True])
def test_linear_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n must be"):
        datasets.linear(n)


# ------------------------------------------------------------------ seed 001


def test_regression_is_make_regression_reshaped():
    sk = pytest.importorskip("sklearn.datasets")
    X, y = datasets.regression()
    X_ref, Y_ref = sk.make_regression(100, n_features=1, n_targets=1, noise=10, random_state=3)
    assert X.shape == (100, 1) and y.shape == (100, 1)
    assert X.dtype == np.float64 and y.dtype == np.float64
    npt.assert_array_equal(X, X_ref)
    npt.assert_array_equal(y, Y_ref.reshape((100, 1)))


def test_regression_and_every_demo_need_no_scikit_learn():
    """fastbp's own install (numpy and Numba) runs ``fastbp demo all``: the regression
    data needed scikit-learn, so the demo stopped there with an ImportError."""
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "import numpy as np\n"
            "from fastbp import datasets\n"
            "X, y = datasets.regression()\n"
            "print(X.shape, y.shape, repr(float(X.sum())), repr(float(y.sum())))\n"
            "from fastbp.cli import main\n"
            "sys.exit(main(['demo', 'all', '--epochs', '50', '--no-progress']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    X, y = datasets.regression()
    assert f"(100, 1) (100, 1) {float(X.sum())!r} {float(y.sum())!r}" in out.stdout
    assert out.stdout.count("Wall time") == 4  # xor, linear, regression, admissions


# ------------------------------------------------------------------ seed 004


def _pandas_data_prep(path):
    """Seed 004's data_prep.py (``.ix`` is ``.loc`` in today's pandas; the standardized
    column is assigned whole, which recent pandas needs for an integer column)."""
    pd = pytest.importorskip("pandas")
    admissions = pd.read_csv(path)
    data = pd.concat([admissions, pd.get_dummies(admissions["rank"], prefix="rank")], axis=1)
    data = data.drop("rank", axis=1)
    for field in ["gre", "gpa"]:
        mean, std = data[field].mean(), data[field].std()
        data[field] = (data[field] - mean) / std
    state = np.random.get_state()
    try:
        np.random.seed(21)
        sample = np.random.choice(data.index, size=int(len(data) * 0.9), replace=False)
    finally:
        np.random.set_state(state)
    data, test_data = data.loc[sample], data.drop(sample)
    features, targets = data.drop("admit", axis=1), data["admit"]
    features_test, targets_test = test_data.drop("admit", axis=1), test_data["admit"]
    return features, targets, features_test, targets_test


def _assert_matches_pandas(result, path):
    features, targets, features_test, targets_test = _pandas_data_prep(path)
    assert tuple(features.columns) == result.feature_names == FEATURES
    # Bit for bit: same operations in the same order.
    npt.assert_array_equal(result.X_train, features.to_numpy(dtype=np.float64))
    npt.assert_array_equal(result.y_train, targets.to_numpy(dtype=np.float64))
    npt.assert_array_equal(result.X_test, features_test.to_numpy(dtype=np.float64))
    npt.assert_array_equal(result.y_test, targets_test.to_numpy(dtype=np.float64))


def test_admissions_default_shapes_and_names():
    a = datasets.admissions()
    X_train, y_train, X_test, y_test, names = a  # a plain tuple too
    assert X_train.shape == (360, 6) and X_test.shape == (40, 6)
    assert y_train.shape == (360,) and y_test.shape == (40,)
    for arr in (X_train, y_train, X_test, y_test):
        assert arr.dtype == np.float64 and arr.flags.c_contiguous
    assert names == FEATURES
    # Every row has exactly one rank dummy; targets are 0/1.
    npt.assert_array_equal(np.vstack([X_train, X_test])[:, 2:].sum(axis=1), 1.0)
    assert set(np.concatenate([y_train, y_test])) <= {0.0, 1.0}
    # gre/gpa standardized over all 400 rows with the sample std.
    both = np.vstack([X_train, X_test])[:, :2]
    npt.assert_allclose(both.mean(axis=0), 0.0, atol=1e-12)
    npt.assert_allclose(both.std(axis=0, ddof=1), 1.0, rtol=1e-12)


def test_admissions_default_matches_pandas_data_prep():
    _assert_matches_pandas(datasets.admissions(), PACKAGED)


def test_admissions_path_reads_that_file(tmp_path):
    # the first 40 rows (the excerpt the tutorial prints): 36 training rows, 4 test rows
    p = tmp_path / "head.csv"
    p.write_text("\n".join(PACKAGED.read_text().splitlines()[:41]) + "\n")
    a = datasets.admissions(p)
    assert a.X_train.shape == (36, 6) and a.X_test.shape == (4, 6)
    _assert_matches_pandas(a, p)


def test_admissions_split_is_the_tutorials_seeded_choice():
    # Train rows in np.random.choice order, test rows in file order.
    raw = np.loadtxt(PACKAGED, delimiter=",", skiprows=1)
    np.random.seed(21)
    sample = np.random.choice(np.arange(400), size=360, replace=False)
    rest = np.setdiff1d(np.arange(400), sample)
    a = datasets.admissions()
    npt.assert_array_equal(a.y_train, raw[sample, 0])
    npt.assert_array_equal(a.y_test, raw[rest, 0])
    npt.assert_array_equal(np.argmax(a.X_train[:, 2:], axis=1) + 1, raw[sample, 3])


def test_packaged_file_is_the_ucla_table():
    data = PACKAGED.read_bytes()
    assert hashlib.sha256(data).hexdigest() == UCLA_SHA256
    lines = data.decode().splitlines()
    assert lines[0] == "admit,gre,gpa,rank"
    assert len(lines) == 401
    assert lines[1] == "0,380,3.61,3" and lines[40] == "1,520,2.68,3"


def test_packaged_file_is_in_the_package_data():
    # pyproject ships data/*.csv: the file must match that pattern to reach a wheel
    assert PACKAGED.parent.name == "data" and PACKAGED.suffix == ".csv"
    toml = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'fastbp = ["data/*.csv"]' in toml


def test_admissions_leaves_global_random_state_alone():
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    datasets.admissions()
    npt.assert_array_equal(np.random.random(3), expected)


def test_admissions_any_column_order_extra_columns_ignored(tmp_path):
    rows = PACKAGED.read_text().splitlines()[1:]
    p = tmp_path / "shuffled.csv"
    out = ["name,rank,gpa,extra,admit,gre"]
    for i, row in enumerate(rows):
        admit, gre, gpa, rank = row.split(",")
        out.append(f"s{i},{rank},{gpa},x{i},{admit},{gre}")
    p.write_text("\n".join(out) + "\n")
    got, ref = datasets.admissions(p), datasets.admissions()
    for g, r in zip(got[:4], ref[:4]):
        npt.assert_array_equal(g, r)
    assert got.feature_names == ref.feature_names


def test_admissions_accepts_crlf_and_blank_lines(tmp_path):
    rows = PACKAGED.read_text().splitlines()
    p = tmp_path / "crlf.csv"
    p.write_bytes(("\r\n".join(rows[:10] + [""] + rows[10:]) + "\r\n\r\n").encode())
    got, ref = datasets.admissions(p), datasets.admissions()
    for g, r in zip(got[:4], ref[:4]):
        npt.assert_array_equal(g, r)


# ------------------------------------------------------------------ errors


def test_admissions_missing_file(tmp_path):
    p = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        datasets.admissions(p)


def test_admissions_missing_column(tmp_path):
    p = tmp_path / "cols.csv"
    p.write_text("admit,gre,rank\n1,500,2\n0,600,3\n")
    with pytest.raises(DataError) as err:
        datasets.admissions(p)
    msg = str(err.value)
    assert "cols.csv" in msg and "'gpa'" in msg and "missing column" in msg
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("bad, shown", [("abc", "'abc'"), ("", "''"), ("nan", "'nan'"), ("inf", "'inf'")])
def test_admissions_bad_cell_names_file_row_and_column(tmp_path, bad, shown):
    p = tmp_path / "cells.csv"
    p.write_text(f"admit,gre,gpa,rank\n1,500,3.5,2\n0,600,3.1,3\n1,{bad},3.2,1\n")
    with pytest.raises(DataError) as err:
        datasets.admissions(p)
    msg = str(err.value)
    assert "cells.csv" in msg
    assert "row 3" in msg and "line 4" in msg
    assert "column 'gre'" in msg and shown in msg


def test_admissions_short_row(tmp_path):
    p = tmp_path / "short.csv"
    p.write_text("admit,gre,gpa,rank\n1,500,3.5,2\n0,600\n")
    with pytest.raises(DataError, match=r"short\.csv: row 2 \(line 3\), column 'gpa'"):
        datasets.admissions(p)


@pytest.mark.parametrize("text, match", [
    ("", "empty file"),
    ("admit,gre,gpa,rank\n", "no data rows"),
    ("admit,gre,gpa,rank\n1,500,3.5,2\n", "at least 2"),
    ("admit,gre,gpa,rank\n1,500,3.5,2\n0,500,3.1,3\n", "'gre' is constant"),
])
def test_admissions_degenerate_tables(tmp_path, text, match):
    p = tmp_path / "small.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=match):
        datasets.admissions(p)


def test_read_numeric_csv_rejects_duplicate_and_empty_names(tmp_path):
    p = tmp_path / "dup.csv"
    p.write_text("a,b,a\n1,2,3\n")
    with pytest.raises(DataError, match="'a' appears twice"):
        datasets._read_numeric_csv(p)
    p.write_text("a,,c\n1,2,3\n")
    with pytest.raises(DataError, match="empty column name"):
        datasets._read_numeric_csv(p)
    # a column asked for by name (predict's features, the admissions columns) too: the
    # first of the two used to be taken silently
    p.write_text("b,a,c,a\n1,2,3,4\n")
    with pytest.raises(DataError, match="line 1: column 'a' appears twice"):
        datasets._read_numeric_csv(p, ["a", "c"])
    assert datasets._read_numeric_csv(p, ["b", "c"])[1].tolist() == [[1.0, 3.0]]


def test_read_numeric_csv_directory(tmp_path):
    with pytest.raises(DataError, match="directory"):
        datasets._read_numeric_csv(tmp_path)


def test_read_numeric_csv_unparsable_csv_is_a_data_error(tmp_path):
    # csv.Error (not a ValueError) used to escape as a traceback from the CLI
    p = tmp_path / "huge.csv"
    p.write_text("a,y\n1,0\n" + "1" * 200_000 + ",1\n")
    with pytest.raises(DataError, match=r"huge\.csv: line 3: cannot be read as CSV"):
        datasets._read_numeric_csv(p)


def test_read_numeric_csv_refuses_a_row_longer_than_the_header(tmp_path):
    # "1,000" (a thousands separator) made four fields of three: every cell after it was
    # read one column to the left (b = 0, y = 2) without a word
    p = tmp_path / "shifted.csv"
    p.write_text("a,b,y\n1,000,2,0\n3,4,1\n")
    with pytest.raises(DataError, match=r"shifted\.csv: row 1 \(line 2\): 4 fields, the "
                                         r"header has 3"):
        datasets._read_numeric_csv(p)
    # trailing empty fields (a spreadsheet's trailing commas) hold nothing: still read
    p.write_text("a,b,y\n1,2,0,,\n3,4,1,\n")
    names, data = datasets._read_numeric_csv(p)
    assert names == ["a", "b", "y"]
    np.testing.assert_array_equal(data, [[1, 2, 0], [3, 4, 1]])
