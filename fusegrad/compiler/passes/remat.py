"""Rematerialisation ("cheap"): recompute elementwise activations in the backward part instead
of keeping them alive from the forward part, where that shortens what must be saved.

A forward value read by the backward part is recomputed there when it is produced by one
elementwise node whose operands the backward part reads anyway (or that are graph inputs,
constants or scalars): the clone adds no saved value, and the original then dies at the end of
its forward uses. A ReLU output h = max(z, 0), kept only for dW = h^T g while z is kept for the
ReLU mask, is the typical case.
"""
from __future__ import annotations

from ...ir import Node, Var
from ...ir.ops import PRIMITIVES


def remat_cheap(graph):
    producer = {v: n for n in graph.nodes for v in n.outputs}
    backward_reads = {v for n in graph.nodes if n.part != "forward" for v in n.inputs}
    inputs = set(graph.inputs)

    def available(v):
        p = producer.get(v)
        return (v in inputs or v.type.size == 1 or v in backward_reads
                or (p is not None and p.op == "constant"))

    candidates = {
        v for v in backward_reads
        if (p := producer.get(v)) is not None and p.part == "forward"
        and PRIMITIVES[p.op].elementwise and all(available(u) for u in p.inputs)
        and not all(u in inputs or u.type.size == 1 for u in p.inputs)  # worth a kernel read
    }
    if not candidates:
        return graph
    clones: dict = {}
    nodes = []
    for n in graph.nodes:
        if n.part != "forward":
            for v in n.inputs:
                if v in candidates and v not in clones:
                    p = producer[v]
                    clone = Var(v.type, v.hint)
                    nodes.append(Node(p.op, p.inputs, (clone,), p.attrs, p.loc, n.part))
                    clones[v] = clone
            n = Node(n.op, tuple(clones.get(v, v) for v in n.inputs), n.outputs, n.attrs,
                     n.loc, n.part, n.region)
        nodes.append(n)
    return graph.replace(nodes=tuple(nodes))
