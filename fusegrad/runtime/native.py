"""Native code in this process: object files loaded into one LLVM JIT, and calls into them.

    addr = load_object(obj_bytes, symbols_needed, entry_names)   # {name: address}
    run = entry_function(addr)           # ctypes: int64 run(int64 *args)

Kernels are compiled to object code (compiler/native) and loaded here; the symbols they call
outside themselves (libm's expf/tanhf..., libc's memset/memcpy that LLVM's loop idioms emit,
BLAS sgemm/dgemm from SciPy's bundled OpenBLAS, as Numba's np.dot uses; MPI_Allreduce from the
MPI library mpi4py loaded, once fusegrad.distributed has bound it) are bound by name first: an
object needing a symbol that cannot be resolved is refused with an error instead of letting LLVM
abort the process.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from functools import lru_cache

import llvmlite.binding as llvm

from ..compiler.native.machine import target_machine

_lock = threading.RLock()  # the JIT is not thread-safe: every load goes through here
_engine = None
_loaded: dict = {}  # object key -> {entry name: address}


class NativeLoadError(RuntimeError):
    """An object file that cannot be loaded here (a symbol it needs is missing)."""


def _capsule_address(capsule) -> int:
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


@lru_cache(maxsize=None)
def scipy_openblas_path() -> str | None:
    """The OpenBLAS library SciPy's wheels bundle (scipy.libs/libscipy_openblas*.so), found by
    its file name without importing scipy.linalg (a tenth of a second at every start)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("scipy")
    if spec is not None and spec.submodule_search_locations:
        libs = Path(list(spec.submodule_search_locations)[0]).parent / "scipy.libs"
        for path in sorted(libs.glob("libscipy_openblas*.so*")):
            return str(path)
    return None


def _scipy_blas() -> dict:
    """Addresses of SciPy's sgemm/dgemm (Fortran interface, 32-bit integers, as Numba's np.dot
    uses): from the OpenBLAS SciPy bundles; else from scipy.linalg's cython_blas, whatever
    BLAS this SciPy was built with."""
    path = scipy_openblas_path()
    if path is not None:
        try:
            lib = ctypes.CDLL(path)
            return {name: ctypes.cast(getattr(lib, f"scipy_{name}_"), ctypes.c_void_p).value
                    for name in ("sgemm", "dgemm")}
        except (OSError, AttributeError):
            pass
    from scipy.linalg import cython_blas

    return {name: _capsule_address(cython_blas.__pyx_capi__[name]) for name in ("sgemm", "dgemm")}


@lru_cache(maxsize=None)
def _bind_symbols() -> bool:
    """libm and libc for LLVM's math and memory calls, SciPy's BLAS under fusegrad's names."""
    for lib in ("m", "c"):
        path = ctypes.util.find_library(lib)
        if path:
            llvm.load_library_permanently(path)
    for name, address in _scipy_blas().items():
        llvm.add_symbol(f"fusegrad_{name}", address)
    from .threads import single_threaded_blas

    single_threaded_blas()  # GEMMs are split over fusegrad's own threads (runtime/threads.py)
    return True


def bind_library(path: str, symbols: dict) -> None:
    """Make the library at `path` (already loaded by whoever found it: the MPI library mpi4py
    loaded) a source of symbols for kernels, and pin `symbols` ({name: address}) to the very
    functions the caller resolved there, whatever else the process has loaded. Objects are
    cached by their text only: a symbol is bound by name in each process, never compiled in."""
    with _lock:
        if path:
            llvm.load_library_permanently(path)
        for name, address in symbols.items():
            llvm.add_symbol(name, address)


def missing_symbols(symbols) -> list[str]:
    _bind_symbols()
    missing = [s for s in symbols if not llvm.address_of_symbol(s)]
    if any(s.startswith("MPI_") for s in missing):  # a collective: bind mpi4py's MPI library
        from .mpi import link

        try:
            link()
        except ImportError:
            return missing
        missing = [s for s in symbols if not llvm.address_of_symbol(s)]
    return missing


def _get_engine():
    global _engine
    if _engine is None:
        _bind_symbols()
        _engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target_machine())
    return _engine


def load_object(key: str, obj: bytes, symbols, entries) -> dict:
    """Load object code (once per process per key); returns {entry name: address}."""
    with _lock:
        hit = _loaded.get(key)
        if hit is not None:
            return hit
        missing = missing_symbols(symbols)
        if missing:
            hint = ("; MPI symbols come from mpi4py's MPI library: pip install "
                    "'fusegrad[mpi]'" if any(m.startswith("MPI_") for m in missing) else "")
            raise NativeLoadError(f"kernel object {key} needs symbols this process cannot "
                                  f"resolve: {', '.join(missing)}{hint}")
        engine = _get_engine()
        engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        engine.finalize_object()
        addresses = {name: engine.get_function_address(name) for name in entries}
        if not all(addresses.values()):
            raise NativeLoadError(f"kernel object {key} lacks entries "
                                  f"{[n for n, a in addresses.items() if not a]}")
        _loaded[key] = addresses
        return addresses


_ENTRY = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p)


def entry_function(address: int):
    """A Python callable for a kernel entry: f(address of an int64 argument block) -> status.
    ctypes releases the GIL for the duration of the call."""
    return _ENTRY(address)
