"""Correcting a model by hand (#16): the prototype mask in every forward and export, the
report's audit (purity order, background flag, greyed disabled prototypes), and
`trainers.edit` end to end: edit → evaluate → report → SavedModel → TFLite."""
import hashlib
import json
import logging
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from export.graph import InferenceGraph
from export.saved_model import export_saved_model
from export.tflite import export_tflite, run_tflite
from pipnet_tf import editing, evaluation
from pipnet_tf.data import geometry
from pipnet_tf.explain import audit
from pipnet_tf.model import PIPNet, float32_copy
from pipnet_tf.patch_geometry import REFERENCE_RULE
from tests.explain_test import SIZE, tiny_model

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")


def _images(n=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _strongest_prototype(model, images, class_index):
    """The prototype adding most to `class_index` over `images` (presence × weight)."""
    presence = model(images.astype("float32"), training=False)["presence"].numpy()
    w = np.maximum(model.classifier.kernel.numpy(), 0)
    return int(np.argmax((presence * w[:, class_index]).sum(0)))


# === The mask in the model ===
def test_disabling_a_prototype_removes_exactly_its_presence_times_weight():
    model = tiny_model()
    images = _images().astype("float32")
    before = {k: v.numpy() for k, v in model(images, training=False).items()}
    p = _strongest_prototype(model, images, class_index=2)
    w = np.maximum(model.classifier.kernel.numpy(), 0)
    assert w[p, 2] > 0.5 and before["presence"][:, p].max() > 0.1  # class 2 depends on p

    edited = editing.with_disabled_prototypes(model, [p])
    after = {k: v.numpy() for k, v in edited(images, training=False).items()}
    # The scoring sheet's prediction, worked out in NumPy: every class loses presence_p·w_pk.
    expected = before["scores"] - before["presence"][:, p, None] * w[p][None, :]
    np.testing.assert_allclose(after["scores"], expected, atol=1e-5)
    assert np.abs(after["scores"][:, 2] - before["scores"][:, 2]).max() > 0.4
    assert np.all(after["presence"][:, p] == 0.0)
    others = np.arange(model.num_features) != p
    np.testing.assert_array_equal(after["presence"][:, others], before["presence"][:, others])
    np.testing.assert_array_equal(after["proto_features"], before["proto_features"])
    assert model.disabled_prototypes == ()  # the source model is untouched

    out = edited.predict(images, verbose=0)
    np.testing.assert_allclose(out["scores"], expected, atol=1e-5)
    assert np.all(out["presence"][:, p] == 0.0)
    unthresholded = model(images, training=False, apply_threshold=False)["presence"].numpy()
    np.testing.assert_array_equal(out["presence_raw"], unthresholded)  # mask not applied
    raw = edited(images, training=False, apply_threshold=False)["scores"].numpy()
    np.testing.assert_allclose(out["scores_raw"], raw, atol=1e-6)
    # Metrics see the disabled prototype as weightless; the raw kernel keeps its weights.
    assert np.all(edited.enabled_kernel()[p] == 0) and np.all(edited.classifier.kernel.numpy()[p] == w[p])

    restored = editing.with_disabled_prototypes(edited, [])
    np.testing.assert_array_equal(restored(images, training=False)["scores"].numpy(),
                                  before["scores"])


def test_classifier_training_step_gives_disabled_prototypes_no_gradient():
    model = editing.with_disabled_prototypes(tiny_model(), [1, 2, 3])
    views = tf.constant(_images(4).astype("float32"))
    labels = tf.constant([0, 1, 2, 3])
    with tf.GradientTape() as tape:
        parts = model.compute_pipnet_losses(views, views, labels, training=True)
    grad = tape.gradient(parts["L_C"], model.classifier.kernel).numpy()
    assert np.all(grad[[1, 2, 3]] == 0.0) and np.abs(grad).max() > 0


def test_mask_round_trips_through_keras_saving_and_float32_copy(tmp_path):
    model = editing.with_disabled_prototypes(tiny_model(), [3, 11])
    config = json.loads(json.dumps(model.get_config()))
    assert config["disabled_prototypes"] == [3, 11]
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.disabled_prototypes == (3, 11)
    assert float32_copy(loaded).disabled_prototypes == (3, 11)
    images = _images().astype("float32")
    np.testing.assert_array_equal(loaded(images, training=False)["scores"].numpy(),
                                  model(images, training=False)["scores"].numpy())


def test_bad_prototype_ids_are_rejected():
    backbone_model = tiny_model()
    with pytest.raises(ValueError, match="non-negative integers"):
        PIPNet(backbone_model.backbone, 3, disabled_prototypes=[-1])
    with pytest.raises(ValueError, match=r"ids below D=16, received: \[16\]"):
        editing.with_disabled_prototypes(backbone_model, [16])
    with pytest.raises(ValueError, match=r"Unknown prototype ids \[16, 99\].*16 prototypes"):
        editing.resolve_disabled([], [3, 16], [99], 16)
    with pytest.raises(ValueError, match=r"both in --disable and --enable"):
        editing.resolve_disabled([], [3], [3], 16)
    with pytest.raises(ValueError, match="--disable takes comma-separated"):
        editing.parse_ids("12,x", "--disable")
    assert editing.parse_ids(" 12, 57,", "--disable") == [12, 57]
    assert editing.resolve_disabled([1, 5], [7], [5], 16) == (1, 7)


def test_classes_left_without_prototypes():
    kernel = np.array([[1.0, 0.0, 0.0], [0.5, 0.0, 2.0], [0.0, -1.0, 1.0]])
    assert editing.abstaining_classes(kernel, []) == [1]  # a negative weight is no weight
    assert editing.abstaining_classes(kernel, [0]) == [1]
    assert editing.abstaining_classes(kernel, [0, 1]) == [0, 1]


# === Exports ===
def test_exports_keep_prototype_rows_and_zero_disabled_contributions(tmp_path):
    source = tiny_model()
    images = _images(6)
    p = _strongest_prototype(source, images, class_index=0)
    model = editing.with_disabled_prototypes(source, [p, 5])
    keras_scores = model(images.astype("float32"), training=False)["scores"].numpy()

    out = {k: v.numpy() for k, v in InferenceGraph(model, SIZE).explain(images).items()}
    assert out["presence"].shape[1] == model.num_features
    assert np.all(out["contributions"][:, [p, 5], :] == 0.0)
    assert np.all(out["presence"][:, [p, 5]] == 0.0)
    np.testing.assert_allclose(out["scores"], keras_scores, atol=1e-5)
    compact = InferenceGraph(model, SIZE, compact=True)
    assert p not in compact.prototype_ids and 5 not in compact.prototype_ids
    np.testing.assert_allclose(compact.predict(images)["scores"].numpy(), keras_scores, atol=1e-5)

    path = export_saved_model(model, tmp_path / "sm", class_names=[f"c{k}" for k in range(6)])
    lines = (path / "assets" / "prototypes.txt").read_text().split()
    assert lines == [str(i) for i in range(model.num_features)]
    assert json.loads((path / "assets" / "metadata.json").read_text())[
        "disabled_prototypes"] == sorted([p, 5])
    explained = tf.saved_model.load(str(path)).signatures["explain"](images=tf.constant(images))
    assert np.all(explained["contributions"].numpy()[:, [p, 5], :] == 0.0)
    np.testing.assert_allclose(explained["scores"].numpy(), keras_scores, atol=1e-5)

    figures = export_tflite(model, tmp_path / "m.tflite", SIZE, "none", _images(16, seed=3))
    assert figures["passed"]
    lite = run_tflite((tmp_path / "m.tflite").read_bytes(), images)
    np.testing.assert_allclose(lite["scores"], keras_scores, atol=1e-4)
    assert np.all(lite["presence"][:, [p, 5]] == 0.0)
    unedited = source(images.astype("float32"), training=False)["scores"].numpy()
    assert np.abs(lite["scores"] - unedited).max() > 0.4  # the mask is in the TFLite graph


# === Report audit and object boxes ===
def test_background_patches_and_purity_order():
    # Two images, each with its object box in the left half (x 0..16, y 0..32).
    boxes = np.array([[0, 0, 16, 32], [0, 0, 16, 32]], np.float32)
    left, right = (0, 8, 0, 8), (0, 8, 20, 28)  # (h_min, h_max, w_min, w_max)
    topk = {
        4: [{"image": 0, "box": right}, {"image": 1, "box": right}, {"image": 0, "box": left}],
        7: [{"image": 0, "box": left}, {"image": 1, "box": right}],
        9: [{"image": 0, "box": right}],
    }
    assert audit.background_patches(topk[4], boxes) == (2, 3)
    assert audit.background_patches(topk[7], boxes) == (1, 2)
    nan_box = boxes.copy()
    nan_box[1] = np.nan
    assert audit.background_patches(topk[4], nan_box) == (1, 2)
    # One part ("eye") at x=4, y=4 in both images: inside `left`, outside `right`.
    part_locs = np.array([[[4.0, 4.0, 1.0]], [[4.0, 4.0, 1.0]]], np.float32)
    kernel = np.zeros((10, 2))
    kernel[4, 0], kernel[7, 1], kernel[9, :] = 2.0, 1.0, 0.5
    rows = audit.prototype_audit(topk, kernel, [9], ["a", "b"], boxes, part_locs, ["eye"], 8)
    assert [r["prototype"] for r in rows] == [9, 4, 7]  # purity 0, 1/3, 1/2: least pure first
    by_id = {r["prototype"]: r for r in rows}
    assert by_id[4]["purity"] == pytest.approx(1 / 3) and by_id[4]["mostly_background"]
    assert not by_id[7]["mostly_background"]  # exactly half is not more than half
    assert by_id[9]["disabled"] and by_id[9]["classes"] == [["a", 0.5], ["b", 0.5]]
    no_parts = audit.prototype_audit(topk, kernel, [], ["a", "b"], boxes)
    assert [r["prototype"] for r in no_parts] == [4, 7, 9] and no_parts[0]["purity"] is None


def test_object_boxes_map_through_crop_and_resize():
    # 200x100 image, box x 60..100, y 30..50; crop x 50..150, y 20..60 → 10 px output.
    boxes = geometry.map_boxes(np.array([[60.0, 30.0, 40.0, 20.0], [np.nan] * 4]),
                               [[200, 100], [200, 100]], 10,
                               np.array([[50.0, 20.0, 100.0, 40.0], [np.nan] * 4]))
    np.testing.assert_allclose(boxes[0], [1.0, 2.5, 5.0, 7.5])
    assert np.all(np.isnan(boxes[1]))
    # A box sticking out of the crop is clipped; one fully outside it is NaN.
    clipped = geometry.map_boxes(np.array([[0.0, 0.0, 60.0, 30.0], [0.0, 0.0, 10.0, 10.0]]),
                                 [[200, 100]] * 2, 10, np.array([[50.0, 20.0, 100.0, 40.0]] * 2))
    np.testing.assert_allclose(clipped[0], [0.0, 0.0, 1.0, 2.5])
    assert np.all(np.isnan(clipped[1]))


def test_projection_images_carry_their_object_boxes(tmp_path):
    from pipnet_tf.data.datasets import build_data
    from trainers.configs import PRESETS

    config = PRESETS["synthetic"].replace(image_size=SIZE, synthetic_train_per_class=3,
                                          synthetic_test_per_class=1, cache_dir=str(tmp_path))
    project = build_data(config, training=False).project
    boxes = project.object_boxes
    assert boxes.shape == (len(project), 4) and np.all(np.isfinite(boxes))
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= SIZE)
    assert np.all(boxes[:, 2:] > boxes[:, :2])
    # Every visible part centre of the synthetic objects lies inside its object's box.
    locs = project.part_locs
    visible = locs[..., 2] > 0
    x, y = locs[..., 0], locs[..., 1]
    inside = ((x >= boxes[:, None, 0] - 1e-3) & (x <= boxes[:, None, 2] + 1e-3)
              & (y >= boxes[:, None, 1] - 1e-3) & (y <= boxes[:, None, 3] + 1e-3))
    assert visible.sum() > 0 and np.all(inside[visible])
    assert project.select([2, 0]).object_boxes.tolist() == boxes[[2, 0]].tolist()


# === trainers.edit end to end ===
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from trainers.configs import PRESETS
    from trainers.experiment import run_training

    root = tmp_path_factory.mktemp("edit")
    config = PRESETS["synthetic"].replace(
        image_size=SIZE, epochs_pretrain=1, epochs=2, freeze_epochs=1, finetune_epochs=1,
        batch_size=12, batch_size_pretrain=12, synthetic_train_per_class=6,
        synthetic_test_per_class=3, cache_dir=str(root / "cache"), log_dir=str(root / "run"),
        export=False)
    run_training(config)
    return pathlib.Path(config.log_dir)


def _digests(directory):
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def test_edit_evaluate_report_saved_model_tflite(trained_run, tmp_path):
    from pipnet_tf.data.datasets import build_data
    from pipnet_tf.runs import open_run
    from trainers.edit import edit_run
    from trainers.evaluate import evaluate_run
    from trainers.explain import explain_run

    source = open_run(trained_run)
    sheet = json.loads((trained_run / "scoring_sheet.json").read_text())
    class0 = sheet[source.class_names[0]]
    p, q = class0[0][0], class0[1][0] if len(class0) > 1 else None
    q = q if q is not None else next(e[0] for v in sheet.values() for e in v if e[0] != p)
    before = _digests(trained_run)

    run2 = tmp_path / "run2"
    proc = _cli("-m", "trainers.edit", "--model", str(trained_run), "--disable", f"{p},{q}",
                "--retrain_classifier_epochs", "1", "--out", str(run2), "--verbose", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _digests(trained_run) == before  # the source run is never modified
    assert not any(n.name.startswith(".run2") for n in tmp_path.iterdir())

    edited = open_run(run2)
    model = edited.model
    assert model.disabled_prototypes == tuple(sorted((p, q)))
    entry = edited.config.edits[-1]
    assert entry["source_run"] == str(trained_run.resolve())
    assert entry["disable"] == sorted((p, q)) and entry["enable"] == []
    assert entry["retrain_classifier"]["epochs"] == 1
    assert entry["retrain_classifier"]["dataset"] == "synthetic"
    # Only the scoring sheet was retrained; the disabled prototypes' weights are kept.
    src_kernel, kernel = source.model.classifier.kernel.numpy(), model.classifier.kernel.numpy()
    np.testing.assert_array_equal(kernel[[p, q]], src_kernel[[p, q]])
    assert not np.array_equal(kernel, src_kernel)
    for a, b in zip(source.model.backbone.weights, model.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert (run2 / "classifier_retraining" / "training_log.csv").is_file()
    assert not (run2 / "classifier_retraining" / "checkpoints").exists()

    # metrics.json is recomputed on the test set, with the source's figures beside it.
    metrics = json.loads((run2 / "metrics.json").read_text())
    data = build_data(edited.config, training=False)
    again = evaluation.evaluate(model, data.test.dataset(64))
    assert metrics["top1_accuracy"] == again["top1_accuracy"]
    assert metrics["global_size"] == again["global_size"]
    source_metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["before_edit"]["top1_accuracy"] == source_metrics["top1_accuracy"]
    assert metrics["disabled_prototypes"] == sorted((p, q))
    assert all(e[0] not in (p, q) for v in json.loads(
        (run2 / "scoring_sheet.json").read_text()).values() for e in v)

    # Editing the edited run accumulates (and without retraining keeps the weights).
    r = next(e[0] for v in sheet.values() for e in v if e[0] not in (p, q))
    run3 = tmp_path / "run3"
    result = edit_run(run2, run3, disable=[r], enable=[q], verbose=0)
    third = open_run(run3)
    assert third.model.disabled_prototypes == tuple(sorted((p, r)))
    assert [e["disabled_prototypes"] for e in third.config.edits] == [
        sorted((p, q)), sorted((p, r))]
    assert third.config.edits[1]["source_run"] == str(run2.resolve())
    np.testing.assert_array_equal(third.model.classifier.kernel.numpy(), kernel)
    assert result["before_edit"]["top1_accuracy"] == metrics["top1_accuracy"]

    # Evaluation and the report of the edited run.
    evaluated = evaluate_run(run2, verbose=0)
    assert evaluated["test"]["top1_accuracy"] == metrics["top1_accuracy"]
    assert evaluated["disabled_prototypes"] == sorted((p, q))
    index = explain_run(run2, verbose=0)
    rows = json.loads((index.parent / "global" / "prototype_audit.json").read_text())
    status = {row["prototype"]: row["disabled"] for row in rows}
    assert status[p] is True and status[q] is True
    assert sum(status.values()) == 2
    purities = [row["purity"] for row in rows if row["purity"] is not None]
    assert purities and purities == sorted(purities)  # synthetic has parts
    assert all(row["patches_with_box"] == len(json.loads(
        (index.parent / "global" / "prototype_topk.json").read_text())[str(row["prototype"])])
        for row in rows)
    from PIL import Image

    def colourful(prototype):  # any pixel whose channels differ
        pixels = np.asarray(Image.open(index.parent / "global" / f"prototype_{prototype:04d}.png"))
        return bool(np.any(pixels[..., 0] != pixels[..., 1]) or np.any(pixels[..., 1] != pixels[..., 2]))

    enabled = next(row["prototype"] for row in rows if not row["disabled"])
    assert not colourful(p) and colourful(enabled)  # the disabled prototype is greyed
    html = index.read_text()
    assert f'class="proto disabled" id="p{p}"' in html and "<th>background patches</th>" in html
    for local in (index.parent / "local").glob("*.json"):
        for cls in json.loads(local.read_text())["classes"]:
            assert all(item["prototype"] not in (p, q) for item in cls["prototypes"])

    # SavedModel and TFLite through their command lines.
    export_dir = tmp_path / "exports" / "pipnet" / "1"
    proc = _cli("-m", "export.saved_model", "--model", str(run2), "--out", str(export_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (export_dir / "assets" / "prototypes.txt").read_text().split()
    assert lines == [str(i) for i in range(model.num_features)]
    images = data.test.uint8_images(8)
    explained = tf.saved_model.load(str(export_dir)).signatures["explain"](
        images=tf.constant(images))
    assert np.all(explained["contributions"].numpy()[:, [p, q], :] == 0.0)
    keras_scores = model(images.astype("float32"), training=False)["scores"].numpy()
    np.testing.assert_allclose(explained["scores"].numpy(), keras_scores, atol=1e-5)
    tflite = tmp_path / "m.tflite"
    proc = _cli("-m", "export.tflite", "--model", str(run2), "--quantize", "none",
                "--out", str(tflite), "--num_parity_images", "12")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lite = run_tflite(tflite.read_bytes(), images)
    np.testing.assert_allclose(lite["scores"], keras_scores, atol=1e-4)
    assert np.all(lite["presence"][:, [p, q]] == 0.0)


def test_edit_errors_exit_2_and_write_nothing(trained_run, tmp_path, caplog):
    from trainers.edit import _parse, main

    before = _digests(trained_run)
    out = tmp_path / "out"
    proc = _cli("-m", "trainers.edit", "--model", str(trained_run), "--disable", "3,9999",
                "--out", str(out), timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Unknown prototype ids [9999]" in proc.stderr
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    cases = [
        (["--model", str(not_a_run), "--disable", "3"], "No config.json in run directory"),
        (["--model", str(tmp_path / "missing"), "--disable", "3"], "does not exist"),
        (["--model", str(trained_run), "--disable", "three"], "--disable takes"),
        (["--model", str(trained_run), "--enable", "3", "--disable", "3"], "both in"),
        (["--model", str(trained_run)], "Nothing to do"),
        (["--model", str(trained_run), "--prune_weak_prototypes", "1.5"],
         "--prune_weak_prototypes must be in [0, 1)"),
    ]
    for args, message in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
            main(_parse(["edit", *args, "--out", str(out)]))
        assert exit_info.value.code == 2, args
        assert any(message in r.getMessage() for r in caplog.records), (args, caplog.text)
    for bad_out in (trained_run / "edited", trained_run, trained_run.parent):
        with pytest.raises(SystemExit) as exit_info:
            main(_parse(["edit", "--model", str(trained_run), "--disable", "3",
                         "--out", str(bad_out), "--overwrite"]))
        assert exit_info.value.code == 2
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(SystemExit):
        main(_parse(["edit", "--model", str(trained_run), "--disable", "3", "--out",
                     str(existing)]))
    assert not out.exists() and list(existing.iterdir()) == []
    assert _digests(trained_run) == before


def test_disabling_every_prototype_of_a_class_warns_and_it_always_scores_zero(
        trained_run, tmp_path, caplog):
    from pipnet_tf.runs import open_run
    from trainers.edit import edit_run

    source = open_run(trained_run)
    kernel = source.model.classifier.kernel.numpy()
    everything = [int(d) for d in np.flatnonzero(kernel[:, 1] > 0)]
    with caplog.at_level(logging.WARNING):
        result = edit_run(trained_run, tmp_path / "run", disable=everything, verbose=0)
    name = source.class_names[1]
    assert any("will always abstain" in r.getMessage() and name in r.getMessage()
               for r in caplog.records)
    assert name in result["abstaining_classes"]
    model = open_run(tmp_path / "run").model
    scores = model(_images(6).astype("float32"), training=False)["scores"].numpy()
    assert np.all(scores[:, 1] == 0.0)


def test_pruning_weak_prototypes_keeps_each_class_strongest_connection(trained_run, tmp_path):
    from pipnet_tf.runs import open_run
    from trainers.edit import edit_run

    source = open_run(trained_run)
    raw = source.model.classifier.kernel.numpy()
    w = np.maximum(raw, 0)  # (D, K)
    disabled = [int(np.argmax(w[:, 0]))]  # class 0's strongest: kept, never pruned
    result = edit_run(trained_run, tmp_path / "run", disable=disabled,
                      prune_weak_prototypes=0.95, verbose=0)
    # NumPy: prototypes (enabled) whose largest weight is below 0.95 × the mean class maximum.
    enabled = w.copy()
    enabled[disabled] = 0.0
    class_max = enabled.max(axis=0)
    weak_rows = enabled.max(axis=1) < 0.95 * class_max.mean()
    weak = weak_rows[:, None] & (enabled > 0) & (enabled < class_max[None, :])
    assert weak.sum() > 0  # the fixture's sheet has weak prototypes, so this tests something
    after = np.where(weak, 0.0, enabled)
    emptied = np.flatnonzero((enabled.max(axis=1) > 0) & (after.max(axis=1) == 0))
    assert result["pruned_weak_prototypes"] == {
        "fraction": 0.95, "zeroed_weights": int(weak.sum()),
        "emptied_prototypes": [int(d) for d in emptied]}

    edited = open_run(tmp_path / "run")
    kernel = edited.model.classifier.kernel.numpy()
    np.testing.assert_array_equal(kernel, np.where(weak, 0.0, raw))
    assert np.all(kernel[disabled] == raw[disabled])  # a disabled prototype keeps its weights
    np.testing.assert_array_equal(edited.model.enabled_kernel().max(axis=0), class_max)
    assert result["global_size"] == int(np.sum(after.max(axis=1) > 1e-3))
    assert edited.config.edits[-1]["pruned_weak_prototypes"]["zeroed_weights"] == weak.sum()
