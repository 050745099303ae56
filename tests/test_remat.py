"""remat="cheap": elementwise activations recomputed in the backward part where that lowers the
step's peak memory; remat="mincut": the forward values the backward part reads chosen by a
minimum cut. Results unchanged (interpreter and planned execution agree)."""
import numpy as np
import pytest

import fusegrad as fg
from fusegrad.compiler.passes.memory import execute_plan
from fusegrad.compiler.passes.remat import (recomputed_nodes, remat_cheap, remat_min_cut,
                                             saved_by_min_cut)
from fusegrad.ir import interpret
from fusegrad.ir.ops import PRIMITIVES

rng = np.random.default_rng(0)
PARAMS = {"w0": rng.standard_normal((16, 64)).astype(np.float32), "b0": np.zeros(64, np.float32),
          "w1": rng.standard_normal((64, 64)).astype(np.float32), "b1": np.zeros(64, np.float32),
          "w2": rng.standard_normal((64, 10)).astype(np.float32), "b2": np.zeros(10, np.float32)}
X = rng.standard_normal((32, 16)).astype(np.float32)
Y = rng.integers(0, 10, 32)


def ln_gelu_loss(p, x, y):
    h = x
    for i in range(2):
        h = fg.gelu(fg.layer_norm(h @ p[f"w{i}"] + p[f"b{i}"]), approximate="tanh")
    return fg.cross_entropy(h @ p["w2"] + p["b2"], y)


def compiled(remat):
    step = fg.train_step(ln_gelu_loss, fg.optim.Adam(0.01), target="interpret", remat=remat)
    step({k: v.copy() for k, v in PARAMS.items()}, X, Y)
    return step, step._runner(step._last).program


def test_cheap_remat_lowers_the_peak_and_keeps_the_results():
    _, plain = compiled("none")
    step, remat = compiled("cheap")
    assert remat.plan.peak_bytes < plain.plan.peak_bytes
    inputs = [np.asarray(a) for a in step._last_inputs]
    want = interpret(step._last.graph, inputs)
    for got in (interpret(remat.fused, inputs), execute_plan(remat.plan, inputs)):
        for a, b in zip(want, got):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_recomputed_nodes_are_backward_copies_of_forward_nodes():
    _, plain = compiled("none")
    graph = remat_cheap(plain.optimized)
    forward = {(n.op, n.inputs, n.attrs) for n in graph.nodes if n.part == "forward"}
    copies = [n for n in graph.nodes if n.part != "forward" and (n.op, n.inputs, n.attrs) in forward]
    assert copies and all(n.op not in ("matmul", "sum", "max") for n in copies)
    assert len(graph.nodes) == len(plain.optimized.nodes) + len(copies)


def test_remat_is_checked():
    with pytest.raises(ValueError, match="remat"):
        fg.train_step(ln_gelu_loss, fg.optim.SGD(0.1), remat="all")


# ---- remat="mincut" ----------------------------------------------------------------------------


def forward_values_read_by_backward(graph):
    producer = {v: n for n in graph.nodes for v in n.outputs}
    return {v for n in graph.nodes if n.part != "forward" for v in n.inputs
            if v in producer and producer[v].part == "forward" and producer[v].op != "constant"}


def test_min_cut_saves_less_and_keeps_the_results():
    """Per LayerNorm+GELU layer the backward part reads the centred input, 1/std and the GELU
    output (the next GEMM's operand) instead of seven elementwise intermediates; the results
    are bitwise those of the graph without recomputation (the same float32 operations)."""
    _, plain = compiled("none")
    step, cut = compiled("mincut")
    saved_plain = forward_values_read_by_backward(plain.optimized)
    saved_cut = forward_values_read_by_backward(cut.optimized)
    bytes_of = lambda vs: sum(v.type.nbytes for v in vs)  # noqa: E731
    assert bytes_of(saved_cut) < 0.5 * bytes_of(saved_plain)
    assert cut.plan.peak_bytes < plain.plan.peak_bytes
    inputs = [np.asarray(a) for a in step._last_inputs]
    want = interpret(plain.optimized, inputs)
    for got in (interpret(cut.optimized, inputs), execute_plan(cut.plan, inputs)):
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)


def test_min_cut_saves_every_gemm_operand_and_recomputes_only_elementwise_nodes():
    _, plain = compiled("none")
    graph = remat_min_cut(plain.optimized)
    saved = saved_by_min_cut(plain.optimized)
    producer = {v: n for n in graph.nodes for v in n.outputs}
    for n in graph.nodes:
        if n.part != "forward" and n.op == "matmul":
            for v in n.inputs:
                p = producer.get(v)
                assert p is None or p.part != "forward" or v in saved or p.op == "constant"
    copies = recomputed_nodes(graph)
    assert copies and all(PRIMITIVES[n.op].recomputable for n in copies)


def test_min_cut_forward_kernels_write_less():
    """The recomputed copies run in backward kernels, not fused back into the forward ones
    (which would write the values they were meant not to save)."""
    def forward_bytes(program):
        return sum(v.type.nbytes for k in program.fused.nodes
                   if k.op == "kernel" and k.part == "forward" for v in k.outputs)
    _, plain = compiled("none")
    _, cut = compiled("mincut")
    assert forward_bytes(cut) < 0.7 * forward_bytes(plain)


def test_min_cut_trains_like_no_remat_on_the_cpu():
    losses = {}
    for remat in ("none", "mincut"):
        p = {k: v.copy() for k, v in PARAMS.items()}
        step = fg.train_step(ln_gelu_loss, fg.optim.Adam(0.01), target="cpu", remat=remat)
        losses[remat] = [float(step(p, X, Y)) for _ in range(3)]
    np.testing.assert_allclose(losses["mincut"], losses["none"], rtol=1e-5)
