"""fg.optim against torch.optim itself, and against NumPy re-implementations of torch's
documented algorithms (which run without torch): every optimizer, step for step, in float64.

One model (a 2-layer MLP with biases), the same parameters and batches; fusegrad's compiled
train_step on one copy, torch.optim (gradients from torch's autograd) or the NumPy reference
(gradients from fg.grad) on the other. Per-parameter hyper-parameters are compared with torch's
parameter groups. Also: an optimizer written by a user with fusegrad ops (the public way to add
one), and the errors for bad per-parameter values.
"""
import re

import numpy as np
import pytest

import fusegrad as fg

try:
    import torch
except ImportError:  # the NumPy references still run
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

STEPS = 6


def params64(seed=0):
    rng = np.random.default_rng(seed)
    return {"w1": rng.standard_normal((5, 7)) * 0.5, "b1": rng.standard_normal(7) * 0.1,
            "w2": rng.standard_normal((7, 3)) * 0.5, "b2": np.zeros(3)}


def batches(n=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((8, 5)), rng.integers(0, 3, 8)) for _ in range(n)]


def loss_fn(p, x, y):
    return fg.cross_entropy(fg.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"], y)


def torch_loss(p, x, y):
    h = torch.tanh(torch.as_tensor(x) @ p["w1"] + p["b1"])
    return torch.nn.functional.cross_entropy(h @ p["w2"] + p["b2"], torch.as_tensor(y))


@pytest.fixture(autouse=True)
def torch_float64():
    """torch keeps scalar optimizer state (NAdam's mu_product, step counters) in its default
    dtype: float64 here, as fusegrad does."""
    if torch is None:
        yield
        return
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(saved)


def run_both(fg_opt, torch_opt_fn, groups=None):
    """Train both copies STEPS steps, checking the losses agree; returns both parameters."""
    p = params64()
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in p.items()}
    if groups is None:
        opt = torch_opt_fn(list(tp.values()))
    else:
        opt = torch_opt_fn([{"params": [tp[k] for k in names], **options}
                            for names, options in groups])
    step = fg.train_step(loss_fn, fg_opt)
    for x, y in batches():
        ours = step(p, x, y)
        opt.zero_grad()
        theirs = torch_loss(tp, x, y)
        theirs.backward()
        opt.step()
        np.testing.assert_allclose(ours, theirs.item(), rtol=1e-9)
    return p, {k: v.detach().numpy() for k, v in tp.items()}


OPTIMIZERS = {
    "sgd_nesterov": (lambda: fg.optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
                     lambda ps: torch.optim.SGD(ps, 0.1, momentum=0.9, nesterov=True,
                                                weight_decay=0.01)),
    "adam": (lambda: fg.optim.Adam(0.01, weight_decay=0.02),
             lambda ps: torch.optim.Adam(ps, 0.01, weight_decay=0.02)),
    "adamw": (lambda: fg.optim.AdamW(0.01), lambda ps: torch.optim.AdamW(ps, 0.01)),
    "rmsprop": (lambda: fg.optim.RMSProp(0.01, momentum=0.5, centered=True),
                lambda ps: torch.optim.RMSprop(ps, 0.01, momentum=0.5, centered=True)),
    "adagrad": (lambda: fg.optim.Adagrad(0.1, lr_decay=0.01, weight_decay=0.01,
                                         initial_accumulator_value=0.1),
                lambda ps: torch.optim.Adagrad(ps, 0.1, lr_decay=0.01, weight_decay=0.01,
                                               initial_accumulator_value=0.1)),
    "adagrad_defaults": (lambda: fg.optim.Adagrad(), lambda ps: torch.optim.Adagrad(ps)),
    "adadelta": (lambda: fg.optim.Adadelta(weight_decay=0.01),
                 lambda ps: torch.optim.Adadelta(ps, weight_decay=0.01)),
    "adadelta_defaults": (lambda: fg.optim.Adadelta(), lambda ps: torch.optim.Adadelta(ps)),
    "adamax": (lambda: fg.optim.Adamax(weight_decay=0.01),
               lambda ps: torch.optim.Adamax(ps, weight_decay=0.01)),
    "adamax_defaults": (lambda: fg.optim.Adamax(), lambda ps: torch.optim.Adamax(ps)),
    "nadam": (lambda: fg.optim.NAdam(0.01, weight_decay=0.01),
              lambda ps: torch.optim.NAdam(ps, 0.01, weight_decay=0.01)),
    "nadam_decoupled": (lambda: fg.optim.NAdam(0.01, weight_decay=0.01,
                                               decoupled_weight_decay=True),
                        lambda ps: torch.optim.NAdam(ps, 0.01, weight_decay=0.01,
                                                     decoupled_weight_decay=True)),
    "nadam_defaults": (lambda: fg.optim.NAdam(), lambda ps: torch.optim.NAdam(ps)),
}


@needs_torch
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_matches_torch_optim_step_for_step(name):
    ours, theirs = OPTIMIZERS[name]
    p, tp = run_both(ours(), theirs)
    for k in p:
        np.testing.assert_allclose(p[k], tp[k], rtol=1e-9, atol=1e-10, err_msg=k)


# ---- NumPy references: torch.optim's documented algorithms --------------------------------------


class RefAdagrad:
    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10):
        self.lr, self.lr_decay, self.wd, self.eps = lr, lr_decay, weight_decay, eps
        self.init, self.sum = initial_accumulator_value, {}

    def update(self, k, p, g, t):
        g = g + self.wd * p
        self.sum[k] = self.sum.get(k, np.full_like(p, self.init)) + g * g
        clr = self.lr / (1 + (t - 1) * self.lr_decay)
        return p - clr * g / (np.sqrt(self.sum[k]) + self.eps)


class RefAdadelta:
    def __init__(self, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
        self.lr, self.rho, self.eps, self.wd, self.sq, self.acc = lr, rho, eps, weight_decay, {}, {}

    def update(self, k, p, g, t):
        g = g + self.wd * p
        sq = self.rho * self.sq.get(k, np.zeros_like(p)) + (1 - self.rho) * g * g
        acc = self.acc.get(k, np.zeros_like(p))
        delta = np.sqrt(acc + self.eps) / np.sqrt(sq + self.eps) * g
        self.sq[k], self.acc[k] = sq, self.rho * acc + (1 - self.rho) * delta * delta
        return p - self.lr * delta


class RefAdamax:
    def __init__(self, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.lr, self.betas, self.eps, self.wd, self.m, self.u = lr, betas, eps, weight_decay, {}, {}

    def update(self, k, p, g, t):
        b1, b2 = self.betas
        g = g + self.wd * p
        self.m[k] = b1 * self.m.get(k, np.zeros_like(p)) + (1 - b1) * g
        self.u[k] = np.maximum(b2 * self.u.get(k, np.zeros_like(p)), np.abs(g) + self.eps)
        return p - self.lr / (1 - b1 ** t) * self.m[k] / self.u[k]


class RefNAdam:
    def __init__(self, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False):
        self.lr, self.betas, self.eps, self.wd = lr, betas, eps, weight_decay
        self.md, self.decoupled = momentum_decay, decoupled_weight_decay
        self.m, self.v, self.mu_product = {}, {}, {}

    def update(self, k, p, g, t):
        b1, b2 = self.betas
        if self.decoupled:
            p = p * (1 - self.lr * self.wd)
        else:
            g = g + self.wd * p
        mu = b1 * (1 - 0.5 * 0.96 ** (t * self.md))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * self.md))
        prod = self.mu_product.get(k, 1.0) * mu
        self.mu_product[k] = prod
        self.m[k] = b1 * self.m.get(k, np.zeros_like(p)) + (1 - b1) * g
        self.v[k] = b2 * self.v.get(k, np.zeros_like(p)) + (1 - b2) * g * g
        denom = np.sqrt(self.v[k] / (1 - b2 ** t)) + self.eps
        p = p - self.lr * (1 - mu) / (1 - prod) * g / denom
        return p - self.lr * mu_next / (1 - prod * mu_next) * self.m[k] / denom


NUMPY_REFERENCES = {
    "adagrad": (dict(cls=fg.optim.Adagrad, lr=0.1, lr_decay=0.01, weight_decay=0.01,
                     initial_accumulator_value=0.1), RefAdagrad),
    "adadelta": (dict(cls=fg.optim.Adadelta, weight_decay=0.01), RefAdadelta),
    "adamax": (dict(cls=fg.optim.Adamax, weight_decay=0.01), RefAdamax),
    "nadam": (dict(cls=fg.optim.NAdam, lr=0.01, weight_decay=0.01), RefNAdam),
    "nadam_decoupled": (dict(cls=fg.optim.NAdam, lr=0.01, weight_decay=0.01,
                             decoupled_weight_decay=True), RefNAdam),
}


@pytest.mark.parametrize("name", sorted(NUMPY_REFERENCES))
def test_matches_the_numpy_reference_step_for_step(name):
    kwargs, ref_cls = NUMPY_REFERENCES[name]
    kwargs = dict(kwargs)
    cls = kwargs.pop("cls")
    p, ref_p = params64(), params64()
    step, ref = fg.train_step(loss_fn, cls(**kwargs)), ref_cls(**kwargs)
    grad = fg.grad(loss_fn)
    for t, (x, y) in enumerate(batches(), start=1):
        g = grad(ref_p, x, y)
        ref_p = {k: ref.update(k, ref_p[k], g[k], t) for k in ref_p}
        step(p, x, y)
        for k in p:
            np.testing.assert_allclose(p[k], ref_p[k], rtol=1e-9, atol=1e-10, err_msg=k)


class RefLion:
    """Lion as its paper writes it (Chen et al. 2023, Program 1), in NumPy."""

    def __init__(self, lr, betas=(0.9, 0.99), weight_decay=0.0):
        self.lr, self.betas, self.wd, self.m = lr, betas, weight_decay, {}

    def update(self, k, p, g):
        b1, b2 = self.betas
        m = self.m.get(k, np.zeros_like(p))
        c = b1 * m + (1 - b1) * g
        self.m[k] = b2 * m + (1 - b2) * g
        return p - self.lr * (np.sign(c) + self.wd * p)


def test_lion_matches_the_paper():
    p, ref_p = params64(), params64()
    step = fg.train_step(loss_fn, fg.optim.Lion(1e-3, weight_decay=0.1))
    grad = fg.grad(loss_fn)
    ref = RefLion(1e-3, weight_decay=0.1)
    for x, y in batches():
        g = grad(ref_p, x, y)
        ref_p = {k: ref.update(k, ref_p[k], g[k]) for k in ref_p}
        step(p, x, y)
        for k in p:
            np.testing.assert_allclose(p[k], ref_p[k], rtol=1e-12, atol=1e-14, err_msg=k)


@needs_torch
def test_per_parameter_weight_decay_like_nanogpt():
    """nanoGPT decays only parameters of two or more dimensions: a function of (path, array)
    gives each leaf its own value, as torch's parameter groups do."""
    decay = lambda path, x: 0.1 if x.ndim >= 2 else 0.0  # noqa: E731
    p, tp = run_both(fg.optim.AdamW(0.01, weight_decay=decay),
                     lambda groups: torch.optim.AdamW(groups, 0.01),
                     groups=[(("w1", "w2"), {"weight_decay": 0.1}),
                             (("b1", "b2"), {"weight_decay": 0.0})])
    for k in p:
        np.testing.assert_allclose(p[k], tp[k], rtol=1e-9, atol=1e-10, err_msg=k)


def test_per_parameter_learning_rates_and_schedules():
    """A per-parameter learning rate may be a number or a schedule; the graph takes one
    learning rate per parameter, and a new step compiles nothing."""
    def lr(path, x):
        return 0.05 if "b" in path else fg.optim.schedules.linear_warmup(0.1, 3)

    p, ref_p = params64(), params64()  # (torch has no per-group schedule: NumPy reference)
    step = fg.train_step(loss_fn, fg.optim.SGD(lr))
    grad = fg.grad(loss_fn)
    for t, (x, y) in enumerate(batches(), start=1):
        g = grad(ref_p, x, y)
        rates = {k: 0.05 if "b" in k else 0.1 * min(1.0, t / 3) for k in ref_p}
        ref_p = {k: ref_p[k] - rates[k] * g[k] for k in ref_p}
        step(p, x, y)
        for k in p:
            np.testing.assert_allclose(p[k], ref_p[k], rtol=1e-12, atol=1e-14, err_msg=k)
    assert len(step._programs) == 1
    assert re.search(r"f64\[4\] +lr +hyper", step.ir())  # one learning rate per parameter


@needs_torch
def test_per_parameter_momentum_zero_keeps_that_state_unchanged():
    p, tp = run_both(fg.optim.SGD(0.1, momentum=lambda path, x: 0.9 if x.ndim == 2 else 0.0),
                     lambda groups: torch.optim.SGD(groups, 0.1),
                     groups=[(("w1", "w2"), {"momentum": 0.9}), (("b1", "b2"), {"momentum": 0})])
    for k in p:
        np.testing.assert_allclose(p[k], tp[k], rtol=1e-9, atol=1e-10, err_msg=k)


class SignMomentum(fg.optim.Optimizer):
    """The README's example of a user-written optimizer: fusegrad ops on traced arrays."""

    slots = ("momentum",)

    def __init__(self, lr=1e-3, beta=0.9, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        self.beta = beta

    def update(self, p, g, state, hp):
        m = self.beta * state["momentum"] + (1 - self.beta) * g
        return p * (1 - hp.lr * self.weight_decay) - hp.lr * fg.sign(m), {"momentum": m}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_optimizer_written_with_fusegrad_ops(dtype):
    p = {k: v.astype(dtype) for k, v in params64().items()}
    ref_p = {k: v.copy() for k, v in p.items()}
    opt = SignMomentum(0.01, beta=0.8, weight_decay=lambda path, x: 0.5 if x.ndim == 2 else 0.0)
    step = fg.train_step(loss_fn, opt)
    grad = fg.grad(loss_fn)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    for x, y in batches():
        x = x.astype(dtype)
        g = grad(ref_p, x, y)
        for k in ref_p:
            wd = 0.5 if ref_p[k].ndim == 2 else 0.0
            m[k] = (0.8 * m[k] + 0.2 * g[k]).astype(dtype)
            ref_p[k] = (ref_p[k] * (1 - 0.01 * wd) - 0.01 * np.sign(m[k])).astype(dtype)
        step(p, x, y)
        for k in p:
            np.testing.assert_allclose(p[k], ref_p[k], rtol=1e-5 if dtype == np.float32 else 1e-12,
                                       atol=1e-6, err_msg=k)
    assert p["w1"].dtype == dtype
    assert "sign" in step.ir("update")
    assert "test_optim_torch.py" in step.ir("update")  # the user's lines name the update's nodes


def test_a_user_update_of_the_wrong_dtype_is_a_clear_error():
    class Upcast(fg.optim.Optimizer):
        def update(self, p, g, state, hp):
            return p - hp.lr64 * g, {}

    p = {k: v.astype(np.float32) for k, v in params64().items()}
    step = fg.train_step(loss_fn, Upcast(0.1))
    x, y = batches(1)[0]
    with pytest.raises(TypeError, match="Upcast.update returned the new parameter as f64"):
        step(p, x.astype(np.float32), y)


def test_bad_per_parameter_values_name_the_parameter():
    step = fg.train_step(loss_fn, fg.optim.Adam(betas=lambda path, x: (0.9, 1.5)))
    x, y = batches(1)[0]
    with pytest.raises(ValueError, match=r"Adam for params\['w1'\]: betas must be in \[0, 1\)"):
        step(params64(), x, y)
    with pytest.raises(ValueError, match="clip_norm scales all gradients"):
        fg.optim.SGD(0.1, clip_norm=lambda path, x: 1.0)
    with pytest.raises(ValueError, match="lr must be positive"):
        fg.optim.Adagrad(lr=0)
