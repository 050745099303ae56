"""CUDA code generation: a fused Program -> one Python module of @cuda.jit kernels and a driver.

The same fused graph and memory plan as the CPU backend. Loop kernels come from cuda_loops
(one function per structure, shared by identical layers; column reductions add a `_combine`
kernel), GEMMs call cuda_gemm (cuBLAS through CuPy, or a tiled kernel), data movement calls
cuda_library through the CPU's own movement emitters. The driver is plain Python: it launches
the kernels in schedule order over views of one device arena, checks the loss (one scalar copy
to the host) before any parameter is overwritten, and copies back what could not be updated in
place. Sizes, launch grids and constants live in its `dims`/`fconst` tables, so its text, like
each kernel's, depends only on the program's structure (and the launch configuration).

Threads of one launch run concurrently, so the CPU plan's in-place writes are safe only where
the thread that stores an element is the only one that reads it (CudaLoop.private); for the
other in-place pairs the driver first copies the operand to a snapshot buffer.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ...ir import Attrs, Graph, Node
from .common import Table, structural_names
from .cpu_expr import literal
from ...kernels.cuda_config import LaunchConfig, blocks_for
from .cuda_loops import CudaLoop, multi_source
from .schedule import ScheduleWriter

# CUDA passes a kernel's arguments in 4 KiB: Numba spends 56 bytes on a 1-D array, 8 on a
# scalar; a multi-tensor update larger than this budget is split into several launches
PARAM_BYTES = 3800


# how a library call's argument of each kind is written in the driver (cpu_movement.Arg);
# element counts are not passed: cuda_library reads them off its device arrays
_RENDER = {
    "array": lambda value, dims: value,
    "int": lambda value, dims: dims(value),
    "ints": lambda value, dims: dims(*value),
    "flag": lambda value, dims: str(value),
    "real": lambda value, dims: literal(value, "float64"),
}


def render_call(call, dims) -> str:
    """A library call (cpu_movement.LibCall) as a line of the driver: cuda_library has every
    function the emitters call."""
    args = [_RENDER[a.kind](a.value, dims) for a in call.args if a.kind != "count"]
    return f"{call.fn}({', '.join(args)})"


@dataclass
class CudaCode:
    module: str  # the generated module (kernels with structural names, driver, profiling twin)
    dims: list  # the driver's sizes and launch grids
    fconst: list  # the driver's float constants
    views: list  # (byte offset, bytes, dtype) of every arena value, as the driver's V[k]
    snapshots: list  # (dtype, elements) of each snapshot buffer, the driver's S[k]
    scratch_elements: int  # float64 scratch of the column reductions
    arena_bytes: int
    guard_dtype: str | None  # dtype of the loss checked before the update
    config: LaunchConfig
    kernels: dict = field(default_factory=dict)  # name -> kernel source (structural names)
    readable: dict = field(default_factory=dict)  # name -> kernel source with this program's
    signatures: dict = field(default_factory=dict)  # name -> argument types ("int64", "f:float32")


class _Driver(ScheduleWriter):
    TARGET = "CUDA"

    def __init__(self, program, cfg: LaunchConfig, guard=None):
        super().__init__(program, guard)
        self.cfg = cfg
        self.dims = Table("dims", int)
        self.fconst = Table("fconst", float)
        self.lines: list[str] = []
        self.calls: list = []  # (line index, comment) of every launch, for run_profiled
        self.kernels: dict = {}
        self.readable: dict = {}
        self.signatures: dict = {}
        self.library: set = set()
        self.views: list = []
        self.snapshots: list = []
        self.scratch = 0

    # ---- values and where they live: the driver's locals ----
    def input_ref(self, k, v):
        return f"i{k}"

    def constant_ref(self, k, node):
        self.lines.append(f"c{k} = rt.consts[{k}]  # {self.names[node.out]} (constant)")
        return f"c{k}"

    def arena_ref(self, v, buffer):
        name = f"v{self.names[v][1:]}"
        self.lines.append(f"{name} = V[{len(self.views)}]  # {self.names[v]} "
                          f"({v.dtype}) in buf{buffer.index}")
        self.views.append((buffer.offset, v.type.nbytes, v.dtype))
        return name

    def location(self, v):
        """The storage v occupies: ("arena", buffer index), ("input", i) or ("const", node)."""
        kind, where = self.plan.storage[v]
        while kind == "view":
            kind, where = self.plan.storage[where]
        return (kind, where.index) if kind == "arena" else (kind, where)

    def _snapshot(self, v, arg, over):
        s = len(self.snapshots)
        self.snapshots.append((v.dtype, v.type.size))
        self.library.add("copy")
        self.lines.append(f"copy({arg}, S[{s}])  # snapshot of {self.names.get(v, '%?')}: "
                          f"{self.names.get(over, '%?')} is stored over it while other "
                          f"threads still read it")
        return f"S[{s}]"

    def protect(self, node, ins, private):
        """`ins` with a snapshot for every operand that an output overwrites unsafely;
        private(p, q): may output q be stored over operand p within one launch?"""
        ins = list(ins)
        for p, v in enumerate(node.inputs):
            for q, o in enumerate(node.outputs):
                if self.location(o) == self.location(v) and not private(p, q):
                    ins[p] = self._snapshot(v, ins[p], o)
                    break
        return ins

    # ---- kernels ----
    def add_kernel(self, name, text, shown, signature):
        """Register a kernel function; a different function under a taken name (a structure
        whose maps differ with the sizes) gets a name of its own."""
        if name in self.kernels and self.kernels[name] != text:
            new = f"{name}_{hashlib.sha1(text.encode()).hexdigest()[:6]}"
            text = text.replace(f"def {name}(", f"def {new}(", 1)
            shown = shown.replace(f"def {name}(", f"def {new}(", 1)
            name = new
        self.kernels.setdefault(name, text)
        self.readable.setdefault(name, shown)
        self.signatures.setdefault(name, signature)
        return name

    def launch(self, name, grid, args, comment):
        self.lines.append(f"{name}[{self.dims(grid)}, THREADS]({', '.join(args)}){comment}")
        self.calls.append((len(self.lines) - 1, comment))

    def _consts(self, fn):
        return [self.fconst(x) for x in fn.floats] + [self.dims(x) for x in fn.ints]

    @staticmethod
    def _signature(arrays, fn, sizes=2, extra=()):
        return (["int64"] * sizes + [f"f:{v.dtype}" for v in arrays] + list(extra)
                + ["float64"] * len(fn.floats) + ["int64"] * len(fn.ints))

    @staticmethod
    def _comment(what, loc):
        """`  # %3, %4 = row (model.py:12)`: what a launch computes, and where it came from."""
        return f"  # {what}" + (f" ({loc})" if loc else "")

    def loop(self, node, ins, outs, what, loc):
        self.emit_loop(node, ins, outs, self._comment(what, loc))

    def multi(self, node, ins, outs, what, loc):
        for part in self._multi_parts(node):
            self.emit_multi(part, [self.ref[v] for v in part.inputs],
                            [self.ref[v] for v in part.outputs],
                            self._comment(self.what(node, part.outputs), loc))

    def movement(self, prim, calls, what, loc):
        comment = self._comment(what, loc)
        lines = [render_call(c, self.dims) for c in calls]
        self.lines += [lines[0] + comment] + lines[1:]
        self.calls.append((len(self.lines) - 1, comment))
        self.library.update(c.fn for c in calls)

    def emit_loop(self, node, ins, outs, comment):
        name = node.attrs["name"]
        loop = CudaLoop(node, structural_names(node.region), structural=True)
        shown = CudaLoop(node, self.names)
        region = node.region
        ins = self.protect(node, ins, lambda p, q: loop.private(region.inputs[p],
                                                                  region.outputs[q]))
        R, C = loop.space.R, loop.space.C
        arrays = [*region.inputs, *region.outputs]
        if not loop.has_rows:
            text, fn = loop.elementwise_source(name)
            name = self.add_kernel(name, text, shown.elementwise_source(name)[0],
                                   self._signature(arrays, fn))
            self.launch(name, blocks_for(R * C, self.cfg),
                        [self.dims(R), self.dims(C), *ins, *outs, *self._consts(fn)], comment)
            return
        text, fn = loop.rows_source(name)
        extra = ["f:float64", "int64"] if loop.col_reds else []
        name = self.add_kernel(name, text, shown.rows_source(name)[0],
                               self._signature(arrays, fn, extra=extra))
        sizes = [self.dims(R), self.dims(C)]
        if not loop.col_reds:
            grid = max(1, min(R, self.cfg.max_blocks))
            self.launch(name, grid, [*sizes, *ins, *outs, *self._consts(fn)], comment)
            return
        nch = max(1, min(R, self.cfg.chunks))
        self.scratch = max(self.scratch, loop.scratch_elements(nch))
        chunks = self.dims(nch)
        self.launch(name, nch, [*sizes, *ins, *outs, "scratch", chunks, *self._consts(fn)],
                    comment)
        combine = f"{name}_combine"
        text, fn = loop.combine_source(combine)
        combine = self.add_kernel(combine, text, shown.combine_source(combine)[0],
                                  self._signature(arrays, fn, extra=extra))
        self.launch(combine, blocks_for(C, self.cfg),
                    [*sizes, *ins, *outs, "scratch", chunks, *self._consts(fn)],
                    comment.replace(" = ", " = combine of ", 1))

    def _multi_parts(self, node):
        """The multi kernel as launches whose arguments fit PARAM_BYTES each."""
        region = node.region
        outer = dict(zip(region.inputs, node.inputs)) | dict(zip(region.outputs, node.outputs))
        groups, current, arrays, scalars = [], [], set(), 0
        for sub in region.nodes:
            mine = set(sub.inputs) | set(sub.outputs)
            own = 2 + sum(1 for n in sub.region.nodes if n.op == "constant")  # R, C, constants
            if current and 56 * len(arrays | mine) + 8 * (scalars + own) > PARAM_BYTES:
                groups.append(current)
                current, arrays, scalars = [], set(), 0
            current.append(sub)
            arrays |= mine
            scalars += own
        groups.append(current)
        if len(groups) == 1:
            return [node]
        parts = []
        for g, subs in enumerate(groups):
            g_in = list(dict.fromkeys(v for s in subs for v in s.inputs))
            g_out = [v for s in subs for v in s.outputs]
            inner = Graph(tuple(g_in), tuple(subs), tuple(g_out), name="region")
            attrs = Attrs(dict(node.attrs), name=f"{node.attrs['name']}_{g}")
            parts.append(Node("kernel", tuple(outer[v] for v in g_in),
                              tuple(outer[v] for v in g_out), attrs, node.loc, node.part,
                              inner))
        return parts

    def emit_multi(self, node, ins, outs, comment):
        region = node.region
        name = node.attrs["name"]
        text, fn, loops = multi_source(node, structural_names(region), True, name)
        subs = list(region.nodes)

        def private(p, q):
            inp, out = region.inputs[p], region.outputs[q]
            writer = next(k for k, s in enumerate(subs) if out in s.outputs)
            readers = [k for k, s in enumerate(subs) if inp in s.inputs]
            sub = subs[writer]
            return readers == [writer] and loops[writer].private(
                sub.region.inputs[sub.inputs.index(inp)],
                sub.region.outputs[sub.outputs.index(out)])

        ins = self.protect(node, ins, private)
        RC = [(loop.space.R, loop.space.C) for loop in loops]
        shown = multi_source(node, self.names, False, name)[0]
        signature = self._signature([*region.inputs, *region.outputs], fn, sizes=2 * len(subs))
        name = self.add_kernel(name, text, shown, signature)
        total = sum(r * c for r, c in RC)
        args = [self.dims(x) for rc in RC for x in rc] + [*ins, *outs, *self._consts(fn)]
        self.launch(name, blocks_for(total, self.cfg), args, comment)

    def gemm(self, mm, ins, outs, shape, what, loc):
        comment = self._comment(what, loc)
        sizes = ", ".join(self.dims(v) for v in shape.sizes)
        self.library.add("gemm")
        self.lines.append(f"gemm({ins[0]}, {ins[1]}, {outs[0]}, {sizes}, {shape.transpose_a}, "
                          f"{shape.transpose_b}){comment}")
        self.calls.append((len(self.lines) - 1, comment))

    def collective(self, prim, handles, out, what, loc):
        # MPI runs on the host: the runtime sums a host copy with mpi4py (runtime/cuda.py)
        comment = self._comment(f"{what} all_reduce: summed over the processes", loc)
        self.lines.append(f"rt.all_reduce({out}, {handles}){comment}")
        self.calls.append((len(self.lines) - 1, comment))

    def check_loss(self, var):
        self.library.add("finite")
        self.lines.append(f"if not finite({self.ref[var]}, rt.loss_host):"
                          f"  # the loss: stop before any parameter is overwritten")
        self.lines.append("    return False")

    def copy_back(self, out, k):
        self.library.add("copy")
        self.lines.append(f"copy({self.ref[self.fused.outputs[out]]}, i{k})"
                          f"  # {self.fused.output_names[out]} (not in place)")

    # ---- the module ----
    def _profiled(self, params):
        """The schedule again, synchronising and timing after every launch (Runner.profile)."""
        marks = dict(self.calls)
        lines = ["", "", "def run_profiled(_clock, _marks, " + ", ".join(params) + "):",
                 "    " + self._unpack(), "    _t = _clock()"]
        for k, ln in enumerate(self.lines):
            lines.append("    " + ln)
            if k in marks:
                lines += ["    rt.synchronize()", "    _now = _clock()",
                          f"    _marks.append(({marks[k].strip()[2:]!r}, _now - _t))",
                          "    _t = _now"]
        return lines

    @staticmethod
    def _unpack():
        return ("V, S, dims, fconst, scratch = rt.views, rt.snapshots, rt.dims, rt.fconst, "
                "rt.scratch")

    def generate(self) -> CudaCode:
        self.write()
        guard_dtype = self.fused.outputs[self.guard].dtype if self.guard is not None else None
        self.lines.append("return True")
        params = ["rt", *(f"i{k}" for k in range(len(self.fused.inputs)))]
        header = self.header()
        inputs_doc = [f"# i{k}: {self.fused.input_names[k]} ({v.dtype}, rank {len(v.shape)})"
                      for k, v in enumerate(self.fused.inputs)]
        driver = ["", "", *inputs_doc, f"def run({', '.join(params)}):",
                  '    """One run of the schedule; False (nothing overwritten) when the loss is '
                  'not finite."""',
                  "    " + self._unpack(), *("    " + ln for ln in self.lines)]
        kernels = [self.kernels[n] for n in sorted(self.kernels)]
        module = "\n".join(header + ["", ""] + ["\n\n\n".join(kernels)] + driver
                           + self._profiled(params)) + "\n"
        return CudaCode(module, self.dims.values, self.fconst.values, self.views,
                        self.snapshots, self.scratch, self.plan.arena_bytes, guard_dtype,
                        self.cfg, self.kernels, self.readable, self.signatures)

    def header(self) -> list:
        lib = sorted(self.library - {"gemm"})
        lines = [f'"""fusegrad CUDA module for {self.fused.name}: {len(self.calls)} launches. '
                 f'Generated; do not edit."""',
                 "import numba", "import numpy as np", "from numba import cuda", "",
                 "# Python's math module (on the simulator, NumPy's IEEE functions: no exceptions)",
                 "from fusegrad.kernels.cuda_library import kernel_math as math"]
        if "gemm" in self.library:
            lines.append("from fusegrad.kernels.cuda_gemm import gemm")
        if lib:
            lines.append(f"from fusegrad.kernels.cuda_library import {', '.join(lib)}")
        lines += ["", f"THREADS = {self.cfg.threads}  # threads per block of every kernel launch "
                      f"(the reduction trees halve it)"]
        return lines


def generate_cuda(program, cfg: LaunchConfig, guard=None) -> CudaCode:
    """The CUDA module for `program` (see module docstring)."""
    return _Driver(program, cfg, guard).generate()


def render_cuda_source(code: CudaCode) -> str:
    """The driver, then every kernel with this program's IR names and source lines."""
    head, _, rest = code.module.partition("\n\n\n@cuda.jit")
    driver = "def run(" + code.module.split("\ndef run(", 1)[1].split("\n\n\ndef run_profiled(")[0]
    inputs_doc = [ln for ln in code.module.split("\ndef run(", 1)[0].splitlines()
                  if ln.startswith("# i")]
    parts = [head.rstrip() + "\n\n\n" + "\n".join(inputs_doc) + "\n" + driver.rstrip() + "\n"]
    for name in sorted(code.readable):
        parts.append(f"# ---- kernel {name} ----\n" + code.readable[name])
    return "\n\n".join(parts) + "\n"
