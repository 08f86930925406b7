"""`kdepth export`: a trained network as a SavedModel and TFLite files, checked against Keras.

Layout written into OUT (see savedmodels/README.md):

    OUT/saved_model/          TF SavedModel, endpoint `serve` (also `serving_default`)
    OUT/model_<q>.tflite      one per quantization q in none | fp16 | dynamic | int8
    OUT/metadata.json         input/output contract, intrinsics, training run, evaluation,
                              file sizes, TFLite tensor types and the parity results

They are written into OUT/.partial-export-XXXX and moved into OUT only after the parity check
passed (metadata.json last); a failed export leaves OUT as it was, with the files of a failed
parity check in OUT/failed/ for inspection.

What is exported is the network's serving model (`DepthNetwork.serving_model`): input "image"
float32 (B, H, W, 3) raw RGB 0-255 with a free batch dimension, output "depth" float32
(B, H, W, 1) in metres, the finest scale the network built resized bilinearly to the input size.

Decisions:

- The network is always rebuilt in float32 from its own config (`kdepth.models.float32_copy`)
  and the weights are copied by layer name: TFLite cannot convert a mixed-precision graph, and
  variables are float32 under Keras mixed precision anyway, so nothing is lost.
- The SavedModel is what `deploy.export(path, format="tf_saved_model")` writes, but written
  with `ExportArchive` without `track()` so each weight is stored once (`write_saved_model`).
- TFLite files come from `tf.lite.TFLiteConverter.from_saved_model` on OUT/saved_model (never
  `from_keras_model`, which does not work with Keras 3), with built-in ops only (no Flex/SELECT_TF
  ops), so every file runs on plain LiteRT with XNNPACK.
- int8 is full-integer: uint8 input (the raw RGB bytes; the representative dataset contains an
  all-0 and an all-255 image so the input scale is exactly 1 and the zero point 0) and int8
  output (TFLite's native type, no extra requantize op; dequantize with the output's scale and
  zero point, which metadata.json records). Depth beyond the calibration range saturates.
- The int8 file is converted from a second, equivalent graph (`fold_channel_flip`): the
  preprocessing's RGB->BGR channel flip is folded into the convolutions that read the image
  (their kernels reversed along the input channels) and the mean subtraction reordered to RGB.
  The TFLite converter (TF 2.21) gives the REVERSE_V2 output of "flip, then subtract the means"
  its own int8 scale (about [-123, 255]) although the kernel copies the bytes unchanged, so every
  pixel value reached the mean subtraction shifted and stretched (the measured loss of delta1
  is in docs/evaluate-export-predict.md). The float forms keep the network's own graph; the
  parity check compares the int8 file with it.
- Parity (`check_parity`): the SavedModel and every .tflite are run through
  `kdepth.inference.load_depth_model` on validation images and compared with the float32 Keras
  serving model. A float form fails the export when any pixel has
  |form - keras| > rtol * max(keras, 1 m) (relative above 1 m, rtol metres below), with rtol in
  `PARITY_RTOL`; dynamic and int8 are reported, not gated, but every form must give finite depth.
"""

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from kdepth.config import choices
from kdepth.errors import KdepthError
from kdepth.models.depth_network import serving_graph
from kdepth.paths import resolve_model_path, run_config_path

QUANTIZATIONS = choices("export", "quantize")
# Per-pixel gate |form - keras| <= rtol * max(keras depth, 1 m), for the float forms only.
# SavedModel runs the same TF kernels as Keras; TFLite float32 uses other kernels (XNNPACK); fp16
# rounds the weights to 11 significant bits. The measured differences are in
# docs/evaluate-export-predict.md.
PARITY_RTOL = {"saved_model": 1e-4, "none": 1e-3, "fp16": 1e-2}
PARITY_IMAGES = 8  # validation images the parity check runs
PARITY_FLOOR_M = 1.0  # below 1 m the tolerance is absolute (rtol metres)
INT8_INPUT_TYPE = "uint8"  # raw RGB bytes, scale 1, zero point 0
INT8_OUTPUT_TYPE = "int8"
INPUT_RANGE = "0-255 RGB"
METADATA_FORMAT = "kdepth-export/1"
STAGING_PREFIX = ".partial-export-"  # OUT/.partial-export-XXXX while an export is written
FAILED_DIR = "failed"  # OUT/failed/: the files of an export that failed its parity check


# ------------------------------------------------------------------------------ model loading


@dataclasses.dataclass
class ModelSource:
    """Where a network comes from: the .keras file and, for a run, its stage directory."""

    keras_path: Path
    stage_dir: Path | None

    @property
    def config_path(self):
        return run_config_path(self.keras_path) if self.stage_dir is not None else None


def resolve_model_source(path):
    """Finds the .keras network behind `path` (a .keras file, a stage or a run directory).

    Raises:
        KdepthError: nothing there, or a SavedModel / .tflite, which cannot be re-exported.
    """
    kind, resolved = resolve_model_path(path)
    if kind != "keras":
        raise KdepthError(
            f"--model {path}: is a {kind}; export needs the trained Keras network: pass a run directory "
            "(runs/NAME), a stage directory (runs/NAME/stageN) or a .keras file."
        )
    return ModelSource(resolved, resolved.parent if run_config_path(resolved) is not None else None)


def _inbound_layers(layer_config):
    """Names of the layers whose outputs a layer's config (from `Model.get_config`) reads."""
    names = []

    def walk(value):
        if isinstance(value, dict):
            if "keras_history" in value:
                names.append(value["keras_history"][0])
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(layer_config.get("inbound_nodes", []))
    return names


def _functional_view(network):
    """A plain functional model of the same layers: its config lists them (a DepthNetwork's
    config holds only its constructor arguments) and `clone_model` rebuilds that graph."""
    return keras.Model(network.inputs, network.output, name=network.name)


def flip_consumers(network):
    """The Conv2D layers that read the preprocessed image, directly or through scalar Rescaling layers.

    Their kernels absorb a permutation of the image channels exactly (`fold_channel_flip`).

    Raises:
        KdepthError: another kind of layer reads the preprocessed image.
    """
    config = _functional_view(network).get_config()
    layers = {layer["name"]: layer for layer in config["layers"]}
    readers = {}
    for layer in config["layers"]:
        for source in _inbound_layers(layer):
            readers.setdefault(source, []).append(layer["name"])
    convs, pending = [], ["preprocess"]
    while pending:
        for name in readers.get(pending.pop(), []):
            layer = layers[name]
            cfg = layer["config"]
            if layer["class_name"] == "Rescaling" and np.ndim(cfg["scale"]) == 0 and np.ndim(cfg["offset"]) == 0:
                pending.append(name)  # x * a + b treats every channel alike: look through it
            elif layer["class_name"] == "Conv2D":
                convs.append(name)
            else:
                raise KdepthError(
                    f"model {network.name!r}: layer {name!r} ({layer['class_name']}) reads the preprocessed image; only "
                    "Conv2D layers (directly or through a Rescaling by one scalar) can absorb the RGB->BGR flip for the "
                    "int8 export. Export without int8 (--quantize none/fp16/dynamic)."
                )
    return sorted(set(convs))


def fold_channel_flip(network):
    """The network's serving model without the RGB->BGR flip of its preprocessing: what int8 is made from.

    `CaffePreprocess` computes flip(rgb) - mean_bgr. The copy computes rgb - mean_rgb (a
    `Rescaling` layer with a per-channel offset, named "preprocess") and every convolution that
    reads it (`flip_consumers`) gets its kernel reversed along the input channels: the same
    function (zero padding maps to zero padding), with no REVERSE_V2 op, which TFLite's int8
    conversion gets wrong (module docstring). All other layers are shared with `network`, not
    copied, and `network` itself is not changed.

    A network without a `CaffePreprocess` layer (e.g. the MobileNetV2 backbone, whose
    preprocessing is x / 127.5 - 1 in RGB order) has no flip: its functional graph is returned
    as is, with no convolution reversed.

    Args:
        network: a float32 kdepth network (or a functional graph of its layers).

    Returns:
        (folded graph with the network's outputs, sorted names of the convolutions whose
        kernels were reversed; [] when there was nothing to fold).

    Raises:
        KdepthError: the CaffePreprocess layer feeds a layer that cannot absorb the flip.
    """
    from kdepth.models.layers import CaffePreprocess

    flips = [layer for layer in network.layers if isinstance(layer, CaffePreprocess)]
    if not flips:
        return _functional_view(network), []
    if flips[0].name != "preprocess":
        raise KdepthError(
            f"model {network.name!r}: its CaffePreprocess layer is named {flips[0].name!r}; the int8 export folds "
            "the channel flip of a layer named 'preprocess'. Export a model written by `kdepth fit`."
        )
    mean = network.get_layer("preprocess").mean
    convs = flip_consumers(network)

    def clone(layer):
        if layer.name == "preprocess":
            return keras.layers.Rescaling(1.0, offset=[-m for m in reversed(mean)], dtype="float32", name="preprocess")
        if layer.name in convs:
            return layer.__class__.from_config(layer.get_config())
        return layer  # shared: no copy of the large dense weights

    folded = keras.models.clone_model(_functional_view(network), clone_function=clone)
    for name in convs:
        kernel, bias = network.get_layer(name).get_weights()
        folded.get_layer(name).set_weights([kernel[:, :, ::-1, :], bias])
    return folded, convs


# --------------------------------------------------------------------------------- conversion


def write_saved_model(deploy, path):
    """Writes the deploy model as a SavedModel with the endpoint `serve` (and `serving_default`).

    The same artifact as `deploy.export(path, format="tf_saved_model")`: input "image" float32
    of the model's input shape (None, H, W, 3 for a deploy model), one output, batch dimension free. It is built with `ExportArchive` without
    `track()`, because `model.export` (track + endpoint) stores every weight twice in Keras 3.15
    (keras-team/keras#23553: 2x the file size and 2x the variable memory of every server that
    loads it); the endpoint's captured variables are saved once either way. The parity check
    loads the result, so an export that lost its variables cannot pass unnoticed.
    """
    shape = tuple(int(d) for d in deploy.inputs[0].shape[1:])
    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        "serve",
        lambda image: deploy(image, training=False),
        input_signature=[keras.InputSpec(shape=(None, *shape), dtype="float32", name="image")],
    )
    archive.write_out(str(path), verbose=False)


def check_quantize(values):
    """Validates and de-duplicates a list of quantizations (order kept)."""
    out = []
    for q in values:
        if q not in QUANTIZATIONS:
            raise KdepthError(
                f"quantization {q!r} is unknown; allowed: {list(QUANTIZATIONS)} (--quantize, repeatable, or export.quantize)."
            )
        if q not in out:
            out.append(q)
    return out


def convert_tflite(saved_model_dir, quantize, representative=None):
    """Converts the SavedModel to TFLite bytes with built-in ops only.

    Args:
        saved_model_dir: OUT/saved_model.
        quantize: "none" (float32), "fp16" (float16 weights), "dynamic" (dynamic-range int8
            weights) or "int8" (full integer, uint8 input, int8 output).
        representative: for int8, a callable yielding [float32 (1, H, W, 3)] raw RGB batches.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        if representative is None:
            raise KdepthError("int8 quantization needs a representative dataset of training images.")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, INT8_INPUT_TYPE)
        converter.inference_output_type = getattr(tf, INT8_OUTPUT_TYPE)
    elif quantize != "none":
        check_quantize([quantize])
    try:
        return converter.convert()
    except Exception as e:  # the converter raises ConverterError and friends with long logs
        raise KdepthError(
            f"TFLite conversion ({quantize}) of {saved_model_dir} failed: {type(e).__name__}: {str(e)[:2000]}"
        ) from e


def tflite_details(path):
    """Input/output tensor types and quantization parameters and the op list of a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))

    def tensor(d):
        scale, zero_point = d["quantization"]
        return {
            "name": d["name"],
            "shape": [None if s < 0 else int(s) for s in d["shape_signature"]],
            "dtype": np.dtype(d["dtype"]).name,
            "scale": float(scale),
            "zero_point": int(zero_point),
        }

    details = {
        "inputs": [tensor(d) for d in interpreter.get_input_details()],
        "outputs": [tensor(d) for d in interpreter.get_output_details()],
    }
    ops_details = getattr(interpreter, "_get_ops_details", None)  # not public API: best effort
    if ops_details is not None:
        details["ops"] = sorted({op["op_name"] for op in ops_details()} - {"DELEGATE"})
    return details


def _dir_size(path):
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def format_size(n):
    """Bytes as a short human-readable size (KiB, MiB)."""
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


# ------------------------------------------------------------------------------------- data


def _resize_rgb(rgb, size):
    """float32 raw RGB at `size`, resized as `DepthModel.predict` does (bilinear, antialiased)."""
    from kdepth.inference import resize_image

    return resize_image(rgb, size).astype(np.float32)


def _pick(n_available, n):
    """n indices spread evenly over a split (consecutive frames of real data look alike)."""
    n = min(n, n_available)
    return sorted(set(np.linspace(0, n_available - 1, n).round().astype(int).tolist()))


def _split_with_data(source, splits):
    for split in splits:
        if split in source.splits():
            return split
    raise KdepthError(f"data source {source.name!r} has none of the splits {list(splits)}; it has {source.splits()}.")


def load_images(source, split, count, input_size):
    """(images float32 (N, H, W, 3) raw RGB at input_size, [depth (h, w) metres], names)."""
    n_available = source.num_samples(split)
    images, depths = [], []
    for i in _pick(n_available, count):
        rgb, depth = source.load(split, i)
        images.append(_resize_rgb(rgb, input_size))
        depths.append(depth)
    return np.stack(images), depths


def representative_dataset(source, split, count, input_size):
    """The int8 calibration generator: an all-0 and an all-255 image, then `count` training images.

    The two constant images pin the input range to exactly 0-255, so the uint8 input has scale 1
    and zero point 0 and takes camera bytes unchanged.
    """
    h, w = input_size
    indices = _pick(source.num_samples(split), count)

    def generator():
        yield [np.zeros((1, h, w, 3), np.float32)]
        yield [np.full((1, h, w, 3), 255.0, np.float32)]
        for i in indices:
            rgb, _ = source.load(split, i)
            yield [_resize_rgb(rgb, input_size)[None]]

    return generator, len(indices)


def delta1(pred, depths):
    """delta < 1.25 per image on valid ground truth, averaged over images (kdepth.evaluation)."""
    from kdepth.evaluation import evaluate_arrays

    return evaluate_arrays(depths, list(pred), protocol="full")["delta1"]


# ---------------------------------------------------------------------------------- parity


@dataclasses.dataclass
class ParityRow:
    """One exported form compared with the float32 Keras deploy model."""

    form: str  # "keras", "saved_model" or "tflite <q>"
    path: Path | None
    size_bytes: int
    max_abs: float  # metres
    mean_abs: float  # metres
    max_rel: float  # max |diff| / max(keras, 1 m)
    delta1: float
    tolerance: float | None  # rtol when gated
    finite: bool

    @property
    def ok(self):
        if not self.finite:
            return False
        return self.tolerance is None or self.max_rel <= self.tolerance

    def to_dict(self):
        return {
            "form": self.form,
            "file": self.path.name if self.path else None,
            "size_bytes": self.size_bytes,
            "max_abs_diff_m": self.max_abs,
            "mean_abs_diff_m": self.mean_abs,
            "max_rel_diff": self.max_rel,
            "delta1": self.delta1,
            "tolerance_rel": self.tolerance,
            "finite": self.finite,
            "ok": self.ok,
        }


def _quantization_of(form):
    return "saved_model" if form == "saved_model" else form.split(" ", 1)[1]


def check_parity(deploy, artifacts, images, depths, *, echo=print):
    """Runs each exported form on `images` and compares it with the Keras deploy model.

    Args:
        deploy: the float32 Keras serving model (`DepthNetwork.serving_model`).
        artifacts: {form: path}, form "saved_model" or "tflite <q>" with q in QUANTIZATIONS.
        images: float32 (N, H, W, 3) raw RGB 0-255 at the model's input size.
        depths: N ground-truth depth maps in metres (0 = hole), any size, for delta1.

    Returns:
        [ParityRow], the Keras row first. Nothing is raised here; see `parity_failures`.
    """
    from kdepth import inference

    reference = np.asarray(deploy.predict_on_batch(images))[..., 0].astype(np.float64)
    rows = [ParityRow("keras", None, 0, 0.0, 0.0, 0.0, delta1(reference, depths), None, bool(np.isfinite(reference).all()))]
    scale = np.maximum(reference, PARITY_FLOOR_M)
    for form, path in artifacts.items():
        model = inference.load_depth_model(str(path))
        pred = np.asarray(model.predict(images), dtype=np.float64)
        if pred.shape != reference.shape:
            raise KdepthError(f"{path}: predicted shape {pred.shape} but Keras gives {reference.shape}; the export is broken.")
        finite = bool(np.isfinite(pred).all())
        diff = np.abs(np.where(np.isfinite(pred), pred, np.inf) - reference)
        row = ParityRow(
            form=form,
            path=Path(path),
            size_bytes=_dir_size(path),
            max_abs=float(diff.max()),
            mean_abs=float(diff.mean()),
            max_rel=float((diff / scale).max()),
            delta1=delta1(pred, depths),
            tolerance=PARITY_RTOL.get(_quantization_of(form)),
            finite=finite,
        )
        rows.append(row)
        echo(f"  {form}: max |diff| {row.max_abs:.3g} m, mean {row.mean_abs:.3g} m, delta1 {row.delta1:.3f}")
    return rows


def parity_failures(rows):
    """Sentences describing each row that fails its gate (empty list = all good)."""
    problems = []
    for row in rows:
        if row.ok:
            continue
        if not row.finite:
            problems.append(f"{row.form} ({row.path}) produced NaN or infinite depth")
        else:
            problems.append(
                f"{row.form} ({row.path}) differs from Keras by up to {row.max_abs:.3g} m = {row.max_rel:.3g} relative; "
                f"tolerance {row.tolerance:g} (|diff| <= {row.tolerance:g} x max(depth, {PARITY_FLOOR_M:g} m))"
            )
    return problems


def format_parity(rows):
    """The parity table: form, file size, max |diff|, mean |diff|, delta1, tolerance, result."""
    header = f"{'form':<16}{'size':>11}{'max |diff| m':>14}{'mean |diff| m':>15}{'delta1':>8}{'tolerance':>11}  result"
    lines = [header]
    for r in rows:
        if r.form == "keras":
            lines.append(f"{'keras (float32)':<16}{'-':>11}{'-':>14}{'-':>15}{r.delta1:8.3f}{'-':>11}  reference")
            continue
        tol = f"{r.tolerance:g}" if r.tolerance is not None else "report"
        result = "ok" if r.ok else ("NOT FINITE" if not r.finite else "FAIL")
        lines.append(
            f"{r.form:<16}{format_size(r.size_bytes):>11}{r.max_abs:14.3g}{r.mean_abs:15.3g}{r.delta1:8.3f}{tol:>11}  {result}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- export


@dataclasses.dataclass
class ExportReport:
    """What `export_model` wrote and measured."""

    out_dir: Path
    saved_model: Path
    tflite: dict  # quantization -> Path
    metadata_path: Path
    metadata: dict
    rows: list  # [ParityRow]

    @property
    def ok(self):
        return not parity_failures(self.rows)

    def format(self):
        return format_parity(self.rows)


def _run_info(source, config):
    info = {"model_file": str(source.keras_path), "config_file": str(source.config_path) if source.config_path else None}
    if config is not None and source.config_path is not None:
        info.update(name=config.train.name, stage=config.train.stage)
    else:
        info.update(name=None, stage=None)
    summary_path = source.stage_dir / "summary.json" if source.stage_dir is not None else None
    evaluation = None
    if summary_path is not None and summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
            evaluation = {
                "source": str(summary_path),
                "split": config.data.val_split if config is not None else "val",
                "data": {"source": config.data.source, "root": config.data.root} if config is not None else None,
                "protocol": "fit's final validation: all valid pixels pooled, at the training target size",
                "val": summary.get("val"),
                "baseline": summary.get("baseline"),
                "mean_depth": summary.get("mean_depth"),
            }
        except (OSError, ValueError):
            evaluation = None
    return info, evaluation


def _clear_outputs(out_dir):
    """Removes the files a previous export wrote into out_dir (and nothing else)."""
    if (out_dir / "metadata.json").is_file():
        (out_dir / "metadata.json").unlink()  # first: it marks a complete export
    if (out_dir / "saved_model").is_dir():
        shutil.rmtree(out_dir / "saved_model")
    for p in out_dir.glob("model_*.tflite"):
        p.unlink()
    if (out_dir / FAILED_DIR).is_dir():
        shutil.rmtree(out_dir / FAILED_DIR)


def _promote(report, final_dir):
    """Moves a checked export from its staging folder into final_dir, replacing an earlier
    export there; metadata.json comes last, so its presence marks a complete export.

    Returns the report with the final paths.
    """
    staging = report.out_dir
    _clear_outputs(final_dir)
    os.replace(report.saved_model, final_dir / "saved_model")
    tflite = {}
    for q, path in report.tflite.items():
        tflite[q] = final_dir / path.name
        os.replace(path, tflite[q])
    os.replace(report.metadata_path, final_dir / "metadata.json")
    staging.rmdir()
    rows = [dataclasses.replace(r, path=final_dir / r.path.relative_to(staging)) if r.path is not None else r for r in report.rows]
    return ExportReport(final_dir, final_dir / "saved_model", tflite, final_dir / "metadata.json", report.metadata, rows)


def export_model(model_path, out_dir, quantize=None, config=None, *, data=None, parity_images=PARITY_IMAGES, echo=print):
    """Exports a trained network and checks every exported form against Keras.

    Args:
        model_path: a run directory, a stage directory or a .keras file (`resolve_model_source`).
        out_dir: output folder (created; files of an earlier export there are replaced).
        quantize: TFLite variants among QUANTIZATIONS; None = config.export.quantize. An empty
            list writes only the SavedModel.
        config: a resolved Config to use instead of the run's config.toml (the CLI passes one
            only when --config or --set is given); defaults() for a bare .keras file.
        data: a data source spec (as `kdepth fit --data`) for int8 calibration and the parity
            images; default the config's data source.
        parity_images: validation images for the parity check.
        echo: where progress messages and the parity table go.

    Returns:
        An `ExportReport`.

    Raises:
        KdepthError: bad model path or file, conversion failure, or a float form (SavedModel,
            TFLite none or fp16) beyond its tolerance / any form with non-finite output. OUT is
            then unchanged; after a failed parity check the artifacts and metadata.json are in
            OUT/failed/ for inspection, after any other failure nothing is left.
    """
    job = _prepare(model_path, out_dir, quantize, config, data, echo)
    with _staging(job.final_dir) as staging:
        artifacts, build = _convert(job, staging, echo)
        images, depths, split = _parity_images(job, parity_images)
        echo(f"parity check on {len(images)} {split} images of {job.data_source.name}:")
        rows = check_parity(job.deploy, artifacts, images, depths, echo=echo)
        metadata_path = staging / "metadata.json"
        metadata = _metadata(job, artifacts, build, rows, split, len(images))
        metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
        tflite = {q: artifacts[f"tflite {q}"] for q in job.quantize}
        report = ExportReport(staging, artifacts["saved_model"], tflite, metadata_path, metadata, rows)
        echo(report.format())
        if parity_failures(rows):
            _fail(report, job.final_dir)
        return _promote(report, job.final_dir)


@dataclasses.dataclass
class _Job:
    """One export: where from and to, the float32 network and its serving model, the data."""

    source: ModelSource
    run_config: object
    config: object
    quantize: list
    final_dir: Path
    network: object
    deploy: object
    mixed: str | None
    data_source: object


def _prepare(model_path, out_dir, quantize, config, data, echo):
    """Resolves the model, config and data and loads the network in float32."""
    from kdepth.config import defaults
    from kdepth.data.sources import open_source, parse_data_spec
    from kdepth.models import float32_copy, load

    source = resolve_model_source(model_path)
    echo(f"loading {source.keras_path}")
    loaded, run_config = load(source.keras_path)
    config = config or run_config or defaults()
    if data:
        kind, root = parse_data_spec(data)
        config = config.replace(data__source=kind, data__root=root)
    quantize = check_quantize(config.export.quantize if quantize is None else list(quantize))
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise KdepthError(f"--out {out_dir}: is a file; pass a folder such as savedmodels/NAME.")
    network, mixed = float32_copy(loaded)
    if mixed:
        echo(f"rebuilt the network in float32 (it was saved under {mixed}) and copied the weights by layer name")
    config = config.replace(model__input_size=list(network.input_size))
    data_source = open_source(config.data, config.model.input_size)
    return _Job(source, run_config, config, quantize, out_dir, network, network.serving_model(), mixed, data_source)


@contextlib.contextmanager
def _staging(final_dir):
    """A hidden staging folder inside OUT; on any failure it is removed (and OUT if we made it).

    Everything is written there and moved into place only once the parity check passed: a failed
    or interrupted export leaves no model file that looks valid and does not touch an earlier
    export in OUT.
    """
    created = not final_dir.exists()
    final_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=final_dir))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing left once moved to failed/
        if created and not any(final_dir.iterdir()):
            final_dir.rmdir()
        raise


def _convert(job, staging, echo):
    """Writes the SavedModel and each TFLite variant; returns ({form: path}, int8 build details)."""
    saved_model_dir = staging / "saved_model"
    echo(f"writing {saved_model_dir}")
    write_saved_model(job.deploy, saved_model_dir)
    artifacts, build = {"saved_model": saved_model_dir}, {}
    with tempfile.TemporaryDirectory(prefix="kdepth-int8-") as tmp:
        for q in job.quantize:
            representative, graph_dir = None, saved_model_dir
            if q == "int8":
                representative, graph_dir, build = _int8_graph(job, Path(tmp), echo)
            path = staging / f"model_{q}.tflite"
            echo(f"writing {path}")
            path.write_bytes(convert_tflite(graph_dir, q, representative))
            artifacts[f"tflite {q}"] = path
    return artifacts, build


def _int8_graph(job, tmp, echo):
    """The int8 calibration data and the channel-flip-folded SavedModel it is converted from."""
    config, source = job.config, job.data_source
    train_split = _split_with_data(source, [config.data.train_split])
    representative, n_cal = representative_dataset(
        source, train_split, config.export.representative_samples, job.network.input_size
    )
    echo(f"int8: calibrating on {n_cal} {train_split} images of {source.name} (+ an all-0 and an all-255 image)")
    folded, convs = fold_channel_flip(job.network)
    graph_dir = tmp / "saved_model"
    write_saved_model(serving_graph(folded.inputs[0], folded.output[job.network.final_scale], job.network.input_size), graph_dir)
    build = {
        "calibration": {"data": source.name, "split": train_split, "images": n_cal, "plus": "one all-0 and one all-255 image"},
        "graph": {
            "channel_flip_folded_into": convs,
            "why": "TFLite's int8 REVERSE_V2 (RGB->BGR) before a subtraction is mis-quantized; the folded graph is the same function",
        },
    }
    return representative, graph_dir, build


def _parity_images(job, count):
    d = job.config.data
    split = _split_with_data(job.data_source, [d.val_split, d.test_split, d.train_split])
    images, depths = load_images(job.data_source, split, count, job.network.input_size)
    return images, depths, split


def _metadata(job, artifacts, build, rows, split, n_images):
    """The contents of metadata.json: the contract, the run, the files and the parity results."""
    import tensorflow as tf

    from kdepth.data.synthetic import scaled_intrinsics

    run_info, evaluation = _run_info(job.source, job.run_config)
    h, w = job.network.input_size
    fx, fy, cx, cy = scaled_intrinsics((h, w))
    tflite = {form: p for form, p in artifacts.items() if form != "saved_model"}
    return {
        "format": METADATA_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "input": {"name": "image", "shape": [None, h, w, 3], "dtype": "float32", "size": [h, w], "range": INPUT_RANGE},
        "output": {
            "name": "depth", "shape": [None, h, w, 1], "dtype": "float32", "units": "metres",
            "from": f"{job.network.final_scale} resized bilinearly to the input size",
        },
        "depth_units": "metres",
        "intrinsics": {
            "fx": fx, "fy": fy, "cx": cx, "cy": cy, "size": [h, w],
            "note": "NYU Kinect RGB intrinsics (640x480) scaled to the input size; pixel centres at integer u, v",
        },
        "training": {**run_info, "precision_rebuilt_from": [job.mixed] if job.mixed else None},
        "evaluation": evaluation,
        "files": {"saved_model": _dir_size(artifacts["saved_model"]), **{p.name: p.stat().st_size for p in tflite.values()}},
        "tflite": {
            p.name: {"quantization": form.split(" ", 1)[1], **tflite_details(p), **(build if form == "tflite int8" else {})}
            for form, p in tflite.items()
        },
        "parity": {
            "data": job.data_source.name, "split": split, "images": n_images,
            "rule": f"gated forms: every pixel |form - keras| <= tolerance_rel x max(keras depth, {PARITY_FLOOR_M:g} m)",
            "tolerances_rel": dict(PARITY_RTOL),
            "rows": [r.to_dict() for r in rows],
        },
    }


def _fail(report, final_dir):
    """Moves a failed export's files to OUT/failed/ for inspection and raises with the reasons."""
    failed = final_dir / FAILED_DIR
    if failed.exists():
        shutil.rmtree(failed)
    os.replace(report.out_dir, failed)
    for row in report.rows:
        if row.path is not None:
            row.path = failed / row.path.relative_to(report.out_dir)
    raise KdepthError(
        "parity check failed: " + "; ".join(parity_failures(report.rows)) + f". Nothing was written to {final_dir} (an "
        f"earlier export there is unchanged); the failed files and their metadata.json are in {failed} for "
        "inspection only. A float form beyond tolerance means the conversion changed the model: check the "
        "TensorFlow/LiteRT versions."
    )
