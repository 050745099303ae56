"""Source of one loop kernel (elementwise, row, column, row+column) in the kernel language.

    @kernel("i64 i64 f32* f32* f32* f32*", fastmath=("contract",), noalias=True)
    def row_6c70d0386e(R, C, a0, a1, o0, o1):      # every array flat; sizes are arguments
        s3 = np.float32(kf[0])                      # SCALAR values: once per call
        for i in range(R):
            base = i * C
            acc = ...                               # one loop over j per row reduction
            for j in range(C): ...
            for j in range(C):                      # then the elementwise consumers
                o0[base + j] = ...
        return 0                                    # the status: done (kernel_lang.py)

Column reductions accumulate per-chunk partial rows (a fixed number of chunks, combined in a
fixed order, so the result does not depend on threads) and are finished in a combine loop over
j, where the elementwise work on their results runs too (e.g. a bias's optimizer update).
Every operand is loaded into a local before any output is stored, which is what makes the
memory plan's in-place writes safe. Each line names its IR value and the user's source line.

Written for LLVM's loop vectoriser, which gives up on a loop when it cannot rule out that a
store overlaps a load it does not know the distance to: an output stored in place goes
through its input's own argument, and the column partials (p0, p1...) and the row cache (rc)
are separate arrays, never regions of one.
"""
from __future__ import annotations

from ...ir.printer import short_loc
from ..passes.loopspace import COL, FULL, ROW, SCALAR, Space, iota_index, infer_maps
from .common import Scope as _Scope, downstream as _downstream, np_type as _np
from .cpu_expr import CPU_EXPR, literal

CHUNKS = 8  # column-reduction chunks: fixed, so sums never depend on the thread count
_SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "b1"}


def _ptr(v) -> str:
    """The kernel-language type of a pointer to v's elements."""
    return _SHORT[v.type.dtype] + "*"


def _one_column(maps, space) -> dict:
    """With one column (C == 1) a per-column value is one value, and a row is one element:
    ROW and SCALAR (and FULL and COL) address the same data; with one element in all, every
    map does. Use one name for each, so values computed from each other (a column reduction's
    result and the scalars computed from it) live at one loop level."""
    if space.C != 1:
        return maps
    same = {FULL: SCALAR, COL: SCALAR, ROW: SCALAR} if space.R == 1 else {FULL: COL, ROW: SCALAR}
    return {v: same.get(m, m) for v, m in maps.items()}


class _Pass:
    """One loop over j in the row body: its scope's lines, then `tail` (accumulate or store
    lines). Rendered at the end, because a later pass may add row-cache stores to it."""

    def __init__(self, scope, tail):
        self.scope, self.tail = scope, tail

    def render(self):
        return ["for j in range(C):", *("    " + ln for ln in self.scope.lines), *self.tail]


class LoopKernel:
    def __init__(self, kernel, names=None, exact_math=False, structural=False, inplace=None):
        self.kernel = kernel
        # output k -> input m when the memory plan writes output k into input m's storage: the
        # kernel then takes that one array and stores into it. Passing the same buffer twice
        # (as a0 and o0) makes LLVM's runtime alias check fail and run the scalar loop;
        # one array indexed identically for load and store vectorises.
        self.inplace = dict(inplace or {})
        self.region = kernel.region
        self.space = Space(tuple(kernel.attrs["space"]), kernel.attrs["split"])
        maps, self.reductions = infer_maps(self.region.nodes, self.space)
        self.maps = _one_column(maps, self.space)
        self.names = names or {}
        self.exact_math = exact_math
        # structural: comments without shapes or constant values, so the text of a kernel
        # file is the same for every batch size and every model that uses it
        self.structural = structural
        self.producer = {v: n for n in self.region.nodes for v in n.outputs}
        self.row_reds = [n for n in self.region.nodes if self.reductions.get(n) == "row"]
        self.col_reds = [n for n in self.region.nodes if self.reductions.get(n) == "col"]
        self.after_col = _downstream(self.region.nodes, [n.out for n in self.col_reds])
        # with one row (R == 1) a per-row value is a scalar: those computed from a row
        # reduction live in the row loop
        self.after_row = _downstream(self.region.nodes, [n.out for n in self.row_reds])
        self.arg = {v: f"a{k}" for k, v in enumerate(self.region.inputs)}
        self.fconsts: list = []  # values of the kf / ki arguments, filled by source()
        self.iconsts: list = []
        self.out_arg = {}
        for k, v in enumerate(self.region.outputs):
            name = f"a{self.inplace[k]}" if k in self.inplace else f"o{k}"
            self.out_arg.setdefault(v, []).append(name)
        self._tmp = 0
        # row cache: a value computed in one pass over a row and needed again in a later pass
        # is stored in the row cache `rc` (C elements a value, in cache) when first computed
        # and loaded there, instead of recomputed from its full-size operands in every pass
        self._passes: list = []  # the J scopes of the finished passes over the current row
        self.row_slots: dict = {}  # value -> its slot in the row cache
        self.partials: list = []  # the size of each column reduction's partials array

    # ---- facts the driver needs ----
    @property
    def flat(self) -> bool:
        """Only whole-array values: the driver may call it as one row of R*C elements."""
        return (not self.reductions and all(m in (FULL, SCALAR) for m in self.maps.values())
                and not any(n.op == "iota" for n in self.region.nodes))

    def scratch_parts(self, R, C) -> list:
        """[(float64 elements, view dtype or None)] of the scratch arrays a call takes after
        its operands (valid after source()): each column reduction's float64 partials, then
        the row cache, float32 when every value it holds is (no conversions in the loops)."""
        nch = min(R, CHUNKS)
        parts = [(nch * C if size == "nch * C" else nch, None) for size in self.partials]
        if self.row_slots:
            n = len(self.row_slots) * C
            if self._row_cache_dtype() == "f32":
                parts.append(((n + 1) // 2, "float32"))
            else:
                parts.append((n, None))
        return parts

    # ---- emission ----
    def _level(self, v):
        """The loop levels where v can be computed: SCALAR once, COL per row, FULL per (i, j),
        ROW in any loop over j; values after a column reduction only in the combine pass."""
        m = self.maps[v]
        if v in self.after_col:
            return ("CS",) if m == SCALAR else ("CJ",)
        if m == SCALAR and v in self.after_row:
            return ("I",)
        return {SCALAR: ("S",), COL: ("I",), FULL: ("J",), ROW: ("J", "CJ")}[m]

    def _comment(self, node):
        outs = ", ".join(self.names.get(v, "%?") for v in node.outputs)
        ins = ", ".join(self.names.get(v, "%?") for v in node.inputs)
        loc = "" if self.structural else short_loc(node.loc)  # kernel files: structure only
        return f"# {outs} = {node.op} {ins}" + (f"  ({loc})" if loc else "")

    def _new(self, prefix="t"):
        self._tmp += 1
        return f"{prefix}{self._tmp}"

    def _load(self, v, level):
        a = self.arg[v]
        m = self.maps[v]
        index = {SCALAR: "0", COL: "i", ROW: "j", FULL: "base + j"}[m]
        if level in ("S", "CS"):
            index = "0"
        elif level == "CJ":
            index = "j"
        return f"{a}[{index}]"

    def need(self, v, scope):
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
            target.lines.append(f"{name} = {self._load(v, target.level)}  "
                                f"# {self.names.get(v, '%?')} {what}")
            target.names[v] = name
            return name
        node = self.producer[v]
        dtype = v.type.dtype
        if target.level == "J" and (cached := self._from_earlier_pass(v, node, target)):
            return cached
        if node.op == "constant":
            name = self._constant(node, scope)
        elif node.op == "iota":
            index = iota_index(node, self.maps[v], self.space)
            name = f"{_np(dtype)}({index})"
        elif node in self.reductions:
            raise AssertionError(f"reduction result {v} used before it is computed")
        else:
            args = [self.need(u, target) for u in node.inputs]
            expr = CPU_EXPR[node.op](args, node, dtype, self.exact_math)
            if node.op in ("broadcast_to", "reshape", "stop_gradient"):
                name = expr
            else:
                name = self._new()
                target.lines.append(f"{name} = {expr}  {self._comment(node)}")
        target.names[v] = name
        return name

    CACHEABLE = ("float32", "float64", "int32", "bool")  # exact in a float64 row cache

    def _from_earlier_pass(self, v, node, scope):
        """The local loading v from the row cache, when an earlier pass over this row computed
        it (that pass then also stores it); None otherwise."""
        if node.op in ("constant", "iota", "broadcast_to", "reshape", "stop_gradient") \
                or v.type.dtype not in self.CACHEABLE:
            return None
        earlier = next((p for p in self._passes if v in p.names), None)
        if earlier is None:
            return None
        if v not in self.row_slots:
            self.row_slots[v] = len(self.row_slots)
            earlier.lines.append(f"rc[{self.row_slots[v]} * C + j] = "
                                 f"{earlier.names[v]}  # {self.names.get(v, '%?')}: row cache")
        name = self._new("x")
        scope.lines.append(f"{name} = {_np(v.type.dtype)}(rc[{self.row_slots[v]} * C + j])"
                           f"  # {self.names.get(v, '%?')} from the row cache")
        scope.names[v] = name
        return name

    def _constant(self, node, scope):
        """Constants are arguments (kf: float64, ki: int64 tables), not literals: a constant
        such as 1/batch then does not make a new batch size a new kernel."""
        v = node.out
        value = node.attrs["value"].array.reshape(-1)[0]
        dtype = v.type.dtype
        if dtype.startswith("float"):
            load = f"{_np(dtype)}(kf[{len(self.fconsts)}])"
            self.fconsts.append(float(value))
            self.fconst_nodes.append(node)
        else:
            k = len(self.iconsts)
            load = f"(ki[{k}] != 0)" if dtype == "bool" else f"{_np(dtype)}(ki[{k}])"
            self.iconsts.append(int(value))
            self.iconst_nodes.append(node)
        name = self._new("k")
        root = scope.at(("S",))
        shown = "" if self.structural else " " + literal(value, dtype)
        root.lines.append(f"{name} = {load}  # {self.names.get(v, '%?')} = constant{shown}")
        root.names[v] = name
        return name

    def _reduce_init(self, node):
        dtype = node.out.type.dtype
        if node.op == "sum":
            return literal(0, dtype)
        return literal(float("-inf"), dtype) if dtype.startswith("float") else \
            literal(-(2 ** 31) if dtype == "int32" else -(2 ** 63), dtype)

    @staticmethod
    def _accumulate(op, acc, x, dtype="float32", vector_reduction=False):
        if op == "sum":
            if vector_reduction and dtype.startswith("float"):
                return f"{acc} = radd({acc}, {x})"  # reassociable: the loop vectorises
            return f"{acc} += {x}"
        return f"{acc} = {x} if ({x} > {acc} or {x} != {x}) else {acc}"

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
        self.fconsts, self.iconsts = [], []
        self.fconst_nodes, self.iconst_nodes = [], []  # the constant nodes, in table order
        body: list[str] = []
        S = _Scope("S")
        I = _Scope("I", S)  # noqa: E741
        # SCALAR outputs that need no column reduction: stored once every per-call value is
        # loaded (an output may be written over an input that a later line still reads)
        s_stores = []
        for v, names in self.out_arg.items():
            if self.maps[v] == SCALAR and v not in self.after_col and v not in self.after_row:
                s_stores += [f"{o}[0] = {self.need(v, S)}" for o in names]
        # the row body: phases for row reductions, then the elementwise pass
        self._passes, self.row_slots = [], {}
        for r in self.row_reds:
            J = _Scope("J", I)
            acc = self._new("acc")
            x = self.need(r.inputs[0], J)
            I.lines += [f"{acc} = {self._reduce_init(r)}  {self._comment(r)}",
                        _Pass(J, ["    " + self._accumulate(r.op, acc, x, r.out.type.dtype,
                                                            True)])]
            I.names[r.out] = acc
            self._passes.append(J)
        J = _Scope("J", I)
        stores = []
        for v, names in self.out_arg.items():
            if self.maps[v] in (FULL, ROW) and v not in self.after_col:
                val = self.need(v, J)
                stores += [f"{o}[base + j] = {val}" if self.maps[v] == FULL else f"{o}[j] = {val}"
                           for o in names]
        col_full = [r for r in self.col_reds if self.maps[r.inputs[0]] == FULL]
        col_scalar = [r for r in self.col_reds if self.maps[r.inputs[0]] == COL]
        # each column reduction's per-chunk partials are an array argument of their own (a
        # slice of the driver's scratch): LLVM cannot vectorise a loop updating several
        # regions of one array at distances it does not know
        part = {r: f"p{k}" for k, r in enumerate(col_full + col_scalar)}
        for r in col_full:
            x = self.need(r.inputs[0], J)
            slot = f"{part[r]}[c * C + j]"
            stores.append(self._accumulate(r.op, slot, x) + f"  {self._comment(r)}")
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
            I.lines.append(self._accumulate(r.op, slot, x) + f"  {self._comment(r)}")
        I.lines += i_stores

        I.lines = [ln for item in I.lines
                   for ln in (item.render() if isinstance(item, _Pass) else [item])]
        loops: list[str] = []
        if self.col_reds:
            loops += ["nch = min(R, %d)" % CHUNKS]
            for r in col_full + col_scalar:  # each reduction's partials start at its identity
                size = "nch * C" if r in col_full else "nch"
                init = "0.0" if r.op == "sum" else "-np.inf"
                loops += [f"for t in range({size}):",
                          f"    {part[r]}[t] = {init}  {self._comment(r)}"]
            loops += ["for c in range(nch):",
                     "    for i in range(c * R // nch, (c + 1) * R // nch):",
                     "        base = i * C",
                     *("        " + ln for ln in I.lines)]
            loops += self._combine(col_full, col_scalar, part, S)
        elif I.lines:
            loops += ["for i in range(R):", "    base = i * C", *("    " + ln for ln in I.lines)]
        body += S.lines + s_stores + loops  # S last: later passes hoist scalars into it
        self.partials = [("nch * C" if r in col_full else "nch") for r in part]
        params = (["R", "C", *ins, *outs] + list(part.values())
                  + (["rc"] if self.row_slots else [])
                  + (["kf"] if self.fconsts else []) + (["ki"] if self.iconsts else []))
        types = (["i64", "i64"] + [_ptr(v) for v in self.region.inputs]
                 + [_ptr(self.region.outputs[k]) for k in range(len(self.region.outputs))
                    if k not in self.inplace]
                 + ["f64*"] * len(part)
                 + ([f"{self._row_cache_dtype()}*"] if self.row_slots else [])
                 + (["f64*"] if self.fconsts else []) + (["i64*"] if self.iconsts else []))
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

    def _sum_chunks(self, r, first, slot, scope):
        """Lines combining reduction r's per-chunk partials in chunk order (`first` is chunk
        0's, `slot` chunk c's), the result bound in `scope`."""
        acc = self._new("acc")
        scope.names[r.out] = f"{_np(r.out.type.dtype)}({acc})"
        return [f"{acc} = {first}  {self._comment(r)}",
                "for c in range(1, nch):",
                "    " + self._accumulate(r.op, acc, slot)]

    def _combine(self, col_full, col_scalar, part, S):
        CS = _Scope("CS", S)
        lines = []
        for r in col_scalar:
            lines += self._sum_chunks(r, f"{part[r]}[0]", f"{part[r]}[c]", CS)
        for v, names in self.out_arg.items():
            if self.maps[v] == SCALAR and v in self.after_col:
                val = self.need(v, CS)
                CS.lines += [f"{o}[0] = {val}" for o in names]
        lines += CS.lines
        if col_full:
            CJ = _Scope("CJ", CS)
            head = []
            for r in col_full:
                head += self._sum_chunks(r, f"{part[r]}[j]", f"{part[r]}[c * C + j]", CJ)
            stores = []
            for v, names in self.out_arg.items():
                if self.maps[v] in (ROW, FULL) and v in self.after_col:
                    val = self.need(v, CJ)
                    stores += [f"{o}[j] = {val}" for o in names]
            lines += ["for j in range(C):", *("    " + ln for ln in head + CJ.lines + stores)]
        return lines
