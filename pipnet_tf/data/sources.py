"""Finds a dataset's files on disk, as a `DatasetSource` of train/test file records.

One finder per dataset; `pipnet_tf.data.registry` maps names to them. The search for
`--dataset=NAME --data_dir=DIR`:
- synthetic: generated once into `cache_dir` (`pipnet_tf.data.synthetic`);
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
import pathlib

from pipnet_tf.data import cars as cars_lib
from pipnet_tf.data import pets as pets_lib
from pipnet_tf.data.cub import CubLayout, ImageRecords, load_cub_layout
from pipnet_tf.data.folder import load_image_folder
from pipnet_tf.data.records import LabelledSplits


class DatasetUnavailableError(RuntimeError):
    """The requested dataset cannot be found or read; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetRequest:
    """What the user asked for: `--dataset=NAME[:PATH]` and the flags that locate it.

    `path` is the part after "NAME:" (empty without); `data_dir` is `--data_dir`.
    `image_size` and the two `synthetic_*` counts shape the built-in dataset only.
    """

    name: str
    path: str = ""
    data_dir: str = ""
    cache_dir: str = ".cache/pipnet_tf"
    validation_size: float = 0.2
    seed: int = 0
    download: bool = False
    image_size: int = 64
    synthetic_train_per_class: int = 120
    synthetic_test_per_class: int = 50

    @property
    def root(self) -> pathlib.Path | None:
        where = self.path or self.data_dir
        return pathlib.Path(where).expanduser() if where else None


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """Train/test file records of one dataset as found on disk.

    Attributes:
        name: the registry name ("cub", "cars", "pets", "folder" or "synthetic").
        origin: where the data was found, for the logs.
        part_names: names of the annotated parts (CUB layouts), else empty.
        default_ood: OoD image folders that come with the dataset (name → path).
    """

    name: str
    origin: str
    class_names: list[str]
    train: ImageRecords
    test: ImageRecords
    part_names: list[str] = dataclasses.field(default_factory=list)
    root: pathlib.Path | None = None
    default_ood: dict[str, str] = dataclasses.field(default_factory=dict)


def _from_cub(layout: CubLayout, name: str, origin: str, **extra) -> DatasetSource:
    return DatasetSource(name, origin, list(layout.class_names), layout.split("train"),
                         layout.split("test"), list(layout.part_names), layout.root, **extra)


def _from_splits(data: LabelledSplits, name: str, origin: str) -> DatasetSource:
    return DatasetSource(name, origin, data.class_names, data.train, data.test, root=data.root)


def _tfds(key: str, request: DatasetRequest, help_text: str) -> CubLayout:
    from pipnet_tf.data.tfds_sources import (
        BUILDERS,
        TfdsDataUnavailable,
        materialize_tfds,
    )

    name, data_dir = BUILDERS[key], request.data_dir
    try:
        return load_cub_layout(materialize_tfds(name, data_dir or None, request.cache_dir,
                                                request.download))
    except TfdsDataUnavailable as e:
        where = repr(data_dir) if data_dir else "tfds's default data dir (~/tensorflow_datasets)"
        given = f"--data_dir={data_dir!r}" if data_dir else "no --data_dir given"
        raise DatasetUnavailableError(
            f"--dataset={key!r}: no dataset files found ({given}) and {e}. {help_text} "
            f"Or prepare the tfds builder "
            f"{name!r} in {where} (`tfds build {name} --data_dir=DIR` on a machine with "
            f"internet, then --data_dir=DIR; or add --download). The built-in dataset needs "
            f"nothing: --dataset=synthetic.") from e


CUB_HELP = ("Download CUB_200_2011.tgz (https://www.vision.caltech.edu/datasets/cub_200_2011/), "
            "extract it so that DIR/CUB_200_2011/images.txt, images/, bounding_boxes.txt and "
            "parts/ exist, and pass --data_dir=DIR.")
CARS_HELP = ("Place the Stanford Cars release in DIR (DIR/cars_train/, DIR/cars_test/, "
             "DIR/devkit/cars_meta.mat, DIR/devkit/cars_train_annos.mat, "
             "DIR/cars_test_annos_withlabels.mat; reading .mat needs scipy) or class folders "
             "DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg, and pass --data_dir=DIR.")
PETS_HELP = ("Extract images.tar.gz and annotations.tar.gz of Oxford-IIIT Pet into DIR "
             "(DIR/images/*.jpg, DIR/annotations/trainval.txt and test.txt) or use class "
             "folders DIR/train/<class>/ and DIR/test/<class>/, and pass --data_dir=DIR.")
FOLDER_HELP = ("Place images as PATH/train/<class>/* and PATH/test/<class>/*, or PATH/<class>/* "
               "split by --validation_size; the built-in dataset needs nothing: "
               "--dataset=synthetic.")


def _builtin(request: DatasetRequest, kind: str, image_size: int,
             **spec_fields) -> DatasetSource:
    from pipnet_tf.data.synthetic import SyntheticSpec, write_synthetic_cub

    spec = SyntheticSpec(image_size=image_size,
                         train_per_class=request.synthetic_train_per_class,
                         test_per_class=request.synthetic_test_per_class, kind=kind,
                         **spec_fields)
    layout = load_cub_layout(write_synthetic_cub(request.cache_dir, spec))
    ood = layout.root / "ood"
    default_ood = {p.name: str(p) for p in sorted(ood.iterdir()) if p.is_dir()} \
        if ood.is_dir() else {}
    return _from_cub(layout, request.name, f"built-in {kind} dataset at {layout.root}",
                     default_ood=default_ood)


def find_synthetic(request: DatasetRequest) -> DatasetSource:
    """The small built-in shapes dataset, generated into `cache_dir` on first use."""
    return _builtin(request, "shapes", request.image_size)


def find_creatures(request: DatasetRequest) -> DatasetSource:
    """The built-in creatures benchmark (parts with attributes, clutter, leaves), drawn at
    224 px whatever the training size (like a real dataset), into `cache_dir` on first use."""
    return _builtin(request, "creatures", 224, occlusion_prob=0.5)


def find_creatures_demo(request: DatasetRequest) -> DatasetSource:
    """`make demo`'s dataset: the creatures benchmark's six colour-combination and OR
    classes (`creatures_render.DEMO_CLASSES`), the same drawings, into `cache_dir`."""
    from pipnet_tf.data.creatures_render import DEMO_CLASSES

    return _builtin(request, "creatures", 224, occlusion_prob=0.5, classes=DEMO_CLASSES)


def find_cub(request: DatasetRequest) -> DatasetSource:
    root = request.root
    if root is not None and any((root / d / "images.txt").is_file()
                                for d in (".", "CUB_200_2011")):
        layout = load_cub_layout(root)
        return _from_cub(layout, "cub", f"CUB layout at {layout.root}")
    return _from_cub(_tfds("cub", request, CUB_HELP), "cub", "tfds caltech_birds2011")


def find_folder(request: DatasetRequest) -> DatasetSource:
    root = request.root
    if root is None:
        raise DatasetUnavailableError(
            "--dataset='folder' needs a path: --dataset=folder:PATH or --data_dir=PATH, "
            "with PATH/train/<class>/* and PATH/test/<class>/*, or PATH/<class>/* "
            "(split by --validation_size).")
    try:
        data = load_image_folder(root, request.validation_size, request.seed)
    except FileNotFoundError as e:
        flag = f"{request.name}:{request.path}" if request.path else request.name
        raise DatasetUnavailableError(f"--dataset={flag!r}: {e}. {FOLDER_HELP}") from e
    return _from_splits(data, request.name, f"image folders at {data.root}")


def _raw_layout_finder(key: str, title: str, is_layout, load_layout, builder: str,
                       help_text: str):
    """The dataset's original release, then class folders, then its tfds builder."""

    def find(request: DatasetRequest) -> DatasetSource:
        root = request.root
        if root is not None and is_layout(root):
            data = load_layout(root)
            return _from_splits(data, key, f"{title} at {data.root}")
        if root is not None and (root / "train").is_dir():
            data = load_image_folder(root, request.validation_size, request.seed)
            return _from_splits(data, key, f"image folders at {data.root}")
        return _from_cub(_tfds(key, request, help_text), key, f"tfds {builder}")

    find.__name__ = f"find_{key}"
    return find


find_cars = _raw_layout_finder("cars", "Stanford Cars", cars_lib.is_cars_devkit,
                               cars_lib.load_cars_devkit, "cars196", CARS_HELP)
find_pets = _raw_layout_finder("pets", "Oxford-IIIT Pet", pets_lib.is_pets_layout,
                               pets_lib.load_pets_layout, "oxford_iiit_pet", PETS_HELP)

