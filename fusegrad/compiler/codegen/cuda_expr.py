"""One scalar expression per elementwise primitive inside a CUDA kernel (the CUDA emitter table).

Derived from the CPU table (cpu_expr.CPU_EXPR): arithmetic, comparisons, select, casts and the
NaN-propagating maximum/minimum read the same in both. What differs is the math library: a
kernel calls `math.*` (which numba.cuda maps to CUDA's libdevice, float32 in, float32 out)
instead of NumPy's functions or cpu_math's vectorisable approximations. float32 results are
wrapped in np.float32(...): a no-op on the GPU, and on the simulator, where `math.exp` returns
a Python float, it rounds as the GPU would.
"""
from __future__ import annotations

from .cpu_expr import CPU_EXPR, literal

def _typed(expr, dtype):
    return f"np.float32({expr})" if dtype == "float32" else expr


def _math(fn):
    def emit(args, node, dtype, exact_math=False):
        return _typed(f"math.{fn}({args[0]})", dtype)

    return emit


def _rsqrt(args, node, dtype, exact_math=False):
    return f"({literal(1, dtype)} / {_typed(f'math.sqrt({args[0]})', dtype)})"


def _sigmoid(args, node, dtype, exact_math=False):
    one = literal(1, dtype)
    return f"({one} / ({one} + {_typed(f'math.exp(-{args[0]})', dtype)}))"


def _sign(args, node, dtype, exact_math=False):
    x, one, zero = args[0], literal(1, dtype), literal(0, dtype)
    return f"({one} if {x} > {zero} else (-{one} if {x} < {zero} else {x}))"  # NaN stays NaN


def _pow(args, node, dtype, exact_math=False):
    return f"({args[0]} ** {args[1]})"


def _abs(args, node, dtype, exact_math=False):
    return f"abs({args[0]})"


CUDA_EXPR = dict(CPU_EXPR)
CUDA_EXPR.update({
    "exp": _math("exp"),
    "log": _math("log"),
    "log1p": _math("log1p"),
    "sqrt": _math("sqrt"),
    "tanh": _math("tanh"),
    "erf": _math("erf"),
    "sin": _math("sin"),
    "cos": _math("cos"),
    "rsqrt": _rsqrt,
    "sigmoid": _sigmoid,
    "sign": _sign,
    "pow": _pow,
    "abs": _abs,
})


def numba_type(dtype: str) -> str:
    """The Numba type a kernel declares shared arrays with (numba.float32, ...)."""
    return "numba.boolean" if dtype == "bool" else f"numba.{dtype}"
