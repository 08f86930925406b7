"""One way to run any depth model on images: kdepth's Keras networks, SavedModels and `.tflite` files.

`load_depth_model(path)` (also `kdepth.load`) returns a `DepthModel` whose `predict` takes raw
RGB images of any size and returns depth in metres at that size, whatever the model's format:

``keras``
    A kdepth network: a ``.keras`` file, a run stage folder holding ``model.keras``
    (``runs/NAME/stageN``), or a run folder ``runs/NAME`` (its highest ``stageN`` with a
    ``model.keras``), loaded with `kdepth.models.load_network_file`. It runs the network's own
    serving model (`DepthNetwork.serving_model`): the finest scale built, resized bilinearly
    to the input size, exactly what the export writes.
``saved_model``
    A SavedModel folder (holding ``saved_model.pb``), called through its ``serving_default``
    signature (Keras' ``model.export(..., format="tf_saved_model")`` writes it beside ``serve``).
    It must have one image input (B, H, W, 3) and one depth output.
``tflite``
    A ``.tflite`` file run with the LiteRT interpreter (``ai_edge_litert``): exactly one image
    input (1, H, W, 3) (NCHW (1, 3, H, W) is accepted too) and one depth output (1, h, w),
    (1, h, w, 1) or (1, 1, h, w) of any size, resized bilinearly to the input size. Integer
    (uint8 / int8 / int16) input and output tensors are quantized and dequantized with the
    tensor's own (scale, zero point) read from the model; an integer tensor without quantization
    parameters (scale 0) takes or gives raw values.

Foreign models' conventions: ``input_range="0-1"`` divides the 0-255 pixels by 255 before they
reach the model (and before quantization). ``input_range="auto"`` (the default) reads it from a
uint8 / int8 input's quantization (`infer_input_range`: scale x 255 close to 1 means 0-1, scale
close to 1 means 0-255, anything else is refused with a request for an explicit range) and uses
0-255, kdepth's convention, for float inputs; `DepthModel.input_range_note` says which and why. ``output_scale`` multiplies the raw output to give
metres (e.g. 0.001 for a model emitting millimetres). Every bad path, wrong file kind, corrupt or
truncated file, or unsupported signature raises a `KdepthError` naming the file.

Resizing (`resize_image`, `resize_depth`, from `kdepth.resize`) is numpy's copy of TensorFlow's
bilinear resize with half-pixel centres, the same function as Keras' ``Resizing`` layer: images
are antialiased when shrunk, depth maps are not (they are normally enlarged, as BTS and AdaBins
do). A ``.tflite`` model is therefore run without importing TensorFlow or Keras: LiteRT, numpy
and Pillow are all it needs.
"""

import numpy as np

from kdepth import quiet
from kdepth.config import choices
from kdepth.errors import KdepthError
from kdepth.paths import resolve_model_path
from kdepth.resize import resize_depth, resize_image

__all__ = ["DepthModel", "load_depth_model", "resize_depth", "resize_image", "resolve_model_path"]

KINDS = ("keras", "saved_model", "tflite")
INPUT_RANGES = choices("eval", "input_range")  # "auto", "0-255", "0-1"
RANGE_TOLERANCE = 0.05  # relative: a uint8 input scale within 5 % of 1/255 (or of 1) decides the range
BATCH = 8  # images per call for Keras and SavedModel models: bounds memory at large input sizes


def _tf():
    import tensorflow as tf  # imported on first use: the CLI starts faster without it

    return tf


def as_rgb(image, name="image"):
    """Returns `image` as (H, W, 3): greyscale (H, W) or (H, W, 1) is repeated, alpha is dropped."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise KdepthError(
            f"{name}: received an array of shape {image.shape}; expected an RGB image (H, W, 3), "
            "greyscale (H, W) or RGBA (H, W, 4)."
        )
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image[..., :3]


def as_array(images):
    """An array from `DepthModel.predict`'s input: an image file path or a PIL image is read as
    RGB with its EXIF orientation applied (as the photo is shown); arrays pass unchanged."""
    import os

    if isinstance(images, (str, os.PathLike)):
        from kdepth.data.sources import read_rgb

        return read_rgb(images)
    if hasattr(images, "getexif") and hasattr(images, "convert"):  # a PIL image
        from PIL import ImageOps

        return np.asarray(ImageOps.exif_transpose(images).convert("RGB"))
    return np.asarray(images)


class DepthModel:
    """A depth model of any supported format, run on raw RGB images.

    Attributes:
        path: the file or folder the model was loaded from (for a run folder, the model.keras
            actually used).
        kind: "keras", "saved_model" or "tflite".
        input_size: (H, W) the model takes.
        input_range: "0-255" or "0-1", the pixel range the model is fed ("auto" resolved).
        input_range_note: one line saying which range is used and why.
        input_dtype: dtype name of the model's input tensor ("float32", "uint8", ...).
        output_scale: factor from the model's raw output to metres.
        info: one line describing the model (kind, size, tensor types and quantization).
    """

    kind = ""

    def __init__(self, path, input_size, *, input_range="auto", output_scale=1.0, range_reason=None, input_dtype="float32"):
        # range_reason: why a subclass resolved "auto" to `input_range` (None: the range was given).
        if input_range == "auto":
            input_range, range_reason = "0-255", "kdepth's convention for a float input"
        self.path = str(path)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.input_range = input_range
        how = "as given" if range_reason is None else f"{range_reason}; --input-range overrides"
        self.input_range_note = f"input range {input_range} ({how})"
        self.output_scale = float(output_scale)
        self.input_dtype = input_dtype
        self.info = self.kind

    def __repr__(self):
        return f"<DepthModel {self.kind} {self.path} input {self.input_size[0]}x{self.input_size[1]}>"

    def predict(self, images):
        """Depth of one image or a batch, at the images' own size.

        Each image is resized to the input size (bilinear, antialiased) unless it is already
        at it, predicted, and its depth resized back (bilinear).

        Args:
            images: one image (H, W, 3) raw RGB 0-255 (uint8 or float; greyscale (H, W) and
                RGBA are converted), a batch (N, H, W, 3), or an image file path or PIL image
                (read with its EXIF orientation applied, so depth comes out as the photo is shown).

        Returns:
            float32 depth in metres: (H, W) for one image, (N, H, W) for a batch.
        """
        images = as_array(images)
        if images.ndim == 4:
            return self._predict_batch(images)
        return self._predict_batch(as_rgb(images, self.path)[None])[0]

    def _predict_batch(self, images):
        if images.shape[-1] != 3:
            images = np.stack([as_rgb(image, self.path) for image in images]) if len(images) else images[..., :0]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise KdepthError(
                f"{self.path}: predict received images of shape {images.shape}; expected one RGB image (H, W, 3) "
                "or a batch (N, H, W, 3) of raw RGB 0-255."
            )
        size = tuple(images.shape[1:3])
        if size == self.input_size:
            x = images.astype(np.float32)
        else:
            x = np.stack([resize_image(image, self.input_size) for image in images]) if len(images) else images
        return resize_depth(self._predict_at_input_size(x), size)

    def _predict_at_input_size(self, x):
        h, w = self.input_size
        if len(x) == 0:
            return np.zeros((0, h, w), np.float32)
        x = x.astype(np.float32)
        if self.input_range == "0-1":
            x = x / 255.0
        depth = self._run(x)  # (N, h', w') float32 raw output
        depth = resize_depth(depth, self.input_size)
        return (depth * np.float32(self.output_scale)).astype(np.float32)

    def _run(self, x):
        """Raw model output (N, h, w) float32 for float32 input (N, H, W, 3) in `input_range`."""
        raise NotImplementedError(f"{type(self).__name__} must implement _run()")


class KerasDepthModel(DepthModel):
    """A kdepth network (.keras); the output is its finest scale resized to the input size."""

    kind = "keras"

    def __init__(self, path, **kwargs):
        from kdepth.models import load_network_file

        network = load_network_file(path)
        super().__init__(path, network.input_size, **kwargs)
        self.network = network
        self.scale = network.final_scale
        h, w = self.input_size
        self.info = f"keras, kdepth network, output {self.scale}, input {h}x{w}"
        serving = network.serving_model()
        tf = _tf()

        @tf.function(input_signature=[tf.TensorSpec((None, h, w, 3), tf.float32)], reduce_retracing=True)
        def run(x):
            return serving(x, training=False)[..., 0]

        self._fn = run

    def _run(self, x):
        return np.concatenate([self._fn(x[i : i + BATCH]).numpy() for i in range(0, len(x), BATCH)])


def _spatial(shape, path, what):
    """(layout, h, w) of an image tensor shape (B, H, W, 3) or (B, 3, H, W)."""
    dims = [None if d is None or d < 0 else int(d) for d in shape]
    if len(dims) == 4 and dims[3] == 3:
        return "nhwc", dims[1], dims[2]
    if len(dims) == 4 and dims[1] == 3:
        return "nchw", dims[2], dims[3]
    raise KdepthError(
        f"{path}: {what} has shape {shape}; expected one RGB image batch (B, H, W, 3) (or (B, 3, H, W))."
    )


def _depth_map(out, path):
    """Squeezes a raw depth output (N, h, w), (N, h, w, 1) or (N, 1, h, w) to (N, h, w)."""
    out = np.asarray(out)
    if out.ndim == 4 and out.shape[-1] == 1:
        return out[..., 0]
    if out.ndim == 4 and out.shape[1] == 1:
        return out[:, 0]
    if out.ndim == 3:
        return out
    raise KdepthError(f"{path}: the model's output has shape {out.shape}; expected a depth map (N, h, w) or (N, h, w, 1).")


def _fixed_size(h, w, input_size, path):
    if h is not None and w is not None:
        return h, w
    if input_size is None:
        raise KdepthError(
            f"{path}: the model's input has a free height or width; pass input_size=(H, W) to load_depth_model."
        )
    return int(input_size[0]), int(input_size[1])


class SavedModelDepthModel(DepthModel):
    """A SavedModel with one image input and one depth output, called through its serving signature."""

    kind = "saved_model"

    def __init__(self, path, input_size=None, **kwargs):
        tf = _tf()
        try:
            self._loaded = tf.saved_model.load(str(path))  # keep a reference: it owns the variables
        except Exception as e:  # TF raises several types for a broken SavedModel
            raise KdepthError(f"{path}: cannot be loaded as a SavedModel ({type(e).__name__}: {e}).") from None
        signatures = dict(self._loaded.signatures)
        if "serving_default" in signatures:
            fn = signatures["serving_default"]
        elif len(signatures) == 1:
            fn = next(iter(signatures.values()))
        else:
            raise KdepthError(
                f"{path}: SavedModel has signatures {sorted(signatures)} but none is 'serving_default'; "
                "expected one serving signature taking an image and returning depth."
            )
        args, inputs = fn.structured_input_signature
        outputs = fn.structured_outputs
        if args or len(inputs) != 1 or not isinstance(outputs, dict) or len(outputs) != 1:
            raise KdepthError(
                f"{path}: SavedModel signature takes {sorted(inputs) or len(args)} and returns "
                f"{sorted(outputs) if isinstance(outputs, dict) else outputs}; expected exactly one image input "
                "and one depth output."
            )
        (self._input_name, spec), = inputs.items()
        (self._output_name,) = outputs
        self._layout, h, w = _spatial(spec.shape.as_list(), path, f"input {self._input_name!r}")
        super().__init__(path, _fixed_size(h, w, input_size, path), **kwargs)
        self._dtype = spec.dtype
        self._fn = fn
        self.info = (
            f"saved_model, input {self._input_name!r} {spec.dtype.name} {spec.shape}, output {self._output_name!r}"
        )

    def _run(self, x):
        tf = _tf()
        outs = []
        for i in range(0, len(x), BATCH):
            batch = x[i : i + BATCH]
            if self._layout == "nchw":
                batch = batch.transpose(0, 3, 1, 2)
            if self._dtype.is_integer:
                batch = np.round(batch)
            out = self._fn(**{self._input_name: tf.cast(tf.constant(batch), self._dtype)})[self._output_name]
            outs.append(_depth_map(tf.cast(out, tf.float32).numpy(), self.path))
        return np.concatenate(outs)


def _quant(detail, path, what):
    """(scale, zero_point) of a TFLite tensor; (0.0, 0) when it is not quantized."""
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []))
    if scales.size > 1:
        raise KdepthError(
            f"{path}: {what} {detail['name']!r} is quantized per channel ({scales.size} scales); "
            "an image input or depth output needs one scale per tensor."
        )
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero_point)


def quantize(x, dtype, scale, zero_point):
    """Float values to a TFLite tensor dtype: q = round(x / scale + zero_point), clipped to the dtype.

    A float dtype is a plain cast; an integer dtype with scale 0 (not quantized) takes round(x).
    """
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return x.astype(dtype)
    q = np.round(x / scale + zero_point) if scale > 0 else np.round(x)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q, scale, zero_point):
    """A TFLite tensor to float32: (q - zero_point) * scale for a quantized integer tensor."""
    q = np.asarray(q)
    if np.issubdtype(q.dtype, np.integer) and scale > 0:
        return ((q.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)
    return q.astype(np.float32)


def _describe_tensor(d):
    scale, zp = d.get("quantization", (0.0, 0))
    quant = f" (scale {scale:.6g}, zero point {zp})" if scale else ""
    return f"{d['name']!r} {np.dtype(d['dtype']).name} {[int(v) for v in d['shape_signature']]}{quant}"


class TfliteDepthModel(DepthModel):
    """A .tflite model with one image input and one depth output, run with LiteRT, one image per call."""

    kind = "tflite"

    def __init__(self, path, threads=None, input_size=None, **kwargs):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        except Exception as e:  # ValueError for a file that is not a valid flatbuffer
            raise KdepthError(
                f"{path}: cannot be loaded as a TFLite model ({type(e).__name__}: {e}); the file is not a .tflite "
                "flatbuffer, or it is truncated or corrupt."
            ) from None
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise KdepthError(
                f"{path}: TFLite model has {len(inputs)} input(s) [{'; '.join(_describe_tensor(d) for d in inputs)}] "
                f"and {len(outputs)} output(s) [{'; '.join(_describe_tensor(d) for d in outputs)}]; kdepth runs depth "
                "models with exactly one image input and one depth output."
            )
        self._in, self._out = inputs[0], outputs[0]
        self._layout, h, w = _spatial(list(self._in["shape_signature"]), path, f"input {self._in['name']!r}")
        h, w = _fixed_size(h, w, input_size, path)
        shape = [1, h, w, 3] if self._layout == "nhwc" else [1, 3, h, w]
        try:
            if list(self._in["shape"]) != shape:
                self._interpreter.resize_tensor_input(self._in["index"], shape)
            with quiet.litert_quietly():  # XNNPACK's INFO line comes from the allocation
                self._interpreter.allocate_tensors()
        except Exception as e:
            raise KdepthError(f"{path}: cannot prepare the TFLite model for input {shape} ({type(e).__name__}: {e}).") from None
        self._out = self._interpreter.get_output_details()[0]  # shapes are final after allocation
        self._in_q = _quant(self._in, path, "input")
        if kwargs.get("input_range", "auto") == "auto":
            kwargs["input_range"], kwargs["range_reason"] = infer_input_range(self._in["dtype"], *self._in_q, path)
        super().__init__(path, (h, w), input_dtype=np.dtype(self._in["dtype"]).name, **kwargs)
        self._out_q = _quant(self._out, path, "output")
        self.info = f"tflite, input {_describe_tensor(self._in)}, output {_describe_tensor(self._out)}"

    def _run(self, x):
        outs = []
        for image in x:
            batch = image[None] if self._layout == "nhwc" else image.transpose(2, 0, 1)[None]
            self._interpreter.set_tensor(self._in["index"], quantize(batch, self._in["dtype"], *self._in_q))
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(self._out["index"])
            outs.append(_depth_map(dequantize(raw, *self._out_q), self.path)[0])
        return np.stack(outs)


def infer_input_range(dtype, scale, zero_point, path="model"):
    """The pixel range a model's integer input expects, from its quantization.

    Args:
        dtype: the input tensor's dtype.
        scale, zero_point: its quantization (scale 0 = not quantized).
        path: for messages.

    Returns:
        ("0-1" or "0-255", the reason in words) for uint8 / int8 inputs; ("0-255", reason) for
        float or unquantized integer inputs (raw values).

    Raises:
        KdepthError: a quantized 8-bit input whose scale is neither about 1/255 nor about 1.
    """
    dtype = np.dtype(dtype)
    name = dtype.name
    if not np.issubdtype(dtype, np.integer):
        return "0-255", f"{name} input: kdepth's convention"
    if scale <= 0:
        return "0-255", f"{name} input without quantization: raw pixel values"
    described = f"{name} input quantized with scale {scale:.6g}, zero point {zero_point}"
    if abs(scale * 255.0 - 1.0) <= RANGE_TOLERANCE:
        return "0-1", f"{described}: its float input is 0-1"
    if dtype.itemsize == 1 and abs(scale - 1.0) <= RANGE_TOLERANCE:
        return "0-255", f"{described}: its float input is 0-255"
    low, high = (np.iinfo(dtype).min - zero_point) * scale, (np.iinfo(dtype).max - zero_point) * scale
    raise KdepthError(
        f"{path}: {described}, i.e. float input {low:.4g}..{high:.4g}, which is neither 0-1 (scale 1/255) nor 0-255 "
        "(scale 1); kdepth cannot tell which pixel range it expects. Pass --input-range 0-255 or --input-range 0-1 "
        "(input_range= in the Python API)."
    )


def load_depth_model(path, *, input_range="auto", output_scale=1.0, threads=None, input_size=None):
    """Loads a depth model of any supported kind (see the module docstring).

    Args:
        path: a .keras file, a run or stage folder, a SavedModel folder or a .tflite file.
        input_range: "auto" (from a quantized input, else 0-255; `infer_input_range`),
            "0-255" (kdepth's convention: raw RGB) or "0-1" (pixels divided by 255 before they
            reach the model, and before quantization).
        output_scale: multiplies the model's raw output to give metres.
        threads: LiteRT interpreter threads for .tflite models (None = LiteRT's default).
        input_size: (H, W) for SavedModel or TFLite models whose input height and width are free;
            ignored when the model fixes them.

    Returns:
        A `DepthModel`.

    Raises:
        KdepthError: the path is missing, of the wrong kind, corrupt, or not a one-input depth
            model, or "auto" cannot tell a quantized input's range.
    """
    if input_range not in INPUT_RANGES:
        raise KdepthError(f"input_range received {input_range!r}; allowed: {list(INPUT_RANGES)}.")
    if not (np.isfinite(output_scale) and output_scale > 0):
        raise KdepthError(f"output_scale received {output_scale!r}; allowed: a number > 0 (raw output units to metres).")
    if threads is not None and int(threads) < 1:
        raise KdepthError(f"threads received {threads!r}; allowed: an integer >= 1, or None for LiteRT's default.")
    kind, resolved = resolve_model_path(path)
    common = dict(input_range=input_range, output_scale=output_scale)
    if kind == "keras":
        return KerasDepthModel(resolved, **common)
    if kind == "saved_model":
        return SavedModelDepthModel(resolved, input_size=input_size, **common)
    return TfliteDepthModel(resolved, threads=threads, input_size=input_size, **common)
