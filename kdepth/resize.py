"""Bilinear resizing in numpy, the same function as TensorFlow's `tf.image.resize(method="bilinear")`.

No TensorFlow: the LiteRT path (`kdepth predict` / `evaluate` on a `.tflite`) runs on a device
with numpy and Pillow only, and must resize exactly as the Keras path and the export did.

Both resizes are separable: out = A_h @ x @ A_w^T, with one weight matrix per axis built as
TensorFlow's `scale_and_translate` builds its spans: output pixel i samples the input at
s = (i + 0.5) / scale (half-pixel centres, scale = out / in); every input pixel j with centre
j + 0.5 gets the triangle weight max(0, 1 - |j + 0.5 - s| / k), where k = max(1 / scale, 1)
when antialiasing and 1 otherwise; input pixels outside the image get no weight and the weights
are normalised to sum 1. With k = 1 this is plain bilinear with the edge pixels repeated, i.e.
`tf.image.resize(..., antialias=False)` (ResizeBilinear, half_pixel_centers=True).
"""

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def resize_weights(n_in, n_out, antialias):
    """The (n_out, n_in) float32 weight matrix of a 1-D bilinear resize (module docstring)."""
    scale = n_out / n_in
    k = max(1.0 / scale, 1.0) if antialias else 1.0
    sample = (np.arange(n_out, dtype=np.float64) + 0.5) / scale
    centres = np.arange(n_in, dtype=np.float64) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(centres[None, :] - sample[:, None]) / k)
    total = weights.sum(axis=1, keepdims=True)
    return (weights / np.where(total > 0, total, 1.0)).astype(np.float32)


def _resize_hw(x, size, antialias):
    """Resizes the first two axes of `x` (H, W, ...) to `size` (h, w); float32."""
    h, w = int(size[0]), int(size[1])
    x = np.asarray(x, dtype=np.float32)
    rows = resize_weights(x.shape[0], h, antialias)
    cols = resize_weights(x.shape[1], w, antialias)
    out = np.tensordot(rows, x, axes=(1, 0))  # (h, W, ...)
    out = np.tensordot(cols, out, axes=(1, 1))  # (w, h, ...)
    return np.swapaxes(out, 0, 1)


def resize_image(rgb, size):
    """Resizes one RGB image (H, W, 3) to `size` (h, w): bilinear, antialiased; float32 0-255.

    An image already at `size` is returned unchanged (as float32). Matches
    `tf.image.resize(rgb, size, "bilinear", antialias=True)` clipped to 0-255.
    """
    rgb = np.asarray(rgb)
    if tuple(rgb.shape[:2]) == tuple(size):
        return rgb.astype(np.float32)
    return np.clip(_resize_hw(rgb, size, antialias=True), 0.0, 255.0)


def resize_depth(depth, size):
    """Resizes depth (h, w) or (N, h, w) to `size` (H, W) bilinearly (no antialiasing); float32.

    Depth maps are predictions without holes, so a plain bilinear resize is right here (ground
    truth with holes needs `kdepth.ops.masked_resize` instead). Matches
    `tf.image.resize(depth[..., None], size, "bilinear")`.
    """
    depth = np.asarray(depth, dtype=np.float32)
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    if depth.ndim == 2:
        return _resize_hw(depth, size, antialias=False)
    return np.moveaxis(_resize_hw(np.moveaxis(depth, 0, -1), size, antialias=False), -1, 0)
