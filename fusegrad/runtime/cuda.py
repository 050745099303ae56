"""The CUDA runtime: a generated CUDA module run over one device arena.

    build = CudaBuild(program, code)      # loads the module, allocates the arena (once)
    ok = build.run(inputs)                # launches the schedule; False: the loss was not finite
    build.output(k)                       # output k, copied to the host

Inputs may be device arrays (fg.device_put, CuPy, anything with __cuda_array_interface__): the
kernels read and update them where they are, without copies. NumPy inputs are copied into a
device staging buffer of their own (allocated once); those the step updates in place (parameters,
optimizer state) are copied back into the caller's array after the step, so the NumPy API keeps
its in-place semantics. Device inputs are the fast path: a training step on device parameters
moves only the batch in and the loss out.
"""
from __future__ import annotations

import time

import numpy as np

from ..ir.types import is_device_array
from . import cache
from .cuda_device import require_cuda


def output_storage(fused, plan):
    """Where each graph output can be read after a run (see CudaBuild.output)."""
    out = []
    for v in fused.outputs:
        kind, where = plan.place(v)
        if kind == "arena":
            out.append(("arena", where.offset, v.type.dtype, v.shape))
        elif kind == "input":
            out.append(("input", where, v.shape))
        else:
            out.append(("const", where.attrs["value"].array.reshape(v.shape)))
    return out


class CudaBuild:
    """The loaded module, its device memory, and what it took to make it (for stats())."""

    def __init__(self, program, code):
        self.cuda = cuda = require_cuda()
        t0 = time.perf_counter()
        self.module, hit = cache.load_python_module("cuda", code.module)
        self.load_seconds = time.perf_counter() - t0
        self.cache_hit = hit
        self.cache_reason = ("the module was on disk" if hit else "new program structure: "
                             "module written")
        self.kernel_files = len(code.kernels)
        self.kernel_files_reused = len(code.kernels) if hit else 0
        self.driver_path = self.module.__file__
        self.driver = "python"  # a Python function launching the kernels (stats' driver_kind)
        self.code = code
        fused, plan = program.fused, program.plan
        # the driver reads these (rt.*): one arena allocation, views of it, tables
        self.arena = cuda.device_array(max(code.arena_bytes, 1), np.uint8)
        self.views = [self.arena[o:o + n].view(np.dtype(d)) for o, n, d in code.views]
        self.consts = [cuda.to_device(np.ascontiguousarray(n.attrs["value"].array).reshape(-1))
                       for n in fused.nodes if n.op == "constant"]
        self.snapshots = [cuda.device_array(n, np.dtype(d)) for d, n in code.snapshots]
        self.scratch = cuda.device_array(max(code.scratch_elements, 1), np.float64)
        self.dims, self.fconst = code.dims, code.fconst
        self.loss_host = np.empty(1, code.guard_dtype or np.float64)
        self.input_types = [(tuple(v.shape), np.dtype(v.dtype)) for v in fused.inputs]
        self.input_names = list(fused.input_names)
        self.written = ({w for v, (kind, w) in plan.storage.items()
                         if kind == "input" and v not in fused.inputs}
                        | {i for _, i in plan.copies_back})
        self._outputs = output_storage(fused, plan)
        self._staging: dict = {}  # input index -> device buffer for NumPy inputs
        self._device_views: dict = {}  # input index -> (caller's device array, flat view)
        self._flat: list = []
        self.executable = self  # what Runner.run reads outputs from
        self.compile_seconds = None  # measured at the first run (Numba compiles on launch)

    def all_reduce(self, buf, handles):
        """A collective in the driver: `buf` (device) summed over the processes, in place,
        through a host copy with mpi4py (the communicator fusegrad.distributed registered for
        the handle the table `handles` holds; handle 0, no communicator: one process)."""
        from ..ir.interpret import COMMUNICATORS

        table = handles.copy_to_host() if hasattr(handles, "copy_to_host") else handles
        comm = int(np.asarray(table)[0])
        if comm == 0:
            return
        host = buf.copy_to_host()
        COMMUNICATORS[comm](host)
        buf.copy_to_device(host)

    # ---- inputs ----
    def _name(self, k):
        return self.input_names[k] if k < len(self.input_names) else f"input {k}"

    def _device_input(self, k, x):
        """A flat device array holding input k: the caller's own (device input) or a staging
        buffer filled from the host."""
        shape, dtype = self.input_types[k]
        if is_device_array(x):
            hit = self._device_views.get(k)
            if hit is not None and hit[0] is x:
                return hit[1]
            d = x if hasattr(x, "copy_to_host") else self.cuda.as_cuda_array(x)
            if tuple(d.shape) != shape or np.dtype(d.dtype) != dtype:
                raise TypeError(f"{self._name(k)}: expected a {dtype} array of shape {shape}, "
                                f"got a device array {np.dtype(d.dtype)}{tuple(d.shape)}")
            if not d.is_c_contiguous():
                raise ValueError(f"{self._name(k)} is a non-contiguous device array; the CUDA "
                                 f"kernels need C-contiguous arrays")
            flat = d.reshape(d.size)  # a view: in-place updates land in the caller's array
            self._device_views[k] = (x, flat)
            return flat
        a = np.asarray(x)
        buf = self._staging.get(k)
        if buf is None:
            buf = self._staging[k] = self.cuda.device_array(a.size, dtype)
        buf.copy_to_device(np.ascontiguousarray(a, dtype=dtype).reshape(-1))
        return buf

    def _check_writable(self, inputs):
        for k in self.written:
            x = inputs[k]
            if not is_device_array(x) and not np.asarray(x).flags.c_contiguous:
                name = self._name(k)
                raise ValueError(f"{name} is updated in place, so it must be C-contiguous: "
                                 f"replace it once with np.ascontiguousarray({name}) before "
                                 f"training")

    # ---- running ----
    def run(self, inputs) -> bool:
        first = self.compile_seconds is None
        t0 = time.perf_counter()
        self._check_writable(inputs)
        self._flat = [self._device_input(k, x) for k, x in enumerate(inputs)]
        self._last_inputs = inputs
        ok = bool(self.module.run(self, *self._flat))
        if ok:  # NumPy arrays the step updated: the caller's copy too
            for k in self.written:
                x = inputs[k]
                if not is_device_array(x):
                    self._flat[k].copy_to_host(x.reshape(-1))
        if first:
            self.synchronize()
            self.compile_seconds = time.perf_counter() - t0
        return ok

    def synchronize(self):
        self.cuda.synchronize()

    def output(self, k, copy=True):
        """Output k as a NumPy array (always a copy: it comes from the device)."""
        kind = self._outputs[k]
        if kind[0] == "input":  # an output that is an input, or a reshaped view of one
            return self._flat[kind[1]].copy_to_host().reshape(kind[2])
        if kind[0] == "const":
            return np.array(kind[1], copy=True)
        _, offset, dtype, shape = kind
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if n == 0:
            return np.zeros(shape, dtype)
        return self.arena[offset:offset + n].view(np.dtype(dtype)).copy_to_host().reshape(shape)

    def profile(self, inputs, repeats=5) -> list:
        """[(launch description, seconds), ...]: each launch synchronised and timed, median of
        `repeats` runs after one untimed run."""
        self.run(inputs)
        runs = []
        for _ in range(repeats):
            marks: list = []
            flat = [self._device_input(k, x) for k, x in enumerate(inputs)]
            self.module.run_profiled(time.perf_counter, marks, self, *flat)
            runs.append(marks)
        n = min(len(r) for r in runs)
        return [(runs[0][k][0], float(np.median([r[k][1] for r in runs]))) for k in range(n)]
