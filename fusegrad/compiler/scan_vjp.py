"""The gradient of a scan: a reverse scan over what the forward saved.

The forward scan (autodiff sets its `save`) also outputs the carry each step started from,
stacked. The backward scan runs the other way over (saved carry[t], x[t], dy[t]) with carry
(dcarry, accumulated dconsts); its body recomputes the forward body's values of step t and runs
their VJP, built by differentiating the scalar  sum(new carry * dcarry) + sum(y * dy)  of the
body with respect to its float inputs (so every primitive's own rule does the work, and the
backward body is itself differentiable: gradients of gradients work). Its ys are dx[t].

Memory is the carries (length x carry size); compute is about three forward bodies per step
(the forward, its recomputation, its VJP), the usual price of checkpointing every step.
"""
from __future__ import annotations

from ..ir import GraphBuilder, Node, Var
from ..ir.dtypes import is_float
from .emit import Emitter


def saving(node):
    """`node` (a scan) with `save` on: the same outputs, then the stacked carries."""
    if node.attrs["save"]:
        return node
    attrs = node.attrs.replace(save=True)
    n_consts, n_carry = attrs["n_consts"], attrs["n_carry"]
    carry = node.inputs[n_consts:n_consts + n_carry]
    length = attrs["length"]
    saved = tuple(Var(c.type.with_shape((length, *c.shape))) for c in carry)
    return Node(node.op, node.inputs, node.outputs + saved, attrs, node.loc, node.part,
                node.region)


def scan_vjp(e, n, gs, need):
    """Cotangents of a scan node's inputs (consts, init, xs) from those of its outputs `gs`
    (None where an output has none)."""
    from .autodiff import differentiate

    a = n.attrs
    length, n_consts, n_carry = a["length"], a["n_consts"], a["n_carry"]
    n_ys = len(a["ys"])
    body = n.region
    consts, xs = n.inputs[:n_consts], n.inputs[n_consts + n_carry:]
    carry_out, ys = n.outputs[:n_carry], n.outputs[n_carry:n_carry + n_ys]
    saved = n.outputs[n_carry + n_ys:]
    assert len(saved) == n_carry, "autodiff saves a scan's carries before differentiating it"
    b_consts, b_carry = body.inputs[:n_consts], body.inputs[n_consts:n_consts + n_carry]
    b_xs = body.inputs[n_consts + n_carry:]
    b_carry_out, b_ys = body.outputs[:n_carry], body.outputs[n_carry:]

    fc = [k for k, v in enumerate(b_consts) if is_float(v.dtype)]  # what gets a gradient
    fk = [k for k, v in enumerate(b_carry) if is_float(v.dtype)]
    fx = [k for k, v in enumerate(b_xs) if is_float(v.dtype)]
    fy = [k for k, v in enumerate(b_ys) if is_float(v.dtype)]

    # the body's VJP: d/d(float inputs) of sum(new carry * dcarry) + sum(y * dy)
    w = GraphBuilder(f"{body.name}.vjp")
    w.inputs, w.input_names = list(body.inputs), list(body.input_names)
    w.input_roles = ["batch"] * len(body.inputs)
    w.nodes = list(body.nodes)
    d_carry = [w.add_input(b_carry_out[k].type, f"d{body.input_names[n_consts + k]}")
               for k in fk]
    d_y = [w.add_input(b_ys[k].type, f"dy{k}") for k in fy]
    we = Emitter(w, part="backward")
    total = None
    for out, ct in zip([b_carry_out[k] for k in fk] + [b_ys[k] for k in fy], d_carry + d_y):
        term = we.sum(we.mul(out, ct), range(len(out.shape)))
        if term.dtype != "float64":
            term = we("cast", term, dtype="float64")
        total = term if total is None else we.add(total, term)
    if total is None:  # nothing float flows out: no gradient at all
        return (None,) * len(n.inputs)
    wrt = [k for k in fc] + [n_consts + k for k in fk] + [n_consts + n_carry + k for k in fx]
    joint = differentiate(w.build([total], ["vjp"]), wrt, of=0)
    grads = list(joint.outputs[1:])
    g_consts, g_carry, g_xs = (grads[:len(fc)], grads[len(fc):len(fc) + len(fk)],
                               grads[len(fc) + len(fk):])

    # the backward body: (consts | dcarry, dconsts so far | saved carry[t], x[t], dy[t]), its
    # values its own (a copy of the joint's nodes: no Var is shared with the forward body)
    v = GraphBuilder(f"{body.name}.backward")
    env = {}
    names = [*body.input_names[:n_consts],
             *(f"d{body.input_names[n_consts + k]}" for k in fk)]
    for old, name in zip([*b_consts, *d_carry], names):
        env[old] = v.add_input(old.type, name)
    acc = [v.add_input(b_consts[k].type, f"d{body.input_names[k]}") for k in fc]
    for old in [*b_carry, *b_xs, *d_y]:
        env[old] = v.add_input(old.type, "t")
    # cotangents of the saved carries (a gradient of the gradient reads them): saved[t] is the
    # carry step t starts from, so its cotangent joins that carry's
    g_saved = gs[n_carry + n_ys:] if len(gs) > n_carry + n_ys else [None] * n_carry
    with_saved = [k for k in fk if g_saved[k] is not None]
    d_saved = {k: v.add_input(b_carry[k].type, f"dsaved{k}") for k in with_saved}
    for node in joint.nodes:
        outs = tuple(Var(o.type, o.hint) for o in node.outputs)
        env.update(zip(node.outputs, outs))
        v.append(Node(node.op, tuple(env[i] for i in node.inputs), outs, node.attrs, node.loc,
                      node.part, node.region))
    ve = Emitter(v, part="backward")
    summed = [ve.add(s, env[g]) for s, g in zip(acc, g_consts)]
    new_dcarry = [ve.add(env[g], d_saved[k]) if k in d_saved else env[g]
                  for k, g in zip(fk, g_carry)]
    region = v.build([*new_dcarry, *summed, *(env[g] for g in g_xs)])

    def ct(value, g):
        return g if g is not None else e.zeros(value.type)

    init_b = [ct(carry_out[k], gs[k]) for k in fk] + [e.zeros(consts[k].type) for k in fc]
    xs_b = [*saved, *xs, *(ct(ys[k], gs[n_carry + k]) for k in fy),
            *(g_saved[k] for k in with_saved)]
    attrs = dict(length=length, reverse=not a["reverse"], n_consts=n_consts,
                 n_carry=len(init_b), ys=tuple((xs[k].dtype, xs[k].shape[1:]) for k in fx),
                 save=False)
    outs = e.node("scan", [*consts, *init_b, *xs_b], attrs, region=region)
    d_init, d_consts, d_xs = outs[:len(fk)], outs[len(fk):len(init_b)], outs[len(init_b):]
    result = [None] * len(n.inputs)
    for j, k in enumerate(fc):
        result[k] = d_consts[j]
    for j, k in enumerate(fk):
        result[n_consts + k] = d_init[j]
    for j, k in enumerate(fx):
        result[n_consts + n_carry + k] = d_xs[j]
    return tuple(g if wanted else None for g, wanted in zip(result, need))

