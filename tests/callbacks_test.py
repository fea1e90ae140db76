import keras
import numpy as np
import pytest
import tensorflow as tf

from pipnet_tf import phases
from pipnet_tf.callbacks import NaNGuard, PhaseSchedule
from tests.model_test import small_model


def test_phase_schedule_can_start_the_background_loss_with_phase_two():
    model = small_model()
    schedule = PhaseSchedule(phases.make_plan(2, 2, 1), background_pretrain="off")
    schedule.set_model(model)
    model.set_background_loss_weight(8.0)
    schedule.on_epoch_begin(1)
    assert float(model.background_loss_weight) == 0.0
    schedule.on_epoch_begin(2)
    assert float(model.background_loss_weight) == 8.0
    with pytest.raises(ValueError, match="--background_loss_pretrain"):
        PhaseSchedule(phases.make_plan(2, 2, 1), background_pretrain="no")


def test_nan_guard_names_the_loss_term_and_position():
    guard = NaNGuard()
    guard.on_epoch_begin(4)
    guard.on_train_batch_end(0, {"loss": 1.0, "L_A": 0.5})
    with pytest.raises(FloatingPointError, match=r"L_T became nan at epoch 5, batch 3"):
        guard.on_train_batch_end(2, {"loss": 1.0, "L_T": float("nan")})


def test_nan_input_stops_fit_before_a_checkpoint():
    model = small_model()
    opts_groups = [(keras.optimizers.SGD(0.1), model.trainable_variables)]
    model.compile(opts_groups, loss_weights=(1.0, 1.0, 1.0))
    x = np.full((4, 32, 32, 3), np.nan, "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, x, np.zeros(4, "int32"))).batch(2)
    saved = []
    marker = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, l: saved.append(e))
    with pytest.raises(FloatingPointError, match="became nan"):
        model.fit(ds, epochs=1, verbose=0, callbacks=[NaNGuard(), marker])
    assert saved == []


def test_phase_schedule_sets_weights_and_extra_shrink():
    model = small_model()
    plan = phases.make_plan(2, 2, 1)  # pretrain 0-1, finetune 2-3
    schedule = PhaseSchedule(plan)
    schedule.set_model(model)
    model.set_background_loss_weight(8.0)
    schedule.on_epoch_begin(0)
    np.testing.assert_allclose(model.loss_weights.numpy(), [0.5, 5.0, 0.0])
    assert float(model.background_loss_weight) == 4.0  # λ_B ramps with λ_A
    schedule.on_epoch_begin(1)
    np.testing.assert_allclose(model.loss_weights.numpy(), [1.0, 5.0, 0.0])
    assert float(model.background_loss_weight) == 8.0
    before = model.classifier.kernel.numpy()
    schedule.on_epoch_begin(2)  # phase-2 epoch 1: no extra shrink
    np.testing.assert_array_equal(model.classifier.kernel.numpy(), before)
    np.testing.assert_allclose(model.loss_weights.numpy(), [0.0, 0.0, 2.0])
    assert float(model.background_loss_weight) == 8.0
    schedule.on_epoch_begin(3)  # last phase-2 epoch: W <- max(W - 1e-3, 0)
    np.testing.assert_allclose(model.classifier.kernel.numpy(), np.maximum(before - 1e-3, 0), atol=1e-7)
