"""kdepth.allocator: freed tensor-sized blocks go back to the system, which glibc and oneDNN keep."""

import os
import subprocess
import sys

import pytest

from kdepth.allocator import SYSTEM_ALLOCATOR_ENV, return_freed_memory

# Frees 299 of 300 blocks of 1 MiB (the last one pins the heap's top) after a freed 1 MiB block
# has raised glibc's dynamic mmap threshold above their size; prints the MiB still resident.
PROBE = """
import sys
import numpy as np
from kdepth.allocator import return_freed_memory

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

if sys.argv[1] == "release":
    assert return_freed_memory()
warm = np.ones((1 << 20) // 8)
del warm
before = rss()
blocks = [np.ones((1 << 20) // 8) for _ in range(300)]
last = blocks[-1]
del blocks
print((rss() - before) / 2**20)
"""


def _held_mib(mode):
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_go_back_to_the_system():
    held_default, held_released = _held_mib("default"), _held_mib("release")
    assert held_default > 250  # glibc alone keeps the 299 freed MiB
    assert held_released < 20  # only the pinned block and noise


@pytest.mark.parametrize("threshold", [0, 100, -1, 2.5e5, True])
def test_bad_threshold_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold"):
        return_freed_memory(threshold)


# Allocates and frees a 400 MB TensorFlow tensor; prints the MiB still resident and whether
# kdepth would warn about oneDNN's pool. argv[1]: "kdepth-first" or "tensorflow-first".
TF_PROBE = """
import sys
if sys.argv[1] == "kdepth-first":
    import kdepth
import tensorflow as tf
from kdepth.allocator import pool_warning

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

tf.zeros((8,)) + 1.0
before = rss()
t = tf.fill((100_000_000,), 1.0) + 1.0
del t
print((rss() - before) / 2**20, pool_warning() is not None)
"""


def _tf_held_mib(order, env):
    env = {k: v for k, v in os.environ.items() if k != SYSTEM_ALLOCATOR_ENV} | env
    proc = subprocess.run([sys.executable, "-c", TF_PROBE, order], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    held, warned = proc.stdout.split()[-2:]
    return float(held), warned == "True"


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0",
    reason="oneDNN's allocator (TensorFlow on x86 Linux with oneDNN on)",
)
def test_importing_kdepth_first_gives_tensorflows_freed_tensors_back():
    held, warned = _tf_held_mib("kdepth-first", {})
    assert held < 50 and not warned  # the two freed 400 MB tensors went back to the system
    held, warned = _tf_held_mib("tensorflow-first", {})
    assert held > 700 and warned  # oneDNN's pool kept them, and fit would say why
    held, warned = _tf_held_mib("tensorflow-first", {SYSTEM_ALLOCATOR_ENV: "0"})
    assert held > 700 and not warned  # the user chose the pool
