"""Initial parameter values, drawn layer by layer (weights, then biases)."""
import numpy as np

from .kernels.options import aligned_copy


def initial_params(layout, init, seed, dtype):
    """A fresh flat parameter vector for ``layout`` (see _layout.Layout)."""
    rng = np.random.default_rng(seed)
    params = np.empty(layout.n_params, dtype=np.float64)
    for l, (n_in, n_out) in enumerate(layout.shapes):
        w = params[layout.w_off[l]:layout.w_off[l] + n_in * n_out]
        b = params[layout.b_off[l]:layout.b_off[l] + n_out] if layout.bias else None
        if isinstance(init, float):
            w[:] = init
            if b is not None:
                b[:] = init
        elif init == "uniform":          # U[0, 1), as tutorial 000 (np.random.uniform)
            w[:] = rng.uniform(size=w.size)
            if b is not None:
                b[:] = rng.uniform(size=n_out)
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
        out = params.astype(dtype)
    if not np.isfinite(out).all():
        raise ValueError(f"init={init!r} gives parameters too large for {np.dtype(dtype).name} "
                         f"(they would be infinite); choose a smaller init")
    return aligned_copy(out)
