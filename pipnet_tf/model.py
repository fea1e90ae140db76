"""The PIP-Net model: backbone → (1x1 add-on) → patch softmax → max-pool → scoring sheet.

`PIPNet(images)` returns a dict of named outputs:
    proto_features: (batch, H, W, D) softmax over D at every latent cell;
    presence:       (batch, D) max over the grid, in [0, 1] (values < 0.1 zeroed in inference;
                    0 for disabled prototypes);
    scores:         (batch, K) raw, unnormalised scoring-sheet sums.

Prototypes can be disabled by hand (`disabled_prototypes`, e.g. shortcuts found in the
report; `trainers.edit`): their presence is set to 0 before the scoring sheet in every
forward, and the list is part of the model's config, so it survives saving and export.

Training (`fit`) takes batches `(view1, view2, label)` and runs the loss of the current
phase, `λ_A·L_A + λ_T·L_T + λ_C·L_C` (SPEC §2), with one optimiser per parameter group.
Batches `(view1, view2, label, mask1, mask2)` with object masks `(batch, S, S, 1)` add
`λ_B·L_B` (`losses.background_loss`, ours; λ_B = `set_background_loss_weight`, 0 unless
set).
Reference: Nauta et al., "PIP-Net: Patch-Based Intuitive Prototypes for Interpretable
Image Classification", CVPR 2023.

Example:
    >>> from pipnet_tf.backbones import build_backbone
    >>> net = PIPNet(build_backbone("tiny_cnn", 64), num_classes=3)
    >>> out = net(np.zeros((2, 64, 64, 3), "float32"))
    >>> out["scores"].shape
    TensorShape([2, 3])
"""
from __future__ import annotations

from typing import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from pipnet_tf import losses as pipnet_losses
from pipnet_tf.backbones import Backbone, build_backbone
from pipnet_tf.layers import NonNegativeLinear, PrototypeActivation, PrototypePooling
from pipnet_tf.optimization import all_finite_or_none
from pipnet_tf.patch_geometry import REFERENCE_RULE, PatchGeometry

PRESENCE_THRESHOLD = 0.1  # inference: presence below this is ignored (SPEC §1)
LOSS_NAMES = ("L_A", "L_T", "L_C")
BACKGROUND_LOSS = "L_B"


class _TrainingState:
    """Compile-time training objects, kept out of Keras's layer/variable tracking."""

    def __init__(self):
        self.optimizer_groups: list[tuple[keras.optimizers.Optimizer, list]] = []
        self.net_clock: tf.Variable | None = None
        self.updates_network = False  # does a step update anything besides the classifier?
        # float16 training: the groups' `LossScaleOptimizer`s (they keep equal scales).
        self.loss_scaled = False


@keras.saving.register_keras_serializable(package="pipnet_tf")
class PIPNet(keras.Model):
    """PIP-Net classifier.

    Args:
        backbone: a `pipnet_tf.backbones.Backbone` (or any `keras.Model`) mapping
            (batch, S, S, 3) 0..255 RGB images to (batch, H, W, C) features. A `Backbone`
            brings its layer groups and patch geometry; a plain model is one "backbone"
            group with the reference patch geometry.
        num_classes: K.
        num_prototypes: 0 (default, as recommended by the authors) uses the C backbone
            channels as prototypes; > 0 adds a 1x1 conv add-on with that many outputs.
        use_bias: non-negative bias in the scoring sheet (reference `--bias`).
        shrink: per-step shrinkage of the scoring sheet in the second phase (1e-3).
        inference_threshold: presence below it is zeroed in inference mode (0.1).
        seed: seed of the weight initialisers of the head.
        disabled_prototypes: prototype ids (0 ≤ id < D) whose presence is set to 0
            before the scoring sheet (their weights are kept, so enabling restores them).
    """

    def __init__(
        self,
        backbone: keras.Model,
        num_classes: int,
        num_prototypes: int = 0,
        use_bias: bool = False,
        shrink: float = 1e-3,
        inference_threshold: float = PRESENCE_THRESHOLD,
        seed: int | None = None,
        disabled_prototypes: Sequence[int] = (),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"`num_classes` must be >= 1, received: {num_classes}")
        if int(num_prototypes) < 0:
            raise ValueError(f"`num_prototypes` must be >= 0, received: {num_prototypes}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.num_prototypes = int(num_prototypes)
        self.use_bias = bool(use_bias)
        self.shrink = float(shrink)
        self.inference_threshold = float(inference_threshold)
        self.seed = seed
        self.disabled_prototypes = _prototype_ids(disabled_prototypes)
        # Distinct seeds for the two initialised head layers (an integer-seeded Keras
        # initializer returns the same values on every call).
        add_on_seed, classifier_seed = (None, None) if seed is None else (
            int(seed) * 1000 + 901, int(seed) * 1000 + 902)
        self.add_on = None
        if self.num_prototypes:
            self.add_on = keras.layers.Conv2D(
                self.num_prototypes,
                1,
                kernel_initializer=keras.initializers.GlorotUniform(seed=add_on_seed),
                name="add_on",
            )
        self.prototype_activation = PrototypeActivation(name="prototype_activation", dtype="float32")
        self.prototype_pooling = PrototypePooling(name="prototype_pooling", dtype="float32")
        self.classifier = NonNegativeLinear(
            self.num_classes, use_bias=use_bias, shrink=shrink, seed=classifier_seed,
            name="classifier",
            dtype="float32",
        )
        self._trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", *LOSS_NAMES, BACKGROUND_LOSS, "accuracy", "num_present")
        }
        # λ_A, λ_T, λ_C of the current phase; a variable so that a per-epoch ramp does
        # not retrace the train function. Not a model weight.
        self.loss_weights = tf.Variable([5.0, 2.0, 2.0], trainable=False, name="loss_weights")
        # λ_B of the background loss, applied to batches that carry object masks.
        self.background_loss_weight = tf.Variable(0.0, trainable=False,
                                                  name="background_loss_weight")
        self._background_loss = 0.0  # the λ_B given, before the pretraining ramp
        self._training_state = _TrainingState()

    # === Forward ===
    @property
    def num_features(self) -> int:
        """D, the number of prototypes."""
        return self.num_prototypes or int(self.backbone.output.shape[-1])

    def build(self, input_shape):
        if not self.backbone.built:
            self.backbone.build(input_shape)
        shape = self.backbone.compute_output_shape(input_shape)
        if self.add_on is not None:
            self.add_on.build(shape)
            shape = self.add_on.compute_output_shape(shape)
        self.classifier.build((shape[0], shape[-1]))
        if self.disabled_prototypes and self.disabled_prototypes[-1] >= shape[-1]:
            raise ValueError(
                f"`disabled_prototypes` must be ids below D={shape[-1]}, received: "
                f"{[p for p in self.disabled_prototypes if p >= shape[-1]]}")
        self.built = True

    def call(self, images, training=None, apply_threshold: bool | None = None):
        """images (batch, S, S, 3) 0..255 → dict of proto_features, presence, scores.

        `apply_threshold` defaults to `not training`: presence below
        `inference_threshold` is set to 0 before scoring (the returned presence too).
        """
        features = self.backbone(images, training=training)
        if self.add_on is not None:
            features = self.add_on(features)
        proto_features = self.prototype_activation(tf.cast(features, "float32"))
        presence = self.mask_presence(self.prototype_pooling(proto_features))
        if apply_threshold is None:
            apply_threshold = not training
        if apply_threshold:
            presence = self.threshold_presence(presence)
        scores = self.classifier(presence)
        return {"proto_features": proto_features, "presence": presence, "scores": scores}

    @property
    def image_size(self) -> int | None:
        """The square input size S the backbone was built for."""
        return self.backbone.input_shape[1]

    def patch_geometry(self, image_size: int | None = None) -> PatchGeometry:
        """Pixel box of every latent cell at `image_size` (default: the built size), as the
        backbone declares it (the reference rule for a plain `keras.Model` backbone)."""
        if isinstance(self.backbone, Backbone):
            return self.backbone.patch_geometry(image_size)
        size = int(image_size or self.image_size)
        shape = self.backbone.compute_output_shape((None, size, size, 3))
        return REFERENCE_RULE.geometry(size, (int(shape[1]), int(shape[2])))

    def threshold_presence(self, presence: tf.Tensor) -> tf.Tensor:
        """Zeroes presence scores strictly below the inference threshold; (batch, D)."""
        return tf.where(presence < self.inference_threshold, tf.zeros_like(presence), presence)

    def mask_presence(self, presence: tf.Tensor) -> tf.Tensor:
        """(batch, D) presence with the disabled prototypes' columns set to exactly 0."""
        if not self.disabled_prototypes:
            return presence
        enabled = tf.constant(self.prototype_mask)
        return tf.where(enabled, presence, tf.zeros_like(presence))

    @property
    def prototype_mask(self) -> np.ndarray:
        """bool (D,): True for the prototypes the scoring sheet uses."""
        mask = np.ones(self.num_features, bool)
        mask[list(self.disabled_prototypes)] = False
        return mask

    def enabled_kernel(self) -> np.ndarray:
        """(D, K) float32 scoring-sheet kernel W with the disabled prototypes' rows
        zeroed: the weights the forward applies (before the ReLU). Metrics, the scoring
        sheet, pruning and `--compact` read this instead of `classifier.kernel`."""
        kernel = np.array(self.classifier.kernel.numpy(), np.float32)
        kernel[list(self.disabled_prototypes)] = 0.0
        return kernel

    # === Layer groups and phases ===
    def layer_groups(self) -> dict[str, list[keras.layers.Layer]]:
        """Backbone groups ("backbone", "freeze", "train", "never") plus "add_on" and
        "classifier": every layer with weights is in exactly one group."""
        if isinstance(self.backbone, Backbone):
            groups = self.backbone.layer_groups
        else:
            groups = {"backbone": [layer for layer in self.backbone.layers if layer.weights]}
            groups.update(freeze=[], train=[], never=[])
        groups["add_on"] = [self.add_on] if self.add_on is not None else []
        groups["classifier"] = [self.classifier]
        return groups

    def set_trainable_groups(self, trainable: Iterable[str]) -> None:
        """Makes exactly the layers of the named groups trainable ("never" never is).

        Recompile afterwards for the change to take effect.
        """
        trainable = set(trainable)
        groups = self.layer_groups()
        unknown = trainable - set(groups)
        if unknown:
            raise ValueError(f"Unknown layer groups {sorted(unknown)}; known: {sorted(groups)}.")
        for name, layers in groups.items():
            for layer in layers:
                layer.trainable = name in trainable and name != "never"

    # === Training ===
    def compile(
        self,
        optimizer_groups: Sequence[tuple[keras.optimizers.Optimizer, Sequence]] = (),
        loss_weights: Sequence[float] | None = None,
        net_clock: tf.Variable | None = None,
        jit_compile: bool = False,
        **kwargs,
    ):
        """Configures training.

        Args:
            optimizer_groups: (optimizer, variables) pairs; each trainable variable must be
                owned by exactly one optimizer. Only the currently trainable variables of a
                group are updated, so one optimizer can serve several freezing stages.
            loss_weights: (λ_A, λ_T, λ_C); can be changed later with `set_loss_weights`.
            net_clock: an int64 variable incremented after every step that updates a
                non-classifier group (drives the backbone's cosine schedule, SPEC §3).
            jit_compile: XLA; off by default (3–4x slower on CPU, PLATFORM_NOTES).
        """
        super().compile(optimizer=None, jit_compile=jit_compile, **kwargs)
        trainable = {id(v): v for v in self.trainable_variables}
        owned: dict[int, int] = {}
        active = []
        for index, (optimizer, variables) in enumerate(optimizer_groups):
            group_vars = [v for v in variables if id(v) in trainable]
            for v in group_vars:
                if id(v) in owned:
                    raise ValueError(f"Variable {v.path!r} is owned by two optimizer groups.")
                owned[id(v)] = index
            if group_vars:
                active.append((optimizer, group_vars))
        orphans = [v.path for k, v in trainable.items() if k not in owned]
        if orphans and optimizer_groups:
            raise ValueError(f"Trainable variables without an optimizer group: {orphans}")
        classifier_ids = {id(v) for v in self.classifier.weights}
        self._training_state.optimizer_groups = active
        self._training_state.net_clock = net_clock
        self._training_state.updates_network = any(
            id(v) not in classifier_ids for _, group in active for v in group
        )
        scaled = [isinstance(opt, keras.optimizers.LossScaleOptimizer) for opt, _ in active]
        if any(scaled) and not all(scaled):
            raise ValueError("Either every optimizer group is a LossScaleOptimizer or none.")
        self._training_state.loss_scaled = bool(scaled) and all(scaled)
        if loss_weights is not None:
            self.set_loss_weights(*loss_weights)

    def set_loss_weights(self, align: float, tanh: float, classification: float) -> None:
        self.loss_weights.assign([align, tanh, classification])

    def set_background_loss_weight(self, weight: float) -> None:
        """λ_B of `losses.background_loss` for batches with object masks (>= 0)."""
        if not weight >= 0:
            raise ValueError(f"The background loss weight must be >= 0, received {weight!r}.")
        self._background_loss = float(weight)
        self.background_loss_weight.assign(self._background_loss)

    def scale_background_loss(self, scale: float) -> None:
        """Applies `scale` x the λ_B given to `set_background_loss_weight` (the
        pretraining ramp, `phases.background_scale_for_epoch`)."""
        self.background_loss_weight.assign(self._background_loss * scale)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def compute_pipnet_losses(self, view1, view2, labels, training: bool,
                              masks: tuple | None = None) -> dict[str, tf.Tensor]:
        """Forward both views and compute the losses of one (per-replica) batch.

        Returns the per-replica *contributions* L_A, L_T, L_C (whose sum over replicas is
        the global-batch loss: means use the global counts, L_T is divided by the number of
        replicas after a cross-replica presence sum), L_B (0 without `masks`, the views'
        object masks `(B, S, S, 1)`), plus "outputs" of the forward.
        """
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync
        images = tf.concat([view1, view2], axis=0)
        outputs = self(images, training=training, apply_threshold=False)
        features1, features2 = tf.split(outputs["proto_features"], 2, axis=0)
        presence1, presence2 = tf.split(outputs["presence"], 2, axis=0)
        local_b = tf.cast(tf.shape(view1)[0], tf.float32)
        global_b = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_b)
        cells = tf.cast(tf.shape(features1)[1] * tf.shape(features1)[2], tf.float32)

        def global_batch_sum(p):
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(p, axis=0))

        background = tf.constant(0.0)
        if masks is not None:
            grid = tf.shape(outputs["proto_features"])[1:3]
            inside = tf.image.resize(tf.concat(masks, axis=0), grid, "area")[..., 0]
            kernel = self.classifier.kernel
            if self.disabled_prototypes:
                kernel = tf.where(tf.constant(self.prototype_mask)[:, tf.newaxis], kernel,
                                  tf.zeros_like(kernel))
            background = pipnet_losses.background_loss(
                outputs["proto_features"], 1.0 - inside,
                pipnet_losses.classifier_importance(tf.cast(kernel, tf.float32)),
                num_images=2.0 * global_b)
        return {
            BACKGROUND_LOSS: background,
            "L_A": pipnet_losses.align_loss(features1, features2, num_rows=global_b * cells),
            "L_T": pipnet_losses.tanh_loss(presence1, presence2, batch_sum=global_batch_sum)
            / replicas,
            "L_C": pipnet_losses.classification_loss(
                outputs["scores"],
                tf.concat([labels, labels], axis=0),
                self.classifier.multiplier,
                num_examples=2.0 * global_b,
            ),
            "outputs": outputs,
        }

    def _update_trackers(self, parts: dict, labels, scores, presence) -> dict:
        ctx = tf.distribute.get_replica_context()
        weights = [*tf.unstack(self.loss_weights), self.background_loss_weight]
        total = 0.0
        for name, weight in zip((*LOSS_NAMES, BACKGROUND_LOSS), weights):
            value = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(parts[name]))
            self._trackers[name].update_state(value)
            total += weight * value
        self._trackers["loss"].update_state(total)
        self._update_prediction_trackers(labels, scores, presence)
        return self._step_logs()

    def _step_logs(self) -> dict:
        """The metrics' results as a step's logs. Under MultiWorkerMirroredStrategy they
        are 1-element vectors: Keras 3 reduces step logs across workers with
        `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars
        (keras-team/keras#20585); every replica holds the same values (the trackers are
        fed all-reduced sums), so that mean is the value itself."""
        logs = {m.name: m.result() for m in self.metrics}
        if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def _update_prediction_trackers(self, labels, scores, presence) -> None:
        # An abstention (every score <= 0) is wrong, as in `metrics.top1_accuracy`.
        predicted = tf.argmax(scores, axis=-1, output_type=tf.int32)
        correct = tf.logical_and(tf.equal(predicted, tf.cast(labels, tf.int32)),
                                 tf.reduce_max(scores, axis=-1) > 0.0)
        self._trackers["accuracy"].update_state(tf.cast(correct, tf.float32))
        present = tf.reduce_sum(tf.cast(presence > self.inference_threshold, tf.float32), axis=-1)
        self._trackers["num_present"].update_state(present)

    def train_step(self, data):
        view1, view2, labels, *masks = data
        state = self._training_state
        scaler = state.optimizer_groups[0][0] if state.loss_scaled else None
        with tf.GradientTape() as tape:
            parts = self.compute_pipnet_losses(view1, view2, labels, training=True,
                                               masks=tuple(masks) or None)
            weights = tf.unstack(self.loss_weights)
            loss = sum(w * parts[name] for w, name in zip(weights, LOSS_NAMES))
            if masks:
                loss += self.background_loss_weight * parts[BACKGROUND_LOSS]
            if scaler is not None:
                loss = scaler.scale_loss(loss)
        variables = [v for _, group in state.optimizer_groups for v in group]
        if not variables:
            raise ValueError("Nothing to train: compile() with optimizer_groups first.")
        grads = tape.gradient(loss, variables)
        applied = tf.constant(1, tf.int64)
        if scaler is not None:
            grads, finite = all_finite_or_none(grads)
            applied = tf.cast(finite, tf.int64)
        offset = 0
        for optimizer, group in state.optimizer_groups:
            optimizer.apply(grads[offset : offset + len(group)], group)
            offset += len(group)
        if state.updates_network and state.net_clock is not None:
            state.net_clock.assign_add(applied)
        both_labels = tf.concat([labels, labels], axis=0)
        outputs = parts["outputs"]
        return self._update_trackers(parts, both_labels, outputs["scores"], outputs["presence"])

    def test_step(self, data):
        """(view1, view2, label): losses (no threshold) + thresholded accuracy;
        (images, label): thresholded accuracy and prototype counts only."""
        if len(data) >= 3:
            view1, view2, labels, *masks = data
            parts = self.compute_pipnet_losses(view1, view2, labels, training=False,
                                               masks=tuple(masks) or None)
            presence = self.threshold_presence(parts["outputs"]["presence"])
            scores = self.classifier(presence)
            return self._update_trackers(parts, tf.concat([labels, labels], 0), scores, presence)
        images, labels = data
        outputs = self(images, training=False)
        self._update_prediction_trackers(labels, outputs["scores"], outputs["presence"])
        return self._step_logs()

    def predict_step(self, data):
        """One batch of `predict` (images, or (images, labels)): the inference outputs
        that evaluation and explanations need, without the (batch, H, W, D) maps.

        Returns:
            scores (batch, K) and presence (batch, D) with the inference threshold and
            the disabled prototypes at 0 (what the scoring sheet uses);
            scores_raw without the threshold (the reference's `inference=False`);
            presence_raw without the threshold and without the mask: what each
            prototype detects, disabled ones included (purity, prototype pictures);
            locations int32 (batch, D): row-major latent cell where each prototype was
            highest; labels (batch,) when the data has them.
        """
        images, labels = data, None
        if isinstance(data, (tuple, list)):
            images, labels = data[0], (data[1] if len(data) > 1 else None)
        out = self(images, training=False, apply_threshold=False)
        features = out["proto_features"]
        shape = tf.shape(features)
        flat = tf.reshape(features, (shape[0], shape[1] * shape[2], shape[3]))
        presence = self.threshold_presence(out["presence"])
        result = {
            "scores": self.classifier(presence),
            "presence": presence,
            "scores_raw": out["scores"],
            "presence_raw": self.prototype_pooling(features),
            "locations": tf.cast(tf.argmax(flat, axis=1), tf.int32),
        }
        if labels is not None:
            result["labels"] = labels
        return result

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras 3's TF trainer builds a model symbolically at the start of `fit` under a
        strategy by reducing a whole input batch with `strategy.reduce`, which
        MultiWorkerMirroredStrategy rejects for a tuple batch (keras-team/keras#20585),
        and by unpacking it as (x, y, sample_weight), which batches with object masks
        (5 elements) are not. PIPNet builds its variables in `build` and the trainer builds
        its optimisers, so once built there is nothing left to build: skip it."""
        if self.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # === Config ===
    def get_compile_config(self):
        """None: optimiser groups are rebuilt per phase by the trainer, never restored
        from a `.keras` file."""
        return None

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "num_prototypes": self.num_prototypes,
            "use_bias": self.use_bias,
            "shrink": self.shrink,
            "inference_threshold": self.inference_threshold,
            "seed": self.seed,
            "disabled_prototypes": list(self.disabled_prototypes),
        }

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(config["backbone"])
        legacy_name = config.pop("backbone_name", None)
        if legacy_name is not None and not isinstance(backbone, Backbone):
            # A model saved before backbones were `Backbone` models (pipnet-tf <= 0.1
            # sessions 1-4): the same layers under the same names, rebuilt as the
            # registered class so that groups and geometry are known again.
            from pipnet_tf.backbones.resnet import LEGACY_NAMES  # keras-layout ResNets

            backbone = build_backbone(LEGACY_NAMES.get(legacy_name, legacy_name),
                                      backbone.input_shape[1], weights=None)
        config["backbone"] = backbone
        return cls(**config)


def _prototype_ids(ids: Iterable[int]) -> tuple[int, ...]:
    """Sorted, unique non-negative prototype ids; ValueError quoting a bad one."""
    out = set()
    for value in ids:
        try:
            valid = not isinstance(value, bool) and int(value) == value and int(value) >= 0
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ValueError(f"`disabled_prototypes` must be non-negative integers, "
                             f"received: {value!r}")
        out.add(int(value))
    return tuple(sorted(out))


def float32_copy(model: PIPNet) -> PIPNet:
    """`model` computing in float32 throughout (the same weights, cast); `model` itself when
    it already does. Used to serve and to check exports of mixed-precision runs: TFLite has
    no bfloat16, and a float32 graph is compared against a float32 Keras model."""
    if all(v.dtype == "float32" for v in model.weights) and all(
            layer.compute_dtype == "float32" for layer in model.backbone.layers):
        return model
    config = model.get_config()
    if isinstance(model.backbone, Backbone):
        config["backbone"]["config"]["dtype"] = "float32"
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = PIPNet.from_config(config)
        copy.build((None, model.image_size, model.image_size, 3))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights([tf.cast(w, "float32").numpy() for w in model.get_weights()])
    return copy
