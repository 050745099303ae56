"""The contenders: one object per way of running a workload's training step.

Each has `setup(params, x, y)` (copies what it needs, builds its step; compiles nothing yet),
`step()` (one training step, returns a loss handle), `sync(handle)` (waits for asynchronous
work), `loss_value(handle)` (a Python float) and `details()` (a short note for the report).
`compile_seconds` is filled in by the timing driver (timing.py): the excess of the first steps,
which compile, over steady-state steps.

A contender whose library is missing raises Unavailable from its constructor; the run shows a
"not installed" row instead of failing. Each contender runs in its own process (worker.py).
"""
from __future__ import annotations

from benchmarks.workloads import Workload


class Unavailable(Exception):
    """This contender cannot run here (library not installed, backend not available)."""


class Contender:
    name = "?"
    is_floor = False   # the GEMMs-alone baseline (no loss, not checked for agreement)

    def __init__(self, workload: Workload):
        self.workload = workload
        self.compile_seconds = None

    def setup(self, params: dict, x, y) -> None:
        raise NotImplementedError

    def step(self):
        raise NotImplementedError

    def sync(self, handle) -> None:
        """Block until the work behind `handle` is done (asynchronous runtimes)."""

    def loss_value(self, handle) -> float:
        return float(handle)

    def details(self) -> str:
        return ""


def _fusegrad(w, target):
    from benchmarks.fusegrad_contender import Fusegrad

    return Fusegrad(w, target)


def _cpu_only(target):
    if target != "cpu":
        raise Unavailable(f"CPU only (not run with --target {target})")


def _numpy(w, target):
    _cpu_only(target)
    from benchmarks.numpy_backprop import NumpyBackprop

    return NumpyBackprop(w)


def _torch_eager(w, target):
    from benchmarks.torch_contenders import TorchEager

    return TorchEager(w, target)


def _torch_compile(w, target):
    from benchmarks.torch_contenders import TorchCompile

    return TorchCompile(w, target)


def _jax(w, target):
    _cpu_only(target)
    from benchmarks.jax_contender import JaxJit

    return JaxJit(w)


def _floor(w, target):
    _cpu_only(target)  # its GEMMs run in NumPy's BLAS: no floor for a GPU
    from benchmarks.gemm_floor import GemmFloor

    return GemmFloor(w)


# name -> factory(workload, target); fusegrad first: every ratio is taken against it
FACTORIES = {
    "fusegrad": _fusegrad,
    "numpy": _numpy,
    "torch eager": _torch_eager,
    "torch.compile": _torch_compile,
    "jax jit": _jax,
    "GEMMs alone": _floor,
}
