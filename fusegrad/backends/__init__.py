"""Targets: how a traced graph is compiled and run on each one, behind one protocol.

    BACKENDS = {"cpu": ..., "interpret": ..., "cuda": ...}   # target name -> Backend class

A Runner (backend.py) owns what every target shares — the graph, the loss guard, the middle
end's Program, the compile phases, the cross-check against the interpreter — and hands the rest
to its target's Backend:

    backend = BACKENDS[target](job)     # job: the Runner (graph, guard, remat, program, phases)
    backend.compile()                    # everything before the first run
    ok = backend.run(inputs)             # False: the loss was not finite, nothing was written
    backend.output(k, copy=True)         # output k of the last run, as a NumPy array
    backend.profile(inputs, repeats)     # [(what a kernel call computes, seconds), ...]
    backend.source()                     # the generated code, commented for people
    backend.stats()                      # what this target adds to Runner.stats()

A new target is a module here with one Backend subclass and a row in BACKENDS.
"""
from __future__ import annotations


class Backend:
    """The protocol (see the module docstring); the defaults suit a target without kernels."""

    name = "?"
    # the compiled code writes updated parameters and optimizer state into its inputs itself
    # (the interpreter returns them as outputs, and TrainStep copies them)
    updates_in_place = True
    compiled = None  # the CompiledProgram, where the target has one

    def __init__(self, job):
        self.job = job

    def compile(self) -> None:
        pass

    def run(self, inputs) -> bool:
        raise NotImplementedError

    def output(self, k, copy=True):
        raise NotImplementedError

    def profile(self, inputs, repeats=5) -> list:
        raise RuntimeError(f"profile() times compiled kernels; target={self.name!r} has none: "
                           f"use target='cpu' or 'cuda'")

    def source(self) -> str:
        raise NotImplementedError

    def stats(self) -> dict:
        return {}


def backend_class(target: str):
    """The Backend class of `target` (imported on first use: CUDA's needs numba.cuda)."""
    from importlib import import_module

    module, cls = BACKENDS[target]
    return getattr(import_module(f"{__name__}.{module}"), cls)


# target -> (module in this package, Backend class)
BACKENDS = {
    "cpu": ("cpu", "CpuBackend"),
    "interpret": ("interpret", "InterpretBackend"),
    "cuda": ("cuda", "CudaBackend"),
}
