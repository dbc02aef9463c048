"""Scene labels behind one reader: PASCAL VOC, YOLO txt and COCO JSON.

:func:`read_scenes` turns a labelled folder into images with their faces as
``(class, (x, y, w, h))`` in pixels, whatever the format, and says what it could not
use: each bad label file with its reason (its image is left out whole, since its faces
would be incomplete), images that have no label, and class names that map to no
maskflow class (kept under their own name, never folded into another class). prepare
(training), ``evaluate_scenes`` (scoring) and ``calibrate`` read scenes through it.

Layouts understood:

- ``voc``: one ``.xml`` per image in ``annotations/`` (or ``Annotations/``, or beside the
  images); the image is the ``<filename>`` in ``images/``, ``JPEGImages/`` or beside.
- ``yolo``: one ``.txt`` per image, ``class cx cy w h`` normalised (a polygon line,
  ``class x1 y1 x2 y2 ...``, counts as its bounding box); labels in a ``labels/`` folder
  that mirrors ``images/`` (Ultralytics, Roboflow), or beside the images (Darknet). Class
  names from ``names``, else a ``classes.txt``, ``obj.names`` or ``data.yaml`` beside the
  labels; without them a class is its id (``0``, ``1``), which a class map can name.
- ``coco``: an instances JSON (``images``, ``annotations`` with ``bbox`` in pixels,
  ``categories``): the folder's ``*.json``, ``annotations/*.json`` or ``*/*.json``, or the
  file itself; ``file_name`` is looked up beside the JSON, in the folder and in ``images/``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from maskflow.errors import UserError

log = logging.getLogger(__name__)

FORMATS = ("voc", "yolo", "coco")
# maskflow's scene classes: what a set's own names are mapped to.
CLASSES = ("mask_weared_incorrect", "with_mask", "without_mask")
# Names other sets use for maskflow's classes (compared after lower-casing, with spaces
# and dashes read as underscores). Only unambiguous ones: "mask" or "face" alone could
# mean either class, so those need a class map.
ALIASES = {
    "with_incorrect_mask": "mask_weared_incorrect",
    "mask_worn_incorrect": "mask_weared_incorrect",
    "mask_worn_incorrectly": "mask_weared_incorrect",
    "incorrect_mask": "mask_weared_incorrect",
    "incorrectly_worn_mask": "mask_weared_incorrect",
    "without_a_mask": "without_mask",
    "no_mask": "without_mask",
    "with_a_mask": "with_mask",
}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
YOLO_NAME_FILES = ("classes.txt", "obj.names", "data.yaml", "data.yml")

Box = tuple[int, int, int, int]


class LabelFormatError(UserError, ValueError):
    """A folder whose labels cannot be read at all (no format found, bad class map): the
    message names the problem and the fix."""


@dataclass(frozen=True)
class LabelledImage:
    """One image and its faces, in pixels of the image as displayed (EXIF applied)."""

    path: Path
    rel: str  # posix path relative to the set's root: the sample id, and what a split lists
    faces: tuple[tuple[str, Box], ...]  # (maskflow class, or the set's own name where none maps, box)


@dataclass(frozen=True)
class Problem:
    """A label file (or one entry of a COCO file) that could not be used."""

    source: str  # the file, and where in it
    reason: str  # short and countable: image_missing, malformed_line, class_out_of_range, ...
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class SceneSet:
    """What :func:`read_scenes` read: the usable images, and every reason something was not."""

    root: Path
    format: str
    images: list[LabelledImage]
    problems: list[Problem] = field(default_factory=list)  # bad label files: their images are left out
    unlabelled: list[str] = field(default_factory=list)  # images without a label file: left out, not scored
    unmapped: dict[str, int] = field(default_factory=dict)  # the set's class names that map to none: boxes each
    classes: tuple[str, ...] = CLASSES

    def items(self, only: Iterable[str] | None = None, limit: int | None = None) -> list[tuple[Path, list[tuple[str, Box]]]]:
        """(image, [(class, box), ...]) per image, what the scorers take; ``only``: these rels."""
        keep = None if only is None else set(only)
        chosen = [(im.path, list(im.faces)) for im in self.images if keep is None or im.rel in keep]
        return chosen[:limit] if limit else chosen

    def faces_per_class(self) -> dict[str, int]:
        return dict(Counter(name for im in self.images for name, _ in im.faces))

    def report_lines(self, prog: str) -> list[str]:
        """What a command prints on stderr: each bad label file, and the counts left out."""
        lines = [f"{prog}: skipped {p}" for p in self.problems]
        if self.unlabelled:
            shown = ", ".join(self.unlabelled[:5]) + (", ..." if len(self.unlabelled) > 5 else "")
            lines.append(f"{prog}: {len(self.unlabelled)} image(s) have no label file and are not scored: {shown}")
        if self.unmapped:
            names = ", ".join(f"{name!r} ({n} boxes)" for name, n in sorted(self.unmapped.items()))
            lines.append(f"{prog}: class names that map to no maskflow class, not scored: {names}; map them with "
                         f"--class-map NAME=CLASS (classes: {', '.join(self.classes)})")
        return lines


# ------------------------------------------------------------------------ class names


def parse_class_map(text: str | None) -> dict[str, str]:
    """``"mask=with_mask,no-mask=without_mask"`` -> a dict (``--class-map``)."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in (text or "").split(","))):
        name, sep, target = pair.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise LabelFormatError(f"--class-map takes NAME=CLASS pairs separated by commas, got {pair!r}")
        out[name.strip()] = target.strip()
    return out


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


class ClassMapper:
    """A set's class name -> maskflow's: the class map first, then the name itself or a
    known alias; what maps to none stays as it is and is counted."""

    def __init__(self, classes: Sequence[str] = CLASSES, class_map: Mapping[str, str] | None = None) -> None:
        self.classes = tuple(classes)
        known = {_norm(c): c for c in self.classes}
        known.update({alias: target for alias, target in ALIASES.items() if target in self.classes})
        self._known = known
        self._map: dict[str, str] = {}
        for name, target in (class_map or {}).items():
            resolved = target if target in self.classes else known.get(_norm(str(target)))
            if resolved is None:
                raise LabelFormatError(f"class map {name}={target}: {target!r} is not one of the classes "
                                       f"{list(self.classes)}")
            self._map[str(name)] = resolved
            self._map.setdefault(_norm(str(name)), resolved)
        self.unmapped: Counter[str] = Counter()

    def __call__(self, name: str) -> str:
        name = str(name).strip()
        mapped = self._map.get(name) or self._map.get(_norm(name)) or self._known.get(_norm(name))
        if mapped is None:
            self.unmapped[name] += 1
            return name
        return mapped


# ------------------------------------------------------------------------------- boxes


def _box(x0: float, y0: float, x1: float, y1: float, width: float | None, height: float | None) -> Box | str:
    """An integer (x, y, w, h) box, or why the corners cannot be one. A box reaching past
    the edge is kept as it is (annotators often draw one pixel over); one that misses the
    image entirely, or has no area, is an error in the label file."""
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return "malformed_box"
    ix0, iy0, ix1, iy1 = (int(round(v)) for v in (x0, y0, x1, y1))
    if ix1 <= ix0 or iy1 <= iy0:
        return "empty_box"
    if width and height and (ix1 <= 0 or iy1 <= 0 or ix0 >= width or iy0 >= height):
        return "box_outside_image"
    return ix0, iy0, ix1 - ix0, iy1 - iy0


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the header only."""
    from PIL import Image

    with Image.open(path) as img:
        width, height = img.size
        try:
            orientation = int(img.getexif().get(0x0112, 1))
        except Exception:  # noqa: BLE001 - a broken EXIF block: the stored size
            orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


# --------------------------------------------------------------------------------- VOC


def parse_voc(xml_path: Path) -> tuple[str, list[tuple[str, Box]], tuple[int, int] | None]:
    """(image file name, [(class, box)], (width, height) or None) of one VOC file; raises
    ValueError naming what is wrong with it."""
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as exc:
        raise ValueError(f"bad_xml: {exc}") from None
    filename = (tree.findtext("filename") or "").strip()
    try:
        size = (int(float(tree.findtext("size/width") or 0)), int(float(tree.findtext("size/height") or 0)))
    except ValueError:
        size = (0, 0)
    size_known = size if size[0] > 0 and size[1] > 0 else None
    objects = []
    for i, obj in enumerate(tree.iter("object")):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if not name or bb is None:
            raise ValueError(f"malformed_object: object {i + 1} has no {'name' if not name else 'bndbox'}")
        try:
            corners = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise ValueError(f"malformed_box: object {i + 1} ({name}) lacks a numeric xmin/ymin/xmax/ymax") from None
        box = _box(*corners, *(size_known or (None, None)))
        if isinstance(box, str):
            raise ValueError(f"{box}: object {i + 1} ({name}) {corners}" + (f" in a {size_known[0]}x{size_known[1]} image"
                                                                             if size_known else ""))
        objects.append((name, box))
    return filename, objects, size_known


def _read_voc(root: Path, mapper: ClassMapper, images: str = "images", annotations: str = "annotations") -> SceneSet:
    ann_dir = next((d for d in (root / annotations, root / "Annotations") if d.is_dir()), root)
    image_dirs = [d for d in (root / images, root / "JPEGImages", ann_dir, root) if d.is_dir()]
    found, problems, seen = [], [], {}  # seen: image path -> index in found
    for xml_path in sorted(ann_dir.glob("*.xml")):
        rel_xml = _rel(xml_path, root)
        try:
            filename, objects, size = parse_voc(xml_path)
        except ValueError as exc:
            reason, _, detail = str(exc).partition(": ")
            problems.append(Problem(rel_xml, reason, detail))
            continue
        name = filename or xml_path.stem + ".jpg"
        path = next((d / name for d in image_dirs if (d / name).is_file()), None) or _same_stem(image_dirs, Path(name).stem)
        if path is None:
            problems.append(Problem(rel_xml, "image_missing", name))
            continue
        if size is None:  # no <size>: the image's own, for the outside-the-image check
            bad = _outside(objects, path)
            if bad:
                problems.append(Problem(rel_xml, "box_outside_image", bad))
                continue
        faces = tuple((mapper(label), box) for label, box in objects)
        if path in seen:  # two files annotate one image: their faces together, exact repeats once
            first = found[seen[path]]
            merged = tuple(dict.fromkeys(first.faces + faces))
            log.warning("%s also annotates %s: merged (%d + %d faces -> %d)", rel_xml, path.name, len(first.faces),
                        len(faces), len(merged))
            found[seen[path]] = LabelledImage(first.path, first.rel, merged)
            continue
        seen[path] = len(found)
        found.append(LabelledImage(path, _rel(path, root), faces))
    labelled = set(seen)
    image_dir = root / images if (root / images).is_dir() else None
    unlabelled = [_rel(p, root) for p in sorted(image_dir.iterdir()) if p.is_file() and p not in labelled] if image_dir else []
    return SceneSet(root, "voc", found, problems, unlabelled, dict(mapper.unmapped), mapper.classes)


def _same_stem(folders: Sequence[Path], stem: str) -> Path | None:
    """An image named like the annotation's ``<filename>`` with another extension (sets
    converted from PNG to JPEG keep the old name in their .xml files)."""
    for folder in folders:
        found = sorted(p for p in folder.glob(f"{glob_escape(stem)}.*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if found:
            return found[0]
    return None


def _outside(objects: Sequence[tuple[str, Box]], image: Path) -> str:
    try:
        width, height = image_size(image)
    except Exception:  # noqa: BLE001 - an unreadable image is named when it is decoded
        return ""
    for name, (x, y, w, h) in objects:
        if x + w <= 0 or y + h <= 0 or x >= width or y >= height:
            return f"{name} {[x, y, w, h]} in a {width}x{height} image"
    return ""


# -------------------------------------------------------------------------------- YOLO


def yolo_names(root: Path, label_dirs: Iterable[Path] = ()) -> list[str] | None:
    """Class names from a ``classes.txt``, ``obj.names`` or ``data.yaml`` in the folder or
    beside the labels (the first found), or None."""
    folders = list(dict.fromkeys([root, root / "labels", *label_dirs, *(d.parent for d in label_dirs)]))
    for file_name in YOLO_NAME_FILES:
        for folder in folders:
            path = folder / file_name
            if not path.is_file():
                continue
            if path.suffix in (".yaml", ".yml"):
                import yaml

                try:
                    names = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("names")
                except (yaml.YAMLError, AttributeError) as exc:
                    raise LabelFormatError(f"{path}: cannot read its class names ({exc}); pass --names a,b,c") from None
                if isinstance(names, dict):  # Ultralytics: {0: name, 1: name}
                    names = [names[k] for k in sorted(names, key=int)]
                if names:
                    return [str(n) for n in names]
                continue
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return None


def _yolo_label(image: Path, root: Path) -> Path | None:
    """The label file of an image: under the ``labels`` folder that mirrors its ``images``
    folder (the last one in its path), else beside it."""
    parts = image.relative_to(root).parts
    candidates = []
    if "images" in parts[:-1]:
        i = len(parts) - 2 - parts[:-1][::-1].index("images")
        candidates.append(root.joinpath(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt"))
    candidates.append(image.with_suffix(".txt"))
    return next((c for c in candidates if c.is_file()), None)


def _parse_yolo(path: Path, names: Sequence[str] | None) -> list[tuple[str, tuple[float, float, float, float]]]:
    """[(class, normalised corners)] of one label file; raises ValueError naming the line."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            raise ValueError(f"malformed_line: line {number}: {line.strip()[:80]!r}") from None
        class_id, coords = values[0], values[1:]
        if not class_id.is_integer() or class_id < 0 or not (len(coords) == 4 or (len(coords) >= 6 and len(coords) % 2 == 0)):
            raise ValueError(f"malformed_line: line {number}: {line.strip()[:80]!r} (expected: class cx cy w h)")
        if names is not None and int(class_id) >= len(names):
            raise ValueError(f"class_out_of_range: line {number}: class {int(class_id)}, but {len(names)} names are known")
        if len(coords) == 4:
            cx, cy, w, h = coords
            corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:  # a polygon (segmentation export): its bounding box
            xs, ys = coords[0::2], coords[1::2]
            corners = (min(xs), min(ys), max(xs), max(ys))
        if not all(math.isfinite(v) for v in corners):
            raise ValueError(f"malformed_line: line {number}: {line.strip()[:80]!r}")
        if corners[2] <= corners[0] or corners[3] <= corners[1]:
            raise ValueError(f"empty_box: line {number}: {line.strip()[:80]!r}")
        if corners[2] <= 0 or corners[3] <= 0 or corners[0] >= 1 or corners[1] >= 1:
            raise ValueError(f"box_outside_image: line {number}: {line.strip()[:80]!r} (coordinates are fractions of the image)")
        out.append((names[int(class_id)] if names is not None else str(int(class_id)), corners))
    return out


def _read_yolo(root: Path, mapper: ClassMapper, names: Sequence[str] | None = None) -> SceneSet:
    images = _images_under(root)
    label_files = {p for p in root.rglob("*.txt") if "labels" in p.relative_to(root).parts[:-1]
                   and p.name not in YOLO_NAME_FILES}
    names = list(names) if names else yolo_names(root, sorted({p.parent for p in label_files}))
    found, problems, unlabelled, used = [], [], [], set()
    for image in images:
        label = _yolo_label(image, root)
        rel = _rel(image, root)
        if label is None or label.name in YOLO_NAME_FILES:
            unlabelled.append(rel)
            continue
        used.add(label)
        try:
            boxes = _parse_yolo(label, names)
            width, height = image_size(image) if boxes else (0, 0)
        except ValueError as exc:
            reason, _, detail = str(exc).partition(": ")
            problems.append(Problem(_rel(label, root), reason, detail))
            continue
        except Exception as exc:  # noqa: BLE001 - the image's header: named, like any bad input
            problems.append(Problem(rel, "unreadable_image", f"{type(exc).__name__}: {exc}"))
            continue
        faces = []
        for name, (x0, y0, x1, y1) in boxes:
            box = _box(x0 * width, y0 * height, x1 * width, y1 * height, width, height)
            if isinstance(box, str):  # under a pixel once scaled
                problems.append(Problem(_rel(label, root), box, f"{name} {[x0, y0, x1, y1]} in a {width}x{height} image"))
                break
            faces.append((name, box))
        else:  # names are mapped (and counted) once the whole file is usable
            found.append(LabelledImage(image, rel, tuple((mapper(name), box) for name, box in faces)))
    for orphan in sorted(label_files - used):
        problems.append(Problem(_rel(orphan, root), "image_missing", "no image of this name in the mirrored images folder"))
    return SceneSet(root, "yolo", found, problems, unlabelled, dict(mapper.unmapped), mapper.classes)


# -------------------------------------------------------------------------------- COCO


def coco_files(root: Path) -> list[Path]:
    """The JSON files a COCO set's labels may be in (the file itself, when given one)."""
    if root.is_file():
        return [root]
    return list(dict.fromkeys(sorted(root.glob("*.json")) + sorted(root.glob("annotations/*.json")) + sorted(root.glob("*/*.json"))))


def _read_coco(root: Path, mapper: ClassMapper) -> SceneSet:
    base = root if root.is_dir() else root.parent
    found: dict[Path, LabelledImage] = {}
    problems: list[Problem] = []
    referenced: set[Path] = set()  # images some JSON names, usable or not
    read_any = False
    for json_path in coco_files(root):
        source = _rel(json_path, base)
        try:
            data = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(Problem(source, "bad_json", str(exc)[:200]))
            continue
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            continue  # another JSON (metrics, a config): not a label file
        read_any = True
        try:
            categories = {int(c["id"]): str(c["name"]) for c in data.get("categories") or []}
            entries = {int(im["id"]): im for im in data["images"]}
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(Problem(source, "bad_json", f"each image needs an id and a file_name, each category an id "
                                                        f"and a name ({type(exc).__name__}: {exc})"))
            continue
        boxes: dict[int, list] = {i: [] for i in entries}
        bad: dict[int, Problem] = {}  # image id -> its first bad annotation: the image is left out
        for k, ann in enumerate(data.get("annotations") or []):
            where = f"{source} annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
            try:
                image_id = int(ann["image_id"])
            except (KeyError, TypeError, ValueError):
                problems.append(Problem(where, "malformed_annotation", "no image_id"))
                continue
            if image_id not in entries:
                problems.append(Problem(where, "unknown_image", f"image_id {image_id} is not in images"))
                continue
            try:
                category = int(ann["category_id"])
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError):
                bad.setdefault(image_id, Problem(where, "malformed_annotation", "needs category_id and bbox [x, y, w, h]"))
                continue
            if category not in categories:
                bad.setdefault(image_id, Problem(where, "unknown_category", f"category_id {category}"))
                continue
            boxes[image_id].append((categories[category], (x, y, x + w, y + h)))
        for image_id, entry in entries.items():
            name = str(entry.get("file_name") or "")
            where = f"{source} image {image_id} ({name})"
            candidates = [json_path.parent / name, base / name, base / "images" / name, json_path.parent.parent / "images" / name]
            path = next((c for c in candidates if name and c.is_file()), None)
            if path is not None:
                referenced.add(path)
            if image_id in bad:
                problems.append(bad[image_id])
                continue
            if path is None:
                problems.append(Problem(where, "image_missing", "not beside the JSON, in the folder or in images/"))
                continue
            faces, error = [], None
            try:
                width, height = float(entry.get("width") or 0), float(entry.get("height") or 0)
                if boxes[image_id] and not (width > 0 and height > 0):
                    width, height = image_size(path)
            except Exception as exc:  # noqa: BLE001 - the image's header: named, like any bad input
                error = Problem(where, "unreadable_image", f"{type(exc).__name__}: {exc}")
            for label, corners in boxes[image_id] if error is None else ():
                box = _box(*corners, width, height)
                if isinstance(box, str):
                    error = Problem(where, box, f"{label} [x0, y0, x1, y1] {[round(v, 1) for v in corners]} in a "
                                                f"{width:g}x{height:g} image")
                    break
                faces.append((label, box))
            faces = [(mapper(label), box) for label, box in faces] if error is None else []
            if error is not None:
                problems.append(error)
            elif path in found:  # two files list one image: its faces together, exact repeats once
                first = found[path]
                found[path] = LabelledImage(first.path, first.rel, tuple(dict.fromkeys(first.faces + tuple(faces))))
            else:
                found[path] = LabelledImage(path, _rel(path, base), tuple(faces))
    if not read_any and not problems:
        raise LabelFormatError(f"no COCO instances JSON (with images, annotations, categories) found at {root}")
    folders = {p.parent for p in referenced}
    unlabelled = sorted(_rel(p, base) for folder in folders for p in folder.iterdir()
                        if p.suffix.lower() in IMAGE_EXTS and p.is_file() and p not in referenced)
    images = sorted(found.values(), key=lambda im: im.rel)
    return SceneSet(base, "coco", images, problems, unlabelled, dict(mapper.unmapped), mapper.classes)


# ------------------------------------------------------------------------- the reader


def detect_format(root: Path) -> str:
    """The label format a folder holds: VOC xml, a COCO JSON, or YOLO txt."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() == ".json":
            return "coco"
        raise LabelFormatError(f"{root} is a file: give the folder of a VOC or YOLO set, or a COCO JSON")
    if not root.is_dir():
        raise LabelFormatError(f"{root} does not exist: give a folder of labelled images")
    if any(d.is_dir() and any(d.glob("*.xml")) for d in (root / "annotations", root / "Annotations", root)):
        return "voc"
    for path in coco_files(root):
        try:
            with open(path, encoding="utf-8") as f:
                if '"images"' in f.read(1 << 20):
                    return "coco"
        except OSError:
            continue
    if any(p.suffix == ".txt" and p.name not in YOLO_NAME_FILES for p in root.rglob("*.txt")):
        return "yolo"
    raise LabelFormatError(f"cannot tell the label format of {root}: expected VOC .xml files in annotations/, a COCO "
                           "instances .json, or YOLO .txt labels (labels/ beside images/); pass --format voc|yolo|coco")


def read_scenes(root: str | Path, format: str | None = None, *, names: Sequence[str] | None = None,
                class_map: Mapping[str, str] | None = None, classes: Sequence[str] = CLASSES,
                images: str = "images", annotations: str = "annotations") -> SceneSet:
    """Every labelled image of ``root`` (``format``: voc | yolo | coco; None: what the
    folder holds), its faces' class names mapped to ``classes`` by ``class_map`` and the
    known aliases. ``names``: YOLO's class names, by id. ``images``/``annotations``: VOC's
    folder names. Raises :class:`LabelFormatError` when nothing can be read."""
    root = Path(root)
    format = format or detect_format(root)
    if format not in FORMATS:
        raise LabelFormatError(f"unknown label format {format!r}: choose from {', '.join(FORMATS)}")
    if not root.exists():
        raise LabelFormatError(f"{root} does not exist: give a folder of labelled images")
    mapper = ClassMapper(classes, class_map)
    if format == "voc":
        scenes = _read_voc(root, mapper, images, annotations)
    elif format == "yolo":
        scenes = _read_yolo(root, mapper, names)
    else:
        scenes = _read_coco(root, mapper)
    if not scenes.images and not scenes.problems:
        raise LabelFormatError(f"no labelled image found in {root} as {format}"
                               + (f" ({len(scenes.unlabelled)} images without labels)" if scenes.unlabelled else ""))
    return scenes


def require_mapped(scenes: SceneSet) -> None:
    """Stop when none of a set's faces carries one of maskflow's classes: scoring it would
    say nothing. The message lists the set's names and the class map that would fix it."""
    if scenes.images and not any(label in scenes.classes for im in scenes.images for label, _ in im.faces):
        names = sorted(scenes.unmapped) or sorted({label for im in scenes.images for label, _ in im.faces})
        if not names:
            return  # face-free images only: legal, scored as such
        example = ",".join(f"{n}=CLASS" for n in names[:4])
        raise LabelFormatError(f"none of this set's class names {names} is one of maskflow's: map them with --class-map "
                               f"{example} (CLASS: {' | '.join(scenes.classes)}), or data.class_map in its config")


# ------------------------------------------------------------------ command-line options


def add_label_args(parser) -> None:
    """``--format``, ``--names`` and ``--class-map``: how a command reads a labelled folder."""
    parser.add_argument("--format", choices=FORMATS, default=None, help="the labels' format (default: what the folder holds)")
    parser.add_argument("--names", default=None,
                        help="YOLO: the class names by id, comma-separated (default: a classes.txt, obj.names or data.yaml "
                             "beside the labels)")
    parser.add_argument("--class-map", default=None,
                        help="the set's class names -> maskflow's, e.g. mask=with_mask,no-mask=without_mask "
                             "(with_incorrect_mask and other known spellings map by themselves)")


def label_options(args) -> dict:
    """The keyword arguments of :func:`read_scenes` that :func:`add_label_args`'s options give."""
    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
    return {"format": args.format, "names": names, "class_map": parse_class_map(args.class_map)}


# ----------------------------------------------------------------------------- writers


def write_scenes(images: Sequence[LabelledImage], out: Path, format: str, classes: Sequence[str] = CLASSES,
                 link: bool = True) -> Path:
    """Write labelled images as a ``format`` set in ``out`` (images under ``images/``,
    linked or copied): VOC .xml files, YOLO .txt files with a ``data.yaml`` of ``classes``,
    or one COCO ``annotations/instances.json``. What the readers read back is ``images``."""
    import shutil

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    index = {c: i for i, c in enumerate(classes)}
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    for number, image in enumerate(images, 1):
        target = out / "images" / image.path.name
        if not target.exists():
            if link:
                target.symlink_to(image.path.resolve())
            else:
                shutil.copy(image.path, target)
        width, height = image_size(image.path)
        if format == "voc":
            (out / "annotations").mkdir(exist_ok=True)
            objects = "".join(f"<object><name>{label}</name><bndbox><xmin>{x}</xmin><ymin>{y}</ymin><xmax>{x + w}</xmax>"
                              f"<ymax>{y + h}</ymax></bndbox></object>" for label, (x, y, w, h) in image.faces)
            (out / "annotations" / f"{target.stem}.xml").write_text(
                f"<annotation><filename>{target.name}</filename><size><width>{width}</width><height>{height}</height>"
                f"<depth>3</depth></size>{objects}</annotation>", encoding="utf-8")
        elif format == "yolo":
            (out / "labels").mkdir(exist_ok=True)
            lines = [f"{index[label]} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}"
                     for label, (x, y, w, h) in image.faces]
            (out / "labels" / f"{target.stem}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        elif format == "coco":
            coco["images"].append({"id": number, "file_name": target.name, "width": width, "height": height})
            coco["annotations"] += [{"id": len(coco["annotations"]) + k + 1, "image_id": number, "category_id": index[label] + 1,
                                     "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
                                    for k, (label, (x, y, w, h)) in enumerate(image.faces)]
        else:
            raise LabelFormatError(f"unknown label format {format!r}: choose from {', '.join(FORMATS)}")
    if format == "yolo":
        (out / "data.yaml").write_text("names: [" + ", ".join(classes) + "]\n", encoding="utf-8")
    if format == "coco":
        (out / "annotations").mkdir(exist_ok=True)
        (out / "annotations" / "instances.json").write_text(json.dumps(coco), encoding="utf-8")
    return out
