"""kdepth predict: outputs per image at its own size, PNG16 in mm, PLY point clouds, bad input."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kdepth.cli import main
from kdepth.data.synthetic import scaled_intrinsics
from kdepth.errors import KdepthError
from kdepth.predict import HUGE_FACTOR, backproject, color_picture, parse_intrinsics, predict_paths
from kdepth.visualize import colorize_depth, depth_range

PLY_TYPES = {"float": "<f4", "uchar": "u1"}


def read_ply(path):
    """A tiny binary little-endian PLY reader: the vertex element as a numpy structured array."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0"
    count, fields = None, []
    for line in header:
        parts = line.split()
        if parts[:2] == ["element", "vertex"]:
            count = int(parts[2])
        elif parts[0] == "property":
            fields.append((parts[2], PLY_TYPES[parts[1]]))
    vertices = np.frombuffer(data[end:], dtype=np.dtype(fields))
    assert len(vertices) == count  # no trailing or missing bytes
    return vertices


class StubModel:
    """A DepthModel stand-in: `depth_fn(h, w)` gives the depth of an image of that size."""

    kind, path = "stub", "stub"

    def __init__(self, depth_fn, input_size=(16, 16)):
        self.depth_fn, self.input_size = depth_fn, input_size

    def predict(self, rgb):
        return self.depth_fn(*rgb.shape[:2]).astype(np.float32)


def plane(value):
    return StubModel(lambda h, w: np.full((h, w), value))


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture()
def image_file(tmp_path):
    rgb = _rgb(30, 40)
    path = tmp_path / "in" / "room.png"
    path.parent.mkdir()
    Image.fromarray(rgb).save(path)
    return path, rgb


def test_point_cloud_of_a_plane_at_2_m(image_file, tmp_path):
    path, rgb = image_file
    report = predict_paths(plane(2.0), [path], tmp_path / "out", pointcloud=True, echo=lambda m: None)
    assert report.ok and report.n_ok == 1
    v = read_ply(tmp_path / "out" / "room.ply")
    assert len(v) == 30 * 40
    fx, fy, cx, cy = scaled_intrinsics((30, 40))  # NYU's 640x480 intrinsics scaled to 40x30
    np.testing.assert_allclose(v["z"], 2.0)
    # Row-major order: first vertex is pixel (u=0, v=0), last is (u=39, v=29).
    np.testing.assert_allclose([v["x"][0], v["y"][0]], [(0 - cx) * 2 / fx, (0 - cy) * 2 / fy], rtol=1e-6)
    np.testing.assert_allclose([v["x"][-1], v["y"][-1]], [(39 - cx) * 2 / fx, (29 - cy) * 2 / fy], rtol=1e-6)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], axis=1), rgb.reshape(-1, 3))


def test_user_intrinsics_at_the_image_size_or_scaled_from_a_given_size(image_file, tmp_path):
    path, _ = image_file
    given = parse_intrinsics("50,60,20,15")
    predict_paths(plane(2.0), [path], tmp_path / "a", pointcloud=True, intrinsics=given, echo=lambda m: None)
    v = read_ply(tmp_path / "a" / "room.ply")
    np.testing.assert_allclose([v["x"][0], v["y"][-1]], [(0 - 20) * 2 / 50, (29 - 15) * 2 / 60], rtol=1e-6)
    # Given at 60x80 (HxW), the image is 30x40: everything halves.
    scaled = parse_intrinsics("100,120,40,30@60x80")
    predict_paths(plane(2.0), [path], tmp_path / "b", pointcloud=True, intrinsics=scaled, echo=lambda m: None)
    np.testing.assert_allclose(read_ply(tmp_path / "b" / "room.ply")["x"], v["x"], rtol=1e-6)


def test_backproject_skips_holes_and_non_positive_depth():
    depth = np.full((4, 5), 3.0)
    depth[0, 0], depth[1, 2], depth[3, 4] = 0.0, np.nan, -1.0
    points, mask = backproject(depth, (10.0, 10.0, 2.0, 1.5))
    assert len(points) == 17 and mask.sum() == 17 and not mask[0, 0] and not mask[1, 2]
    np.testing.assert_allclose(points[0], [(1 - 2.0) * 3 / 10, (0 - 1.5) * 3 / 10, 3.0])  # pixel (u=1, v=0)


def test_depth_png_is_millimetres_and_npy_metres(image_file, tmp_path):
    path, _ = image_file
    ramp = StubModel(lambda h, w: np.linspace(0.5, 5.0, h * w).reshape(h, w))
    predict_paths(ramp, [path], tmp_path / "out", npy=True, echo=lambda m: None)
    want = np.linspace(0.5, 5.0, 30 * 40).reshape(30, 40).astype(np.float32)
    png = np.asarray(Image.open(tmp_path / "out" / "room_depth.png"))
    assert png.dtype == np.uint16 and png.shape == (30, 40)
    np.testing.assert_allclose(png / 1000.0, want, atol=0.5e-3 + 1e-9)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "room.npy"), want)


def test_color_picture_has_the_depth_at_its_size_and_a_bar_below():
    depth = np.linspace(1.0, 3.0, 12 * 20).reshape(12, 20)
    picture = color_picture(depth)
    assert picture.shape[1] >= 240 and picture.shape[0] > 12 + 12  # canvas wide enough for the bar labels
    np.testing.assert_array_equal(picture[:12, :20], colorize_depth(depth, *depth_range([depth])))


def test_huge_input_is_resized_and_said_so(tmp_path):
    h = HUGE_FACTOR * 16 + 1  # one pixel more than 4x the stub's 16x16 input
    path = tmp_path / "big.png"
    Image.fromarray(_rgb(h, 20)).save(path)
    messages = []
    report = predict_paths(plane(1.5), [path], tmp_path / "out", echo=messages.append)
    assert report.ok
    assert any(str(path) in m and f"{h}x20" in m and "resized" in m for m in messages), messages
    assert np.asarray(Image.open(tmp_path / "out" / "big_depth.png")).shape == (h, 20)


def test_same_name_in_a_folder_gets_the_extension(tmp_path):
    Image.fromarray(_rgb(8, 8)).save(tmp_path / "x.png")
    Image.fromarray(_rgb(8, 8)).save(tmp_path / "x.jpg")
    (tmp_path / "sub").mkdir()
    Image.fromarray(_rgb(8, 8)).save(tmp_path / "sub" / "y.png")
    report = predict_paths(plane(1.0), [tmp_path, tmp_path / "sub", tmp_path / "x.png"], tmp_path / "out", echo=lambda m: None)
    assert report.n_ok == 3  # sub/y.png and x.png given twice are predicted once
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*_depth.png")) == [
        "sub/y_depth.png", "x_jpg_depth.png", "x_png_depth.png"
    ]
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(_rgb(8, 8)).save(other / "x.png")
    report = predict_paths(plane(1.0), [tmp_path / "x.png", other], tmp_path / "out2", echo=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "out2").glob("*_depth.png")) == ["x_png_2_depth.png", "x_png_depth.png"]


def test_intrinsics_parsing():
    assert parse_intrinsics("518.8,519.5,325.6,253.7") == ((518.8, 519.5, 325.6, 253.7), None)
    assert parse_intrinsics("1,2,3,4@480x640") == ((1.0, 2.0, 3.0, 4.0), (480, 640))
    for bad in ("1,2,3", "a,b,c,d", "0,1,2,3", "1,2,3,4@480", "1,2,3,4@ax640"):
        with pytest.raises(KdepthError, match="--intrinsics"):
            parse_intrinsics(bad)


# ------------------------------------------------------------------ the CLI with a real model


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    """A tiny two-scale kdepth network saved as .keras (its outputs vary: random head kernels)."""
    import keras

    from kdepth.models import DepthNetwork

    keras.utils.set_random_seed(0)
    net = DepthNetwork(input_size=(32, 32), scales=2, coarse_hidden=16)
    layer = net.get_layer("scale2_head")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.random.default_rng(0).normal(0, 0.02, kernel.shape).astype("float32"), bias])
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    net.save(path)
    return path


def test_predict_folder_converts_grey_and_rgba_and_reports_a_broken_file(keras_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    sizes = {"good": (40, 50), "grey": (30, 20), "rgba": (24, 36)}
    Image.fromarray(_rgb(40, 50)).save(folder / "good.png")
    Image.fromarray(_rgb(30, 20)[..., 0]).save(folder / "grey.png")  # mode L
    Image.fromarray(np.dstack([_rgb(24, 36), np.full((24, 36), 128, np.uint8)])).save(folder / "rgba.png")
    (folder / "broken.png").write_text("this is not an image\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["predict", "--model", str(keras_model), str(folder), "--out", str(out), "--npy", "--pointcloud"])
    assert result.exit_code == 1, result.output
    assert "broken.png" in result.output and "not an image" in result.output
    assert "predicted 3 image(s)" in result.output and "1 image(s) failed" in result.output
    assert not list(out.glob("broken*"))
    for name, (h, w) in sizes.items():
        assert np.asarray(Image.open(out / f"{name}_depth.png")).shape == (h, w)
        depth = np.load(out / f"{name}.npy")
        assert depth.shape == (h, w) and np.isfinite(depth).all() and (depth > 0).all()
        color = np.asarray(Image.open(out / f"{name}_color.png"))
        np.testing.assert_array_equal(color[:h, :w], colorize_depth(depth, *depth_range([depth])))
        assert len(read_ply(out / f"{name}.ply")) == h * w


def test_missing_or_wrong_model_file_exits_1_naming_it(image_file, tmp_path):
    path, _ = image_file
    result = CliRunner().invoke(main, ["predict", "--model", str(tmp_path / "none.keras"), str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "none.keras" in result.output and "does not exist" in result.output
    fake = tmp_path / "fake.tflite"
    fake.write_text("not a flatbuffer")
    result = CliRunner().invoke(main, ["predict", "--model", str(fake), str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "fake.tflite" in result.output and "Traceback" not in result.output


def test_no_images_is_an_error(keras_model, tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["predict", "--model", str(keras_model), str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no images to predict" in result.output and "empty" in result.output


def test_tflite_with_two_inputs_is_refused_clearly(image_file, tmp_path):
    import keras
    import tensorflow as tf

    a, b = keras.Input((8, 8, 3), name="a"), keras.Input((8, 8, 3), name="b")
    two = keras.Model([a, b], keras.layers.Add()([a, b]))
    two.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    (tmp_path / "two.tflite").write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm")).convert())
    path, _ = image_file
    result = CliRunner().invoke(main, ["predict", "--model", str(tmp_path / "two.tflite"), str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "two.tflite" in result.output and "2 input(s)" in result.output and "Traceback" not in result.output


def test_predict_help_has_an_example():
    result = CliRunner().invoke(main, ["predict", "--help"])
    assert result.exit_code == 0 and "kdepth predict --model" in result.output
