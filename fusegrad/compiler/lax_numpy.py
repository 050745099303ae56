"""NumPy-style composites of the primitive wrappers (lax.py), as jax.numpy is of jax.lax: what
a traced array's methods (x.var(), x.clip(), x & y, x.squeeze()) and the fg.* functions of the
same names both call. Argument checks raise errors that name the user's line.
"""
from __future__ import annotations

import numpy as np

from ..ir.printer import short_loc
from ..ir.types import ShapeError, normalize_axes
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
