"""SCRFD (InsightFace): fixed 640x640 letterboxed input, five landmarks.

**Its model terms are non-commercial research only**: never a default, and the CLI warns
when it is picked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskflow.detection.onnx_base import OnnxFinder, PassResult, _session
from maskflow.faces import resize_to_scale

SCRFD_LICENCE = ("SCRFD's model terms (InsightFace) allow non-commercial research use only: "
                 "do not use detect=scrfd in a product")


class ScrfdFinder(OnnxFinder):
    """SCRFD (2.5G or 500M, with landmarks): 640x640 letterboxed RGB, anchor-free
    distances at strides 8/16/32 with two anchors per cell. Non-commercial research only."""

    name = "scrfd"
    SIDE = 640
    STRIDES = (8, 16, 32)

    def __init__(self, model_path: Path, **kwargs) -> None:
        super().__init__(model_path, **kwargs)
        self._session = _session(self.model_path)
        self._input = self._session.get_inputs()[0].name
        self._centres = {}
        for stride in self.STRIDES:
            n = self.SIDE // stride
            ys, xs = np.mgrid[:n, :n]
            centres = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float64) * stride
            self._centres[stride] = np.repeat(centres, 2, axis=0)  # two anchors per cell

    def _pass(self, rgb: np.ndarray) -> PassResult:
        h, w = rgb.shape[:2]
        scale = self.SIDE / max(h, w)
        image = resize_to_scale(rgb, scale)
        canvas = np.zeros((self.SIDE, self.SIDE, 3), np.uint8)
        canvas[: image.shape[0], : image.shape[1]] = image
        blob = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outputs = self._session.run(None, {self._input: blob})
        corners, scores, marks = [], [], []
        for k, stride in enumerate(self.STRIDES):
            score = outputs[k][0, :, 0]
            keep = score >= self.min_score
            if not keep.any():
                continue
            centre = self._centres[stride][keep]
            dist = outputs[k + 3][0][keep].astype(np.float64) * stride
            kps = outputs[k + 6][0][keep].astype(np.float64) * stride
            corners.append(np.concatenate([centre - dist[:, :2], centre + dist[:, 2:]], 1))
            marks.append(kps + np.tile(centre, 5))
            scores.append(score[keep].astype(np.float64))
        if not scores:
            return PassResult.empty()
        return PassResult(np.concatenate(corners) / scale, np.concatenate(scores), np.concatenate(marks) / scale)
