"""The batch passes compiled apart (kernels/passes.py): the training entries call them by
address and hold no copy of their code; one compiled set per dtype serves every entry."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import config as numba_config

import fastbp
from fastbp.kernels import passes as PS

FORWARD = PS.FORWARD  # globals: Numba types them as constants, as passes.call needs
BACKWARD = PS.BACKWARD
OUTPUT_DELTAS = PS.OUTPUT_DELTAS
BATCH_LOSS = PS.BATCH_LOSS

pytestmark = pytest.mark.skipif(numba_config.DISABLE_JIT,
                                reason="compiled code only: as Python there is no address")


_INSPECT = """
import json, re
import numpy as np
import fastbp
from fastbp.kernels import loops as L
rng = np.random.default_rng(0)
X, y = rng.normal(size=(40, 5)), rng.random((40, 2))
m = fastbp.MLP([5, 70, 2], seed=0)
m.predict(X)
from fastbp.kernels import passes as PS
after_predict = [[PS.Passes._fields[k[1]], k[3].form] for k in PS._compiled]
m.fit(X, y, epochs=2, lr=0.1, batch_size=8, shuffle=True)
defined = {"compiled after predict": after_predict}
for name, entry in (("train", L.trainer("mini", "fused", False)), ("predict", L.predict)):
    defined[name] = [n for text in entry.inspect_llvm().values()
                     for n in re.findall(r'^define [^@]*@"?([^"(]+)', text, re.M)]
# the forward and backward units with and without the thread pool's branch, and in
# each form of the layers' products (the fit's batches of 8 ran on the loops alone)
defined["fit's form"] = [k[3].form for k in PS._compiled if k[1] == PS.BACKWARD]
for pooled in (False, True):
    for form in PS.FORMS:
        PS.for_dtype(np.float64, pooled=pooled, build=PS.Build(form))
        for which in PS.LAYER_PASSES:
            key = PS.unit_key(np.float64, which, pooled, PS.Build(form))
            text = PS._compiled[key].inspect_llvm()
            name = PS.Passes._fields[which]
            defined[f"{name} pooled={pooled} form={form} calls the pool"] = "call_layer" in text
            defined[f"{name} pooled={pooled} form={form} lines"] = text.count(chr(10))
# the fit's units were compiled for its sigmoid layers and mse loss (the code of the
# other activations and losses left out)
for which in PS.ALL:
    fit_key = next(k for k in PS._compiled if k[1] == which and k[3].form != PS.BY_SIZE
                   or k[1] == which and which not in PS.LAYER_PASSES)
    general = PS.for_dtype(np.float64, needed=(which,), build=PS.Build(fit_key[3].form))
    name = PS.Passes._fields[which]
    defined[f"{name} codes"] = list(fit_key[3][1:])
    texts = [PS._compiled[fit_key].inspect_llvm(),
             PS._compiled[PS.unit_key(np.float64, which, False, PS.Build(fit_key[3].form))]
             .inspect_llvm()]
    defined[f"{name} lines for the codes, for any"] = [t.count(chr(10)) for t in texts]
    defined[f"{name} float comparisons for the codes, for any"] = [
        len(re.findall(r"= fcmp ", t)) for t in texts]
print(json.dumps(defined))
"""


def test_entries_call_the_passes_and_hold_none_of_their_code(tmp_path):
    """Compiled in a fresh process (Numba cannot show the code of what it loaded from its
    cache): the training entry and predict define their own functions, and none of the
    passes'."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"),
               FASTBP_CACHE_DIR=str(tmp_path / "fastbp"), PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-c", _INSPECT], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    defined = json.loads(done.stdout.strip().splitlines()[-1])
    # predict compiled the forward pass alone (a pass is compiled where it is needed), in
    # the form of its one batch of 40, whose layers both go through the products
    assert defined.pop("compiled after predict") == [["forward", PS.ALL_PRODUCTS]]
    # the fit's batches of 8 take the loops in every layer: it compiled that form alone
    assert defined.pop("fit's form") == [PS.ALL_LOOPS]
    # a fit on one thread runs units without the pool's branch (less to compile), and a
    # form of one way compiles less than the form that chooses by size
    for name in ("forward", "backward"):
        for form in PS.FORMS:
            assert defined.pop(f"{name} pooled=True form={form} calls the pool") is True
            assert defined.pop(f"{name} pooled=False form={form} calls the pool") is False
        for pooled in (False, True):
            lines = {form: defined.pop(f"{name} pooled={pooled} form={form} lines")
                     for form in PS.FORMS}
            assert lines[PS.ALL_PRODUCTS] < lines[PS.BY_SIZE], (name, pooled, lines)
            assert lines[PS.ALL_LOOPS] < lines[PS.BY_SIZE], (name, pooled, lines)
    sigmoid, mse, anything = 1, 0, -1
    assert defined.pop("forward codes") == [sigmoid, sigmoid, anything]
    assert defined.pop("backward codes") == [sigmoid, anything, anything]
    assert defined.pop("output_deltas codes") == [anything, sigmoid, mse]
    assert defined.pop("batch_loss codes") == [anything, anything, mse]
    # The units for the codes hold less code in all: what a first fit compiles.  One
    # pass alone may not: on an AVX2 machine the backward pass for the sigmoid alone
    # vectorized its derivative into more lines than the general unit's loop that
    # dispatches on the code.  Each leaves out the other codes' branches: the relu's,
    # tanh's and the losses' comparisons (the sigmoid's derivative and mse have none).
    lines = [defined.pop(f"{name} lines for the codes, for any") for name in PS.Passes._fields]
    assert sum(n for n, _ in lines) < sum(n for _, n in lines), lines
    for name in PS.Passes._fields:
        for_codes, for_any = defined.pop(f"{name} float comparisons for the codes, for any")
        assert for_codes < for_any, (name, for_codes, for_any)
    for entry, names in defined.items():
        text = " ".join(names)
        assert entry in text  # the entry itself is there...
        for name in ("7forward", "8backward", "13output_deltas", "10batch_loss"):
            assert name not in text, (entry, name)  # ...and no pass
    assert PS.FORWARD == 0 and len(PS.Passes._fields) == 4


def test_one_compiled_set_per_dtype():
    for dtype in ("float64", "float32"):
        addresses = PS.for_dtype(dtype)
        assert PS.is_loaded(dtype)
        assert addresses.dtype == np.int64 and addresses.shape == (4,)
        assert (addresses != 0).all() and len(set(addresses)) == 4
        np.testing.assert_array_equal(PS.for_dtype(dtype), addresses)
    assert not np.array_equal(PS.for_dtype("float64"), PS.for_dtype("float32"))


def test_the_pool_branch_and_the_forms_have_units_of_their_own():
    """forward and backward are compiled with and without the branch that hands a layer
    to a fit's thread pool, and in each form of the layers' products; the loss and the
    output deltas have neither, and one unit."""
    alone, pooled = PS.for_dtype("float64"), PS.for_dtype("float64", pooled=True)
    assert PS.is_loaded("float64", pooled=True)
    for which in range(4):
        same = alone[which] == pooled[which]
        assert same == (which not in PS.LAYER_PASSES), PS.Passes._fields[which]
    forms = [PS.for_dtype("float64", build=PS.Build(form)) for form in PS.FORMS]
    for which in range(4):
        distinct = len({int(f[which]) for f in forms})
        assert distinct == (3 if which in PS.LAYER_PASSES else 1), PS.Passes._fields[which]
    with pytest.raises(ValueError, match="form must be one of"):
        PS.for_dtype("float64", build=PS.Build(7))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_form_computes_what_choosing_by_size_computes(dtype):
    """A 3-70-4 net: in batches of 64 both layers go through the products, in batches
    of 8 through the loops (fastbp/_dispatch.py: layer_form); the narrow form's forward
    and backward passes give the bits of the form that asks every layer (BY_SIZE)."""
    from numba import njit
    from fastbp import _dispatch as D
    from fastbp.kernels import batch as B
    from fastbp.kernels import options as O

    @njit
    def passes(units, params, net, acts, a_off, deltas, out, nb):
        PS.call(units[FORWARD], FORWARD, (params, net, acts, a_off, nb, acts[:0], False))
        PS.call(units[BACKWARD], BACKWARD,
                (params, net, acts, a_off, deltas, out, nb, params[0] * 0, False, True))

    m = fastbp.MLP([3, 70, 4], activation=["tanh", "sigmoid"], seed=2, dtype=dtype)
    net = D.make_net(m._layout, m._act_codes, m._loss_code, m.dtype, "tiles")
    rng = np.random.default_rng(4)
    for nb, form in ((64, B.ALL_PRODUCTS), (8, B.ALL_LOOPS)):
        assert D.layer_form(m._layout.sizes, {nb}) == form
        inputs = rng.normal(size=3 * nb)
        output_deltas = rng.normal(size=4 * nb)
        results = []
        for units in (PS.for_dtype(dtype, build=PS.Build(form)), PS.for_dtype(dtype)):
            work = O.make_work(m._layout.sizes_arr, m.params.size, nb, nb, m.dtype, False)
            work.acts[:3 * nb] = inputs
            work.deltas[work.a_off[2]:] = output_deltas
            passes(units, m.params, net, work.acts, work.a_off, work.deltas, work.grad, nb)
            results.append((work.acts, work.grad))
        (acts, grad), (acts_by_size, grad_by_size) = results
        assert np.isfinite(grad).all() and np.abs(grad).max() > 0
        np.testing.assert_array_equal(acts, acts_by_size)
        np.testing.assert_array_equal(grad, grad_by_size)


@pytest.mark.parametrize("sizes, nbs, sparse, form", [
    ((32, 64, 64, 10), {64}, False, "ALL_PRODUCTS"),
    ((32, 64, 64, 10), {64, 4}, False, "BY_SIZE"),     # the last batch: 64 x 10 x 4 < 4096
    ((32, 64, 64, 10), {64, 4}, True, "BY_SIZE"),
    ((2, 4, 4, 1), {21}, False, "ALL_LOOPS"),           # under 64 weights a layer
    ((32, 64, 64, 10), {1}, False, "ALL_LOOPS"),        # one sample: no products
    ((20000, 8, 64, 64), {64}, True, "ALL_PRODUCTS"),   # the sparse first layer aside
    ((20000, 8, 2), {64}, True, "ALL_LOOPS"),
    ((5, 70, 2), {8, 40}, False, "BY_SIZE"),
])
def test_layer_form(sizes, nbs, sparse, form):
    from fastbp import _dispatch as D
    from fastbp.kernels import batch as B
    assert D.layer_form(sizes, nbs, sparse) == getattr(B, form)


def test_a_pass_called_by_address_computes_what_the_pass_computes():
    """passes.call through the forward unit's address against batch.forward itself."""
    from numba import njit
    from fastbp import _dispatch as D
    from fastbp.kernels import batch as B
    from fastbp.kernels import options as O

    m = fastbp.MLP([3, 70, 4], activation=["tanh", "sigmoid"], seed=2)
    net = D.make_net(m._layout, m._act_codes, m._loss_code, m.dtype, "recurrence")
    nb = 16
    work = O.make_work(m._layout.sizes_arr, 0, nb, nb, m.dtype, False,
                       passes=D.batch_passes(m.dtype))

    @njit
    def by_address(params, net, acts, a_off, passes):
        PS.call(passes[FORWARD], FORWARD, (params, net, acts, a_off, 16, acts[:0], False))

    @njit
    def direct(params, net, acts, a_off):
        B.forward(params, net, acts, a_off, 16, acts[:0], False)

    first = np.random.default_rng(1).normal(size=3 * nb)
    a1, a2 = work.acts.copy(), work.acts.copy()
    a1[:3 * nb] = a2[:3 * nb] = first
    by_address(m.params, net, a1, work.a_off, work.passes)
    direct(m.params, net, a2, work.a_off)
    assert np.isfinite(a1).all() and not np.array_equal(a1[3 * nb:], np.zeros_like(a1[3 * nb:]))
    np.testing.assert_array_equal(a1, a2)


def test_read_only_parameters_and_data():
    """What the passes only read may be read-only: a model's parameters (unpickled from a
    read-only memory map) for predictions and the loss, the data and sample weights of a
    fit; a Net's arrays are copied where a model's are read-only."""
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(30, 4)), rng.random((30, 1))
    m = fastbp.MLP([4, 6, 1], seed=1)
    want, want_loss = m.predict(X), m.loss(X, y)
    ro = fastbp.MLP([4, 6, 1], seed=1)
    for array in (ro._params, ro._layout.sizes_arr, ro._layout.w_off, ro._layout.b_off):
        array.flags.writeable = False
    np.testing.assert_array_equal(ro.predict(X), want)
    assert ro.loss(X, y) == want_loss
    w = np.linspace(0.5, 1.5, 30)
    h = m.fit(X, y, epochs=3, lr=0.1, batch_size=10, sample_weight=w)
    for array in (X, y, w):
        array.flags.writeable = False
    m2 = fastbp.MLP([4, 6, 1], seed=1)
    h2 = m2.fit(X, y, epochs=3, lr=0.1, batch_size=10, sample_weight=w)
    np.testing.assert_array_equal(h2.loss, h.loss)
    np.testing.assert_array_equal(m2.params, m.params)


def test_passes_build_prefers_a_unit_already_compiled(monkeypatch):
    """The narrow form and the Net's codes when nothing is compiled (they compile
    faster); a broader unit that serves the calls when only it is compiled (it serves at
    once): the Net's codes in BY_SIZE, then the form for any codes, then Build(); the
    narrow one again once it is compiled; the narrow one always under
    FASTBP_KERNELS=fastest."""
    from fastbp import _dispatch as D
    from fastbp.kernels import batch as B
    from fastbp.kernels import rules as R
    compiled = set()
    monkeypatch.setattr(D, "passes_compiled",
                        lambda dtype, needed, pooled, build: build in compiled)
    sizes = (32, 64, 64, 10)
    acts = np.array([R.SIGMOID] * 3)
    codes = (R.SIGMOID, R.SIGMOID, R.MSE)

    def build(nbs):
        return D.passes_build("float64", PS.ALL, False, sizes, nbs, acts, R.MSE)

    assert build({64}) == PS.Build(B.ALL_PRODUCTS, *codes)
    assert build({1}) == PS.Build(B.ALL_LOOPS, *codes)
    compiled.add(PS.Build())
    assert build({64}) == PS.Build() and build({1}) == PS.Build()
    compiled.add(PS.Build(B.ALL_PRODUCTS))
    assert build({64}) == PS.Build(B.ALL_PRODUCTS) and build({1}) == PS.Build()
    compiled.add(PS.Build(B.BY_SIZE, *codes))
    assert build({64}) == PS.Build(B.BY_SIZE, *codes) == build({1})
    compiled.add(PS.Build(B.ALL_PRODUCTS, *codes))
    assert build({64}) == PS.Build(B.ALL_PRODUCTS, *codes)
    assert build({64, 4}) == PS.Build(B.BY_SIZE, *codes)
    # FASTBP_KERNELS=fastest: the narrow unit, whatever is compiled
    compiled.clear()
    compiled.add(PS.Build())
    monkeypatch.setattr(D, "POLICY", "fastest")
    assert build({64}) == PS.Build(B.ALL_PRODUCTS, *codes)
    assert build({1}) == PS.Build(B.ALL_LOOPS, *codes)


@pytest.mark.parametrize("acts, loss, codes", [
    (["sigmoid", "sigmoid"], "mse", ("SIGMOID", "SIGMOID", "MSE")),
    (["relu", "relu", "identity"], "half_mse", ("RELU", "IDENTITY", "HALF_MSE")),
    (["tanh", "relu", "sigmoid"], "bce", ("ANY", "SIGMOID", "BCE")),
    (["softmax"], "cross_entropy", ("IDENTITY", "SOFTMAX", "CROSS_ENTROPY")),
])
def test_net_codes(acts, loss, codes):
    """The codes a Net's passes are compiled for: the one every hidden layer shares (ANY
    when they differ; IDENTITY, never read, without hidden layers), the output's, the
    loss's."""
    from fastbp import _dispatch as D
    from fastbp.kernels import batch as B
    from fastbp.kernels import rules as R
    sizes = [3] + [5] * (len(acts) - 1) + [2]
    m = fastbp.MLP(sizes, activation=acts, loss=loss)
    want = tuple(getattr(B if c == "ANY" else R, c) for c in codes)
    assert D.net_codes(m._act_codes, m._loss_code) == want


def test_a_unit_is_keyed_by_what_its_pass_reads():
    """The forward unit by the form, hidden and output codes; the backward one by the
    form and hidden code; the output deltas by output and loss; the loss by the loss."""
    build = PS.Build(PS.ALL_PRODUCTS, 2, 1, 3)
    keys = {which: PS.unit_key("float64", which, True, build)[2:] for which in range(4)}
    assert keys[PS.FORWARD] == (True, PS.Build(PS.ALL_PRODUCTS, 2, 1))
    assert keys[PS.BACKWARD] == (True, PS.Build(PS.ALL_PRODUCTS, 2))
    assert keys[PS.OUTPUT_DELTAS] == (False, PS.Build(output=1, loss=3))
    assert keys[PS.BATCH_LOSS] == (False, PS.Build(loss=3))


def test_a_loss_unit_inlines_the_loss_sum_of_its_loss_alone():
    """The batch-loss unit for a loss calls a copy of rules.loss_sum that reads that loss
    as a constant (rules.LOSS), so Numba drops the other losses' loops before it inlines
    what they call; the unit for any loss keeps the one that reads its argument."""
    from fastbp.kernels import rules as R
    for loss in (R.MSE, R.BCE, R.POISSON):
        unit = PS._unit_function(BATCH_LOSS, False, PS.Build(loss=loss))
        copy = unit.__globals__["loss_sum"]
        assert copy is not R.loss_sum and copy.py_func.__globals__["LOSS"] == loss
    general = PS._unit_function(BATCH_LOSS, False, PS.Build())
    assert general.__globals__["loss_sum"] is R.loss_sum and R.LOSS == R.ANY


# every activation and loss the passes compute, with outputs and losses that go together
_CODED_NETS = [
    (["sigmoid", "sigmoid"], "mse"), (["relu", "identity"], "half_mse"),
    (["tanh", "tanh", "sigmoid"], "bce"), (["relu", "softmax"], "cross_entropy"),
    (["sigmoid", "exp"], "poisson"), (["tanh", "identity"], "sse"),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("acts, loss", _CODED_NETS)
def test_units_for_a_nets_codes_compute_what_the_general_units_compute(dtype, acts, loss):
    """The four passes compiled for a Net's activation and loss codes (and its layers'
    form) against those that read the codes at run time: the same bits, weighted."""
    from numba import njit
    from fastbp import _dispatch as D
    from fastbp.kernels import options as O

    @njit
    def run_all(units, params, net, acts, a_off, y, z_out, deltas, w, out, nb):
        n_layers = net.sizes.shape[0] - 1
        k = net.sizes[n_layers]
        oo = a_off[n_layers]
        PS.call(units[FORWARD], FORWARD, (params, net, acts, a_off, nb, z_out, False))
        loss = PS.call(units[BATCH_LOSS], BATCH_LOSS,
                       (acts, oo, y, z_out, w, net.loss, k, nb))
        PS.call(units[OUTPUT_DELTAS], OUTPUT_DELTAS,
                (acts, oo, y, deltas, w, net.loss, net.acts[n_layers - 1], k, nb))
        PS.call(units[BACKWARD], BACKWARD,
                (params, net, acts, a_off, deltas, out, nb, params[0] * 0, False, True))
        return loss

    sizes = [3] + [9] * (len(acts) - 1) + [4]
    m = fastbp.MLP(sizes, activation=acts, loss=loss, seed=5, dtype=dtype)
    rng = np.random.default_rng(6)
    nb = 20
    x = rng.normal(size=3 * nb)
    y = rng.random(4 * nb).astype(dtype)
    if loss == "cross_entropy":
        y = np.eye(4, dtype=dtype)[rng.integers(0, 4, nb)].T.ravel().copy()
    w = rng.uniform(0.5, 1.5, nb).astype(dtype)
    build = PS.Build(D.layer_form(m._layout.sizes, (nb,)),
                     *D.net_codes(m._act_codes, m._loss_code))
    net = D.make_net(m._layout, m._act_codes, m._loss_code, m.dtype, "recurrence")
    results = []
    coded, general = PS.for_dtype(dtype, build=build), PS.for_dtype(dtype)
    assert not set(coded) & set(general)  # four units of their own
    for units in (coded, general):
        work = O.make_work(m._layout.sizes_arr, m.params.size, nb, nb, m.dtype, True)
        work.acts[:3 * nb] = x
        loss_value = run_all(units, m.params, net, work.acts, work.a_off, y, work.z_out,
                             work.deltas, w, work.grad, nb)
        results.append((loss_value, work.acts.copy(), work.grad.copy()))
    (loss_value, acts_out, grad), (want_loss, want_acts, want_grad) = results
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
    assert loss_value == want_loss
    np.testing.assert_array_equal(acts_out, want_acts)
    np.testing.assert_array_equal(grad, want_grad)
