"""`DepthNetwork`: the three-scale depth network (Li, Klein & Yao, as the TUM student project read it).

A `keras.Model` whose constructor builds its graph with the functional API (the keras-hub
Backbone pattern): its constructor arguments are its whole configuration, `get_config` returns
them and `from_config` rebuilds the same graph. Input "image" (B, H, W, 3) raw RGB 0-255;
outputs a dict {"scale1", "scale2", "scale3"} (only the scales built) of depth maps in metres,
each (B, h, w, 1) float32 and > 0. The layer table is in docs/design.md.

- Scale 1: the backbone's deepest features -> dropout -> dense `coarse_hidden` -> dropout ->
  dense to the scale-2 grid: the coarse map "scale1". With ``coarse="compact"`` (the device
  head) a 1x1 convolution first reduces the deepest map to `COMPACT_CHANNELS` channels, so the
  first dense layer is (h/32 * w/32 * 64) x `coarse_hidden` rather than VGG's 100 M weights;
  the output is the same global coarse map.
- Skips 1.1 / 1.2: the backbone's 1/8 and 1/16 maps -> conv 5x5x64 -> bilinear resize to the
  scale-2 grid.
- Scale 2 (~1/4): conv 9x9/2 + max-pool 2/2 on the image, then convs fed by the skips and the
  coarse map; output "scale2".
- Scale 3 (~1/2): conv 9x9/2 + max-pool 2/1 on the image, then convs fed by the scale-2 map
  upsampled x2; output "scale3".
- ``separable=True`` builds every ReLU convolution of scales 2 and 3 and of the skips as a
  depthwise-separable convolution (same names, kernel sizes and widths); the linear heads
  stay plain convolutions (a separable kernel starting at zero would never train).

Layer names are API (the trainer selects learning rates and frozen stages by name, see
`DepthNetwork.layer_groups`): the backbone keeps its Keras names (VGG16: `block1_conv1` ...
`block5_pool`), the rest are `scale1_*`, `skip1_1_*`, `skip1_2_*`, `scale2_*`, `scale3_*`; the
output layers are named `scale1`, `scale2`, `scale3` like the output keys.

Decisions beyond the layer table:

- Each scale's head is linear and its kernel starts at zero; a `DepthActivation` (exp of log
  depth, or softplus) turns it into metres, so the untrained network predicts `depth_init`
  everywhere and there is no dead zone (the poster's ReLU heads collapsed to all zeros).
- Later scales are fed the *pre-activation* maps of earlier scales (the head output z, which in
  "log" mode is log depth minus log(depth_init)), not depth in metres: z starts at 0, is scaled
  like log depth, carries no exp/log of tiny values and passes gradients linearly.
- The scale-2/3 image branches see the preprocessed image divided by 127.5 (`image_rescale`),
  roughly [-1, 1], so with He-normal init their activations start O(1) rather than O(100).
- Heads, activations and the scale-3 upsampling of the scale-2 map compute in float32 under a
  mixed-precision policy.
"""

import contextlib
import math
import numbers

import keras

from kdepth.config import choices
from kdepth.errors import ConfigError, KdepthError
from kdepth.models.backbones import get_backbone
from kdepth.models.layers import DEPTH_MODES, DepthActivation

SCALE_NAMES = ("scale1", "scale2", "scale3")
MIN_INPUT = 32  # VGG16's five 2x2 pools need at least 32 pixels per side
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (channels, convolutions) per block
VGG16_PARAMETERS = 14_714_688  # conv blocks 1-5 (include_top=False), whatever the input size
# Refused up front (`check_network_size`) instead of an out-of-memory error at build or in the
# first step. 2 G parameters are 8 GiB of float32 weights, about 32 GiB to train with Adam
# (weights, gradients, two moments). VGG16's activations take about 1.2 kB per input pixel.
MAX_PARAMETERS = 2_000_000_000
MAX_ACTIVATION_BYTES = 8 * 2**30

# Parameter groups (per-group learning rates and stage freezing) of the non-backbone layers,
# by layer-name prefix; the backbone's own prefixes come from its `BackboneSpec`.
HEAD_GROUP_PREFIXES = {
    "coarse": ("scale1",),
    "skip": ("skip1_1", "skip1_2"),
    "scale2": ("scale2",),
    "scale3": ("scale3",),
}
GROUPS = ("backbone", *HEAD_GROUP_PREFIXES)
SKIP_NORMS = choices("model", "skip_norm")


def check_input_size(input_size):
    """(H, W) as two ints >= MIN_INPUT; raises ConfigError naming `model.input_size` otherwise."""
    try:
        h, w = (int(v) for v in input_size)
        ok = [h, w] == list(input_size)
    except (TypeError, ValueError):
        ok = False
    if not ok or h < MIN_INPUT or w < MIN_INPUT:
        raise ConfigError(
            f"model.input_size={input_size!r} is not valid; it must be [H, W], two integers >= {MIN_INPUT} "
            f"(VGG16's five pools halve each side five times), e.g. [64, 80] or [232, 310]."
        )
    return h, w


def scale_sizes(input_size):
    """Output (h, w) of each scale for an input (H, W), without building the model.

    The scale-2 grid is the output of conv 9x9/2 "same" then max-pool 2x2/2 "same":
    ceil(ceil(H/2)/2). The coarse map "scale1" is predicted on that grid too. Scale 3 is the
    conv 9x9/2 "same" output (its max-pool has stride 1): ceil(H/2).

    Returns:
        {"scale1": (h2, w2), "scale2": (h2, w2), "scale3": (h3, w3)}.
    """
    h, w = check_input_size(input_size)
    h3, w3 = math.ceil(h / 2), math.ceil(w / 2)
    h2, w2 = math.ceil(h3 / 2), math.ceil(w3 / 2)
    return {"scale1": (h2, w2), "scale2": (h2, w2), "scale3": (h3, w3)}


def estimate_size(input_size, coarse_hidden=4200):
    """What the VGG16 network needs at least, computed without building it.

    Args:
        input_size: (H, W), each >= 32.
        coarse_hidden: width of `scale1_dense1`.

    Returns:
        {"parameters": VGG16 + the two dense layers of scale 1, exactly (the other layers add
        1-3 M that do not depend on the input size), "dense1_inputs": inputs of
        `scale1_dense1` (block5_pool flattened), "activation_bytes": float32 outputs of VGG16's
        13 convolutions and 5 pools for one image (training keeps them for the backward pass)}.
    """
    h, w = check_input_size(input_size)
    h2, w2 = scale_sizes((h, w))["scale2"]
    elements, hh, ww = 0, h, w
    for channels, convs in VGG16_BLOCKS:
        elements += convs * channels * hh * ww
        hh, ww = hh // 2, ww // 2  # VGG16's pools are 2x2 "valid"
        elements += channels * hh * ww
    dense1_inputs = hh * ww * VGG16_BLOCKS[-1][0]
    hidden = int(coarse_hidden)
    parameters = VGG16_PARAMETERS + dense1_inputs * hidden + hidden + hidden * h2 * w2 + h2 * w2
    return {"parameters": parameters, "dense1_inputs": dense1_inputs, "activation_bytes": 4 * elements}


def check_network_size(input_size, coarse_hidden=4200, backbone="vgg16", coarse="dense"):
    """Raises ConfigError, with the estimate, if the network would exceed `MAX_PARAMETERS` or
    `MAX_ACTIVATION_BYTES` of VGG16 activations per image; returns `estimate_size` otherwise.

    The estimate is the VGG16 network's with the dense coarse head; other backbones or heads are
    not checked (None is returned).
    """
    if backbone != "vgg16" or coarse != "dense":
        return None
    size = estimate_size(input_size, coarse_hidden)
    h, w = check_input_size(input_size)
    problems = []
    p, a = size["parameters"], size["activation_bytes"]
    if p > MAX_PARAMETERS:
        problems.append(
            f"it would have at least {p / 1e9:.1f} G parameters ({4 * p / 2**30:,.0f} GiB of float32 weights, about 4x that "
            f"to train with Adam; scale1_dense1 alone is {size['dense1_inputs']:,} x {int(coarse_hidden):,} with "
            f"model.coarse_hidden={int(coarse_hidden)}), more than the {MAX_PARAMETERS / 1e9:g} G kdepth allows"
        )
    if a > MAX_ACTIVATION_BYTES:
        problems.append(
            f"one image's VGG16 activations alone would take {a / 2**30:,.1f} GiB (float32, kept for the backward pass), "
            f"more than the {MAX_ACTIVATION_BYTES / 2**30:g} GiB per image kdepth allows"
        )
    if problems:
        raise ConfigError(
            f"model.input_size=[{h}, {w}] is too large: " + "; ".join(problems) + ". Use a smaller input size (the paper: "
            "[232, 310], 0.17 G parameters and 0.08 GiB per image)" + (" or a smaller model.coarse_hidden" if p > MAX_PARAMETERS else "")
            + "; kdepth predict and evaluate resize every image to the model's input size, so large photos need no large model."
        )
    return size


COARSE_HEADS = choices("model", "coarse")
COMPACT_CHANNELS = 64  # channels of the deepest map after scale1_reduce in the compact head


def check_backbone_input(input_size, backbone):
    """Raises ConfigError unless each side of `input_size` is a multiple the backbone needs."""
    spec = get_backbone(backbone)
    m = spec.side_multiple
    h, w = input_size
    if h % m or w % m:
        fit = [max(m, round(v / m) * m) for v in (h, w)]
        raise ConfigError(
            f"model.input_size=[{h}, {w}] does not suit model.backbone={backbone!r}: its strides need sides that are "
            f"multiples of {m} (otherwise its 1/8, 1/16 and 1/32 maps do not line up). Use e.g. {fit}."
        )


def _check_args(scales, output, coarse_hidden, dropout, conv_init, depth_init, backbone, coarse="dense",
                separable=False, backbone_alpha=1.0, width=64, kernel_size=0, skip_norm="none", bn_momentum=0.0,
                head_kernel_size=0):
    if skip_norm not in SKIP_NORMS:
        raise ConfigError(f"model.skip_norm={skip_norm!r} is not valid; allowed: {list(SKIP_NORMS)}.")
    if scales not in (1, 2, 3) or isinstance(scales, bool):
        raise ConfigError(f"model.scales={scales!r} is not valid; allowed: 1 (VGG + dense), 2 or 3.")
    if output not in DEPTH_MODES:
        raise ConfigError(f"model.output={output!r} is not valid; allowed: {list(DEPTH_MODES)}.")
    if not isinstance(coarse_hidden, numbers.Integral) or isinstance(coarse_hidden, bool) or coarse_hidden < 1:
        raise ConfigError(f"model.coarse_hidden={coarse_hidden!r} is not valid; it must be an integer >= 1 (paper: 4200).")
    if not (isinstance(dropout, numbers.Real) and 0.0 <= dropout < 1.0):
        raise ConfigError(f"model.dropout={dropout!r} is not valid; it must be a number in [0, 1), e.g. 0.5.")
    if not (isinstance(depth_init, numbers.Real) and depth_init > 0.0):
        raise ConfigError(f"model.depth_init={depth_init!r} is not valid; it must be a depth in metres > 0, e.g. 2.0.")
    try:
        keras.initializers.get(conv_init)
    except ValueError as err:
        raise ConfigError(
            f"model.conv_init={conv_init!r} is not a Keras initializer ({err}); use e.g. 'he_normal' or 'glorot_uniform'."
        ) from None
    get_backbone(backbone).check_alpha(backbone_alpha)
    get_backbone(backbone).check_bn_momentum(bn_momentum)
    if coarse not in COARSE_HEADS:
        raise ConfigError(f"model.coarse={coarse!r} is not valid; allowed: {list(COARSE_HEADS)}.")
    if not isinstance(width, numbers.Integral) or isinstance(width, bool) or width < 2:
        raise ConfigError(f"model.width={width!r} is not valid; it must be an integer >= 2 (paper: 64).")
    if not isinstance(kernel_size, numbers.Integral) or isinstance(kernel_size, bool) or kernel_size < 0:
        raise ConfigError(f"model.kernel_size={kernel_size!r} is not valid; it must be 0 (the paper's 9 and 5) or a size >= 1, e.g. 3.")
    if not isinstance(head_kernel_size, numbers.Integral) or isinstance(head_kernel_size, bool) or head_kernel_size < 0:
        raise ConfigError(
            f"model.head_kernel_size={head_kernel_size!r} is not valid; it must be 0 (as model.kernel_size) or a size >= 1, e.g. 1."
        )
    if not isinstance(separable, bool):
        raise ConfigError(f"model.separable={separable!r} is not valid; allowed: true or false.")


@contextlib.contextmanager
def dtype_policy(name):
    """Sets the global Keras dtype policy (float32, mixed_bfloat16, ...) inside the block only."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class _Builder:
    """Builds the layers of one network; a namespace for the layer factories of `_graph`."""

    def __init__(self, conv_init, output, depth_init, separable=False, width=64, kernel_size=0, skip_norm="none",
                 head_kernel_size=0):
        self.conv_init, self.output, self.depth_init = conv_init, output, float(depth_init)
        self.separable, self.kernel_size = separable, kernel_size
        self.head_kernel_size = head_kernel_size or kernel_size or 5
        self.width, self.wide = width, width * 3 // 2  # the paper's 64 and 96 channels
        self.skip_norm = skip_norm

    def conv(self, filters, kernel, name, strides=1):
        kernel = self.kernel_size or kernel
        if self.separable:
            return keras.layers.SeparableConv2D(
                filters, kernel, strides=strides, padding="same", activation="relu",
                depthwise_initializer=self.conv_init, pointwise_initializer=self.conv_init, name=name,
            )
        return keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", activation="relu",
                                   kernel_initializer=self.conv_init, name=name)

    def head(self, name):
        # Linear, zero kernel: z = 0 -> depth_init everywhere at the start; float32 under mixed precision.
        return keras.layers.Conv2D(1, self.head_kernel_size, padding="same", kernel_initializer="zeros", dtype="float32",
                                   name=name)

    def depth(self, z, name):
        return DepthActivation(mode=self.output, depth_init=self.depth_init, dtype="float32", name=name)(z)

    def skip(self, features, name, size):
        if self.skip_norm == "layer":
            # Post-ReLU inputs are all >= 0, so Adam drifts every kernel weight of a channel the
            # same way and the ReLU dies (docs/experiments.md); centred inputs do not drift.
            features = keras.layers.LayerNormalization(name=f"{name}_norm")(features)
        s = self.conv(self.width, 5, f"{name}_conv")(features)
        return keras.layers.Resizing(*size, interpolation="bilinear", name=f"{name}_resize")(s)


def _coarse(deep, dropout, coarse_hidden, size, head="dense", conv_init="he_normal"):
    """Scale 1: [1x1 reduce ->] flatten -> dropout -> dense -> dropout -> dense to the scale-2 grid; returns z1."""
    layers = keras.layers
    if head == "compact":
        deep = layers.Conv2D(COMPACT_CHANNELS, 1, activation="relu", kernel_initializer=conv_init, name="scale1_reduce")(deep)
    x = layers.Flatten(name="scale1_flatten")(deep)
    x = layers.Dropout(float(dropout), name="scale1_dropout1")(x)
    # float32 under a mixed policy too: a bfloat16 copy of the paper's 135 M-parameter kernel
    # would be kept for the backward pass (0.27 GB at 232x310) for 0.5% of the arithmetic.
    x = layers.Dense(int(coarse_hidden), activation="relu", dtype="float32", name="scale1_dense1")(x)
    x = layers.Dropout(float(dropout), name="scale1_dropout2")(x)
    x = layers.Dense(size[0] * size[1], kernel_initializer="zeros", dtype="float32", name="scale1_dense2")(x)
    return layers.Reshape((*size, 1), dtype="float32", name="scale1_reshape")(x)


def _scale2(b, img, taps, z1, skips, size):
    """Scale 2: the image branch, the skips 1.1 / 1.2 and the coarse map; returns z2."""
    layers = keras.layers
    x = b.conv(b.wide, 9, "scale2_conv1", strides=2)(img)
    x = layers.MaxPooling2D(2, strides=2, padding="same", name="scale2_pool1")(x)
    if skips:
        x = layers.Concatenate(name="scale2_concat1")([x, b.skip(taps["skip1_1"], "skip1_1", size)])
    x = b.conv(b.width, 5, "scale2_conv2")(x)
    x = b.conv(b.width, 5, "scale2_conv3")(x)
    if skips:
        x = layers.Concatenate(name="scale2_concat2")([x, b.skip(taps["skip1_2"], "skip1_2", size)])
    x = b.conv(b.width, 5, "scale2_conv4")(x)
    x = b.conv(b.width, 5, "scale2_conv5")(x)
    x = layers.Concatenate(name="scale2_concat3")([x, z1])
    for i in (6, 7, 8):
        x = b.conv(b.width, 5, f"scale2_conv{i}")(x)
    return b.head("scale2_head")(x)


def _scale3(b, img, z2, size):
    """Scale 3: the image branch and the scale-2 map upsampled onto the scale-3 grid; returns z3."""
    layers = keras.layers
    x = b.conv(b.wide, 9, "scale3_conv1", strides=2)(img)
    x = layers.MaxPooling2D(2, strides=1, padding="same", name="scale3_pool1")(x)
    x = b.conv(b.width, 5, "scale3_conv2")(x)
    # ~x2, resized exactly onto the scale-3 grid (an odd side is not exactly twice h2).
    up = layers.Resizing(*size, interpolation="bilinear", dtype="float32", name="scale3_upsample")(z2)
    x = layers.Concatenate(name="scale3_concat1")([x, up])
    for i in (3, 4, 5):
        x = b.conv(b.width, 5, f"scale3_conv{i}")(x)
    return b.head("scale3_head")(x)


def _graph(input_size, scales, skips, backbone, output, coarse_hidden, dropout, conv_init, depth_init,
           coarse="dense", separable=False, backbone_alpha=1.0, width=64, kernel_size=0, skip_norm="none",
           bn_momentum=0.0, head_kernel_size=0):
    """The functional graph: returns (image input, {scale: depth}, names of the backbone's layers)."""
    spec = get_backbone(backbone)
    sizes = scale_sizes(input_size)
    b = _Builder(conv_init, output, depth_init, separable, width, kernel_size, skip_norm, head_kernel_size)
    image = keras.Input(shape=(*input_size, 3), dtype="float32", name="image")
    preprocess = spec.preprocess()
    pre = preprocess(image)
    net = spec.build(pre, backbone_alpha, bn_momentum)
    taps = {role: net.get_layer(name).output for role, name in spec.taps.items()}
    z1 = _coarse(taps["deep"], dropout, coarse_hidden, sizes["scale1"], coarse, conv_init)
    outputs = {"scale1": b.depth(z1, "scale1")}
    if scales >= 2:
        img = pre if spec.branch_scale is None else keras.layers.Rescaling(spec.branch_scale, name="image_rescale")(pre)
        z2 = _scale2(b, img, taps, z1, skips, sizes["scale2"])
        outputs["scale2"] = b.depth(z2, "scale2")
    if scales >= 3:
        outputs["scale3"] = b.depth(_scale3(b, img, z2, sizes["scale3"]), "scale3")
    # The backbone model's layers include the graph's input and preprocessing it was built on.
    return image, outputs, tuple(layer.name for layer in net.layers if layer.name not in ("image", preprocess.name))


def serving_graph(image, finest, input_size):
    """The deploy model on a graph's image input and finest depth output: resized to the input size.

    Args:
        image: the graph's "image" input tensor.
        finest: its finest depth output (B, h, w, 1) in metres.
        input_size: (H, W) of `image`.

    Returns:
        A `keras.Model` named "deploy": float32 (B, H, W, 3) raw RGB 0-255 in, float32
        (B, H, W, 1) depth in metres out of a layer named "depth" (bilinear, half-pixel centres,
        as `tf.image.resize`).
    """
    depth = keras.layers.Resizing(*input_size, interpolation="bilinear", dtype="float32", name="depth")(finest)
    return keras.Model(inputs=image, outputs=depth, name="deploy")


def group_layers(layers, backbone_layers, model_name="kdepth"):
    """Groups layers for per-group learning rates and freezing.

    Args:
        layers: the model's layers.
        backbone_layers: names of the backbone's layers.
        model_name: for the error message.

    Returns:
        {"backbone": the backbone's layers, "coarse": scale1* layers, "skip": skip1_1* and
        skip1_2* layers, "scale2": scale2*, "scale3": scale3*}. Every group key is present
        (possibly empty); every layer with weights is in exactly one group.

    Raises:
        KdepthError: a layer with weights matches no group (an unknown layer name).
    """
    groups = {group: [] for group in GROUPS}
    backbone = set(backbone_layers)
    for layer in layers:
        if layer.name in backbone:
            groups["backbone"].append(layer)
            continue
        matches = [g for g, prefixes in HEAD_GROUP_PREFIXES.items() if layer.name.startswith(prefixes)]
        if matches:
            groups[matches[0]].append(layer)
        elif layer.weights:
            raise KdepthError(
                f"layer {layer.name!r} of model {model_name!r} has weights but matches no layer group; allowed: "
                f"the backbone's layers or the name prefixes {HEAD_GROUP_PREFIXES}. Rename the layer or add its prefix."
            )
    return groups


@keras.saving.register_keras_serializable(package="kdepth")
class DepthNetwork(keras.Model):
    """The three-scale depth network (module docstring).

    Args:
        input_size: (H, W) of the RGB input, each >= 32. The dense layers' sizes follow it.
        scales: 1 (backbone + dense coarse map), 2 (+ scale 2) or 3 (+ scale 3).
        skips: build skip layers 1.1 and 1.2 into scale 2.
        backbone: name of the backbone, one of `kdepth.models.backbones.BACKBONES` ("vgg16",
            "mobilenet_v2"; the latter needs sides that are multiples of 32).
        output: depth activation, "log" (exp), "softplus" or "relu" (the poster's legacy head,
            which can collapse to zero; for experiments).
        coarse_hidden: width of the first dense layer of scale 1 (layer 1.6).
        dropout: dropout rate before and after that dense layer.
        conv_init: kernel initializer of the non-backbone convolutions.
        depth_init: depth in metres every output predicts before training.
        coarse: scale-1 head, "dense" (the paper's) or "compact" (1x1 reduction first, for devices).
        separable: depthwise-separable convolutions in scales 2, 3 and the skips.
        backbone_alpha: width multiplier of backbones that have one (MobileNetV2); 1.0 otherwise.
        width: channels of the scale-2/3 and skip convolutions (the first of each image branch
            has 1.5x as many): the paper's 64 and 96.
        kernel_size: kernel of those convolutions and of the scale-2/3 heads; 0 = the paper's
            (9 for the image branches' first, 5 for the rest). 3 suits LiteRT's int8 depthwise
            kernels on a device (its 5x5 and 9x9 ones are several times slower per tap).
        head_kernel_size: kernel of the scale-2/3 heads (the linear 1-channel convolutions) if
            not 0; 0 = as `kernel_size`. 1 on a device: a 3x3 head at 96x128 took 2.5x a 1x1
            one in LiteRT int8 (docs/deploy.md).
        skip_norm: "none", or "layer": a LayerNormalization (`skip1_1_norm`, `skip1_2_norm`) on
            each skip branch's input.
        bn_momentum: momentum of the backbone's BatchNormalization moving statistics; 0 = the
            backbone's own (MobileNetV2: 0.999, whose statistics lag a network trained from
            random weights by about a thousand steps; docs/deploy.md). VGG16 has none and takes
            only 0.
        dtype: Keras dtype policy of the layers ("float32", "mixed_bfloat16", ...); None = the
            global policy. Heads and depth activations are float32 whatever it is.
        **kwargs: passed to `keras.Model` (name, trainable).

    The backbone starts from random weights; `kdepth.models.load_backbone_weights` loads
    ImageNet weights into it.

    Example:
        >>> network = DepthNetwork(input_size=(64, 80), coarse_hidden=16)
        >>> network.final_scale, network.input_size
        ('scale3', (64, 80))
        >>> depth = network.serving_model()(images)   # (B, 64, 80, 1) metres
    """

    def __init__(self, input_size=(64, 80), scales=3, skips=True, backbone="vgg16", output="log",
                 coarse_hidden=4200, dropout=0.5, conv_init="he_normal", depth_init=2.0, dtype=None,
                 coarse="dense", separable=False, backbone_alpha=1.0, width=64, kernel_size=0, skip_norm="none",
                 bn_momentum=0.0, head_kernel_size=0, **kwargs):
        input_size = check_input_size(input_size)
        options = dict(coarse=coarse, separable=separable, backbone_alpha=backbone_alpha, width=width, kernel_size=kernel_size,
                       skip_norm=skip_norm, bn_momentum=bn_momentum, head_kernel_size=head_kernel_size)
        _check_args(scales, output, coarse_hidden, dropout, conv_init, depth_init, backbone, **options)
        check_backbone_input(input_size, backbone)
        check_network_size(input_size, coarse_hidden, backbone, coarse)  # before allocating anything
        policy = dtype or keras.mixed_precision.global_policy().name
        with dtype_policy(policy):
            image, outputs, backbone_layers = _graph(
                input_size, scales, skips, backbone, output, coarse_hidden, dropout, conv_init, depth_init, **options
            )
        kwargs.setdefault("name", "kdepth")
        super().__init__(inputs=image, outputs=outputs, **kwargs)
        self.input_size = input_size
        self.scales = scales
        self.skips = bool(skips)
        self.backbone = backbone
        self.output_mode = output
        self.coarse_hidden = int(coarse_hidden)
        self.dropout = float(dropout)
        self.conv_init = conv_init
        self.depth_init = float(depth_init)
        self.skip_norm = skip_norm
        self.policy_name = policy
        self.coarse = coarse
        self.separable = separable
        self.backbone_alpha = float(backbone_alpha)
        self.width = int(width)
        self.kernel_size = int(kernel_size)
        self.bn_momentum = float(bn_momentum)
        self.head_kernel_size = int(head_kernel_size)
        self.backbone_layers = backbone_layers

    @property
    def scale_names(self):
        """The depth outputs built, coarse to fine, e.g. ("scale1", "scale2")."""
        return SCALE_NAMES[: self.scales]

    @property
    def final_scale(self):
        """The finest depth output built: "scale3", "scale2" or "scale1"."""
        return self.scale_names[-1]

    @property
    def recompute_layers(self):
        """Layers whose output a training step may keep in place of the activations before it.

        Recomputing those activations in the backward pass (`DepthTrainer(recompute=...)`) costs
        little: the backbone's recompute point (VGG16's block 1: 32% of the float32 activations
        for 3.4% of a step's arithmetic) and the first pool of each image branch (the output of
        its strided 9x9 convolution, for 0.5%).
        """
        layers = [get_backbone(self.backbone).recompute] + [f"scale{s}_pool1" for s in (2, 3) if self.scales >= s]
        return tuple(name for name in layers if name is not None)

    def serving_model(self):
        """The model that is served and exported (`serving_graph` on this network's finest scale)."""
        outputs = self.output  # this graph's own tensors (a shared layer may sit in several graphs)
        finest = outputs[self.final_scale] if isinstance(outputs, dict) else self.get_layer(self.final_scale).output
        return serving_graph(self.inputs[0], finest, self.input_size)

    def layer_groups(self):
        """The network's layers by parameter group (`group_layers`), for per-group learning rates and freezing."""
        return group_layers(self.layers, self.backbone_layers, self.name)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "input_size": list(self.input_size),
            "scales": self.scales,
            "skips": self.skips,
            "backbone": self.backbone,
            "output": self.output_mode,
            "coarse_hidden": self.coarse_hidden,
            "dropout": self.dropout,
            "conv_init": self.conv_init,
            "depth_init": self.depth_init,
            "skip_norm": self.skip_norm,
            "dtype": self.policy_name,
            "coarse": self.coarse,
            "separable": self.separable,
            "backbone_alpha": self.backbone_alpha,
            "width": self.width,
            "kernel_size": self.kernel_size,
            "bn_momentum": self.bn_momentum,
            "head_kernel_size": self.head_kernel_size,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

