"""fg.train_step: frozen parameters, checkpoints, in-place updates, randomness, non-finite losses,
aux outputs, the printed stages, and an MLP that really learns the digits."""
import numpy as np
import pytest

import fusegrad as fg

# ---- helpers -----------------------------------------------------------------------------------


def loss_fn(params, x, y):
    h = fg.tanh(x @ params["w1"] + params["b1"])
    return fg.cross_entropy(h @ params["w2"] + params["b2"], y)


def make_params(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.normal(size=(4, 6)) * 0.5).astype(dtype),
        "b1": (rng.normal(size=(6,)) * 0.1).astype(dtype),
        "w2": (rng.normal(size=(6, 3)) * 0.5).astype(dtype),
        "b2": np.zeros(3, dtype),
    }


def batches(n, dtype=np.float32, seed=1):
    rng = np.random.default_rng(seed)
    return [((rng.normal(size=(8, 4)) * 2).astype(dtype), rng.integers(0, 3, 8))
            for _ in range(n)]


def copy(tree):
    """Deep copy of a pytree of arrays (None kept)."""
    if isinstance(tree, dict):
        return {k: copy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(copy(v) for v in tree)
    return None if tree is None else np.array(tree, copy=True)


def assert_tree_equal(a, b):
    """Bitwise equality of two pytrees of arrays (same structure, dtypes and bytes)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_tree_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_tree_equal(x, y)
    elif a is None or isinstance(a, int):
        assert a == b
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def ref_adam(params, grads, m, v, t, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adam on the leaves that have a gradient (dicts updated in place)."""
    for k, g in grads.items():
        m[k] = b1 * m.get(k, np.zeros_like(g)) + (1 - b1) * g
        v[k] = b2 * v.get(k, np.zeros_like(g)) + (1 - b2) * g * g
        denom = np.sqrt(v[k]) / np.sqrt(1 - b2 ** t) + eps
        params[k] = params[k] - lr / (1 - b1 ** t) * (m[k] / denom)


# ---- frozen and integer parameters -------------------------------------------------------------


@pytest.mark.parametrize("how", ["pytree", "predicate"])
def test_frozen_parameters_bitwise_unchanged(how):
    params = make_params(np.float64)
    if how == "pytree":
        trainable = {"w1": False, "b1": True, "w2": True, "b2": False}
    else:
        seen = []

        def trainable(path, x):
            seen.append((path, x.shape))
            return path in ("params['b1']", "params['w2']")
    before = copy(params)
    ref, m, v = copy(params), {}, {}
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=0.01), trainable=trainable)
    for t, (x, y) in enumerate(batches(4, np.float64), start=1):
        grads = fg.grad(loss_fn)(ref, x, y)
        ref_adam(ref, {k: grads[k] for k in ("b1", "w2")}, m, v, t)
        step(params, x, y)
    for k in ("w1", "b2"):
        assert params[k].tobytes() == before[k].tobytes()
    for k in ("b1", "w2"):
        assert not np.array_equal(params[k], before[k])
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-12, atol=1e-14)
    state = step.state
    assert state["exp_avg"]["w1"] is None and state["exp_avg"]["b2"] is None
    assert state["exp_avg_sq"]["w1"] is None and state["exp_avg_sq"]["b2"] is None
    np.testing.assert_allclose(state["exp_avg"]["w2"], m["w2"], rtol=1e-12, atol=1e-15)
    if how == "predicate":
        assert ("params['w1']", (4, 6)) in seen and len({p for p, _ in seen}) == 4
    # the update part of the graph touches only the trained leaves
    update = step.ir("update")
    assert "exp_avg[params['w2']]" in update and "exp_avg[params['w1']]" not in update


def test_integer_leaves_are_never_trained():
    def loss(params, x, y):
        scale = fg.astype(params["counts"], "float32").sum()  # used, but not differentiable
        h = fg.tanh(x @ params["w1"] + params["b1"]) * scale
        return fg.cross_entropy(h @ params["w2"] + params["b2"], y)

    params = dict(make_params(), counts=np.array([1, 0, 0], np.int64))
    counts = params["counts"]
    step = fg.train_step(loss, fg.optim.SGD(lr=0.1, momentum=0.9))  # trainable=None: all
    for x, y in batches(3):
        step(params, x, y)
    assert params["counts"] is counts and params["counts"].tolist() == [1, 0, 0]
    assert step.state["momentum"]["counts"] is None
    assert step.state["momentum"]["w1"].shape == (4, 6)
    # even when named trainable explicitly
    step2 = fg.train_step(loss, fg.optim.SGD(lr=0.1), trainable=lambda path, x: True)
    step2(params, *batches(1)[0])
    assert params["counts"].tolist() == [1, 0, 0]


def test_nothing_trainable_or_bad_mask_raises():
    params = make_params()
    x, y = batches(1)[0]
    frozen = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1), trainable=lambda path, x: False)
    with pytest.raises(ValueError, match="no trainable"):
        frozen(params, x, y)
    bad = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1), trainable={"w1": True})
    with pytest.raises(ValueError, match="trainable="):
        bad(params, x, y)


# ---- checkpoints -------------------------------------------------------------------------------

OPTIMIZERS = {
    "adam": lambda: fg.optim.Adam(lr=0.01),
    "sgd_momentum": lambda: fg.optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_save_load_continue_equals_uninterrupted(opt, tmp_path):
    data = batches(6)
    straight = make_params()
    step = fg.train_step(loss_fn, OPTIMIZERS[opt]())
    for x, y in data:
        step(straight, x, y)

    # same object: 3 steps, save, wander off for 2 steps, load the checkpoint, finish
    params = make_params()
    resumed = fg.train_step(loss_fn, OPTIMIZERS[opt]())
    for x, y in data[:3]:
        resumed(params, x, y)
    path = tmp_path / "ckpt.npz"
    resumed.save(path)
    for x, y in data[4:]:
        resumed(params, x, y)
    resumed.load(path, params)
    assert resumed.state["step"] == 3
    for x, y in data[3:]:
        resumed(params, x, y)
    assert_tree_equal(params, straight)
    assert_tree_equal(resumed.state, step.state)

    # a fresh TrainStep and fresh (different) arrays, loaded from the checkpoint
    fresh_params = make_params(seed=42)
    fresh = fg.train_step(loss_fn, OPTIMIZERS[opt]())
    fresh.load(path, fresh_params)
    assert fresh.state["step"] == 3
    for x, y in data[3:]:
        fresh(fresh_params, x, y)
    assert_tree_equal(fresh_params, straight)
    assert_tree_equal(fresh.state, step.state)


def test_save_with_frozen_leaves_and_explicit_params(tmp_path):
    params = make_params()
    trainable = {"w1": True, "b1": False, "w2": True, "b2": False}
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=0.01), trainable=trainable)
    data = batches(4)
    for x, y in data[:2]:
        step(params, x, y)
    step.save(tmp_path / "c.npz", params)
    snapshot = copy(params)
    fresh = fg.train_step(loss_fn, fg.optim.Adam(lr=0.01), trainable=trainable)
    restored = make_params(seed=7)
    fresh.load(tmp_path / "c.npz", restored)
    assert_tree_equal(restored, snapshot)
    assert fresh.state["exp_avg"]["b1"] is None
    for x, y in data[2:]:
        step(params, x, y)
        fresh(restored, x, y)
    assert_tree_equal(restored, params)


def test_load_without_params_needs_structure(tmp_path):
    params = make_params()
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=0.01))
    step(params, *batches(1)[0])
    step.save(tmp_path / "c.npz")
    with pytest.raises(RuntimeError, match="params="):
        fg.train_step(loss_fn, fg.optim.Adam(lr=0.01)).load(tmp_path / "c.npz")


# ---- the MLP that must learn -------------------------------------------------------------------


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def mlp_params(rng, sizes=(64, 128, 128, 10)):
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"w{i}"] = (rng.normal(size=(n_in, n_out)) * np.sqrt(2 / n_in)).astype(np.float32)
        params[f"b{i}"] = np.zeros(n_out, np.float32)
    return params


def mlp(params, x):
    h = fg.relu(x @ params["w0"] + params["b0"])
    h = fg.relu(h @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def mlp_loss(params, x, y):
    return fg.cross_entropy(mlp(params, x), y)


def test_mlp_learns_digits():
    x_train, y_train, x_test, y_test = digits()
    rng = np.random.default_rng(0)
    params = mlp_params(rng)
    step = fg.train_step(mlp_loss, fg.optim.Adam(lr=3e-3))
    epoch_losses = []
    for epoch in range(4):
        order = rng.permutation(len(x_train))
        losses = [step(params, x_train[b], y_train[b]) for b in np.split(order, 28)]
        epoch_losses.append(np.mean(losses))
    accuracy = np.mean(np.argmax(fg.jit(mlp)(params, x_test), axis=1) == y_test)
    assert accuracy >= 0.93
    assert epoch_losses[-1] < epoch_losses[0] / 3
    assert len(step._programs) == 1


# ---- printed stages ----------------------------------------------------------------------------


def test_ir_stages():
    params = make_params()
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=0.01))
    with pytest.raises(RuntimeError):
        step.ir("step")
    step(params, *batches(1)[0])
    whole = step.ir("step")
    assert whole == step.ir()
    back, upd = whole.index("# ---- backward ----"), whole.index("# ---- update ----")
    assert whole.index("matmul") < back < upd
    assert "params['w1']" in whole and "exp_avg_sq[params['b2']]" in whole
    assert "tanh" in whole[:back]  # the forward part comes first

    update = step.ir("update")
    assert "# ---- update ----" in update and "# ---- backward ----" not in update
    body = update[update.index("# ---- update ----"):]
    assert "matmul" not in body and "tanh" not in body and "sqrt" in body

    forward = step.ir("forward")
    assert "tanh" in forward and "# ---- backward ----" not in forward
    assert "# ---- update ----" not in forward
    backward = step.ir("backward")
    assert "# ---- backward ----" in backward and "# ---- update ----" not in backward
    for bad in ("nonsense", "optimised", ""):
        with pytest.raises(ValueError, match="stage"):
            step.ir(bad)


def test_ir_names_inputs_after_the_loss_arguments_with_a_key():
    def loss(params, x, y, key=None):
        return loss_fn(params, fg.dropout(x, 0.25, key=key), y)

    step = fg.train_step(loss, fg.optim.SGD(lr=0.1))
    step(make_params(), *batches(1)[0])
    text = step.ir("step")
    assert "params['w1']" in text and " key " in text and "args[0]" not in text


# ---- in-place semantics and argument checks ----------------------------------------------------


def test_updates_the_users_arrays_in_place():
    params = make_params(np.float64)
    ids = {k: id(v) for k, v in params.items()}
    arrays = dict(params)
    ref, m, v = copy(params), {}, {}
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=0.01))
    for t, (x, y) in enumerate(batches(3, np.float64), start=1):
        ref_adam(ref, fg.grad(loss_fn)(ref, x, y), m, v, t)
        step(params, x, y)
        for k in params:
            assert params[k] is arrays[k] and id(params[k]) == ids[k]
            np.testing.assert_allclose(arrays[k], ref[k], rtol=1e-12, atol=1e-14)


def test_nested_list_tuple_params_in_place():
    def loss(params, x, y):
        (w1, b1), [w2] = params
        return fg.cross_entropy(fg.tanh(x @ w1 + b1) @ w2, y)

    p = make_params()
    params = ((p["w1"], p["b1"]), [p["w2"]])
    w2 = params[1][0]
    before = w2.copy()
    step = fg.train_step(loss, fg.optim.SGD(lr=0.1))
    step(params, *batches(1)[0])
    assert params[1][0] is w2 and not np.array_equal(w2, before)


@pytest.mark.parametrize("bad, path", [
    ("readonly", "params['w2']"),
    ("list", "params['w2']"),
    ("float", "params['b2']"),
    ("numpy_scalar", "params['b2']"),
])
def test_non_writable_params_raise_type_error_naming_the_leaf(bad, path):
    params = make_params()
    if bad == "readonly":
        params["w2"].flags.writeable = False
    elif bad == "list":
        params["w2"] = params["w2"].tolist()
    elif bad == "float":
        params["b2"] = 0.5
    else:
        params["b2"] = np.float32(0.5)
    step = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1))
    before = copy(params) if bad != "list" else None
    with pytest.raises(TypeError) as info:
        step(params, *batches(1)[0])
    assert path in str(info.value)
    if bad == "list":
        assert "params['w2'][0][0]" in str(info.value)
    else:
        assert_tree_equal(params, before)
    assert step.state["step"] == 0


def test_other_structure_on_the_same_step_raises_value_error():
    params = make_params()
    x, y = batches(1)[0]
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=0.01))
    step(params, x, y)
    other = dict(make_params(), extra=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="structure"):
        step(other, x, y)
    reordered = {k: params[k] for k in ("b2", "w2", "b1", "w1")}
    with pytest.raises(ValueError, match="structure"):
        step(reordered, x, y)
    assert len(step._programs) == 1 and step.state["step"] == 1
    step(params, x, y)  # still usable with the original structure
    assert step.state["step"] == 2


def test_new_batch_shape_compiles_again_and_keeps_state():
    params = make_params()
    step = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1, momentum=0.9))
    x, y = batches(1)[0]
    step(params, x, y)
    step(params, x[:5], y[:5])
    assert len(step._programs) == 2 and step.state["step"] == 2


def test_decorator_forms():
    opt = fg.optim.SGD(lr=0.1)

    @fg.train_step(optimizer=opt)
    def step_a(params, x, y):
        return loss_fn(params, x, y)

    step_b = fg.train_step(opt)(loss_fn)
    assert isinstance(step_a, fg.TrainStep) and isinstance(step_b, fg.TrainStep)
    assert step_a.__name__ == "step_a"
    pa, pb = make_params(), make_params()
    step_a(pa, *batches(1)[0])
    step_b(pb, *batches(1)[0])
    assert_tree_equal(pa, pb)
    with pytest.raises(TypeError, match="optimizer"):
        fg.train_step(loss_fn)


# ---- randomness --------------------------------------------------------------------------------


def dropout_loss(params, x, y, key=None):
    h = fg.tanh(x @ params["w1"] + params["b1"])
    h = fg.dropout(h, 0.5, key=key)
    mask = fg.dropout(fg.ones_like(h), 0.5, key=key)  # the same key and shape: the same mask
    return fg.cross_entropy(h @ params["w2"] + params["b2"], y), {"mask": mask}


def plain_loss(params, x, y):
    return loss_fn(params, x, y)


def test_fresh_key_every_step_and_reproducible_by_seed():
    data = batches(4)
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        params = make_params()
        step = fg.train_step(dropout_loss, fg.optim.SGD(lr=0.1), has_aux=True, seed=seed)
        trajectory, masks = [], []
        for x, y in data:
            _, aux = step(params, x, y)
            masks.append(aux["mask"])
            trajectory.append(copy(params))
        runs[name] = trajectory, masks
    traj_a, masks_a = runs["a"]
    for m in masks_a:  # masks are real dropout masks: 0 or 1/(1-p), some of each
        assert set(np.unique(m)) == {0.0, 2.0}
    for i in range(len(masks_a) - 1):
        assert not np.array_equal(masks_a[i], masks_a[i + 1])
    for pa, pb in zip(traj_a, runs["b"][0]):
        assert_tree_equal(pa, pb)
    for ma, mb in zip(masks_a, runs["b"][1]):
        assert_tree_equal(ma, mb)
    assert not np.array_equal(masks_a[0], runs["c"][1][0])
    assert not np.array_equal(traj_a[-1]["w1"], runs["c"][0][-1]["w1"])


def test_dropout_is_active_in_training_and_needs_a_key_elsewhere():
    """Once, a loss called without a key silently skipped its dropout; now a compiled function
    without a key raises, and the training step (which passes its key) drops."""
    params = make_params()
    x, y = batches(1)[0]
    with pytest.raises(ValueError, match="dropout: training needs a random key"):
        fg.jit(lambda p, x, y: dropout_loss(p, x, y)[0])(params, x, y)
    deterministic = fg.jit(plain_loss)(params, x, y)
    step = fg.train_step(dropout_loss, fg.optim.SGD(lr=0.1), has_aux=True)
    train_loss, aux = step(params, x, y)
    assert train_loss != deterministic
    assert 0.3 < np.mean(aux["mask"] == 0) < 0.7


def test_key_checkpoint_keeps_the_random_stream(tmp_path):
    data = batches(4)
    straight = make_params()
    step = fg.train_step(dropout_loss, fg.optim.Adam(lr=0.01), has_aux=True, seed=11)
    for x, y in data:
        step(straight, x, y)
    params = make_params()
    first = fg.train_step(dropout_loss, fg.optim.Adam(lr=0.01), has_aux=True, seed=11)
    for x, y in data[:2]:
        first(params, x, y)
    first.save(tmp_path / "k.npz")
    resumed = fg.train_step(dropout_loss, fg.optim.Adam(lr=0.01), has_aux=True, seed=0)
    fresh = make_params(seed=5)
    resumed.load(tmp_path / "k.npz", fresh)
    for x, y in data[2:]:
        resumed(fresh, x, y)
    assert_tree_equal(fresh, straight)


# ---- non-finite losses -------------------------------------------------------------------------


def inf_loss(params, x, y):
    """loss_fn plus a term that carries an inf or nan in x through to the loss (tanh would not)."""
    return loss_fn(params, x, y) + 1e-3 * fg.mean(x * x)


@pytest.mark.parametrize("poison", [np.inf, np.nan])
def test_non_finite_loss_raises_and_leaves_everything_as_before(poison):
    data = batches(5)
    bad_x = data[3][0].copy()
    bad_x[2, 1] = poison
    params = make_params()
    step = fg.train_step(inf_loss, fg.optim.Adam(lr=0.01))
    for x, y in data[:3]:
        step(params, x, y)
    params_before, state_before = copy(params), copy(step.state)
    with pytest.raises(fg.NonFiniteLossError, match="step 4") as info:
        step(params, bad_x, data[3][1])
    assert isinstance(info.value, FloatingPointError)
    assert_tree_equal(params, params_before)
    assert_tree_equal(step.state, state_before)
    # carrying on skips the bad batch: the same as a run that never saw it
    for x, y in data[3:]:
        step(params, x, y)
    clean = make_params()
    clean_step = fg.train_step(inf_loss, fg.optim.Adam(lr=0.01))
    for x, y in data:
        clean_step(clean, x, y)
    assert_tree_equal(params, clean)
    assert_tree_equal(step.state, clean_step.state)


def test_non_finite_loss_on_the_first_step():
    params = make_params()
    before = copy(params)
    x, y = batches(1)[0]
    x = x.copy()
    x[0, 0] = np.inf
    step = fg.train_step(inf_loss, fg.optim.SGD(lr=0.1, momentum=0.9))
    with pytest.raises(fg.NonFiniteLossError, match="step 1"):
        step(params, x, y)
    assert_tree_equal(params, before)
    assert step.state["step"] == 0


# ---- aux outputs -------------------------------------------------------------------------------


def test_has_aux_returns_loss_and_aux_pytree():
    def loss(params, x, y):
        logits = fg.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
        ce = fg.cross_entropy(logits, y)
        return ce, {"logits": logits, "stats": (fg.mean(logits), [fg.max(logits)])}

    params = make_params(np.float64)
    x, y = batches(1, np.float64)[0]
    expected_loss, expected_aux = fg.jit(loss)(params, x, y)  # before the update
    step = fg.train_step(loss, fg.optim.Adam(lr=0.01), has_aux=True)
    out = step(params, x, y)
    assert isinstance(out, tuple) and len(out) == 2
    got_loss, aux = out
    assert np.ndim(got_loss) == 0 and got_loss == expected_loss
    assert set(aux) == {"logits", "stats"}
    assert isinstance(aux["stats"], tuple) and isinstance(aux["stats"][1], list)
    np.testing.assert_array_equal(aux["logits"], expected_aux["logits"])
    np.testing.assert_array_equal(aux["stats"][0], expected_aux["stats"][0])
    np.testing.assert_array_equal(aux["stats"][1][0], np.max(expected_aux["logits"]))
    # the loss alone, without has_aux
    plain = fg.train_step(loss_fn, fg.optim.Adam(lr=0.01))
    assert np.ndim(plain(make_params(), *batches(1)[0])) == 0


# ---- dropout without a key: the step supplies it ---------------------------------------------


def test_dropout_without_a_key_draws_from_the_step():
    """A loss calling fg.dropout without a key gets the step's key (new every step, one part of
    it per call): the masks differ between calls and steps, and the same seed repeats them."""
    def loss(p, x):
        h = fg.dropout(x @ p["w"], 0.5)
        g = fg.dropout(x @ p["w"], 0.5)  # another call: another mask
        return fg.mean(h * h) + 3 * fg.mean(g * g), (h, g)

    def run(seed):
        p = {"w": np.ones((4, 64), np.float32)}
        step = fg.train_step(loss, fg.optim.SGD(1e-6), has_aux=True, seed=seed)
        return [step(p, np.ones((8, 4), np.float32))[1] for _ in range(2)]

    (h1, g1), (h2, _) = run(0)
    for m in (h1, g1, h2):
        zero = np.mean(m == 0)
        assert 0.35 < zero < 0.65, zero  # really dropping half
    assert not np.array_equal(h1 == 0, g1 == 0)  # two calls, two masks
    assert not np.array_equal(h1 == 0, h2 == 0)  # two steps, two masks
    (h1_again, _), _ = run(0)
    np.testing.assert_array_equal(h1, h1_again)  # the seed repeats them
    (h1_other, _), _ = run(1)
    assert not np.array_equal(h1 == 0, h1_other == 0)
