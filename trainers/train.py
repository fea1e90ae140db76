"""Runs PIP-Net's training plan with `compile`/`fit`, one call per stage, resuming
from the newest atomic checkpoint of the run directory."""
from __future__ import annotations

import pathlib

import keras
import tensorflow as tf
from absl import logging

from pipnet_tf import callbacks as pipnet_callbacks
from pipnet_tf import phases
from pipnet_tf.checkpoint import CheckpointManager
from pipnet_tf.model import PIPNet
from pipnet_tf.optimization import LearningRates, PhaseOptimizers, make_phase_optimizers

CHECKPOINT_DIR = "checkpoints"
CSV_LOG = "training_log.csv"


class PlanRunner:
    """Trains `model` through `plan` on (view1, view2, label) datasets.

    Args:
        datasets: phase (1 or 2) → (dataset, steps per epoch).
        strategy: the `tf.distribute` strategy the model was built under.
        extra_callbacks: appended to every `fit` call.
    """

    def __init__(
        self,
        model: PIPNet,
        plan: list[phases.Stage],
        datasets: dict[int, tuple[tf.data.Dataset, int]],
        rates: LearningRates,
        run_dir: str | pathlib.Path,
        strategy: tf.distribute.Strategy | None = None,
        checkpoints_to_keep: int = 2,
        extra_callbacks: list[keras.callbacks.Callback] = (),
        verbose: int | str = "auto",
    ):
        self.model = model
        self.plan = plan
        self.datasets = datasets
        self.rates = rates
        self.run_dir = pathlib.Path(run_dir)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.manager = CheckpointManager(self.run_dir / CHECKPOINT_DIR, keep=checkpoints_to_keep)
        self.extra_callbacks = list(extra_callbacks)
        self.verbose = verbose
        self._optimizers: dict[int, PhaseOptimizers] = {}
        self._current_phase = plan[0].phase if plan else 1

    @property
    def total_epochs(self) -> int:
        return self.plan[-1].end_epoch if self.plan else 0

    def optimizers(self, phase: int) -> PhaseOptimizers:
        """The phase's optimisers, created (fresh Adam state, SPEC §3) on first use."""
        if phase not in self._optimizers:
            epochs = sum(s.epochs for s in self.plan if s.phase == phase)
            with self.strategy.scope():
                opts = make_phase_optimizers(
                    self.model.layer_groups(), phase, self.rates, self.datasets[phase][1], epochs
                )
                opts.build()
            self._optimizers[phase] = opts
        return self._optimizers[phase]

    def resume(self) -> int:
        """Restores the newest checkpoint, if any; returns the number of finished epochs."""
        latest = self.manager.latest()
        if latest is None:
            return 0
        state = self.manager.read_state(latest)
        phase = int(state["phase"])
        self.manager.restore(latest, self.model, self.optimizers(phase).variables())
        logging.info("Resumed from %s (%d of %d epochs done)", latest, state["epoch"], self.total_epochs)
        return int(state["epoch"])

    def run(self) -> int:
        """Trains the remaining epochs; returns the number of epochs run in this call."""
        start = self.resume()
        for stage in self.plan:
            if stage.end_epoch <= start:
                continue
            self._run_stage(stage, max(start, stage.first_epoch))
        return self.total_epochs - start

    def _run_stage(self, stage: phases.Stage, initial_epoch: int) -> None:
        opts = self.optimizers(stage.phase)
        self.model.set_trainable_groups(stage.trainable_groups)
        self.model.compile(opts.as_compile_args(), net_clock=opts.clock)
        logging.info("Stage %s: epochs %d-%d, training %s", stage.name, initial_epoch + 1,
                     stage.end_epoch, ", ".join(stage.trainable_groups))
        checkpoint = pipnet_callbacks.AtomicCheckpoint(
            self.manager,
            optimizer_variables=opts.variables,
            state=lambda epoch: {"phase": stage.phase, "stage": stage.name},
        )
        callbacks = [
            pipnet_callbacks.PhaseSchedule(self.plan),
            pipnet_callbacks.NaNGuard(),
            checkpoint,
            keras.callbacks.CSVLogger(str(self.run_dir / CSV_LOG), append=True),
            keras.callbacks.TensorBoard(str(self.run_dir / "tensorboard"), update_freq="epoch"),
            *self.extra_callbacks,
        ]
        dataset, _ = self.datasets[stage.phase]
        self.model.fit(
            dataset,
            initial_epoch=initial_epoch,
            epochs=stage.end_epoch,
            callbacks=callbacks,
            shuffle=False,
            verbose=self.verbose,
        )
