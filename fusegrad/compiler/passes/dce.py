"""Dead-code elimination: drop every node none of whose outputs reaches a graph output.

Rewrites leave the nodes they bypassed behind (a transpose folded into a matmul flag, a
multiplication by one); this pass removes them. Every primitive is pure (random_uniform is a
function of its seed and counter), so a node nobody reads can always go, except a node with an
ordering effect (a collective: the other processes wait for this one's call). Graph inputs stay,
used or not: they are the step's calling convention.
"""
from __future__ import annotations

from ...ir import Graph, Node
from ...ir.ops import prims_where

ORDERED = frozenset(prims_where(ordered=True))


def live_nodes(graph: Graph) -> list[Node]:
    """The nodes of `graph` that contribute to an output, in graph order."""
    live_vars = set(graph.outputs)
    keep = []
    for node in reversed(graph.nodes):
        if node.op in ORDERED or any(v in live_vars for v in node.outputs):
            keep.append(node)
            live_vars.update(node.inputs)
    keep.reverse()
    return keep


def dce(graph: Graph) -> Graph:
    """`graph` without its dead nodes (the same Graph object when there are none)."""
    keep = live_nodes(graph)
    if len(keep) == len(graph.nodes):
        return graph
    return graph.replace(nodes=tuple(keep))
