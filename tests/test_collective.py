"""The collective primitive in one process: all_reduce (the gradient sum of a data-parallel step)
through the passes, the memory plan and both kernel compilers. With handle 0 (no communicator)
it sums over this process alone, so every result here is checked against the interpreter (the
suite's cross-check) without MPI; tests/test_distributed.py runs real jobs of 2 processes.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from fusegrad.backend import Runner
from fusegrad.compiler.codegen.cpu import generate_cpu
from fusegrad.compiler.passes import cse, dce
from fusegrad.compiler.passes.memory import BufferPart, execute_plan
from fusegrad.compiler.pipeline import compile_graph
from fusegrad.ir import GraphBuilder, TensorType, interpret, verify
from fusegrad.ir.ops import PRIMITIVES, packed_offsets

NO_COMM = np.zeros(5, np.int64)


def _graph(read_later=False, operand_is_input=False, twice=False, bits=32):
    """h, x, w -> gradients-like values summed by one all_reduce, then read back through parts
    (as compiler/data_parallel.py builds it)."""
    b = GraphBuilder("collective")
    h = b.add_input(TensorType("int64", (5,)), "mpi", "hyper")
    x = b.add_input(TensorType("float32", (6, 5)), "x")
    w = b.add_input(TensorType("float32", (5, 3)), "w", "param")
    y = b.emit("matmul", [x, w], {"transpose_a": False, "transpose_b": False})
    g = b.emit("matmul", [x, y], {"transpose_a": True, "transpose_b": False})  # like dL/dw
    s = b.emit("sum", [y], {"axes": (0,), "keepdims": False})  # like a bias gradient
    c = b.emit("cast", [b.emit("sum", [y], {"axes": (0, 1), "keepdims": False})],
               {"dtype": "float32"})  # a scalar
    operands = [g, s, c] + ([x] if operand_is_input else []) + ([s] if twice else [])
    packed = b.emit("all_reduce", [h, *operands], {"handle_bits": bits})
    offsets, _ = packed_offsets([v.type for v in operands])
    parts = [b.emit("part", [packed], {"offset": at, "shape": v.shape})
             for v, at in zip(operands, offsets)]
    outs = [b.emit("mul", [p, p]) for p in parts]
    if read_later:  # g read again after the collective: it cannot be summed where it is
        outs.append(b.emit("add", [g, g]))
    graph = b.build(outs)
    verify(graph)
    return graph


def _inputs(graph, seed=0):
    rng = np.random.default_rng(seed)
    return [NO_COMM] + [rng.standard_normal(v.shape).astype(np.float32)
                        for v in graph.inputs[1:]]


def _pack(program):
    (pack,) = program.plan.packs.values()
    return pack


def test_operands_are_computed_in_their_place_in_one_buffer():
    program = compile_graph(_graph())
    pack = _pack(program)
    assert [home for _, _, home in pack] == [True, True, True]
    kind, result = program.plan.storage[pack.result]
    assert kind == "arena"
    for v, at, _ in pack:  # each producer writes straight into the collective's buffer
        kind, where = program.plan.place(v)
        assert kind == "arena" and isinstance(where, BufferPart)
        assert where.parent is result and where.at == at * 4
    schedule = generate_cpu(program).schedule
    assert not any("into" in line for line in schedule), "no operand is copied"
    assert sum("all_reduce_h32" in line for line in schedule) == 1


@pytest.mark.parametrize("variant", ["read_later", "operand_is_input", "twice"])
def test_operands_that_cannot_be_in_place_are_copied(variant):
    graph = _graph(**{variant: True})
    program = compile_graph(graph)
    homes = [home for _, _, home in _pack(program)]
    assert not all(homes)
    copied = sum(not h for h in homes)
    schedule = generate_cpu(program).schedule
    assert sum(" into " in line for line in schedule) == copied
    args = _inputs(graph)
    for got, want in zip(execute_plan(program.plan, args), interpret(graph, args)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", [{}, {"read_later": True}, {"operand_is_input": True},
                                     {"twice": True}, {"bits": 64}])
def test_compiled_collective_matches_the_interpreter(variant):
    graph = _graph(**variant)
    runner = Runner(graph, "cpu")  # the suite cross-checks the run against the interpreter
    args = _inputs(graph, 1)
    ok, outs = runner.run(args)
    assert ok
    for got, want in zip(outs, interpret(graph, args)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_collectives_are_never_merged_removed_or_reordered():
    assert PRIMITIVES["all_reduce"].ordered and not PRIMITIVES["all_reduce"].recomputable
    b = GraphBuilder("two")
    h = b.add_input(TensorType("int64", (5,)), "mpi", "hyper")
    x = b.add_input(TensorType("float32", (4,)), "x")
    y = b.add_input(TensorType("float32", (4,)), "y")
    first = b.emit("all_reduce", [h, y], {"handle_bits": 32})
    b.emit("all_reduce", [h, x], {"handle_bits": 32})  # nobody reads it: still a call
    same = b.emit("all_reduce", [h, y], {"handle_bits": 32})  # equal to the first: two calls
    graph = b.build([b.emit("add", [first, same])])
    assert cse(graph).count("all_reduce") == 3
    assert dce(graph).count("all_reduce") == 3
    fused = compile_graph(graph).fused
    calls = [n.region.nodes[0] for n in fused.nodes
             if n.op == "kernel" and n.attrs["kind"] == "collective"]
    originals = [n for n in graph.nodes if n.op == "all_reduce"]
    assert [c.inputs[1].type for c in calls] == [n.inputs[1].type for n in originals]
    assert len(calls) == 3
    # the order of the calls is the graph's (x's is second)
    operands = [dict(zip(n.region.inputs, n.inputs))[n.region.nodes[0].inputs[1]]
                for n in fused.nodes if n.op == "kernel" and n.attrs["kind"] == "collective"]
    assert operands == [y, x, y]


def test_handles_are_runtime_inputs_and_their_width_is_in_the_kernel_text():
    """Nothing cached holds a handle's value; the kernel text (its cache key) names the MPI
    library's handle width, so an object is never used with another kind of MPI."""
    texts = {}
    for bits in (32, 64):
        code = generate_cpu(compile_graph(_graph(bits=bits)))
        (kernel,) = [k for k in code.program.kernels if k.name.startswith("all_reduce")]
        texts[bits] = kernel.text
        assert f"all_reduce_h{bits}" in kernel.text
        assert code.program.inputs[0].name == "mpi"
        program_json = code.program.to_json()
        for value in (1140850688, 1275069450, 1476395011):  # MPICH's COMM_WORLD, FLOAT, SUM
            assert str(value) not in program_json
    assert texts[32] != texts[64]


def test_packed_layout_aligns_every_operand():
    types = [TensorType("float32", (3,)), TensorType("float32", ()), TensorType("float64", (17,))]
    offsets, total = packed_offsets(types)
    assert offsets == (0, 16, 32) and total == 49
    b = GraphBuilder("p")
    h = b.add_input(TensorType("int64", (5,)), "mpi")
    x = b.add_input(TensorType("float32", (3,)), "x")
    out = b.emit("all_reduce", [h, x, x], {"handle_bits": 32})
    (got,) = interpret(b.build([out]), [NO_COMM, np.arange(3, dtype=np.float32)])
    np.testing.assert_array_equal(got, [0, 1, 2] + [0] * 13 + [0, 1, 2])


def test_numba_compiles_the_same_collective_kernel(monkeypatch):
    """The reference compiler links MPI_Allreduce by name too (kernel_lang's intrinsic)."""
    pytest.importorskip("mpi4py")
    monkeypatch.setenv("FUSEGRAD_KERNEL_COMPILER", "numba")
    graph = _graph(read_later=True)
    ok, outs = Runner(graph, "cpu").run(_inputs(graph, 2))
    assert ok
    for got, want in zip(outs, interpret(graph, _inputs(graph, 2))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_program_json_round_trips_a_collective():
    program = generate_cpu(compile_graph(_graph())).program
    again = json.loads(program.to_json())
    assert any(e[4] == "collective" for e in again["entries"])
