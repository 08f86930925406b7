"""Typed experiment configuration read from TOML files.

The schema below is the one source of truth for every key, its type, its default and its
one-line description. `configs/base.toml` is generated from it (`kdepth config base`) and a test
keeps the two equal. An experiment file overrides only the keys it changes, optionally on top of
another file named by a top-level `extends = "other.toml"`; `--set section.key=value` overrides
come last. Unknown keys and bad values stop with a `ConfigError` that names the key, the value
received, what is allowed and the closest valid key.
"""

import dataclasses
import difflib
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import tomllib

from kdepth.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Key:
    """One configuration key: its default, kind, allowed values and a one-line description."""

    default: Any
    kind: str  # int | float | bool | bool_or_auto | str | size | size_or_empty | str_list | num_list
    doc: str
    choices: tuple = ()
    min: float | None = None
    max: float | None = None


SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "source": Key("synthetic", "str", "where samples come from", ("synthetic", "folder", "manifest", "tfds", "nyu_mat")),
        "root": Key("", "str", "folder root, manifest file, TFDS data_dir or nyu_depth_v2_labeled.mat path"),
        "train_split": Key("train", "str", "split used for training"),
        "val_split": Key("val", "str", "split used for validation during fit"),
        "test_split": Key("test", "str", "split used for the final evaluation"),
        "depth_scale": Key(1000.0, "float", "PNG depth units per metre (1000 = millimetres)", min=1e-9),
        "min_depth": Key(1e-3, "float", "depths at or below this (metres) are holes", min=0.0),
        "max_depth": Key(10.0, "float", "depths above this (metres) are holes", min=1e-6),
        "hole_values": Key([65535], "num_list", "raw depth values that mean 'no measurement' (besides 0, NaN, inf)"),
        "target_size": Key([], "size_or_empty", "[H, W] of the ground truth fed to the losses; [] = model.input_size"),
        "depth_resize": Key("masked_area", "str", "how depth is resized: holes never bleed into valid pixels", ("masked_area", "nearest")),
        "flip_group": Key(["identity", "lr"], "str_list", "copies per image for the set loss: identity, lr (left-right), ud (up-down)"),
        "jitter_brightness": Key(0.1, "float", "photometric jitter: max relative brightness change (0 = off)", min=0.0, max=1.0),
        "jitter_contrast": Key(0.1, "float", "photometric jitter: max relative contrast change (0 = off)", min=0.0, max=1.0),
        "jitter_saturation": Key(0.1, "float", "photometric jitter: max relative saturation change (0 = off)", min=0.0, max=1.0),
        "shuffle_buffer": Key(512, "int", "shuffle buffer in samples (0 = no shuffle)", min=0),
        "seed": Key(0, "int", "seed for shuffling, jitter and the synthetic renderer", min=0),
        "cache": Key("auto", "bool_or_auto", "keep decoded training samples in memory at the input size (uint8): faster, same batches; auto = when the split takes at most 1 GiB"),
        "skip_bad_files": Key(False, "bool", "skip (and count) unreadable or empty samples instead of stopping"),
        "synthetic_train": Key(2000, "int", "synthetic source: samples in the train split", min=1),
        "synthetic_val": Key(120, "int", "synthetic source: samples in the val split", min=1),
        "synthetic_test": Key(200, "int", "synthetic source: samples in the test split", min=1),
        "synthetic_size": Key([], "size_or_empty", "synthetic source: render size [H, W]; [] = model.input_size"),
        "synthetic_holes": Key(True, "bool", "synthetic source: add Kinect-like holes (edges, out of range)"),
        "tfds_name": Key("nyu_depth_v2", "str", "tfds source: dataset name"),
        "mat_depth": Key("raw", "str", "nyu_mat source: raw Kinect depth or the in-painted maps", ("raw", "inpainted")),
        "mat_splits": Key("", "str", "nyu_mat source: splits.mat path; '' = next to the .mat file"),
    },
    "model": {
        # min 32: VGG16's five 2x2 pools need 32 pixels a side (models.depth_network.MIN_INPUT).
        "input_size": Key([32, 48], "size", "[H, W] of the RGB input (paper: [232, 310] or [228, 304])", min=32),
        "scales": Key(3, "int", "number of scales built (1 = VGG + dense only, 2, 3)", min=1, max=3),
        "skips": Key(True, "bool", "skip layers 1.1 (block3_pool) and 1.2 (block4_pool) into scale 2"),
        "backbone": Key("vgg16", "str", "feature extractor of scale 1 and the skip layers (mobilenet_v2: sides multiple of 32)", ("vgg16", "mobilenet_v2")),
        "backbone_alpha": Key(1.0, "float", "width multiplier of mobilenet_v2 (1.0 for vgg16)", min=0.1, max=1.4),
        "bn_momentum": Key(0.0, "float", "momentum of the backbone's BatchNorm moving statistics; 0 = its own (mobilenet_v2: 0.999; vgg16 has none)", min=0.0, max=0.9999),
        "backbone_weights": Key("auto", "str", "backbone weights: auto, imagenet, none, or a path to a .h5 file"),
        "output": Key("log", "str", "depth head: log (exp of a linear output) or softplus, neither has a dead zone; relu is the poster's legacy head (it can collapse to 0)", ("log", "softplus", "relu")),
        "coarse": Key("dense", "str", "scale-1 head: dense (paper) or compact (1x1 conv to 64 channels first, for devices)", ("dense", "compact")),
        "width": Key(64, "int", "channels of the scale-2/3 and skip convolutions (first image-branch conv: 1.5x)", min=2),
        "kernel_size": Key(0, "int", "kernel of the scale-2/3 and skip convolutions; 0 = the paper's 9 and 5 (3 for devices)", min=0),
        "head_kernel_size": Key(0, "int", "kernel of the scale-2/3 linear heads; 0 = as kernel_size (1 for devices)", min=0),
        "separable": Key(False, "bool", "depthwise-separable convolutions in scales 2, 3 and the skips (for devices)"),
        "skip_norm": Key("layer", "str", "normalisation of each skip branch's input: none, or layer (LayerNormalization over channels; keeps the skip convolutions alive)", ("none", "layer")),
        "coarse_hidden": Key(4200, "int", "width of the first dense layer of scale 1 (layer 1.6)", min=1),
        "dropout": Key(0.5, "float", "dropout rate around the dense layers of scale 1", min=0.0, max=0.99),
        "conv_init": Key("he_normal", "str", "initialiser of the non-VGG convolutions", ("he_normal", "glorot_uniform")),
        "depth_init": Key(2.0, "float", "initial depth (metres) the heads predict before training", min=1e-3),
    },
    "loss": {
        "space": Key("log", "str", "space of the pixelwise MSE and set loss: log depth or metres", ("log", "linear")),
        "mse_scale1": Key(0.25, "float", "weight of the masked MSE on the scale-1 coarse map", min=0.0),
        "mse_scale2": Key(1.0, "float", "weight of the masked MSE on the scale-2 output", min=0.0),
        "mse_scale3": Key(1.0, "float", "weight of the masked MSE on the scale-3 output", min=0.0),
        "mse_root": Key(False, "bool", "use the root of each MSE term (RMSE; the poster's experiment 4)"),
        "set_weight": Key(1.5, "float", "weight of the set loss over the flip group (poster: 1.5)", min=0.0),
        "silog_weight": Key(0.0, "float", "weight of the scale-invariant log loss (Eigen 2014)", min=0.0),
        "silog_lambda": Key(0.5, "float", "lambda of the scale-invariant loss (0.5 for training)", min=0.0, max=1.0),
        "grad_weight": Key(0.0, "float", "weight of the gradient-matching loss on log depth", min=0.0),
    },
    "train": {
        "name": Key("quickstart", "str", "run name: outputs go to RUN_DIR/NAME/stageN"),
        "run_dir": Key("runs", "str", "folder that holds the runs"),
        "stage": Key(1, "int", "1: scales 1+2; 2: scale 3 with 1+2 frozen; 3: fine-tune all", min=1, max=3),
        "init": Key("", "str", "weights to start from; '' = previous stage of the same run"),
        "epochs": Key(24, "int", "epochs to train", min=1),
        "steps_per_epoch": Key(50, "int", "batches per epoch (0 = one pass over the train split)", min=0),
        "val_steps": Key(0, "int", "validation batches (0 = the whole val split)", min=0),
        "batch_size": Key(8, "int", "flip groups per batch (images per step = batch_size x len(flip_group))", min=1),
        "optimizer": Key("adam", "str", "optimizer", ("adam", "adamw", "sgd")),
        "lr_backbone": Key(3e-4, "float", "learning rate of the VGG16 convolutions (1e-4 to fine-tune ImageNet weights)", min=0.0),
        "lr_coarse": Key(3e-4, "float", "learning rate of the scale-1 dense layers", min=0.0),
        "lr_skip": Key(1e-3, "float", "learning rate of the skip convolutions 1.1 and 1.2", min=0.0),
        "lr_scale2": Key(1e-3, "float", "learning rate of the scale-2 layers", min=0.0),
        "lr_scale3": Key(1e-3, "float", "learning rate of the scale-3 layers", min=0.0),
        "finetune_lr_scale": Key(0.1, "float", "stage 3 multiplies every learning rate by this", min=0.0),
        "lr_schedule": Key("cosine", "str", "decay by epoch", ("constant", "step", "exponential", "cosine")),
        "lr_decay_rate": Key(0.1, "float", "step/exponential: factor per lr_decay_epochs", min=0.0, max=1.0),
        "lr_decay_epochs": Key(10, "int", "step/exponential: epochs per decay_rate factor", min=1),
        "lr_min_ratio": Key(0.01, "float", "cosine: final learning rate as a fraction of the initial one", min=0.0, max=1.0),
        "warmup_epochs": Key(1, "int", "linear learning-rate warm-up at the start of each stage", min=0),
        "weight_decay": Key(1e-4, "float", "L2 weight decay on kernels", min=0.0),
        "clipnorm": Key(1.0, "float", "clip each gradient to this norm (0 = off)", min=0.0),
        "precision": Key("float32", "str", "Keras dtype policy; depth heads stay float32", ("float32", "mixed_bfloat16", "mixed_float16")),
        "seed": Key(0, "int", "seed for weights, dropout and data order", min=0),
        "steps_per_execution": Key(1, "int", "train steps per tf.function call", min=1),
        "jit_compile": Key(False, "bool", "compile the train step with XLA"),
        "recompute": Key(["auto"], "str_list", "layers up to which the backward pass recomputes activations instead of keeping them: [\"auto\"] (the network's recompute_layers), [] (none) or layer names"),
        "release_memory": Key(True, "bool", "give freed blocks of 256 KiB and more back to the system at once (glibc; lowers peak memory)"),
        "strategy": Key("default", "str", "tf.distribute: default (one device), mirrored (this machine's devices), multiworker (TF_CONFIG)", ("default", "mirrored", "multiworker")),
        "devices": Key([], "str_list", "mirrored: devices to use, e.g. [\"GPU:0\", \"GPU:1\"]; [] = every GPU (or the CPU)"),
        # 500: a kill loses little work while writing the backup costs well under 1% of the time
        # (docs/fault-tolerance.md, Backups, has the measured figures).
        "checkpoints": Key(True, "bool", "write backup/ and last/best weights every epoch (false: only model.keras at the end; no resume)"),
        "backup_every": Key(500, "int", "back up every N batches as well as every epoch (0 = epochs only)", min=0),
        "on_nan": Key("stop", "str", "non-finite loss: stop (keep the last backup, name the term) or skip-batch (skip that update)", ("stop", "skip-batch")),
        "tensorboard_images": Key(4, "int", "validation images drawn in TensorBoard each epoch (0 = none)", min=0),
        "collapse_std": Key(1e-3, "float", "warn of collapse when predicted log-depth std falls below this", min=0.0),
        "verbose": Key(1, "int", "Keras progress output: 0 silent, 1 bar, 2 a line per epoch", min=0, max=2),
    },
    "export": {
        "quantize": Key(["none"], "str_list", "TFLite variants: none, fp16, dynamic, int8", ("none", "fp16", "dynamic", "int8")),
        "representative_samples": Key(64, "int", "int8: calibration images from the train split", min=1),
    },
    "eval": {
        "protocol": Key("eigen", "str", "eigen: crop + 1e-3..10 m on 480x640; full: every valid pixel", ("eigen", "full")),
        "flip_tta": Key(False, "bool", "average the prediction with its left-right flip"),
        "align": Key("none", "str", "align predictions to ground truth first (relative-depth models)", ("none", "median", "scale-shift")),
        "input_range": Key("auto", "str", "pixel range the model is fed: auto (from a quantized input, else 0-255), 0-255 (kdepth's models) or 0-1", ("auto", "0-255", "0-1")),
    },
}


def choices(section, name):
    """The allowed values of a config key: the one list every module and CLI option uses."""
    return SCHEMA[section][name].choices


def _closest(name, candidates):
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _describe(key):
    if key.choices:
        return f"one of {list(key.choices)}"
    allowed = {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "bool_or_auto": 'true, false or "auto"',
        "str": "a string",
        "size": "[H, W] with two positive integers",
        "size_or_empty": "[H, W] with two positive integers, or []",
        "str_list": "a list of strings",
        "num_list": "a list of numbers",
    }[key.kind]
    if key.kind in ("size", "size_or_empty") and key.min is not None:
        return allowed.replace("positive integers", f"integers each >= {key.min:g}")
    bounds = []
    if key.min is not None:
        bounds.append(f">= {key.min}")
    if key.max is not None:
        bounds.append(f"<= {key.max}")
    return allowed + (f" ({', '.join(bounds)})" if bounds else "")


def _coerce(section, name, key, value):
    """Returns value converted to the key's kind, or raises ConfigError."""
    where = f"{section}.{name}"

    def bad():
        return ConfigError(f"{where}: received {value!r}; allowed: {_describe(key)}. {key.doc}.")

    kind = key.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad()
    elif kind == "bool_or_auto":
        if not isinstance(value, bool) and value != "auto":
            raise bad()
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad()
        value = float(value)
    elif kind == "str":
        if not isinstance(value, str):
            raise bad()
        if key.choices and value not in key.choices:
            raise ConfigError(
                f"{where}: received {value!r}; allowed: {_describe(key)}.{_closest(value, key.choices)}"
            )
    elif kind in ("size", "size_or_empty"):
        if not isinstance(value, list):
            raise bad()
        if kind == "size_or_empty" and value == []:
            return []
        if len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < (key.min or 1) for v in value):
            raise bad()
        value = list(value)
    elif kind == "str_list":
        if not isinstance(value, list) or any(not isinstance(v, str) for v in value):
            raise bad()
        for item in value:
            if key.choices and item not in key.choices:
                raise ConfigError(f"{where}: received {item!r} in {value!r}; allowed: each {_describe(key)}.{_closest(item, key.choices)}")
        value = list(value)
    elif kind == "num_list":
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
            raise bad()
        value = list(value)
    if kind in ("int", "float") and (
        (key.min is not None and value < key.min) or (key.max is not None and value > key.max)
    ):
        raise bad()
    return value


class Config(SimpleNamespace):
    """A resolved configuration: `cfg.section.key`, plus `to_dict()` and `to_toml()`."""

    def to_dict(self):
        return {s: dict(vars(getattr(self, s))) for s in SCHEMA}

    def to_toml(self, header=""):
        return dump_toml(self.to_dict(), header=header)

    def replace(self, **overrides):
        """Returns a copy with `section__key=value` overrides applied (validated)."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, name = dotted.split("__", 1)
            _check_key(section, name)
            data[section][name] = _coerce(section, name, SCHEMA[section][name], value)
        return _from_dict(data)


def _from_dict(data):
    return Config(**{s: SimpleNamespace(**data[s]) for s in SCHEMA})


def defaults():
    """The configuration with every key at its default."""
    return _from_dict({s: {k: _copy(key.default) for k, key in keys.items()} for s, keys in SCHEMA.items()})


def _copy(value):
    return list(value) if isinstance(value, list) else value


def _check_key(section, name=None):
    if section not in SCHEMA:
        raise ConfigError(
            f"unknown config section [{section}]; allowed sections: {list(SCHEMA)}.{_closest(section, SCHEMA)}"
        )
    if name is not None and name not in SCHEMA[section]:
        all_keys = [f"{s}.{k}" for s in SCHEMA for k in SCHEMA[s]]
        hint = _closest(f"{section}.{name}", all_keys) or _closest(name, SCHEMA[section])
        raise ConfigError(f"unknown config key {section}.{name}; see configs/base.toml for every key.{hint}")


def _read_toml(path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass a TOML file such as configs/base.toml.")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from e


def _apply_file(data, path, seen=()):
    path = Path(path).resolve()
    if path in seen:
        raise ConfigError(f"config file {str(path)!r} extends itself through {[str(p) for p in seen]}.")
    raw = _read_toml(path)
    parent = raw.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: extends received {parent!r}; allowed: a path to another TOML file.")
        _apply_file(data, path.parent / parent, seen + (path,))
    for section, table in raw.items():
        _check_key(section)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table of keys, received {table!r}.")
        for name, value in table.items():
            _check_key(section, name)
            try:
                data[section][name] = _coerce(section, name, SCHEMA[section][name], value)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None


def parse_override(text):
    """Parses 'section.key=value' (value in TOML syntax; a bare word is taken as a string)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set received {text!r}; allowed: section.key=value, e.g. --set train.epochs=5.")
    dotted, raw = text.split("=", 1)
    section, name = dotted.strip().split(".", 1)
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words such as --set data.source=folder
    return section, name, value


def load_config(paths=(), overrides=()):
    """Resolves defaults, then each TOML file in `paths`, then `--set` style `overrides`."""
    data = defaults().to_dict()
    for path in paths:
        if path:
            _apply_file(data, path)
    for text in overrides:
        section, name, value = parse_override(text)
        _check_key(section, name)
        data[section][name] = _coerce(section, name, SCHEMA[section][name], value)
    return _from_dict(data)


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def dump_toml(data, header=""):
    """Writes a full configuration as commented TOML that `load_config` reads back unchanged."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section, keys in SCHEMA.items():
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        for name, key in keys.items():
            lines.append(f"{name} = {_toml_value(data[section][name])}  # {key.doc}")
    return "\n".join(lines) + "\n"


BASE_HEADER = """kdepth base configuration: every key with its default and what it means.
Generated by `kdepth config base` from kdepth/config.py; other files override only what they change."""


def base_toml():
    """The text of configs/base.toml."""
    return dump_toml(defaults().to_dict(), header=BASE_HEADER)


def save_config(config, directory, name="config.toml"):
    """Writes the resolved configuration into an output directory so the run can be repeated."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(config.to_toml(header="Resolved kdepth configuration of this run; repeat it with --config this file."))
    return path
