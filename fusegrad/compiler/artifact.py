"""CompiledProgram: everything the runtime needs to run a compiled step, and nothing else.

The compiler (codegen/cpu.py) makes it; the runtime (runtime/cpu.py) runs it and never looks at
the IR again; the program cache stores it whole as JSON (runtime/cache.py), so a second process
skips passes, fusion and code generation.

    kernels    the compile units: name and kernel-language source (each compiled once per
               machine, shared by every program that uses it: runtime/kernel_cache.py)
    entries    the schedule: which kernel, where its arguments start in the argument table,
               how many workers it may be split over, and what it computes (for profiles and
               error messages)
    arg_base, arg_offset, arg_stride
               argument k of the schedule is bases[arg_base[k]] + arg_offset[k], where bases are
               BASES below then one per input: a size is (ZERO, n), a value in the arena is
               (ARENA, byte offset), a parameter is (its input, 0) ...; inside a loop (an entry
               whose kernel is LOOP: fg.scan) it advances by arg_stride[k] after every pass
    ints, floats   the sizes / float constants tables kernels read through pointers
    arena_bytes, scratch_bytes, constants   the program's own memory
    inputs, outputs   where each input and output is, which inputs the step writes

Nothing in it depends on source lines or names of the user's variables: those live in the
readable rendering (`step.source()`), made from the graph on demand.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, fields

import numpy as np

FORMAT = 3
BASES = ("zero", "arena", "scratch", "ints", "floats", "constants")  # then the inputs
ZERO, ARENA, SCRATCH, INTS, FLOATS, CONSTANTS = range(len(BASES))

# entry status codes (kernels return them; 0 is success)
STATUS_NONFINITE = 1  # a check_finite entry found inf or NaN
STATUS_INDEX = 2  # an index out of range (gather, scatter, labels)
STATUS_COLLECTIVE = 3  # MPI_Allreduce returned an error


@dataclass
class Kernel:
    name: str  # the entry symbol
    text: str  # kernel-language module source: what is compiled


LOOP = -1  # Entry.kernel of a loop entry: (count, body entries, argument slots) as its arguments


@dataclass
class Entry:
    kernel: int  # index into CompiledProgram.kernels, or LOOP
    args: int  # first argument in the argument table
    nargs: int
    what: str  # "%22 = gemm": the IR values it computes (no source lines: see module doc)
    check: str = ""  # for check entries: what a non-zero status means ("loss", "gradients")
    # the most workers the call can be split over (its first two arguments are then the
    # worker and the worker count, 0 and 1 when it runs whole); 0: it always runs whole
    units: int = 0


@dataclass
class Input:
    name: str  # "params['w1']", "x", "exp_avg[params['w1']]", "lr"
    shape: tuple
    dtype: str
    written: bool  # the step updates it in place


@dataclass
class Output:
    kind: str  # "arena" | "input" | "const"
    index: int = 0  # arena byte offset, input index, or constant index
    shape: tuple = ()
    dtype: str = "float32"


@dataclass
class CompiledProgram:
    name: str
    kernels: list
    entries: list
    arg_base: list
    arg_offset: list
    arg_stride: list  # bytes an argument advances by after each pass of its loop (0 outside)
    ints: list
    floats: list
    arena_bytes: int
    scratch_bytes: int
    constants: list  # arrays (flat), placed one after another, each 64-byte aligned
    inputs: list
    outputs: list
    stats: dict = field(default_factory=dict)  # what the compiler knew (kernels, peak bytes)

    def constant_offsets(self) -> list[int]:
        offsets, at = [], 0
        for c in self.constants:
            offsets.append(at)
            at += (c.nbytes + 63) // 64 * 64
        return offsets

    # ---- JSON (the program cache's format: data only, nothing is executed on load) ----
    def to_json(self) -> str:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["kernels"] = [[k.name, k.text] for k in self.kernels]
        d["entries"] = [[e.kernel, e.args, e.nargs, e.what, e.check, e.units]
                        for e in self.entries]
        d["inputs"] = [[i.name, list(i.shape), i.dtype, i.written] for i in self.inputs]
        d["outputs"] = [[o.kind, o.index, list(o.shape), o.dtype] for o in self.outputs]
        d["format"] = FORMAT
        d["constants"] = [{"dtype": c.dtype.name, "shape": list(c.shape),
                           "data": base64.b64encode(np.ascontiguousarray(c).tobytes()).decode()}
                          for c in self.constants]
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "CompiledProgram":
        d = json.loads(text)
        if d.pop("format", None) != FORMAT:
            raise ValueError("a compiled program of another format")
        d["kernels"] = [Kernel(*k) for k in d["kernels"]]
        d["entries"] = [Entry(*e) for e in d["entries"]]
        d["inputs"] = [Input(name, tuple(shape), dtype, written)
                       for name, shape, dtype, written in d["inputs"]]
        d["outputs"] = [Output(kind, index, tuple(shape), dtype)
                        for kind, index, shape, dtype in d["outputs"]]
        d["constants"] = [np.frombuffer(base64.b64decode(c["data"]), c["dtype"]).reshape(
            c["shape"]).copy() for c in d["constants"]]
        return cls(**d)
