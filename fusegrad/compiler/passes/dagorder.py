"""A DAG whose vertices are merged one pair at a time (fusion's kernels), kept in topological order.

Fusion asks, for every candidate merge of two kernels, whether running them as one would need a
value that itself needs the merged kernel: a path from one to the other through a third vertex.
Walking everything downstream of the pair answers that, but costs the size of the graph per
question, so a whole fusion costs its square. A topological order of the current kernel graph
bounds the walk: a path from `lo` to `hi` (lo ordered first) only passes through vertices ordered
between them. Even that range can be most of the graph (a backward node merged into the forward
kernel whose output it reads), but then one side is small: the backward node has few ancestors
in the range, or the forward kernel few descendants. Either walk alone decides the question
(lo reaches hi forwards iff hi reaches lo backwards), so both run in turns and the first to
finish answers: the cost is that of the smaller side.

After a merge the order is repaired from that side alone, in the spirit of Pearce & Kelly's
dynamic topological sort: when the walk back from `hi` finished, what leads to `hi` moves to just
before `lo` and the merged vertex takes `lo`'s place; when the walk forward from `lo` finished,
what `lo` leads to moves to just after `hi` and the merged vertex takes `hi`'s place. Positions
are integers with gaps so that a move renumbers only the vertices moved (all of them are
renumbered, rarely, when a gap is used up).

The edges between vertices are kept too (merged as the vertices merge), so that a walk steps over
a kernel's few outside neighbours, not over every operand of every node inside it.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Hashable, Iterable

Vertex = Hashable

SPACING = 1 << 32  # room between neighbouring positions after a renumbering


@dataclass(frozen=True)
class Merge:
    """A merge found legal: which vertex comes first, and the vertices the order must move
    (what `lo` leads to, to go after the merged vertex, or what leads to `hi`, to go before)."""

    keep: Vertex
    drop: Vertex
    lo: Vertex
    hi: Vertex
    after: bool
    moved: set


class MergeableDag:
    """`order`: the vertices in a topological order; `edges`: (from, to) pairs (repeats and
    self-loops are ignored)."""

    def __init__(self, order: Iterable[Vertex], edges: Iterable[tuple[Vertex, Vertex]]):
        order = list(order)
        # neighbour sets as dicts (ordered, so that walks and timings do not vary run to run)
        self.succ: dict = {v: {} for v in order}
        self.pred: dict = {v: {} for v in order}
        for a, b in edges:
            if a != b:
                self.succ[a][b] = None
                self.pred[b][a] = None
        self.position: dict = {}
        self.taken: list = []
        self._renumber(order)

    def _renumber(self, order) -> None:
        """Positions SPACING apart, in `order` (in place: callers hold the containers)."""
        order = list(order)
        self.position.clear()
        self.position.update((v, (k + 1) * SPACING) for k, v in enumerate(order))
        self.taken[:] = sorted(self.position.values())  # every position in use, ascending

    def _walk(self, start, target, neighbours: dict, inside):
        """A generator stepping once per vertex reached from `start` through `neighbours`
        within the positions where `inside(position)` holds, not counting the direct step from
        start to target. It returns the set of vertices reached, or None when it reaches
        `target` (a path through a third vertex)."""
        position = self.position
        seen: set = set()
        stack = [v for v in neighbours[start] if v != target]
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            if v == target:
                return None
            if inside(position[v]):
                seen.add(v)
                stack.extend(neighbours[v])
                yield
        return seen

    def merge_plan(self, keep, drop) -> Merge | None:
        """How to merge `drop` into `keep`, or None when that would close a cycle. Changes
        nothing: contract() carries the plan out."""
        position = self.position
        lo, hi = sorted((keep, drop), key=position.__getitem__)
        bottom, top = position[lo], position[hi]
        forward = self._walk(lo, hi, self.succ, lambda p: p < top)
        backward = self._walk(hi, lo, self.pred, lambda p: p > bottom)
        which, reached = _first_to_finish(forward, backward)
        if reached is None:
            return None
        return Merge(keep, drop, lo, hi, after=which == 0, moved=reached)

    def contract(self, merge: Merge) -> None:
        """Carry out a merge_plan (made since the last contract)."""
        self._merge_edges(merge.keep, merge.drop)
        self._repair_order(merge)

    def _merge_edges(self, keep, drop) -> None:
        """`drop`'s edges become `keep`'s."""
        succ, pred = self.succ, self.pred
        for v in succ.pop(drop):
            del pred[v][drop]
            if v != keep:
                pred[v][keep] = succ[keep][v] = None
        for v in pred.pop(drop):
            del succ[v][drop]
            if v != keep:
                succ[v][keep] = pred[keep][v] = None

    def _repair_order(self, merge: Merge) -> None:
        """No path lo -> x -> hi exists, so what lo leads to and what leads to hi may move past
        the pair: move the side the walk finished."""
        position, taken = self.position, self.taken
        if merge.after:  # the merged vertex takes hi's place, what lo leads to goes after it
            place, freed = merge.hi, merge.lo
        else:  # the merged vertex takes lo's place, what leads to hi goes before it
            place, freed = merge.lo, merge.hi
        for v in (freed, *merge.moved):
            del taken[bisect_left(taken, position[v])]
        del position[freed]
        self._place(sorted(merge.moved, key=position.__getitem__), place, merge.after)
        position[merge.keep] = position.pop(place)

    def _place(self, moved: list, anchor, after: bool) -> None:
        """Give `moved` (out of `taken`, in order) the positions in the gap just after (or
        before) `anchor`'s, renumbering everything first if that gap is too small."""
        position, n = self.position, len(moved)
        if not moved:
            return
        k, start, step = self._gap(anchor, n, after)
        if step == 0:  # used up: renumber the others (SPACING apart leaves room for all)
            gone = set(moved)
            self._renumber(sorted((v for v in position if v not in gone),
                                  key=position.__getitem__))
            k, start, step = self._gap(anchor, n, after)
            assert step > 0, "SPACING must exceed the number of vertices"
        new = [start + i * step for i in range(1, n + 1)]
        position.update(zip(moved, new))
        self.taken[k + 1 if after else k:k + 1 if after else k] = new

    def _gap(self, anchor, n: int, after: bool):
        """(index of anchor's position in taken, the position n new ones follow, the step
        between them) for n positions just after (or before) anchor's; the step is 0 when the
        gap is too small."""
        taken = self.taken
        k = bisect_left(taken, self.position[anchor])
        if after:
            start = taken[k]
            end = taken[k + 1] if k + 1 < len(taken) else start + (n + 1) * SPACING
        else:
            end = taken[k]
            start = taken[k - 1] if k > 0 else end - (n + 1) * SPACING
        return k, start, (end - start) // (n + 1)


def _first_to_finish(*walks):
    """Step the walks in turn until one returns: (its index, what it returned)."""
    while True:
        for i, walk in enumerate(walks):
            try:
                next(walk)
            except StopIteration as done:
                return i, done.value
