"""Compile time: the first call of a compiled training step, cold, warm and after an edit, against
JAX jit and torch.compile on the same models where installed.

    python benchmarks/compile.py                        # every model, 3 rounds (several minutes)
    python benchmarks/compile.py --model transformer-2L --model lstm-16 --rounds 1
    python benchmarks/compile.py --no-peers             # fusegrad only

Every figure comes from a fresh process (the import is timed apart and not counted):
  cold     nothing on disk: an empty FUSEGRAD_CACHE_DIR (fusegrad's library kernels and its
           dispatcher compile too, as on a new machine)
  warm     a second process on the cache the cold run filled
  edited   the model's source file with lines added above the model (every source line moves;
           a user's comment), on the warm cache: must compile no kernel
  peers    benchmarks/peer_compile.py in its own process: JAX jit (no persistent cache), and
           torch.compile with a fresh TorchInductor cache
The table shows medians over the rounds; `phases` break down fusegrad's cold call (stats()).
Run by hand; never part of CI.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORKLOADS = ("mlp-small", "mlp-large", "ln-mlp", "cnn")
MODELS = ("transformer-2L", "transformer-8L", "lstm-16", "lstm-64", "lstm-scan-16", "lstm-scan-64",
          "resnet-bn", "mnist-net")
RATIOS = (("transformer-8L", "transformer-2L", 1.3), ("lstm-64", "lstm-16", 1.5),
          ("lstm-scan-64", "lstm-scan-16", 1.05))


# ---- the child: one first call in this process --------------------------------------------------

def _module_from(path: Path, name: str, shift: bool):
    """Import the file defining the model; with `shift`, from a copy with lines added on top."""
    if shift:
        text = "# an edit: these lines move every line of the model below\n\n\n" + \
               path.read_text()
        folder = Path(tempfile.mkdtemp(prefix="fusegrad-edited-"))
        path = folder / path.name
        path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _build(model: str, shift: bool):
    """(step, params, batch) of a workload or model, fresh."""
    import fusegrad as fg

    if model in WORKLOADS:
        from benchmarks.workloads import WORKLOADS as W

        contender = _module_from(ROOT / "benchmarks" / "fusegrad_contender.py",
                                 "benchmarks.fusegrad_contender_timed", shift)
        w = W[model]
        opt = fg.optim.SGD(lr=w.lr) if w.optimizer == "sgd" else fg.optim.Adam(lr=w.lr)
        return fg.train_step(contender.loss_function(w), opt), w.init_params(), w.batch_data()
    models = _module_from(ROOT / "benchmarks" / "models.py", "benchmarks.models_timed", shift)
    m = models.MODELS[model]()
    return m.step(), m.params(), m.batch()


def child(model: str, shift: bool) -> dict:
    t0 = time.perf_counter()
    import fusegrad  # noqa: F401  (the import is not part of the first call)
    import numpy  # noqa: F401

    imported = time.perf_counter() - t0
    step, params, batch = _build(model, shift)
    t0 = time.perf_counter()
    loss = float(step(params, *batch))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    step(params, *batch)
    second = time.perf_counter() - t0
    s = step.stats()
    return {"model": model, "import_s": imported, "first_call_s": first, "step_s": second,
            "loss": loss, "calls": s["kernels"], "kernels_compiled": s["kernels_compiled"],
            "kernels_loaded": s["kernels_loaded"], "program": s["cache"],
            "phases": s["phases"]}


# ---- the parent -----------------------------------------------------------------------------------

def _run(args, env=None, timeout=900) -> dict:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def fusegrad_round(model: str) -> dict:
    cache = tempfile.mkdtemp(prefix="fusegrad-compile-bench-")
    env = dict(os.environ, FUSEGRAD_CACHE_DIR=cache)
    env.pop("FUSEGRAD_CROSSCHECK", None)
    me = [str(Path(__file__).resolve()), "--child", model]
    return {"cold": _run(me, env), "warm": _run(me, env), "edited": _run(me + ["--shift"], env)}


def peer_round(peer: str, model: str) -> dict:
    return _run(["-m", "benchmarks.peer_compile", peer, model])


def _median(rounds, key):
    values = [r[key] for r in rounds if key in r]
    return statistics.median(values) if values else None


def _fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="extend", nargs="+", choices=WORKLOADS + MODELS,
                    metavar="NAME", help=f"models (default all): {', '.join(WORKLOADS + MODELS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-peers", action="store_true", help="fusegrad only")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--shift", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.shift)))
        return
    models = args.model or list(WORKLOADS + MODELS)
    peers = ()
    if not args.no_peers:
        try:
            from benchmarks.peer_models import PEERS, unavailable

            peers = tuple(p for p in PEERS if unavailable(p) is None)
            for p in PEERS:
                if unavailable(p):
                    print(f"{p}: {unavailable(p)}")
        except ImportError as exc:
            print(f"peers: benchmarks/peer_models.py unusable ({exc})")
    results = {}
    for r in range(args.rounds):
        for model in models:  # alternate models every round: load drifts, not one model's figures
            print(f"round {r + 1}/{args.rounds}: {model}", file=sys.stderr, flush=True)
            row = results.setdefault(model, {"cold": [], "warm": [], "edited": [],
                                              **{p: [] for p in peers}})
            for kind, res in fusegrad_round(model).items():
                row[kind].append(res)
            for p in peers:
                row[p].append(peer_round(p, model))
    print_table(models, peers, results, args.rounds)


def print_table(models, peers, results, rounds):
    print(f"\nfirst call of a compiled training step, seconds (median of {rounds} rounds, each "
          f"in a fresh process; import not counted)\n")
    head = ["model", "calls", "kernels", "cold", "warm", "edited (compiled)"] + \
           [f"{p}" for p in peers]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|")
    cold_of = {}
    for model in models:
        row = results[model]
        cold = _median(row["cold"], "first_call_s")
        cold_of[model] = cold
        first = next((c for c in row["cold"] if "calls" in c), {})
        edited = _median(row["edited"], "first_call_s")
        compiled = max((e.get("kernels_compiled", 0) for e in row["edited"]), default=0)
        cells = [model, str(first.get("calls", "?")),
                 str(first.get("kernels_compiled", "?")), _fmt(cold),
                 _fmt(_median(row["warm"], "first_call_s")),
                 f"{_fmt(edited)} ({compiled})"]
        for p in peers:
            value = _median(row[p], "first_call_s")
            errors = [x["error"] for x in row[p] if "error" in x]
            cells.append(f"{_fmt(value)} ({value / cold:.2f}×)" if value and cold else
                         f"failed: {str(errors[0])[:40]}" if errors else "–")
        print("| " + " | ".join(cells) + " |")
    print("\n(peers: their first call over fusegrad's cold first call in brackets)")
    for big, small, target in RATIOS:
        if cold_of.get(big) and cold_of.get(small):
            ratio = cold_of[big] / cold_of[small]
            print(f"{big} / {small} cold: {ratio:.2f}× (target ≤ {target}×)")
    print("\nphases of fusegrad's cold first call (seconds, first round):")
    for model in models:
        first = next((c for c in results[model]["cold"] if "phases" in c), None)
        if first:
            phases = ", ".join(f"{k} {v:.3f}" for k, v in first["phases"].items() if v >= 0.005)
            print(f"  {model}: {phases}")


if __name__ == "__main__":
    main()
