"""The GPU checks of `bench/gpu_check.sh` (issue #12), as one Python program.

On a machine with GPUs it checks, for `--net` (convnext_tiny_26) at `--image_size` (224):

1. `train`: a few phase-2 ("full" stage) training steps in bfloat16 (float16 with loss
   scaling on GPUs without bf16) under MirroredStrategy over every GPU, through
   `PIPNet.train_step` and the trainer's optimiser groups; every loss must be finite.
2. `replicas`: the float32 loss of one global batch (`--replicas_batch`, 16 pairs) with 1
   replica and with all GPUs; the loss terms must agree to `--tolerance` (1e-4).
3. `throughput`: inference and training images/s at batch `--batch` (64) over all GPUs.

Results are printed and written as JSON (`--out`). Without a GPU every check is skipped
with a message, unless `--cpu_smoke`: then the same code runs on 2 logical CPU devices
with a tiny model (tiny_cnn, 32 px, batch 8), which is how it is tested here.

    python -m bench.gpu_check --out bench/gpu_check.json
    python -m bench.gpu_check --cpu_smoke --out /tmp/gpu_check.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _devices(cpu_smoke: bool) -> list[str]:
    """Device names the checks use: every GPU, or 2 logical CPUs for `--cpu_smoke`."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        return [f"/gpu:{i}" for i in range(len(gpus))]
    if cpu_smoke:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        return ["/cpu:0", "/cpu:1"]
    return []


def _model(net: str, size: int, num_classes: int):
    from pipnet_tf.backbones import build_backbone
    from pipnet_tf.model import PIPNet

    model = PIPNet(build_backbone(net, size, weights=None, seed=1), num_classes, seed=1)
    model.build((None, size, size, 3))
    return model


def _compile_full_stage(model, strategy, steps: int, loss_scale: bool) -> None:
    """The trainer's phase-2 optimisers (stock Keras AdamW off the CPU), "full" stage,
    created under `strategy` as the trainer does."""
    from pipnet_tf import phases
    from pipnet_tf.backbones.cpu_fast_ops import use_fast_cpu_ops
    from pipnet_tf.optimization import LearningRates, make_phase_optimizers

    full = next(s for s in phases.make_plan(1, 20, 10) if s.name == phases.FULL)
    model.set_trainable_groups(full.trainable_groups)
    with strategy.scope():
        opts = make_phase_optimizers(model.layer_groups(), 2, LearningRates(), steps, 1,
                                     fused=use_fast_cpu_ops("auto"), loss_scale=loss_scale)
        opts.build()
    model.compile(opts.as_compile_args(), loss_weights=full.loss_weights, net_clock=opts.clock)


def _batch(size: int, batch: int, num_classes: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    view1 = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    view2 = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    return view1, view2, rng.integers(0, num_classes, batch).astype("int32")


def _precision() -> str:
    """What `--precision=auto` trains with on these GPUs (bf16, or float16 on GPUs
    without bf16); mixed_bfloat16 for the CPU smoke run."""
    import tensorflow as tf

    from trainers.experiment import resolve_precision

    return resolve_precision("auto") if tf.config.list_physical_devices("GPU") \
        else "mixed_bfloat16"


@contextlib.contextmanager
def _mixed_precision_model(strategy, net, size, classes):
    """Yields (model built under `strategy` in `_precision()`, that precision); the
    global dtype policy is float32 again afterwards."""
    import keras

    precision = _precision()
    keras.mixed_precision.set_global_policy(precision)
    try:
        with strategy.scope():
            model = _model(net, size, classes)
        yield model, precision
    finally:
        keras.mixed_precision.set_global_policy("float32")


def check_train(strategy, net, size, batch, steps, classes) -> dict:
    import numpy as np
    import tensorflow as tf

    with _mixed_precision_model(strategy, net, size, classes) as (model, precision):
        _compile_full_stage(model, strategy, steps, loss_scale=precision == "mixed_float16")
        data = tf.data.Dataset.from_tensors(_batch(size, batch, classes)).repeat()
        history = model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0).history
    losses = {k: float(v[-1]) for k, v in history.items()}
    return {"precision": precision, "replicas": strategy.num_replicas_in_sync,
            "steps": steps, "last_logs": losses,
            "ok": all(np.isfinite(v) for v in losses.values())}


def check_replicas(strategy, net, size, batch, classes, tolerance) -> dict:
    """float32 losses of one global batch (evaluation, the training loss formulas)."""
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    data = tf.data.Dataset.from_tensors(_batch(size, batch, classes, seed=1))
    weights, results = None, {}
    first = strategy.extended.worker_devices[0]
    for name, current in (("one", tf.distribute.OneDeviceStrategy(first)), ("all", strategy)):
        with current.scope():
            model = _model(net, size, classes)
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        model.compile([], loss_weights=(5.0, 2.0, 2.0))
        results[name] = model.evaluate(data, return_dict=True, verbose=0)
        results[name]["replicas"] = current.num_replicas_in_sync
    keys = ("loss", "L_A", "L_T", "L_C")
    diff = max(abs(results["one"][k] - results["all"][k]) for k in keys)
    return {"one": results["one"], "all": results["all"], "max_abs_diff": diff,
            "tolerance": tolerance,
            "ok": bool(np.isfinite(diff) and diff <= tolerance),
            "note": "" if strategy.num_replicas_in_sync > 1 else
            "one device: 1 and all replicas coincide"}


def check_throughput(strategy, net, size, batch, steps, classes) -> dict:
    import tensorflow as tf

    with _mixed_precision_model(strategy, net, size, classes) as (model, precision):
        view1, view2, labels = _batch(size, batch, classes)
        images = tf.data.Dataset.from_tensors(view1).repeat()
        model.predict(images, steps=2, verbose=0)  # trace + warm up
        start = time.perf_counter()
        model.predict(images, steps=steps, verbose=0)
        infer = batch * steps / (time.perf_counter() - start)
        _compile_full_stage(model, strategy, steps, loss_scale=precision == "mixed_float16")
        pairs = tf.data.Dataset.from_tensors((view1, view2, labels)).repeat()
        model.fit(pairs, epochs=1, steps_per_epoch=2, verbose=0)  # trace + warm up
        start = time.perf_counter()
        model.fit(pairs, epochs=1, steps_per_epoch=steps, verbose=0)
        train = batch * steps / (time.perf_counter() - start)
    return {"precision": precision, "batch": batch, "replicas": strategy.num_replicas_in_sync,
            "inference_img_per_s": round(infer, 2), "training_pairs_per_s": round(train, 2),
            "training_img_per_s": round(2 * train, 2), "ok": infer > 0 and train > 0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", default="convnext_tiny_26")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64,
                        help="global batch (image pairs) of the training and throughput checks")
    parser.add_argument("--replicas_batch", type=int, default=16,
                        help="global batch of the 1-vs-all-replicas loss check (float32)")
    parser.add_argument("--train_steps", type=int, default=3)
    parser.add_argument("--timing_steps", type=int, default=10)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--cpu_smoke", action="store_true",
                        help="no GPU: run the checks on 2 logical CPUs with a tiny model")
    parser.add_argument("--out", default="", help="JSON file for the results")
    args = parser.parse_args(argv)

    devices = _devices(args.cpu_smoke)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    report = {"gpus": [d.name for d in gpus], "devices": devices,
              "tensorflow": tf.__version__, "checks": {}}
    if not devices:
        print("gpu_check: no GPU visible to TensorFlow: skipping the GPU steps (bf16 "
              "MirroredStrategy training, 1-vs-all-replica loss, throughput). Install a CUDA "
              "build of TensorFlow (pip install 'tensorflow[and-cuda]') and check "
              "`nvidia-smi`.", flush=True)
        report["skipped"] = "no GPU visible"
    else:
        if args.cpu_smoke and not gpus:
            print("gpu_check: no GPU: --cpu_smoke runs the checks on 2 logical CPU devices "
                  "with tiny_cnn at 32 px (code paths only, no GPU figures).", flush=True)
            args.net, args.image_size, args.batch, args.classes = "tiny_cnn", 32, 8, 4
            args.replicas_batch = 8
            args.train_steps, args.timing_steps = 2, 2
        # One MirroredStrategy for every check: several in one process can mix up the
        # instance keys of their collective ops.
        strategy = tf.distribute.MirroredStrategy(devices)
        checks = {
            "train": lambda: check_train(strategy, args.net, args.image_size, args.batch,
                                         args.train_steps, args.classes),
            "replicas": lambda: check_replicas(strategy, args.net, args.image_size,
                                               args.replicas_batch, args.classes,
                                               args.tolerance),
            "throughput": lambda: check_throughput(strategy, args.net, args.image_size,
                                                   args.batch, args.timing_steps, args.classes),
        }
        for name, run in checks.items():
            started = time.time()
            try:
                result = run()
            except Exception as error:  # noqa: BLE001 - report every check, then fail
                result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:2000]}
            result["seconds"] = round(time.time() - started, 1)
            report["checks"][name] = result
            print(f"gpu_check: {name}: {'OK' if result['ok'] else 'FAILED'} "
                  f"{json.dumps(result)}", flush=True)
    report["config"] = vars(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report), flush=True)
    return 0 if all(c["ok"] for c in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
