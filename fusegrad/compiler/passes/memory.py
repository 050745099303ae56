"""The memory plan: where every value of a fused graph lives during a step.

Liveness over the kernel schedule decides when a buffer's last reader has run; its storage is
then reused for a later value of the same or smaller size (best fit). A loop kernel may write an
output into the buffer of an input that dies at that kernel when both are addressed the same way
(same index map, same size and dtype: each element is read before it is overwritten). Updated
parameters and optimizer state are written into their own storage when nothing reads the old
value afterwards. Every arena buffer is carved from one allocation made once, so a step
allocates nothing.

A collective (an all_reduce: the gradient sum of a data-parallel step) sums its operands as one
region, in place: its result's buffer is taken when the first operand is computed, each operand
is written straight into its place there (a BufferPart) when nothing reads it after the
collective, and the parts of the result are views of it. An operand that cannot be (a graph
input, a value read later, one operand twice) is copied into its place before the call
(`packs` says which).

    storage kinds:  ("arena", buffer or BufferPart)  ("input", i)  ("const", node)
                    ("view", base Var)
"""
from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .kernel_kinds import KERNEL_KINDS
from .loopspace import infer_maps, space_for
from ...ir import PRIMITIVES, interpret
from ...ir.ops import packed_offsets

ALIGN = 64  # bytes: keeps every buffer on a cache line (and SIMD-aligned)


def _is_view(node) -> bool:
    """A top-level node that fusion left as a view of its operand's storage (a reshape)."""
    prim = PRIMITIVES.get(node.op)  # kernel nodes are not primitives
    return prim is not None and prim.loop == "view"


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(eq=False)
class Buffer:
    index: int
    nbytes: int
    offset: int = 0
    values: list = field(default_factory=list)  # (Var, first kernel, last kernel)


@dataclass(eq=False)
class BufferPart:
    """Bytes [at, at + nbytes) of a buffer: an operand of a collective in its place in the
    result, or a part of the result. Reads like a Buffer (.offset, .index, .nbytes)."""
    parent: Buffer
    at: int
    nbytes: int

    @property
    def offset(self) -> int:
        return self.parent.offset + self.at

    @property
    def index(self) -> str:
        return f"{self.parent.index}+{self.at}"


@dataclass(eq=False)
class Pack:
    """One collective's operands in its result: (operand Var, element offset, written in place
    by its producer, so no copy) each."""
    result: object  # the collective's output Var
    kernel: int  # the collective's position in the schedule
    operands: list

    def __iter__(self):
        return iter(self.operands)


@dataclass
class MemoryPlan:
    graph: object  # the fused Graph
    storage: dict  # Var -> (kind, where)
    buffers: list
    naive_bytes: int
    in_place: list  # (kernel index, input Var, output Var)
    copies_back: list  # (output index, input index): aliased outputs that could not be in place
    packs: dict = field(default_factory=dict)  # collective kernel node -> Pack

    @property
    def peak_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)

    def place(self, v):
        """Where v's data is, through views: ("arena", buffer), ("input", i) or ("const",
        node)."""
        kind, where = self.storage[v]
        while kind == "view":
            kind, where = self.storage[where]
        return kind, where

    @property
    def arena_bytes(self) -> int:
        return max((b.offset + b.nbytes for b in self.buffers), default=0)

    def __str__(self) -> str:
        names = _names(self.graph)
        lines = [f"memory plan: {len(self.buffers)} buffers, peak {self.peak_bytes:,} bytes "
                 f"(one buffer per value: {self.naive_bytes:,} bytes, "
                 f"{self.peak_bytes / max(self.naive_bytes, 1):.0%})"]
        for b in self.buffers:
            held = ", ".join(f"{names.get(v, '?')}:{v.type} [{a}..{z}]" for v, a, z in b.values)
            lines.append(f"  buf{b.index:<3} +{b.offset:<10,} {b.nbytes:>11,} B  {held}")
        inputs = set(self.graph.inputs)
        written = [f"{names.get(v, '?')} <- {self.graph.input_names[w]}"
                   for v, (k, w) in self.storage.items() if k == "input" and v not in inputs]
        if written:
            lines.append("  written into their inputs' storage: " + ", ".join(written))
        if self.in_place:
            lines.append("  in place: " + ", ".join(
                f"{names.get(o, '?')} over {names.get(i, '?')} (kernel {k})"
                for k, i, o in self.in_place))
        if self.copies_back:
            lines.append("  copied back after the step: " + ", ".join(
                self.graph.input_names[i] for _, i in self.copies_back))
        for pack in self.packs.values():
            b = self.storage[pack.result][1]
            lines.append(f"  summed over processes in buf{b.index} ({names.get(pack.result, '?')}"
                         f"): " + ", ".join(
                             f"{names.get(v, '?')} at +{at}"
                             f"{' (written there)' if home else ' (copied there)'}"
                             for v, at, home in pack))
        return "\n".join(lines)


def _names(graph) -> dict:
    """Printer-style %N names of the top-level values (as in str(graph))."""
    names, k = {}, 0
    for v in graph.inputs:
        names[v] = f"%{k}"
        k += 1
    for n in graph.nodes:
        for v in n.outputs:
            names[v] = f"%{k}"
            k += 1
        if n.region is not None:
            k += _count_region_vars(n.region)
    return names


def _count_region_vars(region) -> int:
    k = len(region.inputs)
    for n in region.nodes:
        k += len(n.outputs)
        if n.region is not None:
            k += _count_region_vars(n.region)
    return k


def can_overwrite(kernel, inp, out, maps_of=None) -> bool:
    """May `kernel` write `out` into the storage of its operand `inp`? Yes when each element of
    inp is read at the same loop index that writes the same element of out (same index map,
    size and dtype), so the generated loop reads it before it overwrites it.
    `maps_of(kernel)`: its region's index maps, if the caller keeps them (default: inferred)."""
    if inp.type.size != out.type.size or inp.type.dtype != out.type.dtype:
        return False
    kind = KERNEL_KINDS[kernel.attrs["kind"]]
    if not kind.in_place:
        return False
    region = kernel.region
    inner = dict(zip(kernel.inputs, region.inputs)) | dict(zip(kernel.outputs, region.outputs))
    if kind.loop:
        maps = (maps_of or region_maps)(kernel)
        return maps.get(inner[inp]) is not None and maps.get(inner[inp]) == maps.get(inner[out])
    # multi, the in-place kind that is no loop: only the part that writes out may read inp
    writer = next(n for n in region.nodes if inner[out] in n.outputs)
    readers = [n for n in region.nodes if inner[inp] in n.inputs]
    return readers == [writer] and can_overwrite(writer, inner[inp], inner[out], maps_of)


def region_maps(kernel) -> dict:
    """The index map of every value of a loop kernel's region."""
    region = kernel.region
    maps, _ = infer_maps(region.nodes, space_for(region.nodes, region.outputs))
    return maps


class _MapsCache:
    """region_maps per kernel for one plan (a kernel is asked about each output), inferred
    once per structure: kernels with the same name (the same structure: ir/structure.py) and
    the same value types, as in identical layers, have the same maps, value for value."""

    def __init__(self):
        self.by_kernel: dict = {}  # kernel node -> {Var: map}
        self.by_structure: dict = {}  # (name, value types) -> maps in value order

    def __call__(self, kernel) -> dict:
        maps = self.by_kernel.get(kernel)
        if maps is None:
            values = _region_values(kernel.region)
            key = (kernel.attrs["name"], tuple(v.type for v in values))
            in_order = self.by_structure.get(key)
            if in_order is None:
                found = region_maps(kernel)
                in_order = self.by_structure[key] = [found.get(v) for v in values]
            maps = self.by_kernel[kernel] = {
                v: m for v, m in zip(values, in_order) if m is not None}
        return maps


def _region_values(region) -> list:
    """A (flat) region's values in definition order."""
    return [*region.inputs, *(v for n in region.nodes for v in n.outputs)]


def _part_of(node):
    """(the array it is part of, byte offset) for a top-level part node (fusion leaves one as a
    view of an all_reduce's result), else None."""
    if node.op != "part":
        return None
    return node.inputs[0], node.attrs["offset"] * np.dtype(node.out.dtype).itemsize


def _collective_operands(node) -> list:
    """The operand Vars of a collective kernel's all_reduce, by position (one may repeat)."""
    (prim,) = node.region.nodes
    outer = dict(zip(node.region.inputs, node.inputs))
    return [outer[v] for v in prim.inputs[1:]]


def _packs(nodes, storage, root, owners_last):
    """Each collective kernel's Pack, and {root Var: (Pack, byte offset)} of the operands that
    their producers write straight into their place: computed by a kernel before the
    collective, read by nothing after it, and not placed yet (an input, a constant, an operand
    already placed twice over)."""
    packs, homes = {}, {}
    produced = {v: k for k, n in enumerate(nodes) if n.op == "kernel" for v in n.outputs}
    for k, n in enumerate(nodes):
        if n.op != "kernel" or n.attrs["kind"] != "collective":
            continue
        operands = _collective_operands(n)
        offsets, _ = packed_offsets([v.type for v in operands])
        pack = packs[n] = Pack(n.out, k, [])
        for v, at in zip(operands, offsets):
            r = root.get(v, v)
            home = (r not in storage and r not in homes and produced.get(r, k) < k
                    and owners_last.get(r) == k and r.type.nbytes == v.type.nbytes)
            if home:
                homes[r] = (pack, at * np.dtype(v.dtype).itemsize)
            pack.operands.append((v, at, home))
    return packs, homes


def _readers(graph):
    """Kernel index of every read of every Var; a read of a view (a top-level reshape) counts
    as a read of the Var it views too."""
    base = {}
    for n in graph.nodes:
        if _is_view(n):
            base[n.out] = base.get(n.inputs[0], n.inputs[0])
    reads: dict = {}
    for k, n in enumerate(graph.nodes):
        for v in n.inputs:
            reads.setdefault(v, []).append(k)
            if v in base:
                reads.setdefault(base[v], []).append(k)
    return reads


def plan_memory(graph) -> MemoryPlan:
    nodes = graph.nodes
    end = len(nodes)
    reads = _readers(graph)
    storage: dict = {v: ("input", i) for i, v in enumerate(graph.inputs)}
    root = {}  # view -> the Var that owns the storage
    parts = {}  # part of a collective's result -> (that result, byte offset)
    for n in nodes:
        if n.op == "constant":
            storage[n.out] = ("const", n)
        elif _is_view(n):
            base = n.inputs[0]
            root[n.out] = root.get(base, base)
            storage[n.out] = ("view", root[n.out])
        elif _part_of(n) is not None:
            parts[n.out] = _part_of(n)
    owners_last = {}
    for v, ks in reads.items():
        r = root.get(v, v)
        owners_last[r] = max(owners_last.get(r, -1), max(ks))
    for v in graph.outputs:
        owners_last[root.get(v, v)] = end
    for p, (whole, _) in parts.items():  # the result lives as long as any part of it is read
        if p in owners_last:
            owners_last[whole] = max(owners_last.get(whole, -1), owners_last[p])
    packs, homes = _packs(nodes, storage, root, owners_last)
    first_home = {}  # kernel index -> the packs whose buffer is taken there: at the kernel
    placed = set()  # computing its first operand in place, or at the collective itself
    for k, n in enumerate(nodes):
        here = [homes[v][0] for v in n.outputs if v in homes] + ([packs[n]] if n in packs else [])
        for pack in here:
            if pack not in placed:
                placed.add(pack)
                first_home.setdefault(k, []).append(pack)
    pack_buffer = {}  # Pack -> its Buffer
    output_of_input = {}
    for o, i in graph.aliases:
        output_of_input.setdefault(graph.outputs[o], i)

    buffers: list[Buffer] = []
    free = _FreeBuffers()
    live = _LiveBuffers()
    maps_of = _MapsCache()
    in_place, copies_back = [], []
    naive = 0

    for k, n in enumerate(nodes):
        if n.op != "kernel":
            continue
        free.extend(live.release_before(k))
        for pack in first_home.get(k, ()):  # a collective's result, held from its first operand
            size = _aligned(pack.result.type.nbytes)
            b = free.take(size)
            if b is None:
                b = Buffer(len(buffers), size)
                buffers.append(b)
            pack_buffer[pack] = b
            live.hold(b, max(pack.kernel, owners_last.get(pack.result, pack.kernel)))
        taken = set()
        for v in n.outputs:
            naive += _aligned(v.type.nbytes)
            last = owners_last.get(v, k)  # an unread value dies in its own kernel
            home = homes.get(v)
            if home is not None:  # an operand of a collective, computed in its place
                pack, at = home
                storage[v] = ("arena", BufferPart(pack_buffer[pack], at, v.type.nbytes))
                continue
            if n in packs:  # the collective's result: the buffer its operands are in
                b = pack_buffer[packs[n]]
                storage[v] = ("arena", b)
                b.values.append((v, k, max(last, k)))
                continue
            i = output_of_input.get(v)
            if i is not None:
                param = graph.inputs[i]
                later = [r for r in reads.get(param, []) if r > k]
                read_here = k in reads.get(param, [])
                if not later and (not read_here or can_overwrite(n, param, v, maps_of)):
                    storage[v] = ("input", i)
                    continue
            donor = _in_place_donor(n, v, owners_last, storage, k, root, taken, maps_of)
            if donor is not None:
                b = storage[donor][1]
                taken.add(b)
                storage[v] = ("arena", b)
                b.values.append((v, k, last))
                live.hold(b, last)
                in_place.append((k, donor, v))
                continue
            size = _aligned(v.type.nbytes)
            b = free.take(size)
            if b is None:
                b = Buffer(len(buffers), size)
                buffers.append(b)
            storage[v] = ("arena", b)
            b.values.append((v, k, last))
            live.hold(b, last)
    for p, (whole, at) in parts.items():
        kind, b = storage[whole]
        assert kind == "arena", "a part of something else than a collective's result"
        storage[p] = ("arena", BufferPart(b, at, p.type.nbytes))
    # aliased outputs not written in place (read later, or the same value replacing two inputs)
    for o, i in graph.aliases:
        if storage.get(graph.outputs[o]) != ("input", i):
            copies_back.append((o, i))
    offset = 0
    for b in buffers:
        b.offset = offset
        offset += b.nbytes
    return MemoryPlan(graph, storage, buffers, naive, in_place, copies_back, packs)


class _LiveBuffers:
    """Buffers holding a value still to be read, each with the last kernel that reads it.

    Released in the order they were taken (a buffer whose value is replaced in place keeps its
    turn): the free list's order decides ties between equally good buffers. A heap finds the
    buffers to release without looking at every live one at every kernel."""

    def __init__(self):
        self.last: dict = {}  # buffer -> last reader; insertion order = order taken
        self.turn: dict = {}  # buffer -> when it was taken
        self.heap: list = []  # (last reader, turn, buffer index, buffer); stale entries skipped
        self.turns = itertools.count()

    def hold(self, b: Buffer, last: int) -> None:
        if b not in self.last:
            self.turn[b] = next(self.turns)
        self.last[b] = last
        heapq.heappush(self.heap, (last, self.turn[b], b.index, b))

    def release_before(self, k: int) -> list:
        """The buffers whose last reader runs before kernel k, in the order they were taken."""
        done = []
        while self.heap and self.heap[0][0] < k:
            last, turn, _, b = heapq.heappop(self.heap)
            if self.last.get(b) == last and self.turn[b] == turn:  # else a stale entry
                done.append((turn, b))
                del self.last[b], self.turn[b]
        return [b for _, b in sorted(done, key=lambda e: e[0])]


class _FreeBuffers:
    """Free buffers by size: take(size) is the smallest that fits, the one freed first among
    equals (a best-fit search over the list of free buffers, without the search)."""

    def __init__(self):
        self.by_size: dict = {}  # nbytes -> deque of buffers, in the order freed
        self.sizes: list = []  # the nbytes with a free buffer, ascending

    def extend(self, buffers) -> None:
        for b in buffers:
            queue = self.by_size.get(b.nbytes)
            if queue is None:
                queue = self.by_size[b.nbytes] = deque()
                bisect.insort(self.sizes, b.nbytes)
            queue.append(b)

    def take(self, size: int) -> Buffer | None:
        i = bisect.bisect_left(self.sizes, size)
        if i == len(self.sizes):
            return None
        nbytes = self.sizes[i]
        queue = self.by_size[nbytes]
        b = queue.popleft()
        if not queue:
            del self.by_size[nbytes], self.sizes[i]
        return b


def _in_place_donor(node, out, owners_last, storage, k, root, taken, maps_of):
    """An input of `node` that dies here and whose arena buffer `out` may take over."""
    if not KERNEL_KINDS[node.attrs["kind"]].in_place:
        return None
    for v in node.inputs:
        st = storage.get(v)
        if st is None or st[0] != "arena" or root.get(v, v) is not v:
            continue
        if owners_last.get(v) != k or st[1] in taken or not can_overwrite(node, v, out, maps_of):
            continue
        return v
    return None


def execute_plan(plan: MemoryPlan, inputs) -> list:
    """Run the fused graph kernel by kernel with the interpreter, every value read from and
    written to its planned storage. An oracle for the plan: a buffer reused too early changes
    the results."""
    graph = plan.graph
    arena = np.zeros(plan.arena_bytes, np.uint8)
    inputs = [np.array(x, copy=True) for x in inputs]

    def view(v):
        kind, where = plan.storage[v]
        if kind == "input":
            return inputs[where]
        if kind == "const":
            return where.attrs["value"].array
        if kind == "view":
            return view(where).reshape(v.shape)
        b = where
        raw = arena[b.offset:b.offset + v.type.nbytes]
        return raw.view(v.type.dtype).reshape(v.shape)

    for n in graph.nodes:
        if n.op != "kernel":
            continue
        outs = interpret(n.region, [np.array(view(v), copy=True) for v in n.inputs])
        for v, x in zip(n.outputs, outs):
            np.copyto(view(v), x)
    results = [np.array(view(v), copy=True) for v in graph.outputs]
    return results
