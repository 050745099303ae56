"""Executable: runs a compiled program's driver over one arena allocated once.

    exe = Executable(driver, dims, arena_bytes, scratch, constants, outputs...)
    ok = exe.run(inputs)          # one call into compiled code; no allocation
    exe.output(k)                 # a copy of output k (loss, aux, gradients)

Inputs are passed flat (views of the caller's arrays), so parameters and optimizer state that
the plan writes in place are updated in the caller's own storage.
"""
from __future__ import annotations

import numpy as np

ALIGN = 64


def _aligned_bytes(n: int) -> np.ndarray:
    """A zeroed uint8 array of n bytes whose data starts on a 64-byte boundary."""
    raw = np.zeros(n + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + n]


class Executable:
    def __init__(self, run, dims, fconst, arena_bytes, scratch_elements, constants,
                 output_storage, written_inputs=(), input_names=()):
        self._run = run
        self.dims = np.asarray(dims, np.int64)
        self.fconst = np.asarray(fconst, np.float64)
        self.arena = _aligned_bytes(max(arena_bytes, ALIGN))
        self.scratch = np.zeros(max(scratch_elements, 1), np.float64)
        # constants are passed writable (Numba types read-only arrays differently)
        self.constants = [np.array(c, copy=True).reshape(-1) for c in constants]
        self.written = set(written_inputs)  # inputs the driver updates in place
        self.input_names = list(input_names)
        self._outputs = output_storage  # per output: ("arena", offset, dtype, shape) / ("input", i)
        self._flat_cache: dict = {}
        self._last_inputs = None

    def _flat(self, k, x):
        """A flat view of input k; the same array object reuses last call's view."""
        cached = self._flat_cache.get(k)
        if cached is not None and cached[0] is x:
            return cached[1]
        if x.flags.c_contiguous:
            flat = x.reshape(-1)  # a view: in-place updates land in the caller's array
        elif k in self.written:
            name = self.input_names[k] if k < len(self.input_names) else f"input {k}"
            raise ValueError(f"{name} is updated in place, so it must be C-contiguous: "
                             f"replace it once with np.ascontiguousarray({name}) before training")
        else:
            flat = np.ascontiguousarray(x).reshape(-1)
        self._flat_cache[k] = (x, flat)
        return flat

    def run(self, inputs) -> bool:
        flat = [self._flat(k, x) for k, x in enumerate(inputs)]
        self._last_inputs = inputs
        return bool(self._run(self.arena, self.dims, self.fconst, self.scratch, *flat,
                              *self.constants))

    def output(self, k, copy=True):
        kind = self._outputs[k]
        if kind[0] == "input":  # an output that is an input, or a reshaped view of one
            x = np.asarray(self._last_inputs[kind[1]]).reshape(kind[2])
        elif kind[0] == "const":
            x = kind[1]
        else:
            _, offset, dtype, shape = kind
            n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            x = self.arena[offset:offset + n].view(dtype).reshape(shape)
        return np.array(x, copy=True) if copy else x
