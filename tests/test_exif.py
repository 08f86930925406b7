"""Photos as people take them: EXIF orientation applied first, outputs as shown, EXIF focal length."""

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps
from tflite_models import write_models

from kdepth.data.check import check_source
from kdepth.data.sources import FolderSource, apply_orientation, read_pair, read_rgb
from kdepth.predict import exif_intrinsics, predict_paths

STORED = (20, 30)  # H, W as stored; orientation 6 shows it as 30 x 20


def _photo(path, orientation=6, focal35=None, seed=0):
    rgb = np.random.default_rng(seed).integers(0, 256, (*STORED, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    if focal35:
        exif.get_ifd(ExifTags.IFD.Exif)[0xA405] = focal35
    Image.fromarray(rgb).save(path, exif=exif, quality=95)
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_models(tmp_path_factory.mktemp("tflite"))["float"]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_is_pils_exif_transpose(orientation, tmp_path):
    path = _photo(tmp_path / "p.png", orientation)  # PNG: lossless, so the pixels compare exactly
    with Image.open(path) as img:
        want = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        stored = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(apply_orientation(stored, orientation), want)
    np.testing.assert_array_equal(read_rgb(path), want)


def test_predict_writes_outputs_as_the_photo_is_shown_with_exif_intrinsics(model_path, tmp_path):
    photo = _photo(tmp_path / "phone.jpg", 6, focal35=28)
    messages = []
    report = predict_paths(model_path, [photo], tmp_path / "out", npy=True, pointcloud=True, echo=messages.append)
    assert report.ok
    assert np.load(tmp_path / "out" / "phone.npy").shape == (30, 20)
    with Image.open(tmp_path / "out" / "phone_depth.png") as img:
        assert img.size == (20, 30)  # W x H
    text = "\n".join(messages)
    assert "EXIF orientation 6 applied: outputs are 30x20 (HxW)" in text
    f = 28 * np.hypot(20, 30) / 43.267
    assert f"intrinsics from the photo's EXIF FocalLengthIn35mmFilm 28 mm -> fx = fy = {f:.1f} px" in text
    (k, _), = [exif_intrinsics(photo, (30, 20))]
    assert k == pytest.approx((f, f, 9.5, 14.5))
    plain = _photo(tmp_path / "plain.jpg", 1)
    messages.clear()
    predict_paths(model_path, [plain], tmp_path / "out2", pointcloud=True, echo=messages.append)
    assert "no focal length in EXIF: NYU's intrinsics scaled to 20x30" in "\n".join(messages)


def test_the_python_api_reads_a_photo_as_shown(model_path, tmp_path):
    import kdepth

    photo = _photo(tmp_path / "phone.jpg", 8)
    model = kdepth.load(model_path)
    assert model.predict(str(photo)).shape == (30, 20)
    with Image.open(photo) as img:
        assert model.predict(img).shape == (30, 20)


def test_pairs_turn_together_and_data_check_names_oriented_rgb_files(tmp_path):
    root = tmp_path / "data" / "train"
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir(parents=True)
    _photo(root / "rgb" / "a.png", 6)
    _photo(root / "rgb" / "b.png", 1, seed=1)
    depth = (np.arange(STORED[0] * STORED[1]).reshape(STORED) + 1000).astype(np.uint16)
    for name in ("a", "b"):
        Image.fromarray(depth).save(root / "depth" / f"{name}.png")
    rgb, d = read_pair(root / "rgb" / "a.png", root / "depth" / "a.png")
    assert rgb.shape == (30, 20, 3) and d.shape == (30, 20)
    np.testing.assert_allclose(d, np.rot90(depth / 1000.0, k=-1), rtol=1e-6)
    report = check_source(FolderSource(tmp_path / "data"))
    assert [(s, p.endswith("a.png")) for s, p, _ in report.warnings] == [("train", True)]
    assert "EXIF orientation 6" in report.format() and report.ok
