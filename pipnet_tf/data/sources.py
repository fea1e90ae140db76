"""Finds a dataset on disk: `cub`, `cars`, `pets` (raw layouts or prepared tfds builders)
and `folder` (class folders), as a `DatasetSource` of file records.

Order of the search for `--dataset=NAME --data_dir=DIR`:
- cub: the CUB-200-2011 layout at DIR (or DIR/CUB_200_2011), else tfds
  `caltech_birds2011` prepared in DIR (or in tfds's default data dir without DIR);
- cars: the Stanford Cars release at DIR (`pipnet_tf.data.cars`), else class folders
  DIR/train/<class>/ + DIR/test/<class>/, else tfds `cars196`;
- pets: the Oxford-IIIT Pet layout at DIR (`pipnet_tf.data.pets`), else class folders,
  else tfds `oxford_iiit_pet`;
- folder:PATH (or folder with DIR): `pipnet_tf.data.folder`.
Nothing is downloaded unless `download=True`; a missing dataset raises
`DatasetUnavailableError` whose message says what to place where.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from pipnet_tf.data import cars as cars_lib
from pipnet_tf.data import pets as pets_lib
from pipnet_tf.data.cub import CubLayout, ImageRecords, load_cub_layout
from pipnet_tf.data.folder import load_image_folder

DATASETS = ("cub", "cars", "pets", "folder")


class DatasetUnavailableError(RuntimeError):
    """The requested dataset cannot be found or read; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """Train/test file records of one dataset plus how PIP-Net treats it (SPEC §5).

    Attributes:
        name: "cub", "cars", "pets", "folder" or "synthetic".
        origin: where the data was found, for the logs.
        crop_to_bbox: phase-2 training and testing use bounding-box crops (CUB); the
            pretraining and projection sets use the full images.
        augment / pretrain_augment: `AugmentConfig.for_image_size` dataset keys.
    """

    name: str
    origin: str
    class_names: list[str]
    train: ImageRecords
    test: ImageRecords
    part_names: list[str] = dataclasses.field(default_factory=list)
    crop_to_bbox: bool = False
    augment: str = "cub"
    pretrain_augment: str = "cub"
    root: pathlib.Path | None = None


def from_cub_layout(layout: CubLayout, name: str, origin: str, crop_to_bbox: bool,
                    augment: str, pretrain_augment: str) -> DatasetSource:
    return DatasetSource(name, origin, list(layout.class_names), layout.split("train"),
                         layout.split("test"), list(layout.part_names), crop_to_bbox, augment,
                         pretrain_augment, layout.root)


def _has_class_folders(root: pathlib.Path) -> bool:
    return (root / "train").is_dir()


def _tfds(key: str, data_dir: str, cache_dir: str | os.PathLike, download: bool,
          help_text: str) -> CubLayout:
    from pipnet_tf.data.tfds_sources import (
        BUILDERS,
        TfdsDataUnavailable,
        materialize_tfds,
    )

    name = BUILDERS[key]
    try:
        return load_cub_layout(materialize_tfds(name, data_dir or None, cache_dir, download))
    except TfdsDataUnavailable as e:
        where = repr(data_dir) if data_dir else "tfds's default data dir (~/tensorflow_datasets)"
        given = f"--data_dir={data_dir!r}" if data_dir else "no --data_dir given"
        raise DatasetUnavailableError(
            f"--dataset={key!r}: no dataset files found ({given}) and {e}. {help_text} "
            f"Or prepare the tfds builder "
            f"{name!r} in {where} (`tfds build {name} --data_dir=DIR` on a machine with "
            f"internet, then --data_dir=DIR; or add --download). The built-in dataset needs "
            f"nothing: --dataset=synthetic.") from e


_CUB_HELP = ("Download CUB_200_2011.tgz (https://www.vision.caltech.edu/datasets/cub_200_2011/), "
             "extract it so that DIR/CUB_200_2011/images.txt, images/, bounding_boxes.txt and "
             "parts/ exist, and pass --data_dir=DIR.")
_CARS_HELP = ("Place the Stanford Cars release in DIR (DIR/cars_train/, DIR/cars_test/, "
              "DIR/devkit/cars_meta.mat, DIR/devkit/cars_train_annos.mat, "
              "DIR/cars_test_annos_withlabels.mat; reading .mat needs scipy) or class folders "
              "DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg, and pass --data_dir=DIR.")
_PETS_HELP = ("Extract images.tar.gz and annotations.tar.gz of Oxford-IIIT Pet into DIR "
              "(DIR/images/*.jpg, DIR/annotations/trainval.txt and test.txt) or use class "
              "folders DIR/train/<class>/ and DIR/test/<class>/, and pass --data_dir=DIR.")


# dataset → (title, is its original layout?, reader, tfds builder, what to place where).
_RAW_LAYOUTS = {
    "cars": ("Stanford Cars", cars_lib.is_cars_devkit, cars_lib.load_cars_devkit, "cars196",
             _CARS_HELP),
    "pets": ("Oxford-IIIT Pet", pets_lib.is_pets_layout, pets_lib.load_pets_layout,
             "oxford_iiit_pet", _PETS_HELP),
}


def _folder(key: str, root: pathlib.Path, validation_size: float, seed: int,
            augment: str) -> DatasetSource:
    data = load_image_folder(root, validation_size, seed)
    return DatasetSource(key, f"image folders at {root}", data.class_names, data.train,
                         data.test, augment=augment, pretrain_augment=augment, root=data.root)


def load_source(dataset: str, data_dir: str = "", cache_dir: str | os.PathLike = ".cache",
                validation_size: float = 0.2, seed: int = 0,
                download: bool = False) -> DatasetSource:
    """The `DatasetSource` for `--dataset=dataset` (see the module docstring).

    Raises:
        DatasetUnavailableError: nothing readable where the dataset should be.
        ValueError: `dataset` is unknown, or a found dataset is malformed.
    """
    key, _, path = dataset.partition(":")
    root = pathlib.Path(path or data_dir).expanduser() if (path or data_dir) else None
    if key == "folder":
        if root is None:
            raise DatasetUnavailableError(
                "--dataset='folder' needs a path: --dataset=folder:PATH or --data_dir=PATH, "
                "with PATH/train/<class>/* and PATH/test/<class>/*, or PATH/<class>/* "
                "(split by --validation_size).")
        try:
            return _folder("folder", root, validation_size, seed, "cub")
        except FileNotFoundError as e:
            raise DatasetUnavailableError(
                f"--dataset={dataset!r}: {e}. Place images as PATH/train/<class>/* and "
                f"PATH/test/<class>/*, or PATH/<class>/* split by --validation_size; the "
                f"built-in dataset needs nothing: --dataset=synthetic.") from e
    if key == "cub":
        if root is not None and any((root / d / "images.txt").is_file()
                                    for d in (".", "CUB_200_2011")):
            layout = load_cub_layout(root)
            return from_cub_layout(layout, "cub", f"CUB layout at {layout.root}", True, "cub",
                                   "cub_pretrain")
        layout = _tfds("cub", data_dir, cache_dir, download, _CUB_HELP)
        return from_cub_layout(layout, "cub", "tfds caltech_birds2011", True, "cub",
                               "cub_pretrain")
    if key in _RAW_LAYOUTS:
        # The dataset's original release, then class folders, then its tfds builder.
        title, is_layout, load_layout, builder, help_text = _RAW_LAYOUTS[key]
        if root is not None and is_layout(root):
            data = load_layout(root)
            return DatasetSource(key, f"{title} at {data.root}", data.class_names, data.train,
                                 data.test, augment=key, pretrain_augment=key, root=data.root)
        if root is not None and _has_class_folders(root):
            return _folder(key, root, validation_size, seed, key)
        layout = _tfds(key, data_dir, cache_dir, download, help_text)
        return from_cub_layout(layout, key, f"tfds {builder}", False, key, key)
    raise ValueError(f"Unknown --dataset={dataset!r}; choose one of {DATASETS} or folder:PATH")
