"""kdepth.training.optimizers.InPlaceAdam: Keras's Adam arithmetic, updated in place."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdepth.training.optimizers import InPlaceAdam

SHAPES = {"kernel": (50, 30), "bias": (30,)}


def _train(optimizer_class, steps=6, **options):
    """Weights and slots after `steps` updates with gradients large (clipped) and small, alternately."""
    rng = np.random.default_rng(0)
    weights = [keras.Variable(rng.normal(size=shape).astype("float32"), name=name) for name, shape in SHAPES.items()]
    optimizer = optimizer_class(learning_rate=1e-2, **options)
    optimizer.exclude_from_weight_decay(var_names=["bias"])

    @tf.function
    def step(grads):
        optimizer.apply(grads, weights)

    for i in range(steps):
        step([tf.constant(rng.normal(size=w.shape).astype("float32") * (5.0 if i % 2 else 0.05)) for w in weights])
    slots = [v.numpy() for v in optimizer.variables if len(v.shape)]
    return [w.numpy() for w in weights], slots


@pytest.mark.parametrize("options", [{}, {"clipnorm": 1.0}, {"weight_decay": 0.05, "clipnorm": 1.0}])
def test_in_place_adam_equals_keras_adam(options):
    (weights, slots), (ref_weights, ref_slots) = _train(InPlaceAdam, **options), _train(keras.optimizers.Adam, **options)
    for got, want in zip(weights, ref_weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    # The second moments differ by more than the weights: TensorFlow's kernel forms 1 - beta_2 in
    # float32 (1 - 0.999f = 0.00099999), Keras in float64 before the cast (0.001), 1.3e-5 apart.
    for got, want in zip(slots, ref_slots, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=3e-5 * np.abs(want).max())


def test_in_place_adam_makes_at_most_two_weight_sized_tensors():
    """Keras's Adam makes about ten tensors the size of each weight per update; this one two
    (the clipped gradient, the decayed weight) and updates weight and moments in the kernel."""
    kernel = keras.Variable(np.ones((64, 48), "float32"), name="kernel")

    def weight_sized_ops(optimizer_class):
        optimizer = optimizer_class(learning_rate=1e-3, weight_decay=1e-4, clipnorm=1.0)
        optimizer.build([kernel])
        graph = tf.function(lambda g: optimizer.apply([g], [kernel])).get_concrete_function(
            tf.TensorSpec((64, 48), tf.float32)
        ).graph
        ops = [op for op in graph.get_operations() if op.type not in ("ReadVariableOp", "Identity", "IdentityN", "Placeholder")]
        sized = [op.type for op in ops for out in op.outputs if out.shape == (64, 48)]
        return sized, {op.type for op in ops}

    sized, types = weight_sized_ops(InPlaceAdam)
    assert "ResourceApplyAdam" in types
    assert len(sized) <= 2, sized
    keras_sized, _ = weight_sized_ops(keras.optimizers.Adam)
    assert len(keras_sized) >= 8, keras_sized


def test_the_trainer_optimizer_is_in_place_adam(tiny_config):
    from kdepth.training.stages import build_optimizer, network_from_config

    config = tiny_config("opt")
    _, optimizers, _ = build_optimizer(config, network_from_config(config, 2), stage=1)
    assert optimizers and all(isinstance(o, InPlaceAdam) for o in optimizers.values())
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(next(iter(optimizers.values()))))
    assert isinstance(restored, InPlaceAdam)
