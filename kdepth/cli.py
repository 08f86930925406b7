"""The `kdepth` command line: thin click commands over plain functions that tests call directly."""

import functools
import os
import sys

import click

# TensorFlow's C++ start-up chatter hides the messages users need; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kdepth.errors import KdepthError  # noqa: E402


def _handle_errors(fn):
    """Turns a KdepthError into a one-line message and exit code 1 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KdepthError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)

    return wrapper


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
def main():
    """kdepth: predict depth from a single RGB image (Li, Klein & Yao's three-scale network).

    \b
    Quickstart:
      kdepth fit --stage 1                 # train on built-in synthetic rooms
      tensorboard --logdir runs            # watch it
      kdepth data show synthetic --out sheet.png
    """


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

    \b
    Example:
      kdepth data synth --out data/synth --count 200 --size 240x320
      kdepth data check data/synth
    """
    from kdepth.data.sources import open_source
    from kdepth.data.writer import write_source

    eval_count = eval_count or max(1, count // 10)
    config = resolve_config(config_path, sets).replace(
        data__source="synthetic",
        data__seed=seed,
        data__synthetic_train=count,
        data__synthetic_val=eval_count,
        data__synthetic_test=eval_count,
        data__synthetic_size=_parse_size(size),
    )
    source = open_source(config.data, config.model.input_size)
    with click.progressbar(length=count + 2 * eval_count, label=f"writing {out}") as bar:
        counts = write_source(source, out, depth_scale=config.data.depth_scale, progress=lambda *_: bar.update(1))
    click.echo(f"wrote {counts} samples at {size} to {out} (depth: 16-bit PNG, millimetres, 0 = hole)")


@data.command()
@click.argument("source")
@click.option("--split", "splits", multiple=True, help="Split to check (repeatable) [default: train, val, test].")
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
    report = check_source(open_source(config.data, config.model.input_size), list(splits) or None)
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
@config_options
@_handle_errors
def fit(stage, data_spec, name, backbone_weights, init, overfit, config_path, sets):
    """Train one stage of the three-scale network.

    Re-running the same command after a crash resumes from the last backup.

    \b
    Examples:
      kdepth fit --stage 1                                  # quickstart: synthetic rooms, ~5 min on 2 CPU cores
      kdepth fit --stage 2                                  # scale 3 on top of stage 1
      kdepth fit --stage 1 --config configs/paper.toml --data tfds:~/tensorflow_datasets
      kdepth fit --overfit 3                                # can the network fit 3 images?
      tensorboard --logdir runs
    """
    from kdepth.training.fit import fit as run_fit

    config = resolve_config(config_path, sets, data=data_spec)
    overrides = {"train__name": name, "model__backbone_weights": backbone_weights, "train__init": init}
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
    result = run_fit(config, stage=stage, overfit=overfit, echo=click.echo)
    click.echo(f"\nfinished {result.epochs_run} epochs in {result.seconds / 60:.1f} min; model: {result.model_path}")
    click.echo(result.format())
    if overfit:
        click.echo(f"overfit {overfit} images: final training RMSE {result.val['rmse']:.4f} m, delta1 {result.val['delta1']:.3f}")
    elif result.val["delta1"] <= result.baseline["delta1"]:
        click.echo("warning: the model does not beat the mean-depth baseline yet; train longer or check the data.")


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
@_handle_errors
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


if __name__ == "__main__":
    main()
