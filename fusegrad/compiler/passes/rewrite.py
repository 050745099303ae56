"""The one rebuild loop every rewriting pass shares: walk a Graph in order, substitute Vars, let
a rule keep a node or replace its output by another Var, and build a new Graph.

    def rule(node, rw):          # node's inputs are already substituted
        if node.op == "neg" and rw.op_of(node.inputs[0]) == "neg":
            return rw.producer(node.inputs[0]).inputs[0]      # neg(neg(x)) -> x
        return None                                           # keep the node

Nodes a rule creates with `rw.emit` inherit the `loc` and `part` of the node being rewritten, so
dumps and generated code still point at the user's line. Graph inputs, output names and aliases
are carried over untouched; a pass that changes nothing returns the very same Graph object, which
is how the pass manager detects a fixed point.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ...ir import Attrs, Graph, Node, PRIMITIVES, Var, infer_type


class RewriteError(AssertionError):
    """A rule replaced a value by one of another type: a bug in that rule."""


class Rewriter:
    """State of one rebuild: the substitution map and the new node list being built."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.subst: dict[Var, Var] = {}
        self.nodes: list[Node] = []
        self._producer: dict[Var, Node] = {}
        self.node: Node | None = None  # the node being rewritten; new nodes inherit loc/part

    # ---- reading the new graph ----
    def __getitem__(self, v: Var) -> Var:
        return self.subst.get(v, v)

    def producer(self, v: Var) -> Node | None:
        """The node of the new graph defining `v` (None for graph inputs)."""
        return self._producer.get(v)

    def op_of(self, v: Var) -> str | None:
        n = self._producer.get(v)
        return n.op if n is not None else None

    def const_value(self, v: Var) -> np.ndarray | None:
        """The array of a `constant` node's output, else None."""
        n = self._producer.get(v)
        return n.attrs["value"].array if n is not None and n.op == "constant" else None

    def splat(self, v: Var):
        """The single value every element of `v` has, if `v` is a constant (possibly reshaped or
        broadcast) whose elements are all equal; else None. A NumPy scalar of v's dtype."""
        n = self._producer.get(v)
        while n is not None and PRIMITIVES[n.op].pass_through:  # they make no new values
            n = self._producer.get(n.inputs[0])
        if n is None or n.op != "constant":
            return None
        a = n.attrs["value"].array
        if a.size == 0:
            return None
        first = a.reshape(-1)[0]
        if a.size > 1 and not np.array_equal(a, np.full_like(a, first), equal_nan=False):
            return None
        return first

    # ---- building the new graph ----
    def emit(self, op: str, *inputs: Var, **attrs) -> Var:
        """Append a new node (typed by the op's shape rule) at the current position."""
        attrs = Attrs(attrs)
        out = Var(infer_type(op, [v.type for v in inputs], attrs))
        loc, part = (self.node.loc, self.node.part) if self.node is not None else (None, "forward")
        self.append(Node(op, tuple(inputs), (out,), attrs, loc, part))
        return out

    def const(self, value, dtype: str) -> Var:
        return self.emit("constant", value=np.asarray(value, dtype=dtype))

    def reshape(self, x: Var, shape) -> Var:
        shape = tuple(shape)
        return x if x.shape == shape else self.emit("reshape", x, shape=shape)

    def broadcast_to(self, x: Var, shape) -> Var:
        shape = tuple(shape)
        return x if x.shape == shape else self.emit("broadcast_to", x, shape=shape)

    def append(self, node: Node) -> None:
        self.nodes.append(node)
        for v in node.outputs:
            self._producer[v] = node

    def substituted(self, node: Node) -> Node:
        """`node` with its inputs substituted (the same object when none changed)."""
        get = self.subst.get
        inputs = tuple([get(v, v) for v in node.inputs])
        if inputs == node.inputs:  # Vars compare by identity
            return node
        return Node(node.op, inputs, node.outputs, node.attrs, node.loc, node.part, node.region)

    def finish(self) -> Graph:
        outputs = tuple(self[v] for v in self.graph.outputs)
        g = self.graph
        if (len(self.nodes) == len(g.nodes) and all(a is b for a, b in zip(self.nodes, g.nodes))
                and all(a is b for a, b in zip(outputs, g.outputs))):
            return g
        return g.replace(nodes=tuple(self.nodes), outputs=outputs)


Rule = Callable[[Node, Rewriter], "Var | None"]


def rewrite(graph: Graph, rule: Rule, name: str = "rewrite") -> Graph:
    """Rebuild `graph`, asking `rule(node, rw)` about every primitive node (inputs substituted).

    The rule returns None to keep the node, or a Var of the same type that replaces the node's
    output everywhere after it (the rule may `rw.emit` the nodes computing that Var first).
    Kernel nodes (fused regions) are kept as they are, with their inputs substituted.
    """
    rw = Rewriter(graph)
    for old in graph.nodes:
        node = rw.substituted(old)
        rw.node = node
        mark = len(rw.nodes)
        replacement = rule(node, rw) if node.region is None else None
        if replacement is None or replacement is node.out:
            del rw.nodes[mark:]  # whatever a rule built before giving up
            rw.append(node)
            continue
        if replacement.type != node.out.type:
            raise RewriteError(f"{name}: replaced {node.op} of type {node.out.type} by a value of "
                               f"type {replacement.type}")
        rw.subst[node.out] = replacement
    rw.node = None
    return rw.finish()
