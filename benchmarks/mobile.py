"""The device targets, measured side by side: the MobileNetV2 network against the VGG16 one.

1. int8 size and latency at the deploy size (configs/mobile.toml, 192x256), both networks with
   all three scales and random weights (size and speed do not depend on the weights): batch 1,
   one LiteRT thread, the two interpreters invoked alternately so load on a shared machine hits
   both alike; medians and their ratio.
2. Accuracy after equal training wall time: stage 1 of each network on the synthetic rooms for
   `--seconds` of training steps (the step time is each network's own, so the mobile network
   takes more steps), two seeds each, then delta1 on the synthetic validation split. Run at
   `--acc-size` (default 96x128) so that the VGG16 network takes more than a handful of steps on
   a CPU; the int8 file of the first mobile run is exported and scored on the same split.

    python benchmarks/mobile.py --seconds 200            # results in benchmarks/results/mobile.json
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MOBILE_TOML = ROOT / "configs" / "mobile.toml"
COMMON_SETS = ["model.backbone_weights=none", "train.verbose=0", "train.tensorboard_images=0", "data.synthetic_train=500"]


def _int8_file(network, out, size):
    """Exports `network`'s serving model to an int8 .tflite as `kdepth export` does (random calibration)."""
    import numpy as np

    from kdepth.export import convert_tflite, fold_channel_flip, write_saved_model
    from kdepth.models import serving_graph

    folded, _ = fold_channel_flip(network)
    graph = serving_graph(folded.inputs[0], folded.output[network.final_scale], size)
    write_saved_model(graph, out / "saved_model")
    rng = np.random.default_rng(0)

    def representative():
        yield [np.zeros((1, *size, 3), np.float32)]
        yield [np.full((1, *size, 3), 255.0, np.float32)]
        for _ in range(8):
            yield [rng.uniform(0, 255, (1, *size, 3)).astype(np.float32)]

    path = out / "model_int8.tflite"
    path.write_bytes(convert_tflite(out / "saved_model", "int8", representative))
    return path


def _interleaved_latency(paths, repeats):
    """Median ms per invoke of each .tflite on 1 thread, invoked alternately."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    runners = {}
    for name, path in paths.items():
        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.random.default_rng(0).integers(0, 256, d["shape"]).astype(d["dtype"]))
        for _ in range(3):
            it.invoke()
        runners[name] = it
    times = {name: [] for name in paths}
    for _ in range(repeats):
        for name, it in runners.items():
            start = time.perf_counter()
            it.invoke()
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def size_and_latency(size, repeats):
    from kdepth.config import load_config
    from kdepth.training.stages import network_from_config

    sets = [f"model.input_size=[{size[0]}, {size[1]}]"]
    configs = {"mobile": load_config([MOBILE_TOML], sets), "vgg16": load_config([], sets)}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, config in configs.items():
            network = network_from_config(config, 3)
            folder = Path(tmp) / name
            paths[name] = _int8_file(network, folder, tuple(size))
            out[name] = {"parameters": network.count_params(), "int8_bytes": paths[name].stat().st_size}
            print(f"{name}: {out[name]['parameters']:,} parameters, int8 {out[name]['int8_bytes'] / 1e6:.2f} MB", flush=True)
        latency = _interleaved_latency(paths, repeats)
    for name, ms in latency.items():
        out[name]["int8_ms_1_thread"] = ms
    out["vgg16_over_mobile_latency"] = latency["vgg16"] / latency["mobile"]
    out["vgg16_over_mobile_size"] = out["vgg16"]["int8_bytes"] / out["mobile"]["int8_bytes"]
    return out


def _train_for(config, seconds):
    """Stage-1 training steps until `seconds` have passed; returns (parts, steps, seconds, source)."""
    from kdepth.data.pipeline import dataset_from_config
    from kdepth.data.sources import open_source
    from kdepth.training.stages import build_trainer

    source = open_source(config.data, config.model.input_size)
    parts = build_trainer(config, 1)
    train_ds, _ = dataset_from_config(config, config.data.train_split, training=True, source=source, repeat=True)
    batches = iter(train_ds)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        images, target = next(batches)
        parts.trainer.train_on_batch(images, target)
        steps += 1
    return parts, steps, time.perf_counter() - start, source


def _int8_delta1(config, network, tmp):
    """delta1 of the float32 and int8 files of a trained network on the validation split (export's parity rows)."""
    from kdepth.config import save_config
    from kdepth.export import export_model
    from kdepth.training import checkpoints

    stage = Path(tmp) / "run" / "stage1"
    stage.mkdir(parents=True)
    checkpoints.save_model(network, stage / "model.keras")
    save_config(config, stage)
    report = export_model(stage, Path(tmp) / "export", ["none", "int8"], parity_images=config.data.synthetic_val, echo=lambda *a: None)
    rows = {row.form: row.to_dict() for row in report.rows}
    return {form: rows[form]["delta1"] for form in ("keras", "tflite none", "tflite int8")}


def accuracy(size, seconds, seeds):
    from kdepth.config import load_config
    from kdepth.training.fit import final_metrics

    out = {"mobile": [], "vgg16": []}
    for seed in seeds:
        for name in ("vgg16", "mobile"):
            sets = [*COMMON_SETS, f"model.input_size=[{size[0]}, {size[1]}]", f"data.seed={seed}"]
            config = load_config([MOBILE_TOML] if name == "mobile" else [], sets)
            parts, steps, took, source = _train_for(config, seconds)
            _, _, val, baseline = final_metrics(config, parts.network, source, "scale2", config.data.val_split)
            row = {"seed": seed, "steps": steps, "seconds": round(took, 1), "val_delta1": val["delta1"], "baseline_delta1": baseline["delta1"]}
            if name == "mobile" and seed == seeds[0]:
                with tempfile.TemporaryDirectory() as tmp:
                    row["export_delta1"] = _int8_delta1(config, parts.network, tmp)
            out[name].append(row)
            print(name, row, flush=True)
    for name in ("mobile", "vgg16"):
        out[f"{name}_mean_delta1"] = statistics.mean(r["val_delta1"] for r in out[name])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256])
    parser.add_argument("--acc-size", type=int, nargs=2, default=[96, 128])
    parser.add_argument("--seconds", type=float, default=200.0, help="training wall time per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--repeats", type=int, default=50, help="latency invokes per model")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    result = {"machine": machine(), "size": args.size, "latency": size_and_latency(args.size, args.repeats)}
    print(json.dumps(result["latency"], indent=2), flush=True)
    if not args.skip_accuracy:
        result["acc_size"] = args.acc_size
        result["accuracy"] = accuracy(args.acc_size, args.seconds, args.seeds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mobile.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
