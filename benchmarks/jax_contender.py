"""JAX: the whole step (value_and_grad + hand-written SGD/Adam) under jax.jit, with the
parameters and optimizer state donated, so XLA may update them in place."""
from __future__ import annotations

import os
import warnings

import numpy as np

from benchmarks.contenders import Contender, Unavailable
from benchmarks.workloads import ADAM_BETAS, ADAM_EPS, LN_EPS

os.environ.setdefault("JAX_PLATFORMS", "cpu")   # no probing for accelerators
try:
    import jax
    import jax.numpy as jnp
except ImportError:  # pragma: no cover - depends on the machine
    jax = None


def lstm_logits(w, p, x):
    """x: tokens (steps, batch) -> logits (steps * batch, vocab); the recurrence is one
    jax.lax.scan, the input projection of all steps one product before it."""
    T, B = x.shape
    H = w.lstm["hidden"]
    xw = p["emb"][x] @ p["w_ih"] + (p["b_ih"] + p["b_hh"])     # (T, B, 4H)

    def cell(state, xw_t):
        h, c = state
        i, f, g, o = jnp.split(xw_t + h @ p["w_hh"], 4, axis=1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((B, H), jnp.float32)
    _, hs = jax.lax.scan(cell, (zeros, zeros), xw)
    return hs.reshape(T * B, H) @ p["dec_w"] + p["dec_b"]


def model_loss(w, p, x, y):
    if w.kind == "lstm":
        h = lstm_logits(w, p, x)
    elif w.kind in ("mlp", "ln_mlp"):
        n_dense = len(w.sizes) - 1
        h = x
        for i in range(n_dense):
            h = h @ p[f"w{i}"] + p[f"b{i}"]
            if i < n_dense - 1:
                if w.kind == "mlp":
                    h = jax.nn.relu(h)
                else:
                    mu = h.mean(-1, keepdims=True)
                    c = h - mu
                    var = (c * c).mean(-1, keepdims=True)
                    h = c * jax.lax.rsqrt(var + LN_EPS) * p[f"g{i}"] + p[f"beta{i}"]
                    h = jax.nn.gelu(h, approximate=True)
    else:
        c = w.cnn
        h = x
        pad = c["padding"]
        q = c["pool"]
        for i in range(len(c["channels"])):
            h = jax.lax.conv_general_dilated(h, p[f"conv{i}"], (1, 1), ((pad, pad), (pad, pad)),
                                             dimension_numbers=("NCHW", "OIHW", "NCHW"))
            h = jax.nn.relu(h + p[f"convb{i}"][None, :, None, None])
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, q, q), (1, 1, q, q),
                                      "VALID")
        h = h.reshape(h.shape[0], -1) @ p["w"] + p["b"]
    logp = jax.nn.log_softmax(h, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


class JaxJit(Contender):
    name = "jax jit"

    def __init__(self, workload):
        if jax is None:
            raise Unavailable("not installed")
        super().__init__(workload)
        # "Some donated buffers were not usable" would repeat for every compile
        warnings.filterwarnings("ignore", message=".*donated buffers.*")

    def setup(self, params, x, y):
        w = self.workload
        self.params = {k: jnp.asarray(v.copy()) for k, v in params.items()}
        if w.kind == "lstm":  # time-major tokens, flattened targets
            x, y = x.T.astype(np.int32), y.T.reshape(-1)
        self.x, self.y = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
        grad_fn = jax.value_and_grad(lambda p, xb, yb: model_loss(w, p, xb, yb))
        if w.optimizer == "sgd":
            lr = np.float32(w.lr)

            def sgd_step(p, xb, yb):
                loss, g = grad_fn(p, xb, yb)
                return jax.tree.map(lambda a, b: a - lr * b, p, g), loss

            self.fn = jax.jit(sgd_step, donate_argnums=(0,))
            self.state = None
        else:
            b1, b2 = ADAM_BETAS

            def adam_step(p, state, xb, yb):
                m, v, t = state
                loss, g = grad_fn(p, xb, yb)
                t = t + 1
                tf = t.astype(jnp.float32)
                step_size = w.lr / (1 - b1 ** tf)
                bias2_sqrt = jnp.sqrt(1 - b2 ** tf)
                m = jax.tree.map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
                v = jax.tree.map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
                p = jax.tree.map(
                    lambda a, mm, vv: a - step_size * mm / (jnp.sqrt(vv) / bias2_sqrt + ADAM_EPS),
                    p, m, v)
                return p, (m, v, t), loss

            self.fn = jax.jit(adam_step, donate_argnums=(0, 1))
            zeros = lambda: {k: jnp.zeros_like(a) for k, a in self.params.items()}  # noqa: E731
            self.state = (zeros(), zeros(), jnp.zeros((), jnp.int32))

    def step(self):
        if self.state is None:
            self.params, loss = self.fn(self.params, self.x, self.y)
        else:
            self.params, self.state, loss = self.fn(self.params, self.state, self.x, self.y)
        return loss

    def sync(self, handle) -> None:
        handle.block_until_ready()

    def loss_value(self, handle) -> float:
        return float(handle)

    def details(self) -> str:
        return f"jax {jax.__version__}, {jax.devices()[0].platform}, donated params/state"
