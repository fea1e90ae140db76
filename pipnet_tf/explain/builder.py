"""Writes global and local explanations of a trained PIP-Net and the HTML report.

Layout of `out_dir`:
    index.html                      the report (relative links, opens from disk)
    global/scoring_sheet.png|json   prototypes and weights per class
    global/prototype_0012.png       top-k training patches of each relevant prototype (and
                                    of each disabled one, greyed)
    global/prototype_audit.json     per prototype: disabled, purity, background patches
    local/0001_<image>.png|json     one explanation per explained image
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Sequence

import keras
import numpy as np
from absl import logging
from PIL import Image

from pipnet_tf import metrics, ood
from pipnet_tf.data.datasets import ImageSet
from pipnet_tf.evaluation import collect_prototype_outputs
from pipnet_tf.explain import audit, global_view, local_view, render, report
from pipnet_tf.io import write_json


@dataclasses.dataclass
class GlobalExplanation:
    """Top-k patches per relevant (or disabled) prototype, where their pictures were
    written, and the audit rows (`audit.prototype_audit`, in report order)."""

    topk: dict[int, list[dict]]
    patches: dict[int, list[Image.Image]]
    prototype_pngs: dict[int, str]
    scoring_sheet: dict[str, list]
    scoring_sheet_png: str
    audit: list[dict] = dataclasses.field(default_factory=list)


def build_global(model: keras.Model, train: ImageSet, class_names: Sequence[str],
                 out_dir: str | pathlib.Path, k: int = 10, batch_size: int = 64,
                 verbose: int = 0, outputs: dict | None = None,
                 part_names: Sequence[str] = ()) -> GlobalExplanation:
    """Prototype grids, the scoring sheet and the prototype audit from the (unaugmented)
    training images; `part_names` (with `train.part_locs`) adds part purity."""
    out_dir = pathlib.Path(out_dir)
    (out_dir / "global").mkdir(parents=True, exist_ok=True)
    if outputs is None:
        logging.info("Global explanation: running the model over %d training images", len(train))
        outputs = collect_prototype_outputs(model, train.dataset(batch_size), verbose)
    kernel = model.enabled_kernel()  # the scoring sheet as the forward uses it
    raw_kernel = model.classifier.kernel.numpy()  # disabled prototypes keep their weights
    disabled = [int(p) for p in model.disabled_prototypes]
    # What each prototype detects, disabled ones included (for enabled prototypes this
    # equals the thresholded "presence" the scores use).
    raw = outputs["presence_raw"]
    detected = {"presence": np.where(raw < model.inference_threshold, 0.0, raw),
                "locations": outputs["locations"]}
    shown = sorted(set(int(p) for p in metrics.relevant_prototypes(kernel)) | set(disabled))
    geometry = model.patch_geometry(train.image_size)
    topk = global_view.prototype_topk(detected, kernel, geometry, k, prototypes=shown)
    rows = audit.prototype_audit(topk, raw_kernel, disabled, class_names, train.object_boxes,
                                 train.part_locs, part_names, geometry.patch_size)
    notes = {row["prototype"]: audit.notes(row) for row in rows}
    needed = sorted({e["image"] for entries in topk.values() for e in entries})
    pixels = (dict(zip(needed, train.select(needed).uint8_images(batch_size=batch_size)))
              if needed else {})
    train_paths = train.originals
    patches, pngs = {}, {}
    progress = keras.utils.Progbar(len(topk), verbose=verbose, unit_name="prototype")
    for n, (p, entries) in enumerate(topk.items()):
        patches[p] = [render.crop(pixels[e["image"]], e["box"]) for e in entries]
        grid = global_view.render_prototype_grid(
            p, patches[p], [e["presence"] for e in entries],
            global_view.class_weights_of(raw_kernel, p, class_names), notes=notes[p],
            disabled=p in disabled)
        pngs[p] = f"global/prototype_{p:04d}.png"
        grid.save(out_dir / pngs[p])
        progress.update(n + 1)
    sheet = metrics.scoring_sheet(kernel, list(class_names))
    write_json(out_dir / "global" / "scoring_sheet.json", sheet)
    write_json(out_dir / "global" / "prototype_topk.json", {
        str(p): [{**e, "box": list(e["box"]), "path": train_paths[e["image"]]} for e in entries]
        for p, entries in topk.items()})
    write_json(out_dir / "global" / "prototype_audit.json", rows)
    thumbs = {p: ps[0] for p, ps in patches.items()}
    global_view.render_scoring_sheet(kernel, class_names, thumbs).save(out_dir / "global" / "scoring_sheet.png")
    return GlobalExplanation(topk, patches, pngs, sheet, "global/scoring_sheet.png", rows)


def explain_images(model: keras.Model, images: ImageSet | Sequence[ImageSet],
                   class_names: Sequence[str], global_explanation: GlobalExplanation,
                   out_dir: str | pathlib.Path, batch_size: int = 64, verbose: int = 0,
                   top_classes: int = local_view.TOP_CLASSES,
                   ood_thresholds: Sequence[float] | None = None) -> list[tuple[str, str]]:
    """One PNG (+ JSON) per image under out_dir/local, each shown as the model sees it
    (cropped when the set crops); `images` is one set or several (e.g. test crops, then
    full OoD images), numbered in that order. Returns [(image name, relative png)].
    With `ood_thresholds` (FPR95 class thresholds) each picture says whether the image is
    accepted as in-distribution."""
    out_dir = pathlib.Path(out_dir)
    (out_dir / "local").mkdir(parents=True, exist_ok=True)
    sets = [s for s in ([images] if isinstance(images, ImageSet) else images) if len(s)]
    kernel = model.enabled_kernel()
    written = []
    progress = keras.utils.Progbar(sum(len(s) for s in sets), verbose=verbose, unit_name="image")
    for image_set in sets:
        outputs = collect_prototype_outputs(model, image_set.dataset(batch_size))
        pixels = image_set.uint8_images(batch_size=batch_size)
        geometry = model.patch_geometry(image_set.image_size)
        verdicts = [None] * len(image_set)
        if ood_thresholds is not None:
            verdicts = [bool(v) for v in ood.accepted(outputs["scores_raw"],
                                                      np.asarray(ood_thresholds))]
        for i, path in enumerate(image_set.originals):
            name = pathlib.Path(path).name
            picture, description = local_view.explain_image(
                pixels[i], outputs["scores"][i], outputs["presence"][i],
                outputs["locations"][i], geometry, kernel, class_names,
                global_explanation.patches, title=name, top_classes=top_classes,
                in_distribution=verdicts[i])
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", pathlib.Path(path).stem)
            stem = f"{len(written) + 1:04d}_{safe}"
            picture.save(out_dir / "local" / f"{stem}.png")
            write_json(out_dir / "local" / f"{stem}.json",
                       {"path": str(path), "cropped": image_set.boxes is not None,
                        **description})
            written.append((name, f"local/{stem}.png"))
            progress.update(len(written))
    return written


def write_explanations(model: keras.Model, class_names: Sequence[str], train: ImageSet,
                       images: ImageSet | Sequence[ImageSet], out_dir: str | pathlib.Path,
                       evaluation: dict | None = None, title: str = "PIP-Net explanations",
                       k: int = 10, batch_size: int = 64, verbose: int = 0,
                       part_names: Sequence[str] = ()) -> pathlib.Path:
    """Global explanations from `train` (the unaugmented training images), local ones of
    `images` (one set or several), and `out_dir/index.html`; returns the index path. With
    `part_names` the prototypes are sorted by part purity."""
    glob = build_global(model, train, class_names, out_dir, k, batch_size, verbose,
                        part_names=part_names)
    thresholds = (evaluation or {}).get("ood", {}).get("thresholds")
    local = explain_images(model, images, class_names, glob, out_dir, batch_size,
                           verbose, ood_thresholds=thresholds)
    return report.write_report(out_dir, title, evaluation, glob.scoring_sheet_png, glob.scoring_sheet,
                               glob.prototype_pngs, local, audit=glob.audit)
