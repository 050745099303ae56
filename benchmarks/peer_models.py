"""The models of benchmarks/models.py in JAX and PyTorch, for compile-time comparisons.

    PEERS                      ("jax jit", "torch.compile")
    unavailable(peer)          why the peer cannot run here, or None
    build(peer, model_name)    a zero-argument callable: one full training step -> loss (float)
    details(peer)              versions, threads, torch.compile's graph breaks, for the report

Each port is written as a user of the library would write it, and starts from the fusegrad
model's own `params()` and `batch()` and its optimizer's hyper-parameters, so the losses agree:

  jax jit        a loss function, jax.value_and_grad, the optimizer update by hand (torch's
                 arithmetic, as fusegrad's optimizers), the whole step under jax.jit with the
                 parameters and optimizer state donated. Dense weights stay (in, out), x @ w.
  torch.compile  torch.nn.functional and torch.optim; the whole step function (zero_grad,
                 forward, backward, opt.step) under torch.compile, on THREADS threads as
                 benchmarks/torch_contenders.py. Dense weights are stored (out, in) for F.linear.

Conv weights are (O, C, kh, kw) everywhere. mnist-net's dropout uses fusegrad's own masks (drawn
by fusegrad's counter-based generator for the same step keys, before any timing) passed to the
step as inputs, so its losses are comparable too; the peers' steps thus multiply by a mask input
instead of drawing random numbers in the graph.

The workload names of benchmarks/workloads.py ("mlp-small", ...) build the existing contenders
(jax_contender.JaxJit, torch_contenders.TorchCompile), so benchmarks/compile.py can time them too.

Neither library is imported by importing this module: benchmarks/peer_compile.py points the
caches at fresh folders first.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import warnings

import numpy as np

from benchmarks.models import MODELS

PEERS = ("jax jit", "torch.compile")

jax = jnp = torch = F = None  # set by _import(peer)

TRANSFORMER_HEADS = 2  # transformer_lm's default, which MODELS uses (not visible in params)
# fusegrad names of dense weights (in, out); torch gets them transposed to (out, in)
DENSE_WEIGHTS = {"attn_w", "proj_w", "fc_w", "fc2_w", "head",  # transformer
                 "wx", "wh", "dec_w",                           # LSTM
                 "fc1", "fc2"}                                  # mnist-net (and resnet's fc_w)
MASK_STEPS = 8  # mnist-net: dropout masks drawn for the first steps, then reused in turn


def unavailable(peer):
    """Why `peer` cannot run here, or None."""
    if peer not in PEERS:
        return f"unknown peer {peer!r} (one of {', '.join(PEERS)})"
    if peer == "jax jit":
        return "jax not installed" if importlib.util.find_spec("jax") is None else None
    if importlib.util.find_spec("torch") is None:
        return "torch not installed"
    if not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")):
        return "torch.compile (TorchInductor on CPU) needs a C++ compiler; none found"
    return None


def _import(peer):
    global jax, jnp, torch, F
    if peer == "jax jit" and jax is None:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no probing for accelerators
        import jax as jax_
        import jax.numpy as jnp_

        jax, jnp = jax_, jnp_
        # donating a parameter XLA cannot reuse warns at every compile
        warnings.filterwarnings("ignore", message=".*donated buffers.*")
    if peer == "torch.compile" and torch is None:
        import torch as torch_
        import torch.nn.functional as F_

        from benchmarks.torch_contenders import THREADS

        torch, F = torch_, F_
        torch.set_num_threads(THREADS)


def build(peer, model_name):
    """A zero-argument callable running one training step of `model_name` (compiled on its first
    call), returning the loss as a Python float once the step has finished."""
    why = unavailable(peer)
    if why:
        raise RuntimeError(why)
    _import(peer)
    from benchmarks.workloads import WORKLOADS

    if model_name in WORKLOADS:
        return _existing_contender(peer, WORKLOADS[model_name])
    if model_name not in MODELS:
        raise KeyError(f"unknown model {model_name!r} (one of "
                       f"{', '.join([*MODELS, *WORKLOADS])})")
    model = MODELS[model_name]()
    batches = _step_batches(model_name, model)
    if peer == "jax jit":
        return _jax_step(JAX_LOSSES[model_name], model, batches)
    return _torch_step(TORCH_LOSSES[model_name], model, batches)


def details(peer) -> dict:
    """What the report should know about the peer's run (call after the steps)."""
    if peer == "jax jit" and jax is not None:
        return {"jax_version": jax.__version__, "jax_platform": jax.devices()[0].platform,
                "jax_persistent_cache": jax.config.jax_compilation_cache_dir}
    if peer == "torch.compile" and torch is not None:
        out = {"torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
               # unset: OpenMP threads spin while waiting, which on a loaded machine can slow
               # the compiled step many times over (PASSIVE gave 19 vs 490 ms for mnist-net)
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
        try:  # private API: only for the note
            counters = torch._dynamo.utils.counters
            out["graph_breaks"] = sum(counters["graph_break"].values())
            out["graph_break_reasons"] = sorted({r.splitlines()[0][:120]
                                                 for r in counters["graph_break"]})
            # 3 for a whole step (before backward, backward's graph, opt.step); one more per
            # recompile, e.g. SGD with momentum's step once its buffers exist (second call)
            out["unique_graphs"] = counters["stats"]["unique_graphs"]
            out["inductor_compile_threads"] = torch._inductor.config.compile_threads
        except Exception:  # noqa: BLE001
            pass
        return out
    return {}


# ---- shared -------------------------------------------------------------------------------------

def _resnet_stride(stage, block):
    return 2 if stage > 0 and block == 0 else 1  # as models.resnet_bn


def _mnist_dropout_masks(model, t, seed=0):
    """fusegrad's dropout masks of mnist-net at step t (keep / (1 - p), else 0): its train_step
    (seed 0) hands the loss key step_key(seed, t), and the loss draws with (key, 0) and (key, 1)."""
    import fusegrad as fg
    from fusegrad.train import step_key

    x, _ = model.batch()
    p = model.params()
    pooled = (x.shape[0], p["c2"].shape[0], (x.shape[2] - 4) // 2, (x.shape[3] - 4) // 2)
    hidden = (x.shape[0], p["fc1"].shape[1])
    key = step_key(seed, t)
    return (np.asarray(fg.dropout(np.ones(pooled, np.float32), 0.25, key=(key, 0))),
            np.asarray(fg.dropout(np.ones(hidden, np.float32), 0.5, key=(key, 1))))


def _step_batches(name, model):
    """NumPy batch of each step, taken in turn: the model's one batch, plus for mnist-net the
    dropout masks of steps 1..MASK_STEPS."""
    batch = model.batch()
    if name != "mnist-net":
        return [batch]
    return [batch + _mnist_dropout_masks(model, t) for t in range(1, MASK_STEPS + 1)]


def _tree_map(f, tree, key=None):
    """f(name, leaf) over the nested dicts and lists of a params tree (name: the dict key)."""
    if isinstance(tree, dict):
        return {k: _tree_map(f, v, k) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_tree_map(f, v, key) for v in tree)
    return f(key, tree)


def _leaves(tree):
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _leaves(v)]
    if isinstance(tree, (list, tuple)):
        return [x for v in tree for x in _leaves(v)]
    return [tree]


def _optimizer_config(model):
    """(kind, hyper-parameters) of the model's fusegrad optimizer; what the ports implement."""
    opt = model.optimizer()
    kind = type(opt).__name__
    if getattr(opt, "clip_norm", None) or callable(opt.lr):
        raise NotImplementedError(f"{opt}: clip_norm / lr schedules not ported")
    if kind == "SGD":
        if opt.dampening or opt.nesterov or opt.weight_decay:
            raise NotImplementedError(f"{opt}: only plain SGD with momentum is ported")
        return kind, {"lr": opt.lr, "momentum": opt.momentum}
    if kind in ("Adam", "AdamW"):
        if kind == "Adam" and opt.weight_decay:
            raise NotImplementedError(f"{opt}: Adam's L2 weight decay is not ported")
        return kind, {"lr": opt.lr, "betas": opt.betas, "eps": opt.eps,
                      "weight_decay": opt.weight_decay}
    raise NotImplementedError(f"optimizer {kind} is not ported")


def _existing_contender(peer, workload):
    if peer == "jax jit":
        from benchmarks.jax_contender import JaxJit as cls
    else:
        from benchmarks.torch_contenders import TorchCompile as cls
    contender = cls(workload)
    contender.setup(workload.init_params(), *workload.batch_data())

    def run():
        handle = contender.step()
        contender.sync(handle)
        return contender.loss_value(handle)

    return run


# ---- JAX ----------------------------------------------------------------------------------------

def _jax_layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * g + b


def _jax_cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=1).mean()


def _jax_conv(x, w, stride=1, padding=0):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2,
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"))


def jax_transformer(p, idx, targets):
    B, T = idx.shape
    d = p["wte"].shape[1]
    hd = d // TRANSFORMER_HEADS
    causal = jnp.tril(jnp.ones((T, T), bool))
    x = p["wte"][idx] + p["wpe"][:T]
    for b in p["blocks"]:
        qkv = _jax_layer_norm(x, b["ln1_g"], b["ln1_b"]) @ b["attn_w"] + b["attn_b"]
        q, k, v = (t.reshape(B, T, TRANSFORMER_HEADS, hd).transpose(0, 2, 1, 3)
                   for t in jnp.split(qkv, 3, axis=-1))
        att = jnp.where(causal, (q @ k.swapaxes(-1, -2)) / np.sqrt(hd), -jnp.inf)
        y = (jax.nn.softmax(att, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(B, T, d)
        x = x + y @ b["proj_w"] + b["proj_b"]
        h = jax.nn.gelu(_jax_layer_norm(x, b["ln2_g"], b["ln2_b"]) @ b["fc_w"] + b["fc_b"],
                        approximate=False)
        x = x + h @ b["fc2_w"] + b["fc2_b"]
    logits = _jax_layer_norm(x, p["lnf_g"], p["lnf_b"]) @ p["head"]
    return _jax_cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1))


def jax_lstm(p, ids, targets):
    """The cell unrolled in a Python loop, as models.lstm_lm (jax.lax.scan would trace it once)."""
    B, T = ids.shape
    H = p["wh"].shape[0]
    x = p["emb"][ids]
    h = c = jnp.zeros((B, H), jnp.float32)
    outs = []
    for t in range(T):
        gates = x[:, t] @ p["wx"] + h @ p["wh"] + p["b"]
        i, f, g, o = jnp.split(gates, 4, axis=1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        outs.append(h)
    logits = jnp.stack(outs, axis=1).reshape(B * T, H) @ p["dec_w"] + p["dec_b"]
    return _jax_cross_entropy(logits, targets.reshape(-1))


def jax_lstm_scan(p, ids, targets):
    """The same cell under jax.lax.scan, traced once, as models.lstm_lm(scan=True)."""
    B, T = ids.shape
    H = p["wh"].shape[0]
    x = jnp.swapaxes(p["emb"][ids], 0, 1)

    def cell(state, x_t):
        h, c = state
        i, f, g, o = jnp.split(x_t @ p["wx"] + h @ p["wh"] + p["b"], 4, axis=1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((B, H), jnp.float32)
    _, hs = jax.lax.scan(cell, (zeros, zeros), x)
    logits = jnp.swapaxes(hs, 0, 1).reshape(B * T, H) @ p["dec_w"] + p["dec_b"]
    return _jax_cross_entropy(logits, targets.reshape(-1))


def _jax_batch_norm(x, g, b, eps=1e-5):
    mean = x.mean((0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean((0, 2, 3), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * g[:, None, None] + b[:, None, None]


def jax_resnet(p, x, y):
    h = jax.nn.relu(_jax_batch_norm(_jax_conv(x, p["stem"], 1, 1), p["stem_g"], p["stem_b"]))
    for s, stage in enumerate(p["stages"]):
        for k, blk in enumerate(stage):
            stride = _resnet_stride(s, k)
            out = jax.nn.relu(_jax_batch_norm(_jax_conv(h, blk["c1"], stride, 1),
                                              blk["g1"], blk["b1"]))
            out = _jax_batch_norm(_jax_conv(out, blk["c2"], 1, 1), blk["g2"], blk["b2"])
            short = _jax_conv(h, blk["down"], stride, 0) if "down" in blk else h
            h = jax.nn.relu(out + short)
    return _jax_cross_entropy(h.mean((2, 3)) @ p["fc_w"] + p["fc_b"], y)


def jax_mnist(p, x, y, mask1, mask2):
    """Dropout as a product with fusegrad's masks (see the module docstring)."""
    h = jax.nn.relu(_jax_conv(x, p["c1"]) + p["c1b"][:, None, None])
    h = jax.nn.relu(_jax_conv(h, p["c2"]) + p["c2b"][:, None, None])
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    h = (h * mask1).reshape(h.shape[0], -1)
    h = jax.nn.relu(h @ p["fc1"] + p["fc1b"]) * mask2
    return _jax_cross_entropy(h @ p["fc2"] + p["fc2b"], y)


JAX_LOSSES = {"transformer-2L": jax_transformer, "transformer-8L": jax_transformer,
              "lstm-16": jax_lstm, "lstm-64": jax_lstm, "lstm-scan-16": jax_lstm_scan,
              "lstm-scan-64": jax_lstm_scan, "resnet-bn": jax_resnet,
              "mnist-net": jax_mnist}


def _jax_optimizer(model):
    """(init(params) -> state, update(params, grads, state) -> (params, state)): torch.optim's
    arithmetic by hand, as fusegrad's optimizers."""
    kind, hp = _optimizer_config(model)
    tmap = jax.tree.map
    lr = hp["lr"]
    if kind == "SGD":
        mu = hp["momentum"]
        if not mu:
            return (lambda p: (),
                    lambda p, g, s: (tmap(lambda a, b: a - lr * b, p, g), ()))

        def sgd(p, g, buf):  # a zero buffer makes torch's first step (buf = g) for free
            buf = tmap(lambda m, b: mu * m + b, buf, g)
            return tmap(lambda a, m: a - lr * m, p, buf), buf

        return (lambda p: tmap(jnp.zeros_like, p)), sgd
    b1, b2 = hp["betas"]
    eps, wd = hp["eps"], hp["weight_decay"]

    def adam(p, g, state):
        m, v, t = state
        t = t + 1
        tf = t.astype(jnp.float32)
        step_size = lr / (1 - b1 ** tf)
        bias2_sqrt = jnp.sqrt(1 - b2 ** tf)
        if kind == "AdamW" and wd:  # decoupled decay before the Adam step
            p = tmap(lambda a: a * (1 - lr * wd), p)
        m = tmap(lambda a, b: b1 * a + (1 - b1) * b, m, g)
        v = tmap(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
        p = tmap(lambda a, mm, vv: a - step_size * mm / (jnp.sqrt(vv) / bias2_sqrt + eps),
                 p, m, v)
        return p, (m, v, t)

    def init(p):
        return tmap(jnp.zeros_like, p), tmap(jnp.zeros_like, p), jnp.zeros((), jnp.int32)

    return init, adam


def _jax_array(a):
    a = np.asarray(a)
    return jnp.asarray(a.astype(np.int32) if a.dtype.kind in "iu" else a.copy())


def _jax_step(loss_fn, model, batches):
    init, update = _jax_optimizer(model)

    def train_step(params, state, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        params, state = update(params, grads, state)
        return params, state, loss

    step = jax.jit(train_step, donate_argnums=(0, 1))
    params = jax.tree.map(_jax_array, model.params())
    state = init(params)
    batches = [tuple(_jax_array(a) for a in b) for b in batches]
    t = 0

    def run():
        nonlocal params, state, t
        params, state, loss = step(params, state, *batches[t % len(batches)])
        t += 1
        jax.block_until_ready((params, state))
        return float(loss)

    return run


# ---- PyTorch ------------------------------------------------------------------------------------

def torch_transformer(p, idx, targets):
    """nanoGPT's forward: F.scaled_dot_product_attention(is_causal=True) for the attention."""
    B, T = idx.shape
    d = p["wte"].shape[1]
    x = F.embedding(idx, p["wte"]) + p["wpe"][:T]
    for b in p["blocks"]:
        qkv = F.linear(F.layer_norm(x, (d,), b["ln1_g"], b["ln1_b"]), b["attn_w"], b["attn_b"])
        q, k, v = (t.view(B, T, TRANSFORMER_HEADS, d // TRANSFORMER_HEADS).transpose(1, 2)
                   for t in qkv.split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, d)
        x = x + F.linear(y, b["proj_w"], b["proj_b"])
        h = F.gelu(F.linear(F.layer_norm(x, (d,), b["ln2_g"], b["ln2_b"]), b["fc_w"], b["fc_b"]))
        x = x + F.linear(h, b["fc2_w"], b["fc2_b"])
    logits = F.linear(F.layer_norm(x, (d,), p["lnf_g"], p["lnf_b"]), p["head"])
    return F.cross_entropy(logits.view(B * T, -1), targets.view(-1))


def torch_lstm(p, ids, targets):
    """The cell written out (gates i, f, g, o as nn.LSTMCell), unrolled in a Python loop."""
    B, T = ids.shape
    H = p["wh"].shape[1]
    x = F.embedding(ids, p["emb"])
    h = c = x.new_zeros(B, H)
    outs = []
    for t in range(T):
        gates = F.linear(x[:, t], p["wx"], p["b"]) + F.linear(h, p["wh"])
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    logits = F.linear(torch.stack(outs, dim=1).view(B * T, H), p["dec_w"], p["dec_b"])
    return F.cross_entropy(logits, targets.reshape(-1))


def _torch_batch_norm(x, g, b):
    return F.batch_norm(x, None, None, g, b, training=True, eps=1e-5)  # batch statistics


def torch_resnet(p, x, y):
    h = F.relu(_torch_batch_norm(F.conv2d(x, p["stem"], padding=1), p["stem_g"], p["stem_b"]))
    for s, stage in enumerate(p["stages"]):
        for k, blk in enumerate(stage):
            stride = _resnet_stride(s, k)
            out = F.relu(_torch_batch_norm(F.conv2d(h, blk["c1"], stride=stride, padding=1),
                                           blk["g1"], blk["b1"]))
            out = _torch_batch_norm(F.conv2d(out, blk["c2"], padding=1), blk["g2"], blk["b2"])
            short = F.conv2d(h, blk["down"], stride=stride) if "down" in blk else h
            h = F.relu(out + short)
    return F.cross_entropy(F.linear(h.mean((2, 3)), p["fc_w"], p["fc_b"]), y)


def torch_mnist(p, x, y, mask1, mask2):
    """pytorch/examples' Net.forward; F.dropout replaced by fusegrad's masks (module docstring)."""
    h = F.relu(F.conv2d(x, p["c1"], p["c1b"]))
    h = F.relu(F.conv2d(h, p["c2"], p["c2b"]))
    h = torch.flatten(F.max_pool2d(h, 2) * mask1, 1)
    h = F.relu(F.linear(h, p["fc1"], p["fc1b"])) * mask2
    return F.cross_entropy(F.linear(h, p["fc2"], p["fc2b"]), y)


TORCH_LOSSES = {"transformer-2L": torch_transformer, "transformer-8L": torch_transformer,
                "lstm-16": torch_lstm, "lstm-64": torch_lstm, "lstm-scan-16": torch_lstm,
                "lstm-scan-64": torch_lstm, "resnet-bn": torch_resnet,
                "mnist-net": torch_mnist}


def _torch_param(name, a):
    a = a.T if name in DENSE_WEIGHTS else a  # fusegrad (in, out) -> F.linear's (out, in)
    return torch.from_numpy(np.ascontiguousarray(a).copy()).requires_grad_(True)


def _torch_optimizer(model, params):
    kind, hp = _optimizer_config(model)
    if kind == "SGD":
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"])
    cls = torch.optim.AdamW if kind == "AdamW" else torch.optim.Adam
    return cls(params, lr=hp["lr"], betas=hp["betas"], eps=hp["eps"],
               weight_decay=hp["weight_decay"])


def _torch_step(loss_fn, model, batches):
    params = _tree_map(_torch_param, model.params())
    opt = _torch_optimizer(model, _leaves(params))

    def train_step(*batch):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(params, *batch)
        loss.backward()
        opt.step()
        return loss.detach()

    torch._dynamo.reset()  # nothing compiled earlier in this process is reused
    torch._dynamo.utils.counters.clear()
    step = torch.compile(train_step)
    batches = [tuple(torch.from_numpy(np.asarray(a).copy()) for a in b) for b in batches]
    t = 0

    def run():
        nonlocal t
        loss = step(*batches[t % len(batches)])
        t += 1
        return float(loss.item())  # CPU: synchronous

    return run
