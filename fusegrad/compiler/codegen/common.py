"""Small facts the CPU and CUDA code generators share: dtype names, structural names for a
region's values, and the CUDA driver's tables of numbers. (Kernel kinds are rows of
passes/kernel_kinds.py.) The shared loop nest is
loop_nest.py; the shared walk over a program's schedule is schedule.py.
"""
from __future__ import annotations

# the NumPy scalar constructor of each dtype: kernels cast with it, the CPU driver views with it
NP_TYPE = {"float32": "np.float32", "float64": "np.float64", "int32": "np.int32",
           "int64": "np.int64", "bool": "np.bool_"}


def np_type(dtype: str) -> str:
    """The NumPy scalar constructor a kernel casts with (np.float32, ...)."""
    return NP_TYPE[dtype]


class Table:
    """A table of numbers the driver reads (`dims`: int64 sizes, `fconst`: float64 constants),
    so that the driver's text does not depend on them."""

    def __init__(self, name, cast):
        self.name, self.cast = name, cast
        self.values: list = []

    def __call__(self, *values, always_slice=False) -> str:
        k = len(self.values)
        self.values.extend(self.cast(v) for v in values)
        if len(values) == 1 and not always_slice:
            return f"{self.name}[{k}]"
        return f"{self.name}[{k}:{k + len(values)}]"


def structural_names(region) -> dict:
    """r0, r1, ... in definition order, nested regions included, so that a kernel's text depends
    only on its structure. (The CPU's loop regions are flat; CUDA's multi kernels nest.)"""
    names: dict = {}

    def walk(g):
        for v in g.inputs:
            names.setdefault(v, f"r{len(names)}")
        for n in g.nodes:
            for v in n.outputs:
                names.setdefault(v, f"r{len(names)}")
            if n.region is not None:
                walk(n.region)

    walk(region)
    return names
