"""The primitive registry: one row per primitive with its kind, its shape/dtype rule and the
properties the compiler asks of it (float-only, commutative, cost, loop role, ...).

Each property is stated here, in the primitive's row, and nowhere else: passes and emitters ask
the row (`PRIMITIVES[op].commutative`) or query the registry (`prims_where(loop="reduce")`)
instead of keeping sets of names. Every other per-primitive table is keyed by the names
registered here: the interpreter (ir/interpret.py), the VJP rules (compiler/vjp_rules.py), the
CPU and CUDA emitters (codegen/cpu_expr.py, cuda_expr.py, cpu_movement.py); which rows each one
needs follows from these properties, and tests/test_primitive_tables.py checks that every table
has them.

A shape rule takes the input TensorTypes and the node's Attrs and returns the output TensorType,
raising ShapeError (bad shapes) or TypeError (bad dtypes) with a message naming the op.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

from .dtypes import FLOAT_DTYPES, as_dtype, is_bool, is_float, is_int
from .types import ShapeError, TensorType, broadcast_shapes, normalize_axes

# Kinds group primitives for passes and emitters:
#   unary / binary / compare / select / cast   elementwise (binary ops broadcast implicitly)
#   reduce                                      sum, max, argmax over axes
#   movement                                    reshape, transpose, broadcast_to, slice, pad, concat
#   gather                                      gather / scatter_add along an axis, check_index
#                                               (the primitives whose indices can be out of range)
#   matmul                                      (batched) matrix product with transpose flags
#   window                                      unfold / fold (im2col / col2im)
#   source                                      constant, iota, random_uniform (no tensor inputs)
#   collective                                  all_reduce: a sum over the processes of a job (MPI),
#                                               which every process must reach in the same order
ELEMENTWISE_KINDS = ("unary", "binary", "compare", "select", "cast")

# Roles in a loop kernel (Primitive.loop): how a node computes its values inside one loop nest
# over a 2-D space (passes/loopspace.py, codegen/cpu_loops.py, cuda_loops.py).
#   map      each output element from the operand elements at the same (broadcast) index:
#            one scalar expression per element (the CPU_EXPR / CUDA_EXPR rows)
#   view     the operand's elements in the same order (reshape): the same linear index in a
#            loop, and outside loops a view of the operand's storage (no copy)
#   reduce   a reduction loop over i or j (sum, max)
#   source   made in the loop from the loop indices or a literal (iota; scalar constants)
#   None     never inside a loop kernel
LOOP_ROLES = ("map", "view", "reduce", "source", None)

# Kernels a lone node forms where it does not join a loop kernel (Primitive.lone_kernel):
#   opaque   one library call or a few (codegen/cpu_movement.py's MOVEMENT, shared by CPU and CUDA)
#   gemm     a GEMM call (the backends' emit_gemm)
#   collective   a call every process of a job makes together (all_reduce: the backends'
#            `collective` hook, after the memory plan placed its operands in one region)
#   None     always in a loop kernel (elementwise: prepare_for_fusion makes every one
#            loopable), or no kernel at all (a constant is data, passed to the program)
#   scan     a loop over a region (control flow): the backends run the region's own program
#   collective  an all_reduce over the job's processes (the backends' collective hook)
LONE_KERNELS = ("opaque", "gemm", "scan", "collective", None)

TRANSCENDENTAL = 10  # the cost model's price of a libm call, in flops per element


@dataclass(frozen=True)
class Primitive:
    name: str
    kind: str
    arity: int | None  # None: variadic
    rule: Callable
    attrs: tuple[str, ...] = ()
    doc: str = ""
    # ---- properties (defaults by kind: _KIND_DEFAULTS; a row may override them) ----
    float_only: bool = False  # needs float inputs: front ends promote integers to float64 first
    commutative: bool = False  # op(a, b) == op(b, a) bit for bit: CSE orders the operands
    cost: int = 1  # flops per output element (per input element for reductions; matmul: per
    #                inner-product term) in the fusion cost model shown in dumps
    loop: str | None = None  # role in a loop kernel: LOOP_ROLES
    pass_through: bool = False  # no code in a loop (the index maps address the operand) and
    #                             no new values: broadcast_to, reshape, stop_gradient
    lone_kernel: str | None = None  # the kernel a lone node forms outside loops: LONE_KERNELS
    recomputable: bool = False  # remat may clone it into the backward part (cheap, no state)
    foldable: bool = True  # constant folding may evaluate it at compile time
    differentiable: bool = True  # False: its VJP passes no gradient to any input
    ordered: bool = False  # a side effect every process must perform in the same order (a
    #                        collective): never merged (CSE), removed (DCE), folded, recomputed,
    #                        fused with anything, or moved past another ordered node

    @property
    def elementwise(self) -> bool:
        return self.kind in ELEMENTWISE_KINDS


PROPERTIES = tuple(f.name for f in fields(Primitive)
                   if f.name not in ("name", "kind", "arity", "rule", "attrs", "doc"))

# What a kind implies unless a row says otherwise. Elementwise primitives run as per-element
# expressions in loops and are cheap to recompute; the others run as library calls on their own.
_ELEMENTWISE = dict(loop="map", recomputable=True)
_KIND_DEFAULTS = {
    "unary": _ELEMENTWISE,
    "binary": _ELEMENTWISE,
    "compare": dict(_ELEMENTWISE, differentiable=False),  # bool results carry no gradient
    "select": _ELEMENTWISE,
    "cast": _ELEMENTWISE,
    "reduce": dict(lone_kernel="opaque"),
    "movement": dict(lone_kernel="opaque"),
    "gather": dict(lone_kernel="opaque"),
    "matmul": dict(lone_kernel="gemm"),
    "window": dict(lone_kernel="opaque"),
    # folding reads constants and iotas, it has nothing to fold them into; random_uniform's
    # bits are the backend's (the interpreter's float64 mode draws wider numbers)
    "source": dict(lone_kernel="opaque", foldable=False, differentiable=False),
    # control flow: a node with a region (its body) that a backend runs as a loop
    "control": dict(lone_kernel="scan", foldable=False),
    "collective": dict(lone_kernel="collective", foldable=False, ordered=True),
}

PRIMITIVES: dict[str, Primitive] = {}


def register(name, kind, arity, attrs=(), doc="", **props):
    """Decorator: register `name` with its shape rule; `props` override the kind's defaults."""
    unknown = set(props) - set(PROPERTIES)
    if unknown:
        raise TypeError(f"{name}: unknown primitive properties {sorted(unknown)}")
    props = {**_KIND_DEFAULTS[kind], **props}
    if props.get("loop") not in LOOP_ROLES or props.get("lone_kernel") not in LONE_KERNELS:
        raise ValueError(f"{name}: bad loop role or lone kernel in {props}")

    def wrap(rule):
        PRIMITIVES[name] = Primitive(name, kind, arity, rule, tuple(attrs), doc, **props)
        return rule

    return wrap


def prims_where(**props) -> tuple[str, ...]:
    """Names of the primitives whose fields equal all of `props` (kind or properties), in
    registration order: prims_where(loop="reduce") == ("sum", "max")."""
    unknown = set(props) - set(PROPERTIES) - {"kind", "arity"}
    if unknown:
        raise TypeError(f"prims_where: unknown primitive properties {sorted(unknown)}")
    return tuple(p.name for p in PRIMITIVES.values()
                 if all(getattr(p, k) == v for k, v in props.items()))


def infer_type(op: str, in_types, attrs) -> TensorType:
    """Run `op`'s shape rule; the single entry point used by builders and the verifier."""
    prim = PRIMITIVES.get(op)
    if prim is None:
        raise TypeError(f"unknown primitive {op!r}")
    if prim.arity is not None and len(in_types) != prim.arity:
        raise TypeError(f"{op} takes {prim.arity} inputs, got {len(in_types)}")
    missing = [a for a in prim.attrs if a not in attrs]
    if missing:
        raise TypeError(f"{op} needs attributes {missing}")
    return prim.rule(tuple(in_types), attrs)


# ---------------------------------------------------------------------------------------------
# helpers


def _need(cond, op, what):
    if not cond:
        raise TypeError(f"{op}: {what}")


def _same_dtype(op, types):
    dts = {t.dtype for t in types}
    _need(len(dts) == 1, op, f"inputs must share one dtype, got {', '.join(str(t) for t in types)}")
    return dts.pop()


# ---------------------------------------------------------------------------------------------
# elementwise

def _unary(name, float_only=False, **props):
    @register(name, "unary", 1, float_only=float_only, **props)
    def rule(ts, attrs, _name=name):
        if float_only:
            _need(is_float(ts[0].dtype), _name,
                  f"needs a float input, got {ts[0]} (cast it first)")
        else:
            _need(not is_bool(ts[0].dtype), _name, f"needs a numeric input, got {ts[0]}")
        return ts[0]


_unary("exp", float_only=True, cost=TRANSCENDENTAL)
_unary("log", float_only=True, cost=TRANSCENDENTAL)
_unary("log1p", float_only=True, cost=TRANSCENDENTAL)
_unary("sqrt", float_only=True)
_unary("rsqrt", float_only=True)
_unary("tanh", float_only=True, cost=TRANSCENDENTAL)
_unary("sigmoid", float_only=True, cost=TRANSCENDENTAL)
_unary("sin", float_only=True, cost=TRANSCENDENTAL)
_unary("cos", float_only=True, cost=TRANSCENDENTAL)
_unary("erf", float_only=True, cost=TRANSCENDENTAL)
_unary("reciprocal", float_only=True)
_unary("neg")
_unary("abs")
_unary("sign", differentiable=False)  # piecewise constant: zero gradient almost everywhere


@register("stop_gradient", "unary", 1, doc="identity whose gradient is zero",
          pass_through=True, cost=0, differentiable=False)
def _stop_gradient(ts, attrs):
    return ts[0]


def _binary(name, float_only=False, **props):
    @register(name, "binary", 2, float_only=float_only, **props)
    def rule(ts, attrs, _name=name):
        dt = _same_dtype(_name, ts)
        _need(not is_bool(dt), _name, f"needs numeric inputs, got {ts[0]} and {ts[1]}")
        if float_only:
            _need(is_float(dt), _name, f"needs float inputs, got {ts[0]} and {ts[1]}")
        return TensorType(dt, broadcast_shapes(ts[0].shape, ts[1].shape, op=_name))


def _compare(name, **props):
    @register(name, "compare", 2, **props)
    def rule(ts, attrs, _name=name):
        _same_dtype(_name, ts)
        return TensorType("bool", broadcast_shapes(ts[0].shape, ts[1].shape, op=_name))


# IEEE addition and multiplication commute bit for bit; maximum/minimum do not (which zero or
# NaN they return depends on the order), nor do the ordered comparisons
_binary("add", commutative=True)
_binary("sub")
_binary("mul", commutative=True)
_binary("div", float_only=True)
_binary("pow", float_only=True, cost=TRANSCENDENTAL)
_binary("maximum")
_binary("minimum")
_compare("eq", commutative=True)
_compare("ne", commutative=True)
_compare("lt")
_compare("le")
_compare("gt")
_compare("ge")


@register("select", "select", 3, doc="where(cond, a, b)")
def _select(ts, attrs):
    c, a, b = ts
    _need(is_bool(c.dtype), "select", f"condition must be bool, got {c}")
    dt = _same_dtype("select", (a, b))
    return TensorType(dt, broadcast_shapes(c.shape, a.shape, b.shape, op="select"))


@register("cast", "cast", 1, attrs=("dtype",))
def _cast(ts, attrs):
    return TensorType(as_dtype(attrs["dtype"]), ts[0].shape)


# ---------------------------------------------------------------------------------------------
# reductions


def _reduce_shape(t, attrs, op):
    axes = normalize_axes(attrs["axes"], t.ndim, op)
    _need(tuple(attrs["axes"]) == axes, op, f"axes must be normalised (sorted, non-negative): "
          f"{attrs['axes']}")
    if attrs["keepdims"]:
        return tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    return tuple(d for i, d in enumerate(t.shape) if i not in axes)


@register("sum", "reduce", 1, attrs=("axes", "keepdims"), loop="reduce")
def _sum(ts, attrs):
    _need(not is_bool(ts[0].dtype), "sum", f"cast bool to a number before summing ({ts[0]})")
    return ts[0].with_shape(_reduce_shape(ts[0], attrs, "sum"))


@register("max", "reduce", 1, attrs=("axes", "keepdims"), loop="reduce")
def _max(ts, attrs):
    _need(not is_bool(ts[0].dtype), "max", f"needs a numeric input, got {ts[0]}")
    shape = _reduce_shape(ts[0], attrs, "max")  # validates the axes before they index the shape
    for a in attrs["axes"]:
        if ts[0].shape[a] == 0:
            raise ShapeError(f"max: zero-size axis {a} in {ts[0]} has no maximum")
    return ts[0].with_shape(shape)


@register("argmax", "reduce", 1, attrs=("axis",), doc="index of the first maximum along axis",
          differentiable=False)  # an integer index
def _argmax(ts, attrs):
    t = ts[0]
    (axis,) = normalize_axes(attrs["axis"], t.ndim, "argmax")
    _need(attrs["axis"] == axis, "argmax", "axis must be normalised (non-negative)")
    return TensorType("int64", t.shape[:axis] + t.shape[axis + 1:])


# ---------------------------------------------------------------------------------------------
# movement


@register("reshape", "movement", 1, attrs=("shape",), loop="view", pass_through=True, cost=0,
          recomputable=True)
def _reshape(ts, attrs):
    shape = tuple(attrs["shape"])
    new = TensorType(ts[0].dtype, shape)
    if new.size != ts[0].size:
        raise ShapeError(f"reshape: cannot reshape {ts[0]} ({ts[0].size} elements) to {shape}")
    return new


@register("transpose", "movement", 1, attrs=("perm",))
def _transpose(ts, attrs):
    perm = tuple(attrs["perm"])
    if sorted(perm) != list(range(ts[0].ndim)):
        raise ShapeError(f"transpose: {perm} is not a permutation of the axes of {ts[0]}")
    return ts[0].with_shape(tuple(ts[0].shape[p] for p in perm))


# a free view inside loops: folding it into a materialised constant would only cost memory
@register("broadcast_to", "movement", 1, attrs=("shape",), loop="map", pass_through=True, cost=0,
          recomputable=True, foldable=False)
def _broadcast_to(ts, attrs):
    shape = tuple(attrs["shape"])
    if broadcast_shapes(ts[0].shape, shape, op="broadcast_to") != shape:
        raise ShapeError(f"broadcast_to: cannot broadcast {ts[0]} to {shape}")
    return ts[0].with_shape(shape)


@register("slice", "movement", 1, attrs=("starts", "steps", "sizes"),
          doc="out[i] = x[start + i*step] per axis; steps may be negative, never zero")
def _slice(ts, attrs):
    t = ts[0]
    starts, steps, sizes = attrs["starts"], attrs["steps"], attrs["sizes"]
    if not len(starts) == len(steps) == len(sizes) == t.ndim:
        raise ShapeError(f"slice: needs one (start, step, size) per axis of {t}")
    for ax, (st, sp, sz, d) in enumerate(zip(starts, steps, sizes, t.shape)):
        if sp == 0 or sz < 0:
            raise ShapeError(f"slice: step 0 or negative size on axis {ax}")
        if sz and not (0 <= st < d and 0 <= st + (sz - 1) * sp < d):
            raise ShapeError(f"slice: axis {ax} reads outside [0, {d}) of {t}")
    return t.with_shape(tuple(sizes))


@register("pad", "movement", 1, attrs=("pads", "value"), doc="constant padding, (lo, hi) per axis")
def _pad(ts, attrs):
    t = ts[0]
    pads = attrs["pads"]
    if len(pads) != t.ndim or any(lo < 0 or hi < 0 for lo, hi in pads):
        raise ShapeError(f"pad: needs non-negative (lo, hi) per axis of {t}, got {pads}")
    return t.with_shape(tuple(d + lo + hi for d, (lo, hi) in zip(t.shape, pads)))


@register("concatenate", "movement", None, attrs=("axis",))
def _concatenate(ts, attrs):
    _need(len(ts) >= 1, "concatenate", "needs at least one input")
    axis = attrs["axis"]
    dt = _same_dtype("concatenate", ts)
    first = ts[0].shape
    _need(0 <= axis < len(first), "concatenate", f"axis {axis} out of range for {ts[0]}")
    for t in ts[1:]:
        if len(t.shape) != len(first) or any(
            a != b for i, (a, b) in enumerate(zip(first, t.shape)) if i != axis
        ):
            raise ShapeError(
                f"concatenate: shapes {', '.join(str(x.shape) for x in ts)} differ off axis {axis}"
            )
    size = sum(t.shape[axis] for t in ts)
    return TensorType(dt, first[:axis] + (size,) + first[axis + 1:])


# ---------------------------------------------------------------------------------------------
# gather / scatter


@register("gather", "gather", 2, attrs=("axis",), doc="np.take(x, indices, axis)")
def _gather(ts, attrs):
    x, idx = ts
    axis = attrs["axis"]
    _need(is_int(idx.dtype), "gather", f"indices must be integers, got {idx}")
    _need(0 <= axis < x.ndim, "gather", f"axis {axis} out of range for {x}")
    return x.with_shape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


@register("check_index", "gather", 1, attrs=("size",),
          doc="the indices themselves, checked to lie in [0, size): class labels",
          differentiable=False)
def _check_index(ts, attrs):
    (idx,) = ts
    _need(is_int(idx.dtype), "check_index", f"indices must be integers, got {idx}")
    _need(attrs["size"] >= 0, "check_index", f"size must be >= 0, got {attrs['size']}")
    return idx


@register("scatter_add", "gather", 2, attrs=("axis", "dim_size"),
          doc="adjoint of gather: zeros, then np.add.at along axis (repeated indices add up)")
def _scatter_add(ts, attrs):
    idx, upd = ts
    axis, dim = attrs["axis"], attrs["dim_size"]
    _need(is_int(idx.dtype), "scatter_add", f"indices must be integers, got {idx}")
    k = idx.ndim
    if upd.shape[axis:axis + k] != idx.shape:
        raise ShapeError(f"scatter_add: updates {upd} do not match indices {idx} at axis {axis}")
    return upd.with_shape(upd.shape[:axis] + (dim,) + upd.shape[axis + k:])


# ---------------------------------------------------------------------------------------------
# matmul


@register("matmul", "matmul", 2, attrs=("transpose_a", "transpose_b"), cost=2,  # multiply, add
          doc="(..., m, k) @ (..., k, n); batch axes broadcast; flags transpose the last two axes")
def _matmul(ts, attrs):
    a, b = ts
    dt = _same_dtype("matmul", ts)
    _need(not is_bool(dt), "matmul", "needs numeric inputs")
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError(f"matmul: needs inputs of 2 or more dimensions, got {a} and {b}")
    m, k = a.shape[-2:][::-1] if attrs["transpose_a"] else a.shape[-2:]
    k2, n = b.shape[-2:][::-1] if attrs["transpose_b"] else b.shape[-2:]
    if k != k2:
        raise ShapeError(f"matmul: inner dimensions differ: {a} @ {b} (k={k} vs {k2}, "
                         f"transpose_a={attrs['transpose_a']}, transpose_b={attrs['transpose_b']})")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2], op="matmul batch")
    return TensorType(dt, batch + (m, n))


# ---------------------------------------------------------------------------------------------
# windows: unfold (im2col) and its adjoint fold (col2im), NCHW, PyTorch's layout


def window_output_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def _window_attrs(op, attrs):
    kernel, stride, padding = attrs["kernel"], attrs["stride"], attrs["padding"]
    for name, v in (("kernel", kernel), ("stride", stride), ("padding", padding)):
        _need(len(v) == 2, op, f"{name} must be a pair, got {v}")
    _need(min(kernel) >= 1 and min(stride) >= 1 and min(padding) >= 0, op,
          f"bad window kernel={kernel} stride={stride} padding={padding}")
    return kernel, stride, padding


@register("unfold", "window", 1, attrs=("kernel", "stride", "padding"),
          doc="(N,C,H,W) -> (N, C*kh*kw, OH*OW), zero padding")
def _unfold(ts, attrs):
    x = ts[0]
    kernel, stride, padding = _window_attrs("unfold", attrs)
    if x.ndim != 4:
        raise ShapeError(f"unfold: needs an NCHW input, got {x}")
    n, c, h, w = x.shape
    oh = window_output_size(h, kernel[0], stride[0], padding[0])
    ow = window_output_size(w, kernel[1], stride[1], padding[1])
    if oh < 1 or ow < 1:
        raise ShapeError(f"unfold: window {kernel} with padding {padding} does not fit {x}")
    return x.with_shape((n, c * kernel[0] * kernel[1], oh * ow))


@register("fold", "window", 1, attrs=("output_size", "kernel", "stride", "padding"),
          doc="(N, C*kh*kw, OH*OW) -> (N,C,H,W), overlapping windows add up (adjoint of unfold)")
def _fold(ts, attrs):
    x = ts[0]
    kernel, stride, padding = _window_attrs("fold", attrs)
    h, w = attrs["output_size"]
    if x.ndim != 3 or x.shape[1] % (kernel[0] * kernel[1]):
        raise ShapeError(f"fold: needs (N, C*{kernel[0]}*{kernel[1]}, L), got {x}")
    oh = window_output_size(h, kernel[0], stride[0], padding[0])
    ow = window_output_size(w, kernel[1], stride[1], padding[1])
    if x.shape[2] != oh * ow:
        raise ShapeError(f"fold: {x} has {x.shape[2]} windows, output {h}x{w} needs {oh * ow}")
    return x.with_shape((x.shape[0], x.shape[1] // (kernel[0] * kernel[1]), h, w))


# ---------------------------------------------------------------------------------------------
# sources


# a scalar constant is a literal in loops; an array constant is data, no kernel
@register("constant", "source", 0, attrs=("value",), loop="source", lone_kernel=None, cost=0)
def _constant(ts, attrs):
    a = attrs["value"].array
    return TensorType(as_dtype(a.dtype), a.shape)


@register("iota", "source", 0, attrs=("shape", "axis", "dtype"), doc="index along `axis`",
          loop="source")
def _iota(ts, attrs):
    shape = tuple(attrs["shape"])
    _need(0 <= attrs["axis"] < len(shape), "iota", f"axis {attrs['axis']} out of range {shape}")
    return TensorType(attrs["dtype"], shape)


@register("random_uniform", "source", 2, attrs=("shape", "dtype"),
          doc="uniform [0, 1) from (seed, counter) int64 scalars; counter-based, same bits each run")
def _random_uniform(ts, attrs):
    for t, name in zip(ts, ("seed", "counter")):
        _need(t.dtype == "int64" and t.shape == (), "random_uniform",
              f"{name} must be an int64 scalar, got {t}")
    _need(attrs["dtype"] in FLOAT_DTYPES, "random_uniform", "dtype must be float32 or float64")
    return TensorType(attrs["dtype"], tuple(attrs["shape"]))


@register("scan", "control", None, attrs=("length", "reverse", "n_consts", "n_carry", "ys", "save"),
          doc="a loop (fg.scan): the node's region (consts, carry, x[t]) -> (carry, y[t]) run "
              "`length` times; outputs: the last carry, the stacked ys, and with `save` the "
              "stacked carries each step started from (what its gradient reads)")
def _scan(ts, attrs):
    """Multi-output: (carry..., ys stacked..., [carries stacked...]). `ys` holds the body's y
    types as (dtype, shape) pairs: the rule cannot see the region."""
    length, n_consts, n_carry = attrs["length"], attrs["n_consts"], attrs["n_carry"]
    _need(length >= 0 and n_consts + n_carry <= len(ts), "scan", "bad input counts")
    carry, xs = ts[n_consts:n_consts + n_carry], ts[n_consts + n_carry:]
    for x in xs:
        if not x.shape or x.shape[0] != length:
            raise ShapeError(f"scan: every xs leaf must have the length {length} as its first "
                             f"axis, got {x}")
    outs = list(carry) + [TensorType(d, (length, *shape)) for d, shape in attrs["ys"]]
    if attrs["save"]:
        outs += [TensorType(c.dtype, (length, *c.shape)) for c in carry]
    return tuple(outs)
# ---------------------------------------------------------------------------------------------
# collectives: data-parallel training's gradient sum (fusegrad/distributed.py, compiler/step.py)

PACK_ALIGN = 16  # elements: each operand of an all_reduce starts on a 64-byte boundary
#                  (float32) of its result; in elements, so float64 mode keeps the layout


def packed_offsets(types) -> tuple[tuple[int, ...], int]:
    """(element offset of each operand, total elements) of all_reduce's result: the operands
    flattened one after another, each starting at a multiple of PACK_ALIGN elements (the gaps
    hold zeros in the interpreter, anything in compiled code; nobody reads them)."""
    offsets, at = [], 0
    for t in types:
        at = (at + PACK_ALIGN - 1) // PACK_ALIGN * PACK_ALIGN
        offsets.append(at)
        at += t.size
    return tuple(offsets), at


@register("all_reduce", "collective", None, attrs=("handle_bits",),
          doc="all_reduce(handles, x1, x2, ...): the sum over the job's processes of x1, x2 ... "
              "flattened into one 1-D array (packed_offsets); handles is the int64 table "
              "(communicator, MPI_FLOAT, MPI_DOUBLE, MPI_SUM, MPI_IN_PLACE) read at run time; "
              "handle_bits, the width of the MPI library's handles (32: MPICH, 64: Open MPI), "
              "picks the compiled call")
def _all_reduce(ts, attrs):
    _need(len(ts) >= 2, "all_reduce", "needs the handle table and at least one value")
    handles, values = ts[0], ts[1:]
    _need(handles.dtype == "int64" and handles.shape == (5,), "all_reduce",
          f"the handle table must be int64[5], got {handles}")
    dt = _same_dtype("all_reduce", values)
    _need(is_float(dt), "all_reduce", f"sums floats, got {dt}")
    _need(attrs["handle_bits"] in (32, 64), "all_reduce",
          f"handle_bits must be 32 or 64, got {attrs['handle_bits']}")
    return TensorType(dt, (packed_offsets(values)[1],))


@register("part", "movement", 1, attrs=("offset", "shape"),
          doc="x[offset:offset + size] of a 1-D x, as an array of `shape` (an operand of an "
              "all_reduce read back from its result); a view where the memory plan can")
def _part(ts, attrs):
    (x,) = ts
    shape = tuple(attrs["shape"])
    size = TensorType(x.dtype, shape).size
    _need(x.ndim == 1, "part", f"reads a 1-D array, got {x}")
    if not 0 <= attrs["offset"] <= attrs["offset"] + size <= x.shape[0]:
        raise ShapeError(f"part: [{attrs['offset']}, {attrs['offset'] + size}) is not inside {x}")
    return TensorType(x.dtype, shape)
