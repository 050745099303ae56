"""A seeded generator of random programs over fusegrad's operations, for differential testing.

    program = random_program(seed)
    program.fn(*program.args)        # a scalar loss of the float inputs
    program.describe()               # the recipe, readable: what to paste into a bug report

Shapes have size-1 and broadcast dimensions; reductions run over every axis combination, with
and without keepdims; movement (transpose, reshape, slice, pad, concatenate, broadcast,
expand/squeeze), gathers with repeated and negative indices, matmuls where shapes allow, the
composites (softmax, log_softmax, layer_norm, cross_entropy) and elementwise math, kept in
well-conditioned ranges so float32 results can be compared: the interpreter is the oracle.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import fusegrad as fg


@dataclass
class Program:
    seed: int
    args: list
    steps: list = field(default_factory=list)  # (description, function of the value list)
    order: list = field(default_factory=list)  # per value: its input index or step index

    def fn(self, *inputs):
        values = []
        for kind, k in self.order:  # inputs were added between steps: replay in that order
            values.append(inputs[k] if kind == "input" else self.steps[k][1](values))
        # the loss: a weighted sum of every float value, so every step gets a gradient
        total = 0.0
        for k, v in enumerate(values):
            if fg.ops.dtype_of(v).startswith("float"):
                total = total + fg.sum(v * (0.1 + 0.07 * k)) / float(max(np.size(v), 1)) ** 0.5
        return total

    def describe(self) -> str:
        lines = [f"seed {self.seed}:"]
        for v, (kind, k) in enumerate(self.order):
            if kind == "input":
                a = self.args[k]
                lines.append(f"  v{v} = input {a.dtype}{list(a.shape)}")
            else:
                lines.append(f"  v{v} = {self.steps[k][0]}")
        return "\n".join(lines)


def _shape(rng, rank=None):
    rank = int(rng.integers(1, 4)) if rank is None else rank
    return tuple(int(rng.choice([1, 2, 3, 4, 5])) for _ in range(rank))


class _Gen:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.program = Program(seed, [])
        self.shapes: list = []  # shape of every value

    def add_input(self, shape, dtype="float32"):
        a = self.rng.standard_normal(shape).astype(dtype)
        self.program.order.append(("input", len(self.program.args)))
        self.program.args.append(a)
        self.shapes.append(tuple(shape))
        return len(self.shapes) - 1

    def emit(self, text, fn, shape):
        self.program.order.append(("step", len(self.program.steps)))
        self.program.steps.append((text, fn))
        self.shapes.append(tuple(shape))
        return len(self.shapes) - 1

    def pick(self, rank_at_least=0):
        options = [k for k, s in enumerate(self.shapes) if len(s) >= rank_at_least]
        return int(self.rng.choice(options)) if options else None

    # ---- one random operation ----
    def step(self):
        kind = self.rng.choice(["unary", "binary", "binary", "reduce", "move", "move",
                                "gather", "matmul", "composite"])
        return getattr(self, f"op_{kind}")()

    def op_unary(self):
        k = self.pick()
        name = self.rng.choice(["tanh", "sigmoid", "exp_tanh", "log1p_abs", "sqrt_abs", "neg",
                                "abs", "relu", "square", "gelu", "erf"])
        fns = {
            "tanh": fg.tanh, "sigmoid": fg.sigmoid, "neg": lambda x: -x, "abs": fg.abs,
            "relu": fg.relu, "square": fg.square, "erf": fg.erf,
            "exp_tanh": lambda x: fg.exp(fg.tanh(x)),
            "log1p_abs": lambda x: fg.log(fg.abs(x) + 1.0),
            "sqrt_abs": lambda x: fg.sqrt(fg.abs(x) + 0.5),
            "gelu": lambda x: fg.gelu(x, approximate="tanh"),
        }
        f = fns[name]
        return self.emit(f"{name}(v{k})", lambda vs, k=k: f(vs[k]), self.shapes[k])

    def _broadcastable(self, shape):
        """A value whose shape broadcasts against `shape` (or a new input that does)."""
        candidates = []
        for j, s in enumerate(self.shapes):
            try:
                if np.broadcast_shapes(s, shape) == tuple(shape):
                    candidates.append(j)
            except ValueError:
                pass
        if candidates and self.rng.random() < 0.7:
            return int(self.rng.choice(candidates))
        # a new input: drop leading axes, make some axes 1
        new = list(shape[int(self.rng.integers(0, len(shape) + 1)):])
        new = [1 if self.rng.random() < 0.4 else d for d in new]
        return self.add_input(tuple(new) or (1,))

    def op_binary(self):
        k = self.pick()
        j = self._broadcastable(self.shapes[k])
        name = self.rng.choice(["add", "sub", "mul", "maximum", "minimum", "div_safe", "where"])
        fns = {
            "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
            "maximum": fg.maximum, "minimum": fg.minimum,
            "div_safe": lambda a, b: a / (fg.abs(b) + 1.0),
            "where": lambda a, b: fg.where(a > b, a, b * 0.5),
        }
        f = fns[name]
        out = np.broadcast_shapes(self.shapes[k], self.shapes[j])
        order = self.rng.random() < 0.5
        if order:
            return self.emit(f"{name}(v{k}, v{j})", lambda vs, k=k, j=j: f(vs[k], vs[j]), out)
        return self.emit(f"{name}(v{j}, v{k})", lambda vs, k=k, j=j: f(vs[j], vs[k]), out)

    def op_reduce(self):
        k = self.pick(1)
        shape = self.shapes[k]
        n = len(shape)
        count = int(self.rng.integers(1, n + 1))
        axes = tuple(sorted(int(a) for a in self.rng.choice(n, count, replace=False)))
        keep = bool(self.rng.random() < 0.5)
        name = self.rng.choice(["sum", "mean", "max"])
        f = {"sum": fg.sum, "mean": fg.mean, "max": fg.max}[name]
        out = tuple(1 if a in axes else d for a, d in enumerate(shape)) if keep else \
            tuple(d for a, d in enumerate(shape) if a not in axes)
        return self.emit(f"{name}(v{k}, axis={axes}, keepdims={keep})",
                         lambda vs, k=k: f(vs[k], axis=axes, keepdims=keep), out)

    def op_move(self):
        k = self.pick(1)
        shape = self.shapes[k]
        n = len(shape)
        what = self.rng.choice(["transpose", "reshape", "slice", "pad", "concat", "broadcast",
                                "expand_squeeze"])
        if what == "transpose" and n >= 2:
            perm = tuple(int(a) for a in self.rng.permutation(n))
            return self.emit(f"transpose(v{k}, {perm})",
                             lambda vs, k=k: fg.transpose(vs[k], perm),
                             tuple(shape[a] for a in perm))
        if what == "reshape":
            size = int(np.prod(shape))
            divisors = [d for d in range(1, size + 1) if size % d == 0]
            a = int(self.rng.choice(divisors))
            new = (a, size // a) if self.rng.random() < 0.6 else (size,)
            return self.emit(f"reshape(v{k}, {new})", lambda vs, k=k: fg.reshape(vs[k], new),
                             new)
        if what == "slice":
            axis = int(self.rng.integers(0, n))
            d = shape[axis]
            lo = int(self.rng.integers(0, d))
            hi = int(self.rng.integers(lo + 1, d + 1))
            step = int(self.rng.choice([1, 1, 2]))
            index = tuple([slice(None)] * axis + [slice(lo, hi, step)])
            out = list(shape)
            out[axis] = len(range(lo, hi, step))
            return self.emit(f"v{k}[{index}]", lambda vs, k=k: vs[k][index], tuple(out))
        if what == "pad":
            widths = [(int(self.rng.integers(0, 2)), int(self.rng.integers(0, 2))) for _ in shape]
            out = tuple(d + a + b for d, (a, b) in zip(shape, widths))
            return self.emit(f"pad(v{k}, {widths})", lambda vs, k=k: fg.pad(vs[k], widths), out)
        if what == "concat":
            axis = int(self.rng.integers(0, n))
            other = list(shape)
            other[axis] = int(self.rng.integers(1, 4))
            j = self.add_input(tuple(other))
            out = list(shape)
            out[axis] += other[axis]
            return self.emit(f"concatenate([v{k}, v{j}], axis={axis})",
                             lambda vs, k=k, j=j: fg.concatenate([vs[k], vs[j]], axis=axis),
                             tuple(out))
        if what == "broadcast":
            out = (int(self.rng.integers(1, 4)),) + tuple(
                int(self.rng.integers(2, 4)) if d == 1 else d for d in shape)
            return self.emit(f"broadcast_to(v{k}, {out})",
                             lambda vs, k=k: fg.broadcast_to(vs[k], out), out)
        axis = int(self.rng.integers(0, n + 1))
        out = shape[:axis] + (1,) + shape[axis:]
        j = self.emit(f"expand_dims(v{k}, {axis})", lambda vs, k=k: fg.expand_dims(vs[k], axis),
                      out)
        return self.emit(f"squeeze(v{j}, {axis})", lambda vs, j=j: fg.squeeze(vs[j], axis), shape)

    def op_gather(self):
        k = self.pick(1)
        shape = self.shapes[k]
        axis = int(self.rng.integers(0, len(shape)))
        d = shape[axis]
        count = int(self.rng.integers(1, 6))
        idx = self.rng.integers(-d, d, count)  # repeated and negative indices
        out = shape[:axis] + (count,) + shape[axis + 1:]
        return self.emit(f"take(v{k}, {idx.tolist()}, axis={axis})",
                         lambda vs, k=k: fg.take(vs[k], idx, axis=axis), out)

    def op_matmul(self):
        k = self.pick(2)
        if k is None:
            return self.op_unary()
        shape = self.shapes[k]
        n = int(self.rng.integers(1, 5))
        w = self.add_input((shape[-1], n))
        return self.emit(f"v{k} @ v{w}", lambda vs, k=k, w=w: vs[k] @ vs[w], shape[:-1] + (n,))

    def op_composite(self):
        k = self.pick(1)
        shape = self.shapes[k]
        name = self.rng.choice(["softmax", "log_softmax", "layer_norm", "cross_entropy"])
        if name == "cross_entropy" and len(shape) >= 2:
            labels = self.rng.integers(0, shape[-1], shape[:-1])
            return self.emit(f"cross_entropy(v{k}, {labels.tolist()})",
                             lambda vs, k=k: fg.cross_entropy(vs[k], labels), ())
        if name == "layer_norm" and shape[-1] > 1:
            return self.emit(f"layer_norm(v{k})", lambda vs, k=k: fg.layer_norm(vs[k]), shape)
        f = fg.log_softmax if name == "log_softmax" else fg.softmax
        return self.emit(f"{name}(v{k})", lambda vs, k=k: f(vs[k]), shape)


def random_program(seed: int, steps=None) -> Program:
    g = _Gen(seed)
    for _ in range(int(g.rng.integers(1, 3))):
        g.add_input(_shape(g.rng))
    for _ in range(steps or int(g.rng.integers(2, 8))):
        g.step()
    if g.rng.random() < 0.25:  # sometimes float64 throughout
        g.program.args = [a.astype(np.float64) for a in g.program.args]
    return g.program
