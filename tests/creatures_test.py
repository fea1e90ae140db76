"""The built-in creatures benchmark: classes by part attributes, not by colours alone."""
import numpy as np
import pytest
from PIL import Image

from pipnet_tf.data import creatures_render as cr
from pipnet_tf.data.cub import load_cub_layout
from pipnet_tf.data.synthetic import SyntheticSpec, write_synthetic_cub

SIZE = 96


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    spec = SyntheticSpec(image_size=SIZE, train_per_class=24, test_per_class=12,
                         ood_per_kind=3, kind="creatures", occlusion_prob=0.5)
    return load_cub_layout(write_synthetic_cub(tmp_path_factory.mktemp("creatures"), spec))


def test_every_image_satisfies_exactly_its_own_class():
    for label in range(len(cr.CLASS_NAMES)):
        for i in range(30):
            attributes = cr.sample_attributes(np.random.default_rng([label, i]), label)
            assert cr.classes_of(attributes) == [label]
    # Every option of every attribute appears in many classes (not presence-defined).
    seen = {k: set() for k in cr.OPTIONS}
    for label in range(len(cr.CLASS_NAMES)):
        for i in range(30):
            for k, v in cr.sample_attributes(np.random.default_rng([99, label, i]), label).items():
                seen[k].add((v, label))
    for k, pairs in seen.items():
        for option in cr.OPTIONS[k]:
            assert len({label for v, label in pairs if v == option}) >= 2, (k, option)


def test_layout_parts_and_boxes(dataset):
    assert dataset.class_names == list(cr.CLASS_NAMES) and len(dataset.class_names) == 12
    assert dataset.part_names == list(cr.PART_NAMES) and len(dataset.part_names) == 10
    train, test = dataset.split("train"), dataset.split("test")
    assert len(train) == 12 * 24 and len(test) == 12 * 12
    locs, boxes = train.part_locs, train.bboxes
    assert np.all(np.isfinite(boxes)) and np.all(boxes[:, 2:] > 0.25 * SIZE)
    x, y = locs[..., 0], locs[..., 1]
    inside = ((x >= boxes[:, None, 0] - 1) & (x <= boxes[:, None, 0] + boxes[:, None, 2] + 1)
              & (y >= boxes[:, None, 1] - 1) & (y <= boxes[:, None, 1] + boxes[:, None, 3] + 1))
    assert inside.all()
    hidden = 1 - locs[..., 2].mean()
    assert 0.02 < hidden < 0.3  # leaves hide some parts in about half of the images
    for kind in cr.OOD_KINDS:
        assert len(list((dataset.root / "ood" / kind).glob("*.png"))) == 3


def test_parts_are_10_to_30_px_at_224():
    image, parts, bbox = cr.render_example(np.random.default_rng(3), 0, 224, occlusion_prob=0)
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    eyes = np.array([parts["left eye"][:2], parts["right eye"][:2]])
    assert 10 < np.linalg.norm(eyes[0] - eyes[1]) < 20  # eyes 7-10 px wide, 14 px apart
    assert 80 < bbox[3] < 160  # the creature is 90-140 px tall


def test_deterministic():
    a = cr.render_example(np.random.default_rng(7), 4, 64)
    b = cr.render_example(np.random.default_rng(7), 4, 64)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1] and a[2] == b[2]


def _histograms(paths, bins=4):
    out = []
    for path in paths:
        pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3) // (256 // bins)
        index = pixels[:, 0] * bins * bins + pixels[:, 1] * bins + pixels[:, 2]
        out.append(np.bincount(index, minlength=bins ** 3) / len(index))
    return np.array(out)


def test_colour_histograms_alone_stay_near_chance(dataset):
    """A colour-histogram classifier (nearest class mean, and softmax regression) scores at
    most twice chance: classes differ by shapes, patterns and where colours sit."""
    train, test = dataset.split("train"), dataset.split("test")
    xtr, xte = _histograms(train.paths), _histograms(test.paths)
    ytr, yte = train.labels, test.labels
    k = len(dataset.class_names)
    chance = 1.0 / k
    means = np.stack([xtr[ytr == c].mean(0) for c in range(k)])
    nearest = np.abs(xte[:, None] - means[None]).sum(-1).argmin(1)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a, b = (xtr - mu) / sd, (xte - mu) / sd
    w, bias = np.zeros((a.shape[1], k)), np.zeros(k)
    onehot = np.eye(k)[ytr]
    for _ in range(500):
        z = a @ w + bias
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= 0.1 * (a.T @ (p - onehot) / len(a) + 1e-3 * w)
        bias -= 0.1 * (p - onehot).mean(0)
    train_fit = np.mean((a @ w + bias).argmax(1) == ytr)
    assert train_fit > 2 * chance  # the regression did learn its training set
    for predicted in (nearest, (b @ w + bias).argmax(1)):
        assert np.mean(predicted == yte) <= 2 * chance


def test_class_subset_holds_the_full_datasets_images_relabelled(dataset, tmp_path):
    """`SyntheticSpec.classes` (make demo's `creatures_demo`) writes only those classes,
    labelled 1..K in the order given, each image byte-identical to the full dataset's."""
    chosen = ("PurpleWings_YellowBelly", "HookedBeak_StripedCrown")
    spec = SyntheticSpec(image_size=SIZE, train_per_class=3, test_per_class=2, ood_per_kind=1,
                         kind="creatures", occlusion_prob=0.5, classes=chosen)
    subset = load_cub_layout(write_synthetic_cub(tmp_path, spec))
    assert subset.class_names == list(chosen)
    train, test = subset.split("train"), subset.split("test")
    assert sorted(train.labels.tolist()) == [0, 0, 0, 1, 1, 1] and len(test) == 4
    full_train = dataset.split("train")
    for label, name in enumerate(chosen):
        full_paths = [p for p, y in zip(full_train.paths, full_train.labels)
                      if y == cr.CLASS_NAMES.index(name)][:3]
        sub_paths = [p for p, y in zip(train.paths, train.labels) if y == label]
        for a, b in zip(sub_paths, full_paths):
            np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
        rows = train.part_locs[train.labels == label]
        full_rows = full_train.part_locs[full_train.labels == cr.CLASS_NAMES.index(name)][:3]
        np.testing.assert_allclose(rows, full_rows)
    with pytest.raises(ValueError, match="classes must be distinct names"):
        SyntheticSpec(kind="creatures", classes=("NoSuchClass",))
    full = SyntheticSpec(kind="creatures", occlusion_prob=0.5)
    assert spec.fingerprint() != full.fingerprint()
    assert set(cr.DEMO_CLASSES) <= set(cr.CLASS_NAMES) and len(cr.DEMO_CLASSES) == 6


def test_cache_names_follow_the_drawings_version(monkeypatch):
    """Full sets and class subsets alike get a new cache folder when the drawings change."""
    specs = [SyntheticSpec(kind="creatures"),
             SyntheticSpec(kind="creatures", classes=cr.DEMO_CLASSES)]
    before = [s.fingerprint() for s in specs]
    monkeypatch.setattr(cr, "VERSION", cr.VERSION + 1)
    assert all(s.fingerprint() != b for s, b in zip(specs, before))


def test_demo_dataset_is_the_six_demo_classes_with_the_recipe(tmp_path):
    from pipnet_tf.data.datasets import dataset_request
    from pipnet_tf.data.registry import open_dataset
    from trainers.configs import resolve_recipe

    config = resolve_recipe("creatures_demo", {}).replace(
        cache_dir=str(tmp_path), synthetic_train_per_class=1, synthetic_test_per_class=1)
    assert config.net == "tiny_cnn" and config.background_loss > 0 and config.image_size == 128
    assert config.epochs == 60  # the demo's 10-minute budget
    source = open_dataset(dataset_request(config))
    assert list(source.class_names) == list(cr.DEMO_CLASSES)
    assert set(source.default_ood) == set(cr.OOD_KINDS)


@pytest.mark.parametrize("dataset", ["cub", "folder:/some/images", "creatures",
                                     "creatures_demo"])
def test_tiny_cnn_on_cub_layout_or_folder_gets_the_from_scratch_recipe(dataset):
    from pipnet_tf.data.registry import parse_dataset
    from trainers.configs import FROM_SCRATCH, FROM_SCRATCH_DATASETS, resolve_recipe

    config = resolve_recipe(dataset, {"net": "tiny_cnn", "weights": "none", "epochs": 7})
    assert config.epochs == 7  # a flag given on the command line wins
    changed = FROM_SCRATCH_DATASETS[parse_dataset(dataset)[0]]
    for field, value in FROM_SCRATCH.items():
        if field != "epochs":
            assert getattr(config, field) == changed.get(field, value), field
    assert (config.image_size == 128) == (dataset == "creatures_demo")
    assert config.train_box_margin > 0 and config.shrink_per_epoch > 0


def test_pretrained_backbones_and_other_datasets_keep_their_presets():
    from trainers.configs import preset, resolve_recipe

    assert resolve_recipe("cub", {}) == preset("cub")  # ConvNeXt, the paper's settings
    assert resolve_recipe("cars", {"net": "tiny_cnn"}) == preset("cars").replace(net="tiny_cnn")
    assert resolve_recipe("cub", {"net": "tiny_cnn"}).train_box_margin > 0


def test_backbone_width_reaches_the_trainers_model():
    from pipnet_tf.config import TrainConfig
    from trainers.experiment import build_model

    assert TrainConfig().backbone_options() == {}
    config = TrainConfig(net="tiny_cnn", weights="none", image_size=32, backbone_width=6)
    assert config.backbone_options() == {"width": 6}
    assert build_model(config, num_classes=3).num_features == 4 * 6  # tiny_cnn: 4x its stem
    deeper = config.replace(backbone_depth=2)
    assert deeper.backbone_options() == {"width": 6, "depth": 2}
    assert build_model(deeper, num_classes=3).backbone.depth == 2
