"""SavedModel export: signatures, explain outputs, compact variant, TF Serving layout, and
the artifact run in fresh processes that import only TensorFlow (and saved_model_cli)."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from export.graph import InferenceGraph, kept_prototypes
from export.saved_model import export_saved_model, split_serving_path, write_models_config
from pipnet_tf.backbones import build_backbone
from pipnet_tf.model import PIPNet
from tests.model_test import small_model

CLI = pathlib.Path(sys.executable).with_name("saved_model_cli")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def sparse_model(image_size=64, num_classes=4, seed=1):
    """tiny_cnn PIP-Net (8x8 grid at 64 px) whose scoring sheet has all-zero rows."""
    backbone = build_backbone("tiny_cnn", image_size, seed=seed)
    model = PIPNet(backbone, num_classes, seed=seed)
    model.build((None, image_size, image_size, 3))
    kernel = model.classifier.kernel.numpy()
    kernel[::3] = 0.0
    kernel[1::3, 1:] = -0.5  # negative = zero after the ReLU
    model.classifier.kernel.assign(kernel)
    return model


def uint8_images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_saved_model_matches_keras_in_a_fresh_process(tmp_path):
    model = small_model(num_classes=4)
    kernel = model.classifier.kernel.numpy()
    kernel[::3] = 0.0  # some zero rows, as after training
    model.classifier.kernel.assign(kernel)
    export_saved_model(model, tmp_path / "sm", image_size=32)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    other_size = rng.integers(0, 256, (3, 48, 40, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "other.npy", other_size)
    script = textwrap.dedent(f"""
        import sys, numpy as np, tensorflow as tf
        sm = tf.saved_model.load({str(tmp_path / 'sm')!r})
        fn = sm.signatures["serving_default"]
        out = fn(images=tf.constant(np.load({str(tmp_path / 'images.npy')!r})))
        other = fn(images=tf.constant(np.load({str(tmp_path / 'other.npy')!r})))
        np.savez({str(tmp_path / 'out.npz')!r}, scores=out["scores"].numpy(),
                 presence=out["presence"].numpy(), other=other["scores"].numpy())
        try:
            fn(images=tf.zeros((1, 32, 32, 3), tf.float32))
        except (TypeError, ValueError, tf.errors.InvalidArgumentError) as e:
            print("REJECTED float32")
        assert "pipnet_tf" not in sys.modules, "the SavedModel needed pipnet_tf"
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REJECTED float32" in proc.stdout
    out = np.load(tmp_path / "out.npz")
    expected = model(images.astype("float32"), training=False)
    np.testing.assert_allclose(out["scores"], expected["scores"].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["presence"], expected["presence"].numpy(), atol=1e-5)
    assert out["other"].shape == (3, 4)


# === Graph semantics (in process) ===
def test_explain_outputs_match_the_keras_prototype_maps():
    model = sparse_model()
    graph = InferenceGraph(model, 64)
    images = uint8_images((3, 64, 64, 3))
    out = {k: v.numpy() for k, v in graph.explain(images).items()}
    ref = model(images.astype("float32"), training=False)
    np.testing.assert_allclose(out["scores"], ref["scores"].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["presence"], ref["presence"].numpy(), atol=1e-6)
    maps = ref["proto_features"].numpy()  # (3, 8, 8, D)
    flat = maps.transpose(0, 3, 1, 2).reshape(3, maps.shape[-1], -1).argmax(-1)
    np.testing.assert_array_equal(out["prototype_cell"][..., 0], flat // 8)
    np.testing.assert_array_equal(out["prototype_cell"][..., 1], flat % 8)
    bounds = model.patch_geometry(64).bounds(0)
    np.testing.assert_array_equal(out["prototype_box"][..., 0], bounds[flat // 8, 0])
    np.testing.assert_array_equal(out["prototype_box"][..., 3], bounds[flat % 8, 1])
    weights = np.maximum(model.classifier.kernel.numpy(), 0)
    np.testing.assert_allclose(out["contributions"],
                               ref["presence"].numpy()[:, :, None] * weights[None], atol=1e-6)
    np.testing.assert_allclose(out["contributions"].sum(1), out["scores"], atol=1e-4)
    abstained = ref["scores"].numpy().max(-1) <= 0
    np.testing.assert_array_equal(out["abstained"], abstained)
    np.testing.assert_array_equal(
        out["predicted_class"], np.where(abstained, -1, ref["scores"].numpy().argmax(-1)))


def test_boxes_are_scaled_to_the_original_image_size():
    model = sparse_model()
    graph = InferenceGraph(model, 64)
    images = uint8_images((2, 128, 96, 3))
    boxes = graph.explain(images)["prototype_box"].numpy()
    cells = graph.explain(images)["prototype_cell"].numpy()
    bounds = model.patch_geometry(64).bounds(0)
    np.testing.assert_allclose(boxes[..., 0], bounds[cells[..., 0], 0] * 2.0)
    np.testing.assert_allclose(boxes[..., 2], bounds[cells[..., 0], 1] * 2.0)
    np.testing.assert_allclose(boxes[..., 1], bounds[cells[..., 1], 0] * 1.5)
    np.testing.assert_allclose(boxes[..., 3], bounds[cells[..., 1], 1] * 1.5)
    assert boxes[..., 2].max() <= 128 and boxes[..., 3].max() <= 96


def test_compact_graph_drops_zero_weight_prototypes_with_identical_scores():
    model = sparse_model()
    kept = kept_prototypes(model)
    assert 0 < kept.size < model.num_features
    images = uint8_images((4, 64, 64, 3), seed=3)
    full = InferenceGraph(model, 64).explain(images)
    compact = InferenceGraph(model, 64, compact=True).explain(images)
    np.testing.assert_allclose(compact["scores"], full["scores"], atol=1e-5)
    np.testing.assert_array_equal(compact["predicted_class"], full["predicted_class"])
    np.testing.assert_array_equal(compact["presence"], full["presence"].numpy()[:, kept])
    np.testing.assert_array_equal(compact["prototype_box"],
                                  full["prototype_box"].numpy()[:, kept])
    assert compact["contributions"].shape == (4, kept.size, 4)


# === TF Serving layout ===
def test_serving_path_needs_an_integer_version():
    assert split_serving_path("base/pipnet/3") == (pathlib.Path("base"), "pipnet", 3)
    for bad in ("base/pipnet/v1", "base/pipnet", "base/pipnet/1.0"):
        with pytest.raises(ValueError, match="integer version"):
            split_serving_path(bad)


def test_models_config_lists_every_served_model(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "not_a_model").mkdir()
    text = write_models_config(tmp_path).read_text()
    assert text.count("config {") == 2
    assert 'name: "a"' in text and 'base_path: "/models/b"' in text
    assert "not_a_model" not in text and 'model_platform: "tensorflow"' in text


def test_cli_writes_the_serving_layout_and_refuses_bad_paths(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sparse_model().save(run_dir / "model.keras")
    (run_dir / "config.json").write_text(json.dumps({"image_size": 64}))
    (run_dir / "class_names.txt").write_text("w\nx\ny\nz\n")
    base = tmp_path / "exports"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "export.saved_model", "--model",
                               str(run_dir), *args], capture_output=True, text=True,
                              timeout=300, env=ENV, cwd=pathlib.Path(__file__).parents[1])

    proc = cli("--out", str(base / "pipnet" / "7"), "--compact")
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = base / "pipnet" / "7"
    assert (version / "saved_model.pb").is_file()
    assert (version / "assets" / "class_names.txt").read_text().split() == ["w", "x", "y", "z"]
    ids = [int(i) for i in (version / "assets" / "prototypes.txt").read_text().split()]
    assert ids == kept_prototypes(sparse_model()).tolist()
    assert json.loads((version / "assets" / "metadata.json").read_text())["compact"] is True
    assert 'name: "pipnet"' in (base / "models.config").read_text()
    assert not list((base / "pipnet").glob(".*"))  # no partial directory left
    bad = cli("--out", str(base / "pipnet" / "latest"))
    assert bad.returncode != 0 and "integer version" in bad.stderr
    again = cli("--out", str(version))
    assert again.returncode != 0 and "already exists" in again.stderr


# === Fresh processes: saved_model_cli and tf.saved_model.load ===
def test_saved_model_cli_shows_and_runs_both_signatures(tmp_path):
    model = sparse_model()
    export_saved_model(model, tmp_path / "sm", 64, class_names=list("abcd"))
    show = subprocess.run([str(CLI), "show", "--dir", str(tmp_path / "sm"), "--all"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert show.returncode == 0, show.stderr[-2000:]
    for name in ("signature_def['serving_default']", "signature_def['explain']",
                 "outputs['predicted_class']", "outputs['abstained']",
                 "outputs['prototype_box']", "outputs['contributions']", "DT_UINT8"):
        assert name in show.stdout, name
    images = uint8_images((3, 80, 72, 3), seed=5)
    np.save(tmp_path / "images.npy", images)
    outdir = tmp_path / "run_out"
    run = subprocess.run([str(CLI), "run", "--dir", str(tmp_path / "sm"), "--tag_set", "serve",
                          "--signature_def", "explain", "--inputs",
                          f"images={tmp_path / 'images.npy'}", "--outdir", str(outdir)],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert run.returncode == 0, run.stderr[-2000:]
    graph = InferenceGraph(model, 64)
    expected = {k: v.numpy() for k, v in graph.explain(images).items()}
    np.testing.assert_allclose(np.load(outdir / "scores.npy"), expected["scores"], atol=1e-5)
    for key in ("predicted_class", "abstained", "prototype_cell"):
        np.testing.assert_array_equal(np.load(outdir / f"{key}.npy"), expected[key])
    np.testing.assert_allclose(np.load(outdir / "prototype_box.npy"), expected["prototype_box"])
    np.testing.assert_allclose(np.load(outdir / "contributions.npy"),
                               expected["contributions"], atol=1e-5)


def test_signature_rejects_wrong_dtype_and_rank_and_reads_its_assets(tmp_path):
    model = sparse_model()
    export_saved_model(model, tmp_path / "sm", 64, class_names=list("abcd"), compact=True)
    script = textwrap.dedent(f"""
        import sys, numpy as np, tensorflow as tf
        sm = tf.saved_model.load({str(tmp_path / 'sm')!r})
        for name in ("serving_default", "explain"):
            fn = sm.signatures[name]
            for bad in (tf.zeros((1, 64, 64, 3), tf.float32), tf.zeros((64, 64, 3), tf.uint8),
                        tf.zeros((1, 64, 64, 4), tf.uint8)):
                try:
                    fn(images=bad)
                    print("ACCEPTED", name, bad.dtype.name, bad.shape)
                except (TypeError, ValueError, tf.errors.InvalidArgumentError) as e:
                    print("REJECTED", name, type(e).__name__, " ".join(str(e).split())[:300])
        ok = sm.signatures["serving_default"](images=tf.zeros((2, 64, 64, 3), tf.uint8))
        print("OK", ok["scores"].shape, ok["presence"].shape)
        print("ASSETS", sorted(p.name for p in __import__("pathlib").Path(
            {str(tmp_path / 'sm' / 'assets')!r}).iterdir()))
        assert "pipnet_tf" not in sys.modules
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ACCEPTED" not in proc.stdout
    rejected = [line for line in proc.stdout.splitlines() if line.startswith("REJECTED")]
    assert len(rejected) == 6, proc.stdout
    for line in rejected:  # refused at the signature boundary, not by an op inside the graph
        assert ("expected to be a uint8 tensor" in line
                or "check_images_shape" in line), line
    kept = kept_prototypes(model).size
    assert f"OK (2, 4) (2, {kept})" in proc.stdout
    assert "ASSETS ['class_names.txt', 'metadata.json', 'prototypes.txt']" in proc.stdout


# === Nothing wrong gets published ===
def test_a_failed_verification_leaves_no_version_and_an_unchanged_models_config(
        tmp_path, monkeypatch):
    from export import saved_model

    base = tmp_path / "exports"
    saved_model.export_for_serving(sparse_model(), base / "pipnet" / "1")
    config_before = (base / "models.config").read_text()
    monkeypatch.setattr(saved_model, "verify_saved_model", lambda *a, **k: 0.5)
    with pytest.raises(saved_model.VerificationError, match="differ by 0.5"):
        saved_model.export_for_serving(sparse_model(), base / "pipnet" / "2")
    with pytest.raises(saved_model.VerificationError):
        saved_model.export_for_serving(sparse_model(), base / "other" / "1")
    assert sorted(p.name for p in (base / "pipnet").iterdir()) == ["1"]
    assert not (base / "other").exists() or not any((base / "other").iterdir())
    assert (base / "models.config").read_text() == config_before


def test_a_failed_verification_at_the_cli_exits_1_with_one_line(tmp_path):
    """The real `main` and flag parsing, with the check forced to fail."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sparse_model().save(run_dir / "model.keras")
    (run_dir / "config.json").write_text(json.dumps({"image_size": 64}))
    base = tmp_path / "exports"
    (base / "pipnet").mkdir(parents=True)
    (base / "models.config").write_text("# before\n")
    script = textwrap.dedent(f"""
        import sys
        import export.saved_model as saved_model
        from pipnet_tf.cli import run_app
        saved_model.verify_saved_model = lambda *args, **kwargs: 0.5
        saved_model.define_flags()
        sys.argv = ["export.saved_model", "--model", {str(run_dir)!r},
                    "--out", {str(base / 'pipnet' / '1')!r}]
        run_app(saved_model.main)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=ENV, cwd=pathlib.Path(__file__).parents[1])
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "export.saved_model:" in line]
    assert len(errors) == 1 and "VerificationError" in errors[0] and "differ by 0.5" in errors[0]
    assert "Traceback" not in proc.stderr
    assert list((base / "pipnet").iterdir()) == []
    assert (base / "models.config").read_text() == "# before\n"


def test_an_empty_batch_gives_empty_outputs_of_the_right_shapes(tmp_path):
    """A batch of 0 images used to fail inside the backbone ("Incompatible shapes")."""
    import tensorflow as tf

    model = sparse_model()
    export_saved_model(model, tmp_path / "sm", 64, compact=True)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    kept, k = kept_prototypes(model).size, model.num_classes
    expected = {"scores": (0, k), "predicted_class": (0,), "abstained": (0,),
                "presence": (0, kept)}
    out = loaded.signatures["serving_default"](images=tf.zeros((0, 50, 40, 3), tf.uint8))
    assert {key: tuple(v.shape) for key, v in out.items()} == expected
    out = loaded.signatures["explain"](images=tf.zeros((0, 64, 64, 3), tf.uint8))
    assert {key: tuple(v.shape) for key, v in out.items()} == {
        **expected, "prototype_cell": (0, kept, 2), "prototype_box": (0, kept, 4),
        "contributions": (0, kept, k)}
    # And a batch of one still gives the Keras scores (the blank filler image is dropped).
    image = uint8_images((1, 64, 64, 3), seed=3)
    got = loaded.signatures["serving_default"](images=tf.constant(image))["scores"].numpy()
    np.testing.assert_allclose(got, model(image.astype("float32"))["scores"].numpy(), atol=1e-5)


def test_attach_assets_relies_on_keras_internals(tmp_path):
    """`attach_assets` uses ExportArchive's private `_tf_trackable`; this fails when Keras
    changes it (then look for a public hook for files)."""
    import keras
    import tensorflow as tf

    from export.saved_model import attach_assets

    archive = keras.export.ExportArchive()
    assert isinstance(getattr(archive, "_tf_trackable", None), tf.__internal__.tracking.Trackable)
    asset = tmp_path / "note.txt"
    asset.write_text("hello")
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    archive.track(layer)
    archive.add_endpoint("serve", layer.call, input_signature=[tf.TensorSpec((None, 3))])
    attach_assets(archive, [asset])
    archive.write_out(str(tmp_path / "sm"), verbose=False)
    assert (tmp_path / "sm" / "assets" / "note.txt").read_text() == "hello"
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    assert loaded.asset_0.asset_path.numpy().decode().endswith("note.txt")
