"""MultiWorkerMirroredStrategy with 2 worker processes on this machine (loopback ports):
each example once per epoch across workers, one step equal to a single-process step on
the same global batch, and a killed worker whose restarted job resumes and finishes.
Every process is bounded by a timeout, so a hung worker fails the test."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import multi_worker_helper as helper
from tests.resume_test import (  # noqa: F401 - the fixture kills leftover processes
    _no_process_outlives_its_test,
    finish,
    start,
    tiny_config,
    wait_for,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 240


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_configs(chief: bool = False) -> list[str]:
    """TF_CONFIG of 2 tasks: workers only (worker 0 is the chief), or a chief and a worker."""
    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    if chief:
        cluster, tasks = {"chief": hosts[:1], "worker": hosts[1:]}, [("chief", 0), ("worker", 0)]
    else:
        cluster, tasks = {"worker": hosts}, [("worker", 0), ("worker", 1)]
    return [json.dumps({"cluster": cluster, "task": {"type": t, "index": i}}) for t, i in tasks]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            root / f"{i:02d}.png")
    return root


def test_two_workers_shard_the_epoch_and_step_like_one_process(image_dir):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen([sys.executable, "-m", "tests.multi_worker_helper", str(image_dir)],
                              cwd=ROOT, env=dict(env, TF_CONFIG=config), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for config in tf_configs()]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
                p.communicate()
            pytest.fail(f"a worker hung for {TIMEOUT} s")
        assert proc.returncode == 0, "\n".join(l[:300] for l in err.splitlines()[-60:])
        results.append(json.loads(next(line[len("RESULT"):] for line in out.splitlines()
                                        if line.startswith("RESULT"))))

    # Each of the 16 images (label = its index) once per epoch, 8 per worker.
    seen = [r["labels"] for r in results]
    assert [len(s) for s in seen] == [8, 8]
    assert sorted(seen[0] + seen[1]) == list(range(16))

    single = helper.one_step(tf.distribute.get_strategy(), str(image_dir))
    for result in results:
        for key in ("loss", "L_A", "L_T", "L_C"):
            np.testing.assert_allclose(result["losses"][key], single["losses"][key],
                                       atol=1e-5, err_msg=key)
        assert single["losses"]["L_T"] > 0
        for got, expected in zip(result["weights"], single["weights"]):
            np.testing.assert_allclose(got, expected, atol=1e-5)
    initial = helper.initial_weights()
    moved = max(float(np.max(np.abs(np.subtract(w, w0))))
                for w, w0 in zip(single["weights"], initial))
    assert moved > 1e-3  # the step moved the weights by far more than the tolerance


def test_killed_worker_restarted_job_resumes_and_writes_one_run_directory(tmp_path):
    temp = tmp_path / "worker_tmp"
    temp.mkdir()
    # One stage (2 epochs of 4 batches, everything trains): one trace per process.
    config = tiny_config(tmp_path, "run", strategy="multi_worker", checkpoint_every_steps=1,
                         epochs_pretrain=0, epochs=2)
    checkpoints = pathlib.Path(config.log_dir) / "checkpoints"

    def launch(configs):
        return [start(config, env={"TF_CONFIG": c, "TMPDIR": str(temp)}) for c in configs]

    chief, worker = launch(tf_configs())
    wait_for(lambda: (checkpoints / "ckpt-2.index").exists(), chief)
    worker.send_signal(signal.SIGKILL)  # a worker dies; the cluster manager restarts the job
    chief.send_signal(signal.SIGKILL)
    for proc in (chief, worker):
        proc.communicate(timeout=30)
    assert not (pathlib.Path(config.log_dir) / "metrics.json").exists()
    assert [p for p in temp.iterdir() if "pipnet_worker" in p.name]  # left by the killed one

    # Restarted as a chief and a worker this time (the other TF_CONFIG layout).
    chief, worker = launch(tf_configs(chief=True))
    chief_log, worker_log = finish(chief), finish(worker)
    assert "Resumed from" in chief_log and "Resumed from" in worker_log

    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run", "worker_tmp"]
    # The workers wrote into temporary directories of their own: the restarted one removed
    # its own at its end and the killed one's (its process is gone) at its start.
    assert not [p for p in temp.iterdir() if "pipnet_worker" in p.name]
    run = pathlib.Path(config.log_dir)
    assert {"config.json", "model.keras", "metrics.json", "class_names.txt",
            "training_log.csv", "checkpoints"} <= {p.name for p in run.iterdir()}
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no partial files
    rows = (run / "training_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "1"]
