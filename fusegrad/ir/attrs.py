"""Immutable, hashable node attributes (so nodes can be compared and CSE'd by value)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class ConstArray:
    """A NumPy array held by a `constant` node: immutable, hashed and compared by value."""

    __slots__ = ("array", "_hash")

    def __init__(self, array):
        a = np.array(array, copy=True)
        a.flags.writeable = False
        self.array = a
        self._hash = hash((a.dtype.str, a.shape, a.tobytes()))

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return (
            isinstance(other, ConstArray)
            and self._hash == other._hash
            and self.array.dtype == other.array.dtype
            and self.array.shape == other.array.shape
            and self.array.tobytes() == other.array.tobytes()
        )

    def __repr__(self):
        a = self.array
        if a.size == 1:  # str of a NumPy scalar: float32 0.9 prints as 0.9, not 0.8999999761
            return str(a.reshape(())[()])
        if a.size <= 6:
            return np.array2string(a.ravel(), separator=",").replace("\n", "")
        return f"<{a.dtype.name}{list(a.shape)} array>"


def _freeze(value):
    if isinstance(value, np.ndarray):
        return ConstArray(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


class Attrs(Mapping):
    """A frozen mapping of attribute name -> hashable value, printed as `[k=v, ...]`."""

    __slots__ = ("_items", "_hash", "_map", "_memo")

    def __init__(self, mapping=None, **kwargs):
        merged = dict(mapping or {}, **kwargs)
        self._items = tuple(sorted((k, _freeze(v)) for k, v in merged.items()))
        self._hash = hash(self._items)
        self._map = dict(self._items)  # lookups by name (passes make ~100k a program)
        self._memo = None  # keys derived from this object (see memo())

    def memo(self, name, compute):
        """A key derived from these attributes, computed once per Attrs object: CSE's strict
        key, the structural key of a kernel. Kept per object, not per equal value: equality
        here says 0.0 == -0.0, which those keys must not."""
        memo = self._memo
        if memo is None:
            memo = self._memo = {}
        value = memo.get(name)
        if value is None:
            value = memo[name] = compute(self)
        return value

    def __getitem__(self, key):
        return self._map[key]

    def items(self):
        return self._map.items()  # in name order, as _items

    def __iter__(self):
        return (k for k, _ in self._items)

    def __len__(self):
        return len(self._items)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, Attrs) and self._items == other._items

    def replace(self, **changes) -> "Attrs":
        return Attrs(dict(self._items, **changes))

    def __repr__(self):
        if not self._items:
            return ""
        return "[" + ", ".join(f"{k}={_show(v)}" for k, v in self._items) + "]"


def _show(v):
    if isinstance(v, tuple):
        return "(" + ",".join(_show(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, float):
        return repr(v)
    return repr(v) if not isinstance(v, str) else v
