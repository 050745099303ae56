"""The gradient sum of a data-parallel step: every process trains on its own shard of the batch,
and the step's gradients are summed over the processes inside the compiled step, before the
guard and the update, so every process applies the same update.

Each process's loss is a mean over its shard, so the job's loss is the mean of the processes'
losses weighted by their samples, and its gradient likewise: the backward pass starts from
this process's sample count instead of 1 (autodiff's `seed`), which makes every gradient
g_r * n_r; the sums over processes of those, of loss_r * n_r and of n_r then give the job's
mean exactly, whatever the shards' sizes:

    loss = sum_r(loss_r n_r) / sum_r(n_r)        grad = sum_r(g_r n_r) / sum_r(n_r)

All of them go into one `all_reduce` per dtype (one, in practice): its operands are laid out one
after another in one buffer of the arena (passes/memory.py writes each gradient straight into
its place), so a single MPI_Allreduce sums them all. The values the step checks before it
writes anything (the loss and each gradient, compiler/step.py) are these sums, the same on
every process: a NaN on any process makes every process skip the step.
"""
from __future__ import annotations

from ..ir import TensorType, Var
from ..ir.ops import packed_offsets
from .emit import Emitter

SAMPLES = TensorType("float64", ())  # this process's samples in the step (a runtime input)
HANDLES = TensorType("int64", (5,))  # communicator, MPI_FLOAT, MPI_DOUBLE, MPI_SUM, MPI_IN_PLACE


def inputs() -> list[tuple[Var, str]]:
    """The two runtime inputs a data-parallel step adds: (Var, name), role "hyper"."""
    return [(Var(SAMPLES, "samples"), "samples"), (Var(HANDLES, "mpi"), "mpi")]


def sum_over_processes(e: Emitter, loss: Var, grads: list, samples: Var, handles: Var,
                       handle_bits: int, update: Emitter):
    """(job's loss, [sum over processes of each g * n], [job's mean gradient]) from this
    process's `loss` and `grads` (already multiplied by its samples: the backward seed).
    The sums are what the step checks for inf and NaN; the means (emitted with `update`, so
    fusion divides inside the update's kernels) are what the optimizer reads."""
    count = e("cast", samples, dtype=loss.dtype)
    weighted = e.mul(loss, count)
    groups: dict = {}  # dtype -> positions in grads, in order of first appearance
    for i, g in enumerate(grads):
        groups.setdefault(g.dtype, []).append(i)
    groups.setdefault(loss.dtype, [])
    sums: list = [None] * len(grads)
    total = job_loss = None
    for dtype, members in groups.items():
        values = [grads[i] for i in members]
        if dtype == loss.dtype:  # the loss and the count travel with the gradients of its dtype
            values += [weighted, count]
        packed = e("all_reduce", handles, *values, handle_bits=handle_bits)
        offsets, _ = packed_offsets([v.type for v in values])
        parts = [e("part", packed, offset=at, shape=tuple(v.shape))
                 for v, at in zip(values, offsets)]
        for i, p in zip(members, parts):
            sums[i] = p
        if dtype == loss.dtype:
            total = parts[-1]
            job_loss = e.div(parts[-2], total)
    # a product with the reciprocal, computed once per kernel: a division per element costs
    # the update kernels a third more time (measured on mlp-large's SGD update, AVX-512)
    inverse = e.div(1, total)
    means = [update.mul(s, inverse if s.dtype == inverse.dtype
                        else update("cast", inverse, dtype=s.dtype)) for s in sums]
    return job_loss, sums, means
