"""End-to-end evaluation of detect-then-classify on VOC-annotated scenes.

    python -m maskflow.evaluate_scenes DIR [--split test|val|train|all] [--model URI] [--limit N] [--out DIR]

DIR holds ``images/`` and ``annotations/`` (PASCAL VOC). By default only its held-out
(test) split is scored, split exactly as the pipeline splits it. Predicted faces are matched to
ground-truth boxes at IoU >= 0.5. Reported, from the full ranked list of candidates:
detection precision/recall (each face once), per-class AP (VOC all-point interpolation,
ranked by detector score x class score; an unsure face also stands for each other class
of probability >= ``detect.runner_up``), ``scenes_map50`` (mean over classes present),
accuracy of the classifier over matched faces, a confusion matrix with "missed" and
"spurious", and the 95% bootstrap interval of ``scenes_map50`` over the images
(``--bootstrap``). At the model's operating point (or ``--min-score``), what a reader
gets: ``op_precision``, ``op_recall``, ``op_f1`` of box and label together, with intervals.

    python -m maskflow.evaluate_scenes DIR --compare A.jsonl B.jsonl

scores two saved prediction files on the same images, paired (:func:`paired_bootstrap`):
is setting A really better than B on this split?
The evaluate stage runs the same code on the held-out scene split.

Exit codes: 0 every image was scored; 1 some image could not be read (each named on
stderr, the others scored and reported); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from hydra import compose, initialize_config_dir
from tqdm import tqdm

from maskflow.config import CONF_DIR, register_configs
from maskflow.contracts import StageContext
from maskflow.data import read_manifest, voc_items
from maskflow.detect import MaskModel, add_detector_args, build_detector, detector_settings, one_per_face, rank_score
from maskflow.detection.boxes import iou
from maskflow.imageio import DecodeError, Frame, read_image
from maskflow.prepare import run as prepare_run

IOU = 0.5
log = logging.getLogger(__name__)


def average_precision(scores: list[float], hits: list[bool], n_truth: int) -> float:
    """VOC all-point interpolated AP of ranked predictions (hits: matched a new truth)."""
    if n_truth == 0:
        return float("nan")
    if not scores:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.cumsum(np.asarray(hits, dtype=float)[order])
    fp = np.cumsum(1.0 - np.asarray(hits, dtype=float)[order])
    recall = tp / n_truth
    precision = tp / np.maximum(tp + fp, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def _greedy_match(preds: list[dict], truths: list[tuple[str, tuple]], same_class: bool, min_iou: float = IOU) -> list[int | None]:
    """For each prediction (in descending score order), the index of the truth it takes."""
    taken: set[int] = set()
    result: list[int | None] = [None] * len(preds)
    for i in sorted(range(len(preds)), key=lambda k: -preds[k]["rank_score"]):
        best, best_iou = None, min_iou
        for j, (label, box) in enumerate(truths):
            if j in taken or (same_class and label != preds[i]["label"]):
                continue
            overlap = iou(preds[i]["box"], box)
            if overlap >= best_iou:
                best, best_iou = j, overlap
        if best is not None:
            taken.add(best)
            result[i] = best
    return result


def class_records(preds: Sequence[dict], runner_up: float | None) -> list[dict]:
    """The records per-class AP ranks: each face for its label and, with ``runner_up``,
    also for each other class of at least that probability (score: that probability, so
    ranked lower). Records without ``probs`` (files written before 2026-12-04 already hold
    a record per class) pass as they are."""
    out = []
    for p in preds:
        out.append(p)
        if runner_up and p.get("probs"):
            for c, prob in sorted(p["probs"].items(), key=lambda kv: -kv[1]):
                if c != p["label"] and prob >= runner_up:
                    out.append({**p, "label": c, "score": prob})
    return out


def score_scenes(results: list[tuple[list[dict], list[tuple[str, tuple]]]], classes: Sequence[str], min_iou: float = IOU,
                 runner_up: float | None = None) -> dict:
    """Metrics from (predictions, ground truths) per image; a match needs IoU >= ``min_iou``.
    Per-class AP ranks every face for its label and, with ``runner_up``, for each other
    likely class (:func:`class_records`); detection precision/recall, accuracy and the
    confusion matrix take each face once, with its most likely class."""
    n_pred = n_truth = n_matched = n_correct = 0
    labels = list(classes)
    rows = labels + ["spurious"]
    cols = labels + ["missed"]
    cm = np.zeros((len(rows), len(cols)), dtype=np.int64)
    per_class = {c: {"scores": [], "hits": [], "n": 0} for c in labels}
    other_truths = 0
    for preds, truths in results:
        preds = class_records(preds, runner_up)
        for p in preds:
            p["rank_score"] = rank_score(p)
        truths_known = [(lab, box) for lab, box in truths if lab in labels]
        other_truths += len(truths) - len(truths_known)
        faces = one_per_face(preds)
        n_pred += len(faces)
        n_truth += len(truths_known)
        any_match = _greedy_match(faces, truths_known, same_class=False, min_iou=min_iou)
        matched_truths = set()
        for p, j in zip(faces, any_match):
            if j is None:
                cm[rows.index("spurious"), cols.index(p["label"])] += 1
            else:
                matched_truths.add(j)
                n_matched += 1
                n_correct += int(p["label"] == truths_known[j][0])
                cm[rows.index(truths_known[j][0]), cols.index(p["label"])] += 1
        for j, (lab, _) in enumerate(truths_known):
            if j not in matched_truths:
                cm[rows.index(lab), cols.index("missed")] += 1
        class_match = _greedy_match(preds, truths_known, same_class=True, min_iou=min_iou)
        for p, j in zip(preds, class_match):
            per_class[p["label"]]["scores"].append(p["rank_score"])
            per_class[p["label"]]["hits"].append(j is not None)
        for lab, _ in truths_known:
            per_class[lab]["n"] += 1
    metrics = {
        "scenes_images": float(len(results)),
        "scenes_faces": float(n_truth),
        "scenes_det_precision": n_matched / n_pred if n_pred else 0.0,
        "scenes_det_recall": n_matched / n_truth if n_truth else 0.0,
        "scenes_cls_accuracy": n_correct / n_matched if n_matched else 0.0,
        "scenes_ignored_other_classes": float(other_truths),
    }
    aps = []
    for c in labels:
        ap = average_precision(per_class[c]["scores"], per_class[c]["hits"], per_class[c]["n"])
        if ap == ap:
            metrics[f"scenes_ap50_{c}"] = ap
            aps.append(ap)
    metrics["scenes_map50"] = float(np.mean(aps)) if aps else 0.0
    return {"metrics": metrics, "confusion": {"rows": rows, "cols": cols, "matrix": cm.tolist()}}


def headroom(results: list[tuple[list[dict], list[tuple[str, tuple]]]], classes: Sequence[str]) -> dict[str, float]:
    """Where the gap of ``scenes_map50`` lies, from the same predictions: AP of the faces
    alone (any class, ranked by detector score) at IoU 0.5 and at a looser 0.3 (boxes found
    but badly placed), and ``scenes_map50`` had each detection that matches a face been
    given that face's true class (the ceiling of better labels on these boxes). Meant for
    one box per face (``peaks=face``): the CenterNet's extra per-class boxes count as duplicates."""
    known = [([{**p, "score": 1.0} for p in one_per_face(preds)], [(lab, box) for lab, box in truths if lab in classes])
             for preds, truths in results]
    faces = [([{**p, "label": "face"} for p in preds], [("face", box) for _, box in truths]) for preds, truths in known]
    relabelled = []
    for preds, truths in known:
        for p in preds:
            overlaps = [iou(p["box"], box) for _, box in truths]
            if overlaps and max(overlaps) >= IOU:
                p["label"] = truths[int(np.argmax(overlaps))][0]
        relabelled.append((preds, truths))
    return {"face_ap50": score_scenes(faces, ["face"])["metrics"]["scenes_map50"],
            "face_ap30": score_scenes(faces, ["face"], min_iou=0.3)["metrics"]["scenes_map50"],
            "map50_true_labels": score_scenes(relabelled, classes)["metrics"]["scenes_map50"]}


def bootstrap_map50(results: list[tuple[list[dict], list[tuple[str, tuple]]]], classes: Sequence[str], resamples: int = 200,
                    level: float = 0.95, seed: int = 0, runner_up: float | None = None) -> tuple[float, float]:
    """Percentile interval of ``scenes_map50`` over images drawn with replacement: how far
    the number could move with another sample of scenes like these. AP pools faces over
    images, so a test split where one crowd photo holds a sixth of the faces is noisy,
    and a difference between two settings inside this width is not yet a difference."""
    rng = np.random.default_rng(seed)
    values = [score_scenes([results[i] for i in rng.integers(len(results), size=len(results))], classes,
                           runner_up=runner_up)["metrics"]["scenes_map50"]
              for _ in range(resamples)] if results else [0.0]
    return _interval(values, level)


def _interval(values: Sequence[float], level: float) -> tuple[float, float]:
    """The central ``level`` share of ``values`` (percentiles)."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(a: list[tuple[list[dict], list[tuple[str, tuple]]]], b: list[tuple[list[dict], list[tuple[str, tuple]]]],
                     classes: Sequence[str], resamples: int = 500, level: float = 0.95, seed: int = 0,
                     runner_up: float | None = None) -> dict[str, float]:
    """Two prediction sets on the same images (aligned), resampled together: ``scenes_map50``
    of ``a`` minus that of ``b``, its interval, and the share of resamples where ``a``
    scores higher. Pairing removes what both share (which scenes are hard), so it
    separates two settings far better than their two intervals do."""
    if len(a) != len(b):
        raise ValueError(f"paired scoring needs the same images: {len(a)} against {len(b)}")
    rng = np.random.default_rng(seed)

    def map50(rows):
        return score_scenes(rows, classes, runner_up=runner_up)["metrics"]["scenes_map50"]

    deltas = []
    for _ in range(resamples):
        idx = rng.integers(len(a), size=len(a))
        deltas.append(map50([a[i] for i in idx]) - map50([b[i] for i in idx]))
    low, high = _interval(deltas, level)
    return {"delta": map50(a) - map50(b),
            "delta_ci95_low": low, "delta_ci95_high": high, "a_higher": float(np.mean(np.array(deltas) > 0))}


# ------------------------------------------------------------- the operating point
# mAP ranks every candidate; a person reads the faces reported at one threshold of the
# ranking score (detector score x class score). These functions choose that threshold on
# one split and say what a reader gets at it on another: each reported face is right when
# its box matches an annotated face (IoU >= 0.5, greedily by rank) and its label is that
# face's; precision, recall and F1 count box and label together.


@dataclass(frozen=True)
class ImageOutcome:
    """One image's faces as a reader sees them (one per face), ranked."""

    scores: np.ndarray  # ranking score of each face
    right: np.ndarray  # bool: box and label right
    labels: tuple[str, ...]  # the label reported for each face
    n_truth: int  # annotated faces of the scored classes


def face_outcomes(results: Sequence[tuple[list[dict], list[tuple[str, tuple]]]], classes: Sequence[str],
                  min_iou: float = IOU) -> list[ImageOutcome]:
    """Per image, whether each face it reports is right (see above)."""
    out = []
    for preds, truths in results:
        known = [(lab, box) for lab, box in truths if lab in classes]
        # What can be reported: a face the landmark check rejects never is, at any threshold.
        faces = [{**p, "rank_score": rank_score(p)} for p in one_per_face(preds) if not p.get("implausible")]
        match = _greedy_match(faces, known, same_class=False, min_iou=min_iou)
        right = [j is not None and f["label"] == known[j][0] for f, j in zip(faces, match)]
        out.append(ImageOutcome(np.array([f["rank_score"] for f in faces], np.float64), np.array(right, bool),
                                tuple(f["label"] for f in faces), len(known)))
    return out


def operating_curve(outcomes: Sequence[ImageOutcome]) -> dict[str, np.ndarray]:
    """Precision, recall and F1 at every threshold a face's score sets (descending)."""
    scores = np.concatenate([o.scores for o in outcomes]) if outcomes else np.zeros(0)
    right = np.concatenate([o.right for o in outcomes]) if outcomes else np.zeros(0, bool)
    n_truth = sum(o.n_truth for o in outcomes)
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], np.cumsum(right[order])
    reported = np.arange(1, len(scores) + 1)
    last = np.r_[scores[1:] != scores[:-1], True][: len(scores)]  # a threshold keeps every face of its score
    scores, tp, reported = scores[last], tp[last], reported[last]
    return {"threshold": scores, "precision": tp / reported, "recall": tp / max(n_truth, 1),
            "f1": 2 * tp / (reported + n_truth)}


def choose_operating_point(outcomes: Sequence[ImageOutcome], rule: str = "f1", precision: float | None = None) -> float:
    """The threshold that ``rule`` picks on these outcomes: ``f1``, the best F1;
    ``precision``, the lowest threshold (most faces found) whose precision is at least
    ``precision``, or the most precise one if none is."""
    curve = operating_curve(outcomes)
    if not len(curve["threshold"]):
        raise ValueError("no face was found on these scenes: there is no operating point to choose")
    if rule == "f1":
        pick = int(np.argmax(curve["f1"]))
    elif rule == "precision":
        if precision is None:
            raise ValueError("operating_point.rule=precision needs operating_point.precision (e.g. 0.9)")
        reached = np.nonzero(curve["precision"] >= precision)[0]
        if len(reached):
            pick = int(reached[-1])
        else:
            pick = int(np.argmax(curve["precision"]))
            log.warning("operating point: no threshold reaches precision %.2f; the most precise one (%.3f) is used",
                        precision, curve["precision"][pick])
    else:
        raise ValueError(f"unknown operating_point.rule {rule!r} (f1 | precision)")
    return float(curve["threshold"][pick])


def at_operating_point(outcomes: Sequence[ImageOutcome], threshold: float, resamples: int = 0, level: float = 0.95,
                       seed: int = 0) -> dict[str, float]:
    """What a reader gets at ``threshold``: precision, recall and F1 of box and label, faces
    reported, false faces per image and false ``without_mask`` per 100 images; with
    ``resamples``, 95% bootstrap intervals over the images."""
    tp = np.array([int((o.right & (o.scores >= threshold)).sum()) for o in outcomes], np.float64)
    reported = np.array([int((o.scores >= threshold).sum()) for o in outcomes], np.float64)
    truths = np.array([o.n_truth for o in outcomes], np.float64)
    false_without = np.array([sum(1 for s, r, lab in zip(o.scores, o.right, o.labels)
                                  if s >= threshold and not r and lab == "without_mask") for o in outcomes], np.float64)

    def rates(tp_, rep_, n_):
        return (tp_ / np.maximum(rep_, 1), tp_ / np.maximum(n_, 1), 2 * tp_ / np.maximum(rep_ + n_, 1))

    p, r, f1 = rates(tp.sum(), reported.sum(), truths.sum())
    images = max(1, len(outcomes))
    out = {"precision": float(p), "recall": float(r), "f1": float(f1), "reported": float(reported.sum()),
           "right": float(tp.sum()), "faces": float(truths.sum()),
           "false_per_image": float((reported.sum() - tp.sum()) / images),
           "false_without_mask_per_100": float(100 * false_without.sum() / images)}
    if resamples and outcomes:
        rng = np.random.default_rng(seed)
        idx = rng.integers(len(outcomes), size=(resamples, len(outcomes)))
        for name, values in zip(("precision", "recall", "f1"), rates(tp[idx].sum(1), reported[idx].sum(1), truths[idx].sum(1))):
            out[f"{name}_ci95_low"], out[f"{name}_ci95_high"] = _interval(values, level)
    return out


def _predictions_by_image(jsonl: Path) -> dict[str, list[dict]]:
    """Image name -> faces, from JSON lines of ``maskflow.detect --jsonl`` (or an evaluate run)."""
    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    return {Path(r["source"]).name: r["faces"] for r in rows if r.get("frame", 0) == 0}


def compare(folder: Path, jsonl_a: Path, jsonl_b: Path, classes: Sequence[str], resamples: int = 500,
            runner_up: float | None = None) -> dict[str, float]:
    """:func:`paired_bootstrap` of two JSON-lines prediction files against ``folder``'s
    annotations, over the images both files cover."""
    a, b = _predictions_by_image(jsonl_a), _predictions_by_image(jsonl_b)
    names = sorted(set(a) & set(b))
    items = voc_items(Path(folder), set(names))
    truths = {Path(path).name: t for path, t in items}
    names = [n for n in names if n in truths]
    pairs = paired_bootstrap([(a[n], truths[n]) for n in names], [(b[n], truths[n]) for n in names], classes, resamples,
                             runner_up=runner_up)
    return {"images": float(len(names)), **pairs}


def detect_scenes(detector, items: Sequence[tuple[Path, list[tuple[str, tuple]]]], jsonl: Path | None = None
                  ) -> tuple[list[tuple[list[dict], list[tuple[str, tuple]]]], int, float]:
    """Detect and classify each scene image: (predictions, annotations) per image read,
    the number of images that could not be read (each named on stderr) and the seconds
    per image; every candidate is kept (:meth:`maskflow.detect.Detector.ranked`), whatever
    the detector's operating point."""

    results, skipped, started = [], 0, time.perf_counter()
    out = open(jsonl, "w", encoding="utf-8") if jsonl else None
    try:
        for path, truths in tqdm(items, desc="scenes", unit="image", disable=None, leave=False):
            try:
                rgb = read_image(path).rgb
            except DecodeError as exc:  # counted in the metrics, named here
                skipped += 1
                print(f"maskflow.evaluate_scenes: skipped {path}: {exc}", file=sys.stderr)
                continue
            preds = detector.ranked(Frame(str(path), 0, rgb, False))
            results.append((preds, truths))
            if out:
                out.write(json.dumps({"source": str(path), "frame": 0, "faces": preds}) + "\n")
    finally:
        if out:
            out.close()
    return results, skipped, (time.perf_counter() - started) / max(1, len(results))


def run_scenes(detector, items: Sequence[tuple[Path, list[tuple[str, tuple]]]], jsonl: Path | None = None,
               resamples: int = 0, results: list | None = None) -> dict:
    """Detect and classify each scene image; score against its annotations. With
    ``resamples``, also the 95% bootstrap interval of scenes_map50 (:func:`bootstrap_map50`).
    ``results``, when given a list, receives the (predictions, annotations) pairs."""

    found, skipped, seconds = detect_scenes(detector, items, jsonl)
    if results is not None:
        results.extend(found)
    scored = score_scenes(found, detector.classes, runner_up=detector.runner_up)
    if resamples:
        low, high = bootstrap_map50(found, detector.classes, resamples, runner_up=detector.runner_up)
        scored["metrics"].update(scenes_map50_ci95_low=low, scenes_map50_ci95_high=high)
    scored["metrics"]["scenes_images_skipped"] = float(skipped)
    scored["metrics"]["scenes_seconds_per_image"] = seconds
    return scored


def fit_box_calibration(face_detector, items: Sequence[tuple[Path, list]], min_iou: float = 0.3) -> dict[str, float]:
    """Median centre shift and scale from a :class:`maskflow.detection.Finder`'s boxes to annotated boxes (each truth with its best
    detection at IoU >= ``min_iou``): the annotation convention of a scene set.
    Fit on a train split; the evaluation split must not be used."""

    dx, dy, sw, sh = [], [], [], []
    for path, truths in items:
        try:
            rgb = read_image(path).rgb
            faces = face_detector.find(rgb, still=True)
        except DecodeError:
            continue
        for _, box in truths:
            overlaps = [iou(f.box, box) for f in faces]
            if not overlaps or max(overlaps) < min_iou:
                continue
            x, y, w, h = faces[int(np.argmax(overlaps))].box
            tx, ty, tw, th = box
            dx.append((tx + tw / 2 - x - w / 2) / w)
            dy.append((ty + th / 2 - y - h / 2) / h)
            sw.append(tw / w)
            sh.append(th / h)
    if not dx:
        raise ValueError("no detection overlaps an annotated face: nothing to fit")
    return {"dx": round(float(np.median(dx)), 4), "dy": round(float(np.median(dy)), 4),
            "sw": round(float(np.median(sw)), 4), "sh": round(float(np.median(sh)), 4), "pairs": len(dx)}


def split_names(folder: Path, split: str, data: str = "mask-scenes-853", overrides: Sequence[str] = ()) -> set[str]:
    """Image names of one split of a VOC folder, split exactly as the pipeline splits it
    (``conf/data/<data>.yaml`` with ``data.root=folder``; prepare is cached)."""

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"data={data}", f"data.root={Path(folder).resolve()}", *overrides])
    ctx = StageContext(run_dir=Path(tempfile.mkdtemp(prefix="maskflow-scenes-")), cache_dir=Path(cfg.paths.cache_dir))
    return {Path(r["path"]).name for r in read_manifest(prepare_run(cfg, ctx).manifest, split)}


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m maskflow.evaluate_scenes", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="VOC folder with images/ and annotations/")
    parser.add_argument("--model", default="models:/maskflow@champion")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--split", default="test", choices=("test", "val", "train", "all"),
                        help="scenes of this split, as the pipeline splits the folder (default: the held-out test split)")
    parser.add_argument("--manifest", type=Path, default=None, help="take --split from this prepare manifest.csv instead")
    parser.add_argument("--data", default="mask-scenes-853", help="the conf/data config whose split settings apply")
    parser.add_argument("--limit", type=int, default=None)
    add_detector_args(parser)
    parser.add_argument("--out", type=Path, default=None, help="write metrics.json and predictions.jsonl here")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples for scenes_map50's 95%% interval (0: none)")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("A.jsonl", "B.jsonl"), default=None,
                        help="no detection: score two prediction files (detect --jsonl, or an evaluate run's "
                             "scenes_predictions.jsonl) on the same images, paired: A's scenes_map50 minus B's")
    parser.add_argument("--classes", nargs="+", default=["mask_weared_incorrect", "with_mask", "without_mask"],
                        help="with --compare: the classes scored")
    parser.add_argument("--fit-boxes", action="store_true",
                        help="fit detect.box_calibration on these scenes (use a train split) and print it")
    args = parser.parse_args(argv)
    if args.compare:
        print(json.dumps(compare(args.folder, *args.compare, args.classes, resamples=max(args.bootstrap, 1),
                                 runner_up=args.runner_up), indent=1))
        return 0
    names = None
    if args.manifest and args.split != "all":
        names = {Path(r["path"]).name for r in read_manifest(args.manifest, args.split)}
    elif args.split != "all":
        names = split_names(args.folder, args.split, args.data)
    model = MaskModel.from_uri(args.model, args.tracking_uri)
    detector = build_detector(detector_settings(args, model.settings), model, finder_dirs=args.finder_dir)
    # mAP reads every candidate (detect_scenes); the operating point (the model's, or
    # --min-score) is where precision, recall and F1 of what a reader gets are reported.
    threshold = detector.min_score
    if args.fit_boxes:
        fitted = fit_box_calibration(detector.finder, voc_items(args.folder, names, args.limit))
        print(f"# {fitted.pop('pairs')} matched faces of {args.folder} ({args.split} split)")
        print("box_calibration: {" + ", ".join(f"{k}: {v}" for k, v in fitted.items()) + "}")
        return 0
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    results: list = []
    scored = run_scenes(detector, voc_items(args.folder, names, args.limit), args.out / "predictions.jsonl" if args.out else None,
                        resamples=args.bootstrap, results=results)
    if threshold is not None:
        at = at_operating_point(face_outcomes(results, detector.classes), threshold, resamples=args.bootstrap)
        scored["metrics"].update({"operating_point": threshold, **{f"op_{k}": v for k, v in at.items()}})
    if args.out:
        (args.out / "metrics.json").write_text(json.dumps(scored, indent=1))
    print(json.dumps({"split": args.split, **scored["metrics"]}, indent=1))
    return 1 if scored["metrics"]["scenes_images_skipped"] else 0  # scored the rest; some inputs failed


if __name__ == "__main__":
    sys.exit(main())
