"""Driver lines for the opaque kernels: one emitter per primitive, calling cpu_library.

An emitter is `fn(node, ins, out, dims) -> [source lines]`: `ins`/`out` are the driver's names
of the flat operand arrays, `dims(*ints)` stores sizes in the driver's dims table and returns
the expression that reads them (so the driver's text does not depend on the shapes).
"""
from __future__ import annotations

from math import prod

from .cpu_expr import literal

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


def _copy(dims, src, src_offset, src_strides, dst, dst_offset, dst_strides, sizes):
    src_strides, dst_strides, sizes = merge_dims(src_strides, dst_strides, sizes)
    return [f"strided_copy({src}, {dims(src_offset)}, {dims(*_pad6(src_strides, 0))}, {dst}, "
            f"{dims(dst_offset)}, {dims(*_pad6(dst_strides, 0))}, {dims(*_pad6(sizes, 1))})"]


def _transpose(node, ins, out, dims):
    x = node.inputs[0]
    perm = node.attrs["perm"]
    xs = contiguous_strides(x.shape)
    return _copy(dims, ins[0], 0, [xs[p] for p in perm], out, 0,
                 contiguous_strides(node.out.shape), node.out.shape)


def _broadcast_to(node, ins, out, dims):
    shape = node.out.shape
    x = (1,) * (len(shape) - len(node.inputs[0].shape)) + tuple(node.inputs[0].shape)
    xs = contiguous_strides(x)
    src = [0 if d == 1 and o != 1 else s for d, o, s in zip(x, shape, xs)]
    return _copy(dims, ins[0], 0, src, out, 0, contiguous_strides(shape), shape)


def _slice(node, ins, out, dims):
    a = node.attrs
    xs = contiguous_strides(node.inputs[0].shape)
    offset = sum(st * s for st, s in zip(a["starts"], xs))
    return _copy(dims, ins[0], offset, [s * sp for s, sp in zip(xs, a["steps"])], out, 0,
                 contiguous_strides(node.out.shape), node.out.shape)


def _pad(node, ins, out, dims):
    pads = node.attrs["pads"]
    os_ = contiguous_strides(node.out.shape)
    offset = sum(lo * s for (lo, _), s in zip(pads, os_))
    return [f"fill({out}, {literal(node.attrs['value'], 'float64')})"] + _copy(
        dims, ins[0], 0, contiguous_strides(node.inputs[0].shape), out, offset, os_,
        node.inputs[0].shape)


def _concatenate(node, ins, out, dims):
    axis = node.attrs["axis"]
    os_ = contiguous_strides(node.out.shape)
    lines, at = [], 0
    for v, name in zip(node.inputs, ins):
        lines += _copy(dims, name, 0, contiguous_strides(v.shape), out, at * os_[axis], os_,
                       v.shape)
        at += v.shape[axis]
    return lines


def _split(shape, axis, width=1):
    return prod(shape[:axis]), prod(shape[axis:axis + width]), prod(shape[axis + width:])


def _gather(node, ins, out, dims):
    x, idx = node.inputs
    A, N, B = _split(x.shape, node.attrs["axis"])
    return [f"gather({ins[0]}, {ins[1]}, {out}, {dims(A)}, {dims(N)}, {dims(B)}, "
            f"{dims(idx.type.size)})"]


def _scatter_add(node, ins, out, dims):
    idx, upd = node.inputs
    axis = node.attrs["axis"]
    A = prod(upd.shape[:axis])
    B = prod(upd.shape[axis + len(idx.shape):])
    return [f"scatter_add({ins[0]}, {ins[1]}, {out}, {dims(A)}, {dims(node.attrs['dim_size'])}, "
            f"{dims(B)}, {dims(idx.type.size)})"]


def _reduce(node, ins, out, dims):
    axes = node.attrs["axes"]  # one contiguous run (prepare_for_fusion made sure)
    A, N, B = _split(node.inputs[0].shape, axes[0], len(axes))
    return [f"reduce_middle({ins[0]}, {out}, {dims(A)}, {dims(N)}, {dims(B)}, "
            f"{node.op == 'max'})"]


def _argmax(node, ins, out, dims):
    A, N, B = _split(node.inputs[0].shape, node.attrs["axis"])
    return [f"argmax({ins[0]}, {out}, {dims(A)}, {dims(N)}, {dims(B)})"]


def _iota(node, ins, out, dims):
    A, N, B = _split(node.out.shape, node.attrs["axis"])
    return [f"iota({out}, {dims(A)}, {dims(N)}, {dims(B)})"]


def _window(fn):
    def emit(node, ins, out, dims):
        a = node.attrs
        image = node.inputs[0] if fn == "unfold" else node.out
        n, c, h, w = image.shape
        (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        sizes = ", ".join(dims(v) for v in (n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow))
        return [f"{fn}({ins[0]}, {out}, {sizes})"]

    return emit


def _random_uniform(node, ins, out, dims):
    return [f"random_uniform({ins[0]}, {ins[1]}, {out}, {node.out.type.dtype == 'float32'})"]


def _copy_through(node, ins, out, dims):  # stop_gradient / a lone elementwise identity
    return [f"{out}[:] = {ins[0]}"]


MOVEMENT = {
    "transpose": _transpose,
    "broadcast_to": _broadcast_to,
    "slice": _slice,
    "pad": _pad,
    "concatenate": _concatenate,
    "gather": _gather,
    "scatter_add": _scatter_add,
    "sum": _reduce,
    "max": _reduce,
    "argmax": _argmax,
    "iota": _iota,
    "unfold": _window("unfold"),
    "fold": _window("fold"),
    "random_uniform": _random_uniform,
    "reshape": _copy_through,
    "stop_gradient": _copy_through,
}
