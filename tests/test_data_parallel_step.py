"""A data-parallel train_step (comm=) in one process (MPI's singleton: no mpiexec): the options of
train_step through the gradient sum, against the same step without a communicator.
tests/test_distributed.py runs jobs of 2 processes."""
from __future__ import annotations

import numpy as np
import pytest

import fusegrad as fg

MPI = pytest.importorskip("mpi4py.MPI")


def loss_fn(p, x, y):
    h = fg.gelu(fg.layer_norm(x @ p["w1"] + p["b1"], p["g"], p["beta"]))
    return fg.cross_entropy(h @ p["w2"] + p["b2"], y)


def params(seed=0):
    r = np.random.default_rng(seed)
    return {"w1": (r.standard_normal((6, 16)) * 0.4).astype(np.float32),
            "b1": np.zeros(16, np.float32), "g": np.ones(16, np.float32),
            "beta": np.zeros(16, np.float32),
            "w2": (r.standard_normal((16, 3)) * 0.4).astype(np.float32),
            "b2": np.zeros(3, np.float32)}


def batch(seed=1, n=10):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, 6)).astype(np.float32), r.integers(0, 3, n)


def _compare(make_step, fn=loss_fn, steps=4, **kw):
    pa, pb = params(), params()
    plain = make_step(fn, **kw)
    dp = make_step(fn, comm=MPI.COMM_WORLD, **kw)
    for t in range(steps):
        x, y = batch(seed=t)
        la, lb = plain(pa, x, y), dp(pb, x, y)
        la, lb = (la[0], lb[0]) if isinstance(la, tuple) else (la, lb)
        np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-6)
    for k in pa:
        np.testing.assert_allclose(pb[k], pa[k], rtol=1e-5, atol=1e-6, err_msg=k)
    return plain, dp


@pytest.mark.parametrize("optimizer", [fg.optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
                                       fg.optim.AdamW(lr=1e-2, clip_norm=0.5),
                                       fg.optim.RMSProp(lr=1e-2, centered=True)],
                         ids=["sgd-nesterov", "adamw-clip", "rmsprop"])
def test_optimizers_match_the_plain_step(optimizer):
    _compare(lambda fn, **kw: fg.train_step(fn, optimizer, **kw))


@pytest.mark.parametrize("remat", ["cheap", "mincut"])
def test_remat_keeps_the_collective(remat):
    _, dp = _compare(lambda fn, **kw: fg.train_step(fn, fg.optim.Adam(lr=1e-2), remat=remat,
                                                    **kw))
    assert "all_reduce" in dp.ir("optimized")


def test_aux_and_a_frozen_parameter():
    def with_aux(p, x, y):
        loss = loss_fn(p, x, y)
        return loss, {"twice": loss * 2}

    def frozen(path, x):
        return "beta" not in path

    _compare(lambda fn, **kw: fg.train_step(fn, fg.optim.SGD(lr=0.1), has_aux=True,
                                            trainable=frozen, **kw), fn=with_aux)


def test_samples_weigh_the_loss_and_the_step_shows_its_collective():
    step = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1), comm=MPI.COMM_WORLD)
    p = params()
    x, y = batch()
    loss = step(p, x, y, samples=3)  # one process: the weight cancels out of the mean
    assert np.isfinite(loss)
    assert step.ir("step").count("= all_reduce[") == 1
    assert "summed over processes" in step.memory_plan()
    assert "all_reduce_h" in step.source()


def test_dropout_keys_fold_in_the_rank():
    from fusegrad.train import step_key

    assert step_key(3, 7) == step_key(3, 7, rank=0)
    keys = {int(step_key(3, 7, rank=r)) for r in range(8)}
    assert len(keys) == 8


def test_fit_needs_a_step_that_sums_over_the_processes():
    step = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1))
    with pytest.raises(ValueError, match="comm"):
        fg.fit(step, params(), [batch()], comm=MPI.COMM_WORLD, progress=False)


def test_a_non_finite_summed_gradient_skips_the_step():
    step = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1), comm=MPI.COMM_WORLD)
    p = params()
    x, y = batch()
    x[3, 2] = np.inf
    before = {k: v.copy() for k, v in p.items()}
    with pytest.raises((fg.NonFiniteLossError, fg.NonFiniteGradientError)):
        step(p, x, y)
    assert all(np.array_equal(before[k], p[k]) for k in p) and step.t == 0
