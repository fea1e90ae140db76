"""Backbone registry.

A backbone (`Backbone`, a serialisable functional `keras.Model`) maps images
`(batch, S, S, 3)` RGB in 0..255 (its preprocessing is inside the model) to a feature map
`(batch, H, W, C)`, and declares its own layer groups (SPEC §3) and patch geometry.
`build_backbone(name, image_size, weights, seed)` builds a registered one with its
weights; a model restored from a `.keras` file needs no registry: the backbone's class
is in the file.
"""
from __future__ import annotations

import inspect
from typing import Callable

from pipnet_tf.backbones.backbone import GROUP_NAMES, Backbone, LayerSeeds  # noqa: F401

Builder = Callable[..., Backbone]
_REGISTRY: dict[str, Builder] = {}


def register_backbone(name: str):
    """Decorator registering `builder(image_size, weights, seed) -> Backbone` as `name`."""

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"Backbone {name!r} is already registered.")
        _REGISTRY[name] = builder
        return builder

    return wrap


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def build_backbone(
    name: str, image_size: int, weights: str | None = None, seed: int | None = None,
    fast_cpu_ops: str = "auto",
    **options,
) -> Backbone:
    """Builds backbone `name` for square inputs of `image_size` pixels.

    Args:
        weights: None/"none" for random init, or what the backbone accepts
            ("imagenet", a file path).
        seed: initialiser seed; every layer gets its own seed derived from it.
        fast_cpu_ops: "auto" | "on" | "off", where the CPU-specialised kernels of
            `cpu_fast_ops` run (ConvNeXt; tiny_cnn and ResNet have none, so for them
            the value changes nothing).
        **options: the backbone's own settings (tiny_cnn: `width`, `depth`); ValueError
            for one the backbone does not take.
    """
    from pipnet_tf.backbones.cpu_fast_ops import check_fast_cpu_ops

    check_fast_cpu_ops(fast_cpu_ops)
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown backbone (--net) {name!r}; available: {', '.join(available_backbones())}."
        )
    builder = _REGISTRY[name]
    parameters = inspect.signature(builder).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ValueError(f"--net={name} has no {', '.join('--backbone_' + o for o in unknown)} "
                         "option; only tiny_cnn takes --backbone_width and --backbone_depth.")
    extra = {}
    if "fast_cpu_ops" in parameters:
        extra["fast_cpu_ops"] = fast_cpu_ops
    return builder(image_size=image_size, weights=weights, seed=seed, **options, **extra)


# Registration side effects.
from pipnet_tf.backbones import tiny_cnn  # noqa: E402,F401
from pipnet_tf.backbones import convnext  # noqa: E402,F401
from pipnet_tf.backbones import resnet  # noqa: E402,F401
from pipnet_tf.backbones import torchvision_resnet  # noqa: E402,F401
