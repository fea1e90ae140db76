"""Rendering of the built-in synthetic "parts" images (NumPy + PIL only).

Every image shows one object: a grey body ellipse and a brown stick (distractor parts
present in every image) plus the class-defining parts of its class (`CLASS_DEFINITIONS`).
Images are (image_size, image_size, 3) uint8 RGB. Coordinates are float pixels with the
origin at the image's top-left corner; pixel (row i, column j) covers [j, j+1) x [i, i+1).
"""

from __future__ import annotations

import colorsys
import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

PART_NAMES: tuple[str, ...] = (
    "red_disc", "blue_square", "green_triangle", "yellow_star", "striped_disc",
    "checker_square", "purple_cross", "orange_ring", "grey_body", "brown_stick")
CLASS_PART_NAMES: tuple[str, ...] = PART_NAMES[:8]
DISTRACTOR_PART_NAMES: tuple[str, ...] = ("grey_body", "brown_stick")
# Class name -> alternative part sets; an image of the class shows exactly one of them.
CLASS_DEFINITIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    "RedDisc_BlueSquare": (("red_disc", "blue_square"),),
    "GreenTriangle_YellowStar": (("green_triangle", "yellow_star"),),
    "Striped_or_Checker": (("striped_disc",), ("checker_square",)),
    "RedDisc_GreenTriangle": (("red_disc", "green_triangle"),),
    "PurpleCross_OrangeRing": (("purple_cross", "orange_ring"),),
    "OrangeRing_BlueSquare": (("orange_ring", "blue_square"),),
}
CLASS_NAMES: tuple[str, ...] = tuple(CLASS_DEFINITIONS)
OOD_KINDS: tuple[str, ...] = ("backgrounds", "unknown_shapes", "body_only")

_Colour = tuple[int, int, int]
_Style = tuple[str, str, _Colour | None, str | None]  # (name, shape kind, colour, texture)
_Box = tuple[float, float, float, float]  # x, y, width, height in pixels
# Part name -> (shape kind, base colour or None for black/white texture, texture or None).
_PART_STYLE: dict[str, tuple[str, _Colour | None, str | None]] = {
    "red_disc": ("disc", (215, 35, 35), None), "blue_square": ("square", (35, 75, 215), None),
    "green_triangle": ("triangle", (30, 165, 55), None),
    "yellow_star": ("star", (245, 205, 20), None), "striped_disc": ("disc", None, "stripes"),
    "checker_square": ("square", None, "checker"), "purple_cross": ("cross", (140, 45, 185), None),
    "orange_ring": ("ring", (250, 135, 15), None), "grey_body": ("ellipse", (128, 128, 128), None),
    "brown_stick": ("bar", (115, 70, 30), None)}
# Shapes and colours unlike any part, for the "unknown_shapes" OoD images.
_UNKNOWN_STYLE: tuple[tuple[str, _Colour], ...] = (
    ("hexagon", (0, 205, 220)), ("ellipse", (245, 245, 245)),
    ("rhombus", (250, 110, 190)), ("pentagon", (0, 115, 115)))
_UNKNOWN_BODY: _Colour = (60, 60, 105)
# Shape kind -> (half-extent in units of the part radius r, circumradius in units of r).
_KIND_SIZE = {"disc": (1.0, 1.0), "ring": (1.1, 1.1), "square": (0.9, 1.27),
              "triangle": (1.3, 1.3), "star": (1.4, 1.4), "cross": (1.05, 1.12),
              "hexagon": (1.0, 1.0), "pentagon": (1.05, 1.05), "rhombus": (1.1, 1.1),
              "ellipse": (1.15, 1.15)}
_AVOID_COLOURS = np.array(
    [c for _, c, _ in _PART_STYLE.values() if c is not None]
    + [c for _, c in _UNKNOWN_STYLE] + [(20, 20, 20), (240, 240, 240)], np.float32)


@dataclasses.dataclass(frozen=True)
class _Shape:
    """One drawn shape; geometry in final-image pixels, `rx`/`ry` are half-extents."""

    kind: str
    cx: float
    cy: float
    rx: float
    ry: float
    angle: float
    colour: _Colour | None
    texture: str | None = None


def _regular(n: int, radii: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """Unit polygon with n vertices (radii cycled, first vertex up), (n, 2)."""
    t = -np.pi / 2 + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], 1) * np.resize(radii, n)[:, None]


_W = 0.36  # half-width of the cross's arms
# Shape kind -> unit polygon, scaled by (rx, ry) when drawn.
_POLYGONS = {"disc": _regular(48), "ring": _regular(48), "ellipse": _regular(48),
             "square": np.array([(-1.0, -1.0), (1, -1), (1, 1), (-1, 1)]),
             "bar": np.array([(-1.0, -1.0), (1, -1), (1, 1), (-1, 1)]),
             "rhombus": _regular(4) * (0.6, 1.0), "triangle": _regular(3),
             "pentagon": _regular(5), "hexagon": _regular(6), "star": _regular(10, (1.0, 0.5)),
             "cross": np.array([(-_W, -1), (_W, -1), (_W, -_W), (1, -_W), (1, _W), (_W, _W),
                                (_W, 1), (-_W, 1), (-_W, _W), (-1, _W), (-1, -_W), (-_W, -_W)])}


def _outline(s: _Shape) -> np.ndarray:
    """Polygon of a shape (not the ring's hole), (K, 2) x/y in final-image pixels."""
    c, sn = np.cos(s.angle), np.sin(s.angle)
    return (_POLYGONS[s.kind] * (s.rx, s.ry)) @ np.array([[c, sn], [-sn, c]]) + (s.cx, s.cy)


def _mask(s: _Shape, size: int, ss: int) -> Image.Image:
    """Binary "L" mask (size*ss, size*ss) of a shape drawn at `ss`x supersampling."""
    img = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(img)
    draw.polygon([tuple(p) for p in _outline(s) * ss - 0.5], fill=255)
    if s.kind == "ring":
        hole = dataclasses.replace(s, kind="disc", rx=0.5 * s.rx, ry=0.5 * s.ry)
        draw.polygon([tuple(p) for p in _outline(hole) * ss - 0.5], fill=0)
    return img


def _paint(canvas: np.ndarray, s: _Shape, mask: Image.Image, ss: int) -> None:
    """Alpha-composites a shape (solid or textured) into a (H*ss, W*ss, 3) float canvas."""
    box = mask.getbbox()
    if box is None:
        return
    x0, y0, x1, y1 = box
    alpha = np.asarray(mask.crop(box), np.float32)[..., None] / 255.0
    if s.texture is None:
        fill = np.asarray(s.colour, np.float32)
    else:
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        xs, ys = (xs + 0.5) / ss - s.cx, (ys + 0.5) / ss - s.cy
        c, sn = np.cos(s.angle), np.sin(s.angle)
        u, v = xs * c + ys * sn, -xs * sn + ys * c
        if s.texture == "stripes":
            odd = np.floor(u / (0.4 * s.rx) + 0.5) % 2 == 1
        else:
            cell = 2 * s.rx / 3
            odd = (np.floor((u + s.rx) / cell) + np.floor((v + s.rx) / cell)) % 2 == 1
        dark, light = s.colour or (20, 20, 20), (240, 240, 240)
        fill = np.where(odd[..., None], np.float32(light), np.float32(dark))
    region = canvas[y0:y1, x0:x1]
    region += alpha * (fill - region)


def _jitter(rng: np.random.Generator, colour: _Colour, amount: int = 12) -> _Colour:
    """Colour with small uniform per-channel jitter."""
    jittered = np.clip(np.add(colour, rng.integers(-amount, amount + 1, 3)), 0, 255)
    return tuple(int(v) for v in jittered)


def _bg_colour(rng: np.random.Generator) -> np.ndarray:
    """Muted background colour far from every part colour, (3,) float32."""
    while True:
        rgb = np.float32(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.15, 0.45),
                                             rng.uniform(0.62, 0.95))) * 255
        if np.min(np.linalg.norm(_AVOID_COLOURS - rgb, axis=1)) > 70:
            return rgb


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random background (gradient, noise, blotches or faint stripes), (size, size, 3) float32."""
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    base = _bg_colour(rng)
    kind = rng.integers(4)
    if kind == 0:  # smooth gradient between two muted colours
        th = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(th) + yy * np.sin(th)
        t = ((t - t.min()) / max(float(np.ptp(t)), 1e-6))[..., None]
        bg = base * (1 - t) + _bg_colour(rng) * t
    elif kind == 1:  # low-contrast noise: a small random grid, bicubically upsampled
        cells = int(rng.integers(3, 9))
        grid = np.uint8(np.clip(128 + 40 * rng.normal(size=(cells, cells, 3)), 0, 255))
        noise = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), np.float32)
        bg = base + (noise - 128) / 4
    elif kind == 2:  # soft blotches
        bg = np.broadcast_to(base, (size, size, 3)).copy()
        for _ in range(int(rng.integers(3, 7))):
            cx, cy, sig = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.25)
            g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sig**2))[..., None]
            bg += g * rng.uniform(-35, 35, 3).astype(np.float32)
    else:  # faint stripes
        th, period = rng.uniform(0, np.pi), rng.uniform(0.08, 0.2)
        wave = np.sin(2 * np.pi * (xx * np.cos(th) + yy * np.sin(th)) / period)
        bg = base + rng.uniform(6, 14) * wave[..., None]
    bg = bg + rng.normal(0, rng.uniform(1.5, 4.0), (size, size, 3))
    return np.clip(bg, 0, 255).astype(np.float32)


def _layout(rng: np.random.Generator, size: int, styles: Sequence[_Style]
            ) -> tuple[_Shape, _Shape, list[tuple[str, _Shape]]]:
    """Samples body, stick and non-overlapping parts (rejection sampling); final-pixel units."""
    s = float(size)
    for _ in range(200):
        a = 0.3 * s * rng.uniform(0.85, 1.15)
        body = _Shape("ellipse", s / 2 + rng.uniform(-0.07, 0.07) * s,
                      s / 2 + rng.uniform(-0.07, 0.07) * s, a, a * rng.uniform(0.55, 0.75),
                      rng.uniform(0, np.pi), _PART_STYLE["grey_body"][1])
        half, th = 0.19 * s * rng.uniform(0.8, 1.25), rng.uniform(0, np.pi)
        ext = half * abs(np.cos(th)) + 2, half * abs(np.sin(th)) + 2
        stick = _Shape("bar", rng.uniform(ext[0], s - ext[0]), rng.uniform(ext[1], s - ext[1]),
                       half, max(0.025 * s, 1.0), th, _PART_STYLE["brown_stick"][1])
        along = (body.cx - stick.cx) * np.cos(th) + (body.cy - stick.cy) * np.sin(th)
        near = np.clip(along, -half, half)
        if np.hypot(body.cx - stick.cx - near * np.cos(th),
                    body.cy - stick.cy - near * np.sin(th)) < stick.ry + 0.04 * s:
            continue  # the stick would hide the body's annotated centre
        keep_clear = [(body.cx, body.cy, 0.05 * s), (stick.cx, stick.cy, 0.05 * s)]
        placed: list[tuple[str, _Shape]] = []
        for name, kind, colour, texture in styles:
            r = 0.125 * s * rng.uniform(0.8, 1.25)  # radius: 12.8-20 px parts at 64 px
            reach = _KIND_SIZE[kind][1] * r  # circumradius: spacing and image bounds
            for _ in range(60):
                rad, phi = np.sqrt(rng.uniform()) * 1.25, rng.uniform(0, 2 * np.pi)
                ex, ey = rad * np.cos(phi) * body.rx, rad * np.sin(phi) * body.ry
                c, sn = np.cos(body.angle), np.sin(body.angle)
                x, y = body.cx + ex * c - ey * sn, body.cy + ex * sn + ey * c
                if not (reach + 1 <= x <= s - reach - 1 and reach + 1 <= y <= s - reach - 1):
                    continue
                if all(np.hypot(x - px, y - py) >= reach + pr for px, py, pr in keep_clear):
                    break
            else:
                break
            keep_clear.append((x, y, 0.9 * reach))
            rx = _KIND_SIZE[kind][0] * r
            angle = rng.uniform(0, 2 * np.pi)
            ry = 0.6 * rx if kind == "ellipse" else rx
            placed.append((name, _Shape(kind, x, y, rx, ry, angle, colour, texture)))
        else:
            return body, stick, placed
    raise RuntimeError(f"could not lay out {len(styles)} parts in a {size}px image")


def _occlude(rng: np.random.Generator, canvas: np.ndarray, bg: np.ndarray, target: _Shape,
             target_mask: Image.Image, centres: Sequence[tuple[float, float]], size: int, ss: int
             ) -> bool:
    """Hides 10-40% of `target` under a background-coloured blob that spares every centre."""
    part = np.asarray(target_mask) > 127
    area = int(part.sum())
    for _ in range(30 if area else 0):
        rb, phi = target.rx * rng.uniform(0.45, 0.7), rng.uniform(0, 2 * np.pi)
        dist = target.rx * rng.uniform(0.7, 1.1)
        bx, by = target.cx + dist * np.cos(phi), target.cy + dist * np.sin(phi)
        if any(np.hypot(bx - x, by - y) < rb + 1.0 for x, y in centres):
            continue
        blob = _Shape("ellipse", bx, by, rb, rb * rng.uniform(0.7, 1.0),
                      rng.uniform(0, np.pi), None)
        blob_mask = _mask(blob, size, ss)
        frac = np.count_nonzero(part & (np.asarray(blob_mask) > 127)) / area
        if 0.1 <= frac <= 0.4:
            alpha = np.asarray(blob_mask, np.float32)[..., None] / 255.0
            canvas += alpha * (bg - canvas)
            return True
    return False


def _compose(rng: np.random.Generator, size: int, styles: Sequence[_Style],
             body_colour: _Colour | None, stick: bool, occlusion_prob: float
             ) -> tuple[np.ndarray, dict[str, _Shape], _Box]:
    """Renders background + object; returns uint8 (size, size, 3), named shapes, bbox x,y,w,h."""
    ss = 4 if size <= 96 else 2 if size <= 256 else 1  # supersampling for anti-aliasing
    bg = np.repeat(np.repeat(_background(rng, size), ss, 0), ss, 1)
    canvas = bg.copy()
    body, stick_shape, parts = _layout(rng, size, styles)
    drawn: list[tuple[str, _Shape]] = []
    if body_colour is not None:
        drawn.append(("grey_body", dataclasses.replace(body, colour=_jitter(rng, body_colour))))
    if stick:
        stick_shape = dataclasses.replace(stick_shape, colour=_jitter(rng, stick_shape.colour))
        drawn.append(("brown_stick", stick_shape))
    for name, shape in parts:  # textured parts: jitter the dark tone only
        colour = _jitter(rng, shape.colour) if shape.colour else (int(rng.integers(10, 40)),) * 3
        drawn.append((name, dataclasses.replace(shape, colour=colour)))
    masks = {name: _mask(shape, size, ss) for name, shape in drawn}
    for name, shape in drawn:
        _paint(canvas, shape, masks[name], ss)
    if parts and rng.uniform() < occlusion_prob:
        target = parts[int(rng.integers(len(parts)))][0]
        _occlude(rng, canvas, bg, dict(drawn)[target], masks[target],
                 [(sh.cx, sh.cy) for _, sh in drawn], size, ss)
    boxes = np.array([m.getbbox() or (0, 0, size * ss, size * ss) for m in masks.values()]) / ss
    lo, hi = boxes[:, :2].min(0), boxes[:, 2:].max(0)
    bbox = (float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1]))
    image = canvas.reshape(size, ss, size * ss * 3).sum(1).reshape(size, size, ss, 3).sum(2) / ss**2
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), dict(drawn), bbox


def render_example(rng: np.random.Generator, class_index: int, image_size: int, *,
                   occlusion_prob: float = 0.2
                   ) -> tuple[np.ndarray, dict[str, tuple[float, float, int]], _Box]:
    """Renders one image of class `class_index` (0-based index into CLASS_NAMES).

    Returns:
        image: uint8 (image_size, image_size, 3) RGB.
        parts: every name in PART_NAMES -> (x, y, visible); (0.0, 0.0, 0) when absent.
        bbox: (x, y, width, height) float pixels around all object parts, body included.
    """
    if not 0 <= class_index < len(CLASS_NAMES):
        raise ValueError(f"class_index must be in [0, {len(CLASS_NAMES)}), got {class_index!r}")
    options = CLASS_DEFINITIONS[CLASS_NAMES[class_index]]
    chosen = options[int(rng.integers(len(options)))]
    styles = [(chosen[i], *_PART_STYLE[chosen[i]]) for i in rng.permutation(len(chosen))]
    image, shapes, bbox = _compose(rng, image_size, styles,
                                   _PART_STYLE["grey_body"][1], True, occlusion_prob)
    parts = {n: (float(shapes[n].cx), float(shapes[n].cy), 1) if n in shapes else (0.0, 0.0, 0)
             for n in PART_NAMES}
    return image, parts, bbox


def render_ood(rng: np.random.Generator, kind: str, image_size: int) -> np.ndarray:
    """Renders one out-of-distribution image of `kind` (in OOD_KINDS), uint8 (H, W, 3)."""
    if kind == "backgrounds":
        return np.clip(np.rint(_background(rng, image_size)), 0, 255).astype(np.uint8)
    if kind == "body_only":
        return _compose(rng, image_size, [], _PART_STYLE["grey_body"][1], True, 0.0)[0]
    if kind == "unknown_shapes":
        picks = rng.choice(len(_UNKNOWN_STYLE), int(rng.integers(2, 4)), replace=False)
        styles = [(f"unknown_{i}", _UNKNOWN_STYLE[i][0], _UNKNOWN_STYLE[i][1], None) for i in picks]
        body = _UNKNOWN_BODY if rng.uniform() < 0.5 else None
        return _compose(rng, image_size, styles, body, False, 0.0)[0]
    raise ValueError(f"unknown OoD kind {kind!r}; expected one of {OOD_KINDS}")


def describe() -> list[str]:
    """README lines: classes, parts, coordinates, OoD folders."""
    lines = ["Classes (defined only by which class parts are present; '|' = exactly one of):"]
    for i, (name, opts) in enumerate(CLASS_DEFINITIONS.items(), 1):
        lines.append(f"  {i:03d}.{name}: " + " | ".join(" + ".join(o) for o in opts))
    lines += ["", "Parts (part_id name):"]
    lines += [f"  {i} {n}" + ("  (distractor, in every image)" * (n in DISTRACTOR_PART_NAMES))
              for i, n in enumerate(PART_NAMES, 1)]
    lines += ["", "Coordinates are float pixels from the top-left image corner; part_locs give",
              "each part's centre (the orange ring's centre is its hole). About occlusion_prob",
              "of the images have one class part 10-40% hidden by a background-coloured blob.",
              "ood/: backgrounds (no object), unknown_shapes (unfamiliar shapes/colours),",
              "body_only (distractor parts only)."]
    return lines
