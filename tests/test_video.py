"""Videos: NAME_depth.mp4 side by side, 16-bit PNG frames, log-depth smoothing, named failures."""

import errno

import numpy as np
import pytest
from PIL import Image
from tflite_models import write_models

from kdepth.data.synthetic import render_trajectory_frame
from kdepth.errors import KdepthError
from kdepth.inference import load_depth_model
from kdepth.video import LogSmoother, VideoError, flicker, predict_video, read_frames

av = pytest.importorskip("av")
SIZE = (32, 48)


def _write_video(path, frames, fps=10):
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_depth_model(write_models(tmp_path_factory.mktemp("tflite"))["float"])


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = [render_trajectory_frame(3, i, SIZE)[0] for i in range(8)]
    return _write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames)


def test_trajectory_is_a_pure_function_of_seed_and_index_and_moves_slowly():
    a, da = render_trajectory_frame(3, 5, SIZE)
    b, db = render_trajectory_frame(3, 5, SIZE)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(da, db)
    _, dn = render_trajectory_frame(3, 6, SIZE)
    _, far = render_trajectory_frame(3, 60, SIZE)
    step, big = np.mean(np.abs(np.log(dn) - np.log(da))), np.mean(np.abs(np.log(far) - np.log(da)))
    assert 0 < step < big  # neighbours differ a little, distant frames more


def test_predict_video_writes_side_by_side_mp4_and_png_frames(model, clip, tmp_path):
    lines = []
    report = predict_video(model, clip, tmp_path / "out", png_frames=True, echo=lines.append)
    assert report.frames == 8 and report.video == tmp_path / "out" / "clip_depth.mp4"
    decoded = list(read_frames(report.video))
    assert len(decoded) == 8 and decoded[0].shape == (32, 96, 3)  # RGB | depth
    pngs = sorted(report.png_dir.glob("*.png"))
    assert len(pngs) == 8
    with Image.open(pngs[0]) as img:
        assert img.mode.startswith("I;16") and img.size == (48, 32)
    assert "frames/s" in lines[0] and "RGB | depth side by side" in lines[0]
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_smoothing_in_log_depth_lowers_flicker(model, clip, tmp_path):
    raw = predict_video(model, clip, tmp_path / "a", echo=lambda *_: None).flicker
    smoothed = predict_video(model, clip, tmp_path / "b", smooth=0.7, echo=lambda *_: None).flicker
    assert 0 < smoothed < raw
    constant = np.full((4, 4), 2.5, np.float32)
    s = LogSmoother(0.9)
    for _ in range(3):
        np.testing.assert_allclose(s(constant), constant, rtol=1e-6)
    assert flicker([constant, constant * np.e]) == pytest.approx(1.0)
    with pytest.raises(KdepthError, match="--smooth received 1.0"):
        LogSmoother(1.0)


def test_unreadable_truncated_and_empty_videos_are_named_and_leave_nothing(model, clip, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    for path, match in ((garbage, "cannot be read as a video"), (truncated, "truncated|cannot be read|no frames"),
                        (empty, "cannot be read as a video|no frames")):
        with pytest.raises(VideoError, match=match):
            predict_video(model, path, out, png_frames=True, echo=lambda *_: None)
    assert not list(out.iterdir())


def test_a_full_disk_mid_video_is_named_and_leaves_no_partial_output(model, clip, tmp_path, monkeypatch):
    from kdepth import video

    original = video._Writer.add

    def add(self, rgb, depth):
        if self.count == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, rgb, depth)

    monkeypatch.setattr(video._Writer, "add", add)
    with pytest.raises(VideoError, match="the disk is full after 3 frames"):
        predict_video(model, clip, tmp_path / "out", png_frames=True, echo=lambda *_: None)
    assert not list((tmp_path / "out").iterdir())


def test_kdepth_predict_on_a_video(model, clip, tmp_path):
    from click.testing import CliRunner

    from kdepth.cli import main

    result = CliRunner().invoke(main, ["predict", "--model", model.path, str(clip), "--out", str(tmp_path / "o"), "--smooth", "0.5"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "clip_depth.mp4").is_file() and "8 frames" in result.output
