"""Ultra-Light-Fast RFB-640 trained with masked faces (MIT): fixed 640x480 input; it also
scores face vs masked face (kept in ``Face.probs``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from maskflow.detection.onnx_base import OnnxFinder, PassResult, _session


class UltraFaceFinder(OnnxFinder):
    """Ultra-Light-Fast RFB-640, masked-face model: 640x480 RGB, scores for background /
    face / masked face; the frame is stretched to the input, boxes come back normalised."""

    name = "ultraface"
    INPUT = (640, 480)  # width, height

    def __init__(self, model_path: Path, **kwargs) -> None:
        super().__init__(model_path, **kwargs)
        self._session = _session(self.model_path)
        self._input = self._session.get_inputs()[0].name

    def _pass(self, rgb: np.ndarray) -> PassResult:
        h, w = rgb.shape[:2]
        image = cv2.resize(rgb, self.INPUT, interpolation=cv2.INTER_AREA if w > self.INPUT[0] else cv2.INTER_LINEAR)
        blob = ((image.astype(np.float32) - 127.0) / 128.0).transpose(2, 0, 1)[None]
        scores, boxes = self._session.run(None, {self._input: blob})
        scores, boxes = scores[0], boxes[0]
        face = 1.0 - scores[:, 0]
        keep = face >= self.min_score
        corners = boxes[keep].astype(np.float64) * np.array([w, h, w, h])
        probs = scores[keep, 1:] / np.maximum(face[keep, None], 1e-6)  # face vs masked face, given a face
        return PassResult(corners, face[keep].astype(np.float64), None, probs.astype(np.float64))
