"""The CPU runtime: a CompiledProgram's kernels loaded into this process, and its Executable.

    build = CpuBuild(program, objects)      # objects: compiler/native/build.py, dispatcher last
    status = build.run(inputs)              # one call into native code

Loading is cheap (object code from the disk cache, linked into this process's JIT); compiling
what was not on disk happened before, in build_objects. `CpuBuild.from_addresses` takes entry
addresses compiled elsewhere (the Numba reference compiler).
"""
from __future__ import annotations

import time

from .executable import Executable
from .native import load_object


class CpuBuild:
    def __init__(self, program, objects):
        t0 = time.perf_counter()
        addresses = [load_object(o.key, o.obj, o.symbols, o.entries)[o.entry] for o in objects]
        self._setup(program, addresses, time.perf_counter() - t0)

    @classmethod
    def from_addresses(cls, program, addresses, keep_alive=()):
        build = cls.__new__(cls)
        build._keep_alive = list(keep_alive)
        build._setup(program, addresses, 0.0)
        return build

    def _setup(self, program, addresses, load_seconds):
        self.load_seconds = load_seconds
        self.program = program
        self.executable = Executable(program, addresses[:-1], addresses[-1])
        self.first_run_seconds = None

    def run(self, inputs) -> int:
        if self.first_run_seconds is None:
            t0 = time.perf_counter()
            status = self.executable.run(inputs)
            self.first_run_seconds = time.perf_counter() - t0
            return status
        return self.executable.run(inputs)
