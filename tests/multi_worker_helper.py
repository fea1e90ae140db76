"""Run as `python -m tests.multi_worker_helper IMAGE_DIR` with TF_CONFIG set: one worker
of a MultiWorkerMirroredStrategy cluster. Prints `RESULT{json}` with the labels of the
images this worker's input pipeline feeds in one epoch, and the losses and weights after
one training step on the global batch (see `multi_worker_test.py`)."""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import tensorflow as tf  # noqa: E402

# The strategy must exist before anything starts TensorFlow's runtime.
STRATEGY = tf.distribute.MultiWorkerMirroredStrategy() if __name__ == "__main__" else None

import keras  # noqa: E402
import numpy as np  # noqa: E402

from pipnet_tf.backbones import build_backbone  # noqa: E402
from pipnet_tf.data.augment import AugmentConfig  # noqa: E402
from pipnet_tf.data.pipeline import TwoViewSource  # noqa: E402
from pipnet_tf.model import PIPNet  # noqa: E402

SIZE, BATCH, SEED, LR = 32, 8, 3, 0.05


def source(image_dir: str) -> TwoViewSource:
    """16 images whose label is their index (so each one can be counted)."""
    paths = sorted(os.path.join(image_dir, name) for name in os.listdir(image_dir))
    return TwoViewSource(paths, np.arange(len(paths)), AugmentConfig.for_image_size(SIZE),
                         BATCH, seed=SEED)


def build_model(num_classes: int) -> PIPNet:
    model = PIPNet(build_backbone("tiny_cnn", SIZE, seed=0), num_classes, seed=0)
    model.build((None, SIZE, SIZE, 3))
    return model


def initial_weights() -> list[np.ndarray]:
    return build_model(16).get_weights()


def one_step(strategy: tf.distribute.Strategy, image_dir: str) -> dict:
    """Losses of, and weights after, one SGD step on the first global batch."""
    keras.utils.set_random_seed(SEED)
    data = source(image_dir)
    with strategy.scope():
        model = build_model(data.num_examples)
        optimizer = keras.optimizers.SGD(LR)
        optimizer.build(model.trainable_variables)
    model.compile([(optimizer, model.trainable_variables)], loss_weights=(5.0, 2.0, 2.0))
    history = model.fit(data.distributed_epochs(strategy, 0, 1), steps_per_epoch=1, epochs=1,
                        verbose=0).history
    return {"losses": {k: float(v[0]) for k, v in history.items()},
            "weights": [w.tolist() for w in model.get_weights()]}


def labels_seen(strategy: tf.distribute.Strategy, image_dir: str) -> list[int]:
    """Labels of one epoch of this worker's part of the distributed training input."""
    seen = []
    for _, _, labels in source(image_dir).distributed_epochs(strategy, 0, 1):
        for local in strategy.experimental_local_results(labels):
            seen.extend(int(y) for y in local.numpy())
    return seen


if __name__ == "__main__":
    image_dir = sys.argv[1]
    resolver = STRATEGY.cluster_resolver
    out = {"task": f"{resolver.task_type}-{resolver.task_id}",
           "labels": labels_seen(STRATEGY, image_dir), **one_step(STRATEGY, image_dir)}
    print("RESULT" + json.dumps(out), flush=True)
