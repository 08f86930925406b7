"""The benchmark protocol: depth metrics per image, averaged over images (BTS / AdaBins convention).

For each image, on its valid pixels (docs/design.md, the evaluation protocol):

* valid: ``min_depth < gt < max_depth`` and finite (defaults 1e-3 and 10 m), and with
  ``protocol="eigen"`` inside the Eigen crop (rows 45:471, cols 41:601 of 480x640; see
  `eigen_mask` for other sizes). ``protocol="full"`` keeps every valid pixel.
* the prediction is resized to the ground truth's size (bilinear) if it differs, optionally
  aligned to the ground truth (``align``, for relative-depth models), then clipped to
  ``[min_depth, max_depth]``. Alignment comes before clipping, as in monodepth2's median
  scaling: a relative model's raw values may lie far outside the metric range.
* `compute_errors` gives delta1..3, AbsRel, SqRel, RMSE, RMSE log, log10 and SILog.

The figures are then averaged over images (an image with no valid pixel is skipped and
counted), which differs from pooling all pixels: every image weighs the same.

`evaluate` runs a `kdepth.inference.DepthModel` over a source's split: each image is resized to
the model's input size, predicted, and the prediction resized back to the ground truth's size
(480x640 for NYU). It also measures the set-loss idea at test time, *flip consistency*: for each
image, the RMS over all pixels (at the model's input size) of ``ln d - ln flip(d_flipped)``,
where ``d_flipped`` is the prediction for the left-right flipped image; averaged over images. A
model that has learnt the flip symmetry the set loss asks for scores 0. With ``flip_tta`` the
prediction is the mean (in metres) of ``d`` and ``flip(d_flipped)``, as BTS does.
"""

import dataclasses
import datetime
import json
import math
from pathlib import Path

import numpy as np

from kdepth.config import choices
from kdepth.errors import KdepthError
from kdepth.inference import resize_depth, resize_image

METRICS = ("delta1", "delta2", "delta3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
HIGHER_IS_BETTER = ("delta1", "delta2", "delta3")
PROTOCOLS = choices("eval", "protocol")
ALIGNS = choices("eval", "align")
DEGENERATE_SHARE = 0.9  # mean share of pixels within 1 % of the image's median that flags a constant output
CLIPPED_SHARE = 0.5  # share of predicted pixels at the clip limits that flags wrong units or saturation
# The Eigen crop on NYU's 480x640 (rows top:bottom, cols left:right).
EIGEN_SIZE = (480, 640)
EIGEN_CROP = (45, 471, 41, 601)


def compute_errors(gt, pred):
    """The nine depth metrics of one image over the pixels given.

    Args:
        gt, pred: same-shape arrays of the valid pixels only, depth in metres, all > 0.

    Returns:
        {"delta1", "delta2", "delta3": fraction with max(gt/pred, pred/gt) < 1.25^k;
         "abs_rel": mean |gt - pred| / gt; "sq_rel": mean (gt - pred)^2 / gt;
         "rmse": sqrt mean (gt - pred)^2; "rmse_log": sqrt mean (ln gt - ln pred)^2;
         "log10": mean |log10 gt - log10 pred|;
         "silog": 100 sqrt(mean e^2 - (mean e)^2), e = ln pred - ln gt} as floats.
    """
    gt = np.asarray(gt, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    if gt.shape != pred.shape:
        raise KdepthError(f"compute_errors received {gt.size} ground-truth and {pred.size} predicted pixels; they must match.")
    if gt.size == 0:
        raise KdepthError("compute_errors received no pixels; pass the valid pixels of one image.")
    if not (np.all(gt > 0) and np.all(pred > 0) and np.all(np.isfinite(gt)) and np.all(np.isfinite(pred))):
        raise KdepthError(
            "compute_errors needs finite depths > 0 only; mask holes out of gt and clip pred to [min_depth, max_depth] first."
        )
    thresh = np.maximum(gt / pred, pred / gt)
    diff = gt - pred
    e = np.log(pred) - np.log(gt)
    return {
        "delta1": float(np.mean(thresh < 1.25)),
        "delta2": float(np.mean(thresh < 1.25**2)),
        "delta3": float(np.mean(thresh < 1.25**3)),
        "abs_rel": float(np.mean(np.abs(diff) / gt)),
        "sq_rel": float(np.mean(diff**2 / gt)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean(e**2))),
        "log10": float(np.mean(np.abs(np.log10(gt) - np.log10(pred)))),
        # max(0, .): the variance can come out a hair below 0 in floating point.
        "silog": float(100.0 * np.sqrt(max(0.0, np.mean(e**2) - np.mean(e) ** 2))),
    }


def eigen_crop(shape):
    """(top, bottom, left, right) of the Eigen crop for a ground truth of `shape` (H, W).

    On 480x640 it is exactly rows 45:471, cols 41:601. Other sizes get the same crop scaled
    proportionally (each bound times H/480 or W/640, rounded), so a 240x320 map keeps the same
    field of view (rows 22:236, cols 20:300).
    """
    h, w = int(shape[0]), int(shape[1])
    top, bottom, left, right = EIGEN_CROP
    return (round(top * h / EIGEN_SIZE[0]), round(bottom * h / EIGEN_SIZE[0]),
            round(left * w / EIGEN_SIZE[1]), round(right * w / EIGEN_SIZE[1]))


def eigen_mask(shape):
    """Boolean (H, W) mask, True inside the Eigen crop (`eigen_crop`)."""
    top, bottom, left, right = eigen_crop(shape)
    mask = np.zeros((int(shape[0]), int(shape[1])), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise KdepthError(f"{name} received {value!r}; allowed: {list(allowed)}.")


def align_prediction(gt, pred, mode):
    """Aligns predicted valid pixels to the ground truth: "none", "median" or "scale-shift".

    "median" multiplies by median(gt) / median(pred); "scale-shift" fits a * pred + b to gt by
    least squares in depth space. Both use only the pixels given (the valid ones). A median
    prediction <= 0 cannot be scaled and is returned unchanged.
    """
    _check_choice("align", mode, ALIGNS)
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if mode == "median":
        ratio = np.median(gt) / np.median(pred) if np.median(pred) > 0 else 1.0
        return pred * ratio
    if mode == "scale-shift":
        design = np.stack([pred, np.ones_like(pred)], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, gt, rcond=None)
        return a * pred + b
    return pred


def _valid_pixels(gt, pred, protocol, min_depth, max_depth, align):
    """(gt, pred) on the valid pixels of one image after resize, alignment and clipping; None if none."""
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float32)
    if gt.ndim == 3 and gt.shape[-1] == 1:
        gt = gt[..., 0]
    if pred.ndim == 3 and pred.shape[-1] == 1:
        pred = pred[..., 0]
    if gt.ndim != 2 or pred.ndim != 2:
        raise KdepthError(f"received ground truth of shape {gt.shape} and prediction of shape {pred.shape}; expected (H, W) maps.")
    if pred.shape != gt.shape:
        pred = resize_depth(pred, gt.shape)
    valid = np.isfinite(gt) & (gt > min_depth) & (gt < max_depth)
    if protocol == "eigen":
        valid &= eigen_mask(gt.shape)
    if not valid.any():
        return None
    gt_v = gt[valid]
    # NaN or inf predictions count as wrong, not as missing: nan_to_num sends them to the clip bounds.
    pred_v = np.nan_to_num(pred[valid].astype(np.float64), nan=max_depth, posinf=max_depth, neginf=min_depth)
    pred_v = align_prediction(gt_v, pred_v, align)
    return gt_v, np.clip(pred_v, min_depth, max_depth)


def _mean_metrics(rows):
    if not rows:
        return {m: math.nan for m in METRICS}
    return {m: float(np.mean([r[m] for r in rows])) for m in METRICS}


def _check_protocol(protocol, align, min_depth, max_depth):
    _check_choice("protocol", protocol, PROTOCOLS)
    _check_choice("align", align, ALIGNS)
    if not 0 <= min_depth < max_depth:
        raise KdepthError(f"received min_depth={min_depth} and max_depth={max_depth}; need 0 <= min_depth < max_depth.")


def evaluate_arrays(gts, preds, protocol="eigen", min_depth=1e-3, max_depth=10.0, align="none"):
    """Per-image metrics averaged over images, for ground truths and predictions already in memory.

    Args:
        gts: sequence of (H, W) ground-truth depth maps in metres (0, NaN, inf = hole).
        preds: sequence of predicted depth maps in metres, one per gt; a prediction of another
            size is resized to its ground truth's size (bilinear).
        protocol: "eigen" (Eigen crop) or "full" (every valid pixel).
        min_depth, max_depth: valid ground truth is in (min_depth, max_depth); predictions are
            clipped to [min_depth, max_depth].
        align: "none", "median" or "scale-shift" (see `align_prediction`).

    Returns:
        {metric: mean over images for each of `METRICS`, "count": images evaluated,
         "skipped": images without a valid pixel}. Metrics are NaN when every image was skipped.
    """
    _check_protocol(protocol, align, min_depth, max_depth)
    if len(gts) != len(preds):
        raise KdepthError(f"evaluate_arrays received {len(gts)} ground truths and {len(preds)} predictions; they must match.")
    rows, skipped = [], 0
    for gt, pred in zip(gts, preds, strict=True):
        pixels = _valid_pixels(gt, pred, protocol, min_depth, max_depth, align)
        if pixels is None:
            skipped += 1
        else:
            rows.append(compute_errors(*pixels))
    return {**_mean_metrics(rows), "count": len(rows), "skipped": skipped}


def flip_consistency(depth, depth_of_flipped, min_depth=1e-3):
    """RMS over all pixels of ln depth - ln flip(depth_of_flipped), for one (H, W) prediction pair.

    `depth_of_flipped` is the prediction for the left-right flipped image, still in its own
    (flipped) frame. Depths are floored at `min_depth` before the log.
    """
    a = np.log(np.maximum(np.asarray(depth, np.float64), min_depth))
    b = np.log(np.maximum(np.asarray(depth_of_flipped, np.float64)[:, ::-1], min_depth))
    return float(np.sqrt(np.mean((a - b) ** 2)))


@dataclasses.dataclass
class EvalResult:
    """What `evaluate` measured, with everything needed to compare evaluations later.

    Attributes:
        metrics: {metric: mean over images} for each of `METRICS`.
        flip_consistency: mean over images of the per-image RMS log-depth difference between the
            prediction and the un-flipped prediction of the flipped image (0 = perfectly symmetric).
        count: images evaluated; skipped: images without a valid pixel (not in the means).
        per_image: [{"name", metric..., "flip_consistency"}] for every evaluated image.
    """

    metrics: dict
    flip_consistency: float
    count: int
    skipped: int
    protocol: str
    align: str
    flip_tta: bool
    min_depth: float
    max_depth: float
    model: str = ""
    model_kind: str = ""
    model_info: str = ""
    input_size: tuple = ()
    input_range: str = "0-255"
    output_scale: float = 1.0
    data: str = ""
    split: str = ""
    seconds: float = 0.0
    per_image: list = dataclasses.field(default_factory=list)
    skipped_names: list = dataclasses.field(default_factory=list)
    warnings: list = dataclasses.field(default_factory=list)

    def to_dict(self, model_path=None, data=None, split=None, protocol=None):
        """Every figure and its meta as a JSON-ready dict; the arguments replace the recorded labels."""
        try:
            from importlib.metadata import version

            kdepth_version = version("kdepth")
        except Exception:  # not installed as a package (a source checkout on sys.path)
            kdepth_version = "unknown"
        return {
            "metrics": {m: _json_float(self.metrics[m]) for m in METRICS},
            "flip_consistency": _json_float(self.flip_consistency),
            "count": self.count,
            "skipped": self.skipped,
            "skipped_names": list(self.skipped_names),
            "model": str(model_path if model_path is not None else self.model),
            "model_kind": self.model_kind,
            "model_info": self.model_info,
            "input_size": list(self.input_size),
            "input_range": self.input_range,
            "output_scale": self.output_scale,
            "data": str(data if data is not None else self.data),
            "split": split if split is not None else self.split,
            "protocol": protocol if protocol is not None else self.protocol,
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
            "align": self.align,
            "flip_tta": self.flip_tta,
            "seconds": round(self.seconds, 3),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "kdepth_version": kdepth_version,
            "warnings": list(self.warnings),
            "per_image": [{k: _json_float(v) if isinstance(v, float) else v for k, v in row.items()} for row in self.per_image],
        }

    def to_json(self, model_path=None, data=None, split=None, protocol=None):
        """`to_dict` as indented JSON text (NaN written as null)."""
        return json.dumps(self.to_dict(model_path, data, split, protocol), indent=2) + "\n"

    def format(self):
        """A readable table of the figures with a line of context above and below."""
        crop = "Eigen crop" if self.protocol == "eigen" else "no crop"
        lines = [
            f"{self.count} images of {self.data or 'the data'} / {self.split or '?'}: protocol {self.protocol} "
            f"({crop}, {self.min_depth:g} < gt < {self.max_depth:g} m, per-image means)"
            + (", flip TTA on" if self.flip_tta else ""),
        ]
        if self.align != "none":
            how = "median(gt)/median(pred)" if self.align == "median" else "least-squares a*pred+b"
            lines.append(f"alignment: {self.align} ({how} per image): figures rate relative depth, not metric depth")
        widths = {m: max(len(m), 7) for m in METRICS}
        lines.append("  ".join(m.rjust(widths[m]) for m in METRICS))
        lines.append("  ".join(_fmt(m, self.metrics[m]).rjust(widths[m]) for m in METRICS))
        lines.append("(delta: higher is better; the rest: lower is better)")
        lines.append(
            f"flip consistency (RMS of ln d - ln flip(d of flipped image), 0 = symmetric): {self.flip_consistency:.4f}"
        )
        if self.skipped:
            lines.append(f"skipped {self.skipped} images without a valid ground-truth pixel: {self.skipped_names[:5]}")
        if self.warnings:
            bar = "!" * 78
            lines = [bar, *(f"WARNING: {w}" for w in self.warnings), "the figures below are not to be trusted", bar,
                     *lines, bar]
        return "\n".join(lines)


def _fmt(metric, value):
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.2f}" if metric == "silog" else f"{value:.3f}" if metric in HIGHER_IS_BETTER else f"{value:.4f}"


def _json_float(value):
    value = float(value)
    return value if math.isfinite(value) else None


def _model_and_source(model, source, config):
    """A `DepthModel` and a `Source` from what `evaluate` was given (objects, paths or a data spec)."""
    from kdepth.inference import load_depth_model

    if isinstance(model, (str, Path)):
        model = load_depth_model(model)
    run_config = _run_config(model.path) if model.kind == "keras" else None
    if isinstance(source, (str, Path)):
        from kdepth.config import defaults
        from kdepth.data.sources import open_source, parse_data_spec

        config = config or run_config or defaults()
        kind, root = parse_data_spec(str(source))
        config = config.replace(data__source=kind, data__root=root)
        source = open_source(config.data, config.model.input_size)
    return model, source


def _run_config(model_path):
    """The config.toml of the kdepth run a model path points into, or None."""
    from kdepth.config import load_config
    from kdepth.paths import run_config_of

    path = run_config_of(model_path)
    return load_config([path]) if path is not None else None


def prediction_stats(pred, min_depth, max_depth):
    """How degenerate one prediction is: (share of pixels within 1 % of its median, share at the clip limits)."""
    pred = np.asarray(pred, np.float64)
    median = np.median(pred)
    constant = float(np.mean(np.abs(pred - median) <= 0.01 * abs(median))) if np.isfinite(median) else 1.0
    clipped = float(np.mean((pred <= min_depth) | (pred >= max_depth) | ~np.isfinite(pred)))
    return constant, clipped


def degenerate_warnings(stats, model, min_depth, max_depth):
    """Messages, with the likely cause, when predictions are degenerate; [] when they look sound.

    Args:
        stats: [(constant, clipped)] per image from `prediction_stats`.
        model: the `DepthModel` evaluated (its kind, info and input range name the likely cause).
        min_depth, max_depth: the clip range.
    """
    if not stats:
        return []
    constant, clipped = (float(np.mean(v)) for v in zip(*stats, strict=True))
    used = getattr(model, "input_range", "0-255")  # a duck-typed model may not say
    other = "0-1" if used == "0-255" else "0-255"
    if getattr(model, "input_dtype", "float32") in ("uint8", "int8"):
        cause = (f"the model's input is {model.input_dtype} and it was fed pixels in {used} "
                 f"({getattr(model, 'input_range_note', '')}); if that is not the range it expects, every input "
                 f"saturates: try --input-range {other}")
    else:
        cause = (f"a wrong pixel range (it was fed {used}; try --input-range {other}), "
                 "wrong output units (--output-scale) or an untrained or collapsed model")
    out = []
    if constant >= DEGENERATE_SHARE:
        out.append(f"predictions are degenerate: on average {100 * constant:.1f} % of each image's pixels lie within 1 % "
                   f"of one value. Likely cause: {cause}.")
    if clipped >= CLIPPED_SHARE:
        out.append(f"{100 * clipped:.1f} % of the predicted pixels are at the clip limits ({min_depth:g} or {max_depth:g} m) "
                   "or not finite. Likely cause: wrong output units (--output-scale, e.g. 0.001 for millimetres), a model "
                   f"that predicts disparity or relative depth (--align median), or {cause}.")
    return out


def _predict_batch(model, samples, flip_tta, min_depth):
    """(ground truth, prediction, flip consistency) per sample; one model call for the images and their flips."""
    x = np.stack([resize_image(rgb, model.input_size) for rgb, _ in samples])
    both = model.predict(np.concatenate([x, x[:, :, ::-1]]))
    preds, preds_of_flipped = both[: len(x)], both[len(x):]
    for (_, gt), pred, flipped in zip(samples, preds, preds_of_flipped, strict=True):
        c = flip_consistency(pred, flipped, min_depth)
        yield gt, (0.5 * (pred + flipped[:, ::-1]) if flip_tta else pred), c


def evaluate(model, source, split=None, *, protocol="eigen", flip_tta=False, align="none", limit=None, progress=None,
             min_depth=1e-3, max_depth=10.0, batch_size=8, config=None):
    """Evaluates a depth model on a split of a source (module docstring: protocol and flip consistency).

    Also `kdepth.evaluate`.

    Args:
        model: a `kdepth.inference.DepthModel`, or a path `kdepth.load` reads.
        source: a `kdepth.data.sources.Source`, or a data spec as for `kdepth fit --data`
            ("synthetic", a folder, a manifest .txt, "tfds[:DIR]", a .mat file).
        split: the split to evaluate; None = "test", or the source's only split
            (`kdepth.data.sources.resolve_split`).
        protocol: "eigen" or "full".
        flip_tta: average each prediction with the un-flipped prediction of the flipped image.
        align: "none", "median" or "scale-shift" per image (for relative-depth models).
        limit: evaluate only the first `limit` images.
        progress: called as progress(done, total) after each image.
        min_depth, max_depth: the valid ground-truth range and the prediction clip range.
        batch_size: images predicted per model call.
        config: the config whose data settings open a source given as a spec; None = the run's
            own config.toml when `model` is a kdepth run, else the defaults.

    Returns:
        An `EvalResult`.

    Example:
        >>> result = kdepth.evaluate("runs/quickstart", "synthetic")
        >>> print(result.format())
    """
    import time

    _check_protocol(protocol, align, min_depth, max_depth)
    from kdepth.data.sources import resolve_split

    model, source = _model_and_source(model, source, config)
    split, _ = resolve_split(source, split, "test")
    if limit is not None and int(limit) < 1:
        raise KdepthError(f"limit received {limit!r}; allowed: an integer >= 1, or None for the whole split.")
    start = time.perf_counter()
    n = source.num_samples(split)
    if limit is not None:
        n = min(n, int(limit))
    scored = _score(model, source, split, n, protocol, flip_tta, align, progress, min_depth, max_depth, batch_size)
    rows, per_image, consistency, skipped_names, stats = scored
    return EvalResult(
        metrics=_mean_metrics(rows),
        flip_consistency=float(np.mean(consistency)) if consistency else math.nan,
        count=len(rows),
        skipped=len(skipped_names),
        protocol=protocol,
        align=align,
        flip_tta=bool(flip_tta),
        min_depth=float(min_depth),
        max_depth=float(max_depth),
        model=model.path,
        model_kind=model.kind,
        model_info=model.info,
        input_size=tuple(model.input_size),
        input_range=model.input_range,
        output_scale=model.output_scale,
        data=getattr(source, "name", str(source)),
        split=split,
        seconds=time.perf_counter() - start,
        per_image=per_image,
        skipped_names=skipped_names,
        warnings=degenerate_warnings(stats, model, min_depth, max_depth),
    )


def _score(model, source, split, n, protocol, flip_tta, align, progress, min_depth, max_depth, batch_size):
    """Per-image errors of the first `n` samples: (rows, per_image, consistency, skipped names, prediction stats)."""
    names = source.sample_names(split)
    rows, per_image, consistency, skipped_names, stats = [], [], [], [], []
    for first in range(0, n, batch_size):
        indices = range(first, min(n, first + batch_size))
        samples = [source.load(split, i) for i in indices]
        for i, (gt, pred, c) in zip(indices, _predict_batch(model, samples, flip_tta, min_depth), strict=True):
            stats.append(prediction_stats(pred, min_depth, max_depth))
            pixels = _valid_pixels(gt, resize_depth(pred, gt.shape), protocol, min_depth, max_depth, align)
            if pixels is None:
                skipped_names.append(names[i])
            else:
                errors = compute_errors(*pixels)
                rows.append(errors)
                consistency.append(c)
                per_image.append({"name": names[i], **errors, "flip_consistency": c})
            if progress is not None:
                progress(i + 1, n)
    return rows, per_image, consistency, skipped_names, stats
