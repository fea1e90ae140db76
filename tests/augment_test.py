"""Tests for pipnet_tf.data.augment against NumPy and PIL references."""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from pipnet_tf.data import augment
from pipnet_tf.data.augment import AugmentConfig

SEED = (3, 7)


def _random_image(h=40, w=48, seed=0, low=0, high=256):
    rng = np.random.default_rng(seed)
    return rng.integers(low, high, (h, w, 3)).astype(np.uint8)


def _np_warp(img, inv):
    """Nearest warp with PIL's convention: out(x, y) = img[floor(inv @ (x+.5, y+.5, 1))]."""
    h, w = img.shape[:2]
    a, b, c, d, e, f = inv
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    sx = np.floor(a * xs + b * ys + c).astype(int)
    sy = np.floor(d * xs + e * ys + f).astype(int)
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    out = np.zeros_like(img)
    out[inside] = img[sy[inside], sx[inside]]
    return out


def _np_rotate_inv(deg, h, w):
    t = math.radians(deg)
    cx, cy = w / 2, h / 2
    cos, sin = math.cos(t), math.sin(t)
    return (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)


def _geo(img, op, k, sign, translate_px=16.0, seed=SEED):
    out = augment.geometric_trivial_augment(img.astype(np.float32), seed, translate_px,
                                            op=op, magnitude_bin=k, sign=sign)
    return out.numpy()


def _colour(img, op, k=30, sign=1, variant="no_shape_with_color"):
    out = augment.colour_trivial_augment(img.astype(np.float32), SEED, variant,
                                         op=op, magnitude_bin=k, sign=sign)
    return out.numpy()


def _dot_image(size=64, row=32, col=48, half=1):
    img = np.zeros((size, size, 3), np.uint8)
    img[row - half:row + half + 1, col - half:col + half + 1] = 255
    return img


def _centroid(img):
    ys, xs = np.nonzero(img[..., 0] > 0)
    return xs.mean() + 0.5, ys.mean() + 0.5  # continuous coordinates (pixel centres)


# ------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("sign", [1, -1])
def test_rotate_max_bin_turns_dot_by_60_degrees_about_centre(sign):
    img = _dot_image()
    out = _geo(img, "Rotate", 30, sign)
    # Dot centre (48.5, 32.5) relative to the image centre (32, 32); y points down, so a
    # counter-clockwise turn by t maps (dx, dy) to (cx + cos dx + sin dy, cy - sin dx + cos dy).
    t = math.radians(60 * sign)
    dx, dy = 16.5, 0.5
    want = (32 + math.cos(t) * dx + math.sin(t) * dy, 32 - math.sin(t) * dx + math.cos(t) * dy)
    got = _centroid(out)
    np.testing.assert_allclose(got, want, atol=0.5)
    np.testing.assert_array_equal(out, _np_warp(img, _np_rotate_inv(60 * sign, 64, 64)))


@pytest.mark.parametrize("op,axis", [("TranslateX", 0), ("TranslateY", 1)])
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("translate_px", [16.0, 8.0])
def test_translate_max_bin_moves_by_exactly_translate_px(op, axis, sign, translate_px):
    img = _dot_image(row=30, col=30)
    shift = np.subtract(_centroid(_geo(img, op, 30, sign, translate_px)), _centroid(img))
    want = np.zeros(2)
    want[axis] = sign * translate_px
    np.testing.assert_array_equal(shift, want)


def test_translate_truncates_like_torchvision_int():
    img = _dot_image(row=30, col=30)
    for k in (1, 2, 15, 29):
        shift = _centroid(_geo(img, "TranslateX", k, -1))[0] - _centroid(img)[0]
        assert shift == -int(16.0 * k / 30)  # int() truncates towards zero


@pytest.mark.parametrize("op,k,sign", [("ShearX", 30, 1), ("ShearX", 11, -1),
                                       ("ShearY", 30, -1), ("ShearY", 23, 1)])
def test_shear_matches_numpy_affine_map(op, k, sign):
    img = _random_image()
    m = sign * 0.5 * k / 30
    inv = (1, m, 0, 0, 1, 0) if op == "ShearX" else (1, 0, 0, m, 1, 0)
    np.testing.assert_array_equal(_geo(img, op, k, sign), _np_warp(img, inv))


@pytest.mark.parametrize("op,k,sign", [("ShearX", 30, 1), ("ShearY", 17, -1),
                                       ("TranslateX", 29, 1), ("TranslateY", 30, -1),
                                       ("Rotate", 30, 1), ("Rotate", 13, -1)])
def test_geometric_ops_match_pil(op, k, sign):
    img = _random_image()
    pil = Image.fromarray(img)
    size = (img.shape[1], img.shape[0])
    m = sign * k / 30 * {"ShearX": 0.5, "ShearY": 0.5, "TranslateX": 16,
                         "TranslateY": 16, "Rotate": 60}[op]
    if op == "Rotate":
        ref = pil.rotate(m, resample=Image.NEAREST)
    else:
        inv = {"ShearX": (1, m, 0, 0, 1, 0), "ShearY": (1, 0, 0, m, 1, 0),
               "TranslateX": (1, 0, -int(m), 0, 1, 0),
               "TranslateY": (1, 0, 0, 0, 1, -int(m))}[op]
        ref = pil.transform(size, Image.AFFINE, inv, resample=Image.NEAREST)
    np.testing.assert_array_equal(_geo(img, op, k, sign), np.asarray(ref))


def test_random_translations_never_exceed_translate_px():
    img = _dot_image(row=30, col=30)
    allowed = {s * int(16.0 * k / 30) for k in range(31) for s in (1, -1)}
    shifts = set()
    for i in range(40):
        out = augment.geometric_trivial_augment(img.astype(np.float32), (i, 5), 16.0,
                                                op="TranslateX").numpy()
        dx, dy = np.subtract(_centroid(out), _centroid(img))
        assert dy == 0 and abs(dx) <= 16 and dx in allowed
        shifts.add(dx)
    assert any(s > 0 for s in shifts) and any(s < 0 for s in shifts)


def test_random_geometric_draws_come_from_the_op_table():
    img = _random_image(16, 16, seed=5)
    candidates = [_geo(img, op, k, s) for op in augment.GEOMETRIC_OPS[1:]
                  for k in range(31) for s in (1, -1)] + [img.astype(np.float32)]
    draw = tf.function(lambda seed: augment.geometric_trivial_augment(img, seed))
    for i in range(25):
        out = draw(tf.constant([i, 11])).numpy()
        assert any(np.array_equal(out, c) for c in candidates), f"seed {i}"


# -------------------------------------------------------------------------- colour
@pytest.mark.parametrize("k", [0, 3, 12, 30])
def test_posterize_and_solarize_match_numpy(k):
    img = _random_image()
    bits = 8 - round(k / 5)
    np.testing.assert_array_equal(_colour(img, "Posterize", k),
                                  img & ~np.uint8(2 ** (8 - bits) - 1))
    threshold = np.linspace(255.0, 0.0, 31)[k]
    np.testing.assert_array_equal(_colour(img, "Solarize", k),
                                  np.where(img >= threshold, 255 - img, img))


@pytest.mark.parametrize("k,sign", [(30, 1), (30, -1), (7, 1)])
def test_brightness_factor_matches_numpy(k, sign):
    img = _random_image()
    factor = 1 + sign * 0.5 * k / 30
    np.testing.assert_allclose(_colour(img, "Brightness", k, sign),
                               np.clip(img * factor, 0, 255), atol=1e-3)


@pytest.mark.parametrize("op,enhance", [("Brightness", ImageEnhance.Brightness),
                                        ("Color", ImageEnhance.Color),
                                        ("Contrast", ImageEnhance.Contrast),
                                        ("Sharpness", ImageEnhance.Sharpness)])
@pytest.mark.parametrize("k,sign", [(30, 1), (19, -1)])
def test_blend_ops_match_pil_within_one_level(op, enhance, k, sign):
    img = (_random_image(low=0, high=180) + 40).astype(np.uint8)
    ref = np.asarray(enhance(Image.fromarray(img)).enhance(1 + sign * 0.5 * k / 30))
    # PIL truncates to uint8 after the blend; we keep floats.
    got = _colour(img, op, k, sign)
    assert np.all(got - ref >= -1e-3) and np.all(got - ref < 1.0 + 1e-3)


def test_colour_magnitude_depends_on_variant():
    img = _random_image()
    grey = np.round(img @ np.array([0.299, 0.587, 0.114]))
    for variant, top in (("no_shape", 0.02), ("no_shape_with_color", 0.5)):
        got = _colour(img, "Color", 30, 1, variant)
        want = np.clip(grey[..., None] + (1 + top) * (img - grey[..., None]), 0, 255)
        np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_equalize_matches_pil(seed):
    img = _random_image(64, 64, seed=seed, low=20, high=200)
    img[..., 2] = 7  # a constant channel is left unchanged
    img[:8, :, 0] = 255
    np.testing.assert_array_equal(_colour(img, "Equalize"),
                                  np.asarray(ImageOps.equalize(Image.fromarray(img))))


def test_autocontrast_matches_pil_within_one_level():
    img = _random_image(low=30, high=180)
    img[..., 1] = 99
    ref = np.asarray(ImageOps.autocontrast(Image.fromarray(img)))
    got = _colour(img, "AutoContrast")
    np.testing.assert_allclose(got, ref, atol=1.0)  # PIL truncates, we keep floats
    assert got[..., 0].min() == 0 and got[..., 0].max() == 255


def test_solarize_is_only_in_the_with_color_variant():
    assert "Solarize" not in augment.COLOUR_OPS["no_shape"]
    with pytest.raises(ValueError, match="Solarize"):
        augment.colour_trivial_augment(_random_image(), SEED, "no_shape", op="Solarize")


# --------------------------------------------------------------------------- crops
def test_random_resized_crop_falls_back_to_clamped_centre_crop():
    img = np.tile(np.arange(100, dtype=np.float32)[None, :, None], (10, 1, 3))
    out = augment.random_resized_crop(img, SEED, 8).numpy()
    # No crop of >= 95% area fits with ratio <= 4/3: centre crop 10 x round(10 * 4/3).
    want = tf.image.resize(img[:, 43:56], (8, 8), "bilinear", antialias=True).numpy()
    np.testing.assert_allclose(out, want, atol=1e-4)


def test_random_resized_crop_keeps_most_of_a_square_image():
    img = np.tile(np.arange(40, dtype=np.float32)[None, :, None], (40, 1, 3))
    for i in range(10):
        out = augment.random_resized_crop(img, (i, 1), 36).numpy()
        assert out.shape == (36, 36, 3)
        assert out[:, 0].max() <= 2.5 and out[:, -1].min() >= 36.5


# ------------------------------------------------------------------------ two views
def test_two_views_share_the_geometric_step(monkeypatch):
    monkeypatch.setattr(augment, "colour_trivial_augment",
                        lambda image, seed, variant="no_shape": image)
    config = AugmentConfig(image_size=32, resize_size=48, crop_size=40)
    img = _random_image(48, 48, seed=2)
    for i in range(4):
        v1, v2 = [v.numpy() for v in augment.two_view_augment(img, (i, 9), config)]
        slack = config.crop_size - config.image_size
        matches = [(di, dj) for di in range(-slack, slack + 1)
                   for dj in range(-slack, slack + 1)
                   if np.array_equal(v1[max(di, 0):32 + min(di, 0), max(dj, 0):32 + min(dj, 0)],
                                     v2[max(-di, 0):32 + min(-di, 0),
                                        max(-dj, 0):32 + min(-dj, 0)])]
        assert matches, f"seed {i}: views are not crops of one image"


def test_two_view_augment_shapes_range_and_determinism():
    config = AugmentConfig.for_image_size(32, "cars")
    img = _random_image(50, 70, seed=4)
    v1, v2 = augment.two_view_augment(img, SEED, config)
    for v in (v1, v2):
        assert v.dtype == tf.float32 and v.shape == (32, 32, 3)
        assert 0.0 <= float(tf.reduce_min(v)) and float(tf.reduce_max(v)) <= 255.0
    w1, w2 = augment.two_view_augment(img, SEED, config)
    np.testing.assert_array_equal(v1, w1)
    np.testing.assert_array_equal(v2, w2)
    u1, _ = augment.two_view_augment(img, (4, 8), config)
    assert not np.array_equal(v1, u1)
    assert not np.array_equal(v1, v2)


@pytest.mark.parametrize("seed", [(0, 1), (3, 7), (5, 2), (11, 4)])
def test_object_mask_follows_the_views_geometry(seed):
    """An image that is white exactly where its mask is 1: after the shared geometric op,
    flip and crops, each view is still white where its mask is (the colour ops only
    scale values and keep black at most mid-grey), and the views equal those without a
    mask."""
    config = AugmentConfig.for_image_size(32)
    mask = np.zeros((48, 48, 1), np.float32)
    mask[10:30, 14:40] = 1.0
    image = np.repeat(mask * 255.0, 3, axis=-1)
    v1, v2, m1, m2 = augment.two_view_augment(image, seed, config, mask=mask)
    plain1, plain2 = augment.two_view_augment(image, seed, config)
    np.testing.assert_array_equal(v1, plain1)
    np.testing.assert_array_equal(v2, plain2)
    for view, view_mask in ((v1, m1), (v2, m2)):
        assert view_mask.shape == (32, 32, 1) and view_mask.dtype == tf.float32
        white = view.numpy()[..., 0] > 127.5
        on_object = view_mask.numpy()[..., 0] > 0.5
        assert 0.05 < on_object.mean() < 0.95
        assert np.mean(white == on_object) > 0.95


def test_augment_runs_in_graph_mode_with_symbolic_shapes():
    config = AugmentConfig.for_image_size(16)
    fn = tf.function(lambda x, s: augment.two_view_augment(x, s, config),
                     input_signature=[tf.TensorSpec((None, None, 3), tf.float32),
                                      tf.TensorSpec((2,), tf.int64)])
    v1, v2 = fn(tf.zeros((30, 20, 3)), tf.constant([1, 2], tf.int64))
    assert v1.shape == v2.shape == (16, 16, 3)


# --------------------------------------------------------------------- config, errors
def test_config_table():
    assert AugmentConfig.for_image_size(224) == AugmentConfig(224, 232, 228, 16.0, "no_shape")
    assert AugmentConfig.for_image_size(224, "cub_pretrain").resize_size == 256
    cars = AugmentConfig.for_image_size(224, "cars")
    assert (cars.resize_size, cars.crop_size, cars.colour_variant) == (
        256, 228, "no_shape_with_color")
    pets = AugmentConfig.for_image_size(64, "pets")
    assert (pets.resize_size, pets.crop_size) == (112, 72)
    assert pets.translate_px == pytest.approx(16 * 64 / 224)


@pytest.mark.parametrize("kwargs", [dict(op="Invert"), dict(magnitude_bin=31),
                                    dict(magnitude_bin=-1), dict(sign=0)])
def test_bad_forced_draws_raise(kwargs):
    with pytest.raises(ValueError):
        augment.geometric_trivial_augment(_random_image(), SEED, **kwargs)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="'mauve'"):
        augment.colour_trivial_augment(_random_image(), SEED, variant="mauve")
    with pytest.raises(ValueError, match="seed"):
        augment.geometric_trivial_augment(_random_image(), (1, 2, 3))
    with pytest.raises(ValueError, match="image"):
        augment.geometric_trivial_augment(np.zeros((8, 8)), SEED)
    with pytest.raises(ValueError, match="'imagenet'"):
        AugmentConfig.for_image_size(224, "imagenet")
    with pytest.raises(ValueError, match="crop_size"):
        AugmentConfig(image_size=32, resize_size=40, crop_size=30)
