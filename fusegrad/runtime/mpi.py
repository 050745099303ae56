"""The MPI library mpi4py loaded, made callable from compiled kernels by name.

A data-parallel step's kernel calls MPI_Allreduce as an external C symbol (kernels/
cpu_library.py), left unresolved in its object code, so the object depends on no address and is
cached on disk like any other; each process binds the name, before loading, to the function of
the MPI library mpi4py loaded (found through mpi4py's own extension module, whose dependencies
include it). Only the width of the library's handles is compiled in (kernel_lang's
mpi_allreduce_h32 / _h64), and `link()` reports it.

mpi4py is imported here only when a kernel needs an MPI symbol (importing it initialises MPI).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _library_of(address: int) -> str | None:
    """The file of the shared library holding `address` (dladdr), or None."""
    for name in (None, ctypes.util.find_library("dl")):
        try:
            dladdr = ctypes.CDLL(name).dladdr
        except (OSError, AttributeError, TypeError):
            continue
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        dladdr.restype = ctypes.c_int
        info = _DlInfo()
        if dladdr(address, ctypes.byref(info)) and info.dli_fname:
            return os.fsdecode(info.dli_fname)
    return None


def mpi4py_mpi():
    """mpi4py.MPI, or an ImportError saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("data-parallel training needs mpi4py and an MPI library: "
                          "pip install 'fusegrad[mpi]' (mpi4py and the mpich wheel)") from exc
    return MPI


@lru_cache(maxsize=None)
def link() -> int:
    """Bind MPI_Allreduce for kernels to mpi4py's MPI library (once per process); returns the
    width of that library's handles in bits (32: MPICH and its ABI, 64: Open MPI, the MPI 5
    ABI)."""
    from .native import bind_library

    MPI = mpi4py_mpi()
    address = None
    for lib in (MPI.__file__, None):  # mpi4py's extension (and what it links), the process
        try:
            address = ctypes.cast(getattr(ctypes.CDLL(lib), "MPI_Allreduce"), ctypes.c_void_p).value
            break
        except (OSError, AttributeError):
            continue
    if not address:
        raise RuntimeError("MPI_Allreduce is not found in the MPI library mpi4py uses")
    bind_library(_library_of(address), {"MPI_Allreduce": address})
    return 8 * MPI._sizeof(MPI.Comm)
