"""Prepare an optimized graph for fusion: make every loop node expressible on a 2-D space.

- An operand broadcast that is not a per-row/per-column/scalar pattern (e.g. (3,1,4) into
  (3,5,4)) gets an explicit broadcast_to, which becomes a copy kernel of its own; the
  elementwise node then reads same-shape operands and fuses as usual.
- A reduction over axes that are not one contiguous run becomes a chain of reductions over
  contiguous runs (sum over (0,2) of (N,O,L) = sum over 2, then over 0), so each one reduces
  over leading, trailing or middle axes of its input.
"""
from __future__ import annotations

from ...ir.ops import PRIMITIVES
from .loopspace import FULL, REDUCTIONS, Space, broadcast_map
from .rewrite import rewrite


def _runs(axes):
    """(0, 2, 3) -> [(0,), (2, 3)]: maximal runs of consecutive axes."""
    runs, current = [], [axes[0]]
    for a in axes[1:]:
        if a == current[-1] + 1:
            current.append(a)
        else:
            runs.append(tuple(current))
            current = [a]
    runs.append(tuple(current))
    return runs


def _rule(node, rw):
    prim = PRIMITIVES.get(node.op)
    if prim is None:
        return None
    out = node.outputs[0]
    if prim.elementwise and len(node.inputs) > 1:
        shape = out.shape
        space = Space(tuple(shape), max(len(shape) - 1, 0))
        fixed = [
            v if v.shape == shape or broadcast_map(FULL, v.shape, shape, space) is not None
            else rw.broadcast_to(v, shape)
            for v in node.inputs
        ]
        if any(a is not b for a, b in zip(fixed, node.inputs)):
            return rw.emit(node.op, *fixed, **dict(node.attrs))
    if node.op == "matmul":  # batch broadcasts the GEMM loop cannot index: materialise them
        batch = out.shape[:-2]
        fixed = [v if batch_suffix(v.shape[:-2], batch) else rw.broadcast_to(v, batch + v.shape[-2:])
                 for v in node.inputs]
        if any(a is not b for a, b in zip(fixed, node.inputs)):
            return rw.emit("matmul", *fixed, **dict(node.attrs))
    if node.op in REDUCTIONS and len(_runs(tuple(node.attrs["axes"]))) > 1:
        x = node.inputs[0]
        keep = node.attrs["keepdims"]
        for run in reversed(_runs(tuple(node.attrs["axes"]))):  # last run first: axes stay valid
            x = rw.emit(node.op, x, axes=run, keepdims=True)
        return rw.reshape(x, out.shape) if not keep else x
    return None


def batch_suffix(own, batch) -> bool:
    """Do batch dims `own` broadcast to `batch` as a suffix, so the GEMM loop can index the
    operand as i % size? ((3,) into (2, 3): yes; (2, 1) into (2, 3): no.)"""
    own = tuple(own)
    while own and own[0] == 1:
        own = own[1:]
    return not own or tuple(batch[len(batch) - len(own):]) == own


def prepare_for_fusion(graph):
    """The graph with explicit broadcasts and single-run reductions (see module docstring)."""
    return rewrite(graph, _rule, name="prepare")
