"""The device targets, measured side by side: the MobileNetV2 network against the VGG16 one.

1. int8 size and latency at the deploy size (configs/mobile.toml, 192x256), both networks with
   all three scales and random weights (size and speed do not depend on the weights): batch 1,
   one LiteRT thread, the two interpreters invoked alternately so load on a shared machine hits
   both alike; medians and their ratio.
2. Accuracy after equal training wall time: the two networks' train steps are timed side by
   side at `--acc-size` (default 64x96, small enough for VGG16 to take a few hundred steps on a
   CPU); then `kdepth fit --stage 1` of each on the synthetic rooms, VGG16 for `--epochs` x
   `--vgg-steps` steps and the mobile network for as many epochs of (vgg-steps x the step-time
   ratio) steps, so both train for the same wall time, each with its own config's schedule over
   its own steps; two seeds each, delta1 on the synthetic validation split. The int8 file of
   the first mobile run is exported and scored on the same split.

    python benchmarks/mobile.py                          # results in benchmarks/results/mobile.json
    python benchmarks/mobile.py --skip-accuracy          # size and latency only, about 2 minutes
    python benchmarks/mobile.py --skip-latency --networks vgg16   # one network's accuracy runs only
    python benchmarks/mobile.py --skip-accuracy --variant model.head_kernel_size=3   # a third file beside them

3. With `--cuts`: where the mobile network's int8 time goes, the network built with scale 1 only,
   scales 1-2 and all three (each served at the deploy size, so the serving resize is in all
   three), invoked alternately like the two networks.
4. With `--ops`: what one int8 op of each costly kind takes at the deploy size's scale-3 grid
   (separable, depthwise, pointwise and full 3x3 convolutions at `model.width` channels, the
   heads, the convolutions that read the image), each op alone against four copies of it.
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
# 8000 rooms: the mobile network reads them under 4 times in VGG16's time; 500 let it overfit.
COMMON_SETS = ["model.backbone_weights=none", "train.verbose=0", "train.tensorboard_images=0", "data.synthetic_train=8000"]


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


def size_and_latency(size, repeats, variants=()):
    """int8 size and latency of the two networks, and of configs/mobile.toml with each `--set` in `variants`."""
    from kdepth.config import load_config
    from kdepth.training.stages import network_from_config

    sets = [f"model.input_size=[{size[0]}, {size[1]}]"]
    configs = {"mobile": load_config([MOBILE_TOML], sets), "vgg16": load_config([], sets)}
    configs.update({f"mobile {v}": load_config([MOBILE_TOML], [*sets, v]) for v in variants})
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, (name, config) in enumerate(configs.items()):
            network = network_from_config(config, 3)
            folder = Path(tmp) / f"network{i}"
            paths[name] = _int8_file(network, folder, tuple(size))
            out[name] = {"parameters": network.count_params(), "int8_bytes": paths[name].stat().st_size}
            print(f"{name}: {out[name]['parameters']:,} parameters, int8 {out[name]['int8_bytes'] / 1e6:.2f} MB", flush=True)
        latency = _interleaved_latency(paths, repeats)
    for name, ms in latency.items():
        out[name]["int8_ms_1_thread"] = ms
    out["vgg16_over_mobile_latency"] = latency["vgg16"] / latency["mobile"]
    out["vgg16_over_mobile_size"] = out["vgg16"]["int8_bytes"] / out["mobile"]["int8_bytes"]
    return out


def cut_latency(size, repeats):
    """Median int8 ms of the mobile network with 1, 2 and 3 scales, random weights, invoked alternately."""
    from kdepth.config import load_config
    from kdepth.training.stages import network_from_config

    config = load_config([MOBILE_TOML], [f"model.input_size=[{size[0]}, {size[1]}]"])
    with tempfile.TemporaryDirectory() as tmp:
        paths = {f"scales 1-{n}": _int8_file(network_from_config(config, n), Path(tmp) / f"scales{n}", tuple(size))
                 for n in (1, 2, 3)}
        return _interleaved_latency(paths, repeats)


def _op_models(size, width):
    """{name: (input shape, layer factory)} of the mobile network's costly op kinds at `size`."""
    import keras

    from kdepth.models.depth_network import scale_sizes

    layers = keras.layers
    h3, w3 = scale_sizes(size)["scale3"]
    wide, sep = width * 3 // 2, dict(padding="same", activation="relu")
    return {
        "image branch conv1: separable 3x3/2, 3 -> 1.5 x width": ((*size, 3), lambda: layers.SeparableConv2D(wide, 3, strides=2, **sep)),
        "MobileNetV2 Conv1: 3x3/2, 3 -> 16": ((*size, 3), lambda: layers.Conv2D(16, 3, strides=2, **sep)),
        "separable 3x3, width -> width": ((h3, w3, width), lambda: layers.SeparableConv2D(width, 3, **sep)),
        "its depthwise 3x3 alone": ((h3, w3, width), lambda: layers.DepthwiseConv2D(3, **sep)),
        "its pointwise 1x1 alone": ((h3, w3, width), lambda: layers.Conv2D(width, 1, **sep)),
        "full 3x3, width -> width": ((h3, w3, width), lambda: layers.Conv2D(width, 3, **sep)),
        "head 3x3, width -> 1": ((h3, w3, width), lambda: layers.Conv2D(1, 3, padding="same")),
        "head 1x1, width -> 1": ((h3, w3, width), lambda: layers.Conv2D(1, 1, padding="same")),
    }


def op_latency(size, width, repeats):
    """Median int8 ms of one op of each kind in `_op_models`, at the scale-3 grid of `size`.

    Each op is converted twice, once alone and once as four copies reading the same input, and
    (t4 - t1) / 3 is its time: the input's quantization and the outputs' copies cancel. All the
    files are invoked alternately.
    """
    import keras
    import numpy as np

    from kdepth.export import convert_tflite, write_saved_model

    rng = np.random.default_rng(0)
    ops = _op_models(tuple(size), width)
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (shape, make)) in enumerate(ops.items()):
            for copies in (1, 4):
                x = keras.Input(shape=shape)
                folder = Path(tmp) / f"op{i}x{copies}"
                write_saved_model(keras.Model(x, [make()(x) for _ in range(copies)]), folder)
                samples = [rng.uniform(-1, 1, (1, *shape)).astype(np.float32) for _ in range(8)]
                paths[(name, copies)] = folder / "model.tflite"
                paths[(name, copies)].write_bytes(convert_tflite(folder, "int8", lambda s=samples: ([x] for x in s)))
        ms = _interleaved_latency(paths, repeats)
    return {name: (ms[(name, 4)] - ms[(name, 1)]) / 3 for name in ops}


def _step_seconds(configs, repeats):
    """Median seconds of a stage-1 train step of each config on a real batch, the networks stepped alternately."""
    from kdepth.data.pipeline import dataset_from_config
    from kdepth.training.stages import build_trainer

    runs = {}
    for name, config in configs.items():
        trainer = build_trainer(config, 1).trainer
        images, target = next(iter(dataset_from_config(config, config.data.train_split, training=True)[0]))
        for _ in range(2):  # trace and warm up
            trainer.train_on_batch(images, target)
        runs[name] = (trainer, images, target)
    times = {name: [] for name in configs}
    for _ in range(repeats):
        for name, (trainer, images, target) in runs.items():
            start = time.perf_counter()
            trainer.train_on_batch(images, target)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _fit_stage1(config, run_dir, name):
    """`kdepth fit --stage 1` of `config` under run_dir (no checkpoints); returns its FitResult."""
    from kdepth.training.fit import fit

    config = config.replace(train__run_dir=str(run_dir), train__name=name, train__checkpoints=False)
    return fit(config, stage=1, echo=lambda *a: None)


def _export_delta1(stage_dir, out, parity_images):
    """delta1 of a trained stage's Keras model and its float32 and int8 files (export's parity rows)."""
    from kdepth.export import export_model

    report = export_model(stage_dir, out, ["none", "int8"], parity_images=parity_images, echo=lambda *a: None)
    rows = {row.form: row.to_dict() for row in report.rows}
    return {form: rows[form]["delta1"] for form in ("keras", "tflite none", "tflite int8")}


def accuracy(size, epochs, vgg_steps, seeds, networks=("vgg16", "mobile")):
    """Stage 1 of each network for the same training wall time, two seeds each; delta1 on the val split.

    The step times are measured side by side first; the VGG16 run trains `epochs` x `vgg_steps`
    steps and the mobile run `epochs` x (vgg_steps x the step-time ratio), each with its own
    config's full schedule (warm-up and cosine decay over its own steps). The fits' wall times
    are recorded to show they match. `networks` trains only those (the step times of both are
    measured all the same), e.g. to rerun the mobile network after a change of configs/mobile.toml.
    """
    from kdepth.config import load_config

    def config(name, seed, steps):
        sets = [*COMMON_SETS, f"model.input_size=[{size[0]}, {size[1]}]", f"data.seed={seed}", f"train.seed={seed}",
                f"train.epochs={epochs}", f"train.steps_per_epoch={steps}"]
        return load_config([MOBILE_TOML] if name == "mobile" else [], sets)

    step = _step_seconds({name: config(name, 0, 1) for name in ("vgg16", "mobile")}, repeats=15)
    ratio = step["vgg16"] / step["mobile"]
    steps = {"vgg16": vgg_steps, "mobile": max(1, round(vgg_steps * ratio))}
    print(f"step time: vgg16 {step['vgg16']:.3f} s, mobile {step['mobile']:.3f} s ({ratio:.1f}x); steps per epoch {steps}", flush=True)
    out = {"step_seconds": step, "step_ratio": ratio, "epochs": epochs, "steps_per_epoch": steps, **{n: [] for n in networks}}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for name in networks:
                cfg = config(name, seed, steps[name])
                result = _fit_stage1(cfg, Path(tmp) / "runs", f"{name}_seed{seed}")
                row = {"seed": seed, "steps": epochs * steps[name], "fit_seconds": round(result.seconds, 1),
                       "val_delta1": result.val["delta1"], "baseline_delta1": result.baseline["delta1"]}
                if name == "mobile" and seed == seeds[0]:
                    row["export_delta1"] = _export_delta1(result.stage_dir, Path(tmp) / "export", cfg.data.synthetic_val)
                out[name].append(row)
                print(name, row, flush=True)
    for name in networks:
        out[f"{name}_mean_delta1"] = statistics.mean(r["val_delta1"] for r in out[name])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256])
    parser.add_argument("--acc-size", type=int, nargs=2, default=[64, 96])
    parser.add_argument("--epochs", type=int, default=12, help="epochs of every accuracy run")
    parser.add_argument("--vgg-steps", type=int, default=30, help="steps per epoch of the VGG16 runs (mobile: x the step-time ratio)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--repeats", type=int, default=60, help="latency invokes per model")
    parser.add_argument("--networks", nargs="+", choices=("vgg16", "mobile"), default=["vgg16", "mobile"],
                        help="the networks the accuracy part trains")
    parser.add_argument("--name", default="mobile", help="results file: benchmarks/results/NAME.json")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-latency", action="store_true", help="only the accuracy part (e.g. beside another job)")
    parser.add_argument("--cuts", action="store_true", help="also time the mobile network with 1, 2 and 3 scales")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                        help="also time configs/mobile.toml with this --set beside the two, e.g. model.head_kernel_size=3")
    parser.add_argument("--ops", action="store_true", help="also time single ops of its scale-3 grid, one kind at a time")
    args = parser.parse_args()
    result = {"machine": machine(), "size": args.size}
    if not args.skip_latency:
        result["latency"] = size_and_latency(args.size, args.repeats, args.variant)
        print(json.dumps(result["latency"], indent=2), flush=True)
    if args.cuts:
        result["cuts_ms"] = cut_latency(args.size, args.repeats)
        print(json.dumps(result["cuts_ms"], indent=2), flush=True)
    if args.ops:
        from kdepth.config import load_config

        width = load_config([MOBILE_TOML]).model.width
        result["ops_ms"] = op_latency(args.size, width, args.repeats)
        print(json.dumps(result["ops_ms"], indent=2), flush=True)
    if not args.skip_accuracy:
        result["acc_size"] = args.acc_size
        result["accuracy"] = accuracy(args.acc_size, args.epochs, args.vgg_steps, args.seeds, args.networks)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
