"""PIP-Net's evaluation metrics as pure NumPy functions (SPEC §4).

Shapes: scores (N, K) raw scoring-sheet outputs (inference threshold applied);
presence (N, D) thresholded presence; weights (D, K) the scoring sheet.

An abstention (every class score ≤ 0: no known prototype found) is a wrong prediction in
top-1, top-5, the per-class recalls and the binary metrics, and is left out of the
confusion matrix (counted per true class in `abstained_per_class`). The exported graphs
predict class −1 for it. The reference's argmax counts it as a prediction of class 0, so
the paper's accuracies include abstentions of class-0 images as correct (BUILD_NOTES,
"Deviations").
"""
from __future__ import annotations

import numpy as np

# Weights and contributions at or below this count as zero: global and local size,
# sparsity, the scoring sheet, pruning and the report's relevant prototypes (the
# reference's `eval_pipnet` and `visualize_topk`). Purity has its own, smaller threshold
# (`purity.PURITY_MIN_WEIGHT`), as the reference's purity code does.
NONZERO = 1e-3


def effective_weights(kernel: np.ndarray) -> np.ndarray:
    """The weights the forward uses, relu(W); (D, K)."""
    return np.maximum(np.asarray(kernel, np.float64), 0.0)


def abstained(scores: np.ndarray) -> np.ndarray:
    """(N,) bool: the model abstains when every class score is ≤ 0."""
    return np.max(scores, axis=1) <= 0.0


def predicted_classes(scores: np.ndarray) -> np.ndarray:
    """(N,) int64: the argmax class of each image, −1 where the model abstains (as the
    exported graphs' `predicted_class`)."""
    scores = np.asarray(scores)
    return np.where(abstained(scores), -1, np.argmax(scores, axis=1))


def top1_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose predicted class is the label; an abstention is wrong."""
    return float(np.mean(predicted_classes(scores) == np.asarray(labels)))


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Fraction of images whose label is among the `k` highest scores (ties: the lower
    class index first); an abstention is wrong."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hit = np.any(top == np.asarray(labels)[:, None], axis=1)
    return float(np.mean(hit & ~abstained(scores)))


def relevant_prototypes(kernel: np.ndarray, min_weight: float = NONZERO) -> np.ndarray:
    """Prototype ids whose largest class weight exceeds `min_weight`; kernel (D, K)."""
    return np.flatnonzero(np.max(effective_weights(kernel), axis=1) > min_weight)


def global_size(kernel: np.ndarray) -> int:
    """Prototypes with any class weight > 1e-3."""
    return int(len(relevant_prototypes(kernel)))


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
        "num_images": len(labels),
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


def check_prune_fraction(fraction: float, name: str = "fraction") -> None:
    """ValueError naming `name` unless 0 <= fraction < 1."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{name} must be in [0, 1), received {fraction!r}.")


def weak_prototype_connections(kernel: np.ndarray, fraction: float) -> np.ndarray:
    """(D, K) bool: the scoring-sheet entries to zero when pruning weak prototypes.

    A prototype is weak when its largest weight is below `fraction` × the mean over classes
    of each class's largest weight; all its connections are marked, except that every class
    keeps its strongest one (a class is never left without a prototype). kernel: (D, K)
    the scoring sheet with disabled prototypes' rows zero (`PIPNet.enabled_kernel`), so they
    are never marked and take no part in the maxima; fraction in [0, 1) (0: nothing is weak).
    """
    check_prune_fraction(fraction)
    w = effective_weights(kernel)
    class_max = w.max(axis=0)  # (K,)
    if not np.any(class_max > 0):
        return np.zeros(w.shape, bool)
    reference = fraction * class_max[class_max > 0].mean()
    weak = w.max(axis=1) < reference  # (D,)
    strongest = (w == class_max[None, :]) & (w > 0)
    return weak[:, None] & (w > 0) & ~strongest


def scoring_sheet(kernel: np.ndarray, class_names: list[str]) -> dict[str, list[list]]:
    """class name → [[prototype, weight], ...] of its non-zero weights, largest first."""
    w = effective_weights(kernel)
    sheet = {}
    for k, name in enumerate(class_names):
        ids = np.flatnonzero(w[:, k] > NONZERO)
        ids = ids[np.argsort(-w[ids, k], kind="stable")]
        sheet[name] = [[int(d), float(w[d, k])] for d in ids]
    return sheet


# === Classification details (reference `eval_pipnet`) ===
def confusion_matrix(scores: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """(K, K) int counts, rows = true class, columns = predicted class; abstentions are
    not in it (see `abstained_per_class`)."""
    scores = np.asarray(scores)
    k = scores.shape[1] if num_classes is None else int(num_classes)
    cm = np.zeros((k, k), np.int64)
    predicted = predicted_classes(scores)
    kept = predicted >= 0
    np.add.at(cm, (np.asarray(labels, np.int64)[kept], predicted[kept]), 1)
    return cm


def abstained_per_class(scores: np.ndarray, labels: np.ndarray,
                        num_classes: int | None = None) -> np.ndarray:
    """(K,) int: abstentions per true class (the confusion matrix's missing counts)."""
    scores = np.asarray(scores)
    k = scores.shape[1] if num_classes is None else int(num_classes)
    return np.bincount(np.asarray(labels, np.int64)[abstained(scores)], minlength=k)


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve of binary labels (1 = positive) for `y_score`, with tied
    scores counted half (Mann–Whitney U; equals sklearn's `roc_auc_score`). NaN when only
    one class is present."""
    y_true = np.asarray(y_true).astype(bool)
    y_score = np.asarray(y_score, np.float64)
    pos, neg = int(y_true.sum()), int((~y_true).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(y_score, kind="stable")
    sorted_scores = y_score[order]
    ranks = np.empty(len(y_score), np.float64)
    # Average ranks (1-based) over runs of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(sorted_scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    u = ranks[y_true].sum() - pos * (pos + 1) / 2.0
    return float(u / (pos * neg))


def auc_scores(scores: np.ndarray, multiplier: float = 2.0) -> np.ndarray:
    """(N,) the reference's AUC score max softmax(log1p(scores**m)) over classes."""
    z = np.log1p(np.asarray(scores, np.float64) ** multiplier)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return np.max(p / p.sum(axis=1, keepdims=True), axis=1)


def binary_metrics(scores: np.ndarray, labels: np.ndarray, multiplier: float = 2.0) -> dict:
    """Two-class metrics as the reference prints them, with abstentions wrong.

    Class 0 is "positive" for sensitivity/specificity (tp = images of class 0 predicted 0,
    fn = the other class-0 images, abstentions included; tn, fp likewise for class 1),
    while F1 uses label 1 as positive and AUC scores images by max
    softmax(log1p(scores**m)) against label 1 (sklearn defaults in the reference). NaN
    where a denominator is 0. Without abstentions this is exactly the reference.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.shape[1] != 2:
        raise ValueError(f"binary_metrics needs 2 classes, got scores of shape {scores.shape}")
    pred = predicted_classes(scores)
    tp = float(np.sum((labels == 0) & (pred == 0)))
    fn = float(np.sum((labels == 0) & (pred != 0)))
    tn = float(np.sum((labels == 1) & (pred == 1)))
    fp = float(np.sum((labels == 1) & (pred != 1)))

    def ratio(a, b):
        return a / b if b else float("nan")

    sensitivity, specificity = ratio(tp, tp + fn), ratio(tn, tn + fp)
    tp1 = float(np.sum((pred == 1) & (labels == 1)))
    f1_denominator = float(np.sum(pred == 1) + np.sum(labels == 1))
    f1 = 2 * tp1 / f1_denominator if f1_denominator else 0.0  # sklearn's zero_division
    recalls = [r for r in (sensitivity, specificity) if not np.isnan(r)]
    return {
        "f1": f1,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "auc": roc_auc(labels == 1, auc_scores(scores, multiplier)),
        "tp": int(tp), "fn": int(fn), "fp": int(fp), "tn": int(tn),
    }


def classification_report(scores: np.ndarray, presence: np.ndarray, labels: np.ndarray,
                          kernel: np.ndarray, multiplier: float = 2.0) -> dict:
    """`summary` plus the confusion matrix, and for 2 classes the binary metrics (the
    reference then reports F1 in place of top-5)."""
    report = summary(scores, presence, labels, kernel)
    report["confusion_matrix"] = confusion_matrix(scores, labels).tolist()
    report["abstained_per_class"] = abstained_per_class(scores, labels).tolist()
    if np.asarray(scores).shape[1] == 2:
        report.update(binary_metrics(scores, labels, multiplier))
    return report
