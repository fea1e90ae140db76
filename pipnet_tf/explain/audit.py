"""Per-prototype audit for the report: what helps a person find prototypes to disable.

For every prototype shown in the report (its top-k training patches, `global_view`):
whether it is disabled, its class weights, its part purity over exactly those patches
(when the dataset has part annotations; `pipnet_tf.purity`), and how many of the patches
lie on the background: a patch is on the background when its centre is outside the
image's object bounding box (`ImageSet.object_boxes`, model-input pixels). A prototype is
flagged `mostly_background` when more than half of its patches whose image has a box
are on the background (the shortcut prototypes the authors' clinicians switched off).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipnet_tf import metrics, purity

BACKGROUND_SHARE = 0.5  # flag when more than this share of the patches is background


def background_patches(entries: Sequence[dict], object_boxes: np.ndarray | None
                       ) -> tuple[int, int]:
    """(patches whose centre lies outside their image's object box, patches whose image
    has a box) for one prototype's top-k `entries` [{"image", "box": (h_min, h_max,
    w_min, w_max)}]; object_boxes float (N, 4) x_min, y_min, x_max, y_max (NaN: none).
    A centre on the box's edge counts as inside."""
    if object_boxes is None:
        return 0, 0
    outside = counted = 0
    for entry in entries:
        box = object_boxes[entry["image"]]
        if not np.all(np.isfinite(box)):
            continue
        h_min, h_max, w_min, w_max = (float(v) for v in entry["box"])
        y, x = (h_min + h_max) / 2.0, (w_min + w_max) / 2.0
        counted += 1
        outside += int(not (box[0] <= x <= box[2] and box[1] <= y <= box[3]))
    return outside, counted


def prototype_audit(topk: dict[int, list[dict]], kernel: np.ndarray,
                    disabled: Sequence[int], class_names: Sequence[str],
                    object_boxes: np.ndarray | None = None,
                    part_locs: np.ndarray | None = None, part_names: Sequence[str] = (),
                    patch_size: int | None = None) -> list[dict]:
    """One row per prototype of `topk`, sorted by purity (least pure first; prototypes
    without a purity last) when `part_names` are given, else by id.

    Args:
        topk: prototype → its top-k patches (`global_view.prototype_topk`).
        kernel: (D, K) the scoring sheet *without* the mask, so that disabled
            prototypes still show the weights they had.
        disabled: the model's disabled prototype ids.
        object_boxes: (N, 4) object boxes of the images `topk` indexes, or None.
        part_locs: (N, P, 3) part centres in model-input pixels; part_names: P names.
        patch_size: the patch geometry's patch size (purity's centre correction).

    Returns:
        [{"prototype", "disabled", "classes": [[name, weight], …], "purity", "part",
        "background_patches", "patches_with_box", "mostly_background"}]; purity is None
        without part annotations, and 0 with part None when no part is ever in a patch
        (counted so in `purity`'s means too).
    """
    disabled = set(int(p) for p in disabled)
    weights = metrics.effective_weights(kernel)
    purities = {}
    if len(part_names) and part_locs is not None and patch_size:
        patches = {p: [(e["image"], e["box"]) for e in entries] for p, entries in topk.items()}
        purities = purity.purity_summary(patches, part_locs, part_names,
                                         patch_size)["per_prototype"]
    rows = []
    for p, entries in topk.items():
        outside, counted = background_patches(entries, object_boxes)
        found = purities.get(str(p))
        order = np.argsort(-weights[p], kind="stable")
        rows.append({
            "prototype": int(p),
            "disabled": int(p) in disabled,
            "classes": [[class_names[c], float(weights[p, c])] for c in order
                        if weights[p, c] > metrics.NONZERO],
            "purity": float(found["purity"]) if found else None,
            "part": found["part"] if found else None,
            "background_patches": outside,
            "patches_with_box": counted,
            "mostly_background": counted > 0 and outside > BACKGROUND_SHARE * counted,
        })
    if purities:
        rows.sort(key=lambda r: (r["purity"] is None, r["purity"] or 0.0, r["prototype"]))
    else:
        rows.sort(key=lambda r: r["prototype"])
    return rows


def notes(row: dict) -> list[str]:
    """Short lines for the prototype picture's label panel."""
    lines = []
    if row["purity"] is not None:
        lines.append(f"purity {row['purity']:.2f} ({row['part'] or 'no part'})")
    if row["patches_with_box"]:
        lead = "MOSTLY BACKGROUND" if row["mostly_background"] else "background"
        lines.append(f"{lead} {row['background_patches']}/{row['patches_with_box']} patches")
    return lines
