"""tf.data input pipelines for PIP-Net (Nauta et al., CVPR 2023).

Images are channels-last float32 RGB in 0..255 (no normalisation here: the backbone's
own preprocessing applies). Training yields two augmented views per image
(`augment.two_view_augment`) from a `TwoViewSource`, whose every epoch is a function of
(seed, epoch); evaluation yields one plain resize (SPEC section 5).
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


def expanded_box(box: tf.Tensor, seed: tf.Tensor, margin: float,
                 probability: float = 1.0) -> tf.Tensor:
    """`box` (y0, x0, y1, x1 fractions) grown on each side by U(0, margin) times its own
    height or width (independently per side), clipped to the image; with `probability`
    < 1 only that fraction of draws is grown, the others return `box` itself."""
    u = tf.random.stateless_uniform((5,), seed, 0.0, 1.0)
    grow = tf.cast(u[4] < probability, tf.float32)
    u = u[:4] * (margin * grow)
    h, w = box[2] - box[0], box[3] - box[1]
    grown = box + tf.stack([-u[0] * h, -u[1] * w, u[2] * h, u[3] * w])
    return tf.clip_by_value(grown, 0.0, 1.0)


def box_mask(box: tf.Tensor, region: tf.Tensor, size: int | tf.Tensor) -> tf.Tensor:
    """The object mask of an image cropped to `region` and resized to (size, size):
    `(size, size, 1)` float32, 1 at the pixel centres inside `box`. Both boxes are
    (y0, x0, y1, x1) fractions of the whole image."""
    height = tf.maximum(region[2] - region[0], 1e-6)
    width = tf.maximum(region[3] - region[1], 1e-6)
    centres = (tf.range(size, dtype=tf.float32) + 0.5) / tf.cast(size, tf.float32)
    ys = region[0] + centres * height
    xs = region[1] + centres * width
    inside_y = tf.cast((ys >= box[0]) & (ys <= box[2]), tf.float32)
    inside_x = tf.cast((xs >= box[1]) & (xs <= box[3]), tf.float32)
    return (inside_y[:, tf.newaxis] * inside_x[tf.newaxis, :])[..., tf.newaxis]


class TwoViewSource:
    """The training input: `(view1, view2, label)` batches, epoch by epoch.

    Epoch e is a function of `seed` and e alone: the images are shuffled with a seed
    derived from (seed, e), and each image's augmentation is drawn from stateless seeds
    folded from (seed, e, its position in the epoch). So

    - a run resumed at (epoch, step) rebuilds its input and skips `step` batches (of
      unaugmented images, which is cheap) to see exactly the batches an uninterrupted run
      would, with no iterator state to save;
    - `tf.distribute` input pipelines each keep every n-th image of the shuffled epoch
      (`num_shards`, `shard_index`): together they see each image once per epoch, and
      their k-th batches together are the unsharded k-th global batch, augmented
      identically.

    Shapes: view1, view2 `(B, img, img, 3)` float32 in 0..255 with img =
    `config.image_size`; label `(B,)` int32. Each image is decoded and resized to (R, R)
    once (cached in memory when `cache`). Memory: the cache and the full-size shuffle
    buffer each hold N x R x R x 3 bytes (about 1 GB each for CUB's 5994 images at
    R = 232). The shuffle's seeds, like every tf.data seed, combine with TensorFlow's
    global seed (`keras.utils.set_random_seed`), which the trainer sets to `--seed`.

    Args:
      paths: image files (any format `tf.io.decode_image` reads).
      labels: `(N,)` integer class ids.
      config: augmentation geometry (`AugmentConfig.for_image_size`).
      batch_size: pairs per (global) batch.
      seed: seed for the shuffle order and the augmentations.
      shuffle: shuffle every epoch.
      drop_remainder: drop the last partial batch of every epoch (the reference's
        drop_last=True); with False only one epoch at a time, unsharded.
      cache: keep the decoded, resized uint8 images in memory.
      boxes: optional float `(N, 4)` crop boxes y0, x0, y1, x1 as fractions of each image
        (`geometry.normalized_boxes`), applied before the resize (CUB's bounding boxes).
      box_margin: with `boxes`, every epoch crops each box grown by a random U(0, margin)
        of its size on every side (`expanded_box`) instead of the box itself, so the views
        show the object at several scales with some of its surroundings. The whole
        images are then cached at 2R and cropped per element. 0 crops the box exactly
        (SPEC §5).
      box_margin_prob: the fraction of those crops that are grown; the rest are the
        exact box (the scale the test crops have).
      crop_to_boxes: with `boxes`, crop to them (default); False keeps the whole images
        and uses the boxes for `object_masks` only.
      object_masks: with `boxes`, batches are `(view1, view2, label, mask1, mask2)`: each
        view's object mask `(B, img, img, 1)`, 1 inside the box (`box_mask`), warped
        with the view (`two_view_augment`); the model's background loss uses it.
    """

    def __init__(self, paths: Sequence[str], labels: np.ndarray, config: AugmentConfig,
                 batch_size: int, seed: int, shuffle: bool = True,
                 drop_remainder: bool = True, cache: bool = True,
                 boxes: np.ndarray | None = None, box_margin: float = 0.0,
                 box_margin_prob: float = 1.0, crop_to_boxes: bool = True,
                 object_masks: bool = False):
        paths, labels = _validated(paths, labels, batch_size)
        if object_masks and boxes is None:
            raise ValueError("object_masks needs boxes (the objects' bounding boxes).")
        if drop_remainder and batch_size > len(paths):
            raise ValueError(f"batch_size={batch_size!r} is larger than the dataset "
                             f"({len(paths)} images) with drop_remainder=True: no batches")
        if not isinstance(config, AugmentConfig):
            raise ValueError(f"config must be an AugmentConfig, got {config!r}")
        self.config = config
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_remainder = bool(drop_remainder)
        self.num_examples = len(paths)
        crop = boxes is not None and bool(crop_to_boxes)
        self.box_margin = float(box_margin) if crop else 0.0
        if not 0.0 <= box_margin_prob <= 1.0:
            raise ValueError(f"box_margin_prob must be in [0, 1], received {box_margin_prob!r}")
        self.box_margin_prob = float(box_margin_prob)
        self.object_masks = bool(object_masks)
        self._crop = crop
        if self.box_margin > 0 or self.object_masks:
            # Cache whole images with their boxes; crop (a random grown box) per element.
            size = 2 * config.resize_size if crop else config.resize_size
            images = tf.data.Dataset.zip((_images(paths, size, None),
                                          tf.data.Dataset.from_tensor_slices(
                                              np.asarray(boxes, np.float32))))
        else:
            images = _images(paths, config.resize_size, boxes)
        base = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(labels)))
        self._base = base.cache() if cache else base
        logging.info("TwoViewSource: %d images, batch %d, R=%d S=%d img=%d, %s",
                     len(paths), batch_size, config.resize_size, config.crop_size,
                     config.image_size, config.colour_variant)

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch."""
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (1 if rest and not self.drop_remainder else 0)

    def _epoch(self, epoch: int) -> tf.data.Dataset:
        """Unaugmented (key, image, label) of one epoch, in its shuffled order; `key` is
        the image's augmentation seed, folded from (seed, epoch, position)."""
        epoch_key = tf.random.experimental.stateless_fold_in(
            tf.constant([self.seed, 0], tf.int64), epoch)
        ds = self._base
        if self.shuffle:
            # A Python int: tf.data's shuffle cannot take a tensor seed while a global seed
            # is set (it fails to trace).
            shuffle_seed = (self.seed * 1_000_003 + epoch) % (2**31 - 1)
            ds = ds.shuffle(self.num_examples, seed=shuffle_seed, reshuffle_each_iteration=False)
        if self.drop_remainder:
            ds = ds.take(self.steps_per_epoch * self.batch_size)
        return ds.enumerate().map(
            lambda position, element: (
                tf.random.experimental.stateless_fold_in(epoch_key, position), *element))

    def epochs(self, first: int, end: int, skip_batches: int = 0, num_shards: int = 1,
               shard_index: int = 0, batch_size: int | None = None) -> tf.data.Dataset:
        """The batches of global 0-based epochs `first` … `end` − 1, starting after
        `skip_batches` global batches of the first.

        With `num_shards` > 1 (one shard per `tf.distribute` input pipeline) this keeps
        the images at positions ≡ `shard_index` (mod `num_shards`) and batches them by
        `batch_size` (the per-replica batch size; default: the global one).
        """
        if not 0 <= first < end:
            raise ValueError(f"Need 0 <= first < end, received first={first}, end={end}.")
        if not 0 <= skip_batches < self.steps_per_epoch:
            raise ValueError(f"skip_batches must be in [0, {self.steps_per_epoch}), "
                             f"received {skip_batches}.")
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index must be in [0, {num_shards}), received "
                             f"{shard_index}.")
        if not self.drop_remainder and (end - first > 1 or num_shards > 1):
            raise ValueError("Without drop_remainder only one epoch at a time, unsharded.")
        if num_shards > 1 and self.batch_size % num_shards:
            raise ValueError(f"The batch size {self.batch_size} is not divisible by the "
                             f"{num_shards} input pipelines.")
        ds = self._epoch(first)
        for epoch in range(first + 1, end):
            ds = ds.concatenate(self._epoch(epoch))
        if skip_batches:
            ds = ds.skip(skip_batches * self.batch_size)
        if num_shards > 1:
            ds = ds.shard(num_shards, shard_index)
        config, margin, margin_prob = self.config, self.box_margin, self.box_margin_prob
        masks, crop, size = self.object_masks, self._crop, self.config.resize_size

        # The augmentation has no Python control flow on tensors; skipping AutoGraph
        # conversion cuts the tracing time from ~2.5 s to ~0.5 s.
        @tf.autograph.experimental.do_not_convert
        def augment(key: tf.Tensor, image, label: tf.Tensor) -> tuple:
            if margin > 0 or masks:
                image, box = image
                region = tf.constant([0.0, 0.0, 1.0, 1.0])
                if margin > 0:
                    box_key, key = tf.unstack(tf.random.split(key, 2))
                    region = expanded_box(box, box_key, margin, margin_prob)
                elif crop:
                    region = box
                image = tf.cast(image, tf.float32)
                if masks:  # a 4th channel, cropped and resized with the image
                    whole = tf.constant([0.0, 0.0, 1.0, 1.0])
                    image = tf.concat([image, box_mask(box, whole, tf.shape(image)[0])], -1)
                if crop:
                    image = tf.image.resize(crop_fraction(image, region), (size, size),
                                            "bilinear", antialias=True)
                if masks:
                    view1, view2, mask1, mask2 = two_view_augment(
                        image[..., :3], key, config, image[..., 3:])
                    return view1, view2, label, mask1, mask2
            view1, view2 = two_view_augment(tf.cast(image, tf.float32), key, config)
            return view1, view2, label

        ds = ds.map(augment, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size or self.batch_size, drop_remainder=self.drop_remainder)
        return ds.prefetch(AUTOTUNE)

    def distributed_epochs(self, strategy: tf.distribute.Strategy, first: int, end: int,
                           skip_batches: int = 0):
        """`epochs` for `strategy`: the strategy's own datasets for the default one, else
        one sharded pipeline per worker (`distribute_datasets_from_function`), each
        batched by the per-replica batch size."""
        if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
            return self.epochs(first, end, skip_batches)
        replicas = strategy.num_replicas_in_sync
        if self.batch_size % replicas:
            raise ValueError(f"The batch size {self.batch_size} is not divisible by the "
                             f"{replicas} replicas of the {type(strategy).__name__}.")

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            return self.epochs(first, end, skip_batches, context.num_input_pipelines,
                               context.input_pipeline_id,
                               context.get_per_replica_batch_size(self.batch_size))

        return strategy.distribute_datasets_from_function(dataset_fn)


def two_view_dataset(paths: Sequence[str], labels: np.ndarray, config: AugmentConfig,
                     batch_size: int, seed: int, epoch: int = 0, **kwargs) -> tf.data.Dataset:
    """One epoch (global 0-based `epoch`) of `TwoViewSource(paths, labels, config,
    batch_size, seed, **kwargs)`: `(view1, view2, label)` batches."""
    return TwoViewSource(paths, labels, config, batch_size, seed, **kwargs).epochs(
        epoch, epoch + 1)


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
