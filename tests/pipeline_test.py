"""Tests for pipnet_tf.data.pipeline on tiny PNG files."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipnet_tf.data import pipeline
from pipnet_tf.data.augment import AugmentConfig

CONFIG = AugmentConfig.for_image_size(16)  # R = 24, S = 20


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Six PNGs of different sizes; image i is a solid colour (10 * i, 0, 255 - 10 * i)."""
    root = tmp_path_factory.mktemp("images")
    paths = []
    rng = np.random.default_rng(0)
    for i in range(6):
        h, w = 20 + 3 * i, 30 - 2 * i
        img = np.zeros((h, w, 3), np.uint8)
        img[...] = (10 * i, 0, 255 - 10 * i)
        img[h // 2:, :, 1] = rng.integers(0, 256, (h - h // 2, w))  # texture
        path = root / f"img_{i}.png"
        Image.fromarray(img).save(path)
        paths.append(str(path))
    return paths, np.arange(6) % 3


def _batches(ds):
    return [tuple(t.numpy() for t in batch) for batch in ds]


def test_decode_image(files):
    image = pipeline.decode_image(tf.constant(files[0][1]))
    assert image.dtype == tf.float32 and image.shape == (23, 28, 3)
    np.testing.assert_array_equal(image[0, 0], [10, 0, 245])


def test_two_view_dataset_shapes_dtypes_labels(files):
    paths, labels = files
    dropping = pipeline.two_view_dataset(paths, labels, CONFIG, batch_size=4, seed=1)
    assert len(_batches(dropping)) == 1  # drop_remainder=True by default
    ds = pipeline.two_view_dataset(paths, labels, CONFIG, 4, seed=1, drop_remainder=False)
    batches = _batches(ds)
    assert [b[2].shape for b in batches] == [(4,), (2,)]
    v1, v2, y = batches[0]
    assert v1.shape == v2.shape == (4, 16, 16, 3)
    assert v1.dtype == v2.dtype == np.float32 and y.dtype == np.int32
    assert v1.min() >= 0 and v1.max() <= 255 and not np.array_equal(v1, v2)
    assert sorted(np.concatenate([b[2] for b in batches])) == sorted(labels)


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        for x, z in zip(a, b):
            np.testing.assert_array_equal(x, z)


def test_same_seed_same_batches_and_epochs_differ(files):
    paths, labels = files
    tf.random.set_seed(0)  # tf.data's shuffle seeds combine with the global seed
    make = lambda seed: pipeline.TwoViewSource(paths, labels, CONFIG, 3, seed=seed)
    source = make(5)
    epoch1, epoch2 = _batches(source.epochs(0, 1)), _batches(source.epochs(1, 2))
    _assert_same(epoch1, _batches(make(5).epochs(0, 1)))  # a new process would see the same
    assert not np.array_equal(epoch1[0][0], epoch2[0][0])
    assert not np.array_equal(epoch1[0][0], _batches(make(6).epochs(0, 1))[0][0])
    # Several epochs in one dataset are the single epochs one after the other.
    _assert_same(_batches(source.epochs(0, 2)), epoch1 + epoch2)


def test_resume_skips_batches_of_the_same_epoch(files):
    paths, labels = files
    source = pipeline.TwoViewSource(paths, labels, CONFIG, 2, seed=1)
    whole = _batches(source.epochs(3, 5))
    assert source.steps_per_epoch == 3 and len(whole) == 6
    _assert_same(_batches(source.epochs(3, 5, skip_batches=2)), whole[2:])
    with pytest.raises(ValueError, match="skip_batches"):
        source.epochs(3, 5, skip_batches=3)


def test_shards_together_are_the_global_batches(files):
    """Two input pipelines with per-replica batches of 2: their k-th batches hold the
    images of global batch k (of 4), augmented identically, each image once."""
    paths = files[0] * 2  # 12 images, label = index
    source = pipeline.TwoViewSource(paths, np.arange(12), CONFIG, 4, seed=2)
    whole = _batches(source.epochs(0, 1))
    shards = [_batches(source.epochs(0, 1, num_shards=2, shard_index=i, batch_size=2))
              for i in range(2)]
    assert [len(s) for s in shards] == [3, 3]
    for k, (view1, view2, label) in enumerate(whole):
        parts = [shard[k] for shard in shards]
        merged_labels = np.concatenate([part[2] for part in parts])
        assert sorted(merged_labels) == sorted(label)
        order = {int(y): i for i, y in enumerate(label)}
        for part in parts:
            for j, y in enumerate(part[2]):
                np.testing.assert_array_equal(part[0][j], view1[order[int(y)]])
                np.testing.assert_array_equal(part[1][j], view2[order[int(y)]])
    with pytest.raises(ValueError, match="not divisible by the 3 input pipelines"):
        source.epochs(0, 1, num_shards=3)


def test_unshuffled_without_cache_keeps_order(files):
    paths, labels = files
    ds = pipeline.two_view_dataset(paths, labels, CONFIG, 2, seed=0, shuffle=False,
                                   cache=False, drop_remainder=False)
    np.testing.assert_array_equal(np.concatenate([b[2] for b in _batches(ds)]), labels)


def test_eval_dataset_preserves_order_and_resizes(files):
    paths, labels = files
    batches = _batches(pipeline.eval_dataset(paths, labels, image_size=12, batch_size=4))
    assert [b[0].shape for b in batches] == [(4, 12, 12, 3), (2, 12, 12, 3)]
    images = np.concatenate([b[0] for b in batches])
    assert images.dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)
    for i, image in enumerate(images):  # the solid top rows keep their colour
        np.testing.assert_array_equal(image[:4, :, 0], 10 * i)
        np.testing.assert_array_equal(image[:4, :, 2], 255 - 10 * i)


@pytest.mark.parametrize("paths_n,labels_n,batch,match", [
    (0, 0, 2, "paths"), (6, 5, 2, "labels"), (6, 6, 7, "batch_size"),
    (6, 6, 0, "batch_size")])
def test_bad_inputs_raise(files, paths_n, labels_n, batch, match):
    paths, labels = files
    with pytest.raises(ValueError, match=match):
        pipeline.two_view_dataset(paths[:paths_n], np.arange(labels_n), CONFIG, batch, 0)


def test_eval_bad_inputs_raise(files):
    paths, labels = files
    with pytest.raises(ValueError, match="labels"):
        pipeline.eval_dataset(paths, labels.astype(np.float32), 12, 2)
    with pytest.raises(ValueError, match="image_size"):
        pipeline.eval_dataset(paths, labels, 0, 2)
    # a batch larger than the dataset is fine without drop_remainder
    assert len(_batches(pipeline.eval_dataset(paths, labels, 12, 64))) == 1


def test_expanded_box_grows_each_side_within_the_margin():
    box = tf.constant([0.4, 0.3, 0.6, 0.5])
    grown = np.array([pipeline.expanded_box(box, tf.constant([s, 1], tf.int64), 0.5).numpy()
                      for s in range(200)])
    lo = np.array([0.4 - 0.1, 0.3 - 0.1, 0.6, 0.5])
    hi = np.array([0.4, 0.3, 0.6 + 0.1, 0.5 + 0.1])
    assert np.all(grown >= lo - 1e-6) and np.all(grown <= hi + 1e-6)
    assert np.ptp(grown, axis=0).min() > 0.08  # every side moves, independently
    edge = pipeline.expanded_box(tf.constant([0.0, 0.0, 1.0, 1.0]), tf.constant([3, 1]), 1.0)
    np.testing.assert_array_equal(edge.numpy(), [0, 0, 1, 1])  # clipped to the image


def test_expanded_box_grows_only_the_given_fraction_of_draws():
    box = np.array([0.4, 0.3, 0.6, 0.5], np.float32)
    seeds = [tf.constant([s, 2], tf.int64) for s in range(400)]
    never = [pipeline.expanded_box(tf.constant(box), s, 0.5, probability=0.0).numpy()
             for s in seeds]
    np.testing.assert_array_equal(never, np.tile(box, (400, 1)))
    half = np.array([pipeline.expanded_box(tf.constant(box), s, 0.5, probability=0.5).numpy()
                     for s in seeds])
    grown = np.any(np.abs(half - box) > 1e-7, axis=1)
    assert 0.4 < grown.mean() < 0.6  # binomial(400, 0.5): 0.4..0.6 is > 4.9 sigma
    with pytest.raises(ValueError, match="box_margin_prob"):
        pipeline.TwoViewSource(["a.png"], np.array([0]), AugmentConfig(16, 16, 16), 1, seed=0,
                               boxes=box[None], box_margin=0.5, box_margin_prob=1.5)


def _red_box_in_blue(tmp_path, y0, y1, x0, x1):
    """A 60x60 blue PNG with red rows y0:y1, columns x0:x1; its path and `(1, 4)` box."""
    image = np.zeros((60, 60, 3), np.uint8)
    image[..., 2] = 255
    image[y0:y1, x0:x1] = (255, 0, 0)
    path = tmp_path / "boxed.png"
    Image.fromarray(image).save(path)
    return path, np.array([[y0 / 60, x0 / 60, y1 / 60, x1 / 60]], np.float32)


def test_box_margin_keeps_the_box_and_shows_surroundings(tmp_path):
    """A red box in a blue image: with a margin the crops still hold the red box but also
    some blue around it, at scales that change from epoch to epoch."""
    path, box = _red_box_in_blue(tmp_path, 20, 40, 20, 40)
    config = AugmentConfig(image_size=16, resize_size=16, crop_size=16, translate_px=0.0)
    exact = pipeline.TwoViewSource([str(path)], np.array([0]), config, 1, seed=0, boxes=box)
    grown = pipeline.TwoViewSource([str(path)], np.array([0]), config, 1, seed=0, boxes=box,
                                   box_margin=0.5)
    blue = []
    for source in (exact, grown):
        # one image, batch 1: one batch per epoch, epochs 0-5 in one pipeline
        fractions = [np.mean(v1.numpy()[0, ..., 2] > 128) for v1, _, _ in source.epochs(0, 6)]
        assert len(fractions) == 6
        blue.append(fractions)
    assert max(blue[0]) < 0.05  # the exact crop is all red
    assert min(blue[1]) < max(blue[1]) and max(blue[1]) > 0.15  # varied margins of blue


def test_box_mask_marks_the_pixel_centres_inside_the_box():
    # Centres of a 4-px side at 0.125, 0.375, 0.625, 0.875 of the region.
    mask = pipeline.box_mask(tf.constant([0.25, 0.5, 0.75, 1.0]),
                             tf.constant([0.0, 0.0, 1.0, 1.0]), 4).numpy()[..., 0]
    expected = np.zeros((4, 4))
    expected[1:3, 2:4] = 1
    np.testing.assert_array_equal(mask, expected)
    # The region is the right half: the box (x 0.5..1) covers it all in x, y rows 1-2.
    half = pipeline.box_mask(tf.constant([0.25, 0.5, 0.75, 1.0]),
                             tf.constant([0.0, 0.5, 1.0, 1.0]), 4).numpy()[..., 0]
    np.testing.assert_array_equal(half, np.repeat(expected[:, 2:3], 4, axis=1))
    box = tf.constant([0.1, 0.2, 0.6, 0.9])
    np.testing.assert_array_equal(pipeline.box_mask(box, box, 8), np.ones((8, 8, 1)))


def test_object_masks_mark_the_red_box_in_full_and_grown_crops(tmp_path):
    """A red box in a blue image: the masks of full-image views and of grown crops are 1
    on the red pixels and 0 on the blue (up to resampling along the edges); full-image
    views equal those without masks."""
    path, box = _red_box_in_blue(tmp_path, 20, 40, 15, 45)
    config = AugmentConfig(image_size=24, resize_size=28, crop_size=26, translate_px=2.0)
    plain = pipeline.TwoViewSource([str(path)], np.array([0]), config, 1, seed=0)
    full = pipeline.TwoViewSource([str(path)], np.array([0]), config, 1, seed=0, boxes=box,
                                  crop_to_boxes=False, object_masks=True)
    grown = pipeline.TwoViewSource([str(path)], np.array([0]), config, 1, seed=0, boxes=box,
                                   box_margin=1.0, object_masks=True)
    for (p1, p2, _), (v1, v2, label, m1, m2) in zip(plain.epochs(0, 3), full.epochs(0, 3)):
        np.testing.assert_array_equal(p1, v1)
        np.testing.assert_array_equal(p2, v2)
        assert label.shape == (1,) and m1.shape == (1, 24, 24, 1)
    for source in (full, grown):
        for v1, v2, _, m1, m2 in source.epochs(0, 4):
            for view, mask in ((v1, m1), (v2, m2)):
                red = view.numpy()[0, ..., 0] > view.numpy()[0, ..., 2]
                on_object = mask.numpy()[0, ..., 0] > 0.5
                # They differ at most along the box's edges (resampling at 24 px) ...
                assert on_object.any() and np.mean(red == on_object) > 0.9
                # ... and are not shifted against each other.
                np.testing.assert_allclose(np.argwhere(red).mean(0),
                                           np.argwhere(on_object).mean(0), atol=0.75)
    with pytest.raises(ValueError, match="object_masks needs boxes"):
        pipeline.TwoViewSource([str(path)], np.array([0]), config, 1, seed=0,
                               object_masks=True)
