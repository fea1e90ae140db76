"""SPEC §4 metrics on hand-computed tiny arrays."""
import numpy as np
import pytest

from pipnet_tf import metrics

# 3 prototypes × 2 classes.
W = np.array([[2.0, 0.0], [0.0005, 1.0], [0.0, 0.0]])
P = np.array([[0.9, 0.0, 0.5], [0.0, 0.3, 0.0], [0.0, 0.0, 0.7]])
S = P @ W  # [[1.8, 0], [0.00015, 0.3], [0, 0]]
Y = np.array([0, 1, 1])


def test_accuracy_and_abstention():
    assert metrics.top1_accuracy(S, Y) == 2 / 3  # image 3 abstains → wrong
    np.testing.assert_array_equal(metrics.abstained(S), [False, False, True])
    np.testing.assert_array_equal(metrics.predicted_classes(S), [0, 1, -1])
    assert metrics.topk_accuracy(S, Y, 5) == 2 / 3  # top-5 of 2 classes, abstention wrong


def test_an_abstention_is_wrong_even_where_argmax_would_hit_the_label():
    # The reference's argmax calls an all-zero row class 0: image 2 (label 0) would count
    # as correct. Here it is wrong in top-1 and top-k, and left out of the confusion matrix.
    scores = np.array([[0.0, 3.0, 1.0], [0.0, 0.0, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    labels = np.array([1, 0, 2, 2])
    assert metrics.top1_accuracy(scores, labels) == 1 / 4
    assert metrics.topk_accuracy(scores, labels, 2) == 2 / 4  # images 1 and 3
    assert metrics.topk_accuracy(scores, labels, 3) == 2 / 4  # not the abstentions
    np.testing.assert_array_equal(metrics.confusion_matrix(scores, labels),
                                  [[0, 0, 0], [0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(metrics.abstained_per_class(scores, labels), [1, 0, 1])
    summary = metrics.summary(scores, np.zeros((4, 1)), labels, np.zeros((1, 3)))
    assert summary["top1_accuracy"] == 0.25 and summary["abstained"] == 2


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


def test_weak_prototypes_fall_below_a_fraction_of_the_mean_class_maximum():
    w = np.array([[4.0, 0.5], [1.0, 0.2], [0.3, 2.0], [0.5, 0.4], [-1.0, 0.1]])
    # Class maxima 4 and 2, mean 3. Prototype maxima 4, 1, 2, 0.5, 0.1.
    # f = 0.3: below 0.9 are prototypes 3 and 4 (4's -1 is weightless under relu).
    np.testing.assert_array_equal(metrics.weak_prototype_connections(w, 0.3),
                                  [[0, 0], [0, 0], [0, 0], [1, 1], [0, 1]])
    # f = 0.5: below 1.5 are prototypes 1, 3 and 4.
    np.testing.assert_array_equal(metrics.weak_prototype_connections(w, 0.5),
                                  [[0, 0], [1, 1], [0, 0], [1, 1], [0, 1]])
    # Prototype 0 disabled: class maxima 1 and 2, mean 1.5, f = 0.5 → below 0.75: 3 and 4;
    # the disabled row is never marked.
    disabled = np.where(np.arange(5)[:, None] == 0, 0.0, w)  # an enabled_kernel()
    np.testing.assert_array_equal(metrics.weak_prototype_connections(disabled, 0.5),
                                  [[0, 0], [0, 0], [0, 0], [1, 1], [0, 1]])
    assert not metrics.weak_prototype_connections(w, 0.0).any()
    # A class whose strongest prototype is weak keeps that one connection: class maxima 4
    # and 0.5, mean 2.25, f = 0.5 → below 1.125: prototypes 1 and 2; 1 is class 1's best.
    w2 = np.array([[4.0, 0.0], [0.0, 0.5], [1.0, 0.2]])
    np.testing.assert_array_equal(metrics.weak_prototype_connections(w2, 0.5),
                                  [[0, 0], [0, 0], [1, 1]])
    assert not metrics.weak_prototype_connections(np.zeros((3, 2)), 0.5).any()
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
            metrics.weak_prototype_connections(w, bad)


def test_confusion_matrix_rows_true_columns_predicted():
    cm = metrics.confusion_matrix(S, Y)
    np.testing.assert_array_equal(cm, [[1, 0], [0, 1]])  # abstaining image 3 left out
    report = metrics.classification_report(S, P, Y, W)
    assert report["abstained_per_class"] == [0, 1] and report["abstained"] == 1


def test_roc_auc_hand_computed():
    # sklearn's documented example: 3 of the 4 positive/negative pairs are ordered right.
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # Ties count half: pos {0.5, 0.9} vs neg {0.5, 0.5} → (0.5 + 0.5 + 1 + 1) / 4.
    assert metrics.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.9]) == 0.75
    assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_auc_score_is_max_softmax_of_log1p_power():
    # log1p(1**2) = ln 2, log1p(0) = 0 → softmax (2/3, 1/3).
    np.testing.assert_allclose(metrics.auc_scores(np.array([[1.0, 0.0]]), 2.0), [2 / 3])


def test_binary_metrics_hand_computed():
    scores = np.array([[2.0, 1.0], [0.5, 1.0], [3.0, 0.0], [1.0, 2.0]])
    labels = np.array([0, 0, 1, 1])  # predictions 0, 1, 0, 1
    out = metrics.binary_metrics(scores, labels)
    assert (out["tp"], out["fn"], out["fp"], out["tn"]) == (1, 1, 1, 1)
    assert out["sensitivity"] == 0.5 and out["specificity"] == 0.5
    assert out["f1"] == 0.5 and out["balanced_accuracy"] == 0.5
    # AUC of label 1 against max-softmax scores: label-1 images have the 2nd highest and the
    # highest score (ties none) → pairs (3.0,0) > all, (1,2) vs (2,1): equal scores → 0.5.
    s = metrics.auc_scores(scores)
    expected = np.mean([[float(a > b) + 0.5 * (a == b) for b in s[:2]] for a in s[2:]])
    assert out["auc"] == expected
    report = metrics.classification_report(scores, np.ones((4, 1)), labels, np.ones((1, 2)))
    assert report["confusion_matrix"] == [[1, 1], [1, 1]] and report["f1"] == 0.5


def test_binary_metrics_count_an_abstention_as_wrong():
    # labels 0, 0, 1, 1, 1; predictions 0, abstain, 1, abstain, 0.
    scores = np.array([[2.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0], [3.0, 1.0]])
    labels = np.array([0, 0, 1, 1, 1])
    out = metrics.binary_metrics(scores, labels)
    assert (out["tp"], out["fn"], out["fp"], out["tn"]) == (1, 1, 2, 1)
    assert out["sensitivity"] == 1 / 2 and out["specificity"] == 1 / 3
    assert out["balanced_accuracy"] == (1 / 2 + 1 / 3) / 2
    # F1 of label 1: precision 1/1 (one image predicted 1), recall 1/3 → 2·1/(1 + 3).
    assert out["f1"] == 0.5


def test_the_training_accuracy_counts_an_abstention_as_wrong():
    from tests.model_test import small_model

    model = small_model(num_classes=3)
    model.classifier.kernel.assign(np.zeros(model.classifier.kernel.shape, np.float32))
    model.compile()
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    logs = model.evaluate(images, np.zeros(4, np.int32), verbose=0, return_dict=True)
    assert logs["accuracy"] == 0.0  # every score is 0; argmax would say class 0 = the label
