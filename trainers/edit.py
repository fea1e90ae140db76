"""Correct a trained PIP-Net by hand: disable prototypes, optionally retrain only the
scoring sheet, and write the result as a new run directory.

    python -m trainers.edit --model RUN --disable 12,57 [--enable 3] --out RUN2
    python -m trainers.edit --model RUN --disable 12 --retrain_classifier_epochs 5 \
        [--dataset NAME --data_dir DIR --batch_size B --lr LR] --out RUN2
    python -m trainers.edit --model RUN --prune_weak_prototypes 0.3 --out RUN2

A disabled prototype's presence is set to 0 before the scoring sheet (the mask is part of
the saved model), so it adds nothing to any class score in Keras, evaluation, the report,
the SavedModel and TFLite. Its weights are kept (retraining leaves them alone), so
`--enable` restores it. With `--retrain_classifier_epochs N` the scoring sheet alone is
retrained for N epochs (the finetune stage's settings: 2·L_C, the run's `--lr`, cosine
restarts, everything else frozen), then unused prototypes are pruned as after training.
With `--prune_weak_prototypes F` (last) the prototypes whose largest weight is below F × the
mean of the classes' largest weights are dropped (every class keeps its strongest
connection), as the trainer's `--prune_weak_prototypes` does after training.

RUN2 gets model.keras, config.json (RUN's, with this edit appended to `edits`: source
run, disabled and enabled prototypes, retraining settings), class_names.txt,
metrics.json (on the test set, with RUN's figures on the same images under
`before_edit`), scoring_sheet.json and, when the run config says `export`, saved_model/.
It is written atomically; RUN is never modified. Editing an edited run accumulates.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from absl import app, logging  # noqa: E402

from pipnet_tf import editing, evaluation, metrics, phases  # noqa: E402
from pipnet_tf.cli import add_verbosity_argument, exit_on_user_error, parse_argparse  # noqa: E402
from pipnet_tf.config import TrainConfig  # noqa: E402
from pipnet_tf.data.datasets import TrainData, build_data  # noqa: E402
from pipnet_tf.io import (  # noqa: E402
    atomic_output,
    atomic_write_text,
    remove_stale_partials,
    write_json,
)
from pipnet_tf.model import PIPNet  # noqa: E402
from pipnet_tf.optimization import LearningRates  # noqa: E402
from pipnet_tf.runs import (  # noqa: E402
    CLASS_NAMES_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SCORING_SHEET_FILE,
    open_run,
)
from trainers.train import CHECKPOINT_DIR, PlanRunner  # noqa: E402

RETRAIN_DIR = "classifier_retraining"  # training_log.csv and tensorboard/ of the retraining
SAVED_MODEL_DIR = "saved_model"


def check_paths(run_dir: pathlib.Path, out_dir: pathlib.Path, overwrite: bool) -> None:
    """--out must be a new directory outside RUN (and must not contain it)."""
    run, out = run_dir.resolve(), out_dir.resolve()
    if out == run or run in out.parents or out in run.parents:
        raise ValueError(f"--out={str(out_dir)!r} must be a directory outside --model="
                         f"{str(run_dir)!r} (the source run is never modified).")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out={str(out_dir)!r} already exists; pass --overwrite to "
                              "replace it.")


def retrain_classifier(model: PIPNet, data: TrainData, epochs: int, config: TrainConfig,
                       work_dir: pathlib.Path, verbose: int = 0) -> None:
    """Trains only the scoring sheet for `epochs` epochs on `data.train` (the trainer's
    `PlanRunner` with `phases.classifier_only_plan`); the disabled prototypes' weights are
    put back afterwards (they get no gradient, only the per-step shrinkage)."""
    keras.utils.set_random_seed(config.seed)
    disabled = list(model.disabled_prototypes)
    kept = model.classifier.kernel.numpy()[disabled]
    rates = LearningRates(lr=config.lr, lr_block=config.lr_block, lr_net=config.lr_net,
                          weight_decay=config.weight_decay)
    runner = PlanRunner(model, phases.classifier_only_plan(epochs),
                        {2: data.train}, rates, work_dir,
                        checkpoints_to_keep=1, verbose=2 if verbose else 0)
    runner.run()
    if disabled:
        kernel = model.classifier.kernel.numpy()
        kernel[disabled] = kept
        model.classifier.kernel.assign(kernel)
    model.set_trainable_groups(model.layer_groups())  # as the trainer leaves a model
    shutil.rmtree(work_dir / CHECKPOINT_DIR, ignore_errors=True)  # nothing to resume


def edit_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike,
             disable: list[int] = (), enable: list[int] = (), retrain_epochs: int = 0,
             dataset: str | None = None, data_dir: str | None = None,
             batch_size: int | None = None, lr: float | None = None,
             export: bool | None = None, overwrite: bool = False, verbose: int = 1,
             prune_weak_prototypes: float = 0.0) -> dict:
    """Writes the edited copy of RUN_DIR to OUT_DIR (atomically); returns its metrics.

    Everything is checked before anything is written: the paths, that RUN_DIR is a run,
    the prototype ids and the dataset. `export` None follows the run's config.

    Raises:
        RunDirectoryError: RUN_DIR is not a run directory.
        ValueError: unknown prototype ids, --out inside RUN_DIR, nothing to do, ….
        FileExistsError: OUT_DIR exists and `overwrite` is False.
    """
    started = time.time()
    run_dir, out_dir = pathlib.Path(run_dir), pathlib.Path(out_dir)
    if not disable and not enable and retrain_epochs <= 0 and not prune_weak_prototypes:
        raise ValueError("Nothing to do: pass --disable, --enable, "
                         "--retrain_classifier_epochs and/or --prune_weak_prototypes.")
    metrics.check_prune_fraction(prune_weak_prototypes, "--prune_weak_prototypes")
    if retrain_epochs < 0:
        raise ValueError(f"--retrain_classifier_epochs must be >= 0, received {retrain_epochs}.")
    check_paths(run_dir, out_dir, overwrite)
    run = open_run(run_dir)
    source = run.model
    disabled = editing.resolve_disabled(source.disabled_prototypes, disable, enable,
                                        source.num_features)
    for ids, what in ((set(disable) & set(source.disabled_prototypes), "already disabled"),
                      (set(enable) - set(source.disabled_prototypes), "not disabled")):
        if ids:
            logging.warning("Prototypes %s are %s in %s; nothing changes for them.",
                            sorted(ids), what, run_dir)
    abstaining = [run.class_names[c] for c in
                  editing.abstaining_classes(source.classifier.kernel.numpy(), disabled)]
    if abstaining:
        logging.warning("With prototypes %s disabled, %d class(es) have no enabled "
                        "prototype left and will always abstain (score 0): %s",
                        list(disabled), len(abstaining), abstaining)
    changes = {k: v for k, v in (("dataset", dataset), ("data_dir", data_dir),
                                 ("batch_size", batch_size), ("lr", lr)) if v is not None}
    config = run.config.replace(**changes, log_dir=str(out_dir))
    data = build_data(config, training=retrain_epochs > 0)
    if len(data.class_names) != source.num_classes:
        raise ValueError(f"--dataset={config.dataset!r} has {len(data.class_names)} classes; "
                         f"the model in {str(run_dir)!r} has {source.num_classes}.")
    if data.class_names != run.class_names:
        logging.warning("%s names its classes differently from %s; keeping the run's names.",
                        config.dataset, run_dir / CLASS_NAMES_FILE)
    model = editing.with_disabled_prototypes(source, disabled)

    export = config.export if export is None else export
    remove_stale_partials(out_dir)  # left by a killed edit to the same --out
    with atomic_output(out_dir, directory=True, replace=overwrite) as tmp:
        pruned = []
        if retrain_epochs:
            retrain_classifier(model, data, retrain_epochs, config, tmp / RETRAIN_DIR, verbose)
            pruned = evaluation.prune_unused_prototypes(model,
                                                        data.project.dataset(config.batch_size))
        weak = (evaluation.prune_weak_prototypes(model, prune_weak_prototypes)
                if prune_weak_prototypes else None)
        test = data.test.dataset(config.batch_size)
        results = {
            **evaluation.evaluate(model, test),
            "before_edit": evaluation.evaluate(source, test),
            "disabled_prototypes": list(disabled),
            "abstaining_classes": abstaining,
            "retrained_classifier_epochs": int(retrain_epochs),
            "pruned_prototypes": pruned,
            "pruned_weak_prototypes": weak,
            "num_classes": len(run.class_names),
            "num_prototypes": model.num_features,
            "source_run": str(run.run_dir.resolve()),
        }
        entry = {
            "source_run": str(run.run_dir.resolve()),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "disable": sorted(set(int(p) for p in disable)),
            "enable": sorted(set(int(p) for p in enable)),
            "disabled_before": list(source.disabled_prototypes),
            "disabled_prototypes": list(disabled),
            "retrain_classifier": None if not retrain_epochs else {
                "epochs": int(retrain_epochs), "dataset": config.dataset,
                "data_dir": config.data_dir, "batch_size": config.batch_size, "lr": config.lr,
                "seed": config.seed, "pruned_prototypes": pruned},
            "pruned_weak_prototypes": weak,
        }
        config = config.replace(edits=[*run.config.edits, entry])
        model.save(str(tmp / MODEL_FILE))
        write_json(tmp / CONFIG_FILE, config.to_dict())
        atomic_write_text(tmp / CLASS_NAMES_FILE, "\n".join(run.class_names) + "\n")
        write_json(tmp / SCORING_SHEET_FILE,
                   metrics.scoring_sheet(model.enabled_kernel(), run.class_names))
        if export:
            from export.saved_model import export_saved_model

            export_saved_model(model, tmp / SAVED_MODEL_DIR, class_names=run.class_names)
        results["edit_seconds"] = round(time.time() - started, 1)
        write_json(tmp / METRICS_FILE, results)
    logging.info("Disabled prototypes %s. Test top-1 %.3f (was %.3f), global size %d (was %d), "
                 "abstained %d (was %d). Wrote %s", list(disabled), results["top1_accuracy"],
                 results["before_edit"]["top1_accuracy"], results["global_size"],
                 results["before_edit"]["global_size"], results["abstained"],
                 results["before_edit"]["abstained"], out_dir)
    return results


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainers.edit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory to edit (read only)")
    parser.add_argument("--out", required=True, help="the new run directory")
    parser.add_argument("--disable", default="", help="prototype ids to disable, e.g. 12,57")
    parser.add_argument("--enable", default="", help="disabled prototype ids to enable again")
    parser.add_argument("--retrain_classifier_epochs", type=int, default=0,
                        help="retrain only the scoring sheet for this many epochs")
    parser.add_argument("--prune_weak_prototypes", type=float, default=0.0,
                        help="drop the prototypes whose largest weight is below this fraction "
                        "of the mean of the classes' largest weights (last, after any "
                        "retraining)")
    parser.add_argument("--dataset", help="dataset for retraining and metrics (default: "
                        "the run's)")
    parser.add_argument("--data_dir", help="where that dataset lies (default: the run's)")
    parser.add_argument("--batch_size", type=int, help="default: the run's")
    parser.add_argument("--lr", type=float, help="scoring-sheet learning rate (default: the "
                        "run's)")
    parser.add_argument("--no_export", action="store_true",
                        help="do not write OUT/saved_model (written when the run config's "
                        "`export` is true)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--verbose", type=int, default=1, help="progress: 0 off, 1 on")
    add_verbosity_argument(parser)
    return parse_argparse(parser, argv)


@exit_on_user_error("trainers.edit")
def main(args: argparse.Namespace) -> None:
    edit_run(args.model, args.out, editing.parse_ids(args.disable, "--disable"),
             editing.parse_ids(args.enable, "--enable"), args.retrain_classifier_epochs,
             args.dataset, args.data_dir, args.batch_size, args.lr,
             export=False if args.no_export else None, overwrite=args.overwrite,
             verbose=args.verbose, prune_weak_prototypes=args.prune_weak_prototypes)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse, argv=sys.argv)
