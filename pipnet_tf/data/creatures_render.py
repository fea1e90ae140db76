"""Rendering of the built-in "creatures" benchmark (NumPy + PIL only).

Each image shows one frontal creature on a cluttered background. Every creature has the
same ten parts: beak, belly, crown, two eyes, two legs, two wings and a tail, each 10–30
px at 224 px. A class is defined by *attributes* of parts (`CLASS_DEFINITIONS`): a shape
(beak, tail), a pattern (crown, belly, wings) or a combination of colours, never by a
part's presence; two classes are "A or B" classes (the paper's "sun OR dog"). All other
attributes are drawn at random from the same options, so every option appears in every
class, and colours come from one small palette shared with the background clutter, so
colour histograms alone say little (a histogram classifier scores near chance).

Variation: pose (rotation ±20°), scale (±18%), position, the body colour, the clutter
(blobs in the palette's colours, some striped or spotted), and leaves that occlude parts
in half of the images (a part whose centre is covered is annotated as not visible).

`render_example(rng, label, size)` → (image uint8 (size, size, 3), {part: (x, y, visible)},
bbox (x, y, w, h)); `render_ood(rng, kind, size)` for the OoD folders: backgrounds only,
creature-like figures of unseen part shapes and colours, and photo-like scenes. Coordinates are float
pixels with the origin at the image's top-left corner.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Colour = tuple[int, int, int]
PALETTE: dict[str, Colour] = {
    "red": (205, 45, 40), "blue": (45, 85, 205), "yellow": (235, 195, 35),
    "purple": (135, 55, 175), "orange": (240, 130, 25), "teal": (25, 150, 150)}
COLOURS: tuple[str, ...] = tuple(PALETTE)
BODY_COLOURS: tuple[Colour, ...] = ((150, 115, 80), (120, 120, 125), (190, 170, 135),
                                    (95, 80, 70))
# Attribute → its options. Shapes and patterns first, then colours.
OPTIONS: dict[str, tuple[str, ...]] = {
    "beak_shape": ("short", "long", "hooked"),
    "crown_pattern": ("plain", "stripes", "spots"),
    "wing_pattern": ("plain", "bars", "dots"),
    "belly_pattern": ("plain", "stripes", "spots"),
    "tail_shape": ("point", "fan", "fork"),
    **{f"{part}_colour": COLOURS for part in ("beak", "crown", "wing", "belly", "tail", "eye",
                                              "leg")},
}
# Class name → alternative attribute sets; an image of the class satisfies exactly one,
# and no image satisfies a definition of another class.
CLASS_DEFINITIONS: dict[str, tuple[dict[str, str], ...]] = {
    "HookedBeak_StripedCrown": ({"beak_shape": "hooked", "crown_pattern": "stripes"},),
    "HookedBeak_SpottedCrown": ({"beak_shape": "hooked", "crown_pattern": "spots"},),
    "LongBeak_BarredWings": ({"beak_shape": "long", "wing_pattern": "bars"},),
    "LongBeak_DottedWings": ({"beak_shape": "long", "wing_pattern": "dots"},),
    "StripedCrown_DottedWings": ({"crown_pattern": "stripes", "wing_pattern": "dots"},),
    "SpottedCrown_BarredWings": ({"crown_pattern": "spots", "wing_pattern": "bars"},),
    "RedBeak_BlueCrown": ({"beak_colour": "red", "crown_colour": "blue"},),
    "BlueBeak_RedCrown": ({"beak_colour": "blue", "crown_colour": "red"},),
    "YellowWings_PurpleBelly": ({"wing_colour": "yellow", "belly_colour": "purple"},),
    "PurpleWings_YellowBelly": ({"wing_colour": "purple", "belly_colour": "yellow"},),
    "TealForkTail_or_OrangeStripedBelly": ({"tail_shape": "fork", "tail_colour": "teal"},
                                           {"belly_pattern": "stripes",
                                            "belly_colour": "orange"}),
    "OrangeFanTail_or_TealSpottedBelly": ({"tail_shape": "fan", "tail_colour": "orange"},
                                          {"belly_pattern": "spots", "belly_colour": "teal"}),
}
CLASS_NAMES: tuple[str, ...] = tuple(CLASS_DEFINITIONS)
# `make demo`'s six classes (`--dataset=creatures_demo`): the colour-combination classes
# (two pairs with swapped colours) and the two OR classes. The tiny from-scratch recipe
# learns them to top-1 0.9+ in minutes; the shape and pattern classes need more images or
# time than a demo has (BUILD_NOTES "`make demo`").
DEMO_CLASSES: tuple[str, ...] = (
    "RedBeak_BlueCrown", "BlueBeak_RedCrown", "YellowWings_PurpleBelly",
    "PurpleWings_YellowBelly", "TealForkTail_or_OrangeStripedBelly",
    "OrangeFanTail_or_TealSpottedBelly")
PART_NAMES: tuple[str, ...] = ("beak", "belly", "crown", "left eye", "right eye", "left leg",
                               "right leg", "left wing", "right wing", "tail")
OOD_KINDS: tuple[str, ...] = ("backgrounds", "unseen_creatures", "photo_like")
VERSION = 3  # part of the cache name: bump when the drawings change
REFERENCE_SIZE = 224  # canonical creature coordinates are pixels at this image size
_UNSEEN_COLOURS: tuple[Colour, ...] = ((240, 120, 190), (140, 220, 40), (250, 250, 250),
                                       (20, 20, 20), (110, 60, 20))


def matches(attributes: dict[str, str], definition: dict[str, str]) -> bool:
    return all(attributes[k] == v for k, v in definition.items())


def classes_of(attributes: dict[str, str]) -> list[int]:
    """Indices of the classes whose definition (any option) `attributes` satisfy."""
    return [c for c, options in enumerate(CLASS_DEFINITIONS.values())
            if any(matches(attributes, o) for o in options)]


def sample_attributes(rng: np.random.Generator, label: int) -> dict[str, str]:
    """Random attributes satisfying exactly one option of class `label` and no other class."""
    options = CLASS_DEFINITIONS[CLASS_NAMES[label]]
    chosen = options[int(rng.integers(len(options)))]
    for _ in range(10_000):
        attributes = {k: str(v[int(rng.integers(len(v)))]) for k, v in OPTIONS.items()}
        attributes.update(chosen)
        if classes_of(attributes) == [label] and sum(matches(attributes, o) for o in options) == 1:
            return attributes
    raise RuntimeError(f"cannot sample attributes for class {CLASS_NAMES[label]!r}")


# === Geometry: canonical creature parts (pixels at 224 px, y down, body centre at 0) ===
def _ellipse(cx, cy, rx, ry, angle=0.0, n=40) -> np.ndarray:
    t = 2 * np.pi * np.arange(n) / n
    pts = np.stack([rx * np.cos(t), ry * np.sin(t)], 1)
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]]) + (cx, cy)


_BEAKS = {
    "short": np.array([(-6.5, -30.0), (6.5, -30.0), (0.0, -19.0)]),
    "long": np.array([(-4.0, -30.0), (4.0, -30.0), (0.0, -9.0)]),
    "hooked": np.array([(-6.5, -30.0), (6.5, -30.0), (7.5, -24.0), (5.0, -18.0),
                        (0.5, -15.0), (-1.0, -17.5), (2.0, -21.0), (-2.0, -25.0)]),
}
_FAN_ARC = np.linspace(0.6, -0.6, 9)
_TAILS = {
    "point": np.array([(-7.0, 36.0), (7.0, 36.0), (0.0, 64.0)]),
    "fan": np.concatenate([[(0.0, 36.0)], np.stack([15 * np.sin(_FAN_ARC),
                                                    36 + 26 * np.cos(_FAN_ARC)], 1)]),
    "fork": np.array([(-7.0, 36.0), (7.0, 36.0), (11.0, 64.0), (3.0, 53.0), (0.0, 56.0),
                      (-3.0, 53.0), (-11.0, 64.0)]),
}
BEAK_CENTRES = {"short": (0.0, -25.0), "long": (0.0, -20.0), "hooked": (2.0, -22.0)}
PART_CENTRES = {"belly": (0.0, 14.0), "crown": (0.0, -49.0), "left eye": (-7.0, -37.0),
                "right eye": (7.0, -37.0), "left leg": (-13.0, 46.0), "right leg": (13.0, 46.0),
                "left wing": (-25.0, 4.0), "right wing": (25.0, 4.0), "tail": (0.0, 50.0)}


@dataclasses.dataclass(frozen=True)
class Pose:
    """Canonical → image pixels: scale (px per canonical unit), rotation, translation."""

    scale: float
    angle: float
    cx: float
    cy: float

    def __call__(self, pts) -> np.ndarray:
        pts = np.asarray(pts, np.float64).reshape(-1, 2) * self.scale
        c, s = np.cos(self.angle), np.sin(self.angle)
        return pts @ np.array([[c, s], [-s, c]]) + (self.cx, self.cy)


@dataclasses.dataclass
class _Part:
    """A polygon in image pixels with its fill: colour and optional pattern in a local frame."""

    polygon: np.ndarray
    colour: Colour
    pattern: str = "plain"  # plain | stripes | spots | bars | dots
    frame: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)  # cx, cy, angle, unit px


class _Canvas:
    """A supersampled float RGB canvas; shapes are drawn as anti-aliased polygons."""

    def __init__(self, size: int, ss: int = 2):
        self.size, self.ss = size, ss
        self.pixels = np.zeros((size * ss, size * ss, 3), np.float32)

    def mask(self, polygon: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
        ss = self.ss
        img = Image.new("L", (self.size * ss, self.size * ss), 0)
        ImageDraw.Draw(img).polygon([tuple(p) for p in np.asarray(polygon) * ss - 0.5], fill=255)
        box = img.getbbox()
        if box is None:
            return None
        return np.asarray(img.crop(box), np.float32)[..., None] / 255.0, box

    def paint(self, part: _Part) -> None:
        found = self.mask(part.polygon)
        if found is None:
            return
        alpha, (x0, y0, x1, y1) = found
        fill = np.broadcast_to(np.float32(part.colour), alpha.shape[:2] + (3,))
        if part.pattern != "plain":
            ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            cx, cy, angle, unit = part.frame
            xs, ys = (xs + 0.5) / self.ss - cx, (ys + 0.5) / self.ss - cy
            c, s = np.cos(angle), np.sin(angle)
            u, v = (xs * c + ys * s) / unit, (-xs * s + ys * c) / unit
            dark = np.float32(part.colour) * 0.35
            light = np.float32((245, 245, 235))
            if part.pattern in ("stripes", "bars"):
                period = 5.0 if part.pattern == "stripes" else 7.0
                on = (np.floor(v / (period / 2)) % 2 == 1)[..., None]
                fill = np.where(on, dark, fill)
            else:  # spots / dots on a hexagonal-ish grid
                period = 6.0 if part.pattern == "spots" else 7.5
                row = np.floor(v / period)
                du = (u + 0.5 * period * (row % 2)) % period - period / 2
                dv = v % period - period / 2
                on = (du**2 + dv**2 < (0.3 * period) ** 2)[..., None]
                fill = np.where(on, light if part.pattern == "spots" else dark, fill)
        region = self.pixels[y0:y1, x0:x1]
        region += alpha * (fill - region)

    def image(self) -> np.ndarray:
        img = Image.fromarray(np.clip(np.round(self.pixels), 0, 255).astype(np.uint8))
        return np.asarray(img.resize((self.size, self.size), Image.LANCZOS))


# === Backgrounds, clutter and leaves ===
def _smooth_noise(rng: np.random.Generator, n: int, cells: int, channels: int) -> np.ndarray:
    """(n, n, channels) float32 noise in about [-1, 1], bicubically upsampled from a grid."""
    grid = np.uint8(np.clip(128 + 40 * rng.normal(size=(cells, cells, channels)), 0, 255))
    image = Image.fromarray(grid[..., 0] if channels == 1 else grid)
    up = np.asarray(image.resize((n, n), Image.BICUBIC), np.float32)
    return (up.reshape(n, n, channels) - 128) / 64


def _background(rng: np.random.Generator, canvas: _Canvas) -> None:
    """Muted foliage-like colours: a gradient, soft light/dark patches, a little tint."""
    n = canvas.size * canvas.ss
    yy, xx = (np.mgrid[0:n, 0:n].astype(np.float32) + 0.5) / n
    hue = rng.uniform(0.15, 0.45)
    base = np.float32([150 + 60 * np.sin(6.28 * hue), 150, 120 + 40 * np.cos(6.28 * hue)])
    base = base * rng.uniform(0.65, 1.05)
    th = rng.uniform(0, 2 * np.pi)
    t = (xx * np.cos(th) + yy * np.sin(th))[..., None]
    light = _smooth_noise(rng, n, int(rng.integers(4, 9)), 1)
    tint = _smooth_noise(rng, n, 3, 3)
    canvas.pixels[:] = np.clip(base * (1 + 0.25 * light) + 40 * (t - 0.5) + 12 * tint, 0, 255)


def _blob_polygon(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    k = int(rng.integers(5, 11))
    t = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = r * rng.uniform(0.55, 1.0, k)
    pts = np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], 1)
    if rng.uniform() < 0.5:  # round it: an ellipse instead
        pts = _ellipse(cx, cy, r, r * rng.uniform(0.4, 1.0), rng.uniform(0, np.pi))
    return pts


def _clutter(rng: np.random.Generator, canvas: _Canvas, count: int) -> None:
    """Blobs in the palette's colours (a third of them striped or spotted), 6–40 px."""
    k = canvas.size / REFERENCE_SIZE
    for _ in range(count):
        r = rng.uniform(3, 20) * k
        cx, cy = rng.uniform(0, canvas.size, 2)
        colour = PALETTE[COLOURS[int(rng.integers(len(COLOURS)))]]
        pattern = ("plain", "plain", "stripes", "spots")[int(rng.integers(4))]
        canvas.paint(_Part(_blob_polygon(rng, cx, cy, r), _jitter(rng, colour), pattern,
                           (cx, cy, rng.uniform(0, np.pi), k)))


def _leaf(rng: np.random.Generator, cx: float, cy: float, length: float) -> _Part:
    t = np.linspace(0, np.pi, 16)
    half = np.stack([length * np.cos(t) / 2, length * 0.22 * np.sin(t)], 1)
    pts = np.concatenate([half, half[::-1] * (1, -1)])
    angle = rng.uniform(0, np.pi)
    c, s = np.cos(angle), np.sin(angle)
    green = (int(rng.integers(40, 80)), int(rng.integers(110, 160)), int(rng.integers(30, 70)))
    return _Part(pts @ np.array([[c, s], [-s, c]]) + (cx, cy), green)


def _jitter(rng: np.random.Generator, colour: Colour, amount: int = 14) -> Colour:
    return tuple(int(v) for v in np.clip(np.add(colour, rng.integers(-amount, amount + 1, 3)),
                                         0, 255))


# === The creature ===
def _creature_parts(attributes: dict[str, str], pose: Pose, body: Colour,
                    colour_of) -> list[tuple[str | None, _Part]]:
    """(annotation name or None, part) in drawing order (back to front)."""
    unit = pose.scale
    a = attributes
    parts: list[tuple[str | None, _Part]] = []
    parts.append(("tail", _Part(pose(_TAILS[a["tail_shape"]]), colour_of("tail"))))
    for side, x in (("left", -1), ("right", 1)):
        leg = np.array([(x * 11.5, 34.0), (x * 14.5, 34.0), (x * 15.0, 54.0), (x * 19.0, 58.0),
                        (x * 8.0, 58.0), (x * 12.0, 54.0)])
        parts.append((f"{side} leg", _Part(pose(leg), colour_of("leg"))))
    for side, x in (("left", -1), ("right", 1)):
        wing = _ellipse(x * 25.0, 4.0, 8.0, 19.0, angle=-x * 0.4)
        frame = (*pose([(x * 25.0, 4.0)])[0], pose.angle - x * 0.4, unit)
        parts.append((f"{side} wing", _Part(pose(wing), colour_of("wing"), a["wing_pattern"],
                                            frame)))
    parts.append((None, _Part(pose(_ellipse(0.0, 8.0, 22.0, 30.0)), body)))
    parts.append(("belly", _Part(pose(_ellipse(0.0, 14.0, 12.0, 16.0)), colour_of("belly"),
                                 a["belly_pattern"], (*pose([(0.0, 14.0)])[0], pose.angle, unit))))
    parts.append((None, _Part(pose(_ellipse(0.0, -34.0, 17.0, 17.0)), body)))
    crown = np.concatenate([_ellipse(0.0, -47.0, 14.0, 9.0, n=40)[20:], [(14.0, -44.0),
                                                                       (-14.0, -44.0)]])
    parts.append(("crown", _Part(pose(crown), colour_of("crown"), a["crown_pattern"],
                                 (*pose([(0.0, -49.0)])[0], pose.angle, unit))))
    for side, x in (("left", -1), ("right", 1)):
        parts.append((f"{side} eye", _Part(pose(_ellipse(x * 7.0, -37.0, 4.6, 4.6)),
                                           (240, 240, 235))))
        parts.append((None, _Part(pose(_ellipse(x * 7.0, -37.0, 3.0, 3.0)), colour_of("eye"))))
        parts.append((None, _Part(pose(_ellipse(x * 7.3, -37.3, 1.4, 1.4)), (15, 15, 15))))
    parts.append(("beak", _Part(pose(_BEAKS[a["beak_shape"]]), colour_of("beak"))))
    return parts


def _place(rng: np.random.Generator, size: int) -> Pose:
    k = size / REFERENCE_SIZE
    scale = k * rng.uniform(0.82, 1.18)
    half_w, half_h = 40 * scale, 64 * scale  # canonical extent ±40 x [-58, 66] plus rotation
    cx = rng.uniform(half_w + 2, size - half_w - 2)
    cy = rng.uniform(half_h + 2, size - half_h - 2)
    return Pose(scale, rng.uniform(-0.35, 0.35), cx, cy)


def _draw_creature(rng, canvas: _Canvas, attributes: dict[str, str], pose: Pose,
                   palette: dict[str, Colour] | None = None, body: Colour | None = None):
    palette = PALETTE if palette is None else palette
    body = body or _jitter(rng, BODY_COLOURS[int(rng.integers(len(BODY_COLOURS)))], 8)

    def colour_of(part: str) -> Colour:
        return _jitter(rng, palette[attributes[f"{part}_colour"]], 10)

    parts = _creature_parts(attributes, pose, body, colour_of)
    for _, part in parts:
        canvas.paint(part)
    outline = np.concatenate([p.polygon for _, p in parts])
    return parts, outline


def render_example(rng: np.random.Generator, label: int, size: int = REFERENCE_SIZE,
                   occlusion_prob: float = 0.5
                   ) -> tuple[np.ndarray, dict[str, tuple[float, float, int]], tuple]:
    """One image of class `label` (see the module docstring)."""
    attributes = sample_attributes(rng, label)
    canvas = _Canvas(size)
    _background(rng, canvas)
    _clutter(rng, canvas, int(rng.integers(14, 26)))
    pose = _place(rng, size)
    _, outline = _draw_creature(rng, canvas, attributes, pose)
    centres = dict(PART_CENTRES)
    centres["beak"] = BEAK_CENTRES[attributes["beak_shape"]]
    xy = {name: pose([centre])[0] for name, centre in centres.items()}
    occluder = Image.new("L", (size, size), 0)
    if rng.uniform() < occlusion_prob:
        for _ in range(int(rng.integers(1, 3))):
            target = xy[PART_NAMES[int(rng.integers(len(PART_NAMES)))]]
            leaf = _leaf(rng, *(target + rng.normal(0, 6 * size / REFERENCE_SIZE, 2)),
                         rng.uniform(22, 40) * size / REFERENCE_SIZE)
            canvas.paint(leaf)
            ImageDraw.Draw(occluder).polygon([tuple(p) for p in leaf.polygon - 0.5], fill=255)
    covered = np.asarray(occluder) > 127
    parts = {}
    for name in PART_NAMES:
        x, y = (float(v) for v in xy[name])
        inside = 0 <= x < size and 0 <= y < size
        visible = inside and not covered[min(int(y), size - 1), min(int(x), size - 1)]
        parts[name] = (x, y, int(visible))
    lo = np.clip(outline.min(axis=0), 0, size)
    hi = np.clip(outline.max(axis=0), 0, size)
    return canvas.image(), parts, (float(lo[0]), float(lo[1]), float(hi[0] - lo[0]),
                                   float(hi[1] - lo[1]))


def _photo_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """A soft natural-looking scene: sky/ground gradient, fractal shading, blurred shapes."""
    yy = (np.arange(size, dtype=np.float32)[:, None, None] + 0.5) / size
    horizon = rng.uniform(0.3, 0.7)
    sky = np.float32(rng.uniform([90, 130, 170], [170, 200, 240]))
    ground = np.float32(rng.uniform([60, 70, 30], [150, 130, 90]))
    t = 1 / (1 + np.exp(-(yy - horizon) * rng.uniform(8, 30)))
    shade = sum(_smooth_noise(rng, size, cells, 1) / cells ** 0.5 for cells in (4, 8, 16, 32))
    img = (sky * (1 - t) + ground * t) * (1 + 0.2 * shade) + 8 * _smooth_noise(rng, size, 6, 3)
    pil = Image.fromarray(np.uint8(np.clip(img, 0, 255)))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(3, 8))):
        cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.05, 0.2) * size
        colour = tuple(int(v) for v in np.clip(ground * rng.uniform(0.5, 1.4, 3), 0, 255))
        draw.ellipse([cx - r, cy - r * rng.uniform(0.4, 1), cx + r, cy + r], fill=colour)
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 3.0) * size / 224)))


def _regular(cx: float, cy: float, r: float, n: int, star: bool = False) -> np.ndarray:
    t = -np.pi / 2 + 2 * np.pi * np.arange(2 * n if star else n) / (2 * n if star else n)
    radii = np.where(np.arange(len(t)) % 2 == 1, 0.45 * r, r) if star else np.full(len(t), r)
    return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], 1)


def _unseen_creature(rng: np.random.Generator, canvas: _Canvas, pose: Pose) -> None:
    """A creature-like figure whose parts have shapes and colours no creature has: a square
    body and head, a round beak, star tail and crown, triangular wings, in unseen colours."""
    def colour() -> Colour:
        return _jitter(rng, _UNSEEN_COLOURS[int(rng.integers(len(_UNSEEN_COLOURS)))], 10)

    body = colour()
    shapes = [
        _regular(0.0, 50.0, 14.0, 5, star=True),                      # tail
        np.array([(-10.0, 34.0), (-6.0, 34.0), (-6.0, 58.0), (-10.0, 58.0)]),   # legs
        np.array([(6.0, 34.0), (10.0, 34.0), (10.0, 58.0), (6.0, 58.0)]),
        np.array([(-24.0, -16.0), (-40.0, 24.0), (-20.0, 20.0)]),      # wings
        np.array([(24.0, -16.0), (40.0, 24.0), (20.0, 20.0)]),
    ]
    for polygon in shapes:
        canvas.paint(_Part(pose(polygon), colour()))
    canvas.paint(_Part(pose(np.array([(-20.0, -18.0), (20.0, -18.0), (20.0, 36.0),
                                      (-20.0, 36.0)])), body))
    canvas.paint(_Part(pose(_regular(0.0, 10.0, 11.0, 6)), colour()))          # belly
    canvas.paint(_Part(pose(np.array([(-15.0, -50.0), (15.0, -50.0), (15.0, -20.0),
                                      (-15.0, -20.0)])), body))
    canvas.paint(_Part(pose(_regular(0.0, -54.0, 11.0, 4, star=True)), colour()))  # crown
    for x in (-7.0, 7.0):
        canvas.paint(_Part(pose(np.array([(x - 4, -42.0), (x + 4, -42.0), (x + 4, -34.0),
                                          (x - 4, -34.0)])), colour()))
    canvas.paint(_Part(pose(_ellipse(0.0, -25.0, 6.0, 6.0)), colour()))        # beak


def render_ood(rng: np.random.Generator, kind: str, size: int = REFERENCE_SIZE) -> np.ndarray:
    """An out-of-distribution image: `kind` is one of `OOD_KINDS`."""
    if kind == "photo_like":
        return _photo_like(rng, size)
    canvas = _Canvas(size)
    _background(rng, canvas)
    _clutter(rng, canvas, int(rng.integers(14, 26)))
    if kind == "unseen_creatures":
        _unseen_creature(rng, canvas, _place(rng, size))
    elif kind != "backgrounds":
        raise ValueError(f"unknown OoD kind {kind!r}; expected one of {OOD_KINDS}")
    return canvas.image()


def describe() -> list[str]:
    """README lines: classes, attributes, parts, coordinates, OoD folders."""
    lines = ["Classes (attribute values of parts; '|' = exactly one of):"]
    for i, (name, options) in enumerate(CLASS_DEFINITIONS.items(), 1):
        lines.append(f"  {i:03d}.{name}: " + " | ".join(
            " and ".join(f"{k}={v}" for k, v in o.items()) for o in options))
    lines += ["", "Attributes (every option appears in every class unless it defines one):"]
    lines += [f"  {k}: {', '.join(v)}" for k, v in OPTIONS.items()]
    lines += ["", "Parts (part_id name): " + ", ".join(
        f"{i} {n}" for i, n in enumerate(PART_NAMES, 1)),
        "", "part_locs give each part's centre in float pixels from the top-left corner; a",
        "part whose centre a leaf covers is not visible (0). bounding_boxes.txt holds the",
        "creature's extent.",
        "ood/: backgrounds (clutter only), unseen_creatures (part shapes and colours no",
        "creature has),",
        "photo_like (soft natural scenes)."]
    return lines
