"""`kdepth data check` and `kdepth evaluate` on a manifest whose file name names no split."""

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kdepth.cli import main


def _pairs_manifest(root, n=3):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        (root / "rgb").mkdir(parents=True, exist_ok=True)
        (root / "depth").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "rgb" / f"{i}.png")
        Image.fromarray(rng.integers(500, 5000, (24, 32)).astype(np.uint16)).save(root / "depth" / f"{i}.png")
        lines.append(f"rgb/{i}.png depth/{i}.png")
    manifest = root / "pairs.txt"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def flat_model(tmp_path_factory):
    """A one-input Keras model with a 'scale1' output: depth 2 m everywhere, whatever the image."""
    image = keras.Input((16, 16, 3), name="image")
    depth = keras.layers.Conv2D(1, 1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(2.0))(image)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    keras.Model(image, {"scale1": depth}).save(path)
    return path


def test_check_reads_a_split_less_manifest_without_split(tmp_path):
    manifest = _pairs_manifest(tmp_path)
    result = CliRunner().invoke(main, ["data", "check", str(manifest)])
    assert result.exit_code == 0, result.output
    assert f"split: 'all', the only split of manifest:{manifest}" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("all "))
    assert row.split()[:4] == ["all", "3", "3", "0"]  # split, samples, ok, bad


def test_evaluate_reads_a_split_less_manifest_without_split(tmp_path, flat_model):
    manifest = _pairs_manifest(tmp_path)
    out = tmp_path / "eval.json"
    args = ["evaluate", "--model", str(flat_model), "--data", str(manifest), "--protocol", "full", "--json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"split: 'all', the only split of manifest:{manifest} (it has no 'test' split; --split chooses)" in result.output
    data = json.loads(out.read_text())
    assert data["split"] == "all" and data["count"] == 3
    # A split the manifest does not have is still refused by name.
    wrong = CliRunner().invoke(main, [*args[:-2], "--split", "test"])
    assert wrong.exit_code == 1 and "split 'test' is unknown; available: ['all']" in wrong.output
