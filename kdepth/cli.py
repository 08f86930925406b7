"""The `kdepth` command line: thin click commands over plain functions that tests call directly."""

import functools
import gc
import os
import shlex
import sys

import click

from kdepth import quiet
from kdepth.config import choices
from kdepth.errors import KdepthError

# TensorFlow's C++ start-up chatter hides the messages users need; errors still show.
quiet.configure_environment()


def _handle_errors(fn, *, tensorflow=True):
    """Turns a KdepthError into a one-line message and exit code 1 instead of a traceback.

    With `tensorflow` (True, or a function of the command's keyword arguments that says whether
    this call needs it), TensorFlow is imported first, without its start-up lines
    (`kdepth.quiet`).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if tensorflow is True or (callable(tensorflow) and tensorflow(kwargs)):
            quiet.start_tensorflow()
        try:
            return fn(*args, **kwargs)
        except KdepthError as e:
            message = f"error: {e}"
        click.echo(message, err=True)
        # The error's traceback holds the failed command's tf.data iterators, which may still
        # have a numpy_function (a sample being read) in flight. Freed during interpreter
        # shutdown they deadlock it (the process printed the error, then hung for good), so
        # free them now, outside the except block, while Python is fully alive.
        gc.collect()
        sys.exit(1)

    return wrapper


def _needs_tensorflow(kwargs):
    """False for a .tflite model on data read without TensorFlow: the LiteRT-only device path."""
    from kdepth.paths import resolve_model_path

    try:
        kind, _ = resolve_model_path(kwargs["model_path"])
    except KdepthError:
        return False  # the command itself reports the bad path
    return kind != "tflite" or str(kwargs.get("data_spec") or "").startswith("tfds")


def config_options(fn):
    """Adds --config FILE and repeatable --set section.key=value to a command."""
    fn = click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override one config key (repeatable), e.g. --set train.epochs=5.",
    )(fn)
    fn = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Experiment TOML file (keys not in it keep the defaults of configs/base.toml).",
    )(fn)
    return fn


def resolve_config(config_path, sets, data=None):
    """Loads the config and applies --set overrides, then --data (a source spec) if given."""
    from kdepth.config import load_config

    config = load_config([config_path] if config_path else [], sets)
    if data:
        from kdepth.data.sources import parse_data_spec

        source, root = parse_data_spec(data)
        config = config.replace(data__source=source, data__root=root)
    return config


INPUT_RANGE_HELP = (
    "Pixel range the model takes. auto: from a uint8/int8 input's quantization (scale 1/255: 0-1, scale 1: "
    "0-255), else 0-255 (kdepth's models) [default: eval.input_range, auto]."
)


def _parse_size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"received {text!r}; expected HxW, e.g. 240x320.") from None
    if h < 8 or w < 8:
        raise click.BadParameter(f"received {text!r}; both sides must be at least 8 pixels.")
    return [h, w]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kdepth")
@click.option(
    "--tf-log", is_flag=True,
    help="Show TensorFlow's and CUDA's own start-up and log lines (hidden by default on a machine without an "
    "NVIDIA GPU; with a GPU only the harmless ones are hidden). Same as the environment variable KDEPTH_TF_LOG=1.",
)
def main(tf_log):
    """kdepth: predict depth from a single RGB image (Li, Klein & Yao's three-scale network).

    \b
    Quickstart:
      kdepth fit --stage 1                 # train on built-in synthetic rooms
      tensorboard --logdir runs            # watch it
      kdepth data show synthetic --out sheet.png
    """
    if tf_log:
        quiet.restore_tf_log()


# ---------------------------------------------------------------------------------------- data


@main.group()
def data():
    """Make, check and look at RGB-D data.

    SOURCE is `synthetic`, a folder (ROOT/{train,val,test}/{rgb,depth}/), a manifest .txt,
    `tfds` or `tfds:DATA_DIR` (nyu_depth_v2), or an nyu_depth_v2_labeled.mat file.

    \b
    Example:
      kdepth data synth --out data/synth --count 200
      kdepth data check data/synth
      kdepth data show data/synth --out sheet.png
    """


@data.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New folder to write.")
@click.option("--count", default=200, show_default=True, type=click.IntRange(min=1), help="Training samples.")
@click.option(
    "--eval-count",
    default=None,
    type=click.IntRange(min=1),
    help="Samples in each of val and test [default: max(1, count // 10)].",
)
@click.option("--size", default="240x320", show_default=True, help="Image size HxW.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@config_options
@_handle_errors
def synth(out, count, eval_count, size, seed, config_path, sets):
    """Write synthetic rooms in the folder format (train/val/test).

    The folder is complete or refused: OUT/synth.json is written first and marked complete
    last, so an interrupted run leaves a folder that `data check`, `fit` and `evaluate` refuse
    with the command that finishes it. Running the same command again renders only the
    missing samples; another command on it is refused, naming the difference.

    \b
    Example:
      kdepth data synth --out data/synth --count 200 --size 240x320
      kdepth data check data/synth
    """
    from kdepth.config import save_config
    from kdepth.data import plan
    from kdepth.data.sources import open_source
    from kdepth.data.writer import write_source

    eval_count = eval_count or max(1, count // 10)
    hw = _parse_size(size)
    config = resolve_config(config_path, sets).replace(
        data__source="synthetic",
        data__seed=seed,
        data__synthetic_train=count,
        data__synthetic_val=eval_count,
        data__synthetic_test=eval_count,
        data__synthetic_size=hw,
    )
    args = ["--count", str(count), "--eval-count", str(eval_count), "--size", f"{hw[0]}x{hw[1]}", "--seed", str(seed)]
    args += ["--config", os.path.abspath(config_path)] if config_path else []
    args += [a for s in sets for a in ("--set", s)]
    source = open_source(config.data, config.model.input_size)
    done = plan.start(out, plan.settings_of(config.data, hw), args)
    total = count + 2 * eval_count
    if done:
        click.echo(f"finishing {out}: {done} of {total} samples are in place; writing the other {total - done}")
    save_config(config, out)  # the rendering settings, so the data set can be made again
    try:
        with click.progressbar(length=total, label=f"writing {out}") as bar:
            counts = write_source(
                source, out, depth_scale=config.data.depth_scale, progress=lambda *_: bar.update(1), skip_existing=True
            )
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {out} is incomplete. Finish it with:\n  {plan.synth_command(out, args)}", err=True)
        sys.exit(130)
    plan.mark_complete(out)
    click.echo(f"wrote {counts} samples at {size} to {out} (depth: 16-bit PNG, millimetres, 0 = hole)")


@data.command()
@click.argument("source")
@click.option("--split", "splits", multiple=True, help="Split to check (repeatable) [default: every split of the source].")
@config_options
@_handle_errors
def check(source, splits, config_path, sets):
    """Check every sample of a source; exit 1 if anything is wrong.

    Reports each bad file by path with the reason, then counts, resolution, depth range and
    valid-pixel fraction per split.

    \b
    Example:
      kdepth data check data/synth
      kdepth data check data/nyu/train.txt --split train
    """
    from kdepth.data.check import check_source
    from kdepth.data.sources import open_source

    config = resolve_config(config_path, sets, data=source)
    opened = open_source(config.data, config.model.input_size)
    if not splits and len(opened.splits()) == 1:
        click.echo(f"split: {opened.splits()[0]!r}, the only split of {opened.name}")
    report = check_source(opened, list(splits) or None)
    click.echo(report.format())
    sys.exit(0 if report.ok else 1)


@data.command()
@click.argument("source")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--split", default="train", show_default=True)
@click.option("--count", default=8, show_default=True, type=click.IntRange(min=1))
@config_options
@_handle_errors
def show(source, out, split, count, config_path, sets):
    """Write a contact sheet: RGB beside colourised depth (holes in a distinct colour).

    \b
    Example:
      kdepth data show synthetic --out sheet.png --count 6
    """
    from kdepth.data.sources import open_source
    from kdepth.visualize import write_contact_sheet

    config = resolve_config(config_path, sets, data=source)
    write_contact_sheet(open_source(config.data, config.model.input_size), split, out, count=count)
    click.echo(f"wrote {out}")


# ----------------------------------------------------------------------------------------- fit


@main.command()
@click.option("--stage", type=click.IntRange(1, 3), default=None, help="1: scales 1+2; 2: scale 3, others frozen; 3: fine-tune all [default: train.stage].")
@click.option("--data", "data_spec", default=None, help="Data source: synthetic, a folder, a manifest .txt, tfds[:DIR], or a .mat file.")
@click.option("--name", default=None, help="Run name: outputs go to runs/NAME/stageN [default: train.name].")
@click.option("--backbone-weights", default=None, help="VGG16 weights: auto, imagenet, none, or a .h5 path [default: model.backbone_weights].")
@click.option("--init", "init", default=None, type=click.Path(), help="Start from this .keras model or stage folder instead of the previous stage.")
@click.option("--overfit", default=0, type=click.IntRange(min=0), help="Train on N training images until they are fitted (pipeline check).")
@click.option(
    "--strategy", type=click.Choice(choices("train", "strategy")), default=None,
    help="default: one device; mirrored: every GPU of this machine; multiworker: several machines, one process each, "
    "described by TF_CONFIG [default: train.strategy].",
)
@click.option(
    "--on-nan", "on_nan", type=click.Choice(choices("train", "on_nan")), default=None,
    help="A non-finite loss: stop (keep the last backup, name the term) or skip-batch (skip that batch's update; "
    "stops after 10 in a row) [default: train.on_nan].",
)
@click.option(
    "--overwrite", is_flag=True,
    help="Replace a finished stage in runs/NAME/stageN (kept aside until the new run finishes) instead of stopping.",
)
@config_options
@_handle_errors
def fit(stage, data_spec, name, backbone_weights, init, overfit, strategy, on_nan, overwrite, config_path, sets):
    """Train one stage of the three-scale network.

    Re-running the same command after a crash resumes from the last backup, mid-epoch. Ctrl-C
    saves a backup at the next batch end and exits (code 130); run the same command to resume.
    A finished stage is never overwritten (use --name NEW or --overwrite), one process at a
    time trains a run folder, and a resume with settings that change the model, the data or
    their order is refused.

    \b
    Examples:
      kdepth fit --stage 1                                  # quickstart: synthetic rooms (README: Quickstart)
      kdepth fit --stage 2                                  # scale 3 on top of stage 1
      kdepth fit --stage 1 --config configs/paper.toml --data tfds:~/tensorflow_datasets
      kdepth fit --overfit 3                                # can the network fit 3 images?
      kdepth fit --strategy mirrored                        # every GPU of this machine
      TF_CONFIG='{...}' kdepth fit --strategy multiworker   # on each machine (docs/distributed.md)
      tensorboard --logdir runs
    """
    from kdepth.training.fit import fit as run_fit

    config = resolve_config(config_path, sets, data=data_spec)
    overrides = {"train__name": name, "model__backbone_weights": backbone_weights, "train__init": init, "train__strategy": strategy}
    overrides["train__on_nan"] = on_nan
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
    from kdepth.training.callbacks import TrainingInterrupted

    try:
        result = run_fit(config, stage=stage, overfit=overfit, overwrite=overwrite, echo=click.echo)
    except TrainingInterrupted as e:
        command = shlex.join(["kdepth", *sys.argv[1:]]) if sys.argv[1:2] == ["fit"] else "the same `kdepth fit ...` command"
        click.echo(f"\n{e}.\nResume with:\n  {command}", err=True)
        sys.exit(e.exit_code)
    click.echo(f"\nfinished {result.epochs_run} epochs in {result.seconds / 60:.1f} min; model: {result.model_path}")
    click.echo(result.format())
    if overfit:
        click.echo(f"overfit {overfit} images: final training RMSE {result.val['rmse']:.4f} m, delta1 {result.val['delta1']:.3f}")
    elif (result.val or result.train)["delta1"] <= result.baseline["delta1"]:
        click.echo("warning: the model does not beat the mean-depth baseline yet; train longer or check the data.")


# ------------------------------------------------------------------------------------ evaluate


@main.command()
@click.option("--model", "model_path", required=True, help="A run folder, stage folder or .keras file, a SavedModel folder, or a .tflite file.")
@click.option("--data", "data_spec", default=None, help="Data source: synthetic, a folder, a manifest .txt, tfds[:DIR], or a .mat file [default: data.source].")
@click.option("--split", default=None, help="Split to evaluate [default: data.test_split, or the source's only split].")
@click.option("--protocol", type=click.Choice(choices("eval", "protocol")), default=None, help="eigen: Eigen crop + 1e-3 < gt < 10 m; full: every valid pixel [default: eval.protocol].")
@click.option("--flip-tta/--no-flip-tta", default=None, help="Average each prediction with that of the left-right flipped image [default: eval.flip_tta].")
@click.option("--align", type=click.Choice(choices("eval", "align")), default=None, help="Align predictions to the ground truth per image, for relative-depth models [default: eval.align].")
@click.option("--input-range", type=click.Choice(choices("eval", "input_range")), default=None, help=INPUT_RANGE_HELP)
@click.option("--output-scale", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True, help="Multiplies the model's raw output to give metres (e.g. 0.001 for millimetres).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="LiteRT threads for a .tflite model [default: LiteRT's choice].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N images.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write every figure with the model, data, split and protocol to this JSON file.")
@config_options
@functools.partial(_handle_errors, tensorflow=_needs_tensorflow)
def evaluate(model_path, data_spec, split, protocol, flip_tta, align, input_range, output_scale, threads, limit, json_path, config_path, sets):
    """Measure a depth model the way the field does: per-image metrics averaged over images.

    Prints delta < 1.25^k, AbsRel, SqRel, RMSE, RMSE log, log10 and SILog, and the flip
    consistency (the set-loss idea at test time). Without --config, a run's own config.toml is
    used for the data settings. Any .tflite depth model with one image input works, quantized
    or not; --input-range and --output-scale adapt a foreign model's conventions.

    \b
    Examples:
      kdepth evaluate --model runs/quickstart --data synthetic --json eval.json
      kdepth evaluate --model savedmodels/quickstart/model_int8.tflite --data data/nyu/test.txt --flip-tta
      kdepth evaluate --model other.tflite --data data/nyu --input-range 0-1 --align median
    """
    from pathlib import Path

    from kdepth.data.sources import open_source, resolve_split
    from kdepth.evaluation import evaluate as run_evaluate
    from kdepth.inference import load_depth_model
    from kdepth.paths import run_config_of

    if config_path is None:
        run_config = run_config_of(model_path)
        if run_config is not None:
            config_path = str(run_config)
            click.echo(f"config: {run_config} (the run's own; --config overrides it)")
    config = resolve_config(config_path, sets, data=data_spec)
    e = config.eval
    source = open_source(config.data, config.model.input_size)
    split, note = resolve_split(source, split, config.data.test_split)
    if note:
        click.echo(note)
    protocol = protocol or e.protocol
    align = align or e.align
    flip_tta = e.flip_tta if flip_tta is None else flip_tta
    model = load_depth_model(model_path, input_range=input_range or e.input_range, output_scale=output_scale, threads=threads)
    click.echo(f"model: {model.path} ({model.info})")
    click.echo(model.input_range_note)
    total = source.num_samples(split) if limit is None else min(limit, source.num_samples(split))
    with click.progressbar(length=total, label=f"evaluating {source.name} / {split}", file=sys.stderr) as bar:
        result = run_evaluate(
            model, source, split, protocol=protocol, flip_tta=flip_tta, align=align, limit=limit,
            progress=lambda *_: bar.update(1), min_depth=config.data.min_depth, max_depth=config.data.max_depth,
        )
    click.echo(result.format())
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(result.to_json(data=data_spec or source.name))
        click.echo(f"wrote {json_path}")


# ------------------------------------------------------------------------------------- predict


@main.command()
@click.option("--model", "model_path", required=True, help="A run folder, stage folder or .keras file, a SavedModel folder, or a .tflite file.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the outputs into.")
@click.option("--npy", is_flag=True, help="Also write NAME.npy: float32 depth in metres.")
@click.option("--pointcloud", is_flag=True, help="Also write NAME.ply: a coloured point cloud (binary little-endian PLY).")
@click.option(
    "--intrinsics",
    default=None,
    metavar="FX,FY,CX,CY[@HxW]",
    help="Camera intrinsics in pixels for --pointcloud, at each image's own size, or at size HxW and scaled to each image [default: NYU's, 640x480, scaled to each image].",
)
@click.option("--input-range", type=click.Choice(choices("eval", "input_range")), default=None, help=INPUT_RANGE_HELP)
@click.option("--output-scale", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True, help="Multiplies the model's raw output to give metres.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="LiteRT threads for a .tflite model [default: LiteRT's choice].")
@click.option("--smooth", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True, help="Videos: temporal smoothing in log depth (0 = off, e.g. 0.5).")
@click.option("--png-frames", is_flag=True, help="Videos: also write NAME_depth_frames/NNNNNN.png, 16-bit millimetres.")
@functools.partial(_handle_errors, tensorflow=_needs_tensorflow)
def predict(model_path, inputs, out, npy, pointcloud, intrinsics, input_range, output_scale, threads, smooth, png_frames):
    """Predict depth for image files and folders (searched recursively for .png/.jpg/.jpeg).

    A video (.mp4, .mov, .mkv, ...; needs `pip install kdepth[video]`) gives NAME_depth.mp4, its
    RGB frames and colourised depth side by side, optionally --png-frames and --smooth.

    For each image NAME: NAME_depth.png (16-bit, millimetres, 0 = no depth) and NAME_color.png
    (viridis, colour bar in metres) at the image's own size; with --npy NAME.npy (metres); with
    --pointcloud NAME.ply, back-projected as X = (u - cx) Z / fx, Y = (v - cy) Z / fy (pixel
    centres at integer u, v; x right, y down, z forward). A file that is not a readable image is
    reported by name, the others are still processed, and the exit code is 1.

    \b
    Examples:
      kdepth predict --model runs/quickstart photos/ --out predictions
      kdepth predict --model savedmodels/quickstart/model_int8.tflite room.jpg --out pred --pointcloud
      kdepth predict --model runs/quickstart room.jpg --out pred --pointcloud --intrinsics 525,525,319.5,239.5@480x640
    """
    from kdepth.predict import load_model, parse_intrinsics, predict_paths
    from kdepth.video import is_video, predict_video

    parsed = parse_intrinsics(intrinsics) if intrinsics else None
    videos = [p for p in inputs if is_video(p)]
    images = [p for p in inputs if not is_video(p)]
    model = load_model(model_path, input_range=input_range or "auto", output_scale=output_scale, threads=threads)
    click.echo(model.input_range_note)
    for video in videos:
        predict_video(model, video, out, png_frames=png_frames, smooth=smooth, echo=click.echo)
    if not images:
        return
    report = predict_paths(
        model, images, out, npy=npy, pointcloud=pointcloud, intrinsics=parsed, show_progress=True, echo=click.echo,
    )
    click.echo(report.format())
    sys.exit(0 if report.ok else 1)


# -------------------------------------------------------------------------------------- export


@main.command()
@click.option("--model", "model_path", required=True, help="A run folder (its highest stage), a stage folder or a .keras file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder, e.g. savedmodels/NAME.")
@click.option(
    "--quantize",
    "quantize",
    multiple=True,
    type=click.Choice(choices("export", "quantize")),
    help="TFLite variant to write (repeatable): none = float32, fp16 = float16 weights, dynamic = int8 weights, int8 = full integer [default: export.quantize].",
)
@click.option("--data", "data_spec", default=None, help="Data source for int8 calibration (train split) and the parity images (val split) [default: the run's data source].")
@click.option("--parity-images", type=click.IntRange(min=1), default=8, show_default=True, help="Validation images for the parity check.")
@config_options
@_handle_errors
def export(model_path, out, quantize, data_spec, parity_images, config_path, sets):
    """Export a trained network as a SavedModel and TFLite files, checked against Keras.

    Writes OUT/saved_model (endpoint `serve`: raw RGB 0-255 in, depth in metres out, batch size
    free), OUT/model_<q>.tflite per quantization (built-in ops only: plain LiteRT + XNNPACK)
    and OUT/metadata.json. Then runs every form on validation images and prints its difference
    to Keras and its delta1; a float form (SavedModel, none, fp16) beyond its tolerance makes
    the export fail with exit code 1. Without --config the run's own config.toml is used (with
    any --set applied on top). One export at a time writes OUT: a second one is refused.

    \b
    Examples:
      kdepth export --model runs/quickstart --out savedmodels/quickstart
      kdepth export --model runs/quickstart --out savedmodels/quickstart --quantize none --quantize fp16 --quantize int8
      kdepth export --model runs/nyu/stage2/model.keras --out savedmodels/nyu --quantize int8 --data tfds
    """
    from kdepth.export import export_model, resolve_model_source

    # --set applies on top of the run's own config.toml unless --config names another file.
    config_path = config_path or resolve_model_source(model_path).config_path
    config = resolve_config(config_path, sets) if (config_path or sets) else None
    from kdepth.locks import output_folder_lock

    with output_folder_lock(out, fix="wait for it, or use another --out", echo=click.echo):  # one export per OUT
        report = export_model(
            model_path, out, list(quantize) or None, config, data=data_spec, parity_images=parity_images, echo=click.echo
        )
    click.echo(f"wrote {report.out_dir}: saved_model/, {', '.join(p.name for p in report.tflite.values()) or 'no .tflite'}, metadata.json")


# -------------------------------------------------------------------------------------- config


@main.group()
def config():
    """Show configurations.

    \b
    Example:
      kdepth config show --config configs/poster-exp1.toml
    """


@config.command("show")
@click.option("--data", "data_spec", default=None, help="Data source spec, as for `kdepth fit --data`.")
@config_options
@functools.partial(_handle_errors, tensorflow=False)
def config_show(data_spec, config_path, sets):
    """Print the resolved configuration as TOML.

    \b
    Example:
      kdepth config show --config configs/paper.toml --set train.epochs=5
    """
    click.echo(resolve_config(config_path, sets, data=data_spec).to_toml(), nl=False)


@config.command("base")
def config_base():
    """Print configs/base.toml as generated from the schema (every key, default and meaning).

    \b
    Example:
      kdepth config base > configs/base.toml
    """
    from kdepth.config import base_toml

    click.echo(base_toml(), nl=False)


def _command(args):
    """The subcommand in a `kdepth` argument list (its first word that is not a global option)."""
    return next((a for a in args if not a.startswith("-")), None)


def entry():
    """The `kdepth` console script: `kdepth fit` restarts itself with the page pool, then the CLI runs.

    The pool (`kdepth.allocator.exec_with_page_pool`) must be preloaded when the process starts,
    so this happens here, before click, and not in `main`, which tests call in-process.
    """
    if _command(sys.argv[1:]) == "fit":
        from kdepth.allocator import exec_with_page_pool

        exec_with_page_pool(sys.orig_argv[1:])  # as started: `kdepth fit ...` or `python -m kdepth.cli fit ...`
    main()


if __name__ == "__main__":
    entry()
