"""What the examples share beyond fg.plot_history: their options, held-out metrics, a
confusion matrix."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def arguments(description: str) -> argparse.Namespace:
    """--quick (a short run on a slice: seconds) and --out DIR (where the PNGs go)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a short run on a few hundred samples: checks that it all works")
    parser.add_argument("--out", default="plots", help="folder for the PNG plots (made if "
                                                       "missing; default ./plots)")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return args


def loss_and_accuracy(logits, labels) -> tuple[float, float]:
    """Mean softmax cross-entropy and accuracy of logits (n, classes) for integer labels, in
    NumPy (the held-out evaluation, outside the compiled step)."""
    shifted = logits - logits.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    loss = float(-logp[np.arange(len(labels)), labels].mean())
    return loss, float(np.mean(logits.argmax(1) == labels))


def confusion(y_true, y_pred, classes: int) -> np.ndarray:
    """counts[t, p]: how often class t was predicted as p."""
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return counts


def plot_confusion(y_true, y_pred, names, path, title: str, dpi: int = 80) -> str:
    """A PNG of the confusion matrix, rows the true class, each row as fractions of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = confusion(y_true, y_pred, len(names))
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=dpi)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for t in range(len(names)):
        for p in range(len(names)):
            if counts[t, p]:
                ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if share[t, p] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
