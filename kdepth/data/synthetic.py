"""Procedurally rendered indoor rooms: kdepth's own RGB-D source.

Each sample is a box room (floor, four walls, ceiling) with a few pieces of box-shaped furniture
standing on the floor, seen through NYU-like intrinsics from a random camera pose inside the room.
The image is rendered by vectorised numpy ray casting: rays against the room box from the inside
and against each furniture box from the outside, keeping the nearest hit per pixel.

What makes it learnable rather than a colour code: colour never depends on depth. Textures are
functions of surface coordinates in metres (so their image scale shrinks with distance), shading
is Lambertian from lights placed in the room (it depends on the light's position, not the
camera's), floor shadows and contact darkening ground the furniture, and the remaining cues are
perspective and occlusion, as in a real photograph.

Conventions:
- World: x and y horizontal, z up, metres; the room spans [0, lx] x [0, ly] x [0, lz].
- Camera: OpenCV axes (x right, y down, z forward). A pixel (row v, column u) looks along
  ((u - cx) / fx, (v - cy) / fy, 1) in camera coordinates: pixel centres sit on integer
  coordinates, as in the NYU calibration.
- Depth is z-depth (distance along the optical axis), not ray length. Rays are left
  unnormalised with a forward component of 1, so the ray parameter t of a hit *is* its z-depth.

A sample is a pure function of (seed, index, size): the scene comes from
``np.random.default_rng([seed, index])`` (independent of size, so the same index renders the same
room at any size) and the per-pixel sensor noise from ``np.random.default_rng([seed, index, 1])``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

NYU_INTRINSICS = (518.8579, 519.4696, 325.5824, 253.7362)  # fx, fy, cx, cy at 640x480
NYU_SIZE = (480, 640)  # (H, W) at which NYU_INTRINSICS hold

MIN_DEPTH = 0.3  # metres; nearer pixels are holes (holes=True) or clipped (holes=False)
MAX_DEPTH = 10.0  # metres; farther pixels likewise

MATERIAL_KINDS = ("plain", "wood", "tiles", "checker", "noise", "stripes")

_NOISE_TILE = 64  # side of the per-sample value-noise lattice (texels wrap around)


# --------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    """A procedural surface texture, evaluated in surface coordinates (metres).

    Args:
        kind: one of ``MATERIAL_KINDS``.
        color: main sRGB colour, components in [0, 1].
        color2: second colour (grain, grout, checker, stripe or noise colour).
        scale: texture period in metres (plank width, tile or stripe size, noise feature size).
        swap: exchange the two surface coordinates (turns planks and stripes by 90 degrees).
        emissive: shown as is, without shading (e.g. a window).
    """

    kind: str = "plain"
    color: tuple[float, float, float] = (0.8, 0.8, 0.8)
    color2: tuple[float, float, float] = (0.6, 0.6, 0.6)
    scale: float = 0.5
    swap: bool = False
    emissive: bool = False

    def __post_init__(self):
        if self.kind not in MATERIAL_KINDS:
            raise ValueError(f"Material kind {self.kind!r} is unknown; allowed: {MATERIAL_KINDS}.")
        if not self.scale > 0:
            raise ValueError(f"Material scale must be > 0 metres, got {self.scale!r}.")


@dataclass(frozen=True)
class Box:
    """A furniture box: a rectangle footprint rotated by ``yaw`` about z, spanning [z0, z1].

    Args:
        center: (x, y) of the footprint centre in metres.
        half: (hx, hy) half extents of the footprint along the box's own x and y axes.
        z0: bottom height (0 for a box on the floor; > 0 for e.g. a table top on its legs).
        z1: top height.
        yaw: rotation about the vertical axis in radians.
        material: its surface texture.
        piece: which piece of furniture it belongs to (a table is a top and four legs).
    """

    center: tuple[float, float]
    half: tuple[float, float]
    z0: float
    z1: float
    yaw: float = 0.0
    material: Material = field(default_factory=Material)
    piece: int = 0

    def corners(self) -> np.ndarray:
        """The 8 corners in world coordinates, shape (8, 3)."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        out = []
        for sx in (-1, 1):
            for sy in (-1, 1):
                lx, ly = sx * self.half[0], sy * self.half[1]
                x = self.center[0] + c * lx - s * ly
                y = self.center[1] + s * lx + c * ly
                out.append((x, y, self.z0))
                out.append((x, y, self.z1))
        return np.array(out, dtype=np.float64)


@dataclass(frozen=True)
class Decal:
    """A flat rectangle painted on a room surface (door, window, picture, rug).

    Args:
        face: room face index (0: x=0 wall, 1: x=lx wall, 2: y=0 wall, 3: y=ly wall, 4: floor,
            5: ceiling).
        rect: (u0, u1, v0, v1) in that face's surface coordinates (walls: (along-wall, height);
            floor and ceiling: (x, y)).
        material: its texture.
    """

    face: int
    rect: tuple[float, float, float, float]
    material: Material


@dataclass(frozen=True)
class Light:
    """A point light (``position``) or a directional light (``direction`` towards the light).

    Irradiance from a point light at distance r is ``intensity / (1 + (r / falloff) ** 2)``.
    """

    intensity: float
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    position: tuple[float, float, float] | None = None
    direction: tuple[float, float, float] | None = None
    falloff: float = 4.0


@dataclass(frozen=True)
class Camera:
    """A camera pose: position (metres), heading ``yaw`` (radians, 0 looks along +x, pi/2 along
    +y), ``pitch`` (positive looks up) and ``roll`` (about the optical axis)."""

    position: tuple[float, float, float]
    yaw: float
    pitch: float = 0.0
    roll: float = 0.0

    def rotation(self) -> np.ndarray:
        """Camera-to-world rotation (3, 3); its columns are the camera x, y, z axes in world."""
        cy_, sy_ = math.cos(self.yaw), math.sin(self.yaw)
        base = np.array(
            [[sy_, 0.0, cy_], [-cy_, 0.0, sy_], [0.0, -1.0, 0.0]]
        )  # columns: right, down, forward for a level camera
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
        cr, sr = math.cos(self.roll), math.sin(self.roll)
        rz = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
        return base @ rx @ rz


@dataclass(frozen=True)
class Holes:
    """Kinect-like invalid pixels.

    Args:
        max_range: pixels farther than this (metres) are holes (capped at ``MAX_DEPTH``).
        edge_width: width of the shadow band behind depth discontinuities, as a fraction of W.
        blobs: dropout ellipses as (centre u, centre v, radius u, radius v), fractions of (W, H).
        grazing_cos: pixels seen at |cos(incidence)| below this are holes.
    """

    max_range: float = MAX_DEPTH
    edge_width: float = 0.006
    blobs: tuple[tuple[float, float, float, float], ...] = ()
    grazing_cos: float = 0.05


@dataclass(frozen=True)
class Scene:
    """Everything that defines one rendered sample apart from the image size.

    Args:
        room: (lx, ly, lz) room extents in metres.
        camera: the camera pose (must be inside the room and outside every box).
        boxes: furniture boxes.
        floor, wall, ceiling: room materials; ``walls`` optionally overrides per wall (4 entries).
        skirting: material of the skirting board along the bottom of the walls.
        skirting_height: its height in metres (0 for none).
        decals: doors, windows, pictures, rugs.
        lights: the lights; ``ambient`` is the light that reaches every surface.
        noise_seed: seeds the value-noise lattice shared by all noisy textures.
        exposure: linear gain before the sRGB curve.
        sensor_noise: standard deviation of the additive image noise, in [0, 1] units.
        holes: Kinect-like hole parameters (used when rendering with holes).
    """

    room: tuple[float, float, float]
    camera: Camera
    boxes: tuple[Box, ...] = ()
    floor: Material = field(default_factory=lambda: Material("plain", (0.55, 0.45, 0.35)))
    wall: Material = field(default_factory=lambda: Material("plain", (0.85, 0.85, 0.8)))
    ceiling: Material = field(default_factory=lambda: Material("plain", (0.92, 0.92, 0.92)))
    walls: tuple[Material, ...] | None = None
    skirting: Material = field(default_factory=lambda: Material("plain", (0.95, 0.95, 0.95)))
    skirting_height: float = 0.0
    decals: tuple[Decal, ...] = ()
    lights: tuple[Light, ...] = (Light(0.8, position=(1.0, 1.0, 2.3)),)
    ambient: float = 0.35
    noise_seed: int = 0
    exposure: float = 1.0
    sensor_noise: float = 0.0
    holes: Holes = field(default_factory=Holes)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _check_size(size) -> tuple[int, int]:
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(
            f"size must be (H, W), two positive ints of at least 8, got {size!r}; "
            "pass e.g. (240, 320)."
        ) from None
    for name, value in (("H", h), ("W", w)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(
                f"size {name} must be an int, got {value!r} of type {type(value).__name__} in "
                f"size={size!r}; pass e.g. (240, 320)."
            )
        if value < 8:
            raise ValueError(
                f"size {name} must be at least 8 pixels, got {int(value)} in size={size!r}; "
                "render at (8, 8) or larger."
            )
    return int(h), int(w)


def _check_nonneg_int(name, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(
            f"{name} must be a non-negative int, got {value!r} of type {type(value).__name__}."
        )
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {int(value)}; use {name} >= 0.")
    return int(value)


def scaled_intrinsics(size) -> tuple[float, float, float, float]:
    """NYU Kinect RGB intrinsics scaled from 640x480 to ``size`` = (H, W).

    fx and cx scale with W / 640, fy and cy with H / 480 (a plain resize of the NYU frame).
    Returns (fx, fy, cx, cy) in pixels.
    """
    h, w = _check_size(size)
    fx, fy, cx, cy = NYU_INTRINSICS
    sx, sy = w / NYU_SIZE[1], h / NYU_SIZE[0]
    return (fx * sx, fy * sy, cx * sx, cy * sy)


def render_sample(
    seed: int, index: int, size: tuple[int, int], holes: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Renders synthetic sample ``index`` of the stream ``seed`` at ``size`` = (H, W).

    Returns (rgb uint8 (H, W, 3), depth float32 (H, W) z-depth in metres, 0.0 where a hole).
    With ``holes=True``, pixels at depth discontinuities (background side), beyond the sample's
    max range, outside [MIN_DEPTH, MAX_DEPTH], at grazing incidence or in a few dropout blobs are
    holes. With ``holes=False`` there are none: every pixel is finite, and the rare pixel outside
    [MIN_DEPTH, MAX_DEPTH] (a far room corner, furniture right next to the camera) is clipped
    into that range.
    """
    seed = _check_nonneg_int("seed", seed)
    index = _check_nonneg_int("index", index)
    size = _check_size(size)
    scene = sample_scene(np.random.default_rng([seed, index]))
    return render_scene(scene, size, holes=holes, rng=np.random.default_rng([seed, index, 1]))


# --------------------------------------------------------------------------------------------
# Scene sampling
# --------------------------------------------------------------------------------------------


def _hsv(h, s, v) -> tuple[float, float, float]:
    """HSV (all in [0, 1]) to an RGB tuple."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _jitter(rng, color, amount=0.06):
    return tuple(float(np.clip(c + rng.uniform(-amount, amount), 0.02, 0.98)) for c in color)


_WOODS = ((0.72, 0.53, 0.33), (0.45, 0.29, 0.17), (0.85, 0.68, 0.47), (0.60, 0.57, 0.53),
          (0.56, 0.36, 0.22))


def _wood(rng, scale_range=(0.08, 0.22)) -> Material:
    base = _jitter(rng, _WOODS[rng.integers(len(_WOODS))])
    dark = tuple(c * rng.uniform(0.6, 0.8) for c in base)
    return Material("wood", base, dark, rng.uniform(*scale_range), bool(rng.integers(2)))


def _paint(rng, sat=(0.0, 0.35), val=(0.6, 0.95)) -> Material:
    c = _hsv(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return Material("plain", c, c, rng.uniform(0.5, 2.0))


def _noisy(rng, sat=(0.05, 0.5), val=(0.35, 0.85), scale=(0.03, 0.3)) -> Material:
    h = rng.random()
    c1 = _hsv(h, rng.uniform(*sat), rng.uniform(*val))
    c2 = _hsv((h + rng.uniform(-0.08, 0.08)) % 1.0, rng.uniform(*sat), rng.uniform(*val))
    return Material("noise", c1, c2, rng.uniform(*scale))


def _two_tone(rng, kind, scale) -> Material:
    h = rng.random()
    c1 = _hsv(h, rng.uniform(0.0, 0.4), rng.uniform(0.55, 0.95))
    c2 = _hsv((h + rng.uniform(-0.15, 0.15)) % 1.0, rng.uniform(0.0, 0.5), rng.uniform(0.2, 0.8))
    return Material(kind, c1, c2, rng.uniform(*scale), bool(rng.integers(2)))


def _floor_material(rng) -> Material:
    r = rng.random()
    if r < 0.4:
        return _wood(rng)
    if r < 0.65:
        m = _two_tone(rng, "tiles", (0.25, 0.6))
        grout = _jitter(rng, (0.75, 0.75, 0.72), 0.1)
        return Material("tiles", m.color, grout, m.scale, m.swap)
    if r < 0.75:
        return _two_tone(rng, "checker", (0.25, 0.6))
    return _noisy(rng, sat=(0.05, 0.45), val=(0.3, 0.75), scale=(0.02, 0.12))  # carpet


def _wall_material(rng) -> Material:
    r = rng.random()
    if r < 0.55:
        return _paint(rng)
    if r < 0.75:
        return _noisy(rng, sat=(0.0, 0.25), val=(0.6, 0.92), scale=(0.1, 0.6))  # plaster
    if r < 0.9:
        return _two_tone(rng, "stripes", (0.05, 0.3))  # wallpaper
    m = _two_tone(rng, "tiles", (0.1, 0.3))
    return Material("tiles", m.color, _jitter(rng, (0.8, 0.8, 0.78), 0.08), m.scale, m.swap)


def _furniture_material(rng, soft=False) -> Material:
    r = rng.random()
    if soft:  # beds and sofas: fabric, sometimes striped
        if r < 0.75:
            return _noisy(rng, sat=(0.1, 0.6), val=(0.3, 0.85), scale=(0.02, 0.15))
        return _two_tone(rng, "stripes", (0.05, 0.25))
    if r < 0.55:
        return _wood(rng, (0.05, 0.15))
    if r < 0.85:
        return _paint(rng, sat=(0.0, 0.7), val=(0.25, 0.95))
    return _noisy(rng, sat=(0.0, 0.4), val=(0.2, 0.7), scale=(0.02, 0.1))


def _piece(rng, kind):
    """One piece of furniture in its own frame: footprint [-w/2, w/2] x [-d/2, d/2], back at
    local -y. Returns (w, d, list of (cx, cy, hx, hy, z0, z1, material))."""
    u = rng.uniform
    if kind == "cabinet":
        w, d, h = u(0.4, 1.4), u(0.35, 0.6), u(0.5, 2.0)
        return w, d, [(0, 0, w / 2, d / 2, 0.0, h, _furniture_material(rng))]
    if kind == "table":
        w, d, h = u(0.7, 1.8), u(0.6, 1.0), u(0.68, 0.78)
        top, leg = u(0.03, 0.06), u(0.04, 0.08) / 2
        mat = _furniture_material(rng)
        legs = [(sx * (w / 2 - leg - 0.03), sy * (d / 2 - leg - 0.03), leg, leg, 0.0, h - top, mat)
                for sx in (-1, 1) for sy in (-1, 1)]
        return w, d, [(0, 0, w / 2, d / 2, h - top, h, mat)] + legs
    if kind == "bed":
        w, d, h = u(0.9, 1.9), u(1.9, 2.15), u(0.35, 0.6)
        head_d, head_h = u(0.05, 0.1), u(0.8, 1.2)
        base = _furniture_material(rng, soft=True)
        return w, d, [
            (0, head_d / 2, w / 2, (d - head_d) / 2, 0.0, h, base),
            (0, -d / 2 + head_d / 2, w / 2, head_d / 2, 0.0, head_h, _furniture_material(rng)),
        ]
    if kind == "sofa":
        w, d = u(1.4, 2.4), u(0.8, 1.0)
        seat_h, back_h, back_d = u(0.38, 0.48), u(0.75, 0.95), u(0.15, 0.25)
        arm_w, arm_h = u(0.12, 0.22), u(0.55, 0.68)
        mat = _furniture_material(rng, soft=True)
        inner = w / 2 - arm_w
        return w, d, [
            (0, back_d / 2, inner, (d - back_d) / 2, 0.0, seat_h, mat),
            (0, -d / 2 + back_d / 2, inner, back_d / 2, 0.0, back_h, mat),
            (-w / 2 + arm_w / 2, 0, arm_w / 2, d / 2, 0.0, arm_h, mat),
            (w / 2 - arm_w / 2, 0, arm_w / 2, d / 2, 0.0, arm_h, mat),
        ]
    if kind == "chair":
        w = u(0.4, 0.55)
        seat_h, back_h, back_d = u(0.42, 0.48), u(0.8, 1.0), u(0.04, 0.08)
        mat = _furniture_material(rng)
        return w, w, [
            (0, 0, w / 2, w / 2, 0.0, seat_h, mat),
            (0, -w / 2 + back_d / 2, w / 2, back_d / 2, seat_h, back_h, mat),
        ]
    # ottoman / crate / box
    w, d, h = u(0.35, 0.8), u(0.35, 0.8), u(0.3, 0.6)
    return w, d, [(0, 0, w / 2, d / 2, 0.0, h, _furniture_material(rng))]


_KINDS = ("cabinet", "table", "bed", "sofa", "chair", "box")
_KIND_P = (0.28, 0.2, 0.1, 0.14, 0.14, 0.14)
_AGAINST_WALL_P = {"cabinet": 0.85, "bed": 0.8, "sofa": 0.7, "table": 0.3, "chair": 0.2, "box": 0.4}
_CAMERA_CLEARANCE = 0.45  # metres between the camera and any furniture footprint
_WALL_CLEARANCE = 0.5  # metres between the camera and any wall


def _place_furniture(rng, room, n_pieces, boxes, footprints, kind=None):
    """Tries to place ``n_pieces`` more pieces (of random kinds unless ``kind`` is given) without
    overlap, appending their boxes to ``boxes`` and the world AABB (x0, x1, y0, y1) of each
    piece's footprint to ``footprints``. A piece that fits nowhere in 25 tries is skipped."""
    lx, ly, _ = room
    for _ in range(n_pieces):
        kind_i = kind or _KINDS[rng.choice(len(_KINDS), p=_KIND_P)]
        w, d, parts = _piece(rng, kind_i)
        against = rng.random() < _AGAINST_WALL_P[kind_i]
        free_yaw = rng.uniform(0, 2 * math.pi) if rng.random() < 0.5 else None
        for _try in range(25):
            if against:
                wall = int(rng.integers(4))
                # yaw turns local +y (the front) to face into the room; the back touches the wall
                yaw = (-math.pi / 2, math.pi / 2, 0.0, math.pi)[wall]
                along = rng.random()
                if wall < 2:
                    x = d / 2 + 0.01 if wall == 0 else lx - d / 2 - 0.01
                    y = w / 2 + 0.02 + along * max(ly - w - 0.04, 0.0)
                else:
                    y = d / 2 + 0.01 if wall == 2 else ly - d / 2 - 0.01
                    x = w / 2 + 0.02 + along * max(lx - w - 0.04, 0.0)
            else:
                yaw = free_yaw if free_yaw is not None else float(rng.integers(4)) * math.pi / 2
                x, y = rng.uniform(0, lx), rng.uniform(0, ly)
            c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
            ex, ey = c * w / 2 + s * d / 2, s * w / 2 + c * d / 2
            fp = (x - ex, x + ex, y - ey, y + ey)
            if fp[0] < 0.005 or fp[1] > lx - 0.005 or fp[2] < 0.005 or fp[3] > ly - 0.005:
                continue
            gap = 0.05
            if any(fp[0] < o[1] + gap and o[0] < fp[1] + gap and fp[2] < o[3] + gap
                   and o[2] < fp[3] + gap for o in footprints):
                continue
            cy_, sy_ = math.cos(yaw), math.sin(yaw)
            for px, py, hx, hy, z0, z1, mat in parts:
                wx, wy = x + cy_ * px - sy_ * py, y + sy_ * px + cy_ * py
                boxes.append(Box((wx, wy), (hx, hy), z0, z1, yaw, mat, len(footprints)))
            footprints.append(fp)
            break


def _aabb_distance(x, y, fp):
    dx = max(fp[0] - x, 0.0, x - fp[1])
    dy = max(fp[2] - y, 0.0, y - fp[3])
    return math.hypot(dx, dy)


def _camera_spot(rng, room, footprints, tries=200):
    """A random (x, y) at least _WALL_CLEARANCE from the walls and _CAMERA_CLEARANCE from every
    footprint, or None if ``tries`` draws find none."""
    lx, ly, _ = room
    for _ in range(tries):
        x = rng.uniform(_WALL_CLEARANCE, lx - _WALL_CLEARANCE)
        y = rng.uniform(_WALL_CLEARANCE, ly - _WALL_CLEARANCE)
        if all(_aabb_distance(x, y, fp) >= _CAMERA_CLEARANCE for fp in footprints):
            return (x, y)
    return None


def _furniture_in_view(footprints, pos, yaw, half_fov=0.49):
    """How many pieces have their footprint centre within +-half_fov radians (28 degrees, a bit
    less than the NYU half field of view) of the heading, at least 0.8 m away."""
    count = 0
    for fp in footprints:
        vx, vy = 0.5 * (fp[0] + fp[1]) - pos[0], 0.5 * (fp[2] + fp[3]) - pos[1]
        off = (math.atan2(vy, vx) - yaw + math.pi) % (2 * math.pi) - math.pi
        count += abs(off) < half_fov and math.hypot(vx, vy) > 0.8
    return count


def _forward_clearance(room, x, y, yaw):
    """Horizontal distance from (x, y) to the wall straight ahead along heading ``yaw``."""
    lx, ly, _ = room
    c, s = math.cos(yaw), math.sin(yaw)
    tx = (lx - x) / c if c > 1e-9 else (-x / c if c < -1e-9 else math.inf)
    ty = (ly - y) / s if s > 1e-9 else (-y / s if s < -1e-9 else math.inf)
    return min(tx, ty)


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draws a random room, furniture, materials, lights, camera pose and hole parameters.

    Rooms are 3-8 m per side and 2.4-3.2 m high. The camera is 1.0-1.8 m high, at least 0.5 m
    from every wall and 0.45 m from every piece of furniture; its heading is uniform, but of up
    to 12 uniform headings the one with the most furniture in view is kept (ties: at least 1.8 m
    of room ahead, then the most) so that few frames are a blank wall. Pitch is -15..+5 degrees
    (slightly down on average, as hand-held), roll +-4.
    """
    # The draws happen in this order; changing it changes every sample of every seed.
    u = rng.uniform
    room = (u(3.0, 8.0), u(3.0, 8.0), u(2.4, 3.2))
    boxes, footprints, pos = _sample_layout(rng, room)
    camera = _sample_camera(rng, room, footprints, pos)
    surfaces = _sample_room_materials(rng)
    decals = _sample_decals(rng, room)
    lights = _sample_lights(rng, room)
    holes = _sample_holes(rng)
    return Scene(
        room=room, camera=camera, boxes=tuple(boxes), **surfaces, decals=decals,
        lights=lights, ambient=u(0.2, 0.45), noise_seed=int(rng.integers(2**31)),
        exposure=u(0.8, 1.25), sensor_noise=u(0.0, 0.015), holes=holes,
    )


def _sample_layout(rng, room):
    """2-6 pieces of furniture and a camera spot clear of them: (boxes, footprints, (x, y)).

    A layout that leaves no camera spot is redrawn (up to 5 times), after which pieces are
    dropped from the last layout until one appears.
    """
    n_pieces = int(rng.integers(2, 7))
    for _attempt in range(5):
        boxes, footprints = [], []
        _place_furniture(rng, room, n_pieces, boxes, footprints)
        for _ in range(10):  # a crowded draw: top up with small pieces to at least 2
            if len(footprints) >= 2:
                break
            _place_furniture(rng, room, 1, boxes, footprints, kind="box")
        pos = _camera_spot(rng, room, footprints)
        if pos is not None:
            break
    while pos is None:
        footprints.pop()
        boxes = [b for b in boxes if b.piece < len(footprints)]
        pos = _camera_spot(rng, room, footprints)
    return boxes, footprints, pos


def _sample_camera(rng, room, footprints, pos) -> Camera:
    """Height, heading, pitch and roll of a camera standing at ``pos`` = (x, y)."""
    u = rng.uniform
    cam_z = u(1.0, 1.8)
    # Heading: of 12 uniform candidates keep the best by (furniture in view, >= 1.8 m of room
    # ahead, room ahead): each candidate is uniform, the choice only avoids blank walls.
    best_yaw, best_key = 0.0, None
    for _ in range(12):
        yaw = u(0.0, 2 * math.pi)
        clear = _forward_clearance(room, pos[0], pos[1], yaw)
        key = (_furniture_in_view(footprints, pos, yaw), clear >= 1.8, clear)
        if best_key is None or key > best_key:
            best_yaw, best_key = yaw, key
    return Camera((pos[0], pos[1], cam_z), best_yaw, math.radians(u(-15.0, 5.0)),
                  math.radians(u(-4.0, 4.0)))


def _sample_room_materials(rng) -> dict:
    """Floor, wall (maybe one accent wall), ceiling and skirting: `Scene` keyword arguments."""
    floor = _floor_material(rng)
    wall = _wall_material(rng)
    walls = None
    if rng.random() < 0.25:  # one accent wall
        accent = int(rng.integers(4))
        alt = _wall_material(rng)
        walls = tuple(alt if i == accent else wall for i in range(4))
    ceiling = (_paint(rng, sat=(0.0, 0.08), val=(0.8, 0.97)) if rng.random() < 0.75
               else _noisy(rng, sat=(0.0, 0.08), val=(0.75, 0.95), scale=(0.2, 0.8)))
    skirting_h = rng.uniform(0.06, 0.14) if rng.random() < 0.7 else 0.0
    skirting = (_paint(rng, sat=(0.0, 0.1), val=(0.85, 0.97)) if rng.random() < 0.6
                else _wood(rng))
    return dict(floor=floor, wall=wall, ceiling=ceiling, walls=walls, skirting=skirting,
                skirting_height=skirting_h)


def _sample_decals(rng, room) -> tuple[Decal, ...]:
    """Maybe a door and a window, up to 2 pictures and maybe a rug."""
    u = rng.uniform
    lx, ly, lz = room
    decals = []
    wall_len = (ly, ly, lx, lx)
    if rng.random() < 0.6:  # a door
        face = int(rng.integers(4))
        dw = u(0.75, 0.95)
        u0 = u(0.1, max(wall_len[face] - dw - 0.1, 0.11))
        decals.append(Decal(face, (u0, u0 + dw, 0.0, u(1.95, 2.15)),
                            _wood(rng) if rng.random() < 0.6 else _paint(rng, val=(0.5, 0.95))))
    if rng.random() < 0.45:  # a window: bright, unshaded
        face = int(rng.integers(4))
        ww = u(0.6, min(2.0, wall_len[face] - 0.4))
        u0 = u(0.2, wall_len[face] - ww - 0.2)
        z0 = u(0.8, 1.2)
        sky = _jitter(rng, (0.85, 0.9, 0.97), 0.05)
        decals.append(Decal(face, (u0, u0 + ww, z0, min(z0 + u(0.8, 1.3), lz - 0.15)),
                            Material("plain", sky, sky, 1.0, emissive=True)))
    for _ in range(int(rng.integers(0, 3))):  # pictures
        face = int(rng.integers(4))
        pw, ph = u(0.3, 1.0), u(0.3, 0.8)
        u0 = u(0.1, max(wall_len[face] - pw - 0.1, 0.11))
        z0 = u(1.1, 1.7)
        decals.append(Decal(face, (u0, u0 + pw, z0, z0 + ph),
                            _noisy(rng, sat=(0.2, 0.9), val=(0.2, 0.9), scale=(0.02, 0.2))))
    if rng.random() < 0.4:  # a rug
        rw, rd = u(1.0, min(3.0, lx - 0.4)), u(0.8, min(2.5, ly - 0.4))
        x0, y0 = u(0.2, lx - rw - 0.2), u(0.2, ly - rd - 0.2)
        rug = (_noisy(rng, sat=(0.1, 0.7), val=(0.2, 0.8), scale=(0.02, 0.15))
               if rng.random() < 0.6 else _two_tone(rng, "stripes", (0.1, 0.4)))
        decals.append(Decal(4, (x0, x0 + rw, y0, y0 + rd), rug))
    return tuple(decals)


def _sample_lights(rng, room) -> tuple[Light, ...]:
    """1-2 ceiling lamps and maybe daylight from a window side."""
    u = rng.uniform
    lx, ly, lz = room
    lights = []
    for _ in range(int(rng.integers(1, 3))):
        warm = rng.random()
        color = (1.0, 0.92 + 0.08 * warm, 0.8 + 0.2 * warm)
        lights.append(Light(u(0.6, 1.2), color, position=(u(0.3, lx - 0.3), u(0.3, ly - 0.3),
                                                          lz - u(0.05, 0.4)),
                            falloff=u(2.5, 5.0)))
    if rng.random() < 0.4:  # daylight from a window side
        az, el = u(0.0, 2 * math.pi), math.radians(u(20.0, 55.0))
        lights.append(Light(u(0.25, 0.6), (1.0, 0.98, 0.95),
                            direction=(math.cos(el) * math.cos(az), math.cos(el) * math.sin(az),
                                       math.sin(el))))
    return tuple(lights)


def _sample_holes(rng) -> Holes:
    """Up to 3 dropout blobs, the max range and the edge shadow width."""
    u = rng.uniform
    blobs = tuple((u(0, 1), u(0, 1), u(0.01, 0.05), u(0.01, 0.05))
                  for _ in range(int(rng.integers(0, 4))))
    return Holes(max_range=u(6.0, MAX_DEPTH), edge_width=u(0.003, 0.012), blobs=blobs)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _slab(ox, oy, oz, dx, dy, dz, box: Box):
    """Ray/box slab test. Origins and directions may be arrays (broadcast) or scalars.
    Returns (t_near, t_far) along the given (unnormalised) directions."""
    c, s = math.cos(box.yaw), math.sin(box.yaw)
    rx, ry = ox - box.center[0], oy - box.center[1]
    lox, loy = c * rx + s * ry, -s * rx + c * ry  # rotate by -yaw into the box frame
    ldx, ldy = c * dx + s * dy, -s * dx + c * dy
    hx, hy = box.half
    with np.errstate(divide="ignore", invalid="ignore"):
        ix, iy, iz = 1.0 / ldx, 1.0 / ldy, 1.0 / dz
        a, b = (-hx - lox) * ix, (hx - lox) * ix
        tn, tf = np.minimum(a, b), np.maximum(a, b)
        a, b = (-hy - loy) * iy, (hy - loy) * iy
        tn, tf = np.maximum(tn, np.minimum(a, b)), np.minimum(tf, np.maximum(a, b))
        a, b = (box.z0 - oz) * iz, (box.z1 - oz) * iz
        tn, tf = np.maximum(tn, np.minimum(a, b)), np.minimum(tf, np.maximum(a, b))
    return tn, tf


def _screen_window(box: Box, cam_pos, rot, intr, size):
    """Pixel window (v0, v1, u0, u1) that contains the box's projection, or None if the box is
    entirely behind the camera or off screen. Falls back to the whole image when a corner is
    behind (or nearly at) the camera plane."""
    h, w = size
    fx, fy, cx, cy = intr
    pc = (box.corners() - np.asarray(cam_pos)) @ rot  # world -> camera coordinates
    z = pc[:, 2]
    if np.all(z <= 1e-3):
        return None
    if np.any(z <= 1e-3):
        return (0, h, 0, w)
    us, vs = fx * pc[:, 0] / z + cx, fy * pc[:, 1] / z + cy
    u0, u1 = max(int(math.floor(us.min())) - 1, 0), min(int(math.ceil(us.max())) + 2, w)
    v0, v1 = max(int(math.floor(vs.min())) - 1, 0), min(int(math.ceil(vs.max())) + 2, h)
    if u0 >= u1 or v0 >= v1:
        return None
    return (v0, v1, u0, u1)


def _hash2(i, j, salt):
    """Deterministic per-cell pseudo-random values in [0, 1) for integer cells (i, j)."""
    hsh = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (salt * 83492791)
    hsh = (hsh ^ (hsh >> 13)) * 1274126177
    return ((hsh >> 8) & 1023).astype(np.float32) / np.float32(1024.0)


def _value_noise(tile, u, v):
    """Smooth value noise: the wrapping lattice ``tile`` sampled with smoothstep interpolation at
    (u, v) in lattice units."""
    n = tile.shape[0]
    fu, fv = np.floor(u), np.floor(v)
    au, av = u - fu, v - fv
    au, av = au * au * (3 - 2 * au), av * av * (3 - 2 * av)
    i0 = fu.astype(np.int64) % n
    j0 = fv.astype(np.int64) % n
    i1, j1 = (i0 + 1) % n, (j0 + 1) % n
    flat = tile.ravel()
    a, b = flat[j0 * n + i0], flat[j0 * n + i1]
    c, d = flat[j1 * n + i0], flat[j1 * n + i1]
    top = a + (b - a) * au
    bottom = c + (d - c) * au
    return top + (bottom - top) * av


def _fbm(tile, u, v):
    """Two octaves of value noise, roughly in [0, 1]."""
    return 0.65 * _value_noise(tile, u, v) + 0.35 * _value_noise(tile, 2.07 * u + 17.3, 2.07 * v + 5.1)


def _texture(mat: Material, u, v, tile, salt):
    """Albedo (n, 3) float32 of ``mat`` at surface coordinates (u, v) in metres."""
    if mat.swap:
        u, v = v, u
    c1 = np.asarray(mat.color, np.float32)
    c2 = np.asarray(mat.color2, np.float32)
    s = mat.scale
    if mat.kind == "plain":  # paint with a faint low-frequency unevenness
        k = 1.0 + 0.08 * (_value_noise(tile, u / s, v / s) - 0.5)
        return c1[None, :] * k[:, None]
    if mat.kind == "noise":
        k = np.clip((_fbm(tile, u / s, v / s) - 0.5) * 1.6 + 0.5, 0.0, 1.0)
        return c1[None, :] + (c2 - c1)[None, :] * k[:, None]
    if mat.kind == "stripes":
        k = (np.floor(u / s) % 2).astype(np.float32)
        k = 0.85 * k + 0.15 * _value_noise(tile, u * 3.0, v * 3.0)
        return c1[None, :] + (c2 - c1)[None, :] * k[:, None]
    if mat.kind == "checker":
        k = ((np.floor(u / s) + np.floor(v / s)) % 2).astype(np.float32)
        return c1[None, :] + (c2 - c1)[None, :] * k[:, None]
    if mat.kind == "tiles":
        iu, iv = np.floor(u / s), np.floor(v / s)
        gu, gv = u / s - iu, v / s - iv
        g = 0.04  # grout width as a fraction of the tile
        grout = (gu < g) | (gv < g)
        k = 0.9 + 0.2 * _hash2(iu, iv, salt)
        out = c1[None, :] * k[:, None]
        out[grout] = c2
        return out
    # wood: planks of width s running along u, staggered end joints, grain from warped sines
    plank = np.floor(v / s)
    plank_len = s * 8.0
    offset = _hash2(plank, plank * 0, salt) * plank_len
    board = np.floor((u + offset) / plank_len)
    k_board = 0.82 + 0.3 * _hash2(plank, board, salt + 1)
    warp = _value_noise(tile, u * 1.5, v / s * 2.0)
    grain = 0.5 + 0.5 * np.sin(2 * math.pi * (v / s * 3.0 + 2.5 * warp))
    out = c1[None, :] + (c2 - c1)[None, :] * (grain * 0.7)[:, None]
    out *= k_board[:, None]
    seam = ((v / s - plank) < 0.04) | (((u + offset) / plank_len - board) < 0.006)
    out[seam] *= 0.55
    return out


def _room_uv(face, px, py, pz):
    """Surface coordinates on a room face: walls (along-wall, height), floor/ceiling (x, y)."""
    if face < 2:
        return py, pz
    if face < 4:
        return px, pz
    return px, py


_ROOM_NORMALS = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float32
)


def render_scene(scene: Scene, size, holes: bool = False, rng: np.random.Generator | None = None):
    """Renders ``scene`` at ``size`` = (H, W) with the scaled NYU intrinsics.

    Returns (rgb uint8 (H, W, 3), depth float32 (H, W) z-depth in metres). ``rng`` draws the
    per-pixel sensor noise (none without it). Without holes, depth is clipped into
    [MIN_DEPTH, MAX_DEPTH]; with holes, pixels outside it are holes (0.0), see ``render_sample``.
    """
    h, w = _check_size(size)
    intr = scaled_intrinsics((h, w))
    rot = _camera_rotation(scene)
    dirs = _ray_directions(rot, intr, (h, w))
    t, face = _trace_room(scene, dirs)
    obj = _trace_boxes(scene, rot, intr, dirs, t)
    hits = _Hits.flatten(scene, dirs, t, obj, face)
    surface = _Surface.empty(h * w)
    tile = np.random.default_rng(scene.noise_seed).random((_NOISE_TILE, _NOISE_TILE)).astype(
        np.float32
    )
    floor_idx = _shade_room(scene, hits, surface, tile)
    _shade_boxes(scene, hits, surface, tile)
    _floor_contact_shadow(scene, hits, floor_idx, surface.ao)
    irr = _irradiance(scene, hits, surface.normal, floor_idx)
    rgb = _expose(scene, surface, irr, rng).reshape(h, w, 3)
    depth = t.astype(np.float32)
    if not holes:
        return rgb, np.clip(depth, MIN_DEPTH, MAX_DEPTH).astype(np.float32)
    cosi = _incidence_cos(hits, surface.normal).reshape(h, w)
    depth[_holes_mask(depth, obj, cosi, scene.holes)] = 0.0
    return rgb, depth


@dataclass(frozen=True)
class _Hits:
    """The nearest hit of every pixel, flattened to (H * W,) arrays.

    ``px, py, pz``: world point; ``dx, dy, dz``: ray direction (camera-z component 1);
    ``obj``: -1 for the room, k for box k; ``face``: room face index (meaningful where obj < 0).
    """

    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    dz: np.ndarray
    obj: np.ndarray
    face: np.ndarray

    @classmethod
    def flatten(cls, scene: Scene, dirs, t, obj, face):
        """Hits from the ray directions (3, H, W), hit depths, object and face maps (H, W)."""
        ox, oy, oz = scene.camera.position
        tf_ = t.ravel()
        dxf, dyf, dzf = dirs[0].ravel(), dirs[1].ravel(), dirs[2].ravel()
        px, py, pz = ox + tf_ * dxf, oy + tf_ * dyf, oz + tf_ * dzf
        return cls(px, py, pz, dxf, dyf, dzf, obj.ravel(), face.ravel())


@dataclass(frozen=True)
class _Surface:
    """Per-pixel surface properties, (H * W,) or (H * W, 3), filled in place while shading."""

    albedo: np.ndarray
    normal: np.ndarray
    emissive: np.ndarray
    ao: np.ndarray

    @classmethod
    def empty(cls, n_pix):
        """Albedo and normals to be written for every pixel; nothing emissive; no occlusion."""
        return cls(
            albedo=np.empty((n_pix, 3), np.float32),
            normal=np.empty((n_pix, 3), np.float32),
            emissive=np.zeros(n_pix, bool),
            ao=np.ones(n_pix, np.float32),
        )


def _camera_rotation(scene: Scene) -> np.ndarray:
    """The camera-to-world rotation, after checking that the camera is inside the room."""
    lx, ly, lz = scene.room
    ox, oy, oz = scene.camera.position
    if not (0 < ox < lx and 0 < oy < ly and 0 < oz < lz):
        raise ValueError(f"camera position {scene.camera.position} is outside the room {scene.room}.")
    return scene.camera.rotation()


def _ray_directions(rot, intr, size):
    """World ray directions float32 (3, H, W) with camera-z component 1 (ray parameter = z-depth)."""
    h, w = size
    fx, fy, cx, cy = intr
    xs = ((np.arange(w) - cx) / fx).astype(np.float64)
    ys = ((np.arange(h) - cy) / fy).astype(np.float64)
    dirs = (rot[:, 0, None, None] * xs[None, None, :] + rot[:, 1, None, None] * ys[None, :, None]
            + rot[:, 2, None, None])
    dirs = dirs.astype(np.float32)
    dirs[dirs == 0] = 1e-12  # no exact zeros: keeps the slab divisions finite
    return dirs


def _trace_room(scene: Scene, dirs):
    """The room box hit from the inside: (depth float32 (H, W), face index int16 (H, W))."""
    lx, ly, lz = scene.room
    ox, oy, oz = scene.camera.position
    dx, dy, dz = dirs
    # The nearest exit plane per axis.
    with np.errstate(divide="ignore"):
        tx = np.where(dx > 0, (lx - ox) / dx, -ox / dx)
        ty = np.where(dy > 0, (ly - oy) / dy, -oy / dy)
        tz = np.where(dz > 0, (lz - oz) / dz, -oz / dz)
    t_all = np.stack([tx, ty, tz])
    axis = np.argmin(t_all, axis=0)
    t = np.take_along_axis(t_all, axis[None], 0)[0].astype(np.float32)
    face = (axis * 2 + (np.take_along_axis(dirs, axis[None], 0)[0] > 0)).astype(np.int16)
    return t, face


def _trace_boxes(scene: Scene, rot, intr, dirs, t):
    """Furniture boxes hit from the outside, each in the screen window it can cover.

    Lowers ``t`` in place where a box is nearer and returns the object map int16 (H, W):
    -1 for the room, k for box k.
    """
    h, w = t.shape
    ox, oy, oz = scene.camera.position
    dx, dy, dz = dirs
    obj = np.full((h, w), -1, np.int16)
    for k, box in enumerate(scene.boxes):
        win = _screen_window(box, scene.camera.position, rot, intr, (h, w))
        if win is None:
            continue
        v0, v1, u0, u1 = win
        sl = (slice(v0, v1), slice(u0, u1))
        tn, tf = _slab(ox, oy, oz, dx[sl], dy[sl], dz[sl], box)
        hit = (tn <= tf) & (tn > 0) & (tn < t[sl])
        t[sl][hit] = tn[hit]
        obj[sl][hit] = k
    return obj


def _shade_room(scene: Scene, hits: _Hits, surface: _Surface, tile):
    """Normals, albedo (with skirting and decals) and edge occlusion of the room's pixels.

    Returns the flat indices of the floor pixels.
    """
    room_idx = np.flatnonzero(hits.obj < 0)
    room_face = hits.face[room_idx]
    walls = scene.walls or (scene.wall,) * 4
    materials = (*walls, scene.floor, scene.ceiling)
    for f in range(6):
        idx = room_idx[room_face == f]
        if idx.size == 0:
            continue
        surface.normal[idx] = _ROOM_NORMALS[f]
        uu, vv = _room_uv(f, hits.px[idx], hits.py[idx], hits.pz[idx])
        surface.albedo[idx] = _texture(materials[f], uu, vv, tile, f)
        if f < 4 and scene.skirting_height > 0:
            sk = vv < scene.skirting_height
            if sk.any():
                surface.albedo[idx[sk]] = _texture(scene.skirting, uu[sk], vv[sk], tile, 11)
        _paint_decals(scene.decals, f, idx, uu, vv, surface, tile)
        surface.ao[idx] *= _room_edge_occlusion(scene.room, f, hits.px[idx], hits.py[idx], hits.pz[idx])
    return room_idx[room_face == 4]


def _paint_decals(decals, f, idx, uu, vv, surface: _Surface, tile):
    """Paints the decals of room face ``f`` over its pixels ``idx`` at surface coordinates (uu, vv)."""
    for dec in decals:
        if dec.face != f:
            continue
        a0, a1, b0, b1 = dec.rect
        m = (uu >= a0) & (uu <= a1) & (vv >= b0) & (vv <= b1)
        if m.any():
            surface.albedo[idx[m]] = _texture(dec.material, uu[m] - a0, vv[m] - b0, tile, 12)
            surface.emissive[idx[m]] = dec.material.emissive


def _room_edge_occlusion(room, f, px, py, pz):
    """Ambient-occlusion factor near the room's edges: distance to the nearest other room plane."""
    lx, ly, lz = room
    dists = [px, lx - px, py, ly - py, pz, lz - pz]
    dists[f] = np.full(px.size, np.inf, np.float32)
    dmin = np.minimum.reduce(dists)
    return 1.0 - 0.35 * np.exp(-dmin / 0.35)


def _shade_boxes(scene: Scene, hits: _Hits, surface: _Surface, tile):
    """Normals, albedo and contact darkening of the furniture's pixels."""
    for k, box in enumerate(scene.boxes):
        idx = np.flatnonzero(hits.obj == k)
        if idx.size == 0:
            continue
        c, s = math.cos(box.yaw), math.sin(box.yaw)
        rx, ry = hits.px[idx] - box.center[0], hits.py[idx] - box.center[1]
        bx, by, bz = c * rx + s * ry, -s * rx + c * ry, hits.pz[idx]
        hx, hy = box.half
        # Which face: the coordinate closest to its boundary, in units of the extent.
        ex = np.abs(np.abs(bx) - hx)
        ey = np.abs(np.abs(by) - hy)
        ez = np.minimum(np.abs(bz - box.z0), np.abs(bz - box.z1))
        which = np.argmin(np.stack([ex, ey, ez]), axis=0)
        sign_x, sign_y = np.sign(bx), np.sign(by)
        nx_l = np.where(which == 0, sign_x, 0.0)
        ny_l = np.where(which == 1, sign_y, 0.0)
        nz = np.where(which == 2, np.where(bz > 0.5 * (box.z0 + box.z1), 1.0, -1.0), 0.0)
        surface.normal[idx, 0] = c * nx_l - s * ny_l
        surface.normal[idx, 1] = s * nx_l + c * ny_l
        surface.normal[idx, 2] = nz
        uu = np.where(which == 0, by, bx)
        vv = np.where(which == 2, by, bz)
        surface.albedo[idx] = _texture(box.material, uu + 7.0 * k, vv, tile, 20 + k)
        surface.ao[idx] *= 1.0 - 0.3 * np.exp(-bz / 0.12)  # contact darkening near the floor


def _floor_contact_shadow(scene: Scene, hits: _Hits, floor_idx, ao):
    """Darkens ``ao`` in place on the floor around and under each box."""
    if not floor_idx.size:
        return
    fx_, fy_ = hits.px[floor_idx], hits.py[floor_idx]
    for box in scene.boxes:
        reach = 0.4 + box.z0
        corners = box.corners()
        m = ((fx_ > corners[:, 0].min() - reach) & (fx_ < corners[:, 0].max() + reach)
             & (fy_ > corners[:, 1].min() - reach) & (fy_ < corners[:, 1].max() + reach))
        sel = np.flatnonzero(m)
        if sel.size == 0:
            continue
        c, s = math.cos(box.yaw), math.sin(box.yaw)
        rx, ry = fx_[sel] - box.center[0], fy_[sel] - box.center[1]
        ddx = np.maximum(np.abs(c * rx + s * ry) - box.half[0], 0.0)
        ddy = np.maximum(np.abs(-s * rx + c * ry) - box.half[1], 0.0)
        dist = np.sqrt(ddx * ddx + ddy * ddy)
        strength = 0.5 * math.exp(-box.z0 / 0.8)
        ao[floor_idx[sel]] *= 1.0 - strength * np.exp(-dist / (0.1 + 0.4 * box.z0))


def _irradiance(scene: Scene, hits: _Hits, normal, floor_idx):
    """Irradiance (H * W, 3): ambient plus Lambertian lights, with hard floor shadows cast by
    the furniture."""
    nzz = normal[:, 2]
    irr = np.zeros((normal.shape[0], 3), np.float32)
    amb = scene.ambient * (0.85 + 0.15 * nzz)  # a little more sky light on upward faces
    irr += amb[:, None]
    for light in scene.lights:
        lam = _lambert(light, hits, normal).astype(np.float32)
        if floor_idx.size and scene.boxes:
            lam[floor_idx] *= ~_floor_shadow(scene.boxes, light, hits.px[floor_idx], hits.py[floor_idx])
        irr += lam[:, None] * np.asarray(light.color, np.float32)[None, :]
    return irr


def _lambert(light: Light, hits: _Hits, normal):
    """Unshadowed irradiance (H * W,) from one point or directional light."""
    nx, ny, nzz = normal[:, 0], normal[:, 1], normal[:, 2]
    if light.position is not None:
        lxp, lyp, lzp = light.position
        vx, vy, vz = lxp - hits.px, lyp - hits.py, lzp - hits.pz
        dist = np.sqrt(vx * vx + vy * vy + vz * vz) + 1e-6
        lam = np.maximum((nx * vx + ny * vy + nzz * vz) / dist, 0.0)
        lam *= light.intensity / (1.0 + (dist / light.falloff) ** 2)
        return lam
    return np.maximum(nx * light.direction[0] + ny * light.direction[1]
                      + nzz * light.direction[2], 0.0) * light.intensity


def _expose(scene: Scene, surface: _Surface, irr, rng):
    """Linear light -> sRGB uint8 (H * W, 3), with the sensor noise ``rng`` draws (if given)."""
    albedo, emissive = surface.albedo, surface.emissive
    linear = (albedo**2.2) * irr * surface.ao[:, None] * scene.exposure
    linear[emissive] = albedo[emissive] ** 2.2  # windows glow regardless of the lights
    img = np.clip(linear, 0.0, 1.0) ** (1 / 2.2)
    if rng is not None and scene.sensor_noise > 0:
        img = img + rng.normal(0.0, scene.sensor_noise, img.shape).astype(np.float32)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _incidence_cos(hits: _Hits, normal):
    """|cos| of the angle between each pixel's ray and the surface normal, (H * W,)."""
    nx, ny, nzz = normal[:, 0], normal[:, 1], normal[:, 2]
    dxf, dyf, dzf = hits.dx, hits.dy, hits.dz
    return np.abs(nx * dxf + ny * dyf + nzz * dzf) / np.sqrt(dxf * dxf + dyf * dyf + dzf * dzf)


def _floor_shadow(boxes, light: Light, fx_, fy_):
    """Boolean mask: floor points (fx_, fy_, 0) from which ``light`` is blocked by a box."""
    shadow = np.zeros(fx_.shape, bool)
    for box in boxes:
        corners = box.corners()
        if light.position is not None:
            lp = np.asarray(light.position)
            if corners[:, 2].max() >= lp[2] - 1e-3:
                proj = corners[:, :2]  # light not above the box: no cheap bound, test all
                bound = None
            else:
                # project the corners from the light onto the floor: shadow lies within
                k = lp[2] / (lp[2] - corners[:, 2])
                proj = lp[None, :2] + (corners[:, :2] - lp[None, :2]) * k[:, None]
                bound = proj
        else:
            dvec = np.asarray(light.direction)
            if dvec[2] <= 1e-3:
                continue
            proj = corners[:, :2] - dvec[None, :2] * (corners[:, 2] / dvec[2])[:, None]
            bound = proj
        if bound is not None:
            allp = np.concatenate([bound, corners[:, :2]])
            m = ((fx_ >= allp[:, 0].min()) & (fx_ <= allp[:, 0].max())
                 & (fy_ >= allp[:, 1].min()) & (fy_ <= allp[:, 1].max()))
            sel = np.flatnonzero(m)
        else:
            sel = np.arange(fx_.size)
        if sel.size == 0:
            continue
        sx, sy = fx_[sel], fy_[sel]
        if light.position is not None:
            ddx, ddy, ddz = light.position[0] - sx, light.position[1] - sy, light.position[2]
            t_max = 1.0  # segment floor -> light
        else:
            ddx = np.full(sel.size, light.direction[0], np.float32)
            ddy = np.full(sel.size, light.direction[1], np.float32)
            ddz = light.direction[2]
            t_max = np.inf
        ddz = np.full(sel.size, ddz, np.float32)
        tn, tf = _slab(sx, sy, np.float32(0.0), ddx, ddy, ddz, box)
        blocked = (tn <= tf) & (tf > 1e-4) & (tn < t_max)
        shadow[sel[blocked]] = True
    return shadow


def _shift(a, dv, du, fill):
    """``a`` shifted by (dv, du) pixels; vacated cells get ``fill``."""
    out = np.full_like(a, fill)
    h, w = a.shape
    out[max(dv, 0):h + min(dv, 0), max(du, 0):w + min(du, 0)] = (
        a[max(-dv, 0):h + min(-dv, 0), max(-du, 0):w + min(-du, 0)]
    )
    return out


def _holes_mask(depth, obj, cosi, holes: Holes):
    """Kinect-like invalid pixels: out of range, grazing incidence, the background side of depth
    discontinuities (widened sideways like the Kinect's projector shadow) and dropout blobs."""
    h, w = depth.shape
    invalid = (depth < MIN_DEPTH) | (depth > min(holes.max_range, MAX_DEPTH))
    invalid |= cosi < holes.grazing_cos
    # Background side of an occlusion edge: a neighbour on another object is clearly nearer.
    edge = np.zeros_like(invalid)
    for dv, du in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        nd = _shift(depth, dv, du, np.inf)
        no = _shift(obj, dv, du, -2)
        edge |= (no != obj) & (no != -2) & (nd < depth * 0.96 - 0.02)
    width = max(1, round(holes.edge_width * w))
    if width > 1:
        near = depth.copy()
        wide = edge.copy()
        for du in range(1, width + 1):  # the edge pixel plus width - 1 more, sideways
            for sgn in (1, -1):
                near = np.minimum(near, _shift(depth, 0, sgn * du, np.inf))
                if du < width:
                    wide |= _shift(edge, 0, sgn * du, False)
        edge = wide & (near < depth * 0.96 - 0.02)  # only where a nearer surface is close by
    invalid |= edge
    if holes.blobs:
        vv, uu = np.mgrid[0:h, 0:w]
        for cu, cv, ru, rv in holes.blobs:
            ru_px, rv_px = max(ru * w, 0.5), max(rv * w, 0.5)
            invalid |= ((uu - cu * w) / ru_px) ** 2 + ((vv - cv * h) / rv_px) ** 2 <= 1.0
    return invalid


# --------------------------------------------------------------------------------------------
# Camera trajectory (video)
# --------------------------------------------------------------------------------------------

TRAJECTORY_PERIOD = 240  # frames per back-and-forth cycle of the camera
TRAJECTORY_YAW = 0.25  # radians (about 14 degrees) of pan either side of the sampled heading
TRAJECTORY_STEP = 0.1  # metres of sideways travel either side of the sampled position


def render_trajectory_frame(seed: int, index: int, size: tuple[int, int], holes: bool = False):
    """Frame ``index`` of a slow camera move through the one room of stream ``seed``.

    The room is sample 0 of ``seed`` (`render_sample`'s scene); the camera pans by
    ±`TRAJECTORY_YAW` and slides by ±`TRAJECTORY_STEP` metres sideways along a sine of period
    `TRAJECTORY_PERIOD` frames, so consecutive frames differ a little, as in a hand-held video.
    A pure function of (seed, index, size); sensor noise from ``default_rng([seed, index, 2])``.

    Returns:
        (rgb uint8 (H, W, 3), depth float32 (H, W) z-depth in metres), as `render_scene`.
    """
    seed = _check_nonneg_int("seed", seed)
    index = _check_nonneg_int("index", index)
    size = _check_size(size)
    scene = sample_scene(np.random.default_rng([seed, 0]))
    cam = scene.camera
    phase = math.sin(2.0 * math.pi * index / TRAJECTORY_PERIOD)
    side = (math.sin(cam.yaw), -math.cos(cam.yaw))  # the camera's right, horizontal
    x, y, z = cam.position
    position = (x + TRAJECTORY_STEP * phase * side[0], y + TRAJECTORY_STEP * phase * side[1], z)
    camera = Camera(position, cam.yaw + TRAJECTORY_YAW * phase, cam.pitch, cam.roll)
    moved = dataclasses.replace(scene, camera=camera)
    return render_scene(moved, size, holes=holes, rng=np.random.default_rng([seed, index, 2]))
