"""MTCNN (the ``mtcnn`` package, MIT) as a :class:`maskflow.detection.Finder`; prepare
also uses it to find the face in close-up photos."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from maskflow.faces import Face, resize_to_scale

# TensorFlow, mtcnn are imported inside the functions that use them: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without them.


class FaceDetector:
    """MTCNN (weights ship with the ``mtcnn`` package) behind a small, typed interface.

    Each frame is resized once so that a face of ``min_face_size`` pixels (measured after
    fitting the frame into ``max_side``) becomes 12 pixels, P-Net's window; MTCNN's
    pyramid then starts at that scale. This bounds the cost by pixel count, and a
    ``min_face_size`` under 12 upsamples to find smaller faces. (``mtcnn`` 1.0's own
    pyramid finds nothing when min_face_size > ~20; its level count is fixed below.) Boxes are
    mapped back to the original pixels. The three networks run as compiled TF graphs
    (``tf.function``), not layer by layer in eager mode: 2-3x faster, same boxes.
    """

    def __init__(
        self,
        min_face_size: int = 20,
        max_side: int = 640,
        thresholds: Sequence[float] = (0.6, 0.7, 0.8),  # the mtcnn package's own; detectors pass DetectorSettings
        landmarks: bool = True,
        compiled: bool = True,
    ) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import mtcnn.stages.stage_pnet as stage_pnet
        from mtcnn import MTCNN

        stage_pnet.build_scale_pyramid = _scale_pyramid  # the upstream pyramid stops early (above)
        stages = "face_and_landmarks_detection" if landmarks else "face_detection_only"
        self._mtcnn = MTCNN(stages=stages, device="CPU:0")
        if compiled:
            _compile_stages(self._mtcnn)
        self.min_face_size = float(min_face_size)
        self.max_side = int(max_side)
        self.thresholds = tuple(float(t) for t in thresholds)

    def scale_for(self, height: int, width: int) -> float:
        fit = min(1.0, self.max_side / max(height, width)) if self.max_side > 0 else 1.0
        return fit * PNET_WINDOW / max(1.0, self.min_face_size)

    name = "mtcnn"

    def find(self, rgb: np.ndarray, still: bool = False) -> list[Face]:
        """As a :class:`maskflow.detection.Finder` (one pass, stills or not)."""
        return self.detect(rgb)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        scale = self.scale_for(h, w)
        resized = resize_to_scale(rgb, scale)
        if min(resized.shape[:2]) < PNET_WINDOW:  # smaller than MTCNN's first network input
            return []
        pnet, rnet, onet = self.thresholds
        found = self._mtcnn.detect_faces(
            resized,
            min_face_size=PNET_WINDOW,
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


PNET_WINDOW = 12  # P-Net's input window: the smallest face MTCNN sees at scale 1


def _scale_pyramid(width, height, min_face_size, scale_factor, min_size=PNET_WINDOW) -> np.ndarray:
    """Every scale m * f^k at which the image still covers P-Net's window. ``mtcnn`` 1.0
    counts its levels from the unscaled image and stops about two levels early, so faces
    that fill most of the frame (face crops, close-ups) were missed."""
    first = min_size / min_face_size
    levels = np.log(min(width, height) * first / min_size) / np.log(1.0 / scale_factor)
    return first * scale_factor ** np.arange(max(0, int(np.floor(levels)) + 1))


def _compile_stages(mtcnn) -> None:
    """Replace each stage's Keras model by a traced graph with a fixed signature (P-Net:
    any image size; R-Net/O-Net: batches of 24/48 px patches), so no retracing."""
    import tensorflow as tf

    shapes = {"pnet": [None, None, None, 3], "rnet": [None, 24, 24, 3], "onet": [None, 48, 48, 3]}
    for stage in mtcnn.stages:
        kind = next(k for k in shapes if k in stage.name.lower())
        model = stage._model
        stage._model = tf.function(lambda x, m=model: m(x, training=False), input_signature=[tf.TensorSpec(shapes[kind], tf.float32)])
