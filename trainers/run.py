"""Train, evaluate and export PIP-Net.

    python -m trainers.run                      # built-in synthetic dataset (default)
    python -m trainers.run --dataset=cars --data_dir=...

Writes to --log_dir: config.json, checkpoints/ (a killed run resumes where it stopped),
training_log.csv, tensorboard/, model.keras, metrics.json, scoring_sheet.json,
timing.json and saved_model/ (serving_default: uint8 images → scores, presence).

The training plan (SPEC §3; logged at the start of every run), in epochs:

    pretrain  EPOCHS_PRETRAIN                        freeze, train, add_on groups
    finetune  F = min(FINETUNE_EPOCHS, EPOCHS)       the classifier only (0 without pretraining)
    frozen    max(0, min(FREEZE_EPOCHS, EPOCHS) - F) all but the backbone group
    full      EPOCHS - F - frozen                    everything

--freeze_epochs counts the finetune epochs: --epochs=3 --freeze_epochs=1
--finetune_epochs=1 has no frozen stage (1 finetune + 2 full epochs).

Bad input (unknown dataset, missing files, bad flags) exits with status 2 and one line
on stderr; -v 1 adds the traceback.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import flags  # noqa: E402

from pipnet_tf.cli import exit_on_user_error, run_app  # noqa: E402
from pipnet_tf.data.registry import DATASETS  # noqa: E402
from trainers.configs import TrainConfig, resolve_recipe  # noqa: E402

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
    "backbone_width": (flags.DEFINE_integer, "tiny_cnn's stem channels (it has 4x as many "
                       "prototypes); 0 = its default (16)."),
    "backbone_depth": (flags.DEFINE_integer, "tiny_cnn's 3x3 convs in its last stage (each "
                       "extra one widens the receptive field by 16 px); 0 = its default (1)."),
    "epochs": (flags.DEFINE_integer, "Epochs of the second (classification) phase, all of "
               "its stages together: finetune + frozen + full (>= 1)."),
    "epochs_pretrain": (flags.DEFINE_integer, "Epochs of prototype pretraining (phase 1: "
                        "the network without the backbone group unless "
                        "--nofreeze_backbone_group; no classifier)."),
    "freeze_epochs": (flags.DEFINE_integer, "The first FREEZE_EPOCHS phase-2 epochs keep the "
                      "backbone group frozen; they INCLUDE the finetune epochs, so the "
                      "frozen stage has freeze_epochs - finetune_epochs epochs."),
    "freeze_backbone_group": (flags.DEFINE_bool, "Keep the backbone group (the backbone's "
                              "first stages) frozen in pretraining and the frozen stage, as "
                              "the reference does with ImageNet weights; "
                              "--nofreeze_backbone_group trains it from the first epoch."),
    "finetune_epochs": (flags.DEFINE_integer, "The first phase-2 epochs train only the "
                        "classifier (only after pretraining; counted in --freeze_epochs)."),
    "batch_size": (flags.DEFINE_integer, "Phase-2 batch size (image pairs)."),
    "batch_size_pretrain": (flags.DEFINE_integer, "Pretraining batch size (image pairs)."),
    "lr": (flags.DEFINE_float, "Scoring-sheet learning rate."),
    "lr_block": (flags.DEFINE_float, "Learning rate of the last backbone stages."),
    "lr_net": (flags.DEFINE_float, "Learning rate of the rest of the backbone."),
    "weight_decay": (flags.DEFINE_float, "AdamW weight decay of the network."),
    "bias": (flags.DEFINE_bool, "Non-negative bias in the scoring sheet."),
    "shrink": (flags.DEFINE_float, "Per-step shrinkage of the scoring sheet."),
    "shrink_per_epoch": (flags.DEFINE_float, "> 0: the per-step shrinkage is this divided by "
                         "the phase-2 steps per epoch (overrides --shrink)."),
    "prune_weak_prototypes": (flags.DEFINE_float, "After training, drop the prototypes whose "
                              "largest weight is below this fraction of the mean of the "
                              "classes' largest weights; every class keeps its strongest "
                              "connection (0: off, the reference)."),
    "seed": (flags.DEFINE_integer, "Random seed."),
    "precision": (flags.DEFINE_string, "auto | float32 | mixed_bfloat16 | mixed_float16 "
                  "(auto: bf16 on GPUs that have it and AVX512_BF16/AMX CPUs, float16 with "
                  "loss scaling on older GPUs, else float32). Exports are float32 graphs, "
                  "checked against the float32 copy of the model."),
    "fast_cpu_ops": (flags.DEFINE_string, "auto | on | off: the CPU-specialised kernels "
                     "(auto: when no GPU is visible; off: stock Keras/TF ops)."),
    "checkpoint_every_steps": (flags.DEFINE_integer, "Also checkpoint every N batches "
                               "within an epoch (0: after every epoch only)."),
    "deterministic": (flags.DEFINE_bool, "Op determinism and fixed seeds: a killed and "
                      "resumed run ends bit-identical to an uninterrupted one."),
    "inter_op_threads": (flags.DEFINE_integer, "TensorFlow inter-op threads; 0 = its default."),
    "cache_dir": (flags.DEFINE_string, "Cache of generated and converted images: the "
                  "built-in dataset, odd images (CMYK, EXIF-rotated, ...) converted to PNG "
                  "(converted/) and tfds datasets unpacked to files (tfds/); relative to "
                  "the current directory (preset: .cache/pipnet_tf)."),
    "export": (flags.DEFINE_bool, "Write the SavedModel at the end."),
    "validation_size": (flags.DEFINE_float, "Test fraction per class for a class-folder tree "
                        "without train/ and test/ subfolders."),
    "download": (flags.DEFINE_bool, "Let tensorflow-datasets download and prepare cub, cars "
                 "or pets when they are not in --data_dir (needs internet)."),
    "augment": (flags.DEFINE_string, "Augmentation geometry: cub | cub_pretrain | cars | pets "
                "| partimagenet; empty = the dataset's own (SPEC section 5)."),
    "cache_images": (flags.DEFINE_bool, "Keep decoded, resized images in memory."),
    "pretrain_data": (flags.DEFINE_string, "folder:PATH: pretrain the prototypes (L_A + L_T, "
                      "no labels) on every image under PATH; the labelled set is then used for "
                      "the classification phases."),
    "pretrain_include_train": (flags.DEFINE_bool, "With --pretrain_data: pretrain on those "
                               "images and the labelled training images (whose bounding "
                               "boxes keep --background_loss on for them)."),
    "train_box_margin": (flags.DEFINE_float, "Grow phase-2 bounding-box crops by up to this "
                         "fraction of the box per side, anew each epoch (0: exact crops)."),
    "train_box_margin_prob": (flags.DEFINE_float, "The fraction of phase-2 crops that get "
                              "--train_box_margin; the others are the exact box."),
    "pretrain_box_margin": (flags.DEFINE_float, "Pretrain on bounding-box crops grown by up "
                            "to this fraction of the box per side (negative: the dataset's "
                            "choice; CUB pretrains on full images)."),
    "background_loss": (flags.DEFINE_float, "Weight of the background loss (ours): the "
                        "prototypes the scoring sheet uses are penalised for firing outside "
                        "the object's bounding box, in every phase whose images have boxes "
                        "(CUB layout); 0: off, as the reference."),
    "background_loss_pretrain": (flags.DEFINE_string, "The background loss in pretraining: "
                                 "ramp (with λ_A's ramp) | ramp:N (over the first N pretraining "
                                 "epochs) | off (from phase 2 on, once the "
                                 "scoring sheet weighs the prototypes) | full."),
    "state_dict_dir_net": (flags.DEFINE_string, "A checkpoint of the authors' PyTorch PIP-Net "
                           "(net_pretrained, net_trained, …) to start from; with "
                           "--epochs_pretrain=0 training continues from its prototypes."),
}
for _name, (_define, _help) in _FIELD_FLAGS.items():
    _define(_name, None, _help + " Default: the dataset preset's.")
# --log_dir (the reference's name for the run directory) is absl.logging's own flag: list
# it under this module in --help, with what it means here.
FLAGS["log_dir"].help = ("The run directory: config.json, checkpoints/, model.keras, "
                         "metrics.json, saved_model/, ... Rerunning with the same --log_dir "
                         "resumes. Default: the dataset preset's (runs/DATASET).")
flags.declare_key_flag("log_dir")


def resolve_config() -> TrainConfig:
    """The dataset's preset (and recipe) with every flag given on the command line applied."""
    changes = {name: FLAGS[name].value for name in _FIELD_FLAGS if FLAGS[name].value is not None}
    if FLAGS.strategy is not None:
        changes["strategy"] = FLAGS.strategy
    if FLAGS.log_dir:  # absl.logging's flag; its default is empty
        changes["log_dir"] = FLAGS.log_dir
    return resolve_recipe(FLAGS.dataset, changes)


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
    run_app(main)
