"""What the CUDA backend is checked on: every kernel kind and whole training steps, each case
running target="cuda", "cpu" and "interpret" on the same inputs and raising if they disagree.

Run by cuda_sim_cases.py (on Numba's CUDA simulator, or a GPU) in a process of its own, which
also compiles some of these models to PTX. Shapes are tiny: on the simulator every CUDA thread
is an OS thread. The models test_cpu_backend.py runs too live in backend_models.py (their CPU
kernels are then in the disk cache); that module and tree_checks.py are imported from this
directory, which is on sys.path both under pytest and in cuda_sim_cases.py's process.
"""
from __future__ import annotations

import re

import numpy as np

import fusegrad as fg
from fusegrad.pytree import flatten

from backend_models import (attention_inputs, attention_loss, cnn_inputs, cnn_loss, dropout_fn,
                            dropout_inputs, elementwise_inputs, elementwise_zoo, embedding_inputs,
                            embedding_loss, ln_gelu_loss, ln_gelu_params, mlp_batches, mlp_loss,
                            mlp_params, movement, movement_inputs, row_kernels,
                            softmax_regression_loss, softmax_regression_params)
from tree_checks import (F32, F64, STEP_TOL, TOL, assert_tree_bitwise, assert_tree_close,
                         tree_copy)

CASES: dict = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


# ---- helpers -------------------------------------------------------------------------------------

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


# ---- 1. every kernel kind ----------------------------------------------------------------------

def _elementwise(dtype):
    f = three_targets(elementwise_zoo, *elementwise_inputs(dtype), tol=TOL[dtype])
    assert launched(f.source(), "elementwise_")


@case
def elementwise_f32():
    _elementwise(np.float32)


@case
def elementwise_f64():
    _elementwise(np.float64)


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
    from fusegrad.kernels.cuda_gemm import _cupy_gemm

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


@case
def opaque_movement_kernels():
    f = three_targets(movement, *movement_inputs())
    for fn in ("strided_copy(", "fill(", "gather(", "argmax(", "iota(", "reduce_middle("):
        assert launched(f.source(), fn), fn


@case
def argmax_ties_and_nan():
    x = np.array([[1, 3, 3, 0], [np.nan, 1, 2, np.nan], [5, 5, 5, 5], [0, 1, np.nan, 7]],
                 np.float32)
    three_targets(lambda x: (fg.argmax(x, axis=-1), fg.argmax(x, axis=0), fg.argmax(x)), x)


@case
def embedding_gradient_scatter_add():
    f = three_targets(embedding_loss, *embedding_inputs(), grads=True)
    assert launched(f.source(), "scatter_add(")


@case
def dropout_random_bits_match_the_interpreter():
    args = dropout_inputs()
    got = fg.jit(dropout_fn, target="cuda")(*args)
    assert_tree_bitwise(got, fg.jit(dropout_fn, target="interpret")(*args), "dropout")


@case
def small_cnn_gradients_unfold_fold():
    f = three_targets(cnn_loss, *cnn_inputs(), grads=True, argnums=(0, 1))
    assert launched(f.source(), "unfold(") and launched(f.source(), "fold(")


@case
def attention_block_gradients():
    three_targets(attention_loss, *attention_inputs(), grads=True)


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
    assert "backend_models.py:" in kernels  # the user's source lines (mlp_loss's)
