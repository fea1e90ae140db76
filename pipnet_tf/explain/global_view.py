"""Global explanations: each relevant prototype's top-k training patches, and the scoring
sheet (prototypes and weights per class) as JSON and as a picture (reference
`visualize_topk`, which uses inference-mode presence and skips prototypes whose top-k never
exceeds 0.1)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from pipnet_tf import metrics
from pipnet_tf.explain import render
from pipnet_tf.patch_geometry import PatchGeometry

TOP_K = 10
MIN_PRESENCE = 0.1


def prototype_topk(outputs: dict, kernel: np.ndarray, geometry: PatchGeometry,
                   k: int = TOP_K, prototypes: Sequence[int] | None = None
                   ) -> dict[int, list[dict]]:
    """For every relevant prototype (a class weight > `metrics.NONZERO`; or each of
    `prototypes`) with a top-k presence > 0.1: its k best training images [{"image":
    index, "presence": p, "box": (h_min, h_max, w_min, w_max)}], best first. `outputs`
    holds (N, D) thresholded "presence" and "locations" (`collect_prototype_outputs`)."""
    presence, locations = outputs["presence"], outputs["locations"]
    if prototypes is None:
        prototypes = metrics.relevant_prototypes(kernel)
    result = {}
    for p in prototypes:
        top = np.argsort(-presence[:, p], kind="stable")[:k]
        if not np.any(presence[top, p] > MIN_PRESENCE):
            continue
        result[int(p)] = [{"image": int(i), "presence": float(presence[i, p]),
                           "box": geometry.location_box(locations[i, p])} for i in top]
    return result


def render_prototype_grid(prototype: int, patches: Sequence[Image.Image], presences: Sequence[float],
                          class_weights: Sequence[tuple[str, float]], tile: int = 80,
                          notes: Sequence[str] = (), disabled: bool = False) -> Image.Image:
    """One row: a label panel ("Prototype 12", its class weights, `notes`) then the k
    patches, each enlarged to `tile` px with its presence underneath. A `disabled`
    prototype is drawn greyed out and titled so."""
    title, small = render.font(16, bold=True), render.font(12)
    label_w, pad, caption = 240, 6, 16
    width = label_w + len(patches) * (tile + pad) + pad
    lines = [f"{render.ellipsize(name, small, label_w - 60)}  w={w:.2f}" for name, w in class_weights[:4]]
    if len(class_weights) > 4:
        lines.append(f"+{len(class_weights) - 4} more classes")
    lines += [render.ellipsize(note, small, label_w - 2 * pad) for note in notes]
    height = max(tile + caption + 2 * pad, 30 + 15 * len(lines) + pad)
    image, draw = render.canvas(width, height)
    draw.text((pad, pad), f"Prototype {prototype}" + (" (disabled)" if disabled else ""),
              font=title, fill=render.MUTED if disabled else render.TEXT)
    for j, line in enumerate(lines):
        draw.text((pad, 30 + 15 * j), line, font=small, fill=render.MUTED)
    for j, (patch, score) in enumerate(zip(patches, presences)):
        x = label_w + j * (tile + pad)
        image.paste(render.resize(render.greyed(patch) if disabled else patch, tile), (x, pad))
        draw.text((x + tile // 2, pad + tile + 2), f"{score:.2f}", font=small,
                  fill=render.MUTED if disabled else render.TEXT, anchor="mt")
    return image


def class_weights_of(kernel: np.ndarray, prototype: int, class_names: Sequence[str]) -> list[tuple[str, float]]:
    """[(class name, weight)] of one prototype's non-zero weights, largest first."""
    w = metrics.effective_weights(kernel)[prototype]
    ids = [c for c in np.argsort(-w, kind="stable") if w[c] > metrics.NONZERO]
    return [(class_names[c], float(w[c])) for c in ids]


def render_scoring_sheet(kernel: np.ndarray, class_names: Sequence[str],
                         thumbnails: dict[int, Image.Image], tile: int = 64,
                         max_per_class: int = 12) -> Image.Image:
    """Per class one row: its prototypes (top patch as thumbnail) with their weights."""
    sheet = metrics.scoring_sheet(kernel, list(class_names))
    title, small = render.font(15, bold=True), render.font(12)
    label_w, pad, caption = 230, 8, 30
    longest = max((min(len(v), max_per_class) for v in sheet.values()), default=1)
    width = label_w + max(longest, 1) * (tile + pad) + pad + 80
    row_h = tile + caption + pad
    image, draw = render.canvas(width, len(sheet) * row_h + pad)
    for r, (name, entries) in enumerate(sheet.items()):
        y = pad + r * row_h
        draw.text((pad, y + 4), render.ellipsize(name, title, label_w - 2 * pad), font=title,
                  fill=render.TEXT)
        draw.text((pad, y + 26), f"{len(entries)} prototypes", font=small, fill=render.MUTED)
        for j, (p, w) in enumerate(entries[:max_per_class]):
            x = label_w + j * (tile + pad)
            if p in thumbnails:
                image.paste(render.resize(thumbnails[p], tile), (x, y))
            else:
                draw.rectangle([x, y, x + tile - 1, y + tile - 1], outline=render.MUTED)
            draw.text((x + tile // 2, y + tile + 2), f"P{p}", font=small, fill=render.TEXT, anchor="mt")
            draw.text((x + tile // 2, y + tile + 15), f"w {w:.2f}", font=small, fill=render.MUTED,
                      anchor="mt")
        if len(entries) > max_per_class:
            draw.text((label_w + max_per_class * (tile + pad), y + tile // 2),
                      f"+{len(entries) - max_per_class}", font=title, fill=render.MUTED)
        draw.line([0, y + row_h - 3, width, y + row_h - 3], fill=(225, 225, 225))
    return image
