"""Loss terms vs numpy references, on depth maps with holes (0, NaN, inf, all-hole samples)."""

import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdepth import flips
from kdepth.losses import GradientMatchingLoss, MaskedMSE, ScaleInvariantLoss, SetLoss

NP_FLIP_AXES = {"identity": (), "lr": (1,), "ud": (0,)}  # axes of an (h, w, 1) map


def make_batch(seed=0, b=4, h=6, w=7):
    """y_true with a hole block, a NaN, an inf and an all-hole last sample; y_pred > 0."""
    if b < 4:
        raise ValueError(f"make_batch needs b >= 4 samples to place its holes; received b={b}.")
    rng = np.random.default_rng(seed)
    y_true = rng.uniform(0.5, 5.0, (b, h, w, 1)).astype(np.float32)
    y_true[0, 1:3, 2:5] = 0.0
    y_true[1, 0, 0] = np.nan
    y_true[1, 4, 3] = np.inf
    y_true[2, :, 0] = 0.0
    y_true[-1] = 0.0
    y_pred = rng.uniform(0.3, 6.0, (b, h, w, 1)).astype(np.float32)
    return y_true, y_pred


def np_valid(y_true):
    with np.errstate(invalid="ignore"):
        return np.isfinite(y_true) & (y_true > 0)


def np_log_error(gt, pred):
    """d on the valid pixels of one sample (1-D), and the valid mask."""
    valid = np_valid(gt)
    return np.log(pred[valid].astype(np.float64)) - np.log(gt[valid].astype(np.float64)), valid


def np_masked_mse(y_true, y_pred, space):
    out = []
    for gt, pred in zip(y_true, y_pred, strict=True):
        valid = np_valid(gt)
        if not valid.any():
            out.append(0.0)
            continue
        g, p = gt[valid].astype(np.float64), pred[valid].astype(np.float64)
        if space == "log":
            g, p = np.log(g), np.log(p)
        out.append(np.mean((p - g) ** 2))
    return np.array(out)


def np_set_loss(y_pred, group, space):
    """The poster's formula, literally: frame i against prediction j mapped into frame i."""
    n = len(group)
    out = []
    for copies in y_pred.astype(np.float64):
        if space == "log":
            copies = np.log(copies)
        total = 0.0
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                # g_ij: undo flip j (back to the identity frame), then apply flip i.
                mapped = np.flip(np.flip(copies[j], NP_FLIP_AXES[group[j]]), NP_FLIP_AXES[group[i]])
                total += np.mean((copies[i] - mapped) ** 2)
        out.append(total / (n - 1) if n > 1 else 0.0)
    return np.array(out)


def np_scale_invariant(y_true, y_pred, lam):
    out = []
    for gt, pred in zip(y_true, y_pred, strict=True):
        d, _ = np_log_error(gt, pred)
        out.append(np.mean(d**2) - lam * np.mean(d) ** 2 if d.size else 0.0)
    return np.array(out)


def np_gradient_matching(y_true, y_pred):
    out = []
    for gt, pred in zip(y_true[..., 0], y_pred[..., 0], strict=True):
        h, w = gt.shape
        valid = np_valid(gt)
        d = np.zeros((h, w))
        d[valid] = np.log(pred[valid].astype(np.float64)) - np.log(gt[valid].astype(np.float64))
        sx = [
            (d[r, c + 1] - d[r, c]) ** 2
            for r in range(h)
            for c in range(w - 1)
            if valid[r, c] and valid[r, c + 1]
        ]
        sy = [
            (d[r + 1, c] - d[r, c]) ** 2
            for r in range(h - 1)
            for c in range(w)
            if valid[r, c] and valid[r + 1, c]
        ]
        out.append((np.mean(sx) if sx else 0.0) + (np.mean(sy) if sy else 0.0))
    return np.array(out)


def per_sample(loss_cls, **kwargs):
    """The loss with reduction=None: Keras then returns call()'s per-sample values."""
    return loss_cls(reduction=None, **kwargs)


@pytest.mark.parametrize("space", ["log", "linear"])
def test_masked_mse_matches_numpy(space):
    y_true, y_pred = make_batch()
    expected = np_masked_mse(y_true, y_pred, space)
    assert expected[-1] == 0.0 and np.all(expected[:-1] > 0)
    values = per_sample(MaskedMSE, space=space)(y_true, y_pred).numpy()
    assert values.shape == (4,)
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    # Default reduction: mean over the batch, the all-hole sample counting as 0.
    np.testing.assert_allclose(
        MaskedMSE(space=space)(y_true, y_pred).numpy(), expected.mean(), rtol=1e-5
    )


def test_masked_mse_ignores_values_at_holes():
    y_true, y_pred = make_batch()
    changed = y_pred.copy()
    changed[~np_valid(y_true)] = 1234.0
    loss = MaskedMSE()
    np.testing.assert_allclose(
        loss(y_true, changed).numpy(), loss(y_true, y_pred).numpy(), rtol=1e-6
    )


def test_masked_mse_on_flip_groups_averages_all_copies():
    y_true, y_pred = make_batch()
    group = ["identity", "lr", "ud"]
    gt_group = flips.make_group(y_true, group).numpy()
    pred_group = flips.make_group(y_pred, group).numpy()
    pred_group[:, 1] *= 1.5  # the lr copy predicts differently
    values = per_sample(MaskedMSE)(gt_group, pred_group).numpy()
    expected = np_masked_mse(gt_group.reshape(4, -1, 1), pred_group.reshape(4, -1, 1), "log")
    np.testing.assert_allclose(values, expected, rtol=1e-5)


def test_masked_mse_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="masked_resize"):
        MaskedMSE()(np.ones((1, 4, 4, 1), np.float32), np.ones((1, 8, 8, 1), np.float32))


def test_unknown_space_is_rejected():
    with pytest.raises(ValueError, match="space must be one of"):
        MaskedMSE(space="log10")
    with pytest.raises(ValueError, match="space must be one of"):
        SetLoss(["identity", "lr"], space="sqrt")


@pytest.mark.parametrize("group", [["identity", "lr"], ["identity", "lr", "ud"], ["lr", "ud"]])
@pytest.mark.parametrize("space", ["log", "linear"])
def test_set_loss_matches_poster_formula(group, space):
    rng = np.random.default_rng(2)
    preds = rng.uniform(0.3, 6.0, (3, len(group), 6, 7, 1)).astype(np.float32)
    expected = np_set_loss(preds, group, space)
    assert np.all(expected > 0)
    values = per_sample(SetLoss, group=group, space=space)(None, preds).numpy()
    assert values.shape == (3,)
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    # y_true is ignored.
    np.testing.assert_allclose(
        SetLoss(group, space=space)(np.zeros(preds.shape, np.float32), preds).numpy(),
        expected.mean(),
        rtol=1e-5,
    )


def test_set_loss_is_twice_the_student_unordered_sum_for_two_copies():
    y_pred = make_batch(seed=3)[1][:2]
    preds = np.stack([y_pred, y_pred[:, :, ::-1] * 1.2], axis=1)  # lr copy, scaled
    u = flips.undo_group(np.log(preds), ["identity", "lr"]).numpy()
    unordered = np.mean((u[:, 0] - u[:, 1]) ** 2, axis=(1, 2, 3))
    values = per_sample(SetLoss, group=["identity", "lr"])(None, preds).numpy()
    np.testing.assert_allclose(values, 2 * unordered, rtol=1e-5)
    np.testing.assert_allclose(values, 2 * np.log(1.2) ** 2, rtol=1e-4)


@pytest.mark.parametrize("group", [["identity", "lr"], ["identity", "lr", "ud"]])
def test_set_loss_is_zero_for_flip_consistent_predictions(group):
    _, y_pred = make_batch(seed=4)
    consistent = flips.make_group(y_pred, group)
    values = per_sample(SetLoss, group=group)(None, consistent).numpy()
    np.testing.assert_array_equal(values, np.zeros(4))


def test_set_loss_of_a_single_copy_is_zero():
    _, y_pred = make_batch(seed=5)
    values = per_sample(SetLoss, group=["identity"])(None, y_pred[:, None]).numpy()
    np.testing.assert_array_equal(values, np.zeros(4))


def test_set_loss_rejects_wrong_group_axis():
    _, y_pred = make_batch()
    with pytest.raises(ValueError, match=r"G=3"):
        SetLoss(["identity", "lr", "ud"])(None, np.stack([y_pred, y_pred], axis=1))
    with pytest.raises(ValueError, match=r"G=2"):
        SetLoss(["identity", "lr"])(None, y_pred)
    with pytest.raises(ValueError, match="repeats a flip"):
        SetLoss(["lr", "lr"])


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_scale_invariant_loss_matches_numpy(lam):
    y_true, y_pred = make_batch(seed=6)
    values = per_sample(ScaleInvariantLoss, lam=lam)(y_true, y_pred).numpy()
    np.testing.assert_allclose(
        values, np_scale_invariant(y_true, y_pred, lam), rtol=1e-4, atol=1e-7
    )


def test_scale_invariant_loss_with_lam_one_ignores_a_global_scale():
    y_true, y_pred = make_batch(seed=7)
    loss = per_sample(ScaleInvariantLoss, lam=1.0)
    np.testing.assert_allclose(
        loss(y_true, 3.0 * y_pred).numpy(), loss(y_true, y_pred).numpy(), rtol=1e-4, atol=1e-6
    )
    assert not np.allclose(
        per_sample(ScaleInvariantLoss, lam=0.5)(y_true, 3.0 * y_pred).numpy()[:-1],
        per_sample(ScaleInvariantLoss, lam=0.5)(y_true, y_pred).numpy()[:-1],
    )


def test_scale_invariant_loss_rejects_lam_outside_unit_interval():
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\]"):
        ScaleInvariantLoss(lam=1.5)


def test_gradient_matching_matches_numpy():
    y_true, y_pred = make_batch(seed=8)
    expected = np_gradient_matching(y_true, y_pred)
    assert expected[-1] == 0.0 and np.all(expected[:-1] > 0)
    values = per_sample(GradientMatchingLoss)(y_true, y_pred).numpy()
    np.testing.assert_allclose(values, expected, rtol=1e-4)


def test_gradient_matching_is_zero_for_a_scaled_ground_truth():
    y_true, _ = make_batch(seed=9)
    y_pred = np.where(np_valid(y_true), 2.5 * np.nan_to_num(y_true, posinf=0.0), 1.0).astype(
        np.float32
    )
    np.testing.assert_allclose(
        per_sample(GradientMatchingLoss)(y_true, y_pred).numpy(), 0.0, atol=1e-10
    )


ALL_LOSSES = [
    ("mse_log", MaskedMSE(space="log")),
    ("mse_linear", MaskedMSE(space="linear")),
    ("scale_invariant", ScaleInvariantLoss()),
    ("gradient_matching", GradientMatchingLoss()),
]


@pytest.mark.parametrize("name,loss", ALL_LOSSES, ids=[n for n, _ in ALL_LOSSES])
def test_losses_have_finite_values_and_gradients_with_holes(name, loss):
    y_true, y_pred = make_batch(seed=10)
    log_pred = tf.Variable(np.log(y_pred))
    with tf.GradientTape(persistent=True) as tape:
        pred = tf.exp(log_pred)
        value = loss(y_true, pred)
        per = loss.call(tf.constant(y_true), pred)
        last = per[-1]
    grad = tape.gradient(value, log_pred).numpy()
    assert np.isfinite(value.numpy()) and value.numpy() > 0
    assert np.all(np.isfinite(grad))
    # Holes (and the all-hole sample) get no gradient; valid pixels do.
    np.testing.assert_array_equal(grad[~np_valid(y_true)], 0.0)
    assert np.count_nonzero(grad[np_valid(y_true)]) > 0
    assert per.numpy()[-1] == 0.0
    all_holes_grad = tape.gradient(last, log_pred).numpy()
    np.testing.assert_array_equal(all_holes_grad, 0.0)


def test_set_loss_has_finite_gradients():
    group = ["identity", "lr", "ud"]
    rng = np.random.default_rng(11)
    log_pred = tf.Variable(rng.normal(0.0, 0.5, (2, 3, 5, 6, 1)).astype(np.float32))
    with tf.GradientTape() as tape:
        value = SetLoss(group)(None, tf.exp(log_pred))
    grad = tape.gradient(value, log_pred).numpy()
    assert value.numpy() > 0 and np.all(np.isfinite(grad)) and np.count_nonzero(grad) > 0


@pytest.mark.parametrize(
    "loss",
    [
        MaskedMSE(space="linear", name="mse_lin", reduction="sum"),
        SetLoss(["identity", "ud"], space="linear", name="set"),
        ScaleInvariantLoss(lam=0.25),
        GradientMatchingLoss(name="grad"),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_get_config_round_trip(loss):
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    assert restored.name == loss.name and restored.reduction == loss.reduction
    if isinstance(loss, SetLoss):
        y_true, y_pred = (
            None,
            flips.make_group(make_batch()[1], ["identity", "ud"]).numpy()
            * np.array([1.0, 1.1]).reshape(1, 2, 1, 1, 1).astype(np.float32),
        )
    else:
        y_true, y_pred = make_batch()
    np.testing.assert_allclose(
        restored(y_true, y_pred).numpy(), loss(y_true, y_pred).numpy(), rtol=1e-6
    )


def test_losses_train_a_model_with_fit():
    """Graph mode, unknown spatial size, Keras compile/fit: the loss decreases."""
    y_true, _ = make_batch(seed=12, b=4, h=8, w=8)
    x = np.random.default_rng(13).normal(size=(4, 8, 8, 3)).astype(np.float32)
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="exponential")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=MaskedMSE())
    history = model.fit(x, y_true, epochs=5, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    from kdepth import flips
    from kdepth.losses import MaskedMSE, SetLoss, ScaleInvariantLoss, GradientMatchingLoss

    rng = np.random.default_rng(0)
    b, h, w = 6, 5, 6
    y_true = rng.uniform(0.5, 5.0, (b, h, w, 1)).astype(np.float32)
    # Uneven holes: replica 0 gets many holes and an all-hole sample, replica 1 almost none,
    # so a pixel-weighted mean would differ from the per-sample mean.
    y_true[0, :4] = 0.0
    y_true[1] = 0.0
    y_true[2, 0, 0] = np.nan
    y_true[4, 2, 2] = np.inf
    y_pred = rng.uniform(0.3, 6.0, (b, h, w, 1)).astype(np.float32)
    group = ["identity", "lr", "ud"]
    set_pred = rng.uniform(0.3, 6.0, (b, len(group), h, w, 1)).astype(np.float32)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2

    def split(array):
        half = array.shape[0] // 2
        parts = [array[:half], array[half:]]
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group])
        )

    results = {}
    cases = {
        "masked_mse_log": (lambda: MaskedMSE(space="log"), y_true, y_pred),
        "masked_mse_linear": (lambda: MaskedMSE(space="linear"), y_true, y_pred),
        "scale_invariant": (lambda: ScaleInvariantLoss(), y_true, y_pred),
        "gradient_matching": (lambda: GradientMatchingLoss(), y_true, y_pred),
        "set_loss": (lambda: SetLoss(group), np.zeros_like(set_pred), set_pred),
    }
    for name, (make, t, p) in cases.items():
        single = float(make()(t, p).numpy())
        with strategy.scope():
            loss = make()
        @tf.function
        def step(yt, yp):
            return loss(yt, yp)
        per_replica = strategy.run(step, args=(split(t), split(p)))
        summed = float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy())
        replica_values = [float(v.numpy()) for v in strategy.experimental_local_results(per_replica)]
        results[name] = {"single": single, "summed": summed, "replicas": replica_values}
    print("RESULT " + json.dumps(results))
    """
)


def test_losses_sum_over_two_replicas_equals_single_device_loss(on_two_cpus):
    results = on_two_cpus(DISTRIBUTED_SCRIPT)
    assert set(results) == {
        "masked_mse_log",
        "masked_mse_linear",
        "scale_invariant",
        "gradient_matching",
        "set_loss",
    }
    for name, r in results.items():
        assert r["single"] > 0, name
        np.testing.assert_allclose(r["summed"], r["single"], rtol=1e-5, err_msg=name)
        # Each replica's value is its half-batch mean divided by 2 replicas.
        assert len(r["replicas"]) == 2 and r["replicas"][0] != r["replicas"][1], name


def test_masked_mse_root_is_the_per_sample_rmse():
    rng = np.random.default_rng(7)
    gt = rng.uniform(0.5, 5.0, (3, 6, 7, 1)).astype("float32")
    gt[0, :2] = 0.0
    pred = rng.uniform(0.5, 5.0, (3, 6, 7, 1)).astype("float32")
    mse = MaskedMSE(space="log", reduction=None)(gt, pred).numpy()
    rmse = MaskedMSE(space="log", root=True, reduction=None)(gt, pred).numpy()
    np.testing.assert_allclose(rmse, np.sqrt(mse + 1e-12), rtol=1e-6)
    restored = MaskedMSE.from_config(MaskedMSE(root=True).get_config())
    assert restored.root is True
