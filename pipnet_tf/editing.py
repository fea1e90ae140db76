"""Hand edits of a trained PIP-Net: disabling and re-enabling prototypes.

A disabled prototype's presence is set to 0 before the scoring sheet
(`PIPNet.disabled_prototypes`, part of the model's config); its weights are kept, so
enabling it again restores the model exactly. `trainers.edit` is the command line.

    edited = with_disabled_prototypes(model, [12, 57])
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from pipnet_tf.model import PIPNet


def parse_ids(text: str | None, flag: str) -> list[int]:
    """"12,57" → [12, 57]; empty or None → []. ValueError naming `flag` otherwise."""
    ids = []
    for item in (text or "").replace(" ", "").split(","):
        if not item:
            continue
        if not item.isdigit():
            raise ValueError(f"{flag} takes comma-separated prototype ids such as 12,57; "
                             f"received {text!r}.")
        ids.append(int(item))
    return ids


def resolve_disabled(current: Iterable[int], disable: Iterable[int], enable: Iterable[int],
                     num_prototypes: int) -> tuple[int, ...]:
    """The disabled set after an edit: (`current` ∪ `disable`) − `enable`, sorted.

    Raises:
        ValueError: an id is not a prototype of the model (0 ≤ id < `num_prototypes`), or
            is both disabled and enabled.
    """
    disable, enable = set(int(p) for p in disable), set(int(p) for p in enable)
    unknown = sorted(p for p in disable | enable if not 0 <= p < num_prototypes)
    if unknown:
        raise ValueError(f"Unknown prototype ids {unknown}: the model has {num_prototypes} "
                         f"prototypes, ids 0-{num_prototypes - 1}.")
    both = sorted(disable & enable)
    if both:
        raise ValueError(f"Prototypes {both} are both in --disable and --enable.")
    return tuple(sorted((set(int(p) for p in current) | disable) - enable))


def with_disabled_prototypes(model: PIPNet, disabled: Sequence[int]) -> PIPNet:
    """A new `PIPNet` with `model`'s weights and exactly `disabled` disabled; `model`
    itself is not modified."""
    config = model.get_config()
    config["disabled_prototypes"] = [int(p) for p in disabled]
    edited = PIPNet.from_config(config)
    edited.build((None, model.image_size, model.image_size, 3))
    edited.set_weights(model.get_weights())
    return edited


def abstaining_classes(kernel: np.ndarray, disabled: Iterable[int]) -> list[int]:
    """Classes left without an enabled prototype of positive weight: their score is then
    always 0 (plus the bias, if any). kernel (D, K), the unmasked scoring sheet."""
    weights = np.maximum(np.array(kernel, np.float64), 0.0)
    weights[list(disabled)] = 0.0
    return [int(c) for c in np.flatnonzero(weights.max(axis=0) <= 0.0)]
