"""Numba's startup without importing scipy: 0.15 s of every fresh process's first fit.

When Numba sets up its CPU target (the first compile, or the first load of a cached
kernel) it imports ``numba.np.arraymath``, whose module body runs ``_check_blas()``:
``import scipy.linalg.cython_blas``, only to set the flag ``_HAVE_BLAS`` that decides
whether ``np.correlate`` / ``np.convolve`` compile to a BLAS inner product.  With scipy
installed that import costs ~0.15 s (scipy.linalg pulls in scipy's array-API layer), a
third of the warm-cache cold start (``import fastbp`` + the first W1 fit: 0.52 → 0.37 s,
one pinned CPU).  fastbp never uses scipy (kernels/blas.py binds numpy's OpenBLAS).

``defer_scipy_check`` imports ``numba.np.arraymath`` once with ``scipy.linalg`` hidden,
then replaces ``_HAVE_BLAS`` by an object whose truth value runs Numba's own
``_check_blas()`` on first use and keeps its answer.  Numba reads the flag only as
``if not _HAVE_BLAS`` (at typing time), so code that needs it gets the same answer as
before, at the moment it needs it; nothing else changes.  It does nothing where the
import has already happened (scipy.linalg or numba.np.arraymath already loaded) or where
Numba no longer has these names; ``FASTBP_EAGER_SCIPY=1`` turns it off.  It runs once,
when fastbp.kernels is first imported; a thread importing scipy.linalg during that import
would see an ImportError.
"""
import os
import sys

_HIDDEN = "scipy.linalg"


class _CheckedOnFirstUse:
    """Truth value of Numba's ``_check_blas()``, run when first asked."""

    def __init__(self, check):
        self._check = check
        self._answer = None

    def __bool__(self):
        if self._answer is None:
            self._answer = bool(self._check())
        return self._answer

    def __repr__(self):
        state = "not checked yet" if self._answer is None else self._answer
        return f"<numba BLAS available: {state} (checked on first use by fastbp)>"


def defer_scipy_check():
    """Import numba.np.arraymath without scipy.linalg; True if the check was deferred."""
    if os.environ.get("FASTBP_EAGER_SCIPY", "").strip() not in ("", "0"):
        return False
    if "numba.np.arraymath" in sys.modules or _HIDDEN in sys.modules:
        return False
    sys.modules[_HIDDEN] = None  # makes `import scipy.linalg...` raise ImportError
    try:
        import numba.np.arraymath as arraymath
    except ImportError:  # a Numba that needs scipy.linalg at import: let it have it
        return False
    finally:
        if _HIDDEN in sys.modules and sys.modules[_HIDDEN] is None:
            del sys.modules[_HIDDEN]
    check = getattr(arraymath, "_check_blas", None)
    if not callable(check) or getattr(arraymath, "_HAVE_BLAS", None) is not False:
        return False  # a Numba laid out differently: its flag stays as it found it
    arraymath._HAVE_BLAS = _CheckedOnFirstUse(check)
    return True


DEFERRED = defer_scipy_check()
