"""The LSTM language model by hand in NumPy: forward, backpropagation through time, into
preallocated buffers (workloads.py describes the model).

Time-major: the tokens are read as (steps, batch). The input projection of every time step is
one product before the recurrence (as nn.LSTM does on the CPU); each step then adds h @ w_hh
and applies the gates. The backward pass walks the steps in reverse, collecting the gradients
w.r.t. the gate pre-activations of every step, so w_ih's, w_hh's and the embedding's gradients
are each one product (or scatter-add) over all steps.
"""
from __future__ import annotations

import numpy as np

from benchmarks.numpy_backprop_common import softmax_xent_grad


def _sigmoid(x, out):
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)


class NumpyLSTM:
    def __init__(self, params, workload):
        L = workload.lstm
        self.T, self.B, self.H, self.E, self.V = (L["steps"], workload.batch, L["hidden"],
                                                  L["emb"], L["vocab"])
        T, B, H, E, V = self.T, self.B, self.H, self.E, self.V
        f32 = np.float32
        self.p = params
        self.x = np.empty((T, B, E), f32)             # embedded inputs
        self.acts = np.empty((T, B, 4 * H), f32)       # gates: pre-activations, then i f g o
        self.hs = np.zeros((T + 1, B, H), f32)         # hs[0] = h0 = 0, hs[t + 1] = h_t
        self.cs = np.zeros((T + 1, B, H), f32)         # cs[0] = c0 = 0
        self.tc = np.empty((T, B, H), f32)             # tanh(c_t)
        self.bias = np.empty(4 * H, f32)
        self.hw = np.empty((B, 4 * H), f32)            # h_{t-1} @ w_hh
        self.logits = np.empty((T * B, V), f32)
        self.dlogits = np.empty((T * B, V), f32)
        self.dhs = np.empty((T, B, H), f32)            # d loss / d h_t through the decoder
        self.dgates = np.empty((T, B, 4 * H), f32)     # d loss / d gate pre-activations
        self.dx = np.empty((T * B, E), f32)
        self.dh = np.empty((B, H), f32)                # carried back from step t to t - 1
        self.dc = np.empty((B, H), f32)
        self.tmp = np.empty((B, H), f32)
        self.tmp2 = np.empty((B, H), f32)
        self.grads = {k: np.empty_like(v) for k, v in params.items()}

    def loss_and_grads(self, ids, targets):
        """ids (steps, batch) tokens, targets (steps * batch,), time-major."""
        p, g = self.p, self.grads
        T, B, H = self.T, self.B, self.H
        x, acts, hs, cs, tc = self.x, self.acts, self.hs, self.cs, self.tc
        # ---- forward ----
        np.take(p["emb"], ids, axis=0, out=x)
        np.add(p["b_ih"], p["b_hh"], out=self.bias)
        acts2 = acts.reshape(T * B, 4 * H)
        np.matmul(x.reshape(T * B, self.E), p["w_ih"], out=acts2)
        acts2 += self.bias
        for t in range(T):
            a = acts[t]
            if t > 0:  # h0 = 0
                np.matmul(hs[t], p["w_hh"], out=self.hw)
                a += self.hw
            _sigmoid(a[:, :2 * H], a[:, :2 * H])           # i, f
            np.tanh(a[:, 2 * H:3 * H], out=a[:, 2 * H:3 * H])   # g
            _sigmoid(a[:, 3 * H:], a[:, 3 * H:])           # o
            i, f, gg, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            np.multiply(f, cs[t], out=cs[t + 1])
            np.multiply(i, gg, out=self.tmp)
            cs[t + 1] += self.tmp
            np.tanh(cs[t + 1], out=tc[t])
            np.multiply(o, tc[t], out=hs[t + 1])
        h_all = hs[1:].reshape(T * B, H)
        np.matmul(h_all, p["dec_w"], out=self.logits)
        self.logits += p["dec_b"]
        loss = softmax_xent_grad(self.logits, targets, self.dlogits)
        # ---- backward ----
        dl = self.dlogits
        np.matmul(h_all.T, dl, out=g["dec_w"])
        dl.sum(axis=0, out=g["dec_b"])
        np.matmul(dl, p["dec_w"].T, out=self.dhs.reshape(T * B, H))
        dh, dc, tmp, tmp2 = self.dh, self.dc, self.tmp, self.tmp2
        dh.fill(0.0)
        dc.fill(0.0)
        for t in reversed(range(T)):
            a, d = acts[t], self.dgates[t]
            i, f, gg, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            di, df, dg, do = d[:, :H], d[:, H:2 * H], d[:, 2 * H:3 * H], d[:, 3 * H:]
            dh += self.dhs[t]
            # do = dh * tanh(c) * o (1 - o)
            np.multiply(dh, tc[t], out=do)
            np.subtract(1.0, o, out=tmp)
            tmp *= o
            do *= tmp
            # dc += dh * o * (1 - tanh(c)^2)
            np.multiply(tc[t], tc[t], out=tmp)
            np.subtract(1.0, tmp, out=tmp)
            tmp *= o
            tmp *= dh
            dc += tmp
            # di = dc * g * i (1 - i)
            np.subtract(1.0, i, out=tmp)
            tmp *= i
            np.multiply(dc, gg, out=di)
            di *= tmp
            # dg = dc * i * (1 - g^2)
            np.multiply(gg, gg, out=tmp)
            np.subtract(1.0, tmp, out=tmp)
            tmp *= i
            np.multiply(dc, tmp, out=dg)
            # df = dc * c_{t-1} * f (1 - f)
            np.subtract(1.0, f, out=tmp)
            tmp *= f
            np.multiply(dc, cs[t], out=df)
            df *= tmp
            # carried to step t - 1: dc * f and dgates @ w_hh.T
            if t > 0:
                dc *= f
                np.matmul(d, p["w_hh"].T, out=tmp2)
                dh, tmp2 = tmp2, dh
        dg_all = self.dgates.reshape(T * B, 4 * H)
        np.matmul(hs[:-1].reshape(T * B, H).T, dg_all, out=g["w_hh"])
        np.matmul(x.reshape(T * B, self.E).T, dg_all, out=g["w_ih"])
        dg_all.sum(axis=0, out=g["b_ih"])
        g["b_hh"][...] = g["b_ih"]
        np.matmul(dg_all, p["w_ih"].T, out=self.dx)
        g["emb"].fill(0.0)
        np.add.at(g["emb"], ids.reshape(-1), self.dx)
        return loss
