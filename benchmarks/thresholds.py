"""Where splitting a call over threads starts to pay: the measurements behind the thresholds in
fusegrad/compiler/codegen/cpu.py (PARALLEL_MIN_BYTES, GEMM_MIN_FLOPS, GEMM_TILE_FLOPS).

    python benchmarks/thresholds.py                 # 1 thread vs all cores, a size sweep

For each size: an elementwise training step (SGD with momentum on one parameter: one fused
loop kernel over the array) and a matrix product step, compiled once with every call kept on one
thread and once with every call split, each timed on one thread and on all cores (medians of
interleaved rounds). The split pays where "split, N threads" beats "whole, 1 thread". Run by
hand on a quiet machine; never part of CI.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _step(kind, n, split):
    import fusegrad as fg
    from fusegrad.compiler.codegen import cpu

    big = 0 if split else 1 << 62
    cpu.PARALLEL_MIN_BYTES = cpu.PARALLEL_MIN_FLOPS = big
    cpu.GEMM_MIN_FLOPS = big
    cpu.GEMM_TILE_FLOPS = 1 if split else big
    cpu.GEMM_TILE_EDGE = 16
    # a fresh cache: the program cache does not know these constants were changed
    os.environ["FUSEGRAD_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusegrad-thresholds-")
    r = np.random.default_rng(0)
    if kind == "elementwise":
        p = {"w": r.standard_normal(n).astype(np.float32)}
        x = r.standard_normal(n).astype(np.float32)

        def loss_fn(p, x):
            return fg.sum(p["w"] * x)
        step = fg.train_step(loss_fn, fg.optim.SGD(lr=1e-3, momentum=0.9))
        args = (p, x)
    else:  # a square product
        p = {"w": (r.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)}
        x = r.standard_normal((n, n)).astype(np.float32)

        def loss_fn(p, x):
            return fg.mean((x @ p["w"]) ** 2)
        step = fg.train_step(loss_fn, fg.optim.SGD(lr=1e-6))
        args = (p, x)
    step(*args)
    return step, args


def _median_time(step, args, threads, reps):
    import fusegrad as fg

    fg.set_num_threads(threads)
    step(*args)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step(*args)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> int:
    from fusegrad.runtime import threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=threads.pool_size())
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    n = args.threads
    sweeps = {"elementwise": [1 << k for k in range(12, 23, 2)],
              "gemm": [32, 48, 64, 96, 128, 192, 256]}
    print(f"1 thread vs {n}; medians of {args.rounds} interleaved rounds, microseconds per step")
    for kind, sizes in sweeps.items():
        print(f"\n{kind:<12}{'size':>9}{'whole 1':>10}{'split 1':>10}{f'split {n}':>10}"
              f"{'gain':>7}")
        for size in sizes:
            whole, wa = _step(kind, size, False)
            split, sa = _step(kind, size, True)
            reps = max(20, int(2e6 // (size if kind == "elementwise" else size ** 3 // 64 + 1)))
            reps = min(reps, 2000)
            runs = {"w1": [], "s1": [], "sn": []}
            for _ in range(args.rounds):
                runs["w1"].append(_median_time(whole, wa, 1, reps))
                runs["s1"].append(_median_time(split, sa, 1, reps))
                runs["sn"].append(_median_time(split, sa, n, reps))
            w1, s1, sn = (1e6 * float(np.median(v)) for v in runs.values())
            shown = size if kind == "elementwise" else f"{size}^3"
            print(f"{'':<12}{shown:>9}{w1:>10.1f}{s1:>10.1f}{sn:>10.1f}{w1 / sn:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
