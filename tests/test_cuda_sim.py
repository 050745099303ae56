"""The CUDA backend (target="cuda"): every kernel kind and whole training steps against
target="cpu" and the interpreter, on Numba's CUDA simulator; the generated kernels compiled to
PTX for a real GPU; and the same checks on a real GPU where there is one (marked `gpu`).

The checks live in cuda_cases.py and run (cuda_sim_cases.py) in subprocesses started together
by one fixture: two on the simulator (NUMBA_ENABLE_CUDASIM=1 must be set before numba.cuda is
first imported, and must not leak into this process, where it would hide a real GPU) and one
compiling PTX without the simulator. Each case is reported as a test of its own here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cuda_sim_cases import CASES, PTX_PROGRAMS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIM_WORKERS = 2
TIMEOUT = 900  # seconds for each subprocess: the simulator is slow, a busy machine slower
NO_NVVM = ("NVVM", "libnvvm", "CUDA_HOME", "cudatoolkit")  # compile_ptx cannot run here


def _start(args, simulator: bool):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["FUSEGRAD_CROSSCHECK"] = "0"  # the cases compare against the interpreter themselves
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return subprocess.Popen([sys.executable, str(HERE / "cuda_sim_cases.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(ROOT))


def _collect(procs) -> dict:
    """case name -> result dict; a case a crashed worker never reported gets its stderr."""
    results = {}
    for proc, names in procs:
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()  # started by this fixture: end only it
            out, err = proc.communicate()
            err += f"\n(killed after {TIMEOUT} s)"
        for line in out.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                results[r["case"]] = r
        for name in names:
            results.setdefault(name, {"case": name, "ok": False, "error": (
                f"no result: the worker exited with code {proc.returncode}\n{err[-4000:]}")})
    return results


def _split(names, n):
    return [names[k::n] for k in range(n)]


PTX_CASES = [f"ptx_{p}" for p in PTX_PROGRAMS] + ["ptx_library"]


@pytest.fixture(scope="module")
def results():
    """Run every simulator case and the PTX compilation, concurrently, once."""
    procs = [(_start(part, simulator=True), part) for part in _split(list(CASES), SIM_WORKERS)]
    procs.append((_start(["--ptx"], simulator=False), PTX_CASES))
    return _collect(procs)


@pytest.mark.parametrize("name", list(CASES))
def test_on_simulator(results, name):
    r = results[name]
    assert r["ok"], f"{name} failed on the CUDA simulator:\n{r['error']}"


@pytest.mark.parametrize("name", PTX_CASES)
def test_kernels_compile_to_ptx(results, name):
    r = results[name]
    if not r["ok"] and any(s in r["error"] for s in NO_NVVM):
        pytest.skip("no CUDA toolkit (libNVVM) here to compile PTX with")
    assert r["ok"], f"{name}: a kernel does not compile for a real GPU:\n{r['error']}"


# ---- on a real GPU ------------------------------------------------------------------------------

def _gpu_present() -> bool:
    from fusegrad.runtime.cuda_device import cuda_available, on_simulator

    return cuda_available() and not on_simulator()


@pytest.fixture(scope="module")
def gpu_results():
    if not _gpu_present():
        pytest.skip("no CUDA GPU here")
    return _collect([(_start(list(CASES), simulator=False), list(CASES))])


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
def test_on_gpu(gpu_results, name):
    r = gpu_results[name]
    assert r["ok"], f"{name} failed on the GPU:\n{r['error']}"


# ---- without a GPU ------------------------------------------------------------------------------

def test_cuda_target_without_a_gpu_says_what_to_do():
    import numpy as np

    import fusegrad as fg
    from fusegrad.runtime.cuda_device import CudaUnavailableError, cuda_available

    if cuda_available():
        pytest.skip("CUDA is usable here")
    for make in (lambda: fg.jit(lambda x: x, target="cuda"),
                 lambda: fg.grad(lambda x: fg.sum(x), target="cuda"),
                 lambda: fg.train_step(lambda p, x: fg.sum(p * x), fg.optim.SGD(lr=0.1),
                                       target="cuda"),
                 lambda: fg.device_put({"w": np.ones(3)}, "cuda")):
        with pytest.raises(CudaUnavailableError) as info:
            make()
        message = str(info.value)
        for hint in ("fusegrad[cuda]", "NUMBA_ENABLE_CUDASIM=1", "target='cpu'"):
            assert hint in message


def test_cpu_path_imports_no_cuda_module():
    code = ("import sys, numpy as np, fusegrad as fg\n"
            "import fusegrad.compiler.codegen.cpu, fusegrad.runtime.cpu\n"
            "fg.grad(lambda x: fg.sum(x * x), target='interpret')(np.ones(3))\n"
            "fg.to_numpy(fg.device_put({'w': np.ones(2)}, 'cpu'))\n"
            "bad = [m for m in sys.modules if m.startswith(('numba.cuda', 'cupy'))]\n"
            "assert not bad, bad\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_cupy_views_keep_no_array_alive():
    """cuda_gemm caches one CuPy view per device array (the driver passes the same views of its
    arena every step), but must not keep the arrays, and so dead programs' arenas, alive."""
    import gc
    import weakref

    from fusegrad.kernels import cuda_gemm

    class Array:  # a device array as far as _as_cupy sees one
        def __init__(self, ptr):
            self.__cuda_array_interface__ = {"data": (ptr, False), "shape": (4,),
                                             "typestr": "<f4", "strides": None, "version": 3}

    class CuPy:  # like CuPy, a view keeps the object it wraps alive
        def __init__(self):
            self.made = []

        def asarray(self, obj):
            view = ("view", obj)
            self.made.append(view)
            return view

    cp = CuPy()
    before = dict(cuda_gemm._views)
    arrays = [Array(0x1000 * (k + 1)) for k in range(3)]
    views = [cuda_gemm._as_cupy(cp, x) for x in arrays]
    assert [cuda_gemm._as_cupy(cp, x) for x in arrays] == views  # made once per array
    assert len(cp.made) == 3
    for x, (_, wrapped) in zip(arrays, views):
        assert wrapped is not x and wrapped.__cuda_array_interface__ == x.__cuda_array_interface__
    refs = [weakref.ref(x) for x in arrays]
    del arrays, x, views
    gc.collect()
    assert all(r() is None for r in refs), "a cached view keeps its device array alive"
    assert cuda_gemm._views == before  # their entries went with them
