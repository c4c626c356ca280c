"""fastbp/_divergence.py: the bound that lets a chunk run without the divergence guard's
copy of the parameters.  It must hold along real training (checked against the numpy
reference, step by step), and using it must change no result."""
import tracemalloc

import numpy as np
import pytest

import fastbp
import reference as R
from fastbp import _config as C
from fastbp import _divergence as D
from fastbp import kernels as K
from fastbp._layout import Layout
from fastbp.kernels.bounds import layer_norms
from fastbp.model import MLP

CODES = {"identity": K.IDENTITY, "sigmoid": K.SIGMOID, "relu": K.RELU, "tanh": K.TANH,
         "softmax": K.SOFTMAX}
LOSS_CODES = {"mse": K.MSE, "half_mse": K.HALF_MSE, "sse": K.SSE, "bce": K.BCE,
              "cross_entropy": K.CROSS_ENTROPY}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_layer_norms_against_numpy(bias, dtype):
    lay = Layout([5, 7, 3, 2], bias)
    rng = np.random.default_rng(1)
    params = rng.normal(size=lay.n_params).astype(dtype)
    out = np.empty((lay.n_layers, 4))
    layer_norms(params, lay.sizes_arr, lay.w_off, lay.b_off, out)
    ws = lay.weight_views(params.astype(np.float64))
    bs = lay.bias_views(params.astype(np.float64)) if bias else [np.zeros(1)] * 3
    for l, (W, b) in enumerate(zip(ws, bs)):
        want = [np.abs(W).sum(axis=0).max(), np.abs(W).sum(axis=1).max(), np.abs(b).max(),
                np.abs(W).sum() + (np.abs(b).sum() if bias else 0.0)]
        np.testing.assert_allclose(out[l], want, rtol=1e-12)
    for bad in (np.nan, np.inf, -np.inf):
        spoiled = params.copy()
        spoiled[lay.w_off[1] + 4] = bad
        layer_norms(spoiled, lay.sizes_arr, lay.w_off, lay.b_off, out)
        assert not np.isfinite(out[1, 3]) and np.all(np.isfinite(out[[0, 2], 3]))


# (sizes, activations, loss, batch size (None: full), bias, sample weights, lr, x scale)
CASES = [
    ([3, 7, 5, 2], ["sigmoid", "tanh", "sigmoid"], "mse", 4, True, False, 0.5, 3.0),
    ([2, 6, 1], ["relu", "identity"], "sse", 1, True, False, 5e-5, 2.0),
    ([4, 5, 3], ["tanh", "sigmoid"], "bce", 3, True, True, 0.8, 1.0),
    ([3, 6, 4], ["relu", "softmax"], "cross_entropy", 5, True, True, 0.3, 4.0),
    ([2, 4, 4, 1], ["sigmoid", "sigmoid", "sigmoid"], "half_mse", None, False, False, 2.0, 1.0),
    ([3, 8, 2], ["relu", "tanh"], "mse", 2, True, False, 0.1, 1.5),
]


def _case_data(sizes, loss, weighted, x_scale, n=11, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, sizes[0])) * x_scale
    if loss == "cross_entropy":
        y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], n)]
    elif loss == "bce":
        y = (rng.random((n, sizes[-1])) < 0.5).astype(float)
    else:
        y = rng.normal(size=(n, sizes[-1]))
    sw = rng.random(n) * 2.0 if weighted else None
    return X, y, sw


@pytest.mark.parametrize("case", CASES, ids=[c[2] + "-" + c[1][0] for c in CASES])
def test_bounds_hold_along_reference_training(case):
    """Every state's norms, pre-activations, steps and epoch losses stay under the bounds
    the walk computed for them (the numpy reference trains; the bounds are upper bounds
    of real numbers, the reference's rounding is far below the 1e-9 slack)."""
    sizes, acts, loss, batch, bias, weighted, lr, x_scale = case
    X, y, sw = _case_data(sizes, loss, weighted, x_scale)
    n = X.shape[0]
    batch = n if batch is None else batch
    rng = np.random.default_rng(5)
    weights = [rng.normal(scale=0.8, size=(a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
    biases = [rng.normal(scale=0.5, size=b) for b in sizes[1:]] if bias else None
    lay = Layout(sizes, bias)
    epochs = 3
    bound = D.ChunkBound(lay, [CODES[a] for a in acts], LOSS_CODES[loss], np.float64,
                         X, y, np.empty(0) if sw is None else sw, batch)
    record = []
    assert bound.walk(R.flatten(weights, biases), lr, epochs * bound.steps_per_epoch, record)
    assert len(record) == epochs * bound.steps_per_epoch + 1
    slack = 1.0 + 1e-9
    s = 0
    for _ in range(epochs):
        epoch_loss = 0.0
        for start in range(0, n, batch):
            idx = slice(start, start + batch)
            norms, z_bound, moves, loss_bound = record[s]
            for l, W in enumerate(weights):
                b = biases[l] if bias else np.zeros(1)
                assert np.abs(W).sum(axis=0).max() <= norms[l][0] * slack
                assert np.abs(W).sum(axis=1).max() <= norms[l][1] * slack
                assert np.abs(b).max() <= norms[l][2] * slack
            outs, _ = R.forward_ext(X[idx], weights, biases, acts)
            for l, W in enumerate(weights):
                zl = outs[l] @ W + (biases[l] if bias else 0.0)
                assert np.abs(zl).max() <= z_bound[l] * slack
            w_batch = None if sw is None else sw[idx]
            epoch_loss += abs(R.weighted_loss(X[idx], y[idx], weights, biases, acts, loss,
                                              w_batch))
            dW, db = R.weighted_gradient(X[idx], y[idx], weights, biases, acts, loss, w_batch)
            for l in range(len(weights)):
                assert lr * np.abs(dW[l]).max() <= moves[l][0] * slack
                weights[l] -= lr * dW[l]
                if bias:
                    assert lr * np.abs(db[l]).max() <= moves[l][1] * slack
                    biases[l] -= lr * db[l]
            s += 1
        assert epoch_loss <= loss_bound * slack


def test_walk_refuses_what_could_overflow():
    lay = Layout([2, 3, 1], True)
    X, y = np.ones((4, 2)), np.ones((4, 1))
    bound = D.ChunkBound(lay, [K.RELU, K.IDENTITY], K.MSE, np.float64, X, y,
                         np.empty(0), 4)
    params = np.full(lay.n_params, 0.5)
    assert bound.walk(params, 0.01, 10)
    assert not bound.walk(params, 1e80, 10)          # steps that overflow
    assert not bound.walk(np.full(lay.n_params, 1e200), 0.01, 1)  # outputs that do
    spoiled = params.copy()
    spoiled[3] = np.nan
    assert not bound.walk(spoiled, 0.01, 1)
    f32 = D.ChunkBound(lay, [K.RELU, K.IDENTITY], K.MSE, np.float32, X, y,
                       np.empty(0), 4)
    assert bound.walk(np.full(lay.n_params, 1e15), 1e-30, 1)
    assert not f32.walk(np.full(lay.n_params, 1e15), 1e-30, 1)  # float32's range is smaller


def test_walk_checks_what_the_kernels_compute_before_scaling():
    """The gradient is summed before lr scales it, and a loss term squared in the model
    dtype before its sample weight scales it: both must be in range themselves."""
    lay = Layout([1, 1, 1], True)                       # W0, b0, W1, b1
    X, y = np.array([[1e10]]), np.array([[0.0]])
    bound = D.ChunkBound(lay, [K.SIGMOID, K.SIGMOID], K.BCE, np.float64, X, y,
                         np.empty(0), 1)
    assert bound.walk(np.array([0.0, 0.0, 1.0, 0.0]), 1e-20, 3)
    # delta 1e300 x input 1e10 overflows, though lr = 1e-20 would bring the step back
    assert not bound.walk(np.array([0.0, 0.0, 1e300, 0.0]), 1e-20, 3)

    lay = Layout([1, 1], True)
    X, y = np.ones((4, 1)), np.zeros((4, 1))
    tiny_weights = np.full(4, 1e-30)
    f32 = D.ChunkBound(lay, [K.IDENTITY], K.MSE, np.float32, X, y, tiny_weights, 4)
    assert f32.walk(np.array([0.0, 1e10]), 0.1, 2)      # (1e10)^2 fits float32's range
    assert not f32.walk(np.array([0.0, 1e20]), 0.1, 2)  # (1e20)^2 does not, weight or not


def test_full_batch_rewind_after_proved_chunks_keeps_a_finite_loss(prove_everything,
                                                                   tmp_path):
    """Full batch, records every 4 epochs: a diverging run whose first chunks were proved
    (no snapshots) still ends on parameters whose training loss is finite -- the start
    of its first guarded chunk, the end of a proved one, is kept for the rewind."""
    X, y = np.array([[1.0]]), np.array([[0.0]])
    m = MLP([1, 1], activation="identity", loss="mse")
    m.params[:] = [1.0, 0.0]
    with pytest.warns(RuntimeWarning):
        h = m.fit(X, y, epochs=8, lr=1e60, record_every=4, on_divergence="warn",
                  checkpoint=str(tmp_path / "run.npz"), checkpoint_every=1)  # 1-epoch chunks
    assert prove_everything[:2] == [True, True] and False in prove_everything
    assert np.all(np.isfinite(m.params))
    out = m.params[0] * X[0, 0] + m.params[1]
    assert np.isfinite(out * out)
    assert 1 <= h.epochs < 8 and len(h.loss) == 1


@pytest.mark.parametrize("proved", [True, False])
def test_rewind_judges_the_weighted_loss_the_records_show(prove_everything, monkeypatch,
                                                          tmp_path, proved):
    """Sample weights 1e-3: a record (weighted) can be finite where the unweighted loss
    overflows; the rewind must judge states by the weighted loss, or it finds no
    candidate and keeps the guard's state, whose loss is infinite either way."""
    if not proved:
        _never_proved(monkeypatch)
    n = 1000
    X, y, sw = np.ones((n, 1)), np.zeros((n, 1)), np.full(n, 1e-3)
    m = MLP([1, 1], activation="identity", loss="mse")
    m.params[:] = [1.0, 0.0]
    with pytest.warns(RuntimeWarning):
        h = m.fit(X, y, epochs=12, lr=5.623413251903491e+40, record_every=4, sample_weight=sw,
                  on_divergence="warn", checkpoint=str(tmp_path / "run.npz"), checkpoint_every=1)
    assert h.stopped == "diverged" and h.epochs < 12
    out = m.params[0] + m.params[1]
    with np.errstate(over="ignore"):
        assert np.isfinite(np.sum(sw * out * out) / n)   # mse of the kept state, weighted


def _data(n=48, n_in=6, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), rng.random((n, n_out))


@pytest.fixture
def prove_everything(monkeypatch):
    """The proof for every network, however small; counts its answers."""
    monkeypatch.setattr(D, "MIN_BYTES", 0)
    answers = []
    real = D.ChunkBound.cannot_diverge

    def counted(self, *args):
        answers.append(real(self, *args))
        return answers[-1]

    monkeypatch.setattr(D.ChunkBound, "cannot_diverge", counted)
    return answers


def _never_proved(monkeypatch):
    monkeypatch.setattr(D.ChunkBound, "cannot_diverge", lambda self, *args: False)


FITS = [
    dict(activation="sigmoid", batch_size=None, record_every=3),
    dict(activation=["tanh", "tanh", "identity"], batch_size=8, shuffle=True, seed=3),
    dict(activation="sigmoid", batch_size=1, loss="half_mse"),
    dict(activation="sigmoid", batch_size=16, dtype=np.float32),
    dict(activation=["tanh", "sigmoid", "sigmoid"], batch_size=16, loss="bce",
         sample_weight=True),
]


@pytest.mark.parametrize("opts", FITS, ids=range(len(FITS)))
def test_unguarded_chunks_give_the_same_bits(opts, prove_everything, monkeypatch):
    opts = dict(opts)
    X, y = _data()
    y = (y > 0.5).astype(float) if opts.get("loss") == "bce" else y
    model_opts = {k: opts.pop(k) for k in ("activation", "loss", "dtype") if k in opts}
    if opts.pop("sample_weight", False):
        opts["sample_weight"] = np.linspace(0.2, 2.0, X.shape[0])

    def run():
        m = MLP([6, 9, 7, 3], seed=4, **model_opts)
        h = m.fit(X, y, epochs=30, lr=0.2, chunk_seconds=1e-4, **opts)
        return m.params.copy(), np.array(h.loss)

    params, loss = run()
    assert prove_everything and all(prove_everything)  # every chunk ran unguarded
    _never_proved(monkeypatch)
    params_guarded, loss_guarded = run()
    np.testing.assert_array_equal(params, params_guarded)
    np.testing.assert_array_equal(loss, loss_guarded)


def test_plain_rule_only_and_large_networks_only():
    X, y = _data()
    m = MLP([6, 9, 3], activation="sigmoid")

    class Run:  # the fields for_fit reads (fastbp/_run.py)
        sw = np.empty(0)

    def bound_for(model, lr, **opts):
        run = Run()
        run.rule, _ = C.build(lr, 10, **opts)
        return D.ChunkBound.for_fit(model, run, X, y, 8)

    assert bound_for(m, lr=0.1) is None                    # too small to be worth it
    big = MLP([6, 400, 400, 3], activation="sigmoid")      # 1.3 MB of float64 parameters
    assert isinstance(bound_for(big, lr=0.1), D.ChunkBound)
    for opts in (dict(momentum=0.9), dict(optimizer="adam"), dict(l2=1e-3)):
        assert bound_for(big, lr=0.1, **opts) is None, opts


def test_diverging_run_ends_the_same_with_the_proof(prove_everything, monkeypatch,
                                                    tmp_path):
    """A mini-batch run that blows up: the chunks still provably safe run unguarded, the
    later ones guarded, and the model, history and error are those of a run guarded
    throughout.  (Chunks of one epoch: checkpoint_every=1.)"""
    X, y = _data(n=32, n_in=4, n_out=1, seed=2)
    X = X * 3.0

    def run():
        m = MLP([4, 16, 16, 1], activation=["tanh", "tanh", "identity"], seed=1)
        with pytest.raises(fastbp.DivergenceError) as err:
            m.fit(X, y, epochs=400, lr=0.2, batch_size=4, checkpoint=str(tmp_path / "c.npz"),
                  checkpoint_every=1)
        return m.params.copy(), np.array(err.value.history.loss), err.value

    params, loss, err = run()
    assert True in prove_everything and False in prove_everything
    _never_proved(monkeypatch)
    params_guarded, loss_guarded, err_guarded = run()
    assert np.all(np.isfinite(params))
    np.testing.assert_array_equal(params, params_guarded)
    np.testing.assert_array_equal(loss, loss_guarded)
    assert err.epoch == err_guarded.epoch and str(err) == str(err_guarded)


def test_a_safe_fit_copies_no_parameters(monkeypatch):
    X, y = _data(n=128, n_in=32, n_out=10)
    m = MLP([32, 400, 400, 10], activation="sigmoid", seed=0)  # 1.4 MB of parameters
    m.fit(X, y, epochs=1, lr=0.1, batch_size=64)  # its kernel compiled or loaded here

    def peak_of_fit():
        tracemalloc.start()
        m.fit(X, y, epochs=1, lr=0.1, batch_size=64)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    unguarded = peak_of_fit()
    _never_proved(monkeypatch)
    guarded = peak_of_fit()
    # the workspace (two batches of activations) is the rest of either peak
    assert unguarded < m.params.nbytes
    assert guarded - unguarded >= 0.95 * m.params.nbytes  # the guard's copy
