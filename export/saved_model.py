"""SavedModel export of a trained PIP-Net for TF Serving.

Signatures (inputs: `images`, uint8 (batch, height, width, 3) RGB of any batch and size,
resized inside the graph, bilinear, to the model's input size):

- `serving_default`: `scores` (batch, K) float32 (raw scoring-sheet sums with the 0.1
  presence threshold), `predicted_class` (batch,) int32 (-1 when abstaining),
  `abstained` (batch,) bool (every score is zero), `presence` (batch, D) float32.
- `explain`: the same plus `prototype_cell` (batch, D, 2) int32 (h, w of the latent cell
  where each prototype fired), `prototype_box` (batch, D, 4) float32 (its patch in the
  input image's pixels: y_min, x_min, y_max, x_max, max exclusive) and
  `contributions` (batch, D, K) float32 (presence × weight).

Assets: `class_names.txt` (line k labels score column k), `prototypes.txt` (line i is the
prototype id of presence row i) and `metadata.json`.

    python -m export.saved_model --model RUN_DIR --out EXPORT_BASE/NAME/VERSION [--compact]

writes the TF Serving layout (EXPORT_BASE/NAME/VERSION with an integer VERSION) and
(re)writes EXPORT_BASE/models.config listing every model under EXPORT_BASE.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from export.graph import InferenceGraph
from pipnet_tf.io import CLASS_NAMES_FILE as RUN_CLASS_NAMES_FILE
from pipnet_tf.io import atomic_write_text

IMAGES_SPEC = tf.TensorSpec((None, None, None, 3), tf.uint8, name="images")
CLASS_NAMES_FILE = "class_names.txt"
PROTOTYPES_FILE = "prototypes.txt"
METADATA_FILE = "metadata.json"
MODELS_CONFIG = "models.config"


def serving_function(model: keras.Model, image_size: int, compact: bool = False):
    """The uint8 → {scores, predicted_class, abstained, presence} serving function."""
    return InferenceGraph(model, image_size, compact=compact).predict


def _write_assets(directory: pathlib.Path, graph: InferenceGraph,
                  class_names: Sequence[str] | None) -> list[pathlib.Path]:
    if class_names is None:
        class_names = [f"class_{k}" for k in range(graph.model.num_classes)]
    class_names = list(class_names)
    if len(class_names) != graph.model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with "
                         f"{graph.model.num_classes} classes: {class_names!r}")
    files = {
        CLASS_NAMES_FILE: "\n".join(class_names) + "\n",
        PROTOTYPES_FILE: "\n".join(str(i) for i in graph.prototype_ids) + "\n",
        METADATA_FILE: json.dumps(graph.metadata(), indent=2) + "\n",
    }
    paths = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        paths.append(path)
    return paths


def build_archive(graph: InferenceGraph, explain: bool = True,
                  assets: Sequence[pathlib.Path] = (),
                  images_spec: tf.TensorSpec = IMAGES_SPEC) -> keras.export.ExportArchive:
    """An ExportArchive with `serving_default` (and `explain`) on uint8 `images`."""
    archive = keras.export.ExportArchive()
    # No `archive.track(model)`: the endpoints' variables are saved anyway, and tracking the
    # model as well stores every weight twice (Keras variable + its tf.Variable).
    archive.add_endpoint("serving_default", graph.predict, input_signature=[images_spec])
    if explain:
        archive.add_endpoint("explain", graph.explain, input_signature=[images_spec])
    # ExportArchive saves its `_tf_trackable` root: Asset objects attached there are copied
    # into assets/ and recorded in the SavedModel (there is no public hook for files).
    for i, path in enumerate(assets):
        setattr(archive._tf_trackable, f"asset_{i}", tf.saved_model.Asset(str(path)))
    return archive


def export_saved_model(model: keras.Model, out_dir: str | os.PathLike, image_size: int,
                       class_names: Sequence[str] | None = None, compact: bool = False,
                       explain: bool = True) -> pathlib.Path:
    """Writes a SavedModel with `serving_default` and `explain` signatures to `out_dir`.

    Uses `keras.export.ExportArchive` (a plain `tf.saved_model.save` directory converts to
    broken TFLite graphs, PLATFORM_NOTES).
    """
    out_dir = pathlib.Path(out_dir)
    graph = InferenceGraph(model, image_size, compact=compact)
    with tempfile.TemporaryDirectory(prefix="pipnet_assets_") as tmp:
        assets = _write_assets(pathlib.Path(tmp), graph, class_names)
        build_archive(graph, explain=explain, assets=assets).write_out(str(out_dir),
                                                                        verbose=False)
    return out_dir


# === TF Serving layout ===
def split_serving_path(out: str | os.PathLike) -> tuple[pathlib.Path, str, int]:
    """EXPORT_BASE/NAME/VERSION → (EXPORT_BASE, NAME, VERSION); VERSION must be an integer."""
    out = pathlib.Path(out)
    if not re.fullmatch(r"\d+", out.name):
        raise ValueError(
            f"--out must end in an integer version directory (EXPORT_BASE/NAME/VERSION, "
            f"e.g. exports/pipnet/1) for TF Serving; received {str(out)!r}.")
    if not out.parent.name or out.parent.name in (".", ".."):
        raise ValueError(f"--out needs a model name before the version: {str(out)!r}.")
    return out.parent.parent, out.parent.name, int(out.name)


def write_models_config(export_base: str | os.PathLike, serving_root: str = "/models"
                        ) -> pathlib.Path:
    """(Re)writes EXPORT_BASE/models.config listing every NAME/VERSION SavedModel in it.

    `base_path` is `serving_root/NAME`: where EXPORT_BASE is mounted in the server
    (docker: `-v EXPORT_BASE:/models`).
    """
    export_base = pathlib.Path(export_base)
    names = sorted(
        d.name for d in export_base.iterdir()
        if d.is_dir() and any(v.name.isdigit() and (v / "saved_model.pb").is_file()
                              for v in d.iterdir())
    )
    entries = "".join(
        f"  config {{\n    name: \"{name}\"\n    base_path: \"{serving_root.rstrip('/')}/{name}\"\n"
        f"    model_platform: \"tensorflow\"\n  }}\n" for name in names)
    path = export_base / MODELS_CONFIG
    text = (f"# Written by export.saved_model; EXPORT_BASE ({export_base.resolve()}) is "
            f"served at {serving_root}.\nmodel_config_list {{\n{entries}}}\n")
    atomic_write_text(path, text)
    return path


def export_for_serving(model: keras.Model, out: str | os.PathLike, image_size: int,
                       class_names: Sequence[str] | None = None, compact: bool = False,
                       serving_root: str = "/models") -> pathlib.Path:
    """Writes EXPORT_BASE/NAME/VERSION atomically and updates EXPORT_BASE/models.config.

    The SavedModel is written to a hidden sibling and renamed into place, so a running
    TF Serving never loads a half-written version. An existing version is never replaced.
    """
    export_base, name, version = split_serving_path(out)
    out = pathlib.Path(out)
    if out.exists():
        raise FileExistsError(f"{str(out)!r} already exists; TF Serving versions are "
                              "immutable, use a new version number.")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{version}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    try:
        export_saved_model(model, partial, image_size, class_names=class_names,
                           compact=compact)
        os.replace(partial, out)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    write_models_config(export_base, serving_root)
    return out


def verify_saved_model(path: str | os.PathLike, model: keras.Model, image_size: int,
                       num_images: int = 4, seed: int = 0) -> float:
    """Max |scores difference| of the reloaded `serving_default` vs the Keras model."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_images, image_size, image_size, 3), dtype=np.uint8)
    served = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = served(images=tf.constant(images))["scores"].numpy()
    expected = model(images.astype("float32"), training=False)["scores"].numpy()
    return float(np.abs(got - expected).max())


def main(argv):
    del argv
    from absl import flags, logging

    from pipnet_tf.io import load_run, run_image_size

    FLAGS = flags.FLAGS
    run_dir = pathlib.Path(FLAGS.model)
    model, config = load_run(run_dir)
    image_size = run_image_size(config, run_dir)
    names_file = run_dir / RUN_CLASS_NAMES_FILE
    class_names = names_file.read_text().splitlines() if names_file.is_file() else None
    try:
        path = export_for_serving(model, FLAGS.out, image_size, class_names=class_names,
                                  compact=FLAGS.compact, serving_root=FLAGS.serving_root)
    except (ValueError, FileExistsError) as e:
        raise SystemExit(f"export.saved_model: {e}") from None
    if FLAGS.verify:
        diff = verify_saved_model(path, model, image_size)
        if diff > 1e-4:
            raise SystemExit(f"export.saved_model: reloaded scores differ by {diff:.3g} "
                             f"(> 1e-4) from the Keras model; do not serve {path}.")
        logging.info("Reloaded SavedModel matches the Keras scores (max diff %.2g).", diff)
    logging.info("Wrote SavedModel to %s and %s", path,
                 split_serving_path(path)[0] / MODELS_CONFIG)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("model", None, "Run directory written by trainers.run (holds model.keras).")
    flags.DEFINE_string("out", None, "EXPORT_BASE/NAME/VERSION (VERSION an integer).")
    flags.DEFINE_bool("compact", False, "Drop prototypes with all-zero weights from scoring.")
    flags.DEFINE_string("serving_root", "/models",
                        "Where EXPORT_BASE is mounted in TF Serving (models.config base_path).")
    flags.DEFINE_bool("verify", True, "Reload the SavedModel and compare with the Keras scores.")
    flags.mark_flags_as_required(["model", "out"])
    app.run(main)
