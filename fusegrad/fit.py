"""fg.fit: the training loop around a compiled step, with a progress bar and early stopping."""
from __future__ import annotations

import math
import time

import numpy as np

from .pytree import flatten


def _batch_size(batch) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    shape = np.shape(first)
    return int(shape[0]) if shape else 1


def _snapshot(params):
    return [np.array(x, copy=True) for x in flatten(params)[0]]


def _restore(params, snapshot):
    for x, saved in zip(flatten(params)[0], snapshot):
        np.copyto(x, saved)


def _signatures(step) -> int | None:
    """How many input signatures a TrainStep has compiled so far (None for any other callable,
    e.g. a function wrapping a step): a call that adds one compiled."""
    programs = getattr(step, "_programs", None)
    return len(programs) if isinstance(programs, dict) else None


def fit(step, params, data, epochs: int = 1, eval_fn=None, patience: int | None = None,
        mode: str = "min", progress: bool = True, comm=None) -> dict:
    """Train `params` in place with `step` over `data` for `epochs` epochs.

    data: an iterable of batches (tuples of arrays: `step(params, *batch)`), or a callable
    returning a fresh iterable for each epoch (for generators). eval_fn(params) -> float is run
    after every epoch; with `patience`, training stops after that many epochs without
    improvement (mode "min" or "max") and the best parameters are restored.

    Returns a history dict: "loss" (every step), "epoch_loss" (mean per epoch), "eval"
    (per epoch, if eval_fn), "step_seconds" (mean seconds of a step, per epoch),
    "compile_seconds", "steps_per_second", "samples_per_second".

    Throughput is that of the steps that ran compiled code only: a call that compiled (the
    first call of the fit, and for a TrainStep any call with a new signature, e.g. a smaller
    last batch) is timed apart and its seconds summed in "compile_seconds". Counting it would
    report the compiler's speed, not the step's: a 2 ms step behind a 1 s compile.
    A non-finite loss raises NonFiniteLossError naming the step; the parameters stay as they
    were before that step (the step does not apply it).

    Data-parallel (comm=, an mpi4py communicator; by default the step's own, for a step made
    with comm=): every process iterates the same batches and trains on its shard of each
    (fusegrad.distributed.shard: rows split as evenly as they go, so the step is the one a
    single process would take on the whole batch); the progress bar and the epoch lines are
    shown on rank 0 only; the losses are the job's, and samples_per_second counts every
    process's samples.
    """
    from tqdm.auto import tqdm  # here, not at import: `import fusegrad` must not need it

    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if patience is not None and eval_fn is None:
        raise ValueError("early stopping (patience=) needs an eval_fn")
    if comm is None:
        comm = getattr(step, "comm", None)
    if comm is not None:
        from .distributed import communicator, shard

        if getattr(step, "comm", True) is None:  # a TrainStep that does not sum gradients
            raise ValueError("fit(comm=...) shards every batch over the processes: make the "
                             "step with fg.train_step(..., comm=...) too, so that it sums the "
                             "gradients over them")
        comm = communicator(comm)
        own = getattr(step, "comm", None)
        if own is not None and own is not comm:
            raise ValueError("fit(comm=...) and the step's comm= are different communicators: "
                             "the batches would be shared out over other processes than the "
                             "gradients are summed over")
        progress = progress and comm.rank == 0
    history = {"loss": [], "epoch_loss": [], "eval": []}
    best, best_params, waited = None, None, 0
    n_steps = n_samples = 0
    elapsed = compile_seconds = 0.0
    history["step_seconds"] = []
    for epoch in range(epochs):
        batches = data() if callable(data) else data
        total = len(batches) if hasattr(batches, "__len__") else None
        bar = tqdm(batches, total=total, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=True, dynamic_ncols=True, mininterval=0.5)
        losses = []
        epoch_steps, epoch_elapsed = n_steps, elapsed
        for batch in bar:
            batch = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
            samples = _batch_size(batch)
            if comm is not None:
                batch = shard(batch, comm)
            signatures = _signatures(step)
            t0 = time.perf_counter()
            try:
                loss = step(params, *batch)
            except FloatingPointError as exc:
                bar.close()
                raise type(exc)(f"fit: epoch {epoch + 1}, batch {len(losses) + 1}: {exc}") from None
            seconds = time.perf_counter() - t0
            loss_value = float(loss[0] if isinstance(loss, tuple) else loss)
            losses.append(loss_value)
            if signatures is None:  # any callable: its first call is taken to compile
                compiled = not history["loss"] and len(losses) == 1
            else:
                compiled = _signatures(step) != signatures
            if compiled:
                compile_seconds += seconds
            else:
                elapsed += seconds
                n_steps += 1
                n_samples += samples
            if progress:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", refresh=False,
                                samples_s=f"{n_samples / max(elapsed, 1e-9):,.0f}")
        bar.close()
        history["loss"] += losses
        history["epoch_loss"].append(float(np.mean(losses)) if losses else math.nan)
        steady = n_steps - epoch_steps
        history["step_seconds"].append((elapsed - epoch_elapsed) / steady if steady else math.nan)
        line = (f"epoch {epoch + 1}: loss {history['epoch_loss'][-1]:.4f}, "
                f"{1e3 * history['step_seconds'][-1]:.2f} ms/step")
        if eval_fn is not None:
            metric = float(eval_fn(params))
            history["eval"].append(metric)
            line += f", eval {metric:.4f}"
        if progress:
            tqdm.write(line)
        if eval_fn is not None:
            better = best is None or (metric < best if mode == "min" else metric > best)
            if better:
                best, waited = metric, 0
                if patience is not None:
                    best_params = _snapshot(params)
            elif patience is not None:
                waited += 1
                if waited >= patience:
                    history["stopped_early"] = epoch + 1
                    break
    if best_params is not None:
        _restore(params, best_params)
        history["best_eval"] = best
    history["compile_seconds"] = compile_seconds
    history["steps_per_second"] = n_steps / elapsed if elapsed else math.nan
    history["samples_per_second"] = n_samples / elapsed if elapsed else math.nan
    return history
