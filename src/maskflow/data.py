"""The data layer: listing a data folder (class folders, or scenes through :mod:`maskflow.annotations`) and prepare's manifest.

Stages import these; the ``prepare`` stage writes manifests with :data:`MANIFEST_FIELDS`
and the others read them with :func:`read_manifest`.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from maskflow.annotations import CLASSES, FORMATS, SceneSet, read_scenes
from maskflow.cache import digest
from maskflow.errors import DataError

log = logging.getLogger(__name__)

MANIFEST_FIELDS = [
    "sample_id", "path", "label", "sha256", "size_bytes", "source", "group", "split", "status",
    "reason", "crop", "face", "det_score", "box", "width", "height", "mode", "phash", "part",
]


@dataclass(frozen=True)
class Item:
    """One file to process, with its label (folder sets) or its faces (scene sets: VOC, YOLO, COCO)."""

    path: Path
    rel: str
    label: str | None
    objects: tuple[tuple[str, tuple[int, int, int, int]], ...] | None = None
    problem: str | None = None  # a reason known before decoding (e.g. bad annotation)


def list_folder_dataset(root: Path) -> list[Item]:
    """Class-per-folder: ``root/<class>/**/<file>``; every regular file is listed."""
    items = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file():
                items.append(Item(path=path, rel=path.relative_to(root).as_posix(), label=class_dir.name))
    return items


def list_items(data_cfg: DictConfig) -> list[Item]:
    root = Path(data_cfg.root)
    if not root.is_dir() and not (data_cfg.format == "coco" and root.is_file()):  # a COCO set may be named by its JSON
        raise DataError(
            f"data folder {root} does not exist: set data.root=<dir> or MASKFLOW_DATA_DIR "
            "(the folder that holds mask-faces-4k/ and mask-scenes-853/)"
        )
    if data_cfg.format == "folders":
        items = list_folder_dataset(root)
    elif data_cfg.format in FORMATS:
        items = scene_items(scene_set(data_cfg))
    else:
        raise ValueError(f"data.format must be 'folders' or one of {', '.join(FORMATS)}, got {data_cfg.format!r}")
    limit = data_cfg.get("limit_per_class")
    if limit:
        items = limit_items(items, int(limit))
    return items


def scene_classes(data_cfg: DictConfig) -> tuple[str, ...]:
    """The classes a scene set's names are mapped to: ``data.classes``, else maskflow's."""
    return tuple(data_cfg.get("classes") or CLASSES)


def scene_set(data_cfg: DictConfig, root: Path | None = None) -> SceneSet:
    """A scene data config's labelled images (``data.format`` voc | yolo | coco, with its
    ``class_map`` and YOLO ``names``), read by :func:`maskflow.annotations.read_scenes`."""
    class_map = data_cfg.get("class_map")
    names = data_cfg.get("names")
    return read_scenes(Path(root or data_cfg.root), str(data_cfg.format),
                       names=list(names) if names else None,
                       class_map=OmegaConf.to_container(class_map) if isinstance(class_map, DictConfig) else class_map,
                       classes=scene_classes(data_cfg), images=data_cfg.get("images", "images"),
                       annotations=data_cfg.get("annotations", "annotations"))


def scene_items(scenes: SceneSet) -> list[Item]:
    """prepare's items of a scene set: one per labelled image, and one per bad label file
    or unlabelled image, skipped with its reason."""
    items = [Item(path=im.path, rel=im.rel, label=None, objects=im.faces) for im in scenes.images]
    for problem in scenes.problems:
        log.warning("prepare: skipped %s", problem)
        items.append(Item(path=scenes.root / problem.source, rel=problem.source, label=None,
                          problem=f"{problem.reason}: {problem.detail}"))
    items += [Item(path=scenes.root / rel, rel=rel, label=None, problem="no_annotation") for rel in scenes.unlabelled]
    return items


def limit_items(items: list[Item], limit: int) -> list[Item]:
    """A deterministic subset (CI-sized runs): the first ``limit`` files per class by a
    hash of their path, so the subset does not depend on listing order. A scene counts
    for the rarest class among its faces, so every class is in a small subset."""
    frequency = Counter(name for item in items for name, _ in (item.objects or []))
    by_label: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        names = {name for name, _ in item.objects or []}
        by_label[item.label or min(names, key=lambda n: (frequency[n], n), default="scene")].append(item)
    kept = []
    for label in sorted(by_label):
        kept += sorted(by_label[label], key=lambda it: digest(it.rel))[:limit]
    return sorted(kept, key=lambda it: it.rel)


def read_manifest(path: Path, split: str | None = None) -> list[dict[str, str]]:
    """Rows of a manifest that were kept (status ok), optionally for one split."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    return [r for r in rows if split is None or r["split"] == split]


def require_training_samples(manifest: Path, classes: Sequence[str], counts: dict[str, dict[str, int]]) -> None:
    """Stop before training when a class has no training sample (its files all failed, or
    the data lacks it), naming the class and why its files were skipped."""
    missing = [c for c in classes if counts["train"].get(c, 0) == 0]
    if not missing:
        return
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    details = []
    for label in missing:
        reasons = Counter(r["reason"] for r in rows if r["label"] == label and r["status"] != "ok")
        kept = sum(counts[split].get(label, 0) for split in counts)
        details.append(f"{label!r}: {kept} kept in val/test, skipped {dict(reasons) or 'none listed'}")
    raise DataError(f"class(es) with no usable training sample: {'; '.join(details)}. Add usable files, or leave the "
                     f"class out of data.classes (manifest: {manifest})")
