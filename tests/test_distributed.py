"""Data-parallel training on 2 processes of one machine (fusegrad/distributed.py): each test runs
a job of tests/mpi_jobs.py under `mpiexec -n 2 python -m mpi4py`, in a subprocess with a hard
timeout, and checks what the job wrote. Skipped without mpiexec and mpi4py
(pip install 'fusegrad[mpi]').
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fusegrad as fg

JOBS = Path(__file__).with_name("mpi_jobs.py")
ROOT = Path(fg.__file__).resolve().parents[1]


def _mpiexec():
    """The mpiexec installed with this Python's MPI (the mpich wheel puts it beside python),
    else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
pytestmark = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason="needs mpiexec and mpi4py: pip install 'fusegrad[mpi]'")
TIMEOUT = 60  # seconds a job may take before MPI kills it (MPIEXEC_TIMEOUT), and the test


def run_job(name, out: Path, processes=2, env=None, check=True):
    """Run job `name` on `processes` processes; its output folder is `out`."""
    out.mkdir(parents=True, exist_ok=True)
    environ = dict(os.environ)
    environ.update({
        "PYTHONPATH": os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")]),
        "MPIEXEC_TIMEOUT": str(TIMEOUT),  # hydra kills the job past this
        # the processes share the machine: one BLAS thread each, no compile helpers
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "FUSEGRAD_COMPILE_WORKERS": "0",
        **(env or {}),
    })
    cmd = [MPIEXEC, "-n", str(processes), sys.executable, "-m", "mpi4py", str(JOBS), name,
           str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=TIMEOUT + 15,
                          cwd=str(out))
    done.seconds = time.perf_counter() - t0
    if check and (done.returncode != 0 or not (out / f"{name}.done").exists()):
        raise AssertionError(f"job {name} failed ({done.returncode}):\n{done.stdout}\n"
                             f"{done.stderr}")
    return done


def _load(out, name, rank):
    with np.load(out / f"{name}{rank}.npz") as f:
        return {k: f[k] for k in f.files}


def test_training_equals_one_process_on_the_whole_batch(tmp_path):
    """100 steps on uneven shards: the processes' parameters are bit for bit the same, and they
    and the losses equal one process training on the whole batches (float32 tolerance)."""
    run_job("train", tmp_path)
    r0, r1 = _load(tmp_path, "train", 0), _load(tmp_path, "train", 1)
    assert (int(r0["samples"]), int(r1["samples"])) == (7, 6)  # shards of 13
    for k in r0:
        if k.startswith("p:"):
            assert np.array_equal(r0[k], r1[k]), f"{k} differs between the processes"
    np.testing.assert_array_equal(r0["losses"], r1["losses"])
    np.testing.assert_allclose(r0["losses"], r0["ref_losses"], rtol=2e-5, atol=2e-6)
    for k in r0:
        if k.startswith("p:"):
            np.testing.assert_allclose(r0[k], r0["ref:" + k[2:]], rtol=1e-4, atol=1e-5,
                                       err_msg=k)


def test_a_warm_cache_is_used_by_a_second_job(tmp_path):
    env = {"FUSEGRAD_CACHE_DIR": str(tmp_path / "cache")}
    run_job("train", tmp_path / "first", env=env)
    second = tmp_path / "second"
    run_job("train", second, env=env)
    for rank in (0, 1):
        r = _load(second, "train", rank)
        assert bool(r["cache_hit"]) and int(r["kernels_compiled"]) == 0


def test_interpreter_and_compiled_code_sum_alike(tmp_path):
    run_job("targets", tmp_path)
    r0, r1 = _load(tmp_path, "targets", 0), _load(tmp_path, "targets", 1)
    np.testing.assert_array_equal(r0["cpu"], r1["cpu"])
    np.testing.assert_allclose(r0["cpu"], r0["interpret"], rtol=1e-5)
    np.testing.assert_allclose(r0["cpu:w1"], r0["interpret:w1"], rtol=1e-5, atol=1e-6)


def test_parameters_of_two_dtypes_are_summed_by_one_call_each(tmp_path):
    run_job("mixed", tmp_path)
    r0, r1 = _load(tmp_path, "mixed", 0), _load(tmp_path, "mixed", 1)
    assert int(r0["collectives"]) == 2
    np.testing.assert_array_equal(r0["losses"], r1["losses"])
    np.testing.assert_allclose(r0["losses"], r0["ref_losses"], rtol=1e-5)
    for k in r0:
        if k.startswith("p:"):
            assert r0[k].dtype == r0["ref:" + k[2:]].dtype
            np.testing.assert_allclose(r0[k], r0["ref:" + k[2:]], rtol=1e-4, atol=1e-5)


def test_cuda_driver_sums_through_the_host(tmp_path):
    pytest.importorskip("numba.cuda")
    run_job("cuda", tmp_path, env={"NUMBA_ENABLE_CUDASIM": "1"})
    r0, r1 = _load(tmp_path, "cuda", 0), _load(tmp_path, "cuda", 1)
    np.testing.assert_array_equal(r0["cuda"], r1["cuda"])
    np.testing.assert_allclose(r0["cuda"], r0["cpu"], rtol=1e-5)
    np.testing.assert_allclose(r0["cuda:w"], r0["cpu:w"], rtol=1e-5, atol=1e-6)


def test_a_nan_on_one_process_makes_every_process_skip_the_step(tmp_path):
    run_job("nan", tmp_path)
    for rank in (0, 1):
        r = _load(tmp_path, "nan", rank)
        assert list(r["outcome"]) == ["ok", "ok", "NonFiniteLossError", "ok", "ok", "ok"]
        assert int(r["t"]) == 5


def test_an_exception_on_one_process_ends_the_job(tmp_path):
    done = run_job("raise", tmp_path, check=False)
    assert done.returncode != 0
    assert "rank 1 fails on purpose" in done.stderr
    assert not (tmp_path / "rank0-finished").exists()
    assert done.seconds < TIMEOUT / 2, f"the job took {done.seconds:.0f} s to end"


def test_fit_shards_batches_and_checkpoints_on_rank_0(tmp_path):
    run_job("fit", tmp_path)
    r0, r1 = _load(tmp_path, "fit", 0), _load(tmp_path, "fit", 1)
    np.testing.assert_array_equal(r0["loss"], r1["loss"])
    np.testing.assert_allclose(r0["loss"], r0["ref_loss"], rtol=2e-5, atol=2e-6)
    for k in r0:
        if k.startswith("p:"):
            assert np.array_equal(r0[k], r1[k])
            np.testing.assert_allclose(r0[k], r0["ref:" + k[2:]], rtol=1e-4, atol=1e-5)
    assert "epoch 2/2" in (tmp_path / "stderr0.txt").read_text()
    assert (tmp_path / "stderr1.txt").read_text() == ""  # no progress bar on rank 1


def test_broadcast_and_shard(tmp_path):
    run_job("broadcast", tmp_path)
    r0, r1 = _load(tmp_path, "broadcast", 0), _load(tmp_path, "broadcast", 1)
    assert bool(r0["same"]) and bool(r1["same"])
    np.testing.assert_array_equal(r0["mine"], np.arange(8).reshape(4, 2))
    np.testing.assert_array_equal(r1["mine"], np.arange(8, 14).reshape(3, 2))


def test_shard_bounds_split_like_array_split():
    from fusegrad.distributed import shard_bounds

    for n in range(1, 12):
        for size in range(1, 5):
            parts = np.array_split(np.arange(n), size)
            for rank in range(size):
                lo, hi = shard_bounds(n, rank, size)
                assert list(range(lo, hi)) == list(parts[rank])
