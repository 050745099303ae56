"""Data-parallel training across processes and machines, on MPI (mpi4py).

Every process holds the parameters and trains on its own shard of each batch; the step sums the
gradients over the processes inside the compiled step (one MPI_Allreduce: compiler/
data_parallel.py) and every process applies the same update, so the parameters stay identical.

    from mpi4py import MPI
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=1e-3), comm=MPI.COMM_WORLD)
    x_mine, y_mine = fg.distributed.shard((x, y), MPI.COMM_WORLD)   # this process's rows
    loss = step(params, x_mine, y_mine)    # the job's mean loss, the same on every process

    mpiexec -n 4 python -m mpi4py train.py

The first call of such a step starts every process from rank 0's parameters, optimizer state
and step count (`broadcast`). `fg.fit(step, params, batches)` shards every batch itself.

How compiled code reaches MPI: the kernel calls the C function MPI_Allreduce by name, and each
process binds that name to the function of the MPI library mpi4py loaded (runtime/mpi.py), so
nothing about the MPI library is compiled in but the width of its
handles (32-bit ints in MPICH's ABI, pointers in Open MPI's), which is part of the kernel's text
and of the program's key: a cached kernel is never used with another kind of MPI. The handles
themselves (communicator, datatypes, MPI_SUM, MPI_IN_PLACE) are an input of the step, filled at
run time.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .pytree import flatten


def _mpi():
    from .runtime.mpi import mpi4py_mpi

    return mpi4py_mpi()


def _signed64(value: int) -> int:
    value = int(value)
    return value - (1 << 64) if value >= 1 << 63 else value


class Communicator:
    """What fusegrad needs of an mpi4py communicator: its rank and size, the table of MPI
    handles a compiled step reads at run time, the width of those handles, and the calls the
    Python side makes (broadcasts, barriers, the interpreter's sum)."""

    def __init__(self, comm):
        MPI = _mpi()
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(f"comm must be an mpi4py intra-communicator (MPI.COMM_WORLD, or one "
                            f"made by comm.Split ...), got {type(comm).__name__}")
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        from .runtime.mpi import link

        self.handle_bits = link()  # compiled kernels call mpi4py's MPI_Allreduce
        self.handles = np.array([_signed64(MPI._handleof(h)) for h in (
            comm, MPI.FLOAT, MPI.DOUBLE, MPI.SUM)] + [_signed64(int(MPI.IN_PLACE))], np.int64)
        self.handles.flags.writeable = False
        self._in_place = MPI.IN_PLACE
        self._sum = MPI.SUM
        from .ir.interpret import COMMUNICATORS

        COMMUNICATORS[int(self.handles[0])] = self.sum_in_place  # the interpreter's all_reduce

    def __repr__(self):
        return f"Communicator(rank {self.rank} of {self.size})"

    def sum_in_place(self, array: np.ndarray) -> None:
        """`array` (C-contiguous) summed over the processes, in place."""
        self.comm.Allreduce(self._in_place, array, op=self._sum)

    def barrier(self) -> None:
        self.comm.Barrier()

    def broadcast_arrays(self, arrays, root: int = 0) -> None:
        """Every array (NumPy, C-contiguous, writable) overwritten by the root's, in place."""
        for x in arrays:
            self.comm.Bcast(x, root=root)

    def broadcast_value(self, value, root: int = 0):
        return self.comm.bcast(value, root=root)


_made: dict = {}  # id(mpi4py communicator) -> (the communicator, its Communicator)


def communicator(comm) -> Communicator:
    """The Communicator of an mpi4py communicator (made once per communicator object)."""
    if isinstance(comm, Communicator):
        return comm
    hit = _made.get(id(comm))
    if hit is None or hit[0] is not comm:
        hit = _made[id(comm)] = (comm, Communicator(comm))
    return hit[1]


def rank(comm) -> int:
    return communicator(comm).rank


def size(comm) -> int:
    return communicator(comm).size


def broadcast(params, comm, root: int = 0):
    """Overwrite every leaf of `params` (NumPy arrays, in place; device arrays are copied
    through the host) with rank `root`'s; returns `params`. A data-parallel train_step does this
    on its first call, with its optimizer state and step count."""
    from .device import copy_into, is_device_array, to_numpy

    c = communicator(comm)
    for x in flatten(params)[0]:
        if is_device_array(x):
            host = np.ascontiguousarray(to_numpy(x))
            c.broadcast_arrays([host], root)
            copy_into(x, host)
        elif isinstance(x, np.ndarray) and x.flags.c_contiguous and x.flags.writeable:
            c.broadcast_arrays([x], root)
        else:
            raise TypeError(f"broadcast updates parameters in place: every leaf must be a "
                            f"writable C-contiguous NumPy array, got {type(x).__name__}")
    return params


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of n that process `rank` of `size` takes: n // size each, the first
    n % size processes one more (np.array_split's shares)."""
    base, extra = divmod(int(n), int(size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def shard(batch, comm):
    """This process's rows of every array of `batch` (an array, or a tuple/list of arrays
    sharing their first dimension): views, no copies. The shares differ by at most one row;
    every process gets at least one (a batch of fewer rows than processes is an error)."""
    c = communicator(comm)
    single = not isinstance(batch, (tuple, list))
    arrays = (batch,) if single else tuple(batch)
    sizes = {np.shape(x)[0] for x in arrays if np.ndim(x) >= 1}
    if len(sizes) != 1:
        raise ValueError(f"shard: the batch's arrays must share their first dimension (the "
                         f"samples), got {sorted(sizes) or 'no arrays'}")
    (n,) = sizes
    if n < c.size:
        raise ValueError(f"shard: a batch of {n} samples cannot give each of {c.size} "
                         f"processes one")
    lo, hi = shard_bounds(n, c.rank, c.size)
    out = tuple(x[lo:hi] if np.ndim(x) >= 1 else x for x in arrays)
    return out[0] if single else out


def same_on_every_process(params, comm) -> bool:
    """Are `params` bit for bit the same on every process? (A SHA-256 of every leaf's bytes,
    gathered.) True on every process or on none."""
    from .device import to_numpy

    h = hashlib.sha256()
    for x in flatten(params)[0]:
        a = np.ascontiguousarray(to_numpy(x))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    digests = communicator(comm).comm.allgather(h.hexdigest())
    return len(set(digests)) == 1


__all__ = ["Communicator", "communicator", "broadcast", "shard", "shard_bounds", "rank", "size",
           "same_on_every_process"]
