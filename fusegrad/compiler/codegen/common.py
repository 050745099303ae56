"""What the CPU and CUDA code generators share: names for values and dtypes, the driver's tables
of numbers, and the loop-nest scopes kernels are emitted into.

Only plain Python that writes no backend-specific text: each backend keeps its own loops, kernels
and driver lines. Moving code here must not change one character of what either backend
generates (the CPU's kernel files are cached on disk by name).
"""
from __future__ import annotations

LOOP_KINDS = ("elementwise", "row", "column", "row+column")  # kernel kinds that are loop nests

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


def downstream(nodes, sources) -> set:
    """`sources` and every value computed from them by `nodes` (in definition order)."""
    tainted = set(sources)
    for n in nodes:
        if any(v in tainted for v in n.inputs):
            tainted.update(n.outputs)
    return tainted


class Scope:
    """Locals defined at one level of a kernel's loop nest, and the lines that define them.

    Levels are names: S once per call (or thread), I per row, J per element, CS/CJ the combine
    pass's scalar part and its loop over columns. A scope may stand for several levels at once:
    CUDA's flat elementwise body computes per-row and per-element values alike (I and J)."""

    def __init__(self, levels, parent=None):
        # one level by name ("CS" is one level, not two letters) or several
        self.levels = frozenset({levels} if isinstance(levels, str) else levels)
        self.parent = parent
        self.names: dict = {}
        self.lines: list[str] = []

    @property
    def level(self) -> str:
        """The level of a scope of one level."""
        (level,) = self.levels
        return level

    def lookup(self, v):
        s = self
        while s is not None:
            if v in s.names:
                return s.names[v]
            s = s.parent
        return None

    def at(self, levels):
        """This scope or the nearest enclosing one at any of `levels` (None if none is)."""
        s = self
        while s is not None and s.levels.isdisjoint(levels):
            s = s.parent
        return s
