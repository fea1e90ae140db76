"""The PIP-Net reference's forward pass in NumPy (float64, NCHW), from a PyTorch-layout
state_dict: an independent check of the converted Keras models (test helper).

Written from torchvision's module definitions and SPEC §1, not from our Keras code:
ConvNeXt-Tiny `features` (LayerNorm2d eps 1e-6 over the channels, CNBlock = depthwise 7x7
→ LayerNorm → Linear → exact GELU → Linear → layer scale, + input; downsamplers with more
than `stride_one_above` input channels at stride 1) and the reference's ResNet_features
(Bottleneck: 1x1 → 3x3 (stride) → 1x1, BatchNorm eps 1e-5, downsample on the shortcut;
layer3/layer4 at stride 1). Images: (N, H, W, 3) 0..255 RGB → ToTensor → Normalize.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _w(sd, key):
    return np.asarray(sd[key], np.float64)


def conv2d(x, weight, bias=None, stride=1, padding=0, groups=1):
    """PyTorch Conv2d: x (N, C, H, W), weight (O, C/groups, kh, kw)."""
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = weight.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # (N, C, Ho, Wo, kh, kw)
    if groups == 1:
        out = np.einsum("nchwij,ocij->nohw", windows, weight, optimize=True)
    elif groups == x.shape[1] == weight.shape[0]:  # depthwise
        out = np.einsum("nchwij,cij->nchw", windows, weight[:, 0], optimize=True)
    else:
        raise NotImplementedError(groups)
    return out if bias is None else out + bias[None, :, None, None]


def layer_norm_channels(x, weight, bias, eps=1e-6):
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight[None, :, None, None] + bias[None, :, None, None]


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def normalize(images):
    x = np.asarray(images, np.float64) / 255.0
    return ((x - MEAN) / STD).transpose(0, 3, 1, 2)


def convnext_features(sd, images, stride_one_above=100, prefix="_net."):
    """Returns {"features.i": (N, C, H, W)} after each of features.0 … features.7."""
    p = prefix + "features."
    x = conv2d(normalize(images), _w(sd, p + "0.0.weight"), _w(sd, p + "0.0.bias"), stride=4)
    x = layer_norm_channels(x, _w(sd, p + "0.1.weight"), _w(sd, p + "0.1.bias"))
    out = {"features.0": x}
    for f in range(1, 8):
        if f % 2 == 0:  # downsampler
            x = layer_norm_channels(x, _w(sd, f"{p}{f}.0.weight"), _w(sd, f"{p}{f}.0.bias"))
            stride = 1 if x.shape[1] > stride_one_above else 2
            x = conv2d(x, _w(sd, f"{p}{f}.1.weight"), _w(sd, f"{p}{f}.1.bias"), stride=stride)
        else:
            j = 0
            while f"{p}{f}.{j}.layer_scale" in sd:
                b = f"{p}{f}.{j}."
                y = conv2d(x, _w(sd, b + "block.0.weight"), _w(sd, b + "block.0.bias"),
                           padding=3, groups=x.shape[1])
                y = layer_norm_channels(y, _w(sd, b + "block.2.weight"), _w(sd, b + "block.2.bias"))
                y = y.transpose(0, 2, 3, 1)  # Permute to channels-last for the Linears
                y = gelu(y @ _w(sd, b + "block.3.weight").T + _w(sd, b + "block.3.bias"))
                y = y @ _w(sd, b + "block.5.weight").T + _w(sd, b + "block.5.bias")
                y = y.transpose(0, 3, 1, 2)
                x = x + _w(sd, b + "layer_scale")[None] * y
                j += 1
        out[f"features.{f}"] = x
    return out


def batch_norm(x, sd, key, eps=1e-5):
    scale = _w(sd, key + ".weight") / np.sqrt(_w(sd, key + ".running_var") + eps)
    shift = _w(sd, key + ".bias") - _w(sd, key + ".running_mean") * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def max_pool_3x3_s2_p1(x):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    return windows.max(axis=(-2, -1))


def resnet_features(sd, images, strides=(1, 2, 1, 1), prefix="_net."):
    """Returns {"stem", "layer1".."layer4"}: (N, C, H, W) outputs."""
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    x = conv2d(normalize(images), _w(sd, prefix + "conv1.weight"), stride=2, padding=3)
    x = max_pool_3x3_s2_p1(relu(batch_norm(x, sd, prefix + "bn1")))
    out = {"stem": x}
    for stage in range(1, 5):
        b = 0
        while f"{prefix}layer{stage}.{b}.conv1.weight" in sd:
            k = f"{prefix}layer{stage}.{b}."
            stride = strides[stage - 1] if b == 0 else 1
            y = relu(batch_norm(conv2d(x, _w(sd, k + "conv1.weight")), sd, k + "bn1"))
            y = relu(batch_norm(conv2d(y, _w(sd, k + "conv2.weight"), stride=stride, padding=1),
                                sd, k + "bn2"))
            y = batch_norm(conv2d(y, _w(sd, k + "conv3.weight")), sd, k + "bn3")
            shortcut = x
            if k + "downsample.0.weight" in sd:
                shortcut = batch_norm(conv2d(x, _w(sd, k + "downsample.0.weight"), stride=stride),
                                      sd, k + "downsample.1")
            x = relu(y + shortcut)
            b += 1
        out[f"layer{stage}"] = x
    return out


def pipnet_forward(sd, features, inference: bool):
    """The reference head on backbone features (N, C, H, W): (proto_features, pooled, out)."""
    x = features
    if "_add_on.0.weight" in sd:
        x = conv2d(x, _w(sd, "_add_on.0.weight"), _w(sd, "_add_on.0.bias"))
    x = x - x.max(axis=1, keepdims=True)
    proto = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    pooled = proto.max(axis=(2, 3))
    if inference:
        pooled = np.where(pooled < 0.1, 0.0, pooled)
    out = pooled @ np.maximum(_w(sd, "_classification.weight"), 0.0).T
    if "_classification.bias" in sd:
        out = out + _w(sd, "_classification.bias")
    return proto, pooled, out
