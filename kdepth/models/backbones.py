"""Backbones of the depth network: how each is built, which of its layers the scales tap, and
where its ImageNet weights come from.

A backbone is a `keras.applications` model built on the network's own preprocessed image
tensor, so its layers become layers of the network under their Keras names. Its feature maps
are selected by layer name (`BackboneSpec.taps`), never by index:

- ``deep``: the deepest features, fed to the scale-1 coarse head;
- ``skip1_1``: the 1/8 feature map (skip 1.1 into scale 2);
- ``skip1_2``: the 1/16 feature map (skip 1.2 into scale 2).

The names of the backbones are the choices of the config key `model.backbone`:

- ``vgg16``: VGG16's convolution blocks on "caffe" input (BGR minus the ImageNet means).
- ``mobilenet_v2``: MobileNetV2 with width multiplier ``alpha`` on input x / 127.5 - 1; its
  strides need input sides that are multiples of 32.
"""

import dataclasses
import numbers
import os
import socket
from pathlib import Path

import keras

from kdepth.errors import ConfigError, KdepthError
from kdepth.models.layers import CaffePreprocess

DOWNLOAD_TIMEOUT_S = 20  # per socket operation; an offline machine fails at once anyway
WEIGHT_CHOICES = "'auto', 'imagenet', 'none' or a path to a .h5 file"


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the network needs to know of one backbone.

    Attributes:
        name: the `model.backbone` value, e.g. "vgg16".
        application: the `keras.applications` constructor.
        taps: {"deep", "skip1_1", "skip1_2"} -> layer name of that feature map.
        preprocess: makes the layer that turns raw RGB 0-255 into the backbone's input range.
        weights_file: file name of the ImageNet notop weights in ~/.keras/models.
        weights_url: where Keras downloads that file from.
        weights_md5: its md5, as `keras.applications` checks it.
        layer_prefixes: name prefixes of the backbone's layers (the "backbone" parameter group).
        branch_scale: factor from the preprocessed image to the input of the scale-2/3 image
            branches (about [-1, 1]); None when the preprocessed image is already in that range.
        alphas: width multipliers the backbone accepts; () = it has none (only 1.0).
        imagenet_alphas: width multipliers that have ImageNet weights.
        side_multiple: input height and width must be multiples of this.
        recompute: the layer up to which a training step recomputes activations instead of keeping
            them under `train.recompute = ["auto"]` (`DepthNetwork.recompute_layers`); None = none.
        bn_momentum: momentum of the backbone's BatchNormalization layers as `keras.applications`
            builds them; None = it has none.

    `weights_file` and `weights_url` may hold "{alpha}", filled in by `file_for` / `url_for`.
    """

    name: str
    application: object
    taps: dict
    preprocess: object
    weights_file: str
    weights_url: str
    weights_md5: str | None
    layer_prefixes: tuple
    branch_scale: float | None = 1.0 / 127.5
    alphas: tuple = ()
    imagenet_alphas: tuple = ()
    side_multiple: int = 1
    recompute: str | None = None
    bn_momentum: float | None = None

    def _options(self, alpha):
        return {"alpha": float(alpha)} if self.alphas else {}

    def build(self, tensor, alpha=1.0, bn_momentum=0.0):
        """The backbone built on `tensor` (the preprocessed image) with random weights.

        Args:
            tensor: the preprocessed image tensor.
            alpha: width multiplier (`check_alpha`).
            bn_momentum: momentum of every BatchNormalization layer's moving statistics; 0 keeps
                the backbone's own (`check_bn_momentum`).
        """
        model = self.application(include_top=False, weights=None, input_tensor=tensor, **self._options(alpha))
        if bn_momentum:
            for layer in model.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = float(bn_momentum)  # read at every call, so setting it after the build is enough
        return model

    def reference(self, input_shape, weights, alpha=1.0):
        """A stand-alone copy of the backbone loading `weights` (a file path)."""
        return self.application(include_top=False, weights=weights, input_shape=input_shape, **self._options(alpha))

    def check_bn_momentum(self, momentum):
        """Raises ConfigError unless `momentum` is 0 (the backbone's own) or a momentum this backbone can use."""
        ok = isinstance(momentum, numbers.Real) and not isinstance(momentum, bool)
        if ok and momentum == 0.0:
            return
        if self.bn_momentum is None:
            raise ConfigError(
                f"model.bn_momentum={momentum!r} is not valid for backbone {self.name!r}: it has no BatchNormalization "
                "layers. Leave model.bn_momentum at 0."
            )
        if not (ok and 0.0 < momentum < 1.0):
            raise ConfigError(
                f"model.bn_momentum={momentum!r} is not valid for backbone {self.name!r}; allowed: 0 (its own, "
                f"{self.bn_momentum}) or a number in (0, 1), e.g. 0.99."
            )

    def file_for(self, alpha=1.0):
        """File name of the ImageNet notop weights for width multiplier `alpha`."""
        return self.weights_file.format(alpha=float(alpha))

    def url_for(self, alpha=1.0):
        """Where Keras downloads `file_for(alpha)` from."""
        return self.weights_url.format(alpha=float(alpha))

    def check_alpha(self, alpha):
        """Raises ConfigError unless `alpha` is a width multiplier this backbone takes."""
        ok = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
        if self.alphas:
            ok = ok and self.alphas[0] <= alpha <= self.alphas[1]
            allowed = f"a number in [{self.alphas[0]}, {self.alphas[1]}] (ImageNet weights exist for {list(self.imagenet_alphas)})"
        else:
            ok = ok and alpha == 1.0
            allowed = f"1.0 ({self.name} has no width multiplier)"
        if not ok:
            raise ConfigError(f"model.backbone_alpha={alpha!r} is not valid for backbone {self.name!r}; allowed: {allowed}.")


_VGG_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"

VGG16 = BackboneSpec(
    name="vgg16",
    application=keras.applications.VGG16,
    taps={"deep": "block5_pool", "skip1_1": "block3_pool", "skip1_2": "block4_pool"},
    # VGG16's ImageNet weights expect "caffe" input: BGR minus the ImageNet means.
    preprocess=lambda: CaffePreprocess(dtype="float32", name="preprocess"),
    weights_file=_VGG_NOTOP_FILE,
    # Same origin and md5 as keras.applications.VGG16(weights="imagenet", include_top=False).
    weights_url="https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + _VGG_NOTOP_FILE,
    weights_md5="6d6bbae143d832006294945121d1f1fc",
    layer_prefixes=("block",),
    # Block 1's two full-resolution convolutions keep 32% of the network's float32 activations
    # for 3.4% of a train step's arithmetic (docs/performance.md).
    recompute="block1_pool",
)

_MOBILENET_V2_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5"

MOBILENET_V2 = BackboneSpec(
    name="mobilenet_v2",
    application=keras.applications.MobileNetV2,
    # block_5_add closes the 1/8 stage, block_12_add the 1/16 stage; out_relu is the 1/32 map.
    taps={"deep": "out_relu", "skip1_1": "block_5_add", "skip1_2": "block_12_add"},
    # keras.applications.mobilenet_v2.preprocess_input ("tf" mode): x / 127.5 - 1, RGB order.
    preprocess=lambda: keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, dtype="float32", name="preprocess"),
    weights_file=_MOBILENET_V2_FILE,
    # Same origin as keras.applications.MobileNetV2(weights="imagenet", include_top=False), which checks no md5.
    weights_url="https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + _MOBILENET_V2_FILE,
    weights_md5=None,
    layer_prefixes=("Conv1", "bn_Conv1", "expanded_conv", "block_", "Conv_1", "out_relu"),
    branch_scale=None,  # the preprocessed image is already in [-1, 1]
    alphas=(0.1, 1.4),
    imagenet_alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
    side_multiple=32,
    bn_momentum=0.999,  # keras.applications.MobileNetV2's BatchNormalization(momentum=0.999)
)

BACKBONES = {spec.name: spec for spec in (VGG16, MOBILENET_V2)}


def get_backbone(name):
    """The `BackboneSpec` called `name`; raises ConfigError naming the choices otherwise."""
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone={name!r} is not valid; allowed: {list(BACKBONES)}.")
    return BACKBONES[name]


def keras_models_dir():
    """~/.keras/models (or $KERAS_HOME/models), read at call time so tests can redirect it."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser() / "models"


def _copy_from_file(network, spec, path):
    """Loads a backbone weights file into a reference backbone and copies it into `network` by name."""
    h, w = network.input_size
    alpha = getattr(network, "backbone_alpha", 1.0)
    try:
        # Accepts the legacy Keras notop .h5 (the ImageNet file) and Keras 3 .weights.h5 files.
        ref = spec.reference((h, w, 3), str(path), alpha)
    except Exception as err:  # h5py/keras raise ValueError, OSError, KeyError... for a bad file
        raise KdepthError(
            f"{path}: cannot load {spec.name.upper()} weights from this file ({type(err).__name__}: {err}). It must be "
            f"a {spec.name.upper()} include_top=False weights file: the Keras notop file {spec.file_for(alpha)} or a "
            f".weights.h5 saved from keras.applications.{spec.application.__name__}(include_top=False)."
        ) from None
    copied = 0
    for ref_layer in ref.layers:
        if not ref_layer.weights:
            continue
        try:
            target = network.get_layer(ref_layer.name)
        except ValueError:
            raise KdepthError(
                f"model {network.name!r} has no layer {ref_layer.name!r} to receive {spec.name.upper()} weights from "
                f"{path}; load_backbone_weights needs a kdepth DepthNetwork with backbone={spec.name!r}."
            ) from None
        target.set_weights(ref_layer.get_weights())
        copied += 1
    return copied


def _download(spec, cached, alpha):
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urlretrieve has no timeout of its own
    try:
        return keras.utils.get_file(
            spec.file_for(alpha), spec.url_for(alpha), file_hash=spec.weights_md5,
            cache_dir=str(cached.parent.parent), cache_subdir="models",
        )
    except Exception as err:
        raise KdepthError(
            f"backbone_weights=imagenet: {cached} does not exist and downloading it from {spec.url_for(alpha)} failed "
            f"({type(err).__name__}: {err}); no network seems reachable. Copy {spec.file_for(alpha)} into "
            f"{cached.parent}, or pass its path as model.backbone_weights, or use backbone_weights=auto/none "
            "to start from random weights."
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def _check_imagenet_alpha(spec, alpha):
    if spec.alphas and float(alpha) not in spec.imagenet_alphas:
        raise ConfigError(
            f"backbone_weights=imagenet: {spec.name} has no ImageNet weights for model.backbone_alpha={alpha}; "
            f"they exist for {list(spec.imagenet_alphas)}. Pick one of those, or use backbone_weights=auto/none."
        )


def load_backbone_weights(network, weights):
    """Sets the backbone layers of a `DepthNetwork` from a weights source, copying by layer name.

    Args:
        network: a `kdepth.models.DepthNetwork`.
        weights: "none" (keep random weights), "imagenet" (the cached Keras notop file, else a
            download), "auto" (the cached file if present, else random weights; never
            downloads) or a path to a notop weights file (legacy Keras .h5 like the ImageNet
            file, or a Keras 3 .weights.h5).

    Returns:
        One sentence saying what the backbone starts from.

    Raises:
        ConfigError: `weights` is not a string or path, or "imagenet" for a width multiplier
            without ImageNet weights.
        KdepthError: the file does not exist or cannot be read, or "imagenet" is not cached
            and the download fails (e.g. no network).
    """
    weights = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if not isinstance(weights, str):
        raise ConfigError(f"backbone_weights={weights!r} is not valid; allowed: {WEIGHT_CHOICES}.")
    spec = get_backbone(network.backbone)
    label = spec.name.upper()
    alpha = getattr(network, "backbone_alpha", 1.0)
    cached = keras_models_dir() / spec.file_for(alpha)
    if weights == "none":
        return f"{label} starts from random weights (backbone_weights=none)"
    if weights == "auto":
        if not cached.is_file():
            return f"ImageNet {label} weights not found in {cached.parent}; {label} starts from random weights"
        weights = "imagenet"
    if weights == "imagenet":
        _check_imagenet_alpha(spec, alpha)
        if cached.is_file():
            # A file the user placed by hand is used as is (no md5 check): a wrong file fails to load.
            n = _copy_from_file(network, spec, cached)
            return f"{label} starts from ImageNet weights ({n} layers from {cached})"
        path = _download(spec, cached, alpha)
        n = _copy_from_file(network, spec, path)
        return f"{label} starts from ImageNet weights ({n} layers, downloaded to {path})"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise KdepthError(
            f"backbone_weights={weights!r}: file {path} does not exist. Allowed: 'auto', 'imagenet', 'none' or the path "
            f"of a {label} notop weights file such as {spec.file_for(alpha)}."
        )
    n = _copy_from_file(network, spec, path)
    return f"{label} starts from the weights in {path} ({n} layers)"
