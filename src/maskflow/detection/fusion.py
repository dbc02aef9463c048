"""Several finders on the same frame, their boxes fused (weighted box fusion or NMS)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from maskflow.detection.boxes import calibrated, weighted_box_fusion
from maskflow.faces import Face


class FusionFinder:
    """Several finders on the same frame, their boxes fused (:func:`weighted_box_fusion`)."""

    name = "fusion"

    def __init__(self, members: Sequence[Any], iou: float, method: str, weights: Sequence[float] | None = None,
                 calibrations: Sequence[Mapping | None] = ()) -> None:
        self.members = list(members)
        self.iou, self.method = float(iou), str(method)
        self.weights = list(weights) if weights else None
        # Members' boxes follow different conventions: each is moved to the annotations'
        # before fusing, so the fused box is an average of like with like.
        self.calibrations = list(calibrations) or [None] * len(self.members)

    def find(self, rgb: np.ndarray, still: bool = False) -> list[Face]:
        h, w = rgb.shape[:2]
        groups = [[calibrated(f, c, w, h) for f in m.find(rgb, still)] for m, c in zip(self.members, self.calibrations)]
        return weighted_box_fusion(groups, self.iou, self.weights, self.method)
