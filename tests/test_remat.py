"""remat="cheap": elementwise activations recomputed in the backward part where that lowers the
step's peak memory; results unchanged (interpreter and planned execution agree)."""
import numpy as np
import pytest

import fusegrad as fg
from fusegrad.compiler.passes.memory import execute_plan
from fusegrad.compiler.passes.remat import remat_cheap
from fusegrad.ir import interpret

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
