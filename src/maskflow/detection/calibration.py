"""Box calibration: a finder's boxes moved to a scene set's annotation convention.

Annotators disagree on what a face box is: mask-scenes-853 boxes the face from brow to
chin, other sets the whole head. A calibration is a centre shift ``dx, dy`` and a scale
``sw, sh``, each relative to the finder's box (:func:`maskflow.detection.boxes.calibrate_box`
applies it); it is fitted as the median over finder boxes matched one to one with
annotated faces. The match starts loose (IoU >= 0.3, the boxes moved by the calibration
already in use) and is tightened to IoU >= 0.5 under the calibration just fitted, until
the fit stops moving, so a convention far from the finder's still pairs faces right.
Classification always crops the finder's raw box: a calibration moves what is reported,
never what the classifier sees.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from maskflow.detection.boxes import calibrate_box, iou_matrix

Box = Sequence[float]
KEYS = ("dx", "dy", "sw", "sh")


def match_pairs(found: Sequence[Box], truths: Sequence[Box], min_iou: float) -> list[tuple[int, int, float]]:
    """(found index, truth index, IoU) pairs, one to one, the most overlapping first."""
    if not len(found) or not len(truths):
        return []
    corners = lambda boxes: np.array([[x, y, x + w, y + h] for x, y, w, h in boxes], np.float64)  # noqa: E731
    overlaps = iou_matrix(corners(found), corners(truths))
    pairs, used_f, used_t = [], set(), set()
    for flat in np.argsort(-overlaps, axis=None, kind="stable"):
        i, j = divmod(int(flat), overlaps.shape[1])
        if overlaps[i, j] < min_iou:
            break
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
            pairs.append((i, j, float(overlaps[i, j])))
    return pairs


def _apply(boxes: Sequence[Box], calibration: Mapping[str, float] | None, size: tuple[int, int]) -> list[tuple[int, ...]]:
    return [calibrate_box(b, calibration, *size) for b in boxes] if calibration else [tuple(b) for b in boxes]


def fit_calibration(images: Sequence[tuple[Sequence[Box], Sequence[Box], tuple[int, int]]],
                    start: Mapping[str, float] | None = None, rounds: int = 5) -> tuple[dict[str, float], dict[str, float]]:
    """The calibration from raw finder boxes to annotated ones, over ``images`` given as
    ``(finder boxes, annotated boxes, (width, height))``; ``start``: the calibration in
    use (None: the raw boxes). Returns it (``dx, dy, sw, sh``) and how it fits: ``pairs``
    matched, ``median_iou`` of the calibrated boxes with their faces, ``rounds`` taken.
    Raises ValueError when no finder box overlaps an annotated face."""
    calibration = dict(start) if start else None
    min_iou, fitted, used = 0.3, None, 0
    for used in range(1, rounds + 1):
        deltas, overlaps = [], []
        for raw, truths, size in images:
            for i, j, overlap in match_pairs(_apply(raw, calibration, size), truths, min_iou):
                x, y, w, h = (float(v) for v in raw[i])
                tx, ty, tw, th = (float(v) for v in truths[j])
                deltas.append(((tx + tw / 2 - x - w / 2) / w, (ty + th / 2 - y - h / 2) / h, tw / w, th / h))
                overlaps.append(overlap)
        if not deltas:
            if fitted is None:
                raise ValueError("no finder box overlaps an annotated face (IoU >= 0.3): nothing to fit; are these the "
                                 "right labels for these images?")
            break
        new = {k: round(float(v), 4) for k, v in zip(KEYS, np.median(np.array(deltas), axis=0))}
        fitted = (new, len(deltas))
        if new == calibration:
            break
        calibration, min_iou = new, 0.5
    assert fitted is not None
    calibration, pairs = fitted
    after = [o for raw, truths, size in images for _, _, o in match_pairs(_apply(raw, calibration, size), truths, 0.0)
             if o > 0]
    return calibration, {"pairs": float(pairs), "median_iou": float(np.median(after)) if after else 0.0, "rounds": float(used)}


def fit_box_calibration(finder, items: Sequence[tuple[object, list]], start: Mapping[str, float] | None = None
                        ) -> dict[str, float]:
    """:func:`fit_calibration` of a finder's still-image boxes on labelled scenes
    (``(image path, [(class, box), ...])``; unreadable images are passed over); the
    calibration and its ``pairs``. Fit on a train split, never on the split scored."""
    from maskflow.imageio import DecodeError, read_image

    images = []
    for path, truths in items:
        try:
            rgb = read_image(path).rgb
        except DecodeError:
            continue
        images.append(([f.box for f in finder.find(rgb, still=True)], [box for _, box in truths], (rgb.shape[1], rgb.shape[0])))
    calibration, fit = fit_calibration(images, start)
    return {**calibration, "pairs": int(fit["pairs"])}
