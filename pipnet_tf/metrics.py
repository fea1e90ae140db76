"""PIP-Net's evaluation metrics as pure NumPy functions (SPEC §4).

Shapes: scores (N, K) raw scoring-sheet outputs (inference threshold applied);
presence (N, D) thresholded presence; weights (D, K) the scoring sheet.
"""
from __future__ import annotations

import numpy as np

NONZERO = 1e-3  # weights / contributions at or below this count as zero (reference)


def effective_weights(kernel: np.ndarray) -> np.ndarray:
    """The weights the forward uses, relu(W); (D, K)."""
    return np.maximum(np.asarray(kernel, np.float64), 0.0)


def top1_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(labels)))


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


def abstained(scores: np.ndarray) -> np.ndarray:
    """(N,) bool: the model abstains when every class score is 0."""
    return np.max(scores, axis=1) <= 0.0


def global_size(kernel: np.ndarray) -> int:
    """Prototypes with any class weight > 1e-3."""
    return int(np.sum(np.max(effective_weights(kernel), axis=1) > NONZERO))


def sparsity_ratio(kernel: np.ndarray) -> float:
    """Fraction of scoring-sheet entries that are <= 1e-3."""
    w = effective_weights(kernel)
    return float((w.size - np.sum(w - NONZERO > 0)) / w.size)


def local_size_all_classes(presence: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(N,) prototypes contributing more than 1e-3 to at least one class."""
    contrib = presence[:, :, None] * effective_weights(kernel)[None]  # (N, D, K)
    return np.sum(np.sum(np.maximum(contrib - NONZERO, 0.0), axis=2) > 0, axis=1)


def local_size_predicted_class(presence: np.ndarray, kernel: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N,) prototypes with |presence·weight| > 1e-3 for the *predicted* class
    (the reference's `almost_sim_nonzeros`)."""
    w = effective_weights(kernel)
    predicted = np.argmax(scores, axis=1)
    contrib = presence * w[:, predicted].T  # (N, D)
    return np.sum(np.abs(contrib) > NONZERO, axis=1)


def almost_nonzero_presence(presence: np.ndarray) -> np.ndarray:
    """(N,) prototypes with presence > 1e-3 (after the inference threshold)."""
    return np.sum(np.abs(presence) > NONZERO, axis=1)


def summary(scores: np.ndarray, presence: np.ndarray, labels: np.ndarray, kernel: np.ndarray) -> dict:
    """All of the above for one evaluated split, as a JSON-friendly dict."""
    return {
        "num_images": int(len(labels)),
        "top1_accuracy": top1_accuracy(scores, labels),
        "top5_accuracy": topk_accuracy(scores, labels, 5),
        "abstained": int(np.sum(abstained(scores))),
        "global_size": global_size(kernel),
        "local_size_all_classes": float(np.mean(local_size_all_classes(presence, kernel))),
        "local_size_predicted_class": float(np.mean(local_size_predicted_class(presence, kernel, scores))),
        "almost_nonzero_presence": float(np.mean(almost_nonzero_presence(presence))),
        "sparsity_ratio": sparsity_ratio(kernel),
    }


def unused_prototypes(presence: np.ndarray, kernel: np.ndarray, top_k: int = 10, threshold: float = 0.1) -> np.ndarray:
    """Prototypes to prune after training (SPEC §3): relevant ones (max weight > 1e-3)
    none of whose top-`top_k` presence scores over the projection set exceeds
    `threshold`. presence: (N, D) thresholded presence of the training images."""
    relevant = np.max(effective_weights(kernel), axis=1) > NONZERO
    k = min(top_k, presence.shape[0])
    top = -np.sort(-presence, axis=0)[:k]  # (k, D)
    never = ~np.any(top > threshold, axis=0)
    return np.flatnonzero(relevant & never)


def scoring_sheet(kernel: np.ndarray, class_names: list[str]) -> dict[str, list[list]]:
    """class name → [[prototype, weight], ...] of its non-zero weights, largest first."""
    w = effective_weights(kernel)
    sheet = {}
    for k, name in enumerate(class_names):
        ids = np.flatnonzero(w[:, k] > NONZERO)
        ids = ids[np.argsort(-w[ids, k], kind="stable")]
        sheet[name] = [[int(d), float(w[d, k])] for d in ids]
    return sheet
