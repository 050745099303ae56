"""The op namespace: every public op against an independent NumPy/SciPy reference, eagerly on
NumPy arrays and traced through fg.jit; numerical stability at |x| = 1e4; argument errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import scipy.special as sp

import fusegrad as fg
import fusegrad.ops as ops

rng = np.random.default_rng(0)


def f32(*shape, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def pos(*shape):
    return f32(*shape, lo=0.1, hi=3.0)


@dataclass
class Row:
    op: str
    args: tuple
    ref: Callable
    kwargs: dict = field(default_factory=dict)
    tag: str = ""
    dtype: str | None = None  # expected result dtype; default: the reference's
    rtol: float = 1e-5
    atol: float = 1e-6

    @property
    def id(self):
        return self.op + (f"-{self.tag}" if self.tag else "")


# ---- independent references ------------------------------------------------------------------


def conv2d_ref(x, w, stride=1, padding=0, bias=None):
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def pool_ref(x, k, stride=None, padding=0, kind="max"):
    kh, kw = (k, k) if np.isscalar(k) else k
    stride = (kh, kw) if stride is None else stride
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    n, c, h, w = x.shape
    fill = -np.inf if kind == "max" else 0.0
    xp = np.full((n, c, h + 2 * ph, w + 2 * pw), fill)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            out[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
    return out


def splitmix_uniform(seed, counter, n):
    """splitmix64 counter-based uniforms with 24-bit float32 mantissas (the random primitive's
    documented stream), written here with Python ints."""
    m = (1 << 64) - 1
    golden = 0x9E3779B97F4A7C15

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    key = mix((seed * golden + counter) & m)
    return np.array([(mix((key + (i + 1) * golden) & m) >> 40) * 2.0 ** -24 for i in range(n)],
                    np.float32)


def dropout_ref(x, p, key):
    seed, counter = key if isinstance(key, tuple) else (key, 0)
    u = splitmix_uniform(seed, counter, x.size).reshape(x.shape)
    return np.where(u >= np.float32(p), x / np.float32(1 - p), np.float32(0))


def layer_norm_ref(x, w=None, b=None, eps=1e-5):
    x64 = x.astype(np.float64)
    y = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + eps)
    return y * (1 if w is None else w) + (0 if b is None else b)


def gelu_tanh_ref(x):
    x64 = x.astype(np.float64)
    return 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))


# ---- the table: one or more rows per public op -----------------------------------------------

A, B, V = f32(3, 4), f32(3, 4), f32(4)
X3 = f32(2, 3, 4)
P = pos(3, 4)
LOGITS, LABELS = f32(5, 4) * 3, np.array([0, 3, 1, 1, 2])
PROBS = sp.softmax(f32(5, 4).astype(np.float64), axis=-1).astype(np.float32)
IMG, W33, BIAS = f32(2, 3, 6, 5), f32(4, 3, 3, 3), f32(4)
INTS = np.array([[1, 2, 2], [0, 5, 2]])
COND = A > 0

ROWS = [
    Row("exp", (A,), np.exp),
    Row("log", (P,), np.log),
    Row("log1p", (P,), np.log1p),
    Row("sqrt", (P,), np.sqrt),
    Row("rsqrt", (P,), lambda x: 1 / np.sqrt(x)),
    Row("tanh", (A,), np.tanh),
    Row("sigmoid", (A,), lambda x: 1 / (1 + np.exp(-x))),
    Row("sin", (A,), np.sin),
    Row("cos", (A,), np.cos),
    Row("erf", (A,), lambda x: sp.erf(x.astype(np.float64)), dtype="float32"),
    Row("reciprocal", (P,), lambda x: 1 / x),
    Row("abs", (A,), np.abs),
    Row("abs", (INTS - 2,), np.abs, tag="int"),
    Row("sign", (A,), np.sign),
    Row("negative", (A,), np.negative),
    Row("square", (A,), lambda x: x * x),
    Row("relu", (A,), lambda x: np.where(x > 0, x, 0).astype(np.float32)),
    Row("add", (A, V), lambda a, b: a + b),
    Row("add", (A, 2), lambda a, b: a + np.float32(b), tag="weak-scalar"),
    Row("subtract", (A, B), lambda a, b: a - b),
    Row("multiply", (A, V), lambda a, b: a * b),
    Row("divide", (A, P), lambda a, b: a / b),
    Row("divide", (INTS, 4), lambda a, b: a / b, tag="int"),
    Row("power", (P, A), np.power),
    Row("power", (A, 2), lambda a, b: a * a, tag="square"),
    Row("power", (P, 0.5), lambda a, b: np.sqrt(a), tag="sqrt"),
    Row("maximum", (A, B), np.maximum),
    Row("minimum", (A, V), np.minimum),
    Row("logaddexp", (A, B), np.logaddexp),
    Row("equal", (INTS, 2), lambda a, b: a == b),
    Row("not_equal", (INTS, 2), lambda a, b: a != b),
    Row("less", (A, B), lambda a, b: a < b),
    Row("less_equal", (INTS, 2), lambda a, b: a <= b),
    Row("greater", (A, V), lambda a, b: a > b),
    Row("greater_equal", (INTS, 2), lambda a, b: a >= b),
    Row("logical_and", (COND, A > 0.5), np.logical_and),
    Row("logical_or", (COND, V < 0), np.logical_or),
    Row("logical_or", (A, 0), np.logical_or, tag="float"),
    Row("logical_xor", (COND, A > 0.5), np.logical_xor),
    Row("logical_not", (COND,), np.logical_not),
    Row("where", (COND, A, B), lambda c, a, b: np.choose(c.astype(int), [b, a])),
    Row("where", (COND, A, 0.0), lambda c, a, b: a * c, tag="scalar"),
    Row("clip", (A,), lambda x: np.minimum(np.maximum(x, -0.5), 0.5),
        dict(a_min=-0.5, a_max=0.5)),
    Row("clip", (A,), lambda x: np.maximum(x, 0), dict(a_min=0), tag="lower"),
    Row("astype", (A * 3,), lambda x: np.trunc(x).astype(np.int64), dict(dtype="int64")),
    Row("stop_gradient", (A,), lambda x: x),
    # returns the value; writes it into its own target array (eagerly, or after the jit call)
    Row("assign", (np.zeros((2, 3, 4), np.float32), X3), lambda t, v: v),
    # a running sum over axis 0 (tests/test_scan.py has the rest): (the last carry, each step's)
    Row("scan", (np.zeros((3, 4), np.float32), X3),
        lambda h, x: (h + x.sum(0), h + np.cumsum(x, axis=0)), dict(f=lambda c, x: (c + x, c + x)),
        rtol=1e-5),
    Row("sum", (X3,), lambda x: x.astype(np.float64).sum(1), dict(axis=1), dtype="float32"),
    Row("sum", (X3,), lambda x: x.astype(np.float64).sum(), dtype="float32", tag="all"),
    Row("sum", (X3,), lambda x: x.astype(np.float64).sum((0, 2), keepdims=True),
        dict(axis=(0, -1), keepdims=True), dtype="float32", tag="keepdims"),
    Row("sum", (COND,), lambda c: np.count_nonzero(c, axis=0), dict(axis=0), tag="bool"),
    Row("mean", (X3,), lambda x: x.astype(np.float64).mean(-1), dict(axis=-1), dtype="float32"),
    Row("mean", (INTS,), lambda x: x.mean(), tag="int"),
    Row("var", (X3,), lambda x: x.astype(np.float64).var(1), dict(axis=1), dtype="float32"),
    Row("var", (X3,), lambda x: x.astype(np.float64).var(ddof=1), dict(ddof=1),
        dtype="float32", tag="ddof"),
    Row("std", (A,), lambda x: x.astype(np.float64).std(0, keepdims=True),
        dict(axis=0, keepdims=True), dtype="float32"),
    Row("max", (X3,), lambda x: x.max(axis=(1, 2)), dict(axis=(1, 2))),
    Row("max", (X3,), lambda x: x.max(keepdims=True), dict(keepdims=True), tag="all"),
    Row("min", (X3,), lambda x: x.min(axis=0), dict(axis=0)),
    Row("argmax", (A,), lambda x: x.argmax(axis=1), dict(axis=1)),
    Row("argmax", (A,), lambda x: x.argmax(), tag="flat"),
    Row("argmax", (X3,), lambda x: x.argmax(1)[:, None], dict(axis=1, keepdims=True),
        tag="keepdims"),
    Row("reshape", (X3,), lambda x: x.reshape(4, 6), dict(shape=(4, -1))),
    Row("transpose", (X3,), lambda x: x.transpose(2, 0, 1), dict(axes=(2, 0, 1))),
    Row("transpose", (A,), lambda x: x.T, tag="reverse"),
    Row("swapaxes", (X3,), lambda x: x.swapaxes(0, 2), dict(axis1=0, axis2=-1)),
    Row("expand_dims", (A,), lambda x: x[:, None], dict(axis=1)),
    Row("expand_dims", (A,), lambda x: x[None, :, None], dict(axis=(0, 2)), tag="tuple"),
    Row("squeeze", (f32(1, 3, 1),), lambda x: x.reshape(3)),
    Row("squeeze", (f32(1, 3, 1),), lambda x: x.reshape(1, 3), dict(axis=-1), tag="axis"),
    Row("broadcast_to", (V,), lambda x: np.tile(x, (3, 1)), dict(shape=(3, 4))),
    Row("concatenate", ([A, B, A],), lambda xs: np.vstack(xs)),
    Row("concatenate", ([A, B],), lambda xs: np.hstack(xs), dict(axis=-1), tag="axis"),
    Row("concatenate", ([A, V],), lambda xs: np.r_[xs[0].ravel(), xs[1]], dict(axis=None),
        tag="flat"),
    Row("stack", ([A, B],), lambda xs: np.array([xs[0], xs[1]])),
    Row("stack", ([A, B],), lambda xs: np.dstack(xs), dict(axis=2), tag="last"),
    Row("pad", (A,), lambda x: np.block([[np.zeros((1, 6))], [np.zeros((3, 1)), x,
                                         np.zeros((3, 1))], [np.zeros((1, 6))]]),
        dict(pad_width=1), dtype="float32"),
    Row("pad", (A,), lambda x: np.vstack([x, np.full((2, 4), 7.0)]),
        dict(pad_width=((0, 2), (0, 0)), constant_values=7), dtype="float32", tag="value"),
    Row("take", (A,), lambda x: x[:, [3, 0, 3]], dict(indices=[-1, 0, 3], axis=1)),
    Row("take", (A, np.array([[0, 2], [11, 5]])), lambda x, i: x.ravel()[i], tag="flat"),
    Row("zeros_like", (A,), lambda x: np.zeros((3, 4), np.float32)),
    Row("ones_like", (A,), lambda x: np.ones((3, 4), np.int64), dict(dtype="int64")),
    Row("full_like", (A,), lambda x: np.full((3, 4), 2.5, np.float32), dict(fill_value=2.5)),
    Row("matmul", (A, B.T.copy()), lambda a, b: a.astype(np.float64) @ b, dtype="float32",
        rtol=1e-5),
    Row("matmul", (X3, f32(4, 2)), lambda a, b: np.einsum("bik,kj->bij", a, b), tag="batched"),
    Row("matmul", (A, V), lambda a, v: np.einsum("ik,k->i", a, v), tag="vector"),
    Row("dot", (A, B.T.copy()), lambda a, b: np.einsum("ik,kj->ij", a, b)),
    Row("dot", (V, V), lambda a, b: np.float32(np.sum(a.astype(np.float64) * b)), tag="vec"),
    Row("gelu", (A,), lambda x: 0.5 * x * (1 + sp.erf(x.astype(np.float64) / np.sqrt(2))),
        dtype="float32"),
    Row("gelu", (A,), gelu_tanh_ref, dict(approximate="tanh"), dtype="float32", tag="tanh"),
    Row("softmax", (X3,), lambda x: sp.softmax(x.astype(np.float64), axis=-1), dtype="float32"),
    Row("softmax", (X3,), lambda x: sp.softmax(x.astype(np.float64), axis=0), dict(axis=0),
        dtype="float32", tag="axis0"),
    Row("log_softmax", (X3,), lambda x: sp.log_softmax(x.astype(np.float64), axis=-1),
        dtype="float32"),
    Row("logsumexp", (X3,), lambda x: sp.logsumexp(x.astype(np.float64)), dtype="float32"),
    Row("logsumexp", (X3,), lambda x: sp.logsumexp(x.astype(np.float64), axis=1,
                                                   keepdims=True),
        dict(axis=1, keepdims=True), dtype="float32", tag="keepdims"),
    Row("one_hot", (LABELS,), lambda y: np.eye(4, dtype=np.float32)[y], dict(num_classes=4)),
    Row("one_hot", (INTS,), lambda y: np.eye(6, dtype=np.int32)[y],
        dict(num_classes=6, dtype="int32"), tag="2d"),
    Row("cross_entropy", (LOGITS, LABELS),
        lambda z, y: -sp.log_softmax(z.astype(np.float64), -1)[np.arange(5), y].mean(),
        dtype="float32"),
    Row("cross_entropy", (LOGITS, PROBS),
        lambda z, p: -(p * sp.log_softmax(z.astype(np.float64), -1)).sum(-1).mean(),
        dtype="float32", tag="probs"),
    Row("mse", (A, B), lambda a, b: np.mean((a.astype(np.float64) - b) ** 2), dtype="float32"),
    Row("layer_norm", (X3, V, f32(4)), layer_norm_ref, dtype="float32", rtol=1e-4, atol=1e-5),
    # batch statistics over axes (0, 2, 3); torch comparisons, running statistics: test_batch_norm
    Row("batch_norm", (IMG, f32(3), f32(3)),
        lambda x, w, b: (x - x.mean((0, 2, 3), keepdims=True))
        / np.sqrt(x.var((0, 2, 3), keepdims=True) + 1e-5) * w[:, None, None] + b[:, None, None],
        dtype="float32", rtol=1e-4, atol=1e-5),
    Row("layer_norm", (X3,), lambda x: layer_norm_ref(x, eps=1e-3), dict(eps=1e-3),
        dtype="float32", rtol=1e-4, atol=1e-5, tag="plain"),
    Row("conv2d", (IMG, W33), conv2d_ref, dtype="float32", rtol=1e-4, atol=1e-5),
    Row("conv2d", (IMG, W33), lambda x, w: conv2d_ref(x, w, 2, 1, BIAS),
        dict(stride=2, padding=1, bias=BIAS), dtype="float32", rtol=1e-4, atol=1e-5,
        tag="stride-pad-bias"),
    Row("conv2d", (IMG, f32(2, 3, 2, 3)), lambda x, w: conv2d_ref(x, w, (2, 1), (1, 0)),
        dict(stride=(2, 1), padding=(1, 0)), dtype="float32", rtol=1e-4, atol=1e-5,
        tag="rect"),
    Row("max_pool2d", (IMG,), lambda x: pool_ref(x, 2), dict(kernel_size=2), dtype="float32"),
    Row("max_pool2d", (IMG - 5,), lambda x: pool_ref(x, 3, 2, 1),
        dict(kernel_size=3, stride=2, padding=1), dtype="float32", tag="pad"),
    Row("avg_pool2d", (IMG,), lambda x: pool_ref(x, (2, 3), 1, kind="avg"),
        dict(kernel_size=(2, 3), stride=1), dtype="float32"),
    Row("avg_pool2d", (IMG,), lambda x: pool_ref(x, 3, 2, 1, kind="avg"),
        dict(kernel_size=3, stride=2, padding=1), dtype="float32", tag="pad"),
    Row("dropout", (X3,), lambda x: dropout_ref(x, 0.25, 7), dict(p=0.25, key=7)),
    Row("dropout", (X3,), lambda x: dropout_ref(x, 0.5, (3, 11)), dict(p=0.5, key=(3, 11)),
        tag="pair"),
    Row("dropout", (X3,), lambda x: x, dict(p=0.5, training=False), tag="evaluation"),
    Row("embedding", (INTS, f32(6, 3)), lambda i, t: t[i]),
    # NumPy's array API (compiler/lax_numpy.py, einsum.py): NumPy itself is the reference
    Row("split", (X3,), lambda x: np.split(x, 2, axis=2), dict(indices_or_sections=2, axis=2)),
    Row("array_split", (X3,), lambda x: np.array_split(x, 3, axis=1),
        dict(indices_or_sections=3, axis=1)),
    Row("take_along_axis", (A, np.array([[0, 3], [1, -1], [2, 0]])),
        lambda x, i: np.take_along_axis(x, i, 1), dict(axis=1)),
    Row("einsum", ("bij,kj->bki", X3, B), lambda s, a, b: np.einsum(
        s, a.astype(np.float64), b), dtype="float32"),
    Row("tril", (X3,), lambda x: np.tril(x, -1), dict(k=-1)),
    Row("triu", (A,), lambda x: np.triu(x, 1), dict(k=1)),
    # losses: written out in float64 (tests/test_losses.py checks them against torch)
    Row("nll_loss", (sp.log_softmax(LOGITS, -1), LABELS),
        lambda lp, y: -lp.astype(np.float64)[np.arange(5), y].mean(), dtype="float32"),
    Row("cross_entropy", (LOGITS, np.array([0, -1, 1, -1, 2])),
        lambda z, y: -sp.log_softmax(z.astype(np.float64), -1)[[0, 2, 4], [0, 1, 2]].sum(),
        dict(ignore_index=-1, reduction="sum"), dtype="float32", tag="ignore-sum"),
    Row("cross_entropy", (LOGITS, LABELS), lambda z, y: -(
        (0.9 * np.eye(4)[y] + 0.1 / 4) * sp.log_softmax(z.astype(np.float64), -1)).sum(-1),
        dict(label_smoothing=0.1, reduction="none"), dtype="float32", rtol=1e-5,
        tag="smoothing-none"),
    Row("binary_cross_entropy_with_logits", (LOGITS, (PROBS > 0.25).astype(np.float32)),
        lambda z, t: np.mean(np.logaddexp(0, z.astype(np.float64)) - z * t), dtype="float32"),
    Row("huber_loss", (A, B), lambda a, b: np.mean(np.where(
        np.abs(a - b.astype(np.float64)) < 0.5, 0.5 * (a - b.astype(np.float64)) ** 2,
        0.5 * (np.abs(a - b.astype(np.float64)) - 0.25))), dict(delta=0.5), dtype="float32"),
    Row("conv1d", (IMG[:, :, 0], W33[:, :, 0]), lambda x, w: conv2d_ref(
        x[:, :, None], w[:, :, None], (1, 2), (0, 1), BIAS)[:, :, 0],
        dict(stride=2, padding=1, bias=BIAS), dtype="float32", rtol=1e-4, atol=1e-5),
    Row("conv2d", (IMG[0], W33), lambda x, w: conv2d_ref(x[None], w, 1, 1)[0], dict(padding=1),
        dtype="float32", rtol=1e-4, atol=1e-5, tag="unbatched"),
    Row("adaptive_avg_pool2d", (IMG,), lambda x: pool_ref(x, (3, 5), kind="avg"),
        dict(output_size=(2, 1)), dtype="float32"),
    Row("adaptive_avg_pool2d", (IMG,), lambda x: x.astype(np.float64).mean((2, 3), keepdims=True),
        dict(output_size=1), dtype="float32", tag="global"),
]


def _call(row, *args):
    kwargs = dict(row.kwargs)
    if "f" in kwargs:  # a function argument (scan's body) comes first, and is not traced
        args = (kwargs.pop("f"), *args)
    return getattr(fg, row.op)(*args, **kwargs)


def _check(row, got, want):
    if isinstance(want, tuple):  # several results (scan)
        assert isinstance(got, tuple) and len(got) == len(want), f"{row.id}: {type(got)}"
        for g, w in zip(got, want):
            _check(row, g, w)
        return
    want = np.asarray(want)
    got = np.asarray(got)
    assert got.shape == want.shape, f"{row.id}: shape {got.shape} != {want.shape}"
    assert got.dtype == np.dtype(row.dtype or want.dtype), f"{row.id}: dtype {got.dtype}"
    if got.dtype.kind in "fc":
        np.testing.assert_allclose(got, want, rtol=row.rtol, atol=row.atol, err_msg=row.id)
    else:
        np.testing.assert_array_equal(got, want, err_msg=row.id)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_eager_matches_reference(row):
    got = _call(row, *row.args)
    for g in got if isinstance(got, (list, tuple)) else [got]:  # split, scan: several arrays
        assert isinstance(g, (np.ndarray, np.generic)), type(g)
    _check(row, got, row.ref(*row.args))


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_traced_matches_reference(row):
    f = fg.jit(lambda *args: _call(row, *args))
    _check(row, f(*row.args), row.ref(*row.args))
    assert f.cache_size == 1


def test_every_public_op_has_a_row():
    covered = {r.op for r in ROWS}
    missing = [n for n in ops.__all__ if n not in covered]
    assert not missing, f"ops without a test row: {missing}"
    assert not covered - set(ops.__all__)
    assert set(ops.__all__) <= set(fg.__all__)


@pytest.mark.parametrize("name", ops.__all__)
def test_every_public_op_has_a_docstring(name):
    doc = getattr(fg, name).__doc__
    assert doc and doc.strip(), name


# ---- numerical stability ---------------------------------------------------------------------

BIG = np.array([[1e4, -1e4, 0.0, 1e4], [-1e4, -1e4, -1e4, -1e4], [3.0, -1e4, 2.0, 1e4]],
               np.float32)
BIG_LABELS = np.array([1, 2, 0])


def _stable_cases():
    b64 = BIG.astype(np.float64)
    return [
        ("log_softmax", lambda x: fg.log_softmax(x), sp.log_softmax(b64, axis=-1)),
        ("softmax", lambda x: fg.softmax(x), sp.softmax(b64, axis=-1)),
        ("logsumexp", lambda x: fg.logsumexp(x, axis=-1), sp.logsumexp(b64, axis=-1)),
        ("sigmoid", lambda x: fg.sigmoid(x), sp.expit(b64)),
        ("cross_entropy", lambda x: fg.cross_entropy(x, BIG_LABELS),
         -sp.log_softmax(b64, -1)[np.arange(3), BIG_LABELS].mean()),
        ("cross_entropy-probs", lambda x: fg.cross_entropy(x, np.full((3, 4), 0.25, np.float32)),
         -(0.25 * sp.log_softmax(b64, -1)).sum(-1).mean()),
    ]


@pytest.mark.parametrize("name,fn,want", _stable_cases(), ids=lambda v: v if isinstance(v, str)
                         else "")
@pytest.mark.parametrize("mode", ["eager", "traced"])
def test_stable_at_large_magnitudes(name, fn, want, mode):
    got = fn(BIG) if mode == "eager" else fg.jit(fn)(BIG)
    assert np.asarray(got).dtype == np.float32
    assert np.all(np.isfinite(got)), f"{name}: {got}"
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_log_softmax_is_built_stably_from_primitives():
    f = fg.jit(lambda z, y: fg.cross_entropy(z, y))
    f(LOGITS, LABELS)
    g = f.trace().graph
    assert g.count("stop_gradient") == 1  # the row max, exact gradient
    assert g.count("iota") == 1 and g.count("eq") == 1 and g.count("gather") == 0
    assert g.count("sigmoid") == 0
    assert fg.jit(lambda x: fg.sigmoid(x)).trace(A).graph.count("sigmoid") == 1


def test_conv_and_pools_use_unfold_and_one_matmul():
    g = fg.jit(lambda x, w: fg.conv2d(x, w, padding=1)).trace(IMG, W33).graph
    assert g.count("unfold") == 1 and g.count("matmul") == 1
    g = fg.jit(lambda x: fg.max_pool2d(x, 3, 1, 1)).trace(IMG).graph
    assert g.count("pad") == 1 and g.count("unfold") == 1 and g.count("max") == 1


# ---- dropout ---------------------------------------------------------------------------------


def test_dropout_identity_cases():
    for kwargs in (dict(p=0.0, key=3), dict(p=0.5, key=3, training=False),
                   dict(p=0.5, training=False)):
        assert fg.dropout(A, **kwargs) is A
        g = fg.jit(lambda x: fg.dropout(x, **kwargs)).trace(A).graph
        assert g.count("random_uniform") == 0


def test_dropout_in_training_without_a_key_is_an_error_outside_train_step():
    """Dropout is never silently off: without a key (and without a train_step to supply one)
    training mode raises, saying how to pass one."""
    with pytest.raises(ValueError, match="dropout: training needs a random key.*training=False"):
        fg.dropout(A, 0.5)
    with pytest.raises(ValueError, match="fg.train_step supplies one itself"):
        fg.jit(lambda x: fg.dropout(x, 0.5))(A)


def test_dropout_traced_key_and_statistics():
    x = np.ones((200, 50), np.float32)
    f = fg.jit(lambda x, key: fg.dropout(x, 0.3, key))
    a, b = f(x, np.int64(1)), f(x, np.int64(2))
    assert f.cache_size == 1  # the key is a traced int64 scalar, not part of the cache key
    np.testing.assert_array_equal(a, fg.dropout(x, 0.3, 1))
    assert not np.array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, np.float32(1 / 0.7)}
    assert abs((a == 0).mean() - 0.3) < 0.02
    assert abs(a.mean() - 1.0) < 0.03
    pair = fg.jit(lambda x, s, c: fg.dropout(x, 0.3, (s, c)))
    np.testing.assert_array_equal(pair(x, np.int64(1), np.int64(0)), a)
    assert not np.array_equal(pair(x, np.int64(1), np.int64(1)), a)


# ---- argument errors -------------------------------------------------------------------------

ERRORS = [
    (lambda: fg.cross_entropy(LOGITS, LABELS[:3]), ValueError,
     r"integer labels must have shape \(5,\).*got shape \(3,\)"),
    (lambda: fg.cross_entropy(LOGITS, PROBS[:, :3]), ValueError,
     r"probability targets must have the logits' shape \(5, 4\), got shape \(5, 3\)"),
    (lambda: fg.cross_entropy(LOGITS, LABELS > 1), TypeError, "got bool"),
    (lambda: fg.layer_norm(X3, f32(3)), ValueError,
     r"layer_norm: weight must have shape \(4,\).*got shape \(3,\)"),
    (lambda: fg.layer_norm(X3, None, f32(2, 4)), ValueError, r"layer_norm: bias must have shape"),
    (lambda: fg.conv2d(IMG, f32(4, 2, 3, 3)), ValueError,
     r"x has 3 channels \(x shape \(2, 3, 6, 5\)\) but w expects 2 \(w shape \(4, 2, 3, 3\)\)"),
    (lambda: fg.conv2d(IMG[0, 0], W33), ValueError, r"conv2d: x must be 4-D \(N, C, H, W\) "
     r"or 3-D \(C, H, W\)"),
    (lambda: fg.conv2d(IMG, W33, BIAS), TypeError, r"stride must be an int or a pair.*bias="),
    (lambda: fg.conv2d(IMG, W33, stride=0), ValueError, r"conv2d: stride must be >= 1"),
    (lambda: fg.conv2d(IMG, W33, bias=f32(3)), ValueError, r"bias must have shape \(4,\)"),
    (lambda: fg.conv2d(IMG, f32(4, 3, 9, 9)), ValueError, r"kernel 9 does not fit"),
    (lambda: fg.max_pool2d(IMG, 2, padding=2), ValueError, r"at most half the kernel size"),
    (lambda: fg.avg_pool2d(INTS.reshape(1, 1, 2, 3), 2), TypeError, r"x must be float"),
    (lambda: fg.dropout(A, 1.0, key=1), ValueError, r"dropout: p must be a number in \[0, 1\)"),
    (lambda: fg.dropout(A, -0.1, key=1), ValueError, r"dropout: p must be"),
    (lambda: fg.dropout(A, 0.5, key=1.5), TypeError, r"dropout: key must be an int"),
    (lambda: fg.dropout(A, 0.5, key=np.zeros(2, np.int64)), TypeError, r"key must be"),
    (lambda: fg.gelu(A, approximate="fast"), ValueError, r"approximate must be 'none' or 'tanh'"),
    (lambda: fg.one_hot(A, 3), TypeError, r"one_hot: labels must be integers"),
    (lambda: fg.one_hot(LABELS, 0), ValueError, r"num_classes must be a positive int"),
    (lambda: fg.embedding(A, A), TypeError, r"embedding: ids must be integers"),
    (lambda: fg.embedding(INTS, X3), ValueError, r"table must be 2-D"),
    (lambda: fg.mse(A, V), ValueError, r"mse: pred shape \(3, 4\) and target shape \(4,\)"),
    (lambda: fg.squeeze(A, 0), ValueError, r"squeeze: axis 0"),
    (lambda: fg.stack([A, V]), ValueError, r"stack: all inputs must have the same shape"),
    (lambda: fg.take(A, [12]), IndexError, r"take: index out of range"),
    (lambda: fg.clip(A), ValueError, r"clip: give at least one"),
    (lambda: fg.dot(X3, A), ValueError, r"dot: only 0-, 1- and 2-D"),
]


@pytest.mark.parametrize("call,exc,pattern", ERRORS, ids=[p for _, _, p in ERRORS])
def test_bad_arguments(call, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        call()
    assert "test_ops.py:" in str(info.value)  # points at the caller's line


def test_bad_arguments_while_tracing_point_at_the_user_line():
    f = fg.jit(lambda z, y: fg.cross_entropy(z, y))
    with pytest.raises(ValueError, match=r"expected|must have shape") as info:
        f(LOGITS, LABELS[:3])
    assert "test_ops.py:" in str(info.value)


def test_shape_errors_from_primitives_name_the_op():
    with pytest.raises(ValueError, match=r"matmul.*\(3, 4\).*\(3, 4\)|f32\[3,4\] @ f32\[3,4\]"):
        fg.matmul(A, B)
    with pytest.raises(ValueError, match=r"add: shapes \(3, 4\) and \(3,\)"):
        fg.add(A, A[:, 0])
