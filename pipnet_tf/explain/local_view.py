"""Local explanation of one image: the top classes with their raw scores and, for each, the
prototypes that add to it (presence × weight), where each was found, the matching patch and
the prototype's top-k training patches. An image whose scores are all 0 abstains: "no known
part found"."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from pipnet_tf import metrics
from pipnet_tf.explain import render
from pipnet_tf.patch_geometry import PatchGeometry

TOP_CLASSES = 3
MAX_PROTOTYPES = 6


def num(value: float) -> str:
    """2 decimals, or 2 significant digits below 0.01 (so small scores do not read as 0)."""
    return f"{value:.2f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2g}"


def contributions(presence: np.ndarray, kernel: np.ndarray, class_index: int) -> list[tuple[int, float, float, float]]:
    """[(prototype, presence, weight, presence·weight)] with contribution > 1e-3, largest
    first, for one image's (D,) thresholded presence."""
    w = metrics.effective_weights(kernel)[:, class_index]
    contrib = presence * w
    ids = [int(d) for d in np.argsort(-contrib, kind="stable") if contrib[d] > metrics.NONZERO]
    return [(d, float(presence[d]), float(w[d]), float(contrib[d])) for d in ids]


def explain_image(image: np.ndarray, scores: np.ndarray, presence: np.ndarray,
                  locations: np.ndarray, geometry: PatchGeometry, kernel: np.ndarray,
                  class_names: Sequence[str], topk_patches: dict[int, list[Image.Image]],
                  title: str = "", top_classes: int = TOP_CLASSES,
                  max_prototypes: int = MAX_PROTOTYPES, k: int = 10,
                  in_distribution: bool | None = None) -> tuple[Image.Image, dict]:
    """One PNG-ready picture and its JSON description for a single image.

    Args:
        image: (S, S, 3) 0..255, the model's input. scores (K,), presence (D,) thresholded,
        locations (D,) flat latent index; geometry: the model's patch geometry at the
        image's size; kernel (D, K); topk_patches: prototype → its top-k
        training patches (global explanation). in_distribution: the FPR95 OoD verdict, when
        known (shown under the prediction).
    """
    big, thumb, tile, small_tile, pad = 224, 112, 80, 44, 8
    head, body, small = render.font(18, bold=True), render.font(14, bold=True), render.font(12)
    order = [int(c) for c in np.argsort(-scores, kind="stable")[:top_classes] if scores[c] > 0]
    abstains = not order
    rows = []  # (class, [(proto, presence, weight, contribution, box)])
    for c in order:
        items = contributions(presence, kernel, c)
        rows.append((c, [(*it, geometry.location_box(locations[it[0]])) for it in items]))
    description = {
        "title": title,
        "abstained": abstains,
        "in_distribution": in_distribution,
        "classes": [{"class": class_names[c], "score": float(scores[c]),
                     "prototypes": [{"prototype": d, "presence": pr, "weight": w,
                                     "contribution": ct, "box": list(box)}
                                    for d, pr, w, ct, box in items]} for c, items in rows],
    }
    text_w = 230
    width = max(big + 2 * pad + 420, thumb + tile + text_w + 4 * pad + k * (small_tile + 4))
    proto_rows = sum(min(len(items), max_prototypes) + 1 for _, items in rows)
    height = big + 3 * pad + proto_rows * (thumb + pad) + len(rows) * 10 + 10
    picture, draw = render.canvas(width, height)
    picture.paste(render.resize(render.to_pil(image), big), (pad, pad))
    x0 = big + 2 * pad
    draw.text((x0, pad), render.ellipsize(title, body, width - x0 - pad), font=body, fill=render.MUTED)
    if abstains:
        draw.text((x0, pad + 30), "No known part found", font=head, fill=(180, 30, 30))
        draw.text((x0, pad + 58), "Every class score is 0: the model abstains.", font=small,
                  fill=render.TEXT)
    else:
        draw.text((x0, pad + 30), f"Prediction: {class_names[order[0]]}", font=head, fill=render.TEXT)
        for j, c in enumerate(order):
            draw.text((x0, pad + 62 + 20 * j), f"{j + 1}. {render.ellipsize(class_names[c], small, 260)}"
                      f"   score {num(scores[c])}", font=small, fill=render.TEXT)
        draw.text((x0, pad + 62 + 20 * len(order) + 6),
                  "score = Σ presence × weight over the prototypes below", font=small, fill=render.MUTED)
    if in_distribution is not None:
        verdict = ("accepted as in-distribution (FPR95 threshold)" if in_distribution
                   else "rejected as out-of-distribution (below the FPR95 threshold)")
        draw.text((x0, big - 14), verdict, font=small,
                  fill=(0, 110, 0) if in_distribution else (180, 30, 30))
    y = big + 2 * pad
    for c, items in rows:
        draw.line([pad, y, width - pad, y], fill=(200, 200, 200), width=2)
        draw.text((pad, y + 8), f"{class_names[c]}: score {num(scores[c])} from {len(items)} "
                  f"prototype{'s' if len(items) != 1 else ''}", font=body, fill=render.TEXT)
        y += 36
        for d, pr, w, ct, box in items[:max_prototypes]:
            picture.paste(render.with_box(image, box, thumb), (pad, y))
            x = pad + thumb + pad
            picture.paste(render.resize(render.crop(image, box), tile), (x, y))
            x += tile + pad
            draw.text((x, y + 2), f"Prototype {d}", font=body, fill=render.TEXT)
            draw.text((x, y + 24), f"presence {num(pr)} × weight {num(w)}", font=small, fill=render.TEXT)
            draw.text((x, y + 42), f"= {num(ct)}", font=body, fill=(0, 90, 160))
            draw.text((x, y + 66), "top training patches →", font=small, fill=render.MUTED)
            x += text_w
            for j, patch in enumerate(topk_patches.get(d, [])[:k]):
                picture.paste(render.resize(patch, small_tile), (x + j * (small_tile + 4), y + 2))
            y += thumb + pad
        if len(items) > max_prototypes:
            rest = sum(ct for _, _, _, ct, _ in items[max_prototypes:])
            draw.text((pad, y), f"+ {len(items) - max_prototypes} more prototypes adding {rest:.2f}",
                      font=small, fill=render.MUTED)
            y += 20
    return picture.crop((0, 0, width, min(height, y + pad))), description
