"""keras.applications-layout ResNet-50/101/152 backbones with a 28x28x2048 latent grid at
224 px, registered as `resnet50_keras`, `resnet101_keras`, `resnet152_keras`.

The reference's architecture (torchvision layout; `resnet50`, `resnet50_inat`, `resnet101`,
`resnet152`) is `torchvision_resnet.py`. These variants exist for keras.applications'
downloadable ImageNet weights, whose graph differs: `keras.applications.ResNet50/101/152` (ResNet v1, bias in every conv, BN eps 1.001e-5)
rebuilt layer by layer with the same layer names, so their weights load by name
(`weights.copy_weights_by_name`), and with the first blocks of conv4 and conv5
(torchvision `layer3`, `layer4`) at stride 1, so the output is conv5's last block,
`(batch, S/8, S/8, 2048)`. Inputs are 0..255 RGB; the caffe-style preprocessing of the
keras.applications weights (RGB → BGR, minus the ImageNet BGR mean) is the first layer.

Differences from the reference's torchvision-style `ResNet_features` (documented in
BUILD_NOTES.md): keras.applications' ResNet v1 puts conv3's stride on the first 1x1 conv
(torchvision: on the 3x3 conv) and has conv biases; these go with its weights.
So this graph cannot hold the reference's weights. BatchNorm momentum is 0.9 (= PyTorch's
0.1); random init is He-normal (fan_out), as the reference.

Layer groups (SPEC §3; torchvision names in brackets): "train" = conv5_block3 [layer4.2];
"freeze" = conv4 and the rest of conv5 [layer3–4]; "backbone" = conv3 [layer2];
"never" = conv1 and conv2 [conv1, bn1, layer1], never trained.
"""
from __future__ import annotations

import keras

from pipnet_tf.backbones import register_backbone
from pipnet_tf.backbones.backbone import Backbone, LayerSeeds
from pipnet_tf.backbones.weights import ImagePreprocessing, build_with_weights

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
BN_EPSILON = 1.001e-5
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
# name → (blocks per stage conv2..conv5, keras.applications constructor, ImageNet file)
VARIANTS = {
    "resnet50": ((3, 4, 6, 3), "ResNet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet101": ((3, 4, 23, 3), "ResNet101",
                  "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet152": ((3, 8, 36, 3), "ResNet152",
                  "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}


def _conv_bn(x, filters, kernel, stride, name, seeds: LayerSeeds, padding="valid"):
    init = keras.initializers.VarianceScaling(
        2.0, mode="fan_out", distribution="untruncated_normal", seed=seeds.next())
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding,
                            kernel_initializer=init, name=f"{name}_conv")(x)
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                           name=f"{name}_bn")(x)


def _bottleneck(x, filters: int, stride: int, shortcut_conv: bool, name: str, seeds):
    shortcut = _conv_bn(x, 4 * filters, 1, stride, f"{name}_0", seeds) if shortcut_conv else x
    x = _conv_bn(x, filters, 1, stride, f"{name}_1", seeds)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv_bn(x, filters, 3, 1, f"{name}_2", seeds, padding="same")
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = _conv_bn(x, 4 * filters, 1, 1, f"{name}_3", seeds)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


@keras.saving.register_keras_serializable(package="pipnet_tf")
class ResNetBackbone(Backbone):
    """keras.applications-layout ResNet feature extractor, randomly initialised.

    Args:
        image_size: S for (batch, S, S, 3) inputs (None: any size).
        blocks: bottleneck blocks in conv2..conv5, e.g. (3, 4, 6, 3) for ResNet-50.
        strides: strides of the first blocks of conv2..conv5; (1, 2, 2, 2) is
            keras.applications' original layout (for tests).
        seed: initialiser seed (each conv gets its own, derived from it).

    Output: (batch, S/8, S/8, 2048) with the default strides.
    """

    def __init__(self, image_size: int | None = 224, blocks=(3, 4, 6, 3),
                 strides=(1, 2, 1, 1), seed: int | None = None, **kwargs):
        if len(blocks) != 4 or len(strides) != 4:
            raise ValueError(f"`blocks` and `strides` need 4 values (conv2..conv5), received "
                             f"blocks={blocks}, strides={strides}")
        kwargs.setdefault("name", "resnet")
        # === Functional Model ===
        seeds = LayerSeeds(seed)
        inputs = keras.Input((image_size, image_size, 3), name="images")
        x = ImagePreprocessing(CAFFE_BGR_MEAN, bgr=True, name="caffe_preprocessing")(inputs)
        x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(x)
        x = _conv_bn(x, 64, 7, 2, "conv1", seeds)
        x = keras.layers.Activation("relu", name="conv1_relu")(x)
        x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
        for stage, (count, filters, stride) in enumerate(zip(blocks, (64, 128, 256, 512),
                                                             strides)):
            for b in range(count):
                x = _bottleneck(x, filters, stride if b == 0 else 1, b == 0,
                                f"conv{stage + 2}_block{b + 1}", seeds)
        super().__init__(inputs, x, **kwargs)
        # === Config ===
        self.blocks = tuple(int(b) for b in blocks)
        self.strides = tuple(int(s) for s in strides)
        self.seed = seed

    def group_of(self, layer: keras.layers.Layer) -> str:
        return resnet_group(layer.name)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(image_size=self.image_size, blocks=list(self.blocks),
                      strides=list(self.strides), seed=self.seed)
        return config


def resnet_group(name: str) -> str:
    """SPEC §3 group of a layer named like keras.applications' ResNet layers."""
    if name.startswith("conv5_block3_"):  # every variant has 3 blocks in conv5
        return "train"
    if name.startswith(("conv4_", "conv5_")):
        return "freeze"
    if name.startswith("conv3_"):
        return "backbone"
    if name.startswith(("conv1_", "conv2_")):
        return "never"
    raise ValueError(f"ResNet layer {name!r} belongs to no group.")


def _builder(name: str, variant: str):
    blocks, app_name, imagenet_file = VARIANTS[variant]

    def reference(weights=None, include_top=False):
        return getattr(keras.applications, app_name)(include_top=include_top, weights=weights)

    def build(image_size: int, weights: str | None = "imagenet", seed: int | None = None):
        return build_with_weights(
            lambda: ResNetBackbone(image_size, blocks, seed=seed, name=name),
            weights, reference, net=name, app_name=app_name, imagenet_file=imagenet_file)

    build.__name__ = name
    build.__doc__ = (f"`{name}`: keras.applications {app_name} (its layout) with conv4/conv5 at "
                     "stride 1. weights: 'imagenet', a file path or None/'none'.")
    return register_backbone(name)(build)


resnet50_keras = _builder("resnet50_keras", "resnet50")
resnet101_keras = _builder("resnet101_keras", "resnet101")
resnet152_keras = _builder("resnet152_keras", "resnet152")
# Names the pre-#11 `.keras` files of these backbones carried (`PIPNet.from_config`).
LEGACY_NAMES = {"resnet50": "resnet50_keras", "resnet50_inat": "resnet50_keras",
                "resnet101": "resnet101_keras", "resnet152": "resnet152_keras"}
