"""Callbacks for fitting: learning-rate schedule by epoch, guards, and TensorBoard images."""

import logging
import math

import keras
import numpy as np
import tensorflow as tf

from kdepth.errors import KdepthError

log = logging.getLogger("kdepth.training")


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


class EpochLearningRate(keras.callbacks.Callback):
    """Sets each parameter group's learning rate from `schedule_factor` before every batch.

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
        self._epoch = 0

    def _set(self, epoch):
        factor = schedule_factor(epoch, **self.schedule)
        for group, optimizer in self.optimizers.items():
            optimizer.learning_rate.assign(self.base_rates[group] * factor)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._set(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        self._set(self._epoch + batch / self.steps_per_epoch)

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


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss term and names it.

    Unlike `keras.callbacks.TerminateOnNaN`, it raises instead of setting `stop_training`, so
    `BackupAndRestore.on_train_end` does not run and the last good backup stays on disk.
    """

    def __init__(self, terms):
        super().__init__()
        self.terms = list(terms)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        # The individual terms first, so the message names the culprit rather than their sum.
        bad = [(n, float(logs[n])) for n in [*self.terms, "loss"] if n in logs and not np.isfinite(float(logs[n]))]
        if bad:
            name, value = bad[0]
            others = f" (also non-finite: {', '.join(n for n, _ in bad[1:])})" if len(bad) > 1 else ""
            raise NonFiniteLoss(
                f"loss term {name!r} became {value} at epoch {self._epoch + 1}, batch {batch + 1}{others}; "
                f"the last good backup is kept. Usual causes: {NON_FINITE_CAUSES}."
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
    deviation of predicted log depth as `pred_log_std`; below `threshold` it says so, with the
    likely cause.
    """

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
        std = float(tf.math.reduce_std(tf.math.log(tf.cast(pred, tf.float32))))
        if logs is not None:
            logs["pred_log_std"] = std
        if std < self.threshold:
            self.collapsed_epochs.append(epoch + 1)
            mean = float(tf.reduce_mean(pred))
            self.echo(
                f"\nwarning: predictions collapsed to a constant ({mean:.3g} m everywhere, log-depth std "
                f"{std:.2g} < {self.threshold}) after epoch {epoch + 1}. This is the seed project's "
                "all-zero collapse; likely cause: learning rates too high for the dense layers "
                "(train.lr_coarse) or too few valid pixels. Lower the rates or check the data."
            )


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
