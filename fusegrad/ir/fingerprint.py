"""A graph's fingerprint: the hash of everything that decides what its compiled program does.

Two graphs with the same fingerprint compile to the same program, so a program cache can be keyed
by it. It covers the ops, their attributes (constant values included: the passes simplify by
them), the wiring, every type and shape, the input roles and output aliases. It leaves out what
only a person reads: source locations, value hints, and the names of inputs and outputs (the
runtime takes those from the current graph), so a comment added above a model, a renamed local
variable or a moved line compile nothing new.
"""
from __future__ import annotations

import hashlib

from .attrs import Attrs, ConstArray


def _attr(value):
    if isinstance(value, ConstArray):
        a = value.array
        return ("array", a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).hexdigest())
    if isinstance(value, tuple):
        return tuple(_attr(v) for v in value)
    if isinstance(value, float):
        return ("f", value.hex())
    return value


def _attrs(attrs: Attrs) -> tuple:
    return tuple((k, _attr(v)) for k, v in attrs.items())


def _encode(graph, h, index: dict) -> None:
    """Feed `graph` (and nested regions) to hash `h`; `index` numbers values in definition
    order, so only the wiring, not object identity, enters the hash."""
    for v in graph.inputs:
        index.setdefault(v, len(index))
    h.update(repr([(v.dtype, v.shape) for v in graph.inputs]).encode())
    for n in graph.nodes:
        ins = tuple(index.get(v, -1) for v in n.inputs)
        for v in n.outputs:
            index[v] = len(index)
        h.update(repr((n.op, _attrs(n.attrs), ins, tuple((v.dtype, v.shape) for v in n.outputs),
                       n.part)).encode())
        if n.region is not None:
            h.update(b"{")
            _encode(n.region, h, dict(index))
            h.update(b"}")
    h.update(repr(tuple(index.get(v, -1) for v in graph.outputs)).encode())


def fingerprint(graph, *extra) -> str:
    """SHA-256 (hex) of `graph`'s structure and `extra` (compile options)."""
    h = hashlib.sha256()
    h.update(repr((graph.input_roles, graph.aliases, extra)).encode())
    _encode(graph, h, {})
    return h.hexdigest()
