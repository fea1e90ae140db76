"""pipnet-tf: PIP-Net (Nauta et al., "PIP-Net: Patch-Based Intuitive Prototypes for
Interpretable Image Classification", CVPR 2023) in Keras 3 / TensorFlow.

All tensors are channels-last: images are (batch, height, width, 3) RGB in 0..255,
prototype feature maps are (batch, H, W, D).

`import pipnet_tf` registers every custom Keras object of the package (the model, its
layers and constraint, every backbone class and its layers), so that
`keras.saving.load_model("model.keras")` works after it. This imports TensorFlow.
"""
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# Registration side effects: every `register_keras_serializable` class is imported here
# (pipnet_tf.model imports the layers and pipnet_tf.backbones, which imports every
# backbone module and their layers).
from pipnet_tf.layers import (  # noqa: E402
    NonNegativeLinear,
    PrototypeActivation,
    PrototypePooling,
    ShrinkNonNegative,
)
from pipnet_tf.model import PIPNet  # noqa: E402
from pipnet_tf import optimization as _optimization  # noqa: E402,F401  (FusedAdamW)

__all__ = ["NonNegativeLinear", "PIPNet", "PrototypeActivation", "PrototypePooling",
           "ShrinkNonNegative"]
__version__ = "0.1.0"
