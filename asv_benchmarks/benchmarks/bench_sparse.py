"""Sparse inputs: a 100,000 x 20,000 CSR matrix at 0.1% density (2 M stored values;
16 GB dense), a 20000-100-1 network in shuffled batches of 200.  ``time_epoch``: one
epoch, sgd and adam; ``peakmem_epoch``: the peak memory of the process over it, data
included (asv_benchmarks/sparse_inputs.py compares scikit-learn on the same data)."""
from . import common
from .common import Benchmark


class SparseInputs(Benchmark):
    param_names = ["solver"]
    params = [["sgd", "adam"]]

    def setup(self, solver):
        fastbp = common.import_fastbp()
        try:
            import scipy.sparse  # noqa: F401
        except ImportError:
            raise NotImplementedError("scipy is not installed")
        import sys
        from pathlib import Path
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from sparse_inputs import D_FEATURES, HIDDEN, make_data
        self.X, self.y = make_data(100_000)
        self.model = fastbp.MLP([D_FEATURES, HIDDEN, 1], activation=["relu", "sigmoid"],
                                loss="bce", seed=0)
        self.kw = dict(lr=0.01 if solver == "sgd" else 0.001, batch_size=200, shuffle=True,
                       optimizer=solver, n_jobs=1)
        self.model.fit(self.X[:1000], self.y[:1000], epochs=1, **self.kw)  # the compile

    def time_epoch(self, solver):
        self.model.fit(self.X, self.y, epochs=1, **self.kw)

    def peakmem_epoch(self, solver):
        self.model.fit(self.X, self.y, epochs=1, **self.kw)
