"""The IR's text format (a graph's __str__), jaxpr-like and stable enough for golden tests.

    graph mlp_loss(
        %0: f32[4,3]  params['w']  param
        %1: f32[8,4]  x            batch
    ) {
      %2: f32[8,3] = matmul[transpose_a=False, transpose_b=False] %1, %0   # model.py:12
      # ---- backward ----
      ...
      return %9  # loss
    }

Vars are numbered in order of definition. Fused kernel nodes print their region nested in
braces, indented, with the region's inputs bound to the outer operands.
"""
from __future__ import annotations

import os


class _Names:
    def __init__(self):
        self.names = {}

    def define(self, v) -> str:
        name = f"%{len(self.names)}"
        self.names[v] = name
        return name

    def __getitem__(self, v) -> str:
        return self.names.get(v, f"%?{v.type}")


def short_loc(loc: str | None) -> str:
    """`/long/path/model.py:12` -> `model.py:12` (what dumps and generated code show)."""
    if not loc:
        return ""
    path, _, line = loc.rpartition(":")
    return f"{os.path.basename(path)}:{line}"


def _typed(names, v):
    return f"{names.define(v)}: {v.type}"


def _format_node(node, names, indent, lines, annotate):
    ins = ", ".join(names[v] for v in node.inputs)
    outs = ", ".join(_typed(names, v) for v in node.outputs)
    text = f"{indent}{outs} = {node.op}{node.attrs!r}{' ' + ins if ins else ''}"
    extra = annotate(node) if annotate else ""
    comment = "  ".join(c for c in (short_loc(node.loc), extra) if c)
    if node.region is not None:
        lines.append(text + " {" + (f"   # {comment}" if comment else ""))
        bind = [names[v] for v in node.inputs]
        if node.op == "scan":  # the body reads one slice of each xs per step
            first_x = node.attrs["n_consts"] + node.attrs["n_carry"]
            bind = bind[:first_x] + [f"{x}[t]" for x in bind[first_x:]]
        _format_body(node.region, names, indent + "  ", lines, annotate, bind=bind)
        lines.append(indent + "}")
    else:
        lines.append(text + (f"   # {comment}" if comment else ""))


def _format_body(graph, names, indent, lines, annotate, bind=None, parts=None):
    if bind is not None:
        # a region: its inputs are the outer operands, renamed
        params = ", ".join(f"{_typed(names, v)} <- {o}" for v, o in zip(graph.inputs, bind))
        lines.append(f"{indent}({params})")
    part = "forward"
    shown = set(graph.inputs)
    for node in graph.nodes:
        if parts is None or node.part in parts:
            shown.update(node.outputs)
        if parts is not None and node.part not in parts:
            for v in node.outputs:  # keep the numbering of the whole graph
                names.define(v)
            continue
        if bind is None and node.part != part:
            part = node.part
            lines.append(f"{indent}# ---- {part} ----")
        _format_node(node, names, indent, lines, annotate)
    # a part shows the outputs it computes; the rest are named in the full graph's return
    outs = ", ".join(names[v] for v in graph.outputs if v in shown)
    lines.append(f"{indent}{'return' if bind is None else 'yield'} {outs}".rstrip())


def var_names(graph) -> dict:
    """The %N name the printer gives every Var of `graph`, regions included (the printer's
    order: inputs, then each node's outputs followed by its region's values), without
    printing anything."""
    names: dict = {}
    _number(graph, names)
    return names


def _number(graph, names):
    for v in graph.inputs:
        names[v] = f"%{len(names)}"
    for node in graph.nodes:
        for v in node.outputs:
            names[v] = f"%{len(names)}"
        if node.region is not None:
            _number(node.region, names)


def format_graph(graph, annotate=None, parts=None, _names=None) -> str:
    """Text of `graph`. `annotate(node) -> str` may add a comment per node (costs, buffers);
    `parts` (e.g. ("backward",)) keeps only those parts' nodes, numbered as in the whole graph."""
    names = _names if _names is not None else _Names()
    lines = [f"graph {graph.name}("]
    width = 0
    rows = []
    for v, name, role in zip(graph.inputs, graph.input_names, graph.input_roles):
        rows.append((_typed(names, v), name, role))
    if rows:
        w0 = max(len(r[0]) for r in rows)
        width = max(len(r[1]) for r in rows)
        for typed, name, role in rows:
            lines.append(f"    {typed.ljust(w0)}  {name.ljust(width)}  {role}")
    lines.append(") {")
    body: list[str] = []
    _format_body(graph, names, "  ", body, annotate, parts=parts)
    lines.extend(body)
    out_names = ", ".join(graph.output_names)
    alias = {o: i for o, i in graph.aliases}
    if alias:
        pairs = ", ".join(f"{graph.output_names[o]} -> {graph.input_names[i]}"
                          for o, i in sorted(alias.items()))
        lines[-1] += f"  # {out_names}; in place: {pairs}"
    else:
        lines[-1] += f"  # {out_names}"
    lines.append("}")
    return "\n".join(lines)
