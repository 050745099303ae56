"""Data-parallel jobs that tests/test_distributed.py runs under `mpiexec -n 2 python -m mpi4py`.

    python -m mpi4py tests/mpi_jobs.py <job> <output folder>

Each job writes what it found into the folder (one .npz or .json per rank) for the test to check;
a failed expectation inside a job raises, which `-m mpi4py` turns into an abort of the whole job.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

import fusegrad as fg

comm = MPI.COMM_WORLD
rank = comm.Get_rank()


def loss_fn(p, x, y):
    h = fg.relu(x @ p["w1"] + p["b1"])
    h = fg.layer_norm(h, p["g"], p["beta"]) if "g" in p else h
    return fg.cross_entropy(h @ p["w2"] + p["b2"], y)


def init(seed, layer_norm=True):
    r = np.random.default_rng(seed)
    p = {"w1": (r.standard_normal((12, 32)) * 0.3).astype(np.float32),
         "b1": np.zeros(32, np.float32),
         "w2": (r.standard_normal((32, 5)) * 0.3).astype(np.float32),
         "b2": np.zeros(5, np.float32)}
    if layer_norm:
        p["g"], p["beta"] = np.ones(32, np.float32), np.zeros(32, np.float32)
    return p


def data(n_batches, batch, seed=0):
    r = np.random.default_rng(seed)
    return [(r.standard_normal((batch, 12)).astype(np.float32), r.integers(0, 5, batch))
            for _ in range(n_batches)]


def save(out, name, **arrays):
    np.savez(Path(out) / f"{name}{rank}.npz", **arrays)


def job_train(out, steps=100):
    """Uneven shards (13 samples: 7 and 6) of batches every process iterates; parameters
    initialised differently on each process (the first step broadcasts rank 0's)."""
    params = init(seed=100 + rank)
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=3e-3), comm=comm)
    batches = data(10, 13)
    losses = []
    for t in range(steps):
        x, y = fg.distributed.shard(batches[t % len(batches)], comm)
        losses.append(step(params, x, y))
    assert fg.distributed.same_on_every_process(params, comm)
    extra = {}
    if rank == 0:  # one process on the whole batches, from rank 0's start
        ref = init(seed=100)
        single = fg.train_step(loss_fn, fg.optim.Adam(lr=3e-3))
        extra["ref_losses"] = [single(ref, *batches[t % len(batches)]) for t in range(steps)]
        extra.update({f"ref:{k}": v for k, v in ref.items()})
    stats = step.stats()
    save(out, "train", losses=losses, **{f"p:{k}": v for k, v in params.items()}, **extra,
         cache_hit=stats["cache_hit"], kernels_compiled=stats["kernels_compiled"],
         samples=x.shape[0])


def job_targets(out):
    """The same data-parallel steps on the interpreter (which sums through mpi4py) and the
    compiled CPU code."""
    results = {}
    for target in ("interpret", "cpu"):
        params = init(seed=7)
        step = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1, momentum=0.9), comm=comm,
                             target=target)
        results[target] = [float(step(params, *fg.distributed.shard(b, comm)))
                           for b in data(4, 9)]
        results[f"{target}:w1"] = params["w1"]
    save(out, "targets", **results)


def job_mixed(out):
    """Parameters of two dtypes: one all_reduce per dtype (float64 through MPI_DOUBLE), in the
    same order on every process; equal to one process on the whole batches."""
    def start(seed):
        p = init(seed, layer_norm=False)
        p["w2"] = p["w2"].astype(np.float64)
        p["b2"] = p["b2"].astype(np.float64)
        return p

    params = start(seed=11 + rank)
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=1e-2), comm=comm)
    batches = data(5, 9)
    losses = [step(params, *fg.distributed.shard(b, comm)) for b in batches]
    collectives = step.ir("optimized").count("all_reduce")
    assert fg.distributed.same_on_every_process(params, comm)
    extra = {}
    if rank == 0:
        ref = start(seed=11)
        single = fg.train_step(loss_fn, fg.optim.Adam(lr=1e-2))
        extra["ref_losses"] = [single(ref, *b) for b in batches]
        extra.update({f"ref:{k}": v for k, v in ref.items()})
    save(out, "mixed", losses=losses, collectives=collectives,
         **{f"p:{k}": v for k, v in params.items()}, **extra)


def job_cuda(out):
    """target="cuda" (run on Numba's simulator by the test): the driver sums a host copy of the
    packed gradients with mpi4py; the same steps as the CPU's."""
    def small(p, x, y):
        return fg.cross_entropy(x @ p["w"] + p["b"], y)

    results = {}
    for target in ("cpu", "cuda"):
        params = {"w": init(seed=5, layer_norm=False)["w1"][:, :5].copy(),
                  "b": np.zeros(5, np.float32)}
        step = fg.train_step(small, fg.optim.SGD(lr=0.5), comm=comm, target=target)
        results[target] = [float(step(params, *fg.distributed.shard(b, comm)))
                           for b in data(2, 7)]
        results[f"{target}:w"] = params["w"]
        assert fg.distributed.same_on_every_process(params, comm)
    save(out, "cuda", **results)


def job_nan(out):
    """A NaN in one process's shard at the third step: every process skips that step (the guard
    reads the summed values), and the next steps go on, identical everywhere."""
    params = init(seed=3)
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=1e-2), comm=comm)
    outcome = []
    for t, (x, y) in enumerate(data(6, 8)):
        x, y = fg.distributed.shard((x, y), comm)
        if t == 2 and rank == 1:
            x = x.copy()
            x[0, 3] = np.nan
        before = {k: v.copy() for k, v in params.items()}
        try:
            step(params, x, y)
            outcome.append("ok")
        except (fg.NonFiniteLossError, fg.NonFiniteGradientError) as exc:
            outcome.append(type(exc).__name__)
            assert all(np.array_equal(before[k], params[k]) for k in params), "written"
        assert fg.distributed.same_on_every_process(params, comm)
    save(out, "nan", outcome=outcome, t=step.t)


def job_raise(out):
    """Rank 1 raises while rank 0 waits in the step's all-reduce: `python -m mpi4py` aborts the
    job instead of leaving rank 0 waiting forever."""
    params = init(seed=3)
    step = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1), comm=comm)
    batches = data(3, 8)
    step(params, *fg.distributed.shard(batches[0], comm))
    if rank == 1:
        raise ValueError("rank 1 fails on purpose")
    step(params, *fg.distributed.shard(batches[1], comm))  # waits for rank 1, which never comes
    (Path(out) / "rank0-finished").write_text("the job should have been aborted")


def job_fit(out):
    """fg.fit shards every batch itself; progress on rank 0 only; step.save writes on rank 0 and
    every process meets after it; load + the next step's broadcast restore the same state."""
    sys.stderr = open(Path(out) / f"stderr{rank}.txt", "w")  # noqa: SIM115 - tqdm writes here
    batches = data(6, 11)
    params = init(seed=200 + rank)
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=1e-2), comm=comm)
    history = fg.fit(step, params, batches, epochs=2, progress=True,
                     eval_fn=lambda p: float(np.sum(p["b2"])))
    path = Path(out) / "ckpt.npz"
    step.save(path, params)
    assert path.exists()  # the barrier after the write: every process sees it
    again = init(seed=1)
    fresh = fg.train_step(loss_fn, fg.optim.Adam(lr=1e-2), comm=comm)
    fresh.load(path, again)
    assert fresh.t == step.t and all(np.array_equal(again[k], params[k]) for k in params)
    extra = {}
    if rank == 0:
        ref = init(seed=200)
        single = fg.train_step(loss_fn, fg.optim.Adam(lr=1e-2))
        ref_history = fg.fit(single, ref, batches, epochs=2, progress=False)
        extra = {"ref_loss": ref_history["loss"], **{f"ref:{k}": v for k, v in ref.items()}}
    sys.stderr.close()
    save(out, "fit", loss=history["loss"], **{f"p:{k}": v for k, v in params.items()}, **extra)


def job_broadcast(out):
    """fg.distributed.broadcast on its own, and shard's shares."""
    params = init(seed=rank)
    fg.distributed.broadcast(params, comm)
    x = np.arange(7 * 2).reshape(7, 2)
    (mine,) = (fg.distributed.shard(x, comm),)
    save(out, "broadcast", **{f"p:{k}": v for k, v in params.items()}, mine=mine,
         same=fg.distributed.same_on_every_process(params, comm))


if __name__ == "__main__":
    name, folder = sys.argv[1], sys.argv[2]
    globals()[f"job_{name}"](folder)
    if rank == 0:
        (Path(folder) / f"{name}.done").write_text(json.dumps({"size": comm.Get_size()}))
