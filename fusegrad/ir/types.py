"""TensorType and NumPy broadcasting rules."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dtypes import DTYPES, as_dtype, short_name


_ITEMSIZE = {d: np.dtype(d).itemsize for d in DTYPES}


class ShapeError(ValueError):
    """Shapes that do not fit an operation; the message names the op and every shape involved."""


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "dtype", as_dtype(self.dtype))
        shape = tuple(int(s) for s in self.shape)
        if any(s < 0 for s in shape):
            raise ShapeError(f"negative dimension in shape {shape}")
        object.__setattr__(self, "shape", shape)
        # an attribute, not a property: fusion asks ~100k times a program
        object.__setattr__(self, "size", math.prod(shape))  # exact Python ints

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * _ITEMSIZE[self.dtype]

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype) -> "TensorType":
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{short_name(self.dtype)}[{','.join(map(str, self.shape))}]"

    @staticmethod
    def of(array) -> "TensorType":
        a = np.asarray(array)
        return TensorType(as_dtype(a.dtype), a.shape)


def is_device_array(x) -> bool:
    """Is x an array in GPU memory (a Numba device array, CuPy, anything with the CUDA array
    interface, or the CUDA simulator's stand-in)? Its shape and dtype type it; it is never read
    on the host to do so."""
    return (hasattr(x, "__cuda_array_interface__")
            or getattr(type(x), "__cuda_ndarray__", False) is True)


def broadcast_shapes(*shapes, op: str = "broadcast") -> tuple[int, ...]:
    """NumPy broadcasting of several shapes; raises ShapeError naming `op` and all shapes."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(-ndim, 0):
        dims = {s[axis] for s in shapes if len(s) >= -axis} - {1}
        if len(dims) > 1:
            pretty = " and ".join(str(tuple(s)) for s in shapes)
            raise ShapeError(f"{op}: shapes {pretty} do not broadcast (axis {axis})")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def broadcast_axes(from_shape, to_shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Which axes of `to_shape` were created or stretched when broadcasting `from_shape` to it.

    Returns (leading_axes, stretched_axes): summing the gradient over both and dropping the
    leading ones undoes the broadcast.
    """
    lead = len(to_shape) - len(from_shape)
    leading = tuple(range(lead))
    stretched = tuple(
        lead + i for i, d in enumerate(from_shape) if d == 1 and to_shape[lead + i] != 1
    )
    return leading, stretched


def normalize_axes(axes, ndim: int, op: str = "reduce") -> tuple[int, ...]:
    """None -> all axes; ints may be negative; sorted, unique, range-checked."""
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, (int, np.integer)):
        axes = (int(axes),)
    out = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < ndim:
            raise ShapeError(f"{op}: axis {a} is out of range for an array of {ndim} dimensions")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: repeated axis in {tuple(axes)}")
    return tuple(sorted(out))
