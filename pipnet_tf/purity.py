"""Prototype purity w.r.t. object-part annotations (paper Table 3, reference
`util/eval_cub_csv.py`).

For every relevant prototype (max class weight > `PURITY_MIN_WEIGHT` = 1e-5, as the
reference's purity code; smaller than the 1e-3 of `metrics.NONZERO` that the reference
uses everywhere else) a set of patches is taken: its top-10 images by (unthresholded)
presence, or every image with presence > 0.5 (the "thresholded" variant). Each patch is
the box (`pipnet_tf.patch_geometry`) of the latent cell where the prototype was highest.
A part "is in" a patch when its annotated centre (visible parts only, in model-input
pixels: `ImageSet.part_locs`) lies inside the box, bounds inclusive. Left/right
variants ("left eye", "right eye") are merged into one part that is in the patch when either
visible variant is (that is, the nearest variant is taken). For each prototype and part, the
purity is the fraction of the prototype's patches showing that part among the patches whose
image has it visible; the prototype's purity is that of its *most frequent* part (most
patches containing it), and the reference's "purest part" figure is reported too.
Results are mean ± std (population) over prototypes.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from pipnet_tf import metrics
from pipnet_tf.patch_geometry import REFERENCE_RULE, PatchGeometry

PURITY_MIN_WEIGHT = 1e-5  # reference get_topk_cub / get_proto_patches_cub
TOP_K = 10
PRESENCE_THRESHOLD = 0.5

Box = tuple[float, float, float, float]  # h_min, h_max, w_min, w_max (pixels, resized image)


def merged_part_groups(part_names: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Merges "left X"/"right X" (whole word, any case) into one part "X".

    Returns [(merged name, [part indices])] ordered by the first index of each group.
    """
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(part_names):
        key = re.sub(r"\b(left|right)\b", " ", name, flags=re.IGNORECASE)
        key = re.sub(r"[\s_]+", " ", key).strip() or name
        groups.setdefault(key, []).append(index)
    return list(groups.items())


def centre_patch(box: Box, patch: int) -> Box:
    """The reference's correction: a box larger than `patch` shrinks to its centre part."""
    h_min, h_max, w_min, w_max = (float(v) for v in box)
    if h_max - h_min > patch:
        c = (h_max - h_min - patch) // 2
        h_min, h_max = h_min + c, h_max - c
    if w_max - w_min > patch:
        c = (w_max - w_min - patch) // 2
        w_min, w_max = w_min + c, w_max - c
    return h_min, h_max, w_min, w_max


def parts_in_box(locs: np.ndarray, box: Box, groups: list[tuple[str, list[int]]]) -> dict[int, int]:
    """Group index → 1/0 (centre inside `box`) for the groups with a visible part in `locs`
    ((P, 3) x, y, visible of one image)."""
    h_min, h_max, w_min, w_max = box
    hits = {}
    for g, (_, members) in enumerate(groups):
        visible = [m for m in members if locs[m, 2] > 0]
        if not visible:
            continue
        inside = [h_min <= locs[m, 1] <= h_max and w_min <= locs[m, 0] <= w_max for m in visible]
        hits[g] = int(any(inside))
    return hits


def prototype_purity(patches: Sequence[tuple[int, Box]], locs: np.ndarray,
                     groups: list[tuple[str, list[int]]]) -> dict:
    """Purity of one prototype from its patches [(image index, box)] and (N, P, 3) part
    centres in resized-image pixels."""
    presences: dict[int, list[int]] = {}
    for image, box in patches:
        for g, hit in parts_in_box(locs[image], box, groups).items():
            presences.setdefault(g, []).append(hit)
    best_sum, frequent, frequent_purity = 0, None, 0.0
    purest, purest_sum, purest_purity = None, -1, 0.0
    for g in sorted(presences):
        values = np.asarray(presences[g], np.float64)
        purity, occurs = float(values.mean()), int(values.sum())
        if occurs > best_sum:
            best_sum, frequent, frequent_purity = occurs, g, purity
        if purity > purest_purity or (purity == purest_purity and occurs > purest_sum):
            purest, purest_sum, purest_purity = g, occurs, purity
    return {
        "num_patches": len(patches),
        "part": groups[frequent][0] if frequent is not None else None,
        "purity": frequent_purity,
        "purest_part": groups[purest][0] if purest is not None else None,
        "purest_purity": purest_purity,
    }


def topk_images(presence: np.ndarray, prototype: int, k: int = TOP_K) -> np.ndarray:
    """Indices of the k images with the highest presence of `prototype` (ties: first image)."""
    return np.argsort(-presence[:, prototype], kind="stable")[:k]


def prototype_patches(presence: np.ndarray, locations: np.ndarray, geometry: PatchGeometry,
                      prototypes: Sequence[int], k: int = TOP_K,
                      threshold: float | None = None) -> dict[int, list[tuple[int, Box]]]:
    """Patches per prototype: its top-`k` images, or, when `threshold` is given, all images
    with presence > `threshold`; presence and locations (N, D) from
    `collect_prototype_outputs`."""
    result = {}
    for p in prototypes:
        if threshold is None:
            images = topk_images(presence, p, k)
        else:
            images = np.flatnonzero(presence[:, p] > threshold)
        result[int(p)] = [(int(i), geometry.location_box(locations[i, p]))
                          for i in images]
    return result


def purity_summary(patches: dict[int, list[tuple[int, Box]]], locs: np.ndarray,
                   part_names: Sequence[str], patch: int) -> dict:
    """Mean ± std purity over the prototypes in `patches` (those with at least one patch)."""
    groups = merged_part_groups(part_names)
    per_prototype = {}
    for p, items in patches.items():
        if items:
            items = [(i, centre_patch(box, patch)) for i, box in items]
            per_prototype[str(p)] = prototype_purity(items, locs, groups)
    values = np.array([v["purity"] for v in per_prototype.values()], np.float64)
    purest = np.array([v["purest_purity"] for v in per_prototype.values()], np.float64)

    def stats(x):
        return (float(x.mean()), float(x.std())) if len(x) else (float("nan"), float("nan"))

    mean, std = stats(values)
    pmean, pstd = stats(purest)
    return {
        "num_prototypes": len(per_prototype),
        "mean": mean, "std": std,
        "purest_part_mean": pmean, "purest_part_std": pstd,
        "part_related_prototypes": int(np.sum(purest > 0.5)),
        "merged_parts": [name for name, _ in groups],
        "per_prototype": per_prototype,
    }


def evaluate_purity(outputs: dict, kernel: np.ndarray, part_locs: np.ndarray,
                    part_names: Sequence[str], geometry: PatchGeometry, k: int = TOP_K,
                    threshold: float = PRESENCE_THRESHOLD,
                    min_weight: float = PURITY_MIN_WEIGHT) -> dict:
    """Both purity variants for one image set.

    Args:
        outputs: `collect_prototype_outputs` of the images (uses presence_raw, locations).
        kernel: (D, K) scoring sheet.
        part_locs: (N, P, 3) x, y, visible in model-input pixels (`ImageSet.part_locs`).
        part_names: P names.
        geometry: the model's patch geometry: where each cell looks. The boxes are always
            judged with the reference's patch size, 32/224 of the input side (SPEC §4),
            whatever patch size the backbone declares for its pictures.
    """
    geometry = geometry.with_patch_size(REFERENCE_RULE.geometry(geometry.image_size,
                                                                geometry.grid).patch_size)
    protos = metrics.relevant_prototypes(kernel, min_weight)
    presence, locations = outputs["presence_raw"], outputs["locations"]
    topk = prototype_patches(presence, locations, geometry, protos, k=k)
    thresholded = prototype_patches(presence, locations, geometry, protos, threshold=threshold)
    patch = geometry.patch_size
    return {
        "patch_size": patch,
        f"top{k}": purity_summary(topk, part_locs, part_names, patch),
        f"presence_gt_{threshold:g}": purity_summary(thresholded, part_locs, part_names, patch),
    }
