"""Tests for pipnet_tf/data/synthetic.py (the built-in synthetic parts dataset)."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipnet_tf.data import synthetic, synthetic_render

SPEC = synthetic.SyntheticSpec(image_size=64, train_per_class=6, test_per_class=3,
                               ood_per_kind=4, seed=3, occlusion_prob=0.5)
N_IMAGES = len(synthetic.CLASS_NAMES) * (SPEC.train_per_class + SPEC.test_per_class)
TABLES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt",
          "bounding_boxes.txt", "parts/parts.txt", "parts/part_locs.txt", "README.txt")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return synthetic.write_synthetic_cub(tmp_path_factory.mktemp("cache"), SPEC)


def _table(root: pathlib.Path, name: str) -> np.ndarray:
    return np.loadtxt(root / name, ndmin=2)


def _part_locs(root: pathlib.Path) -> np.ndarray:
    """(N, 10, 3) x, y, visible from part_locs.txt."""
    rows = _table(root, "parts/part_locs.txt")
    assert rows.shape == (N_IMAGES * len(synthetic.PART_NAMES), 5)
    return rows[:, 2:].reshape(N_IMAGES, len(synthetic.PART_NAMES), 3)


def _images(root: pathlib.Path) -> list[pathlib.Path]:
    lines = (root / "images.txt").read_text().splitlines()
    return [root / "images" / line.split()[1] for line in lines]


def test_layout_files_and_counts(dataset: pathlib.Path) -> None:
    assert dataset.name == f"synthetic_{SPEC.fingerprint()}"
    for name in TABLES + (synthetic.COMPLETE_MARKER,):
        assert (dataset / name).is_file(), name
    classes = (dataset / "classes.txt").read_text().splitlines()
    assert classes[0] == "1 001.RedDisc_BlueSquare"
    assert classes[2] == "3 003.Striped_or_Checker"
    assert len(classes) == 6
    parts = (dataset / "parts/parts.txt").read_text().splitlines()
    assert parts == [f"{i} {n}" for i, n in enumerate(synthetic.PART_NAMES, 1)]
    paths = _images(dataset)
    assert len(paths) == N_IMAGES and all(p.is_file() for p in paths)
    assert paths[0].parent.name == "001.RedDisc_BlueSquare"
    assert paths[0].name == "RedDisc_BlueSquare_0001.png"
    labels = _table(dataset, "image_class_labels.txt")
    split = _table(dataset, "train_test_split.txt")
    np.testing.assert_array_equal(labels[:, 0], np.arange(1, N_IMAGES + 1))
    assert np.bincount(labels[:, 1].astype(int))[1:].tolist() == [9] * 6
    assert split[:, 1].sum() == 6 * SPEC.train_per_class
    with Image.open(paths[0]) as img:
        assert img.mode == "RGB" and img.size == (64, 64)


def test_ood_counts(dataset: pathlib.Path) -> None:
    for kind in synthetic.OOD_KINDS:
        files = sorted((dataset / "ood" / kind).glob("*.png"))
        assert len(files) == SPEC.ood_per_kind, kind
        assert np.asarray(Image.open(files[0])).shape == (64, 64, 3)


def test_deterministic(dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    again = synthetic.write_synthetic_cub(tmp_path / "other_root", SPEC)
    assert again != dataset and again.name == dataset.name
    for name in TABLES:
        assert (again / name).read_bytes() == (dataset / name).read_bytes(), name
    for path in _images(dataset)[::5] + sorted(dataset.glob("ood/*/*_0002.png")):
        rel = path.relative_to(dataset)
        assert (again / rel).read_bytes() == path.read_bytes(), rel
    a = synthetic.render_example(np.random.default_rng(7), 2, 64)
    b = synthetic.render_example(np.random.default_rng(7), 2, 64)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]


def test_other_seed_differs(dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    spec = synthetic.SyntheticSpec(image_size=64, train_per_class=1, test_per_class=0,
                                   ood_per_kind=0, seed=4)
    assert spec.fingerprint() != SPEC.fingerprint()
    other = synthetic.write_synthetic_cub(tmp_path, spec)
    assert (other / "images.txt").read_text().splitlines()[0] == \
        (dataset / "images.txt").read_text().splitlines()[0]
    assert _images(other)[0].read_bytes() != _images(dataset)[0].read_bytes()


def test_complete_cache_is_reused(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
                                  ) -> None:
    spec = synthetic.SyntheticSpec(train_per_class=2, test_per_class=1, ood_per_kind=1)
    root = synthetic.write_synthetic_cub(tmp_path, spec)
    watched = [root / synthetic.COMPLETE_MARKER, root / "images.txt", _images(root)[0]]
    before = [p.stat().st_mtime_ns for p in watched]

    def fail(*args: object) -> None:
        raise AssertionError("a complete cache was regenerated")

    monkeypatch.setattr(synthetic, "_write_all", fail)
    assert synthetic.write_synthetic_cub(str(tmp_path), spec) == root
    assert [p.stat().st_mtime_ns for p in watched] == before


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_runs_are_replaced(tmp_path: pathlib.Path) -> None:
    spec = synthetic.SyntheticSpec(train_per_class=2, test_per_class=1, ood_per_kind=1)
    final = tmp_path / f"synthetic_{spec.fingerprint()}"
    prefix = f".{final.name}.partial-"
    dead = tmp_path / f"{prefix}{socket.gethostname()}-{_dead_pid()}-abc123"
    foreign = tmp_path / f"{prefix}some-other-host-{os.getpid()}-xyz789"
    for folder in (dead, foreign):
        (folder / "images").mkdir(parents=True)
        (folder / "images.txt").write_text("1 junk.png\n")
    final.mkdir()  # e.g. copied by hand, without the completion marker
    (final / "junk.txt").write_text("half written")
    root = synthetic.write_synthetic_cub(tmp_path, spec)
    assert root == final and (root / synthetic.COMPLETE_MARKER).is_file()
    assert not (root / "junk.txt").exists()
    assert len(_images(root)) == 18
    assert not dead.exists()  # its writer is dead: cleaned up
    assert foreign.exists()  # may belong to a live writer elsewhere: ignored


def test_interrupted_write_leaves_nothing(tmp_path: pathlib.Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spec = synthetic.SyntheticSpec(train_per_class=1, test_per_class=0, ood_per_kind=0)
    real = synthetic._write_all

    def killed(out: pathlib.Path, spec: synthetic.SyntheticSpec) -> None:
        real(out, spec)
        (out / synthetic.COMPLETE_MARKER).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_all", killed)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_synthetic_cub(tmp_path, spec)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "_write_all", real)
    root = synthetic.write_synthetic_cub(tmp_path, spec)
    assert (root / synthetic.COMPLETE_MARKER).is_file()


def test_present_parts_match_class_definition(dataset: pathlib.Path) -> None:
    labels = _table(dataset, "image_class_labels.txt")[:, 1].astype(int) - 1
    visible = _part_locs(dataset)[..., 2].astype(bool)
    names = np.array(synthetic.PART_NAMES)
    striped_or_checker = []
    for label, vis in zip(labels, visible):
        present = set(names[vis])
        assert {"grey_body", "brown_stick"} <= present
        class_parts = present - set(synthetic.DISTRACTOR_PART_NAMES)
        options = synthetic.CLASS_DEFINITIONS[synthetic.CLASS_NAMES[label]]
        assert class_parts in [set(o) for o in options], (label, present)
        if label == 2:
            striped_or_checker.append("striped_disc" in class_parts)
    assert 0 < sum(striped_or_checker) < len(striped_or_checker)  # both alternatives occur
    # A linear scoring sheet over part presence (no NOTs) recovers every label.
    sheet = np.array([[any(p in o for o in opts) for p in synthetic.PART_NAMES]
                      for opts in synthetic.CLASS_DEFINITIONS.values()], float)
    scores = visible.astype(float) @ sheet.T
    np.testing.assert_array_equal(scores.argmax(1), labels)
    top2 = np.sort(scores, 1)[:, -2:]
    assert np.all(top2[:, 1] > top2[:, 0])


def test_part_locs_inside_image_and_bbox(dataset: pathlib.Path) -> None:
    locs = _part_locs(dataset)
    boxes = _table(dataset, "bounding_boxes.txt")[:, 1:]
    vis = locs[..., 2] == 1
    assert np.all(locs[~vis] == 0)
    x, y = locs[..., 0], locs[..., 1]
    assert np.all((x[vis] > 0) & (x[vis] < 64) & (y[vis] > 0) & (y[vis] < 64))
    bx, by, bw, bh = (boxes[:, i:i + 1] for i in range(4))
    inside = (x >= bx) & (x <= bx + bw) & (y >= by) & (y <= by + bh)
    assert np.all(inside[vis])
    assert np.all((boxes[:, :2] >= 0) & (boxes[:, :2] + boxes[:, 2:] <= 64))
    assert np.all(boxes[:, 2:] > 10)


def test_annotations_point_at_the_parts(dataset: pathlib.Path) -> None:
    colours = {n: np.array(c, float) for n, (_, c, _) in synthetic_render._PART_STYLE.items() if c}
    locs = _part_locs(dataset)
    hits: dict[str, list[bool]] = {}
    for path, img_locs in zip(_images(dataset), locs):
        image = np.asarray(Image.open(path), float)
        for name, (x, y, v) in zip(synthetic.PART_NAMES, img_locs):
            if not v:
                continue
            i, j = int(y), int(x)
            if name == "orange_ring":  # the centre is the hole: look around it
                window = image[max(i - 6, 0):i + 7, max(j - 6, 0):j + 7].reshape(-1, 3)
                ok = np.linalg.norm(window - colours[name], axis=1).min() < 40
            elif name in ("striped_disc", "checker_square"):  # black or white texture
                pixel = image[i, j]
                ok = np.ptp(pixel) < 40 and (pixel.mean() < 80 or pixel.mean() > 180)
            else:
                ok = np.linalg.norm(image[i, j] - colours[name]) < 40
            hits.setdefault(name, []).append(bool(ok))
    assert set(hits) == set(synthetic.PART_NAMES)
    for name, ok in hits.items():
        assert np.mean(ok) >= 0.9, (name, np.mean(ok))


def test_render_example_api() -> None:
    image, parts, bbox = synthetic.render_example(np.random.default_rng(0), 0, 96)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert list(parts) == list(synthetic.PART_NAMES)
    assert parts["red_disc"][2] == 1 and parts["blue_square"][2] == 1
    assert parts["yellow_star"] == (0.0, 0.0, 0)
    assert len(bbox) == 4
    with pytest.raises(ValueError, match="6"):
        synthetic.render_example(np.random.default_rng(0), 6, 64)
    with pytest.raises(ValueError, match="'stars'"):
        synthetic.render_ood(np.random.default_rng(0), "stars", 64)


@pytest.mark.parametrize("field, value", [("image_size", 8), ("train_per_class", 0),
                                          ("seed", -1), ("occlusion_prob", 1.5)])
def test_spec_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field}.*{value}"):
        synthetic.SyntheticSpec(**{field: value})


def test_fingerprint_stable_and_sensitive() -> None:
    assert synthetic.SyntheticSpec().fingerprint() == synthetic.SyntheticSpec().fingerprint()
    assert len({synthetic.SyntheticSpec(image_size=s).fingerprint() for s in (64, 96)}) == 2
