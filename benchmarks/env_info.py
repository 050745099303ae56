"""What the numbers were measured on: CPU, library versions, BLAS (threadpoolctl), threads."""
from __future__ import annotations

import os
import platform
from importlib import metadata

BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER",
            "XLA_FLAGS")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict:
    return {d: version(d) for d in ("numpy", "scipy", "numba", "llvmlite", "torch", "jax",
                                    "jaxlib")}


def blas_info() -> list[str]:
    """One line per BLAS/OpenMP pool loaded in this process (call after the imports)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["threadpoolctl not installed (pip install threadpoolctl)"]
    lines = []
    for p in threadpool_info():
        where = os.path.basename(p.get("filepath", ""))
        lines.append(f"{p.get('user_api')}/{p.get('internal_api')} {p.get('version')} "
                     f"kernel={p.get('architecture', '-')} threads={p.get('num_threads')} "
                     f"({where})")
    return lines


def numba_threads() -> str:
    try:
        import numba

        layer = numba.threading_layer()
    except Exception:  # noqa: BLE001 - raises until a parallel function has run
        layer = "not started"
    else:
        return f"numba threads={numba.get_num_threads()} layer={layer}"
    return f"numba threading layer {layer}"


def fusegrad_threads() -> list[str]:
    """In a process that ran fusegrad: its threads, pool and BLAS setting (runtime/threads.py)."""
    import sys

    if "fusegrad" not in sys.modules:
        return []
    from fusegrad.runtime import threads

    return ["fusegrad: " + threads.describe()]


def fusegrad_revision() -> str:
    """The checkout's commit, and whether fusegrad/ has uncommitted changes (read-only git)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                                capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fusegrad"], cwd=root,
                               text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if not commit:
        return "unknown (not a git checkout)"
    return commit + (" + uncommitted changes in fusegrad/" if dirty else "")


def load_average() -> str:
    """1/5/15-minute load averages: other processes on the machine skew every timing."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def header_lines() -> list[str]:
    v = versions()
    lines = [
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"Python {platform.python_version()}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"fusegrad checkout: {fusegrad_revision()}",
    ]
    lines.append("fusegrad threads: FUSEGRAD_NUM_THREADS, else the cores this process may use; "
                 "loop kernels and GEMM tiles on Numba's pool, SciPy's OpenBLAS on one thread "
                 "per tile (fusegrad/runtime/threads.py)")
    lines.append(f"load average before the run: {load_average()} (on {os.cpu_count()} CPUs; "
                 f"anything above ~0.5 means other processes share the cores)")
    set_vars = [f"{k}={os.environ[k]}" for k in BLAS_ENV if k in os.environ]
    lines.append("environment: " + (", ".join(set_vars) if set_vars else
                                    "no BLAS/thread variables set"))
    if any(k in os.environ for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")):
        lines.append("  note: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE slow current NumPy GEMMs here; "
                     "compare with: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
                     "python benchmarks/run.py")
    return lines
