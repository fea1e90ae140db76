"""`tiny_cnn`: a small CPU-friendly backbone with an 8x-downsampled latent grid.

(batch, S, S, 3) 0..255 → (batch, S/8, S/8, width·4); at S=64 an 8x8 grid of
64 prototypes. A 3x3 stem, then three stages of a 2x2 stride-2 "patchify"
downsampler (as ConvNeXt's) and a 3x3 conv, each followed by synchronised
BatchNorm + ReLU (synchronised so that statistics are over the global batch under a
`tf.distribute` strategy), except the last conv: like ConvNeXt's raw residual stream,
the features fed to the prototype softmax carry no normalisation or activation.

The 2x2 stride-2 downsamplers centre latent cell i's receptive field at pixel
8i + 3.5, which is where the reference's patch mapping (SPEC §4: patch 32·S/224,
skip (S − patch)/(W − 1)) puts its box; strided 3x3 "same" convs would shift it by
several pixels down and right.
"""
from __future__ import annotations

import keras

from pipnet_tf.backbones import register_backbone


def _conv(x, filters: int, kernel: int, stride: int, name: str, seed, activation: bool = True):
    x = keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same" if stride == 1 else "valid",
        use_bias=not activation,
        kernel_initializer=keras.initializers.HeNormal(seed=seed),
        name=f"{name}_conv",
    )(x)
    if not activation:
        return x
    # momentum 0.9 = PyTorch's BatchNorm default (0.1 in its convention), as the reference.
    x = keras.layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _groups(model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    """backbone = stem + stage 1; freeze = stage 2 + stage 3's downsampler; train = the
    last conv (mirroring ConvNeXt's groups in SPEC §3)."""

    def by_prefix(*prefixes):
        return [layer for layer in model.layers if layer.weights and layer.name.startswith(prefixes)]

    return {
        "backbone": by_prefix("stem", "stage1"),
        "freeze": by_prefix("stage2", "stage3_down"),
        "train": by_prefix("stage3_conv"),
    }


@register_backbone("tiny_cnn", grouper=_groups)
def tiny_cnn(image_size: int, weights: str | None = None, seed: int | None = None, width: int = 16):
    """Builds the tiny CNN. Only random initialisation (`weights` None or "none")."""
    if weights not in (None, "none"):
        raise ValueError(
            f"Backbone 'tiny_cnn' has no pretrained weights; received weights={weights!r}. "
            "Use --weights=none."
        )
    if image_size % 8:
        raise ValueError(f"tiny_cnn needs an image size divisible by 8, received {image_size}.")
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(inputs)
    x = _conv(x, width, 3, 1, "stem", seed)
    x = _conv(x, width * 2, 2, 2, "stage1_down", seed)
    x = _conv(x, width * 2, 3, 1, "stage1", seed)
    x = _conv(x, width * 4, 2, 2, "stage2_down", seed)
    x = _conv(x, width * 4, 3, 1, "stage2", seed)
    x = _conv(x, width * 4, 2, 2, "stage3_down", seed)
    x = _conv(x, width * 4, 3, 1, "stage3", seed, activation=False)
    return keras.Model(inputs, x, name="tiny_cnn")
