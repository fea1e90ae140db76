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

Prototypes disabled by hand (`trainers.edit`) keep their rows: their presence and
contributions are exactly 0. With `--compact` they are dropped, together with prototypes
whose weights are all zero (`prototypes.txt` then maps rows to prototype ids).

Assets: `class_names.txt` (line k labels score column k), `prototypes.txt` (line i is the
prototype id of presence row i) and `metadata.json`.

    python -m export.saved_model --model RUN_DIR --out EXPORT_BASE/NAME/VERSION [--compact]

writes the TF Serving layout (EXPORT_BASE/NAME/VERSION with an integer VERSION) and
(re)writes EXPORT_BASE/models.config listing every model under EXPORT_BASE. The version is
written and checked (its reloaded scores against the float32 Keras model's, ≤ 1e-4) in a
hidden sibling first: a failed check exits with status 1 and leaves no version and an
unchanged models.config. Bad input exits with status 2 (-v 1 adds the traceback).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import tempfile
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from export.graph import InferenceGraph
from pipnet_tf.cli import exit_on_user_error
from pipnet_tf.io import atomic_output, atomic_write_text
from pipnet_tf.model import float32_copy
from pipnet_tf.runs import open_run

IMAGES_SPEC = tf.TensorSpec((None, None, None, 3), tf.uint8, name="images")
CLASS_NAMES_FILE = "class_names.txt"
PROTOTYPES_FILE = "prototypes.txt"
METADATA_FILE = "metadata.json"
MODELS_CONFIG = "models.config"
VERIFY_TOLERANCE = 1e-4  # max |score difference| of the reloaded SavedModel (float32)


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
    attach_assets(archive, assets)
    return archive


def attach_assets(archive: keras.export.ExportArchive, paths: Sequence[pathlib.Path]) -> None:
    """Records `paths` as `tf.saved_model.Asset`s of the SavedModel `archive` writes: they
    are copied into `assets/` and listed in the SavedModel.

    Keras's public `ExportArchive.track()` keeps only variables and lookup tables, so there
    is no public hook for files. ExportArchive saves its private `_tf_trackable` root, and
    Asset objects attached there are saved with it. This is the one place that relies on
    that; `tests/export_test.py::test_attach_assets_relies_on_keras_internals` fails when
    Keras changes it.
    """
    root = getattr(archive, "_tf_trackable", None)
    if root is None:
        raise RuntimeError("keras.export.ExportArchive has no `_tf_trackable` any more: "
                           "pipnet-tf's asset workaround (export.saved_model.attach_assets) "
                           "needs updating for this Keras version.")
    for i, path in enumerate(paths):
        setattr(root, f"asset_{i}", tf.saved_model.Asset(str(path)))


class VerificationError(RuntimeError):
    """The written SavedModel does not compute what the Keras model computes."""


def export_saved_model(model: keras.Model, out_dir: str | os.PathLike,
                       image_size: int | None = None, class_names: Sequence[str] | None = None,
                       compact: bool = False, explain: bool = True, verify: bool = True,
                       tolerance: float = VERIFY_TOLERANCE, replace: bool = True
                       ) -> pathlib.Path:
    """Writes a SavedModel with `serving_default` (and `explain`) signatures to `out_dir`.

    The graph computes in float32 whatever precision the model trained in
    (`pipnet_tf.model.float32_copy`). It is written to a hidden sibling of `out_dir`; with
    `verify`, the written SavedModel is reloaded there and its scores are compared with
    the float32 Keras model's (`verify_saved_model`), and only a SavedModel that passes is
    renamed to `out_dir`. Uses `keras.export.ExportArchive` (a plain `tf.saved_model.save`
    directory converts to broken TFLite graphs, PLATFORM_NOTES).

    Raises:
        VerificationError: the reloaded scores differ by more than `tolerance`; nothing
            is left at `out_dir`.
        FileExistsError: `out_dir` exists and `replace` is False.
    """
    served = float32_copy(model)
    image_size = int(image_size or served.image_size)
    graph = InferenceGraph(served, image_size, compact=compact)
    with atomic_output(out_dir, directory=True, replace=replace) as tmp:
        with tempfile.TemporaryDirectory(prefix="pipnet_assets_") as assets_dir:
            assets = _write_assets(pathlib.Path(assets_dir), graph, class_names)
            build_archive(graph, explain=explain, assets=assets).write_out(str(tmp),
                                                                            verbose=False)
        if verify:
            diff = verify_saved_model(tmp, served, image_size)
            if not diff <= tolerance:
                raise VerificationError(
                    f"the reloaded SavedModel's scores differ by {diff:.3g} (> {tolerance:g}) "
                    f"from the float32 Keras model; nothing was written to {str(out_dir)!r}.")
            logging.info("Reloaded SavedModel matches the float32 Keras scores (max diff "
                         "%.2g).", diff)
    return pathlib.Path(out_dir)


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


def export_for_serving(model: keras.Model, out: str | os.PathLike,
                       image_size: int | None = None, class_names: Sequence[str] | None = None,
                       compact: bool = False, serving_root: str = "/models",
                       verify: bool = True) -> pathlib.Path:
    """Writes EXPORT_BASE/NAME/VERSION atomically and updates EXPORT_BASE/models.config.

    The SavedModel is written and verified in a hidden sibling and only then renamed into
    place, so a running TF Serving never loads a half-written or failed version; an
    existing version is never replaced; `models.config` is rewritten only after success.
    """
    export_base, _, _ = split_serving_path(out)
    if pathlib.Path(out).exists():
        raise FileExistsError(f"{str(out)!r} already exists; TF Serving versions are "
                              "immutable, use a new version number.")
    path = export_saved_model(model, out, image_size, class_names=class_names,
                              compact=compact, verify=verify, replace=False)
    write_models_config(export_base, serving_root)
    return path


def verify_saved_model(path: str | os.PathLike, model: keras.Model, image_size: int,
                       num_images: int = 4, seed: int = 0) -> float:
    """Max |scores difference| of the reloaded `serving_default` vs the Keras model."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_images, image_size, image_size, 3), dtype=np.uint8)
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = signature(images=tf.constant(images))["scores"].numpy()
    expected = model(images.astype("float32"), training=False)["scores"].numpy()
    return float(np.abs(got - expected).max())


@exit_on_user_error("export.saved_model", (VerificationError,))
def main(argv):
    del argv
    from absl import flags

    FLAGS = flags.FLAGS
    run = open_run(FLAGS.model)
    path = export_for_serving(run.model, FLAGS.out, run.image_size, class_names=run.class_names,
                              compact=FLAGS.compact, serving_root=FLAGS.serving_root,
                              verify=FLAGS.verify)
    logging.info("Wrote SavedModel to %s and %s", path,
                 split_serving_path(path)[0] / MODELS_CONFIG)


def define_flags() -> None:
    """The command line's flags (defined only when run as a program, since export.tflite
    imports this module and defines flags of the same names)."""
    from absl import flags

    flags.DEFINE_string("model", None, "Run directory written by trainers.run (holds model.keras).")
    flags.DEFINE_string("out", None, "EXPORT_BASE/NAME/VERSION (VERSION an integer).")
    flags.DEFINE_bool("compact", False, "Drop disabled prototypes and those with all-zero "
                      "weights from scoring.")
    flags.DEFINE_string("serving_root", "/models",
                        "Where EXPORT_BASE is mounted in TF Serving (models.config base_path).")
    flags.DEFINE_bool("verify", True, "Reload the SavedModel and compare with the Keras scores.")
    flags.mark_flags_as_required(["model", "out"])


if __name__ == "__main__":
    from pipnet_tf.cli import run_app

    define_flags()
    run_app(main)
