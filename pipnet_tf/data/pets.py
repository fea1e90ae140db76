"""Reader for the original Oxford-IIIT Pet layout (images.tar.gz + annotations.tar.gz
extracted into one folder):

    ROOT/images/Abyssinian_1.jpg ...
    ROOT/annotations/trainval.txt, ROOT/annotations/test.txt
        lines "<image name> <class id 1..37> <species> <breed id>", '#' comments
"""

from __future__ import annotations

import os
import pathlib
import re

from pipnet_tf.data.cub import ImageRecords
from pipnet_tf.data.records import LabelledSplits, make_records

SPLIT_FILES = {"train": "trainval.txt", "test": "test.txt"}


def is_pets_layout(root: str | os.PathLike) -> bool:
    root = pathlib.Path(root)
    return (root / "images").is_dir() and all(
        (root / "annotations" / f).is_file() for f in SPLIT_FILES.values())


def _read_split(path: pathlib.Path) -> list[tuple[str, int]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) < 1:
            raise ValueError(f"{str(path)!r} line {lineno}: expected '<image> <class id>=1..' "
                             f"got {line!r}")
        rows.append((fields[0], int(fields[1])))
    return rows


def load_pets_layout(root: str | os.PathLike) -> LabelledSplits:
    """Parses the Oxford-IIIT Pet layout at `root`; labels are class id - 1 and class
    names come from the image names (`Abyssinian_1` → "Abyssinian")."""
    root = pathlib.Path(root).expanduser().absolute()
    if not is_pets_layout(root):
        raise FileNotFoundError(
            f"{str(root)!r} is not an Oxford-IIIT Pet folder: expected {root!s}/images/*.jpg "
            f"and {root!s}/annotations/trainval.txt and test.txt")
    splits = {s: _read_split(root / "annotations" / f) for s, f in SPLIT_FILES.items()}
    names: dict[int, str] = {}
    for rows in splits.values():
        for image, class_id in rows:
            names.setdefault(class_id, re.sub(r"_\d+$", "", image))
    num_classes = max(names)
    class_names = [names.get(i, f"class_{i}") for i in range(1, num_classes + 1)]
    records = {s: make_records([str(root / "images" / f"{image}.jpg") for image, _ in rows],
                               [c - 1 for _, c in rows]) for s, rows in splits.items()}
    return LabelledSplits(root, class_names, records["train"], records["test"])
