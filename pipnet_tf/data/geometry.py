"""Bounding-box crops and the mapping of part locations through crop + resize.

The reference trains and tests CUB on images cropped to their bounding box with PIL,
`img.crop((x, y, x + w, y + h))`, which rounds the box to whole pixels. `crop_boxes` does
the same rounding (and clips to the image), `normalized_boxes` expresses the result as
fractions of the image so the graph crop (`pipeline`) hits the same pixels whatever the
decoded resolution, and `map_part_locs` moves annotated part locations into the resized
crop, e.g. for the part-purity metric.

Coordinates are continuous pixels from the top-left corner of the (oriented) original
image; a resize from `n` to `m` pixels maps `x` to `x * m / n` (half-pixel centres, as
`tf.image.resize`).
"""

from __future__ import annotations

import numpy as np


def _check_n(name: str, array: np.ndarray, n: int, tail: tuple[int, ...]) -> None:
    if array.shape[:1] != (n,) or array.shape[1:] != tail:
        raise ValueError(f"{name} must have shape ({n}, {', '.join(map(str, tail))}), "
                         f"got {array.shape!r}")


def crop_boxes(bboxes: np.ndarray | None, sizes: np.ndarray) -> np.ndarray:
    """Integer crop boxes `(N, 4)` as x0, y0, x1, y1 (x1, y1 exclusive).

    Args:
        bboxes: float `(N, 4)` x, y, width, height in original pixels; rows with NaN (or
            `bboxes=None`) mean "no box": the whole image.
        sizes: int `(N, 2)` image (width, height).
    """
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    n = len(sizes)
    full = np.concatenate([np.zeros((n, 2), np.int64), sizes], axis=1)
    if bboxes is None:
        return full
    bboxes = np.asarray(bboxes, np.float64)
    _check_n("bboxes", bboxes, n, (4,))
    valid = np.all(np.isfinite(bboxes), axis=1)
    box = np.where(valid[:, None], bboxes, 0.0)
    x0y0 = np.round(box[:, :2])  # PIL's crop rounds each coordinate (half to even)
    x1y1 = np.round(box[:, :2] + box[:, 2:])
    out = np.concatenate([x0y0, x1y1], axis=1).astype(np.int64)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, sizes[:, :1])
    out[:, 1::2] = np.clip(out[:, 1::2], 0, sizes[:, 1:])
    # An empty or inverted box keeps the whole image rather than producing 0 pixels.
    valid &= (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return np.where(valid[:, None], out, full)


def normalized_boxes(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """float32 `(N, 4)` y0, x0, y1, x1 as fractions of the image, from `crop_boxes` output."""
    boxes = np.asarray(boxes, np.float64)
    sizes = np.maximum(np.asarray(sizes, np.float64).reshape(-1, 2), 1.0)
    _check_n("boxes", boxes, len(sizes), (4,))
    w, h = sizes[:, 0], sizes[:, 1]
    return np.stack([boxes[:, 1] / h, boxes[:, 0] / w, boxes[:, 3] / h, boxes[:, 2] / w],
                    axis=1).astype(np.float32)


def map_part_locs(part_locs: np.ndarray, sizes: np.ndarray, out_size: int,
                  bboxes: np.ndarray | None = None) -> np.ndarray:
    """Part locations in the `(out_size, out_size)` network input: crop, then resize.

    Args:
        part_locs: float `(N, P, 3)` x, y, visible in original pixels.
        sizes: int `(N, 2)` original (width, height).
        out_size: side of the square resize (the eval transform ignores aspect ratio).
        bboxes: optional float `(N, 4)` x, y, w, h crop boxes (NaN rows: no crop).

    Returns:
        float32 `(N, P, 3)`: x, y in output pixels and visible, set to 0 for parts that
        fall outside the crop (coordinates of invisible parts are still mapped).

    Example:
        >>> locs = np.array([[[60.0, 40.0, 1.0]]])
        >>> map_part_locs(locs, [[200, 100]], 10, bboxes=[[50.0, 20.0, 100.0, 40.0]])
        array([[[1., 5., 1.]]], dtype=float32)
    """
    part_locs = np.asarray(part_locs, np.float64)
    if part_locs.ndim != 3 or part_locs.shape[-1] != 3:
        raise ValueError(f"part_locs must have shape (N, P, 3), got {part_locs.shape!r}")
    if out_size <= 0:
        raise ValueError(f"out_size must be positive, got {out_size!r}")
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    _check_n("sizes", sizes, len(part_locs), (2,))
    boxes = crop_boxes(bboxes, sizes).astype(np.float64)
    origin = boxes[:, None, :2]
    extent = np.maximum(boxes[:, None, 2:] - origin, 1.0)
    xy = part_locs[..., :2] - origin
    inside = np.all((xy >= 0) & (xy <= extent), axis=-1)
    out = np.empty_like(part_locs)
    out[..., :2] = xy * (out_size / extent)
    out[..., 2] = np.where(inside, part_locs[..., 2], 0.0)
    return out.astype(np.float32)


def map_boxes(bboxes: np.ndarray, sizes: np.ndarray, out_size: int,
              crop: np.ndarray | None = None) -> np.ndarray:
    """Object bounding boxes in the `(out_size, out_size)` network input: crop, then resize
    (the same mapping as `map_part_locs`).

    Args:
        bboxes: float `(N, 4)` x, y, width, height in original pixels; NaN rows: no box.
        sizes: int `(N, 2)` original (width, height).
        out_size: side of the square resize.
        crop: optional float `(N, 4)` x, y, w, h crop boxes (NaN rows: no crop).

    Returns:
        float32 `(N, 4)` x_min, y_min, x_max, y_max in output pixels, clipped to the crop;
        NaN rows where there is no box or it lies outside the crop.

    Example:
        >>> map_boxes(np.array([[60.0, 30.0, 40.0, 20.0]]), [[200, 100]], 10)
        array([[3., 3., 5., 5.]], dtype=float32)
    """
    bboxes = np.asarray(bboxes, np.float64)
    if out_size <= 0:
        raise ValueError(f"out_size must be positive, got {out_size!r}")
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    _check_n("bboxes", bboxes, len(sizes), (4,))
    frame = crop_boxes(crop, sizes).astype(np.float64)  # x0, y0, x1, y1 of the crop
    origin, extent = frame[:, :2], np.maximum(frame[:, 2:] - frame[:, :2], 1.0)
    lo = np.clip(bboxes[:, :2] - origin, 0.0, extent)
    hi = np.clip(bboxes[:, :2] + bboxes[:, 2:] - origin, 0.0, extent)
    scale = out_size / extent
    out = np.concatenate([lo * scale, hi * scale], axis=1)
    empty = ~np.all(np.isfinite(bboxes), axis=1) | np.any(hi <= lo, axis=1)
    out[empty] = np.nan
    return out.astype(np.float32)
