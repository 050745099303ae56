"""Writing a compiled program's stages to a folder (FUSEGRAD_DUMP=dir or step.dump(dir))."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from ..ir.printer import format_graph, short_loc

# one fill colour per kernel kind (passes/kernel_kinds.py), so the kinds read at a glance
_KIND_COLOURS = {"gemm": "#f4cccc", "elementwise": "#d9ead3", "row": "#cfe2f3",
                 "column": "#fff2cc", "row+column": "#d9d2e9", "opaque": "#eeeeee",
                 "multi": "#fce5cd", "collective": "#f9cb9c", "scan": "#d0e0e3"}


def cost_comment(node) -> str:
    """The cost model's numbers for a kernel node, shown in the fused dump."""
    if node.op != "kernel":
        return ""
    a = node.attrs
    intensity = a["flops"] / max(a["bytes"], 1)
    return f"{a['flops']:,} flop, {a['bytes']:,} B, {intensity:.2f} flop/B"


def format_fused(fused) -> str:
    return format_graph(fused, annotate=cost_comment)


def _quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'  # "\\n" stays: DOT's line break


def _si(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def fused_dot(fused) -> str:
    """Graphviz text of the fused graph: one box per kernel (its kind, name, cost in flop and
    bytes, the user's line), coloured by kind; graph inputs and outputs as ellipses."""
    lines = [f"digraph {_quote(fused.name)} {{",
             "  rankdir=TB; node [style=filled, fontsize=10, fontname=Helvetica];"]
    source = {}
    for i, (v, name) in enumerate(zip(fused.inputs, fused.input_names)):
        label = _quote(f"{name}\\n{v.type}")
        lines.append(f'  in{i} [label={label}, shape=ellipse, fillcolor="white"];')
        source[v] = f"in{i}"
    for i, node in enumerate(fused.nodes):
        a = node.attrs
        if node.op == "kernel":
            kind = a.get("kind", "?")
            parts = sum(n.op == "kernel" for n in node.region.nodes) if node.region else 0
            label = (f"{kind}\\n{a.get('name', '')}\\n" + (f"{parts} parts, " if parts else "")
                     + f"{_si(a.get('flops', 0))} flop, {_si(a.get('bytes', 0))}B")
            colour = _KIND_COLOURS.get(kind, "white")
        else:
            label, colour = node.op, "white"
        loc = short_loc(node.loc)
        if loc:
            label += f"\\n{loc}"
        lines.append(f"  n{i} [label={_quote(label)}, shape=box, fillcolor={_quote(colour)}];")
        for v in node.inputs:
            if v in source:
                lines.append(f"  {source[v]} -> n{i};")
        for v in node.outputs:
            source[v] = f"n{i}"
    for i, (v, name) in enumerate(zip(fused.outputs, fused.output_names)):
        lines.append(f"  out{i} [label={_quote(name)}, shape=ellipse, fillcolor=\"white\"];")
        if v in source:
            lines.append(f"  {source[v]} -> out{i};")
    lines.append("}")
    return "\n".join(lines)


def render_svg(dot_path: Path, timeout: float = 120.0) -> str | None:
    """dot_path rendered to SVG beside it by Graphviz's `dot`; None and no file when `dot` is
    not installed (the .dot text is enough to render it elsewhere). Returns why not, if not."""
    dot = shutil.which("dot")
    if dot is None:
        return ("Graphviz's `dot` program was not found, so no SVG was drawn: install Graphviz "
                f"(e.g. apt-get install graphviz) and run `dot -Tsvg {dot_path.name} -o "
                f"{dot_path.with_suffix('.svg').name}`")
    done = subprocess.run([dot, "-Tsvg", str(dot_path), "-o", str(dot_path.with_suffix(".svg"))],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        return f"`dot -Tsvg {dot_path.name}` failed: {done.stderr.strip()[-500:]}"
    return None


def dump_program(directory, name, fused, plan, source=None, svg=False) -> Path:
    """Write the fused graph (text, DOT), the memory plan and the kernel source into a folder
    of `directory` named after the graph; with svg=True also the fused graph drawn as SVG by
    Graphviz when its `dot` is installed (else a note saying how to draw it)."""
    # the same folder name the pass manager uses for this graph's pass dumps
    folder = Path(directory) / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "graph")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "90_fused.txt").write_text(format_fused(fused) + "\n")
    (folder / "91_memory_plan.txt").write_text(str(plan) + "\n")
    dot = folder / "92_fused.dot"
    dot.write_text(fused_dot(fused) + "\n")
    note = folder / "92_fused.svg.txt"
    note.unlink(missing_ok=True)
    if svg:
        why_not = render_svg(dot)
        if why_not:
            note.write_text(why_not + "\n")
    if source is not None:
        (folder / "93_kernels.py").write_text(source)
    return folder
