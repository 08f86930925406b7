"""Tests of the three-scale depth network: shapes, variants, heads, groups, saving, weights."""

import math

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from kdepth.errors import ConfigError, KdepthError
from kdepth.models import DepthNetwork, load_backbone_weights, load_network_file, scale_sizes
from kdepth.models.backbones import VGG16
from kdepth.models.depth_network import group_layers
from kdepth.models.layers import CaffePreprocess, DepthActivation

VGG_NOTOP_FILE = VGG16.weights_file

SMALL = {"coarse_hidden": 16}  # keeps the dense layers tiny; the architecture is unchanged


def rgb(batch, h, w, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, h, w, 3)).astype("float32")


@pytest.fixture(scope="module")
def model_64x80():
    return DepthNetwork((64, 80), **SMALL)


# ---------------------------------------------------------------- sizes and variants


def test_scale_sizes_follow_the_conv_and_pool_arithmetic():
    # conv 9x9/2 "same" -> ceil(H/2) (scale 3); max-pool 2/2 "same" -> ceil(ceil(H/2)/2) (scale 2).
    assert scale_sizes((232, 310)) == {"scale1": (58, 78), "scale2": (58, 78), "scale3": (116, 155)}
    assert scale_sizes((33, 45)) == {"scale1": (9, 12), "scale2": (9, 12), "scale3": (17, 23)}
    assert scale_sizes([64, 80]) == {"scale1": (16, 20), "scale2": (16, 20), "scale3": (32, 40)}


@pytest.mark.parametrize("size", [(31, 64), (64, 0), (64,), "64x80", (64.5, 80)])
def test_bad_input_size_is_refused_with_the_value(size):
    with pytest.raises(ConfigError, match=r"model.input_size=.*\[H, W\].*>= 32"):
        scale_sizes(size)
    with pytest.raises(ConfigError, match="model.input_size"):
        DepthNetwork(size, **SMALL)


@pytest.mark.parametrize("size", [(32, 32), (33, 45)])
def test_outputs_have_the_names_and_shapes_of_scale_sizes(size):
    model = DepthNetwork(size, **SMALL)
    out = model(rgb(2, *size), training=False)
    expected = scale_sizes(size)
    assert sorted(out) == ["scale1", "scale2", "scale3"]
    for key, (h, w) in expected.items():
        assert tuple(out[key].shape) == (2, h, w, 1)
        assert out[key].dtype == "float32"
    assert model.input.shape[1:] == (size[0], size[1], 3)
    assert model.get_layer("image").name == "image"


def test_64x80_outputs_match_scale_sizes(model_64x80):
    out = model_64x80(rgb(1, 64, 80), training=False)
    assert {k: tuple(v.shape[1:3]) for k, v in out.items()} == scale_sizes((64, 80))


@pytest.mark.parametrize("scales", [1, 2, 3])
def test_scales_build_only_their_outputs_and_layers(scales):
    model = DepthNetwork((32, 32), scales=scales, **SMALL)
    keys = [f"scale{i}" for i in range(1, scales + 1)]
    assert sorted(model(rgb(1, 32, 32), training=False)) == keys
    names = {layer.name for layer in model.layers}
    assert ("scale2_head" in names) == (scales >= 2)
    assert ("skip1_1_conv" in names) == (scales >= 2)  # skips only feed scale 2
    assert ("scale3_head" in names) == (scales >= 3)
    assert {"block1_conv1", "block3_pool", "block4_pool", "block5_pool", "scale1_dense1", "scale1_dense2"} <= names


def test_skips_off_removes_skip_layers_but_keeps_the_coarse_concat():
    on = {layer.name for layer in DepthNetwork((32, 32), skips=True, **SMALL).layers}
    off_model = DepthNetwork((32, 32), skips=False, **SMALL)
    off = {layer.name for layer in off_model.layers}
    skip_layers = {"skip1_1_conv", "skip1_1_resize", "skip1_2_conv", "skip1_2_resize", "scale2_concat1", "scale2_concat2"}
    assert skip_layers <= on
    assert not skip_layers & off
    assert on - off == skip_layers
    assert "scale2_concat3" in off
    # scale2_conv2 then sees only the 96 pooled channels of scale2_conv1, not 96 + 64.
    assert off_model.get_layer("scale2_conv2").kernel.shape[2] == 96
    assert off_model(rgb(1, 32, 32), training=False)["scale2"].shape == (1, 8, 8, 1)


def test_coarse_map_and_scale2_logits_feed_the_next_scale(model_64x80):
    # scale2_concat3 = 64 conv channels + the 1-channel coarse map; scale3_concat1 = 64 + upsampled scale 2.
    assert model_64x80.get_layer("scale2_concat3").output.shape[-1] == 65
    assert model_64x80.get_layer("scale3_concat1").output.shape[-1] == 65
    assert model_64x80.get_layer("scale3_upsample").output.shape[1:3] == scale_sizes((64, 80))["scale3"]
    assert model_64x80.get_layer("skip1_1_resize").output.shape[1:] == (16, 20, 64)
    assert model_64x80.get_layer("skip1_2_resize").output.shape[1:] == (16, 20, 64)


def test_dense_layer_size_follows_the_input_size():
    # 232x310: block5_pool is floor(232/32) x floor(310/32) x 512 = 7 x 9 x 512 = 32256 inputs.
    model = DepthNetwork((232, 310))
    dense1 = model.get_layer("scale1_dense1")
    assert tuple(dense1.kernel.shape) == (7 * 9 * 512, 4200)
    assert dense1.count_params() == 32256 * 4200 + 4200  # ~135 M (docs/design.md, layer table)
    assert tuple(model.get_layer("scale1_dense2").kernel.shape) == (4200, 58 * 78)
    out = model(rgb(1, 232, 310), training=False)
    assert {k: tuple(v.shape[1:3]) for k, v in out.items()} == scale_sizes((232, 310))

    small = DepthNetwork((64, 80), coarse_hidden=100)
    assert tuple(small.get_layer("scale1_dense1").kernel.shape) == (2 * 2 * 512, 100)
    assert tuple(small.get_layer("scale1_dense2").kernel.shape) == (100, 16 * 20)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scales": 4}, "model.scales=4"),
        ({"output": "tanh"}, "model.output='tanh'"),
        ({"coarse_hidden": 0}, "model.coarse_hidden=0"),
        ({"dropout": 1.0}, "model.dropout=1.0"),
        ({"depth_init": 0.0}, "model.depth_init=0.0"),
        ({"conv_init": "no_such_init"}, "model.conv_init='no_such_init'"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DepthNetwork((32, 32), **kwargs)


# ---------------------------------------------------------------- heads and layers


@pytest.mark.parametrize("output", ["log", "softplus", "relu"])
def test_untrained_network_predicts_depth_init_everywhere(output):
    model = DepthNetwork((32, 32), output=output, depth_init=3.5, **SMALL)
    for key, value in model(rgb(2, 32, 32), training=False).items():
        np.testing.assert_allclose(np.asarray(value), 3.5, rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("output", ["log", "softplus"])
def test_heads_stay_positive_and_finite_with_large_weights(output):
    model = DepthNetwork((32, 32), output=output, **SMALL)
    rng = np.random.default_rng(1)
    for name in ("scale1_dense2", "scale2_head", "scale3_head"):
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(0, 5.0, w.shape).astype("float32") for w in layer.get_weights()])
    out = model(rgb(2, 32, 32), training=False)
    for key, value in out.items():
        value = np.asarray(value)
        assert np.all(np.isfinite(value)) and np.all(value > 0), key
        assert value.std() > 0, key  # the heads do move the prediction


def test_depth_activation_matches_numpy():
    z = np.array([-1000.0, -30.0, -2.0, -0.5, 0.0, 0.5, 2.0, 30.0, 1000.0], dtype="float32")
    d0 = 2.0
    log_ref = np.exp(np.clip(z.astype("float64") + math.log(d0), math.log(1e-4), math.log(1e4)))
    log_out = np.asarray(DepthActivation(mode="log", depth_init=d0)(z))
    np.testing.assert_allclose(log_out, log_ref, rtol=1e-5)

    shift = math.log(math.expm1(d0))  # softplus^-1(d0)
    soft_ref = np.clip(np.logaddexp(0.0, z.astype("float64") + shift), 1e-4, 1e4)
    soft_out = np.asarray(DepthActivation(mode="softplus", depth_init=d0)(z))
    np.testing.assert_allclose(soft_out, soft_ref, rtol=1e-5)
    assert np.all(log_out > 0) and np.all(soft_out > 0)

    relu_ref = np.clip(z.astype("float64") + d0, 1e-4, 1e4)  # the poster's head: a dead zone below 0
    np.testing.assert_allclose(np.asarray(DepthActivation(mode="relu", depth_init=d0)(z)), relu_ref, rtol=1e-6)
    with pytest.raises(ConfigError, match="mode='tanh'"):
        DepthActivation(mode="tanh")
    with pytest.raises(ConfigError, match="depth_init=0.0"):
        DepthActivation(depth_init=0.0)


def test_depth_guard_passes_the_gradient_beyond_its_bounds():
    # A head pushed past the 10 km (or 0.1 mm) guard by one large step must be pulled back by the
    # loss; a plain clip gave it no gradient, and it stayed at the bound (the collapse experiment).
    z = tf.constant([-1000.0, -30.0, 0.0, 30.0, 1e5])
    for mode in ("log", "softplus"):
        head = DepthActivation(mode=mode, depth_init=2.0)
        with tf.GradientTape() as tape:
            tape.watch(z)
            depth = head(z)
            loss = tf.reduce_sum(tf.math.log(depth))
        grad = tape.gradient(loss, z).numpy()
        np.testing.assert_allclose(depth.numpy()[[0, -1]], [1e-4, 1e4], rtol=1e-5)  # the value is clamped
        if mode == "log":
            np.testing.assert_allclose(grad, 1.0, rtol=1e-6)  # d log(depth) / dz is 1 everywhere
        else:
            assert grad[-1] > 0.0 and grad[-2] > 0.0, grad  # above the upper bound too
    relu = DepthActivation(mode="relu", depth_init=2.0)
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = relu(z)
    assert tape.gradient(out, z).numpy()[0] == 0.0  # the poster's head keeps its dead zone


def test_preprocessing_is_caffe_mode(model_64x80):
    x = rgb(2, 64, 80, seed=3)
    probe = keras.Model(model_64x80.input, model_64x80.get_layer("preprocess").output)
    got = np.asarray(probe(x))
    reference = x[..., ::-1] - np.array([103.939, 116.779, 123.68], dtype="float32")
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-4)
    # ... and Keras' own VGG16 preprocessing agrees.
    np.testing.assert_allclose(got, keras.applications.vgg16.preprocess_input(x.copy()), rtol=0, atol=1e-4)
    assert CaffePreprocess.from_config(CaffePreprocess(name="p").get_config()).mean == (103.939, 116.779, 123.68)


def test_mixed_bfloat16_builds_with_float32_outputs():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = DepthNetwork((32, 32), **SMALL)
        assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
        assert model.get_layer("scale2_conv3").compute_dtype == "bfloat16"
        for name in ("preprocess", "scale1_dense2", "scale2_head", "scale3_head", "scale1", "scale2", "scale3"):
            assert model.get_layer(name).compute_dtype == "float32", name
        out = model(rgb(2, 32, 32), training=False)
        for key, value in out.items():
            assert value.dtype == "float32", key
            np.testing.assert_allclose(np.asarray(value), 2.0, rtol=1e-5, err_msg=key)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_every_trainable_variable_gets_a_gradient_and_zero_heads_learn():
    model = DepthNetwork((32, 32), **SMALL)
    x = rgb(2, 32, 32)
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = sum(tf.reduce_mean(tf.math.log(v / 3.0) ** 2) for v in out.values())
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads, strict=True) if g is None]
    assert missing == []
    # The zero-initialised head kernels receive a gradient from the first step (no dead start).
    heads = {v.path: g for v, g in zip(model.trainable_variables, grads, strict=True)
             if v.path.endswith(("scale1_dense2/kernel", "scale2_head/kernel", "scale3_head/kernel"))}
    assert len(heads) == 3
    for path, g in heads.items():
        assert float(tf.reduce_max(tf.abs(g))) > 0, path


# ---------------------------------------------------------------- groups


def test_layer_groups_cover_every_weighted_layer_once(model_64x80):
    groups = model_64x80.layer_groups()
    assert sorted(groups) == ["backbone", "coarse", "scale2", "scale3", "skip"]
    grouped = [layer.name for layer_list in groups.values() for layer in layer_list]
    assert len(grouped) == len(set(grouped))
    weighted = {layer.name for layer in model_64x80.layers if layer.weights}
    assert weighted <= set(grouped)
    assert {layer.name for layer in groups["backbone"] if layer.weights} == {
        f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for c in range(1, n + 1)
    }
    assert {layer.name for layer in groups["coarse"] if layer.weights} == {"scale1_dense1", "scale1_dense2"}
    assert {layer.name for layer in groups["skip"] if layer.weights} == {"skip1_1_conv", "skip1_2_conv"}
    assert {layer.name for layer in groups["scale2"] if layer.weights} == {f"scale2_conv{i}" for i in range(1, 9)} | {"scale2_head"}
    assert {layer.name for layer in groups["scale3"] if layer.weights} == {f"scale3_conv{i}" for i in range(1, 6)} | {"scale3_head"}
    # Every trainable variable is reachable through the groups (per-group learning rates miss none).
    n_grouped = sum(len(layer.trainable_weights) for layer_list in groups.values() for layer in layer_list)
    assert n_grouped == len(model_64x80.trainable_weights)


def test_layer_groups_without_skips_and_with_an_unknown_layer():
    groups = DepthNetwork((32, 32), scales=2, skips=False, **SMALL).layer_groups()
    assert groups["skip"] == [] and groups["scale3"] == []

    inp = keras.Input((4,))
    stray = keras.Model(inp, keras.layers.Dense(2, name="mystery_dense")(inp))
    with pytest.raises(KdepthError, match="'mystery_dense' .* matches no layer group"):
        group_layers(stray.layers, backbone_layers=())


# ---------------------------------------------------------------- saving


def test_keras_save_and_load_give_identical_outputs(tmp_path):
    model = DepthNetwork((32, 32), output="softplus", **SMALL)
    rng = np.random.default_rng(2)
    for name in ("scale1_dense2", "scale2_head", "scale3_head"):  # non-trivial heads
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in layer.get_weights()])
    path = tmp_path / "kdepth.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = rgb(2, 32, 32, seed=5)
    before, after = model(x, training=False), loaded(x, training=False)
    assert sorted(after) == sorted(before)
    for key in before:
        np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(before[key]))
    assert isinstance(loaded.get_layer("scale3"), DepthActivation)
    assert loaded.get_layer("scale3").mode == "softplus"
    assert isinstance(loaded.get_layer("preprocess"), CaffePreprocess)


# ---------------------------------------------------------------- backbone weights


def random_vgg(h=32, w=32, seed=7):
    keras.utils.set_random_seed(seed)
    return keras.applications.VGG16(include_top=False, weights=None, input_shape=(h, w, 3))


def write_legacy_notop_h5(vgg, path):
    """Writes weights in the layout of the Keras notop file (vgg16_..._notop.h5, Keras 2 h5)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in vgg.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in vgg.layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}_{tag}_1:0".encode() for tag in ("W", "b")][: len(layer.weights)]
            group.attrs["weight_names"] = names
            for name, value in zip(names, layer.get_weights(), strict=True):
                group.create_dataset(name.decode(), data=value)


def assert_backbone_equals(model, vgg):
    for name in ("block1_conv1", "block3_conv2", "block5_conv3"):
        for got, want in zip(model.get_layer(name).get_weights(), vgg.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)


def test_backbone_weights_from_a_legacy_h5_path(tmp_path):
    vgg = random_vgg()
    path = tmp_path / VGG_NOTOP_FILE
    write_legacy_notop_h5(vgg, path)
    model = DepthNetwork((64, 80), scales=1, **SMALL)
    with pytest.raises(AssertionError):
        assert_backbone_equals(model, vgg)  # different random weights before loading
    message = load_backbone_weights(model, str(path))
    assert str(path) in message and "13 layers" in message
    assert_backbone_equals(model, vgg)


def test_backbone_weights_from_a_keras3_weights_file_via_DepthNetwork(tmp_path):
    vgg = random_vgg(seed=8)
    path = tmp_path / "vgg.weights.h5"
    vgg.save_weights(path)
    model = DepthNetwork((32, 32), scales=1, **SMALL)
    message = load_backbone_weights(model, path)
    assert_backbone_equals(model, vgg)
    assert str(path) in message


def test_missing_or_bad_weights_file_raises_with_the_path(tmp_path):
    model = DepthNetwork((32, 32), scales=1, **SMALL)
    missing = tmp_path / "nowhere" / "vgg16.h5"
    with pytest.raises(KdepthError, match="does not exist") as info:
        load_backbone_weights(model, str(missing))
    assert str(missing) in str(info.value)

    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(KdepthError, match="cannot load VGG16 weights") as info:
        load_backbone_weights(model, bad)
    assert str(bad) in str(info.value)


def test_none_and_auto_without_cache_keep_random_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    model = DepthNetwork((32, 32), scales=1, **SMALL)
    before = model.get_layer("block2_conv1").get_weights()[0]
    assert load_backbone_weights(model, "none") == "VGG16 starts from random weights (backbone_weights=none)"
    message = load_backbone_weights(model, "auto")
    assert message.startswith("ImageNet VGG16 weights not found in") and "random weights" in message
    assert str(tmp_path / "models") in message
    np.testing.assert_array_equal(model.get_layer("block2_conv1").get_weights()[0], before)


def test_auto_and_imagenet_use_the_cached_notop_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    vgg = random_vgg(seed=9)
    write_legacy_notop_h5(vgg, tmp_path / "models" / VGG_NOTOP_FILE)

    def no_download(*args, **kwargs):
        raise AssertionError("a cached file must not trigger a download")

    monkeypatch.setattr(keras.utils, "get_file", no_download)
    for choice in ("auto", "imagenet"):
        model = DepthNetwork((32, 32), scales=1, **SMALL)
        message = load_backbone_weights(model, choice)
        assert "ImageNet" in message and VGG_NOTOP_FILE in message
        assert_backbone_equals(model, vgg)


def test_imagenet_offline_raises_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    model = DepthNetwork((32, 32), scales=1, **SMALL)
    with pytest.raises(KdepthError, match="no network seems reachable") as info:
        load_backbone_weights(model, "imagenet")
    text = str(info.value)
    assert VGG_NOTOP_FILE in text and str(tmp_path / "models") in text and "Name or service not known" in text


# ---------------------------------------------------------------- the network describes itself


def test_config_round_trip_rebuilds_the_same_network(tiny_network, rgb_images):
    network = tiny_network(scales=2, skips=False, output="softplus", depth_init=3.0, dropout=0.25)
    config = network.get_config()
    assert config == {
        "name": "kdepth", "trainable": True, "input_size": [32, 32], "scales": 2, "skips": False,
        "backbone": "vgg16", "output": "softplus", "coarse_hidden": 16, "dropout": 0.25,
        "conv_init": "he_normal", "depth_init": 3.0, "dtype": "float32",
        "coarse": "dense", "separable": False, "backbone_alpha": 1.0, "width": 64, "kernel_size": 0, "skip_norm": "none",
        "bn_momentum": 0.0, "head_kernel_size": 0,
    }
    rebuilt = DepthNetwork.from_config(config)
    assert rebuilt.get_config() == config
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in network.layers]
    rebuilt.set_weights(network.get_weights())
    x = rgb_images(2)
    np.testing.assert_array_equal(rebuilt(x)["scale2"], network(x)["scale2"])


def test_relu_heads_have_the_dead_zone_the_log_heads_lack(tiny_network, rgb_images):
    x = rgb_images(2)
    for output, dead in (("relu", True), ("log", False)):
        network = tiny_network(scales=2, output=output)
        head = network.get_layer("scale2_head")
        kernel, bias = head.get_weights()
        head.set_weights([kernel, bias - 3.0])  # relu: 2 m - 3 < 0 everywhere; log: 2 m * exp(-3)
        with tf.GradientTape() as tape:
            depth = network(x)["scale2"]
            loss = tf.reduce_mean(tf.square(tf.math.log(depth) - math.log(3.0)))
        grad = tape.gradient(loss, head.bias)
        assert bool(np.all(np.asarray(depth) <= 1e-3)) is dead, output
        assert (float(tf.reduce_max(tf.abs(grad))) == 0.0) is dead, output


def test_skip_norm_layer_normalises_each_skip_input_and_round_trips(tiny_network, rgb_images):
    network = tiny_network(scales=2, skip_norm="layer")
    assert isinstance(network.get_layer("skip1_1_norm"), keras.layers.LayerNormalization)
    assert sorted(layer.name for layer in network.layer_groups()["skip"]) == [
        "skip1_1_conv", "skip1_1_norm", "skip1_1_resize", "skip1_2_conv", "skip1_2_norm", "skip1_2_resize"]
    assert network.get_config()["skip_norm"] == "layer"
    rebuilt = DepthNetwork.from_config(network.get_config())
    rebuilt.set_weights(network.get_weights())
    x = rgb_images(2)
    np.testing.assert_array_equal(rebuilt(x)["scale2"], network(x)["scale2"])
    with pytest.raises(ConfigError, match="model.skip_norm='batch'"):
        tiny_network(skip_norm="batch")


def test_the_network_answers_its_size_scales_and_serving_model(tiny_network, rgb_images):
    network = tiny_network(input_size=(33, 45), scales=2)
    assert network.input_size == (33, 45)
    assert network.scales == 2 and network.scale_names == ("scale1", "scale2") and network.final_scale == "scale2"
    serving = network.serving_model()
    x = rgb_images(2, 33, 45)
    depth = serving(x)
    assert tuple(depth.shape) == (2, 33, 45, 1)
    expected = tf.image.resize(network(x)["scale2"], (33, 45), method="bilinear")
    np.testing.assert_allclose(depth, expected, rtol=1e-6)


def test_a_saved_network_loads_as_a_depth_network_with_its_run_config(tmp_path, tiny_network):
    from kdepth.config import defaults, save_config
    from kdepth.models import load

    stage = tmp_path / "runs" / "r" / "stage1"
    network = tiny_network(scales=2)
    stage.mkdir(parents=True)
    network.save(stage / "model.keras")
    save_config(defaults().replace(train__name="r"), stage)
    for path in (tmp_path / "runs" / "r", stage, stage / "model.keras"):
        loaded, config = load(path)
        assert isinstance(loaded, DepthNetwork) and loaded.get_config() == network.get_config()
        assert config.train.name == "r"
    (tmp_path / "bare").mkdir()
    network.save(tmp_path / "bare" / "net.keras")
    assert load(tmp_path / "bare" / "net.keras")[1] is None


def test_a_kdepth_0_1_functional_network_is_rebuilt_as_a_depth_network(tmp_path, tiny_network, rgb_images):
    network = tiny_network(scales=3)
    legacy = keras.Model(network.inputs, network.output, name="kdepth")  # how kdepth 0.1 saved it
    legacy.save(tmp_path / "old.keras")
    loaded = load_network_file(tmp_path / "old.keras")
    assert isinstance(loaded, DepthNetwork) and loaded.scales == 3 and loaded.input_size == (32, 32)
    x = rgb_images(1)
    np.testing.assert_array_equal(loaded(x)["scale3"], network(x)["scale3"])


def test_every_configurable_backbone_has_a_builder():
    from kdepth.config import choices
    from kdepth.models import BACKBONES

    assert tuple(BACKBONES) == choices("model", "backbone")
