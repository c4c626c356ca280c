"""Generated kernels (kernels/generate.py) against the general entries: bit for bit.

Every fit here runs twice from the same start through MLP.fit, once with the
dispatcher's policy "fastest" (the architecture's generated kernel wherever one applies)
and once with "general" (the general entries of kernels/loops.py, never a generated
kernel), and must give identical parameters, histories and stopping reasons -- the
generated kernel calls the same rules in the same order, so anything short of equality
is a bug.  The general entries themselves are checked against the numpy reference
elsewhere (test_training.py).

Each architecture compiles kernels of its own (seconds), so the cases share a few
architectures and vary what is decided at run time (optimizers, schedules, weights,
sample counts, recording).
"""
import hashlib
import os
import shutil
import sys
import warnings

import numba
import numpy as np
import pytest

import fastbp
import fastbp.kernels as K
from fastbp import _config as C
from fastbp import _dispatch as D
from fastbp._fit import EVAL_CAP
from fastbp._many import ManyFit
from fastbp.kernels import config
from fastbp.kernels.config import PRODUCT_MIN_WORK
from fastbp.kernels import generate as GEN
from fastbp.kernels import lanes as LN
from fastbp.kernels.intrinsics import LANES as ROW_LANES

# (sizes, activation, loss, bias): a few architectures, covering every activation, the
# generated losses, with and without biases, one and several outputs
ARCHS = {
    "xor": ((2, 4, 4, 1), "sigmoid", "sse", True),
    "regression": ((1, 10, 1), ["relu", "identity"], "mse", True),
    "admissions": ((6, 2, 1), "sigmoid", "half_mse", False),
    "multi": ((3, 5, 2), ["tanh", "sigmoid"], "bce", True),
    # a hidden layer wide enough for the per-sample kernels' vectorized sigmoid
    # (rules.NARROW_UNITS), an output layer narrow enough for libm's
    "wide-sigmoid": ((2, 9, 3), "sigmoid", "mse", True),
}


@pytest.fixture
def generated(monkeypatch):
    """Generated kernels switched on (FASTBP_GENERATE=0 turns them off)."""
    monkeypatch.setattr(GEN, "ENABLED", True)


def _fit_both(monkeypatch, arch, n, data_seed=0, dtype="float64", **fit):
    """The fit on the generated kernel, then on the general entry: [(params, history,
    model)] in that order; the first must really have run a generated kernel."""
    sizes, act, loss, bias = ARCHS[arch]
    rng = np.random.default_rng(data_seed)
    X = rng.normal(size=(n, sizes[0]))
    y = rng.uniform(0.05, 0.95, size=(n, sizes[-1]))
    results = []
    for policy in ("fastest", "general"):
        monkeypatch.setattr(D, "POLICY", policy)
        model = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias, seed=data_seed,
                           dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hist = model.fit(X, y, **fit)
        results.append((model.params.copy(), hist, model))
    assert "generated for" in results[0][1].kernel, results[0][1].kernel
    assert f"({dtype})" in results[0][1].kernel, results[0][1].kernel
    assert "generated" not in results[1][1].kernel, results[1][1].kernel
    return results


def _assert_identical(results):
    (p1, h1, _), (p2, h2, _) = results
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(h1.loss, h2.loss)
    assert h1.epochs == h2.epochs and h1.stopped == h2.stopped


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("n", [2, 5, 8, 21])
def test_plain_sgd_is_bit_identical(generated, monkeypatch, arch, n):
    results = _fit_both(monkeypatch, arch, n, epochs=60, lr=0.3)
    _assert_identical(results)
    sizes, act, loss, bias = ARCHS[arch]
    start = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias, seed=0).params
    assert not np.array_equal(results[0][0], start)  # it trained


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("options", [
    dict(optimizer="adam", lr=0.05, l2=1e-3, schedule="cosine"),
    dict(optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True, schedule="invscaling"),
    dict(optimizer="sgd", lr=0.2, momentum=0.5, l2=0.01, schedule="step", step_size=7,
         epoch_loss="sample_mean", batch_size=13),
    dict(lr=0.1, record_every=7),
])
def test_optimizers_and_schedules_are_bit_identical(generated, monkeypatch, arch, options):
    _assert_identical(_fit_both(monkeypatch, arch, 13, data_seed=1, epochs=50, **options))


@pytest.mark.parametrize("arch", ["multi", "xor"])
def test_sample_weights_are_bit_identical(generated, monkeypatch, arch):
    w = np.random.default_rng(3).uniform(0.0, 2.0, size=11)
    _assert_identical(_fit_both(monkeypatch, arch, 11, data_seed=2, epochs=40, lr=0.2,
                                sample_weight=w))


@pytest.mark.parametrize("dtype, big", [("float64", 1e300), ("float32", 1e30)])
def test_padded_samples_compute_sample_0s_values(generated, monkeypatch, dtype, big):
    """The full-batch kernel's rows are padded past n (generate.padded) and its gradient
    sums run on over the padding, whose deltas are zeros: padded samples are copies of
    sample 0, so their activations are finite wherever the real ones are.  Here a zero
    input would overflow the output (big * 1e10), and 0 * inf would make the gradient
    NaN; the five real samples give finite values, the general entry's bits."""
    rng = np.random.default_rng(11)
    W1 = rng.uniform(0.1, 0.5, size=(1, 10))
    W1[0, 0] = -big  # unit 0: relu(-big * 1 + big) = 0 on the data, big at x = 0
    b1 = np.zeros(10)
    b1[0] = big
    W2 = rng.uniform(0.1, 0.5, size=(10, 1))
    W2[0, 0] = 1e10
    X, y = np.ones((5, 1)), np.full((5, 1), 0.5)
    results = []
    for policy in ("fastest", "general"):
        monkeypatch.setattr(D, "POLICY", policy)
        model = fastbp.MLP.from_weights([W1, W2], [b1, np.zeros(1)],
                                        activation=["relu", "identity"], loss="mse",
                                        dtype=dtype)
        hist = model.fit(X, y, epochs=3, lr=1e-3)
        results.append((model.params.copy(), hist, model))
    assert "generated for" in results[0][1].kernel, results[0][1].kernel
    assert np.all(np.isfinite(results[0][0])) and np.all(np.isfinite(results[0][1].loss))
    _assert_identical(results)


@pytest.mark.parametrize("arch", ["xor", "regression"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rows_of_whole_pages_get_a_line_more(generated, monkeypatch, arch, dtype):
    """A full-batch row of 4 KB (512 float64 or 1024 float32 samples, or a multiple) is
    lengthened by a cache line (generate.ALIAS_BYTES), so that the rows do not share
    cache sets; the extra samples are padding like the rest (copies of sample 0, deltas
    zero): the general entry's bits, for a one-loop network (xor) and a loops one."""
    itemsize = np.dtype(dtype).itemsize
    page, line = 4096 // itemsize, 64 // itemsize
    pad = GEN.PAD_BYTES // itemsize
    assert GEN.padded(page, dtype) == page + line
    assert GEN.padded(page - 1, dtype) == page + line  # rounded up to the page first
    assert GEN.padded(3 * page, dtype) == 3 * page + line
    assert GEN.padded(page + 1, dtype) == page + pad
    assert GEN.padded(page // 2, dtype) == page // 2  # 2 KB rows stay as they are
    _assert_identical(_fit_both(monkeypatch, arch, page, data_seed=6, dtype=dtype,
                                epochs=4, lr=0.05))


# blocked full-batch kernels (generate.BLOCKED_MIN_BLOCKS blocks or more, float32
# BLOCKED_MIN_BLOCKS_32): one case per
# way a block's rows are written and summed -- the one-loop backward pass (xor), the
# loops (regression), bce's z_out rows and tanh (multi), sample weights, the stateful
# rules -- in both dtypes, with a last block shorter than the rest
BLOCKED_CASES = [
    ("xor", "float64", dict(epochs=4, lr=0.1)),
    ("regression", "float32", dict(epochs=4, lr=0.05)),
    ("multi", "float64", dict(epochs=3, lr=0.2, sample_weight="uniform")),
    ("multi", "float32", dict(epochs=3, lr=0.05, optimizer="adam", l2=1e-3)),
    ("admissions", "float32", dict(epochs=3, lr=0.1, momentum=0.9)),
]


@pytest.mark.parametrize("arch, dtype, options", BLOCKED_CASES,
                         ids=[f"{a}-{d}" for a, d, _ in BLOCKED_CASES])
def test_blocked_full_batch_is_bit_identical(generated, monkeypatch, arch, dtype, options):
    sizes, act, loss, bias = ARCHS[arch]
    model = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias)
    codes = (tuple(model._act_codes.tolist()), model._loss_code)
    block = GEN.block_samples(GEN.pass_row_count(sizes, model._loss_code), dtype == "float32")
    blocks = GEN.BLOCKED_MIN_BLOCKS_32 if dtype == "float32" else GEN.BLOCKED_MIN_BLOCKS
    n = blocks * block + 37  # a short last block
    for samples, kind in ((n, "full_blocked"), (block, "full")):
        assert GEN.kind_for(sizes, *codes, "full", "plain", False, dtype, samples,
                            D.PRODUCT_MIN_WORK) == kind
    options = dict(options)
    if options.get("sample_weight") == "uniform":
        options["sample_weight"] = np.random.default_rng(8).uniform(0.0, 2.0, size=n)
    _assert_identical(_fit_both(monkeypatch, arch, n, data_seed=9, dtype=dtype, **options))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sums_in_ranges_are_dot4_groups_sums(dtype):
    """intrinsics.dot4_group_range over [0, b1), [b1, b2), ... [bm, n) -- compiled and
    as Python -- gives rules.dot4_group's sums over n samples bit for bit, plain sums
    (y None) among them, whatever the ranges (empty ones past n too)."""
    from numba import njit

    from fastbp.kernels.intrinsics import dot4_group_range
    from fastbp.kernels.rules import dot4_group

    @njit
    def whole(out, x0, x1, y0, n):
        dot4_group(out, 0, (x0, x1, x0), (y0, None, x1), n)

    @njit
    def pieces(out, x0, x1, y0, n, P, block, chains):
        for b0 in range(0, P, block):
            b1 = min(b0 + block, P)
            stop = min(b1, n)
            dot4_group_range(out, 0, (x0, x1, x0), (y0, None, x1), min(b0, stop), stop,
                             chains, b1 == P)

    rng = np.random.default_rng(12)
    width = 8 if dtype == np.float32 else 4
    for n in (1, 5, 8, 37, 100):
        arrays = [rng.normal(size=n + 16).astype(dtype) for _ in range(3)]
        want = np.zeros(3, dtype)
        whole(want, *arrays, n)
        for block in (8, 16, 48):
            for run in (pieces, pieces.py_func):
                got = np.full(3, np.nan, dtype)
                run(got, *arrays, n, n + 11, block, np.full(3 * width, np.nan, dtype))
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("options", [
    dict(lr=0.05),
    dict(lr=0.05, shuffle=True, seed=7, schedule="invscaling", record_every=3),
])
def test_per_sample_sgd_is_bit_identical(generated, monkeypatch, arch, options):
    results = _fit_both(monkeypatch, arch, 19, data_seed=5, epochs=20, batch_size=1, **options)
    _assert_identical(results)


# float32: the generated code keeps in locals what the general kernels store in float32
# arrays, and rounds each value where they store it (generate._Rounding).  One case per
# way a value reaches a local: activations (sigmoid, tanh, relu; libm's and the
# polynomial's sigmoid), output deltas (mse/sse/half_mse, bce combined), sample weights,
# the plain steps of per-sample SGD, the stateful rules' separate update.
F32_CASES = [
    ("xor", dict(epochs=60, lr=0.3), 21),
    ("multi", dict(epochs=60, lr=0.3), 21),
    ("regression", dict(epochs=60, lr=0.05), 5),
    ("multi", dict(epochs=40, lr=0.2, sample_weight=np.linspace(0.1, 2.0, 11)), 11),
    ("regression", dict(epochs=50, optimizer="adam", lr=0.05, l2=1e-3, schedule="cosine"),
     13),
    ("admissions", dict(epochs=20, lr=0.05, batch_size=1), 19),
    ("wide-sigmoid", dict(epochs=20, lr=0.05, batch_size=1, shuffle=True, seed=7), 19),
    ("multi", dict(epochs=20, lr=0.05, batch_size=1,
                   sample_weight=np.linspace(0.1, 2.0, 11)), 11),
]


@pytest.mark.parametrize("arch, options, n", F32_CASES,
                         ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(F32_CASES)])
def test_float32_is_bit_identical(generated, monkeypatch, arch, options, n):
    results = _fit_both(monkeypatch, arch, n, data_seed=4, dtype="float32", **options)
    _assert_identical(results)
    assert results[0][0].dtype == np.float32
    sizes, act, loss, bias = ARCHS[arch]
    start = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias, seed=4,
                       dtype="float32").params
    assert not np.array_equal(results[0][0], start)  # it trained


def test_float32_kernels_round_where_the_general_kernels_store():
    """The float32 source differs from the float64 one only by those roundings."""
    f64 = GEN.source_sample((6, 2, 1), (1, 1), False, 1, True)
    f32 = GEN.source_sample((6, 2, 1), (1, 1), False, 1, True, "float32")
    assert "T(" not in f64 and "T = np.float32" in f32
    assert "h1_0 = T(sigmoid_libm(z0_0))" in f32
    assert "w0_0_0 = T(plain_step(w0_0_0, h0_0 * g1_0, lr))" in f32
    assert "g2_0 = T(sigmoid_back(output_error(h2_0, t0, scale), h2_0)) * ws" in f32
    assert f32.replace("T(", "(").count("\n") == f64.count("\n") + 1
    # rows padded to whole vectors of the machine
    if config.VECTOR_BYTES == 64:
        assert GEN.padded(21, "float64") == 24 and GEN.padded(21, "float32") == 32
    else:
        assert GEN.padded(21, "float64") == 24 and GEN.padded(21, "float32") == 24
        assert GEN.padded(100, "float64") == 100 and GEN.padded(100, "float32") == 104


# Networks too large for the unrolled per-sample kernel: they get sample.py's epoch with
# constant sizes ("sample_loops"); rows of 17 and 33 units take the SIMD lanes and
# their remainder, rows of 2 the scalar sums.
LOOP_ARCHS = {
    "loops-tanh": ((3, 20, 17, 2), ["tanh", "sigmoid", "identity"], "mse", True),
    "loops-relu-bce": ((4, 33, 2), ["relu", "sigmoid"], "bce", False),
}


def _fit_loops_both(monkeypatch, arch, n, data_seed=0, **fit):
    sizes, act, loss, bias = LOOP_ARCHS[arch]
    model = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias)
    assert GEN.kind_for(sizes, model._act_codes, model._loss_code, "sample", "plain", False,
                        "float64", n, K.PRODUCT_MIN_WORK) == "sample_loops"
    monkeypatch.setitem(ARCHS, arch, LOOP_ARCHS[arch])
    return _fit_both(monkeypatch, arch, n, data_seed, batch_size=1, **fit)


@pytest.mark.parametrize("arch", sorted(LOOP_ARCHS))
@pytest.mark.parametrize("options", [
    dict(lr=0.05),
    dict(lr=0.05, shuffle=True, seed=7, schedule="invscaling", record_every=3),
    dict(optimizer="adam", lr=0.01, l2=1e-3, schedule="cosine"),
    dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, schedule="step",
         step_size=3),
])
def test_per_sample_loops_kernel_is_bit_identical(generated, monkeypatch, arch, options):
    results = _fit_loops_both(monkeypatch, arch, 23, data_seed=8, epochs=12, **options)
    _assert_identical(results)
    sizes, act, loss, bias = LOOP_ARCHS[arch]
    model = results[0][2]
    start = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias, seed=8).params
    assert not np.array_equal(model.params, start)  # it trained
    rule = "stateful" if "optimizer" in options else "plain"
    key = GEN.key("sample_loops", sizes, model._act_codes, bias, model._loss_code, False,
                  rule)
    assert D.is_loaded(key)  # and the generated kernel ran


def test_per_sample_loops_kernel_in_float32_is_bit_identical(generated, monkeypatch):
    results = _fit_loops_both(monkeypatch, "loops-relu-bce", 23, data_seed=8, epochs=12,
                              lr=0.05, dtype="float32")
    _assert_identical(results)
    assert results[0][0].dtype == np.float32


def _isolated_registry(monkeypatch, tmp_path):
    """The dispatcher's registry as in a fresh process with an empty cache: nothing
    compiled, no work seen (the kernels themselves still load from Numba's cache)."""
    monkeypatch.setattr(D, "_loaded", set())
    monkeypatch.setattr(D, "_on_disk", set())
    monkeypatch.setattr(D, "_absent", {})
    monkeypatch.setattr(D, "_plans", {})
    monkeypatch.setattr(D, "_work_seen", {})
    monkeypatch.setattr(D, "_spared", set())
    monkeypatch.setattr(D, "_marker", lambda key: str(
        tmp_path / "compiled" / hashlib.sha256(repr(key).encode()).hexdigest()))


# As Python (NUMBA_DISABLE_JIT) nothing compiles: the dispatcher has no compile time to
# weigh, and counts every kernel as compiled.
compiled_only = pytest.mark.skipif(numba.config.DISABLE_JIT,
                                   reason="as Python there is no compile time to weigh")


@compiled_only
def test_short_fits_of_one_architecture_move_to_the_generated_kernel_together(
        monkeypatch, tmp_path):
    """_dispatch._worth: fits too short to pay for compiling count together; once the
    work they would have saved reaches the compile time, the architecture's kernel is
    generated."""
    monkeypatch.setattr(GEN, "ENABLED", True)
    monkeypatch.setattr(D, "POLICY", "auto")
    _isolated_registry(monkeypatch, tmp_path)
    monkeypatch.setattr(D, "GENERAL_COMPILE_SECONDS", 0.0)  # the generated costs its own
    sizes, act, loss, bias = ARCHS["admissions"]
    X = np.random.default_rng(4).normal(size=(40, sizes[0]))
    y = np.random.default_rng(5).uniform(0.1, 0.9, size=(40, sizes[-1]))
    model = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias, seed=1)
    key = GEN.key("sample", sizes, model._act_codes, bias, model._loss_code, False, "plain")
    seen = []
    for i in range(4):
        h = model.fit(X, y, epochs=3, lr=0.05, batch_size=1)
        seen.append("generated for" in h.kernel)
        if i == 0:  # compiling now costs what 2.5 such fits save
            saved = D._work_seen[key]
            monkeypatch.setattr(D, "GENERATED_COMPILE_SECONDS", 2.5 * saved)
    assert seen == [False, False, True, True]
    assert D.is_loaded(key)
    # a different architecture keeps its own count
    other = fastbp.MLP((6, 3, 1), activation=act, loss=loss, bias=bias, seed=1)
    h = other.fit(X, y, epochs=3, lr=0.05, batch_size=1)
    assert "generated" not in h.kernel
    assert not D.is_loaded(GEN.key("sample", (6, 3, 1), other._act_codes, bias,
                                   other._loss_code, False, "plain"))


def test_per_sample_loops_kernel_with_weights_and_divergence(generated, monkeypatch):
    w = np.random.default_rng(9).uniform(0.0, 2.0, size=21)
    _assert_identical(_fit_loops_both(monkeypatch, "loops-tanh", 21, data_seed=9, epochs=6,
                                      lr=0.1, shuffle=True, sample_weight=w))
    results = _fit_loops_both(monkeypatch, "loops-relu-bce", 21, data_seed=9, epochs=300,
                              lr=1e4, on_divergence="warn")
    _assert_identical(results)
    assert results[0][1].stopped == "diverged" and np.isfinite(results[0][0]).all()


def test_per_sample_sgd_with_weights_is_bit_identical(generated, monkeypatch):
    w = np.random.default_rng(6).uniform(0.0, 2.0, size=17)
    _assert_identical(_fit_both(monkeypatch, "multi", 17, data_seed=6, epochs=15, lr=0.1,
                                batch_size=1, shuffle=True, sample_weight=w))


@pytest.mark.parametrize("batch_size", [None, 1])
def test_divergence_is_handled_identically(generated, monkeypatch, batch_size):
    results = _fit_both(monkeypatch, "regression", 30, data_seed=4, epochs=400, lr=50.0,
                        batch_size=batch_size, on_divergence="warn")
    _assert_identical(results)
    assert results[0][1].stopped == "diverged"
    assert np.isfinite(results[0][0]).all()


def _planned(model, n, batch, shuffle=False, validating=False, epochs=10, **rule):
    """(generated kind or None, the plan's rule kind) of a fit, as the dispatcher plans it."""
    plan = D.plan_fit(model, n, batch, shuffle, C.build(0.1, epochs, **rule)[0], validating,
                      epochs)
    return (plan.key[1] if plan.key[0] == "generated" else None), plan.rule


def test_generated_kernel_is_used_only_where_it_applies(generated, monkeypatch):
    monkeypatch.setattr(D, "POLICY", "fastest")
    sizes, act, loss, bias = ARCHS["xor"]
    model = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias, seed=0)
    assert _planned(model, 21, 21) == ("full", "fused")
    assert _planned(model, 21, 21, optimizer="adam") == ("full", "stateful")
    assert _planned(model, 21, 21, shuffle=True) == (None, "fused")  # batches differ
    assert _planned(model, 21, 4) == (None, "fused")                 # mini-batch
    assert _planned(model, 21, 1) == ("sample", "plain")             # per-sample, plain
    # per-sample with momentum: not the unrolled kernel, sample.py's with constant sizes
    assert _planned(model, 21, 1, momentum=0.9) == ("sample_loops", "stateful")
    assert _planned(model, 21, 21, validating=True) == (None, "fused")  # validation data
    wide = fastbp.MLP([2, 64, 1], seed=0)
    assert _planned(wide, 21, 21)[0] is None  # too wide
    f32 = fastbp.MLP(sizes, activation=act, loss=loss, dtype="float32", seed=0)
    assert _planned(f32, 21, 21) == ("full", "fused")  # float32 steps as float64 does
    soft = fastbp.MLP([2, 4, 3], activation=["tanh", "softmax"], loss="cross_entropy")
    assert _planned(soft, 21, 21)[0] is None  # a loss the generator does not write
    # a layer whose products go to gemm at this batch: the loops' order is not its order
    gemm_net = fastbp.MLP([7, 30, 1], seed=0)
    assert 7 * 30 * 19 < K.PRODUCT_MIN_WORK <= 7 * 30 * 20
    assert _planned(gemm_net, 19, 19)[0] == "full"
    assert _planned(gemm_net, 20, 20)[0] is None
    monkeypatch.setattr(GEN, "ENABLED", False)  # what FASTBP_GENERATE=0 sets at import
    assert _planned(model, 21, 21)[0] is None


@compiled_only
def test_short_fits_do_not_compile_a_kernel(monkeypatch, tmp_path):
    monkeypatch.setattr(GEN, "ENABLED", True)
    _isolated_registry(monkeypatch, tmp_path)
    model = fastbp.MLP([2, 7, 1], seed=0)  # an architecture no other test uses
    monkeypatch.setattr(D, "POLICY", "general")
    general = D.plan_fit(model, 21, 21, False, C.build(0.1, 10)[0], False, 10)
    monkeypatch.setattr(D, "POLICY", "auto")
    # nothing compiled yet: the generated kernel costs less to compile than the general
    # entry, whatever the fit's length
    assert _planned(model, 21, 21, epochs=10)[0] == "full"
    D._loaded.add(general.key)  # the general entry compiled: a short fit stays there
    assert _planned(model, 21, 21, epochs=10)[0] is None
    # long enough to pay for compiling (compiled at its first call)
    assert _planned(model, 21, 21, epochs=10 ** 7)[0] == "full"


def test_source_is_written_to_the_cache_folder_and_rewritten_when_altered(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    text = GEN.source_full((2, 3, 1), (1, 1), True, 0, False, "plain")
    assert "def train(" in text and "def epoch_pass(" in text
    # imported already by another test of this process (from the default cache folder):
    # this test imports it afresh, and puts the other back after it
    name = "fastbp_generated_" + hashlib.sha256(text.encode()).hexdigest()[:20]
    monkeypatch.delitem(sys.modules, name, raising=False)
    module = GEN._import(text)
    path = module.__file__
    assert os.path.dirname(path) == os.path.join(str(tmp_path), "generated")
    with open(path, encoding="utf-8") as f:
        assert f.read() == text
    # a file altered on disk is replaced by what the generator writes
    with open(path, "w", encoding="utf-8") as f:
        f.write("raise RuntimeError('not ours')\n")
    del sys.modules[module.__name__]
    again = GEN._import(text)
    with open(again.__file__, encoding="utf-8") as f:
        assert f.read() == text


def test_generated_modules_follow_every_kernel_source(tmp_path, monkeypatch):
    """Numba's cache checks only a function's own file, so each generated module carries
    a digest of all kernels/*.py: a change to any of them (here: a copy of the package
    with a comment added to sample.py) gives every generated module a new text, and so a
    new file name and a fresh compilation."""
    digest = config.kernel_sources_digest()
    args = ((3, 20, 17, 2), (3, 1, 0), True, 0, False)
    for text in (GEN.source_full(*args, "plain"), GEN.source_sample(*args),
                 GEN.source_sample_loops(*args, "stateful")):
        assert text.splitlines()[0] == f"# fastbp.kernels sources {digest}"
    copy = tmp_path / "kernels"
    shutil.copytree(config.KERNELS_FOLDER, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert config.sources_digest(copy) == digest
    sample = copy / "sample.py"
    sample.write_text(sample.read_text() + "\n# edited\n")
    monkeypatch.setattr(config, "_sources_digest", config.sources_digest(copy))
    assert config.kernel_sources_digest() != digest
    edited = GEN.source_sample_loops(*args, "plain")
    monkeypatch.setattr(config, "_sources_digest", digest)
    assert edited != GEN.source_sample_loops(*args, "plain")
    assert edited.splitlines()[1:] == GEN.source_sample_loops(*args, "plain").splitlines()[1:]


def test_every_kernel_cache_is_stamped_with_every_kernel_source():
    """The cache of a function in kernels/*.py is stamped with the digest of all of them,
    not its own file's: gemm.py's tiles unit holds tiles.gemm_at's code, and after an
    edit of tiles.py alone Numba loaded the unit compiled before it (a fixed use after
    free came back that way).  Functions elsewhere keep Numba's own stamp."""
    from numba.core import caching

    from fastbp.kernels import gemm, loops, tiles
    gemm.unit_address("tiles", "float64")  # compiled or loaded: a cfunc
    functions = [loops.loss_and_gradient, tiles.tile_gemm,
                 gemm._units[("tiles", np.dtype("float64"))]]
    for function in functions:
        locator = function._cache._impl.locator
        assert isinstance(locator, config.KERNEL_LOCATORS), function
        assert locator.get_source_stamp() == config.kernel_sources_digest()

    @numba.njit(cache=True)
    def elsewhere(x):
        return x + 1

    locator = elsewhere._cache._impl.locator
    assert not isinstance(locator, config.KERNEL_LOCATORS)
    assert isinstance(locator, tuple(caching.CacheImpl._locator_classes))


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_ensemble_on_the_generated_kernel_equals_mlp_fit(generated, monkeypatch, n_jobs):
    """Ensemble.fit runs each model through the generated kernel on threads (full batch,
    n >= 16); every model must equal MLP.fit alone on the general entry -- including a
    diverging one."""
    sizes, act, loss, bias = ARCHS["regression"]
    rng = np.random.default_rng(8)
    X = rng.normal(size=(24, 1))
    y = rng.uniform(0.05, 0.95, size=(24, 1))
    lrs = [0.01, 0.05, 0.1, 50.0, 0.02]  # the fourth diverges
    monkeypatch.setattr(D, "POLICY", "fastest")
    ens = fastbp.Ensemble(sizes, len(lrs), activation=act, loss=loss, bias=bias, seed=3)
    start = ens.params.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hist = ens.fit(X, y, epochs=300, lr=lrs, record_every=7, n_jobs=n_jobs)
    assert ens.diverged.tolist() == [False, False, False, True, False]
    key = GEN.key("full", sizes, ens[0]._act_codes, bias, ens[0]._loss_code, False, "plain")
    assert D.is_loaded(key)
    monkeypatch.setattr(D, "POLICY", "general")
    for m, lr in enumerate(lrs):
        alone = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias)
        alone.params = start[m]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = alone.fit(X, y, epochs=300, lr=lr, record_every=7, on_divergence="warn")
        assert "generated" not in h.kernel
        np.testing.assert_array_equal(ens.params[m], alone.params)
        np.testing.assert_array_equal(hist.loss[m, :len(h.loss)], h.loss)


def test_ensemble_uses_the_generated_kernel_only_where_it_applies(generated, monkeypatch):
    """An Ensemble's job (fastbp/_many.py) plans each model's kernel as MLP.fit does, and
    trains full blocks of models in the lanes instead where the data are too few for a
    generated kernel's padded rows."""
    monkeypatch.setattr(D, "POLICY", "fastest")
    sizes, act, loss, bias = ARCHS["xor"]
    ens = fastbp.Ensemble(sizes, LN.LANES, activation=act, loss=loss, bias=bias, seed=0)

    def job(n, shuffle=False, batch=None):
        xt, yt = ens._data(np.zeros((n, sizes[0])), np.zeros((n, sizes[-1])))
        batches = np.full(ens.n_models, n if batch is None else batch)
        fit = ManyFit(ens, xt, yt, 10, np.full(ens.n_models, 0.1), batches,
                      np.full(ens.n_models, shuffle), 1, 1)
        (plan,) = fit.plans.values()
        return (plan.key[1] if plan.key[0] == "generated" else None), fit.lanes

    assert job(21) == ("full", False)
    assert job(21, shuffle=True) == (None, False)
    assert job(21, batch=5) == (None, False)
    assert job(8) == ("full", True)  # too few samples: the lanes


def test_per_sample_rows_of_the_simd_width_are_not_generated(generated):
    """The generated per-sample code sums back-propagated rows left to right, which is
    rules.row_dot's order only for rows shorter than its lanes: a wider network runs
    sample.py's own epoch instead ("sample_loops")."""
    codes = [K.SIGMOID] * 3
    small = (1, 1, ROW_LANES - 1, 1)
    wide = (1, 1, ROW_LANES, 1)
    for sizes, expected in ((small, "sample"), (wide, "sample_loops")):
        n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        assert n_params <= GEN.MAX_SAMPLE_PARAMS
        assert GEN.kind_for(sizes, codes, K.MSE, "sample", "plain", False, "float64", 21,
                            K.PRODUCT_MIN_WORK) == expected


@compiled_only
def test_a_sweep_over_shapes_compiles_one_generated_kernel_then_the_general_entry(
        monkeypatch, tmp_path):
    """Short fits of new architectures: the first is generated (its compile spares the
    general entry's), but a second shape weighs its own kernel's whole compile, which
    its short fit does not repay -- before, every shape of a sweep compiled a kernel of
    its own (1.5-2.2 s each) where one general entry would have served them all."""
    monkeypatch.setattr(GEN, "ENABLED", True)
    monkeypatch.setattr(D, "POLICY", "auto")
    _isolated_registry(monkeypatch, tmp_path)
    X = np.random.default_rng(4).normal(size=(21, 2))
    y = np.random.default_rng(5).uniform(0.1, 0.9, size=(21, 1))
    kernels = []
    for sizes in ([2, 4, 4, 1], [2, 3, 4, 1], [2, 5, 1]):
        h = fastbp.MLP(sizes, loss="sse", seed=0).fit(X, y, epochs=10, lr=0.1)
        kernels.append(h.kernel)
    assert "generated for 2-4-4-1" in kernels[0]
    assert all("generated" not in k for k in kernels[1:]), kernels


def _guarded_call(monkeypatch, model, X, y, lr, epoch0, epochs, record_every, generated):
    """One call of the full-batch plain-SGD kernel the dispatcher plans (the generated one
    or the general entry), guarded, from the model's parameters with backup holding
    them, as SingleFit calls it: (result, params, backup, history)."""
    from fastbp.kernels import options as O
    monkeypatch.setattr(GEN, "ENABLED", generated)
    monkeypatch.setattr(D, "POLICY", "fastest")
    n = X.shape[0]
    x, t = model._inputs(X), model._targets(y, n)
    rule = O.plain_rule(lr, epoch0 + epochs)
    plan = D.plan_fit(model, n, n, False, rule, False, epochs)
    assert (plan.key[0] == "generated") == generated, plan.key
    lay = model._layout
    net = D.make_net(lay, model._act_codes, model._loss_code, model.dtype, plan.gemm)
    work = O.make_work(lay.sizes_arr, lay.n_params, plan.cap, n, model.dtype,
                       model._keep_z, per_sample=False, gradient=plan.gradient,
                       passes=D.batch_passes(model.dtype) if plan.passes else None)
    params, backup = model.params.copy(), model.params.copy()
    r0 = -(-epoch0 // record_every)
    history = np.full(-(-(epoch0 + epochs) // record_every) - r0, np.nan)
    options = O.plain(net, O.Data(x, t, np.zeros(0)), O.Loop(n, False, record_every), rule,
                      O.NO_STOP, O.new_state(lay.n_params, model.dtype, model._rng_state),
                      work)
    with np.errstate(all="ignore"):
        result = plan.kernel(params, *options[:2], None, *options[2:], None, history, None,
                             backup, epoch0, epochs)
    return result, params, backup, history


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_generated_guard_keeps_the_general_entrys_state(monkeypatch, dtype):
    """The generated full-batch plain kernel checks the parameters as it steps them and
    saves the guard's state in the epoch after a recorded one (loops.plain_steps,
    record_checked); the general entry checks and copies at the record.  Every call --
    diverging at a recorded epoch, between records (caught at a later record or by the
    end check), or not at all -- returns the same result and leaves the same parameters,
    history and guard buffer, which holds the chunk's start unless an epoch before the
    last was recorded (SingleFit shares it with a snapshot then)."""
    rng = np.random.default_rng(2)
    X, y = rng.uniform(-1, 1, size=(30, 1)), rng.normal(size=(30, 1))
    outcomes = set()
    # 1e38 (float32): parameters overflow while the recorded loss, of the state before
    # the step, is still finite -- the check of the parameters alone catches it
    lrs = ((0.05, 1e3, 1e5, 1e10, 1e38) if dtype == "float32" else
           (0.05, 1e10, 1e30, 1e80, 1e150))
    for lr in lrs:
        for record_every in (1, 2, 3, 7):
            for epoch0, epochs in ((0, 1), (0, 2), (0, 5), (1, 4), (0, 12), (5, 9), (3, 40)):
                runs = []
                for generated in (True, False):
                    model = fastbp.MLP((1, 10, 1), activation=["relu", "identity"],
                                       loss="mse", dtype=dtype, seed=4)
                    runs.append(_guarded_call(monkeypatch, model, X, y, lr, epoch0, epochs,
                                              record_every, generated))
                (res_g, p_g, b_g, h_g), (res_l, p_l, b_l, h_l) = runs
                case = (lr, record_every, epoch0, epochs)
                assert res_g == res_l, case
                np.testing.assert_array_equal(p_g, p_l, err_msg=str(case))
                np.testing.assert_array_equal(b_g, b_l, err_msg=str(case))
                np.testing.assert_array_equal(h_g, h_l, err_msg=str(case))
                assert np.isfinite(p_g).all(), case
                bad = res_g[1]
                outcomes.add("finite" if bad < 0 else "at a record" if bad % record_every == 0
                             else "by the end check")
                # backup was written exactly when a record before the last epoch passed
                saved = any(g % record_every == 0 for g in range(epoch0, epoch0 + epochs - 1)
                            if bad < 0 or g < bad)
                assert saved or np.array_equal(b_g, model.params), case
    assert outcomes == {"finite", "at a record", "by the end check"}


# ------------------------------------------------------------------------ predictions
# (sizes, activations, bias): the generated predict's architectures, besides ARCHS':
# layers of 15 units, which the general entry takes through the matrix products once a
# batch is large enough; and the largest layers the generated kernels take
PREDICT_ARCHS = {
    **{name: (sizes, act, bias, loss) for name, (sizes, act, loss, bias) in ARCHS.items()},
    "products": ((3, 15, 15, 2), ["relu", "tanh", "identity"], False, "mse"),
    "widest": ((4, 32, 7, 3), ["tanh", "relu", "sigmoid"], True, "mse"),
    "softmax": ((4, 10, 5), ["relu", "softmax"], True, "cross_entropy"),
    "poisson": ((3, 6, 2), ["tanh", "exp"], True, "poisson"),
}


def _predict_both(monkeypatch, arch, n, dtype, seed=0):
    """The outputs of the generated predict, called directly, and of the general entry
    (MLP.predict with POLICY "general"), of a model with parameters N(0, 1) on inputs
    N(0, 3); MLP.predict with POLICY "fastest" takes the generated predict where
    generate.predicts says so, and then gives its outputs; X is never written."""
    sizes, act, bias, loss = PREDICT_ARCHS[arch]
    rng = np.random.default_rng(seed)
    model = fastbp.MLP(sizes, activation=act, bias=bias, loss=loss, dtype=dtype)
    model.params = rng.normal(size=model.params.shape)
    X = np.ascontiguousarray(rng.normal(scale=3.0, size=(n, sizes[0])).astype(dtype))
    given = X.copy()
    got = np.empty((n, sizes[-1]), dtype=dtype)
    GEN.predictor(sizes, model._act_codes, bias, dtype)(model.params, X, got)
    monkeypatch.setattr(D, "POLICY", "general")
    assert D.predictor(model, min(n, EVAL_CAP), n) is None
    expected = model.predict(X)
    monkeypatch.setattr(D, "POLICY", "fastest")
    takes = GEN.predicts(sizes, model._act_codes, dtype, min(n, EVAL_CAP), PRODUCT_MIN_WORK)
    assert (D.predictor(model, min(n, EVAL_CAP), n) is not None) == takes
    if takes:
        np.testing.assert_array_equal(model.predict(X), got)
    np.testing.assert_array_equal(X, given)
    return got, expected


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("arch", sorted(PREDICT_ARCHS))
def test_generated_predict_gives_the_general_entrys_numbers(generated, monkeypatch, arch,
                                                           dtype):
    """Every sample count up to the blocks' edges and past the general entry's batches
    (EVAL_CAP): the same outputs, bit for bit (signed zeros aside: the loops' zeros and
    the products' may differ in sign) -- also where the general entry takes a layer
    through the matrix products (then it is the one MLP.predict takes)."""
    sizes = PREDICT_ARCHS[arch][0]
    block = GEN.block_samples(sum(sizes), dtype == "float32")
    for n in (1, 7, block, block + 5, EVAL_CAP + 3):
        got, expected = _predict_both(monkeypatch, arch, n, dtype, seed=n)
        assert got.shape == (n, sizes[-1]) and got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, expected, err_msg=f"{arch} n={n}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ensemble_predict_on_the_generated_predict(generated, monkeypatch, dtype):
    """Ensemble.predict, shared inputs and one set per model, on one thread and on
    two: the general entry's numbers, model m's those of its own MLP.predict."""
    sizes, act, bias, loss = PREDICT_ARCHS["multi"]
    ens = fastbp.Ensemble(sizes, n_models=5, activation=act, bias=bias, loss=loss, seed=3,
                          dtype=dtype)
    rng = np.random.default_rng(7)
    ens.params[...] = rng.normal(size=ens.params.shape)
    for X in (rng.normal(size=(30, sizes[0])), rng.normal(size=(5, 30, sizes[0]))):
        X = X.astype(dtype)
        outputs = []
        for policy in ("fastest", "general"):
            monkeypatch.setattr(D, "POLICY", policy)
            assert (D.predictor(ens._proto, 30, 150) is not None) == (policy == "fastest")
            outputs += [ens.predict(X, n_jobs=1), ens.predict(X, n_jobs=2)]
        for got in outputs[1:]:
            np.testing.assert_array_equal(got, outputs[0])
        monkeypatch.setattr(D, "POLICY", "fastest")
        for m in range(5):
            np.testing.assert_array_equal(outputs[0][m], ens[m].predict(X if X.ndim == 2
                                                                        else X[m]))


def test_generated_predict_only_where_it_applies(generated, monkeypatch):
    """Narrow layers none of which the general entry takes through the products, the
    generated kernels' activations (a softmax or exp output too), dense inputs, generated
    kernels on: else the general entry."""
    monkeypatch.setattr(D, "POLICY", "fastest")
    takes = fastbp.MLP([3, 5, 2], activation=["tanh", "relu"])
    assert D.predictor(takes, 10, 10) is not None
    for output, loss in (("softmax", "cross_entropy"), ("exp", "poisson")):
        model = fastbp.MLP([3, 5, 2], activation=["relu", output], loss=loss)
        assert D.predictor(model, 10, 10) is not None, output
    assert D.predictor(takes, 10, 10, sparse=True) is None
    wide = fastbp.MLP([3, 15, 15, 2])  # a layer the products take from 19 samples on
    assert D.predictor(wide, 18, 18) is not None
    assert D.predictor(wide, 19, 19) is None
    for model in (fastbp.MLP([1, 33, 1]),   # a layer wider than MAX_UNITS
                  fastbp.MLP([9, 30, 1])):  # a layer of more than MAX_LAYER_PARAMS
        assert D.predictor(model, 10, 10) is None, model
    monkeypatch.setattr(GEN, "ENABLED", False)
    assert D.predictor(takes, 10, 10) is None


@compiled_only
def test_a_first_prediction_spares_the_general_entry_later_shapes_weigh_their_own(
        generated, monkeypatch, tmp_path):
    """With nothing compiled, the first architecture's prediction compiles the generated
    predict, about half the general entry's compile; another architecture would compile
    one more generated predict where the general entry, compiled once, serves every one:
    it takes the general entry; the first architecture keeps its compiled predict."""
    monkeypatch.setattr(D, "POLICY", "auto")
    _isolated_registry(monkeypatch, tmp_path)
    X = np.random.default_rng(1).normal(size=(21, 2))
    first, second = fastbp.MLP([2, 4, 4, 1], seed=0), fastbp.MLP([2, 3, 1], seed=0)
    general = D.general_predict_key(first.dtype)

    def generated_key(model):
        return GEN.predict_key(model.sizes, model._act_codes, model.bias, "float64")

    first.predict(X)
    assert D.is_loaded(generated_key(first)) and not D.is_loaded(general)
    second.predict(X)
    assert D.is_loaded(general) and not D.is_loaded(generated_key(second))
    assert D.predictor(first, 21, 21) is not None
    assert D.predictor(fastbp.MLP([2, 6, 1]), 21, 21) is None
