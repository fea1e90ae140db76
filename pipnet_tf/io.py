"""Reading a finished training run directory (model.keras + config.json)."""
from __future__ import annotations

import json
import os
import pathlib
import tempfile

import keras

import pipnet_tf.model  # noqa: F401  (registers the custom layers)

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
CLASS_NAMES_FILE = "class_names.txt"


def load_run(run_dir: str | os.PathLike) -> tuple[keras.Model, dict]:
    """Loads the final model and the resolved configuration of a run directory."""
    run_dir = pathlib.Path(run_dir)
    model_path = run_dir / MODEL_FILE
    if not model_path.is_file():
        raise FileNotFoundError(
            f"No {MODEL_FILE} in run directory {str(run_dir)!r}: pass the --log_dir of a "
            "finished `python -m trainers.run`."
        )
    config_path = run_dir / CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return keras.saving.load_model(str(model_path)), config


def run_image_size(config: dict, run_dir: str | os.PathLike) -> int:
    """The model input size recorded in a run's config.json (SystemExit when missing)."""
    if "image_size" not in config:
        raise SystemExit(f"{pathlib.Path(run_dir) / CONFIG_FILE} has no image_size.")
    return int(config["image_size"])


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and an atomic rename."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes UTF-8 `text` to `path` through a temporary file and an atomic rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload) -> None:
    """Atomically writes `payload` as indented JSON."""
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
