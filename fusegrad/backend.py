"""Running a traced graph on a target: native code on the CPU, a GPU, or the reference interpreter.

    runner = Runner(graph, target="cpu", guard=0)
    ok, outputs = runner.run(inputs)

"cpu" finds the graph's CompiledProgram in the program cache (keyed by the graph's fingerprint:
structure, shapes and constants, never source lines or names), or makes it (passes, fusion,
memory plan, code generation), then gets every kernel's object code from the kernel cache
(compiling what is missing) and links it into this process. "cuda" compiles the same Program into
Numba CUDA kernels (runtime/cuda.py); "interpret" runs the traced graph op by op with NumPy: the
oracle every compiled result is tested against (see crosscheck.py).

Every step of that is timed (`stats()["phases"]`) and one INFO line on the "fusegrad" logger says
what compiled and why.
"""
from __future__ import annotations

import gc
import logging
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import config, crosscheck
from .compiler.artifact import STATUS_INDEX, STATUS_NONFINITE, CompiledProgram
from .compiler.pipeline import Program, compile_graph
from .ir import interpret
from .ir.fingerprint import fingerprint
from .ir.interpret import IndexOutOfRangeError

TARGETS = ("cpu", "interpret", "cuda")
log = logging.getLogger("fusegrad")


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


KERNEL_COMPILERS = ("native", "numba")


def kernel_compiler() -> str:
    """FUSEGRAD_KERNEL_COMPILER: "native" (the default, compiler/native) or "numba" (the
    reference: the same kernel text compiled by Numba, uncached)."""
    choice = config.get("FUSEGRAD_KERNEL_COMPILER")
    if choice not in KERNEL_COMPILERS:
        raise ValueError(f"FUSEGRAD_KERNEL_COMPILER must be one of {KERNEL_COMPILERS}, got "
                         f"{choice!r}")
    return choice


@lru_cache(maxsize=None)
def compiler_version() -> str:
    """A hash of the compiler's own source: a cached program made by other code is not used."""
    import hashlib

    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted([*root.glob("compiler/**/*.py"), *root.glob("ir/*.py")]):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


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
    def __init__(self, graph, target="cpu", guard=None, remat="none", phases=None):
        with compiling():
            self._setup(graph, target, guard, remat, phases)

    def _setup(self, graph, target, guard, remat, phases):
        self.graph = graph
        self.target = check_target(target)
        self.guard = guard
        self.remat = remat
        self._program: Program | None = None
        self._code = None  # GeneratedCode (CPU) or CudaCode, when made in this process
        self.build = None
        self.compiled: CompiledProgram | None = None
        self.exact_math = exact_math()  # read once: source() shows what was compiled
        self.phases = dict(phases or {})  # seconds per compile phase
        self.cache = {}  # what the caches decided, and why
        if self.target == "cpu":
            self._build_cpu()
        elif self.target == "cuda":
            from .compiler.codegen.cuda import generate_cuda
            from .compiler.codegen.cuda_config import launch_config
            from .runtime.cuda import CudaBuild

            self._code = generate_cuda(self.program, launch_config(), guard=guard)
            self.build = CudaBuild(self.program, self._code)

    # ---- compiling ----
    def _timed(self, phase, fn, *args, **kw):
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

    def _generated(self):
        if self._code is None:
            from .compiler.codegen.cpu import generate_cpu

            self._code = self._timed("codegen", generate_cpu, self.program,
                                     exact_math=self.exact_math, guard=self.guard)
        return self._code

    def _build_cpu(self):
        from .compiler.codegen.cpu_library import DISPATCHER, DISPATCHER_NAME
        from .compiler.artifact import Kernel
        from .compiler.native.build import build_objects
        from .runtime import cache
        from .runtime.cpu import CpuBuild

        key = self._timed("key", fingerprint, self.graph, self.guard, self.remat,
                          self.exact_math, compiler_version())
        text, why = self._timed("program_cache", cache.load_program, key)
        if text is not None:
            program = CompiledProgram.from_json(text)
            self.cache["program"] = "loaded: this graph was compiled before (same structure, " \
                                    "shapes and constants)"
        else:
            program = self._generated().program
            self._timed("program_cache", cache.store_program, key, program.to_json())
            self.cache["program"] = f"compiled: {why}"
        # names are the current graph's (they are not part of the key)
        for spec, name in zip(program.inputs, self.graph.input_names):
            spec.name = name
        self.compiled = program
        kernels = [*program.kernels, Kernel(DISPATCHER_NAME, DISPATCHER)]
        if kernel_compiler() == "numba":
            self._build_with_numba(program, kernels)
            return
        t0 = time.perf_counter()
        objects = build_objects(kernels, cache)
        self.phases["kernels"] = time.perf_counter() - t0
        built = [o for o in objects if o.compiled]
        self.cache["kernels"] = {"compiled": len(built), "loaded": len(objects) - len(built),
                                 "compile_seconds": sum(o.seconds for o in built)}
        self.build = CpuBuild(program, objects)
        self.phases["load"] = self.build.load_seconds
        if built or text is None:
            log.info("fusegrad: %s: %s; %d kernels compiled (%s), %d loaded from the cache "
                     "(%.2f s)", self.graph.name, self.cache["program"], len(built),
                     ", ".join(sorted({o.why for o in built})) or "-",
                     len(objects) - len(built), sum(self.phases.values()))

    def _build_with_numba(self, program, kernels):
        """Every kernel compiled by Numba from the same text (the reference compiler)."""
        from .compiler.native.reference import numba_entry
        from .runtime.cpu import CpuBuild

        t0 = time.perf_counter()
        compiled = [numba_entry(k.name, k.text) for k in kernels]
        self.phases["kernels"] = time.perf_counter() - t0
        self.cache["kernels"] = {"compiled": len(kernels), "loaded": 0,
                                 "compile_seconds": self.phases["kernels"]}
        self.build = CpuBuild.from_addresses(program, [a for a, _ in compiled],
                                             [m for _, m in compiled])

    # ---- running ----
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
        if self.target == "cpu":
            ok = self._status(self.build.run(inputs))
        else:
            ok = self.build.run(inputs)
        exe = self.build.executable
        if reference is not None:
            crosscheck.check(self.graph, self.guard, ok, exe, reference, self.target)
        return ok, [exe.output(k) for k in want]

    def output(self, k):
        """Output k of the last run (a copy)."""
        return self.build.executable.output(k)

    def _status(self, status: int) -> bool:
        """True when the whole schedule ran; False when the loss guard stopped it; an error
        for any other failed check."""
        if status == 0:
            return True
        entry = self.compiled.entries[status // 256]
        code = status % 256
        if code == STATUS_NONFINITE and entry.check == "loss":
            return False
        if code == STATUS_INDEX:
            raise IndexOutOfRangeError(f"{self.graph.name}: an index is out of range in "
                                       f"{entry.what}{self._where(status // 256)}; nothing "
                                       f"was updated")
        raise RuntimeError(f"{self.graph.name}: kernel call {status // 256} ({entry.what}) "
                           f"failed with status {code}")

    def _where(self, k) -> str:
        """ ' (model.py:12)': the user's line of schedule entry k (from the readable
        schedule, made from the current graph)."""
        try:
            line = self._generated().schedule[k]
        except Exception:  # noqa: BLE001 - only for a message
            return ""
        return f" ({line.rsplit('(', 1)[1]}" if line.endswith(")") and "(" in line else ""

    def profile(self, inputs, repeats=5) -> list:
        """Seconds per kernel call (median of `repeats` runs of each call, after one run of the
        whole schedule): [(what it computes, seconds), ...] in schedule order. Each call reruns
        on the state the previous calls left: in-place updates are applied again."""
        if self.build is None:
            raise RuntimeError("profile() needs target='cpu' or 'cuda'")
        if self.target == "cuda":
            return self.build.profile(inputs, repeats)
        self.run(inputs)
        exe = self.build.executable
        entries = self.compiled.entries
        times = np.zeros((repeats, len(entries)))
        for r in range(repeats):
            for k in range(len(entries)):
                t0 = time.perf_counter()
                exe.run_entries(k, k + 1)
                times[r, k] = time.perf_counter() - t0
        schedule = self._generated().schedule
        return [(schedule[k].split("  # ", 1)[-1], float(np.median(times[:, k])))
                for k in range(len(entries))]

    def source(self) -> str:
        if self.target == "cuda":
            from .compiler.codegen.cuda import render_cuda_source

            return render_cuda_source(self._code)
        from .compiler.codegen.cpu import render_source

        return render_source(self._generated())

    def stats(self) -> dict:
        if self.compiled is not None:
            s = dict(self.compiled.stats, target=self.target)
        else:
            s = dict(self.program.stats(), target=self.target)
        if self.target == "cpu" and self.build is not None:
            kernels = self.cache["kernels"]
            s.update(cache_hit=self.cache["program"].startswith("loaded") and
                     kernels["compiled"] == 0,
                     cache=self.cache["program"], kernels_compiled=kernels["compiled"],
                     kernels_loaded=kernels["loaded"],
                     kernel_compile_seconds=kernels["compile_seconds"],
                     first_run_seconds=self.build.first_run_seconds,
                     phases=dict(self.phases),
                     compile_seconds=sum(self.phases.values()))
        elif self.build is not None:
            s.update(compile_seconds=self.build.compile_seconds,
                     load_seconds=self.build.load_seconds, cache_hit=self.build.cache_hit,
                     cache=self.build.cache_reason, kernel_files=self.build.kernel_files,
                     kernel_files_reused=self.build.kernel_files_reused,
                     driver=self.build.driver_path, driver_kind=self.build.driver)
        return s
