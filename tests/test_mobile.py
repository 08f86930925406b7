"""The MobileNetV2 backbone: shapes, layer groups, config round trip, stage-1 fit and int8 export.

MobileNetV2 with alpha 0.35 builds at 32x32 (its 1/32 map is 1x1), so every test stays tiny.
"""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from kdepth.config import choices, load_config
from kdepth.errors import ConfigError
from kdepth.export import export_model, fold_channel_flip
from kdepth.models import DepthNetwork, load_backbone_weights, load_network_file
from kdepth.models.backbones import MOBILENET_V2, VGG16
from kdepth.training.fit import fit
from kdepth.training.stages import network_from_config

MOBILE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mobile.toml"
TINY_MOBILE = {
    "input_size": (32, 32), "backbone": "mobilenet_v2", "backbone_alpha": 0.35, "coarse": "compact",
    "separable": True, "width": 8, "coarse_hidden": 16, "kernel_size": 3,
}
MOBILE_SETS = ["model.input_size=[32, 32]", "model.backbone_alpha=0.35", "model.width=8", "model.coarse_hidden=16", "model.kernel_size=3"]


def _mobile(**overrides):
    return DepthNetwork(**{**TINY_MOBILE, **overrides})


def test_mobile_network_has_the_scale_grids_and_taps_by_name():
    net = _mobile(scales=3)
    shapes = {name: tuple(net.get_layer(name).output.shape[1:]) for name in ("scale1", "scale2", "scale3")}
    assert shapes == {"scale1": (8, 8, 1), "scale2": (8, 8, 1), "scale3": (16, 16, 1)}
    # skips read the 1/8 and 1/16 maps, the compact head the 1/32 map
    assert net.get_layer("block_5_add").output.shape[1:3] == (4, 4)
    assert net.get_layer("block_12_add").output.shape[1:3] == (2, 2)
    assert net.get_layer("scale1_reduce").output.shape[1:] == (1, 1, 64)
    assert MOBILENET_V2.taps == {"deep": "out_relu", "skip1_1": "block_5_add", "skip1_2": "block_12_add"}
    assert "image_rescale" not in [layer.name for layer in net.layers]  # its input is already [-1, 1]
    for name in ("scale2_conv1", "scale2_conv5", "scale3_conv4", "skip1_1_conv"):
        assert isinstance(net.get_layer(name), keras.layers.SeparableConv2D), name
    assert type(net.get_layer("scale2_head")) is keras.layers.Conv2D  # zero-init heads stay plain convolutions
    assert net.get_layer("scale2_conv1").pointwise_kernel.shape[-1] == 12  # 1.5 x width
    assert net.get_layer("scale2_conv1").depthwise_kernel.shape[:2] == (3, 3)  # kernel_size replaces the paper's 9
    assert net.get_layer("scale3_head").kernel.shape == (3, 3, 8, 1)
    paper = _mobile(scales=2, kernel_size=0)
    assert paper.get_layer("scale2_conv1").depthwise_kernel.shape[:2] == (9, 9)
    assert paper.get_layer("scale2_head").kernel.shape[:2] == (5, 5)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    depth = net.serving_model().predict_on_batch(x)
    assert depth.shape == (2, 32, 32, 1)
    np.testing.assert_allclose(depth, 2.0, rtol=1e-6)  # zero heads: depth_init everywhere


def test_mobile_preprocessing_is_x_over_127_5_minus_1():
    net = _mobile(scales=1)
    x = np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(net.get_layer("preprocess")(x)), [[[[-1.0, 0.0, 1.0]]]])


def test_mobile_layer_groups_cover_every_weight_and_the_backbone_is_mobilenet():
    net = _mobile(scales=3)
    groups = net.layer_groups()
    names = {g: {layer.name for layer in layers if layer.weights} for g, layers in groups.items()}
    assert {"Conv1", "bn_Conv1", "block_5_project", "Conv_1"} <= names["backbone"]
    assert names["coarse"] == {"scale1_reduce", "scale1_dense1", "scale1_dense2"}
    assert names["skip"] == {"skip1_1_conv", "skip1_2_conv"}
    grouped = sum(len(v) for v in names.values())
    assert grouped == len([layer for layer in net.layers if layer.weights])
    assert not any(name.startswith("block") and "conv" in name for name in names["backbone"])  # no VGG layers


def test_mobile_input_sides_must_be_multiples_of_32():
    with pytest.raises(ConfigError, match=r"input_size=\[48, 64\].*multiples of 32.*\[64, 64\]"):
        _mobile(input_size=(48, 64))


def test_alpha_is_checked_per_backbone():
    with pytest.raises(ConfigError, match="backbone_alpha=0.5 is not valid for backbone 'vgg16'"):
        DepthNetwork(input_size=(32, 32), coarse_hidden=16, backbone_alpha=0.5)
    with pytest.raises(ConfigError, match=r"backbone_alpha=2.0 is not valid for backbone 'mobilenet_v2'"):
        _mobile(backbone_alpha=2.0)
    with pytest.raises(ConfigError, match="model.coarse='global' is not valid"):
        _mobile(coarse="global")


def test_mobile_config_round_trip():
    net = _mobile(scales=2, dropout=0.1)
    config = net.get_config()
    again = DepthNetwork.from_config(config)
    assert again.get_config() == config
    assert [layer.name for layer in again.layers] == [layer.name for layer in net.layers]
    assert again.count_params() == net.count_params()
    assert "mobilenet_v2" in choices("model", "backbone")


def _batch_norms(net):
    return [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]


def test_bn_momentum_reaches_every_backbone_batch_norm_and_its_updates():
    assert {layer.momentum for layer in _batch_norms(_mobile(scales=1))} == {0.999}  # 0: MobileNetV2's own
    net = _mobile(scales=1, bn_momentum=0.9)
    norms = _batch_norms(net)
    assert len(norms) == 52 and {layer.momentum for layer in norms} == {0.9}
    bn = net.get_layer("bn_Conv1")
    x = np.random.default_rng(3).normal(2.0, 1.0, (4, 8, 8, bn.moving_mean.shape[0])).astype("float32")
    bn(x, training=True)
    # moving_mean starts at 0: one update leaves (1 - momentum) x the batch mean
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-5)
    again = DepthNetwork.from_config(net.get_config())
    assert again.get_config()["bn_momentum"] == 0.9
    assert {layer.momentum for layer in _batch_norms(again)} == {0.9}


@pytest.mark.parametrize("kwargs, message", [
    ({"bn_momentum": 0.99}, "bn_momentum=0.99 is not valid for backbone 'vgg16': it has no BatchNormalization"),
    ({"backbone": "mobilenet_v2", "backbone_alpha": 0.35, "bn_momentum": 1.0}, r"bn_momentum=1.0 .*allowed: 0 \(its own, 0.999\)"),
    ({"backbone": "mobilenet_v2", "backbone_alpha": 0.35, "bn_momentum": True}, "bn_momentum=True is not valid"),
])
def test_bad_bn_momentum_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DepthNetwork(input_size=(32, 32), coarse_hidden=16, **kwargs)


def test_head_kernel_size_sets_only_the_heads_and_round_trips():
    net = _mobile(scales=3, head_kernel_size=1)
    assert net.get_layer("scale2_head").kernel.shape == (1, 1, 8, 1)
    assert net.get_layer("scale3_head").kernel.shape == (1, 1, 8, 1)
    assert net.get_layer("scale3_conv4").depthwise_kernel.shape[:2] == (3, 3)  # the other convolutions keep kernel_size
    again = DepthNetwork.from_config(net.get_config())
    assert again.get_config()["head_kernel_size"] == 1
    assert again.get_layer("scale3_head").kernel.shape == (1, 1, 8, 1)
    np.testing.assert_allclose(again.serving_model().predict_on_batch(np.zeros((1, 32, 32, 3), "float32")), 2.0, rtol=1e-6)
    assert _mobile(scales=2).get_layer("scale2_head").kernel.shape[:2] == (3, 3)  # 0: as kernel_size


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_head_kernel_size_is_a_config_error(value):
    with pytest.raises(ConfigError, match=rf"model.head_kernel_size={value!r} is not valid; it must be 0"):
        _mobile(scales=2, head_kernel_size=value)


def test_mobile_toml_builds_the_device_network():
    config = load_config([MOBILE_CONFIG])
    m = config.model
    assert (m.backbone, m.coarse, m.separable) == ("mobilenet_v2", "compact", True)
    assert m.input_size[0] % 32 == 0 and m.input_size[1] % 32 == 0
    small = load_config([MOBILE_CONFIG], MOBILE_SETS)
    net = network_from_config(small, 2)
    assert (net.backbone, net.backbone_alpha, net.coarse, net.separable, net.width) == ("mobilenet_v2", 0.35, "compact", True, 8)
    assert net.get_layer("scale2_head").kernel.shape[:2] == (m.head_kernel_size,) * 2


def test_mobilenet_weights_from_a_keras3_weights_file(tmp_path):
    keras.utils.set_random_seed(1)
    ref = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    path = tmp_path / "mnv2.weights.h5"
    ref.save_weights(path)
    net = _mobile(scales=1)
    message = load_backbone_weights(net, path)
    assert message.startswith("MOBILENET_V2 starts from the weights in")
    for name in ("Conv1", "block_5_project", "Conv_1_bn"):
        for a, b in zip(net.get_layer(name).get_weights(), ref.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="no ImageNet weights for model.backbone_alpha=0.4"):
        load_backbone_weights(_mobile(scales=1, backbone_alpha=0.4), "imagenet")
    assert MOBILENET_V2.file_for(0.35) == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    assert VGG16.file_for(0.35) == VGG16.weights_file


def test_fold_has_nothing_to_fold_in_a_mobile_network():
    net = _mobile(scales=2)
    folded, convs = fold_channel_flip(net)
    assert convs == []
    x = np.random.default_rng(2).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(folded.predict_on_batch(x)["scale2"], net.predict_on_batch(x)["scale2"])


@pytest.mark.slow
def test_mobile_fit_stage1_then_int8_export(tiny_config, tmp_path):
    config = tiny_config("mobile", *MOBILE_SETS, "model.backbone=\"mobilenet_v2\"", "model.coarse=\"compact\"",
                         "model.separable=true", "train.epochs=1", "train.steps_per_epoch=2",
                         "export.representative_samples=4")
    result = fit(config)
    net = load_network_file(result.model_path)
    assert (net.backbone, net.separable, net.final_scale) == ("mobilenet_v2", True, "scale2")
    summary = json.loads((result.stage_dir / "summary.json").read_text())
    assert 0.0 <= summary["val"]["delta1"] <= 1.0
    report = export_model(result.stage_dir, tmp_path / "export", ["none", "int8"], parity_images=2, echo=lambda *a: None)
    assert report.ok
    meta = json.loads(report.metadata_path.read_text())
    int8 = meta["tflite"]["model_int8.tflite"]
    assert int8["graph"]["channel_flip_folded_into"] == []
    assert int8["inputs"][0]["dtype"] == "uint8"
    assert report.tflite["int8"].stat().st_size < report.tflite["none"].stat().st_size
