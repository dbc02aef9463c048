"""End-to-end evaluation of detect-then-classify on labelled scenes (VOC, YOLO or COCO).

    python -m maskflow.evaluate_scenes DIR [--format voc|yolo|coco] [--class-map NAME=CLASS,...] [--names a,b,c]
                                       [--split test|val|train|all] [--model URI] [--limit N] [--out DIR]

DIR holds labelled scene photos in any format :mod:`maskflow.annotations` reads (by
default the one it finds). By default only its held-out (test) split is scored, split
exactly as the pipeline splits it; ``--split all`` scores every image (a set the model
never saw). Predicted faces are matched to labelled boxes at IoU >= 0.5 and, for the
per-class AP, also at IoU >= 0.3 (a box found but drawn otherwise than the annotators
draw it: ``python -m maskflow.calibrate`` learns their convention). Reported, from the
full ranked list of candidates: detection precision/recall (each face once), per-class
AP (VOC all-point interpolation, ranked by detector score x class score; an unsure face
also stands for each other class of probability >= ``detect.runner_up``), ``scenes_map50``
and ``scenes_map30`` (means over the classes present), accuracy of the classifier over
matched faces, a confusion matrix with "missed" and "spurious", and each rate's 95%
bootstrap interval over the images (``--bootstrap``). At the model's operating point
(or ``--min-score``), what a reader gets: ``op_precision``, ``op_recall``, ``op_f1`` of box
and label together, with intervals. stdout: the metrics as JSON; stderr: a table per
class, and every label file or image that could not be used.

    python -m maskflow.evaluate_scenes DIR --compare A.jsonl B.jsonl

scores two saved prediction files on the same images, paired (:func:`paired_bootstrap`):
is setting A really better than B on this split?
The evaluate stage runs the same code on the held-out scene split.

Exit codes: 0 every image was scored; 1 some label file or image could not be used (each
named on stderr, the others scored and reported); 2 bad arguments or no readable labels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from maskflow.annotations import FORMATS, LabelFormatError, SceneSet, add_label_args, label_options, read_scenes, require_mapped
from maskflow.config import CONF_DIR, compose_option, register_configs
from maskflow.data import read_manifest
from maskflow.detection.detector import MaskModel, build_detector
from maskflow.detection.options import add_detector_args, detector_settings
from maskflow.errors import cli
from maskflow.scoring import at_operating_point, compare, face_outcomes, format_table, run_scenes, split_names


@cli("maskflow.evaluate_scenes")
def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m maskflow.evaluate_scenes", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="labelled scenes: a VOC, YOLO or COCO folder (or a COCO JSON file)")
    add_label_args(parser)
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--split", default="test", choices=("test", "val", "train", "all"),
                        help="scenes of this split, as the pipeline splits the folder (default: the held-out test split; "
                             "all: every image, for a set the model never saw)")
    parser.add_argument("--manifest", type=Path, default=None, help="take --split from this prepare manifest.csv instead")
    parser.add_argument("--data", default=None,
                        help="the conf/data config of this folder: its split settings, and its format, class map and "
                             "names unless given here (default: mask-scenes-853's split settings, labels as the folder holds)")
    parser.add_argument("--limit", type=int, default=None)
    add_detector_args(parser)
    parser.add_argument("--out", type=Path, default=None, help="write metrics.json and predictions.jsonl here")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples for each rate's 95%% interval (0: none)")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("A.jsonl", "B.jsonl"), default=None,
                        help="no detection: score two prediction files (detect --jsonl, or an evaluate run's "
                             "scenes_predictions.jsonl) on the same images, paired: A's scenes_map50 minus B's")
    parser.add_argument("--classes", nargs="+", default=["mask_weared_incorrect", "with_mask", "without_mask"],
                        help="with --compare: the classes scored")
    parser.add_argument("--mlflow", action="store_true",
                        help="also log the metrics as an MLflow run (tag maskflow.command=evaluate_scenes), to compare "
                             "models on these scenes in the MLflow UI")
    args = parser.parse_args(argv)
    prog = "maskflow.evaluate_scenes"
    try:
        options = label_options(args)
        if args.data:  # the set's own config: how its labels read, unless given on the command line
            data = OmegaConf.to_container(compose_option("data", args.data))
            options = {"format": options["format"] or (data.get("format") if data.get("format") in FORMATS else None),
                       "names": options["names"] or data.get("names"), "class_map": options["class_map"] or data.get("class_map")}
        scenes = read_scenes(args.folder, **options)
        require_mapped(scenes)
    except (LabelFormatError, FileNotFoundError) as exc:  # no labels to read there, or no such --data config
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    for line in scenes.report_lines(prog):
        print(line, file=sys.stderr)
    if args.compare:
        # Scored as the models were (the shipped detect.runner_up), unless --runner-up says otherwise.
        runner_up = args.runner_up if args.runner_up is not None else _shipped_runner_up()
        print(json.dumps(compare(args.folder, *args.compare, args.classes, resamples=max(args.bootstrap, 1),
                                 runner_up=runner_up, scenes=scenes), indent=1))
        return 1 if scenes.problems else 0
    names = None
    if args.manifest and args.split != "all":
        names = {r["path"] for r in read_manifest(args.manifest, args.split)}
    elif args.split != "all":
        names = split_names(args.folder, args.split, args.data or "mask-scenes-853",
                            labels={**options, "format": scenes.format, "class_map": options["class_map"] or None})
    model = MaskModel.from_uri(args.model, args.tracking_uri)
    detector = build_detector(detector_settings(args, model.settings), model, finder_dirs=args.finder_dir)
    # mAP reads every candidate (detect_scenes); the operating point (the model's, or
    # --min-score) is where precision, recall and F1 of what a reader gets are reported.
    threshold = detector.min_score
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    results: list = []
    scored = run_scenes(detector, scenes.items(names, args.limit), args.out / "predictions.jsonl" if args.out else None,
                        resamples=args.bootstrap, results=results)
    if threshold is not None:
        at = at_operating_point(face_outcomes(results, detector.classes), threshold, resamples=args.bootstrap)
        scored["metrics"].update({"operating_point": threshold, **{f"op_{k}": v for k, v in at.items()}})
    scored["metrics"]["labels_skipped"] = float(len(scenes.problems))
    if args.out:
        (args.out / "metrics.json").write_text(json.dumps(scored, indent=1))
    for line in format_table({args.split: scored["metrics"]}, detector.classes):
        print(line, file=sys.stderr)
    print(json.dumps({"split": args.split, "format": scenes.format, **scored["metrics"]}, indent=1))
    if args.mlflow:
        _log_run(args, scenes, scored)
    # Scored the rest; some inputs failed.
    return 1 if scored["metrics"]["scenes_images_skipped"] or scenes.problems else 0


def _shipped_runner_up() -> float | None:
    """``detect.runner_up`` of the shipped default config: what the pipeline scores mAP with."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config").detect.get("runner_up")


def _log_run(args, scenes: SceneSet, scored: dict) -> None:
    """The scores as an MLflow run beside the training runs: models compared on the same scenes."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from maskflow.tracking import command_store, registered_version

    command_store(args.tracking_uri)
    name, version = registered_version(MlflowClient(), args.model)
    with mlflow.start_run(run_name=f"evaluate_scenes-{args.folder.resolve().name}-{args.split}",
                          tags={"maskflow.command": "evaluate_scenes"}):
        mlflow.log_params({"model": args.model, "model_version": f"{name} v{version}" if version else "",
                           "folder": str(args.folder.resolve()), "format": scenes.format, "split": args.split,
                           "data": args.data or ""})
        mlflow.log_metrics({k: v for k, v in scored["metrics"].items() if isinstance(v, float) and np.isfinite(v)})
        mlflow.log_dict(scored, "evaluate_scenes/metrics.json")


if __name__ == "__main__":
    sys.exit(main())
