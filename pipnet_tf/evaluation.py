"""Running a trained PIP-Net over a dataset, and pruning unused prototypes."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipnet_tf import metrics


def collect_prototype_outputs(model: keras.Model, dataset: tf.data.Dataset, verbose: int = 0
                              ) -> dict[str, np.ndarray]:
    """One inference pass of `model` over `(images, labels)` batches (`PIPNet.predict_step`).

    Returns numpy arrays:
        scores, presence: (N, K), (N, D) with the 0.1 inference threshold (presence of
            disabled prototypes 0);
        scores_raw: (N, K) without the threshold (reference `inference=False`);
        presence_raw: (N, D) without the threshold and the mask (what each prototype,
            disabled or not, detects);
        locations: int32 (N, D) row-major index of the latent cell of each max presence;
        labels: (N,).
    Cells map to pixel boxes through `model.patch_geometry()`. The model is not modified.
    """
    try:
        out = model.predict(dataset, verbose=verbose)
    except ValueError as e:
        if "empty" in str(e).lower():
            raise ValueError("The dataset is empty.") from e
        raise
    return out


def evaluate(model: keras.Model, dataset: tf.data.Dataset, verbose: int = 0) -> dict:
    """SPEC §4 metrics of `model` on `dataset` (see `metrics.summary`); disabled
    prototypes count as weightless."""
    out = collect_prototype_outputs(model, dataset, verbose)
    return metrics.summary(out["scores"], out["presence"], out["labels"],
                           model.enabled_kernel())


def prune_unused_prototypes(model: keras.Model, projection_dataset: tf.data.Dataset,
                            verbose: int = 0) -> list[int]:
    """Zeroes the scoring-sheet rows of relevant prototypes whose top-10 presence over
    `projection_dataset` (unaugmented training images) never exceeds 0.1 (SPEC §3).
    Disabled prototypes are not relevant, so their weights are kept. Returns the pruned
    prototype ids."""
    presence = collect_prototype_outputs(model, projection_dataset, verbose)["presence"]
    pruned = metrics.unused_prototypes(presence, model.enabled_kernel())
    if len(pruned):
        kernel = model.classifier.kernel.numpy()
        kernel[pruned, :] = 0.0
        model.classifier.kernel.assign(kernel)
    return [int(d) for d in pruned]


def prune_weak_prototypes(model: keras.Model, fraction: float) -> dict:
    """Zeroes the connections of prototypes whose largest weight is below `fraction` × the
    mean of the classes' largest weights, keeping every class's strongest connection
    (`metrics.weak_prototype_connections`; disabled prototypes' weights are kept). Returns
    the number of zeroed weights and the prototypes left with no weight ("emptied")."""
    kernel = model.classifier.kernel.numpy()
    weak = metrics.weak_prototype_connections(model.enabled_kernel(), fraction)
    had = metrics.effective_weights(kernel).max(axis=1) > 0.0
    kernel[weak] = 0.0
    model.classifier.kernel.assign(kernel)
    emptied = had & ~(metrics.effective_weights(kernel).max(axis=1) > 0.0)
    return {"fraction": float(fraction), "zeroed_weights": int(weak.sum()),
            "emptied_prototypes": [int(d) for d in np.flatnonzero(emptied)]}
