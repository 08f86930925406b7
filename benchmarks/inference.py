"""Inference at batch 1 per exported form: latency, file size and delta1, each against its reference.

    python benchmarks/inference.py [--quick] [--model RUN] [--threads 1 2] [--size H W]

The model: the run given by --model (a run, stage or .keras file, e.g. runs/quickstart), or
without it a freshly built untrained network (default config, 3 scales, --size, default 64x80),
whose heads start at zero so it predicts 2 m everywhere: its delta1 then means nothing, only
its latencies and sizes do. The network is exported with `kdepth.export.export_model` into a
temporary folder with every quantization (none = float32, fp16, dynamic, int8), which also runs
the export's own parity check.

Every form is loaded with `kdepth.inference.load_depth_model` and timed through the same call,
`DepthModel.predict` on one image (1, H, W, 3) raw RGB at the input size, so the figures include
kdepth's glue (quantizing the input, dequantizing the output), as a user of kdepth sees them:

  keras         the .keras network (a tf.function over the network, TensorFlow's own threads)
  saved_model   the exported SavedModel's serving signature (TensorFlow's own threads)
  tflite <q>    each .tflite with LiteRT (ai_edge_litert) and its default XNNPACK delegate, at
                each --threads count

The forms take turns in rounds (every form once per round, several calls each), so machine drift
hits all of them alike; a latency is the median over all calls, a ratio the median over rounds of
the per-round ratio. delta1 (and AbsRel, RMSE) against ground truth come from
`kdepth.evaluation.evaluate` on the synthetic validation split with the config's protocol
(Eigen crop unless the run says otherwise).

Targets: TFLite float32 no slower than Keras (LiteRT at as many threads as TensorFlow uses, one
per core; the other thread counts are reported beside it); int8 at most half the TFLite float32
latency (same threads) and within 0.01 delta1 of it; the int8 file at most 0.27 of the float32
file.
Results: benchmarks/results/inference.json and .md (inference_quick.* with --quick). About 3
minutes for the quickstart model on 2 shared cores, --quick about 1.
"""

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import write_results  # noqa: E402

from kdepth.config import defaults, load_config  # noqa: E402
from kdepth.data.sources import open_source  # noqa: E402
from kdepth.evaluation import evaluate  # noqa: E402
from kdepth.export import QUANTIZATIONS, export_model, format_size, resolve_model_source  # noqa: E402
from kdepth.inference import load_depth_model, resize_image  # noqa: E402
from kdepth.training.stages import network_from_config  # noqa: E402

TARGETS = {"tflite_vs_keras": 1.0, "int8_vs_float32_latency": 0.5, "int8_delta1": 0.01, "int8_size": 0.27}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Repeats and sizes of one run mode."""

    rounds: int
    calls: int  # timed calls per form per round
    eval_images: int  # synthetic validation images for delta1 (0 = the whole split)
    calibration: int  # int8 calibration images for the untrained network
    parity_images: int


FULL = Settings(rounds=15, calls=5, eval_images=0, calibration=64, parity_images=8)
QUICK = Settings(rounds=4, calls=3, eval_images=24, calibration=16, parity_images=2)

_START = time.perf_counter()


def log(message):
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", flush=True)


def untrained_network(tmp, size, settings):
    """Saves a freshly built network (default config at `size`) and returns (path, config)."""
    config = defaults().replace(
        model__input_size=list(size),
        model__backbone_weights="none",
        data__synthetic_train=max(settings.calibration, 8),
        export__representative_samples=settings.calibration,
    )
    keras.utils.set_random_seed(0)
    network = network_from_config(config, config.model.scales)
    path = Path(tmp) / "untrained.keras"
    network.save(path)
    return path, config


def load_forms(keras_path, out, threads):
    """{form: DepthModel} for every exported form, TFLite at each thread count."""
    forms = {"keras": load_depth_model(keras_path), "saved_model": load_depth_model(out / "saved_model")}
    for q in QUANTIZATIONS:
        for t in threads:
            forms[f"tflite {q} t{t}"] = load_depth_model(out / f"model_{q}.tflite", threads=t)
    return forms


def time_forms(forms, image, rounds, calls):
    """Per form: all call times (s) and the per-round medians, forms interleaved round by round."""
    x = image[None]
    for model in forms.values():  # warm-up: traces, allocations, XNNPACK packing
        model.predict(x)
        model.predict(x)
    times = {k: [] for k in forms}
    per_round = {k: [] for k in forms}
    for _ in range(rounds):
        for k, model in forms.items():
            batch = []
            for _ in range(calls):
                start = time.perf_counter()
                model.predict(x)
                batch.append(time.perf_counter() - start)
            times[k] += batch
            per_round[k].append(statistics.median(batch))
    return times, per_round


def round_ratio(per_round, form, reference):
    """Median over rounds of latency(form) / latency(reference) in the same round."""
    return statistics.median(a / b for a, b in zip(per_round[form], per_round[reference], strict=True))


def file_size(path):
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, 24 evaluation images")
    parser.add_argument("--model", help="a run folder, stage folder or .keras file; default: an untrained network")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="LiteRT thread counts (default 1 2)")
    parser.add_argument("--size", type=int, nargs=2, default=[64, 80], metavar=("H", "W"), help="input size of the untrained network")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if any(t < 1 for t in args.threads):
        parser.error(f"--threads must be >= 1, received {args.threads}")

    with tempfile.TemporaryDirectory(prefix="kdepth-inference-") as tmp:
        tmp = Path(tmp)
        if args.model:
            source = resolve_model_source(args.model)
            keras_path = source.keras_path
            config = load_config([source.config_path]) if source.config_path else defaults()
            trained = True
        else:
            keras_path, config = untrained_network(tmp, args.size, settings)
            trained = False
        log(f"exporting {keras_path} with {list(QUANTIZATIONS)}")
        report = export_model(
            keras_path, tmp / "export", list(QUANTIZATIONS), config=None if args.model else config,
            parity_images=settings.parity_images, echo=lambda m: None,
        )
        out = report.out_dir
        size = report.metadata["input"]["size"]
        log(f"exported: input {size[0]}x{size[1]}, parity {'ok' if report.ok else 'FAILED'}")

        forms = load_forms(keras_path, out, args.threads)
        # Ground truth from the synthetic source (the benchmark's data whatever the run trained on).
        eval_config = config.replace(data__source="synthetic", data__root="", model__input_size=list(size))
        data = open_source(eval_config.data, size)
        image = resize_image(data.load("val", 0)[0], size)

        log(f"timing {len(forms)} forms at batch 1: {settings.rounds} rounds x {settings.calls} calls")
        times, per_round = time_forms(forms, image, settings.rounds, settings.calls)

        log("delta1 on the synthetic validation split")
        accuracy = {}
        limit = settings.eval_images or None
        for q in ("keras", "saved_model", *QUANTIZATIONS):
            form = q if q in forms else f"tflite {q} t{args.threads[-1]}"
            r = evaluate(forms[form], data, "val", protocol=config.eval.protocol, limit=limit)
            accuracy[q] = {m: round(r.metrics[m], 4) for m in ("delta1", "abs_rel", "rmse")} | {"images": r.count}
            log(f"  {q}: delta1 {r.metrics['delta1']:.4f}")

        files = {"keras": file_size(keras_path), "saved_model": file_size(out / "saved_model")}
        files |= {q: file_size(out / f"model_{q}.tflite") for q in QUANTIZATIONS}
        infos = {k: m.info for k, m in forms.items()}

    results = {"forms": {}, "targets": {}}
    for form in forms:
        q = form.split()[1] if form.startswith("tflite") else form
        threads = int(form.split()[-1][1:]) if form.startswith("tflite") else None
        entry = {
            "quantization": q,
            "threads": threads if threads else "TensorFlow default",
            "latency_ms_median": round(1e3 * statistics.median(times[form]), 3),
            "latency_ms_p10_p90": [round(1e3 * float(np.percentile(times[form], p)), 3) for p in (10, 90)],
            "ratio_to_keras": round(round_ratio(per_round, form, "keras"), 4),
            "file_bytes": files[q],
            "delta1": accuracy[q]["delta1"],
            "abs_rel": accuracy[q]["abs_rel"],
            "rmse": accuracy[q]["rmse"],
            "info": infos[form],
        }
        if threads:
            entry["ratio_to_tflite_float32_same_threads"] = round(round_ratio(per_round, form, f"tflite none t{threads}"), 4)
            entry["size_ratio_to_float32"] = round(files[q] / files["none"], 4)
        results["forms"][form] = entry

    f = results["forms"]
    targets = results["targets"]
    # Keras and SavedModel run on TensorFlow's threads (one per core): compare LiteRT at as many threads.
    fair = min(args.threads, key=lambda t: (abs(t - (os.cpu_count() or 1)), -t))
    ratio = f[f"tflite none t{fair}"]["ratio_to_keras"]
    targets[f"tflite float32 t{fair} / keras ({os.cpu_count()} TF threads) latency <= {TARGETS['tflite_vs_keras']}"] = {
        "value": ratio, "met": ratio <= TARGETS["tflite_vs_keras"]
    }
    for t in args.threads:
        ratio = f[f"tflite int8 t{t}"]["ratio_to_tflite_float32_same_threads"]
        targets[f"int8 / float32 latency t{t} <= {TARGETS['int8_vs_float32_latency']}"] = {"value": ratio, "met": ratio <= TARGETS["int8_vs_float32_latency"]}
    gap = round(accuracy["none"]["delta1"] - accuracy["int8"]["delta1"], 4)
    targets[f"delta1 float32 - int8 <= {TARGETS['int8_delta1']}"] = {"value": gap, "met": gap <= TARGETS["int8_delta1"], "meaningful": trained}
    ratio = round(files["int8"] / files["none"], 4)
    targets[f"int8 file / float32 file <= {TARGETS['int8_size']}"] = {"value": ratio, "met": ratio <= TARGETS["int8_size"]}

    model_label = str(keras_path) if trained else f"untrained network {size[0]}x{size[1]} (3 scales): delta1 means nothing"
    lines = [
        f"Inference at batch 1 through kdepth.inference, model: {model_label}; input {size[0]}x{size[1]}. "
        f"Latency: median of {settings.rounds * settings.calls} calls, forms interleaved over {settings.rounds} rounds. "
        f"delta1 on {accuracy['none']['images']} synthetic validation images (protocol {config.eval.protocol})."
        + (" QUICK RUN." if args.quick else ""),
        "",
        "| form | threads | latency ms | p10-p90 ms | vs Keras | vs TFLite float32 (same threads) | file | size vs float32 | delta1 | AbsRel |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for form, e in f.items():
        vs_f32 = e.get("ratio_to_tflite_float32_same_threads", "-")
        size_ratio = e.get("size_ratio_to_float32", "-")
        name = form.rsplit(" t", 1)[0] if form.startswith("tflite") else form
        lines.append(
            f"| {name} | {e['threads'] if e['threads'] != 'TensorFlow default' else 'TF default'} | {e['latency_ms_median']} | "
            f"{e['latency_ms_p10_p90'][0]}-{e['latency_ms_p10_p90'][1]} | {e['ratio_to_keras']} | {vs_f32} | "
            f"{format_size(e['file_bytes'])} | {size_ratio} | {e['delta1']} | {e['abs_rel']} |"
        )
    lines += ["", "| target | value | met |", "|---|---|---|"]
    for name, t in targets.items():
        met = ("met" if t["met"] else "NOT met") + ("" if t.get("meaningful", True) else " (untrained: meaningless)")
        lines.append(f"| {name} | {t['value']} | {met} |")
    meta = {
        "benchmark": "inference",
        "quick": args.quick,
        "model": model_label,
        "trained": trained,
        "input_size": size,
        "threads": args.threads,
        "settings": dataclasses.asdict(settings),
        "parity_ok": report.ok,
        "int8_calibration": report.metadata["tflite"]["model_int8.tflite"].get("calibration"),
        "seconds": round(time.perf_counter() - _START, 1),
    }
    write_results("inference_quick" if args.quick else "inference", meta, results, "\n".join(lines))


if __name__ == "__main__":
    main()
