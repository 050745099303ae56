"""target="cpu": native kernels run by one generic dispatcher (the default target).

compile() finds the graph's CompiledProgram in the program cache (keyed by the graph's
fingerprint: structure, shapes and constants, never source lines or names), or makes it (the
middle end's Program, then code generation), gets every kernel's object code from the kernel
cache (compiling what is missing, in parallel helper processes) and links it into this process.
A run is one call into the dispatcher; its status says which check, if any, stopped it.
"""
from __future__ import annotations

import hashlib
import logging
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import config
from ..compiler.artifact import (STATUS_COLLECTIVE, STATUS_INDEX, STATUS_NONFINITE,
                                 CompiledProgram)
from ..ir.fingerprint import fingerprint
from ..ir.interpret import IndexOutOfRangeError
from . import Backend

log = logging.getLogger("fusegrad")
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
def gemm_tiles() -> int:
    """How many tiles a big GEMM is cut into for this machine: its cores (the most threads a
    step can use). Part of the program's key: the tiles decide a product's rounding."""
    from ..runtime.threads import pool_size

    return pool_size()


def compiler_version() -> str:
    """A hash of the compiler's own source: a cached program made by other code is not used."""
    h = hashlib.sha256()
    root = Path(__file__).parents[1]  # the fusegrad package
    for path in sorted([*root.glob("compiler/**/*.py"), *root.glob("ir/*.py"),
                        *root.glob("kernels/*.py")]):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


class CpuBackend(Backend):
    name = "cpu"

    def __init__(self, job):
        super().__init__(job)
        self.build = None  # the loaded kernels and their Executable
        self.cache: dict = {}  # what the caches decided, and why
        self._code = None  # GeneratedCode, when made in this process

    def generated(self):
        """The CompiledProgram and its readable schedule, generated from the job's Program
        (made on first use: a program loaded from the cache needs it only for source())."""
        if self._code is None:
            from ..compiler.codegen.cpu import generate_cpu

            job = self.job
            self._code = job.timed("codegen", generate_cpu, job.program,
                                   exact_math=job.exact_math, guard=job.guard,
                                   tiles=gemm_tiles())
        return self._code

    # ---- compiling ----
    def compile(self) -> None:
        from ..compiler.artifact import Kernel
        from ..kernels.cpu_library import DISPATCHER, DISPATCHER_NAME
        from ..compiler.native.build import build_objects
        from ..runtime import cache
        from ..runtime.cpu import CpuBuild

        job = self.job
        key = job.timed("key", fingerprint, job.graph, job.guard, job.remat, job.exact_math,
                        gemm_tiles(),
                        compiler_version())
        text, why = job.timed("program_cache", cache.load_program, key)
        if text is not None:
            program = CompiledProgram.from_json(text)
            self.cache["program"] = "loaded: this graph was compiled before (same structure, " \
                                    "shapes and constants)"
        else:
            program = self.generated().program
            job.timed("program_cache", cache.store_program, key, program.to_json())
            self.cache["program"] = f"compiled: {why}"
        # names are the current graph's (they are not part of the key)
        for spec, name in zip(program.inputs, job.graph.input_names):
            spec.name = name
        self.compiled = program
        kernels = [*program.kernels, Kernel(DISPATCHER_NAME, DISPATCHER)]
        if kernel_compiler() == "numba":
            self._build_with_numba(program, kernels)
            return
        t0 = time.perf_counter()
        objects = build_objects(kernels, cache)
        job.phases["kernels"] = time.perf_counter() - t0
        built = [o for o in objects if o.compiled]
        self.cache["kernels"] = {"compiled": len(built), "loaded": len(objects) - len(built),
                                 "compile_seconds": sum(o.seconds for o in built)}
        self.build = CpuBuild(program, objects)
        job.phases["load"] = self.build.load_seconds
        if built or text is None:
            log.info("fusegrad: %s: %s; %d kernels compiled (%s), %d loaded from the cache "
                     "(%.2f s)", job.graph.name, self.cache["program"], len(built),
                     ", ".join(sorted({o.why for o in built})) or "-",
                     len(objects) - len(built), sum(job.phases.values()))

    def _build_with_numba(self, program, kernels):
        """Every kernel compiled by Numba from the same text (the reference compiler)."""
        from ..compiler.native.reference import numba_entry
        from ..runtime.cpu import CpuBuild
        from ..runtime.native import NativeLoadError, missing_symbols

        # Numba's JIT resolves external symbols as it compiles (and aborts on a missing one):
        # a collective's kernel needs MPI_Allreduce bound first, as the native loader does
        collective = any(e.check == "collective" for e in program.entries)
        if collective and missing_symbols(["MPI_Allreduce"]):
            raise NativeLoadError("a collective's kernel needs MPI_Allreduce, from mpi4py's MPI "
                                  "library: pip install 'fusegrad[mpi]'")
        t0 = time.perf_counter()
        compiled = [numba_entry(k.name, k.text) for k in kernels]
        self.job.phases["kernels"] = time.perf_counter() - t0
        self.cache["kernels"] = {"compiled": len(kernels), "loaded": 0,
                                 "compile_seconds": self.job.phases["kernels"]}
        self.build = CpuBuild.from_addresses(program, [a for a, _ in compiled],
                                             [m for _, m in compiled])

    # ---- running ----
    def run(self, inputs) -> bool:
        return self._status(self.build.run(inputs))

    def output(self, k, copy=True):
        return self.build.executable.output(k, copy)

    def _status(self, status: int) -> bool:
        """True when the whole schedule ran; False when the loss guard stopped it; an error
        for any other failed check."""
        if status == 0:
            return True
        name = self.job.graph.name
        entry = self.compiled.entries[status // 256]
        code = status % 256
        if code == STATUS_NONFINITE and entry.check == "loss":
            return False
        if code == STATUS_INDEX:
            raise IndexOutOfRangeError(f"{name}: an index is out of range in {entry.what}"
                                       f"{self._where(status // 256)}; nothing was updated")
        if code == STATUS_COLLECTIVE:
            raise RuntimeError(f"{name}: MPI_Allreduce returned an error in {entry.what}; the "
                               f"step stopped before writing anything")
        raise RuntimeError(f"{name}: kernel call {status // 256} ({entry.what}) failed with "
                           f"status {code}")

    def _where(self, k) -> str:
        """ ' (model.py:12)': the user's line of schedule entry k (from the readable
        schedule, made from the current graph)."""
        try:
            line = self.generated().schedule[k]
        except Exception:  # noqa: BLE001 - only for a message
            return ""
        return f" ({line.rsplit('(', 1)[1]}" if line.endswith(")") and "(" in line else ""

    def profile(self, inputs, repeats=5) -> list:
        """Seconds per kernel call (median of `repeats` runs of each call, after one run of the
        whole schedule). Each call reruns on the state the previous calls left: in-place
        updates are applied again (TrainStep.profile passes copies)."""
        self.run(inputs)
        exe = self.build.executable
        entries = self.compiled.entries
        times = np.zeros((repeats, len(entries)))
        for r in range(repeats):
            for k in range(len(entries)):
                t0 = time.perf_counter()
                exe.run_entries(k, k + 1)
                times[r, k] = time.perf_counter() - t0
        schedule = self.generated().schedule
        return [(schedule[k].split("  # ", 1)[-1], float(np.median(times[:, k])))
                for k in range(len(entries))]

    def source(self) -> str:
        from ..compiler.codegen.cpu import render_source

        return render_source(self.generated())

    def stats(self) -> dict:
        kernels = self.cache["kernels"]
        phases = self.job.phases
        return dict(cache_hit=self.cache["program"].startswith("loaded") and
                    kernels["compiled"] == 0,
                    cache=self.cache["program"], kernels_compiled=kernels["compiled"],
                    kernels_loaded=kernels["loaded"],
                    kernel_compile_seconds=kernels["compile_seconds"],
                    first_run_seconds=self.build.first_run_seconds,
                    phases=dict(phases), compile_seconds=sum(phases.values()))
