"""One model's training run as a job of the chunk driver (fastbp/_driver.py), with the
divergence guard: what MLP.fit and fastbp.resume run.

Divergence: the kernel checks the loss and the parameters at every recorded epoch and
at the end of a chunk, and on a NaN or infinity puts back the parameters of its last
good check (its ``backup``) and stops.  A full-batch epoch's loss is that of the
parameters before its update, so that state may still give an infinite loss; the
rewind (``_rewind``) then looks further back, replaying chunks from snapshots taken at
their starts (the replay is bit-identical: the same kernel, the same shuffling stream).

A chunk that ChunkBound (fastbp/_divergence.py) proves unable to diverge runs with the
guard off and no copy of the parameters: the guard could not have fired, so the
results are the same bits.
"""
from contextlib import nullcontext

import numba
import numpy as np

from . import _dispatch as D
from . import _sparse as S
from . import _validation as V
from ._divergence import ChunkBound, final_loss_bounded
from .checkpoint import Saver
from .history import History
from .kernels import gemm as G
from .kernels import options as O
from .kernels import passes as PS
from .kernels.rules import ADAM

# predict / loss / gradient process at most this many samples per kernel batch
EVAL_CAP = 4096


class SingleFit:
    """The job of one MLP's run (see fastbp/_driver.py for the job protocol)."""

    def __init__(self, model, x, y, run):
        self.model = model
        self.x, self.y = x, y
        self.run = run
        n = x.shape[0]
        self.n = n
        self.batch = n if run.batch_size is None else run.batch_size
        n_val = 0 if run.val is None else run.val.x.shape[0]
        self.plan = D.plan_fit(model, n, self.batch, run.shuffle, run.rule, run.validating,
                               run.epochs - run.done, n_val, weighted=run.sw.shape[0] > 0,
                               threads=run.threads, sparse=isinstance(x, S.Rows))
        run.kernel_name = self.plan.name
        self.data = O.Data(model._kernel_inputs(x, descend=self.plan.rule == "fused"), y,
                           run.sw)
        self.loop = O.Loop(self.batch, run.shuffle, run.record_every)
        lay = model._layout
        self.work = O.make_work(lay.sizes_arr, lay.n_params, self.plan.cap, n, model.dtype,
                                model._keep_z, per_sample=self.plan.mode == "sample",
                                gradient=self.plan.gradient, sparse=isinstance(x, S.Rows))
        self.val_work = None if run.val is None else O.make_work(
            lay.sizes_arr, 0, n_val, n_val, model.dtype, model._keep_z,
            sparse=isinstance(run.val.x, O.SparseRows))
        self.net = None  # made in prepare (it compiles the gemm unit)
        self._builds = {}  # pooled -> what the batch passes are compiled for (_passes_build)
        self.shared = None  # the threads sharing its products (fastbp/_threads.py)
        self.backup = None  # the guard's copy of the parameters, made by a guarded chunk
        # a chunk this proves safe runs unguarded, without copying the parameters
        self.bound = ChunkBound.for_fit(model, run, x, y, self.batch)
        self.saver = Saver(model, run, x, y) if run.checkpoint is not None else None
        self.snapshots = []  # (epoch, params, rng, moments, step, es) at chunk starts
        # full batch: the latest chunk start whose loss a record showed finite (the loss
        # of a full-batch epoch is that of its starting state), kept for the rewind
        # when it is older than both snapshots (chunks shorter than record_every)
        self.anchor = None
        # full batch (also sparse inputs', which run in the mini-batch entries): an
        # epoch's loss is that of its starting state
        self.full_batch = self.batch >= n and not run.shuffle
        self.safe = False  # whether the last chunk ran unguarded
        self.mid_chunk = False  # whether run_chunk is under way (or raised)
        self.bad = -1
        # after a rewind: whether the state it left has a finite loss -- not when none
        # it could reach has (a resumed run cannot go back before its checkpoint)
        self.rewound_finite = True
        # the run's training and compile seconds before this piece of it (resume)
        self.seconds0, self.compile_seconds0 = run.seconds, run.compile_seconds

    # ---- the job protocol ----------------------------------------------------------
    def pending(self):
        names = []
        if not D.is_compiled(self.plan.key):
            names.append(f"the {self.plan.name} training kernel")
        dtype = D.dtype_name(self.model.dtype)
        if self.plan.gemm in G.TILES and not D.is_compiled(("gemm", self.plan.gemm, dtype)):
            names.append("the matrix-product tiles")
        if self.plan.threads > 1 and self.plan.mode == "sample":
            if not D.is_compiled(("sample", "shared", dtype)):
                names.append("the threads' share of the wide layers")
        elif self.plan.threads > 1 and not D.is_compiled(("gemm", "pooled", dtype)):
            names.append("the threads' share of the products")
        pooled = self.plan.threads > 1 and self.plan.mode != "sample"
        if self.plan.passes and not D.passes_compiled(dtype, self._passes_needed(), pooled,
                                                      self._passes_build(pooled)):
            names.append("the batch passes")
        return names

    def prepare(self):
        model = self.model
        if self.plan.mode == "sample":  # the kernel's wide layers, not its products
            self.shared = D.share_samples(model._layout, model.dtype, self.plan.threads)
            if self.shared is not None:
                self.work = self.work._replace(pool=self.shared.address)
        else:
            self.shared = D.share_products(self.plan.gemm, model.dtype, self.plan.threads)
        self.net = D.make_net(model._layout, model._act_codes, model._loss_code, model.dtype,
                              self.plan.gemm, None if self.plan.mode == "sample" else self.shared)
        if self.plan.passes:  # the batch entries call them, and the validation loss
            pooled = self.shared is not None and self.plan.mode != "sample"
            passes = D.batch_passes(model.dtype, self._passes_needed(), pooled,
                                    self._passes_build(pooled))
            if self.plan.mode != "sample":
                self.work = self.work._replace(passes=passes)
            if self.val_work is not None:
                self.val_work = self.val_work._replace(passes=passes)
        if not D.is_loaded(self.plan.key):
            # a call of no epochs compiles the kernel or loads it from Numba's cache,
            # so that History.seconds and the chunk sizing measure training only
            self._call(0, self.run.done, model._params, self.run.state(model),
                       np.empty(0), np.empty(0) if self.run.validating else None,
                       model._params[:0])
            D.mark_compiled(self.plan.key)

    def _passes_needed(self):
        """The batch passes this fit's kernel calls (with Plan.passes)."""
        return PS.EVALUATE if self.plan.mode == "sample" else PS.ALL

    def _passes_build(self, pooled):
        """What the batch passes for this fit's calls are compiled for (kernels/passes.py:
        Build): its batches (whole ones and the last; none per-sample) and the validation
        set's, its activations and loss.  Decided once, so that what ``pending``
        announces is what ``prepare`` compiles."""
        if pooled not in self._builds:
            self._builds[pooled] = self._decide_build(pooled)
        return self._builds[pooled]

    def _decide_build(self, pooled):
        cap = min(self.batch, self.n)
        nbs = (cap, self.n % cap) if self.plan.mode != "sample" else ()
        if self.run.validating:
            nbs += (self.run.val.x.shape[0],)
        model = self.model
        return D.passes_build(model.dtype, self._passes_needed(), pooled, model._layout.sizes,
                              nbs, model._act_codes, model._loss_code,
                              isinstance(self.x, S.Rows))

    def work_per_epoch(self):
        return 3 * self.n * self.model._layout.n_params

    def remaining(self):
        return 0 if self.run.stopped_early else self.run.epochs - self.run.done

    def cap(self, chunk):
        return self.saver.cap(chunk) if self.saver is not None else chunk

    def run_chunk(self, chunk):
        self.mid_chunk = True  # until it returns: the model and run may disagree
        run, model = self.run, self.model
        # the chunk writes the optimizer state of the run's optimizer (a callback's
        # reset_optimizer() forgot which: a next fit would take Adam's m for a velocity)
        model._opt_kind = "adam" if run.rule.optimizer == ADAM else "sgd"
        proved_before = self.safe
        self.safe = self.bound is not None and self.bound.cannot_diverge(
            model._params, run.rule.lr, chunk)
        if self.safe:  # unguarded, nothing copied: no rewind ever needs this chunk's start
            guard_buffer = model._params[:0]
        else:
            if self.backup is None:
                self.backup = np.empty_like(model._params)
            self._guard_chunk(chunk)
            guard_buffer = self.backup
            if self.full_batch and proved_before:
                self.anchor = self.snapshots[0]  # the end of a proved chunk: a finite loss
        start = run.done
        r0 = -(-start // run.record_every)  # the chunk's first record
        room = run.records.reserve(r0, _records_in(start, chunk, run.record_every))
        history, val_history = (self._record_buffers(start, chunk) if room is None
                                else room)
        ran, bad, early = self._call(chunk, start, model._params, run.state(model), history,
                                     val_history, guard_buffer)
        if not self.safe and self.full_batch and ran > 0 and start % run.record_every == 0:
            self.anchor = self.snapshots[0]  # its epoch was recorded, with a finite loss
        reached = ran if bad < 0 else bad - start + 1
        k = _records_in(start, reached, run.record_every)
        if room is None:
            run.records.extend(r0, history[:k],
                               None if val_history is None else val_history[:k])
        else:
            run.records.commit(k)
        run.done += ran
        if bad < 0 and not self.safe and run.done == run.epochs and not self._ends_finite():
            bad = run.done  # the record an epoch more would take: not finite
        if bad >= 0:
            self._diverged_at(bad)
            self.mid_chunk = False
            return ran, "diverged"
        self.mid_chunk = False
        return ran, "early_stopping" if early else None

    def ends_early(self, reason):
        """The driver's call when the run stops before its last epoch, after a chunk
        (Ctrl-C, a callback's False, early stopping, scikit-learn's own stops): the loss
        at the state it stops in is checked as at a run's end (_ends_finite) -- no record
        holds it, and restore_best may put back exactly this state --, and a non-finite
        one is a divergence in the last epoch run, rewound as in run_chunk.  ``reason``
        or "diverged".  After a chunk proved safe only a callback can have made the loss
        non-finite (it may write the parameters): ValueError, as for NaN it writes."""
        run = self.run
        if run.done in (0, run.epochs):  # a run that reached its last epoch: run_chunk
            return reason
        if (self.safe and not run.callbacks) or self._ends_finite():
            return reason
        if self.safe:
            self.saver = None  # the checkpoint keeps the state before the callbacks
            raise ValueError(f"a callback left parameters whose loss is not finite (after "
                             f"epoch {run.done}); a callback may change them, to values "
                             f"with a finite loss")
        self._diverged_at(run.done)
        return "diverged"

    def after_chunk(self):
        if self.saver is not None and self.saver.due():
            self.saver.write()
        return None

    def callbacks(self):
        run = self.run
        if not run.callbacks:
            return None
        hist = self.history(None)
        for cb in run.callbacks:
            stop = _stops(cb, cb(run.done, hist, self.model))
            # training on would blame the divergence on the learning rate and put back
            # older parameters -- or keep infinite ones whose loss is finite (saturated
            # tanh / sigmoid units)
            if not V.all_finite(self.model._params):
                # the checkpoint keeps the state it was written with, after run.done
                # epochs, before the callback: finish() must not replace it with these
                self.saver = None
                raise ValueError(f"callback {getattr(cb, '__name__', cb)!r} wrote NaN or "
                                 f"infinity into the model's parameters (after epoch "
                                 f"{run.done}); a callback may change them, to finite values")
            if stop:
                return "callback"
        return None

    def last_loss(self):
        last = self.run.records.last()
        return None if last is None else float(last)

    def clock(self, seconds, compile_seconds):
        """The run's seconds: its earlier pieces' and this one's so far (the driver's),
        kept current so that callbacks' History and every checkpoint report them."""
        self.run.seconds = self.seconds0 + seconds
        self.run.compile_seconds = self.compile_seconds0 + compile_seconds

    def finish(self):
        """After the last chunk: the final checkpoint.  Also when the run ends with an
        exception from between chunks (a callback's, KeyboardInterrupt included): the
        model then holds the state after run.done epochs.  Not after one from inside a
        chunk, whose parameters may be past run.done."""
        if self.saver is not None and not self.mid_chunk:
            self.saver.write()

    # ---- pieces ------------------------------------------------------------------------
    def history(self, stopped):
        run = self.run
        loss, val = run.records.view()
        best = int(run.best_epoch[0]) if run.validating and run.best_epoch[0] >= 0 else None
        # every History of a resumed run says so: the one its callbacks see, a
        # DivergenceError's, the one resume returns
        extra = {} if run.resumed_at is None else {"resumed_at": run.resumed_at}
        return History(loss=loss, epochs=run.done, record_every=run.record_every,
                       seconds=run.seconds, stopped=stopped, val_loss=val, best_epoch=best,
                       compile_seconds=run.compile_seconds, kernel=run.kernel_name,
                       stride=run.records.stride, extra=extra)

    def _record_buffers(self, start, chunk):
        history = np.empty(_records_in(start, chunk, self.run.record_every))
        history.fill(np.nan)  # (np.full: twice the time)
        if not self.run.validating:
            return history, None
        return history, history.copy()

    def _call(self, epochs, start, params, state, history, val_history, backup):
        """One call of the training kernel for ``epochs`` epochs from epoch ``start``;
        (epochs_done, bad_epoch, early_stopped)."""
        run = self.run
        options = (self.net, self.data, self.loop, run.rule, run.stop, state, self.work)
        val, val_work = run.val, self.val_work
        if numba.config.DISABLE_JIT:  # the kernels as Python: scalars typed as compiled
            options = tuple(O.as_compiled(a) for a in options)
            val, val_work = O.as_compiled(val), O.as_compiled(val_work)
        net, data, loop, rule, stop, state, work = O.plain(*options)
        with nullcontext() if self.shared is None else self.shared.running():
            ran, bad, early = self.plan.kernel(params, net, data, val, loop, rule, stop, state,
                                               work, val_work, history, val_history, backup,
                                               start, epochs)
        return int(ran), int(bad), bool(early)

    def _diverged_at(self, bad):
        """Divergence found at epoch ``bad`` (its record, or the one it would take, is not
        finite): back to the latest finite state (_rewind), the records cut there."""
        self.bad = bad
        older = self.anchor is not None and not any(self.anchor is s for s in self.snapshots)
        self._rewind(self.snapshots + [self.anchor] if older else self.snapshots)
        self.run.records.truncate(self.run.n_records)

    def _ends_finite(self):
        """Whether the loss at the parameters the run ends with is finite.  No record
        computes it (a full-batch record is the loss before its epoch's update, a
        mini-batch one the mean of its batches' losses before theirs): proved by the
        bound of _divergence.py where it can, else evaluated."""
        run, model = self.run, self.model
        return (final_loss_bounded(model, self.x, self.y, run.sw, self.batch,
                                   run.data_squares)
                or model._finite_loss(self.x, self.y, run.sw))

    def _guard_chunk(self, chunk):
        """Before a guarded chunk: backup <- the parameters, and this chunk's start
        becomes the newest of the (at most two) snapshots; the anchor follows a snapshot
        that moves out of backup."""
        snapshots, backup, run = self.snapshots, self.backup, self.run
        del snapshots[1:]  # the oldest goes before anything is copied
        if snapshots and snapshots[0][1] is backup:  # about to be overwritten
            shared_one = snapshots[0]
            snapshots[0] = _with_params(shared_one, backup.copy())
            if self.anchor is shared_one:
                self.anchor = snapshots[0]
        backup[...] = self.model._params
        # the kernel writes backup only at a recorded epoch before the chunk's last: without
        # one, backup keeps this chunk's start for a replay and the snapshot need not copy
        # the parameters -- a guarded fit of one chunk then holds one copy of them, not two
        shared = not _records_before_last(run.done, chunk, run.record_every)
        snapshots.insert(0, self._snapshot(backup if shared else None))

    def _snapshot(self, params=None):
        """What a replay after divergence starts from.  The plain rule never touches the
        optimizer state, so it is not copied then (it is as large as two parameter
        vectors).  ``params``: an array already holding the parameters, kept instead of a
        copy."""
        model, run = self.model, self.run
        moments = model._opt_state if O.is_plain(run.rule) else model._opt_state.copy()
        params = model._params.copy() if params is None else params
        es = (run.best_loss.copy(), run.bad_checks.copy(), run.best_epoch.copy(),
              self._best_params_now())
        return (run.done, params, model._rng_state.copy(), moments, model._opt_step.copy(),
                es)

    def _best_params_now(self):
        """A copy of the run's best parameters (restore_best; else its empty array) for a
        snapshot: the newest snapshot's when the best record has not moved since, so that
        chunks that find no better record copy nothing."""
        run = self.run
        if self.snapshots:
            _, _, best_epoch, best_params = self.snapshots[0][5]
            if best_epoch[0] == run.best_epoch[0]:
                return best_params
        return run.best_params.copy()

    def _rewind(self, snapshots):
        """After divergence: leave the model at the latest state of the run whose loss on
        the training data is finite; sets run.done to its epoch.

        The candidates are the guard's state, the epoch before it, the starts of the last
        two chunks and, in full-batch mode, the latest chunk start whose loss a record
        showed finite (``snapshots``, newest first); earlier states are rebuilt by
        replaying the run from a chunk-start snapshot.  If none has a finite loss, the
        guard's state stays."""
        model, run, backup = self.model, self.run, self.backup
        # the replays use backup as their guard's buffer: a snapshot kept in it first
        # becomes a copy (it still holds its chunk's start)
        snapshots = [_with_params(s, s[1].copy()) if s[1] is backup else s for s in snapshots]
        guarded = model._params.copy()
        found = None
        for epoch in sorted({run.done, run.done - 1} | {s[0] for s in snapshots},
                            reverse=True):
            base = next((s for s in snapshots if s[0] <= epoch), None)
            if base is None:
                continue
            start, params, rng, moments, step = base[0], *(a.copy() for a in base[1:5])
            es = tuple(a.copy() for a in base[5])
            # the guard's state: its parameters are at hand, but the optimizer state
            # of that epoch is not (the kernel went on past it): a stateful rule
            # replays the epochs to it, as for an earlier epoch
            if epoch == run.done and (O.is_plain(run.rule) or epoch == start):
                params = guarded.copy()
                if run.shuffle:  # the kernel drew permutations past the restored epoch
                    rng = _replay_shuffles(rng, epoch - start, self.work.perm)
                if epoch != start:  # the early-stopping record the run has reached
                    es = tuple(a.copy() for a in (run.best_loss, run.bad_checks,
                                                  run.best_epoch, run.best_params))
            elif epoch > start:  # (the replay writes a better record into es's copies)
                state = O.State(rng, moments, step, *es)
                history, val_history = self._record_buffers(start, epoch - start)
                ran, bad, _ = self._call(epoch - start, start, params, state, history,
                                         val_history, backup)
                if bad >= 0 or ran != epoch - start:
                    continue
            candidate = (epoch, params, rng, moments, step, es)
            if found is None:
                found = candidate  # the guard's state: the fallback
            model._params[...] = params
            self.rewound_finite = model._finite_loss(self.x, self.y, run.sw)
            if self.rewound_finite:
                found = candidate
                break
        run.done, params, rng, moments, step, es = found
        model._params[...] = params
        model._rng_state[:] = rng
        model._opt_state[...] = moments
        model._opt_step[...] = step
        # the early-stopping record as it was at that epoch: a checkpoint of it that said
        # "patience ran out" would end its resume at once, and best parameters found
        # after it (the state of a later validation record, whose training loss may not
        # even be finite) would be what restore_best puts back
        for kept, value in zip((run.best_loss, run.bad_checks, run.best_epoch,
                                run.best_params), es):
            kept[...] = value


def _stops(cb, result):
    """Whether a callback's return value asks the fit to stop: False (numpy's too: a
    comparison of losses, ``hist.loss[-1] > 0.01``) stops, None and True go on; anything
    else is refused rather than guessed at."""
    if result is None:
        return False
    if isinstance(result, (bool, np.bool_)):
        return not result
    raise TypeError(f"callback {getattr(cb, '__name__', cb)!r} returned {result!r}; a "
                    f"callback returns False to stop the fit, True or None to go on")


def _records_in(start, epochs, record_every):
    """How many of the epochs start .. start + epochs - 1 are recorded (those that are
    multiples of record_every)."""
    return -(-(start + epochs) // record_every) - -(-start // record_every)


def _records_before_last(done, chunk, record_every):
    """Whether a kernel call of ``chunk`` epochs from epoch ``done`` records an epoch
    before its last (where the divergence guard copies the parameters to backup)."""
    first = -(-done // record_every) * record_every
    return first < done + chunk - 1


def _with_params(snapshot, params):
    return (snapshot[0], params) + tuple(snapshot[2:])


def _replay_shuffles(state, epochs, perm):
    """The generator state after ``epochs`` shuffled epochs from ``state`` (the kernel
    draws one permutation of ``perm``'s length per epoch; the generator is counter-based:
    only its counter moves)."""
    from .kernels.rng import draws_per_permutation
    state = state.copy()
    state[1] += epochs * draws_per_permutation(perm.shape[0])
    return state

