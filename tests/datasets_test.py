"""Dataset sources (CUB layout, Cars devkit, Pets layout, class folders, tfds builders),
bounding-box crops, part-location mapping and the per-dataset wiring of `build_data`."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from pipnet_tf.data import cars as cars_lib
from pipnet_tf.data import datasets, geometry, pipeline, registry
from pipnet_tf.data.folder import load_image_folder
from pipnet_tf.data.pets import load_pets_layout
from pipnet_tf.data.records import stratified_split
from pipnet_tf.data.sources import DatasetRequest, DatasetUnavailableError
from trainers.configs import PRESETS


def load_source(spec: str, data_dir: str = "", cache_dir=".cache/pipnet_tf"):
    """The registry's view of `--dataset=spec --data_dir=data_dir`."""
    name, path = registry.parse_dataset(spec)
    return registry.open_dataset(DatasetRequest(name, path, data_dir, str(cache_dir)))


def _save(path: pathlib.Path, array: np.ndarray, fmt: str = "PNG") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, fmt)
    return str(path)


# ----------------------------------------------------------------------------- geometry
def test_crop_boxes_round_like_pil_clip_and_fall_back_to_the_full_image():
    sizes = np.array([[100, 50], [100, 50], [100, 50], [100, 50]])
    bboxes = np.array([[10.4, 5.6, 20.2, 10.0],   # PIL rounds: (10, 6, 31, 16)
                       [90.0, 40.0, 30.0, 30.0],  # clipped to the image
                       [np.nan] * 4,              # no box: whole image
                       [20.0, 20.0, 0.2, 5.0]])   # empty after rounding: whole image
    np.testing.assert_array_equal(geometry.crop_boxes(bboxes, sizes), [
        [10, 6, 31, 16], [90, 40, 100, 50], [0, 0, 100, 50], [0, 0, 100, 50]])
    np.testing.assert_array_equal(geometry.crop_boxes(None, sizes[:1]), [[0, 0, 100, 50]])
    norm = geometry.normalized_boxes([[10, 6, 31, 16]], [[100, 50]])
    np.testing.assert_allclose(norm, [[6 / 50, 10 / 100, 16 / 50, 31 / 100]], rtol=1e-6)


def test_graph_crop_takes_the_same_pixels_as_pil_crop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), np.uint8)
    bbox = np.array([[7.6, 3.2, 30.9, 25.5]])
    box = geometry.crop_boxes(bbox, [[53, 37]])
    expected = np.asarray(Image.fromarray(image).crop(tuple(bbox[0, :2]) + tuple(
        bbox[0, :2] + bbox[0, 2:])))
    got = pipeline.crop_fraction(tf.constant(image), geometry.normalized_boxes(box, [[53, 37]])[0])
    np.testing.assert_array_equal(got.numpy(), expected)


def test_map_part_locs_through_crop_and_resize():
    locs = np.array([[[60.0, 40.0, 1.0], [10.0, 10.0, 1.0], [149.0, 59.0, 0.0]]])
    out = geometry.map_part_locs(locs, [[200, 100]], 10, bboxes=[[50.0, 20.0, 100.0, 40.0]])
    np.testing.assert_allclose(out[0, 0], [1.0, 5.0, 1.0])
    np.testing.assert_allclose(out[0, 1], [-4.0, -2.5, 0.0])  # outside the crop: invisible
    np.testing.assert_allclose(out[0, 2], [9.9, 9.75, 0.0])   # invisible stays invisible
    full = geometry.map_part_locs(locs, [[200, 100]], 10)
    np.testing.assert_allclose(full[0, 0], [3.0, 4.0, 1.0])
    with pytest.raises(ValueError, match="part_locs"):
        geometry.map_part_locs(locs[0], [[200, 100]], 10)


def test_mapped_part_lands_on_the_marked_spot_of_the_cropped_resized_image(tmp_path):
    image = np.zeros((120, 160, 3), np.uint8)
    image[68:76, 98:106] = 255  # a white spot centred at (102, 72)
    path = _save(tmp_path / "spot.png", image)
    bbox, sizes = np.array([[40.0, 30.0, 100.0, 80.0]]), np.array([[160, 120]])
    boxes = geometry.normalized_boxes(geometry.crop_boxes(bbox, sizes), sizes)
    out = next(iter(pipeline.eval_dataset([path], np.zeros(1, int), 50, 1, boxes=boxes)))[0]
    mass = out.numpy()[0, ..., 0]
    ys, xs = np.mgrid[:50, :50] + 0.5
    centre = [(mass * xs).sum() / mass.sum(), (mass * ys).sum() / mass.sum()]
    mapped = geometry.map_part_locs([[[102.0, 72.0, 1.0]]], sizes, 50, bbox)[0, 0]
    np.testing.assert_allclose(centre, mapped[:2], atol=0.6)


# ----------------------------------------------------------------------------- layouts
def _tiny(rng) -> np.ndarray:
    return rng.integers(0, 256, (12, 16, 3), np.uint8)


def test_folder_with_train_and_test_and_unicode_class_names(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("Zebra finch", "Ærø gull", "a"):
            for i in range(n):
                _save(tmp_path / split / cls / f"img {i}.png", _tiny(rng))
    (tmp_path / "train" / "empty class").mkdir()
    (tmp_path / "train" / ".hidden").mkdir()
    data = load_image_folder(tmp_path)
    assert data.class_names == sorted(["Zebra finch", "Ærø gull", "a"])
    assert len(data.train) == 9 and len(data.test) == 6
    assert np.bincount(data.test.labels).tolist() == [2, 2, 2]
    assert all(f"/{data.class_names[y]}/" in p for p, y in zip(data.train.paths, data.train.labels))
    _save(tmp_path / "test" / "unknown" / "x.png", _tiny(rng))
    with pytest.raises(ValueError, match="unknown"):
        load_image_folder(tmp_path)


def test_single_tree_split_is_stratified_and_seeded(tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in (("cat", 10), ("dog", 5), ("eel", 1)):
        for i in range(n):
            _save(tmp_path / cls / f"{i}.png", _tiny(rng))
    a = load_image_folder(tmp_path, validation_size=0.2, seed=3)
    b = load_image_folder(tmp_path, validation_size=0.2, seed=3)
    c = load_image_folder(tmp_path, validation_size=0.2, seed=4)
    assert a.test.paths == b.test.paths and a.test.paths != c.test.paths
    assert np.bincount(a.test.labels, minlength=3).tolist() == [2, 1, 0]
    assert len(a.train) == 13 and not set(a.train.paths) & set(a.test.paths)
    with pytest.raises(ValueError, match="validation_size"):
        stratified_split(np.zeros(3), 1.0, 0)


def test_pets_layout(tmp_path):
    rng = np.random.default_rng(0)
    names = ["Abyssinian_1", "Abyssinian_2", "american_bulldog_10", "american_bulldog_11"]
    for n in names:
        _save(tmp_path / "images" / f"{n}.jpg", _tiny(rng), "JPEG")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "trainval.txt").write_text(
        "#Image CLASS-ID SPECIES BREED ID\nAbyssinian_1 1 1 1\namerican_bulldog_10 2 2 1\n")
    (tmp_path / "annotations" / "test.txt").write_text(
        "Abyssinian_2 1 1 1\namerican_bulldog_11 2 2 1\n")
    data = load_pets_layout(tmp_path)
    assert data.class_names == ["Abyssinian", "american_bulldog"]
    assert data.train.labels.tolist() == [0, 1] and data.test.paths[1].endswith("_11.jpg")
    source = load_source("pets", data_dir=str(tmp_path))
    policy = registry.policy(source.name)
    assert source.name == "pets" and source.part_names == []
    assert (policy.augment, policy.pretrain_augment, policy.crops_any) == ("pets", "pets", False)


def test_cars_devkit_with_a_stand_in_for_scipy(tmp_path, monkeypatch):
    for d in ("cars_train", "cars_test", "devkit"):
        (tmp_path / d).mkdir()
    for name in ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat",
                 "cars_test_annos_withlabels.mat"):
        (tmp_path / name).write_bytes(b"")
    dtype = [(k, object) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    annos = {"cars_train_annos.mat": np.array([(1, 2, 10, 20, 2, "00001.jpg")], dtype),
             "cars_test_annos_withlabels.mat": np.array(
                 [(5, 5, 6, 6, 1, "00001.jpg"), (1, 1, 4, 4, 2, "00002.jpg")], dtype)}

    def fake_loadmat(path):
        if path.name == "cars_meta.mat":
            return {"class_names": np.array(["AM General Hummer SUV 2000", "Acura RL 2012"],
                                            object)}
        return {"annotations": annos[path.name]}

    monkeypatch.setattr(cars_lib, "_loadmat", fake_loadmat)
    source = load_source("cars", data_dir=str(tmp_path))
    assert source.class_names[1] == "Acura RL 2012" and registry.policy("cars").augment == "cars"
    assert source.train.labels.tolist() == [1] and source.test.labels.tolist() == [0, 1]
    assert source.train.paths[0] == str(tmp_path.absolute() / "cars_train" / "00001.jpg")
    np.testing.assert_array_equal(source.train.bboxes[0], [0, 1, 10, 19])


# ----------------------------------------------------------------------------- tfds
@pytest.mark.parametrize("dataset,builder,num_classes,crop", [
    ("cub", "caltech_birds2011", 200, True), ("cars", "cars196", 196, False),
    ("pets", "oxford_iiit_pet", 37, False)])
def test_tfds_builders_are_materialised_once(dataset, builder, num_classes, crop, tmp_path):
    with tfds.testing.mock_data(num_examples=3):
        source = load_source(dataset, data_dir=str(tmp_path / "tfds"), cache_dir=tmp_path)
    assert len(source.class_names) == num_classes
    assert registry.policy(source.name).crop_train == registry.policy(dataset).crop_test == crop
    assert len(source.train) == len(source.test) == 3
    for path in source.train.paths + source.test.paths:
        with Image.open(path) as img:
            assert img.size[0] > 0
    stamp = next((tmp_path / "tfds" / builder).glob("*/MATERIALIZED"))
    again = load_source(dataset, data_dir=str(tmp_path / "tfds"), cache_dir=tmp_path)
    assert again.train.paths == source.train.paths and stamp.is_file()  # no tfds needed


@pytest.mark.parametrize("dataset,expected", [
    ("cub", "CUB_200_2011/images.txt"), ("cars", "devkit/cars_meta.mat"),
    ("pets", "annotations/trainval.txt"), ("folder", "PATH/train/<class>")])
def test_missing_datasets_say_what_to_place_where(dataset, expected, tmp_path):
    with pytest.raises(DatasetUnavailableError) as info:
        load_source(dataset, data_dir="" if dataset == "folder" else str(tmp_path),
                    cache_dir=tmp_path)
    assert expected in str(info.value) and f"--dataset={dataset!r}" in str(info.value)


def test_registry_parses_dataset_values():
    assert registry.parse_dataset("cub") == ("cub", "")
    assert registry.parse_dataset("folder:/data/x:y") == ("folder", "/data/x:y")
    with pytest.raises(ValueError, match="Unknown --dataset='nonsense'"):
        registry.parse_dataset("nonsense")
    with pytest.raises(ValueError, match="takes no path"):
        registry.parse_dataset("cars:/data")
    assert set(registry.DATASETS) == {"synthetic", "creatures", "creatures_demo", "cub", "cars",
                                      "pets", "folder"}
    assert registry.policy("cub").crop_train and not registry.policy("cub").crop_project
    assert registry.policy("cars", augment_override="pets").pretrain_augment == "pets"


# ----------------------------------------------------------------------------- build_data
def _write_cub(root: pathlib.Path, n_per_class: int = 4) -> pathlib.Path:
    """A 2-class CUB layout: each image is blue with a red bounding box."""
    cub = root / "CUB_200_2011"
    rows = {k: [] for k in ("images", "image_class_labels", "train_test_split",
                            "bounding_boxes", "part_locs")}
    image_id = 0
    for c in (1, 2):
        for i in range(n_per_class):
            image_id += 1
            image = np.zeros((40, 60, 3), np.uint8)
            image[..., 2] = 255
            image[10:30, 20:50] = (255, 0, 0)
            _save(cub / "images" / f"{c:03d}.Bird_{c}" / f"b{i}.png", image)
            rows["images"].append(f"{image_id} {c:03d}.Bird_{c}/b{i}.png")
            rows["image_class_labels"].append(f"{image_id} {c}")
            rows["train_test_split"].append(f"{image_id} {int(i % 2 == 0)}")
            rows["bounding_boxes"].append(f"{image_id} 20.0 10.0 30.0 20.0")
            rows["part_locs"].append(f"{image_id} 1 35.0 20.0 1")
    for name, lines in rows.items():
        target = cub / ("parts" if name == "part_locs" else "") / f"{name}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(line + "\n" for line in lines))
    (cub / "classes.txt").write_text("1 001.Bird_1\n2 002.Bird_2\n")
    (cub / "parts" / "parts.txt").write_text("1 beak\n")
    return root


def test_cub_build_data_crops_phase_2_and_test_but_not_pretraining(tmp_path, monkeypatch):
    root = _write_cub(tmp_path / "data")
    configs = {}
    real = pipeline.TwoViewSource

    def spy(paths, labels, config, batch_size, seed, **kwargs):
        configs[seed] = (config, kwargs.get("boxes"))
        return real(paths, labels, config, batch_size, seed, **kwargs)

    monkeypatch.setattr(datasets.pipeline, "TwoViewSource", spy)
    config = PRESETS["cub"].replace(data_dir=str(root), image_size=16, batch_size=2,
                                    batch_size_pretrain=2, cache_dir=str(tmp_path / "cache"))
    data = datasets.build_data(config)
    pre_config, pre_boxes = configs[config.seed]
    train_config, train_boxes = configs[config.seed + 1]
    assert (pre_config.resize_size, train_config.resize_size) == (16 + 32, 16 + 8)
    assert pre_boxes is None and train_boxes.shape == (4, 4)
    test_images = next(iter(data.test.dataset(2)))[0].numpy()
    assert test_images.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(test_images[..., 0], 255)  # only the red box remains
    full = next(iter(data.test_full.dataset(2)))[0].numpy()
    assert full[..., 2].max() == 255  # full images keep the blue border
    view1, _, labels = next(iter(data.train.epochs(0, 1)))
    assert view1.shape == (2, 16, 16, 3) and labels.shape == (2,)
    assert data.class_names == ["Bird_1", "Bird_2"] and data.test_full.part_locs.shape == (4, 1, 3)
    np.testing.assert_allclose(data.test_full.part_locs[0, 0], [35 * 16 / 60, 20 * 16 / 40, 1])
    # In the crop (x 20..50, y 10..30 → 16 px) the beak at (35, 20) sits in the middle.
    np.testing.assert_allclose(data.test.part_locs[0, 0], [15 * 16 / 30, 10 * 16 / 20, 1])
    assert data.project.boxes is None and data.policy.crop_test


def test_cars_devkit_real_mat_files(tmp_path):
    """The devkit's MATLAB struct/cell arrays, written with scipy and read back."""
    from scipy.io import savemat

    for d in ("cars_train", "cars_test", "devkit"):
        (tmp_path / d).mkdir()
    names = np.empty((1, 2), object)
    names[0, 0], names[0, 1] = "AM General Hummer SUV 2000", "Acura RL 2012"
    savemat(tmp_path / "devkit" / "cars_meta.mat", {"class_names": names})
    fields = [(k, object) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]

    def annos(rows):
        table = np.empty((1, len(rows)), fields)
        for i, row in enumerate(rows):
            table[0, i] = tuple(np.array([[v]]) if not isinstance(v, str) else v for v in row)
        return {"annotations": table}

    savemat(tmp_path / "devkit" / "cars_train_annos.mat",
            annos([(1, 2, 10, 20, 2, "00001.jpg"), (3, 3, 8, 9, 1, "00002.jpg")]))
    savemat(tmp_path / "cars_test_annos_withlabels.mat", annos([(5, 5, 6, 6, 1, "00001.jpg")]))
    source = load_source("cars", data_dir=str(tmp_path))
    assert source.class_names == ["AM General Hummer SUV 2000", "Acura RL 2012"]
    assert source.train.labels.tolist() == [1, 0] and source.test.labels.tolist() == [0]
    np.testing.assert_array_equal(source.train.bboxes[0], [0, 1, 10, 19])
    assert source.test.paths[0].endswith("cars_test/00001.jpg")


def test_pretrain_box_margin_pretrains_on_grown_bounding_box_crops(tmp_path, monkeypatch):
    root = _write_cub(tmp_path / "data")
    calls = {}
    real = pipeline.TwoViewSource

    def spy(paths, labels, config, batch_size, seed, **kwargs):
        calls[seed] = kwargs
        return real(paths, labels, config, batch_size, seed, **kwargs)

    monkeypatch.setattr(datasets.pipeline, "TwoViewSource", spy)
    config = PRESETS["cub"].replace(data_dir=str(root), image_size=16, batch_size=2,
                                    batch_size_pretrain=2, cache_dir=str(tmp_path / "cache"),
                                    pretrain_box_margin=0.0)
    data = datasets.build_data(config)
    pre, train = calls[config.seed], calls[config.seed + 1]
    np.testing.assert_array_equal(pre["boxes"], train["boxes"])  # the same object boxes
    assert pre["box_margin"] == 0.0
    # Margin 0: the exact box, which is all red, whatever the augmentation's geometry.
    view1, view2, _ = next(iter(data.pretrain.epochs(0, 1)))
    assert view1.shape == (2, 16, 16, 3)
    assert data.pretrain.box_margin == 0.0

    datasets.build_data(config.replace(pretrain_box_margin=0.5))
    assert calls[config.seed]["box_margin"] == 0.5 and calls[config.seed]["boxes"] is not None
    datasets.build_data(config.replace(pretrain_box_margin=-1.0))  # CUB's choice: full images
    assert calls[config.seed]["boxes"] is None


def test_background_loss_gives_both_phases_object_masks_when_there_are_boxes(tmp_path):
    root = _write_cub(tmp_path / "data")
    config = PRESETS["cub"].replace(data_dir=str(root), image_size=16, batch_size=2,
                                    batch_size_pretrain=2, cache_dir=str(tmp_path / "cache"),
                                    background_loss=1.0, train_box_margin=0.5)
    data = datasets.build_data(config)
    for source, full_image in ((data.pretrain, True), (data.train, False)):
        view1, _, labels, mask1, mask2 = next(iter(source.epochs(0, 1)))
        assert mask1.shape == mask2.shape == (2, 16, 16, 1)
        red = view1.numpy()[..., 0] > view1.numpy()[..., 2]
        on_object = mask1.numpy()[..., 0] > 0.5
        assert np.mean(red == on_object) > 0.85
        if full_image:  # pretraining keeps CUB's full images: their border is background
            assert on_object.mean() < 0.9 and (~on_object).any(axis=(1, 2)).all()
    assert not data.pretrain._crop and data.train._crop
    # Without the flag, or without boxes, the batches are the usual triples.
    assert len(next(iter(datasets.build_data(config.replace(background_loss=0.0))
                         .train.epochs(0, 1)))) == 3
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for i in range(2):
                _save(tmp_path / "tree" / split / cls / f"{i}.png", _tiny(rng))
    folder = datasets.build_data(config.replace(dataset=f"folder:{tmp_path / 'tree'}"))
    assert len(next(iter(folder.pretrain.epochs(0, 1)))) == 3


def test_pretrain_box_margin_without_boxes_names_the_flag(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for i in range(2):
                _save(tmp_path / "tree" / split / cls / f"{i}.png", _tiny(rng))
    config = PRESETS["cub"].replace(dataset=f"folder:{tmp_path / 'tree'}", image_size=16,
                                    batch_size=2, batch_size_pretrain=2,
                                    cache_dir=str(tmp_path / "cache"), pretrain_box_margin=0.5)
    with pytest.raises(ValueError, match="--pretrain_box_margin=0.5 needs bounding boxes"):
        datasets.build_data(config)
    cub = _write_cub(tmp_path / "data")
    unlabeled = tmp_path / "unlabeled"
    _save(unlabeled / "x.png", _tiny(rng))
    _save(unlabeled / "y.png", _tiny(rng))
    with pytest.raises(ValueError, match="--pretrain_data=folder:.* images have none"):
        datasets.build_data(config.replace(dataset="cub", data_dir=str(cub),
                                           pretrain_data=f"folder:{unlabeled}"))


def test_pretrain_include_train_adds_the_labelled_images_with_their_boxes(tmp_path):
    cub = _write_cub(tmp_path / "data")  # 4 training images, blue with a red box
    unlabeled = tmp_path / "unlabeled"
    for i in range(3):  # green, no box: the whole image counts as object
        image = np.zeros((40, 60, 3), np.uint8)
        image[..., 1] = 255
        _save(unlabeled / f"{i}.png", image)
    config = PRESETS["cub"].replace(data_dir=str(cub), image_size=16, batch_size=2,
                                    batch_size_pretrain=7, cache_dir=str(tmp_path / "cache"),
                                    background_loss=1.0, pretrain_data=f"folder:{unlabeled}",
                                    pretrain_include_train=True)
    data = datasets.build_data(config)
    assert data.pretrain.num_examples == 3 + 4
    view1, _, _, mask1, _ = next(iter(data.pretrain.epochs(0, 1)))
    pixels, on_object = view1.numpy(), mask1.numpy()[..., 0] > 0.5
    green = pixels[..., 1] > 0.5 * (pixels[..., 0] + pixels[..., 2])
    is_unlabeled = green.mean(axis=(1, 2)) > 0.5
    assert is_unlabeled.sum() == 3
    assert np.mean(on_object[green]) > 0.95  # no box: no background (but the affine fill)
    red = pixels[..., 0] > pixels[..., 2]
    labelled = ~is_unlabeled
    assert np.mean(red[labelled] == on_object[labelled]) > 0.85
    assert (~on_object[labelled]).any(axis=(1, 2)).all()  # the box leaves background
    # --pretrain_data alone: no boxes, so no masks; the flag alone is refused.
    alone = datasets.build_data(config.replace(pretrain_include_train=False,
                                               batch_size_pretrain=3))
    assert alone.pretrain.num_examples == 3 and len(next(iter(alone.pretrain.epochs(0, 1)))) == 3
    with pytest.raises(ValueError, match="--pretrain_include_train .* --pretrain_data is not set"):
        datasets.build_data(config.replace(pretrain_data=""))
