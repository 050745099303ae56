"""Optimizers written in IR: each appends its parameter update to the step graph.

The arithmetic is PyTorch's (torch.optim): L2 weight decay added to the gradient, SGD momentum
with dampening and Nesterov, Adam's bias correction, AdamW's decoupled decay, RMSProp with
optional centring and momentum, Adagrad, Adadelta, Adamax and NAdam, and Lion as its paper
writes it, so results can be compared step for step. The learning rate and the step counter are
runtime inputs of the graph: a new learning rate or a schedule never recompiles.

Every hyper-parameter but `clip_norm` (one norm over all gradients) may be given per parameter,
as a function `(path, array) -> value` evaluated once per parameter leaf when the step is
compiled: `AdamW(weight_decay=lambda path, x: 0.1 if x.ndim >= 2 else 0.0)`. (A learning rate
that is a function of one argument, `t -> lr`, is a schedule; of two, a per-parameter value,
which may itself be a schedule.)

Two ways to write an update:
  update(p, g, state, hp)         the public one: fusegrad ops on traced arrays, like a model
                                  (see Optimizer.update); the step records it as IR
  emit_update(e, p, g, state, hp) the built-ins': IR nodes through an Emitter (compiler/emit.py)
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

from ..ir import TensorType, Var
from .emit import Emitter


def per_parameter(value) -> bool:
    """Is `value` a per-parameter function, (path, array) -> value?"""
    if not callable(value):
        return False
    try:
        inspect.signature(value).bind("params", None)
    except (TypeError, ValueError):
        return False
    try:
        inspect.signature(value).bind(1)
        return False  # also callable with one argument: a schedule t -> lr
    except TypeError:
        return True


@dataclass
class Hyper:
    """Runtime scalars an update reads: its learning rate (float64) and the step t = 1, 2, ..."""

    lr: Var
    step: Var

    def lr_as(self, e: Emitter, dtype: str) -> Var:
        return self.lr if self.lr.dtype == dtype else e("cast", self.lr, dtype=dtype)

    def t_as(self, e: Emitter, dtype: str) -> Var:
        return e("cast", self.step, dtype=dtype)


@dataclass
class TracedHyper:
    """What `Optimizer.update` receives as `hp`: traced scalars. `lr` is in the parameter's
    dtype (so `p - hp.lr * g` keeps it), `lr64` in float64, `t` the step (int64, from 1)."""

    lr: object
    lr64: object
    t: object


class Optimizer:
    """Base class. `slots` names the per-parameter state arrays; `update` (or `emit_update`)
    computes one parameter's new value and state.

    Write a new optimizer by subclassing it::

        class SignMomentum(fg.optim.Optimizer):
            slots = ("momentum",)

            def __init__(self, lr=1e-3, beta=0.9, weight_decay=0.0):
                super().__init__(lr, weight_decay)
                self.beta = beta

            def update(self, p, g, state, hp):
                m = self.beta * state["momentum"] + (1 - self.beta) * g
                return p - hp.lr * fg.sign(m), {"momentum": m}

    Hyper-parameters are the instance's attributes: numbers, tuples of numbers, or per-parameter
    functions (path, array) -> value, resolved before `update` sees them.
    """

    slots: tuple[str, ...] = ()

    def __init__(self, lr, weight_decay=0.0, clip_norm=None):
        if per_parameter(clip_norm):
            raise ValueError("clip_norm scales all gradients by one global norm: give one "
                             "number, not a per-parameter function")
        self.lr = lr
        self.weight_decay = weight_decay
        self.clip_norm = clip_norm
        Optimizer.check(self)  # a subclass checks its own hyper-parameters once it has set them

    # ---- hyper-parameters ----
    def check(self):
        """Raise ValueError for a hyper-parameter out of range (per-parameter functions are
        checked with their values, in `for_parameter`). Subclasses add their own checks."""
        lr = self.lr
        if not callable(lr) and not float(lr) > 0:
            raise ValueError(f"lr must be positive (or a schedule), got {lr}")
        if self._known(self.weight_decay) and self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {self.clip_norm}")

    @staticmethod
    def _known(value) -> bool:
        """A value (not a per-parameter function still to be resolved)."""
        return not per_parameter(value)

    def _hyper(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "slots"}

    def per_parameter_names(self) -> list:
        """The hyper-parameters given as per-parameter functions."""
        return [k for k, v in self._hyper().items() if per_parameter(v)]

    def for_parameter(self, path: str, x) -> "Optimizer":
        """This optimizer with every per-parameter function evaluated for the leaf at `path`
        (the same object when there are none)."""
        names = self.per_parameter_names()
        if not names:
            return self
        resolved = copy.copy(self)
        for k in names:
            setattr(resolved, k, getattr(self, k)(path, x))
        try:
            resolved.check()
        except ValueError as exc:
            raise ValueError(f"{type(self).__name__} for {path}: {exc}") from None
        return resolved

    def config(self) -> dict:
        """The hyper-parameters baked into the graph (other values make a new program, whose
        kernels are those of the first: constants are kernel arguments)."""
        return {k: v for k, v in self._hyper().items() if k != "lr"}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in {"lr": self.lr, **self.config()}.items())
        return f"{type(self).__name__}({args})"

    # ---- state ----
    def slot_spec(self, slot: str, param: TensorType) -> tuple[TensorType, float]:
        """The type of slot `slot` for a parameter of type `param`, and the value it starts
        at: by default the parameter's type, zeros."""
        return param, 0.0

    # ---- the update ----
    def update(self, p, g, state: dict, hp: TracedHyper):
        """-> (new p, {slot: new value}), written with fusegrad ops on traced arrays: `p` the
        parameter, `g` its gradient (after clipping), `state[slot]` the optimizer state, `hp`
        the learning rate (`hp.lr` in p's dtype, `hp.lr64` in float64) and the step `hp.t`
        (1, 2, ...). Slots left out of the result keep their value."""
        raise NotImplementedError(f"{type(self).__name__} must define update(p, g, state, hp)")

    def emit_update(self, e: Emitter, p: Var, g: Var, state: dict, hp: Hyper):
        """-> (new p Var, {slot: new state Var}): by default `update`, traced."""
        from .symbolic import TraceContext, Tracer

        b = e.builder
        ctx = TraceContext(b.name, builder=b)
        saved, b.part = b.part, "update"
        try:
            with ctx:
                wrap = lambda v: Tracer(ctx, v)  # noqa: E731
                traced = TracedHyper(lr=wrap(hp.lr_as(e, p.dtype)), lr64=wrap(hp.lr),
                                     t=wrap(hp.step))
                new_p, new_state = self.update(wrap(p), wrap(g),
                                               {s: wrap(v) for s, v in state.items()}, traced)
                new_p = self._checked(ctx, "the new parameter", new_p, p.type)
                new_state = {s: self._checked(ctx, f"state[{s!r}]", v, state[s].type)
                             for s, v in (new_state or {}).items()}
        finally:
            b.part = saved
        return new_p, new_state

    def _checked(self, ctx, what, value, want: TensorType) -> Var:
        v = ctx.lift(value)
        if v.type != want:
            raise TypeError(f"{type(self).__name__}.update returned {what} as {v.type}; it must "
                            f"be {want} (cast with .astype, or use hp.lr, which has the "
                            f"parameter's dtype)")
        return v

    def _l2(self, e, p, g):
        return e.add(g, e.mul(self.weight_decay, p)) if self.weight_decay else g

    def _decay(self, e, p, hp):
        """Decoupled weight decay: p * (1 - lr * weight_decay)."""
        if not self.weight_decay:
            return p
        return e.mul(p, e.sub(1, e.mul(hp.lr_as(e, p.dtype), self.weight_decay)))


def _beta_pair(name, betas):
    if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
        raise ValueError(f"{name} must be in [0, 1), got {betas}")


class SGD(Optimizer):
    def __init__(self, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                 clip_norm=None):
        super().__init__(lr, weight_decay, clip_norm)
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov
        self.slots = ("momentum",) if momentum else ()
        self.check()

    def check(self):
        super().check()
        if self._known(self.momentum) and self._known(self.dampening) and self.nesterov and \
                (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")

    def emit_update(self, e, p, g, state, hp):
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
        self.betas, self.eps = betas, eps
        self.check()

    def check(self):
        super().check()
        if self._known(self.betas):
            _beta_pair("betas", self.betas)

    def emit_update(self, e, p, g, state, hp):
        b1, b2 = self.betas
        if self.decoupled:  # AdamW: p *= 1 - lr * wd, before the Adam step
            p = self._decay(e, p, hp)
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
        self.alpha, self.eps = alpha, eps
        self.momentum, self.centered = momentum, bool(centered)
        self.slots = ("square_avg",) + (("grad_avg",) if centered else ()) + \
            (("momentum_buffer",) if momentum else ())
        self.check()

    def emit_update(self, e, p, g, state, hp):
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


class Adagrad(Optimizer):
    """torch.optim.Adagrad: sum += g^2; p -= lr / (1 + (t-1) lr_decay) * g / (sqrt(sum) + eps)."""

    slots = ("sum",)

    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, clip_norm=None):
        super().__init__(lr, weight_decay, clip_norm)
        self.lr_decay, self.eps = lr_decay, eps
        self.initial_accumulator_value = initial_accumulator_value
        self.check()

    def check(self):
        super().check()
        for name in ("lr_decay", "initial_accumulator_value"):
            value = getattr(self, name)
            if self._known(value) and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def slot_spec(self, slot, param):
        return param, float(self.initial_accumulator_value)

    def emit_update(self, e, p, g, state, hp):
        g = self._l2(e, p, g)
        total = e.add(state["sum"], e.mul(g, g))
        clr = e.div(hp.lr, e.add(1, e.mul(e.sub(hp.t_as(e, "float64"), 1), self.lr_decay)))
        clr = e("cast", clr, dtype=p.dtype)
        new_p = e.sub(p, e.mul(clr, e.div(g, e.add(e("sqrt", total), self.eps))))
        return new_p, {"sum": total}


class Adadelta(Optimizer):
    """torch.optim.Adadelta: square_avg = rho sa + (1-rho) g^2; delta = sqrt(acc_delta + eps) /
    sqrt(square_avg + eps) * g; acc_delta = rho ad + (1-rho) delta^2; p -= lr * delta."""

    slots = ("square_avg", "acc_delta")

    def __init__(self, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, clip_norm=None):
        super().__init__(lr, weight_decay, clip_norm)
        self.rho, self.eps = rho, eps
        self.check()

    def check(self):
        super().check()
        if self._known(self.rho) and not 0 <= self.rho <= 1:
            raise ValueError(f"rho must be in [0, 1], got {self.rho}")

    def emit_update(self, e, p, g, state, hp):
        g = self._l2(e, p, g)
        rho = self.rho
        sa = e.add(e.mul(rho, state["square_avg"]), e.mul(1 - rho, e.mul(g, g)))
        std = e("sqrt", e.add(sa, self.eps))
        delta = e.mul(e.div(e("sqrt", e.add(state["acc_delta"], self.eps)), std), g)
        acc = e.add(e.mul(rho, state["acc_delta"]), e.mul(1 - rho, e.mul(delta, delta)))
        new_p = e.sub(p, e.mul(hp.lr_as(e, p.dtype), delta))
        return new_p, {"square_avg": sa, "acc_delta": acc}


class Adamax(Optimizer):
    """torch.optim.Adamax: m = b1 m + (1-b1) g; u = max(b2 u, |g| + eps);
    p -= lr / (1 - b1^t) * m / u."""

    slots = ("exp_avg", "exp_inf")

    def __init__(self, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, clip_norm=None):
        super().__init__(lr, weight_decay, clip_norm)
        self.betas, self.eps = betas, eps
        self.check()

    def check(self):
        super().check()
        if self._known(self.betas):
            _beta_pair("betas", self.betas)

    def emit_update(self, e, p, g, state, hp):
        b1, b2 = self.betas
        g = self._l2(e, p, g)
        m = e.add(e.mul(b1, state["exp_avg"]), e.mul(1 - b1, g))
        u = e("maximum", e.mul(b2, state["exp_inf"]), e.add(e("abs", g), self.eps))
        bias1 = e.sub(1, e("pow", e.const(b1, "float64"), hp.t_as(e, "float64")))
        clr = e("cast", e.div(hp.lr, bias1), dtype=p.dtype)
        return e.sub(p, e.mul(clr, e.div(m, u))), {"exp_avg": m, "exp_inf": u}


class NAdam(Optimizer):
    """torch.optim.NAdam: Adam with Nesterov momentum and the momentum schedule
    mu_t = b1 (1 - 0.5 * 0.96^(t * momentum_decay)); `mu_product` (a float64 scalar per
    parameter, from 1) is the product of the mu_t so far, as torch keeps it."""

    slots = ("exp_avg", "exp_avg_sq", "mu_product")

    def __init__(self, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, clip_norm=None):
        super().__init__(lr, weight_decay, clip_norm)
        self.betas, self.eps = betas, eps
        self.momentum_decay, self.decoupled_weight_decay = momentum_decay, decoupled_weight_decay
        self.check()

    def check(self):
        super().check()
        if self._known(self.betas):
            _beta_pair("betas", self.betas)
        if self._known(self.momentum_decay) and self.momentum_decay < 0:
            raise ValueError(f"momentum_decay must be >= 0, got {self.momentum_decay}")

    def slot_spec(self, slot, param):
        if slot == "mu_product":
            return TensorType("float64", ()), 1.0
        return param, 0.0

    def emit_update(self, e, p, g, state, hp):
        b1, b2 = self.betas
        if self.decoupled_weight_decay:
            p = self._decay(e, p, hp)
        else:
            g = self._l2(e, p, g)
        t = hp.t_as(e, "float64")
        f64 = "float64"

        def mu_at(step):  # b1 * (1 - 0.5 * 0.96 ** (step * momentum_decay))
            decay = e("pow", e.const(0.96, f64), e.mul(step, self.momentum_decay))
            return e.mul(b1, e.sub(1, e.mul(0.5, decay)))

        mu, mu_next = mu_at(t), mu_at(e.add(t, 1))
        mu_product = e.mul(state["mu_product"], mu)
        mu_product_next = e.mul(mu_product, mu_next)
        m = _lerp(e, state["exp_avg"], g, 1 - b1)
        v = e.add(e.mul(b2, state["exp_avg_sq"]), e.mul(1 - b2, e.mul(g, g)))
        bias2 = e("cast", e.sub(1, e("pow", e.const(b2, f64), t)), dtype=p.dtype)
        denom = e.add(e("sqrt", e.div(v, bias2)), self.eps)
        grad_scale = e.div(e.mul(hp.lr, e.sub(1, mu)), e.sub(1, mu_product))
        avg_scale = e.div(e.mul(hp.lr, mu_next), e.sub(1, mu_product_next))
        # torch's addcdiv order: (scale * x) / denom
        new_p = e.sub(p, e.div(e.mul(e("cast", grad_scale, dtype=p.dtype), g), denom))
        new_p = e.sub(new_p, e.div(e.mul(e("cast", avg_scale, dtype=p.dtype), m), denom))
        return new_p, {"exp_avg": m, "exp_avg_sq": v, "mu_product": mu_product}


def _lerp(e, start, end, weight):
    """torch.lerp's arithmetic (NAdam's exp_avg): start + w (end - start) for w < 0.5, else
    end - (end - start)(1 - w); the same value as (1-w) start + w end, rounded as torch does."""
    if weight < 0.5:
        return e.add(start, e.mul(weight, e.sub(end, start)))
    return e.sub(end, e.mul(e.sub(end, start), 1 - weight))


class Lion(Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"):
    c = b1 m + (1-b1) g; p = p - lr (sign(c) + weight_decay p); m = b2 m + (1-b2) g."""

    slots = ("exp_avg",)

    def __init__(self, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, clip_norm=None):
        super().__init__(lr, weight_decay, clip_norm)
        self.betas = betas
        self.check()

    def check(self):
        super().check()
        if self._known(self.betas):
            _beta_pair("betas", self.betas)

    def emit_update(self, e, p, g, state, hp):
        b1, b2 = self.betas
        p = self._decay(e, p, hp)
        c = e.add(e.mul(b1, state["exp_avg"]), e.mul(1 - b1, g))
        new_p = e.sub(p, e.mul(hp.lr_as(e, p.dtype), e("sign", c)))
        m = e.add(e.mul(b2, state["exp_avg"]), e.mul(1 - b2, g))
        return new_p, {"exp_avg": m}


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
