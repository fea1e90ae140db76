"""Optimisers and learning-rate schedules of PIP-Net's two phases (SPEC §3).

One AdamW per parameter group, so that each group has its own learning rate and, as in
PyTorch, Adam's bias correction counts only the steps in which the group was updated.
The network groups share one cosine schedule driven by a common step counter (the
"net clock"), which advances only in steps that update the network, exactly like the
reference's `CosineAnnealingLR` that is not stepped in classifier-only epochs.

Each group's optimiser is `FusedAdamW` (TF's fused Adam kernel; fastest on CPU) or
Keras's `AdamW` (`fused=False`: the stock ops, used on GPUs), optionally wrapped in
Keras's `LossScaleOptimizer` for float16 training.
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

    def active(self) -> dict[str, keras.optimizers.Optimizer]:
        """Group name → optimiser, for the groups that have variables (what a training
        checkpoint holds)."""
        return {name: opt for name, (opt, variables) in self.groups.items() if variables}

    def build(self) -> None:
        """Creates every optimiser's slots for all its variables (frozen ones included),
        so that they can be saved and restored before the variables first train."""
        for optimizer, variables in self.groups.values():
            if variables and not optimizer.built:
                optimizer.build(variables)



@keras.saving.register_keras_serializable(package="pipnet_tf")
class FusedAdamW(keras.optimizers.AdamW):
    """Keras's `AdamW` (same slots, same update, same config) whose per-variable Adam step
    is TensorFlow's single fused `ResourceApplyAdam` kernel instead of ~12 separate
    elementwise ops: about 3x less time in the optimiser of a ConvNeXt training step on CPU
    (BUILD_NOTES, "Real backbones"). The update is Keras's:
    m ← m + (g − m)(1 − β1), v ← v + (g² − v)(1 − β2),
    θ ← θ − lr·sqrt(1 − β2ᵗ)/(1 − β1ᵗ) · m / (sqrt(v) + ε); decoupled weight decay is
    applied by Keras before it. Falls back to Keras's step for AMSGrad, sparse gradients
    and non-TensorFlow backends.
    """

    def _apply_weight_decay(self, variables):
        # θ − θ·0·lr is θ: skip the pass over every weight (the reference's default is 0).
        if isinstance(self.weight_decay, (int, float)) and self.weight_decay == 0:
            return
        super()._apply_weight_decay(variables)

    def update_step(self, gradient, variable, learning_rate):
        if (self.amsgrad or keras.backend.backend() != "tensorflow"
                or isinstance(gradient, tf.IndexedSlices) or not hasattr(variable, "handle")):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        m = _on_device_of(self._momentums[index], variable)
        v = _on_device_of(self._velocities[index], variable)
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=m.handle, v=v.handle,
            beta1_power=tf.pow(beta_1, local_step), beta2_power=tf.pow(beta_2, local_step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype),
            use_locking=False, use_nesterov=False)


def all_finite_or_none(grads: list) -> tuple[list, tf.Tensor]:
    """(grads, finite): `finite` is whether every gradient on every replica is finite.

    For loss-scaled groups (`make_phase_optimizers(loss_scale=True)`): each group's
    `LossScaleOptimizer` checks only its own gradients; when any is not finite, every
    gradient is made NaN so that all of them skip the step and halve their scale together
    (their scales stay equal, so `PIPNet.train_step` scales the loss by the first's)."""
    ctx = tf.distribute.get_replica_context()
    bad = tf.add_n([tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32))
                    for g in grads if g is not None])
    finite = tf.equal(ctx.all_reduce(tf.distribute.ReduceOp.SUM, bad), 0.0)
    return [g if g is None else tf.where(finite, g, tf.constant(float("nan"), g.dtype))
            for g in grads], finite


def _on_device_of(slot, variable) -> tf.Variable:
    """The tf.Variable of a Keras optimiser slot that lives with `variable` (under a
    `tf.distribute` strategy `update_step` sees one replica's component at a time)."""
    value = slot.value if isinstance(slot, keras.Variable) else slot
    for component in getattr(value, "values", None) or ():
        if component.device == variable.device:
            return component
    return value


def _adamw(learning_rate, weight_decay: float, name: str, fused: bool,
           loss_scale: bool) -> keras.optimizers.Optimizer:
    # PyTorch's AdamW defaults: betas 0.9/0.999, eps 1e-8.
    optimizer = (FusedAdamW if fused else keras.optimizers.AdamW)(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        name=name,
    )
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, name=f"loss_scale_{name}")
    return optimizer


def make_phase_optimizers(
    groups: dict[str, list[keras.layers.Layer]],
    phase: int,
    rates: LearningRates,
    steps_per_epoch: int,
    epochs: int,
    fused: bool = True,
    loss_scale: bool = False,
) -> PhaseOptimizers:
    """Fresh optimisers for `phase` (1 = pretraining, 2 = classification).

    Network groups: AdamW with cosine annealing from the group's rate to
    `eta_min` (`lr_block/100` in phase 1, `lr_net/100` in phase 2) over
    `steps_per_epoch·epochs` network steps. Classifier (phase 2 only): AdamW at `lr`
    with cosine warm restarts every 5 epochs (10 when epochs > 30) down to
    `classifier_min_lr`; no weight decay.

    `fused`: `FusedAdamW` (True) or Keras's `AdamW`. `loss_scale`: each optimiser wrapped
    in Keras's dynamic `LossScaleOptimizer` (float16 training; `PIPNet.train_step` makes
    them skip or apply a step together).
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
            _adamw(ClockedSchedule(schedule, clock), rates.weight_decay, f"adamw_{group}",
                   fused, loss_scale),
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
            _adamw(schedule, 0.0, "adamw_classifier", fused, loss_scale),
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
