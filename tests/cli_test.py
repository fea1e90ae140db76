"""Every command line end to end with bad input: one clear line and exit status 2 (the
traceback only with -v 1), unreadable images skipped and named, and --help exits 0.

The commands run in subprocesses, a few at a time (each starts TensorFlow: ~5 s).
"""
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipnet_tf.config import TrainConfig
from pipnet_tf.data.datasets import build_data
from pipnet_tf.io import write_json
from tests.explain_test import SIZE, tiny_model

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")


def run(*args: str) -> subprocess.CompletedProcess:
    """`python -m ARGS` from the repository root."""
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=ENV, check=False)


def run_all(commands: dict) -> dict:
    """{key: args} → {key: CompletedProcess}, two at a time (2 CPU cores)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(run, *args) for key, args in commands.items()}
        return {key: future.result() for key, future in futures.items()}


def error_lines(proc: subprocess.CompletedProcess, prog: str) -> list[str]:
    return [line for line in proc.stderr.splitlines() if f"] {prog}: " in line]


def assert_user_error(proc: subprocess.CompletedProcess, prog: str, *fragments: str) -> str:
    """Exit status 2, exactly one error line naming `prog` and holding `fragments`, and no
    traceback; returns the line."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = error_lines(proc, prog)
    assert len(lines) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run on the built-in dataset (generated here, once), plus a copy whose
    model.keras is truncated."""
    root = tmp_path_factory.mktemp("cli")
    run = root / "run"
    run.mkdir()
    tiny_model().save(str(run / "model.keras"))
    config = {"dataset": "synthetic", "image_size": SIZE, "cache_dir": str(root / "cache"),
              "synthetic_train_per_class": 4, "synthetic_test_per_class": 2}
    write_json(run / "config.json", config)
    build_data(TrainConfig.from_dict(config), training=False)  # generate the dataset now
    truncated = root / "truncated"
    truncated.mkdir()
    data = (run / "model.keras").read_bytes()
    (truncated / "model.keras").write_bytes(data[: len(data) // 2])
    write_json(truncated / "config.json", config)
    return run


@pytest.fixture(scope="module")
def awkward_folder(tmp_path_factory):
    """Two good images, a zero-byte .jpg and a text file named .png."""
    folder = tmp_path_factory.mktemp("awkward")
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3), np.uint8)).save(
            folder / f"good{i}.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("this is text, not a PNG\n")
    return folder


# === Item 8: clear one-line errors, exit status 2, the traceback only with -v 1 ===
def test_user_errors_give_one_line_and_exit_2(run_dir, tmp_path):
    truncated = str(run_dir.parent / "truncated")
    missing = str(tmp_path / "does" / "not" / "exist")
    procs = run_all({
        "dataset": ("trainers.run", "--dataset=nonsense", f"--log_dir={tmp_path / 'r1'}"),
        "dataset_v": ("trainers.run", "--dataset=nonsense", f"--log_dir={tmp_path / 'r2'}",
                      "-v", "1"),
        "bad_flag": ("trainers.run", "--epochs=abc"),
        "evaluate": ("trainers.evaluate", "--model", missing),
        "truncated_v": ("trainers.evaluate", "--model", truncated, "-v", "1"),
        "explain_images": ("trainers.explain", "--model", str(run_dir), "--images",
                           str(tmp_path / "missing"), "--out", str(tmp_path / "out")),
        "saved_model": ("export.saved_model", "--model", truncated, "--out",
                        str(tmp_path / "exports" / "m" / "1")),
    })
    assert_user_error(procs["dataset"], "trainers.run", "Unknown --dataset='nonsense'")
    assert not (tmp_path / "r1").exists()
    assert procs["bad_flag"].returncode == 2 and "--epochs=abc" in procs["bad_flag"].stderr
    assert_user_error(procs["evaluate"], "trainers.evaluate", "RunDirectoryError", missing,
                      "does not exist")
    line = assert_user_error(procs["explain_images"], "trainers.explain", "--images folder",
                             "missing", "does not exist")
    assert "OoD" not in line
    assert not (tmp_path / "out").exists()
    assert_user_error(procs["saved_model"], "export.saved_model", "damaged", "truncated")
    assert not (tmp_path / "exports").exists()
    # -v 1 (absl's flag; the argparse CLIs have it too): the same one line, plus the traceback.
    for key, prog, fragments in (
            ("dataset_v", "trainers.run", ("Unknown --dataset='nonsense'",)),
            ("truncated_v", "trainers.evaluate", ("model.keras", "damaged", "truncated"))):
        proc = procs[key]
        lines = error_lines(proc, prog)
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
        assert all(fragment in lines[0] for fragment in fragments), lines[0]
        assert "File not found" not in lines[0]  # what Keras says of a truncated file
        assert "Traceback (most recent call last)" in proc.stderr, key


# === Items 4 and 5: runs that would train nonsense are refused before anything is written ===
def test_a_single_class_dataset_and_zero_epochs_are_refused(tmp_path):
    only = tmp_path / "data" / "only"
    only.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 24, 3), np.uint8)).save(
            only / f"{i}.png")
    procs = run_all({
        "single": ("trainers.run", f"--dataset=folder:{only.parent}", "--net=tiny_cnn",
                   "--weights=none", f"--cache_dir={tmp_path / 'cache'}",
                   f"--log_dir={tmp_path / 'single'}"),
        "no_epochs": ("trainers.run", "--epochs=0", f"--cache_dir={tmp_path / 'cache'}",
                      f"--log_dir={tmp_path / 'no_epochs'}"),
    })
    assert_user_error(procs["single"], "trainers.run", "1 class ['only']",
                      "needs at least 2 classes")
    assert not (tmp_path / "single" / "metrics.json").exists()
    assert_user_error(procs["no_epochs"], "trainers.run", "--epochs=0",
                      "untrained classifier")
    assert not (tmp_path / "no_epochs").exists()


# === Item 7: unreadable files are skipped and named; nothing usable is an error ===
def test_explain_and_evaluate_skip_and_name_unreadable_files(run_dir, awkward_folder,
                                                             tmp_path):
    bad_only = tmp_path / "bad_only"
    bad_only.mkdir()
    (bad_only / "empty.jpg").write_bytes(b"")
    (bad_only / "notes.png").write_text("text\n")
    out = tmp_path / "explained"
    procs = run_all({
        "explain": ("trainers.explain", "--model", str(run_dir), "--images",
                    str(awkward_folder), "--out", str(out), "--verbose", "0"),
        "evaluate": ("trainers.evaluate", "--model", str(run_dir), "--no_default_ood",
                     "--ood", f"awkward=folder:{awkward_folder}", "--verbose", "0"),
        "explain_none": ("trainers.explain", "--model", str(run_dir), "--images",
                         str(bad_only), "--out", str(tmp_path / "none"), "--verbose", "0"),
        "evaluate_none": ("trainers.evaluate", "--model", str(run_dir), "--no_default_ood",
                          "--ood", f"folder:{bad_only}", "--verbose", "0"),
    })
    for key in ("explain", "evaluate"):
        proc = procs[key]
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "empty.jpg" in proc.stderr and "notes.png" in proc.stderr, key
    assert (out / "index.html").is_file()
    assert len(list((out / "local").glob("*.png"))) == 2
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["ood"]["sources"]["awkward"]["num_images"] == 2
    assert_user_error(procs["explain_none"], "trainers.explain", "None of the 2 images",
                      "readable")
    assert not (tmp_path / "none").exists()
    assert_user_error(procs["evaluate_none"], "trainers.evaluate", "None of the 2",
                      "readable")


# === Item 14: --help exits 0 everywhere, and shows what a new user needs ===
HELP = {
    "trainers.run": ("--log_dir: The run directory", "--cache_dir: Cache of generated and "
                     "converted images", "--freeze_epochs counts the finetune epochs",
                     "frozen    max(0, min(FREEZE_EPOCHS, EPOCHS) - F)"),
    "trainers.evaluate": ("--cache_dir", "-v VERBOSITY"),
    "trainers.explain": ("--cache_dir", "-v VERBOSITY"),
    "trainers.edit": ("--disable", "-v VERBOSITY"),
    "export.saved_model": ("--out",),
    "export.tflite": ("--cache_dir", "--num_parity_images"),
    "bench.export_speed": ("runs/demo", "--cache_dir"),
    "bench.input_pipeline": ("--num_images",),
}  # bench.backbone_speed and bench.reference_torch are argparse programs: 0 already


def test_help_exits_0_for_every_command():
    procs = run_all({name: (name, "--help") for name in HELP})
    for name, fragments in HELP.items():
        proc = procs[name]
        assert proc.returncode == 0, (name, proc.returncode, proc.stderr[-2000:])
        for fragment in fragments:
            assert fragment in proc.stdout, (name, fragment)
    assert "demo3" not in procs["bench.export_speed"].stdout
