"""Fusion: partition an optimized graph into Kernels, each one loop nest or one library call.

Kernel kinds (the `kind` attribute of a `kernel` node; the printer shows them nested) are the
rows of kernel_kinds.py: elementwise, row, column and row+column loop nests; gemm; opaque (one
data-movement primitive, library calls); multi (the multi-tensor optimizer update).

Greedy producer-consumer merging, then sibling merging (kernels that share an input), then
grouping of the update kernels. A merge must keep one consistent index map per value
(loopspace.infer_maps), must not create a cycle between kernels, and must not mix row and
column reductions. Scalar constants, iotas and scalar-only arithmetic (bias corrections from
the step counter) are cheap, so they are recomputed inside every kernel that needs them instead
of becoming kernels of their own.

The whole partition costs time linear in the graph: the cycle check walks only between the two
kernels in a maintained topological order (dagorder.py), and a merge's loop plan is built from
the two groups' plans (union_plan), so a kernel growing one node at a time does not cost the
square of its size.
"""
from __future__ import annotations

import heapq
from typing import NamedTuple

from ...ir import Attrs, Graph, Node, PRIMITIVES, Var
from ...ir.structure import structure_digest
from .dagorder import MergeableDag
from .kernel_kinds import LOOP_KIND_OF
from .remat import recomputed_nodes
from .loopspace import (COL, FULL, REDUCTIONS, ROW, MapConflict, Space, infer_maps,
                        is_loop_op, space_for)


def _flops(node) -> int:
    """The cost model shown in dumps: the primitive's cost (ir/ops.py) per element."""
    cost = PRIMITIVES[node.op].cost
    if node.op == "scan":  # its body, every step
        return node.attrs["length"] * sum(_flops(n) for n in node.region.nodes)
    if node.op == "matmul":  # per term of each inner product
        a, b = node.inputs
        k = a.shape[-2] if node.attrs["transpose_a"] else a.shape[-1]
        return cost * node.out.type.size * k
    size = node.inputs[0].type.size if node.op in REDUCTIONS else node.out.type.size
    return size * cost


def _is_free(node, free_vars) -> bool:
    """Nodes recomputed inside each kernel that uses them instead of being kernels."""
    if node.op == "constant":
        return node.out.type.size == 1
    if node.op == "iota":
        return True
    return (is_loop_op(node) and node.op not in REDUCTIONS and node.out.type.size == 1
            and all(v in free_vars or v.type.size == 1 for v in node.inputs))


class _Facts(NamedTuple):
    """What try_merge asks of a group's nodes, kept per group and merged with it."""

    all_loopable: bool
    writes_aliased: bool  # writes a parameter or optimizer state
    guard_needs: bool  # the guard value (the loss) depends on it
    after_write: bool  # it (or a free node it recomputes) reads a parameter's new value
    recomputed: bool  # a backward copy of forward nodes (passes/remat.py)
    forward: bool  # in the forward part

    def merge(self, other: "_Facts") -> "_Facts":
        return _Facts(self.all_loopable and other.all_loopable,
                      *(a or b for a, b in zip(self[1:], other[1:])))


class LoopPlan(NamedTuple):
    space: Space
    maps: dict  # Var -> index map (loopspace.infer_maps)
    reductions: dict  # reduction node -> "row" | "col"
    body: list  # the kernel's nodes (_Partition.body)
    outputs: list  # its values needed elsewhere (_Partition.outputs_of)
    reducers: list  # its reduction nodes, in body order


class _Partition:
    def __init__(self, graph: Graph, guard=None):
        self.graph = graph
        # the value checked for finiteness before any parameter is overwritten (the loss): its
        # kernel writes no aliased output and runs before every kernel that does
        self.guard = graph.outputs[guard] if guard is not None else None
        self.aliased = {graph.outputs[o] for o, _ in graph.aliases}
        # recomputed values (passes/remat.py): backward copies of forward nodes, which must
        # not be fused back into the forward kernels they were copied from
        self.recomputed = recomputed_nodes(graph)
        self.nodes = list(graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.producer = {v: n for n in self.nodes for v in n.outputs}
        self.users = graph.users()
        self.outputs = set(graph.outputs)
        self.guard_cone = set()  # the nodes the guard value depends on
        stack = [self.guard] if self.guard is not None else []
        while stack:
            p = self.producer.get(stack.pop())
            if p is not None and p not in self.guard_cone:
                self.guard_cone.add(p)
                stack.extend(p.inputs)
        # the nodes computed from a new parameter or state value: a kernel the guard needs
        # must hold none of them (nor recompute one), or the guard would wait for a write
        written = set(self.aliased)
        self.after_write = set()
        for n in self.nodes:
            if any(v in written for v in n.inputs):
                self.after_write.add(n)
                written.update(n.outputs)
        free_vars: set = set()
        self.free = set()
        self._single_plans: dict = {}  # node -> (the free nodes it needs, its loop plan)
        for n in self.nodes:
            if _is_free(n, free_vars):
                self.free.add(n)
                free_vars.add(n.out)
        # a free value is recomputed inside loop kernels only: one that a graph output or a
        # non-loop kernel needs is computed once, as an ordinary node
        changed = True
        while changed:
            self._find_loopable()
            changed = False
            for n in sorted(self.free, key=self.index.__getitem__):
                if n.out in self.outputs or any(u not in self.loopable and u not in self.free
                                                for u in self.users.get(n.out, ())):
                    self.free.discard(n)
                    changed = True
        self.group = {n: i for i, n in enumerate(self.nodes) if n not in self.free}
        self.members = {i: [n] for n, i in self.group.items()}
        # each group's closure(members), and each loop group's loop_plan(members), as found
        # when it was formed (a merge's closure is the union of the two)
        self.needs = {g: self._single_needs(n) for n, g in self.group.items()}
        self.plans = {self.group[n]: self._single_plan(n) for n in self.loopable}
        self.facts = {g: self._facts(n) for n, g in self.group.items()}
        # the kernel graph, in a topological order: groups are its vertices (numbered by their
        # first node), free nodes are vertices of their own
        self.order = MergeableDag(map(self._vertex, self.nodes), self._edges())

    def _vertex(self, node):
        return self.group.get(node, node)

    def _edges(self):
        for n in self.nodes:
            for v in n.inputs:
                p = self.producer.get(v)
                if p is not None:
                    yield self._vertex(p), self._vertex(n)

    def _find_loopable(self):
        # loop nodes that can form a kernel on their own (an operand broadcast that is not a
        # 2-D map, e.g. (3,1,4) into (3,5,4), makes the node an opaque kernel instead)
        self.loopable = {n for n in self.nodes if n not in self.free and is_loop_op(n)
                         and n.op != "constant" and self._single_plan(n) is not None}

    def _single_plan(self, n):
        """loop_plan([n]), computed again only when the free nodes it needs have changed: the
        free set only shrinks while __init__ settles it, so a closure all still free is still
        the closure (and nothing else the plan reads changes)."""
        known = self._single_plans.get(n)
        if known is None or not known[0] <= self.free:
            need = frozenset(self.closure([n]))
            known = self._single_plans[n] = (need, self.loop_plan([n], need))
        return known[1]

    def _single_needs(self, n):
        known = self._single_plans.get(n)  # a loop node's closure is known from its plan
        return known[0] if known is not None else frozenset(self.closure([n]))

    # ---- legality ----
    def closure(self, nodes):
        """The free nodes a set of nodes needs, recursively (they are cloned into the kernel)."""
        need, stack = set(), [v for n in nodes for v in n.inputs]
        while stack:
            p = self.producer.get(stack.pop())
            if p is not None and p in self.free and p not in need:
                need.add(p)
                stack.extend(p.inputs)
        return need

    def body(self, nodes, free):
        """The kernel's nodes in a canonical order: members in graph order, each recomputed
        free node (`free`: their closure) placed just before its first use, so identical
        layers print identically."""
        order = []
        if not free:
            order.extend(sorted(nodes, key=self.index.__getitem__))
            return order
        producer, placed = self.producer.get, set()
        for n in sorted(nodes, key=self.index.__getitem__):
            # depth first through the free producers of n's operands, in operand order
            stack = [(n, iter(n.inputs))]
            while stack:
                node, operands = stack[-1]
                for v in operands:
                    p = producer(v)
                    if p in free and p not in placed:
                        placed.add(p)
                        stack.append((p, iter(p.inputs)))
                        break
                else:
                    stack.pop()
                    order.append(node)
        return order

    def outputs_of(self, nodes, free):
        """Values of `nodes` needed elsewhere: graph outputs, and values read outside the
        kernel's body (a free node recomputed in another kernel counts as outside)."""
        inside = set(nodes) | free
        return [v for n in nodes for v in n.outputs
                if v in self.outputs or any(u not in inside for u in self.users.get(v, ()))]

    def loop_plan(self, nodes, free) -> LoopPlan | None:
        """How `nodes` (`free`: their closure) run as one loop kernel, or None if they cannot."""
        body = self.body(nodes, free)
        return self._plan(body, [n for n in body if n.op in REDUCTIONS],
                          self.outputs_of(nodes, free))

    def union_plan(self, ga, gb, nodes, free) -> LoopPlan | None:
        """loop_plan(nodes, free) for the union of groups ga and gb, from their plans.

        A kernel grows one node at a time, so planning every merge from scratch costs the
        square of its size. When one group's nodes all come before the other's, the union's
        body is the first body followed by the second less the free nodes the first already
        computes, its reductions theirs in that order, and its outputs theirs less what the
        other now reads (see _union_outputs); the index maps are joined (_joined_maps). Else,
        from scratch."""
        first, second = self._in_order(ga, gb)
        if first is None:
            body = self.body(nodes, free)
            reducers = [n for n in body if n.op in REDUCTIONS]
            outs = self.outputs_of(nodes, free)
        else:
            p, q = self.plans[first], self.plans[second]
            shared = self.needs[first]
            body = p.body + [n for n in q.body if n not in shared]
            reducers = p.reducers + q.reducers
            outs = self._union_outputs(first, second, free)
        return self._plan(body, reducers, outs, (ga, gb))

    def _in_order(self, ga, gb):
        """(first, second) when all of one group's nodes come before the other's, else
        (None, None)."""
        index, a, b = self.index, self.members[ga], self.members[gb]
        if index[a[-1]] < index[b[0]]:
            return ga, gb
        if index[b[-1]] < index[a[0]]:
            return gb, ga
        return None, None

    def _union_outputs(self, first, second, free) -> list:
        """outputs_of the union of two groups, first's before second's: each group's outputs
        less those now read only inside the union. A value of the larger group can only stop
        being an output if the smaller group (or a free node it recomputes) reads it, so only
        those are looked at again: the cost is the smaller group's."""
        inside = (first, second)

        def needed(v):
            return v in self.outputs or any(self.group.get(u) not in inside and u not in free
                                            for u in self.users.get(v, ()))

        small = min(inside, key=lambda g: len(self.members[g]))
        read = {v for n in (*self.members[small], *self.needs[small]) for v in n.inputs}
        outs = []
        for g in inside:
            if g == small:
                outs += [v for v in self.plans[g].outputs if needed(v)]
            else:
                outs += [v for v in self.plans[g].outputs if v not in read or needed(v)]
        return outs

    def _plan(self, body, reducers, outs, parts=None) -> LoopPlan | None:
        """The rest of loop_plan: space, index maps, and the checks on column reductions.
        `parts`: the two groups a union comes from (their maps are reused)."""
        space = space_for(body, outs or [body[-1].out], reducers)
        try:
            maps, reductions = (parts and self._joined_maps(space, *parts)) or \
                infer_maps(body, space)
        except MapConflict:
            return None
        cols = [n for n, k in reductions.items() if k == "col"]
        after_col = _downstream_of(body, cols) if cols else set()
        # a column reduction is complete only after the last row: what follows it is computed
        # in the combine pass, which has one index (j) and cannot produce per-row values
        if any(maps[v] in (FULL, COL) for v in after_col):
            return None
        # a per-column value computed in the row loop would be rewritten by every row
        if any(maps[v] == ROW and v not in after_col for v in outs):
            return None
        return LoopPlan(space, maps, reductions, body, outs, reducers)

    def _joined_maps(self, space, ga, gb):
        """The index maps and reductions of the union of groups ga and gb in `space`, reusing
        theirs where that finds what infer_maps on the union's body would; None where it
        cannot.

        In a space where R, C, R*C and 1 all differ, a value's element count fixes its map, so
        a group planned in this same space already has the maps every rule of infer_maps would
        give its values in the union, and met every constraint of its nodes (each constraint
        is one node's). Only the other group's nodes are inferred, starting from those maps:
        a merge costs the size of what joins a kernel, not of the kernel."""
        if space.R == 1 or space.C == 1 or space.R == space.C:
            return None
        same = [g for g in (ga, gb) if self.plans[g].space == space]
        if not same:
            return None
        maps, reductions = {}, {}
        for g in same:
            maps.update(self.plans[g].maps)
            reductions.update(self.plans[g].reductions)
        if len(same) == 1:
            (g,) = same
            known = self.needs[g]  # (and g's members: the other's body has none of them)
            rest = [n for n in self.plans[gb if g == ga else ga].body if n not in known]
            maps, more = infer_maps(rest, space, known=maps)
            reductions.update(more)
        return maps, reductions

    def _facts(self, n) -> _Facts:
        after_write = n in self.after_write or any(
            m in self.after_write for m in self.needs[self.group[n]])
        return _Facts(n in self.loopable, any(v in self.aliased for v in n.outputs),
                      n in self.guard_cone, after_write, n in self.recomputed,
                      n.part == "forward")

    def try_merge(self, ga, gb) -> bool:
        if ga == gb:
            return False
        facts = self.facts[ga].merge(self.facts[gb])
        if not facts.all_loopable:
            return False
        if facts.guard_needs and (facts.writes_aliased or facts.after_write):
            return False
        if facts.recomputed and facts.forward:
            return False
        # merging two kernels must not make the one need a value that itself needs the other
        # (other kernels are atomic: reaching any of their nodes needs all of their outputs);
        # checked first: it is cheaper than the loop plan and fails more often
        merge = self.order.merge_plan(ga, gb)
        if merge is None:
            return False
        nodes = sorted(self.members[ga] + self.members[gb], key=self.index.__getitem__)
        free = self.needs[ga] | self.needs[gb]
        plan = self.union_plan(ga, gb, nodes, free)
        if plan is None:
            return False
        self.order.contract(merge)
        self.plans[ga], self.needs[ga], self.facts[ga] = plan, free, facts
        del self.plans[gb], self.needs[gb], self.facts[gb]
        for n in self.members[gb]:
            self.group[n] = ga
        self.members[ga] = nodes
        del self.members[gb]
        return True

    # ---- the three merge phases ----
    def merge_producers(self):
        for n in self.nodes:
            if n not in self.loopable:
                continue
            for v in n.inputs:
                p = self.producer.get(v)
                if p in self.loopable:
                    self.try_merge(self.group[n], self.group[p])

    def merge_siblings(self):
        for v in [*self.graph.inputs, *(u for n in self.nodes for u in n.outputs)]:
            readers = sorted({self.group[u] for u in self.users.get(v, ())
                              if u in self.loopable and PRIMITIVES[u.op].loop != "view"})
            for g in readers[1:]:
                if readers[0] in self.members and g in self.members:
                    self.try_merge(readers[0], g)

    def groups_in_order(self):
        """Kernels in a topological order of their dependencies: of the kernels whose inputs
        are ready, always the one whose first node comes first in the graph."""
        deps = {g: set() for g in self.members}
        for g, nodes in self.members.items():
            for n in (*nodes, *self.needs[g]):
                for v in n.inputs:
                    p = self.producer.get(v)
                    if p is not None and p in self.group and self.group[p] != g:
                        deps[g].add(self.group[p])
        # collectives (ordered nodes) keep their order: every process makes the same calls in
        # the same sequence, or one waits forever for a call another makes later
        ordered = sorted({self.group[n] for n in self.nodes
                          if n in self.group and PRIMITIVES[n.op].ordered},
                         key=lambda g: self.index[self.members[g][0]])
        for before, after in zip(ordered, ordered[1:]):
            deps[after].add(before)
        guard = self.producer.get(self.guard)
        if guard in self.group:
            first = self.group[guard]
            # what the guard's kernel needs does not change as writers are made to wait for it
            # (they wait only if it does not need them)
            needed = _needed_by(deps, first)
            for g, nodes in self.members.items():
                writes = any(v in self.aliased for n in nodes for v in n.outputs)
                if writes and g != first and g not in needed:
                    deps[g].add(first)
        return _topological(deps, key=lambda g: self.index[self.members[g][0]])


def _needed_by(deps, start) -> set:
    """The groups `start` depends on, directly or not."""
    stack, seen = list(deps[start]), set()
    while stack:
        g = stack.pop()
        if g not in seen:
            seen.add(g)
            stack.extend(deps[g])
    return seen


def _topological(deps, key) -> list:
    """Kahn's algorithm, taking the ready group of least `key` at every step."""
    waiting = {g: len(d) for g, d in deps.items()}
    dependents: dict = {g: [] for g in deps}
    for g, d in deps.items():
        for h in d:
            dependents[h].append(g)
    ready = [(key(g), g) for g, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, g = heapq.heappop(ready)
        order.append(g)
        for h in dependents[g]:
            waiting[h] -= 1
            if waiting[h] == 0:
                heapq.heappush(ready, (key(h), h))
    if len(order) != len(deps):  # pragma: no cover  (merges never create cycles)
        raise RuntimeError("fusion produced a cycle between kernels")
    return order


def _downstream_of(body, reductions):
    """Values computed from a reduction's result inside `body`."""
    tainted = {n.out for n in reductions}  # noqa: C416
    for n in body:
        if any(v in tainted for v in n.inputs):
            tainted.update(n.outputs)
    return tainted


def _clone_region(nodes, inputs, outputs, name) -> Graph:
    """A region Graph with fresh Vars: `inputs`/`outputs` are the kernel's outer operands."""
    fresh = {v: Var(v.type, v.hint) for v in inputs}
    body = []
    for n in nodes:
        outs = tuple(fresh.setdefault(v, Var(v.type, v.hint)) for v in n.outputs)
        body.append(Node(n.op, tuple(fresh[v] for v in n.inputs), outs, n.attrs, n.loc, n.part,
                         n.region))
    return Graph(tuple(fresh[v] for v in inputs), tuple(body), tuple(fresh[v] for v in outputs),
                 name=name)


def structural_name(kind, region: Graph) -> str:
    """Kernels with the same structure (ops, attrs, dtypes, ranks: ir/structure.py) share a
    name and code."""
    return f"{kind.replace('+', '')}_{structure_digest(region, salt=kind)}"


def make_kernel(part: _Partition, g) -> Node:
    """The kernel node of group `g`."""
    nodes = part.members[g]
    plan = part.plans.get(g)  # loop kernels: body and outputs as their last merge found them
    body = plan.body if plan else part.body(nodes, part.needs[g])
    inside = set(body)
    inputs = {}  # operands in order of first use (a dict: ordered, no duplicates)
    for n in body:
        for v in n.inputs:
            if part.producer.get(v) not in inside:
                inputs.setdefault(v)
    inputs = list(inputs)
    outputs = plan.outputs if plan else part.outputs_of(nodes, part.needs[g])
    if len(nodes) == 1 and PRIMITIVES[nodes[0].op].ordered:
        outputs = list(nodes[0].outputs)  # a collective writes its result, read or not
    attrs = {}
    if len(nodes) == 1 and nodes[0] not in part.loopable:
        # a GEMM or library calls (an elementwise node always joins a loop: were one left
        # alone, the backends would say they have no emitter for it)
        kind = PRIMITIVES[nodes[0].op].lone_kernel or "opaque"
    else:
        space, reductions = plan.space, plan.reductions
        kind = LOOP_KIND_OF[frozenset(reductions.values())]
        attrs.update(space=space.shape, split=space.split)
    region = _clone_region(body, inputs, outputs, "region")
    flops = sum(_flops(n) for n in body)
    moved = sum(v.type.nbytes for v in (*inputs, *outputs))
    attrs.update(kind=kind, flops=flops, bytes=moved, name=structural_name(kind, region))
    loc = next((n.loc for n in reversed(nodes) if n.loc), None)
    first = min(nodes, key=part.index.__getitem__)
    return Node("kernel", tuple(inputs), tuple(outputs), Attrs(attrs), loc, first.part, region)


def fuse(graph: Graph, multi_tensor: bool = True, guard: int | None = None) -> Graph:
    """The fused graph: kernel nodes (plus views: top-level reshapes and array constants).
    `guard`: index of the output (the loss) that must be known before any parameter changes."""
    part = _Partition(graph, guard)
    part.merge_producers()
    part.merge_siblings()
    kernels = []
    for g in part.groups_in_order():
        nodes = part.members[g]
        lone = nodes[0] if len(nodes) == 1 else None
        if lone is not None and (lone.op == "constant" or (
                PRIMITIVES[lone.op].loop == "view"
                and part.producer.get(lone.inputs[0]) not in part.free) or _part_view(part, lone)):
            kernels.append(lone)  # data, or a view of a buffer: no code runs
        else:
            kernels.append(make_kernel(part, g))
    if multi_tensor:
        kernels = _group_updates(kernels)
    return graph.replace(nodes=tuple(kernels))


def _part_view(part: _Partition, node) -> bool:
    """A part of an all_reduce's result: a view of that result's buffer (passes/memory.py)."""
    if node.op != "part":
        return False
    producer = part.producer.get(node.inputs[0])
    return producer is not None and producer.op == "all_reduce"


def _group_updates(kernels):
    """Independent elementwise kernels of the update part become one multi-tensor kernel."""
    candidates = [k for k in kernels if k.op == "kernel" and k.part == "update"
                  and k.attrs["kind"] == "elementwise"]
    if len(candidates) < 2:
        return kernels
    produced = {v for k in candidates for v in k.outputs}
    independent = [k for k in candidates if not any(v in produced for v in k.inputs)]
    if len(independent) < 2:
        return kernels
    position = kernels.index(independent[-1])
    # every independent update kernel may move to the position of the last one: nothing
    # between reads their outputs (only kernels after the last one can)
    moving = set(independent)
    later_inputs = {v for k in kernels[:position] if k not in moving for v in k.inputs}
    group = [k for k in independent if not any(v in later_inputs for v in k.outputs)]
    if len(group) < 2:
        return kernels
    inputs = list(dict.fromkeys(v for k in group for v in k.inputs))  # in order, once each
    outputs = [v for k in group for v in k.outputs]
    inner = Graph(tuple(inputs), tuple(group), tuple(outputs), name="region")
    region = _clone_region(inner.nodes, inputs, outputs, "region")
    attrs = Attrs(kind="multi", flops=sum(k.attrs["flops"] for k in group),
                  bytes=sum(v.type.nbytes for v in (*inputs, *outputs)),
                  name=structural_name("multi", region))
    multi = Node("kernel", tuple(inputs), tuple(outputs), attrs, None, "update", region)
    grouped = set(group)
    rest = [k for k in kernels if k not in grouped]
    rest.insert(rest.index(kernels[position + 1]) if position + 1 < len(kernels) else len(rest),
                multi)
    return rest


def kernel_count(fused: Graph) -> int:
    return sum(1 for n in fused.nodes if n.op == "kernel")


__all__ = ["fuse", "kernel_count", "Space"]
