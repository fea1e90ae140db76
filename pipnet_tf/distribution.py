"""Multi-worker training with `tf.distribute.MultiWorkerMirroredStrategy`: the cluster
from `TF_CONFIG`, which worker is the chief, and where the other workers write.

Every worker runs the same command with the same `--log_dir`. All of them train and save
checkpoints (a save can need every worker), but only the chief writes into the run
directory; the others write into a temporary directory that is removed when they finish,
as TensorFlow's multi-worker guide describes. With `TF_CONFIG` listing workers only,
worker 0 is the chief; with a "chief" task, that task is (TensorFlow's convention, read
from `strategy.extended.should_checkpoint`).
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import tensorflow as tf
from absl import logging

from pipnet_tf.io import partial_path, remove_stale_partials

TF_CONFIG = "TF_CONFIG"
WORKER_TEMP = "pipnet_worker"  # non-chief workers write to $TMPDIR/.pipnet_worker.partial-…


def check_tf_config() -> dict:
    """The parsed `TF_CONFIG` of a multi-worker run.

    Raises:
        ValueError: it is missing, not JSON, or lacks "cluster"/"task" (the message
            shows an example).
    """
    example = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}')
    raw = os.environ.get(TF_CONFIG, "")
    if not raw.strip():
        raise ValueError(f"--strategy=multi_worker needs the {TF_CONFIG} environment variable "
                         f"on every worker, e.g. {TF_CONFIG}='{example}' (README, \"Training "
                         "on GPUs and clusters\").")
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{TF_CONFIG} is not valid JSON ({e}): {raw!r}") from None
    if (not isinstance(parsed, dict) or not isinstance(parsed.get("cluster"), dict)
            or not isinstance(parsed.get("task"), dict)):
        raise ValueError(f"{TF_CONFIG} needs a \"cluster\" and a \"task\", e.g. {example}; "
                         f"received {raw!r}")
    task = parsed["task"]
    jobs = parsed["cluster"]
    if task.get("type") not in jobs or not 0 <= int(task.get("index", -1)) < len(
            jobs[task.get("type")]):
        raise ValueError(f"{TF_CONFIG}'s task {task!r} is not in its cluster {jobs!r}.")
    return parsed


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's checkpoints, logs and outputs."""
    return bool(strategy.extended.should_checkpoint)


def task_name(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return "local"
    return f"{resolver.task_type}-{resolver.task_id}"


@contextlib.contextmanager
def worker_directory(run_dir: str | os.PathLike,
                     strategy: tf.distribute.Strategy) -> Iterator[pathlib.Path]:
    """`run_dir` on the chief; on the other workers a temporary directory, removed
    when the block ends (normally or not). Those left by killed workers on this host are
    removed when the next one starts."""
    if is_chief(strategy):
        yield pathlib.Path(run_dir)
        return
    name = pathlib.Path(tempfile.gettempdir()) / WORKER_TEMP
    remove_stale_partials(name)
    temp = partial_path(name)
    temp.mkdir()
    logging.info("Not the chief (%s): writing checkpoints and logs to %s (removed at the "
                 "end)", task_name(strategy), temp)
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)
