"""PyTorch eager (torch.optim) and torch.compile of the whole step function, on 2 threads.

The dense and conv workloads are written in torch.nn.functional on a dict of parameters; the
LSTM workload is nn.Embedding -> nn.LSTM -> nn.Linear, as a user writes it, its parameters
set from the shared initial values (workloads.py gives the mapping)."""
from __future__ import annotations

import os

from benchmarks.contenders import Contender, Unavailable
from benchmarks.workloads import ADAM_BETAS, ADAM_EPS, LN_EPS

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

THREADS = int(os.environ.get("BENCH_THREADS", "0") or 0) or 2   # run.py --threads N


def model_loss(w, p, x, y):
    """The workload's loss in torch.nn.functional, same layouts as the other contenders."""
    if w.kind in ("mlp", "ln_mlp"):
        n_dense = len(w.sizes) - 1
        h = x
        for i in range(n_dense):
            h = torch.addmm(p[f"b{i}"], h, p[f"w{i}"])
            if i < n_dense - 1:
                if w.kind == "mlp":
                    h = F.relu(h)
                else:
                    h = F.layer_norm(h, h.shape[-1:], p[f"g{i}"], p[f"beta{i}"], eps=LN_EPS)
                    h = F.gelu(h, approximate="tanh")
        return F.cross_entropy(h, y)
    c = w.cnn
    h = x
    for i in range(len(c["channels"])):
        h = F.conv2d(h, p[f"conv{i}"], p[f"convb{i}"], padding=c["padding"])
        h = F.max_pool2d(F.relu(h), c["pool"])
    h = h.reshape(h.shape[0], -1)
    return F.cross_entropy(torch.addmm(p["b"], h, p["w"]), y)


def lstm_model(w, params):
    """nn.Embedding -> nn.LSTM (time-major) -> nn.Linear, from the workload's parameters."""
    L = w.lstm
    V, E, H = L["vocab"], L["emb"], L["hidden"]

    class LSTMLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(V, E)
            self.lstm = torch.nn.LSTM(E, H)
            self.dec = torch.nn.Linear(H, V)

        def forward(self, ids):          # ids (steps, batch) -> logits (steps * batch, V)
            out, _ = self.lstm(self.emb(ids))   # h0 = c0 = 0
            return self.dec(out.reshape(-1, H))

    model = LSTMLM()
    # the workload stores weights for x @ w; torch's layers hold (out, in)
    mapping = {"emb.weight": params["emb"], "lstm.weight_ih_l0": params["w_ih"].T,
               "lstm.weight_hh_l0": params["w_hh"].T, "lstm.bias_ih_l0": params["b_ih"],
               "lstm.bias_hh_l0": params["b_hh"], "dec.weight": params["dec_w"].T,
               "dec.bias": params["dec_b"]}
    state = model.state_dict()
    assert set(state) == set(mapping), sorted(state)
    with torch.no_grad():
        for name, t in state.items():
            t.copy_(torch.from_numpy(mapping[name].copy()))
    return model


class TorchEager(Contender):
    name = "torch eager"

    def __init__(self, workload, device="cpu"):
        if torch is None:
            raise Unavailable("not installed")
        if device == "cuda" and not torch.cuda.is_available():
            raise Unavailable("no CUDA GPU for PyTorch")
        super().__init__(workload)
        self.device = device
        torch.set_num_threads(THREADS)

    def setup(self, params, x, y):
        w = self.workload
        dev = self.device
        if w.kind == "lstm":  # time-major tokens (nn.LSTM's default), flattened targets
            x, y = x.T.copy(), y.T.reshape(-1).copy()
            self.model = lstm_model(w, params).to(dev)
            ps = list(self.model.parameters())
            self.loss_fn = lambda xb, yb: F.cross_entropy(self.model(xb), yb)
        else:
            self.p = {k: torch.from_numpy(v.copy()).to(dev).requires_grad_(True)
                      for k, v in params.items()}
            ps = list(self.p.values())
            self.loss_fn = lambda xb, yb: model_loss(w, self.p, xb, yb)
        self.x = torch.from_numpy(x).to(dev)
        self.y = torch.from_numpy(y).to(dev)
        if w.optimizer == "sgd":
            self.opt = torch.optim.SGD(ps, lr=w.lr)
        else:
            self.opt = torch.optim.Adam(ps, lr=w.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
        self.fn = self.make_step()

    def make_step(self):
        loss_fn, opt = self.loss_fn, self.opt

        def train_step(x, y):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(x, y)
            loss.backward()
            opt.step()
            return loss.detach()

        return train_step

    def step(self):
        return self.fn(self.x, self.y)

    def sync(self, handle) -> None:
        if self.device == "cuda":  # kernels run asynchronously: time them to the end
            torch.cuda.synchronize()

    def loss_value(self, handle) -> float:
        return float(handle.item())

    def details(self) -> str:
        if self.device == "cuda":
            return torch.cuda.get_device_name()
        return f"{torch.get_num_threads()} threads"


class TorchCompile(TorchEager):
    """torch.compile of the whole step function: zero_grad, forward, backward, optimizer step.
    Whatever Dynamo does with backward() and the optimizer (graph breaks, compiled pieces)
    is what a user gets from compiling their step."""

    name = "torch.compile"

    def make_step(self):
        # each workload compiles its own step; earlier workloads' graphs are not reused
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()   # graph-break count of this workload only
        return torch.compile(super().make_step())

    def details(self) -> str:
        try:
            counters = torch._dynamo.utils.counters
            breaks = sum(counters["graph_break"].values())
            return f"{super().details()}, graph breaks {breaks}"
        except Exception:  # noqa: BLE001 - private API, only for the note
            return super().details()
