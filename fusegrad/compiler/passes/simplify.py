"""Algebraic simplification: a table of local rewrite rules, one row per rule.

Each rule is `fn(node, rw) -> Var | None`: given a node (inputs already substituted) and the
Rewriter (to look at producers, constants, and to emit nodes), it returns a Var of exactly the
node's type that replaces it, or None when it does not apply. Rules fire on the ops listed in
their row; the first rule that returns a Var wins, and the pass manager runs the pass again until
nothing changes, so rules stay small and leave follow-up work (a broadcast of a broadcast, a dead
node) to the next round or to other passes.

Every rule checks shapes and dtypes: `x * 1 -> x` only when x already has the output's shape;
when the `1` broadcasts x up, x is broadcast instead (broadcast_to is a free view).

Results do not change, with these documented exceptions:
  * `x + 0 -> x` and `0 - x -> neg(x)` may flip the sign of a zero result (-0.0 + 0.0 is +0.0);
    the values compare equal. `x - 0` and `x * 1` are exact.
  * `sum(broadcast_to(x)) -> x * n` computes n copies of x as one product: exact for integers,
    for floats it differs from the summation only by the summation's own round-off (the
    product is the correctly rounded one).
  * `x * 0 -> 0` is done for integer dtypes only: for floats inf * 0 and nan * 0 are nan, and
    -x * 0 is -0.0, so the rule would change results.
stop_gradient is an identity here: passes run after autodiff has used it.
"""
from __future__ import annotations

import numpy as np

from ...ir import Graph, PRIMITIVES
from ...ir.dtypes import is_int
from ...ir.ops import prims_where
from ...ir.types import broadcast_shapes
from .rewrite import RewriteError, rewrite


def _as_output(node, rw, x):
    """`x` standing for node's output: itself, or broadcast up to the output's shape."""
    if x.dtype != node.out.dtype:
        return None
    if broadcast_shapes(x.shape, node.out.shape) != node.out.shape:
        return None
    return rw.broadcast_to(x, node.out.shape)


def _is(rw, v, value) -> bool:
    s = rw.splat(v)
    return s is not None and s == value


def _operand_of(rw, v, op):
    """The input of v's producer when that producer is `op`, else None."""
    n = rw.producer(v)
    return n.inputs[0] if n is not None and n.op == op else None


# ---- arithmetic identities -----------------------------------------------------------------

def _drop_identity(value):
    """Rule for a commutative op with identity `value`: x op value -> x, value op x -> x."""

    def rule(node, rw):
        a, b = node.inputs
        if _is(rw, b, value):
            return _as_output(node, rw, a)
        if _is(rw, a, value):
            return _as_output(node, rw, b)
        return None

    return rule


mul_by_one = _drop_identity(1)  # x * 1 -> x and 1 * x -> x
add_zero = _drop_identity(0)  # x + 0 -> x and 0 + x -> x


def mul_by_zero_int(node, rw):
    """x * 0 -> 0 for integer x only (for floats inf * 0 = nan, so it is not done)."""
    if not is_int(node.out.dtype):
        return None
    if _is(rw, node.inputs[0], 0) or _is(rw, node.inputs[1], 0):
        return rw.broadcast_to(rw.const(0, node.out.dtype), node.out.shape)
    return None


def sub_zero(node, rw):
    """x - 0 -> x."""
    a, b = node.inputs
    return _as_output(node, rw, a) if _is(rw, b, 0) else None


def zero_sub(node, rw):
    """0 - x -> neg(x)."""
    a, b = node.inputs
    if not _is(rw, a, 0):
        return None
    return _as_output(node, rw, rw.emit("neg", b))


def div_by_one(node, rw):
    """x / 1 -> x."""
    a, b = node.inputs
    return _as_output(node, rw, a) if _is(rw, b, 1) else None


def pow_one(node, rw):
    """x ** 1 -> x (IEEE pow(x, 1) is x exactly)."""
    a, b = node.inputs
    return _as_output(node, rw, a) if _is(rw, b, 1) else None


def neg_neg(node, rw):
    """neg(neg(x)) -> x."""
    return _operand_of(rw, node.inputs[0], "neg")


def sub_neg(node, rw):
    """x - neg(y) -> x + y (negation is exact, so this is bit for bit the same)."""
    a, b = node.inputs
    y = _operand_of(rw, b, "neg")
    return rw.emit("add", a, y) if y is not None else None


def add_neg(node, rw):
    """x + neg(y) -> x - y and neg(x) + y -> y - x."""
    a, b = node.inputs
    y = _operand_of(rw, b, "neg")
    if y is not None:
        return rw.emit("sub", a, y)
    x = _operand_of(rw, a, "neg")
    if x is not None:
        return rw.emit("sub", b, x)
    return None


def select_known(node, rw):
    """select(True, a, b) -> a, select(False, a, b) -> b, select(c, a, a) -> a."""
    c, a, b = node.inputs
    if a is b:
        return _as_output(node, rw, a)
    s = rw.splat(c)
    if s is None:
        return None
    return _as_output(node, rw, a if bool(s) else b)


def stop_gradient_identity(node, rw):
    """stop_gradient(x) -> x: autodiff is done by the time passes run."""
    return node.inputs[0]


def implicit_broadcast(node, rw):
    """op(broadcast_to(x, S), y) -> op(x, y) when implicit broadcasting gives the same shape.

    Binary, compare and select ops broadcast their operands anyway; the explicit broadcast node
    only costs a kernel input of the full size."""
    inputs = list(node.inputs)
    changed = False
    for i, v in enumerate(inputs):
        x = _operand_of(rw, v, "broadcast_to")
        if x is None:
            continue
        trial = inputs[:i] + [x] + inputs[i + 1:]
        if broadcast_shapes(*(t.shape for t in trial)) == node.out.shape:
            inputs, changed = trial, True
    return rw.emit(node.op, *inputs, **dict(node.attrs)) if changed else None


# ---- movement --------------------------------------------------------------------------------

def transpose_identity(node, rw):
    """transpose(x, (0, 1, ..)) -> x."""
    perm = node.attrs["perm"]
    return node.inputs[0] if tuple(perm) == tuple(range(len(perm))) else None


def transpose_transpose(node, rw):
    """transpose(transpose(x, p), q) -> transpose(x, p[q]) (or x if that is the identity)."""
    inner = rw.producer(node.inputs[0])
    if inner is None or inner.op != "transpose":
        return None
    p, q = inner.attrs["perm"], node.attrs["perm"]
    perm = tuple(p[j] for j in q)
    x = inner.inputs[0]
    return x if perm == tuple(range(len(perm))) else rw.emit("transpose", x, perm=perm)


def transpose_as_reshape(node, rw):
    """A transpose that keeps the order of the axes longer than 1 only moves unit axes: it is a
    reshape, which needs no data movement (e.g. (n, 1) -> (1, n))."""
    x = node.inputs[0]
    moved = [p for p in node.attrs["perm"] if x.shape[p] != 1]
    if moved != sorted(moved) or tuple(node.attrs["perm"]) == tuple(range(x.type.ndim)):
        return None
    return rw.emit("reshape", x, shape=node.out.shape)


def reshape_same(node, rw):
    """reshape(x, x.shape) -> x."""
    x = node.inputs[0]
    return x if x.shape == node.out.shape else None


def reshape_reshape(node, rw):
    """reshape(reshape(x, s), t) -> reshape(x, t) (or x when t is x's shape)."""
    x = _operand_of(rw, node.inputs[0], "reshape")
    return rw.reshape(x, node.out.shape) if x is not None else None


def reshape_splat(node, rw):
    """reshape(broadcast_to(s, S), T) with s of one element -> broadcast_to(s, T): every element
    is s, so any shape of it is a broadcast."""
    s = _operand_of(rw, node.inputs[0], "broadcast_to")
    if s is None or s.type.size != 1:
        return None
    if s.type.ndim > node.out.type.ndim:
        s = rw.reshape(s, ())
    return rw.broadcast_to(s, node.out.shape)


def broadcast_same(node, rw):
    """broadcast_to(x, x.shape) -> x."""
    x = node.inputs[0]
    return x if x.shape == node.out.shape else None


def broadcast_broadcast(node, rw):
    """broadcast_to(broadcast_to(x, S), T) -> broadcast_to(x, T)."""
    x = _operand_of(rw, node.inputs[0], "broadcast_to")
    return rw.broadcast_to(x, node.out.shape) if x is not None else None


# ---- casts -----------------------------------------------------------------------------------

# (from, to) pairs where every value survives the cast exactly
LOSSLESS_CASTS = frozenset(
    [("bool", t) for t in ("bool", "int32", "int64", "float32", "float64")]
    + [("int32", "int32"), ("int32", "int64"), ("int32", "float64"), ("int64", "int64"),
       ("float32", "float32"), ("float32", "float64"), ("float64", "float64")]
)


def cast_same(node, rw):
    """cast(x, x.dtype) -> x."""
    x = node.inputs[0]
    return x if x.dtype == node.out.dtype else None


def cast_cast(node, rw):
    """cast(cast(x, A), B) -> cast(x, B) when x -> A is lossless (A holds x's value exactly, so
    casting that value to B is casting x to B); -> x when B is x's dtype."""
    inner = rw.producer(node.inputs[0])
    if inner is None or inner.op != "cast":
        return None
    x = inner.inputs[0]
    if (x.dtype, inner.out.dtype) not in LOSSLESS_CASTS:
        return None
    return x if x.dtype == node.out.dtype else rw.emit("cast", x, dtype=node.out.dtype)


# ---- reductions ------------------------------------------------------------------------------

def reduce_unit_axes(node, rw):
    """sum/max over no axes, or only over axes of length 1 -> x, reshaped to the output."""
    x = node.inputs[0]
    if any(x.shape[a] != 1 for a in node.attrs["axes"]):
        return None
    return rw.reshape(x, node.out.shape)


def sum_of_broadcast(node, rw):
    """sum(broadcast_to(x, S), axes) -> sum over x's own axes, times the number of copies.

    E.g. sum(broadcast_to(s, (n,))) = s * n. Axes the broadcast created contribute a factor of
    their length; the other summed axes are summed on x before it is broadcast."""
    src = rw.producer(node.inputs[0])
    if src is None or src.op != "broadcast_to":
        return None
    x, shape = src.inputs[0], node.inputs[0].shape
    axes, keepdims = set(node.attrs["axes"]), node.attrs["keepdims"]
    padded = (1,) * (len(shape) - x.type.ndim) + x.shape
    copied = {i for i in axes if padded[i] == 1 and shape[i] != 1}
    if not copied:
        return None
    factor = int(np.prod([shape[i] for i in copied], dtype=np.int64))
    x = rw.reshape(x, padded)
    rest = tuple(sorted(axes - copied))
    if rest:
        x = rw.emit("sum", x, axes=rest, keepdims=True)
    x = rw.emit("mul", x, rw.const(factor, x.dtype))
    if keepdims:
        return rw.broadcast_to(x, node.out.shape)
    x = rw.reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))
    return rw.broadcast_to(x, node.out.shape)


# ---- zero padding: the gradient of slices ----------------------------------------------------

def _zero_pad(rw, v):
    """(x, pads) when v = pad(x, pads) with value 0, else None."""
    n = rw.producer(v)
    if n is None or n.op != "pad" or n.attrs["value"] != 0:
        return None
    return n.inputs[0], tuple(tuple(p) for p in n.attrs["pads"])


def pad_nothing(node, rw):
    """pad(x, all (0, 0)) -> x."""
    return node.inputs[0] if all(lo == hi == 0 for lo, hi in node.attrs["pads"]) else None


def add_adjacent_pads(node, rw):
    """pad(a) + pad(b), zero pads along one axis placing a just before b -> pad(concatenate(
    [a, b])): the gradient of slicing an array into pieces (an LSTM's four gates) is the sum of
    each piece's gradient padded back with zeros; as one concatenation it is copies without the
    zero fills and the sum. (Adding a zero may flip the sign of a zero, as x + 0 -> x.)"""
    pa, pb = (_zero_pad(rw, v) for v in node.inputs)
    if pa is None or pb is None or pa[0].dtype != node.out.dtype:
        return None
    (a, pads_a), (b, pads_b) = pa, pb
    if len(pads_a) != len(pads_b):
        return None
    axes = [k for k, (x, y) in enumerate(zip(pads_a, pads_b)) if x != (0, 0) or y != (0, 0)]
    if len(axes) != 1:
        return None
    k = axes[0]
    (lo_a, _), (lo_b, _) = pads_a[k], pads_b[k]
    if lo_b < lo_a:  # b's piece comes first
        (a, pads_a, lo_a), (b, pads_b, lo_b) = (b, pads_b, lo_b), (a, pads_a, lo_a)
    if lo_a + a.shape[k] != lo_b:  # not adjacent
        return None
    joined = rw.emit("concatenate", a, b, axis=k)
    pads = tuple((lo_a, pads_b[k][1]) if j == k else (0, 0) for j in range(len(pads_a)))
    value = rw.producer(node.inputs[0]).attrs["value"]  # a zero of the pads' own kind
    return rw.emit("pad", joined, pads=pads, value=value)


def concat_concat(node, rw):
    """concatenate(a, concatenate(b, c), d) along one axis -> concatenate(a, b, c, d)."""
    axis = node.attrs["axis"]
    parts, flat = [], False
    for v in node.inputs:
        inner = rw.producer(v)
        if inner is not None and inner.op == "concatenate" and inner.attrs["axis"] == axis:
            parts += inner.inputs
            flat = True
        else:
            parts.append(v)
    return rw.emit("concatenate", *parts, axis=axis) if flat else None


# ---- the table -------------------------------------------------------------------------------

# (name, ops it applies to, rule); tried in order, the first Var returned wins
SIMPLIFY_RULES = (
    ("mul_by_one", ("mul",), mul_by_one),
    ("mul_by_zero_int", ("mul",), mul_by_zero_int),
    ("add_zero", ("add",), add_zero),
    ("sub_zero", ("sub",), sub_zero),
    ("zero_sub", ("sub",), zero_sub),
    ("div_by_one", ("div",), div_by_one),
    ("pow_one", ("pow",), pow_one),
    ("neg_neg", ("neg",), neg_neg),
    ("sub_neg", ("sub",), sub_neg),
    ("add_neg", ("add",), add_neg),
    ("select_known", ("select",), select_known),
    ("stop_gradient_identity", ("stop_gradient",), stop_gradient_identity),
    ("transpose_identity", ("transpose",), transpose_identity),
    ("transpose_transpose", ("transpose",), transpose_transpose),
    ("transpose_as_reshape", ("transpose",), transpose_as_reshape),
    ("reshape_same", ("reshape",), reshape_same),
    ("reshape_reshape", ("reshape",), reshape_reshape),
    ("reshape_splat", ("reshape",), reshape_splat),
    ("broadcast_same", ("broadcast_to",), broadcast_same),
    ("broadcast_broadcast", ("broadcast_to",), broadcast_broadcast),
    ("cast_same", ("cast",), cast_same),
    ("cast_cast", ("cast",), cast_cast),
    ("reduce_unit_axes", prims_where(loop="reduce"), reduce_unit_axes),
    ("sum_of_broadcast", ("sum",), sum_of_broadcast),
    ("pad_nothing", ("pad",), pad_nothing),
    ("add_adjacent_pads", ("add",), add_adjacent_pads),
    ("concat_concat", ("concatenate",), concat_concat),
    ("implicit_broadcast",
     tuple(p.name for p in PRIMITIVES.values() if p.kind in ("binary", "compare", "select")),
     implicit_broadcast),
)

_BY_OP: dict[str, list] = {}
for _name, _ops, _fn in SIMPLIFY_RULES:
    for _op in _ops:
        _BY_OP.setdefault(_op, []).append((_name, _fn))


def simplify(graph: Graph, rules=None) -> Graph:
    """Apply the first matching rule of SIMPLIFY_RULES (or `rules`) to every node, in one sweep
    (the same Graph object when no rule fired)."""
    by_op = _BY_OP
    if rules is not None:
        by_op = {}
        for name, ops, fn in rules:
            for op in ops:
                by_op.setdefault(op, []).append((name, fn))

    def rule(node, rw):
        for name, fn in by_op.get(node.op, ()):
            out = fn(node, rw)
            if out is not None:
                if out.type != node.out.type:
                    raise RewriteError(f"simplify rule {name} replaced {node.op} of type "
                                       f"{node.out.type} by a value of type {out.type}")
                return out
        return None

    return rewrite(graph, rule, "simplify")
