"""Object-based training checkpoints that a killed run resumes from exactly.

A checkpoint is a `tf.train.Checkpoint` written by `tf.train.CheckpointManager` into
`checkpoints/ckpt-N.{index,data-…}` (N grows with every save; the manager keeps the newest
`keep` and its `checkpoint` file names them). It holds, each under its own name:

    model       every variable of the PIPNet (weights, BatchNorm statistics, loss weights);
    optimizers  the current phase's optimisers by group name: slots, iteration counts
                (and loss scales when training in float16);
    net_clock   the phase's network step counter (drives the cosine schedules);
    rng         the state of every Keras `SeedGenerator` of the model (stochastic
                depth), by layer;
    metrics     the epoch's running means, so that a resumed epoch logs what an
                uninterrupted one would;
    progress    phase, epoch (0-based, the one in progress) and step (its batches done).

The data position is (epoch, step): the training input is a function of (seed, epoch)
(`pipnet_tf.data.pipeline.TwoViewSource`), so a resumed run rebuilds it and skips `step`
batches; no shuffle buffer is saved.

TensorFlow writes the files of a checkpoint under temporary names and then updates the
`checkpoint` file atomically, so a save interrupted by a kill is never the newest one. A
newest checkpoint that is damaged afterwards (a truncated file, a bad disk) fails to
restore; `restore_latest` then warns naming it and falls back to the one before.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Callable

import keras
import tensorflow as tf
from absl import logging

PREFIX = "ckpt"
_NUMBER = re.compile(rf"^{PREFIX}-(\d+)\.index$")
_PROGRESS_KEYS = ("phase", "epoch", "step")


class CheckpointError(ValueError):
    """No checkpoint of a run directory can be restored (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where training stands: `step` batches of global 0-based `epoch` are done, in
    `phase` (1 or 2). After a whole epoch e: (phase, e + 1, 0)."""

    phase: int
    epoch: int
    step: int = 0


def seed_generator_states(model: keras.Model) -> dict[str, keras.Variable]:
    """The state variable of every `SeedGenerator` in `model`'s layers, keyed by the
    path of layer names that owns it (stable across processes, unlike the generators'
    own auto-numbered names)."""
    states = {}

    def walk(layer: keras.layers.Layer, prefix: str) -> None:
        children = getattr(layer, "layers", None) or []
        for child in children:
            walk(child, f"{prefix}.{child.name}" if prefix else child.name)
        if not children:
            weights = {id(v) for v in layer.weights}
            extra = [v for v in layer.variables if id(v) not in weights]
            for i, variable in enumerate(extra):
                states[f"{prefix}.{i}"] = variable

    walk(model, "")
    return states


def metric_variables(model: keras.Model) -> dict[str, list]:
    """The variables of `model.metrics` (running means), keyed by metric name."""
    return {metric.name: list(metric.variables) for metric in model.metrics}


def training_objects(model: keras.Model, optimizers: dict[str, keras.optimizers.Optimizer],
                     net_clock: tf.Variable) -> dict:
    """What a checkpoint holds besides `progress` (see the module docstring)."""
    return {"model": model, "optimizers": dict(optimizers), "net_clock": net_clock,
            "rng": seed_generator_states(model), "metrics": metric_variables(model)}


class TrainingCheckpoints:
    """Saves and restores the training checkpoints of one run under `directory`.

    Args:
        directory: where `ckpt-N` files go (a worker that is not the chief passes a
            temporary directory: every worker must save, only the chief's are kept).
        keep: how many checkpoints to keep (≥ 2 leaves one to fall back to).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        if keep < 1:
            raise ValueError(f"`keep` must be >= 1, received: {keep}")
        self.directory = pathlib.Path(directory)
        self.keep = int(keep)
        numbers = [n for n, _ in self._numbered()]
        self._next_number = (max(numbers) + 1) if numbers else 1
        # Created here, once: under a tf.distribute strategy's scope (where Keras runs
        # callbacks) new variables would be distributed ones.
        self._progress = {key: tf.Variable(0, dtype=tf.int64, trainable=False, name=key)
                          for key in _PROGRESS_KEYS}

    def _numbered(self) -> list[tuple[int, str]]:
        """(N, prefix path) of every checkpoint whose index file exists, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NUMBER.match(path.name)
            if match:
                number = int(match.group(1))
                found.append((number, str(self.directory / f"{PREFIX}-{number}")))
        return sorted(found)

    def candidates(self) -> list[str]:
        """Checkpoint prefixes, newest first."""
        return [path for _, path in reversed(self._numbered())]

    def legacy_checkpoints(self) -> list[pathlib.Path]:
        """`epoch-NNNN/` directories of pipnet-tf before object-based checkpoints."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("epoch-*") if p.is_dir())

    def save(self, objects: dict, progress: Progress) -> str:
        """Writes `objects` (see `training_objects`) and `progress`; returns the prefix."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for key in _PROGRESS_KEYS:
            self._progress[key].assign(getattr(progress, key))
        checkpoint = tf.train.Checkpoint(**objects, progress=self._progress)
        manager = tf.train.CheckpointManager(checkpoint, str(self.directory),
                                             max_to_keep=self.keep, checkpoint_name=PREFIX)
        path = manager.save(checkpoint_number=self._next_number)
        self._next_number += 1
        logging.info("Saved checkpoint %s (phase %d, epoch %d, step %d)", path,
                     progress.phase, progress.epoch + 1, progress.step)
        return path

    @staticmethod
    def read_progress(path: str) -> Progress:
        """The progress stored in checkpoint `path`, without restoring anything."""
        reader = tf.train.load_checkpoint(path)
        return Progress(*(int(reader.get_tensor(f"progress/{key}/.ATTRIBUTES/VARIABLE_VALUE"))
                          for key in _PROGRESS_KEYS))

    def restore(self, path: str, objects: dict) -> Progress:
        """Restores `objects` from checkpoint `path`; every object must match."""
        status = tf.train.Checkpoint(**objects, progress=self._progress).read(path)
        status.assert_existing_objects_matched().expect_partial()  # save_counter: unused
        return Progress(*(int(self._progress[key].numpy()) for key in _PROGRESS_KEYS))

    def restore_latest(self, objects_for_phase: Callable[[int], dict]
                       ) -> tuple[Progress, str] | None:
        """Restores the newest checkpoint that can be read, falling back to older ones
        with a warning naming each one that could not; None when there is none.

        `objects_for_phase(phase)` gives the objects to restore into for a checkpoint of
        that phase.

        Raises:
            CheckpointError: checkpoints exist but none can be restored, or the directory
                holds checkpoints of an older pipnet-tf.
        """
        candidates = self.candidates()
        if not candidates:
            legacy = self.legacy_checkpoints()
            if legacy:
                raise CheckpointError(
                    f"{str(self.directory)!r} holds checkpoints of an older pipnet-tf "
                    f"({legacy[-1].name}/ with optimizer.npz), which this version cannot "
                    "resume. Use a new --log_dir, or delete that checkpoints directory to "
                    "train this run again from the start.")
            return None
        failures = []
        for path in candidates:
            try:
                progress = self.read_progress(path)
                restored = self.restore(path, objects_for_phase(progress.phase))
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint: try the previous
                first_line = str(error).splitlines()[0] if str(error) else ""
                reason = f"{type(error).__name__}: {first_line}"
                failures.append(f"{path}: {reason}")
                logging.warning("Checkpoint %s cannot be restored (%s); falling back to the "
                                "previous one.", path, reason)
                continue
            logging.info("Restored checkpoint %s", path)
            return restored, path
        raise CheckpointError(
            f"None of the {len(candidates)} checkpoints in {str(self.directory)!r} can be "
            "restored: " + "; ".join(failures) + ". Delete that directory to train this run "
            "again from the start, or use a new --log_dir.")
