"""Parallel CPU kernels: results bitwise the same on any number of threads, calls split only
when they are big enough, and the thread count set one way (fg.set_num_threads,
FUSEGRAD_NUM_THREADS) with clear errors."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fusegrad as fg
from fusegrad.compiler.codegen import cpu as cpu_codegen
from fusegrad.runtime import threads

HERE = Path(__file__).parent


def _job(*args, env=None, timeout=300):
    full = {**os.environ, "NUMBA_NUM_THREADS": "3", **(env or {})}
    done = subprocess.run([sys.executable, str(HERE / "thread_jobs.py"), *args], env=full,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_one_two_and_three_threads_give_bitwise_identical_training():
    """An MLP with LayerNorm (row reductions), biases (column reductions), GELU, AdamW; an
    fg.scan RNN, batch 300 (no multiple of the 8 chunks or of 2 or 3 workers); a CNN (unfold,
    fold, pooling, broadcasts) on 37 images: the losses and every parameter byte after three
    steps are the same on 1, 2 and 3 threads, with every kind of call split over the workers
    (and each run checked against the interpreter: the suite's FUSEGRAD_CROSSCHECK)."""
    out = _job("1", "2", "3")
    results = out["results"]
    digests = {n: r[0] for n, r in results.items()}
    assert len(set(digests.values())) == 1, digests
    for n, (_, split) in results.items():
        assert {"gemm", "row", "column", "elementwise", "unfold", "fold", "strided_copy",
                "reduce_middle"} <= set(split), (n, split)


def test_reference_compiler_runs_split_calls_the_same():
    """The Numba reference compiler (its own parallel_call intrinsic) gives the same bits on two
    threads as on one."""
    out = _job("1", "2", env={"FUSEGRAD_KERNEL_COMPILER": "numba"}, timeout=600)
    assert out["results"]["1"][0] == out["results"]["2"][0]


def test_one_thread_never_starts_the_pool():
    out = _job("1", env={"FUSEGRAD_NUM_THREADS": "1"})
    assert out["layer"] == "none"


def _calls(source):
    return [ln for ln in source.splitlines() if ln.startswith("#") and "(" in ln]


MULTICORE = pytest.mark.skipif(threads.pool_size() < 2, reason="one core: GEMMs are not tiled")


@MULTICORE
def test_small_calls_stay_on_one_thread_and_big_ones_are_split():
    """The threshold: a step on a small batch splits nothing (waking workers would cost more
    than the work); the same model on a big batch splits its loops and GEMMs."""
    def loss_fn(p, x):
        return fg.mean((fg.tanh(x @ p["w"] + p["b"])) ** 2)

    def params(n):
        r = np.random.default_rng(0)
        return {"w": (r.standard_normal((n, n)) * 0.1).astype(np.float32),
                "b": np.zeros(n, np.float32)}

    small = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1))
    p = params(16)
    small(p, np.ones((8, 16), np.float32))
    assert not any("split over" in ln for ln in _calls(small.source()))

    big = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1))
    p = params(1024)
    big(p, np.ones((1024, 1024), np.float32))
    split = [ln for ln in _calls(big.source()) if "split over" in ln]
    assert any("gemm" in ln for ln in split) and any("elementwise" in ln or "row" in ln
                                                      for ln in split), big.source()[:3000]


def test_split_rules():
    """Units of a call: rows, or the fixed column-reduction chunks; a flat kernel regrouped
    into whole rows of at least MIN_ROW elements; GEMM tiles at least GEMM_TILE_EDGE."""
    class Node:
        def __init__(self, nbytes):
            self.attrs = {"bytes": nbytes, "flops": 0}

    class Space:
        def __init__(self, R, C):
            self.R, self.C = R, C

    big, small = Node(1 << 30), Node(10)
    assert cpu_codegen.split(small, Space(300, 700), False, False) == (300, 700, 0)
    assert cpu_codegen.split(big, Space(300, 700), False, False) == (300, 700, 64)
    assert cpu_codegen.split(big, Space(300, 700), False, True) == (300, 700, 8)
    assert cpu_codegen.split(big, Space(1, 700), False, False) == (1, 700, 0)
    R, C, units = cpu_codegen.split(big, Space(3, 4096 * 7), True, False)
    assert R * C == 3 * 4096 * 7 and C >= cpu_codegen.MIN_ROW and units == R > 1
    assert cpu_codegen.split(small, Space(3, 4096), True, False) == (1, 3 * 4096, 0)
    prime = 1_000_003  # no divisor: one row, one thread
    assert cpu_codegen.split(big, Space(1, prime), True, False) == (1, prime, 0)

    class Shape:
        def __init__(self, batch, m, n, k):
            self.batch, self.m, self.n, self.k = batch, m, n, k

    assert cpu_codegen.gemm_tiles(Shape(1, 8, 8, 8), 16) == (1, 1)
    assert cpu_codegen.gemm_tiles(Shape(1, 2048, 2048, 2048), 1) == (1, 1)  # one core
    tm, tn = cpu_codegen.gemm_tiles(Shape(1, 2048, 2048, 2048), 16)
    assert tm * tn >= 16 and 2048 // tm >= cpu_codegen.GEMM_TILE_EDGE <= 2048 // tn
    tm, tn = cpu_codegen.gemm_tiles(Shape(1, 32, 4096, 4096), 16)  # few rows: tiles by column
    assert tm == 1 and tn > 1
    # b is the big operand: cut by column, so that it is packed once, not once a row tile
    assert cpu_codegen.gemm_tiles(Shape(1, 512, 2048, 784), 2) == (1, 2)
    assert cpu_codegen.gemm_tiles(Shape(1, 2048, 512, 784), 2) == (2, 1)
    assert cpu_codegen.gemm_tiles(Shape(64, 64, 64, 576), 16) == (1, 1)  # the batch is enough


def test_set_num_threads_checks_its_argument():
    top = threads.pool_size()
    before = fg.get_num_threads()
    try:
        fg.set_num_threads(1)
        assert fg.get_num_threads() == 1
        for bad in (0, -1, top + 1):
            with pytest.raises(ValueError, match=r"1 to \d+.*NUMBA_NUM_THREADS"):
                fg.set_num_threads(bad)
        for bad in (2.5, "2", None, True):
            with pytest.raises(TypeError, match="integer"):
                fg.set_num_threads(bad)
        assert fg.get_num_threads() == 1  # a refused value changes nothing
    finally:
        fg.set_num_threads(before)


def test_num_threads_variable_is_checked(monkeypatch):
    monkeypatch.setitem(threads._state, "threads", None)
    monkeypatch.setenv("FUSEGRAD_NUM_THREADS", "0")
    with pytest.raises(ValueError, match="FUSEGRAD_NUM_THREADS"):
        fg.get_num_threads()
    monkeypatch.setenv("FUSEGRAD_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="FUSEGRAD_NUM_THREADS"):
        fg.get_num_threads()
    monkeypatch.setenv("FUSEGRAD_NUM_THREADS", "1")
    assert fg.get_num_threads() == 1


def test_steps_from_two_python_threads_at_once():
    """Two steps running at the same time in two Python threads (the pool is not re-entrant:
    they take turns) both give what they give alone."""
    def loss_fn(p, x):
        return fg.mean(fg.relu(x @ p["w"]) ** 2)

    r = np.random.default_rng(3)
    x = r.standard_normal((256, 256)).astype(np.float32)
    w0 = (r.standard_normal((256, 256)) * 0.05).astype(np.float32)

    def train(out, k):
        p = {"w": w0.copy()}
        step = fg.train_step(loss_fn, fg.optim.SGD(lr=0.01))
        for _ in range(5):
            step(p, x)
        out[k] = p["w"]

    alone: dict = {}
    train(alone, 0)
    together: dict = {}
    workers = [threading.Thread(target=train, args=(together, k)) for k in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for k in range(2):
        np.testing.assert_array_equal(together[k], alone[0])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_process_can_train_after_its_parent_used_the_pool():
    """GNU OpenMP stops a forked child that uses it: a process forked from one that launched
    the pool runs its steps on one thread (the same results), and says so in describe()."""
    code = ("import os, numpy as np, fusegrad as fg\n"
            "fg.set_num_threads(2)\n"
            "def f(p, x): return fg.mean(fg.relu(x @ p['w']) ** 2)\n"
            "x = np.ones((512, 512), np.float32)\n"
            "p = {'w': np.full((512, 512), 0.01, np.float32)}\n"
            "s = fg.train_step(f, fg.optim.SGD(lr=0.01)); s(p, x)\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    from fusegrad.runtime import threads\n"
            "    s(p, x); os._exit(0 if threads.workers_now() == 1 else 3)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "print('child', status)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NUMBA_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "child 0" in done.stdout, done.stdout + done.stderr[-2000:]


def test_fewer_workers_while_other_processes_hold_the_cores(monkeypatch):
    """Another process keeping a core busy: the next steps run on fewer threads (a worker
    waiting for a core would stall every parallel call); FUSEGRAD_SHARE_CORES=0 keeps them."""
    clock = {"t": 100.0, "busy": 0.0}
    watch = threads._CoreWatch()
    monkeypatch.setattr(threads, "_watch", watch)
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads.time, "process_time", lambda: 0.0)  # this process: idle
    monkeypatch.setattr(threads._CoreWatch, "_machine_busy", staticmethod(lambda: clock["busy"]))
    monkeypatch.setitem(threads._state, "threads", 4)
    assert threads.workers_now() == 4  # no sample to compare with yet
    clock["t"] += 1.0
    clock["busy"] += 2.0  # two cores busy for a second, none of it ours
    assert threads.workers_now() == 2
    clock["t"] += watch.INTERVAL / 2  # within the interval: the last sample stands
    clock["busy"] += 4 * watch.INTERVAL / 2
    assert threads.workers_now() == 2
    clock["t"] += 1.0  # the others stopped
    assert threads.workers_now() == 4
    clock["t"] += 1.0
    clock["busy"] += 3.9
    assert threads.workers_now() == 1  # never fewer than one
    monkeypatch.setenv("FUSEGRAD_SHARE_CORES", "0")
    assert threads.workers_now() == 4


@MULTICORE
def test_a_threading_layer_that_cannot_start_means_one_thread_and_a_warning(monkeypatch):
    """No pool (e.g. a layer Numba cannot load here): the step warns once and runs on one
    thread with the same results, instead of failing."""
    from numba.np.ufunc import parallel

    def loss_fn(p, x):
        return fg.mean(fg.relu(x @ p["w"]) ** 2)

    x = np.ones((512, 512), np.float32)
    w0 = np.full((512, 512), 0.01, np.float32)
    before = fg.get_num_threads()
    fg.set_num_threads(1)
    p1 = {"w": w0.copy()}
    fg.train_step(loss_fn, fg.optim.SGD(lr=0.01))(p1, x)

    def broken():
        raise ImportError("no threading layer here")

    threads.parallel_for_address.cache_clear()
    monkeypatch.setattr(parallel, "_launch_threads", broken)
    monkeypatch.setenv("FUSEGRAD_SHARE_CORES", "0")  # ask for the pool whatever the load
    try:
        fg.set_num_threads(threads.pool_size())
        p2 = {"w": w0.copy()}
        with pytest.warns(RuntimeWarning, match="one thread"):
            fg.train_step(loss_fn, fg.optim.SGD(lr=0.01))(p2, x)
        np.testing.assert_array_equal(p1["w"], p2["w"])
    finally:
        monkeypatch.undo()
        threads.parallel_for_address.cache_clear()
        fg.set_num_threads(before)
