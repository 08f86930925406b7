"""Training metrics vs numpy, accumulated over several batches with holes, and under 2 replicas."""

import textwrap

import keras
import numpy as np
import pytest

from kdepth.metrics import RMSE, AbsRel, DeltaAccuracy, training_metrics


def make_batch(seed, b=3, h=5, w=6):
    """y_true with a hole block, a NaN, an inf and an all-hole sample; y_pred > 0."""
    rng = np.random.default_rng(seed)
    y_true = rng.uniform(0.5, 5.0, (b, h, w, 1)).astype(np.float32)
    y_true[0, 1:3, 1:4] = 0.0
    y_true[1, 0, 0] = np.nan
    y_true[1, 2, 2] = np.inf
    y_true[2] = 0.0
    # Predictions near the truth so that every delta threshold is informative.
    y_pred = (np.nan_to_num(y_true, nan=2.0, posinf=2.0) + 0.1) * rng.uniform(
        0.6, 1.6, (b, h, w, 1)
    )
    return y_true, np.maximum(y_pred, 0.2).astype(np.float32)


def np_pixels(batches, weights=None):
    """Valid (gt, pred, weight) pixels of all batches, flattened, in float64."""
    gts, preds, ws = [], [], []
    for k, (gt, pred) in enumerate(batches):
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(gt) & (gt > 0)
        w = (
            np.ones_like(gt)
            if weights is None
            else np.broadcast_to(weights[k].reshape(-1, 1, 1, 1), gt.shape)
        )
        gts.append(gt[valid])
        preds.append(pred[valid])
        ws.append(w[valid])
    return (np.concatenate(a).astype(np.float64) for a in (gts, preds, ws))


def np_metrics(batches, weights=None):
    gt, pred, w = np_pixels(batches, weights)
    ratio = np.maximum(gt / pred, pred / gt)
    out = {f"delta{k}": np.sum(w * (ratio < 1.25**k)) / np.sum(w) for k in (1, 2, 3)}
    out["abs_rel"] = np.sum(w * np.abs(gt - pred) / gt) / np.sum(w)
    out["rmse"] = np.sqrt(np.sum(w * (gt - pred) ** 2) / np.sum(w))
    return out


def test_training_metrics_names_and_thresholds():
    metrics = training_metrics()
    assert [m.name for m in metrics] == ["delta1", "delta2", "delta3", "abs_rel", "rmse"]
    assert [m.threshold for m in metrics[:3]] == [1.25, 1.25**2, 1.25**3]
    assert isinstance(metrics[3], AbsRel) and isinstance(metrics[4], RMSE)
    assert training_metrics()[0] is not metrics[0]


def test_default_delta_names():
    assert DeltaAccuracy().name == "delta1"
    assert DeltaAccuracy(1.25**3).name == "delta3"
    assert DeltaAccuracy(1.1).name == "delta_1.1"


def test_metrics_match_numpy_over_two_updates():
    batches = [make_batch(0), make_batch(1, b=4, h=7, w=3)]
    expected = np_metrics(batches)
    assert 0.1 < expected["delta1"] < expected["delta2"] < expected["delta3"] <= 1.0
    for metric in training_metrics():
        for gt, pred in batches:
            metric.update_state(gt, pred)
        np.testing.assert_allclose(
            float(metric.result()), expected[metric.name], rtol=1e-5, err_msg=metric.name
        )


def test_metrics_are_pixel_weighted_not_batch_averaged():
    first, second = make_batch(2), make_batch(3, b=6, h=9, w=9)
    per_batch_mean = np.mean([np_metrics([b])["abs_rel"] for b in (first, second)])
    metric = AbsRel()
    metric.update_state(*first)
    metric.update_state(*second)
    np.testing.assert_allclose(
        float(metric.result()), np_metrics([first, second])["abs_rel"], rtol=1e-5
    )
    assert not np.isclose(float(metric.result()), per_batch_mean, rtol=1e-3)


def test_per_sample_weights():
    batches = [make_batch(4), make_batch(5)]
    weights = [np.array([0.5, 2.0, 1.0], np.float32), np.array([1.0, 0.0, 3.0], np.float32)]
    expected = np_metrics(batches, weights)
    for metric in training_metrics():
        for (gt, pred), w in zip(batches, weights, strict=True):
            metric.update_state(gt, pred, sample_weight=w)
        np.testing.assert_allclose(
            float(metric.result()), expected[metric.name], rtol=1e-5, err_msg=metric.name
        )


def test_result_is_zero_before_any_valid_pixel_and_after_reset():
    for metric in training_metrics():
        assert float(metric.result()) == 0.0
        metric.update_state(np.zeros((1, 4, 4, 1), np.float32), np.ones((1, 4, 4, 1), np.float32))
        assert float(metric.result()) == 0.0, metric.name
        metric.update_state(*make_batch(6))
        assert float(metric.result()) > 0.0, metric.name
        metric.reset_state()
        assert float(metric.result()) == 0.0, metric.name


def test_values_at_holes_do_not_matter():
    gt, pred = make_batch(7)
    changed = pred.copy()
    changed[~(np.isfinite(gt) & (np.nan_to_num(gt) > 0))] = 1e6
    for a, b in zip(training_metrics(), training_metrics(), strict=True):
        a.update_state(gt, pred)
        b.update_state(gt, changed)
        assert float(a.result()) == float(b.result()), a.name


def test_rejects_mismatched_shapes_and_bad_threshold():
    with pytest.raises(ValueError, match="masked_resize"):
        RMSE().update_state(np.ones((1, 4, 4, 1), np.float32), np.ones((1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="threshold must be > 1"):
        DeltaAccuracy(0.8)


@pytest.mark.parametrize(
    "metric", [DeltaAccuracy(1.1, name="d11"), AbsRel(name="are"), RMSE()], ids=lambda m: m.name
)
def test_get_config_round_trip(metric):
    restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert type(restored) is type(metric)
    assert restored.get_config() == metric.get_config()
    gt, pred = make_batch(8)
    metric.update_state(gt, pred)
    restored.update_state(gt, pred)
    assert float(restored.result()) == float(metric.result())


def test_metrics_log_during_fit():
    gt, _ = make_batch(9, b=4, h=8, w=8)
    x = np.random.default_rng(10).normal(size=(4, 8, 8, 3)).astype(np.float32)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(
        inputs, keras.layers.Conv2D(1, 3, padding="same", activation="softplus")(inputs)
    )
    model.compile(optimizer="adam", loss="mse", metrics=training_metrics())
    logs = model.evaluate(
        x, np.nan_to_num(gt, nan=0.0, posinf=0.0), batch_size=2, verbose=0, return_dict=True
    )
    pred = model.predict(x, verbose=0)
    expected = np_metrics([(gt, pred)])
    for name in ("delta1", "delta2", "delta3", "abs_rel", "rmse"):
        np.testing.assert_allclose(logs[name], expected[name], rtol=1e-4, err_msg=name)


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    from kdepth.metrics import training_metrics

    rng = np.random.default_rng(0)
    batches = []
    for _ in range(2):
        gt = rng.uniform(0.5, 5.0, (4, 5, 6, 1)).astype(np.float32)
        gt[0, :3] = 0.0  # replica 0 sees more holes than replica 1
        gt[1] = 0.0
        gt[2, 1, 1] = np.nan
        pred = (gt + 0.2) * rng.uniform(0.6, 1.6, gt.shape).astype(np.float32)
        batches.append((gt, np.maximum(pred, 0.2)))

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2

    def split(array):
        parts = [array[:2], array[2:]]
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group])
        )

    single = training_metrics()
    for gt, pred in batches:
        for m in single:
            m.update_state(gt, pred)
    with strategy.scope():
        mirrored = training_metrics()

    @tf.function
    def update(gt, pred):
        for m in mirrored:
            m.update_state(gt, pred)

    for gt, pred in batches:
        strategy.run(update, args=(split(gt), split(pred)))
    results = {
        a.name: {"single": float(a.result()), "replicas": float(b.result())}
        for a, b in zip(single, mirrored)
    }
    # The pixel count itself (a ratio of means would hide a MEAN aggregation).
    results["count"] = {"single": float(single[0].count.numpy()), "replicas": float(mirrored[0].count.numpy())}
    print("RESULT " + json.dumps(results))
    """
)


def test_metrics_under_two_replicas_equal_single_device(on_two_cpus):
    results = on_two_cpus(DISTRIBUTED_SCRIPT)
    assert list(results) == ["delta1", "delta2", "delta3", "abs_rel", "rmse", "count"]
    assert results["count"]["single"] == 2 * (4 * 30 - 18 - 30 - 1)  # valid pixels of both batches
    for name, r in results.items():
        assert r["single"] > 0, name
        np.testing.assert_allclose(r["replicas"], r["single"], rtol=1e-5, err_msg=name)


def _near_edges_numpy(y_true, edge_threshold, radius):
    """Reference of near_depth_edges with loops."""
    valid = np.isfinite(y_true) & (y_true > 0)
    log_d = np.log(np.where(valid, y_true, 1.0))
    b, h, w, _ = y_true.shape
    edges = np.zeros(y_true.shape, bool)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                for di, dj in ((0, 1), (1, 0)):
                    k, m = i + di, j + dj
                    if k < h and m < w and valid[n, i, j, 0] and valid[n, k, m, 0]:
                        if abs(log_d[n, i, j, 0] - log_d[n, k, m, 0]) > edge_threshold:
                            edges[n, i, j, 0] = edges[n, k, m, 0] = True
    near = np.zeros_like(edges)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                window = edges[n, max(0, i - radius): i + radius + 1, max(0, j - radius): j + radius + 1]
                near[n, i, j, 0] = window.any()
    return near & valid


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_near_depth_edges_and_edge_delta_match_numpy(radius):
    from kdepth.metrics import EdgeDelta, near_depth_edges

    _, y_pred = make_batch(0, h=9, w=11)
    y_true = np.broadcast_to(2.0 + 0.01 * np.arange(11, dtype=np.float32)[None, None, :, None], (3, 9, 11, 1)).copy()
    y_true[:2, :, 5:] *= 1.5  # a step edge between columns 4 and 5; the slope alone is no edge
    y_true[0, 1:3, 1:3] = 0.0
    y_true[1, 0, 4] = np.nan
    y_true[2] = 0.0
    ref = _near_edges_numpy(y_true, 0.1, radius)
    np.testing.assert_array_equal(np.asarray(near_depth_edges(y_true, 0.1, radius)) > 0, ref)
    assert ref[0, 5, 4, 0] and ref[0, 5, 5, 0] and not ref[0, 5, 4 + radius + 2, 0]
    metric = EdgeDelta(radius=radius)
    metric.update_state(y_true, y_pred)
    ratio = np.maximum(y_true / y_pred, y_pred / y_true)[ref]
    np.testing.assert_allclose(float(metric.result()), np.mean(ratio < 1.25), rtol=1e-6)
