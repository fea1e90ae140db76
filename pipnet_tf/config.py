"""`TrainConfig`: every setting of a training run, as a frozen dataclass.

Field names follow the reference's options. The trainer's per-dataset presets
(`trainers/configs.py`) and command-line flags fill it in; the resolved config is written
to the run directory as `config.json` and read back with `TrainConfig.from_dict`.
"""
from __future__ import annotations

import dataclasses

from absl import logging


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; field names follow the reference's options."""

    dataset: str = "synthetic"
    data_dir: str = ""
    net: str = "convnext_tiny_26"
    weights: str = "imagenet"
    image_size: int = 224
    num_features: int = 0
    backbone_width: int = 0  # tiny_cnn's stem channels (4x = its prototypes); 0: default
    backbone_depth: int = 0  # tiny_cnn's 3x3 convs in its last stage; 0: default (1)
    epochs: int = 60
    epochs_pretrain: int = 10
    freeze_epochs: int = 10
    finetune_epochs: int = 3
    # False: the backbone group trains in pretraining and the frozen stage too (for
    # backbones trained from scratch; `phases.make_plan`).
    freeze_backbone_group: bool = True
    batch_size: int = 64
    batch_size_pretrain: int = 128
    lr: float = 0.05
    lr_block: float = 5e-4
    lr_net: float = 5e-4
    weight_decay: float = 0.0
    bias: bool = False
    shrink: float = 1e-3
    # > 0: the per-step shrink is this / phase-2 steps per epoch instead of `shrink`, so the
    # scoring sheet sparsifies per epoch as the reference's does on CUB (93 steps × 1e-3)
    # whatever the dataset size.
    shrink_per_epoch: float = 0.0
    # After training (and the reference's pruning of unused prototypes), drop the prototypes
    # whose largest weight is below this fraction of the mean of the classes' largest
    # weights (each class keeps its strongest connection); 0 = off, the reference
    # (`metrics.weak_prototype_connections`, BUILD_NOTES #14).
    prune_weak_prototypes: float = 0.0
    seed: int = 1
    log_dir: str = "runs/pipnet"
    # auto (Mirrored with > 1 GPU, else default) | default | mirrored | one_device |
    # multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG).
    strategy: str = "auto"
    # "auto": mixed_bfloat16 where it is fast (a GPU that has bf16, or a CPU with
    # AVX512_BF16/AMX), mixed_float16 with loss scaling on older GPUs, float32 elsewhere;
    # or "float32" / "mixed_bfloat16" / "mixed_float16" explicitly (BUILD_NOTES: speed).
    precision: str = "auto"
    # Where the CPU-specialised kernels run (cpu_fast_ops, FusedAdamW): auto = when no
    # GPU is visible; on; off (stock Keras/TF ops). Part of the backbone's config.
    fast_cpu_ops: str = "auto"
    # Also checkpoint every N batches within an epoch (0: after every epoch only).
    checkpoint_every_steps: int = 0
    # tf.config.experimental.enable_op_determinism() with the seeds fixed: a killed and
    # resumed run ends bit-identical to an uninterrupted one (BUILD_NOTES: its cost).
    deterministic: bool = False
    inter_op_threads: int = 0  # 0 = TensorFlow's default; 1 is faster on 2-core CPUs
    cache_dir: str = ".cache/pipnet_tf"
    checkpoints_to_keep: int = 2
    export: bool = True
    # Size of the built-in dataset (images per class); smaller for quick smoke runs.
    synthetic_train_per_class: int = 120
    synthetic_test_per_class: int = 50
    # Datasets (issue #4): held-out fraction per class for a single class-folder tree,
    # tfds download permission, augmentation override and the in-memory image cache.
    validation_size: float = 0.2
    download: bool = False
    augment: str = ""
    cache_images: bool = True
    # Phase-2 bounding-box crops grown by up to this fraction of the box on each side,
    # drawn anew every epoch (0 = the reference's exact crop; pipeline.expanded_box).
    train_box_margin: float = 0.0
    # The fraction of phase-2 crops that get that margin; the others are the exact box.
    train_box_margin_prob: float = 1.0
    # Pretraining (phase 1) on bounding-box crops grown by up to this fraction of the box per
    # side instead of the dataset's own choice (negative; CUB: full images, as the reference).
    pretrain_box_margin: float = -1.0
    # λ_B of the background loss (ours; losses.background_loss): the prototypes the scoring
    # sheet uses are kept from firing outside the object's bounding box, in every phase
    # whose images have boxes (0 = off, the reference).
    background_loss: float = 0.0
    # λ_B in pretraining: "ramp" (with λ_A), "ramp:N" (over N epochs), "off" (from phase 2
    # on) or "full" (phases.background_scale_for_epoch).
    background_loss_pretrain: str = "ramp"
    # Self-supervised pretraining on these images instead of the labelled training set
    # ("folder:PATH": every image under PATH, labels ignored); phase 2 uses the labelled set.
    pretrain_data: str = ""
    # With pretrain_data: pretrain on those images and the labelled training images (with
    # their bounding boxes, so the background loss applies to them), not on those alone.
    pretrain_include_train: bool = False
    # Hand edits of a trained run (`trainers.edit`), oldest first: source run, prototypes
    # disabled / enabled, the resulting disabled set, classifier retraining settings.
    edits: list = dataclasses.field(default_factory=list)
    # A PIP-Net checkpoint of the authors' PyTorch code to start from (the reference's
    # option; `pipnet_tf.reference_checkpoint`); empty: start from `weights`.
    state_dict_dir_net: str = ""

    def replace(self, **changes) -> "TrainConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"Unknown config fields: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def backbone_options(self) -> dict:
        """Keyword options of `build_backbone` that this config sets (tiny_cnn's width and
        depth)."""
        options = {"width": self.backbone_width, "depth": self.backbone_depth}
        return {name: value for name, value in options.items() if value}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The config of a `config.json`; keys this version does not know are ignored
        (with a warning), missing ones take the defaults above."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            logging.warning("Ignoring config keys this pipnet-tf does not know: %s", unknown)
        return cls(**{k: v for k, v in values.items() if k in known})
