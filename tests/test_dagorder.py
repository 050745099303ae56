"""MergeableDag (passes/dagorder.py), the kernel graph fusion merges vertices of: on random DAGs,
every merge it allows or refuses is checked against a brute-force cycle search on the merged
graph, and after every merge its order must still be topological and its edges those of the
merged graph. Small gaps between positions force the renumbering path too."""
from __future__ import annotations

import random

import pytest

from fusegrad.compiler.passes import dagorder
from fusegrad.compiler.passes.dagorder import MergeableDag


def random_dag(rng, n, p):
    """Vertices 0..n-1 in topological order, each edge i -> j (i < j) with probability p."""
    return [(i, j) for j in range(n) for i in range(j) if rng.random() < p]


def has_cycle(succ) -> bool:
    state = {}

    def visit(v):  # 1: on the stack, 2: done
        state[v] = 1
        for w in succ[v]:
            if state.get(w) == 1 or (w not in state and visit(w)):
                return True
        state[v] = 2
        return False

    return any(v not in state and visit(v) for v in succ)


def merged(succ, keep, drop):
    """The graph with `drop` merged into `keep` (self-loops dropped)."""
    out = {}
    for v, ws in succ.items():
        if v == drop:
            continue
        out[v] = {keep if w == drop else w for w in ws} - {v}
    out[keep] |= {w for w in succ[drop] if w != keep}
    out[keep].discard(keep)
    return out


def merge_at_random(seed, n, p) -> int:
    """Random merges on a random DAG, each checked (see the module docstring); returns how
    many were made."""
    rng = random.Random(seed)
    edges = random_dag(rng, n, p)
    succ = {v: set() for v in range(n)}
    for a, b in edges:
        succ[a].add(b)
    dag = MergeableDag(range(n), edges)
    made = 0
    for _ in range(3 * n):
        if len(succ) < 2:
            break
        keep, drop = rng.sample(sorted(succ), 2)
        after = merged(succ, keep, drop)
        plan = dag.merge_plan(keep, drop)
        assert (plan is None) == has_cycle(after), (keep, drop)
        if plan is None:
            continue
        dag.contract(plan)
        made += 1
        succ = after
        assert {v: set(ws) for v, ws in dag.succ.items()} == succ
        assert sorted(dag.position) == sorted(succ)
        assert sorted(dag.position.values()) == dag.taken
        for v, ws in succ.items():
            for w in ws:
                assert dag.position[v] < dag.position[w], (v, w)
    return made


@pytest.mark.parametrize("seed", range(12))
def test_merges_match_a_brute_force_cycle_search(seed):
    rng = random.Random(seed)
    assert merge_at_random(seed, rng.randrange(8, 40), rng.choice([0.05, 0.1, 0.25])) > 0


def test_positions_are_renumbered_when_a_gap_is_used_up(monkeypatch):
    """With positions only a little more than the vertex count apart, gaps run out."""
    renumbered = []
    renumber = MergeableDag._renumber
    monkeypatch.setattr(MergeableDag, "_renumber",
                        lambda self, order: renumbered.append(1) or renumber(self, order))
    n, seeds = 120, range(6)
    monkeypatch.setattr(dagorder, "SPACING", n + 1)
    for seed in seeds:
        merge_at_random(seed, n, 0.03)
    assert len(renumbered) > len(seeds)  # beyond the one each MergeableDag starts with
