"""CUDA source of the fused loop kernels: elementwise, row, column, row+column and multi.

Every value of a kernel is addressed by its index map over the kernel's 2-D space (R, C)
(passes/loopspace.py); the kernels differ in how threads cover that space:

    elementwise   grid-stride over the R*C elements, one element a thread at a time:
                      for e in range(cuda.grid(1), R * C, cuda.gridsize(1)): i, j = divmod(e, C)
    row           one block per row (grid-stride over rows), the block's threads stride over j;
                  each row reduction sums per-thread partials, then a shared-memory tree; the
                  elementwise consumers of the results run in a last pass over j
    column        blocks take chunks of rows (block c: rows c*R/nch ..), each thread accumulates
                  its columns' partials in `scratch` (float64, one row per chunk); a second
                  kernel, `<name>_combine`, adds the chunks in chunk order per column and runs
                  the elementwise work on the results (a bias's optimizer update)
    row+column    both: the row structure, with column partials per chunk, then the combine
    multi         several independent elementwise kernels (the optimizer update of every
                  parameter) as one grid-stride launch over the concatenated index ranges

Sums therefore never depend on timing: a tree of fixed shape per block, chunks in order.
Values are computed where their index allows (a per-row value once per row, a scalar once per
thread), every operand is loaded into a local before any output is stored, and every line names
the IR value it computes. Outputs not indexed by the storing thread alone (a per-row value in a
row kernel, a scalar) are stored by one thread; the driver protects in-place updates that this
makes unsafe (see `CudaLoop.private`).
"""
from __future__ import annotations

import re

from ...ir.printer import short_loc
from ..passes.loopspace import COL, FULL, ROW, SCALAR, Space, iota_index, infer_maps
from .common import Scope as _Scope, downstream as _downstream, np_type
from .cpu_expr import literal
from .cuda_expr import CUDA_EXPR, numba_type

PASS_THROUGH = ("broadcast_to", "reshape", "stop_gradient")  # no code: the maps index them
DECORATOR = "@cuda.jit(cache=True)"
STRIDE_J = "for j in range(tid, C, THREADS):"  # a block's threads over one row


class _Fn:
    """One generated function's scalar constant arguments (kf*: float64, ki*: int64): values
    are arguments, not literals, so a new batch size (1/batch) is not a new kernel."""

    def __init__(self):
        self.fconsts: list = []
        self.iconsts: list = []

    def params(self) -> list:
        return ([f"kf{k}" for k in range(len(self.fconsts))]
                + [f"ki{k}" for k in range(len(self.iconsts))])


def _plus(*terms) -> str:
    """A sum of index terms as text, the empty ones left out ("" for none)."""
    return " + ".join(t for t in terms if t)


def _at(offset, index) -> str:
    return f"scratch[{_plus(offset, index) or '0'}]"


def _indent(lines, depth=1):
    return ["    " * depth + ln for ln in lines]


class CudaLoop:
    """The CUDA functions of one loop kernel node (see module docstring)."""

    def __init__(self, kernel, names=None, structural=False, arg=None, out_arg=None,
                 counter=None):
        self.kernel = kernel
        self.region = kernel.region
        self.space = Space(tuple(kernel.attrs["space"]), kernel.attrs["split"])
        self.maps, self.reductions = infer_maps(self.region.nodes, self.space)
        self.names = names or {}
        self.structural = structural  # comments without source lines, constant values, shapes
        self.producer = {v: n for n in self.region.nodes for v in n.outputs}
        self.row_reds = [n for n in self.region.nodes if self.reductions.get(n) == "row"]
        self.col_reds = [n for n in self.region.nodes if self.reductions.get(n) == "col"]
        self.col_full = [r for r in self.col_reds if self.maps[r.inputs[0]] == FULL]
        self.col_scalar = [r for r in self.col_reds if self.maps[r.inputs[0]] == COL]
        self.after_col = _downstream(self.region.nodes, [n.out for n in self.col_reds])
        self.after_row = _downstream(self.region.nodes, [n.out for n in self.row_reds])
        self.arg = arg or {v: f"a{k}" for k, v in enumerate(self.region.inputs)}
        if out_arg is None:
            out_arg = {}
            for k, v in enumerate(self.region.outputs):
                out_arg.setdefault(v, []).append(f"o{k}")
        self.out_arg = out_arg
        self._counter = counter if counter is not None else [0]
        self._full = "e"  # the index of a FULL value in the function being generated
        # scratch layout: a row of C partials per chunk for each column reduction of a FULL
        # value, then one partial per chunk for each reduction of a per-row value
        full = len(self.col_full)
        self.offsets = {r: _plus(f"{k} * nch * C" if k else "")
                        for k, r in enumerate(self.col_full)}
        self.offsets.update({r: _plus(f"{full} * nch * C" if full else "",
                                      f"{k} * nch" if k else "")
                             for k, r in enumerate(self.col_scalar)})

    # ---- facts the driver needs ----
    @property
    def has_rows(self) -> bool:
        """Row-structured (blocks over rows) rather than a flat grid-stride loop."""
        return bool(self.reductions)

    def scratch_elements(self, nch: int) -> int:
        return (len(self.col_full) * self.space.C + len(self.col_scalar)) * nch

    def private(self, inp, out) -> bool:
        """Is every element of region input `inp` read only by the thread that stores the same
        element of region output `out`? Then `out` may be written over `inp` in one launch."""
        mi, mo = self.maps.get(inp), self.maps.get(out)
        if out in self.after_col:  # stored by the combine kernel, one thread per column
            return mi == mo == ROW
        if self.has_rows:  # per-row values are read by all of a block's threads
            return mi == mo == FULL
        return self._flat_map(mi) == self._flat_map(mo) == FULL

    def _flat_map(self, m):
        """The map as a flat kernel indexes it: with one row, j is the element index; with one
        column, i is."""
        if self.space.R == 1:
            return {ROW: FULL, COL: SCALAR}.get(m, m) if self.space.C > 1 else FULL
        if self.space.C == 1:
            return {COL: FULL, ROW: SCALAR}.get(m, m)
        return m

    # ---- values ----
    def _shown(self, v):
        return self.names.get(v, "%?")

    def _new(self, prefix="t"):
        self._counter[0] += 1
        return f"{prefix}{self._counter[0]}"

    def _level(self, v):
        m = self.maps[v]
        if v in self.after_col:
            return {"CS"} if m == SCALAR else {"CJ"}
        if m == SCALAR and v in self.after_row:
            return {"I"}
        return {SCALAR: {"S"}, COL: {"I"}, FULL: {"J"}, ROW: {"J", "CJ"}}[m]

    def _comment(self, node):
        outs = ", ".join(self.names.get(v, "%?") for v in node.outputs)
        ins = ", ".join(self.names.get(v, "%?") for v in node.inputs)
        loc = "" if self.structural else short_loc(node.loc)
        return f"# {outs} = {node.op} {ins}" + (f"  ({loc})" if loc else "")

    def _load(self, v, scope):
        if scope.levels & {"S", "CS"}:
            index = "0"
        elif "CJ" in scope.levels:
            index = "j"
        else:
            index = {SCALAR: "0", COL: "i", ROW: "j", FULL: self._full}[self.maps[v]]
        return f"{self.arg[v]}[{index}]"

    def need(self, v, scope, fn):
        """The local holding v, emitting its computation at v's own level of the nest."""
        name = scope.lookup(v)
        if name is not None:
            return name
        target = scope.at(self._level(v))
        if target is None:
            raise AssertionError(f"{v} is needed outside its loop level")
        if v in self.arg:
            name = self._new("x")
            what = v.type.dtype if self.structural else v.type
            target.lines.append(f"{name} = {self._load(v, target)}  "
                                f"# {self.names.get(v, '%?')} {what}")
            target.names[v] = name
            return name
        node = self.producer[v]
        dtype = v.type.dtype
        if node.op == "constant":
            name = self._constant(node, target, fn)
        elif node.op == "iota":
            name = f"{np_type(dtype)}({iota_index(node, self.maps[v], self.space)})"
        elif node in self.reductions:
            raise AssertionError(f"reduction result {v} used before it is computed")
        else:
            args = [self.need(u, target, fn) for u in node.inputs]
            expr = CUDA_EXPR[node.op](args, node, dtype)
            if node.op in PASS_THROUGH:
                name = expr
            else:
                name = self._new()
                target.lines.append(f"{name} = {expr}  {self._comment(node)}")
        target.names[v] = name
        return name

    def _constant(self, node, scope, fn):
        v = node.out
        value = node.attrs["value"].array.reshape(-1)[0]
        dtype = v.type.dtype
        if dtype.startswith("float"):
            load = f"{np_type(dtype)}(kf{len(fn.fconsts)})"
            fn.fconsts.append(float(value))
        else:
            k = len(fn.iconsts)
            load = f"(ki{k} != 0)" if dtype == "bool" else f"{np_type(dtype)}(ki{k})"
            fn.iconsts.append(int(value))
        name = self._new("k")
        root = scope.at({"S"})
        shown = "" if self.structural else " " + literal(value, dtype)
        root.lines.append(f"{name} = {load}  # {self.names.get(v, '%?')} = constant{shown}")
        root.names[v] = name
        return name

    # ---- reductions ----
    @staticmethod
    def _init(node):
        dtype = node.out.type.dtype
        if node.op == "sum":
            return literal(0, dtype)
        return literal(float("-inf"), dtype) if dtype.startswith("float") else \
            literal(-(2 ** 31) if dtype == "int32" else -(2 ** 63), dtype)

    @staticmethod
    def _accumulate(op, acc, x):
        if op == "sum":
            return f"{acc} += {x}"
        return f"{acc} = {x} if ({x} > {acc} or {x} != {x}) else {acc}"  # NaN wins, as NumPy

    def _tree(self, r, acc, sh):
        """Lines reducing every thread's `acc` over the block into `acc` (all threads)."""
        if r.op == "sum":
            step = [f"{sh}[tid] += {sh}[tid + half]"]
        else:
            y = self._new("y")
            step = [f"{y} = {sh}[tid + half]",
                    f"if {y} > {sh}[tid] or {y} != {y}:",
                    f"    {sh}[tid] = {y}"]
        return [f"{sh}[tid] = {acc}  # {self.names.get(r.out, '%?')}: the block's partials, "
                f"combined in a tree of halving width",
                "cuda.syncthreads()",
                "half = THREADS // 2",
                "while half > 0:",
                "    if tid < half:",
                *_indent(step, 2),
                "    cuda.syncthreads()",
                "    half //= 2",
                f"{acc} = {sh}[0]  {self._comment(r)}",
                "cuda.syncthreads()  # all have read the total before the array is reused"]

    # ---- the flat (elementwise) body ----
    def flat_body(self, fn, S, idx="e", C="C") -> list:
        """Lines computing and storing element `idx` (i, j derived from it); scalars go to S."""
        self._full = idx
        E = _Scope({"I", "J"}, S)
        values = [(v, self.need(v, E, fn)) for v in self.out_arg]  # every load before a store
        stores = []
        for v, val in values:
            m = self.maps[v]
            index = {FULL: idx, COL: "i", ROW: "j", SCALAR: "0"}[m]
            cond = {FULL: None, COL: "j == 0", ROW: "i == 0", SCALAR: f"{idx} == 0"}[m]
            for o in self.out_arg[v]:
                store = f"{o}[{index}] = {val}  # {self._shown(v)}"
                stores += [store] if cond is None else [f"if {cond}:", "    " + store]
        body = [*E.lines, *stores]
        text = "\n".join(body)
        if re.search(r"\bj\b", text):
            return [f"i = {idx} // {C}", f"j = {idx} - i * {C}", *body]
        if re.search(r"\bi\b", text):
            return [f"i = {idx} // {C}", *body]
        return body

    def _params(self, fn, extra=()):
        ins = [self.arg[v] for v in self.region.inputs]
        outs = [f"o{k}" for k in range(len(self.region.outputs))]
        return ["R", "C", *ins, *outs, *extra, *fn.params()]

    @staticmethod
    def _function(fname, params, body, doc):
        return "\n".join([DECORATOR, f"def {fname}({', '.join(params)}):",
                          f'    """{doc}"""', *_indent(body or ["pass"])])

    def elementwise_source(self, fname):
        """-> (source, _Fn) of the flat grid-stride kernel."""
        fn = _Fn()
        S = _Scope({"S"})
        body = self.flat_body(fn, S)
        lines = [*S.lines, "for e in range(cuda.grid(1), R * C, cuda.gridsize(1)):",
                 *_indent(body)]
        doc = "elementwise: one thread per element of the (R, C) space, grid-stride"
        return self._function(fname, self._params(fn), lines, doc), fn

    # ---- the row-structured main kernel ----
    def rows_source(self, fname):
        """-> (source, _Fn) of the row / column / row+column main kernel."""
        fn = _Fn()
        self._full = "base + j"
        S = _Scope({"S"})
        I = _Scope({"I"}, S)  # noqa: E741
        scalar_stores = []
        for v, outs in self.out_arg.items():
            if self.maps[v] == SCALAR and v not in self.after_col | self.after_row:
                val = self.need(v, S, fn)
                scalar_stores += [f"{o}[0] = {val}  # {self._shown(v)}" for o in outs]
        shared = {}
        for r in self.row_reds:
            dtype = r.out.type.dtype
            sh = shared.setdefault(dtype, f"sh_{dtype}")
            J = _Scope({"J"}, I)
            acc = self._new("acc")
            x = self.need(r.inputs[0], J, fn)
            I.lines += [f"{acc} = {self._init(r)}  {self._comment(r)}", STRIDE_J,
                        *_indent(J.lines), "    " + self._accumulate(r.op, acc, x),
                        *self._tree(r, acc, sh)]
            I.names[r.out] = acc
        J = _Scope({"J"}, I)
        stores = []
        for v, outs in self.out_arg.items():
            if self.maps[v] in (FULL, ROW) and v not in self.after_col:
                val = self.need(v, J, fn)
                index = "base + j" if self.maps[v] == FULL else "j"
                stores += [f"{o}[{index}] = {val}  # {self._shown(v)}" for o in outs]
        for r in self.col_full:
            x = self.need(r.inputs[0], J, fn)
            slot = _at(self.offsets[r], "c * C + j")
            stores.append(self._accumulate(r.op, slot, x) + f"  {self._comment(r)}")
        if J.lines or stores:
            I.lines += [STRIDE_J, *_indent(J.lines + stores)]
        for v, outs in self.out_arg.items():
            per_row = self.maps[v] == COL or (self.maps[v] == SCALAR and v in self.after_row)
            if per_row and v not in self.after_col:
                val = self.need(v, I, fn)
                index = "i" if self.maps[v] == COL else "0"
                I.lines += ["if tid == 0:",
                            *(f"    {o}[{index}] = {val}  # {self._shown(v)}" for o in outs)]
        for r in self.col_scalar:
            x = self.need(r.inputs[0], I, fn)
            slot = _at(self.offsets[r], "c")
            I.lines += ["if tid == 0:",
                        "    " + self._accumulate(r.op, slot, x) + f"  {self._comment(r)}"]
        if self.col_reds:
            loops = ["c = cuda.blockIdx.x  # this block's chunk of rows (the grid has nch blocks)"]
            for r in self.col_full:  # each reduction's partials start at its identity
                loops += [STRIDE_J, f"    {_at(self.offsets[r], 'c * C + j')} = "
                                    f"{self._scratch_init(r)}  {self._comment(r)}"]
            for r in self.col_scalar:
                loops += ["if tid == 0:", f"    {_at(self.offsets[r], 'c')} = "
                                          f"{self._scratch_init(r)}  {self._comment(r)}"]
            loops += ["for i in range(c * R // nch, (c + 1) * R // nch):"]
        else:
            loops = ["for i in range(cuda.blockIdx.x, R, cuda.gridDim.x):"]
        loops += ["    base = i * C", *_indent(I.lines)]
        head = ["tid = cuda.threadIdx.x"]
        head += [f"{sh} = cuda.shared.array(THREADS, {numba_type(d)})" for d, sh in shared.items()]
        if scalar_stores:
            head_stores = ["if tid == 0 and cuda.blockIdx.x == 0:", *_indent(scalar_stores)]
        else:
            head_stores = []
        extra = ("scratch", "nch") if self.col_reds else ()
        doc = ("rows: a block per row, its threads over the columns" if not self.col_reds else
               "chunks of rows: a block per chunk; column partials go to scratch")
        body = head + S.lines + head_stores + loops
        return self._function(fname, self._params(fn, extra), body, doc), fn

    @staticmethod
    def _scratch_init(r):
        return "0.0" if r.op == "sum" else "-np.inf"

    # ---- the combine kernel of column reductions ----
    def _sum_chunks(self, r, index, scope):
        """Lines adding reduction r's partials in chunk order (`index`: within a chunk)."""
        acc = self._new("acc")
        scope.names[r.out] = f"{np_type(r.out.type.dtype)}({acc})"
        first = _at(self.offsets[r], index)
        step = "c * C" if index.startswith("j") else "c"
        return [f"{acc} = {first}  {self._comment(r)}",
                "for c in range(1, nch):",
                "    " + self._accumulate(r.op, acc, _at(self.offsets[r], _plus(step, index)))]

    def combine_source(self, fname):
        """-> (source, _Fn) of `<name>_combine`: chunk partials summed in order, then the
        elementwise work on the column results, one thread per column."""
        fn = _Fn()
        S = _Scope({"S"})
        CS = _Scope({"CS"}, S)
        for r in self.col_scalar:  # every thread sums them (a few numbers): scalars for all
            CS.lines += self._sum_chunks(r, "", CS)
        scalar_stores = []
        for v, outs in self.out_arg.items():
            if self.maps[v] == SCALAR and v in self.after_col:
                val = self.need(v, CS, fn)
                scalar_stores += [f"{o}[0] = {val}  # {self._shown(v)}" for o in outs]
        CJ = _Scope({"CJ"}, CS)
        head = []
        for r in self.col_full:
            head += self._sum_chunks(r, "j", CJ)
        stores = []
        for v, outs in self.out_arg.items():
            if self.maps[v] in (ROW, FULL) and v in self.after_col:
                val = self.need(v, CJ, fn)
                stores += [f"{o}[j] = {val}  # {self._shown(v)}" for o in outs]
        body = S.lines + CS.lines
        if scalar_stores:
            body += ["if cuda.grid(1) == 0:", *_indent(scalar_stores)]
        if head or CJ.lines or stores:
            body += ["for j in range(cuda.grid(1), C, cuda.gridsize(1)):",
                     *_indent(head + CJ.lines + stores)]
        doc = "combine: the column partials of every chunk, in chunk order; one thread a column"
        return self._function(fname, self._params(fn, ("scratch", "nch")), body, doc), fn


def multi_source(node, names, structural, fname):
    """-> (source, _Fn, sub-kernel CudaLoops) of one launch running every elementwise kernel
    of a multi-tensor kernel over the concatenation of their index ranges."""
    region = node.region
    arg = {v: f"a{k}" for k, v in enumerate(region.inputs)}
    outs: dict = {}
    for k, v in enumerate(region.outputs):
        outs.setdefault(v, []).append(f"o{k}")
    fn, S, counter = _Fn(), _Scope({"S"}), [0]
    loops, lines, ends = [], [], []
    for s, sub in enumerate(region.nodes):
        inner_arg = {rv: arg[ov] for rv, ov in zip(sub.region.inputs, sub.inputs)}
        inner_out: dict = {}
        for rv, ov in zip(sub.region.outputs, sub.outputs):
            inner_out.setdefault(rv, []).extend(outs[ov])
        loop = CudaLoop(sub, names, structural, inner_arg, inner_out, counter)
        body = loop.flat_body(fn, S, idx="q", C=f"C{s}")
        what = ", ".join(names.get(v, "%?") for v in sub.outputs)
        test = "if" if s == 0 else "elif"
        ends.append(f"end{s} = {'' if s == 0 else f'end{s - 1} + '}R{s} * C{s}")
        lines += [f"{test} e < end{s}:  # {what} = elementwise",
                  f"    q = e{'' if s == 0 else f' - end{s - 1}'}", *_indent(body)]
        loops.append(loop)
    last = f"end{len(region.nodes) - 1}"
    body = [*ends, *S.lines, f"for e in range(cuda.grid(1), {last}, cuda.gridsize(1)):",
            *_indent(lines)]
    sizes = [p for s in range(len(region.nodes)) for p in (f"R{s}", f"C{s}")]
    params = [*sizes, *arg.values(), *(f"o{k}" for k in range(len(region.outputs))), *fn.params()]
    doc = "multi-tensor: each elementwise kernel takes its range of one grid-stride loop"
    return CudaLoop._function(fname, params, body, doc), fn, loops
