"""`bench/gpu_check.sh` runs as a user would run it: here, without a GPU, the checks skip the
GPU steps with a clear message, and `--cpu_smoke` runs every GPU check's code on 2 logical
CPU devices (the suite itself is left out: this test is part of it)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")),
                                reason="with a GPU, bench/gpu_check.sh runs the real checks")


def _run(*args, timeout=300):
    env = dict(os.environ, PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout, check=False)


def test_script_is_executable():
    assert os.access(SCRIPT, os.X_OK)


def test_without_a_gpu_the_gpu_steps_are_skipped_with_a_message(tmp_path, capsys):
    from bench import gpu_check

    out = tmp_path / "report.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    assert "no GPU visible to TensorFlow: skipping the GPU steps" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["skipped"] == "no GPU visible" and report["checks"] == {}


def test_cpu_smoke_runs_every_check(tmp_path):
    out = tmp_path / "report.json"
    proc = _run("--no_tests", "--cpu_smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu_check: PASSED" in proc.stdout
    checks = json.loads(out.read_text())["checks"]
    assert checks["train"]["replicas"] == 2 and checks["train"]["precision"] == "mixed_bfloat16"
    assert all(isinstance(v, float) for v in checks["train"]["last_logs"].values())
    replicas = checks["replicas"]
    assert replicas["one"]["replicas"] == 1 and replicas["all"]["replicas"] == 2
    assert replicas["max_abs_diff"] <= 1e-4 and replicas["one"]["L_T"] > 0
    assert checks["throughput"]["inference_img_per_s"] > 0
    assert checks["throughput"]["training_pairs_per_s"] > 0
