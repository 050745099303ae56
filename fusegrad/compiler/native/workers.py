"""LLVM in helper processes, so independent kernels compile in parallel where there are cores.

llvmlite serialises every call into LLVM behind one lock, so threads cannot compile two modules
at once. Each helper is a plain `python` process that loads machine.py by its file path (not
the fusegrad package: no NumPy, no Numba, a tenth of a second to start) and then compiles the
LLVM IR it reads from stdin into object code it writes to stdout, one length-prefixed message
each way. The front end (kernel text -> LLVM IR) stays in this process; helpers are started on
the first cache miss of a process, kept for its later compiles, and exit when it exits (their
stdin closes).

    pool = helpers()                      # [] on one core, or with FUSEGRAD_COMPILE_WORKERS=0
    obj = pool[0].compile(llvm_ir, name)  # from any thread; one job per helper at a time
"""
from __future__ import annotations

import atexit
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

from ... import config

_MACHINE = Path(__file__).with_name("machine.py")
_BOOT = f"""
import importlib.util, struct, sys
spec = importlib.util.spec_from_file_location("fusegrad_llvm_machine", {str(_MACHINE)!r})
machine = importlib.util.module_from_spec(spec)
spec.loader.exec_module(machine)
read, write = sys.stdin.buffer.read, sys.stdout.buffer.write
while True:
    head = read(8)
    if len(head) < 8:
        break
    n, = struct.unpack("<Q", head)
    text = read(n).decode()
    try:
        out, ok = machine.compile_ir(text), 1
    except Exception as exc:  # the parent raises it, with the message
        out, ok = repr(exc).encode(), 0
    write(struct.pack("<QQ", ok, len(out)) + out)
    sys.stdout.buffer.flush()
"""


class Helper:
    """One helper process; compile() may be called from any thread, one job at a time."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lock = threading.Lock()

    def compile(self, llvm_ir: str) -> bytes:
        data = llvm_ir.encode()
        with self.lock:
            self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
            self.proc.stdin.flush()
            head = self.proc.stdout.read(16)
            if len(head) < 16:
                raise RuntimeError("a compile helper process ended")
            ok, n = struct.unpack("<QQ", head)
            out = self.proc.stdout.read(n)
        if not ok:
            raise RuntimeError(f"LLVM failed in a compile helper: {out.decode()}")
        return out

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - it is going away either way
            self.proc.kill()


_helpers: list = []
_lock = threading.Lock()


def wanted() -> int:
    """How many helpers: one fewer than the cores (this process compiles too), at most 7;
    FUSEGRAD_COMPILE_WORKERS overrides (0: compile in this process only)."""
    setting = config.get("FUSEGRAD_COMPILE_WORKERS")
    if setting is not None:
        return max(0, setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(max((cores or 1) - 1, 0), 7)


def helpers() -> list:
    """The helper processes, started on first use."""
    with _lock:
        missing = wanted() - len(_helpers)
        for _ in range(max(missing, 0)):
            _helpers.append(Helper())
        return list(_helpers[:wanted()])


@atexit.register
def _close_all():
    for h in _helpers:
        h.close()
    _helpers.clear()
