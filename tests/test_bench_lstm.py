"""The benchmark's lstm workload (benchmarks/workloads.py) at its real sizes: the hand-written
NumPy LSTM's gradients against fusegrad's autodiff, and every installed contender's first
training steps against fusegrad's, as benchmarks/run.py's loss check does (but tighter).

Adam divides each gradient by its own running magnitude, so agreeing losses alone would miss a
gradient off by a positive factor; the gradients are compared directly as well.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

import fusegrad as fg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.contenders import Unavailable  # noqa: E402
from benchmarks.fusegrad_contender import Fusegrad, loss_function  # noqa: E402
from benchmarks.numpy_backprop import NumpyBackprop  # noqa: E402
from benchmarks.numpy_lstm import NumpyLSTM  # noqa: E402
from benchmarks.workloads import WORKLOADS  # noqa: E402

W = WORKLOADS["lstm"]
RTOL = 1e-4
STEPS = 3


def time_major(x, y):
    return np.ascontiguousarray(x.T), np.ascontiguousarray(y.T).reshape(-1)


def first_losses(contender):
    x, y = W.batch_data()
    contender.setup(W.init_params(), x, y)
    return [contender.loss_value(contender.step()) for _ in range(STEPS)]


@pytest.fixture(scope="module")
def fusegrad_losses():
    return first_losses(Fusegrad(W))


def test_the_workload_is_the_one_the_issue_asks_for():
    x, y = W.batch_data()
    assert x.shape == y.shape == (32, 32) and x.dtype == y.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])          # targets: the inputs shifted by one
    p = W.init_params()
    assert {k: v.shape for k, v in p.items()} == {
        "emb": (64, 64), "w_ih": (64, 512), "w_hh": (128, 512), "b_ih": (512,),
        "b_hh": (512,), "dec_w": (128, 64), "dec_b": (64,)}
    assert W.optimizer == "adam" and W.lr == 1e-3
    # every GEMM of the floor, by FLOPs: 3 over all T*B rows per weight (emb, hidden, decoder
    # forward, weight and input gradients) less the hidden products h0 @ w_hh's gradient
    T, B, E, H, V = 32, 32, 64, 128, 64
    flops = 2 * T * B * (3 * E * 4 * H + 3 * H * 4 * H + 3 * H * V) - 2 * B * 4 * H * H
    assert W.gemm_flops() == flops


def test_numpy_gradients_are_fusegrads():
    x, y = W.batch_data()
    ids, targets = time_major(x, y)
    p = W.init_params()
    rng = np.random.default_rng(3)   # non-zero biases, so every gradient path is exercised
    p["b_ih"] = (0.1 * rng.standard_normal(p["b_ih"].shape)).astype(np.float32)
    p["b_hh"] = (0.1 * rng.standard_normal(p["b_hh"].shape)).astype(np.float32)
    p["dec_b"] = (0.1 * rng.standard_normal(p["dec_b"].shape)).astype(np.float32)
    net = NumpyLSTM({k: v.copy() for k, v in p.items()}, W)
    loss = net.loss_and_grads(ids, targets)
    value, grads = fg.value_and_grad(loss_function(W))(p, ids, targets)
    assert loss == pytest.approx(float(value), rel=1e-5)
    for k in p:
        ref = np.asarray(grads[k])
        err = np.abs(net.grads[k] - ref).max() / np.abs(ref).max()
        assert err < 1e-4, (k, err)


def _check(losses, reference):
    assert np.all(np.isfinite(losses))
    np.testing.assert_allclose(losses, reference, rtol=RTOL)


def test_fusegrad_trains(fusegrad_losses):
    assert fusegrad_losses[0] == pytest.approx(np.log(64), rel=0.05)   # near uniform at first
    assert fusegrad_losses[-1] < fusegrad_losses[0]


def test_numpy_agrees_with_fusegrad(fusegrad_losses):
    _check(first_losses(NumpyBackprop(W)), fusegrad_losses)


def test_torch_eager_agrees_with_fusegrad(fusegrad_losses):
    from benchmarks.torch_contenders import TorchEager

    try:
        contender = TorchEager(W, "cpu")
    except Unavailable as e:
        pytest.skip(f"torch: {e}")
    _check(first_losses(contender), fusegrad_losses)


def test_jax_agrees_with_fusegrad(fusegrad_losses):
    from benchmarks.jax_contender import JaxJit

    try:
        contender = JaxJit(W)
    except Unavailable as e:
        pytest.skip(f"jax: {e}")
    _check(first_losses(contender), fusegrad_losses)
