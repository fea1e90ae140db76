"""The PIP-Net reference's checkpoints (PyTorch) as Keras `PIPNet` models.

The authors' code saves `{'model_state_dict': nn.DataParallel(PIPNet).state_dict(), …}`
(`checkpoints/net_pretrained`, `net_trained`, `net_trained_last`, and their published
trained models). Its keys (after `module.`, SPEC §1):

    _multiplier                                 (1,)    the classifier's multiplier again
    _net.<torchvision name>                     the backbone: ConvNeXt-Tiny `features.*` or
                                                ResNet `conv1`, `bn1`, `layer1..4.*`
    _add_on.0.weight, _add_on.0.bias            (D, C_backbone, 1, 1), (D,): only with
                                                num_features > 0
    _classification.weight                      (K, D) the scoring sheet
    _classification.normalization_multiplier    (1,)
    _classification.bias                        (K,): only with --bias

The backbone lists the PyTorch name of each of its variables (`Backbone.torch_weights`),
this module adds the head's, and `pipnet_tf.torch_weights` converts the layouts (conv
OIHW → HWIO, depthwise (C, 1, k, k) → (k, k, C, 1), Linear (out, in) → (in, out), layer
scale (C, 1, 1) → (C,), scoring sheet (K, D) → (D, K)). Every key must fit: missing and
unexpected keys and wrong shapes are reported together.

    state_dict = torch_checkpoint.read_state_dict("net_trained_last")
    model = build_pipnet(state_dict, "convnext_tiny_26", image_size=224)

The model computes the reference's forward: `model(x, training=False)` is its
`inference=True` (presence < 0.1 zeroed), `model(x, training=False,
apply_threshold=False)` its `inference=False`; the reference's ToTensor + ImageNet
normalisation is the backbone's first layer, so inputs are 0..255 RGB, channels-last.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Mapping

import keras
import numpy as np
from absl import logging

from pipnet_tf.backbones import build_backbone
from pipnet_tf.model import PIPNet
from pipnet_tf.torch_checkpoint import TorchCheckpointError, read_state_dict
from pipnet_tf.torch_weights import (
    TorchWeight,
    assign_torch_weights,
    check_torch_weights,
    layer_weights,
    torch_weight,
)

CLASSIFIER_KEY = "_classification.weight"
ADD_ON_KEY = "_add_on.0.weight"
BIAS_KEY = "_classification.bias"
# --net → (backbone family, ResNet blocks in layer1..layer4). convnext_tiny_26/_13 and
# resnet50/_inat have the same keys and shapes: only strides (resp. weights) differ.
NETS: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "convnext_tiny_26": ("convnext", None),
    "convnext_tiny_13": ("convnext", None),
    "resnet50": ("resnet", (3, 4, 6, 3)),
    "resnet50_inat": ("resnet", (3, 4, 6, 3)),
    "resnet101": ("resnet", (3, 4, 23, 3)),
    "resnet152": ("resnet", (3, 8, 36, 3)),
}
# SPEC §1: the reference re-initialises a loaded scoring sheet that "looks untrained".
UNTRAINED_MEAN = (1.0, 3.0)
UNTRAINED_POSITIVE_FRACTION = 0.8


@dataclasses.dataclass(frozen=True)
class ReferenceNet:
    """What a reference state_dict holds, read from its key names and shapes.

    Attributes:
        family: "convnext" or "resnet".
        resnet_blocks: Bottleneck blocks in layer1..layer4 (ResNets only).
        num_classes: K. num_prototypes: D.
        add_on: num_features > 0 (a 1x1 conv before the softmax).
        bias: the scoring sheet has a bias (--bias).
    """

    family: str
    resnet_blocks: tuple[int, ...] | None
    num_classes: int
    num_prototypes: int
    add_on: bool
    bias: bool

    def nets(self) -> list[str]:
        """The --net names whose architecture has these keys."""
        return [name for name, arch in NETS.items() if arch == (self.family, self.resnet_blocks)]

    def describe(self) -> str:
        arch = ("ConvNeXt-Tiny" if self.family == "convnext"
                else f"ResNet with {self.resnet_blocks} blocks")
        extras = (" with a 1x1 add-on" if self.add_on else "") + (" and a bias" if self.bias
                                                                  else "")
        return (f"{arch}, {self.num_classes} classes, {self.num_prototypes} "
                f"prototypes{extras}")


def inspect_state_dict(state_dict: Mapping[str, np.ndarray],
                       where: str = "the checkpoint") -> ReferenceNet:
    """The architecture of a reference state_dict (keys without `module.`).

    Raises:
        TorchCheckpointError: not a PIP-Net state_dict, or a backbone this project lacks.
    """
    weight = state_dict.get(CLASSIFIER_KEY)
    if weight is None or weight.ndim != 2:
        raise TorchCheckpointError(
            f"{where} is not a PIP-Net checkpoint: it has no 2-D {CLASSIFIER_KEY!r} (the "
            f"scoring sheet); its first keys are {list(state_dict)[:5]!r}.")
    if any(key.startswith("_net.features.") for key in state_dict):
        family, blocks = "convnext", None
    elif any(key.startswith("_net.layer1.") for key in state_dict):
        family = "resnet"
        blocks = tuple(len({m.group(1) for key in state_dict
                            if (m := re.match(rf"_net\.layer{i}\.(\d+)\.", key))})
                       for i in range(1, 5))
    else:
        raise TorchCheckpointError(
            f"{where}: its backbone (keys '_net.*') is neither torchvision's ConvNeXt "
            f"('_net.features.*') nor a ResNet ('_net.layer1.*'); first backbone keys: "
            f"{[k for k in state_dict if k.startswith('_net.')][:5]!r}.")
    return ReferenceNet(family, blocks, int(weight.shape[0]), int(weight.shape[1]),
                        ADD_ON_KEY in state_dict, BIAS_KEY in state_dict)


def check_net(net_info: ReferenceNet, net: str, where: str = "the checkpoint") -> None:
    """Raises TorchCheckpointError when `--net` cannot hold the checkpoint's backbone."""
    if net not in NETS:
        raise ValueError(f"--net={net!r} cannot load PIP-Net reference checkpoints; use one of "
                         f"{sorted(NETS)}.")
    if net not in net_info.nets():
        fits = net_info.nets()
        hint = (f"use --net={' or --net='.join(fits)}" if fits else
                "no --net of this project has that architecture")
        family, blocks = NETS[net]
        wanted = "ConvNeXt-Tiny" if family == "convnext" else f"ResNet with {blocks} blocks"
        raise TorchCheckpointError(
            f"{where} holds a {net_info.describe()} (from its key names), but --net={net} "
            f"is a {wanted}; {hint}.")


def pipnet_torch_weights(model: PIPNet) -> list[TorchWeight]:
    """The reference state_dict entry of every variable of `model`, in the reference's order
    (keys without `module.`; `_multiplier` is checked, not kept: it is the same tensor as
    `_classification.normalization_multiplier`)."""
    entries = [TorchWeight("_multiplier", None, "scalar", (1,))]
    entries += [entry.with_prefix("_net.") for entry in model.backbone.torch_weights()]
    if model.add_on is not None:
        entries += layer_weights("_add_on.0", model.add_on, "conv")
    classifier = model.classifier
    entries.append(torch_weight(CLASSIFIER_KEY, classifier.kernel, "linear"))
    entries.append(torch_weight("_classification.normalization_multiplier",
                                classifier.multiplier, "scalar"))
    if classifier.bias is not None:
        entries.append(torch_weight(BIAS_KEY, classifier.bias, "channel"))
    return entries


def looks_untrained(weight: np.ndarray) -> bool:
    """The reference's test (main.py) for a scoring sheet (K, D) still at its N(1, 0.1)
    initialisation: mean in (1, 3) and more than 80% of the entries above 1e-5."""
    weight = np.asarray(weight, np.float64)
    return bool(UNTRAINED_MEAN[0] < weight.mean() < UNTRAINED_MEAN[1]
                and np.mean(weight > 1e-5) > UNTRAINED_POSITIVE_FRACTION)


def load_into(model: PIPNet, state_dict: Mapping[str, np.ndarray],
              where: str = "the checkpoint", keep_untrained_classifier: bool = True) -> bool:
    """Fills `model` (built) from a reference state_dict (keys without `module.`).

    With `keep_untrained_classifier=False` a scoring sheet that `looks_untrained` (a
    `net_pretrained` file) is not loaded: the model keeps its own freshly initialised
    classifier, as the reference re-initialises it. Returns whether the classifier was
    loaded.

    Raises:
        TorchCheckpointError: missing/unexpected keys or wrong shapes, all listed.
    """
    entries = pipnet_torch_weights(model)
    check_torch_weights(entries, state_dict, where=where)
    load_classifier = keep_untrained_classifier or not looks_untrained(state_dict[CLASSIFIER_KEY])
    if not load_classifier:
        logging.info("%s: the scoring sheet looks untrained (mean %.3f); keeping a freshly "
                     "initialised one, as the reference does.", where,
                     float(np.mean(state_dict[CLASSIFIER_KEY])))
        entries = [e for e in entries if not e.key.startswith("_classification.")]
    assign_torch_weights(entries, state_dict, ignore=() if load_classifier else (
        r"_classification\..*",), where=where)
    return load_classifier


@contextlib.contextmanager
def _float32_policy():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_pipnet(state_dict: Mapping[str, np.ndarray], net: str, image_size: int = 224,
                 where: str = "the checkpoint") -> PIPNet:
    """A float32 `PIPNet` holding a reference state_dict (keys without `module.`), for
    square inputs of `image_size` px; classes, prototypes, add-on and bias come from the
    state_dict.

    Raises:
        TorchCheckpointError: not a PIP-Net state_dict, a backbone `net` cannot hold, or
            keys/shapes that do not fit.
        ValueError: an unknown `net` or a bad `image_size`.
    """
    if int(image_size) < 32:
        raise ValueError(f"--image_size must be at least 32, received {image_size}.")
    net_info = inspect_state_dict(state_dict, where)
    check_net(net_info, net, where)
    with _float32_policy():
        model = PIPNet(build_backbone(net, int(image_size), weights="none"),
                       num_classes=net_info.num_classes,
                       num_prototypes=net_info.num_prototypes if net_info.add_on else 0,
                       use_bias=net_info.bias)
        model.build((None, int(image_size), int(image_size), 3))
    load_into(model, state_dict, where)
    return model


def load_checkpoint_file(model: PIPNet, path: str | os.PathLike, net: str) -> ReferenceNet:
    """`--state_dict_dir_net`: loads a reference checkpoint file into the trainer's `model`
    (built for `net` with the run's classes and settings), re-initialising an untrained
    scoring sheet as the reference does. Returns what the file holds.

    Raises:
        FileNotFoundError, TorchCheckpointError: unreadable file, or one that does not fit
            the run (the message says what the file holds and what does not fit).
    """
    where = f"--state_dict_dir_net={os.fspath(path)!r}"
    state_dict = read_state_dict(path)
    net_info = inspect_state_dict(state_dict, where)
    check_net(net_info, net, where)
    try:
        load_into(model, state_dict, where, keep_untrained_classifier=False)
    except TorchCheckpointError as e:
        raise TorchCheckpointError(
            f"{e} The file holds a {net_info.describe()}; this run has "
            f"{model.num_classes} classes, {model.num_features} prototypes"
            f"{' with an add-on (--num_features)' if model.add_on is not None else ''}"
            f"{' and a bias (--bias)' if model.classifier.bias is not None else ''}.") from e
    logging.info("Loaded %s: %s", where, net_info.describe())
    return net_info
