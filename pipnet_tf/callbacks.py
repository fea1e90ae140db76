"""Keras callbacks for PIP-Net training: loss-weight schedule, scheduled shrinkage,
NaN guard and training checkpoints (after every epoch and every N steps)."""
from __future__ import annotations

import math
from typing import Callable

import keras
from absl import logging

from pipnet_tf import phases
from pipnet_tf.checkpoint import Progress


class PhaseSchedule(keras.callbacks.Callback):
    """At each epoch start: sets (λ_A, λ_T, λ_C) of the plan (pretraining ramps λ_A
    as e/E; the background loss's λ_B as `background_pretrain` says,
    `phases.background_scale_for_epoch`) and applies the reference's extra
    `W <- max(W - shrink, 0)` at phase-2 epochs that are multiples of 30 and at the last
    epoch.

    `resumed_epoch`: an epoch resumed from a mid-epoch checkpoint, whose start (and
    shrinkage) the checkpointed weights already went through.
    """

    def __init__(self, plan: list[phases.Stage], shrink_every: int = 30,
                 resumed_epoch: int | None = None, background_pretrain: str = "ramp"):
        super().__init__()
        phases.check_background_pretrain_mode(background_pretrain)
        self.plan = plan
        self.background_pretrain = background_pretrain
        self.shrink_epochs = phases.extra_shrink_epochs(plan, shrink_every)
        self.resumed_epoch = resumed_epoch

    def on_epoch_begin(self, epoch, logs=None):
        stage = phases.stage_at(self.plan, epoch)
        self.model.set_loss_weights(*phases.loss_weights_for_epoch(stage, epoch))
        self.model.scale_background_loss(
            phases.background_scale_for_epoch(stage, epoch, self.background_pretrain))
        if epoch in self.shrink_epochs and epoch != self.resumed_epoch:
            self.model.classifier.shrink_weights()


class NaNGuard(keras.callbacks.Callback):
    """Stops training with a clear error as soon as a loss term is NaN or infinite,
    before a checkpoint of the broken state can be written."""

    KEYS = ("loss", "L_A", "L_T", "L_C", "L_B")

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for key in self.KEYS:
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                raise FloatingPointError(
                    f"Training loss term {key} became {float(value)} at epoch {self._epoch + 1}, "
                    f"batch {batch + 1}. The last checkpoint is untouched; lower the learning "
                    "rates (--lr, --lr_block, --lr_net) or check the input data."
                )


class TrainingCheckpoint(keras.callbacks.Callback):
    """Calls `save(Progress)` after every epoch and, with `every_steps` > 0, after every
    `every_steps` batches within an epoch (the epoch's last batch is left to the
    end-of-epoch save). Put it after `NaNGuard`, so that a broken step is never saved.

    Args:
        save: writes a checkpoint of the current state at the given progress.
        phase: the phase being trained.
        steps_per_epoch: batches per full epoch.
        every_steps: mid-epoch save frequency in batches (0: only at epoch ends).
        first_step: batches of the first epoch already done before this `fit` (a
            resumed epoch), so that saved steps count from the epoch's start.
    """

    def __init__(self, save: Callable[[Progress], object], phase: int, steps_per_epoch: int,
                 every_steps: int = 0, first_step: int = 0):
        super().__init__()
        if every_steps < 0:
            raise ValueError(f"--checkpoint_every_steps must be >= 0, received {every_steps}.")
        self.save = save
        self.phase = phase
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self._offset = first_step
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self._offset + batch + 1
        if self.every_steps and step % self.every_steps == 0 and step < self.steps_per_epoch:
            self.save(Progress(self.phase, self._epoch, step))

    def on_epoch_end(self, epoch, logs=None):
        self._offset = 0
        self.save(Progress(self.phase, epoch + 1, 0))
        logging.log_every_n_seconds(logging.INFO, "Checkpoint after epoch %d", 60, epoch + 1)


class RestoreEpochMetrics(keras.callbacks.Callback):
    """At the start of `epoch` (after Keras has reset the metrics), sets the model's
    metric variables to `values` (a resumed epoch's running means at its checkpoint)."""

    def __init__(self, epoch: int, values: list):
        super().__init__()
        self.epoch = epoch
        self.values = values

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            variables = [v for metric in self.model.metrics for v in metric.variables]
            for variable, value in zip(variables, self.values):
                variable.assign(value)
