"""A plain CNN of the same size as PIP-Net's backbone, for the accuracy target of #14.

The backbone (`--net`, random init unless `--weights`), global average pooling and a
softmax Dense head, trained with cross-entropy on the same images and augmentation as
PIP-Net's second phase (bounding-box crops for CUB layouts; one of the two views), then
tested on the same test images as PIP-Net's `metrics.json` (crops for CUB).

    KERAS_BACKEND=tensorflow .venv/bin/python -m bench.plain_cnn_baseline \\
        --dataset=cub --data_dir=DIR [--image_size=128 --epochs=50]

Prints one JSON line: train and test top-1, epochs, seconds.
"""
from __future__ import annotations

import json
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "creatures", "--dataset of trainers.run")
flags.DEFINE_string("data_dir", "", "--data_dir of trainers.run")
flags.DEFINE_string("net", "tiny_cnn", "backbone")
flags.DEFINE_string("weights", "none", "backbone weights")
flags.DEFINE_integer("image_size", 0, "0: the recipe's size")
flags.DEFINE_integer("epochs", 0, "0: the recipe's phase-2 + pretraining epochs")
flags.DEFINE_integer("batch_size", 32, "batch size")
flags.DEFINE_integer("backbone_depth", 0, "tiny_cnn's last-stage 3x3 convs (0: the recipe's)")
flags.DEFINE_float("train_box_margin", None, "crop margin (default: the recipe's)")
flags.DEFINE_float("lr", 1e-3, "Adam learning rate")
flags.DEFINE_float("weight_decay", 1e-4, "AdamW weight decay")
flags.DEFINE_integer("seed", 1, "seed")
flags.DEFINE_string("cache_dir", ".cache/pipnet_tf", "dataset cache")


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    from pipnet_tf.backbones import build_backbone
    from pipnet_tf.data.datasets import build_data
    from trainers.configs import resolve_recipe

    config = resolve_recipe(FLAGS.dataset, {
        "data_dir": FLAGS.data_dir, "net": FLAGS.net, "weights": FLAGS.weights,
        "seed": FLAGS.seed, "cache_dir": FLAGS.cache_dir, "batch_size": FLAGS.batch_size,
        # No object masks: the softmax head has no background loss to feed them to.
        "background_loss": 0.0,
        **({"image_size": FLAGS.image_size} if FLAGS.image_size else {}),
        **({"backbone_depth": FLAGS.backbone_depth} if FLAGS.backbone_depth else {}),
        **({"train_box_margin": FLAGS.train_box_margin}
           if FLAGS.train_box_margin is not None else {})})
    keras.utils.set_random_seed(config.seed)
    data = build_data(config)
    backbone = build_backbone(config.net, config.image_size, config.weights, config.seed,
                              **config.backbone_options())
    model = keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(len(data.class_names), activation="softmax")])
    model.compile(keras.optimizers.AdamW(FLAGS.lr, weight_decay=FLAGS.weight_decay),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    epochs = FLAGS.epochs or config.epochs + config.epochs_pretrain
    train = data.train.epochs(0, epochs).map(lambda v1, v2, y: (v1, y))
    start = time.time()
    history = model.fit(train.prefetch(tf.data.AUTOTUNE), epochs=epochs,
                        steps_per_epoch=data.train.steps_per_epoch, verbose=2)
    test = model.evaluate(data.test.dataset(64), return_dict=True, verbose=0)
    print(json.dumps({"dataset": config.dataset, "net": config.net,
                      "image_size": config.image_size, "epochs": epochs,
                      **config.backbone_options(),
                      "train_box_margin": config.train_box_margin,
                      "train_top1": round(float(history.history["accuracy"][-1]), 4),
                      "test_top1": round(float(test["accuracy"]), 4),
                      "test_images": len(data.test), "seconds": round(time.time() - start, 1)}))


if __name__ == "__main__":
    app.run(main)
