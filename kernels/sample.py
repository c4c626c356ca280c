"""Per-sample SGD (batch size 1): one update per sample, fused into the backward pass.

With one sample per step the batch machinery (rows of one sample, slices, a gradient
buffer) costs more than the arithmetic of a tutorial-sized net, so this path is written
for one sample: activations in one small flat vector indexed by unsigned offsets, and
each weight row updated right after it has been used to propagate the delta -- which
reads it once and gives exactly the numbers of computing the whole gradient first (the
delta uses the row before its update).

The back-propagated sum over a row is rules.row_dot (16 SIMD lanes); with the plain rule
rules.row_dot_step, which updates the row in the same pass.  Wide layers are bound by
the traffic over the weights (a 1024 x 1024 matrix sits in L3, not L2): two passes per
sample (forward; back-propagate + update) instead of three more than halves W4a's time
at H=1024 (asv_benchmarks: Width).
"""
import numpy as np
from numba import njit, uint64

from .config import INNER, refuse_python_calls, with_constants
from .intrinsics import like
from .rules import (ADAM, adam_scales, delta_scale, is_combined, l2_penalty, loss_of_sum,
                    loss_term, loss_uses_z, output_delta, plain_step, row_dot, stateful_step,
                    times_derivative)
from .pool import SAMPLE_BACKWARD, SAMPLE_FORWARD, SAMPLE_LOAD, SAMPLE_STORE
from .sample_share import KEEP_Z, PROPAGATE, shared_step
from .sample_units import backward_rows, forward_units



# What each compiled copy of the epoch (epoch_function) reads as a constant: PLAIN, the
# plain rule (else rule and state drive rules.stateful_step); SHARE, whether the wide
# layers' steps may go to a pool's threads; ARCHITECTURE, None (the network's arrays,
# read from the Net) or the constant tuples of a kernel generated for one architecture.
PLAIN = True
SHARE = False
ARCHITECTURE = None


def _sample_epoch(params, net, x, y, sw, lr, order, h, d, recording, rule, state, pool):
    """One epoch of per-sample SGD over the samples in ``order``; returns the mean sample
    loss when ``recording`` (else 0).  Compiled only as copies (epoch_function), whose
    constants PLAIN, SHARE and ARCHITECTURE (above) Numba sees before it types anything,
    so that it drops the branches they rule out.

    x (n, n_in), y (n, n_out) sample-major; sw (n,) sample weights or empty.  The
    network: sizes, w_off, b_off, acts and loss from ARCHITECTURE (a generated kernel's
    constants: LLVM then knows every trip count) or from ``net``, which l2_penalty also
    reads.  Without PLAIN, rule and state (options.Rule / State) drive
    rules.stateful_step, one parameter at a time as each is reached.  With SHARE (and
    PLAIN) the wide layers' steps go to the threads of the pool at address ``pool`` when
    it has several (sample_share.py; 0: none).  h, d: flat per-unit buffers of
    sum(sizes) for the activations and deltas (layer l starts at sum(sizes[:l])).
    Softmax outputs are not handled here (the dispatcher sends cross_entropy to the
    batch path).
    """
    if ARCHITECTURE is None:
        sizes, w_off, b_off, acts, loss = net.sizes, net.w_off, net.b_off, net.acts, net.loss
    else:
        sizes, w_off, b_off, acts, loss = ARCHITECTURE
    n_layers = len(sizes) - 1
    n0 = uint64(sizes[0])
    k = uint64(sizes[-1])
    out_off = uint64(0)
    for l in range(n_layers):
        out_off += uint64(sizes[l])
    out_act = acts[n_layers - 1]
    scale = like(delta_scale(loss, out_act, k, 1), h)  # in the model's dtype
    combined = is_combined(loss, out_act)
    total = 0.0
    weighted = sw.shape[0] > 0
    adam = rule.optimizer == ADAM
    l2 = rule.l2
    c1 = 1.0
    c2 = 1.0
    moments = state.moments
    n = order.shape[0]
    if SHARE:  # the shared layers' columns into the threads' blocks for the epoch
        _move_blocks(pool, np.int64(SAMPLE_LOAD), params, sizes, w_off, b_off, h, d, lr)
    for t in range(n):
        s = order[t]
        ws = sw[s] if weighted else 1.0
        if not PLAIN:
            state.step[0] += 1
            if adam:
                c1, c2 = adam_scales(rule.beta1, rule.beta2, state.step[0])
        for i in range(n0):
            h[i] = x[s, i]
        # forward
        ai = uint64(0)
        for l in range(n_layers):
            n_in = uint64(sizes[l])
            n_out = uint64(sizes[l + 1])
            zo = ai + n_in
            wo = uint64(w_off[l])
            has_bias = b_off[l] >= 0
            bo = uint64(b_off[l]) if has_bias else uint64(0)
            # the output layer keeps z for the stable loss (bce, poisson): d holds it until the
            # output delta is formed
            keep_z = loss_uses_z(loss) and l == n_layers - 1
            if not (SHARE and shared_step(pool, np.int64(SAMPLE_FORWARD), params, h, d, ai,
                                          zo, n_in, n_out, wo, np.int64(b_off[l]),
                                          np.int64(acts[l]), np.int64(KEEP_Z * keep_z),
                                          lr)):
                forward_units(params, wo, bo, has_bias, h, d, ai, zo, n_in, n_out, uint64(0),
                              n_out, acts[l], keep_z)
            ai = zo
        # loss and output delta
        sample_loss = 0.0
        for j in range(k):
            out = h[out_off + j]
            target = y[s, j]
            if recording:
                # z in float64 whether or not ``loss`` is a constant (a generated
                # kernel's): Numba would otherwise keep a float32 z where the branch
                # is pruned and widen it where both alternatives are typed
                zj = np.float64(d[out_off + j]) if loss_uses_z(loss) else 0.0
                sample_loss += loss_term(out, target, zj, loss)
            d[out_off + j] = output_delta(out, target, scale, out_act, combined)
            if weighted:
                d[out_off + j] *= ws
        if recording:
            if weighted:
                sample_loss *= ws
            if not PLAIN:  # the L2 term of the parameters before this sample's updates
                total += l2_penalty(params, net, rule.l2_loss)
            total += loss_of_sum(sample_loss, loss, k, 1)
        # backward, each weight row updated right after its use
        zo = out_off
        for l in range(n_layers - 1, -1, -1):
            n_in = uint64(sizes[l])
            n_out = uint64(sizes[l + 1])
            ai = zo - n_in
            wo = uint64(w_off[l])
            prev_code = acts[l - 1]  # (the last layer's for l == 0: not read then)
            if SHARE and shared_step(pool, np.int64(SAMPLE_BACKWARD), params, h, d, ai, zo,
                                     n_in, n_out, wo, np.int64(b_off[l]), np.int64(prev_code),
                                     np.int64(PROPAGATE * (l > 0)), lr):
                zo = ai  # the weights and the biases stepped by the threads
                continue
            if PLAIN:
                backward_rows(params, wo, n_out, h, d, ai, zo, uint64(0), n_in, lr, l > 0,
                              prev_code)
            else:
                for i in range(n_in):
                    row = wo + i * n_out
                    a = h[ai + i]
                    if l > 0:
                        acc = row_dot(params, row, d, zo, n_out)
                        d[ai + i] = times_derivative(acc, a, prev_code)
                    for j in range(n_out):
                        stateful_step(params, moments, row + j, a * d[zo + j], lr, rule, c1,
                                      c2, l2)
            if b_off[l] >= 0:
                bo = uint64(b_off[l])
                for j in range(n_out):
                    if PLAIN:
                        params[bo + j] = plain_step(params[bo + j], d[zo + j], lr)
                    else:
                        stateful_step(params, moments, bo + j, d[zo + j], lr, rule, c1, c2,
                                      None)
            zo = ai
    if SHARE:  # back into the parameters, which the caller checks and records
        _move_blocks(pool, np.int64(SAMPLE_STORE), params, sizes, w_off, b_off, h, d, lr)
    return total / n


@njit(**INNER)
def _move_blocks(pool, kind, params, sizes, w_off, b_off, h, d, lr):
    """SAMPLE_LOAD or SAMPLE_STORE for every shared layer."""
    for l in range(len(sizes) - 1):
        shared_step(pool, kind, params, h, d, uint64(0), uint64(0), uint64(sizes[l]),
                    uint64(sizes[l + 1]), uint64(w_off[l]), np.int64(b_off[l]), np.int64(0),
                    np.int64(0), lr)


def epoch_function(plain, share, architecture, name):
    """_sample_epoch with the constants ``plain``, ``share`` and ``architecture``
    (sizes, w_off, b_off, acts, loss as tuples and an int, or None), as a Python
    function named ``name`` (a str), to be compiled: Numba names its cache files after
    the function, so each set of constants needs a name of its own."""
    names = dict(globals(), PLAIN=bool(plain), SHARE=bool(share), ARCHITECTURE=architecture)
    return with_constants(_sample_epoch, names, name)


# the general entries' epochs (loops.py): the plain rule, its wide layers shared among
# the threads of the pool at ``pool`` (0: one thread); a rule with state (or L2)
sample_epoch_plain = njit(**INNER)(epoch_function(True, True, None, "sample_epoch_plain"))
sample_epoch_stateful = njit(**INNER)(epoch_function(False, False, None,
                                                      "sample_epoch_stateful"))


refuse_python_calls(globals())  # the INNER functions: TypeError from Python, not a crash
