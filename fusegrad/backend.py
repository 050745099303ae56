"""Running a traced graph on a target: native code on the CPU, a GPU, or the reference interpreter.

    runner = Runner(graph, target="cpu", guard=0)
    ok, outputs = runner.run(inputs)

A Runner holds what every target shares: the graph, the loss guard, the middle end's Program,
the compile phases (`stats()["phases"]`) and the cross-check against the interpreter
(crosscheck.py). Everything else is the target's Backend (backends/): "cpu" native kernels and a
generic dispatcher, "cuda" Numba CUDA kernels, "interpret" the NumPy interpreter, the oracle.
"""
from __future__ import annotations

import gc
import time

from . import config, crosscheck
from .backends import BACKENDS, backend_class
from .compiler.artifact import CompiledProgram
from .compiler.pipeline import Program, compile_graph

TARGETS = tuple(BACKENDS)


def default_target() -> str:
    return config.get("FUSEGRAD_TARGET")


def check_target(target):
    target = target or default_target()
    if target == "cuda":  # a GPU, or Numba's simulator; else an error that says what to do
        from .runtime.cuda_device import require_cuda

        require_cuda()
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is not available; choose one of {TARGETS}")
    return target


def exact_math() -> bool:
    return config.get("FUSEGRAD_EXACT_MATH")


class compiling:
    """Python's cyclic garbage collector paused while a program compiles: compiling allocates
    hundreds of thousands of small objects, and the full collections that triggers walk the
    user's whole heap (measured: 50-60 ms per compile of an 8-layer transformer, more in a
    process holding many objects). Nothing compiled is cyclic garbage worth collecting early;
    the collector is restored (and runs when it next would) afterwards. Reentrant."""

    depth = 0
    was_enabled = False

    def __enter__(self):
        if compiling.depth == 0:
            compiling.was_enabled = gc.isenabled()
            gc.disable()
        compiling.depth += 1
        return self

    def __exit__(self, *exc):
        compiling.depth -= 1
        if compiling.depth == 0 and compiling.was_enabled:
            gc.enable()


class Runner:
    """A graph on one target: what every target shares (the graph, the loss guard, the middle
    end's Program, compile phases, the cross-check against the interpreter); the rest is the
    target's Backend (backends/)."""

    def __init__(self, graph, target="cpu", guard=None, remat="none", phases=None):
        with compiling():
            self.graph = graph
            self.target = check_target(target)
            self.guard = guard  # the output index of the loss, checked before any update
            self.remat = remat
            self.exact_math = exact_math()  # read once: source() shows what was compiled
            self.phases = dict(phases or {})  # seconds per compile phase
            self._program: Program | None = None
            self.backend = backend_class(self.target)(self)
            self.backend.compile()

    # ---- compiling ----
    def timed(self, phase, fn, *args, **kw):
        """fn(*args, **kw), its time added to `phase`."""
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - t0

    @property
    def program(self) -> Program:
        """The middle end's Program (built on first use when the program cache had it)."""
        if self._program is None:
            self._program = compile_graph(self.graph, guard=self.guard, remat=self.remat,
                                          timings=self.phases)
        return self._program

    @property
    def compiled(self) -> CompiledProgram | None:
        return self.backend.compiled

    @property
    def updates_in_place(self) -> bool:
        """Does a run write updated parameters and state into its inputs itself?"""
        return self.backend.updates_in_place

    # ---- running ----
    def run(self, inputs, want=None):
        """-> (ok, outputs): the outputs listed in `want` (all by default). ok is False when
        the guard output (the loss) was not finite; then nothing was written in place."""
        want = range(len(self.graph.outputs)) if want is None else want
        reference = None
        if self.target != "interpret" and crosscheck.enabled():  # before: it may write inputs
            reference = crosscheck.reference_outputs(self.graph, inputs)
        ok = self.backend.run(inputs)
        if reference is not None:
            crosscheck.check(self.graph, self.guard, ok, self.backend, reference, self.target)
        return ok, [self.backend.output(k) for k in want]

    def output(self, k):
        """Output k of the last run (a copy)."""
        return self.backend.output(k)

    def profile(self, inputs, repeats=5) -> list:
        """[(what a kernel call computes, seconds), ...] in schedule order."""
        return self.backend.profile(inputs, repeats)

    def source(self) -> str:
        return self.backend.source()

    def stats(self) -> dict:
        program = self.compiled if self.compiled is not None else self.program
        s = dict(program.stats if self.compiled is not None else program.stats(),
                 target=self.target)
        s.update(self.backend.stats())
        return s
