"""Models and inputs that both backend suites run: test_cpu_backend.py (target="cpu") and
cuda_cases.py (target="cuda"). One definition, so the two check the same programs (and the CUDA
cases' CPU runs find these structures' kernels in the disk cache). Shapes are tiny.

Kernels' comments and drivers' lines name this file's lines, and the tests look for them there.
"""
from __future__ import annotations

import math

import numpy as np

import fusegrad as fg
from fusegrad.compiler import lax

# ---- every kernel kind -------------------------------------------------------------------------


def elementwise_zoo(a, b, row, col, s, i, j):
    """One elementwise kernel's worth of ops: ROW / COL / SCALAR broadcasts, NaN-propagating
    maximum, select, comparisons and logic, integer arithmetic, casts, transcendentals (the
    CPU's float32 approximations each on its own output; the libm ones summed)."""
    affine = a * row + col * s - 1.5
    mx, mn = fg.maximum(a, b), fg.minimum(a, row)
    chosen = fg.where(a > b, a, b * col)
    logic = ((a >= row) & (b < col)) | ~(a == b) | (a != a)
    ints = i * 3 - j + fg.astype(fg.maximum(i, 2), "int64") - fg.abs(i) * i
    casts = (fg.astype(i, a.dtype) / (fg.abs(row) + 1), fg.astype(b > 0, a.dtype),
             fg.astype(row * 2.5, "int32"), fg.astype(a, "float64"))
    approximated = (fg.exp(a), fg.log(a), fg.tanh(a), fg.sigmoid(a), fg.erf(a))
    libm = (fg.sqrt(fg.abs(b)) + fg.log1p(fg.abs(b)) + fg.rsqrt(fg.abs(b) + 1) + fg.sin(b)
            + fg.cos(b) + fg.sign(b) + fg.power(fg.abs(b) + 0.5, 1.5) + fg.reciprocal(b))
    return (affine, mx, mn, chosen, logic, ints) + casts + approximated + (libm,)


def special_values(dtype):
    """Values the float32 approximations must get right: infinities, NaN, overflow, tiny."""
    return np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 100.0, -100.0, 88.5,
                     -88.5, 1e-30, 20.0, -20.0, 0.5, 3.0], dtype)


def elementwise_inputs(dtype):
    """elementwise_zoo's operands (a, b, row, col, s, i, j): a's first row the special values,
    b[1, 2] NaN (in the second operand of maximum)."""
    rng = np.random.default_rng(0)
    a = np.stack([special_values(dtype), rng.standard_normal(16).astype(dtype) * 3])
    b = rng.standard_normal((2, 16)).astype(dtype)
    b[1, 2] = np.nan
    row = rng.standard_normal(16).astype(dtype)
    col = rng.standard_normal((2, 1)).astype(dtype)
    s = np.asarray(0.75, dtype)
    i = rng.integers(-5, 6, (2, 16)).astype(np.int32)
    j = rng.integers(-5, 6, (2, 16)).astype(np.int64)
    return a, b, row, col, s, i, j


def row_kernels(x, w, b):
    return (fg.softmax(x, axis=-1), fg.log_softmax(x, axis=-1), fg.layer_norm(x, w, b),
            fg.max(x, axis=1), x - fg.max(x, axis=-1, keepdims=True), fg.logsumexp(x, axis=1))


def movement(x, y, table, ids, labels):
    return (fg.transpose(x, (2, 0, 1)),
            x[::-1, 1:4:2, ::-2],  # negative steps
            fg.pad(x, ((1, 0), (0, 2), (1, 1)), constant_values=0.5),
            fg.concatenate([x, y], axis=1),
            fg.embedding(ids, table),  # gather with repeated ids
            fg.argmax(x, axis=1),
            fg.one_hot(labels, 6) @ table,  # an iota-based one_hot feeding a GEMM
            lax.iota((3, 5, 6), 1, "float32"),  # the library iota (axis 1 is neither i nor j)
            fg.sum(x, axis=1), fg.max(x, axis=1))  # middle-axis reductions


def movement_inputs():
    """movement's operands (x, y, table, ids, labels)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    x[1, 0, 2] = x[1, 3, 2] = 9.0  # an argmax tie: the first index wins
    y = rng.standard_normal((3, 2, 5)).astype(np.float32)
    table = rng.standard_normal((6, 3)).astype(np.float32)
    ids = np.array([[1, 4, 1], [0, 1, 5]])
    labels = np.array([2, 0, 5, 2])
    return x, y, table, ids, labels


def embedding_loss(table, ids):
    return fg.sum(fg.tanh(fg.embedding(ids, table)) * 2.0)


def embedding_inputs():
    """(table, ids): id 1 four times, ids 2, 3, 5 never (their gradient rows stay zero)."""
    rng = np.random.default_rng(9)
    return rng.standard_normal((6, 3)).astype(np.float32), np.array([[1, 4, 1], [0, 1, 1]])


def dropout_fn(x32, x64, seed):
    return (fg.dropout(x32, 0.5, key=(seed, np.int64(3))), fg.dropout(x64, 0.25, key=seed))


def dropout_inputs():
    rng = np.random.default_rng(10)
    x32 = rng.standard_normal((6, 7)).astype(np.float32)
    x64 = rng.standard_normal((5, 3)).astype(np.float64)
    return x32, x64, np.asarray(1234, np.int64)


# ---- models --------------------------------------------------------------------------------------


def mlp_loss(p, x, y):
    h = fg.relu(x @ p["w1"] + p["b1"])
    return fg.cross_entropy(h @ p["w2"] + p["b2"], y)


def mlp_params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {"w1": (rng.standard_normal((4, 6)) * 0.5).astype(dtype),
            "b1": (rng.standard_normal(6) * 0.1).astype(dtype),
            "w2": (rng.standard_normal((6, 3)) * 0.5).astype(dtype),
            "b2": np.zeros(3, dtype)}


def mlp_batches(n, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((8, 4)) * 2).astype(dtype), rng.integers(0, 3, 8))
            for _ in range(n)]


def ln_gelu_loss(p, x, t):
    """A LayerNorm + GELU(tanh) layer, then an erf-GELU layer, then a mean squared error."""
    h = fg.layer_norm(x @ p["w1"] + p["b1"], p["ln_w"], p["ln_b"])
    h = fg.gelu(h, approximate="tanh")
    h = fg.gelu(h @ p["w2"], approximate="none")
    return fg.mse(h, t)


def ln_gelu_params(seed=2):
    rng = np.random.default_rng(seed)
    f = np.float32
    return {"w1": (rng.standard_normal((5, 8)) * 0.6).astype(f),
            "b1": (rng.standard_normal(8) * 0.1).astype(f),
            "ln_w": (1 + 0.2 * rng.standard_normal(8)).astype(f),
            "ln_b": (0.2 * rng.standard_normal(8)).astype(f),
            "w2": (rng.standard_normal((8, 4)) * 0.5).astype(f)}


def cnn_loss(p, x, y):
    h = fg.relu(fg.conv2d(x, p["conv_w"], stride=1, padding=1, bias=p["conv_b"]))
    h = fg.reshape(h, (x.shape[0], -1))
    return fg.cross_entropy(h @ p["fc_w"] + p["fc_b"], y)


def cnn_inputs():
    """(params, images, labels) of cnn_loss: two 1x4x4 images, two 3x3 filters, 3 classes."""
    rng = np.random.default_rng(12)
    p = {"conv_w": (rng.standard_normal((2, 1, 3, 3)) * 0.5).astype(np.float32),
         "conv_b": (rng.standard_normal(2) * 0.1).astype(np.float32),
         "fc_w": (rng.standard_normal((32, 3)) * 0.3).astype(np.float32),
         "fc_b": np.zeros(3, np.float32)}
    return p, rng.standard_normal((2, 1, 4, 4)).astype(np.float32), np.array([2, 0])


def attention(p, x, heads=2):
    b, t, d = x.shape
    dh = d // heads

    def split(h):  # (B, T, D) -> (B, H, T, dh)
        return fg.transpose(fg.reshape(h, (b, t, heads, dh)), (0, 2, 1, 3))

    q, k, v = (split(x @ p[name]) for name in ("wq", "wk", "wv"))
    scores = fg.matmul(q, fg.swapaxes(k, -1, -2)) / math.sqrt(dh)
    out = fg.matmul(fg.softmax(scores, axis=-1), v)
    out = fg.reshape(fg.transpose(out, (0, 2, 1, 3)), (b, t, d))
    return out @ p["wo"] + p["bo"]


def attention_loss(p, x, w):
    return fg.sum(attention(p, x) * w)


def attention_inputs():
    """(params, x, w) of attention_loss: batch 2, 3 tokens, width 4, 2 heads."""
    rng = np.random.default_rng(13)
    d = 4
    p = {n: (rng.standard_normal((d, d)) / 2).astype(np.float32) for n in ("wq", "wk", "wv", "wo")}
    p["bo"] = (0.1 * rng.standard_normal(d)).astype(np.float32)
    x = rng.standard_normal((2, 3, d)).astype(np.float32)
    w = rng.standard_normal((2, 3, d)).astype(np.float32)
    return p, x, w


def softmax_regression_loss(p, x, y):
    logits = x @ p["w"]
    if "b" in p:  # static: decided when the function is traced
        logits = logits + p["b"]
    return fg.cross_entropy(logits, y)


def softmax_regression_params(bias=True):
    rng = np.random.default_rng(15)
    p = {"w": (rng.standard_normal((4, 3)) * 0.5).astype(np.float32)}
    if bias:
        p["b"] = (rng.standard_normal(3) * 0.1).astype(np.float32)
    return p
