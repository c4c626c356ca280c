"""fastbp: train small dense neural networks by backpropagation, fast.

The whole training run -- every epoch, sample and update -- runs inside Numba-compiled
kernels (``fastbp.kernels``); this package validates input, allocates and reports.
"""
from .errors import DivergenceError, ModelFileError
from .history import History
from .checkpoint import resume
from .io import load
from .model import MLP
from .ensemble import Ensemble
from .sweep import SweepResult, sweep  # fastbp.sweep is the function from here on
from . import datasets, plot  # noqa: E402  (plot imports matplotlib only when called)

__version__ = "0.1.0"

__all__ = ["MLP", "Ensemble", "History", "load", "resume", "DivergenceError", "ModelFileError", "__version__"]
__all__ += ["sweep", "SweepResult"]
