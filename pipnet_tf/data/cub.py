"""Reader for the CUB-200-2011 file layout (real CUB and the built-in synthetic dataset).

The layout root holds space-separated text tables with 1-based ids:
`images.txt` (image_id path-under-images/), `image_class_labels.txt` (image_id class_id),
`train_test_split.txt` (image_id is_train), `classes.txt` (class_id NNN.Name) and, optionally,
`bounding_boxes.txt` (image_id x y w h), `parts/parts.txt` (part_id name) and
`parts/part_locs.txt` (image_id part_id x y visible). Coordinates are float pixels.

Example:
    >>> layout = load_cub_layout("/data/CUB_200_2011")
    >>> train = layout.split("train")  # ImageRecords, sorted by image id
    >>> train.labels.shape, train.part_locs.shape  # (N,), (N, P, 3)
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

import numpy as np
from absl import logging

SPLITS: tuple[str, ...] = ("train", "test", "all")
_REQUIRED = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


@dataclasses.dataclass(frozen=True)
class ImageRecords:
    """Per-image annotations, sorted by image id.

    Attributes:
        paths: N absolute image file paths.
        labels: int32 (N,) 0-based class indices (class-id order).
        image_ids: int64 (N,) the layout's 1-based image ids.
        bboxes: float32 (N, 4) as x, y, width, height; NaN where no box is given.
        part_locs: float32 (N, P, 3) as x, y, visible; zeros where no location is given.
    """

    paths: list[str]
    labels: np.ndarray
    image_ids: np.ndarray
    bboxes: np.ndarray
    part_locs: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, index: np.ndarray) -> ImageRecords:
        """Records at `index` (int (K,) positions or bool (N,) mask), in that order."""
        index = np.asarray(index)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise ValueError(f"boolean index must have shape ({len(self)},), "
                                 f"got {index.shape!r}")
            index = np.flatnonzero(index)
        return ImageRecords([self.paths[i] for i in index], self.labels[index],
                            self.image_ids[index], self.bboxes[index], self.part_locs[index])


@dataclasses.dataclass(frozen=True)
class CubLayout:
    """A parsed CUB-200-2011 layout.

    Attributes:
        root: folder holding `images.txt`.
        class_names: class names without the `NNN.` prefix, in class-id order.
        part_names: part names in part-id order (empty without `parts/parts.txt`).
        records: all images (what `split("all")` returns).
        is_train: bool (N,) aligned with `records`.
    """

    root: pathlib.Path
    class_names: list[str]
    part_names: list[str]
    records: ImageRecords = dataclasses.field(repr=False)
    is_train: np.ndarray = dataclasses.field(repr=False)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def split(self, name: str) -> ImageRecords:
        """Images of split `name`: "train", "test" or "all"."""
        if name == "all":
            return self.records
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self.records.select(self.is_train if name == "train" else ~self.is_train)


def _read_rows(path: pathlib.Path, ncols: int, text_last: bool = False
               ) -> tuple[list[int], list[list[str]]]:
    """Splits a whitespace table into rows of `ncols` fields; returns (line numbers, rows)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(path)!r} is not UTF-8 text: {e}") from e
    linenos, rows = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split(None, ncols - 1) if text_last else line.split()
        if not fields:
            continue
        if len(fields) != ncols:
            raise ValueError(f"{str(path)!r} line {lineno}: expected {ncols} fields, "
                             f"got {len(fields)}: {line!r}")
        linenos.append(lineno)
        rows.append(fields)
    return linenos, rows


def _numeric(path: pathlib.Path, linenos: list[int], rows: list[list[str]], int_cols: int,
             ncols: int) -> np.ndarray:
    """Rows as float64 (N, ncols); the first `int_cols` columns must hold integers."""
    try:
        table = np.array(rows, dtype=np.float64).reshape(len(rows), ncols)
    except ValueError:
        for lineno, row in zip(linenos, rows):
            for field in row:
                try:
                    float(field)
                except ValueError:
                    raise ValueError(f"{str(path)!r} line {lineno}: {field!r} is not a number"
                                     ) from None
        raise
    ints = table[:, :int_cols]
    bad = np.flatnonzero(~np.all(np.isfinite(ints) & (ints == np.round(ints)), axis=1))
    if bad.size:
        raise ValueError(f"{str(path)!r} line {linenos[bad[0]]}: expected integer ids, "
                         f"got {rows[bad[0]][:int_cols]!r}")
    return table


def _read_numeric(path: pathlib.Path, ncols: int, int_cols: int) -> tuple[list[int], np.ndarray]:
    """Reads a numeric table; returns (line numbers, float64 (N, ncols))."""
    linenos, rows = _read_rows(path, ncols)
    return linenos, _numeric(path, linenos, rows, int_cols, ncols)


def _id_table(path: pathlib.Path, text_last: bool = True) -> tuple[np.ndarray, list[str]]:
    """Reads `<id> <text>` rows sorted by id: (int64 ids (K,), texts)."""
    linenos, rows = _read_rows(path, 2, text_last=text_last)
    ids = _numeric(path, linenos, [r[:1] for r in rows], 1, 1)[:, 0].astype(np.int64)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if dup.size:
        raise ValueError(f"{str(path)!r} line {linenos[order[dup[0] + 1]]}: "
                         f"duplicate id {int(ids[dup[0]])}")
    return ids, [rows[i][1].strip() for i in order]


def _lookup(path: pathlib.Path, linenos: list[int], known: np.ndarray, ids: np.ndarray,
            what: str) -> np.ndarray:
    """Positions of `ids` in the sorted array `known`; ValueError naming the first unknown id."""
    pos = np.minimum(np.searchsorted(known, ids), max(len(known) - 1, 0))
    bad = np.flatnonzero(known[pos] != ids) if len(known) else np.arange(len(ids))
    if bad.size:
        raise ValueError(f"{str(path)!r} line {linenos[bad[0]]}: unknown {what} id "
                         f"{int(ids[bad[0]])}")
    return pos


def _per_image(path: pathlib.Path, image_ids: np.ndarray, ncols: int, required: bool
               ) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Reads an `<image_id> <values...>` table: (line numbers, float64 rows, image position)."""
    linenos, table = _read_numeric(path, ncols, 2 if ncols == 2 else 1)
    pos = _lookup(path, linenos, image_ids, table[:, 0].astype(np.int64), "image")
    counts = np.bincount(pos, minlength=len(image_ids))
    if np.any(counts > 1):
        again = np.flatnonzero(counts[pos] > 1)[1]
        raise ValueError(f"{str(path)!r} line {linenos[again]}: image id "
                         f"{int(image_ids[pos[again]])} appears more than once")
    if required and np.any(counts == 0):
        missing = int(image_ids[np.flatnonzero(counts == 0)[0]])
        raise ValueError(f"image id {missing} of 'images.txt' has no entry in "
                         f"{str(path)!r}")
    return linenos, table, pos


def _resolve_root(root: str | os.PathLike) -> pathlib.Path:
    """The folder holding images.txt: `root` itself or `root/CUB_200_2011`."""
    base = pathlib.Path(root).expanduser().absolute()
    for candidate in (base, base / "CUB_200_2011"):
        if (candidate / "images.txt").is_file():
            return candidate
    if not base.exists():
        raise FileNotFoundError(f"CUB root {str(base)!r} does not exist")
    raise FileNotFoundError(f"missing file 'images.txt' in CUB root {str(base)!r} "
                            f"(also looked in {str(base / 'CUB_200_2011')!r})")


def _read_parts(root: pathlib.Path, image_ids: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Part names and float32 (N, P, 3) locations x, y, visible (zeros where absent)."""
    parts_path, locs_path = root / "parts" / "parts.txt", root / "parts" / "part_locs.txt"
    if not parts_path.is_file():
        if locs_path.is_file():
            logging.warning("ignoring %s: %s is missing", locs_path, parts_path)
        return [], np.zeros((len(image_ids), 0, 3), np.float32)
    part_ids, part_names = _id_table(parts_path)
    locs = np.zeros((len(image_ids), len(part_ids), 3), np.float32)
    if locs_path.is_file():
        linenos, table = _read_numeric(locs_path, 5, 2)
        rows = _lookup(locs_path, linenos, image_ids, table[:, 0].astype(np.int64), "image")
        cols = _lookup(locs_path, linenos, part_ids, table[:, 1].astype(np.int64), "part")
        locs[rows, cols] = table[:, 2:]
    return part_names, locs


def load_cub_layout(root: str | os.PathLike) -> CubLayout:
    """Parses a CUB-200-2011 layout at `root` (or at `root/CUB_200_2011`).

    Raises:
        FileNotFoundError: a required file is missing (the message names it and the root).
        ValueError: a malformed line (file and line number), or an image without a label
            or a train/test flag.
    """
    root = _resolve_root(root)
    for name in _REQUIRED + ("images",):
        if not (root / name).exists():
            raise FileNotFoundError(f"missing {'folder' if name == 'images' else 'file'} "
                                    f"{name!r} in CUB root {str(root)!r}")
    image_ids, rel_paths = _id_table(root / "images.txt", text_last=False)
    class_ids, class_dirs = _id_table(root / "classes.txt")
    class_names = [re.sub(r"^\d+\.", "", d) for d in class_dirs]
    n = len(image_ids)
    label_path = root / "image_class_labels.txt"
    linenos, table, pos = _per_image(label_path, image_ids, 2, required=True)
    labels = np.zeros(n, np.int32)
    labels[pos] = _lookup(label_path, linenos, class_ids, table[:, 1].astype(np.int64), "class")
    split_path = root / "train_test_split.txt"
    linenos, table, pos = _per_image(split_path, image_ids, 2, required=True)
    bad = np.flatnonzero((table[:, 1] != 0) & (table[:, 1] != 1))
    if bad.size:
        raise ValueError(f"{str(split_path)!r} line {linenos[bad[0]]}: is_training_image must "
                         f"be 0 or 1, got {table[bad[0], 1]:g}")
    is_train = np.zeros(n, bool)
    is_train[pos] = table[:, 1] == 1
    bboxes = np.full((n, 4), np.nan, np.float32)
    if (root / "bounding_boxes.txt").is_file():
        _, table, pos = _per_image(root / "bounding_boxes.txt", image_ids, 5, required=False)
        bboxes[pos] = table[:, 1:]
    part_names, part_locs = _read_parts(root, image_ids)
    images_dir = str(root / "images")
    records = ImageRecords(
        paths=[os.path.join(images_dir, p) for p in rel_paths],
        labels=labels, image_ids=image_ids, bboxes=bboxes, part_locs=part_locs)
    logging.info("CUB layout %s: %d images (%d train), %d classes, %d parts", root, n,
                 int(is_train.sum()), len(class_names), len(part_names))
    return CubLayout(root, class_names, part_names, records, is_train)
