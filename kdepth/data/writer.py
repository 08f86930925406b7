"""Writes RGB-D samples in kdepth's folder format.

    ROOT/{split}/rgb/NAME.png      8-bit RGB
    ROOT/{split}/depth/NAME.png    16-bit depth, `depth_scale` units per metre, 0 = hole

`kdepth data synth` materialises the synthetic source this way, so the folder reader is
exercised by the default path too.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from kdepth.errors import DataError

UINT16_MAX = 65535


def depth_to_png16(depth_m, depth_scale=1000.0):
    """Encodes depth in metres (0 = hole) as uint16 units; values that do not fit become holes."""
    depth = np.asarray(depth_m, dtype=np.float64)
    units = np.round(np.where(np.isfinite(depth), depth, 0.0) * depth_scale)
    # 65535 is Kinect's "no reading" sentinel, so the largest storable depth is 65534 units.
    units[(units < 0) | (units >= UINT16_MAX)] = 0
    return units.astype(np.uint16)


def write_pair(root, split, name, rgb, depth_m, depth_scale=1000.0):
    """Writes one sample as ROOT/split/rgb/NAME.png and ROOT/split/depth/NAME.png."""
    root = Path(root)
    rgb_dir, depth_dir = root / split / "rgb", root / split / "depth"
    rgb_dir.mkdir(parents=True, exist_ok=True)
    depth_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(rgb_dir / f"{name}.png")
    # Pillow >= 10 writes a uint16 array as a 16-bit greyscale PNG ("I;16").
    Image.fromarray(depth_to_png16(depth_m, depth_scale)).save(depth_dir / f"{name}.png")


def write_source(source, out, splits=("train", "val", "test"), depth_scale=1000.0, progress=None):
    """Writes every sample of `splits` of a source into the folder format under `out`.

    Returns {split: count}. `progress(split, i, n)` is called after each sample if given.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(out, "output folder is not empty; choose a new --out folder or delete this one.")
    counts = {}
    for split in splits:
        n = source.num_samples(split)
        width = max(5, len(str(n - 1)))
        for i in range(n):
            rgb, depth = source.load(split, i)
            write_pair(out, split, f"{i:0{width}d}", rgb, depth, depth_scale)
            if progress:
                progress(split, i, n)
        counts[split] = n
    return counts
