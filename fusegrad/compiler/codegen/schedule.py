"""The walk over a fused program that both backends' code generators share.

A fused program is a list of kernel nodes in schedule order over values the memory plan placed
(an arena offset, an input's own storage, a view of either, a constant). `ScheduleWriter.write`
names where every value lives, then hands each kernel node to the backend by its kind, checks
the loss as soon as the kernel computing it has run (before any parameter is overwritten), and
finally copies back the outputs that could not be updated in place:

    kind                     hook                       CPU (cpu.py)          CUDA (cuda.py)
    elementwise, row, ...    loop(node, ins, outs)      a kernel call         a launch (+ combine)
    multi                    multi(node, ins, outs)     one call per part     grid-stride launches
    gemm                     gemm(mm, ins, outs, g)     BLAS sgemm/dgemm      cuBLAS / tiled
    collective               collective(prim, h, out)   MPI_Allreduce call    mpi4py on a host copy
    a lone movement op       movement(prim, calls)      library kernels       cuda_library calls
    scan                     scan(prim, ins, outs)      a dispatcher loop     (not yet)
    the loss                 check_loss(var)            check_finite call     finite() + return
    not updated in place     copy_back(out, i)          copy call             copy call

A backend's references to values (`ref`) are its own: the CPU's are (base, offset) places in the
dispatcher's tables, CUDA's are the driver's local names. `what` and `loc` say what a call
computes and where it came from, for the comments people read.
"""
from __future__ import annotations

from math import prod
from typing import NamedTuple

from ...ir.printer import short_loc, var_names
from ..passes.prepare import batch_suffix
from ..passes.kernel_kinds import KERNEL_KINDS
from .cpu_movement import MOVEMENT, copy_into


class GemmShape(NamedTuple):
    """A (batched) matrix product out[b] = op(a[b]) @ op(b[b]): op transposes where asked; an
    operand with fewer batch elements than the output repeats them (b % a_batch)."""
    batch: int
    a_batch: int
    b_batch: int
    m: int
    n: int
    k: int
    transpose_a: bool
    transpose_b: bool

    @classmethod
    def of(cls, mm) -> "GemmShape":
        a, b = mm.inputs
        ta, tb = mm.attrs["transpose_a"], mm.attrs["transpose_b"]
        m, n = mm.out.shape[-2:]
        batch_shape = mm.out.shape[:-2]
        for x in (a, b):  # prepare_for_fusion leaves only suffix batch broadcasts
            if not batch_suffix(x.shape[:-2], batch_shape):
                raise NotImplementedError(f"matmul batch broadcasting {a.type} @ {b.type}")
        return cls(prod(batch_shape), prod(a.shape[:-2]), prod(b.shape[:-2]), m, n,
                   a.shape[-2] if ta else a.shape[-1], ta, tb)

    @property
    def sizes(self) -> tuple:
        return (self.batch, self.a_batch, self.b_batch, self.m, self.n, self.k)


class ScheduleWriter:
    """The shared walk (see the module docstring); backends implement the hooks."""

    TARGET = "?"  # named in errors

    def __init__(self, program, guard=None):
        self.fused = program.fused
        self.plan = program.plan
        self.guard = guard  # the output index of the loss checked before the update, or None
        self.names = var_names(self.fused)
        self.ref: dict = {}  # value -> the backend's reference to its data

    # ---- hooks ----
    def input_ref(self, k, v):
        raise NotImplementedError

    def constant_ref(self, k, node):
        raise NotImplementedError

    def arena_ref(self, v, buffer):
        raise NotImplementedError

    def retyped(self, ref, v):
        """`ref` read as value v (a reshape, or an output stored in an input's storage)."""
        return ref

    def loop(self, node, ins, outs, what, loc):
        raise NotImplementedError

    def multi(self, node, ins, outs, what, loc):
        """Independent elementwise kernels in one node: by default, each on its own."""
        inner = dict(zip(node.region.inputs, ins)) | dict(zip(node.region.outputs, outs))
        for sub in node.region.nodes:
            self.emit(sub, [inner[v] for v in sub.inputs], [inner[v] for v in sub.outputs])

    def gemm(self, mm, ins, outs, shape: GemmShape, what, loc):
        raise NotImplementedError

    def movement(self, prim, calls, what, loc):
        raise NotImplementedError

    def scan(self, prim, ins, outs, what, loc):
        """A loop (fg.scan): `prim` is the scan node, its region the body."""
        raise NotImplementedError(f"fg.scan does not compile for the {self.TARGET} target yet; "
                                  f"use target='cpu' or 'interpret'")

    def collective(self, prim, handles, out, what, loc):
        """all_reduce `prim`: `out` (its operands already in place) summed over the processes
        in place; `handles` the MPI handle table input."""
        raise NotImplementedError

    def check_loss(self, var):
        raise NotImplementedError

    def copy_back(self, out, k):
        """Output `out` (not updated in place) into input k's storage."""
        raise NotImplementedError

    # ---- the walk ----
    def what(self, node, outputs=None) -> str:
        """`%3, %4 = row`: what a call computes."""
        outputs = node.outputs if outputs is None else outputs
        return f"{', '.join(self.names.get(v, '%?') for v in outputs)} = {node.attrs['kind']}"

    def place_values(self):
        fused = self.fused
        for k, v in enumerate(fused.inputs):
            self.ref[v] = self.input_ref(k, v)
        for k, n in enumerate(n for n in fused.nodes if n.op == "constant"):
            self.ref[n.out] = self.constant_ref(k, n)
        for n in fused.nodes:
            for v in n.outputs:
                kind, where = self.plan.storage[v]
                if kind == "arena":
                    self.ref[v] = self.arena_ref(v, where)
                elif kind == "input":
                    self.ref[v] = self.retyped(self.ref[fused.inputs[where]], v)
                elif kind == "view":
                    self.ref[v] = self.retyped(self.ref[where], v)

    def emit(self, node, ins, outs):
        """One kernel node, its operands' and results' references given."""
        kind = node.attrs["kind"]
        what, loc = self.what(node), short_loc(node.loc)
        if kind == "multi":
            self.multi(node, ins, outs, what, loc)
            return
        if KERNEL_KINDS[kind].loop:
            self.loop(node, ins, outs, what, loc)
            return
        (prim,) = node.region.nodes  # one primitive: its operands, by position
        operand = dict(zip(node.region.inputs, ins))
        prim_ins = [operand[v] for v in prim.inputs]
        if kind == "gemm":
            self.gemm(prim, prim_ins, outs, GemmShape.of(prim), what, loc)
            return
        if kind == "scan":  # several outputs, some perhaps unused (None)
            result = dict(zip(node.region.outputs, outs))
            self.scan(prim, prim_ins, [result.get(v) for v in prim.outputs], what, loc)
            return
        if kind == "collective":
            self._collective(node, prim, prim_ins, outs[0], what, loc)
            return
        emitter = MOVEMENT.get(prim.op)
        if emitter is None:
            raise NotImplementedError(f"no {self.TARGET} emitter for a lone {prim.op} kernel")
        self.movement(prim, emitter(prim, prim_ins, outs[0]), what, loc)

    def _collective(self, node, prim, ins, out, what, loc):
        """The operands the memory plan could not have computed in their place are copied
        there (passes/memory.py), then the one call sums the region."""
        for (v, at, home), ref in zip(self.plan.packs[node], ins[1:]):
            if not home:
                calls = copy_into(ref, v.shape, out, at)
                self.movement(prim, calls, f"{self.names.get(v, '%?')} into {what}", loc)
        self.collective(prim, ins[0], out, what, loc)

    def write(self):
        """Every kernel in schedule order, the loss check, the copies back."""
        fused, plan = self.fused, self.plan
        self.place_values()
        aliased_writes = {v for v, (kind, _) in plan.storage.items() if kind == "input"}
        guard_var = fused.outputs[self.guard] if self.guard is not None else None
        for node in fused.nodes:
            if node.op != "kernel":
                continue
            self.emit(node, [self.ref[v] for v in node.inputs],
                      [self.ref[v] for v in node.outputs])
            if guard_var is not None and guard_var in node.outputs:
                self.check_loss(guard_var)
                guard_var = None
            elif guard_var is not None and aliased_writes & set(node.outputs):
                raise AssertionError("a parameter is overwritten before the loss is checked")
        for o, i in plan.copies_back:
            self.copy_back(o, i)
