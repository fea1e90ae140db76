"""Train, evaluate and export PIP-Net.

    python -m trainers.run                      # built-in synthetic dataset (default)
    python -m trainers.run --dataset=cars --data_dir=...

Writes to --log_dir: config.json, checkpoints/ (a killed run resumes where it stopped),
training_log.csv, tensorboard/, model.keras, metrics.json, scoring_sheet.json,
timing.json and saved_model/ (serving_default: uint8 images → scores, presence).
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags, logging  # noqa: E402

from pipnet_tf.cli import exit_on_user_error  # noqa: E402
from pipnet_tf.data.registry import DATASETS  # noqa: E402
from trainers.configs import TrainConfig, preset  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "synthetic", "; ".join(
    f"{name}: {entry.description}" for name, entry in DATASETS.items()))
flags.DEFINE_string("strategy", None, "auto (Mirrored if >1 GPU) | default | mirrored | "
                    "one_device | multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG; "
                    "start every worker with the same flags, same --log_dir)")
_FIELD_FLAGS = {
    "data_dir": (flags.DEFINE_string, "Where the dataset lies (raw layout or tfds data_dir)."),
    "net": (flags.DEFINE_string, "Backbone name (see pipnet_tf.backbones)."),
    "weights": (flags.DEFINE_string, "Backbone weights: imagenet | none | PATH."),
    "image_size": (flags.DEFINE_integer, "Input image size in pixels."),
    "num_features": (flags.DEFINE_integer, "Prototypes D; 0 = the backbone's channels."),
    "epochs": (flags.DEFINE_integer, "Epochs of the second (classification) phase."),
    "epochs_pretrain": (flags.DEFINE_integer, "Epochs of prototype pretraining."),
    "freeze_epochs": (flags.DEFINE_integer, "Phase-2 epochs with the backbone group frozen."),
    "finetune_epochs": (flags.DEFINE_integer, "First phase-2 epochs training only the classifier."),
    "batch_size": (flags.DEFINE_integer, "Phase-2 batch size (image pairs)."),
    "batch_size_pretrain": (flags.DEFINE_integer, "Pretraining batch size (image pairs)."),
    "lr": (flags.DEFINE_float, "Scoring-sheet learning rate."),
    "lr_block": (flags.DEFINE_float, "Learning rate of the last backbone stages."),
    "lr_net": (flags.DEFINE_float, "Learning rate of the rest of the backbone."),
    "weight_decay": (flags.DEFINE_float, "AdamW weight decay of the network."),
    "bias": (flags.DEFINE_bool, "Non-negative bias in the scoring sheet."),
    "shrink": (flags.DEFINE_float, "Per-step shrinkage of the scoring sheet."),
    "seed": (flags.DEFINE_integer, "Random seed."),
    "precision": (flags.DEFINE_string, "auto | float32 | mixed_bfloat16 | mixed_float16 "
                  "(auto: bf16 on GPUs that have it and AVX512_BF16/AMX CPUs, float16 with "
                  "loss scaling on older GPUs, else float32)."),
    "fast_cpu_ops": (flags.DEFINE_string, "auto | on | off: the CPU-specialised kernels "
                     "(auto: when no GPU is visible; off: stock Keras/TF ops)."),
    "checkpoint_every_steps": (flags.DEFINE_integer, "Also checkpoint every N batches "
                               "within an epoch (0: after every epoch only)."),
    "deterministic": (flags.DEFINE_bool, "Op determinism and fixed seeds: a killed and "
                      "resumed run ends bit-identical to an uninterrupted one."),
    "inter_op_threads": (flags.DEFINE_integer, "TensorFlow inter-op threads; 0 = its default."),
    "cache_dir": (flags.DEFINE_string, "Where the built-in dataset is generated."),
    "export": (flags.DEFINE_bool, "Write the SavedModel at the end."),
    "validation_size": (flags.DEFINE_float, "Test fraction per class for a class-folder tree "
                        "without train/ and test/ subfolders."),
    "download": (flags.DEFINE_bool, "Let tensorflow-datasets download and prepare cub, cars "
                 "or pets when they are not in --data_dir (needs internet)."),
    "augment": (flags.DEFINE_string, "Augmentation geometry: cub | cub_pretrain | cars | pets "
                "| partimagenet; empty = the dataset's own (SPEC section 5)."),
    "cache_images": (flags.DEFINE_bool, "Keep decoded, resized images in memory."),
}
for _name, (_define, _help) in _FIELD_FLAGS.items():
    _define(_name, None, _help + " Default: the dataset preset's.")


def resolve_config() -> TrainConfig:
    """The dataset preset with every flag given on the command line applied."""
    config = preset(FLAGS.dataset).replace(dataset=FLAGS.dataset)
    changes = {name: FLAGS[name].value for name in _FIELD_FLAGS if FLAGS[name].value is not None}
    if FLAGS.strategy is not None:
        changes["strategy"] = FLAGS.strategy
    # --log_dir (the reference's name for the run directory) is defined by absl.logging
    # itself; its default is empty.
    if FLAGS.log_dir:
        changes["log_dir"] = FLAGS.log_dir
    return config.replace(**changes)


@exit_on_user_error("trainers.run")
def main(argv):
    del argv
    from trainers.experiment import run_training

    config = resolve_config()
    if config.inter_op_threads:
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(config.inter_op_threads)
    run_training(config)


if __name__ == "__main__":
    app.run(main)
