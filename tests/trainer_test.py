"""End to end on a tiny built-in dataset: outputs of a run, resume after a kill, and
clear errors for datasets that are missing."""
import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from export.saved_model import VERIFY_TOLERANCE
from pipnet_tf.model import float32_copy
from trainers.configs import PRESETS
from trainers.experiment import run_training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Killed(Exception):
    pass


class _KillAfterEpoch(keras.callbacks.Callback):
    """Simulates a killed process right after the checkpoint of `epoch` (1-based)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise _Killed()


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    return PRESETS["synthetic"].replace(
        image_size=32, epochs_pretrain=1, epochs=4, freeze_epochs=2, finetune_epochs=1,
        batch_size=16, batch_size_pretrain=16, synthetic_train_per_class=6,
        synthetic_test_per_class=3, cache_dir=str(root / "cache"), log_dir=str(root / "run"),
    )


def _run_logging_info(config, caplog) -> tuple[dict, list[str]]:
    """`run_training(config)` with absl at INFO; (its results, the logged messages)."""
    from absl import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.INFO)
    try:
        with caplog.at_level("INFO", logger="absl"):
            results = run_training(config)
    finally:
        logging.set_verbosity(verbosity)
    return results, [r.getMessage() for r in caplog.records]


def test_killed_run_resumes_and_writes_every_output(tiny_config):
    with pytest.raises(_Killed):
        run_training(tiny_config, extra_callbacks=[_KillAfterEpoch(3)])
    run_dir = tiny_config.log_dir
    from pipnet_tf.checkpoint import Progress, TrainingCheckpoints

    newest = TrainingCheckpoints(os.path.join(run_dir, "checkpoints")).candidates()[0]
    assert TrainingCheckpoints.read_progress(newest) == Progress(2, 3, 0)  # after epoch 3
    assert not os.path.exists(os.path.join(run_dir, "metrics.json"))

    results = run_training(tiny_config)
    assert results["epochs_run_in_last_call"] == 2  # epochs 4 and 5 of 5
    with open(os.path.join(run_dir, "training_log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    assert {"loss", "L_A", "L_T", "L_C", "accuracy", "num_present"} <= set(rows[0])

    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    for key in ("top1_accuracy", "global_size", "local_size_all_classes", "sparsity_ratio", "abstained"):
        assert key in metrics
    assert 0.0 <= metrics["top1_accuracy"] <= 1.0 and metrics["num_images"] == 18
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["epochs"] == 4 and config["net"] == "tiny_cnn"
    sheet = json.load(open(os.path.join(run_dir, "scoring_sheet.json")))
    assert len(sheet) == 6
    for entries in sheet.values():
        weights = [w for _, w in entries]
        assert weights == sorted(weights, reverse=True) and all(w > 1e-3 for w in weights)
    assert os.listdir(os.path.join(run_dir, "tensorboard"))
    assert os.path.isfile(os.path.join(run_dir, "saved_model", "saved_model.pb"))

    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    kernel = np.maximum(model.classifier.kernel.numpy(), 0)
    assert metrics["global_size"] == int(np.sum(kernel.max(1) > 1e-3))

    # A finished run directory is not trained again.
    again = run_training(tiny_config)
    assert again["epochs_run_in_last_call"] == 0


# cars and pets give the same kind of message (checked in-process in datasets_test.py).
@pytest.mark.parametrize("dataset,where", [
    ("cub", "CUB_200_2011/images.txt"), ("folder:/nonexistent", "PATH/train/<class>")])
def test_missing_dataset_fails_with_a_clear_message(dataset, where, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    proc = subprocess.run(  # noqa: PLW1510 - the return code is checked below
        [sys.executable, "-m", "trainers.run", f"--dataset={dataset}", f"--data_dir={empty}",
         f"--cache_dir={tmp_path / 'cache'}", f"--log_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"--dataset={dataset!r}" in proc.stderr
    assert where in proc.stderr and "synthetic" in proc.stderr


def test_unknown_dataset_flag(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.run", "--dataset=imagenet", f"--log_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.returncode != 0 and "Unknown --dataset='imagenet'" in proc.stderr


def test_strategy_choice():
    import tensorflow as tf

    from trainers.experiment import make_strategy

    # No GPU here: "auto" is the default strategy; "mirrored" over the one CPU works too.
    assert make_strategy("auto") is tf.distribute.get_strategy()
    assert make_strategy("mirrored").num_replicas_in_sync >= 1
    with pytest.raises(ValueError, match="--strategy='bogus'"):
        make_strategy("bogus")


def test_mixed_bfloat16_run_exports_a_float32_graph(tiny_config, tmp_path, caplog):
    import tensorflow as tf

    config = tiny_config.replace(precision="mixed_bfloat16", epochs_pretrain=0, epochs=1,
                                 freeze_epochs=1, log_dir=str(tmp_path / "bf16"))
    results, messages = _run_logging_info(config, caplog)
    # The resolved plan comes first, and the ignored --finetune_epochs is pointed out.
    plan = messages.index("Training plan: 1 epochs")
    assert messages[plan + 1].split()[:3] == ["epochs", "1-1", "frozen"]
    assert any("--finetune_epochs=1 is ignored without pretraining" in m for m in messages)
    assert results["precision"] == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    model = keras.saving.load_model(os.path.join(config.log_dir, "model.keras"))
    assert model.backbone.get_layer("stem_conv").compute_dtype == "bfloat16"
    served = tf.saved_model.load(os.path.join(config.log_dir, "saved_model"))
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = served.signatures["serving_default"](images=tf.constant(images))
    assert out["scores"].dtype == tf.float32 and out["scores"].shape == (3, 6)
    bf16 = [t for op in served.signatures["serving_default"].graph.get_operations()
            for t in op.outputs if t.dtype == tf.bfloat16]
    assert bf16 == []
    expected = model(images.astype("float32"), training=False)["scores"].numpy()
    np.testing.assert_allclose(out["scores"].numpy(), expected, rtol=0.05, atol=0.05)
    # The graph is the float32 copy of the model (same weights), to the verification
    # tolerance; before, the trainer exported the bf16 model without a check.
    float32_scores = float32_copy(model)(images.astype("float32"), training=False)["scores"]
    np.testing.assert_allclose(out["scores"].numpy(), float32_scores.numpy(), rtol=0,
                               atol=VERIFY_TOLERANCE)
    # The exporter's CLI exports and verifies the bf16-trained run (exit 0).
    base = tmp_path / "exports"
    proc = subprocess.run(
        [sys.executable, "-m", "export.saved_model", "--model", config.log_dir,
         "--out", str(base / "pipnet" / "1")], capture_output=True, text=True, timeout=300,
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (base / "pipnet" / "1" / "saved_model.pb").is_file()
    assert 'name: "pipnet"' in (base / "models.config").read_text()


def test_precision_resolution():
    from trainers.experiment import resolve_precision

    assert resolve_precision("float32") == "float32"
    assert resolve_precision("auto") in ("float32", "mixed_bfloat16")
    with pytest.raises(ValueError, match="--precision='fp8'"):
        resolve_precision("fp8")


def test_evaluate_measures_top1_on_the_images_the_trainer_tests_on(tmp_path):
    """CUB: metrics.json's top-1 is on bounding-box crops; evaluation.json's "test" is the
    same figure on the same images, and the full images are reported beside it."""
    from tests.datasets_test import _write_cub
    from trainers.evaluate import evaluate_run

    root = _write_cub(tmp_path / "data", n_per_class=6)
    config = PRESETS["cub"].replace(
        data_dir=str(root), net="tiny_cnn", weights="none", precision="float32", image_size=16,
        epochs_pretrain=1, epochs=2, freeze_epochs=2, finetune_epochs=0, batch_size=2,
        batch_size_pretrain=2, cache_dir=str(tmp_path / "cache"),
        log_dir=str(tmp_path / "run"), export=False, prune_weak_prototypes=0.9,
        background_loss=2.0)
    metrics = run_training(config)
    # --background_loss: pretraining's full images have a background around the box
    # (phase 2's exact crops only where the geometric op filled the corners).
    with open(f"{config.log_dir}/training_log.csv") as log:
        rows = list(csv.DictReader(log))
    assert len(rows) == 3 and float(rows[0]["L_B"]) > 0
    assert all(float(row["L_B"]) < float(rows[0]["L_B"]) for row in rows[1:])
    # --prune_weak_prototypes: a prototype left in the saved sheet has a largest weight
    # ≥ 0.9 × the mean class maximum, or is a class's strongest connection.
    assert metrics["pruned_weak_prototypes"]["fraction"] == 0.9
    kernel = np.maximum(keras.saving.load_model(f"{config.log_dir}/model.keras")
                        .classifier.kernel.numpy(), 0)
    class_max = kernel.max(axis=0)
    strong = kernel.max(axis=1) >= 0.9 * class_max.mean() - 1e-6
    assert np.all((kernel == 0) | strong[:, None] | (kernel == class_max[None, :]))
    assert metrics["global_size"] <= metrics["before_pruning"]["global_size"]
    result = evaluate_run(config.log_dir, verbose=0)
    assert result["test_images"] == "bounding-box crops"
    assert result["test"]["num_images"] == metrics["num_images"] == 6
    assert result["test"]["top1_accuracy"] == metrics["top1_accuracy"]
    assert result["test"]["abstained"] == metrics["abstained"]
    assert result["test_full_images"]["num_images"] == 6
    assert "ood" not in result  # CUB brings no OoD folders of its own
    assert set(result["purity"]) == {"train", "test"}


def test_an_unknown_background_loss_mode_fails_before_anything_is_written(tiny_config, tmp_path):
    config = tiny_config.replace(log_dir=str(tmp_path / "bad"), background_loss_pretrain="later")
    with pytest.raises(ValueError, match="--background_loss_pretrain='later'"):
        run_training(config)
    assert not (tmp_path / "bad").exists()


def test_an_unfrozen_backbone_group_trains_from_the_first_epoch(tiny_config, tmp_path, caplog):
    """--nofreeze_backbone_group reaches the plan (the backbone group trains in
    pretraining and the frozen stage) and the run's config.json."""
    config = tiny_config.replace(epochs=3, freeze_epochs=2, freeze_backbone_group=False,
                                 export=False, log_dir=str(tmp_path / "unfrozen"))
    _, messages = _run_logging_info(config, caplog)
    plan = messages.index("Training plan: 4 epochs")
    stages = {line.split()[2]: line.split("trains ")[1].split(";")[0]
              for line in messages[plan + 1:plan + 5]}
    assert stages == {"pretrain": "backbone, freeze, train, add_on",
                      "finetune": "classifier",
                      "frozen": "backbone, freeze, train, add_on, classifier",
                      "full": "backbone, freeze, train, add_on, classifier"}
    saved = json.loads((tmp_path / "unfrozen" / "config.json").read_text())
    assert saved["freeze_backbone_group"] is False
