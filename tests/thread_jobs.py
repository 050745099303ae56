"""Programs trained on 1, 2 and 3 threads in a fresh process (tests/test_threads.py runs this
with NUMBA_NUM_THREADS=3, so the pool has three workers even on a two-core machine).

Prints one JSON line: per thread count, a SHA-256 of every loss and parameter byte, and which
kinds of call the schedule split over workers (so the test knows the comparison covered them).
"""
import hashlib
import json
import os
import re
import sys

import tempfile

import numpy as np

import fusegrad as fg
from fusegrad.compiler.codegen import cpu

# thresholds low enough that these small models split every kind of call (what is tested is
# that splitting never changes a bit, not where it starts to pay); a fresh program cache, since
# its key does not know the thresholds were changed
cpu.PARALLEL_MIN_BYTES = cpu.PARALLEL_MIN_FLOPS = 1 << 16
cpu.GEMM_MIN_FLOPS, cpu.GEMM_TILE_FLOPS, cpu.GEMM_TILE_EDGE = 1 << 16, 1 << 14, 16
os.environ["FUSEGRAD_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusegrad-thread-jobs-")

BATCH = 300  # not a multiple of the 8 column-reduction chunks, nor of 2 or 3 workers


def mlp_loss(p, x, y):
    h = fg.gelu(fg.layer_norm(x @ p["w1"] + p["b1"]) * p["g"])
    h = fg.relu(h @ p["w2"] + p["b2"])
    return fg.cross_entropy(h @ p["w3"] + p["b3"], y)


def mlp_params():
    r = np.random.default_rng(1)
    return {"w1": (r.standard_normal((256, 320)) * 0.06).astype(np.float32),
            "b1": np.zeros(320, np.float32), "g": np.ones(320, np.float32),
            "w2": (r.standard_normal((320, 288)) * 0.06).astype(np.float32),
            "b2": np.zeros(288, np.float32),
            "w3": (r.standard_normal((288, 10)) * 0.06).astype(np.float32),
            "b3": np.zeros(10, np.float32)}


def rnn_loss(p, xs, y):
    """fg.scan: the body's kernels split over the workers too, on every pass."""
    def cell(h, x):
        h = fg.tanh(x @ p["wx"] + h @ p["wh"] + p["b"])
        return h, None

    h, _ = fg.scan(cell, np.zeros((xs.shape[1], 256), np.float32), xs)
    return fg.cross_entropy(h @ p["wo"], y)


def rnn_params():
    r = np.random.default_rng(2)
    return {"wx": (r.standard_normal((64, 256)) * 0.1).astype(np.float32),
            "wh": (r.standard_normal((256, 256)) * 0.05).astype(np.float32),
            "b": np.zeros(256, np.float32),
            "wo": (r.standard_normal((256, 10)) * 0.1).astype(np.float32)}


def cnn_loss(p, x, y):
    """Unfold, fold, pooling, bias broadcasts: the library's calls split over the workers."""
    h = fg.max_pool2d(fg.relu(fg.conv2d(x, p["k1"], 1, 1, bias=p["c1"])), 2)
    h = fg.max_pool2d(fg.relu(fg.conv2d(h, p["k2"], 1, 1, bias=p["c2"])), 2)
    h = fg.reshape(h, (x.shape[0], 16 * 7 * 7))
    return fg.cross_entropy(h @ p["w"], y)


def cnn_params():
    r = np.random.default_rng(3)
    return {"k1": (r.standard_normal((8, 1, 3, 3)) * 0.3).astype(np.float32),
            "c1": np.zeros(8, np.float32),
            "k2": (r.standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32),
            "c2": np.zeros(16, np.float32),
            "w": (r.standard_normal((16 * 7 * 7, 10)) * 0.03).astype(np.float32)}


def run(n_threads):
    fg.set_num_threads(n_threads)
    r = np.random.default_rng(0)
    digest = hashlib.sha256()
    split = set()
    # (SGD for the RNN: Adam's update of a gradient near zero is +-lr whatever its rounding,
    # too coarse for the interpreter cross-check)
    cases = [(mlp_loss, mlp_params, fg.optim.AdamW(lr=1e-3, weight_decay=0.01),
              (r.standard_normal((BATCH, 256)).astype(np.float32), r.integers(0, 10, BATCH))),
             (rnn_loss, rnn_params, fg.optim.SGD(lr=0.1, momentum=0.9),
              (r.standard_normal((4, BATCH, 64)).astype(np.float32), r.integers(0, 10, BATCH))),
             (cnn_loss, cnn_params, fg.optim.SGD(lr=0.05, momentum=0.9),
              (r.standard_normal((37, 1, 28, 28)).astype(np.float32), r.integers(0, 10, 37)))]
    for loss_fn, make, optimizer, batch in cases:
        params = make()
        step = fg.train_step(loss_fn, optimizer)
        for _ in range(3):
            digest.update(np.float32(step(params, *batch)).tobytes())
        for k in sorted(params):
            digest.update(params[k].tobytes())
        for line in step.source().splitlines():
            if "split over up to" in line:
                split.add(re.sub(r"_[0-9a-f]{12}$|_f32.*$", "", line.split()[2].split("(")[0]))
    return digest.hexdigest(), sorted(split)


if __name__ == "__main__":
    counts = [int(c) for c in sys.argv[1:]] or [1, 2, 3]
    out = {}
    for n in counts:
        out[n] = run(n)
    from fusegrad.runtime import threads
    print(json.dumps({"results": out, "layer": threads.layer(),
                      "pool": int(os.environ.get("NUMBA_NUM_THREADS", "0"))}))
