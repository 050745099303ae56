"""A CNN on Fashion-MNIST (60,000 + 10,000 28x28 clothing images, 10 classes) with fusegrad.

    python3 examples/fashion_mnist_cnn.py            # full run: test accuracy >= 0.90
    python3 examples/fashion_mnist_cnn.py --quick    # a few hundred images, one epoch

conv 3x3 -> batch norm -> ReLU -> max pool, twice, then dropout and two dense layers, trained
with Adam and a cosine learning rate by fg.fit. Batch norm keeps running statistics (fg.assign
inside fg.batch_norm), which the evaluation (training=False) uses. Writes the loss curves and
the test set's confusion matrix as PNGs into --out.
"""
import time

import numpy as np

import datasets  # examples/datasets.py (also puts this checkout's fusegrad on the path)
import plots
import fusegrad as fg

args = plots.arguments(__doc__.splitlines()[0])
started = time.perf_counter()
(x_train, y_train), (x_test, y_test) = datasets.fashion_mnist()
if args.quick:  # a slice: checks the loader, the model and the plots in seconds
    x_train, y_train, x_test, y_test = x_train[:512], y_train[:512], x_test[:256], y_test[:256]
MEAN, STD = 72.94, 90.02  # of the training pixels (0..255): inputs centred and scaled


def prepare(images):
    return ((images.astype(np.float32) - MEAN) / STD)[:, None]  # (N, 1, 28, 28)


x_train, x_test = prepare(x_train), prepare(x_test)
C1, C2, HIDDEN = 32, 64, 128
BATCH, EPOCHS = (64, 1) if args.quick else (128, 5)
rng = np.random.default_rng(0)


def he(*shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def bn(channels):
    return {"weight": np.ones(channels, np.float32), "bias": np.zeros(channels, np.float32),
            "running_mean": np.zeros(channels, np.float32),
            "running_var": np.ones(channels, np.float32)}


params = {
    "conv1": he(C1, 1, 3, 3, fan_in=9), "bn1": bn(C1),
    "conv2": he(C2, C1, 3, 3, fan_in=9 * C1), "bn2": bn(C2),
    "fc1": he(7 * 7 * C2, HIDDEN, fan_in=7 * 7 * C2), "b1": np.zeros(HIDDEN, np.float32),
    "fc2": he(HIDDEN, 10, fan_in=HIDDEN) * 0.5, "b2": np.zeros(10, np.float32),
}


def block(x, w, norm, training):
    # no conv bias: batch norm's shift replaces it
    x = fg.batch_norm(fg.conv2d(x, w, padding=1), norm["weight"], norm["bias"],
                      norm["running_mean"], norm["running_var"], training=training)
    return fg.max_pool2d(fg.relu(x), 2)


def model(p, x, training):
    h = block(x, p["conv1"], p["bn1"], training)      # (N, C1, 14, 14)
    h = block(h, p["conv2"], p["bn2"], training)      # (N, C2, 7, 7)
    h = fg.dropout(h.reshape(h.shape[0], -1), 0.25, training=training)
    h = fg.dropout(fg.relu(h @ p["fc1"] + p["b1"]), 0.25, training=training)
    return h @ p["fc2"] + p["b2"]


steps_per_epoch = len(x_train) // BATCH  # whole batches only: one compiled signature
lr = fg.optim.schedules.cosine(2e-3, EPOCHS * steps_per_epoch, min_lr=5e-5)
step = fg.train_step(lambda p, x, y: fg.cross_entropy(model(p, x, True), y),
                     fg.optim.Adam(lr=lr))
predict = fg.jit(lambda p, x: model(p, x, False))
EVAL_CHUNK = 256 if args.quick else 1000  # one evaluation shape, compiled once


def logits_of(p, x):
    return np.concatenate([predict(p, x[i:i + EVAL_CHUNK]) for i in range(0, len(x), EVAL_CHUNK)])


val_loss = []


def evaluate(p):
    """Test accuracy; records the test loss too (for the curves)."""
    logits = logits_of(p, x_test)
    loss, accuracy = plots.loss_and_accuracy(logits, y_test)
    val_loss.append(loss)
    return accuracy


def batches():
    order = rng.permutation(len(x_train))[:steps_per_epoch * BATCH]
    for idx in order.reshape(steps_per_epoch, BATCH):
        yield x_train[idx], y_train[idx]


history = fg.fit(step, params, batches, epochs=EPOCHS, eval_fn=evaluate, mode="max")
history["val_loss"] = val_loss
wall = time.perf_counter() - started
accuracy = history["eval"][-1]
print(f"test accuracy {accuracy:.4f}, test loss {val_loss[-1]:.4f}")
print(f"step {1e3 * np.median(history['step_seconds']):.1f} ms (median over epochs; "
      f"{history['samples_per_second']:,.0f} samples/s over the run), compile "
      f"{history['compile_seconds']:.1f} s, wall {wall:.0f} s (loading and evaluation included)")
curves = fg.plot_history(history, f"{args.out}/fashion_mnist_loss.png", eval_name="test accuracy",
                         title=f"Fashion-MNIST CNN: test accuracy {accuracy:.3f}")
pred = logits_of(params, x_test).argmax(1)
matrix = plots.plot_confusion(y_test, pred, datasets.FASHION_CLASSES,
                              f"{args.out}/fashion_mnist_confusion.png",
                              f"Fashion-MNIST test set ({len(y_test):,} images)")
print(f"plots: {curves}, {matrix}")
