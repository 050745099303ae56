"""Scalar and pointer types of the kernel language, and Numba's rules for combining them.

The kernel language is the subset of Python that fusegrad's code generator writes (see
native/__init__.py). Its values are scalars or typed pointers; the promotion rules below are
Numba's (measured on numba 0.68), so the same kernel text gives the same types whether Numba or
the native compiler compiles it:

    integer op integer   -> int64 (uint64 only when both are uint64); bool counts as an integer
    bool op float32      -> float32;  any other integer op float32 -> float64
    float32 op float32   -> float32;  float32 op float64 -> float64
    integer / integer    -> float64;  comparisons -> bool;  bool & bool -> bool
    float32 ** integer   -> float32   (the one exception to the float32 rule)
"""
from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir


@dataclass(frozen=True)
class Scalar:
    name: str  # numpy name: bool, int32, int64, uint64, float32, float64
    kind: str  # "b", "i", "u", "f"
    bits: int

    @property
    def is_float(self) -> bool:
        return self.kind == "f"

    @property
    def is_int(self) -> bool:  # bool included: it takes part in integer arithmetic
        return self.kind in "biu"

    @property
    def signed(self) -> bool:
        return self.kind == "i"

    def llvm(self) -> ir.Type:
        """The type of a value in registers (bool: i1)."""
        if self.kind == "f":
            return ir.FloatType() if self.bits == 32 else ir.DoubleType()
        return ir.IntType(self.bits)

    def llvm_memory(self) -> ir.Type:
        """The type of an element in memory (bool: one byte, as NumPy stores it)."""
        return ir.IntType(8) if self.kind == "b" else self.llvm()

    def __str__(self):
        return self.name


@dataclass(frozen=True)
class Pointer:
    elem: Scalar

    def llvm(self) -> ir.Type:
        return self.elem.llvm_memory().as_pointer()

    def __str__(self):
        return f"{SHORT[self.elem.name]}*"


@dataclass(frozen=True)
class Tuple:
    items: tuple

    def llvm(self) -> ir.Type:
        return ir.LiteralStructType([t.llvm() for t in self.items])

    def __str__(self):
        return "(" + ", ".join(map(str, self.items)) + ")"


class _Void:
    def llvm(self):
        return ir.VoidType()

    def __str__(self):
        return "void"


VOID = _Void()

BOOL = Scalar("bool", "b", 1)
INT8 = Scalar("int8", "i", 8)
INT32 = Scalar("int32", "i", 32)
INT64 = Scalar("int64", "i", 64)
UINT64 = Scalar("uint64", "u", 64)
FLOAT32 = Scalar("float32", "f", 32)
FLOAT64 = Scalar("float64", "f", 64)

SCALARS = {t.name: t for t in (BOOL, INT8, INT32, INT64, UINT64, FLOAT32, FLOAT64)}
SHORT = {"bool": "b1", "int8": "i8", "int32": "i32", "int64": "i64", "uint64": "u64",
         "float32": "f32", "float64": "f64"}
_BY_SHORT = {v: SCALARS[k] for k, v in SHORT.items()}


def parse_type(text: str):
    """'f32' -> FLOAT32, 'f32*' -> Pointer(FLOAT32) (the names kernel signatures use)."""
    text = text.strip()
    if text.endswith("*"):
        return Pointer(parse_type(text[:-1]))
    try:
        return _BY_SHORT[text]
    except KeyError:
        raise TypeError(f"unknown kernel type {text!r}; use one of "
                        f"{', '.join(_BY_SHORT)} or a pointer to one (f32*)") from None


def arith(a: Scalar, b: Scalar, op: str = "+") -> Scalar:
    """The result type of `a op b` for + - * // % ** and the bitwise operators (Numba's)."""
    if a.is_float or b.is_float:
        if op == "**" and a == FLOAT32 and b.is_int:
            return FLOAT32
        floats = [t for t in (a, b) if t.is_float]
        others = [t for t in (a, b) if not t.is_float]
        if all(t == FLOAT32 for t in floats) and all(t == BOOL for t in others):
            return FLOAT32
        return FLOAT64
    if op in ("&", "|", "^") and a == BOOL and b == BOOL:
        return BOOL
    return UINT64 if a == UINT64 and b == UINT64 else INT64


def true_div(a: Scalar, b: Scalar) -> Scalar:
    return arith(a, b) if (a.is_float or b.is_float) else FLOAT64


def unify(a, b):
    """The type a variable assigned both an `a` and a `b` value gets (None: not yet typed)."""
    if a is None or a == b:
        return b
    if b is None:
        return a
    if isinstance(a, Scalar) and isinstance(b, Scalar):
        return arith(a, b)
    raise TypeError(f"a variable holds both {a} and {b}")
