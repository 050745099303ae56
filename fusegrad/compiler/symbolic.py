"""Tracer objects and the trace context that records what is done to them as IR nodes.

A Tracer stands for one graph Var while a user function runs. Python operators, methods and
NumPy's own functions (through __array_ufunc__ / __array_function__) record primitives instead of
computing. Operations that would need the *value* (branching with `if`, `float(x)`, np.asarray)
raise a TypeError that explains why and what to use instead.
"""
from __future__ import annotations

import os
import sys
import threading

import numpy as np

from ..ir import Attrs, ConstArray, GraphBuilder, ShapeError, TensorType
from ..ir.types import normalize_axes
from ..ir.dtypes import to_numpy

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__))

# Filled by fusegrad.ops (the front layer): NumPy callable -> fusegrad implementation.
NUMPY_FUNCTIONS: dict = {}
NUMPY_UFUNCS: dict = {}
# Also filled by fusegrad.ops, for the errors about what is not supported: the fg.* op names
# (the only fg names an error may suggest by NumPy's name) and, per NumPy callable or ndarray
# method name, what to use instead (naming real fg.* functions: tests/test_array_api.py
# resolves every name an error suggests).
PUBLIC_OPS: set = set()
NUMPY_HINTS: dict = {}

# counters of the draws from a trace's own key start here, far from the small counters users
# pass with an explicit key=(seed, counter)
IMPLICIT_COUNTERS = 1 << 40


class _TraceStack(threading.local):
    """The traces in progress, per thread: two threads may trace (and compile) at once."""

    def __init__(self):
        self.stack: list["TraceContext"] = []


_TRACES = _TraceStack()


def user_location() -> str | None:
    """`file:line` of the innermost frame outside fusegrad and NumPy: the user's source line."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not (path.startswith(_PACKAGE_DIR) or path.startswith(_NUMPY_DIR)
                or path.startswith("<frozen")):
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _at(loc):
    if not loc:
        return ""
    path, _, line = loc.rpartition(":")
    return f" (at {os.path.basename(path)}:{line})"


class TraceError(TypeError):
    """Something a traced function did that cannot be compiled; says what to do instead."""


def _instead(key, name) -> str:
    """What to do instead of NumPy's `name` (`key`: the callable): a hint naming real fg.*
    functions, fg.<name> where that exists, else computing it outside."""
    hint = NUMPY_HINTS.get(key) or NUMPY_HINTS.get(name)
    if hint is None and name in PUBLIC_OPS:
        hint = f"fg.{name}"
    outside = "compute it outside the compiled function"
    return f"use {hint}, or {outside}" if hint else outside


class TraceContext:
    """One tracing session: a GraphBuilder plus constant de-duplication."""

    def __init__(self, name: str, builder: GraphBuilder | None = None,
                 parent: "TraceContext | None" = None):
        # `builder`: record into a graph being built elsewhere (an optimizer's traced update
        # appends to the step graph)
        self.builder = builder if builder is not None else GraphBuilder(name)
        self._constants: dict = {}
        # a nested trace (fg.scan's body): values of the enclosing traces it uses become inputs
        # of its own (`captured`: outer Var -> this trace's input Var, in first-use order)
        self.parent = parent
        self.depth = parent.depth + 1 if parent is not None else 0
        self.captured: dict = {}
        # the random key of this trace (fg.train_step's, new every step) for random ops called
        # without one (fg.dropout); `make_random_key` creates it on first use
        self.random_key: "Tracer | None" = None
        self.make_random_key = None
        self._draws = 0
        self.assignments: dict = {}  # input Var -> the Var fg.assign gave it (in call order)

    def assign(self, target: "Tracer", value) -> None:
        """Record that input `target` gets `value` when the compiled call ends (fg.assign)."""
        inputs = self.builder.inputs
        var = target._var
        if not any(v is var for v in inputs):
            raise TraceError(f"fg.assign: the target must be an argument of the compiled function "
                             f"(a leaf of its params), not a value computed in it"
                             f"{_at(user_location())}")
        if var in self.assignments:
            raise TraceError(f"fg.assign: {self.builder.input_names[inputs.index(var)]} is "
                             f"assigned twice in one call{_at(user_location())}")
        new = self.lift(value)
        if new.shape != var.shape:
            raise ShapeError(f"fg.assign: {self.builder.input_names[inputs.index(var)]} is "
                             f"{var.type}, the value {new.type}{_at(user_location())}")
        if new.dtype != var.dtype:
            new = self.builder.emit("cast", (new,), Attrs(dtype=var.dtype), loc=user_location())
        self.assignments[var] = new

    def draw_key(self):
        """(key tracer, counter) for one more random op drawing from the trace's key, distinct
        from every other draw of this trace; None when the trace has no key."""
        if self.random_key is None and self.make_random_key is not None:
            self.random_key = self.make_random_key()
        if self.random_key is None:
            return None
        self._draws += 1
        return self.random_key, IMPLICIT_COUNTERS + self._draws

    def __enter__(self):
        _TRACES.stack.append(self)
        return self

    def __exit__(self, *exc):
        _TRACES.stack.pop()

    def new_input(self, type: TensorType, name: str, role: str) -> "Tracer":
        return Tracer(self, self.builder.add_input(type, name, role))

    def lift(self, x):
        """A Var for `x`: a tracer of this trace, or a NumPy value recorded as a constant."""
        if isinstance(x, Tracer):
            if x._ctx is not self and self._encloses(x._ctx):
                return self._capture(x)
            if x._ctx is not self:
                raise TraceError(
                    "a traced value from another trace was used here (a 'leaked' tracer, e.g. "
                    "one stored in a global during an earlier call); pass it as an argument instead"
                )
            return x._var
        value = ConstArray(np.asarray(x))
        var = self._constants.get(value)
        if var is None:
            var = self.builder.emit("constant", (), Attrs(value=value), loc=user_location())
            self._constants[value] = var
        return var

    def _encloses(self, ctx) -> bool:
        p = self.parent
        while p is not None and p is not ctx:
            p = p.parent
        return p is not None

    def _capture(self, x: "Tracer"):
        """The input of this (nested) trace standing for enclosing-trace value `x`."""
        outer = self.parent.lift(x)  # through every trace in between
        inner = self.captured.get(outer)
        if inner is None:
            inner = self.captured[outer] = self.builder.add_input(outer.type, "captured")
        return inner

    def emit(self, op, args, attrs) -> "Tracer":
        loc = user_location()
        vars_ = [self.lift(a) for a in args]
        try:
            var = self.builder.emit(op, vars_, attrs, loc=loc)
        except (ShapeError, TypeError) as exc:
            raise type(exc)(f"{exc}{_at(loc)}") from None
        return Tracer(self, var)


def assign(target, value):
    """Give `target`, a leaf of a compiled function's arguments (a buffer such as batch norm's
    running mean), the value `value` when the call ends: fg.train_step writes it in place after
    its update (all or nothing, with the update), fg.jit and fg.grad after the call. Reads of
    `target` in the same call see its old value. Assigned leaves are never trained and get no
    gradient (None in fg.grad's result). Outside a compiled function it writes at once.
    Returns `value`."""
    if isinstance(target, Tracer):
        target._ctx.assign(target, value)
        return value
    if isinstance(value, Tracer):
        raise TraceError("fg.assign: the target is a NumPy array, not an argument of the "
                         "function being compiled; pass it in (as a leaf of params)")
    if not isinstance(target, np.ndarray) or not target.flags.writeable:
        raise TypeError(f"fg.assign: the target must be a writable NumPy array, got "
                        f"{type(target).__name__}")
    value = np.asarray(value)
    if value.shape != target.shape:
        raise ShapeError(f"fg.assign: the target is {target.dtype}{list(target.shape)}, the value "
                         f"{value.dtype}{list(value.shape)}")
    np.copyto(target, value, casting="same_kind")
    return value


def current_trace() -> TraceContext | None:
    stack = _TRACES.stack
    return stack[-1] if stack else None


def context_of(args) -> TraceContext | None:
    """The trace an operation on `args` records into: the innermost of their traces (values of
    enclosing traces are captured by the nested one: a scan body using outer weights)."""
    found = None
    for a in args:
        if isinstance(a, Tracer) and (found is None or a._ctx.depth > found.depth):
            found = a._ctx
    return found


def _value_needed(what: str, fix: str):
    def method(self, *args, **kwargs):
        raise TraceError(
            f"{what} needs the value of a traced array{_at(user_location())}, but while tracing "
            f"{self._var.type} only stands for a value the compiled code will compute. {fix}"
        )

    return method


_BRANCH_FIX = ("Python control flow runs once, at trace time; to choose between values use "
               "fg.where(cond, a, b), or pass the flag as a Python bool argument (static).")


class Tracer:
    """A traced array: behaves like an np.ndarray of a fixed shape and dtype."""

    __array_priority__ = 1000
    __slots__ = ("_ctx", "_var")

    def __init__(self, ctx: TraceContext, var):
        self._ctx = ctx
        self._var = var

    # ---- static facts are known while tracing ----
    @property
    def shape(self):
        return self._var.type.shape

    @property
    def dtype(self):
        return to_numpy(self._var.type.dtype)

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return self._var.type.size

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d traced array")
        return self.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        return f"Tracer({self._var.type})"

    __hash__ = object.__hash__

    # ---- values are not known ----
    __bool__ = _value_needed("`if`/`while`/`and`/`or` on a traced value", _BRANCH_FIX)
    __int__ = _value_needed("int()", "Keep it an array, or pass the number as a Python int.")
    __float__ = _value_needed("float()", "Return the array and convert after the call.")
    __index__ = _value_needed("using a traced value as an index size", "Use fg.take / indexing.")
    __complex__ = _value_needed("complex()", "Complex numbers are not supported.")
    tolist = _value_needed(".tolist()", "Return the array and convert after the call.")
    item = _value_needed(".item()", "Return the array and convert after the call.")

    def __array__(self, dtype=None, copy=None):
        raise TraceError(
            f"np.asarray / np.array was called on a traced {self._var.type}"
            f"{_at(user_location())}; inside a compiled function use the fusegrad or NumPy "
            f"functions on it directly (they are traced), not a conversion to a concrete array"
        )

    # ---- NumPy protocols ----
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if kwargs.get("out") is not None:
            raise TraceError(f"out= is not supported on traced arrays{_at(user_location())}: "
                             f"use the return value of np.{ufunc.__name__} instead")
        impl = NUMPY_UFUNCS.get(ufunc) if method == "__call__" else None
        if impl is None:
            what = f"np.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
            hint = NUMPY_HINTS.get(ufunc) if method == "__call__" else None
            raise TraceError(f"{what} is not supported on traced arrays{_at(user_location())}; "
                             + (f"use {hint}; " if hint else "")
                             + f"supported ufuncs: "
                             f"{', '.join(sorted(u.__name__ for u in NUMPY_UFUNCS))}")
        kwargs.pop("out", None)
        return impl(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        impl = NUMPY_FUNCTIONS.get(func)
        if impl is None:
            module = (getattr(func, "__module__", None) or "numpy").replace("numpy", "np", 1)
            module = "np" if module.startswith("np._core") or module == "np" else module
            raise TraceError(f"{module}.{func.__name__} is not supported on traced arrays"
                             f"{_at(user_location())}; {_instead(func, func.__name__)}")
        return impl(*args, **kwargs)

    # ---- operators (lax is imported at the bottom: it imports this module) ----
    def __add__(self, o): return lax.add(self, o)
    def __radd__(self, o): return lax.add(o, self)
    def __sub__(self, o): return lax.sub(self, o)
    def __rsub__(self, o): return lax.sub(o, self)
    def __mul__(self, o): return lax.mul(self, o)
    def __rmul__(self, o): return lax.mul(o, self)
    def __truediv__(self, o): return lax.div(self, o)
    def __rtruediv__(self, o): return lax.div(o, self)
    def __pow__(self, o): return lax.power(self, o)
    def __rpow__(self, o): return lax.power(o, self)
    def __matmul__(self, o): return lax.matmul(self, o)
    def __rmatmul__(self, o): return lax.matmul(o, self)
    def __neg__(self): return lax.unary("neg", self)
    def __pos__(self): return self
    def __abs__(self): return lax.unary("abs", self)
    def __lt__(self, o): return lax.compare("lt", self, o)
    def __le__(self, o): return lax.compare("le", self, o)
    def __gt__(self, o): return lax.compare("gt", self, o)
    def __ge__(self, o): return lax.compare("ge", self, o)
    def __eq__(self, o): return lax.compare("eq", self, o)  # noqa: E704
    def __ne__(self, o): return lax.compare("ne", self, o)
    def __getitem__(self, key): return lax.getitem(self, key)
    # logical operators on bool arrays (as NumPy's &, |, ^, ~ on bool arrays)
    def __and__(self, o): return self._logical("logical_and", self, o)
    def __rand__(self, o): return self._logical("logical_and", self, o)
    def __or__(self, o): return self._logical("logical_or", self, o)
    def __ror__(self, o): return self._logical("logical_or", self, o)
    def __xor__(self, o): return self._logical("logical_xor", self, o)
    def __rxor__(self, o): return self._logical("logical_xor", self, o)
    def __invert__(self): return self._logical("logical_not", self)

    def _logical(self, name, *operands):
        if self.dtype != np.bool_:
            raise TraceError(f"bitwise operators on {self._var.type} are not supported"
                             f"{_at(user_location())}; they work on bool arrays (masks)")
        return getattr(lax_numpy, name)(*operands)

    # ---- ndarray methods (NumPy's signatures; out= and order= only at their defaults) ----
    @property
    def T(self):
        return lax.transpose(self, None)

    @property
    def mT(self):
        return lax_numpy.matrix_transpose(self)

    def transpose(self, *axes):
        return lax.transpose(self, axes[0] if len(axes) == 1 else (axes or None))

    def swapaxes(self, axis1, axis2):
        return lax_numpy.swapaxes(self, axis1, axis2)

    def reshape(self, *shape, order="C", copy=None):
        _defaults("reshape", order=(order, "C"))
        return lax.reshape(self, shape[0] if len(shape) == 1 else shape)

    def ravel(self, order="C"):
        _defaults("ravel", order=(order, "C"))
        return lax.reshape(self, (-1,))

    flatten = ravel

    def astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
        _defaults("astype", order=(order, "K"), casting=(casting, "unsafe"))
        return lax.cast(self, dtype)

    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        _defaults("sum", out=(out, None))
        return lax.reduce_sum(self._as(dtype), axis, keepdims)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        _defaults("mean", out=(out, None))
        return lax.mean(self._as(dtype), axis, keepdims)

    def max(self, axis=None, out=None, keepdims=False):
        _defaults("max", out=(out, None))
        return lax.reduce_max(self, axis, keepdims)

    def min(self, axis=None, out=None, keepdims=False):
        _defaults("min", out=(out, None))
        return lax.reduce_min(self, axis, keepdims)

    def argmax(self, axis=None, out=None, keepdims=False):
        _defaults("argmax", out=(out, None))
        out = lax.argmax(self, axis)
        if not keepdims:
            return out
        shape = [1] * self.ndim if axis is None else list(self.shape)
        if axis is not None:
            shape[normalize_axes(axis, self.ndim, "argmax")[0]] = 1
        return lax.reshape(out, tuple(shape))

    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        _defaults("var", out=(out, None))
        return lax_numpy.var(self._as(dtype), axis, keepdims, ddof)

    def std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        _defaults("std", out=(out, None))
        return lax_numpy.std(self._as(dtype), axis, keepdims, ddof)

    def clip(self, min=None, max=None, out=None, **kwargs):  # noqa: A002  (NumPy's names)
        _defaults("clip", out=(out, None))
        return lax_numpy.clip(self, kwargs.pop("a_min", min), kwargs.pop("a_max", max),
                              **kwargs)

    def squeeze(self, axis=None):
        return lax_numpy.squeeze(self, axis)

    def _as(self, dtype):
        return self if dtype is None else lax.cast(self, dtype)

    def __getattr__(self, name):
        # only reached for names the class lacks: an ndarray method or attribute the tracer
        # does not have gets an error that says so, and what to use if anything
        if not name.startswith("_") and hasattr(np.ndarray, name):
            raise AttributeError(f"ndarray.{name} is not supported on traced arrays"
                                 f"{_at(user_location())}; {_instead(name, name)}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _defaults(method, **given):
    """Raise for an argument of an ndarray method given other than its default (out=, order=)."""
    for name, (value, default) in given.items():
        if not (value is default or (isinstance(value, str) and value == default)):
            raise TraceError(f".{method}({name}={value!r}) is not supported on traced arrays"
                             f"{_at(user_location())}; leave {name} at its default "
                             f"({default!r}) and use the return value")


# circular by design: lax and lax_numpy build on Tracer
from . import lax, lax_numpy  # noqa: E402
