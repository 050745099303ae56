"""The user-facing compile API: fg.jit (grad, value_and_grad and train_step build on it)."""
from __future__ import annotations

import functools
import logging

import numpy as np

from .compiler.trace import Traced, graph_inputs, signature_key, trace
from .ir import interpret
from .pytree import unflatten

log = logging.getLogger("fusegrad")

TARGETS = ("interpret",)  # the Numba backends join this list in later issues


def _check_target(target):
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is not available; choose one of {TARGETS}")
    return target


class CompiledFunction:
    """Traces on the first call per signature (shapes, dtypes, pytree structure, static values),
    caches the result, and runs it. `ir()` shows the traced graph."""

    def __init__(self, fn, target="interpret", name=None):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.target = _check_target(target)
        self.name = name or getattr(fn, "__name__", "fn")
        self._cache: dict = {}
        self._last: Traced | None = None

    def _build(self, args) -> Traced:
        return trace(self.fn, args, name=self.name)

    def lookup(self, args) -> Traced:
        key = signature_key(args)
        entry = self._cache.get(key)
        if entry is None:
            if self._cache:
                log.info("fusegrad: %s compiles again for a new signature %s", self.name, key[1])
            entry = self._build(args)
            self._cache[key] = entry
        self._last = entry
        return entry

    def __call__(self, *args):
        traced = self.lookup(args)
        outs = interpret(traced.graph, [np.asarray(x) for x in graph_inputs(traced, args)])
        return unflatten(traced.out_tree, outs)

    def trace(self, *args) -> Traced:
        return self.lookup(args) if args else self._require_last()

    def _require_last(self) -> Traced:
        if self._last is None:
            raise RuntimeError(f"{self.name} has not been traced yet: call it, or pass example "
                               f"arguments to .ir(...)")
        return self._last

    def ir(self, *args) -> str:
        """Text of the traced graph (for `args`, or the last call's)."""
        return str(self.trace(*args).graph)

    @property
    def cache_size(self) -> int:
        return len(self._cache)


def jit(fn=None, *, target="interpret"):
    """Compile `fn` (decorator or call). Forward only; see grad/train_step for training."""
    if fn is None:
        return lambda f: CompiledFunction(f, target=target)
    return CompiledFunction(fn, target=target)
