"""Kernel kinds: the `kind` attribute of a fused `kernel` node (passes/fusion.py), one row each
with what the passes after fusion need to know of it.

Kernel kinds are not primitives (those are rows of ir/ops.py): a kernel is one loop nest or one
library call that fusion made out of primitives. The memory plan (passes/memory.py) asks which
kinds may write an output over an input; fusion asks which loop kind holds a given set of
reductions. (codegen/common.py keeps its own LOOP_KINDS for the backends; a test checks it is
this table's.)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KernelKind:
    name: str
    loop: bool  # one loop nest over a 2-D space (R, C), every value with an index map
    in_place: bool  # may write an output into the buffer of an input that dies there
    reductions: frozenset | None  # loop kinds: the directions of the reductions it holds
    doc: str


_ROWS = (
    KernelKind("elementwise", True, True, frozenset(),
               "one pass over a 2-D space (R, C); any number of outputs"),
    KernelKind("row", True, True, frozenset({"row"}),
               "+ reductions over j (softmax, log-softmax + NLL, LayerNorm fwd/bwd): per row, one "
               "loop per reduction, then the elementwise consumers of their results"),
    KernelKind("column", True, True, frozenset({"col"}),
               "+ reductions over i (bias / LayerNorm-weight gradients), with the elementwise "
               "work on their results (e.g. the bias's optimizer update) in the combine pass"),
    KernelKind("row+column", True, True, frozenset({"row", "col"}),
               "reductions over j and over i in one kernel"),
    KernelKind("gemm", False, False, None, "one matmul, a BLAS call"),
    KernelKind("opaque", False, False, None,
               "one data-movement primitive (slice, pad, gather, unfold, transpose, ...)"),
    KernelKind("collective", False, False, None,
               "one all_reduce: its operands placed one after another in one buffer (the memory "
               "plan), summed over the processes in place by one call (MPI_Allreduce)"),
    # in place part by part: an output may take the buffer of an input only its own part reads
    KernelKind("scan", False, False, None,
               "a loop (fg.scan): the body's own program run `length` times"),
    KernelKind("multi", False, True, None,
               "several independent elementwise kernels run as one (the multi-tensor "
               "optimizer update)"),
)

KERNEL_KINDS: dict[str, KernelKind] = {k.name: k for k in _ROWS}
LOOP_KINDS = tuple(k.name for k in _ROWS if k.loop)
# the loop kind of a kernel, by the directions ("row", "col") of its reductions
LOOP_KIND_OF = {k.reductions: k.name for k in _ROWS if k.loop}
