"""The CPU backend: generated Numba code for a Program, loaded from the disk cache.

`build(program, code)` writes/imports the kernel and driver modules and returns an Executable;
the first call compiles whatever Numba's cache does not already hold.
"""
from __future__ import annotations

import time

import numpy as np

from . import cache
from .executable import Executable

def output_storage(fused, plan):
    """Where each graph output can be read after a run (see Executable.output)."""
    out = []
    for v in fused.outputs:
        kind, where = plan.storage[v]
        while kind == "view":
            kind, where = plan.storage[where]
        if kind == "arena":
            out.append(("arena", where.offset, v.type.dtype, v.shape))
        elif kind == "input":
            out.append(("input", where, v.shape))
        else:
            out.append(("const", where.attrs["value"].array.reshape(v.shape)))
    return out


DRIVERS = ("njit", "python")


class CpuBuild:
    """An Executable plus what it took to make it (for stats()).

    driver="njit" runs the schedule as one compiled call (the default: no per-kernel Python
    dispatch, which is ~10 % of a small MLP's step); "python" runs the same schedule as plain
    Python calling the compiled kernels: no driver compile (a second or more per new program),
    which is what a test suite compiling hundreds of small programs wants."""

    def __init__(self, program, code, driver="njit"):
        if driver not in DRIVERS:
            raise ValueError(f"driver must be one of {DRIVERS}, got {driver!r} "
                             f"(from FUSEGRAD_DRIVER?)")
        self.driver = driver
        t0 = time.perf_counter()
        hits = []
        for name, text in code.kernels.items():
            _, hit = cache.load_module(name, text)
            hits.append(hit)
        driver_name = cache.content_name("driver", code.driver)
        module, driver_hit = cache.load_module(driver_name, code.driver)
        self.module = module
        self.load_seconds = time.perf_counter() - t0
        self.cache_hit = driver_hit and all(hits)
        self.cache_reason = (
            "the driver and every kernel were on disk" if self.cache_hit else
            "new program structure: driver written" if not driver_hit else
            "new kernels written")
        self.kernel_files = len(code.kernels)
        self.kernel_files_reused = sum(hits)
        self.driver_path = str(cache.cache_dir() / f"{driver_name}.py")
        fused, plan = program.fused, program.plan
        consts = [n.attrs["value"].array for n in fused.nodes if n.op == "constant"]
        written = {w for v, (kind, w) in plan.storage.items() if kind == "input"
                   and v not in fused.inputs} | {i for _, i in plan.copies_back}
        run = module.run if driver == "njit" else module.run_python
        self.executable = Executable(run, code.dims, code.fconst, plan.arena_bytes,
                                     code.scratch_elements, consts,
                                     output_storage(fused, plan), written, fused.input_names)
        self.compile_seconds = None  # measured at the first run

    def run(self, inputs) -> bool:
        if self.compile_seconds is None:
            t0 = time.perf_counter()
            ok = self.executable.run(inputs)
            self.compile_seconds = time.perf_counter() - t0
            return ok
        return self.executable.run(inputs)


def scalar_input(value, dtype) -> np.ndarray:
    return np.asarray(value, dtype=dtype).reshape(1)
