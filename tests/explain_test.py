"""Explanations, the evaluation and explanation CLIs end to end on a tiny random run."""
import hashlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipnet_tf.backbones import build_backbone
from pipnet_tf.explain import global_view, local_view
from pipnet_tf.io import write_json
from pipnet_tf.model import PIPNet
from pipnet_tf.patch_geometry import REFERENCE_RULE

SIZE = 32
REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_model(num_classes=6, seed=0):
    """16 prototypes (1x1 add-on, sharpened so that presence reaches ~1), 12 relevant."""
    model = PIPNet(build_backbone("tiny_cnn", SIZE, weights=None, seed=seed),
                   num_classes=num_classes, num_prototypes=16, seed=seed)
    model.build((None, SIZE, SIZE, 3))
    model.add_on.kernel.assign(model.add_on.kernel * 50.0)
    kernel = np.zeros(model.classifier.kernel.shape, np.float32)
    rng = np.random.default_rng(seed)
    kernel[rng.choice(kernel.shape[0], 12, replace=False), :] = rng.uniform(0.5, 3, (12, num_classes))
    model.classifier.kernel.assign(kernel)
    return model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    tiny_model().save(str(root / "model.keras"))
    write_json(root / "config.json", {
        "dataset": "synthetic", "image_size": SIZE, "cache_dir": str(root / "cache"),
        "synthetic_train_per_class": 4, "synthetic_test_per_class": 2})
    return root


def _digest(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def test_evaluate_run_writes_all_metrics_without_touching_the_model(run_dir):
    from trainers.evaluate import evaluate_run

    before = _digest(run_dir / "model.keras")
    result = evaluate_run(run_dir, verbose=0)
    assert _digest(run_dir / "model.keras") == before
    saved = json.loads((run_dir / "evaluation.json").read_text())
    assert saved["test"]["num_images"] == 12 and len(saved["test"]["confusion_matrix"]) == 6
    assert set(saved["ood"]["sources"]) == {"backgrounds", "body_only", "unknown_shapes"}
    assert saved["ood"]["id_accepted"] >= 0.95
    assert {"train", "test"} == set(saved["purity"])
    assert "top10" in saved["purity"]["train"] and "presence_gt_0.5" in saved["purity"]["train"]
    assert saved["before_pruning"]["global_size"] == 12
    assert result["latent_hw"] == [SIZE // 8, SIZE // 8]
    # 32·32/224 → a 5-px patch; tiny_cnn declares stride-8 cells (StridePatchRule), so the
    # skip is its stride, not the reference's spread of the grid over the image.
    assert result["patch_size_and_skip"] == [5, 8]
    assert result["patch_geometry"]["skip"] == [8, 8]
    assert result["patch_geometry"]["cell_centre"] == "8·i + 4 px"
    text = (run_dir / "evaluation.md").read_text()
    assert "FPR95" in text and "purity" in text


def test_explain_report_and_pictures(run_dir):
    from trainers.explain import explain_run

    index = explain_run(run_dir, verbose=0)
    out = index.parent
    protos = sorted((out / "global").glob("prototype_*.png"))
    topk = json.loads((out / "global" / "prototype_topk.json").read_text())
    assert len(protos) == len(topk) > 0 and all(len(v) == 10 for v in topk.values())
    assert (out / "global" / "scoring_sheet.png").is_file()
    sheet = json.loads((out / "global" / "scoring_sheet.json").read_text())
    assert len(sheet) == 6 and all(len(v) == 12 for v in sheet.values())
    local = sorted((out / "local").glob("*.png"))
    assert len(local) == 6 * 2 + 3  # 2 test images per class + 1 per OoD folder
    description = json.loads(local[0].with_suffix(".json").read_text())
    assert description["classes"] and description["in_distribution"] in (True, False)
    for item in description["classes"][0]["prototypes"]:
        assert item["contribution"] == pytest.approx(item["presence"] * item["weight"], rel=1e-5)
    html = index.read_text()
    assert html.count("<img ") == len(protos) + len(local) + 1



def test_report_explains_the_test_images_as_top1_measures_them(tmp_path, monkeypatch):
    """On a CUB layout the model is tested on bounding-box crops, so the report explains
    those crops (not the full images), then one full image per OoD folder."""
    from pipnet_tf.data.datasets import build_data
    from pipnet_tf.runs import open_run
    from trainers.explain import explain_run

    tiny_model().save(str(tmp_path / "model.keras"))
    write_json(tmp_path / "config.json", {
        "dataset": "creatures_demo", "image_size": SIZE, "cache_dir": str(tmp_path / "cache"),
        "synthetic_train_per_class": 1, "synthetic_test_per_class": 2})
    shown = []
    explain_image = local_view.explain_image
    monkeypatch.setattr(local_view, "explain_image",
                        lambda pixels, *a, **k: shown.append(pixels)
                        or explain_image(pixels, *a, **k))
    index = explain_run(tmp_path, verbose=0)
    local = sorted((index.parent / "local").glob("*.json"))
    described = [json.loads(p.read_text()) for p in local]
    assert [d["cropped"] for d in described] == [True] * 12 + [False] * 3
    assert all("/ood/" in d["path"] for d in described[12:])
    # The first picture shows the first test crop's pixels, not the full image's.
    data = build_data(open_run(tmp_path).config, training=False)
    crop = data.test.select([0]).uint8_images()[0]
    full = data.test_full.select([0]).uint8_images()[0]
    assert len(shown) == 15 and not np.array_equal(crop, full)
    np.testing.assert_array_equal(shown[0], crop)
    assert described[0]["path"] == data.test.originals[0]

def test_abstention_reads_no_known_part_found():
    image = np.full((SIZE, SIZE, 3), 128, np.uint8)
    kernel = np.zeros((8, 3))
    picture, description = local_view.explain_image(
        image, np.zeros(3), np.zeros(8), np.zeros(8, np.int32), REFERENCE_RULE.geometry(SIZE, (4, 4)),
        kernel, ["a", "b", "c"], {})
    assert description["abstained"] and description["classes"] == []
    assert picture.width > 200 and picture.height > 200


def test_contributions_and_topk():
    kernel = np.array([[2.0, 0.0], [0.0, 1.0], [0.5, 0.0]])
    presence = np.array([0.5, 0.9, 0.001])
    assert local_view.contributions(presence, kernel, 0) == [(0, 0.5, 2.0, 1.0)]
    outputs = {"presence": np.array([[0.9, 0.0, 0.0], [0.5, 0.05, 0.0]]),
               "locations": np.zeros((2, 3), np.int32)}
    topk = global_view.prototype_topk(outputs, kernel, REFERENCE_RULE.geometry(SIZE, (4, 4)), k=2)
    # Prototype 1 is relevant but never above 0.1 → skipped; prototype 2 likewise.
    assert list(topk) == [0] and [e["image"] for e in topk[0]] == [0, 1]


def test_explain_cli_on_a_folder(run_dir, tmp_path):
    images = tmp_path / "imgs" / "nested"
    images.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3), np.uint8)).save(
            images / f"x{i}.jpg")
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "trainers.explain", "--model", str(run_dir), "--images",
                    str(tmp_path / "imgs"), "--out", str(out), "--verbose", "0"],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    assert len(list((out / "local").glob("*.png"))) == 2 and (out / "index.html").is_file()


def test_evaluate_extra_ood_folder_only(run_dir, tmp_path):
    from trainers.evaluate import evaluate_run

    folder = tmp_path / "noise"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 30, 3), np.uint8)).save(
            folder / f"n{i}.png")
    result = evaluate_run(run_dir, [f"noise=folder:{folder}"], default_ood=False, verbose=0)
    assert list(result["ood"]["sources"]) == ["noise"]
    assert result["ood"]["sources"]["noise"]["num_images"] == 3


def test_evaluate_ood_from_another_dataset_test_split(run_dir, tmp_path):
    from trainers.evaluate import evaluate_run

    for split, count in (("train", 2), ("test", 3)):
        for cls in ("cats", "dogs"):
            folder = tmp_path / "other" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 24, 3), np.uint8)
                                ).save(folder / f"{i}.png")
    result = evaluate_run(run_dir, [f"dataset:folder:{tmp_path / 'other'}"], default_ood=False,
                          verbose=0)
    assert list(result["ood"]["sources"]) == ["folder"]
    assert result["ood"]["sources"]["folder"]["num_images"] == 6  # the test split only


def test_evaluate_a_run_trained_on_an_image_folder(tmp_path):
    from trainers.evaluate import evaluate_run

    data = tmp_path / "data"
    for split, count in (("train", 3), ("test", 2)):
        for cls in ("a", "b"):
            folder = data / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 36, 3), np.uint8)
                                ).save(folder / f"{i}.png")
    (data / "test" / "a" / "broken.jpg").write_bytes(b"not an image")
    run = tmp_path / "run"
    run.mkdir()
    tiny_model(num_classes=2).save(str(run / "model.keras"))
    write_json(run / "config.json", {"dataset": f"folder:{data}", "image_size": SIZE,
                                     "cache_dir": str(tmp_path / "cache")})
    result = evaluate_run(run, default_ood=False, verbose=0)
    assert result["test"]["num_images"] == 4  # the broken file skipped
    assert "purity" not in result or not result["purity"]
