"""The Numba CPU backend against the reference interpreter: every kernel kind (loop kernels,
GEMMs, the opaque library kernels), end-to-end gradients and training steps, in-place semantics
and the loss guard, the float32 transcendental approximations, and the readability of the
generated source.

Every test runs the same function with target="cpu" (the product's default; asked for explicitly
because conftest.py makes the interpreter the suite's default) and target="interpret" (the
oracle) on the same inputs. Shapes are tiny and models are shared between tests: each distinct
program costs a Numba compile (seconds when cold; the disk cache makes later runs fast).
"""
from __future__ import annotations

import copy
import inspect
import math
import os
import re
import sys

import numpy as np
import pytest

import fusegrad as fg
from fusegrad.compiler import lax
from fusegrad.pytree import flatten, unflatten


@pytest.fixture(autouse=True, scope="module")
def njit_driver():
    """This file tests the driver users get: one compiled call per step (conftest.py gives
    the rest of the suite the Python driver)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSEGRAD_DRIVER", "njit")
        yield


F32 = dict(rtol=1e-5, atol=1e-6)
F64 = dict(rtol=1e-11, atol=1e-12)
TOL = {np.float32: F32, np.float64: F64}
STEP_TOL = dict(rtol=1e-4, atol=1e-5)  # several float32 training steps


# ---- helpers -----------------------------------------------------------------------------------


def assert_tree_close(got, want, **tol):
    """Same structure, dtypes and shapes; values close (NaN where NaN); ints and bools equal."""
    g_leaves, g_tree = flatten(got)
    w_leaves, w_tree = flatten(want)
    assert g_tree == w_tree
    for k, (g, w) in enumerate(zip(g_leaves, w_leaves)):
        g, w = np.asarray(g), np.asarray(w)
        assert (g.dtype, g.shape) == (w.dtype, w.shape), f"leaf {k}"
        if g.dtype.kind == "f":
            np.testing.assert_allclose(g, w, equal_nan=True, err_msg=f"leaf {k}", **tol)
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"leaf {k}")


def assert_tree_bitwise(a, b):
    a_leaves, a_tree = flatten(a)
    b_leaves, b_tree = flatten(b)
    assert a_tree == b_tree
    for x, y in zip(a_leaves, b_leaves):
        if isinstance(x, (int, np.integer)):
            assert x == y
            continue
        x, y = np.asarray(x), np.asarray(y)
        assert (x.dtype, x.shape) == (y.dtype, y.shape)
        assert x.tobytes() == y.tobytes()


def tree_copy(tree):
    leaves, treedef = flatten(tree)
    return unflatten(treedef, [None if x is None else np.array(x, copy=True) for x in leaves])


def cpu_and_interpreter(fn, *args, **tol):
    """Run fg.jit(fn) on both targets, check they agree, return the compiled function."""
    compiled = fg.jit(fn, target="cpu")
    got = compiled(*args)
    want = fg.jit(fn, target="interpret")(*args)
    assert_tree_close(got, want, **(tol or F32))
    return compiled


def grads_cpu_and_interpreter(fn, *args, argnums=0, **tol):
    compiled = fg.value_and_grad(fn, argnums=argnums, target="cpu")
    got = compiled(*args)
    want = fg.value_and_grad(fn, argnums=argnums, target="interpret")(*args)
    assert_tree_close(got, want, **(tol or F32))
    return compiled


def driver_of(source: str) -> str:
    """The driver part of fg.jit(...).source() (the kernels follow it)."""
    return source.split("# ---- kernel")[0]


def run_body(source: str) -> str:
    """The body of the driver's run() (not of other functions the driver module has)."""
    body = driver_of(source).split("def run(", 1)[1].split("\n", 1)[1]
    return re.split(r"^\S", body, maxsplit=1, flags=re.M)[0]


def library_calls(source: str) -> set:
    """Names of the functions the driver's run() calls."""
    return set(re.findall(r"^    ([a-z_][a-z0-9_]*)\(", run_body(source), re.M))


def gemm_flags(source: str) -> set:
    calls = run_body(source)
    return set(re.findall(r"gemm(?:_loops)?\(.*, (True|False), (True|False)\)", calls))


def line_of(fn, text: str) -> int:
    """Line number of the first line of fn's source containing `text`."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(k for k, ln in enumerate(lines) if text in ln)


# ---- models shared by several tests --------------------------------------------------------------


def mlp_loss(p, x, y):
    h = fg.relu(x @ p["w1"] + p["b1"])
    return fg.cross_entropy(h @ p["w2"] + p["b2"], y)


def mlp_params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {"w1": (rng.standard_normal((4, 6)) * 0.5).astype(dtype),
            "b1": (rng.standard_normal(6) * 0.1).astype(dtype),
            "w2": (rng.standard_normal((6, 3)) * 0.5).astype(dtype),
            "b2": np.zeros(3, dtype)}


def mlp_batches(n, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((8, 4)) * 2).astype(dtype), rng.integers(0, 3, 8))
            for _ in range(n)]


def ln_gelu_loss(p, x, t):
    """A LayerNorm + GELU(tanh) layer, then an erf-GELU layer, then a mean squared error."""
    h = fg.layer_norm(x @ p["w1"] + p["b1"], p["ln_w"], p["ln_b"])
    h = fg.gelu(h, approximate="tanh")
    h = fg.gelu(h @ p["w2"], approximate="none")
    return fg.mse(h, t)


def ln_gelu_params(seed=2):
    rng = np.random.default_rng(seed)
    f = np.float32
    return {"w1": (rng.standard_normal((5, 8)) * 0.6).astype(f),
            "b1": (rng.standard_normal(8) * 0.1).astype(f),
            "ln_w": (1 + 0.2 * rng.standard_normal(8)).astype(f),
            "ln_b": (0.2 * rng.standard_normal(8)).astype(f),
            "w2": (rng.standard_normal((8, 4)) * 0.5).astype(f)}


def cnn_loss(p, x, y):
    h = fg.relu(fg.conv2d(x, p["conv_w"], stride=1, padding=1, bias=p["conv_b"]))
    h = fg.reshape(h, (x.shape[0], -1))
    return fg.cross_entropy(h @ p["fc_w"] + p["fc_b"], y)


def attention(p, x, heads=2):
    b, t, d = x.shape
    dh = d // heads

    def split(h):  # (B, T, D) -> (B, H, T, dh)
        return fg.transpose(fg.reshape(h, (b, t, heads, dh)), (0, 2, 1, 3))

    q, k, v = (split(x @ p[name]) for name in ("wq", "wk", "wv"))
    scores = fg.matmul(q, fg.swapaxes(k, -1, -2)) / math.sqrt(dh)
    out = fg.matmul(fg.softmax(scores, axis=-1), v)
    out = fg.reshape(fg.transpose(out, (0, 2, 1, 3)), (b, t, d))
    return out @ p["wo"] + p["bo"]


def attention_loss(p, x, w):
    return fg.sum(attention(p, x) * w)


# =================================================================================================
# 1. every kernel kind against the interpreter
# =================================================================================================


def elementwise_zoo(a, b, row, col, s, i, j):
    """One elementwise kernel's worth of ops: ROW / COL / SCALAR broadcasts, NaN-propagating
    maximum, select, comparisons and logic, integer arithmetic, casts, transcendentals (the
    float32 approximations each on its own output; the libm ones summed)."""
    affine = a * row + col * s - 1.5
    mx, mn = fg.maximum(a, b), fg.minimum(a, row)
    chosen = fg.where(a > b, a, b * col)
    logic = ((a >= row) & (b < col)) | ~(a == b) | (a != a)
    ints = i * 3 - j + fg.astype(fg.maximum(i, 2), "int64") - fg.abs(i) * i
    casts = (fg.astype(i, a.dtype) / (fg.abs(row) + 1), fg.astype(b > 0, a.dtype),
             fg.astype(row * 2.5, "int32"), fg.astype(a, "float64"))
    approximated = (fg.exp(a), fg.log(a), fg.tanh(a), fg.sigmoid(a), fg.erf(a))
    libm = (fg.sqrt(fg.abs(b)) + fg.log1p(fg.abs(b)) + fg.rsqrt(fg.abs(b) + 1) + fg.sin(b)
            + fg.cos(b) + fg.sign(b) + fg.power(fg.abs(b) + 0.5, 1.5) + fg.reciprocal(b))
    return (affine, mx, mn, chosen, logic, ints) + casts + approximated + (libm,)


def _special_values(dtype):
    """Values the float32 approximations must get right: infinities, NaN, overflow, tiny."""
    return np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 100.0, -100.0, 88.5,
                     -88.5, 1e-30, 20.0, -20.0, 0.5, 3.0], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_elementwise_kernel_matches_interpreter(dtype):
    rng = np.random.default_rng(0)
    a = np.stack([_special_values(dtype), rng.standard_normal(16).astype(dtype) * 3])
    b = rng.standard_normal((2, 16)).astype(dtype)
    b[1, 2] = np.nan  # NaN in the second operand of maximum
    row = rng.standard_normal(16).astype(dtype)
    col = rng.standard_normal((2, 1)).astype(dtype)
    s = np.asarray(0.75, dtype)
    i = rng.integers(-5, 6, (2, 16)).astype(np.int32)
    j = rng.integers(-5, 6, (2, 16)).astype(np.int64)
    with np.errstate(all="ignore"):
        f = cpu_and_interpreter(elementwise_zoo, a, b, row, col, s, i, j, **TOL[dtype])
    assert f.stats()["kernels"] <= 2  # fused, not one kernel per op
    mx = f(a, b, row, col, s, i, j)[1]
    assert np.isnan(mx[0, 6]) and np.isnan(mx[1, 2]) and np.isnan(mx).sum() == 2


def row_kernels(x, w, b):
    return (fg.softmax(x, axis=-1), fg.log_softmax(x, axis=-1), fg.layer_norm(x, w, b),
            fg.max(x, axis=1), x - fg.max(x, axis=-1, keepdims=True), fg.logsumexp(x, axis=1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_row_kernels_match_interpreter(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 7)).astype(dtype)
    x[2, 3] = x[2, 5] = x[2].max() + 1  # a tie for the row maximum
    x[4, :] = 2.0  # a constant row: all tied, zero variance
    w, b = rng.standard_normal(7).astype(dtype), rng.standard_normal(7).astype(dtype)
    f = cpu_and_interpreter(row_kernels, x, w, b, **TOL[dtype])
    kinds = re.findall(r"= (row\+column|row|column|elementwise)\b", run_body(f.source()))
    assert "row" in kinds


def max_with_ties(x, w):
    return fg.sum(fg.max(x, axis=1) * w)


def test_max_gradient_with_ties_matches_interpreter():
    """Tied maxima share the gradient, as in the interpreter."""
    x = np.array([[1, 3, 3, 0], [2, 2, 2, 2], [5, 1, 0, 5]], np.float32)
    w = np.array([1, 2, 3], np.float32)
    f = grads_cpu_and_interpreter(max_with_ties, x, w)
    _, g = f(x, w)
    np.testing.assert_allclose(g[1], [0.5, 0.5, 0.5, 0.5])  # four-way tie, weight 2


def column_kernels(x):
    return fg.sum(x, axis=0), fg.mean(x, axis=0), fg.sum(x), fg.mean(x * x)


def test_column_kernels_match_interpreter():
    x = np.random.default_rng(2).standard_normal((19, 5)).astype(np.float32)  # uneven chunks
    f = cpu_and_interpreter(column_kernels, x)
    assert "= column" in run_body(f.source())


def test_column_max_kernel_matches_interpreter():
    x = np.random.default_rng(3).standard_normal((11, 4)).astype(np.float32)
    x[3, 2] = np.nan
    cpu_and_interpreter(lambda x: fg.max(x, axis=0), x)


def test_mean_of_all_elements():
    """A full reduction followed by scalar arithmetic (one row: the result is a scalar)."""
    x = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    cpu_and_interpreter(lambda x: (fg.mean(x), fg.sum(x) * 2.0), x)


def test_column_kernel_with_sum_and_max():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    cpu_and_interpreter(lambda x: (fg.sum(x, axis=0), fg.max(x, axis=0)), x)


def gemms_2d(a, b, at, bt):
    """The four transpose-flag combinations (the layout pass turns .T into flags)."""
    return a @ b, at.T @ b, a @ bt.T, at.T @ bt.T


def gemms_batched(a4, b2, b4, c3, d4):
    return (a4 @ b2,  # (2,3,4,5) @ (5,6): batch broadcast of a matrix
            fg.matmul(a4, b4),  # (2,3,4,5) @ (2,3,5,6)
            fg.matmul(fg.swapaxes(a4, -1, -2), a4 * 1.5),  # transposed batched operand
            fg.matmul(c3, d4))  # (3,4,5) @ (2,1,5,6) -> (2,3,4,6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_gemm_2d_transpose_flags_match_interpreter(dtype):
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal((4, 5)).astype(dtype)
    at, bt = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
    f = cpu_and_interpreter(gemms_2d, a, b, at, bt, **TOL[dtype])
    assert gemm_flags(f.source()) == {("False", "False"), ("True", "False"),
                                      ("False", "True"), ("True", "True")}


def test_gemm_batched_and_broadcast_batches_match_interpreter():
    rng = np.random.default_rng(5)
    shapes = [(2, 3, 4, 5), (5, 6), (2, 3, 5, 6), (3, 4, 5), (2, 1, 5, 6)]
    args = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    f = cpu_and_interpreter(gemms_batched, *args)
    assert "gemm" in library_calls(f.source())


def test_gemm_of_an_array_with_itself():
    """x @ x.T and x.T @ x: one kernel operand used twice."""
    a = np.random.default_rng(6).standard_normal((3, 4)).astype(np.float32)
    cpu_and_interpreter(lambda a: (a @ a.T, a.T @ a), a)


def integer_matmuls(a, b, bt32, c32):
    return a @ b, c32 @ bt32.T  # int64 2-D; int32 batched with a transposed operand


def test_integer_matmul_uses_gemm_loops():
    rng = np.random.default_rng(7)
    a, b = rng.integers(-4, 5, (3, 4)), rng.integers(-4, 5, (4, 5))
    bt32 = np.ascontiguousarray(b.T).astype(np.int32)
    c32 = rng.integers(-4, 5, (2, 3, 4)).astype(np.int32)
    f = cpu_and_interpreter(integer_matmuls, a, b, bt32, c32)
    assert "gemm_loops" in library_calls(f.source())
    assert gemm_flags(f.source()) == {("False", "False"), ("False", "True")}


def movement(x, y, table, ids, labels):
    return (fg.transpose(x, (2, 0, 1)),
            x[::-1, 1:4:2, ::-2],  # negative steps
            fg.pad(x, ((1, 0), (0, 2), (1, 1)), constant_values=0.5),
            fg.concatenate([x, y], axis=1),
            fg.embedding(ids, table),  # gather with repeated ids
            fg.argmax(x, axis=1),
            fg.one_hot(labels, 6) @ table,  # an iota-based one_hot feeding a GEMM
            lax.iota((3, 5, 6), 1, "float32"),  # the library iota (axis 1 is neither i nor j)
            fg.sum(x, axis=1), fg.max(x, axis=1))  # middle-axis reductions


def test_opaque_kernels_match_interpreter():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    x[1, 0, 2] = x[1, 3, 2] = 9.0  # an argmax tie: the first index wins
    y = rng.standard_normal((3, 2, 5)).astype(np.float32)
    table = rng.standard_normal((6, 3)).astype(np.float32)
    ids = np.array([[1, 4, 1], [0, 1, 5]])
    labels = np.array([2, 0, 5, 2])
    f = cpu_and_interpreter(movement, x, y, table, ids, labels)
    calls = library_calls(f.source())
    assert {"strided_copy", "fill", "gather", "argmax", "iota", "reduce_middle", "gemm"} <= calls


def test_argmax_ties_and_nan_match_interpreter():
    x = np.array([[1, 3, 3, 0], [np.nan, 1, 2, np.nan], [5, 5, 5, 5], [0, 1, np.nan, 7]],
                 np.float32)
    cpu_and_interpreter(lambda x: (fg.argmax(x, axis=-1), fg.argmax(x, axis=0), fg.argmax(x)), x)


def embedding_loss(table, ids):
    return fg.sum(fg.tanh(fg.embedding(ids, table)) * 2.0)


def test_scatter_add_via_embedding_gradient_with_repeated_ids():
    rng = np.random.default_rng(9)
    table = rng.standard_normal((6, 3)).astype(np.float32)
    ids = np.array([[1, 4, 1], [0, 1, 1]])  # id 1 four times, ids 2, 3, 5 never
    f = grads_cpu_and_interpreter(embedding_loss, table, ids)
    _, g = f(table, ids)
    assert np.all(g[[2, 3, 5]] == 0) and np.all(g[1] != 0)
    assert {"gather", "scatter_add"} <= library_calls(f.source())


def dropout_fn(x32, x64, seed):
    return (fg.dropout(x32, 0.5, key=(seed, np.int64(3))), fg.dropout(x64, 0.25, key=seed))


def test_random_uniform_via_dropout_is_bitwise_the_interpreters():
    rng = np.random.default_rng(10)
    x32 = rng.standard_normal((6, 7)).astype(np.float32)
    x64 = rng.standard_normal((5, 3)).astype(np.float64)
    seed = np.asarray(1234, np.int64)
    f = fg.jit(dropout_fn, target="cpu")
    got = f(x32, x64, seed)
    want = fg.jit(dropout_fn, target="interpret")(x32, x64, seed)
    assert_tree_bitwise(got, want)
    assert 0 < np.count_nonzero(got[0]) < got[0].size
    assert "random_uniform" in library_calls(f.source())


# =================================================================================================
# 2. end-to-end: gradients of whole models and training steps
# =================================================================================================


def test_mlp_gradients_match_interpreter():
    (x, y), = mlp_batches(1)
    grads_cpu_and_interpreter(mlp_loss, mlp_params(), x, y)


def test_layer_norm_gelu_mlp_gradients_match_interpreter():
    """Default approximations of tanh and erf (and exp, rsqrt...) within ~1e-5 of NumPy."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((6, 5)) * 2).astype(np.float32)
    t = rng.standard_normal((6, 4)).astype(np.float32)
    f = grads_cpu_and_interpreter(ln_gelu_loss, ln_gelu_params(), x, t)
    kernels = f.source().split("# ---- kernel", 1)[1]
    assert "tanh_f32(" in kernels and "erf_f32(" in kernels  # the approximations are in use


def test_row_kernel_passes_share_values_through_the_row_cache():
    """LayerNorm's backward makes several passes over a row (two row sums, then the stores):
    what a later pass needs from an earlier one is stored in the row cache and loaded
    there, not recomputed from all its full-size operands. Results still match the oracle."""
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((6, 5)) * 2).astype(np.float32)
    t = rng.standard_normal((6, 4)).astype(np.float32)
    f = grads_cpu_and_interpreter(ln_gelu_loss, ln_gelu_params(), x, t)
    kernels = f.source().split("# ---- kernel", 1)[1]
    stores = re.findall(r"rc\[(\d+) \* C \+ j\] = ", kernels)
    loads = re.findall(r"\(rc\[(\d+) \* C \+ j\]\)  # \S+ from the row cache", kernels)
    assert stores and set(loads) == set(stores)


def test_small_cnn_gradients_match_interpreter():
    """conv2d is unfold + GEMM; the gradient with respect to the image folds."""
    rng = np.random.default_rng(12)
    p = {"conv_w": (rng.standard_normal((2, 1, 3, 3)) * 0.5).astype(np.float32),
         "conv_b": (rng.standard_normal(2) * 0.1).astype(np.float32),
         "fc_w": (rng.standard_normal((32, 3)) * 0.3).astype(np.float32),
         "fc_b": np.zeros(3, np.float32)}
    x, y = rng.standard_normal((2, 1, 4, 4)).astype(np.float32), np.array([2, 0])
    f = grads_cpu_and_interpreter(cnn_loss, p, x, y, argnums=(0, 1))
    assert {"unfold", "fold"} <= library_calls(f.source())


def test_attention_block_gradients_match_interpreter():
    rng = np.random.default_rng(13)
    d = 4
    p = {n: (rng.standard_normal((d, d)) / 2).astype(np.float32) for n in ("wq", "wk", "wv", "wo")}
    p["bo"] = (0.1 * rng.standard_normal(d)).astype(np.float32)
    x = rng.standard_normal((2, 3, d)).astype(np.float32)
    w = rng.standard_normal((2, 3, d)).astype(np.float32)
    grads_cpu_and_interpreter(attention_loss, p, x, w)


def softmax_regression_loss(p, x, y):
    logits = x @ p["w"]
    if "b" in p:  # static: decided when the function is traced
        logits = logits + p["b"]
    return fg.cross_entropy(logits, y)


def softmax_regression_params(bias=True):
    rng = np.random.default_rng(15)
    p = {"w": (rng.standard_normal((4, 3)) * 0.5).astype(np.float32)}
    if bias:
        p["b"] = (rng.standard_normal(3) * 0.1).astype(np.float32)
    return p


def weights_only():
    return softmax_regression_params(bias=False)


# name -> (loss, params, optimizer, trainable). Adam trains the MLP (its compiled step is reused
# by the in-place, loss-guard and source tests); the others a one-layer model (cheaper compiles),
# SGD with its bias frozen
TRAINING = {
    "sgd_momentum": (softmax_regression_loss, softmax_regression_params,
                     lambda: fg.optim.SGD(lr=0.1, momentum=0.9), {"w": True, "b": False}),
    "adam": (mlp_loss, mlp_params, lambda: fg.optim.Adam(lr=0.05), None),
    "adamw_clip": (softmax_regression_loss, weights_only,
                   lambda: fg.optim.AdamW(lr=0.05, weight_decay=0.1, clip_norm=0.1), None),
    "rmsprop": (softmax_regression_loss, weights_only, lambda: fg.optim.RMSProp(lr=0.01), None),
}
STEPS = 3


class Trained:
    """STEPS steps on both targets from identical copies of the parameters (the loss-guard test
    takes one more on both)."""

    def __init__(self, name):
        loss, params, optimizer, trainable = TRAINING[name]
        self.initial = params()
        self.p_cpu, self.p_ref = params(), params()
        self.leaves = dict(self.p_cpu)
        self.cpu = fg.train_step(loss, optimizer(), trainable=trainable, target="cpu")
        self.ref = fg.train_step(loss, optimizer(), trainable=trainable, target="interpret")
        self.losses = []
        self.slots_after_first = None
        for x, y in mlp_batches(STEPS):
            self.losses.append((self.cpu(self.p_cpu, x, y), self.ref(self.p_ref, x, y)))
            if self.slots_after_first is None:
                self.slots_after_first = flatten(self.cpu.state)[0]


_TRAINED: dict = {}


def trained(name) -> Trained:
    """Each training configuration is compiled and run once per session."""
    if name not in _TRAINED:
        _TRAINED[name] = Trained(name)
    return _TRAINED[name]


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_train_step_matches_interpreter(name):
    t = trained(name)
    for loss_cpu, loss_ref in t.losses:
        np.testing.assert_allclose(loss_cpu, loss_ref, **STEP_TOL)
    assert t.losses[-1][0] < t.losses[0][0]  # it learns
    assert_tree_close(t.p_cpu, t.p_ref, **STEP_TOL)
    assert t.cpu.state.keys() == t.ref.state.keys()
    assert_tree_close(t.cpu.state, t.ref.state, **STEP_TOL)
    assert t.cpu.state["step"] == t.ref.state["step"] >= STEPS


def test_train_step_kernel_kinds():
    """Cross-entropy forward + backward fuse into one row+column kernel; the bias gradient and
    its update into a column kernel; the optimizer updates of the weights are elementwise."""
    kinds = set(re.findall(r"= (row\+column|row|column|elementwise|gemm|opaque)\b",
                           run_body(trained("adam").cpu.source())))
    assert {"row+column", "column", "elementwise", "gemm"} <= kinds


# =================================================================================================
# 3. in-place semantics, frozen parameters, the loss guard, non-contiguous parameters
# =================================================================================================


def test_parameters_and_state_updated_in_place():
    t = trained("adam")
    for k, v in t.p_cpu.items():
        assert v is t.leaves[k]  # the user's own arrays, updated in place
        assert not np.array_equal(v, t.initial[k])
    for first, now in zip(t.slots_after_first, flatten(t.cpu.state)[0]):
        assert first is now or isinstance(now, int)  # optimizer state too (but the step count)


def test_in_place_updates_pass_each_array_once():
    """An output the plan writes into an input's storage is stored through that input's own
    argument: the same buffer passed twice (as a0 and o0) would make LLVM's runtime alias
    check fail and run the unvectorised loop."""
    source = trained("adam").cpu.source()
    calls = re.findall(r"^    ((?:elementwise|row|column|rowcolumn)_\w+)\((.*)\)  #",
                       run_body(source), re.M)
    in_place = [name for name, _ in calls if re.search(r"_o\d+a\d+$", name)]
    assert len(in_place) >= 2  # Adam's parameter, exp_avg and exp_avg_sq updates at least
    for name, args in calls:
        arrays = [a for a in args.split(", ") if not a.startswith(("dims", "fconst"))]
        assert len(arrays) == len(set(arrays)), (name, args)
        for k, m in re.findall(r"_o(\d+)a(\d+)", name):
            kernel = source.split(f"# ---- kernel {name} ----", 1)[1].split("# ---- ")[0]
            assert f"o{k} is stored into a{m}" in kernel


def test_frozen_parameters_bitwise_unchanged():
    t = trained("sgd_momentum")  # trainable: b frozen
    assert t.p_cpu["b"].tobytes() == t.initial["b"].tobytes()
    assert t.cpu.state["momentum"]["b"] is None
    assert not np.array_equal(t.p_cpu["w"], t.initial["w"])


def test_non_finite_loss_leaves_params_and_state_bitwise_unchanged():
    t = trained("adam")
    p_before, state_before = tree_copy(t.p_cpu), copy.deepcopy(t.cpu.state)
    (x, y), = mlp_batches(1, seed=5)
    for bad in (np.inf, np.nan):
        x_bad = x.copy()
        x_bad[3, 1] = bad
        with pytest.raises(fg.NonFiniteLossError, match="not applied"):
            t.cpu(t.p_cpu, x_bad, y)
        assert_tree_bitwise(t.p_cpu, p_before)
        assert_tree_bitwise(t.cpu.state, state_before)
    # the step count did not advance either: the next good step still matches the interpreter
    # (Adam's bias correction depends on it)
    np.testing.assert_allclose(t.cpu(t.p_cpu, x, y), t.ref(t.p_ref, x, y), **STEP_TOL)
    assert_tree_close(t.p_cpu, t.p_ref, **STEP_TOL)
    assert_tree_close(t.cpu.state, t.ref.state, **STEP_TOL)


def _fortran_w1():
    p = mlp_params()
    p["w1"] = np.asfortranarray(p["w1"])
    return p


def test_non_contiguous_parameter_is_a_clear_error():
    p = _fortran_w1()
    before = p["w1"].copy()
    step = fg.train_step(mlp_loss, TRAINING["adam"][2](), target="cpu")
    with pytest.raises(ValueError, match="C-contiguous"):
        step(p, *mlp_batches(1)[0])
    assert np.array_equal(p["w1"], before) and step.t == 0


def test_non_contiguous_parameter_error_names_the_parameter():
    step = fg.train_step(mlp_loss, TRAINING["adam"][2](), target="cpu")
    with pytest.raises(ValueError, match=r"w1"):
        step(_fortran_w1(), *mlp_batches(1)[0])


def test_step_usable_after_non_contiguous_error():
    p = _fortran_w1()
    step = fg.train_step(mlp_loss, TRAINING["adam"][2](), target="cpu")
    with pytest.raises(ValueError, match="C-contiguous"):
        step(p, *mlp_batches(1)[0])
    p["w1"] = np.ascontiguousarray(p["w1"])
    assert np.isfinite(step(p, *mlp_batches(1)[0]))


# =================================================================================================
# 4. transcendentals: exact libm math on request
# =================================================================================================


def exact_math_model(p, x):
    """A structure used only here, so its kernels are always generated with exact math."""
    h = fg.gelu(fg.layer_norm(x @ p["w1"], p["ln_w"]), approximate="tanh")
    h = fg.gelu(h @ p["w2"], approximate="none")
    return fg.sigmoid(h) + fg.exp(-h * h) + fg.log(h * h + 1e-3)


def test_exact_math_path_matches_interpreter(monkeypatch):
    monkeypatch.setenv("FUSEGRAD_EXACT_MATH", "1")  # read when the function is compiled
    rng = np.random.default_rng(14)
    p = {"w1": rng.standard_normal((5, 8)).astype(np.float32),
         "ln_w": (1 + 0.2 * rng.standard_normal(8)).astype(np.float32),
         "w2": (rng.standard_normal((8, 4)) * 0.5).astype(np.float32)}
    x = rng.standard_normal((6, 5)).astype(np.float32)
    f = cpu_and_interpreter(exact_math_model, p, x)
    kernels = f.source().split("# ---- kernel", 1)[1]
    assert not re.search(r"\b(exp|log|tanh|erf|sigmoid)_f32\(", kernels)
    assert "np.tanh(" in kernels and "math.erf(" in kernels


def _bound_kernels(stats):
    """The loop-kernel functions the loaded driver module actually calls."""
    name = os.path.basename(stats["driver"])[:-3]
    driver = sys.modules[f"fusegrad_kernels.{name}"]
    return [f for n, f in vars(driver).items()
            if re.match(r"(elementwise|row|column|rowcolumn)_[0-9a-f]+$", n)]


def tanh_scaled(x):
    return fg.tanh(x) * 3.0 - x


def test_switching_to_exact_math_runs_exact_kernels(monkeypatch):
    """Exact and approximate kernels of one structure share a name (and file): the driver of
    each must still call its own variant, in this process and from Numba's cache."""
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    monkeypatch.setenv("FUSEGRAD_EXACT_MATH", "0")
    approx = fg.jit(tanh_scaled, target="cpu")
    approx(x)
    monkeypatch.setenv("FUSEGRAD_EXACT_MATH", "1")
    exact = fg.jit(tanh_scaled, target="cpu")
    np.testing.assert_allclose(exact(x), np.tanh(x) * 3 - x, **F32)
    assert "tanh_f32(" not in exact.source().split("# ---- kernel")[1]
    for k in _bound_kernels(exact.stats()):
        assert "tanh_f32" not in k.py_func.__code__.co_names


# =================================================================================================
# 5. the generated source is readable
# =================================================================================================


# locals computed from IR values (tN), operand loads (xN), reduction accumulators (accN, named on
# the line that starts them) and column partial sums (scratch[...] +=)
COMPUTES = re.compile(r"^\s*(?:t|x)\d+ = |^\s*acc\d+ = np\.|^\s*scratch\[.*\] \+= ")
COMBINE = re.compile(r"^\s*acc\d+ = p\d+\[")  # the first chunk's partial of a column reduction


def _kernel_sections(source):
    parts = source.split("# ---- kernel ")[1:]
    return {p.split(" ", 1)[0]: p for p in parts}


def test_source_names_ir_values_and_user_lines():
    source = trained("adam").cpu.source()
    driver = driver_of(source)
    assert "def run(" in driver
    imported = re.findall(r"^from fusegrad_kernels\.(\w+) import", driver, re.M)
    sections = _kernel_sections(source)
    assert imported and set(imported) == set(sections)
    for name, text in sections.items():
        assert f"def {name}(" in text
        for line in text.splitlines():
            if COMPUTES.match(line):
                assert re.search(r"# %\d+", line), f"{name}: no IR value named on {line!r}"
    relu_line = line_of(mlp_loss, "fg.relu(")
    head_line = line_of(mlp_loss, "cross_entropy")
    here = os.path.basename(__file__)
    kernels = "".join(sections.values())
    assert f"({here}:{relu_line})" in kernels and f"({here}:{head_line})" in kernels
    # the driver: every kernel call says which IR values it computes and the kernel's kind
    calls = [ln for ln in run_body(source).splitlines() if re.match(r"^    [a-z_]\w*\(", ln)]
    assert len(calls) >= 8
    for ln in calls:
        assert re.search(r"# %\d+(, %\d+)* = (elementwise|row|column|row\+column|gemm|opaque)\b",
                         ln), ln
    assert any(f"({here}:{head_line})" in ln for ln in calls)
    assert "if not np.isfinite(" in run_body(source)  # the loss guard, before any update


def test_source_combine_lines_name_ir_values():
    combine = [ln for text in _kernel_sections(trained("adam").cpu.source()).values()
               for ln in text.splitlines() if COMBINE.match(ln)]
    assert combine
    for ln in combine:
        assert re.search(r"# %\d+", ln), ln


def test_crosscheck_catches_a_wrong_kernel(monkeypatch):
    """FUSEGRAD_CROSSCHECK=1 (the suite's setting, conftest.py) compares every compiled run
    with the interpreter: a kernel 0.1 % off fails the run, naming the output."""
    from fusegrad.compiler.codegen import cpu_expr

    right = cpu_expr.CPU_EXPR["abs"]
    monkeypatch.setitem(cpu_expr.CPU_EXPR, "abs",
                        lambda args, *rest: f"({right(args, *rest)} * np.float32(1.001))")
    monkeypatch.setenv("FUSEGRAD_CROSSCHECK", "1")
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    with pytest.raises(AssertionError, match=r"differ: out \(float32\[3, 4\]\) at \(0, 0\): 3.00"):
        fg.jit(lambda x: fg.abs(x) + 1.0, target="cpu")(x)
    monkeypatch.setenv("FUSEGRAD_CROSSCHECK", "0")
    assert fg.jit(lambda x: fg.abs(x) + 1.0, target="cpu")(x)[0, 0] == np.float32(2 * 1.001 + 1)


def test_hot_loops_are_vectorised(tmp_path, monkeypatch):
    """LLVM vectorises the loops of the LayerNorm+GELU step's row, row+column and in-place Adam
    kernels (vector float operations in their IR). Guards the code shapes that make this
    possible: in-place outputs through the input's own argument, column partials and the row
    cache as arrays of their own. (A fresh cache directory: a kernel Numba loads from its cache
    has no IR to inspect.)"""
    import importlib

    monkeypatch.setenv("FUSEGRAD_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    t = rng.standard_normal((64, 4)).astype(np.float32)
    step = fg.train_step(ln_gelu_loss, fg.optim.Adam(0.01), target="cpu")
    step(ln_gelu_params(), x, t)
    names = sorted(set(re.findall(r"^    ((?:row|rowcolumn|elementwise)_[0-9a-f]+\w*)\(",
                                  run_body(step.source()), re.M)))
    hot = [n for n in names if n.startswith("row") or re.search(r"_o\d+a\d+", n)]
    assert any(n.startswith("rowcolumn") for n in hot) and any(n.startswith("row_") for n in hot)
    for name in hot:
        kernel = getattr(importlib.import_module(f"fusegrad_kernels.{name}"), name)
        ir = "\n".join(kernel.inspect_llvm().values())
        vector = len(re.findall(r"= f(?:mul|add|sub) [^\n]*<\d+ x float>", ir))
        scalar = len(re.findall(r"= f(?:mul|add|sub) (?:[a-z]+ )*float ", ir))
        # scalar remainder loops and per-call scalars stay; unvectorised, the LayerNorm-backward
        # kernel had 13 vector float ops to 112 scalar ones, vectorised 69 to 114
        assert vector >= scalar / 4, f"{name}: {vector} vector and {scalar} scalar float ops"
