"""PyTorch eager (torch.optim) and torch.compile of the whole step function, on 2 threads."""
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
        self.p = {k: torch.from_numpy(v.copy()).to(dev).requires_grad_(True)
                  for k, v in params.items()}
        self.x = torch.from_numpy(x).to(dev)
        self.y = torch.from_numpy(y).to(dev)
        ps = list(self.p.values())
        if w.optimizer == "sgd":
            self.opt = torch.optim.SGD(ps, lr=w.lr)
        else:
            self.opt = torch.optim.Adam(ps, lr=w.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
        self.fn = self.make_step()

    def make_step(self):
        w, p, opt = self.workload, self.p, self.opt

        def train_step(x, y):
            opt.zero_grad(set_to_none=True)
            loss = model_loss(w, p, x, y)
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
