"""Box geometry shared by the finders: scale for a finder's input, NMS, box fusion, calibration.

Boxes are ``(x, y, w, h)`` in pixels of the original image unless a name says corners
(``x0, y0, x1, y1``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import cv2
import numpy as np

from maskflow.faces import Face


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(x, y, w, h)`` boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def letterbox(rgb: np.ndarray, long_side: int, multiple: int = 32) -> tuple[np.ndarray, float]:
    """Resize so the long side is ``long_side``; pad right/bottom to a multiple of 32."""
    h, w = rgb.shape[:2]
    scale = long_side / max(h, w)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    ph, pw = -nh % multiple, -nw % multiple
    if ph or pw:
        resized = cv2.copyMakeBorder(resized, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return resized, scale


def fit_scale(height: int, width: int, long_side: int | None, max_pixels: int = 4096 * 4096) -> float:
    """The factor that brings the long side to ``long_side`` (None: 1.0), up or down,
    capped so the resized frame stays under ``max_pixels``."""
    scale = 1.0 if not long_side else float(long_side) / max(height, width)
    if height * width * scale * scale > max_pixels:
        scale = (max_pixels / (height * width)) ** 0.5
    return scale


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every corner box in ``a`` (N, 4) with every one in ``b`` (M, 4)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(corners: np.ndarray, scores: np.ndarray, iou: float, top_k: int = 750) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-np.asarray(scores), kind="stable")[: top_k * 4]
    keep: list[int] = []
    corners = np.asarray(corners, np.float64)
    while order.size and len(keep) < top_k:
        i = order[0]
        keep.append(int(i))
        if order.size == 1:
            break
        overlap = iou_matrix(corners[i : i + 1], corners[order[1:]])[0]
        order = order[1:][overlap <= iou]
    return np.asarray(keep, np.int64)


def to_faces(corners: np.ndarray, scores: np.ndarray, scale: float, width: int, height: int,
             landmarks: np.ndarray | None = None, probs: np.ndarray | None = None,
             plausible: np.ndarray | None = None) -> list[Face]:
    """Corner boxes in resized pixels -> :class:`Face` records in original pixels."""
    faces = []
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(corners, np.float64) / scale):
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(width), x1), min(float(height), y1)
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        marks = None if landmarks is None else tuple(round(float(v) / scale, 1) for v in landmarks[i])
        p = None if probs is None else tuple(float(v) for v in probs[i])
        faces.append(Face((int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0))), float(scores[i]),
                          probs=p, landmarks=marks, plausible=True if plausible is None else bool(plausible[i])))
    return faces


def corners_of(faces: Sequence[Face]) -> np.ndarray:
    return np.array([[f.box[0], f.box[1], f.box[0] + f.box[2], f.box[1] + f.box[3]] for f in faces], np.float64).reshape(-1, 4)


def weighted_box_fusion(groups: Sequence[Sequence[Face]], iou: float = 0.55, weights: Sequence[float] | None = None,
                        method: str = "wbf") -> list[Face]:
    """Fuse the faces several finders found in one frame.

    ``wbf`` (Solovyev et al., 2021): boxes that overlap by more than ``iou`` form a
    cluster whose box is the score-weighted mean of its members and whose score is the
    mean score over *all* finders (a finder that missed the face counts 0), so faces that
    every finder agrees on rank first. ``nms``: the plain alternative, the best box of each
    cluster with its own score."""
    weights = list(weights or [1.0] * len(groups))
    flat = [(f, w) for faces, w in zip(groups, weights) for f in faces]
    if not flat:
        return []
    scores = np.array([f.score * w for f, w in flat])
    corners = corners_of([f for f, _ in flat])
    if method == "nms":
        return [flat[i][0] for i in nms(corners, scores, iou)]
    if method != "wbf":
        raise ValueError(f"unknown fusion method {method!r} (wbf | nms)")
    clusters: list[list[int]] = []
    fused: list[np.ndarray] = []
    for i in np.argsort(-scores, kind="stable"):
        if fused:
            overlap = iou_matrix(corners[i : i + 1], np.array(fused))[0]
            j = int(np.argmax(overlap))
            if overlap[j] > iou:
                clusters[j].append(int(i))
                members = clusters[j]
                fused[j] = np.average(corners[members], axis=0, weights=scores[members])
                continue
        clusters.append([int(i)])
        fused.append(corners[i].copy())
    total = float(sum(weights))
    out = []
    for members, (x0, y0, x1, y1) in zip(clusters, fused):
        score = float(scores[members].sum()) / total
        score = min(1.0, score)
        best = flat[members[0]][0]
        out.append(Face((int(round(x0)), int(round(y0)), max(1, int(round(x1 - x0))), max(1, int(round(y1 - y0)))), score,
                        probs=best.probs, landmarks=best.landmarks))
    return sorted(out, key=lambda f: -f.score)


def calibrate_box(box: Sequence[float], calibration: dict | None, width: int, height: int) -> tuple[int, int, int, int]:
    """A finder's box moved/rescaled to the annotation convention of the scene data (centre
    shift ``dx, dy`` and scale ``sw, sh``, relative to the box; fitted on a train split
    by :mod:`maskflow.detection.calibration`), clipped to the image.
    Classification still crops the raw box, as in training."""
    x, y, w, h = (float(v) for v in box)
    if calibration:
        cx, cy = x + w / 2 + calibration["dx"] * w, y + h / 2 + calibration["dy"] * h
        w, h = w * calibration["sw"], h * calibration["sh"]
        x, y = cx - w / 2, cy - h / 2
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    return round(x0), round(y0), max(1, round(x1 - x0)), max(1, round(y1 - y0))


def calibrated(face: Face, calibration: dict | None, width: int, height: int) -> Face:
    """``face`` with its box calibrated (the same record when there is no calibration)."""
    if not calibration:
        return face

    return replace(face, box=calibrate_box(face.box, calibration, width, height))
