"""`kdepth predict`: depth maps, colour pictures and 3D point clouds for image files.

For each input image NAME (written into OUT, keeping the sub-folders of an input folder):

    NAME_depth.png   16-bit PNG, depth in millimetres (0 = no depth), the input image's size
    NAME_color.png   viridis depth picture (near = dark) with a colour bar in metres below it
    NAME.npy         (--npy) float32 depth in metres, the input image's size
    NAME.ply         (--pointcloud) coloured point cloud, binary little-endian PLY

Point clouds: the pinhole back-projection X = (u - cx) Z / fx, Y = (v - cy) Z / fy, Z = depth,
with pixel centres at integer (u, v) (u = column, v = row), in the camera frame x right, y down,
z forward (OpenCV's). Pixels with non-finite or non-positive depth are skipped. Intrinsics are
NYU's Kinect RGB ones (given at 640x480) scaled to each image's size by default; intrinsics
given by the user (`--intrinsics fx,fy,cx,cy`) are taken at the image's own size, or, written
as ``fx,fy,cx,cy@HxW``, at size HxW and scaled to each image like NYU's.

Images are read as 8-bit RGB; greyscale, palette and RGBA images are converted (alpha dropped).
Every image is resized to the model's input size (bilinear, antialiased) and its depth resized
back to the image's size (bilinear); for an image more than `HUGE_FACTOR` times the input size
in a side a line says so, since the depth then has far less detail than the picture. A file that
cannot be read is reported by name and the others are still processed.

An image's outputs are written under temporary names and renamed once all of them are complete
(`_write_outputs`), so an image that fails, or a run stopped half-way, leaves no half-written or
partial set of files that looks like a result.
"""

import dataclasses
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from PIL import Image

from kdepth.errors import DataError, KdepthError

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
HUGE_FACTOR = 4  # an image more than 4x the model's input size (either side) is shrunk first
DEPTH_SCALE = 1000.0  # PNG units per metre: millimetres
MIN_COLOR_WIDTH = 240  # colour pictures are padded to this width so the bar's labels fit
# Outputs are encoded in bands of rows: the encoders work in float64, 8 bytes a pixel, which for
# a 10000x10000 photo would be GBs at once (docs/bad-input.md has the measured peak).
CHUNK_ROWS = 512


@dataclasses.dataclass
class PredictReport:
    """What `predict_paths` did: written files per image, failures with their reasons, notes."""

    out_dir: Path
    written: dict = dataclasses.field(default_factory=dict)  # input path -> [output paths]
    failed: list = dataclasses.field(default_factory=list)  # [(path, reason)]
    notes: list = dataclasses.field(default_factory=list)  # [(path, message)]

    @property
    def ok(self):
        return not self.failed

    @property
    def n_ok(self):
        return len(self.written)

    @property
    def n_failed(self):
        return len(self.failed)

    def format(self):
        lines = [f"predicted {self.n_ok} image(s) into {self.out_dir}"]
        if self.failed:
            lines.append(f"{self.n_failed} image(s) failed:")
            lines.extend(f"  {path}: {reason}" for path, reason in self.failed)
        return "\n".join(lines)


# ---------------------------------------------------------------------------- geometry, files


def parse_intrinsics(text):
    """Parses ``fx,fy,cx,cy`` or ``fx,fy,cx,cy@HxW`` (pixels; HxW the size they hold at).

    Returns:
        ((fx, fy, cx, cy), (H, W) or None).
    """
    body, _, size_text = str(text).partition("@")
    how = "expected fx,fy,cx,cy in pixels (e.g. 518.86,519.47,325.58,253.74) optionally followed by @HxW (e.g. @480x640)"
    try:
        values = tuple(float(v) for v in body.split(","))
    except ValueError:
        raise KdepthError(f"--intrinsics {text!r}: not numbers; {how}.") from None
    if len(values) != 4 or not all(np.isfinite(values)) or values[0] <= 0 or values[1] <= 0:
        raise KdepthError(f"--intrinsics {text!r}: needs 4 finite numbers with fx, fy > 0; {how}.")
    size = None
    if size_text:
        try:
            size = tuple(int(v) for v in size_text.lower().split("x"))
        except ValueError:
            size = ()
        if len(size) != 2 or min(size) < 1:
            raise KdepthError(f"--intrinsics {text!r}: bad size {size_text!r}; {how}.")
    return values, size


def intrinsics_for(size, intrinsics=None):
    """(fx, fy, cx, cy) for an image of size (H, W).

    Args:
        size: (H, W) of the image (and depth map).
        intrinsics: None (NYU's, scaled from 640x480), (fx, fy, cx, cy) at the image's own size,
            or ((fx, fy, cx, cy), (H0, W0)) given at size (H0, W0) and scaled to `size`.
    """
    from kdepth.data.synthetic import NYU_INTRINSICS, NYU_SIZE

    if intrinsics is None:
        # NYU's scaled to the image as `synthetic.scaled_intrinsics` does, for any size (that
        # function refuses images under 8 pixels, which it cannot render; a photo may be 1x1).
        intrinsics = (NYU_INTRINSICS, NYU_SIZE)
    if len(intrinsics) == 2:
        values, at = intrinsics
        if at is None:
            return tuple(float(v) for v in values)
        fx, fy, cx, cy = values
        sx, sy = size[1] / at[1], size[0] / at[0]
        return (fx * sx, fy * sy, cx * sx, cy * sy)
    return tuple(float(v) for v in intrinsics)


def backproject(depth, intrinsics):
    """Back-projects a depth map to camera coordinates.

    Args:
        depth: (H, W) metres; non-finite or <= 0 pixels are skipped.
        intrinsics: (fx, fy, cx, cy) at the depth map's size.

    Returns:
        (points float32 (N, 3) as X, Y, Z, mask bool (H, W) of the pixels kept, row-major order).
    """
    fx, fy, cx, cy = intrinsics
    depth = np.asarray(depth, dtype=np.float64)
    mask = np.isfinite(depth) & (depth > 0)
    v, u = np.nonzero(mask)
    z = depth[v, u]
    points = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=1).astype(np.float32)
    return points, mask


def write_ply(path, points, colors):
    """Writes a binary little-endian PLY: x y z float, red green blue uchar per vertex."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(points) != len(colors):
        raise ValueError(f"write_ply: {len(points)} points but {len(colors)} colours; pass one colour per point.")
    vertex = np.empty(
        len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    )
    vertex["x"], vertex["y"], vertex["z"] = points.T
    vertex["red"], vertex["green"], vertex["blue"] = colors.T
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment kdepth predict: camera frame x right, y down, z forward, metres\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex.tobytes())


def color_picture(depth):
    """Viridis picture of a depth map with a colour bar in metres underneath (uint8 RGB).

    The picture keeps the depth map's size at the top left; the canvas is at least
    `MIN_COLOR_WIDTH` wide so the bar's labels fit.
    """
    from kdepth.visualize import BACKGROUND, colorbar, colorize_depth, depth_range

    depth = np.asarray(depth)
    h, w = depth.shape[:2]
    vmin, vmax = depth_range(depth[i : i + CHUNK_ROWS] for i in range(0, h, CHUNK_ROWS))
    width = max(w, MIN_COLOR_WIDTH)
    bar = colorbar(vmin, vmax, width)
    canvas = np.empty((h + 4 + bar.shape[0], width, 3), np.uint8)
    canvas[:] = np.asarray(BACKGROUND, np.uint8)
    for i in range(0, h, CHUNK_ROWS):
        canvas[i : min(i + CHUNK_ROWS, h), :w] = colorize_depth(depth[i : i + CHUNK_ROWS], vmin, vmax)
    canvas[h + 4:] = bar
    return canvas


# ---------------------------------------------------------------------------------- inputs


def collect_images(inputs):
    """Expands files and folders into [(path, relative output stem)], plus [(path, reason)] problems.

    Folders are searched recursively for .png/.jpg/.jpeg (any case), sorted; their sub-folders are
    kept in the output stem. A file given by name is taken whatever its extension. Files that
    would write the same NAME get their extension appended (x.png -> x_png, x.jpg -> x_jpg), and
    a number if that is not enough (two folders' x.png -> x_png, x_png_2).
    """
    found, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
            if not files:
                problems.append((str(path), f"folder holds no {'/'.join(IMAGE_EXTS)} image"))
            found.extend((p, p.relative_to(path).with_suffix("")) for p in files)
        elif path.is_file():
            found.append((path, Path(path.stem)))
        else:
            problems.append((str(path), "does not exist"))
    stems, seen, used, out = {}, set(), set(), []
    for path, stem in found:
        stems.setdefault(stem, set()).add(path.resolve())
    for path, stem in found:
        if path.resolve() in seen:
            continue  # the same file given twice
        seen.add(path.resolve())
        if len(stems[stem]) > 1:
            stem = stem.with_name(f"{stem.name}_{path.suffix.lstrip('.').lower() or 'noext'}")
        unique, k = stem, 2
        while unique in used:  # e.g. a/x.png and b/x.png given as two folders
            unique, k = stem.with_name(f"{stem.name}_{k}"), k + 1
        used.add(unique)
        out.append((path, unique))
    return out, problems


def _read_image(path):
    """uint8 (H, W, 3) RGB as the photo is shown (EXIF orientation applied), the original PIL
    mode and the EXIF orientation (1 = none); DataError naming the file otherwise."""
    from kdepth.data.sources import apply_orientation, read_rgb_stored

    rgb, orientation = read_rgb_stored(path)  # DataError for unreadable files; converts greyscale / palette / RGBA
    with Image.open(path) as img:
        mode = img.mode
    return apply_orientation(rgb, orientation), mode, orientation


FULL_FRAME_DIAGONAL_MM = 43.267  # 36 x 24 mm: what FocalLengthIn35mmFilm refers to
EXIF_IFD = 0x8769
MM_PER_UNIT = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # FocalPlaneResolutionUnit: inch, cm, mm, um


def exif_intrinsics(path, size):
    """Pinhole intrinsics from a photo's EXIF focal length, or None when it holds none.

    Uses FocalLengthIn35mmFilm (by the diagonal: f_px = f35 * diag_px / 43.27 mm), else
    FocalLength with FocalPlaneXResolution (the sensor's pixels per unit); the principal point
    is the image centre ((W - 1) / 2, (H - 1) / 2). Pixels are square, so the focal length in
    pixels does not depend on the orientation.

    Args:
        path: the image file.
        size: (H, W) of the image as shown (and of its depth map).

    Returns:
        ((fx, fy, cx, cy), a sentence naming the EXIF fields used), or None.
    """
    h, w = size
    try:
        with Image.open(path) as img:
            ifd = img.getexif().get_ifd(EXIF_IFD)
        f35, f_mm = float(ifd.get(0xA405) or 0), float(ifd.get(0x920A) or 0)
        xres, unit = float(ifd.get(0xA20E) or 0), int(ifd.get(0xA210) or 2)
    except Exception:  # a broken EXIF block means no intrinsics, not a failed prediction
        return None
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    if f35 > 0:
        f = f35 * float(np.hypot(w, h)) / FULL_FRAME_DIAGONAL_MM
        return (f, f, *centre), f"EXIF FocalLengthIn35mmFilm {f35:g} mm -> fx = fy = {f:.1f} px"
    if f_mm > 0 and xres > 0 and unit in MM_PER_UNIT:
        f = f_mm * xres / MM_PER_UNIT[unit]
        return (f, f, *centre), f"EXIF FocalLength {f_mm:g} mm x FocalPlaneXResolution -> fx = fy = {f:.1f} px"
    return None


def cloud_intrinsics(path, size, intrinsics=None):
    """The intrinsics a point cloud uses and a sentence saying which: given, from EXIF, or NYU's scaled."""
    if intrinsics is not None:
        return intrinsics_for(size, intrinsics), "intrinsics from --intrinsics"
    found = exif_intrinsics(path, size)
    if found is not None:
        return found[0], f"intrinsics from the photo's {found[1]}"
    return intrinsics_for(size), f"no focal length in EXIF: NYU's intrinsics scaled to {size[0]}x{size[1]}"


def load_model(model, *, input_range="auto", output_scale=1.0, threads=None):
    """A `DepthModel` from a path (anything `kdepth.inference.load_depth_model` reads), or `model` itself."""
    if not isinstance(model, (str, os.PathLike)):
        return model
    from kdepth import inference

    path = Path(model)
    try:
        return inference.load_depth_model(str(path), input_range=input_range, output_scale=output_scale, threads=threads)
    except KdepthError:
        raise
    except Exception as e:  # a foreign or truncated file can raise anything from TF / LiteRT
        raise KdepthError(f"--model {path}: cannot be loaded as a depth model ({type(e).__name__}: {e}).") from e


def predict_depth(model, rgb):
    """Depth (H0, W0) metres for an RGB image of any size, and a note when it is far larger than the model's input.

    `DepthModel.predict` resizes the image to the input size (antialiased, so a large
    shrink does not alias) and the depth back to (H0, W0). An image more than `HUGE_FACTOR`
    times the input size in a side is first box-averaged by an integer factor per axis, in
    uint8 (PIL's `Image.reduce`), to at most twice the input size: the antialiased resize works
    in float32, which for a 10000x10000 photo is four times the bytes of its uint8 pixels.
    """
    h0, w0 = rgb.shape[:2]
    ih, iw = model.input_size
    note = None
    if h0 > HUGE_FACTOR * ih or w0 > HUGE_FACTOR * iw:
        factors = (max(1, w0 // (2 * iw)), max(1, h0 // (2 * ih)))  # PIL order: (x, y)
        small = np.asarray(Image.fromarray(np.ascontiguousarray(rgb, np.uint8)).reduce(factors))
        depth = np.asarray(model.predict(small), dtype=np.float32)
        if depth.shape == small.shape[:2]:
            from kdepth.inference import resize_depth

            depth = resize_depth(depth, (h0, w0))
        note = (
            f"{h0}x{w0} (HxW) is more than {HUGE_FACTOR}x the model's input {ih}x{iw} in a side; resized to "
            f"{ih}x{iw} for the model and the depth resized back to {h0}x{w0}"
        )
    else:
        depth = np.asarray(model.predict(rgb), dtype=np.float32)
    return depth, note


def predict_paths(
    model,
    inputs,
    out_dir,
    *,
    npy=False,
    pointcloud=False,
    intrinsics=None,
    input_range="auto",
    output_scale=1.0,
    threads=None,
    show_progress=False,
    echo=print,
):
    """Predicts depth for image files and folders and writes the outputs for each image.

    Args:
        model: a `DepthModel` (`kdepth.inference`) or a path `load_depth_model` reads: a run or
            stage directory, a .keras file, a SavedModel directory or a .tflite file.
        inputs: image files and folders (searched recursively for .png/.jpg/.jpeg).
        out_dir: output folder (created).
        npy: also write NAME.npy, float32 depth in metres.
        pointcloud: also write NAME.ply (see the module docstring for the convention).
        intrinsics: None (NYU's scaled to each image), (fx, fy, cx, cy) at each image's own size,
            or ((fx, fy, cx, cy), (H, W)) as `parse_intrinsics` returns.
        input_range, output_scale, threads: passed to `load_depth_model` when `model` is a path.
        show_progress: draw a click progress bar when there is more than one image.
        echo: where per-image notes (conversions, resizes, failures) go.

    Returns:
        A `PredictReport`; a bad image is a failure in it, not an exception.

    Raises:
        KdepthError: the model cannot be loaded, or no input names an existing file or folder
            with images.
    """
    import click

    items, problems = collect_images(inputs)
    if not items:
        detail = "; ".join(f"{p}: {r}" for p, r in problems) or "no inputs given"
        raise KdepthError(f"no images to predict ({detail}); pass image files (.png, .jpg) or folders holding them.")
    depth_model = load_model(model, input_range=input_range, output_scale=output_scale, threads=threads)
    if depth_model is not model and getattr(depth_model, "input_range_note", None):
        echo(depth_model.input_range_note)  # loaded here from a path: say which input range
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictReport(out_dir)
    for path, reason in problems:
        report.failed.append((path, reason))
        echo(f"error: {path}: {reason}")

    use_bar = show_progress and len(items) > 1
    bar = (
        click.progressbar(
            items, label=f"predicting {len(items)} images", item_show_func=lambda it: it and it[0].name, file=sys.stderr
        )
        if use_bar
        else nullcontext(items)
    )
    # Under a drawn bar (only on a terminal) a message starts on a new line, not after the bar.
    say = (lambda m: echo("\n" + m)) if use_bar and sys.stderr.isatty() else echo
    with bar as iterator:
        for path, stem in iterator:
            try:
                written = _predict_one(depth_model, path, out_dir / stem, npy, pointcloud, intrinsics, report, say)
            except DataError as e:
                report.failed.append((str(path), e.reason))
                say(f"error: {e}")
                continue
            except Exception as e:  # a model failure on one image must not stop the others
                reason = f"prediction failed ({type(e).__name__}: {e})"
                report.failed.append((str(path), reason))
                say(f"error: {path}: {reason}")
                continue
            report.written[str(path)] = written
    return report


def _predict_one(model, path, base, npy, pointcloud, intrinsics, report, echo):
    rgb, mode, orientation = _read_image(path)
    if mode != "RGB":
        report.notes.append((str(path), f"converted {mode} to RGB"))
        echo(f"{path}: converted PIL mode {mode} to RGB")
    if orientation != 1:
        report.notes.append((str(path), f"EXIF orientation {orientation} applied"))
        echo(f"{path}: EXIF orientation {orientation} applied: outputs are {rgb.shape[0]}x{rgb.shape[1]} (HxW), as the photo is shown")
    depth, note = predict_depth(model, rgb)
    if note:
        report.notes.append((str(path), note))
        echo(f"{path}: {note}")
    if depth.shape != rgb.shape[:2]:
        raise KdepthError(f"the model returned depth of shape {depth.shape} for an image of {rgb.shape[:2]}.")
    base.parent.mkdir(parents=True, exist_ok=True)
    name = base.name

    def write_npy(path):
        with open(path, "wb") as f:  # np.save would append .npy to the temporary name
            np.save(f, depth.astype(np.float32))

    if pointcloud:
        cloud_k, said = cloud_intrinsics(path, depth.shape, intrinsics)
        report.notes.append((str(path), f"point cloud: {said}"))
        echo(f"{path}: point cloud: {said}")

    def write_cloud(path):
        points, mask = backproject(depth, cloud_k)
        write_ply(path, points, rgb[mask])

    writers = [
        (f"{name}_depth.png", lambda path: Image.fromarray(_depth_png16(depth)).save(path, format="PNG")),
        (f"{name}_color.png", lambda path: Image.fromarray(color_picture(depth)).save(path, format="PNG")),
    ]
    if npy:
        writers.append((f"{name}.npy", write_npy))
    if pointcloud:
        writers.append((f"{name}.ply", write_cloud))
    return _write_outputs(base.parent, writers)


def _write_outputs(folder, writers):
    """Runs each (file name, write(path)) into a hidden temporary file, then renames them all.

    If any writer fails (or the run is interrupted) the temporary files are removed and the
    error re-raised: no half-written file and no partial set of outputs is left behind.
    """
    pending = []
    try:
        for name, write in writers:
            tmp = folder / f".{name}.partial"
            pending.append((tmp, folder / name))
            write(tmp)
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in pending:
        os.replace(tmp, final)
    return [final for _, final in pending]


def _depth_png16(depth):
    from kdepth.data.writer import depth_to_png16

    out = np.empty(depth.shape, np.uint16)
    for i in range(0, depth.shape[0], CHUNK_ROWS):
        out[i : i + CHUNK_ROWS] = depth_to_png16(depth[i : i + CHUNK_ROWS], DEPTH_SCALE)
    return out
