"""The device path: LiteRT models run with numpy and Pillow only, quantized inputs read from the model.

`kdepth predict` and `kdepth evaluate` on a .tflite run in a subprocess in which importing
tensorflow or keras raises; the numpy resize they use is checked against tf.image.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tflite_models import SIZE, expected_depth, write_models

from kdepth.inference import load_depth_model
from kdepth.resize import resize_depth, resize_image

ROOT = Path(__file__).resolve().parents[1]
BLOCK_TF = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tensorflow_datasets"):
            raise ImportError("blocked: the device path imported " + name)
        return None
sys.meta_path.insert(0, _Block())
from kdepth.cli import main
try:
    main(sys.argv[1:])
finally:
    print("HEAVY", sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_models(tmp_path_factory.mktemp("tflite"))


def _write_pairs(root, n=3, size=SIZE, seed=0):
    """ROOT/test/rgb/*.png + ROOT/test/depth/*.png (16-bit mm) whose depth is the models' own output."""
    rng = np.random.default_rng(seed)
    (root / "test" / "rgb").mkdir(parents=True)
    (root / "test" / "depth").mkdir(parents=True)
    for i in range(n):
        rgb = rng.integers(1, 256, (*size, 3), dtype=np.uint8)  # photos have few pure-black pixels
        depth = resize_depth(expected_depth(rgb[None])[0], size)
        Image.fromarray(rgb).save(root / "test" / "rgb" / f"s{i}.png")
        Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(root / "test" / "depth" / f"s{i}.png")
    return root


def _run_blocked(args, cwd):
    proc = subprocess.run([sys.executable, "-c", BLOCK_TF, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    heavy = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY")]
    return proc, heavy


@pytest.mark.parametrize(("shape", "size"), [((480, 640), (64, 80)), ((31, 45), (64, 80)), ((64, 80), (480, 640)), ((100, 37), (33, 90))])
def test_numpy_resize_matches_tf_image_within_the_parity_tolerance(shape, size):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 255, (*shape, 3)).astype(np.float32)
    want = np.clip(tf.image.resize(rgb, size, "bilinear", antialias=True).numpy(), 0, 255)
    np.testing.assert_allclose(resize_image(rgb, size), want, atol=255 * 1e-5)
    depth = rng.uniform(0.5, 10.0, (2, *shape)).astype(np.float32)
    want = tf.image.resize(depth[..., None], size, "bilinear").numpy()[..., 0]
    # float32 rounding only: the float TFLite parity tolerance is 1e-3 x max(depth, 1 m), 10x wider
    np.testing.assert_allclose(resize_depth(depth, size), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(resize_depth(depth[0], size), want[0], rtol=1e-4, atol=1e-4)


def test_predict_and_evaluate_on_a_tflite_never_import_tensorflow_or_keras(models, tmp_path):
    data = _write_pairs(tmp_path / "data")
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(photo)
    proc, heavy = _run_blocked(["predict", "--model", str(models["float"]), str(photo), "--out", str(tmp_path / "o"), "--npy"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert heavy == ["HEAVY []"], proc.stdout + proc.stderr
    assert np.load(tmp_path / "o" / "photo.npy").shape == (40, 30)
    manifest = tmp_path / "pairs.txt"
    manifest.write_text("".join(f"data/test/rgb/s{i}.png data/test/depth/s{i}.png\n" for i in range(3)))
    for spec in (str(data), str(manifest)):
        proc, heavy = _run_blocked(
            ["evaluate", "--model", str(models["float"]), "--data", spec, "--protocol", "full", "--json", str(tmp_path / "e.json")], tmp_path
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert heavy == ["HEAVY []"], proc.stdout + proc.stderr
        result = json.loads((tmp_path / "e.json").read_text())
        assert result["count"] == 3 and result["metrics"]["delta1"] == pytest.approx(1.0)


# ------------------------------------------------------------ quantized inputs read from the model


def test_a_uint8_input_range_is_read_from_its_quantization(models, rgb_images):
    x = np.round(rgb_images(2, *SIZE, seed=3))
    want = resize_depth(expected_depth(x), SIZE)
    for name, expected_range in (("uint8_01", "0-1"), ("uint8_255", "0-255"), ("float", "0-255")):
        model = load_depth_model(models[name])
        assert model.input_range == expected_range, model.input_range_note
        assert model.input_range_note.startswith(f"input range {expected_range} (")
        np.testing.assert_allclose(model.predict(x), want, atol=0.06)  # int8 activations: ~1 % of 4 m
    assert "scale 0.00392157, zero point 0: its float input is 0-1" in load_depth_model(models["uint8_01"]).input_range_note
    forced = load_depth_model(models["uint8_01"], input_range="0-255")
    assert forced.input_range == "0-255" and forced.input_range_note == "input range 0-255 (as given)"


def test_an_unclear_input_quantization_asks_for_an_explicit_range():
    from kdepth.errors import KdepthError
    from kdepth.inference import infer_input_range

    assert infer_input_range("int8", 1 / 255, -128)[0] == "0-1"
    assert infer_input_range("uint8", 0.0, 0)[0] == "0-255"  # not quantized: raw bytes
    with pytest.raises(KdepthError, match=r"scale 0.5, zero point 0, i.e. float input 0..127.5.*--input-range 0-255 or --input-range 0-1"):
        infer_input_range("uint8", 0.5, 0, "m.tflite")


def test_evaluate_scores_a_0_1_uint8_model_right_by_default_and_flags_a_wrong_range(models, tmp_path):
    from click.testing import CliRunner

    from kdepth.cli import main

    data = _write_pairs(tmp_path / "data", n=4)
    args = ["evaluate", "--model", str(models["uint8_01"]), "--data", str(data), "--protocol", "full", "--json", str(tmp_path / "e.json")]
    good = CliRunner().invoke(main, args)
    assert good.exit_code == 0, good.output
    assert "input range 0-1 (uint8 input quantized with scale 0.00392157" in good.output
    assert "WARNING" not in good.output
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["delta1"] > 0.99
    bad = CliRunner().invoke(main, [*args, "--input-range", "0-255"])
    assert bad.exit_code == 0, bad.output
    assert "WARNING: predictions are degenerate" in bad.output and "try --input-range 0-1" in bad.output
    assert json.loads((tmp_path / "e.json").read_text())["warnings"]
