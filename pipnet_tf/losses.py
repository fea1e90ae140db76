"""PIP-Net's losses as pure functions (SPEC §2, paper Eq. 1–3).

Each mean is taken over a *global* count when one is given, so that the per-replica
values of a `tf.distribute` strategy add up to the loss of the global batch.

Shapes: prototype maps (B, H, W, D) after the patch softmax; presence (B, D);
scores (2B, K) for the concatenated views; labels (B,) int.
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf

ALIGN_EPS = 1e-12  # inside log() of the patch dot product (reference constant)
TANH_EPS = 1e-8  # EPS passed by the reference's train_pipnet


def _mean(values: tf.Tensor, count: tf.Tensor | float | None) -> tf.Tensor:
    if count is None:
        return tf.reduce_mean(values)
    return tf.reduce_sum(values) / tf.cast(count, values.dtype)


def _align_one_way(x: tf.Tensor, target: tf.Tensor, count) -> tf.Tensor:
    """`-mean_rows log(sum_d x * stopgrad(target) + 1e-12)`; x, target: (B, H, W, D)."""
    dots = tf.reduce_sum(x * tf.stop_gradient(target), axis=-1)  # (B, H, W)
    return _mean(-tf.math.log(dots + ALIGN_EPS), count)


def align_loss(
    features1: tf.Tensor, features2: tf.Tensor, num_rows: tf.Tensor | float | None = None
) -> tf.Tensor:
    """Patch alignment loss L_A between the two views.

    `L_A = ½[align(z1, sg z2) + align(z2, sg z1)]` with one row per latent cell (b, h, w).

    Args:
        features1, features2: `(B, H, W, D)` softmax-normalised prototype maps of view 1 and 2.
        num_rows: global number of rows B·H·W to divide by (default: this batch's).
    Returns:
        scalar loss.
    """
    return 0.5 * (
        _align_one_way(features1, features2, num_rows)
        + _align_one_way(features2, features1, num_rows)
    )


def tanh_loss(
    presence1: tf.Tensor,
    presence2: tf.Tensor,
    eps: float = TANH_EPS,
    batch_sum: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tf.Tensor:
    """Tanh loss L_T: every prototype should be present at least once in the batch.

    `L_T = -½[mean_d log(tanh(Σ_b p1[b, d]) + eps) + same for p2]`.

    Args:
        presence1, presence2: `(B, D)` presence scores of the two views.
        batch_sum: maps `(B, D)` to the `(D,)` sum over the *global* batch; defaults to
            `tf.reduce_sum(axis=0)`. Under a strategy, pass a cross-replica sum.
    Returns:
        scalar loss (identical on every replica when `batch_sum` is cross-replica).
    """
    if batch_sum is None:
        batch_sum = lambda p: tf.reduce_sum(p, axis=0)  # noqa: E731

    def one_view(p):
        return -tf.reduce_mean(tf.math.log(tf.tanh(batch_sum(p)) + eps))

    return 0.5 * (one_view(presence1) + one_view(presence2))


def classification_logits(scores: tf.Tensor, multiplier: tf.Tensor | float = 2.0) -> tf.Tensor:
    """The paper's Eq. 3 logits `log(1 + scores**m)`; scores `(N, K)` >= 0."""
    return tf.math.log1p(tf.pow(scores, tf.cast(multiplier, scores.dtype)))


def classification_loss(
    scores: tf.Tensor,
    labels: tf.Tensor,
    multiplier: tf.Tensor | float = 2.0,
    num_examples: tf.Tensor | float | None = None,
) -> tf.Tensor:
    """Classification loss L_C: NLL of `softmax(log1p(scores**m))`.

    Args:
        scores: `(N, K)` raw scoring-sheet outputs for both views (N = 2B).
        labels: `(N,)` int class ids (the batch labels repeated for both views).
        num_examples: global N to divide by (default: this batch's N).
    Returns:
        scalar loss.
    """
    logits = classification_logits(scores, multiplier)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=logits
    )
    return _mean(nll, num_examples)


def background_loss(
    features: tf.Tensor,
    outside: tf.Tensor,
    importance: tf.Tensor,
    num_images: tf.Tensor | float | None = None,
) -> tf.Tensor:
    """Background loss L_B (ours, not in the paper): prototypes the scoring sheet relies
    on should not be present outside the object.

    `L_B = mean_b mean_d importance_d · max_hw(z[b, h, w, d] · outside[b, h, w])`: a
    prototype's strongest match in the image's background, weighted by how much the
    classifier uses it. Background cells stay free to go to prototypes the classifier
    gives no weight (their importance is 0).

    Args:
        features: `(B, H, W, D)` softmax-normalised prototype maps.
        outside: `(B, H, W)` in [0, 1], the fraction of each cell outside the object.
        importance: `(D,)` >= 0 (no gradient flows into it), mean 1 for a plain average.
        num_images: global B to divide by (default: this batch's B).
    Returns:
        scalar loss.
    """
    background = tf.reduce_max(features * outside[..., tf.newaxis], axis=(1, 2))  # (B, D)
    weighted = tf.reduce_mean(background * tf.stop_gradient(importance), axis=-1)  # (B,)
    return _mean(weighted, num_images)


def classifier_importance(kernel: tf.Tensor) -> tf.Tensor:
    """Each prototype's largest scoring-sheet weight relative to the mean of those:
    kernel `(D, K)` -> `(D,)` >= 0 with mean 1 (all ones while every weight is <= 0)."""
    largest = tf.reduce_max(tf.nn.relu(kernel), axis=-1)
    mean = tf.reduce_mean(largest)
    return tf.where(mean > 0, largest / tf.maximum(mean, 1e-12), tf.ones_like(largest))
