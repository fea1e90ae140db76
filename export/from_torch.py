"""Convert a PIP-Net checkpoint of the authors' PyTorch code into a pipnet-tf run directory.

    python -m export.from_torch --checkpoint net_trained_last --net convnext_tiny_26 \
        --out runs/cub_authors [--class_names classes.txt] [--image_size 224] \
        [--dataset cub --data_dir DIR]

The checkpoint is what the reference's `main.py` saves (`checkpoints/net_pretrained`,
`net_trained`, `net_trained_last`, or the published trained models): a `torch.save` file,
read without PyTorch and without running code from it (`pipnet_tf.torch_checkpoint`).
`--net` must match the file's backbone (a mismatch is detected from its key names).

RUN_DIR gets what `trainers.run` writes, so `trainers.evaluate`, `trainers.explain`,
`export.saved_model` and `export.tflite` take it unchanged:

- `model.keras`: the float32 PIPNet (0..255 RGB in; the reference's ImageNet
  normalisation inside), loadable with `keras.saving.load_model` after `import pipnet_tf`;
- `config.json`: a `TrainConfig` naming the net, image size, add-on, bias, the checkpoint
  (`state_dict_dir_net`) and the dataset the images for evaluation, explanations and the
  TFLite parity gate come from: `--dataset`/`--data_dir`, by default the paper's dataset
  with that many classes (200: cub, 196: cars, 37: pets). `export.saved_model` needs no
  data at all;
- `class_names.txt`: from `--class_names` (one name per line, or CUB's `classes.txt` with
  its "1 001.Black_footed_Albatross" lines), else class_0… with a warning;
- `scoring_sheet.json`, and `conversion.json` (the checkpoint's path, size, SHA-256 and
  what it holds).

Prints one line: net, classes, prototypes, relevant prototypes (weight > 1e-3), sparsity.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import re
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import logging  # noqa: E402

from pipnet_tf import metrics  # noqa: E402
from pipnet_tf.cli import exit_on_user_error  # noqa: E402
from pipnet_tf.config import TrainConfig  # noqa: E402
from pipnet_tf.data.registry import parse_dataset  # noqa: E402
from pipnet_tf.io import atomic_output, write_json  # noqa: E402
from pipnet_tf.reference_checkpoint import (  # noqa: E402
    NETS,
    build_pipnet,
    check_net,
    inspect_state_dict,
    looks_untrained,
)
from pipnet_tf.runs import (  # noqa: E402
    CLASS_NAMES_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    SCORING_SHEET_FILE,
)
from pipnet_tf.torch_checkpoint import read_state_dict  # noqa: E402

CONVERSION_FILE = "conversion.json"
# The paper's datasets by class count: the default --dataset of a converted model.
PAPER_DATASETS = {200: "cub", 196: "cars", 37: "pets"}


def read_class_names(path: str | os.PathLike, num_classes: int) -> list[str]:
    """One class name per line (blank lines ignored), in score-column order. A file whose
    lines are all "<k> <name>" with k = 1, 2, … (CUB's classes.txt) gives the names.

    Raises:
        FileNotFoundError: no such file. ValueError: not `num_classes` names.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--class_names file {str(path)!r} does not exist.")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    numbered = [re.fullmatch(r"(\d+)\s+(\S.*)", name) for name in names]
    if names and all(numbered) and [int(m.group(1)) for m in numbered] == list(
            range(1, len(names) + 1)):
        names = [m.group(2) for m in numbered]
    if len(names) != num_classes:
        raise ValueError(f"--class_names file {str(path)!r} names {len(names)} classes; the "
                         f"checkpoint has {num_classes}.")
    return names


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dataset(dataset: str | None, num_classes: int) -> str:
    if dataset:
        parse_dataset(dataset)  # ValueError for an unknown name
        return dataset
    if num_classes in PAPER_DATASETS:
        logging.info("%d classes: writing dataset=%s into %s (pass --dataset to change it).",
                     num_classes, PAPER_DATASETS[num_classes], CONFIG_FILE)
        return PAPER_DATASETS[num_classes]
    logging.warning("No --dataset given and %d classes match none of the paper's datasets: "
                    "trainers.evaluate, trainers.explain and export.tflite will need one "
                    "(convert again with --dataset=folder:PATH or set 'dataset' in %s).",
                    num_classes, CONFIG_FILE)
    return "folder"


def convert_checkpoint(checkpoint: str | os.PathLike, net: str, out: str | os.PathLike,
                       class_names: str | os.PathLike | None = None, image_size: int = 224,
                       dataset: str | None = None, data_dir: str = "") -> dict:
    """Writes the run directory `out` (atomically; it must not exist, or be empty) for the
    reference checkpoint `checkpoint`; returns the summary written to conversion.json.

    Raises:
        FileNotFoundError, TorchCheckpointError (a ValueError), ValueError,
        FileExistsError: with a message naming the file or flag.
    """
    started = time.time()
    checkpoint, out = pathlib.Path(checkpoint), pathlib.Path(out)
    empty_dir = out.is_dir() and not any(out.iterdir())  # one the user made for the run
    if out.exists() and not empty_dir:
        raise FileExistsError(f"--out {str(out)!r} already exists; choose a new directory.")
    state_dict = read_state_dict(checkpoint)
    where = f"--checkpoint {str(checkpoint)!r}"
    net_info = inspect_state_dict(state_dict, where)
    check_net(net_info, net, where)  # before anything else is said or built
    names = (read_class_names(class_names, net_info.num_classes) if class_names else None)
    dataset = _dataset(dataset, net_info.num_classes)
    model = build_pipnet(state_dict, net, image_size, where)
    del state_dict
    if names is None:
        logging.warning("No --class_names: naming the classes class_0 … class_%d.",
                        net_info.num_classes - 1)
        names = [f"class_{k}" for k in range(net_info.num_classes)]
    kernel = model.classifier.kernel.numpy()
    if looks_untrained(kernel.T):
        logging.warning("%s: the scoring sheet looks untrained (a net_pretrained file?); "
                        "train it with `python -m trainers.run --state_dict_dir_net=%s`.",
                        where, checkpoint)
    config = TrainConfig(
        dataset=dataset, data_dir=data_dir, net=net, weights="none", image_size=int(image_size),
        num_features=net_info.num_prototypes if net_info.add_on else 0, bias=net_info.bias,
        log_dir=str(out), precision="float32", state_dict_dir_net=str(checkpoint.resolve()))
    summary = {
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_bytes": checkpoint.stat().st_size,
        "checkpoint_sha256": _sha256(checkpoint),
        "net": net,
        "architecture": net_info.describe(),
        "image_size": int(image_size),
        "num_classes": net_info.num_classes,
        "num_prototypes": net_info.num_prototypes,
        "relevant_prototypes": metrics.global_size(kernel),
        "sparsity_ratio": metrics.sparsity_ratio(kernel),
    }
    if empty_dir:
        out.rmdir()
    with atomic_output(out, directory=True, replace=False) as tmp:
        model.save(tmp / MODEL_FILE)
        write_json(tmp / CONFIG_FILE, config.to_dict())
        (tmp / CLASS_NAMES_FILE).write_text("\n".join(names) + "\n", encoding="utf-8")
        write_json(tmp / SCORING_SHEET_FILE, metrics.scoring_sheet(kernel, names))
        summary["seconds"] = round(time.time() - started, 1)
        write_json(tmp / CONVERSION_FILE, summary)
    return summary


def summary_line(summary: dict, out: str | os.PathLike) -> str:
    return (f"{summary['net']}: {summary['num_classes']} classes, {summary['num_prototypes']} "
            f"prototypes, {summary['relevant_prototypes']} relevant (weight > 1e-3), sparsity "
            f"{summary['sparsity_ratio']:.4f} -> {out}")


@exit_on_user_error("export.from_torch")
def main(argv):
    del argv
    from absl import flags

    FLAGS = flags.FLAGS
    summary = convert_checkpoint(FLAGS.checkpoint, FLAGS.net, FLAGS.out, FLAGS.class_names,
                                 FLAGS.image_size, FLAGS.dataset, FLAGS.data_dir)
    print(summary_line(summary, FLAGS.out), flush=True)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("checkpoint", None, "torch.save file written by the PIP-Net reference "
                        "(net_trained_last, net_pretrained, a published model).")
    flags.DEFINE_enum("net", None, sorted(NETS), "The checkpoint's --net.")
    flags.DEFINE_string("out", None, "Run directory to write (must not exist, or be empty).")
    flags.DEFINE_string("class_names", None, "Class names, one per line in the checkpoint's "
                        "class order (CUB's classes.txt works); default class_0, class_1, ….")
    flags.DEFINE_integer("image_size", 224, "Input size of the Keras model (the published "
                         "models were trained at 224).")
    flags.DEFINE_string("dataset", None, "Dataset for evaluate/explain/TFLite checks "
                        "(cub, cars, pets, folder:PATH, synthetic); default: by class count.")
    flags.DEFINE_string("data_dir", "", "Where that dataset lies (as trainers.run's --data_dir).")
    flags.mark_flags_as_required(["checkpoint", "net", "out"])
    app.run(main)
