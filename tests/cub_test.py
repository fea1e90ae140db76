"""Tests for pipnet_tf/data/cub.py (the CUB-200-2011 layout reader)."""

import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from pipnet_tf.data import cub
from pipnet_tf.data import synthetic

SPEC = synthetic.SyntheticSpec(train_per_class=4, test_per_class=2, ood_per_kind=1, seed=1)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return synthetic.write_synthetic_cub(tmp_path_factory.mktemp("cache"), SPEC)


def _write(root: pathlib.Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _tiny_tree(root: pathlib.Path) -> pathlib.Path:
    """2 classes, 3 images (ids 2, 5, 7; one JPEG), 2 parts; tables deliberately unsorted."""
    for rel, fmt in (("001.Alpha_Bird/a_2.png", "PNG"), ("001.Alpha_Bird/a_5.jpg", "JPEG"),
                     ("002.Beta_Bird/b_7.png", "PNG")):
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 10), (200, 30, 30)).save(root / "images" / rel, format=fmt)
    _write(root, "images.txt", "5 001.Alpha_Bird/a_5.jpg\n2 001.Alpha_Bird/a_2.png\n\n"
                               "7 002.Beta_Bird/b_7.png\n")
    _write(root, "classes.txt", "2 002.Beta_Bird\n1 001.Alpha_Bird\n")
    _write(root, "image_class_labels.txt", "2 1\n5 1\n7 2\n")
    _write(root, "train_test_split.txt", "7 1\n2 1\n5 0\n")
    _write(root, "bounding_boxes.txt", "2 1.0 2.0 10.0 5.0\n7 0.5 0.5 3.0 4.0\n")
    _write(root, "parts/parts.txt", "1 left eye\n2 tail\n")
    _write(root, "parts/part_locs.txt", "2 1 3.0 4.0 1\n2 2 0.0 0.0 0\n7 2 8.5 9.5 1\n")
    return root


def test_reads_synthetic_layout(synthetic_root: pathlib.Path) -> None:
    layout = cub.load_cub_layout(synthetic_root)
    assert layout.root == synthetic_root.absolute()
    assert layout.class_names == list(synthetic.CLASS_NAMES)
    assert layout.part_names == list(synthetic.PART_NAMES)
    assert layout.num_classes == 6
    everything, train, test = (layout.split(s) for s in ("all", "train", "test"))
    assert (len(everything), len(train), len(test)) == (36, 24, 12)
    assert everything.labels.dtype == np.int32 and everything.labels.shape == (36,)
    assert everything.image_ids.dtype == np.int64
    np.testing.assert_array_equal(everything.image_ids, np.arange(1, 37))
    np.testing.assert_array_equal(everything.labels, np.repeat(np.arange(6), 6))
    np.testing.assert_array_equal(train.labels, np.repeat(np.arange(6), 4))
    assert everything.bboxes.shape == (36, 4) and everything.bboxes.dtype == np.float32
    assert np.all(np.isfinite(everything.bboxes))
    assert everything.part_locs.shape == (36, 10, 3)
    assert everything.part_locs.dtype == np.float32
    raw = np.loadtxt(synthetic_root / "parts" / "part_locs.txt")
    np.testing.assert_allclose(everything.part_locs.reshape(-1, 3), raw[:, 2:], atol=1e-4)
    assert all(pathlib.Path(p).is_absolute() and pathlib.Path(p).is_file()
               for p in everything.paths)
    assert "001.RedDisc_BlueSquare" in everything.paths[0]


def test_tiny_tree_gives_exact_arrays(tmp_path: pathlib.Path) -> None:
    layout = cub.load_cub_layout(_tiny_tree(tmp_path))
    assert layout.class_names == ["Alpha_Bird", "Beta_Bird"]
    assert layout.part_names == ["left eye", "tail"]
    records = layout.split("all")
    assert len(records) == 3
    images = tmp_path.absolute() / "images"
    assert records.paths == [str(images / "001.Alpha_Bird/a_2.png"),
                             str(images / "001.Alpha_Bird/a_5.jpg"),
                             str(images / "002.Beta_Bird/b_7.png")]
    np.testing.assert_array_equal(records.image_ids, np.array([2, 5, 7], np.int64))
    np.testing.assert_array_equal(records.labels, np.array([0, 0, 1], np.int32))
    np.testing.assert_array_equal(
        records.bboxes, np.array([[1, 2, 10, 5], [np.nan] * 4, [0.5, 0.5, 3, 4]], np.float32))
    expected_locs = np.zeros((3, 2, 3), np.float32)
    expected_locs[0, 0] = (3, 4, 1)
    expected_locs[2, 1] = (8.5, 9.5, 1)
    np.testing.assert_array_equal(records.part_locs, expected_locs)
    train, test = layout.split("train"), layout.split("test")
    np.testing.assert_array_equal(train.image_ids, [2, 7])
    np.testing.assert_array_equal(test.image_ids, [5])
    assert test.paths[0].endswith(".jpg") and test.bboxes.shape == (1, 4)
    with Image.open(test.paths[0]) as img:
        assert img.format == "JPEG"


def test_parent_folder_form(tmp_path: pathlib.Path) -> None:
    _tiny_tree(tmp_path / "CUB_200_2011")
    layout = cub.load_cub_layout(str(tmp_path))
    assert layout.root == (tmp_path / "CUB_200_2011").absolute()
    assert len(layout.split("all")) == 3


def test_optional_tables_absent(tmp_path: pathlib.Path) -> None:
    root = _tiny_tree(tmp_path)
    for name in ("bounding_boxes.txt", "parts/part_locs.txt", "parts/parts.txt"):
        (root / name).unlink()
    records = cub.load_cub_layout(root).split("all")
    assert np.all(np.isnan(records.bboxes)) and records.bboxes.shape == (3, 4)
    assert records.part_locs.shape == (3, 0, 3)


def test_missing_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cub.load_cub_layout(tmp_path / "nowhere")
    root = _tiny_tree(tmp_path)
    (root / "images.txt").unlink()
    with pytest.raises(FileNotFoundError, match="images.txt") as info:
        cub.load_cub_layout(root)
    assert str(tmp_path) in str(info.value)
    _tiny_tree(root)
    (root / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="'classes.txt'.*" + re.escape(str(tmp_path))):
        cub.load_cub_layout(root)


@pytest.mark.parametrize("name, text, message", [
    ("image_class_labels.txt", "2 1\n5\n7 2\n", r"image_class_labels.txt' line 2: expected 2"),
    ("parts/part_locs.txt", "2 1 3.0 4.0 1\n7 2 x 9.5 1\n", r"part_locs.txt' line 2: 'x'"),
    ("image_class_labels.txt", "2 1\n5 1\n7 3\n", r"line 3: unknown class id 3"),
    ("train_test_split.txt", "7 1\n2 1\n", r"image id 5 .*train_test_split.txt"),
    ("train_test_split.txt", "7 1\n2 1\n5 2\n", r"train_test_split.txt' line 3"),
    ("images.txt", "2 a.png\n2 b.png\n", r"images.txt' line 2: duplicate id 2"),
    ("bounding_boxes.txt", "2 1 2 3 4\n9 1 2 3 4\n", r"line 2: unknown image id 9"),
    ("parts/part_locs.txt", "2 3 1.0 1.0 1\n", r"line 1: unknown part id 3"),
    ("classes.txt", "1.5 001.Alpha_Bird\n", r"classes.txt' line 1: expected integer"),
])
def test_malformed_tables(tmp_path: pathlib.Path, name: str, text: str, message: str) -> None:
    root = _tiny_tree(tmp_path)
    _write(root, name, text)
    with pytest.raises(ValueError, match=message):
        cub.load_cub_layout(root)


def test_bad_split_name_and_select(tmp_path: pathlib.Path) -> None:
    layout = cub.load_cub_layout(_tiny_tree(tmp_path))
    with pytest.raises(ValueError, match="'validation'"):
        layout.split("validation")
    records = layout.split("all")
    picked = records.select(np.array([2, 0]))
    np.testing.assert_array_equal(picked.image_ids, [7, 2])
    assert picked.paths == [records.paths[2], records.paths[0]]
    with pytest.raises(ValueError, match=r"\(3,\)"):
        records.select(np.array([True, False]))


def test_empty_optional_table_reads_as_no_rows(tmp_path):
    from pipnet_tf.data import cub

    path = tmp_path / "bounding_boxes.txt"
    path.write_text("")
    linenos, table = cub._read_numeric(path, 5, 1)
    assert linenos == [] and table.shape == (0, 5)
