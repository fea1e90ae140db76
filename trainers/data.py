"""Builds the training / evaluation datasets of a `TrainConfig`."""
from __future__ import annotations

import dataclasses
import pathlib

import tensorflow as tf
from absl import logging

from pipnet_tf.data import augment, pipeline
from pipnet_tf.data.cub import load_cub_layout
from pipnet_tf.data.synthetic import SyntheticSpec, write_synthetic_cub
from trainers.configs import TrainConfig


class DatasetUnavailableError(RuntimeError):
    """The requested dataset cannot be read (not supported yet, or not on disk)."""


@dataclasses.dataclass
class TrainData:
    """Everything the trainer needs from a dataset.

    pretrain / train: (view1, view2, label) batches; test / project: (image, label)
    batches of unaugmented images (project = the training images, for pruning).
    """

    class_names: list[str]
    pretrain: tf.data.Dataset
    train: tf.data.Dataset
    test: tf.data.Dataset
    project: tf.data.Dataset
    pretrain_steps: int
    train_steps: int
    root: pathlib.Path


def build_data(config: TrainConfig) -> TrainData:
    """Datasets for `config.dataset`; raises DatasetUnavailableError with what to do."""
    name = config.dataset.split(":", 1)[0]
    if name != "synthetic":
        raise DatasetUnavailableError(
            f"--dataset={config.dataset!r} is not readable yet: this version trains on the "
            "built-in dataset only (--dataset=synthetic). CUB-200-2011, Stanford Cars, "
            "Oxford-IIIT Pets and image folders arrive with the datasets issue (#4)."
        )
    spec = SyntheticSpec(
        image_size=config.image_size,
        train_per_class=config.synthetic_train_per_class,
        test_per_class=config.synthetic_test_per_class,
    )
    root = write_synthetic_cub(config.cache_dir, spec)
    layout = load_cub_layout(root)
    train, test = layout.split("train"), layout.split("test")
    logging.info("Synthetic dataset at %s: %d train, %d test images, %d classes",
                 root, len(train), len(test), len(layout.class_names))
    aug = augment.AugmentConfig.for_image_size(config.image_size, dataset="cub")
    for label, size in (("--batch_size", config.batch_size), ("--batch_size_pretrain", config.batch_size_pretrain)):
        if size > len(train):
            raise ValueError(f"{label}={size} exceeds the {len(train)} training images.")

    def two_view(batch_size: int, seed: int):
        return pipeline.two_view_dataset(
            train.paths, train.labels, aug, batch_size=batch_size, seed=seed, drop_remainder=True
        )

    return TrainData(
        class_names=list(layout.class_names),
        pretrain=two_view(config.batch_size_pretrain, config.seed),
        train=two_view(config.batch_size, config.seed + 1),
        test=pipeline.eval_dataset(test.paths, test.labels, config.image_size, config.batch_size),
        project=pipeline.eval_dataset(train.paths, train.labels, config.image_size, config.batch_size),
        pretrain_steps=len(train) // config.batch_size_pretrain,
        train_steps=len(train) // config.batch_size,
        root=root,
    )
