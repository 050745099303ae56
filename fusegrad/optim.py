"""fg.optim: optimizers (their updates are written in IR) and learning-rate schedules.

    step = fg.train_step(loss_fn, fg.optim.Adam(lr=fg.optim.schedules.cosine(1e-3, 1000)))
    fg.optim.AdamW(6e-4, weight_decay=lambda path, x: 0.1 if x.ndim >= 2 else 0.0)

Any hyper-parameter but clip_norm may be a per-parameter function (path, array) -> value. A new
optimizer subclasses Optimizer and writes `update(p, g, state, hp)` with fusegrad ops (see its
docstring and the README).

A schedule is any callable `t -> lr` for t = 1, 2, ...; the learning rate is a runtime input of
the compiled step, so schedules never recompile.
"""
from __future__ import annotations

import math

from .compiler.optim import (SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Lion, NAdam, Optimizer,
                             RMSProp, TracedHyper)


class schedules:  # noqa: N801  (a namespace, as in fg.optim.schedules.cosine)
    @staticmethod
    def constant(lr):
        """lr at every step."""
        return lambda t: lr

    @staticmethod
    def cosine(lr, total_steps, min_lr=0.0, warmup_steps=0):
        """Linear warm-up over `warmup_steps`, then cosine decay from lr to min_lr at total_steps."""
        if total_steps <= warmup_steps:
            raise ValueError("total_steps must exceed warmup_steps")

        def schedule(t):
            if warmup_steps and t <= warmup_steps:
                return lr * t / warmup_steps
            progress = min(1.0, (t - warmup_steps) / (total_steps - warmup_steps))
            return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

        return schedule

    @staticmethod
    def linear_warmup(lr, warmup_steps):
        """lr * t / warmup_steps for the first warm-up steps, then lr."""
        if warmup_steps < 1:
            raise ValueError("warmup_steps must be >= 1")
        return lambda t: lr * min(1.0, t / warmup_steps)


__all__ = ["Optimizer", "TracedHyper", "SGD", "Adam", "AdamW", "RMSProp", "Adagrad", "Adadelta",
           "Adamax", "NAdam", "Lion", "schedules"]
