"""kernels/startup.py: a fresh process trains without importing scipy.linalg, and Numba's
BLAS flag still gives Numba's own answer when some other code needs it."""
import json
import os
import subprocess
import sys


from fastbp.kernels import startup

# A fresh process: fastbp's first fit, then user Numba code that reads the deferred flag.
_CHILD = r"""
import json, sys
import numpy as np
import fastbp
from fastbp.kernels import startup
X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
y = np.array([[0.0], [1.0], [1.0], [0.0]])
m = fastbp.MLP([2, 4, 4, 1], activation="sigmoid", loss="sse", seed=0)
m.fit(X, y, epochs=20, lr=0.1)
import numba.np.arraymath as arraymath
after_fit = {"deferred": startup.DEFERRED, "scipy.linalg": "scipy.linalg" in sys.modules,
             "flag_type": type(arraymath._HAVE_BLAS).__name__}
import numba
@numba.njit
def convolve(a, b):
    return np.convolve(a, b)   # typed through `if not _HAVE_BLAS`
rng = np.random.default_rng(0)
a, b = rng.random(40), rng.random(7)
err = float(np.max(np.abs(convolve(a, b) - np.convolve(a, b))))
print(json.dumps({"after_fit": after_fit, "convolve_err": err,
                  "flag": bool(arraymath._HAVE_BLAS), "numba_says": bool(arraymath._check_blas())}))
"""


def _child(**env_extra):
    env = {k: v for k, v in os.environ.items() if k != "FASTBP_EAGER_SCIPY"}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_first_fit_leaves_scipy_linalg_unimported_and_numba_flag_exact():
    got = _child()
    assert got["after_fit"] == {"deferred": True, "scipy.linalg": False,
                                "flag_type": "_CheckedOnFirstUse"}
    # Read when needed, the flag is what Numba's own check says (True with scipy here,
    # False without), and user code compiled after it agrees with numpy.
    assert got["flag"] == got["numba_says"]
    assert got["convolve_err"] < 1e-12


def test_eager_switch_leaves_numba_alone():
    got = _child(FASTBP_EAGER_SCIPY="1")
    assert got["after_fit"]["deferred"] is False
    assert got["after_fit"]["flag_type"] == "bool"
    scipy_found = got["after_fit"]["scipy.linalg"]
    assert got["flag"] == got["numba_says"] == scipy_found


def test_deferring_is_a_no_op_once_numba_is_set_up():
    import numba.np.arraymath as arraymath  # this process has compiled kernels already
    flag = arraymath._HAVE_BLAS
    assert startup.defer_scipy_check() is False
    assert arraymath._HAVE_BLAS is flag


def test_flag_checks_once_and_keeps_the_answer():
    calls = []

    def check():
        calls.append(1)
        return len(calls) == 1   # a second call would answer differently

    flag = startup._CheckedOnFirstUse(check)
    assert "not checked yet" in repr(flag) and calls == []
    assert bool(flag) is True and bool(flag) is True and not (not flag)
    assert calls == [1]

