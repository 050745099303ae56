"""Runs the CUDA backend's checks (cuda_cases.py) in a process of its own; test_cuda_sim.py
starts it.

    NUMBA_ENABLE_CUDASIM=1 python tests/cuda_sim_cases.py [case ...]   # Numba's CUDA simulator
    python tests/cuda_sim_cases.py [case ...]                          # a real GPU
    python tests/cuda_sim_cases.py --ptx                               # PTX of every kernel

Prints one JSON line per case: {"case", "ok", "error", "seconds"}. A process of its own because
the simulator must be chosen before numba.cuda is first imported, and must not leak into other
tests (or hide a real GPU from them).

On the simulator, blocks run with a barrier-based scheduler (fast_block_scheduler): the stock
one busy-polls every thread of a block between syncthreads and is 2-3x slower. A barrier keeps
CUDA's guarantee (no thread of a block passes a syncthreads before all of them reach it) and is
stricter where the stock scheduler is lenient (a syncthreads that some threads skip deadlocks,
which the barrier's timeout turns into an error).
"""
from __future__ import annotations

import json
import sys
import threading
import time
import traceback
import warnings

import numpy as np

import fusegrad as fg
from backend_models import (attention_loss, cnn_loss, elementwise_zoo, ln_gelu_loss,
                            ln_gelu_params, mlp_batches, mlp_loss, mlp_params, movement)
from cuda_cases import CASES

# ---- ahead-of-time compilation for a real GPU (no GPU needed) -----------------------------------

PTX_PROGRAMS = ("mlp_adam", "ln_gelu", "cnn", "movement", "elementwise", "attention")


def programs():
    """(name, Program, guard) of a few models, compiled to the point of code generation."""
    out = []
    step = fg.train_step(mlp_loss, fg.optim.Adam(lr=0.05), target="interpret")
    step(mlp_params(), *mlp_batches(1)[0])
    out.append(("mlp_adam", step._runner(step._last).program, 0))
    rng = np.random.default_rng(0)

    def jit_program(fn, *args, grads=False):
        f = fg.value_and_grad(fn, target="interpret") if grads else fg.jit(fn, target="interpret")
        f(*args)
        return f.runner(f.trace()).program

    x = rng.standard_normal((6, 5)).astype(np.float32)
    t = rng.standard_normal((6, 4)).astype(np.float32)
    out.append(("ln_gelu", jit_program(ln_gelu_loss, ln_gelu_params(), x, t, grads=True), None))
    p = {"conv_w": np.ones((2, 1, 3, 3), np.float32), "conv_b": np.ones(2, np.float32),
         "fc_w": np.ones((32, 3), np.float32), "fc_b": np.zeros(3, np.float32)}
    out.append(("cnn", jit_program(cnn_loss, p, np.ones((2, 1, 4, 4), np.float32),
                                   np.array([2, 0]), grads=True), None))
    args = (np.ones((3, 4, 5), np.float32), np.ones((3, 2, 5), np.float32),
            np.ones((6, 3), np.float32), np.array([[1, 4, 1], [0, 1, 5]]), np.array([2, 0, 5, 2]))
    out.append(("movement", jit_program(movement, *args), None))
    a = np.ones((2, 16), np.float32)
    out.append(("elementwise", jit_program(elementwise_zoo, a, a, a[0], a[:, :1],
                                           np.float32(1), a.astype(np.int32),
                                           a.astype(np.int64)), None))
    pa = {n: np.ones((4, 4), np.float32) for n in ("wq", "wk", "wv", "wo")}
    pa["bo"] = np.ones(4, np.float32)
    out.append(("attention", jit_program(attention_loss, pa, np.ones((2, 3, 4), np.float32),
                                         np.ones((2, 3, 4), np.float32), grads=True), None))
    return out


def ptx_check() -> list:
    """Compile every generated kernel and every library kernel to PTX (sm_80) with numba.cuda:
    what the simulator cannot check (it runs the kernels as Python). Returns result dicts."""
    import numba
    from numba import cuda

    from fusegrad.kernels import cuda_gemm, cuda_library
    from fusegrad.compiler.codegen.cuda import generate_cuda
    from fusegrad.kernels.cuda_config import launch_config
    from fusegrad.runtime import cache

    def ty(s):
        return numba.from_dtype(np.dtype(s[2:]))[::1] if s.startswith("f:") else getattr(numba, s)

    def compile_one(fn, sig):
        cuda.compile_ptx(fn.py_func, tuple(sig), cc=(8, 0))

    results = []
    for name, program, guard in programs():
        t0 = time.perf_counter()
        try:
            code = generate_cuda(program, launch_config(), guard=guard)
            module, _ = cache.load_python_module("cuda", code.module)
            for kname, sig in code.signatures.items():
                compile_one(getattr(module, kname), [ty(s) for s in sig])
            results.append({"case": f"ptx_{name}", "ok": True})
        except Exception:  # noqa: BLE001
            results.append({"case": f"ptx_{name}", "ok": False, "error": traceback.format_exc()})
        results[-1]["seconds"] = time.perf_counter() - t0
    f32, i64, f64 = numba.float32[::1], numba.int64[::1], numba.float64[::1]
    n, t6 = numba.int64, numba.types.UniTuple(numba.int64, 6)
    lib = cuda_library
    library = [(lib._copy, (f32, f32, n)), (lib._fill, (f32, numba.float64, n)),
               (lib._strided_copy, (f32, n, t6, f32, n, t6, t6, n)),
               (lib._gather, (f32, i64, f32, n, n, n, n)),
               (lib._scatter_add, (i64, f32, f32, n, n, n, n)),
               (lib._reduce_middle, (f32, f32, n, n, numba.boolean, n)),
               (lib._argmax, (f32, i64, n, n, n)), (lib._iota, (f32, n, n, n)),
               (lib._unfold, (f32, f32, *[n] * 12)), (lib._fold, (f32, f32, *[n] * 12)),
               (lib._random_uniform, (i64, i64, f64, numba.boolean, n)),
               (cuda_gemm._tiled(16, "float32"), (f32, f32, f32, *[n] * 5, numba.boolean,
                                                  numba.boolean, n, n, n))]
    t0 = time.perf_counter()
    try:
        for fn, sig in library:
            compile_one(fn, sig)
        results.append({"case": "ptx_library", "ok": True})
    except Exception:  # noqa: BLE001
        results.append({"case": "ptx_library", "ok": False, "error": traceback.format_exc()})
    results[-1]["seconds"] = time.perf_counter() - t0
    return results


# ---- the simulator's block scheduler -------------------------------------------------------------

def fast_block_scheduler() -> bool:
    """Run simulated blocks with a barrier per block instead of the busy-polling scheduler
    (see module docstring). False if this Numba's simulator is not the one this was made for."""
    try:
        from numba.cuda.simulator import kernel as sim
    except ImportError:
        return False
    if not all(hasattr(sim, n) for n in ("BlockManager", "BlockThread")) or \
            not hasattr(sim.BlockManager, "run") or not hasattr(sim.BlockThread, "syncthreads"):
        return False
    stock_thread_run = sim.BlockThread.run

    def run_block(self, grid_point, *args):
        points = list(np.ndindex(*self._block_dim))
        barrier = threading.Barrier(len(points))
        threads = []
        for point in points:
            t = sim.BlockThread(lambda: self._f(*args), self, grid_point, point, self._debug)
            t.barrier = barrier
            threads.append(t)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for t in threads:
            if t.exception:
                raise t.exception[0].with_traceback(t.exception[1])

    def syncthreads(self):
        try:
            self.barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            raise RuntimeError("syncthreads: a thread of this block failed, or never reached "
                               "this barrier (a syncthreads inside divergent code)") from None

    def thread_run(self):
        stock_thread_run(self)
        if self.exception is not None:
            self.barrier.abort()  # release the others: the launch fails with this exception

    sim.BlockManager.run = run_block
    sim.BlockThread.syncthreads = syncthreads
    sim.BlockThread.run = thread_run
    _atomic_shared_arrays()
    return True


def _atomic_shared_arrays():
    """The simulator's cuda.shared.array looks up a block's array by call site and creates it
    when missing, without a lock: two threads of a block that reach the line together can each
    create one, and then reduce through different arrays (seen once in CI: a wrong first loss,
    the later ones right, since the array is reused once created). The same lookup under a
    lock."""
    import numba
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    lock = threading.Lock()
    stock = kernelapi.FakeCUDAShared.array

    def array(self, shape, dtype):
        if shape == 0:  # dynamic shared memory: one buffer, no lookup
            return stock(self, shape, dtype)
        if isinstance(dtype, numba.types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = traceback.extract_stack(sys._getframe(1), limit=1)[0][0:2]
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array


def main(argv) -> int:
    warnings.simplefilter("ignore")  # numba.cuda's deprecation; NumPy overflow in simulated ints
    if argv[:1] == ["--ptx"]:
        for r in ptx_check():
            print(json.dumps(r), flush=True)
        return 0
    from fusegrad.runtime.cuda_device import on_simulator

    if on_simulator():
        sys.setswitchinterval(5e-4)  # simulated threads hand the GIL to each other constantly
        fast_block_scheduler()
    for name in argv or list(CASES):
        t0 = time.perf_counter()
        try:
            CASES[name]()
            result = {"case": name, "ok": True}
        except Exception:  # noqa: BLE001 - reported to the parent test
            result = {"case": name, "ok": False, "error": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - t0, 3)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
