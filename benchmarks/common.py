"""Shared helpers of the benchmarks: machine description, timing, matmul peak, result files.

Every benchmark compares against a reference measured in the same run (shared machines drift
between runs) and reports medians over repeats.
"""

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name():
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine():
    """A description of the machine and software for the result files."""
    import keras
    import tensorflow as tf

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def median_seconds(fn, repeats=5, warmup=1):
    """Median wall time of fn() over `repeats` calls after `warmup` calls; also all times."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def matmul_peak(dtype="float32", n=2048, repeats=5):
    """This machine's achievable FLOP/s: a large square matmul through TensorFlow."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    b = tf.random.normal((n, n), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)

    @tf.function
    def step():
        return tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32))

    seconds, _ = median_seconds(lambda: step().numpy(), repeats=repeats, warmup=2)
    return 2 * n**3 / seconds


def write_results(name, meta, results, table):
    """Writes benchmarks/results/NAME.json and NAME.md (the table) and prints the table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": {**machine(), **meta}, "results": results}, indent=2))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)
