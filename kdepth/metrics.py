"""Depth metrics for monitoring training (`model.fit` logs).

Each metric accumulates over all valid pixels of everything seen since the last reset, i.e. it
is pixel-weighted: an image with more valid pixels counts more. That is fine for monitoring; the
benchmark protocol (per-image metrics averaged over images, Eigen crop, depth cap) belongs to
the evaluation module.

Holes follow the loss convention: ground truth 0, NaN or inf is not a target
(`kdepth.ops.valid_mask`). Accumulators are Keras metric variables with SUM aggregation, so
under `tf.distribute` each replica accumulates its share and reading the result sums the
replicas' totals before dividing.
"""

import math

import keras
import tensorflow as tf

from kdepth.ops import valid_mask


def _pixel_weights(y_true, sample_weight, dtype):
    """Per-pixel weights: the valid mask times sample_weight broadcast to y_true's shape.

    sample_weight may be a per-sample (B,) vector or anything broadcastable to y_true after
    trailing axes are appended.
    """
    weights = valid_mask(y_true, dtype=dtype)
    if sample_weight is None:
        return weights
    sample_weight = tf.cast(tf.convert_to_tensor(sample_weight), dtype)
    while sample_weight.shape.rank < y_true.shape.rank:
        sample_weight = sample_weight[..., None]
    # A hole times any weight (even NaN or inf) stays a hole.
    return tf.where(weights > 0, weights * sample_weight, tf.zeros_like(weights))


class _MaskedPixelMean(keras.metrics.Metric):
    """Weighted mean of a per-pixel value over the valid pixels of all batches seen."""

    def __init__(self, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(
            shape=(), initializer="zeros", dtype=self.dtype, aggregation="sum", name="total"
        )
        self.count = self.add_variable(
            shape=(), initializer="zeros", dtype=self.dtype, aggregation="sum", name="count"
        )

    def pixel_values(self, y_true, y_pred):
        """The per-pixel quantity to average; y_true holes are already replaced by 1."""
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds the valid pixels of a batch (same shape for y_true and y_pred)."""
        y_true = tf.cast(tf.convert_to_tensor(y_true), self.dtype)
        y_pred = tf.cast(tf.convert_to_tensor(y_pred), self.dtype)
        if not y_true.shape.is_compatible_with(y_pred.shape):
            raise ValueError(
                f"{self.name}: y_true has shape {y_true.shape} but y_pred has shape "
                f"{y_pred.shape}; they must match. Resize the ground truth first with "
                "kdepth.ops.masked_resize(y_true, size)."
            )
        weights = _pixel_weights(y_true, sample_weight, self.dtype)
        valid = weights > 0
        safe_true = tf.where(valid, y_true, tf.ones_like(y_true))
        values = tf.where(valid, self.pixel_values(safe_true, y_pred), tf.zeros_like(y_pred))
        self.total.assign_add(tf.reduce_sum(values * weights))
        self.count.assign_add(tf.reduce_sum(weights))

    def result(self):
        return tf.math.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


def _default_delta_name(threshold):
    for k in (1, 2, 3):
        if math.isclose(threshold, 1.25**k, rel_tol=1e-9):
            return f"delta{k}"
    return f"delta_{threshold:g}"


@keras.saving.register_keras_serializable(package="kdepth")
class DeltaAccuracy(_MaskedPixelMean):
    """Fraction of valid pixels with max(gt/pred, pred/gt) < threshold.

    Args:
        threshold: > 1; the standard thresholds are 1.25, 1.25**2 and 1.25**3.
        name: metric name; defaults to delta1/delta2/delta3 for those thresholds, else
            "delta_<threshold>".
        dtype: accumulator dtype (default float32).
    """

    def __init__(self, threshold=1.25, name=None, dtype=None):
        threshold = float(threshold)
        if not threshold > 1.0:
            raise ValueError(
                f"threshold must be > 1 (a ratio max(gt/pred, pred/gt) is >= 1); received "
                f"{threshold!r}. The standard values are 1.25, 1.25**2 and 1.25**3."
            )
        super().__init__(name=name or _default_delta_name(threshold), dtype=dtype)
        self.threshold = threshold

    def pixel_values(self, y_true, y_pred):
        ratio = tf.maximum(y_true / y_pred, y_pred / y_true)
        return tf.cast(ratio < self.threshold, self.dtype)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="kdepth")
class AbsRel(_MaskedPixelMean):
    """Mean absolute relative error |gt - pred| / gt over valid pixels.

    Args:
        name: metric name (default "abs_rel").
        dtype: accumulator dtype (default float32).
    """

    def __init__(self, name="abs_rel", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def pixel_values(self, y_true, y_pred):
        return tf.abs(y_true - y_pred) / y_true


@keras.saving.register_keras_serializable(package="kdepth")
class RMSE(_MaskedPixelMean):
    """Root mean squared error in metres over valid pixels: sqrt(mean((gt - pred)^2)).

    Args:
        name: metric name (default "rmse").
        dtype: accumulator dtype (default float32).
    """

    def __init__(self, name="rmse", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def pixel_values(self, y_true, y_pred):
        return tf.square(y_true - y_pred)

    def result(self):
        return tf.sqrt(super().result())


def near_depth_edges(y_true, edge_threshold=0.1, radius=2):
    """Valid pixels within `radius` pixels of a ground-truth depth edge.

    An edge lies between two valid 4-neighbours whose log depths differ by more than
    `edge_threshold` (0.1: a depth jump of about 10.5% from one pixel to the next); both
    pixels are marked, then the marks are dilated by a (2 radius + 1) square.

    Args:
        y_true: (B, h, w, 1) ground-truth depth in metres; holes are 0, NaN or inf.
        edge_threshold: > 0, in log depth.
        radius: >= 0, in pixels.

    Returns:
        (B, h, w, 1) float32, 1 near an edge on a valid pixel, 0 elsewhere.
    """
    y_true = tf.cast(tf.convert_to_tensor(y_true), tf.float32)
    valid = valid_mask(y_true, dtype=tf.float32)
    log_depth = tf.math.log(tf.where(valid > 0, y_true, tf.ones_like(y_true)))

    def jumps(axis):
        n = tf.shape(y_true)[axis]
        a, b = (tf.gather(t, tf.range(n - 1), axis=axis) for t in (log_depth, valid))
        c, d = (tf.gather(t, tf.range(1, n), axis=axis) for t in (log_depth, valid))
        edge = tf.cast(tf.abs(a - c) > edge_threshold, tf.float32) * b * d
        pad = [[0, 0]] * 4
        before, after = list(pad), list(pad)
        before[axis], after[axis] = [1, 0], [0, 1]
        return tf.maximum(tf.pad(edge, before), tf.pad(edge, after))  # both pixels of the pair

    edges = tf.maximum(jumps(1), jumps(2))
    size = 2 * int(radius) + 1
    near = tf.nn.max_pool2d(edges, ksize=size, strides=1, padding="SAME")
    return near * valid


@keras.saving.register_keras_serializable(package="kdepth")
class EdgeDelta(DeltaAccuracy):
    """delta at `threshold` counted only on valid pixels near ground-truth depth edges.

    A fine-detail figure: global delta1 is dominated by flat walls and floors; this one only
    by the pixels within `radius` of a depth discontinuity (`near_depth_edges`).

    Args:
        threshold: > 1, as DeltaAccuracy (1.25 = delta1).
        edge_threshold: log-depth jump between neighbours that makes an edge.
        radius: pixels around an edge that count.
        name: metric name (default "edge_delta1").
        dtype: accumulator dtype.
    """

    def __init__(self, threshold=1.25, edge_threshold=0.1, radius=2, name="edge_delta1", dtype=None):
        super().__init__(threshold, name=name, dtype=dtype)
        self.edge_threshold, self.radius = float(edge_threshold), int(radius)

    def update_state(self, y_true, y_pred, sample_weight=None):
        near = near_depth_edges(y_true, self.edge_threshold, self.radius)
        if sample_weight is not None:
            near = _pixel_weights(y_true, sample_weight, near.dtype) * near
        super().update_state(y_true, y_pred, near)

    def get_config(self):
        return {**super().get_config(), "edge_threshold": self.edge_threshold, "radius": self.radius}


def training_metrics():
    """Fresh instances of the global depth metrics (every valid pixel counts).

    Returns:
        [delta1, delta2, delta3, abs_rel, rmse]: DeltaAccuracy at 1.25, 1.25**2, 1.25**3, AbsRel
        and RMSE, with those names.
    """
    return [
        DeltaAccuracy(1.25, name="delta1"),
        DeltaAccuracy(1.25**2, name="delta2"),
        DeltaAccuracy(1.25**3, name="delta3"),
        AbsRel(name="abs_rel"),
        RMSE(name="rmse"),
    ]


def logged_metrics():
    """Fresh instances of every metric `kdepth fit` logs and reports: `training_metrics` and
    `EdgeDelta` ("edge_delta1"), in that order."""
    return [*training_metrics(), EdgeDelta()]
