"""L_A, L_T, L_C against NumPy implementations of SPEC §2; our L_B against NumPy."""
import numpy as np
import pytest
import tensorflow as tf

from pipnet_tf import losses


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def np_align(z1, z2):
    def one(x, t):
        rows_x, rows_t = x.reshape(-1, x.shape[-1]), t.reshape(-1, t.shape[-1])
        return -np.mean(np.log((rows_x * rows_t).sum(-1) + 1e-12))
    return 0.5 * (one(z1, z2) + one(z2, z1))


def np_tanh(p1, p2, eps=1e-8):
    one = lambda p: -np.mean(np.log(np.tanh(p.sum(0)) + eps))  # noqa: E731
    return 0.5 * (one(p1) + one(p2))


def np_class(scores, labels, m=2.0):
    logits = np.log1p(scores ** m)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.mean(logp[np.arange(len(labels)), labels])


rng = np.random.default_rng(0)


def test_align_loss_matches_numpy():
    z1 = softmax(rng.normal(size=(3, 4, 5, 6)) * 3)
    z2 = softmax(rng.normal(size=(3, 4, 5, 6)) * 3)
    got = losses.align_loss(tf.constant(z1), tf.constant(z2))
    np.testing.assert_allclose(got.numpy(), np_align(z1, z2), rtol=1e-6)
    # Identical one-hot encodings give 0 (paper Sec. 4).
    onehot = np.eye(6)[rng.integers(0, 6, (2, 3, 3))]
    assert abs(losses.align_loss(tf.constant(onehot), tf.constant(onehot)).numpy()) < 1e-9


def test_align_loss_global_row_count():
    z1 = softmax(rng.normal(size=(2, 3, 3, 4)))
    z2 = softmax(rng.normal(size=(2, 3, 3, 4)))
    part = losses.align_loss(tf.constant(z1), tf.constant(z2), num_rows=4 * 9)
    np.testing.assert_allclose(part.numpy(), np_align(z1, z2) / 2, rtol=1e-6)


def test_align_loss_stops_gradient_into_the_target():
    # With the target side stop-gradiented, dL/dz1 comes only from align(z1, sg z2):
    # d/dz1 of -mean log(z1·z2) = -z2 / (z1·z2) / rows / 2.
    z1 = tf.constant(softmax(rng.normal(size=(1, 2, 2, 3))))
    z2 = tf.constant(softmax(rng.normal(size=(1, 2, 2, 3))))
    with tf.GradientTape() as tape:
        tape.watch(z1)
        loss = losses.align_loss(z1, z2)
    grad = tape.gradient(loss, z1).numpy()
    a, b = z1.numpy(), z2.numpy()
    expected = -0.5 * b / ((a * b).sum(-1, keepdims=True) + 1e-12) / 4
    np.testing.assert_allclose(grad, expected, rtol=1e-5)
    # A loss using only the stopped side has no gradient into z1 at all.
    with tf.GradientTape() as tape:
        tape.watch(z1)
        only_target = losses._align_one_way(z2, z1, None)
    assert tape.gradient(only_target, z1) is None


def test_tanh_loss_matches_numpy_and_sums_over_batch():
    p1, p2 = rng.random((5, 7)) * 0.3, rng.random((5, 7)) * 0.3
    got = losses.tanh_loss(tf.constant(p1), tf.constant(p2))
    np.testing.assert_allclose(got.numpy(), np_tanh(p1, p2), rtol=1e-6)
    # Depends on the batch size: the sum over 10 rows differs from the mean.
    double = losses.tanh_loss(tf.constant(np.concatenate([p1, p1])), tf.constant(np.concatenate([p2, p2])))
    assert double.numpy() < got.numpy()
    # A custom batch_sum (as a cross-replica sum would be) is used.
    scaled = losses.tanh_loss(tf.constant(p1), tf.constant(p2), batch_sum=lambda p: 2 * tf.reduce_sum(p, 0))
    np.testing.assert_allclose(scaled.numpy(), np_tanh(2 * p1, 2 * p2), rtol=1e-6)


def test_classification_loss_matches_numpy():
    scores = rng.random((8, 4)) * 5
    labels = rng.integers(0, 4, 8)
    got = losses.classification_loss(tf.constant(scores), tf.constant(labels), 2.0)
    np.testing.assert_allclose(got.numpy(), np_class(scores, labels), rtol=1e-6)
    half = losses.classification_loss(tf.constant(scores), tf.constant(labels), 2.0, num_examples=16)
    np.testing.assert_allclose(half.numpy(), np_class(scores, labels) / 2, rtol=1e-6)
    # Hand-computed: scores (0, 1) → logits (0, log 2) → NLL of class 1 = log(3/2).
    one = losses.classification_loss(tf.constant([[0.0, 1.0]]), tf.constant([1]))
    np.testing.assert_allclose(one.numpy(), np.log(1.5), rtol=1e-6)


def test_classification_loss_is_finite_at_zero_scores():
    scores = tf.zeros((2, 3))
    with tf.GradientTape() as tape:
        tape.watch(scores)
        loss = losses.classification_loss(scores, tf.constant([0, 2]))
    grad = tape.gradient(loss, scores)
    np.testing.assert_allclose(loss.numpy(), np.log(3), rtol=1e-6)
    assert np.isfinite(grad.numpy()).all()


def np_background(z, outside, importance):
    """mean_b mean_d importance_d · max_hw z[b, h, w, d] · outside[b, h, w]."""
    background = (z * outside[..., None]).max(axis=(1, 2))  # (B, D)
    return np.mean((background * importance).mean(-1))


def test_background_loss_matches_numpy_and_spares_unweighted_prototypes():
    z = softmax(rng.normal(size=(3, 4, 4, 5)) * 3).astype(np.float32)
    outside = rng.uniform(size=(3, 4, 4)).astype(np.float32)
    kernel = np.abs(rng.normal(size=(5, 2))).astype(np.float32)
    kernel[2] = -1.0  # a prototype the scoring sheet does not use (relu(W) = 0)
    importance = losses.classifier_importance(tf.constant(kernel)).numpy()
    largest = np.maximum(kernel, 0).max(-1)
    np.testing.assert_allclose(importance, largest / largest.mean(), rtol=1e-6)
    assert importance[2] == 0 and importance.mean() == pytest.approx(1.0)
    zt = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(zt)
        loss = losses.background_loss(zt, tf.constant(outside), tf.constant(importance))
    np.testing.assert_allclose(loss.numpy(), np_background(z, outside, importance), rtol=1e-6)
    grad = tape.gradient(loss, zt).numpy()
    assert np.all(grad[..., 2] == 0)  # free to take the background
    assert np.count_nonzero(grad[0, ..., 0]) == 1  # only the strongest background cell
    # A global image count scales the per-replica contribution; no background, no loss.
    part = losses.background_loss(zt, tf.constant(outside), tf.constant(importance), 6)
    np.testing.assert_allclose(part.numpy(), loss.numpy() / 2, rtol=1e-6)
    inside = losses.background_loss(zt, tf.zeros((3, 4, 4)), tf.constant(importance))
    assert float(inside) == 0.0


def test_classifier_importance_is_uniform_before_any_positive_weight():
    importance = losses.classifier_importance(tf.constant(-np.ones((4, 3), np.float32)))
    np.testing.assert_array_equal(importance.numpy(), np.ones(4))
