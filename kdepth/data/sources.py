"""Readers for every RGB-D source kdepth trains and evaluates on.

A `Source` lists the samples of each split and loads one sample as
``(rgb uint8 (H, W, 3), depth float32 (H, W) metres)`` with every hole set to 0.0, or raises a
`DataError` naming the file and what is wrong with it. `Source.raw_dataset` turns a split into a
`tf.data.Dataset` of ``{"image", "depth", "name"}`` elements for `kdepth.data.pipeline`.

Sources (``data.source``):

``synthetic``
    Rooms rendered by `kdepth.data.synthetic.render_sample`; splits never share a sample.
``folder``
    ``ROOT/<split>/rgb/NAME.{png,jpg,jpeg}`` beside ``ROOT/<split>/depth/NAME.{png,npy}``,
    matched by file stem, in sorted order. Every sub-folder of ROOT that holds an ``rgb``
    folder is a split.
``manifest``
    A text file of ``rgb_path depth_path [ignored columns]`` lines (BTS / AdaBins convention).
    See `ManifestSource` for how the other splits' files are found.
``tfds``
    `tensorflow_datasets` (``nyu_depth_v2`` by default); kdepth's ``val`` and ``test`` both read
    its ``validation`` split, the 654 official NYU test images.
``nyu_mat``
    The official labelled file ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5) with the
    official 795 / 654 split from ``splits.mat``.

Depth files:

* 16-bit PNG: integer units, ``data.depth_scale`` units per metre (1000 = millimetres). Decoded
  with PIL so the values stay uint16 (never rescaled to [0, 1]). An 8-bit or colour PNG cannot
  hold metric depth and is refused as a wrong dtype.
* ``.npy``: a float array is depth in metres; an integer array is raw units like a PNG (divided by
  ``data.depth_scale``). A trailing channel axis of 1 is dropped.

Holes (set to 0.0): 0, NaN, inf, the ``data.hole_values`` sentinels (compared in raw integer units
before scaling; Kinect writes 65535 for "no reading"), depths at or below ``data.min_depth`` and
above ``data.max_depth``. A sample with no valid depth pixel is an error.
"""

import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kdepth.data.plan import check_complete
from kdepth.errors import ConfigError, DataError

LOG = logging.getLogger("kdepth.data")

RGB_EXTS = (".png", ".jpg", ".jpeg")
DEPTH_EXTS = (".png", ".npy")
CANONICAL_SPLITS = ("train", "val", "test")
# The one split of a manifest whose file name names no split (``pairs.txt``): all its lines.
ALL_SPLIT = "all"

# PIL modes of 8-bit images that convert losslessly (apart from alpha) to RGB.
_RGB_CONVERTIBLE = ("1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_LAYOUT_HINT = "expected ROOT/<split>/rgb/NAME.{png,jpg,jpeg} with ROOT/<split>/depth/NAME.{png,npy}"


def clean_depth(depth_metres, min_depth, max_depth):
    """Returns depth as float32 metres with every hole set to 0.0.

    Holes are NaN, +-inf, values <= `min_depth` and values > `max_depth`.
    """
    depth = np.asarray(depth_metres)
    if not np.issubdtype(depth.dtype, np.floating):
        depth = depth.astype(np.float64)
    valid = np.isfinite(depth) & (depth > min_depth) & (depth <= max_depth)
    return np.where(valid, depth, 0.0).astype(np.float32)


@dataclass(frozen=True)
class DepthDecoding:
    """How raw depth files become metres: units per metre, hole sentinels and the valid range."""

    depth_scale: float = 1000.0
    min_depth: float = 1e-3
    max_depth: float = 10.0
    hole_values: tuple = (65535,)

    @classmethod
    def from_config(cls, data_cfg):
        """Builds the decoding from `config.data`."""
        return cls(
            depth_scale=float(data_cfg.depth_scale),
            min_depth=float(data_cfg.min_depth),
            max_depth=float(data_cfg.max_depth),
            hole_values=tuple(data_cfg.hole_values),
        )


def _open_image(path):
    """Opens and fully decodes an image file, or raises DataError saying why it cannot."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist.")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes), not an image: re-export or remove it.")
    try:
        with Image.open(path) as img:
            img.load()  # PIL decodes lazily: force it so truncated files fail here
            return img.copy()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct/zlib errors...
        raise DataError(
            path, f"cannot read image ({type(e).__name__}: {e}); the file is corrupt, truncated or not an image: re-export or remove it."
        ) from None


ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 = as stored; 2-8 = flip and/or rotate to show it


def exif_orientation(img):
    """The EXIF orientation (1-8) of a PIL image; 1 when it has none or an invalid one."""
    try:
        value = int(img.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(array, orientation):
    """Turns an (H, W, ...) array stored with EXIF `orientation` into the orientation it is shown in.

    The same transform as `PIL.ImageOps.exif_transpose`, for any array (an RGB image or the depth
    map that shares its pixel grid).
    """
    a = np.asarray(array)
    transforms = {
        1: lambda x: x,
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: np.swapaxes(x, 0, 1),
        6: lambda x: np.rot90(x, k=-1),
        7: lambda x: np.swapaxes(x[::-1, ::-1], 0, 1),
        8: lambda x: np.rot90(x, k=1),
    }
    return np.ascontiguousarray(transforms[int(orientation)](a))


def file_orientation(path):
    """The EXIF orientation (1-8) of an image file, read from its header only; 1 if unreadable."""
    try:
        with Image.open(path) as img:
            return exif_orientation(img)
    except Exception:  # unreadable files are reported by the reader, not here
        return 1


def read_rgb(path, orient=True):
    """Reads an 8-bit image as uint8 (H, W, 3); greyscale, palette and RGBA images are converted.

    With `orient` (the default) the EXIF orientation is applied first, so the array is the photo
    as viewers show it; `read_rgb_stored` gives the stored pixels and the orientation.
    """
    rgb, orientation = read_rgb_stored(path)
    return apply_orientation(rgb, orientation) if orient else rgb


def read_rgb_stored(path):
    """(uint8 (H, W, 3) as stored in the file, its EXIF orientation 1-8)."""
    img = _open_image(path)
    orientation = exif_orientation(img)
    if img.mode != "RGB":
        if img.mode not in _RGB_CONVERTIBLE:
            raise DataError(
                path,
                f"RGB image has PIL mode {img.mode!r} (16-bit or float); kdepth reads 8-bit RGB, greyscale "
                "or RGBA images: save it as an 8-bit PNG or JPEG.",
            )
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # PIL asks for this step before dropping palette transparency
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy(), orientation


def _depth_stats_text(raw):
    finite = raw[np.isfinite(raw)] if np.issubdtype(raw.dtype, np.floating) else raw
    if finite.size == 0:
        return "every value is NaN or inf"
    return f"raw values range {finite.min():g}..{finite.max():g}"


def read_depth(path, decoding=None, require_valid=True):
    """Reads a depth file (16-bit PNG or .npy) as float32 (H, W) metres with holes set to 0.0.

    Args:
        path: a ``.png`` (16-bit integer units) or ``.npy`` (float metres, or integer units) file.
        decoding: a `DepthDecoding`; default millimetres, 65535 sentinel, (1e-3, 10] m.
        require_valid: raise DataError when no pixel is valid.

    Raises:
        DataError: the file is missing, unreadable, of the wrong kind (8-bit, colour or float
            PNG; wrong shape or dtype), or has no valid pixel when `require_valid`.
    """
    decoding = decoding or DepthDecoding()
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".png":
        raw = _read_depth_png(path, decoding)
    elif ext == ".npy":
        raw = _read_depth_npy(path)
    else:
        raise DataError(path, f"unsupported depth file extension {path.suffix!r}; allowed: {list(DEPTH_EXTS)}.")

    if np.issubdtype(raw.dtype, np.integer):
        holes = np.isin(raw, np.asarray(decoding.hole_values)) if decoding.hole_values else np.zeros(raw.shape, bool)
        metres = np.where(holes, 0.0, raw.astype(np.float64) / decoding.depth_scale)
        unit_text = f"{decoding.depth_scale:g} units per metre (data.depth_scale)"
    else:
        metres = raw
        unit_text = "float values taken as metres"
    depth = clean_depth(metres, decoding.min_depth, decoding.max_depth)
    if require_valid and not np.any(depth > 0):
        raise DataError(
            path,
            f"depth has no valid pixel: {_depth_stats_text(raw)} ({unit_text}); valid depths are in "
            f"({decoding.min_depth:g}, {decoding.max_depth:g}] m and 0, NaN, inf and {list(decoding.hole_values)} are holes. "
            "Check data.depth_scale, data.min_depth and data.max_depth, or remove the sample.",
        )
    return depth


def _read_depth_png(path, decoding):
    """The raw integer units of a single-channel 16-bit PNG; DataError for any other PNG."""
    img = _open_image(path)
    if img.mode in _UINT16_MODES or img.mode == "I":
        # Pillow opens 16-bit greyscale PNGs as "I;16" (older versions as int32 "I").
        return np.asarray(img).astype(np.int64 if img.mode == "I" else np.uint16)
    if img.mode in ("1", "L", "P", "LA", "PA"):
        raise DataError(
            path,
            f"depth PNG is 8-bit (PIL mode {img.mode!r}); kdepth needs a single-channel 16-bit PNG with "
            f"data.depth_scale = {decoding.depth_scale:g} units per metre (an 8-bit PNG cannot hold metric depth: "
            "it is probably a visualisation). Write uint16 units or a float .npy in metres.",
        )
    if img.mode == "F":
        raise DataError(
            path, "depth PNG holds float values (PIL mode 'F'); save float depth in metres as .npy or write a 16-bit PNG in units."
        )
    raise DataError(
        path,
        f"depth PNG has PIL mode {img.mode!r} ({len(img.getbands())} channels); kdepth needs a single-channel "
        "16-bit PNG (or a .npy array in metres).",
    )


def _read_depth_npy(path):
    """The (H, W) float or integer array of a .npy file; DataError for any other content."""
    if not path.is_file():
        raise DataError(path, "file does not exist.")
    try:
        raw = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(path, f"cannot read .npy file ({type(e).__name__}: {e}); it is corrupt or truncated.") from None
    if raw.ndim == 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim != 2:
        raise DataError(path, f"depth array has shape {raw.shape}; expected (H, W) or (H, W, 1).")
    if not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)) or raw.dtype == bool:
        raise DataError(
            path, f"depth array has dtype {raw.dtype}; expected float (metres) or integer (data.depth_scale units)."
        )
    return raw


def read_pair(rgb_path, depth_path, decoding=None):
    """Reads an RGB file and its depth partner, checking that both have the same size.

    A depth map carries no orientation: it shares the RGB file's stored pixel grid. An RGB file
    with an EXIF orientation has it applied to both, so the pair is returned as the photo is
    shown (`kdepth data check` names such files).
    """
    rgb, orientation = read_rgb_stored(rgb_path)
    depth = read_depth(depth_path, decoding)
    if rgb.shape[:2] != depth.shape:
        raise DataError(
            rgb_path,
            f"RGB is {rgb.shape[0]}x{rgb.shape[1]} (HxW) but its depth partner {depth_path} is "
            f"{depth.shape[0]}x{depth.shape[1]}; both must have the same size.",
        )
    return apply_orientation(rgb, orientation), apply_orientation(depth, orientation)


class Source:
    """Base class of kdepth's RGB-D sources.

    Subclasses set `name` and implement `splits`, `_count`, `sample_names` and `load`; the
    index-based `raw_dataset` here serves them all unless overridden. `skipped` gathers the
    `DataError` of every sample dropped by a `raw_dataset(..., skip_bad_files=True)` pipeline
    since the source was created, once per bad file (a repeated, shuffled training pipeline
    meets the same file on every pass).
    """

    name = "source"
    # The index-based `raw_dataset` below shuffles sample indices, so a cached split reshuffled
    # with the same seed gives the same batches (`kdepth.data.pipeline.resolve_cache`).
    shuffles_by_index = True

    def __init__(self):
        self.skipped = []
        self._skip_seen = set()
        self._skip_lock = threading.Lock()

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"

    def splits(self):
        """Names of the splits this source has."""
        raise NotImplementedError(f"{type(self).__name__} must implement splits()")

    def _count(self, split):
        """Number of samples of a known split (may be 0)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _count()")

    def num_samples(self, split):
        """Number of samples of `split`; DataError if the split is unknown or empty."""
        available = self.splits()
        if split not in available:
            raise DataError(self.name, f"split {split!r} is unknown; available: {available}.")
        n = self._count(split)
        if n == 0:
            raise DataError(self.name, f"split {split!r} is empty; available: {available}.")
        return n

    def sample_names(self, split):
        """A name (file path or id) per sample of `split`, in index order, for messages."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample_names()")

    def load(self, split, index):
        """Loads sample `index` of `split` as (rgb uint8 (H, W, 3), depth float32 (H, W) metres)."""
        raise NotImplementedError(f"{type(self).__name__} must implement load()")

    def listing_problems(self, split):
        """Problems found while listing `split` (e.g. an RGB file without a depth partner)."""
        return []

    def close(self):
        """Releases open files or iterators; the source reopens them if used again."""

    def _check_index(self, split, index):
        n = self.num_samples(split)
        if not 0 <= index < n:
            raise DataError(self.name, f"index {index} is out of range for split {split!r} of {n} samples.")
        return n

    def _record_skip(self, error):
        with self._skip_lock:
            if (error.path, error.reason) in self._skip_seen:
                return  # logged and counted on the first pass already
            self._skip_seen.add((error.path, error.reason))
            self.skipped.append(error)
        LOG.warning("skipping %s: %s", error.path, error.reason)

    def raw_dataset(self, split, *, shuffle, seed, skip_bad_files):
        """A `tf.data.Dataset` of {"image": uint8 (H, W, 3), "depth": float32 (H, W), "name": string}.

        Sizes may vary per element. With `shuffle`, the sample order is reshuffled every pass
        from `seed`. With `skip_bad_files` False, the first bad sample stops iteration with a
        TF error whose message holds the file path and the reason, and listing problems (such
        as a missing partner) raise a `DataError` here; with it True, bad samples and listing
        problems are dropped, logged on the "kdepth.data" logger and added to `self.skipped`.
        """
        import tensorflow as tf

        n = self.num_samples(split)
        problems = self.listing_problems(split)
        if problems:
            if not skip_bad_files:
                more = f" ({len(problems) - 1} more problems; `kdepth data check` lists them all)" if len(problems) > 1 else ""
                raise DataError(problems[0].path, problems[0].reason + more)
            for problem in problems:
                self._record_skip(problem)
        names = tf.constant(self.sample_names(split), dtype=tf.string)
        empty_rgb, empty_depth = np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), np.float32)

        def load_one(index):
            try:
                rgb, depth = self.load(split, int(index))
            except DataError as e:
                if not skip_bad_files:
                    raise
                self._record_skip(e)
                return np.False_, empty_rgb, empty_depth
            return np.True_, np.ascontiguousarray(rgb, np.uint8), np.ascontiguousarray(depth, np.float32)

        def to_element(index):
            ok, rgb, depth = tf.numpy_function(load_one, [index], [tf.bool, tf.uint8, tf.float32], name="kdepth_load")
            ok.set_shape([])
            rgb.set_shape([None, None, 3])
            depth.set_shape([None, None])
            return ok, {"image": rgb, "depth": depth, "name": tf.gather(names, index)}

        ds = tf.data.Dataset.range(n)
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(to_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if skip_bad_files:
            ds = ds.filter(lambda ok, element: ok)
        return ds.map(lambda ok, element: element)


class SyntheticSource(Source):
    """Rendered rooms from `kdepth.data.synthetic.render_sample`.

    Sample i of a split is render index ``offset + i`` with offsets train 0, val 10,000,000 and
    test 20,000,000, so splits never share a sample and every sample is reproducible from
    (seed, split, i).
    """

    OFFSETS = {"train": 0, "val": 10_000_000, "test": 20_000_000}
    SPAN = 10_000_000

    def __init__(self, counts, size, seed=0, holes=True, min_depth=1e-3, max_depth=10.0):
        super().__init__()
        # Imported here: only this source needs the renderer.
        from kdepth.data import synthetic

        self._render = synthetic.render_sample
        for split, n in counts.items():
            if split not in self.OFFSETS:
                raise ConfigError(f"synthetic split {split!r} is unknown; allowed: {list(self.OFFSETS)}.")
            if not 0 <= n <= self.SPAN:
                raise ConfigError(f"data.synthetic_{split} = {n}; allowed: 0..{self.SPAN} so splits never overlap.")
        self.counts = dict(counts)
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.holes = bool(holes)
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.name = "synthetic"

    def splits(self):
        return [s for s in CANONICAL_SPLITS if s in self.counts]

    def _count(self, split):
        return self.counts[split]

    def sample_names(self, split):
        n = self.num_samples(split)
        return [f"synthetic/{split}/{i:06d}" for i in range(n)]

    def load(self, split, index):
        self._check_index(split, index)
        rgb, depth = self._render(self.seed, self.OFFSETS[split] + index, self.size, holes=self.holes)
        depth = clean_depth(depth, self.min_depth, self.max_depth)
        if not np.any(depth > 0):
            raise DataError(f"synthetic/{split}/{index:06d}", "rendered depth has no valid pixel inside (min_depth, max_depth].")
        return np.asarray(rgb, np.uint8), depth


@dataclass
class _Listing:
    pairs: list  # [(rgb_path, depth_path)]
    problems: list  # [DataError]


class _PairListSource(Source):
    """Shared code of the file-pair sources (folder, manifest)."""

    def __init__(self, decoding):
        super().__init__()
        self.decoding = decoding
        self._listings = {}
        self._listing_lock = threading.Lock()

    def _list(self, split):
        raise NotImplementedError

    def _listing(self, split):
        with self._listing_lock:
            if split not in self._listings:
                self._listings[split] = self._list(split)
            return self._listings[split]

    def _count(self, split):
        return len(self._listing(split).pairs)

    def listing_problems(self, split):
        if split not in self.splits():
            return []
        return list(self._listing(split).problems)

    def sample_names(self, split):
        self.num_samples(split)
        return [str(rgb) for rgb, _ in self._listing(split).pairs]

    def pair_paths(self, split, index):
        """(rgb_path, depth_path) of sample `index` of `split`."""
        self._check_index(split, index)
        return self._listing(split).pairs[index]

    def load(self, split, index):
        rgb_path, depth_path = self.pair_paths(split, index)
        return read_pair(rgb_path, depth_path, self.decoding)


def _files_by_stem(directory, exts, kind, problems):
    """Maps file stem -> path for files with `exts` in `directory`; reports others."""
    found = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() not in exts:
            problems.append(DataError(path, f"unsupported {kind} file extension {path.suffix!r}; allowed: {list(exts)}."))
            continue
        if path.stem in found:
            problems.append(
                DataError(path, f"two {kind} files share the name {path.stem!r} (also {found[path.stem].name}); keep one.")
            )
            found[path.stem] = None  # ambiguous: neither is used
            continue
        found[path.stem] = path
    return found


class FolderSource(_PairListSource):
    """``ROOT/<split>/rgb/NAME.{png,jpg,jpeg}`` + ``ROOT/<split>/depth/NAME.{png,npy}``.

    RGB and depth files are matched by stem and listed in sorted stem order. Every sub-folder of
    ROOT holding an ``rgb`` folder is a split. Files without a partner, with an unsupported
    extension or sharing a stem are listing problems, left out of the samples. Hidden files
    (names starting with ".") are ignored. A folder `kdepth data synth` did not finish (see
    `kdepth.data.plan`) is refused with the command that finishes it.
    """

    def __init__(self, root, decoding=None):
        super().__init__(decoding or DepthDecoding())
        self.root = Path(root)
        self.name = f"folder:{self.root}"
        if not self.root.is_dir():
            raise DataError(self.root, f"folder does not exist; {_LAYOUT_HINT}.")
        check_complete(self.root)
        found = [p.name for p in self.root.iterdir() if (p / "rgb").is_dir()]
        self._splits = [s for s in CANONICAL_SPLITS if s in found] + sorted(s for s in found if s not in CANONICAL_SPLITS)
        if not self._splits:
            raise DataError(self.root, f"folder has no split folders with an rgb/ folder inside; {_LAYOUT_HINT}.")

    def splits(self):
        return list(self._splits)

    def _list(self, split):
        problems = []
        rgb_dir, depth_dir = self.root / split / "rgb", self.root / split / "depth"
        rgbs = _files_by_stem(rgb_dir, RGB_EXTS, "RGB", problems)
        depths = _files_by_stem(depth_dir, DEPTH_EXTS, "depth", problems)
        pairs = []
        for stem in sorted(rgbs):
            rgb = rgbs[stem]
            if rgb is None:
                continue
            if stem not in depths:
                problems.append(DataError(rgb, f"no depth partner: expected {depth_dir / stem}.png or .npy."))
            elif depths[stem] is not None:
                pairs.append((rgb, depths[stem]))
        for stem in sorted(set(depths) - set(rgbs)):
            if depths[stem] is not None:
                problems.append(DataError(depths[stem], f"no RGB partner: expected {rgb_dir / stem}.png, .jpg or .jpeg."))
        return _Listing(pairs, problems)


_SPLIT_WORD = re.compile(r"(?<![A-Za-z0-9])(train|val|test)(?![A-Za-z0-9])")


class ManifestSource(_PairListSource):
    """Text manifests of ``rgb_path depth_path [ignored columns]`` lines (BTS / AdaBins).

    Paths are relative to the manifest's folder; an absolute path is used as is when it exists,
    otherwise its leading "/" is dropped (BTS writes "/kitchen_0028b/rgb_00045.jpg" relative to
    its data root). Blank lines and lines starting with "#" are ignored, as are columns after the
    second (BTS's focal length). A depth column of "None" (KITTI lists) is a missing partner.
    Paths cannot contain spaces.

    Splits: `path` names one manifest. If its file name holds the word train, val or test
    (delimited by non-alphanumerics, e.g. ``train.txt``, ``nyu_test_files.txt``), that word is
    its split and the sibling files with the word replaced by the other split names are the
    other splits when they exist (``nyu_train_files.txt`` -> ``nyu_val_files.txt``,
    ``nyu_test_files.txt``). A manifest without a split word (``pairs.txt``) is one split of
    its own, ``ALL_SPLIT`` ("all"): commands that read one split use it when not told a split
    (`resolve_split`, `resolve_splits`).
    """

    def __init__(self, path, decoding=None):
        super().__init__(decoding or DepthDecoding())
        self.path = Path(path)
        self.name = f"manifest:{self.path}"
        if not self.path.is_file():
            raise DataError(self.path, "manifest file does not exist; pass a text file of 'rgb_path depth_path' lines.")
        matches = list(_SPLIT_WORD.finditer(self.path.name))
        self.files = {}
        if not matches:
            self.files[ALL_SPLIT] = self.path
        else:
            m = matches[-1]
            for split in CANONICAL_SPLITS:
                sibling = self.path.with_name(self.path.name[: m.start()] + split + self.path.name[m.end():])
                if sibling.is_file():
                    self.files[split] = sibling

    def splits(self):
        return list(self.files)

    def _resolve(self, text, base):
        p = Path(text)
        if p.is_absolute():
            return p if p.exists() else base / text.lstrip("/\\")
        return base / p

    def _list(self, split):
        manifest = self.files[split]
        base = manifest.parent
        pairs, problems = [], []
        try:
            lines = manifest.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(manifest, f"cannot read manifest ({type(e).__name__}: {e}).") from None
        for lineno, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            cols = text.split()
            where = f"{manifest}:{lineno}"
            if len(cols) < 2:
                problems.append(DataError(where, f"line {text!r} has {len(cols)} column; expected 'rgb_path depth_path'."))
                continue
            rgb = self._resolve(cols[0], base)
            if cols[1] in ("None", "none", "-"):
                problems.append(DataError(rgb, f"no depth partner (listed as {cols[1]!r} at {where})."))
                continue
            depth = self._resolve(cols[1], base)
            if not rgb.is_file():
                problems.append(DataError(rgb, f"RGB file listed at {where} does not exist."))
            elif not depth.is_file():
                problems.append(DataError(depth, f"depth partner of {rgb} listed at {where} does not exist."))
            else:
                pairs.append((rgb, depth))
        return _Listing(pairs, problems)


class TfdsSource(Source):
    """A `tensorflow_datasets` dataset with ``image`` (uint8) and ``depth`` (metres) features.

    ``tfds.load(name, split=..., data_dir=...)`` reads it, downloading and preparing it first if
    needed, as tfds does. Split names map as in NYU practice: ``train`` -> ``train``; ``val``
    and ``test`` -> ``validation`` for nyu_depth_v2 (its validation split is the 654 official
    test images) and ``val`` -> ``validation``, ``test`` -> ``test`` for other datasets. Any
    other split string (e.g. ``train[:100]``) is passed to tfds unchanged. Element names are
    the tfds record ids. `load` iterates the split in order and keeps its place, so visiting the
    indices in increasing order (as `kdepth data check` does) reads the split once.
    """

    shuffles_by_index = False  # tfds shuffles files and records itself

    def __init__(self, dataset="nyu_depth_v2", data_dir=None, min_depth=1e-3, max_depth=10.0):
        super().__init__()
        self.dataset = dataset
        self.data_dir = data_dir or None
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.name = f"tfds:{dataset}" + (f"@{self.data_dir}" if self.data_dir else "")
        if dataset == "nyu_depth_v2":
            self.split_map = {"train": "train", "val": "validation", "test": "validation"}
        else:
            self.split_map = {"train": "train", "val": "validation", "test": "test"}
        self._counts = {}
        self._cursor = {}  # split -> (next index, numpy iterator)
        self._lock = threading.Lock()

    def splits(self):
        return list(self.split_map)

    def close(self):
        with self._lock:
            self._cursor.clear()

    def tfds_split(self, split):
        """The tfds split name read for a kdepth split name."""
        return self.split_map.get(split, split)

    def _load_tfds(self, split, shuffle_files=False, seed=None, with_info=False):
        import tensorflow_datasets as tfds

        try:
            return tfds.load(
                self.dataset,
                split=self.tfds_split(split),
                data_dir=self.data_dir,
                shuffle_files=shuffle_files,
                with_info=with_info,
                read_config=tfds.ReadConfig(add_tfds_id=True, shuffle_seed=seed),
            )
        except Exception as e:  # tfds raises DatasetNotFoundError, AssertionError, ValueError, network errors...
            raise DataError(
                self.name,
                f"tfds cannot load split {self.tfds_split(split)!r} for kdepth split {split!r} ({type(e).__name__}: {e}). "
                f"kdepth splits available: {self.splits()} (or a tfds split string). If the dataset is missing, prepare it with "
                f"`tfds build {self.dataset} --data_dir DIR` (or place the archive in its manual dir) and set data.root = DIR.",
            ) from None

    def num_samples(self, split):
        """Split size from the dataset info when prepared, else from the tf.data cardinality."""
        n = self._count(split)
        if n == 0:
            raise DataError(self.name, f"split {split!r} is empty; available: {self.splits()}.")
        return n

    def _count(self, split):
        if split not in self._counts:
            ds, info = self._load_tfds(split, with_info=True)
            tsplit = self.tfds_split(split)
            n = -1
            if tsplit in info.splits:  # known once the dataset is prepared
                n = int(info.splits[tsplit].num_examples)
            if n < 0:
                n = int(ds.cardinality())
            if n < 0:  # unknown cardinality: count
                n = sum(1 for _ in ds)
            self._counts[split] = n
        return self._counts[split]

    def sample_names(self, split):
        n = self.num_samples(split)
        return [f"{self.name}/{self.tfds_split(split)}#{i}" for i in range(n)]

    def load(self, split, index):
        import tensorflow_datasets as tfds

        n = self.num_samples(split)
        if not 0 <= index < n:
            raise DataError(self.name, f"index {index} is out of range for split {split!r} of {n} samples.")
        with self._lock:
            position, iterator = self._cursor.get(split, (None, None))
            if position is None or position > index:
                iterator = iter(tfds.as_numpy(self._load_tfds(split)))
                position = 0
            try:
                while position < index:
                    next(iterator)
                    position += 1
                example = next(iterator)
            except StopIteration:
                self._cursor.pop(split, None)
                raise DataError(self.name, f"split {split!r} ended before index {index}.") from None
            self._cursor[split] = (position + 1, iterator)
        depth = clean_depth(example["depth"].astype(np.float32), self.min_depth, self.max_depth)
        name = f"{self.name}/{self.tfds_split(split)}#{index}"
        if not np.any(depth > 0):
            raise DataError(name, f"depth has no valid pixel in ({self.min_depth:g}, {self.max_depth:g}] m.")
        return np.asarray(example["image"], np.uint8), depth

    def raw_dataset(self, split, *, shuffle, seed, skip_bad_files):
        """tfds's own pipeline mapped to {"image", "depth", "name"}; see `Source.raw_dataset`.

        With `shuffle`, files are shuffled (seeded) and a seeded 64-element shuffle buffer mixes
        records across files; `kdepth.data.pipeline` shuffles resized samples again.
        """
        import tensorflow as tf

        self.num_samples(split)
        ds = self._load_tfds(split, shuffle_files=shuffle, seed=seed if shuffle else None)
        if shuffle:
            # Full-size NYU samples (480x640 RGB + float depth) are large: a small buffer keeps memory bounded.
            ds = ds.shuffle(64, seed=seed, reshuffle_each_iteration=True)
        lo, hi = self.min_depth, self.max_depth

        def check(name, n_valid):
            if n_valid > 0:
                return np.True_
            error = DataError(name.decode(), f"depth has no valid pixel in ({lo:g}, {hi:g}] m.")
            if not skip_bad_files:
                raise error
            self._record_skip(error)
            return np.False_

        def to_element(example):
            depth = tf.cast(example["depth"], tf.float32)
            valid = tf.math.is_finite(depth) & (depth > lo) & (depth <= hi)
            depth = tf.where(valid, depth, tf.zeros_like(depth))
            name = example["tfds_id"]
            ok = tf.numpy_function(check, [name, tf.reduce_sum(tf.cast(valid, tf.int64))], tf.bool, name="kdepth_check")
            ok.set_shape([])
            return ok, {"image": tf.cast(example["image"], tf.uint8), "depth": depth, "name": name}

        ds = ds.map(to_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if skip_bad_files:
            ds = ds.filter(lambda ok, element: ok)
        return ds.map(lambda ok, element: element)


# ----- MATLAB files ---------------------------------------------------------------------------

# MAT v5 element types (MATLAB "MAT-File Format", table 1-1) -> numpy dtype codes.
_MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
# mxCLASS codes of numeric arrays -> numpy dtype codes.
_MX_NUMERIC = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}


def _mat5_elements(buf, order, path):
    """Yields (type, payload bytes) of the data elements packed in `buf`."""
    pos = 0
    while pos + 8 <= len(buf):
        first, second = struct.unpack_from(order + "II", buf, pos)
        if first >> 16:  # small data element: size in the upper 16 bits, data in the tag
            size, kind = first >> 16, first & 0xFFFF
            yield kind, buf[pos + 4 : pos + 4 + size]
            pos += 8
            continue
        kind, size = first, second
        start = pos + 8
        if start + size > len(buf):
            raise DataError(path, "MAT v5 file is truncated (an element runs past the end).")
        yield kind, buf[start : start + size]
        # Compressed elements are not padded; the others end on an 8-byte boundary.
        pos = start + size if kind == _MI_COMPRESSED else start + ((size + 7) // 8) * 8


def _mat5_matrix(payload, order, path):
    """Returns (name, array) of a numeric miMATRIX element, or (name, None) for other classes."""
    parts = list(_mat5_elements(payload, order, path))
    if len(parts) < 3:
        return "", None
    flags = np.frombuffer(parts[0][1], order + _MI_DTYPES[parts[0][0]])
    mx_class = int(flags[0]) & 0xFF
    dims = [int(d) for d in np.frombuffer(parts[1][1], order + _MI_DTYPES[parts[1][0]])]
    name = parts[2][1].decode("ascii", "replace")
    if mx_class not in _MX_NUMERIC or len(parts) < 4:
        return name, None
    kind, data = parts[3]
    if kind not in _MI_DTYPES:
        return name, None
    # MATLAB may store a double array in a narrower type (e.g. uint16 when values fit).
    values = np.frombuffer(data, order + _MI_DTYPES[kind]).astype(_MX_NUMERIC[mx_class])
    if values.size != int(np.prod(dims)):
        raise DataError(path, f"MAT v5 variable {name!r} has {values.size} values for dimensions {dims}.")
    return name, values.reshape(dims, order="F")  # MATLAB arrays are column-major


def read_mat_v5(path):
    """Reads the numeric arrays of a MATLAB v5/v7 .mat file (compressed or not) without scipy.

    Returns {name: ndarray} with MATLAB's shape (column-major order kept); cells, structs,
    strings and sparse arrays are skipped.
    """
    path = Path(path)
    buf = path.read_bytes()
    if len(buf) < 128 or not buf.startswith(b"MATLAB 5.0 MAT-file"):
        raise DataError(path, "not a MATLAB v5/v7 .mat file (no 'MATLAB 5.0 MAT-file' header).")
    indicator = buf[126:128]
    if indicator not in (b"IM", b"MI"):
        raise DataError(path, f"MAT v5 header has endian indicator {indicator!r}; expected b'IM' or b'MI'.")
    order = "<" if indicator == b"IM" else ">"
    arrays = {}
    for kind, payload in _mat5_elements(buf[128:], order, path):
        if kind == _MI_COMPRESSED:
            try:
                payload = zlib.decompress(payload)
            except zlib.error as e:
                raise DataError(path, f"MAT v5 compressed variable is corrupt ({e}).") from None
            kind, payload = next(_mat5_elements(payload, order, path), (0, b""))
        if kind == _MI_MATRIX:
            name, array = _mat5_matrix(payload, order, path)
            if array is not None:
                arrays[name] = array
    return arrays


def read_mat_arrays(path, names):
    """Reads the named numeric arrays from a MATLAB .mat file, v7.3 (HDF5) or v5/v7.

    Arrays come back in MATLAB's own shape for v5 files and in h5py's (reversed) shape for
    v7.3 files; callers that only need the values (e.g. index lists) flatten them.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist.")
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            missing = [n for n in names if n not in f]
            if missing:
                raise DataError(path, f"has no variables {missing}; found {sorted(f.keys())}.")
            return {n: np.asarray(f[n]) for n in names}
    arrays = read_mat_v5(path)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(path, f"has no numeric variables {missing}; found {sorted(arrays)}.")
    return {n: arrays[n] for n in names}


class NyuMatSource(Source):
    """The official labelled NYU Depth v2 file, ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5).

    ``images`` is (N, 3, 640, 480) uint8 and ``rawDepths`` / ``depths`` (in-painted) are
    (N, 640, 480) float32 metres as h5py sees MATLAB's column-major arrays, so a frame is
    transposed to (480, 640, 3) and a map to (480, 640). The file is opened lazily, once per
    process, and one frame is read per `load`.

    Splits come from ``splits.mat`` (``trainNdxs``, ``testNdxs``: 1-based frame numbers): train
    -> trainNdxs; test and val -> testNdxs (NYU convention: the 654 test images serve as the
    validation set). The real ``splits.mat`` is a MATLAB v5 file; it is parsed here without
    scipy (`read_mat_v5`); a v7.3 (HDF5) splits file works too. Sample names are
    ``FILE#FRAME`` with MATLAB's 1-based frame number.
    """

    DEPTH_KEYS = {"raw": "rawDepths", "inpainted": "depths"}

    def __init__(self, path, splits_path="", depth="raw", min_depth=1e-3, max_depth=10.0):
        super().__init__()
        import h5py

        self.path = Path(path)
        self.name = f"nyu_mat:{self.path}"
        if depth not in self.DEPTH_KEYS:
            raise ConfigError(f"data.mat_depth received {depth!r}; allowed: {list(self.DEPTH_KEYS)}.")
        self.depth_key = self.DEPTH_KEYS[depth]
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        if not self.path.is_file():
            raise DataError(self.path, "file does not exist; point data.root at nyu_depth_v2_labeled.mat.")
        if not h5py.is_hdf5(self.path):
            raise DataError(
                self.path, "is not a MATLAB v7.3 (HDF5) file; the official nyu_depth_v2_labeled.mat is v7.3 (re-save with save(..., '-v7.3'))."
            )
        self._lock = threading.Lock()
        self._file, self._pid = None, None
        with self._lock:
            f = self._h5()
        for key in ("images", self.depth_key):
            if key not in f:
                raise DataError(self.path, f"has no dataset {key!r}; found {sorted(f.keys())}.")
        images, depths = f["images"], f[self.depth_key]
        if images.ndim != 4 or images.shape[1] != 3 or depths.ndim != 3 or depths.shape != (images.shape[0],) + images.shape[2:]:
            raise DataError(
                self.path,
                f"images has shape {images.shape} and {self.depth_key} {depths.shape}; expected (N, 3, W, H) and (N, W, H).",
            )
        self.frames = images.shape[0]
        self.splits_path = Path(splits_path) if splits_path else self.path.with_name("splits.mat")
        if not self.splits_path.is_file():
            raise DataError(
                self.splits_path, "splits file does not exist; download the official splits.mat next to the .mat file or set data.mat_splits."
            )
        raw = read_mat_arrays(self.splits_path, ["trainNdxs", "testNdxs"])
        self._indices = {}
        for split, key in (("train", "trainNdxs"), ("test", "testNdxs"), ("val", "testNdxs")):
            ndx = np.asarray(raw[key], dtype=np.float64).ravel()
            if ndx.size and (not np.all(np.isfinite(ndx)) or np.any(ndx != np.round(ndx)) or ndx.min() < 1 or ndx.max() > self.frames):
                raise DataError(
                    self.splits_path, f"{key} holds values outside the 1-based frame numbers 1..{self.frames} of {self.path.name}."
                )
            self._indices[split] = ndx.astype(np.int64) - 1

    def _h5(self):
        """The open HDF5 file of this process (reopened after a fork); call with `_lock` held."""
        import h5py

        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def splits(self):
        return ["train", "val", "test"]

    def close(self):
        with self._lock:
            if self._file is not None and self._pid == os.getpid():
                self._file.close()
            self._file = None

    def _count(self, split):
        return int(self._indices[split].size)

    def frame_index(self, split, index):
        """0-based frame of sample `index` of `split`."""
        self._check_index(split, index)
        return int(self._indices[split][index])

    def sample_names(self, split):
        self.num_samples(split)
        return [f"{self.path}#{i + 1}" for i in self._indices[split]]

    def load(self, split, index):
        frame = self.frame_index(split, index)
        with self._lock:  # one reader at a time: h5py serialises anyway
            f = self._h5()
            image = f["images"][frame]  # (3, W, H)
            depth = f[self.depth_key][frame]  # (W, H)
        rgb = np.ascontiguousarray(np.transpose(image, (2, 1, 0))).astype(np.uint8)
        depth = clean_depth(np.asarray(depth).T, self.min_depth, self.max_depth)
        if not np.any(depth > 0):
            raise DataError(
                f"{self.path}#{frame + 1}", f"{self.depth_key} has no valid pixel in ({self.min_depth:g}, {self.max_depth:g}] m."
            )
        return rgb, depth


# ----- choosing a source ------------------------------------------------------------------------


def open_source(data_cfg, input_size):
    """Opens the source `data_cfg.source` describes (`config.data`); input_size is [H, W]."""
    kind = data_cfg.source
    decoding = DepthDecoding.from_config(data_cfg)
    root = data_cfg.root
    if kind == "synthetic":
        size = data_cfg.synthetic_size or input_size
        counts = {"train": data_cfg.synthetic_train, "val": data_cfg.synthetic_val, "test": data_cfg.synthetic_test}
        return SyntheticSource(
            counts, size, seed=data_cfg.seed, holes=data_cfg.synthetic_holes,
            min_depth=decoding.min_depth, max_depth=decoding.max_depth,
        )
    if kind == "tfds":
        return TfdsSource(data_cfg.tfds_name, root or None, decoding.min_depth, decoding.max_depth)
    if not root:
        what = {
            "folder": "a folder holding <split>/rgb and <split>/depth",
            "manifest": "a manifest .txt file",
            "nyu_mat": "the nyu_depth_v2_labeled.mat file",
        }.get(kind, "a path")
        raise ConfigError(f"data.root is empty but data.source = {kind!r} needs {what}; set data.root or pass --data PATH.")
    if kind == "folder":
        return FolderSource(root, decoding)
    if kind == "manifest":
        return ManifestSource(root, decoding)
    if kind == "nyu_mat":
        return NyuMatSource(root, data_cfg.mat_splits, data_cfg.mat_depth, decoding.min_depth, decoding.max_depth)
    raise ConfigError(f"data.source received {kind!r}; allowed: ['synthetic', 'folder', 'manifest', 'tfds', 'nyu_mat'].")


def resolve_split(source, split, default):
    """The split a command that reads one split (`kdepth evaluate`) reads.

    Args:
        source: a `Source`.
        split: the split the user named (``--split``), or None.
        default: the configured split (e.g. ``data.test_split``), read when the source has it.

    Returns:
        (split, message): `split` if given, else `default` if the source has it, else the
        source's only split (e.g. ``ALL_SPLIT`` of a split-less manifest) with a one-line
        message saying so; message is None when nothing needs saying. A source with several
        splits but not `default` gets `default` back, so reading it raises the usual
        "split ... is unknown; available: ..." DataError.
    """
    if split:
        return split, None
    available = source.splits()
    if default in available or len(available) != 1:
        return default, None
    only = available[0]
    return only, f"split: {only!r}, the only split of {source.name} (it has no {default!r} split; --split chooses)"


def resolve_splits(source, train_split, val_split):
    """The training and validation splits `kdepth fit` reads.

    A source with exactly one split (a split-less manifest's ``ALL_SPLIT``, a folder with only
    ``train/``) trains on it when it lacks `train_split`, and has no validation split unless
    `val_split` names that split (validating on the training data, on purpose). A source with
    several splits gets the configured names back unchanged, so a missing one raises the usual
    "split ... is unknown; available: ..." DataError when read.

    Args:
        source: a `Source`.
        train_split: ``data.train_split``.
        val_split: ``data.val_split``.

    Returns:
        (train, val, message): val is None when there is no validation split; message is one
        line saying what was chosen and why, or None when the configured splits were used.
    """
    available = source.splits()
    if len(available) != 1:
        return train_split, val_split, None
    only = available[0]
    notes = []
    train = train_split
    if train_split != only:
        train = only
        notes.append(f"training on {only!r}, the only split of {source.name} (it has no {train_split!r} split)")
    val = val_split if val_split == only else None
    if val is None:
        notes.append(
            f"no validation split: {source.name} has only {only!r}, so nothing is held out "
            f"(set data.val_split = {only!r} to validate on the training data)"
        )
    return train, val, "; ".join(notes) or None


def parse_data_spec(spec):
    """Parses the CLI's ``--data`` value into (data.source, data.root).

    ``synthetic`` -> ("synthetic", ""); ``tfds`` or ``tfds:DATA_DIR`` -> ("tfds", DATA_DIR);
    a path ending in ``.mat`` -> ("nyu_mat", path); an existing folder -> ("folder", path); a
    ``.txt`` file -> ("manifest", path). The words ``synthetic`` and ``tfds`` win over a folder
    of that name: write ``./synthetic`` for the folder.
    """
    text = str(spec).strip()
    if text == "synthetic":
        return "synthetic", ""
    if text == "tfds":
        return "tfds", ""
    if text.startswith("tfds:"):
        return "tfds", text[len("tfds:"):]
    if text.lower().endswith(".mat"):
        return "nyu_mat", text
    path = Path(text)
    if path.is_dir():
        return "folder", text
    if text.lower().endswith(".txt"):
        if not path.is_file():
            raise DataError(text, "manifest file does not exist.")
        return "manifest", text
    raise DataError(
        text,
        "is not a data source; --data allows: 'synthetic', 'tfds' or 'tfds:DATA_DIR', an existing folder "
        "(ROOT/<split>/rgb + ROOT/<split>/depth), a manifest .txt file, or a path to nyu_depth_v2_labeled.mat.",
    )

