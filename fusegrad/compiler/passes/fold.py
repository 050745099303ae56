"""Constant folding: a node whose inputs are all known at compile time is evaluated now, with the
reference interpreter's own implementation (fusegrad.ir.eval_primitive, so the value is exactly
what the interpreter would compute at run time), and replaced by a `constant` node.

Known at compile time: outputs of `constant` nodes and of `iota` nodes. Only small results are
folded (MAX_FOLD_ELEMENTS): a large constant would be baked into the graph and the generated
module, where an iota, a broadcast or an elementwise kernel costs nothing to recompute. Source
nodes themselves (constant, iota) are left as they are, `broadcast_to` of a constant stays a
broadcast (it is a free view), and random_uniform is never folded: its bits are the backend's
job, and the interpreter's float64 mode draws different (wider) numbers than float32. (These
are the primitives whose rows say foldable=False, ir/ops.py.)

Broadcast constants fold too, without materialising the broadcast: an elementwise op whose
operands are constants or broadcast_to(constant) is computed on the small constants and the
result broadcast, e.g. neg(broadcast_to(c, (4, 3))) -> broadcast_to(-c, (4, 3)).

Note: in the interpreter's float64 mode (`interpret(..., float64=True)`) a folded float32
constant is the float32 value, while the unfolded graph would have computed it in float64; in
the default mode the folded graph computes bit-identical results.
"""
from __future__ import annotations

import numpy as np

from ...ir import Graph, PRIMITIVES, TensorType, eval_primitive
from .rewrite import rewrite

MAX_FOLD_ELEMENTS = 64  # largest result folded into a constant
MAX_EVAL_ELEMENTS = 1 << 16  # largest iota input evaluated to fold something small from it


def _known_value(rw, v):
    """The compile-time value of `v` (constant or small-enough iota), else None."""
    n = rw.producer(v)
    if n is None:
        return None
    if n.op == "constant":
        return n.attrs["value"].array
    if n.op == "iota" and n.out.type.size <= MAX_EVAL_ELEMENTS:
        return eval_primitive("iota", [], n.attrs, n.out.type)
    return None


def _fold_node(node, rw):
    values = [_known_value(rw, v) for v in node.inputs]
    if any(x is None for x in values) or node.out.type.size > MAX_FOLD_ELEMENTS:
        return None
    return rw.const(eval_primitive(node.op, values, node.attrs, node.out.type), node.out.dtype)


def _fold_broadcast_elementwise(node, rw):
    """op(broadcast_to(c1, S), c2, ...) -> broadcast_to(op(c1, c2, ...), out shape)."""
    if not PRIMITIVES[node.op].elementwise:
        return None
    small, saw_broadcast = [], False
    for v in node.inputs:
        n = rw.producer(v)
        if n is not None and n.op == "broadcast_to":
            n, saw_broadcast = rw.producer(n.inputs[0]), True
        if n is None or n.op != "constant":
            return None
        small.append(n.attrs["value"].array)
    if not saw_broadcast:
        return None
    shape = np.broadcast_shapes(*(a.shape for a in small))
    if int(np.prod(shape, dtype=np.int64)) > MAX_FOLD_ELEMENTS:
        return None
    value = eval_primitive(node.op, small, node.attrs, TensorType(node.out.dtype, shape))
    return rw.broadcast_to(rw.const(value, node.out.dtype), node.out.shape)


def fold_constants(graph: Graph) -> Graph:
    """Evaluate small compile-time-known nodes into constants (the same Graph if none)."""

    def rule(node, rw):
        if not PRIMITIVES[node.op].foldable or not node.inputs:
            return None
        return _fold_node(node, rw) or _fold_broadcast_elementwise(node, rw)

    return rewrite(graph, rule, "fold")
