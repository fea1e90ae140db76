"""One PIP-Net experiment: data → model → phased training → pruning → evaluation → export."""
from __future__ import annotations

import pathlib
import time

import keras
import tensorflow as tf
from absl import logging

from pipnet_tf import evaluation, metrics, phases, reference_checkpoint
from pipnet_tf.backbones import build_backbone
from pipnet_tf.config import TrainConfig
from pipnet_tf.data.datasets import build_data
from pipnet_tf.io import atomic_write_text, write_json
from pipnet_tf.model import PIPNet
from pipnet_tf.optimization import LearningRates
from pipnet_tf.runs import (
    CLASS_NAMES_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SCORING_SHEET_FILE,
)
from trainers.train import PlanRunner

SAVED_MODEL_DIR = "saved_model"


def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: MirroredStrategy with more than one GPU, the default strategy otherwise."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    raise ValueError(f"Unknown --strategy={name!r}; use auto, default, mirrored or one_device.")


def resolve_precision(name: str) -> str:
    """The Keras dtype policy for --precision (see TrainConfig.precision)."""
    if name == "auto":
        if tf.config.list_logical_devices("GPU") or _cpu_has_fast_bf16():
            return "mixed_bfloat16"
        return "float32"
    if name not in ("float32", "mixed_bfloat16"):
        raise ValueError(f"Unknown --precision={name!r}; use auto, float32 or mixed_bfloat16.")
    return name


def _cpu_has_fast_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def step_shrink(config: TrainConfig, steps_per_epoch: int) -> float:
    """The scoring sheet's per-step shrinkage: `shrink`, or `shrink_per_epoch` spread over
    the phase-2 steps of an epoch."""
    if config.shrink_per_epoch > 0:
        return config.shrink_per_epoch / max(1, steps_per_epoch)
    return config.shrink


def build_model(config: TrainConfig, num_classes: int, steps_per_epoch: int = 1) -> PIPNet:
    """The run's PIPNet; with --state_dict_dir_net it holds that reference checkpoint."""
    weights = "none" if config.state_dict_dir_net else config.weights  # overwritten anyway
    options = {"width": config.backbone_width} if config.backbone_width else {}
    backbone = build_backbone(config.net, config.image_size, weights=weights, seed=config.seed,
                              **options)
    model = PIPNet(
        backbone,
        num_classes=num_classes,
        num_prototypes=config.num_features,
        use_bias=config.bias,
        shrink=step_shrink(config, steps_per_epoch),
        seed=config.seed,
    )
    model.build((None, config.image_size, config.image_size, 3))
    if config.state_dict_dir_net:
        reference_checkpoint.load_checkpoint_file(model, config.state_dict_dir_net, config.net)
    return model


def run_training(config: TrainConfig, extra_callbacks: list[keras.callbacks.Callback] = ()) -> dict:
    """Runs the whole experiment into `config.log_dir`; returns the metrics dict.

    A run directory that holds checkpoints is resumed from the newest one.
    `extra_callbacks` are added to every `fit` call.
    """
    started = time.time()
    phases.check_classification_epochs(config.epochs)  # before anything is written
    run_dir = pathlib.Path(config.log_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, config.to_dict())
    keras.utils.set_random_seed(config.seed)
    precision = resolve_precision(config.precision)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        return _run(config, run_dir, precision, started, extra_callbacks)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _run(config: TrainConfig, run_dir: pathlib.Path, precision: str, started: float,
         extra_callbacks) -> dict:
    strategy = make_strategy(config.strategy)
    data = build_data(config)
    with strategy.scope():
        model = build_model(config, len(data.class_names), data.train_steps)
    plan = phases.make_plan(config.epochs_pretrain, config.epochs, config.freeze_epochs,
                            config.finetune_epochs, loaded=bool(config.state_dict_dir_net))
    for line in phases.describe_plan(plan):
        logging.info("%s", line)
    for warning in phases.plan_warnings(config.epochs_pretrain, config.epochs,
                                        config.freeze_epochs, config.finetune_epochs,
                                        loaded=bool(config.state_dict_dir_net)):
        logging.warning("%s", warning)
    rates = LearningRates(lr=config.lr, lr_block=config.lr_block, lr_net=config.lr_net,
                          weight_decay=config.weight_decay)
    runner = PlanRunner(
        model, plan, {1: (data.pretrain, data.pretrain_steps), 2: (data.train, data.train_steps)},
        rates, run_dir, strategy=strategy, checkpoints_to_keep=config.checkpoints_to_keep,
        extra_callbacks=list(extra_callbacks), verbose=2,
    )
    epochs_run = runner.run()
    training_seconds = time.time() - started

    before = evaluation.evaluate(model, data.test.dataset(config.batch_size))
    pruned = evaluation.prune_unused_prototypes(model, data.project.dataset(config.batch_size))
    after = evaluation.evaluate(model, data.test.dataset(config.batch_size))
    results = {
        **after,
        "pruned_prototypes": pruned,
        "before_pruning": before,
        "num_classes": len(data.class_names),
        "num_prototypes": model.num_features,
        "precision": precision,
        "shrink_per_step": model.shrink,
        "epochs_run_in_last_call": epochs_run,
        "training_seconds": round(training_seconds, 1),
    }
    model.save(str(run_dir / MODEL_FILE))
    write_json(run_dir / METRICS_FILE, results)
    write_json(run_dir / SCORING_SHEET_FILE,
                metrics.scoring_sheet(model.classifier.kernel.numpy(), data.class_names))
    atomic_write_text(run_dir / CLASS_NAMES_FILE, "\n".join(data.class_names) + "\n")
    if config.export:  # float32 graph whatever the training precision, verified
        from export.saved_model import export_saved_model

        export_saved_model(model, run_dir / SAVED_MODEL_DIR, class_names=data.class_names)
    results["total_seconds"] = round(time.time() - started, 1)
    write_json(run_dir / METRICS_FILE, results)
    logging.info(
        "Test top-1 %.3f | global size %d | local size %.1f (%.1f for the predicted class) | "
        "sparsity %.3f | abstained %d | %.0f s. Outputs in %s",
        results["top1_accuracy"], results["global_size"], results["local_size_all_classes"],
        results["local_size_predicted_class"], results["sparsity_ratio"], results["abstained"],
        results["total_seconds"], run_dir,
    )
    return results
