"""Per-kernel thread scaling of fusegrad's compiled steps, from step.profile().

    python benchmarks/threads.py                          # ln-mlp and cnn, 1 and 2 threads
    python benchmarks/threads.py --workload mlp-large --threads 1 2 4

For each workload: every call of the step timed alone (median of repeats) on each thread count,
summed by kind (GEMMs, loop kernels, the rest), the speed-up of each, and the calls that take
most of the step. The "loop kernels" row is the issue's "non-GEMM kernel time". Run by hand on
a quiet machine; never part of CI.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LOOP_KINDS = ("elementwise", "row+column", "row", "column", "multi")


def kind_of(what: str) -> str:
    m = re.search(r"= (gemm|row\+column|row|column|elementwise|multi)\b", what)
    if m is None:
        return "other"
    return "GEMMs" if m.group(1) == "gemm" else "loop kernels"


def profile(workload, n_threads, repeats):
    import fusegrad as fg
    from benchmarks.fusegrad_contender import Fusegrad

    fg.set_num_threads(n_threads)
    contender = Fusegrad(workload)
    x, y = workload.batch_data()
    contender.setup(workload.init_params(), x, y)
    contender.step()
    return contender.train_step.profile(contender.params, contender.x, contender.y,
                                        repeats=repeats)


def main(argv=None) -> int:
    from benchmarks.workloads import WORKLOADS
    from fusegrad.runtime import threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", nargs="+", default=["ln-mlp", "cnn"], choices=list(WORKLOADS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--top", type=int, default=8, help="slowest calls shown per workload")
    args = ap.parse_args(argv)
    print(f"fusegrad: {threads.describe()}")
    base = args.threads[0]
    for name in args.workload:
        w = WORKLOADS[name]
        runs = {n: profile(w, n, args.repeats) for n in args.threads}
        print(f"\n{w.name}: {w.title}")
        head = f"{'':<14}" + "".join(f"{f'{n} thr ms':>11}" for n in args.threads) + \
            "".join(f"{f'{n}/{base}':>8}" for n in args.threads[1:])
        print(head)
        totals = {}
        for n, calls in runs.items():
            for what, seconds in calls:
                totals.setdefault(kind_of(what), {}).setdefault(n, 0.0)
                totals[kind_of(what)][n] += seconds
        totals["all"] = {n: sum(s for _, s in calls) for n, calls in runs.items()}
        for kind in ("GEMMs", "loop kernels", "other", "all"):
            t = totals.get(kind)
            if not t:
                continue
            line = f"{kind:<14}" + "".join(f"{1e3 * t[n]:>11.3f}" for n in args.threads)
            line += "".join(f"{t[n] / t[base]:>8.2f}" for n in args.threads[1:])
            print(line)
        print(f"slowest calls on {base} thread(s), and their time ratio:")
        calls = runs[base]
        order = sorted(range(len(calls)), key=lambda k: -calls[k][1])[:args.top]
        for k in order:
            what, seconds = calls[k]
            ratios = "".join(f"{runs[n][k][1] / seconds:>7.2f}" for n in args.threads[1:])
            print(f"  {1e3 * seconds:8.3f} ms{ratios}  {what[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
