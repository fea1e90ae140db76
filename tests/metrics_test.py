"""SPEC §4 metrics on hand-computed tiny arrays."""
import numpy as np

from pipnet_tf import metrics

# 3 prototypes × 2 classes.
W = np.array([[2.0, 0.0], [0.0005, 1.0], [0.0, 0.0]])
P = np.array([[0.9, 0.0, 0.5], [0.0, 0.3, 0.0], [0.0, 0.0, 0.7]])
S = P @ W  # [[1.8, 0], [0.00015, 0.3], [0, 0]]
Y = np.array([0, 1, 1])


def test_accuracy_and_abstention():
    assert metrics.top1_accuracy(S, Y) == 2 / 3  # image 3 abstains → argmax 0 → wrong
    np.testing.assert_array_equal(metrics.abstained(S), [False, False, True])
    assert metrics.topk_accuracy(S, Y, 5) == 1.0


def test_global_size_and_sparsity():
    assert metrics.global_size(W) == 2  # prototype 2 has no weight
    # Entries > 1e-3: 2.0 and 1.0 → 2 of 6 → sparsity 4/6.
    assert metrics.sparsity_ratio(W) == 4 / 6


def test_local_sizes():
    # Image 1: contributions proto0 → (1.8, 0), proto2 → 0: one prototype.
    # Image 2: proto1 → (0.00015, 0.3): one. Image 3: none.
    np.testing.assert_array_equal(metrics.local_size_all_classes(P, W), [1, 1, 0])
    np.testing.assert_array_equal(metrics.local_size_predicted_class(P, W, S), [1, 1, 0])
    np.testing.assert_array_equal(metrics.almost_nonzero_presence(P), [2, 1, 1])
    summary = metrics.summary(S, P, Y, W)
    assert summary["local_size_all_classes"] == 2 / 3 and summary["abstained"] == 1


def test_unused_prototypes_and_scoring_sheet():
    w = np.array([[1.0, 0.0], [0.5, 0.2], [0.0, 0.0], [0.3, 0.0]])
    presence = np.array([[0.9, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.1]])
    # Prototype 1 and 3 are relevant but never exceed 0.1; 2 is irrelevant.
    np.testing.assert_array_equal(metrics.unused_prototypes(presence, w), [1, 3])
    sheet = metrics.scoring_sheet(w, ["a", "b"])
    assert sheet == {"a": [[0, 1.0], [1, 0.5], [3, 0.3]], "b": [[1, 0.2]]}
