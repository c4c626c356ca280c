"""Initial parameter values, drawn layer by layer (weights, then biases)."""
import numpy as np

from .kernels.options import aligned_empty


def initial_params(layout, init, seed, dtype, out=None):
    """A fresh flat parameter vector for ``layout`` (see _layout.Layout) in ``dtype``,
    starting on a 64-byte boundary (kernels/options.py: aligned_copy), or written into
    ``out`` (a C-contiguous 1-D array of ``dtype``: an Ensemble's row) and returned."""
    n = layout.n_params
    if out is None:
        out = aligned_empty(n, dtype)
    rng = np.random.default_rng(seed)
    if init == "uniform":  # U[0, 1), as tutorial 000 (np.random.uniform)
        # Every block is drawn in the order the blocks lie in (w0, b0, w1, b1, ...), and
        # Generator.uniform(size=k) is 0 + 1 * random(): so one draw of them all gives
        # the same numbers as a draw per block, which took about two thirds of a small
        # model's construction (an Ensemble makes one per model).  Values in [0, 1) are
        # finite in either dtype: no check.
        if out.dtype == np.float64:
            rng.random(out=out)
        else:  # float64 draws, rounded (random(dtype=float32) draws other numbers)
            out[...] = rng.random(n)
        return out
    params = np.empty(n, dtype=np.float64)
    for l, (n_in, n_out) in enumerate(layout.shapes):
        w = params[layout.w_off[l]:layout.w_off[l] + n_in * n_out]
        b = params[layout.b_off[l]:layout.b_off[l] + n_out] if layout.bias else None
        if isinstance(init, float):
            w[:] = init
            if b is not None:
                b[:] = init
        elif init == "normal":           # N(0, 1/sqrt(n_in)) by each layer's n_in
            w[:] = rng.normal(scale=n_in ** -0.5, size=w.size)
            if b is not None:
                b[:] = rng.normal(scale=n_in ** -0.5, size=n_out)
        elif init == "xavier":           # Glorot uniform
            limit = np.sqrt(6.0 / (n_in + n_out))
            w[:] = rng.uniform(-limit, limit, size=w.size)
            if b is not None:
                b[:] = 0.0
        elif init == "he":               # He normal, for ReLU
            w[:] = rng.normal(scale=np.sqrt(2.0 / n_in), size=w.size)
            if b is not None:
                b[:] = 0.0
        else:  # pragma: no cover - names are validated before
            raise ValueError(f"unknown init {init!r}")
    with np.errstate(over="ignore"):
        out[...] = params
    if not np.isfinite(out).all():
        raise ValueError(f"init={init!r} gives parameters too large for {np.dtype(dtype).name} "
                         f"(they would be infinite); choose a smaller init")
    return out
