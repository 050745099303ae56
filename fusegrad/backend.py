"""Running a traced graph on a target: Numba on the CPU or a GPU, or the reference interpreter.

    runner = Runner(graph, target="cpu", guard=0)
    ok, outputs = runner.run(inputs)

"cpu" compiles the graph (passes, fusion, memory plan, generated Numba code), "cuda" the same
Program into Numba CUDA kernels (runtime/cuda.py); "interpret" runs the traced graph op by op
with NumPy: the oracle every compiled result is tested against (see crosscheck.py).
"""
from __future__ import annotations

import os

import numpy as np

from . import crosscheck
from .compiler.pipeline import Program, compile_graph
from .ir import interpret

TARGETS = ("cpu", "interpret", "cuda")


def default_target() -> str:
    return os.environ.get("FUSEGRAD_TARGET", "cpu")


def check_target(target):
    target = target or default_target()
    if target == "cuda":  # a GPU, or Numba's simulator; else an error that says what to do
        from .runtime.cuda_device import require_cuda

        require_cuda()
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is not available; choose one of {TARGETS}")
    return target


def driver_kind() -> str:
    """FUSEGRAD_DRIVER: "njit" (default) or "python" (see runtime/cpu.py: CpuBuild)."""
    return os.environ.get("FUSEGRAD_DRIVER", "njit")


def exact_math() -> bool:
    return os.environ.get("FUSEGRAD_EXACT_MATH", "") not in ("", "0")


class Runner:
    def __init__(self, graph, target="cpu", guard=None, remat="none"):
        self.graph = graph
        self.target = check_target(target)
        self.guard = guard
        self.remat = remat
        self._program: Program | None = None
        self.code = None
        self.build = None
        if self.target == "cpu":
            from .compiler.codegen.cpu import generate_cpu
            from .runtime.cpu import CpuBuild

            self.code = generate_cpu(self.program, exact_math=exact_math(), guard=guard)
            self.build = CpuBuild(self.program, self.code, driver_kind())
        elif self.target == "cuda":
            from .compiler.codegen.cuda import generate_cuda
            from .compiler.codegen.cuda_config import launch_config
            from .runtime.cuda import CudaBuild

            self.code = generate_cuda(self.program, launch_config(), guard=guard)
            self.build = CudaBuild(self.program, self.code)

    @property
    def program(self) -> Program:
        """The compiled program (built on first use for the interpreter target)."""
        if self._program is None:
            self._program = compile_graph(self.graph, guard=self.guard, remat=self.remat)
        return self._program

    def run(self, inputs, want=None):
        """-> (ok, outputs): the outputs listed in `want` (all by default). ok is False when
        the guard output (the loss) was not finite; then nothing was written in place."""
        want = range(len(self.graph.outputs)) if want is None else want
        if self.build is None:
            outs = interpret(self.graph, [np.asarray(x) for x in inputs])
            ok = self.guard is None or bool(np.all(np.isfinite(outs[self.guard])))
            return ok, [outs[k] for k in want]
        reference = None
        if crosscheck.enabled():  # before the run: it may update the inputs in place
            reference = crosscheck.reference_outputs(self.graph, inputs)
        ok = self.build.run(inputs)
        exe = self.build.executable
        if reference is not None:
            crosscheck.check(self.graph, self.guard, ok, exe, reference, self.target)
        return ok, [exe.output(k) for k in want]

    def profile(self, inputs, repeats=5) -> list:
        """Seconds per kernel call (median of `repeats` runs of the schedule from Python, after
        one compiled run): [(kernel description, seconds), ...] in schedule order."""
        import time

        if self.build is None:
            raise RuntimeError("profile() needs target='cpu'")
        if self.target == "cuda":
            return self.build.profile(inputs, repeats)
        self.run(inputs)
        exe = self.build.executable
        module = self.build.module
        runs = []
        for _ in range(repeats):
            marks: list = []
            flat = [exe._flat(k, x) for k, x in enumerate(inputs)]
            module.run_profiled(time.perf_counter, marks, exe.arena, exe.dims, exe.fconst,
                                exe.scratch, *flat, *exe.constants)
            runs.append(marks)
        return [(runs[0][k][0], float(np.median([r[k][1] for r in runs])))
                for k in range(len(runs[0]))]

    def source(self) -> str:
        if self.target == "cuda":
            from .compiler.codegen.cuda import render_cuda_source

            return render_cuda_source(self.code)
        from .compiler.codegen.cpu import generate_cpu, render_source

        code = self.code or generate_cpu(self.program, exact_math=exact_math(), guard=self.guard)
        return render_source(code)

    def stats(self) -> dict:
        s = dict(self.program.stats(), target=self.target)
        if self.build is not None:
            s.update(compile_seconds=self.build.compile_seconds,
                     load_seconds=self.build.load_seconds, cache_hit=self.build.cache_hit,
                     cache=self.build.cache_reason, kernel_files=self.build.kernel_files,
                     kernel_files_reused=self.build.kernel_files_reused,
                     driver=self.build.driver_path, driver_kind=self.build.driver)
        return s
