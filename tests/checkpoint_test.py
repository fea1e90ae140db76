"""`pipnet_tf.checkpoint`: object-based checkpoints hold every training object by name,
resume from the newest readable one, and fall back (with a warning naming it) when the
newest is damaged; never a silent fresh start."""
import pathlib

import keras
import numpy as np
import pytest
from absl import logging

from pipnet_tf.checkpoint import (
    CheckpointError,
    Progress,
    TrainingCheckpoints,
    seed_generator_states,
    training_objects,
)
from pipnet_tf.optimization import LearningRates, make_phase_optimizers
from tests.model_test import small_model


def _objects(model, phase=2):
    opts = make_phase_optimizers(model.layer_groups(), phase, LearningRates(), 2, 3)
    opts.build()
    return opts, training_objects(model, opts.active(), opts.clock)


def test_checkpoint_round_trip_keeps_every_object(tmp_path):
    model = small_model()
    opts, objects = _objects(model)
    opts.clock.assign(7)
    slot = opts.groups["classifier"][0].variables[-1]
    slot.assign(np.full(slot.shape, 0.25, "float32"))
    model.metrics[0].update_state(3.0)
    checkpoints = TrainingCheckpoints(tmp_path / "ckpt", keep=2)
    for step in (1, 2, 3):
        checkpoints.save(objects, Progress(2, 4, step))
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.index")) == [
        "ckpt-2.index", "ckpt-3.index"]

    other = small_model(seed=5)
    other_opts, other_objects = _objects(other)
    progress, path = TrainingCheckpoints(tmp_path / "ckpt").restore_latest(
        lambda phase: other_objects)
    assert progress == Progress(2, 4, 3) and path.endswith("ckpt-3")
    assert int(other_opts.clock.numpy()) == 7
    other_slot = other_opts.groups["classifier"][0].variables[-1]
    np.testing.assert_array_equal(other_slot.numpy(), slot.numpy())
    assert float(other.metrics[0].result()) == 3.0
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Numbers keep growing after a restart, so the newest is always the highest.
    again = TrainingCheckpoints(tmp_path / "ckpt", keep=2)
    assert again.save(objects, Progress(2, 5, 0)).endswith("ckpt-4")


def test_truncated_newest_checkpoint_falls_back_with_a_warning(tmp_path, monkeypatch):
    model = small_model()
    opts, objects = _objects(model)
    checkpoints = TrainingCheckpoints(tmp_path, keep=3)
    opts.clock.assign(1)
    checkpoints.save(objects, Progress(2, 1, 0))
    opts.clock.assign(2)
    newest = checkpoints.save(objects, Progress(2, 2, 0))
    data = next(pathlib.Path(tmp_path).glob("ckpt-2.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
    progress, path = TrainingCheckpoints(tmp_path).restore_latest(lambda phase: objects)
    assert progress == Progress(2, 1, 0) and path.endswith("ckpt-1")
    assert int(opts.clock.numpy()) == 1
    assert len(warnings) == 1 and newest in warnings[0] and "falling back" in warnings[0]


def test_no_readable_checkpoint_is_a_clear_error_not_a_fresh_start(tmp_path):
    model = small_model()
    _, objects = _objects(model)
    checkpoints = TrainingCheckpoints(tmp_path, keep=2)
    checkpoints.save(objects, Progress(2, 1, 0))
    for index in pathlib.Path(tmp_path).glob("*.index"):
        index.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="None of the 1 checkpoints .* can be restored"):
        checkpoints.restore_latest(lambda phase: objects)


def test_checkpoints_of_an_older_version_are_refused(tmp_path):
    (tmp_path / "epoch-0003").mkdir()
    (tmp_path / "epoch-0003" / "optimizer.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="older pipnet-tf"):
        TrainingCheckpoints(tmp_path).restore_latest(lambda phase: {})


def test_loss_scales_are_checkpointed(tmp_path):
    model = small_model()
    opts = make_phase_optimizers(model.layer_groups(), 2, LearningRates(), 2, 3, loss_scale=True)
    opts.build()
    scaler = opts.active()["classifier"]
    scaler.dynamic_scale.assign(64.0)
    TrainingCheckpoints(tmp_path).save(training_objects(model, opts.active(), opts.clock),
                                       Progress(2, 1, 0))
    scaler.dynamic_scale.assign(1.0)
    TrainingCheckpoints(tmp_path).restore_latest(
        lambda phase: training_objects(model, opts.active(), opts.clock))
    assert float(scaler.dynamic_scale.numpy()) == 64.0


def test_stochastic_depth_rng_is_found_by_layer():
    from pipnet_tf.backbones import build_backbone
    from pipnet_tf.model import PIPNet

    def states():
        model = PIPNet(build_backbone("convnext_tiny_13", 32, weights=None, seed=0), 3)
        return seed_generator_states(model)

    first, second = states(), states()  # the generators' own names differ between builds
    assert len(first) == 17 and list(first) == list(second)
    assert all("stochastic_depth" in key for key in first)
    np.testing.assert_array_equal(first[next(iter(first))].numpy(),
                                  second[next(iter(second))].numpy())
