"""Keras's Adam with an update that makes no copy the size of a weight.

Keras's Adam computes each update from element-wise ops: per-tensor clipping, weight decay and
the moment and weight updates each allocate new tensors as large as the weight. For the paper's
scale-1 dense kernel (135 M parameters, 0.54 GB in float32) several of them are alive at once,
and the update set the peak memory of a 232x310 training step (docs/performance.md). `InPlaceAdam`
does the same arithmetic with TensorFlow's in-place `ResourceApplyAdam` kernel, the clipping
with one scaled copy of the gradient and the weight decay with one scaled copy of the weight.
It equals Keras's Adam within float32 rounding (`tests/test_optimizers.py`).
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="kdepth")
class InPlaceAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` (decoupled weight decay, clipnorm) updated in place.

    Takes Keras's Adam arguments. With `amsgrad=True`, or clipping by `clipvalue` or
    `global_clipnorm`, the respective part is Keras's own.

    Example:

        >>> opt = InPlaceAdam(learning_rate=1e-3, weight_decay=1e-4, clipnorm=1.0)
    """

    def _clip_by_norm(self, values, axes=None):
        if axes is not None:
            return super()._clip_by_norm(values, axes)
        flat = tf.reshape(values, [-1])
        norm = tf.sqrt(tf.tensordot(flat, flat, 1))  # no squared copy of the gradient
        clipnorm = tf.cast(self.clipnorm, values.dtype)
        return values * (clipnorm / tf.maximum(norm, clipnorm))

    def _apply_weight_decay(self, variables):
        """Done in `update_step`, per variable, in place of Keras's two copies of each weight."""

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        if self.weight_decay is not None and self._use_weight_decay(variable):
            variable.assign_sub(variable * (lr * tf.cast(self.weight_decay, dtype)))
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, local_step),
            beta2_power=tf.pow(beta_2, local_step),
            lr=lr,
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )
