"""Benchmark fusegrad against NumPy backprop, PyTorch and JAX on the same training steps.

    python benchmarks/run.py                       # every workload, full timing (a few minutes)
    python benchmarks/run.py --quick               # smoke run: fewer, shorter rounds
    python benchmarks/run.py --workload mlp-small --workload cnn
    python benchmarks/run.py --contender fusegrad --contender "jax jit"
    python benchmarks/run.py --cold                # fresh fusegrad/inductor caches: cold compiles
    python benchmarks/run.py --threads 1 2         # everything on 1, then 2 threads: + scaling

Prints, per workload, the median step time of every contender, its ratio to fusegrad's and to
the GEMM floor (the step's matrix products alone in NumPy's BLAS), the compile time, and whether
its losses over the first steps agree with fusegrad's. Run by hand; never part of CI.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout: `benchmarks` and `fusegrad` importable
    sys.path.insert(0, str(ROOT))

FULL_BLOCK_SECONDS = 0.5      # each contender's timed block in a round lasts about this long
FULL_MIN_ROUNDS = 5
FULL_BUDGET_SECONDS = 30      # per workload, for the timed rounds (compiles come on top)
QUICK_BLOCK_SECONDS = 0.12
QUICK_ROUNDS = 3
QUICK_BUDGET_SECONDS = 8


def parse_args(argv=None):
    from benchmarks.contenders import FACTORIES
    from benchmarks.workloads import WORKLOADS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", action="extend", nargs="+", choices=list(WORKLOADS),
                    metavar="NAME",
                    help=f"workload(s) to run (default all): {', '.join(WORKLOADS)}")
    ap.add_argument("--contender", action="extend", nargs="+", choices=list(FACTORIES),
                    metavar="NAME",
                    help=f"contender(s) to run (default all): {', '.join(FACTORIES)}")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK_ROUNDS} rounds of ~{QUICK_BLOCK_SECONDS}s blocks")
    ap.add_argument("--rounds", type=int,
                    help="timed rounds per workload (default: as many as fit about "
                         f"{FULL_BUDGET_SECONDS} s, at least {FULL_MIN_ROUNDS})")
    ap.add_argument("--threads", type=int, nargs="+",
                    help="run every contender on N threads pinned to the first N CPUs; "
                         "several counts run one after another and end with a scaling table "
                         "(default: each library's own choice; torch is set to 2)")
    ap.add_argument("--target", default="cpu", choices=("cpu", "cuda"),
                    help="where the steps run: cpu, or cuda (fusegrad target='cuda' and PyTorch "
                         "on the GPU; the CPU-only contenders are left out)")
    ap.add_argument("--cold", action="store_true",
                    help="point FUSEGRAD_CACHE_DIR and TORCHINDUCTOR_CACHE_DIR at fresh "
                         "temporary folders, so compile times are cold compiles (default: the "
                         "caches as they are, as a user's second run finds them)")
    return ap.parse_args(argv)


def fresh_caches() -> str:
    """Point fusegrad's and TorchInductor's disk caches at a new temporary folder."""
    tmp = tempfile.mkdtemp(prefix="fusegrad-bench-")
    os.environ["FUSEGRAD_CACHE_DIR"] = os.path.join(tmp, "fusegrad")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tmp, "torchinductor")
    return tmp


def cuda_device_name():
    """The GPU's name, or None (after saying why) when target='cuda' cannot run here."""
    from fusegrad.runtime.cuda_device import CudaUnavailableError, on_simulator, require_cuda

    try:
        cuda = require_cuda()
    except CudaUnavailableError as e:
        print(e)
        return None
    if on_simulator():
        return "Numba's CUDA simulator (timings mean nothing)"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def limit_threads(n: int):
    """Every worker starts with these (they are read when the libraries load) and pins
    itself to the first n CPUs (worker.py)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS", "FUSEGRAD_NUM_THREADS", "BENCH_THREADS"):
        os.environ[var] = str(n)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.target == "cuda":
        device = cuda_device_name()
        if device is None:
            return 1
        print(f"target cuda: {device}")
    tmp = fresh_caches() if args.cold else None
    try:
        if not args.threads:
            run(args, tmp)
            return 0
        by_threads = {}
        for n in args.threads:
            limit_threads(n)
            print(f"\n======== {n} thread{'s' if n != 1 else ''} ========", flush=True)
            by_threads[n] = run(args, tmp)
        if len(by_threads) > 1:
            from benchmarks import report

            print("\n" + report.scaling_table(by_threads), flush=True)
        return 0
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp) -> list:
    """Every workload for every contender, printed; returns [(workload, results)]."""
    from benchmarks import env_info, report
    from benchmarks.contenders import FACTORIES
    from benchmarks.timing import run_workload
    from benchmarks.worker import WorkerPool
    from benchmarks.workloads import WORKLOADS

    start = time.perf_counter()
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    for line in env_info.header_lines():
        log(line)
    log("caches: " + ("as they are (compile s is a warm start where a cache holds the step; "
                      "--cold for cold compiles)" if tmp is None else
                      f"fresh temporary folder {tmp} (cold compiles)"))
    log("each contender runs in its own process; one runs at a time")
    names = [n for n in FACTORIES if not args.contender or n in args.contender]
    pool = WorkerPool(args.target)
    all_results, infos = [], {}
    try:
        for wname in args.workload or list(WORKLOADS):
            w = WORKLOADS[wname]
            if args.rounds:
                rounds = min_rounds = args.rounds
            elif args.quick:
                rounds = min_rounds = QUICK_ROUNDS
            else:
                rounds, min_rounds = w.rounds, FULL_MIN_ROUNDS
            block = QUICK_BLOCK_SECONDS if args.quick else FULL_BLOCK_SECONDS
            budget = QUICK_BUDGET_SECONDS if args.quick else FULL_BUDGET_SECONDS
            log(f"\n{w.name}: {w.title}  [load average {env_info.load_average()}]")
            results = run_workload(w, pool, names, rounds, block, min_rounds=min_rounds,
                                   budget_seconds=budget, log=log)
            all_results.append((w, results))
        for name, remote in pool.remotes.items():
            try:
                infos[name] = remote.info() if remote.alive() else ["(worker not running)"]
            except Exception as exc:  # noqa: BLE001
                infos[name] = [f"(no answer: {exc})"]
    finally:
        pool.close()

    log("\nBLAS and thread pools per contender process (threadpoolctl):")
    seen = {}
    for name, lines in infos.items():
        key = tuple(lines)
        if key in seen:
            log(f"  {name}: same as {seen[key]}")
            continue
        seen[key] = name
        log(f"  {name}:")
        for line in lines:
            log("    " + line)
    log("")
    rows = [row for w, results in all_results for row in report.rows_for(w, results)]
    log(report.format_table(rows))
    log("")
    for w, results in all_results:
        for line in report.notes_for(w, results):
            log(line)
    fails = report.failures(all_results)
    if fails:
        log("\nFailures (last lines of each traceback):")
        for line in fails:
            log(line)
    log(f"\nload average at the end {env_info.load_average()}; "
        f"total wall time {time.perf_counter() - start:.0f} s")
    return all_results


if __name__ == "__main__":
    sys.exit(main())
