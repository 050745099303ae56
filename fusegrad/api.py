"""The user-facing compile API: fg.jit, fg.grad and fg.value_and_grad.

Each is a CompiledFunction: it traces on the first call per signature (shapes, dtypes, pytree
structure, static values), caches, and runs the graph. Called with traced arguments (inside
another compiled function) it inlines its graph instead, so `fg.grad(fg.grad(f))` works.
"""
from __future__ import annotations

import functools
import logging

import numpy as np

from .backend import Runner, check_target, compiling
from .compiler.autodiff import differentiate
from .compiler.symbolic import assign
from .compiler.trace import Traced, graph_inputs, has_tracer, inline, signature_key, trace
from .inspection import Inspection
from .device import copy_into
from .ir.dtypes import is_float
from .ir.types import is_device_array
from .pytree import TreeDef, unflatten

log = logging.getLogger("fusegrad")


class CompiledFunction(Inspection):
    """A traced-and-cached function. `ir`, `source`, `stats`, `memory_plan` and `dump` show
    what was compiled for the last call, or for example arguments passed to them
    (inspection.py)."""

    WHOLE = "graph"
    PARTS = ("forward", "backward")

    def __init__(self, fn, target=None, name=None):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.target = check_target(target)
        self.name = name or getattr(fn, "__name__", "fn")
        self._cache: dict = {}
        self._runners: dict = {}
        self._last: Traced | None = None

    def _build(self, args) -> Traced:
        return trace(self.fn, args, name=self.name)

    def lookup(self, args) -> Traced:
        key = signature_key(args)
        entry = self._cache.get(key)
        if entry is None:
            if self._cache:
                log.info("fusegrad: %s compiles again for a new signature %s", self.name, key[1])
            with compiling():
                entry = self._build(args)
            self._cache[key] = entry
        self._last = entry
        return entry

    def runner(self, traced: Traced) -> Runner:
        r = self._runners.get(id(traced))
        if r is None:
            r = self._runners[id(traced)] = Runner(traced.graph, self.target)
        return r

    def __call__(self, *args):
        traced = self.lookup(args)
        inputs = graph_inputs(traced, args)
        if has_tracer(args):
            outs = inline(traced.graph, inputs)
            for o, k in traced.assigned:  # fg.assign inside: the outer trace's assignment
                assign(inputs[k], outs[o])
        else:
            # device arrays (fg.device_put) go to the runner as they are: no copy to the host
            runner = self.runner(traced)
            _, outs = runner.run([x if is_device_array(x) else np.asarray(x) for x in inputs])
            if not runner.updates_in_place:
                for o, k in traced.assigned:  # fg.assign: written once the call is done
                    copy_into(inputs[k], outs[o])
        return unflatten(traced.out_tree, outs[:len(outs) - len(traced.assigned)])

    def trace(self, *args) -> Traced:
        if args:
            return self.lookup(args)
        if self._last is None:
            raise RuntimeError(f"{self.name} has not been traced yet: call it, or pass example "
                               f"arguments to .ir(...)")
        return self._last

    def _inspected(self, *args):
        traced = self.trace(*args)
        return traced.graph, self.runner(traced)

    @property
    def cache_size(self) -> int:
        return len(self._cache)


def jit(fn=None, *, target=None):
    """Compile `fn` (decorator or call). Forward only; see grad/train_step for training."""
    if fn is None:
        return lambda f: CompiledFunction(f, target=target)
    return CompiledFunction(fn, target=target)


def _leaf_owner(in_tree: TreeDef) -> list[int]:
    """For each flat leaf of the argument tuple, the index of the top-level argument."""
    owner = []
    for i, child in enumerate(in_tree.children):
        owner += [i] * child.num_leaves
    return owner


def _without_static(tree: TreeDef, is_array: list) -> TreeDef:
    """`tree` with the leaves that get no gradient turned into None entries."""
    it = iter(is_array)

    def walk(td):
        if td.kind == "leaf":
            return td if next(it) else TreeDef("none")
        return TreeDef(td.kind, td.keys, tuple(walk(c) for c in td.children))

    return walk(tree)


class GradFunction(CompiledFunction):
    """fg.grad / fg.value_and_grad: the joint forward+backward graph of a scalar function."""

    def __init__(self, fn, argnums=0, has_aux=False, with_value=False, target=None):
        super().__init__(fn, target=target)
        self.single = isinstance(argnums, int)
        self.argnums = (argnums,) if self.single else tuple(argnums)
        self.has_aux = has_aux
        self.with_value = with_value

    def _check_output(self, out_tree):
        if self.has_aux:
            if out_tree.kind not in ("tuple", "list") or len(out_tree.children) != 2 \
                    or out_tree.children[0].kind != "leaf":
                raise TypeError(f"{self.name} was declared has_aux=True, so it must return "
                                f"(loss, aux) with one array as the loss")
        elif out_tree.kind != "leaf":
            raise TypeError(f"{self.name} must return one scalar loss to be differentiated "
                            f"(it returned a {out_tree.kind}); return (loss, aux) and pass "
                            f"has_aux=True to carry other outputs")

    def _build(self, args) -> Traced:
        n = len(args)
        argnums = [a % n for a in self.argnums]
        roles = ["param" if i in argnums else "batch" for i in range(n)]
        fwd = trace(self.fn, args, name=self.name, roles=roles)
        self._check_output(fwd.out_tree)
        owner = _leaf_owner(fwd.in_tree)
        graph_input_of_leaf = {leaf: k for k, leaf in enumerate(fwd.array_leaves)}
        # no gradient for static leaves, integer leaves (counters, indices) and buffers that
        # fg.assign gives new values (batch norm's running statistics): None in the result
        assigned = {k for _, k in fwd.assigned}
        inputs = fwd.graph.inputs
        has_grad = {leaf: k for leaf, k in graph_input_of_leaf.items()
                    if k not in assigned and is_float(inputs[k].dtype)}
        wrt, grad_trees = [], []
        for a in argnums:
            leaves = [leaf for leaf in range(len(owner)) if owner[leaf] == a]
            mine = {leaf: graph_input_of_leaf[leaf] for leaf in leaves
                    if leaf in graph_input_of_leaf and graph_input_of_leaf[leaf] not in assigned}
            if mine and not any(leaf in has_grad for leaf in leaves):
                # an argument of integers only: differentiate says why, naming it
                wrt += list(mine.values())
                grad_trees.append(_without_static(fwd.in_tree.children[a],
                                                  [leaf in mine for leaf in leaves]))
                continue
            wrt += [has_grad[leaf] for leaf in leaves if leaf in has_grad]
            grad_trees.append(_without_static(fwd.in_tree.children[a],
                                              [leaf in has_grad for leaf in leaves]))
        joint = differentiate(fwd.graph, wrt, of=0)
        grads_tree = grad_trees[0] if self.single else TreeDef("tuple", (), tuple(grad_trees))
        # outputs: [the function's value,] the gradients, then fg.assign's new values
        n_fwd, n_new = len(fwd.graph.outputs), len(fwd.assigned)
        keep = list(range(n_fwd - n_new)) if self.with_value else []
        keep += list(range(n_fwd, len(joint.outputs))) + list(range(n_fwd - n_new, n_fwd))
        assigned = tuple((len(keep) - n_new + j, k) for j, (_, k) in enumerate(fwd.assigned))
        joint = joint.replace(outputs=tuple(joint.outputs[i] for i in keep),
                              output_names=tuple(joint.output_names[i] for i in keep),
                              aliases=assigned)
        out_tree = TreeDef("tuple", (), (fwd.out_tree, grads_tree)) if self.with_value \
            else grads_tree
        return Traced(joint, fwd.in_tree, out_tree, fwd.static, fwd.array_leaves,
                      assigned=assigned)


def grad(fn, argnums=0, has_aux=False, *, target=None):
    """Gradient of scalar `fn` with respect to argument(s) `argnums`, as pytrees like them.
    With has_aux=True, fn returns (loss, aux) and grad returns (grads, aux)."""
    g = GradFunction(fn, argnums, has_aux, with_value=has_aux, target=target)
    if not has_aux:
        return g

    @functools.wraps(fn)
    def grads_and_aux(*args):
        (_, aux), grads = g(*args)
        return grads, aux

    grads_and_aux.ir = g.ir
    return grads_and_aux


def value_and_grad(fn, argnums=0, has_aux=False, *, target=None):
    """(value, grads) of scalar `fn`; value is (loss, aux) when has_aux=True."""
    return GradFunction(fn, argnums, has_aux, with_value=True, target=target)
