"""Executable: a CompiledProgram made runnable, over memory allocated once.

    exe = Executable(program, kernel_addresses, dispatcher_address)
    status = exe.run(inputs)      # one call into the dispatcher; no allocation
    exe.output(k)                 # a copy of output k (loss, aux, gradients)

The schedule table lives in one int64 block the dispatcher reads (compiler/artifact.py explains
arguments as base + offset). Per call, only the input bases change: the addresses of the
caller's arrays, so parameters and optimizer state are updated in their own storage. Inputs are
checked against what the program was compiled for before anything runs: shape and dtype exactly,
written inputs writable and C-contiguous.
"""
from __future__ import annotations

import numpy as np

from ..compiler.artifact import ARENA, BASES, CONSTANTS, FLOATS, INTS, LOOP, SCRATCH
from . import threads
from .native import entry_function

ALIGN = 64
# the block's header, as the dispatcher reads it (kernels/cpu_library.py, HEADER:
# tests/test_cpu_backend.py checks they agree): n, nargs, nbases, start, stop, threads,
# parallel_for
HEADER = 7
THREADS, PARALLEL_FOR = 5, 6


def aligned_bytes(n: int) -> np.ndarray:
    """A zeroed uint8 array of n bytes whose data starts on a 64-byte boundary."""
    raw = np.zeros(n + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + n]


class InputMismatchError(ValueError):
    """An input of another shape, dtype or layout than the program was compiled for."""


class Executable:
    def __init__(self, program, kernel_addresses: list, dispatcher_address: int):
        self.program = program
        p = program
        n, nargs = len(p.entries), len(p.arg_base)
        self.n_inputs = len(p.inputs)
        nbases = len(BASES) + self.n_inputs
        self.arena = aligned_bytes(max(p.arena_bytes, ALIGN))
        self.scratch = aligned_bytes(max(p.scratch_bytes, ALIGN))
        self.ints = np.array(p.ints or [0], np.int64)
        self.floats = np.array(p.floats or [0.0], np.float64)
        offsets = p.constant_offsets()
        total = (offsets[-1] + p.constants[-1].nbytes) if p.constants else 0
        self.consts = aligned_bytes(max(total, ALIGN))
        for c, at in zip(p.constants, offsets):
            self.consts[at:at + c.nbytes] = np.frombuffer(np.ascontiguousarray(c).tobytes(),
                                                          np.uint8)
        block = np.zeros(HEADER + 4 * n + 3 * nargs + nbases + nargs, np.int64)
        block[:5] = (n, nargs, nbases, 0, n)
        block[THREADS] = 1  # until a run says otherwise
        at = HEADER
        block[at:at + n] = [0 if e.kernel == LOOP else kernel_addresses[e.kernel]
                            for e in p.entries]
        at += n
        block[at:at + n] = [e.args for e in p.entries]
        at += n
        block[at:at + n] = [e.units for e in p.entries]
        at += n
        block[at:at + n] = [e.nargs for e in p.entries]
        at += n
        self.parallel = any(e.units > 1 for e in p.entries)
        block[at:at + nargs] = p.arg_base
        at += nargs
        block[at:at + nargs] = p.arg_offset
        at += nargs
        block[at:at + nargs] = p.arg_stride
        at += nargs
        self.bases = block[at:at + nbases]  # a view: inputs are written here each call
        self.bases[[ARENA, SCRATCH, INTS, FLOATS, CONSTANTS]] = [
            self.arena.ctypes.data, self.scratch.ctypes.data, self.ints.ctypes.data,
            self.floats.ctypes.data, self.consts.ctypes.data]
        self.block = block
        # the dispatcher is entered like any kernel: with the address of its argument block,
        # whose one argument is the schedule's block
        self._argv = np.array([block.ctypes.data], np.int64)
        self._block_address = self._argv.ctypes.data
        self._run = entry_function(dispatcher_address)
        self._first_input = len(BASES)
        self._specs = [(tuple(i.shape), np.dtype(i.dtype), i.written) for i in p.inputs]
        self._written = np.array([w for _, _, w in self._specs], bool)
        self._lo = np.zeros(self.n_inputs, np.int64)  # each input's bytes: [lo, hi)
        self._hi = np.zeros(self.n_inputs, np.int64)
        self._seen: list = [None] * self.n_inputs  # the array last passed as each input
        self._keep: list = [None] * self.n_inputs  # contiguous copies of read-only inputs
        self.inputs: list = [None] * self.n_inputs

    # ---- inputs ----
    def _bind(self, k, x):
        """Check input k and point the schedule at its data."""
        shape, dtype, written = self._specs[k]
        name = self.program.inputs[k].name
        if not isinstance(x, np.ndarray):
            raise InputMismatchError(f"{name}: expected a NumPy array, got {type(x).__name__}")
        if x.shape != shape or x.dtype != dtype:
            raise InputMismatchError(f"{name}: the program was compiled for {dtype}{list(shape)}, "
                                     f"got {x.dtype}{list(x.shape)}")
        keep = None
        if not x.flags.c_contiguous:
            if written:
                raise ValueError(f"{name} is updated in place, so it must be C-contiguous: "
                                 f"replace it once with np.ascontiguousarray({name}) before "
                                 f"training")
            keep = np.ascontiguousarray(x)
        elif written and not x.flags.writeable:
            raise ValueError(f"{name} is updated in place, so it must be writable")
        data = keep if keep is not None else x
        address = data.ctypes.data if data.size else 0
        self._check_overlap(k, name, address, address + data.nbytes, keep is not None)
        self.bases[self._first_input + k] = address
        self._seen[k], self._keep[k] = x, keep

    def _check_overlap(self, k, name, lo, hi, copied):
        """An input the step writes must share no memory with any other input: the step would
        read values it has already overwritten (and two parameters that are one array would
        get two updates)."""
        self._lo[k], self._hi[k] = (lo, hi) if not copied else (0, 0)
        if hi == lo or copied:
            return
        others = self._written if not self._written[k] else np.ones(self.n_inputs, bool)
        clash = others & (self._lo < hi) & (lo < self._hi)
        clash[k] = False
        if clash.any():
            j = int(np.flatnonzero(clash)[0])
            other = self.program.inputs[j].name
            written = name if self._written[k] else other
            raise InputMismatchError(
                f"{name} and {other} share memory, and the step updates {written} in place: "
                f"pass separate arrays (np.copy one of them)")

    def bind(self, inputs) -> None:
        if len(inputs) != self.n_inputs:
            raise InputMismatchError(f"the program takes {self.n_inputs} inputs, got "
                                     f"{len(inputs)}")
        seen = self._seen
        for k, x in enumerate(inputs):
            # the same array as last call, unchanged (resize() could change its shape): its
            # address is already in the table
            if x is not seen[k] or x.shape != self._specs[k][0]:
                self._bind(k, x)
        self.inputs = inputs

    # ---- running ----
    def run(self, inputs) -> int:
        """Run the whole schedule; returns 0, or 256 * entry + status of the entry that
        stopped it (a failed check: nothing after it ran)."""
        self.bind(inputs)
        return self._call()

    def _call(self) -> int:
        """One call into the dispatcher, on the threads fg.set_num_threads chose."""
        n = threads.workers_now() if self.parallel else 1
        address = threads.parallel_for_address() if n > 1 else 0
        if not address:  # one thread (or no pool could be started: said once, in a warning)
            self.block[THREADS] = 1
            return self._run(self._block_address)
        self.block[PARALLEL_FOR] = address
        with threads.RUN_LOCK:
            self.block[THREADS] = n
            return self._run(self._block_address)

    def run_entries(self, start: int, stop: int) -> int:
        """Run entries [start, stop) only (profiling), on the inputs bound last."""
        self.block[3], self.block[4] = start, stop
        try:
            return self._call()
        finally:
            self.block[3], self.block[4] = 0, len(self.program.entries)

    def output(self, k, copy=True):
        o = self.program.outputs[k]
        if o.kind == "input":  # an output that is an input, or a reshaped view of one
            x = np.asarray(self.inputs[o.index]).reshape(o.shape)
        elif o.kind == "const":
            x = self.program.constants[o.index].reshape(o.shape)
        else:
            n = int(np.prod(o.shape, dtype=np.int64)) * np.dtype(o.dtype).itemsize
            x = self.arena[o.index:o.index + n].view(o.dtype).reshape(o.shape)
        return np.array(x, copy=True) if copy else x
