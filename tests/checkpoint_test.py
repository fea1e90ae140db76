import numpy as np
import pytest

from pipnet_tf.checkpoint import CheckpointManager
from pipnet_tf.optimization import LearningRates, make_phase_optimizers
from tests.model_test import small_model


def test_save_restore_round_trip_and_keep(tmp_path):
    model = small_model()
    opts = make_phase_optimizers(model.layer_groups(), 2, LearningRates(), 2, 3)
    opts.build()
    opts.clock.assign(7)
    variables = opts.variables()
    variables[-1].assign(np.full(variables[-1].shape, 0.25, "float32"))
    manager = CheckpointManager(tmp_path / "ckpt", keep=2)
    for epoch in (1, 2, 3):
        manager.save(epoch, model, variables, {"phase": 2, "stage": "full"})
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("epoch-*")) == ["epoch-0002", "epoch-0003"]
    latest = manager.latest()
    assert latest.name == "epoch-0003"

    other = small_model(seed=5)
    other_opts = make_phase_optimizers(other.layer_groups(), 2, LearningRates(), 2, 3)
    other_opts.build()
    state = CheckpointManager.restore(latest, other, other_opts.variables())
    assert state == {"phase": 2, "stage": "full", "epoch": 3}
    assert int(other_opts.clock.numpy()) == 7
    np.testing.assert_array_equal(other_opts.variables()[-1].numpy(), variables[-1].numpy())
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_half_written_checkpoint_is_ignored(tmp_path):
    model = small_model()
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save(1, model, [], {"phase": 1, "stage": "pretrain"})
    # A run killed while writing epoch 2 leaves only a temporary directory.
    (tmp_path / ".tmp-0002-abc").mkdir()
    (tmp_path / ".tmp-0002-abc" / "model.weights.h5").write_bytes(b"partial")
    assert manager.latest().name == "epoch-0001"
    # A stale `latest` pointer to a missing directory falls back to the newest complete one.
    (tmp_path / "latest").write_text("epoch-0009\n")
    assert manager.latest().name == "epoch-0001"


def test_restore_rejects_mismatched_optimizer_state(tmp_path):
    model = small_model()
    manager = CheckpointManager(tmp_path)
    path = manager.save(1, model, [], {"phase": 1, "stage": "pretrain"})
    opts = make_phase_optimizers(model.layer_groups(), 1, LearningRates(), 2, 3)
    opts.build()
    with pytest.raises(ValueError, match="different config"):
        CheckpointManager.restore(path, model, opts.variables())
