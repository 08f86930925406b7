"""Run folders with real processes: two fits of one stage, a rerun, --overwrite, a killed fit, two exports."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import TINY_SETS

from kdepth.locks import LOCK_NAME

pytestmark = pytest.mark.slow

TINY = [*TINY_SETS, "train.epochs=1"]


def _env():
    return {k: v for k, v in os.environ.items() if k != "KDEPTH_TF_LOG"}


def _fit(tmp_path, *sets, extra=()):
    sets = [*TINY, f'train.run_dir="{tmp_path / "runs"}"', "train.name=same", *sets]
    return [sys.executable, "-m", "kdepth.cli", "fit", "--stage", "1", *[a for s in sets for a in ("--set", s)], *extra]


def _start(command):
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _wait_for(path, process, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the process ended (code {process.returncode}) before {path} appeared: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {path} after {timeout} s")
        time.sleep(0.02)


def _run(command, timeout=300):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())


def test_a_second_fit_of_a_stage_in_training_is_refused_and_the_first_goes_on(tmp_path):
    out = tmp_path / "runs" / "same" / "stage1"
    first = _start(_fit(tmp_path, "train.steps_per_epoch=300"))
    _wait_for(out / LOCK_NAME, first)
    time.sleep(1)
    second = _run(_fit(tmp_path, "train.steps_per_epoch=300"))
    assert second.returncode == 1, second.stderr
    assert f"{out} is being trained by process {first.pid} on " in second.stderr
    assert "(kdepth fit --stage 1 --set" in second.stderr and "Wait for it, or use --name NEW." in second.stderr
    assert first.poll() is None, "the refused fit must not outlive the first"
    # Training the first to its end would only repeat what the other fit tests show (and took
    # 150 s); stopping it as a user would shows it still holds its lock and gives it back.
    assert (out / LOCK_NAME).exists()
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM, err
    assert not (out / LOCK_NAME).exists()


def test_a_finished_stage_is_not_overwritten_and_overwrite_replaces_it(tmp_path):
    out = tmp_path / "runs" / "same" / "stage1"
    done = _run(_fit(tmp_path, "train.steps_per_epoch=2"))
    assert done.returncode == 0, done.stderr
    model = (out / "model.keras").read_bytes()

    again = _run(_fit(tmp_path, "train.steps_per_epoch=2"))
    assert again.returncode == 1
    assert f"{out} already holds a finished stage-1 model (val delta1 " in again.stderr
    assert "Use --name NEW for a new run, or --overwrite to replace it." in again.stderr
    assert "stage 1:" not in again.stdout  # stopped before building anything
    assert (out / "model.keras").read_bytes() == model and not (out / LOCK_NAME).exists()

    replaced = _run(_fit(tmp_path, "train.steps_per_epoch=2", "train.seed=1", extra=["--overwrite"]))
    assert replaced.returncode == 0, replaced.stderr
    assert "--overwrite: the finished stage in" in replaced.stdout
    assert (out / "model.keras").read_bytes() != model
    assert [p.name for p in out.parent.iterdir()] == ["stage1"]  # the old one is gone once the new one finished


def test_the_lock_of_a_killed_fit_is_taken_over_and_the_stage_resumes(tmp_path):
    out = tmp_path / "runs" / "same" / "stage1"
    # The fit is killed within a poll (20 ms) of its first backup at batch 20, so 40 batches
    # leave it alive then and the resumed run only the other 20 (400 took 170 s).
    sets = ("train.steps_per_epoch=40", "train.backup_every=20")
    killed = _start(_fit(tmp_path, *sets))
    _wait_for(out / "backup" / "state.json", killed)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert (out / LOCK_NAME).exists()  # nothing could remove it
    resumed = _run(_fit(tmp_path, *sets), timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"the lock of process {killed.pid} on " in resumed.stdout and "taking it over" in resumed.stdout
    assert "resuming from the backup" in resumed.stdout
    assert not (out / LOCK_NAME).exists()


# Runs `kdepth export` with a pause before the export itself, so a second export certainly
# meets the first one's lock.
SLOW_EXPORT = textwrap.dedent(
    """
    import sys, time
    import kdepth.export
    from kdepth.cli import main
    export_model = kdepth.export.export_model
    def slow(*args, **kwargs):
        time.sleep(float(sys.argv[1]))
        return export_model(*args, **kwargs)
    kdepth.export.export_model = slow
    main(sys.argv[2:])
    """
)


def test_an_export_into_an_out_another_export_writes_is_refused(tmp_path):
    import keras

    from kdepth.models import DepthNetwork

    keras.utils.set_random_seed(0)
    DepthNetwork(input_size=(32, 32), scales=2, coarse_hidden=16).save(tmp_path / "tiny.keras")
    out = tmp_path / "savedmodels" / "tiny"
    args = ["export", "--model", str(tmp_path / "tiny.keras"), "--out", str(out), "--parity-images", "1", "--quantize", "none"]
    first = _start([sys.executable, "-c", SLOW_EXPORT, "20", *args])
    _wait_for(out / LOCK_NAME, first)
    second = _run([sys.executable, "-m", "kdepth.cli", *args])
    assert second.returncode == 1
    assert f"{out} is being written by process {first.pid} on " in second.stderr
    assert "Wait for it, or use another --out." in second.stderr
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert (out / "metadata.json").exists() and not (out / LOCK_NAME).exists()
