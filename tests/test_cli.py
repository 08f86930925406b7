"""The kdepth command line: every command's help, the data commands end to end, bad input."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kdepth.cli import main
from kdepth.config import load_config
from kdepth.errors import DataError
from kdepth.training.fit import fit

COMMANDS = [[], ["data"], ["data", "synth"], ["data", "check"], ["data", "show"], ["fit"], ["config"], ["config", "show"], ["config", "base"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "kdepth")
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "kdepth " in result.output  # an example command line


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    result = CliRunner().invoke(main, ["data", "synth", "--out", str(out), "--count", "6", "--eval-count", "2", "--size", "36x48"])
    assert result.exit_code == 0, result.output
    return out


def test_synth_writes_the_folder_format(synth_dir):
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        assert len(list((synth_dir / split / "rgb").glob("*.png"))) == n
        depths = sorted((synth_dir / split / "depth").glob("*.png"))
        assert len(depths) == n
    assert load_config([synth_dir / "config.toml"]).data.synthetic_size == [36, 48]
    depth = np.asarray(Image.open(depths[0]))
    assert depth.dtype == np.uint16 and depth.shape == (36, 48)
    assert 300 <= depth[depth > 0].min() and depth.max() <= 10000  # millimetres within 0.3-10 m


def test_synth_refuses_a_non_empty_folder(synth_dir):
    result = CliRunner().invoke(main, ["data", "synth", "--out", str(synth_dir), "--count", "2"])
    assert result.exit_code == 1 and "not empty" in result.output


def test_check_passes_good_data_and_names_bad_files(synth_dir, tmp_path):
    good = CliRunner().invoke(main, ["data", "check", str(synth_dir)])
    assert good.exit_code == 0, good.output
    bad = tmp_path / "bad"
    CliRunner().invoke(main, ["data", "synth", "--out", str(bad), "--count", "3", "--eval-count", "1", "--size", "32x40"])
    corrupt = bad / "train" / "rgb" / "00001.png"
    corrupt.write_bytes(corrupt.read_bytes()[:40])  # truncated
    (bad / "val" / "depth" / "00000.png").unlink()  # missing partner
    result = CliRunner().invoke(main, ["data", "check", str(bad)])
    assert result.exit_code == 1
    assert str(corrupt) in result.output
    assert "00000" in result.output


def test_show_writes_a_contact_sheet(synth_dir, tmp_path):
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(main, ["data", "show", str(synth_dir), "--out", str(out), "--count", "3"])
    assert result.exit_code == 0, result.output
    sheet = np.asarray(Image.open(out))
    assert sheet.ndim == 3 and sheet.shape[0] >= 3 * 36


def test_unknown_data_spec_is_refused():
    result = CliRunner().invoke(main, ["data", "check", "/no/such/place"])
    assert result.exit_code == 1 and "error:" in result.output


def _tiny(tmp_path, root, *extra):
    return load_config(
        [],
        [
            "data.source=folder", f'data.root="{root}"', "model.input_size=[32, 32]", "model.coarse_hidden=16",
            "train.batch_size=2", "train.epochs=1", "train.steps_per_epoch=2", "train.verbose=0",
            "train.tensorboard_images=0", f'train.run_dir="{tmp_path / "runs"}"', *extra,
        ],
    )


def test_training_stops_on_a_bad_file_with_its_name_unless_skipping(tmp_path):
    root = tmp_path / "data"
    CliRunner().invoke(main, ["data", "synth", "--out", str(root), "--count", "4", "--eval-count", "2", "--size", "32x32"])
    corrupt = root / "train" / "rgb" / "00002.png"
    corrupt.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"00002.png.*skip_bad_files"):
        fit(_tiny(tmp_path, root))
    result = fit(_tiny(tmp_path, root, "data.skip_bad_files=true"))
    assert result.model_path.is_file()
