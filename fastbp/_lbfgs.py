"""Full-batch L-BFGS: SciPy's L-BFGS-B over the compiled loss and gradient.

``MLP.fit(..., optimizer="lbfgs")`` and ``fastbp.sklearn``'s ``solver="lbfgs"`` both come
here.  SciPy drives the iterations (it is an optional dependency, imported when a fit
asks for L-BFGS); every evaluation of the objective is one call of the compiled
``kernels.loops.loss_and_gradient`` over the whole training set -- for a narrow
network, once the dispatcher finds it worth its compile, of the loss and gradient
generated for its architecture, the same numbers (kernels/generate.py: evaluator) --
into buffers allocated once per fit.  The parameters SciPy proposes are handed to the
kernel as they are (float64 models) or cast into one preallocated vector (float32
models): nothing is validated or allocated per evaluation except the gradient SciPy
keeps.

The objective, in terms of the model's loss L (fastbp's definition, sample weights
included) and its gradient g:

    f(p)  = loss_scale * L(p) + (l2 / 2) * sum of the squared weights (not biases)
    df/dp = grad_scale * g(p) + l2 * weights (0 on biases)

``MLP.fit`` uses loss_scale = grad_scale = 1.  scikit-learn's MLPs define their L-BFGS
objective with sums over outputs where fastbp's losses average, and for squared error
with a gradient k times that of the loss it reports (k outputs); the wrapper reproduces
that through the two scales (fastbp/sklearn.py).
"""
import ctypes
import functools
import importlib.util
import inspect
import math
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numba
import numpy as np

from . import _config as C
from . import _validation as V
from . import _dispatch as D
from . import _threads as T
from .kernels import loops as L
from .kernels import options as O
from .kernels import passes as PS
from ._progress import make_bar
from ._sparse import Rows, max_abs as max_abs_inputs
from .errors import DivergenceError
from .history import History, records_cap

# what MLP.fit's L-BFGS path reads; every other keyword must keep its default
_USED = {"self", "X", "y", "epochs", "progress", "on_divergence", "optimizer", "l2",
         "sample_weight", "tol", "max_fun", "n_jobs"}
TOL = 1e-4  # scikit-learn's defaults
MAX_FUN = 15000
# evaluations of the loss and gradient a fit is expected to make, to weigh compile
# time, when its iteration budget is not known; a fit counts its budget (about one
# evaluation per iteration: load_digits at scikit-learn's 200 iterations made 208)
EXPECTED_EVALUATIONS = 100
# an Objective that took this long to build compiled something (loading its kernels
# from the cache takes milliseconds): its garbage is collected before the iterations
COMPILED = 0.25


_NO_SCIPY = ('optimizer="lbfgs" (solver="lbfgs") needs SciPy, which is not installed; '
             'install it with pip install "fastbp[lbfgs]" (or pip install scipy)')


def require_scipy():
    """The ImportError of a missing SciPy, before any work, without importing it: the
    import takes a noticeable part of a second, in which Ctrl-C should interrupt the fit
    (train imports it) rather than escape from fit's argument checks."""
    try:
        found = importlib.util.find_spec("scipy") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ImportError(_NO_SCIPY)


def scipy_minimize():
    """scipy.optimize.minimize, or an ImportError that says how to get it."""
    try:
        from scipy.optimize import minimize
    except ImportError as exc:
        raise ImportError(_NO_SCIPY) from exc
    return minimize


def _scipy_version():
    import scipy
    return tuple(int(p) for p in scipy.__version__.split(".")[:2] if p.isdigit())


class StartNotFinite(Exception):
    """The loss or gradient at the starting parameters is not finite: SciPy's line
    search cannot start from there (with f = inf it even accepts every step)."""


class Objective:
    """f(x) -> (loss, gradient) for SciPy, with the buffers of one fit.

    model: the fastbp.MLP (its parameters are not touched); x (n, n_in), y (n, n_out):
    the data as the kernels take them (fastbp/_validation.py: kernel_ready); sw (n,)
    sample weights in the model dtype or empty.  The first call raises StartNotFinite
    if its loss or gradient is not finite.  This runs once per evaluation, and on the
    tutorials' networks the kernel takes microseconds (XOR: ~4 us, the whole call ~6),
    so it makes no checks and no allocation beyond the gradient it returns.
    """

    def __init__(self, model, x, y, sw, l2=0.0, loss_scale=1.0, grad_scale=1.0, threads=1,
                 evaluations=EXPECTED_EVALUATIONS):
        lay = model._layout
        n = x.shape[0]
        self.grad = np.zeros(lay.n_params, dtype=model.dtype)
        sparse = isinstance(x, Rows)
        # a narrow network: the loss and gradient generated for its architecture
        self.generated = None if sparse else D.eval_generated(model, n, sw.shape[0] > 0,
                                                              evaluations)
        if self.generated is not None:
            gemm, self.shared = None, None
            self.work = O.make_work(lay.sizes_arr, 0, self.generated.cap, n, model.dtype,
                                    model._keep_z, gradient=False)
            self.entry = self.generated.entry
        else:
            # the wide layers' products on ``threads`` threads (the same bits), counting
            # on the fit's ``evaluations`` to pay for the compilations
            gemm = D.eval_gemm(model, n, passes=evaluations, sparse=sparse)
            threads = D.eval_threads(model, n, threads, passes=evaluations, sparse=sparse)
            self.shared = D.share_products(gemm, model.dtype, threads)
            self.work = O.make_work(lay.sizes_arr, 0, n, n, model.dtype, True, sparse=sparse,
                                    passes=model._eval_passes(PS.ALL, (n,), sparse,
                                                              pooled=self.shared is not None))
            self.entry = L.loss_and_gradient_rows if sparse else L.loss_and_gradient
        self.net = D.make_net(lay, model._act_codes, model._loss_code, model.dtype, gemm,
                              self.shared)
        self.data = O.Data(model._kernel_inputs(x), y, sw)
        if not sparse:  # the dense entry takes the fields as plain tuples (kernels/loops.py)
            self.net, self.data, self.work = tuple(self.net), tuple(self.data), tuple(self.work)
        # float64 models read SciPy's x directly; float32 ones a cast copy of it
        self.cast = None if model.dtype == np.float64 else np.empty(lay.n_params, model.dtype)
        self.l2 = float(l2)
        # 1 on weights, 0 on biases: what L2 penalizes (scikit-learn: coefs_ only)
        self.mask = None
        if self.l2 != 0.0:
            self.mask = np.zeros(lay.n_params)
            for w in lay.weight_views(self.mask):
                w[...] = 1.0
        self.loss_scale = float(loss_scale)
        self.grad_scale = float(grad_scale)
        self.first = True
        self.threads = 1 if self.shared is None else threads
        self.dtype = model.dtype

    def compile(self):
        """Compile (or load from the cache) the loss-and-gradient entry for this fit's
        arguments now, so that the first evaluation runs it: a first fit's compile is
        then timed apart from the iterations (History.compile_seconds), as every fit's
        is.  Nothing to do as plain Python (NUMBA_DISABLE_JIT)."""
        if not hasattr(self.entry, "compile"):
            return
        params = self.cast if self.cast is not None else np.empty(len(self.grad))
        args = (params, self.net, self.data, self.grad, self.work, False)
        self.entry.compile(tuple(numba.typeof(a) for a in args))
        if self.generated is not None:
            D.mark_compiled(self.generated.key)

    def kernel_name(self):
        """What History.kernel says of an L-BFGS fit."""
        where = f", products on {self.threads} threads" if self.threads > 1 else ""
        if self.generated is not None:
            where = f", {self.generated.name}"
        return f"L-BFGS loss and gradient ({np.dtype(self.dtype).name}{where})"

    def __call__(self, x):
        params = x
        if self.cast is not None:
            self.cast[...] = x
            params = self.cast
        # after the first call the work holds the data (loops.loss_and_gradient)
        gathered = not self.first
        if self.shared is None:
            f = self.entry(params, self.net, self.data, self.grad, self.work, gathered)
        else:
            with self.shared.running():
                f = self.entry(params, self.net, self.data, self.grad, self.work, gathered)
        f *= self.loss_scale
        # a new array each call: SciPy keeps the gradient it was given
        if self.grad_scale == 1.0:
            g = self.grad.astype(np.float64)
        else:
            g = np.multiply(self.grad, self.grad_scale, dtype=np.float64)
        if self.mask is not None:
            w = x * self.mask
            f += 0.5 * self.l2 * V.sum_of_squares(w)
            w *= self.l2
            g += w
        if self.first:
            self.first = False
            if not (math.isfinite(f) and np.isfinite(g).all()):
                raise StartNotFinite
        return f, g


@contextmanager
def scipy_blas_on_one_thread(active=True):
    """Within the block, the OpenBLAS that SciPy bundles runs on the calling thread
    (where it has more, and ``active``).  L-BFGS-B does its vector arithmetic on the
    parameters through it, and a threaded call leaves its worker threads spinning for
    about 0.1 s -- through the next evaluation, on the CPUs the fit's own threads are
    pinned to: a 32-256-256-10 fit of 30 iterations on two threads took 6.8 s against
    5.5 s on one, and 3.1 s with SciPy's BLAS on one thread (OPENBLAS_NUM_THREADS=1).
    Its thread count is put back after the block, however it ends."""
    threads = _scipy_openblas() if active else None
    before = threads[0]() if threads is not None else 1
    if before > 1:
        threads[1](1)
    try:
        yield
    finally:
        if before > 1:
            threads[1](before)


@functools.lru_cache(maxsize=1)
def _scipy_openblas():
    """(get_num_threads, set_num_threads) of the OpenBLAS bundled with SciPy (in the
    scipy.libs folder of its wheels), or None: another BLAS, or none found.  Looked up
    once."""
    import scipy
    folder = Path(scipy.__file__).resolve().parent.parent / "scipy.libs"
    for path in sorted(folder.glob("*openblas*")) if folder.is_dir() else ():
        try:
            lib = ctypes.CDLL(str(path))
            get = lib.scipy_openblas_get_num_threads
            put = lib.scipy_openblas_set_num_threads
        except (OSError, AttributeError):
            continue
        get.restype, get.argtypes = ctypes.c_int, []
        put.restype, put.argtypes = None, [ctypes.c_int]
        return get, put
    return None


def minimize(objective, x0, max_iter, max_fun, tol, on_iteration=None, iprint=-1,
             via_scipy_minimize=False):
    """SciPy's L-BFGS-B from x0 with scikit-learn's options (maxiter, maxfun, gtol = tol;
    ftol SciPy's default).  ``objective(x)`` returns (loss, gradient);
    ``on_iteration(x, f)`` is called after each iteration with SciPy's current iterate
    (copy x to keep it).  Returns an OptimizeResult (x, fun, nit, nfev, status, message).

    With SciPy >= 1.15 this drives SciPy's L-BFGS-B routine (``_lbfgsb.setulb``)
    directly, with the loop ``scipy.optimize.minimize`` runs around it, step for step:
    the results are bit-identical (tests/test_lbfgs.py checks it), and an evaluation
    costs ~12 us on the XOR network instead of ~33 us, most of which was minimize's
    bookkeeping (copying and comparing x, wrapping the function).  Older SciPy, a
    routine whose signature changed, or ``via_scipy_minimize`` go through
    ``scipy.optimize.minimize(method="L-BFGS-B")`` itself.
    """
    if not via_scipy_minimize and _scipy_version() >= (1, 15):
        try:
            return _setulb_loop(objective, x0, max_iter, max_fun, tol, on_iteration)
        except _SetulbChanged:
            pass
    scipy_min = scipy_minimize()
    options = {"maxfun": int(max_fun), "maxiter": int(max_iter), "gtol": float(tol)}
    if _scipy_version() < (1, 15):  # later versions deprecate iprint (and print nothing)
        options["iprint"] = iprint
    callback = None
    if on_iteration is not None:
        def callback(intermediate_result):
            on_iteration(intermediate_result.x, float(intermediate_result.fun))
    # The loss and the gradient as two functions, the gradient the one computed with the
    # loss: SciPy asks for both at each point, the loss first.  jac=True would wrap the
    # objective in SciPy's memoizer, which compares and copies x twice more.
    last = {}

    def loss(x):
        f, last["g"] = objective(x)
        return f

    def gradient(x):
        return last["g"]

    return scipy_min(loss, np.array(x0, dtype=np.float64), method="L-BFGS-B",
                     jac=gradient, options=options, callback=callback)


class _SetulbChanged(Exception):
    """SciPy's L-BFGS-B routine does not take the arguments of SciPy 1.15-1.17."""


_FTOL = 2.2204460492503131e-09  # minimize's default for L-BFGS-B (scikit-learn's too)
_MAXCOR = 10
_MAXLS = 20


def _setulb_loop(objective, x0, max_iter, max_fun, tol, on_iteration):
    """scipy.optimize._lbfgsb_py._minimize_lbfgsb without bounds, as in SciPy 1.15-1.17:
    the same routine, the same arrays, the same stopping rules.  Like its
    ScalarFunction, a point equal to the last one evaluated is not evaluated again
    (that decides the count max_fun limits)."""
    from scipy.optimize import OptimizeResult
    try:
        from scipy.optimize import _lbfgsb
        from scipy.optimize._lbfgsb_py import status_messages, task_messages
    except ImportError as exc:
        raise _SetulbChanged from exc
    x = np.array(x0, dtype=np.float64).ravel()
    n = x.shape[0]
    m = _MAXCOR
    nbd = np.zeros(n, np.int32)  # no bounds
    low = np.zeros(n, np.float64)
    up = np.zeros(n, np.float64)
    f = np.array(0.0, dtype=np.float64)
    g = np.zeros((n,), dtype=np.float64)
    wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m, np.float64)
    iwa = np.zeros(3 * n, dtype=np.int32)
    task = np.zeros(2, dtype=np.int32)
    ln_task = np.zeros(2, dtype=np.int32)
    lsave = np.zeros(4, dtype=np.int32)
    isave = np.zeros(44, dtype=np.int32)
    dsave = np.zeros(29, dtype=np.float64)
    factr = _FTOL / np.finfo(float).eps
    pgtol = float(tol)
    # minimize's ScalarFunction evaluates x0 when it is made, before the routine starts
    x_seen = x.copy()
    f_seen, g_seen = objective(x_seen)
    nfev = 1
    iterations = 0
    first = True
    while True:
        g = g.astype(np.float64)  # a copy, as minimize passes: the routine writes to it
        try:
            _lbfgsb.setulb(m, x, low, up, nbd, f, g, factr, pgtol, wa, iwa, task, lsave,
                           isave, dsave, _MAXLS, ln_task)
        except TypeError as exc:
            if first:
                raise _SetulbChanged from exc
            raise
        first = False
        if task[0] == 3:  # the routine wants f and g at x
            if not np.array_equal(x, x_seen):
                x_seen = x.copy()
                f_seen, g_seen = objective(x_seen)
                nfev += 1
            f, g = f_seen, g_seen
        elif task[0] == 1:  # a new iterate
            iterations += 1
            if on_iteration is not None:
                on_iteration(x, float(f))
            if iterations >= max_iter:
                task[0], task[1] = 5, 504
            elif nfev > max_fun:
                task[0], task[1] = 5, 502
        else:
            break
    if task[0] == 4:
        status = 0
    elif nfev > max_fun or iterations >= max_iter:
        status = 1
    else:
        status = 2
    message = status_messages[task[0]] + ": " + task_messages[task[1]]
    return OptimizeResult(fun=f, jac=g, nfev=nfev, njev=nfev, nit=iterations,
                          status=status, message=message, x=x, success=status == 0)


# ---- MLP.fit(optimizer="lbfgs") ---------------------------------------------------------

def _is_default(value, default):
    if value is default:
        return True
    if default is None and isinstance(value, (list, tuple)) and not value:
        return True  # callbacks=[]: no callback, as MLP.fit reads it
    if isinstance(value, (bool, int, float, str)) and type(value) is type(default):
        return value == default
    return False


def check_unused(fit_function, arguments):
    """ValueError naming the first fit keyword that L-BFGS cannot honour (anything but
    its default: batches, shuffling, learning rates, schedules, momentum, validation,
    callbacks, checkpoints, record_every, chunk sizes)."""
    defaults = {p.name: p.default for p in inspect.signature(fit_function).parameters.values()}
    for name, value in arguments.items():
        if name in _USED or _is_default(value, defaults[name]):
            continue
        raise ValueError(
            f"{name}={value!r} does not apply to optimizer='lbfgs' (full-batch L-BFGS over "
            f"the whole training set, one record per iteration); leave {name} at its "
            f"default {defaults[name]!r}.  L-BFGS takes epochs (its maximum number of "
            f"iterations), tol, max_fun, l2, sample_weight, progress and on_divergence")


def _check_tol_max_fun(tol, max_fun):
    tol = TOL if tol is None else tol
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
        raise TypeError(f"tol must be a finite number >= 0, got {tol!r}")
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    max_fun = V.check_positive_int(MAX_FUN if max_fun is None else max_fun, "max_fun")
    return float(tol), max_fun


def fit(model, arguments):
    """MLP.fit with optimizer="lbfgs"; ``arguments`` are fit's (its locals()).

    Stops after ``epochs`` iterations, ``max_fun`` evaluations of the loss (checked at
    the end of an iteration, as SciPy does), or when SciPy's L-BFGS-B converges: the
    largest gradient component <= ``tol``, or a relative decrease of the loss below
    SciPy's ftol.  The History has one record per iteration (the loss after it).
    """
    check_unused(type(model).fit, arguments)
    require_scipy()  # the ImportError first, before any work
    a = arguments
    xt = model._inputs(a["X"])
    n = xt.shape[0]
    yt = model._targets(a["y"], n)
    epochs = V.check_positive_int(a["epochs"], "epochs")
    on_divergence = V.check_on_divergence(a["on_divergence"])
    l2 = C._real(a["l2"], "l2", 0.0)
    tol, max_fun = _check_tol_max_fun(a["tol"], a["max_fun"])
    sw = V.check_sample_weight(a["sample_weight"], n, model.dtype)
    threads = T.resolve(a["n_jobs"])
    with model._fit_lock.fitting("model"):
        if not np.isfinite(model.params).all():
            raise ValueError("the model's parameters contain NaN or infinity (written "
                             "through params, weights or biases?); set finite values "
                             "before training")
        # momentum or Adam moments from an earlier fit describe other parameters
        model.reset_optimizer()
        run = train(model, xt, yt, sw, max_iter=epochs, max_fun=max_fun, tol=tol, l2=l2,
                    progress=V.check_flag(a["progress"], "progress"), threads=threads)
    hist = run.history()
    if run.stopped == "interrupted":
        from ._driver import warn_interrupted
        warn_interrupted(run.iterations, epochs, stacklevel=3)
    elif run.stopped == "diverged":
        msg = run.divergence_message(model, xt, yt, sw)
        if on_divergence == "raise":
            raise DivergenceError(msg, epoch=0, history=hist, model=model)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return hist


class Run:
    """What one L-BFGS fit did: records, SciPy's result, why it stopped."""

    def __init__(self, cap=None):
        # the loss after iterations 0, stride, 2 * stride, ...: at most ``cap`` of them,
        # thinned as history.Records thins a fit's (memory bounded whatever max_iter)
        self.losses = []
        self.stride = 1
        self.cap = records_cap() if cap is None else int(cap)
        self.iterations = 0
        self.last_loss = math.nan  # the loss after the last iteration
        self.last_x = None  # the latest iterate (a copy), for Ctrl-C
        self.result = None
        self.stopped = None
        self.seconds = 0.0
        self.compile_seconds = 0.0  # the Objective's kernels, compiled or loaded
        self.kernel = None

    def record(self, f):
        """The loss ``f`` after the next iteration."""
        i = self.iterations
        self.iterations += 1
        self.last_loss = f
        if i % self.stride:
            return
        if len(self.losses) >= self.cap:  # keep iterations 0, 2 * stride, 4 * stride, ...
            del self.losses[1::2]
            self.stride *= 2
            if i % self.stride:
                return
        self.losses.append(f)

    def history(self):
        extra = {"optimizer": "lbfgs"}
        if self.result is not None:
            extra.update(nfev=int(self.result.nfev), status=int(self.result.status),
                         message=str(self.result.message))
        return History(loss=np.array(self.losses, dtype=np.float64),
                       epochs=self.iterations, record_every=1, seconds=self.seconds,
                       stopped=self.stopped, extra=extra,
                       compile_seconds=self.compile_seconds, kernel=self.kernel,
                       stride=self.stride)

    @staticmethod
    def divergence_message(model, xt, yt, sw=None):
        from .model import divergence_cause
        w_max = None if sw is None else model._weights_blamed(xt, yt, sw, False)
        cause = divergence_cause(model.dtype, max_abs_inputs(xt),
                                 float(np.abs(yt).max()), start_finite=False, lr_hint="",
                                 w_max=w_max)
        return (f"L-BFGS cannot start: the loss or its gradient is NaN or infinite at the "
                f"starting parameters (iteration 0). The model keeps them; likely cause: "
                f"{cause}")


def train(model, xt, yt, sw, max_iter, max_fun, tol, l2, loss_scale=1.0, grad_scale=1.0,
          progress=False, iprint=-1, bar_desc="fit", threads=None):
    """Run L-BFGS-B on the model's parameters, which end at SciPy's final iterate (after
    Ctrl-C: the last completed iteration's; when the start is not finite: unchanged).
    ``threads``: for the wide layers' products (None: every core allowed).  Returns
    the Run."""
    threads = T.available() if threads is None else threads
    run = Run()
    try:  # (imports SciPy and compiles the kernels on a first fit: seconds in which
        # Ctrl-C may come)
        scipy_minimize()
        t0 = time.perf_counter()
        objective = Objective(model, xt, yt, sw, l2, loss_scale, grad_scale, threads,
                              evaluations=min(max_iter, max_fun))
        objective.compile()
        if time.perf_counter() - t0 > COMPILED:
            from ._driver import collect_compile_garbage
            collect_compile_garbage()
        run.compile_seconds = time.perf_counter() - t0
        run.kernel = objective.kernel_name()
    except KeyboardInterrupt:
        run.stopped = "interrupted"  # before the first iteration: the parameters as given
        return run
    bar = make_bar(max_iter, desc=bar_desc) if progress else None

    def on_iteration(x, f):
        run.record(f)
        if run.last_x is None:
            run.last_x = np.empty_like(x)
        run.last_x[...] = x
        if bar is not None:
            bar.update(1, f)

    t0 = time.perf_counter()
    try:
        with scipy_blas_on_one_thread(objective.threads > 1):
            run.result = minimize(objective, model.params, max_iter, max_fun, tol,
                                  on_iteration, iprint)
    except StartNotFinite:
        run.stopped = "diverged"
    except KeyboardInterrupt:
        run.stopped = "interrupted"
        if run.last_x is not None:
            model.params = run.last_x
    finally:
        run.seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
    res = run.result
    if res is not None:
        if res.status == 0:
            run.stopped = "converged"
        elif res.status == 1 and run.iterations < max_iter:
            run.stopped = "max_fun"
        elif res.status not in (0, 1):
            run.stopped = "line_search"
        model.params = res.x
    return run
