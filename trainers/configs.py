"""Per-dataset training presets (frozen dataclasses); flags in `run.py` override fields."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; field names follow the reference's options."""

    dataset: str = "synthetic"
    data_dir: str = ""
    net: str = "convnext_tiny_26"
    weights: str = "imagenet"
    image_size: int = 224
    num_features: int = 0
    epochs: int = 60
    epochs_pretrain: int = 10
    freeze_epochs: int = 10
    finetune_epochs: int = 3
    batch_size: int = 64
    batch_size_pretrain: int = 128
    lr: float = 0.05
    lr_block: float = 5e-4
    lr_net: float = 5e-4
    weight_decay: float = 0.0
    bias: bool = False
    shrink: float = 1e-3
    seed: int = 1
    log_dir: str = "runs/pipnet"
    strategy: str = "auto"
    # "auto": mixed_bfloat16 where it is fast (a GPU, or a CPU with AVX512_BF16/AMX),
    # float32 elsewhere; or "float32" / "mixed_bfloat16" explicitly (BUILD_NOTES: speed).
    precision: str = "auto"
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

    def replace(self, **changes) -> "TrainConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"Unknown config fields: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, TrainConfig] = {
    # Built-in synthetic parts dataset: a from-scratch tiny CNN that trains on 2 CPU
    # cores in a few minutes (see BUILD_NOTES.md for how these were chosen).
    "synthetic": TrainConfig(
        dataset="synthetic",
        net="tiny_cnn",
        weights="none",
        precision="float32",
        image_size=64,
        epochs=60,
        epochs_pretrain=10,
        freeze_epochs=10,
        batch_size=32,
        batch_size_pretrain=64,
        lr=0.05,
        lr_block=5e-3,
        lr_net=5e-3,
        log_dir="runs/synthetic",
    ),
    # The paper's datasets with the reference's argument files (SPEC §3).
    "cub": TrainConfig(dataset="cub", log_dir="runs/cub"),
    "cars": TrainConfig(dataset="cars", log_dir="runs/cars"),
    "pets": TrainConfig(dataset="pets", lr_block=1e-4, lr_net=1e-4, log_dir="runs/pets"),
}


def preset(dataset: str) -> TrainConfig:
    """The preset for `dataset`; `folder:PATH` datasets use the CUB settings."""
    key = dataset.split(":", 1)[0]
    if key == "folder":
        return PRESETS["cub"].replace(dataset=dataset, log_dir="runs/folder")
    if key not in PRESETS:
        raise ValueError(
            f"Unknown --dataset={dataset!r}; choose one of {sorted(PRESETS)} or folder:PATH."
        )
    return PRESETS[key]
