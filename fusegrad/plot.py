"""fg.plot_history: a PNG of a fg.fit history (matplotlib, the `examples` extra: optional)."""
from __future__ import annotations

import math

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("fg.plot_history draws with matplotlib, which is not installed: "
                          "pip install 'fusegrad[examples]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only: never opens a window or needs a display
    import matplotlib.pyplot as plt

    return plt


def smooth(values, window: int) -> np.ndarray:
    """Moving average over `window` steps (shorter at the start, so it starts at step 1)."""
    v = np.asarray(values, np.float64)
    if window <= 1 or len(v) < 2:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    n = np.minimum(np.arange(1, len(v) + 1), window)
    return (c[1:] - c[np.arange(1, len(v) + 1) - n]) / n


def plot_history(history: dict, path, title: str | None = None, eval_name: str = "eval",
                 dpi: int = 80) -> str:
    """Write a PNG of `history` (what fg.fit returns) to `path`; returns the path.

    Left: the loss of every step (faint), its moving average and the mean loss of each epoch,
    plus history["val_loss"] per epoch when present (a validation loss you recorded). Right,
    when history["eval"] has values: the eval_fn metric per epoch, labelled `eval_name`."""
    losses = history.get("loss")
    if not isinstance(history, dict) or not losses:
        raise ValueError("plot_history: history must be fg.fit's result with at least one step "
                         "in history['loss']")
    plt = _pyplot()
    evals = history.get("eval") or []
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(9 if evals else 5, 3.4), dpi=dpi,
                             squeeze=False)
    ax = axes[0][0]
    steps = np.arange(1, len(losses) + 1)
    epochs = len(history.get("epoch_loss", []))
    per_epoch = len(losses) / max(epochs, 1)
    ax.plot(steps, losses, color="tab:blue", alpha=0.2, linewidth=0.6)
    ax.plot(steps, smooth(losses, max(1, len(losses) // 50)), color="tab:blue",
            label="train (moving average)")
    ends = per_epoch * np.arange(1, epochs + 1)
    if epochs:
        ax.plot(ends, history["epoch_loss"], "o", color="tab:blue", markersize=4,
                label="train, epoch mean")
    val = history.get("val_loss") or []
    if val:
        ax.plot(per_epoch * np.arange(1, len(val) + 1), val, "o-", color="tab:orange",
                markersize=4, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    finite = [v for v in losses if math.isfinite(v)]
    if finite and max(finite) > 20 * max(min(finite), 1e-9) and min(finite) > 0:
        ax.set_yscale("log")  # a loss falling by orders of magnitude reads better on a log axis
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if evals:
        ax2 = axes[0][1]
        ax2.plot(np.arange(1, len(evals) + 1), evals, "o-", color="tab:green")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel(eval_name)
        ax2.grid(alpha=0.3)
        best = history.get("best_eval")
        if best is not None:
            ax2.axhline(best, color="grey", linestyle=":", linewidth=1)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
