"""The verifier: re-derives every type, checks SSA form, outputs and aliases.

With FUSEGRAD_VERIFY=1 it runs after every pass (compiler/passes/manager.py) and on the fused
graph (compiler/pipeline.py), so a broken pass is caught where it broke the graph, not three
stages later.
"""
from __future__ import annotations

from .ops import infer_type
from .printer import short_loc


class VerifyError(ValueError):
    """A malformed graph; the message names the node (index, op, source line) and the problem."""


def _where(i, node):
    loc = short_loc(node.loc)
    return f"node {i} ({node.op}{' at ' + loc if loc else ''})"


def verify(graph) -> None:
    """Raise VerifyError unless `graph` is well formed; returns None."""
    defined = set()
    for v in graph.inputs:
        if v in defined:
            raise VerifyError(f"graph {graph.name}: input {v} listed twice")
        defined.add(v)
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v not in defined:
                raise VerifyError(f"{_where(i, node)}: uses {v} before it is defined")
        if node.op == "kernel":
            _verify_region(i, node)
        else:
            try:
                expected = infer_type(node.op, [v.type for v in node.inputs], node.attrs)
            except (TypeError, ValueError) as exc:
                raise VerifyError(f"{_where(i, node)}: {exc}") from exc
            expected = expected if isinstance(expected, tuple) else (expected,)
            if tuple(v.type for v in node.outputs) != expected:
                got = ", ".join(str(v.type) for v in node.outputs)
                want = ", ".join(str(t) for t in expected)
                raise VerifyError(f"{_where(i, node)}: output type {got}, rule says {want}")
            if node.op == "scan":
                _verify_scan_body(i, node)
        for v in node.outputs:
            if v in defined:
                raise VerifyError(f"{_where(i, node)}: redefines {v} (not SSA)")
            defined.add(v)
    for k, v in enumerate(graph.outputs):
        if v not in defined:
            raise VerifyError(f"graph {graph.name}: output {k} ({graph.output_names[k]}) is undefined")
    for o, i in graph.aliases:
        if not (0 <= o < len(graph.outputs) and 0 <= i < len(graph.inputs)):
            raise VerifyError(f"graph {graph.name}: alias ({o}, {i}) out of range")
        if graph.outputs[o].type != graph.inputs[i].type:
            raise VerifyError(
                f"graph {graph.name}: output {graph.output_names[o]} ({graph.outputs[o].type}) "
                f"cannot replace input {graph.input_names[i]} ({graph.inputs[i].type})"
            )


def _verify_scan_body(i, node):
    """The body takes (consts, carry, x[t]) and gives (carry, y[t]) of the node's types."""
    body, a = node.region, node.attrs
    n_consts, n_carry = a["n_consts"], a["n_carry"]
    if body is None:
        raise VerifyError(f"{_where(i, node)}: a scan without a body")
    want_in = [v.type for v in node.inputs[:n_consts + n_carry]] + \
        [v.type.with_shape(v.shape[1:]) for v in node.inputs[n_consts + n_carry:]]
    want_out = [v.type for v in node.inputs[n_consts:n_consts + n_carry]] + \
        [type(v.type)(d, shape) for v, (d, shape) in zip(body.outputs[n_carry:], a["ys"])]
    if [v.type for v in body.inputs] != want_in or [v.type for v in body.outputs] != want_out:
        raise VerifyError(f"{_where(i, node)}: the body's types do not match the scan's")
    try:
        verify(body)
    except VerifyError as exc:
        raise VerifyError(f"{_where(i, node)} body: {exc}") from exc


def _verify_region(i, node):
    region = node.region
    if len(region.inputs) != len(node.inputs) or len(region.outputs) != len(node.outputs):
        raise VerifyError(f"{_where(i, node)}: region arity does not match the node")
    for inner, outer in zip(region.inputs, node.inputs):
        if inner.type != outer.type:
            raise VerifyError(f"{_where(i, node)}: region input {inner.type} bound to {outer.type}")
    for inner, outer in zip(region.outputs, node.outputs):
        if inner.type != outer.type:
            raise VerifyError(f"{_where(i, node)}: region output {inner.type} vs node {outer.type}")
    try:
        verify(region)
    except VerifyError as exc:
        raise VerifyError(f"{_where(i, node)} region: {exc}") from exc
