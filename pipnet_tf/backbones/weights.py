"""Pretrained backbone weights (keras.applications files, PyTorch files), and input
preprocessing.

Our ConvNeXt and ResNet backbones are rebuilt layer by layer with the *same layer names* as
`keras.applications` but different strides (SPEC §1) and depthwise convs. Strides do not
change any weight shape, so weights are loaded into an *unmodified* keras.applications
model first (whatever its file format: Keras's ImageNet `_notop.h5`, a legacy `.h5` or a
`.weights.h5` written by `save_weights`) and then copied by layer name
(`copy_weights_by_name`). The input preprocessing that belongs to those weights is a layer
of the backbone (`ImagePreprocessing`), so every backbone takes 0..255 RGB.

A backbone that lists the PyTorch name of each of its variables (`Backbone.torch_weights`:
ConvNeXt, the torchvision-layout ResNets) also loads a `torch.save` file of the torchvision
model (`load_torch_weights`, read without PyTorch by `pipnet_tf.torch_checkpoint`), such
as torchvision's ImageNet files, which the PIP-Net reference starts from.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence

import keras
import numpy as np

from pipnet_tf.torch_checkpoint import is_torch_file, read_state_dict
from pipnet_tf.torch_weights import assign_torch_weights

# keras.applications caches downloaded weights in $KERAS_HOME/models (default ~/.keras).
CACHE_SUBDIR = "models"
# torchvision's ImageNet normalisation (after ToTensor's /255), on 0..255 inputs.
IMAGENET_MEAN = tuple(255.0 * m for m in (0.485, 0.456, 0.406))
IMAGENET_STD = tuple(255.0 * s for s in (0.229, 0.224, 0.225))


@keras.saving.register_keras_serializable(package="pipnet_tf")
class ImagePreprocessing(keras.layers.Layer):
    """`(x[..., ::-1] if bgr else x) - mean) / std`, per channel, always in float32.

    Input shape: `(batch, H, W, 3)` RGB in 0..255. Output shape: the same.

    Args:
        mean: three per-channel means, in the *output* channel order.
        std: three per-channel standard deviations (1 = no scaling).
        bgr: reverse the channel order first (caffe-style weights such as ResNet50's).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float] = (1.0, 1.0, 1.0),
                 bgr: bool = False, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"`mean` and `std` need 3 values, received: mean={mean}, std={std}")
        if min(std) <= 0:
            raise ValueError(f"`std` must be positive, received: {std}")
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.bgr = bool(bgr)

    def call(self, images):
        x = keras.ops.cast(images, "float32")
        if self.bgr:
            x = keras.ops.flip(x, axis=-1)
        mean = keras.ops.convert_to_tensor(np.asarray(self.mean, "float32"))
        inv_std = keras.ops.convert_to_tensor(1.0 / np.asarray(self.std, "float32"))
        return (x - mean) * inv_std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(mean=self.mean, std=self.std, bgr=self.bgr)
        return config


def keras_cache_dir() -> str:
    """Where keras.applications looks for (and downloads) weights: $KERAS_HOME/models."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, CACHE_SUBDIR)


def leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The non-model layers of `model`, descending into nested models (Sequentials)."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(leaf_layers(layer))
        else:
            out.append(layer)
    return out


def depthwise_from_grouped(kernel: np.ndarray) -> np.ndarray:
    """`Conv2D(groups=C)` kernel (k, k, 1, C) → `DepthwiseConv2D` kernel (k, k, C, 1)."""
    if kernel.ndim != 4 or kernel.shape[2] != 1:
        raise ValueError(f"Expected a grouped-conv kernel (k, k, 1, C), received {kernel.shape}.")
    return kernel.reshape(kernel.shape[0], kernel.shape[1], kernel.shape[3], 1)


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> int:
    """Copies the weights of every layer of `target` from the equally named layer of `source`.

    A grouped-conv kernel is reshaped for a `DepthwiseConv2D` target. Layers of `source`
    that `target` lacks (such as ConvNeXt's final LayerNorm) are ignored; a `target` layer
    with weights but no counterpart, or with other shapes, is an error. Returns the number
    of layers copied.
    """
    by_name = {layer.name: layer for layer in leaf_layers(source) if layer.weights}
    copied = 0
    for layer in leaf_layers(target):
        if not layer.weights:
            continue
        if layer.name not in by_name:
            raise ValueError(f"Layer {layer.name!r} of {target.name!r} has no counterpart "
                             f"in {source.name!r}.")
        values = [np.asarray(v) for v in by_name[layer.name].get_weights()]
        if isinstance(layer, keras.layers.DepthwiseConv2D) and values[0].shape[2] == 1:
            values[0] = depthwise_from_grouped(values[0])
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(f"Layer {layer.name!r}: weight shapes {[v.shape for v in values]} "
                             f"do not fit {expected}.")
        layer.set_weights(values)
        copied += 1
    return copied


def is_random_init(weights: str | None) -> bool:
    return weights is None or str(weights).lower() == "none"


def pretrained_source(
    weights: str,
    reference: Callable[..., keras.Model],
    *,
    net: str,
    app_name: str,
    imagenet_file: str | None,
) -> keras.Model | str:
    """Resolves `weights` ("imagenet" or a file path) *before* our model is built.

    Returns the unmodified keras.applications model holding the weights (copy them with
    `copy_weights_by_name`), or the path itself when the file does not fit that model (it
    may have been written by `save_weights` of our own backbone: `load_into` tries it).

    Args:
        reference: `reference(weights=..., include_top=...)` builds the unmodified
            keras.applications model.
        net: our registry name (for messages).
        app_name: the keras.applications constructor (for messages), e.g. "ResNet50".
        imagenet_file: the file name keras.applications downloads for `include_top=False`
            ImageNet weights, or None if there are no ImageNet weights for `net`.

    Raises:
        FileNotFoundError: ImageNet weights neither cached nor downloadable, or a missing
            file; the message says which file to put where.
    """
    if str(weights).lower() == "imagenet":
        if imagenet_file is None:
            raise ValueError(f"Backbone {net!r} has no ImageNet weights in keras.applications; "
                             f"pass weights=PATH (--weights=PATH).")
        return _imagenet_reference(reference, net, app_name, imagenet_file)
    path = str(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Weights file {path!r} for backbone {net!r} does not exist. Pass a .h5/.weights.h5 "
            f"file saved from an unmodified keras.applications.{app_name} model, 'imagenet' or "
            f"'none'.")
    errors = []
    for include_top in (False, True):
        source = reference(weights=None, include_top=include_top)
        try:
            source.load_weights(path)
            return source
        except Exception as error:  # noqa: BLE001 - try the next layout, report all below
            errors.append(f"{app_name}(include_top={include_top}): {error}")
    return _PathWithErrors(path, errors)


class _PathWithErrors(str):
    """A weights path that fits no keras.applications layout (with the errors seen)."""

    def __new__(cls, path: str, errors: list[str]):
        self = super().__new__(cls, path)
        self.errors = errors
        return self


def load_into(target: keras.Model, source: keras.Model | str, net: str) -> None:
    """Puts the weights resolved by `pretrained_source` into our backbone `target`."""
    if isinstance(source, keras.Model):
        copy_weights_by_name(source, target)
        return
    try:  # a file written by save_weights() of our own backbone
        target.load_weights(source)
    except Exception as error:
        tried = getattr(source, "errors", []) + [f"the {net!r} backbone itself: {error}"]
        raise ValueError(f"Could not load weights file {str(source)!r} into backbone {net!r}; "
                         "tried " + "; ".join(tried)) from error


def load_torch_weights(model: keras.Model, path: str | os.PathLike, net: str) -> int:
    """Fills backbone `model` from a `torch.save` file of the torchvision model it mirrors
    (keys as `model.torch_weights()` names them, an optional `module.` prefix; the keys
    of `model.torch_ignored`, such as the classifier head, are skipped). Returns the
    number of variables filled.

    Raises:
        TorchCheckpointError: unreadable file, or missing/unexpected keys or wrong shapes
            (all listed in one message).
    """
    state_dict = read_state_dict(path)
    return assign_torch_weights(model.torch_weights(), state_dict,
                                ignore=getattr(model, "torch_ignored", ()),
                                where=f"PyTorch weights file {os.fspath(path)!r} for backbone "
                                      f"{net!r}")


def build_with_weights(
    make_model: Callable[[], keras.Model],
    weights: str | None,
    reference: Callable[..., keras.Model],
    *,
    net: str,
    app_name: str,
    imagenet_file: str | None,
) -> keras.Model:
    """`make_model()` with `weights` loaded: resolves them first (fails fast, before the
    model is built), then copies them in; random init for None/"none". A PyTorch file
    (`torch.save`) is loaded by PyTorch names (`load_torch_weights`)."""
    if not is_random_init(weights) and os.path.isfile(str(weights)) and is_torch_file(weights):
        model = make_model()
        load_torch_weights(model, weights, net)
        return model
    source = None
    if not is_random_init(weights):
        source = pretrained_source(weights, reference, net=net, app_name=app_name,
                                   imagenet_file=imagenet_file)
    model = make_model()
    if source is not None:
        load_into(model, source, net)
    return model


def cached_download(file_name: str, origin: str, net: str) -> str:
    """`$KERAS_HOME/models/file_name`, downloaded from `origin` unless it is there.

    Raises:
        FileNotFoundError: not cached and the download failed (offline); the message says
            where to place the file.
    """
    cached = os.path.join(keras_cache_dir(), file_name)
    if os.path.isfile(cached):
        return cached
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # fail fast offline instead of hanging in the download
    try:
        return keras.utils.get_file(file_name, origin, cache_subdir=CACHE_SUBDIR)
    except Exception as error:  # keras raises a bare Exception ("URL fetch failure ...")
        raise FileNotFoundError(
            f"Could not get the ImageNet weights of backbone {net!r}: {file_name!r} is not in "
            f"the Keras cache and downloading it from {origin} failed ({error}). Place that "
            f"file at {cached}, or pass weights=PATH (--weights=PATH) with a torch.save file "
            f"of the torchvision model, or weights='none' (random init).") from error
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _imagenet_reference(reference, net: str, app_name: str, file_name: str) -> keras.Model:
    cached = os.path.join(keras_cache_dir(), file_name)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # fail fast offline instead of hanging in the download
    try:
        return reference(weights="imagenet", include_top=False)
    except Exception as error:  # keras raises a bare Exception ("URL fetch failure ...")
        raise FileNotFoundError(
            f"Could not get the ImageNet weights of backbone {net!r}: {file_name!r} is not in "
            f"the Keras cache and downloading it failed ({error}). Either place the "
            f"keras.applications file {file_name!r} at {cached} (it is "
            f"keras.applications.{app_name}(include_top=False, weights='imagenet')'s download), "
            f"or pass weights=PATH (--weights=PATH) with a .h5/.weights.h5 file saved from an "
            f"unmodified keras.applications.{app_name} model, or weights='none' (random init)."
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)
