"""ResNet-50/101/152 in torchvision's layout: the reference's `ResNet_features` (SPEC §1).

The PIP-Net reference builds its ResNets from torchvision-style Bottlenecks, and its
checkpoints (and torchvision's ImageNet files) hold weights for exactly that graph:

- the stride of a stage's first block sits on its 3x3 conv (`conv2`), and on the 1x1
  `downsample` conv of its shortcut;
- convs have no bias; every conv is followed by BatchNorm with eps 1e-5;
- a 7x7/2 stem conv (padding 3), BatchNorm, ReLU and a 3x3/2 max-pool (padding 1);
- `layer3` and `layer4` at stride 1 (the reference's change), so the output is
  `(batch, S/8, S/8, 2048)`: 28x28 at 224.

Padding is symmetric as in PyTorch (explicit `ZeroPadding2D` before strided convs; TF's
"same" pads a stride-2 conv on an even input only at the bottom/right). Inputs are 0..255
RGB; the torchvision preprocessing (`ToTensor` and ImageNet mean/std normalisation) is the
first layer. Layers are named after the torchvision modules (`layer3_0_conv2`,
`layer4_2_bn3`, `layer1_0_downsample_0`), and `torch_weights()` lists the PyTorch
state_dict entry of every variable, so a torchvision ResNet state_dict or a PIP-Net
reference checkpoint loads into it (`pipnet_tf.torch_weights`).

`keras.applications`' ResNet (stride on the first 1x1 conv, conv biases, caffe-style
preprocessing) is `pipnet_tf.backbones.resnet`, registered as `resnet50_keras` etc. for
its downloadable Keras ImageNet weights.

Layer groups (SPEC §3): "train" = layer4.2; "freeze" = layer3 and the rest of layer4;
"backbone" = layer2; "never" = conv1, bn1 and layer1 (never trained, as the reference).
BatchNorm momentum 0.9 (= PyTorch's 0.1); random init He-normal (fan_out) for convs,
BatchNorm scale 1 and offset 0, as the reference.
"""
from __future__ import annotations

import os

import keras

from pipnet_tf.backbones import register_backbone
from pipnet_tf.backbones.backbone import Backbone, LayerSeeds
from pipnet_tf.backbones.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocessing,
    cached_download,
    is_random_init,
    load_torch_weights,
)
from pipnet_tf.torch_checkpoint import is_torch_file
from pipnet_tf.torch_weights import TorchWeight, batch_norm_weights, layer_weights

# torchvision's ImageNet files (IMAGENET1K_V1: the original weights, which the reference's
# `model_urls` load), downloaded into the Keras cache ($KERAS_HOME/models).
TORCHVISION_URL = "https://download.pytorch.org/models/"
# name → (blocks in layer1..layer4, torchvision ImageNet file or None)
VARIANTS = {
    "resnet50": ((3, 4, 6, 3), "resnet50-0676ba61.pth"),
    "resnet50_inat": ((3, 4, 6, 3), None),
    "resnet101": ((3, 4, 23, 3), "resnet101-63fe2227.pth"),
    "resnet152": ((3, 8, 36, 3), "resnet152-394f9c45.pth"),
}
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


def _conv(x, filters: int, kernel: int, stride: int, name: str, seeds: LayerSeeds):
    """PyTorch `Conv2d(kernel, stride, padding=kernel // 2, bias=False)`."""
    pad = kernel // 2
    padding = "valid"
    if pad and stride > 1:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    elif pad:
        padding = "same"  # stride 1, odd kernel: symmetric, as PyTorch
    init = keras.initializers.VarianceScaling(
        2.0, mode="fan_out", distribution="untruncated_normal", seed=seeds.next())
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding,
                               use_bias=False, kernel_initializer=init, name=name)(x)


def _bn(x, name: str):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                           name=name)(x)


def _bottleneck(x, width: int, stride: int, downsample: bool, name: str, seeds: LayerSeeds):
    shortcut = x
    if downsample:
        shortcut = _conv(x, width * EXPANSION, 1, stride, f"{name}_downsample_0", seeds)
        shortcut = _bn(shortcut, f"{name}_downsample_1")
    x = keras.layers.ReLU(name=f"{name}_relu1")(_bn(_conv(x, width, 1, 1, f"{name}_conv1", seeds),
                                                    f"{name}_bn1"))
    x = keras.layers.ReLU(name=f"{name}_relu2")(_bn(
        _conv(x, width, 3, stride, f"{name}_conv2", seeds), f"{name}_bn2"))
    x = _bn(_conv(x, width * EXPANSION, 1, 1, f"{name}_conv3", seeds), f"{name}_bn3")
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(x)


@keras.saving.register_keras_serializable(package="pipnet_tf")
class TorchvisionResNetBackbone(Backbone):
    """torchvision-layout ResNet feature extractor (see the module docstring), randomly
    initialised.

    Args:
        image_size: S for (batch, S, S, 3) inputs (None: any size).
        blocks: Bottleneck blocks in layer1..layer4: (3, 4, 6, 3) is ResNet-50,
            (3, 4, 23, 3) ResNet-101, (3, 8, 36, 3) ResNet-152.
        strides: strides of layer1..layer4; (1, 2, 1, 1) is the reference's,
            (1, 2, 2, 2) torchvision's original.
        seed: initialiser seed (each conv gets its own, derived from it).

    Output: (batch, S/8, S/8, 2048) with the default strides.

    Example:
        >>> backbone = TorchvisionResNetBackbone(64, seed=1)
        >>> backbone(np.zeros((2, 64, 64, 3), "float32")).shape
        TensorShape([2, 8, 8, 2048])
    """

    def __init__(self, image_size: int | None = 224, blocks=(3, 4, 6, 3),
                 strides=(1, 2, 1, 1), seed: int | None = None, **kwargs):
        if len(blocks) != 4 or len(strides) != 4 or min(blocks) < 1 or min(strides) < 1:
            raise ValueError(f"`blocks` and `strides` need 4 positive values (layer1..layer4), "
                             f"received blocks={blocks}, strides={strides}")
        kwargs.setdefault("name", "resnet")
        # === Functional Model ===
        seeds = LayerSeeds(seed)
        inputs = keras.Input((image_size, image_size, 3), name="images")
        x = ImagePreprocessing(IMAGENET_MEAN, IMAGENET_STD, name="imagenet_preprocessing")(inputs)
        x = keras.layers.ReLU(name="relu")(_bn(_conv(x, 64, 7, 2, "conv1", seeds), "bn1"))
        # Zero padding equals PyTorch's -inf padding here: the input is after a ReLU.
        x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
        for stage, (count, width, stride) in enumerate(zip(blocks, WIDTHS, strides)):
            for b in range(count):  # block 0 changes the width: it has a downsample
                x = _bottleneck(x, width, stride if b == 0 else 1, b == 0,
                                f"layer{stage + 1}_{b}", seeds)
        super().__init__(inputs, x, **kwargs)
        # === Config ===
        self.blocks = tuple(int(b) for b in blocks)
        self.strides = tuple(int(s) for s in strides)
        self.seed = seed

    # === What the backbone knows ===
    def group_of(self, layer: keras.layers.Layer) -> str:
        last = f"layer4_{self.blocks[3] - 1}_"
        if layer.name.startswith(last):
            return "train"
        if layer.name.startswith(("layer3_", "layer4_")):
            return "freeze"
        if layer.name.startswith("layer2_"):
            return "backbone"
        if layer.name.startswith(("conv1", "bn1", "layer1_")):
            return "never"
        raise ValueError(f"ResNet layer {layer.name!r} belongs to no group.")

    #: PyTorch keys of a torchvision ResNet state_dict that a feature extractor ignores.
    torch_ignored = (r"fc\..*",)

    def torch_weights(self) -> list[TorchWeight]:
        """The torchvision ResNet state_dict entry of every variable, in its order."""
        get = self.get_layer
        entries = layer_weights("conv1", get("conv1"), "conv") + batch_norm_weights("bn1", get("bn1"))
        for stage, count in enumerate(self.blocks):
            for b in range(count):
                torch_name, name = f"layer{stage + 1}.{b}", f"layer{stage + 1}_{b}"
                for i in (1, 2, 3):
                    entries += layer_weights(f"{torch_name}.conv{i}", get(f"{name}_conv{i}"),
                                             "conv")
                    entries += batch_norm_weights(f"{torch_name}.bn{i}", get(f"{name}_bn{i}"))
                if b == 0:
                    entries += layer_weights(f"{torch_name}.downsample.0",
                                             get(f"{name}_downsample_0"), "conv")
                    entries += batch_norm_weights(f"{torch_name}.downsample.1",
                                                  get(f"{name}_downsample_1"))
        return entries

    # === Config ===
    def get_config(self) -> dict:
        config = super().get_config()
        config.update(image_size=self.image_size, blocks=list(self.blocks),
                      strides=list(self.strides), seed=self.seed)
        return config


def _require_file(path: str, net: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file {path!r} for backbone {net!r} does not exist. "
                                "Pass a torch.save file of a torchvision ResNet state_dict, a "
                                ".weights.h5 saved from this backbone, 'imagenet' or 'none'.")


def _load_file(model: TorchvisionResNetBackbone, path: str, net: str) -> None:
    if is_torch_file(path):
        load_torch_weights(model, path, net)
        return
    try:
        model.load_weights(path)
    except Exception as error:  # noqa: BLE001 - h5/zip/shape errors all mean "does not fit"
        raise ValueError(f"Could not load weights file {path!r} into backbone {net!r}: it is "
                         f"neither a torch.save file nor a .weights.h5 of this backbone "
                         f"({type(error).__name__}: {error}).") from error


def _builder(name: str):
    blocks, imagenet_file = VARIANTS[name]

    def build(image_size: int, weights: str | None = "imagenet", seed: int | None = None
              ) -> TorchvisionResNetBackbone:
        path = None
        if str(weights).lower() == "imagenet":
            if imagenet_file is None:
                raise ValueError(
                    f"Backbone {name!r} has no downloadable weights: pass weights=PATH "
                    f"(--weights=PATH, a torch.save file of its torchvision ResNet state_dict) "
                    f"or 'none'; received weights={weights!r}.")
            path = cached_download(imagenet_file, TORCHVISION_URL + imagenet_file, name)
        elif not is_random_init(weights):
            path = str(weights)
            _require_file(path, name)  # before the model is built
        model = TorchvisionResNetBackbone(image_size, blocks, seed=seed, name=name)
        if path is not None:
            _load_file(model, path, name)
        return model

    build.__name__ = name
    build.__doc__ = (f"`{name}`: torchvision-layout ResNet {blocks} with layer3/layer4 at "
                     "stride 1 (the reference's). weights: " + (
                         "'imagenet' (torchvision's file), " if imagenet_file else "")
                     + "a torch.save / .weights.h5 file path, or None/'none'.")
    return register_backbone(name)(build)


for _name in VARIANTS:
    _builder(_name)
