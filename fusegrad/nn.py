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
    "nll_loss", "binary_cross_entropy_with_logits", "huber_loss", "conv1d", "adaptive_avg_pool2d",
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


_REDUCTIONS = ("mean", "sum", "none")


def _reduction(op, reduction):
    if reduction not in _REDUCTIONS:
        raise argument_error(ValueError, f"{op}: reduction must be 'mean', 'sum' or 'none', got "
                                         f"{reduction!r}")
    return reduction


def _reduce(loss, reduction, count=None):
    """Per-element `loss` reduced as torch does: its mean (over `count` elements when given:
    the targets not ignored), its sum, or itself ('none')."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return lax.reduce_sum(loss)
    return lax.mean(loss) if count is None else lax.div(lax.reduce_sum(loss), count)


def _class_labels(op, labels, classes, ignore_index):
    """Integer `labels` checked (at run time) to lie in [0, classes), and the mask of those
    that count (None: all). A label equal to ignore_index is exempt from the check: it picks
    class 0 and the mask takes it out again."""
    if ignore_index is None:
        return lax.check_index(labels, classes), None
    if not _is_int(ignore_index):
        raise argument_error(TypeError, f"{op}: ignore_index must be an int or None, got "
                                        f"{ignore_index!r}")
    valid = lax.compare("ne", labels, int(ignore_index))
    safe = lax.where(valid, labels, np.zeros((), np.dtype(labels.dtype)))
    return lax.check_index(safe, classes), valid


def _check_labels(op, shape, labels, what="logits"):
    lshape = shape_of(labels)
    if not shape:
        raise argument_error(ShapeError, f"{op}: {what} must have a class axis, got a 0-d array")
    if lshape != shape[:-1]:
        raise argument_error(ShapeError, f"{op}: integer labels must have shape {shape[:-1]} "
                                         f"({what} shape {shape} without the class axis), got "
                                         f"shape {lshape}")


def cross_entropy(logits, labels, ignore_index=None, label_smoothing=0.0, reduction="mean"):
    """-sum(target * log_softmax(logits)) over the class axis (the last), averaged over the
    batch: torch's F.cross_entropy with the classes last. labels: integer class indices (of
    logits' shape without the class axis) or probabilities (logits' shape).

    ignore_index: integer labels equal to it add nothing and are not counted in the mean
    (as torch: a batch with every label ignored has mean 0/0 = nan). label_smoothing=eps: the
    target is (1 - eps) * one_hot + eps / classes. reduction: 'mean', 'sum' or 'none' (the loss
    of each example, 0 where ignored). Labels out of range raise fg.IndexOutOfRangeError."""
    logits = as_float(logits)
    labels = as_array(labels)
    shape, lshape, ldt = shape_of(logits), shape_of(labels), dtype_of(labels)
    _reduction("cross_entropy", reduction)
    if isinstance(label_smoothing, Tracer) or not isinstance(label_smoothing, numbers.Real) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise argument_error(ValueError, f"cross_entropy: label_smoothing must be a number in "
                                         f"[0, 1], got {label_smoothing!r}")
    if ldt in _INT:
        _check_labels("cross_entropy", shape, labels)
    elif ldt in _FLOAT:
        if not shape:
            raise argument_error(ShapeError, "cross_entropy: logits must have a class axis, got "
                                             "a 0-d array")
        if lshape != shape:
            raise argument_error(ShapeError, f"cross_entropy: probability targets must have the "
                                             f"logits' shape {shape}, got shape {lshape}")
        if ignore_index is not None:
            raise argument_error(ValueError, "cross_entropy: ignore_index applies to integer "
                                             "class labels only; with probability targets give "
                                             "ignored rows zero probability (or reduction='none' "
                                             "and a mask)")
    else:
        raise argument_error(TypeError, f"cross_entropy: labels must be integer class indices "
                                        f"or float probabilities, got {ldt}")
    classes, dt = shape[-1], dtype_of(logits)
    logp = log_softmax(logits, -1)
    valid = None
    if ldt in _INT:  # a label out of range is an error (it would pick nothing: a silent 0)
        labels, valid = _class_labels("cross_entropy", labels, classes, ignore_index)
    target = one_hot(labels, classes, dt) if ldt in _INT else labels
    if label_smoothing:
        target = lax.add(lax.mul(target, 1.0 - float(label_smoothing)),
                         float(label_smoothing) / classes)
    count = None
    if valid is not None:
        target = lax.mul(target, lax.cast(lax.expand_dims(valid, -1), dt))
        count = lax.reduce_sum(lax.cast(valid, dt))
    picked = lax.reduce_sum(lax.mul(logp, target), -1)
    return lax.unary("neg", _reduce(picked, reduction, count))


def nll_loss(log_probs, labels, ignore_index=None, reduction="mean"):
    """-log_probs[..., label] averaged over the batch: torch's F.nll_loss with the classes on
    the last axis. labels: integers of log_probs' shape without the class axis, checked to lie
    in [0, classes) (fg.IndexOutOfRangeError); ignore_index and reduction as cross_entropy.
    Picked with a select, so -inf at the classes not picked (log of 0) is harmless."""
    log_probs, labels = as_float(log_probs), as_array(labels)
    _reduction("nll_loss", reduction)
    if dtype_of(labels) not in _INT:
        raise argument_error(TypeError, f"nll_loss: labels must be integer class indices, got "
                                        f"{dtype_of(labels)}")
    shape = shape_of(log_probs)
    _check_labels("nll_loss", shape, labels, "log_probs")
    labels, valid = _class_labels("nll_loss", labels, shape[-1], ignore_index)
    hit = lax.compare("eq", lax.iota(shape, len(shape) - 1, dtype_of(labels)),
                      lax.expand_dims(labels, -1))
    if valid is not None:
        hit = lax.where(lax.expand_dims(valid, -1), hit, False)
    picked = lax.reduce_sum(lax.where(hit, log_probs, 0.0), -1)
    count = None if valid is None else lax.reduce_sum(lax.cast(valid, dtype_of(log_probs)))
    return lax.unary("neg", _reduce(picked, reduction, count))


def _same_shape(op, a, b, names):
    if shape_of(a) != shape_of(b):
        raise argument_error(ShapeError, f"{op}: {names[0]} shape {shape_of(a)} and {names[1]} "
                                         f"shape {shape_of(b)} must match")


def _broadcasts_onto(op, name, v, shape):
    if v is not None and (len(shape_of(v)) > len(shape) or any(
            d not in (1, s) for d, s in zip(shape_of(v)[::-1], shape[::-1]))):
        raise argument_error(ShapeError, f"{op}: {name} of shape {shape_of(v)} must broadcast "
                                         f"to the logits' shape {shape}")


def binary_cross_entropy_with_logits(logits, targets, weight=None, pos_weight=None,
                                     reduction="mean"):
    """Sigmoid and binary cross-entropy in one stable expression, as torch's
    F.binary_cross_entropy_with_logits: (1 - t) * x + (1 + (pos_weight - 1) * t) * softplus(-x),
    softplus(-x) = max(-x, 0) + log1p(exp(-|x|)); times weight; reduction 'mean', 'sum', 'none'.
    targets: probabilities of the logits' shape; weight and pos_weight broadcast to it. All
    are taken in the logits' dtype (a float64 pos_weight leaves a float32 loss float32)."""
    op = "binary_cross_entropy_with_logits"
    _reduction(op, reduction)
    x, targets = as_float(logits), as_array(targets)
    _same_shape(op, x, targets, ("logits", "targets"))
    dt = dtype_of(x)
    t = lax.convert(targets, dt)
    for name, v in (("weight", weight), ("pos_weight", pos_weight)):
        _broadcasts_onto(op, name, v, shape_of(x))
    weight, pos_weight = (None if v is None else lax.convert(as_array(v), dt)
                          for v in (weight, pos_weight))
    softplus_neg = lax.add(lax.maximum(lax.unary("neg", x), 0.0), lax.unary(
        "log1p", lax.unary("exp", lax.unary("neg", lax.unary("abs", x)))))
    scale = softplus_neg if pos_weight is None else lax.mul(
        lax.add(1.0, lax.mul(lax.sub(pos_weight, 1.0), t)), softplus_neg)
    loss = lax.add(lax.mul(lax.sub(1.0, t), x), scale)
    if weight is not None:
        loss = lax.mul(loss, weight)
    return _reduce(loss, reduction)


def huber_loss(pred, target, delta=1.0, reduction="mean"):
    """Huber loss, as torch's F.huber_loss: 0.5 * d**2 where |d| < delta, else
    delta * (|d| - 0.5 * delta), d = pred - target; reduction 'mean', 'sum' or 'none'."""
    _reduction("huber_loss", reduction)
    if isinstance(delta, Tracer) or not isinstance(delta, numbers.Real) or not delta > 0:
        raise argument_error(ValueError, f"huber_loss: delta must be a number > 0, got {delta!r}")
    pred, target = as_array(pred), as_array(target)
    _same_shape("huber_loss", pred, target, ("pred", "target"))
    d = lax.sub(*lax.promote(pred, target, to_float=True))
    a = lax.unary("abs", d)
    delta = float(delta)
    loss = lax.where(lax.compare("lt", a, delta), lax.mul(0.5, lax.mul(d, d)),
                     lax.mul(delta, lax.sub(a, 0.5 * delta)))
    return _reduce(loss, reduction)


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
    """PyTorch's conv2d: x (N,C,H,W), w (O,C,kh,kw), bias (O,) -> (N,O,OH,OW), im2col + matmul;
    an unbatched x (C,H,W) gives (O,OH,OW), as torch."""
    x, w = lax.promote(as_array(x), as_array(w), to_float=True)
    if len(shape_of(x)) == 3:  # unbatched, as torch: a batch of one
        out = conv2d(lax.reshape(x, (1,) + shape_of(x)), w, stride, padding, bias)
        return lax.reshape(out, shape_of(out)[1:])
    if len(shape_of(x)) != 4:
        raise argument_error(ShapeError, f"conv2d: x must be 4-D (N, C, H, W) or 3-D (C, H, W), "
                                         f"got shape {shape_of(x)}")
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


def _int1(op, name, value, minimum):
    """An int, or a 1-tuple of one as torch's conv1d takes, that is >= minimum."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if not _is_int(value):
        hint = " (pass the bias as bias=...)" if is_array(value) else ""
        raise argument_error(TypeError, f"{op}: {name} must be an int, got "
                                        f"{type(value).__name__}{hint}")
    if value < minimum:
        raise argument_error(ValueError, f"{op}: {name} must be >= {minimum}, got {value}")
    return int(value)


def conv1d(x, w, stride=1, padding=0, bias=None):
    """PyTorch's conv1d: x (N,C,L) or unbatched (C,L), w (O,C,k), bias (O,) -> (N,O,OL) or
    (O,OL); computed as conv2d over a height of 1 (one unfold, one matmul)."""
    x, w = lax.promote(as_array(x), as_array(w), to_float=True)
    xs, ws = shape_of(x), shape_of(w)
    if len(xs) not in (2, 3):
        raise argument_error(ShapeError, f"conv1d: x must be 3-D (N, C, L) or 2-D (C, L), got "
                                         f"shape {xs}")
    if len(ws) != 3:
        raise argument_error(ShapeError, f"conv1d: w must be 3-D (out_channels, in_channels, "
                                         f"k), got shape {ws}")
    if xs[-2] != ws[1]:
        raise argument_error(ShapeError, f"conv1d: x has {xs[-2]} channels (x shape {xs}) but w "
                                         f"expects {ws[1]} (w shape {ws})")
    s = _int1("conv1d", "stride", stride, 1)
    p = _int1("conv1d", "padding", padding, 0)
    o, c, k = ws
    length = _out_size("conv1d", xs[-1], k, s, p, x)
    if bias is not None and shape_of(bias) != (o,):
        raise argument_error(ShapeError, f"conv1d: bias must have shape ({o},) (w shape {ws}), "
                                         f"got shape {shape_of(bias)}")
    batch = xs[:-2]
    x4 = lax.reshape(x, (batch[0] if batch else 1, c, 1, xs[-1]))
    out = conv2d(x4, lax.reshape(w, (o, c, 1, k)), (1, s), (0, p), bias)
    return lax.reshape(out, batch + (o, length))


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


def adaptive_avg_pool2d(x, output_size):
    """torch's adaptive_avg_pool2d where output_size (an int, a pair; None keeps that axis)
    divides the input's spatial size: equal windows, an avg_pool2d (1x1: a mean over H and W).
    x: (N,C,H,W) or unbatched (C,H,W)."""
    x = as_array(x)
    shape = shape_of(x)
    if len(shape) not in (3, 4):
        raise argument_error(ShapeError, f"adaptive_avg_pool2d: x must be 4-D (N, C, H, W) or "
                                         f"3-D (C, H, W), got shape {shape}")
    if dtype_of(x) not in _FLOAT:
        raise argument_error(TypeError, f"adaptive_avg_pool2d: x must be float32 or float64, "
                                        f"got {dtype_of(x)}")
    h, w = shape[-2:]
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * 2
    if len(sizes) != 2 or not all(v is None or (_is_int(v) and v >= 1) for v in sizes):
        raise argument_error(TypeError, f"adaptive_avg_pool2d: output_size must be an int >= 1, "
                                        f"None or a pair of them, got {output_size!r}")
    oh, ow = (h if sizes[0] is None else int(sizes[0]), w if sizes[1] is None else int(sizes[1]))
    if h % oh or w % ow:
        raise argument_error(ValueError, f"adaptive_avg_pool2d: output_size {(oh, ow)} must "
                                         f"divide the input's spatial size {(h, w)} (x shape "
                                         f"{shape}); uneven windows are not supported: pick a "
                                         f"divisor, or use avg_pool2d with an explicit kernel")
    if (oh, ow) == (1, 1):  # global average pooling: one row reduction
        return lax.mean(x, (-2, -1), keepdims=True)
    if (oh, ow) == (h, w):
        return x
    x4 = x if len(shape) == 4 else lax.reshape(x, (1,) + shape)
    out = avg_pool2d(x4, (h // oh, w // ow))
    return out if len(shape) == 4 else lax.reshape(out, shape_of(out)[1:])


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
