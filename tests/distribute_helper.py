"""Run as a script (`STAGE [BACKBONE]`): trains one step and evaluates one global batch under the default
strategy and under MirroredStrategy over 2 logical CPUs; prints the results as JSON. The
"full" stage's batches carry object masks (the background loss)."""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from pipnet_tf import phases  # noqa: E402
from pipnet_tf.backbones import build_backbone  # noqa: E402
from pipnet_tf.model import PIPNet  # noqa: E402
from pipnet_tf.optimization import LearningRates, make_phase_optimizers  # noqa: E402

rng = np.random.default_rng(0)
X1 = (rng.random((8, 32, 32, 3)) * 255).astype("float32")
X2 = (rng.random((8, 32, 32, 3)) * 255).astype("float32")
Y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
MASKS = np.zeros((8, 32, 32, 1), "float32")  # object masks for the background loss
for i in range(8):
    MASKS[i, 2 * i:2 * i + 16, 16 - i:32 - i] = 1.0


def run(strategy, stage_name, backbone):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = PIPNet(build_backbone(backbone, 32, seed=0), 3, seed=0)
        model.build((None, 32, 32, 3))
    plan = phases.make_plan(1, 6, 3)
    stage = next(s for s in plan if s.name == stage_name)
    with strategy.scope():
        opts = make_phase_optimizers(model.layer_groups(), stage.phase, LearningRates(lr_block=1e-2, lr_net=1e-2), 1, 6)
        opts.build()
    model.set_trainable_groups(stage.trainable_groups)
    model.compile(opts.as_compile_args(), net_clock=opts.clock)
    model.set_loss_weights(*phases.loss_weights_for_epoch(stage, stage.first_epoch))
    if stage_name == "full":  # also the background loss, from per-image object masks
        model.set_background_loss_weight(2.0)
        ds = tf.data.Dataset.from_tensor_slices((X1, X2, Y, MASKS, MASKS[:, ::-1])).batch(8)
    else:
        ds = tf.data.Dataset.from_tensor_slices((X1, X2, Y)).batch(8)
    before = model.evaluate(ds, return_dict=True, verbose=0)
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False).history
    return {
        "replicas": strategy.num_replicas_in_sync,
        "eval": before,
        "train": {k: v[0] for k, v in history.items()},
        "weights": [w.numpy().ravel()[:50].tolist() for w in model.weights],
    }


if __name__ == "__main__":
    stage = sys.argv[1]
    backbone = sys.argv[2] if len(sys.argv) > 2 else "tiny_cnn"
    out = [run(tf.distribute.get_strategy(), stage, backbone),
           run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), stage, backbone)]
    print("RESULT" + json.dumps(out))
