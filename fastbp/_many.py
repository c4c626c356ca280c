"""An Ensemble's fit on the CPU as a job of the chunk driver (fastbp/_driver.py).

Every chunk trains each active model for the chunk's epochs with the single-model
training entry the dispatcher picks for it (the same kernel ``MLP.fit`` would run, on
the model's own row of parameters, shuffling stream and buffers), so each model is
bit-identical to training it alone, whatever the number of threads.  Models are
spread over Python threads: the kernels release the GIL.  Where the lanes apply
(kernels/lanes.py: full blocks of 8 models, full batch, shared data), a block trains
in SIMD lanes across its models, with the same results.

A model whose guard fails is deactivated; when the fit ends, Ensemble.fit trains it
again alone with MLP.fit, which leaves it exactly where MLP.fit leaves a diverged model.
"""
import threading

import numpy as np

from . import _dispatch as D
from . import _threads as T
from .history import Records
from .kernels import lanes as LN
from .kernels import options as O


def row_of(data, m):
    """Model m's set in (D, ...) data of Ensemble._data's arrays: its own, or the shared one."""
    return m if data.shape[0] > 1 else 0


# A chunk's models go to the threads (_threads.each) only when each model's task is at
# least this many multiply-adds: two threads against one, one chunk of XOR nets (2331
# multiply-adds an epoch, ~0.4 us): 10 epochs 1.82x the time, 30 1.45x, 100 1.07x, 300
# 0.92x, 1000 0.61x.  A run's first chunk, one or a few epochs to time it, so runs on one.
THREADED_TASK_WORK = 10 ** 6


class ManyFit:
    """The job of one Ensemble.fit on the CPU (see fastbp/_driver.py)."""

    def __init__(self, ens, x, y, epochs, lrs, batches, shuffles, record_every, threads):
        self.ens = ens
        self.proto = ens._proto
        # (Dx, n, n_in), (Dy, n, n_out): each D = 1 (shared) or n_models
        self.x, self.y = x, y
        self.epochs = epochs
        self.done = 0
        self.lrs, self.batches, self.shuffles = lrs, batches, shuffles
        self.record_every = record_every
        self.threads = threads
        n_models = ens.n_models
        self.n = x.shape[1]
        self.active = np.ones(n_models, dtype=bool)
        self.done_per_model = np.zeros(n_models, dtype=np.int64)
        self.bad_epoch = np.full(n_models, -1, dtype=np.int64)
        self.records = Records(rows=n_models, expected=-(-epochs // record_every))
        self._local = threading.local()
        # one Plan per distinct (batch size, shuffle): the models that share one share it
        self.plans = {}
        for b, s in set(zip(batches.tolist(), shuffles.tolist())):
            rule = O.plain_rule(1.0, epochs)
            self.plans[(b, s)] = D.plan_fit(self.proto, self.n, b, s, rule, False,
                                            epochs * n_models)
        dtype = self.proto.dtype
        lay = self.proto._layout
        self.lanes = n_models >= LN.LANES and LN.eligible(
            lay.sizes, self.proto._act_codes, self.proto._loss_code, self.n,
            bool((batches >= self.n).all() and not shuffles.any()),
            x.shape[0] == 1 and y.shape[0] == 1,
            D.PRODUCT_MIN_WORK) and D.use_lanes(next(iter(self.plans.values())), self.n)
        self.nets = {}
        self.dtype = dtype
        self.no_weights = np.zeros(0, dtype=dtype)
        self.kernel_name = self._kernel_name(n_models)

    def _kernel_name(self, n_models):
        """What History.kernel says: the lanes, and the kernels of the models outside
        their full blocks, or each plan's kernel."""
        singles = sorted({plan.name for plan in self.plans.values()})
        if not self.lanes:
            return "; ".join(singles)
        name = f"lanes across models, {LN.LANES} per block ({np.dtype(self.dtype).name})"
        rest = n_models % LN.LANES
        if rest:
            name += f"; the last {rest}: " + "; ".join(singles)
        return name

    # ---- the job protocol ----------------------------------------------------------
    def pending(self):
        names = []
        if self.lanes and not D.is_compiled(self._lanes_key()):
            names.append("the ensemble lanes kernel")
        if self._singles_at_start():
            for plan in self.plans.values():
                if not D.is_compiled(plan.key):
                    names.append(f"the {plan.name} training kernel")
            if any(plan.passes for plan in self.plans.values()) \
                    and not D.passes_compiled(self.dtype):
                names.append("the batch passes")
        return names

    def prepare(self):
        for key, plan in self.plans.items():
            self.nets[plan.gemm] = D.make_net(self.proto._layout, self.proto._act_codes,
                                              self.proto._loss_code, self.dtype, plan.gemm)
        if self.lanes:
            self._train_block(0, 0, 0, np.empty((self.ens.n_models, 0)))
            D.mark_compiled(self._lanes_key())
        if not self._singles_at_start():
            return  # the single-model kernels compile only if a block ever fails
        for (b, s), plan in self.plans.items():
            if not D.is_loaded(plan.key):
                m = int(np.flatnonzero((self.batches == b) & (self.shuffles == s))[0])
                self._train_one(m, 0, 0, np.empty((self.ens.n_models, 0)))
                D.mark_compiled(plan.key)

    def work_per_epoch(self):
        return 3 * self.n * self.proto._layout.n_params * self.ens.n_models / self.threads

    def remaining(self):
        return self.epochs - self.done if self.active.any() else 0

    def cap(self, chunk):
        return chunk

    def run_chunk(self, chunk):
        start = self.done
        re = self.record_every
        r0 = -(-start // re)
        k = -(-(start + chunk) // re) - r0
        history = np.full((self.ens.n_models, k), np.nan)
        results = np.zeros((self.ens.n_models, 2), dtype=np.int64)
        tasks = []
        singles = list(np.flatnonzero(self.active))
        if self.lanes:
            blocks = [m0 for m0 in range(0, self.ens.n_models - LN.LANES + 1, LN.LANES)
                      if self.active[m0:m0 + LN.LANES].all()]
            in_blocks = {m for m0 in blocks for m in range(m0, m0 + LN.LANES)}
            singles = [m for m in singles if m not in in_blocks]
            tasks += [("block", m0) for m0 in blocks]
        tasks += [("one", m) for m in singles]

        def run(task):
            what, m = task
            if what == "block":
                if self._train_block(m, chunk, start, history):
                    results[m:m + LN.LANES] = (chunk, -1)
                    return
                # a guard check failed in the block: each model alone, from the start
                for q in range(m, m + LN.LANES):
                    results[q] = self._train_one(q, chunk, start, history)
            else:
                results[m] = self._train_one(m, chunk, start, history)

        model_work = 3 * self.n * self.proto._layout.n_params * chunk  # a task's, at least
        T.each(run, tasks, self.threads, model_work, THREADED_TASK_WORK)
        ran = self.active.copy()
        self.done_per_model += np.where(ran, results[:, 0], 0)
        bad = ran & (results[:, 1] >= 0)
        self.bad_epoch[bad] = results[bad, 1]
        self.active[bad] = False
        self.records.extend(r0, history)
        self.done += chunk
        return chunk, None

    def after_chunk(self):
        return None

    def callbacks(self):
        return None

    def last_loss(self):
        last = self.records.last()
        if last is None or not np.isfinite(last).any():
            return None
        return float(np.nanmean(last))

    # ---- pieces ------------------------------------------------------------------------
    def _lanes_key(self):
        return ("lanes", self.dtype.name)

    def _singles_at_start(self):
        """Whether some models train one at a time from the start (no lanes, or models
        beyond the last full block)."""
        return not self.lanes or self.ens.n_models % LN.LANES != 0

    def _work(self, plan, shuffle):
        """This thread's buffers for ``plan`` (one set per thread, reused model after
        model) and models with ``shuffle`` or without: a shuffled model leaves its last
        permutation in the buffers' order (Work.perm), which an unshuffled one must not
        follow (the per-sample epoch reads the order either way; fit's own buffers start
        as 0..n-1)."""
        cache = getattr(self._local, "work", None)
        if cache is None:
            cache = self._local.work = {}
        # plans of one kernel may differ in batch size, and in shuffling
        key = (plan.key, plan.cap, shuffle)
        work = cache.get(key)
        if work is None:
            lay = self.proto._layout
            batch = plan.passes and plan.mode != "sample"
            work = cache[key] = O.make_work(
                lay.sizes_arr, lay.n_params, plan.cap, self.n, self.dtype,
                self.proto._keep_z, per_sample=plan.mode == "sample", gradient=plan.gradient,
                passes=D.batch_passes(self.dtype) if batch else None)
        return work

    def _train_one(self, m, chunk, start, history):
        """Model m for ``chunk`` epochs from epoch ``start`` with its single-model kernel;
        (epochs done, bad epoch)."""
        plan, (net, data, loop, rule, stop, state, work) = self._model_options(m)
        params = self.ens.params[m]
        done, bad, _ = plan.kernel(params, net, data, None, loop, rule, stop, state, work,
                                   None, history[m], None, params.copy(), start, chunk)
        return int(done), int(bad)

    def _model_options(self, m):
        """(plan, the kernel's options as plain tuples) of model m on this thread, made
        at its first call and kept for the run's later chunks: none of them changes from
        chunk to chunk -- the State neither, as the plain rule without validation writes
        none of its fields but its generator, the model's own stream (a view of the
        Ensemble's).  Making them took about 9 of a call's 12.5 us (a warm loop); 1000
        XOR nets for 100 epochs on one thread, two calls each: 85-87 -> 74-85 ms."""
        cache = getattr(self._local, "options", None)
        if cache is None:
            cache = self._local.options = {}
        found = cache.get(m)
        if found is None:
            b, s = int(self.batches[m]), bool(self.shuffles[m])
            plan = self.plans[(b, s)]
            if plan.gemm not in self.nets:
                self.nets[plan.gemm] = D.make_net(self.proto._layout, self.proto._act_codes,
                                                  self.proto._loss_code, self.dtype,
                                                  plan.gemm)
            data = O.Data(self.x[row_of(self.x, m)], self.y[row_of(self.y, m)],
                          self.no_weights)
            state = O.new_state(0, self.dtype, self.ens._rng_states[m])
            found = cache[m] = (plan, O.plain(
                self.nets[plan.gemm], data, O.Loop(b, s, self.record_every),
                O.plain_rule(float(self.lrs[m]), self.epochs), O.NO_STOP, state,
                self._work(plan, s)))
        return found

    def _train_block(self, m0, chunk, start, history):
        ens = self.ens
        return LN.train_block(ens.params, m0, self.nets[next(iter(self.plans.values())).gemm],
                              self.x[0], self.y[0], chunk, self.lrs, start,
                              self.record_every, history)
