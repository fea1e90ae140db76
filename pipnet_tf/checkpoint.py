"""Atomic training checkpoints that a killed run resumes from.

A checkpoint is a directory `epoch-NNNN/` holding the model weights
(`model.weights.h5`), the optimiser state (`optimizer.npz`) and `state.json`. It is
written into a temporary sibling and renamed into place, so a directory named
`epoch-NNNN` is always complete; `latest` names the newest one.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil

import keras
import numpy as np
from absl import logging

from pipnet_tf.io import atomic_output, atomic_write_text, remove_stale_partials

LATEST = "latest"
_PREFIX = "epoch-"


class CheckpointManager:
    """Saves and restores `epoch-NNNN` checkpoints under `directory`, keeping `keep`."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        if keep < 1:
            raise ValueError(f"`keep` must be >= 1, received: {keep}")
        self.directory = pathlib.Path(directory)
        self.keep = keep

    def save(self, epoch: int, model: keras.Model, optimizer_variables: list, state: dict) -> pathlib.Path:
        """Writes the checkpoint after global (1-based) `epoch` completed epochs."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{_PREFIX}{epoch:04d}"
        with atomic_output(final, directory=True) as tmp:
            model.save_weights(str(tmp / "model.weights.h5"))
            np.savez(tmp / "optimizer.npz", *[np.asarray(v.numpy()) for v in optimizer_variables])
            (tmp / "state.json").write_text(json.dumps({**state, "epoch": epoch}, indent=2))
        atomic_write_text(self.directory / LATEST, final.name + "\n")
        self._prune()
        logging.info("Saved checkpoint %s", final)
        return final

    def _complete(self) -> list[pathlib.Path]:
        if not self.directory.is_dir():
            return []
        return sorted(
            p for p in self.directory.glob(f"{_PREFIX}*") if (p / "state.json").is_file()
        )

    def _prune(self) -> None:
        for old in self._complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for old in self._complete():
            remove_stale_partials(old)

    def latest(self) -> pathlib.Path | None:
        """The newest complete checkpoint, or None."""
        pointer = self.directory / LATEST
        if pointer.is_file():
            candidate = self.directory / pointer.read_text().strip()
            if (candidate / "state.json").is_file():
                return candidate
        complete = self._complete()
        return complete[-1] if complete else None

    @staticmethod
    def read_state(checkpoint: pathlib.Path) -> dict:
        return json.loads((checkpoint / "state.json").read_text())

    @staticmethod
    def restore(checkpoint: pathlib.Path, model: keras.Model, optimizer_variables: list) -> dict:
        """Loads weights and optimiser variables saved by `save`; returns the state."""
        model.load_weights(str(checkpoint / "model.weights.h5"))
        with np.load(checkpoint / "optimizer.npz") as saved:
            arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        if len(arrays) != len(optimizer_variables):
            raise ValueError(
                f"Checkpoint {checkpoint} holds {len(arrays)} optimizer variables, the current "
                f"phase has {len(optimizer_variables)}: was it written by a different config?"
            )
        for variable, value in zip(optimizer_variables, arrays):
            if tuple(variable.shape) != value.shape:
                raise ValueError(
                    f"Checkpoint {checkpoint}: optimizer variable {getattr(variable, 'path', variable.name)} "
                    f"has shape {tuple(variable.shape)}, saved {value.shape}."
                )
            variable.assign(value)
        return CheckpointManager.read_state(checkpoint)
