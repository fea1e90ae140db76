"""ConvNeXt-Tiny backbones with a 26x26 or 13x13 latent grid at 224 px (SPEC §1).

`keras.applications.ConvNeXtTiny` rebuilt layer by layer, with the same layer names (so
its weights load by name, `weights.copy_weights_by_name`) and three changes:

- the 2x2 downsamplers whose input has more than 100 (`convnext_tiny_26`) or 300
  (`convnext_tiny_13`) channels get stride 1 (the reference's rule), so at 224 the
  grid is 56 → 28 → 27 → 26 (resp. 56 → 28 → 14 → 13);
- the 7x7 depthwise convs are `DepthwiseConv2D` instead of Keras's `Conv2D(groups=C)`,
  which TensorFlow runs through a very slow grouped-conv path on CPU (same outputs), and
  the depthwise convs and pointwise MLPs use `cpu_fast_ops`' layers (same weights and
  outputs, fused/faster kernels, GELU folded into the first pointwise layer);
- there is no final LayerNorm, pooling or head: the output is the raw stage-4 residual
  stream `(batch, H, W, 768)`, as torchvision's `features` in the reference.

As in torchvision (and the reference), stochastic depth rises linearly from 0 to 0.1 over
the 18 blocks (per-sample "row" mode, only with `training=True`), LayerNorm eps is 1e-6 and
layer scale starts at 1e-6; random init is N(0, 0.02) for convs and dense layers.
Inputs are 0..255 RGB; the ImageNet mean/std normalisation is the first layer.

`ConvNeXtBackbone.torch_weights()` names every variable as torchvision's
`convnext_tiny().features` does (torchvision's numerics: LayerNorm eps 1e-6 over the
channels, exact erf GELU, layer scale (C, 1, 1) → (C,)), so torchvision's ImageNet file and
the PIP-Net reference's checkpoints load into it.

Layer groups (SPEC §3; torchvision names in brackets): "train" = the last block of stage 4
[features.7.2]; "freeze" = the last downsampler and the rest of stage 4 [features.6–7];
"backbone" = stem, stages 1–3 and the first two downsamplers.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipnet_tf.backbones import register_backbone
from pipnet_tf.backbones.backbone import Backbone, LayerSeeds
from pipnet_tf.backbones.cpu_fast_ops import (
    DepthwiseConv2DFast,
    check_fast_cpu_ops,
    LayerNormalizationFast,
    PointwiseDense,
)
from pipnet_tf.backbones.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocessing,
    build_with_weights,
)
from pipnet_tf.torch_weights import TorchWeight, layer_weights, torch_weight

PREFIX = "convnext_tiny"  # keras.applications layer-name prefix
DEPTHS = (3, 3, 9, 3)
WIDTHS = (96, 192, 384, 768)
DROP_PATH_RATE = 0.1
LAYER_SCALE_INIT = 1e-6
IMAGENET_FILE = "convnext_tiny_notop.h5"  # keras.applications' include_top=False download


@keras.saving.register_keras_serializable(package="pipnet_tf")
class LayerScale(keras.layers.Layer):
    """Per-channel learnable scale: `x * gamma`, gamma (C,) initialised to `init_value`.

    Input shape: `(batch, ..., C)`. Output shape: the same.
    """

    def __init__(self, init_value: float, projection_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)
        self.projection_dim = int(projection_dim)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(self.projection_dim,),
            initializer=keras.initializers.Constant(self.init_value),
            name="gamma",
        )

    def call(self, x):
        return x * keras.ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(init_value=self.init_value, projection_dim=self.projection_dim)
        return config


@keras.saving.register_keras_serializable(package="pipnet_tf")
class StochasticDepth(keras.layers.Layer):
    """Drops the whole residual branch of a sample with probability `rate` ("row" mode)
    and scales kept ones by 1/(1 − rate); the identity unless `training`.

    The masks come from a Keras `SeedGenerator` (a variable, saved in training
    checkpoints), so a resumed run draws the masks the uninterrupted one would have.
    Input shape: `(batch, H, W, C)`. Output shape: the same.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"`rate` must be in [0, 1), received: {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = tf.concat([tf.shape(x)[:1], tf.ones([tf.rank(x) - 1], tf.int32)], axis=0)
        mask = tf.floor(keep + keras.random.uniform(shape, dtype="float32",
                                                    seed=self.seed_generator))
        return x * tf.cast(mask / keep, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


def _block(x, width: int, drop_rate: float, name: str, seeds: LayerSeeds, depthwise: bool,
           fast: str):
    shortcut = x
    if depthwise:
        x = DepthwiseConv2DFast(
            7, padding="same", depthwise_initializer=_normal(seeds), fast_cpu_ops=fast,
            name=f"{name}_depthwise_conv")(x)
    else:  # keras.applications' original (slow on CPU); kept for equivalence tests
        x = keras.layers.Conv2D(
            width, 7, padding="same", groups=width, kernel_initializer=_normal(seeds),
            name=f"{name}_depthwise_conv",
        )(x)
    x = LayerNormalizationFast(epsilon=1e-6, fast_cpu_ops=fast, name=f"{name}_layernorm")(x)
    # keras.applications has Dense, Activation("gelu"), Dense: same weights and outputs.
    x = PointwiseDense(4 * width, activation="gelu", kernel_initializer=_normal(seeds),
                       fast_cpu_ops=fast, name=f"{name}_pointwise_conv_1")(x)
    x = PointwiseDense(width, kernel_initializer=_normal(seeds), fast_cpu_ops=fast,
                       name=f"{name}_pointwise_conv_2")(x)
    x = LayerScale(LAYER_SCALE_INIT, width, name=f"{name}_layer_scale")(x)
    if drop_rate:
        x = StochasticDepth(drop_rate, seed=seeds.next(), name=f"{name}_stochastic_depth")(x)
    return keras.layers.Add(name=f"{name}_add")([shortcut, x])


def _normal(seeds: LayerSeeds, stddev: float = 0.02):
    return keras.initializers.RandomNormal(stddev=stddev, seed=seeds.next())


@keras.saving.register_keras_serializable(package="pipnet_tf")
class ConvNeXtBackbone(Backbone):
    """ConvNeXt-Tiny feature extractor (see the module docstring), randomly initialised.

    Args:
        image_size: S for (batch, S, S, 3) inputs (None: any size).
        stride_one_above: downsamplers with more input channels than this get stride 1:
            100 gives the 26x26 grid, 300 the 13x13 one at 224 (None: keras.applications'
            strides, for tests).
        seed: initialiser seed (each layer gets its own, derived from it).
        depthwise: `DepthwiseConv2D` (True) or keras.applications' `Conv2D(groups=C)`.
        drop_path_rate: stochastic depth of the last block (linear from 0).
        fast_cpu_ops: "auto" | "on" | "off": where the `cpu_fast_ops` kernels run
            (auto: when no GPU is visible); the weights are the same either way.

    Output: (batch, H, W, 768), H = W = 26 (13) at 224 for stride_one_above 100 (300).
    """

    def __init__(self, image_size: int | None = 224, stride_one_above: int | None = 100,
                 seed: int | None = None, depthwise: bool = True,
                 drop_path_rate: float = DROP_PATH_RATE, fast_cpu_ops: str = "auto",
                 **kwargs):
        kwargs.setdefault("name", "convnext_tiny")
        fast = check_fast_cpu_ops(fast_cpu_ops)
        # === Functional Model ===
        seeds = LayerSeeds(seed)
        inputs = keras.Input((image_size, image_size, 3), name="images")
        x = ImagePreprocessing(IMAGENET_MEAN, IMAGENET_STD,
                               name=f"{PREFIX}_prestem_normalization")(inputs)
        x = keras.layers.Conv2D(WIDTHS[0], 4, strides=4, kernel_initializer=_normal(seeds),
                                name=f"{PREFIX}_stem_conv")(x)
        x = LayerNormalizationFast(epsilon=1e-6, fast_cpu_ops=fast,
                                   name=f"{PREFIX}_stem_layernorm")(x)
        drop_rates = np.linspace(0.0, drop_path_rate, sum(DEPTHS))
        block_index = 0
        for stage, (depth, width) in enumerate(zip(DEPTHS, WIDTHS)):
            if stage:
                i = stage - 1
                in_channels = WIDTHS[stage - 1]
                stride = 1 if stride_one_above is not None and in_channels > stride_one_above \
                    else 2
                x = LayerNormalizationFast(
                    epsilon=1e-6, fast_cpu_ops=fast,
                    name=f"{PREFIX}_downsampling_layernorm_{i}")(x)
                x = keras.layers.Conv2D(width, 2, strides=stride,
                                        kernel_initializer=_normal(seeds),
                                        name=f"{PREFIX}_downsampling_conv_{i}")(x)
            for j in range(depth):
                x = _block(x, width, float(drop_rates[block_index]),
                           f"{PREFIX}_stage_{stage}_block_{j}", seeds, depthwise, fast)
                block_index += 1
        super().__init__(inputs, x, **kwargs)
        # === Config ===
        self.stride_one_above = stride_one_above
        self.seed = seed
        self.depthwise = bool(depthwise)
        self.drop_path_rate = float(drop_path_rate)
        self.fast_cpu_ops = fast

    def group_of(self, layer: keras.layers.Layer) -> str:
        last_stage = f"{PREFIX}_stage_3_"
        if layer.name.startswith(f"{last_stage}block_2_"):
            return "train"
        if layer.name.startswith(last_stage) or layer.name in (
                f"{PREFIX}_downsampling_layernorm_2", f"{PREFIX}_downsampling_conv_2"):
            return "freeze"
        return "backbone"

    #: torchvision's classification head (final LayerNorm2d and Linear), not part of the
    #: feature extractor.
    torch_ignored = (r"classifier\..*",)

    def torch_weights(self) -> list[TorchWeight]:
        """torchvision `convnext_tiny().features` state_dict entries, in its order:
        `features.0` stem (conv, LayerNorm2d), `features.{1,3,5,7}.j` blocks
        (layer_scale, block.0 depthwise conv, block.2 LayerNorm, block.3/5 Linear),
        `features.{2,4,6}` downsamplers (LayerNorm2d, 2x2 conv)."""
        get = self.get_layer
        entries = (layer_weights("features.0.0", get(f"{PREFIX}_stem_conv"), "conv")
                   + layer_weights("features.0.1", get(f"{PREFIX}_stem_layernorm"), "channel"))
        for stage, depth in enumerate(DEPTHS):
            if stage:
                down = f"features.{2 * stage}"
                entries += layer_weights(f"{down}.0", get(
                    f"{PREFIX}_downsampling_layernorm_{stage - 1}"), "channel")
                entries += layer_weights(f"{down}.1", get(
                    f"{PREFIX}_downsampling_conv_{stage - 1}"), "conv")
            for j in range(depth):
                torch_name, name = f"features.{2 * stage + 1}.{j}", f"{PREFIX}_stage_{stage}_block_{j}"
                gamma = get(f"{name}_layer_scale").gamma
                entries.append(torch_weight(f"{torch_name}.layer_scale", gamma, "channel",
                                            (int(gamma.shape[0]), 1, 1)))
                depthwise = get(f"{name}_depthwise_conv")  # Conv2D(groups=C) when not depthwise
                entries += layer_weights(f"{torch_name}.block.0", depthwise, "depthwise" if
                                         isinstance(depthwise, keras.layers.DepthwiseConv2D)
                                         else "conv")
                entries += layer_weights(f"{torch_name}.block.2", get(f"{name}_layernorm"),
                                         "channel")
                entries += layer_weights(f"{torch_name}.block.3", get(f"{name}_pointwise_conv_1"),
                                         "linear")
                entries += layer_weights(f"{torch_name}.block.5", get(f"{name}_pointwise_conv_2"),
                                         "linear")
        return entries

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(image_size=self.image_size, stride_one_above=self.stride_one_above,
                      seed=self.seed, depthwise=self.depthwise,
                      drop_path_rate=self.drop_path_rate, fast_cpu_ops=self.fast_cpu_ops)
        return config


def _reference(weights=None, include_top=False):
    return keras.applications.ConvNeXtTiny(
        include_top=include_top, weights=weights,
        input_shape=None if include_top else (None, None, 3),
    )


def _builder(name: str, stride_one_above: int):
    def build(image_size: int, weights: str | None = "imagenet", seed: int | None = None,
              fast_cpu_ops: str = "auto"):
        return build_with_weights(
            lambda: ConvNeXtBackbone(image_size, stride_one_above, seed=seed,
                                     fast_cpu_ops=fast_cpu_ops, name=name),
            weights, _reference, net=name, app_name="ConvNeXtTiny", imagenet_file=IMAGENET_FILE)

    build.__name__ = name
    build.__doc__ = (f"`{name}`: ConvNeXt-Tiny, downsamplers with > {stride_one_above} input "
                     "channels at stride 1. weights: 'imagenet', a file path or None/'none'.")
    return register_backbone(name)(build)


convnext_tiny_26 = _builder("convnext_tiny_26", 100)
convnext_tiny_13 = _builder("convnext_tiny_13", 300)
