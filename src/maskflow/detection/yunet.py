"""YuNet (Apache-2.0) through OpenCV's ``cv2.FaceDetectorYN``: any input size, five landmarks."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from maskflow.detection.onnx_base import OnnxFinder, PassResult

# OpenCV's log level is process-wide: finders built on several threads at once take turns,
# so no build restores the level while another still needs it quiet.
_QUIET_BUILD = threading.Lock()


class YuNetFinder(OnnxFinder):
    """YuNet through ``cv2.FaceDetectorYN`` (BGR input of any size, landmarks)."""

    name = "yunet"
    tiles = False
    own_nms = True

    def __init__(self, model_path: Path, top_k: int = 5000, **kwargs) -> None:
        super().__init__(model_path, **kwargs)
        # OpenCV keeps boxes from this score on; min_score filters after merging.
        # OpenCV 5 warns here that its new graph engine ignores the target it sets itself:
        # nothing a user can act on, so its log is kept to errors while the net is built.
        with _QUIET_BUILD:
            level = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
            try:
                self._net = cv2.FaceDetectorYN.create(str(self.model_path), "", (320, 320), min(self.min_score, 0.9),
                                                      self.nms_iou, int(top_k))
            finally:
                cv2.utils.logging.setLogLevel(level)
        self._size: tuple[int, int] | None = None

    def _pass(self, rgb: np.ndarray) -> PassResult:
        h, w = rgb.shape[:2]
        if (w, h) != self._size:
            self._net.setInputSize((w, h))
            self._size = (w, h)
        _, rows = self._net.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if rows is None or not len(rows):
            return PassResult.empty()
        rows = np.asarray(rows, np.float64)
        x, y, bw, bh = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        return PassResult(np.stack([x, y, x + bw, y + bh], 1), rows[:, 14], rows[:, 4:14])
