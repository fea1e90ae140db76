"""Part purity (paper Table 3, reference `eval_cub_csv.py`)."""
import numpy as np

from pipnet_tf import purity
from pipnet_tf.data import geometry
from pipnet_tf.patch_geometry import REFERENCE_RULE

GRID_26 = REFERENCE_RULE.geometry(224, (26, 26))


def test_left_right_parts_merge():
    groups = purity.merged_part_groups(["back", "left eye", "right eye", "left wing", "right wing"])
    assert groups == [("back", [0]), ("eye", [1, 2]), ("wing", [3, 4])]


def _dataset(n=40, seed=0):
    rng = np.random.default_rng(seed)
    names = ["beak", "left eye", "right eye", "tail"]
    locs = np.zeros((n, 4, 3))
    locs[..., :2] = rng.uniform(20, 204, size=(n, 4, 2))
    locs[..., 2] = 1
    locs[::3, 1, 2] = 0  # some left eyes invisible
    return names, locs


def _box_at(x, y):
    h, w = int(y // 8), int(x // 8)  # cell whose box contains the point (13x13 would be coarser)
    return GRID_26.box(min(h, 25), min(w, 25))


def test_purity_one_when_patches_sit_on_a_part_centre():
    names, locs = _dataset()
    groups = purity.merged_part_groups(names)
    # Prototype 0 on the beak; prototype 1 on whichever eye is visible (right eye here).
    det = {0: [(i, _box_at(*locs[i, 0, :2])) for i in range(10)],
           1: [(i, _box_at(*locs[i, 2, :2])) for i in range(10, 20)]}
    for i, box in det[0]:
        assert box[0] <= locs[i, 0, 1] <= box[1] and box[2] <= locs[i, 0, 0] <= box[3]
    out = purity.purity_summary(det, locs, names, 32)
    assert out["per_prototype"]["0"]["part"] == "beak"
    assert out["per_prototype"]["1"]["part"] == "eye"
    assert out["mean"] == 1.0 and out["std"] == 0.0 and out["part_related_prototypes"] == 2
    assert purity.prototype_purity(det[1], locs, groups)["purity"] == 1.0


def test_purity_low_for_random_patches():
    names, locs = _dataset(200, seed=1)
    rng = np.random.default_rng(2)
    det = {p: [(int(i), GRID_26.box(*rng.integers(0, 26, 2)))
               for i in rng.choice(200, 10, replace=False)] for p in range(30)}
    out = purity.purity_summary(det, locs, names, 32)
    assert out["mean"] < 0.35, out["mean"]


def test_part_counts_only_images_where_it_is_visible_and_resize_mapping():
    locs = np.array([[[10.0, 10.0, 1.0]], [[100.0, 100.0, 0.0]]])
    det = [(0, (0, 32, 0, 32)), (1, (0, 32, 0, 32))]
    assert purity.prototype_purity(det, locs, [("beak", [0])])["purity"] == 1.0
    resized = geometry.map_part_locs(np.array([[[50.0, 20.0, 1.0]]]), np.array([[100, 40]]), 224)
    np.testing.assert_allclose(resized, [[[112.0, 112.0, 1.0]]])
    assert purity.centre_patch((0, 40, 0, 32), 32) == (4.0, 36.0, 0.0, 32.0)


def test_prototype_patches_topk_and_threshold():
    presence = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.8]])
    locations = np.zeros((3, 2), np.int32)
    grid = REFERENCE_RULE.geometry(64, (8, 8))
    top = purity.prototype_patches(presence, locations, grid, [0, 1], k=2)
    assert [i for i, _ in top[0]] == [0, 1] and [i for i, _ in top[1]] == [2, 1]
    thr = purity.prototype_patches(presence, locations, grid, [0], threshold=0.5)
    assert [i for i, _ in thr[0]] == [0, 1] and thr[0][0][1] == (0, 9, 0, 9)
