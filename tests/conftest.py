"""Shared fixtures: the tiny network and config every test trains or exports, and two logical CPUs.

VGG16's minimum input (32x32) and a 16-unit dense layer keep a network at about 15 M backbone
weights and a step at a fraction of a second on 2 CPU cores; the architecture is unchanged.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

TINY_SIZE = (32, 32)
TINY_NETWORK = {"input_size": TINY_SIZE, "coarse_hidden": 16}
# `--set` overrides of a run that trains in seconds on synthetic rooms.
TINY_SETS = [
    "model.input_size=[32, 32]",
    "model.coarse_hidden=16",
    "model.backbone_weights=none",
    "data.synthetic_train=8",
    "data.synthetic_val=2",
    "data.synthetic_test=2",
    "data.shuffle_buffer=8",
    "train.batch_size=2",
    "train.verbose=0",
    "train.tensorboard_images=0",
]
# Python that splits the CPU into two logical devices; must run before TensorFlow starts.
TWO_CPUS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


@pytest.fixture
def tiny_network():
    """Makes tiny `DepthNetwork`s: `tiny_network(scales=2, dropout=0.0, ...)`."""
    from kdepth.models import DepthNetwork

    def make(**overrides):
        return DepthNetwork(**{**TINY_NETWORK, **overrides})

    return make


@pytest.fixture
def tiny_config(tmp_path):
    """Makes tiny resolved configs whose runs go under tmp_path/runs: `tiny_config("name", "train.epochs=2")`."""
    from kdepth.config import load_config

    def make(name="tiny", *sets):
        return load_config([], [*TINY_SETS, f'train.run_dir="{tmp_path / "runs"}"', f"train.name={name}", *sets])

    return make


@pytest.fixture
def rgb_images():
    """Random raw RGB batches: `rgb_images(n, h, w, seed=0)` -> float32 (n, h, w, 3) in 0-255."""

    def make(n, h=TINY_SIZE[0], w=TINY_SIZE[1], seed=0):
        return np.random.default_rng(seed).uniform(0, 255, (n, h, w, 3)).astype("float32")

    return make


@pytest.fixture
def on_two_cpus():
    """Runs a Python script in a fresh process whose CPU is split into two logical devices.

    The script prints its results as one line `RESULT <json>`. Returns `run(script,
    timeout=300)` -> the parsed JSON of the last such line; a non-zero exit fails the test with
    the script's output.
    """

    def run(script, timeout=300):
        proc = subprocess.run([sys.executable, "-c", TWO_CPUS + script], capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        return json.loads(line[len("RESULT ") :])

    return run
