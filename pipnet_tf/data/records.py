"""Building `ImageRecords` for datasets without CUB's annotations, the train/test pair
every reader returns, and a seeded, stratified train/validation split."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np

from pipnet_tf.data.cub import ImageRecords


@dataclasses.dataclass(frozen=True)
class LabelledSplits:
    """A dataset's train and test records: `class_names` index the labels of both."""

    root: pathlib.Path
    class_names: list[str]
    train: ImageRecords
    test: ImageRecords


def make_records(paths: Sequence[str], labels: Sequence[int] | np.ndarray,
                 bboxes: np.ndarray | None = None) -> ImageRecords:
    """`ImageRecords` with ids 1..N, optional `(N, 4)` x, y, w, h boxes and no parts."""
    n = len(paths)
    labels = np.asarray(labels, np.int32).reshape(n)
    boxes = np.full((n, 4), np.nan, np.float32) if bboxes is None else \
        np.asarray(bboxes, np.float32).reshape(n, 4)
    return ImageRecords([str(p) for p in paths], labels, np.arange(1, n + 1, dtype=np.int64),
                        boxes, np.zeros((n, 0, 3), np.float32))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """bool `(N,)` mask of held-out items: `round(fraction * n_c)` per class, chosen with
    `seed`; a class keeps at least one item on the training side.

    Example:
        >>> stratified_split(np.array([0, 0, 0, 0, 1, 1]), 0.5, seed=0).sum()
        3
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_size must be in (0, 1), got {fraction!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(round(fraction * len(idx)), len(idx) - 1)
        held[rng.permutation(idx)[:k]] = True
    return held
