"""tf.data input pipelines for PIP-Net (Nauta et al., CVPR 2023).

Images are channels-last float32 RGB in 0..255 (no normalisation here: the backbone's
own preprocessing applies). Training yields two augmented views per image
(`augment.two_view_augment`); evaluation yields one plain resize (SPEC section 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from pipnet_tf.data.augment import AugmentConfig, two_view_augment

AUTOTUNE = tf.data.AUTOTUNE


def decode_image(path: tf.Tensor) -> tf.Tensor:
    """Reads and decodes one image file: scalar string -> float32 `(H, W, 3)`, 0..255 RGB."""
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape((None, None, 3))
    return tf.cast(image, tf.float32)


def crop_fraction(image: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
    """Crops `(H, W, C)` to `box` = (y0, x0, y1, x1) in fractions of H and W.

    Fractions from `geometry.normalized_boxes` round back to the same whole pixels as the
    reference's PIL crop; the crop keeps at least one pixel.
    """
    shape = tf.shape(image)
    hw = tf.cast(tf.stack([shape[0], shape[1], shape[0], shape[1]]), tf.float32)
    y0, x0, y1, x1 = tf.unstack(tf.cast(tf.round(tf.cast(box, tf.float32) * hw), tf.int32))
    y0 = tf.clip_by_value(y0, 0, shape[0] - 1)
    x0 = tf.clip_by_value(x0, 0, shape[1] - 1)
    y1 = tf.clip_by_value(y1, y0 + 1, shape[0])
    x1 = tf.clip_by_value(x1, x0 + 1, shape[1])
    return image[y0:y1, x0:x1]


def _load_resized(path: tf.Tensor, size: int, box: tf.Tensor | None = None) -> tf.Tensor:
    """Decode, crop to `box` (fractions, optional) and resize to `(size, size, 3)`
    (bilinear, antialiased), rounded to uint8.

    Rounding mirrors the reference, whose PIL Resize output is uint8; it also keeps the
    in-memory cache 4x smaller than float32.
    """
    image = decode_image(path)
    if box is not None:
        image = crop_fraction(image, box)
    image = tf.image.resize(image, (size, size), "bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _images(paths: list[str], size: int, boxes: np.ndarray | None) -> tf.data.Dataset:
    """Decoded, cropped, resized uint8 images in the order of `paths`."""
    if boxes is None:
        return tf.data.Dataset.from_tensor_slices(paths).map(
            lambda p: _load_resized(p, size), num_parallel_calls=AUTOTUNE, deterministic=True)
    boxes = np.asarray(boxes, np.float32)
    if boxes.shape != (len(paths), 4):
        raise ValueError(f"boxes must have shape ({len(paths)}, 4) to match paths, "
                         f"got {boxes.shape!r}")
    return tf.data.Dataset.from_tensor_slices((paths, boxes)).map(
        lambda p, b: _load_resized(p, size, b), num_parallel_calls=AUTOTUNE,
        deterministic=True)


def _validated(paths: Sequence[str], labels: np.ndarray,
               batch_size: int) -> tuple[list[str], np.ndarray]:
    paths = [str(p) for p in paths]
    labels = np.asarray(labels)
    if not paths:
        raise ValueError(f"paths must not be empty, got {paths!r}")
    if labels.ndim != 1 or labels.shape[0] != len(paths):
        raise ValueError(f"labels must have shape ({len(paths)},) to match paths, "
                         f"got {labels.shape!r}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return paths, labels.astype(np.int32)


def expanded_box(box: tf.Tensor, seed: tf.Tensor, margin: float) -> tf.Tensor:
    """`box` (y0, x0, y1, x1 fractions) grown on each side by U(0, margin) times its own
    height or width (independently per side), clipped to the image."""
    u = tf.random.stateless_uniform((4,), seed, 0.0, margin)
    h, w = box[2] - box[0], box[3] - box[1]
    grown = box + tf.stack([-u[0] * h, -u[1] * w, u[2] * h, u[3] * w])
    return tf.clip_by_value(grown, 0.0, 1.0)


def two_view_dataset(paths: Sequence[str], labels: np.ndarray, config: AugmentConfig,
                     batch_size: int, seed: int, shuffle: bool = True,
                     drop_remainder: bool = True, cache: bool = True,
                     boxes: np.ndarray | None = None,
                     box_margin: float = 0.0) -> tf.data.Dataset:
    """Training pipeline yielding `(view1, view2, label)` batches.

    Shapes: view1, view2 `(B, img, img, 3)` float32 in 0..255 with img =
    `config.image_size`; label `(B,)` int32. Each image is decoded and resized to
    (R, R) once (cached in memory when `cache`), shuffled with `seed` and reshuffled each
    epoch. Per-element augmentation seeds come from `tf.data.Dataset.random(seed)`,
    re-drawn each epoch, so the same `seed` gives the same batches run after run while
    successive epochs differ. Memory: the cache and the full-size shuffle buffer each
    hold N x R x R x 3 bytes (about 1 GB each for CUB's 5994 images at R = 232).

    Args:
      paths: image files (any format `tf.io.decode_image` reads).
      labels: `(N,)` integer class ids.
      config: augmentation geometry (`AugmentConfig.for_image_size`).
      batch_size: pairs per batch.
      seed: seed for the shuffle order and the augmentations.
      shuffle: shuffle (and reshuffle every epoch).
      drop_remainder: drop the last partial batch (the reference's drop_last=True).
      cache: keep the decoded, resized uint8 images in memory.
      boxes: optional float `(N, 4)` crop boxes y0, x0, y1, x1 as fractions of each image
        (`geometry.normalized_boxes`), applied before the resize (CUB's bounding boxes).
      box_margin: with `boxes`, each epoch crops the box grown by a random U(0, margin)
        of its size on every side (`expanded_box`) instead of the box itself, so the views
        show the object at several scales with some of its surroundings. The full images
        are then cached at 2R and cropped per element. 0 crops the box exactly (SPEC §5).
    """
    paths, labels = _validated(paths, labels, batch_size)
    if drop_remainder and batch_size > len(paths):
        raise ValueError(f"batch_size={batch_size!r} is larger than the dataset "
                         f"({len(paths)} images) with drop_remainder=True: no batches")
    if not isinstance(config, AugmentConfig):
        raise ValueError(f"config must be an AugmentConfig, got {config!r}")
    seed = int(seed)
    size_r = config.resize_size
    jitter = boxes is not None and box_margin > 0
    if jitter:  # cache whole images, crop a random grown box per element
        boxes = np.asarray(boxes, np.float32)
        images = tf.data.Dataset.zip((_images(paths, 2 * size_r, None),
                                      tf.data.Dataset.from_tensor_slices(boxes)))
    else:
        images = _images(paths, size_r, boxes)
    ds = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(labels)))
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    seeds = seeds.batch(2, drop_remainder=True)
    ds = tf.data.Dataset.zip((ds, seeds))

    # The augmentation has no Python control flow on tensors; skipping AutoGraph
    # conversion cuts the tracing time from ~2.5 s to ~0.5 s.
    @tf.autograph.experimental.do_not_convert
    def augment(element: tuple, pair_seed: tf.Tensor) -> tuple:
        image, label = element
        if jitter:
            image, box = image
            box_seed, pair_seed = tf.unstack(tf.random.split(pair_seed, 2))
            image = tf.image.resize(
                crop_fraction(tf.cast(image, tf.float32),
                              expanded_box(box, box_seed, box_margin)),
                (size_r, size_r), "bilinear", antialias=True)
        view1, view2 = two_view_augment(tf.cast(image, tf.float32), pair_seed, config)
        return view1, view2, label

    ds = ds.map(augment, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    logging.info("two_view_dataset: %d images, batch %d, R=%d S=%d img=%d, %s",
                 len(paths), batch_size, size_r, config.crop_size, config.image_size,
                 config.colour_variant)
    return ds.prefetch(AUTOTUNE)


def eval_dataset(paths: Sequence[str], labels: np.ndarray, image_size: int,
                 batch_size: int, cache: bool = True,
                 boxes: np.ndarray | None = None) -> tf.data.Dataset:
    """Evaluation pipeline yielding `(image, label)` batches in the order of `paths`.

    Shapes: image `(B, image_size, image_size, 3)` float32 in 0..255 (a plain resize that
    ignores the aspect ratio, after the optional `boxes` crop as in `two_view_dataset`),
    label `(B,)` int32; the last batch may be smaller.
    """
    paths, labels = _validated(paths, labels, batch_size)
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    images = _images(paths, image_size, boxes)
    ds = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(labels)))
    if cache:
        ds = ds.cache()
    ds = ds.map(lambda image, label: (tf.cast(image, tf.float32), label),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=False).prefetch(AUTOTUNE)
