"""Every primitive, table-driven from the registry: shape rule, verifier and interpreter against an
independent NumPy formula, in float32 and in the interpreter's float64 mode; shape-rule errors."""
from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from fusegrad.ir import GraphBuilder, ShapeError, TensorType, interpret, verify
from fusegrad.ir.ops import PRIMITIVES, prims_where

FLOATS = ("float32", "float64")
INTS = ("int32", "int64")
NUMERIC = FLOATS + INTS


# ---------------------------------------------------------------------------------------------
# input generators: each returns a function rng -> array


def rand(shape, dtype="float32", lo=-2.0, hi=2.0):
    """Uniform floats in [lo, hi), integers in [lo, hi], or fair booleans."""

    def gen(rng):
        if dtype in FLOATS:
            return rng.uniform(lo, hi, shape).astype(dtype)
        if dtype in INTS:
            return rng.integers(int(lo), int(hi) + 1, shape).astype(dtype)
        return rng.random(shape) < 0.5

    return gen


def grid(shape, dtype, values=(0, 1, 2)):
    """Values from a small set, so that comparisons see ties and sign sees zeros."""
    return lambda rng: rng.choice(np.array(values), shape).astype(dtype)


def away_from_zero(shape, dtype):
    return lambda rng: (rng.uniform(0.5, 2.0, shape) * rng.choice([-1, 1], shape)).astype(dtype)


def fixed(array):
    return lambda rng: np.asarray(array)


@dataclass
class Case:
    op: str
    inputs: list  # generators rng -> array
    attrs: dict
    expect: Callable  # NumPy formula on the inputs (float32 inputs widened to float64)
    name: str = ""

    @property
    def id(self):
        return f"{self.op}-{self.name}" if self.name else self.op


CASES: list[Case] = []


def add(op, inputs, attrs, expect, name=""):
    CASES.append(Case(op, list(inputs), dict(attrs), expect, name))


def short(dt):
    return {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "b1"}[dt]


def shp(s):
    return "x".join(map(str, s)) or "scalar"


# ---------------------------------------------------------------------------------------------
# elementwise unary

_erf = np.vectorize(math.erf, otypes=[np.float64])

FLOAT_UNARY = {
    # op: (formula, input generator factory)
    "exp": (np.exp, lambda s, d: rand(s, d)),
    "log": (np.log, lambda s, d: rand(s, d, 0.1, 3.0)),
    "log1p": (np.log1p, lambda s, d: rand(s, d, -0.9, 3.0)),
    "sqrt": (np.sqrt, lambda s, d: rand(s, d, 0.0, 4.0)),
    "rsqrt": (lambda x: 1.0 / np.sqrt(x), lambda s, d: rand(s, d, 0.1, 4.0)),
    "tanh": (np.tanh, lambda s, d: rand(s, d, -3.0, 3.0)),
    "sigmoid": (lambda x: 1.0 / (1.0 + np.exp(-x)), lambda s, d: rand(s, d, -30.0, 30.0)),
    "sin": (np.sin, lambda s, d: rand(s, d, -4.0, 4.0)),
    "cos": (np.cos, lambda s, d: rand(s, d, -4.0, 4.0)),
    "erf": (_erf, lambda s, d: rand(s, d, -3.0, 3.0)),
    "reciprocal": (lambda x: 1.0 / x, away_from_zero),
}
for op, (formula, make) in FLOAT_UNARY.items():
    for dt in FLOATS:
        for s in ((2, 3), (7,)):
            add(op, [make(s, dt)], {}, formula, f"{short(dt)}-{shp(s)}")

NUMERIC_UNARY = {
    "neg": lambda x: 0 - x,
    "abs": lambda x: np.where(x < 0, -x, x),
    "sign": lambda x: (x > 0).astype(x.dtype) - (x < 0).astype(x.dtype),
}
for op, formula in NUMERIC_UNARY.items():
    for dt in NUMERIC:
        add(op, [grid((3, 4), dt, (-3, -1, 0, 2, 5))], {}, formula, short(dt))
        add(op, [rand((5,), dt, -5, 5)], {}, formula, f"{short(dt)}-rand")

for dt in NUMERIC + ("bool",):
    add("stop_gradient", [rand((2, 3), dt)], {}, lambda x: x, short(dt))

# ---------------------------------------------------------------------------------------------
# elementwise binary, with broadcasting

BROADCAST_PAIRS = [((3, 1, 4), (5, 1)), ((2, 3), (2, 3)), ((), (2, 3)), ((4,), (3, 1))]
ARITH = {
    "add": (lambda a, b: a + b, NUMERIC),
    "sub": (lambda a, b: a - b, NUMERIC),
    "mul": (lambda a, b: a * b, NUMERIC),
    "maximum": (lambda a, b: np.where(a >= b, a, b), NUMERIC),
    "minimum": (lambda a, b: np.where(a <= b, a, b), NUMERIC),
}
for op, (formula, dts) in ARITH.items():
    for dt in dts:
        for sa, sb in BROADCAST_PAIRS:
            add(op, [rand(sa, dt, -5, 5), rand(sb, dt, -5, 5)], {}, formula,
                f"{short(dt)}-{shp(sa)}-{shp(sb)}")
for dt in FLOATS:
    for sa, sb in BROADCAST_PAIRS:
        tag = f"{short(dt)}-{shp(sa)}-{shp(sb)}"
        add("div", [rand(sa, dt), away_from_zero(sb, dt)], {}, lambda a, b: a / b, tag)
        add("pow", [rand(sa, dt, 0.5, 2.0), rand(sb, dt, -2.0, 2.0)], {},
            lambda a, b: np.exp(b * np.log(a)), tag)

COMPARE = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}
for op, formula in COMPARE.items():
    for dt in NUMERIC:
        for sa, sb in BROADCAST_PAIRS[:2]:
            add(op, [grid(sa, dt), grid(sb, dt)], {}, formula, f"{short(dt)}-{shp(sa)}-{shp(sb)}")
for op in ("eq", "ne"):
    add(op, [rand((3, 1), "bool"), rand((4,), "bool")], {}, COMPARE[op], "b1")

for dt, shapes in (("float32", ((5, 1), (3, 1, 4), (4,))), ("int32", ((5, 1), (3, 1, 4), (4,))),
                   ("float64", ((2, 3),) * 3), ("int64", ((), (2, 3), (3,))),
                   ("bool", ((2, 3),) * 3)):
    add("select", [rand(shapes[0], "bool"), rand(shapes[1], dt), rand(shapes[2], dt)], {},
        lambda c, a, b: np.where(c, a, b), f"{short(dt)}-{'-'.join(shp(s) for s in shapes)}")

CASTS = [
    ("float32", "int32", grid((3, 4), "float32", (-2.7, -1.0, -0.5, 0.0, 0.5, 1.9)),
     lambda x: np.trunc(x).astype(np.int32)),
    ("float32", "int64", rand((5,), "float32", -9, 9), lambda x: np.trunc(x).astype(np.int64)),
    ("float32", "float64", rand((2, 3), "float32"), lambda x: x),
    ("float64", "float32", rand((2, 3), "float64"), lambda x: x),
    ("int64", "float32", rand((6,), "int64", -100, 100), lambda x: x.astype(np.float64)),
    ("int32", "int64", rand((6,), "int32", -100, 100), lambda x: x.astype(np.int64)),
    ("float32", "bool", grid((3, 3), "float32", (-1.5, 0.0, 2.0)), lambda x: x != 0),
    ("bool", "float32", rand((3, 3), "bool"), lambda x: np.where(x, 1.0, 0.0)),
    ("bool", "int32", rand((4,), "bool"), lambda x: np.where(x, 1, 0)),
]
for src, dst, gen, formula in CASTS:
    add("cast", [gen], {"dtype": dst}, formula, f"{short(src)}-to-{short(dst)}")

# ---------------------------------------------------------------------------------------------
# reductions


def _first_argmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    idx = np.indices(x.shape)[axis]
    return np.min(np.where(x == m, idx, x.shape[axis]), axis=axis).astype(np.int64)


for op, formula in (("sum", np.sum), ("max", np.amax)):
    for dt in NUMERIC:
        for axes in ((1,), (0, 2), (0, 1, 2), ()):
            for keepdims in (False, True):
                add(op, [rand((2, 3, 4), dt, -5, 5)], {"axes": axes, "keepdims": keepdims},
                    lambda x, _a=axes, _k=keepdims, _f=formula: _f(x, axis=_a, keepdims=_k),
                    f"{short(dt)}-axes{''.join(map(str, axes))}-keep{int(keepdims)}")
add("sum", [rand((2, 0, 3), "float32")], {"axes": (1,), "keepdims": False},
    lambda x: np.zeros((2, 3)), "empty-axis")
add("max", [rand((2, 0, 3), "float32")], {"axes": (0,), "keepdims": True},
    lambda x: np.zeros((1, 0, 3)), "empty-other-axis")
for dt in ("float32", "int32", "int64"):
    for axis in (0, 1, 2):
        add("argmax", [grid((3, 4, 5), dt, (0, 1, 2, 3))], {"axis": axis},
            lambda x, _a=axis: _first_argmax(x, _a), f"{short(dt)}-axis{axis}")

# ---------------------------------------------------------------------------------------------
# movement

for src, dst in (((2, 3, 4), (4, 6)), ((), (1, 1)), ((6,), (3, 2, 1)), ((2, 0), (0, 5))):
    add("reshape", [rand(src)], {"shape": dst}, lambda x, _d=dst: x.reshape(_d),
        f"{shp(src)}-to-{shp(dst)}")
add("reshape", [rand((4, 3), "int64")], {"shape": (12,)}, lambda x: x.ravel(), "i64")

for shape, perm, dt in (((2, 3, 4), (2, 0, 1), "float32"), ((3, 5), (1, 0), "int32"),
                        ((2, 3), (0, 1), "bool"), ((1, 2, 3, 4), (3, 1, 0, 2), "float64")):
    add("transpose", [rand(shape, dt)], {"perm": perm},
        lambda x, _p=perm: np.einsum(x, list(range(x.ndim)), list(_p)),
        f"{short(dt)}-{''.join(map(str, perm))}")

for src, dst, dt in (((3, 1), (2, 3, 4), "float32"), ((), (2, 2), "int64"),
                     ((4,), (3, 4), "float64"), ((2, 1, 3), (2, 5, 3), "int32")):
    add("broadcast_to", [rand(src, dt)], {"shape": dst},
        lambda x, _d=dst: x + np.zeros(_d, x.dtype), f"{short(dt)}-{shp(src)}-to-{shp(dst)}")


def _slice_ref(x, starts, steps, sizes):
    index = [st + sp * np.arange(sz) for st, sp, sz in zip(starts, steps, sizes)]
    return x[np.ix_(*index)]


SLICES = [
    ("pos-steps", (6, 5), (1, 0), (2, 1), (3, 5)),
    ("neg-steps", (6, 5), (5, 4), (-1, -2), (6, 3)),
    ("neg-step-3", (7, 2), (6, 1), (-3, 1), (3, 1)),
    ("mixed", (4, 5, 6), (3, 1, 0), (-1, 3, 2), (2, 2, 3)),
    ("empty", (4, 3), (0, 2), (1, -1), (0, 2)),
    ("stop-at-zero", (5,), (4,), (-2,), (3,)),
]
for name, shape, starts, steps, sizes in SLICES:
    add("slice", [rand(shape)], {"starts": starts, "steps": steps, "sizes": sizes},
        lambda x, _a=starts, _b=steps, _c=sizes: _slice_ref(x, _a, _b, _c), name)
add("slice", [rand((5, 4), "int64", -9, 9)], {"starts": (4, 0), "steps": (-1, 2), "sizes": (5, 2)},
    lambda x: _slice_ref(x, (4, 0), (-1, 2), (5, 2)), "i64")


def _pad_ref(x, pads, value):
    out = np.full(tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, pads)), value, x.dtype)
    out[tuple(slice(lo, lo + d) for d, (lo, _) in zip(x.shape, pads))] = x
    return out


for shape, pads, value, dt in (((2, 3), ((1, 2), (0, 3)), 0.5, "float32"),
                               ((3,), ((2, 0),), -1, "int32"),
                               ((2, 2), ((0, 0), (0, 0)), 0.0, "float64"),
                               ((1, 2, 3), ((0, 1), (2, 2), (1, 0)), 0, "int64")):
    add("pad", [rand(shape, dt)], {"pads": pads, "value": value},
        lambda x, _p=pads, _v=value: _pad_ref(x, _p, _v), f"{short(dt)}-{shp(shape)}")


def _concat_ref(axis, *xs):
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    out = np.empty(shape, xs[0].dtype)
    at = 0
    for x in xs:
        index = [slice(None)] * len(shape)
        index[axis] = slice(at, at + x.shape[axis])
        out[tuple(index)] = x
        at += x.shape[axis]
    return out


for shapes, axis, dt in ((((2, 3), (1, 3), (4, 3)), 0, "float32"),
                         (((2, 1, 4), (2, 3, 4), (2, 2, 4)), 1, "int64"),
                         (((2, 2), (2, 0), (2, 1)), 1, "float64"),
                         (((3,), (3,), (3,)), 0, "bool")):
    add("concatenate", [rand(s, dt) for s in shapes], {"axis": axis},
        lambda *xs, _a=axis: _concat_ref(_a, *xs), f"{short(dt)}-axis{axis}")
add("concatenate", [rand((2, 3))], {"axis": 1}, lambda x: x, "single")

# ---------------------------------------------------------------------------------------------
# gather / scatter_add


def _gather_ref(x, idx, axis):
    return x[(slice(None),) * axis + (idx,)]


def _scatter_ref(idx, upd, axis, dim):
    k = idx.ndim
    out = np.zeros(upd.shape[:axis] + (dim,) + upd.shape[axis + k:], upd.dtype)
    for pos in np.ndindex(*idx.shape):
        out[(slice(None),) * axis + (idx[pos],)] += upd[(slice(None),) * axis + pos]
    return out


GATHERS = [
    ("axis0-repeats", (5, 3), "float32", np.array([0, 4, 4, 1, 0], np.int32), 0),
    ("axis1-2d-index", (2, 4, 3), "float64", np.array([[3, 0, 3], [1, 1, 2]], np.int64), 1),
    ("last-axis-2d", (2, 3, 4), "int32", np.array([[3, 3], [0, 2]], np.int32), 2),
    ("scalar-index", (4, 2), "int64", np.array(2, np.int64), 0),
]
for name, shape, dt, idx, axis in GATHERS:
    add("gather", [rand(shape, dt, -9, 9), fixed(idx)], {"axis": axis},
        lambda x, i, _a=axis: _gather_ref(x, i, _a), name)

SCATTERS = [
    ("axis0-repeats", np.array([0, 2, 2, 3, 0], np.int32), (5, 3), "float32", 0, 4),
    ("axis1-2d-index", np.array([[1, 1, 0], [4, 1, 2]], np.int64), (2, 2, 3, 4), "float64", 1, 5),
    ("int-updates", np.array([1, 1, 1], np.int64), (3, 2), "int32", 0, 2),
    ("last-axis", np.array([0, 0, 2], np.int32), (2, 3), "int64", 1, 3),
]
for name, idx, ushape, dt, axis, dim in SCATTERS:
    add("scatter_add", [fixed(idx), rand(ushape, dt, -9, 9)], {"axis": axis, "dim_size": dim},
        lambda i, u, _a=axis, _d=dim: _scatter_ref(i, u, _a, _d), name)

add("check_index", [fixed(np.array([0, 3, 9, 3], np.int64))], {"size": 10}, lambda i: i,
    "labels")
add("check_index", [fixed(np.array([[1], [0]], np.int32))], {"size": 2}, lambda i: i, "int32-2d")

# ---------------------------------------------------------------------------------------------
# matmul


def _matmul_ref(a, b, ta, tb):
    sa = "...km" if ta else "...mk"
    sb = "...nk" if tb else "...kn"
    return np.einsum(f"{sa},{sb}->...mn", a, b)


def _mm(batch_a, batch_b, m, k, n, ta, tb, dt="float32", name=""):
    sa = batch_a + ((k, m) if ta else (m, k))
    sb = batch_b + ((n, k) if tb else (k, n))
    add("matmul", [rand(sa, dt, -3, 3), rand(sb, dt, -3, 3)],
        {"transpose_a": ta, "transpose_b": tb},
        lambda a, b, _ta=ta, _tb=tb: _matmul_ref(a, b, _ta, _tb),
        name or f"{short(dt)}-{shp(sa)}@{shp(sb)}-t{int(ta)}{int(tb)}")


for dt in NUMERIC:
    _mm((), (), 3, 4, 5, False, False, dt, f"2d-{short(dt)}")
_mm((2,), (2,), 3, 4, 5, False, False, name="batched")
_mm((2, 1), (5,), 3, 4, 6, False, False, name="broadcast-batch")
_mm((), (2,), 3, 4, 5, False, False, name="2d-with-batched")
_mm((3,), (), 2, 4, 5, False, False, "float64", name="batched-with-2d")
for ta, tb in itertools.product((False, True), repeat=2):
    _mm((), (), 3, 4, 5, ta, tb, name=f"2d-t{int(ta)}{int(tb)}")
    _mm((2,), (1,), 3, 4, 5, ta, tb, "float64", name=f"batched-t{int(ta)}{int(tb)}")

# ---------------------------------------------------------------------------------------------
# unfold / fold: explicit loop-based im2col / col2im (PyTorch layout: row = (c*kh + i)*kw + j)


def _geometry(h, w, kernel, stride, padding):
    oh = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    ow = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    return oh, ow


def im2col_ref(x, kernel, stride, padding):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = _geometry(h, w, kernel, stride, padding)
    out = np.zeros((n, c * kh * kw, oh * ow), x.dtype)
    for ci, i, j, oy, ox in itertools.product(range(c), range(kh), range(kw), range(oh), range(ow)):
        y, xx = oy * sh - ph + i, ox * sw - pw + j
        if 0 <= y < h and 0 <= xx < w:
            out[:, (ci * kh + i) * kw + j, oy * ow + ox] = x[:, ci, y, xx]
    return out


def col2im_ref(cols, output_size, kernel, stride, padding):
    h, w = output_size
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = _geometry(h, w, kernel, stride, padding)
    n, ckk, _ = cols.shape
    c = ckk // (kh * kw)
    out = np.zeros((n, c, h, w), cols.dtype)
    for ci, i, j, oy, ox in itertools.product(range(c), range(kh), range(kw), range(oh), range(ow)):
        y, xx = oy * sh - ph + i, ox * sw - pw + j
        if 0 <= y < h and 0 <= xx < w:
            out[:, ci, y, xx] += cols[:, (ci * kh + i) * kw + j, oy * ow + ox]
    return out


WINDOWS = [
    # (name, (N, C, H, W), kernel, stride, padding)
    ("k3x2-s2-p1", (2, 3, 5, 6), (3, 2), (2, 2), (1, 1)),
    ("k2-s2-p0", (1, 2, 4, 4), (2, 2), (2, 2), (0, 0)),
    ("k3-s1x2-p1x0", (2, 1, 5, 7), (3, 3), (1, 2), (1, 0)),
    ("k1-identity", (1, 2, 3, 2), (1, 1), (1, 1), (0, 0)),
    ("k2-s3-gaps", (1, 1, 7, 8), (2, 2), (3, 3), (1, 0)),
]
for name, xshape, kernel, stride, padding in WINDOWS:
    win = {"kernel": kernel, "stride": stride, "padding": padding}
    for dt in FLOATS:
        add("unfold", [rand(xshape, dt)], win,
            lambda x, _w=win: im2col_ref(x, _w["kernel"], _w["stride"], _w["padding"]),
            f"{name}-{short(dt)}")
        n, c, h, w = xshape
        oh, ow = _geometry(h, w, kernel, stride, padding)
        cshape = (n, c * kernel[0] * kernel[1], oh * ow)
        add("fold", [rand(cshape, dt)], dict(win, output_size=(h, w)),
            lambda y, _w=win, _s=(h, w): col2im_ref(y, _s, _w["kernel"], _w["stride"],
                                                    _w["padding"]),
            f"{name}-{short(dt)}")

# ---------------------------------------------------------------------------------------------
# sources

for name, value in (("f32-2x3", np.arange(6, dtype=np.float32).reshape(2, 3) / 4),
                    ("i64-scalar", np.array(-7, np.int64)),
                    ("b1-4", np.array([True, False, False, True])),
                    ("f64-1", np.array([math.pi])),
                    ("i32-empty", np.zeros((0, 2), np.int32))):
    add("constant", [], {"value": value}, lambda _v=value: _v.copy(), name)

for shape, axis, dt in (((2, 3, 4), 0, "int32"), ((2, 3, 4), 1, "int64"), ((2, 3, 4), 2, "float32"),
                        ((5,), 0, "float64"), ((3, 2), 1, "int64")):
    add("iota", [], {"shape": shape, "axis": axis, "dtype": dt},
        lambda _s=shape, _a=axis: np.indices(_s)[_a], f"{short(dt)}-{shp(shape)}-axis{axis}")

# splitmix64 written out in Python integers: the generated kernels must reproduce it bit for bit
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def uniform_ref(seed, counter, shape, dtype):
    key = _mix64(((int(seed) & _M64) * _GOLDEN + (int(counter) & _M64)) & _M64)
    n = int(np.prod(shape, dtype=np.int64))
    bits = [_mix64((key + (i + 1) * _GOLDEN) & _M64) for i in range(n)]
    if dtype == "float32":
        vals = [(b >> 40) * 2.0 ** -24 for b in bits]
    else:
        vals = [(b >> 11) * 2.0 ** -53 for b in bits]
    return np.array(vals, np.float64).reshape(shape)


for seed, counter, shape, dt in ((42, 0, (2, 3), "float32"), (42, 1, (4,), "float64"),
                                 (-7, 123456789, (3, 1), "float32"), (0, -1, (), "float64")):
    add("random_uniform", [fixed(np.int64(seed)), fixed(np.int64(counter))],
        {"shape": shape, "dtype": dt},
        lambda s, c, _shape=shape, _dt=dt: uniform_ref(s, c, _shape, _dt),
        f"{short(dt)}-seed{seed}-ctr{counter}")


# ---------------------------------------------------------------------------------------------
# collectives: with handle 0 (no communicator) the sum over processes is this process's values,
# packed one after another from multiples of 16 elements (zeros between)

NO_COMM = fixed(np.zeros(5, np.int64))


def packed_ref(*values):
    out, at = [], 0
    for v in values:
        gap = -at % 16
        out += [np.zeros(gap), np.asarray(v, np.float64).reshape(-1)]
        at += gap + np.size(v)
    return np.concatenate(out)


for shapes, dt in ((((3, 4), (4,), ()), "float32"), ((((17,),)), "float64"),
                   (((2, 16), (0,), (1, 1)), "float32")):
    add("all_reduce", [NO_COMM, *(rand(s, dt) for s in shapes)], {"handle_bits": 32},
        lambda h, *xs: packed_ref(*xs),
        f"{short(dt)}-" + "-".join(shp(s) for s in shapes))
add("all_reduce", [NO_COMM, rand((5,), "float32")], {"handle_bits": 64},
    lambda h, x: packed_ref(x), "h64")
for n, offset, shape, dt in ((20, 16, (2, 2), "float32"), (7, 0, (), "float64"),
                             (9, 3, (6,), "float32")):
    add("part", [rand((n,), dt)], {"offset": offset, "shape": shape},
        lambda x, _o=offset, _s=shape: x[_o:_o + int(np.prod(_s))].reshape(_s),
        f"{short(dt)}-{n}-at{offset}-{shp(shape)}")


# ---------------------------------------------------------------------------------------------
# the tests


def test_table_covers_every_primitive():
    # control flow has a region, not attributes alone: tests/test_scan.py is its table
    assert {c.op for c in CASES} == set(PRIMITIVES) - set(prims_where(kind="control"))


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]


def _widen(x):
    return x.astype(np.float64) if x.dtype == np.float32 else x


def _one_node_graph(case, args):
    b = GraphBuilder(case.id)
    ins = [b.add_input(TensorType.of(a), f"x{i}") for i, a in enumerate(args)]
    out = b.emit(case.op, ins, case.attrs)
    return b.build([out]), out


def _compare(got, expected, dtype, float_tol):
    if dtype in FLOATS:
        rtol, atol = float_tol
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    else:
        np.testing.assert_array_equal(got, np.asarray(expected).astype(dtype))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_primitive(case):
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    args = [gen(rng) for gen in case.inputs]
    graph, out = _one_node_graph(case, args)
    verify(graph)
    t = out.type
    expected = np.asarray(case.expect(*[_widen(a) for a in args]))
    assert expected.shape == t.shape, "the formula and the shape rule disagree"

    (got,) = interpret(graph, args)
    assert got.shape == t.shape
    assert got.dtype == np.dtype(t.dtype)
    f32_tol = (1e-5, 1e-5) if t.dtype == "float32" else (1e-12, 1e-12)
    _compare(got, expected, t.dtype, f32_tol)

    (got64,) = interpret(graph, args, float64=True)
    assert got64.shape == t.shape
    want = "float64" if t.dtype in FLOATS else t.dtype
    assert got64.dtype == np.dtype(want)
    _compare(got64, expected, want, (1e-10, 1e-12))


# ---------------------------------------------------------------------------------------------
# random_uniform properties


def _uniform(seed, counter, shape, dtype="float32"):
    b = GraphBuilder("rng")
    s = b.add_input(TensorType("int64", ()), "seed", "state")
    c = b.add_input(TensorType("int64", ()), "counter", "state")
    out = b.emit("random_uniform", [s, c], {"shape": shape, "dtype": dtype})
    graph = b.build([out])
    verify(graph)
    return interpret(graph, [np.int64(seed), np.int64(counter)])[0]


def test_random_uniform_is_deterministic():
    a = _uniform(3, 17, (64, 8))
    b = _uniform(3, 17, (64, 8))
    assert a.tobytes() == b.tobytes()


def test_random_uniform_depends_on_counter_and_seed():
    base = _uniform(3, 17, (256,))
    other_counter = _uniform(3, 18, (256,))
    other_seed = _uniform(4, 17, (256,))
    assert np.mean(base == other_counter) < 0.01
    assert np.mean(base == other_seed) < 0.01
    assert len(np.unique(base)) > 250  # elements differ from each other too


@pytest.mark.parametrize("dtype,bits", [("float32", 24), ("float64", 53)])
def test_random_uniform_distribution(dtype, bits):
    x = _uniform(12345, 0, (100, 100), dtype)
    assert x.dtype == np.dtype(dtype)
    assert x.min() >= 0.0 and x.max() < 1.0
    assert abs(x.mean() - 0.5) < 0.015  # the standard error is 0.0029
    assert abs(x.var() - 1 / 12) < 0.005
    scaled = x.astype(np.float64) * 2.0 ** bits
    np.testing.assert_array_equal(scaled, np.floor(scaled))  # multiples of 2**-bits


# ---------------------------------------------------------------------------------------------
# fold is the adjoint of unfold


@pytest.mark.parametrize("name,xshape,kernel,stride,padding", WINDOWS, ids=[w[0] for w in WINDOWS])
def test_fold_is_adjoint_of_unfold(name, xshape, kernel, stride, padding):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    n, c, h, w = xshape
    win = {"kernel": kernel, "stride": stride, "padding": padding}
    b = GraphBuilder("adjoint")
    xv = b.add_input(TensorType("float64", xshape), "x")
    cols = b.emit("unfold", [xv], win)
    yv = b.add_input(cols.type, "y")
    back = b.emit("fold", [yv], dict(win, output_size=(h, w)))
    graph = b.build([cols, back])
    verify(graph)
    x = rng.standard_normal(xshape)
    y = rng.standard_normal(cols.type.shape)
    ux, fy = interpret(graph, [x, y])
    assert fy.shape == x.shape
    np.testing.assert_allclose(np.vdot(ux, y), np.vdot(x, fy), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# shape-rule errors name the op and the shapes


def T(dtype, *shape):
    return TensorType(dtype, shape)


f32, i32 = "float32", "int32"
MM = {"transpose_a": False, "transpose_b": False}
WIN = {"kernel": (3, 3), "stride": (1, 1), "padding": (0, 0)}
ERRORS = [
    # (id, op, input types, attrs, exception, substrings of the message)
    ("add-broadcast", "add", [T(f32, 3, 4), T(f32, 5)], {}, ShapeError, ["add", "(3, 4)", "(5,)"]),
    ("mul-dtypes", "mul", [T(f32, 2), T("float64", 2)], {}, TypeError, ["mul", "f32[2]", "f64[2]"]),
    ("add-bool", "add", [T("bool", 2), T("bool", 2)], {}, TypeError, ["add", "b1[2]"]),
    ("div-int", "div", [T(i32, 2), T(i32, 2)], {}, TypeError, ["div", "i32[2]"]),
    ("lt-broadcast", "lt", [T(f32, 2, 3), T(f32, 4)], {}, ShapeError, ["lt", "(2, 3)", "(4,)"]),
    ("select-cond", "select", [T(f32, 2), T(f32, 2), T(f32, 2)], {}, TypeError,
     ["select", "bool", "f32[2]"]),
    ("select-broadcast", "select", [T("bool", 3), T(f32, 2), T(f32, 2)], {}, ShapeError,
     ["select", "(3,)", "(2,)"]),
    ("matmul-inner", "matmul", [T(f32, 3, 4), T(f32, 5, 6)], MM, ShapeError,
     ["matmul", "f32[3,4]", "f32[5,6]"]),
    ("matmul-flags", "matmul", [T(f32, 4, 3), T(f32, 4, 5)], MM, ShapeError,
     ["matmul", "f32[4,3]", "f32[4,5]", "transpose_a=False"]),
    ("matmul-1d", "matmul", [T(f32, 4), T(f32, 4, 5)], MM, ShapeError, ["matmul", "f32[4]"]),
    ("matmul-batch", "matmul", [T(f32, 2, 3, 4), T(f32, 3, 4, 5)], MM, ShapeError,
     ["matmul", "(2,)", "(3,)"]),
    ("matmul-dtypes", "matmul", [T(f32, 3, 4), T(i32, 4, 5)], MM, TypeError, ["matmul"]),
    ("reshape-size", "reshape", [T(f32, 3, 4)], {"shape": (5, 2)}, ShapeError,
     ["reshape", "f32[3,4]", "(5, 2)"]),
    ("transpose-perm", "transpose", [T(f32, 2, 3)], {"perm": (0, 0)}, ShapeError,
     ["transpose", "(0, 0)", "f32[2,3]"]),
    ("broadcast_to", "broadcast_to", [T(f32, 2, 3)], {"shape": (3,)}, ShapeError,
     ["broadcast_to", "f32[2,3]", "(3,)"]),
    ("exp-int", "exp", [T(i32, 3)], {}, TypeError, ["exp", "i32[3]"]),
    ("sqrt-bool", "sqrt", [T("bool", 3)], {}, TypeError, ["sqrt", "b1[3]"]),
    ("neg-bool", "neg", [T("bool", 3)], {}, TypeError, ["neg", "b1[3]"]),
    ("slice-past-end", "slice", [T(f32, 4, 3)], {"starts": (2, 0), "steps": (1, 1),
                                                 "sizes": (3, 3)}, ShapeError,
     ["slice", "axis 0", "f32[4,3]"]),
    ("slice-below-zero", "slice", [T(f32, 4, 3)], {"starts": (0, 1), "steps": (1, -1),
                                                   "sizes": (4, 3)}, ShapeError,
     ["slice", "axis 1", "f32[4,3]"]),
    ("slice-step-0", "slice", [T(f32, 4)], {"starts": (0,), "steps": (0,), "sizes": (2,)},
     ShapeError, ["slice", "step 0"]),
    ("slice-rank", "slice", [T(f32, 4, 3)], {"starts": (0,), "steps": (1,), "sizes": (2,)},
     ShapeError, ["slice", "f32[4,3]"]),
    ("pad-negative", "pad", [T(f32, 2, 3)], {"pads": ((0, 0), (-1, 0)), "value": 0.0}, ShapeError,
     ["pad", "f32[2,3]"]),
    ("pad-rank", "pad", [T(f32, 2, 3)], {"pads": ((1, 1),), "value": 0.0}, ShapeError,
     ["pad", "f32[2,3]"]),
    ("concatenate-shapes", "concatenate", [T(f32, 2, 3), T(f32, 2, 4)], {"axis": 0}, ShapeError,
     ["concatenate", "(2, 3)", "(2, 4)"]),
    ("concatenate-rank", "concatenate", [T(f32, 2, 3), T(f32, 2, 3, 1)], {"axis": 0}, ShapeError,
     ["concatenate", "(2, 3)", "(2, 3, 1)"]),
    ("concatenate-dtypes", "concatenate", [T(f32, 2), T(i32, 2)], {"axis": 0}, TypeError,
     ["concatenate", "f32[2]", "i32[2]"]),
    ("concatenate-axis", "concatenate", [T(f32, 2), T(f32, 2)], {"axis": 1}, TypeError,
     ["concatenate", "axis 1", "f32[2]"]),
    ("sum-bool", "sum", [T("bool", 2)], {"axes": (0,), "keepdims": False}, TypeError,
     ["sum", "b1[2]"]),
    ("sum-unnormalised", "sum", [T(f32, 2, 3)], {"axes": (-1,), "keepdims": False}, TypeError,
     ["sum", "normalised"]),
    ("sum-axis-range", "sum", [T(f32, 2, 3)], {"axes": (5,), "keepdims": False}, ShapeError,
     ["sum", "axis 5"]),
    ("max-axis-range", "max", [T(f32, 2, 3)], {"axes": (5,), "keepdims": False}, ShapeError,
     ["max", "axis 5"]),
    ("max-empty-axis", "max", [T(f32, 2, 0)], {"axes": (1,), "keepdims": False}, ShapeError,
     ["max", "f32[2,0]"]),
    ("argmax-axis-range", "argmax", [T(f32, 2, 3)], {"axis": 2}, ShapeError, ["argmax", "axis 2"]),
    ("gather-float-index", "gather", [T(f32, 4, 3), T(f32, 2)], {"axis": 0}, TypeError,
     ["gather", "f32[2]"]),
    ("gather-axis", "gather", [T(f32, 4, 3), T(i32, 2)], {"axis": 2}, TypeError,
     ["gather", "axis 2", "f32[4,3]"]),
    ("scatter_add-shapes", "scatter_add", [T(i32, 5), T(f32, 4, 3)], {"axis": 0, "dim_size": 6},
     ShapeError, ["scatter_add", "f32[4,3]", "i32[5]"]),
    ("scatter_add-float-index", "scatter_add", [T(f32, 4), T(f32, 4, 3)],
     {"axis": 0, "dim_size": 6}, TypeError, ["scatter_add", "f32[4]"]),
    ("unfold-3d", "unfold", [T(f32, 1, 2, 3)], WIN, ShapeError, ["unfold", "f32[1,2,3]"]),
    ("unfold-too-small", "unfold", [T(f32, 1, 1, 2, 5)], WIN, ShapeError,
     ["unfold", "f32[1,1,2,5]"]),
    ("unfold-kernel-pair", "unfold", [T(f32, 1, 1, 5, 5)], dict(WIN, kernel=(3,)), TypeError,
     ["unfold", "kernel"]),
    ("unfold-stride-0", "unfold", [T(f32, 1, 1, 5, 5)], dict(WIN, stride=(0, 1)), TypeError,
     ["unfold", "stride"]),
    ("fold-windows", "fold", [T(f32, 1, 9, 8)], dict(WIN, output_size=(4, 4)), ShapeError,
     ["fold", "f32[1,9,8]"]),
    ("fold-channels", "fold", [T(f32, 1, 10, 4)], dict(WIN, output_size=(4, 4)), ShapeError,
     ["fold", "f32[1,10,4]"]),
    ("iota-axis", "iota", [], {"shape": (2, 3), "axis": 2, "dtype": "int32"}, TypeError,
     ["iota", "axis 2"]),
    ("random-seed-dtype", "random_uniform", [T(i32), T("int64")], {"shape": (2,), "dtype": f32},
     TypeError, ["random_uniform", "seed", "i32[]"]),
    ("random-counter-shape", "random_uniform", [T("int64"), T("int64", 2)],
     {"shape": (2,), "dtype": f32}, TypeError, ["random_uniform", "counter", "i64[2]"]),
    ("random-int-dtype", "random_uniform", [T("int64"), T("int64")],
     {"shape": (2,), "dtype": i32}, TypeError, ["random_uniform", "dtype"]),
    ("arity", "add", [T(f32, 2)], {}, TypeError, ["add", "2 inputs", "got 1"]),
    ("missing-attr", "cast", [T(f32, 2)], {}, TypeError, ["cast", "dtype"]),
    ("unknown-op", "frobnicate", [T(f32, 2)], {}, TypeError, ["frobnicate"]),
]


@pytest.mark.parametrize("op,types,attrs,exc,words", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_shape_rule_errors(op, types, attrs, exc, words):
    b = GraphBuilder("bad")
    ins = [b.add_input(t, f"x{i}") for i, t in enumerate(types)]
    with pytest.raises(exc) as info:
        b.emit(op, ins, attrs)
    message = str(info.value)
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"
    assert not b.nodes, "a rejected node must not be appended"
