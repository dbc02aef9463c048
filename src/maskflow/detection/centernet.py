"""The trained CenterNet face-and-mask detector at run time (``detect.backend=facedet``).

One heatmap per class at stride 4 (a face is a peak, its class the map it peaks in),
plus box size and sub-pixel offset at each peak (Zhou et al., "Objects as Points",
2019). Training lives in the ``facedet`` stage; this module decodes what it learned.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import keras
import numpy as np
import tensorflow as tf

from maskflow import backbones  # noqa: F401 - registers Preprocess, so saved detectors load anywhere
from maskflow.detection.boxes import iou, letterbox
from maskflow.faces import Face

STRIDE = 4


@keras.saving.register_keras_serializable(package="maskflow")
class Upsample2x(keras.layers.Layer):
    """Bilinear 2x upsampling that traces with unknown frame sizes (Keras' UpSampling2D
    bilinear needs static ones, so one compiled graph could not serve every frame).
    Other Keras backends (JAX, used to train on a GPU machine without TensorFlow) trace
    with static sizes, so ``keras.ops`` does there."""

    def call(self, x):
        if keras.backend.backend() == "tensorflow":

            return tf.image.resize(x, tf.shape(x)[1:3] * 2, method="bilinear")
        _, h, w, _ = keras.ops.shape(x)
        return keras.ops.image.resize(x, (2 * h, 2 * w), interpolation="bilinear")


def decode(output: np.ndarray, scale: float, num_classes: int, top_k: int = 300, min_score: float = 0.05,
           image_shape: tuple[int, int] | None = None, nms_iou: float | None = None,
           per_class: bool = False) -> list[Face]:
    """Peaks of one output map (H/4, W/4, classes + 4) -> detections in original pixels
    (``scale``: network input pixels per original pixel), highest first.

    ``per_class=False``: one detection per 3x3 local maximum of the face map (max over
    classes), its class left to the caller (most likely: argmax of ``probs``).
    ``per_class=True`` (CenterNet's own decoding): one detection per local maximum of each
    class map, with that class in ``label``, so an ambiguous face can be reported as, say,
    ``with_mask`` and, lower ranked, ``mask_weared_incorrect`` (the rare class is then not
    lost to its neighbour). With ``nms_iou``, a box overlapping a higher one by more than
    that is dropped, whatever its class. At most ``top_k`` peaks are kept: a crowd scene of
    the test split has 115 faces, and 100 peaks over three class maps missed some of them."""
    heat = 1.0 / (1.0 + np.exp(-output[..., :num_classes]))
    kernel = np.ones((3, 3), np.uint8)
    maps = [(heat[..., c], c) for c in range(num_classes)] if per_class else [(heat.max(-1), None)]
    peaks = []  # (peak value, row, column, class or None)
    for value, label in maps:
        ys, xs = np.nonzero((value == cv2.dilate(value, kernel)) & (value >= min_score))
        peaks += [(float(value[y, x]), int(y), int(x), label) for y, x in zip(ys, xs)]
    peaks.sort(key=lambda peak: -peak[0])
    found = []
    for _, iy, ix, label in peaks[:top_k]:
        lw, lh, ox, oy = output[iy, ix, num_classes:]
        w, h = np.exp(np.clip([lw, lh], -3, 6)) * STRIDE / scale
        cx, cy = (ix + ox) * STRIDE / scale, (iy + oy) * STRIDE / scale
        x0, y0 = cx - w / 2, cy - h / 2
        if image_shape is not None:
            x1, y1 = min(image_shape[1], x0 + w), min(image_shape[0], y0 + h)
            x0, y0 = max(0.0, x0), max(0.0, y0)
            w, h = x1 - x0, y1 - y0
        if w < 1 or h < 1:
            continue
        p = heat[iy, ix]
        found.append(Face(box=(int(round(x0)), int(round(y0)), int(round(w)), int(round(h))),
                               score=float(1.0 - np.prod(1.0 - p)), probs=tuple(float(v) for v in p / p.sum()), label=label))
    if nms_iou is not None:
        kept: list[Face] = []
        for d in found:  # highest peak first
            if all(iou(d.box, k.box) <= nms_iou for k in kept):
                kept.append(d)
        found = kept
    return found


def merge_flipped(output: np.ndarray, mirrored: np.ndarray, num_classes: int) -> np.ndarray:
    """Average the class heatmaps (as probabilities) and box sizes of a letterboxed frame
    and of its mirror image (output mirrored back: the width is a multiple of the stride,
    so cells line up); offsets stay the frame's own."""
    back = mirrored[:, ::-1]
    merged = output.copy()
    prob = (1 / (1 + np.exp(-output[..., :num_classes])) + 1 / (1 + np.exp(-back[..., :num_classes]))) / 2
    prob = np.clip(prob, 1e-6, 1 - 1e-6)
    merged[..., :num_classes] = np.log(prob / (1 - prob))
    merged[..., num_classes:num_classes + 2] = (output[..., num_classes:num_classes + 2] + back[..., num_classes:num_classes + 2]) / 2
    return merged


def merge_zoomed(base: Sequence[Face], zoomed: Sequence[Face], zoom_face: float, overlap: float = 0.5) -> list[Face]:
    """One frame's detections from two input sizes: faces under ``zoom_face`` px (long
    side, original pixels) from the zoomed pass, faces of at least 3/4 of that from the
    base pass; where both report a face of the same class (IoU above ``overlap``) in
    that band, the higher ranked box stays. Highest first."""
    def rank(d: Face) -> float:  # as scored: face score x class probability
        return d.score * d.probs[d.class_index()]

    pool = [d for d in base if max(d.box[2:]) >= 0.75 * zoom_face] + [d for d in zoomed if max(d.box[2:]) < zoom_face]
    kept: list[Face] = []
    for d in sorted(pool, key=rank, reverse=True):
        if all(k.class_index() != d.class_index() or iou(d.box, k.box) <= overlap for k in kept):
            kept.append(d)
    return kept


class CenterNetFinder:
    """The trained detector at run time, a :class:`maskflow.detection.Finder`: each face
    with its class probabilities (and, with ``per_class``, the class its peak stands for).

    ``find(rgb, still=True)`` spends more on a still image than a video frame can
    afford: ``still_flip`` averages the mirrored frame in, and ``zoom_side`` adds a pass at
    that larger long side for the faces under ``zoom_face`` px (:func:`merge_zoomed`):
    faces of a few pixels in a crowd are found better upscaled, larger ones at the
    size the detector was trained around."""

    def __init__(self, model, classes: Sequence[str], long_side: int = 512, min_score: float = 0.05, flip: bool = False,
                 nms_iou: float | None = None, per_class: bool = False, still_flip: bool = False,
                 zoom_side: int | None = None, zoom_face: float = 32.0) -> None:

        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            model = keras.models.load_model(model, compile=False)
        self.model = model
        self.classes = list(classes)
        self.long_side = int(long_side)
        self.min_score = float(min_score)
        self.flip = bool(flip)  # also run the mirrored frame and average the maps (2x cost)
        self.nms_iou = None if nms_iou is None else float(nms_iou)
        self.per_class = bool(per_class)  # one box per peak of each class map (see decode)
        self.still_flip = bool(still_flip)
        self.zoom_side = int(zoom_side) if zoom_side else None
        self.zoom_face = float(zoom_face)
        self._call = tf.function(lambda x: model(x, training=False),
                                 input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])

    name = "facedet"

    @classmethod
    def from_settings(cls, model, classes: Sequence[str], settings, per_class: bool) -> "CenterNetFinder":
        """From :class:`maskflow.detection.settings.DetectorSettings` (``min_confidence`` is
        the lowest peak decoded)."""
        return cls(model, classes, settings.long_side, min_score=settings.min_confidence, flip=settings.flip,
                   nms_iou=settings.nms_iou, per_class=per_class, still_flip=settings.stills.flip,
                   zoom_side=settings.stills.zoom_side, zoom_face=settings.stills.zoom_face)

    def find(self, rgb: np.ndarray, still: bool = False) -> list[Face]:
        if min(rgb.shape[:2]) < 2:
            return []
        flip = self.flip or (still and self.still_flip)
        found = self._detections(rgb, self.long_side, flip)
        if still and self.zoom_side:
            found = merge_zoomed(found, self._detections(rgb, self.zoom_side, flip), self.zoom_face)
        return found

    def maps(self, rgb: np.ndarray, long_side: int, flip: bool) -> tuple[np.ndarray, float]:
        """(output map, scale) of the frame letterboxed to ``long_side``; ``flip`` averages
        the mirrored frame's in."""
        image, scale = letterbox(rgb, long_side)
        if flip:
            both = self._call(np.stack([image, image[:, ::-1]]).astype(np.float32)).numpy()
            return merge_flipped(both[0], both[1], len(self.classes)), scale
        return self._call(image[None].astype(np.float32))[0].numpy(), scale

    def _detections(self, rgb: np.ndarray, long_side: int, flip: bool) -> list[Face]:
        output, scale = self.maps(rgb, long_side, flip)
        return decode(output, scale, len(self.classes), min_score=self.min_score, image_shape=rgb.shape[:2],
                      nms_iou=self.nms_iou, per_class=self.per_class)
