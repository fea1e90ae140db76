"""One PIP-Net experiment: data → model → phased training → pruning → evaluation → export."""
from __future__ import annotations

import pathlib
import time

import keras
import tensorflow as tf
from absl import logging

from pipnet_tf import distribution, evaluation, metrics, phases, reference_checkpoint
from pipnet_tf.backbones import build_backbone
from pipnet_tf.backbones.cpu_fast_ops import check_fast_cpu_ops, use_fast_cpu_ops
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
    check_same_architecture,
    check_same_classes,
)
from trainers.train import PlanRunner

SAVED_MODEL_DIR = "saved_model"
STRATEGIES = ("auto", "default", "mirrored", "one_device", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
TIMING_FILE = "timing.json"


def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: MirroredStrategy with more than one GPU, the default strategy otherwise;
    multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG.

    Called before anything else touches TensorFlow's runtime: the multi-worker strategy
    can only be set up before it starts (so GPUs are counted without starting it).
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown --strategy={name!r}; use {', '.join(STRATEGIES)}.")
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    distribution.check_tf_config()
    return tf.distribute.MultiWorkerMirroredStrategy()


def resolve_precision(name: str) -> str:
    """The Keras dtype policy for --precision (see TrainConfig.precision): on GPUs
    mixed_bfloat16 where every GPU has bfloat16 (compute capability ≥ 8.0), else
    mixed_float16 (trained with loss scaling); on CPUs mixed_bfloat16 with AVX512_BF16 or
    AMX, else float32."""
    if name not in PRECISIONS:
        raise ValueError(f"Unknown --precision={name!r}; use {', '.join(PRECISIONS)}.")
    if name != "auto":
        return name
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return "mixed_bfloat16" if all(_gpu_has_bf16(gpu) for gpu in gpus) else "mixed_float16"
    return "mixed_bfloat16" if _cpu_has_fast_bf16() else "float32"


def _gpu_has_bf16(gpu) -> bool:
    capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
    return capability is not None and tuple(capability) >= (8, 0)


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
    backbone = build_backbone(config.net, config.image_size, weights=weights, seed=config.seed,
                              fast_cpu_ops=config.fast_cpu_ops, **config.backbone_options())
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


def run_training(config: TrainConfig, extra_callbacks: list[keras.callbacks.Callback] = ()
                 ) -> dict | None:
    """Runs the whole experiment into `config.log_dir`; returns the metrics dict (None on
    a multi-worker worker that is not the chief: it only trains).

    A run directory that holds checkpoints is resumed from the newest readable one, after
    checking (before anything is written) that the flags give the same architecture.
    `config.json` always describes the model in the directory: it is rewritten only when
    there is no `model.keras` yet, or together with a new one at the end.
    `extra_callbacks` are added to every `fit` call.
    """
    started = time.time()
    phases.check_classification_epochs(config.epochs)  # before anything is written
    phases.check_background_pretrain_mode(config.background_loss_pretrain)
    run_dir = pathlib.Path(config.log_dir)
    check_fast_cpu_ops(config.fast_cpu_ops)
    metrics.check_prune_fraction(config.prune_weak_prototypes, "--prune_weak_prototypes")
    check_same_architecture(run_dir, config)
    strategy = make_strategy(config.strategy)  # first: before TensorFlow's runtime starts
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    precision = resolve_precision(config.precision)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        with distribution.worker_directory(run_dir, strategy) as own_dir:
            return _run(config, run_dir, own_dir, strategy, precision, started,
                        extra_callbacks)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _run(config: TrainConfig, run_dir: pathlib.Path, own_dir: pathlib.Path,
         strategy: tf.distribute.Strategy, precision: str, started: float,
         extra_callbacks) -> dict | None:
    chief = distribution.is_chief(strategy)
    data = build_data(config)
    check_same_classes(run_dir, data.class_names)
    if chief and not (run_dir / MODEL_FILE).exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / CONFIG_FILE, config.to_dict())
        _write_class_names(run_dir, data.class_names)
    with strategy.scope():
        model = build_model(config, len(data.class_names), data.train.steps_per_epoch)
    model.set_background_loss_weight(config.background_loss)
    plan = phases.make_plan(config.epochs_pretrain, config.epochs, config.freeze_epochs,
                            config.finetune_epochs, loaded=bool(config.state_dict_dir_net),
                            freeze_backbone_group=config.freeze_backbone_group)
    for line in phases.describe_plan(plan):
        logging.info("%s", line)
    for warning in phases.plan_warnings(config.epochs_pretrain, config.epochs,
                                        config.freeze_epochs, config.finetune_epochs,
                                        loaded=bool(config.state_dict_dir_net)):
        logging.warning("%s", warning)
    rates = LearningRates(lr=config.lr, lr_block=config.lr_block, lr_net=config.lr_net,
                          weight_decay=config.weight_decay)
    runner = PlanRunner(
        model, plan, {1: data.pretrain, 2: data.train}, rates, own_dir, strategy=strategy,
        checkpoints_to_keep=config.checkpoints_to_keep,
        checkpoint_every_steps=config.checkpoint_every_steps, restore_dir=run_dir,
        fused_optimizer=use_fast_cpu_ops(config.fast_cpu_ops),
        loss_scale=precision == "mixed_float16",
        extra_callbacks=list(extra_callbacks), verbose=2 if chief else 0,
        background_pretrain=config.background_loss_pretrain,
    )
    epochs_run = runner.run()
    training_seconds = time.time() - started
    if not chief:
        logging.info("Training done on %s; the chief writes the outputs.",
                     distribution.task_name(strategy))
        return None
    if distribution.is_multi_worker(strategy):
        # Evaluation and saving run on the chief alone, which a multi-worker model (whose
        # every step is a collective of all workers) cannot do.
        model = _local_copy(model)

    before = evaluation.evaluate(model, data.test.dataset(config.batch_size))
    pruned = evaluation.prune_unused_prototypes(model, data.project.dataset(config.batch_size))
    weak = None
    if config.prune_weak_prototypes > 0:
        weak = evaluation.prune_weak_prototypes(model, config.prune_weak_prototypes)
        logging.info("Pruned weak prototypes (largest weight < %.2f of the mean class "
                     "maximum): %d weights zeroed, prototypes dropped: %s", weak["fraction"],
                     weak["zeroed_weights"], weak["emptied_prototypes"] or "none")
    after = evaluation.evaluate(model, data.test.dataset(config.batch_size))
    results = {
        **after,
        "pruned_prototypes": pruned,
        "pruned_weak_prototypes": weak,
        "before_pruning": before,
        "num_classes": len(data.class_names),
        "num_prototypes": model.num_features,
        "train_images": data.train.num_examples,
        "pretrain_images": data.pretrain.num_examples,  # --pretrain_data's, if given
        "precision": precision,
        "shrink_per_step": model.shrink,
    }
    timing = {"epochs_run_in_last_call": epochs_run,
              "training_seconds": round(training_seconds, 1)}
    model.save(str(run_dir / MODEL_FILE))
    write_json(run_dir / CONFIG_FILE, config.to_dict())  # describes the new model.keras
    _write_class_names(run_dir, data.class_names)
    write_json(run_dir / METRICS_FILE, results)
    write_json(run_dir / SCORING_SHEET_FILE,
               metrics.scoring_sheet(model.classifier.kernel.numpy(), data.class_names))
    if config.export:  # float32 graph whatever the training precision, verified
        from export.saved_model import export_saved_model

        export_saved_model(model, run_dir / SAVED_MODEL_DIR, class_names=data.class_names)
    timing["total_seconds"] = round(time.time() - started, 1)
    write_json(run_dir / TIMING_FILE, timing)
    logging.info(
        "Test top-1 %.3f | global size %d | local size %.1f (%.1f for the predicted class) | "
        "sparsity %.3f | abstained %d | %.0f s. Outputs in %s",
        results["top1_accuracy"], results["global_size"], results["local_size_all_classes"],
        results["local_size_predicted_class"], results["sparsity_ratio"], results["abstained"],
        timing["total_seconds"], run_dir,
    )
    return {**results, **timing}


def _write_class_names(run_dir: pathlib.Path, class_names: list[str]) -> None:
    atomic_write_text(run_dir / CLASS_NAMES_FILE, "\n".join(class_names) + "\n")


def _local_copy(model: PIPNet) -> PIPNet:
    """`model` rebuilt outside any tf.distribute strategy, with the same weights."""
    copy = PIPNet.from_config(model.get_config())
    copy.build((None, model.image_size, model.image_size, 3))
    copy.set_weights(model.get_weights())
    return copy
