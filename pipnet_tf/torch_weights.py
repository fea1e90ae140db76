"""PyTorch state_dict entries ↔ Keras variables: names, layouts, and one strict assignment.

A model that can hold PyTorch weights lists them as `TorchWeight`s, in the order PyTorch's
`state_dict()` lists them: the PyTorch name, the Keras variable it fills (None for entries
that are read but not kept, such as BatchNorm's `num_batches_tracked`), the layout
conversion and the PyTorch shape. Layouts (PyTorch → Keras, channels-last):

| layout | PyTorch | Keras |
|---|---|---|
| conv | (O, I, kh, kw) | (kh, kw, I, O) |
| depthwise | (C, 1, kh, kw) | (kh, kw, C, 1) |
| linear | (out, in) | (in, out) |
| channel | (C,) or (C, 1, 1) (ConvNeXt's layer scale) | (C,) |
| scalar | (1,) or () | () |

`assign_torch_weights` checks every entry first and raises one error listing all missing
keys, unexpected keys and wrong shapes; only a state_dict that fits is assigned.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import keras
import numpy as np

from pipnet_tf.torch_checkpoint import TorchCheckpointError

LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": lambda w: w.transpose(2, 3, 1, 0),
    "depthwise": lambda w: w.transpose(2, 3, 0, 1),
    "linear": lambda w: w.T,
    "channel": lambda w: w.reshape(-1),
    "scalar": lambda w: w.reshape(()),
}
_TORCH_SHAPES: dict[str, Callable[[tuple], tuple]] = {
    "conv": lambda s: (s[3], s[2], s[0], s[1]),
    "depthwise": lambda s: (s[2], s[3], s[0], s[1]),
    "linear": lambda s: (s[1], s[0]),
    "channel": lambda s: tuple(s),
    "scalar": lambda s: (1,),
}
MAX_LISTED = 12  # entries listed per kind of problem


@dataclasses.dataclass(frozen=True)
class TorchWeight:
    """One PyTorch state_dict entry.

    Attributes:
        key: its PyTorch name (relative to the module that lists it).
        variable: the Keras variable it fills, or None (read and checked, not kept).
        layout: one of `LAYOUTS` (unused when `variable` is None).
        shape: its PyTorch shape.
    """

    key: str
    variable: keras.Variable | None
    layout: str
    shape: tuple[int, ...]

    def with_prefix(self, prefix: str) -> "TorchWeight":
        return dataclasses.replace(self, key=prefix + self.key)


def torch_weight(key: str, variable: keras.Variable, layout: str,
                 shape: Sequence[int] | None = None) -> TorchWeight:
    """The entry filling `variable`; its PyTorch shape follows from the layout unless given
    (e.g. ConvNeXt's (C, 1, 1) layer scale)."""
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; use one of {sorted(LAYOUTS)}.")
    keras_shape = tuple(int(n) for n in variable.shape)
    return TorchWeight(key, variable, layout,
                       tuple(shape) if shape is not None else _TORCH_SHAPES[layout](keras_shape))


def batch_norm_weights(prefix: str, layer: keras.layers.BatchNormalization) -> list[TorchWeight]:
    """A PyTorch `BatchNorm2d`'s five entries (`num_batches_tracked` is read, not kept)."""
    return [torch_weight(f"{prefix}.weight", layer.gamma, "channel"),
            torch_weight(f"{prefix}.bias", layer.beta, "channel"),
            torch_weight(f"{prefix}.running_mean", layer.moving_mean, "channel"),
            torch_weight(f"{prefix}.running_var", layer.moving_variance, "channel"),
            TorchWeight(f"{prefix}.num_batches_tracked", None, "scalar", ())]


def layer_weights(prefix: str, layer: keras.layers.Layer, layout: str) -> list[TorchWeight]:
    """A PyTorch conv / linear / norm layer's `weight` (and `bias` if the layer has one)."""
    norm = isinstance(layer, keras.layers.LayerNormalization)
    kernel = layer.gamma if norm else layer.kernel
    entries = [torch_weight(f"{prefix}.weight", kernel, layout)]
    bias = layer.beta if norm else layer.bias
    if bias is not None:
        entries.append(torch_weight(f"{prefix}.bias", bias, "channel"))
    return entries


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", … ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def check_torch_weights(entries: Iterable[TorchWeight], state_dict: Mapping[str, np.ndarray],
                        ignore: Sequence[str] = (), where: str = "the checkpoint") -> None:
    """Raises one `TorchCheckpointError` listing every missing key, unexpected key (not
    matching a regex of `ignore`) and wrong shape; returns None when `state_dict` fits."""
    entries = list(entries)
    expected = {e.key: e for e in entries}
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected
                  and not any(re.fullmatch(pattern, key) for pattern in ignore)]
    shapes = [f"{key}: file {tuple(state_dict[key].shape)}, expected {e.shape}"
              for key, e in expected.items()
              if key in state_dict and tuple(state_dict[key].shape) != e.shape]
    problems = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("wrong shapes", shapes)):
        if items:
            problems.append(f"{len(items)} {title}: {_listing(items)}")
    if problems:
        raise TorchCheckpointError(f"{where} does not fit: " + "; ".join(problems) + ".")


def assign_torch_weights(entries: Iterable[TorchWeight], state_dict: Mapping[str, np.ndarray],
                         ignore: Sequence[str] = (), where: str = "the checkpoint") -> int:
    """Checks (`check_torch_weights`), then fills every entry's variable from `state_dict`,
    converted to Keras's layout and the variable's dtype. Returns the number filled."""
    entries = list(entries)
    check_torch_weights(entries, state_dict, ignore, where)
    filled = 0
    for entry in entries:
        if entry.variable is None:
            continue
        value = LAYOUTS[entry.layout](np.asarray(state_dict[entry.key]))
        entry.variable.assign(np.array(value, dtype=entry.variable.dtype, order="C"))
        filled += 1
    return filled
