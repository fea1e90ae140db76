"""Keras layers with the outputs of `Dense`/`DepthwiseConv2D`, written the way TensorFlow's
CPU kernels run fast (BUILD_NOTES "Real backbones" has the measurements).

- `PointwiseDense`: `Dense` over the last axis as one 2-D `MatMul` + `BiasAdd` (+ exact
  GELU). In inference Grappler's oneDNN remapper fuses the three into one `_FusedMatMul`
  (GELU as a float32 post-op); Keras's `Dense` on a 4-D input leaves a broadcasting
  MatMul, an `AddV2` and an elementwise GELU, which Eigen runs slowly on bfloat16. In
  training (where GELU's input must be kept for the gradient) the GELU and its gradient
  are each one XLA-compiled float32 kernel instead of ~15 separate Eigen ops.
- `DepthwiseConv2DFast`: the stride-1 "same" `DepthwiseConv2D` with, in training, a
  custom filter gradient: oneDNN's depthwise backward-weights kernel for bfloat16 runs at ~5 GFLOP/s
  here; the same sums computed as a forward depthwise conv (batch folded into channels,
  output-gradient as the filter) run 3–4x faster.
- `LayerNormalizationFast`: `LayerNormalization` over the last axis whose inference forward
  is one small XLA-compiled kernel (bfloat16/float32 in and out, float32 inside) instead of
  ~10 separate Eigen ops and casts.

XLA-compiled pieces would tie an exported graph to XLA (TF Serving and TFLite run the
plain ops): inside `portable_graphs()` every layer here traces plain TensorFlow ops.

Where the fast paths run is each layer's `fast_cpu_ops` argument (part of its config, so
of every backbone and `.keras` file): "on" always, "off" never (the stock Keras layer's
ops: cuDNN kernels and TF's own gradients on a GPU), "auto" (default) when no GPU is
visible, decided when the layer is traced, so a model trained on a CPU and loaded on a
GPU machine runs stock ops there. Exported graphs (`portable_graphs`) take the
plain-op forms in any mode: they are the shapes TFLite runs fast.
"""
from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf

_LIMITS = threading.local()
FAST_CPU_OPS_MODES = ("auto", "on", "off")
_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def _portable() -> bool:
    return bool(getattr(_LIMITS, "portable", False))


def check_fast_cpu_ops(mode: str) -> str:
    """`mode` if it is one of `FAST_CPU_OPS_MODES`; ValueError quoting it otherwise."""
    if mode not in FAST_CPU_OPS_MODES:
        raise ValueError(f"Unknown --fast_cpu_ops={mode!r}; use auto, on or off.")
    return mode


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU (without initialising the runtime)."""
    return bool(tf.config.list_physical_devices("GPU"))


def use_fast_cpu_ops(mode: str) -> bool:
    """Whether `mode` ("auto" | "on" | "off") selects the CPU fast paths here: "auto"
    means yes exactly when no GPU is visible."""
    check_fast_cpu_ops(mode)
    return mode == "on" or (mode == "auto" and not gpu_visible())


class _FastCpuOpsMixin:
    """The `fast_cpu_ops` constructor argument and config entry of the layers below."""

    def _init_fast_cpu_ops(self, fast_cpu_ops: str) -> None:
        self.fast_cpu_ops = check_fast_cpu_ops(fast_cpu_ops)

    @property
    def _fast(self) -> bool:
        return use_fast_cpu_ops(self.fast_cpu_ops)

    def get_config(self) -> dict:
        config = super().get_config()
        config["fast_cpu_ops"] = self.fast_cpu_ops
        return config


@contextlib.contextmanager
def portable_graphs():
    """Inside, the layers of this module trace only plain TensorFlow ops (no XLA-compiled
    functions): for graphs that leave this process (SavedModel, TFLite)."""
    previous = _portable()
    _LIMITS.portable = True
    try:
        yield
    finally:
        _LIMITS.portable = previous


@tf.function(jit_compile=True)
def _gelu_forward(z):
    z32 = tf.cast(z, tf.float32)
    return tf.cast(0.5 * z32 * (1.0 + tf.math.erf(z32 * _SQRT_HALF)), z.dtype)


@tf.function(jit_compile=True)
def _gelu_backward(z, upstream):
    z32 = tf.cast(z, tf.float32)
    slope = (0.5 * (1.0 + tf.math.erf(z32 * _SQRT_HALF))
             + z32 * _INV_SQRT_2PI * tf.exp(-0.5 * z32 * z32))
    return tf.cast(slope * tf.cast(upstream, tf.float32), z.dtype)


@tf.custom_gradient
def exact_gelu(z):
    """Exact (erf) GELU, computed in float32 whatever the dtype of `z` (any shape)."""
    return _gelu_forward(z), lambda upstream: _gelu_backward(z, upstream)


@keras.saving.register_keras_serializable(package="pipnet_tf")
class PointwiseDense(_FastCpuOpsMixin, keras.layers.Dense):
    """`Dense` over the last axis (same weights, same outputs), fast on CPU.

    `fast_cpu_ops` ("auto" | "on" | "off"): where the fast form runs (module docstring);
    otherwise this is Keras's `Dense`.
    Input shape: `(batch, ..., C_in)`. Output shape: `(batch, ..., units)`.
    """

    def __init__(self, units, fast_cpu_ops: str = "auto", **kwargs):
        super().__init__(units, **kwargs)
        self._init_fast_cpu_ops(fast_cpu_ops)

    def call(self, inputs, training=None):
        if not (self._fast or _portable()):
            return super().call(inputs, training=training)
        channels = self.kernel.shape[0]
        flat = tf.reshape(inputs, [-1, channels])
        outputs = tf.matmul(flat, keras.ops.cast(self.kernel, flat.dtype))
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, keras.ops.cast(self.bias, flat.dtype))
        if self._exact_gelu:
            # Inference: tf.nn.gelu right after BiasAdd is the pattern the remapper fuses.
            fused = not training or _portable()
            outputs = tf.nn.gelu(outputs, approximate=False) if fused else exact_gelu(outputs)
        else:  # Keras's activation is never None (`linear` by default)
            outputs = self.activation(outputs)
        inner = inputs.shape[1:-1]
        if all(d is not None for d in inner):  # a constant shape (one RESHAPE in TFLite)
            return tf.reshape(outputs, [-1, *inner, self.units])
        return tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [self.units]], axis=0))

    @property
    def _exact_gelu(self) -> bool:
        # keras.activations.gelu defaults to the exact (erf) form.
        return getattr(self.activation, "__name__", "") == "gelu"


def _pad_same(x, kernel_size: int):
    """The zero padding of a stride-1 "same" k x k conv: (B, H, W, C) → (B, H+k−1, W+k−1, C)."""
    pad = (kernel_size - 1) // 2
    rest = kernel_size - 1 - pad
    return tf.pad(x, [[0, 0], [pad, rest], [pad, rest], [0, 0]])


def _depthwise_filter_gradient(x, upstream, kernel_size: int):
    """d loss / d kernel of a stride-1 "same" depthwise conv.

    grad[i, j, c] = sum_{b, h, w} x_pad[b, h + i, w + j, c] · upstream[b, h, w, c], computed
    as one depthwise conv of x_pad (batch folded into channels: (1, H+k−1, W+k−1, B·C))
    with `upstream` as its (H, W, B·C, 1) filter, summed over the batch in float32.

    Args: x, upstream: (B, H, W, C). Returns: (k, k, C, 1) in x's dtype.
    """
    padded = _pad_same(x, kernel_size)
    shape = tf.shape(x)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    images = tf.reshape(tf.transpose(padded, [1, 2, 0, 3]),
                        [1, height + kernel_size - 1, width + kernel_size - 1, batch * channels])
    filters = tf.reshape(tf.transpose(upstream, [1, 2, 0, 3]), [height, width, batch * channels, 1])
    sums = tf.nn.depthwise_conv2d(images, filters, [1, 1, 1, 1], "VALID")  # (1, k, k, B·C)
    sums = tf.reshape(sums, [kernel_size, kernel_size, batch, channels])
    grad = tf.reduce_sum(tf.cast(sums, tf.float32), axis=2)
    return tf.cast(grad[..., None], x.dtype)


@tf.custom_gradient
def depthwise_conv_same(x, kernel):
    """Stride-1 "same" depthwise conv. x: (B, H, W, C), kernel: (k, k, C, 1) → (B, H, W, C)."""
    outputs = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")

    def grad(upstream):
        grad_x = tf.nn.depthwise_conv2d_backprop_input(
            tf.shape(x), kernel, upstream, [1, 1, 1, 1], "SAME")
        return grad_x, _depthwise_filter_gradient(x, upstream, int(kernel.shape[0]))

    return outputs, grad


@contextlib.contextmanager
def depthwise_tap_limit(max_taps: int):
    """Inside, `DepthwiseConv2DFast` traces inference graphs whose depthwise convs have at
    most `max_taps` taps: the k x k kernel is cut into bands of rows, each applied to the
    padded input and summed (same outputs up to float rounding). For TFLite int8: XNNPACK
    runs int8 depthwise convs of ≤ 25 taps, while a 7x7 one (49) falls back to a TFLite
    kernel about 20x slower (BUILD_NOTES, Export)."""
    previous = getattr(_LIMITS, "max_taps", None)
    _LIMITS.max_taps = int(max_taps)
    try:
        yield
    finally:
        _LIMITS.max_taps = previous


def _banded_depthwise_same(x, kernel, rows_per_band: int):
    """Stride-1 "same" depthwise conv as a sum over bands of kernel rows (any shapes as
    `depthwise_conv_same`)."""
    k = int(kernel.shape[0])
    padded = _pad_same(x, k)
    bands = []
    for start in range(0, k, rows_per_band):
        stop = min(start + rows_per_band, k)
        rows = padded[:, start:(stop - k) or None]  # H + (stop − start) − 1 rows
        bands.append(tf.nn.depthwise_conv2d(rows, kernel[start:stop], [1, 1, 1, 1], "VALID"))
    # ADD_N is float in TFLite: int8 bands are summed in float, then requantised once
    # (pairwise int8 ADDs requantise every partial sum: 4x the error at the same speed).
    return tf.add_n(bands)


@keras.saving.register_keras_serializable(package="pipnet_tf")
class DepthwiseConv2DFast(_FastCpuOpsMixin, keras.layers.DepthwiseConv2D):
    """`DepthwiseConv2D` (same weights, same outputs) with a fast filter gradient.

    Only odd square kernels, stride 1, "same" padding, multiplier 1, no dilation.
    `fast_cpu_ops` ("auto" | "on" | "off"): where the custom gradient runs (module
    docstring); otherwise this is Keras's `DepthwiseConv2D` with TF's own gradient.
    Input shape: `(batch, H, W, C)`. Output shape: the same.
    """

    def __init__(self, kernel_size, fast_cpu_ops: str = "auto", **kwargs):
        super().__init__(kernel_size, **kwargs)
        self._init_fast_cpu_ops(fast_cpu_ops)
        k = self.kernel_size
        if (k[0] != k[1] or k[0] % 2 == 0 or tuple(self.strides) != (1, 1)
                or self.padding != "same" or self.depth_multiplier != 1
                or tuple(self.dilation_rate) != (1, 1) or self.data_format != "channels_last"):
            raise ValueError(
                "DepthwiseConv2DFast supports odd square kernels with stride 1, 'same' "
                f"padding, depth_multiplier 1, no dilation, channels_last; got {self.get_config()}")

    def call(self, inputs, training=None):
        kernel = keras.ops.cast(self.kernel, inputs.dtype)
        max_taps = getattr(_LIMITS, "max_taps", None)
        k = int(kernel.shape[0])
        if not (self._fast or _portable() or max_taps):
            return super().call(inputs)
        if training:
            outputs = depthwise_conv_same(inputs, kernel)
        elif max_taps and k * k > max_taps:
            outputs = _banded_depthwise_same(inputs, kernel, max(1, max_taps // k))
        else:  # inference graphs (SavedModel, TFLite) hold the plain op, TF's own gradient
            outputs = tf.nn.depthwise_conv2d(inputs, kernel, [1, 1, 1, 1], "SAME")
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, keras.ops.cast(self.bias, outputs.dtype))
        return self.activation(outputs)


def _layer_norm_last_axis(x, gamma, beta, epsilon):
    """(x − mean) / sqrt(var + ε) · γ + β over the last axis, in float32; x's dtype out.

    Written for TFLite too: SUB/MUL instead of SQUARED_DIFFERENCE (which has no XNNPACK
    int8 kernel: TFLite's reference one took a quarter of the int8 ConvNeXt) and one
    full-size multiply-add after the normalisation.
    """
    x32 = tf.cast(x, tf.float32)
    centered = x32 - tf.reduce_mean(x32, axis=-1, keepdims=True)
    variance = tf.reduce_mean(centered * centered, axis=-1, keepdims=True)
    normalized = centered * tf.math.rsqrt(variance + epsilon)
    return tf.cast(normalized * gamma + beta, x.dtype)


# The same function as one XLA kernel (reads x once for the moments, once for the output).
_layer_norm_last_axis_xla = tf.function(_layer_norm_last_axis, jit_compile=True)


@keras.saving.register_keras_serializable(package="pipnet_tf")
class LayerNormalizationFast(_FastCpuOpsMixin, keras.layers.LayerNormalization):
    """`LayerNormalization` (same weights, same outputs up to float rounding) whose
    inference forward over the last axis is one XLA-compiled kernel.

    Training uses Keras's own ops; `portable_graphs()` the same formula as plain ops;
    `fast_cpu_ops` ("auto" | "on" | "off"): where the XLA kernel runs (module
    docstring); otherwise this is Keras's `LayerNormalization`.
    Input shape: `(batch, ..., C)`. Output shape: the same.
    """

    def __init__(self, fast_cpu_ops: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self._init_fast_cpu_ops(fast_cpu_ops)

    def call(self, inputs, training=None):
        last_axis = self.axis in (-1, [-1], len(inputs.shape) - 1, [len(inputs.shape) - 1])
        if not (self._fast or _portable()):
            return super().call(inputs)
        if training or not last_axis or self.rms_scaling or not (self.center and self.scale):
            return super().call(inputs)
        gamma, beta = tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32)
        epsilon = tf.constant(self.epsilon, tf.float32)
        norm = _layer_norm_last_axis if _portable() else _layer_norm_last_axis_xla
        outputs = norm(inputs, gamma, beta, epsilon)
        # As Keras: the compute dtype out (Keras's LayerNormalization does not autocast).
        return tf.cast(outputs, self.compute_dtype)

