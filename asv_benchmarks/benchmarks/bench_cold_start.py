"""Cold start: ``import fastbp`` and a first fit in a fresh process, with an empty Numba
cache (every kernel the fit needs compiles) and with a warm one (they load).

NUMBA_CACHE_DIR points the child at a fresh temporary directory ("empty") or at one a
previous child filled ("warm"), so the repository's own __pycache__ is not used; the
generated kernels' sources and fastbp's markers of compiled kernels follow it
($NUMBA_CACHE_DIR/fastbp, kernels/generate.py: cache_dir).

``ColdStart`` times the README's W1 fit (XOR, 100,000 epochs); ``FirstFit`` the matrix
of first fits the README reports: the tutorial net, mini-batch / Adam / per-sample /
float32 fits of a 32-64-64-10 net, scikit-learn's defaults on digits, an ensemble."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from . import common
from .common import Benchmark

CHILD = r"""
import time
t0 = time.perf_counter()
import numpy as np
import fastbp
t1 = time.perf_counter()
X = np.array([[0.1 * i, 0.1 * i] for i in range(11)]
             + [[0.1 * i, 1 - 0.1 * i] for i in range(11) if i != 5])
y = np.array([0.0] * 11 + [1.0] * 10).reshape(21, 1)
m = fastbp.MLP([2, 4, 4, 1], activation="sigmoid", loss="sse", init="uniform", seed=0)
m.fit(X, y, epochs=100_000, lr=0.1, record_every=1)
t2 = time.perf_counter()
import json
print(json.dumps({"import": t1 - t0, "first_fit": t2 - t1, "total": t2 - t0}))
"""


def _child(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    env.pop("FASTBP_CACHE_DIR", None)
    # "warm" means every cache a user's machine keeps, Python's bytecode included: an
    # environment that turns it off (PYTHONDONTWRITEBYTECODE, as some sandboxes and CI
    # images do) would add recompiling fastbp's and the generated kernel's source to
    # every start (~30 ms here)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, timeout=550)
    if out.returncode:
        raise RuntimeError(f"child failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class ColdStart(Benchmark):
    param_names = ["numba_cache"]
    params = [["empty", "warm"]]
    repeat = (1, 3, 60.0)
    timeout = 900

    def setup(self, cache):
        common.import_fastbp()
        self.root = tempfile.mkdtemp(prefix="fastbp_cold_")
        self.warm_dir = os.path.join(self.root, "warm")
        if cache == "warm":
            _child(self.warm_dir)  # fills the cache

    def teardown(self, cache):
        shutil.rmtree(self.root, ignore_errors=True)

    def _dir(self, cache):
        return self.warm_dir if cache == "warm" else tempfile.mkdtemp(dir=self.root)

    def track_first_fit_seconds(self, cache):
        """``import fastbp`` + first fit, timed inside the child (no interpreter start);
        targets: <= 0.5 s warm, <= 5 s empty."""
        return _child(self._dir(cache))["total"]

    track_first_fit_seconds.unit = "seconds"


class ColdStartProcess(Benchmark):
    """The whole child process (interpreter start, import, first fit), warm cache only
    (the empty-cache case is the track above; compiling twice would double the run)."""
    repeat = (1, 5, 30.0)

    def setup(self):
        common.import_fastbp()
        self.root = tempfile.mkdtemp(prefix="fastbp_cold_")
        _child(self.root)  # fills the cache

    def teardown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def time_import_and_first_fit_warm_cache(self):
        _child(self.root)


# The first fits of the README's table: what a new user meets.  Each a statement run
# after the common prelude (imports and data), timed together with ``import fastbp``.
_PRELUDE = """
import time
t0 = time.perf_counter()
import numpy as np
import fastbp
t1 = time.perf_counter()
rng = np.random.default_rng(0)
X32, Y32 = rng.standard_normal((4096, 32)), rng.random((4096, 10))
XOR = np.array([[0.1 * i, 0.1 * i] for i in range(11)]
               + [[0.1 * i, 1 - 0.1 * i] for i in range(11) if i != 5])
YXOR = np.array([0.0] * 11 + [1.0] * 10).reshape(21, 1)
"""
FIRST_FITS = {
    "xor": "fastbp.MLP([2, 4, 4, 1], loss='sse', seed=0).fit(XOR, YXOR, epochs=100_000, "
           "lr=0.1)",
    "b64": "fastbp.MLP([32, 64, 64, 10], seed=0).fit(X32, Y32, epochs=1, lr=0.1, "
           "batch_size=64, shuffle=True)",
    "relu_adam": "fastbp.MLP([32, 64, 64, 10], activation=['relu', 'relu', 'sigmoid'], "
                 "seed=0).fit(X32, Y32, epochs=1, lr=1e-3, batch_size=64, shuffle=True, "
                 "optimizer='adam')",
    "b1": "fastbp.MLP([32, 64, 64, 10], seed=0).fit(X32, Y32, epochs=1, lr=0.1, "
          "batch_size=1, shuffle=True)",
    "f32": "fastbp.MLP([32, 64, 64, 10], dtype='float32', seed=0).fit(X32, Y32, epochs=1, "
           "lr=0.1, batch_size=64, shuffle=True)",
    "sklearn": "import warnings; warnings.simplefilter('ignore'); "
               "from sklearn.datasets import load_digits; "
               "from fastbp.sklearn import MLPClassifier; "
               "MLPClassifier(max_iter=30, random_state=0).fit(*load_digits(return_X_y=True))",
    "ensemble": "fastbp.Ensemble([2, 4, 4, 1], n_models=64, seed=0).fit(XOR, YXOR, "
                "epochs=1000, lr=0.5)",
}
_EPILOGUE = """
t2 = time.perf_counter()
import json
print(json.dumps({"import": t1 - t0, "first_fit": t2 - t1, "total": t2 - t0}))
"""


def first_fit(row, cache_dir):
    """{"import", "first_fit", "total"} seconds of row ``row`` in a fresh process whose
    caches are in ``cache_dir``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    env.pop("FASTBP_CACHE_DIR", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    code = _PRELUDE + FIRST_FITS[row] + _EPILOGUE
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=550)
    if out.returncode:
        raise RuntimeError(f"child failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class FirstFit(Benchmark):
    """``import fastbp`` + the first fit of each row, empty and warm cache (the README's
    first-fit table).  The fast profile (CI) runs two rows."""
    param_names = ["fit", "numba_cache"]
    params = [list(FIRST_FITS) if common.PROFILE != "fast" else ["xor", "b64"],
              ["empty", "warm"]]
    repeat = (1, 1, 60.0)
    number = 1
    timeout = 900

    def setup(self, row, cache):
        self.root = tempfile.mkdtemp(prefix="fastbp_first_")
        self.warm_dir = os.path.join(self.root, "warm")
        if cache == "warm":
            first_fit(row, self.warm_dir)  # fills the cache

    def teardown(self, row, cache):
        shutil.rmtree(self.root, ignore_errors=True)

    def track_seconds(self, row, cache):
        """Import + first fit, timed inside the child; targets: <= 5 s empty, <= 0.4 s
        warm."""
        d = self.warm_dir if cache == "warm" else tempfile.mkdtemp(dir=self.root)
        return first_fit(row, d)["total"]

    track_seconds.unit = "seconds"
