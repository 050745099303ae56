"""One scalar Numba expression per elementwise primitive (the CPU emitter table).

An entry is `fn(args, node, dtype) -> str`: `args` are the operands' local names, `dtype` the
result dtype. float32 transcendentals call the vectorisable approximations of cpu_math unless
exact math is asked for (FUSEGRAD_EXACT_MATH=1 or exact=True); float64 always uses libm.
"""
from __future__ import annotations

import math

import numpy as np

from .common import NP_TYPE as _NP_TYPE


def literal(value, dtype: str) -> str:
    """A typed literal: float32 constants must stay float32 (a bare 0.5 is float64)."""
    if dtype == "bool":
        return "True" if bool(value) else "False"
    v = float(value) if dtype.startswith("float") else int(value)
    if dtype.startswith("float"):
        if math.isnan(v):
            text = "np.nan"
        elif math.isinf(v):
            text = "np.inf" if v > 0 else "-np.inf"
        else:  # the shortest text that reads back as the same value: 0.9, not 0.89999997
            exact = np.dtype(dtype).type(v)
            text = str(exact)
            if np.dtype(dtype).type(float(text)) != exact:
                text = repr(float(exact))
        return f"{_NP_TYPE[dtype]}({text})"
    return f"{_NP_TYPE[dtype]}({v})"


def _one(dtype):
    return literal(1, dtype)


def _math(approx_name, exact):
    """exp/log/tanh/...: the float32 approximation, or the exact libm form."""

    def emit(args, node, dtype, exact_math=False):
        if dtype == "float32" and not exact_math:
            return f"{approx_name}({args[0]})"
        return exact(args[0], dtype)

    return emit


def _sigmoid_exact(x, dtype):
    one = _one(dtype)
    return f"({one} / ({one} + np.exp(-{x})))"


def _cast(args, node, dtype, exact_math=False):
    x = args[0]
    if dtype == "bool":
        return f"({x} != 0)"
    return f"{_NP_TYPE[dtype]}({x})"


def _maximum(args, node, dtype, exact_math=False):
    a, b = args  # NaN-propagating like np.maximum, and a select LLVM can vectorise
    return f"({a} if ({a} > {b} or {a} != {a}) else {b})"


def _minimum(args, node, dtype, exact_math=False):
    a, b = args
    return f"({a} if ({a} < {b} or {a} != {a}) else {b})"


def _infix(op):
    return lambda args, node, dtype, exact_math=False: f"({args[0]} {op} {args[1]})"


def _call(fn):
    return lambda args, node, dtype, exact_math=False: f"{fn}({', '.join(args)})"


CPU_EXPR = {
    "neg": lambda args, node, dtype, exact_math=False: f"(-{args[0]})",
    "exp": _math("exp_f32", lambda x, d: f"np.exp({x})"),
    "log": _math("log_f32", lambda x, d: f"np.log({x})"),
    "log1p": _call("np.log1p"),
    "sqrt": _call("np.sqrt"),
    "rsqrt": lambda args, node, dtype, exact_math=False: f"({_one(dtype)} / np.sqrt({args[0]}))",
    "tanh": _math("tanh_f32", lambda x, d: f"np.tanh({x})"),
    "sigmoid": _math("sigmoid_f32", _sigmoid_exact),
    "abs": _call("np.abs"),
    "sign": _call("np.sign"),
    "sin": _call("np.sin"),
    "cos": _call("np.cos"),
    "erf": _math("erf_f32", lambda x, d: f"{_NP_TYPE[d]}(math.erf({x}))"),
    "reciprocal": lambda args, node, dtype, exact_math=False: f"({_one(dtype)} / {args[0]})",
    "stop_gradient": lambda args, node, dtype, exact_math=False: args[0],
    "add": _infix("+"),
    "sub": _infix("-"),
    "mul": _infix("*"),
    "div": _infix("/"),
    "pow": _call("np.power"),
    "maximum": _maximum,
    "minimum": _minimum,
    "eq": _infix("=="),
    "ne": _infix("!="),
    "lt": _infix("<"),
    "le": _infix("<="),
    "gt": _infix(">"),
    "ge": _infix(">="),
    "select": lambda args, node, dtype, exact_math=False: f"({args[1]} if {args[0]} else {args[2]})",
    "cast": _cast,
    # these move no data inside a loop: the index maps already address the operand
    "broadcast_to": lambda args, node, dtype, exact_math=False: args[0],
    "reshape": lambda args, node, dtype, exact_math=False: args[0],
}
