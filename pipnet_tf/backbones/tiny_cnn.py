"""`tiny_cnn`: a small CPU-friendly backbone with an 8x-downsampled latent grid.

(batch, S, S, 3) 0..255 → (batch, S/8, S/8, width·4); at S=64 an 8x8 grid of
64 prototypes. A 3x3 stem, then three stages of a 2x2 stride-2 "patchify"
downsampler (as ConvNeXt's) and a 3x3 conv, each followed by synchronised
BatchNorm + ReLU (synchronised so that statistics are over the global batch under a
`tf.distribute` strategy), except the last conv: like ConvNeXt's raw residual stream,
the features fed to the prototype softmax carry no normalisation or activation.

`depth` 3x3 convs end the last stage (default 1); each extra one widens the receptive
field by 16 px (38 px at depth 1, 70 at 3) and adds ~8% to the work.

The 2x2 stride-2 downsamplers centre latent cell i's receptive field at 8i + 4
in continuous pixel coordinates (the centre of pixel 8i + 3.5); strided 3x3 "same" convs
would shift it by several pixels down and right. The backbone declares exactly that
(`StridePatchRule(8, 4)`: a 32·S/224 box centred on the cell): the reference's mapping
spaces cells (S − patch)/(W − 1) apart edge to edge, which for this grid drifts up to
half a patch away from where the cells look (BUILD_NOTES, #14).

Layer groups (mirroring ConvNeXt's, SPEC §3): backbone = stem + stage 1; freeze =
stage 2 + stage 3's downsampler; train = the last stage's 3x3 convs.

Example:
    >>> backbone = TinyCNNBackbone(image_size=64, seed=1)
    >>> backbone(np.zeros((2, 64, 64, 3), "float32")).shape
    TensorShape([2, 8, 8, 64])
"""
from __future__ import annotations

import keras

from pipnet_tf.backbones import register_backbone
from pipnet_tf.backbones.backbone import Backbone, LayerSeeds
from pipnet_tf.patch_geometry import StridePatchRule


def _conv(x, filters: int, kernel: int, stride: int, name: str, seeds: LayerSeeds,
          activation: bool = True):
    x = keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same" if stride == 1 else "valid",
        use_bias=not activation,
        kernel_initializer=keras.initializers.HeNormal(seed=seeds.next()),
        name=f"{name}_conv",
    )(x)
    if not activation:
        return x
    # momentum 0.9 = PyTorch's BatchNorm default (0.1 in its convention), as the reference.
    x = keras.layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


@keras.saving.register_keras_serializable(package="pipnet_tf")
class TinyCNNBackbone(Backbone):
    """The tiny CNN (see the module docstring).

    Args:
        image_size: S, divisible by 8 (None: any size divisible by 8).
        width: channels of the stem; the output has `4·width` channels.
        depth: 3x3 convs in the last stage (>= 1); the last has no BatchNorm/ReLU.
        seed: seed of the initialisers (each layer gets its own, derived from it).
    """

    patch_rule = StridePatchRule(stride=8, offset=4.0)

    def __init__(self, image_size: int | None = 64, width: int = 16, seed: int | None = None,
                 depth: int = 1, **kwargs):
        if image_size is not None and (int(image_size) < 8 or int(image_size) % 8):
            raise ValueError(f"tiny_cnn needs an image size divisible by 8, received "
                             f"{image_size}.")
        if int(width) < 1:
            raise ValueError(f"`width` must be positive, received: {width}")
        if int(depth) < 1:
            raise ValueError(f"`depth` must be at least 1, received: {depth}")
        kwargs.setdefault("name", "tiny_cnn")
        # === Functional Model ===
        seeds = LayerSeeds(seed)
        inputs = keras.Input((image_size, image_size, 3), name="images")
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(inputs)
        x = _conv(x, width, 3, 1, "stem", seeds)
        x = _conv(x, width * 2, 2, 2, "stage1_down", seeds)
        x = _conv(x, width * 2, 3, 1, "stage1", seeds)
        x = _conv(x, width * 4, 2, 2, "stage2_down", seeds)
        x = _conv(x, width * 4, 3, 1, "stage2", seeds)
        x = _conv(x, width * 4, 2, 2, "stage3_down", seeds)
        for extra in range(1, int(depth)):
            x = _conv(x, width * 4, 3, 1, f"stage3_extra{extra}", seeds)
        x = _conv(x, width * 4, 3, 1, "stage3", seeds, activation=False)
        super().__init__(inputs, x, **kwargs)
        # === Config ===
        self.width = int(width)
        self.depth = int(depth)
        self.seed = seed

    def group_of(self, layer: keras.layers.Layer) -> str:
        if layer.name.startswith(("stem", "stage1")):
            return "backbone"
        if layer.name.startswith(("stage2", "stage3_down")):
            return "freeze"
        return "train"

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(image_size=self.image_size, width=self.width, seed=self.seed,
                      depth=self.depth)
        return config


@register_backbone("tiny_cnn")
def tiny_cnn(image_size: int, weights: str | None = None, seed: int | None = None,
             width: int = 16, depth: int = 1) -> TinyCNNBackbone:
    """Builds the tiny CNN (`width` stem channels, 4·width prototypes, `depth` 3x3 convs
    in its last stage). Only random initialisation (`weights` None or "none")."""
    if weights not in (None, "none"):
        raise ValueError(
            f"Backbone 'tiny_cnn' has no pretrained weights; received weights={weights!r}. "
            "Use --weights=none."
        )
    return TinyCNNBackbone(image_size=image_size, width=width, seed=seed, depth=depth)
