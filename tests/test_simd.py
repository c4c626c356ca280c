"""kernels/simd.py: the lane-wise row dot product against an exact model of its order.

The reference below evaluates the order the module documents with exact rational
arithmetic, rounding to float64 exactly where the kernel rounds (each fused
multiply-add once, each add and product once), so the kernel must match it bit for bit
on every CPU.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
from numba import njit, uint64

from fastbp.kernels.activations import fma as llvm_fma
from fastbp.kernels.dense import dot4, sum4
from fastbp.kernels.simd import LANES, row_dot, row_dot_sgd


def _round(exact, dtype):
    """The float of ``dtype`` nearest to the rational ``exact`` (ties to even)."""
    near = dtype(float(exact))  # within one unit of the answer
    candidates = [np.nextafter(near, dtype(-np.inf)), near, np.nextafter(near, dtype(np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - exact),
                                          int(np.array(c).view(f"u{c.itemsize}")) & 1))


def _reference_row_dot(w, v):
    """The documented order, in exact arithmetic rounded where the kernel rounds: LANES
    fma lanes over the full blocks, a pairwise tree, then the remainder left to right
    with rounded products."""
    dtype = type(w[0])

    def add(a, b):
        return _round(Fraction(float(a)) + Fraction(float(b)), dtype)

    def mul(a, b):
        return _round(Fraction(float(a)) * Fraction(float(b)), dtype)

    def fma(a, b, c):
        return _round(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)), dtype)

    n = len(w)
    m = n - n % LANES
    if m == 0:
        acc, start = mul(w[0], v[0]), 1
    else:
        lanes = [dtype(0)] * LANES
        for j in range(m):
            lanes[j % LANES] = fma(w[j], v[j], lanes[j % LANES])
        while len(lanes) > 1:
            lanes = [add(lanes[i], lanes[i + 1]) for i in range(0, len(lanes), 2)]
        acc, start = lanes[0], m
    for j in range(start, n):
        acc = add(acc, mul(w[j], v[j]))
    return acc


@njit
def _dot(w, wo, v, vo, n):
    return row_dot(w, uint64(wo), v, uint64(vo), uint64(n))


@njit
def _dot_sgd(w, wo, v, vo, n, a, lr):
    return row_dot_sgd(w, uint64(wo), v, uint64(vo), uint64(n), a, lr)


LENGTHS = [1, 2, 7, LANES - 1, LANES, LANES + 1, 2 * LANES, 3 * LANES + 5, 100, 1024]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", LENGTHS)
def test_row_dot_is_exactly_the_documented_order(n, dtype):
    rng = np.random.default_rng(n)
    w = (rng.standard_normal(n + 11) * np.exp(rng.uniform(-20, 20, n + 11))).astype(dtype)
    v = rng.standard_normal(n + 5).astype(dtype)
    got = _dot(w, 3, v, 5, n)  # offsets not multiples of anything: unaligned loads
    assert dtype(got) == got  # summed in the arrays' own precision
    assert got == _reference_row_dot(list(w[3:3 + n]), list(v[5:5 + n]))


@pytest.mark.parametrize("n", LENGTHS)
def test_row_dot_is_accurate(n):
    rng = np.random.default_rng(100 + n)
    w, v = rng.standard_normal(n), rng.standard_normal(n)
    exact = math.fsum(float(Fraction(a) * Fraction(b)) for a, b in zip(w, v))
    scale = math.fsum(abs(a * b) for a, b in zip(w, v))
    assert abs(_dot(w, 0, v, 0, n) - exact) <= 2 * n * np.finfo(float).eps * scale


@pytest.mark.parametrize("n", LENGTHS)
def test_row_dot_sgd_returns_the_dot_before_updating_the_row(n):
    rng = np.random.default_rng(200 + n)
    w = rng.standard_normal(n + 9)
    v = rng.standard_normal(n + 2)
    before = w.copy()
    a, lr = 0.37, 0.05
    got = _dot_sgd(w, 4, v, 2, n, a, lr)
    assert got == _dot(before, 4, v, 2, n)
    expected = before.copy()
    expected[4:4 + n] -= lr * (a * v[2:2 + n])  # the scalar update's own rounding
    np.testing.assert_array_equal(w, expected)  # and nothing outside the row moved


def test_row_dot_sgd_in_float32_rounds_like_the_scalar_statement():
    """float32 rows with a float64 lr: a * v in float32, the rest in float64, rounded
    back to float32 on the store (Numba's typing of ``w[j] -= lr * (a * v[j])``)."""
    rng = np.random.default_rng(9)
    n = 3 * LANES + 3
    w = rng.standard_normal(n).astype(np.float32)
    v = rng.standard_normal(n).astype(np.float32)
    before = w.copy()
    a, lr = np.float32(0.37), 0.0123456789
    got = _dot_sgd(w, 0, v, 0, n, a, lr)
    assert got == _dot(before, 0, v, 0, n)
    expected = (before.astype(np.float64) - lr * (a * v).astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(w, expected)


def test_row_dot_is_the_same_in_a_kernel_compiled_from_scratch():
    """A second, independent compilation (another signature) gives the same bits."""
    rng = np.random.default_rng(7)
    w, v = rng.standard_normal(300), rng.standard_normal(300)

    @njit
    def dot_int32(w, v, n):
        return row_dot(w, uint64(0), v, uint64(0), uint64(np.int32(n)))

    assert dot_int32(w, v, 300) == _dot(w, 0, v, 0, 300)


# dense.dot4 / dense.sum4 (their lanes are simd.lanes4) against the four scalar lanes
# they are defined by: the generated kernels and the general ones both call them now, so
# only this test would see their order change.
@njit
def _scalar_dot4(x, xo, y, yo, n):
    q = n - (n & 3)
    a0 = a1 = a2 = a3 = 0.0
    for s in range(0, q, 4):
        a0 = llvm_fma(x[xo + s], y[yo + s], a0)
        a1 = llvm_fma(x[xo + s + 1], y[yo + s + 1], a1)
        a2 = llvm_fma(x[xo + s + 2], y[yo + s + 2], a2)
        a3 = llvm_fma(x[xo + s + 3], y[yo + s + 3], a3)
    for s in range(q, n):
        a0 = llvm_fma(x[xo + s], y[yo + s], a0)
    return (a0 + a1) + (a2 + a3)


@njit
def _scalar_sum4(x, xo, n):
    q = n - (n & 3)
    a0 = a1 = a2 = a3 = 0.0
    for s in range(0, q, 4):
        a0 += x[xo + s]
        a1 += x[xo + s + 1]
        a2 += x[xo + s + 2]
        a3 += x[xo + s + 3]
    for s in range(q, n):
        a0 += x[xo + s]
    return (a0 + a1) + (a2 + a3)


@njit
def _dot4(x, xo, y, yo, n):
    return dot4(x, uint64(xo), y, uint64(yo), uint64(n))


@njit
def _sum4(x, xo, n):
    return sum4(x, uint64(xo), uint64(n))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 8, 21, 100, 360, 1001])
def test_dot4_and_sum4_keep_their_four_scalar_lanes_order(n, dtype):
    rng = np.random.default_rng(300 + n)
    x = (rng.standard_normal(n + 7) * 10.0 ** rng.integers(-6, 6, n + 7)).astype(dtype)
    y = rng.standard_normal(n + 9).astype(dtype)
    assert _dot4(x, 3, y, 5, n) == _scalar_dot4(x, 3, y, 5, n)
    assert _sum4(x, 2, n) == _scalar_sum4(x, 2, n)
