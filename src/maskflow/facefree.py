"""A face-free image set: how many false faces a detector reports where there is none.

Two parts, both deterministic (the same images every time):

- ``scene_regions``: windows of annotated scene photos that overlap no annotated face,
  even with a wide margin around it: real backgrounds, clothes, signs and crowds;
- ``textures``: patterns drawn here, of the kinds that fool face finders: lace, tiles,
  foliage, knitted fabric, a crowd seen from behind, polka dots.

Scene annotations can miss a face (a tiny one far back), so a "false" face on a scene
region is worth a look before it is counted against a detector: the benchmark
(``benchmarks/false_faces.py``) saves each one it finds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from maskflow.imageio import DecodeError, read_image

log = logging.getLogger(__name__)

TEXTURES = ("lace", "tiles", "foliage", "knit", "crowd_from_behind", "polka_dots")


def _clear(window: tuple[int, int, int, int], boxes: Sequence[tuple], margin: float) -> bool:
    """Whether ``window`` (x, y, w, h) misses every box grown by ``margin`` of its size
    on each side (and by twice that below, where the head's body and neighbours are)."""
    x, y, w, h = window
    for bx, by, bw, bh in boxes:
        gx0, gy0 = bx - margin * bw, by - margin * bh
        gx1, gy1 = bx + bw + margin * bw, by + bh + 2 * margin * bh
        if x < gx1 and gx0 < x + w and y < gy1 and gy0 < y + h:
            return False
    return True


def scene_regions(items: Sequence[tuple[Path, list[tuple[str, tuple]]]], per_image: int = 1, min_side: int = 96,
                  margin: float = 1.0) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB) windows of scene images that overlap no annotated face (grown by
    ``margin``). Per image, the largest clear squares first, at most ``per_image``, none
    smaller than ``min_side`` px and no two overlapping."""
    for path, truths in items:
        try:
            rgb = read_image(path).rgb
        except DecodeError as exc:  # named, never silently dropped
            log.warning("face-free regions: skipped %s: %s", path, exc)
            continue
        h, w = rgb.shape[:2]
        boxes = [box for _, box in truths]
        taken: list[tuple[int, int, int, int]] = []
        side = min(h, w)
        while side >= min_side and len(taken) < per_image:
            step = max(8, side // 4)
            for y in range(0, h - side + 1, step):
                for x in range(0, w - side + 1, step):
                    window = (x, y, side, side)
                    if len(taken) < per_image and _clear(window, boxes, margin) and _clear(window, taken, 0.0):
                        taken.append(window)
            side = int(side * 0.75)
        for k, (x, y, s, _) in enumerate(taken):
            yield f"{Path(path).stem}_region{k}", rgb[y:y + s, x:x + s].copy()


def texture(kind: str, seed: int, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """One drawn RGB pattern of ``kind`` (:data:`TEXTURES`), ``size`` (h, w)."""
    if kind not in TEXTURES:
        raise ValueError(f"unknown texture {kind!r}; choose from {list(TEXTURES)}")
    rng = np.random.default_rng([TEXTURES.index(kind), seed])
    h, w = size
    scale = rng.uniform(0.6, 1.6)

    def colour(lo=0, hi=255):
        return tuple(int(v) for v in rng.integers(lo, hi, 3))

    if kind == "lace":  # cream filigree over skin or dark cloth: rosettes of rings and holes
        img = np.full((h, w, 3), colour(40, 200), np.uint8)
        ink = (235, 228, 215)
        step = int(48 * scale)
        for cy in range(0, h + step, step):
            for cx in range((cy // step % 2) * step // 2, w + step, step):
                r = int(step * 0.35)
                cv2.circle(img, (cx, cy), r, ink, 2, cv2.LINE_AA)
                for a in range(0, 360, 45):
                    px, py = cx + int(r * np.cos(np.radians(a))), cy + int(r * np.sin(np.radians(a)))
                    cv2.circle(img, (px, py), max(2, r // 4), ink, -1, cv2.LINE_AA)
                cv2.circle(img, (cx, cy), max(2, r // 3), ink, 1, cv2.LINE_AA)
    elif kind == "tiles":  # square tiles with grout and a little colour variation
        img = np.zeros((h, w, 3), np.uint8)
        step, base = int(64 * scale), np.array(colour(60, 230))
        for y in range(0, h, step):
            for x in range(0, w, step):
                tone = np.clip(base + rng.integers(-25, 25, 3), 0, 255)
                cv2.rectangle(img, (x + 2, y + 2), (x + step - 3, y + step - 3), tuple(int(v) for v in tone), -1)
    elif kind == "foliage":  # overlapping leaves in greens, lit from one side
        img = np.full((h, w, 3), (20, 45, 20), np.uint8)
        for _ in range(int(900 / scale)):
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(8, 30) * scale), int(rng.integers(4, 12) * scale))
            green = (int(rng.integers(20, 110)), int(rng.integers(90, 210)), int(rng.integers(20, 90)))
            cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, green, -1, cv2.LINE_AA)
    elif kind == "knit":  # knitted fabric: rows of interlocking loops
        img = np.full((h, w, 3), colour(90, 230), np.uint8)
        dark = tuple(max(0, int(v) - 50) for v in img[0, 0])
        step = int(16 * scale)
        for y in range(0, h + step, step):
            for x in range(0, w + step, step):
                cv2.ellipse(img, (x, y), (step // 2, step // 3), 60, 0, 360, dark, 2, cv2.LINE_AA)
                cv2.ellipse(img, (x + step // 2, y), (step // 2, step // 3), 120, 0, 360, dark, 2, cv2.LINE_AA)
    elif kind == "crowd_from_behind":  # rows of heads (hair) over shoulders, nearer rows larger
        img = np.full((h, w, 3), colour(120, 230), np.uint8)
        for row in range(5):
            r = int((14 + 9 * row) * scale)
            y = int(h * (0.15 + 0.2 * row))
            for x in range(int(rng.integers(0, r)), w + r, int(2.6 * r)):
                cv2.ellipse(img, (x, y + 2 * r), (int(1.6 * r), r), 0, 180, 360, colour(20, 200), -1, cv2.LINE_AA)
                hair = (int(rng.integers(10, 90)), int(rng.integers(5, 60)), int(rng.integers(0, 40)))
                cv2.ellipse(img, (x, y), (int(0.8 * r), r), 0, 0, 360, hair, -1, cv2.LINE_AA)
    else:  # polka_dots: dark dots in rows, the eyes-like pattern
        img = np.full((h, w, 3), colour(150, 250), np.uint8)
        step, r = int(40 * scale), max(3, int(7 * scale))
        dot = colour(0, 90)
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                cv2.circle(img, (x, y), r, dot, -1, cv2.LINE_AA)
    # Camera-like softness and noise, so edges are not unnaturally crisp.
    img = cv2.GaussianBlur(img, (3, 3), 0)
    noise = rng.normal(0, 4, img.shape)
    return np.clip(img.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def textures(per_kind: int, size: tuple[int, int] = (480, 640)) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB) of ``per_kind`` drawn patterns of each kind in :data:`TEXTURES`."""
    for kind in TEXTURES:
        for seed in range(per_kind):
            yield f"{kind}_{seed}", texture(kind, seed, size)


def write(images: Iterator[tuple[str, np.ndarray]], folder: Path) -> list[Path]:
    """Save the images as PNG files in ``folder`` (for ``maskflow.detect`` or a look)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rgb in images:
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths
