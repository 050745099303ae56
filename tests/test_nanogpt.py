"""karpathy/nanoGPT (model.py: GPT, Block, CausalSelfAttention, MLP; configure_optimizers) ported
as written, at a tiny size, trained step for step against the same model in torch.

What the port needs and fusegrad now has, with no host-side workaround: AdamW with weight decay
on the 2-D parameters only (nanoGPT's two parameter groups, here one function of (path, array)),
`fg.split` of the qkv projection, the tensor methods (reshape, transpose, swapaxes), the causal
mask from fg.tril, tied input/output embeddings, and GELU (nn.GELU(), the erf form).
"""
import math

import numpy as np
import pytest

import fusegrad as fg

torch = pytest.importorskip("torch")
F = torch.nn.functional

N_EMBD, N_HEAD, N_LAYER, BLOCK, VOCAB = 8, 2, 2, 6, 13


def gpt_params(seed=0):
    rng = np.random.default_rng(seed)
    normal = lambda *s: rng.standard_normal(s) * 0.02  # noqa: E731
    proj_std = 0.02 / math.sqrt(2 * N_LAYER)  # nanoGPT's scaled init of c_proj
    blocks = [{"ln_1": {"weight": np.ones(N_EMBD), "bias": np.zeros(N_EMBD)},
               "attn": {"c_attn": {"weight": normal(3 * N_EMBD, N_EMBD),
                                   "bias": np.zeros(3 * N_EMBD)},
                        "c_proj": {"weight": rng.standard_normal((N_EMBD, N_EMBD)) * proj_std,
                                   "bias": np.zeros(N_EMBD)}},
               "ln_2": {"weight": np.ones(N_EMBD), "bias": np.zeros(N_EMBD)},
               "mlp": {"c_fc": {"weight": normal(4 * N_EMBD, N_EMBD), "bias": np.zeros(4 * N_EMBD)},
                       "c_proj": {"weight": rng.standard_normal((N_EMBD, 4 * N_EMBD)) * proj_std,
                                  "bias": np.zeros(N_EMBD)}}}
              for _ in range(N_LAYER)]
    return {"wte": normal(VOCAB, N_EMBD), "wpe": normal(BLOCK, N_EMBD), "h": blocks,
            "ln_f": {"weight": np.ones(N_EMBD), "bias": np.zeros(N_EMBD)}}


def linear(p, x):
    return x @ p["weight"].T + p["bias"]  # nn.Linear


def causal_self_attention(p, x):
    B, T, C = x.shape
    q, k, v = fg.split(linear(p["c_attn"], x), 3, axis=2)
    k = k.reshape(B, T, N_HEAD, C // N_HEAD).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
    q = q.reshape(B, T, N_HEAD, C // N_HEAD).transpose(0, 2, 1, 3)
    v = v.reshape(B, T, N_HEAD, C // N_HEAD).transpose(0, 2, 1, 3)
    att = (q @ k.swapaxes(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
    att = fg.where(fg.tril(np.ones((T, T), bool)), att, -np.inf)
    y = fg.softmax(att, axis=-1) @ v
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)
    return linear(p["c_proj"], y)


def gpt_loss(p, idx, targets):
    T = idx.shape[1]
    x = fg.embedding(idx, p["wte"]) + p["wpe"][:T]
    for b in p["h"]:
        x = x + causal_self_attention(b["attn"], fg.layer_norm(x, b["ln_1"]["weight"],
                                                                b["ln_1"]["bias"]))
        h = fg.layer_norm(x, b["ln_2"]["weight"], b["ln_2"]["bias"])
        x = x + linear(b["mlp"]["c_proj"], fg.gelu(linear(b["mlp"]["c_fc"], h)))
    x = fg.layer_norm(x, p["ln_f"]["weight"], p["ln_f"]["bias"])
    logits = x @ p["wte"].T  # weight tying: lm_head.weight is wte.weight
    return fg.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


class TorchGPT(torch.nn.Module):
    """The same model in torch, its parameters copied from `p`."""

    def __init__(self, p):
        super().__init__()
        t = lambda a: torch.nn.Parameter(torch.tensor(a))  # noqa: E731
        self.wte, self.wpe = t(p["wte"]), t(p["wpe"])
        self.blocks = torch.nn.ModuleList()
        for b in p["h"]:
            m = torch.nn.Module()
            m.ln_1, m.ln_2 = torch.nn.LayerNorm(N_EMBD), torch.nn.LayerNorm(N_EMBD)
            m.c_attn, m.attn_proj = torch.nn.Linear(N_EMBD, 3 * N_EMBD), torch.nn.Linear(N_EMBD, N_EMBD)
            m.c_fc, m.mlp_proj = torch.nn.Linear(N_EMBD, 4 * N_EMBD), torch.nn.Linear(4 * N_EMBD, N_EMBD)
            with torch.no_grad():
                for mod, src in ((m.ln_1, b["ln_1"]), (m.ln_2, b["ln_2"]),
                                 (m.c_attn, b["attn"]["c_attn"]), (m.attn_proj, b["attn"]["c_proj"]),
                                 (m.c_fc, b["mlp"]["c_fc"]), (m.mlp_proj, b["mlp"]["c_proj"])):
                    mod.weight.copy_(torch.tensor(src["weight"]))
                    mod.bias.copy_(torch.tensor(src["bias"]))
            self.blocks.append(m)
        self.ln_f = torch.nn.LayerNorm(N_EMBD)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte[idx] + self.wpe[:T]
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        for m in self.blocks:
            h = m.ln_1(x)
            q, k, v = m.c_attn(h).split(N_EMBD, dim=2)
            q, k, v = (z.view(B, T, N_HEAD, N_EMBD // N_HEAD).transpose(1, 2) for z in (q, k, v))
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
            y = (att @ v).transpose(1, 2).contiguous().view(B, T, N_EMBD)
            x = x + m.attn_proj(y)
            x = x + m.mlp_proj(F.gelu(m.c_fc(m.ln_2(x))))
        logits = self.ln_f(x) @ self.wte.T
        return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))

    def configure_optimizers(self, weight_decay, lr):
        """nanoGPT's: decay every parameter of 2 or more dimensions, none of the others."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def test_nanogpt_trains_like_torch_with_decay_on_matrices_only():
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        p = gpt_params()
        model = TorchGPT(p)
        opt = model.configure_optimizers(weight_decay=0.1, lr=1e-2)
        step = fg.train_step(gpt_loss, fg.optim.AdamW(
            1e-2, betas=(0.9, 0.95), weight_decay=lambda path, x: 0.1 if x.ndim >= 2 else 0.0))
        rng = np.random.default_rng(1)
        for _ in range(4):
            seq = rng.integers(0, VOCAB, (3, BLOCK + 1))
            idx, targets = seq[:, :-1].copy(), seq[:, 1:].copy()
            loss = step(p, idx, targets)
            opt.zero_grad()
            want = model(torch.tensor(idx), torch.tensor(targets))
            want.backward()
            opt.step()
            np.testing.assert_allclose(loss, want.item(), rtol=1e-9)
        np.testing.assert_allclose(p["wte"], model.wte.detach().numpy(), rtol=1e-8, atol=1e-11)
        np.testing.assert_allclose(p["h"][1]["mlp"]["c_fc"]["weight"],
                                   model.blocks[1].c_fc.weight.detach().numpy(), rtol=1e-8,
                                   atol=1e-11)
        np.testing.assert_allclose(p["h"][0]["ln_1"]["bias"],
                                   model.blocks[0].ln_1.bias.detach().numpy(), rtol=1e-8,
                                   atol=1e-11)
    finally:
        torch.set_default_dtype(saved)
