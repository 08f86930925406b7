"""Depth colour map, colour bar and contact sheets."""

import numpy as np
import pytest
from PIL import Image

from kdepth import visualize as vis
from kdepth.config import defaults
from kdepth.data.sources import open_source


def luminance(rgb):
    c = np.asarray(rgb, np.float64) / 255
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.2126, 0.7152, 0.0722])


def test_viridis_table_ends_and_monotonic_luminance():
    table = vis.viridis_table()
    assert table.shape == (256, 3) and table.dtype == np.uint8
    # matplotlib's viridis: (68, 1, 84) ... (253, 231, 37); the polynomial fit is within a few levels.
    np.testing.assert_allclose(table[0], (68, 1, 84), atol=4)
    np.testing.assert_allclose(table[255], (253, 231, 37), atol=5)
    lum = luminance(table)
    assert np.all(np.diff(lum) > -1e-3)  # non-decreasing up to 8-bit rounding
    assert np.all(np.diff(lum[::4]) > 0)


def test_colorize_depth_shapes_holes_and_ordering():
    depth = np.array([[1.0, 2.0, 3.0], [0.0, np.nan, -np.inf], [np.inf, 5.0, 9.0]])
    out = vis.colorize_depth(depth)
    assert out.shape == (3, 3, 3) and out.dtype == np.uint8
    holes = [(1, 0), (1, 1), (1, 2), (2, 0)]
    for r, c in holes:
        assert tuple(out[r, c]) == vis.HOLE_COLOR
    table = vis.viridis_table()
    # vmin/vmax default to the valid range: 1 m -> first entry, 9 m -> last.
    np.testing.assert_array_equal(out[0, 0], table[0])
    np.testing.assert_array_equal(out[2, 2], table[255])
    np.testing.assert_array_equal(out[2, 1], table[round((5 - 1) / 8 * 255)])
    valid_lum = luminance(np.stack([out[0, 0], out[0, 1], out[0, 2], out[2, 1], out[2, 2]]))
    assert np.all(np.diff(valid_lum) > 0)  # farther is brighter
    fixed = vis.colorize_depth(depth, vmin=2.0, vmax=4.0, hole_color=(0, 0, 0))
    np.testing.assert_array_equal(fixed[0, 0], table[0])  # clipped below vmin
    np.testing.assert_array_equal(fixed[2, 2], table[255])  # clipped above vmax
    assert tuple(fixed[1, 1]) == (0, 0, 0)
    assert (vis.colorize_depth(np.zeros((2, 2))) == vis.HOLE_COLOR).all()
    with pytest.raises(ValueError, match="expects an"):
        vis.colorize_depth(np.zeros((2, 2, 2)))


def test_contact_sheet_layout_and_tiles():
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(3):
        rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        depth = rng.uniform(0.5, 4.0, (20, 30))
        depth[0, :5] = 0
        pairs.append((rgb, depth))
    sheet = vis.contact_sheet(pairs, vmin=0.5, vmax=4.0, tile_height=20)
    m, g = vis.MARGIN, vis.GAP
    content_w = max(30 + g + 30, vis.MIN_SHEET_WIDTH - 2 * m)
    assert sheet.shape == (m + 3 * (20 + g) + vis.BAR_HEIGHT + vis.LABEL_HEIGHT + m, 2 * m + content_w, 3)
    y = m + 2 * (20 + g)  # third row
    np.testing.assert_array_equal(sheet[y : y + 20, m : m + 30], pairs[2][0])
    np.testing.assert_array_equal(sheet[y : y + 20, m + 30 + g : m + 60 + g], vis.colorize_depth(pairs[2][1], 0.5, 4.0))
    # Larger tiles keep the aspect ratio; names are drawn without changing the size.
    big = vis.contact_sheet(pairs[:2], names=["first.png", "second.png"], tile_height=40)
    assert big.shape == (m + 2 * (40 + g) + vis.BAR_HEIGHT + vis.LABEL_HEIGHT + m, 2 * m + max(60 + g + 60, content_w), 3)
    with pytest.raises(ValueError, match="at least one"):
        vis.contact_sheet([])


def test_colorbar_runs_from_vmin_to_vmax_colours():
    bar = vis.colorbar(0.5, 4.0, 300)
    assert bar.shape == (vis.BAR_HEIGHT + vis.LABEL_HEIGHT, 300, 3)
    table = vis.viridis_table()
    np.testing.assert_array_equal(bar[0, 0], table[0])
    assert (bar == vis.HOLE_COLOR).all(axis=-1).any()  # the hole swatch
    assert (bar[vis.BAR_HEIGHT + 2 :] != vis.BACKGROUND).any()  # tick labels drawn


def test_write_contact_sheet_from_a_source(tmp_path):
    cfg = defaults().replace(data__synthetic_train=5, data__synthetic_val=1, data__synthetic_test=1)
    src = open_source(cfg.data, [24, 32])
    out = vis.write_contact_sheet(src, "train", tmp_path / "sheets" / "train.png", count=3)
    img = np.asarray(Image.open(out))
    assert img.shape == (vis.MARGIN + 3 * (24 + vis.GAP) + vis.BAR_HEIGHT + vis.LABEL_HEIGHT + vis.MARGIN, vis.MIN_SHEET_WIDTH, 3)
    # Evenly spread samples 0, 2, 4: the first row is sample 0.
    # (The name label covers the tile's top-left corner: compare the bottom half.)
    np.testing.assert_array_equal(img[vis.MARGIN + 16 : vis.MARGIN + 24, vis.MARGIN : vis.MARGIN + 32], src.load("train", 0)[0][16:])
    y = vis.MARGIN + 2 * (24 + vis.GAP)
    np.testing.assert_array_equal(img[y + 16 : y + 24, vis.MARGIN : vis.MARGIN + 32], src.load("train", 4)[0][16:])


@pytest.mark.parametrize(
    "vmin, vmax, labels",
    [(0.9, 5.18, ["1", "2", "3", "4", "5"]), (0.001, 10.0, ["2", "4", "6", "8", "10"]), (0.93, 1.07, ["0.95", "1.00", "1.05"])],
)
def test_colorbar_ticks_are_round_metres_inside_the_range(vmin, vmax, labels):
    ticks = vis._ticks(vmin, vmax)
    assert [label for _, label in ticks] == labels
    assert all(vmin <= value <= vmax for value, _ in ticks)
