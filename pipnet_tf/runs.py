"""A run directory: what `trainers.run --log_dir=RUN_DIR` writes, opened in one place.

    run = open_run("runs/demo")
    run.model, run.config, run.class_names, run.image_size

`config.json` (a `TrainConfig`), `model.keras` and `class_names.txt` keep their names and
keys, since users and scripts read them. The image size is the model's input size (one
source of truth); `config.json`'s `image_size` is written for people and scripts.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import zipfile

import keras
from absl import logging

from pipnet_tf.config import TrainConfig

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
CLASS_NAMES_FILE = "class_names.txt"
METRICS_FILE = "metrics.json"
SCORING_SHEET_FILE = "scoring_sheet.json"
CHECKPOINT_DIR = "checkpoints"
# TrainConfig fields that change the model's variables or config: a run directory holding
# a model or checkpoints is only resumed with the same values.
ARCHITECTURE_FIELDS = ("net", "image_size", "num_features", "bias", "backbone_width",
                       "backbone_depth")


class RunDirectoryError(ValueError):
    """RUN_DIR is not a finished run directory, or one of its files cannot be read."""


@dataclasses.dataclass
class Run:
    """An opened run directory."""

    run_dir: pathlib.Path
    model: keras.Model
    config: TrainConfig
    class_names: list[str]
    image_size: int


def read_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The run's `config.json` as a `TrainConfig`."""
    path = pathlib.Path(run_dir) / CONFIG_FILE
    try:
        return TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise RunDirectoryError(f"No {CONFIG_FILE} in run directory {str(run_dir)!r}.") from None
    except (ValueError, TypeError) as e:
        raise RunDirectoryError(f"{str(path)!r} is not a valid run config: {e}") from e


def read_class_names(run_dir: str | os.PathLike, num_classes: int) -> list[str]:
    """`class_names.txt` (line k names score column k), or class_0… with a warning."""
    path = pathlib.Path(run_dir) / CLASS_NAMES_FILE
    if path.is_file():
        names = path.read_text(encoding="utf-8").splitlines()
        if len(names) != num_classes:
            raise RunDirectoryError(f"{str(path)!r} names {len(names)} classes; the model has "
                                    f"{num_classes}.")
        return names
    logging.warning("No %s in %s: naming the classes class_0 … class_%d", CLASS_NAMES_FILE,
                    run_dir, num_classes - 1)
    return [f"class_{k}" for k in range(num_classes)]


def load_model(path: str | os.PathLike) -> keras.Model:
    """`keras.saving.load_model` with a clear error for a missing or damaged file."""
    import pipnet_tf.model  # noqa: F401  (registers the custom layers)

    path = pathlib.Path(path)
    if not path.is_file():
        raise RunDirectoryError(
            f"No {path.name} in run directory {str(path.parent)!r}: pass the --log_dir of a "
            "finished `python -m trainers.run`.")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        # Keras reports such a file as "File not found".
        raise RunDirectoryError(
            f"{str(path)!r} is damaged: not a complete .keras (zip) file, {path.stat().st_size} "
            "bytes (truncated? a copy or a run that was interrupted while saving).")
    try:
        return keras.saving.load_model(str(path))
    except Exception as e:  # noqa: BLE001 - zip, h5 and config errors all mean "unreadable"
        raise RunDirectoryError(
            f"{str(path)!r} cannot be loaded as a Keras model (truncated or not a .keras "
            f"file?): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def open_run(run_dir: str | os.PathLike, cache_dir: str | None = None) -> Run:
    """Opens a finished run directory.

    Args:
        cache_dir: the cache of generated and converted images to use instead of the
            one in `config.json` (`run.config.cache_dir` is then `cache_dir`).

    Raises:
        RunDirectoryError: `run_dir` is missing, not a run directory, or its files are
            damaged (the message names the file).
    """
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirectoryError(f"Run directory {str(run_dir)!r} does not exist.")
    config = read_config(run_dir)
    model = load_model(run_dir / MODEL_FILE)
    image_size = int(model.backbone.input_shape[1])
    if config.image_size != image_size:
        logging.warning("%s says image_size=%d but the model takes %d px; using %d.",
                        run_dir / CONFIG_FILE, config.image_size, image_size, image_size)
        config = config.replace(image_size=image_size)
    if cache_dir:
        config = config.replace(cache_dir=str(cache_dir))
    return Run(run_dir, model, config, read_class_names(run_dir, model.num_classes), image_size)


def _has_trained_state(run_dir: pathlib.Path) -> bool:
    checkpoints = run_dir / CHECKPOINT_DIR
    return (run_dir / MODEL_FILE).exists() or (
        checkpoints.is_dir() and any(checkpoints.iterdir()))


def check_same_architecture(run_dir: str | os.PathLike, config: TrainConfig) -> None:
    """Refuses to resume a run with flags that change its architecture.

    When `run_dir` holds a model or checkpoints, every field of `ARCHITECTURE_FIELDS` in
    `config` must equal the run's `config.json`. Reads files only; writes nothing.

    Raises:
        RunDirectoryError: naming every differing flag with both values.
    """
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not _has_trained_state(run_dir):
        return
    previous = read_config(run_dir)
    differing = [f"--{name}={getattr(config, name)!r} (the run has "
                 f"{getattr(previous, name)!r})" for name in ARCHITECTURE_FIELDS
                 if getattr(config, name) != getattr(previous, name)]
    if differing:
        raise RunDirectoryError(
            f"--log_dir={str(run_dir)!r} holds a run with another architecture: "
            f"{', '.join(differing)}. Resume it with the run's values (its {CONFIG_FILE}), "
            "or pass a new --log_dir.")


def check_same_classes(run_dir: str | os.PathLike, class_names: list[str]) -> None:
    """Refuses to resume a run on a dataset with other classes than its
    `class_names.txt` (when it holds a model or checkpoints). Writes nothing.

    Raises:
        RunDirectoryError: naming the run's and the dataset's class counts.
    """
    run_dir = pathlib.Path(run_dir)
    path = run_dir / CLASS_NAMES_FILE
    if not path.is_file() or not _has_trained_state(run_dir):
        return
    previous = path.read_text(encoding="utf-8").splitlines()
    if previous != list(class_names):
        raise RunDirectoryError(
            f"--log_dir={str(run_dir)!r} holds a run trained on {len(previous)} classes "
            f"({str(path)!r}); --dataset/--data_dir give {len(class_names)} "
            f"{'other ' if len(previous) == len(class_names) else ''}classes. Resume it on "
            "its own dataset, or pass a new --log_dir.")
