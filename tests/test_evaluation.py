"""Evaluation: the NYU protocol's metrics, crop, clipping, alignment, averaging, `evaluate` and the CLI."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from kdepth.cli import main
from kdepth.config import load_config, save_config
from kdepth.data.sources import SyntheticSource
from kdepth.errors import KdepthError
from kdepth.evaluation import (
    METRICS,
    compute_errors,
    eigen_crop,
    eigen_mask,
    evaluate,
    evaluate_arrays,
    flip_consistency,
)
from kdepth.inference import DepthModel, load_depth_model, resize_image
from kdepth.models import DepthNetwork


def reference_metrics(gt, pred, min_depth=1e-3, max_depth=10.0):
    """Plain-Python reference: loops over pixels with `math`, valid = finite gt in (min, max)."""
    pairs = []
    for g, p in zip(np.ravel(gt).tolist(), np.ravel(pred).tolist(), strict=True):
        if math.isfinite(g) and min_depth < g < max_depth:
            pairs.append((g, min(max(p, min_depth), max_depth)))
    n = len(pairs)
    thresh = [max(g / p, p / g) for g, p in pairs]
    e = [math.log(p) - math.log(g) for g, p in pairs]
    return {
        "delta1": sum(t < 1.25 for t in thresh) / n,
        "delta2": sum(t < 1.25**2 for t in thresh) / n,
        "delta3": sum(t < 1.25**3 for t in thresh) / n,
        "abs_rel": sum(abs(g - p) / g for g, p in pairs) / n,
        "sq_rel": sum((g - p) ** 2 / g for g, p in pairs) / n,
        "rmse": math.sqrt(sum((g - p) ** 2 for g, p in pairs) / n),
        "rmse_log": math.sqrt(sum(v * v for v in e) / n),
        "log10": sum(abs(math.log10(g) - math.log10(p)) for g, p in pairs) / n,
        "silog": 100 * math.sqrt(sum(v * v for v in e) / n - (sum(e) / n) ** 2),
    }


def _with_holes(shape, seed):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0.5, 9.0, shape)
    holes = rng.random(shape)
    gt[holes < 0.1] = 0.0
    gt[(holes >= 0.1) & (holes < 0.13)] = np.nan
    gt[(holes >= 0.13) & (holes < 0.15)] = np.inf
    gt[(holes >= 0.15) & (holes < 0.17)] = 12.0  # beyond max_depth
    pred = gt * rng.uniform(0.6, 1.6, shape)
    pred = np.where(np.isfinite(pred), pred, 3.0)
    pred[0, :3] = [0.0, -1.0, 50.0]  # clipped to [1e-3, 10]
    return gt, pred.astype(np.float32)


def test_every_metric_matches_the_reference_on_arrays_with_holes():
    gts, preds = zip(*(_with_holes((12, 16), seed) for seed in range(3)), strict=True)
    result = evaluate_arrays(gts, preds, protocol="full")
    refs = [reference_metrics(g, p) for g, p in zip(gts, preds, strict=True)]
    for m in METRICS:
        assert result[m] == pytest.approx(np.mean([r[m] for r in refs]), rel=1e-6), m
    assert result["count"] == 3 and result["skipped"] == 0


def test_pred_twice_gt_by_hand():
    gt = np.array([[1.0, 2.0], [4.0, 0.5]])
    errors = compute_errors(gt, 2 * gt)
    assert errors["delta1"] == 0 and errors["delta2"] == 0 and errors["delta3"] == 0  # ratio 2 > 1.25^3
    assert errors["abs_rel"] == pytest.approx(1.0)
    assert errors["sq_rel"] == pytest.approx(np.mean(gt))  # (gt - 2gt)^2 / gt = gt
    assert errors["rmse"] == pytest.approx(math.sqrt((1 + 4 + 16 + 0.25) / 4))
    assert errors["rmse_log"] == pytest.approx(math.log(2))
    assert errors["log10"] == pytest.approx(math.log10(2))
    assert errors["silog"] == pytest.approx(0.0, abs=1e-6)  # a pure scale error is scale-invariant


def test_small_array_by_hand():
    # ratios 1, 1.25 (not < 1.25), 2
    errors = compute_errors(np.array([1.0, 2.0, 4.0]), np.array([1.0, 2.5, 2.0]))
    assert errors["delta1"] == pytest.approx(1 / 3)
    assert errors["delta2"] == pytest.approx(2 / 3) and errors["delta3"] == pytest.approx(2 / 3)
    assert errors["abs_rel"] == pytest.approx((0 + 0.5 / 2 + 2 / 4) / 3)
    assert errors["sq_rel"] == pytest.approx((0 + 0.25 / 2 + 4 / 4) / 3)
    assert errors["rmse"] == pytest.approx(math.sqrt((0 + 0.25 + 4) / 3))
    e = [0.0, math.log(1.25), -math.log(2)]
    assert errors["rmse_log"] == pytest.approx(math.sqrt(sum(v * v for v in e) / 3))
    assert errors["log10"] == pytest.approx((math.log10(1.25) + math.log10(2)) / 3)
    assert errors["silog"] == pytest.approx(100 * math.sqrt(sum(v * v for v in e) / 3 - (sum(e) / 3) ** 2))


def test_compute_errors_refuses_holes_and_empty_input():
    with pytest.raises(KdepthError, match="finite depths > 0 only"):
        compute_errors(np.array([1.0, 0.0]), np.array([1.0, 1.0]))
    with pytest.raises(KdepthError, match="no pixels"):
        compute_errors(np.array([]), np.array([]))


def test_eigen_crop_on_nyu_and_scaled():
    mask = eigen_mask((480, 640))
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (45, 471, 41, 601)
    assert mask.sum() == (471 - 45) * (601 - 41)
    assert eigen_crop((240, 320)) == (22, 236, 20, 300)  # same field of view at half size


def test_eigen_protocol_ignores_errors_outside_the_crop():
    gt = np.full((480, 640), 3.0)
    pred = gt.copy()
    pred[:45] = 9.0  # wrong only outside the crop
    pred[:, 601:] = 0.5
    eigen = evaluate_arrays([gt], [pred], protocol="eigen")
    full = evaluate_arrays([gt], [pred], protocol="full")
    assert eigen["delta1"] == 1.0 and eigen["abs_rel"] == pytest.approx(0.0)
    assert full["delta1"] < 1.0


def test_predictions_are_clipped_and_ground_truth_capped():
    gt = np.array([[5.0, 5.0], [10.0, 0.0005]])  # 10 (not < max_depth) and 0.0005 are not valid
    pred = np.array([[100.0, 5.0], [1.0, 1.0]])
    result = evaluate_arrays([gt], [pred], protocol="full")
    assert result["abs_rel"] == pytest.approx((5 / 5 + 0) / 2)  # 100 m is clipped to 10 m
    assert result["rmse"] == pytest.approx(math.sqrt(25 / 2))


def test_prediction_is_resized_to_the_ground_truth():
    gt = np.full((8, 10), 2.5)
    result = evaluate_arrays([gt], [np.full((4, 5), 2.5, np.float32)], protocol="full")
    assert result["delta1"] == 1.0 and result["rmse"] == pytest.approx(0.0, abs=1e-6)


def test_median_alignment_fixes_a_scaled_prediction():
    gt, _ = _with_holes((12, 16), seed=4)
    gt[gt > 9] = 0.0  # inf and beyond-range holes become 0-holes ...
    gt = gt / 2  # ... so that 2 * gt stays below the 10 m clip
    pred = np.where(np.isfinite(gt), gt, 1.0) * 2.0
    assert evaluate_arrays([gt], [pred], protocol="full")["abs_rel"] == pytest.approx(1.0)
    aligned = evaluate_arrays([gt], [pred], protocol="full", align="median")
    assert aligned["delta1"] == 1.0 and aligned["abs_rel"] == pytest.approx(0.0, abs=1e-6)


def test_alignment_comes_before_clipping():
    # Relative depth in thousandths: most raw values lie below min_depth and would be clipped first.
    gt = np.linspace(0.5, 8.0, 40).reshape(5, 8)
    aligned = evaluate_arrays([gt], [gt * 1e-4], protocol="full", align="median")
    assert aligned["abs_rel"] == pytest.approx(0.0, abs=1e-6)


def test_scale_shift_alignment_fixes_an_affine_prediction():
    gt, _ = _with_holes((12, 16), seed=5)
    pred = 0.3 * np.where(np.isfinite(gt), gt, 1.0) + 0.7
    assert evaluate_arrays([gt], [pred], protocol="full", align="median")["abs_rel"] > 0.01  # scale alone cannot
    aligned = evaluate_arrays([gt], [pred], protocol="full", align="scale-shift")
    assert aligned["delta1"] == 1.0 and aligned["abs_rel"] == pytest.approx(0.0, abs=1e-6)


def test_metrics_are_averaged_per_image_not_pooled_over_pixels():
    gt_a = np.zeros((10, 10))
    gt_a[0, 0] = 2.0  # one valid pixel, predicted twice too far: abs_rel 1
    gt_b = np.full((10, 10), 3.0)  # 100 valid pixels, exact
    pred_a, pred_b = np.full((10, 10), 4.0), gt_b.copy()
    result = evaluate_arrays([gt_a, gt_b], [pred_a, pred_b], protocol="full")
    per_image = [compute_errors(gt_a[0, :1], pred_a[0, :1]), compute_errors(gt_b, pred_b)]
    pooled = compute_errors(np.r_[gt_a[0, :1], gt_b.ravel()], np.r_[pred_a[0, :1], pred_b.ravel()])
    assert result["abs_rel"] == pytest.approx(0.5) == pytest.approx(np.mean([e["abs_rel"] for e in per_image]))
    assert pooled["abs_rel"] == pytest.approx(1 / 101)
    assert result["delta1"] == pytest.approx(0.5) and pooled["delta1"] == pytest.approx(100 / 101)


def test_images_without_valid_pixels_are_skipped_and_counted():
    empty = np.zeros((6, 6))
    good = np.full((6, 6), 2.0)
    result = evaluate_arrays([empty, good], [good, good], protocol="full")
    assert result["count"] == 1 and result["skipped"] == 1 and result["delta1"] == 1.0
    none = evaluate_arrays([empty], [good], protocol="full")
    assert none["count"] == 0 and all(math.isnan(none[m]) for m in METRICS)


def test_bad_arguments():
    with pytest.raises(KdepthError, match=r"protocol received 'kitti'; allowed: \['eigen', 'full'\]"):
        evaluate_arrays([np.ones((4, 4))], [np.ones((4, 4))], protocol="kitti")
    with pytest.raises(KdepthError, match=r"align received 'mean'"):
        evaluate_arrays([np.ones((4, 4))], [np.ones((4, 4))], align="mean")
    with pytest.raises(KdepthError, match="1 ground truths and 2 predictions"):
        evaluate_arrays([np.ones((4, 4))], [np.ones((4, 4))] * 2)


def test_flip_consistency():
    symmetric = np.array([[1.0, 2.0, 1.0]])
    assert flip_consistency(symmetric, symmetric) == 0.0
    ramp = np.array([[1.0, 2.0, 4.0]])
    # The flipped image's prediction, un-flipped, is [4, 2, 1]: log differences -ln4, 0, ln4.
    assert flip_consistency(ramp, ramp) == pytest.approx(math.sqrt(2 * math.log(4) ** 2 / 3))


# ----- evaluate on a model and a source ----------------------------------------------------------


class RampModel(DepthModel):
    """A model that is not flip-symmetric: depth = 1 + 2 * column / width + brightness / 255."""

    kind = "test"

    def __init__(self):
        super().__init__("ramp", (16, 16))

    def _run(self, x):
        ramp = np.linspace(0.0, 2.0, x.shape[2], dtype=np.float32)
        return 1.0 + ramp[None, None, :] + x.mean(axis=-1) / 255.0


def _source(size=(24, 32), test=3):
    return SyntheticSource({"train": 1, "test": test}, size, seed=1)


def test_evaluate_matches_evaluate_arrays_on_predict():
    model, source = RampModel(), _source()
    calls = []
    result = evaluate(model, source, "test", protocol="eigen", progress=lambda done, total: calls.append((done, total)))
    samples = [source.load("test", i) for i in range(3)]
    expected = evaluate_arrays([d for _, d in samples], [model.predict(rgb) for rgb, _ in samples], protocol="eigen")
    for m in METRICS:
        assert result.metrics[m] == pytest.approx(expected[m], rel=1e-5), m
    assert result.count == 3 and result.skipped == 0 and calls == [(1, 3), (2, 3), (3, 3)]
    assert [row["name"] for row in result.per_image] == source.sample_names("test")

    # Flip consistency, by hand for the first image at the model's input size.
    small = resize_image(samples[0][0], model.input_size)[None]
    by_hand = flip_consistency(model.predict(small)[0], model.predict(small[:, :, ::-1])[0])
    assert result.per_image[0]["flip_consistency"] == pytest.approx(by_hand, rel=1e-5)
    assert result.flip_consistency > 0.1  # the ramp is far from symmetric


def test_flip_tta_averages_with_the_unflipped_prediction_of_the_flipped_image():
    model, source = RampModel(), _source(size=(16, 16), test=2)
    result = evaluate(model, source, "test", protocol="full", flip_tta=True, limit=1)
    rgb, gt = source.load("test", 0)
    x = rgb.astype(np.float32)[None]
    averaged = 0.5 * (model.predict(x)[0] + model.predict(x[:, :, ::-1])[0][:, ::-1])
    expected = evaluate_arrays([gt], [averaged], protocol="full")
    assert result.count == 1 and result.flip_tta
    for m in METRICS:
        assert result.metrics[m] == pytest.approx(expected[m], rel=1e-5), m
    # The ramp's mirror image averages to a flat 2 m + brightness: flip TTA changes the figures.
    assert evaluate(model, source, "test", protocol="full", limit=1).metrics["rmse"] != pytest.approx(result.metrics["rmse"])


def test_result_json_and_table():
    result = evaluate(RampModel(), _source(), "test", protocol="full", align="median", limit=2)
    data = json.loads(result.to_json(model_path="ramp.tflite", data="synthetic", split="test", protocol="full"))
    assert set(data["metrics"]) == set(METRICS)
    for key in ("flip_consistency", "count", "skipped", "model", "data", "split", "protocol", "align", "flip_tta", "date", "input_size", "per_image"):
        assert key in data, key
    assert data["count"] == 2 and data["model"] == "ramp.tflite" and data["align"] == "median"
    assert data["metrics"]["delta1"] == pytest.approx(result.metrics["delta1"])
    table = result.format()
    assert "alignment: median" in table and "delta1" in table and "flip consistency" in table
    assert "alignment" not in evaluate(RampModel(), _source(), "test", limit=1).format()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny kdepth network with random head kernels (so its depth is not a constant), in a run folder."""
    root = tmp_path_factory.mktemp("eval_model")
    network = DepthNetwork(input_size=(32, 32), scales=2, coarse_hidden=16)
    rng = np.random.default_rng(0)
    for name in ("scale1_dense2", "scale2_head"):
        kernel, bias = network.get_layer(name).get_weights()
        network.get_layer(name).set_weights([rng.normal(0, 1e-3, kernel.shape).astype(np.float32), bias])
    stage = root / "runs" / "tiny" / "stage1"
    stage.mkdir(parents=True)
    network.save(stage / "model.keras")
    config = load_config([], ["model.input_size=[32, 32]", "data.synthetic_test=3", "data.synthetic_size=[36, 48]"])
    save_config(config, stage)
    return stage


def test_evaluate_a_tiny_kdepth_model_end_to_end(tiny_model):
    model = load_depth_model(tiny_model)
    source = _source(size=(36, 48))
    result = evaluate(model, source, "test", protocol="eigen")
    assert result.count == 3 and result.model_kind == "keras" and result.input_size == (32, 32)
    assert all(0.0 <= result.metrics[m] <= 1.0 for m in ("delta1", "delta2", "delta3"))
    assert all(math.isfinite(result.metrics[m]) and result.metrics[m] >= 0 for m in METRICS)
    assert result.flip_consistency > 0


def test_cli_evaluate_writes_json(tiny_model, tmp_path):
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model.parent), "--data", "synthetic", "--json", str(out), "--flip-tta"])
    assert result.exit_code == 0, result.output
    assert "config.toml (the run's own" in result.output  # data settings come from the run
    assert "delta1" in result.output and "flip consistency" in result.output
    data = json.loads(out.read_text())
    assert set(data["metrics"]) == set(METRICS)
    assert data["count"] == 3 and data["split"] == "test" and data["protocol"] == "eigen" and data["flip_tta"] is True
    assert data["data"] == "synthetic" and data["model"].endswith("stage1/model.keras") and data["model_kind"] == "keras"


def test_cli_evaluate_alignment_and_bad_model(tiny_model, tmp_path):
    ok = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model / "model.keras"), "--data", "synthetic",
                                   "--set", "data.synthetic_test=2", "--align", "scale-shift", "--protocol", "full", "--limit", "1"])
    assert ok.exit_code == 0, ok.output
    assert "alignment: scale-shift" in ok.output and "1 images of synthetic / test: protocol full" in ok.output
    missing = CliRunner().invoke(main, ["evaluate", "--model", str(tmp_path / "none.tflite"), "--data", "synthetic"])
    assert missing.exit_code == 1 and "none.tflite: does not exist" in missing.output


def test_cli_evaluate_help_has_an_example():
    result = CliRunner().invoke(main, ["evaluate", "--help"])
    assert result.exit_code == 0 and "kdepth evaluate --model" in result.output
