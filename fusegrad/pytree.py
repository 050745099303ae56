"""Pytrees: nested dict / list / tuple containers of arrays, flattened to leaves and back.

A TreeDef is hashable (it keys compile caches) and knows a readable path for each leaf, such as
`params['w1']` or `args[1][0]`, which names graph inputs in dumps and error messages.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TreeDef:
    kind: str  # "leaf", "none", "dict", "list", "tuple"
    keys: tuple = ()  # dict keys, in order
    children: tuple = ()

    @property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(c.num_leaves for c in self.children)


LEAF = TreeDef("leaf")


def flatten(tree):
    """-> (leaves, treedef). None counts as an empty subtree, like JAX."""
    leaves: list = []
    return leaves, _walk(tree, leaves)


def _walk(t, leaves) -> TreeDef:
    # a module-level function, not a closure: a closure that calls itself is a reference
    # cycle, garbage on every call of a compiled function
    if isinstance(t, dict):
        keys = tuple(t.keys())
        return TreeDef("dict", keys, tuple(_walk(t[k], leaves) for k in keys))
    if isinstance(t, (list, tuple)) and not hasattr(t, "_fields"):
        return TreeDef(type(t).__name__, (), tuple(_walk(x, leaves) for x in t))
    if t is None:
        return TreeDef("none")
    leaves.append(t)
    return LEAF


def unflatten(treedef: TreeDef, leaves):
    it = iter(leaves)
    out = _build(treedef, it)
    rest = list(it)
    if rest:
        raise ValueError(f"unflatten: {len(rest)} leaves left over")
    return out


def _build(td, it):
    if td.kind == "leaf":
        return next(it)
    if td.kind == "none":
        return None
    kids = [_build(c, it) for c in td.children]
    if td.kind == "dict":
        return dict(zip(td.keys, kids))
    return kids if td.kind == "list" else tuple(kids)


def leaf_paths(treedef: TreeDef, prefix: str) -> list[str]:
    """Readable path of every leaf: prefix['w1'], prefix[0][1] ..."""
    paths: list[str] = []
    _paths(treedef, prefix, paths)
    return paths


def _paths(td, path, paths):
    if td.kind == "leaf":
        paths.append(path)
    elif td.kind == "dict":
        for k, c in zip(td.keys, td.children):
            _paths(c, f"{path}[{k!r}]", paths)
    else:
        for i, c in enumerate(td.children):
            _paths(c, f"{path}[{i}]", paths)
