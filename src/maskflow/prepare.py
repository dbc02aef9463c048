"""Stage ``prepare``: list every file, decode robustly, crop faces, split without leaks.

Outputs (under a content-addressed folder of the cache, copied into the run folder and
logged to MLflow): ``manifest.csv`` (every file, kept or skipped, with its reason),
``data_report.json``/``.md`` (counts, skip reasons, duplicate groups) and
``samples.png`` (a grid of crops per class).

Per-file work (decode, perceptual hash, MTCNN, crop) is cached by file content, written
atomically as each file finishes, so a second run skips it and a killed run resumes.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing as mp
import os
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import cv2
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from maskflow import split as splitting
from maskflow import synthetic as synthetic_faces
from maskflow.annotations import FORMATS as SCENE_FORMATS
from maskflow.cache import atomic_write_bytes, atomic_write_json, digest, read_json, sha256_bytes
from maskflow.config import compose_option
from maskflow.contracts import PreparedData, StageContext
from maskflow.data import MANIFEST_FIELDS, list_items, scene_classes
from maskflow.detection.boxes import corners_of, iou_matrix
from maskflow.detection.finders import build_finder
from maskflow.detection.mtcnn import FaceDetector
from maskflow.errors import DataError
from maskflow.faces import crop_face, largest_face, resize_square
from maskflow.imageio import DecodeError, read_image

# ImageHash, MLflow, Pillow, TensorFlow, matplotlib, pandas are imported inside the functions that use them: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without them.

log = logging.getLogger(__name__)

# Bump when the per-file processing changes meaning, so stale cache entries are not reused.
PROCESS_VERSION = 2  # 2: MTCNN pyramid reaches faces that fill the image (faces.py)
# --------------------------------------------------------------------- per-file work

_DETECTOR = None
_FINDER = None


def _init_worker(threads: int) -> None:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _detector(params: dict[str, Any]):
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = FaceDetector(min_face_size=params["min_face_size"], max_side=params["detect_max_side"])
    return _DETECTOR


def _finder(spec: dict[str, Any]):
    """The finder whose boxes scene faces are also cropped around (one per worker)."""
    global _FINDER
    if _FINDER is None:
        _FINDER = build_finder(spec["name"], {spec["name"]: spec["settings"]}, spec["dirs"])
    return _FINDER


def process_file(job: tuple[str, str, dict[str, Any], str, str]) -> tuple[str, dict[str, Any]]:
    """Decode, hash and crop one file; write crops + a JSON record into the cache.

    Runs in a worker process. Never raises for bad content: the record carries the reason.
    """
    path, objects_json, params, record_path, crop_prefix = job
    import imagehash
    from PIL import Image

    record: dict[str, Any] = {"version": PROCESS_VERSION, "samples": []}
    try:
        decoded = read_image(path, max_pixels=params["max_pixels"])
    except DecodeError as exc:
        record.update(status="skipped", reason=exc.reason, detail=exc.detail[:300])
        atomic_write_json(record_path, record)
        return record_path, record
    rgb = decoded.rgb
    height, width = rgb.shape[:2]
    record.update(
        status="ok", reason="", width=width, height=height, mode=decoded.source_mode,
        format=decoded.format, exif_rotated=decoded.exif_rotated,
        phash=str(imagehash.phash(Image.fromarray(rgb))),
    )
    size, margin = params["crop_size"], params["margin"]
    samples = []
    if objects_json is None:  # folder set: the largest confident face, else the whole image
        reason = ""
        if min(height, width) < params["min_image_side"]:
            reason = "tiny_image"
        face = None
        if params["detect"] and not reason:
            face = largest_face(_detector(params).detect(rgb), params["min_confidence"])
        if reason:
            crop, kind, box, score = None, "whole_image", [0, 0, width, height], None
        elif face is not None:
            crop, kind, box, score = crop_face(rgb, face.box, margin, size), "mtcnn", list(face.box), face.score
        else:
            crop, kind, box, score = resize_square(rgb, size), "whole_image", [0, 0, width, height], None
        samples.append({"face": kind, "box": box, "det_score": score, "label": None, "crop": crop, "reason": reason})
    else:  # scene set: one crop per annotated face
        for label, box in json.loads(objects_json):
            x, y, w, h = box
            if w <= 0 or h <= 0 or x >= width or y >= height or x + w <= 0 or y + h <= 0:
                samples.append({"face": "voc_box", "box": box, "label": label, "crop": None, "reason": "box_outside_image"})
            elif max(w, h) < params["min_box_size"]:
                samples.append({"face": "voc_box", "box": box, "label": label, "crop": None, "reason": "box_too_small"})
            else:
                samples.append({"face": "voc_box", "box": box, "label": label, "crop": crop_face(rgb, box, margin, size), "reason": ""})
        if params.get("finder_boxes"):
            samples += _finder_samples(rgb, samples, params)

    for i, sample in enumerate(samples):
        crop = sample.pop("crop")
        if crop is not None:
            crop_path = f"{crop_prefix}_{i}.jpg"
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            atomic_write_bytes(crop_path, buf.tobytes())
            sample["crop"] = crop_path
        else:
            sample["crop"] = None
        record["samples"].append(sample)
    atomic_write_json(record_path, record)
    return record_path, record


def _finder_samples(rgb, annotated: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    """A second crop of each annotated face, cut around the finder's box for it (IoU >=
    0.5, raw box as at run time), so the classifier trains on what a finder hands over."""

    spec = params["finder_boxes"]
    faces = _finder({**spec, "dirs": params["face_weights_dirs"]}).find(rgb, still=True)
    usable = [s for s in annotated if s["crop"] is not None]
    if not faces or not usable:
        return []
    truths = [[x, y, x + w, y + h] for x, y, w, h in (s["box"] for s in usable)]
    overlaps = iou_matrix(corners_of(faces), truths)
    out = []
    for j, sample in enumerate(usable):
        i = int(overlaps[:, j].argmax())
        if overlaps[i, j] >= 0.5:
            out.append({"face": f"finder_box:{spec['name']}", "box": list(faces[i].box), "label": sample["label"],
                        "det_score": faces[i].score, "crop": crop_face(rgb, faces[i].box, params["margin"], params["crop_size"]),
                        "reason": ""})
    return out


# ------------------------------------------------------------------------- the stage


def _params(cfg: DictConfig) -> dict[str, Any]:
    data = cfg.data
    crop = data.face_crop
    return {
        "version": PROCESS_VERSION,
        "crop_size": int(data.crop_size),
        "margin": float(crop.margin),
        "detect": bool(crop.enabled) and data.format == "folders",
        "min_confidence": float(crop.min_confidence),
        "min_face_size": int(crop.min_face_size),
        "detect_max_side": int(crop.detect_max_side),
        "min_image_side": int(data.min_image_side),
        "min_box_size": int(data.get("min_box_size", 0)),
        "max_pixels": int(data.max_pixels),
        "finder_boxes": _finder_spec(cfg) if data.format in SCENE_FORMATS else None,
    }


def _finder_spec(cfg: DictConfig) -> dict[str, Any] | None:
    """``data.finder_boxes``: the finder (with its conf/detect settings) for extra crops."""

    name = cfg.data.get("finder_boxes")
    if not name:
        return None
    settings = OmegaConf.to_container(cfg.detect.finders[str(name)], resolve=True)
    # The data set pins the stills pass its crops are cut with, so detect's run-time speed
    # settings do not move the training crops (and retrain the model): the upscaled pass
    # runs on every training scene.
    if cfg.data.get("finder_boxes_still_long_side", None) is not None:
        settings["still_long_side"] = int(cfg.data.finder_boxes_still_long_side)
    # Crops are cut around the finder's raw boxes: its calibration and licence note do not
    # change them, nor does the engine that runs it (both give the same faces; run() adds it
    # after the crops' key).
    run_time_only = ("box_calibration", "licence", "upscale_if_face_under", "runtime")
    return {"name": str(name), "settings": {k: v for k, v in settings.items() if k not in run_time_only}}


def run(cfg: DictConfig, ctx: StageContext, name: str = "prepare") -> PreparedData:
    """Prepare ``cfg.data``; ``name`` names the output folder and the MLflow prefix (an
    extra evaluation set is prepared as ``xtest_<set>``)."""
    if cfg.data.format == "union":
        return _run_union(cfg, ctx, name)
    params = _params(cfg)
    params_key = digest(params)  # where the finders' files live, and which engine runs one, do not change the crops
    params["face_weights_dirs"] = [str(cfg.paths.face_weights_dir)]
    spec = params["finder_boxes"]
    if spec and cfg.detect.finders[spec["name"]].get("runtime"):
        spec["settings"]["runtime"] = cfg.detect.finders[spec["name"]].runtime
    crops_root = ctx.cache_dir / "crops" / params_key
    items = list_items(cfg.data)
    log.info("prepare: %d files listed under %s", len(items), cfg.data.root)

    # Content keys: hashing every file is cheap (I/O bound) and makes the cache exact.
    # Exact duplicates share one key, so they are processed once.
    records: dict[str, dict[str, Any]] = {}
    keys: dict[str, tuple[str, int]] = {}
    pending: dict[str, list[str]] = defaultdict(list)  # record path -> rels waiting on it
    jobs = []
    for item in tqdm(items, desc="hash", unit="file", disable=None, leave=False):
        if item.problem:
            continue
        try:
            data = item.path.read_bytes()
        except OSError as exc:
            records[item.rel] = {"status": "skipped", "reason": "unreadable", "detail": str(exc), "samples": []}
            continue
        objects_json = None if item.objects is None else json.dumps([[n, list(b)] for n, b in item.objects])
        sha = sha256_bytes(data)
        key = sha if objects_json is None else sha256_bytes(data + objects_json.encode())
        keys[item.rel] = (sha, len(data))
        record_path = str(crops_root / key[:2] / f"{key}.json")
        cached_record = _read_record(record_path)
        if cached_record is not None:
            records[item.rel] = cached_record
            continue
        if record_path not in pending:
            jobs.append((str(item.path), objects_json, params, record_path, str(crops_root / key[:2] / key)))
        pending[record_path].append(item.rel)

    cached = len(records)
    workers = min(_workers(cfg), max(1, len(jobs)))
    log.info("prepare: %d files cached, %d to process with %d workers", cached, len(jobs), workers)
    if jobs:
        if workers > 1:
            spawn = mp.get_context("spawn")  # TensorFlow is not fork-safe
            # An executor, not a multiprocessing.Pool: a worker that dies (cannot import,
            # runs out of memory) breaks it with an error, where a Pool replaces the worker
            # and waits forever for its task.
            with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_init_worker, initargs=(1,)) as pool:
                try:
                    done = pool.map(process_file, jobs, chunksize=4)
                    for record_path, record in tqdm(done, total=len(jobs), desc="prepare", unit="file", disable=None):
                        for rel in pending[record_path]:
                            records[rel] = record
                except BrokenProcessPool as exc:
                    raise RuntimeError("prepare: a worker process died (it could not start, or ran out of memory); "
                                       "data.workers=1 runs in this process and shows why") from exc
        else:
            for job in tqdm(jobs, desc="prepare", unit="file", disable=None):
                record_path, record = process_file(job)
                for rel in pending[record_path]:
                    records[rel] = record

    rows = _rows(items, records, keys, cfg.data)
    if not any(r["status"] == "ok" for r in rows):
        reasons = Counter(r["reason"] for r in rows)
        raise DataError(f"prepare: no usable sample in {cfg.data.root} ({len(items)} files listed; skip reasons: "
                         f"{dict(reasons) or 'none'}): check data.root and data.format")
    classes = _classes(cfg.data, rows)
    kept = [r for r in rows if r["status"] == "ok"]
    # Finder-box crops are second views of annotated faces: they follow their scene's
    # split and do not weigh in it, so the split is the same with or without them.
    extra_views = [r for r in kept if r["face"].startswith("finder_box")]
    kept = [r for r in kept if not r["face"].startswith("finder_box")]
    result = splitting.assign_splits(
        sha256=[r["sha256"] for r in kept],
        phash=[r["phash"] for r in kept],
        source=[r["source"] or None for r in kept],
        labels=[r["label"] for r in kept],
        val_fraction=float(cfg.data.split.val),
        test_fraction=float(cfg.data.split.test),
        phash_max_distance=int(cfg.data.split.phash_max_distance),
        seed=int(cfg.data.split.seed),
        files=[r["path"] for r in kept],
    )
    for row, split_name, gid in zip(kept, result.split, result.group):
        row["split"], row["group"] = split_name, gid
    by_path = {r["path"]: (r["split"], r["group"]) for r in kept}
    for row in extra_views:
        row["split"], row["group"] = by_path.get(row["path"], ("", ""))
        if not row["split"]:  # its scene has no annotated crop left: not a sample
            row["status"], row["reason"] = "skipped", "finder_box_without_annotated_crop"

    # The crop settings count too: the same files cut another way are other training data.
    data_digest = digest([[(r["sample_id"], r["sha256"], r["label"], r["split"], r["status"]) for r in rows], params_key])
    out_dir = ctx.run_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    _write_manifest(manifest, rows)
    report = _report(rows, result, classes, cfg, data_digest, cached=cached, processed=len(jobs))
    atomic_write_json(out_dir / "data_report.json", report)
    (out_dir / "data_report.md").write_text(_report_markdown(report), encoding="utf-8")
    _sample_grid(kept, classes, out_dir / "samples.png")
    _log_mlflow(cfg, out_dir, manifest, report, name)
    for line in _report_markdown(report).splitlines()[:30]:
        log.info("%s", line)
    _warn_missing_classes(classes, report["counts"], f"prepare {cfg.data.name}")
    return PreparedData(
        manifest=manifest,
        report=out_dir / "data_report.json",
        classes=tuple(classes),
        digest=data_digest,
        counts=report["counts"],
    )


def _run_union(cfg: DictConfig, ctx: StageContext, name: str) -> PreparedData:
    """``data.format: union``: each of ``data.parts`` prepared (and split) by its own rules,
    then one manifest of all their rows (``part`` names the part; paths relative to
    ``data.root`` where they can be), with the union's classes."""

    root = Path(cfg.data.root)
    rows: list[dict[str, Any]] = []
    digests = []
    for part_name, part_cfg in cfg.data.parts.items():
        sub = cfg.copy()
        with open_dict(sub):  # resolved first: the part's ${data.*} mean the union's
            sub.data = OmegaConf.create(OmegaConf.to_container(part_cfg, resolve=True))
        prepared = run(sub, ctx, name=f"{name}_{part_name}")
        ctx.results[f"data:{part_cfg.name}"] = (sub.data, prepared)  # evaluate reuses the part's split
        digests.append(prepared.digest)
        part_root = Path(part_cfg.root)
        prefix = part_root.relative_to(root).as_posix() + "/" if part_root.is_relative_to(root) else str(part_root) + "/"
        with open(prepared.manifest, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                rows.append({**row, "sample_id": prefix + row["sample_id"], "path": prefix + row["path"],
                             "group": f"{part_name}:{row['group']}" if row["group"] else "", "part": str(part_name)})
    synthetic = cfg.data.get("synthetic")
    if synthetic and synthetic.get("enabled"):
        settings = OmegaConf.to_container(synthetic, resolve=True)
        rows += _synthetic_rows(cfg, ctx, rows, settings)
        digests.append(digest({"synthetic": settings, "version": synthetic_faces.PAINT_VERSION}))
    classes = _classes(cfg.data, rows)
    data_digest = digest([digests, list(classes)])
    out_dir = ctx.run_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    _write_manifest(manifest, rows)
    counts = {s: {c: 0 for c in classes} for s in ("train", "val", "test")}
    for r in rows:
        if r["status"] == "ok":
            counts[r["split"]][r["label"]] += 1
    skipped = [r for r in rows if r["status"] != "ok"]
    report = {"dataset": cfg.data.name, "root": str(root), "digest": data_digest, "parts": list(cfg.data.parts.keys()),
              "samples_kept": len(rows) - len(skipped), "samples_skipped": len(skipped),
              "skip_reasons": dict(Counter(r["reason"] for r in skipped)), "classes": classes, "counts": counts,
              "face_source": dict(Counter(r["face"].split(":")[0] for r in rows if r["status"] == "ok"))}
    atomic_write_json(out_dir / "data_report.json", report)
    kept = [r for r in rows if r["status"] == "ok"]
    _sample_grid(kept, classes, out_dir / "samples.png")
    import mlflow

    if mlflow.active_run() is not None and name == "prepare":
        mlflow.log_params({"data_digest": data_digest, "data_name": cfg.data.name, "data_classes": ",".join(classes)})
        mlflow.log_metrics({f"{name}_samples_kept": report["samples_kept"], **{f"{name}_n_{s}": sum(c.values()) for s, c in counts.items()}})
        mlflow.log_artifacts(str(out_dir), artifact_path=name)
    log.info("prepare: union of %s: %s", list(cfg.data.parts.keys()), counts)
    _warn_missing_classes(classes, counts, f"prepare {cfg.data.name}")
    return PreparedData(manifest=manifest, report=out_dir / "data_report.json", classes=tuple(classes), digest=data_digest,
                        counts=counts)


def _synthetic_rows(cfg: DictConfig, ctx: StageContext, rows: list[dict[str, Any]], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Masks drawn on the union's train crops without one (:mod:`maskflow.synthetic`),
    landmarks from YuNet as conf/detect sets it (no landmark check: that is a reader's)."""
    finders = OmegaConf.to_container(cfg.detect.finders, resolve=True)
    yunet = {k: v for k, v in finders["yunet"].items() if k not in ("box_calibration", "licence")}
    yunet["landmark_bounds"] = None
    finder = build_finder("yunet", {"yunet": yunet}, [str(cfg.paths.face_weights_dir)])
    return synthetic_faces.synthesize(rows, settings, finder, ctx.cache_dir)


def _read_record(path: str) -> dict[str, Any] | None:
    """A finished cache record, or None (missing, damaged, or from an older version)."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    if record.get("version") != PROCESS_VERSION:
        return None
    crops = [s["crop"] for s in record.get("samples", []) if s.get("crop")]
    return record if all(os.path.exists(c) for c in crops) else None


def _workers(cfg: DictConfig) -> int:
    workers = cfg.data.get("workers")
    return int(workers) if workers else max(1, os.cpu_count() or 1)


def _rows(items, records, keys, data_cfg) -> list[dict[str, Any]]:
    patterns = list(data_cfg.split.get("source_patterns") or [])
    targets = set(scene_classes(data_cfg))
    rows = []
    for item in items:
        sha, size = keys.get(item.rel, ("", 0))
        base = {"path": item.rel, "sha256": sha, "size_bytes": size, "split": "", "group": "", "crop": "",
                "face": "", "det_score": "", "box": "", "width": "", "height": "", "mode": "", "phash": ""}
        stem = Path(item.rel).stem
        source = stem if data_cfg.format in SCENE_FORMATS else splitting.source_key(stem, patterns)
        if item.problem:
            reason, _, detail = item.problem.partition(": ")
            rows.append({**base, "sample_id": item.rel, "label": item.label or "", "source": source or "", "status": "skipped", "reason": reason})
            continue
        record = records[item.rel]
        if record["status"] != "ok":
            rows.append({**base, "sample_id": item.rel, "label": item.label or "", "source": source or "", "status": "skipped", "reason": record["reason"]})
            continue
        meta = {k: record.get(k, "") for k in ("width", "height", "mode", "phash")}
        for i, sample in enumerate(record["samples"]):
            label = item.label if item.label is not None else sample["label"]
            reason = sample["reason"]
            if item.objects is not None and not reason and label not in targets:
                reason = "unmapped_class"  # the set's own name for it maps to none of the classes (data.class_map)
            ok = sample["crop"] is not None and not reason
            rows.append({
                **base, **meta,
                "sample_id": item.rel if item.objects is None else f"{item.rel}#{i}",
                "label": label, "source": source or "", "status": "ok" if ok else "skipped",
                "reason": reason, "crop": sample["crop"] or "", "face": sample["face"],
                "det_score": "" if sample.get("det_score") is None else round(float(sample["det_score"]), 4),
                "box": " ".join(str(int(v)) for v in sample["box"]) if sample["box"] is not None else "",
            })
    return rows


def _classes(data_cfg: DictConfig, rows) -> list[str]:
    if data_cfg.get("classes"):
        classes = list(data_cfg.classes)
        unknown = {r["label"] for r in rows if r["status"] == "ok"} - set(classes)
        if unknown:
            raise ValueError(f"labels {sorted(unknown)} are not in data.classes {classes}")
        return classes
    # Every label listed, kept or not: a class whose files all failed is still a class
    # (and is then reported missing), not silently dropped.
    return sorted({r["label"] for r in rows if r["label"] and r["reason"] != "unmapped_class"})


def _warn_missing_classes(classes: list[str], counts: dict[str, dict[str, int]], where: str) -> None:
    """A class absent from a split is legal data (an evaluation folder) but worth a line;
    training refuses it (:func:`maskflow.data.require_training_samples`)."""
    for split in ("train", "val", "test"):
        empty = [c for c in classes if counts[split].get(c, 0) == 0]
        if empty:
            log.warning("%s: no %s sample of %s", where, split, empty)


def _write_manifest(path: Path, rows) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in MANIFEST_FIELDS})
    os.replace(tmp, path)


def _report(rows, result, classes, cfg, data_digest, cached: int, processed: int) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {s: {c: 0 for c in classes} for s in ("train", "val", "test")}
    faces = Counter()
    for r in rows:
        if r["status"] == "ok":
            counts[r["split"]][r["label"]] += 1
            faces[r["face"]] += 1
    skipped = [{"path": r["sample_id"], "label": r["label"], "reason": r["reason"]} for r in rows if r["status"] != "ok"]
    return {
        "dataset": cfg.data.name,
        "root": str(cfg.data.root),
        "digest": data_digest,
        "files_listed": len({r["path"] for r in rows}),
        "samples_kept": sum(1 for r in rows if r["status"] == "ok"),
        "samples_skipped": len(skipped),
        "skip_reasons": dict(Counter(s["reason"] for s in skipped)),
        "skipped": skipped,
        "classes": classes,
        "counts": counts,
        "face_source": dict(faces),
        "groups": result.n_groups,
        "near_duplicate_groups": result.n_near_duplicate_groups,
        "exact_duplicate_groups": result.n_exact_duplicate_groups,
        "same_source_groups": result.n_source_groups,
        "mixed_label_groups": result.n_mixed_label_groups,
        "phash_max_distance": int(cfg.data.split.phash_max_distance),
        "files_from_cache": cached,
        "files_processed": processed,
    }


def _report_markdown(report: dict[str, Any]) -> str:
    classes = report["classes"]
    lines = [
        f"# Data report: {report['dataset']} (digest {report['digest']})",
        "",
        f"- files listed: {report['files_listed']}; samples kept: {report['samples_kept']}; skipped: {report['samples_skipped']}",
        f"- files from cache: {report['files_from_cache']}; processed now: {report['files_processed']}",
        f"- face source: {report['face_source']}",
        f"- groups: {report['groups']}; near-duplicate groups (phash distance <= {report['phash_max_distance']}): "
        f"{report['near_duplicate_groups']}; exact-duplicate groups: {report['exact_duplicate_groups']}; "
        f"same-source groups: {report['same_source_groups']}; groups with mixed labels: {report['mixed_label_groups']}",
        "",
        "| split | " + " | ".join(classes) + " | total |",
        "|---|" + "---|" * (len(classes) + 1),
    ]
    for split, by_class in report["counts"].items():
        lines.append(f"| {split} | " + " | ".join(str(by_class[c]) for c in classes) + f" | {sum(by_class.values())} |")
    lines += ["", "## Skipped, by reason", ""]
    lines += [f"- {reason}: {n}" for reason, n in sorted(report["skip_reasons"].items())] or ["- none"]
    lines += ["", "## Skipped files", ""]
    lines += [f"- `{s['path']}` ({s['label'] or 'no label'}): {s['reason']}" for s in report["skipped"]] or ["- none"]
    return "\n".join(lines) + "\n"


def _sample_grid(kept, classes, path: Path, per_class: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 1.4, len(classes) * 1.6), squeeze=False)
    for row, label in enumerate(classes):
        picks = sorted((r for r in kept if r["label"] == label and r["split"] == "train"), key=lambda r: r["sha256"])[:per_class]
        for col in range(per_class):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(picks):
                ax.imshow(Image.open(picks[col]["crop"]))
                ax.set_title(picks[col]["face"], fontsize=6)
        axes[row][0].text(-0.1, 0.5, label, transform=axes[row][0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle("training crops per class (title: crop source)", fontsize=9)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _log_input(dataset, context: str) -> None:
    """``mlflow.log_input``, once more if another job of a parallel multirun (``launcher=joblib``,
    one store) inserted the same dataset between MLflow's lookup and its insert: sqlite then
    refuses the second row (UNIQUE constraint), and the retry finds the first and links it."""
    import mlflow

    try:
        mlflow.log_input(dataset, context=context)
    except mlflow.exceptions.MlflowException as exc:
        if "UNIQUE constraint failed" not in str(exc):
            raise
        log.info("prepare: dataset %s was logged by a parallel job at the same moment; linking that one", dataset.name)
        mlflow.log_input(dataset, context=context)


def _log_mlflow(cfg: DictConfig, out_dir: Path, manifest: Path, report: dict[str, Any], name: str) -> None:
    import mlflow

    if mlflow.active_run() is None:
        return
    import pandas as pd

    frame = pd.read_csv(manifest, keep_default_na=False)
    with warnings.catch_warnings():
        # Notes a user cannot act on: a local folder matches MLflow's two local-file source
        # classes (it takes the first, as wanted), and the manifest's counts are integers.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted", category=UserWarning)
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        dataset = mlflow.data.from_pandas(frame, source=str(cfg.data.root), name=cfg.data.name, targets="label")
        _log_input(dataset, context="training" if name == "prepare" else "evaluation")
    if name == "prepare":
        mlflow.log_params({"data_digest": report["digest"], "data_name": cfg.data.name, "data_classes": ",".join(report["classes"])})
    metrics = {
        f"{name}_samples_kept": report["samples_kept"],
        f"{name}_samples_skipped": report["samples_skipped"],
        f"{name}_near_duplicate_groups": report["near_duplicate_groups"],
        f"{name}_groups": report["groups"],
    }
    for split, by_class in report["counts"].items():
        metrics[f"{name}_n_{split}"] = sum(by_class.values())
    mlflow.log_metrics(metrics)
    mlflow.log_artifacts(str(out_dir), artifact_path=name)


def prepared_for(cfg: DictConfig, ctx: StageContext, name: str, tag: str) -> tuple[DictConfig, PreparedData]:
    """Another data config (``conf/data/<name>.yaml``), prepared once per pipeline (cached)
    under the output/MLflow prefix ``tag``; the run's own data when ``name`` is it."""

    if name == cfg.data.name:
        return cfg.data, ctx.need("prepare")
    key = f"data:{name}"
    if key not in ctx.results:
        sub = cfg.copy()
        with open_dict(sub):
            sub.data = compose_option("data", name)  # its ${paths.*} resolve against this run's paths
        ctx.results[key] = (sub.data, run(sub, ctx, name=tag))
    return ctx.results[key]
