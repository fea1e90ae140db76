"""Images of a run's dataset for export checks: the held-out (test) split for parity
gates and the unaugmented training images for int8 calibration.

Both come as uint8 (n, S, S, 3) arrays at the run's image size, exactly what the
exported graphs receive, read through the same datasets as training
(`pipnet_tf.data.datasets.build_data`).
"""
from __future__ import annotations

import numpy as np

from pipnet_tf.config import TrainConfig
from pipnet_tf.data.datasets import build_data


def heldout_images(config: TrainConfig, limit: int | None = None) -> np.ndarray:
    """Up to `limit` test-split images of the run (in dataset order), as the trainer
    tests on them (bounding-box crops for CUB)."""
    return build_data(config, training=False).test.uint8_images(limit)


def calibration_images(config: TrainConfig, limit: int = 200, seed: int = 0) -> np.ndarray:
    """`limit` unaugmented training images for int8 calibration, chosen with `seed`."""
    project = build_data(config, training=False).project
    images = project.uint8_images()
    index = np.random.default_rng(seed).permutation(len(images))[:limit]
    return images[np.sort(index)]
