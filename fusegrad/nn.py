"""Neural-network composites built from primitives: logaddexp, gelu, softmax, cross_entropy,
layer_norm, conv2d, pooling, dropout, embedding ...

Each is built from primitives at trace time through compiler/lax.py, so it works on tracers and on
plain NumPy arrays, gets its gradient from the primitives' VJPs, and is left to fusion to make
fast. Numerically delicate ones are written in their stable form: the row maximum is subtracted
under stop_gradient (exact gradient, no argmax ties), and one-hot targets are built from `iota`
compared with the labels rather than gathered, which fuses. fusegrad.ops re-exports everything.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .compiler import lax
from .compiler.lax import dtype_of, is_array, shape_of
from .compiler.lax_numpy import argument_error, as_array, as_float
from .compiler.symbolic import Tracer, assign, current_trace
from .ir.types import ShapeError, normalize_axes

__all__ = [
    "logaddexp", "gelu", "batch_norm", "softmax", "log_softmax", "logsumexp", "one_hot", "cross_entropy", "mse", "layer_norm",
    "conv2d", "max_pool2d", "avg_pool2d", "dropout", "embedding",
]

_INT = ("int32", "int64")
_FLOAT = ("float32", "float64")


# ---- argument checking -----------------------------------------------------------------------


def _is_int(v):
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def int_pair(op, name, value, minimum):
    """An int or a pair of ints, each >= minimum, as a pair; a clear error naming `name` if not."""
    if _is_int(value):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_int, value))):
        hint = " (pass the bias as bias=...)" if op == "conv2d" and is_array(value) else ""
        raise argument_error(TypeError, f"{op}: {name} must be an int or a pair of ints, "
                                        f"got {type(value).__name__}{hint}")
    if min(value) < minimum:
        raise argument_error(ValueError, f"{op}: {name} must be >= {minimum}, got {tuple(value)}")
    return int(value[0]), int(value[1])


def _need_nchw(op, x):
    if len(shape_of(x)) != 4:
        raise argument_error(ShapeError, f"{op}: x must be 4-D (N, C, H, W), got shape "
                                         f"{shape_of(x)}")


# ---- elementwise and reduction composites ----------------------------------------------------


def logaddexp(x, y):
    """Elementwise log(exp(x) + exp(y)), as max + log1p(exp(-|x - y|))."""
    x, y = lax.promote(x, y, to_float=True)
    return lax.add(lax.maximum(x, y), lax.unary("log1p", lax.unary("exp", lax.unary(
        "neg", lax.unary("abs", lax.sub(x, y))))))


# ---- activations and normalised exponentials -------------------------------------------------


def gelu(x, approximate="none"):
    """GELU: 0.5*x*(1+erf(x/sqrt(2))), or with approximate="tanh" the tanh/0.044715 form."""
    if approximate not in ("none", "tanh"):
        raise argument_error(ValueError, f"gelu: approximate must be 'none' or 'tanh', "
                                         f"got {approximate!r}")
    x = as_float(x)
    half_x = lax.mul(0.5, x)
    if approximate == "tanh":
        cube = lax.power(x, 3)
        inner = lax.mul(math.sqrt(2.0 / math.pi), lax.add(x, lax.mul(0.044715, cube)))
        return lax.mul(half_x, lax.add(1.0, lax.unary("tanh", inner)))
    return lax.mul(half_x, lax.add(1.0, lax.unary("erf", lax.mul(x, math.sqrt(0.5)))))


def _shifted(x, axis):
    """x - max(x) along axis, the max under stop_gradient: <= 0, so exp cannot overflow."""
    m = lax.stop_gradient(lax.reduce_max(x, axis, keepdims=True))
    return lax.sub(x, m), m


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along axis, computed as exp(x - max) / sum(exp(x - max))."""
    e = lax.unary("exp", _shifted(as_float(x), axis)[0])
    return lax.div(e, lax.reduce_sum(e, axis, keepdims=True))


def log_softmax(x, axis=-1):
    """log(softmax(x)) along axis, as (x - max) - log(sum(exp(x - max))): finite for any x."""
    s, _ = _shifted(as_float(x), axis)
    return lax.sub(s, lax.unary("log", lax.reduce_sum(lax.unary("exp", s), axis, keepdims=True)))


def logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x), axis)) as max + log(sum(exp(x - max))), as scipy.special.logsumexp."""
    x = as_float(x)
    s, m = _shifted(x, axis)
    out = lax.add(lax.unary("log", lax.reduce_sum(lax.unary("exp", s), axis, keepdims=True)), m)
    if keepdims:
        return out
    axes = normalize_axes(axis, len(shape_of(x)), "logsumexp")
    return lax.reshape(out, tuple(d for i, d in enumerate(shape_of(x)) if i not in axes))


# ---- losses ----------------------------------------------------------------------------------


def one_hot(labels, num_classes, dtype="float32"):
    """(..., num_classes) array, 1 where the class index equals the label (iota == labels)."""
    labels = as_array(labels)
    if dtype_of(labels) not in _INT:
        raise argument_error(TypeError, f"one_hot: labels must be integers, got "
                                        f"{dtype_of(labels)}")
    if not _is_int(num_classes) or num_classes < 1:
        raise argument_error(ValueError, f"one_hot: num_classes must be a positive int, "
                                         f"got {num_classes!r}")
    shape = shape_of(labels)
    classes = lax.iota(shape + (int(num_classes),), len(shape), dtype_of(labels))
    return lax.cast(lax.compare("eq", classes, lax.expand_dims(labels, -1)), dtype)


def cross_entropy(logits, labels):
    """Mean over the batch of -sum(target * log_softmax(logits)); labels: indices or probs."""
    logits = as_float(logits)
    labels = as_array(labels)
    shape, lshape, ldt = shape_of(logits), shape_of(labels), dtype_of(labels)
    if not shape:
        raise argument_error(ShapeError, "cross_entropy: logits must have a class axis, got a "
                                         "0-d array")
    if ldt in _INT:
        if lshape != shape[:-1]:
            raise argument_error(ShapeError, f"cross_entropy: integer labels must have shape "
                                             f"{shape[:-1]} (logits shape {shape} without the "
                                             f"class axis), got shape {lshape}")
    elif ldt in _FLOAT:
        if lshape != shape:
            raise argument_error(ShapeError, f"cross_entropy: probability targets must have the "
                                             f"logits' shape {shape}, got shape {lshape}")
    else:
        raise argument_error(TypeError, f"cross_entropy: labels must be integer class indices "
                                        f"or float probabilities, got {ldt}")
    logp = log_softmax(logits, -1)
    if ldt in _INT:  # a label out of range is an error (it would pick nothing: a silent 0)
        labels = lax.check_index(labels, shape[-1])
    target = one_hot(labels, shape[-1], dtype_of(logits)) if ldt in _INT else labels
    picked = lax.reduce_sum(lax.mul(logp, target), -1)
    return lax.unary("neg", lax.mean(picked))


def mse(pred, target):
    """Mean squared error: mean((pred - target)**2) over all elements."""
    pred, target = as_array(pred), as_array(target)
    if shape_of(pred) != shape_of(target):
        raise argument_error(ShapeError, f"mse: pred shape {shape_of(pred)} and target shape "
                                         f"{shape_of(target)} must match")
    d = lax.sub(pred, target)
    return lax.mean(lax.mul(d, d))


# ---- normalisation, convolution, pooling -----------------------------------------------------


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (biased variance)."""
    x = as_float(x)
    shape = shape_of(x)
    if not shape:
        raise argument_error(ShapeError, "layer_norm: x must have at least one axis")
    for name, v in (("weight", weight), ("bias", bias)):
        if v is not None and shape_of(v) != shape[-1:]:
            raise argument_error(ShapeError, f"layer_norm: {name} must have shape {shape[-1:]} "
                                             f"(x's last axis, x shape {shape}), got shape "
                                             f"{shape_of(v)}")
    centred = lax.sub(x, lax.mean(x, -1, keepdims=True))
    var = lax.mean(lax.mul(centred, centred), -1, keepdims=True)
    y = lax.mul(centred, lax.unary("rsqrt", lax.add(var, float(eps))))
    if weight is not None:
        y = lax.mul(y, weight)
    if bias is not None:
        y = lax.add(y, bias)
    return y


def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, training=True,
               momentum=0.1, eps=1e-5):
    """torch's batch norm over axis 1 (channels) of x (N, C) or (N, C, ...): in training,
    normalised with the batch's mean and (biased) variance per channel, and the running
    statistics, when given, moved towards them: r = (1 - momentum) r + momentum * batch value,
    with the unbiased variance (torch's convention). They are updated with fg.assign, so pass
    them as leaves of the parameters: a train_step writes them after its update and does not
    train them. With training=False, normalised with the running statistics."""
    x = as_float(x)
    shape = shape_of(x)
    if len(shape) < 2:
        raise argument_error(ShapeError, f"batch_norm: x must be (N, C) or (N, C, ...) with "
                                         f"channels on axis 1, got shape {shape}")
    channels = shape[1]
    for name, v in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if v is not None and shape_of(v) != (channels,):
            raise argument_error(ShapeError, f"batch_norm: {name} must have shape ({channels},) "
                                             f"(x's axis 1, x shape {shape}), got shape "
                                             f"{shape_of(v)}")
    if not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
        raise argument_error(ValueError, f"batch_norm: momentum must be a number in [0, 1], got "
                                         f"{momentum!r} (torch's cumulative average, "
                                         f"momentum=None, is not supported)")
    axes = (0, *range(2, len(shape)))
    per_channel = (1, channels) + (1,) * (len(shape) - 2)  # broadcasts over axis 1
    if training:
        n = int(np.prod([shape[a] for a in axes], dtype=np.int64))
        if n < 2:
            raise argument_error(ValueError, f"batch_norm: training needs more than one value "
                                             f"per channel, x has shape {shape}")
        mean = lax.mean(x, axes, keepdims=True)
        centred = lax.sub(x, mean)
        var = lax.mean(lax.mul(centred, centred), axes, keepdims=True)
        m = float(momentum)
        for stat, batch in ((running_mean, mean), (running_var, lax.mul(var, n / (n - 1)))):
            if stat is not None:
                batch = lax.reshape(lax.stop_gradient(batch), (channels,))
                assign(stat, lax.add(lax.mul(stat, 1.0 - m), lax.mul(batch, m)))
        y = lax.mul(centred, lax.unary("rsqrt", lax.add(var, float(eps))))
    else:
        if running_mean is None or running_var is None:
            raise argument_error(ValueError, "batch_norm: training=False normalises with the "
                                             "running statistics: pass running_mean and "
                                             "running_var")
        mean = lax.reshape(running_mean, per_channel)
        scale = lax.unary("rsqrt", lax.add(lax.reshape(running_var, per_channel), float(eps)))
        y = lax.mul(lax.sub(x, mean), scale)
    if weight is not None:
        y = lax.mul(y, lax.reshape(weight, per_channel))
    if bias is not None:
        y = lax.add(y, lax.reshape(bias, per_channel))
    return y


def _out_size(op, size, kernel, stride, padding, x):
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise argument_error(ShapeError, f"{op}: kernel {kernel} does not fit input of shape "
                                         f"{shape_of(x)} with padding {padding}")
    return out


def conv2d(x, w, stride=1, padding=0, bias=None):
    """PyTorch's conv2d: x (N,C,H,W), w (O,C,kh,kw), bias (O,) -> (N,O,OH,OW), im2col + matmul."""
    x, w = lax.promote(as_array(x), as_array(w), to_float=True)
    _need_nchw("conv2d", x)
    xs, ws = shape_of(x), shape_of(w)
    if len(ws) != 4:
        raise argument_error(ShapeError, f"conv2d: w must be 4-D (out_channels, in_channels, kh, "
                                         f"kw), got shape {ws}")
    if xs[1] != ws[1]:
        raise argument_error(ShapeError, f"conv2d: x has {xs[1]} channels (x shape {xs}) but w "
                                         f"expects {ws[1]} (w shape {ws})")
    sh, sw = int_pair("conv2d", "stride", stride, 1)
    ph, pw = int_pair("conv2d", "padding", padding, 0)
    n, c, h, wd = xs
    o, _, kh, kw = ws
    oh = _out_size("conv2d", h, kh, sh, ph, x)
    ow = _out_size("conv2d", wd, kw, sw, pw, x)
    cols = lax.unfold(x, (kh, kw), (sh, sw), (ph, pw))  # (N, C*kh*kw, OH*OW)
    out = lax.reshape(lax.matmul(lax.reshape(w, (o, c * kh * kw)), cols), (n, o, oh, ow))
    if bias is not None:
        if shape_of(bias) != (o,):
            raise argument_error(ShapeError, f"conv2d: bias must have shape ({o},) (w shape "
                                             f"{ws}), got shape {shape_of(bias)}")
        out = lax.add(out, lax.reshape(bias, (o, 1, 1)))
    return out


def _windows(op, x, kernel_size, stride, padding):
    """Checked pooling geometry: x, (kh, kw), (sh, sw), (ph, pw), (N, C, OH, OW)."""
    _need_nchw(op, x)
    if dtype_of(x) not in _FLOAT:
        raise argument_error(TypeError, f"{op}: x must be float32 or float64, got {dtype_of(x)}")
    kh, kw = int_pair(op, "kernel_size", kernel_size, 1)
    sh, sw = int_pair(op, "stride", (kh, kw) if stride is None else stride, 1)
    ph, pw = int_pair(op, "padding", padding, 0)
    if ph > kh // 2 or pw > kw // 2:
        raise argument_error(ValueError, f"{op}: padding {(ph, pw)} must be at most half the "
                                         f"kernel size {(kh, kw)}")
    n, c, h, w = shape_of(x)
    out = (n, c, _out_size(op, h, kh, sh, ph, x), _out_size(op, w, kw, sw, pw, x))
    return (kh, kw), (sh, sw), (ph, pw), out


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max over kernel_size windows of NCHW x (stride defaults to kernel_size; padding is -inf)."""
    x = as_array(x)
    kernel, stride, (ph, pw), out = _windows("max_pool2d", x, kernel_size, stride, padding)
    x = lax.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), value=-np.inf)
    cols = lax.unfold(x, kernel, stride, 0)
    cols = lax.reshape(cols, out[:2] + (kernel[0] * kernel[1], -1))
    return lax.reshape(lax.reduce_max(cols, 2), out)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over kernel_size windows of NCHW x; zero padding counts (count_include_pad=True)."""
    x = as_array(x)
    kernel, stride, padding, out = _windows("avg_pool2d", x, kernel_size, stride, padding)
    cols = lax.unfold(x, kernel, stride, padding)
    cols = lax.reshape(cols, out[:2] + (kernel[0] * kernel[1], -1))
    return lax.reshape(lax.mean(cols, 2), out)


# ---- randomness and lookup -------------------------------------------------------------------


def _key_part(key, what):
    if _is_int(key):
        return np.asarray(key, np.int64)
    if is_array(key) and dtype_of(key) in _INT and shape_of(key) == ():
        return lax.convert(key, "int64")
    raise argument_error(TypeError, f"dropout: key must be an int, an int64 0-d array or a "
                                    f"(seed, counter) pair, got {what}")


def dropout(x, p=0.5, key=None, training=True):
    """Zero elements with probability p, scale the rest by 1/(1-p); training=False (evaluation)
    returns x. key: a seed, or (seed, counter); without one, the draw comes from the key of the
    compiled training step (fg.train_step supplies a new one every step, each dropout call its
    own part of it). Anywhere else a key is needed: dropout is never silently off."""
    if isinstance(p, Tracer) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise argument_error(ValueError, f"dropout: p must be a number in [0, 1), got {p!r}")
    if p == 0 or not training:
        return x
    if key is None:
        ctx = current_trace()
        key = ctx.draw_key() if ctx is not None else None
        if key is None:
            raise argument_error(ValueError, (
                "dropout: training needs a random key. fg.train_step supplies one itself; "
                "in fg.jit / fg.grad or eager code pass key= (an int seed, or (seed, counter)), "
                "e.g. give your function a `key` argument, or pass training=False to evaluate"))
    x = as_array(x)
    if dtype_of(x) not in _FLOAT:
        raise argument_error(TypeError, f"dropout: x must be float32 or float64, got "
                                        f"{dtype_of(x)}")
    if isinstance(key, (tuple, list)) and len(key) == 2:
        seed, counter = (_key_part(k, f"key={key!r}") for k in key)
    else:
        seed, counter = _key_part(key, f"key={key!r}"), np.asarray(0, np.int64)
    u = lax.random_uniform(seed, counter, shape_of(x), dtype_of(x))
    keep = lax.compare("ge", u, float(p))
    return lax.where(keep, lax.mul(x, 1.0 / (1.0 - float(p))), 0.0)


def embedding(ids, table):
    """Rows of `table` (num_embeddings, dim) picked by integer `ids`: shape ids.shape + (dim,)."""
    ids, table = as_array(ids), as_array(table)
    if dtype_of(ids) not in _INT:
        raise argument_error(TypeError, f"embedding: ids must be integers, got {dtype_of(ids)}")
    if len(shape_of(table)) != 2:
        raise argument_error(ShapeError, f"embedding: table must be 2-D (num_embeddings, dim), "
                                         f"got shape {shape_of(table)}")
    return lax.gather(table, ids, axis=0)
