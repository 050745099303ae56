"""fg.fit: history, early stopping that restores the best parameters, generator data, aux steps,
non-finite losses surfaced with epoch and batch, and the digits MLP trained end to end."""
import numpy as np
import pytest

import fusegrad as fg


def loss_fn(params, x, y):
    h = fg.tanh(x @ params["w1"] + params["b1"])
    return fg.cross_entropy(h @ params["w2"] + params["b2"], y)


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.normal(size=(4, 6)) * 0.5).astype(np.float32),
        "b1": np.zeros(6, np.float32),
        "w2": (rng.normal(size=(6, 3)) * 0.5).astype(np.float32),
        "b2": np.zeros(3, np.float32),
    }


def batches(n, seed=1):
    rng = np.random.default_rng(seed)
    return [((rng.normal(size=(8, 4)) * 2).astype(np.float32), rng.integers(0, 3, 8))
            for _ in range(n)]


def snapshot(params):
    return {k: v.copy() for k, v in params.items()}


def assert_params_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


# ---- history -----------------------------------------------------------------------------------


def test_history_matches_a_manual_loop():
    data = batches(4)
    params = make_params()
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=0.01))
    evals = []

    def eval_fn(p):
        evals.append(float(fg.jit(loss_fn)(p, *data[0])))
        return evals[-1]

    history = fg.fit(step, params, data, epochs=3, eval_fn=eval_fn, progress=False)

    manual = make_params()
    manual_step = fg.train_step(loss_fn, fg.optim.Adam(lr=0.01))
    losses = [float(manual_step(manual, x, y)) for _ in range(3) for x, y in data]
    assert_params_equal(params, manual)
    assert history["loss"] == losses
    assert len(history["epoch_loss"]) == 3
    for e in range(3):
        assert history["epoch_loss"][e] == pytest.approx(np.mean(losses[4 * e:4 * e + 4]))
    assert history["eval"] == evals and len(evals) == 3
    assert history["epoch_loss"][-1] < history["epoch_loss"][0]
    assert history["steps_per_second"] > 0 and history["samples_per_second"] > 0
    assert "stopped_early" not in history and step.state["step"] == 12


def test_history_without_eval_and_bare_array_batches():
    def loss(params, x):
        return fg.mean((x @ params["w1"]) ** 2)

    params = {"w1": np.ones((4, 2), np.float32)}
    data = [np.full((3, 4), 0.1 * i, np.float32) for i in range(1, 4)]  # batches that are arrays
    history = fg.fit(fg.train_step(loss, fg.optim.SGD(lr=0.1)), params, data, epochs=2,
                     progress=False)
    assert len(history["loss"]) == 6 and history["eval"] == []
    assert len(history["epoch_loss"]) == 2


# ---- early stopping ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode, metrics, best_epoch, stop_epoch", [
    ("min", [5.0, 3.0, 1.0, 2.0, 4.0, 0.5, 0.1], 3, 5),
    ("max", [0.1, 0.7, 0.9, 0.8, 0.9, 0.95, 1.0], 3, 5),  # a tie is no improvement
    ("min", [3.0, 2.0, 2.5, 1.0, 1.5, 1.7, 1.8], 4, 6),
])
def test_early_stopping_restores_the_best_parameters(mode, metrics, best_epoch, stop_epoch):
    params = make_params()
    step = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1, momentum=0.9))
    seen = []  # the parameters as eval_fn saw them, one snapshot per epoch

    def eval_fn(p):
        seen.append(snapshot(p))
        return metrics[len(seen) - 1]

    history = fg.fit(step, params, batches(3), epochs=len(metrics), eval_fn=eval_fn,
                     patience=2, mode=mode, progress=False)
    assert history["stopped_early"] == stop_epoch
    assert len(seen) == stop_epoch and history["eval"] == metrics[:stop_epoch]
    assert history["best_eval"] == metrics[best_epoch - 1]
    assert len(history["loss"]) == 3 * stop_epoch
    assert_params_equal(params, seen[best_epoch - 1])
    assert not np.array_equal(params["w1"], seen[-1]["w1"])  # really rolled back


def test_patience_not_exhausted_restores_best_at_the_end():
    params = make_params()
    metrics = [3.0, 1.0, 2.0]
    seen = []

    def eval_fn(p):
        seen.append(snapshot(p))
        return metrics[len(seen) - 1]

    history = fg.fit(fg.train_step(loss_fn, fg.optim.SGD(lr=0.1)), params, batches(2),
                     epochs=3, eval_fn=eval_fn, patience=5, progress=False)
    assert "stopped_early" not in history and history["best_eval"] == 1.0
    assert_params_equal(params, seen[1])


def test_bad_arguments():
    step = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1))
    with pytest.raises(ValueError, match="eval_fn"):
        fg.fit(step, make_params(), batches(1), patience=2, progress=False)
    with pytest.raises(ValueError, match="mode"):
        fg.fit(step, make_params(), batches(1), eval_fn=lambda p: 0.0, mode="best",
               progress=False)


# ---- data sources and aux ----------------------------------------------------------------------


def test_data_as_a_callable_returning_a_generator():
    data = batches(3)
    calls = []

    def epoch_data():
        calls.append(1)
        for x, y in data:
            yield x, y

    params = make_params()
    history = fg.fit(fg.train_step(loss_fn, fg.optim.Adam(lr=0.01)), params, epoch_data,
                     epochs=3, progress=False)
    assert len(calls) == 3 and len(history["loss"]) == 9
    reference = make_params()
    fg.fit(fg.train_step(loss_fn, fg.optim.Adam(lr=0.01)), reference, data, epochs=3,
           progress=False)
    assert_params_equal(params, reference)


def test_has_aux_step_in_fit():
    def loss(params, x, y):
        logits = fg.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
        return fg.cross_entropy(logits, y), {"logits": logits}

    step = fg.train_step(loss, fg.optim.Adam(lr=0.01), has_aux=True)
    params = make_params()
    history = fg.fit(step, params, batches(2), epochs=2, progress=False)
    assert len(history["loss"]) == 4 and all(isinstance(v, float) for v in history["loss"])
    # the same losses and parameters as the step without aux, to float32 rounding: returning
    # the logits changes which values the compiled step keeps, so its kernels (and the order
    # of float32 sums) may differ
    plain = make_params()
    plain_history = fg.fit(fg.train_step(loss_fn, fg.optim.Adam(lr=0.01)), plain, batches(2),
                           epochs=2, progress=False)
    np.testing.assert_allclose(history["loss"], plain_history["loss"], rtol=1e-6)
    for k in params:
        np.testing.assert_allclose(params[k], plain[k], rtol=1e-5, atol=1e-7, err_msg=k)
    loss_value, aux = step(params, *batches(1)[0])  # the step itself returns (loss, aux)
    assert aux["logits"].shape == (8, 3) and np.ndim(loss_value) == 0


def test_progress_bar_runs(capsys):
    params = make_params()
    history = fg.fit(fg.train_step(loss_fn, fg.optim.Adam(lr=0.01)), params, batches(2),
                     epochs=2, eval_fn=lambda p: 1.0, progress=True)
    assert len(history["loss"]) == 4
    assert "epoch 2: loss" in capsys.readouterr().out


# ---- non-finite losses -------------------------------------------------------------------------


def test_non_finite_loss_names_epoch_and_batch_and_keeps_params():
    def loss(params, x, y):
        return loss_fn(params, x, y) + 1e-3 * fg.mean(x * x)  # an inf in x reaches the loss

    data = batches(4)
    poisoned = data[2][0].copy()
    poisoned[0, 0] = np.inf
    before_bad = {}

    def epoch_data(epoch=[0]):
        epoch[0] += 1
        for i, (x, y) in enumerate(data):
            if epoch[0] == 2 and i == 2:
                before_bad.update(snapshot(params))  # the step has not run yet
                yield poisoned, y
            else:
                yield x, y

    params = make_params()
    step = fg.train_step(loss, fg.optim.Adam(lr=0.01))
    with pytest.raises(fg.NonFiniteLossError) as info:
        fg.fit(step, params, epoch_data, epochs=3, progress=False)
    message = str(info.value)
    assert "epoch 2" in message and "batch 3" in message and "step 7" in message
    assert_params_equal(params, before_bad)
    assert step.state["step"] == 6


# ---- end to end --------------------------------------------------------------------------------


def test_fit_trains_an_mlp_on_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x_train, y_train = x[order[:1400]], y[order[:1400]]
    x_test, y_test = x[order[1400:]], y[order[1400:]]

    rng = np.random.default_rng(1)
    sizes = (64, 128, 128, 10)
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"w{i}"] = (rng.normal(size=(n_in, n_out)) * np.sqrt(2 / n_in)).astype(np.float32)
        params[f"b{i}"] = np.zeros(n_out, np.float32)

    def logits(p, x):
        h = fg.relu(x @ p["w0"] + p["b0"])
        h = fg.relu(h @ p["w1"] + p["b1"])
        return h @ p["w2"] + p["b2"]

    predict = fg.jit(logits)

    def accuracy(p):
        return float(np.mean(np.argmax(predict(p, x_test), axis=1) == y_test))

    def epoch_data():
        for b in np.split(rng.permutation(len(x_train)), 28):
            yield x_train[b], y_train[b]

    step = fg.train_step(lambda p, x, y: fg.cross_entropy(logits(p, x), y),
                         fg.optim.Adam(lr=3e-3))
    history = fg.fit(step, params, epoch_data, epochs=4, eval_fn=accuracy, patience=2,
                     mode="max", progress=False)
    assert history["best_eval"] >= 0.93
    assert accuracy(params) == history["best_eval"]
    assert history["epoch_loss"][-1] < history["epoch_loss"][0] / 3


# ---- throughput --------------------------------------------------------------------------------


class FakeClock:
    """Stands in for fit's `time` module: the clock moves only when a fake step says so."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


def test_throughput_leaves_out_the_compiling_first_call(monkeypatch):
    import sys

    clock = FakeClock()
    monkeypatch.setattr(sys.modules["fusegrad.fit"], "time", clock)
    calls = []

    def step(params, x):  # a callable that is no TrainStep: its first call is the compile
        calls.append(1)
        clock.now += 30.0 if len(calls) == 1 else 0.01
        return 1.0

    data = [np.zeros((4, 2), np.float32)] * 5  # batches of 4 samples
    history = fg.fit(step, {}, data, epochs=2, progress=False)
    assert history["compile_seconds"] == pytest.approx(30.0)
    # 9 steady steps of 0.01 s: 100 steps/s, 400 samples/s (with the compile: 0.3 steps/s)
    assert history["steps_per_second"] == pytest.approx(100.0)
    assert history["samples_per_second"] == pytest.approx(400.0)
    assert history["step_seconds"] == pytest.approx([0.01, 0.01])


def test_a_train_step_compiling_a_new_signature_is_left_out_too(monkeypatch):
    import sys

    clock = FakeClock()
    monkeypatch.setattr(sys.modules["fusegrad.fit"], "time", clock)
    real = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1))

    class Step:  # the real step, timed by the fake clock: a compiling call costs 5 s
        _programs = real._programs

        def __call__(self, params, x, y):
            before = len(real._programs)
            loss = real(params, x, y)
            clock.now += 5.0 if len(real._programs) != before else 0.5
            return loss

    x, y = batches(1, seed=2)[0]
    data = batches(3) + [(x[:3], y[:3])]  # the last batch smaller: a second signature
    history = fg.fit(Step(), make_params(), data, epochs=2, progress=False)
    assert history["compile_seconds"] == pytest.approx(10.0)  # two signatures, once each
    # steady: batches 2-3 of epoch 1 and all 4 of epoch 2, 0.5 s each
    assert history["steps_per_second"] == pytest.approx(2.0)
    assert history["samples_per_second"] == pytest.approx((5 * 8 + 3) / 3.0)
