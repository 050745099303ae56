"""The pass manager: one pipeline of named `Graph -> Graph` passes, run in order, with the
verifier after every pass and a numbered text dump of every pass's output on request.

    optimized = run_passes(step_graph)                    # OPTIMIZE_PIPELINE
    run_passes(g, dump_dir="dumps")    # dumps/<graph>/00_input.txt, 01_simplify.txt, ...
    FUSEGRAD_VERIFY=1 / FUSEGRAD_DUMP=dir do the same from the environment.

A pipeline entry is `(name, pass)` or `(name, FixedPoint(entries..., max_rounds=n))`: a group run
again and again until a whole round changes nothing (every pass returns the very Graph it was
given when it has nothing to do) or n rounds have run. Passes inside a group are verified and
dumped one by one like the others, so a failure or a surprise is pinned to one pass. Passes must
be deterministic: one is not run twice on the same Graph object (unless dumping).

Every pass must keep the graph's calling convention: the same input Vars with their names and
roles, as many outputs with the same names and types, and the same aliases. The manager checks
that too when verifying.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ... import config
from ...ir import Graph, VerifyError
from ...ir import verify as verify_graph
from .cse import cse
from .dce import dce
from .fold import fold_constants
from .layout import layout
from .simplify import simplify

Pass = Callable[[Graph], Graph]


@dataclass(frozen=True)
class FixedPoint:
    """A group of pipeline entries repeated until a round leaves the graph unchanged."""

    entries: tuple
    max_rounds: int = 8


CANONICALIZE = FixedPoint((
    ("simplify", simplify),
    ("fold", fold_constants),
    ("cse", cse),
    ("dce", dce),
))

OPTIMIZE_PIPELINE = (
    ("canonicalize", CANONICALIZE),
    ("layout", layout),
    ("canonicalize", CANONICALIZE),
)


def check_contract(before: Graph, after: Graph) -> None:
    """Raise VerifyError if `after` changed the calling convention of `before`."""
    if len(after.inputs) != len(before.inputs) or any(
            a is not b for a, b in zip(after.inputs, before.inputs)):
        raise VerifyError("graph inputs changed (they must stay the very same Vars, in order)")
    if (after.input_names, after.input_roles) != (before.input_names, before.input_roles):
        raise VerifyError("graph input names or roles changed")
    if after.output_names != before.output_names:
        raise VerifyError(f"outputs changed: {before.output_names} -> {after.output_names}")
    for k, (a, b) in enumerate(zip(after.outputs, before.outputs)):
        if a.type != b.type:
            raise VerifyError(f"output {before.output_names[k]} changed type {b.type} -> {a.type}")
    if after.aliases != before.aliases:
        raise VerifyError(f"aliases changed: {before.aliases} -> {after.aliases}")


class _Run:
    """One pipeline run: numbering, dumping and verification of every pass's output."""

    def __init__(self, graph: Graph, dump_dir, verify_each: bool):
        self.verify_each = verify_each
        self.index = 0
        self.results: dict = {}  # (pass, input Graph) -> output Graph
        self.dir = None
        if dump_dir:
            self.dir = Path(dump_dir) / (re.sub(r"[^A-Za-z0-9_.-]+", "_", graph.name) or "graph")
            self.dir.mkdir(parents=True, exist_ok=True)
            for old in self.dir.glob("[0-9][0-9]_*.txt"):  # a previous run's stages
                old.unlink()
        self.record("input", None, graph)

    def record(self, name: str, before: Graph | None, after: Graph) -> None:
        if self.verify_each:
            try:
                verify_graph(after)
                if before is not None:
                    check_contract(before, after)
            except VerifyError as exc:
                where = f"after pass {name!r}" if before is not None else "in the pipeline's input"
                raise VerifyError(f"{where} (step {self.index:02d}) on graph {after.name}: "
                                  f"{exc}") from exc
        if self.dir is not None:
            path = self.dir / f"{self.index:02d}_{name}.txt"
            path.write_text(str(after) + "\n")
        self.index += 1

    def run(self, graph: Graph, entries) -> Graph:
        for name, p in entries:
            if isinstance(p, FixedPoint):
                for _ in range(p.max_rounds):
                    after = self.run(graph, p.entries)
                    if after is graph:
                        break
                    graph = after
                continue
            graph = self.apply(name, p, graph)
        return graph

    def apply(self, name: str, p: Pass, graph: Graph) -> Graph:
        """p(graph), verified and dumped. A pass is a deterministic function of the graph, so
        one already run on this very Graph object is not run again (a group given back the
        graph it has just brought to a fixed point, as after a layout that changed nothing,
        costs nothing); when dumping, every stage is run and written as listed."""
        if self.dir is None and (p, graph) in self.results:
            return self.results[p, graph]
        after = p(graph)
        if not isinstance(after, Graph):
            raise TypeError(f"pass {name!r} returned {type(after).__name__}, not a Graph")
        self.record(name, graph, after)
        self.results[p, graph] = after
        return after


def run_passes(graph: Graph, pipeline=None, dump_dir=None, verify=None) -> Graph:
    """Run `pipeline` (default: OPTIMIZE_PIPELINE, looked up when called) on `graph`.

    verify: run the verifier (and the calling-convention check) after every pass; a failure is a
    VerifyError naming the pass. Default: the environment variable FUSEGRAD_VERIFY.
    dump_dir: write every stage as `<dump_dir>/<graph name>/NN_<pass>.txt` (00_input.txt first).
    Default: the environment variable FUSEGRAD_DUMP.
    """
    if verify is None:
        verify = config.get("FUSEGRAD_VERIFY")
    if dump_dir is None:
        dump_dir = config.get("FUSEGRAD_DUMP")
    if pipeline is None:
        pipeline = OPTIMIZE_PIPELINE
    return _Run(graph, dump_dir, bool(verify)).run(graph, pipeline)
