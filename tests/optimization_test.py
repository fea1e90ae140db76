"""Learning rates against PyTorch's CosineAnnealingLR / CosineAnnealingWarmRestarts
formulas (SPEC §3)."""
import math

import numpy as np
import pytest

from pipnet_tf.optimization import LearningRates, make_phase_optimizers
from tests.model_test import small_model


def torch_cosine(base, eta_min, t, total):
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / total)) / 2


def lr_of(optimizer):
    return float(np.asarray(optimizer._get_current_learning_rate()))


def test_phase1_groups_share_the_net_clock_schedule():
    model = small_model()
    rates = LearningRates(lr_block=5e-4, lr_net=1e-4)
    opts = make_phase_optimizers(model.layer_groups(), 1, rates, steps_per_epoch=4, epochs=10)
    assert "classifier" not in opts.groups
    for step in (0, 7, 23, 40):
        opts.clock.assign(step)
        eta_min = 5e-4 / 100
        assert lr_of(opts.groups["train"][0]) == pytest.approx(torch_cosine(5e-4, eta_min, step, 40), rel=1e-5)
        assert lr_of(opts.groups["backbone"][0]) == pytest.approx(torch_cosine(1e-4, eta_min, step, 40), rel=1e-5)
        assert lr_of(opts.groups["add_on"][0]) == pytest.approx(torch_cosine(5e-3, eta_min, step, 40), rel=1e-5)


def test_phase2_classifier_warm_restarts_and_net_eta_min():
    model = small_model()
    rates = LearningRates(lr=0.05, lr_block=5e-4, lr_net=5e-4)
    opts = make_phase_optimizers(model.layer_groups(), 2, rates, steps_per_epoch=3, epochs=60)
    classifier = opts.groups["classifier"][0]
    t0 = 10 * 3  # restart every 10 epochs when epochs > 30
    for step in (0, 1, 29, 30, 31, 95):
        classifier.iterations.assign(step)
        expected = 1e-3 + (0.05 - 1e-3) * (1 + math.cos(math.pi * (step % t0) / t0)) / 2
        assert lr_of(classifier) == pytest.approx(expected, rel=1e-5)
    opts.clock.assign(180)
    assert lr_of(opts.groups["train"][0]) == pytest.approx(5e-4 / 100, rel=1e-4)
    short = make_phase_optimizers(model.layer_groups(), 2, rates, steps_per_epoch=3, epochs=20)
    short_cls = short.groups["classifier"][0]
    short_cls.iterations.assign(15)  # T_0 = 5 epochs = 15 steps → restart
    assert lr_of(short_cls) == pytest.approx(0.05, rel=1e-5)


def test_adamw_settings_and_groups_cover_the_model():
    model = small_model(num_prototypes=6)
    opts = make_phase_optimizers(model.layer_groups(), 2, LearningRates(weight_decay=0.1), 2, 5)
    covered = {id(v) for _, vs in opts.groups.values() for v in vs}
    model.set_trainable_groups(["backbone", "freeze", "train", "add_on", "classifier"])
    assert covered == {id(v) for v in model.trainable_variables}
    assert opts.groups["train"][0].weight_decay == pytest.approx(0.1)
    assert opts.groups["classifier"][0].weight_decay == pytest.approx(0.0)
    assert opts.groups["train"][0].epsilon == pytest.approx(1e-8)
    opts.build()
    assert all(o.built for o, vs in opts.groups.values() if vs)


def _numpy_adamw(params, grads_per_step, lr, weight_decay, beta_1=0.9, beta_2=0.999, eps=1e-8):
    """Keras's AdamW (decoupled decay, then the ε-hat Adam step) in float64."""
    params = [p.astype("float64") for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        alpha = lr * math.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        for i, g in enumerate(grads):
            params[i] = params[i] - params[i] * weight_decay * lr
            m[i] += (g - m[i]) * (1 - beta_1)
            v[i] += (g * g - v[i]) * (1 - beta_2)
            params[i] = params[i] - alpha * m[i] / (np.sqrt(v[i]) + eps)
    return params, m, v


def _compiled_apply(optimizer, variables):
    import tensorflow as tf

    return tf.function(lambda grads: optimizer.apply(grads, variables))


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_fused_adamw_is_keras_adamw(weight_decay):
    import keras
    import tensorflow as tf

    from pipnet_tf.optimization import FusedAdamW

    rng = np.random.default_rng(0)
    start = [rng.standard_normal((4, 3)).astype("float32"), rng.standard_normal(5).astype("float32")]
    steps = [[rng.standard_normal(p.shape).astype("float32") for p in start] for _ in range(6)]
    results = {}
    for cls in (keras.optimizers.AdamW, FusedAdamW):
        variables = [keras.Variable(p) for p in start]
        optimizer = cls(learning_rate=3e-2, weight_decay=weight_decay, epsilon=1e-8)
        apply = _compiled_apply(optimizer, variables)
        for grads in steps:
            apply([tf.constant(g) for g in grads])
        results[cls] = ([v.numpy() for v in variables], optimizer)
    expected, m, v = _numpy_adamw(start, steps, 3e-2, weight_decay)
    fused, optimizer = results[FusedAdamW]
    for got, keras_value, want in zip(fused, results[keras.optimizers.AdamW][0], expected):
        np.testing.assert_allclose(got, keras_value, atol=2e-6)
        np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(optimizer._momentums[0].numpy(), m[0], atol=1e-6)
    np.testing.assert_allclose(optimizer._velocities[1].numpy(), v[1], atol=1e-6)
    assert int(optimizer.iterations.numpy()) == len(steps)


def test_fused_adamw_round_trips_its_config():
    import keras

    from pipnet_tf.optimization import FusedAdamW

    optimizer = FusedAdamW(learning_rate=1e-3, weight_decay=0.1, epsilon=1e-8, name="net")
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, FusedAdamW)
    assert restored.get_config() == optimizer.get_config()
