"""The `Backbone` base class: a feature extractor that owns what it knows.

Following keras-hub's Backbone/Task split, a backbone is a functional `keras.Model`
subclass built inside `__init__`; `get_config` lists exactly its constructor arguments,
so it survives a `.keras` round trip, and PIP-Net (the task, `pipnet_tf.model.PIPNet`)
takes a backbone instance. A backbone carries:

- its preprocessing: the first layer maps 0..255 RGB to what its weights expect
  (`preprocessing`);
- its layer groups of SPEC §3 as layer objects (`layer_groups`), which the trainer freezes
  and unfreezes by group;
- its patch geometry: the pixel box of each latent cell at a given input size
  (`patch_geometry`, from the class's `patch_rule`).

Shapes: images `(batch, S, S, 3)` RGB in 0..255 → features `(batch, H, W, C)`.
"""
from __future__ import annotations

import keras

from pipnet_tf.patch_geometry import REFERENCE_RULE, PatchGeometry, PatchRule

# Group names of SPEC §3. "never" holds layers that are never trained (ResNet's stem).
GROUP_NAMES = ("backbone", "freeze", "train", "never")


class LayerSeeds:
    """Distinct initializer seeds for successive layers, derived from one seed.

    A Keras initializer given an integer seed returns the same values on every call, so
    two layers of the same shape built with the same seed would start identical.
    `next()` gives `seed·1000 + 1`, `seed·1000 + 2`, …; None stays None (unseeded).
    """

    def __init__(self, seed: int | None):
        self.seed, self.count = seed, 0

    def next(self) -> int | None:
        self.count += 1
        return None if self.seed is None else int(self.seed) * 1000 + self.count


class Backbone(keras.Model):
    """Base class of pipnet-tf backbones (see the module docstring).

    Subclasses build their functional graph in `__init__`, pass `inputs`/`outputs` here,
    implement `group_of(layer)` and extend `get_config` with their own arguments.
    """

    patch_rule: PatchRule = REFERENCE_RULE

    def __init__(self, inputs, outputs, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

    # === What the backbone knows ===
    def group_of(self, layer: keras.layers.Layer) -> str:
        """The group (one of `GROUP_NAMES`) of one of this backbone's layers with weights."""
        raise NotImplementedError

    @property
    def layer_groups(self) -> dict[str, list[keras.layers.Layer]]:
        """Group name → layers; every layer with weights is in exactly one group."""
        groups: dict[str, list[keras.layers.Layer]] = {name: [] for name in GROUP_NAMES}
        for layer in self.layers:
            if not layer.weights:
                continue
            group = self.group_of(layer)
            if group not in groups:
                raise ValueError(f"{type(self).__name__}.group_of({layer.name!r}) returned "
                                 f"{group!r}; expected one of {GROUP_NAMES}.")
            groups[group].append(layer)
        return groups

    #: Regexes of PyTorch state_dict keys that `torch_weights` leaves out on purpose
    #: (e.g. the classification head of a torchvision file).
    torch_ignored: tuple[str, ...] = ()

    def torch_weights(self) -> list:
        """The PyTorch state_dict entry (`pipnet_tf.torch_weights.TorchWeight`) of every
        variable, in PyTorch's order, for backbones that mirror a torchvision model."""
        raise ValueError(f"{type(self).__name__} ({self.name!r}) has no PyTorch counterpart, "
                         "so it cannot load PyTorch weights.")

    @property
    def preprocessing(self) -> keras.layers.Layer:
        """The layer that maps 0..255 RGB to the backbone's input range."""
        return self.layers[1]

    @property
    def image_size(self) -> int | None:
        """The square input size S the backbone was built for (None: any)."""
        return self.input_shape[1]

    def grid(self, image_size: int | None = None) -> tuple[int, int]:
        """(H, W) latent cells at `image_size` (default: the built input size)."""
        size = int(image_size or self.image_size)
        shape = self.compute_output_shape((None, size, size, 3))
        return int(shape[1]), int(shape[2])

    def patch_geometry(self, image_size: int | None = None) -> PatchGeometry:
        """Pixel boxes of the latent cells at `image_size` (default: the built size)."""
        size = int(image_size or self.image_size)
        return self.patch_rule.geometry(size, self.grid(size))

    # === Config ===
    def get_config(self) -> dict:
        return {"name": self.name, "trainable": self.trainable,
                "dtype": keras.dtype_policies.serialize(self.dtype_policy)}

    @classmethod
    def from_config(cls, config: dict):
        """Rebuilds the backbone; its layers get the saved dtype policy (e.g. a
        mixed_bfloat16 run loads as mixed_bfloat16 whatever the global policy)."""
        config = dict(config)
        dtype = config.pop("dtype", None)
        if dtype is None:
            return cls(**config)
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(keras.dtype_policies.get(dtype))
        try:
            return cls(**config)
        finally:
            keras.mixed_precision.set_global_policy(previous)
