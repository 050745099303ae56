"""Graph-rewrite passes (simplify, fold, cse, dce, layout) and the pass manager.

Every pass is checked the same way: interpret the graph before and after on random inputs and
compare, verify the result, and check that the calling convention (inputs, output names and
types, aliases) did not move. Hand-built graphs pin each rule; three real graphs (an MLP's joint
graph, a LayerNorm+GELU MLP's Adam step, a small CNN's SGD step) check that everything holds on
what autodiff and the optimizers actually produce.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import fusegrad as fg
from fusegrad import config
from fusegrad.compiler import passes
from fusegrad.compiler.passes import (
    FixedPoint, RewriteError, SIMPLIFY_RULES, check_contract, cse, dce, fold_constants, layout,
    rewrite, run_passes, simplify,
)
from fusegrad.compiler.passes import manager
from fusegrad.ir import PARTS, GraphBuilder, TensorType, VerifyError, interpret, verify

F32, F64, I32, I64, B1 = "float32", "float64", "int32", "int64", "bool"
LOC = "/models/model.py:7"


# ---- helpers -----------------------------------------------------------------------------------


class E:
    """Emits nodes of a hand-built graph: e("mul", x, y), e.c(1.0)."""

    def __init__(self, b):
        self.b = b

    def __call__(self, op, *inputs, **attrs):
        return self.b.emit(op, inputs, attrs, loc=LOC)

    def c(self, value, dtype=F32):
        return self("constant", value=np.asarray(value, dtype))


def build(body, *types, name="t"):
    """Graph with inputs of `types` ((dtype, shape) pairs) and outputs body(e, *inputs)."""
    b = GraphBuilder(name)
    xs = [b.add_input(TensorType(dt, shape), f"x{i}") for i, (dt, shape) in enumerate(types)]
    outs = body(E(b), *xs)
    return b.build(outs if isinstance(outs, (list, tuple)) else [outs])


def random_args(graph, seed=0):
    rng = np.random.default_rng(seed)
    args = []
    for v, role in zip(graph.inputs, graph.input_roles):
        if v.dtype in (F32, F64):
            x = rng.standard_normal(v.shape)
            if role == "state":  # Adam's second moment is a mean of squares
                x = np.abs(x)
            if role == "hyper":
                x = np.full(v.shape, 1e-2)
        elif v.dtype == B1:
            x = rng.random(v.shape) < 0.5
        elif role == "hyper":  # the step counter
            x = np.full(v.shape, 3)
        else:
            x = rng.integers(0, 3, v.shape)
        args.append(np.asarray(x, dtype=v.dtype))
    return args


def assert_same_results(before, after, exact=False, seeds=(0, 1)):
    """`after` is a valid rewrite of `before`: verified, same convention, same outputs."""
    verify(after)
    check_contract(before, after)
    for seed in seeds:
        args = random_args(before, seed)
        want, got = interpret(before, args), interpret(after, args)
        for name, w, g in zip(before.output_names, want, got):
            assert w.dtype == g.dtype and w.shape == g.shape, name
            if exact:
                np.testing.assert_array_equal(g, w, err_msg=name)
            else:
                np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6, err_msg=name)


def ops(graph) -> Counter:
    return Counter(n.op for n in graph.nodes)


def transposes_into_matmul(graph) -> int:
    producers = graph.producers()
    return sum(1 for n in graph.nodes if n.op == "matmul" for v in n.inputs
               if v in producers and producers[v].op == "transpose")


# ---- real graphs -------------------------------------------------------------------------------


def _mlp_loss(p, x, y):
    # PyTorch layout (out, in): x @ w.T, and the second layer written column-wise, so the joint
    # graph has transposes feeding matmuls in the forward and in the backward part
    h = fg.relu(x @ p["w1"].T + p["b1"])
    logits = (p["w2"] @ h.T).T + p["b2"]
    return fg.cross_entropy(logits, y)


def _ln_gelu_loss(p, x, y):
    h = x @ p["w1"].T + p["b1"]
    h = fg.gelu(fg.layer_norm(h, p["g"], p["b"]))
    return fg.cross_entropy(h @ p["w2"] + p["b2"], y)


def _cnn_loss(p, x, y):
    h = fg.relu(fg.conv2d(x, p["k"], padding=1, bias=p["kb"]))
    h = fg.max_pool2d(h, 2)
    h = h.reshape(h.shape[0], -1)
    return fg.cross_entropy(h @ p["w"] + p["b"], y)


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def mlp_joint_graph():
    rng = np.random.default_rng(0)
    p = {"w1": _f32(rng, 5, 6), "b1": _f32(rng, 5), "w2": _f32(rng, 3, 5), "b2": _f32(rng, 3)}
    x, y = _f32(rng, 4, 6), rng.integers(0, 3, 4)
    return fg.grad(_mlp_loss).trace(p, x, y).graph


def ln_adam_step_graph():
    rng = np.random.default_rng(1)
    p = {"w1": _f32(rng, 5, 6), "b1": _f32(rng, 5), "g": np.ones(5, np.float32),
         "b": np.zeros(5, np.float32), "w2": _f32(rng, 5, 3), "b2": _f32(rng, 3)}
    x, y = _f32(rng, 4, 6), rng.integers(0, 3, 4)
    step = fg.train_step(_ln_gelu_loss, fg.optim.Adam(lr=1e-3))
    step(p, x, y)
    return step._last.graph


def cnn_sgd_step_graph():
    rng = np.random.default_rng(2)
    p = {"k": _f32(rng, 3, 2, 3, 3), "kb": _f32(rng, 3), "w": _f32(rng, 12, 4),
         "b": _f32(rng, 4)}
    x, y = _f32(rng, 2, 2, 4, 4), rng.integers(0, 4, 2)
    step = fg.train_step(_cnn_loss, fg.optim.SGD(lr=1e-2))
    step(p, x, y)
    return step._last.graph


REAL = {"mlp_joint": mlp_joint_graph, "ln_adam_step": ln_adam_step_graph,
        "cnn_sgd_step": cnn_sgd_step_graph}


@pytest.fixture(scope="module")
def real_graphs():
    return {name: make() for name, make in REAL.items()}


# ---- simplify: one row of the table at a time ------------------------------------------------

S = (3, 4)


def _case(rule, fires, types, body, expect, exact=True, id=None):
    return pytest.param(rule, fires, types, body, expect, exact,
                        id=f"{rule}-{'fires' if fires else 'not'}-{id}" if id else None)


SIMPLIFY_CASES = [
    _case("mul_by_one", True, [(F32, S)], lambda e, x: e("mul", x, e.c(1.0)), {"mul": 0}, id="x*1"),
    _case("mul_by_one", True, [(F32, S)], lambda e, x: e("mul", e.c(1.0), x), {"mul": 0}, id="1*x"),
    _case("mul_by_one", True, [(F32, S)],
          lambda e, x: e("mul", x, e("broadcast_to", e.c(1.0), shape=S)), {"mul": 0},
          id="x*broadcast(1)"),
    _case("mul_by_one", True, [(F32, (4,))], lambda e, x: e("mul", x, e.c(np.ones(S))),
          {"mul": 0, "broadcast_to": 1}, id="1-broadcasts-x-up"),
    _case("mul_by_one", False, [(F32, S)], lambda e, x: e("mul", x, e.c(2.0)), {"mul": 1},
          id="x*2"),
    _case("mul_by_one", False, [(F32, S)], lambda e, x: e("mul", x, e.c([1.0, 2.0, 1.0, 1.0])),
          {"mul": 1}, id="not-all-ones"),
    _case("mul_by_zero_int", True, [(I32, S)], lambda e, x: e("mul", x, e.c(0, I32)),
          {"mul": 0}, id="int"),
    _case("mul_by_zero_int", False, [(F32, S)], lambda e, x: e("mul", x, e.c(0.0)), {"mul": 1},
          id="float-inf*0-is-nan"),
    _case("add_zero", True, [(F32, S)], lambda e, x: e("add", x, e.c(0.0)), {"add": 0}, id="x+0"),
    _case("add_zero", True, [(F32, (4,))], lambda e, x: e("add", e.c(np.zeros(S)), x),
          {"add": 0, "broadcast_to": 1}, id="0-broadcasts-x-up"),
    _case("add_zero", False, [(F32, S)], lambda e, x: e("add", x, e.c(1.0)), {"add": 1}, id="x+1"),
    _case("sub_zero", True, [(F32, S)], lambda e, x: e("sub", x, e.c(0.0)), {"sub": 0}, id="x-0"),
    _case("sub_zero", False, [(F32, S)], lambda e, x: e("sub", x, e.c(0.5)), {"sub": 1},
          id="x-0.5"),
    _case("zero_sub", True, [(F32, S)], lambda e, x: e("sub", e.c(0.0), x),
          {"sub": 0, "neg": 1}, id="0-x"),
    _case("zero_sub", False, [(F32, S)], lambda e, x: e("sub", e.c(1.0), x), {"sub": 1},
          id="1-x"),
    _case("div_by_one", True, [(F32, S)], lambda e, x: e("div", x, e.c(1.0)), {"div": 0},
          id="x/1"),
    _case("div_by_one", False, [(F32, S)], lambda e, x: e("div", e.c(1.0), x), {"div": 1},
          id="1/x"),
    _case("pow_one", True, [(F32, S)], lambda e, x: e("pow", x, e.c(1.0)), {"pow": 0}, id="x**1"),
    _case("pow_one", False, [(F32, S)], lambda e, x: e("pow", e.c(1.0), x), {"pow": 1},
          id="1**x"),
    _case("neg_neg", True, [(F32, S)], lambda e, x: e("neg", e("neg", x)), {"neg": 0}, id="--x"),
    _case("neg_neg", False, [(F32, S)], lambda e, x: e("neg", e("abs", x)), {"neg": 1},
          id="-abs"),
    _case("sub_neg", True, [(F32, S), (F32, S)], lambda e, x, y: e("sub", x, e("neg", y)),
          {"sub": 0, "neg": 0, "add": 1}, id="x--y"),
    _case("sub_neg", False, [(F32, S), (F32, S)], lambda e, x, y: e("sub", e("neg", x), y),
          {"sub": 1, "neg": 1}, id="-x-y"),
    _case("add_neg", True, [(F32, S), (F32, (4,))], lambda e, x, y: e("add", x, e("neg", y)),
          {"add": 0, "neg": 0, "sub": 1}, id="x+-y"),
    _case("add_neg", True, [(F32, (4,)), (F32, S)], lambda e, x, y: e("add", e("neg", x), y),
          {"add": 0, "neg": 0, "sub": 1}, id="-x+y"),
    _case("add_neg", False, [(F32, S), (F32, S)], lambda e, x, y: e("add", x, e("abs", y)),
          {"add": 1}, id="x+abs"),
    _case("select_known", True, [(F32, S), (F32, S)],
          lambda e, a, b: e("select", e.c(True, B1), a, b), {"select": 0}, id="true"),
    _case("select_known", True, [(F32, S), (F32, S)],
          lambda e, a, b: e("select", e("broadcast_to", e.c(False, B1), shape=S), a, b),
          {"select": 0}, id="broadcast-false"),
    _case("select_known", True, [(B1, S), (F32, S)], lambda e, c, a: e("select", c, a, a),
          {"select": 0}, id="same-branches"),
    _case("select_known", True, [(F32, (4,)), (F32, S)],
          lambda e, a, b: e("select", e.c(True, B1), a, b), {"select": 0, "broadcast_to": 1},
          id="a-broadcast-up"),
    _case("select_known", False, [(B1, S), (F32, S), (F32, S)],
          lambda e, c, a, b: e("select", c, a, b), {"select": 1}, id="runtime-cond"),
    _case("stop_gradient_identity", True, [(F32, S)],
          lambda e, x: e("exp", e("stop_gradient", x)), {"stop_gradient": 0}),
    _case("transpose_identity", True, [(F32, S)], lambda e, x: e("transpose", x, perm=(0, 1)),
          {"transpose": 0}),
    _case("transpose_identity", False, [(F32, S)], lambda e, x: e("transpose", x, perm=(1, 0)),
          {"transpose": 1}),
    _case("transpose_transpose", True, [(F32, (2, 3, 4))],
          lambda e, x: e("transpose", e("transpose", x, perm=(1, 2, 0)), perm=(2, 0, 1)),
          {"transpose": 0}, id="inverse"),
    _case("transpose_transpose", True, [(F32, (2, 3, 4))],
          lambda e, x: e("transpose", e("transpose", x, perm=(1, 0, 2)), perm=(0, 2, 1)),
          {"transpose": 1}, id="composed"),
    _case("transpose_as_reshape", True, [(F32, (4, 1))],
          lambda e, x: e("transpose", x, perm=(1, 0)), {"transpose": 0, "reshape": 1}, id="col"),
    _case("transpose_as_reshape", True, [(F32, (3, 1, 4))],
          lambda e, x: e("transpose", x, perm=(1, 0, 2)), {"transpose": 0, "reshape": 1},
          id="unit-axis"),
    _case("transpose_as_reshape", False, [(F32, (3, 1, 4))],
          lambda e, x: e("transpose", x, perm=(2, 1, 0)), {"transpose": 1}, id="real"),
    _case("reshape_same", True, [(F32, S)], lambda e, x: e("reshape", x, shape=S), {"reshape": 0}),
    _case("reshape_reshape", True, [(F32, S)],
          lambda e, x: e("reshape", e("reshape", x, shape=(12,)), shape=(4, 3)), {"reshape": 1},
          id="two"),
    _case("reshape_reshape", True, [(F32, S)],
          lambda e, x: e("reshape", e("reshape", x, shape=(12,)), shape=S), {"reshape": 0},
          id="round-trip"),
    _case("reshape_reshape", False, [(F32, S)], lambda e, x: e("reshape", e("exp", x), shape=(12,)),
          {"reshape": 1}),
    _case("reshape_splat", True, [(F32, ())],
          lambda e, s: e("reshape", e("broadcast_to", s, shape=(4,)), shape=(4, 1)),
          {"reshape": 0, "broadcast_to": 1}, id="scalar"),
    _case("reshape_splat", True, [(F32, (1, 1, 1))],
          lambda e, s: e("reshape", e("broadcast_to", s, shape=(2, 2, 1)), shape=(4,)),
          {"broadcast_to": 1, "reshape": 1}, id="rank-drops"),
    _case("reshape_splat", False, [(F32, (3, 1))],
          lambda e, x: e("reshape", e("broadcast_to", x, shape=S), shape=(12,)),
          {"reshape": 1, "broadcast_to": 1}, id="not-one-element"),
    _case("broadcast_same", True, [(F32, S)], lambda e, x: e("broadcast_to", x, shape=S),
          {"broadcast_to": 0}),
    _case("broadcast_broadcast", True, [(F32, (4,))],
          lambda e, x: e("broadcast_to", e("broadcast_to", x, shape=S), shape=(2, 3, 4)),
          {"broadcast_to": 1}),
    _case("cast_same", True, [(F32, S)], lambda e, x: e("cast", x, dtype=F32), {"cast": 0}),
    _case("cast_cast", True, [(F32, S)],
          lambda e, x: e("cast", e("cast", x, dtype=F64), dtype=F32), {"cast": 0},
          id="f32-f64-f32"),
    _case("cast_cast", True, [(I32, S)],
          lambda e, x: e("cast", e("cast", x, dtype=I64), dtype=F32), {"cast": 1},
          id="i32-i64-f32"),
    _case("cast_cast", True, [(B1, S)],
          lambda e, x: e("cast", e("cast", x, dtype=F32), dtype=I32), {"cast": 1},
          id="b1-f32-i32"),
    _case("cast_cast", False, [(F64, S)],
          lambda e, x: e("cast", e("cast", x, dtype=F32), dtype=F64), {"cast": 2},
          id="f64-f32-f64-rounds"),
    _case("cast_cast", False, [(F32, S)],
          lambda e, x: e("cast", e("cast", x, dtype=I32), dtype=F32), {"cast": 2},
          id="f32-i32-f32-truncates"),
    _case("reduce_unit_axes", True, [(F32, S)],
          lambda e, x: e("sum", x, axes=(), keepdims=False), {"sum": 0}, id="no-axes"),
    _case("reduce_unit_axes", True, [(F32, (3, 1, 4))],
          lambda e, x: e("sum", x, axes=(1,), keepdims=False), {"sum": 0, "reshape": 1},
          id="unit-axis"),
    _case("reduce_unit_axes", True, [(F32, (3, 1, 4))],
          lambda e, x: e("max", x, axes=(1,), keepdims=True), {"max": 0, "reshape": 0},
          id="max-keepdims"),
    _case("reduce_unit_axes", False, [(F32, S)],
          lambda e, x: e("sum", x, axes=(1,), keepdims=False), {"sum": 1}, id="real-axis"),
    _case("sum_of_broadcast", True, [(F32, ())],
          lambda e, s: e("sum", e("broadcast_to", s, shape=(5,)), axes=(0,), keepdims=False),
          {"sum": 0, "broadcast_to": 0, "mul": 1}, exact=False, id="s*n"),
    _case("sum_of_broadcast", True, [(F32, (4,))],
          lambda e, x: e("sum", e("broadcast_to", x, shape=S), axes=(0,), keepdims=False),
          {"sum": 0, "broadcast_to": 0}, exact=False, id="leading-axis"),
    _case("sum_of_broadcast", True, [(F32, (3, 1))],
          lambda e, x: e("sum", e("broadcast_to", x, shape=S), axes=(1,), keepdims=True),
          {"sum": 0, "broadcast_to": 0}, exact=False, id="keepdims"),
    _case("sum_of_broadcast", True, [(F32, (1, 4))],
          lambda e, x: e("sum", e("broadcast_to", x, shape=S), axes=(0, 1), keepdims=False),
          {"sum": 1, "broadcast_to": 0}, exact=False, id="mixed-axes"),
    _case("sum_of_broadcast", True, [(I64, (2, 1, 4))],
          lambda e, x: e("sum", e("broadcast_to", x, shape=(3, 2, 5, 4)), axes=(0, 2),
                         keepdims=False),
          {"sum": 0, "broadcast_to": 0}, exact=True, id="int-exact"),
    _case("sum_of_broadcast", False, [(F32, (1, 4))],
          lambda e, x: e("sum", e("broadcast_to", x, shape=S), axes=(1,), keepdims=False),
          {"sum": 1, "broadcast_to": 1}, id="summed-axis-not-broadcast"),
    _case("pad_nothing", True, [(F32, S)],
          lambda e, x: e("pad", x, pads=((0, 0), (0, 0)), value=0.0), {"pad": 0}),
    _case("pad_nothing", False, [(F32, S)],
          lambda e, x: e("pad", x, pads=((0, 0), (1, 0)), value=0.0), {"pad": 1}),
    _case("add_adjacent_pads", True, [(F32, (3, 2)), (F32, (3, 2))],
          lambda e, a, b: e("add", e("pad", a, pads=((0, 0), (0, 2)), value=0.0),
                            e("pad", b, pads=((0, 0), (2, 0)), value=0.0)),
          {"add": 0, "concatenate": 1}, id="slice-gradients"),  # pad_nothing drops the pad
    _case("add_adjacent_pads", True, [(F32, (3, 2)), (F32, (3, 1))],
          lambda e, a, b: e("add", e("pad", b, pads=((0, 0), (3, 2)), value=0.0),
                            e("pad", a, pads=((0, 0), (1, 3)), value=0.0)),
          {"add": 0, "concatenate": 1, "pad": 1}, id="swapped-inner"),
    _case("add_adjacent_pads", False, [(F32, (3, 2)), (F32, (3, 2))],
          lambda e, a, b: e("add", e("pad", a, pads=((0, 0), (0, 3)), value=0.0),
                            e("pad", b, pads=((0, 0), (3, 0)), value=0.0)),
          {"add": 1}, id="gap"),
    _case("add_adjacent_pads", False, [(F32, (3, 2)), (F32, (3, 2))],
          lambda e, a, b: e("add", e("pad", a, pads=((0, 0), (0, 2)), value=1.0),
                            e("pad", b, pads=((0, 0), (2, 0)), value=0.0)),
          {"add": 1}, id="not-zero"),
    _case("add_adjacent_pads", False, [(F32, (3, 2)), (F32, (3, 2))],
          lambda e, a, b: e("add", e("pad", a, pads=((0, 3), (0, 2)), value=0.0),
                            e("pad", b, pads=((3, 0), (2, 0)), value=0.0)),
          {"add": 1}, id="two-axes"),
    _case("concat_concat", True, [(F32, S), (F32, S), (F32, S)],
          lambda e, a, b, c: e("concatenate", a, e("concatenate", b, c, axis=1), axis=1),
          {"concatenate": 1}),
    _case("concat_concat", False, [(F32, (4, 3)), (F32, (2, 4)), (F32, (2, 4))],
          lambda e, a, b, c: e("concatenate", a, e("concatenate", b, c, axis=0), axis=1),
          {"concatenate": 2}, id="other-axis"),
    _case("implicit_broadcast", True, [(F32, (4,)), (F32, S)],
          lambda e, x, y: e("mul", e("broadcast_to", x, shape=S), y), {"broadcast_to": 0},
          id="mul"),
    _case("implicit_broadcast", True, [(B1, S), (F32, (3, 1)), (F32, S)],
          lambda e, c, a, b: e("select", c, e("broadcast_to", a, shape=S), b),
          {"broadcast_to": 0}, id="select"),
    _case("implicit_broadcast", False, [(F32, (4,)), (F32, ())],
          lambda e, x, s: e("mul", e("broadcast_to", x, shape=S), s), {"broadcast_to": 1},
          id="would-shrink"),
]


def _only(rule):
    return [row for row in SIMPLIFY_RULES if row[0] == rule]


@pytest.mark.parametrize("rule, fires, types, body, expect, exact", SIMPLIFY_CASES)
def test_simplify_rule(rule, fires, types, body, expect, exact):
    before = build(body, *types)
    once = simplify(before, rules=_only(rule))
    if not fires:
        assert once is before, f"{rule} fired:\n{once}"
        return
    assert once is not before, f"{rule} did not fire:\n{before}"
    after = dce(once)
    for _ in range(4):  # the rule may apply again to what it built (e.g. a composed transpose)
        nxt = dce(simplify(after, rules=_only(rule)))
        if nxt is after:
            break
        after = nxt
    counts = ops(after)
    for op, n in expect.items():
        assert counts[op] == n, f"{rule}: expected {n} x {op}, got\n{after}"
    assert_same_results(before, after, exact=exact)


def test_every_simplify_rule_has_cases():
    firing = {c.values[0] for c in SIMPLIFY_CASES if c.values[1]}
    names = [name for name, _, _ in SIMPLIFY_RULES]
    assert len(names) == len(set(names))
    assert set(names) == firing, set(names) ^ firing


def test_simplified_nodes_inherit_loc_and_part():
    b = GraphBuilder("t")
    x = b.add_input(TensorType(F32, S), "x")
    y = b.add_input(TensorType(F32, S), "y")
    b.part = "backward"
    n = b.emit("neg", [y], loc="a.py:1")
    out = b.emit("sub", [x, n], loc="a.py:2")
    after = dce(simplify(b.build([out])))
    (node,) = after.nodes
    assert (node.op, node.loc, node.part) == ("add", "a.py:2", "backward")


def test_rule_returning_a_wrong_type_is_caught():
    g = build(lambda e, x: e("exp", x), (F32, S))
    bad = [("bad", ("exp",), lambda node, rw: rw.emit("sum", node.inputs[0], axes=(0,),
                                                        keepdims=False))]
    with pytest.raises(RewriteError, match="bad"):
        simplify(g, rules=bad)
    with pytest.raises(RewriteError, match="mine"):
        rewrite(g, lambda node, rw: rw.reshape(node.inputs[0], (12,)), "mine")


# ---- fold ------------------------------------------------------------------------------------


def test_fold_evaluates_constant_chains():
    def body(e, x):
        k = e("div", e("neg", e.c(1.0)), e.c(4.0))  # -0.25
        return e("mul", x, e("reshape", k, shape=(1,)))

    before = build(body, (F32, S))
    after = dce(fold_constants(before))
    assert ops(after) == {"constant": 1, "mul": 1}
    const = next(n for n in after.nodes if n.op == "constant")
    assert const.attrs["value"].array.tolist() == [-0.25]
    assert const.loc == LOC
    assert_same_results(before, after, exact=True)


def test_fold_keeps_large_results_and_broadcasts():
    def body(e, x):
        big = e("add", e.c(np.ones(100)), e.c(np.ones(100)))  # 100 elements: not baked in
        wide = e("broadcast_to", e.c(2.0), shape=S)  # a view of one number stays one
        return e("mul", x, wide), big

    before = build(body, (F32, S))
    assert fold_constants(before) is before


def test_fold_elementwise_on_broadcast_constants():
    def body(e, x):
        return e("mul", x, e("neg", e("broadcast_to", e.c(3.0), shape=(30, 30))))

    before = build(body, (F32, (30, 30)))
    after = dce(fold_constants(before))
    assert ops(after) == {"constant": 1, "broadcast_to": 1, "mul": 1}
    assert next(n for n in after.nodes if n.op == "constant").attrs["value"].array == -3.0
    assert_same_results(before, after, exact=True)


def test_fold_iota_and_sources():
    def body(e, seed):
        total = e("sum", e("iota", shape=(2, 4), axis=1, dtype=I64), axes=(0, 1), keepdims=False)
        lone = e("iota", shape=(2, 4), axis=0, dtype=I64)
        u = e("random_uniform", e.c(1, I64), e.c(2, I64), shape=(3,), dtype=F32)
        return total, lone, u

    before = build(body, (I64, ()))
    after = dce(fold_constants(before))
    counts = ops(after)
    assert counts["sum"] == 0 and counts["iota"] == 1 and counts["random_uniform"] == 1
    assert interpret(after, [np.int64(0)])[0] == 12
    assert_same_results(before, after, exact=True)


# ---- cse -------------------------------------------------------------------------------------


def test_cse_merges_duplicates_and_commuted_operands():
    def body(e, x, y):
        a = e("add", x, y)
        b = e("add", y, x)  # commutative: the same value
        c = e("mul", e("exp", x), e.c(2.0))
        d = e("mul", e("exp", x), e.c(2.0))  # same op, inputs (after merging exp), attrs
        return e("add", e("add", a, b), e("add", c, d))

    before = build(body, (F32, S), (F32, S))
    after = dce(cse(before))
    assert ops(after) == {"add": 4, "exp": 1, "mul": 1, "constant": 1}  # a, a+a, c+c, sum
    assert_same_results(before, after, exact=True)


def test_cse_keeps_values_that_differ():
    def body(e, x, y):
        return [e("maximum", x, y), e("maximum", y, x),  # which zero/NaN wins depends on order
                e("sum", x, axes=(0,), keepdims=False), e("sum", x, axes=(1,), keepdims=False),
                e.c(0.0), e.c(-0.0), e.c(0.0, F64),
                e("pad", x, pads=((0, 0), (1, 1)), value=0.0),
                e("pad", x, pads=((0, 0), (1, 1)), value=-0.0)]

    before = build(body, (F32, S), (F32, S))
    assert cse(before) is before


def test_cse_merges_random_and_keeps_the_first_loc():
    b = GraphBuilder("t")
    seed = b.add_input(TensorType(I64, ()), "seed")
    ctr = b.add_input(TensorType(I64, ()), "ctr")
    u1 = b.emit("random_uniform", [seed, ctr], {"shape": S, "dtype": F32}, loc="a.py:1")
    b.part = "backward"
    u2 = b.emit("random_uniform", [seed, ctr], {"shape": S, "dtype": F32}, loc="a.py:2")
    before = b.build([u1, u2])
    after = dce(cse(before))
    (node,) = after.nodes
    assert (node.loc, node.part) == ("a.py:1", "forward")
    assert after.outputs[0] is after.outputs[1]
    assert_same_results(before, after, exact=True)


# ---- dce -------------------------------------------------------------------------------------


def test_dce_removes_dead_nodes_and_keeps_inputs():
    def body(e, x, unused):
        e("exp", e("log", x))  # dead
        return [e("neg", x), x]  # an input may be an output

    before = build(body, (F32, S), (F32, S))
    after = dce(before)
    assert ops(after) == {"neg": 1}
    assert after.inputs == before.inputs and after.outputs[1] is before.inputs[0]
    assert dce(after) is after
    assert_same_results(before, after, exact=True)


# ---- layout ----------------------------------------------------------------------------------


def test_layout_folds_operand_transposes():
    def body(e, a, b, c):
        at = e("transpose", a, perm=(1, 0))  # (4, 3) -> (3, 4)
        m1 = e("matmul", at, b, transpose_a=False, transpose_b=True)  # (3,4) @ (5,4)^T
        ct = e("transpose", c, perm=(0, 2, 1))  # batched
        m2 = e("matmul", ct, ct, transpose_a=True, transpose_b=False)
        return m1, m2

    before = build(body, (F32, (4, 3)), (F32, (5, 4)), (F32, (2, 3, 5)))
    after = dce(layout(before))
    assert ops(after) == {"matmul": 2}
    m1, m2 = after.nodes
    assert (m1.attrs["transpose_a"], m1.attrs["transpose_b"]) == (True, True)
    assert (m2.attrs["transpose_a"], m2.attrs["transpose_b"]) == (False, True)
    assert m1.loc == LOC
    assert_same_results(before, after)


def test_layout_folds_result_transposes_of_single_use_products():
    def body(e, a, b):
        mm = e("matmul", a, b, transpose_a=False, transpose_b=True)  # (3,4) @ (5,4)^T
        return e("transpose", mm, perm=(1, 0))

    before = build(body, (F32, (3, 4)), (F32, (5, 4)))
    after = dce(layout(before))
    assert ops(after) == {"matmul": 1}
    (m,) = after.nodes
    assert m.inputs == (before.inputs[1], before.inputs[0])
    assert (m.attrs["transpose_a"], m.attrs["transpose_b"]) == (False, True)
    assert_same_results(before, after)


def test_layout_leaves_other_transposes():
    def body(e, a, b, c):
        mm = e("matmul", a, b, transpose_a=False, transpose_b=False)
        t = e("transpose", mm, perm=(1, 0))  # mm is read twice: not folded
        batch_swap = e("transpose", c, perm=(1, 0, 2))  # not the last two axes
        return e("add", t, e("exp", e("transpose", mm, perm=(1, 0)))), mm, e(
            "matmul", batch_swap, batch_swap, transpose_a=False, transpose_b=True)

    before = build(body, (F32, (3, 4)), (F32, (4, 5)), (F32, (2, 3, 4)))
    assert layout(before) is before


def test_layout_removes_every_transpose_feeding_a_matmul_in_the_mlp(real_graphs):
    g = real_graphs["mlp_joint"]
    backward = g.replace(nodes=tuple(n for n in g.nodes if n.part == "backward"))
    assert transposes_into_matmul(backward) > 0 and transposes_into_matmul(g) >= 4
    after = dce(layout(g))
    assert transposes_into_matmul(after) == 0
    assert after.count("transpose") == 0 < g.count("transpose")
    assert after.count("matmul") == g.count("matmul")
    assert_same_results(g, after)


# ---- every pass on the real graphs ------------------------------------------------------------

PASSES = [("simplify", simplify), ("fold", fold_constants), ("cse", cse), ("dce", dce),
          ("layout", layout)]


@pytest.mark.parametrize("graph_name", list(REAL))
@pytest.mark.parametrize("pass_name, fn", PASSES, ids=[p[0] for p in PASSES])
def test_each_pass_preserves_real_graphs(real_graphs, graph_name, pass_name, fn):
    g = real_graphs[graph_name]
    after = fn(g)
    assert_same_results(g, after)


@pytest.mark.parametrize("graph_name", list(REAL))
def test_pipeline_on_real_graphs(real_graphs, graph_name):
    g = real_graphs[graph_name]
    after = run_passes(g, verify=True)
    assert len(after.nodes) < len(g.nodes)
    assert after.count("transpose") == 0 and after.count("stop_gradient") == 0
    assert_same_results(g, after)
    # nothing left to do: a second run returns the very same graph
    assert run_passes(after, verify=True) is after
    # every node still carries a source line of the original graph and the parts stay in order
    assert {n.loc for n in after.nodes} <= {n.loc for n in g.nodes}
    order = [PARTS.index(n.part) for n in after.nodes]
    assert order == sorted(order)


def test_pipeline_merges_the_optimizer_scalars(real_graphs):
    g = real_graphs["ln_adam_step"]
    after = run_passes(g)
    # Adam's bias corrections (cast step, pow, pow) were emitted once per parameter
    assert g.count("pow") == 12 and after.count("pow") == 2
    assert after.count("cast") < g.count("cast")


# ---- the pass manager ------------------------------------------------------------------------


def test_verify_is_on_for_the_suite():
    assert config.get("FUSEGRAD_VERIFY") is True


def _drop_first_node(graph):
    return graph.replace(nodes=graph.nodes[1:])


def test_verifier_names_the_broken_pass(real_graphs, monkeypatch):
    g = real_graphs["cnn_sgd_step"]
    monkeypatch.setenv("FUSEGRAD_VERIFY", "1")  # as tests/conftest.py sets it for the suite
    broken = (("simplify", simplify), ("broken", _drop_first_node), ("dce", dce))
    with pytest.raises(VerifyError, match="after pass 'broken'"):
        run_passes(g, broken)  # verify= defaults to the environment
    assert run_passes(g, broken, verify=False) is not None  # unchecked, it goes through

    # a broken pass inside the default pipeline's fixed-point group
    group = FixedPoint((("simplify", simplify), ("cse", _drop_first_node)))
    monkeypatch.setattr(manager, "OPTIMIZE_PIPELINE", (("canonicalize", group),))
    with pytest.raises(VerifyError, match="after pass 'cse'"):
        run_passes(g)


def test_verifier_catches_a_changed_calling_convention(real_graphs):
    g = real_graphs["ln_adam_step"]
    cases = {
        "aliases": lambda x: x.replace(aliases=x.aliases[1:]),
        "outputs": lambda x: x.replace(outputs=x.outputs[:-1], output_names=x.output_names[:-1]),
        "inputs": lambda x: x.replace(input_roles=("batch",) * len(x.inputs)),
    }
    for name, bad in cases.items():
        with pytest.raises(VerifyError, match=f"after pass '{name}'"):
            run_passes(g, ((name, bad),), verify=True)


def test_dump_writes_numbered_stages(real_graphs, tmp_path, monkeypatch):
    g = real_graphs["mlp_joint"]
    monkeypatch.setenv("FUSEGRAD_DUMP", str(tmp_path))
    after = run_passes(g)
    folder = tmp_path / g.name
    files = sorted(p.name for p in folder.iterdir())
    assert files[:3] == ["00_input.txt", "01_simplify.txt", "02_fold.txt"]
    assert [int(f[:2]) for f in files] == list(range(len(files)))
    assert any(f.endswith("_layout.txt") for f in files)
    assert (folder / files[0]).read_text() == str(g) + "\n"
    assert (folder / files[-1]).read_text() == str(after) + "\n"

    # an explicit dump_dir, and a shorter pipeline replaces the earlier stages
    monkeypatch.delenv("FUSEGRAD_DUMP")
    run_passes(g, (("dce", dce),), dump_dir=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["00_input.txt", "01_dce.txt"]


def test_fixed_point_is_bounded(tmp_path):
    g = build(lambda e, x: e("neg", x), (F32, S), name="fp")
    always_new = FixedPoint((("copy", lambda x: x.replace()),), max_rounds=3)
    run_passes(g, (("loop", always_new),), dump_dir=tmp_path)
    assert len(list((tmp_path / "fp").iterdir())) == 1 + 3


def test_package_exports():
    for name in ("run_passes", "OPTIMIZE_PIPELINE", "simplify", "fold_constants", "cse", "dce",
                 "layout", "SIMPLIFY_RULES"):
        assert hasattr(passes, name)
