"""NumPy's array API on traced arrays: ndarray methods and attributes, np.split / array_split,
np.take_along_axis, np.einsum, np.tril / np.triu (and their fg.* names), against NumPy itself
(values) and finite differences in float64 (gradients), compiled on the default target; and
the errors for what is not supported, whose every suggested fg.* name must exist."""
from __future__ import annotations

import re

import numpy as np
import pytest

import fusegrad as fg

rng = np.random.default_rng(0)


def f64(*shape):
    return rng.standard_normal(shape)


def _same(got, want, rtol=1e-12, atol=1e-12):
    if isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w, rtol, atol)
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype,
                                                                  want.shape, want.dtype)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def _weights(shape, seed=0):
    """Fixed weights for a scalar loss sum(w * f(x)) whose gradient reaches every element."""
    return np.cos(np.arange(int(np.prod(shape))) + seed).reshape(shape)


# ---- ndarray methods and attributes ------------------------------------------------------------

X = f64(2, 3, 4)

METHODS = {
    "swapaxes": lambda x: x.swapaxes(0, -1),
    "transpose-args": lambda x: x.transpose(1, 0, 2),
    "transpose-tuple": lambda x: x.transpose((2, 0, 1)),
    "transpose-negative": lambda x: x.transpose(-1, 0, 1),
    "transpose-none": lambda x: x.transpose(),
    "T": lambda x: x.T,
    "mT": lambda x: x.mT,
    "reshape-args": lambda x: x.reshape(6, 4),
    "reshape-tuple": lambda x: x.reshape((4, -1)),
    "reshape-flat": lambda x: x.reshape(-1),
    "ravel": lambda x: x.ravel(),
    "sum": lambda x: x.sum(),
    "sum-axis": lambda x: x.sum(1),
    "sum-keepdims": lambda x: x.sum(axis=(0, 2), keepdims=True),
    "sum-dtype": lambda x: x.sum(-1, np.float32),
    "mean": lambda x: x.mean(axis=0),
    "mean-keepdims": lambda x: x.mean(-1, keepdims=True),
    "max": lambda x: x.max(axis=1),
    "max-all": lambda x: x.max(),
    "min": lambda x: x.min(axis=(0, 1), keepdims=True),
    "var": lambda x: x.var(axis=1),
    "var-ddof": lambda x: x.var(0, ddof=1, keepdims=True),
    "std": lambda x: x.std(axis=-1),
    "astype": lambda x: x.astype(np.float32),
    "astype-str": lambda x: (x * 3).astype("int32"),
    "argmax-keepdims": lambda x: x.argmax(1, keepdims=True),
    "static-attributes": lambda x: x.reshape(x.ndim, x.size // x.ndim, *x.shape[:0]) * (
        1.0 if x.dtype == np.float64 else 0.0),
}


@pytest.mark.parametrize("name", METHODS)
def test_methods_match_numpy(name):
    fn = METHODS[name]
    want = fn(X)
    _same(fg.jit(fn)(X), want, rtol=1e-6 if np.asarray(want).dtype == np.float32 else 1e-12)


def test_methods_gradient_compiled_and_finite_differences():
    def loss(x):
        y = x.swapaxes(0, 2).transpose(2, 1, 0).mT.reshape(-1, 4).T  # back to x's values, (4, 6)
        z = y.sum(0) + y.mean(axis=0, keepdims=True).T.sum(1) + y.var(0) + y.max(axis=0)
        return (z * _weights(z.shape)).sum() + y.min() + x.std()

    fg.check_grads(loss, (X,))
    g = fg.grad(loss)(X)  # compiled on the default target, cross-checked with the interpreter
    assert g.shape == X.shape and np.all(np.isfinite(g))


def test_methods_need_no_numpy_dispatch_table(monkeypatch):
    """The methods are the compiler's own (compiler/symbolic.py calls lax and lax_numpy)."""
    from fusegrad.compiler import symbolic

    monkeypatch.setattr(symbolic, "NUMPY_FUNCTIONS", {})
    monkeypatch.setattr(symbolic, "NUMPY_UFUNCS", {})
    fn = lambda x: (x.swapaxes(1, 2), x.mT, x.transpose(2, 0, 1), x.sum(1, keepdims=True))  # noqa
    _same(fg.jit(fn, target="interpret")(X), list(fn(X)))


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda x: x.sum(out=x), fg.compiler.symbolic.TraceError, r"\.sum\(out=.*leave out"),
    (lambda x: x.reshape(24, order="F"), TypeError, r"\.reshape\(order='F'\)"),
    (lambda x: x.transpose(0, 1, 5), ValueError, r"transpose: axes \(0, 1, 5\) are not a "
                                                 r"permutation"),
    (lambda x: x.transpose(0, 0, 1), ValueError, r"not a permutation"),
    (lambda x: x[0, 0].mT, ValueError, r"\.mT\): x needs at least 2 axes"),
    (lambda x: x.swapaxes(0, 3), ValueError, r"swapaxes: axis 3 is out of range"),
])
def test_method_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fg.jit(call)(X)


# ---- split and array_split ---------------------------------------------------------------------

SPLITS = [
    (lambda x: np.split(x, 2), "sections"),
    (lambda x: np.split(x, 4, axis=-1), "last-axis"),
    (lambda x: np.split(x, [1, 2], axis=1), "indices"),
    (lambda x: np.split(x, [-1], axis=2), "negative-index"),
    (lambda x: np.split(x, [1, 9], axis=1), "past-the-end"),
    (lambda x: np.array_split(x, 3, axis=2), "array-split-uneven"),
    (lambda x: np.array_split(x, 5, axis=0), "array-split-empty-pieces"),
    (lambda x: np.array_split(x, np.array([2]), axis=-1), "array-split-indices"),
]


@pytest.mark.parametrize("fn", [f for f, _ in SPLITS], ids=[i for _, i in SPLITS])
def test_split_matches_numpy(fn):
    want = fn(X)
    _same(fg.jit(fn)(X), want)  # through np.split's dispatch on tracers
    _same(fn(X), want)


def test_fg_split_names_and_gradient():
    _same(fg.split(X, 3, axis=1), np.split(X, 3, axis=1))
    _same(fg.array_split(X, [1, 3], axis=2), np.array_split(X, [1, 3], axis=2))

    def loss(x):
        a, b, c = fg.array_split(x, 3, axis=-1)  # sizes 2, 1, 1
        return fg.sum(a * a) + 3 * fg.sum(b) - fg.sum(fg.exp(c) * _weights(c.shape))

    fg.check_grads(loss, (X,))
    a, b, c = np.array_split(X, 3, axis=-1)
    want = np.concatenate([2 * a, 3 * np.ones_like(b), -np.exp(c) * _weights(c.shape)], -1)
    _same(fg.grad(loss)(X), want)


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda x: np.split(x, 3), ValueError, r"split: axis 0 of size 2 does not divide into 3 "
                                           r"equal sections; use array_split"),
    (lambda x: np.array_split(x, 0), ValueError, r"number of sections must be >= 1"),
    (lambda x: np.split(x, [1.5]), TypeError, r"split index must be a Python int"),
    (lambda x: np.split(x, x[0, 0].astype(np.int64)), TypeError, r"must be static ints"),
])
def test_split_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        fg.jit(call)(X)
    assert "test_array_api.py:" in str(info.value)


# ---- take_along_axis ---------------------------------------------------------------------------

TAKES = [
    ((4, 5), (4, 3), 1, "rows"),
    ((4, 5), (2, 5), 0, "axis0"),
    ((2, 3, 4), (2, 3, 6), -1, "repeats"),
    ((2, 3, 4), (2, 1, 4), 1, "one"),
    ((2, 3, 4), (1, 5, 4), 1, "broadcast-indices"),
    ((1, 3, 4), (2, 3, 2), 2, "broadcast-x"),
    ((6,), (9,), None, "flat"),
    ((2, 3), (5,), None, "flat-2d"),
]


@pytest.mark.parametrize("xs,ids,axis", [t[:3] for t in TAKES], ids=[t[3] for t in TAKES])
def test_take_along_axis_matches_numpy(xs, ids, axis):
    x = f64(*xs)
    size = x.size if axis is None else xs[axis]
    idx = rng.integers(-size, size, size=ids)  # negative indices count from the end
    want = np.take_along_axis(x, idx, axis)
    _same(fg.take_along_axis(x, idx, axis), want)
    _same(fg.jit(lambda x: np.take_along_axis(x, idx, axis))(x), want)  # constant indices
    _same(fg.jit(lambda x, i: np.take_along_axis(x, i, axis))(x, idx), want)  # traced
    _same(fg.jit(lambda x, i: fg.take_along_axis(x, i.astype(np.int32), axis))(x, idx), want)

    def loss(x, i):  # repeated indices: their gradients add up (one scatter_add)
        return fg.sum(fg.take_along_axis(x, i, axis) ** 2 * _weights(want.shape))

    fg.check_grads(loss, (x, idx))
    expect = np.zeros(x.size)
    flat = np.take_along_axis(np.arange(x.size).reshape(x.shape), idx, axis)
    np.add.at(expect, flat.ravel(), (2 * want * _weights(want.shape)).ravel())
    _same(fg.grad(loss)(x, idx), expect.reshape(x.shape), rtol=1e-10)


def test_take_along_axis_picks_log_probs_like_torch_gather():
    torch = pytest.importorskip("torch")
    logits, labels = f64(5, 7), rng.integers(0, 7, size=(5, 1))

    def loss(z, y):
        return -fg.mean(fg.take_along_axis(fg.log_softmax(z), y, axis=1))

    z = torch.tensor(logits, requires_grad=True)
    want = -torch.log_softmax(z, 1).gather(1, torch.tensor(labels)).mean()
    want.backward()
    value, grad = fg.value_and_grad(loss)(logits, labels)
    np.testing.assert_allclose(value, want.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, z.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_take_along_axis_is_bounds_checked():
    x = f64(3, 4)
    with pytest.raises(IndexError, match=r"take_along_axis: index out of range for axis 1 of "
                                         r"size 4"):
        fg.jit(lambda x: np.take_along_axis(x, np.array([[4]]), 1))(x)
    f = fg.jit(lambda x, i: np.take_along_axis(x, i, 1))
    for bad in (4, -5):
        with pytest.raises(fg.IndexOutOfRangeError, match="check_index"):
            f(x, np.array([[0], [bad], [1]]))
    g = fg.jit(lambda x, i: np.take_along_axis(x, i, 1))
    with pytest.raises(fg.IndexOutOfRangeError):  # also on the interpreter, the oracle
        fg.jit(lambda x, i: np.take_along_axis(x, i, 1), target="interpret")(x, np.array([[9]]))
    np.testing.assert_array_equal(g(x, np.array([[-4]])), x[:, :1])


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: fg.take_along_axis(X, np.zeros((2, 3)), 1), TypeError, r"indices must be integers"),
    (lambda: fg.take_along_axis(X, np.zeros((2, 3), np.int64), 1), ValueError,
     r"indices must have as many axes as x \(x shape \(2, 3, 4\), indices shape \(2, 3\)\)"),
    (lambda: fg.take_along_axis(X, np.zeros((3, 1, 4), np.int64), 1), ValueError,
     r"take_along_axis: shapes .* do not broadcast"),
    (lambda: fg.take_along_axis(X, np.zeros((2, 1, 4), np.int64), 3), ValueError,
     r"axis 3 is out of range"),
])
def test_take_along_axis_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# ---- einsum ------------------------------------------------------------------------------------

EINSUMS = [
    ("ij,jk->ik", [(2, 3), (3, 4)]),
    ("ij,kj->ik", [(2, 3), (4, 3)]),
    ("ji,jk->ik", [(3, 2), (3, 4)]),
    ("ji,kj->ik", [(3, 2), (4, 3)]),
    ("ij,jk", [(2, 3), (3, 4)]),
    ("bij,bjk->bik", [(5, 2, 3), (5, 3, 4)]),
    ("bij,jk->bik", [(5, 2, 3), (3, 4)]),
    ("bik,bkj->bij", [(1, 2, 3), (4, 3, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("bhqk,bhkd->bqhd", [(2, 3, 4, 6), (2, 3, 6, 5)]),
    ("ijk,jil->kl", [(2, 3, 4), (3, 2, 5)]),
    ("ij->ji", [(2, 3)]),
    ("ijk->kji", [(2, 3, 4)]),
    ("ba", [(2, 3)]),
    ("Ab,bA", [(2, 3), (3, 2)]),
    ("ij->", [(2, 3)]),
    ("ij->j", [(2, 3)]),
    ("ii->i", [(3, 3)]),
    ("ii", [(3, 3)]),
    ("iij->j", [(3, 3, 4)]),
    ("iii->i", [(3, 3, 3)]),
    ("ijji->ij", [(2, 3, 3, 2)]),
    ("i,i->", [(4,), (4,)]),
    ("i,i", [(4,), (4,)]),
    ("ij,ij->i", [(2, 3), (2, 3)]),
    ("ij,ij->ij", [(2, 3), (2, 3)]),
    ("ij,ij", [(1, 3), (2, 3)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ij,k->ijk", [(2, 3), (4,)]),
    (",i->i", [(), (3,)]),
    ("...ij,...jk->...ik", [(2, 1, 2, 3), (4, 3, 5)]),
    ("...ij,...jk", [(2, 3, 4), (4, 5)]),
    ("i...,i...->...", [(3, 1, 4), (3, 2, 1)]),
    ("...,...", [(2, 3), (3,)]),
    ("ij...->j", [(2, 3)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),
    ("abc,cd,a->bd", [(2, 3, 4), (4, 5), (2,)]),
    ("ab,cd,bd->ac", [(2, 3), (4, 5), (3, 5)]),
]


@pytest.mark.parametrize("spec,shapes", EINSUMS, ids=[s for s, _ in EINSUMS])
def test_einsum_matches_numpy(spec, shapes):
    ops = [f64(*s) for s in shapes]
    want = np.einsum(spec, *ops)
    _same(fg.einsum(spec, *ops), want)
    _same(fg.jit(lambda *xs: np.einsum(spec, *xs))(*ops), want)

    def loss(*xs):
        return fg.sum(fg.einsum(spec, *xs) * _weights(np.shape(want)))

    fg.check_grads(loss, ops)


@pytest.mark.parametrize("spec,shapes", [EINSUMS[i] for i in (1, 8, 9, 17, 26, 30, 35)],
                         ids=[EINSUMS[i][0] for i in (1, 8, 9, 17, 26, 30, 35)])
def test_einsum_gradients_compiled_like_torch(spec, shapes):
    torch = pytest.importorskip("torch")
    ops = [f64(*s) for s in shapes]
    w = _weights(np.einsum(spec, *ops).shape)
    grads = fg.grad(lambda *xs: fg.sum(fg.einsum(spec, *xs) * w),
                    argnums=tuple(range(len(ops))))(*ops)
    ts = [torch.tensor(x, requires_grad=True) for x in ops]
    (torch.einsum(spec, *ts) * torch.tensor(w)).sum().backward()
    for g, t in zip(grads, ts):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_einsum_forms_and_dtypes():
    a, b = f64(2, 3), f64(3, 4)
    _same(fg.einsum(a, [0, 1], b, [1, 2], [0, 2]), np.einsum(a, [0, 1], b, [1, 2], [0, 2]))
    _same(fg.einsum(a, [Ellipsis, 1], b[:, 0], [1]), np.einsum(a, [Ellipsis, 1], b[:, 0], [1]))
    _same(fg.jit(lambda a, b: np.einsum("ij, jk -> ik", a, b, optimize=True))(a, b), a @ b)
    a32 = a.astype(np.float32)
    _same(fg.einsum("ij,jk->ik", a32, b), np.einsum("ij,jk->ik", a32, b))  # promotes, as NumPy
    _same(fg.einsum("ij->i", a, dtype=np.float32),
          np.einsum("ij->i", a, dtype=np.float32, casting="unsafe"), rtol=1e-6)
    ints = rng.integers(-3, 3, size=(2, 3))
    _same(fg.einsum("ij,ij->i", ints, ints), np.einsum("ij,ij->i", ints, ints))


def test_einsum_lowers_to_matmuls_with_transpose_flags():
    def count(spec, *shapes):
        g = fg.jit(lambda *xs: fg.einsum(spec, *xs)).trace(*[f64(*s) for s in shapes]).graph
        return {op: g.count(op) for op in ("matmul", "transpose", "mul", "sum", "slice")}

    # the operands' own layouts fit matmul's (plain or transposed): no transpose at all
    assert count("ij,jk->ik", (2, 3), (3, 4)) == dict(matmul=1, transpose=0, mul=0, sum=0,
                                                      slice=0)
    assert count("ij,kj->ik", (2, 3), (4, 3))["transpose"] == 0
    assert count("ji,jk->ik", (3, 2), (3, 4))["transpose"] == 0
    assert count("bhqd,bhkd->bhqk", (2, 3, 4, 5), (2, 3, 6, 5))["transpose"] == 0
    assert count("bhqk,bhkd->bhqd", (2, 3, 4, 6), (2, 3, 6, 5))["transpose"] == 0
    # dot products and outer products fuse: a product (and a sum), no matmul
    assert count("bi,bi->b", (2, 3), (2, 3)) == dict(matmul=0, transpose=0, mul=1, sum=1,
                                                     slice=0)
    assert count("i,j->ij", (3,), (4,)) == dict(matmul=0, transpose=0, mul=1, sum=0, slice=0)
    assert count("ii->i", (3, 3))["slice"] == 1


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: fg.einsum("ij,jk->ik", X[0]), ValueError, r"name 2 operand\(s\) but 1 were given"),
    (lambda: fg.einsum("ij,jk->ik", X[0], X[0]), ValueError,
     r"label 'j' has size 4 in operand 0 and 3 in operand 1 \(shapes \(3, 4\), \(3, 4\)\); "
     r"only size 1 broadcasts"),
    (lambda: fg.einsum("ij->ik", X[0]), ValueError, r"output label 'k' of 'ij->ik' is in no "
                                                    r"operand"),
    (lambda: fg.einsum("ij->ii", X[0]), ValueError, r"output label 'i' appears more than once"),
    (lambda: fg.einsum("i1->i", X[0]), ValueError, r"may hold only letters and one '...'"),
    (lambda: fg.einsum("ij->i->j", X[0]), ValueError, r"at most one '->'"),
    (lambda: fg.einsum("ij", X), ValueError, r"operand 0 has shape \(2, 3, 4\) \(3 axes\) but "
                                             r"its subscripts 'ij' name 2; add '...'"),
    (lambda: fg.einsum("...ij->ij", X), ValueError, r"output 'ij' .* has no '...'"),
    (lambda: fg.einsum("ii->i", X[0]), ValueError, r"label 'i' has size 3 in operand 0 and 4 in "
                                                   r"operand 0"),
    (lambda: fg.einsum("ii->i", X[0, :1]), ValueError, r"repeated label 'i' names axes of "
                                                       r"different sizes \[1, 4\]"),
    (lambda: fg.einsum("i,i->i", X[0, 0] > 0, X[0, 0] > 0), TypeError, r"bool operands"),
    (lambda: fg.einsum("ij->i", X[0], order="F"), TypeError, r"only dtype= is supported"),
    (lambda: fg.einsum(3, X[0]), ValueError, r"sublist entries must be ints"),
])
def test_einsum_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        call()
    assert "test_array_api.py:" in str(info.value)


def test_np_einsum_out_is_refused_on_tracers():
    with pytest.raises(TypeError, match=r"np.einsum\(..., out=.*not supported"):
        fg.jit(lambda x: np.einsum("ij->ji", x, out=x))(X[0])


# ---- tril and triu -----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [-2, -1, 0, 1, 3])
@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (2, 5, 3), (4,)], ids=str)
def test_tril_triu_match_numpy(shape, k):
    x = f64(*shape)
    for np_fn, fg_fn in ((np.tril, fg.tril), (np.triu, fg.triu)):
        want = np_fn(x, k)
        _same(fg_fn(x, k), want)
        _same(fg.jit(lambda x: np_fn(x, k))(x), want)


def test_tril_triu_dtypes_gradient_and_fusion():
    ints, mask = rng.integers(1, 9, size=(3, 3)), rng.standard_normal((3, 3)) > 0
    _same(fg.jit(lambda a: fg.tril(a))(ints), np.tril(ints))
    _same(fg.jit(lambda m: fg.triu(m, 1))(mask), np.triu(mask, 1))
    x = f64(2, 4, 4)
    loss = lambda x: fg.sum(fg.tril(x, -1) * _weights(x.shape) + fg.triu(x) ** 2)  # noqa: E731
    fg.check_grads(loss, (x,))
    _same(fg.grad(loss)(x), np.tril(_weights(x.shape), -1) + 2 * np.triu(x))
    g = fg.jit(lambda x: fg.tril(x)).trace(x).graph  # a select on a compare of two iotas
    assert g.count("iota") == 2 and g.count("select") == 1 and g.count("constant") <= 2


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: fg.tril(np.float64(1.0)), ValueError, r"tril: x needs at least one axis"),
    (lambda: fg.triu(X, 1.5), TypeError, r"triu: k must be a Python int"),
])
def test_tril_triu_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# ---- a model built from them, trained and differentiated ---------------------------------------


def attention_loss(p, tokens, targets):
    """A one-head causal attention LM: qkv split from one projection, scores and mixing by
    einsum, a causal mask by tril, the targets' log-probabilities picked by take_along_axis."""
    h = p["embed"][tokens]                                   # (B, T, D)
    q, k, v = np.split(h @ p["qkv"], 3, axis=-1)
    scores = np.einsum("btd,bsd->bts", q, k) / np.sqrt(q.shape[-1])
    causal = np.tril(np.ones(scores.shape[-2:]))
    scores = np.where(causal > 0, scores, -1e9)
    mixed = np.einsum("bts,bsd->btd", fg.softmax(scores), v)
    logp = fg.log_softmax(mixed.reshape(-1, mixed.shape[-1]) @ p["out"])
    return -fg.take_along_axis(logp, targets.reshape(-1, 1), axis=1).mean()


def test_model_of_the_new_ops_trains_and_matches_torch():
    r = np.random.default_rng(3)
    vocab, d = 7, 6
    p = {"embed": r.standard_normal((vocab, d)) * 0.5, "qkv": r.standard_normal((d, 3 * d)) * 0.4,
         "out": r.standard_normal((d, vocab)) * 0.4}
    tokens = r.integers(0, vocab, size=(3, 5))
    targets = np.roll(tokens, -1, axis=1)
    fg.check_grads(attention_loss, (p, tokens, targets))
    params = {k: v.astype(np.float32) for k, v in p.items()}
    step = fg.train_step(attention_loss, fg.optim.Adam(lr=0.05))
    losses = [float(step(params, tokens, targets)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses

    torch = pytest.importorskip("torch")
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    h = tp["embed"][torch.tensor(tokens)]
    q, k, v = torch.split(h @ tp["qkv"], d, dim=-1)
    s = torch.einsum("btd,bsd->bts", q, k) / np.sqrt(d)
    s = torch.where(torch.tril(torch.ones(5, 5)) > 0, s, torch.tensor(-1e9, dtype=s.dtype))
    mixed = torch.einsum("bts,bsd->btd", torch.softmax(s, -1), v)
    logp = torch.log_softmax(mixed.reshape(-1, d) @ tp["out"], -1)
    want = -logp.gather(1, torch.tensor(targets).reshape(-1, 1)).mean()
    want.backward()
    loss, grads = fg.value_and_grad(attention_loss)(p, tokens, targets)
    np.testing.assert_allclose(loss, want.item(), rtol=1e-10)
    for name in p:
        np.testing.assert_allclose(grads[name], tp[name].grad.numpy(), rtol=1e-8, atol=1e-12)


# ---- errors for what is not supported suggest only what exists ---------------------------------

UNSUPPORTED = {
    "np.cumsum": lambda x: np.cumsum(x),
    "np.prod": lambda x: np.prod(x),
    "np.sort": lambda x: np.sort(x),
    "np.argsort": lambda x: np.argsort(x),
    "np.argmin": lambda x: np.argmin(x),
    "np.outer": lambda x: np.outer(x, x),
    "np.inner": lambda x: np.inner(x, x),
    "np.tensordot": lambda x: np.tensordot(x, x),
    "np.trace": lambda x: np.trace(x),
    "np.diagonal": lambda x: np.diagonal(x),
    "np.diag": lambda x: np.diag(x),
    "np.vstack": lambda x: np.vstack([x, x]),
    "np.hstack": lambda x: np.hstack([x, x]),
    "np.column_stack": lambda x: np.column_stack([x, x]),
    "np.moveaxis": lambda x: np.moveaxis(x, 0, 1),
    "np.linalg.norm": lambda x: np.linalg.norm(x),
    "np.linalg.inv": lambda x: np.linalg.inv(x),
    "np.average": lambda x: np.average(x),
    "np.median": lambda x: np.median(x),
    "np.tile": lambda x: np.tile(x, 2),
    "np.repeat": lambda x: np.repeat(x, 2),
    "np.roll": lambda x: np.roll(x, 1),
    "np.flip": lambda x: np.flip(x),
    "np.nonzero": lambda x: np.nonzero(x),
    "np.argwhere": lambda x: np.argwhere(x),
    "np.unique": lambda x: np.unique(x),
    "np.atleast_2d": lambda x: np.atleast_2d(x),
    "np.kron": lambda x: np.kron(x, x),
    "np.diff": lambda x: np.diff(x),
    "np.searchsorted": lambda x: np.searchsorted(x[0], x[0]),
    "np.isnan": lambda x: np.isnan(x),
    "np.isfinite": lambda x: np.isfinite(x),
    "np.floor": lambda x: np.floor(x),
    "np.expm1": lambda x: np.expm1(x),
    "np.log2": lambda x: np.log2(x),
    "np.arctan2": lambda x: np.arctan2(x, x),
    "np.add.reduce": lambda x: np.add.reduce(x),
    "np.where(cond)": lambda x: np.where(x > 0),
    ".cumsum": lambda x: x.cumsum(),
    ".prod": lambda x: x.prod(),
    ".dot": lambda x: x.dot(x),
    ".argmin": lambda x: x.argmin(),
    ".nonzero": lambda x: x.nonzero(),
    ".sort": lambda x: x.sort(),
    ".round": lambda x: x.round(),
    ".take": lambda x: x.take([0]),
    ".fill": lambda x: x.fill(0),
    ".diagonal": lambda x: x.diagonal(),
    ".copy": lambda x: x.copy(),
    ".repeat": lambda x: x.repeat(2),
}


def _fg_names(message):
    return re.findall(r"\bfg\.([A-Za-z_]\w*)", message)


@pytest.mark.parametrize("what", UNSUPPORTED)
def test_unsupported_errors_suggest_only_names_that_exist(what):
    with pytest.raises((TypeError, AttributeError)) as info:
        fg.jit(UNSUPPORTED[what])(f64(3, 3))
    message = str(info.value)
    assert "is not supported on traced arrays" in message or "data-dependent" in message, message
    assert "test_array_api.py:" in message  # points at the line that did it
    assert "if it exists" not in message
    for name in _fg_names(message):
        assert hasattr(fg, name), f"{what}: the error suggests fg.{name}, which does not exist"


def test_hints_name_real_functions_and_fg_names_are_suggested():
    from fusegrad.compiler.symbolic import NUMPY_HINTS, PUBLIC_OPS, _instead

    for key, hint in NUMPY_HINTS.items():
        for name in _fg_names(hint):
            assert hasattr(fg, name), f"hint for {key}: fg.{name} does not exist"
    assert PUBLIC_OPS == set(fg.ops.__all__)
    # a NumPy function without a hint whose name fg has is sent there; one fg lacks is not
    assert _instead(None, "einsum") == "use fg.einsum, or compute it outside the compiled function"
    assert "fg." not in _instead(None, "cumsum")


def test_where_with_one_argument_is_a_clear_error():
    with pytest.raises(TypeError, match=r"np.where\(condition\) with one argument has a "
                                        r"data-dependent shape; use np.where\(condition, x, y\)"):
        fg.jit(lambda x: np.where(x > 0))(X)
