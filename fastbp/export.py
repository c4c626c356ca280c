"""A trained MLP as a PyTorch module, an ONNX graph or a scikit-learn estimator, and back.

fastbp's forward rule is ``a = f(x @ W + b)`` with W of shape (n_in, n_out) and one
activation f per layer (identity, sigmoid, relu, tanh, or softmax or exp on the output).
Every target below has the same rule:

- PyTorch: ``Linear`` (weight (n_out, n_in): W transposed) then an activation module
  (``TorchExp`` for exp, which torch.nn lacks).
- ONNX: ``Gemm`` (``MatMul`` without biases) on W as stored, then an activation node.
- scikit-learn: ``coefs_`` / ``intercepts_`` are exactly fastbp's (n_in, n_out) weights
  and biases; its MLPs have one hidden activation and an output fixed by the task.

Conversions copy the parameters: the result never shares memory with the model.  What
a target cannot represent is refused with ValueError naming what and where.  Each
library is imported only when its conversion is called (``pip install
"fastbp[torch]"``, ``"fastbp[onnx]"``, ``"fastbp[sklearn]"``).
"""
import importlib
import os

import numpy as np

# fastbp activation name -> (torch.nn class name, ONNX operator); identity is no module
_TORCH_MODULES = {"sigmoid": "Sigmoid", "relu": "ReLU", "tanh": "Tanh", "softmax": "Softmax"}
_ONNX_OPS = {"sigmoid": "Sigmoid", "relu": "Relu", "tanh": "Tanh", "softmax": "Softmax",
             "exp": "Exp"}
# fastbp hidden activation <-> scikit-learn's name for it
_SKLEARN_HIDDEN = {"identity": "identity", "sigmoid": "logistic", "tanh": "tanh",
                   "relu": "relu"}
_FROM_SKLEARN_HIDDEN = {v: k for k, v in _SKLEARN_HIDDEN.items()}

# ONNX: opset 17 and IR version 8 are read by every onnxruntime since 1.13 and by other
# runtimes of that age; nothing newer is needed for these operators
ONNX_OPSET = 17
_ONNX_IR_VERSION = 8


def _require(module, extra, what):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs {module.split('.')[0]}, which is not installed; "
                          f"pip install \"fastbp[{extra}]\"") from None


def _torch_exp(nn):
    """torch.nn has no exp module (the output of a poisson model): ``TorchExp``, made
    once torch is imported, and a name of this module, so that it pickles."""
    cls = globals().get("TorchExp")
    if cls is None:
        def forward(self, x):
            return x.exp()
        cls = type("TorchExp", (nn.Module,), {"forward": forward, "__module__": __name__,
                                              "__doc__": "exp(x), element-wise"})
        globals()["TorchExp"] = cls
    return cls


def __getattr__(name):
    # TorchExp on first use, e.g. by pickle loading a module in a new process
    if name == "TorchExp":
        return _torch_exp(_require("torch", "torch", "fastbp.export.TorchExp").nn)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _layers(model):
    """[(W (n_in, n_out), b (n_out,) or None, activation name)] of a model, as views."""
    biases = model.biases or [None] * model.n_layers
    return list(zip(model.weights, biases, model.activations))


# ---- PyTorch ---------------------------------------------------------------------------
def to_torch(model):
    """``torch.nn.Sequential`` of ``Linear`` and activation modules computing
    ``model.predict`` in the model's dtype (float64 -> torch.float64)."""
    torch = _require("torch", "torch", "MLP.to_torch")
    nn = torch.nn
    dtype = torch.float64 if model.dtype == np.float64 else torch.float32
    modules = []
    for w, b, act in _layers(model):
        lin = nn.Linear(w.shape[0], w.shape[1], bias=b is not None, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            if b is not None:
                lin.bias.copy_(torch.from_numpy(b.copy()))
        modules.append(lin)
        if act == "softmax":
            modules.append(nn.Softmax(dim=-1))
        elif act == "exp":
            modules.append(_torch_exp(nn)())
        elif act != "identity":
            modules.append(getattr(nn, _TORCH_MODULES[act])())
    return nn.Sequential(*modules)


def from_torch(cls, seq, loss=None):
    """An MLP (``cls``) equal to ``seq``: a ``torch.nn.Sequential`` (nested ones are
    flattened) of ``Linear`` layers, each followed by at most one of ``Sigmoid``,
    ``ReLU``, ``Tanh``, ``Softmax`` (last, over the features), ``TorchExp`` (last: what
    to_torch makes of an exp output) or ``Identity``.  All Linear layers have biases, or
    none has.  Parameters float64 or float32 (the model's dtype), on any device.
    ``loss``: the fastbp loss name; None means "cross_entropy" after a Softmax,
    "poisson" after an exp, else "mse"."""
    torch = _require("torch", "torch", "MLP.from_torch")
    nn = torch.nn
    if not isinstance(seq, nn.Sequential):
        raise TypeError(f"from_torch needs a torch.nn.Sequential, got "
                        f"{type(seq).__name__}")
    mods = list(_flatten(seq, nn, "seq"))
    kinds = {getattr(nn, v): k for k, v in _TORCH_MODULES.items()}
    kinds[_torch_exp(nn)] = "exp"
    weights, biases, acts = [], [], []
    for i, (name, mod) in enumerate(mods):
        if type(mod) is nn.Linear:
            if acts and acts[-1] is None:
                acts[-1] = "identity"  # Linear after Linear
            for p in (mod.weight, mod.bias):
                # (numpy has no bfloat16 or float16 arrays of torch's: .numpy() would fail
                # with torch's TypeError before the check of the dtypes below)
                if p is not None and p.dtype not in (torch.float64, torch.float32):
                    raise ValueError(f"{name} ({mod!r}) holds {p.dtype} parameters; fastbp "
                                     f"needs all float64 or all float32 (convert with "
                                     f"seq.double() or seq.float())")
            weights.append(mod.weight.detach().cpu().numpy().T)
            biases.append(None if mod.bias is None else mod.bias.detach().cpu().numpy())
            acts.append(None)
            continue
        kind = "identity" if type(mod) is nn.Identity else kinds.get(type(mod))
        if kind is None:
            raise ValueError(f"{name} ({mod!r}) cannot be represented in fastbp: its "
                             f"layers are Linear, each followed by at most one of Sigmoid, "
                             f"ReLU, Tanh, Softmax (output), TorchExp (output) or Identity")
        if not acts or acts[-1] is not None:
            raise ValueError(f"{name} ({mod!r}) does not follow a Linear layer; fastbp "
                             f"applies one activation after each Linear")
        if kind == "softmax" and mod.dim not in (-1, 1):
            raise ValueError(f"{name} ({mod!r}) is a softmax over dim={mod.dim}; fastbp's "
                             f"softmax is over the features (dim=-1 or 1)")
        if kind == "softmax" and any(type(m) is nn.Linear for _, m in mods[i + 1:]):
            raise ValueError(f"{name} ({mod!r}) is a softmax between layers; fastbp "
                             f"applies softmax only to the output layer")
        acts[-1] = kind
    if not weights:
        raise ValueError("the Sequential has no Linear layer")
    acts = ["identity" if a is None else a for a in acts]
    has_bias = [b is not None for b in biases]
    if any(has_bias) and not all(has_bias):
        linear = [n for n, m in mods if type(m) is nn.Linear]
        without = [n for n, hb in zip(linear, has_bias) if not hb]
        raise ValueError(f"{', '.join(without)} without bias beside Linear layers with "
                         f"biases; a fastbp model has biases in every layer or in none")
    dtypes = sorted({str(w.dtype) for w in weights}
                    | {str(b.dtype) for b in biases if b is not None})
    if dtypes not in (["float64"], ["float32"]):
        raise ValueError(f"the Linear layers hold {', '.join(dtypes)} parameters; fastbp "
                         f"needs all float64 or all float32 (convert with seq.double() or "
                         f"seq.float())")
    if loss is None:
        loss = {"softmax": "cross_entropy", "exp": "poisson"}.get(acts[-1], "mse")
    return cls.from_weights(weights, biases if has_bias[0] else None, activation=acts,
                            loss=loss, dtype=dtypes[0])


def _flatten(seq, nn, prefix):
    for name, mod in seq.named_children():
        path = f"{prefix}[{name}]"
        if isinstance(mod, nn.Sequential):
            yield from _flatten(mod, nn, path)
        else:
            yield path, mod


# ---- ONNX ------------------------------------------------------------------------------
def onnx_model(model):
    """The ``onnx.ModelProto`` of ``model``: input "X" (N, n_in), output "Y" (N, n_out),
    both in the model's dtype; per layer a Gemm (or a MatMul without biases) and the
    activation's node (none for identity)."""
    onnx = _require("onnx", "onnx", "MLP.to_onnx")
    helper, TP = onnx.helper, onnx.TensorProto
    elem = TP.DOUBLE if model.dtype == np.float64 else TP.FLOAT
    nodes, inits = [], []
    h = "X"
    last = model.n_layers - 1
    for l, (w, b, act) in enumerate(_layers(model)):
        inits.append(onnx.numpy_helper.from_array(np.ascontiguousarray(w), f"W{l}"))
        z = "Y" if (act == "identity" and l == last) else f"z{l}"
        if b is not None:
            inits.append(onnx.numpy_helper.from_array(b.copy(), f"b{l}"))
            nodes.append(helper.make_node("Gemm", [h, f"W{l}", f"b{l}"], [z],
                                          name=f"layer{l}"))
        else:
            nodes.append(helper.make_node("MatMul", [h, f"W{l}"], [z], name=f"layer{l}"))
        h = z
        if act != "identity":
            out = "Y" if l == last else f"a{l}"
            attrs = {"axis": -1} if act == "softmax" else {}
            nodes.append(helper.make_node(_ONNX_OPS[act], [z], [out], name=f"{act}{l}",
                                          **attrs))
            h = out
    graph = helper.make_graph(
        nodes, "fastbp_mlp",
        [helper.make_tensor_value_info("X", elem, ["N", model.sizes[0]])],
        [helper.make_tensor_value_info("Y", elem, ["N", model.sizes[-1]])],
        initializer=inits)
    proto = helper.make_model(graph, producer_name="fastbp",
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    proto.ir_version = _ONNX_IR_VERSION
    proto.doc_string = repr(model)
    helper.set_model_props(proto, {"fastbp.loss": model.loss_name})
    onnx.checker.check_model(proto)
    return proto


def to_onnx(model, path):
    """Write ``onnx_model(model)`` to ``path`` (atomically: a temporary file in the same
    folder, then a rename); returns the path."""
    from .io import atomic_write
    path = os.fspath(path)
    if not path:
        raise ValueError("path must name a file, got ''")
    data = onnx_model(model).SerializeToString()
    atomic_write(path, lambda fh: fh.write(data))
    return path


# ---- scikit-learn ----------------------------------------------------------------------
def to_sklearn(model, classes=None):
    """A fitted ``sklearn.neural_network.MLPRegressor`` (identity output, loss "mse" or
    "half_mse"; exp output, "poisson") or ``MLPClassifier`` (sigmoid output with "bce": binary for one output,
    multi-label for more; softmax with "cross_entropy": multi-class) whose ``predict``
    (and ``predict_proba``) equal the model's.  ``classes``: the class labels of a
    classifier, one per output (two for a binary one); default 0, 1, ...

    Refused (ValueError, saying what): a network without biases, hidden layers with
    different activations, any other output/loss pair (sse, or mse on a sigmoid output:
    scikit-learn fixes the output by the task).  The estimator keeps its defaults for
    the training parameters; ``n_iter_`` is 0 and ``loss_`` is not set (fastbp has no
    training data to compute it from).
    """
    nn = _require("sklearn.neural_network", "sklearn", "MLP.to_sklearn")
    preprocessing = _require("sklearn.preprocessing", "sklearn", "MLP.to_sklearn")
    acts, loss, k = list(model.activations), model.loss_name, model.sizes[-1]
    if not model.bias:
        raise ValueError("scikit-learn's MLPs always have biases; this model has none "
                         "(bias=False)")
    hidden = sorted(set(acts[:-1]))
    if len(hidden) > 1:
        raise ValueError(f"scikit-learn's MLPs use one activation for every hidden layer; "
                         f"this model mixes {hidden}")
    out = acts[-1]
    if out == "softmax" and k == 1:
        raise ValueError("a softmax over one output is constant 1; scikit-learn has no "
                         "such classifier")
    if out == "identity" and loss in ("mse", "half_mse"):
        est = nn.MLPRegressor()
        est.out_activation_ = "identity"
    elif (out, loss) == ("exp", "poisson"):
        est = nn.MLPRegressor(loss="poisson")
        est.out_activation_ = "exp"
    elif (out, loss) in (("sigmoid", "bce"), ("softmax", "cross_entropy")):
        est = nn.MLPClassifier()
        est.out_activation_ = "logistic" if out == "sigmoid" else "softmax"
        n_classes = 2 if (out == "sigmoid" and k == 1) else k
        labels = np.arange(n_classes) if classes is None else np.asarray(classes)
        if labels.ndim != 1 or len(labels) != n_classes or len(set(labels.tolist())) \
                != n_classes:
            raise ValueError(f"classes must hold {n_classes} distinct labels (one per "
                             f"{'class' if k > 1 else 'class of a binary output'}), got "
                             f"{classes!r}")
        lb = preprocessing.LabelBinarizer()
        if out == "softmax":
            lb.fit(labels)
            # set by hand for two softmax outputs, which scikit-learn itself never makes
            # (it fits two classes with one logistic output): predict's argmax needs it
            lb.y_type_ = "multiclass"
        elif k == 1:
            lb.fit(labels)
        else:  # multi-label: one 0/1 column per label
            lb.fit(np.eye(k, dtype=int))
            lb.classes_ = labels
        est._label_binarizer = lb
        est.classes_ = lb.classes_
    else:
        raise ValueError(
            f"scikit-learn cannot represent an output layer {out!r} trained with loss "
            f"{loss!r}: MLPRegressor has an identity output (squared error: fastbp's "
            f"'half_mse' or 'mse') or an exp output ('poisson'), MLPClassifier a sigmoid output with 'bce' or a "
            f"softmax output with 'cross_entropy'")
    if classes is not None and est.out_activation_ in ("identity", "exp"):
        raise ValueError(f"classes is for a classifier; this model is a regressor "
                         f"({est.out_activation_} output)")
    est.set_params(hidden_layer_sizes=tuple(model.sizes[1:-1]),
                   activation=_SKLEARN_HIDDEN[hidden[0]] if hidden else "identity")
    est.coefs_ = [w.copy() for w in model.weights]
    est.intercepts_ = [b.copy() for b in model.biases]
    est.n_features_in_ = model.sizes[0]
    est.n_layers_ = len(model.sizes)
    est.n_outputs_ = k
    # what scikit-learn's _initialize sets, so that partial_fit / warm_start go on from
    # these weights
    est.n_iter_ = 0
    est.t_ = 0
    est.loss_curve_ = []
    est._no_improvement_count = 0
    est.best_loss_ = np.inf
    est.validation_scores_ = None
    est.best_validation_score_ = None
    est._best_coefs = [w.copy() for w in est.coefs_]
    est._best_intercepts = [b.copy() for b in est.intercepts_]
    return est


def from_sklearn(cls, est):
    """An MLP (``cls``) equal to a fitted scikit-learn ``MLPRegressor`` /
    ``MLPClassifier`` or one of fastbp.sklearn's: same weights, biases and activations;
    loss "half_mse" (scikit-learn's squared error) for a regressor, "poisson" after its
    exp output (loss='poisson'), "bce" after a logistic output, "cross_entropy" after a softmax; the dtype of ``coefs_``.
    The class labels stay with the estimator (outputs are in ``est.classes_`` order)."""
    if not (hasattr(est, "hidden_layer_sizes") and hasattr(est, "activation")):
        raise TypeError(f"from_sklearn needs a scikit-learn MLPRegressor or MLPClassifier "
                        f"(or fastbp.sklearn's), got {type(est).__name__}")
    if not (hasattr(est, "coefs_") and hasattr(est, "out_activation_")):
        raise ValueError(f"the {type(est).__name__} is not fitted (no coefs_); fit it "
                         f"first")
    hidden = _FROM_SKLEARN_HIDDEN.get(est.activation)
    if hidden is None:
        raise ValueError(f"activation {est.activation!r} of the {type(est).__name__} has "
                         f"no fastbp equivalent")
    out = {"identity": ("identity", "half_mse"), "logistic": ("sigmoid", "bce"),
           "softmax": ("softmax", "cross_entropy"),
           "exp": ("exp", "poisson")}.get(est.out_activation_)
    if out is None:
        raise ValueError(f"output activation {est.out_activation_!r} of the "
                         f"{type(est).__name__} (loss={getattr(est, 'loss', None)!r}) has "
                         f"no fastbp equivalent")
    coefs = [np.asarray(c) for c in est.coefs_]
    dtype = coefs[0].dtype
    if dtype not in (np.float64, np.float32):
        raise ValueError(f"coefs_ are {dtype}; fastbp needs float64 or float32")
    acts = [hidden] * (len(coefs) - 1) + [out[0]]
    return cls.from_weights(coefs, [np.asarray(b) for b in est.intercepts_],
                            activation=acts, loss=out[1], dtype=dtype.name)
