"""Fault tolerance: kill and resume, Ctrl-C, unwritable or full disks, truncated and foreign files, NaN.

The slow test really SIGKILLs `kdepth fit` mid-epoch and resumes it; the others kill a writer
mid-write, send SIGINT to a real `kdepth fit`, truncate and corrupt real files, and push NaN
through the real train step.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections import namedtuple
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from conftest import TINY_SETS

from kdepth.cli import main
from kdepth.config import load_config
from kdepth.errors import KdepthError
from kdepth.models import DepthNetwork, load_network_file
from kdepth.training import callbacks as cb
from kdepth.training import checkpoints
from kdepth.training import fit as fit_module
from kdepth.training.fit import fit
from kdepth.training.stages import apply_stage, build_optimizer
from kdepth.training.trainer import DepthTrainer

# A resumed run must give the weights of an uninterrupted one. Measured here: identical
# (max |difference| 0.0); the tolerance leaves room for a BLAS that sums in another order.
RESUME_ATOL = 1e-6

TINY = [*TINY_SETS, "model.coarse_hidden=32"]


def tiny_config(tmp_path, name, *extra):
    return load_config([], [*TINY, f'train.run_dir="{tmp_path / "runs"}"', f"train.name={name}", *extra])


def read_h5(path):
    """Every dataset of an HDF5 file: {path inside the file: array}."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def max_abs_difference(a, b):
    assert sorted(a) == sorted(b)
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)))) for k in a)


def log_epochs(stage_dir):
    rows = (stage_dir / "log.csv").read_text().splitlines()
    return [int(row.split(",")[0]) for row in rows[1:]]


def small_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 4)), np.ones((4, 1)), verbose=0)
    return model


# ---------------------------------------------------------------------------------- kill and resume


@pytest.mark.slow  # ~50 s: an uninterrupted fit and a resumed one
def test_resume_mid_epoch_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    """A run that dies mid-epoch and is started again ends with the uninterrupted run's weights.

    The run folder is copied right after the backup in the middle of epoch 2: that copy is what
    a crash at that moment leaves behind (the real SIGKILL is the test below).
    """
    settings = ("train.epochs=2", "train.steps_per_epoch=3", "train.backup_every=2")
    runs = tmp_path / "runs"
    real_save = cb.Backup.save

    def save_and_snapshot(self, epoch, batch):
        real_save(self, epoch, batch)
        if (epoch, batch) == (1, 2):
            shutil.copytree(runs / "whole", runs / "crashed")

    monkeypatch.setattr(cb.Backup, "save", save_and_snapshot)
    whole = fit(tiny_config(tmp_path, "whole", *settings))
    monkeypatch.setattr(cb.Backup, "save", real_save)
    out = runs / "crashed" / "stage1"
    state = json.loads((out / "backup" / "state.json").read_text())
    assert (state["epoch"], state["batch"]) == (1, 2) and not (out / "model.keras").exists()
    assert not list(out.rglob(f"*{checkpoints.TMP_MARK}*"))

    messages = []
    resumed = fit(tiny_config(tmp_path, "crashed", *settings), echo=messages.append)
    assert any("resuming from the backup" in m and "epoch 2 of 2, after batch 2 of 3" in m for m in messages), messages
    assert resumed.epochs_run == 1  # only the rest of epoch 2: the epoch count did not restart
    assert log_epochs(out) == [0, 1]
    assert not (out / "backup").exists()  # removed after the complete run

    a, b = read_h5(whole.stage_dir / "last.weights.h5"), read_h5(out / "last.weights.h5")
    assert max_abs_difference(a, b) <= RESUME_ATOL
    assert a["optimizer/vars/0"] == b["optimizer/vars/0"] == 6  # optimizer steps: 2 epochs x 3
    assert max_abs_difference(_weights_of(whole.model_path), _weights_of(out / "model.keras")) <= RESUME_ATOL
    # The pre-flight disk estimate matches the file it estimates.
    n_weights = sum(int(np.prod(v.shape)) for k, v in a.items() if k.startswith("layers/"))
    estimate = checkpoints.weights_file_bytes(n_weights, n_weights, "adam")
    assert abs(estimate - (out / "last.weights.h5").stat().st_size) / estimate < 0.01


def test_learning_rate_of_a_resumed_epoch_continues_from_its_batch():
    schedule = dict(schedule="cosine", epochs=3, warmup_epochs=1)

    def rates(resume=None):
        opt = keras.optimizers.Adam(1.0)
        callback = cb.EpochLearningRate({"g": opt}, {"g": 1e-3}, steps_per_epoch=10, **schedule)
        if resume:
            callback.resume_at(*resume)
        callback.on_epoch_begin(1)
        out = []
        for batch in range(10 - (resume[1] if resume else 0)):
            callback.on_train_batch_begin(batch)
            out.append(float(opt.learning_rate.numpy()))
        return out

    uninterrupted = rates()
    resumed = rates(resume=(1, 4))  # Keras numbers the 6 remaining batches 0..5
    np.testing.assert_allclose(resumed, uninterrupted[4:], rtol=1e-6)
    assert resumed[0] == pytest.approx(1e-3 * cb.schedule_factor(1.4, **schedule), rel=1e-6)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_the_same_command_resumes_to_the_same_weights(tmp_path):
    """`kdepth fit` killed with SIGKILL mid-epoch, run again: same weights as a run never killed."""
    settings = ["train.epochs=2", "train.steps_per_epoch=4", "train.backup_every=1"]
    whole = subprocess.run(_fit_command(tmp_path, "whole", settings), env=_env(), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]

    command = _fit_command(tmp_path, "killed", settings)
    out = tmp_path / "runs" / "killed" / "stage1"
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        state = _wait_for_state(out / "backup" / "state.json", lambda s: s["epoch"] == 1 and s["batch"] >= 1, process)
        process.send_signal(signal.SIGKILL)  # with backups every batch, likely in the middle of the next one
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "model.keras").exists()

    again = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from the backup" in again.stdout, again.stdout[-3000:]
    print(f"killed after backup {state}; resumed: {again.stdout.split('resuming from the backup')[1].splitlines()[0]}")
    assert log_epochs(out) in ([0, 1], [0, 1, 1])  # epoch 2's row once (or twice if killed just after writing it)
    for name in ("last.weights.h5", "model.keras"):
        a = _weights_of(tmp_path / "runs" / "whole" / "stage1" / name)
        b = _weights_of(out / name)
        difference = max_abs_difference(a, b)
        print(f"{name}: max |uninterrupted - resumed| = {difference}")
        assert difference <= RESUME_ATOL


def _weights_of(path):
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            extracted = Path(path).with_suffix(".extracted.h5")
            extracted.write_bytes(archive.read("model.weights.h5"))
        return read_h5(extracted)
    return read_h5(path)


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _fit_command(tmp_path, name, settings):
    sets = [*TINY, f'train.run_dir="{tmp_path / "runs"}"', f"train.name={name}", *settings]
    return [sys.executable, "-m", "kdepth.cli", "fit", *[arg for s in sets for arg in ("--set", s)]]


def _wait_for_state(path, condition, process, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"kdepth fit ended (code {process.returncode}) before the backup: {process.stderr.read()[-3000:]}")
        try:
            state = json.loads(path.read_text())
            if condition(state):
                return state
        except (OSError, ValueError):
            pass  # not there yet (it is replaced atomically, so never half-written)
        time.sleep(0.02)
    pytest.fail(f"no backup matching the condition in {path} after {timeout} s")


def test_ctrl_c_saves_a_backup_and_says_how_to_resume(tmp_path):
    command = _fit_command(tmp_path, "interrupted", ["train.epochs=3", "train.steps_per_epoch=50", "train.backup_every=3"])
    out = tmp_path / "runs" / "interrupted" / "stage1"
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_state(out / "backup" / "state.json", lambda s: s["batch"] == 3, process)  # training runs
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "SIGINT received: stopping after this batch" in stdout
    state = json.loads((out / "backup" / "state.json").read_text())
    assert state["epoch"] == 0 and 3 <= state["batch"] < 50
    assert f"interrupted by SIGINT: training state saved after epoch 1, batch {state['batch']} in {out / 'backup'}" in stderr
    assert f"Resume with:\n  kdepth {shlex.join(command[3:])}" in stderr  # command[3] is "fit"
    assert (out / "backup" / state["weights"]).is_file() and not (out / "model.keras").exists()


def test_sigterm_and_sigint_become_a_request_answered_at_the_next_batch_end():
    messages = []
    previous = signal.getsignal(signal.SIGTERM)
    with cb.InterruptRequest(echo=messages.append) as request:
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler pre-empting the job
        time.sleep(0.1)
        assert request.requested and request.signal_name == "SIGTERM" and request.signum == signal.SIGTERM
        assert "SIGTERM received: stopping after this batch and saving a backup" in messages[0]
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C does not wait
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is previous


# --------------------------------------------------------------------------------- atomic writes


def test_a_writer_killed_mid_write_leaves_the_previous_file_loadable(tmp_path):
    """SIGKILL a process while it rewrites a weights file: the file on disk still loads."""
    target = tmp_path / "big.weights.h5"
    script = (
        "import keras, sys\n"
        "from kdepth.training import checkpoints\n"
        "m = keras.Sequential([keras.Input((4000,)), keras.layers.Dense(4000)])\n"  # 64 MB of weights
        "while True:\n"
        f"    checkpoints.save_weights(m, {str(target)!r})\n"
    )
    for _attempt in range(5):  # until the kill lands inside a write (a temporary file is left)
        process = subprocess.Popen([sys.executable, "-c", script], env=_env(), stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while not target.exists() or not list(tmp_path.glob(f"big.weights.h5{checkpoints.TMP_MARK}*")):
                assert process.poll() is None, process.stderr.read()[-2000:]
                assert time.monotonic() < deadline
                time.sleep(0.001)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        if list(tmp_path.glob(f"big.weights.h5{checkpoints.TMP_MARK}*")):
            break
    leftovers = list(tmp_path.glob(f"big.weights.h5{checkpoints.TMP_MARK}*"))
    assert leftovers, "no kill landed inside a write in 5 attempts"
    model = keras.Sequential([keras.Input((4000,)), keras.layers.Dense(4000)])
    checkpoints.load_weights(model, target)  # complete, not truncated
    checkpoints.save_weights(model, target)  # the next save clears the stray temporary file
    assert not list(tmp_path.glob(f"big.weights.h5{checkpoints.TMP_MARK}*"))


def test_a_failed_save_keeps_the_old_file_and_says_why(tmp_path, monkeypatch):
    model = small_model()
    path = tmp_path / "last.weights.h5"
    checkpoints.save_weights(model, path)
    before = read_h5(path)

    def full_disk(self, filepath, **kwargs):
        Path(filepath).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # half a file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Sequential, "save_weights", full_disk)
    with pytest.raises(KdepthError, match=r"could not write .*last.weights.h5: No space left on device.*unchanged.*resume"):
        checkpoints.save_weights(model, path)
    assert max_abs_difference(before, read_h5(path)) == 0 and list(tmp_path.iterdir()) == [path]


# ----------------------------------------------------------------------- truncated and foreign files


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    model = small_model()
    checkpoints.save_model(model, folder / "model.keras")
    checkpoints.save_weights(model, folder / "last.weights.h5")
    return folder


def _truncated(source, folder, name=None):
    data = source.read_bytes()
    path = folder / (name or source.name)
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_model_file_is_named_and_called_truncated(saved_files, tmp_path):
    path = _truncated(saved_files / "model.keras", tmp_path)
    with pytest.raises(KdepthError) as error:
        load_network_file(path)
    message = str(error.value)
    assert f"{path}: cannot be loaded as a kdepth model; it is truncated or damaged" in message
    assert "train it again" in message


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"not a model at all", "is not a .keras model archive"),
        (b"", "is empty (0 bytes)"),
        ("zip", "is a zip archive but not a Keras model"),
    ],
)
def test_a_foreign_model_file_says_so(tmp_path, content, expected):
    path = tmp_path / "model.keras"
    if content == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    else:
        path.write_bytes(content)
    with pytest.raises(KdepthError, match=re.escape(expected)) as error:
        load_network_file(path)
    assert str(path) in str(error.value)


def test_truncated_and_foreign_weights_files_say_so(saved_files, tmp_path):
    model = small_model()
    truncated = _truncated(saved_files / "last.weights.h5", tmp_path)
    with pytest.raises(KdepthError, match=r"last.weights.h5: cannot be loaded as a weights file; it is truncated .*cut off while written"):
        checkpoints.load_weights(model, truncated)
    text = tmp_path / "text.weights.h5"
    text.write_text("weights? no")
    with pytest.raises(KdepthError, match="is not an HDF5 weights file"):
        checkpoints.load_weights(model, text)
    other = tmp_path / "other.weights.h5"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(other)
    with pytest.raises(KdepthError, match="well-formed file but does not hold a model matching this one"):
        checkpoints.load_weights(model, other)


def _backup_of(model, directory, steps=4):
    backup = cb.Backup(directory, steps_per_epoch=steps, batch_size=2)
    backup.set_model(model)
    backup.save(0, 2)
    backup.save(1, 0)
    return backup


def test_backup_keeps_one_complete_state_and_restores_it(tmp_path):
    model = small_model()
    model.layers[1].seed_generator.next()  # the dropout generator has moved on
    backup = _backup_of(model, tmp_path / "backup")
    files = sorted(p.name for p in (tmp_path / "backup").iterdir())
    assert files == ["state.json", "step-000000004.weights.h5"]
    fresh = small_model()
    fresh_backup = cb.Backup(tmp_path / "backup", steps_per_epoch=4, batch_size=2)
    assert fresh_backup.restore(fresh) == (1, 0)
    assert fresh._initial_epoch == 1
    for a, b in zip(model.weights + model.optimizer.variables, fresh.weights + fresh.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(model.layers[1].seed_generator.state.numpy(), fresh.layers[1].seed_generator.state.numpy())
    other = cb.Backup(tmp_path / "backup", steps_per_epoch=5, batch_size=2)
    with pytest.raises(KdepthError, match=r"made with steps_per_epoch=4 .*--set train.steps_per_epoch=4.*or delete"):
        other.restore(small_model())
    backup.clear()
    assert not (tmp_path / "backup").exists()


Corruption = namedtuple("Corruption", "name apply expected")
CORRUPTIONS = [
    Corruption("truncated weights", lambda d: _truncated(next(d.glob("step-*")), d), r"step-000000004.weights.h5: cannot be loaded as a kdepth backup; it is truncated"),
    Corruption("garbage state", lambda d: (d / "state.json").write_text("{epoch: 1"), r"state.json is not readable JSON"),
    Corruption("missing weights", lambda d: next(d.glob("step-*")).unlink(), r"names step-000000004.weights.h5, which is missing"),
    Corruption(
        "a Keras BackupAndRestore folder",
        lambda d: [p.unlink() for p in d.iterdir()] + [(d / "latest.weights.h5").write_bytes(b"x")],
        r"has latest.weights.h5 but no state.json",
    ),
]


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=[c.name for c in CORRUPTIONS])
def test_a_corrupt_backup_names_the_folder_and_the_fix(tmp_path, corruption):
    directory = tmp_path / "stage1" / "backup"
    _backup_of(small_model(), directory)
    corruption.apply(directory)
    with pytest.raises(KdepthError, match=corruption.expected) as error:
        cb.Backup(directory, steps_per_epoch=4, batch_size=2).restore(small_model())
    assert f"Delete {directory}" in str(error.value) or f"delete {directory}" in str(error.value)
    assert "start this stage over" in str(error.value)


# ----------------------------------------------------------------------------- pre-flight checks


def test_a_run_folder_that_cannot_be_written_fails_at_start(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the run folder should be")
    config = tiny_config(tmp_path, "x").replace(train__run_dir=str(blocker / "runs"))
    start = time.perf_counter()
    with pytest.raises(KdepthError, match=r"cannot write to the run folder .*a-file/runs/x/stage1.*Nothing was trained"):
        fit(config)
    assert time.perf_counter() - start < 10


def test_a_read_only_run_folder_fails_at_start(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o500)
    try:
        probe = runs / "probe"
        try:
            probe.write_text("x")
            probe.unlink()
            pytest.skip("this user (root) can write into a read-only folder; the test above covers unwritable paths")
        except PermissionError:
            pass
        result = CliRunner().invoke(main, ["fit", *[a for s in TINY for a in ("--set", s)], "--set", f'train.run_dir="{runs}"'])
    finally:
        runs.chmod(0o700)
    assert result.exit_code == 1
    assert "cannot write to the run folder" in result.output and "Permission denied" in result.output


def test_a_full_disk_fails_at_start_with_the_space_needed(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5 * 10**6, 5 * 10**6))
    config = tiny_config(tmp_path, "full")
    with pytest.raises(KdepthError, match=r"not enough free disk space .*5.0 MB free, but this run needs about \d\.\d GB") as error:
        fit(config)
    assert "3 weights files with optimizer state (backup, last, best) of 339 MB" in str(error.value)
    out = tmp_path / "runs" / "full" / "stage1"
    assert not (out / "log.csv").exists() and not (out / "backup").exists()


def test_space_needed_counts_files_already_there(tmp_path):
    (tmp_path / "backup").mkdir()
    assert checkpoints.run_space_needed(tmp_path, 100, 20, ["backup", "last", "best"]) == 3 * 100 + 20 + 100
    (tmp_path / "last.weights.h5").write_bytes(b"\0" * 100)
    (tmp_path / "backup" / "step-1.weights.h5").write_bytes(b"\0" * 100)
    assert checkpoints.run_space_needed(tmp_path, 100, 20, ["backup", "last", "best"]) == 100 + 20 + 100


# ------------------------------------------------------------------------------- non-finite loss


def _poison(monkeypatch, global_batch, field="images"):
    """Makes the first image (or depth map) of training batch number `global_batch` (0-based, over
    the whole run) NaN, as a badly decoded file would."""
    real = fit_module.dataset_from_config

    def poisoned(config, split, *, training, **kwargs):
        ds, source = real(config, split, training=training, **kwargs)
        if not training:
            return ds, source

        def maybe_nan(i, batch):
            images, target = batch
            bad = tf.equal(i, global_batch)
            shape = tf.shape(images)
            first = tf.reshape(tf.one_hot(0, shape[0] * shape[1]), [shape[0], shape[1], 1, 1, 1]) > 0
            if field == "depth":
                depth = tf.where(bad & first, float("nan"), target["depth"])
                return images, {"depth": depth, "mask": target["mask"]}
            return tf.where(bad & first, float("nan"), images), target

        return ds.enumerate().map(maybe_nan), source

    monkeypatch.setattr(fit_module, "dataset_from_config", poisoned)


def test_a_non_finite_loss_stops_training_names_the_term_and_keeps_the_last_good_backup(tmp_path, monkeypatch):
    """A NaN depth map in batch 4 of 4, which a loss term is made to let through.

    kdepth's losses treat a NaN depth as a hole and its network turns a NaN image into numbers
    in the forward pass (ReLU, clamped depth heads; only the gradients stay NaN, see the trainer
    tests), so a term is patched to pass the NaN on, as a term that overflows would.
    """
    _poison(monkeypatch, global_batch=3, field="depth")  # epoch 2, batch 2
    real_terms = DepthTrainer.compute_terms

    def leaky_terms(self, target, preds):
        terms, total = real_terms(self, target, preds)
        leak = tf.where(tf.reduce_any(tf.math.is_nan(target["depth"])), float("nan"), 0.0)
        terms["set"] += leak
        return terms, total + leak

    monkeypatch.setattr(DepthTrainer, "compute_terms", leaky_terms)

    config = tiny_config(tmp_path, "nanrun", "train.epochs=2", "train.steps_per_epoch=2", "train.backup_every=1")
    with pytest.raises(cb.NonFiniteLoss) as error:
        fit(config)
    message = str(error.value)
    assert "loss term 'set' became nan at epoch 2, batch 2 (also non-finite: loss)" in message
    assert "the update was not applied and the last good backup is kept" in message
    assert "learning rate too high" in message and "--on-nan skip-batch" in message
    backup = tmp_path / "runs" / "nanrun" / "stage1" / "backup"
    state = json.loads((backup / "state.json").read_text())
    assert (state["epoch"], state["batch"]) == (1, 1)  # the batch before the non-finite one
    assert all(np.all(np.isfinite(v)) for v in read_h5(backup / state["weights"]).values() if v.dtype.kind == "f")
    assert not (tmp_path / "runs" / "nanrun" / "stage1" / "model.keras").exists()


def _tiny_trainer(on_nan):
    network = DepthNetwork(input_size=(32, 32), scales=2, coarse_hidden=16)
    apply_stage(network, 1)
    trainer = DepthTrainer(network, flip_group=("identity", "lr"), mse_weights={"scale1": 0.5, "scale2": 1.0}, set_weight=1.5, on_nan=on_nan)
    config = load_config([], ["model.input_size=[32, 32]", "model.coarse_hidden=16"])
    trainer.compile(optimizer=build_optimizer(config, network, 1)[0])
    return trainer


def _one_batch(nan=False, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (2, 2, 32, 32, 3)).astype("float32")
    depth = rng.uniform(1, 5, (2, 2, 32, 32, 1)).astype("float32")
    if nan:
        images[1, 0, 7, 7, 1] = np.nan
    return tf.data.Dataset.from_tensors((images, {"depth": depth, "mask": np.ones_like(depth)}))


def test_skip_batch_leaves_weights_and_optimizer_untouched_by_a_nan_batch():
    trainer = _tiny_trainer("skip-batch")
    trainer.fit(_one_batch(), verbose=0)
    before = [v.numpy().copy() for v in trainer.weights + trainer.optimizer.variables]
    logs = trainer.fit(_one_batch(nan=True), verbose=0).history
    after = [v.numpy() for v in trainer.weights + trainer.optimizer.variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))  # weights, moments, iterations
    assert int(trainer.optimizer.iterations.numpy()) == 1
    assert logs["skipped_batches"] == [1.0] and np.isfinite(logs["loss"][0])  # metrics left out of the bad batch
    logs = trainer.fit(_one_batch(seed=1), verbose=0).history
    assert int(trainer.optimizer.iterations.numpy()) == 2 and logs["skipped_batches"] == [0.0]
    assert not np.array_equal(before[0], trainer.weights[0].numpy())
    assert all(np.all(np.isfinite(v.numpy())) for v in trainer.weights)


def test_stop_mode_never_applies_a_non_finite_update_and_the_guard_stops():
    trainer = _tiny_trainer("stop")
    trainer.fit(_one_batch(), verbose=0)
    before = [v.numpy().copy() for v in trainer.weights + trainer.optimizer.variables]
    logs = {k: v[0] for k, v in trainer.fit(_one_batch(nan=True), verbose=0).history.items()}
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, trainer.weights + trainer.optimizer.variables, strict=True))
    assert logs["skipped_batches"] == 1.0
    # Depending on where the NaN pixel falls, the loss is NaN or only the gradients are (max-pooling).
    with pytest.raises(cb.NonFiniteLoss, match=r"(became nan|gradients became non-finite) at epoch 1, batch 1"):
        cb.NonFiniteGuard(trainer.term_trackers).on_train_batch_end(0, logs)


def test_stop_mode_names_non_finite_gradients_behind_a_finite_loss():
    guard = cb.NonFiniteGuard(["mse_scale2"])
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(0, {"loss": 1.0, "mse_scale2": 1.0, "skipped_batches": 0.0})
    with pytest.raises(cb.NonFiniteLoss, match=r"gradients became non-finite at epoch 3, batch 2 while every loss term was finite"):
        guard.on_train_batch_end(1, {"loss": 1.0, "mse_scale2": 1.0, "skipped_batches": 1.0})


def test_skip_batch_gives_up_after_too_many_in_a_row():
    guard = cb.NonFiniteGuard(["mse_scale2"], on_nan="skip-batch", max_consecutive_skips=3)
    guard.on_epoch_begin(0)
    skipped = 0
    for batch, bad in enumerate([True, True, False, True, True]):  # a good batch ends a streak
        skipped += bad
        guard.on_train_batch_end(batch, {"loss": 1.0, "mse_scale2": 1.0, "skipped_batches": float(skipped)})
    assert guard.skipped_total == 4 and guard.streak == 2
    with pytest.raises(cb.NonFiniteLoss, match=r"3 batches in a row up to epoch 1, batch 6 .*stops after 3"):
        guard.on_train_batch_end(5, {"loss": 1.0, "mse_scale2": 1.0, "skipped_batches": float(skipped + 1)})
    assert cb.MAX_CONSECUTIVE_SKIPS == 10


def test_the_on_nan_option_reaches_the_config(monkeypatch):
    seen = {}

    def fake_fit(config, **kwargs):
        seen["on_nan"] = config.train.on_nan
        raise KdepthError("stop here")

    monkeypatch.setattr(fit_module, "fit", fake_fit)
    result = CliRunner().invoke(main, ["fit", "--on-nan", "skip-batch"])
    assert seen == {"on_nan": "skip-batch"} and result.exit_code == 1
    result = CliRunner().invoke(main, ["fit", "--on-nan", "ignore"])
    assert result.exit_code == 2 and "'ignore' is not one of 'stop', 'skip-batch'" in result.output


@pytest.mark.slow
def test_fit_on_nan_skip_batch_skips_and_finishes(tmp_path, monkeypatch):
    _poison(monkeypatch, global_batch=1)
    args = [a for s in TINY for a in ("--set", s)]
    args += ["--set", f'train.run_dir="{tmp_path / "runs"}"', "--set", "train.epochs=1", "--set", "train.steps_per_epoch=3"]
    result = CliRunner().invoke(main, ["fit", "--on-nan", "skip-batch", *args])
    assert result.exit_code == 0, result.output
    assert "skipped the update of 1 batches with a non-finite loss" in result.output
    out = tmp_path / "runs" / "quickstart" / "stage1"
    header, row = (out / "log.csv").read_text().splitlines()[:2]
    assert float(row.split(",")[header.split(",").index("skipped_batches")]) == 1.0
    assert all(np.all(np.isfinite(v)) for v in _weights_of(out / "model.keras").values())
