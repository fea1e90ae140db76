"""One patch geometry: the reference's cell → box rule (SPEC §4), and the same boxes in the
SavedModel's `explain` signature, the report's local explanations and purity."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from export.saved_model import export_saved_model
from pipnet_tf import purity
from pipnet_tf.backbones import Backbone, build_backbone
from pipnet_tf.evaluation import collect_prototype_outputs
from pipnet_tf.explain import local_view
from pipnet_tf.model import PIPNet
from pipnet_tf.patch_geometry import REFERENCE_RULE, PatchRule, StridePatchRule


# === The rule, on the reference's own figures ===
def test_patch_size_and_skip_of_the_reference_grids():
    for grid, skip in ((26, 8), (13, 16), (28, 7)):
        g = REFERENCE_RULE.geometry(224, (grid, grid))
        assert (g.patch_size, g.skip(0), g.skip(1)) == (32, skip, skip)
    g = REFERENCE_RULE.geometry(64, (8, 8))
    assert (g.patch_size, g.skip()) == (9, 8)  # 32·64/224 = 9.1 → 9; round(55/7) = 8


def test_26x26_edge_handling():
    box = REFERENCE_RULE.geometry(224, (26, 26)).box
    assert box(0, 0) == (0, 32, 0, 32)       # max(0, -8 + 4)
    assert box(1, 2) == (4, 36, 12, 44)      # (i-1)·8 + 4
    assert box(24, 24) == (188, 220, 188, 220)
    assert box(25, 0) == (192, 224, 0, 32)   # last: offset removed, clamped to the image
    bounds = REFERENCE_RULE.geometry(224, (26, 26)).bounds(0)
    assert (bounds[:, 1] - bounds[:, 0] == 32).all()


def test_other_grids_end_flush_with_the_image():
    assert REFERENCE_RULE.geometry(224, (13, 13)).box(3, 12) == (48, 80, 192, 224)
    assert REFERENCE_RULE.geometry(224, (28, 28)).box(27, 1) == (192, 224, 7, 39)
    g = REFERENCE_RULE.geometry(64, (8, 8))
    assert g.box(7, 6) == (55, 64, 48, 57) and g.location_box(7 * 8 + 6) == (55, 64, 48, 57)
    whole = PatchRule(patch_size=224).geometry(32, (4, 4))  # patch as large as the image
    assert (whole.bounds(0) == [0, 32]).all()


def test_geometry_of_26_cells_at_64_px_scales_patch_and_offset():
    """At 64 px the exported box used to be 32 px while the report's was 9 (issue 13)."""
    g = REFERENCE_RULE.geometry(64, (26, 26))
    assert g.patch_size == 9 and g.skip() == 2
    assert g.box(1, 1) == (1, 10, 1, 10)  # offset skip // 2 = 1
    assert g.box(25, 25) == (55, 64, 55, 64)


def test_stride_rule_centres_boxes_on_the_cells():
    g = StridePatchRule(stride=8, offset=4.0).geometry(128, (16, 16))
    assert g.patch_size == 18 and g.skip() == 8
    assert g.box(0, 1) == (0, 18, 3, 21)          # centre 4 → [-5, 13] shifted inside; 12 ± 9
    assert g.box(8, 15) == (59, 77, 110, 128)     # 68 ± 9; 124 ± 9 shifted inside
    # The reference's edge-to-edge spacing (skip 7) drifts from the cell centres:
    ref = REFERENCE_RULE.geometry(128, (16, 16))
    centres = ref.bounds(0).mean(axis=1)
    assert abs(centres[14] - (8 * 14 + 4)) > 8  # half a patch off
    assert g.with_patch_size(32).box(4, 4) == (20, 52, 20, 52)


def test_bad_geometry_arguments():
    with pytest.raises(ValueError, match="positive"):
        REFERENCE_RULE.geometry(0, (8, 8))
    with pytest.raises(ValueError, match="positive"):
        PatchRule(patch_size=0)


def test_backbones_declare_their_geometry():
    tiny = build_backbone("tiny_cnn", 64).patch_geometry()
    assert (tiny.grid, tiny.patch_size, tiny.stride) == ((8, 8), 9, 8)
    # Cell i looks at 8i + 4 (its receptive field's centre): a 9-px box centred there.
    assert [tuple(b) for b in tiny.bounds(0)[[0, 3, 7]]] == [(0, 9), (24, 33), (55, 64)]
    for name, size, grid in (("convnext_tiny_13", 224, 13),
                             ("convnext_tiny_26", 224, 26), ("resnet50", 224, 28)):
        backbone = build_backbone(name, size)  # geometry needs the graph, not a forward pass
        assert backbone.patch_geometry() == REFERENCE_RULE.geometry(size, (grid, grid)), name


# === The same boxes everywhere ===
@keras.saving.register_keras_serializable(package="pipnet_tf_tests")
class GridBackbone(Backbone):
    """(batch, S, S, 3) → (batch, grid, grid, channels): any grid at any size, cheaply."""

    def __init__(self, image_size=64, grid=8, channels=8, seed=0, **kwargs):
        inputs = keras.Input((image_size, image_size, 3))
        x = keras.layers.Rescaling(1 / 255.0)(inputs)
        x = keras.layers.Resizing(grid, grid, interpolation="area")(x)
        x = keras.layers.Conv2D(channels, 1, kernel_initializer=keras.initializers.RandomNormal(
            stddev=20.0, seed=seed), name="head")(x)
        super().__init__(inputs, x, **kwargs)
        self.grid_size, self.channels, self.seed = grid, channels, seed

    def group_of(self, layer):
        return "train"

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "grid": self.grid_size,
                "channels": self.channels, "seed": self.seed}


@pytest.mark.parametrize("size", [64, 96, 224])
def test_saved_model_report_and_purity_boxes_agree(size, tmp_path):
    images = np.random.default_rng(size).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    for grid in (8, 13, 26, 28):
        model = PIPNet(GridBackbone(size, grid), num_classes=2, seed=0)
        model.build((None, size, size, 3))
        geometry = model.patch_geometry()
        assert geometry.grid == (grid, grid) and geometry.image_size == size

        export_saved_model(model, tmp_path / f"sm_{size}_{grid}", class_names=["a", "b"])
        served = tf.saved_model.load(str(tmp_path / f"sm_{size}_{grid}")).signatures["explain"]
        exported = {k: v.numpy() for k, v in served(images=tf.constant(images)).items()}

        outputs = collect_prototype_outputs(
            model, tf.data.Dataset.from_tensor_slices(
                (images.astype("float32"), np.zeros(3, np.int32))).batch(3))
        cells = exported["prototype_cell"][..., 0] * grid + exported["prototype_cell"][..., 1]
        np.testing.assert_array_equal(cells, outputs["locations"])
        # Purity's boxes (every image of every prototype) ...
        patches = purity.prototype_patches(outputs["presence_raw"], outputs["locations"],
                                           geometry, range(8), k=3)
        for prototype, items in patches.items():
            for image, (h0, h1, w0, w1) in items:
                assert exported["prototype_box"][image, prototype].tolist() == \
                    [h0, w0, h1, w1], (size, grid, prototype)
        # ... and the local explanation's boxes.
        kernel = np.ones((8, 2), np.float32)
        checked = 0
        for image in range(3):
            _, description = local_view.explain_image(
                images[image], outputs["scores"][image], outputs["presence"][image],
                outputs["locations"][image], geometry, kernel, ["a", "b"], {})
            for entry in description["classes"]:
                for item in entry["prototypes"]:
                    h0, h1, w0, w1 = item["box"]
                    assert exported["prototype_box"][image, item["prototype"]].tolist() == \
                        [h0, w0, h1, w1]
                    checked += 1
        assert checked > 0
