"""Graph views for tools: a networkx DiGraph and Graphviz DOT text."""
from __future__ import annotations

import networkx as nx

from .printer import short_loc


def to_networkx(graph) -> nx.DiGraph:
    """Nodes are graph inputs ('in:i') and IR nodes ('n:i'); edges carry the Var's type."""
    g = nx.DiGraph()
    source = {}
    for i, (v, name, role) in enumerate(zip(graph.inputs, graph.input_names, graph.input_roles)):
        key = f"in:{i}"
        g.add_node(key, label=name, role=role, type=str(v.type))
        source[v] = key
    for i, node in enumerate(graph.nodes):
        key = f"n:{i}"
        g.add_node(key, label=node.op, attrs=repr(node.attrs), loc=short_loc(node.loc),
                   part=node.part)
        for v in node.inputs:
            g.add_edge(source[v], key, type=str(v.type))
        for v in node.outputs:
            source[v] = key
    for i, v in enumerate(graph.outputs):
        key = f"out:{i}"
        g.add_node(key, label=graph.output_names[i], role="output", type=str(v.type))
        g.add_edge(source[v], key, type=str(v.type))
    return g


_PART_COLOURS = {"forward": "#dbe9f6", "backward": "#f9e0d9", "update": "#e2f0d9"}


def _quote(s: str) -> str:
    return '"' + s.replace('"', '\\"') + '"'


def to_dot(graph) -> str:
    """Graphviz text; forward/backward/update nodes are coloured differently."""
    g = to_networkx(graph)
    lines = [f"digraph {_quote(graph.name)} {{", "  rankdir=TB; node [style=filled, fontsize=10];"]
    for key, data in g.nodes(data=True):
        if key.startswith("n:"):
            label = data["label"] + (f"\\n{data['loc']}" if data["loc"] else "")
            colour = _PART_COLOURS.get(data["part"], "white")
            lines.append(f"  {_quote(key)} [label={_quote(label)}, shape=box, fillcolor={_quote(colour)}];")
        else:
            label = f"{data['label']}\\n{data['type']}"
            lines.append(f"  {_quote(key)} [label={_quote(label)}, shape=ellipse, fillcolor=\"white\"];")
    for a, b, data in g.edges(data=True):
        lines.append(f"  {_quote(a)} -> {_quote(b)} [label={_quote(data['type'])}, fontsize=8];")
    lines.append("}")
    return "\n".join(lines)
