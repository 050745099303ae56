"""End-to-end gradients of small models written with the public op namespace, against finite
differences (fg.check_grads, float64), and a model that actually learns with fg.grad + NumPy SGD."""
from __future__ import annotations

import math

import numpy as np
import pytest

import fusegrad as fg


def _init(rng, *shape, scale=None):
    scale = 1.0 / math.sqrt(shape[0]) if scale is None else scale
    return rng.standard_normal(shape) * scale


def _assert_grads_finite_and_shaped(grads, params):
    for k, p in params.items():
        assert grads[k].shape == p.shape and grads[k].dtype == p.dtype, k
        assert np.all(np.isfinite(grads[k])), k
        assert np.abs(grads[k]).max() > 0, f"gradient of {k} is all zero"


# ---------------------------------------------------------------------------------------------
# (1) MLP with softmax cross-entropy on integer labels


def mlp_params(rng, d_in=5, hidden=8, classes=3):
    return {"w1": _init(rng, d_in, hidden), "b1": 0.1 * rng.standard_normal(hidden),
            "w2": _init(rng, hidden, classes), "b2": 0.1 * rng.standard_normal(classes)}


def mlp_logits(p, x):
    h = fg.relu(x @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


def mlp_loss(p, x, y):
    return fg.cross_entropy(mlp_logits(p, x), y)


def mlp_loss_via_softmax(p, x, y):
    """The same loss written out: -mean(log(softmax(logits))[label]) through one_hot."""
    probs = fg.softmax(mlp_logits(p, x), axis=-1)
    return -fg.mean(fg.sum(fg.log(probs) * fg.one_hot(y, 3, "float64"), axis=-1))


@pytest.mark.parametrize("loss_fn", [mlp_loss, mlp_loss_via_softmax], ids=lambda f: f.__name__)
def test_mlp_cross_entropy_gradients(loss_fn):
    rng = np.random.default_rng(1)
    p = mlp_params(rng)
    x, y = rng.standard_normal((4, 5)), np.array([0, 2, 1, 2])

    loss, grads = fg.value_and_grad(loss_fn)(p, x, y)
    logits = np.maximum(x @ p["w1"] + p["b1"], 0) @ p["w2"] + p["b2"]
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(loss, -logp[np.arange(4), y].mean(), rtol=1e-12)
    _assert_grads_finite_and_shaped(grads, p)
    # closed form for the head: dL/dlogits = (softmax - onehot) / batch
    dlogits = (np.exp(logp) - np.eye(3)[y]) / 4
    h = np.maximum(x @ p["w1"] + p["b1"], 0)
    np.testing.assert_allclose(grads["w2"], h.T @ dlogits, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grads["b2"], dlogits.sum(0), rtol=1e-10, atol=1e-14)

    fg.check_grads(loss_fn, (p, x, y))


# ---------------------------------------------------------------------------------------------
# (2) LayerNorm + GELU MLP, both GELU forms


def ln_gelu_loss(p, x, target, approximate):
    h = x @ p["w1"] + p["b1"]
    h = fg.gelu(fg.layer_norm(h, p["ln_w"], p["ln_b"]), approximate=approximate)
    return fg.mse(h @ p["w2"] + p["b2"], target)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_layer_norm_gelu_mlp_gradients(approximate):
    rng = np.random.default_rng(2)
    p = {"w1": _init(rng, 5, 8), "b1": 0.1 * rng.standard_normal(8),
         "ln_w": 1 + 0.2 * rng.standard_normal(8), "ln_b": 0.2 * rng.standard_normal(8),
         "w2": _init(rng, 8, 2), "b2": 0.1 * rng.standard_normal(2)}
    x, target = rng.standard_normal((3, 5)), rng.standard_normal((3, 2))

    grads = fg.grad(ln_gelu_loss)(p, x, target, approximate)
    _assert_grads_finite_and_shaped(grads, p)
    fg.check_grads(lambda p, x, t: ln_gelu_loss(p, x, t, approximate), (p, x, target))
    # the two forms are different functions with close values
    g_other = fg.grad(ln_gelu_loss)(p, x, target, "tanh" if approximate == "none" else "none")
    assert not np.array_equal(g_other["w1"], grads["w1"])
    np.testing.assert_allclose(g_other["w1"], grads["w1"], rtol=0.05, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# (3) small CNN: conv2d (stride, padding) + relu + max_pool2d + linear head + cross-entropy

CNN_CONFIGS = {
    # image (C, H, W), conv out channels, conv stride/padding, pool kernel/stride/padding
    "1x6x6-s1p1-pool2": ((1, 6, 6), 3, 1, 1, 2, 2, 0),
    "2x5x5-s2p1-pool2s1p1": ((2, 5, 5), 4, 2, 1, 2, 1, 1),
}


def _pooled_size(image, stride, padding, pool, pool_stride, pool_padding):
    c, h, w = image
    oh = (h + 2 * padding - 3) // stride + 1
    ow = (w + 2 * padding - 3) // stride + 1
    return ((oh + 2 * pool_padding - pool) // pool_stride + 1,
            (ow + 2 * pool_padding - pool) // pool_stride + 1)


@pytest.mark.parametrize("config", sorted(CNN_CONFIGS))
def test_small_cnn_gradients(config):
    image, out_ch, stride, padding, pool, pool_stride, pool_padding = CNN_CONFIGS[config]
    ph, pw = _pooled_size(image, stride, padding, pool, pool_stride, pool_padding)
    rng = np.random.default_rng(3)
    p = {"conv_w": _init(rng, out_ch, image[0], 3, 3, scale=0.5),
         "conv_b": 0.1 * rng.standard_normal(out_ch),
         "fc_w": _init(rng, out_ch * ph * pw, 3), "fc_b": 0.1 * rng.standard_normal(3)}
    x, y = rng.standard_normal((3,) + image), np.array([2, 0, 1])

    def loss_fn(p, x, y):
        h = fg.conv2d(x, p["conv_w"], stride=stride, padding=padding, bias=p["conv_b"])
        h = fg.max_pool2d(fg.relu(h), pool, stride=pool_stride, padding=pool_padding)
        h = fg.reshape(h, (x.shape[0], -1))
        return fg.cross_entropy(h @ p["fc_w"] + p["fc_b"], y)

    grads = fg.grad(loss_fn)(p, x, y)
    _assert_grads_finite_and_shaped(grads, p)
    fg.check_grads(loss_fn, (p, x, y), max_elements=40)


# ---------------------------------------------------------------------------------------------
# (4) attention block: q, k, v projections, softmax(q k^T / sqrt(d)) v, output projection


def attention(p, x, heads):
    b, t, d = x.shape
    dh = d // heads

    def split(h):  # (B, T, D) -> (B, H, T, dh)
        return fg.transpose(fg.reshape(h, (b, t, heads, dh)), (0, 2, 1, 3))

    q, k, v = (split(x @ p[name]) for name in ("wq", "wk", "wv"))
    scores = fg.matmul(q, fg.swapaxes(k, -1, -2)) / math.sqrt(dh)  # batched (B, H, T, T)
    out = fg.matmul(fg.softmax(scores, axis=-1), v)
    out = fg.reshape(fg.transpose(out, (0, 2, 1, 3)), (b, t, d))
    return out @ p["wo"] + p["bo"]


def _attention_numpy(p, x, heads):
    b, t, d = x.shape
    dh = d // heads
    q, k, v = ((x @ p[n]).reshape(b, t, heads, dh).transpose(0, 2, 1, 3)
               for n in ("wq", "wk", "wv"))
    s = q @ k.swapaxes(-1, -2) / math.sqrt(dh)
    s = np.exp(s - s.max(-1, keepdims=True))
    out = (s / s.sum(-1, keepdims=True)) @ v
    return out.transpose(0, 2, 1, 3).reshape(b, t, d) @ p["wo"] + p["bo"]


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_block_gradients(heads):
    rng = np.random.default_rng(4)
    d = 6
    p = {n: _init(rng, d, d) for n in ("wq", "wk", "wv", "wo")}
    p["bo"] = 0.1 * rng.standard_normal(d)
    x = rng.standard_normal((2, 4, d))
    w = rng.standard_normal((2, 4, d))

    def loss_fn(p, x):
        return fg.sum(attention(p, x, heads) * w)

    out = fg.jit(attention)(p, x, heads)
    np.testing.assert_allclose(out, _attention_numpy(p, x, heads), rtol=1e-12, atol=1e-12)
    grads = fg.grad(loss_fn)(p, x)
    _assert_grads_finite_and_shaped(grads, p)
    graph = fg.grad(loss_fn).trace(p, x).graph
    batched = [n for n in graph.nodes if n.op == "matmul" and len(n.out.shape) == 4]
    assert batched, "the attention scores should be batched matmuls"
    fg.check_grads(loss_fn, (p, x), max_elements=32)


# ---------------------------------------------------------------------------------------------
# (5) training with fg.grad and a NumPy update actually learns


def _blobs(rng, n_per_class=20, classes=3, dim=4):
    centres = 2.5 * rng.standard_normal((classes, dim))
    x = np.concatenate([c + 0.7 * rng.standard_normal((n_per_class, dim)) for c in centres])
    y = np.repeat(np.arange(classes), n_per_class)
    order = rng.permutation(len(y))
    return x[order], y[order]


def test_gradient_descent_reduces_the_loss():
    rng = np.random.default_rng(5)
    x, y = _blobs(rng)
    p = mlp_params(rng, d_in=4, hidden=8, classes=3)
    value_and_grad = fg.value_and_grad(mlp_loss)
    losses = []
    for _ in range(30):
        loss, grads = value_and_grad(p, x, y)
        losses.append(float(loss))
        p = {k: p[k] - 0.5 * grads[k] for k in p}
    final = float(mlp_loss(p, x, y))  # eager: the same ops on plain arrays
    assert value_and_grad.cache_size == 1  # traced once, reused every step
    assert np.isfinite(losses).all()
    assert final < 0.5 * losses[0], losses
    assert final < 0.3
    accuracy = (mlp_logits(p, x).argmax(1) == y).mean()
    assert accuracy > 0.9
