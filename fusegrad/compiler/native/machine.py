"""LLVM for this machine: optimise a module and emit its object code.

Objects are compiled for the host CPU (its name and features are part of every cache key,
`target_stamp()`), with LLVM's O3 pipeline, loop and SLP vectorisation on. Emitting objects
(rather than JIT-compiling modules) lets the runtime keep them on disk and load them into a
later process without compiling anything again (runtime/native.py).
"""
from __future__ import annotations

import hashlib
import threading
from functools import lru_cache

import llvmlite
import llvmlite.binding as llvm

_lock = threading.Lock()


@lru_cache(maxsize=None)
def _initialised() -> bool:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    return True


@lru_cache(maxsize=None)
def _host():
    _initialised()
    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def target_machine():
    """A new target machine for the host (each thread compiles with its own).

    Static relocations with the large code model: every address in an object is a 64-bit
    absolute, which the JIT's loader patches wherever it places each section. (Position-
    independent objects address their constants GOT-relative; measured here: once OpenBLAS had
    mapped its buffers, an object loaded after that read wrong constants.)"""
    cpu, features = _host()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=cpu, features=features, opt=3, reloc="static",
                                        codemodel="large")


@lru_cache(maxsize=None)
def target_stamp() -> str:
    """What the object code depends on besides its source: LLVM, the CPU and its features."""
    cpu, features = _host()
    text = f"llvmlite {llvmlite.__version__} llvm {llvm.llvm_version_info} {cpu} {features} " \
           f"{llvm.get_process_triple()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compile_ir(llvm_ir: str, name: str = "module") -> bytes:
    """Parse, verify, optimise (O3) and emit object code. Thread-safe; LLVM releases the GIL
    while it works, so several modules compile in parallel on several threads."""
    _initialised()
    tm = target_machine()
    module = llvm.parse_assembly(llvm_ir)
    module.name = name
    module.triple = tm.triple
    module.data_layout = str(tm.target_data)
    module.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(module, pb)
    return tm.emit_object(module)


def optimised_ir(llvm_ir: str) -> str:
    """The optimised LLVM IR of a module (for inspection and tests)."""
    _initialised()
    tm = target_machine()
    module = llvm.parse_assembly(llvm_ir)
    module.triple = tm.triple
    module.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(module, pb)
    return str(module)
