"""Depth tensor ops shared by data, training and evaluation.

Ground-truth depth in kdepth is float32 metres with holes (no measurement) stored as 0. A NaN or
an infinity is treated as a hole as well, so that a raw sensor map never becomes a target. All
ops here are plain TensorFlow ops: they run eagerly, inside `tf.function` and inside a
`tf.data` map, and they do not touch Keras backend state.
"""

import tensorflow as tf

from kdepth.config import choices

RESIZE_METHODS = choices("data", "depth_resize")

# Area-resized mask fractions carry float32 rounding (~1e-6 for non-integer ratios); without a
# tolerance an output pixel whose footprint is exactly half valid could fall on either side of
# min_valid=0.5.
_FRACTION_TOLERANCE = 1e-5


def valid_mask(depth, min_depth=0.0, max_depth=None, dtype=tf.bool):
    """Which depth values are measurements: finite and in (min_depth, max_depth).

    Args:
        depth: a depth tensor of any shape (metres; 0, NaN and inf are holes).
        min_depth: values must be strictly greater than this (default 0: a hole is 0).
        max_depth: if given, values must be strictly smaller than this (evaluation uses 10 m).
        dtype: dtype of the returned mask; bool by default, e.g. tf.float32 for a 1/0 mask.

    Returns:
        A tensor of depth's shape: True (or 1) where valid, False (or 0) at holes.
    """
    depth = tf.convert_to_tensor(depth)
    valid = tf.math.is_finite(depth) & (depth > tf.cast(min_depth, depth.dtype))
    if max_depth is not None:
        valid = valid & (depth < tf.cast(max_depth, depth.dtype))
    return valid if dtype == tf.bool else tf.cast(valid, dtype)


def _check_size(size):
    """Validates a static (height, width) and returns it as a tuple of ints; passes tensors on."""
    if isinstance(size, tf.Tensor | tf.Variable):
        return size
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(
            f"size must be (height, width); received {size!r}. Pass two positive ints, e.g. (56, 75)."
        ) from None
    if height <= 0 or width <= 0 or (height, width) != tuple(size):
        raise ValueError(f"size must be two positive ints (height, width); received {size!r}.")
    return height, width


def masked_resize(depth, size, method="masked_area", min_valid=0.5):
    """Resizes ground-truth depth with holes so that holes never bleed into valid pixels.

    `masked_area` divides the area resize of depth*mask by the area resize of the mask: each
    output pixel is the overlap-weighted mean of the *valid* input pixels under its footprint
    (down- and upsizing, integer and non-integer ratios alike). An output pixel is a hole (0)
    when the valid fraction of its footprint is below `min_valid`.

    The default min_valid=0.5 is a majority rule: an output pixel is supervised only if most of
    its footprint was measured. With any threshold above 0 the value is still a mean of valid
    depths only, but a footprint that is, say, 5% valid usually sits on the rim of a sensor
    shadow or a depth edge, and its few valid pixels say little about the whole output pixel.
    Pass min_valid=0.0 to keep every output pixel that has any valid input.

    `nearest` copies the nearest input pixel (holes stay holes).

    Args:
        depth: (h, w, C), (B, h, w, C) or (B, G, h, w, C) depth (C is normally 1); any leading
            dims are folded into one batch dim. Holes are 0, NaN or inf.
        size: output (height, width): two positive ints or an int32 tensor of shape (2,).
        method: "masked_area" (default) or "nearest".
        min_valid: in [0, 1]; for "masked_area", the least valid fraction of an output pixel's
            footprint for it to be valid. Ignored by "nearest".

    Returns:
        float32 depth of shape (..., height, width, C) with holes as 0.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"method must be one of {RESIZE_METHODS}; received {method!r}.")
    if not 0.0 <= float(min_valid) <= 1.0:
        raise ValueError(
            f"min_valid must be in [0, 1] (a fraction of an output pixel's footprint); "
            f"received {min_valid!r}."
        )
    size = _check_size(size)
    depth = tf.convert_to_tensor(depth)
    rank = depth.shape.rank
    if rank is None or rank < 3:
        raise ValueError(
            f"depth must have a known rank >= 3, (..., h, w, C); received shape {depth.shape}. "
            "Add the channel axis, e.g. depth[..., None]."
        )
    depth = tf.cast(depth, tf.float32)

    # Fold every leading dim into one batch dim: tf.image.resize takes rank 3 or 4 only.
    dyn_shape = tf.shape(depth)
    images = tf.reshape(depth, tf.concat([[-1], dyn_shape[-3:]], axis=0))

    valid = valid_mask(images)
    filled = tf.where(valid, images, tf.zeros_like(images))
    if method == "nearest":
        out = tf.image.resize(filled, size, method="nearest")
    else:
        mask = tf.cast(valid, tf.float32)
        total = area_resize(filled, size)
        fraction = area_resize(mask, size)
        keep = (fraction > 0.0) & (fraction >= float(min_valid) - _FRACTION_TOLERANCE)
        # Divide only where kept: elsewhere the fraction can be 0.
        out = tf.where(keep, total / tf.where(keep, fraction, tf.ones_like(fraction)), 0.0)

    out_hw = tf.shape(out)[1:3]
    out = tf.reshape(out, tf.concat([dyn_shape[:-3], out_hw, dyn_shape[-1:]], axis=0))
    static_hw = list(size) if isinstance(size, tuple) else [None, None]
    out.set_shape(depth.shape[:-3].concatenate(static_hw + [depth.shape[-1]]))
    return out


def _footprints(n_in, n_out):
    """The input cells under each output cell's footprint along one axis, and their weights.

    Output cell i covers [i * s, (i + 1) * s) of the input axis with s = n_in / n_out (the
    half-open footprint of TensorFlow's ResizeArea). Such an interval touches at most
    floor(s) + 2 cells; taps past the axis end get weight 0. Built in float64 so that the
    footprint edges carry no float32 rounding.

    Returns:
        (index, weight): (n_out, taps) int32 input cells and float32 shares of the footprint
        (each row sums to 1).
    """
    n_in64, n_out64 = tf.cast(n_in, tf.float64), tf.cast(n_out, tf.float64)
    scale = n_in64 / n_out64
    starts = tf.range(n_out64, dtype=tf.float64)[:, None] * scale
    taps = tf.cast(tf.floor(scale), tf.int32) + 2
    cells = tf.floor(starts) + tf.range(tf.cast(taps, tf.float64), dtype=tf.float64)[None, :]
    overlap = tf.minimum(starts + scale, cells + 1.0) - tf.maximum(starts, cells)
    index = tf.minimum(tf.cast(cells, tf.int32), tf.cast(n_in, tf.int32) - 1)
    return index, tf.cast(tf.maximum(overlap, 0.0) / scale, tf.float32)


def _resize_axis(images, axis, n_in, n_out):
    """Area resize of `images` along `axis` (1: height, 2: width) as a weighted sum of gathered taps."""
    index, weight = _footprints(n_in, n_out)
    taps = tf.gather(images, index, axis=axis)  # the tap axis follows `axis`
    weight = weight[(...,) + (None,) * (3 - axis)]  # broadcast over the axes after the taps
    return tf.reduce_sum(taps * weight, axis=axis + 1)


def _block_factor(n_in, n_out):
    """The integer factor n_in / n_out when both are static and divide, else None."""
    if isinstance(n_in, int) and isinstance(n_out, int) and n_in % n_out == 0:
        return n_in // n_out
    return None


def area_resize(images, size):
    """Area (box) resize of (B, h, w, C) float32 images, as tf.image.resize(method="area").

    Built from ops that XLA compiles (ResizeArea has no XLA kernel): a reshape-and-mean when both
    factors are static integers, else, along each axis, a weighted sum of the few input cells
    under each output cell's footprint. No matrix product: oneDNN picks its matrix kernels by
    CPU and by matrix size, which would make the result differ in the last bit between an
    Intel and an AMD machine, and between a map resized alone and in a batch.

    Args:
        images: (B, h, w, C) float32.
        size: output (height, width): two positive ints or an int32 tensor of shape (2,).

    Returns:
        (B, height, width, C) float32: each output pixel is the overlap-weighted mean of the
        input pixels under its footprint.
    """
    static = images.shape[1:3]
    dynamic = tf.shape(images)
    h_in = static[0] if static[0] is not None else dynamic[1]
    w_in = static[1] if static[1] is not None else dynamic[2]
    h_out, w_out = size[0], size[1]
    fh, fw = _block_factor(h_in, h_out), _block_factor(w_in, w_out)
    if fh is not None and fw is not None:
        channels = images.shape[3] if images.shape[3] is not None else dynamic[3]
        blocks = tf.reshape(images, [-1, h_out, fh, w_out, fw, channels])
        return tf.reduce_mean(blocks, axis=[2, 4])
    rows = _resize_axis(images, 1, h_in, h_out)
    return _resize_axis(rows, 2, w_in, w_out)
