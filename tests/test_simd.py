"""The lane-wise sums: kernels/intrinsics.py (lanes_dot, lanes_dot_step, lanes4,
_dot4_group) and the rules built on them (rules.row_dot, row_dot_step, dot4, sum4,
dot4_group), against exact models of their order; and every intrinsic's plain-Python
meaning (what runs under NUMBA_DISABLE_JIT) against its compiled version, bit for bit.

The reference below evaluates the order the modules document with exact rational
arithmetic, rounding to float64 exactly where the kernel rounds (each fused
multiply-add once, each add and product once), so the kernel must match it bit for bit
on every CPU.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
from numba import njit, uint64

from fastbp.kernels import intrinsics as I
from fastbp.kernels.intrinsics import LANES
from fastbp.kernels.options import make_work
from fastbp.kernels.rules import (dot4, dot4_group, int_power, row_dot, row_dot_step, sum4)


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
def _dot_step(w, wo, v, vo, n, a, lr):
    return row_dot_step(w, uint64(wo), v, uint64(vo), uint64(n), a, lr)


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
def test_row_dot_step_returns_the_dot_before_updating_the_row(n):
    rng = np.random.default_rng(200 + n)
    w = rng.standard_normal(n + 9)
    v = rng.standard_normal(n + 2)
    before = w.copy()
    a, lr = 0.37, 0.05
    got = _dot_step(w, 4, v, 2, n, a, lr)
    assert got == _dot(before, 4, v, 2, n)
    expected = before.copy()
    expected[4:4 + n] -= lr * (a * v[2:2 + n])  # the scalar update's own rounding
    np.testing.assert_array_equal(w, expected)  # and nothing outside the row moved


def test_row_dot_step_in_float32_rounds_like_the_scalar_statement():
    """float32 rows with a float64 lr: a * v in float32, the rest in float64, rounded
    back to float32 on the store (Numba's typing of ``w[j] - lr * (a * v[j])``)."""
    rng = np.random.default_rng(9)
    n = 3 * LANES + 3
    w = rng.standard_normal(n).astype(np.float32)
    v = rng.standard_normal(n).astype(np.float32)
    before = w.copy()
    a, lr = np.float32(0.37), 0.0123456789
    got = _dot_step(w, 0, v, 0, n, a, lr)
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


# rules.dot4 / rules.sum4 (their lanes are intrinsics.lanes4) against the scalar chains
# they are defined by: the generated kernels, the lanes across models and the batch
# passes all call them, so only this test would see their order change.
def _chains(x):
    """The documented chain count: one 256-bit vector, 4 float64 or 8 float32."""
    return 8 if x.dtype == np.float32 else 4


@njit
def _scalar_dot4(x, xo, y, yo, n, w):
    chains = np.zeros(w, x.dtype)  # sums in x's dtype
    for s in range(n):
        chains[s % w] = I.fma(x[xo + s], y[yo + s], chains[s % w])
    return _combined(chains, w)


@njit
def _scalar_sum4(x, xo, n, w):
    chains = np.zeros(w, x.dtype)
    for s in range(n):
        chains[s % w] += x[xo + s]
    return _combined(chains, w)


@njit
def _combined(chains, w):
    """float32's eight chains folded to four (k + k + 4), then (a0 + a1) + (a2 + a3)."""
    a = chains[:4].copy()
    if w == 8:
        for k in range(4):
            a[k] = chains[k] + chains[k + 4]
    return (a[0] + a[1]) + (a[2] + a[3])


@njit
def _dot4(x, xo, y, yo, n):
    return dot4(x, uint64(xo), y, uint64(yo), uint64(n))


@njit
def _sum4(x, xo, n):
    return sum4(x, uint64(xo), uint64(n))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 7, 8, 9, 15, 16, 21, 100, 360, 1001])
def test_dot4_and_sum4_keep_their_four_scalar_lanes_order(n, dtype):
    rng = np.random.default_rng(300 + n)
    x = (rng.standard_normal(n + 7) * 10.0 ** rng.integers(-6, 6, n + 7)).astype(dtype)
    y = rng.standard_normal(n + 9).astype(dtype)
    assert _dot4(x, 3, y, 5, n) == _scalar_dot4(x, 3, y, 5, n, _chains(x))
    assert _sum4(x, 2, n) == _scalar_sum4(x, 2, n, _chains(x))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dot4_masked_last_step_leaves_the_other_chains_as_they_are(dtype):
    """Products too small for the dtype round to -0.0: past one vector of samples every
    chain holds -0.0, and so does the sum.  The last n % width samples are a masked
    vector step: a chain it masks off must keep its -0.0 (one more fma of the zeros a
    masked load gives would make it +0.0, and the sum +0.0)."""
    tiny = np.finfo(dtype).tiny
    width = _chains(np.zeros(0, dtype))
    for n in range(width, 3 * width):
        x = np.full(n, -tiny, dtype)
        y = np.full(n, tiny, dtype)
        got = _dot4(x, 0, y, 0, n)
        assert _bits(dtype(got)) == _bits(dtype(-0.0)), n
        group = np.full(2, 7.0, dtype)
        _dot4_group_compiled(np.full(8, 7.0, dtype), 0, x, y, x, y, n)
        dot4_group(group, 0, (x, x), (y, y), uint64(n))
        assert [_bits(v) for v in group] == [_bits(dtype(-0.0))] * 2, n


@njit
def _dot4_group_compiled(out, o, a, b, c, d, n):
    # every kind of member: products sharing a row, products, plain sums, a row twice
    dot4_group(out, o, (a, a, b, c, d, a), (b, c, None, d, None, a), uint64(n))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 7, 8, 9, 15, 16, 21, 100, 1001])
def test_dot4_group_is_dot4_and_sum4_member_by_member(n, dtype):
    """The generated kernels' gradient sums, several in one loop: every member the bits
    of its own dot4 / sum4 (so of the scalar chains above), compiled and as Python
    (dot4_group called from Python: the meaning, what runs under NUMBA_DISABLE_JIT), writing only out[o:o+6]."""
    rng = np.random.default_rng(700 + n)
    a, b, c, d = ((rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n)).astype(dtype)
                  for _ in range(4))
    want = [_dot4(a, 0, b, 0, n), _dot4(a, 0, c, 0, n), _sum4(b, 0, n), _dot4(c, 0, d, 0, n),
            _sum4(d, 0, n), _dot4(a, 0, a, 0, n)]
    assert want[1] == _scalar_dot4(a, 0, c, 0, n, _chains(a))
    for group in (_dot4_group_compiled,
                  lambda out, o, a, b, c, d, n: dot4_group(
                      out, o, (a, a, b, c, d, a), (b, c, None, d, None, a), uint64(n))):
        out = np.full(10, 7.0, dtype)
        group(out, 3, a, b, c, d, n)
        assert [_bits(v) for v in out[3:9]] == [_bits(dtype(v)) for v in want]
        assert np.all(out[:3] == 7.0) and np.all(out[9:] == 7.0)


@njit
def _dot4_group_of(out, o, xs, ys, n):
    dot4_group(out, o, xs, ys, uint64(n))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("members", [1, 3, 4, 5, 8, 9, 12, 16])
def test_dot4_group_sums_whole_and_partial_vectors_of_members(members, dtype):
    """The group's sums are added a vector of members at a time (4 float64, 8 float32:
    transposed chains); every member must still be its own dot4 / sum4, whether its
    vector is whole (one store) or partial (stores of single lanes), and nothing past
    out[o + members] may be written."""
    rng = np.random.default_rng(40 + members)
    n = 21
    rows = [(rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n)).astype(dtype)
            for _ in range(members + 1)]
    xs = tuple(rows[k] for k in range(members))
    ys = tuple(rows[k + 1] for k in range(members))
    out = np.full(members + 4, 7.0, dtype)
    _dot4_group_of(out, 2, xs, ys, n)
    want = [_dot4(x, 0, y, 0, n) for x, y in zip(xs, ys)]
    assert [_bits(v) for v in out[2:2 + members]] == [_bits(dtype(v)) for v in want]
    assert np.all(out[:2] == 7.0) and np.all(out[2 + members:] == 7.0)


# ------------------------------------------------ Python meanings against compiled code
def _bits(x):
    """The IEEE bits of a float (float32 or float64), to compare -0.0 too; any NaN is
    "nan" (IEEE leaves the sign and payload of a computed NaN to the CPU)."""
    x = np.asarray(x)
    if np.isnan(x):
        return (x.dtype, "nan")
    return (x.dtype, x.view(np.int32 if x.dtype == np.float32 else np.int64).item())


@njit
def _fma_compiled(a, b, c):
    return I.fma(a, b, c)


def _fma_operands(dtype, rng):
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, np.finfo(dtype).max,
               np.finfo(dtype).tiny, np.finfo(dtype).tiny / 8, 1.0 + np.finfo(dtype).eps]
    values = np.concatenate([rng.standard_normal(30) * 10.0 ** rng.integers(-30, 30, 30),
                             special, np.negative(special)]).astype(dtype)
    triples = [tuple(rng.choice(values, 3)) for _ in range(400)]
    a = dtype(1.0 + 2.0 ** -12)  # products that round alone: the fused rounding shows
    triples += [(a, dtype(1.0) - (a - dtype(1.0)), dtype(-1.0)),
                (np.finfo(dtype).max, dtype(2.0), dtype(-np.inf)),  # exact product finite
                (np.finfo(dtype).max, dtype(2.0), dtype(0.0))]      # rounds to inf
    return triples


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fma_python_meaning_equals_the_compiled_fma(dtype):
    rng = np.random.default_rng(40)
    for a, b, c in _fma_operands(dtype, rng):
        with np.errstate(all="ignore"):
            want = _fma_compiled(a, b, c)
            got = I.fma(a, b, c)
        assert _bits(dtype(got)) == _bits(dtype(want)), (a, b, c, got, want)
    # mixed precisions compute in float64, as compiled
    x32, x64 = np.float32(0.1), 1.0 / 3.0
    assert _bits(np.float64(I.fma(x32, x64, x32))) == _bits(_fma_compiled(x32, x64, x32))


@njit
def _from_bits_compiled(b):
    return I.float64_from_bits(b)


def test_float64_from_bits_python_meaning_equals_the_compiled_cast():
    rng = np.random.default_rng(41)
    patterns = list(rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 500,
                                 dtype=np.int64))
    patterns += [np.int64(v) for v in (0, 1, 1023 << 52, -(1 << 63), 0x7FF0000000000000,
                                       0x000FFFFFFFFFFFFF, 0x7FF8000000000000,
                                       0x7FF0000000000001, 0x7FF8000000000123)]
    for p in patterns:  # every pattern, NaN payloads included, comes back as it went in
        got, want = I.float64_from_bits(p), _from_bits_compiled(p)
        assert int(np.float64(got).view(np.int64)) == int(np.float64(want).view(np.int64)) \
            == int(p)


@njit
def _bits_compiled(x):
    return I.float64_bits(x)


def test_float64_bits_python_meaning_equals_the_compiled_cast():
    rng = np.random.default_rng(43)
    values = list(rng.standard_normal(300) * 10.0 ** rng.integers(-300, 300, 300))
    values += [0.0, -0.0, 5e-324, -5e-324, 1.0, -1.0, np.inf, -np.inf, np.nan,
               np.finfo(np.float64).max, np.finfo(np.float64).tiny,
               np.int64(0x7FF8000000000123).view(np.float64)]  # a NaN with a payload
    for x in values:  # the int64 of the value's own bits, compiled and as Python
        want = int(np.float64(x).view(np.int64))
        got, compiled = I.float64_bits(x), _bits_compiled(np.float64(x))
        assert type(got) is np.int64 and int(got) == int(compiled) == want, x
        assert int(np.float64(I.float64_from_bits(got)).view(np.int64)) == want


@njit
def _from_bits32_compiled(b):
    out = np.empty(1, np.float32)  # returned unboxed: a Python float would quiet an sNaN
    out[0] = I.float32_from_bits(b)
    return out[0:1].view(np.int32)[0]


def test_float32_from_bits_python_meaning_equals_the_compiled_cast():
    rng = np.random.default_rng(42)
    patterns = list(rng.integers(np.iinfo(np.int32).min, np.iinfo(np.int32).max, 500,
                                 dtype=np.int32))
    patterns += [np.int32(v) for v in (0, 1, 127 << 23, -(1 << 31), 0x7F800000,
                                       0x007FFFFF, 0x7FC00000, 0x7F800001)]
    for p in patterns:
        got, want = I.float32_from_bits(p), _from_bits32_compiled(p)
        assert isinstance(got, np.float32)
        assert int(got.view(np.int32)) == int(want) == int(p)


@njit
def _libm_compiled(x, out):
    for i in range(x.shape[0]):
        out[0, i] = I.exp(x[i])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exp_python_meaning_equals_the_compiled_libm_call(dtype):
    # compiled, a float32 calls expf; the float64 result rounded to float32 may differ
    # in the last bit, so the Python meaning calls it too (softmax layers of float32
    # models under NUMBA_DISABLE_JIT)
    rng = np.random.default_rng(43)
    x = np.concatenate([rng.standard_normal(3000) * 4, [0.0, -0.0, 88.5, -104.0, 1e-30]])
    x = x.astype(dtype)
    want = np.empty((1, x.shape[0]), dtype)
    _libm_compiled(x, want)
    got = np.array([[I.python_exp(v) for v in x]])
    assert got.dtype == dtype
    with np.errstate(over="ignore"):
        assert np.array_equal(got, want)


@njit
def _int_power_compiled(x, n):
    return x ** n, int_power(x, n)


def test_int_power_is_pythons_float_to_int_power_not_numbas():
    # Adam's bias corrections and the step schedule: Python's ** (what PyTorch's and
    # scikit-learn's optimizers compute) calls libm's pow, compiled and in Python alike;
    # Numba's ** with an integer exponent powers by squaring, which rounds differently
    rng = np.random.default_rng(44)
    for x in list(rng.random(50)) + [0.9, 0.999, 0.5, 1.0 - 1e-12]:
        for n in (0, 1, 2, 3, 7, 10, 1000, 65_536, 65_537, 200_000):
            assert _int_power_compiled(x, n)[1] == float(x) ** n \
                == getattr(int_power, "py_func", int_power)(x, n), \
                (x, n)
    assert any(float(x) ** n != _int_power_compiled(x, n)[0]
               for x in rng.random(200) for n in (5, 11, 37))  # the test can tell


def test_options_as_compiled_types_python_scalars_as_numba_does():
    from fastbp.kernels import options as O
    rule = O.plain_rule(0.1)
    typed = O.as_compiled(O.Loop(4, True, 1)), O.as_compiled(rule)
    assert type(typed[0].batch_size) is np.int64 and typed[0].shuffle is True
    assert type(typed[1].lr) is np.float64 and typed[1].lr == 0.1
    # the weak Python float would keep a float32 product in float32; Numba's float64 not
    assert (typed[1].momentum * np.float32(1.0)).dtype == np.float64


@njit
def _like_compiled(value, x):
    return I.like(value, x)


@pytest.mark.parametrize("x", [np.zeros(2, np.float32), np.float32(1.5),
                               np.zeros(2), 1.5, np.float64(2.5)])
def test_like_gives_the_value_in_the_float_type_of_its_argument(x):
    single = np.asarray(x).dtype == np.float32
    want = np.float32(0.1) if single else 0.1
    got = I.like(0.1, x)
    assert type(got) is type(want) and got == want
    # compiled: the value rounds to float32 exactly where the Python meaning does
    assert _like_compiled(0.1, x) == want


@njit
def _lanes4_compiled(x, xo, y, yo, n):
    return I.lanes4(x, xo, y, yo, n)


@njit
def _sums4_compiled(x, xo, n):
    return I.lanes4(x, xo, None, 0, n)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [0, 1, 3, 4, 8, 9, 13, 16, 39, 800])
def test_lanes4_python_meaning_equals_the_compiled_lanes(dtype, n):
    """Whole vectors of chains and a masked last step (n % width samples)."""
    rng = np.random.default_rng(500 + n)
    x = (rng.standard_normal(n + 5) * 10.0 ** rng.integers(-6, 6, n + 5)).astype(dtype)
    y = rng.standard_normal(n + 3).astype(dtype)
    want = _lanes4_compiled(x, 5 % (x.size - n + 1), y, 3, n)
    got = I.lanes4(x, 5 % (x.size - n + 1), y, 3, n)
    assert [_bits(np.float64(v)) for v in got] == [_bits(np.float64(v)) for v in want]
    want = _sums4_compiled(x, 1, n)
    got = I.lanes4(x, 1, None, 0, n)
    assert [_bits(np.float64(v)) for v in got] == [_bits(np.float64(v)) for v in want]


@njit
def _squared_error_sum_compiled(out, y, w, n, weighted):
    if weighted:
        return I.squared_error_sum(out, y, w, n)
    return I.squared_error_sum(out, y, None, n)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 24, 29, 31, 100, 101])
@pytest.mark.parametrize("room", ["padded", "exact", "y exact", "four past"])
def test_squared_error_sum_python_meaning_equals_the_compiled_sum(dtype, n, room):
    """rules.loss_sum's squared errors: sixteen chains of the arrays' dtype, sixteen
    samples a step in four float64 vectors or two float32 ones, last steps for the
    rest; each term times the weight, in that dtype; the chains added as sum k = (c[k] +
    c[k + 4]) + (c[k + 8] + c[k + 12]), then those four.  (float64 chains, the sum
    before, differ for float32 in these cases: the check could fail.)  The elements
    past n (NaN) are in no chain, whether the last steps load them (every array holds
    their whole vectors: "padded") or mask them off (an array ends at n, or four
    values past it: half of a float32 load)."""
    rng = np.random.default_rng(900 + n)
    out = (rng.standard_normal(n + 20) * 10.0 ** rng.integers(-3, 3, n + 20)).astype(dtype)
    y = rng.standard_normal(n + 20).astype(dtype)
    w = rng.random(n + 20).astype(dtype)
    out[n:] = np.nan
    y[n:] = np.nan
    if room == "exact":
        out, y, w = out[:n].copy(), y[:n].copy(), w[:n].copy()
    elif room == "y exact":
        y = y[:n].copy()
    elif room == "four past":
        out, y, w = out[:n + 4].copy(), y[:n + 4].copy(), w[:n + 4].copy()
    for weighted in (False, True):
        want = _squared_error_sum_compiled(out, y, w, n, weighted)
        got = I.squared_error_sum(out, y, w if weighted else None, n)
        assert np.array(got).dtype == dtype  # (Numba returns a Python float)
        assert _bits(np.float64(got)) == _bits(np.float64(want))
        assert _bits(np.float64(got)) == _bits(np.float64(_chain_sum(out, y, w, n, weighted)))


def _chain_sum(out, y, w, n, weighted, chain_type=None):
    """The order spelled out: sixteen chains of ``chain_type`` (default: the arrays'
    dtype), each term d * d (times w) in the arrays' dtype."""
    chain_type = chain_type or out.dtype.type
    c = [chain_type(0.0)] * I.LOSS_CHAINS
    for s in range(n):
        d = out[s] - y[s]
        c[s % 16] = chain_type(c[s % 16] + chain_type(w[s] * (d * d) if weighted else d * d))
    v = [(c[k] + c[k + 4]) + (c[k + 8] + c[k + 12]) for k in range(4)]
    return (v[0] + v[1]) + (v[2] + v[3])


def test_float32_squared_errors_are_summed_in_float32():
    """A float32 row's squared errors are summed in float32 chains (no float64 inside
    the loop): the compiled sums equal the float32 order, and differ from the float64
    chains used before in some of these rows (the check could fail)."""
    rng = np.random.default_rng(4)
    differ = 0
    for n in (5, 16, 17, 100, 333):
        out = rng.standard_normal(n).astype(np.float32)
        y = rng.standard_normal(n).astype(np.float32)
        w = rng.random(n).astype(np.float32)
        for weighted in (False, True):
            got = _squared_error_sum_compiled(out, y, w, n, weighted)
            assert got == _chain_sum(out, y, w, n, weighted)
            differ += np.float64(got) != np.float64(np.float32(
                _chain_sum(out, y, w, n, weighted, np.float64)))
    assert differ > 0


@njit
def _lanes_dot_compiled(w, wo, v, vo, m):
    return I.lanes_dot(w, wo, v, vo, m)


@njit
def _lanes_dot_step_compiled(w, wo, v, vo, m, a, lr):
    return I.lanes_dot_step(w, wo, v, vo, m, a, lr)


@njit
def _lanes_dot_step_carry_compiled(w, wo, v, vo, m, a, lr, carry, co, load, store):
    return I.lanes_dot_step_carry(w, wo, v, vo, m, a, lr, carry, co, load, store)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pieces", [(LANES,), (LANES, 2 * LANES), (3 * LANES, LANES, 5 * LANES)])
@pytest.mark.parametrize("meaning", ["python", "compiled"])
def test_a_row_in_pieces_carried_is_the_row_at_once(dtype, pieces, meaning):
    """lanes_dot_step_carry over a row's pieces, one after the other (the threads of
    kernels/sample_share.py), gives lanes_dot_step's sum and updates, bit for bit."""
    step = I.lanes_dot_step_carry if meaning == "python" else _lanes_dot_step_carry_compiled
    m = sum(pieces)
    rng = np.random.default_rng(700 + m)
    w = (rng.standard_normal(m + 5) * np.exp(rng.uniform(-20, 20, m + 5))).astype(dtype)
    v = rng.standard_normal(m + 3).astype(dtype)
    a, lr = dtype(0.7), dtype(0.05)
    w_row = w.copy()
    want = I.lanes_dot_step(w_row, 5, v, 3, m, a, lr)
    w_pieces = w.copy()
    carry = np.full(2 * LANES, np.nan, dtype)  # only lanes a piece left may be read
    start = 0
    for k, width in enumerate(pieces):
        last = k == len(pieces) - 1
        got = step(w_pieces, 5 + start, v, 3 + start, width, a, lr, carry, LANES, k > 0,
                   not last)
        if not last:
            assert got == 0
        start += width
    assert _bits(dtype(got)) == _bits(dtype(want))
    np.testing.assert_array_equal(w_pieces.view(f"i{w.itemsize}"), w_row.view(f"i{w.itemsize}"))
    assert np.isnan(carry[:LANES]).all()  # nothing outside carry[co:co + LANES]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m", [0, LANES, 3 * LANES, 64 * LANES])
def test_lanes_dot_python_meaning_equals_the_compiled_lanes(dtype, m):
    rng = np.random.default_rng(600 + m)
    w = (rng.standard_normal(m + 7) * np.exp(rng.uniform(-20, 20, m + 7))).astype(dtype)
    v = rng.standard_normal(m + 2).astype(dtype)
    got, want = I.lanes_dot(w, 7, v, 2, m), _lanes_dot_compiled(w, 7, v, 2, m)
    assert _bits(dtype(got)) == _bits(dtype(want))
    assert type(got) in (float, dtype) and dtype(want) == want  # summed in the dtype
    # lr a float64 (Python float or numpy's) or the arrays' dtype, a any float
    for a, lr in ((0.37, 0.0123456789), (dtype(-1.7), np.float64(0.3)),
                  (dtype(0.9), dtype(0.05))):
        w_py, w_c = w.copy(), w.copy()
        got = I.lanes_dot_step(w_py, 7, v, 2, m, a, lr)
        want = _lanes_dot_step_compiled(w_c, 7, v, 2, m, a, lr)
        assert _bits(dtype(got)) == _bits(dtype(want)) == _bits(dtype(I.lanes_dot(w, 7, v,
                                                                                 2, m)))
        np.testing.assert_array_equal(w_py.view(f"i{w.itemsize}"), w_c.view(f"i{w.itemsize}"),
                                      err_msg=f"a={a!r} lr={lr!r}")
        np.testing.assert_array_equal(w_py[:7], w[:7])  # nothing before the row moved


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lanes_dot_adds_its_lanes_in_the_pairwise_tree(dtype):
    """Rows of products of one size, so that every add rounds: the compiled sum of the
    LANES lanes (float32: vector adds in the horizontal-add pattern) is the Python
    meaning's tree ((l0 + l1) + (l2 + l3)) + ..., bit for bit, row after row -- where
    the lanes added in another order would differ."""
    rng = np.random.default_rng(77)
    rows, m = 300, 2 * LANES
    w = rng.standard_normal(rows * m).astype(dtype)
    v = rng.standard_normal(m).astype(dtype)
    other_order = 0
    for r in range(rows):
        got, want = _lanes_dot_compiled(w, r * m, v, 0, m), I.lanes_dot(w, r * m, v, 0, m)
        assert _bits(dtype(got)) == _bits(dtype(want)), r
        lanes = [dtype(0)] * LANES
        for j in range(m):
            lanes[j % LANES] = I.fma(w[r * m + j], v[j], lanes[j % LANES])
        in_order = dtype(0)
        for lane in lanes:
            in_order = dtype(in_order + lane)
        other_order += _bits(dtype(in_order)) != _bits(dtype(want))
    assert other_order > rows // 10  # the test tells the orders apart


@njit
def _tail_dot_compiled(w, wo, v, vo, c, acc):
    return I.tail_dot(w, wo, v, vo, c, acc)


@njit
def _tail_dot_step_compiled(w, wo, v, vo, c, acc, a, lr):
    return I.tail_dot_step(w, wo, v, vo, c, acc, a, lr)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("c", list(range(LANES)))
def test_tail_dot_python_meaning_equals_the_compiled_tail(dtype, c):
    """A row's columns past its lanes (masked vector loads, products and steps, then lane
    by lane the new weight stored and the product added): every count 0 .. LANES - 1,
    each row ending at its array's end (the masked loads read nothing past it), against
    the Python meaning, bit for bit, and nothing outside the row written."""
    rng = np.random.default_rng(800 + c)
    w = (rng.standard_normal(c + 5) * np.exp(rng.uniform(-20, 20, c + 5))).astype(dtype)
    v = rng.standard_normal(c + 3).astype(dtype)
    for acc in (dtype(0.25), dtype(-0.0), dtype(3e4)):
        got = _tail_dot_compiled(w, uint64(5), v, uint64(3), uint64(c), acc)
        want = I.tail_dot(w, 5, v, 3, c, acc)
        assert _bits(dtype(got)) == _bits(dtype(want)) and dtype(got) == got
        # lr a float64 (Numba's typing of the scalar statement) or the arrays' dtype
        for a, lr in ((dtype(0.37), 0.0123456789), (dtype(-1.7), dtype(0.05))):
            w_py, w_c = w.copy(), w.copy()
            got = _tail_dot_step_compiled(w_c, uint64(5), v, uint64(3), uint64(c), acc, a, lr)
            want = I.tail_dot_step(w_py, 5, v, 3, c, acc, a, lr)
            assert _bits(dtype(got)) == _bits(dtype(want))
            assert _bits(dtype(got)) == _bits(dtype(I.tail_dot(w, 5, v, 3, c, acc)))
            np.testing.assert_array_equal(w_c.view(f"i{w.itemsize}"),
                                          w_py.view(f"i{w.itemsize}"))
            np.testing.assert_array_equal(w_c[:5], w[:5])  # nothing before the row moved


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 2, 9, LANES - 1, LANES + 3])
def test_row_dot_of_signed_zeros_is_the_left_to_right_sum(dtype, n):
    """A row shorter than the lanes starts its tail from -0.0, which must leave the first
    product's sign as it is: products all -0.0 sum to -0.0 and all +0.0 to +0.0, as
    the plain left-to-right sum gives (a start from +0.0 would turn the first into
    +0.0)."""
    v = np.ones(n, dtype)
    for sign in (-1, 1):
        w = np.full(n, sign * 0.0, dtype)
        got = _dot(w, 0, v, 0, n)
        assert got == 0 and np.signbit(got) == (sign < 0 and n < LANES)
        w_step = w.copy()
        assert _bits(dtype(_dot_step(w_step, 0, v, 0, n, dtype(0.5), dtype(0.1)))) == \
            _bits(dtype(got))


@njit
def _through_borrowed_views(work, a, x):
    """What a training entry does with its arguments (loops.py): take them as borrowed
    views, then write through them in a loop."""
    work, a = I.borrowed((work, a))
    for s in range(x.shape[0]):
        work.acts[s] = x[s]
        work.deltas[s] = 2.0 * x[s]
    a[1, 2] = -1.0
    return work.acts[0], work.a_off.shape[0], a.shape, a.strides, a[2, 3]


@pytest.mark.parametrize("order", ["C", "F"])
def test_borrowed_views_are_the_arrays_without_a_reference_count(order):
    work = make_work(np.array([6, 2, 1]), 12, 368, 360, np.float64, False)
    a = np.array(np.arange(12.0).reshape(3, 4), order=order)
    x = np.random.default_rng(0).random(360)
    first, n_off, shape, strides, last = _through_borrowed_views(work, a, x)
    # the same memory: the writes reach the arrays, inside a namedtuple too
    assert np.array_equal(work.acts[:360], x) and np.array_equal(work.deltas[:360], 2 * x)
    assert first == x[0] and n_off == 4 and a[1, 2] == -1.0
    assert shape == a.shape and strides == a.strides and last == a[2, 3]
    values = (work, a, None, 3)
    assert I.borrowed(values) is values
