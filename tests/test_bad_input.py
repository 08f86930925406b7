"""Bad input, everywhere: every bad input of the README's table, through the real `kdepth` CLI.

Each test is one row: the exit code, a message that names the input and says what is wrong, and
no partial output that looks complete. Rows already covered elsewhere are referenced, not
repeated: 8-bit / colour depth PNGs and 16-bit RGB (tests/test_sources.py), a missing depth
partner (tests/test_cli.py), a tampered export failing its parity gate (tests/test_export.py),
SavedModel folders without a model (tests/test_inference.py).
"""

import json
import logging
import os
import subprocess
import sys
import tracemalloc

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kdepth.cli import main
from kdepth.errors import ConfigError, KdepthError
from kdepth.models import DepthNetwork, estimate_size, load_network_file
from kdepth.models.depth_network import MAX_ACTIVATION_BYTES, MAX_PARAMETERS
from kdepth.predict import predict_paths

# A tiny network and a short run: 32x32 input (VGG16's minimum), 16 hidden units, no ImageNet.
TINY = [
    "model.input_size=[32, 32]", "model.coarse_hidden=16", "model.backbone_weights=none", "train.batch_size=2",
    "train.epochs=1", "train.steps_per_epoch=2", "train.verbose=0", "train.tensorboard_images=0",
    "data.shuffle_buffer=0", "data.synthetic_train=8", "data.synthetic_val=2", "data.synthetic_test=2",
]


def _sets(*extra, run_dir):
    args = []
    for kv in (*TINY, f'train.run_dir="{run_dir}"', *extra):
        args += ["--set", kv]
    return args


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _no_traceback(result):
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


# ------------------------------------------------------------------------------ bad data files

# name -> (split, file written bad, message excerpt). Every other sample is a good synthetic room.
BAD_FILES = {
    "corrupt image": ("train", "rgb/00001.png", "cannot read image"),
    "truncated image": ("train", "rgb/00002.png", "image file is truncated"),
    "empty (0-byte) image": ("train", "rgb/00003.png", "file is empty (0 bytes)"),
    "depth all holes": ("train", "depth/00004.png", "depth has no valid pixel: raw values range 0..0"),
    "depth all NaN / inf": ("train", "depth/00005.npy", "depth has no valid pixel: every value is NaN or inf"),
    "depth all negative": ("train", "depth/00006.npy", "depth has no valid pixel: raw values range -2..-1"),
    "RGB and depth of different sizes": ("train", "rgb/00007.png", "RGB is 20x24 (HxW) but its depth partner"),
    "corrupt first validation image": ("val", "rgb/00000.png", "cannot read image"),
    "truncated test image": ("test", "rgb/00001.png", "image file is truncated"),
}


def _break(root, kind):
    split, rel, _ = BAD_FILES[kind]
    path = root / split / rel
    good = path.read_bytes() if path.exists() else b""
    if kind in ("corrupt image", "corrupt first validation image"):
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    elif kind in ("truncated image", "truncated test image"):
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty (0-byte) image":
        path.write_bytes(b"")
    elif kind == "depth all holes":
        Image.fromarray(np.zeros((32, 32), np.uint16)).save(path)
    elif kind in ("depth all NaN / inf", "depth all negative"):
        path.with_suffix(".png").unlink()
        values = np.full((32, 32), np.nan, np.float32) if "NaN" in kind else -np.linspace(1, 2, 32 * 32).reshape(32, 32)
        if "NaN" in kind:
            values[::2] = np.inf
        np.save(path, values.astype(np.float32))
    elif kind == "RGB and depth of different sizes":
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    """A folder data set (32x32 rooms) holding every kind of bad file, plus two odd but valid samples.

    train/00008: depth with NaN, +inf and negative rows (holes, the rest valid);
    train/00009: a 1x1 RGB image with a 1x1 depth map (absurd, but a valid pair).
    """
    root = tmp_path_factory.mktemp("bad") / "data"
    result = _invoke("data", "synth", "--out", root, "--count", 10, "--eval-count", 3, "--size", "32x32")
    assert result.exit_code == 0, result.output
    paths = {kind: _break(root, kind) for kind in BAD_FILES}
    depth = np.full((32, 32), 2.5, np.float32)
    depth[0], depth[1], depth[2] = np.nan, np.inf, -1.0
    (root / "train/depth/00008.png").unlink()
    np.save(root / "train/depth/00008.npy", depth)
    Image.fromarray(np.full((1, 1, 3), 128, np.uint8)).save(root / "train/rgb/00009.png")
    Image.fromarray(np.full((1, 1), 3000, np.uint16)).save(root / "train/depth/00009.png")
    # A split in which nothing can be read, for `kdepth data show`.
    (root / "broken/rgb").mkdir(parents=True)
    (root / "broken/depth").mkdir()
    (root / "broken/rgb/a.png").write_text("not an image\n")
    (root / "broken/depth/a.png").write_bytes((root / "val/depth/00001.png").read_bytes())
    return root, paths


@pytest.fixture(scope="module")
def check_output(bad_data):
    root, _ = bad_data
    result = _invoke("data", "check", root)
    _no_traceback(result)
    return result


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_data_check_names_each_bad_file_and_exits_1(bad_data, check_output, kind):
    _, paths = bad_data
    assert check_output.exit_code == 1
    line = next((line for line in check_output.output.splitlines() if str(paths[kind]) in line), None)
    assert line is not None, check_output.output
    assert BAD_FILES[kind][2] in line
    assert "NOT OK" in check_output.output


def test_data_check_accepts_partial_holes_and_a_1x1_pair(bad_data, check_output):
    root, _ = bad_data
    # NaN, inf and negative depths are holes (tests/test_sources.py checks the values); a 1x1
    # pair is valid and listed as the smallest resolution.
    for name in ("00008", "00009"):
        assert name not in check_output.output
    train = next(line for line in check_output.output.splitlines() if line.startswith("train "))
    assert train.split()[1:4] == ["10", "3", "7"] and "1x1" in train  # samples, ok, bad


def test_fit_process_stops_at_a_bad_file_naming_it_and_exits(bad_data, tmp_path):
    """A real `kdepth fit` process: the first validation batch holds a corrupt file.

    The process must exit (it used to print the error, then hang in interpreter shutdown on a
    tf.data iterator with a file read in flight) and leave no model.keras or summary.json.
    """
    root, paths = bad_data
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "kdepth.cli", "fit", "--data", str(root), "--name", "stop", *_sets(run_dir=tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"error: training data: {paths['corrupt first validation image']}: cannot read image" in proc.stderr
    assert "skip_bad_files=true" in proc.stderr and "Traceback" not in proc.stderr
    stage = tmp_path / "stop" / "stage1"
    assert not (stage / "model.keras").exists() and not (stage / "summary.json").exists()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 32x32 two-scale kdepth network (16 hidden units) saved as stage1/model.keras: its stage folder."""
    stage = tmp_path_factory.mktemp("run") / "stage1"
    stage.mkdir()
    keras.utils.set_random_seed(0)
    DepthNetwork((32, 32), scales=2, coarse_hidden=16).save(stage / "model.keras")
    return stage


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.slow  # ~35 s here: tracing the train step dominates; tests/test_cli.py skips a file in the default suite
def test_fit_skips_and_counts_each_bad_file_once_with_skip_bad_files(bad_data, tmp_path):
    root, paths = bad_data
    handler = _Records()
    logging.getLogger("kdepth.data").addHandler(handler)
    try:
        # One pass over the train split per epoch (5 steps of 2), so every bad file is met.
        extra = ("data.skip_bad_files=true", "train.steps_per_epoch=0")
        result = _invoke("fit", "--data", root, "--name", "skip", *_sets(*extra, run_dir=tmp_path))
    finally:
        logging.getLogger("kdepth.data").removeHandler(handler)
    stage, messages = tmp_path / "skip" / "stage1", handler.messages
    _no_traceback(result)
    assert result.exit_code == 0, result.output
    met = [kind for kind in BAD_FILES if BAD_FILES[kind][0] in ("train", "val")]
    assert f"skipped {len(met)} bad samples" in result.output  # once per file, not once per pass
    for kind in met:
        assert sum(str(paths[kind]) in m for m in messages) == 1, (kind, messages)
    summary = json.loads((stage / "summary.json").read_text())
    # Trained on the 3 good samples, the one with NaN / inf / negative holes and the 1x1 one included.
    assert all(np.isfinite(v) for v in summary["val"].values()) and (stage / "model.keras").is_file()


def test_evaluate_stops_at_a_bad_file_and_writes_no_json(bad_data, tiny_model, tmp_path):
    _, paths = bad_data
    stage = tiny_model
    out = tmp_path / "eval.json"
    result = _invoke("evaluate", "--model", stage, "--data", bad_data[0], "--split", "test", "--json", out)
    _no_traceback(result)
    assert result.exit_code == 1
    assert f"error: {paths['truncated test image']}: cannot read image" in result.output
    assert not out.exists()


def test_data_show_leaves_bad_samples_out_and_fails_if_none_is_readable(bad_data, tmp_path, caplog):
    root, paths = bad_data
    sheet = tmp_path / "sheet.png"
    with caplog.at_level(logging.WARNING, logger="kdepth.data"):
        result = _invoke("data", "show", root, "--out", sheet, "--count", 10)
    assert result.exit_code == 0, result.output
    left_out = [r.getMessage() for r in caplog.records if "leaving out" in r.getMessage()]
    assert len(left_out) == 7 and any(str(paths["truncated image"]) in m for m in left_out)
    assert Image.open(sheet).size[1] > 3 * 32  # the three readable samples
    none = tmp_path / "none.png"
    result = _invoke("data", "show", root, "--split", "broken", "--out", none)
    _no_traceback(result)
    assert result.exit_code == 1 and "none of the 1 samples picked from split 'broken' could be read" in result.output
    assert not none.exists()


# ------------------------------------------------------------------------------ configuration


def _fit_config_error(tmp_path, *args):
    result = _invoke("fit", *_sets(run_dir=tmp_path / "runs"), *args)  # args last: their --set wins
    _no_traceback(result)
    assert result.exit_code == 1
    assert not (tmp_path / "runs").exists(), "a run folder was made for a config that cannot run"
    return result.output


@pytest.mark.parametrize(
    "setting, message",
    [
        ('train.epochs="five"', "train.epochs: received 'five'; allowed: an integer (>= 1)"),
        ('model.input_size="64x80"', "model.input_size: received '64x80'; allowed: [H, W] with two integers each >= 32"),
        ("data.skip_bad_files=yes", "data.skip_bad_files: received 'yes'; allowed: true or false"),
        ("train.epoch=3", "unknown config key train.epoch; see configs/base.toml for every key. Did you mean 'train.epochs'?"),
        ("trian.epochs=3", "unknown config section [trian]; allowed sections:"),
        ("model.input_size=[0, 0]", "model.input_size: received [0, 0]; allowed: [H, W] with two integers each >= 32"),
        ("model.input_size=[1, 1]", "model.input_size: received [1, 1]; allowed: [H, W] with two integers each >= 32"),
    ],
)
def test_bad_config_value_or_key_names_it_and_makes_no_run(tmp_path, setting, message):
    assert message in _fit_config_error(tmp_path, "--set", setting)


def test_bad_config_files_are_named(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nepochs = 3\n")
    assert f"config file '{broken}' is not valid TOML" in _fit_config_error(tmp_path, "--config", broken)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[loss]\nset_weight = "high"\n')
    assert f"{wrong}: loss.set_weight: received 'high'" in _fit_config_error(tmp_path, "--config", wrong)
    assert "does not exist" in _fit_config_error(tmp_path, "--config", tmp_path / "missing.toml")


def test_10000x10000_input_is_refused_up_front_with_the_estimate(tmp_path):
    output = _fit_config_error(tmp_path, "--set", "model.input_size=[10000, 10000]", "--set", "model.coarse_hidden=4200")
    assert "model.input_size=[10000, 10000] is too large" in output
    assert "235.6 G parameters" in output and "49,840,128 x 4,200" in output and "111.9 GiB" in output
    size = estimate_size((10000, 10000), 16)  # a small dense layer: the activations alone are refused
    assert size["parameters"] < MAX_PARAMETERS < estimate_size((10000, 10000), 4200)["parameters"]
    assert size["activation_bytes"] > MAX_ACTIVATION_BYTES > estimate_size((480, 640))["activation_bytes"]
    with pytest.raises(ConfigError, match=r"one image's VGG16 activations alone would take 111.9 GiB"):
        DepthNetwork((10000, 10000), coarse_hidden=16)  # before any weight is allocated


def test_size_estimate_is_the_real_parameter_count_of_vgg_and_the_dense_layers(tiny_model):
    stage = tiny_model
    network = load_network_file(stage / "model.keras")
    groups = network.layer_groups()
    counted = sum(layer.count_params() for group in ("backbone", "coarse") for layer in groups[group])
    assert estimate_size((32, 32), coarse_hidden=16)["parameters"] == counted


def test_stage_2_without_stage_1_says_what_to_run_and_makes_no_run(tmp_path):
    output = _fit_config_error(tmp_path, "--stage", 2, "--name", "fresh")
    missing = tmp_path / "runs" / "fresh" / "stage1" / "model.keras"
    assert f"stage 2 starts from stage 1's weights, but {missing} does not exist" in output
    assert "Run `kdepth fit --stage 1` first" in output


# --------------------------------------------------------------------- model files from elsewhere


@pytest.fixture(scope="module")
def foreign_models(tmp_path_factory):
    """Model files kdepth did not write: {name: (path, message excerpt for evaluate / predict)}."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("foreign")
    plain = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(1, 3, padding="same")])
    plain.save(root / "plain.keras")
    plain.save(root / "plain.h5")
    (root / "notes.keras").write_text("a text file renamed .keras\n")
    a, b = keras.Input((32, 32, 3), name="image"), keras.Input((32, 32, 1), name="sparse_depth")
    two = keras.Model([a, b], keras.layers.Conv2D(1, 3, padding="same")(keras.layers.Concatenate()([a, b])))
    two.export(str(root / "two_sm"), format="tf_saved_model", verbose=False)
    (root / "two_inputs.tflite").write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(root / "two_sm")).convert())
    (root / "random.tflite").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {
        "plain.keras": "is a Keras model but not a kdepth network",
        "plain.h5": "unsupported model file type '.h5'; expected a kdepth .keras file",
        "notes.keras": "is not a .keras model archive",
        "two_inputs.tflite": "TFLite model has 2 input(s)",
        "random.tflite": "cannot be loaded as a TFLite model",
    }, root


EXPORT_MESSAGES = {
    "plain.keras": "is a Keras model but not a kdepth network",
    "plain.h5": "unsupported model file type '.h5'",
    "notes.keras": "is not a .keras model archive",
    "two_inputs.tflite": "is a tflite; export needs the trained Keras network",
    "random.tflite": "is a tflite; export needs the trained Keras network",
}


@pytest.mark.parametrize("name", list(EXPORT_MESSAGES))
@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_model_file_from_another_program_is_named_with_what_was_expected(foreign_models, tmp_path, command, name):
    messages, root = foreign_models
    path = root / name
    image = tmp_path / "room.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    out = tmp_path / "out"
    args = {
        "evaluate": ["evaluate", "--model", path, "--data", "synthetic", *_sets(run_dir=tmp_path)],
        "predict": ["predict", "--model", path, image, "--out", out],
        "export": ["export", "--model", path, "--out", out, "--quantize", "none"],
    }[command]
    result = _invoke(*args)
    _no_traceback(result)
    assert result.exit_code == 1
    assert f"error: {path}" in result.output or f"error: --model {path}" in result.output
    assert (EXPORT_MESSAGES if command == "export" else messages)[name] in result.output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("name, message", [
    ("plain.keras", "none of its layers ['conv2d'] matches a layer of the kdepth network"),
    ("plain.h5", "none of its layers ['conv2d'] matches a layer of the kdepth network"),
    ("notes.keras", "is not a .keras model archive"),
])
def test_fit_init_from_a_foreign_model_stops_instead_of_training_from_scratch(foreign_models, tmp_path, name, message):
    _, root = foreign_models
    result = _invoke("fit", "--init", root / name, "--name", "init", *_sets(run_dir=tmp_path))
    _no_traceback(result)
    assert result.exit_code == 1 and f"error: {root / name}" in result.output and message in result.output
    assert not (tmp_path / "init" / "stage1" / "model.keras").exists()


# ----------------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def predicted(tiny_model, tmp_path_factory):
    """One `kdepth predict` over good, odd and bad inputs: (result, inputs, out folder)."""
    stage = tiny_model
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(d / "good.png")
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(d / "one_pixel.png")
    (d / "notes.png").write_text("a text file named .png\n")
    (d / "empty.png").write_bytes(b"")
    (d / "cut.png").write_bytes((d / "good.png").read_bytes()[:300])
    (d / "readme.txt").write_text("not an image at all\n")
    inputs = {name: d / name for name in ("good.png", "one_pixel.png", "notes.png", "empty.png", "cut.png", "readme.txt")}
    inputs["missing.png"] = d / "missing.png"
    out = tmp_path_factory.mktemp("pred") / "out"
    result = _invoke("predict", "--model", stage, *inputs.values(), "--out", out, "--npy", "--pointcloud")
    return result, inputs, out


@pytest.mark.parametrize(
    "name, message",
    [
        ("notes.png", "cannot identify image file"),
        ("empty.png", "file is empty (0 bytes)"),
        ("cut.png", "cannot read image"),
        ("readme.txt", "cannot identify image file"),
        ("missing.png", "does not exist"),
    ],
)
def test_predict_names_each_unreadable_input_writes_nothing_for_it_and_exits_1(predicted, name, message):
    result, inputs, out = predicted
    _no_traceback(result)
    assert result.exit_code == 1
    assert any(str(inputs[name]) in line and message in line for line in result.output.splitlines()), result.output
    assert not list(out.glob(f"{inputs[name].stem}*"))
    assert not list(out.glob(".*")), "a temporary file was left behind"


def test_predict_still_writes_the_good_and_the_1x1_image(predicted):
    result, _, out = predicted
    assert "predicted 2 image(s)" in result.output and "5 image(s) failed" in result.output
    assert np.load(out / "one_pixel.npy").shape == (1, 1)
    assert np.asarray(Image.open(out / "good_depth.png")).shape == (48, 64)


class _DiskFull:
    """A stub depth model; the PLY writer is made to fail as on a full disk."""

    kind, path, input_size = "stub", "stub", (16, 16)

    def predict(self, rgb):
        return np.full(rgb.shape[:2], 2.0, np.float32)


def test_a_write_failing_half_way_leaves_no_partial_output(tmp_path, monkeypatch):
    image = tmp_path / "room.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(image)

    def full_disk(path, points, colors):
        path.write_bytes(b"ply\n")  # half a file, then the error
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("kdepth.predict.write_ply", full_disk)
    report = predict_paths(_DiskFull(), [image], tmp_path / "out", npy=True, pointcloud=True, echo=lambda m: None)
    assert report.failed == [(str(image), "prediction failed (OSError: [Errno 28] No space left on device)")]
    assert list((tmp_path / "out").iterdir()) == []  # neither the depth PNG written before, nor a .partial file


def _predict_in_memory(tmp_path, h, w):
    """Predicts one h x w image with a stub model; returns (report, peak numpy bytes per pixel)."""
    image = tmp_path / "big.png"
    Image.fromarray(np.tile(np.arange(w, dtype=np.uint8)[None, :, None], (h, 1, 3))).save(image, compress_level=1)
    tracemalloc.start()
    try:
        report = predict_paths(_DiskFull(), [image], tmp_path / "out", echo=lambda m: None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.ok and np.asarray(Image.open(tmp_path / "out" / "big_depth.png")).shape == (h, w)
    return report, peak / (h * w)


def test_a_large_image_is_shrunk_first_and_costs_a_bounded_number_of_bytes_per_pixel(tmp_path):
    report, per_pixel = _predict_in_memory(tmp_path, 3000, 4000)
    assert "3000x4000 (HxW) is more than 4x the model's input 16x16" in report.notes[0][1]
    # uint8 RGB (3) + float32 depth (4) + uint16 PNG (2) + colour canvas (3), plus bands of rows;
    # encoding whole float64 maps, as before, took about 40 bytes a pixel.
    assert per_pixel < 20, per_pixel


@pytest.mark.slow
def test_a_10000x10000_image_is_resized_not_out_of_memory(tmp_path):
    _, per_pixel = _predict_in_memory(tmp_path, 10000, 10000)
    assert per_pixel < 20, per_pixel  # under 2 GB of numpy arrays for 100 M pixels


# ------------------------------------------------------------------------------------- export


def test_export_that_fails_leaves_no_model_file_and_keeps_the_earlier_export(tiny_model, tmp_path, monkeypatch):
    stage = tiny_model
    out = tmp_path / "export"
    out.mkdir()
    earlier = {"metadata.json": b'{"format": "kdepth-export/1"}\n', "model_none.tflite": b"earlier export"}
    for name, data in earlier.items():
        (out / name).write_bytes(data)

    def conversion_fails(saved_model_dir, quantize, representative=None):
        raise KdepthError(f"TFLite conversion ({quantize}) of {saved_model_dir} failed: ConverterError: unsupported op")

    monkeypatch.setattr("kdepth.export.convert_tflite", conversion_fails)
    result = _invoke("export", "--model", stage, "--out", out, "--quantize", "none", "--parity-images", 2)
    _no_traceback(result)
    assert result.exit_code == 1 and "error: TFLite conversion (none)" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # no saved_model/, no staging folder
    # Ctrl-C while the SavedModel is written: the staging folder goes, and the OUT it made too.
    def interrupted(deploy, path):
        (path / "variables").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr("kdepth.export.write_saved_model", interrupted)
    fresh = tmp_path / "fresh"
    result = _invoke("export", "--model", stage, "--out", fresh, "--quantize", "none")
    assert result.exit_code == 1 and "Aborted" in result.output and not fresh.exists()


@pytest.mark.parametrize("command", ["export", "predict"])
def test_out_that_is_a_file_is_a_usage_error(tiny_model, tmp_path, command):
    target = tmp_path / "model.tflite"
    target.write_bytes(b"keep me")
    image = tmp_path / "room.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    result = _invoke(command, "--model", tiny_model, *([image] if command == "predict" else []), "--out", target)
    assert result.exit_code == 2  # click's usage errors
    assert f"Invalid value for '--out': Directory '{target}' is a file" in result.output
    assert target.read_bytes() == b"keep me"
