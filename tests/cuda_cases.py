"""What the CUDA backend is checked on: every kernel kind and whole training steps, each case
running target="cuda", "cpu" and "interpret" on the same inputs and raising if they disagree.

Run by cuda_sim_cases.py (on Numba's CUDA simulator, or a GPU) in a process of its own, which
also compiles some of these models to PTX. Shapes are tiny: on the simulator every CUDA thread
is an OS thread.
"""
from __future__ import annotations

import math
import re

import numpy as np

import fusegrad as fg
from fusegrad.compiler import lax
from fusegrad.pytree import flatten, unflatten

F32 = dict(rtol=1e-5, atol=1e-6)
F64 = dict(rtol=1e-11, atol=1e-12)
TOL = {np.float32: F32, np.float64: F64}
STEP_TOL = dict(rtol=1e-4, atol=1e-5)
CASES: dict = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


# ---- helpers -------------------------------------------------------------------------------------

def assert_tree_close(got, want, what, **tol):
    g_leaves, g_tree = flatten(fg.to_numpy(got))
    w_leaves, w_tree = flatten(fg.to_numpy(want))
    assert g_tree == w_tree, f"{what}: structure {g_tree} != {w_tree}"
    for k, (g, w) in enumerate(zip(g_leaves, w_leaves)):
        g, w = np.asarray(g), np.asarray(w)
        assert (g.dtype, g.shape) == (w.dtype, w.shape), f"{what}: leaf {k} {g.dtype}{g.shape} " \
                                                         f"vs {w.dtype}{w.shape}"
        if g.dtype.kind == "f":
            np.testing.assert_allclose(g, w, equal_nan=True, err_msg=f"{what}: leaf {k}", **tol)
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"{what}: leaf {k}")


def tree_copy(tree):
    """Host copies of every array leaf (NumPy or device)."""
    leaves, treedef = flatten(fg.to_numpy(tree))
    return unflatten(treedef, [np.array(x, copy=True) if isinstance(x, np.ndarray) else x
                               for x in leaves])


def assert_tree_bitwise(a, b, what):
    a_leaves, _ = flatten(fg.to_numpy(a))
    b_leaves, _ = flatten(fg.to_numpy(b))
    for k, (x, y) in enumerate(zip(a_leaves, b_leaves)):
        if isinstance(x, (int, np.integer)):
            assert x == y, f"{what}: leaf {k}"
            continue
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), f"{what}: leaf {k} changed"


def three_targets(fn, *args, tol=F32, grads=False, argnums=0):
    """fn on cuda, cpu and the interpreter (or value_and_grad of it): all agree. Returns the
    cuda compiled function."""
    def make(target):
        if grads:
            return fg.value_and_grad(fn, argnums=argnums, target=target)
        return fg.jit(fn, target=target)

    compiled = make("cuda")
    got = compiled(*args)
    assert_tree_close(got, make("interpret")(*args), "cuda vs interpret", **tol)
    assert_tree_close(got, make("cpu")(*args), "cuda vs cpu", **tol)
    return compiled


def launched(source, pattern) -> bool:
    """Does the driver (the source before its kernels) call `pattern`?"""
    return pattern in source.split("# ---- kernel")[0].split("def run(", 1)[1]


# ---- models (the structures of test_cpu_backend.py: their CPU kernels are in the disk cache) ---

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


def attention_loss(p, x, w, heads=2):
    b, t, d = x.shape
    dh = d // heads

    def split(h):
        return fg.transpose(fg.reshape(h, (b, t, heads, dh)), (0, 2, 1, 3))

    q, k, v = (split(x @ p[name]) for name in ("wq", "wk", "wv"))
    scores = fg.matmul(q, fg.swapaxes(k, -1, -2)) / math.sqrt(dh)
    out = fg.matmul(fg.softmax(scores, axis=-1), v)
    out = fg.reshape(fg.transpose(out, (0, 2, 1, 3)), (b, t, d))
    return fg.sum((out @ p["wo"] + p["bo"]) * w)


def softmax_regression_loss(p, x, y):
    logits = x @ p["w"]
    if "b" in p:
        logits = logits + p["b"]
    return fg.cross_entropy(logits, y)


def softmax_regression_params():
    rng = np.random.default_rng(15)
    return {"w": (rng.standard_normal((4, 3)) * 0.5).astype(np.float32),
            "b": (rng.standard_normal(3) * 0.1).astype(np.float32)}


# ---- 1. every kernel kind ----------------------------------------------------------------------

def elementwise_zoo(a, b, row, col, s, i, j):
    affine = a * row + col * s - 1.5
    mx, mn = fg.maximum(a, b), fg.minimum(a, row)
    chosen = fg.where(a > b, a, b * col)
    logic = ((a >= row) & (b < col)) | ~(a == b) | (a != a)
    ints = i * 3 - j + fg.astype(fg.maximum(i, 2), "int64") - fg.abs(i) * i
    casts = (fg.astype(i, a.dtype) / (fg.abs(row) + 1), fg.astype(b > 0, a.dtype),
             fg.astype(row * 2.5, "int32"), fg.astype(a, "float64"))
    transcendental = (fg.exp(a), fg.log(a), fg.tanh(a), fg.sigmoid(a), fg.erf(a))
    libm = (fg.sqrt(fg.abs(b)) + fg.log1p(fg.abs(b)) + fg.rsqrt(fg.abs(b) + 1) + fg.sin(b)
            + fg.cos(b) + fg.sign(b) + fg.power(fg.abs(b) + 0.5, 1.5) + fg.reciprocal(b))
    return (affine, mx, mn, chosen, logic, ints) + casts + transcendental + (libm,)


def _special_values(dtype):
    return np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 100.0, -100.0, 88.5,
                     -88.5, 1e-30, 20.0, -20.0, 0.5, 3.0], dtype)


def _elementwise(dtype):
    rng = np.random.default_rng(0)
    a = np.stack([_special_values(dtype), rng.standard_normal(16).astype(dtype) * 3])
    b = rng.standard_normal((2, 16)).astype(dtype)
    b[1, 2] = np.nan
    row = rng.standard_normal(16).astype(dtype)
    col = rng.standard_normal((2, 1)).astype(dtype)
    s = np.asarray(0.75, dtype)
    i = rng.integers(-5, 6, (2, 16)).astype(np.int32)
    j = rng.integers(-5, 6, (2, 16)).astype(np.int64)
    f = three_targets(elementwise_zoo, a, b, row, col, s, i, j, tol=TOL[dtype])
    assert launched(f.source(), "elementwise_")


@case
def elementwise_f32():
    _elementwise(np.float32)


@case
def elementwise_f64():
    _elementwise(np.float64)


def row_kernels(x, w, b):
    return (fg.softmax(x, axis=-1), fg.log_softmax(x, axis=-1), fg.layer_norm(x, w, b),
            fg.max(x, axis=1), x - fg.max(x, axis=-1, keepdims=True), fg.logsumexp(x, axis=1))


@case
def row_softmax_layer_norm():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 21)).astype(np.float32)  # C > threads: strided rows
    x[2, 3] = x[2, 5] = x[2].max() + 1  # a tie for the row maximum
    x[4, :] = 2.0  # a constant row: all tied, zero variance
    x[3, 7] = np.nan  # NaN propagates through max
    w, b = rng.standard_normal(21).astype(np.float32), rng.standard_normal(21).astype(np.float32)
    f = three_targets(row_kernels, x, w, b)
    assert launched(f.source(), "row_")


def column_kernels(x):
    return fg.sum(x, axis=0), fg.mean(x, axis=0), fg.sum(x), fg.mean(x * x), fg.max(x, axis=0)


@case
def column_sums_and_means():
    x = np.random.default_rng(2).standard_normal((19, 5)).astype(np.float32)  # uneven chunks
    x[3, 2] = np.nan
    f = three_targets(column_kernels, x)
    assert launched(f.source(), "_combine[")


@case
def row_and_column_cross_entropy_grads():
    """Cross-entropy forward and backward: a row+column kernel (per-row log-sum-exp, the batch
    mean over rows, the bias gradient over columns)."""
    p = softmax_regression_params()
    x, y = mlp_batches(1)[0]
    f = three_targets(softmax_regression_loss, p, x, y, grads=True)
    assert launched(f.source(), "rowcolumn_")


def gemms(a, b, at, bt, a4, b2, b4, c3, d4):
    return (a @ b, at.T @ b, a @ bt.T, at.T @ bt.T,  # the four transpose flags
            a4 @ b2, fg.matmul(a4, b4), fg.matmul(fg.swapaxes(a4, -1, -2), a4 * 1.5),
            fg.matmul(c3, d4))  # batched, broadcast batches


@case
def gemm_transpose_flags_and_batches():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((3, 9)).astype(np.float32), rng.standard_normal((9, 5)).astype(
        np.float32)
    at, bt = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
    shapes = [(2, 3, 4, 5), (5, 6), (2, 3, 5, 6), (3, 4, 5), (2, 1, 5, 6)]
    batched = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    f = three_targets(gemms, a, b, at, bt, *batched)
    driver = f.source().split("# ---- kernel")[0]
    for flags in ("False, False", "True, False", "False, True", "True, True"):
        assert f"{flags})  #" in driver, flags


@case
def gemm_float64_and_integers():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    ai, bi = rng.integers(-4, 5, (3, 4)), rng.integers(-4, 5, (5, 4)).astype(np.int32)
    ci = rng.integers(-4, 5, (2, 3, 4)).astype(np.int32)
    three_targets(lambda a, b, ai, bi, ci: (a @ b, a.T.T @ b * 2.0, ci @ bi.T), a, b, ai, bi, ci,
                  tol=F64)


@case
def cublas_path_batching_with_numpy_standing_in_for_cupy():
    """The CuPy (cuBLAS) GEMM path, whose views and batch broadcasting NumPy can run too: every
    transpose flag and batch pattern against np.matmul."""
    from fusegrad.compiler.codegen.cuda_gemm import _cupy_gemm

    rng = np.random.default_rng(5)
    m, n, k = 3, 4, 5
    for batch, a_batch, b_batch in ((1, 1, 1), (6, 6, 6), (6, 1, 6), (6, 6, 1), (6, 3, 6),
                                    (6, 6, 2), (12, 3, 6)):
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((a_batch,) + ((k, m) if ta else (m, k)))
                b = rng.standard_normal((b_batch,) + ((n, k) if tb else (k, n)))
                out = np.zeros(batch * m * n)
                _cupy_gemm(np, a.reshape(-1), b.reshape(-1), out, batch, a_batch, b_batch,
                           m, n, k, ta, tb)
                opa = a.swapaxes(-1, -2) if ta else a
                opb = b.swapaxes(-1, -2) if tb else b
                want = [opa[i % a_batch] @ opb[i % b_batch] for i in range(batch)]
                np.testing.assert_allclose(out.reshape(batch, m, n), want, rtol=1e-12,
                                           err_msg=f"{batch, a_batch, b_batch, ta, tb}")


def movement(x, y, table, ids, labels):
    return (fg.transpose(x, (2, 0, 1)),
            x[::-1, 1:4:2, ::-2],
            fg.pad(x, ((1, 0), (0, 2), (1, 1)), constant_values=0.5),
            fg.concatenate([x, y], axis=1),
            fg.embedding(ids, table),
            fg.argmax(x, axis=1),
            fg.one_hot(labels, 6) @ table,
            lax.iota((3, 5, 6), 1, "float32"),
            fg.sum(x, axis=1), fg.max(x, axis=1))


@case
def opaque_movement_kernels():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    x[1, 0, 2] = x[1, 3, 2] = 9.0  # an argmax tie: the first index wins
    y = rng.standard_normal((3, 2, 5)).astype(np.float32)
    table = rng.standard_normal((6, 3)).astype(np.float32)
    ids = np.array([[1, 4, 1], [0, 1, 5]])
    labels = np.array([2, 0, 5, 2])
    f = three_targets(movement, x, y, table, ids, labels)
    for fn in ("strided_copy(", "fill(", "gather(", "argmax(", "iota(", "reduce_middle("):
        assert launched(f.source(), fn), fn


@case
def argmax_ties_and_nan():
    x = np.array([[1, 3, 3, 0], [np.nan, 1, 2, np.nan], [5, 5, 5, 5], [0, 1, np.nan, 7]],
                 np.float32)
    three_targets(lambda x: (fg.argmax(x, axis=-1), fg.argmax(x, axis=0), fg.argmax(x)), x)


@case
def embedding_gradient_scatter_add():
    rng = np.random.default_rng(9)
    table = rng.standard_normal((6, 3)).astype(np.float32)
    ids = np.array([[1, 4, 1], [0, 1, 1]])
    f = three_targets(lambda t, i: fg.sum(fg.tanh(fg.embedding(i, t)) * 2.0), table, ids,
                      grads=True)
    assert launched(f.source(), "scatter_add(")


@case
def dropout_random_bits_match_the_interpreter():
    rng = np.random.default_rng(10)
    x32 = rng.standard_normal((6, 7)).astype(np.float32)
    x64 = rng.standard_normal((5, 3)).astype(np.float64)
    seed = np.asarray(1234, np.int64)

    def fn(x32, x64, seed):
        return (fg.dropout(x32, 0.5, key=(seed, np.int64(3))), fg.dropout(x64, 0.25, key=seed))

    got = fg.jit(fn, target="cuda")(x32, x64, seed)
    assert_tree_bitwise(got, fg.jit(fn, target="interpret")(x32, x64, seed), "dropout")


@case
def small_cnn_gradients_unfold_fold():
    rng = np.random.default_rng(12)
    p = {"conv_w": (rng.standard_normal((2, 1, 3, 3)) * 0.5).astype(np.float32),
         "conv_b": (rng.standard_normal(2) * 0.1).astype(np.float32),
         "fc_w": (rng.standard_normal((32, 3)) * 0.3).astype(np.float32),
         "fc_b": np.zeros(3, np.float32)}
    x, y = rng.standard_normal((2, 1, 4, 4)).astype(np.float32), np.array([2, 0])
    f = three_targets(cnn_loss, p, x, y, grads=True, argnums=(0, 1))
    assert launched(f.source(), "unfold(") and launched(f.source(), "fold(")


@case
def attention_block_gradients():
    rng = np.random.default_rng(13)
    d = 4
    p = {n: (rng.standard_normal((d, d)) / 2).astype(np.float32) for n in ("wq", "wk", "wv", "wo")}
    p["bo"] = (0.1 * rng.standard_normal(d)).astype(np.float32)
    x = rng.standard_normal((2, 3, d)).astype(np.float32)
    w = rng.standard_normal((2, 3, d)).astype(np.float32)
    three_targets(attention_loss, p, x, w, grads=True)


@case
def layer_norm_gelu_gradients():
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((6, 5)) * 2).astype(np.float32)
    t = rng.standard_normal((6, 4)).astype(np.float32)
    three_targets(ln_gelu_loss, ln_gelu_params(), x, t, grads=True)


# ---- 2. training steps: the same parameters as target="cpu" and the interpreter -----------------

STEPS = 3


def _train(loss, params, optimizer, batches, trainable=None, device=False):
    """STEPS steps on cuda (NumPy or device parameters), cpu and the interpreter."""
    runs = {}
    for target in ("cuda", "cpu", "interpret"):
        p = params()
        if device and target == "cuda":
            p = fg.device_put(p, "cuda")
        step = fg.train_step(loss, optimizer(), trainable=trainable, target=target)
        losses = [step(p, *batch) for batch in batches]
        runs[target] = (step, p, losses)
    step, p, losses = runs["cuda"]
    for other in ("cpu", "interpret"):
        o_step, o_p, o_losses = runs[other]
        np.testing.assert_allclose(losses, o_losses, err_msg=f"losses vs {other}", **STEP_TOL)
        assert_tree_close(p, o_p, f"parameters vs {other}", **STEP_TOL)
        state = {k: v for k, v in step.state.items() if k != "step"}
        o_state = {k: v for k, v in o_step.state.items() if k != "step"}
        assert_tree_close(state, o_state, f"optimizer state vs {other}", **STEP_TOL)
    assert losses[-1] < losses[0]
    return runs


@case
def train_mlp_sgd_momentum_numpy_params():
    runs = _train(mlp_loss, mlp_params, lambda: fg.optim.SGD(lr=0.1, momentum=0.9),
                  mlp_batches(STEPS))
    step, p, _ = runs["cuda"]
    assert all(isinstance(v, np.ndarray) for v in p.values())  # updated in place, still NumPy


@case
def train_mlp_adam_device_params():
    initial = mlp_params()
    runs = _train(mlp_loss, mlp_params, lambda: fg.optim.Adam(lr=0.05), mlp_batches(STEPS),
                  device=True)
    step, p, _ = runs["cuda"]
    from fusegrad.ir.types import is_device_array

    assert all(is_device_array(v) for v in p.values())
    assert all(not np.array_equal(fg.to_numpy(p[k]), initial[k]) for k in initial)
    slots = [x for s in ("exp_avg", "exp_avg_sq") for x in flatten(step.state[s])[0]]
    assert slots and all(is_device_array(x) for x in slots)  # state lives on the device
    assert step.stats()["target"] == "cuda"


@case
def train_frozen_bias_sgd():
    runs = _train(softmax_regression_loss, softmax_regression_params,
                  lambda: fg.optim.SGD(lr=0.1, momentum=0.9), mlp_batches(STEPS),
                  trainable={"w": True, "b": False})
    p = runs["cuda"][1]
    assert p["b"].tobytes() == softmax_regression_params()["b"].tobytes()


def shared_row_sum(x, w):
    s = fg.sum(x, axis=1, keepdims=True)
    h = x @ w
    return fg.softmax(h, axis=-1) * s, fg.max(h, axis=1, keepdims=True) + s


@case
def in_place_per_row_value_gets_a_snapshot():
    """The memory plan stores the second output (one value per row) over `s`, which the same
    row kernel reads on every thread: the driver copies `s` to a snapshot first."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((4, 6)).astype(
        np.float32)
    f = three_targets(shared_row_sum, x, w)
    assert "snapshot of" in f.source()


@case
def multi_tensor_update_split_into_launches():
    """A multi-tensor update whose arguments do not fit one launch is split."""
    from fusegrad.compiler.codegen import cuda as cuda_codegen

    old = cuda_codegen.PARAM_BYTES
    cuda_codegen.PARAM_BYTES = 600  # room for about one parameter's update per launch
    try:
        runs = _train(mlp_loss, mlp_params, lambda: fg.optim.Adam(lr=0.05), mlp_batches(2))
    finally:
        cuda_codegen.PARAM_BYTES = old
    driver = runs["cuda"][0].source().split("# ---- kernel")[0]
    assert driver.count("multi_") >= 2


@case
def non_finite_loss_leaves_params_and_state_unchanged():
    for device in (False, True):
        p = mlp_params()
        p = fg.device_put(p, "cuda") if device else p
        step = fg.train_step(mlp_loss, fg.optim.Adam(lr=0.05), target="cuda")
        (x, y), = mlp_batches(1)
        step(p, x, y)
        p_before, state_before = tree_copy(p), tree_copy(step.state)  # host copies
        for bad in (np.inf, np.nan):
            x_bad = x.copy()
            x_bad[3, 1] = bad
            try:
                step(p, x_bad, y)
            except fg.NonFiniteLossError as e:
                assert "not applied" in str(e)
            else:
                raise AssertionError("a non-finite loss did not raise")
            assert_tree_bitwise(p, p_before, "params")
            assert_tree_bitwise(step.state, state_before, "state")
        assert step.t == 1


@case
def jit_and_grad_take_device_arrays():
    p = mlp_params()
    x, y = mlp_batches(1)[0]
    dp = fg.device_put(p, "cuda")
    dx = fg.device_put(x, "cuda")
    got = fg.value_and_grad(mlp_loss, target="cuda")(dp, dx, y)
    want = fg.value_and_grad(mlp_loss, target="interpret")(p, x, y)
    assert_tree_close(got, want, "value_and_grad on device arrays", **F32)
    assert_tree_close(fg.to_numpy(dp), p, "device_put round trip", rtol=0, atol=0)
    try:
        fg.train_step(mlp_loss, fg.optim.SGD(lr=0.1), target="cpu")(dp, x, y)
    except TypeError as e:
        assert "device array" in str(e) and "target='cuda'" in str(e)
    else:
        raise AssertionError("device params on a cpu step did not raise")
    scaled = fg.jit(lambda a, s: a * s, target="cuda")(
        fg.device_put(np.ones((2, 3), np.float32)), fg.device_put(np.float32(2.0)))  # 0-d too
    assert isinstance(scaled, np.ndarray) and np.all(scaled == 2)  # results come back as NumPy
    assert fg.to_numpy(fg.device_put(np.asfortranarray(np.eye(3)[:, :2]))).flags.c_contiguous


@case
def source_names_ir_values():
    step = fg.train_step(mlp_loss, fg.optim.Adam(lr=0.05), target="cuda")
    step(mlp_params(), *mlp_batches(1)[0])
    source = step.source()
    driver, _, kernels = source.partition("# ---- kernel")
    assert "def run(rt" in driver and "if not finite(" in driver
    assert "cuda.shared.array(THREADS" in kernels and "cuda.syncthreads()" in kernels
    for line in driver.splitlines():
        if "](" in line or line.strip().startswith("gemm("):
            assert re.search(r"# %\d+(, %\d+)* = (combine of )?"
                             r"(elementwise|row|column|row\+column|gemm|multi)\b", line), line
    computes = re.compile(r"^\s*(?:t|x|k)\d+ = |^\s*acc\d+ = (np|scratch)|^\s*o\d+\[")
    for line in kernels.splitlines():
        if computes.match(line):
            assert re.search(r"# %\d+", line), f"no IR value named on {line!r}"
    assert "cuda_cases.py:" in kernels  # the user's source lines
