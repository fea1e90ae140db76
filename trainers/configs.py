"""Per-dataset training presets (`TrainConfig`s); flags in `run.py` override fields."""
from __future__ import annotations

from pipnet_tf.config import TrainConfig
from pipnet_tf.data.registry import parse_dataset

__all__ = ["PRESETS", "TrainConfig", "preset"]

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
        inter_op_threads=1,  # 15% faster on 2 CPU cores, same results (BUILD_NOTES)
        log_dir="runs/synthetic",
    ),
    # The paper's datasets with the reference's argument files (SPEC §3).
    "cub": TrainConfig(dataset="cub", log_dir="runs/cub"),
    "cars": TrainConfig(dataset="cars", log_dir="runs/cars"),
    "pets": TrainConfig(dataset="pets", lr_block=1e-4, lr_net=1e-4, log_dir="runs/pets"),
}


def preset(dataset: str) -> TrainConfig:
    """The preset for `dataset` (a `--dataset` value); `folder:PATH` datasets use the CUB
    settings. Raises ValueError for a dataset the registry does not know."""
    name, _ = parse_dataset(dataset)
    if name == "folder":
        return PRESETS["cub"].replace(dataset=dataset, log_dir="runs/folder")
    return PRESETS[name].replace(dataset=dataset)
