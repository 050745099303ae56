"""fusegrad's contender: the workload's loss written with fg ops, compiled by fg.train_step."""
from __future__ import annotations

import numpy as np

import fusegrad as fg

from benchmarks.contenders import Contender
from benchmarks.workloads import Workload


def loss_function(w: Workload):
    """The workload's loss(params, x, y) in fusegrad ops."""
    n_dense = len(w.sizes) - 1

    def mlp(p, x, y):
        h = x
        for i in range(n_dense):
            h = h @ p[f"w{i}"] + p[f"b{i}"]
            if i < n_dense - 1:
                h = fg.relu(h)
        return fg.cross_entropy(h, y)

    def ln_mlp(p, x, y):
        h = x
        for i in range(n_dense):
            h = h @ p[f"w{i}"] + p[f"b{i}"]
            if i < n_dense - 1:
                h = fg.gelu(fg.layer_norm(h, p[f"g{i}"], p[f"beta{i}"]), approximate="tanh")
        return fg.cross_entropy(h, y)

    def cnn(p, x, y):
        c = w.cnn
        h = x
        for i in range(len(c["channels"])):
            h = fg.conv2d(h, p[f"conv{i}"], 1, c["padding"], bias=p[f"convb{i}"])
            h = fg.max_pool2d(fg.relu(h), c["pool"])
        h = fg.reshape(h, (w.batch, w.cnn_features()))
        return fg.cross_entropy(h @ p["w"] + p["b"], y)

    def lstm(p, x, y):
        # x: input tokens (steps, batch), time-major (see Fusegrad.setup); y: targets flattened
        T, B = x.shape
        H = w.lstm["hidden"]
        emb = fg.reshape(fg.embedding(x, p["emb"]), (T * B, -1))
        xw = fg.reshape(emb @ p["w_ih"] + (p["b_ih"] + p["b_hh"]), (T, B, 4 * H))

        def cell(state, xw_t):
            h, c = state
            i, f, g, o = fg.split(xw_t + h @ p["w_hh"], 4, axis=-1)
            c = fg.sigmoid(f) * c + fg.sigmoid(i) * fg.tanh(g)
            h = fg.sigmoid(o) * fg.tanh(c)
            return (h, c), h

        zeros = np.zeros((B, H), np.float32)
        _, hs = fg.scan(cell, (zeros, zeros), xw)   # one compiled loop over the time steps
        return fg.cross_entropy(fg.reshape(hs, (T * B, H)) @ p["dec_w"] + p["dec_b"], y)

    return {"mlp": mlp, "ln_mlp": ln_mlp, "cnn": cnn, "lstm": lstm}[w.kind]


class Fusegrad(Contender):
    name = "fusegrad"

    def __init__(self, workload, target="cpu"):
        super().__init__(workload)
        self.target = target

    def setup(self, params, x, y):
        w = self.workload
        opt = fg.optim.SGD(lr=w.lr) if w.optimizer == "sgd" else fg.optim.Adam(lr=w.lr)
        if w.kind == "lstm":  # time-major tokens, flattened targets: a layout chosen once
            x, y = np.ascontiguousarray(x.T), np.ascontiguousarray(y.T).reshape(-1)
        if self.target == "cuda":  # copied to the GPU once, as the other GPU contenders do
            params, x, y = fg.device_put((params, x, y), "cuda")
        self.params, self.x, self.y = params, x, y
        self.train_step = fg.train_step(loss_function(w), opt, target=self.target)

    def step(self):
        return self.train_step(self.params, self.x, self.y)

    def stats(self) -> dict:
        return self.train_step.stats()

    def details(self) -> str:
        s = self.stats()
        parts = [f"kernels {s.get('kernels')}"]
        if s.get("peak_bytes") is not None:
            parts.append(f"peak {s['peak_bytes'] / 2**20:.1f} MiB")
        if s.get("compile_seconds") is not None:
            parts.append(f"stats compile {s['compile_seconds']:.2f} s")
        if "cache_hit" in s:
            parts.append(f"cache_hit {s['cache_hit']}")
        return ", ".join(parts)
