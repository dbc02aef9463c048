"""The pretrained face detectors of ``weights/faces`` (ONNX, trained on WIDER FACE / MAFA).

- :class:`YuNetFinder`: YuNet through OpenCV's ``cv2.FaceDetectorYN`` (Apache-2.0), any
  input size, five landmarks.
- :class:`UltraFaceFinder`: Ultra-Light-Fast RFB-640 trained with masked faces (MIT),
  fixed 640x480 input; it also scores face vs masked face (kept in ``Face.probs``).
- :class:`ScrfdFinder`: SCRFD (InsightFace), fixed 640x640 letterboxed input, five
  landmarks. **Its model terms are non-commercial research only**: never a default.

Each finds faces on the frame resized to ``long_side``. Small faces are what they miss
most, so still images also get a pass at ``still_long_side`` (upscaled): YuNet on the
whole upscaled image, the fixed-input models on overlapping tiles of it; the boxes of
both passes are merged by NMS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from maskflow.detection.boxes import fit_scale, nms, to_faces
from maskflow.faces import Face, resize_to_scale

SCRFD_LICENCE = ("SCRFD's model terms (InsightFace) allow non-commercial research use only: "
                 "do not use detect=scrfd in a product")


@dataclass(frozen=True)
class PassResult:
    """One network pass, in the pixels of the image it was given."""

    corners: np.ndarray  # (N, 4) x0, y0, x1, y1
    scores: np.ndarray  # (N,)
    landmarks: np.ndarray | None = None  # (N, 10)
    probs: np.ndarray | None = None  # (N, k): the finder's own class scores, if any

    @staticmethod
    def empty() -> "PassResult":
        return PassResult(np.zeros((0, 4)), np.zeros(0))


def _concat(parts: list[PassResult]) -> PassResult:
    parts = [p for p in parts if len(p.scores)]
    if not parts:
        return PassResult.empty()
    landmarks = np.concatenate([p.landmarks for p in parts]) if all(p.landmarks is not None for p in parts) else None
    probs = np.concatenate([p.probs for p in parts]) if all(p.probs is not None for p in parts) else None
    return PassResult(np.concatenate([p.corners for p in parts]), np.concatenate([p.scores for p in parts]), landmarks, probs)


def _take(result: PassResult, keep: np.ndarray) -> PassResult:
    return PassResult(result.corners[keep], result.scores[keep],
                      None if result.landmarks is None else result.landmarks[keep],
                      None if result.probs is None else result.probs[keep])


class OnnxFinder:
    """Shared by the ONNX finders: resizing, stills upscaling/tiling, NMS, mapping back."""

    name = "onnx"
    tiles = True  # fixed-input models: stills are tiled; YuNet (any size) runs once instead

    def __init__(self, model_path: Path, long_side: int | None = 640, still_long_side: int | None = None,
                 min_score: float = 0.3, nms_iou: float = 0.4, tile_overlap: float = 0.2) -> None:
        self.model_path = Path(model_path)
        self.long_side = long_side
        self.still_long_side = still_long_side
        self.min_score = float(min_score)
        self.nms_iou = float(nms_iou)
        self.tile_overlap = float(tile_overlap)

    def _pass(self, rgb: np.ndarray) -> PassResult:  # pragma: no cover - each finder's own
        raise NotImplementedError

    def find(self, rgb: np.ndarray, still: bool = False) -> list[Face]:
        h, w = rgb.shape[:2]
        if min(h, w) < 2:
            return []
        base_scale = fit_scale(h, w, self.long_side)
        passes = [(resize_to_scale(rgb, base_scale), base_scale, 0, 0)]
        if still and self.still_long_side and self.still_long_side > max(h, w) * base_scale:
            big_scale = fit_scale(h, w, self.still_long_side)
            big = resize_to_scale(rgb, big_scale)
            if self.tiles:
                passes += [(tile, big_scale, x, y) for tile, x, y in _tiles(big, self.long_side or 640, self.tile_overlap)]
            else:  # the base pass stays: faces that fill the frame are found at the base scale
                passes.append((big, big_scale, 0, 0))
        found = []
        for image, scale, x, y in passes:
            result = self._pass(image)
            # Back to the original image's pixels: undo the tile offset, then the scale.
            shifted = result.corners + np.array([x, y, x, y], np.float64)
            marks = None if result.landmarks is None else result.landmarks + np.tile([x, y], 5)
            found.append(PassResult(shifted / scale, result.scores, None if marks is None else marks / scale, result.probs))
        merged = _concat(found)
        merged = _take(merged, merged.scores >= self.min_score)
        if len(passes) > 1 or not self.own_nms:
            merged = _take(merged, nms(merged.corners, merged.scores, self.nms_iou))
        return to_faces(merged.corners, merged.scores, 1.0, w, h, merged.landmarks, merged.probs)

    own_nms = False  # True where the model (or OpenCV) already suppresses overlaps


def _tiles(image: np.ndarray, side: int, overlap: float):
    """Overlapping square-ish tiles of ``side`` px covering ``image`` (x, y offsets)."""
    h, w = image.shape[:2]
    step = max(1, int(side * (1.0 - overlap)))
    xs = list(range(0, max(1, w - side) + 1, step)) or [0]
    ys = list(range(0, max(1, h - side) + 1, step)) or [0]
    if xs[-1] + side < w:
        xs.append(w - side)
    if ys[-1] + side < h:
        ys.append(h - side)
    for y in ys:
        for x in xs:
            yield image[max(0, y) : y + side, max(0, x) : x + side], max(0, x), max(0, y)


class YuNetFinder(OnnxFinder):
    """YuNet through ``cv2.FaceDetectorYN`` (BGR input of any size, landmarks)."""

    name = "yunet"
    tiles = False
    own_nms = True

    def __init__(self, model_path: Path, top_k: int = 5000, **kwargs) -> None:
        super().__init__(model_path, **kwargs)
        # OpenCV keeps boxes from this score on; min_score filters after merging.
        self._net = cv2.FaceDetectorYN.create(str(self.model_path), "", (320, 320), min(self.min_score, 0.9),
                                              self.nms_iou, int(top_k))
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


def _session(model_path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


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
