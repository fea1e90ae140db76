"""Evaluate a finished run: accuracy and sizes, pruning, OoD (FPR95) and part purity.

    python -m trainers.evaluate --model runs/demo [--ood folder:PATH | dataset:cars:DIR ...] [--no_default_ood]

Writes RUN_DIR/evaluation.json and RUN_DIR/evaluation.md. For the built-in dataset its
`ood/*` folders are evaluated by default. The model is never modified.
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
from absl import app, flags, logging

from pipnet_tf import metrics, ood, purity
from pipnet_tf.data import pipeline
from pipnet_tf.explain.patches import collect_prototype_outputs, patch_geometry
from pipnet_tf.io import atomic_write_text, load_run, write_json

EVALUATION_FILE = "evaluation.json"
SUMMARY_FILE = "evaluation.md"


@dataclasses.dataclass
class RunData:
    """The images of a run's dataset, as paths (CUB layouts: with part annotations)."""

    class_names: list[str]
    image_size: int
    train_paths: list[str]
    train_labels: np.ndarray
    test_paths: list[str]
    test_labels: np.ndarray
    part_names: list[str]
    train_part_locs: np.ndarray | None
    test_part_locs: np.ndarray | None
    default_ood: dict[str, str]


def run_data(config: dict) -> RunData:
    """Re-opens the dataset a run was trained on: the built-in dataset and raw CUB layouts
    with their part annotations (for purity), any other source without."""
    from pipnet_tf.data.cub import load_cub_layout

    name = str(config.get("dataset", "synthetic")).split(":", 1)[0]
    image_size = int(config.get("image_size", 224))
    default_ood: dict[str, str] = {}
    if name == "synthetic":
        from pipnet_tf.data.synthetic import SyntheticSpec, write_synthetic_cub

        spec = SyntheticSpec(image_size=image_size,
                             train_per_class=int(config.get("synthetic_train_per_class", 120)),
                             test_per_class=int(config.get("synthetic_test_per_class", 50)))
        root = write_synthetic_cub(config.get("cache_dir", ".cache/pipnet_tf"), spec)
        default_ood = {p.name: str(p) for p in sorted((root / "ood").iterdir()) if p.is_dir()}
    elif name == "cub" and config.get("data_dir"):
        root = config["data_dir"]
    else:
        return _source_data(config, image_size)
    layout = load_cub_layout(root)
    train, test = layout.split("train"), layout.split("test")
    has_parts = bool(layout.part_names)
    return RunData(list(layout.class_names), image_size, train.paths, train.labels, test.paths,
                   test.labels, list(layout.part_names),
                   train.part_locs if has_parts else None, test.part_locs if has_parts else None,
                   default_ood)


def _source_data(config: dict, image_size: int) -> RunData:
    """Any other dataset the trainer reads (tfds, Cars, Pets, folders), through the same
    source lookup and image validation as training; full test images, no part annotations."""
    import dataclasses as dc

    from trainers.configs import TrainConfig
    from trainers.data import load_dataset_source, usable_records

    known = {f.name for f in dc.fields(TrainConfig)}
    train_config = TrainConfig(**{k: v for k, v in config.items() if k in known})
    source = load_dataset_source(train_config)
    cache = pathlib.Path(train_config.cache_dir) / "converted"
    train, _, _ = usable_records(source.train, cache, "training")
    test, _, _ = usable_records(source.test, cache, "test")
    return RunData(list(source.class_names), image_size, train.paths, train.labels, test.paths,
                   test.labels, [], None, None, {})


def _outputs(model, paths, labels, image_size, batch_size, verbose, what):
    logging.info("Running the model over %d %s images", len(paths), what)
    ds = pipeline.eval_dataset(list(paths), np.asarray(labels, np.int32), image_size, batch_size,
                               cache=False)
    return collect_prototype_outputs(model, ds, verbose)


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


def ood_images(spec: str, cache_dir: str) -> tuple[str, str, list[str]]:
    """An OoD source → (name, where, image files).

    `dataset:NAME[:DATA_DIR]` takes the test split of another dataset the project reads
    (cub, cars, pets, folder; as the paper's Table 2); anything else is an image folder
    (`folder:PATH`, `NAME=folder:PATH`).
    """
    if spec.startswith("dataset:"):
        from pipnet_tf.data.sources import load_source

        name, _, data_dir = spec.removeprefix("dataset:").partition(":")
        source = load_source(name, data_dir=data_dir, cache_dir=cache_dir)
        return source.name, source.origin, list(source.test.paths)
    name, path = ood.parse_source(spec)
    return name, path, ood.list_images(path)


def evaluate_run(run_dir: str | os.PathLike, ood_specs: list[str] = (), default_ood: bool = True,
                 batch_size: int = 64, verbose: int = 1, purity_k: int = purity.TOP_K) -> dict:
    """Evaluates RUN_DIR and writes evaluation.json + evaluation.md; returns the dict."""
    started = time.time()
    run_dir = pathlib.Path(run_dir)
    model, config = load_run(run_dir)
    data = run_data(config)
    kernel = model.classifier.kernel.numpy()
    multiplier = float(model.classifier.multiplier.numpy())
    test_out = _outputs(model, data.test_paths, data.test_labels, data.image_size, batch_size,
                        verbose, "test")
    train_out = _outputs(model, data.train_paths, data.train_labels, data.image_size, batch_size,
                         verbose, "training")
    result = {
        "run_dir": str(run_dir),
        "dataset": config.get("dataset"),
        "image_size": data.image_size,
        "latent_hw": [int(v) for v in test_out["latent_hw"]],
        "patch_size_and_skip": list(patch_geometry(data.image_size, int(test_out["latent_hw"][1]))),
        "num_classes": len(data.class_names),
        "num_prototypes": int(kernel.shape[0]),
        "test": metrics.classification_report(test_out["scores"], test_out["presence"],
                                              test_out["labels"], kernel, multiplier),
        **_pruning(model, kernel, train_out, test_out),
    }
    sources = ({name: (path, ood.list_images(path)) for name, path in data.default_ood.items()}
               if default_ood else {})
    for spec in ood_specs:
        name, where, files = ood_images(spec, config.get("cache_dir", ".cache/pipnet_tf"))
        sources[name] = (where, files)
    if sources:
        ood_scores = {}
        for name, (_, files) in sources.items():
            out = _outputs(model, files, np.zeros(len(files)), data.image_size, batch_size,
                           verbose, f"OoD '{name}'")
            ood_scores[name] = out["scores_raw"]
        result["ood"] = ood.ood_report(test_out["scores_raw"], ood_scores, id_name=str(config.get("dataset")))
        for name, (where, _) in sources.items():
            result["ood"]["sources"][name]["path"] = str(where)
    if data.part_names:
        result["purity"] = {}
        for split, out, paths, locs in (("train", train_out, data.train_paths, data.train_part_locs),
                                        ("test", test_out, data.test_paths, data.test_part_locs)):
            result["purity"][split] = purity.evaluate_purity(
                out, kernel, locs, data.part_names, purity.image_sizes(paths), k=purity_k)
    result["seconds"] = round(time.time() - started, 1)
    write_json(run_dir / EVALUATION_FILE, result)
    atomic_write_text(run_dir / SUMMARY_FILE, summary_markdown(result))
    return result


def summary_markdown(result: dict) -> str:
    """Human-readable summary of `evaluate_run`'s result."""
    t = result["test"]
    lines = [f"# Evaluation of {result['run_dir']}", "",
             (f"Dataset `{result['dataset']}`, {result['num_classes']} classes, "
              f"{result['num_prototypes']} prototypes, input {result['image_size']} px, latent "
              f"{result['latent_hw'][0]}x{result['latent_hw'][1]}, patch/skip "
              f"{result['patch_size_and_skip'][0]}/{result['patch_size_and_skip'][1]} px."), "",
             "## Test set", "", "| metric | value |", "|---|---:|"]
    for key, value in t.items():
        if not isinstance(value, (list, dict)):
            lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", "Confusion matrix (rows true, columns predicted):", "", "```"]
    lines += [" ".join(f"{v:4d}" for v in row) for row in t["confusion_matrix"]]
    lines += ["```", "", "## Pruning", "",
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
    args = parser.parse_args(argv[1:])
    flags.FLAGS(argv[:1])  # absl's own flags (logging) keep their defaults
    logging.set_verbosity(logging.INFO)
    return args


def main(args: argparse.Namespace) -> None:
    result = evaluate_run(args.model, args.ood, not args.no_default_ood, args.batch_size, args.verbose)
    run_dir = pathlib.Path(args.model)
    logging.info("Top-1 %.4f, global size %d. Wrote %s and %s", result["test"]["top1_accuracy"],
                 result["test"]["global_size"], run_dir / EVALUATION_FILE, run_dir / SUMMARY_FILE)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse, argv=sys.argv)
