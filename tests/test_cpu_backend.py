"""The CPU backend against the reference interpreter: every kernel kind (loop kernels,
GEMMs, the opaque library kernels), end-to-end gradients and training steps, in-place semantics
and the loss guard, the float32 transcendental approximations, and the readability of the
generated source.

Every test runs the same function with target="cpu" (the product's default; asked for explicitly
because conftest.py makes the interpreter the suite's default) and target="interpret" (the
oracle) on the same inputs. Shapes are tiny and models are shared between tests (and with the
CUDA backend's cases: backend_models.py).
"""
from __future__ import annotations

import copy
import inspect
import os
import re

import numpy as np
import pytest

import fusegrad as fg
from fusegrad.pytree import flatten

from backend_models import (attention_inputs, attention_loss, cnn_inputs, cnn_loss, dropout_fn,
                            dropout_inputs, elementwise_inputs, elementwise_zoo, embedding_inputs,
                            embedding_loss, ln_gelu_loss, ln_gelu_params, mlp_batches, mlp_loss,
                            mlp_params, movement, movement_inputs, row_kernels,
                            softmax_regression_loss, softmax_regression_params)
from tree_checks import F32, STEP_TOL, TOL, assert_tree_bitwise, assert_tree_close, tree_copy


# ---- helpers -----------------------------------------------------------------------------------


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


def schedule_of(source: str) -> str:
    """The schedule part of fg.jit(...).source() (the kernels follow it)."""
    return source.split("# ---- kernel")[0]


CALL = re.compile(r"^#\s+\d+  (\w+)\((.*)\)  # (.*)$", re.M)


def calls_of(source: str) -> list:
    """[(kernel name, arguments text, what it computes)] of every call in the schedule."""
    return CALL.findall(schedule_of(source))


def run_body(source: str) -> str:
    """The schedule's calls, one a line: `kernel(arguments)  # %N = kind (file:line)`."""
    return "\n".join(f"    {name}({args})  # {what}" for name, args, what in calls_of(source))


def library_calls(source: str) -> set:
    """Names of the library functions the schedule calls (without their dtype suffix)."""
    return {re.sub(r"(_(f32|f64|i32|i64|b1))+$", "", name) for name, _, _ in calls_of(source)}


def gemm_flags(source: str) -> set:
    # gemm's flags are followed by its tile counts, gemm_loops' end the call
    return set(re.findall(r"gemm(?:_loops)?_\w+\(.*, (True|False), (True|False)(?:, \d+, \d+)?\)",
                          run_body(source)))


def line_of(fn, text: str) -> int:
    """Line number of the first line of fn's source containing `text`."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(k for k, ln in enumerate(lines) if text in ln)


# =================================================================================================
# 1. every kernel kind against the interpreter
# =================================================================================================


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_elementwise_kernel_matches_interpreter(dtype):
    a, b, row, col, s, i, j = elementwise_inputs(dtype)
    with np.errstate(all="ignore"):
        f = cpu_and_interpreter(elementwise_zoo, a, b, row, col, s, i, j, **TOL[dtype])
    assert f.stats()["kernels"] <= 2  # fused, not one kernel per op
    mx = f(a, b, row, col, s, i, j)[1]
    assert np.isnan(mx[0, 6]) and np.isnan(mx[1, 2]) and np.isnan(mx).sum() == 2


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


def test_opaque_kernels_match_interpreter():
    f = cpu_and_interpreter(movement, *movement_inputs())
    calls = library_calls(f.source())
    assert {"strided_copy", "fill", "gather", "argmax", "iota", "reduce_middle", "gemm"} <= calls


def test_argmax_ties_and_nan_match_interpreter():
    x = np.array([[1, 3, 3, 0], [np.nan, 1, 2, np.nan], [5, 5, 5, 5], [0, 1, np.nan, 7]],
                 np.float32)
    cpu_and_interpreter(lambda x: (fg.argmax(x, axis=-1), fg.argmax(x, axis=0), fg.argmax(x)), x)


def test_scatter_add_via_embedding_gradient_with_repeated_ids():
    table, ids = embedding_inputs()  # id 1 four times, ids 2, 3, 5 never
    f = grads_cpu_and_interpreter(embedding_loss, table, ids)
    _, g = f(table, ids)
    assert np.all(g[[2, 3, 5]] == 0) and np.all(g[1] != 0)
    assert {"gather", "scatter_add"} <= library_calls(f.source())


def test_random_uniform_via_dropout_is_bitwise_the_interpreters():
    x32, x64, seed = dropout_inputs()
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
    stores = re.findall(r"rc\[rw \+ (\d+) \* C \+ j\] = ", kernels)  # rw: this worker's cache
    loads = re.findall(r"\(rc\[rw \+ (\d+) \* C \+ j\]\)  # \S+ from the row cache", kernels)
    assert stores and set(loads) == set(stores)


def test_small_cnn_gradients_match_interpreter():
    """conv2d is unfold + GEMM; the gradient with respect to the image folds."""
    f = grads_cpu_and_interpreter(cnn_loss, *cnn_inputs(), argnums=(0, 1))
    assert {"unfold", "fold"} <= library_calls(f.source())


def test_attention_block_gradients_match_interpreter():
    grads_cpu_and_interpreter(attention_loss, *attention_inputs())


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
    pointer: the same buffer passed twice (as a0 and o0) would alias two pointers the kernel
    declares distinct (noalias), and make LLVM's vectoriser give up."""
    source = trained("adam").cpu.source()
    sections = _kernel_sections(source)
    loops = [(name, args) for name, args, _ in calls_of(source)
             if re.match(r"(elementwise|row|column|rowcolumn)_", name)]
    in_place = {name for name, _ in loops if "# in place: " in sections[name]}
    assert len(in_place) >= 2  # Adam's parameter, exp_avg and exp_avg_sq updates at least
    for name, args in loops:
        arrays = [a for a in args.split(", ") if a.startswith("%") or "[" in a and "'" in a]
        assert len(arrays) == len(set(arrays)), (name, args)
        assert "noalias=True" in sections[name]
        for k, m in re.findall(r"o(\d+) is stored into a(\d+)", sections[name]):
            assert f"o{k}[" not in sections[name].split("# in place")[1]


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


def tanh_scaled(x):
    return fg.tanh(x) * 3.0 - x


def test_switching_to_exact_math_runs_exact_kernels(monkeypatch):
    """Exact and approximate kernels of one structure are different kernels: each program
    calls its own variant."""
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    monkeypatch.setenv("FUSEGRAD_EXACT_MATH", "0")
    approx = fg.jit(tanh_scaled, target="cpu")
    approx(x)
    monkeypatch.setenv("FUSEGRAD_EXACT_MATH", "1")
    exact = fg.jit(tanh_scaled, target="cpu")
    np.testing.assert_allclose(exact(x), np.tanh(x) * 3 - x, **F32)
    assert "tanh_f32(" not in exact.source().split("# ---- kernel")[1]
    assert "tanh_f32(" in approx.source().split("# ---- kernel")[1]
    runner = exact.runner(exact.trace())
    compiled = [k for k in runner.compiled.kernels if k.name.startswith("elementwise_")]
    assert compiled and all("tanh_f32(" not in k.text for k in compiled)  # what ran
    approx_names = {k.name for k in approx.runner(approx.trace()).compiled.kernels}
    assert not approx_names & {k.name for k in compiled}


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
    schedule = schedule_of(source)
    assert "run in order by the dispatcher" in schedule
    sections = _kernel_sections(source)
    called = {name for name, _, _ in calls_of(source)}
    loops = {n for n in called if re.match(r"(elementwise|row|column|rowcolumn)_", n)}
    assert loops and loops == set(sections)
    for name, text in sections.items():
        assert f"def {name}(" in text
        for line in text.splitlines():
            if COMPUTES.match(line):
                assert re.search(r"# %\d+", line), f"{name}: no IR value named on {line!r}"
    relu_line = line_of(mlp_loss, "fg.relu(")
    head_line = line_of(mlp_loss, "cross_entropy")
    model_file = os.path.basename(inspect.getsourcefile(mlp_loss))  # backend_models.py
    kernels = "".join(sections.values())
    assert f"({model_file}:{relu_line})" in kernels and f"({model_file}:{head_line})" in kernels
    # the schedule: every kernel call says which IR values it computes and the kernel's kind
    calls = calls_of(source)
    assert len(calls) >= 8
    for name, _, what in calls:
        if name.startswith(("check_finite", "copy_")):
            continue
        assert re.match(r"%\d+(, %\d+)* = (elementwise|row|column|row\+column|gemm|opaque)\b",
                        what), what
    assert any(f"({model_file}:{head_line})" in what for _, _, what in calls)
    # the loss guard, before any update (the builder refuses a parameter written before it)
    assert any(name.startswith("check_finite") and "finite" in what for name, _, what in calls)


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


def test_hot_loops_are_vectorised():
    """LLVM vectorises the loops of the LayerNorm+GELU step's row, row+column and in-place Adam
    kernels (vector float operations in their optimised IR). Guards the code shapes that make
    this possible: in-place outputs through the input's own pointer, distinct (noalias)
    pointers, column partials and the row cache as arrays of their own."""
    from fusegrad.compiler.native.machine import optimised_ir
    from fusegrad.compiler.native.module import ModuleCompiler

    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    t = rng.standard_normal((64, 4)).astype(np.float32)
    step = fg.train_step(ln_gelu_loss, fg.optim.Adam(0.01), target="cpu")
    step(ln_gelu_params(), x, t)
    kernels = step._runner(step._last).compiled.kernels
    hot = [k for k in kernels if k.name.startswith("row") or "# in place" in k.text]
    assert any(k.name.startswith("rowcolumn") for k in hot)
    assert any(k.name.startswith("row_") for k in hot)
    for k in hot:
        mc = ModuleCompiler(k.name)
        mc.add_source(k.text)
        ir = optimised_ir(str(mc.module))
        vector = len(re.findall(r"= f(?:mul|add|sub) [^\n]*<\d+ x float>", ir))
        scalar = len(re.findall(r"= f(?:mul|add|sub) (?:[a-z]+ )*float ", ir))
        # scalar remainder loops and per-call scalars stay
        assert vector >= scalar / 4, f"{k.name}: {vector} vector and {scalar} scalar float ops"


def test_strided_copies_run_over_merged_dimensions():
    """A bias broadcast to NCHW is a strided_copy whose inner loop covers H*W (the two
    dimensions both sides step through as one), not W. (The copies' results are checked
    against the interpreter by the CNN and movement tests.)"""
    from fusegrad.compiler.codegen.cpu_movement import merge_dims

    # (N, C, H, W) = (2, 3, 4, 5): source strides of a (C,) bias, destination contiguous
    assert merge_dims((0, 1, 0, 0), (60, 20, 5, 1), (2, 3, 4, 5)) == ((0, 1, 0), (60, 20, 1),
                                                                       (2, 3, 20))
    assert merge_dims((20, 5, 1), (20, 5, 1), (2, 4, 5)) == ((1,), (1,), (40,))  # one run
    assert merge_dims((1, 3), (2, 1), (3, 2)) == ((1, 3), (2, 1), (3, 2))  # a transpose stays
    assert merge_dims((4, 1), (4, 1), (1, 1)) == ((0,), (0,), (1,))  # a single element


def test_dispatcher_and_runtime_agree_on_the_block_header():
    """The dispatcher's text and the runtime that lays out its block are in two layers that do
    not import each other: one header size for both."""
    from fusegrad.kernels.cpu_library import DISPATCHER_HEADER
    from fusegrad.runtime.executable import HEADER

    assert HEADER == DISPATCHER_HEADER
