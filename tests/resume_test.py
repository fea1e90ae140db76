"""Fault tolerance end to end: a run killed with SIGKILL mid-epoch and restarted with the
same command ends bit-identical to an uninterrupted one (`--deterministic`);
architecture-changing flags are refused before anything is written; a run that stops on
NaN leaves the good run's files alone (issue 15, item 6)."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from pipnet_tf.runs import RunDirectoryError
from trainers.configs import PRESETS

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds for any one training process


def tiny_config(root: pathlib.Path, name: str, **changes):
    """Two epochs (pretraining, classifier-only) of 4 batches on 36 images of 32 px;
    `changes` override any setting."""
    settings = dict(
        image_size=32, epochs_pretrain=1, epochs=1, freeze_epochs=0, finetune_epochs=1,
        batch_size=8, batch_size_pretrain=8, synthetic_train_per_class=6,
        synthetic_test_per_class=3, cache_dir=str(root / "cache"), log_dir=str(root / name),
        export=False)
    return PRESETS["synthetic"].replace(**{**settings, **changes})


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def start(config, **popen) -> subprocess.Popen:
    """`tests.run_helper` (one `run_training` in a fresh process) for `config`; killed at
    the end of the test if still running (use with the `_no_process_outlives_its_test`
    fixture, which is automatic here)."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    env.update(popen.pop("env", {}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.run_helper", json.dumps(config.to_dict())],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    _STARTED.append(proc)
    return proc


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> str:
    """Waits for `proc` (killing it after `timeout`); asserts success; returns stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"training process hung for {timeout} s: {err[-3000:]}")
    assert proc.returncode == 0 and "RUN_DONE" in out, err[-3000:]
    return err


def wait_for(predicate, proc: subprocess.Popen, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"process ended before the awaited point: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"awaited point not reached in {timeout} s")
        time.sleep(0.02)


def model_weights(run_dir) -> list[np.ndarray]:
    import pipnet_tf.model  # noqa: F401 - registers the classes

    return keras.saving.load_model(os.path.join(run_dir, "model.keras")).get_weights()


def test_sigkill_mid_epoch_and_restart_is_bit_identical(tmp_path):
    whole = tiny_config(tmp_path, "whole", deterministic=True, checkpoint_every_steps=1)
    killed = whole.replace(log_dir=str(tmp_path / "killed"))
    reference, victim = start(whole), start(killed)
    checkpoints = pathlib.Path(killed.log_dir) / "checkpoints"
    # 4 batches per epoch and a checkpoint after each: ckpt-2 is written after batch 2 of
    # pretraining; the kill lands there or a little later, before the run ends.
    wait_for(lambda: (checkpoints / "ckpt-2.index").exists(), victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert not os.path.exists(os.path.join(killed.log_dir, "metrics.json"))
    err = finish(start(killed))
    assert "Resumed from" in err
    finish(reference)

    metrics = [pathlib.Path(c.log_dir, "metrics.json").read_bytes() for c in (whole, killed)]
    assert metrics[0] == metrics[1]
    for a, b in zip(model_weights(whole.log_dir), model_weights(killed.log_dir)):
        np.testing.assert_array_equal(a, b)


# === A failed run does not damage a good one (issue 15, item 6) ===

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from trainers.experiment import run_training

    root = tmp_path_factory.mktemp("good")
    config = tiny_config(root, "run")
    run_training(config)
    return config


def _snapshot(run_dir) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes()
            for p in sorted(pathlib.Path(run_dir).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("changes,named", [
    (dict(num_features=32), "--num_features=32 (the run has 0)"),
    (dict(net="convnext_tiny_13", image_size=64),
     "--net='convnext_tiny_13' (the run has 'tiny_cnn'), --image_size=64 (the run has 32)"),
    (dict(backbone_depth=2), "--backbone_depth=2 (the run has 0)"),
])
def test_architecture_changing_flags_are_refused_before_anything_is_written(
        finished_run, changes, named):
    from trainers.experiment import run_training

    before = _snapshot(finished_run.log_dir)
    with pytest.raises(RunDirectoryError) as error:
        run_training(finished_run.replace(**changes))
    assert named in str(error.value)
    assert _snapshot(finished_run.log_dir) == before


def test_a_run_that_stops_on_nan_keeps_the_good_runs_config(finished_run):
    from trainers.experiment import run_training

    before = _snapshot(finished_run.log_dir)
    with pytest.raises(FloatingPointError):
        run_training(finished_run.replace(epochs=2, lr=1e30, lr_net=1e30, lr_block=1e30))
    after = _snapshot(finished_run.log_dir)
    for name in ("config.json", "model.keras", "metrics.json", "class_names.txt"):
        assert after[name] == before[name], name
    assert json.loads(after["config.json"])["lr"] == finished_run.lr


def test_the_cli_refuses_architecture_changes_with_exit_2(finished_run):
    before = _snapshot(finished_run.log_dir)
    proc = subprocess.run(  # noqa: PLW1510 - checked below
        [sys.executable, "-m", "trainers.run", "--dataset=synthetic",
         f"--log_dir={finished_run.log_dir}", "--num_features=32", "--image_size=32"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "--num_features=32 (the run has 0)" in proc.stderr
    assert _snapshot(finished_run.log_dir) == before
