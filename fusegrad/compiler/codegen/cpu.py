"""CPU code generation: a fused Program -> a CompiledProgram (kernel sources + schedule table).

Loop kernels are kernel-language functions (cpu_loops; see kernel_lang.py), one per structure,
named by a hash of that structure (`row_6c70d0386e21`): sizes and constants are arguments, so the
identical layers of a model, its time steps, or two models with the same layer share one kernel,
and a new batch size compiles nothing. GEMMs and data movement are instances of the library
(cpu_library) for their operands' dtypes. Nothing is compiled here: the runtime compiles (or
finds on disk) each kernel, then runs the schedule with one call into a generic dispatcher
(runtime/cpu.py), which calls every kernel through the same C signature from a table.

The schedule is data: for each call, the kernel and its arguments as (base, offset) pairs (where
a value lives: the arena, an input, the sizes table ...). Its text is rendered for people only
(`render_source`): each line names the IR values and the user's source line, like the kernels'
comments, and none of it is part of any cache key.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from math import prod
from typing import NamedTuple

import numpy as np

from ...ir.printer import var_names
from ..artifact import (ARENA, BASES, CONSTANTS, FLOATS, INTS, LOOP, SCRATCH, ZERO,
                        CompiledProgram, Entry, Input, Kernel, Output)
from .common import structural_names as _region_names
from ...kernels.cpu_library import library_kernel
from .cpu_loops import CHUNKS, LoopKernel
from .cpu_movement import Array, Count, Flag, Int, LibCall
from .schedule import ScheduleWriter

KERNEL_HEADER = '''"""fusegrad kernel {name}: {kind} loop over a 2-D space (R, C). Generated; do not edit."""
import math

import numpy as np

from fusegrad.kernels.cpu_intrinsics import radd
from fusegrad.kernels.cpu_math import erf_f32, exp_f32, log_f32, sigmoid_f32, tanh_f32
from fusegrad.kernels.kernel_lang import kernel

# only FMA contraction function-wide: reductions reassociate through radd alone (see
# cpu_intrinsics), and no 'arcp'/'afn', whose reciprocal-sqrt sequences make 1/sqrt(0) NaN


'''


_PLACEHOLDER = "fusegrad_kernel_name_"


class Ref(NamedTuple):
    """Where a value's data starts: bases[base] + offset (bytes), and what to call it; inside
    a loop (fg.scan), `stride` bytes further after every pass (x[t], y[t])."""
    base: int
    offset: int
    dtype: str
    name: str
    stride: int = 0


class Arg(NamedTuple):
    base: int
    offset: int
    shown: str  # how render_source shows it
    stride: int = 0


@dataclass
class GeneratedCode:
    program: CompiledProgram
    schedule: list = field(default_factory=list)  # readable line per entry
    readable: dict = field(default_factory=dict)  # kernel name -> source with this program's names


class _Builder(ScheduleWriter):
    TARGET = "CPU"

    def __init__(self, program, exact_math=False, guard=None, tiles=1):
        super().__init__(program, guard)
        self.tiles = tiles  # how many tiles a big GEMM is cut into (gemm_tiles)
        self.stats = program.stats()
        self.exact_math = exact_math
        self.kernels: list[Kernel] = []
        self.kernel_index: dict = {}  # name -> index
        self.readable: dict = {}
        self.entries: list[Entry] = []
        self.arg_base: list[int] = []
        self.arg_offset: list[int] = []
        self.arg_stride: list[int] = []
        # the arena: the program's plan, then each scan body's own values (and its input refs)
        self.arena_end = (self.plan.arena_bytes + 63) // 64 * 64
        self.arena_base = 0
        self.input_refs = None  # a scan body's inputs: where the enclosing program has them
        self.in_loop = False
        self.ints: list[int] = []
        self.floats: list[float] = []
        self.schedule: list[str] = []
        self.scratch_bytes = 0
        self.constants: list = []  # every constant's values, at CONSTANTS + its offset
        self._constant_bytes = 0
        self.loops: dict = {}  # loop kernel structure -> what _make_loop made of it

    # ---- where values live ----
    def input_ref(self, k, v):
        if self.input_refs is not None:
            return self.input_refs[k]._replace(dtype=v.dtype)
        return Ref(len(BASES) + k, 0, v.dtype, self.fused.input_names[k])

    def constant_ref(self, k, node):
        values = node.attrs["value"].array.reshape(-1)
        self.constants.append(values)
        at = self._constant_bytes
        self._constant_bytes += (values.nbytes + 63) // 64 * 64
        return Ref(CONSTANTS, at, node.out.dtype, self.names.get(node.out, "%?"))

    def arena_ref(self, v, buffer):
        return Ref(ARENA, self.arena_base + buffer.offset, v.dtype, self.names.get(v, "%?"))

    def retyped(self, ref, v):
        return ref._replace(dtype=v.dtype)

    # ---- arguments ----
    @staticmethod
    def pointer(ref: Ref) -> Arg:
        return Arg(ref.base, ref.offset, ref.name + ("[t]" if ref.stride else ""), ref.stride)

    @staticmethod
    def size(n) -> Arg:
        return Arg(ZERO, int(n), str(int(n)))

    def int_table(self, values) -> Arg:
        start = len(self.ints)
        self.ints.extend(int(v) for v in values)
        return Arg(INTS, 8 * start, "[" + ", ".join(str(int(v)) for v in values) + "]")

    def float_table(self, values) -> Arg:
        start = len(self.floats)
        self.floats.extend(float(v) for v in values)
        return Arg(FLOATS, 8 * start, "[" + ", ".join(repr(float(v)) for v in values) + "]")

    def scratch(self, start_bytes) -> Arg:
        return Arg(SCRATCH, start_bytes, f"scratch+{start_bytes}")

    # ---- kernels and calls ----
    def add_kernel(self, name, text, readable=None) -> int:
        k = self.kernel_index.get(name)
        if k is None:
            k = self.kernel_index[name] = len(self.kernels)
            self.kernels.append(Kernel(name, text))
            if readable is not None:
                self.readable[name] = readable
        elif self.kernels[k].text != text:
            raise AssertionError(f"two different kernels are both named {name}")
        return k

    def call(self, kernel: int, args, what, loc="", check="", units=0):
        self.entries.append(Entry(kernel, len(self.arg_base), len(args), what, check, units))
        for a in args:
            self.arg_base.append(a.base)
            self.arg_offset.append(a.offset)
            self.arg_stride.append(a.stride)
        shown = f"{self.kernels[kernel].name}({', '.join(a.shown for a in args)})"
        indent = "    " if self.in_loop else ""
        self.schedule.append(f"{indent}{shown}  # {what}" + (f" ({loc})" if loc else "")
                             + (f"; split over up to {units} workers" if units > 1 else ""))

    def library(self, call: LibCall, what, loc="", check="", units=0):
        share = MOVEMENT_UNITS.get(call.fn)
        if share is not None:  # (worker, workers) first; split when big enough
            n, elements = share(*(a.value for a in call.args))
            moved = elements * np.dtype(call.arrays()[-1].dtype).itemsize
            units = min(n, MAX_UNITS) if n > 1 and moved >= PARALLEL_MIN_BYTES else 0
            call = LibCall(call.fn, (Int(0), Int(1), *call.args))
        dtypes = tuple(h.dtype for h in call.arrays())
        name, text = library_kernel(call.fn, dtypes)
        args = [self.PASS[a.kind](self, a.value) for a in call.args]
        self.call(self.add_kernel(name, text), args, what, loc, check, units)

    # how a library call's argument of each kind is passed (cpu_movement.Arg)
    PASS = {
        "array": lambda self, ref: self.pointer(ref),
        "int": lambda self, n: self.size(n),
        "count": lambda self, n: self.size(n),
        "flag": lambda self, b: Arg(ZERO, int(b), str(b)),
        "ints": lambda self, values: self.int_table(values),
        "real": lambda self, x: self.float_table([x]),
    }

    # ---- one fused kernel node ----
    def movement(self, prim, calls, what, loc):
        for call in calls:
            self.library(call, f"{what} {prim.op}", loc)

    @staticmethod
    def _key(ref: Ref):
        return (ref.base, ref.offset, ref.stride)

    def loop(self, node, ins, outs, what, loc):
        keys = [self._key(r) for r in ins]
        # an output stored in its input's memory is stored through that input's own pointer
        inplace = {k: keys.index(self._key(o)) for k, o in enumerate(outs)
                   if self._key(o) in keys}
        # pointers may be declared non-overlapping unless written memory is passed twice
        written = {self._key(o) for o in outs}
        pointers = keys + [self._key(o) for k, o in enumerate(outs) if k not in inplace]
        noalias = all(pointers.count(w) <= 1 for w in written)
        kernel = LoopKernel(node, _region_names(node.region), self.exact_math, structural=True,
                            inplace=inplace)
        # identical layers and time steps make one kernel: its text is generated once per
        # structure (region structure, index maps, in-place outputs, flags), and each call takes
        # only its own constants, found at the same places in its region
        key = (node.attrs["name"], kernel.structure(), tuple(sorted(inplace.items())),
               noalias, self.exact_math)
        made = self.loops.get(key)
        if made is None:
            made = self.loops[key] = self._make_loop(node, kernel, inplace, noalias)
        name, index, flat, finish, partials, row_cache, fpos, ipos = made
        R, C, units = split(node, kernel.space, flat, bool(kernel.col_reds))
        head = [self.size(R), self.size(C), *(self.pointer(r) for r in ins),
                *(self.pointer(o) for k, o in enumerate(outs) if k not in inplace)]
        nch = min(R, CHUNKS)
        start = 0
        for size in partials:  # column partials (float64 scratch), then the row cache
            head.append(self.scratch(8 * start))
            start += nch * C if size == "nch * C" else nch
        if row_cache:  # one per worker
            slots, dtype = row_cache
            head.append(self.scratch(8 * start))
            per_worker = (slots * C + 1) // 2 if dtype == "f32" else slots * C
            start += per_worker * max(1, units)
        self.scratch_bytes = max(self.scratch_bytes, 8 * start)
        nodes = node.region.nodes
        if fpos:
            head.append(self.float_table([nodes[k].attrs["value"].array.reshape(-1)[0]
                                          for k in fpos]))
        if ipos:
            head.append(self.int_table([nodes[k].attrs["value"].array.reshape(-1)[0]
                                        for k in ipos]))
        worker = [self.size(0), self.size(1)]  # (worker, workers): the whole call by default
        if not finish:
            self.call(index, worker + head, what, loc, units=units)
        elif units > 1:  # the workers' shares, then the finish on one thread
            self.call(index, worker + [Arg(ZERO, 1, "shares")] + head, what, loc, units=units)
            self.call(index, worker + [Arg(ZERO, 2, "finish")] + head, what, loc)
        else:
            self.call(index, worker + [Arg(ZERO, 3, "all")] + head, what, loc)

    def _make_loop(self, node, kernel, inplace, noalias):
        """Generate a loop kernel's text (named by a hash of it: the same structure is the same
        kernel; any variant, in-place outputs, exact math, choices made by sizes, is another)
        and what each call of it needs."""
        text = kernel.source(_PLACEHOLDER, noalias)
        name = f"{node.attrs['kind'].replace('+', '')}_" + hashlib.sha256(
            text.encode()).hexdigest()[:12]
        text = text.replace(_PLACEHOLDER, name)
        header = KERNEL_HEADER.format(name=name, kind=node.attrs["kind"])
        readable = None
        if name not in self.kernel_index:
            shown = LoopKernel(node, self._readable_names(node), self.exact_math,
                               inplace=inplace)
            readable = shown.source(name, noalias)
        index = self.add_kernel(name, header + text + "\n", readable)
        position = {n: k for k, n in enumerate(node.region.nodes)}
        row_cache = ((len(kernel.row_slots), kernel._row_cache_dtype())
                     if kernel.row_slots else None)
        return (name, index, kernel.flat, kernel.has_finish, tuple(kernel.partials), row_cache,
                tuple(position[n] for n in kernel.consts.float_nodes),
                tuple(position[n] for n in kernel.consts.int_nodes))

    def _readable_names(self, node):
        """This program's %N names for the region's values (for render_source)."""
        return {v: self.names.get(v, "%?") for v in (*node.region.inputs,
                                                       *(u for n in node.region.nodes
                                                         for u in n.outputs))}

    def gemm(self, mm, ins, outs, shape, what, loc):
        if not mm.out.dtype.startswith("float"):
            self.library(LibCall("gemm_loops", (Array(ins[0]), Array(ins[1]), Array(outs[0]),
                                                *(Int(v) for v in shape.sizes),
                                                Flag(shape.transpose_a),
                                                Flag(shape.transpose_b))), what, loc)
            return
        tm, tn = gemm_tiles(shape, self.tiles)
        units = shape.batch * tm * tn
        self.library(LibCall("gemm", (Int(0), Int(1), Array(ins[0]), Array(ins[1]),
                                      Array(outs[0]), *(Int(v) for v in shape.sizes),
                                      Flag(shape.transpose_a), Flag(shape.transpose_b),
                                      Int(tm), Int(tn))),
                     what, loc, units=min(units, MAX_UNITS) if units > 1 else 0)

    def collective(self, prim, handles, out, what, loc):
        # the library function is named by the width of the MPI library's handles, so its text
        # (and the object compiled from it) is never shared between MPI builds; the handles
        # themselves are read from the input table at run time
        slot = 1 if prim.out.dtype == "float32" else 2  # MPI_FLOAT, MPI_DOUBLE in the table
        self.library(LibCall(f"all_reduce_h{prim.attrs['handle_bits']}",
                             (Array(out), Count(prim.out.type.size), Array(handles), Int(slot))),
                     f"{what} all_reduce: summed over the processes", loc, check="collective")

    def check_loss(self, var):
        self.library(LibCall("check_finite", (Array(self.ref[var]), Count(var.type.size))),
                     f"{self.names.get(var, '%?')} is finite: before any parameter is "
                     f"overwritten", check="loss")

    def copy_back(self, out, k):
        v = self.fused.outputs[out]
        self.library(LibCall("copy", (Array(self.ref[v]), Array(self.ref[self.fused.inputs[k]]),
                                      Count(v.type.size))),
                     f"{self.fused.output_names[out]} (not in place)")

    # ---- fg.scan: a loop of the dispatcher ----
    def scan(self, prim, ins, outs, what, loc):
        """The body's own program (passes, fusion, memory plan) in its own part of the arena,
        run `length` times: the running carry lives in the scan's carry outputs (initialised
        from init), x[t] and y[t] are arguments that advance by one slice per pass."""
        from ..pipeline import compile_graph

        if self.in_loop:
            raise NotImplementedError("an fg.scan inside fg.scan's body does not compile for "
                                      "target='cpu' yet; use target='interpret', or unroll "
                                      "the inner loop")
        a = prim.attrs
        length, n_consts, n_carry = a["length"], a["n_consts"], a["n_carry"]
        n_ys = len(a["ys"])
        body = compile_graph(prim.region)
        xs = ins[n_consts + n_carry:]
        # the running carry lives in the carry outputs; one nobody reads gets a buffer anyway
        outs = [ref if ref is not None or k >= n_carry else self._buffer(v, f"carry{k}")
                for k, (ref, v) in enumerate(zip(outs, prim.outputs))]
        carry, ys, saved = outs[:n_carry], outs[n_carry:n_carry + n_ys], outs[n_carry + n_ys:]
        for src, dst, v in zip(ins[n_consts:n_consts + n_carry], carry,
                               prim.inputs[n_consts:n_consts + n_carry]):
            self._copy(src, dst, v.type.size, f"{dst.name} = carry init")
        # the body's inputs: consts and carry where they are; x[t] one slice per pass
        slices = [self._stepped(ref, v.type, a["reverse"], length)
                  for ref, v in zip(xs, prim.region.inputs[n_consts + n_carry:])]
        loop = len(self.entries)
        self.call_loop()  # arguments set below, once the body is written
        first_arg = len(self.arg_base)
        saved_state = (self.fused, self.plan, self.names, self.ref, self.guard, self.arena_base,
                       self.input_refs, self.in_loop)
        self.fused, self.plan, self.names = body.fused, body.plan, var_names(body.fused)
        self.ref, self.guard, self.in_loop = {}, None, True
        self.arena_base, self.arena_end = self.arena_end, self.arena_end + \
            (body.plan.arena_bytes + 63) // 64 * 64
        self.input_refs = [*ins[:n_consts], *carry, *slices]
        carry_types = [v.type for v in prim.inputs[n_consts:n_consts + n_carry]]
        y_types = [v.type for v in prim.region.outputs[n_carry:]]
        try:
            for ref, out, t in zip(saved, carry, carry_types):  # the carry this pass starts from
                if ref is not None:
                    self._copy(out, self._stepped(ref, t, a["reverse"], length), t.size,
                               f"{ref.name}[t] = carry")
            self.write()
            body_out = [self.ref[v] for v in body.fused.outputs]
            for ref, y, t in zip(ys, body_out[n_carry:], y_types):
                if ref is not None:
                    self._copy(y, self._stepped(ref, t, a["reverse"], length), t.size,
                               f"{ref.name}[t] = y")
            for src, dst, t in zip(body_out[:n_carry], carry, carry_types):
                self._copy(src, dst, t.size, f"{dst.name} = new carry")
        finally:
            (self.fused, self.plan, self.names, self.ref, self.guard, self.arena_base,
             self.input_refs, self.in_loop) = saved_state
        body_entries = len(self.entries) - loop - 1
        span = len(self.arg_base) - first_arg
        e = self.entries[loop]
        self.arg_offset[e.args:e.args + 3] = [length, body_entries, span]
        self.schedule[loop] = (f"loop {length} times over the next {body_entries} calls"
                               f"  # {what}" + (f" ({loc})" if loc else ""))

    def _buffer(self, v, name) -> Ref:
        """Arena space of its own for value `v` (after the plan's and the scan bodies')."""
        ref = Ref(ARENA, self.arena_end, v.dtype, name)
        self.arena_end += (v.type.nbytes + 63) // 64 * 64
        return ref

    def call_loop(self):
        self.entries.append(Entry(LOOP, len(self.arg_base), 3, "loop", ""))
        for _ in range(3):
            self.arg_base.append(ZERO)
            self.arg_offset.append(0)
            self.arg_stride.append(0)
        self.schedule.append("loop")

    @staticmethod
    def _stepped(ref: Ref, row, reverse: bool, length: int) -> Ref:
        """Row t of `ref`, stacked rows of type `row`, as the loop advances."""
        step = row.nbytes
        return ref._replace(offset=ref.offset + ((length - 1) * step if reverse else 0),
                            stride=-step if reverse else step)

    def _copy(self, src: Ref, dst: Ref, count: int, what):
        self.library(LibCall("copy", (Array(src), Array(dst), Count(count))), what)

    # ---- the whole program ----
    def generate(self) -> GeneratedCode:
        self.write()
        fused, plan = self.fused, self.plan
        program = CompiledProgram(
            name=fused.name, kernels=self.kernels, entries=self.entries,
            arg_base=self.arg_base, arg_offset=self.arg_offset, arg_stride=self.arg_stride,
            ints=self.ints, floats=self.floats, arena_bytes=max(plan.arena_bytes, self.arena_end),
            scratch_bytes=self.scratch_bytes,
            constants=self.constants, inputs=self._inputs(), outputs=self._outputs(),
            stats=self.stats)
        return GeneratedCode(program, self.schedule, self.readable)

    def _inputs(self) -> list:
        fused, plan = self.fused, self.plan
        written = {w for v, (kind, w) in plan.storage.items()
                   if kind == "input" and v not in fused.inputs} | {i for _, i in plan.copies_back}
        return [Input(fused.input_names[k], tuple(v.shape), v.dtype, k in written)
                for k, v in enumerate(fused.inputs)]

    def _outputs(self) -> list:
        fused, plan = self.fused, self.plan
        consts = [n.out for n in fused.nodes if n.op == "constant"]
        out = []
        for v in fused.outputs:
            kind, where = plan.place(v)
            if kind == "arena":
                out.append(Output("arena", where.offset, tuple(v.shape), v.dtype))
            elif kind == "input":
                out.append(Output("input", where, tuple(v.shape), v.dtype))
            else:
                out.append(Output("const", consts.index(where.out), tuple(v.shape), v.dtype))
        return out


# ---- splitting a loop kernel's call over workers -----------------------------------------------

# A call is split only when its work pays for handing it to the workers. Measured with
# benchmarks/thresholds.py (2-core VM, OpenMP layer): a parallel call costs ~3.5 us, but a
# loop kernel whose arrays fit in one core's L2 (2 MiB) ran slower split (65K elements: 44 ->
# 61 us: the other core pulls the data through L3), and gained from ~4 MiB of traffic up
# (1M elements 1.35x); compute-heavy kernels (transcendentals) gain sooner.
PARALLEL_MIN_BYTES = 1 << 22
PARALLEL_MIN_FLOPS = 1 << 21
MAX_UNITS = 64  # the most workers a call is split over (each has a row cache of its own)
MIN_ROW = 512  # a flat kernel's rows are regrouped to at least this many elements


def split(node, space, flat: bool, col_reds: bool) -> tuple[int, int, int]:
    """(R, C, units) of a loop kernel's call: the space it loops over and the most workers it
    may be split over (0: one thread). A flat kernel (elementwise values only) may run over
    any (R, C) with R * C elements: one row when it stays on one thread (the longest loop to
    vectorise), else rows of at least MIN_ROW elements for the workers to share."""
    R, C = space.R, space.C
    big = node.attrs.get("bytes", 0) >= PARALLEL_MIN_BYTES or \
        node.attrs.get("flops", 0) >= PARALLEL_MIN_FLOPS
    if flat:
        n = R * C
        if not big:
            return 1, n, 0
        R, C = _rows_of(n)
    if not big or R < 2:
        return R, C, 0
    units = min(R, CHUNKS) if col_reds else R
    return R, C, min(units, MAX_UNITS)


def _strided_units(src, src_offset, src_strides, dst, dst_offset, dst_strides, sizes):
    """strided_copy splits the first of its five outer axes longer than one."""
    d = next((d for d in range(4) if sizes[d] != 1), 4)
    return sizes[d], prod(sizes)


# library calls split over workers, by the loop each worker takes a share of (cpu_library):
# fn -> f(LibCall argument values) -> (units, elements moved)
MOVEMENT_UNITS = {
    "strided_copy": _strided_units,
    "reduce_middle": lambda x, out, A, N, B, is_max: (A, A * N * B),
    "unfold": lambda x, out, N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW:
        (N, N * C * kh * kw * OH * OW),
    "fold": lambda x, out, N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW:
        (N, N * C * kh * kw * OH * OW),
}


def _rows_of(n: int) -> tuple[int, int]:
    """(rows, row length) for n elements: rows of at least MIN_ROW elements, as many as
    MAX_UNITS (a divisor of n, so every row is whole); one row when n has no such divisor."""
    for rows in range(min(MAX_UNITS, n // MIN_ROW), 1, -1):
        if n % rows == 0:
            return rows, n // rows
    return 1, n


# GEMMs: single-threaded BLAS calls on tiles fixed here, shared out to the workers (so a
# product's every element comes from the same BLAS call whatever the number of threads: the
# results are bitwise the same on 1 or all threads, which OpenBLAS's own threads do not give).
# Each tile is a BLAS call that packs its operands afresh (measured, 512x784 @ 784x2048 on one
# thread: one call 17.0 ms, 64 tiles of 32x512 26.5 ms, 8 tiles of 128x1024 19.4 ms), so there
# are as few as the machine's cores need, cut where the repacking costs least.
GEMM_MIN_FLOPS = 1 << 22  # a product smaller than this stays one call on one thread
GEMM_TILE_FLOPS = 1 << 21  # tiles are at least this much work
GEMM_TILE_EDGE = 32  # and at least this many rows and columns


def gemm_tiles(shape, tiles: int) -> tuple[int, int]:
    """(row tiles, column tiles) of each product of a GEMM: about `tiles` tiles in all,
    counting the batch (the machine's cores: runtime/threads.py), each at least
    GEMM_TILE_FLOPS and GEMM_TILE_EDGE square, shaped so that the operands BLAS packs again
    for every tile (b for each row tile, a for each column tile) are the smallest."""
    m, n, k = shape.m, shape.n, shape.k
    flops = 2 * m * n * k
    if flops * shape.batch < GEMM_MIN_FLOPS:
        return 1, 1
    want = min(-(-tiles // shape.batch), max(1, flops // GEMM_TILE_FLOPS))
    if want <= 1:
        return 1, 1
    best = None
    for tm in range(1, want + 1):
        tn = -(-want // tm)
        if (tm > 1 and m // tm < GEMM_TILE_EDGE) or (tn > 1 and n // tn < GEMM_TILE_EDGE):
            continue
        repacked = tm * k * n + tn * m * k
        if best is None or repacked < best[0]:
            best = (repacked, tm, tn)
    return (best[1], best[2]) if best is not None else (1, 1)


def generate_cpu(program, exact_math=False, guard=None, tiles=1) -> GeneratedCode:
    """The CompiledProgram of `program` and its readable schedule (see module docstring);
    `tiles`: how many tiles a big GEMM is cut into, the cores of the machine."""
    return _Builder(program, exact_math, guard, tiles).generate()


def render_source(code: GeneratedCode) -> str:
    """The schedule, then every loop kernel, commented with this program's IR names and the
    user's source lines."""
    p = code.program
    lines = [f"# fusegrad program {p.name}: {len(p.entries)} calls of {len(p.kernels)} kernels, "
             f"run in order by the dispatcher (runtime/cpu.py)"]
    lines += [f"# {k:3d}  {line}" for k, line in enumerate(code.schedule)]
    parts = ["\n".join(lines) + "\n"]
    for name in sorted(code.readable):
        parts.append(f"# ---- kernel {name} ----\n" + code.readable[name])
    return "\n\n".join(parts) + "\n"
