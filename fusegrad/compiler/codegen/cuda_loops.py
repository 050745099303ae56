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
makes unsafe (see `CudaLoop.private`). Levels and the code computing each value come from
loop_nest.py, shared with the CPU; this file is CUDA's skeleton of blocks, threads and trees.
"""
from __future__ import annotations

import re

from .cuda_expr import CUDA_EXPR, numba_type
from .loop_nest import COL, FULL, ROW, SCALAR, Constants, LoopNest, Scope as _Scope

DECORATOR = "@cuda.jit(cache=True)"
STRIDE_J = "for j in range(tid, C, THREADS):"  # a block's threads over one row


def _const_params(consts) -> list:
    """The constant arguments of a generated function (kf*: float64, ki*: int64)."""
    return ([f"kf{k}" for k in range(len(consts.floats))]
            + [f"ki{k}" for k in range(len(consts.ints))])


def _plus(*terms) -> str:
    """A sum of index terms as text, the empty ones left out ("" for none)."""
    return " + ".join(t for t in terms if t)


def _at(offset, index) -> str:
    return f"scratch[{_plus(offset, index) or '0'}]"


def _indent(lines, depth=1):
    return ["    " * depth + ln for ln in lines]


class CudaLoop(LoopNest):
    """The CUDA functions of one loop kernel node (see module docstring)."""

    EXPR = CUDA_EXPR
    CONST_REF = ("kf{k}", "ki{k}")  # scalar arguments: Numba passes them by value

    def __init__(self, kernel, names=None, structural=False, arg=None, out_arg=None,
                 counter=None):
        super().__init__(kernel, names, structural, arg, out_arg, counter)
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

    # ---- reductions ----
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
    def flat_body(self, S, idx="e", C="C") -> list:
        """Lines computing and storing element `idx` (i, j derived from it); scalars go to S."""
        self.full_index = idx
        E = _Scope({"I", "J"}, S)
        values = [(v, self.need(v, E)) for v in self.out_arg]  # every load before a store
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

    def _params(self, extra=()):
        ins = [self.arg[v] for v in self.region.inputs]
        outs = [f"o{k}" for k in range(len(self.region.outputs))]
        return ["R", "C", *ins, *outs, *extra, *_const_params(self.consts)]

    @staticmethod
    def _function(fname, params, body, doc):
        return "\n".join([DECORATOR, f"def {fname}({', '.join(params)}):",
                          f'    """{doc}"""', *_indent(body or ["pass"])])

    def elementwise_source(self, fname):
        """-> (source, Constants) of the flat grid-stride kernel."""
        self.consts = Constants()
        S = _Scope({"S"})
        body = self.flat_body(S)
        lines = [*S.lines, "for e in range(cuda.grid(1), R * C, cuda.gridsize(1)):",
                 *_indent(body)]
        doc = "elementwise: one thread per element of the (R, C) space, grid-stride"
        return self._function(fname, self._params(), lines, doc), self.consts

    # ---- the row-structured main kernel ----
    def rows_source(self, fname):
        """-> (source, Constants) of the row / column / row+column main kernel."""
        self.consts = Constants()
        self.full_index = "base + j"
        S = _Scope({"S"})
        I = _Scope({"I"}, S)  # noqa: E741
        scalar_stores = []
        for v, outs in self.out_arg.items():
            if self.maps[v] == SCALAR and v not in self.after_col | self.after_row:
                val = self.need(v, S)
                scalar_stores += [f"{o}[0] = {val}  # {self._shown(v)}" for o in outs]
        shared = {}
        for r in self.row_reds:
            dtype = r.out.type.dtype
            sh = shared.setdefault(dtype, f"sh_{dtype}")
            J = _Scope({"J"}, I)
            acc = self._new("acc")
            x = self.need(r.inputs[0], J)
            I.lines += [f"{acc} = {self.reduce_init(r)}  {self._comment(r)}", STRIDE_J,
                        *_indent(J.lines), "    " + self.accumulate(r.op, acc, x),
                        *self._tree(r, acc, sh)]
            I.names[r.out] = acc
        J = _Scope({"J"}, I)
        stores = []
        for v, outs in self.out_arg.items():
            if self.maps[v] in (FULL, ROW) and v not in self.after_col:
                val = self.need(v, J)
                index = "base + j" if self.maps[v] == FULL else "j"
                stores += [f"{o}[{index}] = {val}  # {self._shown(v)}" for o in outs]
        for r in self.col_full:
            x = self.need(r.inputs[0], J)
            slot = _at(self.offsets[r], "c * C + j")
            stores.append(self.accumulate(r.op, slot, x) + f"  {self._comment(r)}")
        if J.lines or stores:
            I.lines += [STRIDE_J, *_indent(J.lines + stores)]
        for v, outs in self.out_arg.items():
            per_row = self.maps[v] == COL or (self.maps[v] == SCALAR and v in self.after_row)
            if per_row and v not in self.after_col:
                val = self.need(v, I)
                index = "i" if self.maps[v] == COL else "0"
                I.lines += ["if tid == 0:",
                            *(f"    {o}[{index}] = {val}  # {self._shown(v)}" for o in outs)]
        for r in self.col_scalar:
            x = self.need(r.inputs[0], I)
            slot = _at(self.offsets[r], "c")
            I.lines += ["if tid == 0:",
                        "    " + self.accumulate(r.op, slot, x) + f"  {self._comment(r)}"]
        if self.col_reds:
            loops = ["c = cuda.blockIdx.x  # this block's chunk of rows (the grid has nch blocks)"]
            for r in self.col_full:  # each reduction's partials start at its identity
                loops += [STRIDE_J, f"    {_at(self.offsets[r], 'c * C + j')} = "
                                    f"{self.partial_init(r)}  {self._comment(r)}"]
            for r in self.col_scalar:
                loops += ["if tid == 0:", f"    {_at(self.offsets[r], 'c')} = "
                                          f"{self.partial_init(r)}  {self._comment(r)}"]
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
        return self._function(fname, self._params(extra), body, doc), self.consts

    # ---- the combine kernel of column reductions ----
    def _sum_chunks(self, r, index, scope):
        """Lines adding reduction r's partials in chunk order (`index`: within a chunk)."""
        step = "c * C" if index.startswith("j") else "c"
        return self.sum_chunks(r, _at(self.offsets[r], index),
                               _at(self.offsets[r], _plus(step, index)), scope)

    def combine_source(self, fname):
        """-> (source, Constants) of `<name>_combine`: chunk partials summed in order, then the
        elementwise work on the column results, one thread per column."""
        self.consts = Constants()
        S = _Scope({"S"})
        CS = _Scope({"CS"}, S)
        for r in self.col_scalar:  # every thread sums them (a few numbers): scalars for all
            CS.lines += self._sum_chunks(r, "", CS)
        scalar_stores = []
        for v, outs in self.out_arg.items():
            if self.maps[v] == SCALAR and v in self.after_col:
                val = self.need(v, CS)
                scalar_stores += [f"{o}[0] = {val}  # {self._shown(v)}" for o in outs]
        CJ = _Scope({"CJ"}, CS)
        head = []
        for r in self.col_full:
            head += self._sum_chunks(r, "j", CJ)
        stores = []
        for v, outs in self.out_arg.items():
            if self.maps[v] in (ROW, FULL) and v in self.after_col:
                val = self.need(v, CJ)
                stores += [f"{o}[j] = {val}  # {self._shown(v)}" for o in outs]
        body = S.lines + CS.lines
        if scalar_stores:
            body += ["if cuda.grid(1) == 0:", *_indent(scalar_stores)]
        if head or CJ.lines or stores:
            body += ["for j in range(cuda.grid(1), C, cuda.gridsize(1)):",
                     *_indent(head + CJ.lines + stores)]
        doc = "combine: the column partials of every chunk, in chunk order; one thread a column"
        return (self._function(fname, self._params(("scratch", "nch")), body, doc),
                self.consts)


def multi_source(node, names, structural, fname):
    """-> (source, Constants, sub-kernel CudaLoops) of one launch running every elementwise kernel
    of a multi-tensor kernel over the concatenation of their index ranges."""
    region = node.region
    arg = {v: f"a{k}" for k, v in enumerate(region.inputs)}
    outs: dict = {}
    for k, v in enumerate(region.outputs):
        outs.setdefault(v, []).append(f"o{k}")
    consts, S, counter = Constants(), _Scope({"S"}), [0]
    loops, lines, ends = [], [], []
    for s, sub in enumerate(region.nodes):
        inner_arg = {rv: arg[ov] for rv, ov in zip(sub.region.inputs, sub.inputs)}
        inner_out: dict = {}
        for rv, ov in zip(sub.region.outputs, sub.outputs):
            inner_out.setdefault(rv, []).extend(outs[ov])
        loop = CudaLoop(sub, names, structural, inner_arg, inner_out, counter)
        loop.consts = consts  # one launch: one list of constant arguments
        body = loop.flat_body(S, idx="q", C=f"C{s}")
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
    params = [*sizes, *arg.values(), *(f"o{k}" for k in range(len(region.outputs))),
              *_const_params(consts)]
    doc = "multi-tensor: each elementwise kernel takes its range of one grid-stride loop"
    return CudaLoop._function(fname, params, body, doc), consts, loops
