"""Emitter: builds well-typed IR nodes directly on Vars (no tracers), for compiler-made graphs.

Autodiff and the optimizers write their graphs with it. Scalars given to the arithmetic helpers
become constants of the other operand's dtype, so rules read like the maths they implement.
"""
from __future__ import annotations

import numpy as np

from ..ir import Attrs, GraphBuilder, Var
from ..ir.types import broadcast_axes


class Emitter:
    def __init__(self, builder: GraphBuilder, loc: str | None = None, part: str | None = None):
        self.builder = builder
        self.loc = loc
        self.part = part
        self._consts: dict = {}

    def __call__(self, op, *inputs, **attrs) -> Var:
        saved = self.builder.part
        if self.part is not None:
            self.builder.part = self.part
        try:
            return self.builder.emit(op, inputs, Attrs(attrs), loc=self.loc)
        finally:
            self.builder.part = saved

    def node(self, op, inputs, attrs, region=None) -> tuple:
        """A primitive with several outputs or a region (scan): its output Vars."""
        saved = self.builder.part
        if self.part is not None:
            self.builder.part = self.part
        try:
            return self.builder.emit_node(op, inputs, attrs, loc=self.loc, region=region)
        finally:
            self.builder.part = saved

    # ---- constants ----
    def const(self, value, dtype) -> Var:
        """A scalar (or small array) constant; identical constants are emitted once per loc."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes(), self.loc, self.part)
        var = self._consts.get(key)
        if var is None:
            var = self("constant", value=arr)
            self._consts[key] = var
        return var

    def zeros(self, type) -> Var:
        return self("broadcast_to", self.const(0, type.dtype), shape=type.shape)

    def _v(self, x, like: Var) -> Var:
        return x if isinstance(x, Var) else self.const(x, like.dtype)

    # ---- arithmetic that reads like maths ----
    def add(self, a, b):
        a, b = self._pair(a, b)
        return self("add", a, b)

    def sub(self, a, b):
        a, b = self._pair(a, b)
        return self("sub", a, b)

    def mul(self, a, b):
        a, b = self._pair(a, b)
        return self("mul", a, b)

    def div(self, a, b):
        a, b = self._pair(a, b)
        return self("div", a, b)

    def neg(self, a):
        return self("neg", a)

    def select(self, c, a, b):
        like = a if isinstance(a, Var) else b
        return self("select", c, self._v(a, like), self._v(b, like))

    def _pair(self, a, b):
        like = a if isinstance(a, Var) else b
        return self._v(a, like), self._v(b, like)

    # ---- shapes ----
    def reshape(self, x, shape):
        shape = tuple(shape)
        return x if x.shape == shape else self("reshape", x, shape=shape)

    def broadcast_to(self, x, shape):
        shape = tuple(shape)
        return x if x.shape == shape else self("broadcast_to", x, shape=shape)

    def sum(self, x, axes, keepdims=False):
        axes = tuple(sorted(axes))
        if not axes:
            return x
        return self("sum", x, axes=axes, keepdims=keepdims)

    def sum_to(self, x, shape):
        """Undo NumPy broadcasting: sum `x` down to `shape` (the central un-broadcast)."""
        shape = tuple(shape)
        if x.shape == shape:
            return x
        leading, stretched = broadcast_axes(shape, x.shape)
        summed = self.sum(x, leading + stretched, keepdims=False)
        return self.reshape(summed, shape)

    def expand_reduced(self, g, in_shape, axes, keepdims):
        """Broadcast a reduction's cotangent back over the reduced axes."""
        if not keepdims:
            kept = tuple(1 if i in axes else d for i, d in enumerate(in_shape))
            g = self.reshape(g, kept)
        return self.broadcast_to(g, in_shape)
