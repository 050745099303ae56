"""The CPU backend's caches: compiled programs and kernel objects on disk, and what they promise.

- a second process compiles nothing, and computes the very same bits;
- what a person changes without changing the maths compiles nothing: moved lines, renamed
  locals, another learning rate (the same program), other betas (a new program, no new kernel),
  another batch size (no new kernel);
- identical layers and models share kernels;
- a cache that was tampered with or damaged is detected and recompiled, never run; a cache folder
  others can write to is refused; temporary files are never reached through a planted symlink;
- two threads compiling the same program at once both succeed;
- a compiled step allocates nothing per call.

Training scripts are written to a temporary folder and run in fresh processes with
FUSEGRAD_CACHE_DIR pointing at a temporary cache.
"""
from __future__ import annotations

import collections
import gc
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import fusegrad as fg
from fusegrad.runtime import cache

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''\
    """A tiny training run; prints the step's stats as JSON."""
    import json
    import sys

    import numpy as np

    import fusegrad as fg


    def loss_fn(p, x, y):
        hidden = fg.relu(x @ p["w"] + p["b"])
        return fg.cross_entropy(hidden @ p["v"], y)


    def params():
        rng = np.random.default_rng(0)
        return {"w": (rng.standard_normal((4, 5)) * 0.5).astype(np.float32),
                "b": np.zeros(5, np.float32),
                "v": (rng.standard_normal((5, 3)) * 0.5).astype(np.float32)}


    def batch(n, seed=1):
        rng = np.random.default_rng(seed)
        return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)


    def make_step(target=None):  # None: the product's default, "cpu"
        return fg.train_step(loss_fn, fg.optim.Adam(lr=0.01, betas=(0.9, 0.999)),
                             target=target)


    if __name__ == "__main__":
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
        step, p = make_step(), params()
        losses = [float(step(p, *batch(n, seed))) for seed in range(3)]
        stats = step.stats()
        keys = ("target", "cache_hit", "cache", "compile_seconds", "kernels_compiled",
                "kernels_loaded", "phases")
        print(json.dumps(dict({k: stats[k] for k in keys}, losses=losses, w=p["w"].tolist())))
''')


def run_script(folder, text=SCRIPT, args=(), cache_dir=None) -> dict:
    path = folder / "train_script.py"
    path.write_text(text)
    env = dict(os.environ, FUSEGRAD_CACHE_DIR=str(cache_dir or folder / "cache"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for var in ("FUSEGRAD_TARGET", "FUSEGRAD_EXACT_MATH", "FUSEGRAD_CROSSCHECK"):
        env.pop(var, None)
    done = subprocess.run([sys.executable, str(path), *map(str, args)], env=env, cwd=folder,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fusegrad_cache")


@pytest.fixture(scope="module")
def runs(workdir):
    """Two runs of the script in fresh processes: the first cold, the second warm."""
    return [run_script(workdir), run_script(workdir)]


def _figures(runs) -> str:
    return ", ".join(f"run {k + 1}: compile {r['compile_seconds']:.3f} s, cache {r['cache']!r}, "
                     f"kernels compiled {r['kernels_compiled']}, loaded {r['kernels_loaded']}"
                     for k, r in enumerate(runs))


# ---- a second process, and edits that change no maths ------------------------------------------


def test_second_process_compiles_nothing(runs):
    first, second = runs
    print(f"\ndisk cache: {_figures(runs)}")
    assert first["target"] == "cpu"  # the default target of a plain script
    assert first["kernels_compiled"] > 0 and first["cache"].startswith("compiled")
    assert second["cache_hit"] and second["cache"].startswith("loaded"), _figures(runs)
    assert second["kernels_compiled"] == 0 and second["kernels_loaded"] > 0
    assert "passes" not in second["phases"] and "fusion" not in second["phases"]
    # the very same code: the very same bits
    assert second["losses"] == first["losses"] and second["w"] == first["w"]


EDITS = {
    # a comment and a blank line above the model: every source line moves
    "moved lines": lambda s: s.replace('import json\n', 'import json\n# a note\n\n', 1),
    "renamed local": lambda s: s.replace("hidden", "activations"),
    "other learning rate": lambda s: s.replace("lr=0.01", "lr=0.003"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edits_without_new_maths_compile_nothing(workdir, runs, edit):
    result = run_script(workdir, EDITS[edit](SCRIPT))
    assert result["cache_hit"], (edit, result["cache"])
    assert result["kernels_compiled"] == 0


def test_new_hyper_parameters_compile_no_kernel(workdir, runs):
    """Other betas are other constants: a new program (the passes simplify by constants), made
    of the kernels already compiled."""
    result = run_script(workdir, SCRIPT.replace("betas=(0.9, 0.999)", "betas=(0.8, 0.99)"))
    assert result["cache"].startswith("compiled")
    assert result["kernels_compiled"] == 0 and result["kernels_loaded"] > 0


def test_new_batch_size_compiles_no_kernel(workdir, runs):
    result = run_script(workdir, args=[16])
    assert result["kernels_compiled"] == 0 and result["kernels_loaded"] > 0


def test_fusion_is_deterministic(workdir, runs):
    """Compiling the same step again (new Node objects, new ids) gives the same program: the
    caches depend on it."""
    namespace: dict = {}
    exec(compile(SCRIPT, "train_script.py", "exec"), namespace)
    p, (x, y) = namespace["params"](), namespace["batch"](8)
    programs = collections.Counter()
    for _ in range(8):
        step = fg.train_step(namespace["loss_fn"], fg.optim.SGD(lr=0.1, momentum=0.9),
                             target="interpret")  # momentum: more free nodes to place
        step(p, x, y)
        programs[step.ir("fused")] += 1
    assert len(programs) == 1, f"{len(programs)} different fused programs: {programs.values()}"


# ---- identical kernels are shared --------------------------------------------------------------


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


def _loop_kernel_calls(fn) -> list:
    """The loop kernels fn's compiled program calls, in order."""
    program = fn.runner(fn.trace()).compiled
    names = [program.kernels[e.kernel].name for e in program.entries]
    return [n for n in names if re.match(r"(elementwise|row|column|rowcolumn)_", n)]


def _mlp_inputs():
    rng = np.random.default_rng(0)
    layers = [_layer(rng, 4, 6), _layer(rng, 6, 6), _layer(rng, 6, 6)]
    return layers, _layer(rng, 6, 3), rng.standard_normal((8, 4)).astype(np.float32)


def test_identical_layers_share_kernels():
    layers, head, x = _mlp_inputs()
    mlp = fg.jit(three_layer_mlp, target="cpu")
    out = mlp(layers, head, x)
    want = fg.jit(three_layer_mlp, target="interpret")(layers, head, x)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    calls = _loop_kernel_calls(mlp)
    assert len(calls) == 4  # three relu layers and the head's bias
    assert len(set(calls)) == 2
    assert calls[0] == calls[1] == calls[2]  # 4 -> 6 and 6 -> 6 layers: the same kernel
    # another model with the same layer reuses its compiled kernel
    w = np.random.default_rng(1).standard_normal((6, 2)).astype(np.float32)
    other = fg.jit(one_layer_other_head, target="cpu")
    np.testing.assert_allclose(other(layers[0], x, w),
                               np.tanh(np.maximum(x @ layers[0]["w"] + layers[0]["b"], 0) @ w),
                               rtol=1e-5, atol=1e-6)
    assert calls[0] in _loop_kernel_calls(other)


def relu_layer_here(x, w, b):
    return fg.relu(x @ w + b)


def relu_layer_elsewhere(x, w, b):
    return fg.relu(x @ w + b)


def test_same_layer_at_another_source_line_compiles_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEGRAD_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(1)
    x, layer = rng.standard_normal((8, 4)).astype(np.float32), _layer(rng, 4, 6)
    first = fg.jit(relu_layer_here, target="cpu")
    second = fg.jit(relu_layer_elsewhere, target="cpu")
    first(x, layer["w"], layer["b"])
    second(x, layer["w"], layer["b"])
    assert _loop_kernel_calls(first) == _loop_kernel_calls(second)
    assert second.stats()["cache_hit"] and second.stats()["kernels_compiled"] == 0


# ---- a large program ---------------------------------------------------------------------------


def test_a_program_of_hundreds_of_kernels_compiles(tmp_path, monkeypatch):
    """An LSTM over 16 steps with a loss per step: over 300 kernel calls, a handful of kernels
    (every step shares them), and file names of bounded length (a kernel with many in-place
    outputs once made a name longer than the file system allows)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.models import lstm_lm

    monkeypatch.setenv("FUSEGRAD_CACHE_DIR", str(tmp_path))
    model = lstm_lm(16, hidden=8, emb=8, vocab=12, batch=4, per_step_loss=True)
    step = model.step()
    p, batch = model.params(), model.batch()
    losses = [float(step(p, *batch)) for _ in range(3)]
    assert losses[-1] < losses[0]
    s = step.stats()
    program = step._runner(step._last).compiled
    assert len(program.entries) >= 300, len(program.entries)
    assert s["kernels_compiled"] + s["kernels_loaded"] <= 40
    assert max(len(p.name) for p in (tmp_path / cache.VERSION / "objects").iterdir()) <= 80


# ---- a cache to trust --------------------------------------------------------------------------


def _objects(cache_dir) -> list:
    return sorted((cache_dir / cache.VERSION / "objects").glob("*.o"))


def _programs(cache_dir) -> list:
    return sorted((cache_dir / cache.VERSION / "programs").glob("*.json"))


@pytest.fixture()
def warm(tmp_path):
    """A cache filled by one run of the script."""
    first = run_script(tmp_path)
    return tmp_path, first


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_object_is_recompiled(warm, damage):
    folder, first = warm
    target = _objects(folder / "cache")[0]
    data = target.read_bytes()
    target.write_bytes({"truncate": data[:len(data) // 2],
                        "flip": data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:],
                        "empty": b""}[damage])
    result = run_script(folder)
    assert result["kernels_compiled"] == 1, result
    assert result["losses"] == first["losses"]
    assert run_script(folder)["kernels_compiled"] == 0  # repaired


def test_planted_object_with_a_wrong_checksum_is_not_run(warm):
    """An object whose machine code was swapped (its recorded checksum no longer matches) is
    removed and compiled again, not loaded."""
    folder, first = warm
    for target in _objects(folder / "cache"):
        data = target.read_bytes()
        head, body = data.split(b"\n", 2)[:2], data.split(b"\n", 2)[2]
        target.write_bytes(b"\n".join(head) + b"\n" + b"\xcc" * len(body))  # int3 everywhere
    result = run_script(folder)
    assert result["kernels_compiled"] == len(_objects(folder / "cache")) > 0
    assert result["losses"] == first["losses"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_program_is_recompiled(warm, damage):
    folder, first = warm
    for target in _programs(folder / "cache"):
        data = target.read_bytes()
        target.write_bytes(data[:len(data) // 3] if damage == "truncate" else b"{not json")
    result = run_script(folder)
    assert result["cache"].startswith("compiled") and "unusable" in result["cache"]
    assert result["losses"] == first["losses"]


def test_cache_folder_others_can_write_to_is_refused(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    env = dict(os.environ, FUSEGRAD_CACHE_DIR=str(folder))
    code = ("import numpy as np, fusegrad as fg\n"
            "fg.jit(lambda x: x * 2.0)(np.ones(3, np.float32))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "may be written by other users" in done.stderr and "chmod 700" in done.stderr
    assert not list(folder.iterdir())  # nothing was written there


def test_cache_folders_and_files_are_private(warm):
    folder, _ = warm
    root = folder / "cache"
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} has mode {mode:o}"


def test_temporary_files_never_follow_a_planted_symlink(tmp_path):
    """Temporary files get unpredictable names and are created exclusively: a symlink planted
    where a predictable temporary name would be is never written through."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cache_dir = tmp_path / "cache"
    run_script(tmp_path, cache_dir=cache_dir)  # creates the folders
    objects = cache_dir / cache.VERSION / "objects"
    for obj in list(objects.glob("*.o")):
        for name in (f"{obj.stem}.{os.getpid()}.tmp", obj.with_suffix(".tmp").name,
                     f".tmp-{obj.name}"):
            (objects / name).symlink_to(victim)
        obj.unlink()
    run_script(tmp_path, cache_dir=cache_dir)
    assert victim.read_text() == "precious"


def test_two_threads_compiling_one_program_both_succeed(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEGRAD_CACHE_DIR", str(tmp_path))
    namespace: dict = {}
    exec(compile(SCRIPT.replace("relu", "tanh"), "threads.py", "exec"), namespace)
    results, errors = [None, None], []

    def train(k):
        try:
            step, p = namespace["make_step"]("cpu"), namespace["params"]()
            results[k] = [float(step(p, *namespace["batch"](8, seed))) for seed in range(2)]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=train, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert results[0] == results[1] and results[0] is not None


# ---- no allocation per step --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(workdir, runs):
    namespace: dict = {}
    exec(compile(SCRIPT, "train_script.py", "exec"), namespace)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSEGRAD_CACHE_DIR", str(workdir / "cache"))
        mp.setenv("FUSEGRAD_CROSSCHECK", "0")  # it would count in the measurements
        step, p, (x, y) = namespace["make_step"]("cpu"), namespace["params"](), \
            namespace["batch"](8)
        step(p, x, y)
        step(p, x, y)
        yield step, p, x, y


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


# ---- generated Python modules (the CUDA backend's) --------------------------------------------


def test_generated_modules_run_their_verified_text_not_a_planted_pyc(tmp_path, monkeypatch):
    """The CUDA backend's generated modules are executed from their text, checked against what
    fusegrad generated: neither a planted bytecode file nor an edited module file runs."""
    import sys as _sys

    monkeypatch.setenv("FUSEGRAD_CACHE_DIR", str(tmp_path))
    text = "VALUE = 1\n"
    module, hit = cache.load_python_module("probe", text)
    assert module.VALUE == 1 and not hit
    path = Path(module.__file__)
    # a planted .pyc where Python's import system would look for one
    planted = path.parent / "__pycache__" / f"{path.stem}.{_sys.implementation.cache_tag}.pyc"
    planted.parent.mkdir(exist_ok=True)
    evil = tmp_path / "evil.py"
    evil.write_text("VALUE = 666\n")
    import py_compile

    py_compile.compile(str(evil), cfile=str(planted))
    # an edited module file
    path.write_text("VALUE = 999\n")
    for name in [n for n in _sys.modules if n.startswith("fusegrad_generated.probe_")]:
        del _sys.modules[name]
    module, hit = cache.load_python_module("probe", text)
    assert module.VALUE == 1 and not hit  # rewritten, and run from the verified text
    assert path.read_text() == text


def test_one_info_line_says_what_compiled_and_why(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setenv("FUSEGRAD_CACHE_DIR", str(tmp_path))
    x = np.linspace(-1, 1, 6, dtype=np.float32)
    with caplog.at_level(logging.INFO, logger="fusegrad"):
        fg.jit(lambda x: fg.tanh(x) * 2.0 + 0.5, target="cpu")(x)
    lines = [r.getMessage() for r in caplog.records if r.name == "fusegrad"]
    assert len(lines) == 1, lines
    assert "compiled: not on disk" in lines[0] and "kernels compiled (not on disk)" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fusegrad"):
        fg.jit(lambda x: fg.tanh(x) * 2.0 + 0.5, target="cpu")(x)  # the same program again
    assert not [r for r in caplog.records if r.name == "fusegrad"]  # nothing compiled: silent
