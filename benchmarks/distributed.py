"""Data-parallel training: samples per second on 1 and on N processes, and the all-reduce's share.

    python benchmarks/distributed.py                       # mlp-large and ln-mlp, 1 and 2 ranks
    python benchmarks/distributed.py --workload ln-mlp --ranks 1 --ranks 2 --ranks 4 --steps 40

Every figure comes from its own job, `mpiexec -n R python -m mpi4py benchmarks/distributed.py
--worker ...`, each process on one thread (OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = 1): the
workload's batch (benchmarks/workloads.py) is split over the R processes, so R processes do the
work of one step of the whole batch, and samples/s = batch / step time. The baseline is one
process without a communicator (a plain fg.train_step); "1 rank, comm" is the same through the
data-parallel step (its all-reduce over one process).

    step ms        median over the timed steps of rank 0 (every step ends with the all-reduce,
                   which keeps the processes in step)
    all-reduce ms  median of MPI_Allreduce (mpi4py, in place) on a buffer of the step's packed
                   gradients, timed alone after a barrier: the collective's own cost
    in step ms     the step's all_reduce kernel call, timed by step.profile (it includes waiting
                   for the slowest process)
    share          all-reduce ms / step ms

Run by hand (on a quiet machine: every process needs a core of its own); never part of CI.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORKLOADS = ("mlp-large", "ln-mlp")


def worker(name: str, steps: int, use_comm: bool) -> None:
    import numpy as np
    from mpi4py import MPI

    import fusegrad as fg
    from benchmarks.fusegrad_contender import loss_function
    from benchmarks.workloads import WORKLOADS as ALL

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    w = ALL[name]
    params = w.init_params()
    x, y = w.batch_data()
    opt = fg.optim.SGD(lr=w.lr) if w.optimizer == "sgd" else fg.optim.Adam(lr=w.lr)
    if use_comm:
        step = fg.train_step(loss_function(w), opt, comm=comm)
        x, y = fg.distributed.shard((x, y), comm)
    else:
        step = fg.train_step(loss_function(w), opt)
    t0 = time.perf_counter()
    step(params, x, y)
    first = time.perf_counter() - t0
    for _ in range(2):  # warm-up
        step(params, x, y)
    comm.Barrier()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(params, x, y)
        times.append(time.perf_counter() - t0)
    result = {"workload": name, "ranks": size, "comm": use_comm, "batch": w.batch,
              "step_ms": 1e3 * statistics.median(times), "first_step_s": first,
              "samples_per_s": w.batch / statistics.median(times)}
    if use_comm:
        # the collective alone, on a buffer of the size the step reduces
        (pack,) = step._runner(step._last).program.plan.packs.values()
        buf = np.zeros(pack.result.type.size, np.float32)
        calls = []
        for _ in range(max(steps, 10)):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            calls.append(time.perf_counter() - t0)
        result["allreduce_ms"] = 1e3 * statistics.median(calls)
        result["allreduce_mb"] = buf.nbytes / 2**20
        result["share"] = result["allreduce_ms"] / result["step_ms"]
        profile = step.profile(params, x, y, repeats=5)
        result["in_step_ms"] = 1e3 * sum(t for what, t in profile if "all_reduce" in what)
        result["profile_total_ms"] = 1e3 * sum(t for _, t in profile)
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        sys.exit("mpiexec not found: pip install 'fusegrad[mpi]'")
    return found


def run(name: str, ranks: int, steps: int, use_comm: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               MPIEXEC_TIMEOUT="900")
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__, "--worker",
           name, "--steps", str(steps)] + ([] if use_comm else ["--no-comm"])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1000)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", action="append", choices=WORKLOADS)
    ap.add_argument("--ranks", action="append", type=int)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--worker")
    ap.add_argument("--no-comm", action="store_true")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.steps, not args.no_comm)
        return
    ranks = args.ranks or [1, 2]
    rows = []
    for name in args.workload or WORKLOADS:
        base = run(name, 1, args.steps, use_comm=False)
        rows.append(base)
        for r in ranks:
            rows.append(run(name, r, args.steps, use_comm=True))
        for row in rows[-(1 + len(ranks)):]:
            row["speedup"] = row["samples_per_s"] / base["samples_per_s"]
    print("| workload | ranks | samples/s | step ms | speedup | all-reduce MiB | all-reduce ms "
          "| in step ms | share |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        who = f"{r['ranks']}" + (", comm" if r["comm"] else " (no comm)")
        extra = (f"{r['allreduce_mb']:.1f} | {r['allreduce_ms']:.2f} | {r['in_step_ms']:.2f} | "
                 f"{100 * r['share']:.1f} %" if r["comm"] else "- | - | - | -")
        print(f"| {r['workload']} | {who} | {r['samples_per_s']:,.0f} | {r['step_ms']:.1f} | "
              f"{r['speedup']:.2f}x | {extra} |")


if __name__ == "__main__":
    main()
