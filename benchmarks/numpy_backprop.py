"""Hand-written NumPy forward + backward + update, buffers preallocated where that is natural.

The MLPs (ReLU), the LayerNorm+GELU MLP, the CNN (im2col convolutions, 2x2 max pooling) and the
LSTM (backpropagation through time, numpy_lstm.py) are written out layer by layer, the way a
person would do backprop by hand in NumPy.
"""
from __future__ import annotations

import numpy as np

from benchmarks.contenders import Contender
from benchmarks.numpy_backprop_common import softmax_xent_grad
from benchmarks.numpy_cnn import NumpyCNN
from benchmarks.numpy_lstm import NumpyLSTM
from benchmarks.numpy_optim import make_optimizer
from benchmarks.workloads import LN_EPS

GELU_K = np.float32(np.sqrt(2.0 / np.pi))
GELU_C = np.float32(0.044715)


class DenseNet:
    """MLP with ReLU, or (layer_norm=True) Linear -> LayerNorm -> GELU(tanh) hidden layers."""

    def __init__(self, params, sizes, batch, layer_norm):
        self.n = len(sizes) - 1
        self.ln = layer_norm
        self.p = params
        f32 = np.float32
        outs = sizes[1:]
        self.z = [np.empty((batch, d), f32) for d in outs]        # pre-activations x@w+b
        self.a = [np.empty((batch, d), f32) for d in outs[:-1]]   # hidden activations
        self.d = [np.empty((batch, d), f32) for d in outs]        # gradients w.r.t. z
        self.mask = [np.empty((batch, d), bool) for d in outs[:-1]]
        if layer_norm:
            self.norm = [np.empty((batch, d), f32) for d in outs[:-1]]   # normalised z
            self.t = [np.empty((batch, d), f32) for d in outs[:-1]]      # tanh of GELU
            self.y = [np.empty((batch, d), f32) for d in outs[:-1]]      # LayerNorm output
            self.rstd = [np.empty((batch, 1), f32) for _ in outs[:-1]]
            self.tmp = [np.empty((batch, d), f32) for d in outs[:-1]]
        self.grads = {k: np.empty_like(v) for k, v in params.items()}

    # ---- the LayerNorm + GELU block ----------------------------------------------------------
    def _ln_gelu_forward(self, i):
        z, n, yv, t, a = self.z[i], self.norm[i], self.y[i], self.t[i], self.a[i]
        np.subtract(z, z.mean(axis=1, keepdims=True), out=n)
        np.multiply(n, n, out=t)
        np.add(t.mean(axis=1, keepdims=True), np.float32(LN_EPS), out=self.rstd[i])
        np.sqrt(self.rstd[i], out=self.rstd[i])
        np.divide(np.float32(1.0), self.rstd[i], out=self.rstd[i])
        n *= self.rstd[i]
        np.multiply(n, self.p[f"g{i}"], out=yv)
        yv += self.p[f"beta{i}"]
        # gelu(y) = 0.5 y (1 + tanh(k (y + c y^3)))
        np.multiply(yv, yv, out=t)
        t *= GELU_C
        t += 1.0
        t *= yv
        t *= GELU_K
        np.tanh(t, out=t)
        np.add(t, 1.0, out=a)
        a *= yv
        a *= 0.5

    def _ln_gelu_backward(self, i, da):
        """da (gradient w.r.t. the GELU output) -> overwritten with the gradient w.r.t. z."""
        yv, t, n, tmp = self.y[i], self.t[i], self.norm[i], self.tmp[i]
        # gelu'(y) = 0.5 (1 + t) + 0.5 y (1 - t^2) k (1 + 3 c y^2)
        np.multiply(yv, yv, out=tmp)
        tmp *= 3 * GELU_C
        tmp += 1.0
        tmp *= GELU_K * 0.5
        tmp *= yv
        np.multiply(t, t, out=yv)          # y is no longer needed: reuse it for 1 - t^2
        np.subtract(1.0, yv, out=yv)
        tmp *= yv
        t += 1.0
        t *= 0.5
        tmp += t
        da *= tmp                          # gradient w.r.t. the LayerNorm output
        np.multiply(da, n, out=tmp)
        tmp.sum(axis=0, out=self.grads[f"g{i}"])
        da.sum(axis=0, out=self.grads[f"beta{i}"])
        da *= self.p[f"g{i}"]              # gradient w.r.t. the normalised value
        np.multiply(da, n, out=tmp)
        proj = tmp.mean(axis=1, keepdims=True)
        da -= da.mean(axis=1, keepdims=True)
        n *= proj
        da -= n
        da *= self.rstd[i]

    # ---- the whole step ------------------------------------------------------------------------
    def loss_and_grads(self, x, y):
        p, g = self.p, self.grads
        h = x
        for i in range(self.n):
            np.matmul(h, p[f"w{i}"], out=self.z[i])
            self.z[i] += p[f"b{i}"]
            if i < self.n - 1:
                if self.ln:
                    self._ln_gelu_forward(i)
                else:
                    np.maximum(self.z[i], 0.0, out=self.a[i])
                h = self.a[i]
        loss = softmax_xent_grad(self.z[-1], y, self.d[-1])
        for i in reversed(range(self.n)):
            d = self.d[i]
            inp = x if i == 0 else self.a[i - 1]
            np.matmul(inp.T, d, out=g[f"w{i}"])
            d.sum(axis=0, out=g[f"b{i}"])
            if i > 0:
                dprev = self.d[i - 1]
                np.matmul(d, p[f"w{i}"].T, out=dprev)
                if self.ln:
                    self._ln_gelu_backward(i - 1, dprev)
                else:
                    np.greater(self.z[i - 1], 0.0, out=self.mask[i - 1])
                    dprev *= self.mask[i - 1]
        return loss


class NumpyBackprop(Contender):
    name = "numpy"

    def setup(self, params, x, y):
        w = self.workload
        self.x, self.y = x, y
        if w.kind == "cnn":
            self.net = NumpyCNN(params, w)
        elif w.kind == "lstm":  # time-major tokens, flattened targets
            self.x, self.y = np.ascontiguousarray(x.T), np.ascontiguousarray(y.T).reshape(-1)
            self.net = NumpyLSTM(params, w)
        else:
            self.net = DenseNet(params, w.sizes, w.batch, layer_norm=w.kind == "ln_mlp")
        self.opt = make_optimizer(w, params)

    def step(self):
        loss = self.net.loss_and_grads(self.x, self.y)
        self.opt.update(self.net.grads)
        return loss

    def details(self) -> str:
        kind = self.workload.kind
        return {"cnn": "im2col convolutions",
                "lstm": "BPTT by hand, input projection of all steps in one GEMM"}.get(kind, "")
