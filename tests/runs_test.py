"""open_run: one way to open a run directory, with clear errors; older model files load."""
import json
import zipfile

import keras
import numpy as np
import pytest

from pipnet_tf.backbones import build_backbone
from pipnet_tf.backbones.tiny_cnn import TinyCNNBackbone
from pipnet_tf.config import TrainConfig
from pipnet_tf.model import PIPNet
from pipnet_tf.runs import RunDirectoryError, open_run
from tests.model_test import images, small_model


@pytest.fixture
def run_dir(tmp_path):
    small_model(num_classes=3).save(tmp_path / "model.keras")
    (tmp_path / "config.json").write_text(json.dumps(
        {"dataset": "synthetic", "net": "tiny_cnn", "image_size": 32, "a_future_key": 1}))
    (tmp_path / "class_names.txt").write_text("a\nb\nc\n")
    return tmp_path


def test_open_run_returns_model_config_names_and_size(run_dir):
    run = open_run(run_dir)
    assert isinstance(run.config, TrainConfig) and run.config.net == "tiny_cnn"
    assert run.class_names == ["a", "b", "c"] and run.image_size == 32
    assert run.model.num_classes == 3


def test_image_size_comes_from_the_model(run_dir):
    (run_dir / "config.json").write_text(json.dumps({"image_size": 64}))
    (run_dir / "class_names.txt").unlink()
    run = open_run(run_dir)
    assert run.image_size == 32 and run.config.image_size == 32
    assert run.class_names == ["class_0", "class_1", "class_2"]


@pytest.mark.parametrize("damage,message", [
    ("no_dir", "does not exist"),
    ("no_model", "No model.keras"),
    ("truncated_model", "damaged: not a complete .keras"),
    ("no_config", "No config.json"),
    ("bad_config", "not a valid run config"),
    ("wrong_names", "names 2 classes"),
])
def test_damaged_run_directories_name_the_problem(run_dir, damage, message):
    target = run_dir
    if damage == "no_dir":
        target = run_dir / "missing"
    elif damage == "no_model":
        (run_dir / "model.keras").unlink()
    elif damage == "truncated_model":
        data = (run_dir / "model.keras").read_bytes()
        (run_dir / "model.keras").write_bytes(data[: len(data) // 2])
    elif damage == "no_config":
        (run_dir / "config.json").unlink()
    elif damage == "bad_config":
        (run_dir / "config.json").write_text("{not json")
    else:
        (run_dir / "class_names.txt").write_text("a\nb\n")
    with pytest.raises(RunDirectoryError, match=message):
        open_run(target)


def test_a_model_saved_before_backbones_were_models_still_loads(tmp_path):
    """pipnet-tf's first sessions saved a plain functional backbone plus a `backbone_name`;
    such a file loads as the registered Backbone, with its groups and the same outputs."""
    backbone = TinyCNNBackbone(32, seed=2)
    plain = keras.Model(backbone.input, backbone.output, name="tiny_cnn")
    old = PIPNet(plain, num_classes=3, seed=2)
    old.build((None, 32, 32, 3))
    path = tmp_path / "old.keras"
    old.save(path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    assert config["config"]["backbone"]["class_name"] == "Functional"
    config["config"]["backbone_name"] = "tiny_cnn"
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)

    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.backbone, TinyCNNBackbone)
    x = images(seed=3)
    np.testing.assert_array_equal(loaded(x, training=False)["scores"],
                                  old(x, training=False)["scores"])
    assert [layer.name for layer in loaded.layer_groups()["train"]] == ["stage3_conv"]


def test_config_from_dict_round_trip():
    config = TrainConfig(dataset="cub", lr=0.01)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert build_backbone("tiny_cnn", 32).image_size == 32


def test_an_old_resnet50_model_loads_as_the_keras_applications_layout():
    """Before #11, `resnet50` was the keras.applications layout; an old file naming it
    (`backbone_name`) rebuilds `resnet50_keras`, whose layers hold its weights."""
    from pipnet_tf.backbones.resnet import ResNetBackbone

    backbone = ResNetBackbone(32, seed=2, name="resnet50")
    old = PIPNet(keras.Model(backbone.input, backbone.output, name="resnet50"), num_classes=3)
    old.build((None, 32, 32, 3))
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(old)))
    config["config"]["backbone_name"] = "resnet50"
    loaded = keras.saving.deserialize_keras_object(config)
    assert isinstance(loaded.backbone, ResNetBackbone)
    loaded.set_weights(old.get_weights())
    x = images(seed=3)
    np.testing.assert_allclose(loaded(x, training=False)["proto_features"],
                               old(x, training=False)["proto_features"], atol=1e-6)
