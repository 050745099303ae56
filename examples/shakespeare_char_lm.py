"""A character-level transformer language model on Shakespeare's works, with fusegrad.

    python3 examples/shakespeare_char_lm.py            # full run: validation <= 1.7 nats/char
    python3 examples/shakespeare_char_lm.py --quick    # a few steps on a slice of the text

A decoder-only transformer (pre-LayerNorm blocks: causal multi-head attention, GELU MLP) over
the 84 distinct characters of the 42 works, trained with AdamW (decay on matrices only), a
cosine learning rate and gradient clipping. The last 10 % of the text (the works last in name
order) is held out for validation. Then it writes a sample, one character at a time through a
compiled forward function (fg.jit), and the loss curves as a PNG into --out.
"""
import math
import time

import numpy as np

import datasets  # examples/datasets.py (also puts this checkout's fusegrad on the path)
import plots
import fusegrad as fg

args = plots.arguments(__doc__.splitlines()[0])
started = time.perf_counter()
text = datasets.shakespeare()
if args.quick:
    text = text[:200_000]
chars = sorted(set(text))
VOCAB = len(chars)
ids = np.frombuffer(text.encode("latin-1"), np.uint8)  # every character is ASCII here
lookup = np.zeros(256, np.int64)
lookup[[ord(c) for c in chars]] = np.arange(VOCAB)
ids = lookup[ids]
split = int(0.9 * len(ids))
train_ids, val_ids = ids[:split], ids[split:]

LAYERS, D, HEADS, BLOCK, BATCH = (2, 64, 4, 32, 16) if args.quick else (4, 128, 4, 128, 32)
STEPS, EPOCHS = (40, 1) if args.quick else (1400, 7)  # an "epoch" here: STEPS // EPOCHS steps
HD = D // HEADS
rng = np.random.default_rng(0)


def normal(*shape, std=0.02):
    return (rng.standard_normal(shape) * std).astype(np.float32)


def block_params():
    proj = 0.02 / math.sqrt(2 * LAYERS)  # GPT-2's scaled init of the residual projections
    return {"ln1": {"w": np.ones(D, np.float32), "b": np.zeros(D, np.float32)},
            "qkv": normal(D, 3 * D), "qkv_b": np.zeros(3 * D, np.float32),
            "proj": normal(D, D, std=proj), "proj_b": np.zeros(D, np.float32),
            "ln2": {"w": np.ones(D, np.float32), "b": np.zeros(D, np.float32)},
            "fc": normal(D, 4 * D), "fc_b": np.zeros(4 * D, np.float32),
            "fc2": normal(4 * D, D, std=proj), "fc2_b": np.zeros(D, np.float32)}


params = {"wte": normal(VOCAB, D), "wpe": normal(BLOCK, D),
          "blocks": [block_params() for _ in range(LAYERS)],
          "lnf": {"w": np.ones(D, np.float32), "b": np.zeros(D, np.float32)},
          "head": normal(D, VOCAB)}
CAUSAL = np.tril(np.ones((BLOCK, BLOCK), bool))


def attention(b, x):
    B, T, _ = x.shape
    q, k, v = fg.split(x @ b["qkv"] + b["qkv_b"], 3, axis=2)
    q, k, v = (t.reshape(B, T, HEADS, HD).transpose(0, 2, 1, 3) for t in (q, k, v))
    att = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(HD))
    att = fg.where(CAUSAL[:T, :T], att, -np.inf)
    y = (fg.softmax(att, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
    return y @ b["proj"] + b["proj_b"]


def logits(p, idx):
    x = fg.embedding(idx, p["wte"]) + p["wpe"][:idx.shape[1]]
    for b in p["blocks"]:
        x = x + attention(b, fg.layer_norm(x, b["ln1"]["w"], b["ln1"]["b"]))
        h = fg.gelu(fg.layer_norm(x, b["ln2"]["w"], b["ln2"]["b"]) @ b["fc"] + b["fc_b"])
        x = x + h @ b["fc2"] + b["fc2_b"]
    return fg.layer_norm(x, p["lnf"]["w"], p["lnf"]["b"]) @ p["head"]


def loss_fn(p, idx, targets):
    return fg.cross_entropy(logits(p, idx).reshape(-1, VOCAB), targets.reshape(-1))


def windows(source, starts):
    """(inputs, targets): BLOCK characters from each start, and the ones after them."""
    rows = source[starts[:, None] + np.arange(BLOCK + 1)]
    return rows[:, :-1], rows[:, 1:]


decay = lambda path, x: 0.1 if x.ndim >= 2 else 0.0  # noqa: E731  (nanoGPT: matrices only)
lr = fg.optim.schedules.cosine(2e-3, STEPS, min_lr=1e-4, warmup_steps=STEPS // 20)
step = fg.train_step(loss_fn, fg.optim.AdamW(lr=lr, weight_decay=decay, clip_norm=1.0))
val_loss_of = fg.jit(loss_fn)
# a fixed validation set: the same windows every epoch, so the curve compares like with like
val_batches = [windows(val_ids, s) for s in np.split(
    np.random.default_rng(1).integers(0, len(val_ids) - BLOCK - 1, BATCH * (4 if args.quick
                                                                           else 16)),
    4 if args.quick else 16)]


def validation_loss(p):
    return float(np.mean([val_loss_of(p, x, y) for x, y in val_batches]))


def batches():
    for _ in range(STEPS // EPOCHS):
        yield windows(train_ids, rng.integers(0, len(train_ids) - BLOCK - 1, BATCH))


history = fg.fit(step, params, batches, epochs=EPOCHS, eval_fn=validation_loss, mode="min")
train_seconds = time.perf_counter() - started

forward = fg.jit(logits)  # one compiled shape, (1, BLOCK): the sample is fed through it


def sample(p, prompt: str, length: int, temperature=0.8, seed=0) -> str:
    """Continue `prompt` character by character. The model is causal, so a context shorter
    than BLOCK is padded on the right and read at its last real position."""
    draw = np.random.default_rng(seed)
    out = [chars.index(c) for c in prompt]
    window = np.zeros((1, BLOCK), np.int64)
    for _ in range(length):
        context = out[-BLOCK:]
        window[0, :len(context)] = context
        z = forward(p, window)[0, len(context) - 1] / temperature
        prob = np.exp(z - z.max())
        out.append(int(draw.choice(VOCAB, p=prob / prob.sum())))
    return "".join(chars[i] for i in out)


t0 = time.perf_counter()
text_out = sample(params, "ROMEO.\n", 120 if args.quick else 600)
sample_seconds = time.perf_counter() - t0
print("---- sample (temperature 0.8) ----")
print(text_out)
print("----")
print(f"validation loss {history['eval'][-1]:.4f} nats/char "
      f"({history['eval'][-1] / math.log(2):.3f} bits/char), best {min(history['eval']):.4f}")
print(f"step {1e3 * np.median(history['step_seconds']):.0f} ms (median over epochs; "
      f"{BATCH * BLOCK * history['steps_per_second']:,.0f} characters/s over the run), compile "
      f"{history['compile_seconds']:.1f} s, training wall {train_seconds:.0f} s; sampling "
      f"{1e3 * sample_seconds / (len(text_out) - 7):.1f} ms/character")
history["val_loss"] = history["eval"]
curves = fg.plot_history(dict(history, eval=[]), f"{args.out}/shakespeare_loss.png",
                         title=f"Shakespeare char transformer: validation "
                               f"{history['eval'][-1]:.3f} nats/char")
print(f"plots: {curves}")
