"""Fusion (passes/prepare.py + passes/fusion.py) on real graphs: the MLP, LayerNorm+GELU MLP and
CNN training steps, attention, dropout, RMSProp/AdamW updates and graphs built to stress the
loop-space rules (odd broadcasts, non-contiguous and max reductions, negative-step slices,
pad/concatenate, gather, a forward-only jit graph).

Every graph is checked the same way: the traced graph, the fused graph (kernel by kernel through
the interpreter) and the memory plan's oracle (execute_plan) give the same results on random
inputs; every kernel is well formed (its region verifies, loop kernels admit one index map per
value, costs are present); a train step never writes a parameter before the loss is known.
Golden dumps of the fused graph pin the partition and the cost model for four models
(FUSEGRAD_UPDATE_GOLDEN=1 rewrites them). Graphs are traced with target="interpret" and built
once per session (golden_models.case), so nothing here compiles Numba code.
"""
from __future__ import annotations

import difflib
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import fusegrad as fg
from fusegrad import config
from fusegrad.compiler.dump import format_fused
from fusegrad.compiler.passes.fusion import fuse, kernel_count, structural_name
from fusegrad.compiler.passes.kernel_kinds import KERNEL_KINDS, LOOP_KINDS
from fusegrad.compiler.passes.loopspace import (REDUCTIONS, MapConflict, Space, infer_maps,
                                                is_loop_op, space_for)
from fusegrad.compiler.passes.memory import execute_plan
from fusegrad.compiler.passes.prepare import prepare_for_fusion
from fusegrad.compiler.pipeline import compile_graph
from fusegrad.ir import GraphBuilder, TensorType, interpret, verify
from fusegrad.ir.printer import format_graph
from fusegrad.ir.structure import structure_key

from golden_models import CASES, GOLDEN, STEPS, assert_planned_close, case, random_args

GOLDEN_DIR = Path(__file__).parent / "golden"
KINDS = tuple(KERNEL_KINDS)


def kernels(graph):
    return [n for n in graph.nodes if n.op == "kernel"]


def assert_outputs_close(graph, want, got, rtol, atol, what):
    for name, w, g in zip(graph.output_names, want, got):
        assert w.dtype == g.dtype and w.shape == g.shape, f"{what}: {name}"
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"{what}: {name}")


# ---- every pass, interpreted before and after ------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_source_fused_and_planned_graphs_agree(name):
    """interpret(traced) == interpret(fused) == execute_plan(plan) on random inputs."""
    c = case(name)
    for seed in (0, 1):
        args = random_args(c.graph, seed)
        want = interpret(c.graph, args)
        got = interpret(c.fused, args)
        # float32 graphs: the fused graph runs the same primitives, up to the optimizer's
        # rewrites (transposes folded into matmul flags change BLAS's summation order)
        assert_outputs_close(c.graph, want, got, rtol=1e-5, atol=1e-5, what="fused")
        # the plan runs the very same kernels, only through shared buffers
        assert_planned_close(execute_plan(c.plan, args), got, c.graph.output_names)
        # in float64 every stage must agree to rounding
        want64 = interpret(c.graph, args, float64=True)
        for stage in (c.program.optimized, c.fused):
            got64 = interpret(stage, args, float64=True)
            assert_outputs_close(c.graph, want64, got64, rtol=1e-10, atol=1e-12,
                                 what=f"float64 {stage.name}")


@pytest.mark.parametrize("name", CASES)
def test_prepared_graph_interprets_like_the_optimized_one(name):
    c = case(name)
    prepared = prepare_for_fusion(c.program.optimized)
    verify(prepared)
    args = random_args(c.graph, 2)
    want = interpret(c.program.optimized, args, float64=True)
    got = interpret(prepared, args, float64=True)
    assert_outputs_close(c.graph, want, got, rtol=1e-12, atol=1e-12, what="prepare")


def test_prepare_splits_noncontiguous_reductions_and_materialises_odd_broadcasts():
    opt = case("noncontiguous_sum").program.optimized
    prepared = prepare_for_fusion(opt)
    for n in prepared.nodes:
        if n.op in REDUCTIONS:
            axes = tuple(n.attrs["axes"])
            assert axes == tuple(range(axes[0], axes[0] + len(axes))), axes
    assert any(n.op == "sum" and tuple(n.attrs["axes"]) == (0, 2) for n in opt.nodes)
    odd = prepare_for_fusion(case("odd_broadcast").program.optimized)
    assert any(n.op == "broadcast_to" and n.out.shape == (3, 5, 4) for n in odd.nodes)


# ---- kernels are well formed -------------------------------------------------------------------


def _check_loop_kernel(k):
    a = k.attrs
    space = Space(tuple(a["space"]), a["split"])
    assert all(is_loop_op(n) for n in k.region.nodes), [n.op for n in k.region.nodes]
    try:
        _, reductions = infer_maps(k.region.nodes, space)
    except MapConflict as exc:  # pragma: no cover  (the failure is the message)
        pytest.fail(f"kernel {a['name']} ({a['kind']}) mixes incompatible maps: {exc}")
    kinds = set(reductions.values())
    want = {"elementwise": set(), "row": {"row"}, "column": {"col"},
            "row+column": {"row", "col"}}[a["kind"]]
    assert kinds == want, (a["name"], kinds)


def _check_kernel(k):
    a = k.attrs
    assert a["kind"] in KINDS
    assert isinstance(a["flops"], int) and a["flops"] >= 0
    assert a["bytes"] == sum(v.type.nbytes for v in (*k.inputs, *k.outputs))
    assert a["name"] == structural_name(a["kind"], k.region)
    assert len(k.region.inputs) == len(k.inputs) and len(k.region.outputs) == len(k.outputs)
    assert len(set(k.inputs)) == len(k.inputs), "an operand is passed twice"
    if a["kind"] in LOOP_KINDS:
        _check_loop_kernel(k)
    elif a["kind"] == "gemm":
        (mm,) = k.region.nodes
        assert mm.op == "matmul"
        m, n = mm.out.shape[-2:]
        kk = mm.inputs[0].shape[-2 if mm.attrs["transpose_a"] else -1]
        assert a["flops"] == 2 * mm.out.type.size * kk and m * n > 0
    elif a["kind"] == "opaque":
        (n,) = k.region.nodes
        if is_loop_op(n):  # a loop primitive is opaque only where no 2-D space fits it
            with pytest.raises(MapConflict):  # (a middle-axis reduction, an odd broadcast)
                infer_maps([n], space_for([n], [n.out]))
    else:  # multi: independent elementwise kernels of the update
        inner = k.region.nodes
        assert len(inner) >= 2 and all(n.op == "kernel" for n in inner)
        assert a["flops"] == sum(n.attrs["flops"] for n in inner)
        produced = {v for n in inner for v in n.outputs}
        for n in inner:
            assert n.attrs["kind"] == "elementwise"
            assert not produced & set(n.inputs), "parts of a multi kernel depend on each other"
            _check_kernel(n)


@pytest.mark.parametrize("name", CASES)
def test_every_kernel_is_well_formed(name):
    c = case(name)
    verify(c.fused)  # regions included
    for n in c.fused.nodes:
        if n.op == "kernel":
            _check_kernel(n)
        else:  # only views and array data stay outside kernels
            assert n.op in ("reshape", "constant"), n.op
    assert 0 < c.program.kernels < len(c.program.optimized.nodes)
    assert c.program.kernels == kernel_count(c.fused)
    stats = c.program.stats()
    assert stats["gemms"] == sum(1 for k in kernels(c.fused) if k.attrs["kind"] == "gemm")
    # every matmul of the optimized graph became a GEMM kernel of its own
    assert stats["gemms"] == c.program.optimized.count("matmul")


def test_fused_text_shows_costs_and_nested_regions():
    c = case("mlp_sgd")
    text = c.ir_fused()
    assert text == format_fused(c.fused)
    for k in kernels(c.fused):
        a = k.attrs
        assert f"{a['flops']:,} flop, {a['bytes']:,} B" in text
        assert f"kind={a['kind']}" in text and f"name={a['name']}" in text
    assert text.count("{") == text.count("}")
    assert "yield" in text and "golden_models.py:" in text


# ---- the guard: the loss is known before any parameter changes ------------------------------


def _cone(graph, value):
    """Top-level nodes `value` depends on (its producer included)."""
    producers = graph.producers()
    cone, stack = set(), [value]
    while stack:
        p = producers.get(stack.pop())
        if p is not None and p not in cone:
            cone.add(p)
            stack.extend(p.inputs)
    return cone


@pytest.mark.parametrize("name", STEPS)
def test_no_parameter_is_written_before_the_loss(name):
    c = case(name)
    fused = c.fused
    nodes = list(fused.nodes)
    aliased = {fused.outputs[o] for o, _ in fused.aliases}
    assert aliased
    loss_node = fused.producers()[fused.outputs[0]]
    assert loss_node.op == "kernel"
    at = nodes.index(loss_node)
    writers = [k for k, n in enumerate(nodes) if aliased & set(n.outputs)]
    assert writers and min(writers) > at, (at, writers)
    for n in _cone(fused, fused.outputs[0]):
        assert not aliased & set(n.outputs), f"{n.attrs.get('name')} computes the loss and " \
                                             f"writes parameters"
    # and the plan writes no parameter/state storage before the loss either
    for n in nodes[:at + 1]:
        for v in n.outputs:
            assert c.plan.storage[v][0] != "input", v


def test_guard_keeps_the_loss_kernel_free_of_parameter_writes():
    """Without a guard the fused MLP step may compute the loss next to the bias update; with it,
    the loss's kernel writes nothing aliased (what the generated driver checks first)."""
    c = case("mlp_sgd")
    prepared = prepare_for_fusion(c.program.optimized)
    guarded = fuse(prepared, guard=0)
    aliased = {guarded.outputs[o] for o, _ in guarded.aliases}
    loss_node = guarded.producers()[guarded.outputs[0]]
    assert not aliased & set(loss_node.outputs)
    unguarded = fuse(prepared)
    # (without the guard, a kernel the loss depends on also finishes the output bias's update)
    aliased = {unguarded.outputs[o] for o, _ in unguarded.aliases}
    assert any(aliased & set(n.outputs) for n in _cone(unguarded, unguarded.outputs[0]))
    args = random_args(c.graph, 3)
    for g in (guarded, unguarded):
        verify(g)
        assert_outputs_close(c.graph, interpret(c.graph, args), interpret(g, args), 1e-5, 1e-5,
                             "fused")


# ---- the partition itself ----------------------------------------------------------------------


def test_layernorm_mlp_adam_kernel_budget_and_memory():
    """3 hidden LayerNorm+GELU layers (16-32-32-32-10, batch 8) with Adam: at most the GEMMs plus
    two kernels per layer plus a small constant, plus one gradient check (a reduction to a
    scalar) per parameter; the plan needs at most half the naive bytes."""
    c = case("ln_mlp_adam")
    stats = c.program.stats()
    layers = 4  # 3 hidden + the output layer
    params = 4 + 4 + 3 + 3  # weights, biases, LayerNorm gains and biases
    assert stats["gemms"] == 11  # 4 forward, 4 weight gradients, 3 input gradients
    assert stats["kernels"] <= stats["gemms"] + 2 * layers + 3 + params, stats
    assert c.plan.peak_bytes <= 0.5 * c.plan.naive_bytes, stats
    # a gradient check: a vector's is one row sum, a matrix's a sum of row sums (row+column)
    checks = [k for k in kernels(c.fused) if k.part == "backward"
              and k.attrs["kind"] in ("row", "row+column")
              and all(v.type.shape == () for v in k.outputs)]
    kinds = [k.attrs["kind"] for k in kernels(c.fused) if k not in checks]
    # one row kernel per LayerNorm forward, LayerNorm backward + bias/gain gradients as
    # row+column kernels, one multi-tensor update for every parameter (the gradient checks
    # come between the last gradient and the first update, so no update joins a gradient's
    # kernel)
    assert len(checks) == params
    assert kinds.count("multi") == 1
    assert kinds.count("row") == 3
    # the one library call: the class labels' range check (cross_entropy)
    opaque = [k.region.nodes[0].op for k in kernels(c.fused) if k.attrs["kind"] == "opaque"]
    assert opaque == ["check_index"]


def _kinds(fused) -> list:
    """Kernel kinds, without the class labels' range check (one tiny library call, before the
    loss)."""
    return [k.attrs["kind"] for k in kernels(fused)
            if not (k.attrs["kind"] == "opaque" and k.region.nodes[0].op == "check_index")]


def test_kernel_kinds_of_the_small_models():
    kinds = {name: _kinds(case(name).fused) for name in ("mlp_sgd", "softmax_ce", "cnn_sgd")}
    assert kinds["softmax_ce"] == ["row+column"] or kinds["softmax_ce"] == ["row"]
    assert kinds["mlp_sgd"].count("gemm") == 5 and kinds["mlp_sgd"].count("multi") == 1
    cnn = kinds["cnn_sgd"]
    assert cnn.count("gemm") == 5 and cnn.count("multi") == 1
    assert cnn.count("opaque") >= 2  # unfold for the convolution and the pooling, at least


def _forward_layernorm_kernels(c):
    return [k for k in kernels(c.fused) if k.attrs["kind"] == "row"
            and any(n.op == "rsqrt" for n in k.region.nodes)]


def test_structural_names_follow_structure():
    """Same (kind, structure without sizes) <=> same name, across every graph here."""
    by_structure, by_name = defaultdict(set), defaultdict(set)
    for name in CASES:
        for k in kernels(case(name).fused):
            for n in [k, *(k.region.nodes if k.attrs["kind"] == "multi" else ())]:
                key = (n.attrs["kind"], structure_key(n.region))
                by_structure[key].add(n.attrs["name"])
                by_name[n.attrs["name"]].add(key)
    assert all(len(names) == 1 for names in by_structure.values())
    assert all(len(keys) == 1 for keys in by_name.values())
    # sizes do not enter the name: the forward GEMMs of every layer share one
    c = case("ln_mlp_adam")
    forward = {k.attrs["name"] for k in kernels(c.fused) if k.attrs["kind"] == "gemm"
               and k.part == "forward"}
    assert len(forward) == 1


def test_no_kernel_only_copies():
    for name in CASES:
        for k in kernels(case(name).fused):
            if k.attrs["kind"] in LOOP_KINDS:
                assert any(n.op != "reshape" for n in k.region.nodes), (name, k.attrs["name"])


def test_identical_layernorm_layers_share_one_kernel_name():
    c = case("ln_mlp_adam")
    names = [k.attrs["name"] for k in _forward_layernorm_kernels(c)]
    assert len(names) == 3
    (multi,) = [k for k in kernels(c.fused) if k.attrs["kind"] == "multi"]
    weights = [n.attrs["name"] for n in multi.region.nodes if n.attrs["space"][0] > 1 and
               len(n.attrs["space"]) == 2]  # the four weight matrices' Adam updates
    assert len(weights) == 4
    assert len(set(names)) == 1 and len(set(weights)) == 1, (names, weights)


def _sum_div_neg_graph():
    b = GraphBuilder("g")
    x = b.add_input(TensorType("float32", (8,)), "x")
    s = b.emit("sum", [x], {"axes": (0,), "keepdims": False})
    eight = b.emit("constant", [], {"value": np.asarray(8.0, np.float32)})
    return b.build([b.emit("neg", [b.emit("div", [s, eight])])])


def test_fusion_is_deterministic():
    texts = {format_graph(fuse(_sum_div_neg_graph())) for _ in range(40)}
    assert len(texts) == 1, texts


def test_sibling_merge_through_a_recomputed_scalar_makes_no_cycle():
    def f(x, y):
        a = y * y  # (1,5)
        s = fg.sum(a) * 2.0  # a scalar, recomputed in the kernels that use it
        c = fg.sum(x, axis=0, keepdims=True)
        return x * s, a + c

    compiled = fg.jit(f, target="interpret")
    compiled(np.ones((4, 5), np.float32), np.ones((1, 5), np.float32))
    compiled.runner(compiled._last).program


def test_scalar_and_one_element_values_fuse():
    compiled = fg.jit(lambda x, y: (fg.tanh(x), y * fg.tanh(x)), target="interpret")
    compiled(np.float32(0.5), np.ones(1, np.float32))
    compiled.runner(compiled._last).program


def _fusion_is_nondeterministic() -> bool:
    return len({kernel_count(fuse(_sum_div_neg_graph())) for _ in range(40)}) > 1


# ---- golden dumps --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOLDEN)
def test_fused_golden(name):
    """The fused graph's text, costs included. FUSEGRAD_UPDATE_GOLDEN=1 rewrites the files."""
    text = case(name).ir_fused() + "\n"
    path = GOLDEN_DIR / f"{name}.txt"
    if config.get("FUSEGRAD_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"{path} is missing: run with FUSEGRAD_UPDATE_GOLDEN=1"
    want = path.read_text()
    if text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                            str(path), "now", n=2))
        pytest.fail(f"fused graph of {name} changed (FUSEGRAD_UPDATE_GOLDEN=1 to accept):\n"
                    f"{diff[:6000]}")


def test_golden_locations_are_stable():
    """The goldens name golden_models.py lines; the models must stay where they are."""
    text = (GOLDEN_DIR / "mlp_sgd.txt").read_text()
    lines = Path(__file__).with_name("golden_models.py").read_text().splitlines()
    for line in sorted({int(m) for m in re.findall(r"golden_models\.py:(\d+)", text)}):
        assert "fg." in lines[line - 1] or "@" in lines[line - 1], lines[line - 1]


# ---- dumps ---------------------------------------------------------------------------------------


def test_fusegrad_dump_writes_pass_and_program_stages(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEGRAD_DUMP", str(tmp_path))
    c = case("mlp_sgd")
    program = compile_graph(c.graph, guard=0)
    folder = tmp_path / c.graph.name
    names = sorted(p.name for p in folder.iterdir())
    assert names[0] == "00_input.txt"
    numbered = [n for n in names if re.match(r"\d\d_", n)]
    assert any(n.endswith("_simplify.txt") for n in numbered)
    assert any(n.endswith("_layout.txt") for n in numbered)
    assert (folder / "90_fused.txt").read_text() == format_fused(program.fused) + "\n"
    assert (folder / "91_memory_plan.txt").read_text() == str(program.plan) + "\n"
    assert (folder / "92_fused.dot").read_text().startswith(("digraph", "strict digraph"))


def test_dump_stages_of_one_graph_share_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEGRAD_DUMP", str(tmp_path))
    g = fg.grad(lambda x: fg.sum(fg.tanh(x)), target="interpret")
    g(np.ones(3))
    g.runner(g._last).program
    folders = {p.parent.name for p in tmp_path.rglob("*.txt")}
    assert len(folders) == 1, folders


def test_step_dump_writes_every_stage(tmp_path):
    c = case("mlp_sgd")
    folder = Path(c.step.dump(tmp_path))
    for stage in ("forward", "backward", "update", "step", "optimized"):
        assert (folder / f"{stage}.txt").read_text() == c.step.ir(stage) + "\n"
    assert (folder / "90_fused.txt").read_text() == c.ir_fused() + "\n"
    assert (folder / "91_memory_plan.txt").read_text() == c.step.memory_plan() + "\n"
    assert (folder / "93_kernels.py").read_text().strip()
    assert (folder / "step.dot").exists() and (folder / "92_fused.dot").exists()


def test_functions_show_what_steps_show(tmp_path):
    """fg.jit / fg.grad functions inspect like train steps (one mixin): every stage, the memory
    plan, the generated code and a dump, for the last call or for example arguments."""
    g = fg.grad(lambda x: fg.sum(fg.tanh(x) * x), target="interpret")
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    assert "tanh" in g.ir(None, x) and g.ir() == g.ir("graph")
    assert "# ---- backward ----" in g.ir("backward")
    assert "kernel" in g.ir("fused") and g.memory_plan().startswith("memory plan")
    with pytest.raises(ValueError, match="stage must be one of"):
        g.ir("update")  # a function has no optimizer update
    folder = Path(g.dump(tmp_path))
    for stage in ("forward", "backward", "graph", "optimized"):
        assert (folder / f"{stage}.txt").read_text() == g.ir(stage) + "\n"
    assert (folder / "93_kernels.py").read_text().strip() and (folder / "graph.dot").exists()
