"""fg.scan: a loop compiled once (JAX's lax.scan semantics), its gradient a reverse scan.

Checked against the Python loop it replaces (the same function unrolled), finite differences in
float64, the interpreter (the suite cross-checks every compiled run), and torch: an LSTM language
model written as pytorch/examples' word_language_model (RNNModel: Embedding, nn.LSTM, Linear)
trained step for step with Adam.
"""
import re

import numpy as np
import pytest

import fusegrad as fg
from fusegrad.compiler.symbolic import TraceError
from fusegrad.ir.types import ShapeError


def rnn_loss(scan, reverse=False):
    """A tanh RNN whose carry, ys and xs all matter; unrolled when scan is False."""
    def loss(p, xs, h0):
        def cell(h, x):
            h = fg.tanh(x @ p["wx"] + h @ p["wh"] + p["b"])
            return h, fg.sum(h * h, axis=1)
        if scan:
            h, ys = fg.scan(cell, h0, xs, reverse=reverse)
        else:
            h, ys = h0, [None] * xs.shape[0]
            steps = range(xs.shape[0] - 1, -1, -1) if reverse else range(xs.shape[0])
            for t in steps:
                h, ys[t] = cell(h, xs[t])
            ys = fg.stack(ys)
        return fg.sum(h * h) + fg.sum(ys * np.arange(1.0, xs.shape[0] + 1)[:, None])
    return loss


def rnn_args(seed=0, steps=5):
    rng = np.random.default_rng(seed)
    p = {"wx": rng.standard_normal((3, 4)) * 0.6, "wh": rng.standard_normal((4, 4)) * 0.4,
         "b": rng.standard_normal(4) * 0.1}
    return p, rng.standard_normal((steps, 2, 3)), rng.standard_normal((2, 4))


def leaves(tree):
    return fg.pytree.flatten(tree)[0]


# ---- values and gradients ----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["cpu", "interpret"])
@pytest.mark.parametrize("reverse", [False, True])
def test_values_and_gradients_equal_the_unrolled_loop(target, reverse):
    args = rnn_args()
    want_v = fg.jit(rnn_loss(False, reverse), target="interpret")(*args)
    want_g = fg.grad(rnn_loss(False, reverse), argnums=(0, 1, 2), target="interpret")(*args)
    got_v = fg.jit(rnn_loss(True, reverse), target=target)(*args)
    got_g = fg.grad(rnn_loss(True, reverse), argnums=(0, 1, 2), target=target)(*args)
    np.testing.assert_allclose(got_v, want_v, rtol=1e-12)
    for g, w in zip(leaves(got_g), leaves(want_g)):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_gradients_match_finite_differences():
    fg.check_grads(rnn_loss(True), rnn_args(steps=4))


def test_gradient_of_the_gradient():
    """The backward scan is itself differentiable (its cotangents reach the saved carries)."""
    def s(w):
        c, ys = fg.scan(lambda c, x: (c * w + x, c), np.ones(2), np.arange(6.0).reshape(3, 2))
        return fg.sum(c * c) + fg.sum(ys * ys * w)

    def g_dot(w, target):
        return fg.sum(fg.grad(s, target=target)(w) * np.array([1.0, 2.0]))

    w = np.array([0.5, 0.9])
    eps = 1e-6
    fd = [(g_dot(w + eps * e, "interpret") - g_dot(w - eps * e, "interpret")) / (2 * eps)
          for e in np.eye(2)]
    got = fg.grad(lambda w: g_dot(w, "cpu"))(w)
    np.testing.assert_allclose(got, fd, rtol=1e-6)


def test_pytrees_integer_carries_and_length_without_xs():
    def f(w, xs):
        def cell(c, x):
            h = fg.tanh(c["h"] * w + x["a"] * x["b"])
            return {"n": c["n"] + 1, "h": h}, {"h": h, "n": c["n"]}
        c, ys = fg.scan(cell, {"n": np.int64(0), "h": np.zeros(2)}, xs)
        return c, ys

    rng = np.random.default_rng(1)
    xs = {"a": rng.standard_normal((4, 2)), "b": rng.standard_normal((4, 2))}
    w = np.array([0.3, -0.2])
    eager = f(w, xs)
    for target in ("cpu", "interpret"):
        got = fg.jit(f, target=target)(w, xs)
        for g, e in zip(leaves(got), leaves(eager)):
            np.testing.assert_allclose(g, e, rtol=1e-12)
    assert int(eager[0]["n"]) == 4 and list(eager[1]["n"]) == [0, 1, 2, 3]
    c, ys = fg.jit(lambda h: fg.scan(lambda c, _: (c * 2, c), h, length=3))(np.ones(2))
    np.testing.assert_array_equal(c, [8, 8])
    np.testing.assert_array_equal(ys, [[1, 1], [2, 2], [4, 4]])
    c, ys = fg.jit(lambda h, xs: fg.scan(lambda c, x: (c + x, c), h, xs))(np.ones(2),
                                                                        np.zeros((0, 2)))
    np.testing.assert_array_equal(c, [1, 1])
    assert ys.shape == (0, 2)


def test_the_graph_does_not_grow_with_the_length():
    """One body, traced and fused once: the programs for 16 and 64 steps have the same
    kernels, only the trip count differs."""
    stats = {}
    for steps in (16, 64):
        step = fg.train_step(rnn_loss(True), fg.optim.SGD(0.01))
        p, xs, h0 = rnn_args(steps=steps)
        step(p, xs, h0)
        stats[steps] = (step.stats()["kernels"], len(step.ir().splitlines()))
    assert stats[16] == stats[64]


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, error, message", [
    (lambda c, x: (c.astype(np.float32), c), TypeError, "carry keeps its type"),
    (lambda c, x: ((c, c), c), TypeError, "carry of init's structure"),
    (lambda c, x: c, TypeError, r"f must return \(carry, y\)"),
    (lambda c, x: (fg.assign(c, c), c), TraceError, "fg.assign inside fg.scan.s body is not"),
])
def test_bad_bodies_say_what_is_wrong(body, error, message):
    with pytest.raises(error, match=message):
        fg.jit(lambda h, xs: fg.scan(body, h, xs))(np.ones(2), np.ones((3, 2)))


def test_xs_of_different_lengths_are_an_error():
    with pytest.raises(ShapeError, match="different lengths"):
        fg.jit(lambda h: fg.scan(lambda c, x: (c, c), h, (np.ones((3, 2)), np.ones((4, 2)))))(
            np.ones(2))
    with pytest.raises(ShapeError, match="length=5 but xs has 3"):
        fg.jit(lambda h: fg.scan(lambda c, x: (c, c), h, np.ones((3, 2)), length=5))(np.ones(2))


def test_nested_scans_run_on_the_interpreter_and_say_so_on_the_cpu():
    def nest(w, xs):
        def outer(c, row):
            c2, _ = fg.scan(lambda d, x: (d * w + x, d), c, row)
            return c2, fg.sum(c2)
        c, ys = fg.scan(outer, np.zeros(2), xs)
        return fg.sum(c) + fg.sum(ys)

    w, xs = np.array([0.5, 0.2]), np.arange(24.0).reshape(3, 4, 2) / 10
    fg.check_grads(lambda w: fg.jit(nest, target="interpret")(w, xs), (w,))
    with pytest.raises(NotImplementedError, match="fg.scan inside fg.scan's body"):
        fg.grad(nest)(w, xs)


# ---- random numbers in the body --------------------------------------------------------------


def test_dropout_in_the_body_draws_anew_every_step():
    def loss(p, xs):
        def cell(h, x):
            h = fg.dropout(fg.tanh(x @ p["w"] + h), 0.5)
            return h, h
        h, hs = fg.scan(cell, np.zeros((2, 64)), xs)
        return fg.mean(h * h), hs

    p = {"w": np.ones((3, 64))}
    step = fg.train_step(loss, fg.optim.SGD(1e-9), has_aux=True)
    _, hs = step(p, np.ones((4, 2, 3)))
    masks = hs == 0
    for t in range(1, 4):
        assert not np.array_equal(masks[0], masks[t])
    assert 0.3 < masks.mean() < 0.7
    _, again = step(p, np.ones((4, 2, 3)))
    assert not np.array_equal(again == 0, masks)  # a new step, new masks


# ---- an LSTM language model, against torch -----------------------------------------------------


def lstm_params(rng, ntoken=11, ninp=6, nhid=5):
    u = lambda *s: rng.uniform(-0.3, 0.3, s)  # noqa: E731
    return {"encoder": u(ntoken, ninp), "w_ih": u(4 * nhid, ninp), "w_hh": u(4 * nhid, nhid),
            "b_ih": u(4 * nhid), "b_hh": u(4 * nhid), "decoder_w": u(ntoken, nhid),
            "decoder_b": u(ntoken)}


def lstm_lm_loss(p, ids, targets, h0, c0):
    """word_language_model's RNNModel.forward with nn.LSTM (one layer, no dropout), the LSTM
    written as torch documents it: gates i, f, g, o from one matmul each for input and state."""
    emb = fg.embedding(ids, p["encoder"])  # (T, B, ninp)

    def cell(state, x):
        h, c = state
        gates = x @ p["w_ih"].T + p["b_ih"] + h @ p["w_hh"].T + p["b_hh"]
        i, f, g, o = fg.split(gates, 4, axis=-1)
        c = fg.sigmoid(f) * c + fg.sigmoid(i) * fg.tanh(g)
        h = fg.sigmoid(o) * fg.tanh(c)
        return (h, c), h

    _, hs = fg.scan(cell, (h0, c0), emb)
    logits = hs @ p["decoder_w"].T + p["decoder_b"]
    return fg.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def test_lstm_language_model_trains_like_torch():
    torch = pytest.importorskip("torch")
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        rng = np.random.default_rng(0)
        p = lstm_params(rng)
        lstm = torch.nn.LSTM(6, 5)
        enc, dec = torch.nn.Embedding(11, 6), torch.nn.Linear(5, 11)
        with torch.no_grad():
            for name, value in (("weight_ih_l0", "w_ih"), ("weight_hh_l0", "w_hh"),
                                ("bias_ih_l0", "b_ih"), ("bias_hh_l0", "b_hh")):
                getattr(lstm, name).copy_(torch.tensor(p[value]))
            enc.weight.copy_(torch.tensor(p["encoder"]))
            dec.weight.copy_(torch.tensor(p["decoder_w"]))
            dec.bias.copy_(torch.tensor(p["decoder_b"]))
        params = [*lstm.parameters(), *enc.parameters(), *dec.parameters()]
        opt = torch.optim.Adam(params, lr=0.01)
        step = fg.train_step(lstm_lm_loss, fg.optim.Adam(0.01))
        h0 = c0 = np.zeros((3, 5))
        for _ in range(3):
            ids, targets = rng.integers(0, 11, (7, 3)), rng.integers(0, 11, (7, 3))
            loss = step(p, ids, targets, h0, c0)
            opt.zero_grad()
            out, _ = lstm(enc(torch.tensor(ids)))
            want = torch.nn.functional.cross_entropy(dec(out).reshape(-1, 11),
                                                     torch.tensor(targets).reshape(-1))
            want.backward()
            opt.step()
            np.testing.assert_allclose(loss, want.item(), rtol=1e-10)
        np.testing.assert_allclose(p["w_hh"], lstm.weight_hh_l0.detach().numpy(), rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(p["encoder"], enc.weight.detach().numpy(), rtol=1e-9,
                                   atol=1e-12)
    finally:
        torch.set_default_dtype(saved)


def test_backward_scan_reuses_saved_products_and_sums_weight_gradients_after_the_loop():
    """The forward saves its body's matrix products, so the backward body does not compute
    them again; a weight's gradient u[t]^T v[t] is one product of the stacked rows after the
    loop, not a small product and a running sum every step."""
    g = fg.grad(rnn_loss(True), argnums=(0, 1), target="cpu")
    g(*rnn_args())
    schedule = [ln for ln in g.source().split("# ---- kernel")[0].splitlines()
                if re.match(r"#\s+\d+  ", ln)]
    loops = [k for k, ln in enumerate(schedule) if " loop " in ln and "times over the next" in ln]
    assert len(loops) == 2  # the forward scan, the backward scan
    start = loops[1]
    body = int(re.search(r"over the next (\d+) calls", schedule[start]).group(1))
    inside = schedule[start + 1:start + 1 + body]
    after = schedule[start + 1 + body:]
    # dh and dx: not the forward's two products again, nor dwx and dwh
    assert sum("gemm" in ln for ln in inside) == 2
    assert sum("gemm" in ln for ln in after) == 2  # dwx, dwh: the stacked steps at once


def test_gradient_of_the_gradient_through_saved_products():
    """Saved products and weight gradients summed after the loop stay differentiable: the
    derivative of <grad wrt wh, v> matches finite differences of the interpreter's."""
    p, xs, h0 = rnn_args(steps=3)
    v = np.random.default_rng(7).standard_normal((4, 4))

    def g_dot(wh, target):
        q = dict(p, wh=wh)
        return fg.sum(fg.grad(rnn_loss(True), target=target)(q, xs, h0)["wh"] * v)

    wh = p["wh"]
    eps = 1e-6
    fd = np.zeros_like(wh)
    for i in np.ndindex(*wh.shape):
        e = np.zeros_like(wh)
        e[i] = eps
        fd[i] = (g_dot(wh + e, "interpret") - g_dot(wh - e, "interpret")) / (2 * eps)
    got = fg.grad(lambda w: g_dot(w, "cpu"))(wh)
    np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-8)
