"""CPU latency / throughput of a PIP-Net as Keras, SavedModel and TFLite (all quantizations).

Measures, on this machine's CPU: latency at batch 1 (median and p90 over `--repeats`
calls, after warm-up) and throughput at batch 8 (images/s), plus the file sizes and the
TFLite parity figures against the Keras model.

    # a trained run directory, e.g. the one `make demo` writes
    KERAS_BACKEND=tensorflow python -m bench.export_speed --model runs/demo
    # convnext_tiny_26 at 224 with random weights (no dataset: random images)
    KERAS_BACKEND=tensorflow python -m bench.export_speed --convnext --repeats 10
    # ... with the blocks' 1e-6 initial layer scale instead of a trained-like 0.1
    KERAS_BACKEND=tensorflow python -m bench.export_speed --convnext --layer_scale=0

Results go to stdout as a Markdown table and to `--out_dir/results.json`. Besides wall
time, the CPU seconds of the process (all threads) are recorded, which stay meaningful when
other jobs share the machine.
Keras is timed as `tf.function(model(x, training=False))` on float32 model-size inputs;
the SavedModel as its `serving_default` signature and TFLite through ai_edge_litert's
Interpreter (`--threads`, default all cores), both on uint8 model-size inputs.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from export import tflite as tfl  # noqa: E402
from export.saved_model import export_saved_model  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Trained run directory (model.keras + config.json).")
flags.DEFINE_bool("convnext", False, "Benchmark convnext_tiny_26 at 224 with random weights.")
flags.DEFINE_integer("num_classes", 200, "Classes of the random convnext model (CUB: 200).")
flags.DEFINE_float("layer_scale", 0.1, "Layer-scale γ of the random convnext blocks, of the "
                   "order of a trained ConvNeXt's; 0 keeps the 1e-6 initialisation.")
flags.DEFINE_string("out_dir", None, "Where artifacts and results.json go (default: a temp dir).")
flags.DEFINE_integer("repeats", 30, "Timed batch-1 calls per variant.")
flags.DEFINE_integer("throughput_repeats", 5, "Timed batch-8 calls per variant.")
flags.DEFINE_integer("threads", os.cpu_count() or 1, "TFLite interpreter threads.")
flags.DEFINE_integer("num_parity_images", 200, "Held-out images for the parity figures.")
flags.DEFINE_list("quantize", list(tfl.QUANTIZATIONS), "TFLite variants to build.")
flags.DEFINE_string("cache_dir", None, "With --model: where the run's images are converted "
                    "to PNG (odd formats) and the built-in dataset is generated; default: "
                    "the run's (config.json cache_dir, relative to the current directory).")


def _size(path: pathlib.Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _timings(call, batch1: np.ndarray, batch8: np.ndarray, repeats: int,
             throughput_repeats: int) -> dict:
    for _ in range(3):
        call(batch1)
    latencies, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        call(batch1)
        latencies.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    call(batch8)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(throughput_repeats):
        call(batch8)
    elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    images = len(batch8) * throughput_repeats
    return {
        "latency_b1_median_s": float(np.median(latencies)),
        "latency_b1_p90_s": float(np.percentile(latencies, 90)),
        # CPU seconds of this process (all threads): robust to other load on the machine.
        "cpu_b1_median_s": float(np.median(cpu)),
        "throughput_b8_img_s": float(images / elapsed),
        "cpu_b8_per_img_s": float(elapsed_cpu / images),
    }


def tflite_caller(content: bytes, threads: int):
    """Resizes/allocates once per batch size, then set_tensor → invoke → get_tensor."""
    interpreter = tfl.make_interpreter(content, num_threads=threads)
    inp = interpreter.get_input_details()[0]["index"]
    outputs = [d["index"] for d in interpreter.get_output_details()]
    state = {"shape": None}

    def call(images: np.ndarray):
        if state["shape"] != images.shape:
            interpreter.resize_tensor_input(inp, images.shape, strict=False)
            interpreter.allocate_tensors()
            state["shape"] = images.shape
        interpreter.set_tensor(inp, images)
        interpreter.invoke()
        return [interpreter.get_tensor(i) for i in outputs]

    return call


def random_convnext(num_classes: int, seed: int = 0, layer_scale: float | None = None):
    """convnext_tiny_26 PIP-Net at 224, random weights, a sparse scoring sheet as after
    training (each kept prototype votes for one class; two thirds of them kept).

    `layer_scale` sets every block's layer-scale γ (None keeps the 1e-6 initialisation).
    With 1e-6 each residual branch is ~1e-6 of the stream, which no trained model has and
    which changes the int8 graph: XNNPACK's int8 ADD rejects such scale ratios, so the
    residual ADDs fall back to TFLite's own kernel.
    """
    from pipnet_tf.backbones import build_backbone
    from pipnet_tf.model import PIPNet

    backbone = build_backbone("convnext_tiny_26", 224, weights=None, seed=seed)
    model = PIPNet(backbone, num_classes, seed=seed)
    model.build((None, 224, 224, 3))
    rng = np.random.default_rng(seed)
    kernel = np.zeros(model.classifier.kernel.shape, "float32")
    for d in range(kernel.shape[0]):
        if d % 3:
            kernel[d, rng.integers(num_classes)] = rng.uniform(0.5, 3.0)
    model.classifier.kernel.assign(kernel)
    if layer_scale is not None:
        for layer in model.backbone.layers:
            if layer.name.endswith("_layer_scale"):
                layer.gamma.assign(np.full(layer.gamma.shape, layer_scale, "float32"))
    return model


def benchmark(name: str, model, image_size: int, out_dir: pathlib.Path,
              heldout: np.ndarray, calibration: np.ndarray) -> list[dict]:
    rng = np.random.default_rng(0)
    batch1 = heldout[:1]
    batch8 = heldout[:8] if len(heldout) >= 8 else rng.integers(
        0, 256, (8, image_size, image_size, 3), dtype=np.uint8)
    rows = []
    reps = (FLAGS.repeats, FLAGS.throughput_repeats)

    keras_fn = tf.function(lambda x: model(x, training=False)["scores"], reduce_retracing=True)
    keras_path = out_dir / f"{name}.keras"
    model.save(keras_path)
    rows.append({"model": name, "variant": "keras (tf.function)", "bytes": _size(keras_path),
                 **_timings(lambda x: keras_fn(tf.constant(x, tf.float32)), batch1, batch8,
                            *reps)})
    logging.info("%s", rows[-1])

    sm_path = out_dir / f"{name}_saved_model"
    export_saved_model(model, sm_path, image_size)
    serving = tf.saved_model.load(str(sm_path)).signatures["serving_default"]
    rows.append({"model": name, "variant": "SavedModel serving_default", "bytes": _size(sm_path),
                 **_timings(lambda x: serving(images=tf.constant(x)), batch1, batch8, *reps)})
    logging.info("%s", rows[-1])

    reference = tfl.keras_outputs(model, heldout, batch_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        for quantization in FLAGS.quantize:
            source = tfl.write_tflite_saved_model(model, pathlib.Path(tmp) / quantization,
                                                  image_size, quantization=quantization)
            start = time.perf_counter()
            content = tfl.convert(source, quantization, calibration)
            convert_s = time.perf_counter() - start
            path = out_dir / f"{name}_{quantization}.tflite"
            path.write_bytes(content)
            figures = tfl.parity_figures(
                reference, tfl.run_tflite(content, heldout, batch_size=8,
                                          num_threads=FLAGS.threads))
            call = tflite_caller(content, FLAGS.threads)
            rows.append({"model": name, "variant": f"TFLite {quantization}",
                         "bytes": len(content), "convert_s": round(convert_s, 1),
                         **_timings(call, batch1, batch8, *reps),
                         **{k: figures[k] for k in ("max_rel_score_diff", "top1_agreement",
                                                     "abstention_disagreement",
                                                     "abstained_keras", "num_images")}})
            logging.info("%s", rows[-1])
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | variant | size (MB) | b1 median (s) | b1 p90 (s) | b1 CPU-s | b8 (img/s) "
             "| b8 CPU-s/img | max rel Δscore | top-1 agree | abstain disagree |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        parity = "– | – | –"
        if "top1_agreement" in r:
            parity = (f"{r['max_rel_score_diff']:.2g} | {r['top1_agreement']:.3f} | "
                      f"{r['abstention_disagreement']:.3f}")
        lines.append(f"| {r['model']} | {r['variant']} | {r['bytes'] / 1e6:.2f} | "
                     f"{r['latency_b1_median_s']:.4f} | {r['latency_b1_p90_s']:.4f} | "
                     f"{r['cpu_b1_median_s']:.4f} | {r['throughput_b8_img_s']:.1f} | "
                     f"{r['cpu_b8_per_img_s']:.4f} | {parity} |")
    return "\n".join(lines)


def main(argv):
    del argv
    if not FLAGS.model and not FLAGS.convnext:
        raise app.UsageError("Pass --model RUN_DIR and/or --convnext.", exitcode=2)
    out_dir = pathlib.Path(FLAGS.out_dir or tempfile.mkdtemp(prefix="pipnet_bench_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    if FLAGS.model:
        from export import data
        from pipnet_tf.runs import open_run

        run = open_run(FLAGS.model, FLAGS.cache_dir)
        heldout = data.heldout_images(run.config, FLAGS.num_parity_images)
        calibration = data.calibration_images(run.config, 200)
        rows += benchmark(f"{run.config.net}_{run.image_size}", run.model, run.image_size,
                          out_dir, heldout, calibration)
    if FLAGS.convnext:
        model = random_convnext(FLAGS.num_classes, layer_scale=FLAGS.layer_scale or None)
        rng = np.random.default_rng(1)
        # Random weights, no dataset: random images for parity (figures only indicative).
        heldout = rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
        calibration = rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
        rows += benchmark("convnext_tiny_26_224_random", model, 224, out_dir, heldout,
                          calibration)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    print(f"\nArtifacts and results.json in {out_dir}")


if __name__ == "__main__":
    from pipnet_tf.cli import run_app

    run_app(main)
