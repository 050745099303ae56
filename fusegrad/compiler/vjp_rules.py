"""VJP rules: one row per primitive that builds the cotangents of its inputs as IR nodes.

The differentiable primitives have a rule of their own here; the others (differentiable=False in
their registry rows, ir/ops.py: comparisons, argmax, sign, check_index, the sources,
stop_gradient) share _no_gradient, which passes no gradient to any input.

A rule is `rule(e, node, g, need) -> tuple` with one entry per input of `node`: a Var holding
that input's cotangent, or None where the input has no gradient (integers, comparisons, indices)
or `need[i]` is False (nothing is emitted for inputs nobody differentiates). Cotangents of
broadcasting ops may come back in the *output's* shape: the driver (autodiff.py) sums them down
to each input's shape in one place.

Every rule is written with primitives that have rules themselves, so gradients of gradients work.

Conventions at non-differentiable points (documented for users in README):
- maximum/minimum: at ties the gradient is split evenly between the two inputs (as PyTorch's
  torch.maximum and JAX's lax.max); reductions by max split it evenly among tied maxima.
- abs'(0) = 0 (through sign), sign' = 0, relu'(0) = 0.5 (relu is maximum(x, 0)).
- sqrt'(0) = +inf and log'(0) = +inf, following NumPy's arithmetic.
"""
from __future__ import annotations

import math

from ..ir.ops import packed_offsets, prims_where
from .scan_vjp import scan_vjp


def _unary(fn):
    """Rule for a one-input op from `fn(e, x, y, g) -> cotangent of x`."""
    return lambda e, n, g, need: (fn(e, n.inputs[0], n.out, g),)


def _pow(e, n, g, need):
    x, p = n.inputs
    gx = gp = None
    if need[0]:  # p * x**(p-1)
        gx = e.mul(g, e.mul(p, e("pow", x, e.sub(p, 1))))
    if need[1]:  # x**p * log(x), with log(0) read as 0 so x = 0 contributes nothing
        safe_x = e.select(e("eq", x, e.const(0, x.dtype)), 1, x)
        gp = e.mul(g, e.mul(n.out, e("log", safe_x)))
    return gx, gp


def _minmax(compare):
    def rule(e, n, g, need):
        a, b = n.inputs
        # the constants need a dtype: with two Python scalars Emitter.select has no Var to copy
        half = e.select(e("eq", a, b), e.const(0.5, a.dtype), e.const(0, a.dtype))
        wins = e.select(e(compare, a, b), 1, half)
        ga = e.mul(g, wins) if need[0] or need[1] else None
        gb = e.sub(g, ga) if need[1] else None
        return (ga if need[0] else None), gb

    return rule


def _select(e, n, g, need):
    _, a, b = n.inputs
    zero = e.const(0, g.dtype)
    return (
        None,
        e.select(n.inputs[0], g, zero) if need[1] else None,
        e.select(n.inputs[0], zero, g) if need[2] else None,
    )


def _cast(e, n, g, need):
    x = n.inputs[0]
    if x.dtype not in ("float32", "float64"):
        return (None,)
    return (e("cast", g, dtype=x.dtype) if x.dtype != g.dtype else g,)


def _sum(e, n, g, need):
    x = n.inputs[0]
    return (e.expand_reduced(g, x.shape, n.attrs["axes"], n.attrs["keepdims"]),)


def _max(e, n, g, need):
    x = n.inputs[0]
    axes, keepdims = n.attrs["axes"], n.attrs["keepdims"]
    y = e.expand_reduced(n.out, x.shape, axes, keepdims)
    g = e.expand_reduced(g, x.shape, axes, keepdims)
    is_max = e("eq", x, y)
    hits = e("cast", is_max, dtype=x.dtype)
    count = e.expand_reduced(e.sum(hits, axes, keepdims=True), x.shape, axes, True)
    return (e.div(e.mul(g, hits), count),)


def _transpose(e, n, g, need):
    perm = n.attrs["perm"]
    inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))
    return (e("transpose", g, perm=inverse),)


def _slice_axis_adjoint(e, g, axis, start, step, size, dim):
    """Place g's `size` entries at start, start+step, ... of a zero axis of length `dim`."""
    shape = list(g.shape)
    if step < 0:  # reverse g, then it is a positive-step slice from the lowest index
        g = e("slice", g, starts=tuple(size - 1 if i == axis else 0 for i in range(len(shape))),
              steps=tuple(-1 if i == axis else 1 for i in range(len(shape))), sizes=tuple(shape))
        start, step = start + (size - 1) * step, -step
    if step > 1:  # interleave step-1 zeros after every entry: (.., size, 1) -> pad -> merge
        g = e.reshape(g, shape[:axis + 1] + [1] + shape[axis + 1:])
        pads = [(0, 0)] * (len(shape) + 1)
        pads[axis + 1] = (0, step - 1)
        g = e("pad", g, pads=tuple(pads), value=0.0)
        shape[axis] = size * step
        g = e.reshape(g, shape)
    length = shape[axis]
    hi = dim - start - length
    if hi < 0:  # the interleaved tail runs past the end: cut it
        g = e("slice", g, starts=(0,) * len(shape), steps=(1,) * len(shape),
              sizes=tuple(length + hi if i == axis else d for i, d in enumerate(shape)))
        hi = 0
    pads = [(0, 0)] * len(shape)
    pads[axis] = (start, hi)
    return e("pad", g, pads=tuple(pads), value=0.0) if start or hi else g


def _slice(e, n, g, need):
    x = n.inputs[0]
    a = n.attrs
    for axis, (start, step, size, dim) in enumerate(zip(a["starts"], a["steps"], a["sizes"],
                                                        x.shape)):
        if (start, step, size) != (0, 1, dim):
            g = _slice_axis_adjoint(e, g, axis, start, step, size, dim)
    return (g,)


def _pad(e, n, g, need):
    x = n.inputs[0]
    starts = tuple(lo for lo, _ in n.attrs["pads"])
    return (e("slice", g, starts=starts, steps=(1,) * len(x.shape), sizes=x.shape),)


def _concatenate(e, n, g, need):
    axis = n.attrs["axis"]
    outs, offset = [], 0
    for x, want in zip(n.inputs, need):
        if want:
            starts = tuple(offset if i == axis else 0 for i in range(len(x.shape)))
            outs.append(e("slice", g, starts=starts, steps=(1,) * len(x.shape), sizes=x.shape))
        else:
            outs.append(None)
        offset += x.shape[axis]
    return tuple(outs)


def _gather(e, n, g, need):
    x, idx = n.inputs
    return e("scatter_add", idx, g, axis=n.attrs["axis"], dim_size=x.shape[n.attrs["axis"]]), None


def _scatter_add(e, n, g, need):
    idx, _ = n.inputs
    return None, e("gather", g, idx, axis=n.attrs["axis"])


def _matmul(e, n, g, need):
    a, b = n.inputs
    ta, tb = n.attrs["transpose_a"], n.attrs["transpose_b"]
    ga = gb = None
    if need[0]:  # dA = g @ op(B)^T, or its transpose when A is stored transposed
        ga = (e("matmul", b, g, transpose_a=tb, transpose_b=True) if ta
              else e("matmul", g, b, transpose_a=False, transpose_b=not tb))
    if need[1]:  # dB = op(A)^T @ g, or its transpose when B is stored transposed
        gb = (e("matmul", g, a, transpose_a=True, transpose_b=ta) if tb
              else e("matmul", a, g, transpose_a=not ta, transpose_b=False))
    return ga, gb


def _window(adjoint_op):
    def rule(e, n, g, need):
        a = n.attrs
        x = n.inputs[0]
        extra = {"output_size": x.shape[2:]} if adjoint_op == "fold" else {}
        return (e(adjoint_op, g, kernel=a["kernel"], stride=a["stride"], padding=a["padding"],
                  **extra),)

    return rule


def _all_reduce(e, n, g, need):
    """The sum over processes is its own adjoint: every process's x_i gets the sum of every
    process's cotangent of the result, read back at x_i's place."""
    handles, values = n.inputs[0], n.inputs[1:]
    summed = e("all_reduce", handles, g, handle_bits=n.attrs["handle_bits"])
    offsets, _ = packed_offsets([v.type for v in values])
    return (None, *(e("part", summed, offset=at, shape=tuple(x.shape)) if want else None
                    for x, at, want in zip(values, offsets, need[1:])))


def _part(e, n, g, need):
    (x,) = n.inputs
    at, size = n.attrs["offset"], n.out.type.size
    flat = e.reshape(g, (size,))
    return (e("pad", flat, pads=((at, x.shape[0] - at - size),), value=0.0),)


def _no_gradient(e, n, g, need):
    return (None,) * len(n.inputs)


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)

_GRADIENTS = {
    "neg": _unary(lambda e, x, y, g: e.neg(g)),
    "exp": _unary(lambda e, x, y, g: e.mul(g, y)),
    "log": _unary(lambda e, x, y, g: e.div(g, x)),
    "log1p": _unary(lambda e, x, y, g: e.div(g, e.add(x, 1))),
    "sqrt": _unary(lambda e, x, y, g: e.div(e.mul(g, 0.5), y)),
    "rsqrt": _unary(lambda e, x, y, g: e.mul(e.mul(g, -0.5), e.mul(y, e.mul(y, y)))),
    "tanh": _unary(lambda e, x, y, g: e.mul(g, e.sub(1, e.mul(y, y)))),
    "sigmoid": _unary(lambda e, x, y, g: e.mul(g, e.mul(y, e.sub(1, y)))),
    "abs": _unary(lambda e, x, y, g: e.mul(g, e("sign", x))),
    "sin": _unary(lambda e, x, y, g: e.mul(g, e("cos", x))),
    "cos": _unary(lambda e, x, y, g: e.neg(e.mul(g, e("sin", x)))),
    "erf": _unary(lambda e, x, y, g: e.mul(g, e.mul(_TWO_OVER_SQRT_PI,
                                                     e("exp", e.neg(e.mul(x, x)))))),
    "reciprocal": _unary(lambda e, x, y, g: e.neg(e.mul(g, e.mul(y, y)))),
    "add": lambda e, n, g, need: (g if need[0] else None, g if need[1] else None),
    "sub": lambda e, n, g, need: (g if need[0] else None, e.neg(g) if need[1] else None),
    "mul": lambda e, n, g, need: (e.mul(g, n.inputs[1]) if need[0] else None,
                                  e.mul(g, n.inputs[0]) if need[1] else None),
    "div": lambda e, n, g, need: (e.div(g, n.inputs[1]) if need[0] else None,
                                  e.neg(e.div(e.mul(g, n.out), n.inputs[1])) if need[1] else None),
    "pow": _pow,
    "maximum": _minmax("gt"),
    "minimum": _minmax("lt"),
    "select": _select,
    "cast": _cast,
    "sum": _sum,
    "max": _max,
    "reshape": lambda e, n, g, need: (e.reshape(g, n.inputs[0].shape),),
    "transpose": _transpose,
    "broadcast_to": lambda e, n, g, need: (g,),  # the driver sums it back to the input's shape
    "slice": _slice,
    "pad": _pad,
    "concatenate": _concatenate,
    "gather": _gather,
    "scatter_add": _scatter_add,
    "matmul": _matmul,
    "unfold": _window("fold"),
    "fold": _window("unfold"),
    "scan": scan_vjp,  # a reverse scan (scan_vjp.py); its `g` is one cotangent per output
    "all_reduce": _all_reduce,
    "part": _part,
}

VJP_RULES = {op: _no_gradient for op in prims_where(differentiable=False)} | _GRADIENTS
