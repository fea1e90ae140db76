"""Run as `python -m tests.run_helper CONFIG_JSON`: one training run of the `TrainConfig`
given as JSON, in this fresh process (as `trainers.run` would run it). Tests start it as
a subprocess to kill it, restart it, or run it as one worker of a cluster."""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

if __name__ == "__main__":
    from pipnet_tf.config import TrainConfig
    from trainers.experiment import run_training

    from absl import logging

    logging.set_verbosity(logging.INFO)
    config = TrainConfig.from_dict(json.loads(sys.argv[1]))
    if config.inter_op_threads:
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(config.inter_op_threads)
    run_training(config)
    print("RUN_DONE", flush=True)
