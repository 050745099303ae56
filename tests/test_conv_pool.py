"""fg.conv1d (batched (N, C, L) and unbatched (C, L)), fg.conv2d on an unbatched (C, H, W)
input and fg.adaptive_avg_pool2d, against PyTorch (values and gradients, float64; skipped
without torch) and finite differences, compiled on the default target, and their errors."""
from __future__ import annotations

import numpy as np
import pytest

import fusegrad as fg

rng = np.random.default_rng(0)


def _torch():
    return pytest.importorskip("torch")


def _weights(shape):
    return np.cos(np.arange(int(np.prod(shape))) * 0.3).reshape(shape)


def _check_against_torch(ours, theirs, arrays, kwargs_np, kwargs_torch, compiled=False):
    """ours(*arrays, **kwargs_np) and the gradients of sum(out * w) against torch's."""
    torch = _torch()
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    want = theirs(*ts, **kwargs_torch)
    w = _weights(tuple(want.shape))
    (want * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(ours(*arrays, **kwargs_np), want.detach().numpy(), rtol=1e-10,
                               atol=1e-12)
    target = None if compiled else "interpret"
    grads = fg.grad(lambda *xs: fg.sum(ours(*xs, **kwargs_np) * w),
                    argnums=tuple(range(len(arrays))), target=target)(*arrays)
    for i, (g, t) in enumerate(zip(grads, ts)):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=f"arg {i}")


CONV1D = [
    dict(),
    dict(stride=2),
    dict(padding=2),
    dict(stride=3, padding=1, bias=True),
    dict(stride=(2,), padding=(1,), bias=True),  # torch also takes 1-tuples
]


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("case", range(len(CONV1D)))
def test_conv1d_matches_torch(case, unbatched):
    torch = _torch()
    kw = dict(CONV1D[case])
    x = rng.standard_normal((3, 11) if unbatched else (2, 3, 11))
    w = rng.standard_normal((4, 3, 3))
    arrays = [x, w] + ([rng.standard_normal(4)] if kw.pop("bias", False) else [])

    def ours(x, w, b=None, **kw):
        return fg.conv1d(x, w, bias=b, **kw)

    def theirs(x, w, b=None, **kw):
        return torch.nn.functional.conv1d(x, w, b, **kw)

    _check_against_torch(ours, theirs, arrays, kw, kw, compiled=case == 3)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(stride=(1, 2),
                                                                         padding=(2, 0))],
                         ids=str)
def test_conv2d_unbatched_matches_torch(kw):
    torch = _torch()
    x, w = rng.standard_normal((3, 7, 6)), rng.standard_normal((2, 3, 3, 2))
    b = rng.standard_normal(2)
    _check_against_torch(lambda x, w, b, **k: fg.conv2d(x, w, bias=b, **k),
                         lambda x, w, b, **k: torch.nn.functional.conv2d(x, w, b, **k),
                         [x, w, b], kw, kw, compiled=not kw)


ADAPTIVE = [((2, 3, 8, 6), 1), ((2, 3, 8, 6), (2, 3)), ((2, 3, 8, 6), (4, None)),
            ((2, 3, 8, 6), (8, 6)), ((2, 3, 8, 6), 2), ((3, 6, 9), (2, 3)), ((3, 6, 9), 1)]


@pytest.mark.parametrize("shape,size", ADAPTIVE, ids=[f"{s}-{o}" for s, o in ADAPTIVE])
def test_adaptive_avg_pool2d_matches_torch(shape, size):
    torch = _torch()
    x = rng.standard_normal(shape)
    _check_against_torch(lambda x, output_size: fg.adaptive_avg_pool2d(x, output_size),
                         lambda x, output_size: torch.nn.functional.adaptive_avg_pool2d(
                             x, output_size),
                         [x], dict(output_size=size), dict(output_size=size),
                         compiled=size in (1, (2, 3)))


def test_adaptive_avg_pool2d_global_is_one_mean():
    g = fg.jit(lambda x: fg.adaptive_avg_pool2d(x, 1)).trace(rng.standard_normal((2, 3, 4, 4)))
    assert g.graph.count("unfold") == 0 and g.graph.count("sum") == 1


def test_finite_differences():
    x, w, b = rng.standard_normal((2, 2, 9)), rng.standard_normal((3, 2, 4)), rng.standard_normal(3)
    fg.check_grads(lambda x, w, b: fg.sum(fg.conv1d(x, w, 2, 1, b) ** 2), (x, w, b))
    img = rng.standard_normal((2, 6, 4))
    fg.check_grads(lambda x, w: fg.sum(fg.tanh(fg.conv2d(x, w, padding=1))),
                   (img, rng.standard_normal((3, 2, 3, 3))))
    fg.check_grads(lambda x: fg.sum(fg.adaptive_avg_pool2d(x[None], (3, 2)) ** 2), (img,))


def test_audio_net_trains_in_a_train_step():
    """A small 1-D conv net over (N, C, L) signals, global pooling, cross-entropy."""
    r = np.random.default_rng(1)
    n, length = 16, 32
    labels = r.integers(0, 2, size=n)
    t = np.arange(length)
    x = np.sin(t * np.where(labels, 0.9, 0.2)[:, None] + r.uniform(0, 6, size=(n, 1)))
    x = (x[:, None, :] + 0.1 * r.standard_normal((n, 1, length))).astype(np.float32)
    p = {"w1": (r.standard_normal((4, 1, 5)) * 0.5).astype(np.float32),
         "b1": np.zeros(4, np.float32),
         "w2": (r.standard_normal((4, 4, 3)) * 0.3).astype(np.float32),
         "out": (r.standard_normal((4, 2)) * 0.3).astype(np.float32)}

    def loss(p, x, y):
        h = fg.relu(fg.conv1d(x, p["w1"], stride=2, padding=2, bias=p["b1"]))   # (N, 4, 16)
        h = fg.relu(fg.conv1d(h, p["w2"], padding=1))                          # (N, 4, 16)
        pooled = fg.adaptive_avg_pool2d(h[:, :, None, :], 1)[:, :, 0, 0]       # (N, 4)
        return fg.cross_entropy(pooled @ p["out"], y)

    step = fg.train_step(loss, fg.optim.Adam(lr=0.05))
    losses = [float(step(p, x, labels)) for _ in range(40)]
    assert losses[-1] < 0.6 * losses[0], losses


ERRORS = [
    (lambda: fg.conv1d(rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((4, 3, 3))),
     ValueError, r"conv1d: x must be 3-D \(N, C, L\) or 2-D \(C, L\), got shape \(2, 3, 4, 5\)"),
    (lambda: fg.conv1d(rng.standard_normal((2, 3, 8)), rng.standard_normal((4, 3, 3, 3))),
     ValueError, r"conv1d: w must be 3-D \(out_channels, in_channels, k\)"),
    (lambda: fg.conv1d(rng.standard_normal((2, 3, 8)), rng.standard_normal((4, 2, 3))),
     ValueError, r"conv1d: x has 3 channels \(x shape \(2, 3, 8\)\) but w expects 2"),
    (lambda: fg.conv1d(rng.standard_normal((2, 3, 8)), rng.standard_normal((4, 3, 3)),
                       rng.standard_normal(4)), TypeError,
     r"conv1d: stride must be an int, got ndarray \(pass the bias as bias=...\)"),
    (lambda: fg.conv1d(rng.standard_normal((2, 3, 8)), rng.standard_normal((4, 3, 3)), 0),
     ValueError, r"conv1d: stride must be >= 1, got 0"),
    (lambda: fg.conv1d(rng.standard_normal((2, 3, 8)), rng.standard_normal((4, 3, 3)),
                       padding=(1, 1)), TypeError, r"conv1d: padding must be an int"),
    (lambda: fg.conv1d(rng.standard_normal((2, 3, 2)), rng.standard_normal((4, 3, 3))),
     ValueError, r"conv1d: kernel 3 does not fit"),
    (lambda: fg.conv1d(rng.standard_normal((2, 3, 8)), rng.standard_normal((4, 3, 3)),
                       bias=np.ones(3)), ValueError, r"conv1d: bias must have shape \(4,\)"),
    (lambda: fg.conv2d(rng.standard_normal((3, 8)), rng.standard_normal((4, 3, 3, 3))),
     ValueError, r"conv2d: x must be 4-D \(N, C, H, W\) or 3-D \(C, H, W\)"),
    (lambda: fg.conv2d(rng.standard_normal((2, 8, 8)), rng.standard_normal((4, 3, 3, 3))),
     ValueError, r"conv2d: x has 2 channels"),
    (lambda: fg.adaptive_avg_pool2d(rng.standard_normal((2, 3, 7, 6)), 2), ValueError,
     r"adaptive_avg_pool2d: output_size \(2, 2\) must divide the input's spatial size \(7, 6\) "
     r"\(x shape \(2, 3, 7, 6\)\); uneven windows are not supported"),
    (lambda: fg.adaptive_avg_pool2d(rng.standard_normal((2, 3, 8, 6)), (2, 0)), TypeError,
     r"output_size must be an int >= 1, None or a pair of them, got \(2, 0\)"),
    (lambda: fg.adaptive_avg_pool2d(rng.standard_normal((2, 3, 8, 6)), (2, 2, 2)), TypeError,
     r"output_size must be"),
    (lambda: fg.adaptive_avg_pool2d(rng.standard_normal((8, 6)), 2), ValueError,
     r"adaptive_avg_pool2d: x must be 4-D \(N, C, H, W\) or 3-D \(C, H, W\)"),
    (lambda: fg.adaptive_avg_pool2d(np.ones((1, 2, 4, 4), np.int64), 2), TypeError,
     r"adaptive_avg_pool2d: x must be float32 or float64, got int64"),
]


@pytest.mark.parametrize("call,exc,pattern", ERRORS, ids=[p for _, _, p in ERRORS])
def test_bad_arguments(call, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        call()
    assert "test_conv_pool.py:" in str(info.value)
