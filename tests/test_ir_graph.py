"""Graph-level IR: printer golden text, verifier rejections, networkx / DOT export, TensorType,
broadcasting, axis normalisation and attribute hashing."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusegrad.ir import (
    Attrs, ConstArray, Graph, GraphBuilder, Node, ShapeError, TensorType, Var, VerifyError,
    broadcast_shapes, format_graph, interpret, verify,
)
from fusegrad.ir.types import normalize_axes

MM = {"transpose_a": False, "transpose_b": False}


def step_graph() -> Graph:
    """A tiny whole training step: loss = sum((x @ w)**2), w -= lr * dloss/dw."""
    b = GraphBuilder("mlp_step")
    w = b.add_input(TensorType("float32", (4, 3)), "params['w']", "param")
    x = b.add_input(TensorType("float32", (8, 4)), "x", "batch")
    lr = b.add_input(TensorType("float32", ()), "lr", "hyper")
    h = b.emit("matmul", [x, w], MM, loc="/some/dir/model.py:12")
    sq = b.emit("mul", [h, h], loc="/some/dir/model.py:13")
    loss = b.emit("sum", [sq], {"axes": (0, 1), "keepdims": False}, loc="/some/dir/model.py:13")
    b.part = "backward"
    two = b.emit("constant", [], {"value": np.array(2.0, np.float32)})
    dh = b.emit("mul", [h, two], loc="/some/dir/model.py:13")
    gw = b.emit("matmul", [x, dh], dict(MM, transpose_a=True), loc="/some/dir/model.py:12")
    b.part = "update"
    step = b.emit("mul", [gw, lr])
    w_new = b.emit("sub", [w, step])
    return b.build([loss, w_new], output_names=("loss", "w_new"), aliases=((1, 0),))


STEP_TEXT = """\
graph mlp_step(
    %0: f32[4,3]  params['w']  param
    %1: f32[8,4]  x            batch
    %2: f32[]     lr           hyper
) {
  %3: f32[8,3] = matmul[transpose_a=False, transpose_b=False] %1, %0   # model.py:12
  %4: f32[8,3] = mul %3, %3   # model.py:13
  %5: f32[] = sum[axes=(0,1), keepdims=False] %4   # model.py:13
  # ---- backward ----
  %6: f32[] = constant[value=2.0]
  %7: f32[8,3] = mul %3, %6   # model.py:13
  %8: f32[4,3] = matmul[transpose_a=True, transpose_b=False] %1, %7   # model.py:12
  # ---- update ----
  %9: f32[4,3] = mul %8, %2
  %10: f32[4,3] = sub %0, %9
  return %5, %10  # loss, w_new; in place: w_new -> params['w']
}"""


def kernel_graph(region_inputs=2) -> Graph:
    """neg(kernel{exp(a) + c}(x, y)): one fused node whose region is a Graph of its own."""
    rb = GraphBuilder("fused")
    a = rb.add_input(TensorType("float32", (2, 3)), "a")
    c = rb.add_input(TensorType("float32", (3,)), "c")
    s = rb.emit("add", [rb.emit("exp", [a]), c])
    region = rb.build([s])
    if region_inputs != 2:
        region = region.replace(inputs=region.inputs[:region_inputs],
                                input_names=region.input_names[:region_inputs],
                                input_roles=region.input_roles[:region_inputs])
    b = GraphBuilder("outer")
    x = b.add_input(TensorType("float32", (2, 3)), "x")
    y = b.add_input(TensorType("float32", (3,)), "y", "param")
    out = Var(TensorType("float32", (2, 3)))
    b.append(Node("kernel", (x, y), (out,), Attrs(target="cpu"), loc="/a/b/net.py:7",
                  region=region))
    return b.build([b.emit("neg", [out])])


KERNEL_TEXT = """\
graph outer(
    %0: f32[2,3]  x  batch
    %1: f32[3]    y  param
) {
  %2: f32[2,3] = kernel[target=cpu] %0, %1 {   # net.py:7
    (%3: f32[2,3] <- %0, %4: f32[3] <- %1)
    %5: f32[2,3] = exp %3
    %6: f32[2,3] = add %5, %4
    yield %6
  }
  %7: f32[2,3] = neg %2
  return %7  # out0
}"""


# ---------------------------------------------------------------------------------------------
# printer


def test_printer_golden_step_graph():
    g = step_graph()
    verify(g)
    assert str(g) == STEP_TEXT


def test_printer_golden_kernel_region():
    g = kernel_graph()
    verify(g)
    assert str(g) == KERNEL_TEXT


def test_printer_annotate_adds_comments():
    text = format_graph(kernel_graph(), annotate=lambda n: f"<{n.op}>")
    assert "kernel[target=cpu] %0, %1 {   # net.py:7  <kernel>" in text
    assert "%5: f32[2,3] = exp %3   # <exp>" in text
    assert "%7: f32[2,3] = neg %2   # <neg>" in text


def test_printer_is_stable_across_builds():
    assert str(step_graph()) == str(step_graph())  # numbering does not leak global Var ids


def test_step_graph_runs():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    lr = np.float32(0.01)
    loss, w_new = interpret(step_graph(), [w, x, lr], float64=True)
    h = x.astype(np.float64) @ w
    np.testing.assert_allclose(loss, np.sum(h * h), rtol=1e-12)
    np.testing.assert_allclose(w_new, w - 0.01 * (2 * x.T.astype(np.float64) @ h), rtol=1e-7)


def test_kernel_node_runs_its_region():
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    y = np.array([1, 2, 3], np.float32)
    (out,) = interpret(kernel_graph(), [x, y])
    np.testing.assert_allclose(out, -(np.exp(x) + y), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# verifier


def two_node_graph():
    b = GraphBuilder("g")
    x = b.add_input(TensorType("float32", (2, 3)), "x")
    e = b.emit("exp", [x], loc="/p/m.py:3")
    n = b.emit("neg", [e], loc="/p/m.py:4")
    return b.build([n]), x, e, n


def broken_graphs():
    f23 = TensorType("float32", (2, 3))
    g, x, e, n = two_node_graph()
    out = {}
    out["use-before-def"] = (g.replace(nodes=g.nodes[::-1]), ["neg", "m.py:4", "before"])
    out["undefined-output"] = (g.replace(outputs=(Var(f23),)), ["output 0", "out0", "undefined"])
    wrong = Node("exp", (x,), (Var(TensorType("float64", (2, 3))),), Attrs())
    out["wrong-type"] = (g.replace(nodes=(wrong,), outputs=wrong.outputs),
                         ["exp", "f64[2,3]", "f32[2,3]"])
    wrong_shape = Node("exp", (x,), (Var(TensorType("float32", (3, 2))),), Attrs())
    out["wrong-shape"] = (g.replace(nodes=(wrong_shape,), outputs=wrong_shape.outputs),
                          ["exp", "f32[3,2]", "f32[2,3]"])
    again = Node("sin", (x,), (e,), Attrs(), loc="/p/m.py:5")
    out["ssa-redefinition"] = (g.replace(nodes=g.nodes + (again,)), ["sin", "m.py:5", "redefines"])
    over_input = Node("cos", (x,), (x,), Attrs())
    out["redefines-input"] = (g.replace(nodes=(over_input,), outputs=(x,)), ["cos", "redefines"])
    bad_rule = Node("exp", (Var(TensorType("int32", (2,))),), (Var(TensorType("int32", (2,))),))
    out["rule-rejects"] = (g.replace(inputs=bad_rule.inputs, nodes=(bad_rule,),
                                     outputs=bad_rule.outputs), ["node 0", "exp", "float"])
    two_outs = Node("exp", (x,), (Var(f23), Var(f23)), Attrs())
    out["primitive-two-outputs"] = (g.replace(nodes=(two_outs,), outputs=two_outs.outputs[:1]),
                                    ["exp", "output type"])
    out["alias-type"] = (g.replace(inputs=(x, Var(TensorType("float32", (3,)))),
                                   input_names=("x", "b"), input_roles=("batch", "param"),
                                   aliases=((0, 1),)),
                         ["out0", "f32[2,3]", "b", "f32[3]"])
    out["alias-range"] = (g.replace(aliases=((0, 5),)), ["alias", "(0, 5)"])
    out["duplicate-input"] = (g.replace(inputs=(x, x), input_names=("x", "x2"),
                                        input_roles=("batch", "batch")), ["listed twice"])
    out["region-arity"] = (kernel_graph(region_inputs=1), ["kernel", "net.py:7", "arity"])
    k = kernel_graph()
    knode = k.nodes[0]
    bad_region = knode.region.replace(
        inputs=(Var(TensorType("float32", (2, 3))), Var(TensorType("float64", (3,)))))
    out["region-input-type"] = (
        k.replace(nodes=(Node("kernel", knode.inputs, knode.outputs, knode.attrs, knode.loc,
                              region=bad_region),) + k.nodes[1:]),
        ["kernel", "f64[3]", "f32[3]"])
    inner = knode.region
    inner_broken = inner.replace(nodes=inner.nodes[::-1])
    out["region-body"] = (
        k.replace(nodes=(Node("kernel", knode.inputs, knode.outputs, knode.attrs, knode.loc,
                              region=inner_broken),) + k.nodes[1:]),
        ["kernel", "region", "add", "before"])
    return out


BROKEN = broken_graphs()


@pytest.mark.parametrize("name", list(BROKEN))
def test_verifier_rejects(name):
    graph, words = BROKEN[name]
    with pytest.raises(VerifyError) as info:
        verify(graph)
    message = str(info.value)
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"


def test_verifier_accepts_well_formed_graphs():
    g, *_ = two_node_graph()
    assert verify(g) is None
    assert verify(step_graph()) is None
    assert verify(kernel_graph()) is None


# ---------------------------------------------------------------------------------------------
# export


def small_graph():
    b = GraphBuilder("small")
    x = b.add_input(TensorType("float32", (2, 3)), "x")
    w = b.add_input(TensorType("float32", (3, 4)), "w", "param")
    h = b.emit("matmul", [x, w], MM)
    e = b.emit("exp", [h])
    s = b.emit("sum", [e], {"axes": (0, 1), "keepdims": False})
    return b.build([s, h], output_names=("loss", "h"))


def test_to_networkx_counts():
    g = small_graph()
    nxg = g.to_networkx()
    # 2 inputs + 3 nodes + 2 outputs; edges: x,w->matmul, matmul->exp, exp->sum, sum->out, mm->out
    assert nxg.number_of_nodes() == 7
    assert nxg.number_of_edges() == 6
    assert nxg.nodes["n:0"]["label"] == "matmul"
    assert nxg.nodes["in:1"]["role"] == "param"
    assert nxg.edges["n:0", "out:1"]["type"] == "f32[2,4]"
    import networkx as nx

    assert nx.is_directed_acyclic_graph(nxg)
    order = [k for k in nx.topological_sort(nxg) if k.startswith("n:")]
    assert [nxg.nodes[k]["label"] for k in order] == ["matmul", "exp", "sum"]


@pytest.mark.parametrize("make", [small_graph, step_graph, kernel_graph])
def test_to_dot_is_plausible(make):
    g = make()
    text = g.to_dot()
    assert text.startswith("digraph")
    assert text.count("{") == text.count("}")
    assert text.rstrip().endswith("}")
    for node in g.nodes:
        assert f'label="{node.op}' in text
    node_line = re.compile(r'^  "[^"]+" \[.*\];$')
    edge_line = re.compile(r'^  "[^"]+" -> "[^"]+" \[.*\];$')
    body = text.splitlines()[2:-1]
    edges = [ln for ln in body if "->" in ln]
    assert all(edge_line.match(ln) for ln in edges), edges
    assert all(node_line.match(ln) for ln in body if "->" not in ln)
    assert len(edges) == g.to_networkx().number_of_edges()
    for ln in body:  # quotes pair up on every line (escaped ones aside)
        assert ln.replace('\\"', "").count('"') % 2 == 0, ln


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_to_dot_parses_with_graphviz():
    result = subprocess.run(["dot", "-Tsvg"], input=step_graph().to_dot(), text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_importing_the_ir_does_not_import_tqdm():
    """The IR needs NumPy and networkx only; tqdm is for fit's progress bar, imported there."""
    root = Path(__file__).resolve().parent.parent
    code = "import sys, fusegrad.ir\nassert 'tqdm' not in sys.modules, sorted(sys.modules)\n"
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=str(root), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# TensorType, broadcasting, axes


@pytest.mark.parametrize("dtype,shape,text", [
    ("float32", (2, 3), "f32[2,3]"), ("float64", (), "f64[]"), ("int64", (5,), "i64[5]"),
    ("int32", (1, 0, 2), "i32[1,0,2]"), ("bool", (4, 1), "b1[4,1]"),
    (np.float32, [2, 3], "f32[2,3]"), ("f4", (7,), "f32[7]"), ("f64", (2,), "f64[2]"),
])
def test_tensor_type_str(dtype, shape, text):
    t = TensorType(dtype, shape)
    assert str(t) == text
    assert t == TensorType(t.dtype, tuple(shape)) and hash(t) == hash(TensorType(t.dtype, shape))


def test_tensor_type_properties_and_errors():
    t = TensorType("float32", (2, 3))
    assert (t.ndim, t.size, t.nbytes) == (2, 6, 24)
    assert t.with_dtype("int64") == TensorType("int64", (2, 3))
    assert t.with_shape((6,)) == TensorType("float32", (6,))
    assert TensorType.of(np.zeros((4, 1), np.int32)) == TensorType("int32", (4, 1))
    assert t != TensorType("float64", (2, 3)) and t != TensorType("float32", (3, 2))
    with pytest.raises(ShapeError, match="negative"):
        TensorType("float32", (2, -1))
    with pytest.raises(TypeError, match="complex64"):
        TensorType("complex64", (2,))


@pytest.mark.parametrize("shapes", [
    [(3, 1, 4), (5, 1)], [(), (2, 3)], [(2, 1), (1, 3), (3,)], [(0,), (1,)], [(4, 1, 0), (5, 1)],
    [(2, 3), (2, 3)], [(1,), ()],
])
def test_broadcast_shapes(shapes):
    assert broadcast_shapes(*shapes) == tuple(np.broadcast_shapes(*shapes))


@pytest.mark.parametrize("shapes,axis", [
    ([(3, 4), (5,)], -1), ([(2, 3), (3, 3)], -2), ([(0,), (5,)], -1), ([(2, 1), (1, 3), (4,)], -1),
])
def test_broadcast_shapes_error_names_op_and_shapes(shapes, axis):
    with pytest.raises(ShapeError) as info:
        broadcast_shapes(*shapes, op="add")
    message = str(info.value)
    assert message.startswith("add:")
    for s in shapes:
        assert str(tuple(s)) in message
    assert f"axis {axis}" in message


@pytest.mark.parametrize("axes,ndim,expected", [
    (None, 3, (0, 1, 2)), (-1, 3, (2,)), ((-1, 0), 3, (0, 2)), ((2, -3), 4, (1, 2)),
    (np.int64(1), 2, (1,)), ((), 2, ()), ([-2, -1], 2, (0, 1)),
])
def test_normalize_axes(axes, ndim, expected):
    assert normalize_axes(axes, ndim) == expected


@pytest.mark.parametrize("axes,ndim,words", [
    (3, 3, ["sum", "axis 3"]), ((-4,), 3, ["sum", "axis -4"]), ((0, -3), 3, ["sum", "repeated"]),
])
def test_normalize_axes_errors(axes, ndim, words):
    with pytest.raises(ShapeError) as info:
        normalize_axes(axes, ndim, op="sum")
    for w in words:
        assert w in str(info.value)


# ---------------------------------------------------------------------------------------------
# Attrs and ConstArray


def test_attrs_equality_and_hash():
    a = Attrs(axes=(0, 1), keepdims=False)
    b = Attrs({"keepdims": False}, axes=[np.int64(0), 1])  # lists and NumPy scalars freeze
    assert a == b and hash(a) == hash(b)
    assert a != Attrs(axes=(0, 1), keepdims=True)
    assert a != Attrs(axes=(0,), keepdims=False)
    assert len({a, b, Attrs(axes=(1,), keepdims=False)}) == 2
    assert dict(a) == {"axes": (0, 1), "keepdims": False}
    assert a.replace(keepdims=True) == Attrs(axes=(0, 1), keepdims=True)
    assert a == Attrs(axes=(0, 1), keepdims=False)  # replace did not mutate
    assert repr(a) == "[axes=(0,1), keepdims=False]"
    assert repr(Attrs()) == "" and Attrs() == Attrs() and hash(Attrs()) == hash(Attrs())
    assert Attrs(value=np.float64(0.5))["value"] == 0.5 and Attrs(flag=np.bool_(True))["flag"]


def test_attrs_with_arrays_compare_by_value():
    a = Attrs(value=np.arange(6, dtype=np.float32).reshape(2, 3))
    b = Attrs(value=np.arange(6, dtype=np.float32).reshape(2, 3))
    assert isinstance(a["value"], ConstArray)
    assert a == b and hash(a) == hash(b)
    assert a != Attrs(value=np.arange(6, dtype=np.float64).reshape(2, 3))


def test_const_array_value_semantics():
    src = np.array([1.0, 2.0, 3.0], np.float32)
    c = ConstArray(src)
    assert c == ConstArray(np.array([1.0, 2.0, 3.0], np.float32))
    assert hash(c) == hash(ConstArray(src.copy()))
    assert c != ConstArray(src.astype(np.float64))  # dtype matters
    assert c != ConstArray(src.reshape(1, 3))  # shape matters
    assert c != ConstArray(np.array([1.0, 2.0, 4.0], np.float32))
    assert c != src  # only equal to another ConstArray
    src[0] = 99.0  # the ConstArray holds its own copy
    assert c.array[0] == 1.0
    with pytest.raises(ValueError):
        c.array[0] = 5.0  # and it is read-only
    assert repr(ConstArray(np.array(2.5))) == "2.5"
    assert repr(ConstArray(np.zeros((3, 4), np.int32))) == "<int32[3, 4] array>"
