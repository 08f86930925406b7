"""Distributed training: TF_CONFIG, the global batch split, one device vs two replicas, multiworker.

Logical devices must be configured before TensorFlow initialises its devices, so every test
that needs two replicas runs a script in a fresh Python process (the pytest process has long
initialised TensorFlow). Multiworker tests start one process per worker on localhost.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from conftest import TWO_CPUS

from kdepth.cli import main
from kdepth.errors import ConfigError
from kdepth.training import distribute

# One SGD step on 32x32 inputs moves the weights by up to ~1e-3; two replicas match one device
# to ~1e-10 (float32 sums in another order); a wrong loss scaling or per-replica clipping moves
# them by ~1e-4 or more.
WEIGHT_ATOL = 1e-6
SUBPROCESS_TIMEOUT = 240  # seconds; a hung collective fails the test instead of blocking CI

TINY = [
    "model.input_size=[32, 32]",
    "model.coarse_hidden=32",
    "model.dropout=0.0",  # dropout masks differ between one device and two replicas
    "data.synthetic_train=8",
    "data.synthetic_val=4",
    "data.synthetic_test=4",
    "data.shuffle_buffer=8",
    "train.verbose=0",
    "train.tensorboard_images=1",
    "train.warmup_epochs=0",
]

WORKER_PREAMBLE = """
import json, os, sys
import numpy as np
"""



def _run_script(script, env=None, timeout=SUBPROCESS_TIMEOUT):
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return _result(proc.stdout)


def _result(stdout):
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


# ------------------------------------------------------------------------------- TF_CONFIG


def _tf_config(cluster, task_type="worker", index=0):
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_tf_config_names_the_chief():
    workers = {"worker": ["host1:2222", "host2:2222"]}
    assert distribute.parse_tf_config(_tf_config(workers, index=0))[1:] == ("worker", 0, True)
    assert distribute.parse_tf_config(_tf_config(workers, index=1))[1:] == ("worker", 1, False)
    with_chief = {"chief": ["host0:2222"], **workers}
    assert distribute.parse_tf_config(_tf_config(with_chief, "chief", 0))[3] is True
    assert distribute.parse_tf_config(_tf_config(with_chief, "worker", 0))[3] is False


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, "(not set): it is empty"),
        ("{not json", "not valid JSON"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "'cluster' must be an object"),
        (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}), "jobs ['ps'] are not used"),
        (_tf_config({"worker": ["a:1", "b"]}), "worker address 'b' is not \"host:port\""),
        (json.dumps({"cluster": {"worker": ["a:1"]}}), "'task' must be an object"),
        (_tf_config({"worker": ["a:1", "b:1"]}, index=2), "task index 2 must be an integer from 0 to 1"),
        (_tf_config({"worker": ["a:1"]}, task_type="evaluator"), "task type 'evaluator' is not a job"),
    ],
)
def test_bad_tf_config_says_what_was_received_and_shows_an_example(raw, reason):
    with pytest.raises(ConfigError) as info:
        distribute.parse_tf_config(raw)
    message = str(info.value)
    assert reason in message and "received TF_CONFIG=" in message
    assert "Example for 2 workers" in message and '"task": {"type": "worker", "index": 0}' in message


def test_fit_multiworker_without_tf_config_exits_with_the_example(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    args = ["fit", "--strategy", "multiworker", "--set", f'train.run_dir="{tmp_path}"', *sum([["--set", s] for s in TINY], [])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "needs the TF_CONFIG environment variable" in result.output and "(not set)" in result.output
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing written before the check


def test_fit_rejects_an_unknown_strategy():
    result = CliRunner().invoke(main, ["fit", "--strategy", "horovod"])
    assert result.exit_code == 2 and "'default', 'mirrored', 'multiworker'" in result.output


# ------------------------------------------------------------------ batch split, devices, paths


def test_global_batch_must_split_into_whole_flip_groups():
    distribute.check_global_batch(8, 4)
    with pytest.raises(ConfigError, match=r"train.batch_size=3 flip groups cannot be split evenly over 2 replicas.*batch_size=2 or 4"):
        distribute.check_global_batch(3, 2)


def test_devices_are_checked_and_only_for_mirrored():
    with pytest.raises(ConfigError, match=r"'GPU:7', which this machine does not have; available devices: \['CPU:0'"):
        distribute.make_strategy("mirrored", ["GPU:7"])
    with pytest.raises(ConfigError, match="applies to --strategy mirrored only"):
        distribute.make_strategy("default", ["CPU:0"])
    dist = distribute.make_strategy("mirrored", ["CPU:0"])
    assert dist.replicas == 1 and dist.is_chief


def test_only_the_chief_writes_the_stage_folder(tmp_path):
    default = tf.distribute.get_strategy()
    chief = distribute.Distribution("multiworker", default, is_chief=True, task_type="worker", task_id=0, num_workers=2)
    worker = distribute.Distribution("multiworker", default, is_chief=False, task_type="worker", task_id=1, num_workers=2)
    assert distribute.write_dir(tmp_path, chief) == tmp_path
    temp = distribute.write_dir(tmp_path, worker)
    assert temp == tmp_path / "workertemp_1"
    (temp / "backup").mkdir(parents=True)
    distribute.remove_write_dir(tmp_path, worker)  # never the stage folder itself
    assert temp.is_dir()
    distribute.remove_write_dir(temp, chief)  # the chief removes nothing
    assert temp.is_dir()
    distribute.remove_write_dir(temp, worker)
    assert not temp.exists() and tmp_path.is_dir()


# -------------------------------------------------------------- one device vs two replicas

EQUIVALENCE_SCRIPT = (
    WORKER_PREAMBLE
    + TWO_CPUS
    + textwrap.dedent(
        """
        import keras
        from kdepth.config import load_config
        from kdepth.errors import ConfigError
        from kdepth.training import fit as fit_module, trainer as trainer_module
        from kdepth.training.fit import fit
        from kdepth.training.stages import build_trainer
        from kdepth.training.trainer import DepthTrainer

        TINY = json.loads(sys.argv[1])
        # The real set-up: set loss on, flip group of 2, clipnorm 1 (the default) and weight decay;
        # SGD because Adam's first step, lr * sign(g), hides a wrong gradient scale.
        config = load_config([], [*TINY, "train.batch_size=4", "train.optimizer=\\"sgd\\"", "loss.set_weight=0.75"])
        assert config.data.flip_group == ["identity", "lr"] and config.train.clipnorm == 1.0
        rng = np.random.default_rng(0)
        image = rng.uniform(0, 255, (4, 1, 32, 32, 3)).astype("float32")
        images = np.concatenate([image, image[:, :, :, ::-1]], axis=1)
        depth = rng.uniform(1, 5, (4, 1, 32, 32, 1)).astype("float32")
        depth = np.concatenate([depth, depth[:, :, :, ::-1]], axis=1)
        depth[:2, :, :6] = 0.0  # holes, on the first replica's groups only
        target = {"depth": depth, "mask": (depth > 0).astype("float32")}
        dataset = tf.data.Dataset.from_tensors((images, target))
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        out = {"replicas": mirrored.num_replicas_in_sync}

        # How tf.distribute splits a batch of flip groups: along B, whole groups per replica.
        element = next(iter(mirrored.experimental_distribute_dataset(dataset)))
        parts = [np.asarray(x) for x in mirrored.experimental_local_results(element[0])]
        out["split_shapes"] = [list(p.shape) for p in parts]
        out["split_is_halves"] = bool(np.array_equal(parts[0], images[:2]) and np.array_equal(parts[1], images[2:]))

        def one_step(strategy):
            keras.utils.set_random_seed(0)
            with strategy.scope():
                parts = build_trainer(config, 1)
            # The heads start at zero (a constant, flip-consistent depth, set loss 0): perturb them,
            # the same way in every run, so the set loss and its gradient take part.
            noise = np.random.default_rng(1)
            for name in ("scale1_dense2", "scale2_head"):
                for w in parts.network.get_layer(name).weights:
                    w.assign(w.numpy() + noise.normal(0, 0.01, w.shape).astype("float32"))
            before = [w.numpy() for w in parts.network.trainable_weights]
            history = parts.trainer.fit(dataset, epochs=1, verbose=0)
            after = [w.numpy() for w in parts.network.trainable_weights]
            return before, after, history.history

        def max_diff(a, b):
            return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))

        before, single, logs = one_step(tf.distribute.get_strategy())
        _, two, logs2 = one_step(mirrored)
        out["max_update"] = max_diff(single, before)
        out["diff"] = max_diff(single, two)
        out["loss"] = [logs["loss"][0], logs2["loss"][0]]
        out["set"] = [logs["set"][0], logs2["set"][0]]

        # The classic bug: a loss not divided by the replica count (as a hand-written
        # reduce_mean would be) doubles the gradient on two replicas.
        compute_terms = DepthTrainer.compute_terms
        def unscaled(self, target, preds):
            terms, total = compute_terms(self, target, preds)
            return terms, total * tf.distribute.get_strategy().num_replicas_in_sync
        DepthTrainer.compute_terms = unscaled
        out["diff_unscaled_loss"] = max_diff(single, one_step(mirrored)[1])
        DepthTrainer.compute_terms = compute_terms

        # Keras's own order: clip each replica's partial gradient, then sum.
        trainer_module.all_reduce_and_clip = lambda grads, optimizer: grads
        out["diff_per_replica_clip"] = max_diff(single, one_step(mirrored)[1])

        # The global batch must split into whole flip groups.
        try:
            fit(config.replace(train__batch_size=3, train__strategy="mirrored", train__devices=["CPU:0", "CPU:1"]))
        except ConfigError as e:
            out["odd_batch_error"] = str(e)
        print("RESULT " + json.dumps(out))
        """
    )
)


@pytest.mark.slow  # two replicas trace two train steps: 40-125 s here; tests/test_metrics.py covers replicas in the default suite
def test_one_step_on_two_replicas_equals_one_step_on_one_device():
    r = _run_script(EQUIVALENCE_SCRIPT.replace("sys.argv[1]", repr(json.dumps(TINY))))
    assert r["replicas"] == 2
    assert r["split_shapes"] == [[2, 2, 32, 32, 3]] * 2 and r["split_is_halves"]
    assert r["max_update"] > 1e-4  # the step really moves the weights
    assert r["diff"] < WEIGHT_ATOL, r
    # The logged loss is the global-batch loss (the trainer multiplies back by the replicas).
    np.testing.assert_allclose(r["loss"][1], r["loss"][0], rtol=1e-5)
    np.testing.assert_allclose(r["set"][1], r["set"][0], rtol=1e-5)
    assert r["set"][0] > 1e-4  # the set loss is on and not trivially 0
    # The test catches both scaling bugs: each moves the weights far beyond the tolerance.
    assert r["diff_unscaled_loss"] > 100 * WEIGHT_ATOL, r
    assert r["diff_per_replica_clip"] > 10 * WEIGHT_ATOL, r
    assert "train.batch_size=3 flip groups cannot be split evenly over 2 replicas" in r["odd_batch_error"]


# ------------------------------------------------------------------ multiworker and resume


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# Runs `kdepth fit` through the CLI and keeps the final network weights (a spy on build_trainer),
# which a non-chief worker would otherwise delete with its temporary folder. With
# KDEPTH_TEST_CRASH_AT_EPOCH=N the process dies hard (os._exit: no clean-up, like a kill) as
# epoch N starts, i.e. right after epoch N-1's backup.
CLI_SCRIPT = (
    WORKER_PREAMBLE
    + "if json.loads(sys.argv[3]):\n"
    + textwrap.indent(TWO_CPUS, "    ")
    + textwrap.dedent(
        """
        import kdepth.training.fit as fit_module
        from kdepth.cli import main
        from kdepth.training import callbacks as cb

        args, weights_path = json.loads(sys.argv[1]), sys.argv[2]
        built = []
        build_trainer = fit_module.build_trainer
        def spy(*a, **k):
            built.append(build_trainer(*a, **k))
            return built[-1]
        fit_module.build_trainer = spy
        if os.environ.get("KDEPTH_TEST_CRASH_AT_EPOCH"):
            crash_at = int(os.environ["KDEPTH_TEST_CRASH_AT_EPOCH"])
            on_epoch_begin = cb.EpochLearningRate.on_epoch_begin
            def crash(self, epoch, logs=None):
                if epoch == crash_at:
                    os._exit(17)
                return on_epoch_begin(self, epoch, logs)
            cb.EpochLearningRate.on_epoch_begin = crash
        try:
            main(args, standalone_mode=False)
        except SystemExit as e:
            if e.code:
                raise
        np.savez(weights_path, *[w.numpy() for w in built[-1].network.weights])
        print("RESULT " + json.dumps({"ok": True}))
        """
    )
)


def _cli_script(args, weights_path, two_cpus=False):
    return (
        CLI_SCRIPT.replace("sys.argv[1]", repr(json.dumps(args)))
        .replace("sys.argv[2]", repr(str(weights_path)))
        .replace("sys.argv[3]", repr(json.dumps(two_cpus)))
    )


def _wait_all(procs, timeout=SUBPROCESS_TIMEOUT):
    """Waits for every worker; a worker that fails or a hang stops all of them at once."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode for p in procs) or time.monotonic() > deadline:
                break  # the others would wait for the failed worker's collectives until timeout
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _fit_args(run_dir, *sets):
    return ["fit", "--stage", "1", *sum([["--set", s] for s in [*TINY, f'train.run_dir="{run_dir}"', *sets]], [])]


def _weights(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def _max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def _two_workers(tmp_path, phase, sets, env=None):
    """Runs `kdepth fit --strategy multiworker` as two local worker processes, each with its own
    run folder (as on two machines); returns [(returncode, stdout, stderr)] per worker."""
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
    procs, logs = [], []
    for index in range(2):
        args = [*_fit_args(tmp_path / f"machine{index}", *sets), "--strategy", "multiworker"]
        worker_env = {**os.environ, **(env or {}), "TF_CONFIG": _tf_config(cluster, index=index), "CUDA_VISIBLE_DEVICES": "-1"}
        logs.append((tmp_path / f"{phase}-out{index}.txt", tmp_path / f"{phase}-err{index}.txt"))
        with open(logs[-1][0], "w") as out, open(logs[-1][1], "w") as err:
            script = _cli_script(args, tmp_path / f"{phase}-w{index}.npz")
            procs.append(subprocess.Popen([sys.executable, "-c", script], env=worker_env, stdout=out, stderr=err))
    _wait_all(procs)
    return [(p.returncode, out.read_text(), err.read_text()) for p, (out, err) in zip(procs, logs, strict=True)]


@pytest.mark.slow
def test_two_workers_resume_train_in_step_and_only_the_chief_writes(tmp_path):
    # SGD with momentum, not Adam: two workers sum gradients in another order than one device, and
    # Adam divides the near-zero gradients upstream of the zero-initialised heads by their own
    # size, turning that float-order noise into steps of the rate (a 1e-7 relative nudge of the
    # weights moved them by 1.6e-6..2.6e-3 after 6 Adam steps, 3.6e-7..9.9e-7 after 6 SGD steps).
    # Momentum still puts optimizer slots in the backup the resume must restore.
    sets = ["train.batch_size=2", "train.epochs=2", "train.steps_per_epoch=3", "train.val_steps=2",
            'train.optimizer="sgd"']
    # Both workers die as epoch 2 starts, then the same command runs again on both.
    crashed = _two_workers(tmp_path, "crash", sets, env={"KDEPTH_TEST_CRASH_AT_EPOCH": "1"})
    assert [code for code, _, _ in crashed] == [17, 17], [err[-3000:] for _, _, err in crashed]
    assert "this is worker 0 (chief)" in crashed[0][1] and "this is worker 1 (not the chief" in crashed[1][1]
    stage = tmp_path / "machine0" / "quickstart" / "stage1"
    assert (stage / "backup").is_dir()  # each worker keeps its own backup until a clean finish
    assert (tmp_path / "machine1" / "quickstart" / "stage1" / "workertemp_1" / "backup").is_dir()

    resumed = _two_workers(tmp_path, "resume", sets)
    for code, out, err in resumed:
        assert code == 0, out[-2000:] + err[-4000:]
        assert "resuming from the backup" in out and "finished 1 epochs" in out
    chief, worker = _weights(tmp_path / "resume-w0.npz"), _weights(tmp_path / "resume-w1.npz")
    assert _max_diff(chief, worker) == 0.0  # the workers hold the very same weights

    for name in ("config.toml", "model.keras", "last.weights.h5", "best.weights.h5", "log.csv", "summary.json"):
        assert (stage / name).is_file(), name
    assert list((stage / "tensorboard").rglob("events.out.tfevents.*"))
    assert not list(stage.glob("workertemp_*")) and not (stage / "backup").exists()
    assert [row.split(",")[0] for row in (stage / "log.csv").read_text().splitlines()[1:]] == ["0", "1"]
    assert not [p for p in (tmp_path / "machine1").rglob("*") if p.is_file()]  # the worker left nothing

    # The same 6 steps and global batches on one device, never interrupted, end at the same weights.
    assert _run_script(_cli_script(_fit_args(tmp_path / "single", *sets), tmp_path / "single.npz"))["ok"]
    diff = _max_diff(chief, _weights(tmp_path / "single.npz"))
    print(f"two workers (crashed and resumed) vs one device after 6 SGD steps: max |weight difference| {diff:.2e}")
    assert diff < 1e-5  # measured 7e-9 (2026-12-03): float sums in another order only


@pytest.mark.slow
def test_a_mirrored_run_resumes_from_its_backup(tmp_path):
    sets = ["train.batch_size=2", "train.epochs=3", "train.steps_per_epoch=2", "train.val_steps=1", 'train.devices=["CPU:0", "CPU:1"]']
    script = _cli_script([*_fit_args(tmp_path, *sets), "--strategy", "mirrored"], tmp_path / "w.npz", two_cpus=True)
    crashed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
        env={**os.environ, "KDEPTH_TEST_CRASH_AT_EPOCH": "2"},
    )
    assert crashed.returncode == 17, crashed.stderr[-4000:]
    assert "strategy mirrored: 2 replica(s)" in crashed.stdout
    stage = tmp_path / "quickstart" / "stage1"
    assert (stage / "backup").is_dir() and not (stage / "model.keras").exists()

    env = {k: v for k, v in os.environ.items() if k != "KDEPTH_TEST_CRASH_AT_EPOCH"}
    resumed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    assert "resuming from the backup" in resumed.stdout and "finished 1 epochs" in resumed.stdout  # only the third epoch was left
    epochs = [int(row.split(",")[0]) for row in (stage / "log.csv").read_text().splitlines()[1:]]
    assert epochs == [0, 1, 2]  # the epoch count continues instead of restarting
    assert (stage / "model.keras").is_file() and not (stage / "backup").exists()
