"""Running a trained PIP-Net over a dataset and pruning unused prototypes."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipnet_tf import metrics


def collect_outputs(model: keras.Model, dataset: tf.data.Dataset, verbose: int = 0) -> dict[str, np.ndarray]:
    """Inference-mode outputs over `dataset` of (images, labels) batches.

    Returns numpy arrays: scores (N, K), presence (N, D) (both with the 0.1 threshold),
    labels (N,). Does not modify the model. (`explain.patches.collect_prototype_outputs`
    also returns the unthresholded outputs and where each prototype fired.)
    """
    from pipnet_tf.explain.patches import collect_prototype_outputs

    out = collect_prototype_outputs(model, dataset, verbose)
    return {key: out[key] for key in ("scores", "presence", "labels")}


def evaluate(model: keras.Model, dataset: tf.data.Dataset, verbose: int = 0) -> dict:
    """SPEC §4 metrics of `model` on `dataset` (see `metrics.summary`)."""
    out = collect_outputs(model, dataset, verbose)
    return metrics.summary(out["scores"], out["presence"], out["labels"], model.classifier.kernel.numpy())


def prune_unused_prototypes(model: keras.Model, projection_dataset: tf.data.Dataset, verbose: int = 0) -> list[int]:
    """Zeroes the scoring-sheet rows of relevant prototypes whose top-10 presence over
    `projection_dataset` (unaugmented training images) never exceeds 0.1 (SPEC §3).
    Returns the pruned prototype ids."""
    presence = collect_outputs(model, projection_dataset, verbose)["presence"]
    kernel = model.classifier.kernel.numpy()
    pruned = metrics.unused_prototypes(presence, kernel)
    if len(pruned):
        kernel[pruned, :] = 0.0
        model.classifier.kernel.assign(kernel)
    return [int(d) for d in pruned]
