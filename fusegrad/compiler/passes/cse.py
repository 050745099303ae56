"""Common-subexpression elimination: two nodes applying the same op with equal attributes to the
same input Vars compute the same value, so the later one is replaced by the earlier.

Autodiff and the optimizers emit many such duplicates: the same scalar constant at every source
line, Adam's bias corrections (cast the step, pow, sub, sqrt) once per parameter, and products
like `g * x` built by two VJP rules. Every primitive is deterministic (random_uniform included:
same seed and counter, same bits), so any pair may merge; constants compare by value (dtype,
shape and bytes, so 0.0 and -0.0 stay apart). Attribute floats are compared by their bits too
(a pad value of 0.0 is not one of -0.0). Operands of commutative ops are put in a canonical
order first (a + b and b + a merge: IEEE addition and multiplication are commutative bit for
bit); maximum/minimum are left alone since which zero or NaN they return depends on the order.
The surviving node is the first one, so it keeps its own `loc` and `part`. Nodes with an
ordering effect (a collective: every process of a job must make the same calls in the same
order) are never merged: two equal all_reduces are two calls.
"""
from __future__ import annotations

from ...ir import Graph
from ...ir.ops import prims_where
from .rewrite import rewrite

COMMUTATIVE = frozenset(prims_where(commutative=True))  # a set: node_key runs for every node
ORDERED = frozenset(prims_where(ordered=True))


def _strict(value):
    """A key for an attribute value under which 0.0 != -0.0, 1 != 1.0 != True, NaN == NaN."""
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, tuple):
        return ("tuple",) + tuple(_strict(v) for v in value)
    return (type(value).__name__, value)


def node_key(node):
    """What makes two primitive nodes compute the same value."""
    inputs = node.inputs
    if node.op in COMMUTATIVE:
        inputs = tuple(sorted(inputs, key=lambda v: v.uid))
    return node.op, inputs, node.attrs.memo("strict", _strict_attrs)


def _strict_attrs(attrs) -> tuple:
    return tuple((k, _strict(v)) for k, v in attrs.items())


def cse(graph: Graph) -> Graph:
    """Merge nodes that compute the same value (the same Graph object when there are none)."""
    seen = {}

    def rule(node, rw):
        if node.op in ORDERED:
            return None
        key = node_key(node)
        earlier = seen.get(key)
        if earlier is not None:
            return earlier
        seen[key] = node.out
        return None

    return rewrite(graph, rule, "cse")
