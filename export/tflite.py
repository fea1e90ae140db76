"""TFLite / LiteRT export of a trained PIP-Net, with a parity gate.

    python -m export.tflite --model RUN_DIR --quantize {none,float16,dynamic,int8} [--out FILE]

The converted model has one signature, `serving_default`: `images` uint8
(batch, height, width, 3) of any batch and size (dynamic; resized inside the graph,
bilinear, to the model's input size) → `scores` (batch, K) float32, `predicted_class`
(batch,) int32 (-1 when abstaining), `abstained` (batch,) bool, `presence` (batch, D').
It is converted from an ExportArchive SavedModel (never from `tf.saved_model.save`
output, which converts to silently broken models, PLATFORM_NOTES): a fresh one, or the
`serving_default` of `--saved_model`.

Quantization: `none` (float32), `float16` (weights), `dynamic` (int8 weights, float
activations), `int8` (int8 weights and activations, calibrated on training images; uint8
input, float outputs, float fallback where an op has no int8 kernel). For int8 the 7x7
depthwise convs of ConvNeXt are traced as sums of ≤ 25-tap bands, the largest int8
depthwise conv XNNPACK runs (a 7x7 one falls back to a ~20x slower kernel); converting
`--saved_model` keeps that SavedModel's graph as it is.

Parity gate: before writing, the converted model runs on held-out (test split) images
next to the Keras model (`--num_parity_images`, 500 by default; the number used is logged
and recorded, with a warning below 100). It refuses to write (exit status 1) when, for none/float16,
max |score difference| / max(1, max |score|) exceeds the tolerance (1e-4 for none, 5e-2
for float16); for dynamic/int8, top-1 agreement is below 98%; or, for every mode,
abstention decisions disagree on more than 1% of images. The figures go to FILE with the
suffix `.json` in every case.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import tempfile
from typing import Iterable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from export.graph import InferenceGraph
from export.saved_model import build_archive
from pipnet_tf.backbones.cpu_fast_ops import depthwise_tap_limit
from pipnet_tf.cli import exit_on_user_error
from pipnet_tf.io import atomic_write_bytes, write_json
from pipnet_tf.model import float32_copy
from pipnet_tf.runs import open_run

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
# Max |score difference| / max(1, max |Keras score|) allowed for the unquantised modes.
# Relative, because scores are unnormalised sums; float16 also flips the odd presence
# sitting at the 0.1 threshold, which moves a score by ~0.1·weight.
DEFAULT_SCORE_TOLERANCE = {"none": 1e-4, "float16": 5e-2}
SIGNATURE = "serving_default"
# Fewer held-out images than this make the parity figures weak evidence: a warning is
# logged and recorded with the figures (the gate still applies).
MIN_PARITY_IMAGES = 100
# XNNPACK (the CPU delegate) runs int8 depthwise convs of at most 5x5 = 25 taps.
XNNPACK_INT8_MAX_DEPTHWISE_TAPS = 25


class ParityError(RuntimeError):
    """The converted model disagrees with the Keras model beyond the gate."""


@dataclasses.dataclass(frozen=True)
class ParityGate:
    """Acceptance thresholds of a converted model (see module docstring).

    `score_tolerance` None uses `DEFAULT_SCORE_TOLERANCE[quantization]`.
    """

    score_tolerance: float | None = None
    min_top1_agreement: float = 0.98
    max_abstention_disagreement: float = 0.01

    def failures(self, quantization: str, figures: dict) -> list[str]:
        problems = []
        if quantization in DEFAULT_SCORE_TOLERANCE:
            tolerance = (DEFAULT_SCORE_TOLERANCE[quantization] if self.score_tolerance is None
                         else self.score_tolerance)
            if not figures["max_rel_score_diff"] <= tolerance:
                problems.append(f"max |score difference| / max(1, max |score|) = "
                                f"{figures['max_rel_score_diff']:.3g} > tolerance {tolerance:g}")
        elif figures["top1_agreement"] < self.min_top1_agreement:
            problems.append(f"top-1 agreement {figures['top1_agreement']:.4f} < "
                            f"{self.min_top1_agreement:g}")
        if figures["abstention_disagreement"] > self.max_abstention_disagreement:
            problems.append(f"abstention decisions disagree on "
                            f"{figures['abstention_disagreement']:.4f} of the images > "
                            f"{self.max_abstention_disagreement:g}")
        return problems


# === Conversion ===
def images_spec(batch_size: int | None = None, fixed_size: int | None = None) -> tf.TensorSpec:
    """uint8 (batch, height, width, 3); None leaves a dimension dynamic."""
    return tf.TensorSpec((batch_size, fixed_size, fixed_size, 3), tf.uint8, name="images")


def write_tflite_saved_model(model: keras.Model, out_dir: str | os.PathLike, image_size: int,
                             compact: bool = False, batch_size: int | None = None,
                             fixed_size: int | None = None,
                             quantization: str = "none") -> pathlib.Path:
    """An ExportArchive SavedModel holding only `serving_default` (the conversion source).

    For `quantization="int8"` the graph is traced with ConvNeXt's 7x7 depthwise convs cut
    into ≤ 25-tap bands (`cpu_fast_ops.depthwise_tap_limit`), which XNNPACK runs in int8.
    """
    tap_limit = (depthwise_tap_limit(XNNPACK_INT8_MAX_DEPTHWISE_TAPS) if quantization == "int8"
                 else contextlib.nullcontext())
    with tap_limit:
        graph = InferenceGraph(model, image_size, compact=compact)
        build_archive(graph, explain=False, images_spec=images_spec(batch_size, fixed_size)
                      ).write_out(str(out_dir), verbose=False)
    return pathlib.Path(out_dir)


def convert(saved_model_dir: str | os.PathLike, quantization: str = "none",
            representative_images: np.ndarray | None = None) -> bytes:
    """Converts the `serving_default` signature of an ExportArchive SavedModel.

    Args:
        quantization: one of `QUANTIZATIONS`.
        representative_images: uint8 (n, S, S, 3) calibration images; required for int8.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantization!r}; use one of {QUANTIZATIONS}.")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir),
                                                         signature_keys=[SIGNATURE])
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        if representative_images is None or len(representative_images) == 0:
            raise ValueError("int8 quantization needs representative images.")

        def representative() -> Iterable[list]:
            # A list of input arrays, not a {"images": ...} dict: for a dict the calibrator
            # builds TensorFlow's own, deprecated interpreter (and prints its warning).
            for image in representative_images:
                yield [image[None].astype(np.uint8)]

        converter.representative_dataset = representative
    return converter.convert()


# === Running ===
def make_interpreter(model_content: bytes, num_threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=model_content, num_threads=num_threads)


def run_tflite(model_content: bytes, images: np.ndarray, batch_size: int = 16,
               num_threads: int | None = None) -> dict[str, np.ndarray]:
    """Runs `serving_default` over uint8 `images` in batches; concatenated outputs."""
    runner = make_interpreter(model_content, num_threads).get_signature_runner(SIGNATURE)
    parts: dict[str, list] = {}
    for start in range(0, len(images), batch_size):
        out = runner(images=np.ascontiguousarray(images[start:start + batch_size]))
        for key, value in out.items():
            parts.setdefault(key, []).append(np.array(value))
    return {key: np.concatenate(values) for key, values in parts.items()}


def keras_outputs(model: keras.Model, images: np.ndarray, batch_size: int = 16
                  ) -> dict[str, np.ndarray]:
    """The Keras model's scores / predicted_class / abstained on uint8 model-size images."""
    scores = np.concatenate([
        model(images[i:i + batch_size].astype("float32"), training=False)["scores"].numpy()
        for i in range(0, len(images), batch_size)])
    abstained = scores.max(axis=-1) <= 0
    predicted = np.where(abstained, -1, scores.argmax(axis=-1))
    return {"scores": scores, "predicted_class": predicted, "abstained": abstained}


def parity_figures(reference: dict, converted: dict) -> dict:
    """Agreement of converted vs reference outputs (both from `keras_outputs` keys)."""
    diff = np.abs(converted["scores"].astype(np.float64) - reference["scores"])
    return {
        "num_images": int(len(reference["scores"])),
        "max_abs_score_diff": float(diff.max()),
        "mean_abs_score_diff": float(diff.mean()),
        "max_abs_score": float(np.abs(reference["scores"]).max()),
        "max_rel_score_diff": float(diff.max() / max(1.0, np.abs(reference["scores"]).max())),
        "top1_agreement": float(np.mean(converted["predicted_class"]
                                        == reference["predicted_class"])),
        "abstention_disagreement": float(np.mean(converted["abstained"]
                                                 != reference["abstained"])),
        "abstained_keras": int(reference["abstained"].sum()),
        "abstained_tflite": int(converted["abstained"].sum()),
    }


def export_tflite(model: keras.Model, out: str | os.PathLike, image_size: int,
                  quantization: str, heldout: np.ndarray,
                  representative_images: np.ndarray | None = None,
                  gate: ParityGate = ParityGate(), compact: bool = False,
                  saved_model_dir: str | os.PathLike | None = None) -> dict:
    """Converts, checks parity on `heldout` (uint8 (n, S, S, 3)), writes `out` on success.

    Always writes the figures to `out` with suffix `.json`. Raises `ParityError` (and
    writes no model file) when the gate fails. Returns the figures.
    """
    model = float32_copy(model)  # TFLite has no bfloat16; compare float32 with float32
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pipnet_tflite_") as tmp:
        if saved_model_dir is None:
            saved_model_dir = write_tflite_saved_model(model, pathlib.Path(tmp) / "sm",
                                                       image_size, compact=compact,
                                                       quantization=quantization)
        content = convert(saved_model_dir, quantization, representative_images)
    reference = keras_outputs(model, heldout)
    figures = parity_figures(reference, run_tflite(content, heldout))
    problems = gate.failures(quantization, figures)
    logging.info("Parity gate of the %s TFLite model on %d held-out images.", quantization,
                 figures["num_images"])
    warnings = []
    if figures["num_images"] < MIN_PARITY_IMAGES:
        warnings.append(f"the parity gate ran on only {figures['num_images']} held-out images "
                        f"(fewer than {MIN_PARITY_IMAGES}): its figures are weak evidence; "
                        "check on a dataset with more test images.")
        logging.warning("%s", warnings[-1])
    figures.update(
        quantization=quantization, compact=compact, image_size=image_size,
        heldout_split="test", file_bytes=len(content),
        gate=dataclasses.asdict(gate) | {
            "score_tolerance": (gate.score_tolerance if gate.score_tolerance is not None
                                else DEFAULT_SCORE_TOLERANCE.get(quantization))},
        passed=not problems, failures=problems, warnings=warnings,
        tflite=str(out) if not problems else None,
    )
    report = out.with_suffix(".json")
    write_json(report, figures)
    if problems:
        raise ParityError(f"{quantization} TFLite model failed the parity gate on "
                          f"{figures['num_images']} held-out images: " + "; ".join(problems)
                          + f". Not written; figures in {report}.")
    atomic_write_bytes(out, content)
    return figures


@exit_on_user_error("export.tflite", (ParityError,))
def main(argv):
    del argv
    from absl import flags, logging

    from export import data

    FLAGS = flags.FLAGS
    run = open_run(FLAGS.model, FLAGS.cache_dir)
    suffix = "_compact" if FLAGS.compact else ""
    out = pathlib.Path(FLAGS.out or run.run_dir / "tflite" /
                       f"pipnet_{FLAGS.quantize}{suffix}.tflite")
    heldout = data.heldout_images(run.config, FLAGS.num_parity_images)
    representative = (data.calibration_images(run.config, FLAGS.num_calibration_images)
                      if FLAGS.quantize == "int8" else None)
    gate = ParityGate(FLAGS.tolerance, FLAGS.min_top1_agreement,
                      FLAGS.max_abstention_disagreement)
    figures = export_tflite(run.model, out, run.image_size, FLAGS.quantize, heldout,
                            representative, gate, compact=FLAGS.compact,
                            saved_model_dir=FLAGS.saved_model)
    logging.info("Wrote %s (%d bytes): max |score diff| %.3g, top-1 agreement %.4f, "
                 "abstention disagreement %.4f on %d held-out images.", out,
                 figures["file_bytes"], figures["max_abs_score_diff"],
                 figures["top1_agreement"], figures["abstention_disagreement"],
                 figures["num_images"])


def define_flags() -> None:
    """The command line's flags (defined only when run as a program)."""
    from absl import flags

    flags.DEFINE_string("model", None, "Run directory written by trainers.run.")
    flags.DEFINE_enum("quantize", "none", QUANTIZATIONS, "Quantization mode.")
    flags.DEFINE_string("out", None, "Output .tflite (default RUN_DIR/tflite/pipnet_MODE.tflite).")
    flags.DEFINE_string("saved_model", None, "Convert this ExportArchive SavedModel's "
                        "serving_default instead of exporting a fresh one.")
    flags.DEFINE_bool("compact", False, "Drop disabled prototypes and those with all-zero "
                      "weights from scoring.")
    flags.DEFINE_float("tolerance", None, "Max |score diff| / max(1, max |score|) for none/float16 "
                       f"(default {DEFAULT_SCORE_TOLERANCE}).")
    flags.DEFINE_float("min_top1_agreement", 0.98, "Gate for dynamic/int8.")
    flags.DEFINE_float("max_abstention_disagreement", 0.01, "Gate for every mode.")
    flags.DEFINE_integer("num_parity_images", 500, "Held-out (test split) images for the "
                         f"parity gate; fewer than {MIN_PARITY_IMAGES} draw a warning.")
    flags.DEFINE_integer("num_calibration_images", 200, "Training images for int8 calibration.")
    flags.DEFINE_string("cache_dir", None, "Where the dataset's images are converted to PNG "
                        "(CMYK, EXIF-rotated, ...) and the built-in dataset is generated; "
                        "default: the run's (config.json cache_dir, relative to the current "
                        "directory).")
    flags.mark_flags_as_required(["model"])


if __name__ == "__main__":
    from pipnet_tf.cli import run_app

    define_flags()
    run_app(main)
