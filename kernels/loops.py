"""The training loops: every epoch, batch and update of a chunk of a run in one call.

``trainer(mode, rule, validating, sparse)`` returns the compiled entry for one kind of
fit:

    mode        FULL (full batch, no shuffle: the data are loaded once), MINI
                (mini-batches, or a full batch drawn in shuffled order) or SAMPLE
                (per-sample SGD, sample.py; not for cross_entropy, whose softmax output
                takes the batch path with batches of one)
    rule        FUSED (the plain rule applied inside the backward pass: batched plain
                SGD), PLAIN (the plain rule as a separate step: per-sample SGD; for
                batches it gives the same bits as FUSED, tests/test_training.py) or
                STATEFUL (momentum, Nesterov, Adam, any rule with L2)
    validating  whether a validation set is evaluated at each record (early stopping)
    sparse      whether the inputs (training and validation) are options.SparseRows,
                whose first layer sparse.py computes (MINI mode only)

Each entry is a closure over its four constants, so Numba prunes the branches of the
other kinds before it types anything: a fit compiles only the code its kind of fit
runs (the old single entry compiled every mode, rule and the validation for every fit,
for tens of seconds).  Entries and the functions they call are compiled on first use and cached
on disk.  Bodies with compile-time flags are inlined at Numba's level
(``inline="always"``) so their flags can be pruned; they call ordinary compiled
functions (inlining whole call trees at Numba's level cost minutes).

Every entry takes the same arguments (``_make_trainer``) and returns (epochs_done,
bad_epoch, early_stopped).
"""
from numba import njit, uint64

from .batch import gather, load_weights, scatter
from .config import INNER, JIT, refuse_python_calls
from .intrinsics import borrowed, like
from .options import Data, Loop, Net, Rule, State, Stop, Work
from .passes import BACKWARD, BATCH_LOSS, FORWARD, OUTPUT_DELTAS, call as call_pass
from .rng import permutation_into
from .rules import (ADAM, adam_scales, l2_penalty, learning_rate, plain_step,
                    stateful_step, sum4, with_l2)
from .sample import sample_epoch_plain, sample_epoch_stateful
from .sparse import sparse_first_gradient, sparse_first_z

FULL = 0
MINI = 1
SAMPLE = 2
MODES = {"full": FULL, "mini": MINI, "sample": SAMPLE}

FUSED = 0
PLAIN = 1
STATEFUL = 2
RULES = {"fused": FUSED, "plain": PLAIN, "stateful": STATEFUL}


@njit(**INNER)
def all_finite(x):
    """Whether no element of x (1-D, C-contiguous) is NaN or infinite.  First their sum
    (rules.sum4: vector steps, a masked last one): a NaN or an infinity makes any sum
    that includes it non-finite, so a finite sum proves every element finite.  Only
    when the sum is not finite -- a non-finite element, or finite ones whose sum
    overflows -- are the elements looked at one by one (v - v is 0 only for a finite
    v).  The parameters are checked at every recorded epoch; a loop over 31 float32
    ones ran 15 of them scalar after its one vector step."""
    total = sum4(x, uint64(0), uint64(x.shape[0]))
    if total - total == 0:
        return True
    for i in range(x.shape[0]):
        v = x[i]
        if not (v - v == 0):  # False for nan and +-inf
            return False
    return True


@njit(**INNER)
def copy_into(dst, src):
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@njit(**dict(INNER, inline="always"))
def named_options(net, data, loop, rule, stop, state, work):
    """A training entry's options as the named tuples its code reads.  Python passes
    them as plain tuples of their fields (options.plain): Numba's dispatcher types a
    plain tuple in C at each call, a named one through Python -- 4-5 us of every call,
    as much as a small fit's epoch."""
    return (Net(*net), Data(*data), Loop(*loop), Rule(*rule), Stop(*stop), State(*state),
            Work(*work))


@njit(**INNER)
def stateful_update(params, grad, lr, net, rule, state, l2_scale):
    """One step of a rule with state over the whole parameter vector (gradient in
    ``grad``): rules.stateful_step for every weight (decayed by l2 * l2_scale) and bias."""
    l2 = rule.l2 * l2_scale
    state.step[0] += 1
    c1 = 1.0
    c2 = 1.0
    if rule.optimizer == ADAM:
        c1, c2 = adam_scales(rule.beta1, rule.beta2, state.step[0])
    sizes = net.sizes
    if l2 != 0.0:
        # the weights' decay (rules.with_l2, as stateful_step applies it) into their
        # gradients first, a layer's block at a time, then one loop of the undecayed
        # steps: the same values.  The indices unsigned: from a signed offset LLVM
        # cannot rule out a negative index, keeps Numba's wraparound for it in every
        # step, and leaves the loop scalar -- as it left the loops per layer of whole
        # steps this replaced.  W4b H=64's 6,922 parameters, l2 1e-4 (scikit-learn's
        # default alpha), ns a parameter, three runs alternating: those loops per layer
        # Adam float64 5.3-7.7, float32 4.1-7.5, momentum 1.8-3.1, 1.7-3.1; this with
        # a signed decay loop 2.2-3.1, 1.8-2.1, 1.2-1.9, 1.4-1.7; as written 1.7-1.8,
        # 0.78-0.82, 0.68-0.74, 0.35-0.43 (without L2 1.3-1.6, 0.6-0.7, 0.4-0.5,
        # 0.2-0.3).  It compiles one inlined step where they compiled three
        # (relu_adam, first_fit.py: 11.6-11.8 -> 10.3-11.0 s; the unsigned indices
        # level with the signed ones, 13.9-17.6 against 14.3-16.4 s in a slower phase).
        # (grad is the batch's work row, computed afresh for each step.)
        for l in range(sizes.shape[0] - 1):
            wo = uint64(net.w_off[l])
            for p in range(wo, wo + uint64(sizes[l] * sizes[l + 1])):
                w = params[p]
                grad[p] = with_l2(like(grad[p], w), w, like(l2, w))
    # weights and biases now take the same step, so one loop over the whole vector (the
    # layers' blocks lie end to end from 0; from 0, an index LLVM knows is not
    # negative), a loop it vectorizes: without L2, W4b H=64's 6,922 parameters, Adam,
    # float64 5.0 -> 1.3 ns a parameter, float32 4.0 -> 0.45, against the scalar loops
    # per layer it replaced
    last = sizes.shape[0] - 2
    end = (net.b_off[last] + sizes[last + 1] if net.b_off[last] >= 0
           else net.w_off[last] + sizes[last] * sizes[last + 1])
    for p in range(end):
        stateful_step(params, state.moments, p, grad[p], lr, rule, c1, c2, None)


@njit(**dict(JIT, inline="always"))
def _batch_epoch(RULE, SPARSE, params, net, data, loop, rule, state, work, lr, full,
                 recording):
    """One epoch of mini-batch (or full-batch) updates; returns the mean batch loss when
    ``recording`` (else 0).  RULE: FUSED, PLAIN or STATEFUL; SPARSE: whether data.x is
    SparseRows (compile-time constants)."""
    x, y, sw = data
    acts, deltas, a_off = work.acts, work.deltas, work.a_off
    n = x.shape[0]
    batch_size = loop.batch_size
    shuffle = loop.shuffle
    n_layers = net.sizes.shape[0] - 1
    k = net.sizes[n_layers]
    out_off = a_off[n_layers]
    out_act = net.acts[n_layers - 1]
    epoch_loss = 0.0
    n_batches = 0
    for start in range(0, n, batch_size):
        # (not min(): Numba compiles its generic min as a function of its own)
        nb = batch_size if batch_size < n - start else n - start
        if SPARSE:  # the first layer's z from the rows, into layer 1's block
            sparse_first_z(params, net, x, start, nb, work.perm, shuffle, acts, a_off)
        elif not full:  # (full: the inputs were gathered once, for the whole run)
            gather(x, start, nb, work.perm, shuffle, acts, 0)
        if not full:
            gather(y, start, nb, work.perm, shuffle, work.y_batch, 0)
        wb = load_weights(sw, start, nb, work.perm, shuffle, work.w_batch)
        # scikit-learn's convention (epoch_loss="sample_mean"): the L2 term of a batch is
        # divided by its own size, so a short last batch gets batch_size / nb times l2
        l2_scale = batch_size / nb if rule.sample_mean else 1.0
        passes = work.passes  # the batch passes' addresses (passes.py)
        call_pass(passes[FORWARD], FORWARD, (params, net, acts, a_off, nb, work.z_out, SPARSE))
        if recording:
            bl = call_pass(passes[BATCH_LOSS], BATCH_LOSS,
                           (acts, out_off, work.y_batch, work.z_out, wb, net.loss, k, nb))
            bl += l2_scale * l2_penalty(params, net, rule.l2_loss)
            epoch_loss += nb * bl if rule.sample_mean else bl
        call_pass(passes[OUTPUT_DELTAS], OUTPUT_DELTAS,
                  (acts, out_off, work.y_batch, deltas, wb, net.loss, out_act, k, nb))
        if RULE == FUSED:
            call_pass(passes[BACKWARD], BACKWARD,
                      (params, net, acts, a_off, deltas, params, nb, lr, True, not SPARSE))
            if SPARSE:
                sparse_first_gradient(net, x, start, nb, work.perm, shuffle, deltas, a_off,
                                      params, lr, True)
        else:
            call_pass(passes[BACKWARD], BACKWARD, (params, net, acts, a_off, deltas, work.grad,
                                                  nb, like(0.0, params), False, not SPARSE))
            if SPARSE:
                sparse_first_gradient(net, x, start, nb, work.perm, shuffle, deltas, a_off,
                                      work.grad, lr, False)
            if RULE == PLAIN:
                for p in range(params.shape[0]):
                    params[p] = plain_step(params[p], work.grad[p], lr)
            else:
                stateful_update(params, work.grad, lr, net, rule, state, l2_scale)
        n_batches += 1
    return epoch_loss / n if rule.sample_mean else epoch_loss / n_batches


@njit(**dict(INNER, inline="always"))
def _inputs_forward(SPARSE, params, net, x, start, nb, work, z_out):
    """The forward pass of the samples start <= s < start + nb of x (dense rows, or with
    SPARSE SparseRows), in order."""
    if SPARSE:
        sparse_first_z(params, net, x, start, nb, work.perm, False, work.acts, work.a_off)
    else:
        gather(x, start, nb, work.perm, False, work.acts, 0)
    call_pass(work.passes[FORWARD], FORWARD,
              (params, net, work.acts, work.a_off, nb, z_out, SPARSE))


@njit(**dict(INNER, inline="always"))
def _evaluate(SPARSE, params, net, data, work, gathered):
    """The loss of the whole set ``data`` in one batch.  ``gathered``: the work holds
    data's inputs (dense rows) and targets from an earlier call (L-BFGS evaluates one
    set again and again), so they are not copied in again."""
    n = data.x.shape[0]
    n_layers = net.sizes.shape[0] - 1
    if SPARSE or not gathered:
        _inputs_forward(SPARSE, params, net, data.x, 0, n, work, work.z_out)
    else:
        call_pass(work.passes[FORWARD], FORWARD,
                  (params, net, work.acts, work.a_off, n, work.z_out, SPARSE))
    if not gathered:
        gather(data.y, 0, n, work.perm, False, work.y_batch, 0)
    return call_pass(work.passes[BATCH_LOSS], BATCH_LOSS,
                     (work.acts, work.a_off[n_layers], work.y_batch, work.z_out, data.w,
                      net.loss, net.sizes[n_layers], n))


@njit(**INNER)
def evaluate(params, net, data, work):
    """The loss of the whole set ``data`` (dense rows), held in one batch (work for
    cap = n)."""
    return _evaluate(False, params, net, data, work, False)


@njit(**INNER)
def evaluate_rows(params, net, data, work):
    """evaluate of a set of SparseRows."""
    return _evaluate(True, params, net, data, work, False)


GOING_ON = 0
DIVERGED = 1
STOPPED_EARLY = 2


@njit(**dict(INNER, inline="always"))
def all_finite_state(MOMENTS, params, rule, state):
    """Whether the parameters are finite, and with MOMENTS (a compile-time constant: a
    rule with state) Adam's v: its overflow (a float32 model's squared gradients past
    3.4e38; rules.adam_step stores an overflowing corrected v as v) leaves the
    parameters finite but stops their steps (m / sqrt(inf) = 0), a divergence too."""
    if not all_finite(params):
        return False
    if MOMENTS and rule.optimizer == ADAM:
        # a loop here, not all_finite(state.moments[1]): the row of a 2-D array would
        # compile all_finite once more, for its own array type (0.2-0.4 s of a first fit)
        v = state.moments
        for i in range(v.shape[1]):
            if not (v[1, i] - v[1, i] == 0):
                return False
    return True


@njit(**dict(INNER, inline="always"))
def after_record(VALIDATING, SPARSE, MOMENTS, params, net, val, rule, stop, state,
                 val_work, history, val_history, backup, epoch_loss, e, g, epochs, r0,
                 record_every, guard, restore_best, good_epochs):
    """The bookkeeping of a recorded epoch g (the e-th of this chunk), shared by every
    training entry, the generated ones included: the record, the divergence guard, and
    with VALIDATING (a compile-time constant) the validation loss and early stopping
    (SPARSE: the validation inputs are SparseRows).
    Returns (good_epochs, GOING_ON / DIVERGED / STOPPED_EARLY)."""
    r = g // record_every - r0
    history[r] = epoch_loss
    finite = (epoch_loss - epoch_loss == 0) and all_finite_state(MOMENTS, params, rule,
                                                                  state)
    if guard:
        if finite:
            if e + 1 < epochs:  # the last epoch's state needs no copy: it is final
                copy_into(backup, params)
            good_epochs = e + 1
        else:
            copy_into(params, backup)
            return good_epochs, DIVERGED
    if VALIDATING:
        if finite:
            if SPARSE:
                vloss = evaluate_rows(params, net, val, val_work)
            else:
                vloss = evaluate(params, net, val, val_work)
            val_history[r] = vloss
            if vloss < state.best_loss[0] - stop.min_delta:
                state.best_loss[0] = vloss
                state.bad_checks[0] = 0
                state.best_epoch[0] = g
                if restore_best:
                    copy_into(state.best_params, params)
            else:
                state.bad_checks[0] += 1
                if stop.patience > 0 and state.bad_checks[0] >= stop.patience:
                    return good_epochs, STOPPED_EARLY
    return good_epochs, GOING_ON


@njit(**dict(INNER, inline="always"))
def plain_steps(params, grad, lr, backup, save):
    """Every parameter's plain SGD step (rules.plain_step), with ``save`` the parameters
    before it copied into ``backup`` first; returns whether every new parameter is
    finite.  For the generated full-batch kernels (record_checked): the divergence
    guard's check and copy ride along the update, on values the update holds in
    registers.  After the update (after_record), the guard's vector loads of the
    parameters waited on the update's scalar stores (31 float32 parameters: a vector
    loop of 8 x 4 never ran): 70 ns of a 500 ns float32 W3 epoch, 14%."""
    finite = True
    # Two loops, not one with ``if save`` inside (which LLVM unswitches too): whole W3
    # fits (dtype_ratio.py, 3 alternating rounds) ran 4% faster in float32 this way,
    # 0.039-0.040 s against 0.040-0.042, and 4% slower in float64, 0.063-0.065 s
    # against 0.061-0.062 -- code placement, not work: the same loops either way.
    if save:
        for p in range(params.shape[0]):
            old = params[p]
            new = plain_step(old, grad[p], lr)
            backup[p] = old
            params[p] = new
            finite &= new - new == 0  # False for nan and +-inf; an and: it vectorizes
    else:
        for p in range(params.shape[0]):
            new = plain_step(params[p], grad[p], lr)
            params[p] = new
            finite &= new - new == 0
    return finite


@njit(**dict(INNER, inline="always"))
def record_checked(params, history, backup, epoch_loss, finite, e, g, r0, record_every,
                   guard, good_epochs):
    """after_record (no validation, no optimizer state) for an entry whose update
    checked the new parameters (``finite``) and, in the epoch after each recorded one,
    copied that epoch's state into backup as it stepped (plain_steps with save: guard
    and e > 0 and (g - 1) % record_every == 0).  So backup holds the state after the
    last good check, as after_record keeps it, and is written only after a recorded
    epoch before the chunk's last: the same decisions, the same state restored."""
    history[g // record_every - r0] = epoch_loss
    if guard:
        if not (epoch_loss - epoch_loss == 0 and finite):
            copy_into(params, backup)
            return good_epochs, DIVERGED
        good_epochs = e + 1
    return good_epochs, GOING_ON


@njit(**dict(INNER, inline="always"))
def end_of_chunk(MOMENTS, params, rule, state, backup, guard, good_epochs, epoch0, epochs):
    """The guard's last check, after a chunk's last epoch: (epochs_done, bad_epoch,
    early_stopped) as every training entry returns them."""
    if guard and not all_finite_state(MOMENTS, params, rule, state):
        copy_into(params, backup)
        return good_epochs, epoch0 + epochs - 1, False
    return epochs, -1, False


def _make_trainer(MODE, RULE, VALIDATING, SPARSE):
    """The entry for one kind of fit; MODE, RULE, VALIDATING and SPARSE are constants of
    the closure, so every ``if`` on them is decided before Numba types the function."""
    MOMENTS = RULE == STATEFUL  # the guard checks Adam's v (after_record)

    @njit(**JIT)
    def train(params, net, data, val, loop, rule, stop, state, work, val_work, history,
              val_history, backup, epoch0, epochs):
        """Train ``params`` in place for ``epochs`` epochs, numbered from ``epoch0`` (a run
        cut into chunks is the same run).

        data, val: options.Data (val empty when not VALIDATING); loop, rule, stop,
        state, work: options.Loop, Rule, Stop, State, Work (val_work: a Work with cap
        len(val)).

        Records: epoch g is recorded when g % record_every == 0, as this chunk's record
        (g // record_every) - ceil(epoch0 / record_every) in ``history``: the mean of
        its batch losses (full batch: the loss before its update) plus the L2 term;
        with validation data, the validation loss after the epoch in ``val_history``.

        Early stopping (stop.patience > 0): state.best_loss / bad_checks / best_epoch
        are kept across chunks; with stop.restore_best the best parameters are copied
        to state.best_params.

        Divergence guard: at each recorded epoch, and at the end, the loss and the
        parameters are checked; while finite they are copied to ``backup`` (len(params);
        len 0 turns the guard off), except after the call's last epoch.  On a
        non-finite value params are restored from ``backup`` -- the state after the last
        good check; the caller fills it with the starting state -- and the loop stops.
        So a call with no recorded epoch before its last never writes ``backup``.

        Returns (epochs_done, bad_epoch, early_stopped): bad_epoch is the epoch whose
        check failed, or -1; epochs_done counts the epochs whose updates the parameters
        contain.
        """
        net, data, loop, rule, stop, state, work = named_options(net, data, loop, rule,
                                                                 stop, state, work)
        # every array as a view Numba does not reference-count (intrinsics.borrowed)
        (params, net, data, val, state, work, val_work, history, val_history,
         backup) = borrowed((params, net, data, val, state, work, val_work, history,
                             val_history, backup))
        n = data.x.shape[0]
        record_every = loop.record_every
        r0 = (epoch0 + record_every - 1) // record_every
        guard = backup.shape[0] == params.shape[0]
        restore_best = stop.restore_best and state.best_params.shape[0] == params.shape[0]
        full = False
        if MODE == FULL:
            full = True
            gather(data.x, 0, n, work.perm, False, work.acts, 0)
            gather(data.y, 0, n, work.perm, False, work.y_batch, 0)
        good_epochs = 0
        for e in range(epochs):
            g = epoch0 + e
            recording = g % record_every == 0
            lr = like(learning_rate(rule, g), params)  # the step in the model's dtype
            if loop.shuffle:
                permutation_into(work.perm, state.rng)
            if MODE == SAMPLE:
                if RULE == STATEFUL:
                    epoch_loss = sample_epoch_stateful(params, net, data.x, data.y, data.w,
                                                       lr, work.perm, work.h, work.d,
                                                       recording, rule, state, 0)
                else:
                    epoch_loss = sample_epoch_plain(params, net, data.x, data.y, data.w, lr,
                                                    work.perm, work.h, work.d, recording,
                                                    rule, state, work.pool)
            else:
                epoch_loss = _batch_epoch(RULE, SPARSE, params, net, data, loop, rule, state,
                                          work, lr, full, recording)
            if recording:
                good_epochs, status = after_record(
                    VALIDATING, SPARSE, MOMENTS, params, net, val, rule, stop, state,
                    val_work, history, val_history, backup, epoch_loss, e, g, epochs, r0,
                    record_every, guard, restore_best, good_epochs)
                if status == DIVERGED:
                    return good_epochs, g, False
                if status == STOPPED_EARLY:
                    return e + 1, -1, True
        return end_of_chunk(MOMENTS, params, rule, state, backup, guard, good_epochs, epoch0,
                            epochs)

    return train


_trainers = {}


def trainer(mode, rule, validating, sparse=False):
    """The entry for one kind of fit (see the module docstring): mode "full", "mini" or
    "sample", rule "fused", "plain" or "stateful", validating and sparse bools (sparse:
    "mini" only)."""
    if sparse and mode != "mini":
        raise ValueError(f"sparse inputs train in the mini-batch entries, not {mode!r}")
    key = (MODES[mode], RULES[rule], bool(validating), bool(sparse))
    fn = _trainers.get(key)
    if fn is None:
        fn = _trainers.setdefault(key, _make_trainer(*key))
    return fn


@njit(**dict(INNER, inline="always"))
def _predict(SPARSE, params, net, x, out, work):
    n = x.shape[0]
    n_layers = net.sizes.shape[0] - 1
    cap = work.w_batch.shape[0]
    out_off = work.a_off[n_layers]
    for start in range(0, n, cap):
        nb = cap if cap < n - start else n - start
        _inputs_forward(SPARSE, params, net, x, start, nb, work, work.z_out[:0])
        scatter(work.acts, out_off, nb, out, start)


@njit(**JIT)
def predict(params, net, x, out, work):
    """out (n, n_out) <- the network's outputs for x (n, n_in), in batches of the
    work's capacity.  net, work: an options.Net and Work as plain tuples (named_options)."""
    _predict(False, params, Net(*net), x, out, Work(*work))


@njit(**JIT)
def predict_rows(params, net, x, out, work):
    """predict of SparseRows x."""
    _predict(True, params, Net(*net), x, out, Work(*work))


@njit(**dict(INNER, inline="always"))
def _loss_and_gradient(SPARSE, params, net, data, grad, work, gathered):
    n = data.x.shape[0]
    n_layers = net.sizes.shape[0] - 1
    k = net.sizes[n_layers]
    out_off = work.a_off[n_layers]
    loss = _evaluate(SPARSE, params, net, data, work, gathered)
    call_pass(work.passes[OUTPUT_DELTAS], OUTPUT_DELTAS,
              (work.acts, out_off, work.y_batch, work.deltas, data.w, net.loss,
               net.acts[n_layers - 1], k, n))
    call_pass(work.passes[BACKWARD], BACKWARD,
              (params, net, work.acts, work.a_off, work.deltas, grad, n, like(0.0, params),
               False, not SPARSE))
    if SPARSE:
        sparse_first_gradient(net, data.x, 0, n, work.perm, False, work.deltas, work.a_off,
                              grad, like(0.0, params), False)
    return loss


@njit(**JIT)
def loss_and_gradient(params, net, data, grad, work, gathered):
    """The loss of the whole set ``data`` (one batch: work for cap = n) and its gradient
    into ``grad``; returns the loss.  net, data, work: the fields of an options.Net,
    Data (dense rows) and Work as plain tuples (``tuple(net)``): Numba's dispatcher types
    a plain tuple of arrays in C at each call, a named tuple in Python -- about 2 us of
    the 25 of an L-BFGS evaluation of the XOR net, which calls this once per
    evaluation.  ``gathered``: an earlier call with this work and data left the data in
    the work (_evaluate): an evaluation of load_digits saves a tenth of its time."""
    return _loss_and_gradient(False, params, Net(*net), Data(*data), grad, Work(*work),
                              gathered)


@njit(**JIT)
def loss_and_gradient_rows(params, net, data, grad, work, gathered):
    """loss_and_gradient of a set of SparseRows (its first layer is computed from the
    rows at every call; ``gathered`` spares the targets' copy)."""
    return _loss_and_gradient(True, params, net, data, grad, work, gathered)


refuse_python_calls(globals())  # the INNER functions: TypeError from Python, not a crash
