"""The whole-step graph: forward + backward + optimizer update in one Graph.

    inputs:  params (param) | batch leaves (batch) | key (hyper, if the loss takes one or a
             random op draws from the step's key) | samples, mpi (hyper, data-parallel steps:
             compiler/data_parallel.py) | optimizer state slots (state) | lr (hyper: one, or
             one per trained parameter when they differ) | step (hyper)
    outputs: loss | aux leaves | buffers' new values (fg.assign) | new params (alias their
             inputs) | new state (alias theirs) | finite checks

The aliases tell the backends which outputs may be written into which inputs' storage.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import numpy as np

from ..ir import GraphBuilder, TensorType
from ..ir.dtypes import is_float
from ..pytree import TreeDef
from . import data_parallel
from .autodiff import differentiate
from .emit import Emitter
from .optim import Hyper, Optimizer, clip_by_global_norm
from .trace import Traced, arg_names, trace


@dataclass(frozen=True)
class StepGraph:
    graph: object  # the step Graph
    traced: Traced  # the forward trace (input/output pytrees)
    trained: tuple  # graph-input indices of the trained parameters
    slots: tuple  # optimizer slot names
    aux_tree: TreeDef | None
    guard: int  # the output checked before any parameter is written (finite iff the loss
    #             and every gradient are)
    grad_checks: tuple  # (output index, parameter name): sum(g * 0) of each gradient
    # per trained parameter, in `trained` order: {slot: (shape, dtype, initial value)}
    slot_specs: tuple = ()
    # per trained parameter: its learning rate (a number or a schedule t -> lr) when they
    # differ (the graph then takes a vector of learning rates); None: one learning rate
    lrs: tuple | None = None
    # the step takes a random key: the loss's `key` argument, or one the trace made for random
    # ops called without a key (traced.implicit_key: the last forward input)
    takes_key: bool = False
    # (output index, input index) of the buffers fg.assign gave new values (written with the
    # update)
    assigned: tuple = ()


def build_step_graph(loss_fn, optimizer: Optimizer, args, trainable_leaves, has_aux=False,
                     key_kwarg=False, name=None, timings: dict | None = None,
                     leaf_optimizers=None, handle_bits: int | None = None) -> StepGraph:
    """Trace loss_fn(*args) (args[0] = params), differentiate w.r.t. the trainable float
    parameter leaves and append `optimizer`'s update.

    `trainable_leaves[i]` says whether args[0]'s i-th leaf is trained (integer leaves never are).
    `leaf_optimizers[i]`: the optimizer of args[0]'s i-th leaf with its per-parameter
    hyper-parameters resolved (Optimizer.for_parameter); `optimizer` for every leaf if None.
    With key_kwarg, the loss is traced with key=<an int64 scalar graph input>.
    With handle_bits (the MPI library's handle width), the step is data-parallel: its
    gradients, loss and samples are summed over the processes before the guard and the update
    (compiler/data_parallel.py).
    """
    roles = ["param"] + ["batch"] * (len(args) - 1)
    if key_kwarg:
        # the key is one more positional input, passed on to the loss as key=...
        def fn(*a):
            return loss_fn(*a[:-1], key=a[-1])

        fn.__name__ = getattr(loss_fn, "__name__", "loss")
        # keep the loss's own argument names for the inputs (params['w1'], not args[0]['w1'])
        fn.__signature__ = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
             for n in arg_names(loss_fn, len(args)) if n.isidentifier() and n != "key"])
        args = tuple(args) + (np.int64(0),)
        roles.append("hyper")
    else:
        fn = loss_fn
    t0 = time.perf_counter()
    # random ops called without a key (fg.dropout) draw from the step's own key
    fwd = trace(fn, args, name=name or getattr(loss_fn, "__name__", "loss"), roles=roles,
                random_key="last" if key_kwarg else "new")
    t1 = time.perf_counter()
    graph = fwd.graph
    if key_kwarg:
        names = list(graph.input_names)
        names[-1] = "key"
        graph = graph.replace(input_names=tuple(names))
    n_param_leaves = fwd.in_tree.children[0].num_leaves
    param_inputs = [k for k, leaf in enumerate(fwd.array_leaves) if leaf < n_param_leaves]
    # buffers that fg.assign gives new values (batch norm's running statistics) are not trained
    assigned = {k for _, k in fwd.assigned}
    trained = tuple(k for k in param_inputs
                    if trainable_leaves[fwd.array_leaves[k]] and is_float(graph.inputs[k].dtype)
                    and k not in assigned)
    if not trained:
        raise ValueError("train_step: no trainable float parameters (check `trainable=`)")
    out_tree = fwd.out_tree
    aux_tree = out_tree.children[1] if has_aux else None
    n_outputs = len(graph.outputs)

    seed = None
    if handle_bits is not None:  # two more runtime inputs; the backward starts from `samples`
        extra = data_parallel.inputs()
        seed = len(graph.inputs)
        graph = graph.replace(inputs=graph.inputs + tuple(v for v, _ in extra),
                              input_names=graph.input_names + tuple(n for _, n in extra),
                              input_roles=graph.input_roles + ("hyper",) * len(extra))
    joint = differentiate(graph, trained, of=0, seed=seed)
    t2 = time.perf_counter()
    b = GraphBuilder(joint.name)
    b.inputs, b.input_names, b.input_roles = (list(joint.inputs), list(joint.input_names),
                                              list(joint.input_roles))
    b.nodes = list(joint.nodes)
    opts = {k: leaf_optimizers[fwd.array_leaves[k]] if leaf_optimizers else optimizer
            for k in trained}
    state_in, slot_specs = {}, []
    for k in trained:
        p = joint.inputs[k]
        specs = {}
        for slot in optimizer.slots:
            t, initial = opts[k].slot_spec(slot, p.type)
            specs[slot] = (tuple(t.shape), t.dtype, float(initial))
            state_in[k, slot] = b.add_input(t, f"{slot}[{joint.input_names[k]}]", "state")
        slot_specs.append(specs)
    lrs = tuple(opts[k].lr for k in trained)
    one_lr = all(lr is optimizer.lr for lr in lrs)
    lr_in = b.add_input(TensorType("float64", () if one_lr else (len(trained),)), "lr", "hyper")
    step_in = b.add_input(TensorType("int64", ()), "step", "hyper")
    hps = {k: Hyper(lr=lr_in if one_lr else _element(b, lr_in, j), step=step_in)
           for j, k in enumerate(trained)}

    e = Emitter(b, part="update")
    grads = list(joint.outputs[n_outputs:])
    loss, checked = joint.outputs[0], grads
    if handle_bits is not None:  # the job's loss and sums are checked; the update reads means
        loss, checked, grads = data_parallel.sum_over_processes(
            Emitter(b, part="backward"), loss, grads, joint.inputs[seed], joint.inputs[seed + 1],
            handle_bits, e)
    checks = _gradient_checks(Emitter(b, part="backward"), checked, loss.dtype)
    guard_value = Emitter(b, part="backward").add(loss, _total(b, checks))
    if optimizer.clip_norm is not None:
        grads = clip_by_global_norm(e, grads, optimizer.clip_norm)
    outputs = [loss, *joint.outputs[1:n_outputs]]  # the (job's) loss, aux, fg.assign's
    names = list(joint.output_names[:n_outputs])
    aliases, new_states = list(fwd.assigned), []
    for k, g in zip(trained, grads):
        e.loc = None
        p = joint.inputs[k]
        state = {s: state_in[k, s] for s in optimizer.slots}
        new_p, new_s = opts[k].emit_update(e, p, g, state, hps[k])
        new_s = {s: new_s.get(s, state[s]) for s in optimizer.slots}  # left out: unchanged
        aliases.append((len(outputs), k))
        outputs.append(new_p)
        names.append(f"new {joint.input_names[k]}")
        new_states += [(state_in[k, s], new_s[s]) for s in optimizer.slots]
    index = {v: i for i, v in enumerate(b.inputs)}
    for old, new in new_states:
        aliases.append((len(outputs), index[old]))
        outputs.append(new)
        names.append(f"new {b.input_names[index[old]]}")
    grad_checks = []
    for k, check in zip(trained, checks):
        grad_checks.append((len(outputs), joint.input_names[k]))
        outputs.append(check)
        names.append(f"finite check of d/d{joint.input_names[k]}")
    guard = len(outputs)
    outputs.append(guard_value)
    names.append("finite check of the loss and every gradient")
    step = b.build(outputs, names, aliases)
    if timings is not None:
        timings.update(trace=t1 - t0, autodiff=t2 - t1, optimizer=time.perf_counter() - t2)
    return StepGraph(step, fwd, trained, tuple(optimizer.slots), aux_tree, guard,
                     tuple(grad_checks), tuple(slot_specs), None if one_lr else lrs,
                     key_kwarg or fwd.implicit_key, fwd.assigned)


def _element(b, vector, j):
    """vector[j] as a scalar Var (a parameter's own learning rate)."""
    e = Emitter(b, part="update")
    one = e("slice", vector, starts=(j,), steps=(1,), sizes=(1,))
    return e.reshape(one, ())


def _gradient_checks(e: Emitter, grads, dtype) -> list:
    """sum(g * 0) of each gradient, in the loss's dtype: 0 when g is finite, NaN when any
    element is inf or NaN. The step checks them (with the loss) before it writes any parameter,
    so a non-finite gradient skips the update as a non-finite loss does. Each is a reduction
    over its gradient: where the update already reads the gradient in a reduction (global-norm
    clipping), fusion computes both in one pass. A matrix's is a sum over rows of its row sums:
    a kernel over (rows, columns) that can be split over the threads (one long sum cannot)."""
    checks = []
    for g in grads:
        zero = e.mul(g, 0)
        if len(g.shape) >= 2:
            zero = e.sum(zero, [len(g.shape) - 1])
        s = e.sum(zero, range(len(zero.shape)))
        checks.append(s if s.dtype == dtype else e("cast", s, dtype=dtype))
    return checks


def _total(b, checks):
    e = Emitter(b, part="backward")
    total = checks[0]
    for c in checks[1:]:
        total = e.add(total, c)
    return total
