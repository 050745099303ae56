"""The benchmark workloads: what is trained, on what batch, with which optimizer.

A Workload holds only data (layer sizes, batch, optimizer, timing budget); every contender
builds its own step from it, so all of them do the same work from the same initial parameters.

    MLP 784-256-256-10, batch 128, SGD           "mlp-small"
    MLP 784-2048-2048-10, batch 512, SGD         "mlp-large"
    LayerNorm+GELU(tanh) MLP 512-1024x3-10, batch 256, Adam   "ln-mlp"
    CNN conv8-pool-conv16-pool-linear on 1x28x28, batch 64, SGD   "cnn"
    LSTM language model: vocab 64, embedding 64, LSTM hidden 128, 32 steps, batch 32, Adam  "lstm"

Conventions shared by every contender: softmax cross-entropy (mean over the batch), weights
N(0, 1/fan_in), zero biases, LayerNorm weight 1 / bias 0 (eps 1e-5), GELU in its tanh form,
SGD lr 0.01 without momentum, Adam lr 1e-3 (betas 0.9/0.999, eps 1e-8, torch's form).
Dense weights are stored (in, out) and applied as x @ w + b; conv weights (O, C, kh, kw).

The LSTM language model ("lstm"), character-level: tokens (batch, steps + 1) int64, uniform over
the vocabulary; the inputs are tokens[:, :-1] (batch_data's x), the targets tokens[:, 1:] (its y),
both (batch, steps). Embedding (vocab, emb) -> one LSTM layer (hidden H, h0 = c0 = 0) -> Linear
H -> vocab; loss = mean softmax cross-entropy over all batch x steps positions. The LSTM is
PyTorch's nn.LSTM: gates = x_t @ w_ih + b_ih + h_{t-1} @ w_hh + b_hh, split in the order
i, f, g, o; c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g), h_t = sigmoid(o) tanh(c_t).
Parameters, stored for x @ w as the other workloads: emb (vocab, emb) N(0, 1) (nn.Embedding's
init); w_ih (emb, 4H) and w_hh (H, 4H), N(0, 1/fan_in), gate blocks i, f, g, o along the columns
(nn.LSTM's weight_ih_l0 / weight_hh_l0 are their transposes); b_ih, b_hh (4H) zero (nn.LSTM's
bias_ih_l0 / bias_hh_l0, both kept so the mapping is exact); dec_w (H, vocab) N(0, 1/H), dec_b
zero (nn.Linear's weight is dec_w's transpose). Whether a contender runs time- or batch-major is
its own business. The hand-written contenders (NumPy, fusegrad, JAX) apply w_ih to all time
steps in one product before the recurrence, as nn.LSTM does on the CPU; only h @ w_hh is per step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SEED = 0
NUM_CLASSES = 10
LN_EPS = 1e-5
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str                      # "mlp" | "ln_mlp" | "cnn" | "lstm"
    title: str
    batch: int
    optimizer: str                 # "sgd" | "adam"
    lr: float
    sizes: tuple = ()              # dense layer widths, input first (mlp, ln_mlp)
    cnn: dict = field(default_factory=dict)   # conv geometry (cnn)
    lstm: dict = field(default_factory=dict)  # vocab, emb, hidden, steps (lstm)
    steps_per_round: int = 50      # steps timed back to back per contender per round
    rounds: int = 7

    # ---- data -------------------------------------------------------------------------------
    def input_shape(self) -> tuple:
        if self.kind == "cnn":
            c = self.cnn
            return (self.batch, c["in_channels"], c["size"], c["size"])
        if self.kind == "lstm":
            return (self.batch, self.lstm["steps"])
        return (self.batch, self.sizes[0])

    def batch_data(self):
        """(x float32, y int64 labels): one fixed batch, the same for every contender.
        For the LSTM: (input tokens, target tokens), both (batch, steps) int64, the targets the
        inputs shifted by one (tokens[:, :-1], tokens[:, 1:] of one (batch, steps + 1) draw)."""
        rng = np.random.default_rng(SEED + 1)
        if self.kind == "lstm":
            L = self.lstm
            tokens = rng.integers(0, L["vocab"], size=(self.batch, L["steps"] + 1))
            tokens = tokens.astype(np.int64)
            return tokens[:, :-1].copy(), tokens[:, 1:].copy()
        x = rng.standard_normal(self.input_shape(), dtype=np.float32)
        y = rng.integers(0, NUM_CLASSES, size=self.batch).astype(np.int64)
        return x, y

    def init_params(self) -> dict:
        """Fresh initial parameters (a dict of float32 arrays); call again for an identical copy."""
        rng = np.random.default_rng(SEED)

        def normal(shape, fan_in):
            return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

        params = {}
        if self.kind == "lstm":
            L = self.lstm
            V, E, H = L["vocab"], L["emb"], L["hidden"]
            params["emb"] = rng.standard_normal((V, E)).astype(np.float32)
            params["w_ih"] = normal((E, 4 * H), E)
            params["w_hh"] = normal((H, 4 * H), H)
            params["b_ih"] = np.zeros(4 * H, np.float32)
            params["b_hh"] = np.zeros(4 * H, np.float32)
            params["dec_w"] = normal((H, V), H)
            params["dec_b"] = np.zeros(V, np.float32)
            return params
        if self.kind in ("mlp", "ln_mlp"):
            last = len(self.sizes) - 2
            for i, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
                params[f"w{i}"] = normal((n_in, n_out), n_in)
                params[f"b{i}"] = np.zeros(n_out, np.float32)
                if self.kind == "ln_mlp" and i < last:
                    params[f"g{i}"] = np.ones(n_out, np.float32)
                    params[f"beta{i}"] = np.zeros(n_out, np.float32)
            return params
        c = self.cnn
        cin = c["in_channels"]
        for i, cout in enumerate(c["channels"]):
            params[f"conv{i}"] = normal((cout, cin, c["kernel"], c["kernel"]),
                                        cin * c["kernel"] ** 2)
            params[f"convb{i}"] = np.zeros(cout, np.float32)
            cin = cout
        feat = self.cnn_features()
        params["w"] = normal((feat, NUM_CLASSES), feat)
        params["b"] = np.zeros(NUM_CLASSES, np.float32)
        return params

    # ---- CNN geometry -------------------------------------------------------------------------
    def cnn_spatial(self) -> list[int]:
        """Spatial size entering each conv (convs keep size, each pool halves it)."""
        c, out, s = self.cnn, [], self.cnn["size"]
        for _ in c["channels"]:
            out.append(s)
            s //= c["pool"]
        return out

    def cnn_features(self) -> int:
        c = self.cnn
        return c["channels"][-1] * (self.cnn_spatial()[-1] // c["pool"]) ** 2

    # ---- the step's matrix products -----------------------------------------------------------
    def gemms(self) -> list[tuple[str, int, int, int, bool, bool]]:
        """(what, M, K, N, a_transposed, b_transposed) of every matrix product of one
        training step, (M, K) @ (K, N): forward, weight gradient and input gradient (none for
        the first layer's input). For the CNN these are the im2col GEMMs, the batch folded
        into one dimension; a transposed operand is read through a .T view, as the step does.
        For the LSTM (time steps T, batch B, n = T*B rows): the input projection of all steps
        at once, its weight gradient and its input gradient (to the embedding rows); per time
        step the hidden product h @ w_hh (T of them) and its input gradient dgates @ w_hh.T
        (T - 1: none reaches h0); w_hh's gradient as one product over all steps; the decoder's
        forward, weight and input gradients."""
        out = []
        if self.kind == "lstm":
            L = self.lstm
            V, E, H, T = L["vocab"], L["emb"], L["hidden"], L["steps"]
            n, b = T * self.batch, self.batch
            out.append(("x@w_ih", n, E, 4 * H, False, False))
            out += [(f"h@w_hh t{t}", b, H, 4 * H, False, False) for t in range(T)]
            out.append(("dec fwd", n, H, V, False, False))
            out.append(("dec dW", H, n, V, True, False))
            out.append(("dec dX", n, V, H, False, True))
            out += [(f"dh t{t}", b, 4 * H, H, False, True) for t in range(T - 1, 0, -1)]
            out.append(("dW_hh", H, n, 4 * H, True, False))
            out.append(("dW_ih", E, n, 4 * H, True, False))
            out.append(("dX emb", n, 4 * H, E, False, True))
            return out
        if self.kind in ("mlp", "ln_mlp"):
            b = self.batch
            for i, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
                out.append((f"fwd{i}", b, n_in, n_out, False, False))
                out.append((f"dW{i}", n_in, b, n_out, True, False))
                if i > 0:
                    out.append((f"dX{i}", b, n_out, n_in, False, True))
            return out
        c = self.cnn
        cin = c["in_channels"]
        for i, (cout, s) in enumerate(zip(c["channels"], self.cnn_spatial())):
            ckk, cols = cin * c["kernel"] ** 2, self.batch * s * s
            out.append((f"conv{i} fwd", cout, ckk, cols, False, False))
            out.append((f"conv{i} dW", cout, cols, ckk, False, True))
            if i > 0:
                out.append((f"conv{i} dX", ckk, cout, cols, True, False))
            cin = cout
        feat = self.cnn_features()
        out.append(("fc fwd", self.batch, feat, NUM_CLASSES, False, False))
        out.append(("fc dW", feat, self.batch, NUM_CLASSES, True, False))
        out.append(("fc dX", self.batch, NUM_CLASSES, feat, False, True))
        return out

    def gemm_flops(self) -> float:
        return float(sum(2 * m * k * n for _, m, k, n, _, _ in self.gemms()))


WORKLOADS = {
    w.name: w
    for w in (
        Workload("mlp-small", "mlp", "MLP 784-256-256-10, batch 128, SGD", batch=128,
                 optimizer="sgd", lr=0.01, sizes=(784, 256, 256, 10),
                 steps_per_round=200, rounds=9),
        Workload("mlp-large", "mlp", "MLP 784-2048-2048-10, batch 512, SGD", batch=512,
                 optimizer="sgd", lr=0.01, sizes=(784, 2048, 2048, 10),
                 steps_per_round=12, rounds=7),
        Workload("ln-mlp", "ln_mlp", "LayerNorm+GELU(tanh) MLP 512-1024x3-10, batch 256, Adam",
                 batch=256, optimizer="adam", lr=1e-3, sizes=(512, 1024, 1024, 1024, 10),
                 steps_per_round=30, rounds=7),
        Workload("cnn", "cnn", "CNN conv8-pool-conv16-pool-fc on 1x28x28, batch 64, SGD",
                 batch=64, optimizer="sgd", lr=0.01,
                 cnn=dict(in_channels=1, size=28, channels=(8, 16), kernel=3, padding=1,
                          pool=2),
                 steps_per_round=40, rounds=7),
        Workload("lstm", "lstm", "LSTM LM vocab 64, emb 64, hidden 128, 32 steps, batch 32, Adam",
                 batch=32, optimizer="adam", lr=1e-3,
                 lstm=dict(vocab=64, emb=64, hidden=128, steps=32),
                 steps_per_round=20, rounds=7),
    )
}
