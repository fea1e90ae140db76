"""`tiny_cnn`: a small CPU-friendly backbone with an 8x-downsampled latent grid.

(batch, S, S, 3) 0..255 → (batch, S/8, S/8, width·4); at S=64 an 8x8 grid of
64 channels. Three stride-2 stages of 3x3 conv + synchronised BatchNorm + ReLU
(synchronised so that statistics are over the global batch under a
`tf.distribute` strategy), then a linear 3x3 conv whose output channels become the
prototypes: like ConvNeXt's raw residual stream, the features fed to the prototype
softmax carry no final normalisation or activation.
"""
from __future__ import annotations

import keras

from pipnet_tf.backbones import register_backbone

STAGES = ("stem", "stage1", "stage2", "stage3")


def _conv_bn_relu(x, filters: int, stride: int, name: str, seed):
    x = keras.layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer=keras.initializers.HeNormal(seed=seed),
        name=f"{name}_conv",
    )(x)
    # momentum 0.9 = PyTorch's BatchNorm default (0.1 in its convention), as the reference.
    x = keras.layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _groups(model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    """backbone = stem + stage1; freeze = stage2 + stage3's first conv; train = last conv."""
    by_prefix = lambda *prefixes: [  # noqa: E731
        layer
        for layer in model.layers
        if layer.weights and layer.name.startswith(prefixes)
    ]
    return {
        "backbone": by_prefix("stem", "stage1"),
        "freeze": by_prefix("stage2", "stage3_a"),
        "train": by_prefix("stage3_b"),
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
    x = _conv_bn_relu(x, width, 1, "stem", seed)
    x = _conv_bn_relu(x, width * 2, 2, "stage1", seed)
    x = _conv_bn_relu(x, width * 4, 2, "stage2", seed)
    x = _conv_bn_relu(x, width * 4, 2, "stage3_a", seed)
    x = keras.layers.Conv2D(
        width * 4,
        3,
        padding="same",
        kernel_initializer=keras.initializers.HeNormal(seed=seed),
        name="stage3_b_conv",
    )(x)
    return keras.Model(inputs, x, name="tiny_cnn")
