"""``build_finder``: the one place that turns detector settings into a :class:`Finder`.

Settings are ``conf/detect``'s ``finders.<name>`` blocks (stored with a registered
model). ``folders`` are searched for the finders' model files (checked by sha256).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from maskflow.detection.fusion import FusionFinder
from maskflow.detection.mtcnn import FaceDetector
from maskflow.detection.scrfd import SCRFD_LICENCE, ScrfdFinder
from maskflow.detection.settings import DetectorSettings
from maskflow.detection.ultraface import UltraFaceFinder
from maskflow.detection.weights import resolve
from maskflow.detection.yunet import YuNetFinder
from maskflow.errors import UsageError

log = logging.getLogger(__name__)


class MissingFinderSettings(UsageError, ValueError):
    """A finder picked for a model whose stored settings predate it."""


ONNX_FINDERS = ("yunet", "yunet_n", "ultraface", "scrfd")
FINDERS = ONNX_FINDERS + ("fusion", "mtcnn")
# Settings keys that are not the finder constructor's.
_NOT_KWARGS = {"file", "sha256", "box_calibration", "licence", "members", "method", "iou", "weights"}


def mtcnn_finder(settings: Mapping[str, Any]) -> FaceDetector:
    """MTCNN (:class:`maskflow.detection.mtcnn.FaceDetector`, itself a :class:`Finder`) from settings
    (a fusion member's ``finders.mtcnn`` block; what it lacks, :class:`DetectorSettings` gives)."""
    base = DetectorSettings()
    return FaceDetector(min_face_size=float(settings.get("min_face", base.min_face)),
                        max_side=int(settings.get("max_side", base.max_side)),
                        thresholds=tuple(settings.get("thresholds") or base.thresholds))


def _onnx_finder(name: str, settings: Mapping[str, Any], folders: Sequence[str | Path]):

    classes = {"yunet": YuNetFinder, "yunet_n": YuNetFinder, "ultraface": UltraFaceFinder, "scrfd": ScrfdFinder}
    if name == "scrfd":
        print(f"maskflow: warning: {SCRFD_LICENCE}", file=sys.stderr)
    path = resolve(str(settings["file"]), settings.get("sha256"), folders)
    kwargs = {k: v for k, v in settings.items() if k not in _NOT_KWARGS}
    try:
        return classes[name](path, **kwargs)
    except TypeError as exc:  # a settings block missing a key (or with an unknown one)
        raise ValueError(f"detect.finders.{name}: {exc}; see conf/detect/mtcnn.yaml for a complete block") from exc


def build_finder(name: str, finders: Mapping[str, Mapping[str, Any]], folders: Sequence[str | Path] = ()):
    """The finder called ``name`` (``conf/detect`` ``backend``), built from ``finders[name]``."""
    if name not in FINDERS:
        raise ValueError(f"unknown face finder {name!r}; choose from {list(FINDERS)} (or facedet, the trained CenterNet)")
    settings = dict(finders.get(name) or {})
    if name == "mtcnn":
        return mtcnn_finder(settings)
    if name == "fusion":
        members = list(settings.get("members") or [])
        if not members or any(m == "fusion" for m in members):
            raise ValueError(f"finders.fusion.members must list other finders, got {members}")
        missing = [k for k in ("iou", "method") if k not in settings]
        if missing:
            raise ValueError(f"detect.finders.fusion lacks {missing}; see conf/detect/mtcnn.yaml")
        return FusionFinder([build_finder(m, finders, folders) for m in members], settings["iou"], settings["method"],
                            settings.get("weights"),
                            [(finders.get(m) or {}).get("box_calibration") for m in members])
    if "file" not in settings:  # a model registered before this finder existed stores no block for it
        raise MissingFinderSettings(f"this model's detector settings have no finders.{name} block (registered before "
                                    f"maskflow offered {name}): re-run `python -m maskflow.pipeline` to register it "
                                    "again, or pick another --backend")
    return _onnx_finder(name, settings, folders)


def finder_files(name: str, finders: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The model file names finder ``name`` needs (to ship them inside a registered model)."""
    settings = finders.get(name) or {}
    if name == "fusion":
        return sorted({f for m in settings.get("members") or [] for f in finder_files(m, finders)})
    return [str(settings["file"])] if name in ONNX_FINDERS and settings.get("file") else []


def file_sha256(finders: Mapping[str, Mapping[str, Any]], file: str) -> str | None:
    """The sha256 the settings give for model file ``file``."""
    return next((str(v["sha256"]) for v in finders.values() if v.get("file") == file and v.get("sha256")), None)
