"""What the ONNX face finders share: resizing to ``long_side``, the stills pass at
``still_long_side`` (the whole upscaled image, or overlapping tiles for fixed-input
models), NMS over both passes, and mapping boxes back to the original pixels. One module
per finder: :mod:`~maskflow.detection.yunet`, :mod:`~maskflow.detection.ultraface`,
:mod:`~maskflow.detection.scrfd` (models of ``weights/faces``, trained on WIDER FACE / MAFA).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from maskflow.detection.boxes import fit_scale, nms, to_faces
from maskflow.faces import Face, resize_to_scale

# onnxruntime is imported inside the functions that use it: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without it.

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

    # long_side, still_long_side, min_score and nms_iou have no default here: the finder's
    # block in conf/detect (finders.<name>, stored with the model) is the one place they live.
    def __init__(self, model_path: Path, *, long_side: int | None, still_long_side: int | None, min_score: float,
                 nms_iou: float, tile_overlap: float = 0.2, landmark_bounds: Mapping[str, Sequence[float]] | None = None,
                 upscale_if_face_under: float | None = None) -> None:
        self.model_path = Path(model_path)
        # Where a face's landmarks may lie, as shares of its box height (eyes_y, nose_y,
        # mouth_y: [low, high]); a box whose landmarks fall outside is marked implausible
        # (Face.plausible): it stays in the ranked list (mAP) but is never reported. None: no check.
        self.landmark_bounds = {k: (float(v[0]), float(v[1])) for k, v in (landmark_bounds or {}).items()}
        self.long_side = long_side
        self.still_long_side = still_long_side
        self.min_score = float(min_score)
        self.nms_iou = float(nms_iou)
        self.tile_overlap = float(tile_overlap)
        # Stills: the upscaled pass runs only where the first pass finds no face, or one
        # under this many pixels tall (in its own pixels): where small faces may be. None: always.
        self.upscale_if_face_under = None if upscale_if_face_under is None else float(upscale_if_face_under)

    def _pass(self, rgb: np.ndarray) -> PassResult:  # pragma: no cover - each finder's own
        raise NotImplementedError

    def find(self, rgb: np.ndarray, still: bool = False) -> list[Face]:
        h, w = rgb.shape[:2]
        if min(h, w) < 2:
            return []
        base_scale = fit_scale(h, w, self.long_side)
        first = self._pass(resize_to_scale(rgb, base_scale))
        found = [_to_original(first, base_scale, 0, 0)]
        if still and self.still_long_side and self.still_long_side > max(h, w) * base_scale and self._small_faces_may_be(first):
            big_scale = fit_scale(h, w, self.still_long_side)
            big = resize_to_scale(rgb, big_scale)
            if self.tiles:
                found += [_to_original(self._pass(tile), big_scale, x, y)
                          for tile, x, y in _tiles(big, self.long_side or 640, self.tile_overlap)]
            else:  # the base pass stays: faces that fill the frame are found at the base scale
                found.append(_to_original(self._pass(big), big_scale, 0, 0))
        merged = _concat(found)
        merged = _take(merged, merged.scores >= self.min_score)
        if len(found) > 1 or not self.own_nms:
            merged = _take(merged, nms(merged.corners, merged.scores, self.nms_iou))
        plausible = None
        if self.landmark_bounds and merged.landmarks is not None:  # kept in the ranked list, never reported
            plausible = plausible_landmarks(merged.corners, merged.landmarks, self.landmark_bounds)
        return to_faces(merged.corners, merged.scores, 1.0, w, h, merged.landmarks, merged.probs, plausible)

    def _small_faces_may_be(self, first: PassResult) -> bool:
        """Whether the first pass leaves room for faces too small for it: it found none,
        or one under ``upscale_if_face_under`` px tall (faces come in crowds)."""
        if self.upscale_if_face_under is None:
            return True
        heights = (first.corners[:, 3] - first.corners[:, 1])[first.scores >= self.min_score]
        return not len(heights) or float(heights.min()) < self.upscale_if_face_under

    own_nms = False  # True where the model (or OpenCV) already suppresses overlaps


def _to_original(result: PassResult, scale: float, x: int, y: int) -> PassResult:
    """A pass's boxes and landmarks in the original image's pixels: undo the tile offset, then the scale."""
    corners = (result.corners + np.array([x, y, x, y], np.float64)) / scale
    marks = None if result.landmarks is None else (result.landmarks + np.tile([x, y], 5)) / scale
    return PassResult(corners, result.scores, marks, result.probs)


def plausible_landmarks(corners: np.ndarray, landmarks: np.ndarray, bounds: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """Which boxes have their five landmarks (right eye, left eye, nose, right and left
    mouth corner) where a face's are: the eyes' mean height, the nose's and the mouth
    corners' mean height, as shares of the box height from its top, each within its
    ``bounds`` entry. Patterns (lace, prints) that a finder scores as faces mostly fail it."""
    top, height = corners[:, 1], np.maximum(corners[:, 3] - corners[:, 1], 1e-6)
    ys = (landmarks[:, 1::2] - top[:, None]) / height[:, None]
    parts = {"eyes_y": ys[:, 0:2].mean(1), "nose_y": ys[:, 2], "mouth_y": ys[:, 3:5].mean(1)}
    keep = np.ones(len(corners), bool)
    for name, (low, high) in bounds.items():
        if name not in parts:
            raise ValueError(f"unknown landmark bound {name!r} (eyes_y | nose_y | mouth_y)")
        keep &= (parts[name] >= low) & (parts[name] <= high)
    return keep


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


def _session(model: Path | bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Idle pool threads wait instead of spinning: a finder's pass overlaps the classifier's
    # on the other core (detection.pipelined), and a spinning pool takes that core from it
    # (YuNet stills: 41.7 images/s against 34.8 spinning, BENCHMARKS.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"])
