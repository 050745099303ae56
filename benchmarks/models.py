"""Public models ported as a user would write them, for compile-time measurements.

    transformer_lm(layers)   a decoder-only transformer LM like karpathy/nanoGPT (d=32, 2 heads)
    lstm_lm(steps)           pytorch/examples' word_language_model LSTM, unrolled over `steps`
    resnet_bn()              a small torchvision-style ResNet with batch norm (batch statistics)
    mnist_net()              pytorch/examples' MNIST net (2 convs, max pool, dropout, 2 linears)

Each returns a Model: `loss(params, *batch)`, fresh `params()`, one `batch()`, and the optimizer
the original trains with. Sizes are small: these measure the compiler, not the arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

import fusegrad as fg


@dataclass
class Model:
    name: str
    loss: Callable
    params: Callable  # () -> fresh params
    batch: Callable  # () -> tuple of arrays
    optimizer: Callable  # () -> fg.optim optimizer

    def step(self, **kw):
        return fg.train_step(self.loss, self.optimizer(), **kw)


def _normal(rng, shape, scale):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- decoder-only transformer (nanoGPT) ---------------------------------------------------------

def transformer_lm(layers=2, d=32, heads=2, vocab=65, block=16, batch=4) -> Model:
    hd = d // heads

    def params():
        rng = np.random.default_rng(0)
        p = {"wte": _normal(rng, (vocab, d), 0.02), "wpe": _normal(rng, (block, d), 0.02),
             "lnf_g": np.ones(d, np.float32), "lnf_b": np.zeros(d, np.float32),
             "head": _normal(rng, (d, vocab), 0.02), "blocks": []}
        for _ in range(layers):
            p["blocks"].append({
                "ln1_g": np.ones(d, np.float32), "ln1_b": np.zeros(d, np.float32),
                "attn_w": _normal(rng, (d, 3 * d), 0.02), "attn_b": np.zeros(3 * d, np.float32),
                "proj_w": _normal(rng, (d, d), 0.02), "proj_b": np.zeros(d, np.float32),
                "ln2_g": np.ones(d, np.float32), "ln2_b": np.zeros(d, np.float32),
                "fc_w": _normal(rng, (d, 4 * d), 0.02), "fc_b": np.zeros(4 * d, np.float32),
                "fc2_w": _normal(rng, (4 * d, d), 0.02), "fc2_b": np.zeros(d, np.float32)})
        return p

    mask = np.tril(np.ones((block, block), bool))

    def attention(b, x):
        B, T, _ = x.shape
        qkv = x @ b["attn_w"] + b["attn_b"]
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        q, k, v = (fg.transpose(fg.reshape(t, (B, T, heads, hd)), (0, 2, 1, 3)) for t in (q, k, v))
        att = (q @ fg.swapaxes(k, -1, -2)) * float(1.0 / np.sqrt(hd))  # a Python float: stays float32
        att = fg.where(mask[:T, :T], att, -np.inf)
        y = fg.softmax(att, axis=-1) @ v
        y = fg.reshape(fg.transpose(y, (0, 2, 1, 3)), (B, T, d))
        return y @ b["proj_w"] + b["proj_b"]

    def loss(p, idx, targets):
        T = idx.shape[1]
        x = fg.embedding(idx, p["wte"]) + p["wpe"][:T]
        for b in p["blocks"]:
            x = x + attention(b, fg.layer_norm(x, b["ln1_g"], b["ln1_b"]))
            h = fg.gelu(fg.layer_norm(x, b["ln2_g"], b["ln2_b"]) @ b["fc_w"] + b["fc_b"])
            x = x + h @ b["fc2_w"] + b["fc2_b"]
        logits = fg.layer_norm(x, p["lnf_g"], p["lnf_b"]) @ p["head"]
        return fg.cross_entropy(fg.reshape(logits, (-1, vocab)), fg.reshape(targets, (-1,)))

    def data():
        rng = np.random.default_rng(1)
        idx = rng.integers(0, vocab, (batch, block + 1))
        return idx[:, :-1].copy(), idx[:, 1:].copy()

    return Model(f"transformer-{layers}L", loss, params, data,
                 lambda: fg.optim.AdamW(lr=1e-3, weight_decay=0.1))


# ---- LSTM language model (word_language_model) ------------------------------------------------

def lstm_lm(steps=16, hidden=32, emb=32, vocab=50, batch=8, per_step_loss=False,
            scan=False) -> Model:
    """With per_step_loss the loss adds a cross-entropy per time step (as hand-written LSTM
    loops often do); otherwise one cross-entropy over all steps, as word_language_model. With
    scan, the time loop is fg.scan (traced once) instead of a Python loop (unrolled)."""

    def params():
        rng = np.random.default_rng(0)
        s = 1 / np.sqrt(hidden)
        return {"emb": _normal(rng, (vocab, emb), 0.1),
                "wx": _normal(rng, (emb, 4 * hidden), s), "wh": _normal(rng, (hidden, 4 * hidden), s),
                "b": np.zeros(4 * hidden, np.float32),
                "dec_w": _normal(rng, (hidden, vocab), s), "dec_b": np.zeros(vocab, np.float32)}

    def cell(p, state, x_t):
        h, c = state
        gates = x_t @ p["wx"] + h @ p["wh"] + p["b"]
        i, f, g, o = fg.split(gates, 4, axis=-1)
        c = fg.sigmoid(f) * c + fg.sigmoid(i) * fg.tanh(g)
        h = fg.sigmoid(o) * fg.tanh(c)
        return (h, c), h

    def scan_loss(p, ids, targets):
        B = ids.shape[0]
        x = fg.swapaxes(fg.embedding(ids, p["emb"]), 0, 1)  # (T, B, emb): scan over time
        zeros = np.zeros((B, hidden), np.float32)
        _, hs = fg.scan(lambda state, x_t: cell(p, state, x_t), (zeros, zeros), x)
        hs = fg.reshape(fg.swapaxes(hs, 0, 1), (B * steps, hidden))
        return fg.cross_entropy(hs @ p["dec_w"] + p["dec_b"], fg.reshape(targets, (-1,)))

    def loss(p, ids, targets):
        B = ids.shape[0]
        x = fg.embedding(ids, p["emb"])  # (B, T, emb)
        h = np.zeros((B, hidden), np.float32)
        c = np.zeros((B, hidden), np.float32)
        outs, total = [], 0.0
        for t in range(steps):
            gates = x[:, t] @ p["wx"] + h @ p["wh"] + p["b"]
            i = fg.sigmoid(gates[:, :hidden])
            f = fg.sigmoid(gates[:, hidden:2 * hidden])
            g = fg.tanh(gates[:, 2 * hidden:3 * hidden])
            o = fg.sigmoid(gates[:, 3 * hidden:])
            c = f * c + i * g
            h = o * fg.tanh(c)
            if per_step_loss:
                total = total + fg.cross_entropy(h @ p["dec_w"] + p["dec_b"], targets[:, t])
            else:
                outs.append(h)
        if per_step_loss:
            return total / steps
        hs = fg.reshape(fg.stack(outs, axis=1), (B * steps, hidden))
        return fg.cross_entropy(hs @ p["dec_w"] + p["dec_b"], fg.reshape(targets, (-1,)))

    def data():
        rng = np.random.default_rng(1)
        ids = rng.integers(0, vocab, (batch, steps + 1))
        return ids[:, :-1].copy(), ids[:, 1:].copy()

    name = f"lstm-{'scan-' if scan else ''}{steps}" + ("-steploss" if per_step_loss else "")
    return Model(name, scan_loss if scan else loss, params, data,
                 lambda: fg.optim.SGD(lr=0.5))


# ---- ResNet with batch norm ---------------------------------------------------------------------

def _batch_norm(x, g, b, eps=1e-5):
    mean = fg.mean(x, axis=(0, 2, 3), keepdims=True)
    var = fg.mean((x - mean) ** 2, axis=(0, 2, 3), keepdims=True)
    return (x - mean) / fg.sqrt(var + eps) * fg.reshape(g, (1, -1, 1, 1)) \
        + fg.reshape(b, (1, -1, 1, 1))


def resnet_bn(widths=(8, 16), blocks=1, batch=8, size=16, classes=10) -> Model:
    def params():
        rng = np.random.default_rng(0)

        def conv(cout, cin, k):
            return _normal(rng, (cout, cin, k, k), np.sqrt(2 / (cin * k * k)))

        p = {"stem": conv(widths[0], 3, 3), "stem_g": np.ones(widths[0], np.float32),
             "stem_b": np.zeros(widths[0], np.float32), "stages": []}
        cin = widths[0]
        for w in widths:
            stage = []
            for k in range(blocks):
                blk = {"c1": conv(w, cin, 3), "g1": np.ones(w, np.float32),
                       "b1": np.zeros(w, np.float32), "c2": conv(w, w, 3),
                       "g2": np.ones(w, np.float32), "b2": np.zeros(w, np.float32)}
                if cin != w:
                    blk["down"] = conv(w, cin, 1)
                stage.append(blk)
                cin = w
            p["stages"].append(stage)
        p["fc_w"] = _normal(rng, (cin, classes), 1 / np.sqrt(cin))
        p["fc_b"] = np.zeros(classes, np.float32)
        return p

    def loss(p, x, y):
        h = fg.relu(_batch_norm(fg.conv2d(x, p["stem"], 1, 1), p["stem_g"], p["stem_b"]))
        for s, stage in enumerate(p["stages"]):
            for k, blk in enumerate(stage):
                stride = 2 if (s > 0 and k == 0) else 1
                out = fg.relu(_batch_norm(fg.conv2d(h, blk["c1"], stride, 1), blk["g1"], blk["b1"]))
                out = _batch_norm(fg.conv2d(out, blk["c2"], 1, 1), blk["g2"], blk["b2"])
                short = fg.conv2d(h, blk["down"], stride, 0) if "down" in blk else h
                h = fg.relu(out + short)
        h = fg.mean(h, axis=(2, 3))
        return fg.cross_entropy(h @ p["fc_w"] + p["fc_b"], y)

    def data():
        rng = np.random.default_rng(1)
        return (rng.standard_normal((batch, 3, size, size)).astype(np.float32),
                rng.integers(0, classes, batch))

    return Model("resnet-bn", loss, params, data, lambda: fg.optim.SGD(lr=0.1, momentum=0.9))


# ---- pytorch/examples MNIST net ----------------------------------------------------------------

def mnist_net(batch=16) -> Model:
    def params():
        rng = np.random.default_rng(0)
        return {"c1": _normal(rng, (32, 1, 3, 3), 1 / 3), "c1b": np.zeros(32, np.float32),
                "c2": _normal(rng, (64, 32, 3, 3), 1 / np.sqrt(288)),
                "c2b": np.zeros(64, np.float32),
                "fc1": _normal(rng, (9216, 128), 1 / 96), "fc1b": np.zeros(128, np.float32),
                "fc2": _normal(rng, (128, 10), 1 / np.sqrt(128)), "fc2b": np.zeros(10, np.float32)}

    def loss(p, x, y, key):
        h = fg.relu(fg.conv2d(x, p["c1"], bias=p["c1b"]))
        h = fg.relu(fg.conv2d(h, p["c2"], bias=p["c2b"]))
        h = fg.dropout(fg.max_pool2d(h, 2), 0.25, key=(key, 0))
        h = fg.reshape(h, (h.shape[0], -1))
        h = fg.dropout(fg.relu(h @ p["fc1"] + p["fc1b"]), 0.5, key=(key, 1))
        return fg.cross_entropy(h @ p["fc2"] + p["fc2b"], y)

    def data():
        rng = np.random.default_rng(1)
        return (rng.standard_normal((batch, 1, 28, 28)).astype(np.float32),
                rng.integers(0, 10, batch))

    return Model("mnist-net", loss, params, data, lambda: fg.optim.Adam(lr=1e-3))


MODELS = {
    "transformer-2L": lambda: transformer_lm(2),
    "transformer-8L": lambda: transformer_lm(8),
    "lstm-16": lambda: lstm_lm(16),
    "lstm-64": lambda: lstm_lm(64),
    "lstm-scan-16": lambda: lstm_lm(16, scan=True),
    "lstm-scan-64": lambda: lstm_lm(64, scan=True),
    "resnet-bn": resnet_bn,
    "mnist-net": mnist_net,
}
