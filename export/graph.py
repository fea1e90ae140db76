"""The inference graph shared by every export format.

`InferenceGraph(model, image_size)` wraps a trained `PIPNet` in functions of uint8 images
of any batch and size, resized inside the graph (bilinear) to the model's square input:

    predict(images)  → scores (batch, K) float32, predicted_class (batch,) int32 (-1 when
                       abstaining), abstained (batch,) bool, presence (batch, D') float32;
    explain(images)  → the same, plus per prototype the latent cell where it fired,
                       prototype_cell (batch, D', 2) int32 (h, w), its box in the input
                       image's pixels, prototype_box (batch, D', 4) float32
                       (y_min, x_min, y_max, x_max; max exclusive), and the per-class
                       contributions presence × weight, contributions (batch, D', K).

With `compact=True` the prototypes whose scoring-sheet weights are all zero, and the
disabled ones (`PIPNet.disabled_prototypes`), are dropped after the softmax (which still
needs every channel), so D' ≤ D and `prototype_ids` maps row i of `presence` back to
prototype `prototype_ids[i]`. Scores are unchanged. Without it row i is prototype i, and a
disabled prototype's presence and contributions are exactly 0 (its cell and box still
say where it would have fired).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipnet_tf.backbones.cpu_fast_ops import portable_graphs

def kept_prototypes(model) -> np.ndarray:
    """Indices of enabled prototypes with a non-zero scoring-sheet weight for some class."""
    effective = np.maximum(model.enabled_kernel(), 0.0)
    return np.flatnonzero(effective.max(axis=1) > 0).astype(np.int32)


class InferenceGraph:
    """uint8 images → PIP-Net outputs, built from a trained model's layers.

    Args:
        model: a built `pipnet_tf.model.PIPNet`.
        image_size: the square input size S the model was trained at.
        compact: drop disabled prototypes and those whose weights are all zero from
            pooling and scoring.

    The image-space boxes are the backbone's own patch geometry
    (`PIPNet.patch_geometry`), the same boxes the report and purity use.
    """

    def __init__(self, model, image_size: int, compact: bool = False):
        if int(image_size) <= 0:
            raise ValueError(f"`image_size` must be positive, received: {image_size}")
        self.model = model
        self.image_size = int(image_size)
        self.compact = bool(compact)
        num_features = model.num_features
        self.prototype_ids = (kept_prototypes(model) if compact
                              else np.arange(num_features, dtype=np.int32))
        if compact and self.prototype_ids.size == 0:
            raise ValueError("--compact: every enabled prototype's scoring-sheet weights are "
                             "zero; nothing to keep.")
        self.geometry = model.patch_geometry(self.image_size)
        self.grid = self.geometry.grid

    @property
    def num_prototypes(self) -> int:
        """D', the number of prototype rows in the outputs."""
        return int(self.prototype_ids.size)

    def metadata(self) -> dict:
        return {
            **self.geometry.to_dict(),
            "presence_threshold": float(self.model.inference_threshold),
            "num_classes": int(self.model.num_classes),
            "num_prototypes": self.num_prototypes,
            "num_prototypes_model": int(self.model.num_features),
            "compact": self.compact,
            "disabled_prototypes": [int(p) for p in self.model.disabled_prototypes],
            "box_format": "y_min, x_min, y_max, x_max in input-image pixels, max exclusive",
        }

    # === Graph pieces ===
    def _prototype_maps(self, images):
        # Signature functions do not check shapes at call time: fail clearly at the entry
        # (rank, 3 channels) instead of deep inside the backbone.
        images = tf.ensure_shape(images, (None, None, None, 3), name="check_images_shape")
        # TF's CPU convolutions mishandle a batch of 0 images (the backbone fails with
        # "Incompatible shapes"): run at least one (blank) image and keep only the
        # `count` real rows, so an empty batch gives empty outputs of the right shapes.
        count = tf.shape(images)[0]
        x = tf.image.resize(tf.cast(images, tf.float32), (self.image_size, self.image_size),
                            method="bilinear")
        blank = tf.zeros(tf.stack([tf.maximum(1 - count, 0), self.image_size,
                                   self.image_size, 3]))  # FILL + CONCAT: TFLite has them
        x = tf.concat([x, blank], axis=0)
        with portable_graphs():  # plain TF ops only: no XLA kernels in exported graphs
            features = self.model.backbone(x, training=False)
        if self.model.add_on is not None:
            features = self.model.add_on(features)
        maps = self.model.prototype_activation(tf.cast(features, tf.float32))
        if self.compact:
            maps = tf.gather(maps, self.prototype_ids, axis=-1)
        return maps[:count]

    def _weights(self):
        weights = tf.nn.relu(tf.cast(self.model.classifier.kernel, tf.float32))
        if self.compact:
            weights = tf.gather(weights, self.prototype_ids, axis=0)
        return weights

    def _score(self, maps):
        presence = tf.reduce_max(maps, axis=(1, 2))
        threshold = tf.constant(self.model.inference_threshold, tf.float32)
        presence = tf.where(presence < threshold, tf.zeros_like(presence), presence)
        if not self.compact:  # the compact rows hold no disabled prototype
            presence = self.model.mask_presence(presence)
        weights = self._weights()
        scores = tf.matmul(presence, weights)
        if self.model.classifier.bias is not None:
            scores = scores + tf.cast(self.model.classifier.bias, tf.float32)
        abstained = tf.reduce_max(scores, axis=-1) <= 0.0
        predicted = tf.argmax(scores, axis=-1, output_type=tf.int32)
        predicted = tf.where(abstained, tf.fill(tf.shape(predicted), -1), predicted)
        return {"scores": scores, "predicted_class": predicted, "abstained": abstained,
                "presence": presence}, weights

    # === Endpoints ===
    def predict(self, images):
        """uint8 (batch, height, width, 3) → scores, predicted_class, abstained, presence."""
        outputs, _ = self._score(self._prototype_maps(images))
        return outputs

    def explain(self, images):
        """`predict` plus prototype_cell, prototype_box and contributions."""
        maps = self._prototype_maps(images)
        outputs, weights = self._score(maps)
        grid_h, grid_w = self.grid
        flat = tf.reshape(tf.transpose(maps, (0, 3, 1, 2)), (-1, self.num_prototypes,
                                                               grid_h * grid_w))
        index = tf.argmax(flat, axis=-1, output_type=tf.int32)  # (batch, D')
        rows, cols = index // grid_w, index % grid_w
        outputs["prototype_cell"] = tf.stack([rows, cols], axis=-1)
        row_b = tf.gather(tf.constant(self.geometry.bounds(0), tf.float32), rows)  # (b, D', 2)
        col_b = tf.gather(tf.constant(self.geometry.bounds(1), tf.float32), cols)
        shape = tf.cast(tf.shape(images), tf.float32)
        scale_y = shape[1] / float(self.image_size)
        scale_x = shape[2] / float(self.image_size)
        outputs["prototype_box"] = tf.stack(
            [row_b[..., 0] * scale_y, col_b[..., 0] * scale_x,
             row_b[..., 1] * scale_y, col_b[..., 1] * scale_x], axis=-1)
        outputs["contributions"] = outputs["presence"][:, :, None] * weights[None, :, :]
        return outputs
