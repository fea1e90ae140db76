"""Builds the training / evaluation datasets of a `TrainConfig` (SPEC §5).

Every source (built-in synthetic, CUB, Cars, Pets, image folders, tfds builders) becomes
file records (`pipnet_tf.data.sources`), is validated once (`pipnet_tf.data.decode`) and
feeds the same pipelines (`pipnet_tf.data.pipeline`) with the dataset's `AugmentConfig`.
CUB as the authors: phase 2 trains and tests on bounding-box crops (augment "cub"),
pretraining uses the full training images (augment "cub_pretrain"), and the projection
sets are the full training / test images.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow as tf
from absl import logging

from pipnet_tf.data import augment, geometry, pipeline
from pipnet_tf.data.cub import ImageRecords, load_cub_layout
from pipnet_tf.data.decode import prepare_images
from pipnet_tf.data.sources import (
    DatasetSource,
    DatasetUnavailableError,
    from_cub_layout,
    load_source,
)
from pipnet_tf.data.synthetic import SyntheticSpec, write_synthetic_cub
from trainers.configs import TrainConfig

__all__ = ["DatasetUnavailableError", "TrainData", "build_data", "load_dataset_source"]


@dataclasses.dataclass
class TrainData:
    """Everything the trainer needs from a dataset.

    pretrain / train: (view1, view2, label) batches; test / project: (image, label)
    batches of unaugmented images (project = the full training images, for pruning).
    test_projection: the full test images in order (CUB's `test_full`; equal to `test` for
    datasets without crops). test_records / test_part_locs: the usable test images in the
    order of `test_projection`, with part locations mapped into the
    (image_size, image_size) resize of the full image (`(N, 0, 3)` without parts).
    """

    class_names: list[str]
    pretrain: tf.data.Dataset
    train: tf.data.Dataset
    test: tf.data.Dataset
    project: tf.data.Dataset
    pretrain_steps: int
    train_steps: int
    root: pathlib.Path | None
    test_projection: tf.data.Dataset | None = None
    test_records: ImageRecords | None = None
    test_part_locs: np.ndarray | None = None
    source: DatasetSource | None = None


def load_dataset_source(config: TrainConfig) -> DatasetSource:
    """The config's dataset as file records (the synthetic one is generated if needed)."""
    if config.dataset.split(":", 1)[0] == "synthetic":
        spec = SyntheticSpec(
            image_size=config.image_size,
            train_per_class=config.synthetic_train_per_class,
            test_per_class=config.synthetic_test_per_class,
        )
        layout = load_cub_layout(write_synthetic_cub(config.cache_dir, spec))
        # Full images and the "cub" geometry for both phases (the demo's tuned setting).
        return from_cub_layout(layout, "synthetic", f"built-in dataset at {layout.root}",
                               False, "cub", "cub")
    source = load_source(config.dataset, config.data_dir, config.cache_dir,
                         config.validation_size, config.seed, config.download)
    if config.augment:
        source = dataclasses.replace(source, augment=config.augment,
                                     pretrain_augment=config.augment)
    return source


def usable_records(records: ImageRecords, cache_dir: pathlib.Path, what: str
            ) -> tuple[ImageRecords, np.ndarray, list[str]]:
    """(usable records with decodable paths, their (w, h) sizes, original paths)."""
    prepared = prepare_images(records.paths, cache_dir, what=what)
    keep = np.flatnonzero(prepared.keep)
    kept = records.select(keep)
    originals = list(kept.paths)
    kept = dataclasses.replace(kept, paths=[prepared.paths[i] for i in keep])
    return kept, prepared.sizes[keep], originals


def _check_classes(train: ImageRecords, test: ImageRecords, source: DatasetSource) -> None:
    for split, records in (("train", train), ("test", test)):
        if not len(records):
            raise DatasetUnavailableError(
                f"--dataset={source.name!r} ({source.origin}): the {split} split has no usable "
                "image (see the warning above for skipped files).")
    counts = np.bincount(train.labels, minlength=len(source.class_names))
    empty = [source.class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DatasetUnavailableError(
            f"--dataset={source.name!r} ({source.origin}): {len(empty)} class(es) have no "
            f"usable training image: {empty[:20]!r}. Add images or remove those classes.")
    missing = int(np.sum(np.bincount(test.labels, minlength=len(counts)) == 0))
    if missing:
        logging.warning("%d of %d classes have no test image", missing, len(counts))


def build_data(config: TrainConfig) -> TrainData:
    """Datasets for `config.dataset`; raises DatasetUnavailableError with what to do."""
    source = load_dataset_source(config)
    converted = pathlib.Path(config.cache_dir) / "converted"
    train, train_sizes, _ = usable_records(source.train, converted, f"{source.name} train images")
    test, test_sizes, test_originals = usable_records(source.test, converted,
                                               f"{source.name} test images")
    _check_classes(train, test, source)
    logging.info("%s (%s): %d train, %d test images, %d classes", source.name, source.origin,
                 len(train), len(test), len(source.class_names))
    for label, size in (("--batch_size", config.batch_size),
                        ("--batch_size_pretrain", config.batch_size_pretrain)):
        if size > len(train):
            raise ValueError(f"{label}={size} exceeds the {len(train)} training images.")

    def boxes(records: ImageRecords, sizes: np.ndarray) -> np.ndarray | None:
        if not source.crop_to_bbox:
            return None
        return geometry.normalized_boxes(geometry.crop_boxes(records.bboxes, sizes), sizes)

    train_boxes, test_boxes = boxes(train, train_sizes), boxes(test, test_sizes)
    pretrain_aug = augment.AugmentConfig.for_image_size(config.image_size,
                                                        source.pretrain_augment)
    train_aug = augment.AugmentConfig.for_image_size(config.image_size, source.augment)
    cache = config.cache_images

    def evaluation(records: ImageRecords, crop: np.ndarray | None) -> tf.data.Dataset:
        return pipeline.eval_dataset(records.paths, records.labels, config.image_size,
                                     config.batch_size, cache=cache, boxes=crop)

    test_full = evaluation(test, None) if source.crop_to_bbox else None
    test_ds = evaluation(test, test_boxes)
    return TrainData(
        class_names=list(source.class_names),
        pretrain=pipeline.two_view_dataset(
            train.paths, train.labels, pretrain_aug, config.batch_size_pretrain, config.seed,
            cache=cache),
        train=pipeline.two_view_dataset(
            train.paths, train.labels, train_aug, config.batch_size, config.seed + 1,
            cache=cache, boxes=train_boxes),
        test=test_ds,
        project=evaluation(train, None),
        pretrain_steps=len(train) // config.batch_size_pretrain,
        train_steps=len(train) // config.batch_size,
        root=source.root,
        test_projection=test_full if test_full is not None else test_ds,
        test_records=dataclasses.replace(test, paths=test_originals),
        test_part_locs=geometry.map_part_locs(test.part_locs, test_sizes, config.image_size),
        source=source,
    )
