"""`--pretrain_data=folder:PATH`: the self-supervised phase runs on unlabeled images (any
tree, labels ignored), the classification phases on the labelled set."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from pipnet_tf.data.datasets import DatasetUnavailableError, build_data
from trainers.configs import PRESETS
from trainers.experiment import run_training


def _unlabeled_tree(root, count):
    """`count` random RGB images spread over nested folders, plus a non-image file."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"shoot_{i % 3}" / ("deeper" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (40 + i, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i}.{'png' if i % 2 else 'jpg'}")
    (root / "README.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_data")
    return PRESETS["synthetic"].replace(
        image_size=32, epochs_pretrain=1, epochs=2, freeze_epochs=1, finetune_epochs=1,
        batch_size=12, batch_size_pretrain=10, synthetic_train_per_class=4,
        synthetic_test_per_class=2, cache_dir=str(root / "cache"),
        log_dir=str(root / "run"), export=False,
        pretrain_data="folder:" + str(_unlabeled_tree(root / "unlabeled", 23)))


def test_pretraining_reads_the_unlabeled_tree_and_training_the_labelled_set(config):
    data = build_data(config)
    assert data.pretrain.num_examples == 23  # every image, recursively; the .txt skipped
    assert data.train.num_examples == 4 * len(data.class_names)
    assert data.pretrain.steps_per_epoch == 23 // 10
    view1, view2, _ = next(iter(data.pretrain.epochs(0, 1)))
    assert view1.shape == view2.shape == (10, 32, 32, 3)


def test_a_run_with_pretrain_data_finishes_and_records_both_sets(config):
    results = run_training(config)
    assert results["pretrain_images"] == 23
    assert results["train_images"] == 4 * results["num_classes"]
    with open(os.path.join(config.log_dir, "metrics.json")) as f:
        assert json.load(f)["pretrain_images"] == 23
    with open(os.path.join(config.log_dir, "config.json")) as f:
        assert json.load(f)["pretrain_data"] == config.pretrain_data


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_a_missing_or_empty_folder_is_refused_naming_the_flag(make, config, tmp_path):
    folder = tmp_path / "pics"
    if make == "empty":
        (folder / "sub").mkdir(parents=True)
    with pytest.raises(DatasetUnavailableError, match="--pretrain_data="):
        build_data(config.replace(pretrain_data=f"folder:{folder}"))


def test_a_pretrain_batch_larger_than_the_unlabeled_set_is_refused(config):
    with pytest.raises(ValueError, match="--batch_size_pretrain=24 exceeds the 23"):
        build_data(config.replace(batch_size_pretrain=24))
