"""The face record and the square face crop shared by training and run time.

The same :func:`crop_face` is used when preparing training data and when classifying
detected faces in :mod:`maskflow.detect`, so the classifier sees at run time what it
saw in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

# TensorFlow, mtcnn are imported inside the functions that use them: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without them.


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in pixels of the original image
    score: float
    probs: tuple[float, ...] | None = None  # class probabilities, from a detector that classifies
    label: int | None = None  # the class index this box stands for (a per-class detector peak)
    landmarks: tuple[float, ...] | None = None  # x, y pairs (eyes, nose, mouth corners), where the finder has them
    plausible: bool = True  # False: the landmarks lie where no face's do (ranked, never reported)

    def class_index(self) -> int:
        """The class this face is reported as: its own peak's class, else the most likely."""
        return self.label if self.label is not None else int(np.argmax(self.probs))


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


def resize_to_scale(rgb: np.ndarray, scale: float) -> np.ndarray:
    if abs(scale - 1.0) < 1e-6:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR)


def largest_face(faces: Sequence[Face], min_score: float) -> Face | None:
    confident = [f for f in faces if f.score >= min_score]
    return max(confident, key=lambda f: f.box[2] * f.box[3]) if confident else None
