"""Training cost of kdepth on this machine, each figure against a reference measured in the same run.

    python benchmarks/training.py [--quick] [--only NAME ...] [--repeats N] [--max-memory-gb GB]

Sections (all build the model exactly as `kdepth fit` does, through
`kdepth.training.stages.build_trainer(config, 1)`; stage 1 = scales 1 and 2; batches are real synthetic-room batches
from kdepth's pipeline, held in memory so that only the model is timed):

  efficiency       232x310, 8 flip groups of ("identity", "lr") = 16 images per step, float32:
                   images/s (median of `trainer.train_on_batch` times, first call excluded),
                   FLOPs per step counted from the traced train-step graph (forward + backward,
                   checked against TF's profiler and against 3x an analytic forward count),
                   achieved FLOP/s and its ratio to the float32 matmul peak (common.matmul_peak)
                   measured between the steps. Target >= 0.6. Also the ratio to a 3x3
                   convolution reference, the best throughput this TensorFlow build reaches on
                   the kind of op the model is made of.
  mixed_precision  the same model and batch under mixed_bfloat16 vs float32, steps interleaved:
                   images/s ratio (target >= 1.6); then `kdepth.training.fit.fit` for 60 steps
                   at 64x80 from the same seed in both precisions, delta1 on the synthetic
                   validation split (target: within 0.01), beside a float32 run with another
                   seed (the run-to-run spread the 0.01 should be read against).
  set_loss_cost    a step on B groups of G=2 with the set loss against a plain-loss step (flip
                   group ("identity",), set_weight 0) on B x G distinct images, interleaved.
                   Target: time ratio <= 1.05.
  memory           peak resident memory (VmHWM, see peak_rss) of a fresh subprocess that builds the
                   trainer and runs 3 train steps: 232x310 batch 8 (G=2) float32 and bf16
                   (target < 8 GB), batch 1/2/4/8 at 232x310, and 120x160 / 232x310 / 480x640 at
                   batch 1. A point whose weights + Adam state alone would exceed --max-memory-gb
                   is skipped with its estimate (the dense layer 1.6 grows with the input).
  scaling          per input size (120x160, 232x310, 480x640): training images/s, forward
                   latency at batch 1 (Keras predict_on_batch), FLOPs per image from the graphs,
                   achieved FLOP/s (images/s x FLOPs/image), so the point where cost stops
                   growing linearly with FLOPs shows.
  breakdown        where a training step's time goes at the efficiency setting: forward,
                   forward + backward, the optimizer's update alone, the full step, the full
                   step compiled with XLA (`jit_compile=True`), and every Conv2D / Dense layer
                   alone (forward + backward at its real shape) with its FLOP/s.

Results: benchmarks/results/training.json and training.md (quick runs: training_quick.*). A run
with --only updates the named sections in the existing result file and keeps the others; every
section records when it was measured, and its ratios only use figures of the same section.

Repeats: 5 rounds for efficiency, mixed_precision and set_loss_cost, 3 for scaling and breakdown
(2 for the per-layer table); --repeats N sets them all. Run order: the sections that share the
resident 232x310 trainer first, memory last.

Expected time on 2 cores: full run about 25 minutes when the machine is quiet (efficiency ~2,
mixed_precision ~7, set_loss_cost ~3, breakdown ~5, scaling ~3, memory ~5), up to twice that
when other jobs take a core; --quick about 2.5 minutes (64x80 inputs, batch 2, 2 repeats).
Shared machines drift: compare ratios, not absolute figures across runs.
"""

import argparse
import dataclasses
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import RESULTS, matmul_peak, median_seconds, write_results  # noqa: E402
from flops import concrete_graph, graph_flops, layer_forward_flops, profiler_flops, spec_like  # noqa: E402

from kdepth.config import load_config  # noqa: E402
from kdepth.data.pipeline import dataset_from_config  # noqa: E402
from kdepth.models import DepthNetwork, dtype_policy, scale_sizes  # noqa: E402
from kdepth.training.fit import fit  # noqa: E402
from kdepth.training.stages import build_trainer as fit_build_trainer  # noqa: E402

GROUP = ("identity", "lr")
SECTIONS = ("efficiency", "mixed_precision", "set_loss_cost", "memory", "scaling", "breakdown")
# Run order: the sections that reuse the resident paper-setting trainer first, memory (which
# releases it to leave RAM to its subprocesses) last.
RUN_ORDER = ("efficiency", "mixed_precision", "set_loss_cost", "breakdown", "scaling", "memory")
TARGETS = {"efficiency": 0.6, "mixed_precision_speedup": 1.6, "mixed_precision_delta1": 0.01, "set_loss_ratio": 1.05, "memory_gb": 8.0}
BYTES_PER_PARAM = 16  # float32 weight + gradient + Adam's two moments
MEMORY_STEPS = 3
IMAGE_FED = ("block1_conv1", "scale2_conv1", "scale3_conv1")  # convs on the image: no input gradient


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and repeats of one run mode."""

    paper: tuple = (232, 310)
    batch: int = 8
    repeats: int = 5
    acc_size: tuple = (64, 80)
    acc_epochs: int = 2
    acc_steps_per_epoch: int = 30
    acc_seeds: tuple = (0, 1)
    acc_val: int = 120
    memory_batches: tuple = (1, 2, 4, 8)
    memory_sizes: tuple = ((120, 160), (232, 310), (480, 640))
    scaling_sizes: tuple = ((120, 160), (232, 310), (480, 640))
    part_repeats: int = 3  # scaling and breakdown: many functions per round, fewer rounds
    layer_repeats: int = 2


FULL = Settings()
QUICK = Settings(
    paper=(64, 80), batch=2, repeats=2, acc_size=(48, 64), acc_epochs=1, acc_steps_per_epoch=8, acc_seeds=(0,), acc_val=16,
    memory_batches=(1, 2), memory_sizes=((64, 80), (96, 128)), scaling_sizes=((64, 80), (96, 128)),
    part_repeats=2, layer_repeats=1,
)

_START = time.perf_counter()


def log(message):
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", flush=True)


def gb(n_bytes):
    return round(n_bytes / 1e9, 2)


def g(flops):
    return round(flops / 1e9, 2)


# ------------------------------------------------------------------------------------------------
# Building what `fit` builds
# ------------------------------------------------------------------------------------------------


def make_config(size, batch, group=GROUP, precision="float32", extra=()):
    """A kdepth config for stage 1 at `size` with `batch` flip groups of `group` per step."""
    overrides = [
        f"model.input_size=[{size[0]}, {size[1]}]",
        "model.scales=2",
        "model.backbone_weights=none",
        f"train.batch_size={batch}",
        f"train.precision={precision}",
        "data.flip_group=[" + ", ".join(f'"{f}"' for f in group) + "]",
        # One batch is drawn from the pipeline: no need to render a shuffle buffer of rooms.
        "data.shuffle_buffer=0",
        f"data.synthetic_train={max(batch, 8)}",
        "data.synthetic_val=8",
        "data.synthetic_test=8",
        *extra,
    ]
    return load_config([], overrides)


def build_trainer(config, jit_compile=None):
    """(trainer, network) built and compiled by `kdepth.training.stages.build_trainer` for stage 1."""
    with dtype_policy(config.train.precision):
        keras.utils.set_random_seed(config.train.seed)
        parts = fit_build_trainer(config, 1, jit_compile=jit_compile)
    return parts.trainer, parts.network


def warm_trainer(config, label, batch=None):
    """(trainer, network, images, target): built as fit builds it, with one step already run.

    The first step traces the graph, so it is timed apart and excluded from every figure.
    `batch` reuses (images, target); by default a real batch is drawn for `config`.
    """
    trainer, network = build_trainer(config)
    images, target = batch if batch is not None else real_batch(config)
    start = time.perf_counter()
    trainer.train_on_batch(images, target)
    log(f"first {label} step (trace + run, excluded): {time.perf_counter() - start:.1f}s")
    return trainer, network, images, target


def real_batch(config):
    """One training batch (images, target) from kdepth's pipeline on the synthetic source, as tensors."""
    ds, _ = dataset_from_config(config, config.data.train_split, training=True, repeat=True)
    images, target = next(iter(ds))
    return tf.identity(images), {k: tf.identity(v) for k, v in target.items()}


def train_flops(trainer, images, target):
    """FLOPs of one train step counted from its graph (the trainer must have run a step already)."""
    graph = concrete_graph(lambda x, y: trainer.train_step((x, y)), spec_like(images), spec_like(target))
    counted = graph_flops(graph)
    return {"graph": counted["total"], "by_op": counted["by_op"], "profiler": profiler_flops(graph)}


def forward_flops(network, size, batch=1):
    """Inference FLOPs (training=False) from the traced forward graph, for `batch` images."""
    spec = tf.TensorSpec((batch, *size, 3), tf.float32)
    return graph_flops(concrete_graph(lambda x: network(x, training=False), spec))["total"]


def analytic_train_flops(network, images):
    """3 x the analytic forward count, less the input gradient of the convs fed by the image."""
    per_layer = layer_forward_flops(network, batch=images)
    forward = sum(per_layer.values())
    return forward, 3 * forward - sum(v for k, v in per_layer.items() if k in IMAGE_FED)


def param_count_estimate(size, coarse_hidden=4200):
    """Parameters of the stage-1 network at `size` without building it (VGG16 ~14.7 M + scale 2 ~1.5 M)."""
    h, w = size
    h2, w2 = scale_sizes(size)["scale2"]
    dense1 = (h // 32) * (w // 32) * 512 * coarse_hidden + coarse_hidden
    dense2 = coarse_hidden * h2 * w2 + h2 * w2
    return dense1 + dense2 + 16_300_000


class Context:
    """Holds the paper-setting float32 trainer and batch across sections (it is built once)."""

    def __init__(self, settings):
        self.s = settings
        self._paper = None

    def paper(self):
        """(config, trainer, network, images, target) at the efficiency setting, one step already run."""
        if self._paper is None:
            config = make_config(self.s.paper, self.s.batch)
            log(f"building the float32 trainer at {self.s.paper[0]}x{self.s.paper[1]}, batch {self.s.batch} x {len(GROUP)}")
            self._paper = (config, *warm_trainer(config, "float32"))
        return self._paper


def free():
    # Not keras.backend.clear_session(): it drops the kernel cache the resident trainer uses.
    gc.collect()


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------


def conv_peak(repeats=3):
    """FLOP/s of a 3x3, 256->256 convolution on 16 x 58x78 (VGG's block 3 at 232x310), forward."""
    x = tf.random.normal((16, 58, 78, 256))
    w = tf.random.normal((3, 3, 256, 256))

    @tf.function
    def step():
        return tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME"))

    seconds, _ = median_seconds(lambda: step().numpy(), repeats=repeats, warmup=2)
    return 2 * 16 * 58 * 78 * 256 * 9 * 256 / seconds


class Rounds:
    """Times each fn once per round, round after round, with the references measured between rounds.

    Shared machines drift (a neighbour's job can take a core for seconds to minutes), so ratios are
    taken within a round and their median reported: fn against fn in the same round (the order
    alternates, A B then B A, so a steady drift cancels), and FLOP/s against the matmul peak (and
    the conv reference) measured just before and just after the round (the mean of the two).
    Contention only ever slows a CPU-bound run down, so the best-of-rounds figures (fastest time,
    highest reference) are kept too, as an estimate of the machine to itself.
    """

    def __init__(self, fns, repeats, warmup=1, peaks=("float32",), conv=False, label=""):
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        refs = {f"peak_{dtype}": (lambda d=dtype: matmul_peak(d, repeats=3)) for dtype in peaks}
        if conv:
            refs["conv_ref"] = conv_peak
        self.seconds = {name: [] for name in fns}
        self.refs = {k: [] for k in refs}
        edges = {k: [fn()] for k, fn in refs.items()}
        for r in range(repeats):
            for name, fn in (list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]):
                start = time.perf_counter()
                fn()
                self.seconds[name].append(time.perf_counter() - start)
            for k, fn in refs.items():
                edges[k].append(fn())
                self.refs[k].append((edges[k][-2] + edges[k][-1]) / 2)
            log(f"  {label}round {r + 1}/{repeats}: " + ", ".join(f"{n} {v[-1]:.3f}s" for n, v in self.seconds.items())
                + "".join(f", {k} {v[-1] / 1e9:.0f} GFLOP/s" for k, v in self.refs.items()))

    def median(self, name):
        return statistics.median(self.seconds[name])

    def ref(self, key="peak_float32"):
        return statistics.median(self.refs[key])

    def ratio(self, a, b):
        """Median over rounds of time(a) / time(b)."""
        return statistics.median(x / y for x, y in zip(self.seconds[a], self.seconds[b], strict=True))

    def ratios(self, a, b):
        return [round(x / y, 3) for x, y in zip(self.seconds[a], self.seconds[b], strict=True)]

    def rate_ratios(self, name, flops, key="peak_float32"):
        """Per round: (flops / time(name)) / the round's reference FLOP/s."""
        return [round(flops / t / ref, 3) for t, ref in zip(self.seconds[name], self.refs[key], strict=True)]

    def rate_ratio(self, name, flops, key="peak_float32"):
        return statistics.median(self.rate_ratios(name, flops, key))

    def best_ratio(self, a, b):
        """Fastest time of a over fastest time of b."""
        return min(self.seconds[a]) / min(self.seconds[b])

    def best_rate_ratio(self, name, flops, key="peak_float32"):
        """flops / fastest time of name, over the highest reference of the run."""
        return flops / min(self.seconds[name]) / max(self.refs[key])

    def record(self):
        return {"seconds": {n: [round(x, 4) for x in v] for n, v in self.seconds.items()},
                **{f"{k}_gflop_s": [round(x / 1e9, 1) for x in v] for k, v in self.refs.items()}}


def step_fn(trainer, images, target):
    return lambda: trainer.train_on_batch(images, target)


def n_images(images):
    return int(images.shape[0]) * int(images.shape[1])


CHILD_TAG = "CHILD_RESULT "


def emit(result):
    """A child process's result: one tagged JSON line on stdout (progress lines pass through)."""
    print(CHILD_TAG + json.dumps(result), flush=True)


def run_child(args, label):
    """Runs this script with `args` in a fresh Python process and returns the dict it emits.

    Progress lines are echoed; TensorFlow's stderr goes to a temporary file and only its last lines
    are kept, in {"failed": ...}, if the child dies (an out-of-memory kill shows as signal 9).
    """
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=err, text=True)
        result = None
        for line in proc.stdout:
            if line.startswith(CHILD_TAG):
                result = json.loads(line[len(CHILD_TAG):])
            else:
                print(line, end="", flush=True)
        code = proc.wait()
        if code == 0 and result is not None:
            return result
        err.seek(0)
        tail = [ln.strip() for ln in err.read().splitlines() if ln.strip()][-3:]
        reason = "killed by SIGKILL (out of memory?)" if code == -9 else f"exit code {code}"
        return {"failed": f"{label}: {reason}: {' | '.join(tail)[-600:]}"}


# ------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------


def section_efficiency(ctx, repeats):
    config, trainer, network, images, target = ctx.paper()
    n = n_images(images)
    counted = train_flops(trainer, images, target)
    forward, analytic = analytic_train_flops(network, n)
    log(f"FLOPs per step: graph {g(counted['graph'])} G, TF profiler {g(counted['profiler'])} G, 3x analytic forward {g(3 * forward)} G")
    t = Rounds({"train_step": step_fn(trainer, images, target)}, repeats, conv=True)
    step = t.median("train_step")
    achieved = counted["graph"] / step
    ratio = t.rate_ratio("train_step", counted["graph"])
    return {
        "setting": {"input": list(ctx.s.paper), "batch_groups": ctx.s.batch, "flip_group": list(GROUP),
                    "images_per_step": n, "precision": "float32", "stage": 1, "scales": 2},
        "images_per_s": round(n / step, 2),
        "step_seconds": round(step, 3),
        "rounds": t.record(),
        "gflop_per_step_graph": g(counted["graph"]),
        "gflop_per_step_by_op": {k: g(v) for k, v in counted["by_op"].items()},
        "gflop_per_step_tf_profiler": g(counted["profiler"]),
        "gflop_forward_per_image_analytic": g(forward / n),
        "gflop_per_step_3x_forward_analytic": g(3 * forward),
        "gflop_per_step_analytic_less_image_grads": g(analytic),
        "graph_over_3x_forward": round(counted["graph"] / (3 * forward), 3),
        "achieved_gflop_s": round(achieved / 1e9, 1),
        "matmul_peak_float32_gflop_s": round(t.ref() / 1e9, 1),
        "ratio_to_matmul_peak": round(ratio, 3),
        "ratio_to_matmul_peak_per_round": t.rate_ratios("train_step", counted["graph"]),
        "best_of_rounds": {"images_per_s": round(n / min(t.seconds["train_step"]), 2),
                           "matmul_peak_float32_gflop_s": round(max(t.refs["peak_float32"]) / 1e9, 1),
                           "ratio_to_matmul_peak": round(t.best_rate_ratio("train_step", counted["graph"]), 3)},
        "conv3x3_ref_gflop_s": round(t.ref("conv_ref") / 1e9, 1),
        "ratio_to_conv3x3_ref": round(t.rate_ratio("train_step", counted["graph"], "conv_ref"), 3),
        "target_ratio": TARGETS["efficiency"],
        "met": ratio >= TARGETS["efficiency"],
    }


def fit_delta1(settings, precision, seed, run_dir):
    """delta1 on the synthetic validation split after a short `fit` (stage 1) in `precision`."""
    steps = settings.acc_epochs * settings.acc_steps_per_epoch
    config = load_config([], [
        f"model.input_size=[{settings.acc_size[0]}, {settings.acc_size[1]}]",
        "model.scales=2",
        "model.backbone_weights=none",
        "train.batch_size=8",
        f"train.epochs={settings.acc_epochs}",
        f"train.steps_per_epoch={settings.acc_steps_per_epoch}",
        f"train.precision={precision}",
        f"train.seed={seed}",
        f"data.seed={seed}",
        f"data.synthetic_train={8 * steps}",
        f"data.synthetic_val={settings.acc_val}",
        "data.shuffle_buffer=64",
        "train.tensorboard_images=0",
        "train.verbose=0",
        f"train.run_dir={run_dir}",
        f"train.name={precision}_seed{seed}",
    ])
    start = time.perf_counter()
    result = fit(config, stage=1, echo=lambda _: None)
    log(f"  fit {precision} seed {seed}: {steps} steps, val delta1 {result.val['delta1']:.4f} "
        f"(mean-depth baseline {result.baseline['delta1']:.4f}), {time.perf_counter() - start:.0f}s")
    return {"val_delta1": round(result.val["delta1"], 4), "baseline_delta1": round(result.baseline["delta1"], 4),
            "val_abs_rel": round(result.val["abs_rel"], 4), "steps": steps, "seconds": round(result.seconds, 1)}


def section_mixed_precision(ctx, repeats):
    config, trainer, _, images, target = ctx.paper()
    n = n_images(images)
    bf16_config = config.replace(train__precision="mixed_bfloat16")
    log("building the mixed_bfloat16 trainer")
    bf16 = warm_trainer(bf16_config, "bf16", batch=(images, target))[0]
    t = Rounds({"float32": step_fn(trainer, images, target), "mixed_bfloat16": step_fn(bf16, images, target)},
               repeats, peaks=("float32", "bfloat16"))
    del bf16
    free()
    f32, b16 = t.median("float32"), t.median("mixed_bfloat16")
    speed = {
        "setting": {"input": list(ctx.s.paper), "batch_groups": ctx.s.batch, "images_per_step": n},
        "float32_images_per_s": round(n / f32, 2),
        "bf16_images_per_s": round(n / b16, 2),
        "speedup": round(t.ratio("float32", "mixed_bfloat16"), 3),
        "speedup_per_round": t.ratios("float32", "mixed_bfloat16"),
        "speedup_best_of_rounds": round(t.best_ratio("float32", "mixed_bfloat16"), 3),
        "rounds": t.record(),
        "matmul_peak_ratio_bf16_over_f32": round(statistics.median(
            b / f for b, f in zip(t.refs["peak_bfloat16"], t.refs["peak_float32"], strict=True)), 3),
        "matmul_peak_float32_gflop_s": round(t.ref("peak_float32") / 1e9, 1),
        "matmul_peak_bfloat16_gflop_s": round(t.ref("peak_bfloat16") / 1e9, 1),
        "target_speedup": TARGETS["mixed_precision_speedup"],
    }
    speed["met"] = speed["speedup"] >= TARGETS["mixed_precision_speedup"]
    s = ctx.s
    log(f"accuracy: kdepth fit, {s.acc_epochs * s.acc_steps_per_epoch} steps at {s.acc_size[0]}x{s.acc_size[1]}, batch 8 x 2")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"float32": fit_delta1(s, "float32", s.acc_seeds[0], tmp),
                "mixed_bfloat16": fit_delta1(s, "mixed_bfloat16", s.acc_seeds[0], tmp)}
        for seed in s.acc_seeds[1:]:
            runs[f"float32_seed{seed}"] = fit_delta1(s, "float32", seed, tmp)
    diff = runs["mixed_bfloat16"]["val_delta1"] - runs["float32"]["val_delta1"]
    accuracy = {
        "method": "kdepth.training.fit.fit (stage 1, synthetic source, same seed for both precisions)",
        "input": list(s.acc_size), "runs": runs, "delta1_bf16_minus_f32": round(diff, 4),
        "target_abs_diff": TARGETS["mixed_precision_delta1"], "met": abs(diff) <= TARGETS["mixed_precision_delta1"],
    }
    if len(s.acc_seeds) > 1:
        accuracy["delta1_f32_seed_spread"] = round(runs[f"float32_seed{s.acc_seeds[1]}"]["val_delta1"] - runs["float32"]["val_delta1"], 4)
    return {"speed": speed, "accuracy": accuracy}


def section_set_loss_cost(ctx, repeats):
    config, trainer, _, images, target = ctx.paper()
    b, grp = int(images.shape[0]), int(images.shape[1])
    plain_config = make_config(ctx.s.paper, b * grp, group=("identity",), extra=["loss.set_weight=0"])
    log(f"building the plain-loss trainer: {b * grp} distinct images, flip group ('identity',), set_weight 0")
    plain, _, plain_images, plain_target = warm_trainer(plain_config, "plain")
    t = Rounds({"set_loss": step_fn(trainer, images, target), "plain": step_fn(plain, plain_images, plain_target)},
               repeats, peaks=())
    del plain
    free()
    ratio = t.ratio("set_loss", "plain")
    return {
        "set_loss": {"batch_groups": b, "flip_group": list(GROUP), "set_weight": config.loss.set_weight,
                     "step_seconds": round(t.median("set_loss"), 3)},
        "plain": {"batch": b * grp, "flip_group": ["identity"], "set_weight": 0.0,
                  "step_seconds": round(t.median("plain"), 3)},
        "rounds": t.record(),
        "time_ratio_per_round": t.ratios("set_loss", "plain"),
        "time_ratio_best_of_rounds": round(t.best_ratio("set_loss", "plain"), 3),
        "images_per_step": b * grp,
        "time_ratio": round(ratio, 3),
        "target_ratio": TARGETS["set_loss_ratio"],
        "met": ratio <= TARGETS["set_loss_ratio"],
    }


def peak_rss():
    """This process's peak resident set size in bytes: VmHWM of /proc/self/status.

    Not ru_maxrss: Linux carries a forked child's pre-exec high-water mark (the parent's whole
    RSS, counted again in the fork) into ru_maxrss after exec, so a child of a 3 GB parent would
    report at least 3 GB. VmHWM belongs to the process's own address space.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def memory_point(h, w, batch, group_size, precision, steps):
    """Runs in a fresh subprocess: build the trainer, run steps, print peak RSS as one JSON line."""
    rss = peak_rss
    after_import = rss()
    group = GROUP[:group_size] if group_size <= len(GROUP) else ("identity", "lr", "ud")[:group_size]
    config = make_config((h, w), batch, group=group, precision=precision)
    trainer, network = build_trainer(config)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (batch, group_size, h, w, 3)).astype("float32"))
    depth = tf.constant(rng.uniform(0.5, 8.0, (batch, group_size, h, w, 1)).astype("float32"))
    after_build = rss()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_on_batch(images, {"depth": depth, "mask": tf.ones_like(depth)})
        times.append(time.perf_counter() - start)
    emit({
        "peak_rss": rss(), "rss_after_import": after_import, "rss_after_build": after_build,
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "params": int(network.count_params()), "step_seconds": [round(x, 3) for x in times],
    })


def available_memory():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def run_memory_point(size, batch, group_size, precision, budget):
    params = param_count_estimate(size)
    estimate = params * BYTES_PER_PARAM
    row = {"input": list(size), "batch_groups": batch, "images_per_step": batch * group_size, "precision": precision,
           "params_estimate": params, "state_gb_estimate": gb(estimate)}
    if estimate > budget:
        row["skipped"] = (f"weights + gradients + Adam moments alone need ~{gb(estimate)} GB (dense layer 1.6 grows "
                          f"with the input), more than --max-memory-gb {gb(budget)}")
        log(f"  {size[0]}x{size[1]} batch {batch} {precision}: skipped ({row['skipped']})")
        return row
    start = time.perf_counter()
    point = run_child(["--memory-point", str(size[0]), str(size[1]), str(batch), str(group_size), precision, str(MEMORY_STEPS)],
                      f"memory point {size[0]}x{size[1]} batch {batch} {precision}")
    if "failed" in point:
        row["failed"] = point["failed"]
        log(f"  {point['failed']}")
        return row
    row.update({"peak_rss_gb": gb(point["peak_rss"]), "rss_after_build_gb": gb(point["rss_after_build"]),
                "rss_after_import_gb": gb(point["rss_after_import"]), "params": point["params"],
                "step_seconds": point["step_seconds"], "wall_seconds": round(time.perf_counter() - start, 1)})
    log(f"  {size[0]}x{size[1]} batch {batch} {precision}: peak {row['peak_rss_gb']} GB "
        f"(after build {row['rss_after_build_gb']} GB), {row['wall_seconds']}s")
    return row


def section_memory(ctx, budget):
    s = ctx.s
    points = [(s.paper, s.batch, "float32"), (s.paper, s.batch, "mixed_bfloat16")]
    points += [(s.paper, b, "float32") for b in s.memory_batches if b != s.batch]
    points += [(size, 1, "float32") for size in s.memory_sizes if not (tuple(size) == tuple(s.paper) and 1 in s.memory_batches)]
    rows = [run_memory_point(tuple(size), b, len(GROUP), p, budget) for size, b, p in points]
    paper = [r for r in rows[:2] if "peak_rss_gb" in r]
    return {
        "method": f"peak RSS (VmHWM) of a fresh subprocess: build + compile the stage-1 trainer, {MEMORY_STEPS} train steps on in-memory tensors",
        "budget_gb": gb(budget),
        "rows": rows,
        "target_gb": TARGETS["memory_gb"],
        "met": bool(paper) and len(paper) == 2 and all(r["peak_rss_gb"] < TARGETS["memory_gb"] for r in paper),
    }


def scaling_row(ctx, size, repeats, budget):
    """One input size of the scaling table (runs in its own process, see section_scaling)."""
    s = ctx.s
    log(f"scaling {size[0]}x{size[1]}")
    row = {"input": list(size)}
    estimate = param_count_estimate(size) * BYTES_PER_PARAM
    if size == tuple(s.paper):
        _, trainer, network, images, target = ctx.paper()
    elif estimate <= budget:
        batch = s.batch if size[0] * size[1] <= s.paper[0] * s.paper[1] else 1
        config = make_config(size, batch)
        trainer, network, images, target = warm_trainer(config, f"{size[0]}x{size[1]}")
    else:
        trainer = images = target = None
        row["training_skipped"] = f"weights + gradients + Adam moments need ~{gb(estimate)} GB > --max-memory-gb {gb(budget)}"
        log(f"  training skipped: {row['training_skipped']}")
        network = DepthNetwork(size, scales=2)
    image1 = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, *size, 3)).astype("float32"))
    fwd = forward_flops(network, size)
    row["gflop_forward_per_image"] = g(fwd)
    row["params"] = int(network.count_params())
    fns = {"forward_b1": lambda: network.predict_on_batch(image1)}
    if trainer is not None:
        n = n_images(images)
        counted = train_flops(trainer, images, target)
        row.update({"train_batch_groups": int(images.shape[0]), "images_per_step": n,
                    "gflop_train_per_image": g(counted["graph"] / n)})
        fns["train_step"] = step_fn(trainer, images, target)
    t = Rounds(fns, repeats, warmup=2)
    lat = t.median("forward_b1")
    row.update({"forward_ms": round(lat * 1e3, 1), "forward_gflop_s": round(fwd / lat / 1e9, 1),
                "forward_ratio_to_matmul_peak": round(t.rate_ratio("forward_b1", fwd), 3),
                "matmul_peak_float32_gflop_s": round(t.ref() / 1e9, 1), "rounds": t.record()})
    if trainer is not None:
        step = t.median("train_step")
        row.update({"train_images_per_s": round(n / step, 2),
                    "train_gflop_s": round(counted["graph"] / step / 1e9, 1),
                    "train_ratio_to_matmul_peak": round(t.rate_ratio("train_step", counted["graph"]), 3)})
    return row


def section_scaling(ctx, child_args):
    """Each input size in a fresh process (a 480x640 network alone holds ~3 GB of weights)."""
    rows = []
    for size in ctx.s.scaling_sizes:
        row = run_child(["--scaling-row", str(size[0]), str(size[1]), *child_args], f"scaling {size[0]}x{size[1]}")
        row.setdefault("input", list(size))
        rows.append(row)
    ok = [r for r in rows if "forward_ms" in r]
    if ok:
        base = ok[0]
        for row in ok:
            row["flops_ratio_to_smallest"] = round(row["gflop_forward_per_image"] / base["gflop_forward_per_image"], 2)
            if "train_images_per_s" in row and "train_images_per_s" in base:
                row["train_time_per_image_ratio_to_smallest"] = round(base["train_images_per_s"] / row["train_images_per_s"], 2)
            row["forward_latency_ratio_to_smallest"] = round(row["forward_ms"] / base["forward_ms"], 2)
    return {"rows": rows}


def layer_parts(network, batch, repeats):
    """Every Conv2D / Dense layer alone at its real input shape: forward + backward time, FLOP/s and
    the ratio to the matmul peak measured around each round of all layers."""
    fns, info = {}, {}
    for layer in network.layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            continue
        shape = (batch, *(int(d) for d in layer.input.shape[1:]))
        x = tf.random.normal(shape)
        need_input_grad = layer.name not in IMAGE_FED

        @tf.function
        def fwd_bwd(x=x, layer=layer, need_input_grad=need_input_grad):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.cast(layer(x, training=True), tf.float32)
                loss = tf.reduce_sum(y)
            sources = [x, *layer.trainable_weights] if need_input_grad else layer.trainable_weights
            return tape.gradient(loss, sources)

        fns[layer.name] = fwd_bwd
        info[layer.name] = (shape, layer_forward_flops_of(layer, batch) * (3 if need_input_grad else 2), layer.kernel.shape)
    t = Rounds(fns, repeats, label="layers ")
    rows = []
    for name, (shape, flops, kernel) in info.items():
        seconds = t.median(name)
        rows.append({"layer": name, "input": list(shape[1:]), "kernel": [int(d) for d in kernel],
                     "ms": round(seconds * 1e3, 1), "gflop": g(flops), "gflop_s": round(flops / seconds / 1e9, 1),
                     "ratio_to_matmul_peak": round(t.rate_ratio(name, flops), 3),
                     "ratio_to_matmul_peak_best": round(t.best_rate_ratio(name, flops), 3)})
    return rows


def layer_forward_flops_of(layer, batch):
    if isinstance(layer, keras.layers.Dense):
        return 2 * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1]) * batch
    kh, kw, ci, co = (int(d) for d in layer.kernel.shape)
    _, h, w, _ = layer.output.shape
    return 2 * int(h) * int(w) * co * kh * kw * ci * batch


def simple_loss_targets(network, target):
    """Ground truth resized once, outside any step, to each output's grid (log depth, holes kept at 0)."""
    from kdepth.ops import masked_resize

    depth = tf.reshape(target["depth"] * target["mask"], (-1, *target["depth"].shape[2:]))
    return {k: masked_resize(depth, tuple(int(d) for d in v.shape[1:3])) for k, v in network.output.items()}


def try_first_call(label, fn):
    """Runs fn once (trace/compile); returns (seconds, None) or (None, the error's first line)."""
    start = time.perf_counter()
    try:
        fn()
    except Exception as err:  # XLA raises InvalidArgumentError / UnimplementedError for unsupported ops
        message = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
        log(f"  {label}: FAILED {message}")
        return None, message
    seconds = time.perf_counter() - start
    log(f"  {label}: first call (trace/compile + run, excluded) {seconds:.1f}s")
    return seconds, None


def section_breakdown(ctx, repeats):
    config, trainer, network, images, target = ctx.paper()
    n = n_images(images)
    folded = tf.reshape(images, (n, *images.shape[2:]))
    variables = trainer.trainable_variables
    counted = train_flops(trainer, images, target)
    gts = simple_loss_targets(network, target)

    @tf.function
    def forward():
        return trainer(images, training=True)

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            preds = trainer(images, training=True)
            _, total = trainer.compute_terms(target, preds)
        return tape.gradient(total, variables)

    grads = forward_backward()

    def network_fwd_bwd():
        # A log-MSE on pre-resized targets: no ResizeArea inside, so XLA can compile it too.
        with tf.GradientTape() as tape:
            preds = network(folded, training=True)
            total = tf.add_n([tf.reduce_mean(tf.square(tf.math.log(preds[k]) - tf.math.log(gts[k] + 1.0))) for k in preds])
        return tape.gradient(total, variables)

    def apply():
        trainer.optimizer.apply(grads, variables)

    fns = {
        "forward": forward,
        "forward_backward": forward_backward,
        "optimizer_apply": tf.function(apply),
        "train_step": step_fn(trainer, images, target),
        "network_fwd_bwd": tf.function(network_fwd_bwd),
    }
    first = {}
    errors = {}
    candidates = {
        "network_fwd_bwd_xla": tf.function(network_fwd_bwd, jit_compile=True),
        "optimizer_apply_xla": tf.function(apply, jit_compile=True),
    }
    for label, fn in candidates.items():
        first[label], errors[label] = try_first_call(label, fn)
        if errors[label] is None:
            fns[label] = fn
    log("building the trainer with jit_compile=True (train.jit_compile=true)")
    xla, _ = build_trainer(config, jit_compile=True)
    first["train_step_xla"], errors["train_step_xla"] = try_first_call("train_step_xla", step_fn(xla, images, target))
    if errors["train_step_xla"] is None:
        fns["train_step_xla"] = step_fn(xla, images, target)
    else:
        del xla
        free()
    t = Rounds(fns, repeats)
    fns.clear()
    free()
    med = {name: t.median(name) for name in t.seconds}
    log("per-layer forward + backward")
    layers = layer_parts(network, n, ctx.s.layer_repeats)
    layer_ms = sum(r["ms"] for r in layers)
    dense_params = sum(int(np.prod(w.shape)) for layer in network.layers if isinstance(layer, keras.layers.Dense) for w in layer.weights)
    out = {
        "setting": {"input": list(ctx.s.paper), "images_per_step": n, "precision": "float32"},
        "rounds": t.record(),
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "share_of_step": {k: round(t.ratio(k, "train_step"), 3) for k in med},
        "best_s": {k: round(min(v), 3) for k, v in t.seconds.items()},
        "share_of_step_best": {k: round(t.best_ratio(k, "train_step"), 3) for k in med},
        "first_call_s": {k: round(v, 1) for k, v in first.items() if v is not None},
        "xla_errors": {k: v for k, v in errors.items() if v},
        "step_minus_forward_backward_s": round(med["train_step"] - med["forward_backward"], 3),
        "gflop_per_step_graph": g(counted["graph"]),
        "forward_backward_gflop_s": round(counted["graph"] / med["forward_backward"] / 1e9, 1),
        "forward_backward_ratio_to_matmul_peak": round(t.rate_ratio("forward_backward", counted["graph"]), 3),
        "forward_backward_ratio_to_matmul_peak_best": round(t.best_rate_ratio("forward_backward", counted["graph"]), 3),
        "train_step_ratio_to_matmul_peak": round(t.rate_ratio("train_step", counted["graph"]), 3),
        "matmul_peak_float32_gflop_s": round(t.ref() / 1e9, 1),
        "dense_params": dense_params,
        "total_params": int(network.count_params()),
        "layers": layers,
        "layers_sum_ms": round(layer_ms, 1),
        "layers_sum_share_of_step": round(layer_ms / 1e3 / med["train_step"], 3),
    }
    for plain, compiled in (("network_fwd_bwd", "network_fwd_bwd_xla"), ("optimizer_apply", "optimizer_apply_xla"), ("train_step", "train_step_xla")):
        if compiled in med:
            out[f"xla_speedup_{plain}"] = round(t.ratio(plain, compiled), 3)
            out[f"xla_speedup_best_{plain}"] = round(t.best_ratio(plain, compiled), 3)
    return out


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def yes(met):
    return "met" if met else "NOT met"


def render(results, meta):
    failed = {k: v["failed"] for k, v in results.items() if "failed" in v}
    results = {k: v for k, v in results.items() if "failed" not in v}
    out = [f"# Training benchmarks ({meta.get('mode', 'full')} run)", "",
           f"CPU: {meta.get('cpu')}, {meta.get('cores')} cores; TensorFlow {meta.get('tensorflow')}, Keras {meta.get('keras')}. "
           "Medians over interleaved repeats; every ratio uses references measured in the same section.", ""]
    e = results.get("efficiency")
    if e:
        st = e["setting"]
        out += [f"## Efficiency (float32, {st['input'][0]}x{st['input'][1]}, {st['batch_groups']} groups x {len(st['flip_group'])} = {st['images_per_step']} images/step; measured {e['measured_at']})", "",
                "| figure | value |", "|---|---|",
                f"| images/s | {e['images_per_s']} |",
                f"| step time (s, median) | {e['step_seconds']} |",
                f"| GFLOP per step, graph (fwd + bwd, conv/matmul ops) | {e['gflop_per_step_graph']} |",
                f"| GFLOP per step, TF profiler (all ops) | {e['gflop_per_step_tf_profiler']} |",
                f"| GFLOP per step, 3 x analytic forward ({e['gflop_forward_per_image_analytic']} per image) | {e['gflop_per_step_3x_forward_analytic']} (graph / this = {e['graph_over_3x_forward']}) |",
                f"| achieved GFLOP/s | {e['achieved_gflop_s']} |",
                f"| float32 matmul peak GFLOP/s (same run) | {e['matmul_peak_float32_gflop_s']} |",
                f"| **ratio to matmul peak** (target >= {e['target_ratio']}) | **{e['ratio_to_matmul_peak']}** ({yes(e['met'])}) |",
                f"| per-round ratios | {', '.join(map(str, e['ratio_to_matmul_peak_per_round']))} |",
                f"| best of rounds: images/s, matmul peak, ratio | {', '.join(str(v) for v in e.get('best_of_rounds', {}).values())} |",
                f"| 3x3 conv reference GFLOP/s (same run) | {e['conv3x3_ref_gflop_s']} |",
                f"| ratio to the conv reference | {e['ratio_to_conv3x3_ref']} |", ""]
    m = results.get("mixed_precision")
    if m:
        sp, ac = m["speed"], m["accuracy"]
        out += [f"## Mixed precision (measured {m['measured_at']})", "",
                "| figure | float32 | mixed_bfloat16 | ratio |", "|---|---|---|---|",
                f"| images/s at {sp['setting']['input'][0]}x{sp['setting']['input'][1]}, {sp['setting']['images_per_step']} images/step | {sp['float32_images_per_s']} | {sp['bf16_images_per_s']} | **{sp['speedup']}x** (target >= {sp['target_speedup']}: {yes(sp['met'])}) |",
                f"| speed-up per round; best of rounds | | | {', '.join(map(str, sp['speedup_per_round']))}; {sp.get('speedup_best_of_rounds', '-')}x |",
                f"| matmul peak GFLOP/s | {sp['matmul_peak_float32_gflop_s']} | {sp['matmul_peak_bfloat16_gflop_s']} | {sp['matmul_peak_ratio_bf16_over_f32']}x |"]
        r = ac["runs"]
        out.append(f"| val delta1 after {r['float32']['steps']} fit steps at {ac['input'][0]}x{ac['input'][1]} (baseline {r['float32']['baseline_delta1']}) | {r['float32']['val_delta1']} | {r['mixed_bfloat16']['val_delta1']} | diff **{ac['delta1_bf16_minus_f32']:+}** (target within {ac['target_abs_diff']}: {yes(ac['met'])}) |")
        if "delta1_f32_seed_spread" in ac:
            out.append(f"| float32 with another seed (run-to-run spread) | {[v['val_delta1'] for k, v in r.items() if k.startswith('float32_seed')][0]} | | diff {ac['delta1_f32_seed_spread']:+} |")
        out.append("")
    c = results.get("set_loss_cost")
    if c:
        out += [f"## Set-loss cost ({c['images_per_step']} images per step; measured {c['measured_at']})", "",
                "| step | batch | step time (s) |", "|---|---|---|",
                f"| set loss on | {c['set_loss']['batch_groups']} groups x {len(c['set_loss']['flip_group'])} | {c['set_loss']['step_seconds']} |",
                f"| plain loss (reference) | {c['plain']['batch']} distinct images | {c['plain']['step_seconds']} |",
                f"| **ratio** (target <= {c['target_ratio']}) | | **{c['time_ratio']}** ({yes(c['met'])}) |",
                f"| ratio per round; best of rounds | | {', '.join(map(str, c['time_ratio_per_round']))}; {c.get('time_ratio_best_of_rounds', '-')} |", ""]
    mem = results.get("memory")
    if mem:
        out += [f"## Peak memory (measured {mem['measured_at']}; target < {mem['target_gb']} GB at the paper setting: {yes(mem['met'])})", "",
                mem["method"] + ".", "",
                "| input | batch (groups x 2) | precision | peak RSS GB | RSS after build GB | params (M) |", "|---|---|---|---|---|---|"]
        for r in mem["rows"]:
            peak = r.get("peak_rss_gb", r.get("skipped") or r.get("failed"))
            out.append(f"| {r['input'][0]}x{r['input'][1]} | {r['batch_groups']} | {r['precision']} | {peak} | {r.get('rss_after_build_gb', '-')} | {round(r.get('params', r['params_estimate']) / 1e6, 1)} |")
        out.append("")
    sc = results.get("scaling")
    if sc:
        out += [f"## How cost grows with the input (float32; measured {sc['measured_at']})", "",
                "| input | fwd GFLOP/img | FLOPs x | forward ms (b1) | fwd GFLOP/s | train images/s (batch) | train GFLOP/img | train GFLOP/s | ratio to matmul peak (best of rounds) |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in sc["rows"]:
            if "failed" in r:
                out.append(f"| {r['input'][0]}x{r['input'][1]} | FAILED: {r['failed']} | | | | | | | |")
                continue
            if "train_images_per_s" in r:
                train = (f"{r['train_images_per_s']} ({r['train_batch_groups']}x2) | {r['gflop_train_per_image']} | {r['train_gflop_s']} | "
                         f"{r['train_ratio_to_matmul_peak']} ({r.get('train_ratio_to_matmul_peak_best', '-')})")
            else:
                train = f"skipped: {r.get('training_skipped')} | - | - | -"
            out.append(f"| {r['input'][0]}x{r['input'][1]} | {r['gflop_forward_per_image']} | {r['flops_ratio_to_smallest']} | {r['forward_ms']} | {r['forward_gflop_s']} | {train} |")
        out.append("")
    b = results.get("breakdown")
    if b:
        med, share = b["median_s"], b["share_of_step"]
        out += [f"## Where a step goes (float32, {b['setting']['input'][0]}x{b['setting']['input'][1]}, {b['setting']['images_per_step']} images; measured {b['measured_at']})", "",
                "| part | seconds (median) | share of the step | best of rounds: seconds, share |", "|---|---|---|---|"]
        out += [f"| {k} | {med[k]} | {share[k]} | {b.get('best_s', {}).get(k, '-')}, {b.get('share_of_step_best', {}).get(k, '-')} |" for k in med]
        xla = [f"{k[len('xla_speedup_'):]} {v}x (best of rounds {b.get('xla_speedup_best_' + k[len('xla_speedup_'):], '-')}x)"
               for k, v in b.items() if k.startswith("xla_speedup_") and not k.startswith("xla_speedup_best_")]
        xla += [f"{k} fails ({v})" for k, v in b.get("xla_errors", {}).items()]
        out += ["", "XLA (jit_compile=True) speed-up: " + "; ".join(xla) + ". "
                f"Forward + backward (kdepth losses) runs at {b['forward_backward_gflop_s']} GFLOP/s (matmul peak {b['matmul_peak_float32_gflop_s']}). "
                f"Dense layers hold {round(b['dense_params'] / 1e6, 1)} M of {round(b['total_params'] / 1e6, 1)} M parameters.", "",
                "| layer | input | kernel | fwd+bwd ms | GFLOP | GFLOP/s | ratio to matmul peak (best of rounds) |", "|---|---|---|---|---|---|---|"]
        out += [f"| {r['layer']} | {'x'.join(map(str, r['input']))} | {'x'.join(map(str, r['kernel']))} | {r['ms']} | {r['gflop']} | {r['gflop_s']} | "
                f"{r['ratio_to_matmul_peak']} ({r.get('ratio_to_matmul_peak_best', '-')}) |" for r in b["layers"]]
        out += [f"| sum | | | {b['layers_sum_ms']} | | ({b['layers_sum_share_of_step']} of the step) | |", ""]
    for section, reason in failed.items():
        out += [f"## {section}: FAILED", "", reason, ""]
    return "\n".join(out)


def run_section(section, ctx, repeats, part_repeats, budget, child_args):
    if section == "efficiency":
        return section_efficiency(ctx, repeats)
    if section == "mixed_precision":
        return section_mixed_precision(ctx, repeats)
    if section == "set_loss_cost":
        return section_set_loss_cost(ctx, repeats)
    if section == "memory":
        return section_memory(ctx, budget)
    if section == "scaling":
        return section_scaling(ctx, child_args)
    return section_breakdown(ctx, part_repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs and few repeats (~2.5 minutes)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--repeats", type=int, help="timed rounds per figure (default 5, 3 for scaling/breakdown; quick 2)")
    parser.add_argument("--max-memory-gb", type=float,
                        help="skip training points whose weights + Adam state would exceed this (default 0.6 x MemAvailable)")
    # Internal: one piece of work in a fresh process (see run_child).
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--scaling-row", nargs=2, type=int, metavar=("H", "W"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-point", nargs=6, metavar=("H", "W", "BATCH", "G", "PRECISION", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_point:
        h, w, b, grp, precision, steps = args.memory_point
        memory_point(int(h), int(w), int(b), int(grp), precision, int(steps))
        return

    settings = QUICK if args.quick else FULL
    repeats = args.repeats or settings.repeats
    part_repeats = args.repeats or settings.part_repeats
    budget = args.max_memory_gb * 1e9 if args.max_memory_gb else 0.6 * (available_memory() or 8e9)
    child_args = [*(["--quick"] if args.quick else []), *(["--repeats", str(args.repeats)] if args.repeats else []),
                  "--max-memory-gb", f"{budget / 1e9:.2f}"]
    ctx = Context(settings)
    if args.scaling_row:
        emit(scaling_row(ctx, tuple(args.scaling_row), part_repeats, budget))
        return
    if args.section:
        out = run_section(args.section, ctx, repeats, part_repeats, budget, child_args)
        out["process_peak_rss_gb"] = gb(peak_rss())
        emit(out)
        return

    # Every section runs in a fresh process: memory held by one (trainers, compiled functions)
    # cannot pile up into the next, and a crash or out-of-memory kill loses one section only.
    name = "training_quick" if args.quick else "training"
    path = RESULTS / f"{name}.json"
    results = json.loads(path.read_text()).get("results", {}) if args.only and path.is_file() else {}
    sections = [s for s in RUN_ORDER if s in (args.only or SECTIONS)]
    meta = {"benchmark": "training", "mode": "quick" if args.quick else "full", "repeats": repeats,
            "part_repeats": part_repeats, "max_memory_gb": round(budget / 1e9, 2),
            "sections_run": [s for s in SECTIONS if s in sections]}
    for section in sections:
        log(f"== {section}")
        start = time.perf_counter()
        out = run_child(["--section", section, *child_args], f"section {section}")
        out["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
        out["section_seconds"] = round(time.perf_counter() - start, 1)
        results[section] = out
        log(f"== {section} done in {out['section_seconds']:.0f}s" + (f": FAILED {out['failed']}" if "failed" in out else ""))
        ordered = {k: results[k] for k in SECTIONS if k in results}
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": {**meta, "partial": True}, "results": ordered}, indent=2))  # progress so far
    meta["total_seconds"] = round(time.perf_counter() - _START, 1)
    ordered = {k: results[k] for k in SECTIONS if k in results}
    write_results(name, meta, ordered, render(ordered, {**meta, **machine_meta()}))


def machine_meta():
    from common import machine

    return machine()


if __name__ == "__main__":
    main()
