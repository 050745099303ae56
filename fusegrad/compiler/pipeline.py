"""From a step graph to a Program: optimize, prepare, fuse, plan memory.

Every stage is a pure function and every result is kept, so `step.ir("optimized")`,
`step.ir("fused")` and `step.memory_plan()` show exactly what the backends run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .. import config
from ..ir import Graph
from ..ir import verify as verify_graph
from .passes import run_passes
from .passes.fusion import fuse, kernel_count
from .passes.memory import MemoryPlan, plan_memory
from .passes.prepare import prepare_for_fusion
from .passes.remat import remat_cheap, remat_min_cut


@dataclass(frozen=True)
class Program:
    source: Graph  # the graph as traced (step, joint or forward)
    optimized: Graph
    fused: Graph
    plan: MemoryPlan

    @property
    def kernels(self) -> int:
        return kernel_count(self.fused)

    def stats(self) -> dict:
        return {
            "nodes": len(self.source.nodes),
            "optimized_nodes": len(self.optimized.nodes),
            "kernels": self.kernels,
            "gemms": sum(1 for n in self.fused.nodes
                         if n.op == "kernel" and n.attrs["kind"] == "gemm"),
            "peak_bytes": self.plan.peak_bytes,
            "naive_bytes": self.plan.naive_bytes,
        }


REMAT = ("none", "cheap", "mincut")


class _Clock:
    """Adds the seconds spent in each phase to a dict (stats()["phases"])."""

    def __init__(self, timings):
        self.timings = timings

    def __call__(self, phase, fn, *args, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            if self.timings is not None:
                self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0


def _fuse_and_plan(optimized: Graph, guard, clock):
    fused = clock("fusion", lambda: fuse(prepare_for_fusion(optimized), guard=guard))
    if config.get("FUSEGRAD_VERIFY"):
        verify_graph(fused)
    return fused, clock("memory_plan", plan_memory, fused)


def compile_graph(graph: Graph, dump_dir=None, guard: int | None = None,
                  remat: str = "none", timings: dict | None = None) -> Program:
    """Run the whole middle end on `graph`. `guard` names the output (the loss) that is checked
    before parameters are written in place (see passes/fusion.py); remat="cheap" recomputes
    elementwise activations in the backward part (passes/remat.py). `timings` (a dict) gets the
    seconds of each phase added."""
    if remat not in REMAT:
        raise ValueError(f"remat must be one of {REMAT}, got {remat!r}")
    clock = _Clock(timings)
    dump_dir = dump_dir or config.get("FUSEGRAD_DUMP")
    optimized = clock("passes", run_passes, graph, dump_dir=dump_dir)
    if remat == "mincut":  # passes/remat.py: save a minimum cut, recompute the rest
        optimized = clock("remat", remat_min_cut, optimized)
    fused, plan = _fuse_and_plan(optimized, guard, clock)
    if remat == "cheap":  # kept only where recomputing lowers the peak
        recomputed = clock("remat", remat_cheap, optimized)
        if recomputed is not optimized:
            fused_r, plan_r = _fuse_and_plan(recomputed, guard, clock)
            if plan_r.peak_bytes < plan.peak_bytes:
                optimized, fused, plan = recomputed, fused_r, plan_r
    if dump_dir:
        from .dump import dump_program

        dump_program(dump_dir, graph.name, fused, plan)
    return Program(graph, optimized, fused, plan)
