"""PIP-Net's two-stage TrivialAugment (Nauta et al., CVPR 2023) as stateless TF ops.

Every function works on ONE image, float32 `(H, W, 3)` with values in 0..255, inside
`tf.data.Dataset.map` (graph mode) or eagerly. Randomness comes only from stateless
ops driven by an explicit `seed` (int32/int64 tensor of shape `(2,)`), so equal seeds
give equal images.

The ops follow torchvision's `TrivialAugmentWide` applied to PIL images (SPEC section 5):
one op drawn uniformly, one of 31 magnitude bins (`linspace(0, max, 31)`) drawn uniformly,
and the sign flipped with probability 0.5 for signed ops. Geometric ops reproduce PIL's
nearest-neighbour affine warp pixel for pixel (fill 0). Colour ops keep float values
(PIL truncates to uint8 after each blend), so they are within one grey level of PIL.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence, Union

import tensorflow as tf

NUM_MAGNITUDE_BINS = 31
GEOMETRIC_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
COLOUR_OPS = {
    "no_shape": ("Identity", "Brightness", "Color", "Contrast", "Sharpness", "Posterize",
                 "AutoContrast", "Equalize"),
    "no_shape_with_color": ("Identity", "Brightness", "Color", "Contrast", "Sharpness",
                            "Posterize", "Solarize", "AutoContrast", "Equalize"),
}
_COLOR_MAX = {"no_shape": 0.02, "no_shape_with_color": 0.5}
_SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
           "Contrast", "Sharpness"}
# (R - img, S - img, colour variant) per dataset, SPEC section 5.
_DATASET_GEOMETRY = {
    "cub": (8, 4, "no_shape"),
    "cub_pretrain": (32, 4, "no_shape"),
    "cars": (32, 4, "no_shape_with_color"),
    "pets": (48, 8, "no_shape"),
    "partimagenet": (48, 8, "no_shape"),
}
SeedLike = Union[tf.Tensor, Sequence[int]]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Geometry of the two-view augmentation.

    Attributes:
      image_size: side of each output view (the reference's 224).
      resize_size: R, side of the initial square resize.
      crop_size: S, side of the shared RandomResizedCrop output.
      translate_px: largest TranslateX/TranslateY shift in pixels (reference: 16).
      colour_variant: "no_shape" or "no_shape_with_color" (CARS).
    """

    image_size: int
    resize_size: int
    crop_size: int
    translate_px: float = 16.0
    colour_variant: str = "no_shape"

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size!r}")
        if self.crop_size < self.image_size:
            raise ValueError(f"crop_size must be >= image_size={self.image_size}, "
                             f"got {self.crop_size!r}")
        if self.resize_size <= 0:
            raise ValueError(f"resize_size must be positive, got {self.resize_size!r}")
        if self.translate_px < 0:
            raise ValueError(f"translate_px must be >= 0, got {self.translate_px!r}")
        if self.colour_variant not in COLOUR_OPS:
            raise ValueError(f"colour_variant must be one of {sorted(COLOUR_OPS)}, "
                             f"got {self.colour_variant!r}")

    @classmethod
    def for_image_size(cls, image_size: int, dataset: str = "cub") -> "AugmentConfig":
        """SPEC section 5's table for `dataset` at a given output size `image_size`.

        "cub" (phase 2, crops): R = img+8, S = img+4; "cub_pretrain" and "cars":
        R = img+32, S = img+4 ("cars" uses the no_shape_with_color variant); "pets" and
        "partimagenet": R = img+48, S = img+8.

        Deviation: the reference's 16 px translation is fixed; here it is scaled as
        16 * image_size / 224, which is exactly 16 px at image_size 224.
        """
        if dataset not in _DATASET_GEOMETRY:
            raise ValueError(f"dataset must be one of {sorted(_DATASET_GEOMETRY)}, "
                             f"got {dataset!r}")
        extra_r, extra_s, variant = _DATASET_GEOMETRY[dataset]
        return cls(image_size=image_size, resize_size=image_size + extra_r,
                   crop_size=image_size + extra_s,
                   translate_px=16.0 * image_size / 224.0, colour_variant=variant)


# ----------------------------------------------------------------------------- helpers
def _seed(seed: SeedLike) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        raise ValueError(f"seed must be int32/int64, got dtype {seed.dtype!r}")
    if not seed.shape.is_compatible_with([2]):
        raise ValueError(f"seed must have shape (2,), got {seed.shape!r}")
    return tf.cast(seed, tf.int64)


def _image(image: tf.Tensor, channels: tuple[int, ...] = (3,)) -> tf.Tensor:
    """float32 `(H, W, C)` with C in `channels` (4: RGB + an object mask)."""
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3 or image.shape[-1] not in channels:
        wanted = " or ".join(str(c) for c in channels)
        raise ValueError(f"image must have shape (H, W, {wanted}), got {image.shape!r}")
    return tf.cast(image, tf.float32)


def _uniform(seed: tf.Tensor, shape: Sequence[int] = ()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, dtype=tf.float32)


def _randint(seed: tf.Tensor, low: tf.Tensor, high: tf.Tensor) -> tf.Tensor:
    """Uniform int32 in [low, high] (inclusive), scalar."""
    span = tf.cast(high - low + 1, tf.float32)
    draw = tf.cast(tf.floor(_uniform(seed) * span), tf.int32)
    return low + tf.minimum(draw, tf.cast(high - low, tf.int32))


def _affine(image: tf.Tensor, matrix: Sequence[tf.Tensor]) -> tf.Tensor:
    """Nearest-neighbour warp exactly as PIL's `Image.transform(AFFINE)`, fill 0.

    `matrix` = (a, b, c, d, e, f) maps an output pixel centre (u, v) = (x + .5, y + .5) to
    its source point (a u + b v + c, d u + e v + f) in continuous coordinates (pixel i
    covers [i, i+1)); the source pixel is its floor. PIL evaluates this in 16.16 fixed
    point, which decides ties at pixel borders, so we do the same. `(H, W, C)` -> same.
    """
    a, b, c, d, e, f = [tf.cast(m, tf.float64) for m in matrix]

    def fix(v: tf.Tensor) -> tf.Tensor:  # int32 suffices for images under 32768 px
        return tf.cast(tf.floor(v * 65536.0 + 0.5), tf.int32)

    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    ys, xs = tf.range(h)[:, tf.newaxis], tf.range(w)[tf.newaxis, :]
    sx = (fix(c + 0.5 * (a + b)) + ys * fix(b) + xs * fix(a)) // 65536
    sy = (fix(f + 0.5 * (d + e)) + ys * fix(e) + xs * fix(d)) // 65536
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    index = tf.where(inside, sy * w + sx, h * w)
    pixels = tf.reshape(image, tf.stack([h * w, shape[2]]))
    pixels = tf.concat([pixels, tf.zeros_like(pixels[:1])], axis=0)  # the fill row
    return tf.ensure_shape(tf.gather(pixels, index), image.shape)


def _geometric(name: str, image: tf.Tensor, m: tf.Tensor) -> tf.Tensor:
    """Applies geometric op `name` with signed magnitude `m` (float32 scalar)."""
    one, zero = tf.constant(1.0, tf.float64), tf.constant(0.0, tf.float64)
    m = tf.cast(m, tf.float64)
    if name == "ShearX":  # torchvision: shear angle atan(m) about the top-left corner.
        return _affine(image, (one, m, zero, zero, one, zero))
    if name == "ShearY":
        return _affine(image, (one, zero, zero, m, one, zero))
    if name in ("TranslateX", "TranslateY"):  # torchvision uses int(magnitude).
        shift = tf.cast(tf.cast(m, tf.int32), tf.float64)
        if name == "TranslateX":
            return _affine(image, (one, zero, -shift, zero, one, zero))
        return _affine(image, (one, zero, zero, zero, one, -shift))
    if name == "Rotate":  # PIL Image.rotate: counter-clockwise by m degrees about (W/2, H/2).
        shape = tf.cast(tf.shape(image), tf.float64)
        cx, cy = shape[1] / 2.0, shape[0] / 2.0
        rad = tf.cast(m, tf.float64) * (math.pi / 180.0)
        cos, sin = tf.cos(rad), tf.sin(rad)
        return _affine(image, (cos, -sin, cx - cos * cx + sin * cy,
                               sin, cos, cy - sin * cx - cos * cy))
    return image


def _grey(image: tf.Tensor) -> tf.Tensor:
    """ITU-R 601-2 luma, rounded as PIL's convert("L"): `(H, W, 3)` -> `(H, W, 1)`."""
    luma = tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), -1, keepdims=True)
    return tf.round(luma)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL Image.blend(degenerate, image, factor), clipped to 0..255."""
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _smooth(image: tf.Tensor) -> tf.Tensor:
    """PIL ImageFilter.SMOOTH (3x3, centre 5, /13, rounded); borders keep their values."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, tf.newaxis, tf.newaxis], (1, 1, 3, 1))
    inner = tf.nn.depthwise_conv2d(image[tf.newaxis], kernel, (1, 1, 1, 1), "VALID")[0]
    inner = tf.pad(tf.round(inner), [[1, 1], [1, 1], [0, 0]])
    ones = tf.pad(tf.ones_like(inner[1:-1, 1:-1, :1]), [[1, 1], [1, 1], [0, 0]])
    return ones * inner + (1.0 - ones) * image


def _quantize(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.int32)


def _autocontrast(image: tf.Tensor) -> tf.Tensor:
    """PIL ImageOps.autocontrast (cutoff 0): per channel stretch [min, max] to [0, 255]."""
    lo = tf.reduce_min(image, axis=(0, 1))
    hi = tf.reduce_max(image, axis=(0, 1))
    ok = hi > lo
    scale = tf.where(ok, 255.0 / tf.where(ok, hi - lo, 1.0), 1.0)
    offset = tf.where(ok, lo, 0.0)
    return tf.clip_by_value((image - offset) * scale, 0.0, 255.0)


def _equalize(image: tf.Tensor) -> tf.Tensor:
    """PIL ImageOps.equalize per channel on the image rounded to integers."""
    q = _quantize(image)
    flat = tf.reshape(q + tf.constant([0, 256, 512]), [-1])
    hist = tf.reshape(tf.math.bincount(flat, minlength=768, maxlength=768), (3, 256))
    nonzero = hist > 0
    last = 255 - tf.argmax(tf.reverse(tf.cast(nonzero, tf.int32), [1]), axis=1,
                           output_type=tf.int32)
    last_count = tf.gather(hist, last, batch_dims=1)
    step = (tf.reduce_sum(hist, 1) - last_count) // 255
    keep = (tf.reduce_sum(tf.cast(nonzero, tf.int32), 1) <= 1) | (step == 0)
    safe_step = tf.maximum(step, 1)[:, tf.newaxis]
    lut = (safe_step // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // safe_step
    lut = tf.where(keep[:, tf.newaxis], tf.range(256)[tf.newaxis], tf.minimum(lut, 255))
    return tf.cast(tf.gather(tf.reshape(lut, [-1]), q + tf.constant([0, 256, 512])),
                   tf.float32)


def _colour(name: str, image: tf.Tensor, m: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """Applies colour op `name`; `m` is the signed magnitude, `k` the int32 bin."""
    if name == "Brightness":
        return _blend(tf.zeros_like(image), image, 1.0 + m)
    if name == "Color":
        return _blend(tf.tile(_grey(image), (1, 1, 3)), image, 1.0 + m)
    if name == "Contrast":
        mean = tf.floor(tf.reduce_mean(_grey(image)) + 0.5)
        return _blend(tf.fill(tf.shape(image), mean), image, 1.0 + m)
    if name == "Sharpness":
        return _blend(_smooth(image), image, 1.0 + m)
    if name == "Posterize":  # bits = 8 - round(k / 5); keep the top `bits` bits.
        bits = 8 - tf.cast(tf.round(tf.cast(k, tf.float32) / 5.0), tf.int32)
        drop = tf.bitwise.left_shift(tf.constant(1), 8 - bits)
        return tf.cast((_quantize(image) // drop) * drop, tf.float32)
    if name == "Solarize":  # threshold = linspace(255, 0, 31)[k]; invert pixels >= it.
        threshold = 255.0 - 8.5 * tf.cast(k, tf.float32)
        return tf.where(image >= threshold, 255.0 - image, image)
    if name == "AutoContrast":
        return _autocontrast(image)
    if name == "Equalize":
        return _equalize(image)
    return image


def _trivial_augment(image: tf.Tensor, seed: SeedLike, ops: Sequence[str],
                     max_magnitude: dict, apply: Callable, op: Optional[str],
                     magnitude_bin: Optional[int], sign: Optional[int],
                     channels: tuple[int, ...] = (3,)) -> tf.Tensor:
    """Draws (op, bin, sign) from `seed` unless forced, then applies the op."""
    image = _image(image, channels)
    op_seed, bin_seed, sign_seed = tf.unstack(tf.random.split(_seed(seed), 3))
    if op is not None and op not in ops:
        raise ValueError(f"op must be one of {list(ops)}, got {op!r}")
    if magnitude_bin is not None and not 0 <= int(magnitude_bin) < NUM_MAGNITUDE_BINS:
        raise ValueError(f"magnitude_bin must be in [0, {NUM_MAGNITUDE_BINS - 1}], "
                         f"got {magnitude_bin!r}")
    if sign is not None and sign not in (-1, 1):
        raise ValueError(f"sign must be -1 or +1, got {sign!r}")
    if magnitude_bin is None:
        k = tf.random.stateless_uniform((), bin_seed, 0, NUM_MAGNITUDE_BINS, tf.int32)
    else:
        k = tf.constant(int(magnitude_bin), tf.int32)
    if sign is None:
        s = tf.where(_uniform(sign_seed) < 0.5, -1.0, 1.0)
    else:
        s = tf.constant(float(sign))

    def branch(name: str) -> Callable[[], tf.Tensor]:
        def run() -> tf.Tensor:
            top = max_magnitude.get(name, 0.0)
            m = tf.cast(k, tf.float32) * top / (NUM_MAGNITUDE_BINS - 1)
            m = m * s if name in _SIGNED else m
            return tf.ensure_shape(apply(name, image, m, k), image.shape)
        return run

    if op is not None:
        return branch(op)()
    index = tf.random.stateless_uniform((), op_seed, 0, len(ops), tf.int32)
    return tf.switch_case(index, [branch(name) for name in ops])


# ----------------------------------------------------------------------- public API
def geometric_trivial_augment(image: tf.Tensor, seed: SeedLike, translate_px: float = 16.0,
                              op: Optional[str] = None, magnitude_bin: Optional[int] = None,
                              sign: Optional[int] = None) -> tf.Tensor:
    """TrivialAugmentWideNoColor: one of GEOMETRIC_OPS, `(H, W, C)` -> `(H, W, C)`, C = 3
    or 4 (RGB + an object mask, warped with the image; the fill is 0).

    Magnitudes: ShearX/ShearY m in linspace(0, 0.5) (shear coefficient m about the
    top-left corner), TranslateX/Y int(linspace(0, translate_px)) pixels, Rotate
    linspace(0, 60) degrees counter-clockwise about the centre; all signed. `op`,
    `magnitude_bin` (0..30) and `sign` (+1/-1) force the draw.
    """
    if translate_px < 0:
        raise ValueError(f"translate_px must be >= 0, got {translate_px!r}")
    tops = {"ShearX": 0.5, "ShearY": 0.5, "TranslateX": float(translate_px),
            "TranslateY": float(translate_px), "Rotate": 60.0}
    return _trivial_augment(image, seed, GEOMETRIC_OPS, tops,
                            lambda name, x, m, k: _geometric(name, x, m),
                            op, magnitude_bin, sign, channels=(3, 4))


def colour_trivial_augment(image: tf.Tensor, seed: SeedLike, variant: str = "no_shape",
                           op: Optional[str] = None, magnitude_bin: Optional[int] = None,
                           sign: Optional[int] = None) -> tf.Tensor:
    """TrivialAugmentWideNoShape[WithColor]: one colour op, `(H, W, 3)` -> `(H, W, 3)`.

    Brightness/Contrast/Sharpness blend with factor 1 +- linspace(0, 0.5); Color with
    1 +- linspace(0, 0.02) ("no_shape") or linspace(0, 0.5) ("no_shape_with_color");
    Posterize keeps 8 - round(k/5) bits; Solarize (with_color only) inverts values >=
    linspace(255, 0)[k]; AutoContrast and Equalize per channel.
    """
    if variant not in COLOUR_OPS:
        raise ValueError(f"variant must be one of {sorted(COLOUR_OPS)}, got {variant!r}")
    tops = {"Brightness": 0.5, "Color": _COLOR_MAX[variant], "Contrast": 0.5,
            "Sharpness": 0.5}
    return _trivial_augment(image, seed, COLOUR_OPS[variant], tops, _colour,
                            op, magnitude_bin, sign)


def random_horizontal_flip(image: tf.Tensor, seed: SeedLike) -> tf.Tensor:
    """Mirrors `(H, W, C)` left-right with probability 0.5."""
    image = tf.convert_to_tensor(image)
    return tf.cond(_uniform(_seed(seed)) < 0.5, lambda: tf.reverse(image, [1]),
                   lambda: image)


def random_resized_crop(image: tf.Tensor, seed: SeedLike, size: int,
                        scale: tuple = (0.95, 1.0),
                        ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)) -> tf.Tensor:
    """torchvision RandomResizedCrop: `(H, W, C)` -> `(size, size, C)`, bilinear; C = 3,
    or 4 with an object mask.

    Ten tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)); the first crop that
    fits is placed uniformly, otherwise a centre crop clamped to `ratio` is used.
    """
    image = _image(image, (3, 4))
    area_seed, pos_seed = tf.unstack(tf.random.split(_seed(seed), 2))
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    u = _uniform(area_seed, (10, 2))
    target = hf * wf * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    cw = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)  # round half to even
    ch = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    valid = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    in_ratio = wf / hf
    fb_w = tf.where(in_ratio > ratio[1], tf.cast(tf.round(hf * ratio[1]), tf.int32), w)
    fb_h = tf.where(in_ratio < ratio[0], tf.cast(tf.round(wf / ratio[0]), tf.int32), h)
    found = tf.reduce_any(valid)
    crop_h = tf.where(found, ch[first], fb_h)
    crop_w = tf.where(found, cw[first], fb_w)
    i_seed, j_seed = tf.unstack(tf.random.split(pos_seed, 2))
    top = tf.where(found, _randint(i_seed, 0, h - crop_h), (h - crop_h) // 2)
    left = tf.where(found, _randint(j_seed, 0, w - crop_w), (w - crop_w) // 2)
    crop = tf.slice(image, tf.stack([top, left, 0]),
                    tf.stack([crop_h, crop_w, image.shape[-1]]))
    return tf.image.resize(crop, (size, size), "bilinear", antialias=True)


def random_crop(image: tf.Tensor, seed: SeedLike, size: int) -> tf.Tensor:
    """torchvision RandomCrop(size): `(H, W, C)` -> `(size, size, C)`, uniform offset."""
    image = tf.convert_to_tensor(image)
    i_seed, j_seed = tf.unstack(tf.random.split(_seed(seed), 2))
    shape = tf.shape(image)
    top = _randint(i_seed, 0, shape[0] - size)
    left = _randint(j_seed, 0, shape[1] - size)
    crop = tf.slice(image, tf.stack([top, left, 0]), tf.stack([size, size, shape[2]]))
    return tf.ensure_shape(crop, (size, size, image.shape[-1]))


def two_view_augment(image: tf.Tensor, seed: SeedLike, config: AugmentConfig,
                     mask: tf.Tensor | None = None) -> tuple[tf.Tensor, ...]:
    """PIP-Net's two views of one image: `(H, W, 3)` -> 2 x `(img, img, 3)` float32.

    Shared: resize to (R, R) (skipped when the static shape already is (R, R, 3)), one
    geometric TrivialAugment op, horizontal flip p=0.5, RandomResizedCrop to (S, S) with
    scale (0.95, 1). Per view: one colour TrivialAugment op and a RandomCrop to `img`.
    Outputs are clipped to 0..255.

    With `mask` (`(H, W, 1)`, 1 on the object, 0 on its background) the mask goes through
    the same geometric ops and crops as the image (the affine fill counts as background)
    and the result is (view1, view2, mask1, mask2), masks `(img, img, 1)` in [0, 1]. The
    views are the same as without it.
    """
    image = _image(image)
    size_r = config.resize_size
    if mask is not None:
        image = tf.concat([image, tf.cast(mask, tf.float32)], axis=-1)
    if image.shape[:2].as_list() != [size_r, size_r]:
        image = tf.image.resize(image, (size_r, size_r), "bilinear", antialias=True)
    geo, flip, rrc, c1, k1, c2, k2 = tf.unstack(tf.random.split(_seed(seed), 7))
    x = geometric_trivial_augment(image, geo, config.translate_px)
    x = random_horizontal_flip(x, flip)
    x = random_resized_crop(x, rrc, config.crop_size)
    views, masks = [], []
    for colour_seed, crop_seed in ((c1, k1), (c2, k2)):
        v = colour_trivial_augment(x[..., :3], colour_seed, config.colour_variant)
        if mask is not None:
            v = tf.concat([v, x[..., 3:]], axis=-1)
        v = random_crop(v, crop_seed, config.image_size)
        views.append(tf.clip_by_value(v[..., :3], 0.0, 255.0))
        masks.append(tf.clip_by_value(v[..., 3:], 0.0, 1.0))
    if mask is None:
        return views[0], views[1]
    return views[0], views[1], masks[0], masks[1]
