"""The datasets of a training run (SPEC §5), built from its `TrainConfig`.

Every source (built-in synthetic, CUB, Cars, Pets, image folders, tfds builders) is found
through the registry (`pipnet_tf.data.registry`), validated once
(`pipnet_tf.data.decode.prepare_images`: odd images converted, unreadable ones skipped
with one warning naming them) and fed to the same pipelines (`pipnet_tf.data.pipeline`)
with the dataset's crop policy and augmentation. Training, evaluation, explanations and
the export checks all read their images from here, so they all see the same images.
"""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from pipnet_tf.config import TrainConfig
from pipnet_tf.data import augment, geometry, pipeline, registry
from pipnet_tf.data.cub import ImageRecords
from pipnet_tf.data.decode import prepare_images
from pipnet_tf.data.records import make_records
from pipnet_tf.data.sources import DatasetRequest, DatasetSource, DatasetUnavailableError

__all__ = ["DatasetUnavailableError", "ImageSet", "TrainData", "build_data",
           "dataset_request", "image_set_from_files"]

CONVERTED_DIR = "converted"  # where odd images are converted to PNG, under --cache_dir


@dataclasses.dataclass
class ImageSet:
    """Unaugmented images of one split, as the model sees them (optional crop, then a
    plain resize to `image_size`).

    Attributes:
        paths: N files to decode (converted copies where the original needed it).
        originals: the N files of the dataset itself, for display.
        labels: int32 (N,).
        boxes: float32 (N, 4) crop boxes y0, x0, y1, x1 as fractions, or None.
        part_locs: float32 (N, P, 3) x, y, visible in model-input pixels (P = 0 without
            part annotations; parts outside the crop are not visible).
        object_boxes: float32 (N, 4) the dataset's object bounding boxes as x_min, y_min,
            x_max, y_max in model-input pixels (clipped to the crop), NaN rows where an
            image has none; None when not known.
    """

    paths: list[str]
    originals: list[str]
    labels: np.ndarray
    boxes: np.ndarray | None
    part_locs: np.ndarray
    image_size: int
    cache: bool = False
    _datasets: dict = dataclasses.field(default_factory=dict, repr=False)
    object_boxes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, index: Sequence[int]) -> ImageSet:
        """The images at positions `index`, in that order (not cached)."""
        index = np.asarray(index, np.int64)
        return ImageSet([self.paths[i] for i in index], [self.originals[i] for i in index],
                        self.labels[index], None if self.boxes is None else self.boxes[index],
                        self.part_locs[index], self.image_size,
                        object_boxes=None if self.object_boxes is None
                        else self.object_boxes[index])

    def dataset(self, batch_size: int = 64) -> tf.data.Dataset:
        """(image (B, S, S, 3) float32 0..255, label (B,)) batches in order; one pipeline
        per batch size (so its in-memory cache is filled once)."""
        if batch_size not in self._datasets:
            self._datasets[batch_size] = pipeline.eval_dataset(
                self.paths, self.labels, self.image_size, batch_size, cache=self.cache,
                boxes=self.boxes)
        return self._datasets[batch_size]

    def uint8_images(self, limit: int | None = None, batch_size: int = 64) -> np.ndarray:
        """uint8 (min(N, limit), S, S, 3): exactly what the exported graphs receive."""
        chunks, count = [], 0
        for images, _ in self.dataset(batch_size):
            chunks.append(np.clip(np.round(images.numpy()), 0, 255).astype(np.uint8))
            count += len(chunks[-1])
            if limit is not None and count >= limit:
                break
        if not chunks:
            raise ValueError("The image set is empty.")
        return np.concatenate(chunks)[:limit]


@dataclasses.dataclass
class TrainData:
    """Everything a run needs from its dataset.

    pretrain / train: the (view1, view2, label) training input of the two phases, epoch by
        epoch (`pipeline.TwoViewSource`; None when built with `training=False`).
    test: the test images top-1 is measured on (bounding-box crops for CUB).
    test_full: the full test images (the same set as `test` without crops).
    project: the full training images (pruning, prototype pictures, purity).
    """

    class_names: list[str]
    part_names: list[str]
    policy: registry.DatasetPolicy
    pretrain: pipeline.TwoViewSource | None
    train: pipeline.TwoViewSource | None
    test: ImageSet
    test_full: ImageSet
    project: ImageSet
    source: DatasetSource


def dataset_request(config: TrainConfig) -> DatasetRequest:
    """The registry request of a run's `--dataset` and the flags that locate it."""
    name, path = registry.parse_dataset(config.dataset)
    return DatasetRequest(
        name=name, path=path, data_dir=config.data_dir, cache_dir=config.cache_dir,
        validation_size=config.validation_size, seed=config.seed, download=config.download,
        image_size=config.image_size,
        synthetic_train_per_class=config.synthetic_train_per_class,
        synthetic_test_per_class=config.synthetic_test_per_class)


def _usable(records: ImageRecords, cache_dir: str, what: str
            ) -> tuple[ImageRecords, np.ndarray, list[str]]:
    """(usable records with decodable paths, their (w, h) sizes, original paths)."""
    prepared = prepare_images(records.paths, pathlib.Path(cache_dir) / CONVERTED_DIR,
                              what=what)
    keep = np.flatnonzero(prepared.keep)
    kept = records.select(keep)
    originals = list(kept.paths)
    kept = dataclasses.replace(kept, paths=[prepared.paths[i] for i in keep])
    return kept, prepared.sizes[keep], originals


def _has_boxes(records: ImageRecords) -> bool:
    """Whether at least one image has a bounding box (CUB layout: bounding_boxes.txt)."""
    return records.bboxes is not None and bool(np.isfinite(records.bboxes).all(axis=1).any())


def _crop_pretrain(config: TrainConfig, policy: registry.DatasetPolicy,
                   records: ImageRecords, origin: str) -> bool:
    """Whether pretraining uses bounding-box crops: the dataset's choice, or, with
    `--pretrain_box_margin` >= 0, always (images without a box keep the whole image, as in
    phase 2; ValueError when no image has one)."""
    margin = config.pretrain_box_margin
    if margin < 0:
        return policy.crop_pretrain and not config.pretrain_data
    if config.pretrain_data:
        raise ValueError(f"--pretrain_box_margin={margin} crops the pretraining images to "
                         f"their bounding boxes, but --pretrain_data={config.pretrain_data} "
                         "images have none; leave --pretrain_box_margin negative.")
    if not _has_boxes(records):
        raise ValueError(f"--pretrain_box_margin={margin} needs bounding boxes, and the "
                         f"dataset at {origin} has none (CUB layout: bounding_boxes.txt); "
                         "leave it negative.")
    return True


def _object_masks(config: TrainConfig, records: ImageRecords, phase: str) -> bool:
    """Whether `phase`'s batches carry object masks for the background loss: with
    --background_loss > 0 and bounding boxes (images without one count as all object)."""
    if config.background_loss <= 0:
        return False
    if not _has_boxes(records):
        logging.info("--background_loss=%g is off for %s: its images have no bounding "
                     "boxes.", config.background_loss, phase)
        return False
    return True


def _pretrain_records(config: TrainConfig, train: ImageRecords, train_sizes: np.ndarray
                      ) -> tuple[ImageRecords, np.ndarray]:
    """The pretraining images and their (w, h) sizes: the labelled training set, or
    `--pretrain_data`'s images (no boxes), with `--pretrain_include_train` followed by the
    training set with its boxes (labels are not used in pretraining; parts dropped)."""
    if not config.pretrain_data:
        if config.pretrain_include_train:
            raise ValueError("--pretrain_include_train adds the labelled training images to "
                             "--pretrain_data's, and --pretrain_data is not set.")
        return train, train_sizes
    files = unlabeled_images(config.pretrain_data)
    unlabeled, sizes, _ = _usable(make_records(files, np.zeros(len(files))), config.cache_dir,
                                  f"unlabeled pretraining images ({config.pretrain_data})")
    if not config.pretrain_include_train:
        return unlabeled, sizes
    merged = make_records(unlabeled.paths + train.paths,
                          np.concatenate([unlabeled.labels, train.labels]),
                          np.concatenate([unlabeled.bboxes, train.bboxes]))
    return merged, np.concatenate([sizes, train_sizes])


def _image_set(records: ImageRecords, sizes: np.ndarray, originals: list[str], crop: bool,
               image_size: int, cache: bool) -> ImageSet:
    bboxes = records.bboxes if crop else None
    boxes = (geometry.normalized_boxes(geometry.crop_boxes(bboxes, sizes), sizes)
             if crop else None)
    part_locs = geometry.map_part_locs(records.part_locs, sizes, image_size, bboxes)
    object_boxes = geometry.map_boxes(records.bboxes, sizes, image_size, bboxes)
    return ImageSet(list(records.paths), originals, records.labels, boxes, part_locs,
                    image_size, cache, object_boxes=object_boxes)


def unlabeled_images(spec: str) -> list[str]:
    """Every image file under `folder:PATH` (or PATH), recursively; labels are ignored.

    Raises:
        DatasetUnavailableError: the folder is missing or holds no image files.
    """
    from pipnet_tf.ood import list_images

    path = spec.removeprefix("folder:")
    try:
        return list_images(path)
    except (FileNotFoundError, ValueError) as e:
        raise DatasetUnavailableError(f"--pretrain_data={spec!r}: {e}") from e


def image_set_from_files(paths: Sequence[str], image_size: int, cache_dir: str,
                         what: str = "images") -> ImageSet:
    """Unlabelled image files (OoD folders, images to explain) as an `ImageSet`;
    unreadable files are skipped with one warning naming them.

    Raises:
        ValueError: none of the files is a usable image.
    """
    records, sizes, originals = _usable(make_records(list(paths), np.zeros(len(paths))),
                                        cache_dir, what)
    if not len(records):
        raise ValueError(f"None of the {len(paths)} {what} is a readable image.")
    return _image_set(records, sizes, originals, False, image_size, False)


def _check_classes(train: ImageRecords, test: ImageRecords, source: DatasetSource) -> None:
    for split, records in (("train", train), ("test", test)):
        if not len(records):
            raise DatasetUnavailableError(
                f"--dataset={source.name!r} ({source.origin}): the {split} split has no usable "
                "image (see the warning above for skipped files).")
    if len(source.class_names) < 2:
        raise DatasetUnavailableError(
            f"--dataset={source.name!r} ({source.origin}) has {len(source.class_names)} "
            f"class {source.class_names!r}; PIP-Net needs at least 2 classes.")
    counts = np.bincount(train.labels, minlength=len(source.class_names))
    empty = [source.class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DatasetUnavailableError(
            f"--dataset={source.name!r} ({source.origin}): {len(empty)} class(es) have no "
            f"usable training image: {empty[:20]!r}. Add images or remove those classes.")
    missing = int(np.sum(np.bincount(test.labels, minlength=len(counts)) == 0))
    if missing:
        logging.warning("%d of %d classes have no test image", missing, len(counts))


def build_data(config: TrainConfig, training: bool = True) -> TrainData:
    """Datasets for `config.dataset`; raises DatasetUnavailableError with what to do.

    With `training=False` (evaluation, explanations, export checks) only the unaugmented
    image sets are built.
    """
    request = dataset_request(config)
    source = registry.open_dataset(request)
    policy = registry.policy(request.name, config.augment)
    train, train_sizes, train_originals = _usable(source.train, config.cache_dir,
                                                  f"{source.name} train images")
    test, test_sizes, test_originals = _usable(source.test, config.cache_dir,
                                               f"{source.name} test images")
    _check_classes(train, test, source)
    logging.info("%s (%s): %d train, %d test images, %d classes", source.name, source.origin,
                 len(train), len(test), len(source.class_names))
    pretrain_records, pretrain_sizes = train, train_sizes
    if training:
        pretrain_records, pretrain_sizes = _pretrain_records(config, train, train_sizes)
    for label, size, count in (("--batch_size", config.batch_size, len(train)),
                               ("--batch_size_pretrain", config.batch_size_pretrain,
                                len(pretrain_records))):
        if training and size > count:
            raise ValueError(f"{label}={size} exceeds the {count} training images.")

    def boxes(records: ImageRecords, sizes: np.ndarray, crop: bool) -> np.ndarray | None:
        if not crop:
            return None
        return geometry.normalized_boxes(geometry.crop_boxes(records.bboxes, sizes), sizes)

    crop_pretrain = _crop_pretrain(config, policy, pretrain_records, source.origin)
    masks_pretrain = _object_masks(config, pretrain_records, "pretraining")
    masks_train = policy.crop_train and _object_masks(config, train, "phase 2")
    size, cache = config.image_size, config.cache_images and training
    pretrain_aug = augment.AugmentConfig.for_image_size(size, policy.pretrain_augment)
    train_aug = augment.AugmentConfig.for_image_size(size, policy.augment)
    test_set = _image_set(test, test_sizes, test_originals, policy.crop_test, size, cache)
    test_full = (_image_set(test, test_sizes, test_originals, False, size, cache)
                 if policy.crop_test else test_set)
    return TrainData(
        class_names=list(source.class_names),
        part_names=list(source.part_names) if policy.part_annotations else [],
        policy=policy,
        pretrain=pipeline.TwoViewSource(
            pretrain_records.paths, pretrain_records.labels, pretrain_aug,
            config.batch_size_pretrain, config.seed, cache=cache,
            boxes=boxes(pretrain_records, pretrain_sizes, crop_pretrain or masks_pretrain),
            box_margin=max(config.pretrain_box_margin, 0.0), crop_to_boxes=crop_pretrain,
            object_masks=masks_pretrain) if training else None,
        train=pipeline.TwoViewSource(
            train.paths, train.labels, train_aug, config.batch_size, config.seed + 1,
            cache=cache, boxes=boxes(train, train_sizes, policy.crop_train),
            box_margin=config.train_box_margin,
            box_margin_prob=config.train_box_margin_prob,
            object_masks=masks_train) if training else None,
        test=test_set,
        test_full=test_full,
        project=_image_set(train, train_sizes, train_originals, policy.crop_project, size,
                           cache),
        source=source,
    )
