"""kdepth export: layout, SavedModel / TFLite parity with Keras, quantized variants, metadata, the gate."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from kdepth import inference
from kdepth.cli import main
from kdepth.config import defaults, save_config
from kdepth.data.synthetic import scaled_intrinsics
from kdepth.errors import KdepthError
from kdepth.export import (
    PARITY_RTOL,
    check_parity,
    check_quantize,
    export_model,
    fold_channel_flip,
    parity_failures,
    resolve_model_source,
)
from kdepth.models import DepthNetwork, float32_copy, load_network_file, serving_graph
from kdepth.models.layers import CaffePreprocess

SIZE = (32, 32)
QUANTIZE = ["none", "fp16", "dynamic", "int8"]
SUMMARY_VAL = {"delta1": 0.41, "delta2": 0.7, "delta3": 0.85, "abs_rel": 0.3, "rmse": 0.9}


def _tiny_network(seed=0):
    """A 32x32 two-scale network whose outputs vary over the image (random, small head kernels)."""
    keras.utils.set_random_seed(seed)
    net = DepthNetwork(input_size=SIZE, scales=2, coarse_hidden=16, dropout=0.0)
    rng = np.random.default_rng(seed)
    for name in ("scale1_dense2", "scale2_head"):
        layer = net.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([rng.normal(0.0, 0.02, kernel.shape).astype("float32"), bias])
    return net


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """runs/tiny/stage1 as `kdepth fit` leaves it: model.keras, config.toml, summary.json."""
    root = tmp_path_factory.mktemp("runs") / "tiny"
    stage = root / "stage1"
    stage.mkdir(parents=True)
    _tiny_network().save(stage / "model.keras")
    config = defaults().replace(
        model__input_size=list(SIZE), model__scales=2, model__coarse_hidden=16, train__name="tiny", train__stage=1,
        data__synthetic_train=16, data__synthetic_val=4, data__synthetic_test=4, export__representative_samples=6,
    )
    save_config(config, stage)
    (stage / "summary.json").write_text(json.dumps({"stage": 1, "val": SUMMARY_VAL, "baseline": {"delta1": 0.3}}))
    return root


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """One export of the run through the CLI with every quantization: (out folder, CLI output)."""
    out = tmp_path_factory.mktemp("savedmodels") / "tiny"
    # --set applies on top of the run's config.toml: 20 calibration images asked, the run's
    # synthetic train split has 16 (the defaults would have 2000).
    args = ["export", "--model", str(run_dir), "--out", str(out), "--parity-images", "4", "--set", "export.representative_samples=20"]
    for q in QUANTIZE:
        args += ["--quantize", q]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def keras_deploy(run_dir):
    return load_network_file(run_dir / "stage1" / "model.keras").serving_model()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return rng.uniform(0, 255, (3, *SIZE, 3)).astype(np.float32)


def test_export_writes_the_layout_and_prints_the_parity_table(exported):
    out, output = exported
    assert (out / "saved_model" / "saved_model.pb").is_file()
    for q in QUANTIZE:
        assert (out / f"model_{q}.tflite").stat().st_size > 0
    assert (out / "metadata.json").is_file()
    assert "max |diff| m" in output and "mean |diff| m" in output and "delta1" in output
    for form in ("keras (float32)", "saved_model", "tflite none", "tflite fp16", "tflite dynamic", "tflite int8"):
        assert form in output


def test_saved_model_serves_raw_rgb_with_a_free_batch_and_matches_keras(exported, keras_deploy, images):
    out, _ = exported
    loaded = tf.saved_model.load(str(out / "saved_model"))
    spec = loaded.signatures["serving_default"].structured_input_signature[1]["image"]
    assert spec.shape.as_list() == [None, *SIZE, 3] and spec.dtype == tf.float32
    got = loaded.serve(images).numpy()  # batch of 3 although the network was saved without a batch size
    want = np.asarray(keras_deploy.predict_on_batch(images))
    assert got.shape == want.shape == (3, *SIZE, 1)
    assert want.std() > 1e-3  # the outputs vary, so the comparison means something
    np.testing.assert_allclose(got, want, rtol=PARITY_RTOL["saved_model"], atol=PARITY_RTOL["saved_model"])
    # Every weight stored once (Keras' model.export stores them twice, keras-team/keras#23553).
    variables = sum(p.stat().st_size for p in (out / "saved_model" / "variables").iterdir())
    assert variables < 1.1 * (out / "model_none.tflite").stat().st_size


def test_float_tflite_matches_keras_within_tolerance(exported, keras_deploy, images):
    out, _ = exported
    want = np.asarray(keras_deploy.predict_on_batch(images))[..., 0]
    for q in ("none", "fp16"):
        got = inference.load_depth_model(str(out / f"model_{q}.tflite")).predict(images)
        rel = np.abs(got - want) / np.maximum(want, 1.0)
        assert rel.max() <= PARITY_RTOL[q], (q, rel.max())
    none = inference.load_depth_model(str(out / "model_none.tflite")).predict(images)
    np.testing.assert_allclose(none, want, rtol=1e-4, atol=1e-4)  # measured ~1e-6: far inside the gate


def test_quantized_files_are_smaller_run_and_use_builtin_ops(exported, images):
    from ai_edge_litert.interpreter import Interpreter

    out, _ = exported
    size = {q: (out / f"model_{q}.tflite").stat().st_size for q in QUANTIZE}
    assert size["fp16"] < 0.6 * size["none"]
    assert size["dynamic"] < 0.4 * size["none"]
    assert size["int8"] < 0.4 * size["none"]
    for q in QUANTIZE:
        depth = inference.load_depth_model(str(out / f"model_{q}.tflite")).predict(images)
        assert depth.shape == (3, *SIZE) and np.isfinite(depth).all() and (depth > 0).all()
    interpreter = Interpreter(model_path=str(out / "model_int8.tflite"))
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.uint8 and inp["quantization"] == (1.0, 0)  # raw RGB bytes
    assert outp["dtype"] == np.int8 and outp["quantization"][0] > 0
    metadata = json.loads((out / "metadata.json").read_text())
    for q in QUANTIZE:
        ops = metadata["tflite"][f"model_{q}.tflite"]["ops"]
        assert "CONV_2D" in ops and not any(op.startswith("Flex") or op == "CUSTOM" for op in ops), ops


def test_metadata_records_the_contract_run_evaluation_files_and_parity(exported, run_dir):
    out, _ = exported
    m = json.loads((out / "metadata.json").read_text())
    assert m["input"] == {"name": "image", "shape": [None, 32, 32, 3], "dtype": "float32", "size": [32, 32], "range": "0-255 RGB"}
    assert m["output"]["name"] == "depth" and m["output"]["shape"] == [None, 32, 32, 1] and m["output"]["units"] == "metres"
    assert m["depth_units"] == "metres"
    fx, fy, cx, cy = scaled_intrinsics(SIZE)
    assert (m["intrinsics"]["fx"], m["intrinsics"]["fy"], m["intrinsics"]["cx"], m["intrinsics"]["cy"]) == (fx, fy, cx, cy)
    assert m["training"]["name"] == "tiny" and m["training"]["stage"] == 1
    assert m["training"]["model_file"] == str(run_dir / "stage1" / "model.keras")
    assert m["evaluation"]["val"] == SUMMARY_VAL
    assert m["files"]["model_int8.tflite"] == (out / "model_int8.tflite").stat().st_size
    assert m["files"]["saved_model"] == sum(p.stat().st_size for p in (out / "saved_model").rglob("*") if p.is_file())
    rows = {r["form"]: r for r in m["parity"]["rows"]}
    assert set(rows) == {"keras", "saved_model", "tflite none", "tflite fp16", "tflite dynamic", "tflite int8"}
    assert m["parity"]["images"] == 4 and m["parity"]["split"] == "val"
    for form in ("saved_model", "tflite none", "tflite fp16"):
        assert rows[form]["ok"] and rows[form]["max_rel_diff"] <= rows[form]["tolerance_rel"]
    assert rows["tflite int8"]["tolerance_rel"] is None and rows["tflite int8"]["finite"]
    assert 0.0 <= rows["keras"]["delta1"] <= 1.0
    assert m["tflite"]["model_int8.tflite"]["calibration"]["images"] == 16


def test_int8_is_made_without_the_channel_flip_and_stays_close_to_keras(exported):
    # TFLite mis-quantizes REVERSE_V2 before a subtraction: with it in the graph this network's
    # int8 output was off by up to 30 % of max(depth, 1 m) (mean 0.11 m); folded, 2.4 % (7 mm).
    out, _ = exported
    m = json.loads((out / "metadata.json").read_text())
    int8 = m["tflite"]["model_int8.tflite"]
    assert "REVERSE_V2" not in int8["ops"] and "REVERSE_V2" in m["tflite"]["model_none.tflite"]["ops"]
    assert int8["graph"]["channel_flip_folded_into"] == ["block1_conv1", "scale2_conv1"]
    row = next(r for r in m["parity"]["rows"] if r["form"] == "tflite int8")
    assert row["max_rel_diff"] < 0.08 and row["mean_abs_diff_m"] < 0.03, row


def _random_heads(net, seed):
    rng = np.random.default_rng(seed)
    for name in ("scale1_dense2", "scale2_head", "scale3_head"):
        layer = net.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([rng.normal(0.0, 0.02, kernel.shape).astype("float32"), bias])
    return net


def test_folding_the_channel_flip_computes_the_same_depth():
    keras.utils.set_random_seed(4)
    net = _random_heads(DepthNetwork(input_size=SIZE, scales=3, coarse_hidden=16, dropout=0.0), 4)
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in net.layers}
    folded, convs = fold_channel_flip(net)
    assert convs == ["block1_conv1", "scale2_conv1", "scale3_conv1"]  # VGG, and the two image branches via image_rescale
    assert not any(isinstance(layer, CaffePreprocess) for layer in folded.layers)
    kernel = net.get_layer("block1_conv1").get_weights()[0]
    np.testing.assert_array_equal(folded.get_layer("block1_conv1").get_weights()[0], kernel[:, :, ::-1, :])
    assert folded.get_layer("scale1_dense1") is net.get_layer("scale1_dense1")  # shared, not copied
    x = np.random.default_rng(5).uniform(0, 255, (2, *SIZE, 3)).astype(np.float32)
    want, got = net.predict_on_batch(x), folded.predict_on_batch(x)
    for scale in ("scale1", "scale2", "scale3"):
        assert want[scale].std() > 1e-3  # the outputs vary, so the comparison means something
        np.testing.assert_allclose(got[scale], want[scale], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        serving_graph(folded.inputs[0], folded.output["scale3"], SIZE).predict_on_batch(x),
        net.serving_model().predict_on_batch(x),
        rtol=1e-5,
        atol=1e-5,
    )
    for layer in net.layers:  # the original network is untouched
        for a, b in zip(before[layer.name], layer.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


def test_fold_refuses_a_graph_it_cannot_fold():
    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Flatten(name="flat")(CaffePreprocess(name="preprocess")(image))
    foreign = keras.Model(image, keras.layers.Dense(1, name="head")(x), name="foreign")
    with pytest.raises(KdepthError, match=r"layer 'flat' \(Flatten\) reads the preprocessed image"):
        fold_channel_flip(foreign)
    renamed = keras.Model(image, keras.layers.Conv2D(1, 3, name="conv")(CaffePreprocess(name="caffe")(image)))
    with pytest.raises(KdepthError, match="its CaffePreprocess layer is named 'caffe'"):
        fold_channel_flip(renamed)


def test_fold_leaves_a_graph_without_a_channel_flip_as_it_is():
    # Behaviour changed with the MobileNetV2 backbone (x / 127.5 - 1, RGB): a network without a
    # CaffePreprocess layer has nothing to fold, so int8 export works (it used to be refused).
    image = keras.Input((8, 8, 3), name="image")
    plain = keras.Model(image, keras.layers.Conv2D(1, 3, name="conv")(image), name="plain")
    folded, convs = fold_channel_flip(plain)
    assert convs == []
    x = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(folded.predict_on_batch(x), plain.predict_on_batch(x))


class _Offset:
    """Wraps a DepthModel and adds `offset` metres to every prediction."""

    def __init__(self, model, offset):
        self.model, self.offset = model, offset
        self.kind, self.path, self.input_size = model.kind, model.path, model.input_size

    def predict(self, images):
        return self.model.predict(images) + np.float32(self.offset)


def _tamper(monkeypatch, kind, offset):
    real = inference.load_depth_model

    def load(path, **kwargs):
        model = real(path, **kwargs)
        return _Offset(model, offset) if model.kind == kind else model

    monkeypatch.setattr(inference, "load_depth_model", load)


def _artifacts(out):
    return {"saved_model": out / "saved_model", "tflite none": out / "model_none.tflite"}


def test_parity_gate_catches_a_tampered_saved_model(exported, keras_deploy, images, monkeypatch):
    out, _ = exported
    depths = [np.full(SIZE, 2.0, np.float32)] * len(images)
    assert parity_failures(check_parity(keras_deploy, _artifacts(out), images, depths, echo=lambda m: None)) == []
    _tamper(monkeypatch, "saved_model", 0.05)  # 5 cm: 2.5e-2 relative at 2 m, far beyond 1e-4
    rows = check_parity(keras_deploy, _artifacts(out), images, depths, echo=lambda m: None)
    failures = parity_failures(rows)
    assert len(failures) == 1 and failures[0].startswith("saved_model") and "tolerance 0.0001" in failures[0]
    row = next(r for r in rows if r.form == "saved_model")
    assert row.max_abs == pytest.approx(0.05, abs=1e-4)


def test_tampered_float_tflite_fails_the_export_with_exit_1(run_dir, tmp_path, monkeypatch):
    _tamper(monkeypatch, "tflite", 0.05)
    out = tmp_path / "bad"
    result = CliRunner().invoke(main, ["export", "--model", str(run_dir), "--out", str(out), "--quantize", "none", "--parity-images", "2"])
    assert result.exit_code == 1
    assert "parity check failed" in result.output and "tflite none" in result.output and "tolerance 0.001" in result.output
    # Nothing that looks like an export is left in OUT; the failed files are in OUT/failed/.
    assert sorted(p.name for p in out.iterdir()) == ["failed"]
    rows = {r["form"]: r for r in json.loads((out / "failed" / "metadata.json").read_text())["parity"]["rows"]}
    assert rows["saved_model"]["ok"] and not rows["tflite none"]["ok"]


def test_bad_model_paths_say_what_is_wrong(tmp_path):
    with pytest.raises(KdepthError, match="does not exist"):
        resolve_model_source(tmp_path / "nothing")
    (tmp_path / "m.tflite").write_bytes(b"x")
    with pytest.raises(KdepthError, match=r"is a tflite; export needs the trained Keras network"):
        resolve_model_source(tmp_path / "m.tflite")
    with pytest.raises(KdepthError, match="folder holds no model"):
        resolve_model_source(tmp_path)
    foreign = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    foreign.save(tmp_path / "foreign.keras")
    with pytest.raises(KdepthError, match="not a kdepth network"):
        export_model(tmp_path / "foreign.keras", tmp_path / "out", ["none"])
    result = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_run_dir_resolves_to_the_highest_stage(tmp_path):
    for n in (1, 2, 10):
        (tmp_path / f"stage{n}").mkdir()
        (tmp_path / f"stage{n}" / "model.keras").write_bytes(b"")
    (tmp_path / "overfit3").mkdir()
    assert resolve_model_source(tmp_path).keras_path == tmp_path / "stage10" / "model.keras"


def test_unknown_quantization_is_refused():
    assert check_quantize(["int8", "none", "int8"]) == ["int8", "none"]
    with pytest.raises(KdepthError, match=r"'int4' is unknown; allowed: \['none', 'fp16', 'dynamic', 'int8'\]"):
        check_quantize(["int4"])
    result = CliRunner().invoke(main, ["export", "--model", "x", "--out", "y", "--quantize", "int4"])
    assert result.exit_code == 2 and "int4" in result.output


def test_mixed_precision_network_is_rebuilt_in_float32_with_the_same_weights(tmp_path):
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = _tiny_network(seed=3)
        mixed.save(tmp_path / "mixed.keras")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    loaded = load_network_file(tmp_path / "mixed.keras")
    assert loaded.get_layer("block1_conv1").dtype_policy.name == "mixed_bfloat16"
    rebuilt, policy = float32_copy(loaded)
    assert policy == "mixed_bfloat16"
    assert isinstance(rebuilt, DepthNetwork) and rebuilt.get_config()["dtype"] == "float32"
    assert {layer.dtype_policy.name for layer in rebuilt.layers} == {"float32"}
    for layer in loaded.layers:
        for a, b in zip(layer.get_weights(), rebuilt.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    # Same weights in a network built in float32 from the start: the rebuilt one computes the same.
    reference = _tiny_network(seed=3)
    for layer in reference.layers:
        layer.set_weights(loaded.get_layer(layer.name).get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, *SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(
        rebuilt.serving_model().predict_on_batch(x), reference.serving_model().predict_on_batch(x), rtol=1e-5
    )


def test_export_help_has_an_example():
    result = CliRunner().invoke(main, ["export", "--help"])
    assert result.exit_code == 0 and "kdepth export --model" in result.output
