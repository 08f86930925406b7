"""Custom Keras layers of the kdepth network.

Both layers are registered for `.keras` serialization, have no weights and use only ops that
TFLite has as builtins (REVERSE_V2, SUB, ADD, EXP, LOG, ABS, MAXIMUM, MINIMUM), so an exported
model needs no Flex delegate. No Lambda layers: they do not serialize safely.
"""

import math

import keras
from keras import ops

from kdepth.config import choices
from kdepth.errors import ConfigError

# VGG16 "caffe" preprocessing: per-channel ImageNet means in BGR order
# (keras.applications.imagenet_utils, mode="caffe").
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

DEPTH_MODES = choices("model", "output")


@keras.saving.register_keras_serializable(package="kdepth")
class CaffePreprocess(keras.layers.Layer):
    """VGG16 "caffe" preprocessing inside the model: RGB -> BGR, then subtract the BGR means.

    Exported models therefore take raw RGB in 0-255. Build it with `dtype="float32"` so the
    subtraction stays exact under a mixed-precision policy (the VGG convolutions cast after it).

    Args:
        mean: three per-channel means in BGR order, subtracted after the channel swap.
        **kwargs: passed to `keras.layers.Layer` (name, dtype, ...).
    """

    def __init__(self, mean=CAFFE_BGR_MEAN, **kwargs):
        super().__init__(**kwargs)
        mean = tuple(float(m) for m in mean)
        if len(mean) != 3:
            raise ConfigError(f"CaffePreprocess mean has {len(mean)} values {list(mean)}; it needs exactly 3 (B, G, R).")
        self.mean = mean

    def call(self, inputs):
        bgr = ops.flip(inputs, axis=-1)
        return bgr - ops.convert_to_tensor(self.mean, dtype=bgr.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"mean": list(self.mean)})
        return config


def _softplus_inverse(y):
    """x with softplus(x) = y, for y > 0 (stable for large y)."""
    return y + math.log(-math.expm1(-y))


def _guard(x, low, high):
    """x clipped to [low, high] in value, with the identity's gradient (straight-through).

    A plain clip passes no gradient outside the bounds, so a head pushed past them by one large
    step would stay there for good (docs/experiments.md, the collapse experiment); with the
    identity's gradient the loss pulls it back. The value is exactly the clipped one: for finite
    x, x - stop_gradient(x) is exactly 0.
    """
    return ops.stop_gradient(ops.clip(x, low, high)) + (x - ops.stop_gradient(x))


@keras.saving.register_keras_serializable(package="kdepth")
class DepthActivation(keras.layers.Layer):
    """Turns a linear head output z into depth in metres, always > 0 (no dead zone but in "relu").

    - ``mode="log"``: depth = exp(z + log(depth_init)); z is log depth up to a constant.
    - ``mode="softplus"``: depth = softplus(z + softplus^-1(depth_init)).
    - ``mode="relu"``: depth = max(z + depth_init, min_depth), the seed poster's ReLU head kept
      for the collapse experiment: it has a dead zone (below min_depth no gradient flows), : once
      every pixel of a head is there (a "zero" prediction), no gradient reaches the network.

    Every mode gives exactly `depth_init` for z = 0, so a head whose kernel starts at zero predicts
    `depth_init` metres everywhere before training. In "log" and "softplus" the result is clamped
    to [min_depth, max_depth] only as a numerical guard (exp overflow, softplus underflow to 0),
    and the clamp passes the gradient through unchanged, so a head pushed beyond a bound by a
    large step is pulled back by the loss instead of staying there. Build it with `dtype="float32"`.

    Args:
        mode: "log", "softplus" or "relu".
        depth_init: depth in metres predicted for z = 0; > 0.
        min_depth: lower guard in metres; > 0.
        max_depth: upper guard in metres; > min_depth and > depth_init.
        **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, mode="log", depth_init=2.0, min_depth=1e-4, max_depth=1e4, **kwargs):
        super().__init__(**kwargs)
        if mode not in DEPTH_MODES:
            raise ConfigError(f"DepthActivation mode={mode!r} is unknown; allowed: {list(DEPTH_MODES)} (model.output).")
        depth_init, min_depth, max_depth = float(depth_init), float(min_depth), float(max_depth)
        if not 0.0 < min_depth < depth_init < max_depth:
            raise ConfigError(
                f"DepthActivation needs 0 < min_depth < depth_init < max_depth; received min_depth={min_depth}, "
                f"depth_init={depth_init}, max_depth={max_depth}. Set model.depth_init to a depth in metres, e.g. 2.0."
            )
        self.mode = mode
        self.depth_init = depth_init
        self.min_depth = min_depth
        self.max_depth = max_depth
        # The shift that makes z = 0 map to depth_init.
        offsets = {"log": math.log, "relu": float, "softplus": _softplus_inverse}
        self.offset = offsets[mode](depth_init)

    def call(self, inputs):
        x = inputs + self.offset
        if self.mode == "log":
            # Clamp in log space so exp can neither overflow to inf nor underflow to 0.
            return ops.exp(_guard(x, math.log(self.min_depth), math.log(self.max_depth)))
        if self.mode == "relu":
            return ops.clip(x, self.min_depth, self.max_depth)  # relu, then the guard: 0 becomes min_depth
        # softplus(x) = max(x, 0) + log(1 + exp(-|x|)), written with TFLite builtin ops only.
        y = ops.maximum(x, 0.0) + ops.log(1.0 + ops.exp(-ops.abs(x)))
        return _guard(y, self.min_depth, self.max_depth)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"mode": self.mode, "depth_init": self.depth_init, "min_depth": self.min_depth, "max_depth": self.max_depth}
        )
        return config
