"""Images of a run's dataset for export checks: the held-out (test) split for parity
gates and the unaugmented training images for int8 calibration.

Both come as uint8 (n, S, S, 3) arrays at the run's image size, exactly what the
exported graphs receive.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


def _eval_datasets(config: dict) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """(test, train) `(image, label)` datasets of the run's config (trainers.data)."""
    from trainers.configs import TrainConfig
    from trainers.data import build_data

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train_config = TrainConfig(**{k: v for k, v in config.items() if k in fields})
    data = build_data(train_config)
    return data.test, data.project


def _take(dataset: tf.data.Dataset, limit: int | None) -> np.ndarray:
    chunks, count = [], 0
    for images, _ in dataset:
        chunks.append(np.clip(np.round(images.numpy()), 0, 255).astype(np.uint8))
        count += len(chunks[-1])
        if limit is not None and count >= limit:
            break
    if not chunks:
        raise ValueError("The dataset yielded no images.")
    return np.concatenate(chunks)[:limit]


def heldout_images(config: dict, limit: int | None = None) -> np.ndarray:
    """Up to `limit` test-split images of the run (in dataset order)."""
    test, _ = _eval_datasets(config)
    return _take(test, limit)


def calibration_images(config: dict, limit: int = 200, seed: int = 0) -> np.ndarray:
    """`limit` unaugmented training images for int8 calibration, shuffled with `seed`
    (2048-image buffer)."""
    _, train = _eval_datasets(config)
    shuffled = train.unbatch().shuffle(2048, seed=seed, reshuffle_each_iteration=False)
    return _take(shuffled.batch(64), limit)
