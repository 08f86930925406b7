"""XLA: the area resize compiles and the whole train step compiles and matches the uncompiled step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdepth.ops import area_resize, masked_resize
from kdepth.training.stages import build_trainer


@pytest.mark.parametrize(
    "shape, size",
    [((2, 48, 72, 1), (24, 36)), ((2, 48, 72, 1), (17, 23)), ((1, 232, 310, 2), (58, 77)), ((3, 10, 12, 1), (23, 31))],
    ids=str,
)
def test_area_resize_matches_resize_area_and_compiles(shape, size):
    x = np.random.default_rng(0).uniform(0.0, 10.0, shape).astype(np.float32)
    expected = tf.image.resize(x, size, method="area").numpy()  # the TensorFlow kernel it replaces
    eager = area_resize(tf.constant(x), size).numpy()
    np.testing.assert_allclose(eager, expected, rtol=0, atol=1e-4)  # float32 rounding of sums of 10s
    compiled = tf.function(lambda t: area_resize(t, size), jit_compile=True)(tf.constant(x)).numpy()
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=1e-4)


def test_masked_resize_compiles_with_xla():
    depth = np.random.default_rng(1).uniform(1.0, 5.0, (2, 3, 48, 72, 1)).astype(np.float32)
    depth[:, :, 10:20, 5:30] = 0.0
    depth[0, 0, 3, 3] = np.nan
    eager = masked_resize(depth, (17, 23)).numpy()
    compiled = tf.function(lambda d: masked_resize(d, (17, 23)), jit_compile=True)(depth).numpy()
    decided = np.abs(eager - compiled) < 1e-5
    # Only a pixel whose valid fraction is within rounding of min_valid could flip.
    assert decided.mean() > 0.999
    np.testing.assert_allclose(compiled[decided], eager[decided], rtol=1e-6)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (2, 3, 32, 32, 3)).astype(np.float32)
    depth = rng.uniform(1.0, 5.0, (2, 3, 32, 32, 1)).astype(np.float32)
    mask = (rng.uniform(size=depth.shape) > 0.2).astype(np.float32)
    return tf.constant(images), {"depth": tf.constant(depth), "mask": tf.constant(mask)}


def _loss_and_grads(trainer):
    def run(images, target):
        with tf.GradientTape() as tape:
            preds = trainer(images, training=True)
            _, total = trainer.compute_terms(target, preds)
        return total, tape.gradient(total, trainer.trainable_variables)

    return run


@pytest.mark.slow  # ~45 s: XLA compiles the gradient function and then the whole train step
def test_jit_compiled_train_step_matches_the_uncompiled_one(tiny_config):
    config = tiny_config(
        "xla", "model.dropout=0.0", "data.flip_group=[\"identity\", \"lr\", \"ud\"]",
        "loss.set_weight=0.1", "loss.silog_weight=0.5", "loss.grad_weight=0.5",
    )
    keras.utils.set_random_seed(0)
    parts = build_trainer(config, 1, jit_compile=True)
    trainer = parts.trainer
    images, target = _batch()
    plain_loss, plain_grads = tf.function(_loss_and_grads(trainer))(images, target)
    xla_loss, xla_grads = tf.function(_loss_and_grads(trainer), jit_compile=True)(images, target)
    np.testing.assert_allclose(xla_loss.numpy(), plain_loss.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(xla_grads, plain_grads, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    assert trainer.jit_compile  # Keras keeps XLA on: no layer opts out
    # The whole step (gradients, clipping, the per-group optimizer, metrics) compiles with XLA.
    before = [v.numpy() for v in trainer.trainable_variables]
    logs = trainer.train_on_batch(images, target, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["skipped_batches"] == 0.0
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, trainer.trainable_variables, strict=True))
