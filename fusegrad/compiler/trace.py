"""Tracing: call a Python function once on tracers and record what it does as a Graph.

Arguments are pytrees (nested dict/list/tuple) whose leaves are arrays (traced inputs) or Python
scalars/strings/None (static: baked into the graph, part of the cache key). Python control flow
runs at trace time; closed-over NumPy arrays become constants.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from ..ir import Graph, TensorType, as_dtype
from ..ir.types import is_device_array
from ..pytree import TreeDef, flatten, leaf_paths, unflatten
from .symbolic import TraceContext, Tracer, TraceError


@dataclass(frozen=True)
class Traced:
    """A traced function: its Graph, and how to map pytrees to graph inputs and outputs."""

    graph: Graph
    in_tree: TreeDef
    out_tree: TreeDef
    static: tuple  # (leaf index, value) of the static leaves, in order
    array_leaves: tuple  # indices of the leaves that became graph inputs
    # the graph's last input is a random key the trace made for itself (trace's random_key)
    implicit_key: bool = False
    # (output index, input index): inputs given new values by fg.assign, the values being the
    # graph's last outputs (after those out_tree describes); graph.aliases lists them too
    assigned: tuple = ()


def is_static_leaf(x) -> bool:
    """Python scalars, strings and None are compile-time constants, not traced inputs."""
    return isinstance(x, (bool, int, float, str)) and not isinstance(x, np.generic)


def leaf_type(x, path: str) -> TensorType:
    if isinstance(x, Tracer):
        return x._var.type
    try:
        a = x if isinstance(x, np.ndarray) or is_device_array(x) else np.asarray(x)
        return TensorType(as_dtype(a.dtype), tuple(a.shape))
    except TypeError as exc:
        raise TypeError(f"argument {path}: {exc}") from None


def arg_names(fn, n: int) -> list[str]:
    """Parameter names of `fn` for the first n positional arguments (args[i] past them)."""
    try:
        params = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"args[{i}]" for i in range(n)]


def signature_key(args):
    """Hashable key of a call: pytree structure, array shapes/dtypes, static leaf values."""
    return signature_of(*flatten(tuple(args)))


def signature_of(leaves, tree):
    """signature_key of the call whose flattened arguments are `leaves`, `tree`."""
    sig = []
    for x in leaves:
        if is_static_leaf(x):
            sig.append(("static", type(x).__name__, x))
        elif isinstance(x, Tracer):
            sig.append((x.shape, x.dtype.str))
        elif is_device_array(x):  # typed without a copy to the host
            sig.append((tuple(x.shape), np.dtype(x.dtype).str))
        else:
            a = np.asarray(x)
            sig.append((a.shape, a.dtype.str))
    return tree, tuple(sig)


def trace(fn, args, name=None, roles=None, kwargs=None, random_key=None) -> Traced:
    """Trace `fn(*args, **kwargs)` into a Graph. `roles[i]` is the input role of args[i]'s leaves
    (default 'batch'); kwargs are static. `random_key` is where random ops called without a key
    draw from: None (nowhere: they raise), "last" (the last argument, an int64 scalar) or "new"
    (an int64 graph input "key" made on first use, after the others: Traced.implicit_key)."""
    args = tuple(args)
    names = arg_names(fn, len(args))
    roles = roles or ["batch"] * len(args)
    ctx = TraceContext(name or getattr(fn, "__name__", "fn"))
    if random_key == "new":
        ctx.make_random_key = lambda: ctx.new_input(TensorType("int64", ()), "key", "hyper")
    traced_args = []
    static, array_leaves, offset = [], [], 0
    for i, (arg, prefix, role) in enumerate(zip(args, names, roles)):
        leaves, tree = flatten(arg)
        paths = leaf_paths(tree, prefix)
        new_leaves = []
        for x, path in zip(leaves, paths):
            if is_static_leaf(x):
                static.append((offset, x))
                new_leaves.append(x)
            else:
                array_leaves.append(offset)
                new_leaves.append(ctx.new_input(leaf_type(x, path), path, role))
            offset += 1
        traced_args.append(unflatten(tree, new_leaves))
    if random_key == "last":
        ctx.random_key = traced_args[-1]
    n_inputs = len(ctx.builder.inputs)
    with ctx:
        result = fn(*traced_args, **(kwargs or {}))
        out_leaves, out_tree = flatten(result)
        out_vars = []
        for k, (leaf, path) in enumerate(zip(out_leaves, leaf_paths(out_tree, "output"))):
            if not isinstance(leaf, (Tracer, np.ndarray, np.generic, bool, int, float)):
                raise TraceError(
                    f"{ctx.builder.name} returned a {type(leaf).__name__} at {path}; a compiled "
                    f"function must return arrays (or dicts/lists/tuples of arrays)"
                )
            out_vars.append(ctx.lift(leaf if isinstance(leaf, Tracer) else np.asarray(leaf)))
        out_names = leaf_paths(out_tree, "out")
    # fg.assign's values come last, each written over its input when the call ends
    inputs = ctx.builder.inputs
    assigned = tuple((len(out_vars) + j, inputs.index(v))
                     for j, v in enumerate(ctx.assignments))
    out_names = list(out_names) + [f"new {ctx.builder.input_names[k]}" for _, k in assigned]
    graph = ctx.builder.build(out_vars + list(ctx.assignments.values()), out_names, assigned)
    _, in_tree = flatten(args)
    return Traced(graph, in_tree, out_tree, tuple(static), tuple(array_leaves),
                  implicit_key=len(graph.inputs) > n_inputs, assigned=assigned)


def graph_inputs(traced: Traced, args=None, leaves=None) -> list:
    """The graph's input arrays for a call with `args`, or with its flattened `leaves`
    (static leaves dropped)."""
    if leaves is None:
        leaves, _ = flatten(tuple(args))
    return [leaves[i] for i in traced.array_leaves]


def has_tracer(args) -> bool:
    leaves, _ = flatten(tuple(args))
    return any(isinstance(x, Tracer) for x in leaves)


def inline(graph: Graph, args) -> list:
    """Replay `graph`'s nodes inside the active trace on `args` (tracers or arrays); returns the
    output tracers. This is how a compiled function (e.g. fg.grad(f)) is called while tracing
    another one, which makes grad-of-grad work."""
    ctx = next((a._ctx for a in args if isinstance(a, Tracer)), None)
    if ctx is None:
        raise TraceError("inline needs at least one traced argument")
    env = {v: ctx.lift(a) for v, a in zip(graph.inputs, args)}
    for node in graph.nodes:
        outs = ctx.builder.emit_node(node.op, [env[v] for v in node.inputs], node.attrs,
                                     loc=node.loc, region=node.region)
        env.update(zip(node.outputs, outs))
    return [Tracer(ctx, env[v]) for v in graph.outputs]
