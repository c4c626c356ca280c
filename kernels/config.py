"""Compilation options shared by every kernel, in one place (see STYLE.md: stumpy's config).

``fastmath`` stays off: results must be bit-reproducible run to run and comparable to the
plain-numpy references in the tests. Vectorization comes from the loop structure instead
(the innermost loops run over samples, so no sum is ever reordered).

Also how the kernels are compiled and cached as a whole: the INNER functions refuse calls
from Python (CompiledOnly), and every kernel's cache is stamped with the digest of all
the kernel sources (kernel_sources_digest), not of its own file alone.
"""

import hashlib
import os

from numba.core import caching
from numba.core.registry import CPUDispatcher

# no_cfunc_wrapper: Numba otherwise gives every function a C-callable wrapper as well, for
# use as a first-class function value, which no kernel is; the C-callable units
# (``cfunc``) get theirs regardless.
JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy", no_cfunc_wrapper=True)
# Functions only ever called from other kernels: no CPython wrapper (the code that boxes
# and unboxes their arguments for Python callers), which is most of what Numba generates
# and compiles for a small function.
INNER = dict(JIT, no_cpython_wrapper=True)


class CompiledOnly(CPUDispatcher):
    """The class of the INNER functions' dispatchers: called from Python, a Numba function
    without a CPython wrapper jumps to a null address and crashes the interpreter
    (numba/numba#2541); these raise TypeError instead.  Compiled callers never go
    through ``__call__``: they see the same Numba type and call the same code."""

    def __call__(self, *args, **kwargs):
        func = self.py_func
        raise TypeError(f"{func.__module__}.{func.__qualname__} runs only inside fastbp's "
                        f"compiled kernels (it has no Python entry point); call it from "
                        f"an @njit function")


def compiled_only(dispatcher):
    """``dispatcher`` (njit(**INNER)(...), or of a dict built on INNER) as a CompiledOnly."""
    if type(dispatcher) is CPUDispatcher and dispatcher.targetoptions.get("no_cpython_wrapper"):
        dispatcher.__class__ = CompiledOnly
    return dispatcher


def refuse_python_calls(namespace):
    """Every INNER function of a module (its ``globals()``) as a CompiledOnly: each
    kernels module calls this last."""
    for value in list(namespace.values()):
        compiled_only(value)


KERNELS_FOLDER = os.path.dirname(os.path.abspath(__file__))
_sources_digest = None


def sources_digest(folder):
    """A digest of every .py file in ``folder``, names and contents."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:20]


def kernel_sources_digest():
    """The digest of every kernels/*.py file (computed once).  Numba's cache checks only
    a function's own source file, while a kernel's compiled code holds the code of what
    it calls from the other files (an INNER function is linked into its callers): the
    cache of every function in these files is stamped with this digest instead (the
    locators below), and each generated module carries it in its text and so its file
    name (generate.py), so that after an upgrade, or an edit, of any of the files
    everything compiles afresh rather than running stale code."""
    global _sources_digest
    if _sources_digest is None:
        _sources_digest = sources_digest(KERNELS_FOLDER)
    return _sources_digest


def _vector_bytes():
    """64 where Numba compiles for the host and the host has AVX-512, else 32."""
    from llvmlite import binding
    from numba import config as numba_config
    if numba_config.CPU_NAME not in (None, "host"):
        return 32
    try:
        return 64 if binding.get_host_cpu_features().get("avx512f", False) else 32
    except RuntimeError:  # features unknown: assume the common case
        return 32


# The bytes of the widest vector the kernels are compiled for: the tiles' registers, the
# generated kernels' row padding
VECTOR_BYTES = _vector_bytes()


def codegen_variant():
    """A name for Numba's settings that change the code it compiles but not the key it
    caches that code under -- NUMBA_BOUNDSCHECK, NUMBA_OPT, NUMBA_DEBUGINFO,
    NUMBA_ENABLE_PROFILING, NUMBA_LOOP_VECTORIZE, NUMBA_SLP_VECTORIZE -- or None at
    their defaults.  One run with any of them (a bounds-checked test, a profile) would
    otherwise leave its slower code in the cache for every later run to load: a W4b
    fit's float32 layers once ran 3x slower so."""
    from numba import config as numba_config
    parts = [name for name, on in (("boundscheck", numba_config.BOUNDSCHECK),
                                   ("debuginfo", numba_config.DEBUGINFO_DEFAULT),
                                   ("profiling", numba_config.ENABLE_PROFILING),
                                   ("novectorize", not numba_config.LOOP_VECTORIZE),
                                   ("slp", numba_config.SLP_VECTORIZE)) if on]
    if int(numba_config.OPT) != 3:
        parts.append(f"opt{int(numba_config.OPT)}")
    return "-".join(parts) or None


def _is_kernel_file(py_file):
    """Whether ``py_file`` is one of kernels/*.py or a module generate.py wrote."""
    py_file = os.path.abspath(py_file)
    return (os.path.dirname(py_file) == KERNELS_FOLDER
            or os.path.basename(py_file).startswith("fastbp_generated_"))


def _stamped_with_every_source(locator):
    """Numba's cache locator class ``locator`` for the functions of kernels/*.py and of
    the modules generate.py writes only, their caches stamped with
    kernel_sources_digest() rather than their own file's hash: a kernel whose own file
    is unchanged but whose callees changed (tiles.py's gemm_at in gemm.py's tiles unit,
    say) is compiled again, not loaded stale.  Code compiled under another
    codegen_variant goes to a folder of its own."""

    class Locator(locator):
        @classmethod
        def from_function(cls, py_func, py_file):
            if not _is_kernel_file(py_file):
                return None
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return kernel_sources_digest()

        def get_cache_path(self):
            path = super().get_cache_path()
            variant = codegen_variant()
            return path if variant is None else os.path.join(path, variant)

    Locator.__name__ = Locator.__qualname__ = f"Kernels{locator.__name__}"
    return Locator


# ahead of Numba's own locators (the same places: NUMBA_CACHE_DIR, the package's
# __pycache__, the user's cache folder), which serve every other function unchanged
KERNEL_LOCATORS = tuple(_stamped_with_every_source(c) for c in (
    caching.UserProvidedCacheLocator, caching.InTreeCacheLocator,
    caching.UserWideCacheLocator))
caching.CacheImpl._locator_classes[:0] = KERNEL_LOCATORS


def with_constants(fn, names, name):
    """The Python function ``fn``'s code named ``name``, reading its globals from the
    dict ``names``: compiled, a copy of ``fn`` whose module constants are those of
    ``names``, which Numba sees before it types anything, so it drops the branches they
    rule out (passes.py's units, sample.py's epochs).  Numba names its cache files after
    the function: each set of constants needs a name of its own."""
    import types

    copy = types.FunctionType(fn.__code__, names, name, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = name
    copy.__doc__ = fn.__doc__
    return copy


# A layer's products (forward, weight gradient, back-propagation) go through the
# matrix products (batch._matmul: the gemm unit of gemm.py, or BLAS) when the layer
# has at least PRODUCT_MIN_WEIGHTS weights and one product, n_in * n_out * batch, at
# least PRODUCT_MIN_WORK multiply-adds.  Smaller layers keep the plain loops: there the
# tiles' edges and call overhead cost more than they save, and such layers are those of
# the generated kernels (generate.py), which repeat the loops' order exactly.  The
# threshold is the one W4b (batch 64) ran fastest with at H = 16 and 64.
PRODUCT_MIN_WORK = 16 * 16 * 16
PRODUCT_MIN_WEIGHTS = 64
# A product of at least this many multiply-adds goes to BLAS instead of the tiles when
# BLAS runs on at least BLAS_MIN_THREADS threads, which then share it.  One thread of
# tiles runs the products of a batch of 64 at least as fast as one of OpenBLAS, but four
# OpenBLAS threads beat one of tiles on a 64 x 256 x 256 layer (two threads do not, by
# enough to pay for their synchronization), measured on a 16-core Xeon.
BLAS_THREADED_MIN_WORK = 1 << 22
BLAS_MIN_THREADS = 4


# ------------------------------------------------------------------- vector width
# LLVM's tuning for Intel's AVX-512 server CPUs prefers 256-bit vectors, so the loops it
# vectorizes -- the kernels of small networks run across samples and models -- use half
# of each register, where AMD's Zen 4 and 5 use all of it.  From Sapphire Rapids on, the
# whole 512-bit registers cost no clock speed worth the name, and on them fastbp turns
# the preference off: the small networks' fits run faster (docs/PERFORMANCE-HISTORY.md,
# "On Intel CPUs with AVX-512", has the figures), with the same bits.  Older AVX-512 parts
# (Skylake-SP to Ice Lake) keep LLVM's choice: there wide vectors can lower the clock.
WIDE_VECTOR_CPUS = ("sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d",
                    "diamondrapids")


def wide_vector_features(cpu_name, features, environ):
    """The Numba CPU features (NUMBA_CPU_FEATURES) that let LLVM use whole AVX-512
    registers on ``cpu_name`` (LLVM's name of the host CPU; ``features`` Numba's
    feature string for it), or None to leave Numba as it is: on other CPUs, where the
    user chose Numba's CPU or features (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES), or with
    FASTBP_WIDE_VECTORS=0 in ``environ``."""
    if environ.get("FASTBP_WIDE_VECTORS", "1") == "0" or cpu_name not in WIDE_VECTOR_CPUS:
        return None
    if environ.get("NUMBA_CPU_NAME") or "NUMBA_CPU_FEATURES" in environ:
        return None
    if "+avx512f" not in features.split(","):
        return None
    return features + ",-prefer-256-bit"


def _prefer_wide_vectors():
    """Set Numba's CPU features per wide_vector_features before Numba compiles or loads
    anything: Numba reads them once, when it sets up its CPU target.  A process whose
    Numba code ran before fastbp was imported keeps the features it started with (fastbp
    then works as before, on half registers).  It is Numba's setting, so it applies to
    every Numba function compiled afterwards in this process, which the README says."""
    import os

    import llvmlite.binding as llvm
    from numba import config as numba_config
    from numba.core.codegen import get_host_cpu_features

    if numba_config.DISABLE_JIT or numba_config.CPU_FEATURES is not None:
        return
    features = wide_vector_features(llvm.get_host_cpu_name(), get_host_cpu_features(),
                                    os.environ)
    if features is not None:
        numba_config.CPU_FEATURES = features


_prefer_wide_vectors()
