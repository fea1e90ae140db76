"""Reader for the original Stanford Cars release (the layout tfds `cars196` downloads):

    ROOT/cars_train/00001.jpg ...           (cars_train.tgz)
    ROOT/cars_test/00001.jpg ...            (cars_test.tgz)
    ROOT/devkit/cars_meta.mat               (car_devkit.tgz: class_names)
    ROOT/devkit/cars_train_annos.mat        (car_devkit.tgz)
    ROOT/cars_test_annos_withlabels.mat     (or in ROOT/devkit/)

The `.mat` files need scipy (`pip install scipy`), imported only here. Boxes are kept as
x, y, w, h (the devkit's inclusive x1, y1, x2, y2 converted); PIP-Net does not crop Cars.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from pipnet_tf.data.cub import ImageRecords
from pipnet_tf.data.records import LabelledSplits, make_records

TEST_ANNOS = "cars_test_annos_withlabels.mat"


def _test_annos(root: pathlib.Path) -> pathlib.Path | None:
    return next((p for p in (root / TEST_ANNOS, root / "devkit" / TEST_ANNOS) if p.is_file()),
                None)


def is_cars_devkit(root: str | os.PathLike) -> bool:
    root = pathlib.Path(root)
    return (root / "devkit" / "cars_meta.mat").is_file() and (root / "cars_train").is_dir()


def _loadmat(path: pathlib.Path) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise ImportError(f"reading {str(path)!r} needs scipy: pip install scipy, or convert "
                          "Stanford Cars to ROOT/train/<class>/ and ROOT/test/<class>/ folders"
                          ) from e
    return loadmat(str(path), squeeze_me=True)


def _split(annos_path: pathlib.Path, images: pathlib.Path) -> ImageRecords:
    annos = np.atleast_1d(_loadmat(annos_path)["annotations"])
    field = lambda name: np.array([np.asarray(a[name]).item() for a in annos])
    x1, y1, x2, y2 = (field(f"bbox_{k}").astype(np.float32) for k in ("x1", "y1", "x2", "y2"))
    boxes = np.stack([x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], axis=1)
    paths = [str(images / str(f)) for f in field("fname")]
    return make_records(paths, field("class").astype(np.int64) - 1, boxes)


def load_cars_devkit(root: str | os.PathLike) -> LabelledSplits:
    """Parses the Stanford Cars release at `root` (see the module docstring)."""
    root = pathlib.Path(root).expanduser().absolute()
    test_annos = _test_annos(root)
    if not is_cars_devkit(root) or test_annos is None or not (root / "cars_test").is_dir():
        raise FileNotFoundError(
            f"{str(root)!r} is not a Stanford Cars folder: expected cars_train/, cars_test/, "
            f"devkit/cars_meta.mat, devkit/cars_train_annos.mat and {TEST_ANNOS}")
    class_names = [str(c) for c in np.atleast_1d(
        _loadmat(root / "devkit" / "cars_meta.mat")["class_names"])]
    train = _split(root / "devkit" / "cars_train_annos.mat", root / "cars_train")
    test = _split(test_annos, root / "cars_test")
    return LabelledSplits(root, class_names, train, test)
