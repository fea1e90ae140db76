"""Class-per-folder image datasets: `ROOT/train/<class>/*` + `ROOT/test/<class>/*`, or one
`ROOT/<class>/*` tree split into train/test by `stratified_split`.

Class names are the folder names (any unicode, spaces included), sorted; files are found
recursively; hidden files and folders (".name") are ignored. A class folder without any
file is not a class (one warning names them). Which files are images is decided later,
by `decode.prepare_images`.

Example:
    >>> data = load_image_folder("/data/flowers", validation_size=0.2, seed=1)
    >>> data.class_names, len(data.train), len(data.test)
"""

from __future__ import annotations

import os
import pathlib

from absl import logging

from pipnet_tf.data.cub import ImageRecords
from pipnet_tf.data.records import LabelledSplits, make_records, stratified_split

TEST_DIR_NAMES = ("test", "val", "valid", "validation")


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _class_files(tree: pathlib.Path) -> dict[str, list[str]]:
    """{class folder name: sorted file paths (recursive)} for every class folder."""
    classes = {}
    for entry in sorted(os.scandir(tree), key=lambda e: e.name):
        if not (entry.is_dir() and _visible(entry.name)):
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(entry.path):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            files += [os.path.join(dirpath, f) for f in sorted(filenames) if _visible(f)]
        classes[entry.name] = files
    return classes


def _records(files: dict[str, list[str]], class_names: list[str]) -> ImageRecords:
    index = {name: i for i, name in enumerate(class_names)}
    paths = [p for name in class_names for p in files.get(name, [])]
    labels = [index[name] for name in class_names for _ in files.get(name, [])]
    return make_records(paths, labels)


def load_image_folder(root: str | os.PathLike, validation_size: float = 0.2,
                      seed: int = 0) -> LabelledSplits:
    """Reads a class-folder dataset at `root` (see the module docstring).

    Args:
        root: `ROOT` holding `train/` (and `test/`, `val/`, `valid/` or `validation/`),
            or the class folders themselves.
        validation_size: fraction of each class held out as the test split when there is
            no separate test folder.
        seed: seed of that split.

    Raises:
        FileNotFoundError: `root` is missing or holds no class folder with files.
        ValueError: the test folder has classes the training folder lacks.
    """
    root = pathlib.Path(root).expanduser().absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    train_tree = root / "train" if (root / "train").is_dir() else root
    test_tree = next((root / n for n in TEST_DIR_NAMES if (root / n).is_dir()), None)
    if train_tree == root:
        test_tree = None
    train_files = _class_files(train_tree)
    empty = sorted(name for name, files in train_files.items() if not files)
    class_names = [name for name, files in train_files.items() if files]
    if empty:
        logging.warning("Ignoring %d empty class folder(s) in %s: %s", len(empty), train_tree,
                        ", ".join(repr(n) for n in empty))
    if not class_names:
        raise FileNotFoundError(
            f"no class folders with files in {str(train_tree)!r}: expected "
            f"{root / 'train'!s}/<class name>/<images> (and {root / 'test'!s}/<class name>/"
            f"<images>), or {root!s}/<class name>/<images> split with --validation_size")
    train = _records(train_files, class_names)
    if test_tree is not None:
        test_files = {k: v for k, v in _class_files(test_tree).items() if v}
        unknown = sorted(set(test_files) - set(class_names))
        if unknown:
            raise ValueError(f"{str(test_tree)!r} has classes missing from "
                             f"{str(train_tree)!r}: {unknown!r}")
        test = _records(test_files, class_names)
    else:
        held = stratified_split(train.labels, validation_size, seed)
        train, test = train.select(~held), train.select(held)
    logging.info("Image folder %s: %d classes, %d train and %d test files", root,
                 len(class_names), len(train), len(test))
    return LabelledSplits(root, class_names, train, test)
