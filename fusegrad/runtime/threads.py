"""How many threads a compiled step runs on, and the one pool they come from.

    fg.set_num_threads(4)        # or FUSEGRAD_NUM_THREADS=4 before the first step
    fg.get_num_threads()

Parallel loop kernels run on the workers of Numba's threading layer: the dispatcher hands an
entry to `parallel_for`, the layer's C entry, with one index per worker (kernel_lang's
parallel_call). The pool is launched the first time a step runs on more than one thread (a
tenth of a second, once per process); a process that stays on one thread never starts it, and
a process forked from one that did runs its steps on one thread.

GEMMs call SciPy's OpenBLAS, which has a pool of its own. fusegrad sets it to one thread when
its runtime loads and splits each big product into tiles fixed at compile time, shared out to
the same workers (codegen/cpu.py, gemm_tiles): one pool, so BLAS threads never spin against
the kernels' (measured 2-2.5x slower kernels right after a GEMM otherwise), and results that do
not depend on the number of threads (OpenBLAS's own threads change a product's rounding).
A side effect to know: scipy.linalg in the same process then runs on one thread too. Where
SciPy uses another BLAS (not its bundled OpenBLAS) fusegrad cannot set its threads: the tiles
then run on that library's threads as well.

Results do not depend on the number of threads: the code generator splits work only where
every element is computed the same way by whichever worker computes it, and column reductions
are summed in a fixed number of chunks combined in a fixed order (codegen/cpu_loops.py).
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from functools import lru_cache

from .. import config

_state = {"threads": None}  # None: not set yet (FUSEGRAD_NUM_THREADS or the cores, on first use)
_launch_lock = threading.Lock()
# two Python threads running steps at once take turns with the pool (Numba's workqueue layer,
# which NUMBA_THREADING_LAYER may pick, is not re-entrant)
RUN_LOCK = threading.Lock()


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset
    narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pool_size() -> int:
    """The most threads a step can use: the size of Numba's pool (NUMBA_NUM_THREADS, by
    default the machine's cores)."""
    from numba import config as numba_config

    return int(numba_config.NUMBA_NUM_THREADS)


def get_num_threads() -> int:
    """The threads compiled steps run on in this process."""
    n = _state["threads"]
    if n is None:
        wanted = config.get("FUSEGRAD_NUM_THREADS")
        n = _state["threads"] = (_checked(wanted, "FUSEGRAD_NUM_THREADS")
                                 if wanted is not None else min(cores(), pool_size()))
    return n


def set_num_threads(n: int) -> None:
    """Run compiled steps (their parallel kernels and their GEMMs) on n threads: from 1 to the
    pool's size (NUMBA_NUM_THREADS, set before Numba is imported, raises it)."""
    _state["threads"] = _checked(n, "set_num_threads(n)")


def _checked(n, what) -> int:
    if isinstance(n, bool) or not hasattr(n, "__index__"):  # ints and NumPy's integers
        raise TypeError(f"{what}: the number of threads is an integer, got {n!r}")
    n = int(n)
    top = pool_size()
    if not 1 <= n <= top:
        raise ValueError(f"{what}: {n} threads; this process can use 1 to {top} (the size of "
                         f"Numba's thread pool: set NUMBA_NUM_THREADS before importing "
                         f"fusegrad for more)")
    return n


# ---- sharing the cores: fewer workers while other processes keep cores busy -------------------

class _CoreWatch:
    """How many cores other processes leave free, sampled at most every INTERVAL seconds from
    /proc/stat (all CPU time on the machine) minus this process's own CPU time.

    Why: a worker that has to wait for a core held by another process stalls every parallel
    call until the scheduler gives it one (measured here: a split 100 us call took 180 us with
    the other core busy, a 25 us step 300 us). Results do not depend on the number of workers,
    so running on fewer while the cores are shared costs nothing but the parallelism. The
    interval is short: with half-second samples, benchmarks alternating processes every half
    second saw the previous one's work and ran fusegrad on one thread (mlp-large 136 ms a step
    instead of 88)."""

    INTERVAL = 0.05  # seconds between samples: short, so that a burst of other work ends soon
    BUSY = 0.5  # a core counts as taken when others used more than this fraction of it

    def __init__(self):
        self.last = None  # (wall time, machine busy seconds, own CPU seconds)
        self.free = None  # cores free for us at the last sample (None: not known)

    @staticmethod
    def _machine_busy():
        try:
            with open("/proc/stat", "rb") as f:
                fields = f.readline().split()[1:]
        except OSError:
            return None
        # user, nice, system; irq, softirq: time the machine's processes ran (not idle,
        # iowait, nor a VM's steal time: the hypervisor's, which fewer workers do not help)
        ticks = [int(x) for x in fields[:7]]
        return (sum(ticks[:3]) + sum(ticks[5:7])) / os.sysconf("SC_CLK_TCK")

    def free_cores(self, total: int):
        now = time.monotonic()
        if self.last is not None and now - self.last[0] < self.INTERVAL:
            return self.free
        busy, own = self._machine_busy(), time.process_time()
        if busy is None:
            return None
        if self.last is not None:
            wall = now - self.last[0]
            others = (busy - self.last[1]) - (own - self.last[2])
            # cores other processes held on average (on the whole machine: an upper bound on
            # what they took from this process's cores)
            taken = max(0.0, others / wall)
            self.free = max(1, total - int(taken + 1 - self.BUSY))
        self.last = (now, busy, own)
        return self.free


_watch = _CoreWatch()


def workers_now() -> int:
    """The threads the next step runs on: get_num_threads(), fewer while other processes keep
    some of the cores busy (FUSEGRAD_SHARE_CORES=0 turns this off)."""
    n = get_num_threads()
    if n == 1 or not pool_usable():
        return 1
    if not config.get("FUSEGRAD_SHARE_CORES"):
        return n
    free = _watch.free_cores(cores())
    return n if free is None else max(1, min(n, free))


# ---- the pool: Numba's threading layer ---------------------------------------------------------

_pool = {"pid": None}  # the process that launched the pool


@lru_cache(maxsize=None)
def parallel_for_address() -> int:
    """The address of the threading layer's parallel_for, launching the pool on first call
    (the layer Numba picks: OpenMP where it has it, whose threads wait spinning, so handing a
    call to them costs ~3.5 us here against ~70 us for the workqueue layer's sleeping
    threads; NUMBA_THREADING_LAYER chooses another). 0, after one warning, when no layer can
    be started here: steps then run on one thread, with the same results."""
    import llvmlite.binding as llvm

    try:
        from numba.np.ufunc import parallel

        with _launch_lock:
            parallel._launch_threads()
            if _pool["pid"] is None:
                _pool["pid"] = os.getpid()
        address = llvm.address_of_symbol("numba_parallel_for")
        if not address:
            raise RuntimeError("the threading layer registered no numba_parallel_for")
    except Exception as exc:  # noqa: BLE001 - any failure: run on one thread, say why once
        import warnings

        warnings.warn(f"fusegrad: Numba's threading layer could not be started ({exc}); "
                      f"compiled steps run on one thread (NUMBA_THREADING_LAYER chooses "
                      f"another layer)", RuntimeWarning, stacklevel=3)
        return 0
    return address


def pool_usable() -> bool:
    """False in a process forked from the one that launched the pool: its threads did not
    survive the fork (and GNU OpenMP stops a child that uses it), so such a process runs its
    steps on one thread, with the same results."""
    return _pool["pid"] in (None, os.getpid())


def layer() -> str:
    """The threading layer in use ('workqueue', 'omp', 'tbb'), or 'none' before any step ran
    on more than one thread."""
    from numba.np.ufunc import parallel

    return parallel._threading_layer if getattr(parallel, "_is_initialized", False) else "none"


# ---- BLAS: SciPy's OpenBLAS, the library the GEMMs call (runtime/native.py) --------------------

@lru_cache(maxsize=None)
def _openblas():
    """SciPy's bundled OpenBLAS (ctypes), or None when SciPy uses another BLAS."""
    from .native import scipy_openblas_path

    path = scipy_openblas_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        setter = lib.scipy_openblas_set_num_threads
        getter = lib.scipy_openblas_get_num_threads
    except (OSError, AttributeError):
        return None
    setter.argtypes, setter.restype = [ctypes.c_int], None
    getter.argtypes, getter.restype = [], ctypes.c_int
    return setter, getter


def single_threaded_blas() -> None:
    """SciPy's OpenBLAS on one thread (the runtime does this once, before any GEMM runs)."""
    lib = _openblas()
    if lib is not None:
        lib[0](1)


def blas_threads() -> int | None:
    lib = _openblas()
    return lib[1]() if lib is not None else None


def describe() -> str:
    """One line: the threads, the layer and the BLAS threads (benchmark headers, stats)."""
    n = get_num_threads()
    blas = blas_threads()
    return (f"{n} thread{'s' if n != 1 else ''} (of {cores()} cores; pool: {layer()}); "
            f"GEMMs in tiles shared by the same threads, "
            + ("OpenBLAS on 1 thread per tile" if blas == 1 else
               f"OpenBLAS on {blas} threads until the CPU runtime loads, then 1 per tile"
               if blas is not None else "BLAS: not SciPy's OpenBLAS"))
