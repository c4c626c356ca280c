"""The vectorizable exp and sigmoid (kernels/rules.py) against libm and a higher-precision
reference, and the row loops (kernels/batch.py) against the scalar rules.

The float64 exp is held within 1 ULP of libm; the sigmoid built on it is checked against
1 / (1 + exp(-z)) evaluated in long double where the platform has one.  The float32
sigmoid (computed in float32) against the float64 one rounded to float32.
"""
import math

import numpy as np
import pytest
from numba import njit

from fastbp.kernels import batch as B
from fastbp.kernels import rules as R
from fastbp.kernels.intrinsics import float64_bits, float64_from_bits, fma
from reference import python_of

RNG = np.random.default_rng(0)
ARGS = np.concatenate([
    RNG.uniform(-708.0, 709.0, 20_000),  # the whole clamped range
    RNG.uniform(-708.3964185322641, -708.0, 2_000),  # the sigmoid normal, down to the clamp
    RNG.uniform(-40.0, 40.0, 20_000),    # where sigmoid is neither 0 nor 1
    RNG.normal(0.0, 1.0, 20_000),
    np.array([0.0, -0.0, 1e-300, -1e-300, 0.5 * math.log(2), -0.5 * math.log(2), 700.0, -700.0,
              -708.0, -708.2, -708.39, -708.3964185322641]),
])


def _ulps(got, ref):
    return np.abs(got - ref) / np.spacing(np.abs(ref))


@njit
def _exp_of_nonpositive(x):
    """exp(x) for x <= 0 as rules.sigmoid builds it (its docstring): Cody-Waite reduction
    with rules' constants, rules.exp_reduced, and 2**k from its exponent bits."""
    out = np.empty_like(x)
    for i in range(x.size):
        xs = max(x[i], R.EXP_MIN_ARG)
        k = math.floor(xs * R.INV_LN2 + 0.5)
        r = (xs - k * R.LN2_HI) - k * R.LN2_LO
        out[i] = R.exp_reduced(r) * float64_from_bits((np.int64(k) + 1023) << 52)
    return out


@njit
def _powers_of_two_from_the_magic_bits(ks):
    out = np.empty_like(ks)
    for i in range(ks.size):
        out[i] = float64_from_bits(float64_bits(ks[i] + R.EXP_BIAS_MAGIC) << 52)
    return out


def test_sigmoid_builds_two_to_the_k_from_the_bits_of_k_plus_a_magic_number():
    """rules.sigmoid64 takes 2**k's exponent bits from the float k + EXP_BIAS_MAGIC instead
    of converting k to an integer: for every k its clamp allows, -1022 .. 0, that is
    exactly 2**k, compiled and as Python (where the int64 shift wraps as compiled)."""
    ks = np.arange(-1022.0, 1.0)
    want = np.array([2.0 ** int(k) for k in ks])
    assert np.array_equal(_powers_of_two_from_the_magic_bits(ks), want)
    assert np.array_equal(python_of(_powers_of_two_from_the_magic_bits)(ks), want)
    # the clamp keeps k in that range: k of EXP_MIN_ARG is -1022
    assert math.floor(R.EXP_MIN_ARG * R.INV_LN2 + 0.5) == -1022


def test_exp_is_within_one_ulp_of_libm():
    """The sigmoid's exp, over the arguments it takes: -|z| clamped to EXP_MIN_ARG."""
    x = -np.abs(ARGS)
    x = x[x >= R.EXP_MIN_ARG]
    ref = np.array([math.exp(v) for v in x])
    assert _ulps(_exp_of_nonpositive(x), ref).max() <= 1.0


@njit
def _sigmoids(z):
    out = np.empty_like(z)
    for i in range(z.size):
        out[i] = R.sigmoid(z[i])
    return out


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= 52,
                    reason="no long double wider than float64 on this platform")
def test_sigmoid_is_within_two_ulp_of_a_long_double_reference():
    wide = ARGS.astype(np.longdouble)
    ref = (1 / (1 + np.exp(-wide))).astype(np.float64)
    assert _ulps(_sigmoids(ARGS), ref).max() <= 2.0
    # libm's variant (per-sample layers narrower than rules.NARROW_UNITS) as well
    libm = np.array([R.sigmoid_libm(v) for v in ARGS])
    assert _ulps(libm, ref).max() <= 2.0


@njit
def _tanhs(z):
    out = np.empty_like(z)
    for i in range(z.size):
        out[i] = R.tanh(z[i])
    return out


TANH_ARGS = np.concatenate([
    RNG.uniform(-1.0, 1.0, 20_000), RNG.uniform(-0.2, 0.2, 20_000),
    RNG.uniform(-25.0, 25.0, 20_000),
    np.exp(RNG.uniform(-745.0, 6.0, 20_000)) * RNG.choice([-1.0, 1.0], 20_000),
    # where the reduction's k changes (ln2 / 4, 3 ln2 / 4), the identity's bound, the
    # largest and smallest values
    [0.17328679513998632, 0.5198603854199589, 2.0 ** -27, 2.0 ** -27 * (1 - 2 ** -52),
     19.0, 400.0, 1e308, 5e-324, -5e-324]])


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= 52,
                    reason="no long double wider than float64 on this platform")
def test_tanh_is_within_three_ulp_of_a_long_double_reference():
    """rules.tanh64 (vectorizable, on sigmoid64's exp reduction) against tanh in long
    double, rounded; and its Python meaning is the same function, value for value."""
    ref = np.tanh(TANH_ARGS.astype(np.longdouble)).astype(np.float64)
    got = _tanhs(TANH_ARGS)
    nonzero = ref != 0
    assert _ulps(got[nonzero], ref[nonzero]).max() <= 3.0
    np.testing.assert_array_equal(got[~nonzero], ref[~nonzero])
    few = TANH_ARGS[::997]
    assert [python_of(R.tanh64)(v) for v in few] == list(_tanhs(few))


def test_tanh_keeps_the_signs_of_zeros_and_saturates():
    z = np.array([0.0, -0.0, 1e-310, -1e-310, np.inf, -np.inf, 800.0, -1e308, np.nan])
    with np.errstate(over="ignore"):  # -1e308 is -inf in float32, 1e-310 a signed 0
        z32 = z.astype(np.float32)
    for got in (_tanhs(z), _tanhs(z32)):
        np.testing.assert_array_equal(np.signbit(got[:4]), [False, True, False, True])
        assert got[2] == z[2].astype(got.dtype) and got[3] == z[3].astype(got.dtype)
        np.testing.assert_array_equal(got[4:8], [1.0, -1.0, 1.0, -1.0])
        assert np.isnan(got[8])


ARGS32 = np.concatenate([
    RNG.uniform(-87.33, 100.0, 20_000).astype(np.float32),  # exp32's whole range
    RNG.normal(0.0, 5.0, 20_000).astype(np.float32),
    np.array([0.0, -0.0, 1e-30, -1e-30, 0.34657359, -0.34657359, 17.0, -17.0, -87.0,
              -87.33, -88.0, -103.0, 88.0], dtype=np.float32),
    # every float32 from -87.33 down to ln(2**-126) = -87.33654..., where the sigmoid is
    # still a normal float32
    np.arange(np.float32(-87.33).view(np.int32),
              np.float32(-87.33654022216797).view(np.int32) + 1,
              dtype=np.int32).view(np.float32),
])


def _ulps32(got, ref):
    return np.abs(got.astype(np.float64) - ref.astype(np.float64)) \
        / np.spacing(np.abs(ref)).astype(np.float64)


@njit
def _sigmoid_of(z):
    return R.sigmoid(z)


def _sigmoid_type(z):
    """The type Numba infers for rules.sigmoid of z (as Python: the value's type)."""
    value = _sigmoid_of(z)
    if not hasattr(_sigmoid_of, "nopython_signatures"):  # NUMBA_DISABLE_JIT
        return type(value).__name__
    sig = [s for s in _sigmoid_of.nopython_signatures if s.args[0].name == type(z).__name__]
    return sig[0].return_type.name


def test_float32_sigmoid_computes_in_float32_within_two_ulp():
    """A float32 model's sigmoid stays in float32 (rules.sigmoid32: twice the SIMD lanes)
    and within 2 float32 ULP of the exact value, where it is a normal number."""
    got = _sigmoids(ARGS32)
    # computed in float32, not float64 rounded on the store: the rule's own type
    assert _sigmoid_type(np.float32(0.5)) == "float32"
    ref = _sigmoids(ARGS32.astype(np.float64)).astype(np.float32)  # within 2 float64 ULP
    normal = ref >= np.finfo(np.float32).tiny
    assert _ulps32(got[normal], ref[normal]).max() <= 2.0
    # below the clamp (exp of it is the smallest normal, 1.1754997e-38) it stays there
    assert np.all(got[~normal] >= np.finfo(np.float32).tiny) and np.all(got[~normal] < 1.2e-38)
    # the Python meaning (NUMBA_DISABLE_JIT) is the same function, value for value
    few = ARGS32[::997]
    assert [python_of(R.sigmoid32)(v) for v in few] == list(_sigmoids(few))


@njit
def _libm_rules(z, sig, ex, th):
    for i in range(z.shape[0]):
        sig[i] = R.sigmoid_libm(z[i])
        ex[i] = R.exp_output(z[i])
        th[i] = R.tanh(z[i])


@njit
def _libm_rule_values(z):
    return R.sigmoid_libm(z), R.exp_output(z), R.tanh(z)


def test_float32_libm_rules_compute_in_float32_within_two_ulp():
    """The float32 forms of the rules on libm's expf -- the per-sample sigmoid of narrow
    layers (sigmoid_libm), the exp output (poisson's) -- and tanh (rules.tanh32): float32
    values, within 2 float32 ULP of the float64 functions rounded to float32 (expf: 1)."""
    z = ARGS32[np.abs(ARGS32) < 88.0]  # exp32 overflows past ~88.7
    sig, ex, th = (np.empty_like(z) for _ in range(3))
    _libm_rules(z, sig, ex, th)
    _libm_rule_values(np.float32(0.5))
    if hasattr(_libm_rule_values, "nopython_signatures"):  # compiled: the rules' own types
        types = _libm_rule_values.nopython_signatures[0].return_type.types
        assert [t.name for t in types] == ["float32"] * 3
    wide = z.astype(np.float64)
    for got, ref, ulps in ((sig, 1.0 / (1.0 + np.exp(-wide)), 2.0),
                           (ex, np.exp(wide), 1.0), (th, np.tanh(wide), 2.0)):
        ref = ref.astype(np.float32)
        normal = np.abs(ref) >= np.finfo(np.float32).tiny
        assert _ulps32(got[normal], ref[normal]).max() <= ulps


def test_float32_sigmoid_saturates_without_overflow():
    z = np.array([-3e38, -200.0, 200.0, 3e38, np.inf, -np.inf], dtype=np.float32)
    sig = _sigmoids(z)
    assert sig.dtype == np.float32
    tiny = np.finfo(np.float32).tiny  # below ln(tiny) the smallest normal (README)
    assert np.all(sig[:2] < 1.2e-38) and np.all(sig[:2] >= tiny)
    assert np.all(sig[2:5] == 1.0) and tiny <= sig[5] < 1.2e-38


@njit
def _activate_rows(z, code):
    B.activate_rows(z, code)


@njit
def _derivative_rows(delta, a, code):
    B.derivative_rows(delta, a, code)


def test_sigmoid_saturates_without_overflow():
    z = np.array([-1e308, -800.0, 800.0, 1e308, np.inf, -np.inf])
    for sig in (_sigmoids(z), np.array([R.sigmoid_libm(v) for v in z])):
        assert np.all(sig[:2] < 1e-300) and np.all(sig[:2] >= 0)
        assert np.all(sig[2:4] == 1.0) and sig[4] == 1.0 and sig[5] < 1e-300
    rows = z.copy()
    _activate_rows(rows, R.SIGMOID)
    np.testing.assert_array_equal(rows, _sigmoids(z))


@njit
def _scalar_activations(z, code):
    out = np.empty_like(z)
    for i in range(z.size):
        out[i] = R.activate(z[i], code)
    return out


@njit
def _scalar_derivatives(d, a, code):
    out = np.empty_like(d)
    for i in range(d.size):
        out[i] = R.times_derivative(d[i], a[i], code)
    return out


@pytest.mark.parametrize("code", [R.IDENTITY, R.SIGMOID, R.RELU, R.TANH])
def test_scalar_rules_equal_the_row_loops_bit_for_bit(code):
    """The generated kernels and the per-sample path call rules.activate /
    times_derivative one value at a time, the batch passes batch.activate_rows /
    derivative_rows over vectorized rows: the same numbers."""
    rows = ARGS.copy()
    _activate_rows(rows, code)
    np.testing.assert_array_equal(_scalar_activations(ARGS, code), rows)
    if code == R.SIGMOID:
        np.testing.assert_array_equal(rows, _sigmoids(ARGS))
    d = RNG.normal(size=ARGS.size)
    back = d.copy()
    _derivative_rows(back, rows, code)
    np.testing.assert_array_equal(_scalar_derivatives(d, rows, code), back)


@njit
def _fma(a, b, c):
    return fma(a, b, c)


@njit
def _from_bits(b):
    return float64_from_bits(b)


def test_fma_rounds_once():
    a = 1.0 + 2.0 ** -30
    b = 1.0 - 2.0 ** -30
    assert a * b - 1.0 == 0.0            # the product alone rounds to 1
    assert _fma(a, b, -1.0) == -2.0 ** -60  # fused: the exact a * b - 1


def test_float64_from_bits_reinterprets():
    assert _from_bits(np.int64(1023) << 52) == 1.0
    assert _from_bits((np.int64(1023) + 10) << 52) == 1024.0
    assert _from_bits(np.int64(0)) == 0.0
