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

FORWARD = PS.FORWARD  # a global: Numba types it as a constant, as passes.call needs

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
after_predict = [bool(a) for a in PS.for_dtype(np.float64, ())]
m.fit(X, y, epochs=2, lr=0.1, batch_size=8, shuffle=True)
defined = {"compiled after predict": after_predict}
for name, entry in (("train", L.trainer("mini", "fused", False)), ("predict", L.predict)):
    defined[name] = [n for text in entry.inspect_llvm().values()
                     for n in re.findall(r'^define [^@]*@"?([^"(]+)', text, re.M)]
# the forward and backward units with and without the thread pool's branch
PS.for_dtype(np.float64, pooled=True)
for pooled in (False, True):
    for which in PS.POOL_PASSES:
        text = PS._compiled[PS.unit_key(np.float64, which, pooled)].inspect_llvm()
        defined[f"{PS.Passes._fields[which]} pooled={pooled} calls the pool"] = \
            "call_layer" in text
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
    # predict compiled the forward pass alone (a pass is compiled where it is needed)
    assert defined.pop("compiled after predict") == [True, False, False, False]
    # a fit on one thread runs units without the pool's branch (less to compile)
    for name in ("forward", "backward"):
        assert defined.pop(f"{name} pooled=True calls the pool") is True
        assert defined.pop(f"{name} pooled=False calls the pool") is False
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


def test_the_pool_branch_has_units_of_its_own():
    """forward and backward are compiled with and without the branch that hands a layer
    to a fit's thread pool; the loss and the output deltas have none, and one unit."""
    alone, pooled = PS.for_dtype("float64"), PS.for_dtype("float64", pooled=True)
    assert PS.is_loaded("float64", pooled=True)
    for which in range(4):
        same = alone[which] == pooled[which]
        assert same == (which not in PS.POOL_PASSES), PS.Passes._fields[which]


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
