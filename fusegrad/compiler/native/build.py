"""Kernel sources -> object code, each compiled once per machine and kept on disk.

    objects = build_objects(kernels, store)     # store: runtime/cache.py (or a test double)

A kernel's object is stored under the SHA-256 of what determines it: its source text, the
compiler (the source of this package and of everything a kernel calls into: cpu_math,
cpu_library, kernel_lang, cpu_intrinsics) and the target (LLVM version, CPU, features). Kernels
missing from the store compile at once in this process and in helper processes (workers.py):
llvmlite runs one LLVM call at a time per process, so threads alone would not overlap them.
"""
from __future__ import annotations

import hashlib
import struct
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .machine import compile_ir, target_stamp
from . import workers
from .module import ModuleCompiler

# the compiler, and the kernel libraries compiled into kernels (math, intrinsics, the library)
_KERNELS = Path(__file__).resolve().parents[2] / "kernels"
_SOURCES = [*sorted(Path(__file__).parent.glob("*.py")),
            *(_KERNELS / f for f in ("cpu_math.py", "cpu_intrinsics.py", "kernel_lang.py",
                                     "cpu_library.py"))]


@lru_cache(maxsize=None)
def compiler_stamp() -> str:
    """A hash of every source file whose change could change a kernel's machine code."""
    h = hashlib.sha256()
    for path in _SOURCES:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def kernel_key(text: str) -> str:
    return hashlib.sha256(f"{compiler_stamp()}\n{target_stamp()}\n{text}".encode()).hexdigest()


@dataclass
class NativeObject:
    name: str
    key: str
    obj: bytes
    symbols: list  # external symbols it calls (bound before loading: runtime/native.py)
    entries: list  # entry names it defines
    compiled: bool  # False: found in the store
    seconds: float = 0.0
    why: str = ""  # why it was compiled (not on disk, unusable file ...)

    @property
    def entry(self) -> str:
        """The symbol of the module's kernel (kernel modules define one)."""
        return self.entries[0]


def front_end(name: str, text: str, key: str = "") -> tuple[str, list, list]:
    """(LLVM IR, explicit external symbols, entry symbols) of one kernel module; `key` makes the
    symbols unique (two texts of one kernel name may be loaded in one process)."""
    mc = ModuleCompiler(name, f".{key[:16]}" if key else "")
    entries = mc.add_source(text, f"<kernel {name}>")
    return str(mc.module), sorted(mc.symbols), entries


def compile_kernel(name: str, text: str, key: str = "", helper=None) -> tuple[bytes, list, list]:
    """(object code, external symbols, entry symbols) of one kernel module; LLVM runs in
    `helper` (a workers.Helper process) when given, else here."""
    llvm_ir, symbols, entries = front_end(name, text, key)
    obj = helper.compile(llvm_ir) if helper is not None else compile_ir(llvm_ir, name)
    return obj, sorted(set(symbols) | set(undefined_symbols(obj))), entries


_key_locks: dict = {}
_key_locks_guard = threading.Lock()


def _lock_for(key):
    with _key_locks_guard:
        return _key_locks.setdefault(key, threading.Lock())


def build_objects(kernels, store) -> list[NativeObject]:
    """One NativeObject per kernel (artifact.Kernel: .name, .text), in order. Kernels missing
    from `store` compile in this process and in helper processes (workers.py) at once."""
    keys = [kernel_key(k.text) for k in kernels]
    results: list = [None] * len(kernels)

    def get(i, helper=None):
        k, key = kernels[i], keys[i]
        with _lock_for(key):  # two threads wanting one kernel compile it once
            obj, meta = store.load_object(k.name, key)
            if obj is not None:
                return NativeObject(k.name, key, obj, meta["symbols"], meta["entries"], False)
            t0 = time.perf_counter()
            obj, symbols, entries = compile_kernel(k.name, k.text, key, helper)
            seconds = time.perf_counter() - t0
            store.store_object(k.name, key, obj, {"symbols": symbols, "entries": entries})
            return NativeObject(k.name, key, obj, symbols, entries, True, seconds, meta)

    missing = []
    for i, (k, key) in enumerate(zip(kernels, keys)):
        obj, meta = store.load_object(k.name, key)
        if obj is not None:
            results[i] = NativeObject(k.name, key, obj, meta["symbols"], meta["entries"], False)
        else:
            missing.append(i)
    pool = workers.helpers() if len(missing) > 1 else []
    queue = list(reversed(missing))  # popped from the end: kernels in schedule order
    errors: list = []

    def serve(helper):
        while True:
            try:
                i = queue.pop()
            except IndexError:
                return
            try:
                results[i] = get(i, helper)
            except Exception as exc:  # noqa: BLE001 - re-raised below, in the caller
                errors.append(exc)
                return

    threads = [threading.Thread(target=serve, args=(h,), daemon=True) for h in pool]
    for t in threads:
        t.start()
    serve(None)  # this process compiles too
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def undefined_symbols(obj: bytes) -> list[str]:
    """The names an ELF64 object refers to but does not define (its external calls: memset,
    expf ...), so the loader can check they resolve before LLVM's loader would abort on one that
    does not. Other object formats: [] (not checked)."""
    if obj[:4] != b"\x7fELF" or obj[4] != 2 or obj[5] != 1:  # 64-bit little-endian only
        return []
    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", obj, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * shentsize) for i in range(shnum)]
    names = []
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sh[6]]
        str_off = strtab[4]
        for at in range(sh[4], sh[4] + sh[5], sh[9] or 24):
            st_name, st_info, _, st_shndx = struct.unpack_from("<IBBH", obj, at)
            bind = st_info >> 4
            if st_shndx == 0 and st_name and bind in (1, 2):  # undefined, global or weak
                end = obj.index(b"\0", str_off + st_name)
                names.append(obj[str_off + st_name:end].decode())
    return sorted(set(names))
