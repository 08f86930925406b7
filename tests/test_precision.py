"""mixed_float16: dynamic loss scaling through the per-group optimizer, overflow skips, float32 export."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdepth.models import dtype_policy, float32_copy
from kdepth.training import fit as fit_module
from kdepth.training.precision import cpu_flags, slow_precision_warning
from kdepth.training.stages import build_trainer

FLIPS = 'data.flip_group=["identity", "lr"]'


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        images = rng.uniform(0, 255, (2, 2, 32, 32, 3)).astype(np.float32)
        depth = rng.uniform(1.0, 5.0, (2, 2, 32, 32, 1)).astype(np.float32)
        yield tf.constant(images), {"depth": tf.constant(depth), "mask": tf.ones_like(depth)}


def _train(config, precision, steps=3):
    with dtype_policy(precision):
        keras.utils.set_random_seed(0)
        parts = build_trainer(config, 1)
        logs = [parts.trainer.train_on_batch(x, y, return_dict=True) for x, y in _batches(steps)]
    return parts, logs


def _initial_weights(config):
    keras.utils.set_random_seed(0)
    return [w.numpy() for w in build_trainer(config, 1).network.weights]


@pytest.mark.slow  # float16 convolutions fall back to Eigen on a CPU: 50-150 s here, the slowest default test
def test_mixed_float16_steps_are_finite_and_close_to_float32(tiny_config):
    config = tiny_config("f16", "model.dropout=0.0", FLIPS, "train.precision=mixed_float16", "train.optimizer=sgd")
    parts16, logs16 = _train(config, "mixed_float16")
    parts32, logs32 = _train(config, "float32")
    assert isinstance(parts16.trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert parts16.network.get_layer("block1_conv1").compute_dtype == "float16"
    for a, b in zip(logs16, logs32, strict=True):
        assert np.isfinite(a["loss"]) and a["loss_scale_skips"] == 0.0
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-2)
    # SGD's updates are the gradients (Adam's first steps are their signs, which rounding flips
    # where a gradient is near 0), so they must agree within float16 rounding.
    start = _initial_weights(config)
    deltas16, deltas32 = [], []
    for w0, w16, w32 in zip(start, parts16.network.weights, parts32.network.weights, strict=True):
        assert w16.dtype == "float32"  # variables stay float32 under the mixed policy
        deltas16.append((w16.numpy() - w0).ravel())
        deltas32.append((w32.numpy() - w0).ravel())
    d16, d32 = np.concatenate(deltas16), np.concatenate(deltas32)
    assert np.linalg.norm(d32) > 0
    assert np.linalg.norm(d16 - d32) < 0.05 * np.linalg.norm(d32)

def test_an_overflowing_step_is_skipped_counted_and_lowers_the_loss_scale(tiny_config):
    config = tiny_config("f16", "model.dropout=0.0", FLIPS, "train.precision=mixed_float16")
    with dtype_policy("mixed_float16"):
        keras.utils.set_random_seed(0)
        parts = build_trainer(config, 1)
        trainer, optimizer = parts.trainer, parts.trainer.optimizer
        (x, y), (x2, y2) = _batches(2)
        trainer.train_on_batch(x, y)  # builds the optimizer
        optimizer.dynamic_scale.assign(2.0**100)  # float16 gradients of this loss overflow
        before = [w.numpy() for w in trainer.trainable_weights]
        iterations = int(optimizer.iterations.numpy())
        logs = trainer.train_on_batch(x2, y2, return_dict=True)
    assert logs["loss_scale_skips"] == 1.0 and np.isfinite(logs["loss"])
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**99
    assert int(optimizer.iterations.numpy()) == iterations
    for b, w in zip(before, trainer.trainable_weights, strict=True):
        np.testing.assert_array_equal(b, w.numpy())


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: other\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(x86) == {"fpu", "sse2", "avx2", "fma"}
    assert cpu_flags(arm) is None and cpu_flags(tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("precision", "has_gpu", "flags", "warns"),
    [
        ("float32", False, {"avx2"}, None),
        ("mixed_float16", False, {"avx512_bf16"}, "no fast float16 kernels"),
        ("mixed_float16", True, set(), None),
        ("mixed_bfloat16", False, {"avx2", "fma"}, "none of ['avx512_bf16', 'amx_bf16']"),
        ("mixed_bfloat16", False, {"avx2", "amx_bf16"}, None),
        ("mixed_bfloat16", False, None, None),  # unknown CPU: nothing to say
        ("mixed_bfloat16", True, {"avx2"}, None),
    ],
)
def test_a_precision_slower_than_float32_here_is_named_with_the_fix(precision, has_gpu, flags, warns):
    warning = slow_precision_warning(precision, has_gpu, flags)
    if warns is None:
        assert warning is None
    else:
        assert warns in warning and "train.precision=float32" in warning


def test_fit_warns_before_building_in_an_emulated_precision(tiny_config, monkeypatch):
    class Built(Exception):
        pass

    def build_trainer_stub(*args, **kwargs):
        raise Built  # the warning must be out before the (slow) build and training

    monkeypatch.setattr(fit_module, "cpu_flags", lambda: {"sse2", "avx2"})
    monkeypatch.setattr(fit_module, "build_trainer", build_trainer_stub)
    lines = []
    with pytest.raises(Built):
        fit_module.fit(tiny_config("bf16", "train.precision=mixed_bfloat16"), echo=lines.append)
    assert any("mixed_bfloat16, but this CPU has none of" in line for line in lines)


def test_a_mixed_float16_network_is_exported_in_float32(tiny_network):
    with dtype_policy("mixed_float16"):
        network = tiny_network(scales=2)
    assert network.get_layer("block1_conv1").compute_dtype == "float16"
    rebuilt, policy = float32_copy(network)
    assert policy == "mixed_float16"
    assert all(layer.compute_dtype == "float32" for layer in rebuilt.layers if layer.weights)
    images = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    out16 = network(images)[network.final_scale].numpy()
    out32 = rebuilt(images)[rebuilt.final_scale].numpy()
    np.testing.assert_allclose(out32, out16, rtol=1e-2)
