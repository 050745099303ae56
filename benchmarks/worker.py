"""Each contender runs in a process of its own; the parent tells them, one at a time, what to do.

Why: in one process the contenders' thread pools fight. PyTorch's OpenMP threads, Numba's
OpenMP threads and two OpenBLAS copies (NumPy's and SciPy's) each keep 2 threads on a 2-core
machine; threads that spin after one contender's step starve the next contender's BLAS (a GEMM
floor measured 10 ms alone took 90 ms right after PyTorch steps). A fresh interpreter per
contender ("spawn") loads only its own libraries, and an idle worker blocks on its pipe, so
round-robin alternation measures each contender as it runs on its own.

    pool = WorkerPool(target="cpu")
    remote = pool.get("fusegrad")             # starts the worker on first use
    result = remote.prepare("mlp-small", check_steps=3, block_seconds=0.5)   # a timing.Result
    step_times = remote.block(20)          # seconds of each step
    pool.close()
"""
from __future__ import annotations

import multiprocessing as mp
import traceback

from benchmarks.timing import Result

PREPARE_TIMEOUT = 600     # seconds: a cold compile (torch.compile, fusegrad) can take minutes
BLOCK_TIMEOUT = 300


def serve(conn, name, target):
    """The worker's loop: build the named contender per workload and run what it is sent."""
    import os

    threads = int(os.environ.get("BENCH_THREADS", "0") or 0)
    if threads and hasattr(os, "sched_setaffinity"):   # run.py --threads N
        os.sched_setaffinity(0, range(min(threads, os.cpu_count() or threads)))
    from benchmarks import env_info
    from benchmarks.contenders import FACTORIES, Unavailable
    from benchmarks.timing import prepare, run_block
    from benchmarks.workloads import WORKLOADS

    contender = None
    while True:
        cmd, args = conn.recv()
        try:
            if cmd == "prepare":
                workload_name, check_steps, block_seconds = args
                contender = None  # let the previous workload's buffers go first
                w = WORKLOADS[workload_name]
                result = Result(name)
                try:
                    contender = FACTORIES[name](w, target)
                except Unavailable as e:
                    result.status = str(e)
                    conn.send(("ok", result))
                    continue
                result.is_floor = contender.is_floor
                prepare(w, contender, result, check_steps, block_seconds)
                conn.send(("ok", result))
            elif cmd == "block":
                conn.send(("ok", run_block(contender, args)))
            elif cmd == "details":
                conn.send(("ok", contender.details() if contender is not None else ""))
            elif cmd == "info":
                conn.send(("ok", env_info.blas_info() + [env_info.numba_threads()]
                           + env_info.fusegrad_threads()))
            elif cmd == "quit":
                conn.send(("ok", None))
                return
            else:
                conn.send(("error", f"unknown command {cmd!r}"))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, the worker goes on
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


class WorkerDied(RuntimeError):
    pass


class Remote:
    """The parent's handle on one worker process."""

    def __init__(self, ctx, name, target):
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, name, target),
                                   name=f"bench-{name}", daemon=True)
        self.process.start()
        child.close()

    def _call(self, cmd, args=None, timeout=BLOCK_TIMEOUT):
        try:
            self.conn.send((cmd, args))
            if not self.conn.poll(timeout):
                raise WorkerDied(f"no answer to {cmd!r} within {timeout} s")
            reply = self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError) as exc:
            self.process.join(1)
            raise WorkerDied(f"worker process died (exit code {self.process.exitcode}) "
                             f"during {cmd!r}") from exc
        if reply[0] == "error":
            raise RuntimeError(reply[1] + ("\n" + reply[2] if len(reply) > 2 else ""))
        return reply[1]

    def prepare(self, workload_name, check_steps, block_seconds) -> Result:
        return self._call("prepare", (workload_name, check_steps, block_seconds),
                          timeout=PREPARE_TIMEOUT)

    def block(self, steps) -> list[float]:
        return self._call("block", steps)

    def details(self) -> str:
        return self._call("details")

    def info(self) -> list[str]:
        return self._call("info")

    def alive(self) -> bool:
        return self.process.is_alive()

    def close(self):
        if self.process.is_alive():
            try:
                self._call("quit", timeout=10)
            except Exception:  # noqa: BLE001
                pass
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()   # this worker was started by us; end only it


class WorkerPool:
    """One worker per contender name, started on first use and kept for every workload."""

    def __init__(self, target="cpu"):
        self.ctx = mp.get_context("spawn")
        self.target = target
        self.remotes: dict[str, Remote] = {}

    def get(self, name) -> Remote:
        r = self.remotes.get(name)
        if r is None or not r.alive():
            r = self.remotes[name] = Remote(self.ctx, name, self.target)
        return r

    def close(self):
        for r in self.remotes.values():
            r.close()
