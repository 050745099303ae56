"""fg.batch_norm and fg.assign against torch: the functional form, and a ResNet block trained
step for step with its running statistics updated inside the compiled step.

The model is torchvision's BasicBlock (torchvision/models/resnet.py: conv3x3 - BatchNorm2d -
ReLU - conv3x3 - BatchNorm2d, plus the identity, ReLU), with a stem and a linear head, written
as it is in torch, the BatchNorm2d buffers (running_mean, running_var, num_batches_tracked) as
leaves of the parameters, with no host-side workaround.
"""
import numpy as np
import pytest

import fusegrad as fg
from fusegrad.compiler.symbolic import TraceError
from fusegrad.ir.types import ShapeError
from tree_checks import assert_tree_bitwise, tree_copy

try:
    import torch
    F = torch.nn.functional
except ImportError:  # the NumPy and finite-difference checks still run
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


@pytest.fixture(autouse=True)
def torch_float64():
    if torch is None:
        yield
        return
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(saved)


# ---- without torch: NumPy's formulas and finite differences ----------------------------------


def test_training_matches_the_formulas_and_finite_differences():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 3, 2, 2)) * 3 + 1
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = np.zeros(3), np.ones(3)
    y = fg.jit(lambda x, w, b, s: fg.batch_norm(x, w, b, s["m"], s["v"], momentum=0.3))(
        x, w, b, {"m": rm, "v": rv})
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
    want = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * w[:, None, None] \
        + b[:, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-12)
    np.testing.assert_allclose(rm, 0.3 * mean, rtol=1e-12)  # written after the call
    np.testing.assert_allclose(rv, 0.7 + 0.3 * x.var((0, 2, 3), ddof=1), rtol=1e-12)
    up = rng.standard_normal(x.shape)
    fg.check_grads(lambda x, w, b: fg.sum(fg.batch_norm(x, w, b) * up), (x, w, b))


# ---- the functional form ---------------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_training_forward_gradient_and_running_statistics_match_torch(shape, affine):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 2 + 0.5
    c = shape[1]
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.random(c) + 0.5
    up = rng.standard_normal(shape)  # a cotangent that is not uniform

    def loss(p, x):
        y = fg.batch_norm(x, p.get("w"), p.get("b"), p["rm"], p["rv"], momentum=0.2)
        return fg.sum(y * up)

    p = {"rm": rm.copy(), "rv": rv.copy()}
    if affine:
        p.update(w=w, b=b)
    grads = fg.grad(loss, argnums=(0, 1))(p, x)

    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True) if affine else None
    tb = torch.tensor(b, requires_grad=True) if affine else None
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    y = F.batch_norm(tx, trm, trv, tw, tb, training=True, momentum=0.2)
    (y * torch.tensor(up)).sum().backward()
    np.testing.assert_allclose(p["rm"], trm.numpy(), rtol=1e-12)  # written in place by fg.grad
    np.testing.assert_allclose(p["rv"], trv.numpy(), rtol=1e-12)
    np.testing.assert_allclose(grads[1], tx.grad.numpy(), rtol=1e-9, atol=1e-11)
    if affine:
        np.testing.assert_allclose(grads[0]["w"], tw.grad.numpy(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(grads[0]["b"], tb.grad.numpy(), rtol=1e-9, atol=1e-11)
    assert grads[0]["rm"] is None and grads[0]["rv"] is None  # buffers: no gradient


@needs_torch
def test_evaluation_uses_the_running_statistics():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 2, 2))
    w, b, rm, rv = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3), \
        rng.random(3) + 0.5
    got = fg.jit(lambda x: fg.batch_norm(x, w, b, rm, rv, training=False))(x)
    want = F.batch_norm(torch.tensor(x), torch.tensor(rm), torch.tensor(rv), torch.tensor(w),
                        torch.tensor(b), training=False)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)


def test_eager_batch_norm_updates_numpy_running_statistics_at_once():
    x = np.arange(8.0).reshape(4, 2)
    rm, rv = np.zeros(2), np.ones(2)
    fg.batch_norm(x, running_mean=rm, running_var=rv, momentum=0.5)
    np.testing.assert_allclose(rm, 0.5 * x.mean(0))
    np.testing.assert_allclose(rv, 0.5 + 0.5 * x.var(0, ddof=1))


@pytest.mark.parametrize("call, error, message", [
    (lambda x: fg.batch_norm(x[0]), ShapeError, r"batch_norm: x must be \(N, C\)"),
    (lambda x: fg.batch_norm(x, np.ones(3)), ShapeError, r"weight must have shape \(2,\)"),
    (lambda x: fg.batch_norm(x[:1]), ValueError, "more than one value per channel"),
    (lambda x: fg.batch_norm(x, training=False), ValueError, "pass running_mean and running_var"),
    (lambda x: fg.batch_norm(x, momentum=None), ValueError, "momentum=None, is not supported"),
])
def test_bad_batch_norm_calls_say_what_is_wrong(call, error, message):
    with pytest.raises(error, match=message):
        call(np.ones((4, 2)))


def test_assign_needs_an_argument_and_one_value():
    with pytest.raises(TraceError, match="must be an argument"):
        fg.jit(lambda x: fg.assign(x * 2, x))(np.ones(2))
    with pytest.raises(TraceError, match="assigned twice"):
        fg.jit(lambda x: (fg.assign(x, x * 2), fg.assign(x, x * 3))[0])(np.ones(2))
    with pytest.raises(ShapeError, match=r"fg.assign: x is f64\[2\], the value f64\[3\]"):
        fg.jit(lambda x: fg.assign(x, fg.concatenate([x, x[:1]])))(np.ones(2))


# ---- torchvision's BasicBlock, trained -------------------------------------------------------


def _bn(c):
    return {"weight": np.ones(c), "bias": np.zeros(c), "running_mean": np.zeros(c),
            "running_var": np.ones(c), "num_batches_tracked": np.zeros((), np.int64)}


def resnet_params(seed=0, c=4, classes=3):
    rng = np.random.default_rng(seed)
    conv = lambda o, i: rng.standard_normal((o, i, 3, 3)) * np.sqrt(2 / (9 * i))  # noqa: E731
    return {"stem": conv(c, 2), "bn0": _bn(c),
            "block": {"conv1": conv(c, c), "bn1": _bn(c), "conv2": conv(c, c), "bn2": _bn(c)},
            "fc": {"weight": rng.standard_normal((classes, c)) * 0.3, "bias": np.zeros(classes)}}


def bn(x, p, training=True):
    """nn.BatchNorm2d.forward: the batch count is a buffer too."""
    if training:
        fg.assign(p["num_batches_tracked"], p["num_batches_tracked"] + 1)
    return fg.batch_norm(x, p["weight"], p["bias"], p["running_mean"], p["running_var"],
                         training=training)


def resnet(p, x, training=True):
    h = fg.relu(bn(fg.conv2d(x, p["stem"], padding=1), p["bn0"], training))
    blk = p["block"]
    out = fg.relu(bn(fg.conv2d(h, blk["conv1"], padding=1), blk["bn1"], training))  # BasicBlock
    out = bn(fg.conv2d(out, blk["conv2"], padding=1), blk["bn2"], training)
    h = fg.relu(out + h)
    h = fg.mean(h, axis=(2, 3))  # AdaptiveAvgPool2d(1) + flatten
    return h @ p["fc"]["weight"].T + p["fc"]["bias"]


def TorchResNet(p):  # noqa: N802  (a class, defined only where torch is)
    """The same network as `resnet`, in torch, its weights copied from `p`."""

    class TorchResNet(torch.nn.Module):
        def __init__(self, p):
            super().__init__()
            c = p["stem"].shape[0]
            conv = lambda i, o: torch.nn.Conv2d(i, o, 3, padding=1, bias=False)  # noqa: E731
            self.stem, self.bn0 = conv(p["stem"].shape[1], c), torch.nn.BatchNorm2d(c)
            self.conv1, self.bn1 = conv(c, c), torch.nn.BatchNorm2d(c)
            self.conv2, self.bn2 = conv(c, c), torch.nn.BatchNorm2d(c)
            self.fc = torch.nn.Linear(c, p["fc"]["weight"].shape[0])
            with torch.no_grad():
                self.stem.weight.copy_(torch.tensor(p["stem"]))
                self.conv1.weight.copy_(torch.tensor(p["block"]["conv1"]))
                self.conv2.weight.copy_(torch.tensor(p["block"]["conv2"]))
                self.fc.weight.copy_(torch.tensor(p["fc"]["weight"]))
                self.fc.bias.copy_(torch.tensor(p["fc"]["bias"]))

        def forward(self, x):
            h = F.relu(self.bn0(self.stem(x)))
            out = F.relu(self.bn1(self.conv1(h)))
            h = F.relu(self.bn2(self.conv2(out)) + h)
            return self.fc(h.mean(dim=(2, 3)))

    return TorchResNet(p)


def _torch_bn(p, module):
    return {"weight": module.weight, "bias": module.bias, "running_mean": module.running_mean,
            "running_var": module.running_var, "num_batches_tracked": module.num_batches_tracked}


@needs_torch
def test_resnet_block_with_batch_norm_trains_like_torch():
    """Parameters and running statistics equal torch's after several SGD-momentum steps, and
    the evaluation forward (running statistics) agrees too."""
    p = resnet_params()
    model = TorchResNet(p)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = fg.train_step(lambda p, x, y: fg.cross_entropy(resnet(p, x), y),
                         fg.optim.SGD(0.05, momentum=0.9))
    rng = np.random.default_rng(3)
    for _ in range(4):
        x, y = rng.standard_normal((6, 2, 5, 5)), rng.integers(0, 3, 6)
        loss = step(p, x, y)
        opt.zero_grad()
        want = F.cross_entropy(model(torch.tensor(x)), torch.tensor(y))
        want.backward()
        opt.step()
        np.testing.assert_allclose(loss, want.item(), rtol=1e-10)
    pairs = [(p["bn0"], model.bn0), (p["block"]["bn1"], model.bn1), (p["block"]["bn2"], model.bn2)]
    for ours, theirs in pairs:
        for k, v in _torch_bn(ours, theirs).items():
            np.testing.assert_allclose(ours[k], v.detach().numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=k)
    np.testing.assert_allclose(p["block"]["conv2"], model.conv2.weight.detach().numpy(),
                               rtol=1e-9, atol=1e-12)
    assert int(p["bn0"]["num_batches_tracked"]) == 4
    # buffers carry no optimizer state: only the 11 trained leaves (not the 9 buffers) do
    assert sum(v is not None for v in fg.pytree.flatten(step.state["momentum"])[0]) == 11
    model.eval()
    x = rng.standard_normal((2, 2, 5, 5))
    got = fg.jit(lambda p, x: resnet(p, x, training=False))(p, x)
    np.testing.assert_allclose(got, model(torch.tensor(x)).detach().numpy(), rtol=1e-9)


def test_a_skipped_step_leaves_the_running_statistics_as_they_were():
    """The buffers are written with the update: all or nothing."""
    p = resnet_params()
    step = fg.train_step(lambda p, x, y: fg.cross_entropy(resnet(p, x), y),
                         fg.optim.SGD(0.05, momentum=0.9))
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 2, 5, 5)), rng.integers(0, 3, 6)
    step(p, x, y)
    before = tree_copy(p)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(fg.NonFiniteLossError):
        step(p, x, y)
    assert_tree_bitwise(p, before)


@needs_torch
def test_grad_of_a_model_with_buffers_and_integer_leaves():
    """fg.grad accepts the BatchNorm2d buffers (float running statistics, int64 batch counts)
    among the parameters and returns None for them; the running statistics move as in torch."""
    p = resnet_params()
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 2, 5, 5)), rng.integers(0, 3, 6)
    g = fg.grad(lambda p, x, y: fg.cross_entropy(resnet(p, x), y))(p, x, y)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert g["bn0"][name] is None and g["block"]["bn2"][name] is None
    model = TorchResNet(resnet_params())
    F.cross_entropy(model(torch.tensor(x)), torch.tensor(y)).backward()
    np.testing.assert_allclose(g["block"]["conv1"], model.conv1.weight.grad.numpy(), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(g["bn0"]["weight"], model.bn0.weight.grad.numpy(), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(p["bn0"]["running_var"], model.bn0.running_var.numpy(),
                               rtol=1e-12)
    assert int(p["bn0"]["num_batches_tracked"]) == 1
