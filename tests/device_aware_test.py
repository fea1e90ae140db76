"""Device-aware kernels and precision: `fast_cpu_ops` (auto | on | off) is part of the model
config and both paths compute the same outputs and gradients; float16 training with loss
scaling never writes NaN; --precision and --strategy resolve as documented."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipnet_tf import distribution, phases
from pipnet_tf.backbones import build_backbone, cpu_fast_ops
from pipnet_tf.backbones.cpu_fast_ops import (
    DepthwiseConv2DFast,
    LayerNormalizationFast,
    PointwiseDense,
    use_fast_cpu_ops,
)
from pipnet_tf.model import PIPNet
from pipnet_tf.optimization import (
    FusedAdamW,
    LearningRates,
    all_finite_or_none,
    make_phase_optimizers,
)
from tests.model_test import images


@pytest.fixture
def gpu_visible(monkeypatch):
    """Pretends a GPU is visible (only to the "auto" decision)."""
    monkeypatch.setattr(cpu_fast_ops, "gpu_visible", lambda: True)


def test_auto_means_fast_on_cpu_and_stock_on_gpu(monkeypatch):
    assert use_fast_cpu_ops("on") and not use_fast_cpu_ops("off")
    assert use_fast_cpu_ops("auto") == (not tf.config.list_physical_devices("GPU"))
    monkeypatch.setattr(cpu_fast_ops, "gpu_visible", lambda: True)
    assert not use_fast_cpu_ops("auto") and use_fast_cpu_ops("on")
    with pytest.raises(ValueError, match="--fast_cpu_ops='fast'"):
        use_fast_cpu_ops("fast")
    with pytest.raises(ValueError, match="--fast_cpu_ops='gpu'"):
        build_backbone("tiny_cnn", 32, fast_cpu_ops="gpu")


def _op_types(function, *args) -> set[str]:
    graph = tf.function(function).get_concrete_function(*args).graph
    types = {op.type for op in graph.get_operations()}
    for f in graph.as_graph_def().library.function:
        types |= {node.op for node in f.node_def}
        if f.attr["_XlaMustCompile"].b:
            types.add("XLA_COMPILED_FUNCTION")
    return types


@pytest.mark.parametrize("mode,fast", [("on", True), ("off", False)])
def test_the_switch_selects_the_kernels(mode, fast):
    x = tf.constant(np.random.default_rng(0).random((2, 6, 6, 8)), tf.float32)
    depthwise = DepthwiseConv2DFast(3, padding="same", fast_cpu_ops=mode)
    norm = LayerNormalizationFast(epsilon=1e-6, fast_cpu_ops=mode)
    dense = PointwiseDense(4, activation="gelu", fast_cpu_ops=mode)

    def filter_gradient(t):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(depthwise(t, training=True))
        return tape.gradient(loss, depthwise.kernel)

    # TF's own depthwise filter gradient only on the stock path.
    assert ("DepthwiseConv2dNativeBackpropFilter" in _op_types(filter_gradient, x)) != fast
    # The XLA-compiled LayerNorm forward only on the fast path.
    assert ("XLA_COMPILED_FUNCTION" in _op_types(lambda t: norm(t, training=False), x)) == fast
    # The XLA-compiled GELU (and its gradient) of training only on the fast path.
    assert ("XLA_COMPILED_FUNCTION" in _op_types(lambda t: dense(t, training=True), x)) == fast
    for layer in (depthwise, norm, dense):
        config = layer.get_config()
        assert config["fast_cpu_ops"] == mode
        assert type(layer).from_config(json.loads(json.dumps(config))).fast_cpu_ops == mode


def test_convnext_both_paths_same_outputs_and_gradients(gpu_visible):
    """convnext_tiny_13 at 32 px, same weights, "on" vs "auto" with a GPU visible (stock
    ops). Layer scales are raised from 1e-6 to 0.5 so that every block's fast layers
    matter. Tolerances: outputs (values up to ~3) 1e-5 absolute; every gradient within
    1e-5 of that variable's largest gradient (measured: 3e-6 and 1.4e-6)."""
    x = tf.constant(images(2), tf.float32)
    upstream = None
    results = {}
    for mode in ("on", "auto"):
        net = build_backbone("convnext_tiny_13", 32, weights=None, seed=0, fast_cpu_ops=mode)
        for layer in net.layers:
            if "layer_scale" in layer.name:
                layer.gamma.assign(tf.fill(layer.gamma.shape, 0.5))
        with tf.GradientTape() as tape:
            y = net(x, training=True)
            if upstream is None:
                upstream = tf.constant(np.random.default_rng(1).standard_normal(y.shape),
                                       tf.float32)
            loss = tf.reduce_sum(y * upstream)
        results[mode] = (y.numpy(), net(x, training=False).numpy(),
                         [g.numpy() for g in tape.gradient(loss, net.trainable_weights)])
        assert net.get_config()["fast_cpu_ops"] == mode
    fast, stock = results["on"], results["auto"]
    np.testing.assert_allclose(fast[0], stock[0], atol=1e-5)
    np.testing.assert_allclose(fast[1], stock[1], atol=1e-5)
    assert len(fast[2]) == len(stock[2]) == 178
    for g_fast, g_stock in zip(fast[2], stock[2]):
        np.testing.assert_allclose(g_fast, g_stock, atol=1e-5 * np.abs(g_stock).max() + 1e-12)


def test_fast_cpu_ops_survives_a_keras_file(tmp_path):
    model = PIPNet(build_backbone("convnext_tiny_13", 32, weights=None, seed=0,
                                  fast_cpu_ops="off"), 3, seed=0)
    model.build((None, 32, 32, 3))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    layers = [l for l in loaded.backbone.layers if hasattr(l, "fast_cpu_ops")]
    assert loaded.backbone.fast_cpu_ops == "off" and layers
    assert {l.fast_cpu_ops for l in layers} == {"off"}


def test_optimizer_choice_follows_the_switch():
    groups = {"classifier": [keras.layers.Dense(2)], "backbone": [keras.layers.Dense(3)]}
    for layers in groups.values():
        layers[0].build((None, 4))
    fused = make_phase_optimizers(groups, 2, LearningRates(), 2, 3, fused=True)
    stock = make_phase_optimizers(groups, 2, LearningRates(), 2, 3, fused=False)
    assert all(type(opt) is FusedAdamW for opt in fused.active().values())
    assert all(type(opt) is keras.optimizers.AdamW for opt in stock.active().values())
    scaled = make_phase_optimizers(groups, 2, LearningRates(), 2, 3, loss_scale=True)
    assert all(isinstance(opt, keras.optimizers.LossScaleOptimizer)
               for opt in scaled.active().values())


# === Mixed precision ===

def test_non_finite_gradients_poison_every_group():
    grads = [tf.ones((2, 2)), tf.constant([1.0, float("inf")]), None]
    out, finite = all_finite_or_none(grads)
    assert not bool(finite) and np.isnan(out[0].numpy()).all() and out[2] is None
    out, finite = all_finite_or_none([tf.ones((2,))])
    assert bool(finite) and np.array_equal(out[0].numpy(), [1.0, 1.0])


def test_float16_training_with_loss_scaling_never_writes_nan():
    """mixed_float16, the trainer's loss-scaled optimiser groups, a loss scale of 2^20 so
    that the first steps overflow in float16: those steps are skipped by every group
    together (the net clock does not advance), the scale halves until steps go through,
    and nothing turns NaN."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = PIPNet(build_backbone("tiny_cnn", 32, seed=0), 3, seed=0)
        model.build((None, 32, 32, 3))
        stage = next(s for s in phases.make_plan(1, 2, 0, 0) if s.name == "full")
        opts = make_phase_optimizers(model.layer_groups(), 2, LearningRates(), 4, 2,
                                     loss_scale=True)
        opts.build()
        for optimizer in opts.active().values():
            optimizer.dynamic_scale.assign(2.0**20)
        model.set_trainable_groups(stage.trainable_groups)
        model.compile(opts.as_compile_args(), loss_weights=(5.0, 2.0, 2.0), net_clock=opts.clock)
        x = images(8)
        ds = tf.data.Dataset.from_tensor_slices((x, x[::-1].copy(), np.arange(8) % 3)).batch(4)
        history = model.fit(ds.repeat(5), epochs=1, steps_per_epoch=10, verbose=0).history
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.backbone.get_layer("stem_conv").compute_dtype == "float16"
    assert all(np.isfinite(v[0]) for v in history.values())
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)
    scales = {float(opt.dynamic_scale.numpy()) for opt in opts.active().values()}
    assert len(scales) == 1 and scales.pop() < 2.0**20  # lowered, and equal in every group
    steps = {int(opt.iterations.numpy()) for opt in opts.active().values()}
    assert len(steps) == 1  # every group applied the same steps
    applied = steps.pop()
    assert 0 < applied < 10 and int(opts.clock.numpy()) == applied


def test_precision_auto_on_gpus(monkeypatch):
    from trainers import experiment

    gpus = ["gpu0", "gpu1"]
    capability = {"gpu0": (8, 0), "gpu1": (7, 5)}
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda gpu: {"compute_capability": capability[gpu]})
    assert experiment.resolve_precision("auto") == "mixed_float16"  # one GPU lacks bf16
    capability["gpu1"] = (9, 0)
    assert experiment.resolve_precision("auto") == "mixed_bfloat16"
    assert experiment.resolve_precision("mixed_float16") == "mixed_float16"


@pytest.mark.parametrize("value,match", [
    ("", "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', 'needs a "cluster" and a "task"'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     "is not in its cluster"),
])
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, value, match):
    from trainers.experiment import make_strategy

    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ValueError, match=match):
        make_strategy("multi_worker")


def test_default_strategy_is_the_chief_and_writes_in_place(tmp_path):
    strategy = tf.distribute.get_strategy()
    assert distribution.is_chief(strategy) and not distribution.is_multi_worker(strategy)
    with distribution.worker_directory(tmp_path, strategy) as own:
        assert own == tmp_path
