"""No input, checkpoint or interruption crashes a run or corrupts it (issue: memory safety and
data integrity).

Every case here once crashed the process, read the heap, trained on silently wrong values, or
left parameters, optimizer state and the step count disagreeing. Each checks what the user gets
now — a clear error naming the argument, with nothing written — and that the step is usable
afterwards.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fusegrad as fg

from tree_checks import assert_tree_bitwise, tree_copy

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["cpu", "interpret"]


def mlp(width=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"w1": (rng.standard_normal((8, width)) * 0.3).astype(np.float32),
            "b1": np.zeros(width, np.float32),
            "w2": (rng.standard_normal((width, 10)) * 0.3).astype(np.float32),
            "b2": np.zeros(10, np.float32)}


def mlp_loss(p, x, y):
    return fg.cross_entropy(fg.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"], y)


def batch(n=12, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 8)).astype(np.float32), rng.integers(0, 10, n)


def adam_step(target="cpu"):
    return fg.train_step(mlp_loss, fg.optim.Adam(lr=1e-2), target=target)


def snapshot(step, p):
    return tree_copy(p), tree_copy(step.state), step.t


def assert_unchanged(step, p, before):
    params, state, t = before
    assert_tree_bitwise(p, params)
    assert_tree_bitwise(step.state, state)
    assert step.t == t


# ---- parameters of other shapes on an existing step ---------------------------------------------


@pytest.mark.parametrize("width", [64, 4096])
def test_new_parameter_shapes_on_an_existing_step_are_a_clear_error(width):
    step, p = adam_step(), mlp()
    step(p, *batch())
    before = snapshot(step, p)
    wider = mlp(width)
    with pytest.raises(ValueError, match=r"params\['w1'\].*float32\[8, 16\].*float32\[8, "
                                         rf"{width}\].*new fg.train_step"):
        step(wider, *batch())
    assert_unchanged(step, p, before)
    assert np.isfinite(step(p, *batch()))  # still usable


def test_a_leaf_that_changes_dtype_is_a_clear_error():
    step = fg.train_step(lambda p, x: fg.sum(x * p["w"]) + fg.sum(p["n"]), fg.optim.SGD(0.1))
    p = {"w": np.ones(3, np.float32), "n": np.zeros(3, np.int64)}
    step(p, np.ones(3, np.float32))
    p["n"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"params\['n'\]: this train_step was initialised for "
                                         r"int64\[3\], got float32\[3\]"):
        step(p, np.ones(3, np.float32))


@pytest.mark.parametrize("bad, message", [
    ("list", r"x is a list of numbers.*np.asarray\(x\)"),
    ("str", r"x is a str; batch arguments are arrays"),
])
def test_batches_that_are_not_arrays_are_a_clear_error(bad, message):
    step, p = adam_step(), mlp()
    x, y = batch()
    with pytest.raises(TypeError, match=message):
        step(p, x.tolist() if bad == "list" else "abc", y)
    assert step.t == 0


# ---- indices out of range -----------------------------------------------------------------------


def embedding_loss(p, ids):
    return fg.sum(fg.embedding(ids, p["table"]) ** 2) + fg.sum(p["table"] * 0.01)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("bad", [10, -11, 10 ** 8, 10 ** 9])
def test_embedding_ids_out_of_range_raise_and_write_nothing(target, bad):
    step = fg.train_step(embedding_loss, fg.optim.Adam(0.1), target=target)
    p = {"table": np.random.default_rng(2).standard_normal((10, 4)).astype(np.float32)}
    step(p, np.array([1, 2, 3]))
    before = snapshot(step, p)
    with pytest.raises(fg.IndexOutOfRangeError, match=r"gather.*test_safety.py:\d+"):
        step(p, np.array([1, bad, 3]))
    assert_unchanged(step, p, before)
    step(p, np.array([9, -1, -10]))  # negative ids count from the end, as np.take
    assert step.t == 2


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("bad", [10, -1, 10 ** 9])
def test_class_labels_out_of_range_raise_and_write_nothing(target, bad):
    step, p = adam_step(target), mlp()
    x, y = batch()
    step(p, x, y)
    before = snapshot(step, p)
    y_bad = y.copy()
    y_bad[5] = bad
    with pytest.raises(fg.IndexOutOfRangeError, match=r"check_index.*test_safety.py:\d+"):
        step(p, x, y_bad)
    assert_unchanged(step, p, before)


def test_gradient_of_embedding_with_ids_out_of_range_raises():
    table = np.ones((5, 2), np.float32)
    with pytest.raises(fg.IndexOutOfRangeError):
        fg.grad(lambda t, i: fg.sum(fg.embedding(i, t)), target="cpu")(table, np.array([5]))


# ---- overlapping parameters ---------------------------------------------------------------------


def _extra_loss(q, x, y):
    return mlp_loss(q, x, y) + fg.sum(q["extra"] ** 2)


@pytest.mark.parametrize("case", ["view", "same array"])
def test_parameters_sharing_memory_are_refused(case):
    p = mlp()
    if case == "view":
        p["extra"] = p["w1"][0]  # a row of w1: updating one would change the other
    else:
        p["extra"] = p["b1"]  # one array, two parameters: two updates
    step = fg.train_step(_extra_loss, fg.optim.SGD(0.1))
    before = tree_copy(p)
    with pytest.raises(ValueError, match="share memory.*np.copy"):
        step(p, *batch())
    assert_tree_bitwise(p, before)
    assert step.t == 0
    p["extra"] = p["extra"].copy()
    assert np.isfinite(step(p, *batch()))


def test_batch_may_share_memory_with_another_batch_argument():
    """Only what the step writes must not overlap: x and a view of x are both read-only."""
    step, p = adam_step(), mlp()
    x, y = batch()
    f = fg.train_step(lambda q, a, b, y: mlp_loss(q, a + b, y), fg.optim.SGD(0.1))
    assert np.isfinite(f(p, x, x, y))
    assert np.isfinite(step(p, x, y))


# ---- checkpoints --------------------------------------------------------------------------------


def trained_step(tmp_path, steps=2):
    step, p = adam_step(), mlp()
    for k in range(steps):
        step(p, *batch(seed=k))
    path = tmp_path / "ckpt"
    step.save(path)
    return step, p, path


def test_save_and_load_use_the_same_path(tmp_path):
    step, p, path = trained_step(tmp_path)
    assert path.exists() and not Path(str(path) + ".npz").exists()
    fresh, q = adam_step(), mlp(seed=5)
    fresh.load(path, params=q)
    assert_tree_bitwise(q, p)
    assert fresh.t == step.t
    assert_tree_bitwise(fresh.state, step.state)
    np.testing.assert_array_equal(fresh(q, *batch(seed=9)), step(p, *batch(seed=9)))


def _rewrite(path, change):
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    change(data)
    with open(path, "wb") as f:
        np.savez(f, **data)


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.__setitem__("param:params['w1']", np.zeros((1, 16))), r"params\['w1'\] is "
                                                                        r"float64\[1, 16\]"),
    (lambda d: d.__setitem__("param:params['b2']", np.zeros(11, np.float32)), r"b2"),
    (lambda d: d.pop("exp_avg_sq:params['w2']"), r"exp_avg_sq has no state for params\['w2'\]"),
    (lambda d: d.__setitem__("exp_avg:params['b1']", np.zeros(3, np.float32)), r"exp_avg"),
    (lambda d: d.pop("param:params['b1']"), r"missing \[\"params\['b1'\]\"\]"),
    (lambda d: d.pop("__step__"), r"no step count"),
])
def test_a_checkpoint_that_does_not_fit_changes_nothing(tmp_path, damage, message):
    step, p, path = trained_step(tmp_path)
    _rewrite(path, damage)
    fresh, q = adam_step(), mlp(seed=7)
    fresh(q, *batch())
    before = snapshot(fresh, q)
    with pytest.raises(fg.CheckpointError, match=message):
        fresh.load(path, params=q)
    assert_unchanged(fresh, q, before)


def test_a_checkpoint_of_other_shapes_is_refused_without_params(tmp_path):
    other, q = adam_step(), mlp(width=32)
    other(q, *batch())
    other.save(tmp_path / "wide")
    step, p = adam_step(), mlp()
    step(p, *batch())
    before = snapshot(step, p)
    with pytest.raises(fg.CheckpointError, match=r"float32\[8, 32\].*float32\[8, 16\]"):
        step.load(tmp_path / "wide")
    assert_unchanged(step, p, before)


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    step, p, path = trained_step(tmp_path)
    good = path.read_bytes()
    step(p, *batch(seed=4))

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt  # as if interrupted while writing

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        step.save(path)
    assert path.read_bytes() == good
    assert [f.name for f in tmp_path.iterdir()] == ["ckpt"]  # no temporary file left


KILLED_SAVE = textwrap.dedent('''\
    import sys, numpy as np, fusegrad as fg
    step = fg.train_step(lambda p, x: fg.sum((x @ p["w"]) ** 2), fg.optim.Adam(1e-3))
    p = {"w": np.ones((1000, 1000), np.float32)}   # a 4 MB parameter, 12 MB with Adam state
    step(p, np.ones((2, 1000), np.float32))
    print("ready", flush=True)
    while True:
        step.save(sys.argv[1])
''')


def test_a_process_killed_while_saving_leaves_a_whole_checkpoint(tmp_path):
    """SIGKILL at an arbitrary moment of a loop of saves over one file: it always loads."""
    script = tmp_path / "saver.py"
    script.write_text(KILLED_SAVE)
    target = tmp_path / "ckpt"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for delay in (0.05, 0.2, 0.45):
        proc = subprocess.Popen([sys.executable, str(script), str(target)], env=env,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        if target.exists():
            with np.load(target) as f:
                assert f["param:params['w']"].shape == (1000, 1000)


# ---- Ctrl-C during a step -----------------------------------------------------------------------


INTERRUPTED = textwrap.dedent('''\
    import json, os, signal, sys, threading, time
    import numpy as np, fusegrad as fg
    rng = np.random.default_rng(0)
    p = {"w1": (rng.standard_normal((512, 512)) * 0.05).astype(np.float32),
         "w2": (rng.standard_normal((512, 512)) * 0.05).astype(np.float32)}
    x = rng.standard_normal((512, 512)).astype(np.float32)
    step = fg.train_step(lambda p, x: fg.mean(fg.tanh(fg.tanh(x @ p["w1"]) @ p["w2"]) ** 2),
                         fg.optim.Adam(1e-3))
    step(p, x)
    t0 = time.perf_counter(); step(p, x); dt = time.perf_counter() - t0
    results = []
    for k in range(int(sys.argv[1])):
        before = p["w1"].copy()
        t = step.t
        fired = threading.Event()

        def fire():
            os.kill(os.getpid(), signal.SIGINT)
            fired.set()

        timer = threading.Timer(dt * (k % 10) / 10, fire)
        try:  # the interrupt lands in a step, between steps, or just after them
            timer.start()
            for _ in range(3):
                step(p, x)
                time.sleep(dt / 7)
            fired.wait()
            time.sleep(0.05)
        except KeyboardInterrupt:
            pass
        timer.join()
        # the update was applied iff it was counted (every step changes w1)
        results.append([step.t - t, not np.array_equal(before, p["w1"])])
    print(json.dumps({"results": results}))
''')


def test_ctrl_c_never_separates_an_update_from_its_step_count(tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("FUSEGRAD_CROSSCHECK", None)
    done = subprocess.run([sys.executable, str(script), "30"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    results = json.loads(done.stdout.strip().splitlines()[-1])["results"]
    for counted, moved in results:
        assert (counted > 0) == moved, results


# ---- the compiler itself ------------------------------------------------------------------------


@pytest.mark.parametrize("n_out", [1, 2])
def test_one_output_bias_compiles(n_out):
    """The last bias of a one-output model (karpathy/micrograd's demo) crashed the compiler:
    'Var(f32[1]) is needed outside its loop level'."""
    b = np.ones(n_out, np.float32)
    Y = np.random.default_rng(0).random((100, n_out)).astype(np.float32)

    def f(b, Y):
        return fg.sum((Y + b) * Y) + fg.sum(b * 3.0)

    np.testing.assert_allclose(fg.grad(f, target="cpu")(b, Y),
                               fg.grad(f, target="interpret")(b, Y), rtol=1e-5)


def test_micrograd_demo_one_output_mlp_trains():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2)).astype(np.float32)
    y = np.where(x[:, 0] * x[:, 1] > 0, 1.0, -1.0).astype(np.float32)
    p = {"w1": (rng.standard_normal((2, 16)) * 0.5).astype(np.float32),
         "b1": np.zeros(16, np.float32),
         "w2": (rng.standard_normal((16, 1)) * 0.5).astype(np.float32),
         "b2": np.zeros(1, np.float32)}

    def svm_loss(p, x, y):  # micrograd's max-margin loss with L2 regularisation
        score = fg.reshape(fg.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"], (-1,))
        return fg.mean(fg.relu(1.0 - y * score)) + 1e-4 * fg.sum(p["w1"] ** 2)

    step = fg.train_step(svm_loss, fg.optim.SGD(0.1))
    losses = [float(step(p, x, y)) for _ in range(60)]
    assert losses[-1] < 0.6 * losses[0]


# ---- a finite loss with a non-finite gradient ---------------------------------------------------


def sqrt_loss(p, x):
    return fg.sum(fg.sqrt(p["a"])) + fg.sum(p["b"] * x)


@pytest.mark.parametrize("target", TARGETS)
def test_a_non_finite_gradient_skips_the_update_and_names_the_parameter(target):
    """sqrt'(0) = inf: the loss is finite, a gradient is not. The update is skipped as for a
    non-finite loss (once, the parameters became NaN and every later step failed)."""
    step = fg.train_step(sqrt_loss, fg.optim.Adam(0.1), target=target)
    p = {"a": np.array([1.0, 2.0, 4.0], np.float32), "b": np.ones(3, np.float32)}
    x = np.ones(3, np.float32)
    step(p, x)
    before = snapshot(step, p)
    p["a"][0] = 0.0
    before[0]["a"][0] = 0.0
    with pytest.raises(fg.NonFiniteGradientError, match=r"loss is finite.*gradient of "
                                                        r"p\['a'\] is not") as info:
        step(p, x)
    assert info.value.parameters == ["p['a']"]
    assert_unchanged(step, p, before)
    p["a"][0] = 1.0
    assert np.isfinite(step(p, x)) and step.t == 2  # usable again


def test_a_non_finite_loss_is_still_a_loss_error():
    step = fg.train_step(sqrt_loss, fg.optim.SGD(0.1))
    p = {"a": np.array([1.0, 2.0], np.float32), "b": np.ones(2, np.float32)}
    with pytest.raises(fg.NonFiniteLossError, match="the loss is"):
        step(p, np.array([np.inf, 1.0], np.float32))


# ---- profiling leaves training as it was --------------------------------------------------------


def test_profile_times_kernels_without_touching_parameters_or_state():
    """profile() reruns every kernel, the in-place update among them: it must run on copies.
    It works before the first step too, on the batch it is given."""
    step = adam_step()
    p = mlp()
    x, y = batch()
    before = snapshot(step, p)
    timings = step.profile(p, x, y, repeats=2)
    assert timings and all(isinstance(what, str) and s >= 0 for what, s in timings)
    assert_tree_bitwise(p, before[0])
    assert step.t == 0  # the optimizer state may now exist, as zeros, as before a first step
    assert all(not np.any(v) for v in fg.pytree.flatten(fg.to_numpy(step.state))[0])
    step(p, x, y)
    before = snapshot(step, p)
    step.profile(p, *batch(n=12, seed=2), repeats=2)
    assert_unchanged(step, p, before)
