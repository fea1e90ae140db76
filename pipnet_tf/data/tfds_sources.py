"""Materialises a prepared TensorFlow Datasets builder as a CUB-layout folder, so tfds data
goes through the same reader, validation and pipelines as files on disk.

Builders: `caltech_birds2011` (with boxes), `cars196` (with boxes), `oxford_iiit_pet`.
The original encoded bytes are written as they are (no re-encoding); a builder whose
records cannot be read undecoded is written as lossless PNG. The folder is built once in
`cache_dir/tfds/<builder>/<version>/` (atomic rename) and reused. Nothing is downloaded
unless `download=True`; tensorflow_datasets is imported only when this runs.
"""

from __future__ import annotations

import io
import os
import pathlib

import numpy as np
from absl import logging
from PIL import Image

from pipnet_tf.io import atomic_output

BUILDERS = {"cub": "caltech_birds2011", "cars": "cars196", "pets": "oxford_iiit_pet"}
SPLITS = ("train", "test")
_DONE = "MATERIALIZED"


class TfdsDataUnavailable(RuntimeError):
    """The builder's prepared data is not in the tfds data_dir (or could not be made)."""


def _examples(builder, split: str):
    """Yields (image bytes or uint8 array, label, normalized bbox or None)."""
    import tensorflow_datasets as tfds

    has_bbox = "bbox" in builder.info.features
    try:
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        items = [(ex["image"].numpy(), int(ex["label"].numpy()),
                  ex["bbox"].numpy() if has_bbox else None) for ex in ds]
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001 - some records only decode as a whole
        logging.info("%s/%s: undecoded read failed (%s); writing PNGs", builder.name, split, e)
        items = [(ex["image"].numpy(), int(ex["label"].numpy()),
                  ex["bbox"].numpy() if has_bbox else None)
                 for ex in builder.as_dataset(split=split)]
    return items


def _write_image(data, path_stem: pathlib.Path) -> tuple[str, tuple[int, int]]:
    """Writes bytes as they are (extension from the content) or an array as PNG."""
    if isinstance(data, bytes):
        with Image.open(io.BytesIO(data)) as img:
            size, fmt = img.size, (img.format or "bin").lower()
        path = path_stem.with_suffix("." + {"jpeg": "jpg"}.get(fmt, fmt))
        path.write_bytes(data)
    else:
        arr = np.asarray(data, np.uint8)
        size = (arr.shape[1], arr.shape[0])
        path = path_stem.with_suffix(".png")
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path, compress_level=1)
    return path.name, size


def _bbox_row(image_id: int, box: np.ndarray, size: tuple[int, int]) -> str | None:
    """tfds (ymin, xmin, ymax, xmax) fractions → CUB 'id x y w h' pixels; None if empty."""
    ys, xs = sorted(box[0::2].tolist()), sorted(box[1::2].tolist())
    x0, x1 = (np.clip(v, 0, 1) * size[0] for v in xs)
    y0, y1 = (np.clip(v, 0, 1) * size[1] for v in ys)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return f"{image_id} {x0:.2f} {y0:.2f} {x1 - x0:.2f} {y1 - y0:.2f}"


def _write_layout(builder, tmp: pathlib.Path, label_names: list[str]) -> int:
    """Writes every split of `builder` into `tmp` in the CUB layout; returns the image count."""
    tables = {k: [] for k in ("images", "image_class_labels", "train_test_split",
                              "bounding_boxes")}
    image_id = 0
    for split in SPLITS:
        for data, label, box in _examples(builder, split):
            image_id += 1
            folder = tmp / "images" / f"{label + 1:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            fname, size = _write_image(data, folder / f"{split}_{image_id:06d}")
            tables["images"].append(f"{image_id} {label + 1:03d}/{fname}")
            tables["image_class_labels"].append(f"{image_id} {label + 1}")
            tables["train_test_split"].append(f"{image_id} {int(split == 'train')}")
            row = _bbox_row(image_id, box, size) if box is not None else None
            if row:
                tables["bounding_boxes"].append(row)
    tables["classes"] = [f"{i + 1} {i + 1:03d}.{n}" for i, n in enumerate(label_names)]
    if not tables["bounding_boxes"]:  # optional; the CUB reader rejects an empty table
        del tables["bounding_boxes"]
    for table, rows in tables.items():
        (tmp / f"{table}.txt").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return image_id


def materialize_tfds(name: str, data_dir: str | None, cache_dir: str | os.PathLike,
                     download: bool = False) -> pathlib.Path:
    """CUB-layout folder holding tfds builder `name` (train + test); see module docstring.

    Raises:
        TfdsDataUnavailable: the data is not prepared in `data_dir` (the tfds default
            ~/tensorflow_datasets when None) and `download` is False, or preparing failed.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir or None)
    out = pathlib.Path(cache_dir) / "tfds" / name / str(builder.version)
    if (out / _DONE).is_file():
        return out
    if download:
        try:
            builder.download_and_prepare()
        except Exception as e:
            raise TfdsDataUnavailable(f"tfds could not prepare {name!r}: "
                                      f"{type(e).__name__}: {e}") from e
    try:
        builder.as_dataset(split=SPLITS[0])
    except AssertionError as e:  # tfds's "could not find data in ..."
        raise TfdsDataUnavailable(f"tfds data for {name!r} is not prepared in "
                                  f"{builder.data_dir!r}") from e
    label_names = builder.info.features["label"].names
    with atomic_output(out, directory=True) as tmp:
        image_id = _write_layout(builder, tmp, label_names)
        (tmp / _DONE).write_text(f"{name} {builder.version}\n")
    logging.info("Materialised tfds %s (%d images) in %s", name, image_id, out)
    return out
