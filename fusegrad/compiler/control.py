"""fg.scan: a loop in the graph, traced once whatever its length (JAX's lax.scan semantics).

    carry, ys = fg.scan(f, init, xs)     # f(carry, x) -> (carry, y), for x in xs (axis 0)

The body `f` is traced once into a Graph of its own, the region of one `scan` node:
(consts, carry, x[t]) -> (carry, y[t]), where the consts are the values of the enclosing trace
the body uses (weights, captured automatically). The node's outputs are the last carry and the
ys stacked on a new axis 0; its gradient is a reverse scan (vjp_rules.py), and the backends run
the body's own compiled program `length` times (codegen: ScheduleWriter.scan). Outside a trace,
scan is a Python loop over NumPy values.

Random ops in the body without a key (fg.dropout) draw from the enclosing trace's key with a
counter that includes the step number, so every step draws anew.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..ir.types import ShapeError
from ..pytree import flatten, leaf_paths, unflatten
from . import lax
from .lax import is_array, shape_of
from .symbolic import TraceContext, Tracer, TraceError, context_of, current_trace, user_location

STEP_COUNTERS = 1 << 21  # a body's draws: counter = outer counter * this + step + 1


def scan(f, init, xs=None, length=None, reverse=False):
    """Loop `f(carry, x) -> (carry, y)` over the leading axis of `xs` (a pytree of arrays; or
    None with `length`): returns (the last carry, the ys stacked on axis 0). `reverse` runs from
    the last x to the first (ys stay aligned with xs). The carry keeps its structure, shapes and
    dtypes from step to step. Compiled as one loop: the body is traced, differentiated and
    fused once, whatever the length."""
    init_leaves, init_tree = flatten(init)
    x_leaves, x_tree = flatten(xs)
    for path, x in zip(leaf_paths(x_tree, "xs"), x_leaves):
        if not is_array(x) and not isinstance(x, (list, tuple)):
            raise TypeError(f"scan: {path} must be an array, got {type(x).__name__}")
    x_leaves = [x if is_array(x) else np.asarray(x) for x in x_leaves]
    length = _length(x_leaves, x_tree, length)
    ctx = context_of([*init_leaves, *x_leaves]) or current_trace()
    if ctx is None:
        return _python_loop(f, init, x_leaves, x_tree, length, reverse)
    return _traced(ctx, f, init_leaves, init_tree, x_leaves, x_tree, length, bool(reverse))


def _length(x_leaves, x_tree, length) -> int:
    lengths = {shape_of(x)[0] if shape_of(x) else None for x in x_leaves}
    if None in lengths:
        raise ShapeError("scan: every xs leaf needs a leading axis to loop over")
    if len(lengths) > 1:
        shapes = ", ".join(f"{p} {shape_of(x)}" for p, x in zip(leaf_paths(x_tree, "xs"),
                                                                 x_leaves))
        raise ShapeError(f"scan: the xs leaves have different lengths: {shapes}")
    if length is None:
        if not lengths:
            raise TypeError("scan: give length= when there are no xs to loop over")
        return int(lengths.pop())
    if lengths and lengths != {int(length)}:
        raise ShapeError(f"scan: length={length} but xs has {lengths.pop()} entries")
    if int(length) < 0:
        raise ValueError(f"scan: length must be >= 0, got {length}")
    return int(length)


def _python_loop(f, carry, x_leaves, x_tree, length, reverse):
    ys = [None] * length
    for t in (range(length - 1, -1, -1) if reverse else range(length)):
        carry, ys[t] = _call(f, carry, unflatten(x_tree, [x[t] for x in x_leaves]))
    if not length:
        raise ValueError("scan: a loop of length 0 outside a compiled function has no ys to "
                         "stack")
    leaves = [flatten(y) for y in ys]
    stacked = [np.stack([np.asarray(lv[0][k]) for lv in leaves]) for k in range(len(leaves[0][0]))]
    return carry, unflatten(leaves[0][1], stacked)


def _call(f, carry, x):
    out = f(carry, x)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"scan: f must return (carry, y), got {type(out).__name__}")
    return out


def _traced(ctx, f, init_leaves, init_tree, x_leaves, x_tree, length, reverse):
    init_vars = [ctx.lift(x) for x in init_leaves]
    x_vars = [ctx.lift(x) for x in x_leaves]
    name = f"{ctx.builder.name}.scan"
    body = TraceContext(name, parent=ctx)
    carry_in = [body.new_input(v.type, p, "batch")
                for v, p in zip(init_vars, leaf_paths(init_tree, "carry"))]
    x_in = [body.new_input(v.type.with_shape(v.shape[1:]), p, "batch")
            for v, p in zip(x_vars, leaf_paths(x_tree, "x"))]
    step = []  # the body's step number, an input made on its first random draw
    body.draw_key = lambda: _draw_in_body(body, step)
    with body:
        carry_out, y = _call(f, unflatten(init_tree, carry_in), unflatten(x_tree, x_in))
        out_leaves, out_tree = flatten(carry_out)
        if out_tree != init_tree:
            raise TypeError(f"scan: f must return a carry of init's structure; it returned "
                            f"{out_tree}, init is {init_tree}{_at()}")
        carry_vars = []
        for path, v_in, leaf in zip(leaf_paths(init_tree, "carry"), init_vars, out_leaves):
            var = body.lift(leaf)
            if var.type != v_in.type:
                raise TypeError(f"scan: f returned {path} as {var.type}; the carry keeps its "
                                f"type from step to step: {v_in.type} as init gave it{_at()}")
            carry_vars.append(var)
        y_leaves, y_tree = flatten(y)
        y_vars = [body.lift(leaf) for leaf in y_leaves]
    if body.assignments:
        raise TraceError(f"fg.assign inside fg.scan's body is not supported{_at()}")
    captured = list(body.captured.items())  # (outer Var, body input)
    b = body.builder
    names = dict(zip(b.inputs, b.input_names))
    inner = {v for _, v in captured}
    # the body's inputs in the scan's order: captured values, carry, x slices (then the step)
    b.inputs = [v for _, v in captured] + [v for v in b.inputs if v not in inner]
    b.input_names = [names[v] for v in b.inputs]
    b.input_roles = ["batch"] * len(b.inputs)
    region = b.build(carry_vars + y_vars,
                     [f"new {n}" for n in leaf_paths(init_tree, "carry")]
                     + leaf_paths(y_tree, "y"))
    outer_xs = list(x_vars)
    if step:  # the step numbers, as one more xs
        outer_xs.append(ctx.lift(lax.iota((length,), 0, "int64")))
    attrs = dict(length=length, reverse=reverse, n_consts=len(captured),
                 n_carry=len(carry_vars), ys=tuple((v.dtype, v.shape) for v in y_vars),
                 save=False)
    outs = ctx.builder.emit_node("scan", [outer for outer, _ in captured] + init_vars + outer_xs,
                                 attrs, loc=user_location(), region=region)
    carry = unflatten(init_tree, [Tracer(ctx, v) for v in outs[:len(carry_vars)]])
    ys = unflatten(y_tree, [Tracer(ctx, v) for v in outs[len(carry_vars):]])
    return carry, ys


def _draw_in_body(body, step):
    """(key, counter) for a random op in the body: the enclosing trace's key, and a counter
    made of the enclosing trace's own counter for this draw and the step number."""
    outer = body.parent.draw_key()
    if outer is None:
        return None
    key, counter = outer
    if not step:
        step.append(body.new_input(TensorType("int64", ()), "step", "batch"))
    t = lax.add(step[0], np.int64(1))
    if is_array(counter):  # an enclosing scan's counter: int64 arithmetic wraps, a hash
        return key, lax.add(lax.mul(counter, np.int64(STEP_COUNTERS)), t)
    base = (int(counter) * STEP_COUNTERS + 2 ** 63) % 2 ** 64 - 2 ** 63
    return key, lax.add(t, np.int64(base))


def _at():
    loc = user_location()
    return f" (at {loc})" if loc else ""
