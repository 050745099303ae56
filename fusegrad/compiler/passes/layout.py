"""Layout: transposes around a matmul become its transpose flags, so `h.T @ g` never materialises
`h.T` (BLAS reads either layout at the same speed; a transpose is a full copy).

Two rewrites, for transposes that swap the last two axes and keep any batch axes in place:
  * operand:  matmul(transpose(a), b, ta, tb) -> matmul(a, b, not ta, tb), and likewise for b.
  * result:   transpose(matmul(a, b, ta, tb)) -> matmul(b, a, not tb, not ta), since
              (op(A) op(B))^T = op(B)^T op(A)^T; done only when the transpose is the matmul's
              only reader (otherwise the product would be computed twice).
The transposes they bypass are left for dce. The result rewrite runs first, so a transposed
product whose operands are transposes loses all of them in one pass.
"""
from __future__ import annotations

from ...ir import Graph
from .dce import live_nodes
from .rewrite import rewrite


def swaps_last_two(node) -> bool:
    """A transpose node exchanging the last two axes and nothing else."""
    if node is None or node.op != "transpose":
        return False
    perm = tuple(node.attrs["perm"])
    n = len(perm)
    return n >= 2 and perm == tuple(range(n - 2)) + (n - 1, n - 2)


def _reader_counts(graph: Graph) -> dict:
    """How many live nodes (and graph outputs) read each Var."""
    counts: dict = {}
    for node in live_nodes(graph):
        for v in node.inputs:
            counts[v] = counts.get(v, 0) + 1
    for v in graph.outputs:
        counts[v] = counts.get(v, 0) + 1
    return counts


def _fold_result_transposes(graph: Graph) -> Graph:
    readers = _reader_counts(graph)

    def rule(node, rw):
        if not swaps_last_two(node):
            return None
        mm = rw.producer(node.inputs[0])
        if mm is None or mm.op != "matmul" or readers.get(mm.out, 0) != 1:
            return None
        a, b = mm.inputs
        return rw.emit("matmul", b, a, transpose_a=not mm.attrs["transpose_b"],
                       transpose_b=not mm.attrs["transpose_a"])

    return rewrite(graph, rule, "layout")


def _fold_operand_transposes(graph: Graph) -> Graph:
    def rule(node, rw):
        if node.op != "matmul":
            return None
        a, b = node.inputs
        ta, tb = node.attrs["transpose_a"], node.attrs["transpose_b"]
        pa, pb = rw.producer(a), rw.producer(b)
        changed = False
        if swaps_last_two(pa):
            a, ta, changed = pa.inputs[0], not ta, True
        if swaps_last_two(pb):
            b, tb, changed = pb.inputs[0], not tb, True
        return rw.emit("matmul", a, b, transpose_a=ta, transpose_b=tb) if changed else None

    return rewrite(graph, rule, "layout")


def layout(graph: Graph) -> Graph:
    """Fold last-two-axes transposes into matmul flags (the same Graph object when none)."""
    return _fold_operand_transposes(_fold_result_transposes(graph))
