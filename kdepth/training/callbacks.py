"""Callbacks for fitting: learning-rate schedule by epoch, guards, backups and TensorBoard images.

Resuming mid-epoch: `Backup` saves the weights, the optimizer state and the position (epoch,
batches done in it) every `save_every` batches and at each epoch end. On a restart `fit` restores
it, skips the batches already consumed in the (seeded) data stream, starts Keras at that epoch and
tells every callback with a `resume_at(epoch, batch)` method where the epoch really starts:
Keras numbers the batches of the resumed epoch from 0, so the learning rate, the backup counter
and the messages add the offset, and `ResumedEpoch` ends that epoch after its remaining batches.
"""

import contextlib
import json
import logging
import math
import shutil
import signal
import threading
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kdepth.errors import KdepthError
from kdepth.training import checkpoints
from kdepth.training.trainer import ON_NAN

log = logging.getLogger("kdepth.training")


class EpochPosition(keras.callbacks.Callback):
    """Base class: knows the current epoch and the batch within it, also when resumed mid-epoch.

    `resume_at(epoch, batch)` says that Keras's batch 0 of `epoch` is really batch `batch`
    (the first `batch` batches were trained before the restart).
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0
        self._resume_epoch, self._resume_batch = None, 0

    def resume_at(self, epoch, batch):
        self._resume_epoch, self._resume_batch = int(epoch), int(batch)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def batch_in_epoch(self, batch):
        """The real index in the epoch of Keras's batch `batch`."""
        return batch + (self._resume_batch if self._epoch == self._resume_epoch else 0)


def schedule_factor(epoch, *, schedule, epochs, decay_rate=0.1, decay_epochs=10, min_ratio=0.01, warmup_epochs=0):
    """Learning-rate multiplier at a (fractional) epoch.

    A pure function of the epoch, so a resumed run continues the schedule where it stopped.
    The poster multiplied the rate by 0.1 after every epoch, which stops learning after a few
    epochs; here decay is spread over the configured epochs. Warm-up ramps linearly from 10% to
    100% over `warmup_epochs` on top of the decay.
    """
    if schedule == "constant":
        factor = 1.0
    elif schedule == "step":
        factor = decay_rate ** math.floor(epoch / decay_epochs)
    elif schedule == "exponential":
        factor = decay_rate ** (epoch / decay_epochs)
    elif schedule == "cosine":
        progress = min(max(epoch / max(epochs, 1), 0.0), 1.0)
        factor = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"lr_schedule received {schedule!r}; allowed: constant, step, exponential, cosine.")
    if warmup_epochs > 0 and epoch < warmup_epochs:
        factor *= 0.1 + 0.9 * epoch / warmup_epochs
    return factor


class EpochLearningRate(EpochPosition):
    """Sets each parameter group's learning rate from `schedule_factor` before every batch.

    The fractional epoch is epoch + (batch in epoch) / steps_per_epoch, with the batch offset of
    an epoch resumed mid-way (`resume_at`), so a resumed run gets exactly the rates of an
    uninterrupted one.

    Args:
        optimizers: {group name: optimizer} (the sub-optimizers of a MultiOptimizer).
        base_rates: {group name: learning rate at factor 1}.
        steps_per_epoch: batches per epoch, for the fractional epoch of warm-up and decay.
        **schedule: keyword arguments of `schedule_factor`.
    """

    def __init__(self, optimizers, base_rates, steps_per_epoch, **schedule):
        super().__init__()
        self.optimizers = optimizers
        self.base_rates = base_rates
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.schedule = schedule

    def _set(self, epoch):
        factor = schedule_factor(epoch, **self.schedule)
        for group, optimizer in self.optimizers.items():
            optimizer.learning_rate.assign(self.base_rates[group] * factor)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._set(epoch + self.batch_in_epoch(0) / self.steps_per_epoch)

    def on_train_batch_begin(self, batch, logs=None):
        self._set(self._epoch + self.batch_in_epoch(batch) / self.steps_per_epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            for group, optimizer in self.optimizers.items():
                logs[f"lr_{group}"] = float(optimizer.learning_rate.numpy())


class NonFiniteLoss(KdepthError):
    """Training produced a non-finite loss term."""


NON_FINITE_CAUSES = (
    "learning rate too high (lower train.lr_* or raise train.warmup_epochs), "
    "a hole in the depth reaching a log (depth must be > 0 where the mask is 1), "
    "or a bad input file (run `kdepth data check`)"
)


# --on-nan skip-batch gives up after this many consecutive skipped batches. Skipped batches leave
# the weights unchanged, so a streak means different batches all fail on the same weights: the
# fault is in the weights (overflowing activations) or everywhere in the data, not one bad file.
# With a fraction p of bad files and batches of B samples, 10 bad batches in a row by chance has
# probability (1 - (1 - p)^B)^10, about 1e-11 for p = 1%, B = 8.
MAX_CONSECUTIVE_SKIPS = 10


class NonFiniteGuard(EpochPosition):
    """Stops training at a non-finite loss and names the term, or counts the batches skipped.

    With on_nan="stop", it raises at the first non-finite loss term. Unlike
    `keras.callbacks.TerminateOnNaN`, it raises instead of setting `stop_training`, so the
    backup is not deleted and the last good backup stays on disk (it must come before `Backup`
    in the callback list, so the bad batch is never backed up).

    With on_nan="skip-batch" the trainer skips the update of a batch whose loss or gradients are
    not finite and counts it in the `skipped_batches` metric; this guard follows that count and
    raises after `max_consecutive_skips` skipped batches in a row (see MAX_CONSECUTIVE_SKIPS).

    Args:
        terms: names of the loss terms in the logs.
        on_nan: "stop" or "skip-batch".
        max_consecutive_skips: skip-batch: how many skipped batches in a row stop training.
    """

    def __init__(self, terms, on_nan="stop", max_consecutive_skips=MAX_CONSECUTIVE_SKIPS):
        super().__init__()
        if on_nan not in ON_NAN:
            raise ValueError(f"on_nan received {on_nan!r}; allowed: {list(ON_NAN)}.")
        self.terms = list(terms)
        self.on_nan = on_nan
        self.max_consecutive_skips = int(max_consecutive_skips)
        self.skipped_total = 0
        self.streak = 0
        self._seen_skipped = 0.0
        self._last_batch = -1

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._seen_skipped, self._last_batch = 0.0, -1  # the trainer's metrics restart each epoch

    def _where(self, batch):
        return f"epoch {self._epoch + 1}, batch {self.batch_in_epoch(batch) + 1}"

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        steps, self._last_batch = batch - self._last_batch, batch  # > 1 with steps_per_execution
        new = 0
        if "skipped_batches" in logs:  # batches whose update the trainer skipped as non-finite
            skipped = float(logs["skipped_batches"])
            new, self._seen_skipped = round(skipped - self._seen_skipped), skipped
            self.skipped_total += new
        # The individual terms first, so the message names the culprit rather than their sum.
        bad = [(n, float(logs[n])) for n in [*self.terms, "loss"] if n in logs and not np.isfinite(float(logs[n]))]
        if self.on_nan == "stop" and bad:
            name, value = bad[0]
            others = f" (also non-finite: {', '.join(n for n, _ in bad[1:])})" if len(bad) > 1 else ""
            raise NonFiniteLoss(
                f"loss term {name!r} became {value} at {self._where(batch)}{others}; the update was not "
                f"applied and the last good backup is kept. Usual causes: {NON_FINITE_CAUSES}. {self._fix()}"
            )
        if self.on_nan == "stop" and new:
            raise NonFiniteLoss(
                f"the gradients became non-finite at {self._where(batch)} while every loss term was finite "
                "(e.g. a NaN pixel that max-pooling hides in the forward pass but not in the backward one); "
                f"the update was not applied and the last good backup is kept. Usual causes: {NON_FINITE_CAUSES}. "
                f"{self._fix()}"
            )
        if self.on_nan == "skip-batch":
            # Within one call of several steps only "all of them skipped" continues a streak.
            self.streak = self.streak + new if new and new >= steps else 0
            if self.streak >= self.max_consecutive_skips:
                raise NonFiniteLoss(
                    f"{self.streak} batches in a row up to {self._where(batch)} had a non-finite loss or "
                    f"gradient and were skipped (--on-nan skip-batch stops after {self.max_consecutive_skips}: "
                    "with the weights unchanged, different batches failing in a row means the weights or "
                    "the data as a whole are at fault, not one bad file). The last good backup is kept. "
                    f"Usual causes: {NON_FINITE_CAUSES}."
                )

    @staticmethod
    def _fix():
        return (
            "Fix the cause and run the same command again to resume from the backup, or pass "
            "--on-nan skip-batch (train.on_nan) to skip such batches."
        )


class StopWhenFitted(keras.callbacks.Callback):
    """Stops training once `monitor` reaches `target` (used by --overfit)."""

    def __init__(self, monitor, target):
        super().__init__()
        self.monitor, self.target = monitor, target

    def on_epoch_end(self, epoch, logs=None):
        if (logs or {}).get(self.monitor, -np.inf) >= self.target:
            self.model.stop_training = True


class CollapseGuard(keras.callbacks.Callback):
    """Warns when predictions become constant: the poster's collapse to all-zero depth.

    After each epoch it predicts a fixed batch of validation images and logs the standard
    deviation of predicted log depth as `pred_log_std` and the fraction of pixels predicted at
    most `ZERO_DEPTH` metres as `pred_zero_frac` (a "relu" head's dead zone); below `threshold`
    it says so, with the likely cause.
    """

    ZERO_DEPTH = 1e-3  # 1 mm: no depth a camera measures; a collapsed relu head sits at 1e-4

    def __init__(self, network, images, output, threshold=1e-3, echo=print):
        super().__init__()
        self.network = network
        self.images = images
        self.output = output
        self.threshold = threshold
        self.echo = echo
        self.collapsed_epochs = []

    def on_epoch_end(self, epoch, logs=None):
        pred = self.network(self.images, training=False)[self.output]
        pred = tf.cast(pred, tf.float32)
        std = float(tf.math.reduce_std(tf.math.log(pred)))
        if logs is not None:
            logs["pred_log_std"] = std
            logs["pred_zero_frac"] = float(tf.reduce_mean(tf.cast(pred <= self.ZERO_DEPTH, tf.float32)))
        if std < self.threshold:
            self.collapsed_epochs.append(epoch + 1)
            mean = float(tf.reduce_mean(pred))
            self.echo(
                f"\nwarning: predictions collapsed to a constant ({mean:.3g} m everywhere, log-depth std "
                f"{std:.2g} < {self.threshold}) after epoch {epoch + 1}. {self._kind(mean)}likely cause: "
                "learning rates too high for the dense layers (train.lr_coarse) or too few valid pixels. "
                "Lower the rates or check the data."
            )

    def _kind(self, mean):
        if mean <= self.ZERO_DEPTH:
            return "This is the seed project's all-zero collapse; "
        if mean >= 1e3:
            # A "relu" head's clamp passes no gradient, so a run stuck there stays; the log and
            # softplus guards pass it (straight-through), so such a run can still come back.
            mode = getattr(self.network.get_layer(self.output), "mode", "log")
            if mode == "relu":
                return "The predictions are at the heads' upper guard, where no gradient flows back; "
            return "The predictions are at the heads' upper guard (10 km), pushed there by steps too large; "
        return ""


class DepthImages(keras.callbacks.Callback):
    """Writes RGB, ground truth and each scale's prediction to TensorBoard after every epoch.

    Depth is colourised with one range per image (from its ground truth) so scales compare;
    holes are drawn in the colour map's hole colour.
    """

    def __init__(self, network, images, depths, logdir):
        super().__init__()
        self.network = network
        self.images = images
        self.depths = np.asarray(depths)
        self.writer = tf.summary.create_file_writer(str(logdir))

    def _colourise(self, depth, vmin, vmax):
        from kdepth.visualize import colorize_depth

        return colorize_depth(depth, vmin=vmin, vmax=vmax)

    def on_epoch_end(self, epoch, logs=None):
        preds = {k: np.asarray(v) for k, v in self.network(self.images, training=False).items()}
        size = self.depths.shape[1:3]
        panels = {"rgb": np.asarray(self.images).astype(np.uint8), "ground_truth": []}
        for name in preds:
            panels[name] = []
        for i, gt in enumerate(self.depths[..., 0]):
            valid = gt[gt > 0]
            vmin, vmax = (float(valid.min()), float(valid.max())) if valid.size else (0.5, 10.0)
            panels["ground_truth"].append(self._colourise(gt, vmin, vmax))
            for name, pred in preds.items():
                up = tf.image.resize(pred[i], size, method="nearest").numpy()[..., 0]
                panels[name].append(self._colourise(up, vmin, vmax))
        with self.writer.as_default(step=epoch):
            for name, value in panels.items():
                tf.summary.image(f"depth/{name}", np.asarray(value), max_outputs=len(self.depths))
        self.writer.flush()


# ----------------------------------------------------------------------------- backups and resume


BACKUP_FORMAT = "kdepth-backup"
BACKUP_STATE = "state.json"


class TrainingInterrupted(KdepthError):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM after saving a backup.

    Attributes:
        signal_name: "SIGINT" or "SIGTERM".
        exit_code: 128 + the signal number, the shell's convention (130 for Ctrl-C).
        backup_dir: where the backup is.
    """

    def __init__(self, message, *, signal_name, exit_code, backup_dir):
        super().__init__(message)
        self.signal_name, self.exit_code, self.backup_dir = signal_name, exit_code, Path(backup_dir)


class InterruptRequest:
    """Turns SIGINT (Ctrl-C) and SIGTERM into a request that `Backup` answers at the next batch end.

    A signal arriving inside a TensorFlow step would otherwise raise KeyboardInterrupt at an
    arbitrary point, possibly after the weights moved but before the callbacks counted the batch.
    Use as a context manager around `fit`; a second Ctrl-C quits at once (without a new backup).
    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, echo=print):
        self.echo = echo
        self.signal_name = None
        self.signum = None
        self._previous = {}

    @property
    def requested(self):
        return self.signal_name is not None

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.signum, self.signal_name = signum, signal.Signals(signum).name
        self.echo(
            f"\n{self.signal_name} received: stopping after this batch and saving a backup "
            "(press Ctrl-C again to quit at once without it)"
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                signum = getattr(signal, name)
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False


class ResumedEpoch(EpochPosition):
    """Ends an epoch resumed mid-way after its remaining batches. Put it first in the callback list.

    Keras runs `steps_per_epoch` batches in every epoch, also the first one after a restart.
    This sets `stop_training` after the resumed epoch's last real batch, so Keras leaves the
    batch loop, validates and calls `on_epoch_end` as usual, and clears the flag again in
    `on_epoch_end` (first in the list, before any callback that might legitimately stop) so
    the next epochs run.
    """

    def __init__(self, steps_per_epoch):
        super().__init__()
        self.steps_per_epoch = int(steps_per_epoch)
        self._ended_early = False

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch == self._resume_epoch and self._resume_batch and self.batch_in_epoch(batch) + 1 >= self.steps_per_epoch:
            self.model.stop_training = True
            self._ended_early = True

    def on_epoch_end(self, epoch, logs=None):
        if self._ended_early:
            self.model.stop_training = False
            self._ended_early = False


class Backup(EpochPosition):
    """Backs up the training state every `save_every` batches and at each epoch end; resumes from it.

    A backup is `directory/state.json` (epoch, batches done in it, the run's steps_per_epoch and
    batch size, the weights file's name) and `directory/step-<global batch>.weights.h5` (the
    trainer's weights and optimizer state, Keras `save_weights`). The weights are written first
    and atomically, then `state.json` atomically, then older weights files are deleted: a crash
    at any moment leaves a `state.json` naming a complete weights file. Keras's
    `BackupAndRestore` resumes at the start of the epoch (it ignores the batch it records) and
    writes in place; this one resumes at the batch.

    Put it last in the callback list: after `NonFiniteGuard`, so a bad batch is never backed up.
    It also answers an `InterruptRequest` (Ctrl-C): it saves at the batch end and raises
    `TrainingInterrupted`. It keeps the directory after the last epoch: `fit` deletes it (`clear`)
    once the stage's outputs are complete, so a crash while saving the model or computing the final
    metrics still resumes (at the end of training) instead of training the stage again.

    Args:
        directory: the backup folder (used only for this).
        steps_per_epoch: batches per epoch.
        save_every: also back up every N batches (0 = at epoch ends only).
        batch_size: recorded and checked on restore (it changes the data position).
        interrupt: an `InterruptRequest`, or None.
        echo: where messages go.
    """

    def __init__(self, directory, steps_per_epoch, *, save_every=0, batch_size=None, interrupt=None, echo=print):
        super().__init__()
        self.directory = Path(directory)
        self.steps_per_epoch = int(steps_per_epoch)
        self.save_every = int(save_every or 0)
        self.batch_size = batch_size
        self.interrupt = interrupt
        self.echo = echo
        self._since_save = 0  # batches trained since the last backup
        self._last_position_in_epoch = 0
        self._last_saved = None
        self.saves = 0

    # ------------------------------------------------------------------ reading
    def _corrupt(self, reason):
        return KdepthError(
            f"the backup in {self.directory} cannot be used: {reason}. Delete {self.directory} to start "
            "this stage over (the training since the last completed stage is lost), or put back a copy of it."
        )

    def read_state(self):
        """The saved state dict, or None if there is no backup. Raises KdepthError if it is unusable."""
        state_path = self.directory / BACKUP_STATE
        if not state_path.is_file():
            leftovers = [p for p in self.directory.glob("*") if checkpoints.TMP_MARK not in p.name] if self.directory.is_dir() else []
            if leftovers:
                raise self._corrupt(
                    f"it has {', '.join(sorted(p.name for p in leftovers))} but no {BACKUP_STATE} (not a kdepth "
                    "backup, e.g. one of Keras's BackupAndRestore, or a copy that is incomplete)"
                )
            return None
        try:
            state = json.loads(state_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._corrupt(f"{state_path.name} is not readable JSON ({e})") from e
        keys = ("epoch", "batch", "steps_per_epoch", "weights")
        if not isinstance(state, dict) or state.get("format") != BACKUP_FORMAT or any(k not in state for k in keys):
            raise self._corrupt(f"{state_path.name} is not a kdepth backup state (it needs format={BACKUP_FORMAT!r} and {list(keys)})")
        return state

    def restore(self, model):
        """Loads the backup into `model` (weights and optimizer) and returns (epoch, batch), or None.

        Also sets `model._initial_epoch`, as Keras's `BackupAndRestore` does, and calls
        `resume_at` on itself. Raises a `KdepthError` naming the backup and the fix if the
        backup is corrupt, truncated or from other settings.
        """
        state = self.read_state()
        if state is None:
            return None
        if state["steps_per_epoch"] != self.steps_per_epoch or (
            self.batch_size is not None and state.get("batch_size") not in (None, self.batch_size)
        ):
            raise KdepthError(
                f"the backup in {self.directory} was made with steps_per_epoch={state['steps_per_epoch']} and "
                f"batch_size={state.get('batch_size')}; this run has steps_per_epoch={self.steps_per_epoch} and "
                f"batch_size={self.batch_size}, which would change the data order. Resume with the settings of "
                f"the interrupted run (e.g. --set train.steps_per_epoch={state['steps_per_epoch']}), or delete "
                f"{self.directory} to start this stage over."
            )
        weights = self.directory / state["weights"]
        if not weights.is_file():
            raise self._corrupt(f"{BACKUP_STATE} names {state['weights']}, which is missing")
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # so the optimizer state loads too
        checkpoints.load_weights(
            model, weights, what="kdepth backup",
            fix=f"delete {self.directory} to start this stage over (the training since the last completed stage is lost)",
        )
        _set_rng_states(model, state.get("rng", []))
        epoch, batch = int(state["epoch"]), int(state["batch"])
        model._initial_epoch = epoch  # what keras.callbacks.BackupAndRestore sets (WorkersAgree reads it)
        self.resume_at(epoch, batch)
        self._last_saved = (epoch, batch)
        return epoch, batch

    # ------------------------------------------------------------------ writing
    def save(self, epoch, batch):
        """Backs up the model as it is after `batch` batches of epoch `epoch` (0-based epoch)."""
        if self._last_saved == (epoch, batch):
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"step-{epoch * self.steps_per_epoch + batch:09d}.weights.h5"
        checkpoints.save_weights(self.model, self.directory / name)
        state = {
            "format": BACKUP_FORMAT, "epoch": epoch, "batch": batch, "steps_per_epoch": self.steps_per_epoch,
            "batch_size": self.batch_size, "weights": name, "rng": _rng_states(self.model),
        }
        checkpoints.write_text(self.directory / BACKUP_STATE, json.dumps(state, indent=1))
        for old in self.directory.glob("step-*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)
        self._last_saved = (epoch, batch)
        self._since_save = 0
        self.saves += 1

    def _stop(self, epoch, batch):
        self.save(epoch, batch)
        where = f"epoch {epoch + 1}, batch {batch}" if batch else f"the end of epoch {epoch}"
        raise TrainingInterrupted(
            f"interrupted by {self.interrupt.signal_name}: training state saved after {where} in {self.directory}; "
            "run the same command again to resume from there",
            signal_name=self.interrupt.signal_name, exit_code=128 + int(self.interrupt.signum), backup_dir=self.directory,
        )

    def on_train_batch_end(self, batch, logs=None):
        done = self.batch_in_epoch(batch) + 1
        self._since_save += done - (self._last_position_in_epoch or 0)
        self._last_position_in_epoch = done
        if done >= self.steps_per_epoch:
            return  # the epoch-end backup follows, after validation
        if self.interrupt is not None and self.interrupt.requested:
            self._stop(self._epoch, done)
        if self.save_every and self._since_save >= self.save_every:
            self.save(self._epoch, done)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._last_position_in_epoch = self.batch_in_epoch(0)

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1, 0)
        if self.interrupt is not None and self.interrupt.requested:
            self._stop(epoch + 1, 0)

    def clear(self):
        """Deletes the backup (after a complete run)."""
        if self.directory.is_dir():
            shutil.rmtree(self.directory, ignore_errors=True)


def _rng_variables(model):
    """The states of the model's random seed generators (dropout): in `variables`, not in `weights`,
    so `save_weights` leaves them out, and a resumed run would draw its first dropout masks again."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights and "seed_generator" in v.path]


def _rng_states(model):
    return [[v.path, np.asarray(v.numpy()).tolist()] for v in _rng_variables(model)]


def _set_rng_states(model, states):
    variables = _rng_variables(model)
    # Matched by order: generator names get a counter (seed_generator_3) that depends on what the
    # process built before, not on the model.
    if [np.shape(value) for _, value in states] != [tuple(v.shape) for v in variables]:
        log.warning("backup: random generator states do not match this model; dropout masks will differ from an uninterrupted run")
        return
    for variable, (_, value) in zip(variables, states, strict=True):
        variable.assign(np.asarray(value, dtype=variable.dtype))


class AtomicCheckpoint(EpochPosition):
    """Saves the trainer's weights at each epoch end, atomically: last, or best by a monitored value.

    Replaces `keras.callbacks.ModelCheckpoint`, which writes in place. With `monitor`, the best
    value and its epoch are kept in PATH's sidecar `.json` (e.g. best.json), so a resumed run
    compares with the best of the epochs before the interruption instead of starting again.

    Args:
        path: a `.weights.h5` file.
        monitor: a log name (e.g. "val_delta1"), or None to save every epoch.
        mode: "max" or "min".
    """

    def __init__(self, path, monitor=None, mode="max"):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode received {mode!r}; allowed: 'max', 'min'.")
        self.path = Path(path)
        self.monitor, self.mode = monitor, mode
        self.best = None
        self.sidecar = self.path.with_name(self.path.name.removesuffix(".weights.h5") + ".json")

    def resume_at(self, epoch, batch):
        super().resume_at(epoch, batch)
        if self.monitor and self.sidecar.is_file():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                saved = json.loads(self.sidecar.read_text())
                if saved["monitor"] == self.monitor and saved["epoch"] <= epoch:
                    self.best = float(saved["value"])

    def _improved(self, value):
        if self.best is None or not np.isfinite(self.best):
            return np.isfinite(value)
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is None:
            checkpoints.save_weights(self.model, self.path)
            return
        value = (logs or {}).get(self.monitor)
        if value is None:
            log.warning("checkpoint %s: %r is not in the logs; nothing saved", self.path.name, self.monitor)
            return
        value = float(value)
        if self._improved(value):
            checkpoints.save_weights(self.model, self.path)
            self.best = value
            checkpoints.write_text(self.sidecar, json.dumps({"monitor": self.monitor, "value": value, "epoch": epoch + 1}))
