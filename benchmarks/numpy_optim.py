"""SGD (no momentum) and Adam (torch.optim's form) as in-place NumPy updates."""
from __future__ import annotations

import math

import numpy as np

from benchmarks.workloads import ADAM_BETAS, ADAM_EPS


class SGD:
    def __init__(self, params, lr):
        self.params, self.lr = params, np.float32(lr)
        self.tmp = {k: np.empty_like(v) for k, v in params.items()}

    def update(self, grads):
        for k, p in self.params.items():
            np.multiply(grads[k], self.lr, out=self.tmp[k])
            p -= self.tmp[k]


class Adam:
    def __init__(self, params, lr, betas=ADAM_BETAS, eps=ADAM_EPS):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.tmp = {k: np.empty_like(v) for k, v in params.items()}
        self.t = 0

    def update(self, grads):
        b1, b2 = self.betas
        self.t += 1
        # bias corrections in Python floats, as torch.optim.Adam computes them
        step_size = np.float32(self.lr / (1 - b1 ** self.t))
        bias2_sqrt = np.float32(math.sqrt(1 - b2 ** self.t))
        for k, p in self.params.items():
            g, m, v, tmp = grads[k], self.m[k], self.v[k], self.tmp[k]
            m *= np.float32(b1)
            np.multiply(g, np.float32(1 - b1), out=tmp)
            m += tmp
            v *= np.float32(b2)
            np.multiply(g, g, out=tmp)
            tmp *= np.float32(1 - b2)
            v += tmp
            np.sqrt(v, out=tmp)
            tmp /= bias2_sqrt
            tmp += np.float32(self.eps)
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp


def make_optimizer(workload, params):
    if workload.optimizer == "sgd":
        return SGD(params, workload.lr)
    return Adam(params, workload.lr)
