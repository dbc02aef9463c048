"""``python -m maskflow.calibrate DIR``: learn how a labelled set draws its face boxes, and
register a model that answers in that convention.

    python -m maskflow.calibrate DIR [--format voc|yolo|coco] [--class-map NAME=CLASS,...] [--names a,b,c]
                                     [--model URI] [--fit N] [--alias NAME] [--no-register] [--out DIR]

Annotators disagree on what a face box is (brow to chin, or the whole head), and a model
scored at IoU 0.5 against another convention than its own looks far worse than it is.
This command reads DIR (VOC, YOLO or COCO: :mod:`maskflow.annotations`), sorts its
labelled images by file name, fits the model finder's box calibration on the first N
(``--fit``, default 50; :mod:`maskflow.detection.calibration`) and scores the rest
before and after: AP per class at IoU 0.5 and 0.3, each with its 95% bootstrap interval
over the images. The fit images are never scored. It logs an MLflow run (the numbers,
the calibration) and registers a new version of the same registered model, identical
but for the calibration, under the alias NAME (``--alias``, default ``calibrated``);
``detect``, the servers and ``evaluate_scenes`` then report its boxes in DIR's
convention with no extra flag (``--model models:/maskflow@calibrated``). The champion
moves only by promote's rules. Running it again on the same labels reuses that version.

Exit codes: 0 every label file and image was used; 1 some could not be (each named on
stderr; the rest fitted and scored) or nothing could be fitted; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from maskflow.annotations import LabelFormatError, LabelledImage, add_label_args, label_options, read_scenes, require_mapped
from maskflow.detection.boxes import calibrate_box
from maskflow.detection.calibration import fit_calibration
from maskflow.detection.detector import Detector, MaskModel, build_detector
from maskflow.detection.options import add_detector_args, detector_settings
from maskflow.errors import cli
from maskflow.imageio import DecodeError, Frame, read_image
from maskflow.scoring import format_table, scene_metrics
from maskflow.tracking import command_store, registered_version

PROG = "maskflow.calibrate"


def detect_all(detector: Detector, images: Sequence[LabelledImage]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each image's raw finder faces and their labelled records (the model's current
    calibration), in one pass; the images that could not be read, named."""
    seen, unreadable = [], []
    for image in tqdm(images, desc="scenes", unit="image", disable=None, leave=False):
        try:
            rgb = read_image(image.path).rgb
        except DecodeError as exc:
            unreadable.append(f"{image.rel}: {exc}")
            continue
        frame = Frame(str(image.path), 0, rgb, False)
        faces = detector.find(frame) or []
        seen.append({"image": image, "faces": faces, "records": detector.label(frame, faces),
                     "size": (rgb.shape[1], rgb.shape[0])})
    return seen, unreadable


def recalibrated(seen: Sequence[dict[str, Any]], calibration: dict[str, float] | None) -> list[tuple[list[dict], list]]:
    """(records, labels) per image with the boxes moved by ``calibration``: classification
    crops the raw box, so labels and scores stay as they were."""
    out = []
    for s in seen:
        records = [{**r, "box": [int(v) for v in calibrate_box(f.box, calibration, *s["size"])]}
                   for f, r in zip(s["faces"], s["records"])]
        out.append((records, list(s["image"].faces)))
    return out


def register(model_uri: str, calibration: dict[str, float], tags: dict[str, str], registered: str, alias: str,
             examples: Sequence[Path]) -> str:
    """A new version of ``registered``: the model at ``model_uri`` with ``calibration``
    stored for its finder, under ``alias`` (a version already holding the same files and
    settings is reused). Needs an active MLflow run."""
    import mlflow
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    from maskflow.detection.settings import DetectorSettings
    from maskflow.export import register_pyfunc

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    artifacts = {k: local / v["path"] for k, v in Model.load(str(local)).flavors["python_function"]["artifacts"].items()}
    meta = json.loads(artifacts["meta"].read_text())
    meta["detector"] = DetectorSettings.from_stored(meta.get("detector")).with_calibration(calibration).to_dict()
    finders = [artifacts[k] for k in sorted(artifacts) if k.startswith("finder_")]
    version = register_pyfunc(registered, artifacts["keras_model"], meta, local / "calibrated_meta.json", examples, tags,
                              artifacts.get("face_detector"), finders, artifacts.get("tflite_model"))
    MlflowClient().set_registered_model_alias(registered, alias, version)
    return version


@cli("maskflow.calibrate")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskflow.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="labelled scenes: a VOC, YOLO or COCO folder (or a COCO JSON file)")
    add_label_args(parser)
    parser.add_argument("--model", default="models:/maskflow@champion", help="MLflow model URI or local model folder")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else the project's sqlite store")
    parser.add_argument("--fit", type=int, default=50, help="fit on the first N labelled images by file name (default 50)")
    parser.add_argument("--alias", default="calibrated", help="the registered version's alias (default: calibrated)")
    parser.add_argument("--registered-model", default=None,
                        help="register under this name (default: the one --model names, else maskflow)")
    parser.add_argument("--no-register", dest="register", action="store_false", help="fit and score only")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples for each AP's 95%% interval (0: none)")
    parser.add_argument("--out", type=Path, default=None, help="write calibration.json (numbers, calibration) here")
    add_detector_args(parser)
    args = parser.parse_args(argv)
    # What this command did is in its own lines: MLflow's download bars and notes about
    # how it stores models say nothing a user can act on.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    if args.fit < 1:
        parser.error("--fit must be at least 1")
    try:
        scenes = read_scenes(args.folder, **label_options(args))
        require_mapped(scenes)
    except LabelFormatError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    for line in scenes.report_lines(PROG):
        print(line, file=sys.stderr)
    ordered = sorted(scenes.images, key=lambda im: im.rel)
    if len(ordered) <= args.fit:
        print(f"{PROG}: {len(ordered)} usable labelled images, and --fit {args.fit} leaves none to score: lower --fit",
              file=sys.stderr)
        return 2

    tracking_uri = command_store(args.tracking_uri)
    model = MaskModel.from_uri(args.model, tracking_uri)
    settings = detector_settings(args, model.settings)
    detector = build_detector(replace(settings, operating_point=None), model, finder_dirs=args.finder_dir)
    seen, unreadable = detect_all(detector, ordered)
    for line in unreadable:
        print(f"{PROG}: skipped {line}", file=sys.stderr)
    fitted_on = {im.rel for im in ordered[:args.fit]}
    fit_part, rest = [s for s in seen if s["image"].rel in fitted_on], [s for s in seen if s["image"].rel not in fitted_on]
    before_calibration = settings.calibration()
    try:
        calibration, fit = fit_calibration([([f.box for f in s["faces"]], [b for _, b in s["image"].faces], s["size"])
                                            for s in fit_part], before_calibration)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    classes, runner_up = detector.classes, detector.runner_up
    before = scene_metrics(recalibrated(rest, before_calibration), classes, runner_up, resamples=args.bootstrap)["metrics"]
    after = scene_metrics(recalibrated(rest, calibration), classes, runner_up, resamples=args.bootstrap)["metrics"]

    print(f"{args.folder} ({scenes.format}): fitted on the first {len(fit_part)} images by file name "
          f"({ordered[0].rel} .. {ordered[args.fit - 1].rel}), scored on the other {len(rest)}")
    print(f"box calibration of {settings.backend}: {calibration} (was {before_calibration}); {int(fit['pairs'])} faces "
          f"matched, median IoU {fit['median_iou']:.3f} after")
    for line in format_table({"before": before, "after": after}, classes):
        print(line)
    report = {"folder": str(args.folder), "format": scenes.format, "model": args.model, "backend": settings.backend,
              "fit_images": len(fit_part), "scored_images": len(rest), "calibration": calibration,
              "calibration_before": before_calibration, "fit": fit, "before": before, "after": after,
              "labels_skipped": [str(p) for p in scenes.problems], "unreadable": unreadable}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "calibration.json").write_text(json.dumps(report, indent=1))
    _log(args, report, ordered, before, after, calibration)
    return 1 if scenes.problems or unreadable else 0


def _log(args, report: dict, ordered: Sequence[LabelledImage], before: dict, after: dict, calibration: dict) -> None:
    """The MLflow run of this calibration and, unless ``--no-register``, the new version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    source_name, source_version = registered_version(client, args.model)
    registered = args.registered_model or source_name or "maskflow"
    with mlflow.start_run(run_name=f"calibrate-{args.folder.resolve().name}", tags={"maskflow.command": "calibrate"}):
        mlflow.log_params({"model": args.model, "source_version": source_version or "", "folder": str(args.folder.resolve()),
                           "format": report["format"], "fit_images": report["fit_images"],
                           "scored_images": report["scored_images"], "backend": report["backend"],
                           "class_map": args.class_map or "", **{f"calibration_{k}": v for k, v in calibration.items()}})
        mlflow.log_metrics({**{f"before_{k}": v for k, v in before.items() if np.isfinite(v)},
                            **{f"after_{k}": v for k, v in after.items() if np.isfinite(v)},
                            "calibration_pairs": report["fit"]["pairs"], "calibration_median_iou": report["fit"]["median_iou"]})
        mlflow.log_dict(report, "calibrate/calibration.json")
        if not args.register:
            return
        tags = {}
        if source_version:  # the classifier's own scores still hold; scene scores were of other boxes
            tags = {k: v for k, v in client.get_model_version(source_name, source_version).tags.items()
                    if k.startswith("test_") or k in ("backbone", "data_digest", "data_name", "params_total", "latency_ms_b1",
                                                      "operating_point")}
        tags.update({"calibrated_from": f"{source_name} v{source_version}" if source_version else args.model,
                     "calibration_data": str(args.folder.resolve()), "calibration": json.dumps(calibration),
                     "calibration_fit_images": str(report["fit_images"]),
                     "calibrated_map50": f"{after['scenes_map50']:.6g}", "calibrated_map30": f"{after['scenes_map30']:.6g}",
                     "calibrated_map50_before": f"{before['scenes_map50']:.6g}",
                     "run_id": mlflow.active_run().info.run_id})
        version = register(args.model, calibration, tags, registered, args.alias, [ordered[0].path])
    print(f"registered {registered} version {version} as @{args.alias}: python -m maskflow.detect PHOTOS --model "
          f"models:/{registered}@{args.alias}")


if __name__ == "__main__":
    sys.exit(main())
