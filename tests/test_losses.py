"""Losses: fg.cross_entropy (ignore_index, label_smoothing, reduction), fg.nll_loss,
fg.binary_cross_entropy_with_logits and fg.huber_loss against PyTorch (values and gradients,
float64; skipped without torch) and finite differences (always), compiled on the default
target in fg.grad and fg.train_step, and their argument errors.

fusegrad puts the class axis last (logits (..., C), labels (...)); torch puts it at axis 1 for
inputs of more than two axes, so the torch references move it there."""
from __future__ import annotations

import numpy as np
import pytest

import fusegrad as fg

rng = np.random.default_rng(0)


def _torch():
    return pytest.importorskip("torch")


def _labels(shape, classes, ignore_index, seed=0):
    r = np.random.default_rng(seed)
    y = r.integers(0, classes, size=shape)
    if ignore_index is not None:
        y.ravel()[::3] = ignore_index  # every third target ignored
    return y


def _class_axis_1(t):
    """torch's layout: the class axis second (N, C, d1, ...)."""
    return t if t.dim() <= 2 else t.movedim(-1, 1)


def _torch_loss_and_grads(fn, arrays, out_weights=None):
    """fn(*tensors) and the gradient of sum(out * out_weights) (out itself when a scalar) with
    respect to every float array."""
    torch = _torch()
    ts = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    out = fn(*ts)
    total = out if out_weights is None else (out * torch.tensor(out_weights)).sum()
    total.backward()
    return out.detach().numpy(), [t.grad.numpy() if t.grad is not None else None for t in ts]


def _weights(shape):
    return np.cos(np.arange(int(np.prod(shape))) * 0.7).reshape(shape)


def _ours_loss_and_grads(fn, arrays, out_weights=None, target="interpret"):
    argnums = tuple(i for i, a in enumerate(arrays) if a.dtype.kind == "f")
    value = fn(*arrays)  # eagerly, on NumPy arrays
    total = fn if out_weights is None else (lambda *xs: fg.sum(fn(*xs) * out_weights))
    grads = fg.grad(total, argnums=argnums, target=target)(*arrays)
    return value, dict(zip(argnums, grads))


def _compare(ours, theirs, rtol=1e-10, atol=1e-12):
    (value, grads), (want, want_grads) = ours, theirs
    np.testing.assert_allclose(value, want, rtol=rtol, atol=atol)
    for i, g in grads.items():
        np.testing.assert_allclose(g, want_grads[i], rtol=rtol, atol=atol, err_msg=f"arg {i}")


# ---- cross_entropy and nll_loss --------------------------------------------------------------

SHAPES = [(6, 5), (2, 3, 4)]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("ignore_index", [None, -100, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cross_entropy_matches_torch(shape, ignore_index, label_smoothing, reduction):
    torch = _torch()
    logits = rng.standard_normal(shape) * 2
    labels = _labels(shape[:-1], shape[-1], ignore_index)
    kw = dict(label_smoothing=label_smoothing, reduction=reduction)
    w = _weights(shape[:-1]) if reduction == "none" else None
    ours = _ours_loss_and_grads(
        lambda z, y: fg.cross_entropy(z, y, ignore_index=ignore_index, **kw), [logits, labels], w)
    theirs = _torch_loss_and_grads(
        lambda z, y: torch.nn.functional.cross_entropy(
            _class_axis_1(z), y, ignore_index=-100 if ignore_index is None else ignore_index,
            **kw), [logits, labels], w)
    _compare(ours, theirs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_cross_entropy_probability_targets_match_torch(label_smoothing, reduction):
    torch = _torch()
    logits = rng.standard_normal((2, 3, 4))
    probs = np.exp(rng.standard_normal((2, 3, 4)))
    probs /= probs.sum(-1, keepdims=True)
    kw = dict(label_smoothing=label_smoothing, reduction=reduction)
    w = _weights((2, 3)) if reduction == "none" else None
    ours = _ours_loss_and_grads(lambda z, p: fg.cross_entropy(z, p, **kw), [logits, probs], w)
    theirs = _torch_loss_and_grads(lambda z, p: torch.nn.functional.cross_entropy(
        _class_axis_1(z), _class_axis_1(p), **kw), [logits, probs], w)
    _compare(ours, theirs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [None, -1, 0])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_nll_loss_matches_torch(shape, ignore_index, reduction):
    torch = _torch()
    logits = rng.standard_normal(shape)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = _labels(shape[:-1], shape[-1], ignore_index, seed=1)
    w = _weights(shape[:-1]) if reduction == "none" else None
    ours = _ours_loss_and_grads(
        lambda lp, y: fg.nll_loss(lp, y, ignore_index=ignore_index, reduction=reduction),
        [log_probs, labels], w)
    theirs = _torch_loss_and_grads(lambda lp, y: torch.nn.functional.nll_loss(
        _class_axis_1(lp), y, ignore_index=-100 if ignore_index is None else ignore_index,
        reduction=reduction), [log_probs, labels], w)
    _compare(ours, theirs)


def test_nll_loss_ignores_minus_infinity_at_classes_not_picked():
    with np.errstate(divide="ignore"):
        log_probs = np.log(np.array([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]]))
    labels = np.array([1, 2])
    want = -(np.log(0.5) + np.log(0.75)) / 2
    np.testing.assert_allclose(fg.nll_loss(log_probs, labels), want)
    value, grad = fg.value_and_grad(lambda lp: fg.nll_loss(lp, labels))(log_probs)
    np.testing.assert_allclose(value, want)
    np.testing.assert_array_equal(grad, [[0, -0.5, 0], [0, 0, -0.5]])


def test_class_losses_finite_differences():
    logits, labels = rng.standard_normal((5, 4)), np.array([0, 3, -1, 1, -1])
    fg.check_grads(lambda z: fg.cross_entropy(z, labels, ignore_index=-1, label_smoothing=0.1),
                   (logits,))
    fg.check_grads(lambda z: fg.sum(fg.cross_entropy(z, np.abs(labels), reduction="none")
                                    * _weights(5)), (logits,))
    fg.check_grads(lambda z: fg.nll_loss(fg.log_softmax(z), labels, ignore_index=-1,
                                         reduction="sum"), (logits,), order=2)


def test_ignored_labels_do_not_trip_the_label_check_but_others_do():
    logits = rng.standard_normal((4, 3)).astype(np.float32)
    f = fg.jit(lambda z, y: fg.cross_entropy(z, y, ignore_index=-100))
    ok = np.array([2, -100, 0, -100])
    want = fg.cross_entropy(logits, ok, ignore_index=-100)  # eager: the same check
    np.testing.assert_allclose(f(logits, ok), want, rtol=1e-6)
    for bad in ([2, -100, 3, 0], [2, -1, 0, 0]):  # 3 is out of range, -1 is not ignore_index
        with pytest.raises(fg.IndexOutOfRangeError, match="check_index"):
            f(logits, np.array(bad))
    with pytest.raises(fg.IndexOutOfRangeError):  # without ignore_index, -100 is out of range
        fg.jit(lambda z, y: fg.cross_entropy(z, y))(logits, ok)
    g = fg.jit(lambda lp, y: fg.nll_loss(lp, y, ignore_index=7))
    g(logits, np.array([7, 7, 0, 2]))
    with pytest.raises(fg.IndexOutOfRangeError):
        g(logits, np.array([7, 3, 0, 2]))


def test_every_target_ignored_gives_nan_as_torch():
    logits = rng.standard_normal((3, 4))
    labels = np.full(3, -100)
    assert np.isnan(fg.cross_entropy(logits, labels, ignore_index=-100))
    assert fg.cross_entropy(logits, labels, ignore_index=-100, reduction="sum") == 0
    torch = _torch()
    assert torch.isnan(torch.nn.functional.cross_entropy(torch.tensor(logits),
                                                         torch.tensor(labels)))


def test_default_cross_entropy_is_unchanged():
    """Today's behaviour stays the default: mean over every label, all of them checked."""
    logits, labels = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    np.testing.assert_allclose(fg.cross_entropy(logits, labels),
                               -logp[np.arange(5), labels].mean(), rtol=1e-12)
    g = fg.jit(lambda z, y: fg.cross_entropy(z, y)).trace(logits, labels).graph
    assert g.count("check_index") == 1 and g.count("select") == 0 and g.count("ne") == 0


# ---- binary cross-entropy with logits and huber ----------------------------------------------

BCE_CASES = {
    "plain": {},
    "weight": {"weight": np.array([0.5, 2.0, 1.0])},
    "pos_weight": {"pos_weight": np.array([3.0, 0.5, 1.0])},
    "both-sum": {"weight": np.array([[2.0], [1.0], [0.5], [1.5]]),
                 "pos_weight": np.array([3.0, 0.5, 1.0]), "reduction": "sum"},
    "none": {"pos_weight": np.array([3.0, 0.5, 1.0]), "reduction": "none"},
}


@pytest.mark.parametrize("case", BCE_CASES)
def test_binary_cross_entropy_with_logits_matches_torch(case):
    torch = _torch()
    kw = BCE_CASES[case]
    logits = rng.standard_normal((4, 3)) * 3
    logits[0] = [60.0, -60.0, 0.0]  # far out and at 0: stable, and the gradient at 0 as torch
    targets = rng.uniform(size=(4, 3))
    targets[1] = [0.0, 1.0, 0.5]
    w = _weights((4, 3)) if kw.get("reduction") == "none" else None
    ours = _ours_loss_and_grads(
        lambda x, t: fg.binary_cross_entropy_with_logits(x, t, **kw), [logits, targets], w)
    tkw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    theirs = _torch_loss_and_grads(
        lambda x, t: torch.nn.functional.binary_cross_entropy_with_logits(x, t, **tkw),
        [logits, targets], w)
    _compare(ours, theirs)
    assert np.all(np.isfinite(ours[0]))


@pytest.mark.parametrize("delta", [1.0, 0.3, 2.5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_huber_loss_matches_torch(delta, reduction):
    torch = _torch()
    pred, target = rng.standard_normal((3, 5)) * 2, rng.standard_normal((3, 5))
    pred[0, 0] = target[0, 0] + delta  # exactly at the boundary
    pred[0, 1] = target[0, 1]  # d = 0
    w = _weights((3, 5)) if reduction == "none" else None
    ours = _ours_loss_and_grads(
        lambda p, t: fg.huber_loss(p, t, delta, reduction), [pred, target], w)
    theirs = _torch_loss_and_grads(lambda p, t: torch.nn.functional.huber_loss(
        p, t, reduction=reduction, delta=delta), [pred, target], w)
    _compare(ours, theirs)


def test_regression_losses_finite_differences():
    x, t = rng.standard_normal((4, 3)) * 2, rng.uniform(size=(4, 3))
    fg.check_grads(lambda x, t: fg.binary_cross_entropy_with_logits(
        x, t, pos_weight=np.array([2.0, 1.0, 0.5])), (x, t), order=2)
    fg.check_grads(lambda p, t: fg.huber_loss(p, t, delta=0.7, reduction="sum"), (x, t))


# ---- compiled, inside fg.grad and fg.train_step ----------------------------------------------


def _model_loss(p, x, y, y_bin, y_reg):
    """Three heads on one hidden layer: every new loss at once."""
    h = fg.tanh(x @ p["w"] + p["b"])                          # (B, T, H)
    logits = h @ p["cls"]                                     # (B, T, C), classes last
    binary = h @ p["bin"]                                     # (B, T, 2)
    reg = h @ p["reg"]                                        # (B, T, 1)
    return (fg.cross_entropy(logits, y, ignore_index=-100, label_smoothing=0.1)
            + 0.5 * fg.nll_loss(fg.log_softmax(logits), y, ignore_index=-100, reduction="sum")
            / y.size
            + fg.binary_cross_entropy_with_logits(binary, y_bin, pos_weight=np.array([2.0, 1.0]))
            + fg.huber_loss(reg[..., 0], y_reg, delta=0.5))


def _torch_model_loss(torch, p, x, y, y_bin, y_reg):
    F = torch.nn.functional
    h = torch.tanh(x @ p["w"] + p["b"])
    logits = h @ p["cls"]
    return (F.cross_entropy(logits.movedim(-1, 1), y, ignore_index=-100, label_smoothing=0.1)
            + 0.5 * F.nll_loss(torch.log_softmax(logits, -1).movedim(-1, 1), y,
                               ignore_index=-100, reduction="sum") / y.numel()
            + F.binary_cross_entropy_with_logits(h @ p["bin"], y_bin,
                                                 pos_weight=torch.tensor([2.0, 1.0],
                                                                         dtype=x.dtype))
            + F.huber_loss((h @ p["reg"])[..., 0], y_reg, delta=0.5))


def _model_data(dtype):
    r = np.random.default_rng(5)
    p = {"w": r.standard_normal((3, 8)) * 0.5, "b": r.standard_normal(8) * 0.1,
         "cls": r.standard_normal((8, 4)) * 0.5, "bin": r.standard_normal((8, 2)) * 0.5,
         "reg": r.standard_normal((8, 1)) * 0.5}
    x = r.standard_normal((2, 5, 3))
    y = _labels((2, 5), 4, -100, seed=2)
    y_bin = (r.uniform(size=(2, 5, 2)) > 0.5).astype(np.float64)
    y_reg = r.standard_normal((2, 5))
    cast = lambda a: a.astype(dtype)  # noqa: E731
    return {k: cast(v) for k, v in p.items()}, cast(x), y, cast(y_bin), cast(y_reg)


def test_losses_compiled_gradients_match_torch():
    torch = _torch()
    p, x, y, y_bin, y_reg = _model_data(np.float64)
    loss, grads = fg.value_and_grad(_model_loss)(p, x, y, y_bin, y_reg)  # compiled: cpu
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    want = _torch_model_loss(torch, tp, torch.tensor(x), torch.tensor(y), torch.tensor(y_bin),
                             torch.tensor(y_reg))
    want.backward()
    np.testing.assert_allclose(loss, want.item(), rtol=1e-10)
    for k in p:
        np.testing.assert_allclose(grads[k], tp[k].grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=k)


def test_losses_in_a_train_step_update_like_torch_sgd():
    p, x, y, y_bin, y_reg = _model_data(np.float32)
    fg.check_grads(_model_loss, _model_data(np.float64))
    before = {k: v.copy() for k, v in p.items()}
    step = fg.train_step(_model_loss, fg.optim.SGD(lr=0.1))
    first = float(step(p, x, y, y_bin, y_reg))
    after_first = {k: v.copy() for k, v in p.items()}
    losses = [float(step(p, x, y, y_bin, y_reg)) for _ in range(20)]
    assert losses[-1] < first

    torch = _torch()
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in before.items()}
    want = _torch_model_loss(torch, tp, torch.tensor(x), torch.tensor(y), torch.tensor(y_bin),
                             torch.tensor(y_reg))
    want.backward()
    np.testing.assert_allclose(first, want.item(), rtol=1e-5)
    for k in p:
        np.testing.assert_allclose(after_first[k], before[k] - 0.1 * tp[k].grad.numpy(),
                                   rtol=1e-5, atol=1e-6, err_msg=k)


# ---- argument errors -------------------------------------------------------------------------

Z, Y = rng.standard_normal((4, 3)), np.array([0, 2, 1, 1])

ERRORS = [
    (lambda: fg.cross_entropy(Z, Y, reduction="avg"), ValueError,
     r"cross_entropy: reduction must be 'mean', 'sum' or 'none', got 'avg'"),
    (lambda: fg.cross_entropy(Z, Y, label_smoothing=1.5), ValueError,
     r"label_smoothing must be a number in \[0, 1\], got 1.5"),
    (lambda: fg.cross_entropy(Z, Y, ignore_index=0.5), TypeError,
     r"ignore_index must be an int or None, got 0.5"),
    (lambda: fg.cross_entropy(Z, np.full((4, 3), 1 / 3), ignore_index=-100), ValueError,
     r"ignore_index applies to integer class labels only"),
    (lambda: fg.nll_loss(Z, Y.astype(np.float64)), TypeError,
     r"nll_loss: labels must be integer class indices, got float64"),
    (lambda: fg.nll_loss(Z, Y[:2]), ValueError,
     r"nll_loss: integer labels must have shape \(4,\) \(log_probs shape \(4, 3\) without"),
    (lambda: fg.nll_loss(Z, Y, reduction=None), ValueError, r"nll_loss: reduction must be"),
    (lambda: fg.binary_cross_entropy_with_logits(Z, Z[:, :2]), ValueError,
     r"binary_cross_entropy_with_logits: logits shape \(4, 3\) and targets shape \(4, 2\) "
     r"must match"),
    (lambda: fg.binary_cross_entropy_with_logits(Z, Z, pos_weight=np.ones(4)), ValueError,
     r"pos_weight of shape \(4,\) must broadcast to the logits' shape \(4, 3\)"),
    (lambda: fg.binary_cross_entropy_with_logits(Z, Z, weight=np.ones((2, 4, 3))), ValueError,
     r"weight of shape \(2, 4, 3\) must broadcast"),
    (lambda: fg.huber_loss(Z, Z, delta=0), ValueError, r"huber_loss: delta must be a number > 0"),
    (lambda: fg.huber_loss(Z, Z[0]), ValueError, r"huber_loss: pred shape \(4, 3\) and target "
                                                 r"shape \(3,\) must match"),
    (lambda: fg.huber_loss(Z, Z, reduction="max"), ValueError, r"huber_loss: reduction must"),
]


@pytest.mark.parametrize("call,exc,pattern", ERRORS, ids=[p for _, _, p in ERRORS])
def test_bad_arguments(call, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        call()
    assert "test_losses.py:" in str(info.value)
