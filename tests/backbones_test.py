"""Tests of the real backbones (`convnext.py`, `torchvision_resnet.py`, the
keras.applications-layout `resnet.py`, `weights.py`).

Small inputs (64 px) except one 224 forward; no training of full-size backbones.
Latent sizes at S px: convnext_tiny_26 S/8 − 2 (26 at 224), convnext_tiny_13 S/16 − 1 (13),
ResNets S/8 (28). Their numerics against the reference's (torchvision) forward are checked
layer by layer in `reference_checkpoint_test.py`.
"""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipnet_tf import phases
from pipnet_tf.backbones import GROUP_NAMES, Backbone, build_backbone, convnext, resnet
from pipnet_tf.backbones import torchvision_resnet
from pipnet_tf.backbones import weights as backbone_weights
from pipnet_tf.model import PIPNet
from pipnet_tf.torch_checkpoint import TorchCheckpointError
from tests.torch_files import reference_state_dict, write_torch_file

SIZE = 64
LATENT = {  # name → (grid at S px, channels)
    "convnext_tiny_26": (lambda s: s // 8 - 2, 768),
    "convnext_tiny_13": (lambda s: s // 16 - 1, 768),
    "resnet50": (lambda s: s // 8, 2048),
    "resnet50_inat": (lambda s: s // 8, 2048),
    "resnet101": (lambda s: s // 8, 2048),
    "resnet152": (lambda s: s // 8, 2048),
    "resnet50_keras": (lambda s: s // 8, 2048),
}
CONVNEXT_LAST_STAGE = ("convnext_tiny_stage_3_", "convnext_tiny_downsampling_layernorm_2",
                       "convnext_tiny_downsampling_conv_2")


def _images(n=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _weighted(model):
    return [layer for layer in backbone_weights.leaf_layers(model) if layer.weights]


@pytest.mark.parametrize("name", sorted(LATENT))
def test_shapes_and_groups(name):
    backbone = build_backbone(name, SIZE, weights=None, seed=1)
    grid, channels = LATENT[name]
    assert grid(224) == {"convnext_tiny_26": 26, "convnext_tiny_13": 13}.get(name, 28)
    out = backbone(_images())
    assert tuple(out.shape) == (2, grid(SIZE), grid(SIZE), channels)
    assert isinstance(backbone, Backbone) and backbone.image_size == SIZE
    assert backbone.grid() == (grid(SIZE), grid(SIZE))

    groups = backbone.layer_groups
    assert set(groups) == set(GROUP_NAMES)
    members = [id(layer) for layers in groups.values() for layer in layers]
    assert sorted(members) == sorted(id(layer) for layer in _weighted(backbone))
    names = {g: {layer.name for layer in layers} for g, layers in groups.items()}
    if name.startswith("convnext"):
        assert names["train"] == {f"convnext_tiny_stage_3_block_2_{s}" for s in (
            "depthwise_conv", "layernorm", "pointwise_conv_1", "pointwise_conv_2", "layer_scale")}
        assert names["freeze"] == {n for n in names["freeze"] if n.startswith(CONVNEXT_LAST_STAGE)}
        assert {"convnext_tiny_downsampling_conv_2", "convnext_tiny_stage_3_block_0_layernorm",
                "convnext_tiny_stage_3_block_1_layer_scale"} <= names["freeze"]
        assert not any(n.startswith(CONVNEXT_LAST_STAGE) for n in names["backbone"])
        assert {"convnext_tiny_stem_conv", "convnext_tiny_downsampling_conv_1"} <= names["backbone"]
        assert names["never"] == set()
        assert sum(isinstance(layer, keras.layers.DepthwiseConv2D)
                   for layer in backbone.layers) == 18
        assert not any(getattr(layer, "groups", 1) > 1 for layer in backbone.layers)
        expected = [2, 1, 1] if name == "convnext_tiny_26" else [2, 2, 1]
        assert [backbone.get_layer(f"convnext_tiny_downsampling_conv_{i}").strides[0]
                for i in range(3)] == expected
    elif name.endswith("_keras"):
        assert all(n.startswith("conv5_block3_") for n in names["train"]) and names["train"]
        assert all(n.startswith(("conv4_", "conv5_block1_", "conv5_block2_"))
                   for n in names["freeze"])
        assert all(n.startswith("conv3_") for n in names["backbone"]) and names["backbone"]
        assert {"conv1_conv", "conv1_bn", "conv2_block3_3_bn"} <= names["never"]
        assert all(n.startswith(("conv1_", "conv2_")) for n in names["never"])
        strided = ("conv1_conv", "conv3_block1_0_conv", "conv3_block1_1_conv", "conv4_block1_0_conv",
                   "conv4_block1_1_conv", "conv5_block1_0_conv", "conv5_block1_1_conv")
        assert [backbone.get_layer(n).strides[0] for n in strided] == [2, 2, 2, 1, 1, 1, 1]
    else:  # torchvision layout, the reference's
        assert isinstance(backbone, torchvision_resnet.TorchvisionResNetBackbone)
        assert names["train"] == {f"layer4_2_{s}{i}" for s in ("conv", "bn") for i in (1, 2, 3)}
        assert all(n.startswith(("layer3_", "layer4_0_", "layer4_1_")) for n in names["freeze"])
        assert {"layer3_0_downsample_0", "layer4_0_downsample_1"} <= names["freeze"]
        assert all(n.startswith("layer2_") for n in names["backbone"]) and names["backbone"]
        assert {"conv1", "bn1", "layer1_0_downsample_0", "layer1_2_bn3"} <= names["never"]
        assert all(n.startswith(("conv1", "bn1", "layer1_")) for n in names["never"])
        # The stride sits on the 3x3 conv (and the shortcut); convs have no bias; BN eps 1e-5.
        strided = ("conv1", "layer2_0_conv1", "layer2_0_conv2", "layer2_0_downsample_0",
                   "layer3_0_conv2", "layer4_0_conv2", "layer4_0_downsample_0")
        assert [backbone.get_layer(n).strides[0] for n in strided] == [2, 1, 2, 2, 1, 1, 1]
        convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
        assert convs and not any(layer.use_bias for layer in convs)
        assert {layer.epsilon for layer in backbone.layers
                if isinstance(layer, keras.layers.BatchNormalization)} == {1e-5}


def test_convnext_tiny_26_at_224():
    backbone = build_backbone("convnext_tiny_26", 224, weights=None, seed=1)
    assert tuple(backbone(_images(1, 224)).shape) == (1, 26, 26, 768)


def test_depthwise_equals_grouped_conv():
    channels = 8
    x = np.random.default_rng(1).normal(size=(2, 12, 12, channels)).astype("float32")
    grouped = keras.layers.Conv2D(channels, 7, padding="same", groups=channels,
                                  bias_initializer="random_normal")
    depthwise = keras.layers.DepthwiseConv2D(7, padding="same")
    grouped.build(x.shape), depthwise.build(x.shape)
    kernel, bias = grouped.get_weights()
    depthwise.set_weights([backbone_weights.depthwise_from_grouped(kernel), bias])
    np.testing.assert_allclose(depthwise(x), grouped(x), atol=1e-5)
    # The whole network (keras.applications' grouped convs vs our depthwise ones, same
    # weights) is compared in test_same_function_as_keras_applications.


def test_same_function_as_keras_applications():
    """With keras.applications' strides our models compute exactly its function (ConvNeXt:
    its grouped convs against our depthwise convs, minus its final LayerNorm)."""
    images = _images()
    reference = keras.applications.ConvNeXtTiny(include_top=False, weights=None,
                                                input_shape=(None, None, 3))
    ours = convnext.ConvNeXtBackbone(SIZE, stride_one_above=None)
    backbone_weights.copy_weights_by_name(reference, ours)
    before_final_norm = keras.Model(reference.input, reference.layers[-1].input)
    np.testing.assert_allclose(ours(images), before_final_norm(images), atol=1e-4, rtol=1e-5)

    reference = keras.applications.ResNet50(include_top=False, weights=None)
    ours = resnet.ResNetBackbone(SIZE, (3, 4, 6, 3), strides=(1, 2, 2, 2))
    backbone_weights.copy_weights_by_name(reference, ours)
    expected = reference(keras.applications.resnet50.preprocess_input(images.copy()))
    np.testing.assert_allclose(ours(images), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name,application", [
    ("convnext_tiny_26", lambda: keras.applications.ConvNeXtTiny(
        include_top=False, weights=None, input_shape=(None, None, 3))),
    ("resnet50_keras", lambda: keras.applications.ResNet50(include_top=False, weights=None)),
])
def test_load_weights_of_unmodified_application(name, application, tmp_path):
    source = application()
    for layer in backbone_weights.leaf_layers(source):  # non-default values everywhere
        layer.set_weights([np.random.default_rng(zlib.crc32(layer.name.encode())).normal(size=w.shape)
                           .astype("float32") for w in layer.get_weights()])
    path = tmp_path / "application.weights.h5"
    source.save_weights(path)
    model = build_backbone(name, SIZE, weights=str(path))
    _assert_same_weights(model, source, reshaped=18 if name.startswith("convnext") else 0)
    if name.startswith("resnet"):  # the legacy .h5 layout of keras.applications' downloads
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        path = tmp_path / "application_notop.h5"
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, source)
        _assert_same_weights(build_backbone(name, SIZE, weights=str(path)), source, 0)
        # A file saved from our own (stride-modified) backbone loads too.
        path = tmp_path / "own.weights.h5"
        model.save_weights(path)
        _assert_same_weights(build_backbone(name, SIZE, weights=str(path)), source, 0)


def _assert_same_weights(model, source, reshaped):
    by_name = {layer.name: layer for layer in backbone_weights.leaf_layers(source)}
    count = 0
    for layer in _weighted(model):
        expected = by_name[layer.name].get_weights()
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            assert expected[0].shape == (7, 7, 1, expected[0].shape[-1])
            expected[0] = expected[0].reshape(7, 7, -1, 1)
            count += 1
        for got, want in zip(layer.get_weights(), expected, strict=True):
            np.testing.assert_array_equal(got, want)
    assert count == reshaped


def test_imagenet_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    # No cached file and no network: the download raises, as keras.utils.get_file does offline.
    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    for name, file_name in (("convnext_tiny_13", "convnext_tiny_notop.h5"),
                            ("resnet50_keras",
                             "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                            ("resnet50", "resnet50-0676ba61.pth")):
        with pytest.raises(FileNotFoundError) as error:
            build_backbone(name, SIZE, weights="imagenet")
        message = str(error.value)
        assert str(tmp_path / "models" / file_name) in message
        assert "--weights=PATH" in message
    with pytest.raises(ValueError, match="--weights=PATH"):
        build_backbone("resnet50_inat", SIZE, weights="imagenet")
    for name in ("resnet50", "resnet50_keras"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            build_backbone(name, SIZE, weights=str(tmp_path / "missing.weights.h5"))


def test_imagenet_really_offline(monkeypatch, tmp_path):
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
        pytest.skip("network available: a real download would start")
    except OSError:
        pass
    from keras.src.backend import config as keras_config

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="convnext_tiny_notop.h5"):
        build_backbone("convnext_tiny_26", SIZE, weights="imagenet")
    assert time.perf_counter() - start < 30


def _trainable_backbone_layers(model: PIPNet) -> set[str]:
    return {layer.name for layer in _weighted(model.backbone) if layer.trainable_weights}


@pytest.mark.parametrize("name", ["convnext_tiny_13", "resnet50"])
def test_phase_plan_trainable_variables(name):
    """SPEC §3: pretrain → freeze+train groups; finetune → classifier only; frozen →
    freeze+train groups + classifier; full → whole backbone (ResNet: not conv1/conv2)."""
    model = PIPNet(build_backbone(name, SIZE, None), num_classes=3)
    model.build((None, SIZE, SIZE, 3))
    all_layers = {layer.name for layer in _weighted(model.backbone)}
    if name.startswith("convnext"):
        last = {n for n in all_layers if n.startswith(CONVNEXT_LAST_STAGE)}
        everything = all_layers
    else:
        last = {n for n in all_layers if n.startswith(("layer3_", "layer4_"))}
        everything = {n for n in all_layers if not n.startswith(("conv1", "bn1", "layer1_"))}
        assert everything != all_layers
    expected = {phases.PRETRAIN: (last, False), phases.FINETUNE: (set(), True),
                phases.FROZEN: (last, True), phases.FULL: (everything, True)}
    plan = phases.make_plan(epochs_pretrain=10, epochs=60, freeze_epochs=10)
    assert [stage.name for stage in plan] == list(expected)
    for stage in plan:
        model.set_trainable_groups(stage.trainable_groups)
        layers, classifier = expected[stage.name]
        assert _trainable_backbone_layers(model) == layers, stage.name
        trainable = {id(v) for v in model.trainable_variables}
        assert (id(model.classifier.kernel) in trainable) == classifier, stage.name


def test_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        for name in ("convnext_tiny_13", "resnet50"):
            backbone = build_backbone(name, SIZE, None, seed=1)
            assert backbone.output.dtype == "bfloat16"
            model = PIPNet(backbone, num_classes=3)
            outputs = model(_images())
            for key in ("proto_features", "presence", "scores"):
                assert outputs[key].dtype == tf.float32, key
                assert np.isfinite(outputs[key]).all(), key
        images, labels = tf.constant(_images(2)), tf.constant([0, 1])
        with tf.GradientTape() as tape:
            parts = model.compute_pipnet_losses(images, images[::-1], labels, training=True)
            loss = 5 * parts["L_A"] + 2 * parts["L_T"] + 2 * parts["L_C"]
        variables = [model.classifier.kernel, backbone.get_layer("layer4_2_conv3").kernel]
        grads = tape.gradient(loss, variables)
        assert loss.dtype == tf.float32
        assert all(g is not None and np.isfinite(g).all() for g in grads)
        assert variables[1].dtype == "float32"  # variables stay float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", ["tiny_cnn", "convnext_tiny_13", "resnet50", "resnet50_keras"])
def test_config_round_trip(name, tmp_path):
    """keras-hub's check: get_config → from_config → get_config gives the same JSON, and a
    `.keras` round trip keeps the class, the weights, the groups and the geometry."""
    model = build_backbone(name, SIZE, None, seed=1)
    config = model.get_config()
    assert set(config) - {"name", "trainable", "dtype"} <= set(
        type(model).__init__.__code__.co_varnames)  # exactly constructor arguments
    restored = type(model).from_config(json.loads(json.dumps(config)))
    assert restored.get_config() == config
    restored.set_weights(model.get_weights())
    images = _images()
    np.testing.assert_allclose(restored(images), model(images), atol=1e-6)
    path = tmp_path / "backbone.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    np.testing.assert_allclose(loaded(images), model(images), atol=1e-6)
    assert {g: [layer.name for layer in layers] for g, layers in loaded.layer_groups.items()} == \
        {g: [layer.name for layer in layers] for g, layers in model.layer_groups.items()}
    assert loaded.patch_geometry() == model.patch_geometry()


@pytest.mark.parametrize("name", ["tiny_cnn", "convnext_tiny_13", "resnet50", "resnet50_keras"])
def test_every_layer_starts_with_its_own_values(name):
    """A seeded initializer repeats its values: each layer must get its own seed, so no
    two kernels of the same shape start equal, and the same seed builds the same model."""
    model = build_backbone(name, SIZE, None, seed=5)
    kernels = [v.numpy() for v in model.weights
               if v.path.endswith(("kernel", "depthwise_kernel")) and v.numpy().std() > 0]
    by_shape = {}
    for kernel in kernels:
        by_shape.setdefault(kernel.shape, []).append(kernel)
    repeated = [(shape, len(group)) for shape, group in by_shape.items() if len(group) > 1]
    assert repeated, "the test needs layers of the same shape"
    for shape, group in by_shape.items():
        for i in range(len(group)):
            for j in range(i):
                assert not np.array_equal(group[i], group[j]), shape
    again = build_backbone(name, SIZE, None, seed=5)
    for a, b in zip(model.weights, again.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_preprocessing_is_the_backbones_first_layer():
    assert isinstance(build_backbone("convnext_tiny_13", SIZE).preprocessing,
                      backbone_weights.ImagePreprocessing)
    for name in ("resnet50", "resnet50_keras"):
        assert isinstance(build_backbone(name, SIZE, weights="none").preprocessing,
                          backbone_weights.ImagePreprocessing)
    assert isinstance(build_backbone("tiny_cnn", SIZE).preprocessing, keras.layers.Rescaling)


def _torchvision_state_dict(net: str, seed: int = 0) -> dict:
    """A torchvision-format state_dict (no prefix, with its classification head) holding the
    backbone part of a random PIP-Net reference state_dict."""
    state_dict = {k.removeprefix("_net."): v for k, v in reference_state_dict(
        net, num_classes=2, seed=seed, prefix="").items() if k.startswith("_net.")}
    if net.startswith("resnet"):
        state_dict.update({"fc.weight": np.zeros((1000, 2048), np.float32),
                           "fc.bias": np.zeros(1000, np.float32)})
    else:
        state_dict.update({"classifier.0.weight": np.ones(768, np.float32),
                           "classifier.0.bias": np.zeros(768, np.float32),
                           "classifier.2.weight": np.zeros((1000, 768), np.float32),
                           "classifier.2.bias": np.zeros(1000, np.float32)})
    return state_dict


@pytest.mark.parametrize("name,file_net,key,layer", [
    ("resnet50", "resnet50", "layer3.1.conv2.weight", "layer3_1_conv2"),
    ("convnext_tiny_26", "convnext_tiny_26", "features.5.4.block.0.weight",
     "convnext_tiny_stage_2_block_4_depthwise_conv")])
def test_torchvision_weights_files_load_by_pytorch_name(tmp_path, name, file_net, key, layer):
    """torchvision's ImageNet files (what the reference starts from) load with
    --weights=PATH; their classification head is ignored; a file for another model is
    refused with the keys that do not fit."""
    state_dict = _torchvision_state_dict(file_net)
    path = write_torch_file(tmp_path / "torchvision.pth", state_dict)
    model = build_backbone(name, SIZE, weights=str(path))
    kernel = model.get_layer(layer).kernel.numpy()
    expected = state_dict[key].transpose(2, 3, 0, 1) if name.startswith("convnext") else \
        state_dict[key].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(kernel, expected)
    with pytest.raises(TorchCheckpointError, match="missing keys.*unexpected keys"):
        build_backbone("resnet50" if name.startswith("convnext") else "convnext_tiny_13", SIZE,
                       weights=str(path))
    with pytest.raises(ValueError, match="no PyTorch counterpart"):
        build_backbone("resnet50_keras", SIZE, weights=str(path))


def test_resnet_imagenet_weights_come_from_the_keras_cache(monkeypatch, tmp_path):
    """`--weights=imagenet` for the torchvision-layout ResNet reads torchvision's file from
    $KERAS_HOME/models (downloaded there when online)."""
    from keras.src.backend import config as keras_config

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    (tmp_path / "models").mkdir()
    state_dict = _torchvision_state_dict("resnet50", seed=4)
    write_torch_file(tmp_path / "models" / "resnet50-0676ba61.pth", state_dict)
    model = build_backbone("resnet50", SIZE, weights="imagenet")
    np.testing.assert_array_equal(model.get_layer("bn1").moving_variance.numpy(),
                                  state_dict["bn1.running_var"])


def _receptive_field(backbone, size: int, cell: int) -> tuple[int, int, float]:
    """(first, last) input column the output cell (cell, cell) depends on, and the centre
    of that span in continuous pixel coordinates."""
    images = tf.random.stateless_uniform((1, size, size, 3), (1, 2), 0.0, 255.0)
    with tf.GradientTape() as tape:
        tape.watch(images)
        out = backbone(images, training=False)[0, cell, cell]
        total = tf.reduce_sum(out * tf.range(1.0, out.shape[-1] + 1.0))
    gradient = tf.reduce_sum(tf.abs(tape.gradient(total, images))[0], axis=(0, 2)).numpy()
    columns = np.flatnonzero(gradient > 0)
    return int(columns[0]), int(columns[-1]), (columns[0] + columns[-1] + 1) / 2


@pytest.mark.parametrize("depth,field", [(1, 38), (3, 70)])
def test_tiny_cnn_depth_widens_the_receptive_field_around_the_same_centre(depth, field):
    backbone = build_backbone("tiny_cnn", 128, seed=3, depth=depth)
    assert backbone.output_shape == (None, 16, 16, 64)
    first, last, centre = _receptive_field(backbone, 128, 8)
    assert last - first + 1 == field
    assert centre == 8 * 8 + 4  # what StridePatchRule(8, 4) declares, whatever the depth
    convs = [layer.name for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 6 + depth
    assert [layer.name for layer in backbone.layer_groups["train"]
            if isinstance(layer, keras.layers.Conv2D)] == convs[6:]  # the last stage's 3x3s
    restored = type(backbone).from_config(backbone.get_config())
    assert restored.depth == depth and len(restored.weights) == len(backbone.weights)


def test_backbone_options_are_checked():
    with pytest.raises(ValueError, match="at least 1"):
        build_backbone("tiny_cnn", SIZE, depth=0)
    with pytest.raises(ValueError, match="--net=convnext_tiny_13 has no --backbone_depth"):
        build_backbone("convnext_tiny_13", SIZE, depth=2)
