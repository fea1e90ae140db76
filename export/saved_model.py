"""SavedModel export of a trained PIP-Net for TF Serving.

`serving_default` takes `images`: uint8 (batch, height, width, 3) RGB of any batch and
size, resizes inside the graph to the model's input size, and returns
`scores` (batch, K) float32 — the raw scoring-sheet sums with the 0.1 presence
threshold — and `presence` (batch, D).

    python -m export.saved_model --model RUN_DIR --out EXPORT_DIR
"""
from __future__ import annotations

import os
import pathlib

import keras
import tensorflow as tf


def serving_function(model: keras.Model, image_size: int):
    """The uint8 → {scores, presence} function exported as `serving_default`."""

    def serve(images):
        x = tf.cast(images, tf.float32)
        x = tf.image.resize(x, (image_size, image_size))
        out = model(x, training=False)
        return {"scores": out["scores"], "presence": out["presence"]}

    return serve


def export_saved_model(model: keras.Model, out_dir: str | os.PathLike, image_size: int) -> pathlib.Path:
    """Writes a SavedModel with the `serving_default` signature to `out_dir`.

    Uses `keras.export.ExportArchive` (a plain `tf.saved_model.save` directory converts to
    broken TFLite graphs, PLATFORM_NOTES).
    """
    out_dir = pathlib.Path(out_dir)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        serving_function(model, image_size),
        input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8, name="images")],
    )
    archive.write_out(str(out_dir), verbose=False)
    return out_dir


def main(argv):
    del argv
    from absl import flags

    from pipnet_tf.io import load_run

    model, config = load_run(flags.FLAGS.model)
    path = export_saved_model(model, flags.FLAGS.out, int(config["image_size"]))
    from absl import logging

    logging.info("Wrote SavedModel to %s", path)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("model", None, "Run directory written by trainers.run (holds model.keras).")
    flags.DEFINE_string("out", None, "Output SavedModel directory.")
    flags.mark_flags_as_required(["model", "out"])
    app.run(main)
