"""Built-in synthetic "parts" dataset, written once in the CUB-200-2011 file layout.

Every image shows one object: a grey body ellipse and a brown stick (distractor parts
present in every image) plus the class-defining parts of its class. A class is defined
only by which class parts are present (`CLASS_DEFINITIONS`), so a linear "scoring sheet"
over part prototypes separates the classes; class 3 (striped disc OR checker square) is
the PIP-Net paper's "sun OR dog" example (Nauta et al., CVPR 2023).

Images are (image_size, image_size, 3) uint8 RGB. Coordinates are float pixels with the
origin at the image's top-left corner; pixel (row i, column j) covers [j, j+1) x [i, i+1).
Only numpy and PIL are used; the same `SyntheticSpec` always gives byte-identical files.

Example:
    >>> root = write_synthetic_cub("/tmp/cache", SyntheticSpec(train_per_class=4))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import time

import numpy as np
from absl import logging
from PIL import Image

from pipnet_tf.io import atomic_output, remove_stale_partials

from pipnet_tf.data.synthetic_render import (  # noqa: F401  (re-exported)
    CLASS_DEFINITIONS,
    CLASS_NAMES,
    CLASS_PART_NAMES,
    DISTRACTOR_PART_NAMES,
    OOD_KINDS,
    PART_NAMES,
    render_example,
    render_ood,
)

FORMAT_VERSION = 1
COMPLETE_MARKER = "COMPLETE"
KINDS = ("shapes", "creatures")


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Size and randomness of the synthetic dataset (all counts per class / per OoD kind)."""

    image_size: int = 64
    train_per_class: int = 120
    test_per_class: int = 50
    ood_per_kind: int = 40
    seed: int = 0
    occlusion_prob: float = 0.2
    kind: str = "shapes"  # "shapes" (pipnet_tf.data.synthetic_render) or "creatures"
    # A subset of the renderer's CLASS_NAMES, in label order (empty: all). Each image is
    # the one the full dataset has at the same class and index.
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        known = renderer(self.kind).CLASS_NAMES
        unknown = [c for c in self.classes if c not in known]
        if unknown or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct names of {self.kind!r} classes "
                             f"{known}; got {self.classes!r}")
        if not 32 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be in [32, 1024], got {self.image_size!r}")
        if self.train_per_class < 1:
            raise ValueError(f"train_per_class must be >= 1, got {self.train_per_class!r}")
        for name in ("test_per_class", "ood_per_kind", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.occlusion_prob <= 1.0:
            raise ValueError(f"occlusion_prob must be in [0, 1], got {self.occlusion_prob!r}")

    def fingerprint(self) -> str:
        """Short hash of the fields and FORMAT_VERSION, used in the cache directory name."""
        fields = dataclasses.asdict(self)
        if not self.classes:  # the full datasets keep their cache names
            del fields["classes"]
        if self.kind == "shapes":  # the original dataset keeps its cache name
            del fields["kind"]
        else:
            fields["render_version"] = renderer(self.kind).VERSION
        blob = json.dumps({"format": FORMAT_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def renderer(kind: str):
    """The module that draws dataset `kind`: CLASS_NAMES, PART_NAMES, OOD_KINDS,
    render_example(rng, label, size, occlusion_prob), render_ood(rng, kind, size), describe()."""
    if kind == "creatures":
        from pipnet_tf.data import creatures_render

        return creatures_render
    from pipnet_tf.data import synthetic_render

    return synthetic_render


def class_indices(spec: SyntheticSpec) -> list[int]:
    """Indices into the renderer's CLASS_NAMES of the classes `spec` writes, in label order."""
    names = renderer(spec.kind).CLASS_NAMES
    return [names.index(c) for c in spec.classes] if spec.classes else list(range(len(names)))


def _readme(spec: SyntheticSpec) -> str:
    """Human-readable description of the generated dataset."""
    lines = [f"Built-in '{spec.kind}' dataset (pipnet_tf format {FORMAT_VERSION}), "
             "CUB-200-2011 layout.",
             f"Spec: {json.dumps(dataclasses.asdict(spec), sort_keys=True)}", ""]
    return "\n".join(lines + renderer(spec.kind).describe()) + "\n"


def _write_all(out: pathlib.Path, spec: SyntheticSpec) -> None:
    """Writes the whole dataset into the (empty) directory `out`."""
    size, start = spec.image_size, time.monotonic()
    draw = renderer(spec.kind)
    images, labels, split, boxes, locs = [], [], [], [], []
    image_id = 0
    chosen = class_indices(spec)
    for label, c in enumerate(chosen):
        cname = draw.CLASS_NAMES[c]
        folder = f"{label + 1:03d}.{cname}"
        (out / "images" / folder).mkdir(parents=True)
        for k in range(spec.train_per_class + spec.test_per_class):
            is_train = k < spec.train_per_class
            index = k if is_train else k - spec.train_per_class
            rng = np.random.default_rng([spec.seed, 0 if is_train else 1, c, index])
            image, parts, bbox = draw.render_example(rng, c, size,
                                                     occlusion_prob=spec.occlusion_prob)
            image_id += 1
            rel = f"{folder}/{cname}_{image_id:04d}.png"
            Image.fromarray(image).save(out / "images" / rel, format="PNG")
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {label + 1}")
            split.append(f"{image_id} {int(is_train)}")
            boxes.append(f"{image_id} " + " ".join(f"{v:.2f}" for v in bbox))
            locs += [f"{image_id} {p} {x:.2f} {y:.2f} {v}"
                     for p, (x, y, v) in enumerate(parts.values(), 1)]
        logging.info("synthetic: class %d/%d written (%d images, %.1fs)",
                     label + 1, len(chosen), image_id, time.monotonic() - start)
    for kind_index, kind in enumerate(draw.OOD_KINDS):
        (out / "ood" / kind).mkdir(parents=True)
        for i in range(spec.ood_per_kind):
            rng = np.random.default_rng([spec.seed, 2 + kind_index, 0, i])
            Image.fromarray(draw.render_ood(rng, kind, size)).save(
                out / "ood" / kind / f"{kind}_{i + 1:04d}.png", format="PNG")
    (out / "parts").mkdir()
    tables = {"images.txt": images, "image_class_labels.txt": labels,
              "train_test_split.txt": split, "bounding_boxes.txt": boxes,
              "classes.txt": [f"{label} {label:03d}.{draw.CLASS_NAMES[c]}"
                              for label, c in enumerate(chosen, 1)],
              "parts/parts.txt": [f"{p} {n}" for p, n in enumerate(draw.PART_NAMES, 1)],
              "parts/part_locs.txt": locs}
    for name, rows in tables.items():
        (out / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    (out / "README.txt").write_text(_readme(spec), encoding="utf-8")
    marker = {"fingerprint": spec.fingerprint(), "format": FORMAT_VERSION,
              "spec": dataclasses.asdict(spec), "num_images": image_id}
    (out / COMPLETE_MARKER).write_text(json.dumps(marker, sort_keys=True) + "\n", encoding="utf-8")
    logging.info("synthetic: %d images + %d OoD written in %.1fs", image_id,
                 spec.ood_per_kind * len(draw.OOD_KINDS), time.monotonic() - start)


def write_synthetic_cub(cache_root: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec()
                        ) -> pathlib.Path:
    """Writes the dataset to `cache_root/synthetic_<fingerprint>/` (once) and returns that path.

    The files are written to a temporary sibling directory that is renamed into place when
    complete (`pipnet_tf.io.atomic_output`), so an interrupted run never leaves a directory
    that looks complete; a complete directory is reused as is.
    """
    if not isinstance(spec, SyntheticSpec):
        raise ValueError(f"spec must be a SyntheticSpec, got {spec!r}")
    cache_root = pathlib.Path(cache_root)
    final = cache_root / f"synthetic_{spec.fingerprint()}"
    if (final / COMPLETE_MARKER).is_file():
        logging.info("synthetic: reusing complete dataset at %s", final)
        return final
    if cache_root.exists() and not cache_root.is_dir():
        raise ValueError(f"cache_root {str(cache_root)!r} exists and is not a directory")
    cache_root.mkdir(parents=True, exist_ok=True)
    if final.exists() and not (final / COMPLETE_MARKER).is_file():
        logging.warning("synthetic: %s has no %s marker; regenerating it", final, COMPLETE_MARKER)
        shutil.rmtree(final)
    remove_stale_partials(final)
    logging.info("synthetic: generating %s (%s)", final.name, spec)
    try:
        with atomic_output(final, directory=True, replace=False) as tmp:
            _write_all(tmp, spec)
    except FileExistsError:
        if not (final / COMPLETE_MARKER).is_file():
            raise
        logging.info("synthetic: another writer finished %s first; using it", final)
    return final
