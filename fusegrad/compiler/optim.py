"""Optimizers written in IR: each appends its parameter update to the joint graph.

The arithmetic is PyTorch's (torch.optim): L2 weight decay added to the gradient, SGD momentum
with dampening and Nesterov, Adam's bias correction, AdamW's decoupled decay, RMSProp with
optional centring and momentum, so results can be compared step for step. The learning rate and
the step counter are runtime inputs of the graph: a new learning rate never recompiles.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Var
from .emit import Emitter


@dataclass
class Hyper:
    """Runtime scalars every update may read: learning rate (float) and step t = 1, 2, ..."""

    lr: Var
    step: Var

    def lr_as(self, e: Emitter, dtype: str) -> Var:
        return self.lr if self.lr.dtype == dtype else e("cast", self.lr, dtype=dtype)

    def t_as(self, e: Emitter, dtype: str) -> Var:
        return e("cast", self.step, dtype=dtype)


class Optimizer:
    """Base class. `slots` names the per-parameter state arrays (zeros at start)."""

    slots: tuple[str, ...] = ()

    def __init__(self, lr, weight_decay=0.0, clip_norm=None):
        if not callable(lr) and not float(lr) > 0:
            raise ValueError(f"lr must be positive (or a schedule), got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        self.lr = lr
        self.weight_decay = float(weight_decay)
        self.clip_norm = clip_norm

    def config(self) -> dict:
        """The hyper-parameters baked into the graph (changing them recompiles)."""
        return {k: v for k, v in vars(self).items() if k != "lr"}

    def update(self, e: Emitter, p: Var, g: Var, state: dict, hp: Hyper):
        """-> (new parameter Var, {slot: new state Var})."""
        raise NotImplementedError

    def _l2(self, e, p, g):
        return e.add(g, e.mul(self.weight_decay, p)) if self.weight_decay else g

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in {"lr": self.lr, **self.config()}.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    def __init__(self, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                 clip_norm=None):
        super().__init__(lr, weight_decay, clip_norm)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")
        self.momentum, self.dampening, self.nesterov = float(momentum), float(dampening), nesterov
        self.slots = ("momentum",) if momentum else ()

    def update(self, e, p, g, state, hp):
        g = self._l2(e, p, g)
        new_state = {}
        if self.momentum:
            # torch: the buffer starts as the first gradient itself, then buf = mu*buf + (1-d)*g
            first = e("eq", hp.step, e.const(1, hp.step.dtype))
            running = e.add(e.mul(self.momentum, state["momentum"]), e.mul(1 - self.dampening, g))
            buf = e.select(first, g, running)
            new_state["momentum"] = buf
            g = e.add(g, e.mul(self.momentum, buf)) if self.nesterov else buf
        return e.sub(p, e.mul(hp.lr_as(e, p.dtype), g)), new_state


class Adam(Optimizer):
    slots = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, clip_norm=None):
        super().__init__(lr, weight_decay, clip_norm)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)

    def update(self, e, p, g, state, hp):
        b1, b2 = self.betas
        if self.decoupled:  # AdamW: p *= 1 - lr * wd, before the Adam step
            if self.weight_decay:
                p = e.mul(p, e.sub(1, e.mul(hp.lr_as(e, p.dtype), self.weight_decay)))
        else:
            g = self._l2(e, p, g)
        m = e.add(e.mul(b1, state["exp_avg"]), e.mul(1 - b1, g))
        v = e.add(e.mul(b2, state["exp_avg_sq"]), e.mul(1 - b2, e.mul(g, g)))
        # scalar bias corrections in float64, as torch computes them in Python floats
        t = hp.t_as(e, "float64")
        bias1 = e.sub(1, e("pow", e.const(b1, "float64"), t))
        bias2_sqrt = e("sqrt", e.sub(1, e("pow", e.const(b2, "float64"), t)))
        step_size = e("cast", e.div(hp.lr, bias1), dtype=p.dtype)
        denom = e.add(e.div(e("sqrt", v), e("cast", bias2_sqrt, dtype=p.dtype)), self.eps)
        new_p = e.sub(p, e.mul(step_size, e.div(m, denom)))
        return new_p, {"exp_avg": m, "exp_avg_sq": v}


class AdamW(Adam):
    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, clip_norm=None):
        super().__init__(lr, betas, eps, weight_decay, clip_norm)


class RMSProp(Optimizer):
    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, clip_norm=None):
        super().__init__(lr, weight_decay, clip_norm)
        self.alpha, self.eps = float(alpha), float(eps)
        self.momentum, self.centered = float(momentum), bool(centered)
        self.slots = ("square_avg",) + (("grad_avg",) if centered else ()) + \
            (("momentum_buffer",) if momentum else ())

    def update(self, e, p, g, state, hp):
        g = self._l2(e, p, g)
        a = self.alpha
        sq = e.add(e.mul(a, state["square_avg"]), e.mul(1 - a, e.mul(g, g)))
        new_state = {"square_avg": sq}
        if self.centered:
            ga = e.add(e.mul(a, state["grad_avg"]), e.mul(1 - a, g))
            new_state["grad_avg"] = ga
            avg = e.add(e("sqrt", e.sub(sq, e.mul(ga, ga))), self.eps)
        else:
            avg = e.add(e("sqrt", sq), self.eps)
        lr = hp.lr_as(e, p.dtype)
        if self.momentum:
            buf = e.add(e.mul(self.momentum, state["momentum_buffer"]), e.div(g, avg))
            new_state["momentum_buffer"] = buf
            return e.sub(p, e.mul(lr, buf)), new_state
        return e.sub(p, e.mul(lr, e.div(g, avg))), new_state


def clip_by_global_norm(e: Emitter, grads: list, max_norm: float) -> list:
    """torch.nn.utils.clip_grad_norm_: scale all gradients by min(1, max_norm / (norm + 1e-6))."""
    dtype = grads[0].dtype
    total = None
    for g in grads:
        sq = e.sum(e.mul(g, g), range(len(g.shape)))
        sq = sq if sq.dtype == dtype else e("cast", sq, dtype=dtype)
        total = sq if total is None else e.add(total, sq)
    norm = e("sqrt", total)
    scale = e("minimum", e.div(max_norm, e.add(norm, 1e-6)), e.const(1, dtype))
    return [e.mul(g, scale if g.dtype == dtype else e("cast", scale, dtype=g.dtype))
            for g in grads]
