"""Shared fixtures: random problems, tutorial data, the admissions csv (packaged).

The package is imported as installed (``pip install -e .``); nothing here touches
sys.path. ``reference`` (tests/reference.py) is importable because pytest puts the
rootdir-less tests/ folder first on sys.path for its modules (no __init__.py).
"""

from pathlib import Path

import numpy as np
import pytest

import fastbp.datasets

# the tutorial's 400-row admissions table, as shipped in the package
ADMISSIONS_CSV = Path(fastbp.datasets.__file__).resolve().parent / "data" / "ucla_binary.csv"


# ------------------------------------------------------------ random problems


def random_params(rng, sizes, bias=True, scale=1.0):
    """Weights N(0, scale/sqrt(n_in)) so pre-activations stay O(1); biases N(0, 0.5*scale)."""
    weights = [rng.normal(0.0, scale / np.sqrt(a), size=(a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
    biases = [rng.normal(0.0, 0.5 * scale, size=b) for b in sizes[1:]] if bias else None
    return weights, biases


def random_targets(rng, n, k, loss):
    """Targets for ``loss``: in (0, 1) for bce (and fine for every loss)."""
    if loss == "bce":
        return rng.uniform(0.05, 0.95, size=(n, k))
    return rng.normal(0.0, 1.0, size=(n, k))


@pytest.fixture
def make_problem():
    """Factory: make_problem(sizes, n=..., loss=..., bias=..., seed=...) -> (X, y, weights, biases)."""

    def make(sizes, n=9, loss="mse", bias=True, seed=0, scale=1.0):
        r = np.random.default_rng(seed)
        X = r.normal(0.0, 1.0, size=(n, sizes[0]))
        y = random_targets(r, n, sizes[-1], loss)
        weights, biases = random_params(r, sizes, bias=bias, scale=scale)
        return X, y, weights, biases

    return make


# -------------------------------------------------------------- tutorial data


def generate_xor_easy():
    """Seed 000's generate_XOR_easy: 21 points on the two diagonals of the unit square."""
    inputs, labels = [], []
    for i in range(11):
        inputs.append([0.1 * i, 0.1 * i])
        labels.append(0)
        if 0.1 * i == 0.5:
            continue
        inputs.append([0.1 * i, 1 - 0.1 * i])
        labels.append(1)
    return np.array(inputs), np.array(labels).reshape(21, 1)


def generate_linear(n=100, seed=1):
    """Seed 000's 'Linear' data set (its generator is not shown in the post): n points
    uniform in the unit square, labelled 1 where x1 > x2, else 0."""
    pts = np.random.RandomState(seed).uniform(0, 1, (n, 2))
    labels = (pts[:, 0] > pts[:, 1]).astype(np.float64)
    return pts, labels.reshape(n, 1)


@pytest.fixture
def xor_easy():
    return generate_xor_easy()


@pytest.fixture
def linear_data():
    return generate_linear()


@pytest.fixture
def admissions_path():
    assert ADMISSIONS_CSV.is_file(), f"the packaged admissions data is missing: {ADMISSIONS_CSV}"
    return ADMISSIONS_CSV
