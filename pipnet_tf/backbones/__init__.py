"""Backbone registry.

A backbone maps images `(batch, S, S, 3)` RGB in 0..255 (its preprocessing is inside
the model) to a feature map `(batch, H, W, C)`. Each registered builder returns a
`Backbone`, which also declares its own layer groups (SPEC §3) so that trainers
freeze and unfreeze by group object, never by matching names.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import keras

# Group names of SPEC §3. "never" holds layers that are never trained (ResNet's stem).
GROUP_NAMES = ("backbone", "freeze", "train", "never")


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A feature extractor and its layer groups.

    Attributes:
        name: registry name.
        model: functional `keras.Model`, (batch, S, S, 3) 0..255 → (batch, H, W, C).
        groups: group name (one of `GROUP_NAMES`) → layers. Every layer with weights
            is in exactly one group.
    """

    name: str
    model: keras.Model
    groups: dict[str, list[keras.layers.Layer]]

    @property
    def out_channels(self) -> int:
        return int(self.model.output.shape[-1])


Builder = Callable[..., Backbone]
_REGISTRY: dict[str, Builder] = {}
_GROUPERS: dict[str, Callable[[keras.Model], dict[str, list[keras.layers.Layer]]]] = {}


def register_backbone(name: str, grouper: Callable[[keras.Model], dict]):
    """Decorator registering `builder(image_size, weights, **kw) -> keras.Model` under `name`.

    `grouper(model)` returns the model's layer groups; it is stored separately so that a
    model restored from a `.keras` file gets its groups back.
    """

    def wrap(builder: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        if name in _REGISTRY:
            raise ValueError(f"Backbone {name!r} is already registered.")
        _REGISTRY[name] = builder
        _GROUPERS[name] = grouper
        return builder

    return wrap


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown backbone (--net) {name!r}; available: {', '.join(available_backbones())}."
        )


def build_backbone(
    name: str, image_size: int, weights: str | None = None, seed: int | None = None
) -> Backbone:
    """Builds backbone `name` for square inputs of `image_size` pixels.

    Args:
        weights: None/"none" for random init, or what the backbone accepts
            ("imagenet", a file path).
    """
    _check_name(name)
    model = _REGISTRY[name](image_size=image_size, weights=weights, seed=seed)
    return Backbone(name=name, model=model, groups=backbone_groups(name, model))


def backbone_groups(name: str, model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    """The layer groups of an already built backbone `model` registered as `name`."""
    _check_name(name)
    groups = _GROUPERS[name](model)
    unknown = set(groups) - set(GROUP_NAMES)
    if unknown:
        raise ValueError(f"Backbone {name!r} declares unknown groups {sorted(unknown)}.")
    return {g: list(groups.get(g, [])) for g in GROUP_NAMES}


# Registration side effects.
from pipnet_tf.backbones import tiny_cnn  # noqa: E402,F401
from pipnet_tf.backbones import convnext  # noqa: E402,F401
from pipnet_tf.backbones import resnet  # noqa: E402,F401
