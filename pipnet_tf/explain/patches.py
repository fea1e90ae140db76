"""Where a prototype was found: latent cell → image patch (reference `get_img_coordinates`).

The reference draws a 32x32 patch at 224x224 input, `skip = round((224 - 32) / (W - 1))`
pixels apart for a W x W latent grid (SPEC §4). For other input sizes S the patch is scaled,
`patch = round(32 * S / 224)`, and the skip follows the same formula. The 26x26 grid of
`convnext_tiny_26` has the reference's special edge handling: the first and last cells get
half a skip (4 px at 224).

`collect_prototype_outputs` runs a model once over a dataset and keeps, for every image and
prototype, its presence and the latent cell where it was highest, so that patches can be cut
later without keeping the (N, H, W, D) feature maps.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

REFERENCE_IMAGE_SIZE = 224
REFERENCE_PATCH_SIZE = 32
EDGE_HANDLED_LATENT = 26  # the reference's convnext_tiny_26 special case


def patch_geometry(image_size: int, latent_size: int) -> tuple[int, int]:
    """(patch, skip) in pixels for an `image_size` input and a `latent_size` grid."""
    if image_size <= 0 or latent_size <= 0:
        raise ValueError(f"image_size and latent_size must be positive, received "
                         f"image_size={image_size}, latent_size={latent_size}")
    patch = round(REFERENCE_PATCH_SIZE * image_size / REFERENCE_IMAGE_SIZE)
    patch = max(1, min(patch, image_size))
    skip = round((image_size - patch) / (latent_size - 1)) if latent_size > 1 else 0
    return patch, int(skip)


def patch_box(image_size: int, latent_hw: tuple[int, int], h_idx: int, w_idx: int
              ) -> tuple[int, int, int, int]:
    """Pixel box (h_min, h_max, w_min, w_max), max exclusive, of latent cell (h_idx, w_idx).

    Follows the reference exactly (incl. its 26x26 edge offset and clamping to the image).
    """
    latent_h, latent_w = int(latent_hw[0]), int(latent_hw[1])
    patch, skip = patch_geometry(image_size, latent_w)
    h_idx, w_idx = int(h_idx), int(w_idx)
    if latent_h == EDGE_HANDLED_LATENT and latent_w == EDGE_HANDLED_LATENT:
        offset = skip // 2  # 4 px at 224
        h_min = max(0, (h_idx - 1) * skip + offset)
        if h_idx >= latent_w - 1:
            h_min -= offset
        h_max = h_min + patch
        w_min = max(0, (w_idx - 1) * skip + offset)
        if w_idx >= latent_w - 1:
            w_min -= offset
        w_max = w_min + patch
    else:
        h_min, h_max = h_idx * skip, min(image_size, h_idx * skip + patch)
        w_min, w_max = w_idx * skip, min(image_size, w_idx * skip + patch)
    if h_idx == latent_h - 1:
        h_max = image_size
    if w_idx == latent_w - 1:
        w_max = image_size
    if h_max == image_size:
        h_min = image_size - patch
    if w_max == image_size:
        w_min = image_size - patch
    return h_min, h_max, w_min, w_max


def location_box(image_size: int, latent_hw: tuple[int, int], flat_location: int
                 ) -> tuple[int, int, int, int]:
    """`patch_box` of a row-major flat latent index."""
    h_idx, w_idx = divmod(int(flat_location), int(latent_hw[1]))
    return patch_box(image_size, latent_hw, h_idx, w_idx)


def collect_prototype_outputs(model: keras.Model, dataset: tf.data.Dataset, verbose: int = 0
                              ) -> dict[str, np.ndarray]:
    """One pass of `model` (inference mode) over `(images, labels)` batches.

    Returns numpy arrays:
        scores, presence: (N, K), (N, D) with the 0.1 inference threshold (as `predict`);
        scores_raw, presence_raw: (N, K), (N, D) without it (reference `inference=False`);
        locations: int32 (N, D) row-major index of the latent cell of each max presence;
        labels: (N,); latent_hw: (2,) int; image_size: () int.
    The model is not modified.
    """
    if _LAST_STEP[0] is not model:  # one traced step per model: no retracing per call
        _LAST_STEP[:] = [model, _make_step(model)]
    step = _LAST_STEP[1]
    keys = ("scores", "presence", "scores_raw", "presence_raw", "locations")
    parts: dict[str, list] = {k: [] for k in keys + ("labels",)}
    latent_hw, image_size = None, None
    batches = int(dataset.cardinality())
    progress = keras.utils.Progbar(batches if batches > 0 else None, verbose=verbose, unit_name="batch")
    for index, (images, labels) in enumerate(dataset):
        out = step(images)
        for k in keys:
            parts[k].append(out[k].numpy())
        parts["labels"].append(np.asarray(labels))
        latent_hw = out["latent_hw"].numpy()
        image_size = int(images.shape[1])
        progress.update(index + 1)
    if latent_hw is None:
        raise ValueError("The dataset is empty.")
    result = {k: np.concatenate(v) for k, v in parts.items()}
    result["latent_hw"] = latent_hw.astype(np.int64)
    result["image_size"] = np.asarray(image_size)
    return result


def _make_step(model: keras.Model):
    @tf.function(reduce_retracing=True)
    def step(images):
        out = model(images, training=False, apply_threshold=False)
        features = out["proto_features"]
        shape = tf.shape(features)
        flat = tf.reshape(features, (shape[0], shape[1] * shape[2], shape[3]))
        presence = model.threshold_presence(out["presence"])
        return {
            "scores": model.classifier(presence),
            "presence": presence,
            "scores_raw": out["scores"],
            "presence_raw": out["presence"],
            "locations": tf.cast(tf.argmax(flat, axis=1), tf.int32),
            "latent_hw": shape[1:3],
        }

    return step


# The last model's traced step (holds at most one model alive).
_LAST_STEP: list = [None, None]
