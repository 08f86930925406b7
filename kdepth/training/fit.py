"""`fit`: one training stage from a resolved config, as a plain function the CLI and tests call.

Stages (the poster's schedule, without its decay bug):
    1: scales 1 and 2 train; scale 3 is not built.
    2: scale 3 trains; scales 1 and 2 are frozen and start from stage 1.
    3: everything trains at `finetune_lr_scale` times the rates, starting from stage 2.

Outputs go to RUN_DIR/NAME/stage{N}/: config.toml, model.keras (the network), best and last
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

from kdepth.data.pipeline import dataset_from_config
from kdepth.data.sources import open_source
from kdepth.errors import DataError, KdepthError
from kdepth.metrics import training_metrics
from kdepth.models.network import (
    build_network,
    check_network_size,
    layer_groups,
    load_backbone_weights,
)
from kdepth.training import callbacks as cb
from kdepth.training import checkpoints, distribute
from kdepth.training.stage_guard import StageClaim
from kdepth.training.trainer import DepthTrainer

GROUPS = ("backbone", "coarse", "skip", "scale2", "scale3")
# Which parameter groups train in each stage.
STAGE_TRAINABLE = {
    1: {"backbone", "coarse", "skip", "scale2"},
    2: {"scale3"},
    3: set(GROUPS),
}
OVERFIT_MAX_EPOCHS, OVERFIT_STEPS, OVERFIT_TARGET = 60, 10, 0.99
MEAN_DEPTH_SAMPLES = 400  # training images the mean-depth baseline averages over
METRIC_NAMES = ("delta1", "delta2", "delta3", "abs_rel", "rmse")


@dataclasses.dataclass
class FitResult:
    """What a stage produced: paths and the final metrics on train, val and the baseline."""

    stage_dir: Path
    model_path: Path
    train: dict
    val: dict
    baseline: dict
    mean_depth: float
    epochs_run: int
    seconds: float
    collapsed_epochs: list

    def format(self):
        rows = [("train (no augmentation)", self.train), ("val", self.val), (f"val, mean-depth baseline ({self.mean_depth:.2f} m)", self.baseline)]
        width = max(len(r[0]) for r in rows) + 2
        lines = ["".ljust(width) + "".join(f"{m:>9}" for m in METRIC_NAMES)]
        for label, values in rows:
            lines.append(label.ljust(width) + "".join(f"{values[m]:9.3f}" for m in METRIC_NAMES))
        return "\n".join(lines)


def stage_dir(config, stage):
    return Path(config.train.run_dir) / config.train.name / f"stage{stage}"


def network_kwargs(config, scales):
    m = config.model
    return dict(
        input_size=tuple(m.input_size),
        scales=scales,
        skips=m.skips,
        output=m.output,
        coarse_hidden=m.coarse_hidden,
        dropout=m.dropout,
        conv_init=m.conv_init,
        depth_init=m.depth_init,
    )


def scales_for_stage(config, stage):
    """Scales to build: stage 1 never builds scale 3 (it would not train and costs time)."""
    if stage >= 2 and config.model.scales < 3:
        raise KdepthError(
            f"stage {stage} trains scale 3 but model.scales={config.model.scales}; "
            "set --set model.scales=3 or train only --stage 1."
        )
    return min(config.model.scales, 2) if stage == 1 else config.model.scales


def transfer_weights(source, target):
    """Copies weights layer by layer, matched by layer name and shape. Returns (copied, total)."""
    by_name = {layer.name: layer for layer in source.layers if layer.weights}
    copied = total = 0
    for layer in target.layers:
        if not layer.weights:
            continue
        total += 1
        src = by_name.get(layer.name)
        if src is None:
            continue
        values = src.get_weights()
        if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
            raise KdepthError(
                f"layer {layer.name!r}: saved weights have shapes {[v.shape for v in values]} but this "
                f"model needs {[tuple(w.shape) for w in layer.weights]}; the model settings (input size, "
                "skips, coarse_hidden) must match the run the weights come from."
            )
        layer.set_weights(values)
        copied += 1
    return copied, total


def resolve_init(config, stage):
    """The model file a stage starts from, or None for stage 1 without --init."""
    if config.train.init:
        path = Path(config.train.init)
        if path.is_dir():
            path = path / "model.keras"
        if not path.is_file():
            raise KdepthError(f"--init {config.train.init!r}: no model file there; pass a .keras file or a stage directory.")
        return path
    if stage == 1:
        return None
    previous = stage_dir(config, stage - 1) / "model.keras"
    if not previous.is_file():
        raise KdepthError(
            f"stage {stage} starts from stage {stage - 1}'s weights, but {previous} does not exist. "
            f"Run `kdepth fit --stage {stage - 1}` first with the same --config and train.name, or pass --init PATH."
        )
    return previous


def load_model_file(path):
    """Loads a kdepth network saved as .keras, with a clear message for a foreign or broken file."""
    import kdepth.models.network  # noqa: F401  (registers the custom layers)

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a wrong or truncated file
        # Names the file and says whether it is truncated, empty or another program's.
        raise checkpoints.explain_load_error(path, e, what="kdepth model") from e


def apply_stage(network, stage):
    """Sets `trainable` per parameter group for a stage; returns {group: (trainable, params)}."""
    summary = {}
    for group, layers in layer_groups(network).items():
        trainable = group in STAGE_TRAINABLE[stage]
        for layer in layers:
            layer.trainable = trainable
        params = sum(int(np.prod(w.shape)) for layer in layers for w in layer.weights)
        summary[group] = (trainable, params)
    return summary


def build_optimizer(config, network, stage):
    """One optimizer per parameter group (the poster's per-layer rates) in a MultiOptimizer."""
    t = config.train
    scale = t.finetune_lr_scale if stage == 3 else 1.0
    rates = {g: getattr(t, f"lr_{g}") * scale for g in GROUPS}
    group_of = {}
    for group, layers in layer_groups(network).items():
        for layer in layers:
            for w in layer.trainable_weights:
                group_of[id(w)] = group

    def make(group):
        kwargs = dict(learning_rate=rates[group], clipnorm=t.clipnorm or None)
        if t.optimizer == "sgd":
            opt = keras.optimizers.SGD(momentum=0.9, weight_decay=t.weight_decay or None, **kwargs)
        elif t.optimizer == "adamw":
            opt = keras.optimizers.AdamW(weight_decay=t.weight_decay, **kwargs)
        else:
            opt = keras.optimizers.Adam(weight_decay=t.weight_decay or None, **kwargs)
        if t.weight_decay:
            opt.exclude_from_weight_decay(var_names=["bias"])
        return opt

    active = sorted({g for g in group_of.values()})
    optimizers = {g: make(g) for g in active}
    multi = keras.optimizers.MultiOptimizer(lambda v: optimizers[group_of[id(v)]])
    if t.precision == "mixed_float16":
        multi = keras.optimizers.LossScaleOptimizer(multi)
    return multi, optimizers, {g: rates[g] for g in active}


@contextlib.contextmanager
def precision_policy(name):
    """Sets the global Keras dtype policy (float32, mixed_bfloat16, ...) inside the block only."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@dataclasses.dataclass
class TrainerParts:
    """What `build_trainer` made: the compiled trainer, its network and the optimizer pieces."""

    trainer: DepthTrainer
    network: keras.Model
    groups: dict  # {group: (trainable, params)}
    sub_optimizers: dict  # {group: optimizer}, for the learning-rate schedule
    rates: dict  # {group: base learning rate}
    load_message: str


def build_trainer(config, stage, *, init_path=None, jit_compile=None):
    """Builds and compiles the trainer for a stage: the one set-up `fit` and the benchmarks share.

    Builds the network for the stage's scales, loads `init_path` (matched by layer name) or the
    configured backbone weights, freezes per `STAGE_TRAINABLE`, wraps it in a `DepthTrainer` with
    the config's losses and compiles it with the per-group optimizer. Call it inside the dtype
    policy (`precision_policy`) and, when distributing, inside the strategy's scope.

    Args:
        config: a resolved config.
        stage: 1, 2 or 3.
        init_path: a .keras file to start from, or None for the backbone weights.
        jit_compile: overrides config.train.jit_compile.
    """
    t, loss = config.train, config.loss
    init = load_model_file(init_path) if init_path is not None else None  # a bad file fails before the build
    network = build_network(**network_kwargs(config, scales_for_stage(config, stage)), backbone_weights="none")
    if init is None:
        message = load_backbone_weights(network, config.model.backbone_weights)
    else:
        copied, total = transfer_weights(init, network)
        if copied == 0:
            names = [layer.name for layer in init.layers if layer.weights][:5]
            raise KdepthError(
                f"{init_path}: none of its layers {names} matches a layer of the kdepth network by name, so no weight "
                "would be loaded; it is not a kdepth model. Pass a model.keras written by `kdepth fit` (or its stage folder)."
            )
        message = f"loaded {copied} of {total} weighted layers from {init_path} (matched by layer name)"
    groups = apply_stage(network, stage)
    trainer = DepthTrainer(
        network,
        flip_group=config.data.flip_group,
        mse_weights={"scale1": loss.mse_scale1, "scale2": loss.mse_scale2, "scale3": loss.mse_scale3},
        space=loss.space,
        mse_root=loss.mse_root,
        set_weight=loss.set_weight,
        silog_weight=loss.silog_weight,
        silog_lambda=loss.silog_lambda,
        grad_weight=loss.grad_weight,
        on_nan=t.on_nan,
    )
    optimizer, sub_optimizers, rates = build_optimizer(config, network, stage)
    trainer.compile(
        optimizer=optimizer,
        steps_per_execution=t.steps_per_execution,
        jit_compile=t.jit_compile if jit_compile is None else jit_compile,
    )
    return TrainerParts(trainer, network, groups, sub_optimizers, rates, message)


def _metrics_on(network, dataset, steps, final_scale, constant=None):
    """delta1-3, AbsRel, RMSE over `steps` batches (all valid pixels pooled)."""
    metrics = training_metrics()
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
    depth of up to MEAN_DEPTH_SAMPLES training images everywhere.
    """
    d, batch = config.data, config.train.batch_size
    n_val = source.num_samples(val_split)
    steps = math.ceil(n_val / batch)
    eval_train, _ = dataset_from_config(config, d.train_split, training=False, source=source)
    eval_val, _ = dataset_from_config(config, val_split, training=False, source=source)
    mean_depth = mean_train_depth(eval_train, steps=math.ceil(MEAN_DEPTH_SAMPLES / batch))
    train = _metrics_on(network, eval_train, steps, final_scale)
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
    t = config.train
    if overfit:
        # Fit N images exactly: no augmentation or dropout-driven noise, one image per group.
        config = config.replace(
            data__jitter_brightness=0.0, data__jitter_contrast=0.0, data__jitter_saturation=0.0,
            data__flip_group=["identity"], model__dropout=0.0, train__lr_schedule="constant",
            train__warmup_epochs=0, train__batch_size=min(t.batch_size, overfit),
        )
        t = config.train
    # What the config alone says is wrong stops here, before a run folder is made: a network too
    # large to build, scales that do not fit the stage, a stage 2/3 without its previous stage.
    check_network_size(config.model.input_size, config.model.coarse_hidden)
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
    with claim, precision_policy(t.precision):
        keras.utils.set_random_seed(t.seed)
        try:
            result = _fit(config, stage, overfit, work, echo, dist, init_path)
        except tf.errors.OpError as e:
            # A bad file met in training, the first validation batch or the final metrics.
            data_error = _data_error(e)
            if data_error is None:
                raise
            raise data_error from e
    if work != out:
        distribute.remove_write_dir(work, dist)
        result = dataclasses.replace(result, stage_dir=out, model_path=out / "model.keras")
    return result


def _fit(config, stage, overfit, out, echo, dist, init_path):
    t, d = config.train, config.data
    start = time.perf_counter()
    source = open_source(d, config.model.input_size)
    n_train = _count(source, d.train_split, "training split")
    n_val = _count(source, d.val_split, "validation split")

    with dist.strategy.scope():  # model, optimizer and compile under the strategy
        parts = build_trainer(config, stage, init_path=init_path)
    echo(parts.load_message)
    if dist.name != "default":
        echo(dist.describe())
    trainer, network, groups = parts.trainer, parts.network, parts.groups
    sub_optimizers, rates = parts.sub_optimizers, parts.rates
    _check_space(out, config, trainer, network, keeps_checkpoints=not overfit)

    if overfit:
        if overfit > n_train:
            raise KdepthError(f"--overfit {overfit} needs that many training images; the split has {n_train}.")
        source = _FirstN(source, d.train_split, overfit)
        n_train = overfit
    batch_images = t.batch_size * len(d.flip_group)
    steps = t.steps_per_epoch or max(1, n_train // t.batch_size)
    val_steps = t.val_steps or max(1, math.ceil(n_val / t.batch_size))
    train_ds, _ = dataset_from_config(config, d.train_split, training=True, source=source, repeat=True)
    train_ds = distribute.shard_by_data(train_ds, dist)
    val_split = d.train_split if overfit else d.val_split
    # Validation sees the same flip groups as training, so val_loss and val_set compare with
    # their training values; the final figures below use the plain images.
    val_ds, _ = dataset_from_config(config, val_split, training=False, source=source, flip_group=d.flip_group)
    val_ds = distribute.shard_by_data(val_ds, dist)

    echo(_stage_summary(stage, groups, trainer, network, config, steps, batch_images, n_train, n_val))

    sample_images, sample_target = next(iter(val_ds.take(1)))
    trainer(sample_images[:1])  # BackupAndRestore needs a built model
    sample_images = sample_images[: max(t.tensorboard_images, 1), 0]
    sample_depths = (sample_target["depth"] * sample_target["mask"])[: max(t.tensorboard_images, 1), 0]
    collapse = cb.CollapseGuard(network, sample_images, trainer.final_scale, t.collapse_std, echo=echo)
    backup = cb.Backup(
        out / "backup", steps, save_every=t.backup_every, batch_size=t.batch_size, interrupt=cb.InterruptRequest(echo), echo=echo
    )
    nan_guard = cb.NonFiniteGuard(trainer.term_trackers, on_nan=t.on_nan)
    callbacks = [
        cb.ResumedEpoch(steps),  # first: ends an epoch resumed mid-way
        cb.EpochLearningRate(
            sub_optimizers, rates, steps, schedule=t.lr_schedule, epochs=t.epochs, decay_rate=t.lr_decay_rate,
            decay_epochs=t.lr_decay_epochs, min_ratio=t.lr_min_ratio, warmup_epochs=t.warmup_epochs,
        ),
        nan_guard,
        collapse,
        keras.callbacks.CSVLogger(str(out / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False, profile_batch=0),
        cb.AtomicCheckpoint(out / "last.weights.h5"),
        cb.AtomicCheckpoint(out / "best.weights.h5", monitor="val_delta1", mode="max"),
        backup,  # last: after NonFiniteGuard, so a non-finite batch is never backed up
    ]
    if t.tensorboard_images:
        callbacks.insert(4, cb.DepthImages(network, sample_images, sample_depths, out / "tensorboard" / "images"))
    epochs = t.epochs
    if overfit:
        # Until fitted: stop once the N images are predicted within 1.25x almost everywhere.
        # A pipeline check, not a run to resume: no per-epoch checkpoints or backups.
        epochs, steps = OVERFIT_MAX_EPOCHS, OVERFIT_STEPS
        callbacks = [c for c in callbacks if not isinstance(c, (cb.AtomicCheckpoint, cb.Backup, cb.ResumedEpoch))]
        callbacks.append(cb.StopWhenFitted("val_delta1", OVERFIT_TARGET))
    if dist.name == "multiworker":  # once the backup is restored: did every worker restore the same state?
        callbacks.append(distribute.WorkersAgree(dist, out if dist.is_chief else out.parent))

    # Ctrl-C / SIGTERM from here on: back up at the next batch end and stop cleanly.
    interrupt = backup.interrupt if backup in callbacks else contextlib.nullcontext()
    # A bad file met in here surfaces as a TF error; `fit` turns it into a DataError.
    with interrupt:
        initial_epoch = 0
        if backup in callbacks:
            initial_epoch, train_ds = _resume(backup, trainer, train_ds, callbacks, steps, epochs, dist, echo)
        history = trainer.fit(
            train_ds,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            validation_data=val_ds,
            validation_steps=val_steps,
            callbacks=callbacks,
            verbose=t.verbose,
            shuffle=False,  # the pipeline shuffles, seeded
        )
    if getattr(source, "skipped", None):
        echo(f"skipped {len(source.skipped)} bad samples (data.skip_bad_files=true); each is logged above.")
    if nan_guard.skipped_total:
        echo(f"skipped the update of {nan_guard.skipped_total} batches with a non-finite loss (--on-nan skip-batch); see skipped_batches in log.csv.")
    model_path = out / "model.keras"
    checkpoints.save_model(network, model_path)

    mean_depth, train_metrics, val_metrics, baseline = final_metrics(config, network, source, trainer.final_scale, val_split)
    result = FitResult(
        stage_dir=out, model_path=model_path, train=train_metrics, val=val_metrics, baseline=baseline,
        mean_depth=mean_depth, epochs_run=len(history.epoch), seconds=time.perf_counter() - start,
        collapsed_epochs=collapse.collapsed_epochs,
    )
    checkpoints.write_text(
        out / "summary.json",
        json.dumps(
            {
                "stage": stage, "overfit": overfit, "train": train_metrics, "val": val_metrics,
                "baseline": baseline, "mean_depth": mean_depth, "epochs": result.epochs_run,
                "seconds": round(result.seconds, 1), "collapsed_epochs": result.collapsed_epochs,
            },
            indent=2,
        )
    )
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


def _stage_summary(stage, groups, trainer, network, config, steps, batch_images, n_train, n_val):
    lines = [f"stage {stage}: {trainer.final_scale} is the output; outputs {list(network.output_names)}"]
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
