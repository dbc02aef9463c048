"""Synthesised training faces: a mask drawn on an unmasked face, worn right or wrong.

Incorrectly worn masks are rare in real photos (149 training crops of the union against
5,510 with a mask). Public mask sets (MaskedFace-Net, MaskTheFace) were built by drawing
masks on faces at their landmarks; this does the same on prepare's own train-split crops
of ``without_mask`` faces. YuNet finds the five landmarks on the crop; a mask is drawn
in the face's own frame (eyes to mouth), lit by the face's shading and brought to the
face's own resolution, so a small blurred scene face gets a small blurred mask. Kinds:

- ``nose_out``: mouth and chin covered, the nose out -> ``mask_weared_incorrect``;
- ``chin``: only the chin covered -> ``mask_weared_incorrect``;
- ``worn``: nose to chin covered -> ``with_mask``: the same drawing worn right, so that
  what tells the classes apart is where the mask sits, not that it was drawn.

Only train rows are drawn on, and a drawn face keeps its source's split and group, so no
person of val or test is trained on. Each drawing is seeded by its source crop, and
cached by it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from maskflow.cache import atomic_write_bytes, atomic_write_json, digest, read_json

log = logging.getLogger(__name__)

PAINT_VERSION = 1  # bump when a drawing changes, so cached drawings are not reused
KINDS = {"nose_out": "mask_weared_incorrect", "chin": "mask_weared_incorrect", "worn": "with_mask"}
# Mask colours (RGB) and how often each is drawn: surgical blue and white, black cloth, others.
PALETTE = [((150, 190, 222), 0.35), ((232, 234, 236), 0.25), ((35, 35, 40), 0.15), ((170, 205, 185), 0.08),
           ((228, 180, 195), 0.07), ((120, 130, 150), 0.10)]


def face_frame(marks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """(eye centre, down, right, eye-to-mouth length, eye distance) from YuNet's five
    landmarks (right eye, left eye, nose tip, right and left mouth corner)."""
    marks = np.asarray(marks, np.float64).reshape(5, 2)
    eyes, mouth = marks[:2].mean(0), marks[3:].mean(0)
    down = mouth - eyes
    length = float(np.linalg.norm(down))
    d = down / max(length, 1e-6)
    return eyes, d, np.array([d[1], -d[0]]), length, float(np.linalg.norm(marks[0] - marks[1]))


def mask_polygon(marks: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The outline of a mask worn as ``kind``, in pixels: along the face's down axis from
    the eyes (t, in eye-to-mouth lengths; the mouth is at 1, the chin near 1.6) and across
    it (in eye distances)."""
    eyes, d, r, length, iod = face_frame(marks)
    nose = np.asarray(marks, np.float64).reshape(5, 2)[2]
    t_nose = float(np.dot(nose - eyes, d)) / max(length, 1e-6)
    # The mask centres between the face's midline and the nose (a turned head).
    lateral = 0.5 * float(np.dot(nose - eyes, r))
    if kind == "worn":
        top, bottom, peak = t_nose * rng.uniform(0.45, 0.65), rng.uniform(1.55, 1.72), 0.10
    elif kind == "nose_out":
        top, bottom, peak = t_nose + (1.0 - t_nose) * rng.uniform(0.15, 0.5), rng.uniform(1.55, 1.72), 0.03
    elif kind == "chin":
        top, bottom, peak = rng.uniform(1.12, 1.3), rng.uniform(1.65, 1.8), 0.02
    else:
        raise ValueError(f"unknown mask kind {kind!r}: {sorted(KINDS)}")
    half = iod * rng.uniform(0.95, 1.12)
    outline = [(-1.0, top + 0.08), (-0.5, top + 0.01), (0.0, top - peak), (0.5, top + 0.01), (1.0, top + 0.08),
               (1.02, (top + bottom) / 2 + 0.05), (0.8, bottom - 0.1), (0.4, bottom - 0.01), (0.0, bottom + 0.03),
               (-0.4, bottom - 0.01), (-0.8, bottom - 0.1), (-1.02, (top + bottom) / 2 + 0.05)]
    return np.array([eyes + r * (lateral + u * half) + d * t * length for u, t in outline], np.float64)


def paint(rgb: np.ndarray, marks: np.ndarray, kind: str, rng: np.random.Generator, face_side: float) -> np.ndarray:
    """``rgb`` with a mask drawn on as ``kind``; ``face_side`` is the face's size in the
    source photo (px), to which the drawing's detail is brought down."""
    h, w = rgb.shape[:2]
    polygon = mask_polygon(marks, kind, rng)
    up = 4  # drawn 4x larger, then shrunk: smooth edges
    alpha = np.zeros((h * up, w * up), np.uint8)
    cv2.fillPoly(alpha, [np.round(polygon * up).astype(np.int32)], 255, lineType=cv2.LINE_AA)
    alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    colour = np.array(PALETTE[rng.choice(len(PALETTE), p=[p for _, p in PALETTE])][0], np.float32)
    colour = np.clip(colour + rng.normal(0, 10, 3), 0, 255)
    # The face's own light: the mask is as bright, relatively, as the skin under it.
    lum = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), max(2.0, w / 24))
    covered = lum[alpha > 0.5]
    shade = np.clip((lum / max(float(covered.mean()) if covered.size else 128.0, 1.0)) ** 0.6, 0.6, 1.3)
    layer = colour[None, None, :] * shade[..., None]
    eyes, d, r, length, _ = face_frame(marks)
    if colour.mean() > 100 and rng.uniform() < 0.7:  # a surgical mask's pleats
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = ((xx - eyes[0]) * d[0] + (yy - eyes[1]) * d[1]) / max(length, 1e-6)
        pleats = 0.5 + 0.5 * np.cos(2 * np.pi * t / rng.uniform(0.18, 0.26))
        layer *= (1.0 - rng.uniform(0.03, 0.06) * pleats)[..., None]
    layer += rng.normal(0, 4, layer.shape)
    if rng.uniform() < 0.5:  # ear loops
        for side in (-1, 1):
            corner = polygon[0] if side < 0 else polygon[4]
            ear = eyes + r * side * length * 1.3 + d * length * 0.1
            cv2.line(layer, tuple(int(v) for v in corner), tuple(int(v) for v in ear), tuple(float(c) for c in colour),
                     max(1, int(round(w / 128))), cv2.LINE_AA)
            cv2.line(alpha, tuple(int(v) for v in corner), tuple(int(v) for v in ear), 0.8, max(1, int(round(w / 128))),
                     cv2.LINE_AA)
    # The crop was cut from a face of face_side px: the drawing gets no more detail than it.
    small = int(np.clip(round(face_side * 1.4), 8, w))
    if small < w:
        layer = cv2.resize(cv2.resize(layer, (small, small), interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR)
        alpha = cv2.resize(cv2.resize(alpha, (small, small), interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR)
    out = rgb.astype(np.float32) * (1 - alpha[..., None]) + np.clip(layer, 0, 255) * alpha[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def landmarks(finder, rgb: np.ndarray) -> np.ndarray | None:
    """The five landmarks of the largest face the finder sees on a crop, or None when
    there is none or they do not lie as a face's do from the front or half turned (the
    nose between the eyes and the mouth, the eyes apart about as far as the mouth is
    below them): a mask drawn from such points would sit beside the face."""
    faces = [f for f in finder.find(rgb, still=False) if f.landmarks is not None]
    if not faces:
        return None
    marks = np.asarray(max(faces, key=lambda f: f.box[2] * f.box[3]).landmarks, np.float64).reshape(5, 2)
    eyes, d, r, length, iod = face_frame(marks)
    t_nose = float(np.dot(marks[2] - eyes, d)) / max(length, 1e-6)
    if not (0.25 <= t_nose <= 0.85 and 0.6 <= iod / max(length, 1e-6) <= 1.7 and length >= 6):
        return None
    return marks


def synthesize(rows: Sequence[dict[str, Any]], settings: Mapping[str, Any], finder, cache_dir: Path) -> list[dict[str, Any]]:
    """Manifest rows of drawn faces: for each kept train row of ``without_mask``, one
    drawing of each kind in ``settings["kinds"]`` (with probability ``settings["rate"]``
    each), on its crop, cached under ``cache_dir``. A crop whose landmarks YuNet cannot
    find gets none (counted in the log)."""
    from PIL import Image

    kinds = list(settings["kinds"])
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"data.synthetic.kinds: unknown {unknown}; choose from {sorted(KINDS)}")
    params = {"version": PAINT_VERSION, "kinds": kinds, "rate": float(settings.get("rate", 1.0)), "seed": int(settings.get("seed", 0))}
    folder = Path(cache_dir) / "synthetic" / digest(params)
    out, no_face = [], 0
    for row in rows:
        if row["status"] != "ok" or row["split"] != "train" or row["label"] != "without_mask" or not row["crop"]:
            continue
        source = Path(row["crop"])
        key = digest([source.name, params])
        record_path = folder / key[:2] / f"{key}.json"
        record = _cached(record_path)
        if record is None:
            rgb = np.asarray(Image.open(source).convert("RGB"))
            marks = landmarks(finder, rgb)
            record = {"drawn": []}
            if marks is not None:
                rng = np.random.default_rng(int(key[:12], 16))
                box = [float(v) for v in str(row["box"]).split()] if row.get("box") else [0, 0, rgb.shape[1], rgb.shape[0]]
                side = max(box[2], box[3]) if len(box) == 4 else rgb.shape[1]
                for kind in kinds:
                    if rng.uniform() >= params["rate"]:
                        continue
                    path = folder / key[:2] / f"{key}_{kind}.jpg"
                    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(paint(rgb, marks, kind, rng, side), cv2.COLOR_RGB2BGR),
                                           [cv2.IMWRITE_JPEG_QUALITY, 95])
                    atomic_write_bytes(path, buf.tobytes())
                    record["drawn"].append({"kind": kind, "crop": str(path)})
            record["landmarks"] = marks is not None
            atomic_write_json(record_path, record)
        no_face += not record["landmarks"]
        for drawn in record["drawn"]:
            out.append({**row, "sample_id": f"synthetic:{drawn['kind']}:{row['sample_id']}", "label": KINDS[drawn["kind"]],
                        "crop": drawn["crop"], "face": f"synthetic:{drawn['kind']}", "part": "synthetic"})
    log.info("synthetic: %d faces drawn from %d train crops without a mask (%d without landmarks: none drawn)",
             len(out), sum(1 for r in rows if r["status"] == "ok" and r["split"] == "train" and r["label"] == "without_mask"),
             no_face)
    return out


def _cached(path: Path) -> dict[str, Any] | None:
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    return record if all(Path(d["crop"]).exists() for d in record.get("drawn", [])) else None
