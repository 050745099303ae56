"""The floor: only the step's matrix products, through NumPy's BLAS into preallocated outputs.

Operands the real step reads transposed (activations in x.T @ d, weights in d @ w.T, im2col
columns in dz @ cols.T) are .T views here too, so BLAS sees the same transpose flags.
"""
from __future__ import annotations

import numpy as np

from benchmarks.contenders import Contender


def _operand(rng, rows, cols, transposed):
    if transposed:
        return rng.standard_normal((cols, rows), dtype=np.float32).T
    return rng.standard_normal((rows, cols), dtype=np.float32)


class GemmFloor(Contender):
    name = "GEMMs alone"
    is_floor = True

    def setup(self, params, x, y):
        rng = np.random.default_rng(0)
        self.products = [
            (_operand(rng, m, k, ta), _operand(rng, k, n, tb), np.empty((m, n), np.float32))
            for _, m, k, n, ta, tb in self.workload.gemms()
        ]

    def step(self):
        for a, b, out in self.products:
            np.matmul(a, b, out=out)
        return None

    def details(self) -> str:
        w = self.workload
        return f"{len(w.gemms())} GEMMs, {w.gemm_flops() / 1e9:.3f} GFLOP/step"
