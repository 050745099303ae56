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


# ---- remat="mincut": what the backward part reads from the forward part, chosen by a min cut ---
#
# The idea is the one of functorch's min-cut partitioner (Chen et al.'s checkpointing as a graph
# cut): every forward value the backward part needs is either saved or recomputed from saved
# values through cheap elementwise nodes; the cheapest set to save is a minimum s-t cut in a
# flow network where saving value v costs its bytes. Here it also cuts memory traffic: a loop
# kernel that recomputes GELU's pieces from the LayerNorm output reads one array instead of
# seven. Values a non-loop backward node reads (a GEMM's operand) are always saved: recomputing
# them would write them once more, not save anything.

_SOURCE, _SINK = "source", "sink"


def _recomputable(node) -> bool:
    return PRIMITIVES[node.op].recomputable


def saved_by_min_cut(graph) -> set:
    """The forward values to keep for the backward part (see above); the others it reads are
    recomputed from these, graph inputs and constants."""
    import networkx as nx

    from .loopspace import is_loop_op

    forward = {v for n in graph.nodes if n.part == "forward" and n.op != "constant"
               for v in n.outputs}
    net = nx.DiGraph()
    for n in graph.nodes:
        if n.part != "forward" or n.op == "constant":
            continue
        for v in n.outputs:
            net.add_edge((v, "in"), (v, "out"), capacity=v.type.nbytes)
            if not _recomputable(n):
                net.add_edge(_SOURCE, (v, "in"))  # no capacity: infinite
            for u in n.inputs:
                if u in forward:
                    net.add_edge((u, "out"), (v, "in"))
    for n in graph.nodes:
        if n.part == "forward":
            continue
        for u in n.inputs:
            if u in forward:
                net.add_edge((u, "out"), _SINK)
                if not is_loop_op(n):  # a GEMM's (or gather's...) operand is saved
                    net.add_edge(_SOURCE, (u, "in"))
    if _SINK not in net or _SOURCE not in net:
        return {v for v in forward if (v, "out") in net and net.has_edge((v, "out"), _SINK)}
    _, (reachable, _) = nx.minimum_cut(net, _SOURCE, _SINK)
    return {v for v in forward if (v, "in") in reachable and (v, "out") not in reachable}


def remat_min_cut(graph):
    """`graph` with the backward part recomputing every forward value it reads that is not in
    saved_by_min_cut(graph); forward nodes only the backward part read are then dropped."""
    from .dce import dce

    saved = saved_by_min_cut(graph)
    producer = {v: n for n in graph.nodes for v in n.outputs}
    clones: dict = {}
    nodes: list = []

    def value_for_backward(v, part, pending):
        p = producer.get(v)
        if p is None or p.part != "forward" or p.op == "constant" or v in saved:
            return v
        if v not in clones:
            assert _recomputable(p) and len(p.outputs) == 1, f"{p.op} cannot be recomputed"
            inputs = tuple(value_for_backward(u, part, pending) for u in p.inputs)
            clone = Var(v.type, v.hint)
            pending.append(Node(p.op, inputs, (clone,), p.attrs, p.loc, part))
            clones[v] = clone
        return clones[v]

    for n in graph.nodes:
        if n.part != "forward":
            pending: list = []
            inputs = tuple(value_for_backward(v, n.part, pending) for v in n.inputs)
            nodes += pending
            if inputs != n.inputs:
                n = Node(n.op, inputs, n.outputs, n.attrs, n.loc, n.part, n.region)
        nodes.append(n)
    if not clones:
        return graph
    return dce(graph.replace(nodes=tuple(nodes)))


def recomputed_nodes(graph) -> set:
    """Nodes outside the forward part that recompute a forward node (possibly from other such
    copies): fusion keeps them out of forward kernels, which would save them again."""
    forward = {(n.op, n.inputs, n.attrs): n.out for n in graph.nodes
               if n.part == "forward" and len(n.outputs) == 1}
    same: dict = {}  # a copy's output -> the forward value it recomputes
    found = set()
    for n in graph.nodes:
        if n.part == "forward" or len(n.outputs) != 1:
            continue
        key = (n.op, tuple(same.get(v, v) for v in n.inputs), n.attrs)
        if key in forward:
            same[n.out] = forward[key]
            found.add(n)
    return found
