"""`kdepth data check`: every problem listed with its file, stats right, ok only when clean."""

import numpy as np
from PIL import Image

from kdepth.config import defaults
from kdepth.data.check import check_source
from kdepth.data.sources import FolderSource, open_source


def write_pair(root, split, stem, shape=(6, 8), depth_mm=None):
    (root / split / "rgb").mkdir(parents=True, exist_ok=True)
    (root / split / "depth").mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(len(stem)).integers(0, 256, shape + (3,), dtype=np.uint8)
    Image.fromarray(rgb).save(root / split / "rgb" / f"{stem}.png")
    units = np.full(shape, 2000, np.uint16) if depth_mm is None else np.asarray(depth_mm, np.uint16)
    Image.fromarray(units).save(root / split / "depth" / f"{stem}.png")


def good_folder(root):
    write_pair(root, "train", "a", shape=(3, 4), depth_mm=np.array([[1000, 0, 3000, 4000]] * 3))  # 3x4, one hole per row
    write_pair(root, "train", "b", shape=(6, 8))
    write_pair(root, "train", "c", shape=(6, 8))
    write_pair(root, "val", "v", shape=(6, 8))


def test_good_folder_is_ok_with_right_counts_and_stats(tmp_path):
    good_folder(tmp_path)
    report = check_source(FolderSource(tmp_path))
    assert report.ok and report.problems == []
    train, val = report.stats["train"], report.stats["val"]
    assert (train.listed, train.loaded, train.bad) == (3, 3, 0)
    assert (val.listed, val.loaded) == (1, 1)
    assert train.resolutions == {(6, 8): 2, (3, 4): 1}
    assert (train.depth_min, train.depth_max) == (np.float32(1.0), np.float32(4.0))
    np.testing.assert_allclose(train.valid_fraction, (0.75 + 1 + 1) / 3)
    text = report.format()
    assert "no problems found" in text and text.rstrip().endswith("OK")
    assert "6x8 (2/3)" in text and "1.000..4.000" in text and "91.7%" in text


def test_mixed_folder_lists_each_bad_file_and_is_not_ok(tmp_path):
    good_folder(tmp_path)
    root = tmp_path
    write_pair(root, "train", "zeros", depth_mm=np.zeros((6, 8)))
    write_pair(root, "train", "sizes")
    Image.fromarray(np.full((5, 8), 1000, np.uint16)).save(root / "train/depth/sizes.png")
    write_pair(root, "train", "eightbit")
    Image.fromarray(np.full((6, 8), 100, np.uint8)).save(root / "train/depth/eightbit.png")
    write_pair(root, "train", "truncated")
    trunc = root / "train/rgb/truncated.png"
    trunc.write_bytes(trunc.read_bytes()[:50])
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "train/rgb/lonely.png")
    (root / "test/rgb").mkdir(parents=True)  # an empty split

    report = check_source(FolderSource(root), splits=["train", "val", "test", "nosuch"])
    assert not report.ok
    found = {p.path: p.reason for p in report.problems}
    expected = {
        root / "train/depth/zeros.png": "no valid pixel",
        root / "train/rgb/sizes.png": "same size",
        root / "train/depth/eightbit.png": "8-bit",
        root / "train/rgb/truncated.png": "cannot read image",
        root / "train/rgb/lonely.png": "no depth partner",
    }
    for path, words in expected.items():
        assert words in found[str(path)]
    reasons = [p.reason for p in report.problems]
    assert any("split 'test' is empty" in r for r in reasons)
    assert any("split 'nosuch' is unknown" in r for r in reasons)
    assert len(report.problems) == 7
    train = report.stats["train"]
    assert (train.listed, train.loaded, train.bad) == (7, 3, 4)
    text = report.format()
    assert "7 problem(s)" in text and "NOT OK" in text
    for path in expected:
        assert str(path) in text


def test_synthetic_source_checks_clean_with_progress():
    cfg = defaults().replace(data__synthetic_train=2, data__synthetic_val=1, data__synthetic_test=1)
    seen = []
    report = check_source(open_source(cfg.data, [24, 32]), progress=lambda split, i, n: seen.append((split, i, n)))
    assert report.ok
    assert seen == [("train", 0, 2), ("train", 1, 2), ("val", 0, 1), ("test", 0, 1)]
    assert report.stats["test"].resolutions == {(24, 32): 1}
