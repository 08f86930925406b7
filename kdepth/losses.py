"""Training loss terms for kdepth.

Conventions (shared with the trainer):

- `y_true`: float32 ground-truth depth in metres, (B, h, w, 1); holes are 0 (NaN and inf are
  holes too). The valid mask is computed here as `y_true > 0` and finite
  (`kdepth.ops.valid_mask`); resize targets to each scale with `kdepth.ops.masked_resize`.
- `y_pred`: float32 predicted depth in metres, same shape, strictly positive (the network ends
  in exp or softplus), so `log(y_pred)` is taken as is.
- `call` returns one value per sample, shape (B,). Keras then applies the loss reduction
  (`sum_over_batch_size`: mean over the batch) and, under `tf.distribute`, divides by the
  number of replicas, so that summing the replicas' losses gives the global-batch loss
  (keras/src/losses/loss.py: `reduce_values` -> `scale_loss_for_distribution`).
- A sample without any valid pixel contributes 0 (safe divide), not NaN, and still counts in
  the batch size.

Log of ground truth: holes are replaced by 1 *before* the log (`tf.where` on the input), never
after: a `tf.where` on log(0) would still send NaN gradients through the unselected branch.
"""

import keras
import tensorflow as tf

from kdepth import flips
from kdepth.ops import valid_mask

SPACES = ("log", "linear")


def _check_space(space):
    if space not in SPACES:
        raise ValueError(
            f"space must be one of {SPACES}; received {space!r}. Use 'log' to compare log depths "
            "(scale-free errors, the default) or 'linear' to compare metres."
        )
    return space


def _check_same_shape(y_true, y_pred, loss_name):
    if not y_true.shape.is_compatible_with(y_pred.shape):
        raise ValueError(
            f"{loss_name}: y_true has shape {y_true.shape} but y_pred has shape {y_pred.shape}; "
            "they must match. Resize the ground truth to the prediction's size first with "
            "kdepth.ops.masked_resize(y_true, size)."
        )


def _sample_axes(x):
    """All axes but the batch axis."""
    if x.shape.rank is None or x.shape.rank < 2:
        raise ValueError(f"expected a batched tensor (B, ..., h, w, 1); received shape {x.shape}.")
    return list(range(1, x.shape.rank))


def _masked_log_error(y_true, y_pred):
    """d = log pred - log gt on valid pixels, 0 at holes; also returns the float mask."""
    valid = valid_mask(y_true)
    safe_true = tf.where(valid, y_true, tf.ones_like(y_true))
    d = tf.where(valid, tf.math.log(y_pred) - tf.math.log(safe_true), tf.zeros_like(y_pred))
    return d, tf.cast(valid, y_pred.dtype)


def _masked_mean(values, mask):
    """Per-sample mean of `values` over the pixels where mask is 1; 0 for an all-hole sample."""
    axes = _sample_axes(values)
    return tf.math.divide_no_nan(
        tf.reduce_sum(values * mask, axis=axes), tf.reduce_sum(mask, axis=axes)
    )


@keras.saving.register_keras_serializable(package="kdepth")
class MaskedMSE(keras.losses.Loss):
    """Mean squared error over the valid pixels of each sample, in log or linear depth.

    Per sample: mean over valid pixels of (f(pred) - f(gt))^2 with f = log (space="log") or the
    identity (space="linear"). Works on (B, h, w, 1) and on flip groups (B, G, h, w, 1) alike
    (the mean then runs over all copies).

    Args:
        space: "log" (default) or "linear".
        root: return the per-sample root (RMSE) instead: the seed poster's experiment 4.
        **kwargs: `name`, `reduction`, `dtype` for `keras.losses.Loss`.
    """

    def __init__(self, space="log", root=False, name="masked_mse", **kwargs):
        super().__init__(name=name, **kwargs)
        self.space = _check_space(space)
        self.root = bool(root)

    def call(self, y_true, y_pred):
        _check_same_shape(y_true, y_pred, "MaskedMSE")
        if self.space == "log":
            d, mask = _masked_log_error(y_true, y_pred)
        else:
            valid = valid_mask(y_true)
            d = tf.where(valid, y_pred - y_true, tf.zeros_like(y_pred))
            mask = tf.cast(valid, y_pred.dtype)
        mse = _masked_mean(tf.square(d), mask)
        if self.root:
            # sqrt has an infinite slope at 0; the epsilon keeps a perfect fit's gradient finite.
            return tf.sqrt(mse + 1e-12)
        return mse

    def get_config(self):
        return {**super().get_config(), "dtype": self.dtype, "space": self.space, "root": self.root}


@keras.saving.register_keras_serializable(package="kdepth")
class SetLoss(keras.losses.Loss):
    """Flip-consistency loss over the predictions for the flipped copies of each image.

    `y_pred` is (B, G, h, w, 1): copy g is the prediction for the image under flip group[g]
    (`kdepth.flips.make_group`). With N = G copies and u = `undo_group(f(y_pred))` (every copy
    mapped back into the identity frame), the poster's formula is

        L_set = 1/(N-1) * sum_i sum_{j != i} E(D_i, g_ij(D_j)),

    where g_ij maps prediction j into frame i and E is the mean squared difference over all
    pixels (predictions have no holes). A flip permutes pixels, so E(D_i, g_ij(D_j)) =
    mean((u_i - u_j)^2). The sum runs over *ordered* pairs (each unordered pair twice). The
    2017 student code summed unordered pairs (half of this) with weight 1.5; this class
    implements the poster's formula, so their weight 1.5 corresponds to 0.75 here.

    L_set is 0 for flip-consistent predictions and for N = 1. `y_true` is ignored (pass the
    ground truth, or None).

    Args:
        group: list of flip names (see `kdepth.flips.FLIPS`), in the order of the G axis.
        space: "log" (default) or "linear": f in the formula above.
        **kwargs: `name`, `reduction`, `dtype` for `keras.losses.Loss`.
    """

    def __init__(self, group, space="log", name="set_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.group = list(flips.validate_group(group))
        self.space = _check_space(space)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras converts y_true to a tensor; None cannot be converted, and y_true is unused.
        if y_true is None:
            y_true = 0.0
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)

    def call(self, y_true, y_pred):
        del y_true  # the set loss compares predictions with each other only
        n = len(self.group)
        if y_pred.shape.rank != 5 or (y_pred.shape[1] is not None and y_pred.shape[1] != n):
            raise ValueError(
                f"SetLoss expects y_pred of shape (B, G={n}, h, w, 1) for group {self.group}; "
                f"received shape {y_pred.shape}. Predict on kdepth.flips.make_group(images, "
                "group) and stack the copies on axis 1."
            )
        values = tf.math.log(y_pred) if self.space == "log" else y_pred
        if n == 1:
            return tf.zeros_like(values[:, 0, 0, 0, 0])
        u = tf.unstack(flips.undo_group(values, self.group), num=n, axis=1)
        total = 0.0
        for i in range(n):
            for j in range(i + 1, n):
                # E is symmetric: the ordered pairs (i, j) and (j, i) count twice one pair.
                total += 2.0 * tf.reduce_mean(tf.square(u[i] - u[j]), axis=[1, 2, 3])
        return total / (n - 1)

    def get_config(self):
        return {
            **super().get_config(),
            "dtype": self.dtype,
            "group": list(self.group),
            "space": self.space,
        }


@keras.saving.register_keras_serializable(package="kdepth")
class ScaleInvariantLoss(keras.losses.Loss):
    """Scale-invariant log loss (Eigen, Puhrsch & Fergus 2014).

    With d = log pred - log gt on the valid pixels of a sample,
    L = mean(d^2) - lam * mean(d)^2. lam = 0 is the log MSE, lam = 1 is fully invariant to a
    global scale of the prediction (the SILog metric's square), lam = 0.5 is Eigen's training
    value.

    Args:
        lam: in [0, 1]; weight of the squared mean log error.
        **kwargs: `name`, `reduction`, `dtype` for `keras.losses.Loss`.
    """

    def __init__(self, lam=0.5, name="scale_invariant_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= float(lam) <= 1.0:
            raise ValueError(
                f"lam must be in [0, 1]; received {lam!r}. Above 1 the loss can be negative; "
                "use 0.5 for training (Eigen 2014) or 1.0 for full scale invariance."
            )
        self.lam = float(lam)

    def call(self, y_true, y_pred):
        _check_same_shape(y_true, y_pred, "ScaleInvariantLoss")
        d, mask = _masked_log_error(y_true, y_pred)
        return _masked_mean(tf.square(d), mask) - self.lam * tf.square(_masked_mean(d, mask))

    def get_config(self):
        return {**super().get_config(), "dtype": self.dtype, "lam": self.lam}


@keras.saving.register_keras_serializable(package="kdepth")
class GradientMatchingLoss(keras.losses.Loss):
    """Gradient matching on log depth (Eigen & Fergus 2015, the seed's "local gradients").

    With d = log pred - log gt, per sample: mean over valid horizontal neighbour pairs of
    (dx d)^2 plus mean over valid vertical neighbour pairs of (dy d)^2, where a pair is valid
    only if both of its pixels are. Each direction is averaged over its own valid pairs so that
    a hole pattern cutting more pairs in one direction does not reweight the directions; on a
    hole-free map this is Eigen & Fergus's 1/n sum((dx d)^2 + (dy d)^2) up to the border row
    and column. It ignores a global scale of the prediction (d shifts by a constant).

    Works on (B, h, w, 1) and (B, G, h, w, 1).

    Args:
        **kwargs: `name`, `reduction`, `dtype` for `keras.losses.Loss`.
    """

    def __init__(self, name="gradient_matching_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        _check_same_shape(y_true, y_pred, "GradientMatchingLoss")
        d, mask = _masked_log_error(y_true, y_pred)
        dx = d[..., :, 1:, :] - d[..., :, :-1, :]
        mx = mask[..., :, 1:, :] * mask[..., :, :-1, :]
        dy = d[..., 1:, :, :] - d[..., :-1, :, :]
        my = mask[..., 1:, :, :] * mask[..., :-1, :, :]
        return _masked_mean(tf.square(dx), mx) + _masked_mean(tf.square(dy), my)

    def get_config(self):
        return {**super().get_config(), "dtype": self.dtype}
