"""fg.check_grads: symbolic gradients against central finite differences, in float64."""
from __future__ import annotations

import inspect

import numpy as np

from .api import GradFunction
from .compiler import lax
from .compiler.trace import graph_inputs, is_static_leaf, trace
from .ir import interpret
from .pytree import flatten


class GradientCheckError(AssertionError):
    """Symbolic and numerical gradients disagree; the message names the worst element."""


def _float_leaf(x):
    return not is_static_leaf(x) and np.asarray(x).dtype.kind == "f"


def _float_argnums(args) -> tuple:
    """The arguments holding float arrays: integer arguments (labels, indices) are inputs the
    check holds fixed, and differentiating with respect to them would be an error."""
    return tuple(i for i, a in enumerate(args) if any(_float_leaf(x) for x in flatten(a)[0]))


def check_grads(fn, args, order: int = 1, eps: float = 1e-6, rtol: float = 1e-5,
                atol: float = 1e-7, max_elements: int = 64, seed: int = 0):
    """Check d fn / d (every float array in `args`) against central differences in float64.

    `fn(*args)` must return a scalar. order=2 also checks second derivatives, through the
    gradient of <grad fn, v> for a random direction v. At most `max_elements` entries of each
    argument (chosen at random) are perturbed. Raises GradientCheckError naming the argument,
    the worst element's index and both values.
    """
    args = tuple(args)
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    if order == 2:
        _check_first_order(_directional_gradient(fn, args, seed), args, eps, rtol, atol,
                           max_elements, seed, what="second derivative (grad of <grad f, v>) ")
    _check_first_order(fn, args, eps, rtol, atol, max_elements, seed)


def _directional_gradient(fn, args, seed):
    """x -> <grad fn(x), v> for a fixed random v (v covers every float array argument)."""
    gfn = GradFunction(fn, argnums=_float_argnums(args))
    leaves, _ = flatten(args)
    rng = np.random.default_rng(seed + 1)
    directions = [rng.standard_normal(np.shape(x)) if _float_leaf(x) else None for x in leaves]

    def along_v(*xs):
        grads, _ = flatten(gfn(*xs))
        total = 0.0
        for g, v in zip(grads, [d for d in directions if d is not None]):
            total = lax.add(total, lax.reduce_sum(lax.mul(g, v.astype(g.dtype))))
        return total

    along_v.__name__ = f"grad_{getattr(fn, '__name__', 'fn')}_dot_v"
    try:  # keep fn's parameter names, so a failure names the argument as the user wrote it
        along_v.__signature__ = inspect.signature(fn)
    except (TypeError, ValueError):
        pass
    return along_v


def _check_first_order(fn, args, eps, rtol, atol, max_elements, seed, what=""):
    gfn = GradFunction(fn, argnums=_float_argnums(args))
    traced_joint = gfn.lookup(args)
    forward = trace(fn, args).graph
    inputs = [np.asarray(x, dtype=np.float64) if _float_leaf(x) else np.asarray(x)
              for x in graph_inputs(traced_joint, args)]
    symbolic = interpret(traced_joint.graph, inputs, float64=True)

    def f(xs):
        return float(interpret(forward, xs, float64=True)[0])

    names = traced_joint.graph.input_names
    rng = np.random.default_rng(seed)
    k = 0
    for pos, (x, name) in enumerate(zip(inputs, names)):
        if x.dtype.kind != "f":
            continue
        g = symbolic[k]
        k += 1
        flat_idx = np.arange(x.size)
        if x.size > max_elements:
            flat_idx = rng.choice(x.size, max_elements, replace=False)
        worst = None
        for fi in flat_idx:
            idx = np.unravel_index(fi, x.shape)
            plus, minus = [a.copy() for a in inputs], [a.copy() for a in inputs]
            plus[pos][idx] += eps
            minus[pos][idx] -= eps
            numeric = (f(plus) - f(minus)) / (2 * eps)
            err = abs(numeric - g[idx]) - (atol + rtol * abs(numeric))
            if err > 0 and (worst is None or err > worst[0]):
                worst = (err, idx, g[idx], numeric)
        if worst is not None:
            _, idx, sym, num = worst
            raise GradientCheckError(
                f"{what}gradient of {getattr(fn, '__name__', 'fn')} w.r.t. {name} is wrong at "
                f"index {tuple(int(i) for i in idx)}: symbolic {sym:.8g}, finite difference "
                f"{num:.8g} (|diff| {abs(sym - num):.3g} > atol {atol} + rtol {rtol} * |fd|)"
            )
