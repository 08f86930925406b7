"""What the real input pipeline costs a training step: steps/s fed by it against steps/s fed from memory.

    python benchmarks/pipeline_cost.py [--quick] [--points 64x80 ...] [--rounds N] [--steps N] [--samples N]

The training step is the one `kdepth fit` runs for stage 1 (built by
`kdepth.training.stages.build_trainer(config, 1)`), driven by `trainer.fit` with a timing callback. Its feeds:

  in-memory (reference)   4 real batches, already decoded, as tensors (`from_tensor_slices`,
                          repeated): the same shapes, no decoding.
  in-memory (A/A control) a second, identical in-memory feed timed as if it were a pipeline:
                          its "cost" is the noise floor of the method on this machine.
  synthetic, every step   the synthetic source rendered on the fly at the input size with the
                          cache off (the quickstart's default settings cache it).
  folder PNG, every step  the folder format written once with `kdepth.data.writer.write_source`
                          from the synthetic source at the stored size (8-bit RGB PNG + 16-bit
                          depth PNG; 480x640 like NYU frames, 240x320 with --quick), with
                          data.cache = false: every sample decoded and resized at every step.
  folder JPEG, every step the same files with the RGB saved as JPEG (quality 95).
  folder PNG / JPEG, default  the same folders with kdepth's default data.cache = "auto", which
                          caches these splits (decoded, resized uint8 samples kept in memory after
                          the first pass, which runs before the timed blocks).
  folder PNG at input size  the folder format written at the input size, cache off: what
                          resizing once when the data is written saves.

(Two tf.data threading options, tried on the PNG feed until 2026-12-01 and dropped, are in
docs/performance.md with their figures.)

Each is `kdepth.data.pipeline.dataset_from_config` exactly as fit builds it (training=True:
shuffle buffer 512, photometric jitter, flip groups of ("identity", "lr"), repeat). A block is one
`fit` call: `--steps` timed steps after a warm-up that covers the pipeline's start and the shuffle
buffer's fill. The feeds take turns in rounds, every real feed's block between two reference
blocks (ref, A/A, ref, synthetic, ref, PNG, ref, ...), so load from other jobs that changes over a
minute cancels out; a feed's ratio is the median over rounds of its steps/s over the mean of its
two neighbouring reference blocks (6 rounds of 8 steps at 64x80, 3 of 6 at 232x310; --quick: 2
of 5). Beside it, the same ratio of process CPU seconds per step (every thread of the process:
the step's and the pipeline's), which other jobs' load disturbs much less than wall time: it
says how much CPU the pipeline adds to a step. Target: the real pipeline costs at most 5%
(wall-time ratio >= 0.95).

Then the pipeline alone (no model) per source in samples/s and CPU ms per sample, on a persistent
iterator after the same warm-up, beside the samples/s the training step consumes: the headroom.
On a CPU the pipeline competes with the step for the same cores, so it costs time even with
headroom: about consumed / alone (the "CPU-share estimate", which needs no side-by-side timing
and so is not hit by other jobs' noise).

Points: 64x80 batch 8 (the quickstart) and 232x310 batch 2 (the paper's input size; skipped
with --quick); --points picks some. Results: benchmarks/results/pipeline_cost.json and .md
(pipeline_cost_quick.* with --quick), holding the points of the last run. On 2 shared cores the
64x80 point took 51 minutes under a load average of 5-8 (about half that when quiet), 232x310
takes about 40 (its step takes ~3.5 s), --quick about 6.
Shared machines drift: compare ratios, not absolute figures.
"""

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import write_results  # noqa: E402
from PIL import Image  # noqa: E402

from kdepth.config import load_config  # noqa: E402
from kdepth.data.pipeline import dataset_from_config, resolve_cache  # noqa: E402
from kdepth.data.sources import open_source  # noqa: E402
from kdepth.data.writer import write_source  # noqa: E402
from kdepth.training.stages import build_trainer as fit_build_trainer  # noqa: E402

TARGET_COST = 0.05
MEMORY_BATCHES = 4  # distinct batches the in-memory reference cycles through
JPEG_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and repeats of one run mode."""

    points: tuple  # ((H, W), batch, rounds, timed steps per block) per measured point
    stored_size: tuple  # size of the images written to the folder sources
    samples: int  # training samples written
    warmup: int  # untimed steps per block (pipeline start, shuffle-buffer fill)
    alone_batches: int  # timed batches of the pipeline alone


FULL = Settings(points=(((64, 80), 8, 6, 8), ((232, 310), 2, 3, 6)), stored_size=(480, 640), samples=200, warmup=3, alone_batches=40)
QUICK = Settings(points=(((64, 80), 8, 2, 5),), stored_size=(240, 320), samples=48, warmup=2, alone_batches=12)

REFERENCE = "in-memory (reference)"
CONTROL = "in-memory (A/A control)"
PNG_EVERY_STEP = "folder PNG, decoded every step (cache false)"
JPEG_EVERY_STEP = "folder JPEG, decoded every step (cache false)"
PNG_DEFAULT = "folder PNG, default settings (cache auto)"
JPEG_DEFAULT = "folder JPEG, default settings (cache auto)"

_START = time.perf_counter()


def log(message):
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", flush=True)


# ----------------------------------------------------------------------------------- data


def write_folders(root, samples, stored_size):
    """Writes the synthetic train split as folder PNG (write_source) and a JPEG copy; returns both roots."""
    png, jpeg = root / "png", root / "jpeg"
    write_png_folder(png, samples, stored_size)
    (jpeg / "train" / "rgb").mkdir(parents=True)
    shutil.copytree(png / "train" / "depth", jpeg / "train" / "depth")
    for path in sorted((png / "train" / "rgb").glob("*.png")):
        with Image.open(path) as img:
            img.convert("RGB").save(jpeg / "train" / "rgb" / f"{path.stem}.jpg", quality=JPEG_QUALITY)
    return png, jpeg


def write_png_folder(root, samples, size):
    """Writes `samples` synthetic train samples rendered at `size` in the folder format under `root`."""
    cfg = load_config([], [f"data.synthetic_train={samples}", "data.synthetic_val=1", "data.synthetic_test=1",
                           f"data.synthetic_size=[{size[0]}, {size[1]}]"])
    write_source(open_source(cfg.data, list(size)), root, splits=("train",))
    return root


def point_config(size, batch, samples, source="synthetic", root="", cache=False):
    """The kdepth config of one measured point: stage 1 at `size`, `batch` flip groups of 2 per step.

    `cache` is data.cache: True, False or "auto" (kdepth's default).
    """
    return load_config([], [
        f"model.input_size=[{size[0]}, {size[1]}]",
        "model.backbone_weights=none",
        f"train.batch_size={batch}",
        f"data.source={source}",
        f"data.root={root}",
        f"data.cache={str(cache).lower()}",
        f"data.synthetic_train={samples}",
        "data.synthetic_val=8",
        "data.synthetic_test=8",
    ])


def feeds(size, batch, samples, png, jpeg, small_png):
    """{label: training dataset}: the real pipelines as fit builds them, and the in-memory feeds."""
    configs = {
        "synthetic, rendered every step (cache false)": point_config(size, batch, samples),
        PNG_EVERY_STEP: point_config(size, batch, samples, "folder", png),
        JPEG_EVERY_STEP: point_config(size, batch, samples, "folder", jpeg),
        PNG_DEFAULT: point_config(size, batch, samples, "folder", png, cache="auto"),
        JPEG_DEFAULT: point_config(size, batch, samples, "folder", jpeg, cache="auto"),
        "folder PNG stored at input size (cache false)": point_config(size, batch, samples, "folder", small_png),
    }
    real = {}
    for label, cfg in configs.items():
        real[label], source = dataset_from_config(cfg, "train", training=True, repeat=True)
        log(f"  {label}: {resolve_cache(cfg, source, 'train', training=True)[1]}")
    batches = list(real[PNG_EVERY_STEP].take(MEMORY_BATCHES))
    images = tf.stack([b[0] for b in batches])
    target = {k: tf.stack([b[1][k] for b in batches]) for k in batches[0][1]}

    def memory():
        return tf.data.Dataset.from_tensor_slices((images, target)).repeat()

    return {REFERENCE: memory(), CONTROL: memory(), **real}, configs[PNG_EVERY_STEP]


# ---------------------------------------------------------------------------------- model


def build_trainer(config):
    """The stage-1 trainer exactly as `kdepth fit` builds and compiles it."""
    keras.utils.set_random_seed(config.train.seed)
    return fit_build_trainer(config, 1).trainer


class StepTimes(keras.callbacks.Callback):
    """Records the wall clock and the process CPU time at the end of every training batch."""

    def __init__(self):
        super().__init__()
        self.times, self.cpu = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())


def steps_per_second(trainer, dataset, warmup, steps):
    """(steps/s, process CPU seconds per step) of `trainer.fit` on `dataset` over `steps` steps after `warmup` untimed ones."""
    timer = StepTimes()
    trainer.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[timer], shuffle=False)
    return steps / (timer.times[-1] - timer.times[warmup - 1]), (timer.cpu[-1] - timer.cpu[warmup - 1]) / steps


def pipeline_alone(dataset, batch, warmup, batches):
    """(samples/s, process CPU ms per sample) of a dataset on its own (no model), on one iterator after `warmup` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    samples = batches * batch
    return samples / (time.perf_counter() - start), (time.process_time() - cpu) / samples * 1e3


# -------------------------------------------------------------------------------- measuring


def measure_point(size, batch, rounds, steps, settings, png, jpeg, tmp):
    """Rounds of training blocks per feed, then the pipelines alone; returns the point's results."""
    log(f"{size[0]}x{size[1]} batch {batch}: writing the folder at the input size, building the pipelines and the trainer")
    small_png = write_png_folder(tmp / f"png_{size[0]}x{size[1]}", settings.samples, size)
    datasets, config = feeds(size, batch, settings.samples, png, jpeg, small_png)
    trainer = build_trainer(config)
    # Trace the train step once, and fill the caches of the cached feeds (shared by all their
    # iterators once a first pass is complete), outside the timed blocks.
    steps_per_second(trainer, datasets[REFERENCE], 1, 1)
    for label in (PNG_DEFAULT, JPEG_DEFAULT):
        for _ in datasets[label].take(settings.samples // batch + 1):
            pass
    # Every other feed's block sits between two reference blocks (A B A C A ...): its ratio is to
    # the mean of its two neighbours, so load that changes over a minute cancels out.
    real = [label for label in datasets if label != REFERENCE]
    rates = {label: [] for label in datasets}
    cpus = {label: [] for label in datasets}
    ratios = {label: [] for label in real}
    cpu_ratios = {label: [] for label in real}
    for r in range(rounds):
        before, cpu_before = steps_per_second(trainer, datasets[REFERENCE], settings.warmup, steps)
        rates[REFERENCE].append(before)
        cpus[REFERENCE].append(cpu_before)
        for label in real:
            rate, cpu = steps_per_second(trainer, datasets[label], settings.warmup, steps)
            after, cpu_after = steps_per_second(trainer, datasets[REFERENCE], settings.warmup, steps)
            rates[label].append(rate)
            cpus[label].append(cpu)
            rates[REFERENCE].append(after)
            cpus[REFERENCE].append(cpu_after)
            ratios[label].append(rate / ((before + after) / 2))
            cpu_ratios[label].append(cpu / ((cpu_before + cpu_after) / 2))
            before, cpu_before = after, cpu_after
        log(f"  round {r + 1}/{rounds}: in-memory {statistics.median(rates[REFERENCE][-len(real) - 1:]):.3f} steps/s; ratios "
            + ", ".join(f"{label} {ratios[label][-1]:.3f}" for label in real))
    images_per_step = batch * len(config.data.flip_group)
    training = {}
    for label, values in rates.items():
        ratio = statistics.median(ratios[label]) if label in ratios else 1.0
        cpu_ratio = statistics.median(cpu_ratios[label]) if label in cpu_ratios else 1.0
        training[label] = {
            "steps_per_s": round(statistics.median(values), 4),
            "images_per_s": round(statistics.median(values) * images_per_step, 2),
            "ratio_to_reference": round(ratio, 4),
            "cost": round(1.0 - ratio, 4),
            "target_met": None if label in (REFERENCE, CONTROL) else bool(1.0 - ratio <= TARGET_COST),
            "target_met_by_cpu": None if label in (REFERENCE, CONTROL) else bool(cpu_ratio - 1.0 <= TARGET_COST),
            "cpu_s_per_step": round(statistics.median(cpus[label]), 4),
            "cpu_ratio_to_reference": round(cpu_ratio, 4),
            "blocks_steps_per_s": [round(v, 4) for v in values],
            "blocks_cpu_s_per_step": [round(v, 4) for v in cpus[label]],
            "rounds_ratio": [round(v, 4) for v in ratios.get(label, [])],
            "rounds_cpu_ratio": [round(v, 4) for v in cpu_ratios.get(label, [])],
        }
    log("  the pipelines alone (no model)")
    consumed = training[REFERENCE]["steps_per_s"] * batch
    alone = {}
    for label, ds in datasets.items():
        if label in (REFERENCE, CONTROL):
            continue
        rate, cpu_ms = pipeline_alone(ds, batch, settings.warmup + 2, settings.alone_batches)
        # If the step and the pipeline each keep every core busy, feeding the step takes this
        # share of the machine: a noise-free estimate of the cost to set beside the measured one.
        alone[label] = {"samples_per_s": round(rate, 1), "cpu_ms_per_sample": round(cpu_ms, 2), "headroom": round(rate / consumed, 2),
                        "cpu_share_estimate": round(consumed / rate, 4)}
        log(f"    {label}: {rate:.1f} samples/s, {cpu_ms:.2f} CPU ms/sample")
    del trainer
    keras.backend.clear_session()
    return {
        "input_size": list(size),
        "batch": batch,
        "flip_group": list(config.data.flip_group),
        "images_per_step": images_per_step,
        "rounds": rounds,
        "timed_steps_per_block": steps,
        "training": training,
        "samples_per_s_consumed_by_training": round(consumed, 2),
        "pipeline_alone": alone,
    }


def table(points, settings, quick):
    lines = [
        "Training step (stage 1, flip group of 2) fed by each pipeline vs. the same step fed from memory; "
        "steps/s: median over blocks; ratio: median over rounds of steps/s / mean of the two neighbouring in-memory blocks; "
        "CPU ratio: the same for process CPU seconds per step; the A/A control is a second in-memory feed (its cost is the "
        f"method's noise floor); folder images stored at {settings.stored_size[0]}x{settings.stored_size[1]} unless "
        f"said otherwise.{' QUICK RUN.' if quick else ''}",
        "",
        "| input | batch | rounds x steps | feed | steps/s | images/s | ratio to in-memory | cost | per-round ratios "
        "| CPU/step ratio | per-round CPU ratios | target cost <= 5%: wall / CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def verdict(met):
        return "-" if met is None else ("met" if met else "NOT met")

    for p in points:
        size = f"{p['input_size'][0]}x{p['input_size'][1]}"
        for label, r in p["training"].items():
            per_round = " ".join(f"{v:.2f}" for v in r["rounds_ratio"]) or "-"
            per_round_cpu = " ".join(f"{v:.3f}" for v in r["rounds_cpu_ratio"]) or "-"
            lines.append(f"| {size} | {p['batch']} | {p['rounds']} x {p['timed_steps_per_block']} | {label} | {r['steps_per_s']} | "
                         f"{r['images_per_s']} | {r['ratio_to_reference']} | {r['cost']:.1%} | {per_round} | {r['cpu_ratio_to_reference']} | "
                         f"{per_round_cpu} | {verdict(r['target_met'])} / {verdict(r['target_met_by_cpu'])} |")
    lines += ["", "The pipeline alone (no model): samples/s, process CPU ms per sample; headroom = samples/s / the samples/s the "
              "training step consumes (in-memory steps/s x batch); CPU-share estimate of the cost = consumed / alone (the share "
              "of the machine the pipeline needs when both it and the step use every core):", "",
              "| input | batch | source | samples/s | CPU ms/sample | training consumes | headroom | CPU-share estimate | measured cost |",
              "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        size = f"{p['input_size'][0]}x{p['input_size'][1]}"
        for label, r in p["pipeline_alone"].items():
            lines.append(f"| {size} | {p['batch']} | {label} | {r['samples_per_s']} | {r['cpu_ms_per_sample']} | "
                         f"{p['samples_per_s_consumed_by_training']} | {r['headroom']}x | {r['cpu_share_estimate']:.1%} | "
                         f"{p['training'][label]['cost']:.1%} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64x80 only, 240x320 stored images, fewer samples, rounds and steps")
    parser.add_argument("--points", nargs="+", metavar="HxW", help="measure only these input sizes (default: 64x80 232x310; quick 64x80)")
    parser.add_argument("--rounds", type=int, help="rounds at every point (default 6 at 64x80, 3 at 232x310; quick 2)")
    parser.add_argument("--steps", type=int, help="timed steps per block at every point (default 8 at 64x80, 6 at 232x310; quick 5)")
    parser.add_argument("--samples", type=int, help="training samples written to the folders (default 200, quick 48)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    for name in ("rounds", "steps", "samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, received {value}")
    known = {f"{size[0]}x{size[1]}": size for size, *_ in settings.points}
    unknown = sorted(set(args.points or ()) - set(known))
    if unknown:
        parser.error(f"--points received {unknown}; this mode measures {sorted(known)}")
    points = tuple((size, batch, args.rounds or rounds, args.steps or steps) for size, batch, rounds, steps in settings.points
                   if not args.points or f"{size[0]}x{size[1]}" in args.points)
    settings = dataclasses.replace(settings, points=points, samples=args.samples or settings.samples)

    points = []
    with tempfile.TemporaryDirectory(prefix="kdepth-pipeline-cost-") as tmp:
        log(f"writing {settings.samples} synthetic samples at {settings.stored_size[0]}x{settings.stored_size[1]} as folder PNG and JPEG")
        png, jpeg = write_folders(Path(tmp), settings.samples, settings.stored_size)
        for size, batch, rounds, steps in settings.points:
            points.append(measure_point(size, batch, rounds, steps, settings, png, jpeg, Path(tmp)))
    meta = {
        "benchmark": "pipeline_cost",
        "quick": args.quick,
        "settings": dataclasses.asdict(settings),
        "target": f"cost = 1 - steps/s(pipeline) / steps/s(in-memory) <= {TARGET_COST}",
        "seconds": round(time.perf_counter() - _START, 1),
    }
    write_results("pipeline_cost_quick" if args.quick else "pipeline_cost", meta, points, table(points, settings, args.quick))


if __name__ == "__main__":
    main()
