import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipnet_tf import phases
from pipnet_tf.backbones import available_backbones, build_backbone
from pipnet_tf.model import PIPNet
from pipnet_tf.optimization import LearningRates, make_phase_optimizers


def small_model(num_classes=3, num_prototypes=0, seed=1, use_bias=False):
    backbone = build_backbone("tiny_cnn", 32, seed=seed)
    model = PIPNet(backbone, num_classes, num_prototypes=num_prototypes, seed=seed,
                   use_bias=use_bias)
    model.build((None, 32, 32, 3))
    return model


def images(n=4, seed=0):
    return (np.random.default_rng(seed).random((n, 32, 32, 3)) * 255).astype("float32")


def test_named_outputs_and_shapes():
    model = small_model()
    out = model(images(), apply_threshold=False)
    assert out["proto_features"].shape == (4, 4, 4, 64)
    assert out["presence"].shape == (4, 64)
    assert out["scores"].shape == (4, 3)
    np.testing.assert_allclose(out["proto_features"].numpy().sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["presence"].numpy(), out["proto_features"].numpy().max((1, 2)))


def test_inference_threshold_zeroes_presence_below_0p1():
    model = small_model()
    x = images()
    raw = model(x, training=False, apply_threshold=False)
    inferred = model(x, training=False)
    p = raw["presence"].numpy()
    expected = np.where(p < 0.1, 0.0, p)
    np.testing.assert_allclose(inferred["presence"].numpy(), expected)
    w = np.maximum(model.classifier.kernel.numpy(), 0)
    np.testing.assert_allclose(inferred["scores"].numpy(), expected @ w, rtol=1e-5)
    np.testing.assert_array_equal(raw["proto_features"].numpy(), inferred["proto_features"].numpy())


def test_add_on_sets_the_number_of_prototypes():
    model = small_model(num_prototypes=10)
    assert model.num_features == 10
    assert model(images())["presence"].shape == (4, 10)
    assert model.layer_groups()["add_on"] == [model.add_on]


def test_keras_save_load_round_trip(tmp_path):
    model = small_model(num_prototypes=12, use_bias=True)
    path = tmp_path / "pipnet.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    x = images()
    for key in ("proto_features", "presence", "scores"):
        np.testing.assert_allclose(restored(x)[key].numpy(), model(x)[key].numpy(), atol=1e-6)
    as_json = lambda m: json.dumps(m.get_config(), sort_keys=True)  # noqa: E731
    assert as_json(restored) == as_json(model)
    assert {k: len(v) for k, v in restored.layer_groups().items()} == {
        k: len(v) for k, v in model.layer_groups().items()}


def test_every_weighted_layer_is_in_one_group():
    model = small_model(num_prototypes=5)
    groups = model.layer_groups()
    seen = [id(layer) for layers in groups.values() for layer in layers]
    assert len(seen) == len(set(seen))
    weighted = [l for l in model.backbone.layers if l.weights] + [model.add_on, model.classifier]
    assert {id(l) for l in weighted} == set(seen)


def test_set_trainable_groups():
    model = small_model()
    model.set_trainable_groups(["classifier"])
    assert [v.path for v in model.trainable_variables] == [model.classifier.kernel.path]
    model.set_trainable_groups(["train", "classifier"])
    assert len(model.trainable_variables) == 3  # last conv kernel + bias, W
    with pytest.raises(ValueError, match="Unknown layer groups"):
        model.set_trainable_groups(["nope"])


def _dataset(n=8, batch=4, seed=0):
    x = images(n, seed)
    y = np.arange(n) % 3
    return tf.data.Dataset.from_tensor_slices((x, x[:, :, ::-1], y)).batch(batch)


def _compile_stage(model, stage, phase_opts):
    model.set_trainable_groups(stage.trainable_groups)
    model.compile(phase_opts.as_compile_args(), net_clock=phase_opts.clock)
    model.set_loss_weights(*phases.loss_weights_for_epoch(stage, stage.first_epoch))


def test_train_step_per_stage_updates_only_trainable_groups():
    keras.utils.set_random_seed(0)
    model = small_model()
    plan = phases.make_plan(1, 2, 1)  # pretrain, finetune(2)
    opts1 = make_phase_optimizers(model.layer_groups(), 1, LearningRates(lr_block=1e-2), 2, 1)
    opts1.build()
    stem = model.backbone.get_layer("stem_conv").kernel
    last = model.backbone.get_layer("stage3_conv").kernel
    snapshot = lambda: {v.path: v.numpy().copy() for v in (stem, last, model.classifier.kernel)}  # noqa: E731

    before = snapshot()
    _compile_stage(model, plan[0], opts1)
    logs = model.fit(_dataset(), epochs=1, verbose=0).history
    after = snapshot()
    assert set(logs) == {"loss", "L_A", "L_T", "L_C", "L_B", "accuracy", "num_present"}
    assert logs["L_B"] == [0.0]  # no object masks in the batches
    np.testing.assert_array_equal(after[stem.path], before[stem.path])  # backbone group frozen
    assert not np.allclose(after[last.path], before[last.path])
    np.testing.assert_array_equal(after[model.classifier.kernel.path], before[model.classifier.kernel.path])
    assert int(opts1.clock.numpy()) == 2
    # Pretraining loss = 1·L_A + 5·L_T (λ_A = 1/1 at its only epoch).
    np.testing.assert_allclose(logs["loss"][0], logs["L_A"][0] + 5 * logs["L_T"][0], rtol=1e-4)

    opts2 = make_phase_optimizers(model.layer_groups(), 2, LearningRates(), 2, 2)
    opts2.build()
    _compile_stage(model, plan[1], opts2)
    before = snapshot()
    logs = model.fit(_dataset(), epochs=1, verbose=0).history
    after = snapshot()
    np.testing.assert_array_equal(after[last.path], before[last.path])
    assert not np.allclose(after[model.classifier.kernel.path], before[model.classifier.kernel.path])
    assert int(opts2.clock.numpy()) == 0  # network schedule does not advance in finetune
    np.testing.assert_allclose(logs["loss"][0], 2 * logs["L_C"][0], rtol=1e-4)
    assert (model.classifier.kernel.numpy() >= 0).all()


def test_pretraining_with_the_backbone_group_unfrozen_trains_the_stem():
    """--nofreeze_backbone_group: pretraining moves the stem's kernel and its BatchNorm's
    moving statistics (frozen, they stay at their random / initial values)."""
    keras.utils.set_random_seed(0)
    model = small_model()
    pretrain = phases.make_plan(1, 1, 0, freeze_backbone_group=False)[0]
    opts = make_phase_optimizers(model.layer_groups(), 1, LearningRates(lr_net=1e-2), 2, 1)
    opts.build()
    stem = model.backbone.get_layer("stem_conv").kernel
    moving_mean = model.backbone.get_layer("stem_bn").moving_mean
    before = stem.numpy().copy(), moving_mean.numpy().copy()
    _compile_stage(model, pretrain, opts)
    model.fit(_dataset(), epochs=1, verbose=0)
    assert not np.allclose(stem.numpy(), before[0])
    assert not np.allclose(moving_mean.numpy(), before[1])


def test_background_loss_from_object_masks():
    """Batches with object masks add λ_B·L_B; L_B is the NumPy formula on the forward's
    maps (mask resized to the 4x4 grid by area), and it moves the prototypes."""
    keras.utils.set_random_seed(0)
    model = small_model()
    x = images(4)
    masks = np.zeros((4, 32, 32, 1), np.float32)
    masks[:, 8:24, 0:16] = 1.0  # the object: grid cells rows 1-2, columns 0-1
    kernel = np.abs(np.random.default_rng(3).normal(size=(64, 3))).astype(np.float32)
    kernel[:10] = 0.0  # ten prototypes the scoring sheet does not use
    model.classifier.kernel.assign(kernel)
    parts = model.compute_pipnet_losses(x, x, np.zeros(4, np.int32), training=False,
                                        masks=(masks, masks))
    z = parts["outputs"]["proto_features"].numpy()
    outside = np.ones((8, 4, 4), np.float32)
    outside[:, 1:3, 0:2] = 0.0
    largest = kernel.max(-1)
    expected = np.mean(((z * outside[..., None]).max((1, 2)) * largest / largest.mean()).mean(-1))
    np.testing.assert_allclose(parts["L_B"].numpy(), expected, rtol=1e-5)
    assert float(model.compute_pipnet_losses(x, x, np.zeros(4, np.int32), False)["L_B"]) == 0

    plan = phases.make_plan(0, 1, 1)  # one frozen-stage epoch
    opts = make_phase_optimizers(model.layer_groups(), 2, LearningRates(lr_block=1e-2), 1, 1)
    opts.build()
    _compile_stage(model, plan[0], opts)
    model.set_background_loss_weight(3.0)
    data = tf.data.Dataset.from_tensor_slices(
        (x, x[:, :, ::-1], np.arange(4) % 3, masks, masks[:, :, ::-1])).batch(4)
    logs = model.fit(data, epochs=1, verbose=0).history
    assert logs["L_B"][0] > 0
    np.testing.assert_allclose(
        logs["loss"][0], 5 * logs["L_A"][0] + 2 * logs["L_T"][0] + 2 * logs["L_C"][0]
        + 3 * logs["L_B"][0], rtol=1e-4)
    with pytest.raises(ValueError, match="background loss weight"):
        model.set_background_loss_weight(-1.0)


def test_evaluate_on_images_and_on_view_pairs():
    model = small_model()
    model.compile()
    x = images(6)
    y = np.arange(6) % 3
    res = model.evaluate(tf.data.Dataset.from_tensor_slices((x, y)).batch(3), return_dict=True, verbose=0)
    scores = model(x, training=False)["scores"].numpy()
    np.testing.assert_allclose(res["accuracy"], np.mean(scores.argmax(1) == y), atol=1e-6)
    res = model.evaluate(_dataset(6, 3), return_dict=True, verbose=0)
    assert np.isfinite(res["L_A"]) and np.isfinite(res["L_T"]) and np.isfinite(res["L_C"])


def test_registry_errors():
    assert "tiny_cnn" in available_backbones()
    with pytest.raises(ValueError, match="Unknown backbone"):
        build_backbone("resnet9000", 32)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_backbone("tiny_cnn", 32, weights="imagenet")
