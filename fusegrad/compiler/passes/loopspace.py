"""Iteration spaces of loop kernels and the index map of every value inside one.

A loop kernel iterates over a 2-D space (R, C): the N-d shape `shape` split at axis `split`,
R = prod(shape[:split]), C = prod(shape[split:]). Every value the kernel touches is addressed
by one of four maps from the loop indices (i, j) to its own linear (C-order) index:

    FULL    i * C + j    a value with R*C elements
    COL     i            one element per row (row reductions, keepdims results, per-row scalars)
    ROW     j            one element per column (biases, column reductions)
    SCALAR  0            one element

Maps are inferred by propagating constraints through the kernel's nodes (infer_maps); a set of
nodes whose constraints cannot all be met is not a legal kernel. Because a map is a linear
index, `reshape` keeps the map of its input: reshapes are free inside kernels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from ...ir.ops import PRIMITIVES, prims_where

FULL, COL, ROW, SCALAR = "full", "col", "row", "scalar"

# the primitives' roles in a loop kernel (ir/ops.py LOOP_ROLES), as sets for the inner loops
REDUCTIONS = frozenset(prims_where(loop="reduce"))  # a reduction loop over i or j
_MAPS = frozenset(prims_where(loop="map"))  # operands broadcast into the output
_VIEWS = frozenset(prims_where(loop="view"))  # the operand's linear index: reshape
_PROPAGATING = _MAPS | _VIEWS  # maps flow through them, both ways


def is_loop_op(node) -> bool:
    if node.op == "constant":
        return node.out.type.size == 1  # scalars become literals; arrays are buffers
    return PRIMITIVES[node.op].loop is not None


@dataclass(frozen=True)
class Space:
    shape: tuple
    split: int

    R: int = field(init=False, repr=False, compare=False)  # prod(shape[:split])
    C: int = field(init=False, repr=False, compare=False)  # prod(shape[split:])

    def __post_init__(self):
        # computed once: fusion asks a candidate kernel's space at every value it maps
        object.__setattr__(self, "R", prod(self.shape[:self.split]))
        object.__setattr__(self, "C", prod(self.shape[self.split:]))
        object.__setattr__(self, "_numel", {FULL: self.R * self.C, COL: self.R, ROW: self.C,
                                            SCALAR: 1})

    def numel(self, m: str) -> int:
        return self._numel[m]

    def __str__(self):
        return f"{self.R}x{self.C}"


def _split_points(shape, R):
    """Axes k with prod(shape[:k]) == R."""
    return [k for k in range(len(shape) + 1) if prod(shape[:k]) == R]


def broadcast_map(out_map, in_shape, out_shape, space) -> str | None:
    """Map of an operand of shape in_shape broadcast into a value of out_shape with out_map."""
    if tuple(in_shape) == tuple(out_shape):
        return out_map
    if prod(in_shape) == 1:
        return SCALAR
    if out_map != FULL:
        return None  # a partial broadcast inside a per-row/per-column value: not a 2-D map
    padded = (1,) * (len(out_shape) - len(in_shape)) + tuple(in_shape)
    for k in _split_points(out_shape, space.R):
        if all(d == 1 for d in padded[k:]) and padded[:k] == tuple(out_shape[:k]):
            return COL
        if all(d == 1 for d in padded[:k]) and padded[k:] == tuple(out_shape[k:]):
            return ROW
    return None


def reduction_kind(node, space):
    """How a reduction fits `space`: (kind, input map, output map) or None.

    'row': a FULL value summed over j (its trailing axes make up C) -> COL;
    'col': a FULL value summed over i (its leading axes make up R) -> ROW, or a COL value
    summed over all of i -> SCALAR (e.g. the batch mean of per-row losses).
    """
    shape = node.inputs[0].shape
    axes = tuple(node.attrs["axes"])
    n, size = len(shape), prod(shape)
    if not axes:
        return None
    trailing = axes == tuple(range(n - len(axes), n))
    leading = axes == tuple(range(len(axes)))
    if size == space.R * space.C:
        if trailing and prod(shape[n - len(axes):]) == space.C and space.C > 1:
            return "row", FULL, COL
        if leading and prod(shape[:len(axes)]) == space.R and space.R > 1:
            return "col", FULL, ROW
        if len(axes) == n and space.R == 1:  # a full reduction of a single-row space
            return "row", FULL, COL
    if size == space.R and len(axes) == n and space.R > 1:
        return "col", COL, SCALAR
    return None


def space_for(nodes, values_out, reductions=None) -> Space:
    """The space of a candidate kernel: set by its largest reduction if it has one (split where
    the reduced axes begin or end), else by its largest output (split before the last axis,
    so the innermost loop runs over contiguous memory). `reductions`: the reduction nodes
    among `nodes`, in order, if the caller knows them."""
    if reductions is None:
        reductions = [n for n in nodes if n.op in REDUCTIONS]
    if reductions:
        biggest = max(reductions, key=lambda n: n.inputs[0].type.size)
        shape = tuple(biggest.inputs[0].shape)
        axes = tuple(biggest.attrs["axes"])
        nd = len(shape)
        if axes == tuple(range(nd)):
            return Space(shape, 0)
        if axes == tuple(range(nd - len(axes), nd)):
            return Space(shape, nd - len(axes))
        if axes == tuple(range(len(axes))):
            return Space(shape, len(axes))
        return Space(shape, -1)  # reduced axes in the middle: infer_maps refuses it
    anchor = max(values_out, key=lambda v: v.type.size)
    shape = tuple(anchor.shape)
    return Space(shape, max(len(shape) - 1, 0))


class MapConflict(Exception):
    pass


def infer_maps(nodes, space: Space, inputs=(), known=None) -> tuple[dict, dict]:
    """Assign a map to every value of `nodes` (a kernel body in topological order).

    Returns (maps: Var -> map, reductions: node -> 'row' | 'col'). Raises MapConflict when the
    nodes cannot share the space. Propagates both ways until nothing changes: outputs to inputs
    through broadcasting, inputs to outputs where shapes are equal, reshape both ways.
    `known`: maps to start from (fusion: those of the rest of a kernel; returned with them).
    (Fusion runs this for every candidate merge: the loops keep their lookups local.)
    """
    if space.split < 0:
        raise MapConflict("reduction over axes that are neither leading nor trailing")
    maps: dict = dict(known) if known else {}
    reductions: dict = {}
    numel = space._numel
    # two different maps address the same elements only when R or C is 1
    degenerate = space.R == 1 or space.C == 1
    known = maps.get

    def assign(v, m):
        if m is None:
            return False
        old = known(v)
        if old is None:
            if v.type.size != numel[m]:
                raise MapConflict(f"{v.type} cannot be {m} in space {space}")
            maps[v] = m
            return True
        if old != m and not (degenerate and _equivalent(old, m, space)):
            raise MapConflict(f"{v.type} is both {old} and {m}")
        return False

    for n in nodes:
        if n.op in REDUCTIONS:
            fit = reduction_kind(n, space)
            if fit is None:
                raise MapConflict(f"{n.op} over {n.attrs['axes']} does not fit space {space}")
            reductions[n] = fit[0]
            assign(n.inputs[0], fit[1])
            assign(n.out, fit[2])
    # seed: values shaped like the space
    shape = tuple(space.shape)
    values = set()
    for n in nodes:
        for v in (*n.inputs, *n.outputs):
            values.add(v)
            if v in maps:
                continue
            if v.type.shape == shape:
                assign(v, FULL)
            elif v.type.size == 1:
                assign(v, SCALAR)
    propagating = [n for n in nodes if n.op in _PROPAGATING]  # not reductions or sources
    # an operand no map can broadcast from its use (seen while propagating; the check after
    # finds it again, with its message)
    unmappable = False
    changed = True
    while changed:
        changed = False
        for n in propagating:
            out = n.out
            if n.op in _VIEWS:
                src = n.inputs[0]
                if out in maps:
                    changed |= assign(src, maps[out])
                if src in maps:
                    changed |= assign(out, maps[src])
                continue
            m = known(out)
            if m is not None:
                out_shape = out.type.shape
                for v in n.inputs:
                    in_shape = v.type.shape
                    want = m if in_shape == out_shape else broadcast_map(m, in_shape, out_shape,
                                                                         space)
                    if want is None:
                        unmappable = True
                    elif known(v) != want:  # else assign changes nothing
                        changed |= assign(v, want)
            else:
                out_shape = out.type.shape
                for v in n.inputs:
                    if v in maps and v.type.shape == out_shape:
                        changed |= assign(out, maps[v])
    # The last round changed nothing, so every operand of a node with a map already has the
    # map that node's use needs (assign raised otherwise) unless it is unmappable: the full
    # check is needed only then, for a value without a map, or for an iota's index.
    unmapped = any(v not in maps for v in values) if known else len(maps) < len(values)
    if unmappable or unmapped or any(n.op == "iota" for n in nodes):
        _check_maps(nodes, maps, space)
    return maps, reductions


def _check_maps(nodes, maps, space) -> None:
    """Every value has a map, every operand the map its use needs: else MapConflict."""
    degenerate = space.R == 1 or space.C == 1
    for n in nodes:
        for v in (*n.inputs, *n.outputs):
            if v not in maps:
                raise MapConflict(f"no map for {v.type} (used by {n.op})")
        if n.op in _MAPS:
            m, out_shape = maps[n.out], n.out.type.shape
            for v in n.inputs:
                in_shape = v.type.shape
                want = m if in_shape == out_shape else broadcast_map(m, in_shape, out_shape, space)
                if want is None or (want != maps[v] and not (
                        degenerate and _equivalent(want, maps[v], space))):
                    raise MapConflict(f"{n.op}: operand {v.type} is {maps[v]}, needs {want}")
        if n.op == "iota" and iota_index(n, maps[n.out], space) is None:
            raise MapConflict(f"iota along axis {n.attrs['axis']} is not i or j here")


def _equivalent(a, b, space) -> bool:
    """Maps that address the same elements because R or C is 1."""
    if space.R == 1 and space.C == 1:
        return True
    if space.R == 1:
        norm = {FULL: ROW, COL: SCALAR}
        return norm.get(a, a) == norm.get(b, b)
    if space.C == 1:
        norm = {FULL: COL, ROW: SCALAR}
        return norm.get(a, a) == norm.get(b, b)
    return False


def iota_index(node, m, space) -> str | None:
    """Loop index an iota takes its value from: 'i' or 'j' when its axis is the whole of R or C."""
    shape, axis = node.out.shape, node.attrs["axis"]
    if m == FULL:
        if space.split == len(shape) - 1 and axis == len(shape) - 1:
            return "j"
        if space.split == 1 and axis == 0 and len(shape) >= 1:
            return "i" if prod(shape[1:]) == space.C else None
    if m == ROW and shape[axis] == prod(shape):
        return "j"
    if m == COL and shape[axis] == prod(shape):
        return "i"
    return None
