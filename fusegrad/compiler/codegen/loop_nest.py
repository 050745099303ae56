"""The loop nest of one fused loop kernel, shared by the CPU and CUDA generators.

A loop kernel covers a 2-D space (R, C) (passes/loopspace.py): every value has an index map
(FULL: one element per (i, j), COL: one per row i, ROW: one per column j, SCALAR: one) and so a
loop level where it is computed:

    S    once per call (or per thread)        I    once per row
    J    once per element of a row            CS   once, after the column reductions' partials
    CJ   once per column, after them               are combined (the "combine pass")

`LoopNest.need(v, scope)` returns the local holding v, emitting its load or computation at v's
own level first (so a per-row value is computed once per row, not once per element), with a
comment naming its IR value and the user's source line. What differs between backends are hooks
and the loop skeleton around the lines `need` emits:

    EXPR        elementwise primitive -> scalar expression (cpu_expr.CPU_EXPR, cuda_expr)
    CONST_REF   how the function reads its k-th float and int constant argument
    reuse()     a value an earlier pass over the row computed (the CPU's row cache)
    one_column  how the maps are read when there is one column (the CPU folds them)

The skeletons stay with the backends: sequential loops and row chunks on the CPU (cpu_loops.py);
blocks, threads and reduction trees on CUDA (cuda_loops.py).
"""
from __future__ import annotations

from ...ir.ops import PRIMITIVES
from ...ir.printer import short_loc
from ..passes.loopspace import COL, FULL, ROW, SCALAR, Space, iota_index, infer_maps
from .common import np_type
from .cpu_expr import literal



def downstream(nodes, sources) -> set:
    """`sources` and every value computed from them by `nodes` (in definition order)."""
    tainted = set(sources)
    for n in nodes:
        if any(v in tainted for v in n.inputs):
            tainted.update(n.outputs)
    return tainted


class Scope:
    """Locals defined at one level of a kernel's loop nest, and the lines that define them.

    A scope may stand for several levels at once: CUDA's flat elementwise body computes
    per-row and per-element values alike (I and J)."""

    def __init__(self, levels, parent=None):
        # one level by name ("CS" is one level, not two letters) or several
        self.levels = frozenset({levels} if isinstance(levels, str) else levels)
        self.parent = parent
        self.names: dict = {}
        self.lines: list = []

    def lookup(self, v):
        s = self
        while s is not None:
            if v in s.names:
                return s.names[v]
            s = s.parent
        return None

    def at(self, levels):
        """This scope or the nearest enclosing one at any of `levels` (None if none is)."""
        s = self
        while s is not None and s.levels.isdisjoint(levels):
            s = s.parent
        return s


class Constants:
    """The scalar constants one generated function takes as arguments (float64 and int64),
    with the nodes they come from: values are arguments, not literals, so a constant such as
    1/batch does not make a new batch size a new kernel."""

    def __init__(self):
        self.floats: list = []
        self.ints: list = []
        self.float_nodes: list = []
        self.int_nodes: list = []


class LoopNest:
    """One loop kernel node's values, maps and levels, and the code computing each value."""

    EXPR: dict = {}  # elementwise primitive -> fn(args, node, dtype, exact_math) -> str
    CONST_REF = ("kf[{k}]", "ki[{k}]")  # the k-th float / int constant argument

    def __init__(self, kernel, names=None, structural=False, arg=None, out_arg=None,
                 counter=None, exact_math=False):
        self.kernel = kernel
        self.region = kernel.region
        self.space = Space(tuple(kernel.attrs["space"]), kernel.attrs["split"])
        maps, self.reductions = infer_maps(self.region.nodes, self.space)
        self.maps = self.one_column(maps)
        self.names = names or {}
        # structural: comments without source lines, shapes or constant values, so that the
        # text is the same for every batch size and every model that has this structure
        self.structural = structural
        self.exact_math = exact_math
        self.producer = {v: n for n in self.region.nodes for v in n.outputs}
        self.row_reds = [n for n in self.region.nodes if self.reductions.get(n) == "row"]
        self.col_reds = [n for n in self.region.nodes if self.reductions.get(n) == "col"]
        self.col_full = [r for r in self.col_reds if self.maps[r.inputs[0]] == FULL]
        self.col_scalar = [r for r in self.col_reds if self.maps[r.inputs[0]] == COL]
        self.after_col = downstream(self.region.nodes, [n.out for n in self.col_reds])
        # with one row (R == 1) a per-row value is a scalar: those computed from a row
        # reduction live in the row loop
        self.after_row = downstream(self.region.nodes, [n.out for n in self.row_reds])
        self.arg = arg or {v: f"a{k}" for k, v in enumerate(self.region.inputs)}
        if out_arg is None:
            out_arg = {}
            for k, v in enumerate(self.region.outputs):
                out_arg.setdefault(v, []).append(f"o{k}")
        self.out_arg = out_arg  # output value -> the arrays it is stored to
        self._counter = counter if counter is not None else [0]
        self.consts = Constants()  # of the function being generated
        self.full_index = "base + j"  # how the function being generated indexes a FULL value

    # ---- hooks ----
    def one_column(self, maps) -> dict:
        return maps

    def reuse(self, v, node, scope):
        """The local holding v if the backend has it from earlier work, else None."""
        return None

    # ---- names and comments ----
    def _shown(self, v) -> str:
        return self.names.get(v, "%?")

    def _new(self, prefix="t") -> str:
        self._counter[0] += 1
        return f"{prefix}{self._counter[0]}"

    def _comment(self, node) -> str:
        outs = ", ".join(self._shown(v) for v in node.outputs)
        ins = ", ".join(self._shown(v) for v in node.inputs)
        loc = "" if self.structural else short_loc(node.loc)
        return f"# {outs} = {node.op} {ins}" + (f"  ({loc})" if loc else "")

    # ---- values ----
    def _level(self, v) -> set:
        """The loop levels where v can be computed: SCALAR once, COL per row, FULL per (i, j),
        ROW in any loop over j; values after a column reduction only in the combine pass."""
        m = self.maps[v]
        if v in self.after_col:
            return {"CS"} if m == SCALAR else {"CJ"}
        if m == SCALAR and v in self.after_row:
            return {"I"}
        return {SCALAR: {"S"}, COL: {"I"}, FULL: {"J"}, ROW: {"J", "CJ"}}[m]

    def _load(self, v, scope) -> str:
        if scope.levels & {"S", "CS"}:
            index = "0"
        elif "CJ" in scope.levels:
            index = "j"
        else:
            index = {SCALAR: "0", COL: "i", ROW: "j", FULL: self.full_index}[self.maps[v]]
        return f"{self.arg[v]}[{index}]"

    def need(self, v, scope) -> str:
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
            target.lines.append(f"{name} = {self._load(v, target)}  # {self._shown(v)} {what}")
            target.names[v] = name
            return name
        node = self.producer[v]
        dtype = v.type.dtype
        reused = self.reuse(v, node, target)
        if reused is not None:
            return reused
        if node.op == "constant":
            name = self._constant(node, target)
        elif node.op == "iota":
            name = f"{np_type(dtype)}({iota_index(node, self.maps[v], self.space)})"
        elif node in self.reductions:
            raise AssertionError(f"reduction result {v} used before it is computed")
        else:
            args = [self.need(u, target) for u in node.inputs]
            expr = self.EXPR[node.op](args, node, dtype, self.exact_math)
            if PRIMITIVES[node.op].pass_through:  # no code: the maps index the operand
                name = expr
            else:
                name = self._new()
                target.lines.append(f"{name} = {expr}  {self._comment(node)}")
        target.names[v] = name
        return name

    def _constant(self, node, scope) -> str:
        """A constant, read once per call from the function's constant arguments."""
        v = node.out
        value = node.attrs["value"].array.reshape(-1)[0]
        dtype = v.type.dtype
        c = self.consts
        float_ref, int_ref = self.CONST_REF
        if dtype.startswith("float"):
            load = f"{np_type(dtype)}({float_ref.format(k=len(c.floats))})"
            c.floats.append(float(value))
            c.float_nodes.append(node)
        else:
            ref = int_ref.format(k=len(c.ints))
            load = f"({ref} != 0)" if dtype == "bool" else f"{np_type(dtype)}({ref})"
            c.ints.append(int(value))
            c.int_nodes.append(node)
        name = self._new("k")
        root = scope.at({"S"})
        shown = "" if self.structural else " " + literal(value, dtype)
        root.lines.append(f"{name} = {load}  # {self._shown(v)} = constant{shown}")
        root.names[v] = name
        return name

    # ---- reductions ----
    @staticmethod
    def reduce_init(node) -> str:
        """The identity a reduction starts from."""
        dtype = node.out.type.dtype
        if node.op == "sum":
            return literal(0, dtype)
        return literal(float("-inf"), dtype) if dtype.startswith("float") else \
            literal(-(2 ** 31) if dtype == "int32" else -(2 ** 63), dtype)

    @staticmethod
    def partial_init(node) -> str:
        """The identity of a float64 column partial."""
        return "0.0" if node.op == "sum" else "-np.inf"

    @staticmethod
    def accumulate(op, acc, x) -> str:
        if op == "sum":
            return f"{acc} += {x}"
        return f"{acc} = {x} if ({x} > {acc} or {x} != {x}) else {acc}"  # NaN wins, as NumPy

    def sum_chunks(self, r, first, slot, scope) -> list:
        """Lines combining column reduction r's per-chunk partials in chunk order (`first` is
        chunk 0's, `slot` chunk c's), the result bound in `scope`: the order is fixed, so the
        result never depends on how many threads ran."""
        acc = self._new("acc")
        scope.names[r.out] = f"{np_type(r.out.type.dtype)}({acc})"
        return [f"{acc} = {first}  {self._comment(r)}",
                "for c in range(1, nch):",
                "    " + self.accumulate(r.op, acc, slot)]


__all__ = ["COL", "FULL", "ROW", "SCALAR", "Constants", "LoopNest", "Scope", "downstream"]
