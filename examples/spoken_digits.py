"""Spoken digits (the Free Spoken Digit Dataset as 13 MFCCs per frame) classified with fusegrad.

    python3 examples/spoken_digits.py            # full run: held-out accuracy >= 0.95
    python3 examples/spoken_digits.py --quick    # a few hundred utterances, one epoch

3,000 recordings of the digits 0-9 (6-92 frames each), padded or cropped to 48 frames with a
mask of the real ones. Two 1-D convolutions over time (fg.conv1d), then a masked mean and max
over the real frames, dropout, and a dense layer. 20 % of the utterances, stratified by digit,
are held out for testing. Writes the loss curves and the confusion matrix as PNGs into --out.
"""
import time

import numpy as np

import datasets  # examples/datasets.py (also puts this checkout's fusegrad on the path)
import plots
import fusegrad as fg

args = plots.arguments(__doc__.splitlines()[0])
started = time.perf_counter()
sequences, labels = datasets.spoken_digits()
FRAMES, COEFFS = 48, sequences[0].shape[1]  # 99 % of the utterances are at most 37 frames


def pad(seqs):
    """(N, COEFFS, FRAMES) channels-first arrays, zero after each utterance (cropped to
    FRAMES), and (N, 1, FRAMES) masks: 1 on real frames."""
    x = np.zeros((len(seqs), COEFFS, FRAMES), np.float32)
    mask = np.zeros((len(seqs), 1, FRAMES), np.float32)
    for i, s in enumerate(seqs):
        n = min(len(s), FRAMES)
        x[i, :, :n] = s[:n].T
        mask[i, 0, :n] = 1
    return x, mask


# stratified split: every digit gives 20 % of its utterances to the test set
rng = np.random.default_rng(0)
test = np.concatenate([rng.permutation(np.flatnonzero(labels == d))[:len(labels) // 50]
                       for d in range(10)])
train = np.setdiff1d(np.arange(len(labels)), test)
if args.quick:
    train, test = rng.permutation(train)[:320], test[:200]
x, mask = pad(sequences)
# MFCCs on very different scales (the first is ~-300..0): each coefficient standardised over
# the real frames of the training utterances
real = mask[train, 0].astype(bool)
frames = x[train].transpose(0, 2, 1)[real]
mean, std = frames.mean(0), frames.std(0)
x = (x - mean[None, :, None]) / std[None, :, None] * mask
x_train, m_train, y_train = x[train], mask[train], labels[train]
x_test, m_test, y_test = x[test], mask[test], labels[test]

WIDTH, KERNEL = 64, 5
BATCH, EPOCHS = (32, 1) if args.quick else (32, 15)


def he(*shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


params = {"c1": he(WIDTH, COEFFS, KERNEL, fan_in=COEFFS * KERNEL),
          "c1_b": np.zeros(WIDTH, np.float32),
          "c2": he(WIDTH, WIDTH, KERNEL, fan_in=WIDTH * KERNEL),
          "c2_b": np.zeros(WIDTH, np.float32),
          "out": he(2 * WIDTH, 10, fan_in=2 * WIDTH) * 0.5, "out_b": np.zeros(10, np.float32)}


def model(p, x, mask, training):
    # padding keeps the length; multiplying by the mask keeps padded frames at 0 between layers
    h = fg.relu(fg.conv1d(x, p["c1"], padding=KERNEL // 2, bias=p["c1_b"])) * mask
    h = fg.relu(fg.conv1d(h, p["c2"], padding=KERNEL // 2, bias=p["c2_b"])) * mask
    mean = fg.sum(h, axis=2) / fg.sum(mask, axis=2)  # over the real frames only
    peak = fg.max(h, axis=2)  # after ReLU every value is >= 0, so padded zeros never win
    features = fg.dropout(fg.concatenate([mean, peak], axis=1), 0.3, training=training)
    return features @ p["out"] + p["out_b"]


steps_per_epoch = len(x_train) // BATCH
lr = fg.optim.schedules.cosine(3e-3, EPOCHS * steps_per_epoch, min_lr=1e-4)
step = fg.train_step(lambda p, x, m, y: fg.cross_entropy(model(p, x, m, True), y),
                     fg.optim.Adam(lr=lr, weight_decay=1e-4))
predict = fg.jit(lambda p, x, m: model(p, x, m, False))
val_loss = []


def evaluate(p):
    """Held-out accuracy; records the held-out loss too (for the curves)."""
    logits = predict(p, x_test, m_test)
    loss, accuracy = plots.loss_and_accuracy(logits, y_test)
    val_loss.append(loss)
    return accuracy


def batches():
    order = rng.permutation(len(x_train))[:steps_per_epoch * BATCH]
    for idx in order.reshape(steps_per_epoch, BATCH):
        yield x_train[idx], m_train[idx], y_train[idx]


history = fg.fit(step, params, batches, epochs=EPOCHS, eval_fn=evaluate, mode="max")
history["val_loss"] = val_loss
wall = time.perf_counter() - started
accuracy = history["eval"][-1]
print(f"held-out accuracy {accuracy:.4f} ({len(y_test)} utterances), loss {val_loss[-1]:.4f}")
print(f"step {1e3 * np.median(history['step_seconds']):.2f} ms (median over epochs; "
      f"{history['samples_per_second']:,.0f} utterances/s over the run), compile "
      f"{history['compile_seconds']:.1f} s, wall {wall:.0f} s")
curves = fg.plot_history(history, f"{args.out}/spoken_digits_loss.png",
                         eval_name="held-out accuracy",
                         title=f"Spoken digits (MFCC conv1d): held-out accuracy {accuracy:.3f}")
pred = predict(params, x_test, m_test).argmax(1)
matrix = plots.plot_confusion(y_test, pred, [str(d) for d in range(10)],
                              f"{args.out}/spoken_digits_confusion.png",
                              f"Spoken digits, held-out ({len(y_test)} utterances)")
print(f"plots: {curves}, {matrix}")
