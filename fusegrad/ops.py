"""The NumPy-like op namespace: fg.exp, fg.sum, fg.where, fg.softmax, fg.conv2d ...

Every function works on tracers (recording IR) and on plain NumPy arrays (computing at once),
because each is built from the checked primitive wrappers in compiler/lax.py. This module also
fills the tables through which NumPy's own functions dispatch on tracers (np.exp(x) reaches
NUMPY_UFUNCS through __array_ufunc__, np.sum(x, axis=1) reaches NUMPY_FUNCTIONS through
__array_function__). NumPy-style composites (var, clip, logic, squeeze) are compiler/lax_numpy.py's,
neural-network ones (softmax, conv2d ...) nn.py's; both are re-exported.
"""
from __future__ import annotations

import numpy as np

from . import nn
from .compiler import lax, lax_numpy
from .compiler.control import scan
from .compiler.lax import dtype_of, is_array, shape_of
from .compiler.symbolic import (NUMPY_FUNCTIONS, NUMPY_UFUNCS, TraceError, assign, context_of,
                                current_trace)
from .ir.dtypes import as_dtype
from .ir.types import ShapeError, normalize_axes
from .nn import *  # noqa: F401,F403
from .compiler.einsum import einsum
from .compiler.lax_numpy import (argument_error, array_split, as_array, clip, logical_and,
                                 logical_not, logical_or, logical_xor, split, squeeze, std,
                                 swapaxes, take_along_axis, tril, triu, var)
from .compiler.symbolic import NUMPY_HINTS, PUBLIC_OPS

# ---- elementwise -----------------------------------------------------------------------------


def _unary(name, prim, doc):
    def fn(x):
        return lax.unary(prim, x)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return fn


exp = _unary("exp", "exp", "Elementwise e**x.")
log = _unary("log", "log", "Elementwise natural logarithm.")
log1p = _unary("log1p", "log1p", "Elementwise log(1 + x), accurate for small x.")
sqrt = _unary("sqrt", "sqrt", "Elementwise square root.")
rsqrt = _unary("rsqrt", "rsqrt", "Elementwise 1 / sqrt(x).")
tanh = _unary("tanh", "tanh", "Elementwise hyperbolic tangent.")
sigmoid = _unary("sigmoid", "sigmoid", "Elementwise logistic 1 / (1 + exp(-x)), stable for any x.")
sin = _unary("sin", "sin", "Elementwise sine.")
cos = _unary("cos", "cos", "Elementwise cosine.")
erf = _unary("erf", "erf", "Elementwise Gauss error function.")
reciprocal = _unary("reciprocal", "reciprocal", "Elementwise 1 / x (as float).")
abs = _unary("abs", "abs", "Elementwise absolute value.")  # noqa: A001  (NumPy's name)
sign = _unary("sign", "sign", "Elementwise sign: -1, 0 or 1.")
negative = _unary("negative", "neg", "Elementwise -x.")


def square(x):
    """Elementwise x * x."""
    return lax.mul(x, x)


def relu(x):
    """Elementwise max(x, 0)."""
    return lax.maximum(x, 0)


def _binary(name, impl, doc):
    def fn(x, y):
        return impl(x, y)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return fn


add = _binary("add", lax.add, "Elementwise x + y (broadcasting).")
subtract = _binary("subtract", lax.sub, "Elementwise x - y (broadcasting).")
multiply = _binary("multiply", lax.mul, "Elementwise x * y (broadcasting).")
divide = _binary("divide", lax.div, "Elementwise true division x / y (ints give float64).")
power = _binary("power", lax.power, "Elementwise x ** y (x**2, x**0.5 ... become cheaper ops).")
maximum = _binary("maximum", lax.maximum, "Elementwise larger of x and y (broadcasting).")
minimum = _binary("minimum", lax.minimum, "Elementwise smaller of x and y (broadcasting).")
equal = _binary("equal", lambda x, y: lax.compare("eq", x, y), "Elementwise x == y, as bool.")
not_equal = _binary("not_equal", lambda x, y: lax.compare("ne", x, y), "Elementwise x != y.")
less = _binary("less", lambda x, y: lax.compare("lt", x, y), "Elementwise x < y, as bool.")
less_equal = _binary("less_equal", lambda x, y: lax.compare("le", x, y), "Elementwise x <= y.")
greater = _binary("greater", lambda x, y: lax.compare("gt", x, y), "Elementwise x > y.")
greater_equal = _binary("greater_equal", lambda x, y: lax.compare("ge", x, y),
                        "Elementwise x >= y, as bool.")
def where(cond, a, b):
    """Elementwise a where cond is true, else b (broadcasting; cond is cast to bool)."""
    return lax.where(cond, a, b)


def astype(x, dtype):
    """x converted to dtype (float32, float64, int32, int64 or bool)."""
    return lax.cast(x, dtype)


def stop_gradient(x):
    """Identity whose gradient is zero."""
    return lax.stop_gradient(as_array(x))


# ---- reductions ------------------------------------------------------------------------------


def sum(x, axis=None, keepdims=False):  # noqa: A001
    """Sum over axis (None: all axes); bools count as ints."""
    return lax.reduce_sum(as_array(x), axis, keepdims)


def mean(x, axis=None, keepdims=False):
    """Arithmetic mean over axis (None: all axes); ints give float64."""
    return lax.mean(as_array(x), axis, keepdims)


def max(x, axis=None, keepdims=False):  # noqa: A001
    """Maximum over axis (None: all axes)."""
    return lax.reduce_max(as_array(x), axis, keepdims)


def min(x, axis=None, keepdims=False):  # noqa: A001
    """Minimum over axis (None: all axes)."""
    return lax.reduce_min(as_array(x), axis, keepdims)


def argmax(x, axis=None, keepdims=False):
    """Index (int64) of the first maximum along axis (None: of the flattened array)."""
    x = as_array(x)
    out = lax.argmax(x, axis)
    if not keepdims:
        return out
    shape = [1] * len(shape_of(x)) if axis is None else list(shape_of(x))
    if axis is not None:
        shape[normalize_axes(axis, len(shape), "argmax")[0]] = 1
    return lax.reshape(out, tuple(shape))


# ---- shapes and movement ---------------------------------------------------------------------


def reshape(x, shape):
    """x with a new shape of the same size (one entry may be -1)."""
    return lax.reshape(as_array(x), shape)


def transpose(x, axes=None):
    """x with its axes permuted (None: reversed)."""
    return lax.transpose(as_array(x), axes)


def expand_dims(x, axis):
    """x with new size-1 axes inserted at axis (an int or a tuple, as in NumPy)."""
    x = as_array(x)
    axes = (axis,) if not isinstance(axis, (tuple, list)) else axis
    nd = len(shape_of(x)) + len(axes)
    axes = normalize_axes(axes, nd, "expand_dims")
    it = iter(shape_of(x))
    return lax.reshape(x, tuple(1 if i in axes else next(it) for i in range(nd)))


def broadcast_to(x, shape):
    """x broadcast to shape, NumPy's rules."""
    return lax.broadcast_to(as_array(x), shape)


def concatenate(xs, axis=0):
    """Arrays joined along an existing axis (None: flattened first)."""
    xs = [as_array(x) for x in xs]
    if axis is None:
        xs, axis = [lax.reshape(x, (-1,)) for x in xs], 0
    return lax.concatenate(xs, axis)


def stack(xs, axis=0):
    """Arrays of one shape joined along a new axis."""
    xs = [as_array(x) for x in xs]
    shapes = {shape_of(x) for x in xs}
    if len(shapes) != 1:
        raise argument_error(ShapeError, f"stack: all inputs must have the same shape, got "
                                         f"{', '.join(str(shape_of(x)) for x in xs)}")
    return lax.concatenate([expand_dims(x, axis) for x in xs], axis)


def pad(x, pad_width, constant_values=0):
    """x padded with a constant, pad_width as in np.pad (int, (before, after), or one per axis)."""
    x = as_array(x)
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (len(shape_of(x)), 2))
    return lax.pad(x, [tuple(w) for w in widths.tolist()], value=constant_values)


def take(x, indices, axis=None):
    """Elements of x at integer indices along axis (None: of the flattened x), as np.take."""
    x = as_array(x)
    if axis is None:
        x, axis = lax.reshape(x, (-1,)), 0
    if not is_array(indices) or isinstance(indices, (np.ndarray, np.generic)):
        indices = np.asarray(indices)
        if indices.dtype.kind not in "iu":
            raise argument_error(TypeError, f"take: indices must be integers, got {indices.dtype}")
        dim = shape_of(x)[normalize_axes(axis, len(shape_of(x)), "take")[0]]
        if indices.size and not (-dim <= indices.min() and indices.max() < dim):
            raise argument_error(IndexError, f"take: index out of range for axis {axis} of "
                                             f"size {dim}")
        indices = (indices % dim).astype(np.int64)  # negative indices count from the end
    return lax.gather(x, indices, axis)


def _full(x, value, dtype):
    shape, dtype = shape_of(x), dtype_of(as_array(x)) if dtype is None else as_dtype(dtype)
    scalar = np.asarray(value, dtype=dtype)
    ctx = context_of((x,)) or current_trace()
    if ctx is None or not shape:
        return np.broadcast_to(scalar, shape).copy()
    return ctx.emit("broadcast_to", (scalar,), {"shape": shape})  # one scalar constant, broadcast


def zeros_like(x, dtype=None):
    """Zeros of x's shape (and dtype unless given)."""
    return _full(x, 0, dtype)


def ones_like(x, dtype=None):
    """Ones of x's shape (and dtype unless given)."""
    return _full(x, 1, dtype)


def full_like(x, fill_value, dtype=None):
    """fill_value everywhere, in x's shape (and dtype unless given)."""
    return _full(x, fill_value, dtype)


# ---- products --------------------------------------------------------------------------------


def matmul(a, b):
    """Matrix product a @ b, NumPy's rules (batch axes broadcast, 1-D operands are vectors)."""
    return lax.matmul(as_array(a), as_array(b))


def dot(a, b):
    """np.dot for operands of at most 2 dimensions (0-d operands multiply)."""
    a, b = as_array(a), as_array(b)
    if not shape_of(a) or not shape_of(b):
        return lax.mul(a, b)
    if len(shape_of(a)) > 2 or len(shape_of(b)) > 2:
        raise argument_error(ShapeError, f"dot: only 0-, 1- and 2-D operands are supported, got "
                                         f"shapes {shape_of(a)} and {shape_of(b)}; use matmul")
    return lax.matmul(a, b)


__all__ = [
    "exp", "log", "log1p", "sqrt", "rsqrt", "tanh", "sigmoid", "sin", "cos", "erf", "reciprocal",
    "abs", "sign", "negative", "square", "relu", "add", "subtract", "multiply", "divide",
    "power", "maximum", "minimum", "equal", "not_equal", "less", "less_equal",
    "greater", "greater_equal", "where", "astype", "stop_gradient", "assign", "scan",
    "sum", "mean", "max", "min", "argmax",
    "reshape", "transpose", "swapaxes", "expand_dims", "squeeze", "broadcast_to", "concatenate",
    "stack", "pad", "take", "zeros_like", "ones_like", "full_like", "matmul", "dot",
    "logical_and", "logical_or", "logical_xor", "logical_not", "clip", "var", "std",
    "split", "array_split", "take_along_axis", "einsum", "tril", "triu",
    *nn.__all__,
]
PUBLIC_OPS.update(__all__)

# ---- NumPy's functions on tracers ------------------------------------------------------------

# Keyword values NumPy may pass that mean "the default": accepted and ignored.
_DEFAULTS = {"out": None, "where": True, "casting": "same_kind", "order": "K", "subok": True,
             "mode": "raise", "copy": None, "device": None}


def _reject(what, kwargs):
    """Raise for any keyword NumPy was given that this implementation does not honour."""
    for k, v in kwargs.items():
        default = _DEFAULTS.get(k, KeyError)
        if not (v is default or (isinstance(v, (str, bool)) and v == default)):
            raise argument_error(TraceError, f"{what}(..., {k}={v!r}) is not supported on "
                                             f"traced arrays")


def _cast_to(x, dtype):
    return x if dtype is None else lax.cast(x, dtype)


def _from_ufunc(ufunc, impl):
    def call(*inputs, dtype=None, **kwargs):
        _reject(f"np.{ufunc.__name__}", kwargs)
        return impl(*[_cast_to(x, dtype) for x in inputs])

    return call


NUMPY_UFUNCS.update({u: _from_ufunc(u, f) for u, f in {
    np.add: add, np.subtract: subtract, np.multiply: multiply, np.true_divide: divide,
    np.divide: divide, np.power: power, np.negative: negative, np.positive: lambda x: x,
    np.exp: exp, np.log: log, np.log1p: log1p, np.sqrt: sqrt, np.tanh: tanh, np.sin: sin,
    np.cos: cos, np.absolute: abs, np.fabs: abs, np.sign: sign, np.reciprocal: reciprocal,
    np.square: square, np.maximum: maximum, np.minimum: minimum, np.logaddexp: logaddexp,
    np.equal: equal, np.not_equal: not_equal, np.less: less, np.less_equal: less_equal,
    np.greater: greater, np.greater_equal: greater_equal, np.logical_and: logical_and,
    np.logical_or: logical_or, np.logical_xor: logical_xor, np.logical_not: logical_not,
    np.matmul: matmul,
}.items()})


def _np_reduction(name, impl, has_dtype):
    def call(a, axis=None, *rest, keepdims=False, **kwargs):
        # NumPy's positional order: (a, axis, dtype, out, keepdims) or (a, axis, out, keepdims)
        names = ("dtype", "out", "keepdims") if has_dtype else ("out", "keepdims")
        kwargs.update(zip(names, rest))
        keepdims = kwargs.pop("keepdims", keepdims)
        dtype = kwargs.pop("dtype", None)
        extra = {"ddof": kwargs.pop("ddof", 0)} if name in ("var", "std") else {}
        _reject(f"np.{name}", kwargs)
        return impl(_cast_to(a, dtype), axis, keepdims, **extra)

    return call


def _np_where(condition, x=None, y=None):
    if x is None or y is None:
        raise argument_error(TraceError, "np.where(condition) with one argument has a "
                                         "data-dependent shape; use np.where(condition, x, y)")
    return where(condition, x, y)


def _np_clip(a, a_min=np._NoValue, a_max=np._NoValue, out=None, *, min=np._NoValue,
             max=np._NoValue, **kwargs):
    _reject("np.clip", dict(kwargs, out=out))
    lo = min if a_min is np._NoValue else a_min
    hi = max if a_max is np._NoValue else a_max
    return clip(a, None if lo is np._NoValue else lo, None if hi is np._NoValue else hi)


def _np_reshape(a, shape=None, order="C", *, newshape=None, copy=None):
    _reject("np.reshape", {"order": "K" if order == "C" else order, "copy": copy})
    return reshape(a, newshape if shape is None else shape)


def _np_ravel(a, order="C"):
    _reject("np.ravel", {"order": "K" if order == "C" else order})
    return reshape(a, (-1,))


def _np_argmax(a, axis=None, out=None, *, keepdims=False):
    _reject("np.argmax", {"out": out})
    return argmax(a, axis, keepdims)


def _np_dot(a, b, out=None):
    _reject("np.dot", {"out": out})
    return dot(a, b)


def _np_concatenate(arrays, axis=0, out=None, *, dtype=None, **kwargs):
    _reject("np.concatenate", dict(kwargs, out=out))
    return concatenate([_cast_to(x, dtype) for x in arrays], axis)


def _np_stack(arrays, axis=0, out=None, *, dtype=None, **kwargs):
    _reject("np.stack", dict(kwargs, out=out))
    return stack([_cast_to(x, dtype) for x in arrays], axis)


def _np_like(value_default):
    def call(a, *args, dtype=None, shape=None, **kwargs):
        if value_default is None:  # full_like(a, fill_value, dtype=None, ...)
            fill, args = args[0], args[1:]
        else:
            fill = value_default
        if args:
            dtype = args[0]
        if shape is not None:
            raise argument_error(TraceError, "np.*_like(..., shape=...) is not supported on "
                                             "traced arrays")
        _reject("np.*_like", kwargs)
        return _full(a, fill, dtype)

    return call


def _np_take(a, indices, axis=None, out=None, mode="raise"):
    _reject("np.take", {"out": out, "mode": mode})
    return take(a, indices, axis)


def _np_pad(array, pad_width, mode="constant", **kwargs):
    if mode != "constant":
        raise argument_error(TraceError, f"np.pad(mode={mode!r}) is not supported on traced "
                                         f"arrays; only mode='constant'")
    value = kwargs.pop("constant_values", 0)
    _reject("np.pad", kwargs)
    return pad(array, pad_width, value)


NUMPY_FUNCTIONS.update({
    np.sum: _np_reduction("sum", sum, True),
    np.mean: _np_reduction("mean", mean, True),
    np.var: _np_reduction("var", var, True),
    np.std: _np_reduction("std", std, True),
    np.max: _np_reduction("max", max, False),
    np.amax: _np_reduction("amax", max, False),
    np.min: _np_reduction("min", min, False),
    np.amin: _np_reduction("amin", min, False),
    np.argmax: _np_argmax,
    np.where: _np_where,
    np.clip: _np_clip,
    np.reshape: _np_reshape,
    np.ravel: _np_ravel,
    np.transpose: lambda a, axes=None: transpose(a, axes),
    np.swapaxes: swapaxes,
    np.expand_dims: expand_dims,
    np.squeeze: lambda a, axis=None: squeeze(a, axis),
    np.broadcast_to: lambda array, shape, subok=False: broadcast_to(array, shape),
    np.concatenate: _np_concatenate,
    np.stack: _np_stack,
    np.pad: _np_pad,
    np.take: _np_take,
    np.dot: _np_dot,
    np.zeros_like: _np_like(0),
    np.ones_like: _np_like(1),
    np.full_like: _np_like(None),
    np.copy: lambda a, order="K", subok=False: a,
    np.shape: lambda a: shape_of(a),
    np.ndim: lambda a: len(shape_of(a)),
    np.size: lambda a, axis=None: (
        int(np.prod(shape_of(a), dtype=np.int64)) if axis is None else shape_of(a)[axis]),
})
if hasattr(np, "astype"):  # NumPy >= 2.1
    NUMPY_FUNCTIONS[np.astype] = lambda x, dtype, /, *, copy=True, device=None: astype(x, dtype)


# ---- splits, gathers along an axis, einsum, triangles (compiler/lax_numpy.py, einsum.py) ------


def _np_einsum(*operands, out=None, optimize=False, dtype=None, order="K", casting="safe"):
    # optimize= only chooses NumPy's contraction order: the result is the same, ignored here
    _reject("np.einsum", {"out": out, "order": order,
                          "casting": "same_kind" if casting == "safe" else casting})
    return einsum(*operands, dtype=dtype)


NUMPY_FUNCTIONS.update({
    np.split: lambda ary, indices_or_sections, axis=0: split(ary, indices_or_sections, axis),
    np.array_split: lambda ary, indices_or_sections, axis=0: array_split(
        ary, indices_or_sections, axis),
    np.take_along_axis: lambda arr, indices, axis=-1: take_along_axis(arr, indices, axis),
    np.einsum: _np_einsum,
    np.tril: lambda m, k=0: tril(m, k),
    np.triu: lambda m, k=0: triu(m, k),
})
if hasattr(np, "matrix_transpose"):  # NumPy >= 2.0
    NUMPY_FUNCTIONS[np.matrix_transpose] = lambda x, /: lax_numpy.matrix_transpose(x)
    NUMPY_FUNCTIONS[np.linalg.matrix_transpose] = lambda x, /: lax_numpy.matrix_transpose(x)

# What to use instead of NumPy functions (and ndarray methods, by name) that do not trace; each
# names real fg.* functions (tests/test_array_api.py resolves them). Others get fg.<name> when
# fg has that name, else only "compute it outside the compiled function".
_DATA_DEPENDENT = ("a mask with fg.where(cond, x, y) (its result would have a data-dependent "
                   "shape)")
NUMPY_HINTS.update({
    np.argmin: "fg.argmax(-x)",
    np.outer: "fg.einsum('i,j->ij', a, b)",
    np.inner: "fg.einsum('...i,...i->...', a, b) for vectors' products",
    np.tensordot: "fg.einsum with the contracted labels written out",
    np.trace: "fg.einsum('ii->', x)",
    np.diagonal: "fg.einsum('ii->i', x)",
    np.diag: "fg.einsum('ii->i', x) for a diagonal",
    np.vstack: "fg.concatenate(xs, axis=0)",
    np.hstack: "fg.concatenate(xs, axis=-1)",
    np.column_stack: "fg.stack(xs, axis=1)",
    np.dstack: "fg.stack(xs, axis=2)",
    np.moveaxis: "fg.transpose(x, axes)",
    np.rollaxis: "fg.transpose(x, axes)",
    np.linalg.norm: "fg.sqrt(fg.sum(x * x, axis))",
    np.average: "fg.mean(x, axis), or fg.sum(x * w, axis) / fg.sum(w, axis) with weights",
    np.tile: "fg.broadcast_to and fg.reshape",
    np.repeat: "fg.broadcast_to and fg.reshape",
    np.roll: "fg.concatenate of two slices",
    np.flip: "indexing with a negative step, x[::-1]",
    np.atleast_2d: "fg.reshape or fg.expand_dims",
    np.nonzero: _DATA_DEPENDENT,
    np.argwhere: _DATA_DEPENDENT,
    np.flatnonzero: _DATA_DEPENDENT,
    np.unique: _DATA_DEPENDENT,
    np.compress: _DATA_DEPENDENT,
    np.extract: _DATA_DEPENDENT,
    np.isnan: "x != x (true only for NaN)",
    np.isfinite: "fg.abs(x) < np.inf",
    np.expm1: "fg.exp(x) - 1",
    np.log2: "fg.log(x) / np.log(2)",
    np.log10: "fg.log(x) / np.log(10)",
    np.exp2: "fg.exp(x * np.log(2))",
    np.floor_divide: "fg.divide and a cast with fg.astype",
    np.heaviside: "fg.where(x > 0, 1.0, 0.0)",
    "nonzero": _DATA_DEPENDENT,
    "argmin": "fg.argmax(-x)",
    "dot": "fg.dot(x, y) or x @ y",
    "take": "fg.take(x, indices, axis)",
    "repeat": "fg.broadcast_to and fg.reshape",
    "diagonal": "fg.einsum('ii->i', x)",
    "trace": "fg.einsum('ii->', x)",
    "fill": "fg.full_like(x, value)",
    "copy": "the tracer itself (a traced array is never modified in place)",
})
