"""The dataset registry: every dataset name and everything about it, in one place.

`DATASETS[name]` holds how its files are found (`sources.find_*`), which image sets use
bounding-box crops, which augmentation variants its two phases use (SPEC §5), and whether
it has part annotations. `parse_dataset("folder:/data/x")` splits a `--dataset` value;
`open_dataset(request)` finds the files.

| name | found by | crops (pretrain / train / test / project) | augment (pretrain / train) |
|---|---|---|---|
| synthetic | generated | none | cub / cub |
| creatures | generated | full / crop / crop / full | cub_pretrain / cub |
| creatures_demo | generated | full / crop / crop / full | cub_pretrain / cub |
| cub | CUB layout or tfds | full / crop / crop / full | cub_pretrain / cub |
| cars | devkit, class folders or tfds | none | cars / cars |
| pets | Pet layout, class folders or tfds | none | pets / pets |
| folder:PATH | class folders | none | cub / cub |

CUB as the authors: pretraining and projection (pruning, prototype pictures, purity) use
the full images, phase-2 training and testing the bounding-box crops.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from pipnet_tf.data import sources
from pipnet_tf.data.sources import DatasetRequest, DatasetSource


@dataclasses.dataclass(frozen=True)
class DatasetPolicy:
    """How PIP-Net treats a dataset's images.

    Attributes:
        crop_pretrain / crop_train / crop_test / crop_project: whether the pretraining
            views, the phase-2 training views, the test images and the projection images
            are cut to their bounding boxes (images without a box stay whole).
        augment / pretrain_augment: `AugmentConfig.for_image_size` variants of phase 2
            and of pretraining.
        part_annotations: the dataset can carry part locations (CUB layouts), so
            purity can be computed.
    """

    crop_pretrain: bool = False
    crop_train: bool = False
    crop_test: bool = False
    crop_project: bool = False
    augment: str = "cub"
    pretrain_augment: str = "cub"
    part_annotations: bool = False

    @property
    def crops_any(self) -> bool:
        return self.crop_pretrain or self.crop_train or self.crop_test or self.crop_project


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its finder, its policy and a one-line description."""

    name: str
    find: Callable[[DatasetRequest], DatasetSource]
    policy: DatasetPolicy
    description: str
    takes_path: bool = False  # "NAME:PATH" is allowed


# CUB as the authors treat it (module docstring), shared by the CUB-layout datasets.
CUB_LAYOUT_POLICY = DatasetPolicy(crop_train=True, crop_test=True,
                                  pretrain_augment="cub_pretrain", part_annotations=True)

DATASETS: dict[str, DatasetEntry] = {
    "synthetic": DatasetEntry(
        "synthetic", sources.find_synthetic,
        DatasetPolicy(part_annotations=True),
        "the built-in parts dataset (generated, nothing to download)"),
    "creatures": DatasetEntry(
        "creatures", sources.find_creatures,
        CUB_LAYOUT_POLICY,
        "the built-in creatures benchmark: CUB layout, 10 annotated parts, clutter, leaves"),
    "creatures_demo": DatasetEntry(
        "creatures_demo", sources.find_creatures_demo,
        CUB_LAYOUT_POLICY,
        "make demo's dataset: six of the creatures benchmark's classes (colour pairs, OR)"),
    "cub": DatasetEntry(
        "cub", sources.find_cub,
        CUB_LAYOUT_POLICY,
        "CUB-200-2011 (raw layout or tfds caltech_birds2011)"),
    "cars": DatasetEntry(
        "cars", sources.find_cars, DatasetPolicy(augment="cars", pretrain_augment="cars"),
        "Stanford Cars (devkit release, class folders or tfds cars196)"),
    "pets": DatasetEntry(
        "pets", sources.find_pets, DatasetPolicy(augment="pets", pretrain_augment="pets"),
        "Oxford-IIIT Pet (raw layout, class folders or tfds oxford_iiit_pet)"),
    "folder": DatasetEntry(
        "folder", sources.find_folder, DatasetPolicy(),
        "any folder of class sub-folders: folder:PATH", takes_path=True),
}


def parse_dataset(spec: str) -> tuple[str, str]:
    """`--dataset` value → (registry name, path): "cub" → ("cub", ""),
    "folder:/data/x" → ("folder", "/data/x").

    Raises:
        ValueError: an unknown name, or a path given to a dataset that takes none.
    """
    name, _, path = str(spec).partition(":")
    if name not in DATASETS:
        raise ValueError(
            f"Unknown --dataset={spec!r}; choose one of {sorted(DATASETS)} "
            f"(folder as folder:PATH).")
    if path and not DATASETS[name].takes_path:
        raise ValueError(f"--dataset={spec!r}: {name!r} takes no path; use "
                         f"--dataset={name} --data_dir={path}.")
    return name, path


def open_dataset(request: DatasetRequest) -> DatasetSource:
    """Finds the files of `request.name` (see `sources`).

    Raises:
        DatasetUnavailableError: nothing readable where the dataset should be.
        ValueError: the dataset is malformed.
    """
    return DATASETS[request.name].find(request)


def policy(name: str, augment_override: str = "") -> DatasetPolicy:
    """The policy of dataset `name`; `augment_override` (`--augment`) sets both phases'
    augmentation variant."""
    result = DATASETS[name].policy
    if augment_override:
        result = dataclasses.replace(result, augment=augment_override,
                                     pretrain_augment=augment_override)
    return result
