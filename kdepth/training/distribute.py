"""Training on several devices or machines with `tf.distribute`: strategy, chief and batch split.

Three strategies (`train.strategy`, `kdepth fit --strategy`):

    default      one device (TensorFlow's default strategy).
    mirrored     `tf.distribute.MirroredStrategy`: one replica per device of this machine
                 (`train.devices`, or every GPU; the CPU if there is none).
    multiworker  `tf.distribute.MultiWorkerMirroredStrategy`: one process per machine, each
                 with its GPUs, described by the TF_CONFIG environment variable.

How the pieces fit:

- The global batch (`train.batch_size` flip groups) is split along its first axis, B, by
  `strategy.experimental_distribute_dataset` (Keras `fit` calls it): each replica gets B/N whole
  flip groups of shape (B/N, G, H, W, 3), so a group never straddles replicas. B must be a
  multiple of the number of replicas (`check_global_batch`).
- Every loss term is a `keras.losses.Loss`, divided by the replica count under a strategy;
  the replicas' gradients are summed, which gives the gradient of the global-batch loss.
- Keras clips gradients (`clipnorm`) *before* that sum, on each replica's partial gradient.
  `all_reduce_and_clip` sums first and clips the global gradient, as on one device.
- Only the chief writes the run directory. Every other worker runs the same code but writes to
  `write_dir(out)` = `out/workertemp_<task id>` (its own backups, logs, checkpoints), removed
  after a clean finish; collective ops need every worker to take part in every save. On a
  restart each worker resumes from its own backup and `WorkersAgree` checks that all of them
  restored the same state before the first step.
"""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kdepth.config import choices
from kdepth.errors import ConfigError, KdepthError

STRATEGIES = choices("train", "strategy")
WORKER_TEMP_PREFIX = "workertemp_"

TF_CONFIG_EXAMPLE = (
    'on machine 1: export TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\'  (worker 0 is the chief); on machine 2 the same '
    'cluster with "index": 1'
)


@dataclasses.dataclass
class Distribution:
    """The strategy of a run and this process's place in it.

    Attributes:
        name: "default", "mirrored" or "multiworker".
        strategy: the `tf.distribute.Strategy`.
        is_chief: this process writes the run directory.
        task_type, task_id: from TF_CONFIG ("worker", 1); None and 0 on one machine.
        num_workers: processes taking part (1 on one machine).
    """

    name: str
    strategy: tf.distribute.Strategy
    is_chief: bool = True
    task_type: str | None = None
    task_id: int = 0
    num_workers: int = 1

    @property
    def replicas(self):
        """Replicas over all workers: the number of pieces a global batch is split into."""
        return self.strategy.num_replicas_in_sync

    def describe(self):
        """One line for the log: strategy, replicas and this process's role."""
        devices = ", ".join(self.strategy.extended.worker_devices)
        text = f"strategy {self.name}: {self.replicas} replica(s)"
        if self.name == "multiworker":
            role = "chief" if self.is_chief else "not the chief: outputs go to a temporary folder"
            text += f" over {self.num_workers} worker(s); this is {self.task_type} {self.task_id} ({role})"
        return f"{text}; local devices: {devices}"


def parse_tf_config(raw):
    """Validates a TF_CONFIG value and returns (cluster, task_type, task_index, is_chief).

    Accepts the MultiWorkerMirroredStrategy layout: a "worker" job (and optionally a one-task
    "chief" job) of "host:port" addresses, and a task naming one of them. The chief is the
    "chief" task if there is one, else worker 0 (TensorFlow's rule).

    Raises:
        ConfigError: naming what was received, what is wrong and an example.
    """

    def fail(reason):
        shown = "(not set)" if raw is None else repr(raw)
        raise ConfigError(
            f"--strategy multiworker needs the TF_CONFIG environment variable describing the cluster; "
            f"received TF_CONFIG={shown}: {reason}. Example for 2 workers: {TF_CONFIG_EXAMPLE}."
        )

    if raw is None or not raw.strip():
        fail("it is empty")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        fail(f"not valid JSON ({e})")
    if not isinstance(value, dict):
        fail("it must be a JSON object with keys 'cluster' and 'task'")
    cluster, task = value.get("cluster"), value.get("task")
    if not isinstance(cluster, dict) or not cluster:
        fail("'cluster' must be an object of jobs, e.g. {\"worker\": [\"host1:12345\", \"host2:12345\"]}")
    unknown = sorted(set(cluster) - {"worker", "chief"})
    if unknown:
        fail(f"jobs {unknown} are not used by MultiWorkerMirroredStrategy; allowed jobs: 'worker' and one 'chief'")
    if not isinstance(cluster.get("worker", []), list) or not cluster.get("worker") and "chief" not in cluster:
        fail("'cluster' needs a non-empty 'worker' list of \"host:port\" addresses")
    if "chief" in cluster and (not isinstance(cluster["chief"], list) or len(cluster["chief"]) != 1):
        fail("'chief' must list exactly one \"host:port\" address")
    for job, addresses in cluster.items():
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not isinstance(address, str) or not host or not port.isdigit():
                fail(f"{job} address {address!r} is not \"host:port\"")
    if not isinstance(task, dict):
        fail("'task' must be an object like {\"type\": \"worker\", \"index\": 0}")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        fail(f"task type {task_type!r} is not a job of the cluster {sorted(cluster)}")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task_type]):
        fail(f"task index {index!r} must be an integer from 0 to {len(cluster[task_type]) - 1} for job {task_type!r}")
    is_chief = task_type == "chief" or ("chief" not in cluster and index == 0)
    return cluster, task_type, index, is_chief


def _check_devices(devices):
    available = [d.name for d in tf.config.list_logical_devices()]
    short = {name.split("device:")[-1].upper(): name for name in available}
    resolved = []
    for device in devices:
        key = device.split("device:")[-1].lstrip("/").upper()
        if key not in short:
            raise ConfigError(
                f"train.devices has {device!r}, which this machine does not have; available devices: "
                f"{sorted(short)}. Use e.g. [\"GPU:0\", \"GPU:1\"], or [] for every GPU."
            )
        resolved.append(short[key])
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"train.devices lists a device twice: {list(devices)}; give each device once.")
    return resolved


def make_strategy(name, devices=()):
    """Creates the strategy for `train.strategy` and returns a `Distribution`.

    Call it before any other TensorFlow op runs: MultiWorkerMirroredStrategy must configure the
    collective ops at program start-up.

    Args:
        name: "default", "mirrored" or "multiworker".
        devices: mirrored only: device names such as ["GPU:0", "GPU:1"]; empty = every GPU, or
            the CPU if there is none.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"train.strategy received {name!r}; allowed: {list(STRATEGIES)}.")
    devices = list(devices or ())
    if devices and name != "mirrored":
        raise ConfigError(
            f"train.devices={devices} applies to --strategy mirrored only (received strategy {name!r}); "
            "multiworker uses every GPU of each worker, default uses one device. Set train.devices=[]."
        )
    if name == "default":
        return Distribution(name, tf.distribute.get_strategy())
    if name == "mirrored":
        return Distribution(name, tf.distribute.MirroredStrategy(_check_devices(devices) if devices else None))
    raw = os.environ.get("TF_CONFIG")
    cluster, task_type, index, is_chief = parse_tf_config(raw)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as e:
        raise KdepthError(
            f"could not start MultiWorkerMirroredStrategy with TF_CONFIG={raw!r} ({type(e).__name__}: {e}). "
            "It must be created before TensorFlow runs anything else in the process; run it through "
            "`kdepth fit --strategy multiworker`, one process per worker."
        ) from e
    num_workers = sum(len(v) for v in cluster.values())
    return Distribution(name, strategy, is_chief=is_chief, task_type=task_type, task_id=index, num_workers=num_workers)


def check_global_batch(batch_size, replicas):
    """Raises unless `batch_size` flip groups split evenly over `replicas` replicas."""
    if batch_size % replicas:
        lower = max(replicas, batch_size - batch_size % replicas)
        raise ConfigError(
            f"train.batch_size={batch_size} flip groups cannot be split evenly over {replicas} replicas; "
            f"train.batch_size is the global batch and each replica takes whole flip groups. Set "
            f"--set train.batch_size={lower} or {lower + replicas} (a multiple of {replicas})."
        )


def write_dir(out, dist):
    """Where this process writes the outputs of stage folder `out`: `out` itself on the chief,
    `out/workertemp_<task id>` on every other worker (see `remove_write_dir`)."""
    out = Path(out)
    return out if dist.is_chief else out / f"{WORKER_TEMP_PREFIX}{dist.task_id}"


def remove_write_dir(path, dist):
    """After a clean finish, deletes a non-chief worker's temporary folder (no-op on the chief)."""
    if not dist.is_chief and Path(path).name.startswith(WORKER_TEMP_PREFIX):
        shutil.rmtree(path, ignore_errors=True)


def shard_by_data(dataset, dist):
    """Multiworker: every worker reads the same seeded stream and keeps its replicas' share of
    each global batch (sharding by DATA), so the batches are those a single device would see.
    Sharding by FILE would give each worker different files and break that equivalence."""
    if dist.name != "multiworker":
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _inner_optimizers(optimizer):
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    return list(getattr(optimizer, "optimizers", None) or [optimizer])  # MultiOptimizer


def all_reduce_and_clip(grads, optimizer):
    """Under a multi-replica strategy, clips the *global* gradient like one device would.

    Keras optimizers clip (`clipnorm`, `clipvalue`) each replica's partial gradient and only
    then sum the replicas' gradients, so N replicas can step up to N times further than one
    device once clipping is active. This sums the gradients first, clips the sum with the
    optimizer's settings and hands each replica 1/N of it: the optimizer's own clip is then a
    no-op (the norm is at most clipnorm/N) and its sum over replicas gives back the clipped
    global gradient. It costs one more all-reduce per step, only when clipping is on.

    Call it in the replica context of `train_step`, between `tape.gradient` and
    `optimizer.apply`; it returns `grads` untouched on one replica or without clipping.
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    if replicas == 1:
        return grads
    optimizers = _inner_optimizers(optimizer)
    if any(getattr(o, "global_clipnorm", None) for o in optimizers):
        raise KdepthError(
            "global_clipnorm is not supported on several replicas (Keras would clip per replica and per "
            "optimizer group); use train.clipnorm (per-tensor clipping) instead."
        )
    settings = {(o.clipnorm or 0.0, o.clipvalue or 0.0) for o in optimizers}
    if settings == {(0.0, 0.0)}:
        return grads
    if len(settings) > 1:
        raise KdepthError(f"the parameter groups' optimizers clip differently {sorted(settings)}; give them one setting.")
    clipnorm, clipvalue = settings.pop()
    # Gradients are of the scaled loss (mixed_float16's loss scale); the clip acts on unscaled ones.
    scale = tf.cast(optimizer.scale_loss(tf.constant(1.0)), tf.float32)
    present = [i for i, g in enumerate(grads) if g is not None]
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
    out = list(grads)
    for i, g in zip(present, summed, strict=True):
        if clipnorm:
            g = tf.clip_by_norm(g, tf.cast(clipnorm * scale, g.dtype))
        else:
            limit = tf.cast(clipvalue * scale, g.dtype)
            g = tf.clip_by_value(g, -limit, limit)
        out[i] = g / tf.cast(replicas, g.dtype)
    return out


def logs_for_keras(results):
    """Makes a train/test step's scalar logs survive Keras's reduction over several workers.

    Keras 3.15 averages each log over the replicas of several workers with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on a scalar ("Invalid reduction
    dimension 0"). A (1,) tensor reduces to the same mean as a scalar. Elsewhere (one worker,
    mirrored, default) the logs are returned unchanged.
    """
    strategy = tf.distribute.get_strategy()
    # Keras's own test for that code path (keras/src/backend/tensorflow/trainer.py).
    several_workers = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()
    if not several_workers:
        return results
    return {name: tf.reshape(value, [1]) for name, value in results.items()}


class WorkersAgree(keras.callbacks.Callback):
    """Multiworker: before the first step, checks that every worker starts from the same state.

    Each worker restores its own backup; a crash between two workers' backups could leave them
    one backup apart, and they would then train different weights in lockstep without any error.
    This compares the optimizer's step count and a checksum of all weights across workers (one
    small all-gather) and stops with a message if they differ. Runs once the backup is restored.
    """

    def __init__(self, dist, stage_dir):
        super().__init__()
        self.dist = dist
        self.stage_dir = stage_dir

    def on_train_begin(self, logs=None):
        variables = [*self.model.weights, self.model.optimizer.iterations]
        checksum = sum(float(np.sum(np.asarray(v.numpy(), np.float64))) for v in variables)
        local = tf.constant([[float(self.model.optimizer.iterations.numpy()), checksum]], tf.float64)
        strategy = self.dist.strategy
        states = strategy.gather(strategy.run(lambda: tf.identity(local)), axis=0).numpy()  # a row per replica
        low, high = states.min(axis=0), states.max(axis=0)
        if not np.array_equal(high, low):
            raise KdepthError(
                f"the workers restored different training states (optimizer steps {int(low[0])} to {int(high[0])}, "
                f"weight checksums {low[1]:.6g} to {high[1]:.6g}): their backups are out of step, e.g. after a "
                f"crash during a backup. Delete {Path(self.stage_dir) / 'backup'} and every "
                f"{WORKER_TEMP_PREFIX}* folder there on every machine to restart the stage, then rerun."
            )
