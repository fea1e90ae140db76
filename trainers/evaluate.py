"""Evaluate a finished run: accuracy and sizes, pruning, OoD (FPR95) and part purity.

    python -m trainers.evaluate --model runs/demo [--ood folder:PATH | dataset:cars:DIR ...] [--no_default_ood]

Writes RUN_DIR/evaluation.json and RUN_DIR/evaluation.md. For the built-in dataset its
`ood/*` folders are evaluated by default. The model is never modified. Unreadable files
in OoD folders are skipped with one warning naming them. An abstention (every score
zero) counts as a wrong prediction in top-1 and top-5. Bad input exits with status 2
and one line on stderr (-v 1 adds the traceback).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
from absl import app, logging

from pipnet_tf import metrics, ood, purity
from pipnet_tf.data import registry
from pipnet_tf.data.datasets import ImageSet, build_data, dataset_request, image_set_from_files
from pipnet_tf.evaluation import collect_prototype_outputs
from pipnet_tf.io import atomic_write_text, write_json
from pipnet_tf.cli import add_verbosity_argument, exit_on_user_error, parse_argparse
from pipnet_tf.runs import RunDirectoryError, open_run

CACHE_DIR_HELP = ("where images are converted to PNG (CMYK, EXIF-rotated, ...) and the "
                  "built-in dataset is generated; default: the run's (config.json "
                  "cache_dir, relative to the current directory)")
EVALUATION_FILE = "evaluation.json"
SUMMARY_FILE = "evaluation.md"


def _outputs(model, images: ImageSet, batch_size: int, verbose: int, what: str) -> dict:
    logging.info("Running the model over %d %s images", len(images), what)
    return collect_prototype_outputs(model, images.dataset(batch_size), verbose)


def _pruning(model, kernel, train_out, test_out) -> dict:
    """Sizes before and after zeroing unused prototypes, computed on a copy of W."""
    pruned = metrics.unused_prototypes(train_out["presence"], kernel)
    after = np.array(kernel, copy=True)
    after[pruned, :] = 0.0
    bias = model.classifier.bias.numpy() if model.classifier.bias is not None else 0.0
    scores = test_out["presence"] @ metrics.effective_weights(after) + bias
    return {
        "pruned_prototypes": [int(d) for d in pruned],
        "before_pruning": metrics.summary(test_out["scores"], test_out["presence"],
                                          test_out["labels"], kernel),
        "after_pruning": metrics.summary(scores, test_out["presence"], test_out["labels"], after),
    }


def ood_images(spec: str, config, image_size: int) -> tuple[str, str, ImageSet]:
    """An OoD source → (name, where, images); unreadable files are skipped with a warning.

    `dataset:NAME[:DATA_DIR]` takes the test split of another dataset the project reads
    (as the paper's Table 2; `dataset:folder:PATH` for an image-folder dataset); anything
    else is an image folder (`folder:PATH`, `NAME=folder:PATH` or `PATH`).
    """
    if spec.startswith("dataset:"):
        name, _, rest = spec.removeprefix("dataset:").partition(":")
        registry.parse_dataset(name)
        path, data_dir = (rest, "") if registry.DATASETS[name].takes_path else ("", rest)
        request = dataclasses.replace(dataset_request(config), name=name, path=path,
                                      data_dir=data_dir)
        source = registry.open_dataset(request)
        files = list(source.test.paths)
        return source.name, source.origin, image_set_from_files(
            files, image_size, config.cache_dir, f"OoD '{source.name}' images")
    name, path = ood.parse_source(spec)
    return name, path, image_set_from_files(ood.list_images(path, "--ood folder"), image_size,
                                            config.cache_dir, f"OoD '{name}' images")


def evaluate_run(run_dir: str | os.PathLike, ood_specs: list[str] = (), default_ood: bool = True,
                 batch_size: int = 64, verbose: int = 1, purity_k: int = purity.TOP_K,
                 cache_dir: str | None = None) -> dict:
    """Evaluates RUN_DIR and writes evaluation.json + evaluation.md; returns the dict.

    Top-1 and the other classification figures are measured on the images the trainer
    tests on (`metrics.json`: bounding-box crops for CUB, under "test"); where those are
    crops, the full test images are reported as well ("test_full_images"). The OoD
    thresholds come from the same images as top-1. Purity uses the full images.
    `cache_dir` overrides the run's cache of generated and converted images.
    """
    started = time.time()
    run = open_run(run_dir, cache_dir)
    model, config = run.model, run.config
    data = build_data(config, training=False)
    if len(data.class_names) != model.num_classes:  # e.g. a converted model, wrong dataset
        raise RunDirectoryError(
            f"The model of {str(run.run_dir)!r} has {model.num_classes} classes, but its "
            f"dataset (config.json: dataset={config.dataset!r}, {data.source.origin}) has "
            f"{len(data.class_names)}; set the dataset it was trained on in config.json.")
    kernel = model.enabled_kernel()  # disabled prototypes' rows are zero
    multiplier = float(model.classifier.multiplier.numpy())
    geometry = model.patch_geometry(run.image_size)
    test_out = _outputs(model, data.test, batch_size, verbose, "test")
    train_out = _outputs(model, data.project, batch_size, verbose, "training")
    result = {
        "run_dir": str(run.run_dir),
        "dataset": config.dataset,
        "image_size": run.image_size,
        "latent_hw": list(geometry.grid),
        "patch_size_and_skip": [geometry.patch_size, geometry.skip(1)],
        "patch_geometry": geometry.to_dict(),
        "num_classes": len(run.class_names),
        "num_prototypes": int(kernel.shape[0]),
        "disabled_prototypes": [int(p) for p in model.disabled_prototypes],
        "test_images": "bounding-box crops" if data.policy.crop_test else "full images",
        "test": metrics.classification_report(test_out["scores"], test_out["presence"],
                                              test_out["labels"], kernel, multiplier),
        **_pruning(model, kernel, train_out, test_out),
    }
    test_full_out = test_out
    if data.test_full is not data.test:
        test_full_out = _outputs(model, data.test_full, batch_size, verbose, "full test")
        result["test_full_images"] = metrics.classification_report(
            test_full_out["scores"], test_full_out["presence"], test_full_out["labels"],
            kernel, multiplier)
    sources = ({name: (path, image_set_from_files(ood.list_images(path), run.image_size,
                                                  config.cache_dir, f"OoD '{name}' images"))
                for name, path in data.source.default_ood.items()} if default_ood else {})
    for spec in ood_specs:
        name, where, images = ood_images(spec, config, run.image_size)
        sources[name] = (where, images)
    if sources:
        ood_scores = {}
        for name, (_, images) in sources.items():
            ood_scores[name] = _outputs(model, images, batch_size, verbose,
                                        f"OoD '{name}'")["scores_raw"]
        result["ood"] = ood.ood_report(test_out["scores_raw"], ood_scores, id_name=config.dataset)
        result["ood"]["thresholds_from"] = result["test_images"]
        for name, (where, _) in sources.items():
            result["ood"]["sources"][name]["path"] = str(where)
    if not data.part_names and data.policy.part_annotations:
        logging.warning("%s has no part locations (parts/part_locs.txt; tfds's CUB has none): "
                        "no purity.", data.source.origin)
    if data.part_names:
        result["purity"] = {}
        for split, out, images in (("train", train_out, data.project),
                                   ("test", test_full_out, data.test_full)):
            result["purity"][split] = purity.evaluate_purity(
                out, kernel, images.part_locs, data.part_names, geometry, k=purity_k)
    result["seconds"] = round(time.time() - started, 1)
    write_json(run.run_dir / EVALUATION_FILE, result)
    atomic_write_text(run.run_dir / SUMMARY_FILE, summary_markdown(result))
    return result


def summary_markdown(result: dict) -> str:
    """Human-readable summary of `evaluate_run`'s result."""
    t = result["test"]
    lines = [f"# Evaluation of {result['run_dir']}", "",
             (f"Dataset `{result['dataset']}`, {result['num_classes']} classes, "
              f"{result['num_prototypes']} prototypes, input {result['image_size']} px, latent "
              f"{result['latent_hw'][0]}x{result['latent_hw'][1]}, patch/skip "
              f"{result['patch_size_and_skip'][0]}/{result['patch_size_and_skip'][1]} px."), "",
             *([f"Disabled prototypes (trainers.edit): {result['disabled_prototypes']}.", ""]
               if result.get("disabled_prototypes") else []),
             f"## Test set ({result['test_images']}, as in metrics.json)", "",
             *_metric_table(t)]
    lines += ["", "Confusion matrix (rows true, columns predicted):", "", "```"]
    lines += [" ".join(f"{v:4d}" for v in row) for row in t["confusion_matrix"]]
    lines += ["```", "", ("Abstained images (wrong in top-1 and top-5, not in the matrix) per "
                          f"true class: {t['abstained_per_class']}"), ""]
    if "test_full_images" in result:
        lines += ["## Test set, full images", "", *_metric_table(result["test_full_images"]), ""]
    lines += ["## Pruning", "",
              f"Pruned prototypes: {result['pruned_prototypes'] or 'none'}", "",
              "| | top-1 | global size | local size (all classes) |", "|---|---:|---:|---:|"]
    for key in ("before_pruning", "after_pruning"):
        r = result[key]
        lines.append(f"| {key.replace('_', ' ')} | {r['top1_accuracy']:.4f} | {r['global_size']} | "
                     f"{r['local_size_all_classes']:.2f} |")
    if "ood" in result:
        o = result["ood"]
        lines += ["", f"## Out-of-distribution detection (FPR{int(o['percentile'])}, paper Table 2)", "",
                  (f"Class thresholds accept {100 * o['id_accepted']:.1f}% of the ID test images "
                   f"({o['backoff_steps']} back-off steps)."), "", ood.markdown_table(o)]
    if "purity" in result:
        lines += ["", "## Prototype part purity (paper Table 3)", "",
                  "| images | patches | prototypes | purity (most frequent part) | purity (purest part) |",
                  "|---|---|---:|---:|---:|"]
        for split, variants in result["purity"].items():
            for name, v in variants.items():
                if isinstance(v, dict):
                    lines.append(f"| {split} | {name} | {v['num_prototypes']} | {v['mean']:.3f} ± "
                                 f"{v['std']:.3f} | {v['purest_part_mean']:.3f} ± {v['purest_part_std']:.3f} |")
    return "\n".join(lines) + "\n"


def _metric_table(report: dict) -> list[str]:
    lines = ["| metric | value |", "|---|---:|"]
    for key, value in report.items():
        if not isinstance(value, (list, dict)):
            lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float)
                         else f"| {key} | {value} |")
    return lines


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainers.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory (holds model.keras)")
    parser.add_argument("--ood", action="append", default=[],
                        help="OoD source (repeatable): an image folder, folder:PATH or "
                        "NAME=folder:PATH, or another dataset's test split, "
                        "dataset:NAME[:DATA_DIR] (cub, cars, pets, folder)")
    parser.add_argument("--no_default_ood", action="store_true",
                        help="skip the built-in dataset's ood/* folders")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--verbose", type=int, default=1, help="progress bars: 0 off, 1 on")
    parser.add_argument("--cache_dir", help=CACHE_DIR_HELP)
    add_verbosity_argument(parser)
    return parse_argparse(parser, argv)


@exit_on_user_error("trainers.evaluate")
def main(args: argparse.Namespace) -> None:
    result = evaluate_run(args.model, args.ood, not args.no_default_ood, args.batch_size,
                          args.verbose, cache_dir=args.cache_dir)
    run_dir = pathlib.Path(args.model)
    logging.info("Top-1 %.4f, global size %d. Wrote %s and %s", result["test"]["top1_accuracy"],
                 result["test"]["global_size"], run_dir / EVALUATION_FILE, run_dir / SUMMARY_FILE)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse, argv=sys.argv)
