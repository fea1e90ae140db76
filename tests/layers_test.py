import keras
import numpy as np
import pytest

from pipnet_tf.layers import (NonNegativeLinear, PrototypeActivation, PrototypePooling,
                              ShrinkNonNegative)
from tests.test_case import run_layer_test


def test_prototype_activation_is_softmax_over_channels(tmp_path):
    y = run_layer_test(PrototypeActivation, (2, 4, 5, 8), tmp_path, (2, 4, 5, 8))
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-6)
    assert (y >= 0).all()
    x = np.random.default_rng(0).random((2, 4, 5, 8)).astype("float32")
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(PrototypeActivation()(x)), e / e.sum(-1, keepdims=True), atol=1e-6)


def test_prototype_pooling_is_global_max(tmp_path):
    y = run_layer_test(PrototypePooling, (2, 4, 5, 8), tmp_path, (2, 8))
    x = np.random.default_rng(0).random((2, 4, 5, 8)).astype("float32")
    np.testing.assert_array_equal(np.asarray(PrototypePooling()(x)), x.max(axis=(1, 2)))
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("use_bias", [False, True])
def test_non_negative_linear_scores(tmp_path, use_bias):
    run_layer_test(lambda: NonNegativeLinear(3, use_bias=use_bias, seed=1), (2, 8), tmp_path, (2, 3))
    layer = NonNegativeLinear(3, use_bias=use_bias)
    layer.build((None, 8))
    w = np.random.default_rng(1).normal(size=(8, 3)).astype("float32")  # has negatives
    layer.kernel.assign(w)
    if use_bias:
        layer.bias.assign(np.array([0.5, 0.0, 1.0], "float32"))
    p = np.random.default_rng(2).random((4, 8)).astype("float32")
    expected = p @ np.maximum(w, 0) + (np.array([0.5, 0, 1]) if use_bias else 0)
    np.testing.assert_allclose(np.asarray(layer(p)), expected, rtol=1e-5)
    assert float(layer.multiplier.numpy()) == 2.0 and not layer.multiplier.trainable


def test_weight_init_is_normal_1_0p1():
    layer = NonNegativeLinear(50, seed=3)
    layer.build((None, 400))
    w = layer.kernel.numpy()
    assert abs(w.mean() - 1.0) < 0.01 and abs(w.std() - 0.1) < 0.01


def test_shrink_constraint_and_optimizer_step():
    np.testing.assert_allclose(
        np.asarray(ShrinkNonNegative(1e-3)(np.array([0.5, 1e-3, 5e-4, -1.0], "float32"))),
        [0.499, 0.0, 0.0, 0.0], atol=1e-7)
    layer = NonNegativeLinear(2, use_bias=True)
    layer.build((None, 3))
    layer.kernel.assign(np.array([[1.0, 0.0005], [0.2, 0.3], [2.0, 1e-3]], "float32"))
    layer.bias.assign(np.array([-0.2, 0.1], "float32"))
    before = layer.kernel.numpy().copy()
    opt = keras.optimizers.SGD(learning_rate=0.0)  # a step that changes nothing ...
    opt.apply([np.zeros((3, 2), "float32"), np.zeros(2, "float32")], [layer.kernel, layer.bias])
    # ... still applies W <- max(W - 1e-3, 0) and bias <- max(bias, 0).
    np.testing.assert_allclose(layer.kernel.numpy(), np.maximum(before - 1e-3, 0), atol=1e-7)
    np.testing.assert_allclose(layer.bias.numpy(), [0.0, 0.1], atol=1e-7)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="units"):
        NonNegativeLinear(0)
    with pytest.raises(ValueError, match="shrink"):
        ShrinkNonNegative(-1.0)
