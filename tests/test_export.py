"""fastbp/export.py: an MLP as a torch.nn.Sequential, an ONNX graph (also from the
command line) and a scikit-learn estimator, each computing what ``predict`` computes,
and read back; what a target cannot represent is refused naming it.  Each library's
tests skip when it is not installed.  No training here: parameters are set at random
(weights large enough that every activation works in its non-linear range)."""
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import cli

# to 1e-12 in float64 and 1e-6 in float32 (relative, and absolute near zero)
TOL = {"float64": 1e-12, "float32": 1e-6}

# (hidden activations, output activation, loss, n_out)
NETS = {
    "regression": (["tanh", "relu"], "identity", "mse", 2),
    "binary": (["sigmoid", "sigmoid"], "sigmoid", "bce", 1),
    "multi-label": (["relu", "relu"], "sigmoid", "bce", 3),
    "multi-class": (["tanh", "tanh"], "softmax", "cross_entropy", 4),
    "no-bias": (["relu", "identity"], "sigmoid", "mse", 1),
    "poisson": (["tanh", "relu"], "exp", "poisson", 2),
}


def _model(net, dtype="float64", bias=None, seed=0):
    hidden, out, loss, k = NETS[net]
    bias = net != "no-bias" if bias is None else bias
    m = fastbp.MLP([3, 6, 5, k], activation=hidden + [out], loss=loss, bias=bias,
                   dtype=dtype, seed=seed)
    m.params[...] = np.random.default_rng(seed).normal(0.0, 0.8, m.params.shape)
    return m


def _X(dtype="float64", n=40):
    return np.random.default_rng(9).normal(0.0, 1.5, (n, 3)).astype(dtype)


def _close(got, want, dtype):
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])


# ---- PyTorch ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("net", list(NETS))
def test_to_torch_computes_predict_and_reads_back(net, dtype):
    torch = pytest.importorskip("torch")
    m = _model(net, dtype)
    seq = m.to_torch()
    assert isinstance(seq, torch.nn.Sequential)
    kinds = [type(mod).__name__ for mod in seq]
    assert kinds.count("Linear") == 3 and set(kinds) <= {"Linear", "Sigmoid", "ReLU",
                                                          "Tanh", "Softmax", "TorchExp"}
    assert all(p.dtype == getattr(torch, dtype) for p in seq.parameters())
    X = _X(dtype)
    with torch.no_grad():
        out = seq(torch.from_numpy(X)).numpy()
    _close(out, m.predict(X), dtype)
    back = fastbp.MLP.from_torch(seq, loss=m.loss_name)
    assert back.params.tobytes() == m.params.tobytes()
    assert (back.activations, back.bias, back.dtype) == (m.activations, m.bias, m.dtype)
    if m.activations[-1] == "exp":  # what from_torch infers after it, and it pickles
        assert fastbp.MLP.from_torch(seq).loss_name == "poisson"
        again = pickle.loads(pickle.dumps(seq))
        with torch.no_grad():
            np.testing.assert_array_equal(again(torch.from_numpy(X)).numpy(), out)
    # copies: the model and the module share nothing
    with torch.no_grad():
        seq[0].weight.zero_()
    assert back.params.tobytes() == m.params.tobytes()


def test_from_torch_reads_a_hand_built_sequential():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4)),
                        nn.Identity(), nn.Linear(4, 3), nn.Softmax(dim=1))
    m = fastbp.MLP.from_torch(seq)
    assert m.activations == ("relu", "identity", "softmax") and m.loss_name == "cross_entropy"
    assert m.dtype == np.float32
    X = _X("float32")
    with torch.no_grad():
        _close(m.predict(X), seq(torch.from_numpy(X)).numpy(), "float32")


@pytest.mark.parametrize("build, message", [
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(), nn.Linear(4, 1)),
     r"seq\[1\] \(LeakyReLU.*cannot be represented"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 1)),
     r"seq\[1\] \(Dropout"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.ReLU(), nn.Linear(4, 1)),
     r"seq\[2\] \(ReLU.*does not follow a Linear"),
    (lambda nn: nn.Sequential(nn.Sigmoid(), nn.Linear(3, 1)),
     r"seq\[0\] \(Sigmoid.*does not follow a Linear"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2), nn.Softmax(dim=0)),
     r"seq\[2\].*softmax over dim=0"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 2)),
     r"seq\[1\] \(Softmax.*softmax between layers"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1, bias=False)),
     r"seq\[2\] without bias beside Linear layers with biases"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4).half(), nn.Linear(4, 1).half()),
     r"float16 parameters.*float64 or all float32"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1).bfloat16()),
     r"seq\[2\] \(Linear.*torch.bfloat16 parameters.*float64 or all float32"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4).double(), nn.Linear(4, 1)),
     r"float32, float64 parameters.*float64 or all float32"),
    (lambda nn: nn.Sequential(), r"no Linear layer"),
])
def test_from_torch_refuses_what_it_cannot_represent(build, message):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=message):
        fastbp.MLP.from_torch(build(torch.nn))


def test_from_torch_needs_a_sequential():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="needs a torch.nn.Sequential, got Linear"):
        fastbp.MLP.from_torch(torch.nn.Linear(2, 1))


def test_import_fastbp_imports_no_optional_library():
    code = ("import sys, fastbp; m = fastbp.MLP([2, 1]); "
            "print([k for k in ('torch', 'onnx', 'onnxruntime', 'sklearn') if k in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ---- ONNX ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("net", list(NETS))
def test_onnx_graph_is_valid_and_runs_like_predict(net, dtype, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    m = _model(net, dtype)
    path = tmp_path / "m.onnx"
    assert m.to_onnx(path) == str(path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    linear = "Gemm" if m.bias else "MatMul"
    acts = {"sigmoid": ["Sigmoid"], "relu": ["Relu"], "tanh": ["Tanh"],
            "softmax": ["Softmax"], "exp": ["Exp"], "identity": []}
    assert ops == sum(([linear] + acts[a] for a in m.activations), [])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    X = _X(dtype)
    (out,) = sess.run(["Y"], {"X": X})
    _close(out, m.predict(X), dtype)
    (one,) = sess.run(["Y"], {"X": X[:1]})  # the batch dimension is free
    _close(one, m.predict(X[:1]), dtype)


def test_cli_export_writes_the_onnx_of_a_saved_model(tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    m = _model("binary")
    m.save(tmp_path / "m.npz")
    assert cli.main(["export", str(tmp_path / "m.npz"), str(tmp_path / "m.onnx")]) == 0
    assert "Wrote" in capsys.readouterr().out
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    X = _X()
    _close(sess.run(["Y"], {"X": X})[0], m.predict(X), "float64")


@pytest.mark.parametrize("args, message", [
    (["missing.npz", "m.onnx"], "missing.npz: no such model file"),
    (["m.npz", "m.txt"], "must end in .onnx"),
    (["model.onnx", "model.onnx"], "is the input model file"),
    (["m.npz", "nowhere/m.onnx"], "the folder .*nowhere does not exist"),
    (["m.npz", "folder.onnx"], "is a folder"),
])
def test_cli_export_refuses_before_doing_work(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = _model("binary")
    m.save("m.npz")
    m.save("model.onnx")  # a model file with the name of an export
    (tmp_path / "folder.onnx").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    saved = (tmp_path / "model.onnx").read_bytes()
    assert cli.main(["export"] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastbp: error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "model.onnx").read_bytes() == saved


# ---- scikit-learn ----------------------------------------------------------------------
def _sk_net(net, dtype="float64"):
    """A network of ``net``'s shape with one hidden activation, as scikit-learn's are."""
    m = _model(net, dtype)
    hidden = {"regression": "relu", "binary": "sigmoid", "multi-label": "tanh",
              "multi-class": "identity", "poisson": "tanh"}[net]
    return fastbp.MLP.from_weights(m.weights, m.biases, activation=[hidden] * 2
                                   + [m.activations[-1]], loss=m.loss_name, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("net", ["regression", "binary", "multi-label", "multi-class",
                                 "poisson"])
def test_to_sklearn_predicts_what_the_model_predicts(net, dtype):
    pytest.importorskip("sklearn")
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.utils.validation import check_is_fitted
    m = _sk_net(net, dtype)
    est = m.to_sklearn()
    check_is_fitted(est)
    X = _X(dtype)
    p = m.predict(X)
    if net in ("regression", "poisson"):
        assert type(est) is MLPRegressor
        assert est.loss == ("poisson" if net == "poisson" else "squared_error")
        _close(est.predict(X), p, dtype)
    else:
        assert type(est) is MLPClassifier
        proba = est.predict_proba(X)
        _close(proba, np.c_[1 - p, p] if net == "binary" else p, dtype)
        want = {"binary": (p[:, 0] > 0.5).astype(int), "multi-label": (p > 0.5).astype(int),
                "multi-class": p.argmax(axis=1)}[net]
        np.testing.assert_array_equal(est.predict(X), want)
        assert est.score(X, want) == 1.0
    back = fastbp.MLP.from_sklearn(est)
    assert back.params.tobytes() == m.params.tobytes()
    assert back.activations == m.activations and back.dtype == m.dtype
    assert back.loss_name == ("half_mse" if net == "regression" else m.loss_name)


def test_to_sklearn_class_labels_and_two_softmax_outputs():
    pytest.importorskip("sklearn")
    m = fastbp.MLP([3, 4, 2], activation=["tanh", "softmax"], loss="cross_entropy",
                   seed=0, init="xavier")
    est = m.to_sklearn(classes=["cat", "dog"])
    X = _X()
    np.testing.assert_array_equal(est.predict(X),
                                  np.array(["cat", "dog"])[m.predict(X).argmax(axis=1)])
    _close(est.predict_proba(X), m.predict(X), "float64")
    with pytest.raises(ValueError, match="classes must hold 2 distinct labels"):
        m.to_sklearn(classes=["cat", "cat"])


def test_an_exported_estimator_goes_on_training_in_sklearn():
    pytest.importorskip("sklearn")
    m = _sk_net("multi-class")
    est = m.to_sklearn()
    est.set_params(solver="sgd", learning_rate_init=0.01)
    X = _X()
    est.partial_fit(X, m.predict(X).argmax(axis=1))
    assert est.n_iter_ == 1 and not np.array_equal(est.coefs_[0], m.weights[0])
    np.testing.assert_array_equal(fastbp.MLP.from_sklearn(est).weights[0], est.coefs_[0])


@pytest.mark.parametrize("change, message", [
    (dict(bias=False), "always have biases; this model has none"),
    (dict(activation=["relu", "tanh", "identity"]), r"mixes \['relu', 'tanh'\]"),
    (dict(loss="sse"), "output layer 'identity' trained with loss 'sse'"),
    (dict(activation="sigmoid", loss="mse"), "output layer 'sigmoid' trained with loss 'mse'"),
])
def test_to_sklearn_refuses_what_sklearn_cannot_represent(change, message):
    pytest.importorskip("sklearn")
    kw = dict(activation=["relu", "relu", "identity"], loss="mse") | change
    m = fastbp.MLP([3, 4, 4, 1], seed=0, **kw)
    with pytest.raises(ValueError, match=message):
        m.to_sklearn()


def test_from_sklearn_reads_sklearn_and_fastbp_estimators():
    pytest.importorskip("sklearn")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LinearRegression
    from sklearn.neural_network import MLPClassifier as SkClassifier
    from sklearn.neural_network import MLPRegressor as SkRegressor
    import fastbp.sklearn as fs
    X = _X()
    y = np.sin(X).sum(axis=1)
    labels = np.digitize(y, [-0.5, 0.5])
    with pytest.warns(ConvergenceWarning):
        sk = SkClassifier((5,), activation="tanh", max_iter=5, random_state=0).fit(X, labels)
    m = fastbp.MLP.from_sklearn(sk)
    assert m.activations == ("tanh", "softmax") and m.loss_name == "cross_entropy"
    _close(m.predict(X), sk.predict_proba(X), "float64")
    with pytest.warns(ConvergenceWarning):
        ours = fs.MLPRegressor(hidden_layer_sizes=(5,), max_iter=3, random_state=0).fit(X, y)
    m = fastbp.MLP.from_sklearn(ours)
    assert m.params.tobytes() == ours._model.params.tobytes()
    assert m.activations == ours._model.activations and m.loss_name == "half_mse"
    with pytest.raises(ValueError, match="SkRegressor|MLPRegressor is not fitted"):
        fastbp.MLP.from_sklearn(SkRegressor())
    with pytest.raises(TypeError, match="got LinearRegression"):
        fastbp.MLP.from_sklearn(LinearRegression().fit(X, y))
    poisson = SkRegressor(hidden_layer_sizes=(3,), loss="poisson", max_iter=2,
                          random_state=0)
    with pytest.warns(ConvergenceWarning):
        poisson.fit(X, np.exp(y))
    m = fastbp.MLP.from_sklearn(poisson)
    assert m.activations[-1] == "exp" and m.loss_name == "poisson"
    _close(m.predict(X)[:, 0], poisson.predict(X), "float64")
