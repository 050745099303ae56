"""Run one workload's contenders: set up, check they agree, warm up, time them round-robin.

Every contender lives in a worker process of its own (worker.py); this module holds both the
worker-side pieces (prepare, run_block) and the parent's loop (run_workload).

1. Each contender gets its own copy of the same initial parameters and the same batch, and runs
   `check_steps` steps; their times are kept (they include compilation) and their losses are
   compared with fusegrad's. Contenders are prepared one after the other, never concurrently.
2. One untimed warm-up block per contender, which also sizes its timed blocks: as many steps as
   fill about `block_seconds` (at least 2, at most the workload's steps_per_round).
3. `rounds` rounds; in each, every contender runs one timed block while the others wait, the
   order rotating from round to round so no contender always follows the same one. Every step
   is timed on its own (synchronised); the reported step time is the median over all timed
   steps of all rounds, which a descheduled thread on a busy machine moves less than a mean.

compile_seconds = (time of the check steps) - check_steps x (median step time): what the first
steps cost beyond steady state. A contender that raises (or whose worker dies) is marked failed
and dropped; the others go on.
"""
from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

LOSS_RTOL = 1e-3
MIN_BLOCK = 2          # steps per timed block, even for a step slower than the block time


@dataclass
class Result:
    name: str
    status: str = "ok"                 # "ok", "not installed", "failed in ...: ..."
    is_floor: bool = False
    first_steps: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    samples: list = field(default_factory=list)   # seconds of every timed step
    block: int = 0                                 # steps per timed block
    rounds: int = 0                                # rounds completed
    estimate: float = 0.0                          # seconds per step seen in the warm-up
    compile_seconds: float | None = None
    details: str = ""
    log: str = ""
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def median(self) -> float | None:
        return float(np.median(self.samples)) if self.samples else None

    def spread(self) -> float | None:
        """Half the interquartile range of the step times, relative to the median."""
        if len(self.samples) < 2:
            return None
        q1, q3 = np.percentile(self.samples, [25, 75])
        return float((q3 - q1) / 2 / self.median)


def _fail(result, exc, where, tb=None):
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    result.status = f"failed in {where}: {type(exc).__name__}: {msg}"[:160]
    result.traceback = tb or traceback.format_exc()


def run_block(contender, steps) -> list[float]:
    """Seconds of each of `steps` back-to-back steps, each synchronised (so asynchronous
    runtimes are timed step by step too, as a loop that reads each loss would)."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        contender.sync(contender.step())
        times.append(time.perf_counter() - t0)
    return times


def prepare(workload, contender, result, check_steps, block_seconds) -> None:
    """Set up, run the check steps, warm up and size the timed block (in the worker).
    On failure result.status says where and why."""
    x, y = workload.batch_data()
    stage = "setup"
    try:
        contender.setup(workload.init_params(), x, y)
        stage = "first steps"
        for _ in range(check_steps):
            t0 = time.perf_counter()
            handle = contender.step()
            contender.sync(handle)
            result.first_steps.append(time.perf_counter() - t0)
            if not contender.is_floor:
                result.losses.append(contender.loss_value(handle))
        stage = "warm-up"
        guess = result.first_steps[-1]
        warm = max(2, min(workload.steps_per_round, math.ceil(block_seconds / 2 / guess)))
        per_step = result.estimate = float(np.median(run_block(contender, warm)))
        result.block = max(MIN_BLOCK, min(workload.steps_per_round,
                                          math.ceil(block_seconds / per_step)))
        result.log = (f"ready: first {check_steps} steps {sum(result.first_steps):.2f} s, "
                      f"~{1e3 * per_step:.2f} ms/step, {result.block} steps per timed block")
    except Exception as exc:  # noqa: BLE001 - one contender's failure must not stop the run
        _fail(result, exc, stage)


def plan_rounds(active, rounds, min_rounds, budget_seconds) -> int:
    """As many rounds as fit the timing budget, between min_rounds and rounds."""
    per_round = sum(r.block * r.estimate for _, r in active)
    if per_round <= 0 or not math.isfinite(budget_seconds):
        return rounds
    return max(min_rounds, min(rounds, int(budget_seconds // per_round)))


SETTLE_SECONDS = 0.2


def run_workload(workload, pool, names, rounds, block_seconds, check_steps=3, min_rounds=5,
                 budget_seconds=math.inf, log=print) -> list[Result]:
    """Prepare every named contender (each in its worker process, one after the other), then
    time them round-robin for up to `rounds` rounds (fewer if they would take longer than
    budget_seconds, never fewer than min_rounds); -> one Result per name, in the order given."""
    results, active = [], []
    for name in names:
        remote = pool.get(name)
        try:
            r = remote.prepare(workload.name, check_steps, block_seconds)
        except Exception as exc:  # noqa: BLE001 - the worker died or hung
            r = Result(name)
            _fail(r, exc, "setup")
        results.append(r)
        log(f"  {name:<14} {r.log if r.ok else r.status}")
        if r.ok:
            active.append((remote, r))
    planned = plan_rounds(active, rounds, min_rounds, budget_seconds)
    if active:
        log(f"  timing: {planned} rounds, about "
            f"{planned * sum(r.block * r.estimate for _, r in active):.0f} s")
    for k in range(planned):
        shift = k % len(active) if active else 0
        for remote, r in active[shift:] + active[:shift]:
            if not r.ok:
                continue
            # the previous contender's thread pools spin for a while after its block (OpenMP,
            # Eigen): let them go idle first, so each block runs on cores nobody else uses
            time.sleep(SETTLE_SECONDS)
            try:
                r.samples.extend(remote.block(r.block))
                r.rounds += 1
            except Exception as exc:  # noqa: BLE001
                _fail(r, exc, f"timing round {k + 1}")
                log(f"  {r.name:<14} {r.status}")
    for remote, r in active:
        if r.ok and r.samples:
            r.compile_seconds = max(0.0, sum(r.first_steps) - len(r.first_steps) * r.median)
        try:
            r.details = remote.details()
        except Exception as exc:  # noqa: BLE001
            r.details = f"(details failed: {exc})"
    return results


def loss_agreement(results, reference="fusegrad"):
    """{name: (max relative difference of the check-step losses to the reference's, ok?)},
    against fusegrad, or the first contender with losses if fusegrad failed."""
    with_losses = [r for r in results if r.losses]
    ref = next((r for r in with_losses if r.name == reference), None) or \
        (with_losses[0] if with_losses else None)
    out = {}
    if ref is None:
        return out, None
    for r in with_losses:
        n = min(len(r.losses), len(ref.losses))
        a, b = np.asarray(r.losses[:n]), np.asarray(ref.losses[:n])
        if not np.all(np.isfinite(a)):
            out[r.name] = (math.inf, False)
            continue
        rel = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))) if n else math.inf
        out[r.name] = (rel, rel <= LOSS_RTOL)
    return out, ref.name
