"""Explain a trained PIP-Net: global prototype pictures, local explanations, HTML report.

    python -m trainers.explain --model RUN_DIR --images DIR --out DIR
    python -m trainers.explain --model RUN_DIR --report      # RUN_DIR/report/index.html

`--images` explains every image under DIR (recursive). `--report` explains a few test
images per class as the model is tested on them (bounding-box crops for CUB layouts), and
one image per OoD folder of a built-in dataset, and includes
RUN_DIR/evaluation.json when present (run trainers.evaluate first). The report opens from
disk in any browser; it needs no server. Unreadable files are skipped with one warning
naming them; when none is usable, nothing is written. Bad input exits with status 2 and
one line on stderr (-v 1 adds the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
from absl import app, logging

from pipnet_tf import ood
from pipnet_tf.data.datasets import ImageSet, TrainData, build_data, image_set_from_files
from pipnet_tf.explain import write_explanations
from pipnet_tf.cli import add_verbosity_argument, exit_on_user_error, parse_argparse
from pipnet_tf.runs import open_run
from trainers.evaluate import CACHE_DIR_HELP, EVALUATION_FILE

REPORT_DIR = "report"


def report_images(data: TrainData, image_size: int, cache_dir: str, per_class: int = 2,
                  per_ood: int = 1) -> list[ImageSet]:
    """The report's images: the first `per_class` test images of each class as top-1 is
    measured on them (`data.test`: bounding-box crops for CUB layouts), then the first
    `per_ood` images of each OoD folder that comes with the dataset (to show abstention)."""
    labels = np.asarray(data.test.labels)
    chosen = [i for c in range(len(data.class_names))
              for i in np.flatnonzero(labels == c)[:per_class]]
    sets = [data.test.select(chosen)]
    ood_paths = [path for folder in data.source.default_ood.values()
                 for path in ood.list_images(folder)[:per_ood]]
    if ood_paths:
        sets.append(image_set_from_files(ood_paths, image_size, cache_dir, "OoD images"))
    return sets


def explain_run(run_dir: str | os.PathLike, images: list[str] | None = None,
                out_dir: str | os.PathLike | None = None, k: int = 10, batch_size: int = 64,
                verbose: int = 1, cache_dir: str | None = None) -> pathlib.Path:
    """Writes the explanations and index.html; returns the index path. Unreadable files
    among `images` are skipped with one warning naming them; with none usable, ValueError
    is raised before anything is written. `cache_dir` overrides the run's."""
    run = open_run(run_dir, cache_dir)
    data = build_data(run.config, training=False)
    out_dir = pathlib.Path(out_dir) if out_dir else run.run_dir / REPORT_DIR
    if images is None:
        explained = report_images(data, run.image_size, run.config.cache_dir)
    else:
        explained = image_set_from_files(images, run.image_size, run.config.cache_dir,
                                         "images to explain")
    evaluation_path = run.run_dir / EVALUATION_FILE
    evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.is_file() else None
    return write_explanations(
        run.model, run.class_names, data.project, explained, out_dir, evaluation=evaluation,
        title=f"PIP-Net explanations: {run.run_dir.name} ({run.config.dataset})",
        k=k, batch_size=batch_size, verbose=verbose, part_names=data.part_names)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainers.explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory (holds model.keras)")
    parser.add_argument("--images", help="folder of images to explain (recursive)")
    parser.add_argument("--out", help="output folder (default RUN_DIR/report)")
    parser.add_argument("--report", action="store_true",
                        help="full report for the run with a few test images per class")
    parser.add_argument("--k", type=int, default=10, help="top-k patches per prototype")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--verbose", type=int, default=1, help="progress bars: 0 off, 1 on")
    parser.add_argument("--cache_dir", help=CACHE_DIR_HELP)
    add_verbosity_argument(parser)
    args = parse_argparse(parser, argv)
    if not args.images and not args.report:
        parser.error("pass --images DIR (with --out DIR) or --report")
    return args


@exit_on_user_error("trainers.explain")
def main(args: argparse.Namespace) -> None:
    images = ood.list_images(args.images, "--images folder") if args.images else None
    index = explain_run(args.model, images, args.out, args.k, args.batch_size, args.verbose,
                        cache_dir=args.cache_dir)
    logging.info("Explanations written; open %s", index.resolve())


if __name__ == "__main__":
    app.run(main, flags_parser=_parse, argv=sys.argv)
