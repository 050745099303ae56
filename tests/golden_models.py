"""Models and graphs shared by test_fusion.py and test_memory_plan.py (and their golden dumps).

The model functions live here so the `file:line` comments in the golden dumps stay put when
the tests change. Everything is traced with target="interpret" (no Numba): a case is called
once so its graph exists, then compiled with compile_graph through its Runner, exactly as the
CPU backend would compile it. Cases are built once per test session (see `case`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

import fusegrad as fg
from fusegrad.compiler.pipeline import Program

F32 = np.float32


# ---- models ------------------------------------------------------------------------------------


def mlp_loss(p, x, y):
    h = fg.relu(x @ p["w1"] + p["b1"])
    return fg.cross_entropy(h @ p["w2"] + p["b2"], y)


def ln_mlp_loss(p, x, y):
    h = x
    for i in range(len(p["hidden"])):
        layer = p["hidden"][i]
        h = fg.layer_norm(h @ layer["w"] + layer["b"], layer["g"], layer["beta"])
        h = fg.gelu(h)
    return fg.cross_entropy(h @ p["out"]["w"] + p["out"]["b"], y)


def softmax_ce(logits, y):
    return fg.cross_entropy(logits, y)


def cnn_loss(p, x, y):
    h = fg.relu(fg.conv2d(x, p["k"], padding=1, bias=p["kb"]))
    h = fg.max_pool2d(h, 2)
    h = h.reshape(h.shape[0], -1)
    return fg.cross_entropy(h @ p["w"] + p["b"], y)


def attention_loss(p, x):
    q, k, v = x @ p["wq"], x @ p["wk"], x @ p["wv"]
    scores = q @ fg.swapaxes(k, -1, -2) * (1.0 / np.sqrt(q.shape[-1]))
    a = fg.softmax(scores, axis=-1) @ v
    out = a @ p["wo"] + x
    return fg.mean(out * out)


def dropout_loss(p, x, y, key=None):
    h = fg.relu(x @ p["w1"] + p["b1"])
    h = fg.dropout(h, 0.25, key=key)
    return fg.cross_entropy(h @ p["w2"] + p["b2"], y)


def odd_broadcast(a, b):  # (3,1,4) + (5,1) -> (3,5,4)
    s = a + b
    return fg.sum(fg.tanh(s) * s)


def noncontiguous_sum(x, w):  # sums over axes (0, 2) of a (4,5,6) value
    s = fg.sum(x * x, axis=(0, 2))
    t = fg.sum(fg.tanh(x), axis=(0, 2), keepdims=True)
    return fg.sum(s * w) + fg.sum(t * x)


def max_reductions(x):
    rows = fg.max(x, axis=1)  # (6,)
    cols = fg.max(x * x, axis=0, keepdims=True)  # (1,7)
    return fg.sum(rows * rows) + fg.sum(x / (1.0 + cols)) + fg.max(x)


def negative_slices(x, w):
    a = x[::-1, ::-2]  # (6,4) of (6,8)
    b = x[4:0:-2, 1:]  # (2,7)
    return fg.sum(a * w) + fg.sum(fg.tanh(b) ** 2)


def pad_concat(x, y):
    padded = fg.pad(x, ((1, 2), (0, 1)))  # (4,3) -> (7,4)
    joined = fg.concatenate([x, y, x * y], axis=1)  # (4,3)+(4,3)+(4,3)
    return fg.sum(padded * padded) + fg.sum(fg.tanh(joined) * joined)


def embed_loss(p, ids, y):
    e = fg.embedding(ids, p["table"])  # (6,5) ids -> (6,5,4)
    h = fg.tanh(fg.mean(e, axis=1) @ p["w"])
    picked = fg.take(p["table"], y, axis=0)  # (6,4)
    return fg.sum(h * h) + fg.mean(picked * picked)


def predict(p, x):
    h = fg.gelu(fg.layer_norm(x @ p["w1"] + p["b1"], p["g"], p["beta"]))
    return fg.softmax(h @ p["w2"] + p["b2"], axis=-1)


# ---- parameters --------------------------------------------------------------------------------


def _w(rng, *shape, dtype=F32):
    return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(dtype)


def mlp_params(rng, d_in=16, hidden=32, classes=10, dtype=F32):
    return {"w1": _w(rng, d_in, hidden, dtype=dtype), "b1": np.zeros(hidden, dtype),
            "w2": _w(rng, hidden, classes, dtype=dtype), "b2": np.zeros(classes, dtype)}


def ln_mlp_params(rng, sizes=(16, 32, 32, 32, 10), dtype=F32):
    hidden = [{"w": _w(rng, a, b, dtype=dtype), "b": np.zeros(b, dtype),
               "g": np.ones(b, dtype), "beta": np.zeros(b, dtype)}
              for a, b in zip(sizes[:-2], sizes[1:-1])]
    return {"hidden": hidden,
            "out": {"w": _w(rng, sizes[-2], sizes[-1], dtype=dtype),
                    "b": np.zeros(sizes[-1], dtype)}}


def cnn_params(rng, dtype=F32):
    return {"k": _w(rng, 3, 1, 3, 3, dtype=dtype), "kb": np.zeros(3, dtype),
            "w": _w(rng, 27, 10, dtype=dtype), "b": np.zeros(10, dtype)}


# ---- cases -------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    graph: object  # the traced graph (step / joint / forward)
    program: Program
    step: object  # the TrainStep or CompiledFunction
    is_step: bool  # a train step: outputs alias params/state, output 0 is the guarded loss

    @property
    def fused(self):
        return self.program.fused

    @property
    def plan(self):
        return self.program.plan

    def ir_fused(self) -> str:
        return self.step.ir("fused")


def _train(name, loss_fn, opt, params, *batch):
    step = fg.train_step(loss_fn, opt, target="interpret")
    step(params, *batch)
    return Case(name, step._last.graph, step._runner(step._last).program, step, True)


def _fn(name, compiled, *args):
    compiled(*args)
    traced = compiled._last
    return Case(name, traced.graph, compiled.runner(traced).program, compiled, False)


def _labels(rng, n, classes):
    return rng.integers(0, classes, n)


def _build(name) -> Case:
    rng = np.random.default_rng(0)
    if name == "mlp_sgd":
        return _train(name, mlp_loss, fg.optim.SGD(lr=0.1), mlp_params(rng),
                      rng.standard_normal((8, 16)).astype(F32), _labels(rng, 8, 10))
    if name == "ln_mlp_adam":  # 3 hidden LayerNorm+GELU layers: 16-32-32-32-10, batch 8
        return _train(name, ln_mlp_loss, fg.optim.Adam(lr=1e-3), ln_mlp_params(rng),
                      rng.standard_normal((8, 16)).astype(F32), _labels(rng, 8, 10))
    if name == "softmax_ce":
        return _fn(name, fg.grad(softmax_ce, target="interpret"),
                   rng.standard_normal((8, 10)).astype(F32), _labels(rng, 8, 10))
    if name == "cnn_sgd":
        return _train(name, cnn_loss, fg.optim.SGD(lr=0.05, momentum=0.9), cnn_params(rng),
                      rng.standard_normal((4, 1, 6, 6)).astype(F32), _labels(rng, 4, 10))
    if name == "attention_grad":
        p = {k: _w(rng, 8, 8) for k in ("wq", "wk", "wv", "wo")}
        return _fn(name, fg.grad(attention_loss, target="interpret"), p,
                   rng.standard_normal((2, 5, 8)).astype(F32))
    if name == "dropout_adam":
        return _train(name, dropout_loss, fg.optim.Adam(lr=1e-2), mlp_params(rng),
                      rng.standard_normal((8, 16)).astype(F32), _labels(rng, 8, 10))
    if name == "rmsprop_centered":
        return _train(name, mlp_loss, fg.optim.RMSProp(lr=1e-2, centered=True, momentum=0.9),
                      mlp_params(rng), rng.standard_normal((8, 16)).astype(F32),
                      _labels(rng, 8, 10))
    if name == "adamw_clip":
        return _train(name, mlp_loss, fg.optim.AdamW(lr=1e-2, weight_decay=0.1, clip_norm=0.5),
                      mlp_params(rng), rng.standard_normal((8, 16)).astype(F32),
                      _labels(rng, 8, 10))
    if name == "odd_broadcast":
        return _fn(name, fg.grad(odd_broadcast, argnums=(0, 1), target="interpret"),
                   rng.standard_normal((3, 1, 4)), rng.standard_normal((5, 1)))
    if name == "noncontiguous_sum":
        return _fn(name, fg.grad(noncontiguous_sum, argnums=(0, 1), target="interpret"),
                   rng.standard_normal((4, 5, 6)), rng.standard_normal(5))
    if name == "max_reductions":
        return _fn(name, fg.grad(max_reductions, target="interpret"),
                   rng.standard_normal((6, 7)))
    if name == "negative_slices":
        return _fn(name, fg.grad(negative_slices, argnums=(0, 1), target="interpret"),
                   rng.standard_normal((6, 8)), rng.standard_normal((6, 4)))
    if name == "pad_concat":
        return _fn(name, fg.grad(pad_concat, argnums=(0, 1), target="interpret"),
                   rng.standard_normal((4, 3)), rng.standard_normal((4, 3)))
    if name == "embedding_grad":
        p = {"table": _w(rng, 7, 4, dtype=np.float64), "w": _w(rng, 4, 3, dtype=np.float64)}
        return _fn(name, fg.grad(embed_loss, target="interpret"), p,
                   rng.integers(0, 7, (6, 5)), rng.integers(0, 7, 6))
    if name == "jit_forward":
        p = {"w1": _w(rng, 16, 32), "b1": np.zeros(32, F32), "g": np.ones(32, F32),
             "beta": np.zeros(32, F32), "w2": _w(rng, 32, 10), "b2": np.zeros(10, F32)}
        return _fn(name, fg.jit(predict, target="interpret"), p,
                   rng.standard_normal((8, 16)).astype(F32))
    raise KeyError(name)


CASES = ("mlp_sgd", "ln_mlp_adam", "softmax_ce", "cnn_sgd", "attention_grad", "dropout_adam",
         "rmsprop_centered", "adamw_clip", "odd_broadcast", "noncontiguous_sum",
         "max_reductions", "negative_slices", "pad_concat", "embedding_grad", "jit_forward")
STEPS = tuple(c for c in CASES if c in ("mlp_sgd", "ln_mlp_adam", "cnn_sgd", "dropout_adam",
                                        "rmsprop_centered", "adamw_clip"))
GOLDEN = ("mlp_sgd", "ln_mlp_adam", "softmax_ce", "cnn_sgd")


@functools.lru_cache(maxsize=None)
def case(name) -> Case:
    """The compiled case `name`, built once per session (both test files share it)."""
    return _build(name)


# ---- random inputs -----------------------------------------------------------------------------


def random_args(graph, seed=0, float64=False):
    """Random inputs for `graph` by role: normal floats (|x| for optimizer state, which holds
    second moments), small integers (valid labels/indices for every case here), step 3, lr 1e-2.
    With float64, float inputs are made float64 values that are exactly float32 numbers."""
    rng = np.random.default_rng(seed)
    args = []
    for v, role, name in zip(graph.inputs, graph.input_roles, graph.input_names):
        dtype = np.dtype(v.dtype)
        if dtype.kind == "f":
            if role == "hyper":  # lr
                x = np.full(v.shape, 1e-2)
            else:
                x = rng.standard_normal(v.shape)
                if role == "state":
                    x = np.abs(x)
        elif dtype.kind == "b":
            x = rng.random(v.shape) < 0.5
        elif role == "hyper":
            x = np.full(v.shape, 3) if name == "step" else np.full(v.shape, 12345)
        else:
            x = rng.integers(0, 3, v.shape)
        args.append(np.asarray(x, dtype=dtype))
    return args


def assert_planned_close(planned, want, names):
    """execute_plan's outputs against interpret(fused): the same kernels on the same inputs.
    Not bit for bit: NumPy reduces a strided operand (interpret passes views such as a
    transpose's result along) in another order than the contiguous copy execute_plan passes,
    so the last bit may differ; a buffer reused too early changes results grossly."""
    for name, p, w in zip(names, planned, want):
        assert p.dtype == w.dtype and p.shape == w.shape, name
        if p.dtype.kind == "f":
            tight = 1e-6 if p.dtype == np.float32 else 1e-12
            np.testing.assert_allclose(p, w, rtol=tight, atol=tight * 1e-1, err_msg=name)
        else:
            np.testing.assert_array_equal(p, w, err_msg=name)
