"""Which compiled kernel runs a fit: the one place that decides.

For every fit (MLP, Ensemble, the scikit-learn wrappers) the dispatcher picks

- the training loop: a general entry for the fit's mode (full batch, mini-batch,
  per-sample), update rule and validation (kernels/loops.py), or a kernel generated
  for the network's exact architecture (kernels/generate.py), which runs small
  networks several times faster but is one more compilation;
- the matrix-product unit of the wide layers (kernels/gemm.py): the register tiles, or
  the plain recurrence, which computes the same numbers slower but compiles in a
  fraction of the time.

The choice never changes results -- every candidate computes the same numbers in the
same order (tests/test_goldens.py, tests/test_generate.py) -- only how long the user
waits.  It weighs what a kernel costs to compile (nothing once it is compiled in this
process or cached on disk) against what it saves on this fit's work, counting the work
of earlier fits of the same kind in this process, so that a loop of short fits
switches to the faster kernel once it has spent about a compilation's time.

Compiled kernels are remembered twice: in this process (``_loaded``), and on disk by
a marker file per kernel in fastbp's cache folder, written after the kernel was first
compiled and stamped with the kernels' sources, Numba's version and the CPU -- the
facts Numba's own cache depends on.
"""
import atexit
import functools
import hashlib
import math
import os
import sys
import threading
import time
from dataclasses import dataclass

import numba
import numpy as np

from . import _threads as T
from .kernels import batch as B
from .kernels import gemm as G
from .kernels import generate as GEN
from .kernels import loops as L
from .kernels import options as O
from .kernels import passes as PS
from .kernels import rules as R
from .kernels.config import (BLAS_MIN_THREADS, BLAS_THREADED_MIN_WORK, PRODUCT_MIN_WORK,
                             codegen_variant)
from .kernels import pool as P
from .kernels import sample_share as SS
from .kernels.generate import cache_dir, kernel_sources_digest

# Seconds to compile each kind of kernel on the 2-core development machine (one CPU,
# empty cache; asv_benchmarks/benchmarks/bench_cold_start.py measures them), and how
# much faster the faster candidate runs.  A faster kernel is compiled when the work it
# would save reaches its compile time.
# The tiles: the unit without the copy of op(a) of layers of 512 float64 / 1,024 float32
# units or more, and the one with it (gemm.tiles_kind), beyond the recurrence's compile
# (b64 of bench_cold_start, 32-64-64-10, on the tiles and on the recurrence: 2.5-3 s
# more on the Zen 4 of PERFORMANCE-HISTORY.md, about 6 s with the copy)
TILES_COMPILE_SECONDS = {"tiles": 3.0, "tiles_packed": 6.0}
# a fit's time per multiply-add of its products on the recurrence gemm and on the
# register tiles (one epoch of 32-H-H-10 in batches of 64, H = 64 and 256: 1.9-2.1e-10
# and 2.9-4.8e-11 s, everything in the fit counted)
RECURRENCE_SECONDS_PER_MADD = 2.0e-10
TILES_SECONDS_PER_MADD = 3.5e-11
# the layers shared among threads (kernels/pool.py): the piece unit, the pooled unit, the
# layer unit and the workers to compile (asv_benchmarks: bench_cold_start), and the share
# of the ideal 1/threads of the products' time they reach (bench_threads)
POOL_COMPILE_SECONDS = 2.5
POOL_EFFICIENCY = 0.9
# per-sample SGD's wide layers shared among threads (kernels/sample_share.py): its units
# and the workers to compile, and the time per multiply-add they share (W4a, H = 1024)
SAMPLE_SHARE_COMPILE_SECONDS = 3.0
SAMPLE_SECONDS_PER_MADD = 2.0e-10
GENERAL_COMPILE_SECONDS = 4.0   # a general training entry (loops.py)
GENERATED_COMPILE_SECONDS = 3.0  # a kernel generated for one architecture
# the general entries take ~this per multiply-add of a small network (XOR: 21 samples x
# 37 parameters x 3 products per epoch), a generated kernel ~GENERATED_SPEEDUP x less
GENERAL_SECONDS_PER_MADD = 1.5e-9
GENERATED_SPEEDUP = 5.0
# Predictions (predictor): the general predict entry and its forward pass unit compile
# in ~1.2 s, a generated predict in ~0.6 s (the XOR net's, one CPU of the Zen 4 of
# docs/PERFORMANCE-HISTORY.md); a general call costs ~17 us more in Python (its work
# buffers, Net and passes), and its pass over the samples ~1.5e-10 s more per
# multiply-add (the XOR net, 100,000 samples: 1.8 against 1.2 ms)
GENERAL_PREDICT_COMPILE_SECONDS = 1.2
GENERATED_PREDICT_COMPILE_SECONDS = 0.6
GENERAL_PREDICT_CALL_SECONDS = 1.7e-5
PREDICT_SECONDS_SAVED_PER_MADD = 1.5e-10

# "auto": weigh compile time against work (above); "fastest": always the fastest kernel
# (benchmarks, which time the steady state); "general": never a generated kernel or the
# tiles (tests comparing paths).  FASTBP_KERNELS sets it at import.
POLICY = os.environ.get("FASTBP_KERNELS", "auto")
if POLICY not in ("auto", "fastest", "general"):
    raise ImportError(f"FASTBP_KERNELS={POLICY!r}: expected auto, fastest or general")

_lock = threading.Lock()
# the most settled plans kept (~1 KB each), the oldest dropped first: a program fitting
# one architecture to ever new sample counts (learning curves, partial_fit's chunks)
# must not grow memory with each one (a dropped plan is only weighed again); the memos
# of a fit's other decisions (_builds, _generated_for) keep as many
PLANS_CAP = 1024
_loaded = set()     # kernel keys compiled or loaded in this process
_on_disk = set()    # kernel keys whose marker this process has seen
_work_seen = {}     # kernel key -> work of the fits that could have used it, so far
# general entries whose compile a generated kernel was chosen to spare (plan_fit): the
# next architecture of that kind of fit pays its generated kernel's whole compile
_spared = set()
_work_written = {}  # kernel key -> monotonic time of its last write to disk
_work_unwritten = {}  # kernel key -> (its work file, total) counted since that write
# A fit too short to pay for a kernel adds its work to the count on disk at most this
# often (and when its process ends): writing a file took ~100 us, more than such a fit's
# training (a 64-sample epoch of a small network: 40 us)
WORK_WRITE_SECONDS = 1.0


@dataclass(frozen=True)
class Plan:
    """What runs a fit: ``kernel`` (the compiled training entry), its ``name`` (for
    History and the compile announcement), ``key`` (for the registry), the gemm unit
    (kernels/gemm.py: "tiles", "tiles_packed", "recurrence", or None when no layer uses
    products), the fit's mode and rule kind (kernels/loops.py), ``cap``, the samples per
    batch its Work must hold, and ``gradient``, whether it needs a gradient buffer."""
    kernel: object
    name: str
    key: tuple
    gemm: str | None
    mode: str
    rule: str
    cap: int
    gradient: bool
    could_generate: bool = False  # a generated kernel exists for this fit (not chosen)
    threads: int = 1  # that share the products (kernels/pool.py)
    passes: bool = False  # it calls the batch passes (kernels/passes.py)


# ----------------------------------------------------------------------- the registry
_dtype_names = {}  # numpy's dtype.name is a Python property: a fit asked it ~16 times


def dtype_name(dtype):
    """np.dtype(dtype).name ("float64", "float32"), remembered."""
    name = _dtype_names.get(dtype)
    if name is None:
        name = _dtype_names[dtype] = np.dtype(dtype).name
    return name


def _marker(key):
    # Numba keeps its cache per CPU name and features (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES)
    # (and per codegen_variant: bounds-checked code, say, is cached apart)
    variant = codegen_variant()
    setting = (key, cache_dir(), numba.config.CPU_NAME, numba.config.CPU_FEATURES, variant)
    path = _markers.get(setting)
    if path is None:
        features = (numba.config.CPU_FEATURES,) if numba.config.CPU_FEATURES else ()
        features += (variant,) if variant else ()
        stamp = "|".join(map(str, (key, kernel_sources_digest(), numba.__version__,
                                   numba.config.CPU_NAME or "host", sys.platform) + features))
        path = _markers[setting] = os.path.join(
            setting[1], "compiled", hashlib.sha256(stamp.encode()).hexdigest()[:24])
    return path


_markers = {}  # (key, cache folder, Numba's CPU name and features) -> its marker's path


def is_compiled(key):
    """Whether the kernel ``key`` is compiled in this process or, as far as fastbp knows,
    cached on disk (then it only loads: a fraction of a second)."""
    if key in _loaded or key in _on_disk or numba.config.DISABLE_JIT:
        return True
    now = time.monotonic()
    if now - _absent.get(key, -math.inf) < ABSENT_SECONDS:
        return False
    if os.path.exists(_marker(key)):
        _on_disk.add(key)  # a fit of a second is not held up by a file system call
        return True
    if len(_absent) >= PLANS_CAP:
        _absent.clear()
    _absent[key] = now
    return False


# A marker found missing is looked for again only after ABSENT_SECONDS: a predict asks
# for units of narrower forms that are seldom compiled, each a path from four
# environment variables and a file system call (40 of its 240 us through the
# scikit-learn wrapper).  A kernel another process compiles is seen that much later.
ABSENT_SECONDS = 1.0
_absent = {}  # kernel key -> monotonic time its marker was found missing


def is_loaded(key):
    """Whether the kernel ``key`` has run in this process (nothing left to load)."""
    return key in _loaded


def mark_compiled(key):
    """Record that the kernel ``key`` now exists compiled (in this process and on disk)."""
    if key in _loaded:  # (every fit marks its passes: no lock for what is known)
        return
    with _lock:
        if key in _loaded:
            return
        _loaded.add(key)
        _absent.pop(key, None)
    path = _marker(key)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(repr(key) + "\n")
    except OSError:  # a read-only cache: the next process compiles (or loads) again
        pass


def _worth(key, seconds_saved, compile_seconds):
    """Whether to use the faster kernel ``key``: compiled already, or this fit and the
    earlier ones that could have used it -- in this process and in earlier ones on this
    machine (counted in fastbp's cache folder) -- save at least its compile time.  So a
    script run again and again moves to the faster kernel once its runs have spent
    about a compilation's time without it."""
    if POLICY != "auto":
        return POLICY == "fastest"
    if is_compiled(key):
        return True
    with _lock:
        read_now = key not in _work_seen
        if read_now:
            _work_seen[key] = _read_work(key)
        total = _work_seen[key] + seconds_saved
        if total >= compile_seconds:
            return True
        _work_seen[key] = total
        now = time.monotonic()
        due = read_now or now - _work_written.get(key, -math.inf) >= WORK_WRITE_SECONDS
        path = _work_file(key)
        if due:
            _work_written[key] = now
            _work_unwritten.pop(key, None)
        else:
            _work_unwritten[key] = (path, total)
    if due:
        _write_work(path, total)
    return False


@atexit.register
def _write_pending_work():
    """The counts of work not written yet (WORK_WRITE_SECONDS), as the process ends: to
    the files they were counted for, in folders that still exist."""
    with _lock:
        pending = list(_work_unwritten.values())
        _work_unwritten.clear()
    for path, total in pending:
        if os.path.isdir(os.path.dirname(path)):
            _write_work(path, total)


def _forget_writes():
    """In a forked child: write its first count at once, and leave the parent's pending
    counts to the parent (a multiprocessing child ends without running atexit)."""
    _work_written.clear()
    _work_unwritten.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writes)


def _work_file(key):
    return _marker(key) + ".work"


def _read_work(key):
    try:
        with open(_work_file(key), encoding="utf-8") as fh:
            value = float(fh.read())
    except (OSError, ValueError):
        return 0.0
    return value if value >= 0 else 0.0  # nan and negatives count nothing


def _write_work(path, seconds):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(repr(float(seconds)))
    except OSError:  # a read-only cache: the count stays in this process
        pass


# ---------------------------------------------------------------------- matrix products
_uses_products = getattr(B.uses_products, "py_func", B.uses_products)  # in Python


def product_layers(sizes, nb_max, product_min_work=PRODUCT_MIN_WORK):
    """The layers whose products can go to gemm with batches of up to nb_max samples
    (kernels/batch.py: uses_products), and the multiply-adds of their products per
    sample (forward, back-propagated delta, weight gradient)."""
    layers, madds = [], 0
    for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if _uses_products(a, b, nb_max, product_min_work):
            layers.append(l)
            madds += (3 if l > 0 else 2) * a * b
    return layers, madds


def _shareable(sizes, dtype, nb_max):
    """Whether a product of some layer, in batches of nb_max samples, reaches
    pool.SHARE_MIN_LAYER_WORK multiply-adds of ``dtype`` (below, the threads cost more
    than they save; in a fit that shares, each product of at least pool.SPLIT_MIN_WORK
    is shared); the multiply-adds of the products per sample."""
    return _shareable_of(tuple(sizes), np.dtype(dtype), int(nb_max))


@functools.lru_cache(maxsize=PLANS_CAP)
def _shareable_of(sizes, dtype, nb_max):
    """_shareable, remembered: every fit on a machine of several cores asks."""
    layers, madds = product_layers(sizes, nb_max)
    least = P.SHARE_MIN_LAYER_WORK[dtype_name(dtype)]
    return any(sizes[l] * sizes[l + 1] * nb_max >= least for l in layers), madds


def product_threads(sizes, dtype, nb_max, samples_seen, threads):
    """How many threads share the products of a fit like choose_gemm's (1: none): all
    ``threads`` when some product is large enough to share (_shareable) and the pool is
    compiled or saves its compile time."""
    shareable, madds = _shareable(sizes, dtype, nb_max)
    if threads <= 1 or not P.AVAILABLE or not shareable:
        return 1
    saved = (samples_seen * madds * TILES_SECONDS_PER_MADD
             * (1.0 - 1.0 / (threads * POOL_EFFICIENCY)))
    return threads if _worth(("gemm", "pooled", dtype_name(dtype)), saved,
                             POOL_COMPILE_SECONDS) else 1


def sample_threads(sizes, dtype, samples_seen, threads):
    """How many threads share the wide layers of a per-sample fit of plain SGD (1: none):
    all ``threads`` when some layer is wide enough (sample_share.layer_shares) and the
    units are compiled or save their compile time."""
    shared = SS.shared_weights(sizes, threads) if threads > 1 and P.AVAILABLE else []
    if not shared:
        return 1
    saved = (samples_seen * 3 * sum(shared) * SAMPLE_SECONDS_PER_MADD
             * (1.0 - 1.0 / (threads * POOL_EFFICIENCY)))
    # the threads run on the kernel one thread would (generated or general), which
    # carries their code for such a network: only the units are added
    return threads if _worth(("sample", "shared", dtype_name(dtype)), saved,
                             SAMPLE_SHARE_COMPILE_SECONDS) else 1


def share_samples(layout, dtype, threads):
    """The ProductThreads (fastbp/_threads.py) that share the wide layers of a per-sample
    fit among ``threads`` threads; None for one thread.  Compiles the units and the
    workers on first use."""
    if threads <= 1:
        return None
    from ._threads import ProductThreads
    shared = ProductThreads(threads, 0, np.dtype(dtype),
                            per_sample=(layout.n_params, max(layout.sizes[:-1])))
    mark_compiled(("sample", "shared", dtype_name(dtype)))
    return shared


def choose_gemm(sizes, dtype, nb_max, samples_seen):
    """The gemm unit for a fit whose batches hold up to nb_max samples and that runs
    ``samples_seen`` samples through the network in all: None when no layer uses
    products, the tiles when they are compiled or save their compile time, else the
    recurrence (the same numbers)."""
    layers, madds = product_layers(sizes, nb_max)
    if not layers:
        return None
    saved = samples_seen * madds * (RECURRENCE_SECONDS_PER_MADD - TILES_SECONDS_PER_MADD)
    kind = G.tiles_kind(sizes, dtype)
    name = dtype_name(dtype)
    if kind == "tiles" and is_compiled(("gemm", "tiles_packed", name)) and not is_compiled(
            ("gemm", "tiles", name)):
        kind = "tiles_packed"  # compiled already: it serves any network (the same numbers)
    return kind if _worth(("gemm", kind, name), saved, TILES_COMPILE_SECONDS[kind]) \
        else "recurrence"


def gemm_address(kind, dtype):
    """The address of the gemm unit ``kind`` (0 for None), compiled on first use."""
    if kind is None:
        return 0
    address = G.unit_address(kind, dtype)
    mark_compiled(("gemm", kind, dtype_name(dtype)))
    return address


def share_products(gemm, dtype, threads):
    """The ProductThreads (fastbp/_threads.py) that share a fit's products, computed by
    the gemm unit ``gemm``, among ``threads`` threads; None for one thread or no
    products.  Compiles the pooled unit and the workers on first use."""
    if gemm is None or threads <= 1:
        return None
    from ._threads import ProductThreads  # (after the return: an import costs a fit 1 us)
    shared = ProductThreads(threads, gemm_address(gemm, dtype), np.dtype(dtype))
    mark_compiled(("gemm", "pooled", dtype_name(dtype)))
    return shared


def layer_form(sizes, nbs, sparse=False, product_min_work=PRODUCT_MIN_WORK):
    """The form of the batch passes (kernels/batch.py: LAYERS) that calls with batches
    of nb samples, for each nb in ``nbs`` (0: no such batch), can run: ALL_PRODUCTS when
    every layer of every such batch goes through the products (batch.uses_products),
    ALL_LOOPS when none does, else BY_SIZE.  ``sparse``: the first layer is
    kernels/sparse.py's, not the passes'."""
    layers = product_sizes(sizes, sparse)
    ways = {_uses_products(a, b, nb, product_min_work)
            for a, b in zip(layers[:-1], layers[1:]) for nb in nbs if nb > 0}
    if ways == {True}:
        return B.ALL_PRODUCTS
    return B.ALL_LOOPS if True not in ways else B.BY_SIZE


def net_codes(act_codes, loss_code):
    """The activation and loss codes a Net's batch passes may be compiled for
    (kernels/passes.py: Build): (hidden, output, loss), hidden the code every hidden
    layer shares -- ANY when they differ, IDENTITY (never read) when there is none."""
    hidden = {int(code) for code in act_codes[:-1]}
    if not hidden:
        hidden = {R.IDENTITY}
    return (hidden.pop() if len(hidden) == 1 else B.ANY), int(act_codes[-1]), int(loss_code)


def passes_build(dtype, needed, pooled, sizes, nbs, act_codes, loss_code, sparse=False):
    """What the batch passes given to calls like layer_form's are compiled for
    (kernels/passes.py: Build): their layers' form and the Net's codes (net_codes) when
    those units are compiled, or when no broader unit that serves the calls is; else
    that broader one -- a loaded unit serves at once, where the narrower one would be
    one more compilation.  With POLICY "fastest" always the narrow ones (FASTBP_KERNELS:
    the fastest kernels, whatever the cache holds)."""
    wanted, broader = _builds(tuple(sizes), tuple(nbs), bool(sparse),
                              tuple(np.asarray(act_codes).tolist()), int(loss_code))
    if POLICY == "fastest" or passes_compiled(dtype, needed, pooled, wanted):
        return wanted
    return next((build for build in broader if passes_compiled(dtype, needed, pooled, build)),
                wanted)


@functools.lru_cache(maxsize=PLANS_CAP)
def _builds(sizes, nbs, sparse, act_codes, loss_code):
    """passes_build's wanted Build and the broader ones, in its order of preference;
    remembered (every fit asks)."""
    wanted = PS.Build(layer_form(sizes, nbs, sparse), *net_codes(act_codes, loss_code))
    return wanted, (wanted._replace(form=B.BY_SIZE), PS.Build(wanted.form), PS.Build())


def batch_passes(dtype, needed=PS.ALL, pooled=False, build=PS.Build()):
    """The batch passes for ``dtype`` (kernels/passes.py), the ``needed`` ones compiled
    on first use: what a Work carries for the kernels that call them (Plan.passes: a
    fit's batches need them all; predictions PS.PREDICT, evaluations PS.EVALUATE);
    ``pooled`` for a Net with a thread pool (share_products); ``build`` what they are
    compiled for (passes_build; Build() serves any call)."""
    memo = (np.dtype(dtype), needed, pooled, build)
    given = _passes_given.get(memo)
    if given is None:
        keys = [passes_key(dtype, which, pooled, build) for which in needed]
        given = _passes_given[memo] = (PS.for_dtype(dtype, needed, pooled, build), keys)
    passes, keys = given
    if not _loaded.issuperset(keys):
        for key in keys:
            mark_compiled(key)
    return passes


# (dtype, needed, pooled, build) -> the addresses batch_passes gave (compiled, they stay:
# one array for every Work that asks for them; the kernels only read it) and their keys
_passes_given = {}


@functools.lru_cache(maxsize=None)
def passes_key(dtype, which, pooled=False, build=PS.Build()):
    """The registry's key of one batch pass (passes.unit_key); remembered, as every fit
    asks for it several times."""
    dtype, which, pooled, build = PS.unit_key(dtype, which, pooled, build)
    name = PS.Passes._fields[which] + ("_pooled" if pooled else "")
    form_part = (("form", build.form),) if build.form != B.BY_SIZE else ()
    codes = tuple((field, code) for field, code in zip(build._fields[1:], build[1:])
                  if code != B.ANY)
    return ("pass", name, dtype_name(dtype)) + form_part + codes


def passes_compiled(dtype, needed=PS.ALL, pooled=False, build=PS.Build()):
    """Whether the ``needed`` batch passes are compiled (or cached on disk)."""
    return all(is_compiled(passes_key(dtype, which, pooled, build)) for which in needed)


def make_net(layout, act_codes, loss_code, dtype, gemm, shared=None):
    """The kernels' Net for a model, with the gemm unit ``gemm`` (None: no products),
    its products shared by the threads ``shared`` (share_products) when given.  BLAS
    takes the largest products when numpy's OpenBLAS runs them on enough threads
    (config.BLAS_THREADED_MIN_WORK)."""
    blas = 0
    if gemm is not None and G.blas_threads() >= BLAS_MIN_THREADS:
        blas = G.blas()[0][np.dtype(dtype)]
    unit = gemm_address(gemm, dtype) if shared is None else P.unit_address(dtype)
    # writable copies where a model's arrays came read-only (unpickled from a read-only
    # memory map): the batch passes are compiled for a Net of writable arrays
    sizes_arr, w_off, b_off, act_codes = (
        a if a.dtype == np.int64 and a.flags.c_contiguous and a.flags.writeable
        else np.require(a, np.int64, ["C", "W"])  # (the check alone: 0.2 us, not 1)
        for a in (layout.sizes_arr, layout.w_off, layout.b_off, act_codes))
    return O.Net(sizes_arr, w_off, b_off, act_codes, int(loss_code),
                 PRODUCT_MIN_WORK, unit, blas, BLAS_THREADED_MIN_WORK,
                 0 if shared is None else shared.address)


# --------------------------------------------------------------------- training loops
def fit_mode(n, batch, shuffle, loss_code):
    """"full", "mini" or "sample" (kernels/loops.py) for a fit of n samples."""
    if batch >= n and not shuffle:
        return "full"
    if batch == 1 and loss_code != R.CROSS_ENTROPY:
        return "sample"
    return "mini"


def rule_kind(rule, mode):
    """"fused", "plain" or "stateful" (kernels/loops.py).  Batched plain SGD takes the
    step inside the backward pass ("fused": no gradient buffer, one pass less over the
    parameters per batch); on the loops and the tiles it rounds as the separate step
    does, in either dtype (the learning rate is in the model's dtype, kernels/loops.py).
    Products large enough for BLAS may round the step with the sum, as BLAS's gemm
    does: those results depend on the BLAS anyway."""
    if not O.is_plain(rule):
        return "stateful"
    return "fused" if mode != "sample" else "plain"


_MODE_NAMES = {"full": "full-batch", "mini": "mini-batch", "sample": "per-sample"}
_RULE_NAMES = {"fused": "plain SGD", "plain": "plain SGD", "stateful": "momentum/Adam/L2"}


_plans = {}  # settled plans: the fastest kernels there are, compiled: nothing to weigh


def plan_fit(model, n, batch, shuffle, rule, validating, epochs, n_val=0, weighted=False,
             threads=1, sparse=False):
    """The Plan of one MLP fit (or one model of an Ensemble) of ``epochs`` epochs over n
    samples in batches of ``batch``; ``weighted``: with sample weights; ``threads``: the
    threads its products may use (_threads.EVERY: every core available, counted only
    when some product could be shared); ``sparse``: the inputs are sparse rows (their
    first layer is kernels/sparse.py's, in the mini-batch entries: batches of one and
    full batches included)."""
    if threads != 1 and not _could_share(model, n, batch, shuffle,
                                         n_val if validating else 0, sparse):
        threads = 1  # one plan (and one memo) whatever n_jobs asks for
    elif threads == T.EVERY:
        threads = T.available()
    memo = (model._layout.sizes, model._layout.bias, tuple(model._act_codes.tolist()),
            model._loss_code, model.dtype.char, n, batch, bool(shuffle), O.is_plain(rule),
            bool(validating), n_val, bool(weighted), POLICY, GEN.ENABLED, threads,
            bool(sparse))
    plan = _plans.get(memo)
    if plan is None:
        plan = _plan_fit(model, n, batch, shuffle, rule, validating, epochs, n_val, weighted,
                         threads, sparse)
        # the threads this plan's mode would use: a plan on fewer threads than asked is
        # settled only when those are compiled (then it was not for their cost), not when
        # the other kind is (a longer fit may yet pay for them)
        share_kind = ("sample", "shared") if plan.mode == "sample" else ("gemm", "pooled")
        share_key = share_kind + (dtype_name(model.dtype),)
        if plan.key in _loaded and plan.gemm in (None,) + G.TILES and (
                plan.gemm is None or ("gemm", plan.gemm, dtype_name(model.dtype)) in _loaded
        ) and (plan.key[0] == "generated" or not plan.could_generate) and (
                plan.threads == threads or share_key in _loaded):
            with _lock:
                while len(_plans) >= PLANS_CAP:
                    del _plans[next(iter(_plans))]
                _plans[memo] = plan
    return plan


def _could_share(model, n, batch, shuffle, n_val, sparse=False):
    """Whether a fit like plan_fit's has a product large enough for threads to share
    (without asking whether the pool is worth compiling)."""
    if not sparse and fit_mode(n, batch, shuffle, model._loss_code) == "sample":
        return bool(SS.shared_weights(model._layout.sizes, 2))
    return _shareable(product_sizes(model._layout.sizes, sparse), model.dtype,
                      max(min(batch, n), n_val))[0]


def product_sizes(sizes, sparse):
    """The layer sizes whose products may go to gemm: all, or with sparse inputs all but
    the first layer (kernels/sparse.py reads its rows)."""
    return tuple(sizes[1:]) if sparse else tuple(sizes)


def _plan_fit(model, n, batch, shuffle, rule, validating, epochs, n_val, weighted, threads,
              sparse=False):
    layout = model._layout
    dtype = np.dtype(model.dtype)
    mode = "mini" if sparse else fit_mode(n, batch, shuffle, model._loss_code)
    kind = rule_kind(rule, mode)
    cap = min(batch, n)
    nb_max = max(cap if mode != "sample" else 1, n_val if validating else 0)
    sizes = product_sizes(layout.sizes, sparse)
    gemm = choose_gemm(sizes, dtype, nb_max, epochs * (n + n_val))
    if mode == "sample":
        threads = 1 if kind != "plain" else sample_threads(layout.sizes, dtype, epochs * n,
                                                            threads)
    elif gemm is None:
        threads = 1
    else:
        threads = product_threads(sizes, dtype, nb_max, epochs * (n + n_val), threads)
    # the recurrence is named: it is what explains slower epochs until the tiles pay
    name = (f"{_MODE_NAMES[mode]} {_RULE_NAMES[kind]}" + (", validating" if validating else "")
            + f" ({dtype_name(dtype)}" + (", sparse inputs" if sparse else "")
            + (", products on the recurrence" if gemm == "recurrence" else "")
            + (f", on {threads} threads)" if threads > 1 else ")"))
    general_key = ("train", mode, kind, bool(validating), dtype_name(dtype)) + (
        ("sparse",) if sparse else ())
    general = Plan(L.trainer(mode, kind, validating, sparse), name, general_key, gemm, mode, kind, cap,
                   mode != "sample" and kind != "fused", threads=threads,
                   passes=mode != "sample" or bool(validating))
    if sparse:
        return general  # the generated kernels read dense rows
    found = _generated_for(layout.sizes, tuple(model._act_codes.tolist()), layout.bias,
                           model._loss_code, mode, kind, bool(validating), dtype_name(dtype),
                           n, bool(weighted), GEN.ENABLED)
    if found is None:
        return general
    generated, arch, key = found
    saved = (3.0 * epochs * n * layout.n_params * GENERAL_SECONDS_PER_MADD
             * (1.0 - 1.0 / GENERATED_SPEEDUP))
    # compiling the generated kernel instead of a general entry not compiled yet costs
    # only the difference -- once: a second architecture of this kind of fit weighs its
    # kernel's whole compile, since the general entry, compiled once, would serve it and
    # every later one (a sweep over shapes compiled a kernel per shape, seconds each)
    spare = not is_compiled(general_key) and general_key not in _spared
    extra = GENERATED_COMPILE_SECONDS - (GENERAL_COMPILE_SECONDS if spare else 0.0)
    if not _worth(key, saved, extra):
        return Plan(general.kernel, name, general_key, gemm, mode, kind, cap, general.gradient,
                    True, threads, general.passes)
    if spare and not is_compiled(key):
        _spared.add(general_key)
    return Plan(GEN.trainer(generated, *arch),
                f"{name}, generated for {'-'.join(map(str, layout.sizes))}", key, gemm,
                mode, kind, GEN.padded(cap, dtype) if generated in GEN.FULL_KINDS else cap,
                generated in GEN.FULL_KINDS, threads=threads)


@functools.lru_cache(maxsize=PLANS_CAP)
def _generated_for(sizes, acts, bias, loss, mode, kind, validating, dtype, n, weighted,
                   enabled):
    """(kind, arch, key) of the generated kernel a fit could run on (GEN.kind_for,
    GEN.trainer's arguments, GEN.key), or None; remembered: a fit that is not settled
    (_plans) asks again each time.  ``enabled``: GEN.ENABLED, which tests switch."""
    generated = GEN.kind_for(sizes, acts, loss, mode, kind, validating, dtype, n,
                             PRODUCT_MIN_WORK)
    if generated is None:
        return None
    arch = (sizes, acts, bias, loss, weighted,
            "stateful" if kind == "stateful" else "plain", dtype)
    return generated, arch, GEN.key(generated, *arch)


# Below this many samples a generated kernel's rows (padded to whole vectors,
# generate.padded) are mostly padding and
# the lanes (SIMD across models) train an ensemble faster; above, one model at a time
# on a generated kernel is faster (the XOR net's 21 samples).
GENERATED_OVER_LANES_SAMPLES = 16


def use_lanes(plan, n):
    """Whether an ensemble eligible for the lanes (kernels/lanes.py) should use them,
    given the Plan its models would run on one at a time."""
    return not (plan.key[0] == "generated" and n >= GENERATED_OVER_LANES_SAMPLES)


def eval_gemm(model, n, passes=1, sparse=False):
    """The gemm unit of ``passes`` forward passes (predict, loss, gradient) over n
    samples (``sparse``: sparse inputs)."""
    return choose_gemm(product_sizes(model._layout.sizes, sparse), model.dtype, n,
                       n * passes)


@dataclass(frozen=True)
class Evaluator:
    """The generated loss and gradient an L-BFGS fit evaluates (eval_generated)."""
    entry: object  # kernels.loops.loss_and_gradient's arguments and numbers
    key: tuple     # its compile marker
    cap: int       # the rows of its work: n padded (generate.padded)
    name: str      # what History.kernel adds ("generated for 2-4-4-1")


def eval_generated(model, n, weighted, evaluations):
    """The generated loss and gradient (kernels/generate.py: evaluator) of ``evaluations``
    full-batch evaluations over n dense samples, or None: for networks a full-batch fit
    would train on a generated kernel, when it is compiled or the evaluations (with
    those of earlier fits) save its compile time (_worth).  Its numbers are the general
    entry's, a few times sooner: each L-BFGS iteration evaluates once or twice."""
    layout = model._layout
    dtype = np.dtype(model.dtype)
    kind = GEN.kind_for(layout.sizes, model._act_codes, model._loss_code, "full", "plain",
                        False, dtype, n, PRODUCT_MIN_WORK)
    if kind not in GEN.FULL_KINDS:
        return None
    arch = (layout.sizes, model._act_codes, layout.bias, model._loss_code, bool(weighted))
    key = ("evaluate",) + GEN.key(kind, *arch, "plain", dtype_name(dtype))[1:]
    saved = (3.0 * evaluations * n * layout.n_params * GENERAL_SECONDS_PER_MADD
             * (1.0 - 1.0 / GENERATED_SPEEDUP))
    if not _worth(key, saved, GENERATED_COMPILE_SECONDS):
        return None
    return Evaluator(GEN.evaluator(*arch, dtype_name(dtype), kind), key, GEN.padded(n, dtype),
                     f"generated for {'-'.join(map(str, layout.sizes))}")


def predictor(model, nb, samples, sparse=False):
    """(predict, key): the generated predict (kernels/generate.py: predictor) for a
    network it takes (generate.predicts; dense inputs) where the general entry
    (kernels/loops.py: predict) would run batches of nb samples, and its compile marker;
    or None: the general entry.  The same numbers.  ``samples``: how many the call
    predicts (the outputs of every model of an Ensemble).
    It is used when compiled, or when its compile is repaid as the generated training
    kernels' is (_worth): a first prediction in a process whose general entry is not
    compiled spares that entry's compile, about twice this one's; later architectures
    weigh their own compile against what their predictions save -- the general entry's
    Python around each call (its work buffers, Net and passes: most of a small
    prediction's time) and a slower pass over the samples."""
    layout = model._layout
    acts = tuple(model._act_codes.tolist())
    dtype = dtype_name(model.dtype)
    if sparse or not _predicts(layout.sizes, acts, dtype, nb, GEN.ENABLED):
        return None
    key = GEN.predict_key(layout.sizes, acts, layout.bias, dtype)
    general_key = general_predict_key(dtype)
    spare = not is_compiled(general_key) and general_key not in _spared
    saved = (GENERAL_PREDICT_CALL_SECONDS
             + samples * layout.n_params * PREDICT_SECONDS_SAVED_PER_MADD)
    extra = (GENERATED_PREDICT_COMPILE_SECONDS
             - (GENERAL_PREDICT_COMPILE_SECONDS if spare else 0.0))
    if not _worth(key, saved, extra):
        return None
    if spare and not is_compiled(key):
        _spared.add(general_key)
    return GEN.predictor(layout.sizes, acts, layout.bias, dtype), key


@functools.lru_cache(maxsize=PLANS_CAP)
def _predicts(sizes, acts, dtype, nb, enabled):
    """generate.predicts, remembered (every prediction asks); ``enabled``: GEN.ENABLED,
    which tests switch."""
    return GEN.predicts(sizes, acts, dtype, nb, PRODUCT_MIN_WORK)


def general_predict_key(dtype):
    """The compile marker of the general predict entry for ``dtype`` (predictor)."""
    return ("predict", dtype_name(dtype))


def eval_threads(model, n, threads, passes=1, sparse=False):
    """The threads that share the products of ``passes`` such passes (1: none)."""
    return product_threads(product_sizes(model._layout.sizes, sparse), model.dtype, n,
                           n * passes, threads)
