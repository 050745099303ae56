"""Reverse-mode autodiff on the IR: forward Graph -> joint (forward + backward) Graph.

The driver walks the forward nodes in reverse, calls the primitive's VJP rule (vjp_rules.py),
sums each cotangent back to its input's shape (the one place un-broadcasting happens),
accumulates cotangents of values used several times, and emits nothing for gradients that are
known to be zero (inputs that do not reach the loss, integer values, stop_gradient). Backward
nodes reuse forward Vars directly (no recomputation) and carry the forward node's source line.
"""
from __future__ import annotations

from ..ir import Graph, GraphBuilder, Var
from ..ir.dtypes import is_float
from .emit import Emitter
from .scan_vjp import saving
from .vjp_rules import VJP_RULES


class GradientError(TypeError):
    """A gradient that cannot be taken: non-scalar or integer loss, integer parameters."""


def active_vars(graph: Graph, wrt_vars) -> set:
    """Float values that depend on a differentiated input (others get no cotangent)."""
    active = {v for v in wrt_vars if is_float(v.dtype)}
    for node in graph.nodes:
        if node.op != "stop_gradient" and any(v in active for v in node.inputs):
            active.update(v for v in node.outputs if is_float(v.dtype))
    return active


def differentiate(graph: Graph, wrt, of: int = 0, name: str | None = None,
                  seed: int | None = None) -> Graph:
    """Joint graph whose outputs are `graph`'s outputs followed by d outputs[of] / d inputs[i]
    for each input index i in `wrt` (in that order). `seed`: the index of a scalar graph input
    the cotangent of outputs[of] starts from instead of 1 (a data-parallel step weights each
    process's gradients by its samples: compiler/data_parallel.py)."""
    loss = graph.outputs[of]
    loss_name = graph.output_names[of]
    if loss.shape != ():
        raise GradientError(
            f"grad needs a scalar output to differentiate, but {loss_name} is {loss.type}; "
            f"reduce it first (e.g. .sum() or .mean()), or return (loss, aux) with has_aux=True"
        )
    if not is_float(loss.dtype):
        raise GradientError(f"grad needs a float output, but {loss_name} is {loss.type}")
    wrt = list(wrt)
    for i in wrt:
        if not is_float(graph.inputs[i].dtype):
            raise GradientError(
                f"cannot differentiate with respect to {graph.input_names[i]} "
                f"({graph.inputs[i].type}): gradients need float inputs; pass integer arrays "
                f"(labels, indices) as arguments that are not differentiated"
            )

    b = GraphBuilder(name or graph.name)
    b.inputs, b.input_names, b.input_roles = (list(graph.inputs), list(graph.input_names),
                                              list(graph.input_roles))
    active = active_vars(graph, [graph.inputs[i] for i in wrt])
    # a scan's gradient reads the carries each step started from: the forward saves them
    nodes = [saving(n) if n.op == "scan" and any(v in active for v in n.inputs) else n
             for n in graph.nodes]
    b.nodes = list(nodes)
    e = Emitter(b, part="backward")

    cotangent: dict[Var, Var] = {}
    if loss in active:
        e.loc = None
        if seed is None:
            cotangent[loss] = e.const(1, loss.dtype)
        else:
            s = graph.inputs[seed]
            cotangent[loss] = s if s.dtype == loss.dtype else e("cast", s, dtype=loss.dtype)

    for node in reversed(nodes):
        if node.op == "kernel":
            raise GradientError("autodiff runs before fusion: the graph has kernel nodes")
        gs = [cotangent.pop(v, None) for v in node.outputs]
        if all(g is None for g in gs):
            continue
        need = tuple(v in active for v in node.inputs)
        if not any(need):
            continue
        e.loc = node.loc
        g = gs[0] if len(gs) == 1 else gs  # several outputs (scan): one cotangent each
        for v, ct in zip(node.inputs, VJP_RULES[node.op](e, node, g, need)):
            if ct is None or v not in active:
                continue
            ct = e.sum_to(ct, v.shape)
            if ct.dtype != v.dtype:
                ct = e("cast", ct, dtype=v.dtype)
            cotangent[v] = e.add(cotangent[v], ct) if v in cotangent else ct

    e.loc = None
    grads = []
    for i in wrt:
        v = graph.inputs[i]
        grads.append(cotangent.get(v) or e.zeros(v.type))
    names = list(graph.output_names) + [f"d{loss_name}/d{graph.input_names[i]}" for i in wrt]
    return b.build(list(graph.outputs) + grads, names)
