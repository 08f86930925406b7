"""Writes RGB-D samples in kdepth's folder format.

    ROOT/{split}/rgb/NAME.png      8-bit RGB
    ROOT/{split}/depth/NAME.png    16-bit depth, `depth_scale` units per metre, 0 = hole

`kdepth data synth` materialises the synthetic source this way, so the folder reader is
exercised by the default path too. Every file is written under a hidden temporary name in its
own folder and renamed into place, so a killed writer never leaves a half-written file under a
sample's name (see `kdepth.data.plan` for how an unfinished data set is recognised).
"""

import os
from pathlib import Path

import numpy as np
from PIL import Image

from kdepth.errors import DataError

UINT16_MAX = 65535
_TEMP_SUFFIX = ".tmp"


def depth_to_png16(depth_m, depth_scale=1000.0):
    """Encodes depth in metres (0 = hole) as uint16 units; values that do not fit become holes."""
    depth = np.asarray(depth_m, dtype=np.float64)
    units = np.round(np.where(np.isfinite(depth), depth, 0.0) * depth_scale)
    # 65535 is Kinect's "no reading" sentinel, so the largest storable depth is 65534 units.
    units[(units < 0) | (units >= UINT16_MAX)] = 0
    return units.astype(np.uint16)


def sample_stem(index, count):
    """File stem of sample `index` of a split of `count` samples: zero-padded, at least 5 digits."""
    return f"{index:0{max(5, len(str(count - 1)))}d}"


def write_atomically(path, write, sync=False):
    """Calls write(tmp_path) for a hidden temporary file beside `path`, then renames it to `path`.

    Args:
        path: the final file.
        write: writes the whole content to the path it is given.
        sync: flush the file to disk before the rename (for small files that must survive a
            power cut, such as a plan file).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{_TEMP_SUFFIX}")
    try:
        write(tmp)
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temp_files(root):
    """Deletes the temporary files a killed writer left under `root` (its folder and split folders)."""
    root = Path(root)
    for folder in [root, *root.glob("*/rgb"), *root.glob("*/depth")]:
        for path in folder.glob(f".*{_TEMP_SUFFIX}"):
            path.unlink(missing_ok=True)


def write_pair(root, split, name, rgb, depth_m, depth_scale=1000.0):
    """Writes one sample as ROOT/split/rgb/NAME.png and ROOT/split/depth/NAME.png, each atomically."""
    root = Path(root)
    rgb_dir, depth_dir = root / split / "rgb", root / split / "depth"
    rgb_dir.mkdir(parents=True, exist_ok=True)
    depth_dir.mkdir(parents=True, exist_ok=True)
    rgb_image = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    write_atomically(rgb_dir / f"{name}.png", lambda tmp: rgb_image.save(tmp, format="PNG"))
    # Pillow >= 10 writes a uint16 array as a 16-bit greyscale PNG ("I;16").
    depth_image = Image.fromarray(depth_to_png16(depth_m, depth_scale))
    write_atomically(depth_dir / f"{name}.png", lambda tmp: depth_image.save(tmp, format="PNG"))


def write_source(source, out, splits=("train", "val", "test"), depth_scale=1000.0, progress=None, skip_existing=False):
    """Writes every sample of `splits` of a source into the folder format under `out`.

    Args:
        source: a `kdepth.data.sources.Source`.
        out: the folder to write; it must be empty or absent unless `skip_existing`.
        splits: the splits to write.
        depth_scale: depth PNG units per metre.
        progress: called as progress(split, i, n) after each sample (written or skipped).
        skip_existing: keep the samples whose RGB and depth files are both in place (finishing
            an interrupted run of a source whose samples never change, e.g. synthetic).

    Returns:
        {split: count}.

    Raises:
        DataError: `out` is not empty (without `skip_existing`), or a sample cannot be read.
    """
    out = Path(out)
    if not skip_existing and out.exists() and any(out.iterdir()):
        raise DataError(out, "output folder is not empty; choose a new --out folder or delete this one.")
    counts = {}
    for split in splits:
        n = source.num_samples(split)
        for i in range(n):
            name = sample_stem(i, n)
            if not (skip_existing and _pair_exists(out, split, name)):
                rgb, depth = source.load(split, i)
                write_pair(out, split, name, rgb, depth, depth_scale)
            if progress:
                progress(split, i, n)
        counts[split] = n
    return counts


def _pair_exists(root, split, name):
    return (root / split / "rgb" / f"{name}.png").is_file() and (root / split / "depth" / f"{name}.png").is_file()
