"""Optimisers and learning-rate schedules of PIP-Net's two phases (SPEC §3).

One AdamW per parameter group, so that each group has its own learning rate and, as in
PyTorch, Adam's bias correction counts only the steps in which the group was updated.
The network groups share one cosine schedule driven by a common step counter (the
"net clock"), which advances only in steps that update the network, exactly like the
reference's `CosineAnnealingLR` that is not stepped in classifier-only epochs.
"""
from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class LearningRates:
    """Base learning rates (reference flags `lr`, `lr_block`, `lr_net`, `weight_decay`)."""

    lr: float = 0.05
    lr_block: float = 5e-4
    lr_net: float = 5e-4
    weight_decay: float = 0.0
    classifier_min_lr: float = 1e-3

    def for_group(self, group: str) -> float:
        return {
            "backbone": self.lr_net,
            "freeze": self.lr_block,
            "train": self.lr_block,
            "add_on": 10.0 * self.lr_block,
        }[group]


class ClockedSchedule:
    """A learning rate read from a `LearningRateSchedule` at a shared step counter.

    Called with no arguments (Keras optimisers accept such callables).
    """

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, clock):
        self.schedule = schedule
        self.clock = clock

    def __call__(self):
        return self.schedule(self.clock)


@dataclasses.dataclass
class PhaseOptimizers:
    """The optimisers of one phase: `groups` maps group name → (optimizer, variables)."""

    groups: dict[str, tuple[keras.optimizers.Optimizer, list]]
    clock: tf.Variable

    def as_compile_args(self) -> list[tuple[keras.optimizers.Optimizer, list]]:
        return [pair for pair in self.groups.values() if pair[1]]

    def build(self) -> None:
        """Creates every optimiser's slots for all its variables (frozen ones included),
        so that they can be saved and restored before the variables first train."""
        for optimizer, variables in self.groups.values():
            if variables and not optimizer.built:
                optimizer.build(variables)

    def variables(self) -> list:
        """Everything to checkpoint: the clock and each optimiser's variables."""
        out = [self.clock]
        for name in sorted(self.groups):
            optimizer, variables = self.groups[name]
            if variables:
                out.extend(optimizer.variables)
        return out


def _adamw(learning_rate, weight_decay: float, name: str) -> keras.optimizers.AdamW:
    # PyTorch's AdamW defaults: betas 0.9/0.999, eps 1e-8.
    return keras.optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        name=name,
    )


def make_phase_optimizers(
    groups: dict[str, list[keras.layers.Layer]],
    phase: int,
    rates: LearningRates,
    steps_per_epoch: int,
    epochs: int,
) -> PhaseOptimizers:
    """Fresh optimisers for `phase` (1 = pretraining, 2 = classification).

    Network groups: AdamW with cosine annealing from the group's rate to
    `eta_min` (`lr_block/100` in phase 1, `lr_net/100` in phase 2) over
    `steps_per_epoch·epochs` network steps. Classifier (phase 2 only): AdamW at `lr`
    with cosine warm restarts every 5 epochs (10 when epochs > 30) down to
    `classifier_min_lr`; no weight decay.
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(
            f"steps_per_epoch and epochs must be >= 1, received {steps_per_epoch}, {epochs}."
        )
    clock = tf.Variable(0, dtype=tf.int64, trainable=False, name=f"net_clock_phase{phase}")
    eta_min = (rates.lr_block if phase == 1 else rates.lr_net) / 100.0
    total = steps_per_epoch * epochs
    out: dict[str, tuple[keras.optimizers.Optimizer, list]] = {}
    for group in ("backbone", "freeze", "train", "add_on"):
        base = rates.for_group(group)
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=base, decay_steps=total, alpha=min(1.0, eta_min / base)
        )
        variables = _trainable_candidates(groups.get(group, []))
        out[group] = (
            _adamw(ClockedSchedule(schedule, clock), rates.weight_decay, f"adamw_{group}"),
            variables,
        )
    if phase == 2:
        restart = 5 if epochs <= 30 else 10
        schedule = keras.optimizers.schedules.CosineDecayRestarts(
            initial_learning_rate=rates.lr,
            first_decay_steps=restart * steps_per_epoch,
            t_mul=1.0,
            m_mul=1.0,
            alpha=min(1.0, rates.classifier_min_lr / rates.lr),
        )
        out["classifier"] = (
            _adamw(schedule, 0.0, "adamw_classifier"),
            _trainable_candidates(groups.get("classifier", [])),
        )
    return PhaseOptimizers(out, clock)


def _trainable_candidates(layers: list[keras.layers.Layer]) -> list:
    """Variables of `layers` that an optimiser may update (excludes BatchNorm moving
    statistics and the scoring sheet's multiplier, which are never trained)."""
    candidates = []
    for layer in layers:
        was = layer.trainable
        layer.trainable = True
        candidates.extend(layer.trainable_weights)
        layer.trainable = was
    return candidates
