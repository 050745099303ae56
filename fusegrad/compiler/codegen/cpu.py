"""CPU code generation: a fused Program -> Numba source (kernel modules + one driver).

Loop kernels become `@njit` functions in files of their own, named by their structural hash
(`row_6c70d0386e.py`): sizes are arguments, so the three identical layers of an MLP, or two
models with the same layer, share one compiled kernel, and a new batch size compiles nothing.
GEMMs and data movement call the fixed library kernels of cpu_library. The driver runs the
schedule: it slices every value's buffer out of the arena, calls the kernels in order, checks
the loss before any parameter is overwritten, and copies back what could not be in place. All
shape-dependent numbers live in its `dims` table, so its text depends only on the structure.

Kernel files carry structural comments (region-local names); the driver's lines name the IR
values and the user's source lines, and `render_source()` shows the kernels with those too.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

from ...ir.printer import short_loc, var_names
from ..passes.prepare import batch_suffix
from .common import LOOP_KINDS, NP_TYPE as NP_VIEW, Table as _Table
from .common import structural_names as _region_names
from .cpu_loops import LoopKernel
from .cpu_movement import MOVEMENT

# Numba's cache does not see changes in inlined functions: stamp kernels with cpu_math's hash
MATH_STAMP = hashlib.sha1(b"".join(
    (Path(__file__).parent / f).read_bytes() for f in ("cpu_math.py", "cpu_intrinsics.py")
)).hexdigest()[:12]
LIBRARY_STAMP = hashlib.sha1((Path(__file__).parent / "cpu_library.py").read_bytes()).hexdigest()
KERNEL_HEADER = '''"""fusegrad kernel {name}: {kind} loop over a 2-D space (R, C). Generated; do not edit."""
# inlined math: cpu_math {math_stamp} (a new version rewrites this file, so Numba recompiles it)
import math

import numpy as np
from numba import njit

from fusegrad.compiler.codegen.cpu_intrinsics import radd
from fusegrad.compiler.codegen.cpu_math import erf_f32, exp_f32, log_f32, sigmoid_f32, tanh_f32


# only FMA contraction function-wide: reductions reassociate through radd alone (see
# cpu_intrinsics), and no 'arcp'/'afn', whose reciprocal-sqrt sequences make 1/sqrt(0) NaN
@njit(cache=True, fastmath={{"contract"}}, error_model="numpy", nogil=True)
'''


@dataclass
class GeneratedCode:
    kernels: dict  # structural name -> kernel module source (what goes on disk)
    driver: str  # the driver module source
    dims: list  # the driver's size table for this signature
    fconst: list  # the driver's float constants for this signature
    scratch_elements: int  # float64 scratch the column kernels need
    readable: dict = field(default_factory=dict)  # name -> kernel source with this program's names


class _Driver:
    def __init__(self, program, exact_math=False, guard=None):
        self.program = program
        self.fused = program.fused
        self.plan = program.plan
        self.names = var_names(self.fused)
        self.exact_math = exact_math
        self.guard = guard
        self.dims = _Table("dims", int)
        self.fconst = _Table("fconst", float)
        self.ref: dict = {}
        self.storage_key: dict = {}  # driver name -> its storage (same key: same memory)
        self.lines: list[str] = []
        self.kernels: dict = {}
        self.readable: dict = {}
        self.imports: set = set()
        self.scratch = 0
        self.calls: list = []  # (line index, comment) of every kernel call, for profiling

    def value(self, v) -> str:
        return self.ref[v]

    def define_values(self):
        for k, v in enumerate(self.fused.inputs):
            self.ref[v] = f"i{k}"
        consts = [n for n in self.fused.nodes if n.op == "constant"]
        for k, n in enumerate(consts):
            self.ref[n.out] = f"c{k}"
        for n in self.fused.nodes:
            for v in n.outputs:
                kind, where = self.plan.storage[v]
                if kind == "arena":
                    name = f"v{self.names[v][1:]}"
                    start = self.dims(where.offset)
                    stop = self.dims(where.offset + v.type.nbytes)
                    self.lines.append(f"{name} = arena[{start}:{stop}].view({NP_VIEW[v.dtype]})"
                                      f"  # {self.names[v]} ({v.dtype}) in buf{where.index}")
                    self.ref[v] = name
                    self.storage_key[name] = ("arena", where.offset, v.type.nbytes, v.dtype)
                elif kind == "input":
                    self.ref[v] = f"i{where}"
                elif kind == "view":
                    self.ref[v] = self.ref[where]
        return consts

    def emit_kernel(self, node, env):
        """Lines calling `node`; env maps its operands (outer Vars) to driver names."""
        kind = node.attrs["kind"]
        ins = [env(v) for v in node.inputs]
        outs = [env(v) for v in node.outputs]
        if kind == "multi":
            inner = dict(zip(node.region.inputs, node.inputs))
            inner.update(zip(node.region.outputs, node.outputs))
            for k in node.region.nodes:
                self.emit_kernel(k, lambda v, inner=inner: env(inner[v]))
            return
        comment = f"  # {', '.join(self.names.get(v, '%?') for v in node.outputs)} = {kind}"
        loc = short_loc(node.loc)
        comment += f" ({loc})" if loc else ""
        if kind in LOOP_KINDS:
            self.emit_loop(node, ins, outs, comment)
            return
        # one primitive: its operands, by position, as driver names (an operand may repeat)
        (prim,) = node.region.nodes
        operand = dict(zip(node.region.inputs, ins))
        prim_ins = [operand[v] for v in prim.inputs]
        if kind == "gemm":
            self.emit_gemm(prim, prim_ins, outs, comment)
        else:
            emitter = MOVEMENT.get(prim.op)
            if emitter is None:
                raise NotImplementedError(f"no CPU emitter for a lone {prim.op} kernel")
            lines = emitter(prim, prim_ins, outs[0], self.dims)
            self.lines += [lines[0] + comment] + lines[1:]
            self.calls.append((len(self.lines) - 1, comment))
            self.imports.add(lines[0].split("(")[0])
            for ln in lines[1:]:
                self.imports.add(ln.split("(")[0])

    def _inplace(self, ins, outs) -> dict:
        """{output k: input m} for outputs the plan stores in an input's own memory."""
        key = [self.storage_key.get(x, x) for x in ins]
        return {k: key.index(self.storage_key.get(o, o)) for k, o in enumerate(outs)
                if self.storage_key.get(o, o) in key}

    def emit_loop(self, node, ins, outs, comment):
        inplace = self._inplace(ins, outs)
        # in-place variants are kernels of their own: their signature has fewer arrays
        name = node.attrs["name"] + "".join(f"_o{k}a{m}" for k, m in sorted(inplace.items()))
        kernel = LoopKernel(node, _region_names(node.region), self.exact_math, structural=True,
                            inplace=inplace)
        text = kernel.source(name)  # also collects this call's constant values
        if name not in self.kernels:
            self.kernels[name] = (KERNEL_HEADER.format(name=name, kind=node.attrs["kind"],
                                                       math_stamp=MATH_STAMP) + text + "\n")
            shown = LoopKernel(node, self._readable_names(node), self.exact_math,
                               inplace=inplace)
            self.readable[name] = shown.source(name)
        space = kernel.space
        R, C = (1, space.R * space.C) if kernel.flat else (space.R, space.C)
        outs = [o for k, o in enumerate(outs) if k not in inplace]
        args = [self.dims(R), self.dims(C), *ins, *outs]
        start = 0
        for size, view in kernel.scratch_parts(R, C):  # partials and row cache: scratch slices
            part = f"scratch[{self.dims(start)}:{self.dims(start + size)}]"
            args.append(f"{part}.view({NP_VIEW[view]})" if view else part)
            start += size
        self.scratch = max(self.scratch, start)
        if kernel.fconsts:
            args.append(self.fconst(*kernel.fconsts, always_slice=True))
        if kernel.iconsts:
            args.append(self.dims(*kernel.iconsts, always_slice=True))
        self.imports.add(name)
        self.lines.append(f"{name}({', '.join(args)}){comment}")
        self.calls.append((len(self.lines) - 1, comment))

    def _readable_names(self, node):
        """This program's %N names for the region's values (for render_source)."""
        return {v: self.names.get(v, "%?") for v in (*node.region.inputs,
                                                       *(u for n in node.region.nodes
                                                         for u in n.outputs))}

    def emit_gemm(self, mm, ins, outs, comment):
        a, b = mm.inputs
        ta, tb = mm.attrs["transpose_a"], mm.attrs["transpose_b"]
        m, n = mm.out.shape[-2:]
        k = a.shape[-2] if ta else a.shape[-1]
        batch_shape = mm.out.shape[:-2]
        batch = prod(batch_shape)
        for x in (a, b):  # prepare_for_fusion leaves only suffix batch broadcasts
            if not batch_suffix(x.shape[:-2], batch_shape):
                raise NotImplementedError(f"matmul batch broadcasting {a.type} @ {b.type}")
        fn = "gemm" if mm.out.dtype.startswith("float") else "gemm_loops"
        self.imports.add(fn)
        sizes = ", ".join(self.dims(v) for v in (batch, prod(a.shape[:-2]), prod(b.shape[:-2]),
                                                  m, n, k))
        self.lines.append(f"{fn}({ins[0]}, {ins[1]}, {outs[0]}, {sizes}, {ta}, {tb}){comment}")
        self.calls.append((len(self.lines) - 1, comment))

    def _python_twin(self, params, timed):
        """The same schedule as a plain Python function: `run_python` (the Python driver: no
        driver compile, a few microseconds per kernel call), or `run_profiled`, which also
        times every kernel call (Runner.profile)."""
        if not timed:
            return ["", "def run_python(" + ", ".join(params) + "):",
                    *("    " + ln for ln in self.lines), ""]
        marks = {k: c for k, c in self.calls}
        lines = ["", "def run_profiled(_clock, _marks, " + ", ".join(params) + "):",
                 "    _t = _clock()"]
        for k, ln in enumerate(self.lines):
            lines.append("    " + ln)
            if k in marks:
                lines += ["    _now = _clock()",
                          f"    _marks.append(({marks[k].strip()[2:]!r}, _now - _t))",
                          "    _t = _now"]
        return lines + [""]

    def generate(self) -> GeneratedCode:
        consts = self.define_values()
        aliased_writes = {v for v, (kind, _) in self.plan.storage.items() if kind == "input"}
        guard_var = self.fused.outputs[self.guard] if self.guard is not None else None
        for node in self.fused.nodes:
            if node.op != "kernel":
                continue
            self.emit_kernel(node, self.value)
            if guard_var is not None and guard_var in node.outputs:
                self.lines.append(f"if not np.isfinite({self.value(guard_var)}[0]):"
                                  f"  # the loss: stop before any parameter is overwritten")
                self.lines.append("    return False")
                guard_var = None
            elif guard_var is not None and aliased_writes & set(node.outputs):
                raise AssertionError("a parameter is overwritten before the loss is checked")
        for o, i in self.plan.copies_back:
            self.lines.append(f"i{i}[:] = {self.value(self.fused.outputs[o])}"
                              f"  # {self.fused.output_names[o]} (not in place)")
        self.lines.append("return True")
        params = ["arena", "dims", "fconst", "scratch",
                  *(f"i{k}" for k in range(len(self.fused.inputs))),
                  *(f"c{k}" for k in range(len(consts)))]
        kernel_imports = sorted(n for n in self.imports if n in self.kernels)
        library = sorted(n for n in self.imports if n not in self.kernels)
        # Numba links the callees' machine code into a cached caller and does not notice when
        # they change: the stamp of everything called makes a new driver file in that case
        called = hashlib.sha1("".join(self.kernels[n] for n in kernel_imports).encode()
                              + LIBRARY_STAMP.encode()).hexdigest()[:16]
        header = [f'"""fusegrad driver for {self.fused.name}: {len(self.fused.nodes)} steps. '
                  f'Generated; do not edit."""',
                  f"# calls kernels and library code stamped {called}",
                  "import numpy as np", "from numba import njit", ""]
        if library:
            header.append(f"from fusegrad.compiler.codegen.cpu_library import "
                          f"{', '.join(library)}")
        header += [f"from fusegrad_kernels.{n} import {n}" for n in kernel_imports]
        inputs_doc = [f"# i{k}: {self.fused.input_names[k]} ({v.dtype}, rank {len(v.shape)})"
                      for k, v in enumerate(self.fused.inputs)]
        body = ["", "", *inputs_doc, "@njit(cache=True, nogil=True)",
                f"def run({', '.join(params)}):", *("    " + ln for ln in self.lines), "",
                *self._python_twin(params, timed=False), *self._python_twin(params, timed=True)]
        return GeneratedCode(self.kernels, "\n".join(header + body), self.dims.values,
                             self.fconst.values, self.scratch, self.readable)


def generate_cpu(program, exact_math=False, guard=None) -> GeneratedCode:
    """Kernel modules and the driver module for `program` (see module docstring)."""
    return _Driver(program, exact_math, guard).generate()


def render_source(code: GeneratedCode) -> str:
    """The driver and every kernel, the kernels commented with this program's IR names."""
    parts = [code.driver.split("\ndef run_python(")[0].rstrip() + "\n"]  # not its Python twins
    for name in sorted(code.readable):
        parts.append(f"# ---- kernel {name} ----\n" + code.readable[name])
    return "\n\n".join(parts) + "\n"
