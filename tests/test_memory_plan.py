"""The memory plan (passes/memory.py) on the graphs of golden_models.

execute_plan runs the fused graph with every value read from and written to its planned storage,
so it is the oracle for buffer reuse. The plan is also checked against liveness computed here
independently: values that are live at the same time never share a buffer, a kernel writes over
an operand only when the two have the same size and dtype and the operand dies there, and
parameters/optimizer state are updated in their own storage when nothing reads the old value
afterwards, and never when something does.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from fusegrad.compiler.passes.loopspace import Space, infer_maps
from fusegrad.compiler.passes.kernel_kinds import KERNEL_KINDS
from fusegrad.compiler.passes.memory import ALIGN, _names, execute_plan
from fusegrad.compiler.pipeline import compile_graph
from fusegrad.ir import GraphBuilder, TensorType, interpret
from fusegrad.ir.printer import var_names

from golden_models import CASES, STEPS, assert_planned_close, case, random_args


class Liveness:
    """Kernel index where each top-level value is defined and last needed (views included:
    a value is needed as long as a reshape of it is; graph outputs until the end)."""

    def __init__(self, graph):
        nodes = graph.nodes
        self.end = len(nodes)
        self.root = {}
        for n in nodes:
            if n.op == "reshape":
                base = n.inputs[0]
                self.root[n.out] = self.root.get(base, base)
        self.first = {v: -1 for v in graph.inputs}
        self.last = {}
        self.readers = {}  # root Var -> kernel indices that read it or a view of it
        for k, n in enumerate(nodes):
            for v in n.outputs:
                self.first[v] = k
            if n.op == "kernel":
                for v in n.inputs:
                    r = self.root.get(v, v)
                    self.readers.setdefault(r, []).append(k)
                    self.last[r] = max(self.last.get(r, -1), k)
        for v in graph.outputs:
            self.last[self.root.get(v, v)] = self.end

    def last_of(self, v):
        return self.last.get(v, self.first[v])  # an unread value dies where it is made


def _arena_values(plan):
    return [(v, a, z, b) for b in plan.buffers for v, a, z in b.values]


# ---- the oracle -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_execute_plan_equals_interpret(name):
    c = case(name)
    for seed in (3, 4):
        args = random_args(c.graph, seed)
        keep = [a.copy() for a in args]
        want = interpret(c.fused, args)
        got = execute_plan(c.plan, args)
        assert_planned_close(got, want, c.graph.output_names)
        source = interpret(c.graph, args)
        for out, w, g in zip(c.graph.output_names, source, got):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=out)
        for a, b in zip(args, keep):  # the oracle works on copies of the caller's arrays
            np.testing.assert_array_equal(a, b)


# ---- buffers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_live_values_never_share_a_buffer(name):
    plan = case(name).plan
    live = Liveness(plan.graph)
    in_place = {(k, i, o) for k, i, o in plan.in_place}
    for b in plan.buffers:
        values = sorted(b.values, key=lambda t: t[1])
        for v, a, z in values:
            assert a == live.first[v], f"buf{b.index}: {v} recorded from {a}"
            assert z >= live.last_of(v), f"buf{b.index}: {v} recorded dead at {z}, " \
                                         f"read until {live.last_of(v)}"
            assert v.type.nbytes <= b.nbytes
        for (p, _, _), (q, qa, _) in zip(values, values[1:]):
            assert live.last_of(p) <= qa, f"buf{b.index}: {q} overwrites {p}, still live"
            if live.last_of(p) == qa:  # handed over inside one kernel: only in place
                assert (qa, p, q) in in_place, f"buf{b.index}: {p} -> {q} at kernel {qa}"


@pytest.mark.parametrize("name", CASES)
def test_arena_layout_and_byte_counts(name):
    c = case(name)
    plan = c.plan
    offset = 0
    for b in plan.buffers:
        assert b.offset == offset and b.nbytes % ALIGN == 0 and b.nbytes > 0
        offset += b.nbytes
    assert plan.arena_bytes == plan.peak_bytes == offset
    outputs = [v for n in plan.graph.nodes if n.op == "kernel" for v in n.outputs]
    aligned = sum(-(-v.type.nbytes // ALIGN) * ALIGN for v in outputs)
    assert plan.naive_bytes == aligned
    assert plan.peak_bytes <= plan.naive_bytes
    # every value a kernel touches has a place
    for n in plan.graph.nodes:
        for v in (*n.inputs, *n.outputs):
            assert plan.storage[v][0] in ("arena", "input", "const", "view"), v
        if n.op == "reshape":
            assert plan.storage[n.out][0] == "view"
    arena = {v for v, *_ in _arena_values(plan)}
    assert arena == {v for v, (k, _) in plan.storage.items() if k == "arena"}


@pytest.mark.parametrize("name", CASES)
def test_in_place_only_over_a_dying_operand_of_equal_size_and_dtype(name):
    plan = case(name).plan
    live = Liveness(plan.graph)
    nodes = plan.graph.nodes
    for k, i, o in plan.in_place:
        n = nodes[k]
        assert n.op == "kernel" and i in n.inputs and o in n.outputs
        assert KERNEL_KINDS[n.attrs["kind"]].in_place
        assert i.type.size == o.type.size and i.type.dtype == o.type.dtype, (i, o)
        assert plan.storage[i] == plan.storage[o]
        assert live.last_of(i) == k
        # the element of i read at a loop index is the element of o written there
        kernel, inner_i, inner_o = n, None, None
        if n.attrs["kind"] == "multi":  # the part that writes o, which alone reads i
            inner = dict(zip(n.inputs, n.region.inputs)) | dict(zip(n.outputs, n.region.outputs))
            kernel = next(p for p in n.region.nodes if inner[o] in p.outputs)
            assert [p for p in n.region.nodes if inner[i] in p.inputs] == [kernel]
            i, o = inner[i], inner[o]
        inner_i = kernel.region.inputs[kernel.inputs.index(i)]
        inner_o = kernel.region.outputs[kernel.outputs.index(o)]
        space = Space(tuple(kernel.attrs["space"]), kernel.attrs["split"])
        maps, _ = infer_maps(kernel.region.nodes, space)
        assert maps[inner_i] == maps[inner_o]


# ---- parameters and state -------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_input_storage_is_written_only_when_safe(name):
    """An input's storage receives at most one new value, only an aliased output's, and only
    after every read of the old value (views included)."""
    plan = case(name).plan
    graph = plan.graph
    live = Liveness(graph)
    targets = dict((o, i) for o, i in graph.aliases)
    written = {}
    for v, (kind, where) in plan.storage.items():
        if kind != "input" or v is graph.inputs[where]:
            continue
        assert where not in written, f"two values written into input {where}"
        written[where] = v
        assert any(graph.outputs[o] is v and i == where for o, i in targets.items()), v
        k = live.first[v]
        later = [r for r in live.readers.get(graph.inputs[where], []) if r > k]
        assert not later, f"{graph.input_names[where]} is overwritten at kernel {k} but " \
                          f"read at {later}"


@pytest.mark.parametrize("name", STEPS)
def test_updates_are_written_into_their_inputs(name):
    plan = case(name).plan
    graph = plan.graph
    live = Liveness(graph)
    assert graph.aliases
    for o, i in graph.aliases:
        v = graph.outputs[o]
        k = live.first[v]
        later = [r for r in live.readers.get(graph.inputs[i], []) if r > k]
        if not later:
            assert plan.storage[v] == ("input", i), graph.output_names[o]
        else:
            assert (o, i) in plan.copies_back
    assert plan.copies_back == [(o, i) for o, i in graph.aliases
                                if plan.storage.get(graph.outputs[o]) != ("input", i)]


def _state_graph(view_first):
    """new s = x * x replaces state s, and a reshape of the old s feeds a GEMM after it."""
    b = GraphBuilder("g")
    s = b.add_input(TensorType("float32", (4,)), "s", "state")
    x = b.add_input(TensorType("float32", (4,)), "x", "batch")
    if view_first:
        v = b.emit("reshape", [s], {"shape": (2, 2)})
        new_s = b.emit("mul", [x, x])
    else:
        new_s = b.emit("mul", [x, x])
        v = b.emit("reshape", [s], {"shape": (2, 2)})
    y = b.emit("matmul", [v, v], {"transpose_a": False, "transpose_b": False})
    return b.build([y, new_s], ["y", "new s"], [(1, 0)])


def _check_plan_of(graph):
    program = compile_graph(graph)
    args = [np.arange(4, dtype=np.float32), np.full(4, 3, np.float32)]
    want = interpret(graph, args)
    for w, g in zip(want, execute_plan(program.plan, args)):
        np.testing.assert_array_equal(g, w)
    return program.plan


def test_state_read_after_its_update_is_copied_back():
    plan = _check_plan_of(_state_graph(view_first=False))
    assert plan.copies_back == [(1, 0)]
    assert plan.storage[plan.graph.outputs[1]][0] == "arena"


def test_state_read_through_an_earlier_view_is_not_overwritten():
    _check_plan_of(_state_graph(view_first=True))


# ---- text and stats -----------------------------------------------------------------------------


def test_memory_plan_text_and_stats():
    c = case("ln_mlp_adam")
    text = c.step.memory_plan()
    plan = c.plan
    assert text == str(plan)
    first = text.splitlines()[0]
    assert "peak" in first and f"{plan.peak_bytes:,}" in first
    assert f"{plan.naive_bytes:,}" in first
    assert len(re.findall(r"^  buf\d+", text, re.M)) == len(plan.buffers)
    stats = c.step.stats()
    assert stats["kernels"] == c.program.kernels
    assert stats["peak_bytes"] == plan.peak_bytes and stats["naive_bytes"] == plan.naive_bytes
    assert stats["target"] == "interpret"
    assert plan.peak_bytes <= 0.5 * plan.naive_bytes


@pytest.mark.parametrize("name", ["mlp_sgd", "cnn_sgd"])
def test_memory_plan_names_match_the_fused_text(name):
    """The %N names in the plan are the printer's names for the same values."""
    plan = case(name).plan
    printer = var_names(plan.graph)
    ours = _names(plan.graph)
    for v, *_ in _arena_values(plan):
        assert ours[v] == printer[v], v


def test_memory_plan_text_lists_only_written_inputs():
    c = case("mlp_sgd")
    line = next(ln for ln in str(c.plan).splitlines() if "written into" in ln)
    assert "<- x" not in line and "<- lr" not in line, line
