"""Many models at once: W5 = 256 XOR networks (2-4-4-1 sigmoid, sse, lr 0.1,
21 points, full batch) x 10,000 epochs (``fast`` profile: 32 x 2,000).

- ``Ensemble.time_fit``: fastbp.Ensemble with n_jobs 1 and 2;
- ``MLPLoop.time_fit``: the same models trained one after another by MLP.fit in a
  Python loop (the whole loop, nothing extrapolated);
- ``JaxVmap.time_fit``: JAX jit + vmap + lax.scan (skipped without jax);
- ``Ensemble.track_*``: the many-model speed-ups, timed in one process one after the
  other -- 1 thread over 2 threads (goal >= 1.8 on 2 cores), the Python loop over the
  ensemble (goal >= 1 with 1 thread, ~2 with 2), JAX over the ensemble (goal > 1);
- ``Sweep.time_sweep``: fastbp.sweep over a 16 lr x 16 seed grid of the same networks
  (one ensemble run: grid expansion, initialisation, training and the table).

The initial parameters are W5's (common.w5), identical for every engine.
"""
import os

import numpy as np

from . import common
from .common import Benchmark


def _setup_common(n_jobs=1):
    fastbp = common.import_fastbp()
    if getattr(fastbp, "Ensemble", None) is None:
        raise NotImplementedError("fastbp.Ensemble not available")
    if n_jobs > (os.cpu_count() or 1):
        raise NotImplementedError(f"{n_jobs} threads > {os.cpu_count()} cores")
    return fastbp, common.import_peers()


def _loop(wl):
    """The W5 models trained one by one with MLP.fit."""
    models = [wl.model(m) for m in range(wl.n_models)]

    def run():
        for Ws, bs in models:
            common.fastbp_fit(common.fastbp_model(wl, Ws, bs), wl)

    return run


def _jax_or_skip(peers, wl):
    try:
        run = peers.jax_w5(wl)
    except peers.Unavailable as exc:
        raise NotImplementedError(str(exc))
    run()  # compile
    return run


class Ensemble(Benchmark):
    param_names = ["n_jobs"]
    params = [[1, 2]]

    def setup(self, n_jobs):
        _, peers = _setup_common(n_jobs)
        self.wl = common.w5()
        self.peers = peers
        self.run = peers.fastbp_w5(self.wl, n_jobs=n_jobs)
        self.run.warmup()

    def time_fit(self, n_jobs):
        self.run()

    def track_speedup_over_1_thread(self, n_jobs):
        one = self.peers.fastbp_w5(self.wl, n_jobs=1)
        return common.best_time(one, 2) / common.best_time(self.run, 2)

    track_speedup_over_1_thread.unit = "x"

    def track_speedup_over_mlp_loop(self, n_jobs):
        loop = _loop(self.wl)
        return common.best_time(loop, 1) / common.best_time(self.run, 2)

    track_speedup_over_mlp_loop.unit = "x"



class EnsembleVsJax(Benchmark):
    """JAX vmap's time over the ensemble's; skipped without jax (checked in setup: asv
    counts NotImplementedError as a skip only there)."""
    param_names = ["n_jobs"]
    params = [[1, 2]]

    def setup(self, n_jobs):
        _, peers = _setup_common(n_jobs)
        self.wl = common.w5()
        self.run = peers.fastbp_w5(self.wl, n_jobs=n_jobs)
        self.run.warmup()
        self.jax = _jax_or_skip(peers, self.wl)

    def track_speedup_over_jax_vmap(self, n_jobs):
        return common.best_time(self.jax, 2) / common.best_time(self.run, 2)

    track_speedup_over_jax_vmap.unit = "x"


class MLPLoop(Benchmark):
    repeat = (1, 3, 60.0)

    def setup(self):
        _setup_common()
        self.wl = common.w5()
        tiny = self.wl.tiny()
        with common.steady_state_kernels():  # compile
            common.fastbp_fit(common.fastbp_model(tiny, *tiny.model(0)), tiny)
        self.run = _loop(self.wl)

    def time_fit(self):
        self.run()


class JaxVmap(Benchmark):
    def setup(self):
        _, peers = _setup_common()
        self.wl = common.w5()
        self.run = _jax_or_skip(peers, self.wl)

    def time_fit(self):
        self.run()


class Sweep(Benchmark):
    param_names = ["n_jobs"]
    params = [[1, 2]]

    def setup(self, n_jobs):
        fastbp, _ = _setup_common(n_jobs)
        if getattr(fastbp, "sweep", None) is None:
            raise NotImplementedError("fastbp.sweep not available")
        wl = common.w5()
        side = int(round(np.sqrt(wl.n_models)))
        self.grid = {"lr": list(np.geomspace(0.01, 1.0, side)), "seed": list(range(side))}
        self.kw = dict(sizes=list(wl.sizes), activation=list(wl.activations), loss=wl.loss,
                       epochs=wl.epochs, n_jobs=n_jobs)
        self.X, self.y = wl.X, wl.y
        fastbp.sweep({"lr": [0.1]}, self.X, self.y, **{**self.kw, "epochs": 1})  # compile
        self.fastbp = fastbp

    def time_sweep(self, n_jobs):
        self.fastbp.sweep(self.grid, self.X, self.y, **self.kw)
