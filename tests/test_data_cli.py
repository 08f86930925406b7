"""`kdepth data check`, `evaluate` and `fit` on a manifest whose file name names no split."""

import json

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
    """An untrained tiny kdepth network: its zero heads predict 2 m everywhere, whatever the image."""
    from kdepth.models import DepthNetwork

    path = tmp_path_factory.mktemp("model") / "model.keras"
    DepthNetwork(input_size=(32, 32), scales=1, coarse_hidden=16).save(path)
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


def test_fit_trains_on_a_split_less_manifest_and_says_there_is_no_validation_split(tmp_path, tiny_config):
    from kdepth.training.fit import fit

    manifest = _pairs_manifest(tmp_path, n=4)
    config = tiny_config("pairs", "data.source=manifest", f'data.root="{manifest}"', "train.epochs=1", "train.steps_per_epoch=2")
    said = []
    result = fit(config, echo=said.append)
    assert any(
        f"training on 'all', the only split of manifest:{manifest}" in line and "no validation split" in line for line in said
    ), said
    assert result.val is None and result.model_path.is_file()
    assert "train, mean-depth baseline" in result.format() and "\nval " not in result.format()
    summary = json.loads((result.stage_dir / "summary.json").read_text())
    assert summary["val"] is None and summary["train"]["delta1"] >= 0 and summary["baseline"]["delta1"] >= 0
    assert not (result.stage_dir / "best.weights.h5").exists()  # "best" needs a validation figure
