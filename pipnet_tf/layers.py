"""PIP-Net's building blocks as serialisable Keras layers.

Shapes (channels-last): feature maps (batch, H, W, D); presence (batch, D);
scores (batch, K).
"""
from __future__ import annotations

import keras
from keras import ops

PACKAGE = "pipnet_tf"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ShrinkNonNegative(keras.constraints.Constraint):
    """Constraint `w <- max(w - shrink, 0)` applied after every optimiser step.

    With `shrink=1e-3` this is the reference code's clamping of the scoring
    sheet (an L1-like shrinkage of every weight, SPEC §3); with `shrink=0` it is
    a plain non-negativity constraint (used for the bias).
    """

    def __init__(self, shrink: float = 1e-3):
        if shrink < 0:
            raise ValueError(f"`shrink` must be >= 0, received: shrink={shrink}")
        self.shrink = float(shrink)

    def __call__(self, w):
        return ops.maximum(w - ops.cast(self.shrink, w.dtype), ops.zeros_like(w))

    def get_config(self) -> dict:
        return {"shrink": self.shrink}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrototypeActivation(keras.layers.Layer):
    """Softmax over the D prototype channels at every latent location.

    Input shape: `(batch, H, W, D)` logits. Output shape: `(batch, H, W, D)`,
    non-negative and summing to 1 over the last axis.
    """

    def call(self, inputs):
        return ops.softmax(inputs, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrototypePooling(keras.layers.Layer):
    """Prototype presence scores: global max over the latent grid.

    Input shape: `(batch, H, W, D)`. Output shape: `(batch, D)`, in [0, 1] when the
    input is a `PrototypeActivation` output.
    """

    def call(self, inputs):
        return ops.max(inputs, axis=(1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package=PACKAGE)
class NonNegativeLinear(keras.layers.Layer):
    """PIP-Net's scoring sheet: `scores = presence @ relu(W) (+ bias)`.

    Args:
        units: number of classes K.
        use_bias: add a non-negative bias per class (reference `--bias`, off by default).
        shrink: amount subtracted from every weight after each optimiser step that
            updates W (then clamped at 0); 1e-3 in the reference. 0 disables it.
        multiplier: the normalisation exponent m of the loss `log1p(scores**m)`;
            kept as a non-trainable weight, as the reference never trains it.
        kernel_mean, kernel_stddev: W ~ N(mean, stddev) at initialisation.

    Input shape: `(batch, D)`. Output shape: `(batch, K)`. The kernel W has shape `(D, K)`.
    """

    def __init__(
        self,
        units: int,
        use_bias: bool = False,
        shrink: float = 1e-3,
        multiplier: float = 2.0,
        kernel_mean: float = 1.0,
        kernel_stddev: float = 0.1,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(units) <= 0:
            raise ValueError(f"`units` must be a positive integer, received: units={units}")
        if multiplier < 1.0:
            raise ValueError(f"`multiplier` must be >= 1, received: multiplier={multiplier}")
        self.units = int(units)
        self.use_bias = bool(use_bias)
        self.shrink = float(shrink)
        self.multiplier_value = float(multiplier)
        self.kernel_mean = float(kernel_mean)
        self.kernel_stddev = float(kernel_stddev)
        self.seed = seed

    def build(self, input_shape):
        num_prototypes = input_shape[-1]
        self.kernel = self.add_weight(
            name="kernel",
            shape=(num_prototypes, self.units),
            initializer=keras.initializers.RandomNormal(
                mean=self.kernel_mean, stddev=self.kernel_stddev, seed=self.seed
            ),
            constraint=ShrinkNonNegative(self.shrink),
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer="zeros",
                constraint=ShrinkNonNegative(0.0),
            )
        self.multiplier = self.add_weight(
            name="multiplier",
            shape=(),
            initializer=keras.initializers.Constant(self.multiplier_value),
            trainable=False,
        )

    def call(self, presence):
        scores = ops.matmul(presence, ops.relu(ops.cast(self.kernel, presence.dtype)))
        if self.bias is not None:
            scores = scores + ops.cast(self.bias, presence.dtype)
        return scores

    def shrink_weights(self, amount: float | None = None) -> None:
        """One extra `W <- max(W - amount, 0)` (reference: every 30th and the last epoch)."""
        amount = self.shrink if amount is None else amount
        self.kernel.assign(ops.maximum(self.kernel - amount, 0.0))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            units=self.units,
            use_bias=self.use_bias,
            shrink=self.shrink,
            multiplier=self.multiplier_value,
            kernel_mean=self.kernel_mean,
            kernel_stddev=self.kernel_stddev,
            seed=self.seed,
        )
        return config
