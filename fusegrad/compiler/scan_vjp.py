"""The gradient of a scan: a reverse scan over what the forward saved.

The forward scan (autodiff sets its `save`) also outputs the carry each step started from,
stacked, and the results of its body's matrix products (residuals: more ys, stacked). The
backward scan runs the other way over (saved carry[t], x[t], dy[t], residuals[t]) with carry
(dcarry, accumulated dconsts); its body recomputes the forward body's cheap values of step t
(elementwise work from the carry and the saved products) and runs their VJP, built by
differentiating the scalar  sum(new carry * dcarry) + sum(y * dy)  of the body with respect to
its float inputs (so every primitive's own rule does the work, and the backward body is itself
differentiable: gradients of gradients work). Its ys are dx[t].

Memory is the carries and the products (length x their sizes); compute is about two forward
bodies' elementwise work and one of its products per step besides the VJP's: the products,
most of a recurrent cell's work, are not computed twice (an LSTM's backward scan ran 3 GEMMs a
step instead of 2 before they were saved).
"""
from __future__ import annotations

from ..ir import Graph, GraphBuilder, Node, Var
from ..ir.dtypes import is_float
from .emit import Emitter


def _residuals(body) -> list:
    """The body's values its VJP would otherwise compute again: its float matrix products
    (not already among its outputs)."""
    outputs = set(body.outputs)
    return [n.out for n in body.nodes if n.op == "matmul" and is_float(n.out.dtype)
            and n.out not in outputs]


def saving(node):
    """`node` (a scan) with `save` on: the same outputs, then the residuals (more ys, stacked:
    attrs["residuals"] counts them), then the stacked carries."""
    if node.attrs["save"]:
        return node
    body = node.region
    residuals = _residuals(body)
    n_consts, n_carry = node.attrs["n_consts"], node.attrs["n_carry"]
    length = node.attrs["length"]
    attrs = node.attrs.replace(save=True, residuals=len(residuals),
                               ys=node.attrs["ys"] + tuple((r.dtype, r.shape) for r in residuals))
    if residuals:
        body = Graph(body.inputs, body.nodes, body.outputs + tuple(residuals), body.name,
                     body.input_names, body.input_roles,
                     body.output_names + tuple(f"residual{k}" for k in range(len(residuals))))
    carry = node.inputs[n_consts:n_consts + n_carry]
    stacked = tuple(Var(r.type.with_shape((length, *r.shape))) for r in residuals)
    saved = tuple(Var(c.type.with_shape((length, *c.shape))) for c in carry)
    return Node(node.op, node.inputs, node.outputs + stacked + saved, attrs, node.loc,
                node.part, body)


def scan_vjp(e, n, gs, need):
    """Cotangents of a scan node's inputs (consts, init, xs) from those of its outputs `gs`
    (None where an output has none)."""
    from .autodiff import differentiate

    a = n.attrs
    length, n_consts, n_carry = a["length"], a["n_consts"], a["n_carry"]
    n_ys = len(a["ys"])
    n_res = a.get("residuals", 0)  # the last n_res ys: saved matrix products (saving())
    body = n.region
    consts, xs = n.inputs[:n_consts], n.inputs[n_consts + n_carry:]
    carry_out, ys = n.outputs[:n_carry], n.outputs[n_carry:n_carry + n_ys]
    stacked = n.outputs[n_carry + n_ys - n_res:n_carry + n_ys]
    saved = n.outputs[n_carry + n_ys:]
    assert len(saved) == n_carry, "autodiff saves a scan's carries before differentiating it"
    b_consts, b_carry = body.inputs[:n_consts], body.inputs[n_consts:n_consts + n_carry]
    b_xs = body.inputs[n_consts + n_carry:]
    b_carry_out, b_ys = body.outputs[:n_carry], body.outputs[n_carry:]
    b_res = set(b_ys[n_ys - n_res:])

    fc = [k for k, v in enumerate(b_consts) if is_float(v.dtype)]  # what gets a gradient
    fk = [k for k, v in enumerate(b_carry) if is_float(v.dtype)]
    fx = [k for k, v in enumerate(b_xs) if is_float(v.dtype)]
    # a residual takes part only with a cotangent of its own (a gradient of the gradient)
    fy = [k for k, v in enumerate(b_ys) if is_float(v.dtype)
          and (k < n_ys - n_res or (len(gs) > n_carry + k and gs[n_carry + k] is not None))]

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

    hoisted = _hoistable(joint, g_consts, {**dict(zip(b_carry, saved)), **dict(zip(b_xs, xs)),
                                           **dict(zip(b_ys[n_ys - n_res:], stacked))})

    # the backward body: (consts | dcarry, dconsts so far | saved carry[t], x[t], dy[t]), its
    # values its own (a copy of the joint's nodes: no Var is shared with the forward body)
    v = GraphBuilder(f"{body.name}.backward")
    env = {}
    names = [*body.input_names[:n_consts],
             *(f"d{body.input_names[n_consts + k]}" for k in fk)]
    for old, name in zip([*b_consts, *d_carry], names):
        env[old] = v.add_input(old.type, name)
    summed_fc = [j for j in range(len(fc)) if j not in hoisted]  # accumulated in the carry
    acc = [v.add_input(b_consts[fc[j]].type, f"d{body.input_names[fc[j]]}") for j in summed_fc]
    for old in [*b_carry, *b_xs, *d_y]:
        env[old] = v.add_input(old.type, "t")
    # the saved products of step t stand for the nodes that computed them
    res_in = {r: v.add_input(r.type, "t") for r in b_ys[n_ys - n_res:]}
    # cotangents of the saved carries (a gradient of the gradient reads them): saved[t] is the
    # carry step t starts from, so its cotangent joins that carry's
    g_saved = gs[n_carry + n_ys:] if len(gs) > n_carry + n_ys else [None] * n_carry
    with_saved = [k for k in fk if g_saved[k] is not None]
    d_saved = {k: v.add_input(b_carry[k].type, f"dsaved{k}") for k in with_saved}
    for node in joint.nodes:
        if len(node.outputs) == 1 and node.out in b_res:
            env[node.out] = res_in[node.out]
            continue
        outs = tuple(Var(o.type, o.hint) for o in node.outputs)
        env.update(zip(node.outputs, outs))
        v.append(Node(node.op, tuple(env[i] for i in node.inputs), outs, node.attrs, node.loc,
                      node.part, node.region))
    ve = Emitter(v, part="backward")
    summed = [ve.add(s, env[g_consts[j]]) for s, j in zip(acc, summed_fc)]
    new_dcarry = [ve.add(env[g], d_saved[k]) if k in d_saved else env[g]
                  for k, g in zip(fk, g_carry)]
    dx = [env[g] for g in g_xs]
    # v[t] of each hoisted product: a y of its own, unless it is already one (an x's gradient)
    per_step = []
    for j in sorted(hoisted):
        if env[hoisted[j][1]] not in dx and env[hoisted[j][1]] not in per_step:
            per_step.append(env[hoisted[j][1]])
    region = v.build([*new_dcarry, *summed, *dx, *per_step])

    def ct(value, g):
        return g if g is not None else e.zeros(value.type)

    init_b = [ct(carry_out[k], gs[k]) for k in fk] + [e.zeros(consts[fc[j]].type)
                                                      for j in summed_fc]
    xs_b = [*saved, *xs, *(ct(ys[k], gs[n_carry + k]) for k in fy), *stacked,
            *(g_saved[k] for k in with_saved)]
    attrs = dict(length=length, reverse=not a["reverse"], n_consts=n_consts,
                 n_carry=len(init_b), ys=tuple((xs[k].dtype, xs[k].shape[1:]) for k in fx)
                 + tuple((p.dtype, p.shape) for p in per_step), save=False, residuals=0)
    outs = e.node("scan", [*consts, *init_b, *xs_b], attrs, region=region)
    d_init, d_summed = outs[:len(fk)], outs[len(fk):len(init_b)]
    d_xs = outs[len(init_b):len(init_b) + len(fx)]
    d_consts = dict(zip(summed_fc, d_summed))
    stacked_ys = dict(zip([*dx, *per_step], outs[len(init_b):]))
    for j in sorted(hoisted):
        # sum over t of u[t]^T v[t]: one product of the stacked rows
        u, body_v = hoisted[j]
        stacked_v = stacked_ys[env[body_v]]
        rows = length * u.shape[1]
        d_consts[j] = e("matmul", e.reshape(u, (rows, u.shape[2])),
                        e.reshape(stacked_v, (rows, stacked_v.shape[2])),
                        transpose_a=True, transpose_b=False)
    result = [None] * len(n.inputs)
    for j, k in enumerate(fc):
        result[k] = d_consts[j]
    for j, k in enumerate(fk):
        result[n_consts + k] = d_init[j]
    for j, k in enumerate(fx):
        result[n_consts + n_carry + k] = d_xs[j]
    return tuple(g if wanted else None for g, wanted in zip(result, need))


def _hoistable(joint, g_consts, stacked_of) -> dict:
    """{j: (outer stacked u, body v)} for the const gradients that are one product u[t]^T v[t]
    with u read whole each step (a saved carry, an x, a saved product): a recurrent weight's
    gradient. Summed over the steps that is one product of the stacked rows, computed after the
    loop as a single big GEMM, instead of a small GEMM, an addition into the running sum and a
    copy of it every step."""
    producer = {o: node for node in joint.nodes for o in node.outputs}
    out = {}
    for j, g in enumerate(g_consts):
        node = producer.get(g)
        if node is None or node.op != "matmul" or not node.attrs["transpose_a"] \
                or node.attrs["transpose_b"]:
            continue
        u, v = node.inputs
        if u in stacked_of and len(u.shape) == 2 and len(v.shape) == 2 \
                and u.dtype == v.dtype == g.dtype:
            out[j] = (stacked_of[u], v)
    return out
