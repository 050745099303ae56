"""Library calls for the opaque kernels (data movement, gathers, reductions over a middle axis,
windows, random numbers): one emitter per primitive, shared by the CPU and CUDA backends.

An emitter is `fn(node, ins, out) -> [LibCall]`: `ins`/`out` are the backend's handles of the
flat operand arrays (opaque here), and each LibCall names a library function and its arguments,
typed by what they are, so each backend passes them its own way: the CPU as entries of its
schedule table (sizes in the program's integer table), CUDA as lines of its Python driver.

    Array(handle)   an operand array            Ints(values)  a small table of sizes
    Int(value)      one size                    Flag(value)   a bool
    Real(value)     a float (a fill value)      Count(n)      an element count the CPU library
                                                              needs (CUDA reads it off its arrays)

Each is an Arg(kind, value); each backend has a table from kind to how it passes one.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import NamedTuple


class Arg(NamedTuple):
    """One argument of a library call: what it is (`kind`) and its value."""
    kind: str  # "array" | "ints" | "int" | "flag" | "real" | "count"
    value: object


def Array(handle) -> Arg:  # noqa: N802  (reads as the kind of argument it makes)
    return Arg("array", handle)


def Ints(values) -> Arg:  # noqa: N802
    return Arg("ints", tuple(values))


def Int(value) -> Arg:  # noqa: N802
    return Arg("int", int(value))


def Flag(value) -> Arg:  # noqa: N802
    return Arg("flag", bool(value))


def Real(value) -> Arg:  # noqa: N802
    return Arg("real", float(value))


def Count(value) -> Arg:  # noqa: N802
    return Arg("count", int(value))


@dataclass(frozen=True)
class LibCall:
    fn: str
    args: tuple

    def arrays(self) -> list:
        return [a.value for a in self.args if a.kind == "array"]


RANK = 6  # strided_copy's fixed rank


def contiguous_strides(shape):
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


def _pad6(values, fill):
    values = tuple(values)
    if len(values) > RANK:
        raise NotImplementedError(f"data movement of rank {len(values)} (at most {RANK})")
    return (fill,) * (RANK - len(values)) + values


def merge_dims(src_strides, dst_strides, sizes):
    """The same copy over fewer, longer dimensions: size-1 dimensions dropped, and a dimension
    folded into the next where both sides step through them as through one (then the inner
    loop of strided_copy is long, and contiguous where the data is)."""
    dims = [(s, d, n) for s, d, n in zip(src_strides, dst_strides, sizes) if n != 1]
    merged: list = []
    for s, d, n in dims:
        if merged and merged[-1][0] == s * n and merged[-1][1] == d * n:
            merged[-1] = (s, d, merged[-1][2] * n)
        else:
            merged.append((s, d, n))
    if not merged:
        return (0,), (0,), (1,)
    return tuple(zip(*merged))


def _copy(src, src_offset, src_strides, dst, dst_offset, dst_strides, sizes):
    src_strides, dst_strides, sizes = merge_dims(src_strides, dst_strides, sizes)
    return [LibCall("strided_copy", (Array(src), Int(src_offset), Ints(_pad6(src_strides, 0)),
                                     Array(dst), Int(dst_offset), Ints(_pad6(dst_strides, 0)),
                                     Ints(_pad6(sizes, 1))))]


def copy_into(src, shape, dst, at) -> list:
    """The calls copying a C-contiguous array of `shape` into `dst` from element `at` on (an
    operand of an all_reduce into its place in the result: codegen/schedule.py)."""
    return _copy(src, 0, contiguous_strides(shape), dst, at, contiguous_strides(shape), shape)


def _part(node, ins, out):  # a part that is not a view (fusion makes views where it can)
    shape = node.out.shape
    return _copy(ins[0], node.attrs["offset"], contiguous_strides(shape), out, 0,
                 contiguous_strides(shape), shape)


def _transpose(node, ins, out):
    x = node.inputs[0]
    perm = node.attrs["perm"]
    xs = contiguous_strides(x.shape)
    return _copy(ins[0], 0, [xs[p] for p in perm], out, 0,
                 contiguous_strides(node.out.shape), node.out.shape)


def _broadcast_to(node, ins, out):
    shape = node.out.shape
    x = (1,) * (len(shape) - len(node.inputs[0].shape)) + tuple(node.inputs[0].shape)
    xs = contiguous_strides(x)
    src = [0 if d == 1 and o != 1 else s for d, o, s in zip(x, shape, xs)]
    return _copy(ins[0], 0, src, out, 0, contiguous_strides(shape), shape)


def _slice(node, ins, out):
    a = node.attrs
    xs = contiguous_strides(node.inputs[0].shape)
    offset = sum(st * s for st, s in zip(a["starts"], xs))
    return _copy(ins[0], offset, [s * sp for s, sp in zip(xs, a["steps"])], out, 0,
                 contiguous_strides(node.out.shape), node.out.shape)


def _pad(node, ins, out):
    pads = node.attrs["pads"]
    os_ = contiguous_strides(node.out.shape)
    offset = sum(lo * s for (lo, _), s in zip(pads, os_))
    fill = LibCall("fill", (Array(out), Real(float(node.attrs["value"])),
                            Count(node.out.type.size)))
    return [fill] + _copy(ins[0], 0, contiguous_strides(node.inputs[0].shape), out, offset,
                          os_, node.inputs[0].shape)


def _concatenate(node, ins, out):
    axis = node.attrs["axis"]
    os_ = contiguous_strides(node.out.shape)
    calls, at = [], 0
    for v, handle in zip(node.inputs, ins):
        calls += _copy(handle, 0, contiguous_strides(v.shape), out, at * os_[axis], os_,
                       v.shape)
        at += v.shape[axis]
    return calls


def _split(shape, axis, width=1):
    return prod(shape[:axis]), prod(shape[axis:axis + width]), prod(shape[axis + width:])


def _gather(node, ins, out):
    x, idx = node.inputs
    A, N, B = _split(x.shape, node.attrs["axis"])
    return [LibCall("gather", (Array(ins[0]), Array(ins[1]), Array(out), Int(A), Int(N), Int(B),
                               Int(idx.type.size)))]


def _scatter_add(node, ins, out):
    idx, upd = node.inputs
    axis = node.attrs["axis"]
    A = prod(upd.shape[:axis])
    B = prod(upd.shape[axis + len(idx.shape):])
    return [LibCall("scatter_add", (Array(ins[0]), Array(ins[1]), Array(out), Int(A),
                                    Int(node.attrs["dim_size"]), Int(B), Int(idx.type.size)))]


def _check_index(node, ins, out):
    return [LibCall("check_index", (Array(ins[0]), Array(out), Int(node.attrs["size"]),
                                    Count(node.out.type.size)))]


def _reduce(node, ins, out):
    axes = node.attrs["axes"]  # one contiguous run (prepare_for_fusion made sure)
    A, N, B = _split(node.inputs[0].shape, axes[0], len(axes))
    return [LibCall("reduce_middle", (Array(ins[0]), Array(out), Int(A), Int(N), Int(B),
                                      Flag(node.op == "max")))]


def _argmax(node, ins, out):
    A, N, B = _split(node.inputs[0].shape, node.attrs["axis"])
    return [LibCall("argmax", (Array(ins[0]), Array(out), Int(A), Int(N), Int(B)))]


def _iota(node, ins, out):
    A, N, B = _split(node.out.shape, node.attrs["axis"])
    return [LibCall("iota", (Array(out), Int(A), Int(N), Int(B)))]


def _window(fn):
    def emit(node, ins, out):
        a = node.attrs
        image = node.inputs[0] if fn == "unfold" else node.out
        n, c, h, w = image.shape
        (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        sizes = tuple(Int(v) for v in (n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow))
        return [LibCall(fn, (Array(ins[0]), Array(out), *sizes))]

    return emit


def _random_uniform(node, ins, out):
    return [LibCall("random_uniform", (Array(ins[0]), Array(ins[1]), Array(out),
                                       Flag(node.out.type.dtype == "float32"),
                                       Count(node.out.type.size)))]


def _copy_through(node, ins, out):  # stop_gradient / reshape as a kernel of its own
    return [LibCall("copy", (Array(ins[0]), Array(out), Count(node.out.type.size)))]


MOVEMENT = {
    "transpose": _transpose,
    "broadcast_to": _broadcast_to,
    "slice": _slice,
    "pad": _pad,
    "concatenate": _concatenate,
    "gather": _gather,
    "scatter_add": _scatter_add,
    "check_index": _check_index,
    "sum": _reduce,
    "max": _reduce,
    "argmax": _argmax,
    "iota": _iota,
    "unfold": _window("unfold"),
    "fold": _window("fold"),
    "random_uniform": _random_uniform,
    "reshape": _copy_through,
    "stop_gradient": _copy_through,
    "part": _part,
}
