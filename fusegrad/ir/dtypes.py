"""The five dtypes the IR knows, and NumPy-compatible promotion between them."""
from __future__ import annotations

import numpy as np

# Short names are what the printer shows: f32[128,784], i64[128], b1[4].
_SHORT = {
    "float32": "f32",
    "float64": "f64",
    "int32": "i32",
    "int64": "i64",
    "bool": "b1",
}

DTYPES = tuple(_SHORT)
FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("int32", "int64")


def as_dtype(d) -> str:
    """Normalise a dtype-like (np.float32, 'f4', np.dtype, 'float32', bool) to one of DTYPES."""
    if isinstance(d, str) and d in _SHORT:
        return d
    if isinstance(d, str) and d in _SHORT.values():
        return next(k for k, v in _SHORT.items() if v == d)
    try:
        name = np.dtype(d).name
    except TypeError as exc:
        raise TypeError(f"not a dtype: {d!r}") from exc
    if name not in _SHORT:
        raise TypeError(
            f"fusegrad supports dtypes {', '.join(DTYPES)}; got {name}. "
            f"Convert the array first, e.g. x.astype(np.float32)."
        )
    return name


def short_name(dtype: str) -> str:
    return _SHORT[dtype]


def to_numpy(dtype: str) -> np.dtype:
    return np.dtype(dtype)


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


def is_int(dtype: str) -> bool:
    return dtype in INT_DTYPES


def is_bool(dtype: str) -> bool:
    return dtype == "bool"


def promote(a: str, b: str) -> str:
    """NumPy's promotion restricted to our dtypes (int32 + float32 -> float64, as NumPy does)."""
    return np.promote_types(a, b).name
