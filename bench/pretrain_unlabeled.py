"""Does self-supervised pretraining on unlabeled images help a small labelled set? (#14 §3)

From a CUB-layout dataset (default: the built-in `creatures` benchmark) this makes
- a labelled subset: the first `--labelled_per_class` training images of each class and
  every test image (CUB layout, so purity and crops work as on the full set);
- an unlabeled tree: every training image, in no class folders (labels ignored),
and trains the from-scratch recipe with the same flags in each of `--arms`: on the subset
alone, with `--pretrain_data=folder:<unlabeled tree>`, and (optionally) with that and
`--pretrain_include_train`; then `trainers.evaluate` on each.

    KERAS_BACKEND=tensorflow .venv/bin/python -m bench.pretrain_unlabeled \\
        --data_dir=DIR --out=/tmp/pretrain_bench [--labelled_per_class=10] [--arms=A,B] \\
        [-- trainer flags]

Prints one JSON line per arm (top-1 on crops, purity, local size, seconds) and writes
them to OUT/results.json.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "", "CUB-layout dataset with part annotations")
flags.DEFINE_string("out", "/tmp/pipnet_pretrain_bench", "work directory")
flags.DEFINE_integer("labelled_per_class", 10, "labelled training images per class")
flags.DEFINE_string("cache_dir", ".cache/pipnet_tf", "dataset cache")
flags.DEFINE_list("arms", ["subset_alone", "unlabeled_pretraining"],
                  "arms to train: subset_alone, unlabeled_pretraining (--pretrain_data), "
                  "unlabeled_and_labelled_pretraining (+ --pretrain_include_train: the labelled "
                  "subset's images keep their boxes, so the background loss applies to them)")

CUB_PER_IMAGE = ("images.txt", "image_class_labels.txt", "train_test_split.txt",
                 "bounding_boxes.txt", "parts/part_locs.txt")


def _rows(path: pathlib.Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def make_subset(full: pathlib.Path, out: pathlib.Path, per_class: int) -> list[pathlib.Path]:
    """Writes the labelled subset's CUB layout to `out` (images symlinked); returns the
    paths of every training image of `full` (the unlabeled pool)."""
    labels = {r[0]: r[1] for r in _rows(full / "image_class_labels.txt")}
    is_train = {r[0]: r[1] == "1" for r in _rows(full / "train_test_split.txt")}
    paths = {r[0]: r[1] for r in _rows(full / "images.txt")}
    keep, taken = set(), {}
    for image_id in sorted(paths, key=int):
        if not is_train[image_id]:
            keep.add(image_id)
        elif taken.get(labels[image_id], 0) < per_class:
            taken[labels[image_id]] = taken.get(labels[image_id], 0) + 1
            keep.add(image_id)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    for name in CUB_PER_IMAGE:
        if (full / name).exists():
            lines = [" ".join(r) for r in _rows(full / name) if r[0] in keep]
            (out / name).write_text("\n".join(lines) + "\n")
    for name in ("classes.txt", "parts/parts.txt"):
        (out / name).write_text((full / name).read_text())
    if not (out / "images").exists():
        (out / "images").symlink_to((full / "images").resolve())
    return [full / "images" / paths[i] for i in paths if is_train[i]]


def make_unlabeled(images: list[pathlib.Path], out: pathlib.Path) -> None:
    """Symlinks every image into one flat folder (no class structure)."""
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        link = out / f"{i:05d}{image.suffix}"
        if not link.exists():
            link.symlink_to(image.resolve())


def run_arm(name: str, subset: pathlib.Path, work: pathlib.Path, extra: list[str]) -> dict:
    run_dir = work / name
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    started = time.time()
    subprocess.run([sys.executable, "-m", "trainers.run", "--dataset=cub",
                    f"--data_dir={subset}", "--net=tiny_cnn", "--weights=none",
                    f"--log_dir={run_dir}", f"--cache_dir={FLAGS.cache_dir}", "--noexport",
                    *extra], check=True, env=env)
    trained = time.time()
    subprocess.run([sys.executable, "-m", "trainers.evaluate", "--model", str(run_dir),
                    "--verbose", "0"], check=True, env=env)
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    purity = evaluation.get("purity", {}).get("train", {}).get("top10", {})
    test = evaluation["test"]
    return {"arm": name, "top1_crops": test["top1_accuracy"],
            "purity_top10_train": purity.get("mean"), "purity_prototypes":
            purity.get("num_prototypes"), "local_size": test["local_size_predicted_class"],
            "sparsity": test["sparsity_ratio"], "train_seconds": round(trained - started),
            "extra_flags": extra}


def main(argv):
    extra = list(argv[1:])
    work = pathlib.Path(FLAGS.out)
    full = pathlib.Path(FLAGS.data_dir)
    if not (full / "images.txt").is_file():
        sys.exit(f"--data_dir={FLAGS.data_dir!r} is not a CUB layout (no images.txt). The "
                 "built-in benchmark is drawn by `python -m trainers.run --dataset=creatures` "
                 "into --cache_dir (its path is logged).")
    subset = work / f"labelled_{FLAGS.labelled_per_class}_per_class"
    pool = make_subset(full, subset, FLAGS.labelled_per_class)
    unlabeled = work / "unlabeled"
    make_unlabeled(pool, unlabeled)
    arm_flags = {"subset_alone": [],
                 "unlabeled_pretraining": [f"--pretrain_data=folder:{unlabeled}"],
                 "unlabeled_and_labelled_pretraining": [f"--pretrain_data=folder:{unlabeled}",
                                                        "--pretrain_include_train"]}
    unknown = sorted(set(FLAGS.arms) - set(arm_flags))
    if unknown:
        sys.exit(f"--arms: unknown arm(s) {unknown}; choose from {sorted(arm_flags)}.")
    results = [run_arm(name, subset, work, [*arm_flags[name], *extra]) for name in FLAGS.arms]
    for row in results:
        print(json.dumps(row))
    (work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(main)
