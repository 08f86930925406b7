"""Training: the trainer model, stages, callbacks and `fit` end to end on tiny synthetic data."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdepth.config import load_config
from kdepth.errors import KdepthError
from kdepth.models import DepthNetwork, transfer_weights
from kdepth.training import callbacks as cb
from kdepth.training.fit import fit
from kdepth.training.stages import apply_stage, build_optimizer
from kdepth.training.trainer import DepthTrainer, defer_dense_gradients


def tiny_config(tmp_path, *extra):
    return load_config(
        [],
        [
            "model.input_size=[32, 32]",
            "model.coarse_hidden=32",
            "data.synthetic_train=8",
            "data.synthetic_val=4",
            "data.synthetic_test=4",
            "data.shuffle_buffer=8",
            "train.batch_size=2",
            "train.epochs=1",
            "train.verbose=0",
            "train.tensorboard_images=2",
            f'train.run_dir="{tmp_path / "runs"}"',
            *extra,
        ],
    )


@pytest.mark.parametrize(
    "schedule, epoch, expected",
    [
        ("constant", 7.0, 1.0),
        ("step", 9.9, 1.0),
        ("step", 10.0, 0.1),
        ("exponential", 5.0, 0.1**0.5),
        ("cosine", 0.0, 1.0),
        ("cosine", 10.0, 0.01),
        ("cosine", 5.0, 0.01 + 0.99 * 0.5),
    ],
)
def test_schedule_factor(schedule, epoch, expected):
    factor = cb.schedule_factor(epoch, schedule=schedule, epochs=10, decay_rate=0.1, decay_epochs=10, min_ratio=0.01)
    assert factor == pytest.approx(expected)


def test_warmup_ramps_then_leaves_the_schedule():
    f = lambda e: cb.schedule_factor(e, schedule="constant", epochs=10, warmup_epochs=2)  # noqa: E731
    assert f(0.0) == pytest.approx(0.1) and f(1.0) == pytest.approx(0.55) and f(2.0) == 1.0


def _batch(rng, b=2, g=2, size=32):
    images = rng.uniform(0, 255, (b, 1, size, size, 3)).astype("float32")
    images = np.concatenate([images, images[:, :, :, ::-1]], axis=1)[:, :g]
    depth = rng.uniform(1, 5, (b, 1, size, size, 1)).astype("float32")
    depth = np.concatenate([depth, depth[:, :, :, ::-1]], axis=1)[:, :g]
    depth[:, :, :4] = 0.0  # holes
    return tf.constant(images), {"depth": tf.constant(depth), "mask": tf.constant((depth > 0).astype("float32"))}


def _trainer(config, scales, stage):
    network = DepthNetwork(input_size=(32, 32), scales=scales, coarse_hidden=32)
    apply_stage(network, stage)
    trainer = DepthTrainer(network, flip_group=("identity", "lr"), mse_weights={"scale1": 0.5, "scale2": 1.0, "scale3": 1.0}, set_weight=1.5)
    trainer.compile(optimizer=build_optimizer(config, network, stage)[0])
    return network, trainer


def test_stage2_freezes_scales_1_and_2(tmp_path):
    config = tiny_config(tmp_path)
    network, trainer = _trainer(config, scales=3, stage=2)
    trainable = {v.path for v in network.trainable_variables}
    assert trainable and all("scale3" in p for p in trainable)
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in network.layers if layer.weights}
    trainer.train_on_batch(*_batch(np.random.default_rng(0)))
    for layer in network.layers:
        if not layer.weights:
            continue
        changed = any(not np.array_equal(a, b) for a, b in zip(before[layer.name], layer.get_weights(), strict=True))
        assert changed == layer.name.startswith("scale3"), layer.name


def test_stage1_trains_everything_built(tmp_path):
    network, trainer = _trainer(tiny_config(tmp_path), scales=2, stage=1)
    assert len(network.trainable_variables) == len(network.weights)
    logs = trainer.train_on_batch(*_batch(np.random.default_rng(1)), return_dict=True)
    for name in ("loss", "mse_scale1", "mse_scale2", "set", "delta1", "abs_rel", "rmse"):
        assert name in logs and math.isfinite(logs[name]), name


def test_trainer_loss_is_the_weighted_sum_of_its_terms(tmp_path):
    network, trainer = _trainer(tiny_config(tmp_path), scales=2, stage=1)
    images, target = _batch(np.random.default_rng(2))
    trainer.train_on_batch(images, target)  # the heads start at zero: constant, flip-consistent depth
    preds = trainer(images, training=False)
    terms, total = trainer.compute_terms(target, preds)
    expected = 0.5 * terms["mse_scale1"] + terms["mse_scale2"] + 1.5 * terms["set"]
    np.testing.assert_allclose(float(total), float(expected), rtol=1e-6)
    assert float(terms["set"]) > 0  # a trained network is not exactly flip-consistent


def _loss_and_grads(trainer, images, target):
    """(loss, gradients) of one training forward pass, and the number of forward convolutions run."""

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            total = trainer.compute_terms(target, trainer(images, training=True))[1]
        return total, tape.gradient(total, trainer.trainable_variables)

    graph = run.get_concrete_function().graph.as_graph_def()
    nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
    return (*run(), sum(n.op == "Conv2D" for n in nodes))


def test_recomputed_block1_gives_the_same_loss_and_gradients():
    network = DepthNetwork(input_size=(32, 32), scales=3, coarse_hidden=32, dropout=0.0)
    images, target = _batch(np.random.default_rng(3))
    results = [
        _loss_and_grads(DepthTrainer(network, flip_group=("identity", "lr"), set_weight=1.0, recompute=r), images, target)
        for r in ((), network.recompute_layers)
    ]
    assert network.recompute_layers == ("block1_pool", "scale2_pool1", "scale3_pool1")
    (loss, grads, convs), (loss_r, grads_r, convs_r) = results
    assert float(loss_r) == float(loss)
    for g, g_r in zip(grads, grads_r, strict=True):
        np.testing.assert_allclose(g_r.numpy(), g.numpy(), rtol=1e-6, atol=1e-7)
    assert convs_r == convs + 4  # block1_conv1, block1_conv2, scale2_conv1, scale3_conv1 run again


def test_dense_kernel_gradients_wait_for_every_other_gradient():
    # scale1_dense1's kernel gradient is made early in the backward pass; it must wait for the
    # backbone's (where the step's memory peaks) and come out the same.
    network = DepthNetwork(input_size=(32, 32), scales=2, coarse_hidden=32, dropout=0.0)
    trainer = DepthTrainer(network, flip_group=("identity", "lr"), set_weight=1.0, recompute=network.recompute_layers)
    images, target = _batch(np.random.default_rng(4))
    variables = trainer.trainable_variables
    paths = [v.path for v in variables]
    graph = {}

    def gradients(defer):
        @tf.function
        def run():
            with tf.GradientTape() as tape:
                total = trainer.compute_terms(target, trainer(images, training=True))[1]
            grads = tape.gradient(total, variables)
            if defer:
                graph["deferred"] = defer_dense_gradients(grads)
                graph["waits_for"] = {p: {op.name for op in g.op.control_inputs} for p, g in zip(paths, grads, strict=True)}
                graph["block1"] = grads[paths.index("block1_conv1/kernel")].op.name
            return grads

        return run()

    plain, deferred = gradients(False), gradients(True)
    assert graph["deferred"] == 2
    for path in paths:
        assert (graph["block1"] in graph["waits_for"][path]) == (path in ("scale1_dense1/kernel", "scale1_dense2/kernel")), path
    for g, g_deferred in zip(plain, deferred, strict=True):
        np.testing.assert_array_equal(g_deferred.numpy(), g.numpy())
    assert defer_dense_gradients(plain) == 0  # eagerly every gradient exists already


@pytest.mark.parametrize(
    "layer, message",
    [
        (["block9_pool"], "are not layers of the network"),
        (["block4_pool"], "also feed the outputs another way"),
        (["block1_pool", "block2_pool"], "also feed the outputs another way"),  # block 1 before both
    ],
)
def test_recompute_needs_a_layer_that_cuts_the_network(layer, message):
    network = DepthNetwork(input_size=(32, 32), scales=2, coarse_hidden=32)
    with pytest.raises(KdepthError, match=message):
        DepthTrainer(network, recompute=layer)


@pytest.mark.parametrize("backbone, value, expected", [
    ("vgg16", '["auto"]', ("block1_pool", "scale2_pool1")),
    ("mobilenet_v2", '["auto"]', ("scale2_pool1",)),
    ("vgg16", "[]", ()),
    ("vgg16", '["block2_pool"]', ("block2_pool",)),
])
def test_train_recompute_resolves_per_network(tmp_path, tiny_network, backbone, value, expected):
    from kdepth.training.stages import recompute_layers

    config = tiny_config(tmp_path, f"model.backbone={backbone}", f"train.recompute={value}")
    network = tiny_network(scales=2, backbone=backbone)
    assert recompute_layers(config, network) == expected
    DepthTrainer(network, recompute=expected)  # each is a valid cut


def test_train_recompute_auto_stands_alone(tmp_path, tiny_network):
    from kdepth.training.stages import recompute_layers

    with pytest.raises(KdepthError, match="stands alone"):
        recompute_layers(tiny_config(tmp_path, 'train.recompute=["auto", "block1_pool"]'), tiny_network(scales=2))


def test_transfer_weights_matches_by_name():
    small = DepthNetwork(input_size=(32, 32), scales=2, coarse_hidden=32)
    big = DepthNetwork(input_size=(32, 32), scales=3, coarse_hidden=32)
    copied, total = transfer_weights(small, big)
    assert copied == len([layer for layer in small.layers if layer.weights]) and total > copied
    np.testing.assert_array_equal(big.get_layer("scale2_conv3").get_weights()[0], small.get_layer("scale2_conv3").get_weights()[0])
    other = DepthNetwork(input_size=(32, 32), scales=2, coarse_hidden=16)
    with pytest.raises(KdepthError, match="scale1_dense1"):
        transfer_weights(other, big)


def test_fit_writes_a_complete_run_and_lowers_the_loss(tmp_path):
    config = tiny_config(tmp_path, "train.epochs=3", "train.steps_per_epoch=4", "train.warmup_epochs=0")
    result = fit(config)
    out = result.stage_dir
    for name in ("config.toml", "model.keras", "last.weights.h5", "best.weights.h5", "log.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (out / "backup").exists() or not any((out / "backup").iterdir())  # removed after a clean finish
    log = (out / "log.csv").read_text().splitlines()
    header = log[0].split(",")
    for column in ("loss", "mse_scale2", "set", "delta1", "val_delta1", "lr_backbone", "pred_log_std"):
        assert column in header, column
    losses = [float(row.split(",")[header.index("loss")]) for row in log[1:]]
    assert losses[-1] < losses[0]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["val"]) == {"delta1", "delta2", "delta3", "abs_rel", "rmse", "edge_delta1"}
    assert 0 <= summary["baseline"]["delta1"] <= 1
    reloaded = keras.saving.load_model(result.model_path, compile=False)
    assert set(reloaded.output_names) == {"scale1", "scale2"}


def test_fit_without_checkpoints_writes_only_the_model_and_the_logs(tmp_path):
    config = tiny_config(tmp_path, "train.epochs=2", "train.steps_per_epoch=2", "train.checkpoints=false")
    out = fit(config).stage_dir
    assert sorted(p.name for p in out.iterdir() if p.name != "tensorboard") == [
        "config.toml", "log.csv", "model.keras", "summary.json"]
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert {"edge_delta1", "val_edge_delta1", "pred_zero_frac"} <= set(header)


def test_stage2_starts_from_stage1_and_needs_it(tmp_path):
    config = tiny_config(tmp_path, "train.steps_per_epoch=2")
    with pytest.raises(KdepthError, match=r"stage1/model.keras does not exist.*kdepth fit --stage 1"):
        fit(config, stage=2)
    first = fit(config, stage=1)
    second = fit(config, stage=2)
    m1 = keras.saving.load_model(first.model_path, compile=False)
    m2 = keras.saving.load_model(second.model_path, compile=False)
    assert "scale3" in m2.output_names
    for name in ("block1_conv1", "scale1_dense1", "scale2_conv3", "scale2_head"):
        for a, b in zip(m1.get_layer(name).get_weights(), m2.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)  # frozen in stage 2


@pytest.mark.slow  # ~50 epochs until fitted: 75-145 s here, a seventh of the default suite
def test_overfit_three_images_reaches_a_low_error(tmp_path):
    config = tiny_config(tmp_path, "train.lr_scale2=3e-3", "train.lr_coarse=3e-4")
    result = fit(config, overfit=3)
    assert result.val["delta1"] > 0.9, result.val


def test_collapse_guard_names_the_collapse():
    network = DepthNetwork(input_size=(32, 32), scales=2, coarse_hidden=16)  # zero heads: constant 2 m
    messages = []
    guard = cb.CollapseGuard(network, tf.zeros((2, 32, 32, 3)), "scale2", threshold=1e-3, echo=messages.append)
    logs = {}
    guard.on_epoch_end(0, logs)
    assert guard.collapsed_epochs == [1] and logs["pred_log_std"] < 1e-3
    assert "collapsed to a constant (2 m everywhere" in messages[0] and "learning rates" in messages[0]


def test_collapse_guard_does_not_say_a_log_head_at_the_upper_guard_is_stuck():
    # The log head's guard passes gradients (straight-through), unlike the relu head's clamp.
    network = DepthNetwork(input_size=(32, 32), scales=2, coarse_hidden=16)
    head = network.get_layer("scale2_head")
    kernel, bias = head.get_weights()
    head.set_weights([kernel, bias + 1e5])  # far above the 10 km guard
    messages = []
    cb.CollapseGuard(network, tf.zeros((2, 32, 32, 3)), "scale2", echo=messages.append).on_epoch_end(0, {})
    assert "upper guard (10 km), pushed there" in messages[0] and "no gradient" not in messages[0]


def test_collapse_guard_logs_the_fraction_of_zero_predictions():
    network = DepthNetwork(input_size=(32, 32), scales=2, coarse_hidden=16, output="relu")
    head = network.get_layer("scale2_head")
    kernel, bias = head.get_weights()
    head.set_weights([kernel, bias - 5.0])  # relu(2 m - 5) = 0: every pixel in the dead zone
    logs, messages = {}, []
    cb.CollapseGuard(network, tf.zeros((2, 32, 32, 3)), "scale2", echo=messages.append).on_epoch_end(0, logs)
    assert logs["pred_zero_frac"] == 1.0
    assert "all-zero collapse" in messages[0]
    head.set_weights([kernel, bias + 1e5])  # far above the 10 km guard
    cb.CollapseGuard(network, tf.zeros((2, 32, 32, 3)), "scale2", echo=messages.append).on_epoch_end(0, {})
    assert "upper guard, where no gradient flows back" in messages[1] and "all-zero" not in messages[1]
    logs = {}
    head.set_weights([kernel, bias])
    cb.CollapseGuard(network, tf.zeros((2, 32, 32, 3)), "scale2", echo=lambda m: None).on_epoch_end(0, logs)
    assert logs["pred_zero_frac"] == 0.0


def test_non_finite_guard_names_the_term():
    guard = cb.NonFiniteGuard(["mse_scale2", "set"])
    guard.on_train_batch_end(0, {"loss": 1.0, "mse_scale2": 0.5, "set": 0.1})
    with pytest.raises(cb.NonFiniteLoss, match=r"'set' became nan at epoch 1, batch 4.*backup is kept"):
        guard.on_train_batch_end(3, {"loss": float("nan"), "mse_scale2": 0.5, "set": float("nan")})


def test_learning_rate_callback_sets_each_group_from_the_epoch():
    opts = {"backbone": keras.optimizers.Adam(1.0), "scale2": keras.optimizers.Adam(1.0)}
    callback = cb.EpochLearningRate(opts, {"backbone": 1e-4, "scale2": 1e-3}, steps_per_epoch=10, schedule="step", epochs=4, decay_rate=0.1, decay_epochs=2)
    callback.on_epoch_begin(2)  # a resumed run starting at epoch 3 gets epoch 3's rate
    logs = {}
    callback.on_epoch_end(2, logs)
    assert logs["lr_backbone"] == pytest.approx(1e-5) and logs["lr_scale2"] == pytest.approx(1e-4)


def test_fit_under_mixed_bfloat16_keeps_float32_depth(tmp_path):
    config = tiny_config(tmp_path, "train.precision=mixed_bfloat16", "train.steps_per_epoch=2")
    result = fit(config)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    model = keras.saving.load_model(result.model_path, compile=False)
    out = model(np.zeros((1, 32, 32, 3), "float32"))
    assert all(v.dtype == "float32" for v in out.values())
    assert model.get_layer("scale2_conv3").compute_dtype == "bfloat16"
    assert (result.stage_dir / "tensorboard" / "images").is_dir()
    assert list((result.stage_dir / "tensorboard" / "images").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_paper_resolution_trains(tmp_path):
    config = tiny_config(
        tmp_path, "model.input_size=[232, 310]", "model.coarse_hidden=4200", "train.batch_size=1",
        "train.steps_per_epoch=2", "data.synthetic_train=2", "data.synthetic_val=1", "train.val_steps=1",
        "train.tensorboard_images=1",
    )
    result = fit(config)
    assert np.isfinite(result.val["rmse"])
    model = keras.saving.load_model(result.model_path, compile=False)
    assert model.get_layer("scale1_dense1").kernel.shape == (7 * 9 * 512, 4200)  # docs/design.md: 32256 -> 4200
