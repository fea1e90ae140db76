"""Runs PIP-Net's training plan with `compile`/`fit`, one call per stage, resuming
exactly from the newest readable checkpoint of the run (`pipnet_tf.checkpoint`)."""
from __future__ import annotations

import pathlib

import keras
import tensorflow as tf
from absl import logging

from pipnet_tf import callbacks as pipnet_callbacks
from pipnet_tf import phases
from pipnet_tf.checkpoint import Progress, TrainingCheckpoints, training_objects
from pipnet_tf.runs import CHECKPOINT_DIR
from pipnet_tf.data.pipeline import TwoViewSource
from pipnet_tf.model import PIPNet
from pipnet_tf.optimization import LearningRates, PhaseOptimizers, make_phase_optimizers

CSV_LOG = "training_log.csv"


class PlanRunner:
    """Trains `model` through `plan` on the two phases' training inputs.

    Args:
        sources: phase (1 or 2) → its `TwoViewSource` (epoch-indexed batches).
        run_dir: where this process writes checkpoints, the CSV log and TensorBoard
            events (a temporary directory on workers that are not the chief).
        restore_dir: the run directory whose checkpoints are resumed (the chief's;
            default `run_dir`).
        strategy: the `tf.distribute` strategy the model was built under.
        checkpoint_every_steps: also save every that many batches within an epoch.
        fused_optimizer: `FusedAdamW` (True) or Keras's `AdamW` per group.
        loss_scale: wrap every optimiser in Keras's `LossScaleOptimizer` (float16).
        extra_callbacks: appended to every `fit` call.
        background_pretrain: λ_B in pretraining (`--background_loss_pretrain`; PhaseSchedule).
    """

    def __init__(
        self,
        model: PIPNet,
        plan: list[phases.Stage],
        sources: dict[int, TwoViewSource],
        rates: LearningRates,
        run_dir: str | pathlib.Path,
        strategy: tf.distribute.Strategy | None = None,
        checkpoints_to_keep: int = 2,
        checkpoint_every_steps: int = 0,
        restore_dir: str | pathlib.Path | None = None,
        fused_optimizer: bool = True,
        loss_scale: bool = False,
        extra_callbacks: list[keras.callbacks.Callback] = (),
        verbose: int | str = "auto",
        background_pretrain: str = "ramp",
    ):
        if checkpoint_every_steps < 0:
            raise ValueError(
                f"--checkpoint_every_steps must be >= 0, received {checkpoint_every_steps}.")
        self.model = model
        self.plan = plan
        self.sources = sources
        self.rates = rates
        self.run_dir = pathlib.Path(run_dir)
        self.strategy = strategy or tf.distribute.get_strategy()
        keep = checkpoints_to_keep
        self.checkpoints = TrainingCheckpoints(self.run_dir / CHECKPOINT_DIR, keep=keep)
        restore_dir = pathlib.Path(restore_dir) if restore_dir is not None else self.run_dir
        self.restore_from = (self.checkpoints if restore_dir == self.run_dir else
                             TrainingCheckpoints(restore_dir / CHECKPOINT_DIR, keep=keep))
        self.checkpoint_every_steps = int(checkpoint_every_steps)
        self.fused_optimizer = fused_optimizer
        self.loss_scale = loss_scale
        self.extra_callbacks = list(extra_callbacks)
        self.verbose = verbose
        self.background_pretrain = background_pretrain
        self._optimizers: dict[int, PhaseOptimizers] = {}
        self._resumed_metrics: list | None = None

    @property
    def total_epochs(self) -> int:
        return self.plan[-1].end_epoch if self.plan else 0

    def optimizers(self, phase: int) -> PhaseOptimizers:
        """The phase's optimisers, created (fresh Adam state, SPEC §3) on first use."""
        if phase not in self._optimizers:
            epochs = sum(s.epochs for s in self.plan if s.phase == phase)
            with self.strategy.scope():
                opts = make_phase_optimizers(
                    self.model.layer_groups(), phase, self.rates,
                    self.sources[phase].steps_per_epoch, epochs,
                    fused=self.fused_optimizer, loss_scale=self.loss_scale)
                opts.build()
            self._optimizers[phase] = opts
        return self._optimizers[phase]

    def _objects(self, phase: int) -> dict:
        opts = self.optimizers(phase)
        return training_objects(self.model, opts.active(), opts.clock)

    def _save(self, progress: Progress) -> None:
        self.checkpoints.save(self._objects(progress.phase), progress)

    def resume(self) -> Progress:
        """Restores the newest readable checkpoint, if any; returns where to continue."""
        first_phase = self.plan[0].phase if self.plan else 1
        restored = self.restore_from.restore_latest(self._objects)
        if restored is None:
            return Progress(first_phase, 0, 0)
        progress, path = restored
        if progress.step:
            self._resumed_metrics = [v.numpy() for m in self.model.metrics for v in m.variables]
        logging.info("Resumed from %s: epoch %d of %d, %d batches of it done", path,
                     progress.epoch + 1, self.total_epochs, progress.step)
        return progress

    def run(self) -> int:
        """Trains the rest of the plan; returns the number of epochs (whole or resumed)
        run in this call."""
        start = self.resume()
        for stage in self.plan:
            if stage.end_epoch <= start.epoch:
                continue
            first = max(start.epoch, stage.first_epoch)
            self._run_stage(stage, first, start.step if first == start.epoch else 0)
        return max(0, self.total_epochs - start.epoch)

    def _run_stage(self, stage: phases.Stage, first: int, skip: int) -> None:
        opts = self.optimizers(stage.phase)
        self.model.set_trainable_groups(stage.trainable_groups)
        self.model.compile(opts.as_compile_args(), net_clock=opts.clock)
        logging.info("Stage %s: epochs %d-%d, training %s", stage.name, first + 1,
                     stage.end_epoch, ", ".join(stage.trainable_groups))
        source = self.sources[stage.phase]
        steps = source.steps_per_epoch
        callbacks = [
            pipnet_callbacks.PhaseSchedule(
                self.plan, resumed_epoch=first if skip else None,
                background_pretrain=self.background_pretrain),
            pipnet_callbacks.NaNGuard(),
            pipnet_callbacks.TrainingCheckpoint(self._save, stage.phase, steps,
                                                self.checkpoint_every_steps, first_step=skip),
            keras.callbacks.CSVLogger(str(self.run_dir / CSV_LOG), append=True),
            keras.callbacks.TensorBoard(str(self.run_dir / "tensorboard"), update_freq="epoch"),
            *self.extra_callbacks,
        ]
        if skip:  # finish the interrupted epoch with its running means restored
            restore = pipnet_callbacks.RestoreEpochMetrics(first, self._resumed_metrics or [])
            self._fit(source, first, first + 1, skip, steps - skip, [restore, *callbacks])
            first += 1
        if first < stage.end_epoch:
            self._fit(source, first, stage.end_epoch, 0, steps, callbacks)

    def _fit(self, source: TwoViewSource, first: int, end: int, skip: int, steps: int,
             callbacks: list) -> None:
        self.model.fit(
            source.distributed_epochs(self.strategy, first, end, skip),
            initial_epoch=first,
            epochs=end,
            steps_per_epoch=steps,
            callbacks=callbacks,
            shuffle=False,
            verbose=self.verbose,
        )
