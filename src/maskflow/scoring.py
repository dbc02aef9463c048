"""Scoring detect-then-classify on labelled scenes: matching at an IoU, AP per class,
bootstrap intervals over the images, paired differences, the operating point a reader
gets, and running a detector over a scene set. ``maskflow.evaluate_scenes`` (the CLI),
the evaluate and facedet stages and ``calibrate`` share it.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from tqdm import tqdm

from maskflow.annotations import SceneSet, read_scenes
from maskflow.config import CONF_DIR, register_configs
from maskflow.contracts import StageContext
from maskflow.data import read_manifest
from maskflow.detection.boxes import iou
from maskflow.detection.detector import one_per_face, rank_score
from maskflow.imageio import DecodeError, Frame, read_image
from maskflow.prepare import run as prepare_run

IOU = 0.5
log = logging.getLogger(__name__)


def average_precision(scores: Sequence[float], hits: Sequence[bool], n_truth: float,
                      weights: Sequence[float] | None = None) -> float:
    """VOC all-point interpolated AP of ranked predictions (hits: matched a new truth).
    ``weights``: how many times each prediction counts (a bootstrap draws its image so
    often; 0 leaves it out), the same as repeating it."""
    if n_truth == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hit = np.asarray(hits, dtype=float)[order]
    w = np.ones(len(order)) if weights is None else np.asarray(weights, np.float64)[order]
    tp = np.cumsum(w * hit)
    fp = np.cumsum(w * (1.0 - hit))
    recall = tp / n_truth
    precision = tp / np.maximum(tp + fp, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the best precision at this recall or beyond
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


@dataclass
class _Matched:
    """Every image's matches at one IoU, flat, so that a bootstrap only re-weights images.
    Per image: faces reported once each (``faces``), annotated faces of the scored
    classes (``truths``), faces matched to one (``matched``), and matched with the right
    label (``correct``); per class, each ranked record's image, score and hit."""

    faces: np.ndarray
    truths: np.ndarray
    matched: np.ndarray
    correct: np.ndarray
    other_truths: np.ndarray
    truths_by_class: dict[str, np.ndarray]
    records: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # class -> (image index, score, hit)
    confusion: np.ndarray


def _match(results: Sequence[tuple[list[dict], list[tuple[str, tuple]]]], classes: Sequence[str], min_iou: float,
           runner_up: float | None) -> _Matched:
    labels = list(classes)
    rows, cols = labels + ["spurious"], labels + ["missed"]
    n = len(results)
    counts = {k: np.zeros(n) for k in ("faces", "truths", "matched", "correct", "other_truths")}
    by_class = {c: np.zeros(n) for c in labels}
    recs: dict[str, list[tuple[int, float, bool]]] = {c: [] for c in labels}
    cm = np.zeros((len(rows), len(cols)), dtype=np.int64)
    for i, (preds, truths) in enumerate(results):
        preds = class_records(preds, runner_up)
        for p in preds:
            p["rank_score"] = rank_score(p)
        truths_known = [(lab, box) for lab, box in truths if lab in labels]
        counts["other_truths"][i] = len(truths) - len(truths_known)
        faces = one_per_face(preds)
        counts["faces"][i], counts["truths"][i] = len(faces), len(truths_known)
        matched_truths = set()
        for p, j in zip(faces, _greedy_match(faces, truths_known, same_class=False, min_iou=min_iou)):
            if j is None:
                cm[rows.index("spurious"), cols.index(p["label"])] += 1
            else:
                matched_truths.add(j)
                counts["matched"][i] += 1
                counts["correct"][i] += int(p["label"] == truths_known[j][0])
                cm[rows.index(truths_known[j][0]), cols.index(p["label"])] += 1
        for j, (lab, _) in enumerate(truths_known):
            by_class[lab][i] += 1
            if j not in matched_truths:
                cm[rows.index(lab), cols.index("missed")] += 1
        for p, j in zip(preds, _greedy_match(preds, truths_known, same_class=True, min_iou=min_iou)):
            recs[p["label"]].append((i, p["rank_score"], j is not None))
    records = {c: (np.array([r[0] for r in v], np.int64), np.array([r[1] for r in v], np.float64),
                   np.array([r[2] for r in v], bool)) for c, v in recs.items()}
    return _Matched(**counts, truths_by_class=by_class, records=records, confusion=cm)


def _summary(m: _Matched, classes: Sequence[str], weights: np.ndarray | None = None, tag: str = "50",
             detection: bool = True) -> dict[str, float]:
    """The scene metrics of matched images, each image counted ``weights[i]`` times."""
    w = np.ones(len(m.faces)) if weights is None else weights
    total = {k: float(np.dot(w, getattr(m, k))) for k in ("faces", "truths", "matched", "correct", "other_truths")}
    out: dict[str, float] = {}
    if detection:
        out = {"scenes_images": float(w.sum()), "scenes_faces": total["truths"],
               "scenes_det_precision": total["matched"] / total["faces"] if total["faces"] else 0.0,
               "scenes_det_recall": total["matched"] / total["truths"] if total["truths"] else 0.0,
               "scenes_cls_accuracy": total["correct"] / total["matched"] if total["matched"] else 0.0,
               "scenes_ignored_other_classes": total["other_truths"]}
    aps = []
    for c in classes:
        image, score, hit = m.records[c]
        n_truth = float(np.dot(w, m.truths_by_class[c]))
        if detection:
            out[f"scenes_faces_{c}"] = n_truth
        ap = average_precision(score, hit, n_truth, w[image] if len(image) else None)
        if ap == ap:
            out[f"scenes_ap{tag}_{c}"] = ap
            aps.append(ap)
    out[f"scenes_map{tag}"] = float(np.mean(aps)) if aps else 0.0
    return out


def score_scenes(results: list[tuple[list[dict], list[tuple[str, tuple]]]], classes: Sequence[str], min_iou: float = IOU,
                 runner_up: float | None = None) -> dict:
    """Metrics from (predictions, ground truths) per image; a match needs IoU >= ``min_iou``
    (the keys say ap50 whatever it is; :func:`scene_metrics` names both IoUs).
    Per-class AP ranks every face for its label and, with ``runner_up``, for each other
    likely class (:func:`class_records`); detection precision/recall, accuracy and the
    confusion matrix take each face once, with its most likely class."""
    matched = _match(results, classes, min_iou, runner_up)
    labels = list(classes)
    return {"metrics": _summary(matched, labels),
            "confusion": {"rows": labels + ["spurious"], "cols": labels + ["missed"], "matrix": matched.confusion.tolist()}}


# Counts, not rates: no interval.
_COUNTS = ("scenes_images", "scenes_faces", "scenes_ignored_other_classes")


def scene_metrics(results: list[tuple[list[dict], list[tuple[str, tuple]]]], classes: Sequence[str],
                  runner_up: float | None = None, resamples: int = 0, level: float = 0.95, seed: int = 0) -> dict:
    """:func:`score_scenes` at IoU 0.5, and per-class AP and mAP at IoU 0.3 too
    (``scenes_ap30_*``, ``scenes_map30``: boxes found but placed otherwise than the
    annotators place them); with ``resamples``, each rate's bootstrap interval over the
    images (``<metric>_ci95_low``/``_high``). AP pools faces over images, so one crowd
    photo can hold a sixth of a split's faces: a difference inside these widths is not yet
    a difference."""
    labels = list(classes)
    at50, at30 = _match(results, labels, IOU, runner_up), _match(results, labels, 0.3, runner_up)

    def summary(weights=None):
        return {**_summary(at50, labels, weights), **_summary(at30, labels, weights, tag="30", detection=False)}

    metrics = summary()
    if resamples and results:
        rng = np.random.default_rng(seed)
        draws = [summary(np.bincount(rng.integers(len(results), size=len(results)), minlength=len(results)).astype(float))
                 for _ in range(resamples)]
        for key in [k for k in metrics if k not in _COUNTS and not k.startswith("scenes_faces_")]:
            # A class absent from a resample has no AP there: its interval is over the others.
            values = [d[key] for d in draws if key in d]
            metrics[f"{key}_ci95_low"], metrics[f"{key}_ci95_high"] = _interval(values or [metrics[key]], level)
    return {"metrics": metrics,
            "confusion": {"rows": labels + ["spurious"], "cols": labels + ["missed"], "matrix": at50.confusion.tolist()}}


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


def _interval(values: Sequence[float], level: float) -> tuple[float, float]:
    """The central ``level`` share of ``values`` (percentiles)."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(a: list[tuple[list[dict], list[tuple[str, tuple]]]], b: list[tuple[list[dict], list[tuple[str, tuple]]]],
                     classes: Sequence[str], resamples: int = 500, level: float = 0.95, seed: int = 0,
                     runner_up: float | None = None) -> dict[str, float]:
    """Two prediction sets on the same images (aligned), resampled together: ``scenes_map50``
    of ``a`` minus that of ``b`` (``delta``), its interval, and the share of resamples where
    ``a`` scores higher; the same for each class's AP (``delta_ap50_<class>``, ...). Pairing
    removes what both share (which scenes are hard), so it separates two settings far
    better than their two intervals do."""
    if len(a) != len(b):
        raise ValueError(f"paired scoring needs the same images: {len(a)} against {len(b)}")
    labels = list(classes)
    matched_a, matched_b = _match(a, labels, IOU, runner_up), _match(b, labels, IOU, runner_up)
    keys = ["scenes_map50"] + [f"scenes_ap50_{c}" for c in labels]

    def deltas(weights=None) -> dict[str, float]:
        sa, sb = _summary(matched_a, labels, weights), _summary(matched_b, labels, weights)
        return {k: sa[k] - sb[k] for k in keys if k in sa and k in sb}

    rng = np.random.default_rng(seed)
    draws = [deltas(np.bincount(rng.integers(len(a), size=len(a)), minlength=len(a)).astype(float)) for _ in range(resamples)]
    point = deltas()
    out: dict[str, float] = {}
    for key in keys:
        if key not in point:
            continue
        values = np.array([d[key] for d in draws if key in d])
        low, high = _interval(values, level)
        name = "delta" if key == "scenes_map50" else f"delta_{key[len('scenes_'):]}"
        out.update({name: point[key], f"{name}_ci95_low": low, f"{name}_ci95_high": high,
                    "a_higher" if key == "scenes_map50" else f"{name}_a_higher": float(np.mean(values > 0))})
    return out


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
            runner_up: float | None = None, scenes: SceneSet | None = None) -> dict[str, float]:
    """:func:`paired_bootstrap` of two JSON-lines prediction files against ``folder``'s
    labels (or ``scenes``, already read), over the images both files cover."""
    a, b = _predictions_by_image(jsonl_a), _predictions_by_image(jsonl_b)
    truths = {Path(path).name: t for path, t in (scenes or read_scenes(folder)).items()}
    names = [n for n in sorted(set(a) & set(b)) if n in truths]
    pairs = paired_bootstrap([(a[n], truths[n]) for n in names], [(b[n], truths[n]) for n in names], classes, resamples,
                             runner_up=runner_up)
    return {"images": float(len(names)), **pairs}


def detect_scenes(detector, items: Sequence[tuple[Path, list[tuple[str, tuple]]]], jsonl: Path | None = None
                  ) -> tuple[list[tuple[list[dict], list[tuple[str, tuple]]]], int, float]:
    """Detect and classify each scene image: (predictions, annotations) per image read,
    the number of images that could not be read (each named on stderr) and the seconds
    per image; every candidate is kept (:meth:`maskflow.detection.detector.Detector.ranked`), whatever
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
    """Detect and classify each scene image; score against its labels at IoU 0.5 and 0.3
    (:func:`scene_metrics`), with each rate's bootstrap interval when ``resamples``.
    ``results``, when given a list, receives the (predictions, annotations) pairs."""

    found, skipped, seconds = detect_scenes(detector, items, jsonl)
    if results is not None:
        results.extend(found)
    scored = scene_metrics(found, detector.classes, runner_up=detector.runner_up, resamples=resamples)
    scored["metrics"]["scenes_images_skipped"] = float(skipped)
    scored["metrics"]["scenes_seconds_per_image"] = seconds
    return scored


def format_table(columns: Mapping[str, Mapping[str, float]], classes: Sequence[str]) -> list[str]:
    """Per-class AP at IoU 0.5 and 0.3 with intervals, one column pair per metrics dict
    (``before``/``after``, say), and the detection rates under it: what a person reads."""

    def cell(m: Mapping[str, float], key: str) -> str:
        if key not in m:
            return "-".ljust(21)
        low, high = m.get(f"{key}_ci95_low"), m.get(f"{key}_ci95_high")
        return f"{m[key]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "").ljust(16)

    first = next(iter(columns.values()))
    head = "".join(f"  {f'AP@{t} {name}'.ljust(21)}" for name in columns for t in ("0.5", "0.3"))
    lines = [f"{'class'.ljust(22)}{'faces':>6}{head}"]
    for c in [*classes, None]:
        k50, k30 = (f"scenes_ap50_{c}", f"scenes_ap30_{c}") if c else ("scenes_map50", "scenes_map30")
        faces = f"{int(first.get(f'scenes_faces_{c}', 0)):>6}" if c else f"{int(first.get('scenes_faces', 0)):>6}"
        cells = "".join(f"  {cell(m, k50)}  {cell(m, k30)}" for m in columns.values())
        lines.append(f"{(c or 'mean (mAP)').ljust(22)}{faces}{cells}")
    for name, m in columns.items():
        lines.append(f"{name}: detection precision {cell(m, 'scenes_det_precision').strip()}, recall "
                     f"{cell(m, 'scenes_det_recall').strip()}; label accuracy {cell(m, 'scenes_cls_accuracy').strip()} "
                     f"(IoU 0.5, {int(m.get('scenes_images', 0))} images)")
    return lines


def split_names(folder: Path, split: str, data: str = "mask-scenes-853", overrides: Sequence[str] = (),
                labels: Mapping[str, object] | None = None) -> set[str]:
    """The images (paths relative to ``folder``) of one split of a labelled folder, split
    exactly as the pipeline splits it (``conf/data/<data>.yaml`` with ``data.root=folder``
    and ``labels``' format, class map and YOLO names; prepare is cached)."""

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"data={data}", f"data.root={Path(folder).resolve()}", *overrides])
    with open_dict(cfg):
        for key, value in (labels or {}).items():
            if value is not None:
                cfg.data[key] = value
    ctx = StageContext(run_dir=Path(tempfile.mkdtemp(prefix="maskflow-scenes-")), cache_dir=Path(cfg.paths.cache_dir))
    return {r["path"] for r in read_manifest(prepare_run(cfg, ctx).manifest, split)}


