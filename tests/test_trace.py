"""Tracing plain NumPy code: NumPy protocols, operators, indexing, weak scalar typing, constants,
unrolled control flow, error messages, the jit cache, and a golden IR dump."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import fusegrad as fg


def mlp_loss(params, x, y):  # the golden test below pins this function's IR, locations included
    h = fg.relu(x @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    return fg.cross_entropy(logits, y)


rng = np.random.default_rng(1)
X = rng.normal(size=(3, 4)).astype(np.float32)
Y = rng.normal(size=(3, 4)).astype(np.float32)
POS = rng.uniform(0.5, 2.0, size=(3, 4)).astype(np.float32)
W = rng.normal(size=(4, 5)).astype(np.float32)
C = rng.normal(size=(2, 3)).astype(np.float32)  # closed over: becomes a constant
IDX = np.array([2, 0, 2, 1])

# Plain NumPy functions: run directly on arrays, then traced through fg.jit; results must agree.
NUMPY_CODE = {
    "np.exp": lambda x: np.exp(x),
    "np.maximum(x, 0)": lambda x: np.maximum(x, 0),
    "np.sum(axis=1)": lambda x: np.sum(x, axis=1),
    "np.sum(positional axis)": lambda x: np.sum(x, 0),
    "np.tanh": lambda x: np.tanh(x),
    "np.where": lambda x: np.where(x > 0, x, 0.1 * x),
    "np.concatenate": lambda x, y: np.concatenate([x, y, x], axis=1),
    "np.stack": lambda x, y: np.stack([x, y], axis=-1),
    "np.mean": lambda x: np.mean(x, axis=0, keepdims=True),
    "np.var/std": lambda x: np.var(x, axis=1) + np.std(x, ddof=1),
    "np.max/min/amax/amin": lambda x: np.max(x, 1) - np.min(x) + np.amax(x) * np.amin(x, 0)[0],
    "np.argmax": lambda x: np.argmax(x, axis=1),
    "np.log/sqrt/abs": lambda x: np.log(np.sqrt(np.abs(x) + 1)),
    "np.log1p/square/sign": lambda x: np.log1p(np.square(x)) * np.sign(x),
    "np.sin/cos/negative": lambda x: np.negative(np.sin(x)) + np.cos(x),
    "np.reciprocal/power": lambda x: np.reciprocal(np.power(np.abs(x) + 1, 1.5)),
    "np.logaddexp": lambda x, y: np.logaddexp(x, y),
    "np.minimum/clip": lambda x: np.minimum(np.clip(x, -1, 1), 0.5),
    "np.reshape/transpose": lambda x: np.transpose(np.reshape(x, (2, 6)), (1, 0)),
    "np.swapaxes/expand_dims/squeeze": lambda x: np.squeeze(
        np.swapaxes(np.expand_dims(x, 0), 0, 1), axis=1),
    "np.broadcast_to": lambda x: np.broadcast_to(x[0], (5, 4)),
    "np.matmul/dot": lambda x: np.matmul(x, W) + np.dot(x, W),
    "np.zeros_like/ones_like/full_like": lambda x: np.zeros_like(x) + np.ones_like(x) * x
    + np.full_like(x, 3.0),
    "np.take": lambda x: np.take(x, IDX, axis=1),
    "np.pad": lambda x: np.pad(x, ((1, 0), (0, 2)), constant_values=-1),
    "np.ravel/shape/ndim/size": lambda x: np.ravel(x) * (np.shape(x)[0] + np.ndim(x) + np.size(x)),
    "np.logical_*": lambda x, y: np.logical_or(np.logical_and(x > 0, y < 0),
                                               np.logical_not(np.logical_xor(x > y, x > 1))),
    "comparisons": lambda x, y: np.not_equal(np.equal(x > y, x >= 0), np.less(x, 0.5)),
    # operators
    "x + y - x * y / 2": lambda x, y: x + y - x * y / 2,
    "x ** 2, x ** y": lambda x, y: x ** 2 + np.abs(x) ** np.abs(y),
    "x @ W": lambda x: x @ W,
    "C @ x (ndarray on the left)": lambda x: C @ x,
    "unary -, abs(), +": lambda x: -x + abs(x) + (+x),
    "reflected 2 - x, 1 / x, 2 ** x": lambda x: 2 - x + 1 / (x + 3) + 2 ** x,
    "x < y": lambda x, y: x < y,
    "x <= y, x > y, x >= 0": lambda x, y: (x <= y) == (x > y) + 0 - (x >= 0),
    "x == y, x != y": lambda x, y: (x == x) != (x == y),
    # indexing
    "x[1]": lambda x: x[1],
    "x[-1, 2]": lambda x: x[-1, 2],
    "x[1:3]": lambda x: x[1:3],
    "x[::-1]": lambda x: x[::-1],
    "x[::-2, 1:]": lambda x: x[::-2, 1:],
    "x[None]": lambda x: x[None],
    "x[..., 0]": lambda x: x[..., 0],
    "x[:, None, ::2]": lambda x: x[:, None, ::2],
    "x[int array]": lambda x: x[np.array([2, 0, 2])],
    "x[:, list]": lambda x: x[:, [3, 0]],
    # attributes and methods
    ".T": lambda x: x.T,
    ".shape/.ndim": lambda x: x.reshape(x.shape[1], x.shape[0] * x.ndim // 2),
    ".dtype": lambda x: (x * 2).astype(x.dtype),
    ".reshape(-1, k)": lambda x: x.reshape(-1, 2),
    ".sum/.mean/.max/.min": lambda x: x.sum(axis=1) + x.mean() + x.max(axis=1) - x.min(1),
    ".astype(np.float64)": lambda x: x.astype(np.float64) / 3,
    ".argmax/.ravel/.transpose": lambda x: x.transpose(1, 0).ravel()[x.argmax()],
    "len and iteration": lambda x: sum(row * i for i, row in enumerate(x)) / len(x),
}


def _arity(fn):
    return len(inspect.signature(fn).parameters)


@pytest.mark.parametrize("name", list(NUMPY_CODE))
def test_numpy_code_traces_like_it_runs(name):
    fn = NUMPY_CODE[name]
    args = (X, Y)[:_arity(fn)]
    want = fn(*args)
    f = fg.jit(fn)
    got = f(*args)
    assert isinstance(got, np.ndarray)
    assert got.shape == np.shape(want) and got.dtype == np.asarray(want).dtype, name
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    graph = f.trace().graph
    assert graph.nodes, "the computation must be recorded, not done at trace time"


def test_numpy_functions_record_ir_instead_of_computing():
    f = fg.jit(lambda x: np.sum(np.maximum(np.exp(x), 0), axis=1))
    f(X)
    ops = [n.op for n in f.trace().graph.nodes]
    assert ops == ["exp", "constant", "maximum", "sum"]


def test_integer_array_index_can_be_traced():
    f = fg.jit(lambda x, i: x[i] * 2)
    np.testing.assert_allclose(f(X, IDX[:2]), X[IDX[:2]] * 2)
    assert f.trace().graph.count("gather") == 1


# ---- dtypes: weak Python scalars, NEP 50 ------------------------------------------------------


@pytest.mark.parametrize("fn,dtype", [
    (lambda x: x * 2, np.float32),
    (lambda x: x + 1.5, np.float32),
    (lambda x: 2.0 ** x - 1, np.float32),
    (lambda x: np.maximum(x, 0), np.float32),
    (lambda x: x * np.float32(2), np.float32),
    (lambda x: x * np.float64(2), np.float64),  # a NumPy scalar is strongly typed (NEP 50)
    (lambda x: np.float64(2) * x, np.float64),
    (lambda x: x.astype(np.int64) + 1, np.int64),
    (lambda x: x.astype(np.int64) + 1.5, np.float64),
    (lambda x: x.astype(np.int32) / 2, np.float64),
])
def test_scalar_promotion_matches_numpy(fn, dtype):
    assert fn(X).dtype == dtype  # what NumPy itself does
    assert fg.jit(fn)(X).dtype == dtype


def test_weak_scalar_constant_takes_the_array_dtype():
    f = fg.jit(lambda x: x * 2 + 1.5)
    f(X)
    consts = [n for n in f.trace().graph.nodes if n.op == "constant"]
    assert [str(n.out.type) for n in consts] == ["f32[]", "f32[]"]


# ---- constants and control flow --------------------------------------------------------------


def test_closed_over_arrays_become_constant_nodes():
    f = fg.jit(lambda x: C @ x + C @ x)
    np.testing.assert_allclose(f(X), 2 * (C @ X), rtol=1e-6)
    g = f.trace().graph
    consts = [n for n in g.nodes if n.op == "constant"]
    assert len(consts) == 1  # one constant, shared by both uses
    np.testing.assert_array_equal(consts[0].attrs["value"].array, C)
    assert len(g.inputs) == 1


def test_python_loop_over_layers_unrolls():
    layers = [{"w": rng.normal(size=(4, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}
              for _ in range(3)]

    def mlp(layers, x):
        for layer in layers:
            x = np.tanh(x @ layer["w"] + layer["b"])
        return x

    f = fg.jit(mlp)
    np.testing.assert_allclose(f(layers, X), mlp(layers, X), rtol=1e-5, atol=1e-6)
    g = f.trace().graph
    assert g.count("matmul") == 3 and g.count("tanh") == 3
    assert list(g.input_names) == [f"layers[{i}][{k!r}]" for i in range(3) for k in ("w", "b")] \
        + ["x"]


def test_static_flag_selects_a_branch_at_trace_time():
    f = fg.jit(lambda x, train: fg.dropout(x, 0.5, key=1) if train else x * 1)
    np.testing.assert_array_equal(f(X, False), X)
    assert f.trace().graph.count("random_uniform") == 0
    f(X, True)
    assert f.trace().graph.count("random_uniform") == 1 and f.cache_size == 2


def test_pytree_outputs():
    f = fg.jit(lambda x, y: {"sum": x + y, "pair": (x.sum(), [y * 2])})
    out = f(X, Y)
    np.testing.assert_allclose(out["sum"], X + Y)
    np.testing.assert_allclose(out["pair"][0], X.sum(), rtol=1e-6)
    np.testing.assert_allclose(out["pair"][1][0], Y * 2)


# ---- errors ----------------------------------------------------------------------------------


def _line_of(fn, text):
    """Line number of the first source line of `fn` containing `text`."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def test_branching_on_a_tracer_says_to_use_where():
    def f(x):
        if x.sum() > 0:
            return x
        return -x

    with pytest.raises(TypeError, match=r"fg\.where") as info:
        fg.jit(f)(X)
    assert f"test_trace.py:{_line_of(f, 'if x.sum()')}" in str(info.value)


@pytest.mark.parametrize("call,name", [
    (lambda x: np.linalg.inv(x), "inv"),
    (lambda x: np.sort(x), "sort"),
    (lambda x: np.add.reduce(x), "np.add.reduce"),
    (lambda x: np.round(x), "round"),
])
def test_unsupported_numpy_function_names_it_and_the_line(call, name):
    with pytest.raises(TypeError, match="not supported") as info:
        fg.jit(call)(X[:, :3])
    msg = str(info.value)
    assert name in msg
    assert f"test_trace.py:{inspect.getsourcelines(call)[1]}" in msg


@pytest.mark.parametrize("call,pattern", [
    (lambda x: np.sum(x, initial=1.0), r"np\.sum\(\.\.\., initial=1\.0\) is not supported"),
    (lambda x: np.where(x > 0), r"np\.where\(condition\) with one argument"),
    (lambda x: np.pad(x, 1, mode="reflect"), r"np\.pad\(mode='reflect'\)"),
    (lambda x: np.exp(x, out=x), r"out= is not supported.*np\.exp"),
])
def test_unsupported_numpy_arguments(call, pattern):
    with pytest.raises(TypeError, match=pattern) as info:
        fg.jit(call)(X)
    assert "test_trace.py:" in str(info.value)


def test_shape_mismatch_reports_both_shapes_the_op_and_the_line():
    def f(x):
        return x @ x

    with pytest.raises(ValueError) as info:
        fg.jit(f)(X)
    msg = str(info.value)
    assert "matmul" in msg and msg.count("f32[3,4]") == 2
    assert f"test_trace.py:{_line_of(f, 'x @ x')}" in msg


def test_returning_a_string_is_explained():
    with pytest.raises(TypeError, match=r"returned a str.*must return arrays"):
        fg.jit(lambda x: "done")(X)


@pytest.mark.parametrize("call", [
    lambda x: float(x[0, 0]),
    lambda x: int(x.sum()),
    lambda x: x.item(),
    lambda x: np.asarray(x),
    lambda x: x[0].tolist(),
])
def test_concrete_value_requests_fail_clearly(call):
    with pytest.raises(TypeError, match=r"needs the value|np\.asarray") as info:
        fg.jit(call)(X)
    assert "test_trace.py:" in str(info.value)


# ---- the jit cache ---------------------------------------------------------------------------


def test_jit_caches_per_shape_and_static_value():
    calls = []

    @fg.jit
    def f(x, scale):
        calls.append(x.shape)
        return x * scale

    np.testing.assert_allclose(f(X, 2), X * 2)
    np.testing.assert_allclose(f(Y, 2), Y * 2)  # same shapes: no retrace
    assert len(calls) == 1 and f.cache_size == 1
    np.testing.assert_allclose(f(np.ones((5, 4), np.float32), 2), 2.0)  # new batch size
    assert len(calls) == 2 and f.cache_size == 2
    np.testing.assert_allclose(f(X, 3), X * 3)  # static scalars are part of the key
    assert len(calls) == 3 and f.cache_size == 3
    f(X, 2)
    f(X.astype(np.float64), 2)  # a new dtype retraces too
    assert len(calls) == 4 and f.cache_size == 4


# ---- golden IR -------------------------------------------------------------------------------

GOLDEN_MLP = """\
graph mlp_loss(
    %0: f32[3,5]  params['w1']  batch
    %1: f32[5]    params['b1']  batch
    %2: f32[5,4]  params['w2']  batch
    %3: f32[4]    params['b2']  batch
    %4: f32[8,3]  x             batch
    %5: i64[8]    y             batch
) {
  %6: f32[8,5] = matmul[transpose_a=False, transpose_b=False] %4, %0   # {h}
  %7: f32[8,5] = add %6, %1   # {h}
  %8: f32[] = constant[value=0.0]   # {h}
  %9: f32[8,5] = maximum %7, %8   # {h}
  %10: f32[8,4] = matmul[transpose_a=False, transpose_b=False] %9, %2   # {logits}
  %11: f32[8,4] = add %10, %3   # {logits}
  %12: f32[8,1] = max[axes=(1,), keepdims=True] %11   # {loss}
  %13: f32[8,1] = stop_gradient %12   # {loss}
  %14: f32[8,4] = sub %11, %13   # {loss}
  %15: f32[8,4] = exp %14   # {loss}
  %16: f32[8,1] = sum[axes=(1,), keepdims=True] %15   # {loss}
  %17: f32[8,1] = log %16   # {loss}
  %18: f32[8,4] = sub %14, %17   # {loss}
  %19: i64[8] = check_index[size=4] %5   # {loss}
  %20: i64[8,4] = iota[axis=1, dtype=int64, shape=(8,4)]   # {loss}
  %21: i64[8,1] = reshape[shape=(8,1)] %19   # {loss}
  %22: b1[8,4] = eq %20, %21   # {loss}
  %23: f32[8,4] = cast[dtype=float32] %22   # {loss}
  %24: f32[8,4] = mul %18, %23   # {loss}
  %25: f32[8] = sum[axes=(1,), keepdims=False] %24   # {loss}
  %26: f32[] = sum[axes=(0,), keepdims=False] %25   # {loss}
  %27: f32[] = constant[value=8.0]   # {loss}
  %28: f32[] = div %26, %27   # {loss}
  %29: f32[] = neg %28   # {loss}
  return %29  # out
}"""


def test_golden_mlp_loss_ir():
    r = np.random.default_rng(0)
    params = {"w1": r.normal(size=(3, 5)).astype(np.float32), "b1": np.zeros(5, np.float32),
              "w2": r.normal(size=(5, 4)).astype(np.float32), "b2": np.zeros(4, np.float32)}
    x = r.normal(size=(8, 3)).astype(np.float32)
    y = r.integers(0, 4, size=8)
    f = fg.jit(mlp_loss)
    loss = f(params, x, y)
    locs = {key: f"test_trace.py:{_line_of(mlp_loss, text)}"
            for key, text in (("h", "h = fg.relu"), ("logits", "logits ="),
                              ("loss", "return fg.cross_entropy"))}
    want = GOLDEN_MLP
    for key, loc in locs.items():
        want = want.replace("{" + key + "}", loc)
    assert f.ir() == want
    # and the pinned program computes the loss
    h = np.maximum(x @ params["w1"] + params["b1"], 0)
    z = (h @ params["w2"] + params["b2"]).astype(np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(loss, -logp[np.arange(8), y].mean(), rtol=1e-5)


def test_array_methods_need_no_numpy_dispatch_table(monkeypatch):
    """x.var(), x.std(), x.clip(), x.squeeze() and &, |, ^, ~ are the compiler's own
    (compiler/lax_numpy.py): they once went through the tables fusegrad.ops fills for NumPy's
    functions, and raised KeyError when those were not filled."""
    from fusegrad.compiler import symbolic

    monkeypatch.setattr(symbolic, "NUMPY_FUNCTIONS", {})
    monkeypatch.setattr(symbolic, "NUMPY_UFUNCS", {})

    def f(x):
        pos, small = x > 0, x < 0.5
        return (x.var(axis=0), x.std(ddof=1), x.clip(0.0, 0.5), x[:, :1].squeeze(),
                pos & small, pos | small, pos ^ small, ~pos)

    x = np.array([[0.25, -1.0], [0.75, 0.5], [-0.5, 2.0]])
    got = fg.jit(f, target="interpret")(x)
    pos, small = x > 0, x < 0.5
    want = (x.var(axis=0), x.std(ddof=1), x.clip(0.0, 0.5), x[:, :1].squeeze(),
            pos & small, pos | small, pos ^ small, ~pos)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w)
