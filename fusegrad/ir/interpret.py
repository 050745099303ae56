"""The reference interpreter: runs any Graph with NumPy, one implementation per primitive.

It is the oracle every other stage is tested against. `interpret(graph, args, float64=True)`
evaluates every float value in float64, which is what finite-difference gradient checks use.
Fused graphs run too: a `kernel` node runs its region.
"""
from __future__ import annotations

import math

import numpy as np

from .dtypes import to_numpy
from .ops import packed_offsets, prims_where, window_output_size

def _erf(x):
    """erf by SciPy when present (imported on first use: it costs a fifth of a second, and most
    programs never need it); else math.erf element by element."""
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover - scipy is a dependency, but ir should not insist
        erf = np.vectorize(math.erf, otypes=[np.float64])
    return erf(x)


def _sigmoid(x):
    # exp(-log(1 + exp(-x))) never overflows, for either sign of x
    return np.exp(-np.logaddexp(0, -x)).astype(x.dtype)


def _reduce(fn):
    return lambda xs, a: fn(xs[0], axis=tuple(a["axes"]), keepdims=a["keepdims"])


def _slice(xs, a):
    index = []
    for start, step, size in zip(a["starts"], a["steps"], a["sizes"]):
        if size == 0:
            index.append(slice(0, 0))
            continue
        stop = start + step * size
        index.append(slice(start, stop if stop >= 0 else None, step))
    return xs[0][tuple(index)]


def _matmul(xs, a):
    x, y = xs
    if a["transpose_a"]:
        x = np.swapaxes(x, -1, -2)
    if a["transpose_b"]:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _scatter_add(xs, a):
    idx, upd = xs
    axis, k = a["axis"], idx.ndim
    shape = upd.shape[:axis] + (a["dim_size"],) + upd.shape[axis + k:]
    out = np.zeros(shape, upd.dtype)
    out_m = np.moveaxis(out, axis, 0)
    upd_m = np.moveaxis(upd, list(range(axis, axis + k)), list(range(k)))
    np.add.at(out_m, idx, upd_m)
    return out


def _check_index(xs, a):
    idx, size = xs[0], a["size"]
    bad = (idx < 0) | (idx >= size)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise IndexError(f"index {idx[at]} at position {at} is outside [0, {size})")
    return idx.copy()


def _window_geometry(a, h, w):
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
    oh = window_output_size(h, kh, sh, ph)
    ow = window_output_size(w, kw, sw, pw)
    return kh, kw, sh, sw, ph, pw, oh, ow


def _unfold(xs, a):
    x = xs[0]
    n, c, h, w = x.shape
    kh, kw, sh, sw, ph, pw, oh, ow = _window_geometry(a, h, w)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((n, c, kh, kw, oh, ow), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
    return cols.reshape(n, c * kh * kw, oh * ow)


def _fold(xs, a):
    cols = xs[0]
    h, w = a["output_size"]
    kh, kw, sh, sw, ph, pw, oh, ow = _window_geometry(a, h, w)
    n, ckk, _ = cols.shape
    c = ckk // (kh * kw)
    cols = cols.reshape(n, c, kh, kw, oh, ow)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += cols[:, :, i, j]
    return xp[:, :, ph:ph + h, pw:pw + w]


def _iota(xs, a):
    shape, axis = tuple(a["shape"]), a["axis"]
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(np.arange(shape[axis]).reshape(view), shape).astype(a["dtype"])


# ---- counter-based random numbers (splitmix64); codegen emitters reproduce this bit for bit ----
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(z):
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def random_bits(seed, counter, size):
    """64 random bits per element i: mix64(key + (i + 1) * GOLDEN), key = mix64(seed*GOLDEN + counter)."""
    with np.errstate(over="ignore"):
        s = np.asarray(seed).astype(np.int64).view(np.uint64).reshape(1)
        c = np.asarray(counter).astype(np.int64).view(np.uint64).reshape(1)
        key = mix64(s * GOLDEN + c)
        i = np.arange(1, size + 1, dtype=np.uint64)
        return mix64(key + i * GOLDEN)


def _random_uniform(xs, a):
    shape = tuple(a["shape"])
    bits = random_bits(xs[0], xs[1], int(np.prod(shape, dtype=np.int64)))
    if a["dtype"] == "float32":  # 24 random mantissa bits: values k * 2**-24, k < 2**24
        out = (bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)
    else:
        out = (bits >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)
    return out.reshape(shape)


# ---- collectives: the processes of a data-parallel job (fusegrad/distributed.py) -----------

# communicator handle (the first entry of an all_reduce's handle table) -> a function that sums
# a C-contiguous array in place over the communicator's processes; distributed.py registers
# one per communicator it is given. Handle 0 means no communicator: one process, the sum is the
# array itself.
COMMUNICATORS: dict = {}


def _all_reduce(xs, a):
    handles, values = xs[0], xs[1:]
    offsets, total = packed_offsets(values)
    out = np.zeros(total, np.result_type(*values))
    for x, at in zip(values, offsets):
        out[at:at + x.size] = x.reshape(-1)
    comm = int(handles[0])
    if comm:
        summed = COMMUNICATORS.get(comm)
        if summed is None:
            raise RuntimeError(f"all_reduce: no communicator is registered for handle {comm} "
                               f"in this process (fusegrad.distributed registers those it is "
                               f"given)")
        summed(out)
    return out


def _part(xs, a):
    shape = tuple(a["shape"])
    n = int(np.prod(shape, dtype=np.int64))
    return xs[0][a["offset"]:a["offset"] + n].reshape(shape).copy()


IMPLS = {
    "neg": lambda xs, a: np.negative(xs[0]),
    "exp": lambda xs, a: np.exp(xs[0]),
    "log": lambda xs, a: np.log(xs[0]),
    "log1p": lambda xs, a: np.log1p(xs[0]),
    "sqrt": lambda xs, a: np.sqrt(xs[0]),
    "rsqrt": lambda xs, a: 1 / np.sqrt(xs[0]),
    "tanh": lambda xs, a: np.tanh(xs[0]),
    "sigmoid": lambda xs, a: _sigmoid(xs[0]),
    "abs": lambda xs, a: np.abs(xs[0]),
    "sign": lambda xs, a: np.sign(xs[0]),
    "sin": lambda xs, a: np.sin(xs[0]),
    "cos": lambda xs, a: np.cos(xs[0]),
    "erf": lambda xs, a: _erf(xs[0]).astype(xs[0].dtype),
    "reciprocal": lambda xs, a: 1 / xs[0],
    "stop_gradient": lambda xs, a: xs[0],
    "add": lambda xs, a: xs[0] + xs[1],
    "sub": lambda xs, a: xs[0] - xs[1],
    "mul": lambda xs, a: xs[0] * xs[1],
    "div": lambda xs, a: xs[0] / xs[1],
    "pow": lambda xs, a: np.power(xs[0], xs[1]),
    "maximum": lambda xs, a: np.maximum(xs[0], xs[1]),
    "minimum": lambda xs, a: np.minimum(xs[0], xs[1]),
    "eq": lambda xs, a: xs[0] == xs[1],
    "ne": lambda xs, a: xs[0] != xs[1],
    "lt": lambda xs, a: xs[0] < xs[1],
    "le": lambda xs, a: xs[0] <= xs[1],
    "gt": lambda xs, a: xs[0] > xs[1],
    "ge": lambda xs, a: xs[0] >= xs[1],
    "select": lambda xs, a: np.where(xs[0], xs[1], xs[2]),
    "cast": lambda xs, a: xs[0].astype(a["dtype"]),
    "sum": _reduce(np.sum),
    "max": _reduce(np.max),
    "argmax": lambda xs, a: np.argmax(xs[0], axis=a["axis"]),
    "reshape": lambda xs, a: xs[0].reshape(a["shape"]),
    "transpose": lambda xs, a: np.transpose(xs[0], a["perm"]),
    "broadcast_to": lambda xs, a: np.broadcast_to(xs[0], a["shape"]),
    "slice": _slice,
    "pad": lambda xs, a: np.pad(xs[0], a["pads"], constant_values=a["value"]),
    "concatenate": lambda xs, a: np.concatenate(xs, axis=a["axis"]),
    "gather": lambda xs, a: np.take(xs[0], xs[1], axis=a["axis"]),
    "scatter_add": _scatter_add,
    "check_index": _check_index,
    "matmul": _matmul,
    "unfold": _unfold,
    "fold": _fold,
    "constant": lambda xs, a: a["value"].array,
    "iota": _iota,
    "random_uniform": _random_uniform,
    "all_reduce": _all_reduce,
    "part": _part,
}


def _run_scan(node, args, float64):
    """A scan node: its body interpreted once per step. Step t reads x[t] and writes y[t]
    (also when running in reverse, as JAX's scan); with `save`, saved[t] is the carry step t
    started from."""
    a = node.attrs
    length, n_consts, n_carry = a["length"], a["n_consts"], a["n_carry"]
    consts, carry = list(args[:n_consts]), list(args[n_consts:n_consts + n_carry])
    seqs = args[n_consts + n_carry:]
    ys = [np.empty((length, *shape), _widen(np.empty(0, to_numpy(d)), float64).dtype)
          for d, shape in a["ys"]]
    saved = [np.empty((length, *c.shape), c.dtype) for c in carry]
    for t in (range(length - 1, -1, -1) if a["reverse"] else range(length)):
        for k, c in enumerate(carry):
            saved[k][t] = c
        outs = interpret(node.region, consts + carry + [x[t] for x in seqs], float64)
        carry = [np.asarray(c) for c in outs[:n_carry]]
        for k, y in enumerate(outs[n_carry:]):
            ys[k][t] = y
    return carry + ys + (saved if a["save"] else [])


# primitives whose implementation needs the node itself (its region)
CONTROL = {"scan": _run_scan}


def eval_primitive(op, args, attrs, out_type=None):
    """Apply one primitive to NumPy arrays (used by the interpreter and by eager ops)."""
    with np.errstate(all="ignore"):
        result = IMPLS[op]([np.asarray(x) for x in args], attrs)
    if out_type is not None:
        result = np.asarray(result, dtype=to_numpy(out_type.dtype))
        if result.shape != out_type.shape:  # the shape rule and the implementation disagree
            raise AssertionError(f"{op}: interpreter made {result.shape}, rule says {out_type}")
    return result


def _widen(x, float64):
    if float64 and x.dtype == np.float32:
        return x.astype(np.float64)
    return x


class IndexOutOfRangeError(IndexError):
    """An index (a gather, an embedding id, a class label) outside its axis. Every target
    raises it, naming the operation and the user's source line; a compiled step stops before
    anything is written."""


INDEXING = prims_where(kind="gather")  # the primitives whose indices can be out of range


def _where(node) -> str:
    from .printer import short_loc

    loc = short_loc(node.loc)
    return f" ({loc})" if loc else ""


def interpret(graph, args, float64: bool = False) -> list:
    """Run `graph` on NumPy arrays `args` (one per graph input); returns the list of outputs.

    With float64=True every float32 value is computed in float64 instead (inputs, constants,
    casts and random numbers included), for finite-difference oracles.
    """
    if len(args) != len(graph.inputs):
        raise TypeError(f"graph {graph.name} takes {len(graph.inputs)} inputs, got {len(args)}")
    env = {}
    for v, name, x in zip(graph.inputs, graph.input_names, args):
        x = np.asarray(x)
        if x.shape != v.type.shape:
            raise ValueError(f"input {name}: expected shape {v.type.shape}, got {x.shape}")
        env[v] = _widen(x, float64)
    for node in graph.nodes:
        xs = [env[v] for v in node.inputs]
        if node.op == "kernel":
            results = interpret(node.region, xs, float64)
        elif node.op in CONTROL:
            results = CONTROL[node.op](node, xs, float64)
        else:
            t, attrs = node.out.type, node.attrs
            if float64 and t.dtype == "float32":
                t = t.with_dtype("float64")
                if node.op == "cast":  # casting to float32 must not round in float64 mode
                    attrs = attrs.replace(dtype="float64")
            try:
                results = [eval_primitive(node.op, xs, attrs, t)]
            except IndexError as exc:
                if node.op not in INDEXING:
                    raise
                raise IndexOutOfRangeError(f"{graph.name}: an index is out of range in "
                                           f"{node.op}{_where(node)}: {exc}") from None
        for v, r in zip(node.outputs, results):
            env[v] = _widen(np.asarray(r), float64)
    return [env[v] for v in graph.outputs]
