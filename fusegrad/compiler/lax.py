"""Primitive-level operations: one checked wrapper per primitive, on tracers and plain arrays.

`bind(op, *args, **attrs)` is the single entry point: on tracers it records a node in the active
trace; on NumPy arrays it evaluates the primitive at once with the reference interpreter, so the
same functions serve compiled and eager code. The wrappers add what the IR leaves to the front:
NumPy dtype promotion (with Python scalars weakly typed: `x * 2` keeps float32), axis
normalisation, `-1` in reshapes, and indexing.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..ir import Attrs, PRIMITIVES, TensorType, eval_primitive, infer_type
from ..ir.dtypes import as_dtype
from ..ir.types import ShapeError, normalize_axes
from .symbolic import Tracer, TraceError, context_of, current_trace, user_location


def bind(op, *args, **attrs):
    """Apply primitive `op`: traced if any argument is a Tracer (or `op` is a source inside a
    trace), otherwise evaluated eagerly with NumPy."""
    ctx = context_of(args)
    if ctx is None and PRIMITIVES[op].kind == "source":
        ctx = current_trace()
    if ctx is not None:
        return ctx.emit(op, args, attrs)
    arrays = [np.asarray(a) for a in args]
    a = Attrs(attrs)
    out_type = infer_type(op, [TensorType.of(x) for x in arrays], a)
    return eval_primitive(op, arrays, a, out_type)


def is_array(x) -> bool:
    return isinstance(x, (Tracer, np.ndarray, np.generic))


def dtype_of(x) -> str:
    return as_dtype(x.dtype)


def shape_of(x) -> tuple:
    return tuple(np.shape(x)) if not isinstance(x, Tracer) else x.shape


def _is_weak(x) -> bool:
    return isinstance(x, (bool, int, float)) and not isinstance(x, np.generic)


def result_dtype(*xs) -> str:
    """NumPy's promotion with Python scalars weak (NEP 50): f32 tensor * 2.0 -> float32."""
    strong = [np.dtype(x.dtype) for x in xs if not _is_weak(x)]
    weak = [x for x in xs if _is_weak(x)]
    if not strong:
        return as_dtype(np.result_type(*[np.asarray(w) for w in weak]))
    return as_dtype(np.result_type(*strong, *weak))


def convert(x, dtype):
    """`x` as an array value of `dtype` (tracer cast, array astype, scalar to 0-d array)."""
    if isinstance(x, Tracer):
        return x if dtype_of(x) == dtype else bind("cast", x, dtype=dtype)
    if not isinstance(x, (np.ndarray, np.generic, numbers.Number)):
        if isinstance(x, (list, tuple)):
            x = np.asarray(x)
        else:
            raise TypeError(f"expected an array or a number, got {type(x).__name__}")
    return np.asarray(x, dtype=dtype)


def promote(*xs, to_float=False):
    dt = result_dtype(*xs)
    if to_float and dt not in ("float32", "float64"):
        dt = "float64"  # as NumPy: np.exp(int) is float64
    return [convert(x, dt) for x in xs]


# ---- elementwise -----------------------------------------------------------------------------

def unary(op, x):
    (x,) = promote(x, to_float=PRIMITIVES[op].float_only)  # np.exp(int) is float64 too
    return bind(op, x)


def _binary(op, x, y):
    x, y = promote(x, y, to_float=PRIMITIVES[op].float_only)
    return bind(op, x, y)


def add(x, y): return _binary("add", x, y)
def sub(x, y): return _binary("sub", x, y)
def mul(x, y): return _binary("mul", x, y)
def div(x, y): return _binary("div", x, y)
def maximum(x, y): return _binary("maximum", x, y)
def minimum(x, y): return _binary("minimum", x, y)


def compare(op, x, y):
    x, y = promote(x, y)
    return bind(op, x, y)


# Exponents with a cheaper, exactly differentiable form than the general pow.
_POWER_SPECIAL = {
    1: lambda x: x,
    2: lambda x: mul(x, x),
    3: lambda x: mul(mul(x, x), x),
    0.5: lambda x: unary("sqrt", x),
    -0.5: lambda x: unary("rsqrt", x),
    -1: lambda x: unary("reciprocal", x),
}


def power(x, y):
    if _is_weak(y) and not isinstance(y, bool) and y in _POWER_SPECIAL and is_array(x):
        (x,) = promote(x, to_float=not (isinstance(y, int) and y > 0))
        return _POWER_SPECIAL[y](x)
    return _binary("pow", x, y)


def where(cond, a, b):
    cond = convert(cond, "bool")
    a, b = promote(a, b)
    return bind("select", cond, a, b)


def cast(x, dtype):
    return convert(x, as_dtype(dtype))


def stop_gradient(x):
    return bind("stop_gradient", x)


# ---- reductions ------------------------------------------------------------------------------


def _axes(x, axis, op):
    return normalize_axes(axis, len(shape_of(x)), op)


def reduce_sum(x, axis=None, keepdims=False):
    if not is_array(x):
        x = np.asarray(x)
    if dtype_of(x) == "bool":
        x = convert(x, "int64")  # as NumPy: True counts as 1
    return bind("sum", x, axes=_axes(x, axis, "sum"), keepdims=bool(keepdims))


def reduce_max(x, axis=None, keepdims=False):
    return bind("max", x, axes=_axes(x, axis, "max"), keepdims=bool(keepdims))


def reduce_min(x, axis=None, keepdims=False):
    return unary("neg", reduce_max(unary("neg", x), axis, keepdims))


def mean(x, axis=None, keepdims=False):
    axes = _axes(x, axis, "mean")
    count = int(np.prod([shape_of(x)[a] for a in axes], dtype=np.int64))
    (x,) = promote(x, to_float=True)
    return div(reduce_sum(x, axes, keepdims), count)


def argmax(x, axis=None):
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    (axis,) = _axes(x, axis, "argmax")
    return bind("argmax", x, axis=axis)


# ---- movement --------------------------------------------------------------------------------


def _resolve_shape(shape, size, op="reshape"):
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    if shape.count(-1) > 1:
        raise ShapeError(f"{op}: only one -1 allowed in {shape}")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        if known == 0 or size % known:
            raise ShapeError(f"{op}: cannot reshape {size} elements to {shape}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    return shape


def reshape(x, shape):
    size = int(np.prod(shape_of(x), dtype=np.int64))
    shape = _resolve_shape(shape, size)
    if shape == shape_of(x):
        return x
    return bind("reshape", x, shape=shape)


def transpose(x, axes=None):
    nd = len(shape_of(x))
    perm = tuple(reversed(range(nd))) if axes is None else tuple(int(a) for a in axes)
    if len(perm) != nd or any(not -nd <= a < nd for a in perm) or len({a % nd for a in perm}) != nd:
        raise ShapeError(f"transpose: axes {perm} are not a permutation of the axes of an array "
                         f"of shape {shape_of(x)} (at {user_location()})")
    perm = tuple(a % nd for a in perm)  # negative axes count from the end
    if perm == tuple(range(nd)):
        return x
    return bind("transpose", x, perm=perm)


def broadcast_to(x, shape):
    shape = tuple(int(s) for s in shape)
    if shape_of(x) == shape:
        return x
    return bind("broadcast_to", x, shape=shape)


def expand_dims(x, axis):
    shape = list(shape_of(x))
    axis = axis % (len(shape) + 1)
    shape.insert(axis, 1)
    return reshape(x, shape)


def slice_axes(x, starts, steps, sizes):
    return bind("slice", x, starts=tuple(starts), steps=tuple(steps), sizes=tuple(sizes))


def pad(x, pads, value=0.0):
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if all(lo == hi == 0 for lo, hi in pads):
        return x
    return bind("pad", x, pads=pads, value=float(value))


def concatenate(xs, axis=0):
    xs = promote(*xs)
    nd = len(shape_of(xs[0]))
    return bind("concatenate", *xs, axis=int(axis) % nd)


def gather(x, indices, axis=0):
    nd = len(shape_of(x))
    return bind("gather", x, indices, axis=int(axis) % nd)


def check_index(indices, size):
    """`indices`, checked (on every target, at run time) to lie in [0, size)."""
    return bind("check_index", indices, size=int(size))


def scatter_add(indices, updates, axis, dim_size):
    return bind("scatter_add", indices, updates, axis=int(axis), dim_size=int(dim_size))


def getitem(x, key):
    """Basic indexing (ints, slices, None, ...) and one integer-array index (a gather)."""
    key = key if isinstance(key, tuple) else (key,)
    advanced = [k for k in key if is_array(k) or isinstance(k, list)]
    if len(advanced) > 1:
        raise TraceError(f"indexing with more than one index array is not supported "
                         f"(at {user_location()}); use fg.one_hot or gather along one axis")
    n_real = sum(1 for k in key if k is not None and k is not Ellipsis)
    shape = shape_of(x)
    if n_real > len(shape):
        raise IndexError(f"too many indices ({n_real}) for an array of shape {shape}")
    ellipsis = [i for i, k in enumerate(key) if k is Ellipsis]
    if len(ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if ellipsis:
        i = ellipsis[0]
        key = key[:i] + (slice(None),) * (len(shape) - n_real) + key[i + 1:]
    else:
        key = key + (slice(None),) * (len(shape) - n_real)
    starts, steps, sizes, out_shape = [], [], [], []
    gather_at = None
    axis = 0
    for k in key:
        if k is None:
            out_shape.append(1)
            continue
        dim = shape[axis]
        if isinstance(k, slice):
            start, stop, step = k.indices(dim)
            size = len(range(start, stop, step))
            starts.append(start if size else 0)
            steps.append(step)
            sizes.append(size)
            out_shape.append(size)
        elif isinstance(k, (int, np.integer)):
            if not -dim <= k < dim:
                raise IndexError(f"index {k} is out of bounds for axis {axis} with size {dim}")
            starts.append(int(k) % dim)
            steps.append(1)
            sizes.append(1)
        else:  # one integer index array: gather along this axis after the slicing
            starts.append(0)
            steps.append(1)
            sizes.append(dim)
            gather_at = (axis, len(out_shape), k)
            out_shape.append(None)
        axis += 1
    y = x
    if (tuple(starts), tuple(steps), tuple(sizes)) != ((0,) * len(shape), (1,) * len(shape), shape):
        y = slice_axes(x, starts, steps, sizes)
    if gather_at is not None:
        ax, pos, idx = gather_at
        idx = idx if isinstance(idx, Tracer) else np.asarray(idx)
        if dtype_of(idx) == "bool":
            raise TraceError("boolean-mask indexing makes a data-dependent shape; use fg.where")
        if not isinstance(idx, Tracer):  # NumPy's negative indices, checked now
            dim = shape[ax]
            if idx.size and (idx.min() < -dim or idx.max() >= dim):
                raise IndexError(f"index out of bounds for axis {ax} with size {dim}")
            idx = idx % dim
        y = gather(y, idx, ax)
        idx_shape = shape_of(idx)
        out_shape = out_shape[:pos] + list(idx_shape) + out_shape[pos + 1:]
    return reshape(y, tuple(out_shape))


# ---- matmul, windows, sources ----------------------------------------------------------------


def matmul(a, b, transpose_a=False, transpose_b=False):
    a, b = promote(a, b)
    a_vec, b_vec = len(shape_of(a)) == 1, len(shape_of(b)) == 1
    if a_vec:
        a = reshape(a, (1, -1))
    if b_vec:
        b = reshape(b, (-1, 1))
    out = bind("matmul", a, b, transpose_a=bool(transpose_a), transpose_b=bool(transpose_b))
    if a_vec or b_vec:
        shape = shape_of(out)
        shape = shape[:-2] + (() if a_vec else shape[-2:-1]) + (() if b_vec else shape[-1:])
        out = reshape(out, shape)
    return out


def _pair(v):
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(t) for t in v)


def unfold(x, kernel, stride=1, padding=0):
    return bind("unfold", x, kernel=_pair(kernel), stride=_pair(stride), padding=_pair(padding))


def fold(cols, output_size, kernel, stride=1, padding=0):
    return bind("fold", cols, output_size=_pair(output_size), kernel=_pair(kernel),
                stride=_pair(stride), padding=_pair(padding))


def iota(shape, axis, dtype="int64"):
    return bind("iota", shape=tuple(shape), axis=int(axis), dtype=as_dtype(dtype))


def random_uniform(seed, counter, shape, dtype="float32"):
    seed, counter = convert(seed, "int64"), convert(counter, "int64")
    return bind("random_uniform", seed, counter, shape=tuple(shape), dtype=as_dtype(dtype))


def all_reduce(handles, *values, handle_bits=32):
    """The sum over the job's processes of `values`, packed into one 1-D array (ir/ops.py
    packed_offsets says where each is); `handles` is the int64[5] MPI handle table
    (fusegrad/distributed.py). With handle 0 (no communicator) the sum is over this process."""
    values = promote(*values)
    return bind("all_reduce", convert(handles, "int64"), *values, handle_bits=int(handle_bits))


def part(x, offset, shape):
    """x[offset:offset + size] of a 1-D x, shaped `shape`."""
    return bind("part", x, offset=int(offset), shape=tuple(int(d) for d in shape))
