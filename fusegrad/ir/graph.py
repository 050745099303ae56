"""Var, Node and Graph: the typed SSA IR, and GraphBuilder that creates it.

A Graph is an ordered (topological) list of Nodes. Each Node applies one primitive to input Vars
and defines output Vars (one for primitives; several for a fused `kernel` node, whose `region` is a
Graph of its own). Vars are compared by identity. Everything is immutable once built: passes
build new Graphs.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from .attrs import Attrs
from .ops import infer_type
from .types import TensorType

# Input roles: what a graph input is to the runtime (compiler/step.py lays out a step graph's
# inputs by role).
ROLES = ("param", "batch", "state", "hyper", "const")
# Parts of a whole-step graph, in order; the printer marks where each begins.
PARTS = ("forward", "backward", "update")

_ids = itertools.count()


class Var:
    """One SSA value. `hint` is a readable name used by the printer where it helps."""

    __slots__ = ("type", "hint", "uid")

    def __init__(self, type: TensorType, hint: str = ""):
        self.type = type
        self.hint = hint
        self.uid = next(_ids)

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype

    def __repr__(self):
        return f"Var({self.type}{', ' + self.hint if self.hint else ''})"


@dataclass(frozen=True, eq=False)
class Node:
    op: str
    inputs: tuple[Var, ...]
    outputs: tuple[Var, ...]
    attrs: Attrs = field(default_factory=Attrs)
    loc: str | None = None  # the user's file:line
    part: str = "forward"
    region: "Graph | None" = None  # body of a fused kernel node, or of a scan (its loop)

    @property
    def out(self) -> Var:
        """The single output of a primitive node."""
        (v,) = self.outputs
        return v


@dataclass(frozen=True, eq=False)
class Graph:
    inputs: tuple[Var, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[Var, ...]
    name: str = "graph"
    input_names: tuple[str, ...] = ()
    input_roles: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    aliases: tuple[tuple[int, int], ...] = ()  # (output index, input index it replaces)

    def __post_init__(self):
        n_in, n_out = len(self.inputs), len(self.outputs)
        if not self.input_names:
            object.__setattr__(self, "input_names", tuple(f"in{i}" for i in range(n_in)))
        if not self.input_roles:
            object.__setattr__(self, "input_roles", ("batch",) * n_in)
        if not self.output_names:
            object.__setattr__(self, "output_names", tuple(f"out{i}" for i in range(n_out)))
        assert len(self.input_names) == len(self.input_roles) == n_in
        assert len(self.output_names) == n_out
        for role in self.input_roles:
            assert role in ROLES, role

    def producers(self) -> dict[Var, Node]:
        return {v: n for n in self.nodes for v in n.outputs}

    def users(self) -> dict[Var, list[Node]]:
        out: dict[Var, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                out.setdefault(v, []).append(n)
        return out

    def replace(self, **changes) -> "Graph":
        fields = dict(
            inputs=self.inputs, nodes=self.nodes, outputs=self.outputs, name=self.name,
            input_names=self.input_names, input_roles=self.input_roles,
            output_names=self.output_names, aliases=self.aliases,
        )
        fields.update(changes)
        return Graph(**fields)

    def count(self, op: str) -> int:
        return sum(1 for n in self.nodes if n.op == op)

    def __str__(self):
        from .printer import format_graph

        return format_graph(self)

    def to_networkx(self):
        from .export import to_networkx

        return to_networkx(self)

    def to_dot(self) -> str:
        from .export import to_dot

        return to_dot(self)


class GraphBuilder:
    """Appends typed nodes; `emit` runs the primitive's shape rule so every node is well typed."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.inputs: list[Var] = []
        self.input_names: list[str] = []
        self.input_roles: list[str] = []
        self.nodes: list[Node] = []
        self.part = "forward"

    def add_input(self, type: TensorType, name: str, role: str = "batch") -> Var:
        v = Var(type, name)
        self.inputs.append(v)
        self.input_names.append(name)
        self.input_roles.append(role)
        return v

    def emit(self, op: str, inputs=(), attrs=None, loc=None) -> Var:
        attrs = attrs if isinstance(attrs, Attrs) else Attrs(attrs or {})
        inputs = tuple(inputs)
        out_type = infer_type(op, [v.type for v in inputs], attrs)
        out = Var(out_type)
        self.nodes.append(Node(op, inputs, (out,), attrs, loc, self.part))
        return out

    def emit_node(self, op: str, inputs=(), attrs=None, loc=None, region=None) -> tuple:
        """A primitive with several outputs, or a region (scan); returns its output Vars."""
        attrs = attrs if isinstance(attrs, Attrs) else Attrs(attrs or {})
        inputs = tuple(inputs)
        types = infer_type(op, [v.type for v in inputs], attrs)
        outs = tuple(Var(t) for t in (types if isinstance(types, tuple) else (types,)))
        self.nodes.append(Node(op, inputs, outs, attrs, loc, self.part, region))
        return outs

    def append(self, node: Node) -> None:
        self.nodes.append(node)

    def build(self, outputs, output_names=(), aliases=()) -> Graph:
        return Graph(
            inputs=tuple(self.inputs), nodes=tuple(self.nodes), outputs=tuple(outputs),
            name=self.name, input_names=tuple(self.input_names),
            input_roles=tuple(self.input_roles), output_names=tuple(output_names),
            aliases=tuple(aliases),
        )
