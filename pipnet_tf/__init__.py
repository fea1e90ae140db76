"""pipnet-tf: PIP-Net (Nauta et al., "PIP-Net: Patch-Based Intuitive Prototypes for
Interpretable Image Classification", CVPR 2023) in Keras 3 / TensorFlow.

All tensors are channels-last: images are (batch, height, width, 3) RGB in 0..255,
prototype feature maps are (batch, H, W, D).
"""
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from pipnet_tf.layers import NonNegativeLinear  # noqa: E402
from pipnet_tf.layers import PrototypeActivation  # noqa: E402
from pipnet_tf.layers import PrototypePooling  # noqa: E402
from pipnet_tf.layers import ShrinkNonNegative  # noqa: E402
from pipnet_tf.model import PIPNet  # noqa: E402

__all__ = [
    "NonNegativeLinear",
    "PIPNet",
    "PrototypeActivation",
    "PrototypePooling",
    "ShrinkNonNegative",
]
__version__ = "0.1.0"
