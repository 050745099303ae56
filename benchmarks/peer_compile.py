"""The first call of a JAX jit / torch.compile training step, in this fresh process.

    python -m benchmarks.peer_compile "jax jit" transformer-2L
    python -m benchmarks.peer_compile torch.compile lstm-16

Builds the step of benchmarks/peer_models.py, times its first call (compilation + one step) and
the median of the next 5 calls, and prints one line of JSON:
    {"peer", "model", "first_call_s", "step_s", "losses": [first 3], "next_s": [...],
     "import_s", "build_s", versions, threads, graph breaks ...}
or {"peer", "model", "error"} on failure (exit status 0 either way).

Nothing compiled before may help: TorchInductor's caches go to a new temporary folder (set
before torch is imported, removed at exit) and JAX's persistent compilation cache is off. The
library's import and building the step (converting parameters) are timed apart, not counted
in first_call_s, as benchmarks/compile.py does for fusegrad.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback

NEXT_CALLS = 5


def fresh_caches(peer: str) -> str | None:
    """Point the peer's compilation caches at nothing reusable; the folder to remove, if any."""
    if peer == "torch.compile":
        folder = tempfile.mkdtemp(prefix="peer-compile-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder  # FX graph, AOTAutograd and kernel caches
        return folder
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    return None


def measure(peer: str, model: str) -> dict:
    from benchmarks import peer_models

    why = peer_models.unavailable(peer)
    if why:
        raise RuntimeError(why)
    t0 = time.perf_counter()
    peer_models._import(peer)
    import_s = time.perf_counter() - t0
    if peer == "jax jit":
        import jax

        jax.config.update("jax_enable_compilation_cache", False)
        if jax.config.jax_compilation_cache_dir:
            raise RuntimeError(f"a JAX compilation cache is configured "
                               f"({jax.config.jax_compilation_cache_dir})")
    t0 = time.perf_counter()
    step = peer_models.build(peer, model)
    build_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    losses = [step()]
    first = time.perf_counter() - t0
    times = []
    for _ in range(NEXT_CALLS):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    return {"peer": peer, "model": model, "first_call_s": first,
            "step_s": statistics.median(times), "losses": losses[:3], "next_s": times,
            "import_s": import_s, "build_s": build_s, "cpus": os.cpu_count(),
            **peer_models.details(peer)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    peer, model = argv
    folder = fresh_caches(peer)
    try:
        result = measure(peer, model)
    except Exception as exc:  # noqa: BLE001 - reported as a row of the table
        traceback.print_exc(file=sys.stderr)
        lines = str(exc).strip().splitlines() or [""]
        result = {"peer": peer, "model": model, "error": f"{type(exc).__name__}: {lines[0]}"}
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
