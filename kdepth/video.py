"""Depth for videos: `kdepth predict clip.mp4` reads frames with PyAV and writes NAME_depth.mp4.

NAME_depth.mp4 shows each RGB frame and its colourised depth side by side (RGB left, depth
right; one colour scale, fixed from the first frame's depth, for the whole video so colours do
not flicker with the scale), H.264 in an MP4 at the input's frame rate. With `png_frames`,
NAME_depth_frames/NNNNNN.png hold each frame's depth as 16-bit millimetres (0 = no depth).

``smooth`` in (0, 1) is an exponential moving average in log depth,
ln s_t = smooth * ln s_{t-1} + (1 - smooth) * ln d_t, so a constant scene is left unchanged and
a relative flicker is damped the same at every distance. `flicker` measures it: the mean over
frames of the mean |ln d_t - ln d_{t-1}|.

Outputs are written under hidden temporary names and renamed only when the whole video is done:
a truncated or unreadable video, one without frames, or a disk that fills up mid-video raises a
`VideoError` and leaves nothing that looks complete. PyAV is the optional dependency `video`
(``pip install kdepth[video]``); it is imported only when a video is predicted.
"""

import dataclasses
import errno
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from kdepth.errors import KdepthError

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")
CODEC = "libx264"


class VideoError(KdepthError):
    """A video cannot be read or its outputs cannot be written; nothing complete-looking is left."""


def is_video(path):
    """True for a file whose suffix is a video container kdepth reads."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _av():
    try:
        import av
    except ImportError:
        raise VideoError(
            "predicting a video needs PyAV, which is not installed: pip install 'kdepth[video]' (or pip install av)."
        ) from None
    return av


def flicker(depths):
    """Mean over consecutive frames of the mean |ln d_t - ln d_{t-1}| (valid pixels > 0); 0 for < 2 frames."""
    diffs = []
    for prev, cur in zip(depths[:-1], depths[1:], strict=True):
        ok = (prev > 0) & (cur > 0)
        if ok.any():
            diffs.append(float(np.mean(np.abs(np.log(cur[ok]) - np.log(prev[ok])))))
    return float(np.mean(diffs)) if diffs else 0.0


class LogSmoother:
    """Exponential moving average of depth in log space (module docstring); smooth = 0 is off."""

    def __init__(self, smooth):
        if not 0.0 <= float(smooth) < 1.0:
            raise KdepthError(f"--smooth received {smooth!r}; allowed: a number in [0, 1), e.g. 0.5 (0 = off).")
        self.smooth, self.state = float(smooth), None

    def __call__(self, depth):
        log_d = np.log(np.maximum(depth, 1e-6))
        if self.state is None or self.smooth == 0.0:
            self.state = log_d
        else:
            self.state = self.smooth * self.state + (1.0 - self.smooth) * log_d
        return np.exp(self.state).astype(np.float32)


@dataclasses.dataclass
class VideoReport:
    """What `predict_video` wrote and measured."""

    path: Path
    frames: int
    seconds: float
    fps_in: float
    video: Path
    png_dir: Path | None
    flicker: float

    def format(self):
        return (
            f"{self.path}: {self.frames} frames -> {self.video} (RGB | depth side by side)"
            + (f" and 16-bit PNGs in {self.png_dir}" if self.png_dir else "")
            + f"; {self.frames / max(self.seconds, 1e-9):.1f} frames/s, flicker {self.flicker:.4f} (mean |ln d_t - ln d_t-1|)"
        )


def read_frames(path):
    """Yields the RGB frames (uint8 (H, W, 3)) of a video; VideoError if unreadable, truncated or empty."""
    av = _av()
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"{path}: cannot be read as a video ({type(e).__name__}: {e}); the file is not a video, or it is corrupt.") from None
    n = 0
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: holds no video stream (only {[s.type for s in container.streams]}).")
        try:
            for frame in container.decode(video=0):
                n += 1
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: the video is truncated or corrupt after {n} frames ({type(e).__name__}: {e}).") from None
    if n == 0:
        raise VideoError(f"{path}: the video has no frames (zero frames decoded); nothing was predicted.")


def _frame_rate(path):
    av = _av()
    try:
        with av.open(str(path)) as c:
            rate = c.streams.video[0].average_rate if c.streams.video else None
    except (av.error.FFmpegError, OSError):
        return 25.0
    return float(rate) if rate else 25.0


class _Writer:
    """Writes the side-by-side MP4 (and PNG frames) under temporary names; `commit` renames them."""

    def __init__(self, out_dir, name, fps, png_frames):
        av = _av()
        self.video = out_dir / f"{name}_depth.mp4"
        self.png_dir = out_dir / f"{name}_depth_frames" if png_frames else None
        self._tmp_video = out_dir / f".{name}_depth.mp4.partial"
        self._tmp_png = out_dir / f".{name}_depth_frames.partial" if png_frames else None
        if self._tmp_png:
            self._tmp_png.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self._tmp_video), mode="w", format="mp4")
        self._fps, self._stream, self._range, self.count = fps, None, None, 0

    def add(self, rgb, depth):
        from kdepth.data.writer import depth_to_png16
        from kdepth.visualize import colorize_depth, depth_range

        if self._range is None:
            self._range = depth_range([depth])
        side = np.concatenate([rgb, colorize_depth(depth, *self._range)], axis=1)
        side = side[: side.shape[0] // 2 * 2, : side.shape[1] // 2 * 2]  # H.264 4:2:0 needs even sides
        if self._stream is None:
            self._stream = self._container.add_stream(CODEC, rate=round(self._fps))
            self._stream.height, self._stream.width = side.shape[:2]
            self._stream.pix_fmt = "yuv420p"
        frame = _av().VideoFrame.from_ndarray(np.ascontiguousarray(side), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        if self._tmp_png is not None:
            Image.fromarray(depth_to_png16(depth)).save(self._tmp_png / f"{self.count:06d}.png")
        self.count += 1

    def commit(self):
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._tmp_video.replace(self.video)
        if self._tmp_png is not None:
            if self.png_dir.exists():
                shutil.rmtree(self.png_dir)
            self._tmp_png.replace(self.png_dir)

    def abort(self):
        try:
            self._container.close()
        except Exception:  # closing a half-written container may fail too; the file goes anyway
            pass
        self._tmp_video.unlink(missing_ok=True)
        if self._tmp_png is not None:
            shutil.rmtree(self._tmp_png, ignore_errors=True)


def predict_video(model, path, out_dir, *, png_frames=False, smooth=0.0, echo=print):
    """Predicts depth for every frame of a video (module docstring: outputs, smoothing, failures).

    Args:
        model: a `kdepth.inference.DepthModel`.
        path: the video file.
        out_dir: folder for NAME_depth.mp4 (and NAME_depth_frames/).
        png_frames: also write 16-bit PNG depth frames (millimetres).
        smooth: temporal smoothing in log depth, in [0, 1) (0 = off).
        echo: where the progress line goes.

    Returns:
        A `VideoReport`.

    Raises:
        VideoError: unreadable, truncated or empty video, PyAV missing, or the disk is full.
    """
    path, out_dir = Path(path), Path(out_dir)
    smoother = LogSmoother(smooth)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out_dir, path.stem, _frame_rate(path), png_frames)
    previous, diffs, start = None, [], time.perf_counter()
    try:
        for rgb in read_frames(path):
            depth = smoother(model.predict(rgb))
            if previous is not None:
                diffs.append(flicker([previous, depth]))
            writer.add(rgb, depth)
            previous = depth
        writer.commit()
    except OSError as e:
        writer.abort()
        if e.errno == errno.ENOSPC:
            raise VideoError(f"{out_dir}: the disk is full after {writer.count} frames of {path}; removed the partial output. Free space and run again.") from None
        raise VideoError(f"{path}: writing the outputs in {out_dir} failed ({type(e).__name__}: {e}); removed the partial output.") from None
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - start
    report = VideoReport(path, writer.count, seconds, _frame_rate(path), writer.video, writer.png_dir,
                         float(np.mean(diffs)) if diffs else 0.0)
    echo(report.format())
    return report
