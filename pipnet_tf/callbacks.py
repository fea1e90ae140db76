"""Keras callbacks for PIP-Net training: loss-weight schedule, scheduled shrinkage,
NaN guard and atomic checkpoints."""
from __future__ import annotations

import math
from typing import Callable

import keras
from absl import logging

from pipnet_tf import phases
from pipnet_tf.checkpoint import CheckpointManager


class PhaseSchedule(keras.callbacks.Callback):
    """At each epoch start: sets (λ_A, λ_T, λ_C) of the plan (pretraining ramps λ_A
    as e/E) and applies the reference's extra `W <- max(W - shrink, 0)` at phase-2
    epochs that are multiples of 30 and at the last epoch."""

    def __init__(self, plan: list[phases.Stage], shrink_every: int = 30):
        super().__init__()
        self.plan = plan
        self.shrink_epochs = phases.extra_shrink_epochs(plan, shrink_every)

    def on_epoch_begin(self, epoch, logs=None):
        stage = phases.stage_at(self.plan, epoch)
        self.model.set_loss_weights(*phases.loss_weights_for_epoch(stage, epoch))
        if epoch in self.shrink_epochs:
            self.model.classifier.shrink_weights()


class NaNGuard(keras.callbacks.Callback):
    """Stops training with a clear error as soon as a loss term is NaN or infinite,
    before a checkpoint of the broken state can be written."""

    KEYS = ("loss", "L_A", "L_T", "L_C")

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


class AtomicCheckpoint(keras.callbacks.Callback):
    """Writes an atomic checkpoint (weights + optimiser state + plan position) after
    every epoch. `optimizer_variables` returns the variables of the current phase."""

    def __init__(
        self,
        manager: CheckpointManager,
        optimizer_variables: Callable[[], list],
        state: Callable[[int], dict],
    ):
        super().__init__()
        self.manager = manager
        self.optimizer_variables = optimizer_variables
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        completed = epoch + 1
        state = dict(self.state(completed))
        state["logs"] = {k: float(v) for k, v in (logs or {}).items()}
        self.manager.save(completed, self.model, self.optimizer_variables(), state)
        logging.log_every_n_seconds(logging.INFO, "Checkpoint after epoch %d", 60, completed)
