"""Train an MLP (64-128-128-10, ReLU) on scikit-learn's handwritten digits with fusegrad.

    python examples/digits_mlp.py

fg.train_step compiles forward, backward and the Adam update into one step that updates the
parameters in place; fg.fit runs it over the epochs with a progress bar.
"""
import time

import numpy as np
from sklearn.datasets import load_digits

try:
    import fusegrad as fg
except ImportError:  # run from a checkout without installing
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import fusegrad as fg

# 1797 8x8 images, bundled with scikit-learn (no download); pixels 0..16 scaled to 0..1
digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)
rng = np.random.default_rng(0)
order = rng.permutation(len(x))
x_train, y_train = x[order[:1400]], y[order[:1400]]
x_test, y_test = x[order[1400:]], y[order[1400:]]


def init(sizes=(64, 128, 128, 10)):
    """He-initialised weights and zero biases: {"w0", "b0", "w1", ...}."""
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"w{i}"] = (rng.normal(size=(n_in, n_out)) * np.sqrt(2 / n_in)).astype(np.float32)
        params[f"b{i}"] = np.zeros(n_out, np.float32)
    return params


def model(params, x):
    h = fg.relu(x @ params["w0"] + params["b0"])
    h = fg.relu(h @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


@fg.train_step(optimizer=fg.optim.Adam(lr=3e-3))
def step(params, x, y):
    return fg.cross_entropy(model(params, x), y)


predict = fg.jit(model)


def accuracy(params):
    return float(np.mean(np.argmax(predict(params, x_test), axis=1) == y_test))


def batches(batch_size=50):
    """One epoch of shuffled mini-batches (fg.fit calls this again for every epoch)."""
    for idx in np.split(rng.permutation(len(x_train)), len(x_train) // batch_size):
        yield x_train[idx], y_train[idx]


step_times = []


def timed_step(params, x, y):
    start = time.perf_counter()
    loss = step(params, x, y)
    step_times.append(time.perf_counter() - start)
    return loss


params = init()
history = fg.fit(timed_step, params, batches, epochs=8, eval_fn=accuracy)  # prints each epoch

print("loss per epoch:", " ".join(f"{loss:.3f}" for loss in history["epoch_loss"]))
print(f"median step time: {1e3 * np.median(step_times[1:]):.2f} ms "
      f"(the first step, which compiles, took {1e3 * step_times[0]:.0f} ms)")
print(f"test accuracy: {accuracy(params):.3f}")
