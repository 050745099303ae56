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

    def walk(t):
        if isinstance(t, dict):
            keys = tuple(t.keys())
            return TreeDef("dict", keys, tuple(walk(t[k]) for k in keys))
        if isinstance(t, (list, tuple)) and not hasattr(t, "_fields"):
            return TreeDef(type(t).__name__, (), tuple(walk(x) for x in t))
        if t is None:
            return TreeDef("none")
        leaves.append(t)
        return LEAF

    return leaves, walk(tree)


def unflatten(treedef: TreeDef, leaves):
    it = iter(leaves)

    def build(td):
        if td.kind == "leaf":
            return next(it)
        if td.kind == "none":
            return None
        kids = [build(c) for c in td.children]
        if td.kind == "dict":
            return dict(zip(td.keys, kids))
        return kids if td.kind == "list" else tuple(kids)

    out = build(treedef)
    rest = list(it)
    if rest:
        raise ValueError(f"unflatten: {len(rest)} leaves left over")
    return out


def leaf_paths(treedef: TreeDef, prefix: str) -> list[str]:
    """Readable path of every leaf: prefix['w1'], prefix[0][1] ..."""
    paths: list[str] = []

    def walk(td, path):
        if td.kind == "leaf":
            paths.append(path)
        elif td.kind == "dict":
            for k, c in zip(td.keys, td.children):
                walk(c, f"{path}[{k!r}]")
        else:
            for i, c in enumerate(td.children):
                walk(c, f"{path}[{i}]")

    walk(treedef, prefix)
    return paths


def tree_map(fn, tree, *rest):
    leaves, td = flatten(tree)
    others = [flatten(r)[0] for r in rest]
    return unflatten(td, [fn(x, *ys) for x, *ys in zip(leaves, *others)])
