"""Reverse-mode autodiff: every primitive's VJP against finite differences (table-driven from the
registry, first and second order), the no-gradient primitives, symbolic zeros, the grad API
(argnums, pytrees, has_aux, errors), higher-order gradients, graph structure (forward values
reused, IR text), check_grads itself, tie conventions and numerically stable composites."""
from __future__ import annotations

import math
import importlib.util
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
from scipy.special import expit

import fusegrad as fg
from fusegrad.compiler.control import scan
from fusegrad.compiler import lax
from fusegrad.compiler import vjp_rules
from fusegrad.compiler.autodiff import GradientError
from fusegrad.compiler.vjp_rules import VJP_RULES
from fusegrad.ir.ops import PRIMITIVES, prims_where

# Primitives whose VJP cuts the path (no gradient flows through them to their inputs).
NO_GRADIENT = set(prims_where(differentiable=False))


def _rng(name: str):
    return np.random.default_rng(zlib.crc32(name.encode()))


def ops_of(graph, part=None):
    return [n.op for n in graph.nodes if part is None or n.part == part]


# ---------------------------------------------------------------------------------------------
# input generators: rng -> float64 array


def u(shape, lo=-2.0, hi=2.0):
    return lambda rng: rng.uniform(lo, hi, shape)


def away(shape, lo=0.5, hi=2.0):
    """Magnitudes in [lo, hi) with random signs: away from the singularity at 0."""
    return lambda rng: rng.uniform(lo, hi, shape) * rng.choice([-1.0, 1.0], shape)


@dataclass
class GradCase:
    op: str  # the primitive under test (must appear in the traced graph)
    make: Callable  # (*args) -> the primitive's output, written with lax calls
    args: tuple  # generators of the differentiated float64 arguments
    name: str
    order2: bool = True
    tol: dict = field(default_factory=dict)

    def __repr__(self):
        return self.name


CASES: list[GradCase] = []


def case(op, make, *args, name="", order2=True, **tol):
    CASES.append(GradCase(op, make, tuple(args), f"{op}-{name}" if name else op, order2, tol))


# ---- unary: each at points away from its singularities ----
UNARY_DOMAIN = {
    "neg": u((3, 4)),
    "exp": u((3, 4)),
    "log": u((3, 4), 0.3, 3.0),
    "log1p": u((3, 4), -0.6, 2.0),
    "sqrt": u((3, 4), 0.3, 3.0),
    "rsqrt": u((3, 4), 0.3, 3.0),
    "tanh": u((3, 4)),
    "sigmoid": u((3, 4), -4.0, 4.0),
    "sin": u((3, 4), -3.0, 3.0),
    "cos": u((3, 4), -3.0, 3.0),
    "erf": u((3, 4)),
    "reciprocal": away((3, 4)),
    "abs": away((3, 4)),
}
for _op, _gen in UNARY_DOMAIN.items():
    case(_op, lambda x, _op=_op: lax.bind(_op, x), _gen)
case("exp", lambda x: lax.bind("exp", x), u(()), name="scalar")

# ---- binary, with NumPy broadcasting ----
SHAPE_PAIRS = {
    "same": ((3, 4), (3, 4)),
    "outer": ((3, 1), (1, 4)),
    "rank": ((2, 3, 4), (4,)),
    "scalar": ((), (2, 3)),
    "mixed": ((2, 1, 4), (3, 1)),
}
BINARY_DOMAINS = {
    "add": (u, u),
    "sub": (u, u),
    "mul": (u, u),
    "div": (u, away),
    "pow": (lambda s: u(s, 0.5, 2.0), lambda s: u(s, -1.5, 1.5)),  # positive base, both diff'd
    "maximum": (u, u),  # continuous random inputs: no ties
    "minimum": (u, u),
}
for _op, (_ga, _gb) in BINARY_DOMAINS.items():
    for _desc, (_sa, _sb) in SHAPE_PAIRS.items():
        case(_op, lambda x, y, _op=_op: lax.bind(_op, x, y), _ga(_sa), _gb(_sb), name=_desc)
        if _desc == "outer":  # both orders of the broadcast
            case(_op, lambda x, y, _op=_op: lax.bind(_op, x, y), _ga(_sb), _gb(_sa),
                 name="outer-swapped")
case("mul", lambda x: lax.bind("mul", x, x), u((3, 4)), name="same-input-twice")
case("pow", lambda x: lax.bind("pow", x, x), u((5,), 0.5, 2.0), name="x-to-the-x")

# ---- select: a fixed condition, operands broadcast against it ----
_COND = np.random.default_rng(7).random((3, 4)) < 0.5
case("select", lambda a, b: lax.bind("select", _COND, a, b), u((3, 4)), u((3, 4)), name="same")
case("select", lambda a, b: lax.bind("select", _COND, a, b), u((3, 1)), u((4,)), name="bcast")
case("select", lambda a, b: lax.bind("select", _COND[:, :1], a, b), u((1, 4)), u((3, 4)),
     name="bcast-cond")
case("select", lambda a, b: lax.where(lax.compare("gt", a, b), a, lax.mul(b, b)), u((3, 4)),
     u((3, 4)), name="traced-cond")

# ---- scan: a loop with consts, a carry and xs all differentiated ----
def _scan_rnn(reverse):
    def make(w, h0, xs):
        def cell(h, x):
            h = lax.unary("tanh", lax.add(lax.mul(h, w), x))
            return h, lax.mul(h, h)
        h, ys = scan(cell, h0, xs, reverse=reverse)
        return lax.add(lax.reduce_sum(ys, 0), h)
    return make


for _reverse in (False, True):
    case("scan", _scan_rnn(_reverse), u((3,)), u((3,)), u((4, 3)), name=f"reverse{_reverse}")

# ---- cast ----
case("cast", lambda x: lax.bind("cast", x, dtype="float32"), u((3, 4)), name="to-f32")
case("cast", lambda x: lax.bind("cast", lax.bind("cast", x, dtype="float32"), dtype="float64"),
     u((3, 4)), name="round-trip")

# ---- reductions ----
for _axes, _keep in [(None, False), (1, False), (1, True), ((0, 2), False), ((0, 2), True),
                     (-1, True)]:
    case("sum", lambda x, a=_axes, k=_keep: lax.reduce_sum(x, a, k), u((2, 3, 4)),
         name=f"axes{_axes}-keep{_keep}")
    case("max", lambda x, a=_axes, k=_keep: lax.reduce_max(x, a, k), u((2, 3, 4)),
         name=f"axes{_axes}-keep{_keep}")

# ---- movement ----
case("reshape", lambda x: lax.reshape(x, (4, -1)), u((2, 3, 4)))
case("reshape", lambda x: lax.reshape(x, (1, 6, 1)), u((2, 3)), name="unit-axes")
case("transpose", lambda x: lax.transpose(x, (2, 0, 1)), u((2, 3, 4)))
case("transpose", lambda x: lax.transpose(x), u((3, 4)), name="2d")
case("broadcast_to", lambda x: lax.broadcast_to(x, (2, 3, 4)), u((3, 1)), name="rank-and-axis")
case("broadcast_to", lambda x: lax.broadcast_to(x, (3, 4)), u(()), name="scalar")
_SLICES = {
    "reverse-and-step2": (slice(None, None, -1), slice(1, None, 2)),
    "negative-step3": (slice(5, 0, -3), slice(None, None, 4)),
    "step3-exact-tail": (slice(1, None, 3), slice(None)),  # 1, 4: interleaved length fits
    "step3-cut-tail": (slice(2, None, 3), slice(0, 7, 5)),  # 2, 5: interleaved tail cut off
    "neg-step2-offset": (slice(6, 1, -2), slice(-2, None)),
    "int-and-neg-step": (2, slice(None, None, -2)),
    "single": (slice(3, 4), slice(6, 7)),
}
for _desc, _key in _SLICES.items():
    case("slice", lambda x, k=_key: lax.getitem(x, k), u((7, 7)), name=_desc)
case("slice", lambda x: lax.slice_axes(x, (4, 0, 3), (-2, 1, -1), (3, 3, 2)), u((5, 3, 4)),
     name="raw-3d")
case("pad", lambda x: lax.pad(x, ((1, 2), (0, 3)), value=1.5), u((3, 4)))
case("pad", lambda x: lax.pad(x, ((0, 0), (2, 0), (1, 1))), u((2, 3, 2)), name="3d")
case("concatenate", lambda a, b, c: lax.concatenate([a, b, c], axis=1), u((2, 1, 3)),
     u((2, 3, 3)), u((2, 2, 3)), name="axis1")
case("concatenate", lambda a, b: lax.concatenate([a, b], axis=-1), u((3, 2)), u((3, 4)),
     name="last-axis")

# ---- gather / scatter_add, repeated and 2-D indices ----
_IDX_REP = np.array([2, 2, 0, 4, 2])
_IDX_2D = np.array([[0, 2, 2], [4, 0, 0]])
case("gather", lambda x: lax.gather(x, _IDX_REP, axis=0), u((5, 3)), name="repeated")
case("gather", lambda x: lax.gather(x, _IDX_2D, axis=1), u((2, 5, 3)), name="2d-axis1")
case("gather", lambda x: lax.gather(x, np.array([1, 1, 0]), axis=-1), u((3, 2)), name="last")
case("scatter_add", lambda upd: lax.scatter_add(_IDX_REP, upd, axis=0, dim_size=6), u((5, 3)),
     name="repeated")
case("scatter_add", lambda upd: lax.scatter_add(_IDX_2D, upd, axis=1, dim_size=5),
     u((2, 2, 3, 3)), name="2d-axis1")

# ---- matmul: transpose flags, batches, broadcast batches ----
for _ta in (False, True):
    for _tb in (False, True):
        _sa = (4, 3) if _ta else (3, 4)
        _sb = (5, 4) if _tb else (4, 5)
        case("matmul", lambda a, b, ta=_ta, tb=_tb: lax.matmul(a, b, ta, tb), u(_sa), u(_sb),
             name=f"ta{int(_ta)}-tb{int(_tb)}")
        case("matmul", lambda a, b, ta=_ta, tb=_tb: lax.matmul(a, b, ta, tb),
             u((2, 1) + _sa), u((3,) + _sb), name=f"bcast-batch-ta{int(_ta)}-tb{int(_tb)}")
case("matmul", lambda a, b: lax.matmul(a, b), u((2, 3, 4)), u((2, 4, 5)), name="batched")
case("matmul", lambda a, b: lax.matmul(a, b), u((3, 4)), u((2, 4, 5)), name="bcast-a")
case("matmul", lambda a, b: lax.matmul(a, b), u((2, 3, 4)), u((4, 5)), name="bcast-b")
case("matmul", lambda a: lax.matmul(a, a, transpose_b=True), u((3, 4)), name="a-at")

# ---- windows (im2col / col2im) with stride and padding ----
case("unfold", lambda x: lax.unfold(x, 3, stride=2, padding=1), u((2, 2, 5, 6)), name="k3s2p1")
case("unfold", lambda x: lax.unfold(x, (2, 3), stride=(1, 2), padding=(0, 1)), u((1, 2, 4, 5)),
     name="rect")
case("unfold", lambda x: lax.unfold(x, 2), u((1, 1, 4, 4)), name="overlap")
case("fold", lambda c: lax.fold(c, (5, 6), 3, stride=2, padding=1), u((2, 18, 9)),
     name="k3s2p1")
case("fold", lambda c: lax.fold(c, (4, 4), 2), u((1, 4, 9)), name="overlap")
case("fold", lambda c: lax.fold(c, (4, 5), (2, 3), stride=(1, 2), padding=(0, 1)),
     u((1, 12, 9)), name="rect")

# ---- collectives: with no communicator (handle 0) the sum over processes is the identity ----
NO_COMM = np.zeros(5, np.int64)
case("all_reduce", lambda a, b: lax.all_reduce(NO_COMM, a, b), u((3, 4)), u((5,)), name="two")
case("all_reduce", lambda a: lax.all_reduce(NO_COMM, a, handle_bits=64), u(()),
     name="scalar-h64")
case("part", lambda x: lax.part(x, 3, (2, 4)), u((12,)), name="2x4")
case("part", lambda x: lax.part(x, 0, ()), u((3,)), name="scalar")


def test_tables_cover_every_primitive():
    differentiable = {c.op for c in CASES}
    assert differentiable == set(PRIMITIVES) - NO_GRADIENT
    assert set(NO_GRAD_ROWS) == NO_GRADIENT
    assert set(UNARY_DOMAIN) == set(prims_where(kind="unary", differentiable=True))


def _weighted(make, args, rng):
    """sum(make(*x) * W) for a fixed random W, so a wrong gradient cannot pass by accident."""
    w = rng.standard_normal(np.shape(make(*args)))
    return lambda *xs: lax.reduce_sum(lax.mul(make(*xs), w))


@pytest.mark.parametrize("c", CASES, ids=repr)
def test_vjp_matches_finite_differences(c):
    rng = _rng(c.name)
    args = [gen(rng) for gen in c.args]
    fn = _weighted(c.make, args, rng)
    assert c.op in ops_of(fg.jit(fn).trace(*args).graph), f"{c.name} does not emit {c.op}"
    fg.check_grads(fn, args, order=1, **c.tol)


@pytest.mark.parametrize("c", [c for c in CASES if c.order2], ids=repr)
def test_second_order_matches_finite_differences(c):
    """A quadratic read-out (sum(W1*y + W2*y*y)) makes even linear primitives' second
    derivatives depend on their VJP rules' own VJPs."""
    rng = _rng("order2-" + c.name)
    args = [gen(rng) for gen in c.args]
    y = c.make(*args)
    w1, w2 = rng.standard_normal(np.shape(y)), rng.standard_normal(np.shape(y))

    def fn(*xs):
        y = c.make(*xs)
        return lax.reduce_sum(lax.add(lax.mul(y, w1), lax.mul(lax.mul(y, y), w2)))

    fg.check_grads(fn, args, order=2, max_elements=24, **c.tol)


def test_symbolic_gradient_is_not_trivially_zero():
    """Guard for the table: the weighted read-out gives every argument a non-zero gradient."""
    for c in CASES:
        if c.op == "all_reduce" and importlib.util.find_spec("mpi4py") is None:
            continue  # its compiled kernel links MPI_Allreduce (from mpi4py's MPI library)
        rng = _rng(c.name)
        args = [gen(rng) for gen in c.args]
        fn = _weighted(c.make, args, rng)
        grads = fg.grad(fn, argnums=tuple(range(len(args))))(*args)
        for i, g in enumerate(grads):
            assert np.abs(g).max() > 1e-3, f"{c.name}: gradient of argument {i} is ~0"


# ---------------------------------------------------------------------------------------------
# primitives without a gradient: the path through them is cut, exactly


def _grid(rng, shape):
    return rng.choice(np.array([-1.0, 0.0, 1.0]), shape)  # ties for comparisons, zeros for sign


def _compare_row(op):
    def check():
        rng = _rng(op)
        x, y = _grid(rng, (3, 4)), _grid(rng, (3, 4))
        w = rng.standard_normal((3, 4))

        def f(x, y):  # compare feeds the loss, and x*y gives a live path alongside it
            cut = lax.cast(lax.bind(op, x, y), "float64")
            return lax.add(lax.reduce_sum(lax.mul(cut, w)), lax.reduce_sum(lax.mul(x, y)))

        assert op in ops_of(fg.jit(f).trace(x, y).graph)
        gx, gy = fg.grad(f, argnums=(0, 1))(x, y)
        np.testing.assert_array_equal(gx, y)
        np.testing.assert_array_equal(gy, x)

    return check


def _argmax_row():
    rng = _rng("argmax")
    x, v, w = rng.standard_normal((3, 5)), rng.standard_normal((3, 5)), rng.standard_normal(3)

    def f(x):
        cut = lax.cast(lax.argmax(x, axis=1), "float64")
        return lax.add(lax.reduce_sum(lax.mul(cut, w)), lax.reduce_sum(lax.mul(x, v)))

    assert "argmax" in ops_of(fg.jit(f).trace(x).graph)
    np.testing.assert_array_equal(fg.grad(f)(x), v)


def _sign_row():
    rng = _rng("sign")
    x, v, w = _grid(rng, (3, 4)), rng.standard_normal((3, 4)), rng.standard_normal((3, 4))

    def f(x):
        cut = lax.unary("sign", x)
        return lax.add(lax.reduce_sum(lax.mul(cut, w)), lax.reduce_sum(lax.mul(x, v)))

    np.testing.assert_array_equal(fg.grad(f)(x), v)
    x = rng.standard_normal((3, 4))  # and off the grid, where sign is locally constant
    np.testing.assert_array_equal(fg.grad(f)(x), v)


def _stop_gradient_row():
    x = _rng("stop_gradient").standard_normal((3, 4))
    f = lambda x: lax.reduce_sum(lax.mul(lax.stop_gradient(x), x))  # noqa: E731
    np.testing.assert_array_equal(fg.grad(f)(x), x)
    # and stop_gradient of the whole thing gives exactly zero
    g = fg.grad(lambda x: lax.reduce_sum(lax.stop_gradient(lax.mul(x, x))))(x)
    np.testing.assert_array_equal(g, np.zeros_like(x))


def _constant_row():
    rng = _rng("constant")
    x, c = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    f = lambda x: lax.reduce_sum(lax.mul(x, c))  # noqa: E731  closed-over array -> constant node
    assert "constant" in ops_of(fg.jit(f).trace(x).graph)
    np.testing.assert_array_equal(fg.grad(f)(x), c)


def _check_index_row():
    """Labels pass through unchanged (and carry no gradient); the loss's gradient is softmax
    minus one-hot, as without the check."""
    logits = _rng("check_index").standard_normal((4, 3))
    labels = np.array([0, 2, 1, 2])
    f = lambda z, y: fg.cross_entropy(z, y)  # noqa: E731  the check is inside
    assert "check_index" in ops_of(fg.jit(f).trace(logits, labels).graph)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(fg.grad(f)(logits, labels), (p - np.eye(3)[labels]) / 4,
                               rtol=1e-12)


def _iota_row():
    x = _rng("iota").standard_normal((3, 4))
    f = lambda x: lax.reduce_sum(lax.mul(x, lax.iota((3, 4), 1, "float64")))  # noqa: E731
    assert "iota" in ops_of(fg.jit(f).trace(x).graph)
    np.testing.assert_array_equal(fg.grad(f)(x), np.broadcast_to(np.arange(4.0), (3, 4)))


def _random_uniform_row():
    x = _rng("random_uniform").standard_normal((3, 4))
    seed, counter = np.int64(5), np.int64(11)

    def f(x, seed, counter):
        return lax.reduce_sum(lax.mul(x, lax.random_uniform(seed, counter, (3, 4), "float64")))

    assert "random_uniform" in ops_of(fg.jit(f).trace(x, seed, counter).graph)
    expected = lax.random_uniform(seed, counter, (3, 4), "float64")
    np.testing.assert_array_equal(fg.grad(f)(x, seed, counter), expected)


NO_GRAD_ROWS = {
    **{op: _compare_row(op) for op in ("eq", "ne", "lt", "le", "gt", "ge")},
    "argmax": _argmax_row,
    "sign": _sign_row,
    "stop_gradient": _stop_gradient_row,
    "constant": _constant_row,
    "iota": _iota_row,
    "check_index": _check_index_row,
    "random_uniform": _random_uniform_row,
}


@pytest.mark.parametrize("op", sorted(NO_GRAD_ROWS))
def test_no_gradient_primitive_cuts_the_path(op):
    NO_GRAD_ROWS[op]()


def test_cast_to_integer_cuts_the_path():
    x = np.array([0.4, 1.6, -2.2])
    f = lambda x: lax.add(lax.reduce_sum(lax.cast(lax.cast(x, "int64"), "float64")),  # noqa
                          lax.reduce_sum(lax.mul(x, 3.0)))
    np.testing.assert_array_equal(fg.grad(f)(x), np.full(3, 3.0))


# ---------------------------------------------------------------------------------------------
# symbolic zeros


def _zero_fill_only(extra_nodes):
    return all(op in ("constant", "broadcast_to") for op in extra_nodes)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("how", ["unused", "stop_gradient", "through_compare"])
def test_symbolic_zero_gradient(how, dtype):
    rng = _rng("zeros-" + how)
    x = rng.standard_normal((3, 4)).astype(dtype)
    y = rng.standard_normal((2, 4)).astype(dtype)

    def f(x, y):
        loss = lax.reduce_sum(lax.unary("exp", x))
        if how == "stop_gradient":
            loss = lax.add(loss, lax.reduce_sum(lax.stop_gradient(y)))
        elif how == "through_compare":
            loss = lax.add(loss, lax.reduce_sum(lax.where(lax.compare("gt", y, 0.0), 1.0, 2.0)))
        return loss

    both = fg.grad(f, argnums=(0, 1))
    gx, gy = both(x, y)
    assert gy.shape == y.shape and gy.dtype == y.dtype
    np.testing.assert_array_equal(gy, np.zeros_like(y))
    assert gx.dtype == x.dtype
    np.testing.assert_allclose(gx, np.exp(x), rtol=1e-6)

    graph = both.trace(x, y).graph
    y_var = graph.inputs[1]
    backward = [n for n in graph.nodes if n.part == "backward"]
    assert not any(y_var in n.inputs for n in backward)
    only_x = fg.grad(f, argnums=0).trace(x, y).graph
    extra = Counter(ops_of(graph, "backward")) - Counter(ops_of(only_x, "backward"))
    assert _zero_fill_only(extra.elements()), f"backward nodes emitted for y: {extra}"
    assert sum(extra.values()) <= 2


def test_gradient_of_loss_independent_of_every_input_is_zero():
    x = np.ones((2, 3), np.float32)
    c = np.arange(4.0)
    g = fg.grad(lambda x: lax.reduce_sum(lax.mul(c, c)))
    out = g(x)
    assert out.shape == (2, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, 0)
    backward = ops_of(g.trace(x).graph, "backward")
    assert _zero_fill_only(backward) and len(backward) <= 2


def test_float32_input_gets_float32_gradient_through_float64_math():
    x = np.array([0.5, -1.0, 2.0], np.float32)
    w = np.array([1.0, 2.0, 3.0])  # float64: promotes the product
    g = fg.grad(lambda x: lax.reduce_sum(lax.mul(x, w)))(x)
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, w.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# the grad API


def test_integer_argument_raises_type_error_naming_it():
    def f(w, labels):
        return lax.reduce_sum(lax.mul(w, lax.cast(labels, "float64")))

    w, labels = np.ones(3), np.arange(3)
    with pytest.raises(TypeError, match="labels"):
        fg.grad(f, argnums=1)(w, labels)
    with pytest.raises(GradientError, match=r"labels \(i64\[3\]\)"):
        fg.grad(f, argnums=(0, 1))(w, labels)
    np.testing.assert_array_equal(fg.grad(f)(w, labels), labels)  # argnums=0 is fine

    def g(params):
        return lax.reduce_sum(lax.cast(params["steps"], "float64"))

    with pytest.raises(TypeError, match=r"params\['steps'\]"):
        fg.grad(g)({"steps": np.arange(2)})


def test_non_scalar_loss_raises_naming_its_type():
    x = np.ones((2, 3))
    with pytest.raises(TypeError, match=r"scalar.*f64\[2,3\]"):
        fg.grad(lambda x: lax.mul(x, 2.0))(x)
    with pytest.raises(TypeError, match=r"float.*i64\[\]"):
        fg.grad(lambda x: lax.reduce_sum(lax.cast(x, "int64")))(x)
    with pytest.raises(TypeError, match="has_aux"):
        fg.grad(lambda x: (lax.reduce_sum(x), x))(x)


def test_has_aux_grad_and_value_and_grad():
    x = np.array([0.5, -1.0, 2.0])

    def f(x):
        y = lax.unary("tanh", x)
        return lax.reduce_sum(lax.mul(y, y)), {"y": y, "n": [lax.reduce_sum(x)]}

    dtanh2 = 2 * np.tanh(x) * (1 - np.tanh(x) ** 2)
    grads, aux = fg.grad(f, has_aux=True)(x)
    np.testing.assert_allclose(grads, dtanh2, rtol=1e-12)
    assert set(aux) == {"y", "n"} and isinstance(aux["n"], list)
    np.testing.assert_allclose(aux["y"], np.tanh(x), rtol=1e-12)
    np.testing.assert_allclose(aux["n"][0], x.sum())

    (loss, aux2), grads2 = fg.value_and_grad(f, has_aux=True)(x)
    np.testing.assert_allclose(loss, (np.tanh(x) ** 2).sum(), rtol=1e-12)
    np.testing.assert_allclose(aux2["y"], np.tanh(x), rtol=1e-12)
    np.testing.assert_allclose(grads2, dtanh2, rtol=1e-12)

    loss3, grads3 = fg.value_and_grad(lambda x: f(x)[0])(x)
    np.testing.assert_allclose(loss3, loss)
    np.testing.assert_allclose(grads3, dtanh2, rtol=1e-12)

    with pytest.raises(TypeError, match="has_aux"):
        fg.grad(lambda x: lax.reduce_sum(x), has_aux=True)(x)


def test_argnums_tuple_returns_tuple_of_pytrees():
    rng = _rng("argnums")
    a = {"w": rng.standard_normal((2, 3)), "b": [rng.standard_normal(3)]}
    x = rng.standard_normal((4, 2))
    c = rng.standard_normal(3)

    def f(a, x, c):
        h = lax.add(lax.matmul(x, a["w"]), a["b"][0])
        return lax.reduce_sum(lax.mul(lax.unary("tanh", h), c))

    ga, gc = fg.grad(f, argnums=(0, 2))(a, x, c)
    assert set(ga) == {"w", "b"} and isinstance(ga["b"], list) and len(ga["b"]) == 1
    h = x @ a["w"] + a["b"][0]
    dh = c * (1 - np.tanh(h) ** 2)
    np.testing.assert_allclose(ga["w"], x.T @ dh, rtol=1e-12)
    np.testing.assert_allclose(ga["b"][0], dh.sum(0), rtol=1e-12)
    np.testing.assert_allclose(gc, np.tanh(h).sum(0), rtol=1e-12)

    (gx,) = fg.grad(f, argnums=(1,))(a, x, c)
    np.testing.assert_allclose(gx, dh @ a["w"].T, rtol=1e-12)
    g_last = fg.grad(f, argnums=-1)(a, x, c)  # negative argnums count from the end
    np.testing.assert_allclose(g_last, gc)
    loss, (ga2, gx2) = fg.value_and_grad(f, argnums=(0, 1))(a, x, c)
    np.testing.assert_allclose(loss, (np.tanh(h) * c).sum(), rtol=1e-12)
    np.testing.assert_allclose(gx2, gx)
    np.testing.assert_allclose(ga2["w"], ga["w"])


def test_pytree_gradients_mirror_the_input_structure():
    rng = _rng("pytree")
    params = {
        "layers": [{"w": rng.standard_normal((3, 3)), "b": rng.standard_normal(3)},
                   {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)}],
        "scale": (rng.standard_normal(()),),
        "unused": rng.standard_normal(4).astype(np.float32),
    }
    x = rng.standard_normal((5, 3))

    def f(p, x):
        h = x
        for layer in p["layers"]:
            h = lax.unary("tanh", lax.add(lax.matmul(h, layer["w"]), layer["b"]))
        return lax.mul(lax.reduce_sum(lax.mul(h, h)), p["scale"][0])

    grads = fg.grad(f)(params, x)
    assert isinstance(grads, dict) and list(grads) == list(params)
    assert isinstance(grads["layers"], list) and len(grads["layers"]) == 2
    assert isinstance(grads["scale"], tuple) and len(grads["scale"]) == 1
    for g_layer, p_layer in zip(grads["layers"], params["layers"]):
        assert list(g_layer) == list(p_layer)
        for k in p_layer:
            assert g_layer[k].shape == p_layer[k].shape and g_layer[k].dtype == p_layer[k].dtype
    assert grads["scale"][0].shape == ()
    assert grads["unused"].dtype == np.float32
    np.testing.assert_array_equal(grads["unused"], 0)
    fg.check_grads(f, (params, x))


# ---------------------------------------------------------------------------------------------
# higher order


@pytest.mark.parametrize("x0", [-2.0, -0.5, 0.0, 1.0, 3.0])
def test_grad_of_grad_closed_form(x0):
    f = lambda x: lax.mul(lax.unary("sin", x), x)  # noqa: E731
    d1, d2 = fg.grad(f), fg.grad(fg.grad(f))
    x = np.array(x0)
    np.testing.assert_allclose(d1(x), math.cos(x0) * x0 + math.sin(x0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d2(x), 2 * math.cos(x0) - x0 * math.sin(x0), rtol=1e-12,
                               atol=1e-15)
    d3 = fg.grad(d2)
    np.testing.assert_allclose(d3(x), -3 * math.sin(x0) - x0 * math.cos(x0), rtol=1e-12,
                               atol=1e-15)


def test_grad_of_grad_of_exp_and_tanh():
    x0 = 0.7
    x = np.array(x0)
    t = math.tanh(x0)
    d2 = fg.grad(fg.grad(lambda x: lax.unary("tanh", x)))(x)
    np.testing.assert_allclose(d2, -2 * t * (1 - t * t), rtol=1e-12)
    d4 = fg.grad(fg.grad(fg.grad(fg.grad(lambda x: lax.unary("exp", lax.mul(x, 2.0))))))(x)
    np.testing.assert_allclose(d4, 16 * math.exp(2 * x0), rtol=1e-12)


def test_hessian_vector_product_matches_finite_differences_of_gradient():
    rng = _rng("hvp")
    a = rng.standard_normal((4, 3))
    x, v = rng.standard_normal(3), rng.standard_normal(3)

    def f(x):
        h = lax.unary("tanh", lax.matmul(a, x))
        return lax.add(lax.reduce_sum(lax.mul(h, h)), lax.reduce_sum(lax.mul(lax.mul(x, x), x)))

    grad_f = fg.grad(f)
    hvp = fg.grad(lambda x, v: lax.reduce_sum(lax.mul(grad_f(x), v)))
    eps = 1e-5
    fd = (grad_f(x + eps * v) - grad_f(x - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hvp(x, v), fd, rtol=1e-6, atol=1e-8)
    # and the full Hessian, column by column, is symmetric
    hess = np.stack([hvp(x, e) for e in np.eye(3)])
    np.testing.assert_allclose(hess, hess.T, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the joint graph and its text


def test_backward_reuses_forward_values():
    x = np.array([0.1, 0.2, 0.3])
    g = fg.grad(lambda x: lax.reduce_sum(lax.unary("exp", x)))
    graph = g.trace(x).graph
    assert ops_of(graph, "forward").count("exp") == 1
    assert "exp" not in ops_of(graph, "backward")
    (exp_out,) = [n.out for n in graph.nodes if n.op == "exp"]
    assert any(exp_out in n.inputs for n in graph.nodes if n.part == "backward")
    np.testing.assert_allclose(g(x), np.exp(x))

    for op in ("tanh", "sigmoid", "sqrt", "rsqrt", "reciprocal"):
        graph = fg.grad(lambda x, op=op: lax.reduce_sum(lax.unary(op, x))).trace(x).graph
        assert op not in ops_of(graph, "backward"), op
    # matmul's backward uses the forward operands, and nothing recomputes the forward product
    a, b = np.ones((2, 3)), np.ones((3, 4))
    graph = fg.grad(lambda a, b: lax.reduce_sum(lax.unary("tanh", lax.matmul(a, b))),
                    argnums=(0, 1)).trace(a, b).graph
    assert ops_of(graph, "backward").count("matmul") == 2
    assert "tanh" not in ops_of(graph, "backward")


def test_forward_and_backward_ir_text():
    x = np.array([0.1, 0.2, 0.3])
    g = fg.grad(lambda x: lax.reduce_sum(lax.unary("exp", x)))
    g(x)
    whole, fwd, bwd = g.ir(), g.ir("forward"), g.ir("backward")
    assert "# ---- backward ----" in whole
    assert " exp " in fwd and "sum[" in fwd and "# ---- backward ----" not in fwd
    assert " mul " not in fwd
    assert " exp " not in bwd and " mul " in bwd and "sum[" not in bwd
    body = bwd.split(") {\n", 1)[1]
    assert body.lstrip().startswith("# ---- backward ----")
    # backward statements keep the numbering of the whole graph (and appear in it)
    for line in body.splitlines()[1:-2]:
        assert line in whole


# ---------------------------------------------------------------------------------------------
# check_grads catches broken rules


def test_check_grads_names_argument_and_index_of_a_broken_rule(monkeypatch):
    w = np.array([1.0, -2.0, 0.5])
    x = np.zeros((2, 3))
    x[1, 2] = 0.9

    def f(w, x):
        return lax.reduce_sum(lax.mul(lax.unary("sin", x), w))

    fg.check_grads(f, (w, x))  # correct first
    # the broken rule is off by x**2: wrong only where x != 0, worst at x[1, 2]
    broken = vjp_rules._unary(lambda e, x, y, g: e.mul(g, e.add(e("cos", x), e.mul(x, x))))
    monkeypatch.setitem(VJP_RULES, "sin", broken)
    with pytest.raises(fg.GradientCheckError, match=r"w\.r\.t\. x is wrong at index \(1, 2\)"):
        fg.check_grads(f, (w, x))
    assert issubclass(fg.GradientCheckError, AssertionError)


def test_check_grads_order2_catches_a_rule_that_is_right_only_to_first_order(monkeypatch):
    x = np.array([0.3, -0.8, 1.1])
    f = lambda x: lax.reduce_sum(lax.unary("tanh", x))  # noqa: E731
    fg.check_grads(f, (x,), order=2)
    # same values, but built from stop_gradient(y): first derivative right, second lost
    broken = vjp_rules._unary(
        lambda e, x, y, g: e.mul(g, e.sub(1, e.mul(e("stop_gradient", y), e("stop_gradient", y)))))
    monkeypatch.setitem(VJP_RULES, "tanh", broken)
    fg.check_grads(f, (x,), order=1)
    with pytest.raises(fg.GradientCheckError, match=r"second derivative.* w\.r\.t\. x is wrong"):
        fg.check_grads(f, (x,), order=2)


def test_check_grads_holds_integer_arguments_fixed(monkeypatch):
    """Labels and indices among the arguments are inputs, not variables: check_grads must not
    try to differentiate them (that is a TypeError) and still checks the float ones."""
    rng = _rng("int-args")
    x, w, idx = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), np.array([3, 0, 3, 1, 2])

    def f(x, idx, w):
        return lax.reduce_sum(lax.mul(lax.unary("tanh", lax.gather(x, idx, axis=0)), w))

    fg.check_grads(f, (x, idx, w), order=2)
    scale = np.float64(1.5)  # a NumPy scalar is an array argument too
    fg.check_grads(lambda s, x: lax.reduce_sum(lax.mul(lax.mul(x, s), s)), (scale, x), order=2)
    # an error in the argument before the integer one is still found and named
    monkeypatch.setitem(VJP_RULES, "tanh", vjp_rules._unary(lambda e, x, y, g: e.mul(g, y)))
    with pytest.raises(fg.GradientCheckError, match=r"w\.r\.t\. x "):
        fg.check_grads(f, (x, idx, w))


# ---------------------------------------------------------------------------------------------
# conventions at non-differentiable points


def test_maximum_minimum_ties_split_the_gradient():
    x = np.array([1.0, 2.0, -3.0, 0.0])
    y = np.array([1.0, 1.0, -3.0, 5.0])
    for op, expect_x in (("maximum", [0.5, 1.0, 0.5, 0.0]), ("minimum", [0.5, 0.0, 0.5, 1.0])):
        gx, gy = fg.grad(lambda x, y, op=op: lax.reduce_sum(lax.bind(op, x, y)),
                         argnums=(0, 1))(x, y)
        np.testing.assert_array_equal(gx, expect_x)
        np.testing.assert_array_equal(gy, 1.0 - np.array(expect_x))


def test_relu_at_zero_has_gradient_one_half():
    x = np.array([-1.0, 0.0, 2.0])
    g = fg.grad(lambda x: lax.reduce_sum(lax.maximum(x, 0.0)))(x)
    np.testing.assert_array_equal(g, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(fg.grad(lambda x: lax.reduce_sum(fg.relu(x)))(x),
                                  [0.0, 0.5, 1.0])


def test_max_reduction_ties_split_among_tied_maxima():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    g = fg.grad(lambda x: lax.reduce_sum(lax.reduce_max(x, axis=1)))(x)
    np.testing.assert_allclose(g, [[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-15)
    g = fg.grad(lambda x: lax.reduce_max(x))(x)
    np.testing.assert_array_equal(g, [[0.0, 0.5, 0.5], [0.0, 0.0, 0.0]])


def test_abs_at_zero_has_gradient_zero():
    g = fg.grad(lambda x: lax.reduce_sum(lax.unary("abs", x)))(np.array([-2.0, 0.0, 3.0]))
    np.testing.assert_array_equal(g, [-1.0, 0.0, 1.0])


def test_sqrt_and_log_at_zero_follow_numpy():
    x = np.array([0.0, 4.0])
    g = fg.grad(lambda x: lax.reduce_sum(lax.unary("sqrt", x)))(x)
    assert g[0] == np.inf and g[1] == 0.25
    g = fg.grad(lambda x: lax.reduce_sum(lax.unary("log", x)))(x)
    assert g[0] == np.inf and g[1] == 0.25
    g32 = fg.grad(lambda x: lax.reduce_sum(lax.unary("sqrt", x)))(x.astype(np.float32))
    assert g32.dtype == np.float32 and g32[0] == np.inf


# ---------------------------------------------------------------------------------------------
# numerically stable composites at |x| = 1e4 in float32

BIG = np.array([[1e4, -1e4, 0.0, 5.0], [-1e4, -1e4, -1e4, -1e4], [1e4, 1e4, -3.0, 1e4]],
               np.float32)


def _finite(*arrays):
    return all(np.all(np.isfinite(np.asarray(a))) for a in arrays)


def _ref_log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_log_softmax_stable():
    w = _rng("ls").standard_normal(BIG.shape).astype(np.float32)
    f = lambda x: lax.reduce_sum(lax.mul(fg.log_softmax(x, axis=-1), w))  # noqa: E731
    y = fg.jit(lambda x: fg.log_softmax(x, axis=-1))(BIG)
    assert y.dtype == np.float32 and _finite(y)
    np.testing.assert_allclose(y, _ref_log_softmax(BIG), rtol=1e-6, atol=1e-3)
    loss, g = fg.value_and_grad(f)(BIG)
    assert _finite(loss, g)
    p = np.exp(_ref_log_softmax(BIG))
    np.testing.assert_allclose(g, w - p * w.sum(-1, keepdims=True), rtol=1e-5, atol=1e-5)


def test_logsumexp_stable():
    f = lambda x: lax.reduce_sum(fg.logsumexp(x, axis=-1))  # noqa: E731
    y = fg.jit(lambda x: fg.logsumexp(x, axis=-1))(BIG)
    ref = BIG.astype(np.float64).max(-1) - _ref_log_softmax(BIG).max(-1)
    assert _finite(y)
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    loss, g = fg.value_and_grad(f)(BIG)
    assert _finite(loss, g)
    np.testing.assert_allclose(g, np.exp(_ref_log_softmax(BIG)), atol=1e-6)


def test_cross_entropy_stable():
    labels = np.array([1, 0, 2])
    loss, g = fg.value_and_grad(lambda x: fg.cross_entropy(x, labels))(BIG)
    assert _finite(loss, g)
    ls = _ref_log_softmax(BIG)
    np.testing.assert_allclose(loss, -ls[np.arange(3), labels].mean(), rtol=1e-6)
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(g, (np.exp(ls) - onehot) / 3, atol=1e-6)
    # and labels passed as a (non-differentiated) integer argument
    loss2, g2 = fg.value_and_grad(fg.cross_entropy)(BIG, labels)
    np.testing.assert_allclose(loss2, loss)
    np.testing.assert_allclose(g2, g)


def test_sigmoid_stable():
    x = np.array([1e4, -1e4, 0.0, 30.0, -30.0], np.float32)
    y = fg.jit(fg.sigmoid)(x)
    assert y.dtype == np.float32 and _finite(y)
    np.testing.assert_allclose(y, [1.0, 0.0, 0.5, 1.0, 9.357623e-14], rtol=1e-5, atol=0)
    g = fg.grad(lambda x: lax.reduce_sum(fg.sigmoid(x)))(x)
    assert _finite(g)
    s = expit(x.astype(np.float64))
    # y*(1-y) in float32 rounds the far tail (x=30: y == 1) to 0: absolute accuracy is the claim
    np.testing.assert_allclose(g, s * (1 - s), rtol=1e-5, atol=1e-7)
    assert g[0] == 0 and g[1] == 0 and g[2] == 0.25
