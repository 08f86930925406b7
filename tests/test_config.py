"""Configuration: defaults, files, overrides and the errors a user sees."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from kdepth import config as cfg
from kdepth.cli import main
from kdepth.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_base_toml_lists_every_key_with_its_default():
    # configs/base.toml is generated from the schema; regenerate with `kdepth config base`.
    assert (ROOT / "configs" / "base.toml").read_text() == cfg.base_toml()
    loaded = cfg.load_config([ROOT / "configs" / "base.toml"])
    assert loaded.to_dict() == cfg.defaults().to_dict()


def test_every_config_file_loads():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        cfg.load_config([path])


def test_file_overrides_only_what_it_changes(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[train]\nepochs = 3\n[model]\ninput_size = [96, 128]\n')
    c = cfg.load_config([path])
    assert c.train.epochs == 3 and c.model.input_size == [96, 128]
    assert c.train.batch_size == cfg.SCHEMA["train"]["batch_size"].default


def test_extends_chains_files_and_set_wins(tmp_path):
    (tmp_path / "parent.toml").write_text('[train]\nepochs = 3\nbatch_size = 2\n')
    (tmp_path / "child.toml").write_text('extends = "parent.toml"\n[train]\nepochs = 4\n')
    c = cfg.load_config([tmp_path / "child.toml"], ["train.epochs=7", "data.source=folder"])
    assert (c.train.epochs, c.train.batch_size, c.data.source) == (7, 2, "folder")


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert cfg.load_config([], ["loss.set_weight=2"]).loss.set_weight == 2.0
    with pytest.raises(ConfigError, match=r"train.epochs: received 2.5; allowed: an integer"):
        cfg.load_config([], ["train.epochs=2.5"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", r"unknown config key train.epoch.*Did you mean 'train.epochs'"),
        ("trian.epochs=3", r"unknown config section \[trian\].*Did you mean 'train'"),
        ("data.source=folders", r"data.source: received 'folders'; allowed: one of .*Did you mean 'folder'"),
        ("model.input_size=[64]", r"model.input_size: received \[64\]; allowed: \[H, W\]"),
        ("train.batch_size=0", r"train.batch_size: received 0; allowed: an integer \(>= 1\)"),
        ("train.jit_compile=1", r"train.jit_compile: received 1; allowed: true or false"),
        ("epochs", r"--set received 'epochs'; allowed: section.key=value"),
    ],
)
def test_bad_overrides_name_key_value_and_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        cfg.load_config([], [override])


def test_bad_file_value_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[loss]\nset_weight = "high"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: loss.set_weight: received 'high'"):
        cfg.load_config([path])
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.load_config([tmp_path / "missing.toml"])
    (tmp_path / "broken.toml").write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfg.load_config([tmp_path / "broken.toml"])


def test_saved_config_round_trips(tmp_path):
    c = cfg.load_config([], ["train.epochs=3", "data.hole_values=[0, 65535]", 'train.name="a \\"b\\""'])
    path = cfg.save_config(c, tmp_path / "run")
    assert cfg.load_config([path]).to_dict() == c.to_dict()


def test_cli_reports_config_errors_without_traceback():
    result = CliRunner().invoke(main, ["config", "show", "--set", "train.epoch=3"])
    assert result.exit_code == 1
    assert "error: unknown config key train.epoch" in result.output
    assert "Traceback" not in result.output


def test_cli_config_show_prints_resolved_toml():
    result = CliRunner().invoke(main, ["config", "show", "--set", "train.epochs=3"])
    assert result.exit_code == 0, result.output
    assert "epochs = 3  #" in result.output
