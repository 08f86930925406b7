"""`fit`: one training stage from a resolved config, as a plain function the CLI and tests call.

The stages and the trainer set-up are in `kdepth.training.stages`. Outputs go to RUN_DIR/NAME/stage{N}/: config.toml, model.keras (the network), best and last
weights, backup/ (resume by running the same command again), log.csv, tensorboard/ and
summary.json with the final metrics beside the mean-depth baseline.
"""

import contextlib
import dataclasses
import json
import math
import re
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kdepth.allocator import pool_warning
from kdepth.data.pipeline import dataset_from_config, resolve_cache, steps_per_epoch
from kdepth.data.sources import open_source, resolve_splits
from kdepth.errors import DataError, KdepthError
from kdepth.metrics import logged_metrics
from kdepth.models import check_network_size, dtype_policy
from kdepth.paths import MODEL_FILE
from kdepth.training import callbacks as cb
from kdepth.training import checkpoints, distribute
from kdepth.training.precision import cpu_flags, slow_precision_warning
from kdepth.training.stage_guard import StageClaim
from kdepth.training.stages import build_trainer, scales_for_stage

OVERFIT_MAX_EPOCHS, OVERFIT_STEPS, OVERFIT_TARGET = 60, 10, 0.99
MEAN_DEPTH_SAMPLES = 400  # training images the mean-depth baseline averages over
METRIC_NAMES = ("delta1", "delta2", "delta3", "abs_rel", "rmse")


@dataclasses.dataclass
class FitResult:
    """What a stage produced: paths and the final metrics on train, val and the baseline."""

    stage_dir: Path
    model_path: Path
    train: dict
    val: dict | None  # None when the data has no validation split
    baseline: dict
    mean_depth: float
    epochs_run: int
    seconds: float
    collapsed_epochs: list

    def format(self):
        held_out = "val" if self.val is not None else "train"
        rows = [("train (no augmentation)", self.train), ("val", self.val)][: 2 if self.val is not None else 1]
        rows.append((f"{held_out}, mean-depth baseline ({self.mean_depth:.2f} m)", self.baseline))
        width = max(len(r[0]) for r in rows) + 2
        lines = ["".ljust(width) + "".join(f"{m:>9}" for m in METRIC_NAMES)]
        for label, values in rows:
            lines.append(label.ljust(width) + "".join(f"{values[m]:9.3f}" for m in METRIC_NAMES))
        return "\n".join(lines)


def stage_dir(config, stage):
    return Path(config.train.run_dir) / config.train.name / f"stage{stage}"


def resolve_init(config, stage):
    """The model file a stage starts from, or None for stage 1 without --init."""
    if config.train.init:
        path = Path(config.train.init)
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.is_file():
            raise KdepthError(f"--init {config.train.init!r}: no model file there; pass a .keras file or a stage directory.")
        return path
    if stage == 1:
        return None
    previous = stage_dir(config, stage - 1) / MODEL_FILE
    if not previous.is_file():
        raise KdepthError(
            f"stage {stage} starts from stage {stage - 1}'s weights, but {previous} does not exist. "
            f"Run `kdepth fit --stage {stage - 1}` first with the same --config and train.name, or pass --init PATH."
        )
    return previous


def _metrics_on(network, dataset, steps, final_scale, constant=None):
    """delta1-3, AbsRel, RMSE, edge_delta1 over `steps` batches (all valid pixels pooled)."""
    metrics = logged_metrics()
    for images, target in dataset.take(steps):
        gt = tf.reshape(target["depth"] * target["mask"], [-1, *target["depth"].shape[2:]])
        if constant is None:
            x = tf.reshape(images, [-1, *images.shape[2:]])
            pred = network(x, training=False)[final_scale]
            pred = tf.image.resize(pred, tf.shape(gt)[1:3], method="bilinear")
        else:
            pred = tf.fill(tf.shape(gt), tf.constant(constant, tf.float32))
        for m in metrics:
            m.update_state(gt, pred)
    return {m.name: float(m.result()) for m in metrics}


def final_metrics(config, network, source, final_scale, val_split):
    """The end-of-stage figures: (mean depth, train, val, mean-depth baseline on val).

    Without augmentation, on the whole validation split and on as many training images, so runs
    with different batch sizes or val_steps compare. The baseline predicts the mean ground-truth
    depth of up to MEAN_DEPTH_SAMPLES training images everywhere. Without a validation split
    (`val_split` None) val is None and the baseline is measured on up to MEAN_DEPTH_SAMPLES
    training images.
    """
    d, batch = config.data, config.train.batch_size
    n = source.num_samples(val_split) if val_split else min(source.num_samples(d.train_split), MEAN_DEPTH_SAMPLES)
    steps = math.ceil(n / batch)
    eval_train, _ = dataset_from_config(config, d.train_split, training=False, source=source)
    mean_depth = mean_train_depth(eval_train, steps=math.ceil(MEAN_DEPTH_SAMPLES / batch))
    train = _metrics_on(network, eval_train, steps, final_scale)
    if not val_split:
        return mean_depth, train, None, _metrics_on(network, eval_train, steps, final_scale, constant=mean_depth)
    eval_val, _ = dataset_from_config(config, val_split, training=False, source=source)
    val = _metrics_on(network, eval_val, steps, final_scale)
    baseline = _metrics_on(network, eval_val, steps, final_scale, constant=mean_depth)
    return mean_depth, train, val, baseline


def mean_train_depth(dataset, steps):
    """Mean ground-truth depth (metres) over valid pixels of up to `steps` training batches."""
    total = count = 0.0
    for _, target in dataset.take(steps):
        total += float(tf.reduce_sum(target["depth"] * target["mask"]))
        count += float(tf.reduce_sum(target["mask"]))
    if count == 0:
        raise KdepthError("the training split has no valid depth pixel; run `kdepth data check`.")
    return total / count


def _count(source, split, what):
    try:
        return source.num_samples(split)
    except KdepthError as e:
        raise KdepthError(f"{what}: {e}") from e


def _overfit_config(config, overfit):
    """Fit N images exactly: no augmentation or dropout-driven noise, one image per group."""
    return config.replace(
        data__jitter_brightness=0.0, data__jitter_contrast=0.0, data__jitter_saturation=0.0,
        data__flip_group=["identity"], model__dropout=0.0, train__lr_schedule="constant",
        train__warmup_epochs=0, train__batch_size=min(config.train.batch_size, overfit),
    )


def fit(config, *, stage=None, overfit=0, overwrite=False, echo=print):
    """Trains one stage as the config says and returns a `FitResult`.

    Args:
        config: a resolved `kdepth.config.Config`.
        stage: overrides config.train.stage.
        overfit: if > 0, train on the first `overfit` training images only, without
            augmentation, until they are fitted: the poster's pipeline check.
        overwrite: replace a finished stage in the stage folder (else a `StageFinished` error).
        echo: where progress messages go.
    """
    stage = stage or config.train.stage
    config = config.replace(train__stage=stage)
    if overfit:
        config = _overfit_config(config, overfit)
    t = config.train
    # What the config alone says is wrong stops here, before a run folder is made: a network too
    # large to build, scales that do not fit the stage, a stage 2/3 without its previous stage.
    check_network_size(config.model.input_size, config.model.coarse_hidden, config.model.backbone, config.model.coarse)
    scales_for_stage(config, stage)
    init_path = resolve_init(config, stage)
    # First, before any TensorFlow op: MultiWorkerMirroredStrategy sets up collectives at start-up.
    dist = distribute.make_strategy(t.strategy, t.devices)
    distribute.check_global_batch(t.batch_size, dist.replicas)
    out = stage_dir(config, stage)
    if overfit:
        out = out.parent / f"overfit{overfit}"
    # Only the chief writes `out`; the other workers write a temporary folder inside it.
    work = distribute.write_dir(out, dist)
    # One writer, a finished stage kept unless overwrite, a resume with the same settings; config.toml.
    claim = StageClaim(out, work, config, stage, is_chief=dist.is_chief, overwrite=overwrite, final=not overfit, echo=echo)
    with claim, dtype_policy(t.precision):
        keras.utils.set_random_seed(t.seed)
        try:
            result = _fit(_Stage(config, stage, overfit, work, echo, dist, init_path))
        except tf.errors.OpError as e:
            # A bad file met in training, the first validation batch or the final metrics.
            data_error = _data_error(e)
            if data_error is None:
                raise
            raise data_error from e
    if work != out:
        distribute.remove_write_dir(work, dist)
        result = dataclasses.replace(result, stage_dir=out, model_path=out / MODEL_FILE)
    return result


@dataclasses.dataclass
class _Stage:
    """What one stage's steps share: the settings, then what each step adds."""

    config: object
    stage: int
    overfit: int
    out: Path
    echo: object
    dist: object
    init_path: Path | None
    start: float = dataclasses.field(default_factory=time.perf_counter)
    source: object = None
    n_train: int = 0
    n_val: int = 0
    parts: object = None
    steps: int = 0
    epochs: int = 0
    val_split: str = ""
    train_ds: object = None
    val_ds: object = None  # None without a validation split
    sample_ds: object = None  # flip groups the image and collapse callbacks draw


def _fit(run):
    """One stage in named steps: data, trainer, datasets, callbacks, training, results."""
    _open_data(run)
    _build(run)
    _datasets(run)
    callbacks, guards = _callbacks(run)
    history = _train(run, callbacks, guards["backup"])
    _report_skips(run, guards["nan"], history)
    return _finish(run, history, guards["collapse"])


def _open_data(run):
    """Opens the source and settles the splits (a one-split source trains on it, maybe unvalidated)."""
    d = run.config.data
    run.source = open_source(d, run.config.model.input_size)
    train, val, note = resolve_splits(run.source, d.train_split, d.val_split)
    if note:
        run.echo(note)
    run.config = run.config.replace(data__train_split=train)
    run.n_train = _count(run.source, train, "training split")
    run.n_val = _count(run.source, val, "validation split") if val else 0
    run.val_split = val


def _build(run):
    warning = slow_precision_warning(run.config.train.precision, bool(tf.config.list_physical_devices("GPU")), cpu_flags())
    if warning:
        run.echo(warning)
    pool = pool_warning() if run.config.train.release_memory else None
    if pool:
        run.echo(pool)
    with run.dist.strategy.scope():  # model, optimizer and compile under the strategy
        run.parts = build_trainer(run.config, run.stage, init_path=run.init_path)
    run.echo(run.parts.load_message)
    if run.dist.name != "default":
        run.echo(run.dist.describe())
    keeps = not run.overfit and run.config.train.checkpoints
    _check_space(run.out, run.config, run.parts.trainer, run.parts.network, keeps_checkpoints=keeps)


def _datasets(run):
    """The training and validation datasets, and the epoch plan; echoes the stage summary."""
    config, t, d = run.config, run.config.train, run.config.data
    if run.overfit:
        if run.overfit > run.n_train:
            raise KdepthError(f"--overfit {run.overfit} needs that many training images; the split has {run.n_train}.")
        run.source = _FirstN(run.source, d.train_split, run.overfit)
        run.n_train = run.overfit
    run.steps = steps_per_epoch(t, run.n_train)
    run.epochs = t.epochs
    train_ds, _ = dataset_from_config(config, d.train_split, training=True, source=run.source, repeat=True)
    run.train_ds = distribute.shard_by_data(train_ds, run.dist)
    if run.overfit:
        run.val_split = d.train_split
    # Validation sees the same flip groups as training, so val_loss and val_set compare with
    # their training values; the final figures use the plain images.
    sample_split = run.val_split or d.train_split
    sample_ds, _ = dataset_from_config(config, sample_split, training=False, source=run.source, flip_group=d.flip_group)
    run.sample_ds = distribute.shard_by_data(sample_ds, run.dist)
    run.val_ds = run.sample_ds if run.val_split else None
    batch_images = t.batch_size * len(d.flip_group)
    run.echo(_stage_summary(run.stage, run.parts, config, run.steps, batch_images, run.n_train, run.n_val))
    run.echo(resolve_cache(config, run.source, d.train_split, training=True)[1])


def _callbacks(run):
    """The stage's callbacks, in the order they must run; returns (list, {name: callback})."""
    t, trainer, network, out = run.config.train, run.parts.trainer, run.parts.network, run.out
    sample_images, sample_target = next(iter(run.sample_ds.take(1)))
    trainer(sample_images[:1])  # BackupAndRestore needs a built model
    n = max(t.tensorboard_images, 1)
    images, depths = sample_images[:n, 0], (sample_target["depth"] * sample_target["mask"])[:n, 0]
    guards = {
        "collapse": cb.CollapseGuard(network, images, trainer.final_scale, t.collapse_std, echo=run.echo),
        "nan": cb.NonFiniteGuard(trainer.term_trackers, on_nan=t.on_nan),
        "backup": None,
    }
    schedule = cb.EpochLearningRate(
        run.parts.sub_optimizers, run.parts.rates, run.steps, schedule=t.lr_schedule, epochs=t.epochs,
        decay_rate=t.lr_decay_rate, decay_epochs=t.lr_decay_epochs, min_ratio=t.lr_min_ratio, warmup_epochs=t.warmup_epochs,
    )
    callbacks = [schedule, guards["nan"], guards["collapse"]]
    if t.tensorboard_images:
        callbacks.append(cb.DepthImages(network, images, depths, out / "tensorboard" / "images"))
    callbacks += [
        keras.callbacks.CSVLogger(str(out / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False, profile_batch=0),
    ]
    if run.overfit:
        # Until fitted: stop once the N images are predicted within 1.25x almost everywhere.
        # A pipeline check, not a run to resume: no per-epoch checkpoints or backups.
        run.epochs, run.steps = OVERFIT_MAX_EPOCHS, OVERFIT_STEPS
        callbacks.append(cb.StopWhenFitted("val_delta1", OVERFIT_TARGET))
    elif t.checkpoints:  # false for throwaway runs: no weights files (5x model.keras each) every epoch
        guards["backup"] = cb.Backup(
            out / "backup", run.steps, save_every=t.backup_every, batch_size=t.batch_size,
            interrupt=cb.InterruptRequest(run.echo), echo=run.echo,
        )
        checkpoints_ = [cb.AtomicCheckpoint(out / "last.weights.h5")]
        if run.val_ds is not None:  # "best" needs a validation figure
            checkpoints_.append(cb.AtomicCheckpoint(out / "best.weights.h5", monitor="val_delta1", mode="max"))
        # ResumedEpoch first: it ends an epoch resumed mid-way. The backup last: after
        # NonFiniteGuard, so a non-finite batch is never backed up.
        callbacks = [cb.ResumedEpoch(run.steps), *callbacks, *checkpoints_, guards["backup"]]
    if run.dist.name == "multiworker":  # once the backup is restored: did every worker restore the same state?
        callbacks.append(distribute.WorkersAgree(run.dist, out if run.dist.is_chief else out.parent))
    return callbacks, guards


def _train(run, callbacks, backup):
    """Resumes from the backup if there is one, then `trainer.fit`; returns its history."""
    t = run.config.train
    # Ctrl-C / SIGTERM from here on: back up at the next batch end and stop cleanly.
    interrupt = backup.interrupt if backup is not None else contextlib.nullcontext()
    # A bad file met in here surfaces as a TF error; `fit` turns it into a DataError.
    with interrupt:
        initial_epoch, train_ds = 0, run.train_ds
        if backup is not None:
            initial_epoch, train_ds = _resume(backup, run.parts.trainer, train_ds, callbacks, run.steps, run.epochs, run.dist, run.echo)
        val_steps = (t.val_steps or max(1, math.ceil(run.n_val / t.batch_size))) if run.val_ds is not None else None
        return run.parts.trainer.fit(
            train_ds,
            epochs=run.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=run.steps,
            validation_data=run.val_ds,
            validation_steps=val_steps,
            callbacks=callbacks,
            verbose=t.verbose,
            shuffle=False,  # the pipeline shuffles, seeded
        )


def _report_skips(run, nan_guard, history):
    if getattr(run.source, "skipped", None):
        run.echo(f"skipped {len(run.source.skipped)} bad samples (data.skip_bad_files=true); each is logged above.")
    if nan_guard.skipped_total:
        run.echo(
            f"skipped the update of {nan_guard.skipped_total} batches with a non-finite loss (--on-nan skip-batch); "
            "see skipped_batches in log.csv."
        )
    overflows = round(sum(history.history.get("loss_scale_skips", [])))
    if overflows:
        run.echo(
            f"mixed_float16: {overflows} steps overflowed in float16 and were skipped while the loss scale "
            "adapted; see loss_scale_skips in log.csv."
        )


def _finish(run, history, collapse):
    """Saves the network, measures the final figures and writes summary.json; returns the result."""
    network, final_scale = run.parts.network, run.parts.trainer.final_scale
    model_path = run.out / MODEL_FILE
    checkpoints.save_model(network, model_path)
    mean_depth, train, val, baseline = final_metrics(run.config, network, run.source, final_scale, run.val_split)
    result = FitResult(
        stage_dir=run.out, model_path=model_path, train=train, val=val, baseline=baseline,
        mean_depth=mean_depth, epochs_run=len(history.epoch), seconds=time.perf_counter() - run.start,
        collapsed_epochs=collapse.collapsed_epochs,
    )
    summary = {
        "stage": run.stage, "overfit": run.overfit, "train": train, "val": val,
        "baseline": baseline, "mean_depth": mean_depth, "epochs": result.epochs_run,
        "seconds": round(result.seconds, 1), "collapsed_epochs": result.collapsed_epochs,
    }
    checkpoints.write_text(run.out / "summary.json", json.dumps(summary, indent=2))
    return result


def _resume(backup, trainer, train_ds, callbacks, steps, epochs, dist, echo):
    """Restores the backup, if any: returns (initial epoch, training data from the next batch on)."""
    with dist.strategy.scope():
        resumed = backup.restore(trainer)
    if resumed is None:
        return 0, train_ds
    epoch, batch = resumed
    # The pipeline is seeded and Keras's iterator runs on across epochs: skipping the batches
    # already trained gives the data an uninterrupted run would see next.
    consumed = epoch * steps + batch
    for callback in callbacks:
        if isinstance(callback, cb.EpochPosition):
            callback.resume_at(epoch, batch)
    where = f"epoch {epoch + 1} of {epochs}, after batch {batch} of {steps}" if batch else f"the start of epoch {epoch + 1} of {epochs}"
    echo(f"resuming from the backup in {backup.directory}: {where} (skipping the {consumed} batches already trained)")
    return epoch, train_ds.skip(consumed)


def _check_space(out, config, trainer, network, keeps_checkpoints=True):
    """Fails before training if the disk cannot hold the checkpoints this stage will write."""
    n_weights = sum(int(np.prod(w.shape)) for w in trainer.weights)
    n_trainable = sum(int(np.prod(w.shape)) for w in trainer.trainable_weights)
    file_bytes = checkpoints.weights_file_bytes(n_weights, n_trainable, config.train.optimizer)
    model_bytes = checkpoints.BYTES_PER_VALUE * sum(int(np.prod(w.shape)) for w in network.weights)
    kept = ("backup", "last.weights.h5", "best.weights.h5") if keeps_checkpoints else ()
    needed = checkpoints.run_space_needed(out, file_bytes, model_bytes, kept)
    what = (
        f"{len(kept)} weights files with optimizer state (backup, last, best) of {file_bytes / 1e6:,.0f} MB, "
        f"model.keras of {model_bytes / 1e6:,.0f} MB and a temporary copy while writing"
    )
    checkpoints.check_free_space(out, needed, what=what)


def _data_error(error):
    """A bad file met inside tf.data surfaces as a TF error; give it back as a DataError."""
    match = re.search(r"DataError: (.+)", error.message)
    if not match:
        return None
    return DataError(
        "training data",
        f"{match.group(1).strip()} (set data.skip_bad_files=true to skip and count bad files; "
        "`kdepth data check` lists them all)",
    )


def _stage_summary(stage, parts, config, steps, batch_images, n_train, n_val):
    network, groups = parts.network, parts.groups
    lines = [f"stage {stage}: {network.final_scale} is the output; outputs {list(network.scale_names)}"]
    lines.append(f"{'group':<10}{'trains':>8}{'params':>14}")
    for group, (trainable, params) in groups.items():
        lines.append(f"{group:<10}{'yes' if trainable else 'frozen':>8}{params:>14,}")
    n_trainable = sum(p for tr, p in groups.values() if tr)
    n_total = sum(p for _, p in groups.values())
    lines.append(f"trainable {n_trainable:,} of {n_total:,} parameters")
    lines.append(
        f"data: {config.data.source} {config.data.root} - {n_train} train / {n_val} val samples; input "
        f"{config.model.input_size[0]}x{config.model.input_size[1]}, flip group {config.data.flip_group}, "
        f"{batch_images} images per step, {steps} steps per epoch, {config.train.epochs} epochs, "
        f"precision {config.train.precision}"
    )
    return "\n".join(lines)


class _FirstN:
    """A view of a source whose `split` holds only its first n samples (for --overfit)."""

    def __init__(self, source, split, n):
        self._source, self._split, self._n = source, split, n
        self.name = f"{source.name} (first {n} of {split})"

    def __getattr__(self, name):
        return getattr(self._source, name)

    def num_samples(self, split):
        return self._n if split == self._split else self._source.num_samples(split)

    def raw_dataset(self, split, *, shuffle, seed, skip_bad_files):
        ds = self._source.raw_dataset(split, shuffle=False, seed=seed, skip_bad_files=skip_bad_files)
        return ds.take(self._n) if split == self._split else ds
