"""kdepth.ops: valid masks and hole-aware resizing of ground-truth depth."""

import numpy as np
import pytest
import tensorflow as tf

from kdepth.ops import area_resize, masked_resize, valid_mask


def overlap_weights(n_in, n_out):
    """(n_out, n_in) lengths of overlap between output footprints and input pixels (area resize)."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = i * scale, (i + 1) * scale
        for k in range(n_in):
            weights[i, k] = max(0.0, min(hi, k + 1) - max(lo, k))
    return weights


def np_masked_area(depth, size, min_valid=0.5):
    """Reference masked area resize of one (h, w) map: weighted mean of the valid inputs."""
    h, w = depth.shape
    valid = np.isfinite(depth) & (depth > 0)
    filled = np.where(valid, depth, 0.0).astype(np.float64)
    wh, ww = overlap_weights(h, size[0]), overlap_weights(w, size[1])
    total = wh @ filled @ ww.T
    weight = wh @ valid.astype(np.float64) @ ww.T
    fraction = weight / ((h / size[0]) * (w / size[1]))
    keep = (weight > 0) & (fraction >= min_valid - 1e-9)
    return np.where(keep, total / np.where(keep, weight, 1.0), 0.0), fraction


def np_block_mean(depth, factor, min_valid=0.5):
    """Integer-ratio reference: mean of the valid pixels in each factor x factor block."""
    h, w = depth.shape
    valid = np.isfinite(depth) & (depth > 0)
    blocks = (
        np.where(valid, depth, 0.0)
        .astype(np.float64)
        .reshape(h // factor, factor, w // factor, factor)
    )
    counts = valid.reshape(h // factor, factor, w // factor, factor).sum(axis=(1, 3))
    sums = blocks.sum(axis=(1, 3))
    keep = counts >= min_valid * factor * factor
    return np.where(keep, sums / np.maximum(counts, 1), 0.0)


def depth_with_holes(h=48, w=72, seed=0):
    """Valid depths in [2, 3] m; a block of holes, a hole stripe, a NaN and an inf."""
    rng = np.random.default_rng(seed)
    depth = rng.uniform(2.0, 3.0, (h, w)).astype(np.float32)
    depth[10:25, 7:30] = 0.0
    depth[:, 40] = 0.0
    depth[3, 3] = np.nan
    depth[30, 50] = np.inf
    return depth


@pytest.mark.parametrize("factor", [2, 3])
def test_integer_downsizing_is_the_block_mean_of_valid_pixels(factor):
    depth = depth_with_holes()
    size = (48 // factor, 72 // factor)
    out = masked_resize(depth[:, :, None], size).numpy()[:, :, 0]
    expected = np_block_mean(depth, factor)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # The block of holes stays a hole; partially valid blocks on its rim are kept or dropped by
    # the majority rule, never mixed with the zeros.
    assert np.all(out[12 // factor : 24 // factor, 8 // factor : 28 // factor] == 0.0)
    assert np.all((out == 0.0) | ((out >= 2.0) & (out <= 3.0)))


@pytest.mark.parametrize("size", [(17, 23), (31, 40), (100, 150), (48, 72)], ids=str)
def test_non_integer_and_upsizing_match_the_overlap_reference(size):
    depth = depth_with_holes()
    out = masked_resize(depth[None, :, :, None], size).numpy()[0, :, :, 0]
    expected, fraction = np_masked_area(depth, size)
    # Output pixels with a valid fraction within float rounding of 0.5 may go either way.
    decided = np.abs(fraction - 0.5) > 1e-4
    np.testing.assert_allclose(out[decided], expected[decided], rtol=2e-5)
    # Holes never bleed: every output is a hole or a weighted mean of valid depths in [2, 3].
    assert np.all((out == 0.0) | ((out >= 2.0 - 1e-5) & (out <= 3.0 + 1e-5)))
    assert np.count_nonzero(out) > 0.5 * out.size
    if size == (48, 72):
        np.testing.assert_allclose(out, np.where(np.isfinite(depth), depth, 0.0), rtol=1e-6)


def test_min_valid_sets_how_much_of_a_footprint_must_be_valid():
    depth = np.full((4, 4), 2.0, np.float32)
    depth[0, 0] = 0.0  # top-left 2x2 block: 3/4 valid
    depth[0, 2:] = 0.0
    depth[1, 2] = 0.0  # top-right block: 1/4 valid
    depth[2:, :2] = [[0.0, 0.0], [0.0, 5.0]]  # bottom-left block: 1/4 valid, value 5
    run = lambda m: masked_resize(depth[:, :, None], (2, 2), min_valid=m).numpy()[:, :, 0]  # noqa: E731
    np.testing.assert_array_equal(run(0.5), [[2.0, 0.0], [0.0, 2.0]])
    np.testing.assert_array_equal(run(0.0), [[2.0, 2.0], [5.0, 2.0]])
    np.testing.assert_array_equal(run(1.0), [[0.0, 0.0], [0.0, 2.0]])


def test_nearest_copies_pixels_and_keeps_holes():
    depth = depth_with_holes()[:12, :18]  # holes at rows 10-11, a NaN at (3, 3)
    clean = np.where(np.isfinite(depth), depth, 0.0)
    up = masked_resize(depth[:, :, None], (24, 36), method="nearest").numpy()[:, :, 0]
    np.testing.assert_array_equal(up, np.repeat(np.repeat(clean, 2, axis=0), 2, axis=1))
    down = masked_resize(depth[:, :, None], (5, 7), method="nearest").numpy()
    assert set(np.unique(down)) <= set(np.unique(clean))
    assert np.all(np.isfinite(down))


def test_rank_3_4_and_5_inputs_resize_each_map_alike():
    maps = np.stack([depth_with_holes(seed=s) for s in range(6)])[..., None]  # (6, 48, 72, 1)
    size = (17, 23)
    singles = np.stack([masked_resize(m, size).numpy() for m in maps])
    assert singles.shape == (6, 17, 23, 1)
    batched = masked_resize(maps, size)
    assert batched.shape == (6, 17, 23, 1) and batched.dtype == tf.float32
    np.testing.assert_array_equal(batched.numpy(), singles)
    grouped = masked_resize(maps.reshape(2, 3, 48, 72, 1), size)
    assert grouped.shape == (2, 3, 17, 23, 1)
    np.testing.assert_array_equal(grouped.numpy().reshape(6, 17, 23, 1), singles)


def test_runs_in_a_tf_data_map_and_with_unknown_shapes():
    maps = np.stack([depth_with_holes(seed=s) for s in range(3)])[..., None].astype(np.float16)
    eager = masked_resize(maps, (17, 23)).numpy()
    dataset = tf.data.Dataset.from_tensor_slices(maps).map(lambda d: masked_resize(d, (17, 23)))
    mapped = np.stack([x.numpy() for x in dataset])
    np.testing.assert_array_equal(mapped, eager)
    assert dataset.element_spec.shape == (17, 23, 1)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, None, None, 1), tf.float16),
            tf.TensorSpec((2,), tf.int32),
        ]
    )
    def resize(depth, size):
        return masked_resize(depth, size)

    np.testing.assert_array_equal(resize(maps, tf.constant([17, 23])).numpy(), eager)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"size": (17, 23), "method": "bilinear"}, "method must be one of"),
        ({"size": (17,)}, r"size must be \(height, width\)"),
        ({"size": (0, 23)}, "two positive ints"),
        ({"size": (17, 23), "min_valid": 1.5}, r"min_valid must be in \[0, 1\]"),
    ],
)
def test_masked_resize_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        masked_resize(np.ones((8, 8, 1), np.float32), **kwargs)


def test_masked_resize_rejects_maps_without_channel_axis():
    with pytest.raises(ValueError, match=r"depth\[\.\.\., None\]"):
        masked_resize(np.ones((8, 8), np.float32), (4, 4))


def test_valid_mask():
    depth = np.array([0.0, -1.0, np.nan, np.inf, -np.inf, 1e-4, 0.5, 9.9, 10.0, 12.0], np.float32)
    np.testing.assert_array_equal(
        valid_mask(depth).numpy(), [False, False, False, False, False, True, True, True, True, True]
    )
    np.testing.assert_array_equal(
        valid_mask(depth, min_depth=1e-3, max_depth=10.0, dtype=tf.float32).numpy(),
        [0, 0, 0, 0, 0, 0, 1, 1, 0, 0],
    )


def test_area_resize_has_no_op_whose_kernel_depends_on_the_cpu():
    # oneDNN and Eigen pick matrix-product and convolution kernels by CPU and by size: a resize
    # built on them gave other last bits on an Intel than on an AMD machine, and for a map
    # resized alone than in a batch (the tests above), which moved the pinned batches.
    graph = tf.function(lambda x: area_resize(x, (17, 23))).get_concrete_function(
        tf.TensorSpec((None, 48, 72, 1), tf.float32)).graph
    ops = {op.type for op in graph.get_operations()}
    assert "GatherV2" in ops and "Sum" in ops
    assert not ops & {"MatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum", "Conv2D"}, ops
