"""Face detection (MTCNN) and the square face crop shared by training and run time.

The same :func:`crop_face` is used when preparing training data and when classifying
detected faces in :mod:`maskflow.detect`, so the classifier sees at run time what it
saw in training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in pixels of the original image
    score: float


def crop_face(rgb: np.ndarray, box: Sequence[float], margin: float, size: int) -> np.ndarray:
    """Square crop around ``box`` (x, y, w, h), grown by ``margin`` of its long side on
    every side, padded with edge pixels where it leaves the image, resized to ``size``."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1.0 + 2.0 * margin)
    side = max(side, 2.0)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    x1, y1 = x0 + int(round(side)), y0 + int(round(side))
    height, width = rgb.shape[:2]
    pad = (max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width))
    crop = rgb[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)]
    if any(pad):
        crop = cv2.copyMakeBorder(crop, *pad, borderType=cv2.BORDER_REPLICATE)
    return resize_square(crop, size)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size`` x ``size``; area interpolation when shrinking avoids aliasing."""
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


class FaceDetector:
    """MTCNN (weights ship with the ``mtcnn`` package) behind a small, typed interface.

    Large images are downscaled to ``max_side`` for detection and boxes are mapped back:
    MTCNN's cost grows with pixel count while the faces that matter stay findable.
    """

    def __init__(
        self,
        min_face_size: int = 20,
        max_side: int = 640,
        thresholds: Sequence[float] = (0.6, 0.7, 0.8),
        landmarks: bool = True,
    ) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from mtcnn import MTCNN

        stages = "face_and_landmarks_detection" if landmarks else "face_detection_only"
        self._mtcnn = MTCNN(stages=stages, device="CPU:0")
        self.min_face_size = int(min_face_size)
        self.max_side = int(max_side)
        self.thresholds = tuple(float(t) for t in thresholds)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w)) if self.max_side > 0 else 1.0
        small = resize_to_scale(rgb, scale)
        if min(small.shape[:2]) < 12:  # smaller than MTCNN's first network input
            return []
        pnet, rnet, onet = self.thresholds
        found = self._mtcnn.detect_faces(
            small,
            min_face_size=self.min_face_size,
            threshold_pnet=pnet,
            threshold_rnet=rnet,
            threshold_onet=onet,
        )
        faces = []
        for item in found or []:
            bx, by, bw, bh = (float(v) / scale for v in item["box"])
            if bw < 1 or bh < 1:
                continue
            faces.append(Face(box=(int(round(bx)), int(round(by)), int(round(bw)), int(round(bh))), score=float(item["confidence"])))
        return faces


def resize_to_scale(rgb: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def largest_face(faces: Sequence[Face], min_score: float) -> Face | None:
    confident = [f for f in faces if f.score >= min_score]
    return max(confident, key=lambda f: f.box[2] * f.box[3]) if confident else None
