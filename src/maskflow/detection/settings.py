"""The detector's settings: the schema of ``conf/detect`` and the only place its defaults live.

``DetectorSettings`` is registered in Hydra's ConfigStore as ``detect/base``; every file
in ``conf/detect`` starts from it (``defaults: [base]``) and sets only what differs, and
Hydra checks their types. The same record is stored with a registered model, so the
detect CLI, the scene evaluation and serving rebuild the detector that was evaluated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


@dataclass
class StillsSettings:
    """The trained CenterNet's extra effort on still images (video frames keep the base)."""

    zoom_side: Optional[int] = None  # + a pass at this long side for faces under zoom_face px; None: off
    zoom_face: float = 32.0
    flip: bool = False  # average in the mirrored image


@dataclass
class DetectorSettings:
    """How faces are found and labelled. Defaults: MTCNN finds, the crop classifier labels."""

    backend: str = "mtcnn"  # mtcnn | yunet | yunet_n | ultraface | scrfd | fusion | facedet (the trained CenterNet)
    labels: str = "classifier"  # classifier: crop + classify | detector: facedet's class maps | fuse: mean of both
    min_confidence: float = 0.5  # finder score to keep a face
    margin: float = 0.2  # crop margin; the pipeline sets the one the classifier was trained with
    # Scoring only (mAP): an unsure face also stands for each other class that has at least
    # this probability, ranked lower, so a rare class still counts in its AP; None: never.
    # What users read keeps one record per face, with every class's probability.
    runner_up: Optional[float] = None
    # The operating point: a face is reported when score x detector_score (its ranking
    # score) is at least this. The evaluate stage chooses it on the val scenes
    # (conf/evaluate operating_point) and stores it with the registered model; None: every
    # candidate, the ranked list that mAP is computed from (``detect --all``).
    operating_point: Optional[float] = None
    # Finder boxes -> the annotations' box convention (centre shift, scale); None: raw boxes.
    # Crops for the classifier always use the raw box.
    box_calibration: Optional[dict[str, float]] = None
    # Each crop is also classified mirrored and the two averaged (2x the classifier's cost).
    classify_flip: bool = False
    # MTCNN
    max_side: int = 640  # frames are downscaled to this long side; boxes mapped back
    min_face: float = 9.0  # smallest face looked for, px after downscaling (<12 upsamples)
    thresholds: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.5])  # P-, R-, O-Net; masks lower face scores
    # The trained CenterNet (facedet)
    long_side: int = 320  # frames are resized to this long side
    peaks: str = "face"  # face: one box per face | class: a box per peak of each class map
    flip: bool = False  # also run the mirrored frame (2x the cost)
    nms_iou: Optional[float] = None  # drop a box overlapping a higher one by more than this
    stills: StillsSettings = field(default_factory=StillsSettings)
    # The pretrained finders by name: model file, sha256 and their own settings
    # (conf/detect/mtcnn.yaml holds the catalogue).
    finders: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any] | None) -> "DetectorSettings":
        """Settings from a config or a registered model's metadata.

        Compatibility: versions registered before the settings schema (maskflow 0.1, up
        to 2026-11) stored a partial dict; keys they lack take the defaults above, which
        reproduce their MTCNN + classifier behaviour, and keys no longer known are
        dropped with a warning. Kept until those versions are retired from the registry."""
        stored = dict(stored or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(stored) - known)
        if unknown:
            log.warning("detector settings: ignoring unknown keys %s (from another maskflow version)", unknown)
        # A None stored for a field that cannot be None (older versions wrote some) means "unset".
        nullable = {f.name for f in fields(cls) if "Optional" in str(f.type)}
        given = {k: v for k, v in stored.items() if k in known and (v is not None or k in nullable)}
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), given))

    def calibration(self) -> Optional[dict[str, float]]:
        """The box calibration the chosen finder's boxes get (:mod:`maskflow.detection.calibration`):
        ``finders.<backend>.box_calibration``, or ``box_calibration`` for MTCNN. The trained
        detector's boxes follow the annotations already: it has none unless one was fitted."""
        if self.backend == "mtcnn":
            return self.box_calibration
        return (self.finders.get(self.backend) or {}).get("box_calibration")

    def with_calibration(self, calibration: Optional[Mapping[str, float]]) -> "DetectorSettings":
        """A copy whose chosen finder's boxes get ``calibration`` (a scene set's convention)."""
        value = {k: float(v) for k, v in calibration.items()} if calibration else None
        if self.backend == "mtcnn":
            return replace(self, box_calibration=value)
        finders = {name: dict(block) for name, block in self.finders.items()}
        finders.setdefault(self.backend, {})["box_calibration"] = value
        return replace(self, finders=finders)

    def with_options(self, **given: Any) -> "DetectorSettings":
        """A copy with the options that were given (None: not given)."""
        return replace(self, **{k: v for k, v in given.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return OmegaConf.to_container(OmegaConf.structured(self), resolve=True)


ConfigStore.instance().store(group="detect", name="base", node=DetectorSettings)
