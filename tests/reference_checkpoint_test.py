"""Converting the PIP-Net reference's checkpoints (`pipnet_tf/reference_checkpoint.py`):
key/shape agreement with the reference's real state_dicts, and the converted model checked
layer by layer and end to end against a NumPy re-implementation of the reference forward
(`tests/reference_numpy.py`), at 64 px with random values."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from pipnet_tf.backbones import build_backbone
from pipnet_tf.model import PIPNet
from pipnet_tf.reference_checkpoint import (
    build_pipnet,
    inspect_state_dict,
    load_checkpoint_file,
    looks_untrained,
    pipnet_torch_weights,
)
from pipnet_tf.torch_checkpoint import TorchCheckpointError, read_state_dict
from tests import reference_numpy
from tests.torch_files import (
    reference_checkpoint,
    reference_keys,
    reference_state_dict,
    write_torch_file,
)

SIZE = 64


def _images(n=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _close(got, expected, what, tol=1e-4):
    """max |got − expected| ≤ tol · max(1, max |expected|)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max()))
    diff = float(np.abs(got - expected).max())
    assert diff <= tol * scale, f"{what}: max |diff| {diff:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("net,file_net", [
    ("convnext_tiny_26", "convnext_tiny_26"), ("convnext_tiny_13", "convnext_tiny_26"),
    ("resnet50", "resnet50"), ("resnet50_inat", "resnet50")])
def test_keys_and_shapes_are_the_reference_state_dicts(net, file_net):
    """Every key, in order, with its shape: tests/data/reference_checkpoint_keys.json lists
    the state_dicts the reference code built (200 classes, no add-on, no bias)."""
    model = PIPNet(build_backbone(net, SIZE, weights="none"), num_classes=200)
    model.build((None, SIZE, SIZE, 3))
    ours = [("module." + e.key, e.shape) for e in pipnet_torch_weights(model)]
    assert ours == [(key, shape) for key, shape, _ in reference_keys(file_net)]
    kept = [e.variable for e in pipnet_torch_weights(model) if e.variable is not None]
    assert sorted(id(v) for v in kept) == sorted(id(v) for v in model.weights)  # each once


def _intermediates(model, names, images):
    backbone = model.backbone
    probe = keras.Model(backbone.input, [backbone.get_layer(n).output for n in names])
    return [np.asarray(t) for t in probe(images)]


CASES = {  # name → (net, file net, classes, num_features, bias, key prefix)
    "convnext_26": ("convnext_tiny_26", "convnext_tiny_26", 7, 0, False, "module."),
    "convnext_13_bias_no_prefix": ("convnext_tiny_13", "convnext_tiny_26", 3, 0, True, ""),
    "resnet50_add_on_bias": ("resnet50", "resnet50", 5, 24, True, "module."),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_model_computes_the_reference_forward(tmp_path, case):
    net, file_net, classes, features, bias, prefix = CASES[case]
    state_dict = reference_state_dict(file_net, num_classes=classes, num_features=features,
                                      bias=bias, seed=3, prefix=prefix)
    path = write_torch_file(tmp_path / "net_trained_last", reference_checkpoint(state_dict))
    loaded = read_state_dict(path)
    model = build_pipnet(loaded, net, SIZE)
    assert model.num_classes == classes and (model.classifier.bias is not None) == bias
    assert all(v.dtype == "float32" for v in model.weights)
    images = _images()

    # Layer by layer: the backbone's stage outputs (NCHW → NHWC).
    if net.startswith("convnext"):
        expected = reference_numpy.convnext_features(
            loaded, images, stride_one_above=100 if net.endswith("26") else 300)
        names = ["convnext_tiny_stem_layernorm"]
        for stage, depth in enumerate((3, 3, 9, 3)):
            if stage:
                names.append(f"convnext_tiny_downsampling_conv_{stage - 1}")
            names.append(f"convnext_tiny_stage_{stage}_block_{depth - 1}_add")
        stages = [expected[f"features.{i}"] for i in range(8)]
    else:
        expected = reference_numpy.resnet_features(loaded, images)
        names = ["maxpool"] + [f"layer{i}_{n - 1}_out" for i, n in zip(range(1, 5), (3, 4, 6, 3))]
        stages = [expected[k] for k in ("stem", "layer1", "layer2", "layer3", "layer4")]
    for name, got, want in zip(names, _intermediates(model, names, images), stages):
        _close(got, want.transpose(0, 2, 3, 1), name)

    # End to end, in both of the reference's modes.
    features_nchw = stages[-1]
    for inference, kwargs in ((True, {}), (False, {"apply_threshold": False})):
        proto, pooled, out = reference_numpy.pipnet_forward(loaded, features_nchw, inference)
        got = model(images, training=False, **kwargs)
        _close(got["proto_features"], proto.transpose(0, 2, 3, 1), f"proto_features {inference}")
        _close(got["presence"], pooled, f"pooled {inference}")
        _close(got["scores"], out, f"out {inference}")
    raw = reference_numpy.pipnet_forward(loaded, features_nchw, False)[1]
    assert 0 < np.mean(raw >= 0.1) < 1, "the threshold must matter in this test"


def test_wrong_net_is_detected_from_the_key_names(tmp_path):
    convnext = reference_state_dict("convnext_tiny_26", num_classes=3, prefix="")
    resnet = reference_state_dict("resnet50", num_classes=3, prefix="")
    with pytest.raises(TorchCheckpointError) as error:
        build_pipnet(convnext, "resnet50", SIZE)
    assert "ConvNeXt-Tiny" in str(error.value)
    assert "--net=convnext_tiny_26 or --net=convnext_tiny_13" in str(error.value)
    with pytest.raises(TorchCheckpointError, match="--net=resnet50 or --net=resnet50_inat"):
        build_pipnet(resnet, "convnext_tiny_13", SIZE)
    with pytest.raises(TorchCheckpointError, match=r"\(3, 4, 6, 3\).*--net=resnet50"):
        build_pipnet(resnet, "resnet101", SIZE)
    # A ResNet-101 file, detected by its block counts (only the keys are looked at).
    deeper = dict(resnet, **{f"_net.layer3.{b}.conv1.weight": np.zeros((1,), np.float32)
                             for b in range(6, 23)})
    assert inspect_state_dict(deeper).nets() == ["resnet101"]
    with pytest.raises(TorchCheckpointError, match="not a PIP-Net checkpoint"):
        inspect_state_dict({k.removeprefix("_net."): v for k, v in resnet.items()
                            if k.startswith("_net.")})
    with pytest.raises(ValueError, match="tiny_cnn"):
        build_pipnet(resnet, "tiny_cnn", SIZE)


def test_missing_unexpected_and_misshapen_keys_are_listed_in_one_error():
    state_dict = reference_state_dict("convnext_tiny_26", num_classes=4, prefix="")
    del state_dict["_net.features.3.1.block.5.bias"]
    del state_dict["_multiplier"]
    state_dict["_net.features.9.0.weight"] = np.zeros(3, np.float32)
    state_dict["_net.features.5.0.layer_scale"] = np.zeros((384,), np.float32)
    with pytest.raises(TorchCheckpointError) as error:
        build_pipnet(state_dict, "convnext_tiny_26", SIZE)
    message = str(error.value)
    for part in ("2 missing keys", "_net.features.3.1.block.5.bias", "_multiplier",
                 "1 unexpected keys: _net.features.9.0.weight",
                 "1 wrong shapes: _net.features.5.0.layer_scale: file (384,), expected "
                 "(384, 1, 1)"):
        assert part in message, message


def test_trainer_loading_keeps_an_untrained_sheet_fresh_and_says_what_does_not_fit(tmp_path):
    """--state_dict_dir_net: the reference re-initialises a scoring sheet that looks
    untrained (a net_pretrained file); a trained one is loaded; a file for another number
    of classes is refused with what it holds."""
    state_dict = reference_state_dict("resnet50", num_classes=3, seed=1)
    rng = np.random.default_rng(0)
    # SPEC §1's test: mean in (1, 3) and > 80% of the entries > 1e-5. (At the N(1, 0.1)
    # initialisation the mean is ≈ 1.0 ± 0.002, so the reference's test is a coin flip
    # there; 1.2 makes this case clear.)
    untrained = rng.normal(1.2, 0.1, (3, 2048)).astype(np.float32)
    assert looks_untrained(untrained) and not looks_untrained(
        state_dict["module._classification.weight"])
    model = PIPNet(build_backbone("resnet50", SIZE, weights="none"), num_classes=3, seed=7)
    model.build((None, SIZE, SIZE, 3))
    fresh = model.classifier.kernel.numpy()

    pretrained = dict(state_dict, **{"module._classification.weight": untrained})
    path = write_torch_file(tmp_path / "net_pretrained", reference_checkpoint(pretrained))
    load_checkpoint_file(model, path, "resnet50")
    np.testing.assert_array_equal(model.classifier.kernel.numpy(), fresh)
    np.testing.assert_array_equal(model.backbone.get_layer("layer4_2_bn3").gamma.numpy(),
                                  state_dict["module._net.layer4.2.bn3.weight"])

    path = write_torch_file(tmp_path / "net_trained", reference_checkpoint(state_dict))
    load_checkpoint_file(model, path, "resnet50")
    np.testing.assert_array_equal(model.classifier.kernel.numpy(),
                                  state_dict["module._classification.weight"].T)

    other = reference_state_dict("resnet50", num_classes=200, seed=1)
    path = write_torch_file(tmp_path / "cub", {"model_state_dict": other})
    with pytest.raises(TorchCheckpointError) as error:
        load_checkpoint_file(model, path, "resnet50")
    message = str(error.value)
    assert "_classification.weight: file (200, 2048), expected (3, 2048)" in message
    assert "200 classes" in message and "this run has 3 classes" in message
