"""Inference: one DepthModel over .keras networks, runs, SavedModels and (quantized) .tflite files."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdepth.errors import KdepthError
from kdepth.inference import dequantize, load_depth_model, quantize, resize_depth, resize_image
from kdepth.models import DepthNetwork

SIZE = (32, 32)


def _images(n, size=SIZE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def _randomise_heads(network, seed=0):
    """Untrained heads start at zero (constant depth): give them small random kernels instead."""
    rng = np.random.default_rng(seed)
    for layer in network.layers:
        if layer.name.endswith("_head") or layer.name == "scale1_dense2":
            kernel, bias = layer.get_weights()
            layer.set_weights([rng.normal(0.0, 1e-3, kernel.shape).astype(np.float32), bias])


def _deploy(network, scale):
    """kdepth's single-output deploy model: the finest scale resized to the input size, in metres."""
    image = keras.Input((*SIZE, 3), name="image")
    depth = keras.layers.Resizing(*SIZE, interpolation="bilinear", name="depth")(network(image)[scale])
    return keras.Model(image, depth)


def _to_tflite(saved_model_dir, out_path, int_type=None, representative=None):
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if int_type is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = int_type
        converter.inference_output_type = int_type
    out_path.write_bytes(converter.convert())
    return out_path


@pytest.fixture(scope="module")
def kdepth_files(tmp_path_factory):
    """A tiny kdepth network as .keras, its deploy model as a SavedModel and as a float .tflite."""
    root = tmp_path_factory.mktemp("kdepth_model")
    network = DepthNetwork(input_size=SIZE, scales=2, coarse_hidden=16)
    _randomise_heads(network)
    network.save(root / "model.keras")
    deploy = _deploy(network, "scale2")
    deploy.export(str(root / "saved"), format="tf_saved_model", verbose=False)
    _to_tflite(root / "saved", root / "model.tflite")
    return {"network": network, "deploy": deploy, "root": root}


def test_keras_model_predicts_the_finest_scale_resized_to_the_input(kdepth_files):
    model = load_depth_model(kdepth_files["root"] / "model.keras")
    assert model.kind == "keras" and model.input_size == SIZE
    x = _images(3)
    depth = model.predict(x)
    assert depth.shape == (3, *SIZE) and depth.dtype == np.float32
    raw = kdepth_files["network"](x.astype(np.float32), training=False)["scale2"].numpy()[..., 0]
    expected = tf.image.resize(raw[..., None], SIZE, method="bilinear").numpy()[..., 0]
    np.testing.assert_allclose(depth, expected, rtol=1e-5)
    assert depth.std() > 1e-4  # heads were randomised: the output is not the constant 2 m


@pytest.mark.parametrize("name", ["saved", "model.tflite"])
def test_saved_model_and_tflite_match_keras(kdepth_files, name):
    x = _images(3, seed=1)
    keras_depth = load_depth_model(kdepth_files["root"] / "model.keras").predict(x)
    model = load_depth_model(kdepth_files["root"] / name)
    assert model.kind == ("saved_model" if name == "saved" else "tflite") and model.input_size == SIZE
    depth = model.predict(x)
    assert depth.shape == (3, *SIZE)
    np.testing.assert_allclose(depth, keras_depth, rtol=1e-4)


def test_saved_model_pb_file_loads_its_folder(kdepth_files):
    model = load_depth_model(kdepth_files["root"] / "saved" / "saved_model.pb")
    assert model.kind == "saved_model" and model.path == str(kdepth_files["root"] / "saved")


def test_run_folder_uses_the_highest_stage_with_a_model(kdepth_files, tmp_path):
    net3 = DepthNetwork(input_size=SIZE, scales=3, coarse_hidden=16)
    _randomise_heads(net3, seed=3)
    run = tmp_path / "runs" / "demo"
    (run / "stage1").mkdir(parents=True)
    (run / "stage2").mkdir()
    (run / "stage3").mkdir()  # no model.keras yet: ignored
    kdepth_files["network"].save(run / "stage1" / "model.keras")
    net3.save(run / "stage2" / "model.keras")

    model = load_depth_model(run)
    assert model.path == str(run / "stage2" / "model.keras")
    assert model.scale == "scale3"  # the finest scale built
    x = _images(2, seed=2)
    expected = _deploy(net3, "scale3").predict(x.astype(np.float32), verbose=0)[..., 0]
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5)
    assert load_depth_model(run / "stage1").path == str(run / "stage1" / "model.keras")


def test_predict_keeps_the_image_size_and_converts_grey_and_rgba(kdepth_files):
    model = load_depth_model(kdepth_files["root"] / "model.keras")
    rgb = _images(1, size=(50, 70), seed=4)[0]
    depth = model.predict(rgb)
    assert depth.shape == (50, 70) and depth.dtype == np.float32
    small = tf.image.resize(rgb.astype(np.float32), SIZE, method="bilinear", antialias=True).numpy()
    expected = resize_depth(model.predict(small[None])[0], (50, 70))
    np.testing.assert_allclose(depth, expected, rtol=1e-5)

    grey = rgb[..., 0]
    np.testing.assert_allclose(model.predict(grey), model.predict(np.stack([grey] * 3, -1)), rtol=1e-6)
    rgba = np.concatenate([rgb, np.full((50, 70, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_allclose(model.predict(rgba), depth, rtol=1e-6)


def test_predict_takes_a_batch_of_any_size_and_refuses_what_is_not_an_image(kdepth_files):
    # Until kdepth 0.1 predict took only images at the input size; now any size, like one image.
    model = load_depth_model(kdepth_files["root"] / "model.keras")
    batch = _images(2, size=(40, 48), seed=6)
    depth = model.predict(batch)
    assert depth.shape == (2, 40, 48) and depth.dtype == np.float32
    np.testing.assert_allclose(depth[1], model.predict(batch[1]), rtol=1e-6)
    with pytest.raises(KdepthError, match=r"model.keras: received an array of shape \(40, 40, 5\); expected an RGB image"):
        model.predict(_images(1, size=(40, 40))[0][..., [0, 1, 2, 0, 1]])


def test_resize_helpers():
    rgb = _images(1, size=(8, 8))[0]
    assert resize_image(rgb, (8, 8)).dtype == np.float32 and np.array_equal(resize_image(rgb, (8, 8)), rgb)
    flat = np.full((2, 4, 5), 3.0, np.float32)
    np.testing.assert_allclose(resize_depth(flat, (8, 10)), 3.0)
    assert resize_depth(flat[0], (3, 3)).shape == (3, 3)


# ----- foreign and quantized models through the generic paths ------------------------------------

FOREIGN_SIZE = (16, 20)


def _foreign_keras_model():
    """A small model in a foreign convention: input 0-1, output in millimetres at half resolution."""
    rng = np.random.default_rng(5)
    image = keras.Input((*FOREIGN_SIZE, 3), name="pixels")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(image)
    x = keras.layers.Conv2D(1, 3, padding="same")(x)
    x = keras.layers.Activation("softplus")(x)
    x = keras.layers.Rescaling(1000.0)(x)  # millimetres
    model = keras.Model(image, x)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.2, w.shape).astype(np.float32) for w in layer.get_weights()])
    return model


def _representative():
    for image in _images(16, FOREIGN_SIZE, seed=6):
        yield [image[None].astype(np.float32) / 255.0]


@pytest.fixture(scope="module")
def foreign_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    model = _foreign_keras_model()
    model.export(str(root / "saved"), format="tf_saved_model", verbose=False)
    files = {"model": model, "root": root, "float": _to_tflite(root / "saved", root / "float.tflite")}
    for name, dtype in (("int8", tf.int8), ("uint8", tf.uint8)):
        files[name] = _to_tflite(root / "saved", root / f"{name}.tflite", dtype, _representative)
    return files


def _foreign_reference(files, x):
    raw = files["model"].predict(x.astype(np.float32) / 255.0, verbose=0)[..., 0]  # (N, 8, 10) millimetres
    return resize_depth(raw, FOREIGN_SIZE) / 1000.0


def test_foreign_conventions_input_range_and_output_scale(foreign_files):
    x = _images(2, FOREIGN_SIZE, seed=7)
    expected = _foreign_reference(foreign_files, x)
    for name in ("saved", "float.tflite"):
        model = load_depth_model(foreign_files["root"] / name, input_range="0-1", output_scale=1e-3)
        assert model.input_size == FOREIGN_SIZE  # read from the model
        np.testing.assert_allclose(model.predict(x), expected, rtol=1e-4)


@pytest.mark.parametrize("name", ["int8", "uint8"])
def test_quantized_io_tflite_matches_the_float_model(foreign_files, name):
    model = load_depth_model(foreign_files[name], input_range="0-1", output_scale=1e-3, threads=1)
    assert f"input 'serving_default_pixels:0' {name}" in model.info and "output" in model.info
    in_scale, in_zp = model._in_q
    out_scale, out_zp = model._out_q
    assert in_scale > 0 and out_scale > 0  # quantization parameters were read from the model
    assert np.dtype(model._in["dtype"]) == np.dtype(name) and np.dtype(model._out["dtype"]) == np.dtype(name)

    x = _images(16, FOREIGN_SIZE, seed=6)[:4]  # calibration images: no tensor saturates
    expected = _foreign_reference(foreign_files, x)
    depth = model.predict(x)
    # Quantization error: each layer rounds to half a step of its own scale; measured here about
    # 2 output steps at most and half a step on average.
    step = out_scale * 1e-3  # metres per output step
    err = np.abs(depth - expected)
    assert err.max() < 4 * step and err.mean() < step, (err.max(), err.mean(), step)
    # The quantized model follows the float model's variation, not only its level.
    assert np.corrcoef(depth.ravel(), expected.ravel())[0, 1] > 0.99


def test_quantize_and_dequantize_follow_the_tflite_formulas():
    x = np.array([-10.0, 0.0, 0.26, 1.0, 100.0], np.float32)
    q = quantize(x, np.int8, 0.5, -3)  # round(x / 0.5 - 3), clipped to [-128, 127]
    np.testing.assert_array_equal(q, np.array([-23, -3, -2, -1, 127], np.int8))
    np.testing.assert_array_equal(quantize(np.array([-1.0, 300.0]), np.uint8, 0.0, 0), [0, 255])  # not quantized
    np.testing.assert_allclose(dequantize(np.array([-128, 0, 127], np.int8), 0.25, -128), [0.0, 32.0, 63.75])
    np.testing.assert_array_equal(dequantize(np.array([1.5], np.float32), 0.0, 0), [1.5])


# ----- bad input --------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(KdepthError, match=r"nope\.tflite: does not exist; expected a kdepth \.keras file"):
        load_depth_model(tmp_path / "nope.tflite")


def test_text_file_named_tflite(tmp_path):
    path = tmp_path / "fake.tflite"
    path.write_text("this is not a model\n")
    with pytest.raises(KdepthError, match=r"fake\.tflite: cannot be loaded as a TFLite model .*not a \.tflite flatbuffer"):
        load_depth_model(path)


def test_truncated_tflite(foreign_files, tmp_path):
    path = tmp_path / "cut.tflite"
    path.write_bytes(foreign_files["float"].read_bytes()[:-200])
    with pytest.raises(KdepthError, match=r"cut\.tflite: cannot be loaded as a TFLite model .*truncated or corrupt"):
        load_depth_model(path)


def test_tflite_with_two_inputs(tmp_path):
    a = keras.Input((*FOREIGN_SIZE, 3), name="image")
    b = keras.Input((*FOREIGN_SIZE, 1), name="sparse_depth")
    out = keras.layers.Conv2D(1, 3, padding="same")(keras.layers.Concatenate()([a, b]))
    keras.Model([a, b], out).export(str(tmp_path / "two"), format="tf_saved_model", verbose=False)
    path = _to_tflite(tmp_path / "two", tmp_path / "two_inputs.tflite")
    with pytest.raises(KdepthError, match=r"two_inputs\.tflite: TFLite model has 2 input\(s\) .*exactly one image input") as info:
        load_depth_model(path)
    assert "serving_default_image:0" in str(info.value) and "serving_default_sparse_depth:0" in str(info.value)


def test_foreign_keras_file(tmp_path):
    path = tmp_path / "foreign.keras"
    _foreign_keras_model().save(path)
    with pytest.raises(KdepthError, match=r"foreign\.keras: is a Keras model but not a kdepth network"):
        load_depth_model(path)


def test_text_file_named_keras(tmp_path):
    path = tmp_path / "notes.keras"
    path.write_text("not a zip\n")
    with pytest.raises(KdepthError, match=r"notes\.keras: cannot be loaded as a kdepth model; it is not a \.keras model archive"):
        load_depth_model(path)


def test_corrupt_saved_model(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "saved_model.pb").write_bytes(b"\x00garbage")
    with pytest.raises(KdepthError, match=r"broken: cannot be loaded as a SavedModel"):
        load_depth_model(tmp_path / "broken")


def test_folder_without_a_model_and_unknown_file_type(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdepthError, match=r"empty: folder holds no model"):
        load_depth_model(tmp_path / "empty")
    (tmp_path / "weights.h5").write_bytes(b"")
    with pytest.raises(KdepthError, match=r"weights\.h5: unsupported model file type '\.h5'"):
        load_depth_model(tmp_path / "weights.h5")


def test_bad_options(kdepth_files):
    path = kdepth_files["root"] / "model.tflite"
    with pytest.raises(KdepthError, match=r"input_range received '0-65535'"):
        load_depth_model(path, input_range="0-65535")
    with pytest.raises(KdepthError, match=r"output_scale received 0"):
        load_depth_model(path, output_scale=0)
