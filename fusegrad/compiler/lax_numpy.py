"""NumPy-style composites of the primitive wrappers (lax.py), as jax.numpy is of jax.lax: what
a traced array's methods (x.var(), x.clip(), x & y, x.squeeze()) and the fg.* functions of the
same names both call. Argument checks raise errors that name the user's line.
"""
from __future__ import annotations

import numpy as np

from ..ir.printer import short_loc
from ..ir.types import ShapeError, broadcast_shapes, normalize_axes
from . import lax
from .lax import is_array, shape_of
from .symbolic import user_location


# ---- arguments -------------------------------------------------------------------------------


def argument_error(cls, message):
    """`cls(message)` with the user's `file:line` appended, so a bad call points at itself."""
    loc = short_loc(user_location())
    return cls(f"{message} (at {loc})" if loc else message)


def as_array(x):
    """Tracers and NumPy arrays unchanged; lists and Python numbers as NumPy arrays."""
    return x if is_array(x) else np.asarray(x)


def as_float(x):
    """`x` promoted to a float dtype (ints become float64, as in NumPy)."""
    (x,) = lax.promote(as_array(x), to_float=True)
    return x


# ---- logic (select and compare: no primitive of its own), clip, variance, squeeze -------------


def _truth(x):
    """x as bool (nonzero is true): logic is select and compare, it needs no primitive."""
    return lax.convert(as_array(x), "bool")


def logical_and(x, y):
    """Elementwise x and y, as bool."""
    return lax.where(x, _truth(y), False)


def logical_or(x, y):
    """Elementwise x or y, as bool."""
    return lax.where(x, True, _truth(y))


def logical_xor(x, y):
    """Elementwise x xor y, as bool."""
    return lax.compare("ne", _truth(x), _truth(y))


def logical_not(x):
    """Elementwise not x, as bool."""
    return lax.compare("eq", _truth(x), False)


def clip(x, a_min=None, a_max=None):
    """Elementwise x limited to [a_min, a_max]; either bound may be None."""
    if a_min is None and a_max is None:
        raise argument_error(ValueError, "clip: give at least one of a_min and a_max")
    if a_min is not None:
        x = lax.maximum(x, a_min)
    return x if a_max is None else lax.minimum(x, a_max)


def var(x, axis=None, keepdims=False, ddof=0):
    """Variance over axis, mean((x - mean)**2) * n / (n - ddof), computed in two passes."""
    x = as_array(x)
    axes = normalize_axes(axis, len(shape_of(x)), "var")
    n = int(np.prod([shape_of(x)[a] for a in axes], dtype=np.int64))
    centred = lax.sub(x, lax.mean(x, axes, keepdims=True))
    return lax.div(lax.reduce_sum(lax.mul(centred, centred), axes, keepdims),
                   max(n - ddof, 0))


def std(x, axis=None, keepdims=False, ddof=0):
    """Standard deviation over axis: sqrt(var(x, axis, keepdims, ddof))."""
    return lax.unary("sqrt", var(x, axis, keepdims, ddof))


def squeeze(x, axis=None):
    """x without size-1 axes (all of them, or those named by axis)."""
    x = as_array(x)
    shape = shape_of(x)
    if axis is None:
        axes = tuple(i for i, d in enumerate(shape) if d == 1)
    else:
        axes = normalize_axes(axis, len(shape), "squeeze")
        bad = [a for a in axes if shape[a] != 1]
        if bad:
            raise argument_error(ShapeError, f"squeeze: axis {bad[0]} of shape {shape} has size "
                                             f"{shape[bad[0]]}, not 1")
    return lax.reshape(x, tuple(d for i, d in enumerate(shape) if i not in axes))


# ---- axes, splits, triangles, gathers along an axis (NumPy's names) ---------------------------


def swapaxes(x, axis1, axis2):
    """x with two axes exchanged."""
    x = as_array(x)
    perm = list(range(len(shape_of(x))))
    a, b = (normalize_axes(v, len(perm), "swapaxes")[0] for v in (axis1, axis2))
    perm[a], perm[b] = perm[b], perm[a]
    return lax.transpose(x, perm)


def matrix_transpose(x):
    """x with its last two axes exchanged (NumPy's x.mT); x needs at least two axes."""
    x = as_array(x)
    if len(shape_of(x)) < 2:
        raise argument_error(ShapeError, f"matrix_transpose (.mT): x needs at least 2 axes, got "
                                         f"shape {shape_of(x)}")
    return swapaxes(x, -1, -2)


def _static_int(op, name, v):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise argument_error(TypeError, f"{op}: {name} must be a Python int (a static value), "
                                        f"got {type(v).__name__}")
    return int(v)


def array_split(x, indices_or_sections, axis=0):
    """x cut along axis into a list of pieces, as np.array_split: n pieces (the first len % n
    one longer), or cut at the given indices (Python slice rules: negative count from the end)."""
    x = as_array(x)
    shape = shape_of(x)
    if not shape:
        raise argument_error(ShapeError, "array_split: x must have at least one axis")
    (axis,) = normalize_axes(axis, len(shape), "array_split")
    size = shape[axis]
    if isinstance(indices_or_sections, (int, np.integer)) and not isinstance(
            indices_or_sections, (bool, np.bool_)):
        n = int(indices_or_sections)
        if n < 1:
            raise argument_error(ValueError, f"array_split: the number of sections must be >= 1, "
                                             f"got {n}")
        each, extra = divmod(size, n)
        bounds = np.cumsum([0] + [each + 1] * extra + [each] * (n - extra)).tolist()
        cuts = list(zip(bounds[:-1], bounds[1:]))
    else:
        if is_array(indices_or_sections) and not isinstance(indices_or_sections, np.ndarray):
            raise argument_error(TypeError, "array_split: split indices must be static ints (a "
                                            "list or a NumPy array), not a traced array")
        points = [_static_int("array_split", "each split index", i)
                  for i in np.asarray(indices_or_sections).reshape(-1).tolist()] \
            if np.size(indices_or_sections) else []
        cuts = list(zip([None] + points, points + [None]))
    head = (slice(None),) * axis
    return [lax.getitem(x, head + (slice(lo, hi),)) for lo, hi in cuts]


def split(x, indices_or_sections, axis=0):
    """x cut along axis into equal pieces (an int that must divide the axis) or at the given
    indices, as np.split; np.array_split allows unequal pieces."""
    x = as_array(x)
    if isinstance(indices_or_sections, (int, np.integer)) and shape_of(x):
        n = int(indices_or_sections)
        (ax,) = normalize_axes(axis, len(shape_of(x)), "split")
        if n >= 1 and shape_of(x)[ax] % n:
            raise argument_error(ValueError, f"split: axis {axis} of size {shape_of(x)[ax]} does "
                                             f"not divide into {n} equal sections; use "
                                             f"array_split for unequal pieces")
    return array_split(x, indices_or_sections, axis)


def _triangle(op, x, k, keep):
    x = as_array(x)
    k = _static_int(op, "k", k)
    shape = shape_of(x)
    if not shape:
        raise argument_error(ShapeError, f"{op}: x needs at least one axis, got a 0-d array")
    m, n = shape[-2:] if len(shape) >= 2 else (shape[-1], shape[-1])  # 1-D: as NumPy, (n, n)
    rows, cols = lax.iota((m, n), 0), lax.iota((m, n), 1)
    mask = lax.compare(keep, cols, lax.add(rows, k))  # fuses: no mask array is stored
    return lax.where(mask, x, np.zeros((), np.dtype(x.dtype)))


def tril(x, k=0):
    """x with the elements above the k-th diagonal zeroed (j > i + k), over the last two axes."""
    return _triangle("tril", x, k, "le")


def triu(x, k=0):
    """x with the elements below the k-th diagonal zeroed (j < i + k), over the last two axes."""
    return _triangle("triu", x, k, "ge")


def take_along_axis(x, indices, axis=-1):
    """out[..., j, ...] = x[..., indices[..., j, ...], ...] along axis, as np.take_along_axis
    (x and indices broadcast on the other axes; axis=None: x flattened, 1-D indices).

    One gather from the flattened x at computed flat offsets, so the gradient is one
    scatter_add. The indices are bounds-checked against the axis (negative ones count from the
    end), at trace time when they are constants, in the compiled code when traced."""
    x = as_array(x)
    if axis is None:
        x, axis = lax.reshape(x, (-1,)), 0
    if not is_array(indices):
        indices = np.asarray(indices)
    traced = not isinstance(indices, (np.ndarray, np.generic))
    if np.dtype(indices.dtype).kind not in "iu":
        raise argument_error(TypeError, f"take_along_axis: indices must be integers, got "
                                        f"{np.dtype(indices.dtype)}")
    xs, ids = shape_of(x), shape_of(indices)
    if len(xs) != len(ids):
        raise argument_error(ShapeError, f"take_along_axis: indices must have as many axes as x "
                                         f"(x shape {xs}, indices shape {ids})")
    if not xs:
        raise argument_error(ShapeError, "take_along_axis: x needs at least one axis")
    (axis,) = normalize_axes(axis, len(xs), "take_along_axis")
    size = xs[axis]
    others = broadcast_shapes(xs[:axis] + (1,) + xs[axis + 1:],
                              ids[:axis] + (1,) + ids[axis + 1:], op="take_along_axis")
    x_shape = others[:axis] + (size,) + others[axis + 1:]
    out_shape = others[:axis] + (ids[axis],) + others[axis + 1:]
    x = lax.broadcast_to(x, x_shape)
    strides = [int(np.prod(x_shape[d + 1:], dtype=np.int64)) for d in range(len(x_shape))]
    if traced:
        idx = lax.broadcast_to(lax.convert(indices, "int64"), out_shape)
        idx = lax.check_index(lax.where(lax.compare("lt", idx, 0), lax.add(idx, size), idx),
                              size)
        flat = lax.mul(idx, strides[axis])
        for d, (dim, stride) in enumerate(zip(out_shape, strides)):
            if d != axis and dim > 1:
                flat = lax.add(flat, lax.mul(lax.iota(out_shape, d), stride))
    else:
        idx = np.broadcast_to(np.asarray(indices, np.int64), out_shape)
        if idx.size and (idx.min() < -size or idx.max() >= size):
            raise argument_error(IndexError, f"take_along_axis: index out of range for axis "
                                             f"{axis} of size {size}")
        grids = np.indices(out_shape, sparse=True)
        flat = (idx % max(size, 1)) * strides[axis] + sum(
            (g * s for d, (g, s) in enumerate(zip(grids, strides)) if d != axis),
            np.zeros((), np.int64))
    return lax.gather(lax.reshape(x, (-1,)), flat, 0)
