"""Depth colour map and contact sheets (`kdepth data show`).

Depth is drawn with viridis, a perceptually uniform colour map whose luminance rises
monotonically from dark purple (near, `vmin`) to yellow (far, `vmax`). The 256-entry table is
computed from a degree-6 polynomial fit of matplotlib's viridis (Matt Zucker's fit, within ~2%
of the original), so matplotlib is not needed. Holes (depth <= 0 or non-finite) are magenta
(255, 0, 255), a colour viridis never uses.
"""

import functools
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kdepth.errors import DataError

LOG = logging.getLogger("kdepth.data")

HOLE_COLOR = (255, 0, 255)
BACKGROUND = (24, 24, 24)
TEXT_COLOR = (235, 235, 235)
MARGIN = 8  # pixels around the sheet
GAP = 4  # pixels between tiles and rows
BAR_HEIGHT = 12  # colour bar height
LABEL_HEIGHT = 14  # room for the tick labels under the bar
MIN_SHEET_WIDTH = 240  # so the colour bar labels fit even for tiny tiles

# Polynomial coefficients c0..c6 (rows) of viridis(t) = sum_k c_k t^k for R, G, B in [0, 1].
_VIRIDIS_COEFFS = np.array(
    [
        [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
        [0.1050930431085774, 1.404613529898575, 1.384590162594685],
        [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
        [-4.634230498983486, -5.799100973351585, -19.33244095627987],
        [6.228269936347081, 14.17993336680509, 56.69055260068105],
        [4.776384997670288, -13.74514537774601, -65.35303263337234],
        [-5.435455855934631, 4.645852612178535, 26.3124352495832],
    ]
)


@functools.lru_cache(maxsize=1)
def viridis_table():
    """The 256-entry viridis colour table as uint8 (256, 3); entry 0 is near, 255 far."""
    t = np.linspace(0.0, 1.0, 256)[:, None]
    rgb = sum(c * t**k for k, c in enumerate(_VIRIDIS_COEFFS))
    table = np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
    table.flags.writeable = False
    return table


def depth_range(depths):
    """(min, max) of the valid pixels (> 0, finite) of one or more depth maps; (0, 1) if none."""
    lo, hi = np.inf, -np.inf
    for depth in depths:
        d = np.asarray(depth, dtype=np.float64)
        valid = d[np.isfinite(d) & (d > 0)]
        if valid.size:
            lo, hi = min(lo, valid.min()), max(hi, valid.max())
    return (0.0, 1.0) if lo > hi else (float(lo), float(hi))


def colorize_depth(depth, vmin=None, vmax=None, hole_color=HOLE_COLOR):
    """Colours a depth map (H, W) with viridis as uint8 (H, W, 3).

    Args:
        depth: depth in metres; values <= 0 or non-finite are holes.
        vmin, vmax: depths mapped to the ends of the colour map (clipped beyond); None = the
            min / max of the valid pixels.
        hole_color: RGB of holes; default magenta (255, 0, 255).
    """
    d = np.asarray(depth, dtype=np.float64)
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise ValueError(f"colorize_depth expects an (H, W) depth map, received shape {d.shape}.")
    valid = np.isfinite(d) & (d > 0)
    lo, hi = depth_range([d])
    vmin = lo if vmin is None else float(vmin)
    vmax = hi if vmax is None else float(vmax)
    span = max(vmax - vmin, 1e-12)  # a constant map takes the first colour
    t = np.clip((np.where(valid, d, vmin) - vmin) / span, 0.0, 1.0)
    out = viridis_table()[np.round(t * 255).astype(np.int64)]
    out[~valid] = np.asarray(hole_color, dtype=np.uint8)
    return out


def _font():
    return ImageFont.load_default()


def _text_width(draw, text, font):
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _ticks(vmin, vmax, count=5):
    """About `count` round tick values (steps of 1, 2 or 5 x 10^k) inside [vmin, vmax], labelled."""
    span = vmax - vmin
    if not span > 0:
        return [(float(vmin), f"{vmin:.2f}")]
    raw_step = span / count
    power = 10.0 ** np.floor(np.log10(raw_step))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw_step)
    first = np.ceil(vmin / step - 1e-9) * step
    values = np.arange(first, vmax + step * 1e-9, step)
    digits = max(0, int(-np.floor(np.log10(step) + 1e-9)))
    return [(float(v) + 0.0, f"{abs(v) if abs(v) < step * 1e-6 else v:.{digits}f}") for v in values]


def colorbar(vmin, vmax, width, hole_color=HOLE_COLOR):
    """A horizontal viridis bar from vmin to vmax with tick labels in metres and a hole swatch.

    Returns uint8 (BAR_HEIGHT + LABEL_HEIGHT, width, 3).
    """
    font = _font()
    img = Image.new("RGB", (width, BAR_HEIGHT + LABEL_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(img)
    hole_label = "hole"
    swatch = BAR_HEIGHT
    legend_w = swatch + 4 + _text_width(draw, hole_label, font) + 4 + _text_width(draw, "m", font) + 8
    bar_w = max(width - legend_w, 16)
    columns = np.round(np.linspace(0, 255, bar_w)).astype(np.int64)
    bar = np.broadcast_to(viridis_table()[columns][None], (BAR_HEIGHT, bar_w, 3))
    img.paste(Image.fromarray(np.ascontiguousarray(bar)), (0, 0))
    for value, label in _ticks(vmin, vmax):
        frac = 0.0 if vmax <= vmin else (value - vmin) / (vmax - vmin)
        x = int(round(frac * (bar_w - 1)))
        draw.line([(x, BAR_HEIGHT - 3), (x, BAR_HEIGHT + 1)], fill=TEXT_COLOR)
        w = _text_width(draw, label, font)
        draw.text((min(max(x - w // 2, 0), bar_w - w), BAR_HEIGHT + 1), label, fill=TEXT_COLOR, font=font)
    x = bar_w + 4
    draw.text((x, BAR_HEIGHT + 1), "m", fill=TEXT_COLOR, font=font)
    x += _text_width(draw, "m", font) + 8
    draw.rectangle([x, 0, x + swatch - 1, BAR_HEIGHT - 1], fill=tuple(hole_color))
    draw.text((x + swatch + 4, 0), hole_label, fill=TEXT_COLOR, font=font)
    return np.asarray(img)


def _resize(array, size, resample):
    h, w = size
    if array.shape[:2] == (h, w):
        return array
    return np.asarray(Image.fromarray(array).resize((w, h), resample))


def contact_sheet(pairs, vmin=None, vmax=None, names=None, tile_height=None, hole_color=HOLE_COLOR):
    """One row per sample: the RGB image beside its colourised depth, a colour bar below.

    Args:
        pairs: list of (rgb uint8 (H, W, 3), depth float (H, W) metres, 0 = hole).
        vmin, vmax: depth range of the colour map, shared by every row; None = the range of
            the valid pixels of all samples.
        names: optional label per row, drawn over the top-left of the RGB tile.
        tile_height: height of each row's tiles; None = the first sample's height, at most 240.
            Each tile keeps its aspect ratio; depth is resized nearest-neighbour so holes stay
            sharp.
        hole_color: RGB of holes.

    Returns:
        uint8 (H, W, 3): width = 2 * MARGIN + max row width (rgb + GAP + depth, at least
        MIN_SHEET_WIDTH - 2 * MARGIN); height = MARGIN + rows * (tile_height + GAP) +
        BAR_HEIGHT + LABEL_HEIGHT + MARGIN.
    """
    if not pairs:
        raise ValueError("contact_sheet needs at least one (rgb, depth) pair, received none.")
    if names is not None and len(names) != len(pairs):
        raise ValueError(f"contact_sheet received {len(names)} names for {len(pairs)} pairs.")
    lo, hi = depth_range(depth for _, depth in pairs)
    vmin = lo if vmin is None else float(vmin)
    vmax = hi if vmax is None else float(vmax)
    th = int(tile_height or min(np.asarray(pairs[0][0]).shape[0], 240))
    rows = []
    for rgb, depth in pairs:
        rgb = np.asarray(rgb, dtype=np.uint8)
        depth = np.asarray(depth)
        tw = max(1, int(round(rgb.shape[1] * th / rgb.shape[0])))
        dw = max(1, int(round(depth.shape[1] * th / depth.shape[0])))
        rgb_tile = _resize(rgb, (th, tw), Image.BILINEAR)
        depth_tile = _resize(colorize_depth(depth, vmin, vmax, hole_color), (th, dw), Image.NEAREST)
        rows.append((rgb_tile, depth_tile))
    content_w = max(max(r.shape[1] + GAP + d.shape[1] for r, d in rows), MIN_SHEET_WIDTH - 2 * MARGIN)
    width = 2 * MARGIN + content_w
    height = MARGIN + len(rows) * (th + GAP) + BAR_HEIGHT + LABEL_HEIGHT + MARGIN
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    y = MARGIN
    for i, (rgb_tile, depth_tile) in enumerate(rows):
        sheet.paste(Image.fromarray(rgb_tile), (MARGIN, y))
        sheet.paste(Image.fromarray(depth_tile), (MARGIN + rgb_tile.shape[1] + GAP, y))
        if names is not None:
            label = str(names[i])
            while len(label) > 4 and _text_width(draw, label, font) > rgb_tile.shape[1] - 4:
                label = "..." + label[4:]
            box = draw.textbbox((MARGIN + 2, y + 1), label, font=font)
            draw.rectangle([box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1], fill=(0, 0, 0))
            draw.text((MARGIN + 2, y + 1), label, fill=TEXT_COLOR, font=font)
        y += th + GAP
    sheet.paste(Image.fromarray(colorbar(vmin, vmax, content_w, hole_color)), (MARGIN, y))
    return np.asarray(sheet)


def write_contact_sheet(source, split, out_path, count=8, **kwargs):
    """Writes a PNG contact sheet of `count` samples spread evenly over a split of `source`.

    Samples that fail to load are logged and left out. Extra keyword arguments go to
    `contact_sheet`. Returns the path written.
    """
    n = source.num_samples(split)
    if count < 1:
        raise ValueError(f"count must be a positive integer, received {count}.")
    indices = np.unique(np.round(np.linspace(0, n - 1, min(count, n))).astype(int))
    all_names = source.sample_names(split)
    pairs, names = [], []
    for i in indices:
        try:
            pairs.append(source.load(split, int(i)))
        except DataError as e:
            LOG.warning("contact sheet: leaving out %s: %s", e.path, e.reason)
            continue
        names.append(_short_name(all_names[i]))
    if not pairs:
        raise DataError(source.name, f"none of the {len(indices)} samples picked from split {split!r} could be read; run `kdepth data check`.")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet(pairs, names=names, **kwargs)).save(out_path)
    return out_path


def _short_name(name):
    """The file name of a path-like sample name (e.g. 'rgb/0001.png' -> '0001.png')."""
    text = str(name)
    return Path(text).name if "/" in text or "\\" in text else text
