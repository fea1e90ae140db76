"""Out-of-distribution detection with class-specific FPR95 thresholds (paper Table 2,
reference `get_thresholds` / `eval_ood`, SPEC §4).

All scores here are the *unthresholded* scoring-sheet outputs (reference `inference=False`):
`collect_prototype_outputs(...)["scores_raw"]`. An image is accepted as in-distribution when
max(scores) >= the threshold of its predicted class.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
from absl import logging

# What `tf.io.decode_image` (pipnet_tf.data.pipeline) can read.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
MAX_BACKOFF_STEPS = 1_000_000


def list_images(folder: str | os.PathLike, what: str = "Image folder") -> list[str]:
    """Image files under `folder` (recursive, extensions in IMAGE_EXTENSIONS, any case),
    sorted; `what` names the folder in errors (e.g. the flag that gave it)."""
    root = pathlib.Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{what} {str(root)!r} does not exist or is not a folder")
    files = sorted(str(p) for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"{what} {str(root)!r} holds no images "
                         f"({', '.join(IMAGE_EXTENSIONS)})")
    return files


def parse_source(spec: str) -> tuple[str, str]:
    """"folder:PATH", "NAME=folder:PATH", "NAME=PATH" or "PATH" → (name, path)."""
    name, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
    path = rest.removeprefix("folder:")
    if not path:
        raise ValueError(f"Bad OoD source {spec!r}; expected folder:PATH or NAME=folder:PATH")
    return name or pathlib.Path(path.rstrip("/")).name, path


def class_thresholds(scores: np.ndarray, percentile: float = 95.0) -> tuple[np.ndarray, dict]:
    """Class-specific thresholds so that `percentile`% of `scores` (ID test images, (N, K),
    unthresholded) are accepted.

    t_c = np.percentile(max scores of images predicted c, 100 - percentile); classes never
    predicted get the mean of the others. If fewer than percentile% have score > t_c, every
    t_c is multiplied by 0.999 until percentile% have score >= t_c.
    Returns (thresholds (K,), info with the back-off steps, the accepted fraction and the
    reference's unused overall thresholds).
    """
    scores = np.asarray(scores, np.float64)
    num_classes = scores.shape[1]
    pred, top = np.argmax(scores, axis=1), np.max(scores, axis=1)
    thresholds = np.full(num_classes, np.nan)
    for c in range(num_classes):
        if np.any(pred == c):
            thresholds[c] = np.percentile(top[pred == c], 100 - percentile)
    predicted = ~np.isnan(thresholds)
    missing = [int(c) for c in np.flatnonzero(~predicted)]
    if missing:
        logging.info("Classes %s are never predicted: using the mean threshold", missing)
        thresholds[~predicted] = np.mean(thresholds[predicted])
    accepted = float(np.mean(top > thresholds[pred]))
    steps = 0
    if percentile < 100:
        while accepted < percentile / 100.0:
            if steps >= MAX_BACKOFF_STEPS:
                raise RuntimeError(f"FPR95 back-off did not reach {percentile}% in {steps} steps")
            thresholds = thresholds * 0.999
            accepted = float(np.mean(top >= thresholds[pred]))
            steps += 1
    info = {
        "percentile": float(percentile),
        "backoff_steps": steps,
        "id_accepted": accepted,
        "never_predicted_classes": missing,
        "overall_threshold": float(np.percentile(top, 100 - percentile)),
    }
    return thresholds, info


def accepted(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(N,) bool: max(scores) >= thresholds[argmax(scores)] (reference `eval_ood`)."""
    scores = np.asarray(scores, np.float64)
    return np.max(scores, axis=1) >= np.asarray(thresholds)[np.argmax(scores, axis=1)]


def ood_report(id_scores: np.ndarray, ood_scores: dict[str, np.ndarray],
               id_name: str = "ID test", percentile: float = 95.0) -> dict:
    """Thresholds from `id_scores`, then the fraction of every OoD source accepted (FPR95)."""
    thresholds, info = class_thresholds(id_scores, percentile)
    rows = {name: {"num_images": len(s), "accepted": float(np.mean(accepted(s, thresholds))),
                   "abstained": int(np.sum(np.max(s, axis=1) <= 0))}
            for name, s in ood_scores.items()}
    return {
        "id_name": id_name,
        "tpr": float(np.mean(accepted(id_scores, thresholds))),
        "thresholds": [float(t) for t in thresholds],
        **info,
        "sources": rows,
    }


def markdown_table(report: dict) -> str:
    """Table 2-style text: the fraction of each source classified as in-distribution."""
    lines = [f"| ID dataset | OoD dataset | images | FPR{int(report['percentile'])} (accepted as ID) |",
             "|---|---|---:|---:|"]
    lines.append(f"| {report['id_name']} | (ID test itself: TPR) | | {100 * report['tpr']:.1f}% |")
    for name, row in report["sources"].items():
        lines.append(f"| {report['id_name']} | {name} | {row['num_images']} | "
                     f"{100 * row['accepted']:.1f}% |")
    return "\n".join(lines)
