"""Structural keys of graphs: what a fused kernel's generated code depends on, and nothing else.

Fusion names every kernel after the structure of its region (passes/fusion.py), so that kernels
with the same structure share one generated function, and one entry of the on-disk kernel cache,
whatever the sizes they run on: the identical layers of a model compile once. The generated code
takes sizes and constant values as arguments, so the key leaves them out:

    kept      ops; attributes (sizes abstracted, see below); dtypes; ranks; the wiring (which value
              feeds which input of which node, by position); nested regions, with the same rules
    dropped   the numbers in types (only the rank is kept); the numbers in size-valued
              attributes (SIZE_ATTRS: only a tuple's length is kept); the values of constants
              (only their dtype and rank); source locations; parts; Var hints and names

It used to be a digest of the region's printed text with sizes stripped by regular expressions;
this walks the Graph instead (it is cheaper, and a change to the printer cannot rename kernels).

    structure_key(region)      a nested tuple: equal keys <=> same structure
    structure_digest(region)   a short stable hex digest of the key (the same in every process)
"""
from __future__ import annotations

import hashlib

from .attrs import ConstArray

# attributes that hold sizes: reshape/broadcast_to/iota targets, slice windows, fold outputs,
# scatter_add's dimension
SIZE_ATTRS = frozenset({"shape", "sizes", "starts", "output_size", "dim_size"})


def _value(v):
    """An attribute value, exactly (floats by repr: 0.0 and -0.0 differ, 1 and 1.0 differ)."""
    if isinstance(v, tuple):
        return ("tuple",) + tuple(_value(x) for x in v)
    if isinstance(v, ConstArray):
        return ("array", v.array.dtype.str, v.array.ndim)  # its numbers are data
    return (type(v).__name__, repr(v))


def _size(v):
    """A size-valued attribute without its numbers: the length of a tuple of sizes."""
    return ("sizes", len(v)) if isinstance(v, tuple) else ("size",)


def _attrs(node):
    if node.op == "constant":  # the value is an argument of the generated code
        return ()
    return node.attrs.memo("structure", _structure_attrs)


def _structure_attrs(attrs) -> tuple:
    return tuple((k, _size(v) if k in SIZE_ATTRS else _value(v)) for k, v in attrs.items())


def _type(t):
    return t.dtype, t.ndim


def _part_marks(graph) -> tuple:
    """Whether each node begins another part than the node before it (the first: than
    "forward"). Generated code does not depend on parts, but kernel names always have (the
    names were digests of the printed region, where each change of part prints a line), and
    keeping them keeps the kernels compiled, one per name, as they were."""
    marks, part = [], "forward"
    for n in graph.nodes:
        marks.append(n.part != part)
        part = n.part
    return tuple(marks)


def structure_key(graph, _nested=False) -> tuple:
    """The structure of `graph` (a kernel region) as a nested tuple of strings and ints: values
    are numbered in definition order, inputs first, and nodes refer to their operands by
    number. Nested regions are keyed the same way, bound to their node's operands."""
    number: dict = {}  # Var -> its number
    for v in graph.inputs:
        number[v] = len(number)
    nodes = []
    for n in graph.nodes:
        operands = tuple(number[v] for v in n.inputs)
        for v in n.outputs:
            number[v] = len(number)
        nested = structure_key(n.region, _nested=True) if n.region is not None else None
        nodes.append((n.op, _attrs(n), operands, tuple(_type(v.type) for v in n.outputs), nested))
    inputs = tuple(_type(v.type) for v in graph.inputs)
    marks = () if _nested else _part_marks(graph)  # a nested region's parts never showed
    return inputs, tuple(nodes), tuple(number[v] for v in graph.outputs), marks


def structure_digest(graph, salt: str = "") -> str:
    """A 10-hex-digit digest of `salt` and structure_key(graph), stable across processes (the
    kernel cache on disk is keyed by names made from it)."""
    text = repr((salt, structure_key(graph)))
    return hashlib.sha1(text.encode()).hexdigest()[:10]
