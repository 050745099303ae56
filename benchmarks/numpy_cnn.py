"""The CNN by hand in NumPy: im2col convolutions as one 2-D GEMM each, 2x2 max pooling.

Activations are kept channel-major, (C, N, H, W), so each convolution is a single
(O, C*k*k) @ (C*k*k, N*H*W) product with no transpose of its output.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from benchmarks.numpy_backprop_common import softmax_xent_grad


class NumpyCNN:
    def __init__(self, params, workload):
        c = workload.cnn
        self.p, self.k, self.pad, self.pool = params, c["kernel"], c["padding"], c["pool"]
        self.n = n = workload.batch
        self.layers = []
        cin = c["in_channels"]
        f32 = np.float32
        for i, (cout, s) in enumerate(zip(c["channels"], workload.cnn_spatial())):
            if self.k != 2 * self.pad + 1:
                raise ValueError("the NumPy CNN handles 'same' convolutions only")
            sp = s + 2 * self.pad
            so = s // self.pool
            self.layers.append(dict(
                i=i, cin=cin, cout=cout, s=s, so=so,
                xp=np.zeros((cin, n, sp, sp), f32),                    # padded input
                cols=np.empty((cin, self.k, self.k, n, s, s), f32),    # im2col
                z=np.empty((cout, n * s * s), f32),
                r=np.empty((cout, n * s * s), f32),
                pooled=np.empty((cout, n, so, so), f32),
                dxp=np.zeros((cin, n, sp, sp), f32),
                dcols=np.empty((cin * self.k * self.k, n * s * s), f32),
                mask=np.empty((cout, n * s * s), bool),
            ))
            cin = cout
        self.feat = np.empty((n, workload.cnn_features()), f32)
        self.logits = np.empty((n, params["b"].shape[0]), f32)
        self.dlogits = np.empty_like(self.logits)
        self.dfeat = np.empty_like(self.feat)
        self.grads = {k: np.empty_like(v) for k, v in params.items()}

    def _forward_layer(self, L, a):
        """a: (cin, N, s, s) -> L["pooled"] (cout, N, s/2, s/2)."""
        k, pad, s, p = self.k, self.pad, L["s"], self.p
        L["xp"][:, :, pad:pad + s, pad:pad + s] = a
        win = sliding_window_view(L["xp"], (k, k), axis=(2, 3))       # (cin, N, s, s, k, k)
        np.copyto(L["cols"], win.transpose(0, 4, 5, 1, 2, 3))
        cols = L["cols"].reshape(L["cin"] * k * k, -1)
        wm = p[f"conv{L['i']}"].reshape(L["cout"], -1)
        np.matmul(wm, cols, out=L["z"])
        L["z"] += p[f"convb{L['i']}"][:, None]
        np.maximum(L["z"], 0.0, out=L["r"])
        so, q = L["so"], self.pool
        r6 = L["r"].reshape(L["cout"], self.n, so, q, so, q)
        np.max(r6, axis=(3, 5), out=L["pooled"])
        return L["pooled"]

    def _backward_layer(self, L, dpooled, need_input_grad):
        """dpooled (cout, N, so, so) -> gradient w.r.t. the layer's input (cin, N, s, s)."""
        k, pad, s, so, q, n = self.k, self.pad, L["s"], L["so"], self.pool, self.n
        r6 = L["r"].reshape(L["cout"], n, so, q, so, q)
        # gradient to every window position equal to the max; a tie among maxima only happens
        # at 0 (all inputs clipped by the ReLU), where the ReLU's gradient is 0 anyway
        dr = (r6 == L["pooled"][:, :, :, None, :, None]) * dpooled[:, :, :, None, :, None]
        dz = dr.reshape(L["cout"], -1)
        np.greater(L["z"], 0.0, out=L["mask"])
        dz *= L["mask"]
        i = L["i"]
        cols = L["cols"].reshape(L["cin"] * k * k, -1)
        np.matmul(dz, cols.T, out=self.grads[f"conv{i}"].reshape(L["cout"], -1))
        dz.sum(axis=1, out=self.grads[f"convb{i}"])
        if not need_input_grad:
            return None
        wm = self.p[f"conv{i}"].reshape(L["cout"], -1)
        np.matmul(wm.T, dz, out=L["dcols"])
        dcols = L["dcols"].reshape(L["cin"], k, k, n, s, s)
        dxp = L["dxp"]
        dxp.fill(0.0)
        for ki in range(k):           # col2im: add each kernel offset's slice back
            for kj in range(k):
                dxp[:, :, ki:ki + s, kj:kj + s] += dcols[:, ki, kj]
        return dxp[:, :, pad:pad + s, pad:pad + s]

    def loss_and_grads(self, x, y):
        p, g = self.p, self.grads
        a = x.transpose(1, 0, 2, 3)                                     # (C, N, H, W)
        for L in self.layers:
            a = self._forward_layer(L, a)
        c_last = self.layers[-1]["cout"]
        np.copyto(self.feat.reshape(self.n, c_last, *a.shape[2:]), a.transpose(1, 0, 2, 3))
        np.matmul(self.feat, p["w"], out=self.logits)
        self.logits += p["b"]
        loss = softmax_xent_grad(self.logits, y, self.dlogits)
        d = self.dlogits
        np.matmul(self.feat.T, d, out=g["w"])
        d.sum(axis=0, out=g["b"])
        np.matmul(d, p["w"].T, out=self.dfeat)
        da = self.dfeat.reshape(self.n, c_last, *a.shape[2:]).transpose(1, 0, 2, 3)
        for j in reversed(range(len(self.layers))):
            da = self._backward_layer(self.layers[j], da, need_input_grad=j > 0)
        return loss
