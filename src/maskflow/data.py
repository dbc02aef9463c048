"""The data layer: listing a data folder, VOC annotations and prepare's manifest.

Stages import these; the ``prepare`` stage writes manifests with :data:`MANIFEST_FIELDS`
and the others read them with :func:`read_manifest`.
"""

from __future__ import annotations

import csv
import logging
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from maskflow.cache import digest

log = logging.getLogger(__name__)

MANIFEST_FIELDS = [
    "sample_id", "path", "label", "sha256", "size_bytes", "source", "group", "split", "status",
    "reason", "crop", "face", "det_score", "box", "width", "height", "mode", "phash", "part",
]


@dataclass(frozen=True)
class Item:
    """One file to process, with its label (folder sets) or its VOC objects (scene sets)."""

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


def parse_voc(xml_path: Path) -> tuple[str, list[tuple[str, tuple[int, int, int, int]]]]:
    """(image file name, [(class, (x, y, w, h)), ...]) from a PASCAL VOC annotation."""
    tree = ET.parse(xml_path)
    filename = (tree.findtext("filename") or "").strip()
    objects = []
    for obj in tree.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if not name or bb is None:
            continue
        x0, y0, x1, y1 = (int(round(float(bb.findtext(k) or 0))) for k in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((name, (x0, y0, x1 - x0, y1 - y0)))
    return filename, objects


def list_voc_dataset(root: Path, images: str = "images", annotations: str = "annotations") -> list[Item]:
    """One item per annotated image. Annotation files that name the same image are merged
    (their faces together, exact repeats once) and the merge is logged, so no face is lost
    and every sample id stays unique."""
    items, seen = [], {}  # image name -> index in items
    image_dir = root / images
    for xml_path in sorted((root / annotations).glob("*.xml")):
        rel_xml = xml_path.relative_to(root).as_posix()
        try:
            filename, objects = parse_voc(xml_path)
        except (ET.ParseError, ValueError) as exc:
            items.append(Item(path=xml_path, rel=rel_xml, label=None, problem=f"bad_annotation: {exc}"))
            continue
        path = image_dir / (filename or xml_path.stem + ".jpg")
        if not path.exists():
            items.append(Item(path=xml_path, rel=rel_xml, label=None, problem="image_missing"))
            continue
        if path.name in seen:
            first = items[seen[path.name]]
            merged = tuple(dict.fromkeys(first.objects + tuple(objects)))
            log.warning("prepare: %s also annotates %s: merged (%d + %d faces -> %d)", rel_xml, path.name,
                        len(first.objects), len(objects), len(merged))
            items[seen[path.name]] = Item(path=first.path, rel=first.rel, label=None, objects=merged)
            continue
        seen[path.name] = len(items)
        items.append(Item(path=path, rel=path.relative_to(root).as_posix(), label=None, objects=tuple(objects)))
    if image_dir.is_dir():
        for path in sorted(image_dir.iterdir()):
            if path.is_file() and path.name not in seen:
                items.append(Item(path=path, rel=path.relative_to(root).as_posix(), label=None, problem="no_annotation"))
    return items


def list_items(data_cfg: DictConfig) -> list[Item]:
    root = Path(data_cfg.root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data folder {root} does not exist: set data.root=<dir> or MASKFLOW_DATA_DIR "
            "(the folder that holds mask-faces-4k/ and mask-scenes-853/)"
        )
    if data_cfg.format == "folders":
        items = list_folder_dataset(root)
    elif data_cfg.format == "voc":
        items = list_voc_dataset(root, data_cfg.get("images", "images"), data_cfg.get("annotations", "annotations"))
    else:
        raise ValueError(f"data.format must be 'folders' or 'voc', got {data_cfg.format!r}")
    limit = data_cfg.get("limit_per_class")
    if limit:
        items = limit_items(items, int(limit))
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


def voc_items(folder: Path, names: set[str] | None = None, limit: int | None = None) -> list[tuple[Path, list]]:
    """(image, [(class, box), ...]) of a VOC folder's annotations (those naming an image in ``names``)."""
    items = []
    for xml in sorted((folder / "annotations").glob("*.xml")):
        filename, objects = parse_voc(xml)
        image = folder / "images" / filename
        # A missing image stays listed: its reader names it (skipped, not silently lost).
        if names is None or image.name in names:
            items.append((image, [(label, box) for label, box in objects]))
    return items[:limit] if limit else items


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
    raise ValueError(f"class(es) with no usable training sample: {'; '.join(details)}. Add usable files, or leave the "
                     f"class out of data.classes (manifest: {manifest})")
