"""pipnet-tf: PIP-Net (Nauta et al., "PIP-Net: Patch-Based Intuitive Prototypes for
Interpretable Image Classification", CVPR 2023) in Keras 3 / TensorFlow.

All tensors are channels-last: images are (batch, height, width, 3) RGB in 0..255,
prototype feature maps are (batch, H, W, D).

The public classes are imported lazily, so that `pipnet_tf.data.synthetic` and other
NumPy-only modules load without TensorFlow.
"""
import importlib
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

_LAZY = {
    "NonNegativeLinear": "pipnet_tf.layers",
    "PrototypeActivation": "pipnet_tf.layers",
    "PrototypePooling": "pipnet_tf.layers",
    "ShrinkNonNegative": "pipnet_tf.layers",
    "PIPNet": "pipnet_tf.model",
}
__all__ = sorted(_LAZY)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipnet_tf' has no attribute {name!r}")
