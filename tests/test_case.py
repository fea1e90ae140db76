"""Shared test helpers: small shapes so every test runs on CPU in seconds."""
from __future__ import annotations

import json

import keras
import numpy as np


def run_layer_test(layer_factory, input_shape, tmp_path, expected_output_shape=None, seed=0):
    """Builds a layer, calls it eagerly and symbolically, checks the config JSON round
    trip and `.keras` save/load equality; returns the eager output."""
    x = np.random.default_rng(seed).random(input_shape).astype("float32")
    layer = layer_factory()
    y = np.asarray(layer(x))
    if expected_output_shape is not None:
        assert y.shape == tuple(expected_output_shape)
    symbolic = layer(keras.Input(input_shape[1:], batch_size=input_shape[0]))
    assert tuple(symbolic.shape) == y.shape
    assert tuple(layer.compute_output_shape(input_shape)) == y.shape

    config = layer.get_config()
    clone = layer.__class__.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config

    inputs = keras.Input(input_shape[1:])
    model = keras.Model(inputs, layer(inputs))
    path = tmp_path / "layer.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(restored(x)), np.asarray(model(x)), rtol=0, atol=0)
    return y
