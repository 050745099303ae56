"""Writing a compiled program's stages to a folder (FUSEGRAD_DUMP=dir or step.dump(dir))."""
from __future__ import annotations

import re
from pathlib import Path

from ..ir.printer import format_graph


def cost_comment(node) -> str:
    """The cost model's numbers for a kernel node, shown in the fused dump."""
    if node.op != "kernel":
        return ""
    a = node.attrs
    intensity = a["flops"] / max(a["bytes"], 1)
    return f"{a['flops']:,} flop, {a['bytes']:,} B, {intensity:.2f} flop/B"


def format_fused(fused) -> str:
    return format_graph(fused, annotate=cost_comment)


def dump_program(directory, name, fused, plan, source=None) -> Path:
    # the same folder name the pass manager uses for this graph's pass dumps
    folder = Path(directory) / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "graph")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "90_fused.txt").write_text(format_fused(fused) + "\n")
    (folder / "91_memory_plan.txt").write_text(str(plan) + "\n")
    (folder / "92_fused.dot").write_text(fused.to_dot() + "\n")
    if source is not None:
        (folder / "93_kernels.py").write_text(source)
    return folder
