"""Readers of every RGB-D source: decoding, holes, bad inputs and the tf.data interface."""

import logging
import struct
import zlib

import h5py
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kdepth.config import defaults
from kdepth.data.sources import (
    ALL_SPLIT,
    DepthDecoding,
    FolderSource,
    ManifestSource,
    NyuMatSource,
    SyntheticSource,
    TfdsSource,
    clean_depth,
    open_source,
    parse_data_spec,
    read_depth,
    read_mat_v5,
    read_rgb,
    resolve_split,
    resolve_splits,
)
from kdepth.errors import ConfigError, DataError

# ----- helpers writing test data --------------------------------------------------------------


def write_rgb(path, shape=(6, 8), mode="RGB", fmt=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, shape + (channels,), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(path, format=fmt)
    return arr


def write_depth_png(path, units):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(units, dtype=np.uint16)).save(path)


def depth_units(shape=(6, 8), seed=0):
    return np.random.default_rng(seed).integers(500, 5000, shape).astype(np.uint16)


def make_pair(root, split, stem, shape=(6, 8), rgb_ext=".png", depth_ext=".png", seed=0):
    rgb = write_rgb(root / split / "rgb" / f"{stem}{rgb_ext}", shape, seed=seed)
    units = depth_units(shape, seed)
    depth_path = root / split / "depth" / f"{stem}{depth_ext}"
    if depth_ext == ".png":
        write_depth_png(depth_path, units)
    else:
        depth_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(depth_path, units.astype(np.float32) / 1000.0)
    return rgb, units.astype(np.float64) / 1000.0


# ----- clean_depth / read_depth / read_rgb ----------------------------------------------------


def test_clean_depth_sets_every_kind_of_hole_to_zero():
    d = np.array([[0.0, np.nan, np.inf, -np.inf], [-1.0, 1e-3, 10.0, 10.5], [0.5, 2.0, 9.99, 1e-4]])
    out = clean_depth(d, 1e-3, 10.0)
    expected = np.array([[0, 0, 0, 0], [0, 0, 10.0, 0], [0.5, 2.0, 9.99, 0]], np.float32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_png16_depth_decodes_without_rescaling_and_applies_holes(tmp_path):
    units = np.array([[1234, 0, 65535], [20000, 1, 9999]], np.uint16)
    write_depth_png(tmp_path / "d.png", units)
    depth = read_depth(tmp_path / "d.png", DepthDecoding(depth_scale=1000.0, min_depth=1e-3, max_depth=10.0))
    assert depth.dtype == np.float32 and depth.shape == (2, 3)
    assert depth[0, 0] == np.float32(1.234)  # 1234 mm -> 1.234 m exactly, not 1234/65535
    # 0 and the 65535 sentinel are holes; 20 m > max_depth; 1 mm <= min_depth.
    np.testing.assert_array_equal(depth, np.array([[1.234, 0, 0], [0, 0, 9.999]], np.float32))


def test_hole_sentinels_are_compared_in_raw_units(tmp_path):
    units = np.array([[4000, 4000, 2000]], np.uint16)
    write_depth_png(tmp_path / "d.png", units)
    # With depth_scale 400 units/m, raw 4000 = 10 m (valid) but it is a sentinel in raw units.
    depth = read_depth(tmp_path / "d.png", DepthDecoding(depth_scale=400.0, hole_values=(4000,)))
    np.testing.assert_array_equal(depth, np.array([[0, 0, 5.0]], np.float32))


def test_npy_depth_float_is_metres_and_integer_is_units(tmp_path):
    f = np.array([[1.5, np.nan], [np.inf, 12.0]], np.float64)
    np.save(tmp_path / "f.npy", f[..., None])  # (H, W, 1) is accepted
    np.testing.assert_array_equal(read_depth(tmp_path / "f.npy"), np.array([[1.5, 0], [0, 0]], np.float32))
    i = np.array([[2500, 65535], [0, 700]], np.int32)
    np.save(tmp_path / "i.npy", i)
    np.testing.assert_array_equal(read_depth(tmp_path / "i.npy"), np.array([[2.5, 0], [0, 0.7]], np.float32))


def test_eight_bit_png_depth_is_a_wrong_dtype(tmp_path):
    path = tmp_path / "depth8.png"
    Image.fromarray(np.full((4, 4), 100, np.uint8)).save(path)
    with pytest.raises(DataError, match="8-bit") as e:
        read_depth(path)
    assert e.value.path == str(path)


def test_colour_png_depth_is_refused(tmp_path):
    path = tmp_path / "depthrgb.png"
    write_rgb(path)
    with pytest.raises(DataError, match="single-channel 16-bit") as e:
        read_depth(path)
    assert e.value.path == str(path)


def test_depth_with_no_valid_pixel_names_the_file(tmp_path):
    path = tmp_path / "zeros.png"
    write_depth_png(path, np.zeros((3, 3)))
    with pytest.raises(DataError, match="no valid pixel") as e:
        read_depth(path)
    assert e.value.path == str(path)
    assert "depth_scale" in e.value.reason


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_greyscale_and_rgba_rgb_are_converted(tmp_path, mode):
    path = tmp_path / f"img_{mode}.png"
    arr = write_rgb(path, (5, 7), mode=mode)
    rgb = read_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 7, 3)
    expected = np.repeat(arr, 3, axis=-1) if mode == "L" else arr[..., :3]
    np.testing.assert_array_equal(rgb, expected)


def test_sixteen_bit_rgb_is_refused(tmp_path):
    path = tmp_path / "rgb16.png"
    write_depth_png(path, depth_units())
    with pytest.raises(DataError, match="8-bit"):
        read_rgb(path)


@pytest.mark.parametrize("fmt, ext", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated_image_names_the_file(tmp_path, fmt, ext):
    good = tmp_path / f"good{ext}"
    write_rgb(good, (64, 64), fmt=fmt)
    bad = tmp_path / f"bad{ext}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="cannot read image") as e:
        read_rgb(bad)
    assert e.value.path == str(bad)


def test_not_an_image_names_the_file(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a png")
    with pytest.raises(DataError, match="cannot read image") as e:
        read_rgb(bad)
    assert str(bad) in str(e.value)


# ----- folder source --------------------------------------------------------------------------


def test_folder_source_reads_png_jpg_and_npy_pairs_in_sorted_order(tmp_path):
    rgb_b, depth_b = make_pair(tmp_path, "train", "b", seed=1)
    rgb_a, depth_a = make_pair(tmp_path, "train", "a", rgb_ext=".jpg", depth_ext=".npy", seed=2)
    make_pair(tmp_path, "val", "x", shape=(4, 5), rgb_ext=".jpeg", seed=3)
    src = FolderSource(tmp_path)
    assert src.splits() == ["train", "val"]
    assert src.num_samples("train") == 2 and src.num_samples("val") == 1
    assert src.sample_names("train") == [str(tmp_path / "train/rgb/a.jpg"), str(tmp_path / "train/rgb/b.png")]
    rgb, depth = src.load("train", 1)
    np.testing.assert_array_equal(rgb, rgb_b)
    np.testing.assert_array_equal(depth, depth_b.astype(np.float32))
    rgb, depth = src.load("train", 0)  # JPEG is lossy: compare loosely
    assert rgb.shape == (6, 8, 3) and np.abs(rgb.astype(int) - rgb_a).mean() < 60
    np.testing.assert_allclose(depth, depth_a, rtol=1e-6)
    assert src.listing_problems("train") == []
    assert src.load("val", 0)[1].shape == (4, 5)


def test_folder_source_lists_missing_partners_duplicates_and_bad_extensions(tmp_path):
    make_pair(tmp_path, "train", "good")
    write_rgb(tmp_path / "train/rgb/lonely.png")
    write_depth_png(tmp_path / "train/depth/orphan.png", depth_units())
    write_rgb(tmp_path / "train/rgb/dup.png")
    write_rgb(tmp_path / "train/rgb/dup.jpg", fmt="JPEG")
    write_depth_png(tmp_path / "train/depth/dup.png", depth_units())
    (tmp_path / "train/rgb/readme.txt").write_text("hello")
    src = FolderSource(tmp_path)
    assert src.num_samples("train") == 1
    problems = {(p.path, p.reason.split(":")[0].split(";")[0]) for p in src.listing_problems("train")}
    assert (str(tmp_path / "train/rgb/lonely.png"), "no depth partner") in problems
    assert (str(tmp_path / "train/depth/orphan.png"), "no RGB partner") in problems
    assert (str(tmp_path / "train/rgb/readme.txt"), "unsupported RGB file extension '.txt'") in problems
    assert any(path.startswith(str(tmp_path / "train/rgb/dup.")) and "share the name" in why for path, why in problems)
    assert len(problems) == 4


def test_folder_source_mismatched_sizes_name_both_files(tmp_path):
    write_rgb(tmp_path / "train/rgb/m.png", (6, 8))
    write_depth_png(tmp_path / "train/depth/m.png", depth_units((6, 9)))
    src = FolderSource(tmp_path)
    with pytest.raises(DataError, match="same size") as e:
        src.load("train", 0)
    assert e.value.path == str(tmp_path / "train/rgb/m.png")
    assert str(tmp_path / "train/depth/m.png") in e.value.reason


def test_folder_source_empty_and_unknown_splits(tmp_path):
    make_pair(tmp_path, "train", "a")
    (tmp_path / "test/rgb").mkdir(parents=True)
    src = FolderSource(tmp_path)
    with pytest.raises(DataError, match=r"split 'test' is empty; available: \['train', 'test'\]"):
        src.num_samples("test")
    with pytest.raises(DataError, match=r"split 'val' is unknown; available: \['train', 'test'\]"):
        src.num_samples("val")
    with pytest.raises(DataError, match="does not exist"):
        FolderSource(tmp_path / "nope")
    with pytest.raises(DataError, match="no split folders"):
        FolderSource(tmp_path / "train")


# ----- raw_dataset: stop and skip modes ---------------------------------------------------------


def _bad_folder(tmp_path):
    make_pair(tmp_path, "train", "a", seed=1)
    make_pair(tmp_path, "train", "b", seed=2)
    make_pair(tmp_path, "train", "c", seed=3)
    bad = tmp_path / "train/rgb/b.png"
    bad.write_bytes(bad.read_bytes()[:40])
    return bad


def test_raw_dataset_elements_and_seeded_shuffle(tmp_path):
    for i in range(6):
        make_pair(tmp_path, "train", f"s{i}", shape=(6 + i, 8), seed=i)
    src = FolderSource(tmp_path)
    ds = src.raw_dataset("train", shuffle=False, seed=0, skip_bad_files=False)
    assert ds.element_spec["image"].shape.as_list() == [None, None, 3]
    assert ds.element_spec["depth"].dtype == tf.float32 and ds.element_spec["name"].dtype == tf.string
    elements = list(ds.as_numpy_iterator())
    assert [e["name"].decode() for e in elements] == src.sample_names("train")
    for i, e in enumerate(elements):
        rgb, depth = src.load("train", i)
        np.testing.assert_array_equal(e["image"], rgb)
        np.testing.assert_array_equal(e["depth"], depth)

    def order(seed):
        ds = src.raw_dataset("train", shuffle=True, seed=seed, skip_bad_files=False)
        return [[e["name"] for e in ds.as_numpy_iterator()] for _ in range(2)]

    first, second = order(7)
    assert sorted(first) == sorted(n.encode() for n in src.sample_names("train"))
    assert order(7) == [first, second]  # the same seed gives the same epochs
    assert first != second  # reshuffled each epoch
    assert order(8)[0] != first  # another seed, another order


def test_raw_dataset_stop_mode_raises_with_the_path(tmp_path):
    bad = _bad_folder(tmp_path)
    ds = FolderSource(tmp_path).raw_dataset("train", shuffle=False, seed=0, skip_bad_files=False)
    with pytest.raises(tf.errors.OpError) as e:
        list(ds.as_numpy_iterator())
    assert str(bad) in str(e.value) and "cannot read image" in str(e.value)


def test_raw_dataset_skip_mode_drops_logs_and_counts(tmp_path, caplog):
    bad = _bad_folder(tmp_path)
    src = FolderSource(tmp_path)
    ds = src.raw_dataset("train", shuffle=False, seed=0, skip_bad_files=True)
    with caplog.at_level(logging.WARNING, logger="kdepth.data"):
        names = [e["name"].decode() for e in ds.as_numpy_iterator()]
    assert names == [str(tmp_path / "train/rgb/a.png"), str(tmp_path / "train/rgb/c.png")]
    assert [e.path for e in src.skipped] == [str(bad)]
    assert any(str(bad) in r.getMessage() and "cannot read image" in r.getMessage() for r in caplog.records)


def test_raw_dataset_listing_problems_stop_or_are_skipped(tmp_path):
    make_pair(tmp_path, "train", "a")
    write_rgb(tmp_path / "train/rgb/lonely.png")
    src = FolderSource(tmp_path)
    with pytest.raises(DataError, match="no depth partner") as e:
        src.raw_dataset("train", shuffle=False, seed=0, skip_bad_files=False)
    assert e.value.path == str(tmp_path / "train/rgb/lonely.png")
    ds = src.raw_dataset("train", shuffle=False, seed=0, skip_bad_files=True)
    assert len(list(ds)) == 1
    assert [p.path for p in src.skipped] == [str(tmp_path / "train/rgb/lonely.png")]


# ----- manifest source --------------------------------------------------------------------------


def test_manifest_source_reads_bts_style_lists_and_sibling_splits(tmp_path):
    rgb0, depth0 = make_pair(tmp_path / "data", "scene", "0", seed=1)
    make_pair(tmp_path / "data", "scene", "1", seed=2)
    rgb2, depth2 = make_pair(tmp_path / "data", "other", "2", seed=3)
    lists = tmp_path / "data"
    (lists / "nyu_train_files.txt").write_text(
        "# rgb depth focal\n\n"
        "scene/rgb/0.png scene/depth/0.png 518.8579\n"
        "/scene/rgb/1.png /scene/depth/1.png 518.8579\n"  # BTS: leading '/' relative to the data root
        "scene/rgb/missing.png scene/depth/0.png\n"
        "onlyonecolumn.png\n"
        "scene/rgb/0.png None\n"
    )
    (lists / "nyu_test_files.txt").write_text("other/rgb/2.png other/depth/2.png\n")
    src = ManifestSource(lists / "nyu_train_files.txt")
    assert src.splits() == ["train", "test"]
    assert src.num_samples("train") == 2 and src.num_samples("test") == 1
    rgb, depth = src.load("train", 0)
    np.testing.assert_array_equal(rgb, rgb0)
    np.testing.assert_array_equal(depth, depth0.astype(np.float32))
    np.testing.assert_array_equal(src.load("test", 0)[0], rgb2)
    problems = src.listing_problems("train")
    assert len(problems) == 3
    assert problems[0].path == str(lists / "scene/rgb/missing.png") and "does not exist" in problems[0].reason
    assert problems[1].path == f"{lists / 'nyu_train_files.txt'}:6" and "'rgb_path depth_path'" in problems[1].reason
    assert "no depth partner" in problems[2].reason
    with pytest.raises(DataError, match=r"split 'val' is unknown; available: \['train', 'test'\]"):
        src.num_samples("val")
    # Opened from the test list, the train list is still found.
    assert ManifestSource(lists / "nyu_test_files.txt").splits() == ["train", "test"]


def test_manifest_without_split_word_is_a_split_of_its_own(tmp_path):
    # Behaviour change: such a manifest used to be the split 'train' (and `evaluate` then failed
    # asking for 'test'); it is now the split ALL_SPLIT, read by default by one-split commands.
    make_pair(tmp_path, "s", "0")
    (tmp_path / "pairs.txt").write_text("s/rgb/0.png s/depth/0.png\n")
    src = ManifestSource(tmp_path / "pairs.txt")
    assert ALL_SPLIT == "all"
    assert src.splits() == [ALL_SPLIT] and src.num_samples(ALL_SPLIT) == 1
    with pytest.raises(DataError, match=r"split 'train' is unknown; available: \['all'\]"):
        src.num_samples("train")


def _pairs_manifest(tmp_path):
    make_pair(tmp_path, "s", "0")
    (tmp_path / "pairs.txt").write_text("s/rgb/0.png s/depth/0.png\n")
    return ManifestSource(tmp_path / "pairs.txt")


def test_resolve_split_uses_the_only_split_when_the_default_is_missing(tmp_path):
    src = _pairs_manifest(tmp_path)
    split, note = resolve_split(src, None, "test")
    assert split == "all"
    assert note == f"split: 'all', the only split of {src.name} (it has no 'test' split; --split chooses)"
    assert resolve_split(src, "train", "test") == ("train", None)  # a named split is taken as is
    three = SyntheticSource({"train": 1, "val": 1, "test": 1}, (16, 16))
    assert resolve_split(three, None, "test") == ("test", None)
    two = SyntheticSource({"train": 1, "val": 1}, (16, 16))
    assert resolve_split(two, None, "test") == ("test", None)  # several splits: no guessing
    with pytest.raises(DataError, match=r"split 'test' is unknown; available: \['train', 'val'\]"):
        two.num_samples(resolve_split(two, None, "test")[0])


def test_resolve_splits_for_fit(tmp_path):
    src = _pairs_manifest(tmp_path)
    train, val, note = resolve_splits(src, "train", "val")
    assert (train, val) == ("all", None)
    assert note.startswith(f"training on 'all', the only split of {src.name} (it has no 'train' split); no validation split:")
    assert "data.val_split = 'all'" in note
    # Validating on the training data is possible when asked for by name.
    assert resolve_splits(src, "train", "all") == ("all", "all", f"training on 'all', the only split of {src.name} (it has no 'train' split)")
    only_train = SyntheticSource({"train": 2}, (16, 16))
    train, val, note = resolve_splits(only_train, "train", "val")
    assert (train, val) == ("train", None) and note.startswith("no validation split: synthetic has only 'train'")
    three = SyntheticSource({"train": 1, "val": 1, "test": 1}, (16, 16))
    assert resolve_splits(three, "train", "val") == ("train", "val", None)
    two = SyntheticSource({"train": 1, "test": 1}, (16, 16))
    assert resolve_splits(two, "train", "val") == ("train", "val", None)  # the usual unknown-split error follows


# ----- synthetic source -------------------------------------------------------------------------


def test_synthetic_source_sizes_splits_and_determinism():
    cfg = defaults().replace(data__synthetic_train=3, data__synthetic_val=2, data__synthetic_test=2)
    src = open_source(cfg.data, [32, 40])
    assert isinstance(src, SyntheticSource)
    assert [src.num_samples(s) for s in ("train", "val", "test")] == [3, 2, 2]
    rgb, depth = src.load("train", 0)
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 40, 3)
    assert depth.dtype == np.float32 and depth.shape == (32, 40)
    valid = depth[depth > 0]
    assert valid.size and valid.min() > cfg.data.min_depth and valid.max() <= cfg.data.max_depth
    np.testing.assert_array_equal(src.load("train", 0)[1], depth)  # reproducible
    assert not np.array_equal(src.load("val", 0)[0], rgb)  # splits never share a sample
    assert not np.array_equal(src.load("test", 0)[0], src.load("val", 0)[0])
    with pytest.raises(DataError, match="out of range"):
        src.load("val", 2)
    sized = open_source(cfg.replace(data__synthetic_size=[24, 30]).data, [32, 40])
    assert sized.load("test", 1)[0].shape == (24, 30, 3)
    no_holes = open_source(cfg.replace(data__synthetic_holes=False).data, [32, 40])
    assert (no_holes.load("train", 0)[1] > 0).mean() >= (depth > 0).mean()


def test_synthetic_raw_dataset_matches_load():
    cfg = defaults().replace(data__synthetic_train=2, data__synthetic_val=1, data__synthetic_test=1)
    src = open_source(cfg.data, [32, 40])
    elements = list(src.raw_dataset("train", shuffle=False, seed=0, skip_bad_files=False).as_numpy_iterator())
    assert len(elements) == 2
    np.testing.assert_array_equal(elements[1]["depth"], src.load("train", 1)[1])
    assert elements[1]["name"] == b"synthetic/train/000001"


# ----- tfds source (tensorflow_datasets' mock of the real reading code) -----------------------


def test_tfds_source_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        # The mock's depth is uniform in [0, 1] m: max_depth 0.5 makes about half of it holes.
        src = TfdsSource("nyu_depth_v2", str(tmp_path), min_depth=1e-3, max_depth=0.5)
        assert src.splits() == ["train", "val", "test"]
        assert src.tfds_split("val") == "validation" and src.tfds_split("test") == "validation"
        assert src.num_samples("test") == 3
        first = src.load("val", 0)
        rgb, depth = src.load("val", 2)
        assert rgb.dtype == np.uint8 and rgb.shape == (480, 640, 3)
        assert depth.dtype == np.float32 and depth.shape == (480, 640)
        assert depth.max() <= 0.5 and 0.3 < (depth == 0).mean() < 0.7
        np.testing.assert_array_equal(src.load("val", 0)[1], first[1])  # going back restarts in order
        ds = src.raw_dataset("test", shuffle=False, seed=0, skip_bad_files=False)
        elements = list(ds.as_numpy_iterator())
        assert len(elements) == 3
        assert b"validation" in elements[0]["name"]
        np.testing.assert_array_equal(elements[0]["depth"], first[1])
        np.testing.assert_array_equal(elements[0]["image"], first[0])
        shuffled = list(src.raw_dataset("train", shuffle=True, seed=3, skip_bad_files=True).as_numpy_iterator())
        assert len(shuffled) == 3 and src.skipped == []
        src.close()  # drops the cached reading position


def test_tfds_source_depth_without_valid_pixel_stops_or_is_skipped(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        src = TfdsSource("nyu_depth_v2", str(tmp_path), min_depth=2.0, max_depth=10.0)  # mock depth <= 1 m
        with pytest.raises(DataError, match="no valid pixel"):
            src.load("train", 0)
        with pytest.raises(tf.errors.OpError, match="no valid pixel"):
            list(src.raw_dataset("train", shuffle=False, seed=0, skip_bad_files=False))
        assert list(src.raw_dataset("train", shuffle=False, seed=0, skip_bad_files=True)) == []
        assert len(src.skipped) == 2 and "nyu_depth_v2-train" in src.skipped[0].path
        src.close()


# ----- nyu_mat source ---------------------------------------------------------------------------


def _mat5_element(kind, data, small_ok=True):
    if small_ok and len(data) <= 4:  # "small data element" packed into the tag
        return struct.pack("<I", (len(data) << 16) | kind) + data.ljust(4, b"\0")
    return struct.pack("<II", kind, len(data)) + data + b"\0" * ((-len(data)) % 8)


def write_mat5(path, arrays, compress=False, storage=np.float64):
    """A minimal MATLAB v5 writer: double arrays stored as `storage` (as MATLAB may do)."""
    mi = {np.float64: 9, np.uint16: 4, np.uint8: 2, np.int32: 5}[storage]
    out = bytearray(b"MATLAB 5.0 MAT-file, written by kdepth tests".ljust(116, b" ") + b"\0" * 8)
    out += struct.pack("<H", 0x0100) + b"IM"
    for name, array in arrays.items():
        a = np.asarray(array, dtype=np.float64)
        body = (
            _mat5_element(6, struct.pack("<II", 6, 0), small_ok=False)  # array flags: mxDOUBLE_CLASS
            + _mat5_element(5, np.asarray(a.shape, "<i4").tobytes(), small_ok=False)
            + _mat5_element(1, name.encode())
            + _mat5_element(mi, a.astype(storage).ravel(order="F").tobytes())
        )
        element = _mat5_element(14, body, small_ok=False)
        if compress:
            z = zlib.compress(element)
            element = struct.pack("<II", 15, len(z)) + z
        out += element
    path.write_bytes(bytes(out))


FRAMES, W, H = 5, 8, 6


def write_nyu_mat(path):
    """A small file in the real nyu_depth_v2_labeled.mat layout: images (N, 3, W, H), maps (N, W, H)."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (FRAMES, 3, W, H), dtype=np.uint8)
    raw = rng.uniform(0.5, 9.0, (FRAMES, W, H)).astype(np.float32)
    raw[:, 0, 0] = 0.0  # Kinect holes
    inpainted = rng.uniform(0.5, 9.0, (FRAMES, W, H)).astype(np.float32)
    # MATLAB pixel (row 2, col 5) of frame 3 (1-based 4): h5py index [3, ..., col, row].
    images[3, :, 5, 2] = (11, 22, 33)
    raw[3, 5, 2] = 4.25
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["rawDepths"] = raw
        f["depths"] = inpainted
        f["labels"] = np.zeros((FRAMES, W, H), np.uint16)
    return images, raw, inpainted


@pytest.mark.parametrize("splits_format", ["v5", "v5-compressed", "hdf5"])
def test_nyu_mat_source_layout_splits_and_transposes(tmp_path, splits_format):
    mat = tmp_path / "nyu_depth_v2_labeled.mat"
    images, raw, inpainted = write_nyu_mat(mat)
    train, test = np.array([[1], [3], [5]]), np.array([[4], [2]])  # 1-based, (N, 1) as in splits.mat
    if splits_format == "hdf5":
        with h5py.File(tmp_path / "splits.mat", "w") as f:
            f["trainNdxs"], f["testNdxs"] = train.T.astype(float), test.T.astype(float)
    else:
        write_mat5(tmp_path / "splits.mat", {"trainNdxs": train, "testNdxs": test}, compress=splits_format == "v5-compressed", storage=np.uint16)
    src = NyuMatSource(mat)  # splits.mat found next to it
    assert [src.num_samples(s) for s in ("train", "val", "test")] == [3, 2, 2]
    assert src.sample_names("test") == [f"{mat}#4", f"{mat}#2"]
    rgb, depth = src.load("test", 0)  # frame 4 (1-based) = index 3
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8 and depth.shape == (H, W)
    assert tuple(rgb[2, 5]) == (11, 22, 33) and depth[2, 5] == np.float32(4.25)
    np.testing.assert_array_equal(rgb, np.transpose(images[3], (2, 1, 0)))
    np.testing.assert_array_equal(depth, raw[3].T)
    assert depth[0, 0] == 0.0
    np.testing.assert_array_equal(src.load("val", 1)[1], raw[1].T)
    np.testing.assert_array_equal(src.load("train", 2)[0], np.transpose(images[4], (2, 1, 0)))
    inpainted_src = NyuMatSource(mat, depth="inpainted")
    np.testing.assert_array_equal(inpainted_src.load("train", 0)[1], inpainted[0].T)
    src.close()
    np.testing.assert_array_equal(src.load("train", 0)[1], raw[0].T)  # reopens after close


def test_nyu_mat_source_via_config_and_bad_splits(tmp_path):
    mat = tmp_path / "labeled.mat"
    write_nyu_mat(mat)
    splits = tmp_path / "my_splits.mat"
    write_mat5(splits, {"trainNdxs": [[1, 2]], "testNdxs": [[6]]})
    cfg = defaults().replace(data__source="nyu_mat", data__root=str(mat), data__mat_splits=str(splits))
    with pytest.raises(DataError, match=r"outside the 1-based frame numbers 1..5") as e:
        open_source(cfg.data, [32, 40])
    assert e.value.path == str(splits)
    write_mat5(splits, {"trainNdxs": [[1, 2]], "testNdxs": [[5]]})
    src = open_source(cfg.data, [32, 40])
    assert src.num_samples("train") == 2
    with pytest.raises(DataError, match="splits file does not exist"):
        NyuMatSource(mat)  # no splits.mat next to it


def test_read_mat_v5_matches_scipy(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    a = np.arange(12, dtype=float).reshape(3, 4)
    for compress in (False, True):
        path = tmp_path / f"s{compress}.mat"
        scipy_io.savemat(path, {"ab": a, "trainNdxs": np.array([[3], [1], [2]], dtype=np.uint16), "c": np.float32(2.5)}, do_compression=compress)
        arrays = read_mat_v5(path)
        np.testing.assert_array_equal(arrays["ab"], a)
        np.testing.assert_array_equal(arrays["trainNdxs"].ravel(), [3, 1, 2])
        assert arrays["c"].shape == (1, 1) and arrays["c"][0, 0] == np.float32(2.5)
    # And our own writer's small elements and narrow storage read back as MATLAB shapes.
    write_mat5(tmp_path / "mine.mat", {"x": a}, storage=np.uint8)
    np.testing.assert_array_equal(read_mat_v5(tmp_path / "mine.mat")["x"], a)


# ----- choosing a source ------------------------------------------------------------------------


def test_parse_data_spec(tmp_path):
    (tmp_path / "list.txt").write_text("")
    assert parse_data_spec("synthetic") == ("synthetic", "")
    assert parse_data_spec("tfds") == ("tfds", "")
    assert parse_data_spec("tfds:/data/tfds") == ("tfds", "/data/tfds")
    assert parse_data_spec(str(tmp_path)) == ("folder", str(tmp_path))
    assert parse_data_spec(str(tmp_path / "list.txt")) == ("manifest", str(tmp_path / "list.txt"))
    assert parse_data_spec("/x/nyu_depth_v2_labeled.mat") == ("nyu_mat", "/x/nyu_depth_v2_labeled.mat")
    with pytest.raises(DataError, match="manifest file does not exist"):
        parse_data_spec(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="--data allows: 'synthetic', 'tfds'"):
        parse_data_spec(str(tmp_path / "no_such_folder"))


def test_open_source_folder_and_manifest_from_config(tmp_path):
    make_pair(tmp_path, "train", "a")
    (tmp_path / "train.txt").write_text("train/rgb/a.png train/depth/a.png\n")
    cfg = defaults()
    with pytest.raises(ConfigError, match="data.root is empty"):
        open_source(cfg.replace(data__source="folder").data, [32, 40])
    folder = open_source(cfg.replace(data__source="folder", data__root=str(tmp_path)).data, [32, 40])
    manifest = open_source(cfg.replace(data__source="manifest", data__root=str(tmp_path / "train.txt")).data, [32, 40])
    np.testing.assert_array_equal(folder.load("train", 0)[1], manifest.load("train", 0)[1])
    # depth_scale from the config reaches the reader.
    scaled = open_source(cfg.replace(data__source="folder", data__root=str(tmp_path), data__depth_scale=2000.0).data, [32, 40])
    np.testing.assert_allclose(scaled.load("train", 0)[1], folder.load("train", 0)[1] / 2, rtol=1e-6)
