"""FPR95 thresholds (incl. the 0.999 back-off and the mean for unpredicted classes)."""
import numpy as np
import pytest
from PIL import Image

from pipnet_tf import ood


def _one_class(tops, num_classes=2, cls=0):
    scores = np.zeros((len(tops), num_classes))
    scores[:, cls] = tops
    return scores


def test_threshold_without_backoff():
    scores = _one_class(np.arange(1.0, 21.0))  # 5th percentile of 1..20 = 1 + 0.95 = 1.95
    thresholds, info = ood.class_thresholds(scores)
    np.testing.assert_allclose(thresholds, [1.95, 1.95])  # class 1: mean of the others
    assert info["backoff_steps"] == 0 and info["id_accepted"] == 0.95
    assert info["never_predicted_classes"] == [1]


def test_backoff_loop_two_steps():
    tops = np.array([9.97, 10, 11, 12, 13, 14, 15, 16, 17, 18])
    scores = _one_class(tops)
    thresholds, info = ood.class_thresholds(scores)
    # t = 9.97 + 0.45·0.03 = 9.9835 accepts 9/10 (>); 9.9835·0.999 = 9.9735 > 9.97 still,
    # 9.9835·0.999² = 9.96354 ≤ 9.97 → all accepted (>=) after 2 steps.
    assert info["backoff_steps"] == 2
    np.testing.assert_allclose(thresholds, [9.9835 * 0.999**2] * 2)
    assert info["id_accepted"] == 1.0
    assert ood.accepted(scores, thresholds).all()


def test_mean_threshold_for_never_predicted_class_and_long_backoff():
    scores = np.array([[2.0, 0, 0], [4.0, 0, 0], [0, 6.0, 0], [0, 6.0, 0]])
    thresholds, info = ood.class_thresholds(scores)
    # t0 = 2 + 0.05·2 = 2.1, t1 = 6, t2 = mean = 4.05. Class 1 needs 1 step, class 0's
    # score 2 needs 2.1·0.999^k ≤ 2 → k = 49.
    assert info["never_predicted_classes"] == [2]
    assert info["backoff_steps"] == 49
    np.testing.assert_allclose(thresholds, np.array([2.1, 6.0, 4.05]) * 0.999**49)


def test_accepted_uses_predicted_class_threshold_inclusive():
    t = np.array([1.0, 5.0])
    scores = np.array([[1.0, 0.5], [0.0, 4.9], [0.0, 5.0], [0.9, 0.0]])
    np.testing.assert_array_equal(ood.accepted(scores, t), [True, False, True, False])
    report = ood.ood_report(_one_class(np.arange(1.0, 21.0)), {"x": scores})
    # Thresholds 1.95 for both classes: rows 2 and 3 pass.
    assert report["sources"]["x"]["accepted"] == 0.5 and report["tpr"] == 0.95
    assert "| ID test | x | 4 | 50.0% |" in ood.markdown_table(report)


def test_folder_listing_and_source_names(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/one.PNG", "a/b/two.jpg", "a/notes.txt"):
        path = tmp_path / name
        if name.endswith("txt"):
            path.write_text("x")
        else:
            Image.new("RGB", (4, 4)).save(path, format="PNG")
    files = ood.list_images(tmp_path / "a")
    assert [f[len(str(tmp_path)) + 1:] for f in files] == ["a/b/two.jpg", "a/one.PNG"]
    assert ood.parse_source(f"folder:{tmp_path}/a/") == ("a", f"{tmp_path}/a/")
    assert ood.parse_source("cars=folder:/x/y") == ("cars", "/x/y")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ood.list_images(tmp_path / "missing")
