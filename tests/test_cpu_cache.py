"""The CPU backend's disk cache: a second process starts warm, a new batch size compiles nothing,
identical kernels share one file, and a compiled step allocates nothing per call.

A tiny training script is written to a temporary folder and run in fresh processes with
FUSEGRAD_CACHE_DIR pointing at a temporary cache; the in-process tests import the same script,
so their generated code names the same source lines and can find what those processes compiled.
"""
from __future__ import annotations

import collections
import difflib
import gc
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import fusegrad as fg

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def njit_driver():
    """This file tests the driver users get: one compiled call per step (conftest.py gives
    the rest of the suite the Python driver), without the interpreter cross-check, which would
    count in its allocation and cache measurements."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSEGRAD_DRIVER", "njit")
        mp.setenv("FUSEGRAD_CROSSCHECK", "0")
        yield


SCRIPT = textwrap.dedent('''\
    """A tiny training run; prints the step's stats as JSON."""
    import json

    import numpy as np

    import fusegrad as fg


    def loss_fn(p, x, y):
        return fg.cross_entropy(x @ p["w"] + p["b"], y)


    def params():
        rng = np.random.default_rng(0)
        return {"w": (rng.standard_normal((4, 3)) * 0.5).astype(np.float32),
                "b": np.zeros(3, np.float32)}


    def batch(n, seed=1):
        rng = np.random.default_rng(seed)
        return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)


    def make_step(target=None):  # None: the product's default, "cpu"
        return fg.train_step(loss_fn, fg.optim.SGD(lr=0.1), target=target)


    if __name__ == "__main__":
        step, p = make_step(), params()
        losses = [float(step(p, *batch(8, seed))) for seed in range(3)]
        stats = step.stats()
        keys = ("target", "cache_hit", "cache", "compile_seconds", "load_seconds",
                "kernel_files", "kernel_files_reused", "driver")
        print(json.dumps(dict({k: stats[k] for k in keys}, losses=losses, w=p["w"].tolist())))
''')


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with the script and an empty cache."""
    root = tmp_path_factory.mktemp("fusegrad_cache")
    (root / "train_script.py").write_text(SCRIPT)
    (root / "cache").mkdir()
    return root


def run_script(workdir) -> dict:
    env = dict(os.environ, FUSEGRAD_CACHE_DIR=str(workdir / "cache"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("FUSEGRAD_TARGET", None)  # conftest.py's interpreter default is for this process
    env.pop("FUSEGRAD_EXACT_MATH", None)
    done = subprocess.run([sys.executable, str(workdir / "train_script.py")], env=env,
                          cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(workdir):
    """Two runs of the script in fresh processes: the first cold, the second warm."""
    return [run_script(workdir), run_script(workdir)]


@pytest.fixture(scope="module")
def script(workdir, runs):
    """The script imported in this process (so its source lines are the ones the runs saw)."""
    spec = importlib.util.spec_from_file_location("train_script", workdir / "train_script.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(workdir, script):
    """The script's step built in this process on the cache the runs filled, called twice."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSEGRAD_CACHE_DIR", str(workdir / "cache"))
        step, p, (x, y) = script.make_step("cpu"), script.params(), script.batch(8)
        step(p, x, y)
        step(p, x, y)
    return step, p, x, y


# ---- (a) a second process loads from the disk cache --------------------------------------------


def test_second_process_loads_compiled_code_from_disk(runs):
    first, second = runs
    assert first["target"] == "cpu"  # the default target of a plain script
    figures = ", ".join(f"run {k + 1}: compile {r['compile_seconds']:.3f} s, "
                        f"load {r['load_seconds']:.3f} s, cache_hit={r['cache_hit']}, "
                        f"reused {r['kernel_files_reused']}/{r['kernel_files']}"
                        for k, r in enumerate(runs))
    print(f"\ndisk cache: {figures}")
    assert not first["cache_hit"] and first["kernel_files_reused"] == 0, figures
    assert second["driver"] == first["driver"], "the second process generated other code"
    assert second["cache_hit"], figures
    assert second["cache"] == "the driver and every kernel were on disk"
    assert second["kernel_files_reused"] == second["kernel_files"] > 0
    assert second["compile_seconds"] < first["compile_seconds"] / 2, figures
    # the very same code: the very same bits
    assert second["losses"] == first["losses"] and second["w"] == first["w"]


def test_fusion_is_deterministic(script):
    """Compiling the same step again (new Node objects, new ids) gives the same program: the
    disk cache depends on it."""
    p, (x, y) = script.params(), script.batch(8)
    programs = collections.Counter()
    for _ in range(12):
        step = fg.train_step(script.loss_fn, fg.optim.SGD(lr=0.1, momentum=0.9),
                             target="interpret")  # momentum: more free nodes to place
        step(p, x, y)
        programs[step.ir("fused")] += 1
    assert len(programs) == 1, f"{len(programs)} different fused programs: {programs.values()}"


# ---- (b) a new batch size compiles nothing ------------------------------------------------------


def _diff(path_a, path_b) -> str:
    a, b = Path(path_a).read_text().splitlines(), Path(path_b).read_text().splitlines()
    return "\n".join(difflib.unified_diff(a, b, path_a, path_b, lineterm="", n=0))


def test_new_batch_size_compiles_nothing(workdir, script, trained, monkeypatch):
    monkeypatch.setenv("FUSEGRAD_CACHE_DIR", str(workdir / "cache"))
    step, p, x, y = trained
    step(p, x, y)
    s8 = step.stats()
    step(p, *script.batch(16))  # e.g. the last, bigger batch of an epoch
    s16 = step.stats()
    assert s16["driver"] == s8["driver"], _diff(s8["driver"], s16["driver"])
    assert s16["kernel_files_reused"] == s16["kernel_files"]
    assert s16["cache_hit"]


# ---- (c) identical kernels are shared ----------------------------------------------------------


def dense(p, h):
    return fg.relu(h @ p["w"] + p["b"])


def three_layer_mlp(layers, head, x):
    h = x
    for p in layers:
        h = dense(p, h)
    return h @ head["w"] + head["b"]


def one_layer_other_head(layer, x, w):
    return fg.tanh(dense(layer, x) @ w)


def _layer(rng, n_in, n_out):
    return {"w": (rng.standard_normal((n_in, n_out)) * 0.5).astype(np.float32),
            "b": (rng.standard_normal(n_out) * 0.1).astype(np.float32)}


def _loop_kernel_calls(source) -> list:
    """The loop kernels the driver's run() calls, in order."""
    driver = source.split("# ---- kernel")[0].split("def run(", 1)[1].split("\n", 1)[1]
    driver = re.split(r"^\S", driver, maxsplit=1, flags=re.M)[0]  # run() only
    return re.findall(r"^    ((?:elementwise|row|column|rowcolumn)_[0-9a-f]+(?:_o\d+a\d+)*)\(", driver, re.M)


def _mlp_inputs():
    rng = np.random.default_rng(0)
    layers = [_layer(rng, 4, 6), _layer(rng, 6, 6), _layer(rng, 6, 6)]
    return layers, _layer(rng, 6, 3), rng.standard_normal((8, 4)).astype(np.float32)


def test_identical_layers_share_kernel_files():
    layers, head, x = _mlp_inputs()
    mlp = fg.jit(three_layer_mlp, target="cpu")
    out = mlp(layers, head, x)
    want = fg.jit(three_layer_mlp, target="interpret")(layers, head, x)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    calls = _loop_kernel_calls(mlp.source())
    stats = mlp.stats()
    assert len(calls) == 4  # three relu layers and the head's bias
    assert stats["kernel_files"] == len(set(calls)) == 2 < len(calls)
    assert calls[0] == calls[1] == calls[2]  # 4 -> 6 and 6 -> 6 layers: the same kernel

    # another model with the same layer (same shapes, same source line) reuses its file
    path = Path(stats["driver"]).with_name(f"{calls[0]}.py")
    text = path.read_text()
    w = np.random.default_rng(1).standard_normal((6, 2)).astype(np.float32)
    other = fg.jit(one_layer_other_head, target="cpu")
    np.testing.assert_allclose(other(layers[0], x, w),
                               np.tanh(np.maximum(x @ layers[0]["w"] + layers[0]["b"], 0) @ w),
                               rtol=1e-5, atol=1e-6)
    assert calls[0] in _loop_kernel_calls(other.source())
    assert other.stats()["kernel_files_reused"] >= 1
    assert path.read_text() == text  # not rewritten: Numba's cached code for it stays valid


def relu_layer_here(x, w, b):
    return fg.relu(x @ w + b)


def relu_layer_elsewhere(x, w, b):
    return fg.relu(x @ w + b)


def test_same_layer_at_another_source_line_reuses_the_kernel_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEGRAD_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(1)
    x, layer = rng.standard_normal((8, 4)).astype(np.float32), _layer(rng, 4, 6)
    first = fg.jit(relu_layer_here, target="cpu")
    second = fg.jit(relu_layer_elsewhere, target="cpu")
    first(x, layer["w"], layer["b"])
    second(x, layer["w"], layer["b"])
    assert _loop_kernel_calls(first.source()) == _loop_kernel_calls(second.source())
    assert second.stats()["kernel_files_reused"] == second.stats()["kernel_files"]


# ---- (d) no allocation per step ----------------------------------------------------------------


def test_compiled_step_allocates_nothing_per_call(trained):
    step, p, x, y = trained
    step(p, x, y)
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            step(p, x, y)
        peak = tracemalloc.get_traced_memory()[1] - start
        gc.collect()  # the Python-level garbage of the calls (see the test below)
        kept = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    print(f"\ntracemalloc over 20 steps: peak {peak} B above the start, {kept} B kept")
    assert peak < 64 * 1024, f"peak {peak} B"
    assert kept < 1024, f"20 steps kept {kept} B"


def test_compiled_step_leaves_no_garbage(trained):
    step, p, x, y = trained
    step(p, x, y)
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            step(p, x, y)
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable == 0
