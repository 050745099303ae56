"""Source of one loop kernel (elementwise, row, column, row+column) in the kernel language.

    @kernel("i64 i64 i64 i64 f32* f32* f32* f32*", fastmath=("contract",), noalias=True)
    def row_6c70d0386e(w, nw, R, C, a0, a1, o0, o1):   # every array flat; sizes are arguments
        s3 = np.float32(kf[0])                      # SCALAR values: once per call (per worker)
        for i in range(w * R // nw, (w + 1) * R // nw):   # worker w of nw: its share of rows
            base = i * C
            acc = ...                               # one loop over j per row reduction
            for j in range(C): ...
            for j in range(C):                      # then the elementwise consumers
                o0[base + j] = ...
        return 0                                    # the status: done (kernel_lang.py)

A call is split over workers (the dispatcher's parallel calls) by its first two arguments: worker
w of nw computes its share of the rows, or of the row chunks. Column reductions accumulate
per-chunk partial rows (a fixed number of chunks, each summed in row order by whichever worker
has it, then combined in chunk order: the result is the same for any number of workers) and
are finished in a combine loop over j, where the elementwise work on their results runs too
(e.g. a bias's optimizer update). A kernel with such a finish (or with per-call outputs, which
one worker must store after every worker has read the inputs) takes a third argument, the
phases to run: 1 the workers' share, 2 the finish, 3 both (a call on one thread).
Every operand is loaded into a local before any output is stored, which is what makes the
memory plan's in-place writes safe. Each line names its IR value and the user's source line.
What a value's level is and how it is computed come from loop_nest.py, shared with CUDA; this
file is the CPU's loop skeleton (passes over a row, row chunks, the row cache).

Written for LLVM's loop vectoriser, which gives up on a loop when it cannot rule out that a
store overlaps a load it does not know the distance to: an output stored in place goes
through its input's own argument, and the column partials (p0, p1...) and the row cache (rc)
are separate arrays, never regions of one.
"""
from __future__ import annotations

from .common import np_type as _np
from .cpu_expr import CPU_EXPR
from ...ir.ops import PRIMITIVES
from .loop_nest import COL, FULL, ROW, SCALAR, Constants, LoopNest, Scope as _Scope

CHUNKS = 8  # column-reduction chunks: fixed, so sums never depend on the thread count
_SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "b1"}


def _ptr(v) -> str:
    """The kernel-language type of a pointer to v's elements."""
    return _SHORT[v.type.dtype] + "*"


class _Pass:
    """One loop over j in the row body: its scope's lines, then `tail` (accumulate or store
    lines). Rendered at the end, because a later pass may add row-cache stores to it."""

    def __init__(self, scope, tail):
        self.scope, self.tail = scope, tail

    def render(self):
        return ["for j in range(C):", *("    " + ln for ln in self.scope.lines), *self.tail]


class LoopKernel(LoopNest):
    """One loop kernel node as a kernel-language function (see the module docstring)."""

    EXPR = CPU_EXPR

    def __init__(self, kernel, names=None, exact_math=False, structural=False, inplace=None):
        # output k -> input m when the memory plan writes output k into input m's storage: the
        # kernel then takes that one array and stores into it. Passing the same buffer twice
        # (as a0 and o0) makes LLVM's runtime alias check fail and run the scalar loop;
        # one array indexed identically for load and store vectorises.
        self.inplace = dict(inplace or {})
        out_arg: dict = {}
        for k, v in enumerate(kernel.region.outputs):
            name = f"a{self.inplace[k]}" if k in self.inplace else f"o{k}"
            out_arg.setdefault(v, []).append(name)
        super().__init__(kernel, names, structural, out_arg=out_arg, exact_math=exact_math)
        # row cache: a value computed in one pass over a row and needed again in a later pass
        # is stored in the row cache `rc` (C elements a value, in cache) when first computed
        # and loaded there, instead of recomputed from its full-size operands in every pass
        self._passes: list = []  # the J scopes of the finished passes over the current row
        self.row_slots: dict = {}  # value -> its slot in the row cache
        self.partials: list = []  # the size of each column reduction's partials array

    def one_column(self, maps) -> dict:
        """With one column (C == 1) a per-column value is one value, and a row is one element:
        ROW and SCALAR (and FULL and COL) address the same data; with one element in all, every
        map does. Use one name for each, so values computed from each other (a column
        reduction's result and the scalars computed from it) live at one loop level."""
        space = self.space
        if space.C != 1:
            return maps
        same = {FULL: SCALAR, COL: SCALAR, ROW: SCALAR} if space.R == 1 else \
            {FULL: COL, ROW: SCALAR}
        return {v: same.get(m, m) for v, m in maps.items()}

    # ---- facts the driver needs ----
    @property
    def flat(self) -> bool:
        """Only whole-array values: the driver may call it as one row of R*C elements."""
        return (not self.reductions and all(m in (FULL, SCALAR) for m in self.maps.values())
                and not any(n.op == "iota" for n in self.region.nodes))

    @property
    def has_finish(self) -> bool:
        """Work after every worker's share: a combine pass, or per-call outputs to store."""
        return bool(self.col_reds) or any(self._per_call(v) for v in self.out_arg)

    def _per_call(self, v) -> bool:
        """A SCALAR output needing no reduction: stored once a call, in its finish."""
        return self.maps[v] == SCALAR and v not in self.after_col and v not in self.after_row

    # ---- emission ----
    CACHEABLE = ("float32", "float64", "int32", "bool")  # exact in a float64 row cache

    def reuse(self, v, node, scope):
        """The local loading v from the row cache, when an earlier pass over this row computed
        it (that pass then also stores it); None otherwise."""
        prim = PRIMITIVES[node.op]  # sources and pass-throughs cost nothing to redo
        if scope.levels != {"J"} or prim.loop == "source" or prim.pass_through \
                or v.type.dtype not in self.CACHEABLE:
            return None
        earlier = next((p for p in self._passes if v in p.names), None)
        if earlier is None:
            return None
        if v not in self.row_slots:
            self.row_slots[v] = len(self.row_slots)
            earlier.lines.append(f"rc[rw + {self.row_slots[v]} * C + j] = "
                                 f"{earlier.names[v]}  # {self._shown(v)}: row cache")
        name = self._new("x")
        scope.lines.append(f"{name} = {_np(v.type.dtype)}(rc[rw + {self.row_slots[v]} * C + j])"
                           f"  # {self._shown(v)} from the row cache")
        scope.names[v] = name
        return name

    def vector_accumulate(self, op, acc, x, dtype) -> str:
        """A row reduction's update: a float sum through radd, which lets LLVM reassociate it
        (and so vectorise the loop) while the rest of the kernel keeps IEEE order."""
        if op == "sum" and dtype.startswith("float"):
            return f"{acc} = radd({acc}, {x})"
        return self.accumulate(op, acc, x)

    def structure(self) -> tuple:
        """What the generated text depends on besides the region's structure (its structural
        name): every value's index map and every reduction's kind, which sizes of one (R or
        C) can change."""
        region = self.region
        values = [*region.inputs, *(v for n in region.nodes for v in n.outputs)]
        return (tuple(self.maps.get(v) for v in values),
                tuple(self.reductions.get(n) for n in region.nodes))

    def source(self, fname: str, noalias: bool = True) -> str:
        ins = [self.arg[v] for v in self.region.inputs]
        outs = [f"o{k}" for k in range(len(self.region.outputs)) if k not in self.inplace]
        self.consts = Constants()
        body: list[str] = []
        S = _Scope("S")
        I = _Scope("I", S)  # noqa: E741
        # SCALAR outputs that need no column reduction: stored in the finish, after every
        # worker has read the per-call values (an output may be written over an input)
        s_stores = []
        for v, names in self.out_arg.items():
            if self._per_call(v):
                s_stores += [f"{o}[0] = {self.need(v, S)}" for o in names]
        # the row body: phases for row reductions, then the elementwise pass
        self._passes, self.row_slots = [], {}
        for r in self.row_reds:
            J = _Scope("J", I)
            acc = self._new("acc")
            x = self.need(r.inputs[0], J)
            I.lines += [f"{acc} = {self.reduce_init(r)}  {self._comment(r)}",
                        _Pass(J, ["    " + self.vector_accumulate(r.op, acc, x,
                                                                  r.out.type.dtype)])]
            I.names[r.out] = acc
            self._passes.append(J)
        J = _Scope("J", I)
        stores = []
        for v, names in self.out_arg.items():
            if self.maps[v] in (FULL, ROW) and v not in self.after_col:
                val = self.need(v, J)
                stores += [f"{o}[base + j] = {val}" if self.maps[v] == FULL else f"{o}[j] = {val}"
                           for o in names]
        col_full, col_scalar = self.col_full, self.col_scalar
        # each column reduction's per-chunk partials are an array argument of their own (a
        # slice of the driver's scratch): LLVM cannot vectorise a loop updating several
        # regions of one array at distances it does not know
        part = {r: f"p{k}" for k, r in enumerate(col_full + col_scalar)}
        for r in col_full:
            x = self.need(r.inputs[0], J)
            slot = f"{part[r]}[c * C + j]"
            stores.append(self.accumulate(r.op, slot, x) + f"  {self._comment(r)}")
        if J.lines or stores:
            I.lines.append(_Pass(J, ["    " + ln for ln in stores]))
        i_stores = []  # per-row outputs: stored after the row's last load, as above
        for v, names in self.out_arg.items():
            if self.maps[v] == COL and v not in self.after_col:
                val = self.need(v, I)
                i_stores += [f"{o}[i] = {val}" for o in names]
            elif self.maps[v] == SCALAR and v in self.after_row and v not in self.after_col:
                i_stores += [f"{o}[0] = {self.need(v, I)}" for o in names]
        for r in col_scalar:
            x = self.need(r.inputs[0], I)
            slot = f"{part[r]}[c]"
            I.lines.append(self.accumulate(r.op, slot, x) + f"  {self._comment(r)}")
        I.lines += i_stores

        I.lines = [ln for item in I.lines
                   for ln in (item.render() if isinstance(item, _Pass) else [item])]
        finish = self.has_finish
        work: list[str] = []  # the workers' share
        done: list[str] = list(s_stores)  # the finish, after every share
        if self.col_reds:
            head = ["nch = min(R, %d)" % CHUNKS]
            work += ["for c in range(w * nch // nw, (w + 1) * nch // nw):"]
            for r in col_full:  # each chunk's partials start at the reduction's identity
                work += ["    for t in range(C):",
                         f"        {part[r]}[c * C + t] = {self.partial_init(r)}  "
                         f"{self._comment(r)}"]
            for r in col_scalar:
                work += [f"    {part[r]}[c] = {self.partial_init(r)}  {self._comment(r)}"]
            work += ["    for i in range(c * R // nch, (c + 1) * R // nch):",
                     "        base = i * C",
                     *("        " + ln for ln in I.lines)]
            done += self._combine(col_full, col_scalar, part, S)
        else:
            head = []
            if I.lines:
                work += ["for i in range(w * R // nw, (w + 1) * R // nw):", "    base = i * C",
                         *("    " + ln for ln in I.lines)]
        if self.row_slots:  # each worker has its own row cache
            head.append(f"rw = w * {len(self.row_slots)} * C")
        if finish:
            loops = head + (["if phase & 1:", *("    " + ln for ln in work)] if work else []) \
                + (["if phase & 2:", *("    " + ln for ln in done)] if done else [])
        else:
            loops = head + work
        body += S.lines + loops  # S first: later passes hoist scalars into it
        self.partials = [("nch * C" if r in col_full else "nch") for r in part]
        params = (["w", "nw"] + (["phase"] if finish else []) + ["R", "C", *ins, *outs]
                  + list(part.values())
                  + (["rc"] if self.row_slots else [])
                  + (["kf"] if self.consts.floats else [])
                  + (["ki"] if self.consts.ints else []))
        types = (["i64", "i64"] + (["i64"] if finish else []) + ["i64", "i64"]
                 + [_ptr(v) for v in self.region.inputs]
                 + [_ptr(self.region.outputs[k]) for k in range(len(self.region.outputs))
                    if k not in self.inplace]
                 + ["f64*"] * len(part)
                 + ([f"{self._row_cache_dtype()}*"] if self.row_slots else [])
                 + (["f64*"] if self.consts.floats else [])
                 + (["i64*"] if self.consts.ints else []))
        lines = [f'@kernel("{" ".join(types)}", fastmath=("contract",), noalias={noalias})',
                 f"def {fname}({', '.join(params)}):"]
        if self.inplace:
            lines.append("    # in place: " + ", ".join(f"o{k} is stored into a{m}"
                                                  for k, m in sorted(self.inplace.items())))
        lines += ["    " + ln for ln in body]
        lines.append("    return 0")
        return "\n".join(lines)

    def _row_cache_dtype(self) -> str:
        return "f32" if all(v.type.dtype == "float32" for v in self.row_slots) else "f64"

    def _combine(self, col_full, col_scalar, part, S):
        CS = _Scope("CS", S)
        lines = []
        for r in col_scalar:
            lines += self.sum_chunks(r, f"{part[r]}[0]", f"{part[r]}[c]", CS)
        for v, names in self.out_arg.items():
            if self.maps[v] == SCALAR and v in self.after_col:
                val = self.need(v, CS)
                CS.lines += [f"{o}[0] = {val}" for o in names]
        lines += CS.lines
        if col_full:
            CJ = _Scope("CJ", CS)
            head = []
            for r in col_full:
                head += self.sum_chunks(r, f"{part[r]}[j]", f"{part[r]}[c * C + j]", CJ)
            stores = []
            for v, names in self.out_arg.items():
                if self.maps[v] in (ROW, FULL) and v in self.after_col:
                    val = self.need(v, CJ)
                    stores += [f"{o}[j] = {val}" for o in names]
            lines += ["for j in range(C):", *("    " + ln for ln in head + CJ.lines + stores)]
        return lines
