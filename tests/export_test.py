"""The SavedModel's serving_default loads in a fresh process that imports only
TensorFlow and returns the Keras model's scores (≤ 1e-5)."""
import os
import subprocess
import sys
import textwrap

import numpy as np

from export.saved_model import export_saved_model
from tests.model_test import small_model


def test_saved_model_matches_keras_in_a_fresh_process(tmp_path):
    model = small_model(num_classes=4)
    kernel = model.classifier.kernel.numpy()
    kernel[::3] = 0.0  # some zero rows, as after training
    model.classifier.kernel.assign(kernel)
    export_saved_model(model, tmp_path / "sm", image_size=32)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    other_size = rng.integers(0, 256, (3, 48, 40, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "other.npy", other_size)
    script = textwrap.dedent(f"""
        import sys, numpy as np, tensorflow as tf
        sm = tf.saved_model.load({str(tmp_path / 'sm')!r})
        fn = sm.signatures["serving_default"]
        out = fn(images=tf.constant(np.load({str(tmp_path / 'images.npy')!r})))
        other = fn(images=tf.constant(np.load({str(tmp_path / 'other.npy')!r})))
        np.savez({str(tmp_path / 'out.npz')!r}, scores=out["scores"].numpy(),
                 presence=out["presence"].numpy(), other=other["scores"].numpy())
        try:
            fn(images=tf.zeros((1, 32, 32, 3), tf.float32))
        except (TypeError, ValueError, tf.errors.InvalidArgumentError) as e:
            print("REJECTED float32")
        assert "pipnet_tf" not in sys.modules, "the SavedModel needed pipnet_tf"
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REJECTED float32" in proc.stdout
    out = np.load(tmp_path / "out.npz")
    expected = model(images.astype("float32"), training=False)
    np.testing.assert_allclose(out["scores"], expected["scores"].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["presence"], expected["presence"].numpy(), atol=1e-5)
    assert out["other"].shape == (3, 4)
