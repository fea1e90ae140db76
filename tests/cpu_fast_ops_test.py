"""`cpu_fast_ops`: the fast layers compute what Keras's `Dense`/`Activation("gelu")`,
`DepthwiseConv2D` and `LayerNormalization` compute, forward and backward, checked against
Keras, tf's autodiff and NumPy reimplementations (depthwise filter gradient, LayerNorm)."""
from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import erf

from pipnet_tf.backbones.cpu_fast_ops import (
    DepthwiseConv2DFast,
    LayerNormalizationFast,
    PointwiseDense,
    depthwise_conv_same,
    depthwise_tap_limit,
    exact_gelu,
    portable_graphs,
)
from tests.test_case import run_layer_test


def _random(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype("float32")


def test_exact_gelu_and_gradient_match_numpy():
    z = np.linspace(-6, 6, 97).astype("float32")
    upstream = _random(z.shape, seed=1)
    x = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = exact_gelu(x)
    grad = tape.gradient(y, x, output_gradients=tf.constant(upstream))
    phi = 0.5 * (1 + erf(z / np.sqrt(2)))
    np.testing.assert_allclose(y, z * phi, atol=1e-6)
    slope = phi + z * np.exp(-z**2 / 2) / np.sqrt(2 * np.pi)
    np.testing.assert_allclose(grad, slope * upstream, atol=1e-5)


def test_exact_gelu_bfloat16_within_one_rounding():
    z = _random((64, 32), scale=3)
    y = exact_gelu(tf.constant(z, tf.bfloat16))
    assert y.dtype == tf.bfloat16
    zb = tf.cast(tf.constant(z, tf.bfloat16), tf.float32).numpy().astype("float64")
    expected = zb * 0.5 * (1 + erf(zb / np.sqrt(2)))
    # Computed in float32 and rounded once to bfloat16 (8 significant bits).
    np.testing.assert_allclose(tf.cast(y, tf.float32), expected, rtol=2**-8, atol=2e-6)


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("training", [False, True])
def test_pointwise_dense_equals_dense(activation, training):
    x = _random((2, 5, 4, 6))
    dense = keras.layers.Dense(8, activation=activation)
    fast = PointwiseDense(8, activation=activation)
    dense.build(x.shape)
    fast.build(x.shape)
    fast.set_weights([w + 0.1 * _random(w.shape, seed=2) for w in dense.get_weights()])
    dense.set_weights(fast.get_weights())
    inputs = tf.constant(x)
    grads = []
    for layer in (dense, fast):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = layer(inputs, training=training)
            loss = tf.reduce_sum(y * _random(y.shape, seed=3))
        grads.append(tape.gradient(loss, [inputs, *layer.trainable_weights]))
        if layer is dense:
            expected = y
    np.testing.assert_allclose(y, expected, atol=1e-5)
    assert y.shape == (2, 5, 4, 8)
    for fast_grad, dense_grad in zip(grads[1], grads[0]):
        np.testing.assert_allclose(fast_grad, dense_grad, atol=1e-4)


def test_pointwise_dense_dynamic_spatial_shape():
    layer = PointwiseDense(3)
    inputs = keras.Input((None, None, 5))
    model = keras.Model(inputs, layer(inputs))
    x = _random((2, 3, 7, 5))
    expected = x @ layer.kernel.numpy() + layer.bias.numpy()
    np.testing.assert_allclose(model(x), expected, atol=1e-5)


def test_pointwise_dense_serialises(tmp_path):
    run_layer_test(lambda: PointwiseDense(4, activation="gelu"), (2, 3, 3, 5), tmp_path,
                   expected_output_shape=(2, 3, 3, 4))


def _numpy_depthwise_filter_gradient(x, upstream, k):
    pad = (k - 1) // 2
    padded = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    _, height, width, _ = x.shape
    grad = np.zeros((k, k, x.shape[-1], 1))
    for i in range(k):
        for j in range(k):
            window = padded[:, i:i + height, j:j + width, :]
            grad[i, j, :, 0] = (window * upstream).sum(axis=(0, 1, 2))
    return grad


@pytest.mark.parametrize("kernel_size", [3, 7])
def test_depthwise_gradients_match_numpy_and_autodiff(kernel_size):
    x = _random((3, 9, 6, 4))
    kernel = _random((kernel_size, kernel_size, 4, 1), seed=1, scale=0.2)
    upstream = _random((3, 9, 6, 4), seed=2)
    xs, ks = tf.constant(x), tf.constant(kernel)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([xs, ks])
        fast = depthwise_conv_same(xs, ks)
        reference = tf.nn.depthwise_conv2d(xs, ks, [1, 1, 1, 1], "SAME")
    np.testing.assert_allclose(fast, reference, atol=1e-6)
    fast_grads = tape.gradient(fast, [xs, ks], output_gradients=tf.constant(upstream))
    reference_grads = tape.gradient(reference, [xs, ks], output_gradients=tf.constant(upstream))
    np.testing.assert_allclose(fast_grads[0], reference_grads[0], atol=1e-5)
    np.testing.assert_allclose(fast_grads[1], reference_grads[1], atol=1e-4)
    np.testing.assert_allclose(
        fast_grads[1], _numpy_depthwise_filter_gradient(x, upstream, kernel_size), atol=1e-4)


def test_depthwise_filter_gradient_bfloat16_close_to_float32():
    x, upstream = _random((4, 14, 14, 8)), _random((4, 14, 14, 8), seed=1)
    kernel = _random((7, 7, 8, 1), seed=2, scale=0.1)
    grads = {}
    for dtype in (tf.float32, tf.bfloat16):
        xs, ks = tf.constant(x, dtype), tf.constant(kernel, dtype)
        with tf.GradientTape() as tape:
            tape.watch(ks)
            y = depthwise_conv_same(xs, ks)
        grads[dtype] = tf.cast(tape.gradient(y, ks, output_gradients=tf.constant(upstream, dtype)),
                               tf.float32).numpy()
    scale = np.abs(grads[tf.float32]).max()
    assert np.abs(grads[tf.bfloat16] - grads[tf.float32]).max() < 2e-2 * scale


def test_depthwise_layer_equals_keras_and_serialises(tmp_path):
    x = _random((2, 8, 8, 3))
    keras_layer = keras.layers.DepthwiseConv2D(7, padding="same")
    fast = DepthwiseConv2DFast(7, padding="same")
    keras_layer.build(x.shape)
    fast.build(x.shape)
    fast.set_weights([w + 0.1 for w in keras_layer.get_weights()])
    keras_layer.set_weights(fast.get_weights())
    np.testing.assert_allclose(fast(x), keras_layer(x), atol=1e-5)
    grads = []
    for layer in (keras_layer, fast):  # training=True: the custom filter gradient
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x, training=True) * _random(x.shape, seed=4))
        grads.append(tape.gradient(loss, layer.trainable_weights))
    for fast_grad, keras_grad in zip(grads[1], grads[0]):
        np.testing.assert_allclose(fast_grad, keras_grad, atol=1e-4)
    run_layer_test(lambda: DepthwiseConv2DFast(3, padding="same"), (2, 5, 5, 3), tmp_path,
                   expected_output_shape=(2, 5, 5, 3))


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2, padding="same"),
                                    dict(kernel_size=3, padding="valid"),
                                    dict(kernel_size=3, padding="same", strides=2),
                                    dict(kernel_size=3, padding="same", depth_multiplier=2)])
def test_depthwise_layer_rejects_unsupported_configs(kwargs):
    with pytest.raises(ValueError, match="DepthwiseConv2DFast supports"):
        DepthwiseConv2DFast(**kwargs)


def test_depthwise_tap_limit_bands_give_the_same_outputs():
    x = _random((2, 9, 7, 4))
    layer = DepthwiseConv2DFast(7, padding="same")
    layer.build(x.shape)
    layer.set_weights([_random(w.shape, seed=i + 1) for i, w in enumerate(layer.get_weights())])
    expected = layer(x)
    with depthwise_tap_limit(25):  # 7x7 → rows 3 + 3 + 1
        banded = layer(x, training=False)
        graph = tf.function(lambda t: layer(t, training=False)).get_concrete_function(
            tf.TensorSpec(x.shape)).graph
    np.testing.assert_allclose(banded, expected, atol=1e-5)
    filters = [op.inputs[1].shape.as_list() for op in graph.get_operations()
               if op.type == "DepthwiseConv2dNative"]
    assert sorted(f[0] * f[1] for f in filters) == [7, 21, 21]
    # Outside the context (and in training inside it) the single 7x7 conv is used.
    np.testing.assert_allclose(layer(x), expected, atol=0)


def _int8_tflite(model, context, calibration_images: int = 8):
    """`model` (one (1, H, W, C) input) converted to int8 TFLite inside `context`, its
    interpreter allocated, and the relative max error of its output on a random input."""
    from ai_edge_litert.interpreter import Interpreter

    shape = tuple(model.inputs[0].shape)
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(calibration_images):
            yield [rng.standard_normal(shape).astype("float32")]

    with context:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        content = converter.convert()
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    x = rng.standard_normal(shape).astype("float32")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    expected = model(x).numpy()
    return interpreter, np.abs(out - expected).max() / np.abs(expected).max()


def test_int8_tflite_depthwise_convs_have_at_most_25_taps():
    inputs = keras.Input((12, 12, 8), batch_size=1)
    model = keras.Model(inputs, DepthwiseConv2DFast(7, padding="same")(inputs))
    interpreter, error = _int8_tflite(model, depthwise_tap_limit(25), calibration_images=4)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    depthwise = [op for op in interpreter._get_ops_details() if op["op_name"] == "DEPTHWISE_CONV_2D"]
    assert len(depthwise) == 3
    for op in depthwise:
        weights = tensors[op["inputs"][1]]
        assert weights["dtype"] == np.int8
        assert weights["shape"][1] * weights["shape"][2] <= 25
    assert error < 0.05


def _numpy_layer_norm(x, gamma, beta, epsilon=1e-6):
    x = x.astype("float64")
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def _layer_norm_pair(shape, dtype="float32"):
    keras_layer = keras.layers.LayerNormalization(epsilon=1e-6, dtype=dtype)
    fast = LayerNormalizationFast(epsilon=1e-6, dtype=dtype)
    keras_layer.build(shape)
    fast.build(shape)
    weights = [1 + 0.5 * _random(shape[-1:], seed=5), 0.3 * _random(shape[-1:], seed=6)]
    keras_layer.set_weights(weights)
    fast.set_weights(weights)
    return keras_layer, fast, weights


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_layer_norm_fast_equals_keras_and_numpy(training, portable):
    x = _random((2, 5, 4, 24), scale=3) + 2.0  # a non-zero mean per token
    keras_layer, fast, (gamma, beta) = _layer_norm_pair(x.shape)
    context = portable_graphs() if portable else contextlib.nullcontext()
    with context:
        y = fast(x, training=training)
        traced = tf.function(lambda t: fast(t, training=training))(tf.constant(x))
    np.testing.assert_allclose(y, keras_layer(x), atol=1e-5)
    np.testing.assert_allclose(traced, y, atol=1e-6)
    np.testing.assert_allclose(y, _numpy_layer_norm(x, gamma, beta), atol=1e-5)


def test_layer_norm_fast_bfloat16_within_one_rounding():
    x = _random((2, 6, 6, 32), scale=2)
    keras_layer, fast, (gamma, beta) = _layer_norm_pair(x.shape, dtype="mixed_bfloat16")
    y = fast(x, training=False)
    assert y.dtype == "bfloat16"
    # Keras's LayerNormalization does not autocast: the float32 input is normalised in
    # float32 and only the output is rounded to bfloat16.
    expected = _numpy_layer_norm(x, gamma, beta)
    np.testing.assert_allclose(tf.cast(y, tf.float32), expected, rtol=2**-7, atol=1e-2)
    np.testing.assert_allclose(tf.cast(y, tf.float32), tf.cast(keras_layer(x), tf.float32),
                               rtol=2**-7, atol=1e-2)


def test_layer_norm_fast_gradients_are_keras_ones():
    x = _random((2, 3, 3, 8))
    keras_layer, fast, _ = _layer_norm_pair(x.shape)
    grads = []
    for layer in (keras_layer, fast):
        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(layer(inputs, training=True) * _random(x.shape, seed=7))
        grads.append(tape.gradient(loss, [inputs, *layer.trainable_weights]))
    for fast_grad, keras_grad in zip(grads[1], grads[0]):
        np.testing.assert_allclose(fast_grad, keras_grad, atol=1e-5)


def test_layer_norm_fast_serialises(tmp_path):
    run_layer_test(lambda: LayerNormalizationFast(epsilon=1e-6), (2, 3, 3, 5), tmp_path,
                   expected_output_shape=(2, 3, 3, 5))


def _xla_functions(graph) -> int:
    """Functions of a traced graph (and its library) marked for XLA compilation."""
    library = graph.as_graph_def().library.function
    return sum(bool(f.attr["_XlaMustCompile"].b) for f in library)


def test_portable_graphs_trace_no_xla_kernels():
    layer = LayerNormalizationFast(epsilon=1e-6)
    dense = PointwiseDense(8, activation="gelu")

    def xla_functions(training: bool) -> int:  # a fresh trace in the current context
        step = tf.function(lambda t: dense(layer(t, training=training), training=training))
        return _xla_functions(step.get_concrete_function(tf.TensorSpec((2, 4, 4, 8))).graph)

    assert xla_functions(training=False) == 1  # the LayerNorm
    assert xla_functions(training=True) == 1  # the GELU
    with portable_graphs():
        assert xla_functions(training=False) == 0
        assert xla_functions(training=True) == 0


def test_int8_tflite_layer_norm_has_no_squared_difference():
    """SQUARED_DIFFERENCE has no XNNPACK int8 kernel: the portable LayerNorm avoids it."""
    inputs = keras.Input((6, 6, 16), batch_size=1)
    model = keras.Model(inputs, LayerNormalizationFast(epsilon=1e-6)(inputs))
    model.layers[-1].set_weights([1 + 0.5 * _random((16,), seed=1), _random((16,), seed=2)])
    interpreter, error = _int8_tflite(model, portable_graphs())
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "SQUARED_DIFFERENCE" not in ops and "MEAN" in ops
    assert error < 0.1
