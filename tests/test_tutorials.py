"""The five tutorials in ../shared/seeds/, reproduced through the public API.

Each test ports the tutorial's own numpy code (or its published numbers) and
checks fastbp against it. Where a tutorial has a bug, the port does the intended
math and the comment says what differs.
"""

import csv

import numpy as np
import pytest

import fastbp
import reference as R


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ------------------------------------------------------------------ seed 000
# 2-4-4-1 sigmoid with biases, full batch, error = y - out, W += lr * a.T @ delta.
# That is gradient descent on E = 1/2 sum (out - y)^2, i.e. loss "sse"; the post
# prints np.mean(np.square(y - out)) = 2 * sse / (N*K), computed before the update.


def port_000(X, y, epochs, lr=0.1, seed=0):
    rs = np.random.RandomState(seed)  # the post draws with the legacy global np.random.uniform
    hidden_weights01 = rs.uniform(size=(2, 4))
    hidden_bias01 = rs.uniform(size=(1, 4))
    hidden_weights02 = rs.uniform(size=(4, 4))
    hidden_bias02 = rs.uniform(size=(1, 4))
    output_weights = rs.uniform(size=(4, 1))
    output_bias = rs.uniform(size=(1, 1))
    init = [a.copy() for a in (hidden_weights01, hidden_weights02, output_weights)], [
        a.copy().ravel() for a in (hidden_bias01, hidden_bias02, output_bias)]

    def forward(inputs, weights, bias):
        return sigmoid(np.dot(inputs, weights) + bias)

    def sigmoid_derivative(x):
        return np.multiply(x, 1.0 - x)

    def backward(input_layer, output_layer, weights):
        return output_layer.dot(weights.T) * sigmoid_derivative(input_layer)

    losses = []
    for _ in range(epochs):
        h1 = forward(X, hidden_weights01, hidden_bias01)
        h2 = forward(h1, hidden_weights02, hidden_bias02)
        out = forward(h2, output_weights, output_bias)
        losses.append(np.mean(np.square(y - out)))
        d_out = (y - out) * sigmoid_derivative(out)
        d_h2 = backward(h2, d_out, output_weights)
        d_h1 = backward(h1, d_h2, hidden_weights02)
        output_weights += h2.T.dot(d_out) * lr
        output_bias += np.sum(d_out, axis=0, keepdims=True) * lr
        hidden_weights02 += h1.T.dot(d_h2) * lr
        hidden_bias02 += np.sum(d_h2, axis=0, keepdims=True) * lr
        hidden_weights01 += X.T.dot(d_h1) * lr
        hidden_bias01 += np.sum(d_h1, axis=0, keepdims=True) * lr
    final = [hidden_weights01, hidden_weights02, output_weights], [
        hidden_bias01.ravel(), hidden_bias02.ravel(), output_bias.ravel()]
    return init, final, np.array(losses)


@pytest.mark.parametrize("dataset", ["xor_easy", "linear_data"])
def test_seed000_trajectory(dataset, request):
    X, y = request.getfixturevalue(dataset)
    X = X.astype(np.float64)
    y = y.astype(np.float64)
    epochs = 2000
    (w0, b0), (wf, bf), port_mse = port_000(X, y, epochs)

    m = fastbp.MLP.from_weights(w0, b0, activation="sigmoid", loss="sse")
    hist = m.fit(X, y, epochs=epochs, lr=0.1)
    mse = 2.0 * hist.loss / y.size

    np.testing.assert_allclose(mse, port_mse, rtol=1e-9)
    for a, b in zip(m.weights + m.biases, wf + bf):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert port_mse[-1] < port_mse[0]


# ------------------------------------------------------------------ seed 001
# make_regression, 1-10-1, loss mse (dz2 = 2*(out2 - Y)/N), lr 0.01, full batch;
# weights and biases from np.random.rand (legacy generator here, seeded).


def port_001(X, Y, epochs, relu, lr=0.01, seed=0):
    rs = np.random.RandomState(seed)
    l1_w, l1_b = rs.rand(1, 10), rs.rand(1, 10)
    l2_w, l2_b = rs.rand(10, 1), rs.rand(1, 1)
    init = [l1_w.copy(), l2_w.copy()], [l1_b.copy(), l2_b.copy()]  # (1, n_out) biases on purpose

    def backward(dz, layer, layer_in):
        w, b = layer
        gw = layer_in.T.dot(dz)
        gb = np.sum(dz, axis=0, keepdims=True)
        new_dz = dz.dot(w.T)  # with the weights before this update, as the tutorial
        w -= lr * gw
        b -= lr * gb
        return new_dz

    losses = []
    for _ in range(epochs):
        out1 = X.dot(l1_w) + l1_b
        a1 = np.maximum(0, out1) if relu else out1
        out2 = a1.dot(l2_w) + l2_b
        losses.append(np.mean(np.square(out2 - Y)))
        dz2 = 2 * (out2 - Y) / out2.shape[0]
        # The tutorial passes the PRE-activation out1 as layer 2's input here
        # (backward(dz2, l2, out1)), which is wrong when relu is on: layer 2's
        # weight gradient is a1.T @ dz2. The port does the intended math.
        dz1 = backward(dz2, (l2_w, l2_b), a1)
        if relu:
            dz1 *= np.where(out1 > 0, 1.0, 0.0)
        backward(dz1, (l1_w, l1_b), X)
    return init, ([l1_w, l2_w], [l1_b.ravel(), l2_b.ravel()]), np.array(losses)


@pytest.mark.parametrize("relu", [False, True], ids=["identity", "relu"])
def test_seed001_regression(relu):
    datasets = pytest.importorskip("sklearn.datasets")
    X, Y = datasets.make_regression(100, n_features=1, n_targets=1, noise=10, random_state=3)
    Y = Y.reshape((100, 1))
    epochs = 500
    (w0, b0), (wf, bf), port_loss = port_001(X, Y, epochs, relu)

    acts = ["relu", "identity"] if relu else "identity"
    m = fastbp.MLP.from_weights(w0, b0, activation=acts, loss="mse")
    hist = m.fit(X, Y, epochs=epochs, lr=0.01)

    np.testing.assert_allclose(hist.loss, port_loss, rtol=1e-9)
    for a, b in zip(m.weights + m.biases, wf + bf):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert port_loss[-1] < 0.2 * port_loss[0]


# ------------------------------------------------------------------ seed 002


def data_002():
    X = np.array(([2, 9], [1, 5], [3, 4]))
    X = X / np.amax(X, axis=0)
    t = np.array(([2.9], [2.3], [2.5])) / 2.9
    return X, t


def model_002(loss):
    weights = [np.zeros([2, 3]) + 0.1, np.zeros([3, 3]) + 0.1, np.zeros([3, 1]) + 0.1]
    return fastbp.MLP.from_weights(weights, None, activation="sigmoid", loss=loss)


def test_seed002_initial_state():
    X, t = data_002()
    m = model_002("mse")
    # Published: "loss: 0.12617687296377364" and predicted [[0.54045105 0.54034353 0.54042039]]
    assert m.loss(X, t) == pytest.approx(0.12617687296377364, rel=1e-15)
    np.testing.assert_allclose(m.predict(X).T, [[0.54045105, 0.54034353, 0.54042039]], atol=5e-9)
    # The same numbers as sse: mse = 2 * sse / N
    assert 2 * model_002("sse").loss(X, t) / 3 == pytest.approx(0.12617687296377364, rel=1e-15)


def test_seed002_training_beats_the_tutorial():
    """The post's loop applies sigmoidPrime to pre-activations (and uses a1 for
    layer 2's input), and ends at mse 0.0311 after 10000 epochs. Its update is
    W -= X.T @ delta with delta = -(t - o) * o(1-o): gradient descent on sse, lr 1.
    Correct backprop from the same start must do better."""
    X, t = data_002()
    m = model_002("sse")
    m.fit(X, t, epochs=10000, lr=1.0)
    mse = float(np.mean(np.square(t - m.predict(X))))
    print(f"\nseed 002: mse after 10000 epochs = {mse:.6g} (tutorial: 0.0311)")
    assert mse < 0.0311, f"final mse {mse} is not below the tutorial's 0.0311"
    # and it is the reference trajectory
    w, _, _ = R.train_full_batch(X, t, [np.full((2, 3), 0.1), np.full((3, 3), 0.1), np.full((3, 1), 0.1)],
                                 None, "sigmoid", "sse", 10000, 1.0)
    np.testing.assert_allclose(m.params, R.flatten(w, None), rtol=1e-9)


# ------------------------------------------------------------------ seed 003
# 2-2-2 sigmoid with biases, input [0.05, 0.10], target [0.01, 0.99], lr 0.5,
# loss 1/2 sum (t - o)^2 ("sse"). Post: loss 0.000003 after 10,000 epochs.

X003 = np.array([[0.05, 0.10]])
Y003 = np.array([[0.01, 0.99]])


def test_seed003_trains_to_published_loss():
    m = fastbp.MLP([2, 2, 2], activation="sigmoid", loss="sse", init="uniform", seed=0)
    start = m.loss(X003, Y003)
    m.fit(X003, Y003, epochs=10000, lr=0.5)
    final = m.loss(X003, Y003)
    print(f"\nseed 003: loss after 10000 epochs = {final:.3g} (tutorial: 0.000003), from {start:.3g}")
    assert final < 1e-5, f"final loss {final}"


def test_seed003_one_step_by_hand():
    """One update written out neuron by neuron, as the post's Neuron class does it.

    The well-known start (w1..w8 = .15 .20 .25 .30 .40 .45 .50 .55, b = .35, .60)
    gives out_h1 = 0.593269992, out_o1 = 0.75136507, out_o2 = 0.772928465,
    E = 0.298371109 and after one step w5 = 0.35891648, w1 = 0.149780716.
    """
    i1, i2 = 0.05, 0.10
    t1, t2 = 0.01, 0.99
    w1, w2, w3, w4 = 0.15, 0.20, 0.25, 0.30  # w1: i1->h1, w2: i2->h1, w3: i1->h2, w4: i2->h2
    w5, w6, w7, w8 = 0.40, 0.45, 0.50, 0.55  # w5: h1->o1, w6: h2->o1, w7: h1->o2, w8: h2->o2
    bh, bo = 0.35, 0.60
    lr = 0.5
    s = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731

    h1 = s(w1 * i1 + w2 * i2 + bh)
    h2 = s(w3 * i1 + w4 * i2 + bh)
    o1 = s(w5 * h1 + w6 * h2 + bo)
    o2 = s(w7 * h1 + w8 * h2 + bo)
    E = 0.5 * (t1 - o1) ** 2 + 0.5 * (t2 - o2) ** 2
    # dE/dnet_o = -(t - o) * o (1 - o)
    d_o1 = -(t1 - o1) * o1 * (1 - o1)
    d_o2 = -(t2 - o2) * o2 * (1 - o2)
    # dE/dnet_h = (sum over outputs of d_o * w) * h (1 - h), with the OLD output weights
    d_h1 = (d_o1 * w5 + d_o2 * w7) * h1 * (1 - h1)
    d_h2 = (d_o1 * w6 + d_o2 * w8) * h2 * (1 - h2)
    new = {
        "w1": w1 - lr * d_h1 * i1, "w2": w2 - lr * d_h1 * i2,
        "w3": w3 - lr * d_h2 * i1, "w4": w4 - lr * d_h2 * i2,
        "w5": w5 - lr * d_o1 * h1, "w6": w6 - lr * d_o1 * h2,
        "w7": w7 - lr * d_o2 * h1, "w8": w8 - lr * d_o2 * h2,
        # every neuron has its own bias (the post's Neuron.update_bais)
        "bh1": bh - lr * d_h1, "bh2": bh - lr * d_h2,
        "bo1": bo - lr * d_o1, "bo2": bo - lr * d_o2,
    }

    W1 = np.array([[w1, w3], [w2, w4]])  # x @ W: row = input, column = neuron
    W2 = np.array([[w5, w7], [w6, w8]])
    m = fastbp.MLP.from_weights([W1, W2], [np.array([bh, bh]), np.array([bo, bo])],
                                activation="sigmoid", loss="sse")
    np.testing.assert_allclose(m.predict(X003), [[o1, o2]], rtol=1e-14)
    assert m.loss(X003, Y003) == pytest.approx(E, rel=1e-14)
    hist = m.fit(X003, Y003, epochs=1, lr=lr)
    assert hist.loss[0] == pytest.approx(E, rel=1e-14)

    np.testing.assert_allclose(m.weights[0], [[new["w1"], new["w3"]], [new["w2"], new["w4"]]], rtol=1e-14)
    np.testing.assert_allclose(m.weights[1], [[new["w5"], new["w7"]], [new["w6"], new["w8"]]], rtol=1e-14)
    np.testing.assert_allclose(m.biases[0], [new["bh1"], new["bh2"]], rtol=1e-14)
    np.testing.assert_allclose(m.biases[1], [new["bo1"], new["bo2"]], rtol=1e-14)


# ------------------------------------------------------------------ seed 004
# Admissions: data_prep.py + backprob.py. 6-2-1 sigmoid, no biases, 1000 epochs,
# lr 0.007; per-sample error terms accumulated, one update per epoch of
# lr * sum / n_records. With delta = (y - out) f' that is gradient descent on
# 1/(2N) sum (out - y)^2 = "half_mse".


def prep_admissions(path):
    """data_prep.py in plain numpy. Columns: gre, gpa, rank_1..rank_4 (get_dummies order
    after dropping 'rank'); gre and gpa standardised with the sample std (pandas' ddof=1)
    over all 400 rows; then the 90% split drawn after np.random.seed(21)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    admit = np.array([float(r["admit"]) for r in rows])
    gre = np.array([float(r["gre"]) for r in rows])
    gpa = np.array([float(r["gpa"]) for r in rows])
    rank = np.array([int(r["rank"]) for r in rows])
    gre = (gre - gre.mean()) / gre.std(ddof=1)
    gpa = (gpa - gpa.mean()) / gpa.std(ddof=1)
    data = np.column_stack([gre, gpa] + [(rank == k).astype(np.float64) for k in (1, 2, 3, 4)])

    n = len(rows)
    sample = np.random.RandomState(21).choice(np.arange(n), size=int(n * 0.9), replace=False)
    test = np.setdiff1d(np.arange(n), sample)  # data.drop(sample) keeps the file order
    return data[sample], admit[sample], data[test], admit[test]


def weights_004(n_features=6, n_hidden=2):
    # backprob.py calls np.random.seed(21) itself (after data_prep's own seed(21) and
    # choice), then draws input->hidden, then hidden->output.
    rs = np.random.RandomState(21)
    w_ih = rs.normal(scale=1 / n_features ** .5, size=(n_features, n_hidden))
    w_ho = rs.normal(scale=1 / n_features ** .5, size=n_hidden)
    return w_ih, w_ho


def port_004_vectorised(features, targets, w_ih, w_ho, epochs, learnrate=0.007):
    """backprob.py's epoch loop with the per-sample sums written as matrix products."""
    w_ih, w_ho = w_ih.copy(), w_ho.copy()
    n_records = features.shape[0]
    for _ in range(epochs):
        hidden_output = sigmoid(features @ w_ih)  # (n, 2)
        output = sigmoid(hidden_output @ w_ho)  # (n,)
        output_error_term = (targets - output) * output * (1 - output)
        hidden_error_term = np.outer(output_error_term, w_ho) * hidden_output * (1 - hidden_output)
        w_ih += learnrate * (features.T @ hidden_error_term) / n_records
        w_ho += learnrate * (hidden_output.T @ output_error_term) / n_records
    return w_ih, w_ho


def port_004_loop(features, targets, w_ih, w_ho, epochs, learnrate=0.007):
    """backprob.py's loop as written (without the debug prints)."""
    w_ih, w_ho = w_ih.copy(), w_ho.copy()
    n_records = features.shape[0]
    for _ in range(epochs):
        del_w_input_hidden = np.zeros(w_ih.shape)
        del_w_hidden_output = np.zeros(w_ho.shape)
        for x, y in zip(features, targets):
            hidden_output = sigmoid(np.dot(x, w_ih))
            output = sigmoid(np.dot(hidden_output, w_ho))
            error = y - output
            output_error_term = error * output * (1 - output)
            hidden_error = np.dot(w_ho, output_error_term)
            hidden_error_term = hidden_error * hidden_output * (1 - hidden_output)
            del_w_hidden_output += output_error_term * hidden_output
            del_w_input_hidden += hidden_error_term * x[:, None]
        w_ih += learnrate * del_w_input_hidden / n_records
        w_ho += learnrate * del_w_hidden_output / n_records
    return w_ih, w_ho


def test_seed004_prep_matches_pandas(admissions_path):
    pd = pytest.importorskip("pandas")
    admissions = pd.read_csv(admissions_path)
    data = pd.concat([admissions, pd.get_dummies(admissions["rank"], prefix="rank")], axis=1)
    data = data.drop("rank", axis=1)
    for field in ["gre", "gpa"]:
        mean, std = data[field].mean(), data[field].std()
        data[field] = (data[field] - mean) / std
    rs = np.random.RandomState(21)
    sample = rs.choice(data.index, size=int(len(data) * 0.9), replace=False)
    train, test_data = data.loc[sample], data.drop(sample)  # .ix in the post
    features = train.drop("admit", axis=1)
    assert list(features.columns) == ["gre", "gpa", "rank_1", "rank_2", "rank_3", "rank_4"]

    X, y, Xt, yt = prep_admissions(admissions_path)
    np.testing.assert_allclose(X, features.to_numpy(dtype=np.float64), rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(y, train["admit"].to_numpy(dtype=np.float64))
    np.testing.assert_allclose(Xt, test_data.drop("admit", axis=1).to_numpy(dtype=np.float64), rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(yt, test_data["admit"].to_numpy(dtype=np.float64))


def test_seed004_loop_equals_vectorised_port(admissions_path):
    X, y, _, _ = prep_admissions(admissions_path)
    w_ih, w_ho = weights_004()
    a = port_004_loop(X, y, w_ih, w_ho, epochs=3)
    b = port_004_vectorised(X, y, w_ih, w_ho, epochs=3)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-13)


def test_seed004_admissions(admissions_path):
    X, y, Xt, yt = prep_admissions(admissions_path)
    assert X.shape == (360, 6) and Xt.shape == (40, 6)
    w_ih, w_ho = weights_004()
    p_ih, p_ho = port_004_vectorised(X, y, w_ih, w_ho, epochs=1000)

    m = fastbp.MLP.from_weights([w_ih, w_ho.reshape(2, 1)], None, activation="sigmoid", loss="half_mse")
    hist = m.fit(X, y, epochs=1000, lr=0.007)
    assert hist.loss[-1] < hist.loss[0]
    np.testing.assert_allclose(m.weights[0], p_ih, rtol=1e-10)
    np.testing.assert_allclose(m.weights[1].ravel(), p_ho, rtol=1e-10)

    port_pred = sigmoid(sigmoid(Xt @ p_ih) @ p_ho) > 0.5
    fast_pred = m.predict(Xt).ravel() > 0.5
    np.testing.assert_array_equal(fast_pred, port_pred)
    acc_port = np.mean(port_pred == yt)
    acc = np.mean(fast_pred == yt)
    print(f"\nseed 004: test accuracy = {acc:.3f} (port: {acc_port:.3f})")
    assert acc == acc_port


def test_seed004_printed_loss_is_the_last_rows_the_demo_prints_the_training_mse(
        admissions_path):
    """backprob.py prints ``np.mean((out - targets) ** 2)`` with ``out`` computed from
    ``x``, the loop's last training row, broadcast against every target: not the
    training set's mse it means.  The demo's [train mse] is the training set's (2 x the
    half_mse record), as the README says."""
    X, y, _, _ = prep_admissions(admissions_path)
    w_ih, w_ho = weights_004()
    p_ih, p_ho = port_004_loop(X, y, w_ih, w_ho, epochs=1)
    x = X[-1]  # what the loop variable holds after the epoch
    printed = np.mean((sigmoid(np.dot(sigmoid(np.dot(x, p_ih)), p_ho)) - y) ** 2)
    meant = np.mean((sigmoid(sigmoid(X @ p_ih) @ p_ho) - y) ** 2)
    m = fastbp.MLP.from_weights([w_ih, w_ho.reshape(2, 1)], None, activation="sigmoid",
                                loss="half_mse")
    hist = m.fit(X, y, epochs=2, lr=0.007)
    assert 2.0 * hist.loss[1] == pytest.approx(meant, rel=1e-12)
    assert abs(printed - meant) > 1e-3 * meant  # the two measures differ visibly


# ------------------------------------------------------------------ the demos' defaults
# What each tutorial trains with: epochs and learning rate (None: the post states none).
TUTORIAL_SETTINGS = {"xor": (100_000, None), "linear": (100_000, None),
                     "regression": (50, 0.01), "admissions": (1_000, 0.007)}


def test_demo_help_says_which_defaults_are_not_the_tutorials(capsys):
    """``fastbp demo --help`` says its defaults are the tutorial's: where one is not (the
    regression demo's 100,000 epochs against the tutorial's 50; the xor and linear demos'
    lr 0.1, which the post does not state), the help must name it."""
    from fastbp import _demos
    from fastbp.cli import main

    try:
        main(["demo", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    text = " ".join(out[out.index("options:"):].split())
    epochs_help = text[text.index("--epochs EPOCHS"):text.index("--lr LR")]
    lr_help = text[text.index("--lr LR"):text.index("--seed SEED")]
    for name, (epochs, lr) in TUTORIAL_SETTINGS.items():
        d = _demos.DEFAULTS[name]
        if d.epochs != epochs:
            assert name in epochs_help and f"{d.epochs:,}" in epochs_help, epochs_help
        if d.lr != lr:
            assert name in lr_help and f"{d.lr:g}" in lr_help, lr_help


def test_seed002_code_as_written_prints_the_posts_numbers_and_the_fix_reaches_0_006709():
    """The README says tutorial 002's code as written (sigmoidPrime of pre-activations,
    a1/a2 as layer inputs, the class's derivatives one layer up) reproduces the post's
    printed numbers, and that the corrected math ends at mse 0.006709 after 10,000 steps."""
    X, t = data_002()
    W1, W2, W3 = np.full((2, 3), 0.1), np.full((3, 3), 0.1), np.full((3, 1), 0.1)
    prime = lambda x: x * (1 - x)  # noqa: E731
    printed = {}
    for i in range(10000):
        a1 = X @ W1
        a2 = sigmoid(a1) @ W2
        a3 = sigmoid(a2) @ W3
        o = sigmoid(a3)
        if i % 1000 == 0 or i == 1:
            printed[i] = np.mean(np.square(t - o))
        o_delta = -(t - o) * prime(o)
        a2_delta = (o_delta @ W3.T) * prime(a3)
        a1_delta = (a2_delta @ W2.T) * prime(a2)
        W1 -= X.T @ a1_delta
        W2 -= a1.T @ a2_delta
        W3 -= a2.T @ o_delta
    post = {0: 0.12617687296377364, 1: 0.1150369188377854, 1000: 0.0337720657418149,
            2000: 0.03142134754185451, 3000: 0.031114001170512426, 4000: 0.031112000677230422,
            5000: 0.03111412332216862, 6000: 0.03111426688467415, 7000: 0.031114259987152403,
            8000: 0.031114258512887197, 9000: 0.03111425847414064}
    for i, v in post.items():
        assert printed[i] == pytest.approx(v, rel=1e-12), i

    m = model_002("sse")
    m.fit(X, t, epochs=10000, lr=1.0)
    assert round(float(np.mean(np.square(t - m.predict(X)))), 6) == 0.006709
