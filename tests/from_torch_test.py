"""`python -m export.from_torch`: a reference checkpoint becomes a run directory that the
evaluation, explanation and export tools take unchanged; bad and malicious files stop it
with exit status 2 and one clear line. Also `trainers.run --state_dict_dir_net`."""
from __future__ import annotations

import csv
import json
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from export import from_torch
from export.saved_model import export_saved_model
from export.tflite import export_tflite
from pipnet_tf.reference_checkpoint import build_pipnet
from pipnet_tf.runs import RunDirectoryError, open_run
from pipnet_tf.torch_checkpoint import TorchCheckpointError, read_state_dict
from tests.torch_checkpoint_test import _archive_with_pickle, _RunsCommand
from tests.torch_files import reference_checkpoint, reference_state_dict, write_torch_file

ROOT = pathlib.Path(__file__).parents[1]
# PYTHONPATH: the fresh processes import this checkout's pipnet_tf, wherever they run.
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow",
           PYTHONPATH=str(ROOT))
SIZE = 64
SYNTHETIC_CLASSES = 6


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "export.from_torch", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=ENV, cwd=cwd)


@pytest.fixture(scope="module")
def convnext_file(tmp_path_factory):
    """A convnext_tiny_26 reference checkpoint for the 6 built-in classes, with bias."""
    root = tmp_path_factory.mktemp("ck")
    state_dict = reference_state_dict("convnext_tiny_26", num_classes=SYNTHETIC_CLASSES,
                                      bias=True, seed=5)
    return write_torch_file(root / "net_trained_last", reference_checkpoint(state_dict))


def test_cli_writes_a_run_directory_whose_model_loads_after_import_pipnet_tf(tmp_path,
                                                                             convnext_file):
    (tmp_path / "classes.txt").write_text(
        "".join(f"{k + 1} {k + 1:03d}.bird_{k}\n" for k in range(SYNTHETIC_CLASSES)))
    out = tmp_path / "run"
    out.mkdir()  # an empty directory is fine
    proc = _cli("--checkpoint", convnext_file, "--net", "convnext_tiny_26", "--out", out,
                "--class_names", tmp_path / "classes.txt", "--image_size", SIZE,
                "--dataset", "synthetic")
    assert proc.returncode == 0, proc.stderr[-3000:]
    weight = read_state_dict(convnext_file)["_classification.weight"]  # (K, D)
    relevant = int(np.sum(np.maximum(weight, 0).max(axis=0) > 1e-3))
    sparsity = float(np.mean(np.maximum(weight, 0) <= 1e-3))
    assert proc.stdout.strip() == (
        f"convnext_tiny_26: 6 classes, 768 prototypes, {relevant} relevant (weight > 1e-3), "
        f"sparsity {sparsity:.4f} -> {out}")
    assert sorted(p.name for p in out.iterdir()) == [
        "class_names.txt", "config.json", "conversion.json", "model.keras",
        "scoring_sheet.json"]
    assert (out / "class_names.txt").read_text().split() == [
        f"{k + 1:03d}.bird_{k}" for k in range(SYNTHETIC_CLASSES)]
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["net"], config["image_size"], config["bias"],
            config["num_features"]) == ("synthetic", "convnext_tiny_26", SIZE, True, 0)
    assert config["state_dict_dir_net"] == str(convnext_file.resolve())
    sheet = json.loads((out / "scoring_sheet.json").read_text())
    assert [d for d, _ in sheet["001.bird_0"]] == list(np.argsort(-weight[0], kind="stable")[
        :np.sum(weight[0] > 1e-3)])
    conversion = json.loads((out / "conversion.json").read_text())
    assert conversion["relevant_prototypes"] == relevant
    assert conversion["checkpoint_bytes"] == convnext_file.stat().st_size

    # A fresh process that imports only keras and pipnet_tf loads model.keras; both of the
    # reference's modes give the in-process conversion's outputs.
    images = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import keras, numpy as np
        import pipnet_tf
        model = keras.saving.load_model({str(out / 'model.keras')!r})
        x = np.load({str(tmp_path / 'images.npy')!r})
        a = model(x, training=False)
        b = model(x, training=False, apply_threshold=False)
        assert model.dtype_policy.name == "float32" and model.backbone.dtype_policy.name == "float32"
        np.savez({str(tmp_path / 'out.npz')!r}, **{{k + "_inference": v for k, v in a.items()}},
                 **{{k + "_raw": v for k, v in b.items()}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    model = build_pipnet(read_state_dict(convnext_file), "convnext_tiny_26", SIZE)
    for suffix, kwargs in (("inference", {}), ("raw", {"apply_threshold": False})):
        expected = model(images, training=False, **kwargs)
        for key in ("proto_features", "presence", "scores"):
            np.testing.assert_allclose(got[f"{key}_{suffix}"], expected[key], atol=1e-5)
    assert not np.array_equal(got["presence_inference"], got["presence_raw"])


def test_cli_refuses_a_malicious_file_with_exit_status_2(tmp_path):
    marker = tmp_path / "PWNED"
    evil = _archive_with_pickle(tmp_path / "net_trained",
                                pickle.dumps(_RunsCommand(f"touch {marker}"), protocol=2))
    proc = _cli("--checkpoint", evil, "--net", "resnet50", "--out", tmp_path / "run")
    assert proc.returncode == 2
    assert "export.from_torch" in proc.stderr and "refusing to load it" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_conversion_errors_name_the_file_or_flag(tmp_path, convnext_file):
    with pytest.raises(TorchCheckpointError, match="--net=convnext_tiny_26 or"):
        from_torch.convert_checkpoint(convnext_file, "resnet50", tmp_path / "a")
    (tmp_path / "names.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="names 2 classes; the checkpoint has 6"):
        from_torch.convert_checkpoint(convnext_file, "convnext_tiny_26", tmp_path / "b",
                                      class_names=tmp_path / "names.txt")
    with pytest.raises(ValueError, match="Unknown --dataset='imagenet'"):
        from_torch.convert_checkpoint(convnext_file, "convnext_tiny_26", tmp_path / "c",
                                      dataset="imagenet")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError, match="already exists"):
        from_torch.convert_checkpoint(convnext_file, "convnext_tiny_26", tmp_path / "full")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        from_torch.convert_checkpoint(tmp_path / "missing.pth", "convnext_tiny_26",
                                      tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "names.txt"]


def test_converted_run_is_evaluated_explained_and_exported(tmp_path, convnext_file):
    """trainers.evaluate, trainers.explain, export.saved_model (verification gate) and
    export.tflite (float32 parity gate) take the converted run directory unchanged."""
    from trainers.evaluate import evaluate_run
    from trainers.explain import explain_run

    out = tmp_path / "run"
    from_torch.convert_checkpoint(convnext_file, "convnext_tiny_26", out, image_size=SIZE,
                                  dataset="synthetic")
    config = json.loads((out / "config.json").read_text())
    config.update(synthetic_train_per_class=3, synthetic_test_per_class=2,
                  cache_dir=str(tmp_path / "cache"))
    (out / "config.json").write_text(json.dumps(config))

    result = evaluate_run(out, verbose=0, purity_k=2)
    assert result["num_classes"] == SYNTHETIC_CLASSES and result["latent_hw"] == [6, 6]
    assert (out / "evaluation.md").is_file()
    index = explain_run(out, k=2, verbose=0)
    assert index.is_file()

    run = open_run(out)
    export_saved_model(run.model, tmp_path / "sm", run.image_size, class_names=run.class_names)
    heldout = np.random.default_rng(2).integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    figures = export_tflite(run.model, tmp_path / "m.tflite", run.image_size, "none", heldout)
    assert figures["passed"] and figures["max_rel_score_diff"] <= 1e-4

    # A converted model whose classes are not its dataset's is refused by name.
    from PIL import Image

    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / "two" / split / name).mkdir(parents=True)
            Image.fromarray(heldout[0]).save(tmp_path / "two" / split / name / "x.png")
    (out / "config.json").write_text(json.dumps(dict(config, dataset="folder:" + str(
        tmp_path / "two"))))
    with pytest.raises(RunDirectoryError, match="has 6 classes, but its dataset"):
        evaluate_run(out, verbose=0)


def test_trainer_starts_from_a_reference_checkpoint(tmp_path, convnext_file):
    """--state_dict_dir_net with --epochs_pretrain=0: the checkpoint is loaded, then the
    reference's phase 2 runs, starting with its classifier-only epochs."""
    from trainers.configs import PRESETS
    from trainers.experiment import run_training

    state_dict = read_state_dict(convnext_file)
    config = PRESETS["synthetic"].replace(
        net="convnext_tiny_26", weights="imagenet", image_size=SIZE, epochs_pretrain=0,
        epochs=1, finetune_epochs=1, bias=True, batch_size=6, batch_size_pretrain=6,
        synthetic_train_per_class=2, synthetic_test_per_class=1, export=False,
        cache_dir=str(tmp_path / "cache"), log_dir=str(tmp_path / "run"),
        state_dict_dir_net=str(convnext_file))
    run_training(config)
    with open(tmp_path / "run" / "training_log.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0]
    model = open_run(tmp_path / "run").model
    # Finetuning trained only the scoring sheet: the backbone is the checkpoint's.
    np.testing.assert_array_equal(
        model.backbone.get_layer("convnext_tiny_stage_3_block_2_layer_scale").gamma.numpy(),
        state_dict["_net.features.7.2.layer_scale"].reshape(-1))
    kernel = model.classifier.kernel.numpy()
    assert kernel.shape == (768, SYNTHETIC_CLASSES)
    assert not np.allclose(kernel, np.maximum(state_dict["_classification.weight"].T, 0),
                           atol=1e-4)
