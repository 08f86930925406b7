"""Stage folders: a finished stage kept, --overwrite, one writer, a resume with the same settings."""

import json
import os
import re

import pytest

from kdepth.config import SCHEMA, load_config, save_config
from kdepth.errors import KdepthError
from kdepth.locks import LOCK_NAME, FolderLocked
from kdepth.training.stage_guard import (
    RESUME_MAY_CHANGE,
    StageClaim,
    StageFinished,
    check_resume_config,
    config_changes,
    replaced_dirs,
)


def _config(tmp_path, *sets):
    return load_config([], [f'train.run_dir="{tmp_path / "runs"}"', "train.name=same", *sets])


def _finished_stage(out, delta1=0.614):
    out.mkdir(parents=True)
    (out / "model.keras").write_bytes(b"old model")
    (out / "summary.json").write_text(json.dumps({"stage": 1, "val": {"delta1": delta1}, "epochs": 8}))
    os.utime(out / "summary.json", (1796143000, 1796143000))


def _interrupted_stage(out, config):
    (out / "backup").mkdir(parents=True)
    (out / "backup" / "state.json").write_text("{}")
    save_config(config, out)


def test_every_may_change_key_exists():
    keys = {f"{s}.{k}" for s in SCHEMA for k in SCHEMA[s]}
    assert set(RESUME_MAY_CHANGE) <= keys


def test_config_changes_lists_what_changes_the_model_data_or_order_only(tmp_path):
    old = _config(tmp_path)
    new = _config(tmp_path, "train.epochs=20", "train.lr_coarse=0.5", "train.verbose=2", "data.seed=3", "model.coarse_hidden=16")
    assert config_changes(old, new) == ["data.seed (0 -> 3)", "model.coarse_hidden (4200 -> 16)"]
    assert config_changes(old, old) == []


def test_a_resume_with_other_settings_is_refused_naming_the_keys(tmp_path):
    config = _config(tmp_path)
    out = tmp_path / "runs" / "same" / "stage1"
    _interrupted_stage(out, config)
    check_resume_config(out, config.replace(train__epochs=30, train__lr_scale2=1e-5))  # allowed: no error
    with pytest.raises(KdepthError) as e:
        check_resume_config(out, config.replace(train__seed=1, loss__set_weight=0.5))
    assert "loss.set_weight (1.5 -> 0.5), train.seed (0 -> 1)" in str(e.value)
    assert f"--config {out / 'config.toml'}" in str(e.value) and "--name NEW" in str(e.value)
    # Refused through the claim too, with config.toml left as the interrupted run wrote it.
    before = (out / "config.toml").read_bytes()
    with pytest.raises(KdepthError, match="train.seed"):
        with StageClaim(out, out, config.replace(train__seed=1), 1):
            pass
    assert (out / "config.toml").read_bytes() == before and not (out / LOCK_NAME).exists()


def test_a_finished_stage_is_refused_with_its_figures_and_left_unchanged(tmp_path):
    out = tmp_path / "runs" / "same" / "stage1"
    _finished_stage(out)
    with pytest.raises(StageFinished) as e:
        with StageClaim(out, out, _config(tmp_path), 1):
            pass
    assert re.fullmatch(
        rf"{re.escape(str(out))} already holds a finished stage-1 model \(val delta1 0\.614, 8 epochs, finished "
        r"\d{4}-\d\d-\d\d \d\d:\d\d\)\. Use --name NEW for a new run, or --overwrite to replace it\.",
        str(e.value),
    )
    assert sorted(p.name for p in out.iterdir()) == ["model.keras", "summary.json"]


def test_an_interrupted_stage_still_resumes(tmp_path):
    config = _config(tmp_path)
    out = tmp_path / "runs" / "same" / "stage1"
    _interrupted_stage(out, config)
    with StageClaim(out, out, config.replace(train__epochs=12), 1):
        assert (out / LOCK_NAME).exists()
    assert (out / "backup" / "state.json").exists() and not (out / LOCK_NAME).exists()


def test_overwrite_keeps_the_old_stage_aside_until_the_new_run_finishes(tmp_path):
    out = tmp_path / "runs" / "same" / "stage1"
    _finished_stage(out)
    messages = []
    with StageClaim(out, out, _config(tmp_path), 1, overwrite=True, echo=messages.append):
        (aside,) = replaced_dirs(out)
        assert (aside / "model.keras").read_bytes() == b"old model" and not (out / "model.keras").exists()
        (out / "model.keras").write_bytes(b"new model")
        (out / "summary.json").write_text("{}")
    assert replaced_dirs(out) == [] and (out / "model.keras").read_bytes() == b"new model"
    assert "is moved to" in messages[0]


def test_overwrite_puts_the_old_stage_back_if_the_new_run_fails_before_training(tmp_path):
    out = tmp_path / "runs" / "same" / "stage1"
    _finished_stage(out)
    with pytest.raises(RuntimeError), StageClaim(out, out, _config(tmp_path), 1, overwrite=True, echo=lambda m: None):
        raise RuntimeError("the network does not build")
    assert replaced_dirs(out) == [] and (out / "model.keras").read_bytes() == b"old model"
    assert sorted(p.name for p in out.iterdir()) == ["model.keras", "summary.json"]


def test_overwrite_keeps_the_old_stage_aside_if_the_new_run_stops_after_a_backup(tmp_path):
    out = tmp_path / "runs" / "same" / "stage1"
    _finished_stage(out)
    messages = []
    with pytest.raises(KeyboardInterrupt), StageClaim(out, out, _config(tmp_path), 1, overwrite=True, echo=messages.append):
        (out / "backup").mkdir()
        (out / "backup" / "state.json").write_text("{}")
        raise KeyboardInterrupt
    (aside,) = replaced_dirs(out)
    assert (aside / "model.keras").read_bytes() == b"old model" and f"stays in {aside}" in messages[-1]


def test_only_the_chief_locks_and_a_busy_stage_is_refused(tmp_path):
    out = tmp_path / "runs" / "same" / "stage1"
    work = out / "workertemp_1"
    with StageClaim(out, work, _config(tmp_path), 1, is_chief=False):
        assert not (out / LOCK_NAME).exists() and (work / "config.toml").exists()
    with StageClaim(out, out, _config(tmp_path), 1):
        with pytest.raises(FolderLocked, match=r"is being trained by process .* Wait for it, or use --name NEW\."):
            with StageClaim(out, out, _config(tmp_path), 1):
                pass
        assert (out / LOCK_NAME).exists()  # the refused claim did not remove the holder's lock


@pytest.mark.slow
def test_a_crash_after_training_resumes_at_the_end_instead_of_training_again(tmp_path, monkeypatch):
    import kdepth.training.fit as fit_module

    config = _config(
        tmp_path, "model.input_size=[32, 32]", "model.coarse_hidden=16", "model.backbone_weights=none",
        "data.synthetic_train=8", "data.synthetic_val=2", "train.batch_size=2", "train.verbose=0",
        "train.tensorboard_images=0", "train.epochs=2", "train.steps_per_epoch=2",
    )
    out = tmp_path / "runs" / "same" / "stage1"
    final_metrics = fit_module.final_metrics

    def bad_val_file(*args, **kwargs):
        raise KdepthError("val/rgb/0001.png: not an image")

    monkeypatch.setattr(fit_module, "final_metrics", bad_val_file)
    with pytest.raises(KdepthError, match="not an image"):
        fit_module.fit(config)
    assert (out / "backup" / "state.json").is_file() and not (out / "summary.json").exists()
    monkeypatch.setattr(fit_module, "final_metrics", final_metrics)
    messages = []
    result = fit_module.fit(config, echo=messages.append)
    assert any("resuming from the backup" in m and "start of epoch 3 of 2" in m for m in messages), messages
    assert result.epochs_run == 0 and (out / "summary.json").is_file() and not (out / "backup").exists()


def test_the_cli_refuses_a_finished_stage_before_building_anything(tmp_path):
    from click.testing import CliRunner

    from kdepth.cli import main

    out = tmp_path / "runs" / "same" / "stage1"
    _finished_stage(out)
    args = ["fit", "--stage", "1", "--name", "same", "--set", f'train.run_dir="{tmp_path / "runs"}"']
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "already holds a finished stage-1 model (val delta1 0.614, 8 epochs" in result.output
    assert "stage 1:" not in result.output and (out / "model.keras").read_bytes() == b"old model"
