"""What every compiled object shows: one mixin for fg.jit / fg.grad functions and train steps.

    f.ir()                 the traced graph; f.ir("backward") one part of it
    f.ir("optimized")      the graph after the optimisation passes; "fused": kernels and regions
    f.memory_plan()        buffers, reuse, in-place writes, peak against naive bytes
    f.source()             the generated code: the schedule, then every kernel, each line naming
                           its IR value and the user's source line
    f.stats()              kernels, bytes, compile phases and cache decisions
    f.dump("dir")          all of it in files

A class using it says what its whole graph is called (WHOLE), which parts of it `ir` shows alone
(PARTS), and implements `_inspected(*args) -> (graph, runner)`: the traced graph shown and the
Runner compiling it (for a function, of the last call or of the given example arguments),
and has a `name`.
"""
from __future__ import annotations

from pathlib import Path

from .ir.printer import format_graph

COMPILER_STAGES = ("optimized", "fused")


class Inspection:
    WHOLE = "graph"
    PARTS: tuple = ()

    def _inspected(self, *args):
        raise NotImplementedError

    @classmethod
    def stages(cls) -> tuple:
        return (*cls.PARTS, cls.WHOLE, *COMPILER_STAGES)

    def ir(self, stage: str | None = None, *args) -> str:
        """Text of a stage (see stages()): the whole traced graph by default, one of its
        parts, or the compiler's "optimized" and "fused" graphs."""
        stage = self.WHOLE if stage is None else stage
        if stage not in self.stages():
            raise ValueError(f"stage must be one of {self.stages()}, got {stage!r}")
        graph, runner = self._inspected(*args)
        if stage in COMPILER_STAGES:
            from .compiler.dump import format_fused

            program = runner.program
            return str(program.optimized) if stage == "optimized" else format_fused(program.fused)
        return str(graph) if stage == self.WHOLE else format_graph(graph, parts=(stage,))

    def memory_plan(self, *args) -> str:
        """The memory plan, buffer by buffer."""
        return str(self._inspected(*args)[1].program.plan)

    def source(self, *args) -> str:
        """The generated code: the schedule, then every kernel."""
        return self._inspected(*args)[1].source()

    def stats(self, *args) -> dict:
        """kernels, peak_bytes, naive_bytes, compile phases and cache figures."""
        return self._inspected(*args)[1].stats()

    def dump(self, directory, *args) -> str:
        """Write every stage, the DOT graph, the fused graph (text, DOT, and SVG where
        Graphviz's `dot` is installed), the generated code and the memory plan into a folder of
        `directory`; returns its path."""
        from .compiler.dump import dump_program

        graph, runner = self._inspected(*args)
        program = runner.program
        folder = Path(dump_program(directory, self.name, program.fused, program.plan,
                                   source=runner.source(), svg=True))
        for stage in self.stages():
            if stage != "fused":  # dump_program wrote it
                (folder / f"{stage}.txt").write_text(self.ir(stage, *args) + "\n")
        (folder / f"{self.WHOLE}.dot").write_text(graph.to_dot() + "\n")
        return str(folder)
