"""Generated kernels (kernels/specialize.py) against the general kernel: bit for bit.

Every fit here runs twice from the same start, once on the architecture's generated
kernel and once on the general kernels.train.train, and must give identical parameters,
histories and stopping reasons -- the generated kernel repeats the general kernel's
operations in the same order, so anything short of equality is a bug.  The general
kernel itself is checked against the numpy reference elsewhere (test_training.py).

Each architecture compiles a kernel of its own (seconds), so the cases share a few
architectures and vary what is decided at run time (optimizers, schedules, weights,
sample counts, recording).
"""
import os
import shutil
import sys
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import _config as C
from fastbp import kernels as K
from fastbp.kernels import specialize as S

# (sizes, activation, loss, bias): a few architectures, covering every activation, the
# generated losses, with and without biases, one and several outputs
ARCHS = {
    "xor": ((2, 4, 4, 1), "sigmoid", "sse", True),
    "regression": ((1, 10, 1), ["relu", "identity"], "mse", True),
    "admissions": ((6, 2, 1), "sigmoid", "half_mse", False),
    "multi": ((3, 5, 2), ["tanh", "sigmoid"], "bce", True),
    # a hidden layer wide enough for the per-sample kernels' vectorized sigmoid
    # (sgd.VECTOR_SIGMOID_MIN_UNITS), an output layer narrow enough for libm's
    "wide-sigmoid": ((2, 9, 3), "sigmoid", "mse", True),
}


@pytest.fixture
def generated(monkeypatch):
    """Generated kernels for every eligible fit, however short."""
    monkeypatch.setattr(S, "ENABLED", True)
    monkeypatch.setattr(S, "MIN_WORK", 0)


def _fit_both(monkeypatch, arch, n, data_seed=0, **fit):
    sizes, act, loss, bias = ARCHS[arch]
    rng = np.random.default_rng(data_seed)
    X = rng.normal(size=(n, sizes[0]))
    y = rng.uniform(0.05, 0.95, size=(n, sizes[-1]))
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(S, "ENABLED", enabled)
        model = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias, seed=data_seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hist = model.fit(X, y, **fit)
        results.append((model.params.copy(), hist, model))
    return results


def _assert_identical(results):
    (p1, h1, _), (p2, h2, _) = results
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(h1.loss, h2.loss)
    assert h1.epochs == h2.epochs and h1.stopped == h2.stopped


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("n", [2, 5, 8, 21])
def test_plain_sgd_is_bit_identical(generated, monkeypatch, arch, n):
    results = _fit_both(monkeypatch, arch, n, epochs=60, lr=0.3)
    _assert_identical(results)
    sizes, act, loss, bias = ARCHS[arch]
    start = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias, seed=0).params
    assert not np.array_equal(results[0][0], start)  # it trained


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("options", [
    dict(optimizer="adam", lr=0.05, l2=1e-3, schedule="cosine"),
    dict(optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True, schedule="invscaling"),
    dict(optimizer="sgd", lr=0.2, momentum=0.5, l2=0.01, schedule="step", step_size=7,
         epoch_loss="sample_mean", batch_size=13),
    dict(lr=0.1, record_every=7),
])
def test_optimizers_and_schedules_are_bit_identical(generated, monkeypatch, arch, options):
    _assert_identical(_fit_both(monkeypatch, arch, 13, data_seed=1, epochs=50, **options))


@pytest.mark.parametrize("arch", ["multi", "xor"])
def test_sample_weights_are_bit_identical(generated, monkeypatch, arch):
    w = np.random.default_rng(3).uniform(0.0, 2.0, size=11)
    _assert_identical(_fit_both(monkeypatch, arch, 11, data_seed=2, epochs=40, lr=0.2,
                                sample_weight=w))


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("options", [
    dict(lr=0.05),
    dict(lr=0.05, shuffle=True, seed=7, schedule="invscaling", record_every=3),
])
def test_per_sample_sgd_is_bit_identical(generated, monkeypatch, arch, options):
    results = _fit_both(monkeypatch, arch, 19, data_seed=5, epochs=20, batch_size=1, **options)
    _assert_identical(results)


# Networks too large for the unrolled per-sample kernel: they get sgd.sgd_epoch with
# constant sizes ("per_sample_loops"); rows of 17 and 33 units take the SIMD lanes and
# their remainder, rows of 2 the scalar sums.
LOOP_ARCHS = {
    "loops-tanh": ((3, 20, 17, 2), ["tanh", "sigmoid", "identity"], "mse", True),
    "loops-relu-bce": ((4, 33, 2), ["relu", "sigmoid"], "bce", False),
}


def _fit_loops_both(monkeypatch, arch, n, data_seed=0, **fit):
    sizes, act, loss, bias = LOOP_ARCHS[arch]
    model = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias)
    assert S.per_sample_mode(sizes, model._act_codes, model._loss_code, True, False,
                             "float64", model._layout.n_params) == "per_sample_loops"
    monkeypatch.setitem(ARCHS, arch, LOOP_ARCHS[arch])
    return _fit_both(monkeypatch, arch, n, data_seed, batch_size=1, **fit)


@pytest.mark.parametrize("arch", sorted(LOOP_ARCHS))
@pytest.mark.parametrize("options", [
    dict(lr=0.05),
    dict(lr=0.05, shuffle=True, seed=7, schedule="invscaling", record_every=3),
    dict(optimizer="adam", lr=0.01, l2=1e-3, schedule="cosine"),
    dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, schedule="step",
         step_size=3),
])
def test_per_sample_loops_kernel_is_bit_identical(generated, monkeypatch, arch, options):
    results = _fit_loops_both(monkeypatch, arch, 23, data_seed=8, epochs=12, **options)
    _assert_identical(results)
    sizes, act, loss, bias = LOOP_ARCHS[arch]
    model = results[0][2]
    start = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias, seed=8).params
    assert not np.array_equal(model.params, start)  # it trained
    assert S.loaded(sizes, model._act_codes, bias, model._loss_code, False,
                    "per_sample_loops")  # and the generated kernel ran


def test_short_fits_of_one_architecture_move_to_the_generated_kernel_together(monkeypatch):
    """S.worth_generating: fits too short to pay for compiling count together; once the
    architecture's work in this process reaches MIN_WORK its kernel is generated."""
    monkeypatch.setattr(S, "ENABLED", True)
    monkeypatch.setattr(S, "_loaded", {})
    monkeypatch.setattr(S, "_work_seen", {})
    sizes, act, loss, bias = ARCHS["admissions"]
    X = np.random.default_rng(4).normal(size=(40, sizes[0]))
    y = np.random.default_rng(5).uniform(0.1, 0.9, size=(40, sizes[-1]))
    model = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias, seed=1)
    work = 3 * 40 * model.params.size  # one fit of 3 epochs
    monkeypatch.setattr(S, "MIN_WORK", 3 * work)
    arch = (sizes, model._act_codes, bias, model._loss_code, False, "per_sample")
    seen = []
    for _ in range(4):
        model.fit(X, y, epochs=3, lr=0.05, batch_size=1)
        seen.append(S.loaded(*arch))
    assert seen == [False, False, True, True]
    # a different architecture keeps its own count
    other = fastbp.MLP((6, 3, 1), activation=act, loss=loss, bias=bias, seed=1)
    other.fit(X, y, epochs=3, lr=0.05, batch_size=1)
    assert not S.loaded((6, 3, 1), other._act_codes, bias, other._loss_code, False,
                        "per_sample")


def test_per_sample_loops_kernel_with_weights_and_divergence(generated, monkeypatch):
    w = np.random.default_rng(9).uniform(0.0, 2.0, size=21)
    _assert_identical(_fit_loops_both(monkeypatch, "loops-tanh", 21, data_seed=9, epochs=6,
                                      lr=0.1, shuffle=True, sample_weight=w))
    results = _fit_loops_both(monkeypatch, "loops-relu-bce", 21, data_seed=9, epochs=300,
                              lr=1e4, on_divergence="warn")
    _assert_identical(results)
    assert results[0][1].stopped == "diverged" and np.isfinite(results[0][0]).all()


def test_per_sample_sgd_with_weights_is_bit_identical(generated, monkeypatch):
    w = np.random.default_rng(6).uniform(0.0, 2.0, size=17)
    _assert_identical(_fit_both(monkeypatch, "multi", 17, data_seed=6, epochs=15, lr=0.1,
                                batch_size=1, shuffle=True, sample_weight=w))


@pytest.mark.parametrize("batch_size", [None, 1])
def test_divergence_is_handled_identically(generated, monkeypatch, batch_size):
    results = _fit_both(monkeypatch, "regression", 30, data_seed=4, epochs=400, lr=50.0,
                        batch_size=batch_size, on_divergence="warn")
    _assert_identical(results)
    assert results[0][1].stopped == "diverged"
    assert np.isfinite(results[0][0]).all()


def test_generated_kernel_is_used_only_where_it_applies(generated, monkeypatch):
    sizes, act, loss, bias = ARCHS["xor"]
    model = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias, seed=0)

    class Run:  # the fields _train_kernel reads
        epochs = 10
        shuffle = False
        sw = np.zeros(0)
        xv = np.zeros((2, 0))
        hyper, iconf = C.build(0.1, 10)

    plain = model._train_kernel(21, 21, Run)
    assert plain is not K.train
    Run.hyper, Run.iconf = C.build(0.1, 10, optimizer="adam")
    general = model._train_kernel(21, 21, Run)  # any optimizer: calls optim.update
    assert general is not K.train and general is not plain
    Run.hyper, Run.iconf = C.build(0.1, 10)
    Run.shuffle = True
    assert model._train_kernel(21, 21, Run) is K.train  # shuffled: batches differ
    Run.shuffle = False
    assert model._train_kernel(21, 4, Run) is K.train  # mini-batch
    Run.hyper, Run.iconf = C.build(0.1, 10)
    assert model._train_kernel(21, 1, Run) is not K.train  # per-sample, plain SGD
    Run.hyper, Run.iconf = C.build(0.1, 10, momentum=0.9)
    # per-sample with momentum: not the unrolled kernel, sgd_epoch with constant sizes
    assert model._train_kernel(21, 1, Run) is S.trainer(
        sizes, model._act_codes, bias, model._loss_code, False, "per_sample_loops")
    Run.xv = np.zeros((2, 3))
    assert model._train_kernel(21, 21, Run) is K.train  # validation data
    Run.xv = np.zeros((2, 0))
    wide = fastbp.MLP([2, 64, 1], seed=0)
    assert wide._train_kernel(21, 21, Run) is K.train  # too wide
    f32 = fastbp.MLP(sizes, activation=act, loss=loss, dtype="float32", seed=0)
    assert f32._train_kernel(21, 21, Run) is K.train


def test_short_fits_do_not_compile_a_kernel(monkeypatch):
    monkeypatch.setattr(S, "ENABLED", True)
    model = fastbp.MLP([2, 7, 1], seed=0)  # an architecture no other test uses

    class Run:
        epochs = 10
        shuffle = False
        sw = np.zeros(0)
        xv = np.zeros((2, 0))
        hyper, iconf = C.build(0.1, 10)

    assert model._train_kernel(21, 21, Run) is K.train
    Run.epochs = S.MIN_WORK  # long enough to pay for compiling (compiled at first call)
    assert model._train_kernel(21, 21, Run) is not K.train


def test_source_is_written_to_the_cache_folder_and_rewritten_when_altered(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    text = S.source((2, 3, 1), (1, 1), True, 0, False)
    assert "def train(" in text and "def epoch_pass(" in text
    module = S._import(text)
    path = module.__file__
    assert os.path.dirname(path) == os.path.join(str(tmp_path), "generated")
    with open(path, encoding="utf-8") as f:
        assert f.read() == text
    # a file altered on disk is replaced by what the generator writes
    with open(path, "w", encoding="utf-8") as f:
        f.write("raise RuntimeError('not ours')\n")
    del sys.modules[module.__name__]
    again = S._import(text)
    with open(again.__file__, encoding="utf-8") as f:
        assert f.read() == text


def test_generated_modules_follow_every_kernel_source(tmp_path, monkeypatch):
    """Numba's cache checks only a function's own file, so each generated module carries
    a digest of all kernels/*.py: a change to any of them (here: a copy of the package
    with a comment added to sgd.py) gives every generated module a new text, and so a
    new file name and a fresh compilation."""
    digest = S.kernel_sources_digest()
    args = ((3, 20, 17, 2), (3, 1, 0), True, 0, False)
    for make in (S.source, S.source_per_sample, S.source_per_sample_loops):
        assert make(*args).splitlines()[0] == f"# fastbp.kernels sources {digest}"
    copy = tmp_path / "kernels"
    shutil.copytree(os.path.dirname(S.__file__), copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    sgd = copy / "sgd.py"
    sgd.write_text(sgd.read_text() + "\n# edited\n")
    monkeypatch.setattr(S, "__file__", str(copy / "specialize.py"))
    monkeypatch.setattr(S, "_sources_digest", None)
    assert S.kernel_sources_digest() != digest
    edited = S.source_per_sample_loops(*args)
    monkeypatch.setattr(S, "_sources_digest", digest)
    assert edited != S.source_per_sample_loops(*args)
    assert edited.splitlines()[1:] == S.source_per_sample_loops(*args).splitlines()[1:]


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_ensemble_on_the_generated_kernel_equals_mlp_fit(generated, monkeypatch, n_jobs):
    """Ensemble.fit runs each model through the generated kernel on threads (full batch,
    n >= 16); every model must equal MLP.fit alone -- including a diverging one."""
    sizes, act, loss, bias = ARCHS["regression"]
    rng = np.random.default_rng(8)
    X = rng.normal(size=(24, 1))
    y = rng.uniform(0.05, 0.95, size=(24, 1))
    lrs = [0.01, 0.05, 0.1, 50.0, 0.02]  # the fourth diverges
    ens = fastbp.Ensemble(sizes, len(lrs), activation=act, loss=loss, bias=bias, seed=3)
    start = ens.params.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hist = ens.fit(X, y, epochs=300, lr=lrs, record_every=7, n_jobs=n_jobs)
    assert ens.diverged.tolist() == [False, False, False, True, False]
    monkeypatch.setattr(S, "ENABLED", False)
    for m, lr in enumerate(lrs):
        alone = fastbp.MLP(sizes, activation=act, loss=loss, bias=bias)
        alone.params = start[m]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = alone.fit(X, y, epochs=300, lr=lr, record_every=7, on_divergence="warn")
        np.testing.assert_array_equal(ens.params[m], alone.params)
        np.testing.assert_array_equal(hist.loss[m, :len(h.loss)], h.loss)


def test_ensemble_uses_the_generated_kernel_only_where_it_applies(generated):
    from fastbp.ensemble import _Group
    sizes, act, loss, bias = ARCHS["xor"]
    ens = fastbp.Ensemble(sizes, 3, activation=act, loss=loss, bias=bias, seed=0)
    model = ens[0]

    def group(n, shuffle=False, batch=None):
        xt = np.zeros((1, 2, n))
        batches = np.full(3, n if batch is None else batch)
        return _Group(None, shuffle, ens.params, ens._rng_states, xt, xt[:, :1],
                      np.full(3, 0.1), batches, np.zeros((3, 1)))

    assert group(21)._generated_kernel(model, 10, 21) is not None
    assert group(21, shuffle=True)._generated_kernel(model, 10, 21) is None
    assert group(21, batch=5)._generated_kernel(model, 10, 21) is None
    assert group(8)._generated_kernel(model, 10, 8) is None  # too few samples: lanes


def test_per_sample_rows_of_the_simd_width_are_not_generated():
    """The generated per-sample code sums back-propagated rows left to right, which is
    kernels/simd.py's order only for rows shorter than its lanes."""
    from fastbp.kernels.simd import LANES
    codes = [K.SIGMOID] * 3
    small = (1, 1, LANES - 1, 1)
    wide = (1, 1, LANES, 1)
    for sizes, expected in ((small, True), (wide, False)):
        n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        assert n_params <= S.MAX_PER_SAMPLE_PARAMS
        assert S.eligible_per_sample(sizes, codes, K.MSE, True, False, "float64",
                                     n_params) is expected
